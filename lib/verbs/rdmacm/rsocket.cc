// rsockets: the descriptor table and the socket calls that are not the data path —
// rsocket, rbind, rlisten, raccept, rconnect, rshutdown, rclose, the names, the options
// and rfcntl. rsocket_internal.h describes the design.
//
// Descriptors. Each rsocket owns an eventfd; its number is the descriptor the application
// gets, so it never collides with a real file descriptor (as rdma-core's rsockets return
// real descriptors they reserve). rpoll/rselect recognise it through the table; anything
// not in the table is handed to poll(2). Closing it with close(2) instead of rclose leaks
// the socket: the number may then be reused by the kernel while the table still has it.
//
// Errors are -1 with errno. Every call on a descriptor that is not an open rsocket fails
// with EBADF. SOCK_DGRAM (rsockets' datagram mode) is not implemented: EPROTONOSUPPORT.
// riomap, riounmap and riowrite (RDMA writes into a peer's mapped memory) are not
// implemented: ENOSYS.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <new>
#include <unordered_map>

#include "verbs/rdmacm/rsocket_internal.h"

namespace dverbs::rdmacm::rsock {

namespace {

std::mutex& table_lock() {
  static auto* m = new std::mutex();  // outlives main(): rclose from atexit handlers
  return *m;
}
std::unordered_map<int, SocketRef>& table() {
  static auto* t = new std::unordered_map<int, SocketRef>();
  return *t;
}

int fail(int err) {
  errno = err;
  return -1;
}

// Copies a socket address out as getsockname(2) does: truncated to *len, *len set to its
// real size.
void copy_addr(const sockaddr* src, int domain, sockaddr* dst, socklen_t* len) {
  sockaddr_storage any{};
  if (src->sa_family != AF_INET && src->sa_family != AF_INET6) {
    any.ss_family = sa_family_t(domain);  // not bound: the wildcard address, port 0
    src = reinterpret_cast<const sockaddr*>(&any);
  }
  const socklen_t size = src->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  std::memcpy(dst, src, std::min(*len, size));
  *len = size;
}

int get_int(const void* optval, socklen_t optlen, int* v) {
  if (!optval || optlen < sizeof(int)) return EINVAL;
  std::memcpy(v, optval, sizeof *v);
  return 0;
}

// Option storage is only read back; sizes take effect at the next connection.
int set_socket_opt(Socket* s, int name, const void* optval, socklen_t optlen) {
  int v = 0;
  if (name == SO_LINGER) {
    if (!optval || optlen < sizeof(linger)) return EINVAL;
    std::memcpy(&s->opt.lg, optval, sizeof(linger));
    return 0;
  }
  if (int rc = get_int(optval, optlen, &v)) return rc;
  switch (name) {
    case SO_REUSEADDR:
      if (s->id && rdma_set_option(s->id, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, &v, sizeof v) &&
          s->state == State::fresh && !s->bound)
        return errno;
      s->opt.reuseaddr = v != 0;
      return 0;
    case SO_SNDBUF:  // doubled, as Linux and rdma-core do
      s->opt.sndbuf = v > 0 && v < (1 << 29) ? 2 * v : s->opt.sndbuf;
      return 0;
    case SO_RCVBUF:
      s->opt.rcvbuf = v > 0 && v < (1 << 29) ? 2 * v : s->opt.rcvbuf;
      return 0;
    case SO_KEEPALIVE:
      s->opt.keepalive = v != 0;
      return 0;
    case SO_OOBINLINE:
      s->opt.oobinline = v != 0;
      return 0;
    default:
      return ENOPROTOOPT;
  }
}

int set_tcp_opt(Socket* s, int name, const void* optval, socklen_t optlen) {
  int v = 0;
  if (int rc = get_int(optval, optlen, &v)) return rc;
  switch (name) {
    case TCP_NODELAY:
      s->opt.nodelay = v != 0;
      return 0;
    case TCP_MAXSEG:
      s->opt.maxseg = v;
      return 0;
    case TCP_KEEPIDLE:
    case TCP_KEEPINTVL:
    case TCP_KEEPCNT:
      if (v <= 0) return EINVAL;
      (name == TCP_KEEPIDLE    ? s->opt.keepidle
       : name == TCP_KEEPINTVL ? s->opt.keepintvl
                               : s->opt.keepcnt) = v;
      return 0;
    default:
      return ENOPROTOOPT;
  }
}

int set_rdma_opt(Socket* s, int name, const void* optval, socklen_t optlen) {
  if (s->state != State::fresh && s->state != State::listening) return EINVAL;  // too late
  if (name == RDMA_ROUTE) return optval && optlen ? 0 : EINVAL;  // RoCE resolves its own
  int v = 0;
  if (int rc = get_int(optval, optlen, &v)) return rc;
  switch (name) {
    case RDMA_SQSIZE:
      s->opt.sqsize = v;
      return 0;
    case RDMA_RQSIZE:
      s->opt.rqsize = v;
      return 0;
    case RDMA_INLINE:
      s->opt.inline_size = v;
      return 0;
    case RDMA_IOMAPSIZE:
      s->opt.iomapsize = v;
      return 0;
    default:
      return ENOPROTOOPT;
  }
}

int put_int(void* optval, socklen_t* optlen, int v) {
  if (!optval || !optlen || *optlen < sizeof(int)) return EINVAL;
  std::memcpy(optval, &v, sizeof v);
  *optlen = sizeof v;
  return 0;
}

int get_socket_opt(Socket* s, int name, void* optval, socklen_t* optlen) {
  switch (name) {
    case SO_REUSEADDR:
      return put_int(optval, optlen, s->opt.reuseaddr);
    case SO_KEEPALIVE:
      return put_int(optval, optlen, s->opt.keepalive);
    case SO_OOBINLINE:
      return put_int(optval, optlen, s->opt.oobinline);
    case SO_SNDBUF:
      return put_int(optval, optlen, s->opt.sndbuf);
    case SO_RCVBUF:
      return put_int(optval, optlen, s->opt.rcvbuf);
    case SO_TYPE:
      return put_int(optval, optlen, SOCK_STREAM);
    case SO_DOMAIN:
      return put_int(optval, optlen, s->domain);
    case SO_PROTOCOL:
      return put_int(optval, optlen, IPPROTO_TCP);
    case SO_ACCEPTCONN:
      return put_int(optval, optlen, s->state == State::listening);
    case SO_ERROR: {
      const int rc = put_int(optval, optlen, s->err);
      if (!rc) s->err = 0;
      return rc;
    }
    case SO_LINGER:
      if (!optval || !optlen || *optlen < sizeof(linger)) return EINVAL;
      std::memcpy(optval, &s->opt.lg, sizeof(linger));
      *optlen = sizeof(linger);
      return 0;
    default:
      return ENOPROTOOPT;
  }
}

int get_tcp_opt(Socket* s, int name, void* optval, socklen_t* optlen) {
  switch (name) {
    case TCP_NODELAY:
      return put_int(optval, optlen, s->opt.nodelay);
    case TCP_MAXSEG:
      return put_int(optval, optlen, s->conn ? int(s->conn->msg_max) : int(kSlotSize));
    case TCP_KEEPIDLE:
      return put_int(optval, optlen, s->opt.keepidle);
    case TCP_KEEPINTVL:
      return put_int(optval, optlen, s->opt.keepintvl);
    case TCP_KEEPCNT:
      return put_int(optval, optlen, s->opt.keepcnt);
    default:
      return ENOPROTOOPT;
  }
}

int get_rdma_opt(Socket* s, int name, void* optval, socklen_t* optlen) {
  switch (name) {
    case RDMA_SQSIZE:
      return put_int(optval, optlen, s->conn ? int(s->conn->sq_max) : s->opt.sqsize);
    case RDMA_RQSIZE:
      return put_int(optval, optlen, s->conn ? int(s->conn->recv_slots) : s->opt.rqsize);
    case RDMA_INLINE:
      return put_int(optval, optlen, s->opt.inline_size);
    case RDMA_IOMAPSIZE:
      return put_int(optval, optlen, s->opt.iomapsize);
    default:
      return ENOPROTOOPT;  // RDMA_ROUTE: no IB path records on RoCE
  }
}

}  // namespace

Socket::~Socket() {
  if (fd >= 0) close(fd);
}

const char* state_name(State s) noexcept {
  static const char* const kNames[] = {"fresh",           "listening",  "resolving_addr",
                                       "resolving_route", "connecting", "accepting",
                                       "connected",       "failed"};
  return kNames[size_t(s)];
}

SocketRef new_socket(int domain) noexcept {
  const int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return nullptr;
  SocketRef s;
  try {
    s = std::make_shared<Socket>(efd, domain);
    std::lock_guard<std::mutex> g(table_lock());
    table()[efd] = s;
  } catch (...) {
    if (!s) close(efd);
    errno = ENOMEM;
    return nullptr;
  }
  return s;
}

SocketRef find_socket(int fd) noexcept {
  std::lock_guard<std::mutex> g(table_lock());
  auto it = table().find(fd);
  if (it == table().end()) {
    errno = EBADF;
    return nullptr;
  }
  return it->second;
}

bool remove_socket(int fd) noexcept {
  std::lock_guard<std::mutex> g(table_lock());
  return table().erase(fd) == 1;
}

}  // namespace dverbs::rdmacm::rsock

using namespace dverbs::rdmacm::rsock;

extern "C" {

// EAFNOSUPPORT: not AF_INET/AF_INET6 (AF_IB: no InfiniBand addressing on RoCE);
// EPROTONOSUPPORT: SOCK_DGRAM, or a protocol other than 0/IPPROTO_TCP; ESOCKTNOSUPPORT:
// any other type. SOCK_NONBLOCK and SOCK_CLOEXEC are accepted in type.
int rsocket(int domain, int type, int protocol) {
  const bool nonblock = type & SOCK_NONBLOCK;
  type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (domain != AF_INET && domain != AF_INET6) return fail(EAFNOSUPPORT);
  if (type == SOCK_DGRAM) return fail(EPROTONOSUPPORT);
  if (type != SOCK_STREAM) return fail(ESOCKTNOSUPPORT);
  if (protocol && protocol != IPPROTO_TCP) return fail(EPROTONOSUPPORT);
  SocketRef s = new_socket(domain);
  if (!s) return -1;
  Lock lk(s->mu);
  if (int rc = open_id(s.get())) {
    remove_socket(s->fd);
    return fail(rc);
  }
  if (nonblock) s->fd_flags |= O_NONBLOCK;
  return s->fd;
}

// EINVAL: bound already, not fresh, a NULL or short address; dvcm's errno otherwise
// (EADDRINUSE, EADDRNOTAVAIL, EAFNOSUPPORT...).
int rbind(int socket, const sockaddr* addr, socklen_t addrlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  if (!addr || addrlen < sizeof(sa_family_t)) return fail(EINVAL);
  if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) return fail(EAFNOSUPPORT);
  const socklen_t need = addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  if (addrlen < need) return fail(EINVAL);
  if (s->bound || s->state != State::fresh) return fail(EINVAL);
  sockaddr_storage a{};
  std::memcpy(&a, addr, need);
  if (rdma_bind_addr(s->id, reinterpret_cast<sockaddr*>(&a))) return -1;
  s->bound = true;
  return 0;
}

int rlisten(int socket, int backlog) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  return do_listen(s.get(), backlog);
}

int raccept(int socket, sockaddr* addr, socklen_t* addrlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  return do_accept(s.get(), lk, addr, addrlen);
}

int rconnect(int socket, const sockaddr* addr, socklen_t addrlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  return do_connect(s.get(), lk, addr, addrlen);
}

// SHUT_WR/SHUT_RDWR send the FIN and wait (at most kCloseTimeoutMs, even on an
// O_NONBLOCK socket, as rdma-core does) until every send has completed. EINVAL: bad how;
// ENOTCONN: no connection.
int rshutdown(int socket, int how) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) return fail(EINVAL);
  Lock lk(s->mu);
  if (!s->conn || (s->state != State::connected && s->state != State::accepting))
    return fail(ENOTCONN);
  if (how != SHUT_WR) s->shut_rd = true;
  if (how != SHUT_RD) {
    s->shut_wr = true;
    send_fin(s.get(), lk);
  }
  wake(s.get());
  return 0;
}

// Sends the FIN of an open connection and waits for its sends (bounded), then tears
// everything down (the QP to ERR and a DREQ). A thread blocked in the socket wakes up and
// fails with EBADF.
int rclose(int socket) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  if (!remove_socket(socket)) return fail(EBADF);  // another rclose won
  Lock lk(s->mu);
  if (connection_open(s.get()) && !s->shut_wr) {
    s->shut_wr = true;
    send_fin(s.get(), lk);
  }
  s->closed = true;
  teardown(s.get());
  wake(s.get());
  return 0;
}

// ENOTCONN: not connected; EINVAL: NULL arguments.
int rgetpeername(int socket, sockaddr* addr, socklen_t* addrlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  if (!addr || !addrlen) return fail(EINVAL);
  if (!s->conn || s->state == State::failed || !s->id) return fail(ENOTCONN);
  copy_addr(rdma_get_peer_addr(s->id), s->domain, addr, addrlen);
  return 0;
}

// Unbound: the wildcard address of the socket's family, port 0.
int rgetsockname(int socket, sockaddr* addr, socklen_t* addrlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  if (!addr || !addrlen) return fail(EINVAL);
  sockaddr_storage none{};
  const sockaddr* src = s->id ? rdma_get_local_addr(s->id) : reinterpret_cast<sockaddr*>(&none);
  copy_addr(src, s->domain, addr, addrlen);
  return 0;
}

// SOL_SOCKET: SO_REUSEADDR (also set on the identifier), SO_SNDBUF, SO_RCVBUF (doubled;
// they size the next connection's rings), SO_LINGER, SO_KEEPALIVE, SO_OOBINLINE.
// IPPROTO_TCP: TCP_NODELAY, TCP_MAXSEG, TCP_KEEPIDLE/INTVL/CNT (> 0). IPPROTO_IPV6:
// IPV6_V6ONLY (AF_INET6 sockets, before rbind). SOL_RDMA: RDMA_SQSIZE, RDMA_RQSIZE,
// RDMA_INLINE, RDMA_IOMAPSIZE, RDMA_ROUTE (ignored), before the connection only (EINVAL
// after). Keep-alive, linger, no-delay and the SOL_RDMA sizes are recorded and read back,
// they change nothing. EINVAL: NULL or short optval; ENOPROTOOPT: anything else.
int rsetsockopt(int socket, int level, int optname, const void* optval, socklen_t optlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  int rc;
  switch (level) {
    case SOL_SOCKET:
      rc = set_socket_opt(s.get(), optname, optval, optlen);
      break;
    case IPPROTO_TCP:
      rc = set_tcp_opt(s.get(), optname, optval, optlen);
      break;
    case IPPROTO_IPV6: {
      int v = 0;
      if (optname != IPV6_V6ONLY || s->domain != AF_INET6) {
        rc = ENOPROTOOPT;
      } else if (!(rc = get_int(optval, optlen, &v))) {
        rc =
            rdma_set_option(s->id, RDMA_OPTION_ID, RDMA_OPTION_ID_AFONLY, &v, sizeof v) ? errno : 0;
        if (!rc) s->opt.v6only = v != 0;
      }
      break;
    }
    case SOL_RDMA:
      rc = set_rdma_opt(s.get(), optname, optval, optlen);
      break;
    default:
      rc = ENOPROTOOPT;
  }
  return rc ? fail(rc) : 0;
}

// The options above, and SO_ERROR (cleared by reading it), SO_TYPE, SO_DOMAIN,
// SO_PROTOCOL, SO_ACCEPTCONN. EINVAL: NULL or short optval; ENOPROTOOPT: anything else.
int rgetsockopt(int socket, int level, int optname, void* optval, socklen_t* optlen) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  int rc;
  switch (level) {
    case SOL_SOCKET:
      rc = get_socket_opt(s.get(), optname, optval, optlen);
      break;
    case IPPROTO_TCP:
      rc = get_tcp_opt(s.get(), optname, optval, optlen);
      break;
    case IPPROTO_IPV6:
      rc = optname == IPV6_V6ONLY && s->domain == AF_INET6 ? put_int(optval, optlen, s->opt.v6only)
                                                           : ENOPROTOOPT;
      break;
    case SOL_RDMA:
      rc = get_rdma_opt(s.get(), optname, optval, optlen);
      break;
    default:
      rc = ENOPROTOOPT;
  }
  return rc ? fail(rc) : 0;
}

// F_GETFL (O_RDWR plus the status flags), F_SETFL (O_NONBLOCK matters), F_GETFD (always
// FD_CLOEXEC), F_SETFD (ignored). EINVAL: any other command.
int rfcntl(int socket, int cmd, ...) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  switch (cmd) {
    case F_GETFL:
      return O_RDWR | s->fd_flags;
    case F_SETFL: {
      va_list ap;
      va_start(ap, cmd);
      const int flags = va_arg(ap, int);
      va_end(ap);
      s->fd_flags = flags & ~(O_ACCMODE | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC);
      return 0;
    }
    case F_GETFD:
      return FD_CLOEXEC;
    case F_SETFD:
      return 0;
    default:
      return fail(EINVAL);
  }
}

// Not implemented: ENOSYS for an rsocket (EBADF for anything else).
off_t riomap(int socket, void*, size_t, int, int, off_t) {
  return find_socket(socket) ? fail(ENOSYS) : -1;
}
int riounmap(int socket, void*, size_t) {
  return find_socket(socket) ? fail(ENOSYS) : -1;
}
size_t riowrite(int socket, const void*, size_t, off_t, int) {
  return size_t(find_socket(socket) ? fail(ENOSYS) : -1);
}

}  // extern "C"
