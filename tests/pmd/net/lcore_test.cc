// Transport lcore runner: runs, registers with DPDK, stops, backs off when idle and spins
// again when work appears. Asserts on counters, never on time.
#include "pmd/net/lcore.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>

#include <gtest/gtest.h>
#include <rte_lcore.h>

#include "midlayer/might_sleep.h"
#include "pmd/net/eal.h"

namespace dverbs::pmd::net {
namespace {

bool eal() {
  static int rc = [] {
    std::string err;
    int r = eal_init(Config{}, &err);
    if (r) std::fprintf(stderr, "%s\n", err.c_str());
    return r;
  }();
  return rc == 0;
}

struct Probe {
  std::atomic<bool> busy{false};
  std::atomic<uint64_t> calls{0}, busy_calls{0};
  std::atomic<unsigned> lcore_id{LCORE_ID_ANY};
  std::atomic<bool> in_scope{false};
};

int poll_probe(void* arg) noexcept {
  auto* p = static_cast<Probe*>(arg);
  p->calls.fetch_add(1, std::memory_order_relaxed);
  p->lcore_id.store(rte_lcore_id(), std::memory_order_relaxed);
  p->in_scope.store(mid::in_non_sleeping_scope(), std::memory_order_relaxed);
  if (p->busy.load(std::memory_order_relaxed)) {
    p->busy_calls.fetch_add(1, std::memory_order_relaxed);
    return 1;
  }
  return 0;
}

// Waits (yielding) until pred() holds; gives up after a very generous bound of rounds.
template <class Pred>
bool eventually(Pred pred) {
  for (long i = 0; i < 200'000'000; ++i) {
    if (pred()) return true;
    sched_yield();
  }
  return false;
}

class LcoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(eal()); }
};

TEST_F(LcoreTest, RunsRegisteredAndStops) {
  Probe p;
  LcoreThread t;
  ASSERT_EQ(t.start("dv-test", poll_probe, &p), 0);
  EXPECT_TRUE(t.running());
  EXPECT_TRUE(t.registered());
  EXPECT_EQ(t.start("dv-test", poll_probe, &p), EBUSY);
  ASSERT_TRUE(eventually([&] { return p.calls.load() > 100; }));
  EXPECT_NE(p.lcore_id.load(), unsigned(LCORE_ID_ANY));
  EXPECT_NE(p.lcore_id.load(), rte_get_main_lcore());
#if DVERBS_MIGHT_SLEEP_CHECK
  EXPECT_TRUE(p.in_scope.load()) << "the poll function runs in a non-sleeping scope";
#endif
  t.stop();
  EXPECT_FALSE(t.running());
  const uint64_t calls = p.calls.load();
  EXPECT_EQ(t.iterations(), calls);
  t.stop();  // idempotent
}

TEST_F(LcoreTest, BacksOffWhenIdleAndSpinsWhenBusy) {
  Probe p;
  LcoreThread t;
  ASSERT_EQ(t.start("dv-idle", poll_probe, &p), 0);
  // Idle: spins, then yields, then sleeps.
  ASSERT_TRUE(eventually([&] { return t.idle_sleeps() > 10; }));
  EXPECT_GT(t.idle_yields(), 0u);

  // Work appears: back to spinning at once; no sleep while every round does work.
  p.busy.store(true);
  ASSERT_TRUE(eventually([&] { return p.busy_calls.load() > 0; }));
  const uint64_t sleeps = t.idle_sleeps(), yields = t.idle_yields();
  ASSERT_TRUE(eventually([&] { return p.busy_calls.load() > 100'000; }));
  EXPECT_EQ(t.idle_sleeps(), sleeps);
  EXPECT_EQ(t.idle_yields(), yields);

  // Idle again: backs off again.
  p.busy.store(false);
  ASSERT_TRUE(eventually([&] { return t.idle_sleeps() > sleeps + 10; }));
  t.stop();
}

// IdlePolicy with made-up times: a 1 GHz counter, so cycles are nanoseconds.
constexpr uint64_t kUs = 1000;
using Action = IdlePolicy::Action;

TEST(IdlePolicyTest, SpinsThenYieldsThenSleepsLongerAndLonger) {
  IdlePolicy p(1'000'000'000);
  uint64_t t = 1'000'000;
  p.work(t);
  EXPECT_EQ(p.idle(t + 1).action, Action::spin);
  EXPECT_EQ(p.idle(t + IdlePolicy::kHotMinNs - 1).action, Action::spin);
  EXPECT_EQ(p.idle(t + IdlePolicy::kHotMinNs).action, Action::yield);
  t += IdlePolicy::kHotMinNs + IdlePolicy::kYieldNs;
  uint64_t last = 0;
  for (int i = 0; i < 20; i++) {
    const auto s = p.idle(t + uint64_t(i));
    ASSERT_EQ(s.action, Action::sleep);
    EXPECT_GE(s.sleep_ns, last);
    EXPECT_LE(s.sleep_ns, IdlePolicy::kMaxSleepNs) << "under a second idle: short sleeps";
    last = s.sleep_ns;
  }
  EXPECT_EQ(last, IdlePolicy::kMaxSleepNs);
  // 10 ms without work: longer sleeps, up to kIdleSleepNs.
  const uint64_t idle = 1'000'000 + IdlePolicy::kIdleNs;
  for (int i = 0; i < 20; i++) {
    const auto st = p.idle(idle + uint64_t(i));
    EXPECT_GE(st.sleep_ns, last);
    last = st.sleep_ns;
  }
  EXPECT_EQ(last, IdlePolicy::kIdleSleepNs);
  // A second without work: deep sleeps, growing to kDeepSleepNs.
  const uint64_t deep = 1'000'000 + IdlePolicy::kDeepIdleNs;
  for (int i = 0; i < 20; i++) last = p.idle(deep + uint64_t(i)).sleep_ns;
  EXPECT_EQ(last, IdlePolicy::kDeepSleepNs);
  // Work returns it to spinning and to the shortest sleep.
  p.work(deep + 100);
  EXPECT_EQ(p.idle(deep + 101).action, Action::spin);
  const auto s = p.idle(deep + 100 + IdlePolicy::kHotMinNs + IdlePolicy::kYieldNs);
  EXPECT_EQ(s.action, Action::sleep);
  EXPECT_EQ(s.sleep_ns, 1000u);
}

TEST(IdlePolicyTest, AResponsiveLoopNeverSleepsLongerThanMaxSleep) {
  IdlePolicy p(1'000'000'000, IdlePolicy::Depth::responsive);
  p.work(1'000'000);
  uint64_t t = 1'000'000 + 2 * IdlePolicy::kDeepIdleNs;
  uint64_t most = 0;
  for (int i = 0; i < 64; i++) most = std::max(most, p.idle(t + uint64_t(i)).sleep_ns);
  EXPECT_EQ(most, IdlePolicy::kMaxSleepNs);
}

TEST(IdlePolicyTest, SpinWindowFollowsTheGapsBetweenWork) {
  // Work every 200 µs: the window grows to kHotGaps gaps, so the next arrival is caught
  // spinning.
  IdlePolicy p(1'000'000'000);
  uint64_t t = 1'000'000;
  for (int i = 0; i < 64; i++, t += 200 * kUs) p.work(t);
  EXPECT_GE(p.hot_cycles(), 3 * 200 * kUs);
  EXPECT_LE(p.hot_cycles(), IdlePolicy::kHotGaps * 200 * kUs + kUs);
  t -= 200 * kUs;
  EXPECT_EQ(p.idle(t + 199 * kUs).action, Action::spin);
  // Work every 5 ms: spinning would not catch it, the window stays at its minimum.
  IdlePolicy q(1'000'000'000);
  t = 1'000'000;
  for (int i = 0; i < 64; i++, t += 5000 * kUs) q.work(t);
  EXPECT_EQ(q.hot_cycles(), IdlePolicy::kHotMinNs);
  // Back-to-back work: the minimum window, not less.
  IdlePolicy r(1'000'000'000);
  t = 1'000'000;
  for (int i = 0; i < 64; i++, t += 100) r.work(t);
  EXPECT_EQ(r.hot_cycles(), IdlePolicy::kHotMinNs);
}

TEST(IdlePolicyTest, AFirstWorkAfterALongPauseResetsTheWindow) {
  IdlePolicy p(1'000'000'000);
  uint64_t t = 1'000'000;
  for (int i = 0; i < 64; i++, t += 200 * kUs) p.work(t);
  ASSERT_GT(p.hot_cycles(), IdlePolicy::kHotMinNs);
  p.work(t + 2 * IdlePolicy::kDeepIdleNs);
  EXPECT_EQ(p.hot_cycles(), IdlePolicy::kHotMinNs);
}

TEST(ChooseLcoresAuto, SaysWhatItChoseAndWhy) {
  const LcoreChoice c = choose_lcores_auto();
  EXPECT_TRUE(c.lcores == 0 || c.lcores == 1);
  EXPECT_NE(c.why.find("DVERBS_LCORES=auto: "), std::string::npos) << c.why;
  EXPECT_NE(c.why.find(c.lcores ? "dedicated" : "inline progress"), std::string::npos) << c.why;
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  if (CPU_COUNT(&set) < kAutoMinCpus) {
    EXPECT_EQ(c.lcores, 0) << c.why;
  }
  if (c.slot_fd >= 0) {
    // The slot is held: a second choice in this process cannot take the same one.
    const LcoreChoice d = choose_lcores_auto();
    EXPECT_TRUE(d.slot_fd < 0 || d.why != c.why) << d.why;
    if (d.slot_fd >= 0) close(d.slot_fd);
    close(c.slot_fd);
  }
}

TEST_F(LcoreTest, RestartReleasesTheLcoreId) {
  // More start/stop cycles than DPDK has lcore ids: each run gives its id back.
  Probe p;
  LcoreThread t;
  for (int i = 0; i < RTE_MAX_LCORE + 8; ++i) {
    ASSERT_EQ(t.start("dv-cycle", poll_probe, &p), 0);
    ASSERT_TRUE(t.registered()) << "cycle " << i;
    t.stop();
  }
}

}  // namespace
}  // namespace dverbs::pmd::net
