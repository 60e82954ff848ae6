// Addressing and receive filtering (lib/pmd/hca/engine.cc: build_packet, rx_one).
//
// Every frame a QP sends is addressed through the neighbour table, whatever its opcode or
// engine: a READ or an atomic as the QP's first packet, an ACK, a response. A peer that
// filters on its MAC — every kernel and NIC — drops anything else. And the HCA receives
// as a NIC does: frames for another MAC, a multicast group nobody joined, or another IPv4
// address never reach the transport, and are counted.
#include "harness.h"
#include "pmd/net/neigh.h"

namespace dverbs::proto {
namespace {

constexpr uint32_t S = 0x000100;  // the requester's first PSN (Conn::sq_psn)
constexpr uint32_t R = 0x000200;  // the responder's first expected PSN (Conn::rq_psn)

class EngineTest : public ProtoTest {
 protected:
  // An address on the link that no ARP has told the HCA about yet. The device lives for
  // the whole process, so each test takes its own.
  uint32_t unknown_peer(uint8_t host) const { return (h.our_ip() & ~0xffu) | host; }
  static std::vector<uint8_t> mac_vec(const uint8_t* m) { return {m, m + 6}; }
};

// IBA 9.7.x with RoCEv2 (Annex A17): a READ request is the QP's first packet. It must go
// to the peer's MAC as ARP gave it, like a SEND would — not to 00:00:00:00:00:00, which the
// peer's kernel drops as "otherhost" before its RoCE stack sees it.
TEST_F(EngineTest, ReadAsTheFirstPacketGoesToTheNeighboursMac) {
  make_qp({});
  post({read_wr(1, 0, 100, 0x10000)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(h.peer_mac()));
  EXPECT_EQ(mac_vec(sent[0].src_mac), mac_vec(h.our_mac()));
}

TEST_F(EngineTest, AtomicAsTheFirstPacketGoesToTheNeighboursMac) {
  make_qp({});
  post({atomic_wr(1, WrOpcode::atomic_fetch_and_add, 0, 0x10000, 5)});
  auto sent = h.take_sent();
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kFetchAdd, S, 0));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(h.peer_mac()));
}

// The responder answers the peer's address as ARP knows it, not the source MAC of the
// request (which a router or a bond may have rewritten): a NIC takes the ACK's MAC from
// the QP's address vector too.
TEST_F(EngineTest, AckGoesToTheNeighboursMacNotTheRequestsSource) {
  make_qp({});
  post_recv(1, 0, 256);
  static constexpr uint8_t kOther[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
  Pkt p = pkt(op::kRc | op::kSendOnly, R, pattern(64, 1));
  p.ack_req = true;
  p.src_mac = kOther;
  auto sent = exchange(p);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], R, 1));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(h.peer_mac()));
}

// Address resolution never blocks the poster: a READ to an unknown address waits in the QP
// while ARP asks, and leaves with the answered MAC.
TEST_F(EngineTest, ReadToAnUnknownNeighbourWaitsForArpThenLeaves) {
  Conn c;
  c.peer_ip = unknown_peer(0x51);
  make_qp(c);
  const uint64_t arp_before = h.arp_seen();
  post({read_wr(1, 0, 100, 0x10000)});
  h.poll(4);
  EXPECT_EQ(h.sent_pending(), 0u) << "a request left before its neighbour answered";
  EXPECT_GT(h.arp_seen(), arp_before) << "no ARP request went out";
  static constexpr uint8_t kMac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x51};
  h.inject_arp(c.peer_ip, kMac, true);
  auto sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsPacket(sent[0], op::kRc | op::kReadRequest, S, 0));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(kMac));
  EXPECT_EQ(sent[0].dst_ip, c.peer_ip);
}

// An ACK owed to a peer whose MAC is not known yet is held, not dropped, and leaves as soon
// as ARP answers (a dropped ACK would cost the requester a retransmission timeout).
TEST_F(EngineTest, AckToAnUnknownNeighbourIsHeldUntilArpAnswers) {
  Conn c;
  c.peer_ip = unknown_peer(0x52);
  make_qp(c);
  post_recv(1, 0, 256);
  Pkt p = pkt(op::kRc | op::kSendOnly, R, pattern(64, 2));
  p.ack_req = true;
  p.src_ip = c.peer_ip;
  static constexpr uint8_t kMac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x52};
  p.src_mac = kMac;
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  ASSERT_EQ(wait_wcs(1), 1u);
  auto w = wcs();
  expect_wc(w[0], 1, WcStatus::success, WcOpcode::recv);
  h.inject_arp(c.peer_ip, kMac, true);
  sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsAck(sent[0], R, 1));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(kMac));
}

// A fatal NAK owed to a peer whose MAC is not known yet is held like an ACK: it leaves
// when ARP answers, and only then does the QP enter ERR (the peer learns why its request
// failed instead of retrying into a QP that no longer answers). Meanwhile the QP takes no
// more requests.
TEST_F(EngineTest, FatalNakToAnUnknownNeighbourIsHeldUntilArpAnswers) {
  Conn c;
  c.peer_ip = unknown_peer(0x55);
  make_qp(c);
  static constexpr uint8_t kMac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x55};
  Pkt p = pkt(op::kRc | op::kWriteOnly, R, pattern(16, 5));
  p.ack_req = true;
  p.va = addr(0);
  p.rkey = mr.rkey() + 1;  // no such key
  p.dma_len = 16;
  p.src_ip = c.peer_ip;
  p.src_mac = kMac;
  auto sent = exchange(p);
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_NE(qp.state(), QpState::err) << "ERR before the NAK could leave";
  h.inject_arp(c.peer_ip, kMac, true);
  sent = wait_frames(1);
  ASSERT_EQ(sent.size(), 1u) << describe(sent);
  EXPECT_TRUE(IsNak(sent[0], NakCode::remote_access_error, R));
  EXPECT_EQ(mac_vec(sent[0].dst_mac), mac_vec(kMac));
  EXPECT_EQ(qp.state(), QpState::err);
}

// IBA 9.7.6.1.3: the retransmission timer runs from the first transmission attempt, so a
// neighbour that never answers ARP ends in RETRY_EXC_ERR after retry_cnt retries, never
// in a QP that waits forever.
TEST_F(EngineTest, NeighbourThatNeverAnswersEndsInRetryExceeded) {
  Conn c;
  c.peer_ip = unknown_peer(0x53);
  c.timeout = 1;  // 8.192 us
  c.retry_cnt = 1;
  make_qp(c);
  post({wr(1, WrOpcode::send, 0, 64)});
  ASSERT_EQ(wait_wcs(1), 1u) << "no completion: the QP waits for ARP forever";
  auto w = wcs();
  expect_wc(w[0], 1, WcStatus::retry_exc_err, WcOpcode::send);
  EXPECT_EQ(h.sent_pending(), 0u);
}

// ---------------------------------------------------------------- receive filtering

struct FilterCase {
  const char* what;
  Pkt (*mutate)(Pkt);
};

void PrintTo(const FilterCase& c, std::ostream* os) { *os << c.what; }

class RxFilterTest : public EngineTest, public ::testing::WithParamInterface<FilterCase> {};

constexpr uint8_t kStranger[6] = {0x02, 0x99, 0x99, 0x99, 0x99, 0x99};
constexpr uint8_t kMulticast[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};

// A SEND that a NIC would not deliver: it must not complete a receive, draw an ACK or
// count as received, and it is counted as not for us.
TEST_P(RxFilterTest, FrameANicWouldNotDeliverIsDroppedAndCounted) {
  make_qp({});
  post_recv(1, 0, 256);
  Pkt p = pkt(op::kRc | op::kSendOnly, R, pattern(64, 3));
  p.ack_req = true;
  p = GetParam().mutate(p);
  const Counters before = h.counters();
  auto sent = exchange(p);
  const Counters after = h.counters();
  EXPECT_TRUE(sent.empty()) << describe(sent);
  EXPECT_EQ(wc_pending(), 0u);
  EXPECT_EQ(after.rx_not_for_us - before.rx_not_for_us, 1u);
  EXPECT_EQ(after.rx_packets, before.rx_packets);
  // The same SEND addressed to us is then accepted: nothing was consumed by the drop.
  sent = exchange(pkt(op::kRc | op::kSendOnly, R, pattern(64, 3)));
  ASSERT_EQ(wait_wcs(1), 1u);
  expect_wc(wcs()[0], 1, WcStatus::success, WcOpcode::recv);
}

INSTANTIATE_TEST_SUITE_P(
    Drops, RxFilterTest,
    ::testing::Values(FilterCase{"AnotherStationsMac",
                                 [](Pkt p) {
                                   p.dst_mac = kStranger;
                                   return p;
                                 }},
                      FilterCase{"MulticastNobodyJoined",
                                 [](Pkt p) {
                                   p.dst_mac = kMulticast;
                                   return p;
                                 }},
                      FilterCase{"AnotherIpv4Address",
                                 [](Pkt p) {
                                   p.dst_ip = 0xc0000201;  // 192.0.2.1
                                   return p;
                                 }}),
    [](const ::testing::TestParamInfo<FilterCase>& i) { return std::string(i.param.what); });

// RoCEv2 is UDP destination port 4791 (Annex A17): any other port is not RoCE, whatever
// follows, and never reaches a QP.
TEST_F(EngineTest, UdpPortOtherThan4791IsNotRoce) {
  make_qp({});
  post_recv(1, 0, 256);
  Pkt p = pkt(op::kRc | op::kSendOnly, R, pattern(64, 4));
  std::vector<uint8_t> f = h.build(p);
  f[14 + 20 + 2] = 0x12;  // UDP destination port 4791 (0x12b7) -> 0x1234
  f[14 + 20 + 3] = 0x34;
  const Counters before = h.counters();
  h.inject({f});
  h.poll();
  const Counters after = h.counters();
  EXPECT_EQ(after.rx_non_roce - before.rx_non_roce, 1u);
  EXPECT_EQ(after.rx_packets, before.rx_packets);
  EXPECT_EQ(h.take_sent().size(), 0u);
  EXPECT_EQ(wc_pending(), 0u);
}

// Broadcast is delivered (ARP): a peer's request for our address is answered and learnt.
TEST_F(EngineTest, BroadcastArpIsDeliveredAndLearnt) {
  const uint32_t ip = unknown_peer(0x54);
  static constexpr uint8_t kMac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x54};
  const uint64_t arp_before = h.arp_seen();
  h.inject_arp(ip, kMac, false);
  h.poll(2);
  h.take_sent();
  EXPECT_GT(h.arp_seen(), arp_before) << "no ARP reply";
  EXPECT_EQ(h.dev().neigh().state(ip), pmd::net::NeighTable::State::kReachable);
}

}  // namespace
}  // namespace dverbs::proto
