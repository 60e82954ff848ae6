// A transport lcore: a std::thread registered with DPDK that calls one poll function in a
// loop (ARCHITECTURE.md, "Threads and ownership"), and the choice DVERBS_LCORES=auto makes.
//
// Idle back-off (IdlePolicy): the loop spins while work is recent, for a window that follows
// the gaps between recent rounds of work (traffic every 5 µs keeps it spinning; traffic
// every 10 ms does not, since spinning would not catch it); then it yields for a while;
// then it sleeps with nanosleep(), 1 µs doubling to 50 µs; the inline-progress helper goes
// on, after 10 ms without work to 250 µs, after a second to 10 ms, so that a process idle
// under inline progress costs under 1 % of a CPU (a dedicated lcore, which owns its CPU,
// keeps 50 µs and its latency). The first round
// that does work returns it to spinning. Idle back-off is the only place where the loop
// makes syscalls; the poll function runs inside a NonSleepingScope. Timer slack is 1 ns for
// the thread, so a 50 µs sleep is 50 µs.
//
// Thread safety: start()/stop() from one controlling thread (process context); counters
// may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

namespace dverbs::pmd::net {

// What a polling loop does after a round without work, from the times of its recent
// rounds with work. Pure logic on a cycle counter (no clock, no syscall), so it is tested
// with made-up times. Context: the one thread whose loop it paces.
class IdlePolicy {
 public:
  enum class Action { spin, yield, sleep };
  struct Step {
    Action action;
    uint64_t sleep_ns;  // Action::sleep only
  };
  // The spin window: kHotGaps times the recent gap between rounds with work, when that is
  // at most kHotMaxNs (the next work is then likely caught spinning); kHotMinNs otherwise.
  static constexpr uint64_t kHotGaps = 4;
  static constexpr uint64_t kHotMinNs = 50'000;
  static constexpr uint64_t kHotMaxNs = 2'000'000;
  static constexpr uint64_t kYieldNs = 50'000;  // then sched_yield() this long
  // Then nanosleep(), 1 µs doubling up to a cap that grows with the time since the last
  // work: kMaxSleepNs for the first kIdleNs, kIdleSleepNs until kDeepIdleNs, then
  // kDeepSleepNs (Depth::deep). On the 2-CPU KVM guest of our measurements a bare
  // nanosleep() wake-up costs 20–60 µs of CPU, more the longer the sleep (dverbs-perf idle
  // measures it): 4 ms sleeps alone cost ~1 % of a CPU there, 10 ms ones ~0.5 %.
  static constexpr uint64_t kMaxSleepNs = 50'000;
  static constexpr uint64_t kIdleNs = 10'000'000;
  static constexpr uint64_t kIdleSleepNs = 250'000;
  static constexpr uint64_t kDeepIdleNs = 1'000'000'000;
  static constexpr uint64_t kDeepSleepNs = 10'000'000;

  // Whether the sleeps grow past kMaxSleepNs. A dedicated transport lcore owns its CPU and
  // keeps its latency: it never sleeps longer than kMaxSleepNs (responsive). The inline
  // helper serves what the application does not drive itself and gives the CPU back (deep).
  enum class Depth { responsive, deep };

  // hz: cycles per second of the counter `now` is read from (rte_get_tsc_hz()).
  explicit IdlePolicy(uint64_t hz, Depth depth = Depth::deep) noexcept;
  // A round did work at `now`.
  void work(uint64_t now) noexcept;
  // A round found the port in use by someone else at `now` (the inline helper, while the
  // application polls): no spinning, but the sleeps stay short, as after work.
  void activity(uint64_t now) noexcept { last_activity_ = now; }
  // A round did no work at `now`: what to do before the next one.
  Step idle(uint64_t now) noexcept;
  // The current spin window in cycles (for tests and statistics).
  uint64_t hot_cycles() const noexcept;

 private:
  uint64_t cycles(uint64_t ns) const noexcept { return ns * hz_ / 1'000'000'000; }

  uint64_t hz_;
  Depth depth_;
  uint64_t last_work_ = 0;  // 0: none yet (the loop starts as if work had just been done)
  uint64_t last_activity_ = 0;
  uint64_t gap_ = 0;        // moving average of the gap between rounds with work, cycles
  uint64_t sleep_ns_ = 1000;
};

// DVERBS_LCORES=auto: one dedicated transport lcore when the process can give it a CPU of
// its own, inline progress otherwise. A dedicated lcore needs its CPU and the application's
// polling thread another: it is chosen when the affinity mask holds at least kAutoMinCpus
// CPUs and one of the machine's mask/2 lcore slots is free. Slots are lock files
// (/dev/shm/dverbs-lcore.N, flock'ed for the process's lifetime, released by the kernel
// when it exits), so dverbs processes on one machine count each other's lcores.
struct LcoreChoice {
  int lcores = 0;   // 0 (inline) or 1
  int slot_fd = -1;  // the held slot's lock file; the caller closes it when done
  std::string why;   // one line for the log at info
};
constexpr int kAutoMinCpus = 4;
// Context: process context (opens files). Never fails: without /dev/shm the slots are not
// counted.
LcoreChoice choose_lcores_auto();

class LcoreThread {
 public:
  // Returns how much work it did (frames, completions…); 0 means idle, a negative value
  // that others are using the port (IdlePolicy::activity).
  using PollFn = int (*)(void* arg) noexcept;

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
  int start(const std::string& name, PollFn fn, void* arg,
            IdlePolicy::Depth depth = IdlePolicy::Depth::responsive);
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
  void run(std::string name, PollFn fn, void* arg, IdlePolicy::Depth depth);

  std::thread thread_;
  std::atomic<bool> stop_{false}, running_{false}, registered_{false}, started_{false};
  std::atomic<uint64_t> iterations_{0}, idle_sleeps_{0}, idle_yields_{0};
};

}  // namespace dverbs::pmd::net
