// Receive-side fault injector: determinism for a seed, rates, the reorder release rule,
// corruption of exactly one bit after the Ethernet header, and no mbuf leaks.
#include "pmd/net/fault.h"

#include <bit>
#include <cstdio>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "pmd/net/eal.h"

namespace dverbs::pmd::net {
namespace {

constexpr unsigned kPoolSize = 8191;

// One EAL and one pool per process.
rte_mempool* pool() {
  static rte_mempool* p = [] {
    std::string err;
    if (eal_init(Config{}, &err) != 0) {
      std::fprintf(stderr, "%s\n", err.c_str());
      return static_cast<rte_mempool*>(nullptr);
    }
    return rte_pktmbuf_pool_create("fault_test", kPoolSize, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                   SOCKET_ID_ANY);
  }();
  return p;
}

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NE(pool(), nullptr); }
  // Every test gives all its mbufs back.
  void TearDown() override { EXPECT_EQ(rte_mempool_avail_count(pool()), kPoolSize); }

  // A 64-byte frame whose bytes after the Ethernet header encode id.
  static rte_mbuf* frame(uint32_t id, uint16_t len = 64) {
    rte_mbuf* m = rte_pktmbuf_alloc(pool());
    auto* p = m ? reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, len)) : nullptr;
    if (!p) {
      ADD_FAILURE() << "no mbuf";
      return m;
    }
    for (uint16_t i = 0; i < len; ++i) p[i] = uint8_t(i < 14 ? 0xee : (id >> (8 * (i % 4))) + i);
    return m;
  }
  static uint32_t id_of(const rte_mbuf* m) {
    const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
    uint32_t id = 0;
    for (int i = 0; i < 4; ++i)
      id |= uint32_t(uint8_t(p[16 + i] - (16 + i))) << (8 * ((16 + i) % 4));
    return id;
  }
  static uint64_t digest(const rte_mbuf* m) {
    uint64_t h = 1469598103934665603ull;
    const auto* p = rte_pktmbuf_mtod(m, const uint8_t*);
    for (uint32_t i = 0; i < rte_pktmbuf_data_len(m); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  }

  struct Run {
    std::vector<uint64_t> out;  // digests in delivery order
    FaultCounts counts;
    uint64_t delivered = 0;
  };
  // Feeds `total` frames in bursts of `burst` (capacity cap), then drains; frees outputs.
  static Run run(const FaultSpec& spec, uint64_t stream, uint32_t total, uint16_t burst,
                 uint16_t cap) {
    Run r;
    FaultInjector f(spec, stream, pool());
    std::vector<rte_mbuf*> in(burst), out(cap);
    uint32_t next = 0;
    while (next < total) {
      const uint16_t want = std::min<uint16_t>(f.max_input(cap), burst);
      uint16_t nb = 0;
      while (nb < want && next < total) in[nb++] = frame(next++);
      const uint16_t o = f.apply(in.data(), nb, out.data(), cap, &r.counts);
      EXPECT_LE(o, cap);
      for (uint16_t i = 0; i < o; ++i) {
        r.out.push_back(digest(out[i]));
        rte_pktmbuf_free(out[i]);
      }
      r.delivered += o;
    }
    const uint16_t o = f.apply(nullptr, 0, out.data(), cap, &r.counts);  // release a held one
    for (uint16_t i = 0; i < o; ++i) {
      r.out.push_back(digest(out[i]));
      rte_pktmbuf_free(out[i]);
    }
    r.delivered += o;
    EXPECT_FALSE(f.holding());
    return r;
  }
};

TEST_F(FaultTest, DisabledPassesEverythingInOrder) {
  FaultSpec spec;
  FaultInjector f(spec, 0, pool());
  rte_mbuf* in[8];
  rte_mbuf* out[8];
  for (uint32_t i = 0; i < 8; ++i) in[i] = frame(i);
  FaultCounts c;
  ASSERT_EQ(f.apply(in, 8, out, 8, &c), 8);
  for (uint32_t i = 0; i < 8; ++i) {
    EXPECT_EQ(out[i], in[i]);
    EXPECT_EQ(id_of(out[i]), i);
    rte_pktmbuf_free(out[i]);
  }
}

TEST_F(FaultTest, SameSeedSameOutcome) {
  FaultSpec spec{.loss = 0.05, .dup = 0.05, .reorder = 0.05, .corrupt = 0.05, .seed = 1234};
  Run a = run(spec, 7, 5000, 32, 64);
  Run b = run(spec, 7, 5000, 32, 64);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.counts.lost, b.counts.lost);
  EXPECT_EQ(a.counts.duplicated, b.counts.duplicated);
  EXPECT_EQ(a.counts.reordered, b.counts.reordered);
  EXPECT_EQ(a.counts.corrupted, b.counts.corrupted);

  // Another seed, or another queue, decides differently.
  FaultSpec other = spec;
  other.seed = 1235;
  EXPECT_NE(run(other, 7, 5000, 32, 64).out, a.out);
  EXPECT_NE(run(spec, 8, 5000, 32, 64).out, a.out);
}

TEST_F(FaultTest, RatesAreRoughlyTheProbabilities) {
  constexpr uint32_t kFrames = 20000;
  FaultSpec spec{.loss = 0.1, .dup = 0.1, .reorder = 0.1, .corrupt = 0.1, .seed = 99};
  Run r = run(spec, 0, kFrames, 32, 64);
  // Wide bounds (±25 %): statistical, yet exact for this seed and so never flaky.
  EXPECT_GT(r.counts.lost, 1500u);
  EXPECT_LT(r.counts.lost, 2500u);
  EXPECT_GT(r.counts.duplicated, 1350u);  // of the ~90 % not lost
  EXPECT_LT(r.counts.duplicated, 2250u);
  EXPECT_GT(r.counts.reordered, 1350u);
  EXPECT_LT(r.counts.reordered, 2250u);
  EXPECT_GT(r.counts.corrupted, 1350u);
  EXPECT_LT(r.counts.corrupted, 2250u);
  // Conservation: every frame is delivered, lost, or delivered twice.
  EXPECT_EQ(r.delivered, kFrames - r.counts.lost + r.counts.duplicated);
  std::printf("seed 99, 20000 frames: lost %lu dup %lu reordered %lu corrupted %lu\n",
              (unsigned long)r.counts.lost, (unsigned long)r.counts.duplicated,
              (unsigned long)r.counts.reordered, (unsigned long)r.counts.corrupted);
}

TEST_F(FaultTest, HeldFrameIsReleasedByNextFrameOrNextCall) {
  FaultSpec spec{.reorder = 1.0, .seed = 5};
  FaultInjector f(spec, 0, pool());
  rte_mbuf* out[4];
  FaultCounts c;

  // One frame: held back...
  rte_mbuf* a = frame(1);
  EXPECT_EQ(f.apply(&a, 1, out, 4, &c), 0);
  EXPECT_TRUE(f.holding());
  // ...and released by the next call even though nothing new arrived.
  ASSERT_EQ(f.apply(nullptr, 0, out, 4, &c), 1);
  EXPECT_EQ(out[0], a);
  EXPECT_FALSE(f.holding());
  rte_pktmbuf_free(out[0]);

  // Two frames in one burst: the second overtakes the first.
  rte_mbuf* in[2] = {frame(2), frame(3)};
  ASSERT_EQ(f.apply(in, 2, out, 4, &c), 2);
  EXPECT_EQ(id_of(out[0]), 3u);
  EXPECT_EQ(id_of(out[1]), 2u);
  rte_pktmbuf_free_bulk(out, 2);

  // A held frame never blocks the room the caller gave: max_input leaves it a slot.
  rte_mbuf* b = frame(4);
  EXPECT_EQ(f.apply(&b, 1, out, 4, &c), 0);
  EXPECT_EQ(f.max_input(1), 0);
  EXPECT_EQ(f.apply(nullptr, 0, out, 1, &c), 1);
  rte_pktmbuf_free(out[0]);
  EXPECT_EQ(c.reordered, 3u);
}

TEST_F(FaultTest, CorruptFlipsExactlyOneBitAfterEthernetHeader) {
  FaultSpec spec{.corrupt = 1.0, .seed = 77};
  FaultInjector f(spec, 0, pool());
  std::vector<int> hits(64, 0);
  for (uint32_t i = 0; i < 500; ++i) {
    rte_mbuf* m = frame(i);
    uint8_t before[64];
    std::memcpy(before, rte_pktmbuf_mtod(m, uint8_t*), 64);
    rte_mbuf* out;
    FaultCounts c;
    ASSERT_EQ(f.apply(&m, 1, &out, 1, &c), 1);
    ASSERT_EQ(c.corrupted, 1u);
    const auto* after = rte_pktmbuf_mtod(out, const uint8_t*);
    int bits = 0;
    for (int k = 0; k < 64; ++k) {
      const int d = std::popcount(unsigned(before[k] ^ after[k]));
      bits += d;
      if (d) {
        EXPECT_GE(k, 14) << "corrupted the Ethernet header";
        ++hits[size_t(k)];
      }
    }
    EXPECT_EQ(bits, 1);
    rte_pktmbuf_free(out);
  }
  int spread = 0;
  for (int k = 14; k < 64; ++k) spread += hits[size_t(k)] > 0;
  EXPECT_GT(spread, 40);  // positions are spread over the frame

  // A bare Ethernet header has nothing to corrupt: delivered unchanged, not counted.
  rte_mbuf* m = frame(0, 14);
  rte_mbuf* out;
  FaultCounts c;
  ASSERT_EQ(f.apply(&m, 1, &out, 1, &c), 1);
  EXPECT_EQ(c.corrupted, 0u);
  rte_pktmbuf_free(out);
}

TEST_F(FaultTest, CorruptNeverTouchesASharedFrame) {
  // On a loopback port the sender may keep a reference for retransmission.
  FaultSpec spec{.corrupt = 1.0, .seed = 3};
  FaultInjector f(spec, 0, pool());
  rte_mbuf* m = frame(42);
  rte_mbuf_refcnt_update(m, 1);  // the sender's reference
  const uint64_t before = digest(m);
  rte_mbuf* out;
  FaultCounts c;
  ASSERT_EQ(f.apply(&m, 1, &out, 1, &c), 1);
  EXPECT_EQ(c.corrupted, 1u);
  EXPECT_NE(out, m);
  EXPECT_EQ(digest(m), before);
  EXPECT_NE(digest(out), before);
  rte_pktmbuf_free(out);
  rte_pktmbuf_free(m);
}

TEST_F(FaultTest, LossAndDupExtremes) {
  FaultSpec loss{.loss = 1.0};
  Run r = run(loss, 0, 100, 16, 16);
  EXPECT_EQ(r.delivered, 0u);
  EXPECT_EQ(r.counts.lost, 100u);

  FaultSpec dup{.dup = 1.0};
  r = run(dup, 0, 100, 16, 32);
  EXPECT_EQ(r.delivered, 200u);
  EXPECT_EQ(r.counts.duplicated, 100u);
  for (size_t i = 0; i + 1 < r.out.size(); i += 2) EXPECT_EQ(r.out[i], r.out[i + 1]);
}

TEST_F(FaultTest, OutputNeverExceedsCapacity) {
  FaultSpec spec{.dup = 0.9, .reorder = 0.5, .seed = 11};
  for (uint16_t cap : {1, 2, 3, 4, 7}) {
    Run r = run(spec, cap, 300, 64, cap);  // run() checks o <= cap on every call
    EXPECT_EQ(r.delivered, 300u + r.counts.duplicated);
  }
}

}  // namespace
}  // namespace dverbs::pmd::net
