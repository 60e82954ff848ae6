// Object misuse through the C++ API and the midlayer calls: bad creation arguments,
// destruction in a disallowed order (EBUSY, the object stays alive and usable), empty
// handles, null and out-of-range arguments to mid:: calls.
//
//   misuse                                                       returns
//   Mr::reg: length 0, addr+len overflowing, unknown access bit, EINVAL
//            remote write/atomic without local write, zero-based
//   Cq::create: 0 entries, more than max_cqe                     EINVAL
//   Srq::create: 0 WRs, > max_srq_wr, 17 SGEs, limit > max_wr    EINVAL; arm(limit > capacity) EINVAL
//   Mw::alloc type 0 / 3                                         EINVAL
//   Ah::create: GID not IPv4-mapped, port 2, SGID index 1        EINVAL
//   objects from an empty Context/Pd                             EINVAL
//   Pd::destroy with an MR, QP, AH, MW or SRQ on it              EBUSY (PD still usable)
//   Cq::destroy with a QP on it; Srq::destroy with a QP on it    EBUSY (still usable)
//   Mr::destroy with a window bound to it                        EBUSY
//   mid:: calls with NULL objects; query_port 0/2; query_gid 1/-1 EINVAL
//   methods of an empty (destroyed or moved-from) handle         EINVAL (EmptyHandle.*)
#include <cstring>

#include "midlayer/core.h"
#include "misuse.h"

namespace dverbs::misuse {
namespace {

class Objects : public MisuseTest {};

TEST_F(Objects, BadRegistrationsAreEinval) {
  std::vector<uint64_t> mem(512);
  void* p = mem.data();
  EXPECT_EQ(Mr::reg(dev.pd, p, 0, kAll).error(), EINVAL);
  EXPECT_EQ(Mr::reg(dev.pd, reinterpret_cast<void*>(~0ull - 4095), 8192, kAll).error(), EINVAL);
  EXPECT_EQ(Mr::reg(dev.pd, p, 4096, 1u << 7).error(), EINVAL);
  EXPECT_EQ(Mr::reg(dev.pd, p, 4096, access::zero_based | access::local_write).error(), EINVAL);
  EXPECT_EQ(Mr::reg(dev.pd, p, 4096, access::remote_write).error(), EINVAL);
  EXPECT_EQ(Mr::reg(dev.pd, p, 4096, access::remote_atomic | access::remote_read).error(), EINVAL);
  EXPECT_TRUE(Mr::reg(dev.pd, p, 4096, access::remote_read)) << "remote read alone is fine";
  EXPECT_EQ(Mr::reg(Pd{}, p, 4096, kAll).error(), EINVAL);
}

TEST_F(Objects, BadQueuesAreEinval) {
  DeviceAttr da;
  ASSERT_EQ(dev.ctx.query_device(&da), 0);
  EXPECT_EQ(Cq::create(dev.ctx, 0).error(), EINVAL);
  EXPECT_EQ(Cq::create(dev.ctx, da.max_cqe + 1).error(), EINVAL);
  EXPECT_EQ(Cq::create(Context{}, 16).error(), EINVAL);
  EXPECT_EQ(Srq::create(dev.pd, 0, 1).error(), EINVAL);
  EXPECT_EQ(Srq::create(dev.pd, da.max_srq_wr + 1, 1).error(), EINVAL);
  EXPECT_EQ(Srq::create(dev.pd, 16, da.max_sge + 1).error(), EINVAL);
  EXPECT_EQ(Srq::create(dev.pd, 16, 1, 17).error(), EINVAL);
  EXPECT_EQ(Srq::create(Pd{}, 16, 1).error(), EINVAL);
  auto s = Srq::create(dev.pd, 16, 1);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->arm(1000), EINVAL);
  EXPECT_EQ(s->arm(4), 0);
  EXPECT_EQ(Pd::alloc(Context{}).error(), EINVAL);
}

TEST_F(Objects, BadWindowsAndAddressHandlesAreEinval) {
  for (uint32_t t : {0u, 3u, 255u}) EXPECT_EQ(Mw::alloc(dev.pd, t).error(), EINVAL) << t;
  EXPECT_EQ(Mw::alloc(Pd{}, 2).error(), EINVAL);
  AhAttr a;
  a.dgid = dev.gid;
  a.dgid.raw[11] = 0;  // not IPv4-mapped
  EXPECT_EQ(Ah::create(dev.pd, a).error(), EINVAL);
  a.dgid = dev.gid;
  a.port_num = 2;
  EXPECT_EQ(Ah::create(dev.pd, a).error(), EINVAL);
  a.port_num = 1;
  a.sgid_index = 1;
  EXPECT_EQ(Ah::create(dev.pd, a).error(), EINVAL);
  a.sgid_index = 0;
  EXPECT_TRUE(Ah::create(dev.pd, a));
  EXPECT_EQ(Ah::create(Pd{}, a).error(), EINVAL);
  // An AH destroyed twice through the midlayer: EINVAL, and the pool does not hand the
  // same AH out twice afterwards.
  mid::Ah* ah = nullptr;
  ASSERT_EQ(mid::create_ah(dev.pd.raw(), &a, &ah), 0);
  EXPECT_EQ(mid::destroy_ah(ah), 0);
  EXPECT_EQ(mid::destroy_ah(ah), EINVAL);
  mid::Ah *x = nullptr, *y = nullptr;
  ASSERT_EQ(mid::create_ah(dev.pd.raw(), &a, &x), 0);
  ASSERT_EQ(mid::create_ah(dev.pd.raw(), &a, &y), 0);
  EXPECT_NE(x, y);
  EXPECT_EQ(mid::destroy_ah(x), 0);
  EXPECT_EQ(mid::destroy_ah(y), 0);
}

TEST_F(Objects, PdInUseIsEbusyAndStaysUsable) {
  Pd pd = Pd::alloc(dev.ctx).take();
  std::vector<uint64_t> mem(512);
  {
    Mr mr = Mr::reg(pd, mem.data(), 4096, kAll).take();
    EXPECT_EQ(pd.destroy(), EBUSY);
    EXPECT_TRUE(Mr::reg(pd, mem.data(), 4096, kAll)) << "the PD still works";
  }
  {
    AhAttr aa;
    aa.dgid = dev.gid;
    Ah ah = Ah::create(pd, aa).take();
    EXPECT_EQ(pd.destroy(), EBUSY);
  }
  {
    Mw mw = Mw::alloc(pd, 2).take();
    EXPECT_EQ(pd.destroy(), EBUSY);
  }
  {
    Srq srq = Srq::create(pd, 4, 1).take();
    EXPECT_EQ(pd.destroy(), EBUSY);
  }
  {
    Cq cq = Cq::create(dev.ctx, 16).take();
    QpInit init;
    Qp qp = Qp::create(pd, cq, cq, init).take();
    EXPECT_EQ(pd.destroy(), EBUSY);
    EXPECT_EQ(cq.destroy(), EBUSY) << "a CQ a QP uses";
    Wc wc;
    EXPECT_EQ(cq.poll(&wc, 1), 0) << "the CQ still works";
  }
  EXPECT_EQ(pd.destroy(), 0);
}

TEST_F(Objects, SrqInUseIsEbusyAndKeepsServing) {
  Srq srq = Srq::create(dev.pd, 8, 1).take();
  Pair p;
  ASSERT_NO_FATAL_FAILURE(p.init(QpType::rc, kAll, kAll, {16, 16, 4, 4, 0}, &srq));
  EXPECT_EQ(srq.destroy(), EBUSY);
  Sge r{p.bb.addr(), 64, p.bb.mr.lkey()};
  RecvWr rw{};
  rw.wr_id = 3;
  rw.sg_list = &r;
  rw.num_sge = 1;
  RecvWr* bad;
  ASSERT_EQ(srq.post_recv(&rw, &bad), 0);
  Sge s{p.ba.addr(), 8, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &s);
  ASSERT_EQ(post(p.a, w), 0);
  EXPECT_EQ(wait(p.cqa).status, WcStatus::success);
  EXPECT_EQ(wait(p.cqb).wr_id, 3u);
  EXPECT_EQ(p.b.destroy(), 0);
  EXPECT_EQ(srq.destroy(), 0) << "allowed once its QP is gone";
}

TEST_F(Objects, MrWithABoundWindowIsEbusy) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(p.init(QpType::rc, kAll, kAll | access::mw_bind));
  Mw mw = Mw::alloc(dev.pd, 2).take();
  SendWr b{};
  b.opcode = WrOpcode::bind_mw;
  b.send_flags = send_flags::signaled;
  b.bind_mw.mw = mw.raw();
  b.bind_mw.rkey = mw.next_rkey();
  b.bind_mw.bind_info.mr = p.bb.mr.raw();
  b.bind_mw.bind_info.addr = p.bb.addr();
  b.bind_mw.bind_info.length = 64;
  b.bind_mw.bind_info.mw_access_flags = access::remote_read;
  ASSERT_EQ(post(p.b, b), 0);
  ASSERT_EQ(wait(p.cqb).status, WcStatus::success);
  EXPECT_EQ(p.bb.mr.destroy(), EBUSY);
  EXPECT_NE(p.bb.mr.raw(), nullptr);
  EXPECT_EQ(mw.destroy(), 0);
  EXPECT_EQ(p.bb.mr.destroy(), 0);
}

TEST_F(Objects, MidlayerCallsRejectNullAndOutOfRangeArguments) {
  mid::Device* d = dev.ctx.raw();
  DeviceAttr da;
  PortAttr pa;
  Gid g;
  EXPECT_EQ(mid::query_device(nullptr, &da), EINVAL);
  EXPECT_EQ(mid::query_device(d, nullptr), EINVAL);
  EXPECT_EQ(mid::query_port(d, 0, &pa), EINVAL);
  EXPECT_EQ(mid::query_port(d, 2, &pa), EINVAL);
  EXPECT_EQ(mid::query_gid(d, 1, 1, &g), EINVAL);
  EXPECT_EQ(mid::query_gid(d, 1, -1, &g), EINVAL);
  EXPECT_EQ(mid::alloc_pd(nullptr, nullptr), EINVAL);
  EXPECT_EQ(mid::dealloc_pd(nullptr), EINVAL);
  EXPECT_EQ(mid::reg_mr(nullptr, nullptr, 0, 0, nullptr), EINVAL);
  EXPECT_EQ(mid::dereg_mr(nullptr), EINVAL);
  mid::Cq* cq = nullptr;
  EXPECT_EQ(mid::create_cq(d, 0, nullptr, nullptr, nullptr, &cq), EINVAL);
  EXPECT_EQ(mid::destroy_cq(nullptr), EINVAL);
  mid::QpInitAttr init;
  mid::Qp* qp = nullptr;
  EXPECT_EQ(mid::create_qp(dev.pd.raw(), &init, &qp), EINVAL) << "no CQs";
  EXPECT_EQ(mid::create_qp(dev.pd.raw(), nullptr, &qp), EINVAL);
  QpAttr a;
  EXPECT_EQ(mid::modify_qp(nullptr, &a, 0), EINVAL);
  EXPECT_EQ(mid::query_qp(nullptr, &a, 0, nullptr), EINVAL);
  EXPECT_EQ(mid::destroy_qp(nullptr), EINVAL);
  EXPECT_EQ(mid::destroy_srq(nullptr), EINVAL);
  EXPECT_EQ(mid::modify_srq(nullptr, 0, 0, 0), EINVAL);
  mid::Mw* mw = nullptr;
  EXPECT_EQ(mid::alloc_mw(dev.pd.raw(), 7, &mw), EINVAL);
  EXPECT_EQ(mid::dealloc_mw(nullptr), EINVAL);
  AhAttr aa;
  mid::Ah* ah = nullptr;
  EXPECT_EQ(mid::create_ah(nullptr, &aa, &ah), EINVAL);
  EXPECT_EQ(mid::destroy_ah(nullptr), EINVAL);
  Cq real = Cq::create(dev.ctx, 16).take();
  Wc wc;
  EXPECT_EQ(mid::poll_cq(real.raw(), -1, &wc), -EINVAL);
}

// Methods of an empty handle (never created, destroyed, or moved from). The C++ API does
// not document these; a verbs API must not crash on them: EINVAL (poll: -EINVAL).
TEST(EmptyHandle, MethodsReturnEinvalInsteadOfCrashing) {
  Device::get();
  Qp qp;
  SendWr sw{};
  SendWr* sbad = nullptr;
  RecvWr rw{};
  RecvWr* rbad = nullptr;
  QpAttr a;
  EXPECT_EQ(qp.modify(a, qp_attr_mask::state), EINVAL);
  EXPECT_EQ(qp.query(&a), EINVAL);
  EXPECT_EQ(qp.post_send(&sw, &sbad), EINVAL);
  EXPECT_EQ(qp.post_recv(&rw, &rbad), EINVAL);
  EXPECT_EQ(qp.qp_num(), 0u);
  Cq cq;
  Wc wc;
  EXPECT_EQ(cq.poll(&wc, 1), -EINVAL);
  EXPECT_EQ(cq.req_notify(), EINVAL);
  Srq srq;
  EXPECT_EQ(srq.post_recv(&rw, &rbad), EINVAL);
  EXPECT_EQ(srq.arm(1), EINVAL);
  Mr mr;
  EXPECT_EQ(mr.lkey(), 0u);
  Mw mw;
  EXPECT_EQ(mw.rkey(), 0u);
}

}  // namespace
}  // namespace dverbs::misuse
