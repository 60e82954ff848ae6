// XRC domains and target QPs (the XRC annex; ib_alloc_xrcd / ib_create_qp for
// IB_QPT_XRC_TGT / ib_open_qp in the kernel): checks arguments, calls the driver and keeps
// the use counts that make closing a domain in use fail with EBUSY.
#include <cerrno>
#include <fcntl.h>

#include "midlayer/core.h"
#include "midlayer/internal.h"

namespace dverbs::mid {

int open_xrcd(Device* dev, int fd, int oflags, Xrcd** out) {
  might_sleep("open_xrcd");
  if (!dev || !out || fd < -1) return EINVAL;
  if (!dev->ops->open_xrcd || !dev->ops->close_xrcd) return EOPNOTSUPP;
  // A private domain (no file) can only be created (ibv_open_xrcd(3)).
  if (fd == -1 && !(oflags & O_CREAT)) return EINVAL;
  Xrcd* x = nullptr;
  if (int rc = dev->ops->open_xrcd(dev, fd, oflags, &x)) return rc;
  x->device = dev;
  *out = x;
  return 0;
}

int close_xrcd(Xrcd* xrcd) {
  might_sleep("close_xrcd");
  if (!xrcd) return EINVAL;
  return xrcd->device->ops->close_xrcd(xrcd);
}

int create_xrc_recv_qp(Xrcd* xrcd, const QpInitAttr* init, Qp** out) {
  might_sleep("create_xrc_recv_qp");
  if (!xrcd || !init || !out || init->qp_type != QpType::xrc_recv || init->srq) return EINVAL;
  Device* dev = xrcd->device;
  if (!dev->ops->open_xrc_qp) return EOPNOTSUPP;
  QpInitAttr a = *init;
  a.xrcd = xrcd;
  a.send_cq = a.recv_cq = nullptr;
  Qp* qp = nullptr;
  if (int rc = dev->ops->create_qp(nullptr, &a, &qp)) return rc;
  qp->device = dev;
  qp->pd = nullptr;
  qp->send_cq = qp->recv_cq = nullptr;
  qp->srq = nullptr;
  qp->event_handler = init->event_handler;
  qp->qp_context = init->qp_context;
  qp->qp_type = QpType::xrc_recv;
  qp->xrcd = xrcd;
  qp->dying.store(0, std::memory_order_relaxed);
  xrcd->usecnt.fetch_add(1, std::memory_order_relaxed);
  *out = qp;
  return 0;
}

int open_xrc_qp(Xrcd* xrcd, uint32_t qpn, Qp** out) {
  might_sleep("open_xrc_qp");
  if (!xrcd || !out) return EINVAL;
  if (!xrcd->device->ops->open_xrc_qp) return EOPNOTSUPP;
  Qp* qp = nullptr;
  if (int rc = xrcd->device->ops->open_xrc_qp(xrcd, qpn, &qp)) return rc;
  // The driver's object for this handle: the QP itself (one more reference on it) or a
  // handle object of its own (the remote driver). Either way destroy_qp drops it.
  qp->device = xrcd->device;
  qp->xrcd = xrcd;
  qp->qp_type = QpType::xrc_recv;
  xrcd->usecnt.fetch_add(1, std::memory_order_relaxed);
  *out = qp;
  return 0;
}

}  // namespace dverbs::mid
