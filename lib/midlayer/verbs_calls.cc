// Object create/destroy wrappers (the analogue of ib_alloc_pd, ib_create_qp… in
// drivers/infiniband/core/verbs.c): check arguments, call the driver, fill the common
// fields of the midlayer object and keep the use counts that make destroying a PD, CQ or
// SRQ still referenced fail with EBUSY.
//
// Use counts are atomics on the objects; the midlayer adds no lock and no serialisation
// (core_locking.rst, Reentrancy). As in the kernel, a consumer that destroys an object
// while another of its threads creates a user of it races with itself.
//
// Destroy wrappers fence the event machinery before the driver frees the object: they mark
// it dying, then wait until no queued or running handler can touch it.
#include <cerrno>

#include "midlayer/core.h"
#include "midlayer/internal.h"

namespace dverbs::mid {

namespace {

inline void get(std::atomic<uint32_t>& c) noexcept {
  c.fetch_add(1, std::memory_order_relaxed);
}
inline void put(std::atomic<uint32_t>& c) noexcept {
  c.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace

// ---- queries ----

int query_device(Device* dev, DeviceAttr* attr) {
  might_sleep("query_device");
  if (!dev || !attr) return EINVAL;
  return dev->ops->query_device(dev, attr);
}

int query_port(Device* dev, uint8_t port_num, PortAttr* attr) {
  might_sleep("query_port");
  if (!dev || !attr || port_num < 1 || port_num > dev->phys_port_cnt) return EINVAL;
  return dev->ops->query_port(dev, port_num, attr);
}

int query_counters(Device* dev, Counter* out, int max) {
  might_sleep("query_counters");
  if (!dev || max < 0 || (max > 0 && !out)) return -EINVAL;
  if (!dev->ops->query_counters) return -EOPNOTSUPP;
  return dev->ops->query_counters(dev, out, max);
}

int resolve_neigh(Device* dev, uint8_t port_num, uint32_t ip, uint8_t mac[6]) noexcept {
  if (!dev->ops->resolve_neigh) return EOPNOTSUPP;
  return dev->ops->resolve_neigh(dev, port_num, ip, mac);
}

int attach_mcast(Qp* qp, const Gid* gid) {
  might_sleep("attach_mcast");
  if (!qp->device->ops->attach_mcast) return EOPNOTSUPP;
  return qp->device->ops->attach_mcast(qp, gid);
}

int detach_mcast(Qp* qp, const Gid* gid) {
  might_sleep("detach_mcast");
  if (!qp->device->ops->detach_mcast) return EOPNOTSUPP;
  return qp->device->ops->detach_mcast(qp, gid);
}

int create_flow(Qp* qp, const FlowRule* rule, uint32_t* id) {
  might_sleep("create_flow");
  if (!qp->device->ops->create_flow) return EOPNOTSUPP;
  return qp->device->ops->create_flow(qp, rule, id);
}

int destroy_flow(Qp* qp, uint32_t id) {
  might_sleep("destroy_flow");
  if (!qp->device->ops->destroy_flow) return EOPNOTSUPP;
  return qp->device->ops->destroy_flow(qp, id);
}

int query_qp_counters(Qp* qp, Counter* out, int max) {
  might_sleep("query_qp_counters");
  if (!qp || max < 0 || (max > 0 && !out)) return -EINVAL;
  if (!qp->device->ops->query_qp_counters) return -EOPNOTSUPP;
  return qp->device->ops->query_qp_counters(qp, out, max);
}

int query_gid(Device* dev, uint8_t port_num, int index, Gid* gid) {
  might_sleep("query_gid");
  if (!dev || !gid || index < 0 || port_num < 1 || port_num > dev->phys_port_cnt) return EINVAL;
  return dev->ops->query_gid(dev, port_num, index, gid);
}

// ---- PD ----

int alloc_pd(Device* dev, Pd** out) {
  might_sleep("alloc_pd");
  if (!dev || !out) return EINVAL;
  Pd* pd = nullptr;
  if (int rc = dev->ops->alloc_pd(dev, &pd)) return rc;
  pd->device = dev;
  pd->usecnt.store(0, std::memory_order_relaxed);
  *out = pd;
  return 0;
}

int dealloc_pd(Pd* pd) {
  might_sleep("dealloc_pd");
  if (!pd) return EINVAL;
  if (pd->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
  return pd->device->ops->dealloc_pd(pd);
}

// ---- MR ----

// Fills the common fields of a region the driver just registered, each only where the
// driver left it different. The soft HCA fills them itself and publishes the region to its
// engines inside reg_mr (the key's release store): rewriting them here, even with the same
// values, would be plain stores racing with an engine that already looks the key up (in
// dverbsd, a client may post on the key before this thread returns; ThreadSanitizer
// reports it). Drivers that fill nothing (pmd/remote) get every field written.
namespace {
template <class T>
void set_if_changed(T& field, T value) {
  if (field != value) field = value;
}
void fill_mr(Mr* mr, Pd* pd, uint64_t addr, uint64_t length, uint32_t access) {
  set_if_changed(mr->device, pd->device);
  set_if_changed(mr->pd, pd);
  set_if_changed(mr->addr, addr);
  set_if_changed(mr->length, length);
  set_if_changed(mr->access, access);
}
}  // namespace

int reg_mr(Pd* pd, void* addr, uint64_t length, uint32_t access, Mr** out) {
  might_sleep("reg_mr");
  if (!pd || !out) return EINVAL;
  Mr* mr = nullptr;
  if (int rc = pd->device->ops->reg_mr(pd, addr, length, access, &mr)) return rc;
  fill_mr(mr, pd, reinterpret_cast<uint64_t>(addr), length, access);
  get(pd->usecnt);
  *out = mr;
  return 0;
}

int reg_mr_iova(Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t access, Mr** out) {
  might_sleep("reg_mr_iova");
  if (!pd || !out) return EINVAL;
  if (!pd->device->ops->reg_mr_iova) return EOPNOTSUPP;
  Mr* mr = nullptr;
  if (int rc = pd->device->ops->reg_mr_iova(pd, host, iova, length, access, &mr)) return rc;
  fill_mr(mr, pd, iova, length, access);
  get(pd->usecnt);
  *out = mr;
  return 0;
}

int dereg_mr(Mr* mr) {
  might_sleep("dereg_mr");
  if (!mr) return EINVAL;
  Pd* pd = mr->pd;
  if (int rc = mr->device->ops->dereg_mr(mr)) return rc;
  put(pd->usecnt);
  return 0;
}

int rereg_mr(Mr* mr, uint32_t flags, Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t access) {
  might_sleep("rereg_mr");
  if (!mr || flags == 0 || (flags & ~rereg::all)) return EINVAL;
  if ((flags & rereg::pd) && (!pd || pd->device != mr->device)) return EINVAL;
  if (!mr->device->ops->rereg_mr) return EOPNOTSUPP;
  Pd* old = mr->pd;
  Pd* now = (flags & rereg::pd) ? pd : old;
  get(now->usecnt);  // the new PD is held from before the region can be found in it
  if (int rc = mr->device->ops->rereg_mr(mr, flags, now, host, iova, length, access)) {
    put(now->usecnt);
    return rc;
  }
  put(old->usecnt);
  return 0;
}

// ---- CQ ----

int create_cq(Device* dev, uint32_t cqe, CompHandler comp_handler, EventHandler event_handler,
              void* cq_context, Cq** out) {
  might_sleep("create_cq");
  if (!dev || !out || cqe == 0) return EINVAL;
  try {
    detail::start_handler_pool();
  } catch (...) {
    return ENOMEM;
  }
  Cq* cq = nullptr;
  if (int rc = dev->ops->create_cq(dev, cqe, &cq)) return rc;
  cq->device = dev;
  cq->comp_handler = comp_handler;
  cq->event_handler = event_handler;
  cq->cq_context = cq_context;
  if (cq->cqe == 0) cq->cqe = cqe;
  cq->usecnt.store(0, std::memory_order_relaxed);
  try {
    detail::track_cq(cq);
  } catch (...) {
    dev->ops->destroy_cq(cq);
    return ENOMEM;
  }
  *out = cq;
  return 0;
}

int resize_cq(Cq* cq, uint32_t cqe, uint32_t held) {
  might_sleep("resize_cq");
  if (!cq || cqe == 0) return EINVAL;
  if (!cq->device->ops->resize_cq) return EOPNOTSUPP;
  return cq->device->ops->resize_cq(cq, cqe, held);
}

void qp_backlog(Qp* qp, uint32_t* send, uint32_t* recv) noexcept {
  *send = *recv = 0;
  if (qp->device->ops->qp_backlog) qp->device->ops->qp_backlog(qp, send, recv);
}

uint32_t srq_backlog(Srq* srq) noexcept {
  return srq->device->ops->srq_backlog ? srq->device->ops->srq_backlog(srq) : 0;
}

// Fence: when it returns, the CQ's completion and event handlers do not run and will not.
int destroy_cq(Cq* cq) {
  might_sleep("destroy_cq");
  if (!cq) return EINVAL;
  if (cq->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
  detail::untrack_cq(cq);
  detail::quiesce_cq(cq);        // completion handler: not queued, not running
  detail::flush_async_events();  // cq_err events queued before `dying` was set
  if (int rc = cq->device->ops->destroy_cq(cq)) {
    detail::unquiesce_cq(cq);
    try {
      detail::track_cq(cq);
    } catch (...) {
    }
    return rc;
  }
  return 0;
}

// ---- QP ----

int create_qp(Pd* pd, const QpInitAttr* init, Qp** out) {
  might_sleep("create_qp");
  // An XRC_SEND QP has no receive side; an XRC_RECV QP is created by create_xrc_recv_qp.
  const bool xrc_send = init && init->qp_type == QpType::xrc_send;
  if (!pd || !init || !out || !init->send_cq || (!init->recv_cq && !xrc_send) ||
      init->qp_type == QpType::xrc_recv)
    return EINVAL;
  Device* dev = pd->device;
  if (init->send_cq->device != dev || (init->recv_cq && init->recv_cq->device != dev) ||
      (init->srq && (init->srq->device != dev || xrc_send || init->srq->xrcd)))
    return EINVAL;
  Qp* qp = nullptr;
  if (int rc = dev->ops->create_qp(pd, init, &qp)) return rc;
  qp->device = dev;
  qp->pd = pd;
  qp->send_cq = init->send_cq;
  qp->recv_cq = init->recv_cq;
  qp->srq = init->srq;
  qp->event_handler = init->event_handler;
  qp->qp_context = init->qp_context;
  qp->qp_type = init->qp_type;
  qp->dying.store(0, std::memory_order_relaxed);
  get(pd->usecnt);
  get(qp->send_cq->usecnt);
  if (qp->recv_cq) get(qp->recv_cq->usecnt);
  if (qp->srq) get(qp->srq->usecnt);
  *out = qp;
  return 0;
}

int modify_qp(Qp* qp, const QpAttr* attr, uint32_t attr_mask) {
  might_sleep("modify_qp");
  if (!qp || !attr) return EINVAL;
  return qp->device->ops->modify_qp(qp, attr, attr_mask);
}

int query_qp(Qp* qp, QpAttr* attr, uint32_t attr_mask, QpInitAttr* init) {
  might_sleep("query_qp");
  if (!qp || !attr) return EINVAL;
  return qp->device->ops->query_qp(qp, attr, attr_mask, init);
}

// Fence: when it returns, the QP's event handler does not run and will not run.
int destroy_qp(Qp* qp) {
  might_sleep("destroy_qp");
  if (!qp) return EINVAL;
  Pd* pd = qp->pd;
  Cq* send_cq = qp->send_cq;
  Cq* recv_cq = qp->recv_cq;
  Srq* srq = qp->srq;
  Xrcd* xrcd = qp->xrcd;
  qp->dying.store(1, std::memory_order_seq_cst);
  detail::flush_async_events();
  if (int rc = qp->device->ops->destroy_qp(qp)) {
    qp->dying.store(0, std::memory_order_seq_cst);
    return rc;
  }
  if (pd) put(pd->usecnt);
  if (send_cq) put(send_cq->usecnt);
  if (recv_cq) put(recv_cq->usecnt);
  if (srq) put(srq->usecnt);
  if (xrcd) put(xrcd->usecnt);
  return 0;
}

// ---- SRQ (optional) ----

int create_srq(Pd* pd, const SrqInitAttr* init, EventHandler handler, void* context, Srq** out) {
  might_sleep("create_srq");
  if (!pd || !init || !out) return EINVAL;
  Device* dev = pd->device;
  if (!dev->ops->create_srq || !dev->ops->destroy_srq) return EOPNOTSUPP;
  // An XRC SRQ names its domain and its CQ, both of this device.
  if (init->xrcd && (!init->cq || init->xrcd->device != dev || init->cq->device != dev))
    return EINVAL;
  Srq* srq = nullptr;
  if (int rc = dev->ops->create_srq(pd, init, &srq)) return rc;
  srq->device = dev;
  srq->pd = pd;
  srq->event_handler = handler;
  srq->srq_context = context;
  srq->usecnt.store(0, std::memory_order_relaxed);
  srq->dying.store(0, std::memory_order_relaxed);
  srq->xrcd = init->xrcd;
  srq->cq = init->xrcd ? init->cq : nullptr;
  get(pd->usecnt);
  if (srq->xrcd) {
    get(srq->xrcd->usecnt);
    get(srq->cq->usecnt);
  }
  *out = srq;
  return 0;
}

int modify_srq(Srq* srq, uint32_t max_wr, uint32_t srq_limit, uint32_t mask) {
  might_sleep("modify_srq");
  if (!srq) return EINVAL;
  if (!srq->device->ops->modify_srq) return EOPNOTSUPP;
  return srq->device->ops->modify_srq(srq, max_wr, srq_limit, mask);
}

// Fence: when it returns, the SRQ's event handler does not run and will not run.
int destroy_srq(Srq* srq) {
  might_sleep("destroy_srq");
  if (!srq) return EINVAL;
  if (!srq->device->ops->destroy_srq) return EOPNOTSUPP;
  if (srq->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
  Pd* pd = srq->pd;
  Xrcd* xrcd = srq->xrcd;
  Cq* cq = srq->cq;
  srq->dying.store(1, std::memory_order_seq_cst);
  detail::flush_async_events();
  if (int rc = srq->device->ops->destroy_srq(srq)) {
    srq->dying.store(0, std::memory_order_seq_cst);
    return rc;
  }
  put(pd->usecnt);
  if (xrcd) {
    put(xrcd->usecnt);
    put(cq->usecnt);
  }
  return 0;
}

// ---- MW (optional) ----

int alloc_mw(Pd* pd, uint32_t type, Mw** out) {
  might_sleep("alloc_mw");
  if (!pd || !out || (type != 1 && type != 2)) return EINVAL;
  Device* dev = pd->device;
  if (!dev->ops->alloc_mw || !dev->ops->dealloc_mw) return EOPNOTSUPP;
  Mw* mw = nullptr;
  if (int rc = dev->ops->alloc_mw(pd, type, &mw)) return rc;
  mw->device = dev;
  mw->pd = pd;
  mw->type = type;
  get(pd->usecnt);
  *out = mw;
  return 0;
}

int dealloc_mw(Mw* mw) {
  might_sleep("dealloc_mw");
  if (!mw) return EINVAL;
  Pd* pd = mw->pd;
  if (int rc = mw->device->ops->dealloc_mw(mw)) return rc;
  put(pd->usecnt);
  return 0;
}

// ---- AH (optional; any context, never sleeps) ----

int create_ah(Pd* pd, const AhAttr* attr, Ah** out) noexcept {
  NonSleepingScope scope("create_ah");
  if (!pd || !attr || !out) return EINVAL;
  Device* dev = pd->device;
  if (!dev->ops->create_ah || !dev->ops->destroy_ah) return EOPNOTSUPP;
  Ah* ah = nullptr;
  if (int rc = dev->ops->create_ah(pd, attr, &ah)) return rc;
  ah->device = dev;
  ah->pd = pd;
  get(pd->usecnt);
  *out = ah;
  return 0;
}

int destroy_ah(Ah* ah) noexcept {
  NonSleepingScope scope("destroy_ah");
  if (!ah) return EINVAL;
  if (!ah->device->ops->destroy_ah) return EOPNOTSUPP;
  Pd* pd = ah->pd;
  if (int rc = ah->device->ops->destroy_ah(ah)) return rc;
  put(pd->usecnt);
  return 0;
}

}  // namespace dverbs::mid
