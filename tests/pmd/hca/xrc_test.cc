// Protocol tests of XRC (the XRC annex): the XRCETH on the wire (parse and build, its place
// among the extension headers), the responder of an XRC_RECV QP (the request lands in the
// XRC SRQ its XRCETH names, completes on that SRQ's CQ and is acknowledged with XRC's
// ACK; an SRQ of another domain, or none, is refused with a NAK and counted, never
// delivered; RC opcodes are not XRC's), and the requester of an XRC_SEND QP (XRC opcodes,
// the WR's SRQ number in the XRCETH). Objects come from the midlayer API on the harness's
// device; the peer is the harness's fake one.
#include <fcntl.h>

#include <cstring>

#include "harness.h"
#include "midlayer/core.h"

namespace dverbs::proto {
namespace {

namespace wire = pmd::wire;
namespace opf = wire::opf;

TEST(XrcWire, OpcodeTableAndXrcethPlace) {
  const auto& send = wire::opcode_info(op::kXrc | op::kSendOnly);
  EXPECT_STREQ(send.name, "XRC_SEND_ONLY");
  EXPECT_TRUE(send.flags & opf::kXrceth);
  EXPECT_EQ(send.ext_len, wire::kXrcethLen);
  const auto& ack = wire::opcode_info(op::kXrc | op::kAck);
  EXPECT_TRUE(ack.flags & opf::kValid);
  EXPECT_FALSE(ack.flags & opf::kXrceth) << "responses carry no XRCETH";
  const auto& cas = wire::opcode_info(op::kXrc | op::kCmpSwap);
  EXPECT_EQ(cas.ext_len, wire::kXrcethLen + wire::kAtomicEthLen);
  EXPECT_EQ(wire::ext_offset(cas.flags, opf::kAtomicEth), wire::kXrcethLen);
  EXPECT_FALSE(wire::opcode_info(op::kRc | op::kSendOnly).flags & opf::kXrceth);
}

TEST(XrcWire, BuildThenParseAWriteWithXrceth) {
  Harness& h = Harness::get();
  ASSERT_TRUE(h.ready()) << h.error();
  Pkt p;
  p.opcode = op::kXrc | op::kWriteOnlyImm;
  p.dest_qp = 0x1234;
  p.psn = 77;
  p.xrc_srqn = 0xabcdef;
  p.va = 0x1122334455667788ull;
  p.rkey = 0x99;
  p.dma_len = 5;
  p.imm_be = 0x01020304;
  p.payload = {1, 2, 3, 4, 5};
  const std::vector<uint8_t> f = h.build(p);
  wire::Packet pk;
  ASSERT_EQ(wire::parse_frame(f.data(), uint32_t(f.size()), &pk, true), wire::ParseError::ok);
  ASSERT_NE(pk.xrceth, nullptr);
  EXPECT_EQ(pk.xrceth->srq_num(), 0xabcdefu);
  EXPECT_EQ(pk.xrceth->resv, 0);
  ASSERT_NE(pk.reth, nullptr);
  // XRCETH right after the BTH, then RETH, then ImmDt (the XRC annex's header order).
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(pk.xrceth),
            reinterpret_cast<const uint8_t*>(pk.bth) + 12);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(pk.reth),
            reinterpret_cast<const uint8_t*>(pk.xrceth) + 4);
  EXPECT_EQ(pk.reth->vaddr(), p.va);
  EXPECT_EQ(pk.reth->r_key(), 0x99u);
  EXPECT_EQ(pk.imm_data, 0x01020304u);
  EXPECT_EQ(std::vector<uint8_t>(pk.payload, pk.payload + pk.payload_len), p.payload);
  // A frame cut inside the XRCETH is refused, never read past its end.
  std::vector<uint8_t> cut(f.begin(), f.begin() + 14 + 20 + 8 + 12 + 2);
  EXPECT_NE(wire::parse_frame(cut.data(), uint32_t(cut.size()), &pk, false), wire::ParseError::ok);
}

// An XRC_RECV QP in RTR towards the fake peer, two domains with an SRQ each: `srq` (on
// the fixture's CQ) in the QP's domain, `foreign` (on a CQ of its own) in another.
class XrcResp : public ProtoTest {
 protected:
  mid::Xrcd* xrcd = nullptr;
  mid::Xrcd* other = nullptr;
  mid::Srq* srq = nullptr;
  mid::Srq* foreign = nullptr;
  mid::Cq* fcq = nullptr;
  mid::Qp* tgt = nullptr;
  static constexpr uint32_t kRqPsn = 0x300;

  void SetUp() override {
    ProtoTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_EQ(mid::open_xrcd(&h.dev(), -1, O_CREAT, &xrcd), 0);
    ASSERT_EQ(mid::open_xrcd(&h.dev(), -1, O_CREAT, &other), 0);
    ASSERT_EQ(mid::create_cq(&h.dev(), 64, nullptr, nullptr, nullptr, &fcq), 0);
    mid::SrqInitAttr a;
    a.max_wr = 16;
    a.xrcd = xrcd;
    a.cq = cq.raw();
    ASSERT_EQ(mid::create_srq(h.pd().raw(), &a, nullptr, nullptr, &srq), 0);
    a.xrcd = other;
    a.cq = fcq;
    ASSERT_EQ(mid::create_srq(h.pd().raw(), &a, nullptr, nullptr, &foreign), 0);
    EXPECT_NE(srq->srq_num, 0u);
    EXPECT_NE(srq->srq_num, foreign->srq_num);
    mid::QpInitAttr qi;
    qi.qp_type = QpType::xrc_recv;
    ASSERT_EQ(mid::create_xrc_recv_qp(xrcd, &qi, &tgt), 0);
    to_rtr(tgt, kRqPsn);
  }

  void TearDown() override {
    if (tgt) mid::destroy_qp(tgt);
    if (srq) mid::destroy_srq(srq);
    if (foreign) mid::destroy_srq(foreign);
    if (fcq) mid::destroy_cq(fcq);
    if (xrcd) mid::close_xrcd(xrcd);
    if (other) mid::close_xrcd(other);
    ProtoTest::TearDown();
  }

  void to_rtr(mid::Qp* q, uint32_t rq_psn) {
    namespace m = qp_attr_mask;
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    a.qp_access_flags = kAllRemote;
    ASSERT_EQ(mid::modify_qp(q, &a, m::state | m::pkey_index | m::port | m::access_flags), 0);
    a.qp_state = QpState::rtr;
    a.path_mtu = Mtu::mtu256;
    a.dest_qp_num = kPeerQpn;
    a.rq_psn = rq_psn;
    a.ah_attr.dgid = h.peer_gid();
    a.ah_attr.port_num = 1;
    a.ah_attr.is_global = true;
    a.max_dest_rd_atomic = 4;
    a.min_rnr_timer = 1;
    ASSERT_EQ(mid::modify_qp(q, &a,
                             m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                                 m::max_dest_rd_atomic | m::min_rnr_timer),
              0);
  }

  void srq_recv(mid::Srq* s, uint64_t id, uint32_t off, uint32_t len) {
    Sge sge{addr(off), len, mr.raw()->lkey};
    RecvWr wr{};
    wr.wr_id = id;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    RecvWr* bad = nullptr;
    ASSERT_EQ(mid::post_srq_recv(s, &wr, &bad), 0);
  }

  Pkt xrc_send(uint32_t psn, uint32_t srqn, std::vector<uint8_t> payload) const {
    Pkt p;
    p.opcode = op::kXrc | op::kSendOnly;
    p.dest_qp = tgt->qp_num;
    p.psn = psn;
    p.ack_req = true;
    p.xrc_srqn = srqn;
    p.payload = std::move(payload);
    return p;
  }

  std::vector<Frame> send_and_take(const Pkt& p) {
    h.inject(p);
    h.poll(4);
    return h.take_sent();
  }
};

TEST_F(XrcResp, SendLandsInTheNamedSrqAndCompletesOnItsCq) {
  srq_recv(srq, 41, 0, 256);
  const auto data = pattern(200, 3);
  auto frames = send_and_take(xrc_send(kRqPsn, srq->srq_num, data));
  ASSERT_EQ(frames.size(), 1u) << describe(frames);
  EXPECT_EQ(frames[0].opcode, op::kXrc | op::kAck) << "XRC answers with XRC's ACK";
  EXPECT_FALSE(frames[0].has_xrceth);
  EXPECT_TRUE(IsAck(frames[0], kRqPsn, 1));
  auto got = wcs();
  ASSERT_EQ(got.size(), 1u) << describe(got);
  EXPECT_EQ(got[0].wr_id, 41u);
  EXPECT_EQ(got[0].status, WcStatus::success);
  EXPECT_EQ(got[0].byte_len, 200u);
  EXPECT_EQ(got[0].qp_num, tgt->qp_num);
  EXPECT_EQ(bytes(0, 200), data);
}

TEST_F(XrcResp, SrqOfAnotherDomainIsRefusedAndCounted) {
  srq_recv(foreign, 51, 0, 256);
  srq_recv(srq, 52, 1024, 256);
  const uint64_t before = h.dev().counters().rx_xrc_bad_srq.load();
  auto frames = send_and_take(xrc_send(kRqPsn, foreign->srq_num, pattern(64, 9)));
  ASSERT_EQ(frames.size(), 1u) << describe(frames);
  EXPECT_TRUE(IsNak(frames[0], NakCode::invalid_request, kRqPsn));
  EXPECT_EQ(h.dev().counters().rx_xrc_bad_srq.load(), before + 1);
  Wc wc;
  EXPECT_EQ(mid::poll_cq(fcq, 1, &wc), 0) << "nothing reaches the other domain";
  EXPECT_EQ(bytes(0, 64), std::vector<uint8_t>(64, 0));
  EXPECT_TRUE(wcs().empty()) << "nor the QP's own SRQ";
}

TEST_F(XrcResp, UnknownSrqNumberIsRefused) {
  const uint64_t before = h.dev().counters().rx_xrc_bad_srq.load();
  auto frames = send_and_take(xrc_send(kRqPsn, srq->srq_num ^ 0x100000, pattern(8, 1)));
  ASSERT_EQ(frames.size(), 1u) << describe(frames);
  EXPECT_TRUE(IsNak(frames[0], NakCode::invalid_request, kRqPsn));
  EXPECT_EQ(h.dev().counters().rx_xrc_bad_srq.load(), before + 1);
}

TEST_F(XrcResp, RcOpcodesAreNotXrcs) {
  srq_recv(srq, 61, 0, 256);
  const uint64_t before = h.counters().rx_bad_state;
  Pkt p = xrc_send(kRqPsn, srq->srq_num, pattern(8, 1));
  p.opcode = op::kRc | op::kSendOnly;  // no XRCETH, and the wrong transport
  auto frames = send_and_take(p);
  EXPECT_TRUE(frames.empty()) << describe(frames);
  EXPECT_EQ(h.counters().rx_bad_state, before + 1);
  EXPECT_TRUE(wcs().empty());
}

// A multi-packet SEND whose later packet names another SRQ than its first is refused.
TEST_F(XrcResp, LaterPacketOfAMessageMustNameTheSameSrq) {
  mid::Srq* second = nullptr;
  mid::SrqInitAttr a;
  a.max_wr = 4;
  a.xrcd = xrcd;
  a.cq = cq.raw();
  ASSERT_EQ(mid::create_srq(h.pd().raw(), &a, nullptr, nullptr, &second), 0);
  srq_recv(srq, 71, 0, 1024);
  srq_recv(second, 72, 2048, 1024);
  Pkt first = xrc_send(kRqPsn, srq->srq_num, pattern(256, 2));
  first.opcode = op::kXrc | op::kSendFirst;
  Pkt last = xrc_send(kRqPsn + 1, second->srq_num, pattern(10, 4));
  last.opcode = op::kXrc | op::kSendLast;
  h.inject(std::vector<Pkt>{first, last});
  h.poll(4);
  auto frames = h.take_sent();
  bool refused = false;
  for (const Frame& f : frames) refused |= bool(IsNak(f, NakCode::invalid_request, kRqPsn + 1));
  EXPECT_TRUE(refused) << describe(frames);
  for (const Wc& c : wcs()) EXPECT_NE(c.status, WcStatus::success) << describe(c);
  ASSERT_EQ(mid::destroy_qp(tgt), 0);  // the QP first: it no longer takes from `second`
  tgt = nullptr;
  EXPECT_EQ(mid::destroy_srq(second), 0);
}

// The requester: XRC opcodes and the WR's SRQ number in the XRCETH; XRC's ACK completes.
TEST_F(ProtoTest, XrcSendCarriesTheWrsSrqNumber) {
  namespace m = qp_attr_mask;
  mid::QpInitAttr qi;
  qi.qp_type = QpType::xrc_send;
  qi.send_cq = cq.raw();
  qi.cap = {8, 0, 1, 0, 0};
  mid::Qp* q = nullptr;
  ASSERT_EQ(mid::create_qp(h.pd().raw(), &qi, &q), 0);
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  ASSERT_EQ(mid::modify_qp(q, &a, m::state | m::pkey_index | m::port | m::access_flags), 0);
  a.qp_state = QpState::rtr;
  a.path_mtu = Mtu::mtu256;
  a.dest_qp_num = kPeerQpn;
  a.rq_psn = 5;
  a.ah_attr.dgid = h.peer_gid();
  a.ah_attr.port_num = 1;
  a.ah_attr.is_global = true;
  ASSERT_EQ(mid::modify_qp(q, &a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn), 0);
  a.qp_state = QpState::rts;
  a.sq_psn = 0x40;
  a.retry_cnt = a.rnr_retry = 7;
  a.max_rd_atomic = 1;
  ASSERT_EQ(mid::modify_qp(q, &a,
                           m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry |
                               m::max_qp_rd_atomic),
            0);
  fill(0, 300, 5);
  SendWr w = wr(9, WrOpcode::send, 0, 300);
  w.qp_type.xrc.remote_srqn = 0x4242;
  SendWr* bad = nullptr;
  ASSERT_EQ(mid::post_send(q, &w, &bad), 0);
  h.poll(4);
  auto frames = h.take_sent();
  ASSERT_EQ(frames.size(), 2u) << describe(frames);  // 300 bytes at MTU 256
  EXPECT_EQ(frames[0].opcode, op::kXrc | op::kSendFirst);
  EXPECT_EQ(frames[1].opcode, op::kXrc | op::kSendLast);
  for (const Frame& f : frames) {
    EXPECT_TRUE(f.has_xrceth);
    EXPECT_EQ(f.xrc_srqn, 0x4242u);
  }
  Pkt ack;
  ack.opcode = op::kXrc | op::kAck;
  ack.dest_qp = q->qp_num;
  ack.psn = 0x41;
  ack.syndrome = 0x1f;
  ack.msn = 1;
  h.inject(ack);
  h.poll(4);
  auto got = wcs();
  ASSERT_EQ(got.size(), 1u) << describe(got);
  EXPECT_EQ(got[0].wr_id, 9u);
  EXPECT_EQ(got[0].status, WcStatus::success);
  EXPECT_EQ(mid::destroy_qp(q), 0);
}

}  // namespace
}  // namespace dverbs::proto
