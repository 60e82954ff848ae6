// Lifecycle races (suite `stress`, also under ASan and TSan), registered twice: inline
// progress (DVERBS_LCORES=0) and one dedicated transport lcore (DVERBS_LCORES=1), where the
// lcore runs the QPs concurrently with every destroy below.
//
// - A QP destroyed while its retransmission and RNR timers are armed and its packets (and
//   its peer's ACKs/NAKs) are in flight on the port: the destroy returns, nothing touches
//   the freed QP afterwards (ASan), the peer's frames for it are dropped.
// - CQs and SRQs polled and posted to by other threads while the QPs using them are
//   destroyed: Cq::destroy / Srq::destroy return EBUSY while a QP uses them (and the object
//   keeps working), 0 once the QPs are gone and the other threads stopped (the allowed
//   order; destroying an object another thread is inside is a use-after-free by contract).
//   SRQ resizing while posters run: refused (EOPNOTSUPP) or a no-op, never a crash.
// - Everything (QPs, CQs, MRs whose buffers are freed right after, PD) destroyed while
//   traffic is still being processed.
// After each test a fresh pair still exchanges a SEND.
#include <atomic>
#include <memory>
#include <thread>

#include "common.h"
#include "midlayer/core.h"

namespace dverbs::lifecycle {
namespace {

struct Side {
  Cq cq;
  Qp qp;
  std::vector<uint8_t> buf;
  Mr mr;
};

void make_side(World& w, Side& s, size_t bytes, const Srq* srq = nullptr, Cq* shared = nullptr) {
  if (!shared) s.cq = Cq::create(w.ctx, 1024).take();
  Cq& cq = shared ? *shared : s.cq;
  QpInit init;
  init.cap = {64, 64, 1, 1, 0};
  init.srq = srq;
  auto q = Qp::create(w.pd, cq, cq, init);
  ASSERT_TRUE(q) << std::strerror(q.error());
  s.qp = q.take();
  s.buf.assign(bytes, 0);
  s.mr = Mr::reg(w.pd, s.buf.data(), bytes, kAll).take();
}

SendWr wr(WrOpcode op, Sge* s, uint64_t id) {
  SendWr w{};
  w.wr_id = id;
  w.opcode = op;
  w.sg_list = s;
  w.num_sge = 1;
  w.send_flags = send_flags::signaled;
  return w;
}

TEST(Lifecycle, QpDestroyedWithTimersArmedAndPacketsInFlight) {
  World& w = World::get();
  Timers t;
  t.timeout = 1;        // 8 us: the retransmission timer is armed and fires constantly
  t.min_rnr_timer = 1;  // 10 us RNR timer
  for (int round = 0; round < 60; round++) {
    SCOPED_TRACE(round);
    Side a, b;
    ASSERT_NO_FATAL_FAILURE(make_side(w, a, 1 << 20));
    ASSERT_NO_FATAL_FAILURE(make_side(w, b, 1 << 20));
    ASSERT_EQ(connect_rc(a.qp, w.gid, b.qp.qp_num(), 10, 20, t), 0);
    ASSERT_EQ(connect_rc(b.qp, w.gid, a.qp.qp_num(), 20, 10, t), 0);
    // WRITEs of 64 KiB (64 packets each) and READs keep packets in flight; a SEND with no
    // receive at B arms A's RNR timer; B's own SEND to A arms B's.
    for (uint64_t i = 0; i < 4; i++) {
      Sge s{reinterpret_cast<uint64_t>(a.buf.data()) + i * 65536, 65536, a.mr.lkey()};
      SendWr x = wr(i % 2 ? WrOpcode::rdma_read : WrOpcode::rdma_write, &s, i);
      x.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(b.buf.data()) + i * 65536;
      x.wr.rdma.rkey = b.mr.rkey();
      SendWr* bad;
      ASSERT_EQ(a.qp.post_send(&x, &bad), 0);
    }
    Sge s{reinterpret_cast<uint64_t>(a.buf.data()), 64, a.mr.lkey()};
    SendWr send = wr(WrOpcode::send, &s, 9);
    SendWr* bad;
    ASSERT_EQ(a.qp.post_send(&send, &bad), 0);
    Sge sb{reinterpret_cast<uint64_t>(b.buf.data()), 64, b.mr.lkey()};
    SendWr send_b = wr(WrOpcode::send, &sb, 10);
    ASSERT_EQ(b.qp.post_send(&send_b, &bad), 0);
    // Let the transport run a little, a different amount each round.
    Wc wc[16];
    for (int i = 0; i < round % 7 * 5; i++) {
      a.cq.poll(wc, 16);
      b.cq.poll(wc, 16);
    }
    if (round % 2) {
      EXPECT_EQ(a.qp.destroy(), 0);
      for (int i = 0; i < round % 3 * 10; i++) b.cq.poll(wc, 16);  // B keeps talking to A
      EXPECT_EQ(b.qp.destroy(), 0);
    } else {
      EXPECT_EQ(b.qp.destroy(), 0);
      for (int i = 0; i < round % 3 * 10; i++) a.cq.poll(wc, 16);  // A retransmits to nobody
      EXPECT_EQ(a.qp.destroy(), 0);
    }
    // Buffers and registrations go with the sides, at once.
  }
  EXPECT_TRUE(device_still_works());
}

TEST(Lifecycle, CqAndSrqOutliveTheirQpsWhileOtherThreadsPollAndPost) {
  World& w = World::get();
  for (int round = 0; round < 8; round++) {
    SCOPED_TRACE(round);
    auto s = Srq::create(w.pd, 256, 1);
    ASSERT_TRUE(s);
    Srq srq = s.take();
    Cq scq = Cq::create(w.ctx, 4096).take();
    Cq rcq = Cq::create(w.ctx, 4096).take();
    constexpr int kPairs = 4;
    std::vector<Side> tx(kPairs), rx(kPairs);
    for (int i = 0; i < kPairs; i++) {
      ASSERT_NO_FATAL_FAILURE(make_side(w, tx[size_t(i)], 1 << 16, nullptr, &scq));
      ASSERT_NO_FATAL_FAILURE(make_side(w, rx[size_t(i)], 1 << 16, &srq, &rcq));
    }
    for (int i = 0; i < kPairs; i++) {
      ASSERT_EQ(connect_rc(tx[size_t(i)].qp, w.gid, rx[size_t(i)].qp.qp_num(), 1, 2), 0);
      ASSERT_EQ(connect_rc(rx[size_t(i)].qp, w.gid, tx[size_t(i)].qp.qp_num(), 2, 1), 0);
    }
    std::vector<uint8_t> rbuf(1 << 16);
    Mr rmr = Mr::reg(w.pd, rbuf.data(), rbuf.size(), kAll).take();
    std::atomic<bool> stop_posting{false}, stop_polling{false};
    std::atomic<uint64_t> polled{0}, posted{0};
    std::thread poster([&] {
      Sge r{reinterpret_cast<uint64_t>(rbuf.data()), 256, rmr.lkey()};
      RecvWr rw{};
      rw.sg_list = &r;
      rw.num_sge = 1;
      RecvWr* bad;
      for (long i = 0; i < 200'000'000L && !stop_posting.load(); i++) {
        int rc = srq.post_recv(&rw, &bad);
        EXPECT_TRUE(rc == 0 || rc == ENOMEM) << rc;
        if (rc == 0) posted++;
        // Resizing a live SRQ is not supported: refused, never harmful.
        if (i % 64 == 0) {
          int m = mid::modify_srq(srq.raw(), 1024, 0, 1);
          EXPECT_TRUE(m == 0 || m == EOPNOTSUPP) << m;
        }
      }
    });
    std::vector<std::thread> pollers;
    for (Cq* cq : {&rcq, &rcq, &scq}) {
      pollers.emplace_back([&, cq] {
        Wc wc[8];
        for (long i = 0; i < 400'000'000L && !stop_polling.load(); i++) {
          int n = cq->poll(wc, 8);
          EXPECT_GE(n, 0);
          if (n > 0) polled += uint64_t(n);
        }
      });
    }
    for (long i = 0; i < 2'000'000'000L && posted.load() < 16; i++) std::this_thread::yield();
    ASSERT_GE(posted.load(), 16u) << "the SRQ poster never ran";
    // Traffic, and destroy attempts in the disallowed order while it flows.
    for (int m = 0; m < 64; m++) {
      Side& t = tx[size_t(m % kPairs)];
      Sge sg{reinterpret_cast<uint64_t>(t.buf.data()), 128, t.mr.lkey()};
      SendWr x = wr(WrOpcode::send, &sg, uint64_t(m));
      SendWr* bad;
      int rc = t.qp.post_send(&x, &bad);
      EXPECT_TRUE(rc == 0 || rc == ENOMEM) << rc;
      if (m % 16 == 0) {
        EXPECT_EQ(rcq.destroy(), EBUSY);
        EXPECT_EQ(scq.destroy(), EBUSY);
        EXPECT_EQ(srq.destroy(), EBUSY);
      }
    }
    // The allowed order: QPs first (pollers and the SRQ poster still running) …
    for (int i = 0; i < kPairs; i++) {
      EXPECT_EQ(rx[size_t(i)].qp.destroy(), 0);
      EXPECT_EQ(tx[size_t(i)].qp.destroy(), 0);
    }
    // … then the SRQ once nobody posts to it, the CQs once nobody polls them.
    stop_posting = true;
    poster.join();
    EXPECT_EQ(srq.destroy(), 0);
    stop_polling = true;
    for (auto& p : pollers) p.join();
    EXPECT_EQ(rcq.destroy(), 0);
    EXPECT_EQ(scq.destroy(), 0);
  }
  EXPECT_TRUE(device_still_works());
}

TEST(Lifecycle, EverythingDestroyedWithTrafficStillBeingProcessed) {
  World& w = World::get();
  for (int round = 0; round < 20; round++) {
    SCOPED_TRACE(round);
    Pd pd = Pd::alloc(w.ctx).take();
    constexpr int kPairs = 6;
    std::vector<Cq> cqs;
    std::vector<Qp> qps;
    std::vector<std::unique_ptr<std::vector<uint8_t>>> bufs;
    std::vector<Mr> mrs;
    for (int i = 0; i < 2 * kPairs; i++) {
      cqs.push_back(Cq::create(w.ctx, 1024).take());
      QpInit init;
      init.cap = {64, 64, 1, 1, 0};
      qps.push_back(Qp::create(pd, cqs.back(), cqs.back(), init).take());
      bufs.push_back(std::make_unique<std::vector<uint8_t>>(1 << 18, uint8_t(i)));
      mrs.push_back(Mr::reg(pd, bufs.back()->data(), bufs.back()->size(), kAll).take());
    }
    Timers t;
    t.timeout = 4;
    for (int i = 0; i < kPairs; i++) {
      ASSERT_EQ(connect_rc(qps[size_t(2 * i)], w.gid, qps[size_t(2 * i + 1)].qp_num(), 5, 6, t), 0);
      ASSERT_EQ(connect_rc(qps[size_t(2 * i + 1)], w.gid, qps[size_t(2 * i)].qp_num(), 6, 5, t), 0);
    }
    for (int i = 0; i < 2 * kPairs; i++) {
      auto* b = bufs[size_t(i)].get();
      auto* peer = bufs[size_t(i ^ 1)].get();
      for (uint64_t k = 0; k < 8; k++) {
        Sge r{reinterpret_cast<uint64_t>(b->data()) + 0x20000 + k * 1024, 1024,
              mrs[size_t(i)].lkey()};
        RecvWr rw{};
        rw.sg_list = &r;
        rw.num_sge = 1;
        RecvWr* rbad;
        ASSERT_EQ(qps[size_t(i)].post_recv(&rw, &rbad), 0);
      }
      for (uint64_t k = 0; k < 12; k++) {
        Sge s{reinterpret_cast<uint64_t>(b->data()) + k * 8192, 8192, mrs[size_t(i)].lkey()};
        WrOpcode op = k % 3 == 0 ? WrOpcode::rdma_write : k % 3 == 1 ? WrOpcode::rdma_read
                                                                     : WrOpcode::send;
        if (op == WrOpcode::send) s.length = 1024;
        SendWr x = wr(op, &s, k);
        x.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(peer->data()) + k * 8192;
        x.wr.rdma.rkey = mrs[size_t(i ^ 1)].rkey();
        SendWr* bad;
        ASSERT_EQ(qps[size_t(i)].post_send(&x, &bad), 0);
      }
    }
    // Tear down at once, in an order that changes with the round; each buffer is freed as
    // soon as its registration is gone (an engine still copying into it is a use after free).
    for (int i = 0; i < 2 * kPairs; i++) {
      int k = (i * 5 + round) % (2 * kPairs);
      EXPECT_EQ(qps[size_t(k)].destroy(), 0);
    }
    for (int i = 0; i < 2 * kPairs; i++) {
      EXPECT_EQ(mrs[size_t(i)].destroy(), 0);
      bufs[size_t(i)].reset();
      EXPECT_EQ(cqs[size_t(i)].destroy(), 0);
    }
    EXPECT_EQ(pd.destroy(), 0);
  }
  EXPECT_TRUE(device_still_works());
}

}  // namespace
}  // namespace dverbs::lifecycle
