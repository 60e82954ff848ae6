// Tests of lib/midlayer/device.cc: registry order, mandatory ops, clients calling back into
// the midlayer from add/remove, async-event delivery and the unregister fences, drivers.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fake_driver.h"
#include "midlayer/internal.h"

namespace dverbs::mid {
namespace {

using fake::eventually;
using fake::FakeDevice;
using fake::make_device;

// ---- a log of client callbacks ----

std::mutex g_log_mu;
std::vector<std::string> g_log;

void log_line(const std::string& s) {
  std::lock_guard lk(g_log_mu);
  g_log.push_back(s);
}
std::vector<std::string> take_log() {
  std::lock_guard lk(g_log_mu);
  return std::exchange(g_log, {});
}
void log_add(Device* d, Client* c) {
  log_line(std::string("add ") + d->name + " " + c->name);
}
void log_remove(Device* d, Client* c, void*) {
  log_line(std::string("remove ") + d->name + " " + c->name);
}
Client logging_client(const char* name) {
  Client c;
  c.name = name;
  c.add = log_add;
  c.remove = log_remove;
  return c;
}

using Lines = std::vector<std::string>;

// ---- registry ----

TEST(Registry, ClientAddIsFifoRemoveIsLifo) {
  take_log();
  auto d1 = make_device("reg_a");
  ASSERT_EQ(register_device(d1.get()), 0);
  Client a = logging_client("A"), b = logging_client("B"), c = logging_client("C");
  ASSERT_EQ(register_client(&a), 0);
  ASSERT_EQ(register_client(&b), 0);
  ASSERT_EQ(register_client(&c), 0);
  auto d2 = make_device("reg_b");  // registered after the clients
  ASSERT_EQ(register_device(d2.get()), 0);
  EXPECT_EQ(take_log(), (Lines{"add reg_a A", "add reg_a B", "add reg_a C", "add reg_b A",
                               "add reg_b B", "add reg_b C"}));

  unregister_device(d2.get());
  EXPECT_EQ(take_log(), (Lines{"remove reg_b C", "remove reg_b B", "remove reg_b A"}));

  unregister_client(&b);
  EXPECT_EQ(take_log(), (Lines{"remove reg_a B"}));
  EXPECT_EQ(b.internal, nullptr);

  unregister_device(d1.get());
  EXPECT_EQ(take_log(), (Lines{"remove reg_a C", "remove reg_a A"}));

  unregister_client(&a);
  unregister_client(&c);
  EXPECT_TRUE(take_log().empty());
}

TEST(Registry, ClientRegisteredTwiceOrNullIsEinval) {
  Client a = logging_client("A");
  EXPECT_EQ(register_client(nullptr), EINVAL);
  ASSERT_EQ(register_client(&a), 0);
  EXPECT_EQ(register_client(&a), EINVAL);
  unregister_client(&a);
  unregister_client(&a);  // harmless
  EXPECT_EQ(register_client(&a), 0);
  unregister_client(&a);
  take_log();
}

struct OpCase {
  const char* name;
  void (*clear)(DeviceOps&);
};
// clang-format off
#define DVERBS_OP_CASE(op) OpCase{#op, [](DeviceOps& o) { o.op = nullptr; }}
// clang-format on
const OpCase kMandatoryOps[] = {
    DVERBS_OP_CASE(query_device), DVERBS_OP_CASE(query_port),    DVERBS_OP_CASE(query_gid),
    DVERBS_OP_CASE(alloc_pd),     DVERBS_OP_CASE(dealloc_pd),    DVERBS_OP_CASE(reg_mr),
    DVERBS_OP_CASE(dereg_mr),     DVERBS_OP_CASE(create_cq),     DVERBS_OP_CASE(destroy_cq),
    DVERBS_OP_CASE(create_qp),    DVERBS_OP_CASE(modify_qp),     DVERBS_OP_CASE(query_qp),
    DVERBS_OP_CASE(destroy_qp),   DVERBS_OP_CASE(post_send),     DVERBS_OP_CASE(post_recv),
    DVERBS_OP_CASE(poll_cq),      DVERBS_OP_CASE(req_notify_cq),
};
#undef DVERBS_OP_CASE

TEST(Registry, MissingMandatoryOpIsEinvalAndNamed) {
  for (const OpCase& c : kMandatoryOps) {
    SCOPED_TRACE(c.name);
    auto d = make_device("incomplete");
    c.clear(d->table);
    testing::internal::CaptureStderr();
    EXPECT_EQ(register_device(d.get()), EINVAL);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find(std::string("'") + c.name + "'"), std::string::npos) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_EQ(find_device("incomplete"), nullptr);
    EXPECT_EQ(d->reg, nullptr);
  }
  // Optional ops may be missing.
  auto d = make_device("only_mandatory");
  d->table = fake::mandatory_ops();
  ASSERT_EQ(register_device(d.get()), 0);
  unregister_device(d.get());
}

TEST(Registry, NoDeviceOrNoNameIsEinval) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(register_device(nullptr), EINVAL);
  auto d = make_device("");
  EXPECT_EQ(register_device(d.get()), EINVAL);
  testing::internal::GetCapturedStderr();
}

TEST(Registry, DuplicateNameIsEexist) {
  auto d1 = make_device("dup");
  auto d2 = make_device("dup");
  ASSERT_EQ(register_device(d1.get()), 0);
  EXPECT_EQ(register_device(d2.get()), EEXIST);
  EXPECT_EQ(register_device(d1.get()), EEXIST);
  EXPECT_EQ(find_device("dup"), d1.get());
  unregister_device(d1.get());
  EXPECT_EQ(register_device(d2.get()), 0);  // the name is free again
  unregister_device(d2.get());
}

TEST(Registry, ListAndFindInRegistrationOrder) {
  auto a = make_device("list_a"), b = make_device("list_b"), c = make_device("list_c");
  ASSERT_EQ(register_device(b.get()), 0);
  ASSERT_EQ(register_device(a.get()), 0);
  ASSERT_EQ(register_device(c.get()), 0);
  Device* out[2] = {};
  EXPECT_EQ(list_devices(out, 2), 3);  // more exist than fit
  EXPECT_EQ(out[0], b.get());
  EXPECT_EQ(out[1], a.get());
  EXPECT_EQ(list_devices(nullptr, 0), 3);
  EXPECT_EQ(find_device("list_c"), c.get());
  EXPECT_EQ(find_device("nope"), nullptr);
  EXPECT_EQ(find_device(nullptr), nullptr);
  unregister_device(a.get());
  EXPECT_EQ(find_device("list_a"), nullptr);
  Device* all[4] = {};
  EXPECT_EQ(list_devices(all, 4), 2);
  EXPECT_EQ(all[0], b.get());
  EXPECT_EQ(all[1], c.get());
  unregister_device(b.get());
  unregister_device(c.get());
  EXPECT_EQ(list_devices(nullptr, 0), 0);
}

TEST(Registry, ClientDataIsPerDeviceAndReachesRemove) {
  static std::vector<std::pair<Device*, void*>> removed;
  removed.clear();
  Client c;
  c.name = "data";
  c.add = [](Device* d, Client* self) { set_client_data(d, self, d->name); };
  c.remove = [](Device* d, Client*, void* data) { removed.emplace_back(d, data); };
  auto d1 = make_device("data_1"), d2 = make_device("data_2");
  ASSERT_EQ(register_device(d1.get()), 0);
  ASSERT_EQ(register_client(&c), 0);
  ASSERT_EQ(register_device(d2.get()), 0);
  EXPECT_EQ(get_client_data(d1.get(), &c), d1->name);
  EXPECT_EQ(get_client_data(d2.get(), &c), d2->name);
  unregister_device(d2.get());
  EXPECT_EQ(get_client_data(d2.get(), &c), nullptr);
  unregister_client(&c);
  EXPECT_EQ(get_client_data(d1.get(), &c), nullptr);
  ASSERT_EQ(removed.size(), 2u);
  EXPECT_EQ(removed[0], std::make_pair(static_cast<Device*>(d2.get()), (void*)d2->name));
  EXPECT_EQ(removed[1], std::make_pair(static_cast<Device*>(d1.get()), (void*)d1->name));
  unregister_device(d1.get());
}

// ---- reentrancy: add/remove call back into the midlayer ----

struct Reentrant {
  Pd* pd = nullptr;
  Cq* cq = nullptr;
  int devices_seen_in_add = 0;
  bool found_self = false;
  std::atomic<int> events{0};
  Client inner;
  int inner_adds = 0;
};
Reentrant g_re;

void reentrant_event(const Event&, void*) {
  g_re.events++;
}

void reentrant_add(Device* d, Client* self) {
  g_re.devices_seen_in_add = list_devices(nullptr, 0);
  g_re.found_self = find_device(d->name) == d;
  ASSERT_EQ(alloc_pd(d, &g_re.pd), 0);
  ASSERT_EQ(create_cq(d, 16, nullptr, nullptr, nullptr, &g_re.cq), 0);
  ASSERT_EQ(register_event_handler(d, reentrant_event, &g_re), 0);
  set_client_data(d, self, &g_re);
  EXPECT_EQ(get_client_data(d, self), &g_re);
  ASSERT_EQ(register_client(&g_re.inner), 0);  // nested registration: its add runs here
  DeviceAttr attr;
  EXPECT_EQ(query_device(d, &attr), 0);
}

void reentrant_remove(Device* d, Client*, void* data) {
  EXPECT_EQ(data, &g_re);
  list_devices(nullptr, 0);
  unregister_client(&g_re.inner);
  unregister_event_handler(d, reentrant_event, &g_re);
  EXPECT_EQ(destroy_cq(g_re.cq), 0);
  EXPECT_EQ(dealloc_pd(g_re.pd), 0);
}

class Reentrancy : public testing::TestWithParam<bool> {};

TEST_P(Reentrancy, AddAndRemoveMayCallBackIntoTheMidlayer) {
  const bool via_device = GetParam();
  g_re.pd = nullptr;
  g_re.cq = nullptr;
  g_re.devices_seen_in_add = 0;
  g_re.found_self = false;
  g_re.events = 0;
  g_re.inner = Client{};
  g_re.inner_adds = 0;
  g_re.inner.name = "inner";
  g_re.inner.add = [](Device*, Client*) { g_re.inner_adds++; };
  Client c;
  c.name = "reentrant";
  c.add = reentrant_add;
  c.remove = reentrant_remove;
  auto d = make_device("reent");
  ASSERT_EQ(register_device(d.get()), 0);
  ASSERT_EQ(register_client(&c), 0);
  EXPECT_EQ(g_re.devices_seen_in_add, 1);
  EXPECT_TRUE(g_re.found_self);
  EXPECT_EQ(g_re.inner_adds, 1);

  Event ev;
  ev.device = d.get();
  ev.type = EventType::port_active;
  ev.element.port_num = 1;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(g_re.events.load(), 1);

  if (via_device) {
    unregister_device(d.get());
    unregister_client(&c);
  } else {
    unregister_client(&c);
    unregister_device(d.get());
  }
  EXPECT_EQ(d->live_pds.load(), 0);
  EXPECT_EQ(d->live_cqs.load(), 0);
}
INSTANTIATE_TEST_SUITE_P(RemoveBy, Reentrancy, testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Device" : "Client"; });

// ---- async events ----

struct Delivery {
  std::mutex mu;
  std::vector<std::string> order;
  std::atomic<int> qp{0}, cq{0}, srq{0}, device{0}, client{0};
  std::atomic<int> on_dispatcher{0};
  std::thread::id dispatcher;
  void note(const char* who, const Event& ev) {
    if (std::this_thread::get_id() == dispatcher) on_dispatcher++;
    std::lock_guard lk(mu);
    order.push_back(std::string(who) + ":" + event_type_str(ev.type));
  }
};

TEST(Events, ReachObjectHandlerThenDeviceHandlersThenClients) {
  static Delivery del;
  del.order.clear();
  del.qp = del.cq = del.srq = del.device = del.client = del.on_dispatcher = 0;
  del.dispatcher = std::this_thread::get_id();
  auto d = make_device("ev");
  ASSERT_EQ(register_device(d.get()), 0);
  Client c;
  c.name = "ev_client";
  c.event = [](const Event& ev, Client*, void*) {
    del.client++;
    del.note("client", ev);
  };
  ASSERT_EQ(register_client(&c), 0);
  ASSERT_EQ(register_event_handler(
                d.get(),
                [](const Event& ev, void* ctx) {
                  EXPECT_EQ(ctx, &del);
                  del.device++;
                  del.note("device", ev);
                },
                &del),
            0);
  Pd* pd;
  Cq* cq;
  Qp* qp;
  Srq* srq;
  ASSERT_EQ(alloc_pd(d.get(), &pd), 0);
  ASSERT_EQ(create_cq(
                d.get(), 8, nullptr,
                [](const Event& ev, void* ctx) {
                  EXPECT_EQ(ctx, &del);
                  del.cq++;
                  del.note("cq", ev);
                },
                &del, &cq),
            0);
  SrqInitAttr sattr;
  ASSERT_EQ(create_srq(
                pd, &sattr,
                [](const Event& ev, void* ctx) {
                  EXPECT_EQ(ctx, &del);
                  del.srq++;
                  del.note("srq", ev);
                },
                &del, &srq),
            0);
  QpInitAttr init;
  init.send_cq = init.recv_cq = cq;
  init.qp_context = &del;
  init.event_handler = [](const Event& ev, void* ctx) {
    EXPECT_EQ(ctx, &del);
    EXPECT_EQ(ev.element.qp->qp_context, &del);
    del.qp++;
    del.note("qp", ev);
  };
  ASSERT_EQ(create_qp(pd, &init, &qp), 0);

  Event ev;
  ev.device = d.get();
  ev.type = EventType::qp_fatal;
  ev.element.qp = qp;
  dispatch_event(ev);
  detail::flush_async_events();
  {
    std::lock_guard lk(del.mu);
    const std::string t = event_type_str(EventType::qp_fatal);
    EXPECT_EQ(del.order, (Lines{"qp:" + t, "device:" + t, "client:" + t}));
    del.order.clear();
  }
  ev.type = EventType::cq_err;
  ev.element.cq = cq;
  dispatch_event(ev);
  ev.type = EventType::srq_limit_reached;
  ev.element.srq = srq;
  dispatch_event(ev);
  ev.type = EventType::port_err;
  ev.element.port_num = 1;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(del.qp.load(), 1);
  EXPECT_EQ(del.cq.load(), 1);
  EXPECT_EQ(del.srq.load(), 1);
  EXPECT_EQ(del.device.load(), 4);
  EXPECT_EQ(del.client.load(), 4);
  EXPECT_EQ(del.on_dispatcher.load(), 0) << "a handler ran on the dispatching thread";

  EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(destroy_srq(srq), 0);
  EXPECT_EQ(destroy_cq(cq), 0);
  EXPECT_EQ(dealloc_pd(pd), 0);
  unregister_client(&c);
  unregister_device(d.get());
}

TEST(Events, RingFullDropsAreCountedAndReportedOnce) {
  static std::atomic<bool> hold{true};
  static std::atomic<uint64_t> calls{0};
  hold = true;
  calls = 0;
  auto d = make_device("ring");
  ASSERT_EQ(register_device(d.get()), 0);
  auto blocker = [](const Event&, void*) {
    while (hold.load()) std::this_thread::yield();  // every delivery blocks while held
    calls++;
  };
  ASSERT_EQ(register_event_handler(d.get(), blocker, nullptr), 0);
  detail::flush_async_events();  // all slots free: exactly the ring size is accepted

  testing::internal::CaptureStderr();
  const EventStats before = event_stats();
  constexpr uint64_t kExtra = 100;
  const uint64_t sent = detail::kAsyncEventRingSize + kExtra;
  Event ev;
  ev.device = d.get();
  ev.type = EventType::port_active;
  ev.element.port_num = 1;
  // Slots are released only after delivery and every delivery blocks, so at most the ring
  // size fits, whatever the drainers do meanwhile.
  for (uint64_t i = 0; i < sent; ++i) dispatch_event(ev);
  const EventStats full = event_stats();
  hold = false;
  detail::flush_async_events();
  const std::string err = testing::internal::GetCapturedStderr();
  const EventStats after = event_stats();

  EXPECT_EQ(full.ring_full_drops - before.ring_full_drops, kExtra);
  EXPECT_EQ(after.async_events_raised - before.async_events_raised, sent);
  EXPECT_EQ(calls.load(), detail::kAsyncEventRingSize);
  EXPECT_EQ(after.async_events_delivered - before.async_events_delivered,
            detail::kAsyncEventRingSize);
  size_t reports = 0;
  for (size_t p = err.find("ring full"); p != std::string::npos; p = err.find("ring full", p + 1))
    ++reports;
  static bool first_fill = true;  // reported once per process (--gtest_repeat)
  EXPECT_EQ(reports, first_fill ? 1u : 0u) << err;
  first_fill = false;
  unregister_event_handler(d.get(), blocker, nullptr);
  unregister_device(d.get());
}

TEST(Events, UnregisterClientWaitsForRunningEventCallback) {
  static std::atomic<int> entered{0}, inside{0}, remove_during_event{0};
  static std::atomic<bool> go{false}, finished{false};
  entered = 0;
  go = false;
  finished = false;
  auto d = make_device("fence");
  ASSERT_EQ(register_device(d.get()), 0);
  Client c;
  c.name = "slow_event";
  c.event = [](const Event&, Client*, void*) {
    entered++;
    inside++;
    while (!go.load()) std::this_thread::yield();  // callbacks must not sleep: spin
    finished = true;
    inside--;
  };
  c.remove = [](Device*, Client*, void*) {
    if (inside.load() != 0) remove_during_event++;
  };
  ASSERT_EQ(register_client(&c), 0);
  Event ev;
  ev.device = d.get();
  ev.type = EventType::port_active;
  ev.element.port_num = 1;
  dispatch_event(ev);
  ASSERT_TRUE(eventually([] { return entered.load() == 1; }));

  std::atomic<bool> returned{false};
  bool finished_at_return = false;
  std::thread t([&] {
    unregister_client(&c);
    finished_at_return = finished.load();
    returned = true;
  });
  for (int i = 0; i < 20000 && !returned.load(); ++i) std::this_thread::yield();
  EXPECT_FALSE(returned.load()) << "unregister_client returned while a callback ran";
  go = true;
  t.join();
  EXPECT_TRUE(finished_at_return);
  EXPECT_EQ(remove_during_event.load(), 0);

  for (int i = 0; i < 10; ++i) dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(entered.load(), 1) << "a callback ran after unregister_client returned";
  unregister_device(d.get());
}

TEST(Events, FatalEventRaisedBeforeUnregisterReachesClientsBeforeRemove) {
  static std::atomic<int> fatal_seen{0}, fatal_seen_at_remove{-1};
  fatal_seen = 0;
  auto d = make_device("unplug");
  ASSERT_EQ(register_device(d.get()), 0);
  Client c;
  c.name = "unplug_client";
  c.event = [](const Event& ev, Client*, void*) {
    if (ev.type == EventType::device_fatal) fatal_seen++;
  };
  c.remove = [](Device*, Client*, void*) { fatal_seen_at_remove = fatal_seen.load(); };
  ASSERT_EQ(register_client(&c), 0);
  Event ev;
  ev.device = d.get();
  ev.type = EventType::device_fatal;
  dispatch_event(ev);  // hot-unplug: fatal event, then unregister at once
  unregister_device(d.get());
  EXPECT_EQ(fatal_seen_at_remove.load(), 1);
  unregister_client(&c);
}

TEST(Events, UnregisterDeviceForgetsEventsQueuedDuringRemoval) {
  static std::atomic<bool> unregistered{false};
  static std::atomic<int> calls{0}, late{0};
  static Device* dev;
  unregistered = false;
  calls = late = 0;
  auto d = make_device("forget");
  dev = d.get();
  ASSERT_EQ(register_device(d.get()), 0);
  // A handler nobody unregisters: unregister_device must still stop it.
  ASSERT_EQ(register_event_handler(
                d.get(),
                [](const Event&, void*) {
                  calls++;
                  if (unregistered.load()) late++;
                },
                nullptr),
            0);
  Client c;
  c.name = "noisy_remove";
  c.remove = [](Device*, Client*, void*) {
    Event ev;
    ev.device = dev;
    ev.type = EventType::port_err;
    ev.element.port_num = 1;
    for (int i = 0; i < 200; ++i) dispatch_event(ev);  // the driver keeps raising events
  };
  ASSERT_EQ(register_client(&c), 0);
  unregister_device(d.get());
  unregistered = true;
  const int at_return = calls.load();
  detail::flush_async_events();
  EXPECT_EQ(calls.load(), at_return);
  EXPECT_EQ(late.load(), 0);
  // Events for an unregistered device are tombstoned at dispatch.
  Event ev;
  ev.device = d.get();
  ev.type = EventType::port_err;
  dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(late.load(), 0);
  unregister_client(&c);
}

TEST(Events, DeviceHandlerUnregisterIsAFence) {
  static std::atomic<int> calls{0};
  static std::atomic<bool> go{false}, finished{false};
  calls = 0;
  go = finished = false;
  auto d = make_device("handler_fence");
  ASSERT_EQ(register_device(d.get()), 0);
  DeviceEventHandler h = [](const Event&, void*) {
    calls++;
    while (!go.load()) std::this_thread::yield();
    finished = true;
  };
  ASSERT_EQ(register_event_handler(d.get(), h, nullptr), 0);
  EXPECT_EQ(register_event_handler(nullptr, h, nullptr), EINVAL);
  EXPECT_EQ(register_event_handler(d.get(), nullptr, nullptr), EINVAL);
  Event ev;
  ev.device = d.get();
  ev.type = EventType::gid_change;
  dispatch_event(ev);
  ASSERT_TRUE(eventually([] { return calls.load() == 1; }));
  std::atomic<bool> returned{false};
  bool finished_at_return = false;
  std::thread t([&] {
    unregister_event_handler(d.get(), h, nullptr);
    finished_at_return = finished.load();
    returned = true;
  });
  for (int i = 0; i < 20000 && !returned.load(); ++i) std::this_thread::yield();
  EXPECT_FALSE(returned.load()) << "unregister_event_handler returned while the handler ran";
  go = true;
  t.join();
  EXPECT_TRUE(finished_at_return);
  for (int i = 0; i < 50; ++i) dispatch_event(ev);
  detail::flush_async_events();
  EXPECT_EQ(calls.load(), 1);
  unregister_device(d.get());
}

// ---- drivers ----

int g_probes = 0, g_shutdowns = 0;
std::unique_ptr<FakeDevice> g_probed_dev;
int probe_fake() {
  ++g_probes;
  g_probed_dev = make_device("probed0");
  return register_device(g_probed_dev.get());
}
void shutdown_fake() {
  ++g_shutdowns;
  unregister_device(g_probed_dev.get());
  g_probed_dev.reset();
}
const Driver kFakeDriver{"fake", probe_fake, shutdown_fake};
DVERBS_REGISTER_DRIVER(kFakeDriver)

TEST(Drivers, ProbedOnceShutDownAndProbedAgain) {
  // A client whose add() calls probe_drivers() while the probe runs must not deadlock.
  static int nested_result = -1;
  Client c;
  c.name = "prober";
  c.add = [](Device*, Client*) { nested_result = probe_drivers(); };
  g_probes = g_shutdowns = 0;
  ASSERT_EQ(register_client(&c), 0);
  EXPECT_EQ(probe_drivers(), 0);
  EXPECT_EQ(nested_result, 0);
  EXPECT_EQ(probe_drivers(), 0);
  EXPECT_EQ(g_probes, 1);
  EXPECT_NE(find_device("probed0"), nullptr);
  shutdown_drivers();
  EXPECT_EQ(g_shutdowns, 1);
  EXPECT_EQ(find_device("probed0"), nullptr);
  shutdown_drivers();  // nothing probed: nothing to do
  EXPECT_EQ(g_shutdowns, 1);
  EXPECT_EQ(probe_drivers(), 0);
  EXPECT_EQ(g_probes, 2);
  shutdown_drivers();
  unregister_client(&c);
}

// Arbitration (Driver::claims, Driver::fallback): embedded HCA or dverbsd, never both.
bool g_claim = false;
int g_claimer_probes = 0, g_fallback_probes = 0;
const Driver kClaimer{"claimer", [] { return ++g_claimer_probes, 0; }, nullptr, nullptr,
                      nullptr, [] { return g_claim; }};
const Driver kFallback{"fallback", [] { return ++g_fallback_probes, 0; }, nullptr, nullptr,
                       nullptr, nullptr, /*fallback=*/true};
DVERBS_REGISTER_DRIVER(kClaimer)
DVERBS_REGISTER_DRIVER(kFallback)

TEST(Drivers, AClaimingDriverReplacesTheFallback) {
  g_claimer_probes = g_fallback_probes = g_probes = 0;
  g_claim = true;
  EXPECT_EQ(probe_drivers(), 0);
  EXPECT_EQ(g_claimer_probes, 1);
  EXPECT_EQ(g_fallback_probes, 0) << "the claimed process must not get the fallback too";
  EXPECT_EQ(g_probes, 1) << "a driver that does not arbitrate is always probed";
  shutdown_drivers();
  g_claim = false;
  EXPECT_EQ(probe_drivers(), 0);
  EXPECT_EQ(g_claimer_probes, 1) << "a driver that does not claim is not probed";
  EXPECT_EQ(g_fallback_probes, 1);
  EXPECT_EQ(g_probes, 2);
  shutdown_drivers();
}

// ---- stress: concurrent registration, unregistration and events ----

struct PairToken {
  Device* dev;
  Client* client;
  std::atomic<bool> removed{false};
};
std::mutex g_tokens_mu;
std::vector<std::unique_ptr<PairToken>> g_tokens;
std::atomic<int> g_live_pairs{0}, g_violations{0};

void stress_add(Device* d, Client* c) {
  auto t = std::make_unique<PairToken>();
  t->dev = d;
  t->client = c;
  set_client_data(d, c, t.get());
  g_live_pairs++;
  std::lock_guard lk(g_tokens_mu);
  g_tokens.push_back(std::move(t));
}
void stress_remove(Device* d, Client* c, void* data) {
  auto* t = static_cast<PairToken*>(data);
  if (!t || t->dev != d || t->client != c || t->removed.exchange(true)) g_violations++;
  g_live_pairs--;
}
void stress_event(const Event& ev, Client* c, void* data) {
  auto* t = static_cast<PairToken*>(data);
  if (!t || t->dev != ev.device || t->client != c || t->removed.load()) g_violations++;
}

TEST(RegistryStress, ConcurrentRegistrationEventsAndFences) {
  g_live_pairs = 0;
  g_violations = 0;
  constexpr int kDeviceThreads = 3, kClientThreads = 3, kIterations = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kDeviceThreads; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < kIterations; ++i) {
        auto d = make_device(("stress_d" + std::to_string(t)).c_str());
        ASSERT_EQ(register_device(d.get()), 0);
        Event ev;
        ev.device = d.get();
        ev.type = EventType::port_active;
        for (int k = 0; k < 20; ++k) dispatch_event(ev);
        unregister_device(d.get());
      }
    });
  for (int t = 0; t < kClientThreads; ++t)
    threads.emplace_back([] {
      for (int i = 0; i < kIterations; ++i) {
        Client c;
        c.name = "stress_client";
        c.add = stress_add;
        c.remove = stress_remove;
        c.event = stress_event;
        ASSERT_EQ(register_client(&c), 0);
        std::this_thread::yield();
        unregister_client(&c);
      }
    });
  for (auto& th : threads) th.join();
  detail::flush_async_events();
  EXPECT_EQ(g_violations.load(), 0);
  EXPECT_EQ(g_live_pairs.load(), 0);
  std::lock_guard lk(g_tokens_mu);
  for (auto& t : g_tokens) EXPECT_TRUE(t->removed.load());
  EXPECT_EQ(list_devices(nullptr, 0), 0);
}

}  // namespace
}  // namespace dverbs::mid
