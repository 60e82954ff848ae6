// XRC through the drop-in (ibv_open_xrcd(3), ibv_create_srq_ex(3) with IBV_SRQT_XRC,
// ibv_create_qp_ex(3) with IBV_QPT_XRC_RECV, ibv_open_qp(3), ibv_get_srq_num(3)): the
// verbs_context ops and handles; the domain sharing, the SRQ numbers and the transport are
// the driver's (pmd/hca/xrc.cc, or dverbsd's).
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

// A QP handle of an XRC_RECV QP, created or opened. It raises no asynchronous events: the
// QP outlives the handle that created it while others have it open (ibv_open_qp(3)), so
// the midlayer object names no handle.
DvQp* xrc_recv_handle(Context* c, mid::Qp* m, void* qp_context, int* err) {
  auto* qp = new (std::nothrow) DvQp();
  if (!qp) {
    *err = ENOMEM;
    return nullptr;
  }
  qp->m = m;
  qp->ctx = c;
  ibv_qp& q = qp->qpx.qp_base;
  q.context = ibctx(c);
  q.qp_context = qp_context;
  q.qp_num = m->qp_num;
  QpAttr qa;
  q.state = mid::query_qp(m, &qa, 0, nullptr) == 0 ? ibv_qp_state(qa.qp_state) : IBV_QPS_RESET;
  q.qp_type = IBV_QPT_XRC_RECV;
  pthread_mutex_init(&q.mutex, nullptr);
  pthread_cond_init(&q.cond, nullptr);
  init_qp_ex_ops(qp);
  if (int rc = track(c, qp, Kind::qp, &q.handle)) {
    *err = rc;
    pthread_cond_destroy(&q.cond);
    pthread_mutex_destroy(&q.mutex);
    free_wr_builder(qp);
    delete qp;
    return nullptr;
  }
  return qp;
}

// The domain named by an attribute, if it is a live one of context `c`.
DvXrcd* xrcd_of(Context* c, ibv_xrcd* x) {
  return x && registry_find(x, Kind::xrcd) == c ? wrap<DvXrcd>(x) : nullptr;
}

}  // namespace

int close_xrcd_locked(DvXrcd* x) {
  if (int rc = mid::close_xrcd(x->m)) return rc;
  untrack(x->ctx, x, x->handle);
  delete x;
  return 0;
}

// verbs_context::open_xrcd. IBV_XRCD_INIT_ATTR_FD and _OFLAGS are required (rdma-core's
// ibv_cmd_open_xrcd); fd -1 is a private domain.
ibv_xrcd* open_xrcd_op(ibv_context* context, ibv_xrcd_init_attr* a) {
  constexpr uint32_t kNeeded = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS;
  if (!a || (a->comp_mask & kNeeded) != kNeeded) return fail(EINVAL, (ibv_xrcd*)nullptr);
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, (ibv_xrcd*)nullptr);
  if (c->dev->removed) return fail(EIO, (ibv_xrcd*)nullptr);
  auto* x = new (std::nothrow) DvXrcd();
  if (!x) return fail(ENOMEM, (ibv_xrcd*)nullptr);
  if (int rc = mid::open_xrcd(c->mdev, a->fd, a->oflags, &x->m)) {
    delete x;
    return fail(rc, (ibv_xrcd*)nullptr);
  }
  x->ctx = c;
  x->xrcd.context = context;
  if (int rc = track(c, x, Kind::xrcd, &x->handle)) {
    mid::close_xrcd(x->m);
    delete x;
    return fail(rc, (ibv_xrcd*)nullptr);
  }
  return &x->xrcd;
}

// verbs_context::close_xrcd: EBUSY while the domain (its last handle) has SRQs or QPs.
int close_xrcd_op(ibv_xrcd* xrcd) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(xrcd, Kind::xrcd);
  if (!c) return EINVAL;
  return close_xrcd_locked(wrap<DvXrcd>(xrcd));
}

// create_srq_ex with IBV_SRQT_XRC: a PD, a domain and a CQ, all of this context.
ibv_srq* create_xrc_srq_op(ibv_context* context, ibv_srq_init_attr_ex* a) {
  constexpr uint32_t kNeeded = IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ;
  if ((a->comp_mask & kNeeded) != kNeeded) return fail(EINVAL, (ibv_srq*)nullptr);
  if (a->comp_mask & IBV_SRQ_INIT_ATTR_TM) return fail(EOPNOTSUPP, (ibv_srq*)nullptr);
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  DvXrcd* x = c ? xrcd_of(c, a->xrcd) : nullptr;
  if (!c || !x || !a->pd || registry_find(a->pd, Kind::pd) != c || !a->cq ||
      registry_find(a->cq, Kind::cq) != c)
    return fail(EINVAL, (ibv_srq*)nullptr);
  ibv_srq_init_attr basic;
  basic.srq_context = a->srq_context;
  basic.attr = a->attr;
  int err = 0;
  DvSrq* srq = create_srq_locked(c, a->pd, &basic, x, wrap<DvCq>(a->cq), &err);
  if (!srq) return fail(err, (ibv_srq*)nullptr);
  return &srq->srq;
}

// verbs_context::get_srq_num: the number XRC senders name (wr.qp_type.xrc.remote_srqn).
int get_srq_num_op(ibv_srq* srq, uint32_t* srq_num) {
  if (!srq_num) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(srq, Kind::srq)) return EINVAL;
  DvSrq* d = wrap<DvSrq>(srq);
  if (!d->xrcd) return EINVAL;  // a basic SRQ has no number on the wire
  *srq_num = d->m->srq_num;
  return 0;
}

// create_qp_ex with IBV_QPT_XRC_RECV: IBV_QP_INIT_ATTR_XRCD names the domain; no PD, CQs,
// SRQ or queue capacities.
ibv_qp* create_xrc_recv_qp_op(ibv_context* context, ibv_qp_init_attr_ex* a) {
  constexpr uint32_t kKnown = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_XRCD |
                              IBV_QP_INIT_ATTR_CREATE_FLAGS | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  if (!(a->comp_mask & IBV_QP_INIT_ATTR_XRCD) || (a->comp_mask & ~kKnown))
    return fail(EINVAL, (ibv_qp*)nullptr);
  if ((a->comp_mask & IBV_QP_INIT_ATTR_CREATE_FLAGS) && a->create_flags)
    return fail(EOPNOTSUPP, (ibv_qp*)nullptr);
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  DvXrcd* x = c ? xrcd_of(c, a->xrcd) : nullptr;
  if (!x) return fail(EINVAL, (ibv_qp*)nullptr);
  if (c->dev->removed) return fail(EIO, (ibv_qp*)nullptr);
  mid::QpInitAttr init;
  init.qp_type = QpType::xrc_recv;
  mid::Qp* m = nullptr;
  if (int rc = mid::create_xrc_recv_qp(x->m, &init, &m)) return fail(rc, (ibv_qp*)nullptr);
  int err = 0;
  DvQp* qp = xrc_recv_handle(c, m, a->qp_context, &err);
  if (!qp) {
    mid::destroy_qp(m);
    return fail(err, (ibv_qp*)nullptr);
  }
  // rdma-core reports the PD it was given in ibv_qp::pd, even for XRC_RECV (librdmacm
  // takes the identifier's PD from there); the QP itself has none.
  if ((a->comp_mask & IBV_QP_INIT_ATTR_PD) && registry_find(a->pd, Kind::pd) == c)
    qp->qpx.qp_base.pd = a->pd;
  a->cap = ibv_qp_cap{};
  return &qp->qpx.qp_base;
}

// verbs_context::open_qp: one more handle on an XRC_RECV QP of the domain.
ibv_qp* open_qp_op(ibv_context* context, ibv_qp_open_attr* a) {
  constexpr uint32_t kNeeded = IBV_QP_OPEN_ATTR_NUM | IBV_QP_OPEN_ATTR_XRCD | IBV_QP_OPEN_ATTR_TYPE;
  if (!a || (a->comp_mask & kNeeded) != kNeeded ||
      (a->comp_mask & ~(kNeeded | IBV_QP_OPEN_ATTR_CONTEXT)))
    return fail(EINVAL, (ibv_qp*)nullptr);
  if (a->qp_type != IBV_QPT_XRC_RECV) return fail(EINVAL, (ibv_qp*)nullptr);
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  DvXrcd* x = c ? xrcd_of(c, a->xrcd) : nullptr;
  if (!x) return fail(EINVAL, (ibv_qp*)nullptr);
  mid::Qp* m = nullptr;
  if (int rc = mid::open_xrc_qp(x->m, a->qp_num, &m)) return fail(rc, (ibv_qp*)nullptr);
  int err = 0;
  void* qctx = (a->comp_mask & IBV_QP_OPEN_ATTR_CONTEXT) ? a->qp_context : nullptr;
  DvQp* qp = xrc_recv_handle(c, m, qctx, &err);
  if (!qp) {
    mid::destroy_qp(m);  // drops the handle open_xrc_qp added
    return fail(err, (ibv_qp*)nullptr);
  }
  return &qp->qpx.qp_base;
}

}  // namespace dverbs::ibv
