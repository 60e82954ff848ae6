// Checkable context rules: the user-space analogue of the kernel's might_sleep().
//
// A NonSleepingScope marks the dynamic extent of a method that must not sleep (post_send,
// poll_cq, a consumer callback, the lcore loop…). Every blocking primitive dverbs uses —
// dverbs::mid::Mutex, condition waits, sleeps, blocking syscall wrappers — first calls
// might_sleep(), which in a checking build (-Dmight_sleep_check=auto, the default, in every
// buildtype but release; =true in all) aborts with one line naming the scope and the
// primitive when it is entered inside such a scope. Other builds compile both to nothing.
//
// Thread safety: all state is thread-local.
#pragma once

#include <condition_variable>
#include <mutex>

namespace dverbs::mid {

namespace detail {
struct SleepCheckState {
  int depth = 0;
  const char* scope = nullptr;  // outermost non-sleeping scope
};
extern thread_local SleepCheckState sleep_check_state;
void might_sleep_violation(const char* scope, const char* primitive) noexcept;
}  // namespace detail

// Handler installed by tests of the checker itself; the default prints one line and aborts.
using SleepViolationHandler = void (*)(const char* scope, const char* primitive);
void set_sleep_violation_handler(SleepViolationHandler handler) noexcept;

#if DVERBS_MIGHT_SLEEP_CHECK
class NonSleepingScope {
 public:
  explicit NonSleepingScope(const char* name) noexcept {
    auto& s = detail::sleep_check_state;
    if (s.depth++ == 0) s.scope = name;
  }
  ~NonSleepingScope() {
    auto& s = detail::sleep_check_state;
    if (--s.depth == 0) s.scope = nullptr;
  }
  NonSleepingScope(const NonSleepingScope&) = delete;
  NonSleepingScope& operator=(const NonSleepingScope&) = delete;
};

// Context: any. Aborts (or calls the installed handler) inside a NonSleepingScope.
inline void might_sleep(const char* primitive) noexcept {
  auto& s = detail::sleep_check_state;
  if (s.depth > 0) [[unlikely]]
    detail::might_sleep_violation(s.scope, primitive);
}
inline bool in_non_sleeping_scope() noexcept { return detail::sleep_check_state.depth > 0; }
#else
class NonSleepingScope {
 public:
  explicit NonSleepingScope(const char*) noexcept {}
};
inline void might_sleep(const char*) noexcept {}
inline bool in_non_sleeping_scope() noexcept { return false; }
#endif

// A sleeping mutex that checks the context rules. Use it (never std::mutex directly) for
// every control-path lock in dverbs.
class Mutex {
 public:
  void lock() {
    might_sleep("Mutex::lock");
    m_.lock();
  }
  bool try_lock() { return m_.try_lock(); }
  void unlock() { m_.unlock(); }
  std::mutex& native() { return m_; }

 private:
  std::mutex m_;
};

// Condition wait that checks the context rules.
template <class Pred>
void wait(std::condition_variable& cv, std::unique_lock<std::mutex>& lk, Pred pred) {
  might_sleep("condition wait");
  cv.wait(lk, pred);
}
// The same on a dverbs::mid::Mutex (re-locking goes through Mutex::lock and its check).
template <class Pred>
void wait(std::condition_variable_any& cv, std::unique_lock<Mutex>& lk, Pred pred) {
  might_sleep("condition wait");
  cv.wait(lk, pred);
}

// Sleeping helpers that check the context rules.
void sleep_for_us(unsigned us);

}  // namespace dverbs::mid
