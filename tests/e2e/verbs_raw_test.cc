// Raw packet QPs and flow steering through the drop-in, as a stock program uses them:
// IBV_QPT_RAW_PACKET QPs send Ethernet frames they build themselves, ibv_create_flow
// rules steer received frames to them, and RoCE traffic of an RC pair keeps flowing
// beside them (never seen by a raw QP). Built against the system <infiniband/verbs.h>;
// tests/e2e/verbs_modes.sh runs it embedded and as a client of a dverbsd, on the loopback
// port, where every frame a QP sends comes back to the same port.
//
// "Not delivered" is asserted without a clock: the loopback port delivers in order, so
// once a later frame has reached its QP, an earlier one has been classified too.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::open_dverbs;

bool poll_one(ibv_cq* cq, ibv_wc* wc) {
  for (long i = 0; i < 400000000L; ++i) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n < 0) return false;
    if (n) return true;
  }
  return false;
}

// One's-complement sum of 16-bit words (for checking checksums the HCA filled).
uint32_t csum_add(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += uint32_t(p[n - 1] << 8);
  return sum;
}
uint16_t csum_fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(sum);
}

constexpr size_t kEth = 14, kIp = 20, kUdp = 8;

// A frame on this port: dst MAC the port's, src MAC a made-up station, IPv4 to the port's
// address, UDP to `dport`, payload `tag` repeated. Checksums are left 0 (IBV_SEND_IP_CSUM).
std::vector<uint8_t> udp_frame(const uint8_t mac[6], uint32_t ip_be, uint16_t dport, uint8_t tag,
                               size_t payload = 64) {
  std::vector<uint8_t> f(kEth + kIp + kUdp + payload, 0);
  std::memcpy(f.data(), mac, 6);
  const uint8_t src[6] = {0x02, 0x00, 0x5e, 0x10, 0x20, 0x30};
  std::memcpy(f.data() + 6, src, 6);
  f[12] = 0x08;
  f[13] = 0x00;
  uint8_t* ip = f.data() + kEth;
  ip[0] = 0x45;
  const uint16_t total = uint16_t(kIp + kUdp + payload);
  ip[2] = uint8_t(total >> 8);
  ip[3] = uint8_t(total);
  ip[8] = 64;
  ip[9] = 17;
  const uint32_t src_ip = htonl(0x0a0b0c0d);
  std::memcpy(ip + 12, &src_ip, 4);
  std::memcpy(ip + 16, &ip_be, 4);
  uint8_t* udp = ip + kIp;
  udp[0] = 0x30;
  udp[1] = 0x39;  // source port 12345
  udp[2] = uint8_t(dport >> 8);
  udp[3] = uint8_t(dport);
  udp[4] = uint8_t((kUdp + payload) >> 8);
  udp[5] = uint8_t(kUdp + payload);
  std::memset(udp + kUdp, tag, payload);
  return f;
}

// CAP_NET_RAW in this thread's effective set on (`on`) or off; false if not permitted.
bool set_net_raw(bool on) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2]{};
  if (syscall(SYS_capget, &hdr, d) != 0) return false;
  auto& w = d[CAP_NET_RAW / 32];
  const uint32_t bit = 1u << (CAP_NET_RAW % 32);
  if (!(w.permitted & bit)) return false;
  w.effective = on ? (w.effective | bit) : (w.effective & ~bit);
  return syscall(SYS_capset, &hdr, d) == 0;
}

// An ibv_flow_attr with up to three specs, laid out as ibv_create_flow(3) shows.
struct FlowReq {
  ibv_flow_attr attr;
  ibv_flow_spec_eth eth;
  ibv_flow_spec_ipv4 ipv4;
  ibv_flow_spec_tcp_udp udp;
};

FlowReq udp_rule(uint16_t dport, uint16_t priority) {
  FlowReq r{};
  r.attr.type = IBV_FLOW_ATTR_NORMAL;
  r.attr.size = sizeof r;
  r.attr.priority = priority;
  r.attr.num_of_specs = 3;
  r.attr.port = 1;
  r.eth.type = IBV_FLOW_SPEC_ETH;
  r.eth.size = sizeof r.eth;
  r.eth.val.ether_type = htons(0x0800);
  r.eth.mask.ether_type = 0xffff;
  r.ipv4.type = IBV_FLOW_SPEC_IPV4;
  r.ipv4.size = sizeof r.ipv4;  // any address (masks 0)
  r.udp.type = IBV_FLOW_SPEC_UDP;
  r.udp.size = sizeof r.udp;
  r.udp.val.dst_port = htons(dport);
  r.udp.mask.dst_port = 0xffff;
  return r;
}

struct Fixture : ::testing::Test {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_gid gid{};
  uint8_t mac[6] = {};
  uint32_t ip_be = 0;
  std::vector<ibv_qp*> qps;
  std::vector<ibv_cq*> cqs;
  std::vector<ibv_mr*> mrs;
  std::vector<ibv_flow*> flows;
  std::vector<std::vector<uint8_t>*> bufs;

  void SetUp() override {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    std::memcpy(&ip_be, gid.raw + 12, 4);
    // The node GUID is the port MAC's EUI-64 (mac0^2 mac1 mac2 ff fe mac3 mac4 mac5).
    ibv_device_attr da;
    ASSERT_EQ(ibv_query_device(ctx, &da), 0);
    uint8_t g[8];
    std::memcpy(g, &da.node_guid, 8);
    const uint8_t m[6] = {uint8_t(g[0] ^ 2), g[1], g[2], g[5], g[6], g[7]};
    std::memcpy(mac, m, 6);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
  }
  void TearDown() override {
    for (ibv_flow* f : flows) ibv_destroy_flow(f);
    for (ibv_qp* q : qps) ibv_destroy_qp(q);
    for (ibv_cq* c : cqs) ibv_destroy_cq(c);
    for (ibv_mr* m : mrs) ibv_dereg_mr(m);
    for (auto* b : bufs) delete b;
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_cq* cq() {
    ibv_cq* c = ibv_create_cq(ctx, 512, nullptr, nullptr, 0);
    if (c) cqs.push_back(c);
    return c;
  }
  ibv_mr* mr(size_t bytes) {
    auto* b = new std::vector<uint8_t>(bytes, 0);
    bufs.push_back(b);
    ibv_mr* m = ibv_reg_mr(pd, b->data(), bytes, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (m) mrs.push_back(m);
    return m;
  }
  ibv_qp* raw_qp(ibv_cq* c) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = c;
    init.qp_type = IBV_QPT_RAW_PACKET;
    init.cap.max_send_wr = init.cap.max_recv_wr = 64;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    ibv_qp* q = ibv_create_qp(pd, &init);
    if (!q) return nullptr;
    qps.push_back(q);
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_INIT;
    at.port_num = 1;
    if (ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PORT)) return nullptr;
    at.qp_state = IBV_QPS_RTR;
    if (ibv_modify_qp(q, &at, IBV_QP_STATE)) return nullptr;
    at.qp_state = IBV_QPS_RTS;
    if (ibv_modify_qp(q, &at, IBV_QP_STATE)) return nullptr;
    return q;
  }
  // A raw packet QP in RTS with its own CQ and `slots` 2048-byte registered slots.
  struct End {
    ibv_cq* cq = nullptr;
    ibv_qp* qp = nullptr;
    ibv_mr* mr = nullptr;
  };
  bool raw_end(End* e, size_t slots) {
    e->cq = cq();
    e->qp = e->cq ? raw_qp(e->cq) : nullptr;
    e->mr = e->qp ? mr(slots * 2048) : nullptr;
    return e->mr != nullptr;
  }
  // Two RC QPs on CQs ca and cb, connected to each other over the port.
  void rc_pair(ibv_cq* ca, ibv_cq* cb, ibv_qp** qa, ibv_qp** qb) {
    ibv_qp_init_attr init{};
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = init.cap.max_recv_wr = 64;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    init.send_cq = init.recv_cq = ca;
    ibv_qp* a = ibv_create_qp(pd, &init);
    init.send_cq = init.recv_cq = cb;
    ibv_qp* b = ibv_create_qp(pd, &init);
    ASSERT_TRUE(a && b);
    qps.push_back(a);
    qps.push_back(b);
    for (auto [q, peer] : {std::pair{a, b}, std::pair{b, a}}) {
      ibv_qp_attr at{};
      at.qp_state = IBV_QPS_INIT;
      at.port_num = 1;
      at.qp_access_flags = IBV_ACCESS_LOCAL_WRITE;
      ASSERT_EQ(ibv_modify_qp(q, &at,
                              IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
                0);
      ASSERT_NO_FATAL_FAILURE(verbs_loop::rc_to_rtr(q, gid, peer->qp_num));
      ASSERT_NO_FATAL_FAILURE(verbs_loop::rc_to_rts(q));
    }
    *qa = a;
    *qb = b;
  }
  // RoCE traffic beside the raw QPs: an RC pair, `n` SENDs of `len` bytes (byte pattern
  // 0x40 + i) posted by rc_start, their completions and bytes checked by rc_finish.
  struct Rc {
    ibv_cq *ca = nullptr, *cb = nullptr;
    ibv_qp *a = nullptr, *b = nullptr;
    uint8_t* buf = nullptr;
  };
  void rc_start(Rc* rc, int n, uint32_t len) {
    rc->ca = cq();
    rc->cb = cq();
    ASSERT_TRUE(rc->ca && rc->cb);
    ASSERT_NO_FATAL_FAILURE(rc_pair(rc->ca, rc->cb, &rc->a, &rc->b));
    ibv_mr* m = mr(size_t(n) * len * 2);
    ASSERT_NE(m, nullptr);
    rc->buf = static_cast<uint8_t*>(m->addr);
    for (int i = 0; i < n; i++) {
      ibv_sge s{uint64_t(uintptr_t(rc->buf + (n + i) * len)), len, m->lkey};
      ibv_recv_wr wr{}, *bad = nullptr;
      wr.sg_list = &s;
      wr.num_sge = 1;
      ASSERT_EQ(ibv_post_recv(rc->b, &wr, &bad), 0);
    }
    for (int i = 0; i < n; i++) {
      std::memset(rc->buf + i * len, 0x40 + i, len);
      ibv_sge s{uint64_t(uintptr_t(rc->buf + i * len)), len, m->lkey};
      ibv_send_wr wr{}, *bad = nullptr;
      wr.sg_list = &s;
      wr.num_sge = 1;
      wr.opcode = IBV_WR_SEND;
      wr.send_flags = IBV_SEND_SIGNALED;
      ASSERT_EQ(ibv_post_send(rc->a, &wr, &bad), 0);
    }
  }
  void rc_finish(const Rc& rc, int n, uint32_t len) {
    for (int i = 0; i < n; i++) {
      ibv_wc wc{};
      ASSERT_TRUE(poll_one(rc.ca, &wc));
      ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
      ASSERT_TRUE(poll_one(rc.cb, &wc));
      ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
      ASSERT_EQ(wc.byte_len, len);
    }
    for (int i = 0; i < n; i++) ASSERT_EQ(rc.buf[(n + i) * len + len - 1], 0x40 + i);
  }
  ibv_flow* flow(ibv_qp* q, FlowReq r) {
    ibv_flow* f = ibv_create_flow(q, &r.attr);
    if (f) flows.push_back(f);
    return f;
  }
  void unflow(ibv_flow* f) {
    ASSERT_EQ(ibv_destroy_flow(f), 0);
    flows.erase(std::find(flows.begin(), flows.end(), f));
  }
  // Posts `n` receives of 2048 bytes each from `m` (slot i at offset i*2048).
  void post_recvs(ibv_qp* q, ibv_mr* m, int n) {
    for (int i = 0; i < n; i++) {
      ibv_sge s{uint64_t(uintptr_t(m->addr)) + uint64_t(i) * 2048, 2048, m->lkey};
      ibv_recv_wr wr{}, *bad = nullptr;
      wr.wr_id = uint64_t(i);
      wr.sg_list = &s;
      wr.num_sge = 1;
      ASSERT_EQ(ibv_post_recv(q, &wr, &bad), 0);
    }
  }
  // Sends `f` from `e` (copied into its slot `slot`) and waits for its completion.
  void send_frame(const End& e, int slot, const std::vector<uint8_t>& f,
                  unsigned flags = IBV_SEND_IP_CSUM) {
    ibv_qp* q = e.qp;
    ibv_cq* c = e.cq;
    ibv_mr* m = e.mr;
    uint8_t* at = static_cast<uint8_t*>(m->addr) + slot * 2048;
    std::memcpy(at, f.data(), f.size());
    ibv_sge s{uint64_t(uintptr_t(at)), uint32_t(f.size()), m->lkey};
    ibv_send_wr wr{}, *bad = nullptr;
    wr.wr_id = 0x5e0d0000u + uint64_t(slot);
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED | flags;
    ASSERT_EQ(ibv_post_send(q, &wr, &bad), 0);
    ibv_wc wc{};
    ASSERT_TRUE(poll_one(c, &wc));
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
    EXPECT_EQ(wc.opcode, IBV_WC_SEND);
    EXPECT_EQ(wc.wr_id, wr.wr_id);
  }
  // The next receive completion of `c`: its frame's payload tag byte.
  int recv_tag(ibv_cq* c, ibv_mr* m, ibv_wc* out = nullptr) {
    ibv_wc wc{};
    if (!poll_one(c, &wc)) return -1;
    if (out) *out = wc;
    if (wc.status != IBV_WC_SUCCESS || wc.opcode != IBV_WC_RECV) return -2;
    const uint8_t* f = static_cast<const uint8_t*>(m->addr) + wc.wr_id * 2048;
    return f[kEth + kIp + kUdp];
  }
};

// Creation attributes of a small QP of `type` on CQ `c` (4 WRs, 1 SGE each way).
ibv_qp_init_attr small_qp(ibv_qp_type type, ibv_cq* c) {
  ibv_qp_init_attr init{};
  init.qp_type = type;
  init.send_cq = init.recv_cq = c;
  init.cap.max_send_wr = init.cap.max_recv_wr = 4;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  return init;
}

int pending(ibv_cq* c) {
  ibv_wc wc;
  return ibv_poll_cq(c, 1, &wc);
}

// ---------------------------------------------------------------- device attributes
TEST_F(Fixture, DeviceReportsRawPacketQpsAndFlowSteering) {
  ibv_device_attr_ex dx;
  ASSERT_EQ(ibv_query_device_ex(ctx, nullptr, &dx), 0);
  EXPECT_GT(dx.orig_attr.max_raw_ethy_qp, 0);
  EXPECT_TRUE(dx.orig_attr.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING);
  EXPECT_TRUE(dx.orig_attr.device_cap_flags & IBV_DEVICE_RAW_IP_CSUM);
  EXPECT_TRUE(dx.raw_packet_caps & IBV_RAW_PACKET_CAP_IP_CSUM);
  // Nothing that is not implemented: no VLAN stripping, FCS scatter or delay drop.
  EXPECT_EQ(dx.raw_packet_caps & ~uint32_t(IBV_RAW_PACKET_CAP_IP_CSUM), 0u);
}

// ---------------------------------------------------------------- steering
// A raw QP sends a UDP frame it built; a rule on the UDP destination port brings it to a
// second raw QP, whole, with the checksums IBV_SEND_IP_CSUM filled; a frame to another
// port is not delivered there. An RC pair moves data meanwhile and completes.
TEST_F(Fixture, RuleOnUdpPortDeliversTheFrameAndRcTrafficFlowsBeside) {
  End tx, rx;
  ASSERT_TRUE(raw_end(&tx, 64) && raw_end(&rx, 64)) << std::strerror(errno);
  ASSERT_NE(flow(rx.qp, udp_rule(5000, 0)), nullptr) << std::strerror(errno);
  post_recvs(rx.qp, rx.mr, 8);

  // The RC pair: a and b connected over the same port, 32 SENDs of 4 KiB in flight.
  Rc rc;
  ASSERT_NO_FATAL_FAILURE(rc_start(&rc, 32, 4096));

  // A frame to port 5001 first (no rule), then the one to port 5000.
  send_frame(tx, 0, udp_frame(mac, ip_be, 5001, 0xb1));
  const auto want = udp_frame(mac, ip_be, 5000, 0xa1, 200);
  send_frame(tx, 1, want);
  ibv_wc wc{};
  ASSERT_EQ(recv_tag(rx.cq, rx.mr, &wc), 0xa1) << "the frame to port 5001 was delivered";
  EXPECT_EQ(wc.byte_len, want.size());
  EXPECT_EQ(wc.qp_num, rx.qp->qp_num);
  const uint8_t* got = static_cast<const uint8_t*>(rx.mr->addr) + wc.wr_id * 2048;
  // Byte for byte what was sent, but for the two checksums the HCA filled.
  std::vector<uint8_t> g(got, got + want.size());
  EXPECT_EQ(csum_fold(csum_add(g.data() + kEth, kIp)), 0xffff) << "IPv4 header checksum";
  std::vector<uint8_t> ph(12, 0);  // UDP pseudo header
  std::memcpy(ph.data(), g.data() + kEth + 12, 8);
  ph[9] = 17;
  ph[10] = uint8_t((want.size() - kEth - kIp) >> 8);
  ph[11] = uint8_t(want.size() - kEth - kIp);
  EXPECT_EQ(csum_fold(csum_add(g.data() + kEth + kIp, want.size() - kEth - kIp,
                               csum_add(ph.data(), ph.size()))),
            0xffff)
      << "UDP checksum";
  g[kEth + 10] = g[kEth + 11] = 0;
  g[kEth + kIp + 6] = g[kEth + kIp + 7] = 0;
  EXPECT_EQ(g, want);
  EXPECT_EQ(pending(rx.cq), 0);

  // The RC transfer completes, data intact, next to the raw traffic.
  rc_finish(rc, 32, 4096);
}

// Rules are tried in priority order (a lower value first); destroying a rule stops its
// deliveries; an equal-priority later rule never overrides an earlier one.
TEST_F(Fixture, PrioritiesAndDestroyFlow) {
  End tx, e1, e2;
  ASSERT_TRUE(raw_end(&tx, 16) && raw_end(&e1, 64) && raw_end(&e2, 64)) << std::strerror(errno);
  ibv_qp* q1 = e1.qp;
  ibv_qp* q2 = e2.qp;
  post_recvs(q1, e1.mr, 16);
  post_recvs(q2, e2.mr, 16);
  // q2: every frame to this MAC (an ETH spec only), at priority 5.
  FlowReq mac_rule{};
  mac_rule.attr.type = IBV_FLOW_ATTR_NORMAL;
  mac_rule.attr.size = sizeof(ibv_flow_attr) + sizeof(ibv_flow_spec_eth);
  mac_rule.attr.priority = 5;
  mac_rule.attr.num_of_specs = 1;
  mac_rule.attr.port = 1;
  mac_rule.eth.type = IBV_FLOW_SPEC_ETH;
  mac_rule.eth.size = sizeof mac_rule.eth;
  std::memcpy(mac_rule.eth.val.dst_mac, mac, 6);
  std::memset(mac_rule.eth.mask.dst_mac, 0xff, 6);
  ASSERT_NE(flow(q2, mac_rule), nullptr) << std::strerror(errno);
  // q1: UDP port 6000 at priority 1 (before q2's rule), and port 6001 at priority 9.
  ibv_flow* f6000 = flow(q1, udp_rule(6000, 1));
  ASSERT_NE(f6000, nullptr);
  ASSERT_NE(flow(q1, udp_rule(6001, 9)), nullptr);
  // And a second rule for port 6000 on q2 at the same priority 1: the older one wins.
  ASSERT_NE(flow(q2, udp_rule(6000, 1)), nullptr);

  send_frame(tx, 0, udp_frame(mac, ip_be, 6000, 0x11));
  EXPECT_EQ(recv_tag(e1.cq, e1.mr), 0x11);
  send_frame(tx, 1, udp_frame(mac, ip_be, 6001, 0x12));  // q2's rule first
  EXPECT_EQ(recv_tag(e2.cq, e2.mr), 0x12);
  send_frame(tx, 2, udp_frame(mac, ip_be, 7000, 0x13));  // q2's MAC rule only
  EXPECT_EQ(recv_tag(e2.cq, e2.mr), 0x13);
  EXPECT_EQ(pending(e1.cq), 0);

  // Without q1's port-6000 rule the frame goes to q2's (same priority, then the MAC rule).
  unflow(f6000);
  send_frame(tx, 3, udp_frame(mac, ip_be, 6000, 0x14));
  EXPECT_EQ(recv_tag(e2.cq, e2.mr), 0x14);
  EXPECT_EQ(pending(e1.cq), 0);
}

// No rule, whatever it asks for, and no raw QP ever receives RoCE frames: a rule on UDP
// port 4791 and a catch-all rule (no specs) on the same QP see none of an RC pair's
// traffic (SENDs and ACKs); the catch-all still takes the non-RoCE frame sent after it.
TEST_F(Fixture, RoceIsNeverStolen) {
  End tx, rx;
  ASSERT_TRUE(raw_end(&tx, 4) && raw_end(&rx, 64)) << std::strerror(errno);
  post_recvs(rx.qp, rx.mr, 64);
  ASSERT_NE(flow(rx.qp, udp_rule(4791, 0)), nullptr);
  ibv_flow_attr all{};
  all.type = IBV_FLOW_ATTR_NORMAL;
  all.size = sizeof all;
  all.priority = 1;
  all.port = 1;
  ibv_flow* f = ibv_create_flow(rx.qp, &all);
  ASSERT_NE(f, nullptr) << std::strerror(errno);
  flows.push_back(f);

  // RoCE: an RC pair moves 16 SENDs (and their ACKs) over the port.
  Rc rc;
  ASSERT_NO_FATAL_FAILURE(rc_start(&rc, 16, 256));
  ASSERT_NO_FATAL_FAILURE(rc_finish(rc, 16, 256));
  // Then one non-RoCE frame: the first and only thing the raw QP receives.
  send_frame(tx, 0, udp_frame(mac, ip_be, 9999, 0x77));
  EXPECT_EQ(recv_tag(rx.cq, rx.mr), 0x77);
  EXPECT_EQ(pending(rx.cq), 0);
}

// ---------------------------------------------------------------- misuse
TEST_F(Fixture, FlowMisuse) {
  ibv_cq* c = cq();
  ASSERT_NE(c, nullptr);
  ibv_qp* rq = raw_qp(c);
  ASSERT_NE(rq, nullptr);
  // A rule on a QP that is not a raw packet QP: EINVAL.
  ibv_qp_init_attr init = small_qp(IBV_QPT_UD, c);
  ibv_qp* ud = ibv_create_qp(pd, &init);
  ASSERT_NE(ud, nullptr);
  qps.push_back(ud);
  FlowReq r = udp_rule(5000, 0);
  errno = 0;
  EXPECT_EQ(ibv_create_flow(ud, &r.attr), nullptr);
  EXPECT_EQ(errno, EINVAL);

  auto expect = [&](FlowReq bad, int err, const char* what) {
    errno = 0;
    ibv_flow* f = ibv_create_flow(rq, &bad.attr);
    EXPECT_EQ(f, nullptr) << what;
    EXPECT_EQ(errno, err) << what;
    if (f) flows.push_back(f);
  };
  FlowReq b = r;
  b.attr.type = IBV_FLOW_ATTR_SNIFFER;
  expect(b, EOPNOTSUPP, "sniffer");
  b = r;
  b.attr.type = IBV_FLOW_ATTR_ALL_DEFAULT;
  expect(b, EOPNOTSUPP, "all default");
  b = r;
  b.attr.type = IBV_FLOW_ATTR_MC_DEFAULT;
  expect(b, EOPNOTSUPP, "mc default");
  b = r;
  b.attr.flags = IBV_FLOW_ATTR_FLAGS_DONT_TRAP;
  expect(b, EOPNOTSUPP, "dont trap");
  b = r;
  b.attr.port = 2;
  expect(b, EINVAL, "port 2");
  b = r;
  b.attr.comp_mask = 1;
  expect(b, EINVAL, "comp_mask");
  b = r;
  b.ipv4.type = ibv_flow_spec_type(IBV_FLOW_SPEC_IPV4_EXT);
  expect(b, EOPNOTSUPP, "ipv4_ext spec");
  b = r;
  b.udp.type = ibv_flow_spec_type(IBV_FLOW_SPEC_UDP | IBV_FLOW_SPEC_INNER);
  expect(b, EOPNOTSUPP, "inner spec");
  b = r;
  b.udp.type = ibv_flow_spec_type(0x77);
  expect(b, EINVAL, "unknown spec");
  b = r;
  b.eth.size = sizeof b.eth - 2;
  expect(b, EINVAL, "spec size");
  b = r;
  b.attr.size = 0;  // ignored, as rdma-core ignores it: the specs say their sizes
  ibv_flow* sized = ibv_create_flow(rq, &b.attr);
  EXPECT_NE(sized, nullptr) << std::strerror(errno);
  if (sized) {
    EXPECT_EQ(ibv_destroy_flow(sized), 0);
  }
  b = r;
  b.ipv4.type = IBV_FLOW_SPEC_ETH;
  b.ipv4.size = sizeof b.eth;
  expect(b, EINVAL, "two ETH specs");

  // A QP a rule steers to cannot be destroyed (EBUSY) until the rule is.
  ibv_flow* f = ibv_create_flow(rq, &r.attr);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(ibv_destroy_qp(rq), EBUSY);
  EXPECT_EQ(ibv_destroy_flow(f), 0);
  EXPECT_EQ(ibv_destroy_qp(rq), 0);
  qps.erase(std::find(qps.begin(), qps.end(), rq));
}

TEST_F(Fixture, RawQpMisuse) {
  ibv_cq* c = cq();
  ASSERT_NE(c, nullptr);
  ibv_mr* m = mr(1 << 16);
  ASSERT_NE(m, nullptr);
  ibv_qp_init_attr init = small_qp(IBV_QPT_RAW_PACKET, c);
  ibv_qp* q = ibv_create_qp(pd, &init);
  ASSERT_NE(q, nullptr);
  qps.push_back(q);
  // RESET→INIT takes the port and nothing a RoCE QP would (Q_Key, P_Key, access).
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  at.qkey = 1;
  EXPECT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE), EINVAL);  // no port
  EXPECT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_QKEY), EINVAL);
  EXPECT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PORT | IBV_QP_PKEY_INDEX), EINVAL);
  ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PORT), 0);
  at.qp_state = IBV_QPS_RTR;
  at.dest_qp_num = 5;
  EXPECT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_DEST_QPN), EINVAL);
  ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE), 0);
  at.qp_state = IBV_QPS_RTS;
  at.sq_psn = 1;
  EXPECT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_SQ_PSN), EINVAL);
  ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE), 0);

  ibv_device_attr da;
  ASSERT_EQ(ibv_query_device(ctx, &da), 0);
  auto post = [&](uint32_t len, ibv_wr_opcode op, unsigned flags) {
    ibv_sge s{uint64_t(uintptr_t(m->addr)), len, m->lkey};
    ibv_send_wr wr{}, *bad = nullptr;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.opcode = op;
    wr.send_flags = flags;
    return ibv_post_send(q, &wr, &bad);
  };
  EXPECT_EQ(post(13, IBV_WR_SEND, 0), EINVAL);       // shorter than an Ethernet header
  EXPECT_EQ(post(1 << 15, IBV_WR_SEND, 0), EINVAL);  // longer than the port's frames
  EXPECT_EQ(post(64, IBV_WR_SEND_WITH_IMM, 0), EINVAL);
  EXPECT_EQ(post(64, IBV_WR_RDMA_WRITE, 0), EINVAL);

  // An SRQ is not supported for raw packet QPs.
  ibv_srq_init_attr sa{};
  sa.attr.max_wr = 4;
  sa.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(pd, &sa);
  ASSERT_NE(srq, nullptr);
  init.srq = srq;
  errno = 0;
  EXPECT_EQ(ibv_create_qp(pd, &init), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);
  ibv_destroy_srq(srq);
}

// ibv_create_qp(3): a raw packet QP needs CAP_NET_RAW (embedded: this process's; daemon:
// dverbsd reads the client's). Dropped from the effective set, creation fails with EPERM.
TEST_F(Fixture, RawQpNeedsCapNetRaw) {
  if (!set_net_raw(false)) GTEST_SKIP() << "CAP_NET_RAW is not in the permitted set";
  ibv_cq* c = cq();
  ASSERT_NE(c, nullptr);
  ibv_qp_init_attr init = small_qp(IBV_QPT_RAW_PACKET, c);
  errno = 0;
  ibv_qp* q = ibv_create_qp(pd, &init);
  const int err = errno;
  ASSERT_TRUE(set_net_raw(true));
  if (q) qps.push_back(q);
  EXPECT_EQ(q, nullptr);
  EXPECT_EQ(err, EPERM);
  // With the capability back, the same call works.
  q = ibv_create_qp(pd, &init);
  ASSERT_NE(q, nullptr);
  qps.push_back(q);
}

}  // namespace
