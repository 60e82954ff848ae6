// IBA 1.5 RDMA ATOMIC WRITE and RDMA FLUSH (lib/pmd/hca/iba15.cc and its hooks in resp.cc,
// req.cc and comp.cc): crafted requests from the fake peer, and the requests our QP sends
// answered by crafted responses. Each test asserts the exact frames, memory and
// completions. The wire layout and the rules are Linux rxe's (rxe_opcode.c, rxe_resp.c):
// both are one packet, answered by a zero-length RDMA READ RESPONSE ONLY.
#include <cstring>
#include <utility>

#include "harness.h"
#include "pmd/hca/engine.h"

namespace dverbs::proto {
namespace {

constexpr uint32_t E = 0x000200;  // the responder's first expected PSN (Conn::rq_psn)
constexpr uint32_t S = 0x000100;  // the requester's first PSN (Conn::sq_psn)

class Iba15Test : public ProtoTest {
 protected:
  Pkt atomic_write(uint32_t psn, uint32_t off, uint64_t value, uint32_t dma_len = 8) {
    std::vector<uint8_t> v(8);
    std::memcpy(v.data(), &value, 8);
    Pkt p = pkt(op::kRc | op::kAtomicWrite, psn, v);
    p.ack_req = true;
    p.va = addr(off);
    p.rkey = mr.rkey();
    p.dma_len = dma_len;
    return p;
  }
  Pkt flush(uint32_t psn, uint32_t off, uint32_t len, uint8_t type, uint8_t level, uint32_t rkey) {
    Pkt p = pkt(op::kRc | op::kFlush, psn);
    p.ack_req = true;
    p.va = addr(off);
    p.rkey = rkey;
    p.dma_len = len;
    p.flush_type = type;
    p.flush_level = level;
    return p;
  }
  uint64_t& word(uint32_t off) { return *reinterpret_cast<uint64_t*>(buf + off); }
  // A region over buf that grants the flush rights too.
  Mr flush_mr(uint32_t extra = access::flush_global) {
    auto m = Mr::reg(h.pd(), buf, kBufBytes, kAllRemote | extra);
    EXPECT_TRUE(m) << std::strerror(m.error());
    return m ? m.take() : Mr();
  }
  Conn flush_conn() {
    Conn c;
    c.access = kAllRemote | access::flush_global | access::flush_persistent;
    return c;
  }
};

// ---------------------------------------------------------------- responder

// The 8 bytes land at the word, nothing around it changes, and the answer is a READ
// RESPONSE ONLY without payload carrying an ACK.
TEST_F(Iba15Test, AtomicWriteStoresEightBytesAndIsAnsweredByEmptyReadResponse) {
  make_qp({});
  fill(0, 64, 3);
  const auto before = bytes(0, 64);
  auto sent = exchange(atomic_write(E, 24, 0x0123456789abcdefull));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 0));
  EXPECT_TRUE(sent[0].has_aeth && sent[0].aeth_type() == AethType::ack) << sent[0].describe();
  EXPECT_EQ(word(24), 0x0123456789abcdefull);
  const auto after = bytes(0, 64);
  for (uint32_t i = 0; i < 64; i++)
    if (i < 24 || i >= 32) {
      EXPECT_EQ(after[i], before[i]) << "byte " << i;
    }
  // The next request is expected right after it (one PSN).
  sent = exchange(atomic_write(E + 1, 32, 7));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E + 1, 0));
  EXPECT_EQ(word(32), 7u);
}

// IBA 9.7.4.1.5.2: a duplicate is answered again from its responder resource and never
// executed again: a value written since stays.
TEST_F(Iba15Test, DuplicateAtomicWriteIsAnsweredAgainWithoutReExecuting) {
  make_qp({});
  auto sent = exchange(atomic_write(E, 16, 5));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_EQ(word(16), 5u);
  word(16) = 1000;
  sent = exchange(atomic_write(E, 16, 5));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 0));
  EXPECT_EQ(word(16), 1000u) << "duplicate ATOMIC WRITE re-executed";
  EXPECT_EQ(qp.state(), QpState::rts);
}

TEST_F(Iba15Test, AtomicWriteMisalignedNaksInvalidRequest) {
  make_qp({});
  word(8) = 1;
  word(16) = 2;
  auto sent = exchange(atomic_write(E, 12, ~0ull));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(word(8), 1u);
  EXPECT_EQ(word(16), 2u);
  EXPECT_EQ(qp.state(), QpState::err);
}

TEST_F(Iba15Test, AtomicWriteDmaLengthOtherThanEightNaksInvalidRequest) {
  make_qp({});
  auto sent = exchange(atomic_write(E, 16, 9, 16));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E));
  EXPECT_EQ(word(16), 0u);
}

// As rxe: REMOTE_WRITE, on the QP and on the R_Key (not REMOTE_ATOMIC).
TEST_F(Iba15Test, AtomicWriteWithoutQpRemoteWriteNaksRemoteAccess) {
  Conn c;
  c.access = access::local_write | access::remote_read | access::remote_atomic;
  make_qp(c);
  auto sent = exchange(atomic_write(E, 16, 9));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  EXPECT_EQ(word(16), 0u);
}

TEST_F(Iba15Test, AtomicWriteOutOfBoundsNaksRemoteAccess) {
  make_qp({});
  auto sent = exchange(atomic_write(E, kBufBytes, 9));  // the word after the region
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
}

TEST_F(Iba15Test, GlobalFlushIsAnsweredByEmptyReadResponse) {
  make_qp(flush_conn());
  Mr fm = flush_mr();
  for (uint8_t level : {flush::level_range, flush::level_mr}) {
    const uint32_t psn = E + level;
    auto sent = exchange(flush(psn, 0, 4096, flush::type_global, level, fm.rkey()));
    ASSERT_EQ(sent.size(), 1u) << describe(sent);
    EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, psn, 0)) << int(level);
  }
  // A duplicate restarts the responses at its resource, the newer one's too (as for a
  // duplicate READ or atomic: go-back-N resends what follows it as well).
  auto sent = exchange(flush(E, 0, 4096, flush::type_global, flush::level_range, fm.rkey()));
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRespOnly, E, 0));
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kReadRespOnly, E + 1, 0));
  EXPECT_EQ(qp.state(), QpState::rts);
  qp.destroy();
  fm.destroy();
}

TEST_F(Iba15Test, FlushOfRegionWithoutFlushRightNaksRemoteAccess) {
  make_qp(flush_conn());
  auto sent = exchange(flush(E, 0, 64, flush::type_global, flush::level_mr, mr.rkey()));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
}

TEST_F(Iba15Test, FlushWithoutQpFlushRightNaksRemoteAccess) {
  make_qp({});
  Mr fm = flush_mr();
  auto sent = exchange(flush(E, 0, 64, flush::type_global, flush::level_range, fm.rkey()));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  qp.destroy();
  fm.destroy();
}

// No region is persistent: a persistent FLUSH finds none that grants it.
TEST_F(Iba15Test, PersistentFlushNaksRemoteAccess) {
  make_qp(flush_conn());
  Mr fm = flush_mr();
  auto sent = exchange(flush(E, 0, 64, flush::type_persistent, flush::level_range, fm.rkey()));
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, E));
  qp.destroy();
  fm.destroy();
}

TEST_F(Iba15Test, FlushWithUnknownTypeOrLevelNaksInvalidRequest) {
  for (auto [type, level] : {std::pair<uint8_t, uint8_t>{0, 0}, {4, 0}, {1, 2}}) {
    make_qp(flush_conn());
    auto sent = exchange(flush(E, 0, 64, type, level, mr.rkey()));
    ASSERT_EQ(sent.size(), 1u) << describe(sent);
    EXPECT_TRUE(IsNak(sent[0], NakCode::invalid_request, E)) << int(type) << "/" << int(level);
    qp.destroy();
  }
}

TEST(Iba15Wire, RegistrationRefusesPersistentFlush) {
  Harness& h = Harness::get();
  ASSERT_TRUE(h.ready()) << h.error();
  std::vector<uint64_t> b(512);
  auto m = Mr::reg(h.pd(), b.data(), 4096, access::local_write | access::flush_persistent);
  EXPECT_FALSE(m);
  EXPECT_EQ(m.error(), EINVAL);
}

// ---------------------------------------------------------------- requester and completer

// ATOMIC WRITE goes out as BTH RETH(8) + 8 bytes, FLUSH as BTH FETH RETH; each completes on
// its empty READ RESPONSE ONLY with its own completion opcode.
TEST_F(Iba15Test, RequesterSendsBothAndCompletesOnTheirResponses) {
  make_qp({});
  word(0) = 0x1122334455667788ull;
  SendWr aw = wr(1, WrOpcode::atomic_write, 0, 8);
  aw.wr.rdma.remote_addr = 0x10000;
  aw.wr.rdma.rkey = 0x4321;
  SendWr fl = wr(2, WrOpcode::flush, 0, 0);
  fl.num_sge = 0;
  fl.wr.flush.remote_addr = 0x20000;
  fl.wr.flush.rkey = 0x4322;
  fl.wr.flush.type = flush::type_global;
  fl.wr.flush.level = flush::level_range;
  fl.wr.flush.length = 4096;
  post({aw, fl});
  auto sent = wait_frames(2);
  ASSERT_EQ(sent.size(), 2u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kAtomicWrite, S, 8));
  EXPECT_TRUE(sent[0].has_reth && sent[0].va == 0x10000 && sent[0].rkey == 0x4321 &&
              sent[0].dma_len == 8)
      << sent[0].describe();
  uint64_t v;
  std::memcpy(&v, sent[0].payload.data(), 8);
  EXPECT_EQ(v, 0x1122334455667788ull);
  EXPECT_TRUE(IsPacket(sent[1], op::kRc | op::kFlush, S + 1, 0));
  EXPECT_TRUE(sent[1].has_reth && sent[1].va == 0x20000 && sent[1].dma_len == 4096)
      << sent[1].describe();
  h.poll();
  EXPECT_EQ(wc_pending(), 0u);  // they wait for their responses
  h.inject({read_resp(op::kRc | op::kReadRespOnly, S, {}, 1),
            read_resp(op::kRc | op::kReadRespOnly, S + 1, {}, 2)});
  ASSERT_EQ(wait_wcs(2), 2u);
  auto w = wcs();
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::atomic_write);
  expect_wc(w[1], 2, WcStatus::success, WcOpcode::flush);
}

// IBA 9.7.6.1.3: a lost response is recovered by the retransmission timer; the request goes
// out again identical (same PSN, same 8 bytes, gathered again), and the answer to the
// duplicate completes it once.
TEST_F(Iba15Test, LostResponseResendsTheSameAtomicWrite) {
  Conn c;
  c.timeout = 1;  // 8.192 µs
  make_qp(c);
  word(0) = 0xa5a5a5a55a5a5a5aull;
  SendWr aw = wr(1, WrOpcode::atomic_write, 0, 8);
  aw.wr.rdma.remote_addr = 0x10000;
  aw.wr.rdma.rkey = 0x4321;
  post({aw});
  auto first = wait_frames(1);
  ASSERT_EQ(first.size(), 1u) << describe(first);
  auto again = wait_frames(1);
  ASSERT_GE(again.size(), 1u) << describe(again);
  EXPECT_TRUE(IsPacket(again[0], op::kRc | op::kAtomicWrite, S, 8));
  EXPECT_EQ(again[0].payload, first[0].payload);
  h.inject(read_resp(op::kRc | op::kReadRespOnly, S, {}, 1));
  ASSERT_EQ(wait_wcs(1), 1u);
  expect_wc(wcs()[0], 1, WcStatus::success, WcOpcode::atomic_write);
  EXPECT_EQ(qp.state(), QpState::rts);
}

// IBA 9.7.5.1.3: an ACK beyond a FLUSH whose response did not come implies a NAK: the FLUSH
// is sent again and completes only on its own response.
TEST_F(Iba15Test, AckBeyondFlushIsAnImpliedNak) {
  make_qp({});
  SendWr fl = wr(2, WrOpcode::flush, 0, 0);
  fl.num_sge = 0;
  fl.wr.flush.remote_addr = 0x20000;
  fl.wr.flush.rkey = 0x4322;
  fl.wr.flush.type = flush::type_global;
  fl.wr.flush.level = flush::level_mr;
  post({fl, wr(3, WrOpcode::send, 0, 16)});
  ASSERT_EQ(wait_frames(2).size(), 2u);
  auto sent = exchange(ack(S + 1, 2));
  ASSERT_GE(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kFlush, S, 0));
  EXPECT_EQ(wc_pending(), 0u);
  h.inject({read_resp(op::kRc | op::kReadRespOnly, S, {}, 1), ack(S + 1, 2)});
  ASSERT_EQ(wait_wcs(2), 2u);
  auto w = wcs();
  expect_wc(w[0], 2, WcStatus::success, WcOpcode::flush);
  expect_wc(w[1], 3, WcStatus::success, WcOpcode::send);
}

// A READ RESPONSE with payload is no answer to an ATOMIC WRITE: bad response.
TEST_F(Iba15Test, ResponseWithPayloadToAtomicWriteIsBadResponse) {
  make_qp({});
  SendWr aw = wr(1, WrOpcode::atomic_write, 0, 8);
  aw.wr.rdma.remote_addr = 0x10000;
  aw.wr.rdma.rkey = 0x4321;
  post({aw});
  ASSERT_EQ(wait_frames(1).size(), 1u);
  h.inject(read_resp(op::kRc | op::kReadRespOnly, S, std::vector<uint8_t>(8, 1), 1));
  ASSERT_EQ(wait_wcs(1), 1u);
  expect_wc(wcs()[0], 1, WcStatus::bad_resp_err, WcOpcode::atomic_write);
}

}  // namespace
}  // namespace dverbs::proto
