// rsockets connection set-up and teardown: the socket's CM events, rconnect's state
// machine, rlisten, raccept, and the QP, CQ and rings of a connection.
//
//   active   fresh ─rconnect→ resolving_addr ─ADDR_RESOLVED→ resolving_route
//            ─ROUTE_RESOLVED (QP made, receives posted, REQ with our Hello)→ connecting
//            ─ESTABLISHED (the peer's Hello from the REP)→ connected
//   passive  fresh ─rlisten→ listening: each CONNECT_REQUEST (with a valid Hello) waits in
//            the backlog; raccept moves its identifier to a channel of its own, makes the
//            QP, posts the receives, accepts (REP with our Hello): accepting
//            ─ESTABLISHED, or the peer's first message (then rdma_notify)→ connected
//   any step's failure (REJECTED, *_ERROR, UNREACHABLE, DISCONNECTED) → failed, with
//   SO_ERROR set.
// Every handler runs with the socket's lock held, from progress() in whatever call is
// waiting; events are acked as soon as they are handled (rdma_destroy_id waits for that).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "verbs/rdmacm/rsocket_internal.h"

namespace dverbs::rdmacm::rsock {

namespace {

int fail(int err) {
  errno = err;
  return -1;
}

int set_nonblock(int fd) {
  const int fl = fcntl(fd, F_GETFL);
  return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? errno : 0;
}

uint32_t slots_for(int bytes) {
  return std::clamp<uint32_t>(uint32_t(bytes) / kSlotSize, kMinSlots, kMaxSlots);
}

Hello make_hello(const Conn* c) {
  Hello h{};
  h.magic = htobe32(kHelloMagic);
  h.version = kHelloVersion;
  h.slot_size = htobe32(kSlotSize);
  h.slots = htobe32(c->data_slots);
  return h;
}

// The peer's Hello from CM private data; false if it is not a dverbs rsocket.
bool parse_hello(const void* data, size_t len, Hello* out) {
  if (!data || len < sizeof(Hello)) return false;
  std::memcpy(out, data, sizeof *out);
  out->magic = be32toh(out->magic);
  out->slot_size = be32toh(out->slot_size);
  out->slots = be32toh(out->slots);
  return out->magic == kHelloMagic && out->version == kHelloVersion && out->slot_size &&
         out->slots && out->slots <= (1u << 20);
}

void apply_peer(Conn* c, const Hello& peer) {
  c->credits += peer.slots;
  c->msg_max = std::min(kSlotSize, peer.slot_size);
  c->have_peer = true;
}

rdma_conn_param conn_param(const Hello* h) {
  rdma_conn_param p{};
  p.private_data = h;
  p.private_data_len = sizeof *h;
  p.responder_resources = 0;  // no RDMA READ in this protocol
  p.initiator_depth = 0;
  p.flow_control = 1;
  p.retry_count = 7;
  p.rnr_retry_count = 7;  // forever: only a control message can meet an empty queue
  return p;
}

void destroy_conn(Socket* s) {
  Conn* c = s->conn;
  if (!c) return;
  if (s->id && s->id->qp) rdma_destroy_qp(s->id);
  if (c->cq) {
    if (c->cc) {  // ack what the channel still holds: ibv_destroy_cq waits for acks
      ibv_cq* cq;
      void* ctx;
      while (ibv_get_cq_event(c->cc, &cq, &ctx) == 0) ibv_ack_cq_events(cq, 1);
    }
    ibv_destroy_cq(c->cq);
  }
  if (c->cc) ibv_destroy_comp_channel(c->cc);
  if (c->rmr) ibv_dereg_mr(c->rmr);
  if (c->smr) ibv_dereg_mr(c->smr);
  std::free(c->rbuf);
  std::free(c->sbuf);
  delete[] c->ready;
  delete c;
  s->conn = nullptr;
}

uint8_t* alloc_ring(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes)) return nullptr;
  std::memset(p, 0, bytes);
  return static_cast<uint8_t*>(p);
}

// The QP (on s->id), its CQ and completion channel, the rings; every receive posted.
// `peer`: the peer's Hello when already known (passive side). 0 or an errno.
int create_conn(Socket* s, const Hello* peer) {
  rdma_cm_id* id = s->id;
  auto* c = new (std::nothrow) Conn();
  if (!c) return ENOMEM;
  s->conn = c;
  c->data_slots = slots_for(s->opt.rcvbuf);
  c->recv_slots = c->data_slots + kSpareRecvs;
  c->send_slots = slots_for(s->opt.sndbuf);
  c->sq_max = c->send_slots + kCtrlSends;
  int rc = 0;
  ibv_qp_init_attr qa{};
  if (!(c->cc = ibv_create_comp_channel(id->verbs)) || (rc = set_nonblock(c->cc->fd))) goto err;
  if (!(c->cq = ibv_create_cq(id->verbs, int(c->sq_max + c->recv_slots), s, c->cc, 0))) goto err;
  qa.send_cq = qa.recv_cq = c->cq;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = c->sq_max;
  qa.cap.max_recv_wr = c->recv_slots;
  qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
  qa.sq_sig_all = 1;
  if (rdma_create_qp(id, nullptr, &qa)) goto err;
  c->rbuf = alloc_ring(size_t(c->recv_slots) * kSlotSize);
  c->sbuf = alloc_ring(size_t(c->send_slots) * kSlotSize);
  c->ready = new (std::nothrow) Ready[c->recv_slots];
  if (!c->rbuf || !c->sbuf || !c->ready) {
    rc = ENOMEM;
    goto err;
  }
  if (!(c->rmr = ibv_reg_mr(id->qp->pd, c->rbuf, size_t(c->recv_slots) * kSlotSize,
                            IBV_ACCESS_LOCAL_WRITE)) ||
      !(c->smr = ibv_reg_mr(id->qp->pd, c->sbuf, size_t(c->send_slots) * kSlotSize, 0)))
    goto err;
  if ((rc = post_all_recvs(c, id->qp))) goto err;
  if (peer) apply_peer(c, *peer);
  return 0;
err:
  if (!rc) rc = errno ? errno : ENOMEM;
  destroy_conn(s);
  return rc;
}

// The errno a failed connection step reports.
int event_errno(const rdma_cm_event* e, int dflt) {
  if (e->event == RDMA_CM_EVENT_REJECTED) return ECONNREFUSED;
  return e->status < 0 ? -e->status : dflt;
}

bool connecting(const Socket* s) {
  return s->state == State::resolving_addr || s->state == State::resolving_route ||
         s->state == State::connecting;
}

void fail_connect(Socket* s, int err) {
  s->err = err;
  s->state = State::failed;
  if (s->conn) s->conn->dead = true;
}

// ROUTE_RESOLVED: the QP and rings, then the REQ.
int send_request(Socket* s) {
  if (int rc = create_conn(s, nullptr)) return rc;
  const Hello h = make_hello(s->conn);
  rdma_conn_param p = conn_param(&h);
  return rdma_connect(s->id, &p) ? errno : 0;
}

void listener_event(Socket* s, rdma_cm_event* e) {
  if (e->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
    Pending p;
    p.id = e->id;
    if (!parse_hello(e->param.conn.private_data, e->param.conn.private_data_len, &p.peer)) {
      rdma_reject(p.id, nullptr, 0);  // not a dverbs rsocket
      rdma_destroy_id(p.id);
      return;
    }
    try {
      s->backlog.push_back(p);
    } catch (...) {
      rdma_reject(p.id, nullptr, 0);
      rdma_destroy_id(p.id);
    }
    return;
  }
  // A request the application has not taken yet went away (the peer gave up).
  for (Pending& p : s->backlog)
    if (p.id == e->id && e->event != RDMA_CM_EVENT_ESTABLISHED) p.dead = true;
}

void conn_event(Socket* s, rdma_cm_event* e) {
  Conn* c = s->conn;
  switch (e->event) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
      if (s->state != State::resolving_addr) return;
      if (rdma_resolve_route(s->id, kResolveTimeoutMs))
        fail_connect(s, errno);
      else
        s->state = State::resolving_route;
      return;
    case RDMA_CM_EVENT_ROUTE_RESOLVED:
      if (s->state != State::resolving_route) return;
      if (int rc = send_request(s))
        fail_connect(s, rc);
      else
        s->state = State::connecting;
      return;
    case RDMA_CM_EVENT_ESTABLISHED:
      if (s->state == State::connecting) {
        Hello h;
        if (!c || !parse_hello(e->param.conn.private_data, e->param.conn.private_data_len, &h)) {
          fail_connect(s, ECONNREFUSED);  // the listener is no dverbs rsocket
          disconnect(s);
          return;
        }
        apply_peer(c, h);
        c->established = true;
        s->state = State::connected;
      } else if (s->state == State::accepting) {
        c->established = true;
        s->state = State::connected;
      }
      return;
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_REJECTED:
      if (connecting(s)) {
        fail_connect(
            s, event_errno(e, e->event == RDMA_CM_EVENT_UNREACHABLE ? ETIMEDOUT : EHOSTUNREACH));
      } else if (c) {  // accepted, and the CM gave up waiting for the RTU: the QP is in ERR
        if (!s->err) s->err = event_errno(e, ETIMEDOUT);
        c->dead = true;
      }
      return;
    case RDMA_CM_EVENT_DISCONNECTED:
      if (connecting(s)) fail_connect(s, ECONNRESET);
      if (c) {
        c->disconnected = true;
        disconnect(s);  // answers the DREQ
      }
      return;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      if (connecting(s)) fail_connect(s, ENODEV);
      s->err = ENODEV;
      if (c) c->dead = true;
      return;
    default:
      return;
  }
}

// A new socket for a request: its own channel, the identifier moved there, the QP, REP.
// Context: the listener's lock held. 0 or an errno (the request is then the caller's).
int accept_request(Socket* l, Pending& p, SocketRef* out) {
  SocketRef s = new_socket(l->domain);
  if (!s) return errno;
  Lock lk(s->mu);
  s->opt = l->opt;
  int rc = 0;
  if (!(s->ch = rdma_create_event_channel()) || (rc = set_nonblock(s->ch->fd)) ||
      rdma_migrate_id(p.id, s->ch)) {
    if (!rc) rc = errno;
  } else {
    s->id = p.id;  // from here on, teardown() owns it
    p.id = nullptr;
    s->bound = true;
    rc = create_conn(s.get(), &p.peer);
    if (!rc) {
      const Hello h = make_hello(s->conn);
      rdma_conn_param cp = conn_param(&h);
      if (rdma_accept(s->id, &cp)) rc = errno;
    }
  }
  if (rc) {
    remove_socket(s->fd);
    s->closed = true;
    teardown(s.get());  // rejects the request if it is still there
    return rc;
  }
  s->state = State::accepting;
  *out = s;
  return 0;
}

bool has_request(Socket* s) {
  return !s->backlog.empty();
}

bool connect_done(Socket* s) {
  return !connecting(s);
}

}  // namespace

int open_id(Socket* s) noexcept {
  if (!(s->ch = rdma_create_event_channel())) return errno;
  int rc = set_nonblock(s->ch->fd);
  if (!rc && rdma_create_id(s->ch, &s->id, nullptr, RDMA_PS_TCP)) rc = errno;
  if (rc) {
    rdma_destroy_event_channel(s->ch);
    s->ch = nullptr;
  }
  return rc;
}

void process_cm(Socket* s) noexcept {
  if (!s->ch) return;
  rdma_cm_event* e;
  while (rdma_get_cm_event(s->ch, &e) == 0) {
    if (s->state == State::listening)
      listener_event(s, e);
    else
      conn_event(s, e);
    rdma_ack_cm_event(e);
  }
}

void disconnect(Socket* s) noexcept {
  Conn* c = s->conn;
  if (!c || c->disconnect_sent) return;
  c->disconnect_sent = true;
  c->disconnected = true;
  c->dead = true;  // the QP is in ERR now
  rdma_disconnect(s->id);
}

void comm_established(Socket* s) noexcept {
  rdma_notify(s->id, IBV_EVENT_COMM_EST);
}

void teardown(Socket* s) noexcept {
  if (s->conn && s->state != State::failed) disconnect(s);
  destroy_conn(s);
  for (Pending& p : s->backlog)
    if (p.id) rdma_destroy_id(p.id);  // rejects it
  s->backlog.clear();
  if (s->id) rdma_destroy_id(s->id);
  s->id = nullptr;
  if (s->ch) rdma_destroy_event_channel(s->ch);
  s->ch = nullptr;
}

// Blocking: returns once connected (0) or failed (-1, errno from SO_ERROR). O_NONBLOCK:
// EINPROGRESS; completion shows as POLLOUT, the outcome in SO_ERROR. EALREADY: in
// progress; EISCONN: connected; EINVAL: listening, or failed before (the error is then
// reported once more if SO_ERROR still holds it); EAFNOSUPPORT: not AF_INET/AF_INET6.
int do_connect(Socket* s, Lock& lk, const sockaddr* addr, socklen_t len) noexcept {
  if (!addr || len < sizeof(sa_family_t)) return fail(EINVAL);
  if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) return fail(EAFNOSUPPORT);
  const socklen_t need = addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  if (len < need) return fail(EINVAL);
  switch (s->state) {
    case State::fresh:
      break;
    case State::resolving_addr:
    case State::resolving_route:
    case State::connecting:
      return fail(EALREADY);
    case State::accepting:
    case State::connected:
      return fail(EISCONN);
    case State::failed:
      if (s->err) {
        const int err = s->err;
        s->err = 0;
        return fail(err);
      }
      return fail(EINVAL);
    default:
      return fail(EINVAL);
  }
  sockaddr_storage dst{};
  std::memcpy(&dst, addr, need);
  if (rdma_resolve_addr(s->id, nullptr, reinterpret_cast<sockaddr*>(&dst), kResolveTimeoutMs))
    return -1;
  s->state = State::resolving_addr;
  if (nonblocking(s, 0)) return fail(EINPROGRESS);
  if (int rc = wait_for(s, lk, connect_done, -1)) return fail(rc);
  if (s->state == State::connected) return 0;
  const int err = s->err ? s->err : ECONNREFUSED;
  s->err = 0;
  return fail(err);
}

// rlisten on a listener only changes nothing (Linux updates the backlog). EINVAL: not a
// fresh socket.
int do_listen(Socket* s, int backlog) noexcept {
  if (s->state == State::listening) return 0;
  if (s->state != State::fresh) return fail(EINVAL);
  if (rdma_listen(s->id, backlog > 0 ? backlog : 128)) return -1;
  s->state = State::listening;
  s->bound = true;
  return 0;
}

// The new socket is blocking, with the listener's options; it is usable at once (sends
// wait until the peer's QP is known to be ready). EINVAL: not listening; EAGAIN: O_NONBLOCK
// and no request waiting.
int do_accept(Socket* s, Lock& lk, sockaddr* addr, socklen_t* len) noexcept {
  if (s->state != State::listening) return fail(EINVAL);
  if (addr && !len) return fail(EINVAL);
  for (;;) {
    progress(s);
    while (!s->backlog.empty() && s->backlog.front().dead) {
      rdma_destroy_id(s->backlog.front().id);
      s->backlog.pop_front();
    }
    if (s->backlog.empty()) {
      if (nonblocking(s, 0)) return would_block();
      if (int rc = wait_for(s, lk, has_request, -1)) return fail(rc);
      continue;
    }
    Pending p = s->backlog.front();
    s->backlog.pop_front();
    SocketRef child;
    if (int rc = accept_request(s, p, &child)) {
      if (p.id) rdma_destroy_id(p.id);  // rejects it
      return fail(rc);
    }
    if (addr) {
      const sockaddr* peer = rdma_get_peer_addr(child->id);
      const socklen_t size =
          peer->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
      std::memcpy(addr, peer, std::min(*len, size));
      *len = size;
    }
    return child->fd;
  }
}

}  // namespace dverbs::rdmacm::rsock
