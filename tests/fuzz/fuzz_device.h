// The deterministic soft HCA the fuzz harnesses drive (rx_fuzz, wr_fuzz, gen_corpus).
//
// One device per process on a net_ring port whose RX and TX rings the harness owns
// (rte_eth_from_rings "dvfuzz"), in inline-progress mode with the background helper stopped:
// the engine runs only when the harness calls it (Engine::receive, Engine::try_poll, or a
// post_send's own progress call), so one input always produces the same execution.
//
// Frames reach the transport through Engine::receive() only; what the HCA transmits lands
// on the TX ring, from which pump() either drops it or feeds it back in (loopback), so every
// received frame is one the harness counted. The frame accounting invariant (checked by
// counters_consistent) is: every non-ARP frame handed to the engine lands in exactly one of
// the device's receive counters.
//
// Region: a registered buffer between two PROT_NONE guard pages with canary bytes on both
// sides of the registered range, so a write outside a region is a SEGV (guard) or a canary
// mismatch (slack), whatever the sanitizer.
//
// Thread safety: everything runs on the fuzzing thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/objects.h"

struct rte_ring;
struct rte_mbuf;

namespace dverbs::fuzz {

// A guarded buffer: [guard page][kSlack canary][len registered bytes][canary…][guard page].
class Region {
 public:
  static constexpr size_t kSlack = 64;
  static constexpr uint8_t kCanary = 0xc5;
  Region() = default;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();
  // Maps the region (aborts on failure); the registered bytes are zeroed.
  void init(size_t len);
  uint8_t* data() const { return data_; }
  size_t size() const { return len_; }
  uint64_t addr(size_t off = 0) const { return reinterpret_cast<uint64_t>(data_) + off; }
  // True if every canary byte is intact; *where gets the first bad offset relative to data().
  bool canaries_ok(long* where = nullptr) const;
  // Makes the whole mapping inaccessible (PROT_NONE) or accessible again.
  void protect(bool inaccessible);

 private:
  uint8_t* map_ = nullptr;
  size_t map_len_ = 0;
  uint8_t* data_ = nullptr;
  size_t len_ = 0;
  uint8_t* lo_ = nullptr;  // first canary byte
  uint8_t* hi_ = nullptr;  // one past the last canary byte
};

// Device receive counters at one moment.
struct RxCounters {
  uint64_t rx_packets = 0, rx_bad_frame = 0, rx_bad_icrc = 0, rx_non_roce = 0, rx_no_qp = 0;
  uint64_t rx_bad_state = 0, rx_not_for_us = 0;
  uint64_t rx_raw = 0, rx_raw_dropped = 0;  // frames a flow rule steered (raw packet QPs)
};

class FuzzDevice {
 public:
  // The process-wide device, opened on first use. Aborts with a message if it cannot be.
  static FuzzDevice& get();

  Context& ctx() { return ctx_; }
  pmd::hca::Device& dev() { return *dev_; }
  pmd::hca::Engine& engine() { return dev_->engine(0); }
  uint32_t ip() const { return ip_; }
  const uint8_t* mac() const { return mac_; }
  Gid gid() const;
  // Largest frame one mbuf of the port's pool holds.
  uint32_t max_frame() const { return max_frame_; }

  // An mbuf holding a copy of `len` bytes (nullptr if it does not fit or the pool is empty).
  // With split > 0 and split < len, the frame is a chain of two segments cut at `split`.
  rte_mbuf* make_mbuf(const uint8_t* data, uint32_t len, uint32_t split = 0);
  // Hands frames to Engine::receive (which takes them) and counts them.
  void receive(rte_mbuf** ms, uint16_t n);
  void receive_copy(const std::vector<std::vector<uint8_t>>& frames, bool one_burst);

  // Runs the engine `rounds` times; after each round the frames the HCA sent are fed back
  // into the receive path (forward = true) or dropped. At most max_forward frames are fed
  // back per call (the rest are dropped). Returns the frames the HCA sent.
  size_t pump(int rounds, bool forward, size_t max_forward = SIZE_MAX);
  // Drops every frame waiting on the TX ring. Returns how many.
  size_t drop_tx();
  // Moves every frame waiting on the TX ring to *out (the caller owns them).
  void take_tx(std::vector<rte_mbuf*>* out);

  RxCounters counters() const;
  // Checks the frame accounting since the last call (see the file comment); false and a
  // reason when it does not hold. Resets the baseline.
  bool counters_consistent(std::string* why);

 private:
  FuzzDevice() = default;
  void open();
  bool is_arp(const rte_mbuf* m) const;

  Context ctx_;
  pmd::hca::Device* dev_ = nullptr;
  rte_ring* rx_ = nullptr;
  rte_ring* tx_ = nullptr;
  uint32_t ip_ = 0;
  uint8_t mac_[6] = {};
  uint32_t max_frame_ = 0;
  bool no_qp_in_packets_ = true;  // whether rx_packets also counts frames for unknown QPs
  // accounting since the last counters_consistent()
  uint64_t fed_ = 0, fed_arp_ = 0;
  RxCounters base_{};
};

// RESET → INIT → RTR → RTS of a connected QP toward (the device's own GID, remote_qpn).
// timeout 0 = no retransmission timer (deterministic). Returns 0 or the failing errno.
int connect_qp(Qp& qp, QpType type, uint32_t remote_qpn, uint32_t sq_psn, uint32_t rq_psn,
               uint32_t access, Mtu mtu, uint8_t timeout = 0, uint8_t rnr_retry = 7,
               uint8_t max_rd_atomic = 4);
// The same for a midlayer QP (an XRC_RECV QP, which the C++ API does not make): RC's
// sequence with XRC's attributes (no requester attributes at RTS).
int connect_qp(mid::Qp* qp, QpType type, uint32_t remote_qpn, uint32_t sq_psn, uint32_t rq_psn,
               uint32_t access, Mtu mtu, uint8_t timeout = 0, uint8_t rnr_retry = 7,
               uint8_t max_rd_atomic = 4);
// RESET → INIT → RTR → RTS of a UD QP with `qkey`.
int connect_ud(Qp& qp, uint32_t qkey, uint32_t sq_psn);
// Moves a QP to RESET (it may be anywhere).
int reset_qp(Qp& qp);
int reset_qp(mid::Qp* qp);

}  // namespace dverbs::fuzz
