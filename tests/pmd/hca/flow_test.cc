// Raw packet QPs and flow steering (lib/pmd/hca/raw.cc, flow.cc): which received frames a
// rule takes, in which order rules are tried, and that RoCE frames never reach a raw QP,
// whatever the rules ask for.
#include <arpa/inet.h>
#include <rte_mbuf.h>

#include <cstring>

#include "harness.h"
#include "midlayer/core.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/flow.h"

namespace dverbs::proto {
namespace {

using pmd::hca::flow_match;
using pmd::hca::flow_parse;
using pmd::hca::FrameFields;

constexpr uint32_t R = 0x000200;  // the responder's first expected PSN (Conn::rq_psn)

// An Ethernet/IPv4/UDP (proto 17) or TCP (6) frame; `vlan` > 0 adds an 802.1Q tag.
std::vector<uint8_t> frame(const uint8_t* dst_mac, uint32_t src_ip, uint32_t dst_ip, uint16_t sport,
                           uint16_t dport, uint8_t proto = 17, uint16_t vlan = 0,
                           uint8_t tag = 0xab, size_t payload = 32) {
  std::vector<uint8_t> f;
  f.insert(f.end(), dst_mac, dst_mac + 6);
  const uint8_t src[6] = {0x02, 0x00, 0x00, 0x77, 0x66, 0x55};
  f.insert(f.end(), src, src + 6);
  if (vlan) f.insert(f.end(), {0x81, 0x00, uint8_t(vlan >> 8), uint8_t(vlan)});
  f.insert(f.end(), {0x08, 0x00});
  const size_t l4 = proto == 6 ? 20 : 8;
  const uint16_t total = uint16_t(20 + l4 + payload);
  f.insert(f.end(), {0x45, 0, uint8_t(total >> 8), uint8_t(total), 0, 0, 0, 0, 64, proto, 0, 0});
  for (uint32_t ip : {src_ip, dst_ip})
    f.insert(f.end(), {uint8_t(ip >> 24), uint8_t(ip >> 16), uint8_t(ip >> 8), uint8_t(ip)});
  // A valid IPv4 header checksum (the parser drops IPv4 frames without one, steered or not).
  uint8_t* iph = f.data() + f.size() - 20;
  pmd::wire::store_be16(iph + 10, pmd::wire::ipv4_checksum(iph, 20));
  std::vector<uint8_t> h(l4, 0);
  h[0] = uint8_t(sport >> 8);
  h[1] = uint8_t(sport);
  h[2] = uint8_t(dport >> 8);
  h[3] = uint8_t(dport);
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), payload, tag);
  return f;
}

const uint8_t kMac[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};

FrameFields parse(const std::vector<uint8_t>& f) {
  FrameFields ff;
  EXPECT_TRUE(flow_parse(f.data(), uint32_t(f.size()), &ff));
  return ff;
}

FlowRule udp_port(uint16_t dport, uint16_t priority = 0) {
  FlowRule r;
  r.priority = priority;
  r.l4_proto = 17;
  r.dst_port = htons(dport);
  r.dst_port_mask = 0xffff;
  return r;
}

// ---------------------------------------------------------------- matching (no device)
TEST(FlowMatch, MasksSelectTheBitsCompared) {
  const auto f = parse(frame(kMac, 0x0a000105, 0x0a000201, 1000, 5000));
  FlowRule r;
  r.has_eth = 1;
  std::memcpy(r.dst_mac, kMac, 6);
  r.dst_mac[5] = 0x99;  // differs only in the last byte...
  std::memset(r.dst_mac_mask, 0xff, 5);
  EXPECT_TRUE(flow_match(r, f));  // ...which the mask leaves out
  r.dst_mac_mask[5] = 0xff;
  EXPECT_FALSE(flow_match(r, f));

  FlowRule ip;
  ip.has_ipv4 = 1;
  ip.dst_ip = htonl(0x0a000200);
  ip.dst_ip_mask = htonl(0xffffff00);  // 10.0.2.0/24
  EXPECT_TRUE(flow_match(ip, f));
  ip.src_ip = htonl(0x0a000100);
  ip.src_ip_mask = htonl(0xffffff00);
  EXPECT_TRUE(flow_match(ip, f));
  ip.src_ip_mask = htonl(0xffffffff);  // 10.0.1.0 exactly: no
  EXPECT_FALSE(flow_match(ip, f));

  EXPECT_TRUE(flow_match(udp_port(5000), f));
  EXPECT_FALSE(flow_match(udp_port(5001), f));
  FlowRule sport = udp_port(5000);
  sport.src_port = htons(1000 & 0xff00);
  sport.src_port_mask = htons(0xff00);
  EXPECT_TRUE(flow_match(sport, f));
  EXPECT_TRUE(flow_match(FlowRule{}, f));  // no spec: every frame
}

TEST(FlowMatch, ProtocolEthertypeAndVlanMustAgree) {
  const auto udp = parse(frame(kMac, 1, 2, 1, 80, 17));
  const auto tcp = parse(frame(kMac, 1, 2, 1, 80, 6));
  FlowRule t = udp_port(80);
  t.l4_proto = 6;
  EXPECT_TRUE(flow_match(t, tcp));
  EXPECT_FALSE(flow_match(t, udp));
  EXPECT_TRUE(flow_match(udp_port(80), udp));
  EXPECT_FALSE(flow_match(udp_port(80), tcp));

  // A VLAN spec needs a tagged frame with that VLAN; the ethertype is the one after the tag.
  const auto tagged = parse(frame(kMac, 1, 2, 1, 80, 17, 0x0123));
  FlowRule v;
  v.has_eth = 1;
  v.vlan_tag = htons(0x0123);
  v.vlan_tag_mask = htons(0x0fff);
  v.ether_type = htons(0x0800);
  v.ether_type_mask = 0xffff;
  EXPECT_TRUE(flow_match(v, tagged));
  EXPECT_FALSE(flow_match(v, udp));
  v.vlan_tag = htons(0x0124);
  EXPECT_FALSE(flow_match(v, tagged));
  EXPECT_TRUE(flow_match(udp_port(80), tagged));  // an L4 rule sees through the tag

  // Not IPv4 (ARP's ethertype): an IPv4 or UDP rule never matches.
  auto arp = frame(kMac, 1, 2, 1, 80);
  arp[12] = 0x08;
  arp[13] = 0x06;
  FlowRule anyip;
  anyip.has_ipv4 = 1;
  EXPECT_FALSE(flow_match(anyip, parse(arp)));
  EXPECT_FALSE(flow_match(udp_port(80), parse(arp)));
}

TEST(FlowMatch, FragmentsAndShortFrames) {
  auto f = frame(kMac, 1, 2, 1, 80);
  f[14 + 6] = 0x00;
  f[14 + 7] = 0x10;  // a later fragment: no UDP header in it
  EXPECT_FALSE(flow_match(udp_port(80), parse(f)));
  FlowRule anyip;
  anyip.has_ipv4 = 1;
  EXPECT_TRUE(flow_match(anyip, parse(f)));
  // Cut inside the UDP ports: IPv4 still, ports unknown.
  auto cut = frame(kMac, 1, 2, 1, 80);
  cut.resize(14 + 20 + 2);
  EXPECT_FALSE(flow_match(udp_port(80), parse(cut)));
  FrameFields ff;
  EXPECT_FALSE(flow_parse(cut.data(), 13, &ff));  // shorter than an Ethernet header
}

// ---------------------------------------------------------------- through the engine
class FlowTest : public ProtoTest {
 protected:
  Cq rcq;
  Qp raw1, raw2;
  std::vector<uint32_t> ids1, ids2;

  void TearDown() override {
    for (uint32_t id : ids1) mid::destroy_flow(raw1.raw(), id);
    for (uint32_t id : ids2) mid::destroy_flow(raw2.raw(), id);
    raw1 = Qp();
    raw2 = Qp();
    rcq = Cq();
    ProtoTest::TearDown();
  }
  Qp make_raw(const Cq& c) {
    namespace m = qp_attr_mask;
    QpInit init;
    init.type = QpType::raw_packet;
    init.cap = {8, 8, 1, 1, 0};
    auto q = Qp::create(h.pd(), c, c, init);
    EXPECT_TRUE(q) << std::strerror(q.error());
    if (!q) return Qp();
    Qp qp2 = q.take();
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    EXPECT_EQ(qp2.modify(a, m::state | m::port), 0);
    a.qp_state = QpState::rtr;
    EXPECT_EQ(qp2.modify(a, m::state), 0);
    a.qp_state = QpState::rts;
    EXPECT_EQ(qp2.modify(a, m::state), 0);
    return qp2;
  }
  void SetUp() override {
    ProtoTest::SetUp();
    auto c = Cq::create(h.ctx(), 256);
    ASSERT_TRUE(c);
    rcq = c.take();
    raw1 = make_raw(rcq);
    raw2 = make_raw(rcq);
  }
  uint32_t add(Qp& q, const FlowRule& r) {
    uint32_t id = 0;
    EXPECT_EQ(mid::create_flow(q.raw(), &r, &id), 0);
    (&q == &raw1 ? ids1 : ids2).push_back(id);
    return id;
  }
  void recv(Qp& q, uint64_t wr_id, uint32_t off, uint32_t len) {
    Sge s{addr(off), len, mr.lkey()};
    RecvWr w{};
    w.wr_id = wr_id;
    w.sg_list = &s;
    w.num_sge = 1;
    RecvWr* bad = nullptr;
    ASSERT_EQ(mid::post_recv(q.raw(), &w, &bad), 0);
  }
  std::vector<Wc> raw_wcs() {
    std::vector<Wc> out;
    Wc wc;
    while (mid::poll_cq(rcq.raw(), 1, &wc) == 1) out.push_back(wc);
    return out;
  }
  std::vector<uint8_t> to_us(uint16_t dport, uint8_t tag = 0xab) {
    return frame(h.our_mac(), h.peer_ip(), h.our_ip(), 999, dport, 17, 0, tag);
  }
  uint64_t counter(std::atomic<uint64_t> pmd::hca::DeviceCounters::*c) {
    return (h.dev().counters().*c).load();
  }
};

// Steered: the whole frame, byte_len its length, on the rule's QP; unmatched: dropped as
// every non-RoCE frame is (rx_non_roce), never on a raw QP.
TEST_F(FlowTest, MatchingFrameIsDeliveredWhole) {
  add(raw1, udp_port(5000));
  recv(raw1, 7, 0, 2048);
  const auto f = to_us(5000, 0x5a);
  const uint64_t non_roce = counter(&pmd::hca::DeviceCounters::rx_non_roce);
  h.inject({to_us(5001), f});
  h.poll();
  auto w = raw_wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  EXPECT_EQ(w[0].wr_id, 7u);
  EXPECT_EQ(w[0].status, WcStatus::success);
  EXPECT_EQ(w[0].opcode, WcOpcode::recv);
  EXPECT_EQ(w[0].byte_len, f.size());
  EXPECT_EQ(w[0].qp_num, raw1.qp_num());
  EXPECT_EQ(bytes(0, uint32_t(f.size())), f);
  EXPECT_EQ(counter(&pmd::hca::DeviceCounters::rx_non_roce) - non_roce, 1u);
}

// Lower priority values first; equal priorities in creation order; a destroyed rule
// steers nothing more.
TEST_F(FlowTest, PriorityOrderAndDestroy) {
  FlowRule all;  // every frame, at priority 3
  all.priority = 3;
  add(raw2, all);
  const uint32_t id = add(raw1, udp_port(6000, 1));
  add(raw2, udp_port(6000, 1));
  for (int i = 0; i < 4; i++) {
    recv(raw1, 10 + i, uint32_t(i) * 2048, 2048);
    recv(raw2, 20 + i, 8192 + uint32_t(i) * 2048, 2048);
  }
  h.inject({to_us(6000, 1), to_us(6001, 2)});
  h.poll();
  auto w = raw_wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  EXPECT_EQ(w[0].qp_num, raw1.qp_num());
  EXPECT_EQ(w[1].qp_num, raw2.qp_num());
  ASSERT_EQ(mid::destroy_flow(raw1.raw(), id), 0);
  ids1.clear();
  EXPECT_EQ(mid::destroy_flow(raw1.raw(), id), EINVAL);  // gone already
  h.inject({to_us(6000, 3)});
  h.poll();
  w = raw_wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  EXPECT_EQ(w[0].qp_num, raw2.qp_num());
}

// RoCE frames never reach the rule table: not one for a QP of ours, not one for a QP that
// does not exist, not one with a bad ICRC, not one for another address, even with a rule
// asking for UDP port 4791 and a catch-all rule.
TEST_F(FlowTest, RoceIsNeverSteered) {
  add(raw1, udp_port(4791, 0));
  add(raw1, FlowRule{});
  for (int i = 0; i < 8; i++) recv(raw1, 30 + i, 16384 + uint32_t(i) * 2048, 2048);
  make_qp({});
  post_recv(1, 0, 256);
  const uint64_t rx0 = counter(&pmd::hca::DeviceCounters::rx_packets);
  Pkt good;
  good.opcode = op::kRc | op::kSendOnly;
  good.dest_qp = qpn();
  good.psn = R;
  good.payload = pattern(64, 3);
  Pkt noqp = good;
  noqp.dest_qp = 0x00fffe;
  Pkt other = good;
  other.dst_ip = 0xc0000201;
  auto bad_icrc = h.build(good);
  bad_icrc.back() ^= 1;
  h.inject({h.build(good), h.build(noqp), h.build(other), bad_icrc});
  h.poll();
  EXPECT_EQ(counter(&pmd::hca::DeviceCounters::rx_packets) - rx0, 1u);  // the RC QP's
  auto got = wcs();
  ASSERT_EQ(got.size(), 1u) << describe(got);
  EXPECT_EQ(got[0].qp_num, qpn());
  EXPECT_TRUE(raw_wcs().empty());
  // The catch-all rule does take a frame that is not RoCE.
  h.inject({to_us(4792)});
  h.poll();
  EXPECT_EQ(raw_wcs().size(), 1u);
}

// No receive posted: the frame is dropped and counted, not kept for a later WQE; a buffer
// too short completes with LOC_LEN_ERR and the QP takes the next frame.
TEST_F(FlowTest, NoWqeDropsAndShortBufferFails) {
  add(raw1, udp_port(7000));
  const uint64_t dropped = counter(&pmd::hca::DeviceCounters::rx_raw_dropped);
  h.inject({to_us(7000, 1)});
  h.poll();
  EXPECT_EQ(counter(&pmd::hca::DeviceCounters::rx_raw_dropped) - dropped, 1u);
  recv(raw1, 1, 0, 16);
  recv(raw1, 2, 2048, 2048);
  h.inject({to_us(7000, 2), to_us(7000, 3)});
  h.poll();
  auto w = raw_wcs();
  ASSERT_EQ(w.size(), 2u) << describe(w);
  EXPECT_EQ(w[0].wr_id, 1u);
  EXPECT_EQ(w[0].status, WcStatus::loc_len_err);
  EXPECT_EQ(w[1].wr_id, 2u);
  EXPECT_EQ(w[1].status, WcStatus::success);
  EXPECT_EQ(bytes(2048 + 14 + 20 + 8, 1)[0], 3);
}

// A frame the port delivered in two segments (a chained mbuf) arrives whole. (An IPv4
// frame must fit its first segment, as RoCE frames must: the port's buffers hold the
// largest frame.)
TEST_F(FlowTest, ChainedFrameIsDeliveredWhole) {
  FlowRule r;
  r.has_eth = 1;
  r.ether_type = htons(0x88b5);
  r.ether_type_mask = 0xffff;
  add(raw1, r);
  recv(raw1, 9, 0, 2048);
  auto f = frame(h.our_mac(), h.peer_ip(), h.our_ip(), 999, 7100, 17, 0, 0x3c, 600);
  f[12] = 0x88;
  f[13] = 0xb5;
  rte_mempool* pool = h.dev().port().pool();
  rte_mbuf* head = rte_pktmbuf_alloc(pool);
  rte_mbuf* tail = rte_pktmbuf_alloc(pool);
  ASSERT_TRUE(head && tail);
  const uint16_t cut = 100;
  std::memcpy(rte_pktmbuf_append(head, cut), f.data(), cut);
  std::memcpy(rte_pktmbuf_append(tail, uint16_t(f.size() - cut)), f.data() + cut,
              f.size() - cut);
  ASSERT_EQ(rte_pktmbuf_chain(head, tail), 0);
  h.dev().engine(0).receive(&head, 1);
  auto w = raw_wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  EXPECT_EQ(w[0].status, WcStatus::success);
  EXPECT_EQ(w[0].byte_len, f.size());
  EXPECT_EQ(bytes(0, uint32_t(f.size())), f);
}

// Rules go with their QP: a destroyed QP's rules steer nothing (the next rule takes over).
TEST_F(FlowTest, DestroyQpDropsItsRules) {
  add(raw1, udp_port(8000, 0));
  add(raw2, udp_port(8000, 1));
  recv(raw2, 5, 0, 2048);
  raw1 = Qp();
  ids1.clear();
  h.inject({to_us(8000)});
  h.poll();
  auto w = raw_wcs();
  ASSERT_EQ(w.size(), 1u) << describe(w);
  EXPECT_EQ(w[0].qp_num, raw2.qp_num());
}

// Rules steer only to raw packet QPs; an unknown L4 protocol in a rule is refused.
TEST_F(FlowTest, RulesNeedARawPacketQp) {
  make_qp({});
  uint32_t id;
  FlowRule r = udp_port(1);
  EXPECT_EQ(mid::create_flow(qp.raw(), &r, &id), EINVAL);
  r.l4_proto = 1;  // ICMP
  EXPECT_EQ(mid::create_flow(raw1.raw(), &r, &id), EINVAL);
}

}  // namespace
}  // namespace dverbs::proto
