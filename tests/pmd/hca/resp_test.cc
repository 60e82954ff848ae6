// Responder rules (lib/pmd/hca/resp.cc, IBA 9.7.3–9.7.5, 10.2.4, 11.4): crafted request
// frames from a fake peer are injected into one QP; each test asserts the exact frames the
// HCA sends back (opcode, PSN, AETH syndrome and MSN, payload), the receive completions and
// the QP state.
#include <arpa/inet.h>

#include <atomic>

#include "harness.h"
#include "pmd/hca/engine.h"

namespace dverbs::proto {
namespace {

constexpr uint32_t E = 0x000200;  // the responder's first expected PSN (Conn::rq_psn)

class RespTest : public ProtoTest {
 protected:
  void connect(Conn c = {}) { make_qp(c); }

  Pkt send(uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload, bool ack_req = true) {
    Pkt p = pkt(op::kRc | opcode, psn, std::move(payload));
    p.ack_req = ack_req;
    return p;
  }
  Pkt write(uint8_t opcode, uint32_t psn, uint32_t off, uint32_t dma_len,
            std::vector<uint8_t> payload, uint32_t rkey = 0) {
    Pkt p = pkt(op::kRc | opcode, psn, std::move(payload));
    p.ack_req = true;
    p.va = addr(off);
    p.rkey = rkey ? rkey : mr.rkey();
    p.dma_len = dma_len;
    return p;
  }
  Pkt read(uint32_t psn, uint32_t off, uint32_t len) {
    Pkt p = pkt(op::kRc | op::kReadRequest, psn);
    p.ack_req = true;
    p.va = addr(off);
    p.rkey = mr.rkey();
    p.dma_len = len;
    return p;
  }
  Pkt atomic(uint8_t opcode, uint32_t psn, uint32_t off, uint64_t swap_add, uint64_t compare) {
    Pkt p = pkt(op::kRc | opcode, psn);
    p.ack_req = true;
    p.va = addr(off);
    p.rkey = mr.rkey();
    p.swap_add = swap_add;
    p.compare = compare;
    return p;
  }
  uint64_t& word(uint32_t off) { return *reinterpret_cast<uint64_t*>(buf + off); }

  void expect_recv(const Wc& wc, uint64_t wr_id, uint32_t byte_len, uint32_t flags = 0) {
    EXPECT_EQ(wc.wr_id, wr_id) << describe(wc);
    EXPECT_EQ(wc.status, WcStatus::success) << describe(wc);
    EXPECT_EQ(wc.opcode, WcOpcode::recv) << describe(wc);
    EXPECT_EQ(wc.byte_len, byte_len) << describe(wc);
    EXPECT_EQ(wc.wc_flags, flags) << describe(wc);
    EXPECT_EQ(wc.qp_num, qpn()) << describe(wc);
  }
  // A responder error (NAK code) moves the QP to ERR and flushes the receives.
  void expect_error_state() {
    EXPECT_EQ(qp.state(), QpState::err);
    for (const Wc& wc : wcs()) EXPECT_NE(wc.status, WcStatus::success) << describe(wc);
  }
};

// ---------------------------------------------------------------- SEND, ACK, MSN

// IBA 9.7.5.1.1: a valid request with AckReq is acknowledged with its PSN; the AETH
// carries the MSN, incremented once per completed message (C9-148).
TEST_F(RespTest, InOrderSendIsAckedWithItsPsnAndMsn) {
  connect();
  post_recv(1, 0, 1024);
  auto sent = exchange(send(op::kSendOnly, E, pattern(100, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(sent[0].dst_ip, h.peer_ip());
  EXPECT_EQ(std::vector<uint8_t>(sent[0].dst_mac, sent[0].dst_mac + 6),
            std::vector<uint8_t>(h.peer_mac(), h.peer_mac() + 6));
  auto c = wcs();
  ASSERT_EQ(c.size(), 1u) << describe(c);
  expect_recv(c[0], 1, 100);
  EXPECT_EQ(c[0].src_qp, kPeerQpn);
  EXPECT_EQ(bytes(0, 100), pattern(100, 1));
  EXPECT_EQ(qp.state(), QpState::rts);
}

// IBA 9.4.1 / 11.4.1: SEND with immediate delivers ImmDt in the receive completion.
TEST_F(RespTest, SendWithImmediateReportsImmData) {
  connect();
  post_recv(7, 0, 256);
  Pkt p = send(op::kSendOnlyImm, E, pattern(20, 2));
  p.imm_be = htonl(0x12345678);
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  auto c = wcs();
  ASSERT_EQ(c.size(), 1u) << describe(c);
  expect_recv(c[0], 7, 20, wc_flags::with_imm);
  EXPECT_EQ(c[0].imm_data, htonl(0x12345678));
}

// IBA 9.7.5.1.1: one ACK may acknowledge several packets (coalescing); a FIRST/MIDDLE/LAST
// SEND received in one burst is acknowledged once, for the LAST PSN, with MSN 1.
TEST_F(RespTest, MultiPacketSendIsReassembledAndAckedOnce) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange({send(op::kSendFirst, E, pattern(256, 3), false),
                        send(op::kSendMiddle, E + 1, pattern(256, 4), false),
                        send(op::kSendLast, E + 2, pattern(50, 5))});
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 2, 1));
  auto c = wcs();
  ASSERT_EQ(c.size(), 1u) << describe(c);
  expect_recv(c[0], 1, 562);
  EXPECT_EQ(bytes(0, 256), pattern(256, 3));
  EXPECT_EQ(bytes(256, 256), pattern(256, 4));
  EXPECT_EQ(bytes(512, 50), pattern(50, 5));
}

// IBA 9.7.5.1.1 (coalesced ACKs): three messages in one burst → exactly one ACK for the
// newest PSN, carrying MSN 3; the receives complete in order.
TEST_F(RespTest, SeveralSendsInOneBurstGetOneCoalescedAck) {
  connect();
  for (int i = 0; i < 3; i++) post_recv(10 + i, uint32_t(i) * 256, 256);
  auto sent =
      exchange({send(op::kSendOnly, E, pattern(10, 1)), send(op::kSendOnly, E + 1, pattern(11, 2)),
                send(op::kSendOnly, E + 2, pattern(12, 3))});
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 2, 3));
  auto c = wcs();
  ASSERT_EQ(c.size(), 3u) << describe(c);
  for (int i = 0; i < 3; i++) expect_recv(c[size_t(i)], 10 + uint64_t(i), 10 + uint32_t(i));
}

// IBA 9.7.7.2 (end-to-end flow control): an ACK of a QP without an SRQ reports the receive
// credits left (Table 44 encoding: 4 WQEs → code 4), not the "invalid" code 31.
// Regression (fixed): resp.cc owe_ack() always sends kCreditsInvalid (31).
TEST_F(RespTest, AckCarriesEndToEndCredits) {
  connect();
  for (int i = 0; i < 5; i++) post_recv(uint64_t(i), uint32_t(i) * 256, 256);
  auto sent = exchange(send(op::kSendOnly, E, pattern(8, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(sent[0].aeth_value(), 4) << sent[0].describe();
}

// ---------------------------------------------------------------- duplicates

// IBA 9.7.4.1.5.1 (duplicate requests): a duplicate SEND is acknowledged again and never
// re-executed: no second receive completes and no receive buffer is touched.
TEST_F(RespTest, DuplicateSendIsReAckedAndNotReExecuted) {
  connect();
  post_recv(1, 0, 256);
  post_recv(2, 1024, 256);
  auto sent = exchange(send(op::kSendOnly, E, pattern(64, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  ASSERT_EQ(wcs().size(), 1u);

  sent = exchange(send(op::kSendOnly, E, pattern(64, 9)));  // duplicate, other bytes
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(bytes(0, 64), pattern(64, 1));
  EXPECT_EQ(bytes(1024, 64), std::vector<uint8_t>(64, 0));
  EXPECT_EQ(hq().dup_rcvd.load(), 1u);

  sent = exchange(send(op::kSendOnly, E + 1, pattern(32, 4)));  // the next new message
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 1, 2));
  auto c = wcs();
  ASSERT_EQ(c.size(), 1u);
  expect_recv(c[0], 2, 32);
}

// IBA 9.7.4.1.5.1: a duplicate RDMA WRITE is re-acknowledged and never written again.
TEST_F(RespTest, DuplicateWriteIsReAckedAndNotReExecuted) {
  connect();
  auto sent = exchange(write(op::kWriteOnly, E, 4096, 64, pattern(64, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(bytes(4096, 64), pattern(64, 1));
  std::memset(buf + 4096, 0, 64);  // the application reuses the buffer

  sent = exchange(write(op::kWriteOnly, E, 4096, 64, pattern(64, 2)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(bytes(4096, 64), std::vector<uint8_t>(64, 0)) << "duplicate WRITE re-executed";
  EXPECT_TRUE(wcs().empty());
}

// ---------------------------------------------------------------- PSN sequence errors

// IBA 9.7.5.2.2 / C9-110: a PSN beyond the expected one is a sequence error: exactly one
// NAK (PSN sequence error, carrying the expected PSN) per gap, nothing for the following
// out-of-sequence packets, and a new NAK only for a new gap after the ePSN arrived.
TEST_F(RespTest, OutOfSequencePsnGetsOneNakPerGapWithEpsn) {
  connect();
  auto& totals = h.dev().counters();
  const uint64_t oos0 = totals.out_of_sequence.load(), naks0 = totals.seq_naks_sent.load();
  post_recv(1, 0, 256);
  post_recv(2, 256, 256);
  auto sent = exchange(send(op::kSendOnly, E + 2, pattern(8, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::psn_seq_error, E));
  EXPECT_EQ(sent[0].msn, 0u);

  sent = exchange(
      {send(op::kSendOnly, E + 3, pattern(8, 1)), send(op::kSendOnly, E + 4, pattern(8, 1))});
  EXPECT_TRUE(sent.empty()) << "second NAK for the same gap: " << describe(sent);
  sent = exchange(send(op::kSendOnly, E + 2, pattern(8, 1)));
  EXPECT_TRUE(sent.empty()) << "second NAK for the same gap: " << describe(sent);
  EXPECT_TRUE(wcs().empty());

  sent = exchange(send(op::kSendOnly, E, pattern(8, 2)));  // the expected PSN: gap closed
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));

  sent = exchange(send(op::kSendOnly, E + 2, pattern(8, 3)));  // a new gap at E+1
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::psn_seq_error, E + 1));
  EXPECT_EQ(sent[0].msn, 1u);
  EXPECT_EQ(hq().seq_naks_sent.load(), 2u);
  // Counted per QP and in the device's totals (stats.h): five packets came beyond the ePSN.
  EXPECT_EQ(hq().out_of_sequence.load(), 5u);
  EXPECT_EQ(totals.out_of_sequence.load() - oos0, 5u);
  EXPECT_EQ(totals.seq_naks_sent.load() - naks0, 2u);
  auto c = wcs();
  ASSERT_EQ(c.size(), 1u) << describe(c);
  expect_recv(c[0], 1, 8);
  EXPECT_EQ(qp.state(), QpState::rts);
}

// ---------------------------------------------------------------- RNR

// IBA 9.7.5.2.8: a SEND with no receive posted gets an RNR NAK carrying the QP's
// min_rnr_timer code and the PSN of the request; the ePSN does not move, so the same PSN
// succeeds once a receive is posted.
TEST_F(RespTest, SendWithoutReceiveGetsRnrNakAndEpsnStays) {
  Conn c;
  c.min_rnr_timer = 14;
  connect(c);
  auto sent = exchange(send(op::kSendOnly, E, pattern(16, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsRnrNak(sent[0], 14, E));
  EXPECT_EQ(sent[0].msn, 0u);
  EXPECT_EQ(qp.state(), QpState::rts);
  EXPECT_TRUE(wcs().empty());

  post_recv(3, 0, 256);
  sent = exchange(send(op::kSendOnly, E, pattern(16, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  expect_recv(w[0], 3, 16);
}

// IBA 9.7.5.2.8: WRITE with immediate consumes a receive; without one it is RNR NAKed
// and its payload is NOT written (the retry will write it).
TEST_F(RespTest, WriteWithImmWithoutReceiveGetsRnrNakAndWritesNothing) {
  Conn c;
  c.min_rnr_timer = 3;
  connect(c);
  Pkt p = write(op::kWriteOnlyImm, E, 4096, 32, pattern(32, 1));
  p.imm_be = htonl(77);
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsRnrNak(sent[0], 3, E));
  EXPECT_EQ(bytes(4096, 32), std::vector<uint8_t>(32, 0));

  post_recv(5, 0, 0);
  sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(bytes(4096, 32), pattern(32, 1));
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].wr_id, 5u);
  EXPECT_EQ(w[0].status, WcStatus::success);
  EXPECT_EQ(w[0].opcode, WcOpcode::recv_rdma_with_imm);
  EXPECT_EQ(w[0].byte_len, 32u);
  EXPECT_EQ(w[0].wc_flags, wc_flags::with_imm);
  EXPECT_EQ(w[0].imm_data, htonl(77));
}

// ---------------------------------------------------------------- remote access errors

// IBA 9.7.4.1.4 (C9-88) / 10.6.3.2: an RDMA WRITE whose R_Key, bounds or access rights do
// not check out is NAKed with "remote access error" for its PSN, writes nothing, and the
// responder's QP enters the error state.
TEST_F(RespTest, WriteWithBadRkeyNaksRemoteAccessError) {
  connect();
  auto sent = exchange(write(op::kWriteOnly, E, 0, 16, pattern(16, 1), mr.rkey() + 1));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_EQ(bytes(0, 16), std::vector<uint8_t>(16, 0));
  expect_error_state();
}

// IBA C9-222.1.1, 11.6.3: a responder error no receive WQE can carry reaches the consumer
// as an affiliated asynchronous error: Local Access Violation for an access violation.
TEST_F(RespTest, AccessViolationRaisesTheLocalAccessViolationEvent) {
  connect();
  std::atomic<uint32_t> seen{0};
  h.ctx().set_event_handler([&](const AsyncEvent& ev) {
    if (ev.type == EventType::qp_access_err && ev.qp_num == qpn()) seen++;
  });
  auto sent = exchange(write(op::kWriteOnly, E, 0, 16, pattern(16, 1), mr.rkey() + 1));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_TRUE(h.poll_until([&] { return seen.load() > 0; })) << "no QP access error event";
  h.ctx().set_event_handler({});
  EXPECT_EQ(seen.load(), 1u);
  expect_error_state();
}

// ... and Invalid Request for a request out of the opcode sequence (IBA 9.7.4.1.3).
TEST_F(RespTest, InvalidRequestRaisesTheInvalidRequestEvent) {
  connect();
  post_recv(1, 0, 1024);
  std::atomic<uint32_t> seen{0};
  h.ctx().set_event_handler([&](const AsyncEvent& ev) {
    if (ev.type == EventType::qp_req_err && ev.qp_num == qpn()) seen++;
  });
  auto sent = exchange(send(op::kSendMiddle, E, pattern(256, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_TRUE(h.poll_until([&] { return seen.load() > 0; })) << "no invalid request event";
  h.ctx().set_event_handler({});
  expect_error_state();
}

// An RDMA WRITE with immediate names the receive WQE it consumes, so its access violation
// completes that receive in error (ibv_poll_cq(3): IBV_WC_LOC_ACCESS_ERR), rather than
// flushing it; the requester still gets the remote access NAK.
TEST_F(RespTest, WriteWithImmediateAccessViolationCompletesItsReceiveInError) {
  connect();
  post_recv(7, 0, 64);
  post_recv(8, 64, 64);
  Pkt p = write(op::kWriteOnlyImm, E, 1024, 16, pattern(16, 1), mr.rkey() + 1);
  p.imm_be = 0x01020304;
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  ASSERT_EQ(wait_wcs(2), 2u);
  auto w = wcs();
  expect_wc(w[0], 7, WcStatus::loc_access_err, WcOpcode::recv);
  expect_wc(w[1], 8, WcStatus::wr_flush_err, WcOpcode::recv);
  EXPECT_EQ(bytes(1024, 16), std::vector<uint8_t>(16, 0));
  EXPECT_EQ(qp.state(), QpState::err);
}

TEST_F(RespTest, WriteOutOfMrBoundsNaksRemoteAccessError) {
  connect();
  auto sent = exchange(write(op::kWriteOnly, E, kBufBytes - 8, 16, pattern(16, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_EQ(bytes(kBufBytes - 8, 8), std::vector<uint8_t>(8, 0));
  expect_error_state();
}

TEST_F(RespTest, WriteWithoutQpRemoteWriteAccessNaksRemoteAccessError) {
  Conn c;
  c.access = access::remote_read | access::remote_atomic;
  connect(c);
  auto sent = exchange(write(op::kWriteOnly, E, 0, 16, pattern(16, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_EQ(bytes(0, 16), std::vector<uint8_t>(16, 0));
  expect_error_state();
}

TEST_F(RespTest, WriteToMrWithoutRemoteWriteNaksRemoteAccessError) {
  connect();
  auto ro = Mr::reg(h.pd(), buf + 8192, 4096, access::local_write | access::remote_read);
  ASSERT_TRUE(ro);
  Pkt p = write(op::kWriteOnly, E, 8192, 16, pattern(16, 1), ro->rkey());
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_EQ(bytes(8192, 16), std::vector<uint8_t>(16, 0));
  expect_error_state();
}

TEST_F(RespTest, ReadWithoutQpRemoteReadAccessNaksRemoteAccessError) {
  Conn c;
  c.access = access::remote_write;
  connect(c);
  auto sent = exchange(read(E, 0, 64));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  expect_error_state();
}

// ---------------------------------------------------------------- RDMA READ

// IBA 9.7.4.1.4 / 9.7.5.1.6: a READ of 602 bytes at PMTU 256 is answered by READ
// RESPONSE FIRST / MIDDLE / LAST with consecutive PSNs from the request's PSN, full-MTU
// payloads but the last, AETH on FIRST and LAST only; the MSN counts the READ (C9-148).
// The READ consumes three PSNs: the next request is expected at E+3.
TEST_F(RespTest, ReadRequestIsAnsweredFirstMiddleLastFromMemory) {
  connect();
  fill(0, 602, 11);
  auto sent = exchange(read(E, 0, 602));
  ASSERT_EQ(sent.size(), 3u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespFirst, E, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespMiddle, E + 1, 256));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kReadRespLast, E + 2, 90));
  EXPECT_TRUE(sent[0].has_aeth && sent[0].aeth_type() == AethType::ack && sent[0].msn == 1)
      << sent[0].describe();
  EXPECT_FALSE(sent[1].has_aeth);
  EXPECT_TRUE(sent[2].has_aeth && sent[2].aeth_type() == AethType::ack && sent[2].msn == 1)
      << sent[2].describe();
  EXPECT_EQ(sent[2].pad, 2);
  std::vector<uint8_t> got;
  for (const Frame& f : sent) got.insert(got.end(), f.payload.begin(), f.payload.end());
  EXPECT_EQ(got, pattern(602, 11));

  post_recv(1, 4096, 64);
  sent = exchange(send(op::kSendOnly, E + 3, pattern(4, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 3, 2));
}

// IBA 9.7.5.1.6 / 9.7.4.1.4: a zero-length READ is answered by one READ RESPONSE ONLY
// without payload; with a DMA length of zero the R_Key and VA are not checked.
TEST_F(RespTest, ZeroLengthReadIsAnsweredByOneEmptyResponse) {
  connect();
  Pkt p = read(E, 0, 0);
  p.rkey = 0xdead00;
  p.va = 0x10;
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 0));
  EXPECT_TRUE(sent[0].has_aeth && sent[0].msn == 1) << sent[0].describe();
}

// IBA 9.7.4.1.5.2 (duplicate READ): a duplicate READ is executed again from the responder
// resource — memory is re-read, so bytes changed since are what the replay carries — for
// the whole request or from the PSN the requester restarts at; the ePSN does not move.
TEST_F(RespTest, DuplicateReadIsReplayedByReReadingMemory) {
  connect();
  fill(0, 602, 1);
  auto sent = exchange(read(E, 0, 602));
  ASSERT_EQ(sent.size(), 3u) << describe(sent);

  fill(0, 602, 77);  // memory changes before the duplicate arrives
  sent = exchange(read(E, 0, 602));
  ASSERT_EQ(sent.size(), 3u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespFirst, E, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespMiddle, E + 1, 256));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kReadRespLast, E + 2, 90));
  std::vector<uint8_t> got;
  for (const Frame& f : sent) got.insert(got.end(), f.payload.begin(), f.payload.end());
  EXPECT_EQ(got, pattern(602, 77));

  // The requester resumes in the middle (IBA 9.7.6.1.4): PSN E+1, RETH for the rest.
  fill(0, 602, 99);
  sent = exchange(read(E + 1, 256, 346));
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespFirst, E + 1, 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespLast, E + 2, 90));
  got.clear();
  for (const Frame& f : sent) got.insert(got.end(), f.payload.begin(), f.payload.end());
  auto want = pattern(602, 99);
  EXPECT_EQ(got, std::vector<uint8_t>(want.begin() + 256, want.end()));

  post_recv(1, 4096, 64);
  sent = exchange(send(op::kSendOnly, E + 3, pattern(4, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 3, 2));
}

// ---------------------------------------------------------------- atomics

// IBA 9.4.5 / 9.7.5.1.7: FetchAdd and CmpSwap execute on the 8-byte word and return its
// original value in an ATOMIC ACKNOWLEDGE carrying the request's PSN and the MSN.
TEST_F(RespTest, AtomicsReturnTheOriginalValue) {
  connect();
  word(8) = 5;
  auto sent = exchange(atomic(op::kFetchAdd, E, 8, 3, 0));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kAtomicAck, E, 0));
  EXPECT_TRUE(sent[0].has_atomic_ack && sent[0].orig == 5) << sent[0].describe();
  EXPECT_TRUE(sent[0].has_aeth && sent[0].aeth_type() == AethType::ack && sent[0].msn == 1)
      << sent[0].describe();
  EXPECT_EQ(word(8), 8u);

  sent = exchange(atomic(op::kCmpSwap, E + 1, 8, 100, 8));  // compare 8 → swap 100
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kAtomicAck, E + 1, 0));
  EXPECT_EQ(sent[0].orig, 8u);
  EXPECT_EQ(sent[0].msn, 2u);
  EXPECT_EQ(word(8), 100u);

  sent = exchange(atomic(op::kCmpSwap, E + 2, 8, 1, 7));  // compare fails: no swap
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_EQ(sent[0].orig, 100u);
  EXPECT_EQ(word(8), 100u);
}

// IBA 9.7.4.1.5.2 (duplicate atomic): a duplicate atomic is answered from the saved original value
// and NOT executed again: memory changed in between stays as it is.
TEST_F(RespTest, DuplicateAtomicIsAnsweredFromSavedValueWithoutReExecuting) {
  connect();
  word(16) = 5;
  auto sent = exchange(atomic(op::kFetchAdd, E, 16, 3, 0));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_EQ(sent[0].orig, 5u);
  EXPECT_EQ(word(16), 8u);

  word(16) = 1000;
  sent = exchange(atomic(op::kFetchAdd, E, 16, 3, 0));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kAtomicAck, E, 0));
  EXPECT_EQ(sent[0].orig, 5u) << "not the saved original value";
  EXPECT_EQ(word(16), 1000u) << "duplicate atomic re-executed";

  sent = exchange(atomic(op::kCmpSwap, E + 1, 16, 1, 1000));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kAtomicAck, E + 1, 0));
  EXPECT_EQ(sent[0].orig, 1000u);
  EXPECT_EQ(word(16), 1u);
}

// IBA 9.4.5 (atomics are naturally aligned): an atomic whose address is not 8-byte aligned is an
// invalid request: NAK invalid request, memory untouched, QP to ERR.
TEST_F(RespTest, MisalignedAtomicNaksInvalidRequest) {
  connect();
  word(8) = 5;
  word(16) = 6;
  auto sent = exchange(atomic(op::kFetchAdd, E, 12, 1, 0));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(word(8), 5u);
  EXPECT_EQ(word(16), 6u);
  expect_error_state();
}

// ---------------------------------------------------------------- malformed sequences

// IBA 9.7.4.1.3 (packet length): FIRST and MIDDLE packets carry exactly one PMTU of
// payload; anything else is an invalid request.
TEST_F(RespTest, FirstPacketShorterThanMtuNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendFirst, E, pattern(100, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  expect_error_state();
}

TEST_F(RespTest, MiddlePacketShorterThanMtuNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendFirst, E, pattern(256, 1), false));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  sent = exchange(send(op::kSendMiddle, E + 1, pattern(100, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E + 1));
  expect_error_state();
}

TEST_F(RespTest, WriteFirstLongerThanMtuNaksInvalidRequest) {
  connect();
  auto sent = exchange(write(op::kWriteFirst, E, 0, 1024, pattern(260, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  expect_error_state();
}

// LAST carries 1 byte to one PMTU and ONLY at most one PMTU (as rxe's check_length).
TEST_F(RespTest, SendOnlyLongerThanMtuNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendOnly, E, pattern(hq().mtu + 1, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  expect_error_state();
}

TEST_F(RespTest, SendLastLongerThanMtuNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendFirst, E, pattern(hq().mtu, 1), false));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  sent = exchange(send(op::kSendLast, E + 1, pattern(hq().mtu + 4, 2)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E + 1));
  expect_error_state();
}

TEST_F(RespTest, EmptySendLastNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendFirst, E, pattern(hq().mtu, 1), false));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  sent = exchange(send(op::kSendLast, E + 1, {}));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E + 1));
  expect_error_state();
}

// IBA 9.7.4.1.3 (C9-93, opcode sequence): opcodes must follow FIRST → MIDDLE* → LAST; a MIDDLE
// or LAST without a FIRST, or a new FIRST inside a message, is an invalid request.
TEST_F(RespTest, MiddleWithoutFirstNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  auto sent = exchange(send(op::kSendMiddle, E, pattern(256, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  expect_error_state();
}

TEST_F(RespTest, LastWithoutFirstNaksInvalidRequest) {
  connect();
  auto sent = exchange(write(op::kWriteLast, E, 0, 0, pattern(16, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(bytes(0, 16), std::vector<uint8_t>(16, 0));
  expect_error_state();
}

TEST_F(RespTest, SendFirstInsideWriteNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 4096);
  Pkt first = write(op::kWriteFirst, E, 0, 1024, pattern(256, 1));
  first.ack_req = false;
  auto sent = exchange(first);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  sent = exchange(send(op::kSendFirst, E + 1, pattern(256, 2)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E + 1));
  expect_error_state();
}

// IBA 9.7.4.1.4: a zero-length RDMA WRITE checks no R_Key and writes nothing.
TEST_F(RespTest, ZeroLengthWriteIgnoresTheRkey) {
  connect();
  Pkt p = write(op::kWriteOnly, E, 0, 0, {}, 0xdead00);
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(qp.state(), QpState::rts);
}

// IBA 9.7.4.1.3 (length errors): a WRITE carrying more payload than its RETH DMA
// length announced is an invalid request; nothing beyond the announced range is written.
TEST_F(RespTest, WritePayloadLongerThanRethLengthNaksInvalidRequest) {
  connect();
  auto sent = exchange(write(op::kWriteOnly, E, 0, 16, pattern(32, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(bytes(16, 16), std::vector<uint8_t>(16, 0));
  expect_error_state();
}

// IBA 9.7.4.1.3 (length errors): a SEND longer than the posted receive is an invalid request for
// the requester and a local length error for the receive (LOC_LEN_ERR); the QP enters ERR.
TEST_F(RespTest, SendLongerThanTheReceiveNaksInvalidRequest) {
  connect();
  post_recv(1, 0, 16);
  auto sent = exchange(send(op::kSendOnly, E, pattern(32, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(qp.state(), QpState::err);
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  EXPECT_EQ(w[0].wr_id, 1u);
  EXPECT_EQ(w[0].status, WcStatus::loc_len_err) << describe(w[0]);
}

// IBA 9.7.4.1.5 (responder resources): a READ/atomic request beyond
// max_dest_rd_atomic outstanding is an invalid request — but the valid READ before it is
// still answered, in PSN order, before the NAK.
// Regression (fixed): resp.cc sends the NAK and flush_queues() drops the pending responses of E.
TEST_F(RespTest, ReadsBeyondMaxDestRdAtomicNakInvalidRequest) {
  Conn c;
  c.max_dest_rd_atomic = 1;
  connect(c);
  fill(0, 64, 1);
  auto sent = exchange({read(E, 0, 16), read(E + 1, 16, 16)});
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 16));
  EXPECT_TRUE(IsNak(sent[1], NakCode::invalid_request, E + 1));
  EXPECT_EQ(qp.state(), QpState::err);
}

// IBA 10.3.1: a QP in RTR already responds (its requester is not yet enabled).
TEST_F(RespTest, QpInRtrAnswersRequests) {
  Conn c;
  c.to = QpState::rtr;
  connect(c);
  post_recv(1, 0, 64);
  auto sent = exchange(send(op::kSendOnly, E, pattern(8, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(wcs().size(), 1u);
}

// IBA 9.7.5.2.2 (C9-110): the PSN sequence NAK is owed even while READ responses are still
// being sent; it follows them (responses and NAK leave in PSN order).
// Regression (fixed): resp.cc resp_rx() skips the NAK while rs.pending (and marks nothing to send
// it later), so the requester only recovers by its retransmission timer.
TEST_F(RespTest, OutOfSequenceRightAfterAReadIsStillNaked) {
  connect();
  fill(0, 64, 1);
  auto sent = exchange({read(E, 0, 16), send(op::kSendOnly, E + 2, pattern(8, 1))});
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 16));
  EXPECT_TRUE(IsNak(sent[1], NakCode::psn_seq_error, E + 1));
}

// ---------------------------------------------------------------- silently dropped

// IBA 9.6 (packet header validation): a connected QP accepts packets only from its peer's address.
TEST_F(RespTest, RequestFromAnotherAddressIsDropped) {
  connect();
  post_recv(1, 0, 256);
  Pkt p = send(op::kSendOnly, E, pattern(8, 1));
  p.src_ip = h.peer_ip() + 1;
  const Counters before = h.counters();
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(h.counters().rx_bad_state, before.rx_bad_state + 1);
  EXPECT_TRUE(wcs().empty());
}

// IBA 9.6 (packet header validation): a packet for a QP that does not exist is dropped silently
// (counted).
TEST_F(RespTest, PacketForUnknownQpnIsDroppedAndCounted) {
  connect();
  post_recv(1, 0, 256);
  const Counters before = h.counters();
  Pkt p = send(op::kSendOnly, E, pattern(8, 1));
  p.dest_qp = qpn() ^ (1u << 22);
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(h.counters().rx_no_qp, before.rx_no_qp + 1);
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(bytes(0, 8), std::vector<uint8_t>(8, 0));
}

// IBA 10.3.1 (QP states): a QP in RESET or INIT processes no incoming packets.
TEST_F(RespTest, RequestToQpInInitIsDroppedAndCounted) {
  Conn c;
  c.to = QpState::init;
  connect(c);
  post_recv(1, 0, 256);
  const Counters before = h.counters();
  auto sent = exchange(send(op::kSendOnly, 0, pattern(8, 1)));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(h.counters().rx_bad_state, before.rx_bad_state + 1);
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(bytes(0, 8), std::vector<uint8_t>(8, 0));
  EXPECT_EQ(qp.state(), QpState::init);
}

TEST_F(RespTest, RequestToQpInResetIsDroppedAndCounted) {
  Conn c;
  c.to = QpState::reset;
  connect(c);
  const Counters before = h.counters();
  auto sent = exchange(write(op::kWriteOnly, 0, 0, 8, pattern(8, 1)));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(h.counters().rx_bad_state, before.rx_bad_state + 1);
  EXPECT_EQ(bytes(0, 8), std::vector<uint8_t>(8, 0));
  EXPECT_EQ(qp.state(), QpState::reset);
}

// IBA 10.2.4.2 (C10-15): a UD datagram whose Q_Key does not match the QP's is dropped
// silently; one that matches lands after the 40-byte GRH (IBA 11.4.1.2).
// IBA 9.8.3 (UC): no acknowledgement is ever sent, even with AckReq; a PSN gap drops the
// message in progress (its receive WQE is kept for the next message), packets up to the
// next FIRST or ONLY are dropped, and that one starts a new message.
TEST_F(RespTest, UcGapDropsTheMessageInProgressAndNeverAcks) {
  Conn c;
  c.type = QpType::uc;
  connect(c);
  post_recv(1, 0, 4096);
  const uint32_t m = hq().mtu;
  auto uc = [&](uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload) {
    Pkt p = pkt(op::kUc | opcode, psn, std::move(payload));
    p.ack_req = true;
    return p;
  };
  auto sent = exchange(uc(op::kSendFirst, E, pattern(m, 1)));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  // E + 1 (a MIDDLE) is lost.
  sent = exchange(uc(op::kSendLast, E + 2, pattern(10, 1)));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_TRUE(wcs().empty()) << "the broken message completes nothing";
  sent = exchange(uc(op::kSendMiddle, E + 3, pattern(m, 3)));  // not a start: dropped
  EXPECT_TRUE(sent.empty()) << describe(sent);
  sent = exchange(uc(op::kSendOnly, E + 4, pattern(40, 2)));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  expect_recv(w[0], 1, 40);
  EXPECT_EQ(bytes(0, 40), pattern(40, 2));
  EXPECT_EQ(qp.state(), QpState::rts) << "UC errors never move the QP to ERR";
}

// UC carries no READ or atomic (IBA 9.8.1) and a UC QP takes no RC opcode: dropped, counted.
TEST_F(RespTest, UcDropsReadsAndOtherTransportsOpcodes) {
  Conn c;
  c.type = QpType::uc;
  connect(c);
  post_recv(1, 0, 4096);
  Pkt rd = pkt(op::kUc | op::kReadRequest, E);
  rd.va = addr(0);
  rd.rkey = mr.rkey();
  rd.dma_len = 8;
  EXPECT_TRUE(exchange(rd).empty());
  EXPECT_TRUE(exchange(pkt(op::kRc | op::kSendOnly, E, pattern(8, 1))).empty());
  EXPECT_TRUE(wcs().empty());
  EXPECT_TRUE(exchange(pkt(op::kUc | op::kSendOnly, E, pattern(8, 2))).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  expect_recv(w[0], 1, 8);
}

TEST_F(RespTest, UdDatagramWithWrongQkeyIsDropped) {
  Conn c;
  c.type = QpType::ud;
  connect(c);
  post_recv(1, 0, 2048);
  Pkt p = pkt(op::kUd | op::kSendOnly, 0, pattern(64, 3));
  p.qkey = 0x22222222;
  p.src_qp = 0x777;
  const Counters before = h.counters();
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(h.counters().rx_bad_state, before.rx_bad_state + 1);
  EXPECT_EQ(bytes(0, 104), std::vector<uint8_t>(104, 0));

  p.qkey = c.qkey;
  sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  expect_recv(w[0], 1, 40 + 64, wc_flags::grh);
  EXPECT_EQ(w[0].src_qp, 0x777u);
  EXPECT_EQ(bytes(40, 64), pattern(64, 3));
}

// IBA 11.4.1.2: a UD message is one packet of at most the PMTU; a larger payload
// is dropped without consuming the receive.
TEST_F(RespTest, UdPayloadLargerThanMtuIsDropped) {
  Conn c;
  c.type = QpType::ud;
  connect(c);
  const uint32_t mtu = hq().mtu;
  post_recv(1, 0, 2 * mtu + 64);
  Pkt p = pkt(op::kUd | op::kSendOnly, 0, pattern(mtu + 4, 3));
  p.qkey = c.qkey;
  p.src_qp = 0x55;
  const Counters before = h.counters();
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(h.counters().rx_bad_frame, before.rx_bad_frame + 1);

  p.payload = pattern(mtu, 4);  // exactly one PMTU is fine and uses the same receive
  exchange(p);
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u);
  expect_recv(w[0], 1, 40 + mtu, wc_flags::grh);
}

// ---------------------------------------------------------------- PSN arithmetic

// IBA 9.7.1: PSNs are 24-bit and wrap from 0xffffff to 0; comparisons are modulo 2^24
// (half the space ahead is "new", half behind is "duplicate").
TEST_F(RespTest, PsnWrapsAroundAt24Bits) {
  Conn c;
  c.rq_psn = 0xfffffe;
  connect(c);
  for (int i = 0; i < 4; i++) post_recv(uint64_t(i), uint32_t(i) * 64, 64);
  const uint32_t psns[] = {0xfffffe, 0xffffff, 0x000000, 0x000001};
  for (uint32_t i = 0; i < 4; i++) {
    auto sent = exchange(send(op::kSendOnly, psns[i], pattern(8, uint8_t(i))));
    ASSERT_EQ(sent.size(), 1u) << describe(sent);
    EXPECT_TRUE(IsAck(sent[0], psns[i], i + 1));
  }
  EXPECT_EQ(wcs().size(), 4u);

  auto sent = exchange(send(op::kSendOnly, 0xffffff, pattern(8, 9)));  // behind: duplicate
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], 0x000001, 4));
  sent = exchange(send(op::kSendOnly, 0x000003, pattern(8, 9)));  // ahead: sequence error
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::psn_seq_error, 0x000002));
  EXPECT_TRUE(wcs().empty());
}


// ---------------------------------------------------------------- responder-resource ring

// C22 (IBA 9.7.4.1.5.2; resp.cc add_resource, replay): the responder keeps the last
// max_dest_rd_atomic READ/atomic requests in a ring. A duplicate READ older than every entry
// (its resource was reused by a newer request) cannot be replayed: replay() finds no entry
// and drops it, as rxe does (rxe_resp.c duplicate_request: no resource → drop). Nothing is
// sent and nothing changes: the ePSN and MSN stay, the QP stays in RTS.
TEST_F(RespTest, DuplicateReadOlderThanTheResourceRingIsDropped) {
  Conn c;
  c.max_dest_rd_atomic = 2;
  connect(c);
  fill(0, 48, 1);
  for (uint32_t i = 0; i < 3; i++) {  // READs A (E), B (E+1), C (E+2): C reuses A's entry
    auto sent = exchange(read(E + i, 16 * i, 16));
    ASSERT_EQ(sent.size(), 1u) << describe(sent);
    EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E + i, 16));
  }
  const uint64_t dups = hq().dup_rcvd.load();
  auto sent = exchange(read(E, 0, 16));  // duplicate of A
  EXPECT_TRUE(sent.empty()) << describe(sent);
  h.poll(4);
  sent = h.take_sent();
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(hq().dup_rcvd.load(), dups + 1);
  EXPECT_EQ(qp.state(), QpState::rts);

  post_recv(1, 4096, 64);
  sent = exchange(send(op::kSendOnly, E + 3, pattern(4, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 3, 4));
}

// C22 (IBA 9.7.4.1.5.2, 9.7.6.1.4): a duplicate of a READ that is not the newest entry of
// the ring is replayed by reading memory again. The go-back-N resend of both READs, arriving
// in one burst, gets every response exactly once, in PSN order: the duplicate of the older
// READ restarts the stream at its entry and every newer one (resp.cc replay), and the
// duplicate of the newer READ, already covered by that stream, adds nothing. With a ring of
// 2 the older READ is the oldest entry kept (one older is dropped: the test above).
TEST_F(RespTest, DuplicateOfAnOlderReadInTheRingIsReplayedFromMemory) {
  Conn c;
  c.max_dest_rd_atomic = 2;
  connect(c);
  fill(0, 300, 1);
  fill(1024, 16, 2);
  auto sent = exchange(read(E, 0, 300));  // B: E, E+1
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  sent = exchange(read(E + 2, 1024, 16));  // C: E+2
  ASSERT_EQ(sent.size(), 1u) << describe(sent);

  fill(0, 300, 50);  // memory changes before the duplicates arrive
  fill(1024, 16, 60);
  const uint64_t dups = hq().dup_rcvd.load();
  sent = exchange({read(E, 0, 300), read(E + 2, 1024, 16)});
  ASSERT_EQ(sent.size(), 3u) << describe(sent);
  auto want = pattern(300, 50);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespFirst, E, 256));
  EXPECT_EQ(sent[0].payload, std::vector<uint8_t>(want.begin(), want.begin() + 256));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespLast, E + 1, 44));
  EXPECT_EQ(sent[1].payload, std::vector<uint8_t>(want.begin() + 256, want.end()));
  EXPECT_TRUE(IsPacket(sent[2], op::kRc | op::kReadRespOnly, E + 2, 16));
  EXPECT_EQ(sent[2].payload, pattern(16, 60));
  EXPECT_EQ(hq().dup_rcvd.load(), dups + 2);

  // The older READ's duplicate alone, resumed in its middle (PSN E+1, RETH for the rest):
  // its remaining response and the newer READ's follow (the code replays every newer entry).
  fill(0, 300, 70);
  fill(1024, 16, 80);
  sent = exchange(read(E + 1, 256, 44));
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E + 1, 44));
  want = pattern(300, 70);
  EXPECT_EQ(sent[0].payload, std::vector<uint8_t>(want.begin() + 256, want.end()));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespOnly, E + 2, 16));
  EXPECT_EQ(sent[1].payload, pattern(16, 80));
  EXPECT_EQ(qp.state(), QpState::rts);

  post_recv(1, 4096, 64);  // the ePSN did not move: E+3 is the next new request
  sent = exchange(send(op::kSendOnly, E + 3, pattern(4, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 3, 3));
}

// ---------------------------------------------------------------- SRQ credits

class RespSrqTest : public RespTest {
 protected:
  Srq srq;  // destroyed after TearDown() destroyed the QP that uses it
};

// C6 (IBA 9.7.7.2, Table 44; resp.cc credit_code): a QP whose receives come from an SRQ has
// no per-QP end-to-end credits: its ACKs carry credit code 31 ("invalid"), however many
// receives the SRQ holds — where a QP with its own RQ reports them (AckCarriesEndToEndCredits).
TEST_F(RespSrqTest, AckOfAnSrqQpCarriesTheInvalidCreditCode) {
  auto s = Srq::create(h.pd(), 64, 1);
  ASSERT_TRUE(s) << "Srq::create: error " << s.error();
  srq = s.take();
  Conn c;
  c.srq = &srq;
  connect(c);
  for (uint32_t i = 0; i < 5; i++) {
    Sge sg{addr(i * 512), 512, mr.lkey()};
    RecvWr r{};
    r.wr_id = 100 + i;
    r.sg_list = &sg;
    r.num_sge = 1;
    RecvWr* bad = nullptr;
    ASSERT_EQ(srq.post_recv(&r, &bad), 0);
  }
  auto sent = exchange(send(op::kSendOnly, E, pattern(8, 1)));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E, 1));
  EXPECT_EQ(sent[0].aeth_value(), pmd::wire::kCreditsInvalid) << sent[0].describe();
  EXPECT_EQ(sent[0].aeth_value(), 31) << sent[0].describe();

  // Coalesced ACK of a multi-packet SEND and a SEND: still code 31.
  sent = exchange({send(op::kSendFirst, E + 1, pattern(256, 2), false),
                   send(op::kSendLast, E + 2, pattern(10, 3)),
                   send(op::kSendOnly, E + 3, pattern(12, 4))});
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], E + 3, 3));
  EXPECT_EQ(sent[0].aeth_value(), 31) << sent[0].describe();

  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  expect_recv(w[0], 100, 8);
  expect_recv(w[1], 101, 266);
  expect_recv(w[2], 102, 12);
  EXPECT_EQ(bytes(512, 256), pattern(256, 2));
  EXPECT_EQ(bytes(768, 10), pattern(10, 3));
}

// ---------------------------------------------------------------- state machine

// The responder's steps carry the names resp.cc's header draws its transitions with, for
// traces and tests; the table has one for every step, the last included.
TEST(RespStepNames, EveryStepIsNamedAsSpelled) {
  using pmd::hca::RespStep;
  EXPECT_STREQ(pmd::hca::name(RespStep::check_state), "check_state");
  EXPECT_STREQ(pmd::hca::name(RespStep::check_psn), "check_psn");
  EXPECT_STREQ(pmd::hca::name(RespStep::check_placement), "check_placement");
  EXPECT_STREQ(pmd::hca::name(RespStep::nak_remote_access_reported), "nak_remote_access_reported");
  EXPECT_STREQ(pmd::hca::name(RespStep::drop), "drop");
  EXPECT_STREQ(pmd::hca::name(RespStep::done), "done");
}

}  // namespace
}  // namespace dverbs::proto
