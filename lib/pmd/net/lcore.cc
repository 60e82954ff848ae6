#include "pmd/net/lcore.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <system_error>
#include <thread>

#include <rte_cycles.h>
#include <rte_pause.h>

#include "midlayer/might_sleep.h"
#include "pmd/net/eal.h"

namespace dverbs::pmd::net {
namespace {

// Single writer: a relaxed load+store is enough and cheaper than fetch_add.
void bump(std::atomic<uint64_t>& c) {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// Opens (creating if need be) an lcore slot's lock file. Opening an existing file first
// keeps fs.protected_regular from refusing O_CREAT on another user's file in /dev/shm.
int open_slot(int i) {
  char path[64];
  std::snprintf(path, sizeof path, "/dev/shm/dverbs-lcore.%d", i);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
  return fd;
}

}  // namespace

// ---------------------------------------------------------------- IdlePolicy
IdlePolicy::IdlePolicy(uint64_t hz, Depth depth) noexcept
    : hz_(hz ? hz : 1'000'000'000), depth_(depth) {}

uint64_t IdlePolicy::hot_cycles() const noexcept {
  const uint64_t h = gap_ * kHotGaps;
  if (gap_ == 0 || h > cycles(kHotMaxNs)) return cycles(kHotMinNs);
  return std::max(h, cycles(kHotMinNs));
}

void IdlePolicy::work(uint64_t now) noexcept {
  if (last_work_ != 0 && now > last_work_) {
    const uint64_t g = now - last_work_;
    if (g >= cycles(kDeepIdleNs)) {
      gap_ = 0;  // the first work after a long pause says nothing of the next gap
    } else if (gap_ == 0) {
      gap_ = g;
    } else {  // moving average, weight 1/8 to the newest gap
      gap_ = uint64_t(int64_t(gap_) + (int64_t(g) - int64_t(gap_)) / 8);
    }
  }
  last_work_ = now;
  sleep_ns_ = 1000;
}

IdlePolicy::Step IdlePolicy::idle(uint64_t now) noexcept {
  if (last_work_ == 0) last_work_ = now;  // start spinning, as after work
  const uint64_t since = now > last_work_ ? now - last_work_ : 0;
  const uint64_t hot = hot_cycles();
  if (since < hot) return {Action::spin, 0};
  if (since < hot + cycles(kYieldNs)) return {Action::yield, 0};
  const uint64_t act = std::max(last_work_, last_activity_);
  const uint64_t quiet = now > act ? now - act : 0;
  const uint64_t cap = depth_ == Depth::responsive   ? kMaxSleepNs
                      : quiet < cycles(kIdleNs)     ? kMaxSleepNs
                      : quiet < cycles(kDeepIdleNs) ? kIdleSleepNs
                                                    : kDeepSleepNs;
  const uint64_t ns = std::min(sleep_ns_, cap);
  sleep_ns_ = std::min(ns * 2, cap);
  return {Action::sleep, ns};
}

// ---------------------------------------------------------------- DVERBS_LCORES=auto
LcoreChoice choose_lcores_auto() {
  LcoreChoice c;
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
  if (cpus <= 0) cpus = int(std::thread::hardware_concurrency());
  char buf[192];
  if (cpus < kAutoMinCpus) {
    std::snprintf(buf, sizeof buf,
                  "DVERBS_LCORES=auto: inline progress (%d CPU%s in the affinity mask; a "
                  "dedicated lcore is chosen from %d)",
                  cpus, cpus == 1 ? "" : "s", kAutoMinCpus);
    c.why = buf;
    return c;
  }
  const int slots = cpus / 2;
  bool counted = true;
  for (int i = 0; i < slots; i++) {
    const int fd = open_slot(i);
    if (fd < 0) {
      counted = false;  // no /dev/shm: other processes' lcores cannot be counted
      break;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      c.lcores = 1;
      c.slot_fd = fd;
      std::snprintf(buf, sizeof buf,
                    "DVERBS_LCORES=auto: one dedicated transport lcore (%d CPUs in the "
                    "affinity mask; lcore slot %d of %d on this machine)",
                    cpus, i, slots);
      c.why = buf;
      return c;
    }
    close(fd);
  }
  if (!counted) {
    c.lcores = 1;
    std::snprintf(buf, sizeof buf,
                  "DVERBS_LCORES=auto: one dedicated transport lcore (%d CPUs in the affinity "
                  "mask; /dev/shm unavailable, other processes' lcores not counted)",
                  cpus);
  } else {
    std::snprintf(buf, sizeof buf,
                  "DVERBS_LCORES=auto: inline progress (all %d lcore slots of this machine "
                  "are held by other dverbs processes)",
                  slots);
  }
  c.why = buf;
  return c;
}

// ---------------------------------------------------------------- LcoreThread
LcoreThread::~LcoreThread() {
  stop();
}

int LcoreThread::start(const std::string& name, PollFn fn, void* arg, IdlePolicy::Depth depth) {
  if (thread_.joinable()) return EBUSY;
  stop_.store(false, std::memory_order_relaxed);
  started_.store(false, std::memory_order_relaxed);
  try {
    thread_ = std::thread(&LcoreThread::run, this, name, fn, arg, depth);
  } catch (const std::system_error& e) {
    return e.code().value() ? e.code().value() : EAGAIN;
  } catch (...) {
    return ENOMEM;
  }
  // Wait until the thread runs (registration done), so registered() is meaningful.
  while (!started_.load(std::memory_order_acquire)) {
    mid::might_sleep("LcoreThread::start");
    sched_yield();
  }
  return 0;
}

void LcoreThread::stop() {
  if (!thread_.joinable()) return;
  mid::might_sleep("LcoreThread::stop");
  stop_.store(true, std::memory_order_release);
  thread_.join();
}

void LcoreThread::run(std::string name, PollFn fn, void* arg, IdlePolicy::Depth depth) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  registered_.store(register_thread() == 0, std::memory_order_release);
  running_.store(true, std::memory_order_release);
  started_.store(true, std::memory_order_release);

  IdlePolicy policy(rte_get_tsc_hz(), depth);
  while (!stop_.load(std::memory_order_acquire)) {
    int work;
    {
      mid::NonSleepingScope scope("lcore poll");
      work = fn(arg);
    }
    bump(iterations_);
    const uint64_t now = rte_get_tsc_cycles();
    if (work > 0) {
      policy.work(now);
      continue;
    }
    if (work < 0) policy.activity(now);
    const IdlePolicy::Step step = policy.idle(now);
    switch (step.action) {
      case IdlePolicy::Action::spin:
        rte_pause();
        break;
      case IdlePolicy::Action::yield:
        bump(idle_yields_);
        sched_yield();
        break;
      case IdlePolicy::Action::sleep: {
        bump(idle_sleeps_);
        timespec ts{0, long(step.sleep_ns)};
        nanosleep(&ts, nullptr);
        break;
      }
    }
  }
  running_.store(false, std::memory_order_release);
  unregister_thread();
}

}  // namespace dverbs::pmd::net
