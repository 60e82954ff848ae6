// The soft HCA's verbs as the midlayer calls them: QP state machine (legal and illegal
// transitions), MR key/bounds/access checks, and every posting error path — each bad
// input gets its documented errno and leaves the object usable.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"
#include "pmd/hca/device.h"
#include "pmd/hca/mr.h"

using namespace dverbs;
namespace m = qp_attr_mask;

namespace {

struct Fixture : ::testing::Test {
  Context ctx;
  Pd pd;
  Cq cq;
  Gid gid;
  static void SetUpTestSuite() { setenv("DVERBS_LCORES", "0", 1); }
  void SetUp() override {
    auto c = Context::open();
    ASSERT_TRUE(c) << std::strerror(c.error());
    ctx = c.take();
    ctx.query_gid(1, 0, &gid);
    pd = Pd::alloc(ctx).take();
    cq = Cq::create(ctx, 64).take();
  }
  Qp make_qp(QpType t = QpType::rc) {
    QpInit init;
    init.type = t;
    init.cap = {8, 8, 2, 2, 0};
    auto q = Qp::create(pd, cq, cq, init);
    EXPECT_TRUE(q) << std::strerror(q.error());
    return q.take();
  }
  QpAttr init_attr() {
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    return a;
  }
};

TEST_F(Fixture, LegalTransitionsReachRts) {
  Qp qp = make_qp();
  EXPECT_EQ(qp.state(), QpState::reset);
  EXPECT_EQ(qp.connect(gid, 5, 1, 2), 0);
  EXPECT_EQ(qp.state(), QpState::rts);
  QpAttr a;
  a.qp_state = QpState::rts;
  EXPECT_EQ(qp.modify(a, m::state), 0);  // RTS→RTS
  a.qp_state = QpState::err;
  EXPECT_EQ(qp.modify(a, m::state), 0);
  EXPECT_EQ(qp.state(), QpState::err);
  a.qp_state = QpState::reset;
  EXPECT_EQ(qp.modify(a, m::state), 0);
  EXPECT_EQ(qp.state(), QpState::reset);
  EXPECT_EQ(qp.connect(gid, 5, 1, 2), 0) << "a reset QP can be connected again";
}

TEST_F(Fixture, IllegalTransitionsAreEinvalAndChangeNothing) {
  Qp qp = make_qp();
  QpAttr a;
  a.qp_state = QpState::rts;
  EXPECT_EQ(qp.modify(a, m::state), EINVAL) << "RESET→RTS";
  a.qp_state = QpState::rtr;
  EXPECT_EQ(qp.modify(a, m::state), EINVAL) << "RESET→RTR";
  EXPECT_EQ(qp.state(), QpState::reset);
  a = init_attr();
  EXPECT_EQ(qp.modify(a, m::state | m::port), EINVAL) << "INIT needs pkey_index and access";
  EXPECT_EQ(qp.modify(a, m::state | m::port | m::pkey_index | m::access_flags | m::sq_psn),
            EINVAL)
      << "sq_psn is not allowed in RESET→INIT";
  a.port_num = 2;
  EXPECT_EQ(qp.modify(a, m::state | m::port | m::pkey_index | m::access_flags), EINVAL)
      << "no port 2";
  a.port_num = 1;
  a.qp_access_flags = 1u << 20;
  EXPECT_EQ(qp.modify(a, m::state | m::port | m::pkey_index | m::access_flags), EINVAL);
  EXPECT_EQ(qp.state(), QpState::reset);
  a.qp_access_flags = 0;
  ASSERT_EQ(qp.modify(a, m::state | m::port | m::pkey_index | m::access_flags), 0);
  a.qp_state = QpState::rtr;
  a.path_mtu = static_cast<Mtu>(9);
  a.ah_attr.dgid = gid;
  const uint32_t rtr = m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                       m::max_dest_rd_atomic | m::min_rnr_timer;
  EXPECT_EQ(qp.modify(a, rtr), EINVAL) << "bad path MTU";
  a.path_mtu = Mtu::mtu1024;
  a.rq_psn = 1u << 24;
  EXPECT_EQ(qp.modify(a, rtr), EINVAL) << "PSN wider than 24 bits";
  a.rq_psn = 0;
  std::memset(a.ah_attr.dgid.raw, 0xfe, 16);
  EXPECT_EQ(qp.modify(a, rtr), EINVAL) << "not an IPv4-mapped GID";
  a.ah_attr.dgid = gid;
  a.max_dest_rd_atomic = 200;
  EXPECT_EQ(qp.modify(a, rtr), EINVAL);
  a.max_dest_rd_atomic = 1;
  EXPECT_EQ(qp.state(), QpState::init);
  EXPECT_EQ(qp.modify(a, rtr), 0);
  QpAttr cur;
  cur.cur_qp_state = QpState::rts;
  cur.qp_state = QpState::rts;
  EXPECT_EQ(qp.modify(cur, m::state | m::cur_state), EINVAL) << "cur_state mismatch";
}

TEST_F(Fixture, PostingInResetOrInitIsEinval) {
  Qp qp = make_qp();
  std::vector<uint8_t> buf(64);
  auto mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write);
  Sge s{reinterpret_cast<uint64_t>(buf.data()), 64, mr->lkey()};
  SendWr wr{};
  wr.sg_list = &s;
  wr.num_sge = 1;
  wr.opcode = WrOpcode::send;
  SendWr* bad = nullptr;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL);
  EXPECT_EQ(bad, &wr);
  RecvWr rwr{};
  rwr.sg_list = &s;
  rwr.num_sge = 1;
  RecvWr* rbad = nullptr;
  EXPECT_EQ(qp.post_recv(&rwr, &rbad), EINVAL) << "receive queue closed in RESET";
  QpAttr a = init_attr();
  ASSERT_EQ(qp.modify(a, m::state | m::port | m::pkey_index | m::access_flags), 0);
  EXPECT_EQ(qp.post_recv(&rwr, &rbad), 0) << "INIT accepts receives";
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "INIT does not accept sends";
}

TEST_F(Fixture, BadSendWorkRequestsAreRejectedBeforeQueueing) {
  Qp qp = make_qp();
  ASSERT_EQ(qp.connect(gid, qp.qp_num(), 1, 1), 0);
  std::vector<uint8_t> buf(512);
  auto mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write);
  Sge s[3] = {{reinterpret_cast<uint64_t>(buf.data()), 8, mr->lkey()},
              {reinterpret_cast<uint64_t>(buf.data()), 8, mr->lkey()},
              {reinterpret_cast<uint64_t>(buf.data()), 8, mr->lkey()}};
  SendWr wr{};
  wr.sg_list = s;
  wr.opcode = WrOpcode::send;
  SendWr* bad = nullptr;
  wr.num_sge = 3;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "more SGEs than max_send_sge";
  wr.num_sge = -1;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL);
  wr.num_sge = 1;
  wr.opcode = static_cast<WrOpcode>(77);
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "unknown opcode";
  wr.opcode = WrOpcode::send;
  wr.send_flags = 1u << 30;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "unknown flag";
  wr.send_flags = 0;
  Sge wrap{~0ull - 4, 16, mr->lkey()};
  wr.sg_list = &wrap;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "addr+length wraps";
  Sge big{reinterpret_cast<uint64_t>(buf.data()), 300, mr->lkey()};
  wr.sg_list = &big;
  wr.send_flags = send_flags::inline_data;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "inline beyond max_inline_data";
  wr.sg_list = nullptr;
  wr.send_flags = 0;
  EXPECT_EQ(qp.post_send(&wr, &bad), EINVAL) << "SGEs announced, no list";
  EXPECT_EQ(bad, &wr);
  // Nothing was queued: the QP still works and its CQ is empty.
  Wc wc;
  EXPECT_EQ(cq.poll(&wc, 1), 0);
  EXPECT_EQ(qp.state(), QpState::rts);
}

TEST_F(Fixture, FullSendQueueIsEnomemNotAWait) {
  Qp qp = make_qp();
  // Connected to a QP number that does not exist: nothing is ever acknowledged.
  ASSERT_EQ(qp.connect(gid, 0xabcde, 1, 1), 0);
  SendWr wr{};
  wr.opcode = WrOpcode::send;
  SendWr* bad = nullptr;
  int ok = 0, rc = 0;
  for (int i = 0; i < 100 && (rc = qp.post_send(&wr, &bad)) == 0; i++) ok++;
  EXPECT_EQ(rc, ENOMEM);
  EXPECT_EQ(ok, 8) << "max_send_wr is 8";
  EXPECT_EQ(bad, &wr);
}

TEST_F(Fixture, ChainStopsAtTheFirstBadRequest) {
  Qp qp = make_qp();
  ASSERT_EQ(qp.connect(gid, 0xabcde, 1, 1), 0);
  SendWr w[3]{};
  for (auto& x : w) x.opcode = WrOpcode::send;
  w[0].next = &w[1];
  w[1].next = &w[2];
  w[1].num_sge = 5;
  SendWr* bad = nullptr;
  EXPECT_EQ(qp.post_send(&w[0], &bad), EINVAL);
  EXPECT_EQ(bad, &w[1]) << "bad_wr names the first rejected WR";
}

TEST_F(Fixture, MrRegistrationChecks) {
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(Mr::reg(pd, buf.data(), 0, 0).error(), EINVAL) << "zero length";
  EXPECT_EQ(Mr::reg(pd, buf.data(), buf.size(), 1u << 12).error(), EINVAL) << "unknown access";
  EXPECT_EQ(Mr::reg(pd, buf.data(), buf.size(), access::remote_write).error(), EINVAL)
      << "remote write requires local write";
  EXPECT_EQ(Mr::reg(pd, reinterpret_cast<void*>(~0ull - 10), 100, 0).error(), EINVAL)
      << "wraps the address space";
  auto mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write | access::remote_read);
  ASSERT_TRUE(mr);
  EXPECT_NE(mr->lkey(), 0u);
}

TEST_F(Fixture, MrKeyBoundsAndAccessChecksAtUse) {
  std::vector<uint8_t> buf(4096);
  auto mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write);
  ASSERT_TRUE(mr);
  auto& dev = *static_cast<pmd::hca::Device*>(ctx.raw());
  uint64_t a = reinterpret_cast<uint64_t>(buf.data());
  uint32_t k = mr->lkey();
  EXPECT_NE(pmd::hca::mr_get_local(dev, k, pd.raw(), a, 4096, access::local_write), nullptr);
  EXPECT_EQ(pmd::hca::mr_get_local(dev, k + 1, pd.raw(), a, 16, 0), nullptr) << "key off by one";
  EXPECT_EQ(pmd::hca::mr_get_local(dev, k - 1, pd.raw(), a, 16, 0), nullptr) << "key off by one";
  EXPECT_EQ(pmd::hca::mr_get_local(dev, k, pd.raw(), a + 4090, 7, 0), nullptr) << "past end";
  EXPECT_EQ(pmd::hca::mr_get_local(dev, k, pd.raw(), a - 1, 2, 0), nullptr) << "before start";
  EXPECT_EQ(pmd::hca::mr_get_remote(dev, k, pd.raw(), 0, a, 8, access::remote_write), nullptr)
      << "no remote write access";
  auto pd2 = Pd::alloc(ctx);
  EXPECT_EQ(pmd::hca::mr_get_local(dev, k, pd2->raw(), a, 8, 0), nullptr) << "other PD";
  uint32_t stale = k;
  ASSERT_EQ(mr->destroy(), 0);
  EXPECT_EQ(pmd::hca::mr_get_local(dev, stale, pd.raw(), a, 8, 0), nullptr) << "stale key";
  auto again = Mr::reg(pd, buf.data(), buf.size(), 0);
  ASSERT_TRUE(again);
  EXPECT_NE(again->lkey(), stale) << "a reused slot gets a new key";
}

TEST_F(Fixture, DestroyingAPdOrCqInUseIsEbusy) {
  Qp qp = make_qp();
  EXPECT_EQ(pd.destroy(), EBUSY);
  EXPECT_EQ(cq.destroy(), EBUSY);
  ASSERT_EQ(qp.destroy(), 0);
  EXPECT_EQ(cq.destroy(), 0);
  EXPECT_EQ(pd.destroy(), 0);
}

TEST_F(Fixture, CreateQpValidatesCapsAndType) {
  QpInit init;
  init.cap = {1u << 20, 8, 1, 1, 0};
  EXPECT_EQ(Qp::create(pd, cq, cq, init).error(), EINVAL) << "max_send_wr too large";
  init.cap = {8, 8, 100, 1, 0};
  EXPECT_EQ(Qp::create(pd, cq, cq, init).error(), EINVAL) << "too many SGEs";
  init.cap = {8, 8, 1, 1, 100000};
  EXPECT_EQ(Qp::create(pd, cq, cq, init).error(), EINVAL) << "inline too large";
  init.cap = {8, 8, 1, 1, 0};
  init.type = static_cast<QpType>(11);  // 9 and 10 are XRC's
  EXPECT_EQ(Qp::create(pd, cq, cq, init).error(), EINVAL) << "unknown QP type";
}

TEST_F(Fixture, ErrStateFlushesEveryPostedRequestInOrder) {
  Qp qp = make_qp();
  ASSERT_EQ(qp.connect(gid, 0xabcde, 1, 1), 0);  // peer that never answers
  RecvWr r[3]{};
  for (int i = 0; i < 3; i++) r[i].wr_id = 100 + uint64_t(i);
  r[0].next = &r[1];
  r[1].next = &r[2];
  RecvWr* rbad;
  ASSERT_EQ(qp.post_recv(r, &rbad), 0);
  SendWr s[2]{};
  s[0].wr_id = 1;
  s[1].wr_id = 2;
  s[0].opcode = s[1].opcode = WrOpcode::send;
  s[0].next = &s[1];
  SendWr* sbad;
  ASSERT_EQ(qp.post_send(s, &sbad), 0);
  QpAttr a;
  a.qp_state = QpState::err;
  ASSERT_EQ(qp.modify(a, m::state), 0);
  // And a request posted while in ERR is flushed too.
  SendWr late{};
  late.wr_id = 3;
  late.opcode = WrOpcode::send;
  ASSERT_EQ(qp.post_send(&late, &sbad), 0);
  std::vector<uint64_t> sends, recvs;
  for (long i = 0; i < 100000000L && sends.size() + recvs.size() < 6; i++) {
    Wc wc;
    if (cq.poll(&wc, 1) == 1) {
      EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
      (wc.opcode == WcOpcode::recv ? recvs : sends).push_back(wc.wr_id);
    }
  }
  EXPECT_EQ(sends, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(recvs, (std::vector<uint64_t>{100, 101, 102}));
}

TEST_F(Fixture, DevicePortAndGidAttributes) {
  DeviceAttr d;
  ASSERT_EQ(ctx.query_device(&d), 0);
  EXPECT_GE(d.max_inline_data, 256u);
  EXPECT_GT(d.max_qp, 1000u);
  PortAttr p;
  ASSERT_EQ(ctx.query_port(1, &p), 0);
  EXPECT_EQ(p.state, PortState::active);
  EXPECT_EQ(ctx.query_port(2, &p), EINVAL);
  Gid g;
  ASSERT_EQ(ctx.query_gid(1, 0, &g), 0);
  const uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
  EXPECT_EQ(std::memcmp(g.raw, want, 16), 0) << "IPv4-mapped default 10.0.0.1";
  EXPECT_EQ(ctx.query_gid(1, 1, &g), EINVAL);
}

#if DVERBS_MIGHT_SLEEP_CHECK
// modify_qp and query_qp hold Qp::lock, the spinlock the owner engine takes for every step
// of the QP: nothing under it may sleep or make a system call. ops.cc marks the held span
// as a non-sleeping scope and the HCA's query_port (which reads the link state, a possible
// syscall) as might_sleep, so asking query_port for the MTU under the lock, as modify_qp
// once did, is reported here.
std::mutex g_sleep_mu;
std::vector<std::string> g_sleep_reports;
void record_sleep(const char* scope, const char* primitive) {
  std::lock_guard<std::mutex> lk(g_sleep_mu);
  g_sleep_reports.push_back(std::string(scope ? scope : "?") + ": " + primitive);
}
std::vector<std::string> take_sleep_reports() {
  std::lock_guard<std::mutex> lk(g_sleep_mu);
  return std::exchange(g_sleep_reports, {});
}

TEST_F(Fixture, NothingUnderTheQpLockSleeps) {
  take_sleep_reports();
  mid::set_sleep_violation_handler(record_sleep);
  Qp qp = make_qp();
  EXPECT_EQ(qp.connect(gid, 5, 1, 2, Mtu::mtu4096), 0);  // RTR sets path_mtu under the lock
  QpAttr a;
  EXPECT_EQ(qp.query(&a), 0);
  EXPECT_EQ(a.path_mtu, Mtu::mtu4096);
  const std::vector<std::string> clean = take_sleep_reports();
  // The check is live: the driver's link-state read inside a non-sleeping scope reports.
  {
    mid::NonSleepingScope scope("test scope");
    PortAttr pa;
    EXPECT_EQ(ctx.raw()->ops->query_port(ctx.raw(), 1, &pa), 0);
  }
  const std::vector<std::string> control = take_sleep_reports();
  mid::set_sleep_violation_handler(nullptr);
  EXPECT_TRUE(clean.empty()) << "under Qp::lock: " << (clean.empty() ? "" : clean[0]);
  ASSERT_EQ(control.size(), 1u);
  EXPECT_EQ(control[0], "test scope: query_port (link state)");
}
#endif

// The HCA's counters reach applications through the driver API (DeviceOps::query_counters,
// the analogue of rdma_hw_stats), not through a cast of the device.
TEST_F(Fixture, CountersThroughTheDriverApi) {
  std::vector<Counter> counters;
  ASSERT_EQ(ctx.query_counters(&counters), 0);
  auto value = [&](const char* name) -> int64_t {
    for (const Counter& c : counters)
      if (std::strcmp(c.name, name) == 0) return int64_t(c.value);
    return -1;
  };
  for (const char* name : {"tx_packets", "rx_packets", "rx_bad_icrc", "rx_no_qp", "tx_no_mbuf",
                           "cq_overflow", "port_tx_dropped"})
    EXPECT_GE(value(name), 0) << name;
  const int64_t tx0 = value("tx_packets");
  // One SEND to a QP of this device moves tx_packets.
  Qp a = make_qp(), b = make_qp();
  ASSERT_EQ(a.connect(gid, b.qp_num(), 1, 2), 0);
  ASSERT_EQ(b.connect(gid, a.qp_num(), 2, 1), 0);
  RecvWr rwr{};
  RecvWr* rbad = nullptr;
  ASSERT_EQ(b.post_recv(&rwr, &rbad), 0);
  SendWr wr{};
  wr.opcode = WrOpcode::send;
  wr.send_flags = send_flags::signaled;
  SendWr* bad = nullptr;
  ASSERT_EQ(a.post_send(&wr, &bad), 0);
  Wc wc[2];
  for (int i = 0; i < 100000 && value("tx_packets") <= tx0; i++) {
    cq.poll(wc, 2);
    ASSERT_EQ(ctx.query_counters(&counters), 0);
  }
  EXPECT_GT(value("tx_packets"), tx0);
  ASSERT_EQ(a.query_counters(&counters), 0);
  for (const char* name : {"retransmits", "rnr_naks_rcvd", "seq_naks_sent", "dup_rcvd"})
    EXPECT_GE(value(name), 0) << name;
}

}  // namespace
