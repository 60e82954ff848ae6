// Tests of lib/midlayer/cq_events.cc: at most one completion handler per CQ, never on the
// posting thread, handlers of different CQs in parallel, re-arming from inside a handler,
// the destroy_cq fence and a full ready ring.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "fake_driver.h"
#include "midlayer/internal.h"

namespace dverbs::mid {
namespace {

using fake::eventually;
using fake::FakeCq;
using fake::FakeDevice;

inline void pause() noexcept {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

class CqEvents : public testing::Test {
 protected:
  void SetUp() override {
    dev_ = fake::make_device("cqdev");
    ASSERT_EQ(register_device(dev_.get()), 0);
    ASSERT_EQ(alloc_pd(dev_.get(), &pd_), 0);
  }
  void TearDown() override {
    EXPECT_EQ(dealloc_pd(pd_), 0);
    unregister_device(dev_.get());
    EXPECT_EQ(dev_->live_cqs.load(), 0);
  }
  std::unique_ptr<FakeDevice> dev_;
  Pd* pd_ = nullptr;
};

constexpr int kPosters = 4;

// Records what a completion handler sees.
struct Probe {
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};    // two handlers of this CQ at once
  std::atomic<int> on_poster{0};   // handler ran on a thread that raised the event
  std::atomic<int> off_pool{0};    // handler ran outside the handler pool
  std::atomic<int> not_atomic{0};  // handler ran outside a non-sleeping scope
  std::atomic<uint64_t> calls{0};
  std::atomic<std::thread::id> posters[kPosters];

  void enter() {
    if (inside.fetch_add(1) != 0) overlaps++;
    const auto me = std::this_thread::get_id();
    for (auto& id : posters)
      if (id.load() == me) on_poster++;
    if (!detail::on_handler_thread()) off_pool++;
#if DVERBS_MIGHT_SLEEP_CHECK
    if (!in_non_sleeping_scope()) not_atomic++;
#endif
  }
  void leave() {
    calls++;
    inside.fetch_sub(1);
  }
};

void probe_handler(Cq*, void* ctx) {
  auto* p = static_cast<Probe*>(ctx);
  p->enter();
  for (int i = 0; i < 200; ++i) pause();  // widen the window for an overlap
  p->leave();
}

// Raises events on `cq` from kPosters threads until the handler has run `min_calls` times
// (events coalesce, so the count of events alone says little). Returns the events raised.
uint64_t hammer(Cq* cq, Probe& probe, uint64_t min_calls) {
  constexpr uint64_t kMaxEventsPerThread = 20'000'000;  // liveness bound
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<uint64_t> raised{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kPosters; ++t)
    threads.emplace_back([&, t] {
      probe.posters[t] = std::this_thread::get_id();
      ready++;
      while (!go.load()) std::this_thread::yield();
      uint64_t i = 0;
      for (; i < kMaxEventsPerThread && probe.calls.load() < min_calls; ++i) {
        cq_comp_event(cq);
        if (i % 16 == 0) std::this_thread::yield();
      }
      raised += i;
    });
  while (ready.load() != kPosters) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();
  return raised.load();
}

TEST_F(CqEvents, OneHandlerPerCqNeverOnTheRaisingThread) {
  Probe probe;
  Cq* cq;
  ASSERT_EQ(create_cq(dev_.get(), 16, probe_handler, nullptr, &probe, &cq), 0);
  const EventStats before = event_stats();
  constexpr uint64_t kCalls = 5000;
  const uint64_t raised = hammer(cq, probe, kCalls);
  ASSERT_TRUE(fake::cq_idle(cq));
  const EventStats after = event_stats();
  EXPECT_EQ(probe.overlaps.load(), 0);
  EXPECT_EQ(probe.on_poster.load(), 0);
  EXPECT_EQ(probe.off_pool.load(), 0);
  EXPECT_EQ(probe.not_atomic.load(), 0);
  EXPECT_GE(probe.calls.load(), kCalls);
  EXPECT_LE(probe.calls.load(), raised);  // coalescing allowed
  EXPECT_EQ(cq->events.delivered.load(), probe.calls.load());
  EXPECT_EQ(after.cq_events_raised - before.cq_events_raised, raised);
  EXPECT_EQ(after.cq_handlers_run - before.cq_handlers_run, probe.calls.load());
  EXPECT_EQ(destroy_cq(cq), 0);
}

// The consumer pattern of every verbs program: poll, re-arm, poll again — inside the
// handler. Completions come from post_send on application threads (the posting call chain).
struct Rearming {
  Probe probe;
  std::atomic<uint64_t> polled{0};
  std::atomic<int> errors{0};
};

void rearming_handler(Cq* cq, void* ctx) {
  auto* r = static_cast<Rearming*>(ctx);
  r->probe.enter();
  Wc wc[16];
  for (;;) {
    int n;
    while ((n = poll_cq(cq, 16, wc)) > 0) r->polled += n;
    if (n < 0 || req_notify_cq(cq, false) != 0) r->errors++;
    n = poll_cq(cq, 16, wc);  // completions that raced with the re-arm
    if (n <= 0) break;
    r->polled += n;
  }
  r->probe.leave();
}

TEST_F(CqEvents, HandlerPollsAndRearmsFromInside) {
  Rearming r;
  constexpr int kPostsPerThread = 20000;
  const uint64_t total = uint64_t{kPosters} * kPostsPerThread;
  Cq* cq;
  ASSERT_EQ(create_cq(dev_.get(), static_cast<uint32_t>(total), rearming_handler, nullptr, &r, &cq),
            0);
  std::vector<Qp*> qps(kPosters);
  for (auto& qp : qps) {
    QpInitAttr init;
    init.send_cq = init.recv_cq = cq;
    ASSERT_EQ(create_qp(pd_, &init, &qp), 0);
  }
  ASSERT_EQ(req_notify_cq(cq, false), 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kPosters; ++t)
    threads.emplace_back([&, t] {
      r.probe.posters[t] = std::this_thread::get_id();
      Sge sge{};
      SendWr wr{};
      wr.sg_list = &sge;
      wr.num_sge = 1;
      wr.opcode = WrOpcode::send;
      wr.send_flags = send_flags::signaled;
      for (int i = 0; i < kPostsPerThread; ++i) {
        wr.wr_id = static_cast<uint64_t>(i);
        SendWr* bad = nullptr;
        if (post_send(qps[t], &wr, &bad) != 0) r.errors++;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_TRUE(eventually([&] { return r.polled.load() == total; }))
      << r.polled.load() << " of " << total;
  ASSERT_TRUE(fake::cq_idle(cq));
  EXPECT_EQ(r.errors.load(), 0);
  EXPECT_EQ(r.probe.overlaps.load(), 0);
  EXPECT_EQ(r.probe.on_poster.load(), 0) << "handler ran in the post_send call chain";
  EXPECT_EQ(r.probe.off_pool.load(), 0);
  for (Qp* qp : qps) EXPECT_EQ(destroy_qp(qp), 0);
  EXPECT_EQ(destroy_cq(cq), 0);
}

// Handlers of different CQs are not serialised against each other.
struct Overlap {
  std::atomic<int> inside{0};
  std::atomic<bool> seen{false};
};

void overlap_handler(Cq*, void* ctx) {
  auto* o = static_cast<Overlap*>(ctx);
  o->inside++;
  for (long i = 0; i < 20'000'000 && !o->seen.load(); ++i) {  // bounded spin
    if (o->inside.load() >= 2) o->seen = true;
    if (i % 64 == 0) std::this_thread::yield();
  }
  o->inside--;
}

TEST_F(CqEvents, HandlersOfDifferentCqsOverlap) {
  if (detail::handler_pool_size() < 2) GTEST_SKIP() << "handler pool has one thread";
  Overlap o;
  Cq *a, *b;
  ASSERT_EQ(create_cq(dev_.get(), 4, overlap_handler, nullptr, &o, &a), 0);
  ASSERT_EQ(create_cq(dev_.get(), 4, overlap_handler, nullptr, &o, &b), 0);
  for (int round = 0; round < 5 && !o.seen.load(); ++round) {
    cq_comp_event(a);
    cq_comp_event(b);
    ASSERT_TRUE(fake::cq_idle(a));
    ASSERT_TRUE(fake::cq_idle(b));
  }
  EXPECT_TRUE(o.seen.load());
  EXPECT_EQ(destroy_cq(a), 0);
  EXPECT_EQ(destroy_cq(b), 0);
}

// ---- destroy_cq fence ----

struct FenceState {
  std::atomic<bool> destroy_returned{false};
  std::atomic<int> late{0};
  std::atomic<uint64_t> calls{0};
};

void fence_handler(Cq*, void* ctx) {
  auto* s = static_cast<FenceState*>(ctx);
  if (s->destroy_returned.load()) s->late++;
  s->calls++;
}

TEST_F(CqEvents, DestroyCqIsAFenceAgainstQueuedEvents) {
  dev_->graveyard = true;
  const int zombies = fake::zombie_calls.load();
  constexpr int kRounds = 50;
  std::vector<std::unique_ptr<FenceState>> states;  // outlive the CQs
  for (int round = 0; round < kRounds; ++round) {
    auto st = std::make_unique<FenceState>();
    fake::Gate gate;
    Cq* cq;
    ASSERT_EQ(create_cq(dev_.get(), 4, fence_handler, nullptr, st.get(), &cq), 0);
    static_cast<FakeCq*>(cq)->gate = &gate;
    std::atomic<bool> stop{false};
    std::thread lcore([&] {
      while (!stop.load() && gate.raise(cq)) {
      }
    });
    ASSERT_TRUE(eventually([&] { return st->calls.load() > 0; }));
    EXPECT_EQ(destroy_cq(cq), 0);  // the fake closes the gate before freeing
    st->destroy_returned = true;
    stop = true;
    lcore.join();
    states.push_back(std::move(st));
  }
  // Give late handlers every chance: drain the pool with another CQ's events.
  Probe probe;
  Cq* other;
  ASSERT_EQ(create_cq(dev_.get(), 4, probe_handler, nullptr, &probe, &other), 0);
  for (int i = 0; i < 100; ++i) {
    cq_comp_event(other);
    ASSERT_TRUE(fake::cq_idle(other));
  }
  EXPECT_EQ(destroy_cq(other), 0);
  for (auto& st : states) EXPECT_EQ(st->late.load(), 0);
  EXPECT_EQ(fake::zombie_calls.load(), zombies) << "a destroyed CQ was handled";
}

TEST_F(CqEvents, DestroyCqWaitsForTheRunningHandler) {
  static std::atomic<bool> entered{false}, release{false}, left{false};
  entered = release = left = false;
  Cq* cq;
  ASSERT_EQ(create_cq(
                dev_.get(), 4,
                [](Cq*, void*) {
                  entered = true;
                  while (!release.load()) std::this_thread::yield();
                  left = true;
                },
                nullptr, nullptr, &cq),
            0);
  cq_comp_event(cq);
  ASSERT_TRUE(eventually([] { return entered.load(); }));
  std::atomic<bool> returned{false};
  bool left_at_return = false;
  std::thread t([&] {
    EXPECT_EQ(destroy_cq(cq), 0);
    left_at_return = left.load();
    returned = true;
  });
  for (int i = 0; i < 20000 && !returned.load(); ++i) std::this_thread::yield();
  EXPECT_FALSE(returned.load()) << "destroy_cq returned while the handler ran";
  release = true;
  t.join();
  EXPECT_TRUE(left_at_return);
}

TEST_F(CqEvents, UnarmedOrHandlerlessCqIsHarmless) {
  Cq* cq;
  ASSERT_EQ(create_cq(dev_.get(), 4, nullptr, nullptr, nullptr, &cq), 0);
  for (int i = 0; i < 1000; ++i) cq_comp_event(cq);
  ASSERT_TRUE(fake::cq_idle(cq));
  cq_comp_event(nullptr);
  EXPECT_EQ(destroy_cq(cq), 0);
}

// More CQs ready at once than the ready ring holds: the rest spill, none is lost.
TEST_F(CqEvents, FullReadyRingSpillsWithoutLosingACq) {
  static std::atomic<bool> hold{true};
  hold = true;
  constexpr size_t kCqs = 2 * detail::kCqReadyRingSize;
  std::vector<std::atomic<int>> calls(kCqs);
  std::vector<Cq*> cqs(kCqs);
  auto handler = [](Cq*, void* ctx) {
    while (hold.load()) std::this_thread::yield();  // all handler threads block
    static_cast<std::atomic<int>*>(ctx)->fetch_add(1);
  };
  for (size_t i = 0; i < kCqs; ++i)
    ASSERT_EQ(create_cq(dev_.get(), 1, handler, nullptr, &calls[i], &cqs[i]), 0);
  const EventStats before = event_stats();
  for (Cq* cq : cqs) cq_comp_event(cq);
  const EventStats spilled = event_stats();
  hold = false;
  for (Cq* cq : cqs) ASSERT_TRUE(fake::cq_idle(cq));
  EXPECT_GE(spilled.ring_full_drops - before.ring_full_drops,
            kCqs - detail::kCqReadyRingSize - detail::kMaxHandlerThreads);
  for (size_t i = 0; i < kCqs; ++i) EXPECT_EQ(calls[i].load(), 1) << i;
  for (Cq* cq : cqs) EXPECT_EQ(destroy_cq(cq), 0);
}

// With the pool stopped (as after exit) a fence does not hang: it forgets the queued work
// itself. A later start delivers again.
TEST_F(CqEvents, PoolStopsAndRestarts) {
  Probe a_probe, b_probe;
  Cq *a, *b;
  ASSERT_EQ(create_cq(dev_.get(), 4, probe_handler, nullptr, &a_probe, &a), 0);
  ASSERT_EQ(create_cq(dev_.get(), 4, probe_handler, nullptr, &b_probe, &b), 0);
  detail::stop_handler_pool();
  EXPECT_EQ(detail::handler_pool_size(), 0);
  cq_comp_event(a);
  EXPECT_EQ(destroy_cq(a), 0);
  EXPECT_EQ(a_probe.calls.load(), 0u);
  detail::start_handler_pool();
  EXPECT_GE(detail::handler_pool_size(), 1);
  cq_comp_event(b);
  EXPECT_TRUE(eventually([&] { return b_probe.calls.load() == 1; }));
  ASSERT_TRUE(fake::cq_idle(b));
  EXPECT_EQ(destroy_cq(b), 0);
}

// ---- stress ----

TEST_F(CqEvents, StressManyCqsPostersAndDestroys) {
  dev_->graveyard = true;
  const int zombies = fake::zombie_calls.load();
  constexpr int kCqs = 8, kRounds = 200, kEvents = 5000;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<Probe>> probes;
    std::vector<Cq*> cqs(kCqs);
    std::vector<std::unique_ptr<fake::Gate>> gates;
    for (int i = 0; i < kCqs; ++i) {
      probes.push_back(std::make_unique<Probe>());
      gates.push_back(std::make_unique<fake::Gate>());
      ASSERT_EQ(create_cq(dev_.get(), 4, probe_handler, nullptr, probes[i].get(), &cqs[i]), 0);
      static_cast<FakeCq*>(cqs[i])->gate = gates[i].get();
    }
    std::vector<std::thread> lcores;
    for (int t = 0; t < kPosters; ++t)
      lcores.emplace_back([&, t] {
        for (int i = 0; i < kEvents; ++i) gates[(i + t) % kCqs]->raise(cqs[(i + t) % kCqs]);
      });
    // Destroy half of the CQs while the lcores still raise events on them.
    for (int i = 0; i < kCqs / 2; ++i) EXPECT_EQ(destroy_cq(cqs[i]), 0);
    for (auto& t : lcores) t.join();
    for (int i = kCqs / 2; i < kCqs; ++i) {
      ASSERT_TRUE(fake::cq_idle(cqs[i]));
      EXPECT_EQ(destroy_cq(cqs[i]), 0);
    }
    for (auto& p : probes) {
      EXPECT_EQ(p->overlaps.load(), 0);
      EXPECT_EQ(p->off_pool.load(), 0);
    }
  }
  Probe probe;  // flush the pool through another CQ before looking for zombies
  Cq* other;
  ASSERT_EQ(create_cq(dev_.get(), 4, probe_handler, nullptr, &probe, &other), 0);
  cq_comp_event(other);
  ASSERT_TRUE(fake::cq_idle(other));
  EXPECT_EQ(destroy_cq(other), 0);
  EXPECT_EQ(fake::zombie_calls.load(), zombies) << "a destroyed CQ was handled";
}

}  // namespace
}  // namespace dverbs::mid
