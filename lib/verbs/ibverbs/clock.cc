// Completion timestamps through the drop-in: the raw device clock of each completion
// (ibv_wc_read_completion_ts), its CLOCK_REALTIME equivalent
// (ibv_wc_read_completion_wallclock_ns) and the clock now (ibv_query_rt_values_ex).
//
// The clock is the one the HCA stamps completions with where it handles their packets
// (pmd/hca cq_push: the TSC, shared by every lcore, by dverbsd and its clients), counting
// DeviceAttr::core_clock_khz ticks a millisecond (ibv_device_attr_ex::hca_core_clock). The
// conversion to wall-clock time never makes a system call on the polling path: the
// reference pair is renewed through the vDSO's clock_gettime at most once a millisecond.
#include <cerrno>
#include <ctime>
#include <mutex>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

// A (raw, realtime) pair: the clock read on both sides of clock_gettime and the midpoint
// kept, from the tightest of a few tries (a preempted or slow read would put the pair off
// by its span).
bool take_pair(mid::Device* dev, uint64_t* raw, int64_t* ns) {
  uint64_t best_span = ~uint64_t(0);
  for (int i = 0; i < 5; i++) {
    uint64_t a = 0, b = 0;
    timespec t;
    if (mid::read_clock(dev, &a) != 0) return false;
    clock_gettime(CLOCK_REALTIME, &t);
    mid::read_clock(dev, &b);
    if (b - a >= best_span) continue;
    best_span = b - a;
    *raw = a + (b - a) / 2;
    *ns = int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
  }
  return true;
}

constexpr uint64_t kRefreshMs = 1;    // reference pair renewed when this old
constexpr uint64_t kMeasureMs = 100;  // the rate is measured over at least this

}  // namespace

// Nanoseconds per tick, measured once per process over 10 ms against CLOCK_REALTIME: the
// nominal rate (the HCA's estimate of its clock) can be off by 1e-3 on a virtual machine,
// a microsecond a millisecond.
static double measured_rate(mid::Device* dev, uint64_t khz) {
  static std::once_flag once;
  static double rate = 0;
  std::call_once(once, [&] {
    uint64_t r0, r1;
    int64_t n0, n1;
    if (!take_pair(dev, &r0, &n0)) return;
    const timespec pause{0, 10 * 1000 * 1000};
    nanosleep(&pause, nullptr);
    if (take_pair(dev, &r1, &n1) && r1 > r0) rate = double(n1 - n0) / double(r1 - r0);
  });
  return rate > 0 ? rate : 1e6 / double(khz);
}

void wallclock_init(WallClock* w, mid::Device* dev, uint64_t khz) noexcept {
  w->dev = dev;
  w->khz = khz;
  w->ns_per_tick = khz ? measured_rate(dev, khz) : 0;
  if (!khz || !take_pair(dev, &w->base_raw, &w->base_ns)) w->khz = 0;
  w->ref_raw = w->base_raw;
  w->ref_ns = w->base_ns;
}

void wallclock_refresh(WallClock* w) noexcept {
  if (!w->khz) return;
  uint64_t now;
  if (mid::read_clock(w->dev, &now) != 0 || now - w->ref_raw < kRefreshMs * w->khz) return;
  if (!take_pair(w->dev, &w->ref_raw, &w->ref_ns)) return;
  // Over a longer span the rate follows the wall clock closer still.
  const uint64_t span = w->ref_raw - w->base_raw;
  if (span >= kMeasureMs * w->khz) w->ns_per_tick = double(w->ref_ns - w->base_ns) / double(span);
}

uint64_t read_completion_ts_op(ibv_cq_ex* c) {
  return wrap<DvCq>(c)->cur_ts;
}

uint64_t read_completion_wallclock_op(ibv_cq_ex* c) {
  const DvCq* cq = wrap<DvCq>(c);
  const WallClock& w = cq->clock;
  const int64_t ticks = int64_t(cq->cur_ts - w.ref_raw);  // a completion may precede the pair
  return uint64_t(w.ref_ns + int64_t(double(ticks) * w.ns_per_tick));
}

int query_rt_values_op(ibv_context* context, ibv_values_ex* values) {
  if (!values || (values->comp_mask & ~uint32_t(IBV_VALUES_MASK_RAW_CLOCK))) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return EINVAL;
  uint32_t done = 0;
  int rc = 0;
  if (values->comp_mask & IBV_VALUES_MASK_RAW_CLOCK) {
    uint64_t raw = 0;
    rc = c->attr.core_clock_khz ? mid::read_clock(c->mdev, &raw) : EOPNOTSUPP;
    if (rc == 0) {
      values->raw_clock.tv_sec = 0;
      values->raw_clock.tv_nsec = long(raw);
      done |= IBV_VALUES_MASK_RAW_CLOCK;
    }
  }
  values->comp_mask = done;
  return rc;
}

}  // namespace dverbs::ibv
