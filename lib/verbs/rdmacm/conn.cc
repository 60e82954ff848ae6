// Addressing and connections: rdma_bind_addr, rdma_resolve_addr/route, rdma_listen,
// rdma_connect, rdma_accept, rdma_reject(_ece), rdma_notify, rdma_establish,
// rdma_disconnect, rdma_get_request, multicast, ECE, and the port helpers.
//
// Each call checks its arguments, makes the dvcm call (which checks the identifier's
// state: EINVAL for a call the state does not allow, as the kernel's rdma_cm), then does
// what rdma-core's librdmacm does around it: QP transitions, and for a synchronous
// identifier waiting for the matching event (complete_sync).
#include <endian.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

// ucma_valid_param: depths beyond the device's are EINVAL; a PS_TCP identifier without a
// QP needs conn_param (its qp_num).
int valid_param(IdPriv* p, const rdma_conn_param* c) {
  if (p->id.ps != RDMA_PS_TCP) return 0;
  if (!p->id.qp && !c) return EINVAL;
  if (!c) return 0;
  if (c->responder_resources != RDMA_MAX_RESP_RES &&
      c->responder_resources > p->dev->max_responder_resources)
    return EINVAL;
  if (c->initiator_depth != RDMA_MAX_INIT_DEPTH && c->initiator_depth > p->dev->max_initiator_depth)
    return EINVAL;
  return 0;
}

// ucma_copy_conn_param_to_kern, into dvcm's form. `buf` holds the private data: what
// rdma_create_ep kept from rdma_addrinfo.ai_connect, then the application's.
int to_dvcm(IdPriv* p, const rdma_conn_param* src, uint32_t qp_num, uint8_t srq,
            dvcm_conn_param* dst, uint8_t (&buf)[DVCM_MAX_PRIVATE_DATA]) {
  std::memset(dst, 0, sizeof *dst);
  size_t len = 0;
  if (p->connect_len) {
    if (p->connect_len > 255) return EINVAL;
    std::memcpy(buf, p->connect, p->connect_len);
    len = p->connect_len;
  }
  if (src) {
    dst->flow_control = src->flow_control;
    dst->retry_count = src->retry_count;
    dst->rnr_retry_count = src->rnr_retry_count;
    if (src->private_data_len && !src->private_data) return EINVAL;
    if (src->private_data && src->private_data_len) {
      if (len + src->private_data_len > 255) return EINVAL;
      std::memcpy(buf + len, src->private_data, src->private_data_len);
      len += src->private_data_len;
    }
  } else {
    dst->retry_count = 7;
    dst->rnr_retry_count = 7;
  }
  dst->private_data = len ? buf : nullptr;
  dst->private_data_len = uint8_t(len);
  dst->responder_resources = p->responder_resources;
  dst->initiator_depth = p->initiator_depth;
  dst->srq = srq;
  dst->qp_num = qp_num;
  dst->qp_type = p->id.qp_type;
  dst->psn = p->psn;
  dst->qkey = p->id.qp_type == IBV_QPT_UD ? RDMA_UDP_QKEY : 0;
  return 0;
}

int join(IdPriv* p, const sockaddr* addr, socklen_t len, uint16_t flags, void* context) {
  auto* mc = new (std::nothrow) Multicast();
  if (!mc) return fail(ENOMEM);
  mc->owner = p;
  mc->context = context;
  mc->join_flags = flags;
  std::memcpy(&mc->addr, addr, len);
  mc->addrlen = len;
  {
    std::lock_guard<std::mutex> l(p->mu);
    mc->next = p->mc_list;
    p->mc_list = mc;
  }
  if (int rc = dvcm_join_multicast(p->dv, addr, mc)) {
    {
      std::lock_guard<std::mutex> l(p->mu);
      for (Multicast** m = &p->mc_list; *m; m = &(*m)->next)
        if (*m == mc) {
          *m = mc->next;
          break;
        }
    }
    delete mc;
    return fail(rc);
  }
  return complete_sync(p);
}

}  // namespace

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// EINVAL: id unknown, addr NULL or not AF_INET/AF_INET6; dvcm's errno otherwise
// (EADDRINUSE, EADDRNOTAVAIL...).
int rdma_bind_addr(rdma_cm_id* id, sockaddr* addr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!addr_len(addr)) return fail(EINVAL);
  if (int rc = dvcm_bind_addr(p->dv, addr)) return fail(rc);
  if (int rc = query_route(p, false)) return fail(rc);
  return 0;
}

// EINVAL: dst NULL or not AF_INET/AF_INET6, src given but not either. ADDR_RESOLVED or
// ADDR_ERROR follows (a synchronous identifier waits for it).
int rdma_resolve_addr(rdma_cm_id* id, sockaddr* src_addr, sockaddr* dst_addr, int timeout_ms) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  const socklen_t dst_len = addr_len(dst_addr);
  if (!dst_len) return fail(EINVAL);
  if (src_addr && !addr_len(src_addr)) return fail(EINVAL);
  if (int rc = dvcm_resolve_addr(p->dv, src_addr, dst_addr, timeout_ms)) return fail(rc);
  std::memcpy(&p->id.route.addr.dst_storage, dst_addr, dst_len);
  return complete_sync(p);
}

// EINVAL: the address is not resolved (no device yet).
int rdma_resolve_route(rdma_cm_id* id, int timeout_ms) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!p->dev) return fail(EINVAL);
  if (int rc = dvcm_resolve_route(p->dv, timeout_ms)) return fail(rc);
  return complete_sync(p);
}

// As the kernel's rdma_listen, an identifier not bound yet is bound to the IPv4 wildcard
// address by dvcm; EINVAL for a state that cannot listen (connecting, connected).
int rdma_listen(rdma_cm_id* id, int backlog) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (int rc = dvcm_listen(p->dv, backlog)) return fail(rc);
  if (int rc = query_route(p, false)) return fail(rc);
  return 0;
}

// EINVAL: route not resolved, depths beyond the device's, PS_TCP without a QP nor
// conn_param, private data longer than the CM allows.
int rdma_connect(rdma_cm_id* id, rdma_conn_param* conn_param) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!p->dev) return fail(EINVAL);
  if (int rc = valid_param(p, conn_param)) return fail(rc);
  p->initiator_depth = conn_param && conn_param->initiator_depth != RDMA_MAX_INIT_DEPTH
                           ? conn_param->initiator_depth
                           : p->dev->max_initiator_depth;
  p->responder_resources = conn_param && conn_param->responder_resources != RDMA_MAX_RESP_RES
                               ? conn_param->responder_resources
                               : p->dev->max_responder_resources;
  uint32_t qp_num = conn_param ? conn_param->qp_num : 0;
  uint8_t srq = conn_param ? conn_param->srq : 0;
  if (p->id.qp) {
    qp_num = p->id.qp->qp_num;
    srq = p->id.qp->srq != nullptr;
  }
  dvcm_conn_param c;
  uint8_t buf[DVCM_MAX_PRIVATE_DATA];
  if (int rc = to_dvcm(p, conn_param, qp_num, srq, &c, buf)) return fail(rc);
  p->active = true;
  p->negotiated = false;
  p->connect_error = false;
  p->qp_connected = false;
  p->est_reported = false;
  if (int rc = dvcm_connect(p->dv, &c)) return fail(rc);
  if (p->connect_len) {
    std::free(p->connect);
    p->connect = nullptr;
    p->connect_len = 0;
  }
  return complete_sync(p);
}

// The passive side: the QP to RTR and RTS, then the REP (rdma-core's order). EINVAL: not a
// connection request, PS_TCP without a QP nor conn_param, depths beyond the device's.
int rdma_accept(rdma_cm_id* id, rdma_conn_param* conn_param) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!p->dev) return fail(EINVAL);
  if (int rc = valid_param(p, conn_param)) return fail(rc);
  uint32_t qp_num = conn_param ? conn_param->qp_num : 0;
  uint8_t srq = conn_param ? conn_param->srq : 0;
  if (p->id.qp) {
    qp_num = p->id.qp->qp_num;
    srq = p->id.qp->srq != nullptr;
  }
  if (!conn_param || conn_param->initiator_depth == RDMA_MAX_INIT_DEPTH)
    p->initiator_depth = std::min(p->initiator_depth, p->dev->max_initiator_depth);
  else
    p->initiator_depth = conn_param->initiator_depth;
  if (!conn_param || conn_param->responder_resources == RDMA_MAX_RESP_RES)
    p->responder_resources = std::min(p->responder_resources, p->dev->max_responder_resources);
  else
    p->responder_resources = conn_param->responder_resources;
  const bool ud = p->id.qp_type == IBV_QPT_UD;
  if (!ud) {
    int rc = modify_qp_rtr(p, p->responder_resources);
    if (!rc) rc = modify_qp_rts(p, p->initiator_depth);
    if (rc) return fail(rc);
  }
  dvcm_conn_param c;
  uint8_t buf[DVCM_MAX_PRIVATE_DATA];
  int rc = to_dvcm(p, conn_param, qp_num, srq, &c, buf);
  if (!rc) rc = dvcm_accept(p->dv, &c);
  if (rc) {
    modify_qp_err(p);
    return fail(rc);
  }
  {
    std::lock_guard<std::mutex> g(g_lock());
    unlink_pending(p);  // dvcm no longer ties it to its listener
  }
  p->qp_connected = !ud && p->id.qp;
  if (ud) return 0;
  return complete_sync(p);
}

int rdma_reject(rdma_cm_id* id, const void* private_data, uint8_t private_data_len) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (private_data_len && !private_data) return fail(EINVAL);
  if (int rc = dvcm_reject(p->dv, private_data_len ? private_data : nullptr, private_data_len))
    return fail(rc);
  std::lock_guard<std::mutex> g(g_lock());
  unlink_pending(p);
  return 0;
}

// rdma-core sends reason 35 (vendor option not supported); dvcm's REJ carries its own
// reason, so this is rdma_reject.
int rdma_reject_ece(rdma_cm_id* id, const void* private_data, uint8_t private_data_len) {
  return rdma_reject(id, private_data, private_data_len);
}

int rdma_notify(rdma_cm_id* id, ibv_event_type event) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (int rc = dvcm_notify(p->dv, event)) return fail(rc);
  return 0;
}

// The active side without a QP, after CONNECT_RESPONSE: sends the RTU. EINVAL with a QP
// (librdmacm did it already).
int rdma_establish(rdma_cm_id* id) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (p->id.qp) return fail(EINVAL);
  if (int rc = dvcm_establish(p->dv)) return fail(rc);
  return 0;
}

// The QP to ERR first (rdma-core's ucma_shutdown), then DREQ. EINVAL: no device.
int rdma_disconnect(rdma_cm_id* id) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!p->id.verbs) return fail(EINVAL);
  if (int rc = modify_qp_err(p)) return fail(rc);
  if (int rc = dvcm_disconnect(p->dv)) return fail(rc);
  return complete_sync(p);
}

// Synchronous listeners only (EINVAL otherwise). Creates the QP rdma_create_ep was given;
// a request whose QP cannot be created is rejected.
int rdma_get_request(rdma_cm_id* listen, rdma_cm_id** id) {
  IdPriv* p = lookup_id(listen);
  if (!p) return -1;
  if (!id || !p->sync) return fail(EINVAL);
  if (p->id.event) {
    rdma_ack_cm_event(p->id.event);
    p->id.event = nullptr;
  }
  rdma_cm_event* e;
  if (rdma_get_cm_event(p->id.channel, &e)) return -1;
  int err = 0;
  if (e->event == RDMA_CM_EVENT_REJECTED)
    err = ECONNREFUSED;
  else if (e->status)
    err = e->status < 0 ? -e->status : e->status;
  else if (e->event != RDMA_CM_EVENT_CONNECT_REQUEST)
    err = EINVAL;
  if (!err && p->qp_init_attr) {
    ibv_qp_init_attr attr = *p->qp_init_attr;
    if (rdma_create_qp(e->id, p->id.pd, &attr)) {
      err = errno;
      rdma_destroy_id(e->id);  // rejects the request
      e->id = nullptr;
    }
  }
  if (err) {
    p->id.event = e;
    return fail(err);
  }
  *id = e->id;
  e->id->event = e;
  return 0;
}

// MULTICAST_JOIN follows; the QP is attached to the group then.
int rdma_join_multicast(rdma_cm_id* id, sockaddr* addr, void* context) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  const socklen_t len = addr_len(addr);
  if (!len) return fail(EINVAL);
  return join(p, addr, len, RDMA_MC_JOIN_FLAG_FULLMEMBER, context);
}

// ENOTSUP: unknown comp_mask bits; EINVAL: no address or join flags, bad flags.
int rdma_join_multicast_ex(rdma_cm_id* id, rdma_cm_join_mc_attr_ex* attr, void* context) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!attr) return fail(EINVAL);
  if (attr->comp_mask >= RDMA_CM_JOIN_MC_ATTR_RESERVED) return fail(ENOTSUP);
  if (!(attr->comp_mask & RDMA_CM_JOIN_MC_ATTR_ADDRESS)) return fail(EINVAL);
  if (!(attr->comp_mask & RDMA_CM_JOIN_MC_ATTR_JOIN_FLAGS) ||
      attr->join_flags >= RDMA_MC_JOIN_FLAG_RESERVED)
    return fail(EINVAL);
  const socklen_t len = addr_len(attr->addr);
  if (!len) return fail(EINVAL);
  return join(p, attr->addr, len, uint16_t(attr->join_flags), context);
}

// EADDRNOTAVAIL: not joined to addr. Waits until the group's reported events are acked.
int rdma_leave_multicast(rdma_cm_id* id, sockaddr* addr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  const socklen_t len = addr_len(addr);
  if (!len) return fail(EINVAL);
  Multicast* mc = nullptr;
  {
    std::lock_guard<std::mutex> l(p->mu);
    for (Multicast** m = &p->mc_list; *m; m = &(*m)->next)
      if ((*m)->addrlen == len && std::memcmp(&(*m)->addr, addr, len) == 0) {
        mc = *m;
        *m = mc->next;
        break;
      }
  }
  if (!mc) return fail(EADDRNOTAVAIL);
  if (p->id.qp && mc->attached) ibv_detach_mcast(p->id.qp, &mc->mgid, 0);
  int rc;
  {
    std::lock_guard<std::mutex> g(g_lock());
    rc = dvcm_leave_multicast(p->dv, addr);
  }
  if (!rc) {
    std::unique_lock<std::mutex> l(p->mu);
    mc->cv.wait(l, [mc] { return mc->completed >= mc->delivered; });
  }
  delete mc;
  return rc ? fail(rc) : 0;
}

// rdma-core's checks: EINVAL for NULL, an identifier with a QP, vendor_id 0, comp_mask.
int rdma_set_local_ece(rdma_cm_id* id, ibv_ece* ece) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (p->id.qp || !ece || !ece->vendor_id || ece->comp_mask) return fail(EINVAL);
  p->local_ece.vendor_id = ece->vendor_id;
  p->local_ece.options = ece->options;
  return 0;
}

// dvcm carries no ECE: vendor_id 0 ("the peer sent none").
int rdma_get_remote_ece(rdma_cm_id* id, ibv_ece* ece) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (p->id.qp || !ece) return fail(EINVAL);
  ece->vendor_id = p->remote_ece.vendor_id;
  ece->options = p->remote_ece.options;
  ece->comp_mask = 0;
  return 0;
}

// 0 (errno EINVAL) for an unknown identifier.
__be16 rdma_get_src_port(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  return p ? addr_port_be(&p->id.route.addr.src_addr) : 0;
}

__be16 rdma_get_dst_port(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  return p ? addr_port_be(&p->id.route.addr.dst_addr) : 0;
}

}  // extern "C"
