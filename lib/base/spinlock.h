// A test-and-test-and-set spinlock, the one every layer uses for short critical sections
// on the fast path (a few stores, never a system call or a sleeping lock inside).
//
// Thread safety: any thread. lock() spins with the CPU's pause hint and never sleeps, so
// it may be taken where core_locking.rst forbids sleeping (post_send, poll_cq, lcores,
// completion handlers). Not recursive, not fair.
#pragma once

#include <atomic>

namespace dverbs::base {

// Tells the CPU this is a spin-wait loop (x86 PAUSE, Arm YIELD).
// Context: any, never sleeps.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class SpinLock {
 public:
  // Context: any thread, never sleeps.
  void lock() noexcept {
    for (;;) {
      if (!f_.exchange(true, std::memory_order_acquire)) return;
      while (f_.load(std::memory_order_relaxed)) cpu_relax();  // read-only while held
    }
  }
  // Context: any thread, never sleeps. True when the lock was taken.
  bool try_lock() noexcept {
    return !f_.load(std::memory_order_relaxed) && !f_.exchange(true, std::memory_order_acquire);
  }
  // Context: the thread holding the lock.
  void unlock() noexcept { f_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> f_{false};
};

}  // namespace dverbs::base
