// Event channels and identifiers: creation, destruction (waiting for every reported event
// to be acked), migration between channels, options, the registry of live objects, and the
// two helpers the connection calls share: query_route (what dvcm_query reports, copied into
// the rdma_cm_id) and complete_sync (the synchronous mode).
#include <endian.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

std::unordered_map<const void*, Kind>& registry() {
  static auto* r = new std::unordered_map<const void*, Kind>();  // outlives main()
  return *r;
}

}  // namespace

std::mutex& g_lock() {
  static auto* m = new std::mutex();
  return *m;
}

bool register_object(const void* p, Kind k) noexcept {
  try {
    registry()[p] = k;
    return true;
  } catch (...) {
    return false;
  }
}

void unregister_object(const void* p) noexcept {
  registry().erase(p);
}

bool registered(const void* p, Kind k) noexcept {
  auto it = registry().find(p);
  return it != registry().end() && it->second == k;
}

IdPriv* lookup_any(rdma_cm_id* id) noexcept {
  if (!id) return fail(EINVAL, static_cast<IdPriv*>(nullptr));
  std::lock_guard<std::mutex> g(g_lock());
  if (!registered(id, Kind::id)) return fail(EINVAL, static_cast<IdPriv*>(nullptr));
  return reinterpret_cast<IdPriv*>(id);
}

IdPriv* lookup_id(rdma_cm_id* id) noexcept {
  if (!id) return fail(EINVAL, static_cast<IdPriv*>(nullptr));
  std::lock_guard<std::mutex> g(g_lock());
  if (!registered(id, Kind::id) || !reinterpret_cast<IdPriv*>(id)->dv)
    return fail(EINVAL, static_cast<IdPriv*>(nullptr));
  return reinterpret_cast<IdPriv*>(id);
}

void unlink_pending(IdPriv* p) noexcept {
  if (!p->listener) return;
  for (IdPriv** c = &p->listener->pending; *c; c = &(*c)->pending_next)
    if (*c == p) {
      *c = p->pending_next;
      break;
    }
  p->listener = nullptr;
  p->pending_next = nullptr;
}

Channel* lookup_channel(rdma_event_channel* ch) noexcept {
  if (!ch) return fail(EINVAL, static_cast<Channel*>(nullptr));
  std::lock_guard<std::mutex> g(g_lock());
  if (!registered(ch, Kind::channel)) return fail(EINVAL, static_cast<Channel*>(nullptr));
  return reinterpret_cast<Channel*>(ch);
}

namespace {

// Caller holds g_lock.
Channel* new_channel_locked() noexcept {
  auto* c = new (std::nothrow) Channel();
  if (!c) return fail(ENOMEM, static_cast<Channel*>(nullptr));
  if (int rc = dvcm_channel_create(&c->dv)) {
    delete c;
    return fail(rc, static_cast<Channel*>(nullptr));
  }
  c->ch.fd = dvcm_channel_fd(c->dv);
  if (!register_object(c, Kind::channel)) {
    dvcm_channel_destroy(c->dv);
    delete c;
    return fail(ENOMEM, static_cast<Channel*>(nullptr));
  }
  return c;
}

Channel* new_channel() noexcept {
  std::lock_guard<std::mutex> g(g_lock());
  return new_channel_locked();
}

// 0 or an errno (EBUSY: identifiers still use it; the channel then stays). Caller holds
// g_lock.
int destroy_channel_locked(Channel* c) noexcept {
  if (int rc = dvcm_channel_destroy(c->dv)) return rc;
  unregister_object(c);
  delete c;
  return 0;
}

int destroy_channel(Channel* c) noexcept {
  std::lock_guard<std::mutex> g(g_lock());
  return destroy_channel_locked(c);
}

void free_id(IdPriv* p) noexcept {
  while (Multicast* m = p->mc_list) {
    p->mc_list = m->next;
    delete m;
  }
  std::free(p->id.route.path_rec);
  std::free(p->connect);
  std::free(p->qp_init_attr);
  if (p->sync) destroy_channel(channel_of(p->id.channel));
  delete p;
}

bool valid_ps(int ps) {
  return ps == RDMA_PS_TCP || ps == RDMA_PS_UDP || ps == RDMA_PS_IPOIB || ps == RDMA_PS_IB;
}

}  // namespace

// rdma-core's rdma_create_id2: `channel` NULL makes a synchronous identifier with a private
// channel. 0 or -1/errno.
int create_id(rdma_event_channel* channel, rdma_cm_id** out, void* context, int ps,
              ibv_qp_type qp_type) noexcept {
  if (!out || !valid_ps(ps)) return fail(EINVAL);
  if (int rc = init_devices()) return fail(rc);
  Channel* ch = nullptr;
  if (channel && !(ch = lookup_channel(channel))) return -1;
  auto* p = new (std::nothrow) IdPriv();
  if (!p) return fail(ENOMEM);
  p->id.context = context;
  p->id.ps = rdma_port_space(ps);
  p->id.qp_type = qp_type;
  p->psn = random_psn();
  if (!ch) {
    if (!(ch = new_channel())) {
      delete p;
      return -1;
    }
    p->sync = true;
  }
  p->id.channel = &ch->ch;
  // The QP type dvcm serves is the kernel's (ucma_get_qp_type): the port space decides
  // except for PS_IB; id.qp_type stays what the caller gave, as in rdma-core.
  // XRC connections are RC connections to the CM (the XRC QPs' own attributes are the
  // drop-in's, rdmacm/qp.cc).
  const bool xrc = qp_type == IBV_QPT_XRC_SEND || qp_type == IBV_QPT_XRC_RECV;
  const int cm_qp_type = ps == RDMA_PS_TCP || xrc                   ? IBV_QPT_RC
                         : ps == RDMA_PS_UDP || ps == RDMA_PS_IPOIB ? IBV_QPT_UD
                                                                    : qp_type;
  if (int rc = dvcm_create_id(ch->dv, ps, cm_qp_type, p, &p->dv)) {
    free_id(p);
    return fail(rc);
  }
  bool ok;
  {
    std::lock_guard<std::mutex> g(g_lock());
    ok = register_object(p, Kind::id);
  }
  if (!ok) {
    dvcm_destroy_id(p->dv);
    free_id(p);
    return fail(ENOMEM);
  }
  *out = &p->id;
  return 0;
}

// The identifier of a CONNECT_REQUEST (event.cc): wraps the dvcm_id dvcm created, under
// g_lock, so that an event for it popped by another thread finds it.
IdPriv* adopt_request_id(IdPriv* listen, dvcm_id* dv) noexcept {
  auto* p = new (std::nothrow) IdPriv();
  if (!p) return nullptr;
  p->dv = dv;
  p->id.context = listen->id.context;
  p->id.ps = listen->id.ps;
  p->id.qp_type = listen->id.qp_type;
  p->id.channel = listen->id.channel;
  p->psn = random_psn();
  p->negotiated = true;  // the REQ is in
  if (!register_object(p, Kind::id)) {
    delete p;
    return nullptr;
  }
  dvcm_set_user(dv, p);
  p->listener = listen;
  p->pending_next = listen->pending;
  listen->pending = p;
  return p;
}

// Undoes adopt_request_id when the request cannot be handed out: dvcm_destroy_id rejects it.
void drop_request_id(IdPriv* p) noexcept {
  {
    std::lock_guard<std::mutex> g(g_lock());
    if (p->dv) dvcm_destroy_id(p->dv);
    unlink_pending(p);
    unregister_object(p);
  }
  free_id(p);
}

// Under g_lock throughout, so that the listener cannot be destroyed (and the request with
// it) halfway.
int setup_request_id(IdPriv* p) noexcept {
  std::lock_guard<std::mutex> g(g_lock());
  if (!p->dv) return ECONNABORTED;         // its listener is gone
  if (p->listener && p->listener->sync) {  // rdma-core: rdma_migrate_id(id, NULL)
    Channel* ch = new_channel_locked();
    if (!ch) return errno;
    if (int rc = dvcm_migrate_id(p->dv, ch->dv)) {
      destroy_channel_locked(ch);
      return rc;
    }
    p->sync = true;
    p->id.channel = &ch->ch;
  }
  return query_route(p, true);
}

int query_route(IdPriv* p, bool want_path) noexcept {
  sockaddr_storage src, dst;
  std::memset(&src, 0, sizeof src);  // AF_UNSPEC: "not reported"
  std::memset(&dst, 0, sizeof dst);
  dvcm_path path{};
  const int rc = dvcm_query(p->dv, &src, &dst, &path);
  rdma_addr& a = p->id.route.addr;
  if (addr_len(reinterpret_cast<sockaddr*>(&src))) std::memcpy(&a.src_storage, &src, sizeof src);
  if (addr_len(reinterpret_cast<sockaddr*>(&dst))) std::memcpy(&a.dst_storage, &dst, sizeof dst);
  if (rc == ENODEV) return 0;  // bound to a wildcard address: no device yet
  if (rc) return rc;
  if (!p->dev) {
    Device* d = attach_device(path.dev_name);
    if (!d) return errno;
    p->dev = d;
    p->id.verbs = d->verbs;
    if (!p->id.pd) p->id.pd = d->pd;
  }
  p->id.port_num = path.port_num;
  std::memcpy(a.addr.ibaddr.sgid.raw, path.sgid, 16);
  std::memcpy(a.addr.ibaddr.dgid.raw, path.dgid, 16);
  a.addr.ibaddr.pkey = htobe16(path.pkey);
  if (!want_path) return 0;
  rdma_route& r = p->id.route;
  if (!r.path_rec) {
    r.path_rec = static_cast<ibv_sa_path_rec*>(std::calloc(1, sizeof(ibv_sa_path_rec)));
    if (!r.path_rec) return ENOMEM;
  }
  ibv_sa_path_rec& pr = *r.path_rec;
  std::memset(&pr, 0, sizeof pr);
  std::memcpy(pr.dgid.raw, path.dgid, 16);
  std::memcpy(pr.sgid.raw, path.sgid, 16);
  pr.flow_label = htobe32(path.flow_label);
  pr.hop_limit = path.hop_limit;
  pr.traffic_class = path.traffic_class;
  pr.reversible = 1;
  pr.numb_path = 1;
  pr.pkey = htobe16(path.pkey);
  pr.mtu_selector = 2;  // exactly
  pr.mtu = path.mtu;
  pr.rate_selector = 2;
  pr.packet_life_time_selector = 2;
  pr.packet_life_time = 16;  // the kernel's CMA_IBOE_PACKET_LIFETIME for RoCE
  r.num_paths = 1;
  return 0;
}

int complete_sync(IdPriv* p) noexcept {
  if (!p->sync) return 0;
  if (p->id.event) {
    rdma_ack_cm_event(p->id.event);
    p->id.event = nullptr;
  }
  if (rdma_get_cm_event(p->id.channel, &p->id.event)) return -1;
  const rdma_cm_event* e = p->id.event;
  if (e->event == RDMA_CM_EVENT_REJECTED) return fail(ECONNREFUSED);
  if (e->status) return fail(e->status < 0 ? -e->status : e->status);
  switch (e->event) {  // an error event without a status still fails the call
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_MULTICAST_ERROR:
      return fail(EHOSTUNREACH);
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      return fail(ENODEV);
    default:
      return 0;
  }
}

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// NULL with errno (ENODEV: no dverbs device; ENOMEM; or dvcm's errno).
rdma_event_channel* rdma_create_event_channel(void) {
  if (int rc = init_devices()) return fail(rc, static_cast<rdma_event_channel*>(nullptr));
  Channel* c = new_channel();
  return c ? &c->ch : nullptr;
}

// A channel still used by identifiers is left alone (errno EBUSY): destroy them first, as
// rdma_destroy_event_channel(3) requires. rdma-core would close the fd and let the kernel
// destroy them.
void rdma_destroy_event_channel(rdma_event_channel* channel) {
  Channel* c = lookup_channel(channel);
  if (!c) return;
  if (int rc = destroy_channel(c)) errno = rc;
}

// EINVAL: id NULL, unknown port space or channel; ENODEV: no dverbs device.
int rdma_create_id(rdma_event_channel* channel, rdma_cm_id** id, void* context,
                   rdma_port_space ps) {
  const ibv_qp_type t = ps == RDMA_PS_IPOIB || ps == RDMA_PS_UDP ? IBV_QPT_UD : IBV_QPT_RC;
  return create_id(channel, id, context, ps, t);
}

// Waits until every event reported for the identifier has been acked (rdma-core's rule),
// after dvcm has torn the connection down (DREQ, or REJ for an unanswered request) and
// discarded its queued events. The QP is the application's (rdma_destroy_qp).
int rdma_destroy_id(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  if (!p) return -1;
  {
    std::lock_guard<std::mutex> g(g_lock());
    if (!registered(p, Kind::id)) return fail(EINVAL);  // lost a race with another destroy
    if (p->dv) dvcm_destroy_id(p->dv);  // fails only for an identifier dvcm no longer has
    p->dv = nullptr;
    unlink_pending(p);
    // Requests already handed to the application are its own (as with the kernel's
    // rdma_cm): they outlive the listener, to be accepted, rejected or destroyed.
    while (IdPriv* c = p->pending) {
      p->pending = c->pending_next;
      c->listener = nullptr;
      c->pending_next = nullptr;
    }
    unregister_object(p);
  }
  if (p->id.event) {
    rdma_ack_cm_event(p->id.event);
    p->id.event = nullptr;
  }
  {
    std::unique_lock<std::mutex> l(p->mu);
    p->cv.wait(l, [p] { return p->completed >= p->delivered; });
  }
  free_id(p);
  return 0;
}

// EINVAL: NULL/unknown id or channel, or channel NULL for an identifier that already has a
// private one.
int rdma_migrate_id(rdma_cm_id* id, rdma_event_channel* channel) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (p->sync && !channel) return fail(EINVAL);
  const bool sync = !channel;
  Channel* ch = sync ? new_channel() : lookup_channel(channel);
  if (!ch) return -1;
  Channel* old = reinterpret_cast<Channel*>(p->id.channel);
  if (ch == old) return 0;
  int rc;
  {
    std::lock_guard<std::mutex> g(g_lock());
    rc = dvcm_migrate_id(p->dv, ch->dv);
  }
  if (rc) {
    if (sync) destroy_channel(ch);
    return fail(rc);
  }
  if (p->sync) {
    if (p->id.event) {
      rdma_ack_cm_event(p->id.event);
      p->id.event = nullptr;
    }
    destroy_channel(old);
  }
  // Events already reported on the old channel must be acked before the application
  // handles the identifier on the new one (rdma-core waits the same way).
  std::unique_lock<std::mutex> l(p->mu);
  p->sync = sync;
  p->id.channel = &ch->ch;
  p->cv.wait(l, [p] { return p->completed >= p->delivered; });
  return 0;
}

// RDMA_OPTION_ID: TOS (uint8_t), REUSEADDR (int), AFONLY (int), ACK_TIMEOUT (uint8_t),
// passed to dvcm; a wrong optlen or NULL optval is EINVAL (as the kernel's ucma).
// RDMA_OPTION_IB_PATH (a path record set by hand, InfiniBand only) and anything else:
// ENOSYS, the kernel's answer for an option it does not know.
int rdma_set_option(rdma_cm_id* id, int level, int optname, void* optval, size_t optlen) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!optval) return fail(EINVAL);
  if (level != RDMA_OPTION_ID) return fail(ENOSYS);
  int value;
  switch (optname) {
    case RDMA_OPTION_ID_TOS:
    case RDMA_OPTION_ID_ACK_TIMEOUT:
      if (optlen != sizeof(uint8_t)) return fail(EINVAL);
      value = *static_cast<uint8_t*>(optval);
      break;
    case RDMA_OPTION_ID_REUSEADDR:
    case RDMA_OPTION_ID_AFONLY:
      if (optlen != sizeof(int)) return fail(EINVAL);
      std::memcpy(&value, optval, sizeof value);
      break;
    default:
      return fail(ENOSYS);
  }
  if (int rc = dvcm_set_option(p->dv, optname, value)) return fail(rc);
  return 0;
}

}  // extern "C"
