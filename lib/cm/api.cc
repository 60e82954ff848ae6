// dvcm_*, the exported interface (dvcm.h): the CM of this process (cm.cc, dvcm_local_*),
// or, in a dverbsd client, the daemon's (daemon_proto.h) — as librdmacm reaches either the
// kernel's rdma_cm or nothing, librdmacm.so.1 sees one interface whichever serves it.
//
// Daemon mode is decided once, at the first call: the local CM starts (the midlayer
// probes its drivers); when no device could give it a GSI QP because the devices are a
// daemon's (Cm::no_gsi) and the daemon's CM socket answers, every later call goes there.
// A client's channels and identifiers are then small proxies (RChannel, RId) holding the
// daemon's handles; the channel's fd is the daemon's pipe, received with SCM_RIGHTS, so the
// application waits on it exactly as on an embedded channel.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "cm/daemon_proto.h"
#include "cm/internal.h"

namespace dverbs::cm {

struct RChannel {
  uint64_t h = 0;
  int fd = -1;
  std::atomic<int> readers{0};  // threads waiting in dvcm_get_event
  std::atomic<bool> dead{false};
};
struct RId {
  uint64_t h = 0;
  void* user = nullptr;
  RChannel* ch = nullptr;
};

class Remote {
 public:
  explicit Remote(int fd) : fd_(fd) {}
  // One request, one answer; a broken connection is EIO. Context: process context.
  int call(CmRequest& rq, CmResponse* rs, int* fd_out = nullptr) {
    std::lock_guard<std::mutex> g(mu_);
    rq.magic = kCmMagic;
    rq.seq = ++seq_;
    if (send(fd_, &rq, sizeof rq, MSG_NOSIGNAL) != ssize_t(sizeof rq)) return EIO;
    char cbuf[CMSG_SPACE(sizeof(int))];
    iovec iov{rs, sizeof *rs};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    const ssize_t n = recvmsg(fd_, &m, MSG_CMSG_CLOEXEC);
    int got_fd = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
        std::memcpy(&got_fd, CMSG_DATA(c), sizeof got_fd);
    if (n != ssize_t(sizeof *rs) || rs->magic != kCmMagic || rs->seq != rq.seq) {
      if (got_fd >= 0) close(got_fd);
      return EIO;
    }
    if (fd_out)
      *fd_out = got_fd;
    else if (got_fd >= 0)
      close(got_fd);
    return rs->status;
  }
  // Daemon handle → this process's proxy (events name identifiers by handle).
  std::mutex ids_mu;
  std::unordered_map<uint64_t, RId*> ids;

 private:
  int fd_;
  std::mutex mu_;
  uint32_t seq_ = 0;
};

namespace {

// The daemon directory, by the remote driver's rule (lib/pmd/remote/driver.cc): DVERBS_DAEMON
// names it, else the default when its socket exists.
std::string daemon_dir() {
  if (const char* d = std::getenv("DVERBS_DAEMON"); d && *d)
    return std::strcmp(d, "off") == 0 || std::strcmp(d, "dverbsd") == 0 ? std::string()
                                                                          : std::string(d);
  return "/run/dverbs";
}

Remote* connect_daemon() {
  const std::string dir = daemon_dir();
  if (dir.empty()) return nullptr;
  const std::string path = dir + "/" + kCmSocket;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return nullptr;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return nullptr;
  }
  return new (std::nothrow) Remote(fd);
}

RId* rid(dvcm_id* id) { return reinterpret_cast<RId*>(id); }
const RId* rid(const dvcm_id* id) { return reinterpret_cast<const RId*>(id); }
RChannel* rch(dvcm_channel* c) { return reinterpret_cast<RChannel*>(c); }

CmRequest on_id(CmOp op, const dvcm_id* id) {
  CmRequest r;
  r.op = op;
  r.id = id ? rid(id)->h : 0;
  return r;
}

int copy_sockaddr(sockaddr_storage& out, const sockaddr* a) {
  if (!a) return 0;
  if (a->sa_family == AF_INET)
    std::memcpy(&out, a, sizeof(sockaddr_in));
  else if (a->sa_family == AF_INET6)
    std::memcpy(&out, a, sizeof(sockaddr_in6));
  else
    return EAFNOSUPPORT;
  return 0;
}

void copy_param(CmRequest& r, const dvcm_conn_param* p) {
  r.param = {p->responder_resources, p->initiator_depth, p->flow_control, p->retry_count,
             p->rnr_retry_count, p->srq, p->qp_num, p->qp_type, p->psn, p->qkey};
  r.data_len = p->private_data ? p->private_data_len : 0;
  if (r.data_len) std::memcpy(r.data, p->private_data, r.data_len);
}

int simple(CmRequest r) {
  CmResponse rs;
  return remote()->call(r, &rs);
}

}  // namespace

Remote* remote() {
  static Remote* r = [] {
    bool want;
    {
      std::unique_lock<std::mutex> g(cm().mu);
      start_thread_locked();
      want = cm().ports.empty() && cm().no_gsi;
    }
    return want ? connect_daemon() : nullptr;
  }();
  return r;
}

}  // namespace dverbs::cm

using namespace dverbs::cm;

#define DV_EXPORT extern "C" __attribute__((visibility("default")))

DV_EXPORT int dvcm_channel_create(dvcm_channel** out) {
  if (!out) return EINVAL;
  Remote* r = remote();
  if (!r) return dvcm_local_channel_create(out);
  auto* c = new (std::nothrow) RChannel();
  if (!c) return ENOMEM;
  CmRequest rq;
  rq.op = CmOp::channel_create;
  CmResponse rs;
  int fd = -1;
  if (int rc = r->call(rq, &rs, &fd)) {
    delete c;
    return rc;
  }
  if (fd < 0) {
    delete c;
    return EIO;
  }
  c->h = rs.handle;
  c->fd = fd;
  *out = reinterpret_cast<dvcm_channel*>(c);
  return 0;
}

DV_EXPORT int dvcm_channel_fd(const dvcm_channel* ch) {
  if (!ch) return -1;
  if (!remote()) return dvcm_local_channel_fd(ch);
  return reinterpret_cast<const RChannel*>(ch)->fd;
}

DV_EXPORT int dvcm_channel_destroy(dvcm_channel* ch) {
  if (!ch) return EINVAL;
  if (!remote()) return dvcm_local_channel_destroy(ch);
  RChannel* c = rch(ch);
  if (c->readers.load()) {
    // A thread still waits on it (as rping's CM thread does at exit): as with an embedded
    // channel it keeps waiting, so the daemon's end stays open, until this process ends.
    c->dead.store(true);
    return 0;
  }
  CmRequest rq;
  rq.op = CmOp::channel_destroy;
  rq.channel = c->h;
  if (int rc = simple(rq)) return rc;
  close(c->fd);
  delete c;
  return 0;
}

DV_EXPORT int dvcm_get_event(dvcm_channel* ch, dvcm_event* out) {
  if (!ch || !out) return EINVAL;
  Remote* r = remote();
  if (!r) return dvcm_local_get_event(ch, out);
  for (;;) {
    char b;
    if (rch(ch)->dead.load()) return EBADF;
    rch(ch)->readers++;
    const ssize_t n = read(rch(ch)->fd, &b, 1);  // as the application set the fd
    const int err = errno;
    rch(ch)->readers--;
    if (rch(ch)->dead.load()) return EBADF;
    if (n < 0) return err;
    if (n == 0) return EPIPE;
    CmRequest rq;
    rq.op = CmOp::get_event;
    rq.channel = rch(ch)->h;
    CmResponse rs;
    const int rc = r->call(rq, &rs);
    if (rc == EAGAIN) continue;  // discarded meanwhile
    if (rc) return rc;
    *out = rs.event;
    std::lock_guard<std::mutex> g(r->ids_mu);
    auto lid = r->ids.find(rs.event_listen_id);
    out->listen_id = lid == r->ids.end() ? nullptr : reinterpret_cast<dvcm_id*>(lid->second);
    if (rs.event.type == DVCM_EVENT_CONNECT_REQUEST) {
      auto* c = new (std::nothrow) RId();
      if (!c) return ENOMEM;
      c->h = rs.event_id;
      c->ch = rch(ch);
      c->user = lid == r->ids.end() ? nullptr : lid->second->user;
      r->ids[c->h] = c;
      out->id = reinterpret_cast<dvcm_id*>(c);
    } else {
      auto it = r->ids.find(rs.event_id);
      if (it == r->ids.end()) continue;  // its identifier is gone here
      out->id = reinterpret_cast<dvcm_id*>(it->second);
    }
    out->user = reinterpret_cast<void*>(rs.event_user);
    return 0;
  }
}

DV_EXPORT int dvcm_create_id(dvcm_channel* ch, int ps, int qp_type, void* user, dvcm_id** out) {
  if (!ch || !out) return EINVAL;
  Remote* r = remote();
  if (!r) return dvcm_local_create_id(ch, ps, qp_type, user, out);
  auto* id = new (std::nothrow) RId();
  if (!id) return ENOMEM;
  CmRequest rq;
  rq.op = CmOp::create_id;
  rq.channel = rch(ch)->h;
  rq.a = ps;
  rq.b = qp_type;
  CmResponse rs;
  if (int rc = r->call(rq, &rs)) {
    delete id;
    return rc;
  }
  id->h = rs.handle;
  id->user = user;
  id->ch = rch(ch);
  std::lock_guard<std::mutex> g(r->ids_mu);
  r->ids[id->h] = id;
  *out = reinterpret_cast<dvcm_id*>(id);
  return 0;
}

DV_EXPORT int dvcm_destroy_id(dvcm_id* id) {
  Remote* r = remote();
  if (!r) return dvcm_local_destroy_id(id);
  if (!id) return EINVAL;
  if (int rc = simple(on_id(CmOp::destroy_id, id))) return rc;
  std::lock_guard<std::mutex> g(r->ids_mu);
  r->ids.erase(rid(id)->h);
  delete rid(id);
  return 0;
}

DV_EXPORT void dvcm_set_user(dvcm_id* id, void* user) {
  if (!remote()) return dvcm_local_set_user(id, user);
  if (id) rid(id)->user = user;
}

DV_EXPORT void* dvcm_get_user(const dvcm_id* id) {
  if (!remote()) return dvcm_local_get_user(id);
  return id ? rid(id)->user : nullptr;
}

DV_EXPORT int dvcm_migrate_id(dvcm_id* id, dvcm_channel* ch) {
  if (!remote()) return dvcm_local_migrate_id(id, ch);
  if (!id || !ch) return EINVAL;
  CmRequest rq = on_id(CmOp::migrate_id, id);
  rq.channel = rch(ch)->h;
  if (int rc = simple(rq)) return rc;
  rid(id)->ch = rch(ch);
  return 0;
}

DV_EXPORT int dvcm_set_option(dvcm_id* id, int name, int value) {
  if (!remote()) return dvcm_local_set_option(id, name, value);
  CmRequest rq = on_id(CmOp::set_option, id);
  rq.a = name;
  rq.b = value;
  return simple(rq);
}

DV_EXPORT int dvcm_bind_addr(dvcm_id* id, const sockaddr* addr) {
  if (!remote()) return dvcm_local_bind_addr(id, addr);
  if (!addr) return EINVAL;
  CmRequest rq = on_id(CmOp::bind_addr, id);
  if (int rc = copy_sockaddr(rq.addr, addr)) return rc;
  return simple(rq);
}

DV_EXPORT int dvcm_resolve_addr(dvcm_id* id, const sockaddr* src, const sockaddr* dst,
                                int timeout_ms) {
  if (!remote()) return dvcm_local_resolve_addr(id, src, dst, timeout_ms);
  if (!dst) return EINVAL;
  CmRequest rq = on_id(CmOp::resolve_addr, id);
  if (int rc = copy_sockaddr(rq.addr, src)) return rc;
  if (int rc = copy_sockaddr(rq.addr2, dst)) return rc;
  rq.a = timeout_ms;
  return simple(rq);
}

DV_EXPORT int dvcm_resolve_route(dvcm_id* id, int timeout_ms) {
  if (!remote()) return dvcm_local_resolve_route(id, timeout_ms);
  CmRequest rq = on_id(CmOp::resolve_route, id);
  rq.a = timeout_ms;
  return simple(rq);
}

DV_EXPORT int dvcm_listen(dvcm_id* id, int backlog) {
  if (!remote()) return dvcm_local_listen(id, backlog);
  CmRequest rq = on_id(CmOp::listen, id);
  rq.a = backlog;
  return simple(rq);
}

DV_EXPORT int dvcm_connect(dvcm_id* id, const dvcm_conn_param* p) {
  if (!remote()) return dvcm_local_connect(id, p);
  if (!p) return EINVAL;
  CmRequest rq = on_id(CmOp::connect, id);
  copy_param(rq, p);
  return simple(rq);
}

DV_EXPORT int dvcm_accept(dvcm_id* id, const dvcm_conn_param* p) {
  if (!remote()) return dvcm_local_accept(id, p);
  if (!p) return EINVAL;
  CmRequest rq = on_id(CmOp::accept, id);
  copy_param(rq, p);
  return simple(rq);
}

DV_EXPORT int dvcm_reject(dvcm_id* id, const void* pd, uint8_t len) {
  if (!remote()) return dvcm_local_reject(id, pd, len);
  CmRequest rq = on_id(CmOp::reject, id);
  rq.data_len = pd ? len : 0;
  if (rq.data_len) std::memcpy(rq.data, pd, len);
  return simple(rq);
}

DV_EXPORT int dvcm_notify(dvcm_id* id, int event) {
  if (!remote()) return dvcm_local_notify(id, event);
  CmRequest rq = on_id(CmOp::notify, id);
  rq.a = event;
  return simple(rq);
}

DV_EXPORT int dvcm_disconnect(dvcm_id* id) {
  if (!remote()) return dvcm_local_disconnect(id);
  return simple(on_id(CmOp::disconnect, id));
}

DV_EXPORT int dvcm_establish(dvcm_id* id) {
  if (!remote()) return dvcm_local_establish(id);
  return simple(on_id(CmOp::establish, id));
}

DV_EXPORT int dvcm_join_multicast(dvcm_id* id, const sockaddr* addr, void* user) {
  if (!remote()) return dvcm_local_join_multicast(id, addr, user);
  if (!addr) return EINVAL;
  CmRequest rq = on_id(CmOp::join_multicast, id);
  if (int rc = copy_sockaddr(rq.addr, addr)) return rc;
  rq.user = reinterpret_cast<uint64_t>(user);
  return simple(rq);
}

DV_EXPORT int dvcm_leave_multicast(dvcm_id* id, const sockaddr* addr) {
  if (!remote()) return dvcm_local_leave_multicast(id, addr);
  if (!addr) return EINVAL;
  CmRequest rq = on_id(CmOp::leave_multicast, id);
  if (int rc = copy_sockaddr(rq.addr, addr)) return rc;
  return simple(rq);
}

DV_EXPORT int dvcm_query(const dvcm_id* id, sockaddr_storage* src, sockaddr_storage* dst,
                         dvcm_path* path) {
  Remote* r = remote();
  if (!r) return dvcm_local_query(id, src, dst, path);
  CmRequest rq = on_id(CmOp::query, id);
  CmResponse rs;
  const int rc = r->call(rq, &rs);
  if (rc && rc != ENODEV) return rc;
  if (src) *src = rs.src;
  if (dst) *dst = rs.dst;
  if (path) *path = rs.path;
  return rc;
}

DV_EXPORT int dvcm_get_qp_params(const dvcm_id* id, dvcm_qp_params* out) {
  Remote* r = remote();
  if (!r) return dvcm_local_get_qp_params(id, out);
  if (!out) return EINVAL;
  CmRequest rq = on_id(CmOp::get_qp_params, id);
  CmResponse rs;
  if (int rc = r->call(rq, &rs)) return rc;
  *out = rs.qp;
  return 0;
}
