// The registration write fence (fence.h).
//
// State: the ranges of the last two fences (a thread may fault during one fence and reach
// the handler only after the next was raised), whether a fence is up, and when the last
// came down. A fault in a recent fence's range is retried while a fence is up and for a
// second after; later, the page is read-only for some other reason and the fault is the
// previous handler's.
#include "pmd/remote/fence.h"

#include <sched.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <climits>

namespace dverbs::pmd::remote {

namespace {

constexpr int64_t kRetryNs = 1'000'000'000;

std::atomic<uint64_t> g_lo[2][2], g_hi[2][2];  // [fence generation & 1][range]
std::atomic<uint32_t> g_gen{0};                  // fences raised so far
std::atomic<uint32_t> g_up{0};
std::atomic<int64_t> g_down_ns{INT64_MIN / 2};
struct sigaction g_prev;  // the handler ours replaced; written before ours is installed

int64_t mono_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool recently_fenced(uint64_t a) noexcept {
  for (int g = 0; g < 2; g++)
    for (int r = 0; r < 2; r++)
      if (a >= g_lo[g][r].load(std::memory_order_acquire) &&
          a < g_hi[g][r].load(std::memory_order_acquire))
        return true;
  return false;
}

// What would have happened without the fence's handler.
void chain(int sig, siginfo_t* si, void* uc) noexcept {
  if (g_prev.sa_flags & SA_SIGINFO) {
    if (g_prev.sa_sigaction) {
      g_prev.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (g_prev.sa_handler != SIG_DFL && g_prev.sa_handler != SIG_IGN) {
    g_prev.sa_handler(sig);
    return;
  } else if (g_prev.sa_handler == SIG_IGN && si->si_code <= 0) {
    return;  // sent by kill(2) and ignored before
  }
  // The default action: a fault runs its instruction again and takes it; a signal sent
  // by a process is raised again.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  if (si->si_code <= 0) ::raise(sig);
}

void on_segv(int sig, siginfo_t* si, void* uc) {
  const int saved = errno;
  if (si->si_code == SEGV_ACCERR && recently_fenced(uint64_t(uintptr_t(si->si_addr)))) {
    while (g_up.load(std::memory_order_acquire)) ::sched_yield();
    if (mono_ns() - g_down_ns.load(std::memory_order_acquire) < kRetryNs) {
      errno = saved;
      return;  // the store runs again, on the remapped page
    }
  }
  errno = saved;
  chain(sig, si, uc);
}

}  // namespace

int fence_arm() {
  struct sigaction cur;
  if (::sigaction(SIGSEGV, nullptr, &cur) != 0) return errno;
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_segv) return 0;
  g_prev = cur;
  struct sigaction mine = {};
  mine.sa_sigaction = on_segv;
  mine.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&mine.sa_mask);
  return ::sigaction(SIGSEGV, &mine, nullptr) == 0 ? 0 : errno;
}

void fence_raise(uint64_t lo0, uint64_t hi0, uint64_t lo1, uint64_t hi1) {
  const uint32_t g = (g_gen.load(std::memory_order_relaxed) + 1) & 1;
  g_lo[g][0].store(lo0, std::memory_order_relaxed);
  g_hi[g][0].store(hi0, std::memory_order_relaxed);
  g_lo[g][1].store(lo1, std::memory_order_relaxed);
  g_hi[g][1].store(hi1, std::memory_order_relaxed);
  g_gen.fetch_add(1, std::memory_order_relaxed);
  g_up.store(1, std::memory_order_seq_cst);  // before the pages become read-only
}

void fence_lower() {
  g_down_ns.store(mono_ns(), std::memory_order_release);
  g_up.store(0, std::memory_order_release);
}

}  // namespace dverbs::pmd::remote
