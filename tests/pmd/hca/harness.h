// Packet-injection harness of the `protocol` suite: one soft HCA on a port whose RX and TX
// are two separate rte_rings that the test owns, driven only by the test thread.
//
// The device is opened through the public API on a net_ring port built by the harness
// (rte_eth_from_rings "dvproto": the test enqueues frames on its RX ring and dequeues what
// the HCA transmitted from its TX ring), in inline-progress mode with the background helper
// stopped (DeviceTestPeer), so the engine runs exactly when the test calls poll(). Nothing
// depends on time except the timer tests, which poll in a bounded loop until the frame or
// completion they wait for appears and assert on what was sent and in what order.
//
// A QP under test is connected to a FAKE peer: a MAC, an IPv4 address and a QPN that exist
// only here. Frames from the peer are built with the wire layer (write_headers, the
// extension-header writers, finish_frame), so they carry a correct ICRC; every frame the HCA
// sends is parsed with parse_frame with the ICRC checked.
//
// Thread safety: everything here runs on the test's main thread. The device, its port and
// the rings live for the whole process (created once, never freed: the device outlives
// every test).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "dverbs/dverbs.h"
#include "pmd/hca/device.h"
#include "pmd/hca/objects.h"
#include "pmd/wire/roce.h"

struct rte_ring;

namespace dverbs::proto {

namespace op = pmd::wire::op;
using pmd::wire::AethType;
using pmd::wire::NakCode;

// The fake peer's QPN; never a QPN of this device (those are generation << 14 | index with
// small indexes), and frames to it never loop back anyway.
constexpr uint32_t kPeerQpn = 0x0badc0;

// One frame the HCA transmitted, decoded into plain values.
struct Frame {
  pmd::wire::ParseError err = pmd::wire::ParseError::ok;
  uint8_t opcode = 0;
  uint32_t dest_qp = 0, psn = 0;
  bool ack_req = false, se = false;
  uint8_t pad = 0;
  uint8_t src_mac[6] = {}, dst_mac[6] = {};
  uint32_t src_ip = 0, dst_ip = 0;
  bool has_aeth = false;
  uint8_t syndrome = 0;
  uint32_t msn = 0;
  bool has_reth = false;
  uint64_t va = 0;
  uint32_t rkey = 0, dma_len = 0;
  bool has_atomic_eth = false;
  uint64_t swap_add = 0, compare = 0;
  bool has_atomic_ack = false;
  uint64_t orig = 0;
  bool has_deth = false;
  uint32_t qkey = 0, src_qp = 0;
  bool has_imm = false;
  uint32_t imm_be = 0;
  bool has_xrceth = false;
  uint32_t xrc_srqn = 0;
  std::vector<uint8_t> payload;

  AethType aeth_type() const { return pmd::wire::aeth_type(syndrome); }
  uint8_t aeth_value() const { return pmd::wire::aeth_value(syndrome); }
  std::string describe() const;
};
void PrintTo(const Frame& f, std::ostream* os);
std::string describe(const std::vector<Frame>& frames);

// A frame from the fake peer. Extension headers are written when the opcode has them.
struct Pkt {
  uint8_t opcode = 0;
  uint32_t dest_qp = 0;
  uint32_t psn = 0;
  bool ack_req = false;
  bool se = false;
  std::vector<uint8_t> payload;
  uint64_t va = 0;  // RETH / AtomicETH
  uint32_t rkey = 0;
  uint32_t dma_len = 0;                // RETH
  uint64_t swap_add = 0, compare = 0;  // AtomicETH
  uint8_t syndrome = 0;                // AETH
  uint32_t msn = 0;
  uint64_t orig = 0;              // AtomicAckETH
  uint32_t qkey = 0, src_qp = 0;  // DETH
  uint32_t imm_be = 0;            // ImmDt, network byte order
  uint32_t ieth_rkey = 0;         // IETH
  uint32_t xrc_srqn = 0;          // XRCETH
  uint8_t flush_type = 0, flush_level = 0;  // FETH (IBA 1.5 FLUSH)
  uint32_t src_ip = 0;            // 0 = the fake peer
  uint32_t dst_ip = 0;            // 0 = the HCA's address
  const uint8_t* src_mac = nullptr;  // nullptr = the fake peer's MAC
  const uint8_t* dst_mac = nullptr;  // nullptr = the HCA's MAC
  uint8_t tos = 0;                   // IPv4 DSCP/ECN (3 in the low bits: ECN CE)
};

// Device counters read at one moment (DeviceCounters holds atomics).
struct Counters {
  uint64_t rx_packets, rx_no_qp, rx_bad_state, rx_bad_frame, rx_bad_icrc, rx_non_roce,
      rx_not_for_us;
};

class Harness {
 public:
  // The process-wide harness; the first call opens the device. When that failed, ready()
  // is false and error() says why (ProtoTest::SetUp fails every test with it).
  // Context: the test thread.
  static Harness& get();

  Context& ctx() { return ctx_; }
  Pd& pd() { return pd_; }
  pmd::hca::Device& dev() { return *dev_; }
  uint32_t our_ip() const { return our_ip_; }
  uint32_t peer_ip() const { return peer_ip_; }
  const uint8_t* our_mac() const { return our_mac_; }
  const uint8_t* peer_mac() const { return peer_mac_; }
  Gid peer_gid() const;
  static Gid gid_of(uint32_t ip);

  // Builds one frame from the fake peer (correct IP checksum and ICRC).
  std::vector<uint8_t> build(const Pkt& p) const;
  // Puts frames on the HCA's RX ring as ONE burst (all visible to the engine at once).
  void inject(const std::vector<std::vector<uint8_t>>& frames);
  void inject(const Pkt& p) { inject({build(p)}); }
  void inject(const std::vector<Pkt>& ps);
  // An ARP request for our address (reply = false) or a reply to us from ip/mac.
  void inject_arp(uint32_t ip, const uint8_t mac[6], bool reply);

  // Runs the engine `rounds` times. Context: the test thread (the only one driving it).
  void poll(int rounds = 1);
  // Polls until pred() holds or max_rounds pass; returns pred(). For timer rules only.
  bool poll_until(const std::function<bool()>& pred, uint64_t max_rounds = 5'000'000);

  // RoCE frames transmitted since the last take (ARP and other non-RoCE frames skipped and
  // counted in arp_seen()). Does not run the engine.
  std::vector<Frame> take_sent();
  // How many RoCE frames wait in take_sent() now (drains the TX ring into the buffer).
  size_t sent_pending();
  uint64_t arp_seen() const { return arp_seen_; }

  Counters counters() const;
  // Drops every frame still queued either way (start of a test).
  void reset_io();
  bool ready() const { return ready_; }
  const std::string& error() const { return error_; }

 private:
  Harness() = default;
  void open();
  void drain_tx();
  void inject_arp_from_peer();

  bool ready_ = false;
  std::string error_;

  Context ctx_;
  Pd pd_;
  pmd::hca::Device* dev_ = nullptr;
  rte_ring* rx_ = nullptr;  // frames to the HCA
  rte_ring* tx_ = nullptr;  // frames from the HCA
  uint32_t our_ip_ = 0, peer_ip_ = 0;
  uint8_t our_mac_[6] = {}, peer_mac_[6] = {};
  std::vector<Frame> pending_;
  uint64_t arp_seen_ = 0;
};

// ---- assertions on transmitted frames (IBA 9.3.5 AETH, 9.7.5.2.8 syndrome) ----
::testing::AssertionResult IsAck(const Frame& f, uint32_t psn, uint32_t msn);
::testing::AssertionResult IsNak(const Frame& f, NakCode code, uint32_t psn);
::testing::AssertionResult IsRnrNak(const Frame& f, uint8_t timer, uint32_t psn);
// Opcode, destination QP, PSN and payload size of a request or response packet.
::testing::AssertionResult IsPacket(const Frame& f, uint8_t opcode, uint32_t psn,
                                    uint32_t payload_len);

// One completion as text, for failure messages.
std::string describe(const Wc& wc);
std::string describe(const std::vector<Wc>& wcs);

// ---- the common fixture: one CQ, one 64 KiB registered buffer, QPs to the fake peer ----
class ProtoTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kBufBytes = 64 * 1024;
  static constexpr uint32_t kAllRemote =
      access::local_write | access::remote_write | access::remote_read | access::remote_atomic;

  // How a QP is connected to the fake peer; defaults keep timers off (timeout 0 = infinite,
  // IBA 9.7.6.1.3) so nothing is sent unless a test asks for it.
  struct Conn {
    QpType type = QpType::rc;
    Mtu mtu = Mtu::mtu256;
    QpState to = QpState::rts;  // stop in RESET, INIT, RTR or RTS
    uint32_t sq_psn = 0x000100;
    uint32_t rq_psn = 0x000200;
    uint32_t access = kAllRemote;  // QP access flags (responder permissions)
    uint8_t timeout = 0;
    uint8_t retry_cnt = 7;
    uint8_t rnr_retry = 7;
    uint8_t min_rnr_timer = 1;
    uint8_t max_rd_atomic = 4;
    uint8_t max_dest_rd_atomic = 4;
    uint32_t qkey = 0x11111111;  // UD
    uint32_t cap_send = 64, cap_recv = 64;
    const Srq* srq = nullptr;  // receives come from this SRQ (QpInit::srq); must outlive qp
    uint32_t peer_ip = 0;      // the peer's IPv4 address; 0 = the fake peer (known by ARP)
  };

  Harness& h = Harness::get();
  Cq cq;
  Qp qp;
  std::vector<uint64_t> store_;  // 8-byte aligned backing of buf
  uint8_t* buf = nullptr;
  Mr mr;

  void SetUp() override;
  void TearDown() override;

  // Creates `qp` and moves it through RESET → INIT → RTR → RTS as far as c.to.
  void make_qp(const Conn& c);
  pmd::hca::Qp& hq() { return *pmd::hca::to_qp(qp.raw()); }
  uint32_t qpn() const { return qp.qp_num(); }
  uint64_t addr(uint32_t off) const { return reinterpret_cast<uint64_t>(buf) + off; }
  void fill(uint32_t off, uint32_t len, uint8_t seed);
  std::vector<uint8_t> bytes(uint32_t off, uint32_t len) const;
  static std::vector<uint8_t> pattern(uint32_t len, uint8_t seed);

  void post_recv(uint64_t wr_id, uint32_t off, uint32_t len);
  // A send WR over buf[off, off+len); the caller sets opcode-specific fields.
  SendWr wr(uint64_t wr_id, WrOpcode opcode, uint32_t off, uint32_t len, bool signaled = true);
  // Posts a chain (each WR's next is set here) and expects success.
  void post(std::vector<SendWr> wrs);
  // Completions produced so far, popped from the CQ ring WITHOUT running the engine.
  std::vector<Wc> wcs();
  // Completions waiting (popped into a buffer that wcs() returns). Does not run the engine.
  size_t wc_pending();

  // Work requests against the fake peer's memory (any address and rkey: it is not checked
  // here, the peer answers whatever the test injects).
  SendWr read_wr(uint64_t wr_id, uint32_t off, uint32_t len, uint64_t remote_va,
                 uint32_t rkey = 0x4321);
  SendWr write_wr(uint64_t wr_id, uint32_t off, uint32_t len, uint64_t remote_va,
                  uint32_t rkey = 0x4321);
  SendWr atomic_wr(uint64_t wr_id, WrOpcode opcode, uint32_t off, uint64_t remote_va,
                   uint64_t compare_add, uint64_t swap = 0, uint32_t rkey = 0x4321);

  // Injects `ps` as one burst, runs the engine once and returns what was sent.
  std::vector<Frame> exchange(const std::vector<Pkt>& ps);
  std::vector<Frame> exchange(const Pkt& p) { return exchange(std::vector<Pkt>{p}); }
  // A completion of `qp`: wr_id, status, and the opcode when it succeeded (a flushed or
  // failed completion's opcode is undefined, IBA 11.4.2.1).
  void expect_wc(const Wc& wc, uint64_t wr_id, WcStatus st, WcOpcode opc);

  // Runs the engine until at least n frames were sent (bounded; timer rules), then takes
  // every frame sent so far.
  std::vector<Frame> wait_frames(size_t n);
  // Runs the engine until at least n completions are waiting (bounded); returns wc_pending().
  size_t wait_wcs(size_t n);

  // A request/response frame from the fake peer to `qp`.
  Pkt pkt(uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload = {}) const;
  Pkt ack(uint32_t psn, uint32_t msn, uint8_t syndrome = 0x1f) const;
  Pkt nak(NakCode code, uint32_t psn, uint32_t msn = 0) const;
  Pkt rnr_nak(uint8_t timer, uint32_t psn, uint32_t msn = 0) const;
  // READ RESPONSE FIRST/MIDDLE/LAST/ONLY (AETH "ACK" where the opcode has one).
  Pkt read_resp(uint8_t opcode, uint32_t psn, std::vector<uint8_t> payload, uint32_t msn) const;
  Pkt atomic_ack(uint32_t psn, uint64_t orig, uint32_t msn) const;

  std::vector<Wc> wc_buf_;
  Sge sges_[64] = {};  // scatter/gather entries of the WRs built by wr(), reused in turn
  uint32_t nsges_ = 0;
};

}  // namespace dverbs::proto
