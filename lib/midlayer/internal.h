// Midlayer-private interfaces shared by device.cc, verbs_calls.cc and cq_events.cc.
// Neither drivers nor consumers include this header; tests may (as a test peer).
//
// Invariants:
// - Device::reg is written only by register_device/unregister_device and is read with
//   atomic_ref (seq_cst) by the event path: non-null while the device is registered and
//   its async events are delivered.
// - An object's `dying` flag (Qp::dying, Srq::dying, CqEventState::dying) is set before
//   the midlayer asks the driver to destroy it; async events queued for a dying object are
//   forgotten, never delivered.
#pragma once

#include <atomic>
#include <cstdint>

#include "midlayer/core.h"

namespace dverbs::mid::detail {

// Capacities of the lock-free rings (powers of two). A full completion-event ring spills
// into an unbounded intrusive list, so completion events are never lost; a full async
// ring drops the event (counted in EventStats::ring_full_drops).
constexpr uint32_t kAsyncEventRingSize = 4096;
constexpr uint32_t kCqReadyRingSize = 4096;
constexpr int kDefaultHandlerThreads = 2;
constexpr int kMaxHandlerThreads = 64;

// ---- cq_events.cc ----

// Starts the handler pool if it is not running (DVERBS_HANDLER_THREADS threads).
// Context: process context, may sleep.
void start_handler_pool();
// Stops the pool after the running drain tasks return; queued work stays queued until the
// pool starts again. Context: process context, may sleep. Called at process exit.
void stop_handler_pool();
// Threads in the pool (0 before the first start). Context: any.
int handler_pool_size() noexcept;
// True on a pool thread while it drains events. Context: any.
bool on_handler_thread() noexcept;

// Context: process context, may sleep. Fence: every async event dispatched before the
// call has been delivered or forgotten when it returns.
void flush_async_events();

// Marks the CQ dying and takes its scheduling bit for good. Context: process context, may
// sleep. Fence: when it returns, the CQ's completion handler does not run and will not
// run, and no handler thread holds the CQ. Idempotent.
void quiesce_cq(Cq* cq);
// Undoes quiesce_cq (the driver refused to destroy the CQ). Context: process context.
void unquiesce_cq(Cq* cq);

// Brackets one consumer callback on a handler thread: marks the non-sleeping scope and
// tells the pool that this thread is busy so that another thread is woken for queued
// work (handlers of different CQs run in parallel).
void enter_consumer_callback() noexcept;
void leave_consumer_callback() noexcept;

class ConsumerCallbackScope {
 public:
  explicit ConsumerCallbackScope(const char* what) noexcept : scope_(what) {
    enter_consumer_callback();
  }
  ~ConsumerCallbackScope() { leave_consumer_callback(); }
  ConsumerCallbackScope(const ConsumerCallbackScope&) = delete;
  ConsumerCallbackScope& operator=(const ConsumerCallbackScope&) = delete;

 private:
  NonSleepingScope scope_;
};

// ---- device.cc ----

// Delivers one async event: the affected object's handler, then the device's event
// handlers, then the clients' event callbacks. Returns false when the event was forgotten
// (device unregistering, object dying). Context: handler thread only.
bool deliver_async_event(const Event& event) noexcept;

// Remembers a CQ of a registered device so that unregister_device can stop its handler
// if the consumer leaks it. Context: process context.
void track_cq(Cq* cq);
void untrack_cq(Cq* cq);

// ---- shared helpers ----

inline DeviceRegistration* load_reg(Device* dev) noexcept {
  return std::atomic_ref<DeviceRegistration*>(dev->reg).load(std::memory_order_seq_cst);
}
inline void store_reg(Device* dev, DeviceRegistration* reg) noexcept {
  std::atomic_ref<DeviceRegistration*>(dev->reg).store(reg, std::memory_order_seq_cst);
}

// True when the object the event concerns is being destroyed. Reads the object, so it
// may only run while the object is alive (on dispatch, or before the destroy fence ends).
inline bool event_object_dying(const Event& ev) noexcept {
  switch (event_element(ev.type)) {
    case EventElement::qp:
      return ev.element.qp && ev.element.qp->dying.load(std::memory_order_seq_cst) != 0;
    case EventElement::cq:
      return ev.element.cq && ev.element.cq->events.dying.load(std::memory_order_seq_cst) != 0;
    case EventElement::srq:
      return ev.element.srq && ev.element.srq->dying.load(std::memory_order_seq_cst) != 0;
    default:
      return false;
  }
}

}  // namespace dverbs::mid::detail
