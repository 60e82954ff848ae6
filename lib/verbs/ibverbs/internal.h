// The libibverbs.so.1 drop-in: object layouts and the state shared by its files.
//
// Every object an application sees is the rdma-core struct (`ibv_pd`, `ibv_cq_ex`,
// `ibv_qp_ex`…) as the first member of a dverbs wrapper that holds the midlayer object, so
// the inline verbs of <infiniband/verbs.h> (ibv_post_send, ibv_poll_cq…) reach the wrapper
// with one cast and call straight into the midlayer.
//
// Resource model (user_verbs.txt): each context keeps a handle table (uverbs' idr) of what
// it owns; handles are generation-tagged and stored in the objects' `handle` fields. The
// control path never dereferences an application pointer it has not found first in the
// process-wide registry of live objects (keyed by address): a stale, forged or foreign
// pointer is EINVAL. The fast path (post/poll/notify) trusts its arguments, as
// libibverbs does.
//
// Locking: one control-path mutex, g_lock (a mid::Mutex), guards the registry, every
// context's handle table and the object graph (creation, destruction, use counts). It is
// never taken on the fast path nor by midlayer handler threads: completion and async
// events only take the short spinlocks of a channel or a context's event queue.
#pragma once

#include <infiniband/verbs.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/spinlock.h"
#include "dverbs/types.h"
#include "midlayer/core.h"

// verbs.h turns these into macros over inline helpers; the drop-in defines the real
// functions.
#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

namespace dverbs::ibv {

using base::SpinLock;

// ---- ABI: dverbs' work requests and completions are the rdma-core structs. ----
#define DV_SAME_FIELD(A, B, f) \
  static_assert(offsetof(A, f) == offsetof(B, f) && sizeof(A::f) == sizeof(B::f), #f)
static_assert(sizeof(Sge) == sizeof(ibv_sge));
DV_SAME_FIELD(Sge, ibv_sge, addr);
DV_SAME_FIELD(Sge, ibv_sge, length);
DV_SAME_FIELD(Sge, ibv_sge, lkey);
static_assert(sizeof(RecvWr) == sizeof(ibv_recv_wr));
DV_SAME_FIELD(RecvWr, ibv_recv_wr, wr_id);
DV_SAME_FIELD(RecvWr, ibv_recv_wr, next);
DV_SAME_FIELD(RecvWr, ibv_recv_wr, sg_list);
DV_SAME_FIELD(RecvWr, ibv_recv_wr, num_sge);
static_assert(sizeof(SendWr) == sizeof(ibv_send_wr));
DV_SAME_FIELD(SendWr, ibv_send_wr, wr_id);
DV_SAME_FIELD(SendWr, ibv_send_wr, next);
DV_SAME_FIELD(SendWr, ibv_send_wr, sg_list);
DV_SAME_FIELD(SendWr, ibv_send_wr, num_sge);
DV_SAME_FIELD(SendWr, ibv_send_wr, opcode);
DV_SAME_FIELD(SendWr, ibv_send_wr, send_flags);
DV_SAME_FIELD(SendWr, ibv_send_wr, imm_data);
DV_SAME_FIELD(SendWr, ibv_send_wr, invalidate_rkey);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.rdma.remote_addr);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.rdma.rkey);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.atomic.remote_addr);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.atomic.compare_add);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.atomic.swap);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.atomic.rkey);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.ud.ah);  // mid::Ah* vs ibv_ah*: translated for UD
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.ud.remote_qpn);
DV_SAME_FIELD(SendWr, ibv_send_wr, wr.ud.remote_qkey);
DV_SAME_FIELD(SendWr, ibv_send_wr, qp_type.xrc.remote_srqn);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.mw);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.rkey);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.bind_info.mr);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.bind_info.addr);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.bind_info.length);
DV_SAME_FIELD(SendWr, ibv_send_wr, bind_mw.bind_info.mw_access_flags);
DV_SAME_FIELD(SendWr, ibv_send_wr, tso.hdr);
DV_SAME_FIELD(SendWr, ibv_send_wr, tso.hdr_sz);
DV_SAME_FIELD(SendWr, ibv_send_wr, tso.mss);
static_assert(sizeof(Wc) == sizeof(ibv_wc));
DV_SAME_FIELD(Wc, ibv_wc, wr_id);
DV_SAME_FIELD(Wc, ibv_wc, status);
DV_SAME_FIELD(Wc, ibv_wc, opcode);
DV_SAME_FIELD(Wc, ibv_wc, vendor_err);
DV_SAME_FIELD(Wc, ibv_wc, byte_len);
DV_SAME_FIELD(Wc, ibv_wc, imm_data);
DV_SAME_FIELD(Wc, ibv_wc, invalidated_rkey);
DV_SAME_FIELD(Wc, ibv_wc, qp_num);
DV_SAME_FIELD(Wc, ibv_wc, src_qp);
DV_SAME_FIELD(Wc, ibv_wc, wc_flags);
DV_SAME_FIELD(Wc, ibv_wc, pkey_index);
DV_SAME_FIELD(Wc, ibv_wc, slid);
DV_SAME_FIELD(Wc, ibv_wc, sl);
DV_SAME_FIELD(Wc, ibv_wc, dlid_path_bits);
#undef DV_SAME_FIELD
static_assert(uint32_t(WrOpcode::send_with_inv) == IBV_WR_SEND_WITH_INV);
static_assert(uint32_t(WrOpcode::atomic_fetch_and_add) == IBV_WR_ATOMIC_FETCH_AND_ADD);
static_assert(uint32_t(WcOpcode::recv_rdma_with_imm) == IBV_WC_RECV_RDMA_WITH_IMM);
static_assert(uint32_t(WcOpcode::local_inv) == IBV_WC_LOCAL_INV);
static_assert(uint32_t(WrOpcode::atomic_write) == IBV_WR_ATOMIC_WRITE);
static_assert(uint32_t(WcOpcode::atomic_write) == IBV_WC_ATOMIC_WRITE);
static_assert(uint32_t(WcStatus::general_err) == IBV_WC_GENERAL_ERR);
static_assert(uint32_t(QpState::err) == IBV_QPS_ERR);
static_assert(uint32_t(QpType::ud) == IBV_QPT_UD && uint32_t(QpType::rc) == IBV_QPT_RC);
static_assert(uint32_t(Mtu::mtu4096) == IBV_MTU_4096);
static_assert(uint32_t(EventType::gid_change) == IBV_EVENT_GID_CHANGE);
static_assert(send_flags::inline_data == IBV_SEND_INLINE && send_flags::fence == IBV_SEND_FENCE);
static_assert(access::mw_bind == IBV_ACCESS_MW_BIND && access::zero_based == IBV_ACCESS_ZERO_BASED);
static_assert(wc_flags::with_inv == IBV_WC_WITH_INV && wc_flags::grh == IBV_WC_GRH);
static_assert(qp_attr_mask::dest_qpn == IBV_QP_DEST_QPN && qp_attr_mask::cap == IBV_QP_CAP);

enum class Kind : uint8_t { context, channel, pd, mr, ah, cq, srq, qp, td, mw, xrcd, flow };
const char* kind_name(Kind k) noexcept;

struct Context;

// One slot of a context's handle table.
struct Slot {
  void* obj = nullptr;
  Kind kind = Kind::pd;
  uint16_t gen = 0;
};

// The per-context idr: handle = generation << 20 | index. Guarded by g_lock.
class HandleTable {
 public:
  static constexpr uint32_t kIndexBits = 20;
  static constexpr uint32_t kIndexMask = (1u << kIndexBits) - 1;
  // Returns the handle, or UINT32_MAX when the table is full or memory is short.
  uint32_t insert(void* obj, Kind kind) noexcept;
  bool matches(uint32_t handle, const void* obj, Kind kind) const noexcept;
  void erase(uint32_t handle) noexcept;
  // Live objects of one kind, newest first (children are usually younger than parents).
  std::vector<void*> objects(Kind kind) const;
  bool empty() const noexcept { return live_ == 0; }

 private:
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  uint32_t live_ = 0;
};

// The control-path lock (see the file comment).
mid::Mutex& g_lock();

// Registry of live objects. Context: process context, with g_lock held.
bool registry_add(const void* obj, Kind kind, Context* ctx, uint32_t handle) noexcept;
void registry_remove(const void* obj) noexcept;
// The owning context of a live object of `kind`, or nullptr (never dereferences `obj`).
Context* registry_find(const void* obj, Kind kind) noexcept;
// Every open context (for process-exit clean-up). With g_lock held.
std::vector<Context*> registry_contexts();

// Registers `obj` in ctx's handle table and the registry; sets *handle. ENOMEM on failure.
// Context: process context, with g_lock held.
int track(Context* ctx, void* obj, Kind kind, uint32_t* handle) noexcept;
void untrack(Context* ctx, void* obj, uint32_t handle) noexcept;

// ---- devices ----
struct Device {
  ibv_device ibdev;  // first: applications hold &ibdev
  mid::Device* mdev = nullptr;
  uint64_t node_guid = 0;  // host order
  bool removed = false;    // the midlayer removed it; guarded by g_lock
  // For the link wait of ibv_open_device (device.cc): when the device appeared and
  // whether its link was down then. Written once in the client's add().
  std::chrono::steady_clock::time_point appeared{};
  bool down_at_start = false;
};
// The Device of an ibv_device pointer handed out by ibv_get_device_list, or nullptr.
// Context: process context, with g_lock held.
Device* device_find(const ibv_device* dev) noexcept;

// ---- async events ----
struct AsyncEvent {
  ibv_event_type type;
  Kind kind;  // cq, qp, srq, or context for device/port events
  void* obj;  // the wrapper (DvCq*, DvQp*, DvSrq*), nullptr for device/port events
  int port_num;
};

// ---- objects ----
struct Context {
  verbs_context vctx;  // first; ends with the ibv_context applications see
  Device* dev;
  mid::Device* mdev;
  HandleTable handles;  // guarded by g_lock
  DeviceAttr attr;      // cached at open: validation limits
  bool device_handler;  // registered with mid::register_event_handler
  int async_fd;         // eventfd (semaphore mode) behind ibv_context::async_fd
  SpinLock async_lock;  // guards the event ring
  static constexpr uint32_t kAsyncRing = 1024;
  AsyncEvent async_ring[kAsyncRing];
  uint32_t async_head, async_count;
  std::atomic<uint64_t> async_dropped;
};

inline ibv_context* ibctx(Context* c) noexcept {
  return &c->vctx.context;
}

struct DvCq;

struct Channel {
  ibv_comp_channel ch;  // first; ch.refcnt counts the CQs bound to it (under g_lock)
  Context* ctx;
  uint32_t handle;
  SpinLock lock;  // guards the FIFO below and DvCq::queued/next_ready of its CQs
  DvCq* head;
  DvCq* tail;
};

struct DvPd {
  ibv_pd pd;
  mid::Pd* m;  // a parent domain shares its protection domain's
  Context* ctx;
  DvPd* contained;  // a parent domain (extended.cc): the PD it stands for; else nullptr
};

struct DvMr {
  ibv_mr mr;
  mid::Mr* m;
  Context* ctx;
  uint64_t pin_addr, pin_len;  // what pin.cc charged and locked
};

// A memory window (mw.cc); mw.rkey follows every bind posted through the drop-in.
struct DvMw {
  ibv_mw mw;
  mid::Mw* m;
  Context* ctx;
};

struct DvAh {
  ibv_ah ah;
  mid::Ah* m;
  Context* ctx;
};

// Converts the device clock of completion timestamps (raw ticks, DeviceAttr::core_clock_khz)
// to CLOCK_REALTIME nanoseconds (clock.cc): a (raw, realtime) reference pair renewed at most
// once a millisecond by the CQ's poller, and ticks per nanosecond measured against the
// pair taken at creation once that is 100 ms old. Owned by one CQ (ibv_cq_ex polling is
// serialised by the application).
struct WallClock {
  mid::Device* dev = nullptr;
  uint64_t khz = 0;
  uint64_t base_raw = 0, ref_raw = 0;
  int64_t base_ns = 0, ref_ns = 0;
  double ns_per_tick = 0;
};

struct DvCq {
  ibv_cq_ex cq;  // first; ibv_cq is its prefix
  mid::Cq* m;
  Context* ctx;
  Channel* channel;
  uint64_t wc_flags;  // IBV_WC_EX_WITH_* requested at creation
  DvPd* parent_domain;  // IBV_CQ_INIT_ATTR_MASK_PD at creation, else nullptr
  // Completion-channel queue state, guarded by channel->lock.
  uint32_t queued;  // events raised and not yet returned by ibv_get_cq_event
  DvCq* next_ready;
  bool in_queue;
  // Events handed to the application (acknowledged through cq.comp_events_completed and
  // cq.async_events_completed): comp_reported under channel->lock, async_reported under
  // ctx->async_lock.
  uint32_t comp_reported;
  uint32_t async_reported;
  // ibv_cq_ex polling: the completion start_poll/next_poll made current, and its
  // timestamp (IBV_WC_EX_WITH_COMPLETION_TIMESTAMP[_WALLCLOCK]).
  Wc cur;
  uint64_t cur_ts;
  WallClock clock;  // IBV_WC_EX_WITH_COMPLETION_TIMESTAMP_WALLCLOCK only
};

// An XRC domain handle (xrc.cc): every ibv_open_xrcd returns one; the midlayer object is
// shared by the handles of one file.
struct DvXrcd {
  ibv_xrcd xrcd;  // first; applications hold &xrcd
  uint32_t handle;
  mid::Xrcd* m;
  Context* ctx;
};

struct DvSrq {
  ibv_srq srq;
  mid::Srq* m;
  Context* ctx;
  DvPd* pd;
  DvXrcd* xrcd;  // an XRC SRQ's domain, else nullptr
  ibv_srq_attr attr;        // as created / last modified
  uint32_t async_reported;  // events handed out; under ctx->async_lock
};

struct WrBuilder;

// IBA 1.5 names rdma-core 44's <infiniband/verbs.h> lacks (rdma-core 45 added FLUSH, with
// these values: verbs.h, kernel-headers/rdma/ib_user_verbs.h).
constexpr uint32_t kWrFlush = 14;                     // IBV_WR_FLUSH
constexpr uint32_t kWcFlush = 8;                      // IBV_WC_FLUSH
constexpr uint32_t kAccessFlushGlobal = 1u << 8;      // IBV_ACCESS_FLUSH_GLOBAL
constexpr uint32_t kAccessFlushPersistent = 1u << 9;  // IBV_ACCESS_FLUSH_PERSISTENT
constexpr uint64_t kQpExWithFlush = 1u << 11;         // IBV_QP_EX_WITH_FLUSH
constexpr uint64_t kDeviceFlushGlobal = 1ull << 38;   // IB_UVERBS_DEVICE_FLUSH_GLOBAL
constexpr uint64_t kDeviceFlushPersistent = 1ull << 39;
constexpr uint64_t kDeviceAtomicWrite = 1ull << 40;   // IB_UVERBS_DEVICE_ATOMIC_WRITE
static_assert(uint32_t(WrOpcode::flush) == kWrFlush && uint32_t(WcOpcode::flush) == kWcFlush);
static_assert(access::flush_global == kAccessFlushGlobal &&
              access::flush_persistent == kAccessFlushPersistent);
// ibv_qp_ex::wr_flush, the member rdma-core 45 appended after wr_atomic_write.
using WrFlushFn = void (*)(ibv_qp_ex*, uint32_t rkey, uint64_t remote_addr, size_t len,
                           uint8_t type, uint8_t level);

struct DvQp {
  ibv_qp_ex qpx;  // first; ibv_qp is its prefix
  // Where a program built against rdma-core >= 45 finds ibv_qp_ex::wr_flush: right after
  // the ibv_qp_ex of rdma-core 44 (offsetof asserted in post.cc).
  WrFlushFn wr_flush;
  mid::Qp* m;
  Context* ctx;
  DvPd* pd;
  DvCq* send_cq;
  DvCq* recv_cq;
  DvSrq* srq;
  QpCap cap;                // granted capacities
  uint64_t send_ops;        // IBV_QP_EX_WITH_* allowed through ibv_qp_ex
  WrBuilder* wrb;           // ibv_wr_* state (post.cc)
  uint32_t async_reported;  // events handed out; under ctx->async_lock
  uint32_t flows;           // flow rules steering to it (flow.cc); under g_lock
};

template <class W, class T>
inline W* wrap(T* p) noexcept {
  return reinterpret_cast<W*>(p);
}

// ---- helpers shared by the files ----

// Sets errno and returns `ret` (for the NULL/-1 returning verbs).
template <class T>
inline T fail(int err, T ret) noexcept {
  errno = err;
  return ret;
}

// Queues an async event for `ctx`. Context: any (midlayer handler threads), never sleeps.
void push_async(Context* ctx, const AsyncEvent& ev) noexcept;
// Drops queued events that name `obj` (its destroy has fenced the midlayer).
// Context: any, never sleeps.
void purge_async(Context* ctx, const void* obj) noexcept;
// Waits until the application acknowledged the events it was given (rdma-core semantics of
// destroy). Context: process context, may sleep.
void wait_acks(pthread_mutex_t* m, pthread_cond_t* c, const uint32_t* acked, uint32_t reported);

// verbs_context ops implemented in query.cc. Context: process context.
int query_port_op(ibv_context* context, uint8_t port_num, ibv_port_attr* port_attr,
                  size_t port_attr_len);
int query_device_ex_op(ibv_context* context, const ibv_query_device_ex_input* input,
                       ibv_device_attr_ex* attr, size_t attr_size);
// Flow steering (flow.cc): the verbs_context ops ibv_create_flow / ibv_destroy_flow, and
// the clean-up destroy (g_lock held). Context: process context.
ibv_flow* create_flow_op(ibv_qp* qp, ibv_flow_attr* attr);
int destroy_flow_op(ibv_flow* flow);
int destroy_flow_locked(void* flow);

// Completion channels (events.cc). on_cq_comp is the midlayer completion handler of every
// CQ (handler thread, never sleeps); channel_forget drops a destroyed CQ's queued events.
void on_cq_comp(mid::Cq* cq, void* cq_context);
void channel_forget(DvCq* cq) noexcept;

// SRQ creation shared by ibv_create_srq and XRC SRQs (qp.cc): `xrcd` and `cq` null for a
// basic SRQ. nullptr with *err set on failure. Context: process context, g_lock held.
DvSrq* create_srq_locked(Context* c, ibv_pd* pd, const ibv_srq_init_attr* ia, DvXrcd* xrcd,
                         DvCq* cq, int* err);

// XRC (xrc.cc): verbs_context ops and the XRC halves of create_qp_ex / create_srq_ex.
// Context: process context.
ibv_xrcd* open_xrcd_op(ibv_context* context, ibv_xrcd_init_attr* attr);
int close_xrcd_op(ibv_xrcd* xrcd);
ibv_qp* open_qp_op(ibv_context* context, ibv_qp_open_attr* attr);
int get_srq_num_op(ibv_srq* srq, uint32_t* srq_num);
ibv_qp* create_xrc_recv_qp_op(ibv_context* context, ibv_qp_init_attr_ex* attr);
ibv_srq* create_xrc_srq_op(ibv_context* context, ibv_srq_init_attr_ex* attr);

// Fills the ibv_context ops table and the verbs_context extension ops, the ibv_qp_ex and
// ibv_cq_ex function pointers (post.cc, cq.cc). Context: process context.
void init_context_ops(Context* ctx) noexcept;
void init_qp_ex_ops(DvQp* qp) noexcept;
void init_cq_ex_ops(DvCq* cq) noexcept;
void free_wr_builder(DvQp* qp) noexcept;

// Completion timestamps (clock.cc). wallclock_init takes the first reference pair
// (process context); wallclock_refresh renews it when a millisecond old (the CQ's poller,
// ibv_start_poll: a vDSO clock_gettime at most once a millisecond, no system call);
// the read_* functions are the ibv_cq_ex accessors; query_rt_values_op is
// verbs_context::query_rt_values (IBV_VALUES_MASK_RAW_CLOCK: the raw clock in tv_nsec,
// tv_sec 0, as mlx5 reports it).
void wallclock_init(WallClock* w, mid::Device* dev, uint64_t khz) noexcept;
void wallclock_refresh(WallClock* w) noexcept;
uint64_t read_completion_ts_op(ibv_cq_ex* cq);
uint64_t read_completion_wallclock_op(ibv_cq_ex* cq);
int query_rt_values_op(ibv_context* context, ibv_values_ex* values);

// The clean-up destroy paths (close, disassociate, exit): unlike the verbs they do not
// wait for unacknowledged events. Return 0 or the midlayer's errno (EBUSY while in use).
// Context: process context, with g_lock held.
int destroy_qp_locked(DvQp* qp);
int destroy_srq_locked(DvSrq* srq);
int close_xrcd_locked(DvXrcd* xrcd);
int destroy_cq_locked(DvCq* cq);
int destroy_channel_locked(Channel* ch);
int dereg_mr_locked(DvMr* mr);
int dealloc_mw_locked(DvMw* mw);
int destroy_ah_locked(DvAh* ah);
int dealloc_pd_locked(DvPd* pd);
// Destroys what the context still owns, in dependency order. With g_lock held.
void destroy_all_locked(Context* ctx);

// Thread and parent domains (extended.cc). Context: process context, with g_lock held.
// parent_domain_of: the parent domain `pd` of `ctx`, or nullptr (a PD, stale, foreign).
// dealloc_parent_domain_locked: EBUSY while a QP, SRQ, CQ, MR or AH uses it.
// pd_in_use_by_domains: whether a parent domain stands for this PD.
// init_extended_ops: fills the verbs_context ops of extended.cc.
struct DvTd;
DvPd* parent_domain_of(Context* ctx, ibv_pd* pd) noexcept;
int dealloc_parent_domain_locked(DvPd* pd);
bool pd_in_use_by_domains(DvPd* pd);
int dealloc_td_locked(DvTd* td);
void init_extended_ops(Context* ctx) noexcept;

// Memory windows (mw.cc): the ibv_context_ops entries (alloc_mw, dealloc_mw, bind_mw) and
// the translation of a bind work request's ibv_mw/ibv_mr into the midlayer's objects.
// Context of the translation: any thread, never sleeps (the fast path trusts its pointers).
void init_mw_ops(Context* ctx) noexcept;
inline mid::Mw* mid_mw(ibv_mw* mw) noexcept {
  return mw ? reinterpret_cast<DvMw*>(mw)->m : nullptr;
}
inline mid::Mr* mid_mr(ibv_mr* mr) noexcept {
  return mr ? reinterpret_cast<DvMr*>(mr)->m : nullptr;
}
// The new rkey of a bind: ibv_inc_rkey's (the index bits stay, the key byte moves on).
inline uint32_t next_window_rkey(uint32_t rkey) noexcept {
  return (rkey & ~0xffu) | ((rkey + 1) & 0xffu);
}

// The IBV_ACCESS_* of a registration, checked (EINVAL, EOPNOTSUPP) and reduced to the
// bits the transport knows (objects.cc). Context: any.
int mr_access(unsigned* access) noexcept;

// Memory pinning (pin.cc): mlock + RLIMIT_MEMLOCK account. Context: process context.
int pin_range(uint64_t addr, uint64_t len) noexcept;  // 0, ENOMEM, EFAULT
void unpin_range(uint64_t addr, uint64_t len) noexcept;
uint64_t pinned_bytes() noexcept;

// Address vectors: rdma-core's ibv_ah_attr <-> dverbs' AhAttr (objects.cc). EINVAL for an
// address RoCE cannot route (no GRH). Context: any.
int ah_from_ibv(const ibv_ah_attr& in, AhAttr* out) noexcept;
void ah_to_ibv(const AhAttr& in, ibv_ah_attr* out) noexcept;

}  // namespace dverbs::ibv
