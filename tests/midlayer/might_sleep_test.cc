// Tests of lib/midlayer/might_sleep.{h,cc}: blocking primitives entered inside a
// non-sleeping scope are reported (and abort by default); consumer callbacks run inside
// such a scope.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "fake_driver.h"
#include "midlayer/internal.h"

namespace dverbs::mid {
namespace {

#if DVERBS_MIGHT_SLEEP_CHECK

std::mutex g_mu;
std::vector<std::pair<std::string, std::string>> g_reports;

void record(const char* scope, const char* primitive) {
  std::lock_guard lk(g_mu);
  g_reports.emplace_back(scope ? scope : "", primitive ? primitive : "");
}
std::vector<std::pair<std::string, std::string>> take_reports() {
  std::lock_guard lk(g_mu);
  return std::exchange(g_reports, {});
}
using Reports = std::vector<std::pair<std::string, std::string>>;

class MightSleep : public testing::Test {
 protected:
  void SetUp() override {
    take_reports();
    set_sleep_violation_handler(record);
  }
  void TearDown() override { set_sleep_violation_handler(nullptr); }
};

TEST_F(MightSleep, MutexInNonSleepingScopeIsReported) {
  Mutex m;
  {
    NonSleepingScope scope("post_send");
    EXPECT_TRUE(in_non_sleeping_scope());
    m.lock();
    m.unlock();
  }
  EXPECT_EQ(take_reports(), (Reports{{"post_send", "Mutex::lock"}}));
}

TEST_F(MightSleep, SilentOutsideScopes) {
  EXPECT_FALSE(in_non_sleeping_scope());
  Mutex m;
  m.lock();
  m.unlock();
  sleep_for_us(1);
  std::mutex sm;
  std::condition_variable cv;
  std::unique_lock lk(sm);
  wait(cv, lk, [] { return true; });
  { NonSleepingScope scope("poll_cq"); }
  m.lock();  // after the scope ended
  m.unlock();
  EXPECT_TRUE(take_reports().empty());
}

TEST_F(MightSleep, NestedScopesReportTheOutermost) {
  {
    NonSleepingScope outer("poll_cq");
    {
      NonSleepingScope inner("inner");
      sleep_for_us(1);
    }
    EXPECT_TRUE(in_non_sleeping_scope());
  }
  EXPECT_FALSE(in_non_sleeping_scope());
  EXPECT_EQ(take_reports(), (Reports{{"poll_cq", "sleep_for_us"}}));
}

TEST_F(MightSleep, ConditionWaitsAreChecked) {
  std::mutex sm;
  std::condition_variable cv;
  Mutex m;
  std::condition_variable_any cva;
  {
    NonSleepingScope scope("req_notify_cq");
    std::unique_lock lk(sm);
    wait(cv, lk, [] { return true; });
  }
  {
    std::unique_lock<Mutex> lk(m);
    NonSleepingScope scope("create_ah");
    wait(cva, lk, [] { return true; });
  }
  EXPECT_EQ(take_reports(),
            (Reports{{"req_notify_cq", "condition wait"}, {"create_ah", "condition wait"}}));
}

TEST_F(MightSleep, ProcessContextCallsAreCheckedAndAnyContextCallsAreNot) {
  auto d = fake::make_device("ms_dev");
  ASSERT_EQ(register_device(d.get()), 0);
  Pd* pd;
  ASSERT_EQ(alloc_pd(d.get(), &pd), 0);
  {
    NonSleepingScope scope("lcore");
    Ah* ah;
    AhAttr attr{};
    ASSERT_EQ(create_ah(pd, &attr, &ah), 0);  // any context
    EXPECT_EQ(destroy_ah(ah), 0);
    DeviceAttr dattr;
    EXPECT_EQ(query_device(d.get(), &dattr), 0);  // process context: reported
  }
  EXPECT_EQ(take_reports(), (Reports{{"lcore", "query_device"}}));
  EXPECT_EQ(dealloc_pd(pd), 0);
  unregister_device(d.get());
}

// Consumer callbacks run in a non-sleeping scope: a handler that takes a sleeping lock is
// caught on the handler thread.
TEST_F(MightSleep, CompletionAndEventHandlersRunInNonSleepingScopes) {
  static Mutex consumer_lock;
  auto d = fake::make_device("ms_cb");
  ASSERT_EQ(register_device(d.get()), 0);
  Cq* cq;
  ASSERT_EQ(create_cq(
                d.get(), 4,
                [](Cq*, void*) {
                  consumer_lock.lock();
                  consumer_lock.unlock();
                },
                nullptr, nullptr, &cq),
            0);
  cq_comp_event(cq);
  ASSERT_TRUE(fake::cq_idle(cq));
  EXPECT_EQ(take_reports(), (Reports{{"completion handler", "Mutex::lock"}}));

  DeviceEventHandler h = [](const Event&, void*) { sleep_for_us(1); };
  ASSERT_EQ(register_event_handler(d.get(), h, nullptr), 0);
  Event ev;
  ev.device = d.get();
  ev.type = EventType::port_active;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(take_reports(), (Reports{{"event handler", "sleep_for_us"}}));
  unregister_event_handler(d.get(), h, nullptr);
  EXPECT_EQ(destroy_cq(cq), 0);
  unregister_device(d.get());
}

TEST(MightSleepDeathTest, DefaultHandlerAbortsNamingTheScope) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  set_sleep_violation_handler(nullptr);
  EXPECT_DEATH(
      {
        NonSleepingScope scope("post_send");
        Mutex m;
        m.lock();
      },
      "sleeping primitive 'Mutex::lock' entered in non-sleeping scope 'post_send'");
}

#else  // !DVERBS_MIGHT_SLEEP_CHECK

TEST(MightSleep, CompiledOutWithoutTheCheck) {
  NonSleepingScope scope("post_send");
  EXPECT_FALSE(in_non_sleeping_scope());
  Mutex m;
  m.lock();
  m.unlock();
}

#endif

}  // namespace
}  // namespace dverbs::mid
