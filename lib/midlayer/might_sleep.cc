#include "midlayer/might_sleep.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace dverbs::mid {

namespace detail {
thread_local SleepCheckState sleep_check_state;

namespace {
std::atomic<SleepViolationHandler> violation_handler{nullptr};
}

void might_sleep_violation(const char* scope, const char* primitive) noexcept {
  if (auto h = violation_handler.load(std::memory_order_acquire)) {
    h(scope, primitive);
    // A test handler returns; keep running so the test can observe the report.
    return;
  }
  std::fprintf(stderr, "dverbs: BUG: sleeping primitive '%s' entered in non-sleeping scope '%s'\n",
               primitive, scope ? scope : "?");
  std::abort();
}
}  // namespace detail

void set_sleep_violation_handler(SleepViolationHandler handler) noexcept {
  detail::violation_handler.store(handler, std::memory_order_release);
}

void sleep_for_us(unsigned us) {
  might_sleep("sleep_for_us");
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

}  // namespace dverbs::mid
