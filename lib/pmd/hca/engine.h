// A transport engine: the poller one lcore (or, in inline-progress mode, whichever
// application thread holds `run_lock_`) runs over one RX/TX queue pair of the port.
//
// One iteration (poll): RX burst → parse/ICRC → responder or completer of the owning QP →
// coalesced ACKs; kicked QPs join the active list; requester steps and timers for active
// QPs; TX flush. It returns the amount of work done so an idle lcore can back off.
//
// Ownership: every QP belongs to exactly one engine; its transport state is touched only
// by that engine, under Qp::lock (which modify_qp also takes). Nothing here allocates
// (except mbufs from the pool), sleeps, logs or makes a syscall.
#pragma once

#include <atomic>
#include <cstdint>

#include <rte_mbuf.h>

#include "pmd/hca/objects.h"
#include "pmd/wire/roce.h"

namespace dverbs::pmd::hca {

class Device;

class Engine {
 public:
  static constexpr uint16_t kBurst = 32;
  static constexpr uint16_t kTxBatch = 64;

  Engine(Device* dev, uint16_t queue);
  ~Engine();  // frees frames still queued to it (the port's pool must still exist)
  bool init();

  // One poller iteration. Context: the owner lcore, or the inline-progress lock holder.
  int poll() noexcept;
  // Inline progress: poll() if no other thread is. Context: any thread, never sleeps.
  int try_poll() noexcept;
  // Device removal: takes the run lock for good (no try_poll() runs the engine again),
  // polls until the flush is done, and frees the frames it holds. Context: process
  // context, with the device's lcore threads stopped.
  void retire();
  // Close barrier (Device teardown, Device::linger): linger_begin() takes the run lock;
  // each linger_step() polls once and, as soon as nothing is left queued for TX, asks
  // (once) every neighbour that has answered ARP for an answer again, on a port that
  // loses unread frames when it closes (memif; NeighTable::probe_neighbours). It returns
  // true when as many answers have come as requests went out. A peer reads its link in
  // order, so its answer proves it has read our last frames, the final ACKs among them:
  // without it, a peer whose last SEND we received, but which had not read our ACK when
  // we closed, retries until RETRY_EXC_ERR. linger_end() releases the run lock.
  // Context: process context, the device's lcore threads stopped.
  void linger_begin();
  bool linger_step() noexcept;
  void linger_end() noexcept;

  // Processes frames as if the port had just received them (protocol tests, fuzzing,
  // and the RX step itself); takes ownership of the mbufs. Coalesced ACKs are queued for
  // TX before it returns; tx_flush() (or the next poll()) sends them.
  // Context: the engine's owner (or the inline-progress lock holder).
  void receive(rte_mbuf** pkts, uint16_t n) noexcept;

  // Schedules a QP for requester work (new WQEs, flush). Context: any thread, lock-free.
  void kick(Qp* qp) noexcept;

  // Queues a frame for transmission (flushed at the end of poll or when the batch fills).
  // Context: engine.
  void tx(rte_mbuf* m) noexcept;
  void tx_flush() noexcept;
  // A fresh mbuf for a frame of `len` bytes, or nullptr (counted). Context: engine.
  rte_mbuf* alloc_frame(uint32_t len) noexcept;

  // Packets one QP may send per step: small, so every active QP gets its turn (the list
  // also rotates), and senders stop as soon as the port pushes back (tx_stalled()).
  static constexpr int kQpBudget = 16;
  bool tx_stalled() const noexcept { return tx_stalled_; }
  uint64_t now() const noexcept { return now_; }
  uint64_t tsc_hz() const noexcept { return tsc_hz_; }
  // The poll's time in nanoseconds (congestion control's clock, cc.cc).
  uint64_t now_ns() const noexcept { return uint64_t(double(now_) * ns_per_tsc_); }
  // Congestion control (DVERBS_CC): on, and the receive backlog the frame being handled
  // was drained from (frames; rx_step), a uniform random number (the CP's marking).
  bool cc_on() const noexcept { return cc_on_; }
  uint32_t rx_backlog() const noexcept { return rx_backlog_; }
  uint32_t random32() noexcept {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return uint32_t(rng_ >> 32);
  }
  Device& device() noexcept { return *dev_; }
  uint16_t queue() const noexcept { return queue_; }

  // Quiescent-state counter: odd while inside poll(). Context: any (read).
  uint64_t epoch() const noexcept { return epoch_.load(std::memory_order_acquire); }
  uint32_t qp_count() const noexcept { return nqps_.load(std::memory_order_relaxed); }
  void add_qp_count(int d) noexcept { nqps_.fetch_add(uint32_t(d), std::memory_order_relaxed); }

 private:
  int rx_step() noexcept;
  int handoff_step() noexcept;
  int active_step() noexcept;
  void rx_one(rte_mbuf* m, bool verified) noexcept;
  void rx_release() noexcept;  // ends the QP run of rx_one (rx_qp_)
  void owe_ack(Qp* qp) noexcept;
  // Gives back a frame the engine is done with: into mbuf_cache_, or to its pool.
  void recycle(rte_mbuf* m) noexcept;
  [[gnu::noinline]] void recycle_slow(rte_mbuf* m) noexcept;
  [[gnu::noinline]] bool refill_cache() noexcept;  // false: the pool is empty
  void rx_multicast(rte_mbuf* m, const wire::Packet& pkt, bool verified) noexcept;
  // A frame that is not RoCE: to the raw packet QP of the first flow rule it matches
  // (raw.cc). False when no rule matches (the frame is still the caller's).
  [[gnu::noinline]] bool rx_raw(rte_mbuf* m, bool verified) noexcept;
  void drop_not_for_us(rte_mbuf* m) noexcept;
  void drop_frames() noexcept;  // frees the frames queued for TX or handed over, and the cache
  void flush_acks() noexcept;

  Device* dev_;
  uint16_t queue_;
  alignas(64) std::atomic<bool> run_lock_{false};
  alignas(64) std::atomic<uint64_t> epoch_{0};
  std::atomic<uint32_t> nqps_{0};
  MpmcQueue<Qp*> kicks_;
  // Frames another engine received for our QPs (RSS or a shared loopback queue put them
  // on its queue). Parsed and ICRC-checked already; re-parsed here without the ICRC.
  MpmcQueue<rte_mbuf*> handoff_;
  Qp* active_head_ = nullptr;
  // The QP whose request or response frames rx_one is handling: its lock is held from the
  // first frame of a run to a frame for another QP or the end of the burst, so Qp::lock is
  // taken once per QP step, not once per frame.
  Qp* rx_qp_ = nullptr;
  // The frame rx_one is parsing. A member, not a local: parse_frame sets every field it
  // reports, and a local would be zeroed for every frame by its initialisers.
  wire::Packet rx_pkt_;
  Qp* ack_list_[kBurst] = {};
  uint32_t n_ack_ = 0;
  rte_mbuf* txq_[kTxBatch] = {};
  // Mbufs of the port's pool the engine received and is done with, reused for the frames it
  // builds: on a loopback or any port that returns our TX mbufs as RX mbufs, a frame then
  // costs no mempool operation. Refilled in bulk when empty, spilled in bulk when full.
  static constexpr uint16_t kMbufCache = 64;
  rte_mempool* pool_ = nullptr;  // the port's (init)
  rte_mbuf* mbuf_cache_[kMbufCache] = {};
  uint16_t n_mbuf_cache_ = 0;
  uint16_t ntx_ = 0;
  bool tx_stalled_ = false;  // the port refused frames: hold requester output back
  uint64_t now_ = 0;
  uint64_t tsc_hz_ = 1;
  double ns_per_tsc_ = 1;
  bool cc_on_ = false;
  uint32_t rx_backlog_ = 0;
  uint64_t rng_ = 0x9e3779b97f4a7c15ull;  // xorshift64 state (cc marking)
  uint64_t arp_replies_ = 0;  // ARP replies addressed to us received on this queue
  // Close barrier: requests sent (-1: not yet) and arp_replies_ when they went out.
  int linger_asked_ = -1;
  uint64_t linger_seen_ = 0;
};

// ---- engines' steps, one file each (req.cc, resp.cc, comp.cc) ----

// Requester (req.cc): sends new and retransmitted packets of `qp`, handles its timers.
// Returns packets sent. Context: owner engine, qp->lock held.
int req_step(Engine& e, Qp& qp, int budget) noexcept;
// True while the QP still needs the engine's attention (unsent WQEs, unacked packets,
// timers, flush). Context: owner engine, qp->lock held.
bool req_needs_service(Qp& qp) noexcept;
// Restarts sending from `psn` (go-back-N). Context: owner engine, qp->lock held.
void req_rewind(Engine& e, Qp& qp, uint32_t psn) noexcept;
// (Re)starts the retransmission timer (IBA 9.7.6.1.3) for Qp::ack_timeout_tsc from now. It
// runs while anything is outstanding, including a first transmission that cannot leave yet
// (an unresolved neighbour), so a peer that never answers ends in RETRY_EXC_ERR, not a
// hang. Context: owner engine, qp->lock held.
void req_arm_timer(Engine& e, Qp& qp) noexcept;

// The send window (congestion response, RC only; Requester::cwnd). Context: owner
// engine, qp->lock held.
// `n` more packets were acknowledged: the window grows.
void req_window_acked(Qp& qp, uint32_t n) noexcept;
// A loss: a retransmission timeout (`timeout`), or a PSN-sequence NAK for `psn`. The
// window shrinks once per loss episode (a gap in packets sent before the last cut is the
// same episode), every timeout shrinks it.
void req_window_lost(Qp& qp, bool timeout, uint32_t psn) noexcept;

// The local ACK timeout 4.096 us * 2^timeout in TSC cycles (IBA 9.7.6.1.3); timeout 0
// means infinite (returns 0). Context: any.
inline uint64_t ack_timeout_tsc(uint8_t timeout, uint64_t tsc_hz) noexcept {
  if (timeout == 0) return 0;
  const double us = 4.096 * double(1ull << (timeout > 31 ? 31 : timeout));
  return uint64_t(us * double(tsc_hz) / 1e6);
}

// The steps of the responder's state machine (resp.cc, where the file header draws the
// transitions of RC, UC and UD). Each request packet walks them from check_state to done.
enum class RespStep : uint8_t {
  check_state,      // the QP takes requests: RTR, RTS or SQD
  check_op_type,    // the opcode is one of the QP's transport
  check_source,     // connected QP: the packet comes from its peer
  check_qkey,       // UD: the DETH carries the QP's Q_Key
  check_psn,        // expected, duplicate or out of sequence
  check_sequence,   // FIRST, MIDDLE, LAST in order
  check_length,     // payload against the path MTU
  check_rkey,       // R_Key, PD, bounds and rights of a new WRITE, READ or atomic
  check_resources,  // a receive WQE, or a free responder resource
  check_placement,  // a WRITE packet: within the DMA length, still under its R_Key
  execute,
  acknowledge,      // ePSN, MSN, the ACK owed (RC); the message in progress (UC)
  duplicate,        // RC: re-acknowledged or replayed, never executed again
  drop_message,     // UC: the message in progress is lost
  nak_psn_seq_error,
  nak_rnr,
  nak_invalid_request,
  nak_remote_access,
  nak_remote_access_reported,  // ... whose receive completion already reported the error
  nak_remote_op_error,
  drop,             // discarded silently, counted (rx_bad_state)
  done,
};
// The step's name as spelled above ("check_psn"), for tests and traces. Context: any.
const char* name(RespStep step) noexcept;

// Responder (resp.cc): handles one request packet. Context: owner engine, qp->lock held.
void resp_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept;
// Sends the coalesced ACK owed by the responder, if any. Context: owner engine.
void resp_send_ack(Engine& e, Qp& qp) noexcept;
// Retries the ACK or NAK the responder holds (Responder::held_since: the neighbour had
// not answered ARP, or no mbuf), applying a sent NAK's effect. Context: owner engine,
// qp->lock held.
void resp_send_held(Engine& e, Qp& qp) noexcept;
// Sends up to `budget` READ/atomic response packets in PSN order; returns packets sent.
// Context: owner engine, qp->lock held.
int resp_tx_step(Engine& e, Qp& qp, int budget) noexcept;

// The operations a responder answers with a response of their own, from a responder
// resource: READ, the two atomics and the IBA 1.5 ATOMIC WRITE and FLUSH. They take
// max_rd_atomic credits, wait behind a fence, and complete only on their response (an ACK
// beyond one is an implied NAK).
inline bool is_rd_atomic(WrOpcode op) {
  return op == WrOpcode::rdma_read || op == WrOpcode::atomic_cmp_and_swp ||
         op == WrOpcode::atomic_fetch_and_add || op == WrOpcode::atomic_write ||
         op == WrOpcode::flush;
}
// IBA 1.5's two (iba15.cc): answered by a zero-length READ RESPONSE ONLY.
inline bool is_iba15(WrOpcode op) {
  return op == WrOpcode::atomic_write || op == WrOpcode::flush;
}

// ---- RDMA ATOMIC WRITE and RDMA FLUSH (iba15.cc)
// Sends the one request packet of ATOMIC WRITE or FLUSH WQE `w`. False when it cannot
// leave now (neighbour, mbufs) or the WQE failed (the QP is then in ERR: a local
// protection error gathering the 8 bytes). Context: owner engine, qp.lock held.
bool iba15_send_request(Engine& e, Qp& qp, SendWqe& w) noexcept;
// The responder's check of a new ATOMIC WRITE or FLUSH (access of the QP and the R_Key,
// bounds, alignment, length, FETH): check_resources, or the NAK step. For an ATOMIC
// WRITE *mr is the region to write. Context: owner engine, qp.lock held.
RespStep iba15_check_rkey(Engine& e, Qp& qp, const wire::Packet& pkt, Mr** mr) noexcept;
// Executes a checked ATOMIC WRITE or FLUSH and fills the responder resource its
// zero-length READ RESPONSE is answered (and replayed) from. Context: owner engine.
void iba15_execute(const wire::Packet& pkt, Mr* mr, RespResource* r) noexcept;

// Raw packet QPs (raw.cc). raw_send: sends WQE `w` of a raw packet QP as one frame (its
// bytes as they are; IBV_SEND_IP_CSUM fills the IPv4 and TCP/UDP checksums); false when
// it cannot leave yet (no mbuf) or failed (the QP is then in ERR). raw_recv: puts a
// received frame (all its segments) into the QP's next receive WQE and completes it;
// false when the frame was not taken (no WQE, QP not receiving). Context: owner engine, qp.lock held.
bool raw_send(Engine& e, Qp& qp, SendWqe& w) noexcept;
bool raw_recv(Engine& e, Qp& qp, const rte_mbuf* m) noexcept;

// Congestion control (cc.cc, DCQCN: dcqcn.h). cc_rx: a CNP for `qp` cuts its rate (the
// reaction point) and is consumed (true); a request, with DVERBS_CC on, is checked for
// congestion (a CE mark from the network, or the port's own RED marking of its receive
// backlog) and answered with a CNP at most once per interval (false: handle it as usual).
// cc_may_send/cc_sent: the requester's pacing to the QP's rate, and its timers (cc_time).
// Context: owner engine, qp.lock held.
bool cc_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept;
bool cc_may_send(Engine& e, Qp& qp) noexcept;
void cc_sent(Engine& e, Qp& qp, uint32_t bytes) noexcept;
void cc_time(Engine& e, Qp& qp) noexcept;

// Completer (comp.cc): handles one response packet (ACK, NAK, READ response, atomic ACK).
// Context: owner engine, qp->lock held.
void comp_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept;
// The steps of the completer (comp.cc, where the file draws the transitions). Each response
// packet walks them from check_state to done.
enum class CompStep : uint8_t {
  check_state,    // an RC QP in RTS or SQD, an RC opcode
  check_opcode,   // READ response, atomic ACK, or ACK/NAK
  check_ack_psn,  // the ACK/NAK names an outstanding PSN; which AETH type
  read_response,  // payload into the READ's buffer at its offset
  atomic_ack,     // the original value into the atomic's buffer
  ack,            // WQEs up to the PSN complete in order
  rnr_nak,        // wait the RNR timer, then resend
  seq_nak,        // go back to the responder's expected PSN, smaller window
  fatal_nak,      // the WQE completes with the NAK's error, the QP enters ERR
  bad_response,   // the WQE completes with BAD_RESP_ERR, the QP enters ERR
  drop,           // discarded silently, counted (rx_bad_state)
  done,
};
const char* name(CompStep step) noexcept;
// Completes SQ WQEs in order up to (not including) SQ index `upto` successfully.
void comp_retire_upto(Engine& e, Qp& qp, uint64_t upto) noexcept;
// Moves the QP to ERR after an error completion of the oldest WQE with `status`.
void comp_fail(Engine& e, Qp& qp, WcStatus status) noexcept;
// Same for a local error of SQ index `idx` (older WQEs are flushed ahead of it).
void comp_fail_at(Engine& e, Qp& qp, uint64_t idx, WcStatus status) noexcept;
// Flushes every outstanding and newly posted WQE of a QP in ERR (IBV_WC_WR_FLUSH_ERR),
// in order. Context: owner engine, qp->lock held.
void flush_queues(Engine& e, Qp& qp) noexcept;

// CQ production (cq.cc): adds one completion and raises a completion event if armed.
// Context: engine (any thread that owns the producing QP), never sleeps.
void cq_push(Cq& cq, const Wc& wc, bool solicited) noexcept;

// Builds the headers of a packet of `qp` into a fresh mbuf; returns the mbuf and, in
// *ext, where the extension headers go. `addr` is the QP's path (RC, UC) or the address
// handle of a UD WQE. Every frame a QP sends (requests of every opcode, retransmissions,
// ACK/NAK, READ and atomic responses) is built here, so every frame is addressed the same
// way: the destination MAC comes from the neighbour table (resolve_dest). nullptr while
// the neighbour is unresolved (ARP runs in the background; the caller keeps the packet and
// the QP stays scheduled) or when out of mbufs. Callers build RC packets for XRC QPs: the
// opcode gets the XRC prefix here, and a request the XRCETH of qp.req.xrc_srqn, before
// *ext. Context: owner engine, qp.lock held.
rte_mbuf* build_packet(Engine& e, Qp& qp, const wire::FrameAddr& addr,
                       const wire::BthFields& bth, uint32_t payload_len, uint8_t** ext) noexcept;
// Finishes the frame (pad, ICRC: build_packet wrote the IPv4 checksum) and queues it for TX.
void send_packet(Engine& e, rte_mbuf* m, uint8_t* payload_end, uint32_t pad) noexcept;
// Payloads of at least this many bytes are copied into the frame with the ICRC computed on
// the way (wire::icrc_frame_begin, then gather_icrc or wire::icrc_copy): one pass over
// their bytes instead of two. Below it, one CRC call over the whole frame costs less.
constexpr uint32_t kFusedIcrcMin = 512;
// Finishes such a frame: pad, the ICRC carried through the payload (`crc`), TX.
void send_packet_icrc(Engine& e, rte_mbuf* m, uint8_t* payload_end, uint32_t pad,
                      uint32_t crc) noexcept;

}  // namespace dverbs::pmd::hca
