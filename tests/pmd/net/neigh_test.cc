// ARP and the neighbour table, on the loopback port: crafted frames in, exact frames out.
#include "pmd/net/neigh.h"

#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <rte_arp.h>
#include <rte_cycles.h>
#include <rte_ether.h>

#include "pmd/net/eal.h"
#include "pmd/net/port.h"

namespace dverbs::pmd::net {
namespace {

using State = NeighTable::State;

bool eal() {
  static int rc = [] {
    std::string err;
    int r = eal_init(Config{}, &err);
    if (r) std::fprintf(stderr, "%s\n", err.c_str());
    return r;
  }();
  return rc == 0;
}

constexpr uint32_t kOurIp = 0x0a000001;   // 10.0.0.1 (Config default)
constexpr uint32_t kPeerIp = 0x0a000002;  // 10.0.0.2
constexpr uint8_t kPeerMac[6] = {0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x02};

struct Arp {
  uint8_t eth_dst[6], eth_src[6];
  uint16_t op;
  uint8_t sha[6], tha[6];
  uint32_t sip, tip;
};

class NeighTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(eal());
    std::string err;
    port_ = Port::open(Config{}, 1, &err);
    ASSERT_TRUE(port_) << err;
    table_ = std::make_unique<NeighTable>(*port_);
    hz_ = rte_get_tsc_hz();
  }

  rte_mbuf* arp_frame(uint16_t op, const uint8_t src_mac[6], uint32_t sip, uint32_t tip,
                      const uint8_t* tha = nullptr) {
    rte_mbuf* m = port_->alloc_mbuf();
    auto* eth = m ? reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, 60)) : nullptr;
    if (!eth) {
      ADD_FAILURE() << "no mbuf";
      return m;
    }
    std::memset(eth, 0, 60);
    if (tha)
      std::memcpy(eth->dst_addr.addr_bytes, tha, 6);
    else
      std::memset(eth->dst_addr.addr_bytes, 0xff, 6);
    std::memcpy(eth->src_addr.addr_bytes, src_mac, 6);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
    auto* a = reinterpret_cast<rte_arp_hdr*>(eth + 1);
    a->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
    a->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    a->arp_hlen = 6;
    a->arp_plen = 4;
    a->arp_opcode = rte_cpu_to_be_16(op);
    std::memcpy(a->arp_data.arp_sha.addr_bytes, src_mac, 6);
    a->arp_data.arp_sip = rte_cpu_to_be_32(sip);
    if (tha) std::memcpy(a->arp_data.arp_tha.addr_bytes, tha, 6);
    a->arp_data.arp_tip = rte_cpu_to_be_32(tip);
    return m;
  }

  static Arp parse(const rte_mbuf* m) {
    Arp r{};
    const auto* eth = rte_pktmbuf_mtod(m, const rte_ether_hdr*);
    EXPECT_EQ(eth->ether_type, rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP));
    std::memcpy(r.eth_dst, eth->dst_addr.addr_bytes, 6);
    std::memcpy(r.eth_src, eth->src_addr.addr_bytes, 6);
    const auto* a = reinterpret_cast<const rte_arp_hdr*>(eth + 1);
    r.op = rte_be_to_cpu_16(a->arp_opcode);
    std::memcpy(r.sha, a->arp_data.arp_sha.addr_bytes, 6);
    std::memcpy(r.tha, a->arp_data.arp_tha.addr_bytes, 6);
    r.sip = rte_be_to_cpu_32(a->arp_data.arp_sip);
    r.tip = rte_be_to_cpu_32(a->arp_data.arp_tip);
    return r;
  }

  // "Sends" a frame from the wire: through the loopback and back in, as a peer's would.
  rte_mbuf* via_wire(rte_mbuf* m) {
    EXPECT_EQ(port_->tx_burst(0, &m, 1), 1);
    rte_mbuf* r = nullptr;
    EXPECT_EQ(port_->rx_burst(0, &r, 1), 1);
    return r;
  }

  // Everything the port sent since the last call.
  std::vector<Arp> sent() {
    std::vector<Arp> out;
    rte_mbuf* r[32];
    while (uint16_t n = port_->rx_burst(0, r, 32))
      for (uint16_t i = 0; i < n; ++i) {
        out.push_back(parse(r[i]));
        rte_pktmbuf_free(r[i]);
      }
    return out;
  }

  bool is_us(const uint8_t mac[6]) const { return std::memcmp(mac, port_->mac(), 6) == 0; }

  std::unique_ptr<Port> port_;
  std::unique_ptr<NeighTable> table_;
  uint64_t hz_ = 0;
};

TEST_F(NeighTest, OwnAddressResolvesAtOnce) {
  uint8_t mac[6] = {};
  EXPECT_TRUE(table_->lookup(kOurIp, mac));
  EXPECT_TRUE(is_us(mac));
  EXPECT_EQ(table_->size(), 0u);
}

TEST_F(NeighTest, MulticastMapsWithoutArp) {
  uint8_t mac[6] = {};
  ASSERT_TRUE(table_->lookup(0xe0ab0102, mac));  // 224.171.1.2
  const uint8_t want[6] = {0x01, 0x00, 0x5e, 0x2b, 0x01, 0x02};
  EXPECT_EQ(std::memcmp(mac, want, 6), 0);
  EXPECT_EQ(table_->size(), 0u);
}

TEST_F(NeighTest, RequestForUsGetsReplyWithOurMac) {
  rte_mbuf* req = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, kOurIp));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, req));
  std::vector<Arp> out = sent();
  ASSERT_EQ(out.size(), 1u);
  const Arp& r = out[0];
  EXPECT_EQ(r.op, RTE_ARP_OP_REPLY);
  EXPECT_TRUE(is_us(r.eth_src));
  EXPECT_EQ(std::memcmp(r.eth_dst, kPeerMac, 6), 0);
  EXPECT_TRUE(is_us(r.sha));
  EXPECT_EQ(r.sip, kOurIp);
  EXPECT_EQ(std::memcmp(r.tha, kPeerMac, 6), 0);
  EXPECT_EQ(r.tip, kPeerIp);
  EXPECT_EQ(port_->stats().arp_replies_sent.load(), 1u);

  // The requester was learned on the way.
  uint8_t mac[6];
  ASSERT_TRUE(table_->lookup(kPeerIp, mac));
  EXPECT_EQ(std::memcmp(mac, kPeerMac, 6), 0);
}

TEST_F(NeighTest, RequestForSomeoneElseIsNotAnswered) {
  rte_mbuf* req = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, 0x0a000063));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, req));
  EXPECT_TRUE(sent().empty());
  EXPECT_EQ(table_->state(kPeerIp), State::kInvalid);  // not for us: not inserted
}

TEST_F(NeighTest, UnknownAddressIsResolvedInTheBackground) {
  const uint64_t t0 = rte_rdtsc();
  uint8_t mac[6];
  EXPECT_FALSE(table_->lookup(kPeerIp, mac));
  EXPECT_EQ(table_->state(kPeerIp), State::kIncomplete);

  // First poll: the gratuitous ARP and a request for the peer.
  EXPECT_EQ(table_->poll(*port_, 0, t0), 2);
  std::vector<Arp> out = sent();
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].op, RTE_ARP_OP_REQUEST);
  EXPECT_EQ(out[0].sip, kOurIp);
  EXPECT_EQ(out[0].tip, kOurIp);  // gratuitous
  EXPECT_EQ(out[1].op, RTE_ARP_OP_REQUEST);
  EXPECT_EQ(out[1].tip, kPeerIp);
  EXPECT_EQ(out[1].sip, kOurIp);
  EXPECT_TRUE(is_us(out[1].sha));
  const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  EXPECT_EQ(std::memcmp(out[1].eth_dst, bcast, 6), 0);
  EXPECT_EQ(port_->stats().arp_requests_sent.load(), 2u);

  // No retry before 100 ms, even when asked again.
  EXPECT_FALSE(table_->lookup(kPeerIp, mac));
  EXPECT_EQ(table_->poll(*port_, 0, t0 + hz_ / 20), 0);
  EXPECT_TRUE(sent().empty());
  // Retry after 100 ms.
  EXPECT_EQ(table_->poll(*port_, 0, t0 + hz_ / 10 + 1), 1);
  ASSERT_EQ(sent().size(), 1u);

  // The reply makes it reachable.
  uint8_t our_mac[6];
  std::memcpy(our_mac, port_->mac(), 6);
  rte_mbuf* reply = via_wire(arp_frame(RTE_ARP_OP_REPLY, kPeerMac, kPeerIp, kOurIp, our_mac));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, reply));
  EXPECT_TRUE(sent().empty());  // replies are not answered
  ASSERT_TRUE(table_->lookup(kPeerIp, mac));
  EXPECT_EQ(std::memcmp(mac, kPeerMac, 6), 0);
  EXPECT_EQ(table_->state(kPeerIp), State::kReachable);
}

TEST_F(NeighTest, UnansweredRequestsGiveUpAndReArmOnLookup) {
  const uint64_t t0 = rte_rdtsc();
  uint8_t mac[6];
  EXPECT_FALSE(table_->lookup(kPeerIp, mac));
  uint64_t t = t0;
  int requests = 0;
  for (int i = 0; i < 10; ++i, t += hz_ / 10 + 1) requests += table_->poll(*port_, 0, t);
  EXPECT_EQ(requests, 1 + int(NeighTable::kMaxProbes));  // gratuitous + 3 probes, then quiet
  EXPECT_EQ(table_->state(kPeerIp), State::kInvalid);
  sent();

  // Looked up again: re-armed, but not before the hold time.
  EXPECT_FALSE(table_->lookup(kPeerIp, mac));
  EXPECT_EQ(table_->poll(*port_, 0, t), 0);
  EXPECT_EQ(table_->poll(*port_, 0, t + hz_ + 1), 1);
  EXPECT_EQ(table_->state(kPeerIp), State::kIncomplete);
  ASSERT_EQ(sent().size(), 1u);
}

TEST_F(NeighTest, ReachableEntriesAge) {
  const uint64_t t0 = rte_rdtsc();
  table_->poll(*port_, 0, t0);  // gratuitous out of the way
  sent();
  const uint32_t idle_ip = 0x0a000003, used_ip = 0x0a000004;
  for (uint32_t ip : {idle_ip, used_ip}) {
    rte_mbuf* req = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, ip, kOurIp));
    ASSERT_TRUE(table_->handle_rx(*port_, 0, req));
    ASSERT_EQ(sent().size(), 1u);  // the reply
  }
  uint8_t mac[6];
  ASSERT_TRUE(table_->lookup(used_ip, mac));

  const uint64_t later = rte_rdtsc() + uint64_t(NeighTable::kReachableSec) * hz_ + hz_;
  EXPECT_EQ(table_->poll(*port_, 0, later), 1);  // refresh for the used one only
  EXPECT_EQ(table_->state(used_ip), State::kProbe);
  EXPECT_EQ(table_->state(idle_ip), State::kInvalid);
  EXPECT_TRUE(table_->lookup(used_ip, mac));  // still usable while refreshing
  EXPECT_FALSE(table_->lookup(idle_ip, mac));
  std::vector<Arp> out = sent();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].tip, used_ip);
}

TEST_F(NeighTest, PollWithAnEarlierClockDoesNotExpireFreshEntries) {
  // Engines read the TSC at the top of their loop; another queue may learn an entry later.
  const uint64_t before = rte_rdtsc();
  rte_mbuf* req = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, kOurIp));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, req));
  sent();
  EXPECT_EQ(table_->poll(*port_, 0, before), 1);  // the gratuitous ARP only
  EXPECT_EQ(table_->state(kPeerIp), State::kReachable);
  sent();
}

TEST_F(NeighTest, CloseBarrierAsksOnlyNeighboursThatAnswered) {
  const uint64_t t0 = rte_rdtsc();
  table_->poll(*port_, 0, t0);  // gratuitous out of the way
  sent();
  EXPECT_EQ(table_->probe_neighbours(*port_, 0), 0);  // nobody known: nothing to wait for
  EXPECT_TRUE(sent().empty());

  uint8_t mac[6];
  EXPECT_FALSE(table_->lookup(0x0a000009, mac));  // incomplete: never answered, not asked
  rte_mbuf* req = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, kOurIp));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, req));
  sent();  // our reply

  EXPECT_EQ(table_->probe_neighbours(*port_, 0), 1);
  std::vector<Arp> out = sent();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, RTE_ARP_OP_REQUEST);
  EXPECT_EQ(out[0].tip, kPeerIp);
  EXPECT_EQ(out[0].sip, kOurIp);

  // The answer is reported as a reply for us; a request, or a reply to someone else, is not.
  uint8_t our_mac[6];
  std::memcpy(our_mac, port_->mac(), 6);
  bool reply = false;
  rte_mbuf* m = via_wire(arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, kOurIp));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, m, &reply));
  EXPECT_FALSE(reply);
  sent();
  const uint8_t other_mac[6] = {0x02, 0, 0, 0, 0, 0x63};
  m = via_wire(arp_frame(RTE_ARP_OP_REPLY, kPeerMac, kPeerIp, 0x0a000063, other_mac));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, m, &reply));
  EXPECT_FALSE(reply);
  m = via_wire(arp_frame(RTE_ARP_OP_REPLY, kPeerMac, kPeerIp, kOurIp, our_mac));
  ASSERT_TRUE(table_->handle_rx(*port_, 0, m, &reply));
  EXPECT_TRUE(reply);
  EXPECT_TRUE(sent().empty());
}

TEST_F(NeighTest, NonArpAndMalformedFrames) {
  rte_mbuf* m = port_->alloc_mbuf();
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, 60));
  ASSERT_NE(p, nullptr);
  std::memset(p, 0, 60);
  p[12] = 0x08;  // IPv4
  EXPECT_FALSE(table_->handle_rx(*port_, 0, m));
  rte_pktmbuf_free(m);

  rte_mbuf* bad = arp_frame(RTE_ARP_OP_REQUEST, kPeerMac, kPeerIp, kOurIp);
  rte_pktmbuf_mtod_offset(bad, rte_arp_hdr*, 14)->arp_plen = 16;  // not IPv4
  EXPECT_TRUE(table_->handle_rx(*port_, 0, bad));
  EXPECT_EQ(port_->stats().rx_dropped_malformed.load(), 1u);
  EXPECT_TRUE(sent().empty());
}

TEST_F(NeighTest, ConcurrentLookupsInsertOnce) {
  constexpr int kThreads = 4, kAddrs = 200;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&] {
      uint8_t mac[6];
      for (int rep = 0; rep < 50; ++rep)
        for (int i = 0; i < kAddrs; ++i) table_->lookup(0x0b000000 + uint32_t(i), mac);
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(table_->size(), uint32_t(kAddrs));
  for (int i = 0; i < kAddrs; ++i)
    EXPECT_EQ(table_->state(0x0b000000 + uint32_t(i)), State::kIncomplete);
}

TEST_F(NeighTest, FullTableRefusesNewAddresses) {
  uint8_t mac[6];
  for (uint32_t i = 0; i < NeighTable::kCapacity; ++i) table_->lookup(0x0c000000 + i, mac);
  EXPECT_EQ(table_->size(), NeighTable::kCapacity);
  EXPECT_EQ(table_->table_full(), 0u);
  EXPECT_FALSE(table_->lookup(0x0d000000, mac));
  EXPECT_EQ(table_->table_full(), 1u);
  EXPECT_TRUE(table_->lookup(kOurIp, mac));
  // poll sends at most 32 requests per round and keeps going next round.
  const uint64_t t0 = rte_rdtsc();
  EXPECT_EQ(table_->poll(*port_, 0, t0), 32);
  EXPECT_EQ(table_->poll(*port_, 0, t0), 32);
  sent();
}

}  // namespace
}  // namespace dverbs::pmd::net
