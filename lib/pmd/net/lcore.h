// A transport lcore: a std::thread registered with DPDK that calls one poll function in a
// loop (ARCHITECTURE.md, "Threads and ownership").
//
// Idle backoff: after kSpinIdle idle rounds spinning with rte_pause(), the loop calls
// sched_yield() for kYieldIdle rounds, then sleeps with nanosleep() starting at 1 µs and
// doubling up to kMaxSleepNs (timer slack set to 1 ns for the thread, so a 50 µs sleep is
// 50 µs). The first round that does work returns it to spinning. Idle backoff is the only
// place where the loop makes syscalls; the poll function runs inside a NonSleepingScope.
//
// Thread safety: start()/stop() from one controlling thread (process context); counters
// may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace dverbs::pmd::net {

class LcoreThread {
 public:
  // Returns how much work it did (frames, completions…); 0 means idle.
  using PollFn = int (*)(void* arg) noexcept;

  static constexpr uint32_t kSpinIdle = 2048;  // idle rounds spinning with rte_pause()
  static constexpr uint32_t kYieldIdle = 64;   // then idle rounds with sched_yield()
  static constexpr uint32_t kMaxSleepNs = 50'000;

  // Context: any thread; nothing runs until start().
  LcoreThread() = default;
  // Context: process context; stops the thread if running.
  ~LcoreThread();
  LcoreThread(const LcoreThread&) = delete;
  LcoreThread& operator=(const LcoreThread&) = delete;

  // Starts the thread (named name, at most 15 characters kept) and returns once it runs and
  // tried to register with DPDK. Returns 0, EBUSY if already running, or a positive errno
  // if the thread cannot be created. Failing DPDK registration is not fatal (see registered()).
  // Context: process context, may sleep.
  int start(const std::string& name, PollFn fn, void* arg);
  // Asks the loop to finish and joins it; returns after the last poll call. No-op if stopped.
  // Context: process context, may sleep; never from the lcore itself.
  void stop();

  // Context: any thread.
  bool running() const { return running_.load(std::memory_order_acquire); }
  // Context: any thread. True if the thread got a DPDK lcore id (per-lcore mempool cache).
  bool registered() const { return registered_.load(std::memory_order_acquire); }
  // Context: any thread. Loop rounds so far (this run and earlier ones).
  uint64_t iterations() const { return iterations_.load(std::memory_order_relaxed); }
  // Context: any thread. nanosleep() calls made while idle.
  uint64_t idle_sleeps() const { return idle_sleeps_.load(std::memory_order_relaxed); }
  // Context: any thread. sched_yield() calls made while idle.
  uint64_t idle_yields() const { return idle_yields_.load(std::memory_order_relaxed); }

 private:
  void run(std::string name, PollFn fn, void* arg);

  std::thread thread_;
  std::atomic<bool> stop_{false}, running_{false}, registered_{false}, started_{false};
  std::atomic<uint64_t> iterations_{0}, idle_sleeps_{0}, idle_yields_{0};
};

}  // namespace dverbs::pmd::net
