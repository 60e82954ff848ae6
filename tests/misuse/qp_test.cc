// QP creation and modify_qp misuse (IBA 10.3.1, Table 91: required and optional attributes
// of each transition). Every refused call returns EINVAL (EOPNOTSUPP where stated) and
// leaves the QP in its state, still able to take a legal transition.
//
//   misuse                                                       returns
//   QP type 1 / 99, caps above the device limits                 EINVAL
//   RESET→RTR, RESET→RTS, INIT→RTS, RTR→INIT, RESET→SQD, state 7  EINVAL
//   a required attribute missing (RC INIT without access flags,  EINVAL
//   UD INIT without Q_Key, RTR without AV, RTS without SQ PSN)
//   an attribute the transition does not take (SQ PSN at INIT,   EINVAL
//   path MTU at RTS→RTS, Q_Key on RC)
//   values out of range: port 2, P_Key index 1, path MTU 0 / 6,  EINVAL
//   timeout 32, retry 8, RNR retry 8, min RNR timer 32, rd_atomic
//   17, dest QPN ≥ 2^24, PSN ≥ 2^24, unknown access bit, a GID that
//   is not IPv4-mapped, SGID index 1
//   resizing the queues of a live QP (IBV_QP_CAP)                EINVAL
//   IBV_QP_CUR_STATE that is not the current state               EINVAL
#include <cstring>

#include "misuse.h"

namespace dverbs::misuse {
namespace {

namespace m = qp_attr_mask;

class QpMisuse : public MisuseTest {
 protected:
  Cq cq;
  Qp qp;
  void SetUp() override {
    cq = Cq::create(dev.ctx, 64).take();
    make(QpType::rc);
  }
  void make(QpType t) {
    QpInit init;
    init.type = t;
    auto q = Qp::create(dev.pd, cq, cq, init);
    ASSERT_TRUE(q) << std::strerror(q.error());
    qp = q.take();
  }
  QpAttr init_attr() const {
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    a.qkey = 0x1234;
    a.qp_access_flags = access::remote_write;
    return a;
  }
  QpAttr rtr_attr() const {
    QpAttr a;
    a.qp_state = QpState::rtr;
    a.path_mtu = Mtu::mtu1024;
    a.dest_qp_num = qp.qp_num();
    a.rq_psn = 1;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 1;
    a.ah_attr.dgid = dev.gid;
    return a;
  }
  QpAttr rts_attr() const {
    QpAttr a;
    a.qp_state = QpState::rts;
    a.sq_psn = 1;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 1;
    return a;
  }
  static constexpr uint32_t kInit = m::state | m::pkey_index | m::port | m::access_flags;
  static constexpr uint32_t kRtr = m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                                   m::max_dest_rd_atomic | m::min_rnr_timer;
  static constexpr uint32_t kRts =
      m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic;

  // modify must fail with `err` and leave the state as it was.
  void refused(const QpAttr& a, uint32_t mask, int err = EINVAL) {
    const QpState before = qp.state();
    EXPECT_EQ(qp.modify(a, mask), err);
    EXPECT_EQ(qp.state(), before);
  }
  void to_rts() {
    ASSERT_EQ(qp.modify(init_attr(), kInit), 0);
    ASSERT_EQ(qp.modify(rtr_attr(), kRtr), 0);
    ASSERT_EQ(qp.modify(rts_attr(), kRts), 0);
  }
};

TEST_F(QpMisuse, UnknownQpTypeOrCapsAboveLimitsIsEinval) {
  DeviceAttr da;
  ASSERT_EQ(dev.ctx.query_device(&da), 0);
  for (uint32_t t : {0u, 1u, 5u, 99u}) {
    QpInit init;
    init.type = QpType(t);
    EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL) << t;
  }
  QpInit init;
  init.cap = {da.max_qp_wr + 1, 16, 1, 1, 0};
  EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL);
  init.cap = {16, da.max_qp_wr + 1, 1, 1, 0};
  EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL);
  init.cap = {16, 16, da.max_sge + 1, 1, 0};
  EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL);
  init.cap = {16, 16, 1, da.max_sge + 1, 0};
  EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL);
  init.cap = {16, 16, 1, 1, da.max_inline_data + 1};
  EXPECT_EQ(Qp::create(dev.pd, cq, cq, init).error(), EINVAL);
  init.cap = {16, 16, 1, 1, 0};
  Cq empty;
  EXPECT_EQ(Qp::create(dev.pd, empty, cq, init).error(), EINVAL) << "no send CQ";
}

TEST_F(QpMisuse, IllegalTransitionsAreEinval) {
  refused(rtr_attr(), kRtr);  // RESET → RTR
  refused(rts_attr(), kRts);  // RESET → RTS
  QpAttr sqd;
  sqd.qp_state = QpState::sqd;
  refused(sqd, m::state);     // RESET → SQD
  for (uint32_t s : {7u, 99u, 0xffffffffu}) {
    QpAttr a;
    a.qp_state = QpState(s);
    refused(a, m::state);
  }
  ASSERT_EQ(qp.modify(init_attr(), kInit), 0);
  refused(rts_attr(), kRts);  // INIT → RTS
  ASSERT_EQ(qp.modify(rtr_attr(), kRtr), 0);
  QpAttr back = init_attr();
  refused(back, kInit);       // RTR → INIT
  ASSERT_EQ(qp.modify(rts_attr(), kRts), 0) << "a legal transition still works";
}

TEST_F(QpMisuse, MissingRequiredAttributeIsEinval) {
  refused(init_attr(), kInit & ~m::access_flags);  // RC INIT needs access flags
  refused(init_attr(), kInit & ~m::port);
  ASSERT_EQ(qp.modify(init_attr(), kInit), 0);
  refused(rtr_attr(), kRtr & ~m::av);
  refused(rtr_attr(), kRtr & ~m::dest_qpn);
  refused(rtr_attr(), kRtr & ~m::max_dest_rd_atomic);
  ASSERT_EQ(qp.modify(rtr_attr(), kRtr), 0);
  refused(rts_attr(), kRts & ~m::sq_psn);
  refused(rts_attr(), kRts & ~m::retry_cnt);
  make(QpType::ud);
  refused(init_attr(), m::state | m::pkey_index | m::port);  // UD INIT needs the Q_Key
}

TEST_F(QpMisuse, AttributeTheTransitionDoesNotTakeIsEinval) {
  refused(init_attr(), kInit | m::sq_psn);
  refused(init_attr(), kInit | m::qkey);  // RC has no Q_Key
  refused(init_attr(), kInit | m::cap);   // no resizing
  to_rts();
  QpAttr a = rts_attr();
  refused(a, m::state | m::path_mtu);     // RTS → RTS cannot change the path MTU
  refused(a, m::state | m::dest_qpn);
  refused(a, m::cap);
  make(QpType::ud);
  QpAttr u = init_attr();
  refused(u, m::state | m::pkey_index | m::port | m::qkey | m::access_flags);
}

TEST_F(QpMisuse, ValuesOutOfRangeAreEinval) {
  QpAttr a = init_attr();
  a.port_num = 2;
  refused(a, kInit);
  a = init_attr();
  a.pkey_index = 1;
  refused(a, kInit);
  a = init_attr();
  a.qp_access_flags = 1u << 7;
  refused(a, kInit);
  ASSERT_EQ(qp.modify(init_attr(), kInit), 0);
  for (uint32_t mtu : {0u, 6u, 0xffu}) {
    a = rtr_attr();
    a.path_mtu = Mtu(mtu);
    refused(a, kRtr);
  }
  a = rtr_attr();
  a.dest_qp_num = 1u << 24;
  refused(a, kRtr);
  a = rtr_attr();
  a.rq_psn = 1u << 24;
  refused(a, kRtr);
  a = rtr_attr();
  a.max_dest_rd_atomic = 129;  // device max_qp_rd_atom is 128
  refused(a, kRtr);
  a = rtr_attr();
  a.min_rnr_timer = 32;
  refused(a, kRtr);
  a = rtr_attr();
  a.ah_attr.dgid.raw[10] = 0;  // not ::ffff:a.b.c.d
  refused(a, kRtr);
  a = rtr_attr();
  a.ah_attr.sgid_index = 1;
  refused(a, kRtr);
  a = rtr_attr();
  a.ah_attr.port_num = 2;
  refused(a, kRtr);
  ASSERT_EQ(qp.modify(rtr_attr(), kRtr), 0);
  a = rts_attr();
  a.timeout = 32;
  refused(a, kRts);
  a = rts_attr();
  a.retry_cnt = 8;
  refused(a, kRts);
  a = rts_attr();
  a.rnr_retry = 8;
  refused(a, kRts);
  a = rts_attr();
  a.max_rd_atomic = 129;  // device max_qp_init_rd_atom is 128
  refused(a, kRts);
  a = rts_attr();
  a.sq_psn = 1u << 24;
  refused(a, kRts);
  ASSERT_EQ(qp.modify(rts_attr(), kRts), 0);
}

TEST_F(QpMisuse, CurrentStateThatIsNotCurrentIsEinval) {
  QpAttr a = init_attr();
  a.cur_qp_state = QpState::rts;
  refused(a, kInit | m::cur_state);
  to_rts();
  QpAttr r = rts_attr();
  r.cur_qp_state = QpState::sqd;
  refused(r, m::state | m::cur_state);  // RTS → RTS claiming SQD
}

TEST_F(QpMisuse, ErrAndResetAreReachableFromAnywhereAndTheQpIsReusable) {
  to_rts();
  QpAttr e;
  e.qp_state = QpState::err;
  ASSERT_EQ(qp.modify(e, m::state), 0);
  refused(rts_attr(), kRts);  // ERR → RTS: only RESET leaves ERR
  QpAttr r;
  r.qp_state = QpState::reset;
  ASSERT_EQ(qp.modify(r, m::state), 0);
  to_rts();
  EXPECT_EQ(qp.state(), QpState::rts);
}

}  // namespace
}  // namespace dverbs::misuse
