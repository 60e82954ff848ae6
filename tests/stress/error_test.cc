// RC error paths end to end on the loopback port (IBA 9.7.5.2.8, 9.7.6.1.3, 10.3.1):
// - a dead peer — a QPN that does not exist, or (DVERBS_FAULT=loss=1, its own meson
//   registration) a peer whose every frame is lost — yields IBV_WC_RETRY_EXC_ERR after
//   exactly retry_cnt retransmissions, then every WR already posted and every WR posted
//   afterwards completes in order with IBV_WC_WR_FLUSH_ERR, receives too;
// - a receiver with no posted receive makes the sender's SEND (or WRITE with immediate) end
//   in IBV_WC_RNR_RETRY_EXC_ERR after exactly rnr_retry retries, i.e. rnr_retry + 1 RNR NAKs
//   (the first try plus each retry is NAKed), then flush; the receiver stays in RTS;
// - rnr_retry = 7 retries forever: a receive posted late (after a few NAKs) lets the SEND
//   succeed with its data intact.
// Every wait is bounded by an iteration count.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "harness.h"

using namespace dverbs;
using namespace dverbs::stress;

namespace {

struct Env : ::testing::Environment {
  void SetUp() override { setenv("DVERBS_LCORES", "0", 1); }  // inline progress, before open
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

constexpr long kSpins = 50000000L;

struct Side {
  Cq cq;
  Qp qp;
  std::vector<uint8_t> buf;
  Mr mr;
};

struct Fixture {
  Context ctx;
  Pd pd;
  Gid gid{};
  Side a, b;

  void open() {
    auto c = Context::open();
    ASSERT_TRUE(c) << std::strerror(c.error());
    ctx = c.take();
    ASSERT_EQ(ctx.query_gid(1, 0, &gid), 0);
    pd = Pd::alloc(ctx).take();
    for (Side* s : {&a, &b}) {
      s->cq = Cq::create(ctx, 256).take();
      QpInit init;
      init.cap = {32, 32, 1, 1, 0};
      auto q = Qp::create(pd, s->cq, s->cq, init);
      ASSERT_TRUE(q) << std::strerror(q.error());
      s->qp = q.take();
      s->buf.assign(1 << 20, 0);
      s->mr = Mr::reg(pd, s->buf.data(), s->buf.size(), kAllAccess).take();
    }
  }
  uint64_t addr(Side& s, size_t off = 0) { return reinterpret_cast<uint64_t>(s.buf.data()) + off; }

  int post(Side& s, WrOpcode op, uint64_t id, uint32_t len, Side* remote = nullptr) {
    Sge sg{addr(s), len, s.mr.lkey()};
    SendWr wr{};
    wr.wr_id = id;
    wr.opcode = op;
    wr.sg_list = &sg;
    wr.num_sge = len ? 1 : 0;
    wr.send_flags = send_flags::signaled;
    if (remote) {
      wr.wr.rdma.remote_addr = addr(*remote, 4096);
      wr.wr.rdma.rkey = remote->mr.rkey();
    }
    SendWr* bad;
    return s.qp.post_send(&wr, &bad);
  }
  void post_recv(Side& s, uint64_t id, uint32_t len, size_t off = 0) {
    Sge sg{addr(s, off), len, s.mr.lkey()};
    RecvWr wr{};
    wr.wr_id = id;
    wr.sg_list = &sg;
    wr.num_sge = 1;
    RecvWr* bad;
    ASSERT_EQ(s.qp.post_recv(&wr, &bad), 0);
  }
};

// Polls the next completion; a hang becomes a failure with status general_err.
Wc next(Cq& cq) {
  Wc wc{};
  if (!poll_one(cq, &wc, kSpins)) {
    ADD_FAILURE() << "no completion";
    wc.status = WcStatus::general_err;
  }
  return wc;
}

// ---------------------------------------------------------------- dead peer

class DeadPeer : public ::testing::TestWithParam<int> {};

TEST_P(DeadPeer, RetryExceededAfterRetryCntThenEveryWrFlushesInOrder) {
  const int retry_cnt = GetParam();
  Fixture f;
  f.open();
  auto& dev = hca(f.ctx);
  const bool total_loss = dev.config().fault.loss >= 1.0;
  Tuning t;
  t.timeout = 8;  // ~1 ms
  t.retry_cnt = uint8_t(retry_cnt);
  // With 100 % loss the peer is a real QP that never hears anything; otherwise the peer's
  // QPN does not exist and the device drops every request (rx_no_qp).
  const uint32_t peer = total_loss ? f.b.qp.qp_num() : 0xfedcb;
  if (!total_loss) {
    ASSERT_EQ(dev.qp_lookup(peer), nullptr) << "QPN " << peer << " exists";
  }
  ASSERT_EQ(connect_rc(f.a.qp, f.gid, peer, 100, 200, Mtu::mtu1024, t), 0);
  if (total_loss) {
    ASSERT_EQ(connect_rc(f.b.qp, f.gid, f.a.qp.qp_num(), 200, 100, Mtu::mtu1024, t), 0);
  }
  const uint64_t noqp0 = dev.counters().rx_no_qp, lost0 = dev.port().stats().fault_lost;

  for (uint64_t r = 0; r < 3; r++) f.post_recv(f.a, 1000 + r, 64);
  // A multi-packet SEND, a WRITE, a READ, an atomic and a zero-length SEND.
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 0, 3000), 0);
  ASSERT_EQ(f.post(f.a, WrOpcode::rdma_write, 1, 100, &f.b), 0);
  ASSERT_EQ(f.post(f.a, WrOpcode::rdma_read, 2, 100, &f.b), 0);
  {
    Sge sg{f.addr(f.a), 8, f.a.mr.lkey()};
    SendWr wr{};
    wr.wr_id = 3;
    wr.opcode = WrOpcode::atomic_fetch_and_add;
    wr.sg_list = &sg;
    wr.num_sge = 1;
    wr.send_flags = send_flags::signaled;
    wr.wr.atomic.remote_addr = f.addr(f.b, 64);
    wr.wr.atomic.rkey = f.b.mr.rkey();
    wr.wr.atomic.compare_add = 1;
    SendWr* bad;
    ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  }
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 4, 0), 0);

  Wc wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 0u);
  ASSERT_EQ(wc.status, WcStatus::retry_exc_err) << wc_status_str(wc.status);
  EXPECT_EQ(wc.qp_num, f.a.qp.qp_num());
  EXPECT_EQ(f.a.qp.state(), QpState::err);
  // The first transmission plus exactly retry_cnt retransmissions (one go-back-N each).
  EXPECT_EQ(hqp(f.a.qp).retransmits.load(), uint64_t(retry_cnt));
  if (total_loss) {
    EXPECT_GE(dev.port().stats().fault_lost - lost0, uint64_t(retry_cnt + 1));
  } else {
    EXPECT_GE(dev.counters().rx_no_qp - noqp0, uint64_t(retry_cnt + 1));
  }

  // Posted after the error: flushed too, after the ones already queued.
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 5, 10), 0);
  ASSERT_EQ(f.post(f.a, WrOpcode::rdma_write, 6, 10, &f.b), 0);
  std::vector<uint64_t> sends, recvs;
  for (int i = 0; i < 6 + 3; i++) {
    wc = next(f.a.cq);
    if (wc.status == WcStatus::general_err) break;
    EXPECT_EQ(wc.status, WcStatus::wr_flush_err) << "wr " << wc.wr_id;
    (wc.wr_id >= 1000 ? recvs : sends).push_back(wc.wr_id);
  }
  EXPECT_EQ(sends, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(recvs, (std::vector<uint64_t>{1000, 1001, 1002}));
  // A receive posted in ERR is flushed as well.
  f.post_recv(f.a, 1003, 64);
  wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 1003u);
  EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
  EXPECT_EQ(poll_extra(f.a.cq, 100000), 0) << "a WR completed twice";
  if (total_loss) {
    EXPECT_EQ(poll_extra(f.b.cq, 1000), 0);
  }
  std::printf("[stress] dead peer (%s), retry_cnt %d: RETRY_EXC_ERR after %llu retransmissions, "
              "6 WRs + 4 receives flushed in order\n",
              total_loss ? "100 % loss" : "nonexistent QPN", retry_cnt,
              (unsigned long long)hqp(f.a.qp).retransmits.load());
}

INSTANTIATE_TEST_SUITE_P(RetryCnt, DeadPeer, ::testing::Values(0, 3, 7));

// ---------------------------------------------------------------- RNR

struct RnrCase {
  int rnr_retry;
  WrOpcode op;
};

class Rnr : public ::testing::TestWithParam<RnrCase> {};

TEST_P(Rnr, NoReceivePostedExhaustsRnrRetryThenFlushes) {
  const RnrCase c = GetParam();
  Fixture f;
  f.open();
  if (hca(f.ctx).config().fault.enabled()) GTEST_SKIP() << "needs a lossless port";
  Tuning t;
  t.rnr_retry = uint8_t(c.rnr_retry);
  t.min_rnr_timer = 1;  // 10 us, the smallest
  ASSERT_EQ(connect_rc(f.a.qp, f.gid, f.b.qp.qp_num(), 1, 2, Mtu::mtu1024, t), 0);
  ASSERT_EQ(connect_rc(f.b.qp, f.gid, f.a.qp.qp_num(), 2, 1, Mtu::mtu1024, t), 0);

  ASSERT_EQ(f.post(f.a, c.op, 7, 2500, &f.b), 0);  // 3 packets: NAKed at the first
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 8, 10), 0);
  Wc wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 7u);
  ASSERT_EQ(wc.status, WcStatus::rnr_retry_exc_err) << wc_status_str(wc.status);
  // The first try and each of the rnr_retry retries are NAKed.
  EXPECT_EQ(hqp(f.a.qp).rnr_naks_rcvd.load(), uint64_t(c.rnr_retry + 1));
  EXPECT_EQ(f.a.qp.state(), QpState::err);
  wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 8u);
  EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 9, 10), 0);
  wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 9u);
  EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
  EXPECT_EQ(poll_extra(f.a.cq, 100000), 0);
  // RNR is not an error of the responder: it stays usable and consumed nothing.
  EXPECT_EQ(f.b.qp.state(), QpState::rts);
  EXPECT_EQ(poll_extra(f.b.cq, 1000), 0);
}

INSTANTIATE_TEST_SUITE_P(Retries, Rnr,
                         ::testing::Values(RnrCase{0, WrOpcode::send}, RnrCase{1, WrOpcode::send},
                                           RnrCase{3, WrOpcode::send},
                                           RnrCase{3, WrOpcode::send_with_imm},
                                           RnrCase{3, WrOpcode::rdma_write_with_imm}));

TEST(RnrInfinite, ReceivePostedLateLetsTheSendSucceed) {
  Fixture f;
  f.open();
  if (hca(f.ctx).config().fault.enabled()) GTEST_SKIP() << "needs a lossless port";
  Tuning t;
  t.rnr_retry = 7;  // forever
  t.min_rnr_timer = 1;
  ASSERT_EQ(connect_rc(f.a.qp, f.gid, f.b.qp.qp_num(), 1, 2, Mtu::mtu1024, t), 0);
  ASSERT_EQ(connect_rc(f.b.qp, f.gid, f.a.qp.qp_num(), 2, 1, Mtu::mtu1024, t), 0);
  fill_pattern(f.a.buf.data(), 5000, 77);
  ASSERT_EQ(f.post(f.a, WrOpcode::send, 1, 5000), 0);
  // Wait (bounded) for a few RNR NAKs; nothing may complete meanwhile.
  Wc wc{};
  long spins = 0;
  while (hqp(f.a.qp).rnr_naks_rcvd.load() < 50 && spins < kSpins) {
    ASSERT_EQ(f.a.cq.poll(&wc, 1), 0) << "completed without a receive: "
                                      << wc_status_str(wc.status);
    spins++;
  }
  ASSERT_GE(hqp(f.a.qp).rnr_naks_rcvd.load(), 50u) << "no RNR NAKs";
  EXPECT_EQ(f.a.qp.state(), QpState::rts);
  f.post_recv(f.b, 2, 8192, 100000);
  wc = next(f.a.cq);
  EXPECT_EQ(wc.wr_id, 1u);
  EXPECT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
  wc = next(f.b.cq);
  EXPECT_EQ(wc.wr_id, 2u);
  ASSERT_EQ(wc.status, WcStatus::success);
  EXPECT_EQ(wc.byte_len, 5000u);
  EXPECT_EQ(check_pattern(f.b.buf.data() + 100000, 5000, 77), -1);
  std::printf("[stress] rnr_retry 7: SEND succeeded after %llu RNR NAKs\n",
              (unsigned long long)hqp(f.a.qp).rnr_naks_rcvd.load());
}

}  // namespace
