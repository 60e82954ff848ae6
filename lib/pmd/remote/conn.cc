// The command channel to dverbsd (see conn.h): fixed-size datagrams on a SOCK_SEQPACKET
// Unix socket, descriptors as SCM_RIGHTS.
//
// Locking: lock_ serialises whole request/response exchanges; next_seq_ is under it.
// dead_ is a one-way flag read without the lock.
#include "pmd/remote/conn.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace dverbs::pmd::remote {

using daemon::Request;
using daemon::Response;

Conn::~Conn() {
  if (fd_ >= 0) ::close(fd_);
}

int Conn::connect_to(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return ENAMETOOLONG;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    ::close(fd);
    return err;
  }
  fd_ = fd;
  return 0;
}

namespace {

bool peer_gone(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

void close_all(const int* fds, int n) {
  for (int i = 0; i < n; i++) ::close(fds[i]);
}

}  // namespace

bool Conn::take_refusal(Response* resp) noexcept {
  Response r;
  if (::recv(fd_, &r, sizeof r, MSG_DONTWAIT) != ssize_t(sizeof r) || r.seq != 0 || r.status <= 0)
    return false;
  *resp = r;
  return true;
}

int Conn::exchange(Request& req, Response* resp, const int* fds, int nfds, int* rfds,
                   int* nrfds) {
  req.magic = daemon::kMagic;
  req.seq = next_seq_++;
  if (next_seq_ == 0) next_seq_ = 1;

  // ---- send ----
  iovec iov{&req, sizeof req};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char sbuf[CMSG_SPACE(sizeof(int) * daemon::kMaxPieces)];
  if (nfds > 0) {
    if (nfds > int(daemon::kMaxPieces)) return EINVAL;
    mh.msg_control = sbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * size_t(nfds));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * size_t(nfds));
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * size_t(nfds));
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd_, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (peer_gone(errno)) {
      mark_dead();
      // The daemon may have refused the connection and closed it before we sent.
      return take_refusal(resp) ? ECONNREFUSED : EIO;
    }
    return errno;  // EMFILE/ENOMEM…: the connection stays usable
  }

  // ---- receive the response with our seq ----
  for (;;) {
    Response r;
    iovec riov{&r, sizeof r};
    alignas(cmsghdr) char rbuf[CMSG_SPACE(sizeof(int) * kMaxRecvFds)];
    msghdr rh{};
    rh.msg_iov = &riov;
    rh.msg_iovlen = 1;
    rh.msg_control = rbuf;
    rh.msg_controllen = sizeof rbuf;
    do {
      n = ::recvmsg(fd_, &rh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n == 0 || (n < 0 && peer_gone(errno))) {
      mark_dead();
      // A daemon that closes with our request unread makes this read fail with
      // ECONNRESET ahead of the refusal it queued: look for it once more.
      return n < 0 && take_refusal(resp) ? ECONNREFUSED : EIO;
    }
    if (n < 0) return errno;
    int got[kMaxRecvFds];
    int ngot = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&rh); c; c = CMSG_NXTHDR(&rh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const int k = int((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < k; i++) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + sizeof(int) * size_t(i), sizeof f);
        if (ngot < kMaxRecvFds)
          got[ngot++] = f;
        else
          ::close(f);
      }
    }
    if (size_t(n) != sizeof r || (rh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
      close_all(got, ngot);
      return EPROTO;
    }
    if (r.seq == 0 && r.status > 0) {  // the daemon refused the connection (proto.h)
      close_all(got, ngot);
      mark_dead();
      *resp = r;
      return ECONNREFUSED;
    }
    if (r.seq != req.seq) {  // a stale answer (cannot happen with one call at a time)
      close_all(got, ngot);
      continue;
    }
    if (r.status != 0 || !rfds || !nrfds) {
      close_all(got, ngot);
      if (nrfds) *nrfds = 0;
    } else {
      std::memcpy(rfds, got, sizeof(int) * size_t(ngot));
      *nrfds = ngot;
    }
    *resp = r;
    return 0;
  }
}

int Conn::call(Request& req, Response* resp, const int* fds, int nfds, int* rfds, int* nrfds) {
  if (nrfds) *nrfds = 0;
  if (dead()) return EIO;
  std::lock_guard<mid::Mutex> g(lock_);
  return exchange(req, resp, fds, nfds, rfds, nrfds);
}

}  // namespace dverbs::pmd::remote
