// Completion events and async events: lock-free rings drained by a TBB handler pool.
//
// Producers are transport lcores and any other thread (core_locking.rst: dispatch_event
// "is also safe to call from any context"). They only touch atomics:
//
// - cq_comp_event raises cq->events.pending and, when `scheduled` goes 0->1, pushes the
//   CQ on the ready ring. `scheduled` stays 1 until a handler thread lets go of the CQ, so
//   a CQ is queued at most once and at most one completion handler per CQ runs at a time.
//   Events raised meanwhile coalesce into one handler call, as one arm of the kernel's
//   ib_req_notify_cq yields one event. A full ready ring spills into an intrusive list
//   (never lost, counted in ring_full_drops).
// - dispatch_event copies the event into a bounded Vyukov MPMC ring (sequence-numbered
//   slots; the push allocates nothing, takes no lock, makes no syscall). A full ring drops
//   the event; the drop is counted and reported once, on stderr, by a handler thread.
//
// Handler pool: a tbb::task_arena of N threads (DVERBS_HANDLER_THREADS, default 2) into
// which drain tasks are enqueued; a drain task runs until the rings are empty. Waking rule
// (the user-space analogue of raising a softirq): a producer enqueues a drain task — which
// allocates and may wake a TBB worker through a futex — only when fewer than N drainers
// are active and the idle ones are fewer than the queued items, i.e. on the idle->busy
// transition. While drainers are busy the common case is a pure atomic push. Lost wake-ups
// are excluded by a Dekker pairing: producers publish, then read `active`; a drainer
// decrements `active`, then re-checks the rings (all seq_cst).
//
// Fences (process context only, they poll with backoff):
// - flush_async_events waits until every ring position reserved before the call has been
//   consumed. Async slots are released only after delivery, so "consumed" means
//   "delivered or forgotten". Destroyers mark the object (or null Device::reg) before
//   reading the ring's enqueue position; dispatchers reserve a position before reading the
//   mark; so an event either is covered by the fence or is tombstoned at dispatch.
// - quiesce_cq marks the CQ dying, then takes its `scheduled` bit for good (possible only
//   when the CQ is in no queue and no handler is running it) and waits until no handler
//   thread holds it (`in_handler`, dropped as the last touch of the CQ).
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <optional>
#include <thread>

#include "base/mpmc_ring.h"
#include "base/spinlock.h"
#include "midlayer/core.h"
#include "midlayer/internal.h"

namespace dverbs::mid {
namespace {

using detail::kAsyncEventRingSize;
using detail::kCqReadyRingSize;
using base::cpu_relax;

struct EventSlot {
  Event event;
  bool live;  // false: device unregistering or object dying at dispatch (tombstone)
};

enum PoolState : int { kOff, kRunning, kStopping };

// The rings are base/mpmc_ring.h's, seq_cst on the producer side: the waking rule pairs
// them with `active` (Dekker, see the top of the file), and a dispatcher reads the destroy
// marks only after its reservation (Fences). A slot stays owned by its consumer until
// release(): flush_async_events waits for that.
static_assert((kAsyncEventRingSize & (kAsyncEventRingSize - 1)) == 0);
static_assert((kCqReadyRingSize & (kCqReadyRingSize - 1)) == 0);

struct Engine {
  Engine() {
    if (!events.init(kAsyncEventRingSize) || !ready.init(kCqReadyRingSize)) throw std::bad_alloc();
  }
  base::MpmcRing<EventSlot, /*kSeqCst=*/true> events;
  base::MpmcRing<Cq*, /*kSeqCst=*/true> ready;
  alignas(64) std::atomic<Cq*> overflow{nullptr};  // ready CQs that did not fit the ring

  alignas(64) std::atomic<int> active{0};  // drain tasks enqueued or running
  std::atomic<int> busy{0};                // drainers inside a consumer callback
  std::atomic<int> state{kOff};
  std::atomic<int> size{0};
  Mutex control;  // start/stop; guards `arena` and `parallelism` writes
  std::optional<tbb::global_control> parallelism;
  std::optional<tbb::task_arena> arena;

  alignas(64) std::atomic<uint64_t> cq_events_raised{0};
  std::atomic<uint64_t> cq_handlers_run{0};
  std::atomic<uint64_t> async_events_raised{0};
  std::atomic<uint64_t> async_events_delivered{0};
  std::atomic<uint64_t> ring_full_drops{0};
  std::atomic<bool> async_drop_unreported{false};
  std::atomic<bool> async_drop_reported{false};
};

// Never destroyed: handler threads and late callers (static destructors) may still use it.
Engine& engine() noexcept {
  static Engine* const e = new Engine();
  return *e;
}

thread_local bool t_draining = false;
constexpr int kBatch = 32;

uint64_t backlog(Engine& e) noexcept {
  return e.events.backlog() + e.ready.backlog() +
         (e.overflow.load(std::memory_order_seq_cst) ? 1 : 0);
}

bool has_ready_work(Engine& e) noexcept {
  return e.events.head_ready() || e.ready.head_ready() ||
         e.overflow.load(std::memory_order_seq_cst) != nullptr;
}

void drain() noexcept;

// The waking rule (see the top of the file). Context: any, never sleeps; enqueues a TBB
// task only on the idle->busy transition.
void kick(Engine& e) noexcept {
  int a = e.active.load(std::memory_order_seq_cst);
  for (;;) {
    if (a >= e.size.load(std::memory_order_seq_cst)) return;
    const int idle = a - e.busy.load(std::memory_order_seq_cst);
    if (idle > 0 && static_cast<uint64_t>(idle) >= backlog(e)) return;
    // CAS, never a speculative fetch_add: a transient over-count could make an exiting
    // drainer believe others are still active.
    if (e.active.compare_exchange_weak(a, a + 1, std::memory_order_seq_cst)) break;
  }
  if (e.state.load(std::memory_order_seq_cst) != kRunning) {
    e.active.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  e.arena->enqueue([] { drain(); });
}

void push_ready(Engine& e, Cq* cq) noexcept {
  uint64_t pos;
  if (e.ready.reserve(pos)) {
    e.ready.at(pos) = cq;
    e.ready.publish(pos);
    return;
  }
  e.ring_full_drops.fetch_add(1, std::memory_order_relaxed);
  Cq* head = e.overflow.load(std::memory_order_relaxed);
  do {
    cq->events.next_ready = head;
  } while (!e.overflow.compare_exchange_weak(head, cq, std::memory_order_seq_cst,
                                             std::memory_order_relaxed));
}

// Runs the completion handler of one popped CQ (deliver == false: forget the events).
// Context: handler thread, or a fence helping a stopped pool.
void handle_cq(Engine& e, Cq* cq, bool deliver) noexcept {
  CqEventState& st = cq->events;
  st.in_handler.fetch_add(1, std::memory_order_seq_cst);
  const uint32_t n = st.pending.exchange(0, std::memory_order_acq_rel);
  if (deliver && n != 0 && st.dying.load(std::memory_order_seq_cst) == 0 && cq->comp_handler) {
    {
      detail::ConsumerCallbackScope scope("completion handler");
      cq->comp_handler(cq, cq->cq_context);
    }
    st.delivered.fetch_add(1, std::memory_order_relaxed);
    e.cq_handlers_run.fetch_add(1, std::memory_order_relaxed);
  }
  // Let go; events raised meanwhile saw scheduled == 1 and did not queue the CQ, so look
  // again (Dekker with cq_comp_event: pending++ then exchange(scheduled)).
  st.scheduled.store(0, std::memory_order_seq_cst);
  if (deliver && st.pending.load(std::memory_order_seq_cst) != 0 &&
      st.dying.load(std::memory_order_seq_cst) == 0 &&
      st.scheduled.exchange(1, std::memory_order_seq_cst) == 0) {
    push_ready(e, cq);
    kick(e);
  }
  // Last touch of the CQ: quiesce_cq may let the driver free it after this.
  st.in_handler.fetch_sub(1, std::memory_order_seq_cst);
}

void report_async_drops(Engine& e) noexcept {
  if (!e.async_drop_unreported.load(std::memory_order_relaxed)) return;
  if (!e.async_drop_unreported.exchange(false, std::memory_order_acq_rel)) return;
  if (e.async_drop_reported.exchange(true, std::memory_order_relaxed)) return;
  std::fprintf(stderr,
               "dverbs: async event ring full (%u entries), events dropped: event handlers are "
               "too slow (count in event_stats().ring_full_drops)\n",
               kAsyncEventRingSize);
}

bool run_one_event(Engine& e, bool deliver) noexcept {
  uint64_t pos;
  if (!e.events.claim(pos)) return false;
  EventSlot& slot = e.events.at(pos);
  if (deliver && slot.live && detail::deliver_async_event(slot.event))
    e.async_events_delivered.fetch_add(1, std::memory_order_relaxed);
  if (deliver) report_async_drops(e);
  e.events.release(pos);  // after delivery: flush_async_events waits for this
  return true;
}

bool run_one_cq(Engine& e, bool deliver) noexcept {
  uint64_t pos;
  if (!e.ready.claim(pos)) return false;
  Cq* cq = e.ready.at(pos);
  e.ready.release(pos);
  handle_cq(e, cq, deliver);
  return true;
}

bool run_overflow(Engine& e, bool deliver) noexcept {
  if (!e.overflow.load(std::memory_order_relaxed)) return false;
  Cq* cq = e.overflow.exchange(nullptr, std::memory_order_seq_cst);
  if (!cq) return false;
  while (cq) {
    Cq* next = cq->events.next_ready;  // handle_cq may queue `cq` again
    handle_cq(e, cq, deliver);
    cq = next;
  }
  return true;
}

// A drain task: runs until the rings are empty. Context: TBB worker of the pool arena.
void drain() noexcept {
  Engine& e = engine();
  t_draining = true;
  for (;;) {
    bool did = false;
    for (int i = 0; i < kBatch && run_one_event(e, true); ++i) did = true;
    for (int i = 0; i < kBatch && run_one_cq(e, true); ++i) did = true;
    if (run_overflow(e, true)) did = true;
    if (did && e.state.load(std::memory_order_relaxed) == kRunning) continue;
    // Going idle (Dekker with producers: they publish, then read `active`).
    e.active.fetch_sub(1, std::memory_order_seq_cst);
    if (e.state.load(std::memory_order_seq_cst) != kRunning || !has_ready_work(e)) break;
    int a = e.active.load(std::memory_order_seq_cst);
    bool reclaimed = false;
    while (a < e.size.load(std::memory_order_seq_cst)) {
      if (e.active.compare_exchange_weak(a, a + 1, std::memory_order_seq_cst)) {
        reclaimed = true;
        break;
      }
    }
    if (!reclaimed) break;  // `size` others are active and will re-check before leaving
  }
  t_draining = false;
}

// With the pool off nobody drains: a fence forgets the queued work itself.
void discard_queued(Engine& e) noexcept {
  while (run_one_event(e, false)) {
  }
  while (run_one_cq(e, false)) {
  }
  run_overflow(e, false);
}

// Polls `done` with backoff. Context: process context, may sleep.
template <class Pred>
void wait_until(Engine& e, Pred done) {
  for (unsigned i = 0; !done(); ++i) {
    if (e.state.load(std::memory_order_acquire) == kOff) {
      discard_queued(e);
    } else if (i < 64) {
      cpu_relax();
    } else if (i < 256) {
      std::this_thread::yield();
    } else {
      sleep_for_us(50);
    }
  }
}

int threads_from_env() noexcept {
  const char* s = std::getenv("DVERBS_HANDLER_THREADS");
  if (!s || !*s) return detail::kDefaultHandlerThreads;
  char* end = nullptr;
  const long n = std::strtol(s, &end, 10);
  if (*end != '\0') {
    std::fprintf(stderr, "dverbs: DVERBS_HANDLER_THREADS='%s' is not a number, using %d\n", s,
                 detail::kDefaultHandlerThreads);
    return detail::kDefaultHandlerThreads;
  }
  return static_cast<int>(std::clamp<long>(n, 1, detail::kMaxHandlerThreads));
}

// Waits for the running drain tasks, then drops the arena. Unchecked: exit() may come from
// any thread, even one inside a non-sleeping scope (rte_exit() on an lcore); the checked
// entry point, stop_handler_pool(), calls might_sleep itself.
void stop_pool(Engine& e) {
  std::lock_guard lk(e.control.native());
  if (e.state.load(std::memory_order_relaxed) != kRunning) return;
  e.state.store(kStopping, std::memory_order_seq_cst);
  // exit() from inside a consumer callback: the running drainer is this thread.
  if (t_draining) return;
  while (e.active.load(std::memory_order_seq_cst) != 0)
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  e.arena->terminate();
  e.arena.reset();
  e.parallelism.reset();
  e.size.store(0, std::memory_order_seq_cst);
  e.state.store(kOff, std::memory_order_seq_cst);
}

struct ExitGuard {
  ~ExitGuard() { stop_pool(engine()); }
};

}  // namespace

namespace detail {

void start_handler_pool() {
  Engine& e = engine();
  if (e.state.load(std::memory_order_acquire) == kRunning) return;
  std::lock_guard lk(e.control);
  if (e.state.load(std::memory_order_relaxed) != kOff) return;
  const int n = threads_from_env();
  // TBB caps its workers at hardware threads - 1; the pool needs its N threads even on a
  // 2-core box. Raise the cap only (the minimum over all global_controls wins).
  const int parallelism = std::max(static_cast<int>(tbb::info::default_concurrency()), n + 1);
  e.parallelism.emplace(tbb::global_control::max_allowed_parallelism,
                        static_cast<size_t>(parallelism));
  // No slot reserved for external threads: all N run drain tasks. High priority so that an
  // application's own TBB work does not starve the handlers.
  e.arena.emplace(n, 0, tbb::task_arena::priority::high);
  e.arena->initialize();
  e.size.store(n, std::memory_order_seq_cst);
  e.state.store(kRunning, std::memory_order_seq_cst);
  static ExitGuard guard;  // registered with atexit on the first start
  kick(e);                 // work queued while the pool was off
}

void stop_handler_pool() {
  might_sleep("stop_handler_pool");
  stop_pool(engine());
}

int handler_pool_size() noexcept {
  return engine().size.load(std::memory_order_relaxed);
}

bool on_handler_thread() noexcept {
  return t_draining;
}

void flush_async_events() {
  might_sleep("flush_async_events");
  Engine& e = engine();
  const uint64_t end = e.events.enqueue_position();
  const uint64_t begin = end > kAsyncEventRingSize ? end - kAsyncEventRingSize : 0;
  for (uint64_t p = begin; p < end; ++p) wait_until(e, [&] { return e.events.done(p); });
}

void quiesce_cq(Cq* cq) {
  might_sleep("quiesce_cq");
  Engine& e = engine();
  CqEventState& st = cq->events;
  uint32_t expected = 0;
  if (!st.dying.compare_exchange_strong(expected, 1, std::memory_order_seq_cst)) {
    wait_until(e, [&] { return st.dying.load(std::memory_order_acquire) == 2; });
    return;
  }
  // Owning `scheduled` is possible only when the CQ is in no queue and no handler runs it;
  // from then on neither producers nor handler threads can queue it again.
  wait_until(e, [&] {
    uint32_t idle = 0;
    return st.scheduled.compare_exchange_strong(idle, 1, std::memory_order_seq_cst);
  });
  wait_until(e, [&] { return st.in_handler.load(std::memory_order_seq_cst) == 0; });
  st.dying.store(2, std::memory_order_seq_cst);
}

void unquiesce_cq(Cq* cq) {
  Engine& e = engine();
  CqEventState& st = cq->events;
  st.dying.store(0, std::memory_order_seq_cst);
  st.scheduled.store(0, std::memory_order_seq_cst);
  if (st.pending.load(std::memory_order_seq_cst) != 0 &&
      st.scheduled.exchange(1, std::memory_order_seq_cst) == 0) {
    push_ready(e, cq);
    kick(e);
  }
}

void enter_consumer_callback() noexcept {
  Engine& e = engine();
  e.busy.fetch_add(1, std::memory_order_seq_cst);
  // Work queued behind this callback gets another pool thread (Dekker with kick()).
  if (backlog(e) != 0) kick(e);
}

void leave_consumer_callback() noexcept {
  engine().busy.fetch_sub(1, std::memory_order_seq_cst);
}

}  // namespace detail

void dispatch_event(const Event& event) noexcept {
  Device* dev = event.device;
  if (!dev) return;
  Engine& e = engine();
  e.async_events_raised.fetch_add(1, std::memory_order_relaxed);
  uint64_t pos;
  if (!e.events.reserve(pos)) {
    e.ring_full_drops.fetch_add(1, std::memory_order_relaxed);
    e.async_drop_unreported.store(true, std::memory_order_release);
    return;
  }
  EventSlot& slot = e.events.at(pos);
  slot.event = event;
  // Read the marks after reserving (see "Fences" above): a destroyer that marked before
  // reading the enqueue position either waits for this slot or is seen here.
  slot.live = detail::load_reg(dev) != nullptr && !detail::event_object_dying(event);
  e.events.publish(pos);
  kick(e);
}

void cq_comp_event(Cq* cq) noexcept {
  if (!cq) return;
  Engine& e = engine();
  e.cq_events_raised.fetch_add(1, std::memory_order_relaxed);
  CqEventState& st = cq->events;
  if (st.dying.load(std::memory_order_relaxed) != 0) return;  // nobody will handle it
  st.pending.fetch_add(1, std::memory_order_seq_cst);
  if (st.scheduled.exchange(1, std::memory_order_seq_cst) != 0) return;  // coalesced
  push_ready(e, cq);
  kick(e);
}

EventStats event_stats() noexcept {
  Engine& e = engine();
  return EventStats{
      e.cq_events_raised.load(std::memory_order_relaxed),
      e.cq_handlers_run.load(std::memory_order_relaxed),
      e.async_events_raised.load(std::memory_order_relaxed),
      e.async_events_delivered.load(std::memory_order_relaxed),
      e.ring_full_drops.load(std::memory_order_relaxed),
  };
}

}  // namespace dverbs::mid
