#include "harness.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include <rte_eth_ring.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include "pmd/hca/engine.h"
#include "pmd/net/config.h"
#include "pmd/net/eal.h"
#include "pmd/net/lcore.h"
#include "pmd/net/neigh.h"

namespace dverbs::pmd::hca {

// The test peer of Device (friend, device.h): stops the inline-progress helper thread so
// that only the test thread runs the engine.
struct DeviceTestPeer {
  static void stop_inline_helper(Device& d) {
    if (d.inline_helper_) d.inline_helper_->stop();
  }
};

}  // namespace dverbs::pmd::hca

namespace dverbs::proto {

namespace wire = pmd::wire;

namespace {

constexpr const char* kPortName = "dvproto";  // ethdev "net_ring_dvproto"
constexpr unsigned kRingSize = 1024;

std::string hex(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "%#x", v);
  return b;
}

Frame decode(const std::vector<uint8_t>& raw) {
  Frame f;
  wire::Packet p;
  f.err = wire::parse_frame(raw.data(), uint32_t(raw.size()), &p, true);
  if (f.err != wire::ParseError::ok) return f;
  f.opcode = p.opcode;
  f.dest_qp = p.dest_qp;
  f.psn = p.psn;
  f.ack_req = p.bth->ack_request();
  f.se = p.bth->se();
  f.pad = p.bth->pad_count();
  std::memcpy(f.src_mac, p.src_mac, 6);
  std::memcpy(f.dst_mac, p.dst_mac, 6);
  f.src_ip = p.src_ip;
  f.dst_ip = p.dst_ip;
  if (p.aeth) {
    f.has_aeth = true;
    f.syndrome = p.aeth->syndrome;
    f.msn = p.aeth->msn_value();
  }
  if (p.reth) {
    f.has_reth = true;
    f.va = p.reth->vaddr();
    f.rkey = p.reth->r_key();
    f.dma_len = p.reth->length();
  }
  if (p.atomic_eth) {
    f.has_atomic_eth = true;
    f.va = p.atomic_eth->vaddr();
    f.rkey = p.atomic_eth->r_key();
    f.swap_add = p.atomic_eth->swap_add_data();
    f.compare = p.atomic_eth->compare_data();
  }
  if (p.atomic_ack) {
    f.has_atomic_ack = true;
    f.orig = p.atomic_ack->orig_value();
  }
  if (p.deth) {
    f.has_deth = true;
    f.qkey = p.deth->q_key();
    f.src_qp = p.deth->sqpn();
  }
  if (p.info->flags & wire::opf::kImm) {
    f.has_imm = true;
    f.imm_be = p.imm_data;
  }
  if (p.xrceth) {
    f.has_xrceth = true;
    f.xrc_srqn = p.xrceth->srq_num();
  }
  f.payload.assign(p.payload, p.payload + p.payload_len);
  return f;
}

}  // namespace

// ---------------------------------------------------------------- Frame

std::string Frame::describe() const {
  std::ostringstream os;
  if (err != wire::ParseError::ok) {
    os << "<unparsable frame: " << wire::parse_error_str(err) << ">";
    return os.str();
  }
  os << wire::opcode_info(opcode).name << " dqp=" << hex(dest_qp) << " psn=" << hex(psn);
  if (ack_req) os << " A";
  if (se) os << " SE";
  if (has_aeth) {
    static const char* kType[] = {"ACK", "RNR", "RSVD", "NAK"};
    os << " aeth=" << kType[int(aeth_type())] << "/" << int(aeth_value()) << " msn=" << msn;
  }
  if (has_reth)
    os << " reth(va=" << hex(uint32_t(va)) << " rkey=" << hex(rkey) << " len=" << dma_len << ")";
  if (has_atomic_eth) os << " atomic(swap_add=" << swap_add << " cmp=" << compare << ")";
  if (has_atomic_ack) os << " orig=" << orig;
  if (has_deth) os << " deth(qkey=" << hex(qkey) << " sqp=" << hex(src_qp) << ")";
  if (has_imm) os << " imm=" << hex(imm_be);
  os << " payload=" << payload.size();
  return os.str();
}

void PrintTo(const Frame& f, std::ostream* os) {
  *os << f.describe();
}

std::string describe(const std::vector<Frame>& frames) {
  std::string s = std::to_string(frames.size()) + " frame(s)";
  for (const Frame& f : frames) s += "\n    " + f.describe();
  return s;
}

std::string describe(const Wc& wc) {
  std::ostringstream os;
  os << "wr_id=" << wc.wr_id << " " << wc_status_str(wc.status) << " opcode=" << int(wc.opcode)
     << " byte_len=" << wc.byte_len << " imm=" << hex(wc.imm_data) << " flags=" << wc.wc_flags
     << " qp=" << hex(wc.qp_num) << " src_qp=" << hex(wc.src_qp);
  return os.str();
}

std::string describe(const std::vector<Wc>& wcs) {
  std::string s = std::to_string(wcs.size()) + " completion(s)";
  for (const Wc& w : wcs) s += "\n    " + describe(w);
  return s;
}

// ---------------------------------------------------------------- assertions

namespace {
::testing::AssertionResult check_aeth_frame(const Frame& f, uint32_t psn) {
  // RC's ACK, or XRC's (xrc_test checks which).
  const bool ack_op = f.opcode == (op::kRc | op::kAck) || f.opcode == (op::kXrc | op::kAck);
  if (f.err != wire::ParseError::ok || !ack_op || !f.has_aeth ||
      f.dest_qp != kPeerQpn || f.psn != psn)
    return ::testing::AssertionFailure() << "expected RC_ACKNOWLEDGE dqp=" << hex(kPeerQpn)
                                         << " psn=" << hex(psn) << ", got " << f.describe();
  return ::testing::AssertionSuccess();
}
}  // namespace

::testing::AssertionResult IsAck(const Frame& f, uint32_t psn, uint32_t msn) {
  if (auto r = check_aeth_frame(f, psn); !r) return r;
  if (f.aeth_type() != AethType::ack || f.msn != msn)
    return ::testing::AssertionFailure() << "expected ACK msn=" << msn << ", got " << f.describe();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult IsNak(const Frame& f, NakCode code, uint32_t psn) {
  if (auto r = check_aeth_frame(f, psn); !r) return r;
  if (f.aeth_type() != AethType::nak || f.aeth_value() != uint8_t(code))
    return ::testing::AssertionFailure()
           << "expected NAK code " << int(code) << ", got " << f.describe();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult IsRnrNak(const Frame& f, uint8_t timer, uint32_t psn) {
  if (auto r = check_aeth_frame(f, psn); !r) return r;
  if (f.aeth_type() != AethType::rnr_nak || f.aeth_value() != timer)
    return ::testing::AssertionFailure()
           << "expected RNR NAK timer " << int(timer) << ", got " << f.describe();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult IsPacket(const Frame& f, uint8_t opcode, uint32_t psn,
                                    uint32_t payload_len) {
  if (f.err != wire::ParseError::ok || f.opcode != opcode || f.dest_qp != kPeerQpn ||
      f.psn != psn || f.payload.size() != payload_len)
    return ::testing::AssertionFailure()
           << "expected " << wire::opcode_info(opcode).name << " dqp=" << hex(kPeerQpn)
           << " psn=" << hex(psn) << " payload=" << payload_len << ", got " << f.describe();
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------- Harness

Harness& Harness::get() {
  // Never destroyed: the device (owned by the driver) drains this port's rings at exit.
  static Harness* h = [] {
    auto* x = new Harness();
    x->open();
    return x;
  }();
  return *h;
}

void Harness::open() {
  setenv("DVERBS_LCORES", "0", 1);
  setenv("DVERBS_PORT", (std::string("net_ring_") + kPortName).c_str(), 1);
  for (const char* v : {"DVERBS_FAULT", "DVERBS_PCAP", "DVERBS_IP", "DVERBS_MAC"}) unsetenv(v);
  pmd::net::Config cfg;
  if (!pmd::net::config_from_env(&cfg, &error_)) return;
  if (pmd::net::eal_init(cfg, &error_) != 0) return;
  // The port the device will open: RX and TX are separate rings that the test owns.
  rx_ = rte_ring_create("dvproto_rx", kRingSize, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
  tx_ = rte_ring_create("dvproto_tx", kRingSize, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
  if (!rx_ || !tx_) {
    error_ = "cannot create the harness rings";
    return;
  }
  if (rte_eth_from_rings(kPortName, &rx_, 1, &tx_, 1, rte_socket_id()) < 0) {
    error_ = "rte_eth_from_rings failed";
    return;
  }
  auto c = Context::open();
  if (!c) {
    error_ = std::string("Context::open: ") + std::strerror(c.error());
    return;
  }
  ctx_ = c.take();
  dev_ = static_cast<pmd::hca::Device*>(ctx_.raw());
  if (dev_->port().name().find(kPortName) == std::string::npos || !dev_->inline_progress() ||
      dev_->engine_count() != 1) {
    error_ = "the device did not open the harness port in inline-progress mode";
    return;
  }
  pmd::hca::DeviceTestPeer::stop_inline_helper(*dev_);
  pd_ = Pd::alloc(ctx_).take();

  our_ip_ = dev_->port().ip();
  std::memcpy(our_mac_, dev_->port().mac(), 6);
  peer_ip_ = (our_ip_ & ~0xffu) | ((our_ip_ & 0xff) == 0x42 ? 0x43 : 0x42);
  static constexpr uint8_t kPeerMac[6] = {0x02, 0x00, 0x5e, 0x10, 0x00, 0x42};
  std::memcpy(peer_mac_, kPeerMac, 6);

  // The peer announces itself (an ARP request for our address), so the requester of a QP
  // connected to it has its MAC and never waits for address resolution.
  inject_arp_from_peer();
  poll(2);
  reset_io();
  if (dev_->neigh().state(peer_ip_) != pmd::net::NeighTable::State::kReachable) {
    error_ = "the fake peer's ARP was not learnt";
    return;
  }
  ready_ = true;
}

void Harness::inject_arp_from_peer() { inject_arp(peer_ip_, peer_mac_, false); }

void Harness::inject_arp(uint32_t ip, const uint8_t mac[6], bool reply) {
  std::vector<uint8_t> f(60, 0);
  if (reply)
    std::memcpy(f.data(), our_mac_, 6);
  else
    std::memset(f.data(), 0xff, 6);
  std::memcpy(f.data() + 6, mac, 6);
  wire::store_be16(f.data() + 12, 0x0806);
  uint8_t* a = f.data() + 14;
  wire::store_be16(a, 1);  // Ethernet
  wire::store_be16(a + 2, 0x0800);
  a[4] = 6;
  a[5] = 4;
  wire::store_be16(a + 6, reply ? 2 : 1);
  std::memcpy(a + 8, mac, 6);
  wire::store_be32(a + 14, ip);
  if (reply) std::memcpy(a + 18, our_mac_, 6);
  wire::store_be32(a + 24, our_ip_);
  inject({f});
}

Gid Harness::gid_of(uint32_t ip) {
  Gid g{};
  g.raw[10] = g.raw[11] = 0xff;
  wire::store_be32(g.raw + 12, ip);
  return g;
}

Gid Harness::peer_gid() const { return gid_of(peer_ip_); }

std::vector<uint8_t> Harness::build(const Pkt& p) const {
  const wire::OpcodeInfo& info = wire::opcode_info(p.opcode);
  const uint32_t f = info.flags;
  const uint32_t plen = uint32_t(p.payload.size());
  const uint8_t pad = (f & wire::opf::kPayload) ? wire::pad_for(plen) : 0;
  const uint32_t len = wire::headers_len(p.opcode) + plen + pad + wire::kIcrcLen;
  std::vector<uint8_t> frame(len, 0);
  wire::FrameAddr a{};
  std::memcpy(a.src_mac, p.src_mac ? p.src_mac : peer_mac_, 6);
  std::memcpy(a.dst_mac, p.dst_mac ? p.dst_mac : our_mac_, 6);
  a.src_ip = p.src_ip ? p.src_ip : peer_ip_;
  a.dst_ip = p.dst_ip ? p.dst_ip : our_ip_;
  a.udp_sport = 0xc123;
  a.ttl = 64;
  a.tos = p.tos;
  wire::BthFields b{};
  b.opcode = p.opcode;
  b.se = p.se;
  b.ack_req = p.ack_req;
  b.pad = pad;
  b.pkey = wire::kDefaultPkey;
  b.dest_qp = p.dest_qp;
  b.psn = p.psn;
  uint8_t* ext = wire::write_headers(frame.data(), a, b, plen);
  using namespace wire::opf;
  if (f & kDeth) wire::write_deth(ext + wire::ext_offset(f, kDeth), p.qkey, p.src_qp);
  if (f & kXrceth) wire::write_xrceth(ext + wire::ext_offset(f, kXrceth), p.xrc_srqn);
  if (f & kFeth)
    wire::write_feth(ext + wire::ext_offset(f, kFeth), p.flush_type, p.flush_level);
  if (f & kReth) wire::write_reth(ext + wire::ext_offset(f, kReth), p.va, p.rkey, p.dma_len);
  if (f & kAtomicEth)
    wire::write_atomic_eth(ext + wire::ext_offset(f, kAtomicEth), p.va, p.rkey, p.swap_add,
                           p.compare);
  if (f & kAeth) wire::write_aeth(ext + wire::ext_offset(f, kAeth), p.syndrome, p.msn);
  if (f & kAtomicAckEth)
    wire::write_atomic_ack_eth(ext + wire::ext_offset(f, kAtomicAckEth), p.orig);
  if (f & kImm) wire::write_immdt(ext + wire::ext_offset(f, kImm), p.imm_be);
  if (f & kIeth) wire::write_ieth(ext + wire::ext_offset(f, kIeth), p.ieth_rkey);
  if (plen) std::memcpy(ext + info.ext_len, p.payload.data(), plen);
  wire::finish_frame(frame.data(), len);
  return frame;
}

void Harness::inject(const std::vector<std::vector<uint8_t>>& frames) {
  std::vector<rte_mbuf*> ms;
  for (const auto& f : frames) {
    rte_mbuf* m = rte_pktmbuf_alloc(dev_->port().pool());
    char* d = m ? rte_pktmbuf_append(m, uint16_t(f.size())) : nullptr;
    if (!d) {
      ADD_FAILURE() << "cannot build an mbuf of " << f.size() << " bytes";
      if (m) rte_pktmbuf_free(m);
      continue;
    }
    std::memcpy(d, f.data(), f.size());
    ms.push_back(m);
  }
  if (ms.empty()) return;
  if (rte_ring_enqueue_bulk(rx_, reinterpret_cast<void**>(ms.data()), unsigned(ms.size()),
                            nullptr) != ms.size()) {
    ADD_FAILURE() << "the harness RX ring is full";
    for (rte_mbuf* m : ms) rte_pktmbuf_free(m);
  }
}

void Harness::inject(const std::vector<Pkt>& ps) {
  std::vector<std::vector<uint8_t>> frames;
  for (const Pkt& p : ps) frames.push_back(build(p));
  inject(frames);
}

void Harness::poll(int rounds) {
  for (int i = 0; i < rounds; i++) dev_->engine(0).try_poll();
}

bool Harness::poll_until(const std::function<bool()>& pred, uint64_t max_rounds) {
  for (uint64_t i = 0; i < max_rounds; i++) {
    if (pred()) return true;
    dev_->engine(0).try_poll();
  }
  return pred();
}

void Harness::drain_tx() {
  void* objs[64];
  unsigned n;
  while ((n = rte_ring_dequeue_burst(tx_, objs, 64, nullptr)) > 0) {
    for (unsigned i = 0; i < n; i++) {
      auto* m = static_cast<rte_mbuf*>(objs[i]);
      std::vector<uint8_t> raw;
      raw.reserve(m->pkt_len);
      for (rte_mbuf* s = m; s; s = s->next) {
        const uint8_t* d = rte_pktmbuf_mtod(s, const uint8_t*);
        raw.insert(raw.end(), d, d + s->data_len);
      }
      rte_pktmbuf_free(m);
      if (raw.size() >= 14 && wire::load_be16(raw.data() + 12) == 0x0806) {
        arp_seen_++;
        continue;
      }
      pending_.push_back(decode(raw));
    }
  }
}

std::vector<Frame> Harness::take_sent() {
  drain_tx();
  std::vector<Frame> out;
  out.swap(pending_);
  return out;
}

size_t Harness::sent_pending() {
  drain_tx();
  return pending_.size();
}

Counters Harness::counters() const {
  auto& c = dev_->counters();
  return Counters{c.rx_packets.load(),   c.rx_no_qp.load(),    c.rx_bad_state.load(),
                  c.rx_bad_frame.load(), c.rx_bad_icrc.load(), c.rx_non_roce.load(),
                  c.rx_not_for_us.load()};
}

void Harness::reset_io() {
  void* objs[64];
  unsigned n;
  while ((n = rte_ring_dequeue_burst(rx_, objs, 64, nullptr)) > 0)
    for (unsigned i = 0; i < n; i++) rte_pktmbuf_free(static_cast<rte_mbuf*>(objs[i]));
  drain_tx();
  pending_.clear();
}

// ---------------------------------------------------------------- ProtoTest

void ProtoTest::SetUp() {
  ASSERT_TRUE(h.ready()) << h.error();
  h.reset_io();
  auto c = Cq::create(h.ctx(), 1024);
  ASSERT_TRUE(c) << std::strerror(c.error());
  cq = c.take();
  store_.assign(kBufBytes / 8, 0);
  buf = reinterpret_cast<uint8_t*>(store_.data());
  auto m = Mr::reg(h.pd(), buf, kBufBytes, kAllRemote);
  ASSERT_TRUE(m) << std::strerror(m.error());
  mr = m.take();
}

void ProtoTest::TearDown() {
  if (qp.raw()) qp.destroy();
  if (mr.raw()) mr.destroy();
  if (cq.raw()) cq.destroy();
  if (h.ready()) h.reset_io();
}

void ProtoTest::make_qp(const Conn& c) {
  namespace m = qp_attr_mask;
  QpInit init;
  init.type = c.type;
  init.cap = {c.cap_send, c.cap_recv, 4, 4, 0};
  init.srq = c.srq;
  auto q = Qp::create(h.pd(), cq, cq, init);
  ASSERT_TRUE(q) << std::strerror(q.error());
  qp = q.take();
  if (c.to == QpState::reset) return;
  const bool ud = c.type == QpType::ud, rc = c.type == QpType::rc;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.pkey_index = 0;
  a.qkey = c.qkey;
  a.qp_access_flags = c.access;
  ASSERT_EQ(qp.modify(a, m::state | m::pkey_index | m::port | (ud ? m::qkey : m::access_flags)), 0);
  if (c.to == QpState::init) return;
  a.qp_state = QpState::rtr;
  uint32_t mask = m::state;
  if (!ud) {
    a.path_mtu = c.mtu;
    a.dest_qp_num = kPeerQpn;
    a.rq_psn = c.rq_psn;
    a.ah_attr.dgid = c.peer_ip ? Harness::gid_of(c.peer_ip) : h.peer_gid();
    a.ah_attr.port_num = 1;
    a.ah_attr.is_global = true;
    a.max_dest_rd_atomic = c.max_dest_rd_atomic;
    a.min_rnr_timer = c.min_rnr_timer;
    mask |= m::av | m::path_mtu | m::dest_qpn | m::rq_psn;
    if (rc) mask |= m::max_dest_rd_atomic | m::min_rnr_timer;
  }
  ASSERT_EQ(qp.modify(a, mask), 0);
  if (c.to == QpState::rtr) return;
  a.qp_state = QpState::rts;
  a.sq_psn = c.sq_psn;
  a.timeout = c.timeout;
  a.retry_cnt = c.retry_cnt;
  a.rnr_retry = c.rnr_retry;
  a.max_rd_atomic = c.max_rd_atomic;
  mask = m::state | m::sq_psn;
  if (rc) mask |= m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic;
  ASSERT_EQ(qp.modify(a, mask), 0);
  // modify_qp kicks the QP on RTS; let the engine see it so later polls start clean.
  h.poll();
}

std::vector<uint8_t> ProtoTest::pattern(uint32_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (uint32_t i = 0; i < len; i++) v[i] = uint8_t(seed + i * 7 + (i >> 8));
  return v;
}

void ProtoTest::fill(uint32_t off, uint32_t len, uint8_t seed) {
  auto v = pattern(len, seed);
  std::memcpy(buf + off, v.data(), len);
}

std::vector<uint8_t> ProtoTest::bytes(uint32_t off, uint32_t len) const {
  return std::vector<uint8_t>(buf + off, buf + off + len);
}

void ProtoTest::post_recv(uint64_t wr_id, uint32_t off, uint32_t len) {
  Sge s{addr(off), len, mr.lkey()};
  RecvWr r{};
  r.wr_id = wr_id;
  r.sg_list = &s;
  r.num_sge = 1;
  RecvWr* bad = nullptr;
  ASSERT_EQ(qp.post_recv(&r, &bad), 0);
}

SendWr ProtoTest::wr(uint64_t wr_id, WrOpcode opcode, uint32_t off, uint32_t len, bool signaled) {
  Sge& s = sges_[nsges_++ % 64];
  s = Sge{addr(off), len, mr.lkey()};
  SendWr w{};
  w.wr_id = wr_id;
  w.opcode = opcode;
  w.sg_list = len ? &s : nullptr;
  w.num_sge = len ? 1 : 0;
  w.send_flags = signaled ? send_flags::signaled : 0;
  return w;
}

void ProtoTest::post(std::vector<SendWr> wrs) {
  if (wrs.empty()) return;
  for (size_t i = 0; i < wrs.size(); i++) wrs[i].next = i + 1 < wrs.size() ? &wrs[i + 1] : nullptr;
  SendWr* bad = nullptr;
  ASSERT_EQ(qp.post_send(&wrs[0], &bad), 0);
}

size_t ProtoTest::wc_pending() {
  auto* c = pmd::hca::to_cq(cq.raw());
  pmd::hca::Cqe e;
  while (c->ring->pop(&e)) wc_buf_.push_back(e.wc);
  return wc_buf_.size();
}

std::vector<Wc> ProtoTest::wcs() {
  wc_pending();
  std::vector<Wc> out;
  out.swap(wc_buf_);
  return out;
}

Pkt ProtoTest::pkt(uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload) const {
  Pkt p;
  p.opcode = opcode;
  p.dest_qp = qpn();
  p.psn = psn & wire::kPsnMask;
  p.payload = std::move(payload);
  return p;
}

Pkt ProtoTest::ack(uint32_t psn, uint32_t msn, uint8_t syndrome) const {
  Pkt p = pkt(op::kRc | op::kAck, psn);
  p.syndrome = syndrome;
  p.msn = msn;
  return p;
}

Pkt ProtoTest::nak(NakCode code, uint32_t psn, uint32_t msn) const {
  return ack(psn, msn, wire::make_syndrome(AethType::nak, uint8_t(code)));
}

Pkt ProtoTest::rnr_nak(uint8_t timer, uint32_t psn, uint32_t msn) const {
  return ack(psn, msn, wire::make_syndrome(AethType::rnr_nak, timer));
}

Pkt ProtoTest::read_resp(uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload,
                         uint32_t msn) const {
  Pkt p = pkt(op::kRc | opcode, psn, std::move(payload));
  p.syndrome = wire::make_syndrome(AethType::ack, wire::kCreditsInvalid);
  p.msn = msn;
  return p;
}

Pkt ProtoTest::atomic_ack(uint32_t psn, uint64_t orig, uint32_t msn) const {
  Pkt p = pkt(op::kRc | op::kAtomicAck, psn);
  p.syndrome = wire::make_syndrome(AethType::ack, wire::kCreditsInvalid);
  p.msn = msn;
  p.orig = orig;
  return p;
}

SendWr ProtoTest::read_wr(uint64_t wr_id, uint32_t off, uint32_t len, uint64_t remote_va,
                          uint32_t rkey) {
  SendWr w = wr(wr_id, WrOpcode::rdma_read, off, len);
  w.wr.rdma.remote_addr = remote_va;
  w.wr.rdma.rkey = rkey;
  return w;
}

SendWr ProtoTest::write_wr(uint64_t wr_id, uint32_t off, uint32_t len, uint64_t remote_va,
                           uint32_t rkey) {
  SendWr w = wr(wr_id, WrOpcode::rdma_write, off, len);
  w.wr.rdma.remote_addr = remote_va;
  w.wr.rdma.rkey = rkey;
  return w;
}

SendWr ProtoTest::atomic_wr(uint64_t wr_id, WrOpcode opcode, uint32_t off, uint64_t remote_va,
                            uint64_t compare_add, uint64_t swap, uint32_t rkey) {
  SendWr w = wr(wr_id, opcode, off, 8);
  w.wr.atomic.remote_addr = remote_va;
  w.wr.atomic.compare_add = compare_add;
  w.wr.atomic.swap = swap;
  w.wr.atomic.rkey = rkey;
  return w;
}

std::vector<Frame> ProtoTest::exchange(const std::vector<Pkt>& ps) {
  h.inject(ps);
  h.poll();
  return h.take_sent();
}

void ProtoTest::expect_wc(const Wc& wc, uint64_t wr_id, WcStatus st, WcOpcode opc) {
  EXPECT_EQ(wc.wr_id, wr_id) << describe(wc);
  EXPECT_EQ(wc.status, st) << describe(wc);
  if (st == WcStatus::success) {
    EXPECT_EQ(wc.opcode, opc) << describe(wc);
  }
  EXPECT_EQ(wc.qp_num, qpn()) << describe(wc);
}

std::vector<Frame> ProtoTest::wait_frames(size_t n) {
  h.poll_until([&] { return h.sent_pending() >= n; });
  return h.take_sent();
}

size_t ProtoTest::wait_wcs(size_t n) {
  h.poll_until([&] { return wc_pending() >= n; });
  return wc_pending();
}

}  // namespace dverbs::proto
