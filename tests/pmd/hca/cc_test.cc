// Congestion control on the packet path (lib/pmd/hca/cc.cc), DVERBS_CC on: a request that
// arrives ECN CE-marked is answered with one CNP (opcode 0x81, to the peer QP) per
// interval; a CNP cuts the QP's rate; the requester then paces its packets to that rate.
// The rate arithmetic itself is dcqcn_test's; here the engine's use of it.
//
// The configuration comes from the environment before the harness opens its device:
// line rate 0.1 Mbit/s, so that after one CNP (0.05 Mbit/s) a 256-byte packet occupies the
// link for ~50 ms: "the second packet has not left yet" then holds on any machine.
#include <cstdlib>

#include "harness.h"

namespace {
const int kEnv = setenv("DVERBS_CC", "on,line_mbps=0.1,min_mbps=0.01,cnp_us=1000000", 1);
}

namespace dverbs::proto {
namespace {

class CcTest : public ProtoTest {
 protected:
  static constexpr uint32_t E = 0x000200;  // the expected PSN (Conn::rq_psn)
  static constexpr uint32_t S = 0x000100;  // the first PSN we send (Conn::sq_psn)
  void connect() {
    Conn c;
    make_qp(c);
  }
  static size_t count_op(const std::vector<Frame>& fs, uint8_t opcode) {
    size_t n = 0;
    for (const Frame& f : fs) n += f.opcode == opcode;
    return n;
  }
};

TEST_F(CcTest, CeMarkedRequestGetsOneCnpPerInterval) {
  ASSERT_EQ(kEnv, 0);
  ASSERT_TRUE(h.dev().config().cc.enabled);
  connect();
  post_recv(1, 0, 256);
  post_recv(2, 256, 256);
  Pkt p = pkt(op::kRc | op::kSendOnly, E, pattern(8, 1));
  p.tos = 3;  // CE
  auto sent = exchange(p);
  ASSERT_EQ(count_op(sent, op::kCnp), 1u) << describe(sent);
  for (const Frame& f : sent)
    if (f.opcode == op::kCnp) {
      EXPECT_EQ(f.dest_qp, kPeerQpn);
      EXPECT_EQ(f.payload.size(), pmd::wire::kCnpPayloadLen);
    }
  Pkt q = pkt(op::kRc | op::kSendOnly, E + 1, pattern(8, 2));
  q.tos = 3;
  sent = exchange(q);  // within the interval (1 s): no second CNP, the SEND still executes
  EXPECT_EQ(count_op(sent, op::kCnp), 0u) << describe(sent);
  EXPECT_EQ(hq().ecn_marked.load(), 2u);
  EXPECT_EQ(hq().cnp_sent.load(), 1u);
  auto c = wcs();
  EXPECT_EQ(c.size(), 2u) << "both marked SENDs were delivered";
}

TEST_F(CcTest, UnmarkedRequestGetsNoCnp) {
  connect();
  post_recv(1, 0, 256);
  auto sent = exchange(pkt(op::kRc | op::kSendOnly, E, pattern(8, 1)));
  EXPECT_EQ(count_op(sent, op::kCnp), 0u) << describe(sent);
  EXPECT_EQ(hq().ecn_marked.load(), 0u);
}

TEST_F(CcTest, CnpCutsTheRateAndTheRequesterPaces) {
  connect();
  Pkt cnp;
  cnp.opcode = op::kCnp;
  cnp.dest_qp = qpn();
  cnp.payload.assign(pmd::wire::kCnpPayloadLen, 0);
  auto sent = exchange(cnp);
  EXPECT_TRUE(sent.empty()) << "a CNP is not answered: " << describe(sent);
  EXPECT_EQ(hq().cnp_rcvd.load(), 1u);
  EXPECT_DOUBLE_EQ(hq().cc_rate.rate_mbps(), 0.05);
  // Two one-packet SENDs: the first leaves, the second waits for the pacer (~50 ms at
  // 0.05 Mbit/s for the first one's ~300 bytes).
  fill(0, 512, 4);
  post({wr(1, WrOpcode::send, 0, 256), wr(2, WrOpcode::send, 256, 256)});
  sent = exchange(std::vector<Pkt>{});
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_EQ(sent[0].psn, S);
  // Later it goes, and nothing is lost.
  sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_EQ(sent[0].psn, S + 1);
}

}  // namespace
}  // namespace dverbs::proto
