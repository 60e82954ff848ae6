// Events: rdma_get_cm_event, rdma_ack_cm_event, rdma_event_str.
//
// rdma_get_cm_event waits on the channel's fd (dvcm_get_event: blocking unless the
// application set O_NONBLOCK, then -1/EAGAIN), pops the event from dvcm and
// turns it into an rdma_cm_event allocated for it, as rdma-core's librdmacm does with what
// the kernel's ucma returns. Like librdmacm it also acts on some events before the
// application sees them (all in the calling thread, no lock held):
//   ADDR_RESOLVED / ROUTE_RESOLVED  refresh id->route and attach the device (ADDR_ERROR /
//                                   ROUTE_ERROR when that fails);
//   CONNECT_REQUEST                 a new rdma_cm_id (the listener's context, port space and
//                                   QP type; its own private channel under a synchronous
//                                   listener), route filled; a request that cannot be
//                                   handed out is rejected and skipped;
//   CONNECT_RESPONSE                with a QP: RTR, RTS, then dvcm_establish (the RTU), and
//                                   the application sees ESTABLISHED (CONNECT_ERROR if that
//                                   fails); without a QP it sees CONNECT_RESPONSE and calls
//                                   rdma_establish itself;
//   REJECTED, UNREACHABLE, CONNECT_ERROR, DISCONNECTED   the QP to ERR;
//   MULTICAST_JOIN                  ibv_attach_mcast of the identifier's QP.
// Each event counts against its identifier until acked: rdma_destroy_id waits for that.
#include <endian.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

void copy_private(Event* e, const void** dst, uint8_t* len) {
  const dvcm_event& d = e->dv;
  *len = d.private_data_len;
  *dst = nullptr;
  if (d.private_data_len) {
    std::memcpy(e->private_data, d.private_data, d.private_data_len);
    *dst = e->private_data;
  }
}

// The depths are already this side's (dvcm swaps the peer's, as ib_cm does):
// responder_resources is what we must serve, the peer's initiator depth.
void copy_conn(Event* e) {
  rdma_conn_param& c = e->event.param.conn;
  const dvcm_event& d = e->dv;
  copy_private(e, &c.private_data, &c.private_data_len);
  c.responder_resources = d.responder_resources;
  c.initiator_depth = d.initiator_depth;
  c.flow_control = d.flow_control;
  c.retry_count = d.retry_count;
  c.rnr_retry_count = d.rnr_retry_count;
  c.srq = d.srq;
  c.qp_num = d.qp_num;
}

void copy_ud(Event* e) {
  rdma_ud_param& u = e->event.param.ud;
  const dvcm_event& d = e->dv;
  copy_private(e, &u.private_data, &u.private_data_len);
  ibv_ah_attr& ah = u.ah_attr;
  std::memset(&ah, 0, sizeof ah);
  ah.is_global = 1;
  std::memcpy(ah.grh.dgid.raw, d.ud_path.dgid, 16);
  ah.grh.sgid_index = d.ud_path.sgid_index;
  ah.grh.hop_limit = d.ud_path.hop_limit ? d.ud_path.hop_limit : 64;  // an IP TTL of 0 dies
  ah.grh.traffic_class = d.ud_path.traffic_class;
  ah.grh.flow_label = d.ud_path.flow_label;
  ah.port_num = d.ud_path.port_num;
  u.qp_num = d.qp_num;
  u.qkey = d.qkey;
}

void copy_param(Event* e, IdPriv* p) {
  if (p->id.qp_type == IBV_QPT_UD)
    copy_ud(e);
  else
    copy_conn(e);
}

// The QP of an active identifier to RTR and RTS (ucma_process_conn_resp); send_rtu: then
// complete the handshake with dvcm_establish. 0 or an errno; the QP goes to ERR on error.
int finish_connect(IdPriv* p, bool send_rtu) {
  int rc = modify_qp_rtr(p, RDMA_MAX_RESP_RES);
  if (!rc) rc = modify_qp_rts(p, RDMA_MAX_INIT_DEPTH);
  if (!rc && send_rtu) rc = dvcm_establish(p->dv);
  if (rc) {
    modify_qp_err(p);
    return rc;
  }
  p->qp_connected = true;
  return 0;
}

void connect_failed(Event* e, IdPriv* p, int rc) {
  e->event.event = RDMA_CM_EVENT_CONNECT_ERROR;
  e->event.status = -rc;
  p->connect_error = true;
}

// CONNECT_REQUEST: completes the identifier adopt_request_id made. false: skip the event
// (the request was rejected).
bool process_request(Event* e) {
  IdPriv* listen = e->owner;
  IdPriv* c = e->child;
  e->event.listen_id = &listen->id;
  e->event.id = &c->id;
  if (c->id.qp_type == IBV_QPT_UD) {
    copy_ud(e);
  } else {
    copy_conn(e);
    c->responder_resources = e->event.param.conn.responder_resources;
    c->initiator_depth = e->event.param.conn.initiator_depth;
  }
  if (setup_request_id(c)) {
    drop_request_id(c);
    return false;
  }
  return true;
}

void process_join(Event* e) {
  Multicast* mc = e->mc;
  IdPriv* p = e->owner;
  copy_ud(e);
  e->event.param.ud.private_data = mc->context;  // rdma-core hands the join's context here
  std::memcpy(mc->mgid.raw, e->dv.ud_path.dgid, 16);
  if (!p->id.qp || mc->join_flags == RDMA_MC_JOIN_FLAG_SENDONLY_FULLMEMBER) return;
  if (int rc = ibv_attach_mcast(p->id.qp, &mc->mgid, 0)) {
    e->event.event = RDMA_CM_EVENT_MULTICAST_ERROR;
    e->event.status = -rc;
  } else {
    mc->attached = true;
  }
}

// Acts on the event as librdmacm does; false: the application does not see it.
bool process(Event* e) {
  IdPriv* p = e->owner;
  rdma_cm_event& ev = e->event;
  const dvcm_event& d = e->dv;
  ev.id = &p->id;
  ev.event = rdma_cm_event_type(d.type);
  ev.status = d.status;
  switch (d.type) {
    case DVCM_EVENT_ADDR_RESOLVED:
      if (int rc = query_route(p, false)) {
        ev.event = RDMA_CM_EVENT_ADDR_ERROR;
        ev.status = -rc;
      }
      return true;
    case DVCM_EVENT_ROUTE_RESOLVED:
      if (int rc = query_route(p, true)) {
        ev.event = RDMA_CM_EVENT_ROUTE_ERROR;
        ev.status = -rc;
      }
      return true;
    case DVCM_EVENT_CONNECT_REQUEST:
      return process_request(e);
    case DVCM_EVENT_CONNECT_RESPONSE:
      copy_conn(e);
      p->negotiated = true;
      p->est_reported = true;
      if (!p->id.qp) return true;  // the application calls rdma_establish
      if (int rc = finish_connect(p, true))
        connect_failed(e, p, rc);
      else
        ev.event = RDMA_CM_EVENT_ESTABLISHED;
      return true;
    case DVCM_EVENT_ESTABLISHED:
      if (p->id.qp_type == IBV_QPT_UD) {
        copy_ud(e);
        return true;
      }
      copy_conn(e);
      if (p->active) {
        // Already reported from CONNECT_RESPONSE: rdma-core's active side sees one only.
        if (p->est_reported) return false;
        p->est_reported = true;
        // dvcm completed the handshake itself: the QP still has to reach RTS first.
        if (p->id.qp && !p->qp_connected)
          if (int rc = finish_connect(p, false)) connect_failed(e, p, rc);
      }
      return true;
    case DVCM_EVENT_REJECTED:
    case DVCM_EVENT_DISCONNECTED:
      if (p->connect_error) return false;  // CONNECT_ERROR was reported instead
      copy_param(e, p);
      modify_qp_err(p);
      return true;
    case DVCM_EVENT_UNREACHABLE:
    case DVCM_EVENT_CONNECT_ERROR:
      copy_param(e, p);
      modify_qp_err(p);
      return true;
    case DVCM_EVENT_MULTICAST_JOIN:
      process_join(e);
      return true;
    case DVCM_EVENT_MULTICAST_ERROR:
      ev.param.ud.private_data = e->mc->context;
      return true;
    default:
      copy_param(e, p);
      return true;
  }
}

// Under g_lock: charges the event dvcm just gave (e->dv) to its identifier (and group).
// 0, EAGAIN (nothing to hand out: unmatched), or an errno.
int claim(Event* e) {
  const dvcm_event& d = e->dv;
  switch (d.type) {
    case DVCM_EVENT_MULTICAST_JOIN:
    case DVCM_EVENT_MULTICAST_ERROR:
      e->mc = static_cast<Multicast*>(d.user);
      if (!e->mc) return EAGAIN;
      e->owner = e->mc->owner;
      break;
    case DVCM_EVENT_CONNECT_REQUEST:
      e->owner = d.listen_id ? static_cast<IdPriv*>(dvcm_get_user(d.listen_id)) : nullptr;
      if (e->owner) e->child = adopt_request_id(e->owner, d.id);
      if (!e->child) {
        if (d.id) dvcm_destroy_id(d.id);  // rejects it
        return EAGAIN;
      }
      break;
    default:
      e->owner = d.id ? static_cast<IdPriv*>(dvcm_get_user(d.id)) : nullptr;
      if (!e->owner) return EAGAIN;
  }
  if (!register_object(e, Kind::event)) {
    if (e->child) {
      dvcm_destroy_id(d.id);
      unlink_pending(e->child);
      unregister_object(e->child);
      delete e->child;
    }
    return ENOMEM;
  }
  std::lock_guard<std::mutex> l(e->owner->mu);
  e->owner->delivered++;
  if (e->mc) e->mc->delivered++;
  return 0;
}

// The ack's bookkeeping: the identifier (and group) may now be destroyed.
void retire(Event* e) {
  {
    std::lock_guard<std::mutex> g(g_lock());
    unregister_object(e);
  }
  IdPriv* p = e->owner;
  {
    std::lock_guard<std::mutex> l(p->mu);
    p->completed++;
    p->cv.notify_all();
    if (e->mc) {
      e->mc->completed++;
      e->mc->cv.notify_all();
    }
  }
  delete e;
}

}  // namespace

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// EINVAL: channel or event NULL or unknown; EAGAIN: O_NONBLOCK and nothing queued; EINTR;
// ENOMEM.
int rdma_get_cm_event(rdma_event_channel* channel, rdma_cm_event** event) {
  if (!event) return fail(EINVAL);
  Channel* ch = lookup_channel(channel);
  if (!ch) return -1;
  for (;;) {
    auto* e = new (std::nothrow) Event();
    if (!e) return fail(ENOMEM);
    // Waits as the application set the channel's fd (blocking, or EAGAIN): no lock held.
    int rc = dvcm_get_event(ch->dv, &e->dv);
    if (rc) {
      delete e;
      return fail(rc);
    }
    {
      std::lock_guard<std::mutex> g(g_lock());
      rc = claim(e);
    }
    if (rc) {
      delete e;
      if (rc == EAGAIN) continue;
      return fail(rc);
    }
    if (process(e)) {
      *event = &e->event;
      return 0;
    }
    retire(e);
  }
}

// EINVAL: NULL, or not an event rdma_get_cm_event returned (or acked already).
int rdma_ack_cm_event(rdma_cm_event* event) {
  if (!event) return fail(EINVAL);
  {
    std::lock_guard<std::mutex> g(g_lock());
    if (!registered(event, Kind::event)) return fail(EINVAL);
  }
  retire(reinterpret_cast<Event*>(event));
  return 0;
}

const char* rdma_event_str(rdma_cm_event_type event) {
  static const char* const kNames[] = {
      "RDMA_CM_EVENT_ADDR_RESOLVED",   "RDMA_CM_EVENT_ADDR_ERROR",
      "RDMA_CM_EVENT_ROUTE_RESOLVED",  "RDMA_CM_EVENT_ROUTE_ERROR",
      "RDMA_CM_EVENT_CONNECT_REQUEST", "RDMA_CM_EVENT_CONNECT_RESPONSE",
      "RDMA_CM_EVENT_CONNECT_ERROR",   "RDMA_CM_EVENT_UNREACHABLE",
      "RDMA_CM_EVENT_REJECTED",        "RDMA_CM_EVENT_ESTABLISHED",
      "RDMA_CM_EVENT_DISCONNECTED",    "RDMA_CM_EVENT_DEVICE_REMOVAL",
      "RDMA_CM_EVENT_MULTICAST_JOIN",  "RDMA_CM_EVENT_MULTICAST_ERROR",
      "RDMA_CM_EVENT_ADDR_CHANGE",     "RDMA_CM_EVENT_TIMEWAIT_EXIT",
  };
  const unsigned i = unsigned(event);
  return i < sizeof kNames / sizeof kNames[0] ? kNames[i] : "UNKNOWN EVENT";
}

}  // extern "C"
