// The fast path: the ibv_context ops that verbs.h's inline ibv_post_send, ibv_post_recv,
// ibv_poll_cq and ibv_req_notify_cq call, the ibv_qp_ex work-request builder (ibv_wr_*),
// and the tables that wire them (and the verbs_context extension ops) into a context.
//
// Context: any thread, concurrently on one object, never sleeps. No lock, no allocation,
// no handle lookup: the application's ibv_* pointer is the dverbs wrapper (first member),
// and work requests and completions are the dverbs structs (internal.h asserts the
// layouts). RC and UC work-request lists go to the transport as they are; UD lists, and
// lists with a memory-window bind, are copied in bounded batches on the stack only to swap
// each ibv_ah (ibv_mw, ibv_mr) for its midlayer object.
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

// Declared in cq.cc / qp.cc.
ibv_cq_ex* create_cq_ex_op(ibv_context* context, ibv_cq_init_attr_ex* a);
ibv_qp* create_qp_ex_op(ibv_context* context, ibv_qp_init_attr_ex* a);
ibv_srq* create_srq_ex_op(ibv_context* context, ibv_srq_init_attr_ex* a);

namespace {

inline DvQp* dq(ibv_qp* q) {
  return wrap<DvQp>(q);
}
inline mid::Ah* mid_ah(ibv_ah* ah) {
  return ah ? wrap<DvAh>(ah)->m : nullptr;
}

constexpr int kCopyBatch = 16;

// Sets the ibv_mw::rkey of each bind among the first `n` WRs of `orig` (posted).
void note_binds(ibv_send_wr* const* orig, int n) {
  for (int i = 0; i < n; i++)
    if (orig[i]->opcode == IBV_WR_BIND_MW && orig[i]->bind_mw.mw)
      orig[i]->bind_mw.mw->rkey = orig[i]->bind_mw.rkey;
}

// A list whose WRs name drop-in objects (UD: the ibv_ah; a bind: the ibv_mw and ibv_mr),
// copied in stack batches with the midlayer's objects swapped in.
int post_send_copied(DvQp* qp, ibv_send_wr* wr, ibv_send_wr** bad) {
  SendWr batch[kCopyBatch];
  ibv_send_wr* orig[kCopyBatch];
  const bool ud = qp->qpx.qp_base.qp_type == IBV_QPT_UD;
  while (wr) {
    int n = 0;
    for (; wr && n < kCopyBatch; wr = wr->next, ++n) {
      std::memcpy(&batch[n], wr, sizeof(SendWr));
      if (ud) batch[n].wr.ud.ah = mid_ah(wr->wr.ud.ah);
      if (wr->opcode == IBV_WR_BIND_MW) {
        batch[n].bind_mw.mw = mid_mw(wr->bind_mw.mw);
        batch[n].bind_mw.bind_info.mr = mid_mr(wr->bind_mw.bind_info.mr);
      }
      batch[n].next = nullptr;
      if (n) batch[n - 1].next = &batch[n];
      orig[n] = wr;
    }
    SendWr* b = nullptr;
    if (int rc = mid::post_send(qp->m, batch, &b)) {
      const int at = (b >= batch && b < batch + n) ? int(b - batch) : 0;
      note_binds(orig, at);
      *bad = orig[at];
      return rc;
    }
    note_binds(orig, n);
  }
  return 0;
}

bool has_bind(const ibv_send_wr* wr) {
  for (; wr; wr = wr->next)
    if (wr->opcode == IBV_WR_BIND_MW) return true;
  return false;
}

int op_post_send(ibv_qp* q, ibv_send_wr* wr, ibv_send_wr** bad) {
  DvQp* qp = dq(q);
  if (q->qp_type == IBV_QPT_UD || has_bind(wr)) return post_send_copied(qp, wr, bad);
  return mid::post_send(qp->m, reinterpret_cast<SendWr*>(wr), reinterpret_cast<SendWr**>(bad));
}

int op_post_recv(ibv_qp* q, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  return mid::post_recv(dq(q)->m, reinterpret_cast<RecvWr*>(wr), reinterpret_cast<RecvWr**>(bad));
}

int op_post_srq_recv(ibv_srq* s, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  return mid::post_srq_recv(wrap<DvSrq>(s)->m, reinterpret_cast<RecvWr*>(wr),
                            reinterpret_cast<RecvWr**>(bad));
}

int op_poll_cq(ibv_cq* cq, int n, ibv_wc* wc) {
  return mid::poll_cq(wrap<DvCq>(cq)->m, n, reinterpret_cast<Wc*>(wc));
}

int op_req_notify_cq(ibv_cq* cq, int solicited_only) {
  return mid::req_notify_cq(wrap<DvCq>(cq)->m, solicited_only != 0);
}

int op_compat_query_device(ibv_context* c, ibv_device_attr* a) {
  return ibv_query_device(c, a);
}
int op_compat_query_port(ibv_context* c, uint8_t port, _compat_ibv_port_attr* a) {
  return ibv_query_port(c, port, a);
}

}  // namespace

// ---------------------------------------------------------------- ibv_wr_* builder
//
// ibv_wr_start … ibv_wr_complete collects work requests in per-QP vectors that keep their
// capacity, so steady-state posting does not allocate. SGEs and inline bytes are stored by
// offset while building (the vectors may grow) and turned into pointers at wr_complete.
// Errors found while building are latched and returned by wr_complete, which then posts
// nothing (rdma-core's providers behave the same). As in mlx5, ibv_wr_start takes the QP's
// builder lock and ibv_wr_complete/ibv_wr_abort release it, so that threads sharing a QP
// build their lists one after the other (uncontended: one atomic exchange).
struct WrBuilder {
  SpinLock lock;
  std::vector<SendWr> wrs;
  std::vector<uint32_t> sge_at;  // per WR: index of its first SGE in `sges`
  std::vector<Sge> sges;         // inline WRs: addr is an offset into `inl`
  std::vector<uint8_t> inl;
  std::vector<std::pair<uint32_t, ibv_mw*>> binds;  // WR index → window (wr_bind_mw)
  int err = 0;
};

namespace {

inline DvQp* dx(ibv_qp_ex* q) {
  return wrap<DvQp>(q);
}

WrBuilder* builder(ibv_qp_ex* q) {
  return dx(q)->wrb;
}

// Starts a new WR of `op`; nullptr (and the latched error) if it cannot be built.
SendWr* begin(ibv_qp_ex* q, WrOpcode op, uint64_t op_flag) {
  DvQp* qp = dx(q);
  WrBuilder* b = qp->wrb;
  if (b->err) return nullptr;
  if (!(qp->send_ops & op_flag)) {
    b->err = EOPNOTSUPP;
    return nullptr;
  }
  try {
    b->wrs.emplace_back();
    b->sge_at.push_back(uint32_t(b->sges.size()));
  } catch (...) {
    b->err = ENOMEM;
    return nullptr;
  }
  SendWr& w = b->wrs.back();
  std::memset(&w, 0, sizeof w);
  w.wr_id = q->wr_id;
  w.send_flags = q->wr_flags;
  w.opcode = op;
  return &w;
}

SendWr* current(ibv_qp_ex* q) {
  WrBuilder* b = builder(q);
  if (b->err) return nullptr;
  if (b->wrs.empty()) {
    b->err = EINVAL;  // a setter before any ibv_wr_<opcode>
    return nullptr;
  }
  return &b->wrs.back();
}

void wr_send(ibv_qp_ex* q) {
  begin(q, WrOpcode::send, IBV_QP_EX_WITH_SEND);
}
void wr_send_imm(ibv_qp_ex* q, __be32 imm) {
  if (SendWr* w = begin(q, WrOpcode::send_with_imm, IBV_QP_EX_WITH_SEND_WITH_IMM))
    w->imm_data = imm;
}
void wr_send_inv(ibv_qp_ex* q, uint32_t rkey) {
  if (SendWr* w = begin(q, WrOpcode::send_with_inv, IBV_QP_EX_WITH_SEND_WITH_INV))
    w->invalidate_rkey = rkey;
}
void wr_rdma_write(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr) {
  if (SendWr* w = begin(q, WrOpcode::rdma_write, IBV_QP_EX_WITH_RDMA_WRITE)) {
    w->wr.rdma.rkey = rkey;
    w->wr.rdma.remote_addr = raddr;
  }
}
void wr_rdma_write_imm(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr, __be32 imm) {
  if (SendWr* w = begin(q, WrOpcode::rdma_write_with_imm, IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM)) {
    w->wr.rdma.rkey = rkey;
    w->wr.rdma.remote_addr = raddr;
    w->imm_data = imm;
  }
}
void wr_rdma_read(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr) {
  if (SendWr* w = begin(q, WrOpcode::rdma_read, IBV_QP_EX_WITH_RDMA_READ)) {
    w->wr.rdma.rkey = rkey;
    w->wr.rdma.remote_addr = raddr;
  }
}
void wr_atomic_cmp_swp(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr, uint64_t cmp, uint64_t swp) {
  if (SendWr* w = begin(q, WrOpcode::atomic_cmp_and_swp, IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP)) {
    w->wr.atomic.rkey = rkey;
    w->wr.atomic.remote_addr = raddr;
    w->wr.atomic.compare_add = cmp;
    w->wr.atomic.swap = swp;
  }
}
void wr_atomic_fetch_add(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr, uint64_t add) {
  if (SendWr* w = begin(q, WrOpcode::atomic_fetch_and_add, IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD)) {
    w->wr.atomic.rkey = rkey;
    w->wr.atomic.remote_addr = raddr;
    w->wr.atomic.compare_add = add;
  }
}
// A type 2 bind (mw.cc has the rules); the window's ibv_mw::rkey is set at wr_complete.
void wr_bind_mw(ibv_qp_ex* q, ibv_mw* mw, uint32_t rkey, const ibv_mw_bind_info* info) {
  SendWr* w = begin(q, WrOpcode::bind_mw, IBV_QP_EX_WITH_BIND_MW);
  if (!w) return;
  WrBuilder* b = builder(q);
  if (!mw || !info) {
    b->err = EINVAL;
    return;
  }
  try {
    b->binds.emplace_back(uint32_t(b->wrs.size() - 1), mw);
  } catch (...) {
    b->err = ENOMEM;
    return;
  }
  w->bind_mw.mw = mid_mw(mw);
  w->bind_mw.rkey = rkey;
  w->bind_mw.bind_info.mr = mid_mr(info->mr);
  w->bind_mw.bind_info.addr = info->addr;
  w->bind_mw.bind_info.length = info->length;
  w->bind_mw.bind_info.mw_access_flags = info->mw_access_flags;
}
void wr_local_inv(ibv_qp_ex* q, uint32_t invalidate_rkey) {
  if (SendWr* w = begin(q, WrOpcode::local_inv, IBV_QP_EX_WITH_LOCAL_INV))
    w->invalidate_rkey = invalidate_rkey;
}
// TSO is not implemented.
void latch_unsupported(ibv_qp_ex* q) {
  if (!builder(q)->err) builder(q)->err = EOPNOTSUPP;
}
void wr_send_tso(ibv_qp_ex* q, void*, uint16_t, uint16_t) {
  latch_unsupported(q);
}
void wr_set_xrc_srqn(ibv_qp_ex* q, uint32_t remote_srqn) {
  if (SendWr* w = current(q)) w->qp_type.xrc.remote_srqn = remote_srqn;
}

void wr_set_ud_addr(ibv_qp_ex* q, ibv_ah* ah, uint32_t remote_qpn, uint32_t remote_qkey) {
  if (SendWr* w = current(q)) {
    w->wr.ud.ah = mid_ah(ah);
    w->wr.ud.remote_qpn = remote_qpn;
    w->wr.ud.remote_qkey = remote_qkey;
  }
}

void add_sges(ibv_qp_ex* q, size_t n, const ibv_sge* list) {
  SendWr* w = current(q);
  if (!w) return;
  WrBuilder* b = builder(q);
  if (n > dx(q)->cap.max_send_sge) {
    b->err = EINVAL;
    return;
  }
  try {
    b->sges.insert(b->sges.end(), reinterpret_cast<const Sge*>(list),
                   reinterpret_cast<const Sge*>(list) + n);
  } catch (...) {
    b->err = ENOMEM;
    return;
  }
  w->num_sge = int(n);
}

void wr_set_sge(ibv_qp_ex* q, uint32_t lkey, uint64_t addr, uint32_t length) {
  const ibv_sge s{addr, length, lkey};
  add_sges(q, 1, &s);
}
void wr_set_sge_list(ibv_qp_ex* q, size_t n, const ibv_sge* list) {
  add_sges(q, n, list);
}

void add_inline(ibv_qp_ex* q, size_t n, const ibv_data_buf* bufs) {
  SendWr* w = current(q);
  if (!w) return;
  WrBuilder* b = builder(q);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) total += bufs[i].length;
  if (total > dx(q)->cap.max_inline_data) {
    b->err = EINVAL;
    return;
  }
  // The data is copied now (the caller may reuse its buffers at once): one SGE per WR.
  try {
    const size_t off = b->inl.size();
    b->inl.resize(off + total);
    size_t at = off;
    for (size_t i = 0; i < n; ++i) {
      std::memcpy(b->inl.data() + at, bufs[i].addr, bufs[i].length);
      at += bufs[i].length;
    }
    b->sges.push_back(Sge{uint64_t(off), uint32_t(total), 0});
  } catch (...) {
    b->err = ENOMEM;
    return;
  }
  w->num_sge = 1;
  w->send_flags |= IBV_SEND_INLINE;
}

void wr_set_inline_data(ibv_qp_ex* q, void* addr, size_t length) {
  const ibv_data_buf d{addr, length};
  add_inline(q, 1, &d);
}
void wr_set_inline_data_list(ibv_qp_ex* q, size_t n, const ibv_data_buf* list) {
  add_inline(q, n, list);
}

void reset(WrBuilder* b) {
  b->wrs.clear();
  b->sge_at.clear();
  b->sges.clear();
  b->inl.clear();
  b->binds.clear();
  b->err = 0;
}

// RDMA ATOMIC WRITE (IBA 1.5): its 8 bytes are copied now, as inline data of the WR
// (rdma-core's providers copy them into the WQE too); no SGE is set after it.
void wr_atomic_write(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr, const void* atomic_wr) {
  SendWr* w = begin(q, WrOpcode::atomic_write, IBV_QP_EX_WITH_ATOMIC_WRITE);
  if (!w) return;
  WrBuilder* b = builder(q);
  if (!atomic_wr) {
    b->err = EINVAL;
    return;
  }
  w->wr.rdma.remote_addr = raddr;
  w->wr.rdma.rkey = rkey;
  try {
    const size_t off = b->inl.size();
    b->inl.resize(off + 8);
    std::memcpy(b->inl.data() + off, atomic_wr, 8);
    b->sges.push_back(Sge{uint64_t(off), 8, 0});
  } catch (...) {
    b->err = ENOMEM;
    return;
  }
  w->num_sge = 1;
  w->send_flags |= IBV_SEND_INLINE;
}

// RDMA FLUSH (IBA 1.5): type and level are checked when the list is posted (wr.h).
void wr_flush(ibv_qp_ex* q, uint32_t rkey, uint64_t raddr, size_t len, uint8_t type,
              uint8_t level) {
  SendWr* w = begin(q, WrOpcode::flush, kQpExWithFlush);
  if (!w) return;
  w->wr.flush.remote_addr = raddr;
  w->wr.flush.rkey = rkey;
  w->wr.flush.type = type;
  w->wr.flush.level = level;
  w->wr.flush.length = len;
}
static_assert(offsetof(DvQp, wr_flush) == sizeof(ibv_qp_ex),
              "ibv_qp_ex::wr_flush follows wr_atomic_write (rdma-core 45)");

void wr_start(ibv_qp_ex* q) {
  builder(q)->lock.lock();
  reset(builder(q));
}
void wr_abort(ibv_qp_ex* q) {
  reset(builder(q));
  builder(q)->lock.unlock();
}

int wr_complete(ibv_qp_ex* q) {
  DvQp* qp = dx(q);
  WrBuilder* b = qp->wrb;
  int rc = b->err;
  const size_t n = b->wrs.size();
  if (!rc && n) {
    for (size_t i = 0; i < n; ++i) {
      SendWr& w = b->wrs[i];
      w.sg_list = w.num_sge ? &b->sges[b->sge_at[i]] : nullptr;
      if ((w.send_flags & IBV_SEND_INLINE) && w.num_sge)
        w.sg_list->addr = reinterpret_cast<uint64_t>(b->inl.data()) + w.sg_list->addr;
      w.next = i + 1 < n ? &b->wrs[i + 1] : nullptr;
    }
    SendWr* bad = nullptr;
    rc = mid::post_send(qp->m, b->wrs.data(), &bad);
    // The windows of the binds that were posted answer to their new keys.
    const size_t posted = rc && bad ? size_t(bad - b->wrs.data()) : n;
    for (const auto& [i, mw] : b->binds)
      if (i < posted) mw->rkey = b->wrs[i].bind_mw.rkey;
  }
  reset(b);
  b->lock.unlock();
  return rc;
}

}  // namespace

void init_qp_ex_ops(DvQp* qp) noexcept {
  ibv_qp_ex& x = qp->qpx;
  x.comp_mask = 0;
  x.wr_atomic_cmp_swp = wr_atomic_cmp_swp;
  x.wr_atomic_fetch_add = wr_atomic_fetch_add;
  x.wr_bind_mw = wr_bind_mw;
  x.wr_local_inv = wr_local_inv;
  x.wr_rdma_read = wr_rdma_read;
  x.wr_rdma_write = wr_rdma_write;
  x.wr_rdma_write_imm = wr_rdma_write_imm;
  x.wr_send = wr_send;
  x.wr_send_imm = wr_send_imm;
  x.wr_send_inv = wr_send_inv;
  x.wr_send_tso = wr_send_tso;
  x.wr_set_ud_addr = wr_set_ud_addr;
  x.wr_set_xrc_srqn = wr_set_xrc_srqn;
  x.wr_set_inline_data = wr_set_inline_data;
  x.wr_set_inline_data_list = wr_set_inline_data_list;
  x.wr_set_sge = wr_set_sge;
  x.wr_set_sge_list = wr_set_sge_list;
  x.wr_start = wr_start;
  x.wr_complete = wr_complete;
  x.wr_abort = wr_abort;
  x.wr_atomic_write = wr_atomic_write;
  qp->wr_flush = wr_flush;
}

void free_wr_builder(DvQp* qp) noexcept {
  delete qp->wrb;
  qp->wrb = nullptr;
}

void init_context_ops(Context* c) noexcept {
  ibv_context_ops& o = c->vctx.context.ops;
  o._compat_query_device = op_compat_query_device;
  o._compat_query_port = op_compat_query_port;
  o.poll_cq = op_poll_cq;
  o.req_notify_cq = op_req_notify_cq;
  o.post_srq_recv = op_post_srq_recv;
  o.post_send = op_post_send;
  o.post_recv = op_post_recv;
  init_mw_ops(c);
  verbs_context& v = c->vctx;
  v.query_port = query_port_op;
  v.query_device_ex = query_device_ex_op;
  v.create_cq_ex = create_cq_ex_op;
  v.create_qp_ex = create_qp_ex_op;
  v.create_srq_ex = create_srq_ex_op;
  v.query_rt_values = query_rt_values_op;
  v.open_xrcd = open_xrcd_op;
  v.close_xrcd = close_xrcd_op;
  v.open_qp = open_qp_op;
  v.get_srq_num = get_srq_num_op;
  v.ibv_create_flow = create_flow_op;
  v.ibv_destroy_flow = destroy_flow_op;
  // What libibverbs 1.1.8's inline flow wrappers call (rdma-core copies the ops there too).
  v.ABI_placeholder1 = reinterpret_cast<void (*)()>(v.ibv_create_flow);
  v.ABI_placeholder2 = reinterpret_cast<void (*)()>(v.ibv_destroy_flow);
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

// Every QP can use the builder API; its vectors are created on first use.
ibv_qp_ex* ibv_qp_to_qp_ex(ibv_qp* qp) {
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(qp, Kind::qp)) return fail(EINVAL, static_cast<ibv_qp_ex*>(nullptr));
    DvQp* d = dq(qp);
    if (!d->wrb) {
      d->wrb = new (std::nothrow) WrBuilder();
      if (!d->wrb) return fail(ENOMEM, static_cast<ibv_qp_ex*>(nullptr));
      try {
        d->wrb->wrs.reserve(64);
        d->wrb->sge_at.reserve(64);
        d->wrb->sges.reserve(64);
        d->wrb->inl.reserve(4096);
        d->wrb->binds.reserve(16);
      } catch (...) {
      }
    }
  }
  return &dq(qp)->qpx;
}

}  // extern "C"
