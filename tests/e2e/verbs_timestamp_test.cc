// Completion timestamps through the libibverbs.so.1 drop-in, seen by a program built
// against the system's <infiniband/verbs.h>: hca_core_clock and completion_timestamp_mask in
// ibv_query_device_ex, ibv_create_cq_ex with IBV_WC_EX_WITH_COMPLETION_TIMESTAMP and
// _WALLCLOCK, ibv_wc_read_completion_ts / _wallclock_ns, ibv_query_rt_values_ex. Two RC QPs
// of one context over the loopback port; every timestamp is checked against the raw clock
// and CLOCK_REALTIME read by the program around the operation.
//
// Run: tests/e2e/verbs_modes.sh DVERBS_RUN embedded|daemon verbs_timestamp_test (meson does).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::open_dverbs;

constexpr uint64_t kTsFlags =
    IBV_WC_EX_WITH_COMPLETION_TIMESTAMP | IBV_WC_EX_WITH_COMPLETION_TIMESTAMP_WALLCLOCK;

uint64_t realtime_ns() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return uint64_t(t.tv_sec) * 1000000000ull + uint64_t(t.tv_nsec);
}

uint64_t raw_now(ibv_context* ctx) {
  ibv_values_ex v{};
  v.comp_mask = IBV_VALUES_MASK_RAW_CLOCK;
  EXPECT_EQ(ibv_query_rt_values_ex(ctx, &v), 0);
  EXPECT_EQ(v.comp_mask, uint32_t(IBV_VALUES_MASK_RAW_CLOCK));
  EXPECT_EQ(v.raw_clock.tv_sec, 0);
  return uint64_t(v.raw_clock.tv_nsec);
}

// One completion polled through ibv_start_poll/ibv_end_poll with its two timestamps.
struct Polled {
  uint64_t wr_id = 0;
  ibv_wc_status status = IBV_WC_GENERAL_ERR;
  ibv_wc_opcode opcode = IBV_WC_SEND;
  uint64_t ts = 0, wall_ns = 0;
};

bool poll_ex(ibv_cq_ex* cq, Polled* out) {
  ibv_poll_cq_attr attr{};
  for (long i = 0; i < 200000000L; ++i) {
    const int rc = ibv_start_poll(cq, &attr);
    if (rc == ENOENT) continue;
    if (rc != 0) return false;
    out->wr_id = cq->wr_id;
    out->status = cq->status;
    out->opcode = ibv_wc_read_opcode(cq);
    out->ts = ibv_wc_read_completion_ts(cq);
    out->wall_ns = ibv_wc_read_completion_wallclock_ns(cq);
    ibv_end_poll(cq);
    return true;
  }
  return false;
}

struct Pair {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq_ex* cqa = nullptr;
  ibv_cq_ex* cqb = nullptr;
  ibv_qp* a = nullptr;
  ibv_qp* b = nullptr;
  ibv_mr* mr = nullptr;
  ibv_gid gid{};
  std::vector<uint8_t> buf = std::vector<uint8_t>(8192);

  ~Pair() {
    if (mr) ibv_dereg_mr(mr);
    if (a) ibv_destroy_qp(a);
    if (b) ibv_destroy_qp(b);
    if (cqa) ibv_destroy_cq(ibv_cq_ex_to_cq(cqa));
    if (cqb) ibv_destroy_cq(ibv_cq_ex_to_cq(cqb));
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_cq_ex* make_cq() {
    ibv_cq_init_attr_ex ca{};
    ca.cqe = 64;
    ca.wc_flags = IBV_WC_STANDARD_FLAGS | kTsFlags;
    return ibv_create_cq_ex(ctx, &ca);
  }

  ibv_qp* make_qp(ibv_cq_ex* cq) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = ibv_cq_ex_to_cq(cq);
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = init.cap.max_recv_wr = 32;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    return ibv_create_qp(pd, &init);
  }

  void connect(ibv_qp* qp, uint32_t dqpn) {
    verbs_loop::connect_rc(qp, dqpn, gid, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 1);
  }

  void init() {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    cqa = make_cq();
    cqb = make_cq();
    ASSERT_TRUE(cqa && cqb) << std::strerror(errno);
    a = make_qp(cqa);
    b = make_qp(cqb);
    ASSERT_TRUE(a && b);
    connect(a, b->qp_num);
    connect(b, a->qp_num);
    mr = ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
    ASSERT_NE(mr, nullptr);
  }

  // One SEND from a to b: the receive posted first, both completions polled.
  void send_once(uint64_t id, Polled* send, Polled* recv) {
    ibv_sge rs{uint64_t(uintptr_t(buf.data() + 4096)), 64, mr->lkey};
    ibv_recv_wr rw{}, *rbad = nullptr;
    rw.wr_id = id;
    rw.sg_list = &rs;
    rw.num_sge = 1;
    ASSERT_EQ(ibv_post_recv(b, &rw, &rbad), 0);
    ibv_sge ss{uint64_t(uintptr_t(buf.data())), 64, mr->lkey};
    ibv_send_wr sw{}, *sbad = nullptr;
    sw.wr_id = id;
    sw.opcode = IBV_WR_SEND;
    sw.send_flags = IBV_SEND_SIGNALED;
    sw.sg_list = &ss;
    sw.num_sge = 1;
    ASSERT_EQ(ibv_post_send(a, &sw, &sbad), 0);
    ASSERT_TRUE(poll_ex(cqb, recv));
    ASSERT_TRUE(poll_ex(cqa, send));
    EXPECT_EQ(recv->status, IBV_WC_SUCCESS);
    EXPECT_EQ(send->status, IBV_WC_SUCCESS);
    EXPECT_EQ(recv->opcode, IBV_WC_RECV);
    EXPECT_EQ(send->wr_id, id);
  }
};

TEST(Timestamps, DeviceReportsItsClock) {
  ibv_context* ctx = open_dverbs();
  ASSERT_NE(ctx, nullptr);
  ibv_device_attr_ex ax{};
  ASSERT_EQ(ibv_query_device_ex(ctx, nullptr, &ax), 0);
  EXPECT_GT(ax.hca_core_clock, 1000u);  // kHz: a clock of at least a MHz
  EXPECT_EQ(ax.completion_timestamp_mask, ~uint64_t(0));
  ibv_close_device(ctx);
}

// Raw timestamps never go back within a CQ, and each lies between the raw clock read
// before the post and after the poll (ibv_query_rt_values_ex: the same timebase).
TEST(Timestamps, RawAreMonotonicPerCqAndInTheRtValuesTimebase) {
  Pair p;
  p.init();
  uint64_t prev_send = 0, prev_recv = 0;
  for (uint64_t i = 1; i <= 50; i++) {
    const uint64_t before = raw_now(p.ctx);
    Polled s, r;
    p.send_once(i, &s, &r);
    const uint64_t after = raw_now(p.ctx);
    EXPECT_LE(before, r.ts) << i;
    EXPECT_LE(r.ts, after) << i;
    EXPECT_LE(before, s.ts) << i;
    EXPECT_LE(s.ts, after) << i;
    EXPECT_GE(s.ts, prev_send) << i;
    EXPECT_GE(r.ts, prev_recv) << i;
    EXPECT_GT(r.ts, prev_recv) << i;  // a later packet, a later stamp
    prev_send = s.ts;
    prev_recv = r.ts;
  }
}

// The wall-clock value lies between CLOCK_REALTIME read before the post and after the poll,
// also after the conversion has measured the clock's rate (100 ms after the CQ was made).
TEST(Timestamps, WallclockLiesBetweenPostAndPoll) {
  Pair p;
  p.init();
  for (int round = 0; round < 2; round++) {
    if (round == 1) std::this_thread::sleep_for(std::chrono::milliseconds(150));
    for (uint64_t i = 1; i <= 20; i++) {
      const uint64_t before = realtime_ns();
      Polled s, r;
      p.send_once(i, &s, &r);
      const uint64_t after = realtime_ns();
      EXPECT_LE(before, r.wall_ns)
          << "round " << round << " #" << i << " after-before " << after - before;
      EXPECT_LE(r.wall_ns, after) << "round " << round << " #" << i;
      EXPECT_LE(before, s.wall_ns) << "round " << round << " #" << i;
      EXPECT_LE(s.wall_ns, after) << "round " << round << " #" << i;
    }
  }
}

TEST(Timestamps, RtValuesRejectsUnknownMask) {
  ibv_context* ctx = open_dverbs();
  ASSERT_NE(ctx, nullptr);
  ibv_values_ex v{};
  v.comp_mask = 1u << 5;
  EXPECT_EQ(ibv_query_rt_values_ex(ctx, &v), EINVAL);
  ibv_close_device(ctx);
}

}  // namespace
