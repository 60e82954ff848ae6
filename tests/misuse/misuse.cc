#include "misuse.h"

#include <cstdlib>
#include <cstring>

#include "pmd/hca/device.h"
#include "pmd/net/lcore.h"

namespace dverbs::pmd::hca {

// Test peer of Device (friend, device.h): stops the inline-progress helper, so the engine
// runs only inside this process's own verbs calls and every test is deterministic.
struct DeviceTestPeer {
  static void stop_inline_helper(Device& d) {
    if (d.inline_helper_) d.inline_helper_->stop();
  }
};

}  // namespace dverbs::pmd::hca

namespace dverbs::misuse {

Device& Device::get() {
  static Device* d = [] {
    setenv("DVERBS_LCORES", "0", 1);
    auto* x = new Device();  // lives for the process (the device outlives every test)
    auto c = Context::open();
    if (!c) {
      ADD_FAILURE() << "Context::open: " << std::strerror(c.error());
      return x;
    }
    x->ctx = c.take();
    pmd::hca::DeviceTestPeer::stop_inline_helper(*static_cast<pmd::hca::Device*>(x->ctx.raw()));
    x->ctx.query_gid(1, 0, &x->gid);
    x->pd = Pd::alloc(x->ctx).take();
    x->pd2 = Pd::alloc(x->ctx).take();
    return x;
  }();
  return *d;
}

void Buf::init(Pd& pd, size_t bytes, uint32_t access) {
  store.assign(bytes / 8, 0);
  auto m = Mr::reg(pd, data(), bytes, access);
  ASSERT_TRUE(m) << std::strerror(m.error());
  mr = m.take();
}

void Pair::init(QpType type, uint32_t b_access, uint32_t mr_access, QpCap cap,
                const Srq* srq_b) {
  Device& d = Device::get();
  cqa = Cq::create(d.ctx, 256).take();
  cqb = Cq::create(d.ctx, 256).take();
  QpInit ia;
  ia.type = type;
  ia.cap = cap;
  auto qa = Qp::create(d.pd, cqa, cqa, ia);
  ASSERT_TRUE(qa) << std::strerror(qa.error());
  a = qa.take();
  QpInit ib = ia;
  ib.srq = srq_b;
  auto qb = Qp::create(d.pd, cqb, cqb, ib);
  ASSERT_TRUE(qb) << std::strerror(qb.error());
  b = qb.take();
  ba.init(d.pd, 1 << 16, mr_access);
  bb.init(d.pd, 1 << 16, mr_access);
  if (type == QpType::ud) return;
  ASSERT_EQ(a.connect(d.gid, b.qp_num(), 100, 200, Mtu::mtu1024, kAll), 0);
  ASSERT_EQ(b.connect(d.gid, a.qp_num(), 200, 100, Mtu::mtu1024, b_access), 0);
}

Wc wait(Cq& cq) {
  Wc wc{};
  for (long i = 0; i < 50'000'000L; i++)
    if (cq.poll(&wc, 1) == 1) return wc;
  ADD_FAILURE() << "no completion";
  wc.status = WcStatus::general_err;
  wc.wr_id = ~0ull;
  return wc;
}

bool stays_empty(Cq& cq, int polls) {
  Wc wc;
  for (int i = 0; i < polls; i++)
    if (cq.poll(&wc, 1) != 0) return false;
  return true;
}

SendWr send_wr(WrOpcode op, Sge* sge, uint64_t wr_id) {
  SendWr w{};
  w.wr_id = wr_id;
  w.opcode = op;
  w.sg_list = sge;
  w.num_sge = sge && sge->length ? 1 : 0;
  w.send_flags = send_flags::signaled;
  return w;
}

int post(Qp& qp, SendWr& wr, SendWr** bad) {
  SendWr* b = nullptr;
  int rc = qp.post_send(&wr, &b);
  if (bad) *bad = b;
  return rc;
}

int post_recv(Qp& qp, uint64_t addr, uint32_t len, uint32_t lkey, uint64_t wr_id) {
  Sge s{addr, len, lkey};
  RecvWr w{};
  w.wr_id = wr_id;
  w.sg_list = &s;
  w.num_sge = 1;
  RecvWr* bad = nullptr;
  return qp.post_recv(&w, &bad);
}

::testing::AssertionResult bystander_ok() {
  static Pair* p = [] {
    auto* x = new Pair();  // the bystanders live for the process
    x->init();
    return x;
  }();
  static uint8_t round = 0;
  round++;
  for (int i = 0; i < 64; i++) p->ba.data()[i] = uint8_t(round + i);
  std::memset(p->bb.data(), 0, 64);
  if (post_recv(p->b, p->bb.addr(), 64, p->bb.mr.lkey(), 77) != 0)
    return ::testing::AssertionFailure() << "bystander post_recv failed";
  Sge s{p->ba.addr(), 64, p->ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &s, 78);
  if (int rc = post(p->a, w))
    return ::testing::AssertionFailure() << "bystander post_send: " << std::strerror(rc);
  Wc sw = wait(p->cqa), rw = wait(p->cqb);
  if (sw.status != WcStatus::success || rw.status != WcStatus::success || sw.wr_id != 78 ||
      rw.wr_id != 77)
    return ::testing::AssertionFailure()
           << "bystander SEND: " << wc_status_str(sw.status) << " / " << wc_status_str(rw.status);
  if (std::memcmp(p->ba.data(), p->bb.data(), 64) != 0)
    return ::testing::AssertionFailure() << "bystander bytes differ";
  return ::testing::AssertionSuccess();
}

}  // namespace dverbs::misuse
