// Tests of lib/midlayer/might_sleep.{h,cc}: blocking primitives entered inside a
// non-sleeping scope are reported (and abort by default); consumer callbacks run inside
// such a scope.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
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

// P10: the client event callback and the QP, CQ and SRQ event handlers run inside a
// non-sleeping scope too (the same ConsumerCallbackScope as the completion handler): each
// records whether it is in one, and a sleeping call from it is reported under its scope.
struct CallbackSeen {
  std::atomic<int> calls{0};
  std::atomic<int> in_scope{0};
  void note() {
    calls++;
    if (in_non_sleeping_scope()) in_scope++;
    sleep_for_us(1);  // a sleeping call: reported, naming the callback's scope
  }
};
CallbackSeen g_client_seen, g_qp_seen, g_cq_seen, g_srq_seen;

TEST_F(MightSleep, ClientEventCallbackAndObjectEventHandlersRunInNonSleepingScopes) {
  for (CallbackSeen* s : {&g_client_seen, &g_qp_seen, &g_cq_seen, &g_srq_seen}) {
    s->calls = 0;
    s->in_scope = 0;
  }
  auto d = fake::make_device("ms_ev");
  ASSERT_EQ(register_device(d.get()), 0);
  Client c;
  c.name = "ms_client";
  c.event = [](const Event&, Client*, void*) { g_client_seen.note(); };
  ASSERT_EQ(register_client(&c), 0);
  EXPECT_TRUE(take_reports().empty());

  Pd* pd;
  ASSERT_EQ(alloc_pd(d.get(), &pd), 0);
  Cq* cq;
  ASSERT_EQ(create_cq(
                d.get(), 4, nullptr, [](const Event&, void*) { g_cq_seen.note(); }, nullptr, &cq),
            0);
  Srq* srq;
  SrqInitAttr sattr;
  ASSERT_EQ(create_srq(pd, &sattr, [](const Event&, void*) { g_srq_seen.note(); }, nullptr, &srq),
            0);
  QpInitAttr init;
  init.send_cq = init.recv_cq = cq;
  init.event_handler = [](const Event&, void*) { g_qp_seen.note(); };
  Qp* qp;
  ASSERT_EQ(create_qp(pd, &init, &qp), 0);
  EXPECT_TRUE(take_reports().empty());

  const Reports object_then_client = {{"event handler", "sleep_for_us"},
                                      {"client event callback", "sleep_for_us"}};
  Event ev;
  ev.device = d.get();
  // A device event: only the client callback.
  ev.type = EventType::port_active;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(take_reports(), (Reports{{"client event callback", "sleep_for_us"}}));
  EXPECT_EQ(g_client_seen.calls.load(), 1);
  EXPECT_EQ(g_client_seen.in_scope.load(), 1);
  // An event of each object: its own handler, then the client callback.
  ev.type = EventType::comm_est;
  ev.element.qp = qp;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(take_reports(), object_then_client);
  EXPECT_EQ(g_qp_seen.calls.load(), 1);
  EXPECT_EQ(g_qp_seen.in_scope.load(), 1);
  ev.type = EventType::cq_err;
  ev.element.cq = cq;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(take_reports(), object_then_client);
  EXPECT_EQ(g_cq_seen.calls.load(), 1);
  EXPECT_EQ(g_cq_seen.in_scope.load(), 1);
  ev.type = EventType::srq_limit_reached;
  ev.element.srq = srq;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(take_reports(), object_then_client);
  EXPECT_EQ(g_srq_seen.calls.load(), 1);
  EXPECT_EQ(g_srq_seen.in_scope.load(), 1);
  EXPECT_EQ(g_client_seen.calls.load(), 4);
  EXPECT_EQ(g_client_seen.in_scope.load(), 4);

  EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(destroy_srq(srq), 0);
  EXPECT_EQ(destroy_cq(cq), 0);
  EXPECT_EQ(dealloc_pd(pd), 0);
  unregister_client(&c);
  unregister_device(d.get());
  EXPECT_TRUE(take_reports().empty());
}

// P12: device and client registration and hot-plug are process-context calls: each checks
// on entry, so the first report names the call itself (what follows are the sleeping
// primitives it then uses, which the test's handler lets run).
std::unique_ptr<fake::FakeDevice> g_port_dev;
int port_add(const char* devargs, const char*, char* name, size_t name_len) {
  if (std::strcmp(devargs, "ms_fake_port") != 0 || g_port_dev) return ENODEV;
  g_port_dev = fake::make_device("ms_port0");
  if (int rc = register_device(g_port_dev.get())) {
    g_port_dev.reset();
    return rc;
  }
  std::snprintf(name, name_len, "%s", g_port_dev->name);
  return 0;
}
int port_remove(const char* name) {
  if (!g_port_dev || std::strcmp(name, g_port_dev->name) != 0) return ENOENT;
  unregister_device(g_port_dev.get());
  g_port_dev.reset();
  return 0;
}
const Driver kPortDriver{"ms_fake", nullptr, nullptr, port_add, port_remove};
DVERBS_REGISTER_DRIVER(kPortDriver)

// The first report of the last call; empty if none.
std::pair<std::string, std::string> first_report() {
  Reports r = take_reports();
  return r.empty() ? std::pair<std::string, std::string>{} : r.front();
}

TEST_F(MightSleep, RegistrationAndHotPlugCallsAreCheckedAsProcessContext) {
  using P = std::pair<std::string, std::string>;
  auto d = fake::make_device("ms_reg");
  {
    NonSleepingScope scope("lcore");
    EXPECT_EQ(register_device(d.get()), 0);
  }
  EXPECT_EQ(first_report(), (P{"lcore", "register_device"}));
  EXPECT_EQ(find_device("ms_reg"), d.get());  // the handler let the call go on

  Client c;
  c.name = "ms_reg_client";
  {
    NonSleepingScope scope("completion handler");
    EXPECT_EQ(register_client(&c), 0);
  }
  EXPECT_EQ(first_report(), (P{"completion handler", "register_client"}));
  {
    NonSleepingScope scope("completion handler");
    unregister_client(&c);
  }
  EXPECT_EQ(first_report(), (P{"completion handler", "unregister_client"}));

  {
    NonSleepingScope scope("lcore");
    unregister_device(d.get());
  }
  EXPECT_EQ(first_report(), (P{"lcore", "unregister_device"}));
  EXPECT_EQ(find_device("ms_reg"), nullptr);

  // Hot-plug through a driver's add_port/remove_port ops.
  char name[32] = {};
  {
    NonSleepingScope scope("lcore");
    EXPECT_EQ(add_port("ms_fake_port", nullptr, name, sizeof name), 0);
  }
  EXPECT_EQ(first_report(), (P{"lcore", "add_port"}));
  EXPECT_STREQ(name, "ms_port0");
  EXPECT_NE(find_device("ms_port0"), nullptr);
  {
    NonSleepingScope scope("lcore");
    EXPECT_EQ(remove_port(name), 0);
  }
  EXPECT_EQ(first_report(), (P{"lcore", "remove_port"}));
  EXPECT_EQ(find_device("ms_port0"), nullptr);

  // The same calls outside a scope are silent.
  ASSERT_EQ(register_device(d.get()), 0);
  ASSERT_EQ(register_client(&c), 0);
  unregister_client(&c);
  unregister_device(d.get());
  ASSERT_EQ(add_port("ms_fake_port", nullptr, name, sizeof name), 0);
  EXPECT_EQ(remove_port(name), 0);
  EXPECT_TRUE(take_reports().empty());
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
