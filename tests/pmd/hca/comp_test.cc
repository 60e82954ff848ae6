// Completer rules (lib/pmd/hca/comp.cc, IBA 9.7.5.1–9.7.5.2, 10.8.3, 11.4.2): the fake peer
// answers a QP's requests with crafted ACKs, NAKs, READ responses and atomic ACKs; each test
// asserts the work completions (status, opcode, order, byte_len), the data delivered, the
// QP state and what the requester sends again.
#include "harness.h"
#include "pmd/hca/engine.h"

namespace dverbs::proto {
namespace {

constexpr uint32_t S = 0x000100;  // the requester's first PSN (Conn::sq_psn)

class CompTest : public ProtoTest {
 protected:
  void connect(Conn c = {}) { make_qp(c); }

  // Two SENDs (S, S+1), then a NAK `code` for S: the first completes with `st`, the second is
  // flushed, the QP is in ERR, and nothing more is sent.
  void expect_nak_fails_qp(NakCode code, WcStatus st) {
    connect();
    post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
    ASSERT_EQ(h.take_sent().size(), 2u);
    auto sent = exchange(nak(code, S));
    EXPECT_TRUE(sent.empty()) << describe(sent);
    auto w = wcs();
    ASSERT_EQ(w.size(), 2u) << describe(w);
    expect_wc(w[0], 1, st, WcOpcode::send);
    expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
    EXPECT_EQ(qp.state(), QpState::err);
    h.poll(4);
    EXPECT_TRUE(h.take_sent().empty());
  }
};

// ---------------------------------------------------------------- ACKs

// IBA 9.7.5.1.1 (coalesced ACKs): one ACK for the newest PSN acknowledges every earlier
// message; the WRs complete in posting order.
TEST_F(CompTest, OneAckCompletesSeveralMessagesInOrder) {
  connect();
  post(
      {wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 300), write_wr(3, 512, 20, 0x7000)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 4u) << describe(sent);
  EXPECT_TRUE(exchange(ack(S + 3, 3)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::send);
  expect_wc(w[2], 3, WcStatus::success, WcOpcode::rdma_write);
  EXPECT_EQ(qp.state(), QpState::rts);
}

// IBA 9.7.5.1.1: an ACK inside a multi-packet message completes nothing.
TEST_F(CompTest, AckOfPartOfAMessageCompletesNothing) {
  connect();
  post({wr(1, WrOpcode::send, 0, 600)});
  ASSERT_EQ(h.take_sent().size(), 3u);
  EXPECT_TRUE(exchange(ack(S + 1, 0)).empty());
  EXPECT_TRUE(wcs().empty());
  EXPECT_TRUE(exchange(ack(S + 2, 1)).empty());
  EXPECT_EQ(wcs().size(), 1u);
}

// IBA 9.7.5.1.2 (ghost/duplicate responses): ACKs for PSNs already acknowledged or
// never sent are ignored; they complete nothing and change nothing.
TEST_F(CompTest, StaleDuplicateAndFutureAcksAreIgnored) {
  connect();
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  EXPECT_TRUE(exchange(ack(S, 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);

  EXPECT_TRUE(exchange(ack(S, 1)).empty());      // duplicate
  EXPECT_TRUE(exchange(ack(S - 1, 0)).empty());  // older
  EXPECT_TRUE(exchange(ack(S - 100, 0)).empty());
  EXPECT_TRUE(exchange(ack(S + 5, 5)).empty());  // never sent
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(qp.state(), QpState::rts);

  EXPECT_TRUE(exchange(ack(S + 1, 2)).empty());
  w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 2, WcStatus::success, WcOpcode::send);
}

// ---------------------------------------------------------------- NAK codes

// IBA 9.7.5.2 (NAK codes) / 10.8.3.1: a NAK invalid request, remote access error
// or remote operational error completes the NAKed WR with the matching status, moves the
// QP to ERR and flushes every later WR, in order.
TEST_F(CompTest, NakInvalidRequestIsRemInvReqErr) {
  expect_nak_fails_qp(NakCode::invalid_request, WcStatus::rem_inv_req_err);
}
TEST_F(CompTest, NakRemoteAccessErrorIsRemAccessErr) {
  expect_nak_fails_qp(NakCode::remote_access_error, WcStatus::rem_access_err);
}
TEST_F(CompTest, NakRemoteOperationalErrorIsRemOpErr) {
  expect_nak_fails_qp(NakCode::remote_op_error, WcStatus::rem_op_err);
}

// IBA 9.7.5.1.2: a NAK implicitly acknowledges every PSN before it: the earlier message
// completes successfully, the NAKed one in error.
TEST_F(CompTest, NakForTheSecondMessageCompletesTheFirstSuccessfully) {
  connect();
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10), wr(3, WrOpcode::send, 0, 4)});
  ASSERT_EQ(h.take_sent().size(), 3u);
  EXPECT_TRUE(exchange(nak(NakCode::remote_access_error, S + 1, 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::rem_access_err, WcOpcode::send);
  expect_wc(w[2], 3, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
}

// IBA 9.7.5.2: a READ is NAKed like any request: remote access error → REM_ACCESS_ERR.
TEST_F(CompTest, NakForAReadCompletesItWithRemAccessErr) {
  connect();
  post({read_wr(1, 0, 16, 0x1000), wr(2, WrOpcode::send, 64, 4)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  EXPECT_TRUE(exchange(nak(NakCode::remote_access_error, S)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::rem_access_err, WcOpcode::rdma_read);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
}

// IBA 9.7.5.1.2: a NAK (or RNR NAK) names an outstanding PSN; one for a PSN that was
// already acknowledged is a stale duplicate (the network may duplicate and delay it) and is
// ignored — it neither fails nor delays the WRs outstanding now.
// Regression (fixed): comp.cc comp_rx() accepts AETH PSNs down to last_ack_psn - 1 for NAKs too.
TEST_F(CompTest, StaleNakForAnAcknowledgedPsnIsIgnored) {
  connect();
  post({wr(1, WrOpcode::send, 0, 4)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  EXPECT_TRUE(exchange(ack(S, 1)).empty());
  ASSERT_EQ(wcs().size(), 1u);
  post({wr(2, WrOpcode::send, 0, 4)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  EXPECT_TRUE(exchange(nak(NakCode::remote_access_error, S, 0)).empty());
  EXPECT_TRUE(wcs().empty()) << "a stale NAK failed a later WR";
  EXPECT_EQ(qp.state(), QpState::rts);
  EXPECT_TRUE(exchange(ack(S + 1, 2)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 2, WcStatus::success, WcOpcode::send);
}

TEST_F(CompTest, StaleRnrNakForAnAcknowledgedPsnIsIgnored) {
  Conn c;
  c.rnr_retry = 0;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 4)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  EXPECT_TRUE(exchange(ack(S, 1)).empty());
  ASSERT_EQ(wcs().size(), 1u);
  post({wr(2, WrOpcode::send, 0, 4)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  EXPECT_TRUE(exchange(rnr_nak(1, S, 0)).empty());
  EXPECT_TRUE(wcs().empty()) << "a stale RNR NAK failed a later WR";
  EXPECT_EQ(qp.state(), QpState::rts);
  EXPECT_TRUE(exchange(ack(S + 1, 2)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 2, WcStatus::success, WcOpcode::send);
}

// ---------------------------------------------------------------- RNR

// IBA 9.7.5.2.8 / 9.7.5.1.2: an RNR NAK implicitly acknowledges the messages before the
// NAKed PSN; only the NAKed message and later ones are sent again.
TEST_F(CompTest, RnrNakImplicitlyAcknowledgesEarlierMessages) {
  connect();
  post({wr(1, WrOpcode::send, 0, 4), wr(2, WrOpcode::send, 64, 4)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  h.inject(rnr_nak(1, S + 1, 1));
  auto sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S + 1, 4));
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
}

// IBA 9.7.5.2.8: after an RNR NAK the requester waits the encoded RNR timer, then
// resends from the NAKed PSN.
TEST_F(CompTest, RnrNakResendsFromTheNakedPsnAfterTheTimer) {
  Conn c;
  c.rnr_retry = 3;
  connect(c);
  const uint64_t rnr0 = h.dev().counters().rnr_naks_rcvd.load();
  const uint64_t resent0 = h.dev().counters().retransmits.load();
  fill(0, 40, 6);
  post({wr(1, WrOpcode::send, 0, 40)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  h.inject(rnr_nak(1, S));  // 10 µs
  auto sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 40));
  EXPECT_EQ(sent[0].payload, pattern(40, 6));
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(hq().rnr_naks_rcvd.load(), 1u);
  EXPECT_EQ(h.dev().counters().rnr_naks_rcvd.load() - rnr0, 1u);
  EXPECT_EQ(hq().retransmits.load(), 1u);  // the one packet, sent again
  EXPECT_EQ(h.dev().counters().retransmits.load() - resent0, 1u);
  EXPECT_TRUE(exchange(ack(S, 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
}

// IBA 9.7.5.2.8 (rnr_retry): each RNR NAK costs one retry; with rnr_retry = 2 the
// requester resends exactly twice (go-back-N: both outstanding messages each time), and the
// third RNR NAK completes the WR with RNR_RETRY_EXC_ERR; the QP enters ERR and every later
// WR is flushed in order.
TEST_F(CompTest, RnrRetryExhaustedIsRnrRetryExcErrThenFlushInOrder) {
  Conn c;
  c.rnr_retry = 2;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  for (int round = 0; round < 2; round++) {
    h.inject(rnr_nak(1, S));
    auto sent = wait_frames(2);
    ASSERT_EQ(sent.size(), 2u) << "round " << round << ": " << describe(sent);
    EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 10));
    EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendOnly, S + 1, 10));
    EXPECT_TRUE(wcs().empty());
  }
  h.inject(rnr_nak(1, S));
  h.poll(4);
  EXPECT_TRUE(h.take_sent().empty());
  post({wr(3, WrOpcode::send, 0, 4)});
  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  expect_wc(w[0], 1, WcStatus::rnr_retry_exc_err, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  expect_wc(w[2], 3, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
  EXPECT_EQ(hq().rnr_naks_rcvd.load(), 3u);
}

// rnr_retry = 0: the first RNR NAK is fatal, nothing is resent.
TEST_F(CompTest, RnrRetryZeroFailsOnTheFirstRnrNak) {
  Conn c;
  c.rnr_retry = 0;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  EXPECT_TRUE(exchange(rnr_nak(1, S)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::rnr_retry_exc_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
}

// IBA 9.7.5.2.8: rnr_retry = 7 means retry forever.
TEST_F(CompTest, RnrRetrySevenRetriesForever) {
  Conn c;
  c.rnr_retry = 7;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  for (int i = 0; i < 12; i++) {
    h.inject(rnr_nak(1, S));
    auto sent = wait_frames(1);
    ASSERT_EQ(sent.size(), 1u) << "retry " << i << ": " << describe(sent);
    EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 10));
  }
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(qp.state(), QpState::rts);
}

// ---------------------------------------------------------------- READ and atomic responses

// IBA 9.7.5.1.6: READ responses fill the local buffer at PMTU offsets; the READ completes
// at its LAST response with byte_len = the READ length.
TEST_F(CompTest, ReadResponsesFillTheBufferAndCompleteTheRead) {
  connect();
  post({read_wr(1, 4096, 600, 0x10000)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  auto data = pattern(600, 8);
  std::vector<uint8_t> a(data.begin(), data.begin() + 256),
      b(data.begin() + 256, data.begin() + 512), c(data.begin() + 512, data.end());
  EXPECT_TRUE(exchange({read_resp(op::kReadRespFirst, S, a, 1),
                        read_resp(op::kReadRespMiddle, S + 1, b, 1)})
                  .empty());
  EXPECT_TRUE(wcs().empty());
  EXPECT_TRUE(exchange(read_resp(op::kReadRespLast, S + 2, c, 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::rdma_read);
  EXPECT_EQ(w[0].byte_len, 600u);
  EXPECT_EQ(bytes(4096, 600), data);
}

// IBA 9.7.5.1.6 / 9.7.6.1.4: a READ response beyond the expected PSN means
// responses were lost: the requester asks again from the first missing PSN — a READ
// request with that PSN and a RETH for the rest of the transfer.
// Regression (fixed): comp.cc responder_target() calls ack_through(psn - 1) for a PSN inside the
// READ, and ack_through() advances last_ack_psn past the missing response: the READ
// completes successfully with 256 bytes never written (silent data corruption).
TEST_F(CompTest, ReadResponseGapRequestsTheReadAgainFromTheMissingPsn) {
  connect();
  post({read_wr(1, 4096, 768, 0x10000, 0x99)});
  ASSERT_EQ(h.take_sent().size(), 1u);
  auto data = pattern(768, 9);
  auto part = [&](uint32_t off, uint32_t len) {
    return std::vector<uint8_t>(data.begin() + off, data.begin() + off + len);
  };
  auto sent = exchange({read_resp(op::kReadRespFirst, S, part(0, 256), 1),
                        read_resp(op::kReadRespLast, S + 2, part(512, 256), 1)});
  auto early = wcs();
  EXPECT_TRUE(early.empty()) << "the READ completed without its MIDDLE response: "
                             << describe(early);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S + 1, 0));
  EXPECT_TRUE(sent[0].va == 0x10000 + 256 && sent[0].rkey == 0x99 && sent[0].dma_len == 512)
      << sent[0].describe();
  EXPECT_TRUE(wcs().empty());

  // The responder answers the new request from its PSN: FIRST at S+1, LAST at S+2.
  EXPECT_TRUE(exchange({read_resp(op::kReadRespFirst, S + 1, part(256, 256), 1),
                        read_resp(op::kReadRespLast, S + 2, part(512, 256), 1)})
                  .empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::rdma_read);
  EXPECT_EQ(bytes(4096, 768), data);
}

// IBA 9.7.5.1.3 (implied NAK): an ACK for a PSN beyond a READ whose responses did not
// arrive tells the requester they were lost: the READ is requested again (go-back-N from
// it) and completes only with its own response, before the later SEND.
TEST_F(CompTest, AckBeyondAnIncompleteReadIsAnImpliedNak) {
  connect();
  post({read_wr(1, 0, 16, 0x10000), wr(2, WrOpcode::send, 1024, 8)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  auto sent = exchange(ack(S + 1, 2));
  ASSERT_GE(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_TRUE(sent[0].va == 0x10000 && sent[0].dma_len == 16) << sent[0].describe();
  for (size_t i = 1; i < sent.size(); i++)
    EXPECT_TRUE(IsPacket(sent[i], op::kRc | op::kSendOnly, S + 1, 8));
  EXPECT_TRUE(wcs().empty()) << "the SEND completed before the READ";

  exchange({read_resp(op::kReadRespOnly, S, pattern(16, 3), 2), ack(S + 1, 2)});
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::rdma_read);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::send);
  EXPECT_EQ(bytes(0, 16), pattern(16, 3));
}

// IBA 9.7.5.1.7: an ATOMIC ACKNOWLEDGE completes the atomic and delivers the original value
// to its local buffer.
TEST_F(CompTest, AtomicAckDeliversTheOriginalValue) {
  connect();
  post({atomic_wr(1, WrOpcode::atomic_fetch_and_add, 256, 0x30000, 1),
        atomic_wr(2, WrOpcode::atomic_cmp_and_swp, 264, 0x30000, 5, 6)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  EXPECT_TRUE(
      exchange({atomic_ack(S, 0x1122334455667788ull, 1), atomic_ack(S + 1, 0x99ull, 2)}).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::fetch_add);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::comp_swap);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(buf + 256), 0x1122334455667788ull);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(buf + 264), 0x99ull);
}

// IBA 9.7.5.1.6 (response length): a READ response whose payload does not fit the
// PMTU segmentation of the READ is a bad response: BAD_RESP_ERR, QP to ERR.
TEST_F(CompTest, ReadResponseOfTheWrongLengthIsBadResponse) {
  connect();
  post({read_wr(1, 0, 600, 0x1000), wr(2, WrOpcode::send, 1024, 4)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  EXPECT_TRUE(exchange(read_resp(op::kReadRespFirst, S, pattern(100, 1), 1)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::bad_resp_err, WcOpcode::rdma_read);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
}

// ---------------------------------------------------------------- completions

// IBA 10.8.3 / 11.4.1: an unsignaled WR completes silently, but an error completion is
// always reported, signaled or not (and flushed WRs too).
TEST_F(CompTest, UnsignaledWrsCompleteSilentlyButErrorsAreAlwaysReported) {
  connect();
  post({wr(1, WrOpcode::send, 0, 4, false), wr(2, WrOpcode::send, 0, 4, false),
        wr(3, WrOpcode::send, 0, 4, true)});
  ASSERT_EQ(h.take_sent().size(), 3u);
  EXPECT_TRUE(exchange(ack(S + 2, 3)).empty());
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 3, WcStatus::success, WcOpcode::send);

  post({wr(4, WrOpcode::send, 0, 4, false), wr(5, WrOpcode::send, 0, 4, false)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  EXPECT_TRUE(exchange(nak(NakCode::remote_access_error, S + 3, 3)).empty());
  w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 4, WcStatus::rem_access_err, WcOpcode::send);
  expect_wc(w[1], 5, WcStatus::wr_flush_err, WcOpcode::send);
}

// IBA 10.3.1 / 10.8.3.1: moving a QP to ERR flushes its outstanding WRs in order.
TEST_F(CompTest, ModifyToErrFlushesOutstandingWrsInOrder) {
  connect();
  post({wr(1, WrOpcode::send, 0, 4), read_wr(2, 64, 16, 0x1000)});
  post_recv(3, 256, 64);
  ASSERT_EQ(h.take_sent().size(), 2u);
  QpAttr a;
  a.qp_state = QpState::err;
  ASSERT_EQ(qp.modify(a, qp_attr_mask::state), 0);
  h.poll();
  auto w = wcs();
  ASSERT_EQ(w.size(), 3u) << describe(w);
  expect_wc(w[0], 1, WcStatus::wr_flush_err, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::rdma_read);
  expect_wc(w[2], 3, WcStatus::wr_flush_err, WcOpcode::recv);
  EXPECT_TRUE(exchange(ack(S + 1, 1)).empty());  // late responses change nothing
  EXPECT_TRUE(wcs().empty());
}

// IBA 10.3.1 / 10.8.3.1: WRs posted to a QP in ERR are completed with
// WR_FLUSH_ERR, in order, and nothing is sent; receives too.
TEST_F(CompTest, PostingInErrIsFlushedInOrder) {
  connect();
  QpAttr a;
  a.qp_state = QpState::err;
  ASSERT_EQ(qp.modify(a, qp_attr_mask::state), 0);
  h.poll();
  post(
      {wr(1, WrOpcode::send, 0, 4), wr(2, WrOpcode::send, 0, 4, false), write_wr(3, 0, 8, 0x1000)});
  post_recv(4, 0, 64);
  h.poll();
  auto w = wcs();
  ASSERT_EQ(w.size(), 4u) << describe(w);
  expect_wc(w[0], 1, WcStatus::wr_flush_err, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  expect_wc(w[2], 3, WcStatus::wr_flush_err, WcOpcode::send);
  expect_wc(w[3], 4, WcStatus::wr_flush_err, WcOpcode::recv);
  EXPECT_TRUE(h.take_sent().empty());
}


// ---------------------------------------------------------------- sequence NAKs and retry_cnt

// IBA 9.7.5.2.2 / 9.7.6.1.4 (a NAK PSN sequence error makes the requester resend from the
// NAKed PSN); comp.cc comp_rx charges each one to retry_cnt, like a timeout (rxe does the
// same: rxe_comp.c COMPST_ERROR_RETRY decrements comp.retry_cnt). retry_cnt sequence NAKs for
// the same PSN without progress are each answered by a go-back-N resend; the next one
// completes the oldest WR with RETRY_EXC_ERR, flushes the rest and moves the QP to ERR.
TEST_F(CompTest, PsnSequenceNaksWithoutProgressUseUpRetryCnt) {
  Conn c;
  c.retry_cnt = 2;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  const uint64_t resends = hq().retransmits.load();
  for (uint32_t i = 0; i < 2; i++) {
    auto sent = exchange(nak(NakCode::psn_seq_error, S));
    ASSERT_EQ(sent.size(), 2u) << "sequence NAK " << i + 1 << ": " << describe(sent);
    EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 10));
    EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kSendOnly, S + 1, 10));
    EXPECT_TRUE(wcs().empty());
    EXPECT_EQ(qp.state(), QpState::rts);
  }
  auto sent = exchange(nak(NakCode::psn_seq_error, S));  // retry_cnt + 1-th
  EXPECT_TRUE(sent.empty()) << describe(sent);
  auto w = wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  expect_wc(w[0], 1, WcStatus::retry_exc_err, WcOpcode::send);
  expect_wc(w[1], 2, WcStatus::wr_flush_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
  EXPECT_EQ(hq().retransmits.load(), resends + 2);
  h.poll(4);
  EXPECT_TRUE(h.take_sent().empty());
}

// comp.cc advance_ack: progress restores the retry_cnt budget. A sequence NAK for S+1
// implicitly acknowledges S (IBA 9.7.5.1.2), so with retry_cnt 1 two sequence NAKs — one for
// S, one for S+1 — are both retried; a second one for S+1 without progress fails.
TEST_F(CompTest, ProgressBetweenPsnSequenceNaksRestoresRetryCnt) {
  Conn c;
  c.retry_cnt = 1;
  connect(c);
  post({wr(1, WrOpcode::send, 0, 10), wr(2, WrOpcode::send, 64, 10)});
  ASSERT_EQ(h.take_sent().size(), 2u);
  auto sent = exchange(nak(NakCode::psn_seq_error, S));
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S, 10));
  EXPECT_TRUE(wcs().empty());

  sent = exchange(nak(NakCode::psn_seq_error, S + 1, 1));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kSendOnly, S + 1, 10));
  auto w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::rts);

  sent = exchange(nak(NakCode::psn_seq_error, S + 1, 1));
  EXPECT_TRUE(sent.empty()) << describe(sent);
  w = wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  expect_wc(w[0], 2, WcStatus::retry_exc_err, WcOpcode::send);
  EXPECT_EQ(qp.state(), QpState::err);
}

// comp.cc comp_rx: a sequence NAK beyond both the acknowledged point and the previous
// sequence NAK is progress (the responder executed everything before it, IBA 9.7.5.1.2), so
// it restores the retry_cnt budget (IBA 9.7.6.1.3) even while the acknowledged point stays
// at a READ whose response was lost. Here the READ's response never comes, and the peer
// reports two gaps one after the other (S+2, then S+3): with retry_cnt 1 both are retried,
// and the READ then completes before the SENDs.
TEST_F(CompTest, SequenceNaksBeyondAnIncompleteReadAreProgressAndRestoreRetryCnt) {
  Conn c;
  c.retry_cnt = 1;
  connect(c);
  post({read_wr(1, 0, 16, 0x10000), wr(2, WrOpcode::send, 1024, 8),
        wr(3, WrOpcode::send, 1032, 8), wr(4, WrOpcode::send, 1040, 8)});
  ASSERT_EQ(h.take_sent().size(), 4u);

  auto sent = exchange(nak(NakCode::psn_seq_error, S + 2, 1));
  ASSERT_GE(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));  // implied NAK: again
  EXPECT_TRUE(wcs().empty());
  EXPECT_EQ(qp.state(), QpState::rts);

  sent = exchange(nak(NakCode::psn_seq_error, S + 3, 2));  // the peer got further
  ASSERT_GE(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_TRUE(wcs().empty()) << describe(wcs());
  EXPECT_EQ(qp.state(), QpState::rts);

  exchange({read_resp(op::kReadRespOnly, S, pattern(16, 4), 1), ack(S + 3, 4)});
  auto w = wcs();
  ASSERT_EQ(w.size(), 4u) << describe(w);
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::rdma_read);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::send);
  expect_wc(w[2], 3, WcStatus::success, WcOpcode::send);
  expect_wc(w[3], 4, WcStatus::success, WcOpcode::send);
  EXPECT_EQ(bytes(0, 16), pattern(16, 4));
}

TEST(CompStepNames, EveryStepIsNamedAsSpelled) {
  using pmd::hca::CompStep;
  EXPECT_STREQ(pmd::hca::name(CompStep::check_state), "check_state");
  EXPECT_STREQ(pmd::hca::name(CompStep::check_ack_psn), "check_ack_psn");
  EXPECT_STREQ(pmd::hca::name(CompStep::seq_nak), "seq_nak");
  EXPECT_STREQ(pmd::hca::name(CompStep::bad_response), "bad_response");
  EXPECT_STREQ(pmd::hca::name(CompStep::done), "done");
}

}  // namespace
}  // namespace dverbs::proto
