// Work requests refused at post time: post_send/post_recv return the errno, *bad_wr names
// the first WR not posted, the WRs before it are posted, and the QP is untouched (a valid
// WR posted afterwards completes).
//
//   misuse                                                   post returns
//   unknown opcode (42), unknown send flag (1 << 5)          EINVAL
//   READ / atomic / SEND_WITH_INV on UC, WRITE / bind on UD  EINVAL
//   num_sge > max_send_sge, num_sge < 0, sg_list NULL        EINVAL
//   SGE addr + len overflowing 2^64 (send and receive)       EINVAL
//   inline data > 256 B, inline READ                         EINVAL
//   atomic with an SGE other than one of 8 bytes             EINVAL
//   ATOMIC WRITE of other than 8 bytes; FLUSH with type 0,
//   type 4, level 2, SGEs or inline; either on UC            EINVAL
//   UD: no AH, remote QPN > 24 bits, payload > path MTU      EINVAL
//   post_send in RESET, INIT or RTR; post_recv in RESET      EINVAL
//   post_recv on a QP that takes receives from an SRQ        EINVAL
//   send queue past max_send_wr (4)                          ENOMEM, then OK after completions
//   receive queue past max_recv_wr (4), SRQ past max_wr (4)  ENOMEM, then OK after completions
#include <cstring>

#include "misuse.h"

namespace dverbs::misuse {
namespace {

class Wr : public MisuseTest {
 protected:
  Pair p;
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(p.init()); }

  // A valid SEND (with a receive for it) still completes on `pair`.
  void expect_usable(Pair& pair) {
    ASSERT_EQ(post_recv(pair.b, pair.bb.addr(), 64, pair.bb.mr.lkey(), 50), 0);
    Sge s{pair.ba.addr(), 16, pair.ba.mr.lkey()};
    SendWr w = send_wr(WrOpcode::send, &s, 51);
    ASSERT_EQ(post(pair.a, w), 0);
    Wc a = wait(pair.cqa), b = wait(pair.cqb);
    EXPECT_EQ(a.wr_id, 51u);
    EXPECT_EQ(a.status, WcStatus::success) << wc_status_str(a.status);
    EXPECT_EQ(b.wr_id, 50u);
    EXPECT_EQ(b.status, WcStatus::success) << wc_status_str(b.status);
  }
  // post_send(wr) must fail with `err` naming wr, and leave the QP usable.
  void expect_refused(Pair& pair, SendWr wr, int err = EINVAL) {
    SendWr* bad = nullptr;
    EXPECT_EQ(post(pair.a, wr, &bad), err);
    EXPECT_EQ(bad, &wr);
    EXPECT_TRUE(stays_empty(pair.cqa, 2000)) << "a refused WR must not complete";
    EXPECT_EQ(pair.a.state(), QpState::rts);
    expect_usable(pair);
  }
};

// Posts `wr` itself (post() in misuse.h takes a reference too; this spells out in place).
int post_in_place(Qp& qp, SendWr* wr, SendWr** bad) { return qp.post_send(wr, bad); }

TEST_F(Wr, UnknownOpcodeOrFlagIsEinvalAndNamesTheWr) {
  Sge s{p.ba.addr(), 16, p.ba.mr.lkey()};
  for (uint32_t opc : {42u, 10u, 0xffffffffu}) {
    SCOPED_TRACE(opc);
    SendWr w = send_wr(WrOpcode(opc), &s);
    SendWr* bad = nullptr;
    EXPECT_EQ(post_in_place(p.a, &w, &bad), EINVAL);
    EXPECT_EQ(bad, &w);
  }
  for (uint32_t flag : {1u << 4, 1u << 5, 1u << 31}) {
    SCOPED_TRACE(flag);
    SendWr w = send_wr(WrOpcode::send, &s);
    w.send_flags |= flag;
    SendWr* bad = nullptr;
    EXPECT_EQ(post_in_place(p.a, &w, &bad), EINVAL);
    EXPECT_EQ(bad, &w);
  }
  EXPECT_TRUE(stays_empty(p.cqa, 2000));
  expect_usable(p);
}

// num_sge 0 with sg_list NULL is a valid WR (a zero-length SEND, a bind): no list is read.
// (UBSan: post_send/post_recv must not memcpy from the NULL list, not even 0 bytes.)
TEST_F(Wr, NoSgesWithANullList) {
  RecvWr r{};
  r.wr_id = 40;
  RecvWr* rbad = nullptr;
  ASSERT_EQ(p.b.post_recv(&r, &rbad), 0);
  SendWr w = send_wr(WrOpcode::send, nullptr, 41);
  ASSERT_EQ(w.num_sge, 0);
  ASSERT_EQ(post(p.a, w), 0);
  EXPECT_EQ(wait(p.cqa).status, WcStatus::success);
  Wc wc = wait(p.cqb);
  EXPECT_EQ(wc.wr_id, 40u);
  EXPECT_EQ(wc.byte_len, 0u);
}

TEST_F(Wr, ChainStopsAtTheFirstBadWrAndPostsThoseBefore) {
  ASSERT_EQ(post_recv(p.b, p.bb.addr(), 64, p.bb.mr.lkey(), 60), 0);
  Sge s{p.ba.addr(), 16, p.ba.mr.lkey()};
  SendWr w[3] = {send_wr(WrOpcode::send, &s, 1), send_wr(WrOpcode(42), &s, 2),
                 send_wr(WrOpcode::send, &s, 3)};
  w[0].next = &w[1];
  w[1].next = &w[2];
  SendWr* bad = nullptr;
  EXPECT_EQ(post_in_place(p.a, &w[0], &bad), EINVAL);
  EXPECT_EQ(bad, &w[1]);
  Wc wc = wait(p.cqa);
  EXPECT_EQ(wc.wr_id, 1u);
  EXPECT_EQ(wc.status, WcStatus::success);
  EXPECT_TRUE(stays_empty(p.cqa, 2000)) << "WR 3 came after the bad one: not posted";
  EXPECT_EQ(wait(p.cqb).status, WcStatus::success);
  expect_usable(p);
}

// RESET → INIT → RTR → RTS for a UD QP.
void ud_to_rts(Qp& q) {
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.qkey = 0x1234;
  ASSERT_EQ(q.modify(a, m::state | m::pkey_index | m::port | m::qkey), 0);
  a.qp_state = QpState::rtr;
  ASSERT_EQ(q.modify(a, m::state), 0);
  a.qp_state = QpState::rts;
  ASSERT_EQ(q.modify(a, m::state | m::sq_psn), 0);
}

TEST_F(Wr, OpcodeNotAllowedForTheQpTypeIsEinval) {
  Pair uc, ud;
  ASSERT_NO_FATAL_FAILURE(uc.init(QpType::uc));
  ASSERT_NO_FATAL_FAILURE(ud.init(QpType::ud));
  Sge s{uc.ba.addr(), 8, uc.ba.mr.lkey()};
  for (WrOpcode op : {WrOpcode::rdma_read, WrOpcode::atomic_fetch_and_add,
                      WrOpcode::atomic_cmp_and_swp, WrOpcode::send_with_inv}) {
    SCOPED_TRACE(int(op));
    SendWr w = send_wr(op, &s);
    EXPECT_EQ(post(uc.a, w), EINVAL);
  }
  // A UD QP in RTS with a valid AH and QPN: only the opcode is wrong.
  ASSERT_NO_FATAL_FAILURE(ud_to_rts(ud.a));
  AhAttr aa;
  aa.dgid = dev.gid;
  Ah ah = Ah::create(dev.pd, aa).take();
  Sge t{ud.ba.addr(), 8, ud.ba.mr.lkey()};
  for (WrOpcode op : {WrOpcode::rdma_write, WrOpcode::rdma_write_with_imm, WrOpcode::rdma_read,
                      WrOpcode::atomic_fetch_and_add, WrOpcode::bind_mw, WrOpcode::local_inv}) {
    SCOPED_TRACE(int(op));
    SendWr w = send_wr(op, &t);
    w.wr.ud.ah = ah.raw();
    w.wr.ud.remote_qpn = ud.b.qp_num();
    w.wr.ud.remote_qkey = 0x1234;
    EXPECT_EQ(post(ud.a, w), EINVAL);
  }
  EXPECT_EQ(uc.a.state(), QpState::rts);
  EXPECT_EQ(ud.a.state(), QpState::rts);
  SendWr ok = send_wr(WrOpcode::send, &t);  // the same WR with a UD opcode is accepted
  ok.wr.ud.ah = ah.raw();
  ok.wr.ud.remote_qpn = ud.b.qp_num();
  ok.wr.ud.remote_qkey = 0x1234;
  EXPECT_EQ(post(ud.a, ok), 0);
  EXPECT_EQ(wait(ud.cqa).status, WcStatus::success);
}

TEST_F(Wr, BadScatterGatherListsAreEinval) {
  Sge s[5];
  for (auto& x : s) x = Sge{p.ba.addr(), 8, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, s);
  w.num_sge = 5;  // max_send_sge is 4
  expect_refused(p, w);
  w.num_sge = -1;
  expect_refused(p, w);
  w.num_sge = 1;
  w.sg_list = nullptr;
  expect_refused(p, w);
  Sge wrap{~0ull - 4, 16, p.ba.mr.lkey()};  // addr + len overflows
  w = send_wr(WrOpcode::send, &wrap);
  expect_refused(p, w);
  w = send_wr(WrOpcode::rdma_write, s);
  w.wr.rdma.remote_addr = p.bb.addr();
  w.wr.rdma.rkey = p.bb.mr.rkey();
  Sge big[4] = {{0, 0x80000000u, 0}, {0, 0x80000000u, 0}, {0, 1, 0}, {0, 1, 0}};
  w.sg_list = big;  // 4 GiB + 2: more than a message may carry (2^31)
  w.num_sge = 4;
  expect_refused(p, w);
}

TEST_F(Wr, ReceiveAddrPlusLenOverflowOrTooManySgesIsEinval) {
  Sge wrap{~0ull - 4, 16, p.bb.mr.lkey()};
  RecvWr r{};
  r.wr_id = 9;
  r.sg_list = &wrap;
  r.num_sge = 1;
  RecvWr* bad = nullptr;
  EXPECT_EQ(p.b.post_recv(&r, &bad), EINVAL);
  EXPECT_EQ(bad, &r);
  Sge s[5];
  for (auto& x : s) x = Sge{p.bb.addr(), 8, p.bb.mr.lkey()};
  r.sg_list = s;
  r.num_sge = 5;
  EXPECT_EQ(p.b.post_recv(&r, &bad), EINVAL);
  r.num_sge = -3;
  EXPECT_EQ(p.b.post_recv(&r, &bad), EINVAL);
  r.num_sge = 1;
  r.sg_list = nullptr;
  EXPECT_EQ(p.b.post_recv(&r, &bad), EINVAL);
  EXPECT_TRUE(stays_empty(p.cqb, 2000));
  expect_usable(p);
}

TEST_F(Wr, InlineAndAtomicShapeRulesAreEinval) {
  std::vector<uint8_t> tmp(512, 1);
  Sge in{reinterpret_cast<uint64_t>(tmp.data()), 257, 0};
  SendWr w = send_wr(WrOpcode::send, &in);
  w.send_flags |= send_flags::inline_data;
  expect_refused(p, w);  // more than max_inline_data (256)
  in.length = 8;
  w = send_wr(WrOpcode::rdma_read, &in);
  w.send_flags |= send_flags::inline_data;  // the READ target cannot be inline
  expect_refused(p, w);
  Sge a4{p.ba.addr(), 4, p.ba.mr.lkey()};
  w = send_wr(WrOpcode::atomic_fetch_and_add, &a4);
  w.wr.atomic.remote_addr = p.bb.addr();
  w.wr.atomic.rkey = p.bb.mr.rkey();
  expect_refused(p, w);  // the original value needs exactly 8 bytes
  Sge a2[2] = {{p.ba.addr(), 4, p.ba.mr.lkey()}, {p.ba.addr(8), 4, p.ba.mr.lkey()}};
  w.sg_list = a2;
  w.num_sge = 2;
  expect_refused(p, w);
}

// IBA 1.5 ATOMIC WRITE (exactly 8 bytes) and FLUSH (a known placement type and level, no
// local buffer); both RC only.
TEST_F(Wr, AtomicWriteAndFlushShapeRulesAreEinval) {
  Sge a4{p.ba.addr(), 4, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::atomic_write, &a4);
  w.wr.rdma.remote_addr = p.bb.addr();
  w.wr.rdma.rkey = p.bb.mr.rkey();
  expect_refused(p, w);  // 4 bytes
  Sge a16{p.ba.addr(), 16, p.ba.mr.lkey()};
  w.sg_list = &a16;
  expect_refused(p, w);  // 16 bytes
  auto flush_wr = [&](uint8_t type, uint8_t level) {
    SendWr f = send_wr(WrOpcode::flush, nullptr);
    f.num_sge = 0;
    f.sg_list = nullptr;
    f.wr.flush.remote_addr = p.bb.addr();
    f.wr.flush.rkey = p.bb.mr.rkey();
    f.wr.flush.type = type;
    f.wr.flush.level = level;
    f.wr.flush.length = 64;
    return f;
  };
  expect_refused(p, flush_wr(0, flush::level_range));
  expect_refused(p, flush_wr(4, flush::level_range));
  expect_refused(p, flush_wr(flush::type_global, 2));
  SendWr f = flush_wr(flush::type_global, flush::level_range);
  Sge s8{p.ba.addr(), 8, p.ba.mr.lkey()};
  f.sg_list = &s8;
  f.num_sge = 1;
  expect_refused(p, f);  // a FLUSH has no local buffer
  Pair uc;
  ASSERT_NO_FATAL_FAILURE(uc.init(QpType::uc));
  Sge u8{uc.ba.addr(), 8, uc.ba.mr.lkey()};
  SendWr uw = send_wr(WrOpcode::atomic_write, &u8);
  EXPECT_EQ(post(uc.a, uw), EINVAL);
  EXPECT_EQ(uc.a.state(), QpState::rts);
}

TEST_F(Wr, UdWithoutAhOrWithABadQpnOrTooLongIsEinval) {
  Pair ud;
  ASSERT_NO_FATAL_FAILURE(ud.init(QpType::ud));
  ASSERT_NO_FATAL_FAILURE(ud_to_rts(ud.a));
  AhAttr aa;
  aa.dgid = dev.gid;
  Ah ah = Ah::create(dev.pd, aa).take();
  PortAttr pa;
  ASSERT_EQ(dev.ctx.query_port(1, &pa), 0);
  Sge s{ud.ba.addr(), 16, ud.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &s);
  w.wr.ud.ah = nullptr;
  w.wr.ud.remote_qpn = ud.b.qp_num();
  EXPECT_EQ(post(ud.a, w), EINVAL);
  w.wr.ud.ah = ah.raw();
  w.wr.ud.remote_qpn = 1u << 24;
  EXPECT_EQ(post(ud.a, w), EINVAL);
  w.wr.ud.remote_qpn = ud.b.qp_num();
  Sge big{ud.ba.addr(), mtu_bytes(pa.active_mtu) + 1, ud.ba.mr.lkey()};
  w.sg_list = &big;
  EXPECT_EQ(post(ud.a, w), EINVAL);
  EXPECT_EQ(ud.a.state(), QpState::rts);
  EXPECT_TRUE(stays_empty(ud.cqa, 2000));
}

TEST_F(Wr, PostingInTheWrongStateIsEinval) {
  Device& d = dev;
  Cq cq = Cq::create(d.ctx, 16).take();
  QpInit init;
  Qp q = Qp::create(d.pd, cq, cq, init).take();
  Buf b;
  b.init(d.pd, 4096, kAll);
  Sge s{b.addr(), 8, b.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &s);
  EXPECT_EQ(post(q, w), EINVAL) << "RESET";
  EXPECT_EQ(post_recv(q, b.addr(), 8, b.mr.lkey()), EINVAL) << "RESET";
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  ASSERT_EQ(q.modify(a, m::state | m::pkey_index | m::port | m::access_flags), 0);
  EXPECT_EQ(post(q, w), EINVAL) << "INIT";
  EXPECT_EQ(post_recv(q, b.addr(), 8, b.mr.lkey()), 0) << "receives may be posted in INIT";
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.dest_qp_num = q.qp_num();
  a.ah_attr.dgid = d.gid;
  ASSERT_EQ(q.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                            m::max_dest_rd_atomic | m::min_rnr_timer),
            0);
  EXPECT_EQ(post(q, w), EINVAL) << "RTR";
  EXPECT_TRUE(stays_empty(cq, 2000));
}

TEST_F(Wr, PostRecvOnAQpWithAnSrqIsEinval) {
  auto s = Srq::create(dev.pd, 8, 1);
  ASSERT_TRUE(s);
  Srq srq = s.take();
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init(QpType::rc, kAll, kAll, {16, 16, 4, 4, 0}, &srq));
  EXPECT_EQ(post_recv(q.b, q.bb.addr(), 8, q.bb.mr.lkey()), EINVAL);
  // The SRQ feeds it instead.
  Sge r{q.bb.addr(), 64, q.bb.mr.lkey()};
  RecvWr rw{};
  rw.wr_id = 50;
  rw.sg_list = &r;
  rw.num_sge = 1;
  RecvWr* bad;
  ASSERT_EQ(srq.post_recv(&rw, &bad), 0);
  Sge t{q.ba.addr(), 16, q.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &t, 51);
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::success);
  EXPECT_EQ(wait(q.cqb).wr_id, 50u);
}

// Past max_wr: ENOMEM, never a wait; the QP is intact and takes WRs again once some complete.
TEST_F(Wr, SendQueuePastMaxWrIsEnomemAndRecovers) {
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init(QpType::rc, kAll, kAll, {4, 16, 4, 4, 0}));
  Sge s{q.ba.addr(), 8, q.ba.mr.lkey()};
  // No receive at B: the first SEND is RNR NAKed and retried forever (rnr_retry 7), so the
  // queue stays full.
  for (uint64_t i = 0; i < 3; i++) {
    SendWr w = send_wr(WrOpcode::send, &s, 10 + i);
    ASSERT_EQ(post(q.a, w), 0) << i;
  }
  SendWr chain[2] = {send_wr(WrOpcode::send, &s, 13), send_wr(WrOpcode::send, &s, 14)};
  chain[0].next = &chain[1];
  SendWr* bad = nullptr;
  EXPECT_EQ(post_in_place(q.a, &chain[0], &bad), ENOMEM);
  EXPECT_EQ(bad, &chain[1]) << "the 4th WR fits, the 5th does not";
  SendWr more = send_wr(WrOpcode::send, &s, 15);
  EXPECT_EQ(post_in_place(q.a, &more, &bad), ENOMEM);
  EXPECT_EQ(bad, &more);
  EXPECT_EQ(q.a.state(), QpState::rts);
  for (uint64_t i = 0; i < 4; i++) ASSERT_EQ(post_recv(q.b, q.bb.addr(i * 64), 64, q.bb.mr.lkey(), 20 + i), 0);
  for (uint64_t i = 0; i < 4; i++) {
    Wc wc = wait(q.cqa);
    EXPECT_EQ(wc.wr_id, 10 + i);
    EXPECT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wait(q.cqb).wr_id, 20 + i);
  }
  expect_usable(q);
}

TEST_F(Wr, ReceiveQueuePastMaxWrIsEnomemAndRecovers) {
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init(QpType::rc, kAll, kAll, {16, 4, 4, 4, 0}));
  for (uint64_t i = 0; i < 4; i++)
    ASSERT_EQ(post_recv(q.b, q.bb.addr(i * 64), 64, q.bb.mr.lkey(), i), 0);
  EXPECT_EQ(post_recv(q.b, q.bb.addr(), 64, q.bb.mr.lkey(), 4), ENOMEM);
  Sge s{q.ba.addr(), 8, q.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &s, 9);
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::success);
  EXPECT_EQ(wait(q.cqb).wr_id, 0u);
  EXPECT_EQ(post_recv(q.b, q.bb.addr(), 64, q.bb.mr.lkey(), 5), 0) << "room again";
  EXPECT_EQ(post_recv(q.b, q.bb.addr(), 64, q.bb.mr.lkey(), 6), ENOMEM);
}

TEST_F(Wr, SrqPastMaxWrIsEnomemAndRecovers) {
  auto s = Srq::create(dev.pd, 4, 1);
  ASSERT_TRUE(s);
  Srq srq = s.take();
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init(QpType::rc, kAll, kAll, {16, 16, 4, 4, 0}, &srq));
  Sge r{q.bb.addr(), 64, q.bb.mr.lkey()};
  RecvWr rw{};
  rw.sg_list = &r;
  rw.num_sge = 1;
  RecvWr* bad;
  for (int i = 0; i < 4; i++) ASSERT_EQ(srq.post_recv(&rw, &bad), 0) << i;
  EXPECT_EQ(srq.post_recv(&rw, &bad), ENOMEM);
  EXPECT_EQ(bad, &rw);
  Sge t{q.ba.addr(), 16, q.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::send, &t);
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::success);
  EXPECT_EQ(wait(q.cqb).status, WcStatus::success);
  EXPECT_EQ(srq.post_recv(&rw, &bad), 0) << "room again";
}

}  // namespace
}  // namespace dverbs::misuse
