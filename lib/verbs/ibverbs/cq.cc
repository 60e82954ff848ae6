// Completion queues: ibv_create_cq, the create_cq_ex extension op, destruction, and the
// ibv_cq_ex polling ops (start_poll/next_poll/end_poll and the read_* accessors).
//
// Every CQ is allocated as an ibv_cq_ex (ibv_cq is its prefix), so ibv_cq_ex_to_cq and
// the extended polling work on any CQ. The polling ops poll one completion at a time into
// DvCq::cur; like rdma-core's, they are not safe against concurrent pollers of one CQ
// (applications serialise ibv_start_poll … ibv_end_poll).
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

void on_cq_event(const mid::Event& e, void* p) {
  auto* cq = static_cast<DvCq*>(p);
  AsyncEvent ev{};
  ev.type = ibv_event_type(e.type);
  ev.kind = Kind::cq;
  ev.obj = cq;
  push_async(cq->ctx, ev);
}

DvCq* create_cq(Context* c, int cqe, void* cq_context, Channel* ch, uint64_t wc_flags, int* err) {
  if (cqe <= 0 || uint32_t(cqe) > c->attr.max_cqe) {
    *err = EINVAL;
    return nullptr;
  }
  auto* cq = new (std::nothrow) DvCq();
  if (!cq) {
    *err = ENOMEM;
    return nullptr;
  }
  cq->ctx = c;
  cq->channel = ch;
  cq->wc_flags = wc_flags;
  if (wc_flags & IBV_WC_EX_WITH_COMPLETION_TIMESTAMP_WALLCLOCK)
    wallclock_init(&cq->clock, c->mdev, c->attr.core_clock_khz);
  if (int rc = mid::create_cq(c->mdev, uint32_t(cqe), on_cq_comp, on_cq_event, cq, &cq->m)) {
    delete cq;
    *err = rc;
    return nullptr;
  }
  ibv_cq_ex& x = cq->cq;
  x.context = ibctx(c);
  x.channel = ch ? &ch->ch : nullptr;
  x.cq_context = cq_context;
  x.cqe = int(cq->m->cqe);
  pthread_mutex_init(&x.mutex, nullptr);
  pthread_cond_init(&x.cond, nullptr);
  init_cq_ex_ops(cq);
  if (int rc = track(c, cq, Kind::cq, &x.handle)) {
    mid::destroy_cq(cq->m);
    delete cq;
    *err = rc;
    return nullptr;
  }
  if (ch) ++ch->ch.refcnt;
  return cq;
}

// Finds the channel and checks it belongs to `c`.
bool channel_of(Context* c, ibv_comp_channel* channel, Channel** out) {
  *out = nullptr;
  if (!channel) return true;
  if (registry_find(channel, Kind::channel) != c) return false;
  *out = wrap<Channel>(channel);
  return true;
}

// Unlinks a CQ whose midlayer object is gone. With g_lock held.
void unlink_cq(DvCq* cq) {
  channel_forget(cq);
  if (cq->channel) --cq->channel->ch.refcnt;
  purge_async(cq->ctx, cq);
  untrack(cq->ctx, cq, cq->cq.handle);
}

void free_cq(DvCq* cq) {
  pthread_cond_destroy(&cq->cq.cond);
  pthread_mutex_destroy(&cq->cq.mutex);
  delete cq;
}

// ---- ibv_cq_ex polling ----
inline DvCq* dv(ibv_cq_ex* c) {
  return wrap<DvCq>(c);
}

constexpr uint64_t kWithTs =
    IBV_WC_EX_WITH_COMPLETION_TIMESTAMP | IBV_WC_EX_WITH_COMPLETION_TIMESTAMP_WALLCLOCK;

int poll_one(ibv_cq_ex* c) {
  DvCq* cq = dv(c);
  const int n = (cq->wc_flags & kWithTs) ? mid::poll_cq_ts(cq->m, 1, &cq->cur, &cq->cur_ts)
                                         : mid::poll_cq(cq->m, 1, &cq->cur);
  if (n < 0) return -n;
  if (n == 0) return ENOENT;
  c->wr_id = cq->cur.wr_id;
  c->status = ibv_wc_status(cq->cur.status);
  return 0;
}
int start_poll(ibv_cq_ex* c, ibv_poll_cq_attr* attr) {
  if (attr && attr->comp_mask) return EINVAL;
  if (dv(c)->wc_flags & IBV_WC_EX_WITH_COMPLETION_TIMESTAMP_WALLCLOCK)
    wallclock_refresh(&dv(c)->clock);
  return poll_one(c);
}
int next_poll(ibv_cq_ex* c) {
  return poll_one(c);
}
void end_poll(ibv_cq_ex*) {}
ibv_wc_opcode read_opcode(ibv_cq_ex* c) {
  return ibv_wc_opcode(dv(c)->cur.opcode);
}
uint32_t read_vendor_err(ibv_cq_ex* c) {
  return dv(c)->cur.vendor_err;
}
uint32_t read_byte_len(ibv_cq_ex* c) {
  return dv(c)->cur.byte_len;
}
__be32 read_imm_data(ibv_cq_ex* c) {
  return dv(c)->cur.imm_data;
}
uint32_t read_qp_num(ibv_cq_ex* c) {
  return dv(c)->cur.qp_num;
}
uint32_t read_src_qp(ibv_cq_ex* c) {
  return dv(c)->cur.src_qp;
}
unsigned int read_wc_flags(ibv_cq_ex* c) {
  return dv(c)->cur.wc_flags;
}
uint32_t read_slid(ibv_cq_ex* c) {
  return dv(c)->cur.slid;
}
uint8_t read_sl(ibv_cq_ex* c) {
  return dv(c)->cur.sl;
}
uint8_t read_dlid_path_bits(ibv_cq_ex* c) {
  return dv(c)->cur.dlid_path_bits;
}
// Never requested (create_cq_ex refuses the flags): defined so that no pointer is null.
uint16_t read_cvlan(ibv_cq_ex*) {
  return 0;
}
uint32_t read_flow_tag(ibv_cq_ex*) {
  return 0;
}
void read_tm_info(ibv_cq_ex*, ibv_wc_tm_info* tm) {
  std::memset(tm, 0, sizeof *tm);
}

}  // namespace

void init_cq_ex_ops(DvCq* cq) noexcept {
  ibv_cq_ex& x = cq->cq;
  x.comp_mask = 0;
  x.start_poll = start_poll;
  x.next_poll = next_poll;
  x.end_poll = end_poll;
  x.read_opcode = read_opcode;
  x.read_vendor_err = read_vendor_err;
  x.read_byte_len = read_byte_len;
  x.read_imm_data = read_imm_data;
  x.read_qp_num = read_qp_num;
  x.read_src_qp = read_src_qp;
  x.read_wc_flags = read_wc_flags;
  x.read_slid = read_slid;
  x.read_sl = read_sl;
  x.read_dlid_path_bits = read_dlid_path_bits;
  x.read_completion_ts = read_completion_ts_op;
  x.read_cvlan = read_cvlan;
  x.read_flow_tag = read_flow_tag;
  x.read_tm_info = read_tm_info;
  x.read_completion_wallclock_ns = read_completion_wallclock_op;
}

int destroy_cq_locked(DvCq* cq) {
  // EBUSY while QPs use it. Fence: the completion handler has run for the last time.
  if (int rc = mid::destroy_cq(cq->m)) return rc;
  unlink_cq(cq);
  free_cq(cq);
  return 0;
}

// verbs_context::create_cq_ex.
ibv_cq_ex* create_cq_ex_op(ibv_context* context, ibv_cq_init_attr_ex* a) {
  if (!a) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  constexpr uint32_t kMaskKnown = IBV_CQ_INIT_ATTR_MASK_FLAGS | IBV_CQ_INIT_ATTR_MASK_PD;
  if (a->comp_mask & ~kMaskKnown) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  if (a->comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS) {
    constexpr uint32_t kFlagsKnown =
        IBV_CREATE_CQ_ATTR_SINGLE_THREADED | IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN;
    if (a->flags & ~kFlagsKnown) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
    if (a->flags & IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN)
      return fail(EOPNOTSUPP, static_cast<ibv_cq_ex*>(nullptr));
  }
  if (a->wc_flags & ~uint64_t(IBV_CREATE_CQ_SUP_WC_FLAGS))
    return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  // VLAN, flow tags and tag matching are not produced by the transport; timestamps are
  // where the device has a clock for them (DeviceAttr::core_clock_khz).
  if (a->wc_flags & ~uint64_t(IBV_WC_STANDARD_FLAGS | kWithTs))
    return fail(EOPNOTSUPP, static_cast<ibv_cq_ex*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  if ((a->wc_flags & kWithTs) && !c->attr.core_clock_khz)
    return fail(EOPNOTSUPP, static_cast<ibv_cq_ex*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_cq_ex*>(nullptr));
  if (a->comp_vector >= uint32_t(context->num_comp_vectors))
    return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  Channel* ch;
  if (!channel_of(c, a->channel, &ch)) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  if (a->cqe > uint32_t(INT32_MAX)) return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  // As mlx5: the PD given must be a parent domain of this context (extended.cc).
  DvPd* parent = nullptr;
  if ((a->comp_mask & IBV_CQ_INIT_ATTR_MASK_PD) &&
      !(parent = parent_domain_of(c, a->parent_domain)))
    return fail(EINVAL, static_cast<ibv_cq_ex*>(nullptr));
  int err = 0;
  DvCq* cq = create_cq(c, int(a->cqe), a->cq_context, ch, a->wc_flags, &err);
  if (!cq) return fail(err, static_cast<ibv_cq_ex*>(nullptr));
  cq->parent_domain = parent;
  return &cq->cq;
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

ibv_cq* ibv_create_cq(ibv_context* context, int cqe, void* cq_context, ibv_comp_channel* channel,
                      int comp_vector) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_cq*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_cq*>(nullptr));
  if (comp_vector < 0 || comp_vector >= context->num_comp_vectors)
    return fail(EINVAL, static_cast<ibv_cq*>(nullptr));
  Channel* ch;
  if (!channel_of(c, channel, &ch)) return fail(EINVAL, static_cast<ibv_cq*>(nullptr));
  int err = 0;
  DvCq* cq = create_cq(c, cqe, cq_context, ch, IBV_WC_STANDARD_FLAGS, &err);
  if (!cq) return fail(err, static_cast<ibv_cq*>(nullptr));
  return ibv_cq_ex_to_cq(&cq->cq);
}

// The entries present are kept (the driver moves them while completions keep arriving);
// cq->cqe becomes what fits. EINVAL below the completions present or beyond max_cqe.
int ibv_resize_cq(ibv_cq* cq, int cqe) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(cq, Kind::cq);
  if (!c) return EINVAL;
  if (c->dev->removed) return EIO;
  if (cqe <= 0 || uint32_t(cqe) > c->attr.max_cqe) return EINVAL;
  DvCq* d = wrap<DvCq>(cq);
  if (int rc = mid::resize_cq(d->m, uint32_t(cqe))) return rc;
  cq->cqe = int(d->m->cqe);
  return 0;
}

int ibv_destroy_cq(ibv_cq* cq) {
  DvCq* d;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(cq, Kind::cq)) return EINVAL;
    d = wrap<DvCq>(cq);
    if (int rc = mid::destroy_cq(d->m)) return rc;  // EBUSY while QPs use it
    unlink_cq(d);
  }
  // As rdma-core: wait (without the control lock) until every event handed out for this
  // CQ has been acknowledged.
  wait_acks(&d->cq.mutex, &d->cq.cond, &d->cq.comp_events_completed, d->comp_reported);
  wait_acks(&d->cq.mutex, &d->cq.cond, &d->cq.async_events_completed, d->async_reported);
  free_cq(d);
  return 0;
}

}  // extern "C"
