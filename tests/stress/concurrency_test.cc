// Concurrency stress with a dedicated transport lcore (DVERBS_LCORES=1, set by meson):
// several threads post on ONE QP at once, several threads poll ONE CQ at once, and on the
// receiving side one thread keeps posting receives while two others poll the receive CQ
// (core_locking.rst: post_send/post_recv/poll_cq "any, concurrently on one object").
// Asserted: every WR and every receive completes exactly once (a bitmap of wr_ids, set with
// an atomic fetch_or: a bit found already set is a duplicate), with success; no completion
// is lost or invented; each poller sees each posting thread's WRs in the order that thread
// posted them (a CQ delivers in queue order, one poller's pops are increasing); the WRITE
// targets and SEND payloads hold their patterns; no CQ overflowed.
// Every wait is bounded by an iteration count; a stall fails the test.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace dverbs;
using namespace dverbs::stress;

namespace {

constexpr int kPosters = 4;
constexpr int kSendPollers = 3;
constexpr int kRecvPollers = 2;
constexpr uint32_t kPerPoster = 5000;
constexpr uint32_t kTotal = kPosters * kPerPoster;
constexpr uint32_t kSlot = 64;               // bytes per WR: WRITE target / SEND payload
constexpr uint32_t kRecvSlots = 256;         // receive buffers, reused round robin
constexpr long kMaxIdle = 20000000L;         // polls without any progress anywhere

struct Bitmap {
  std::vector<std::atomic<uint64_t>> w;
  explicit Bitmap(size_t bits) : w((bits + 63) / 64) {}
  bool set(uint64_t i) {  // false when already set
    const uint64_t m = 1ull << (i % 64);
    return !(w[i / 64].fetch_or(m, std::memory_order_relaxed) & m);
  }
  size_t count() const {
    size_t n = 0;
    for (auto& x : w) n += size_t(__builtin_popcountll(x.load()));
    return n;
  }
};

// Which of a poster's WRs are SENDs (the rest are WRITEs): every fourth.
bool is_send(uint32_t i) { return i % 4 == 3; }
uint32_t len_of(int t, uint32_t i) { return 8 + (uint32_t(t) * 7 + i) % (kSlot - 7); }
uint64_t seed_of(int t, uint32_t i) { return (uint64_t(t) << 32) | i; }

// A payload: its slot number (8 bytes), then the pattern of its seed.
void fill_payload(uint8_t* p, size_t slot, int t, uint32_t i) {
  const uint64_t id = slot;
  std::memcpy(p, &id, 8);
  fill_pattern(p + 8, len_of(t, i) - 8, seed_of(t, i));
}
bool payload_ok(const uint8_t* p, size_t slot, int t, uint32_t i) {
  uint64_t id;
  std::memcpy(&id, p, 8);
  return id == slot && check_pattern(p + 8, len_of(t, i) - 8, seed_of(t, i)) < 0;
}

TEST(Concurrency, PostersOnOneQpPollersOnOneCq) {
  // meson sets DVERBS_LCORES=1; keep a dedicated lcore when run by hand too.
  setenv("DVERBS_LCORES", "1", 0);
  auto c = Context::open();
  ASSERT_TRUE(c) << std::strerror(c.error());
  Context ctx = c.take();
  ASSERT_FALSE(hca(ctx).inline_progress()) << "expected a dedicated transport lcore";
  Gid gid{};
  ASSERT_EQ(ctx.query_gid(1, 0, &gid), 0);
  Pd pd = Pd::alloc(ctx).take();
  // CQs larger than everything that can complete: an overflow would be a bug, not a race.
  Cq scq = Cq::create(ctx, 2 * kTotal).take();
  Cq rcq = Cq::create(ctx, 2 * kTotal).take();
  Cq bcq = Cq::create(ctx, 64).take();
  QpInit init;
  init.cap = {512, 512, 1, 1, 64};
  Qp a = Qp::create(pd, scq, scq, init).take();
  Qp b = Qp::create(pd, bcq, rcq, init).take();
  Tuning t;
  t.timeout = 14;  // lossless: only a stall would retransmit
  ASSERT_EQ(connect_rc(a, gid, b.qp_num(), 5, 6, Mtu::mtu1024, t), 0);
  ASSERT_EQ(connect_rc(b, gid, a.qp_num(), 6, 5, Mtu::mtu1024, t), 0);

  std::vector<uint8_t> src(size_t(kTotal) * kSlot), dst(size_t(kTotal) * kSlot, 0),
      rbuf(size_t(kRecvSlots) * kSlot, 0);
  for (int p = 0; p < kPosters; p++)
    for (uint32_t i = 0; i < kPerPoster; i++)
      fill_payload(&src[(size_t(p) * kPerPoster + i) * kSlot], size_t(p) * kPerPoster + i, p, i);
  Mr smr = Mr::reg(pd, src.data(), src.size(), 0).take();
  Mr dmr = Mr::reg(pd, dst.data(), dst.size(), kAllAccess).take();
  Mr rmr = Mr::reg(pd, rbuf.data(), rbuf.size(), kAllAccess).take();

  const uint32_t kSends = kTotal / 4;
  Bitmap sent_bits(kTotal), recv_bits(kSends), delivered(kTotal);
  std::atomic<uint64_t> progress{0}, errors{0}, send_done{0}, recv_done{0};
  std::atomic<bool> go{false}, stall{false};
  std::vector<std::string> problems(kPosters + kSendPollers + kRecvPollers + 1);
  auto note = [&](int who, const std::string& s) {
    if (errors.fetch_add(1) < 1 && problems[size_t(who)].empty()) problems[size_t(who)] = s;
  };

  // Receives: one thread keeps the RQ topped up; the payload of a SEND is checked by the
  // poller that sees its completion, before the buffer is handed out again.
  std::atomic<uint64_t> recv_posted{0};
  std::thread receiver([&] {
    while (!go.load()) std::this_thread::yield();
    long idle = 0;
    while (recv_posted.load() < kSends && !stall.load()) {
      const uint64_t n = recv_posted.load();
      if (n - recv_done.load() >= kRecvSlots) {  // every buffer in use
        if (++idle > kMaxIdle) {
          stall = true;
          break;
        }
        std::this_thread::yield();
        continue;
      }
      idle = 0;
      Sge s{reinterpret_cast<uint64_t>(&rbuf[(n % kRecvSlots) * kSlot]), kSlot, rmr.lkey()};
      RecvWr wr{};
      wr.wr_id = n;
      wr.sg_list = &s;
      wr.num_sge = 1;
      RecvWr* bad;
      if (int rc = b.post_recv(&wr, &bad)) {
        note(kPosters + kSendPollers + kRecvPollers, "post_recv: " + std::string(std::strerror(rc)));
        break;
      }
      recv_posted.fetch_add(1);
    }
  });

  std::vector<std::thread> threads;
  for (int p = 0; p < kPosters; p++)
    threads.emplace_back([&, p] {
      while (!go.load()) std::this_thread::yield();
      long idle = 0;
      for (uint32_t i = 0; i < kPerPoster && !stall.load();) {
        const size_t slot = size_t(p) * kPerPoster + i;
        Sge s{reinterpret_cast<uint64_t>(&src[slot * kSlot]), len_of(p, i), smr.lkey()};
        SendWr wr{};
        wr.wr_id = slot;
        wr.sg_list = &s;
        wr.num_sge = 1;
        wr.send_flags = send_flags::signaled | (i % 8 == 0 ? send_flags::inline_data : 0u);
        if (is_send(i)) {
          wr.opcode = WrOpcode::send;
        } else {
          wr.opcode = WrOpcode::rdma_write;
          wr.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(&dst[slot * kSlot]);
          wr.wr.rdma.rkey = dmr.rkey();
        }
        SendWr* bad;
        int rc = a.post_send(&wr, &bad);
        if (rc == ENOMEM) {  // SQ full: never a wait inside the verb, so we wait here
          if (++idle > kMaxIdle) {
            stall = true;
            break;
          }
          std::this_thread::yield();
          continue;
        }
        if (rc) {
          note(p, "post_send: " + std::string(std::strerror(rc)));
          break;
        }
        idle = 0;
        i++;
      }
    });

  // One poller's view: per posting thread, the index of the last WR it saw (in order).
  auto poll_loop = [&](int who, Cq& cq, bool sends) {
    while (!go.load()) std::this_thread::yield();
    std::vector<int64_t> last(kPosters, -1);
    Wc wcs[16];
    long idle = 0;
    uint64_t seen = progress.load();
    while (!stall.load()) {
      if (sends ? send_done.load() == kTotal : recv_done.load() == kSends) break;
      int n = cq.poll(wcs, 16);
      if (n < 0) {
        note(who, "poll: " + std::string(std::strerror(-n)));
        break;
      }
      for (int k = 0; k < n; k++) {
        const Wc& wc = wcs[k];
        if (wc.status != WcStatus::success) {
          note(who, "wr " + std::to_string(wc.wr_id) + ": " + wc_status_str(wc.status));
          continue;
        }
        if (sends) {
          if (wc.wr_id >= kTotal || !sent_bits.set(wc.wr_id)) {
            note(who, "send wr " + std::to_string(wc.wr_id) + " completed twice or never posted");
            continue;
          }
          const int p = int(wc.wr_id / kPerPoster);
          const int64_t i = int64_t(wc.wr_id % kPerPoster);
          if (i <= last[size_t(p)])
            note(who, "poster " + std::to_string(p) + ": wr " + std::to_string(i) + " after " +
                          std::to_string(last[size_t(p)]));
          last[size_t(p)] = i;
          send_done.fetch_add(1);
        } else {
          if (wc.wr_id >= kSends || !recv_bits.set(wc.wr_id)) {
            note(who, "recv " + std::to_string(wc.wr_id) + " completed twice or never posted");
            continue;
          }
          // Posters interleave, so the payload names its SEND; each is delivered once.
          const uint8_t* buf = &rbuf[(wc.wr_id % kRecvSlots) * kSlot];
          uint64_t slot = ~0ull;
          if (wc.byte_len >= 8) std::memcpy(&slot, buf, 8);
          const int p = int(slot / kPerPoster);
          const uint32_t i = uint32_t(slot % kPerPoster);
          if (slot >= kTotal || !is_send(i) || wc.byte_len != len_of(p, i) ||
              !payload_ok(buf, slot, p, i))
            note(who, "recv " + std::to_string(wc.wr_id) + ": payload matches no SEND");
          else if (!delivered.set(slot))
            note(who, "SEND " + std::to_string(slot) + " delivered twice");
          recv_done.fetch_add(1);
        }
        progress.fetch_add(1);
      }
      if (n == 0) {
        const uint64_t now = progress.load();
        if (now != seen) {
          seen = now;
          idle = 0;
        } else if (++idle > kMaxIdle) {
          stall = true;
        }
        std::this_thread::yield();
      } else {
        idle = 0;
      }
    }
  };
  for (int m = 0; m < kSendPollers; m++)
    threads.emplace_back([&, m] { poll_loop(kPosters + m, scq, true); });
  for (int m = 0; m < kRecvPollers; m++)
    threads.emplace_back([&, m] { poll_loop(kPosters + kSendPollers + m, rcq, false); });

  go = true;
  for (auto& th : threads) th.join();
  receiver.join();
  for (auto& s : problems)
    if (!s.empty()) ADD_FAILURE() << s;
  ASSERT_FALSE(stall.load()) << "stalled: " << send_done.load() << "/" << kTotal
                             << " sends, " << recv_done.load() << "/" << kSends << " receives";
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_EQ(sent_bits.count(), size_t(kTotal));
  EXPECT_EQ(recv_bits.count(), size_t(kSends));
  EXPECT_EQ(delivered.count(), size_t(kSends));
  EXPECT_EQ(poll_extra(scq, 100000), 0) << "extra send completions";
  EXPECT_EQ(poll_extra(rcq, 100000), 0) << "extra receive completions";
  EXPECT_EQ(hca(ctx).counters().cq_overflow.load(), 0u);
  // WRITE targets.
  size_t bad_writes = 0;
  for (int p = 0; p < kPosters; p++)
    for (uint32_t i = 0; i < kPerPoster; i++) {
      const size_t slot = size_t(p) * kPerPoster + i;
      if (!is_send(i) && !payload_ok(&dst[slot * kSlot], slot, p, i)) bad_writes++;
    }
  EXPECT_EQ(bad_writes, 0u);
  EXPECT_EQ(a.state(), QpState::rts);
  std::printf("[stress] concurrency: %d posters x %u WRs on one QP, %d + %d pollers, 1 lcore: "
              "%u sends + %u receives completed exactly once; retransmissions %llu, RNR NAKs %llu\n",
              kPosters, kPerPoster, kSendPollers, kRecvPollers, kTotal, kSends,
              (unsigned long long)hqp(a).retransmits.load(),
              (unsigned long long)hqp(a).rnr_naks_rcvd.load());
}

}  // namespace
