// Hot-plug of DPDK ports at run time (core_locking.rst, Hot-plug): a port added while the
// process runs becomes a registered device and clients get add(); removing it raises
// IBV_EVENT_DEVICE_FATAL, moves its QPs to ERR with every WR flushed, and calls clients'
// remove(), in which the consumer frees what it created — while traffic runs on another
// device that must not notice. Also the QP async events (communication established, SQ
// drained).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"

using namespace dverbs;

namespace {

struct Env : ::testing::Environment {
  void SetUp() override { setenv("DVERBS_LCORES", "0", 0); }
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

// A consumer written against the midlayer the way a kernel ULP is: it builds its
// resources in add() and must free them in remove().
struct Ulp {
  std::mutex lock;
  std::vector<std::string> added, removed;
  std::atomic<int> fatal_events{0};
  // resources on the hot-plugged device
  mid::Device* dev = nullptr;
  mid::Pd* pd = nullptr;
  mid::Cq* cq = nullptr;
  mid::Qp* qp[2] = {};
  mid::Mr* mr = nullptr;
  std::vector<uint8_t> buf = std::vector<uint8_t>(1 << 16);
  int flushed_at_remove = 0;
  bool qps_in_err_at_remove = false;
};
Ulp g_ulp;

void ulp_add(mid::Device* dev, mid::Client*) {
  std::lock_guard<std::mutex> g(g_ulp.lock);
  g_ulp.added.emplace_back(dev->name);
}

void ulp_remove(mid::Device* dev, mid::Client*, void*) {
  {
    std::lock_guard<std::mutex> g(g_ulp.lock);
    g_ulp.removed.emplace_back(dev->name);
  }
  if (dev != g_ulp.dev) return;
  // The device is still usable here: collect the flushed completions, then free it all.
  bool err = true;
  for (auto* q : g_ulp.qp) {
    QpAttr a;
    mid::query_qp(q, &a, qp_attr_mask::state, nullptr);
    err = err && a.qp_state == QpState::err;
  }
  g_ulp.qps_in_err_at_remove = err;
  Wc wc[16];
  for (long spins = 0; spins < 100000000L; spins++) {
    int n = mid::poll_cq(g_ulp.cq, 16, wc);
    for (int i = 0; i < n; i++)
      if (wc[i].status == WcStatus::wr_flush_err) g_ulp.flushed_at_remove++;
    if (g_ulp.flushed_at_remove >= 10) break;
  }
  for (int i = 0; i < 1000; i++) {  // anything beyond the ten would be a bug: count it
    int n = mid::poll_cq(g_ulp.cq, 16, wc);
    for (int j = 0; j < n; j++)
      if (wc[j].status == WcStatus::wr_flush_err) g_ulp.flushed_at_remove++;
  }
  for (auto*& q : g_ulp.qp) {
    EXPECT_EQ(mid::destroy_qp(q), 0);
    q = nullptr;
  }
  EXPECT_EQ(mid::dereg_mr(g_ulp.mr), 0);
  EXPECT_EQ(mid::destroy_cq(g_ulp.cq), 0);
  EXPECT_EQ(mid::dealloc_pd(g_ulp.pd), 0);
  g_ulp.dev = nullptr;
}

void ulp_event(const mid::Event& ev, mid::Client*, void*) {
  if (ev.type == EventType::device_fatal && ev.device == g_ulp.dev) g_ulp.fatal_events++;
}

mid::Client g_client = [] {
  mid::Client c;
  c.name = "hotplug-test";
  c.add = ulp_add;
  c.remove = ulp_remove;
  c.event = ulp_event;
  return c;
}();

TEST(Hotplug, PortAddedAndRemovedWhileTrafficRunsElsewhere) {
  // Traffic on the default device keeps running through the whole test.
  auto c = Context::open();
  ASSERT_TRUE(c);
  Context ctx = c.take();
  ASSERT_EQ(mid::register_client(&g_client), 0);
  EXPECT_EQ(g_ulp.added, std::vector<std::string>{ctx.name()}) << "add() for existing devices";

  auto name = add_port("net_ring_hotplug", "10.9.0.1/24");
  ASSERT_TRUE(name) << std::strerror(name.error());
  {
    std::lock_guard<std::mutex> g(g_ulp.lock);
    ASSERT_EQ(g_ulp.added.size(), 2u);
    EXPECT_EQ(g_ulp.added[1], *name) << "add() for the hot-plugged device before add_port returns";
  }
  mid::Device* dev = mid::find_device(name->c_str());
  ASSERT_NE(dev, nullptr);
  g_ulp.dev = dev;
  ASSERT_EQ(mid::alloc_pd(dev, &g_ulp.pd), 0);
  ASSERT_EQ(mid::create_cq(dev, 256, nullptr, nullptr, nullptr, &g_ulp.cq), 0);
  ASSERT_EQ(mid::reg_mr(g_ulp.pd, g_ulp.buf.data(), g_ulp.buf.size(), access::local_write,
                        &g_ulp.mr), 0);
  Gid gid;
  ASSERT_EQ(mid::query_gid(dev, 1, 0, &gid), 0);
  EXPECT_EQ(gid.raw[12], 10);
  EXPECT_EQ(gid.raw[13], 9);
  for (auto*& q : g_ulp.qp) {
    mid::QpInitAttr init;
    init.send_cq = init.recv_cq = g_ulp.cq;
    init.cap = {32, 32, 1, 1, 0};
    ASSERT_EQ(mid::create_qp(g_ulp.pd, &init, &q), 0);
  }
  // Connect the two QPs of the new device and leave receives and sends outstanding: the
  // second QP never posts a receive beyond the first ten, so sends stall on RNR.
  namespace m = qp_attr_mask;
  for (int i = 0; i < 2; i++) {
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    ASSERT_EQ(mid::modify_qp(g_ulp.qp[i], &a, m::state | m::pkey_index | m::port | m::access_flags), 0);
    a.qp_state = QpState::rtr;
    a.ah_attr.dgid = gid;
    a.dest_qp_num = g_ulp.qp[1 - i]->qp_num;
    a.path_mtu = Mtu::mtu1024;
    a.min_rnr_timer = 12;
    a.max_dest_rd_atomic = 1;
    ASSERT_EQ(mid::modify_qp(g_ulp.qp[i], &a, m::state | m::av | m::path_mtu | m::dest_qpn |
                                               m::rq_psn | m::max_dest_rd_atomic |
                                               m::min_rnr_timer), 0);
    a.qp_state = QpState::rts;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 1;
    ASSERT_EQ(mid::modify_qp(g_ulp.qp[i], &a, m::state | m::sq_psn | m::timeout | m::retry_cnt |
                                               m::rnr_retry | m::max_qp_rd_atomic), 0);
  }
  Sge s{reinterpret_cast<uint64_t>(g_ulp.buf.data()), 64, g_ulp.mr->lkey};
  for (int i = 0; i < 10; i++) {
    RecvWr r{};
    r.sg_list = &s;
    r.num_sge = 1;
    RecvWr* rb;
    ASSERT_EQ(mid::post_recv(g_ulp.qp[1], &r, &rb), 0);
  }
  for (int i = 0; i < 20; i++) {
    SendWr w{};
    w.opcode = WrOpcode::send;
    w.sg_list = &s;
    w.num_sge = 1;
    w.send_flags = send_flags::signaled;
    SendWr* sb;
    ASSERT_EQ(mid::post_send(g_ulp.qp[0], &w, &sb), 0);
  }
  // Let some of it run.
  Wc wc[16];
  int done = 0;
  for (long spins = 0; spins < 100000000L && done < 20; spins++) {
    int n = mid::poll_cq(g_ulp.cq, 16, wc);
    for (int i = 0; i < n; i++) EXPECT_EQ(wc[i].status, WcStatus::success);
    done += n > 0 ? n : 0;
  }
  EXPECT_EQ(done, 20) << "10 sends and 10 receives; the other 10 sends wait on RNR";

  ASSERT_EQ(remove_port(*name), 0);
  {
    std::lock_guard<std::mutex> g(g_ulp.lock);
    ASSERT_EQ(g_ulp.removed.size(), 1u);
    EXPECT_EQ(g_ulp.removed[0], *name);
  }
  EXPECT_TRUE(g_ulp.qps_in_err_at_remove) << "QPs are in ERR before clients' remove()";
  EXPECT_EQ(g_ulp.flushed_at_remove, 10) << "the ten stalled sends were flushed";
  for (long spins = 0; spins < 1000000000L && g_ulp.fatal_events.load() == 0; spins++) {
  }
  EXPECT_EQ(g_ulp.fatal_events.load(), 1);
  EXPECT_EQ(mid::find_device(name->c_str()), nullptr);
  EXPECT_EQ(remove_port(*name), ENOENT);

  // The default device never noticed.
  Pd pd = Pd::alloc(ctx).take();
  Cq cq = Cq::create(ctx, 16).take();
  QpInit init;
  Qp a = Qp::create(pd, cq, cq, init).take();
  Qp b = Qp::create(pd, cq, cq, init).take();
  Gid g0;
  ctx.query_gid(1, 0, &g0);
  ASSERT_EQ(a.connect(g0, b.qp_num(), 1, 2), 0);
  ASSERT_EQ(b.connect(g0, a.qp_num(), 2, 1), 0);
  std::vector<uint8_t> buf(64, 1);
  Mr mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write).take();
  Sge s2{reinterpret_cast<uint64_t>(buf.data()), 64, mr.lkey()};
  RecvWr r{};
  r.sg_list = &s2;
  r.num_sge = 1;
  RecvWr* rb;
  ASSERT_EQ(b.post_recv(&r, &rb), 0);
  SendWr w{};
  w.opcode = WrOpcode::send;
  w.sg_list = &s2;
  w.num_sge = 1;
  w.send_flags = send_flags::signaled;
  SendWr* sb;
  ASSERT_EQ(a.post_send(&w, &sb), 0);
  int got = 0;
  for (long spins = 0; spins < 100000000L && got < 2; spins++) {
    Wc x;
    if (cq.poll(&x, 1) == 1) {
      EXPECT_EQ(x.status, WcStatus::success);
      got++;
    }
  }
  EXPECT_EQ(got, 2);
  mid::unregister_client(&g_client);
}

// An application (not a midlayer client) still holds C++ API objects of a port that is
// removed under it. As after uverbs' disassociation they stay valid to query, poll and
// destroy: the outstanding receives come back flushed, posting fails with EIO, creating
// with ENODEV, and destroying succeeds (ASan/LSan check that nothing is touched after it is
// freed and nothing leaks).
TEST(Hotplug, ApplicationObjectsOutliveTheirRemovedPort) {
  auto name = add_port("net_ring_hp2", "10.9.2.1/24");
  ASSERT_TRUE(name) << std::strerror(name.error());
  Context ctx = Context::open(*name).take();
  ASSERT_NE(ctx.raw(), nullptr);
  Pd pd = Pd::alloc(ctx).take();
  Cq cq = Cq::create(ctx, 64).take();
  QpInit init;
  Qp a = Qp::create(pd, cq, cq, init).take();
  Qp b = Qp::create(pd, cq, cq, init).take();
  Gid gid;
  ASSERT_EQ(ctx.query_gid(1, 0, &gid), 0);
  ASSERT_EQ(a.connect(gid, b.qp_num(), 1, 2), 0);
  ASSERT_EQ(b.connect(gid, a.qp_num(), 2, 1), 0);
  std::vector<uint8_t> buf(256, 7);
  Mr mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write).take();
  Sge s{reinterpret_cast<uint64_t>(buf.data()), 64, mr.lkey()};
  for (int i = 0; i < 4; i++) {
    RecvWr r{};
    r.wr_id = uint64_t(i);
    r.sg_list = &s;
    r.num_sge = 1;
    RecvWr* rb;
    ASSERT_EQ(b.post_recv(&r, &rb), 0);
  }

  ASSERT_EQ(remove_port(*name), 0);

  int flushed = 0;
  for (long spins = 0; spins < 1000000L && flushed < 4; spins++) {
    Wc wc;
    if (cq.poll(&wc, 1) == 1) {
      EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
      EXPECT_EQ(wc.wr_id, uint64_t(flushed)) << "flushed in order";
      flushed++;
    }
  }
  EXPECT_EQ(flushed, 4) << "the receives outstanding at removal complete as flushed";
  SendWr w{};
  w.opcode = WrOpcode::send;
  w.sg_list = &s;
  w.num_sge = 1;
  w.send_flags = send_flags::signaled;
  SendWr* sb = nullptr;
  EXPECT_EQ(a.post_send(&w, &sb), EIO);
  EXPECT_EQ(sb, &w);
  RecvWr r{};
  r.sg_list = &s;
  r.num_sge = 1;
  RecvWr* rb = nullptr;
  EXPECT_EQ(b.post_recv(&r, &rb), EIO);
  PortAttr pa;
  ASSERT_EQ(ctx.query_port(1, &pa), 0);
  EXPECT_EQ(pa.state, PortState::down);
  EXPECT_EQ(Pd::alloc(ctx).error(), ENODEV);
  EXPECT_EQ(Cq::create(ctx, 16).error(), ENODEV);
  EXPECT_EQ(Mr::reg(pd, buf.data(), buf.size(), access::local_write).error(), ENODEV);
  EXPECT_EQ(Qp::create(pd, cq, cq, init).error(), ENODEV);
  EXPECT_EQ(mr.destroy(), 0);
  EXPECT_EQ(a.destroy(), 0);
  EXPECT_EQ(b.destroy(), 0);
  EXPECT_EQ(cq.destroy(), 0);
  EXPECT_EQ(pd.destroy(), 0);
}

TEST(Hotplug, BadDevargsIsAClearError) {
  auto name = add_port("net_no_such_driver0", "");
  EXPECT_FALSE(name);
  EXPECT_EQ(name.error(), ENODEV);
  EXPECT_EQ(add_port("net_ring_x", "10.0.0.300/24").error(), EINVAL);
}

TEST(AsyncEvents, CommunicationEstablishedAndSqDrained) {
  auto c = Context::open();
  ASSERT_TRUE(c);
  Context ctx = c.take();
  std::mutex lock;
  std::vector<std::pair<EventType, uint32_t>> events;
  ASSERT_EQ(ctx.set_event_handler([&](const AsyncEvent& e) {
              std::lock_guard<std::mutex> g(lock);
              events.emplace_back(e.type, e.qp_num);
            }),
            0);
  Pd pd = Pd::alloc(ctx).take();
  Cq cq = Cq::create(ctx, 64).take();
  QpInit init;
  Qp a = Qp::create(pd, cq, cq, init).take();
  Qp b = Qp::create(pd, cq, cq, init).take();
  Gid g0;
  ctx.query_gid(1, 0, &g0);
  ASSERT_EQ(a.connect(g0, b.qp_num(), 1, 2), 0);
  // B only reaches RTR: its first packet raises communication established.
  namespace m = qp_attr_mask;
  QpAttr x;
  x.qp_state = QpState::init;
  x.port_num = 1;
  ASSERT_EQ(b.modify(x, m::state | m::pkey_index | m::port | m::access_flags), 0);
  x.qp_state = QpState::rtr;
  x.ah_attr.dgid = g0;
  x.dest_qp_num = a.qp_num();
  x.rq_psn = 1;
  x.max_dest_rd_atomic = 1;
  ASSERT_EQ(b.modify(x, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                            m::max_dest_rd_atomic | m::min_rnr_timer),
            0);
  std::vector<uint8_t> buf(64);
  Mr mr = Mr::reg(pd, buf.data(), buf.size(), access::local_write).take();
  Sge s{reinterpret_cast<uint64_t>(buf.data()), 64, mr.lkey()};
  RecvWr r{};
  r.sg_list = &s;
  r.num_sge = 1;
  RecvWr* rb;
  ASSERT_EQ(b.post_recv(&r, &rb), 0);
  SendWr w{};
  w.opcode = WrOpcode::send;
  w.sg_list = &s;
  w.num_sge = 1;
  w.send_flags = send_flags::signaled;
  SendWr* sb;
  ASSERT_EQ(a.post_send(&w, &sb), 0);
  int got = 0;
  for (long spins = 0; spins < 100000000L && got < 2; spins++) {
    Wc wc;
    got += cq.poll(&wc, 1);
  }
  ASSERT_EQ(got, 2);
  // Drain A's send queue: RTS → SQD raises SQ drained once nothing is outstanding.
  QpAttr d;
  d.qp_state = QpState::sqd;
  ASSERT_EQ(a.modify(d, m::state), 0);
  auto seen = [&](EventType t, uint32_t qpn) {
    std::lock_guard<std::mutex> g(lock);
    for (auto& e : events)
      if (e.first == t && e.second == qpn) return true;
    return false;
  };
  for (long spins = 0; spins < 2000000000L; spins++) {
    Wc wc;
    cq.poll(&wc, 0);  // drives inline progress
    if (seen(EventType::comm_est, b.qp_num()) && seen(EventType::sq_drained, a.qp_num())) break;
  }
  EXPECT_TRUE(seen(EventType::comm_est, b.qp_num()));
  EXPECT_TRUE(seen(EventType::sq_drained, a.qp_num()));
  // SQD → RTS resumes sending.
  d.qp_state = QpState::rts;
  ASSERT_EQ(a.modify(d, m::state), 0);
  EXPECT_EQ(a.state(), QpState::rts);
}

}  // namespace
