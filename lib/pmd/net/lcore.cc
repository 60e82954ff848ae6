#include "pmd/net/lcore.h"

#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include <rte_pause.h>

#include "midlayer/might_sleep.h"
#include "pmd/net/eal.h"

namespace dverbs::pmd::net {
namespace {

// Single writer: a relaxed load+store is enough and cheaper than fetch_add.
void bump(std::atomic<uint64_t>& c) {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace

LcoreThread::~LcoreThread() {
  stop();
}

int LcoreThread::start(const std::string& name, PollFn fn, void* arg) {
  if (thread_.joinable()) return EBUSY;
  stop_.store(false, std::memory_order_relaxed);
  started_.store(false, std::memory_order_relaxed);
  try {
    thread_ = std::thread(&LcoreThread::run, this, name, fn, arg);
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

void LcoreThread::run(std::string name, PollFn fn, void* arg) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  registered_.store(register_thread() == 0, std::memory_order_release);
  running_.store(true, std::memory_order_release);
  started_.store(true, std::memory_order_release);

  uint32_t idle = 0;
  long sleep_ns = 1000;
  while (!stop_.load(std::memory_order_acquire)) {
    int work;
    {
      mid::NonSleepingScope scope("lcore poll");
      work = fn(arg);
    }
    bump(iterations_);
    if (work > 0) {
      idle = 0;
      sleep_ns = 1000;
      continue;
    }
    // Idle backoff: spin, then yield, then short sleeps (the loop's only syscalls).
    if (idle < kSpinIdle) {
      ++idle;
      rte_pause();
    } else if (idle < kSpinIdle + kYieldIdle) {
      ++idle;
      bump(idle_yields_);
      sched_yield();
    } else {
      bump(idle_sleeps_);
      timespec ts{0, sleep_ns};
      nanosleep(&ts, nullptr);
      if (sleep_ns < long(kMaxSleepNs)) sleep_ns = std::min(sleep_ns * 2, long(kMaxSleepNs));
    }
  }
  running_.store(false, std::memory_order_release);
  unregister_thread();
}

}  // namespace dverbs::pmd::net
