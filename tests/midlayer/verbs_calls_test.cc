// Tests of lib/midlayer/verbs_calls.cc: common fields, use counts and EBUSY, EINVAL on null
// arguments, EOPNOTSUPP for missing optional ops, the destroy_qp event fence, and no
// serialisation of calls into the driver (core_locking.rst P6).
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "fake_driver.h"
#include "midlayer/internal.h"

namespace dverbs::mid {
namespace {

using fake::FakeDevice;

class VerbsCalls : public testing::Test {
 protected:
  void SetUp() override {
    dev_ = fake::make_device("verbs0");
    ASSERT_EQ(register_device(dev_.get()), 0);
    ASSERT_EQ(alloc_pd(dev_.get(), &pd_), 0);
    ASSERT_EQ(create_cq(dev_.get(), 16, nullptr, nullptr, nullptr, &cq_), 0);
  }
  void TearDown() override {
    EXPECT_EQ(destroy_cq(cq_), 0);
    EXPECT_EQ(dealloc_pd(pd_), 0);
    unregister_device(dev_.get());
    EXPECT_EQ(dev_->live_pds.load(), 0);
    EXPECT_EQ(dev_->live_mrs.load(), 0);
    EXPECT_EQ(dev_->live_cqs.load(), 0);
    EXPECT_EQ(dev_->live_qps.load(), 0);
    EXPECT_EQ(dev_->live_srqs.load(), 0);
    EXPECT_EQ(dev_->live_ahs.load(), 0);
  }
  Qp* make_qp(Cq* send, Cq* recv, Srq* srq = nullptr) {
    QpInitAttr init;
    init.send_cq = send;
    init.recv_cq = recv;
    init.srq = srq;
    Qp* qp = nullptr;
    EXPECT_EQ(create_qp(pd_, &init, &qp), 0);
    return qp;
  }
  std::unique_ptr<FakeDevice> dev_;
  Pd* pd_ = nullptr;
  Cq* cq_ = nullptr;
};

TEST_F(VerbsCalls, CommonFieldsAreFilled) {
  EXPECT_EQ(pd_->device, dev_.get());
  EXPECT_EQ(cq_->device, dev_.get());
  EXPECT_EQ(cq_->cqe, 16u);
  int ctx = 0;
  EventHandler h = [](const Event&, void*) {};
  QpInitAttr init;
  init.qp_type = QpType::ud;
  init.send_cq = init.recv_cq = cq_;
  init.event_handler = h;
  init.qp_context = &ctx;
  Qp* qp;
  ASSERT_EQ(create_qp(pd_, &init, &qp), 0);
  EXPECT_EQ(qp->device, dev_.get());
  EXPECT_EQ(qp->pd, pd_);
  EXPECT_EQ(qp->send_cq, cq_);
  EXPECT_EQ(qp->recv_cq, cq_);
  EXPECT_EQ(qp->srq, nullptr);
  EXPECT_EQ(qp->event_handler, h);
  EXPECT_EQ(qp->qp_context, &ctx);
  EXPECT_EQ(qp->qp_type, QpType::ud);
  EXPECT_NE(qp->qp_num, 0u);
  EXPECT_EQ(cq_->usecnt.load(), 2u);  // send and receive side
  EXPECT_EQ(pd_->usecnt.load(), 1u);

  char buf[64];
  Mr* mr;
  ASSERT_EQ(reg_mr(pd_, buf, sizeof buf, access::local_write, &mr), 0);
  EXPECT_EQ(mr->device, dev_.get());
  EXPECT_EQ(mr->pd, pd_);
  EXPECT_EQ(mr->addr, reinterpret_cast<uint64_t>(buf));
  EXPECT_EQ(mr->length, sizeof buf);
  EXPECT_EQ(mr->access, access::local_write);

  QpAttr attr;
  attr.qp_state = QpState::init;
  EXPECT_EQ(modify_qp(qp, &attr, qp_attr_mask::state), 0);
  QpAttr got;
  EXPECT_EQ(query_qp(qp, &got, qp_attr_mask::state, nullptr), 0);
  EXPECT_EQ(got.qp_state, QpState::init);

  EXPECT_EQ(dereg_mr(mr), 0);
  EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(cq_->usecnt.load(), 0u);
  EXPECT_EQ(pd_->usecnt.load(), 0u);
}

TEST_F(VerbsCalls, DeallocPdInUseIsEbusy) {
  Qp* qp = make_qp(cq_, cq_);
  EXPECT_EQ(dealloc_pd(pd_), EBUSY);
  EXPECT_EQ(destroy_qp(qp), 0);

  char buf[8];
  Mr* mr;
  ASSERT_EQ(reg_mr(pd_, buf, sizeof buf, 0, &mr), 0);
  EXPECT_EQ(dealloc_pd(pd_), EBUSY);
  EXPECT_EQ(dereg_mr(mr), 0);

  Ah* ah;
  AhAttr attr{};
  ASSERT_EQ(create_ah(pd_, &attr, &ah), 0);
  EXPECT_EQ(ah->pd, pd_);
  EXPECT_EQ(dealloc_pd(pd_), EBUSY);
  EXPECT_EQ(destroy_ah(ah), 0);

  Srq* srq;
  SrqInitAttr sattr;
  ASSERT_EQ(create_srq(pd_, &sattr, nullptr, nullptr, &srq), 0);
  EXPECT_EQ(dealloc_pd(pd_), EBUSY);
  EXPECT_EQ(destroy_srq(srq), 0);

  EXPECT_EQ(pd_->usecnt.load(), 0u);
  Pd* other;
  ASSERT_EQ(alloc_pd(dev_.get(), &other), 0);
  EXPECT_EQ(dealloc_pd(other), 0);  // and pd_ goes in TearDown
}

TEST_F(VerbsCalls, DestroyCqUsedByAQpIsEbusy) {
  Cq* send;
  ASSERT_EQ(create_cq(dev_.get(), 4, nullptr, nullptr, nullptr, &send), 0);
  Qp* qp = make_qp(send, cq_);
  EXPECT_EQ(destroy_cq(send), EBUSY);
  EXPECT_EQ(destroy_cq(cq_), EBUSY);
  EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(destroy_cq(send), 0);
}

TEST_F(VerbsCalls, DestroySrqUsedByAQpIsEbusy) {
  Srq* srq;
  SrqInitAttr sattr;
  ASSERT_EQ(create_srq(pd_, &sattr, nullptr, nullptr, &srq), 0);
  Qp* qp = make_qp(cq_, cq_, srq);
  EXPECT_EQ(qp->srq, srq);
  EXPECT_EQ(destroy_srq(srq), EBUSY);
  EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(modify_srq(srq, 8, 2, 0), 0);
  EXPECT_EQ(destroy_srq(srq), 0);
}

TEST_F(VerbsCalls, NullArgumentsAreEinval) {
  Pd* pd;
  Cq* cq;
  Qp* qp;
  Mr* mr;
  Srq* srq;
  Ah* ah;
  DeviceAttr dattr;
  PortAttr pattr;
  Gid gid;
  QpAttr qattr;
  QpInitAttr init;
  SrqInitAttr sattr;
  AhAttr aattr{};
  EXPECT_EQ(alloc_pd(nullptr, &pd), EINVAL);
  EXPECT_EQ(alloc_pd(dev_.get(), nullptr), EINVAL);
  EXPECT_EQ(dealloc_pd(nullptr), EINVAL);
  EXPECT_EQ(reg_mr(nullptr, nullptr, 0, 0, &mr), EINVAL);
  EXPECT_EQ(reg_mr(pd_, nullptr, 0, 0, nullptr), EINVAL);
  EXPECT_EQ(dereg_mr(nullptr), EINVAL);
  EXPECT_EQ(create_cq(nullptr, 4, nullptr, nullptr, nullptr, &cq), EINVAL);
  EXPECT_EQ(create_cq(dev_.get(), 4, nullptr, nullptr, nullptr, nullptr), EINVAL);
  EXPECT_EQ(create_cq(dev_.get(), 0, nullptr, nullptr, nullptr, &cq), EINVAL);
  EXPECT_EQ(destroy_cq(nullptr), EINVAL);
  EXPECT_EQ(create_qp(nullptr, &init, &qp), EINVAL);
  EXPECT_EQ(create_qp(pd_, nullptr, &qp), EINVAL);
  EXPECT_EQ(create_qp(pd_, &init, &qp), EINVAL);  // no CQs
  init.send_cq = init.recv_cq = cq_;
  EXPECT_EQ(create_qp(pd_, &init, nullptr), EINVAL);
  EXPECT_EQ(modify_qp(nullptr, &qattr, 0), EINVAL);
  EXPECT_EQ(query_qp(nullptr, &qattr, 0, nullptr), EINVAL);
  EXPECT_EQ(destroy_qp(nullptr), EINVAL);
  EXPECT_EQ(create_srq(nullptr, &sattr, nullptr, nullptr, &srq), EINVAL);
  EXPECT_EQ(create_srq(pd_, nullptr, nullptr, nullptr, &srq), EINVAL);
  EXPECT_EQ(create_srq(pd_, &sattr, nullptr, nullptr, nullptr), EINVAL);
  EXPECT_EQ(modify_srq(nullptr, 1, 1, 0), EINVAL);
  EXPECT_EQ(destroy_srq(nullptr), EINVAL);
  EXPECT_EQ(create_ah(nullptr, &aattr, &ah), EINVAL);
  EXPECT_EQ(create_ah(pd_, nullptr, &ah), EINVAL);
  EXPECT_EQ(create_ah(pd_, &aattr, nullptr), EINVAL);
  EXPECT_EQ(destroy_ah(nullptr), EINVAL);
  EXPECT_EQ(query_device(nullptr, &dattr), EINVAL);
  EXPECT_EQ(query_device(dev_.get(), nullptr), EINVAL);
  EXPECT_EQ(query_port(nullptr, 1, &pattr), EINVAL);
  EXPECT_EQ(query_port(dev_.get(), 0, &pattr), EINVAL);  // ports count from 1
  EXPECT_EQ(query_port(dev_.get(), 2, &pattr), EINVAL);
  EXPECT_EQ(query_gid(dev_.get(), 1, 0, nullptr), EINVAL);
  EXPECT_EQ(query_gid(nullptr, 1, 0, &gid), EINVAL);
  EXPECT_EQ(query_port(dev_.get(), 1, &pattr), 0);
  EXPECT_EQ(pattr.state, PortState::active);
  EXPECT_EQ(query_gid(dev_.get(), 1, 0, &gid), 0);
  EXPECT_EQ(query_device(dev_.get(), &dattr), 0);
  EXPECT_EQ(dev_->live_qps.load(), 0);
}

TEST_F(VerbsCalls, QpOnAnotherDevicesCqIsEinval) {
  auto other = fake::make_device("verbs1");
  ASSERT_EQ(register_device(other.get()), 0);
  Cq* foreign;
  ASSERT_EQ(create_cq(other.get(), 4, nullptr, nullptr, nullptr, &foreign), 0);
  QpInitAttr init;
  init.send_cq = cq_;
  init.recv_cq = foreign;
  Qp* qp;
  EXPECT_EQ(create_qp(pd_, &init, &qp), EINVAL);
  EXPECT_EQ(foreign->usecnt.load(), 0u);
  EXPECT_EQ(destroy_cq(foreign), 0);
  unregister_device(other.get());
}

TEST(VerbsCallsOptional, MissingOptionalOpsAreEopnotsupp) {
  auto d = fake::make_device("bare0");
  d->table = fake::mandatory_ops();
  ASSERT_EQ(register_device(d.get()), 0);
  Pd* pd;
  ASSERT_EQ(alloc_pd(d.get(), &pd), 0);
  Ah* ah;
  AhAttr aattr{};
  EXPECT_EQ(create_ah(pd, &aattr, &ah), EOPNOTSUPP);
  Srq* srq;
  SrqInitAttr sattr;
  EXPECT_EQ(create_srq(pd, &sattr, nullptr, nullptr, &srq), EOPNOTSUPP);
  // Objects of a driver without the op (e.g. its table changed): the calls still refuse.
  fake::FakeSrq fake_srq;
  fake_srq.device = d.get();
  fake_srq.pd = pd;
  EXPECT_EQ(modify_srq(&fake_srq, 1, 1, 0), EOPNOTSUPP);
  EXPECT_EQ(destroy_srq(&fake_srq), EOPNOTSUPP);
  RecvWr wr{};
  RecvWr* bad = nullptr;
  EXPECT_EQ(post_srq_recv(&fake_srq, &wr, &bad), EOPNOTSUPP);
  fake::FakeAh fake_ah;
  fake_ah.device = d.get();
  fake_ah.pd = pd;
  EXPECT_EQ(destroy_ah(&fake_ah), EOPNOTSUPP);
  Counter counters[4];
  EXPECT_EQ(query_counters(d.get(), counters, 4), -EOPNOTSUPP);
  Qp bare_qp;
  bare_qp.device = d.get();
  EXPECT_EQ(query_qp_counters(&bare_qp, counters, 4), -EOPNOTSUPP);
  EXPECT_EQ(pd->usecnt.load(), 0u);
  EXPECT_EQ(dealloc_pd(pd), 0);
  unregister_device(d.get());
}

// destroy_qp is a fence for the QP's async events: none runs after it returns, even with
// events queued and more raised while it runs.
TEST_F(VerbsCalls, DestroyQpForgetsItsQueuedEvents) {
  struct State {
    std::atomic<bool> destroyed{false};
    std::atomic<int> calls{0}, late{0};
  };
  dev_->graveyard = true;
  const int zombies = fake::zombie_calls.load();
  for (int round = 0; round < 20; ++round) {
    State st;
    QpInitAttr init;
    init.send_cq = init.recv_cq = cq_;
    init.qp_context = &st;
    init.event_handler = [](const Event&, void* ctx) {
      auto* s = static_cast<State*>(ctx);
      if (s->destroyed.load()) s->late++;
      s->calls++;
    };
    Qp* qp;
    ASSERT_EQ(create_qp(pd_, &init, &qp), 0);
    Event ev;
    ev.device = dev_.get();
    ev.type = EventType::comm_est;
    ev.element.qp = qp;
    for (int i = 0; i < 500; ++i) dispatch_event(ev);
    EXPECT_EQ(destroy_qp(qp), 0);
    st.destroyed = true;
    detail::flush_async_events();
    EXPECT_EQ(st.late.load(), 0);
  }
  EXPECT_EQ(fake::zombie_calls.load(), zombies) << "an event reached a destroyed QP";
}

TEST_F(VerbsCalls, DestroySrqAndCqForgetTheirQueuedEvents) {
  static std::atomic<bool> destroyed{false};
  static std::atomic<int> late{0};
  destroyed = false;
  late = 0;
  dev_->graveyard = true;
  const int zombies = fake::zombie_calls.load();
  EventHandler h = [](const Event&, void*) {
    if (destroyed.load()) late++;
  };
  Srq* srq;
  SrqInitAttr sattr;
  ASSERT_EQ(create_srq(pd_, &sattr, h, nullptr, &srq), 0);
  Cq* cq;
  ASSERT_EQ(create_cq(dev_.get(), 4, nullptr, h, nullptr, &cq), 0);
  Event ev;
  ev.device = dev_.get();
  for (int i = 0; i < 300; ++i) {
    ev.type = EventType::srq_limit_reached;
    ev.element.srq = srq;
    dispatch_event(ev);
    ev.type = EventType::cq_err;
    ev.element.cq = cq;
    dispatch_event(ev);
  }
  EXPECT_EQ(destroy_srq(srq), 0);
  EXPECT_EQ(destroy_cq(cq), 0);
  destroyed = true;
  detail::flush_async_events();
  EXPECT_EQ(late.load(), 0);
  EXPECT_EQ(fake::zombie_calls.load(), zombies) << "an event reached a destroyed SRQ or CQ";
}

// ---- P6: "The IB midlayer does not perform any serialization of function calls" ----
//
// A driver op that waits inside itself for a second caller to enter the same op table
// (bounded by an iteration count, never by time). `overlap` is set only by a caller that
// finds another caller already inside (its own fetch_add sees 2), so it proves that two
// calls were in the driver at the same time. Had the midlayer serialised the calls (a lock
// around the op), the first caller would give up after `spins` yields, leave, and the
// second would find nobody inside: `overlap` stays false.
struct Rendezvous {
  std::atomic<int> inside{0};
  std::atomic<int> entries{0};
  std::atomic<bool> overlap{false};
  long spins = 0;
  void meet() noexcept {
    entries.fetch_add(1, std::memory_order_seq_cst);
    if (inside.fetch_add(1, std::memory_order_seq_cst) + 1 >= 2)
      overlap.store(true, std::memory_order_seq_cst);
    for (long i = 0; i < spins && !overlap.load(std::memory_order_seq_cst); ++i)
      std::this_thread::yield();
    inside.fetch_sub(1, std::memory_order_seq_cst);
  }
};
Rendezvous* g_meet = nullptr;

// The ops touch no fake object state: the rendezvous is the whole op (the fake's
// modify_qp/query_qp use plain fields, which concurrent calls would race on).
int meet_modify_qp(Qp*, const QpAttr*, uint32_t) {
  g_meet->meet();
  return 0;
}
int meet_query_qp(Qp*, QpAttr* attr, uint32_t, QpInitAttr*) {
  g_meet->meet();
  attr->qp_state = QpState::init;
  return 0;
}
int meet_post_send(Qp*, SendWr*, SendWr**) {
  g_meet->meet();
  return 0;
}
int meet_query_device(Device* d, DeviceAttr* attr) {
  g_meet->meet();
  return fake::ops::query_device(d, attr);
}

// Runs `a` and `b` on two threads, optionally serialised by a lock of the test's own (the
// negative control); returns whether the two were inside the driver at the same time.
bool calls_overlap(long spins, const std::function<int()>& a, const std::function<int()>& b,
                   bool serialise = false) {
  Rendezvous r;
  r.spins = spins;
  g_meet = &r;
  std::mutex serial;
  int rc_a = -1, rc_b = -1;
  auto run = [&](const std::function<int()>& f, int* rc) {
    if (serialise) {
      std::lock_guard lk(serial);
      *rc = f();
    } else {
      *rc = f();
    }
  };
  std::thread ta(run, std::cref(a), &rc_a);
  std::thread tb(run, std::cref(b), &rc_b);
  ta.join();
  tb.join();
  g_meet = nullptr;
  EXPECT_EQ(rc_a, 0);
  EXPECT_EQ(rc_b, 0);
  EXPECT_EQ(r.entries.load(), 2) << "each call reaches the driver op exactly once";
  EXPECT_EQ(r.inside.load(), 0);
  return r.overlap.load();
}

TEST_F(VerbsCalls, TwoCallsOnOneObjectAreInsideTheDriverAtOnce) {
  // Yields a waiting caller makes before giving up: ample for the other thread to start
  // and enter on a loaded machine; only a serialising midlayer exhausts it.
  constexpr long kSpins = 20'000'000;
  dev_->table.modify_qp = meet_modify_qp;
  dev_->table.query_qp = meet_query_qp;
  dev_->table.post_send = meet_post_send;
  dev_->table.query_device = meet_query_device;
  Qp* qp = make_qp(cq_, cq_);
  ASSERT_NE(qp, nullptr);
  auto modify = [qp] {
    QpAttr a;
    a.qp_state = QpState::init;
    return modify_qp(qp, &a, qp_attr_mask::state);
  };
  auto query = [qp] {
    QpAttr a;
    const int rc = query_qp(qp, &a, qp_attr_mask::state, nullptr);
    return rc == 0 && a.qp_state == QpState::init ? 0 : EIO;
  };
  auto post = [qp] {
    SendWr wr{};
    wr.opcode = WrOpcode::send;
    SendWr* bad = nullptr;
    return post_send(qp, &wr, &bad);
  };
  Device* dev = dev_.get();
  auto qdev = [dev] {
    DeviceAttr a;
    return query_device(dev, &a);
  };

  EXPECT_TRUE(calls_overlap(kSpins, modify, modify)) << "modify_qp || modify_qp, one QP";
  EXPECT_TRUE(calls_overlap(kSpins, modify, query)) << "modify_qp || query_qp, one QP";
  EXPECT_TRUE(calls_overlap(kSpins, post, post)) << "post_send || post_send, one QP";
  EXPECT_TRUE(calls_overlap(kSpins, qdev, qdev)) << "query_device || query_device";

  // Negative control: the same detector, with the callers serialised by the test, never
  // reports an overlap (a small bound: the first caller gives up, then the second does).
  EXPECT_FALSE(calls_overlap(1000, modify, query, /*serialise=*/true));
  EXPECT_FALSE(calls_overlap(1000, post, post, /*serialise=*/true));

  dev_->table = fake::full_ops();
  EXPECT_EQ(destroy_qp(qp), 0);
}

TEST(VerbsCallsLeaks, UnregisterDeviceStopsHandlersOfLeakedCqs) {
  static std::atomic<bool> unregistered{false};
  static std::atomic<int> late{0};
  unregistered = false;
  late = 0;
  auto d = fake::make_device("leaky0");
  ASSERT_EQ(register_device(d.get()), 0);
  Cq* cq;
  ASSERT_EQ(create_cq(
                d.get(), 4,
                [](Cq*, void*) {
                  if (unregistered.load()) late++;
                },
                nullptr, nullptr, &cq),
            0);
  cq_comp_event(cq);
  testing::internal::CaptureStderr();
  unregister_device(d.get());
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("1 CQ(s) still open"), std::string::npos) << err;
  unregistered = true;
  for (int i = 0; i < 100; ++i) cq_comp_event(cq);  // a quiesced CQ ignores events
  detail::flush_async_events();
  EXPECT_EQ(cq->events.scheduled.load(), 1u);  // owned by the fence for good
  EXPECT_EQ(late.load(), 0);
  EXPECT_EQ(fake::ops::destroy_cq(cq), 0);  // the driver frees it
}

}  // namespace
}  // namespace dverbs::mid
