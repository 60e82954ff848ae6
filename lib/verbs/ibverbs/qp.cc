// Queue pairs and shared receive queues: creation (ibv_create_qp and the create_qp_ex op),
// modify/query with the rdma-core <-> dverbs attribute translation, destruction.
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

void on_qp_event(const mid::Event& e, void* p) {
  auto* qp = static_cast<DvQp*>(p);
  AsyncEvent ev{};
  ev.type = ibv_event_type(e.type);
  ev.kind = Kind::qp;
  ev.obj = qp;
  push_async(qp->ctx, ev);
}

void on_srq_event(const mid::Event& e, void* p) {
  auto* srq = static_cast<DvSrq*>(p);
  AsyncEvent ev{};
  ev.type = ibv_event_type(e.type);
  ev.kind = Kind::srq;
  ev.obj = srq;
  push_async(srq->ctx, ev);
}

// The work-request opcodes a QP of this type may post through ibv_qp_ex, given what the
// device reports. READ and atomics need responder resources (max_qp_rd_atom).
uint64_t supported_send_ops(const Context* c, ibv_qp_type t) {
  if (t == IBV_QPT_RAW_PACKET) return IBV_QP_EX_WITH_SEND;  // a SEND is one whole frame
  uint64_t ops = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM;
  if (t == IBV_QPT_UD) return ops;
  ops |= IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM;
  if (c->attr.max_mw) ops |= IBV_QP_EX_WITH_BIND_MW | IBV_QP_EX_WITH_LOCAL_INV;
  if (t == IBV_QPT_RC || t == IBV_QPT_XRC_SEND) {
    ops |= IBV_QP_EX_WITH_SEND_WITH_INV;
    if (c->attr.max_qp_init_rd_atom) ops |= IBV_QP_EX_WITH_RDMA_READ;
    if (c->attr.max_qp_init_rd_atom && c->attr.atomic_cap)
      ops |= IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD;
    // IBA 1.5 ATOMIC WRITE and FLUSH take responder resources like a READ. They have no
    // XRC opcodes (midlayer/wr.h refuses them on XRC_SEND): RC only, refused at create.
    if (t == IBV_QPT_RC && c->attr.max_qp_init_rd_atom)
      ops |= IBV_QP_EX_WITH_ATOMIC_WRITE | kQpExWithFlush;
  }
  return ops;
}

DvQp* create_qp(Context* c, ibv_qp_init_attr_ex* a, int* err) {
  auto failed = [&](int e) -> DvQp* {
    *err = e;
    return nullptr;
  };
  Context* pc = registry_find(a->pd, Kind::pd);
  if (pc != c) return failed(EINVAL);
  switch (a->qp_type) {
    case IBV_QPT_RC:
    case IBV_QPT_UC:
    case IBV_QPT_UD:
    case IBV_QPT_RAW_PACKET:  // EPERM without CAP_NET_RAW (the HCA, or dverbsd, checks)
      break;
    case IBV_QPT_XRC_SEND:  // a send queue only: no receive CQ, RQ or SRQ
      a->recv_cq = nullptr;
      a->srq = nullptr;
      a->cap.max_recv_wr = a->cap.max_recv_sge = 0;
      break;
    case IBV_QPT_XRC_RECV:  // needs a domain: ibv_create_qp_ex with IBV_QP_INIT_ATTR_XRCD
      return failed(EINVAL);
    case IBV_QPT_DRIVER:
      return failed(EOPNOTSUPP);
    default:
      return failed(EINVAL);
  }
  if (registry_find(a->send_cq, Kind::cq) != c ||
      (a->qp_type != IBV_QPT_XRC_SEND && registry_find(a->recv_cq, Kind::cq) != c))
    return failed(EINVAL);
  if (a->srq && registry_find(a->srq, Kind::srq) != c) return failed(EINVAL);
  const ibv_qp_cap& cap = a->cap;
  if (cap.max_send_wr > c->attr.max_qp_wr || cap.max_recv_wr > c->attr.max_qp_wr ||
      cap.max_send_sge > c->attr.max_sge || cap.max_recv_sge > c->attr.max_sge ||
      cap.max_inline_data > c->attr.max_inline_data)
    return failed(EINVAL);
  uint64_t send_ops = 0;
  if (a->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) {
    send_ops = a->send_ops_flags;
    if (send_ops & ~supported_send_ops(c, a->qp_type)) return failed(EOPNOTSUPP);
  }
  auto* qp = new (std::nothrow) DvQp();
  if (!qp) return failed(ENOMEM);
  mid::QpInitAttr init;
  init.qp_type = QpType(a->qp_type);
  init.send_cq = wrap<DvCq>(a->send_cq)->m;
  init.recv_cq = a->recv_cq ? wrap<DvCq>(a->recv_cq)->m : nullptr;
  init.srq = a->srq ? wrap<DvSrq>(a->srq)->m : nullptr;
  init.cap = QpCap{cap.max_send_wr, cap.max_recv_wr, cap.max_send_sge, cap.max_recv_sge,
                   cap.max_inline_data};
  init.sq_sig_all = a->sq_sig_all != 0;
  init.event_handler = on_qp_event;
  init.qp_context = qp;
  if (int rc = mid::create_qp(wrap<DvPd>(a->pd)->m, &init, &qp->m)) {
    delete qp;
    return failed(rc);
  }
  QpAttr qa;
  mid::QpInitAttr got;
  qp->cap = init.cap;
  if (mid::query_qp(qp->m, &qa, qp_attr_mask::cap, &got) == 0) qp->cap = got.cap;
  qp->ctx = c;
  qp->pd = wrap<DvPd>(a->pd);
  qp->send_cq = wrap<DvCq>(a->send_cq);
  qp->recv_cq = wrap<DvCq>(a->recv_cq);
  qp->srq = a->srq ? wrap<DvSrq>(a->srq) : nullptr;
  qp->send_ops = send_ops ? send_ops : supported_send_ops(c, a->qp_type);
  ibv_qp& q = qp->qpx.qp_base;
  q.context = ibctx(c);
  q.qp_context = a->qp_context;
  q.pd = a->pd;
  q.send_cq = a->send_cq;
  q.recv_cq = a->recv_cq;
  q.srq = a->srq;
  q.qp_num = qp->m->qp_num;
  q.state = IBV_QPS_RESET;
  q.qp_type = a->qp_type;
  pthread_mutex_init(&q.mutex, nullptr);
  pthread_cond_init(&q.cond, nullptr);
  init_qp_ex_ops(qp);
  if (int rc = track(c, qp, Kind::qp, &q.handle)) {
    mid::destroy_qp(qp->m);
    delete qp;
    return failed(rc);
  }
  // rdma-core reports the capacities actually granted.
  a->cap.max_send_wr = qp->cap.max_send_wr;
  a->cap.max_recv_wr = qp->cap.max_recv_wr;
  a->cap.max_send_sge = qp->cap.max_send_sge;
  a->cap.max_recv_sge = qp->cap.max_recv_sge;
  a->cap.max_inline_data = qp->cap.max_inline_data;
  return qp;
}

// Unlinks a QP whose midlayer object is gone. With g_lock held.
void unlink_qp(DvQp* qp) {
  purge_async(qp->ctx, qp);
  untrack(qp->ctx, qp, qp->qpx.qp_base.handle);
}

void free_qp(DvQp* qp) {
  free_wr_builder(qp);
  pthread_cond_destroy(&qp->qpx.qp_base.cond);
  pthread_mutex_destroy(&qp->qpx.qp_base.mutex);
  delete qp;
}

void unlink_srq(DvSrq* srq) {
  purge_async(srq->ctx, srq);
  untrack(srq->ctx, srq, srq->srq.handle);
}

void free_srq(DvSrq* srq) {
  pthread_cond_destroy(&srq->srq.cond);
  pthread_mutex_destroy(&srq->srq.mutex);
  delete srq;
}

constexpr uint32_t kModifyKnown =
    IBV_QP_STATE | IBV_QP_CUR_STATE | IBV_QP_EN_SQD_ASYNC_NOTIFY | IBV_QP_ACCESS_FLAGS |
    IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_TIMEOUT |
    IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_RQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC |
    IBV_QP_ALT_PATH | IBV_QP_MIN_RNR_TIMER | IBV_QP_SQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
    IBV_QP_PATH_MIG_STATE | IBV_QP_CAP | IBV_QP_DEST_QPN | IBV_QP_RATE_LIMIT;

// The enum fields of ibv_qp_attr are read as the integers they are stored as: a caller
// need not initialise the fields its mask leaves out (ibv_xsrq_pingpong does not), and a
// garbage value there must be neither loaded as an enum nor looked at.
template <class E>
uint32_t raw_enum(const E& field) {
  static_assert(sizeof(E) == sizeof(uint32_t));
  uint32_t v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}

int modify_qp(DvQp* qp, ibv_qp_attr* a, int mask_in) {
  uint32_t mask = uint32_t(mask_in);
  if (mask & ~kModifyKnown) return EINVAL;
  // No alternate paths (APM) and no rate limiting; a path migration state of MIGRATED is
  // what a QP without APM is in, so it is accepted and dropped.
  if (mask & (IBV_QP_ALT_PATH | IBV_QP_RATE_LIMIT)) return EOPNOTSUPP;
  if (mask & IBV_QP_PATH_MIG_STATE) {
    if (raw_enum(a->path_mig_state) != IBV_MIG_MIGRATED) return EOPNOTSUPP;
    mask &= ~uint32_t(IBV_QP_PATH_MIG_STATE);
  }
  if ((mask & IBV_QP_STATE) && raw_enum(a->qp_state) > IBV_QPS_ERR) return EINVAL;
  if ((mask & IBV_QP_CUR_STATE) && raw_enum(a->cur_qp_state) > IBV_QPS_ERR) return EINVAL;
  QpAttr d;
  if (mask & IBV_QP_STATE) d.qp_state = QpState(raw_enum(a->qp_state));
  if (mask & IBV_QP_CUR_STATE) d.cur_qp_state = QpState(raw_enum(a->cur_qp_state));
  if (mask & IBV_QP_PATH_MTU) d.path_mtu = Mtu(raw_enum(a->path_mtu));
  d.qkey = a->qkey;
  d.rq_psn = a->rq_psn;
  d.sq_psn = a->sq_psn;
  d.dest_qp_num = a->dest_qp_num;
  d.qp_access_flags = a->qp_access_flags;
  d.cap = QpCap{a->cap.max_send_wr, a->cap.max_recv_wr, a->cap.max_send_sge, a->cap.max_recv_sge,
                a->cap.max_inline_data};
  if (mask & IBV_QP_AV)
    if (int rc = ah_from_ibv(a->ah_attr, &d.ah_attr)) return rc;
  d.pkey_index = a->pkey_index;
  d.max_rd_atomic = a->max_rd_atomic;
  d.max_dest_rd_atomic = a->max_dest_rd_atomic;
  d.min_rnr_timer = a->min_rnr_timer;
  d.port_num = a->port_num;
  d.timeout = a->timeout;
  d.retry_cnt = a->retry_cnt;
  d.rnr_retry = a->rnr_retry;
  if (int rc = mid::modify_qp(qp->m, &d, mask)) return rc;
  if (mask & IBV_QP_STATE) qp->qpx.qp_base.state = ibv_qp_state(raw_enum(a->qp_state));
  return 0;
}

}  // namespace

int destroy_qp_locked(DvQp* qp) {
  // Fence: the QP's event handler has run for the last time.
  if (int rc = mid::destroy_qp(qp->m)) return rc;
  unlink_qp(qp);
  free_qp(qp);
  return 0;
}

DvSrq* create_srq_locked(Context* c, ibv_pd* pd, const ibv_srq_init_attr* ia, DvXrcd* xrcd,
                         DvCq* cq, int* err) {
  auto failed = [&](int e) -> DvSrq* {
    *err = e;
    return nullptr;
  };
  if (c->dev->removed) return failed(EIO);
  const ibv_srq_attr& a = ia->attr;
  if (!c->attr.max_srq) return failed(EOPNOTSUPP);
  if (a.max_wr == 0 || a.max_wr > c->attr.max_srq_wr || a.max_sge > c->attr.max_sge ||
      a.srq_limit > a.max_wr)
    return failed(EINVAL);
  auto* srq = new (std::nothrow) DvSrq();
  if (!srq) return failed(ENOMEM);
  mid::SrqInitAttr init;
  init.max_wr = a.max_wr;
  init.max_sge = a.max_sge ? a.max_sge : 1;
  init.srq_limit = a.srq_limit;
  init.xrcd = xrcd ? xrcd->m : nullptr;
  init.cq = cq ? cq->m : nullptr;
  if (int rc = mid::create_srq(wrap<DvPd>(pd)->m, &init, on_srq_event, srq, &srq->m)) {
    delete srq;
    return failed(rc);
  }
  srq->ctx = c;
  srq->pd = wrap<DvPd>(pd);
  srq->attr = a;
  if (srq->m->max_wr) srq->attr.max_wr = srq->m->max_wr;  // granted: what fits
  srq->xrcd = xrcd;
  srq->srq.context = ibctx(c);
  srq->srq.srq_context = ia->srq_context;
  srq->srq.pd = pd;
  pthread_mutex_init(&srq->srq.mutex, nullptr);
  pthread_cond_init(&srq->srq.cond, nullptr);
  if (int rc = track(c, srq, Kind::srq, &srq->srq.handle)) {
    mid::destroy_srq(srq->m);
    free_srq(srq);
    return failed(rc);
  }
  return srq;
}

int destroy_srq_locked(DvSrq* srq) {
  if (int rc = mid::destroy_srq(srq->m)) return rc;
  unlink_srq(srq);
  free_srq(srq);
  return 0;
}

// verbs_context::create_qp_ex.
ibv_qp* create_qp_ex_op(ibv_context* context, ibv_qp_init_attr_ex* a) {
  if (!a) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  constexpr uint32_t kKnown = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_XRCD |
                              IBV_QP_INIT_ATTR_CREATE_FLAGS | IBV_QP_INIT_ATTR_MAX_TSO_HEADER |
                              IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH |
                              IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  if (a->comp_mask & ~kKnown) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  // An XRC_RECV QP names its domain instead of a PD (xrc.cc).
  if (a->qp_type == IBV_QPT_XRC_RECV) return create_xrc_recv_qp_op(context, a);
  if (!(a->comp_mask & IBV_QP_INIT_ATTR_PD)) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  if (a->comp_mask &
      (IBV_QP_INIT_ATTR_XRCD | IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH))
    return fail(EOPNOTSUPP, static_cast<ibv_qp*>(nullptr));
  if ((a->comp_mask & IBV_QP_INIT_ATTR_CREATE_FLAGS) && a->create_flags)
    return fail(EOPNOTSUPP, static_cast<ibv_qp*>(nullptr));
  if ((a->comp_mask & IBV_QP_INIT_ATTR_MAX_TSO_HEADER) && a->max_tso_header)
    return fail(EOPNOTSUPP, static_cast<ibv_qp*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_qp*>(nullptr));
  int err = 0;
  DvQp* qp = create_qp(c, a, &err);
  if (!qp) return fail(err, static_cast<ibv_qp*>(nullptr));
  return &qp->qpx.qp_base;
}

// verbs_context::create_srq_ex: basic SRQs here, XRC SRQs in xrc.cc.
ibv_srq* create_srq_ex_op(ibv_context* context, ibv_srq_init_attr_ex* a) {
  if (!a) return fail(EINVAL, static_cast<ibv_srq*>(nullptr));
  constexpr uint32_t kKnown = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD |
                              IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ | IBV_SRQ_INIT_ATTR_TM;
  if (a->comp_mask & ~kKnown) return fail(EINVAL, static_cast<ibv_srq*>(nullptr));
  if ((a->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && a->srq_type == IBV_SRQT_XRC)
    return create_xrc_srq_op(context, a);  // xrc.cc
  if ((a->comp_mask & IBV_SRQ_INIT_ATTR_TYPE) && a->srq_type != IBV_SRQT_BASIC)
    return fail(EOPNOTSUPP, static_cast<ibv_srq*>(nullptr));
  if (!(a->comp_mask & IBV_SRQ_INIT_ATTR_PD) ||
      (a->comp_mask & (IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ | IBV_SRQ_INIT_ATTR_TM)))
    return fail(EOPNOTSUPP, static_cast<ibv_srq*>(nullptr));
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (registry_find(a->pd, Kind::pd) != registry_find(context, Kind::context) || !a->pd)
      return fail(EINVAL, static_cast<ibv_srq*>(nullptr));
  }
  ibv_srq_init_attr basic;
  basic.srq_context = a->srq_context;
  basic.attr = a->attr;
  ibv_srq* srq = ibv_create_srq(a->pd, &basic);
  if (srq) a->attr = basic.attr;
  return srq;
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

ibv_qp* ibv_create_qp(ibv_pd* pd, ibv_qp_init_attr* qp_init_attr) {
  if (!qp_init_attr) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(pd, Kind::pd);
  if (!c) return fail(EINVAL, static_cast<ibv_qp*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_qp*>(nullptr));
  ibv_qp_init_attr_ex a;
  std::memset(&a, 0, sizeof a);
  std::memcpy(&a, qp_init_attr, sizeof *qp_init_attr);
  a.comp_mask = IBV_QP_INIT_ATTR_PD;
  a.pd = pd;
  int err = 0;
  DvQp* qp = create_qp(c, &a, &err);
  if (!qp) return fail(err, static_cast<ibv_qp*>(nullptr));
  qp_init_attr->cap = a.cap;
  return &qp->qpx.qp_base;
}

int ibv_modify_qp(ibv_qp* qp, ibv_qp_attr* attr, int attr_mask) {
  if (!attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(qp, Kind::qp);
  if (!c) return EINVAL;
  if (c->dev->removed) return EIO;
  return modify_qp(wrap<DvQp>(qp), attr, attr_mask);
}

int ibv_query_qp(ibv_qp* qp, ibv_qp_attr* attr, int attr_mask, ibv_qp_init_attr* init_attr) {
  if (!attr || !init_attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(qp, Kind::qp)) return EINVAL;
  DvQp* d = wrap<DvQp>(qp);
  QpAttr q;
  mid::QpInitAttr init;
  if (int rc = mid::query_qp(d->m, &q, uint32_t(attr_mask), &init)) return rc;
  std::memset(attr, 0, sizeof *attr);
  attr->qp_state = ibv_qp_state(q.qp_state);
  attr->cur_qp_state = ibv_qp_state(q.cur_qp_state);
  attr->path_mtu = ibv_mtu(q.path_mtu);
  attr->path_mig_state = IBV_MIG_MIGRATED;
  attr->qkey = q.qkey;
  attr->rq_psn = q.rq_psn;
  attr->sq_psn = q.sq_psn;
  attr->dest_qp_num = q.dest_qp_num;
  attr->qp_access_flags = q.qp_access_flags;
  attr->cap.max_send_wr = d->cap.max_send_wr;
  attr->cap.max_recv_wr = d->cap.max_recv_wr;
  attr->cap.max_send_sge = d->cap.max_send_sge;
  attr->cap.max_recv_sge = d->cap.max_recv_sge;
  attr->cap.max_inline_data = d->cap.max_inline_data;
  ah_to_ibv(q.ah_attr, &attr->ah_attr);
  attr->pkey_index = q.pkey_index;
  attr->en_sqd_async_notify = 0;
  attr->sq_draining = 0;
  attr->max_rd_atomic = q.max_rd_atomic;
  attr->max_dest_rd_atomic = q.max_dest_rd_atomic;
  attr->min_rnr_timer = q.min_rnr_timer;
  attr->port_num = q.port_num;
  attr->timeout = q.timeout;
  attr->retry_cnt = q.retry_cnt;
  attr->rnr_retry = q.rnr_retry;
  std::memset(init_attr, 0, sizeof *init_attr);
  init_attr->qp_context = qp->qp_context;
  init_attr->send_cq = qp->send_cq;
  init_attr->recv_cq = qp->recv_cq;
  init_attr->srq = qp->srq;
  init_attr->cap = attr->cap;
  init_attr->qp_type = qp->qp_type;
  init_attr->sq_sig_all = q.sq_sig_all;
  qp->state = attr->qp_state;
  return 0;
}

int ibv_destroy_qp(ibv_qp* qp) {
  DvQp* d;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(qp, Kind::qp)) return EINVAL;
    d = wrap<DvQp>(qp);
    if (d->flows) return EBUSY;  // flow rules still steer to it (uverbs: the QP's usecnt)
    if (int rc = mid::destroy_qp(d->m)) return rc;
    unlink_qp(d);
  }
  wait_acks(&qp->mutex, &qp->cond, &qp->events_completed, d->async_reported);
  free_qp(d);
  return 0;
}

// 0 ("not guaranteed") for every QP and opcode. Packets are placed in PSN order, but the
// payload of one packet is copied with memcpy, whose stores do not go in address order
// (glibc's vector copies store the tail, or the first vector, before the middle): a reader
// that polls the last byte of a message may still see old bytes before it, so it must poll
// the CQ. rdma-core answers 0 as well for a provider that does not know.
int ibv_query_qp_data_in_order(ibv_qp*, ibv_wr_opcode, uint32_t) {
  return 0;
}

ibv_srq* ibv_create_srq(ibv_pd* pd, ibv_srq_init_attr* srq_init_attr) {
  if (!srq_init_attr) return fail(EINVAL, static_cast<ibv_srq*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(pd, Kind::pd);
  if (!c) return fail(EINVAL, static_cast<ibv_srq*>(nullptr));
  int err = 0;
  DvSrq* srq = create_srq_locked(c, pd, srq_init_attr, nullptr, nullptr, &err);
  return srq ? &srq->srq : fail(err, static_cast<ibv_srq*>(nullptr));
}

int ibv_modify_srq(ibv_srq* srq, ibv_srq_attr* srq_attr, int srq_attr_mask) {
  if (!srq_attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(srq, Kind::srq)) return EINVAL;
  if (srq_attr_mask & ~(IBV_SRQ_MAX_WR | IBV_SRQ_LIMIT)) return EINVAL;
  DvSrq* d = wrap<DvSrq>(srq);
  if (int rc =
          mid::modify_srq(d->m, srq_attr->max_wr, srq_attr->srq_limit, uint32_t(srq_attr_mask)))
    return rc;
  // A size the queue already holds is accepted without a resize: the capacity reported
  // stays what fits.
  if ((srq_attr_mask & IBV_SRQ_MAX_WR) && !d->m->max_wr) d->attr.max_wr = srq_attr->max_wr;
  if (srq_attr_mask & IBV_SRQ_LIMIT) d->attr.srq_limit = srq_attr->srq_limit;
  return 0;
}

int ibv_query_srq(ibv_srq* srq, ibv_srq_attr* srq_attr) {
  if (!srq_attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(srq, Kind::srq)) return EINVAL;
  *srq_attr = wrap<DvSrq>(srq)->attr;
  return 0;
}

int ibv_destroy_srq(ibv_srq* srq) {
  DvSrq* d;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(srq, Kind::srq)) return EINVAL;
    d = wrap<DvSrq>(srq);
    if (int rc = mid::destroy_srq(d->m)) return rc;  // EBUSY while QPs use it
    unlink_srq(d);
  }
  wait_acks(&srq->mutex, &srq->cond, &srq->events_completed, d->async_reported);
  free_srq(d);
  return 0;
}

}  // extern "C"
