// Transport lcore runner: runs, registers with DPDK, stops, backs off when idle and spins
// again when work appears. Asserts on counters, never on time.
#include "pmd/net/lcore.h"

#include <sched.h>

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
  EXPECT_GE(t.idle_yields(), LcoreThread::kYieldIdle);

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
