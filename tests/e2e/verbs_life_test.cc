// The CQ and queue life cycle through the drop-in (issue 18 §3), run by verbs_modes.sh
// embedded and as a dverbsd client: ibv_resize_cq keeps the completions present and loses
// or duplicates none while traffic flows, refuses fewer than are present and more than
// max_cqe; the capacities create and query report are exactly what fits (the WR beyond a
// cap gets ENOMEM with bad_wr at it; completion cqe + 1 overruns the CQ).
#include <arpa/inet.h>
#include <poll.h>

#include <atomic>
#include <thread>

#include "verbs_loop.h"

namespace {

using verbs_loop::addr_of;
using verbs_loop::RcPair;

constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

class Life : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx = verbs_loop::open_dverbs();
    ASSERT_NE(ctx, nullptr) << "the loaded libibverbs is not dverbs";
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    ASSERT_EQ(ibv_query_device(ctx, &dev), 0);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    buf.assign(1 << 16, 0);
    mr = ibv_reg_mr(pd, buf.data(), buf.size(), kAccess);
    ASSERT_NE(mr, nullptr);
    cq = ibv_create_cq(ctx, 256, nullptr, nullptr, 0);
    ASSERT_NE(cq, nullptr);
  }
  void TearDown() override {
    for (auto it = qps.rbegin(); it != qps.rend(); ++it) EXPECT_EQ(ibv_destroy_qp(*it), 0);
    for (ibv_cq* c : cqs) EXPECT_EQ(ibv_destroy_cq(c), 0);
    if (cq) ibv_destroy_cq(cq);
    if (mr) ibv_dereg_mr(mr);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_cq* make_cq(int cqe) {
    ibv_cq* c = ibv_create_cq(ctx, cqe, nullptr, nullptr, 0);
    if (c) cqs.insert(cqs.begin(), c);  // destroyed after the QPs
    return c;
  }
  ibv_qp* make_qp(ibv_cq* scq, ibv_cq* rcq, ibv_qp_cap cap, ibv_srq* srq = nullptr) {
    ibv_qp_init_attr init{};
    init.send_cq = scq;
    init.recv_cq = rcq;
    init.srq = srq;
    init.qp_type = IBV_QPT_RC;
    init.cap = cap;
    ibv_qp* q = ibv_create_qp(pd, &init);
    if (q) {
      qps.push_back(q);
      last_cap = init.cap;
    }
    return q;
  }
  void to_init(ibv_qp* q) {
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_INIT;
    at.port_num = 1;
    at.qp_access_flags = kAccess;
    ASSERT_EQ(
        ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
        0);
  }
  void connect(ibv_qp* q, uint32_t dqpn) { verbs_loop::connect_rc(q, dqpn, gid, kAccess, 4); }
  ibv_qp* writes_into(ibv_cq* scq, uint32_t n, bool last_with_imm = false);

  // A chain of `n` WRs, wr_id = index, each one SGE of 8 bytes at a distinct offset.
  struct Chain {
    std::vector<ibv_sge> sge;
    std::vector<ibv_recv_wr> recv;
    std::vector<ibv_send_wr> send;
  };
  Chain chain(uint32_t n, ibv_wr_opcode op = IBV_WR_RDMA_WRITE) {
    Chain c;
    c.sge.resize(n);
    c.recv.resize(n);
    c.send.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      c.sge[i] = ibv_sge{addr_of(buf.data() + 8 * (i % 4096)), 8, mr->lkey};
      c.recv[i].wr_id = c.send[i].wr_id = i;
      c.recv[i].sg_list = c.send[i].sg_list = &c.sge[i];
      c.recv[i].num_sge = c.send[i].num_sge = 1;
      c.recv[i].next = i + 1 < n ? &c.recv[i + 1] : nullptr;
      c.send[i].next = i + 1 < n ? &c.send[i + 1] : nullptr;
      c.send[i].opcode = op;
      c.send[i].send_flags = IBV_SEND_SIGNALED;
      c.send[i].wr.rdma.remote_addr = addr_of(buf.data() + 32768 + 8 * (i % 4096));
      c.send[i].wr.rdma.rkey = mr->rkey;
    }
    return c;
  }

  ibv_context* ctx = nullptr;
  ibv_device_attr dev{};
  ibv_gid gid{};
  ibv_pd* pd = nullptr;
  ibv_mr* mr = nullptr;
  ibv_cq* cq = nullptr;
  std::vector<ibv_cq*> cqs;
  std::vector<ibv_qp*> qps;
  ibv_qp_cap last_cap{};
  std::vector<uint8_t> buf;
};

// ---------------------------------------------------------------- exact capacities

// create_qp writes back what fits, query_qp says the same, and an empty RQ takes exactly
// cap.max_recv_wr receives: the next one is ENOMEM with bad_wr at it.
TEST_F(Life, RecvQueueCapIsExact) {
  ibv_qp* q = make_qp(cq, cq, ibv_qp_cap{10, 10, 1, 1, 0});
  ASSERT_NE(q, nullptr);
  const ibv_qp_cap cap = last_cap;
  EXPECT_EQ(cap.max_send_wr, 10u);  // granted as asked (lib/pmd/hca/ops.cc create_qp)
  EXPECT_EQ(cap.max_recv_wr, 10u);
  ibv_qp_attr at{};
  ibv_qp_init_attr ia{};
  ASSERT_EQ(ibv_query_qp(q, &at, IBV_QP_CAP, &ia), 0);
  EXPECT_EQ(at.cap.max_send_wr, cap.max_send_wr);
  EXPECT_EQ(at.cap.max_recv_wr, cap.max_recv_wr);
  EXPECT_EQ(at.cap.max_send_sge, cap.max_send_sge);
  EXPECT_EQ(at.cap.max_recv_sge, cap.max_recv_sge);
  EXPECT_EQ(at.cap.max_inline_data, cap.max_inline_data);
  ASSERT_NO_FATAL_FAILURE(to_init(q));
  Chain c = chain(cap.max_recv_wr + 1);
  ibv_recv_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_recv(q, c.recv.data(), &bad), ENOMEM);
  EXPECT_EQ(bad, &c.recv[cap.max_recv_wr]);
  // Still full a moment later (nothing consumes the receives of a QP in INIT).
  EXPECT_TRUE(verbs_loop::stays_empty(cq));
  ibv_recv_wr one = c.recv[0];
  one.next = nullptr;
  EXPECT_EQ(ibv_post_recv(q, &one, &bad), ENOMEM);
}

// A QP in RTS whose peer is only in INIT gets no ACK: nothing completes, and the SQ takes
// exactly cap.max_send_wr WRs.
TEST_F(Life, SendQueueCapIsExact) {
  ibv_cq* scq = make_cq(64);
  ASSERT_NE(scq, nullptr);
  ibv_qp* peer = make_qp(cq, cq, ibv_qp_cap{1, 1, 1, 1, 0});
  ibv_qp* q = make_qp(scq, cq, ibv_qp_cap{5, 1, 1, 1, 0});
  ASSERT_TRUE(peer && q);
  const ibv_qp_cap cap = last_cap;
  ASSERT_NO_FATAL_FAILURE(to_init(peer));
  ASSERT_NO_FATAL_FAILURE(connect(q, peer->qp_num));
  Chain c = chain(cap.max_send_wr + 1);
  ibv_send_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_send(q, c.send.data(), &bad), ENOMEM);
  EXPECT_EQ(bad, &c.send[cap.max_send_wr]);
  ibv_send_wr one = c.send[0];
  one.next = nullptr;
  EXPECT_EQ(ibv_post_send(q, &one, &bad), ENOMEM);
}

// create_srq writes back what fits, query_srq says the same, and an SRQ no QP takes from
// holds exactly that many receives.
TEST_F(Life, SrqCapIsExact) {
  ibv_srq_init_attr si{};
  si.attr.max_wr = 10;
  si.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(pd, &si);
  ASSERT_NE(srq, nullptr) << std::strerror(errno);
  EXPECT_EQ(si.attr.max_wr, 10u);
  ibv_srq_attr qa{};
  ASSERT_EQ(ibv_query_srq(srq, &qa), 0);
  EXPECT_EQ(qa.max_wr, si.attr.max_wr);
  Chain c = chain(si.attr.max_wr + 1);
  ibv_recv_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_srq_recv(srq, c.recv.data(), &bad), ENOMEM);
  EXPECT_EQ(bad, &c.recv[si.attr.max_wr]);
  EXPECT_EQ(ibv_destroy_srq(srq), 0);
}

// Posts `n` signalled RDMA WRITEs (wr_id 0..n-1) on a new RC QP whose send CQ is `scq`,
// connected to a peer of its own; the QP, or nullptr after a failure. `last_with_imm`: the
// last one is a WRITE with immediate, whose receive completion on the peer (in `cq`) says
// that every WRITE has landed.
ibv_qp* Life::writes_into(ibv_cq* scq, uint32_t n, bool last_with_imm) {
  ibv_qp* a = make_qp(scq, cq, ibv_qp_cap{n, 1, 1, 1, 0});
  ibv_qp* b = make_qp(cq, cq, ibv_qp_cap{1, 1, 1, 1, 0});
  if (!a || !b) return nullptr;
  connect(a, b->qp_num);
  connect(b, a->qp_num);
  if (::testing::Test::HasFatalFailure()) return nullptr;
  for (uint32_t i = 0; i < n; ++i) {  // WR i writes i + 1 (mod 256) into the target byte
    buf[8 * i] = uint8_t(i + 1);
    buf[32768 + 8 * i] = 0;
  }
  Chain c = chain(n);
  if (last_with_imm) {
    ibv_recv_wr rwr{}, *rbad = nullptr;
    rwr.wr_id = 0x1a57;
    if (ibv_post_recv(b, &rwr, &rbad) != 0) return nullptr;
    c.send[n - 1].opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    c.send[n - 1].imm_data = htonl(n);
  }
  ibv_send_wr* bad = nullptr;
  return ibv_post_send(a, c.send.data(), &bad) == 0 ? a : nullptr;
}

// Completion cqe + 1 without a poll in between overruns the CQ (IBA 11.4.2.1): the
// reported cqe is the capacity, in daemon mode too (the daemon does not hold completions
// back while the client's ring is full).
TEST_F(Life, CqOverrunAtCqePlusOne) {
  ibv_cq* small = make_cq(1);
  ASSERT_NE(small, nullptr);
  ASSERT_GE(small->cqe, 1);
  const uint32_t n = uint32_t(small->cqe) + 1;
  ASSERT_NE(writes_into(small, n), nullptr);
  ibv_async_event ev;
  ASSERT_TRUE(verbs_loop::next_async(ctx, IBV_EVENT_CQ_ERR, &ev)) << "no CQ_ERR after " << n;
  EXPECT_EQ(ev.element.cq, small);
  ibv_ack_async_event(&ev);
}

// Exactly cqe completions fit: once the SQ has drained (SQ_DRAINED: every WR completed, so
// all cqe completions were delivered without a poll), all of them are polled, in order, and
// no CQ_ERR was raised.
TEST_F(Life, CqHoldsCqe) {
  ibv_cq* small = make_cq(3);
  ASSERT_NE(small, nullptr);
  const uint32_t n = uint32_t(small->cqe);
  ibv_qp* a = writes_into(small, n, true);
  ASSERT_NE(a, nullptr);
  // The last WRITE has reached its target (its immediate's receive completion), so every WR
  // is on the HCA's SQ (a dverbsd client's WRs reach it through the daemon's doorbell): SQD
  // then waits for all of them. The completion, not a poll of the target memory, is what
  // orders the HCA's writes before this thread's reads.
  const ibv_wc landed = verbs_loop::wait_wc(cq);
  ASSERT_EQ(landed.status, IBV_WC_SUCCESS) << "the WRITEs never landed";
  EXPECT_EQ(landed.opcode, IBV_WC_RECV_RDMA_WITH_IMM);
  EXPECT_EQ(ntohl(landed.imm_data), n);
  EXPECT_EQ(buf[32768 + 8 * (n - 1)], uint8_t(n));
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_SQD;
  at.en_sqd_async_notify = 1;
  ASSERT_EQ(ibv_modify_qp(a, &at, IBV_QP_STATE | IBV_QP_EN_SQD_ASYNC_NOTIFY), 0);
  ibv_async_event ev;
  ASSERT_TRUE(verbs_loop::next_async(ctx, IBV_EVENT_SQ_DRAINED, &ev)) << "no SQ_DRAINED";
  ibv_ack_async_event(&ev);
  for (uint32_t i = 0; i < n; ++i) {
    const ibv_wc wc = verbs_loop::wait_wc(small);
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
    EXPECT_EQ(wc.wr_id, i);
  }
  EXPECT_TRUE(verbs_loop::stays_empty(small));
  pollfd pfd{ctx->async_fd, POLLIN, 0};
  EXPECT_EQ(poll(&pfd, 1, 0), 0) << "an asynchronous event (CQ_ERR?) without an overrun";
}

// ---------------------------------------------------------------- ibv_resize_cq

// Completions present are kept, in order; fewer than present and more than max_cqe are
// EINVAL and change nothing; the reported cqe is what fits.
TEST_F(Life, ResizeKeepsPresentAndRefusesBelow) {
  ibv_cq* r = make_cq(16);  // b's receive CQ, the one resized
  ASSERT_NE(r, nullptr);
  const int before = r->cqe;
  ibv_qp* a = make_qp(cq, cq, ibv_qp_cap{16, 1, 1, 1, 0});
  ibv_qp* b = make_qp(cq, r, ibv_qp_cap{1, 16, 1, 1, 0});
  ASSERT_TRUE(a && b);
  ASSERT_NO_FATAL_FAILURE(connect(a, b->qp_num));
  ASSERT_NO_FATAL_FAILURE(connect(b, a->qp_num));
  Chain rc = chain(5);
  ibv_recv_wr* rbad = nullptr;
  ASSERT_EQ(ibv_post_recv(b, rc.recv.data(), &rbad), 0);
  // Five SENDs, then a READ: the responder handles them in order, so once the READ has
  // completed, the five receive completions were pushed to `r`.
  Chain sc = chain(6, IBV_WR_SEND);
  sc.send[5].opcode = IBV_WR_RDMA_READ;
  ibv_send_wr* sbad = nullptr;
  ASSERT_EQ(ibv_post_send(a, sc.send.data(), &sbad), 0);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(verbs_loop::wait_wc(cq).status, IBV_WC_SUCCESS);
  int rc0 = ibv_resize_cq(r, 4);
  if (rc0 == EOPNOTSUPP) GTEST_SKIP() << "ibv_resize_cq: EOPNOTSUPP in this mode";
  EXPECT_EQ(rc0, EINVAL);  // 5 present
  EXPECT_EQ(r->cqe, before);
  EXPECT_EQ(ibv_resize_cq(r, 0), EINVAL);
  EXPECT_EQ(ibv_resize_cq(r, int(dev.max_cqe) + 1), EINVAL);
  EXPECT_EQ(r->cqe, before);
  ASSERT_EQ(ibv_resize_cq(r, 5), 0);  // exactly the present ones fit
  EXPECT_GE(r->cqe, 5);
  ASSERT_EQ(ibv_resize_cq(r, 100), 0);
  EXPECT_GE(r->cqe, 100);
  EXPECT_LE(r->cqe, int(dev.max_cqe));
  for (uint64_t i = 0; i < 5; ++i) {
    const ibv_wc wc = verbs_loop::wait_wc(r);
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
    EXPECT_EQ(wc.opcode, IBV_WC_RECV);
    EXPECT_EQ(wc.wr_id, i);
  }
  EXPECT_TRUE(verbs_loop::stays_empty(r));
}

// A second thread keeps signalled RDMA WRITEs and SENDs flowing into one CQ while this one
// polls it and resizes it up and down: every completion arrives exactly once.
TEST_F(Life, ResizeWhileTrafficFlows) {
  ibv_cq* t = make_cq(64);  // a's send CQ and b's receive CQ
  ASSERT_NE(t, nullptr);
  if (ibv_resize_cq(t, 64) == EOPNOTSUPP) GTEST_SKIP() << "ibv_resize_cq: EOPNOTSUPP in this mode";
  ibv_qp* a = make_qp(t, cq, ibv_qp_cap{32, 1, 1, 1, 0});
  ibv_qp* b = make_qp(cq, t, ibv_qp_cap{1, 32, 1, 1, 0});
  ASSERT_TRUE(a && b);
  ASSERT_NO_FATAL_FAILURE(connect(a, b->qp_num));
  ASSERT_NO_FATAL_FAILURE(connect(b, a->qp_num));
  constexpr uint32_t kOps = 3000;
  constexpr uint32_t kWindow = 16;  // WRs in flight: at most 2 * kWindow completions present
  constexpr uint64_t kRecv = 1ull << 32;
  std::atomic<uint32_t> done{0};  // WRs whose completions (all of them) were polled
  std::atomic<bool> stop{false};
  std::atomic<int> post_err{0};
  std::vector<uint8_t> seen(kOps * 2, 0);
  std::thread traffic([&] {
    for (uint32_t i = 0; i < kOps && !stop.load(); ++i) {
      while (i - done.load(std::memory_order_acquire) >= kWindow && !stop.load()) {
      }
      ibv_sge s{addr_of(buf.data() + 8 * (i % 1024)), 8, mr->lkey};
      const bool send = i % 2;
      if (send) {
        ibv_sge rs{addr_of(buf.data() + 16384 + 8 * (i % 1024)), 8, mr->lkey};
        ibv_recv_wr rw{};
        rw.wr_id = kRecv | i;
        rw.sg_list = &rs;
        rw.num_sge = 1;
        ibv_recv_wr* rb = nullptr;
        if (int e = ibv_post_recv(b, &rw, &rb)) {
          post_err = e;
          return;
        }
      }
      ibv_send_wr w{};
      w.wr_id = i;
      w.sg_list = &s;
      w.num_sge = 1;
      w.opcode = send ? IBV_WR_SEND : IBV_WR_RDMA_WRITE;
      w.send_flags = IBV_SEND_SIGNALED;
      w.wr.rdma.remote_addr = addr_of(buf.data() + 32768 + 8 * (i % 1024));
      w.wr.rdma.rkey = mr->rkey;
      ibv_send_wr* sb = nullptr;
      if (int e = ibv_post_send(a, &w, &sb)) {
        post_err = e;
        return;
      }
    }
  });
  // Every WR i has 1 completion (WRITE) or 2 (SEND + its receive); `done` counts WRs
  // whose completions all arrived, in order of i (each QP completes in order).
  const int sizes[] = {40, 64, 33, 128, 48, 256};
  uint32_t polled = 0, resizes = 0;
  const uint32_t expected = kOps + kOps / 2;
  std::vector<uint32_t> need(kOps, 0);
  for (uint32_t i = 0; i < kOps; ++i) need[i] = i % 2 ? 2 : 1;
  uint32_t next_done = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (polled < expected && post_err.load() == 0 && std::chrono::steady_clock::now() < end) {
    ibv_wc wc[8];
    const int n = ibv_poll_cq(t, 8, wc);
    ASSERT_GE(n, 0);
    for (int k = 0; k < n; ++k) {
      ASSERT_EQ(wc[k].status, IBV_WC_SUCCESS) << "wr_id " << wc[k].wr_id;
      const bool recv = wc[k].wr_id & kRecv;
      const uint32_t i = uint32_t(wc[k].wr_id);
      ASSERT_LT(i, kOps);
      uint8_t& s = seen[2 * i + (recv ? 1 : 0)];
      ASSERT_EQ(s, 0) << "completion of wr " << i << (recv ? " (recv)" : "") << " twice";
      s = 1;
      --need[i];
      ++polled;
    }
    while (next_done < kOps && need[next_done] == 0) ++next_done;
    done.store(next_done, std::memory_order_release);
    if (polled / 97 > resizes) {  // every 97 completions or so: another size
      ASSERT_EQ(ibv_resize_cq(t, sizes[resizes % 6]), 0);
      ++resizes;
    }
  }
  stop = true;
  traffic.join();
  EXPECT_EQ(post_err.load(), 0);
  EXPECT_EQ(polled, expected);
  EXPECT_GT(resizes, 10u);
  for (uint32_t i = 0; i < kOps; ++i) {
    EXPECT_EQ(seen[2 * i], 1) << "wr " << i << " not completed";
    if (i % 2) {
      EXPECT_EQ(seen[2 * i + 1], 1) << "recv " << i << " not completed";
    }
  }
}

}  // namespace
