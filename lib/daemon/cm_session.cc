// The daemon's side of the CM contract (lib/cm/daemon_proto.h): one thread per client
// connection on DIR/rdma_cm runs that client's dvcm calls on the daemon's CM, which owns
// the ports' QP1s. What a connection created (channels, identifiers, and the identifiers
// of the connection requests it was handed) is named by handles local to it; a handle it
// does not own is EINVAL. When the connection closes — the client exited or was killed —
// its identifiers are destroyed, which sends what the protocol owes (DREQ for a
// connection, REJ for a request): the peers see DISCONNECTED or REJECTED.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "cm/daemon_proto.h"
#include "cm/internal.h"
#include "daemon/cm_session.h"

namespace dverbs::daemon {

using cm::CmOp;
using cm::CmRequest;
using cm::CmResponse;

namespace {

class CmSession {
 public:
  explicit CmSession(int fd) : fd_(fd) {}
  ~CmSession() {
    for (auto& [h, id] : ids_) dvcm_local_destroy_id(id);
    for (auto& [h, ch] : chans_) dvcm_local_channel_destroy(ch);
  }

  void run() {
    for (;;) {
      CmRequest rq;
      const ssize_t n = recv(fd_, &rq, sizeof rq, 0);
      if (n <= 0) return;  // closed: the destructor tears down what the client had
      CmResponse rs;
      rs.magic = cm::kCmMagic;
      rs.seq = rq.seq;
      int out_fd = -1;
      rs.status = n == ssize_t(sizeof rq) && rq.magic == cm::kCmMagic ? exec(rq, rs, &out_fd)
                                                                       : EINVAL;
      if (!reply(rs, out_fd)) return;
    }
  }

 private:
  bool reply(const CmResponse& rs, int fd) {
    iovec iov{const_cast<CmResponse*>(&rs), sizeof rs};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    char cbuf[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
      m.msg_control = cbuf;
      m.msg_controllen = sizeof cbuf;
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    return sendmsg(fd_, &m, MSG_NOSIGNAL) == ssize_t(sizeof rs);
  }

  dvcm_id* id(uint64_t h) {
    auto it = ids_.find(h);
    return it == ids_.end() ? nullptr : it->second;
  }
  dvcm_channel* chan(uint64_t h) {
    auto it = chans_.find(h);
    return it == chans_.end() ? nullptr : it->second;
  }
  uint64_t adopt(dvcm_id* i) {
    const uint64_t h = next_++;
    ids_[h] = i;
    rev_[i] = h;
    return h;
  }
  static const sockaddr* sa(const sockaddr_storage& s) {
    return s.ss_family ? reinterpret_cast<const sockaddr*>(&s) : nullptr;
  }
  static dvcm_conn_param param(const CmRequest& rq) {
    dvcm_conn_param p{};
    p.responder_resources = rq.param.responder_resources;
    p.initiator_depth = rq.param.initiator_depth;
    p.flow_control = rq.param.flow_control;
    p.retry_count = rq.param.retry_count;
    p.rnr_retry_count = rq.param.rnr_retry_count;
    p.srq = rq.param.srq;
    p.qp_num = rq.param.qp_num;
    p.qp_type = rq.param.qp_type;
    p.psn = rq.param.psn;
    p.qkey = rq.param.qkey;
    p.private_data = rq.data_len ? rq.data : nullptr;
    p.private_data_len = rq.data_len;
    return p;
  }

  int exec(const CmRequest& rq, CmResponse& rs, int* out_fd) {
    if (rq.op == CmOp::channel_create) {
      dvcm_channel* ch = nullptr;
      if (int rc = dvcm_local_channel_create(&ch)) return rc;
      rs.handle = next_++;
      chans_[rs.handle] = ch;
      *out_fd = dvcm_local_channel_fd(ch);
      return 0;
    }
    if (rq.op == CmOp::channel_destroy) {
      dvcm_channel* ch = chan(rq.channel);
      if (!ch) return EINVAL;
      if (int rc = dvcm_local_channel_destroy(ch)) return rc;
      chans_.erase(rq.channel);
      return 0;
    }
    if (rq.op == CmOp::get_event) {
      dvcm_channel* ch = chan(rq.channel);
      if (!ch) return EINVAL;
      dvcm_event e{};
      if (int rc = dvcm_local_pop_event(ch, &e)) return rc;
      if (e.type == DVCM_EVENT_CONNECT_REQUEST) {
        rs.event_id = adopt(e.id);
      } else {
        auto it = rev_.find(e.id);
        rs.event_id = it == rev_.end() ? 0 : it->second;
      }
      auto lit = rev_.find(e.listen_id);
      rs.event_listen_id = lit == rev_.end() ? 0 : lit->second;
      rs.event_user = reinterpret_cast<uint64_t>(e.user);  // the client's own value
      e.id = e.listen_id = nullptr;  // the daemon's addresses stay here
      e.user = nullptr;
      rs.event = e;
      return 0;
    }
    if (rq.op == CmOp::create_id) {
      dvcm_channel* ch = chan(rq.channel);
      if (!ch) return EINVAL;
      dvcm_id* i = nullptr;
      if (int rc = dvcm_local_create_id(ch, rq.a, rq.b, nullptr, &i)) return rc;
      rs.handle = adopt(i);
      return 0;
    }
    dvcm_id* i = id(rq.id);
    if (!i) return EINVAL;
    switch (rq.op) {
      case CmOp::destroy_id: {
        const int rc = dvcm_local_destroy_id(i);
        ids_.erase(rq.id);
        rev_.erase(i);
        return rc;
      }
      case CmOp::migrate_id: {
        dvcm_channel* ch = chan(rq.channel);
        return ch ? dvcm_local_migrate_id(i, ch) : EINVAL;
      }
      case CmOp::set_option: return dvcm_local_set_option(i, rq.a, rq.b);
      case CmOp::bind_addr: return dvcm_local_bind_addr(i, sa(rq.addr));
      case CmOp::resolve_addr:
        return dvcm_local_resolve_addr(i, sa(rq.addr), sa(rq.addr2), rq.a);
      case CmOp::resolve_route: return dvcm_local_resolve_route(i, rq.a);
      case CmOp::listen: return dvcm_local_listen(i, rq.a);
      case CmOp::connect: {
        const dvcm_conn_param p = param(rq);
        return dvcm_local_connect(i, &p);
      }
      case CmOp::accept: {
        const dvcm_conn_param p = param(rq);
        return dvcm_local_accept(i, &p);
      }
      case CmOp::reject: return dvcm_local_reject(i, rq.data, rq.data_len);
      case CmOp::notify: return dvcm_local_notify(i, rq.a);
      case CmOp::disconnect: return dvcm_local_disconnect(i);
      case CmOp::establish: return dvcm_local_establish(i);
      case CmOp::join_multicast:
        return dvcm_local_join_multicast(i, sa(rq.addr), reinterpret_cast<void*>(rq.user));
      case CmOp::leave_multicast: return dvcm_local_leave_multicast(i, sa(rq.addr));
      case CmOp::query: return dvcm_local_query(i, &rs.src, &rs.dst, &rs.path);
      case CmOp::get_qp_params: return dvcm_local_get_qp_params(i, &rs.qp);
      default: return EINVAL;
    }
  }

  int fd_;
  uint64_t next_ = 1;
  std::unordered_map<uint64_t, dvcm_id*> ids_;
  std::unordered_map<dvcm_id*, uint64_t> rev_;
  std::unordered_map<uint64_t, dvcm_channel*> chans_;
};

}  // namespace

void serve_cm_connection(int fd) {
  {
    CmSession s(fd);
    s.run();
  }
  close(fd);
}

}  // namespace dverbs::daemon
