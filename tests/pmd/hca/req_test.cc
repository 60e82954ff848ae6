// Requester rules (lib/pmd/hca/req.cc, IBA 9.7.1–9.7.2, 9.7.6, 9.7.7, 10.8.3): work
// requests are posted to a QP connected to a fake peer; each test asserts the exact request
// packets the QP sends (opcode, PSN, AckReq, extension headers, payload) and what it sends
// again after the peer's ACK, NAK or silence, and the work completions.
#include <arpa/inet.h>

#include "harness.h"

namespace dverbs::proto {
namespace {

constexpr uint32_t S = 0x000100;  // the requester's first PSN (Conn::sq_psn)

class ReqTest : public ProtoTest {
 protected:
  void connect(Conn c = {}) { make_qp(c); }
};

std::vector<uint8_t> slice(const std::vector<uint8_t>& v, size_t off, size_t len) {
  return std::vector<uint8_t>(v.begin() + long(off), v.begin() + long(off + len));
}

// ---------------------------------------------------------------- segmentation, AckReq

// IBA 9.7.2 / 9.7.6.1.2 (AckReq): a SEND longer than the PMTU leaves as FIRST,
// MIDDLE…, LAST with consecutive PSNs and full-PMTU payloads but the last (padded to 4
// bytes, IBA 9.2.3); the LAST packet of every message asks for an ACK.
TEST_F(ReqTest, SendIsSegmentedByMtuWithAckReqOnTheLastPacket) {
  connect();
  fill(0, 601, 1);
  fill(1024, 100, 2);
  post({wr(1, WrOpcode::send, 0, 601), wr(2, WrOpcode::send, 1024, 100)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 4u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendFirst, S, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendMiddle, S + 1, 256));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kSendLast, S + 2, 89));
  EXPECT_TRUE(IsPacket(sent[3], op::kRc | op::kSendOnly, S + 3, 100));
  EXPECT_FALSE(sent[0].ack_req);
  EXPECT_FALSE(sent[1].ack_req);
  EXPECT_TRUE(sent[2].ack_req);
  EXPECT_TRUE(sent[3].ack_req);
  EXPECT_EQ(sent[2].pad, 3);
  auto want = pattern(601, 1);
  EXPECT_EQ(sent[0].payload, slice(want, 0, 256));
  EXPECT_EQ(sent[1].payload, slice(want, 256, 256));
  EXPECT_EQ(sent[2].payload, slice(want, 512, 89));
  EXPECT_EQ(sent[3].payload, pattern(100, 2));
  EXPECT_EQ(sent[0].dst_ip, h.peer_ip());
  EXPECT_EQ(sent[0].src_ip, h.our_ip());
  EXPECT_EQ(std::vector<uint8_t>(sent[0].dst_mac, sent[0].dst_mac + 6),
            std::vector<uint8_t>(h.peer_mac(), h.peer_mac() + 6));
  EXPECT_TRUE(wcs().empty()) << "completed before any ACK";
}

// IBA 9.2.3 (Solicited Event): IBV_SEND_SOLICITED sets BTH.SE on the last packet of the
// message only; other messages never carry it.
TEST_F(ReqTest, SolicitedSendSetsSeOnItsLastPacketOnly) {
  connect();
  SendWr a = wr(1, WrOpcode::send, 0, 601);
  a.send_flags |= send_flags::solicited;
  SendWr b = wr(2, WrOpcode::send_with_imm, 1024, 100);
  b.send_flags |= send_flags::solicited;
  SendWr c = wr(3, WrOpcode::send, 1024, 100);
  post({a, b, c});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 5u) << describe(sent);
  EXPECT_FALSE(sent[0].se);
  EXPECT_FALSE(sent[1].se);
  EXPECT_TRUE(sent[2].se) << "LAST of the solicited SEND";
  EXPECT_TRUE(sent[3].se) << "ONLY of the solicited SEND with immediate";
  EXPECT_FALSE(sent[4].se) << "an unsolicited SEND";
}

// IBA 9.7.6.1.2: a long message also asks for ACKs periodically, not only at its end.
TEST_F(ReqTest, LongMessageAsksForAcksPeriodically) {
  Conn c;
  c.cap_send = 4;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 40 * 256)});
  // The engine sends a bounded number of packets per QP and poll (round robin among QPs).
  for (int i = 0; i < 100 && h.sent_pending() < 40; i++) h.poll();
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 40u) << describe(sent);
  int middle_acks = 0;
  for (size_t i = 0; i + 1 < sent.size(); i++) middle_acks += sent[i].ack_req;
  EXPECT_GE(middle_acks, 1);
  EXPECT_TRUE(sent.back().ack_req);
  for (size_t i = 0; i < sent.size(); i++) EXPECT_EQ(sent[i].psn, S + i);
}

// IBA 9.7.2 / 9.3.3.4: an RDMA WRITE carries its RETH (remote address, R_Key, total DMA
// length) in the FIRST (or ONLY) packet only; WRITE/SEND with immediate put ImmDt in the
// LAST (or ONLY) packet.
TEST_F(ReqTest, WriteCarriesRethOnFirstPacketAndImmOnLast) {
  connect();
  fill(0, 600, 3);
  SendWr w = write_wr(1, 0, 600, 0x123456789a00ull, 0xabcd);
  SendWr wi = write_wr(2, 0, 16, 0x5000, 0xabcd);
  wi.opcode = WrOpcode::rdma_write_with_imm;
  wi.imm_data = htonl(0xdeadbeef);
  SendWr si = wr(3, WrOpcode::send_with_imm, 0, 8);
  si.imm_data = htonl(42);
  post({w, wi, si});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 5u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kWriteFirst, S, 256));
  EXPECT_TRUE(sent[0].has_reth && sent[0].va == 0x123456789a00ull && sent[0].rkey == 0xabcd &&
              sent[0].dma_len == 600)
      << sent[0].describe();
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kWriteMiddle, S + 1, 256));
  EXPECT_FALSE(sent[1].has_reth);
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kWriteLast, S + 2, 88));
  EXPECT_FALSE(sent[2].has_reth);
  EXPECT_TRUE(sent[2].ack_req);
  EXPECT_TRUE(IsPacket(sent[3], op::kRc | op::kWriteOnlyImm, S + 3, 16));
  EXPECT_TRUE(sent[3].has_reth && sent[3].dma_len == 16 && sent[3].has_imm &&
              sent[3].imm_be == htonl(0xdeadbeef))
      << sent[3].describe();
  EXPECT_TRUE(IsPacket(sent[4], op::kRc | op::kSendOnlyImm, S + 4, 8));
  EXPECT_TRUE(sent[4].has_imm && sent[4].imm_be == htonl(42)) << sent[4].describe();
}

// IBA 9.7.2: a zero-length SEND is one ONLY packet without payload.
TEST_F(ReqTest, ZeroLengthSendIsOneEmptyPacket) {
  connect();
  post({wr(1, WrOpcode::send, 0, 0)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 0));
  EXPECT_TRUE(sent[0].ack_req);
}

// IBA 9.7.2 / 9.3.3: a READ request carries a RETH for the whole transfer and consumes one
// PSN per expected response packet (IBA 9.7.6.1.1); atomics carry an AtomicETH and consume
// one PSN.
TEST_F(ReqTest, ReadAndAtomicRequestsCarryTheirHeadersAndPsnSpace) {
  connect();
  post({read_wr(1, 0, 600, 0x10000, 0x77),
        atomic_wr(2, WrOpcode::atomic_fetch_and_add, 1024, 0x20008, 5),
        atomic_wr(3, WrOpcode::atomic_cmp_and_swp, 1032, 0x20010, 7, 9)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 3u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_TRUE(sent[0].has_reth && sent[0].va == 0x10000 && sent[0].rkey == 0x77 &&
              sent[0].dma_len == 600)
      << sent[0].describe();
  EXPECT_TRUE(sent[0].ack_req);
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kFetchAdd, S + 3, 0));
  EXPECT_TRUE(sent[1].has_atomic_eth && sent[1].va == 0x20008 && sent[1].swap_add == 5)
      << sent[1].describe();
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kCmpSwap, S + 4, 0));
  EXPECT_TRUE(sent[2].has_atomic_eth && sent[2].va == 0x20010 && sent[2].compare == 7 &&
              sent[2].swap_add == 9)
      << sent[2].describe();
}

// IBA 9.7.1: the requester's PSN wraps from 0xffffff to 0.
TEST_F(ReqTest, RequesterPsnWrapsAroundAt24Bits) {
  Conn c;
  c.sq_psn = 0xfffffe;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 1000)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 4u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendFirst, 0xfffffe, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendMiddle, 0xffffff, 256));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kSendMiddle, 0x000000, 256));
  EXPECT_TRUE(IsPacket(sent[3], op::kRc | op::kSendLast, 0x000001, 232));
  EXPECT_TRUE(exchange(ack(0x000001, 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
}

// ---------------------------------------------------------------- go-back-N

// IBA 9.7.5.2.2 / 9.7.6.1.4 (go-back-N): a PSN sequence error NAK makes the
// requester resend every packet from the NAKed PSN, resuming a multi-packet message in its
// middle (MIDDLE opcode, the payload of that offset).
TEST_F(ReqTest, PsnSequenceNakGoesBackNFromTheMiddleOfAMessage) {
  connect();
  fill(0, 601, 1);
  fill(1024, 100, 2);
  post({wr(1, WrOpcode::send, 0, 601), wr(2, WrOpcode::send, 1024, 100)});
  ASSERT_EQ(h.take_sent().size(), 4u);

  auto sent = exchange(nak(NakCode::psn_seq_error, S + 1));
  ASSERT_EQ(sent.size(), 3u) << describe(sent);
  auto want = pattern(601, 1);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendMiddle, S + 1, 256));
  EXPECT_EQ(sent[0].payload, slice(want, 256, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendLast, S + 2, 89));
  EXPECT_EQ(sent[1].payload, slice(want, 512, 89));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kSendOnly, S + 3, 100));
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(qp.state(), QpState::rts);

  EXPECT_TRUE(exchange(ack(S + 3, 2)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::send);
}

// IBA 9.7.6.1.4: a WRITE resumed in its middle continues with MIDDLE/LAST packets (no RETH).
TEST_F(ReqTest, PsnSequenceNakResumesAWriteInItsMiddle) {
  connect();
  fill(0, 768, 5);
  post({write_wr(1, 0, 768, 0x9000)});
  ASSERT_EQ(h.take_sent().size(), 3u);
  auto sent = exchange(nak(NakCode::psn_seq_error, S + 2));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kWriteLast, S + 2, 256));
  EXPECT_EQ(sent[0].payload, slice(pattern(768, 5), 512, 256));
}

// IBA 9.7.6.1.3 / 9.7.6.1.4: when the retransmission timer expires the requester resends
// from the oldest unacknowledged PSN — in the middle of a partly acknowledged message.
TEST_F(ReqTest, TimeoutResendsFromTheFirstUnacknowledgedPacket) {
  Conn c;
  c.timeout = 1;  // 8.192 µs
  c.retry_cnt = 7;
  connect(c);
  fill(0, 601, 4);
  post({wr(1, WrOpcode::send, 0, 601)});
  ASSERT_EQ(h.take_sent().size(), 3u);
  h.inject(ack(S, 0));  // the responder acknowledged the FIRST packet only
  auto sent = wait_frames(2);
  ASSERT_GE(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendMiddle, S + 1, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendLast, S + 2, 89));
  EXPECT_EQ(sent[0].payload, slice(pattern(601, 4), 256, 256));
  h.inject(ack(S + 2, 1));
  ASSERT_EQ(wait_wcs(1), 1u);
  auto w = wcs();
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::rts);
}

// IBA 9.7.6.1.3 (retry_cnt): each timeout costs one of retry_cnt retransmissions; when they
// are used up the oldest WR completes with RETRY_EXC_ERR, the QP enters ERR, and every later
// WR is flushed in order (IBA 10.8.3.1). Exactly retry_cnt go-back-N rounds are sent.
TEST_F(ReqTest, RetryCountExhaustedByTimeoutsIsRetryExcErrThenFlush) {
  Conn c;
  c.timeout = 1;
  c.retry_cnt = 2;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
  auto first = h.take_sent();
  ASSERT_EQ(first.size(), 2u) << describe(first);
  ASSERT_EQ(wait_wcs(2), 2u);
  h.poll(10);
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 4u) << "expected 2 retransmission rounds: " << describe(sent);
  for (size_t i = 0; i < 4; i++)
    EXPECT_TRUE(IsPacket(sent[i], op::kRc | op::kSendOnly, S + uint32_t(i % 2), 10));
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::retry_exc_err, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);

  post({wr(3, WrOpcode::send, 0, 10)});  // posting in ERR: flushed, nothing sent
  w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 3, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_TRUE(h.take_sent().empty());
}

// IBA 9.7.6.1.4: a timed-out READ whose first responses arrived is requested again from
// its first missing response: PSN and RETH (address, length) advanced by whole PMTUs.
TEST_F(ReqTest, TimeoutResumesAReadFromItsFirstMissingResponse) {
  Conn c;
  c.timeout = 1;
  connect(c);
  post({read_wr(1, 0, 768, 0x40000, 0x55)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  h.inject(read_resp(op::kReadRespFirst, S, pattern(256, 1), 1));
  auto sent = wait_frames(1);
  ASSERT_GE(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S + 1, 0));
  EXPECT_TRUE(sent[0].va == 0x40000 + 256 && sent[0].rkey == 0x55 && sent[0].dma_len == 512)
      << sent[0].describe();
  EXPECT_TRUE(wcs().empty());
}

// ---------------------------------------------------------------- READ/atomic credits, fence

// IBA 9.7.7 / C9-151 (max_rd_atomic, the initiator depth): no more than max_rd_atomic
// READ/atomic requests are outstanding; the next leaves when one completes.
TEST_F(ReqTest, MaxRdAtomicLimitsOutstandingReads) {
  Conn c;
  c.max_rd_atomic = 2;
  connect(c);
  post({read_wr(1, 0, 16, 0x1000), read_wr(2, 64, 16, 0x2000), read_wr(3, 128, 16, 0x3000)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRequest, S + 1, 0));

  sent = exchange(read_resp(op::kReadRespOnly, S, pattern(16, 1), 1));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S + 2, 0));
  EXPECT_EQ(sent[0].va, 0x3000u);

  EXPECT_TRUE(exchange({read_resp(op::kReadRespOnly, S + 1, pattern(16, 2), 2),
                        read_resp(op::kReadRespOnly, S + 2, pattern(16, 3), 3)})
                  .empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  for (uint64_t i = 0; i < 3; i++) {
    expect_wc(w[i], i + 1, WcStatus::success, WcOpcode::rdma_read);
    EXPECT_EQ(w[i].byte_len, 16u);
    EXPECT_EQ(bytes(uint32_t(i) * 64, 16), pattern(16, uint8_t(i + 1)));
  }
}

// IBA 10.8.3.3 (fence): a fenced WR is not sent until every earlier READ and atomic has
// completed; without the fence it goes at once.
TEST_F(ReqTest, FenceHoldsASendUntilPriorReadsComplete) {
  connect();
  SendWr s = wr(2, WrOpcode::send, 1024, 8);
  s.send_flags |= send_flags::fence;
  post({read_wr(1, 0, 16, 0x1000), s});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));

  sent = exchange(read_resp(op::kReadRespOnly, S, pattern(16, 1), 1));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S + 1, 8));
  EXPECT_TRUE(exchange(ack(S + 1, 2)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::rdma_read);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::send);
}

TEST_F(ReqTest, SendWithoutFenceDoesNotWaitForReads) {
  connect();
  post({read_wr(1, 0, 16, 0x1000), wr(2, WrOpcode::send, 1024, 8)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendOnly, S + 1, 8));
}


// ---------------------------------------------------------------- PSN window, UD Q_Key

// C7 (req.cc req_step, kMaxSendWindow = 256): without ACKs an RC QP leaves at most 256 packets
// unacknowledged, however much is posted; an ACK opens the window by exactly the number of
// packets it acknowledges.
TEST_F(ReqTest, AtMost256PacketsAreLeftUnacknowledged) {
  constexpr uint32_t kWindow = 256;
  connect();
  // 256 + 40 packets of 256 bytes (PMTU 256): the window, and 40 that must wait.
  post({wr(1, WrOpcode::send, 0, kBufBytes), wr(2, WrOpcode::send, 0, 40 * 256)});
  // The engine sends at most Engine::kQpBudget (16) packets per QP and poll: 200 polls are
  // far more than 296 packets need, so a window that let more out would show here.
  for (int i = 0; i < 200 && h.sent_pending() < 296; i++) h.poll();
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), kWindow) << "first PSN " << (sent.empty() ? 0 : sent[0].psn)
                                  << ", last " << (sent.empty() ? 0 : sent.back().psn);
  for (uint32_t i = 0; i < kWindow; i++) ASSERT_EQ(sent[i].psn, S + i) << i;
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendFirst, S, 256));
  EXPECT_TRUE(IsPacket(sent[kWindow - 1], op::kRc | op::kSendLast, S + kWindow - 1, 256));

  // Acknowledge the first 10 packets (inside message 1: nothing completes): exactly 10 more
  // go out, the first packets of message 2.
  h.inject(ack(S + 9, 0));
  for (int i = 0; i < 200 && h.sent_pending() < 40; i++) h.poll();
  sent = h.take_sent();
  ASSERT_EQ(sent.size(), 10u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendFirst, S + kWindow, 256));
  for (uint32_t i = 1; i < 10; i++)
    EXPECT_TRUE(IsPacket(sent[i], op::kRc | op::kSendMiddle, S + kWindow + i, 256));
  EXPECT_TRUE(wcs().empty());

  // Acknowledging message 1 completes it and releases the last 30 packets of message 2.
  h.inject(ack(S + kWindow - 1, 1));
  for (int i = 0; i < 200 && h.sent_pending() < 40; i++) h.poll();
  sent = h.take_sent();
  ASSERT_EQ(sent.size(), 30u) << describe(sent);
  EXPECT_EQ(sent.front().psn, S + kWindow + 10);
  EXPECT_TRUE(IsPacket(sent.back(), op::kRc | op::kSendLast, S + kWindow + 39, 256));
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
}

// C7a (req.cc req_window_lost, req_window_acked): a PSN-sequence NAK is a loss; the
// requester halves its window and resends only that many packets from the NAKed PSN. A
// second NAK for a gap among packets sent before that cut is the same loss: no second
// halving. The packet that fills the window asks for an ACK.
TEST_F(ReqTest, SequenceNakHalvesTheSendWindowOncePerLoss) {
  connect();
  post({wr(1, WrOpcode::send, 0, kBufBytes), wr(2, WrOpcode::send, 0, 40 * 256)});
  for (int i = 0; i < 200 && h.sent_pending() < 296; i++) h.poll();
  ASSERT_EQ(h.take_sent().size(), 256u);

  // Packets S..S+9 arrived, S+10 was lost: 128 packets from S+10 go again, no more.
  h.inject(nak(NakCode::psn_seq_error, S + 10));
  for (int i = 0; i < 200 && h.sent_pending() < 256; i++) h.poll();
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 128u) << describe(sent);
  for (uint32_t i = 0; i < 128; i++) ASSERT_EQ(sent[i].psn, S + 10 + i) << i;
  EXPECT_TRUE(sent.back().ack_req) << "the packet that fills the window asks for an ACK";

  // S+20 lost too (sent before the cut): the window stays 128 and moves by 10.
  h.inject(nak(NakCode::psn_seq_error, S + 20));
  for (int i = 0; i < 200 && h.sent_pending() < 256; i++) h.poll();
  sent = h.take_sent();
  ASSERT_EQ(sent.size(), 128u) << describe(sent);
  EXPECT_EQ(sent.front().psn, S + 20);
  EXPECT_EQ(sent.back().psn, S + 147);
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(qp.state(), QpState::rts);
}

// C7b (req.cc req_window_lost, req_window_acked): a retransmission timeout drops the
// window to kMinSendWindow (2) packets; each acknowledged packet then adds one (slow
// start: 2, 4, 8 ... packets per round trip) until half the window before the loss.
TEST_F(ReqTest, TimeoutShrinksTheSendWindowAndAcksRegrowIt) {
  Conn c;
  c.timeout = 14;  // 67 ms: no second timeout fires while the test answers
  connect(c);
  post({wr(1, WrOpcode::send, 0, 64 * 256)});
  for (int i = 0; i < 200 && h.sent_pending() < 64; i++) h.poll();
  ASSERT_EQ(h.take_sent().size(), 64u);

  auto sent = wait_frames(1);  // nothing answers: the timer expires
  h.poll(4);
  auto more = h.take_sent();
  sent.insert(sent.end(), more.begin(), more.end());
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_EQ(sent[0].psn, S);
  EXPECT_EQ(sent[1].psn, S + 1);
  EXPECT_TRUE(sent[1].ack_req);

  uint32_t acked = S + 2, expect = 4;  // the window after each ACK: 4, 8, 16
  for (int round = 0; round < 3; round++, expect *= 2) {
    h.inject(ack(acked - 1, 0));
    for (int i = 0; i < 50 && h.sent_pending() < 64; i++) h.poll();
    sent = h.take_sent();
    ASSERT_EQ(sent.size(), expect) << "round " << round << ": " << describe(sent);
    EXPECT_EQ(sent.front().psn, acked);
    EXPECT_TRUE(sent.back().ack_req);
    acked += expect;
  }
  EXPECT_TRUE(wcs().empty());
}

// IBA 10.2.4.1 / req.cc send_one: a UD send WR whose Q_Key has the high bit set uses the QP's
// own Q_Key in the DETH; any other value is sent as given. The DETH source QP is the sender.
TEST_F(ReqTest, UdQkeyWithTheHighBitSetSendsTheQpsOwnQkey) {
  Conn c;
  c.type = QpType::ud;
  c.qkey = 0x11111111;
  connect(c);
  AhAttr aa;
  aa.dgid = h.peer_gid();
  auto ah = Ah::create(h.pd(), aa);
  ASSERT_TRUE(ah) << "Ah::create: error " << ah.error();
  Ah a = ah.take();
  fill(0, 16, 6);
  const uint32_t qkeys[] = {0x80000000u, 0x22222222u, 0xfedcba98u, 0x7fffffffu};
  std::vector<SendWr> wrs;
  for (uint32_t i = 0; i < 4; i++) {
    SendWr w = wr(10 + i, WrOpcode::send, 0, 16);
    w.wr.ud.ah = a.raw();
    w.wr.ud.remote_qpn = 0x777 + i;
    w.wr.ud.remote_qkey = qkeys[i];
    wrs.push_back(w);
  }
  post(wrs);
  for (int i = 0; i < 20 && h.sent_pending() < 4; i++) h.poll();
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 4u) << describe(sent);
  const uint32_t want[] = {0x11111111u, 0x22222222u, 0x11111111u, 0x7fffffffu};
  for (uint32_t i = 0; i < 4; i++) {
    EXPECT_EQ(sent[i].opcode, op::kUd | op::kSendOnly) << sent[i].describe();
    EXPECT_EQ(sent[i].dest_qp, 0x777 + i) << sent[i].describe();
    ASSERT_TRUE(sent[i].has_deth) << sent[i].describe();
    EXPECT_EQ(sent[i].qkey, want[i]) << "WR Q_Key " << std::hex << qkeys[i];
    EXPECT_EQ(sent[i].src_qp, qpn()) << sent[i].describe();
    EXPECT_EQ(sent[i].payload, pattern(16, 6));
  }
  auto w = wcs();
  ASSERT_EQ(w.size(), 4u) << describe(w);
  for (uint32_t i = 0; i < 4; i++) expect_wc(w[i], 10 + i, WcStatus::success, WcOpcode::send);
}

// req.cc req_step: READ responses this QP owes its peer and this QP's own requests share
// the QP's turn. While a long READ is being answered (64 responses at PMTU 256), a SEND
// posted meanwhile leaves before the last response instead of waiting for the whole stream:
// a peer that keeps asking again for a long READ restarts that stream each time (IBA
// 9.7.4.1.5.2), and a requester held back all that time would use up retry_cnt on
// retransmissions that never left (IBA 9.7.6.1.3).
TEST_F(ReqTest, ReadResponsesOwedToThePeerDoNotHoldBackOurRequests) {
  connect();
  constexpr uint32_t kLen = 64 * 256;
  constexpr uint32_t E = 0x000200;  // the responder's first expected PSN (Conn::rq_psn)
  fill(0, kLen, 7);
  fill(kLen, 8, 8);
  Pkt rd = pkt(op::kRc | op::kReadRequest, E);
  rd.ack_req = true;
  rd.va = addr(0);
  rd.rkey = mr.rkey();
  rd.dma_len = kLen;
  auto sent = exchange(rd);
  ASSERT_FALSE(sent.empty());
  ASSERT_LT(sent.size(), 64u) << "the whole READ was answered in one step";
  post({wr(1, WrOpcode::send, kLen, 8)});
  h.poll(16);
  auto more = h.take_sent();
  sent.insert(sent.end(), more.begin(), more.end());
  size_t send_at = sent.size(), last_at = sent.size();
  for (size_t i = 0; i < sent.size(); i++) {
    if (sent[i].opcode == (op::kRc | op::kSendOnly) && send_at == sent.size()) send_at = i;
    if (sent[i].opcode == (op::kRc | op::kReadRespLast)) last_at = i;
  }
  ASSERT_LT(last_at, sent.size()) << describe(sent);
  ASSERT_LT(send_at, sent.size()) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[send_at], op::kRc | op::kSendOnly, S, 8));
  EXPECT_LT(send_at, last_at) << "the SEND waited for every READ response";
  EXPECT_EQ(sent.size(), 65u) << describe(sent);
}

}  // namespace
}  // namespace dverbs::proto
