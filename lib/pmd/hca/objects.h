// Objects of the soft HCA. Each embeds its midlayer object as first base.
//
// Ownership and thread safety:
// - Creation/destruction and modify run in process context under the device's control
//   mutex. Objects reachable from the fast path (MRs by key, QPs by number) are never freed
//   while an engine may hold a pointer: destruction unpublishes the object, then waits for
//   every engine to pass a quiescent point (Device::quiesce) before freeing it.
// - A QP's transport state (Requester/Responder/Completer fields) is touched only by the
//   engine that owns the QP, under Qp::lock (uncontended except against modify_qp).
// - SQ/RQ rings: any thread posts, the owner engine consumes (queue.h).
// - CQ ring: engines push, any thread polls (MPMC).
#pragma once

#include <atomic>
#include <memory>
#include <cstdint>

#include "dverbs/types.h"
#include "midlayer/objects.h"
#include "pmd/hca/queue.h"
#include "pmd/hca/dcqcn.h"
#include "pmd/hca/stats.h"
#include "pmd/wire/roce.h"

namespace dverbs::pmd::hca {

class Device;
class Engine;

constexpr uint32_t kMaxSge = 16;
constexpr uint32_t kMaxInline = 256;

struct Pd : mid::Pd {};

// A slot of the key table: a memory region, or a memory window (IBA 10.6.7) whose
// addr/length/access describe its current binding.
struct Mr : mid::Mr {
  enum Kind : uint8_t { kRegion = 0, kWindow1 = 1, kWindow2 = 2 };
  std::atomic<uint32_t> key{0};  // 0 while the slot is free; a window's current rkey
  uint8_t* base = nullptr;       // host address of byte `addr` (== addr unless iova-registered)
  Kind kind = kRegion;
  Mr* bound_to = nullptr;        // window: its region while bound, else nullptr
  uint32_t bound_qpn = 0;        // type 2 window: the QP it is bound to
  std::atomic<uint32_t> windows{0};  // region: windows bound to it (dereg → EBUSY)
  // Bumped when the slot is allocated and when it is freed: a queued bind names its window
  // by slot and generation, so a window deallocated meanwhile is never dereferenced.
  std::atomic<uint32_t> alloc_gen{0};
};

struct Mw : mid::Mw {
  Mr* slot = nullptr;
};

struct Ah : mid::Ah {
  wire::FrameAddr addr{};  // MACs filled at send time from the neighbour table
  AhAttr attr{};
  std::atomic<bool> live{false};  // created and not destroyed: a second destroy is EINVAL
};

// A completion and the TSC (rte_rdtsc) when it was made: the RX burst's packet handling
// for a receive, the ACK or response that completed a send (cq_push).
struct Cqe {
  Wc wc;
  uint64_t ts;
};

// One completion queue: a bounded MPMC ring of work completions. Its capacity is the cqe
// reported (cq.cc): the ring's power of two, every cell usable.
//
// The ring is replaced by resize_cq (cq.cc) while engines push and any thread polls: every
// pusher counts itself in `pushers`, every poller in `pollers`, and backs off while
// `resizing` is set; the resizer sets `resizing`, waits until both counts are 0, moves the
// entries and swaps the ring. Neither side sleeps (a Dekker handshake on seq_cst atomics).
// The two counts have a cache line each: the engine's lcore and the application's thread
// never write the same line for the gate (`resizing` is only read between resizes).
struct Cq : mid::Cq {
  std::unique_ptr<MpmcQueue<Cqe>> ring;
  std::atomic<uint32_t> resizing{0};
  // Notification state (req_notify_cq): 0 = not armed, 1 = solicited only, 2 = next.
  std::atomic<uint32_t> armed{0};
  std::atomic<uint64_t> overflows{0};
  Device* hca = nullptr;
  alignas(64) std::atomic<uint32_t> pushers{0};
  alignas(64) std::atomic<uint32_t> pollers{0};
};

// A send work-queue entry: the posted request, copied at post time (validated before it is
// queued, never re-read from application memory), plus the requester's progress.
struct SendWqe {
  uint64_t wr_id;
  WrOpcode opcode;
  uint32_t send_flags;
  uint32_t imm_data;  // network order, or the rkey to invalidate
  uint32_t length;    // total bytes
  uint64_t remote_addr;
  uint32_t rkey;
  uint32_t num_sge;
  uint64_t compare_add, swap;
  Ah* ah;
  uint32_t remote_qpn, remote_qkey;
  uint32_t xrc_srqn;  // XRC_SEND: the remote XRC SRQ (XRCETH)
  mid::Mw* mw;        // bind_mw: the window, its new rkey in `rkey`; dereferenced only
  Mr* mw_slot;        // while mw_slot still has generation mw_gen (execute_local)
  uint32_t mw_gen;
  mid::Mr* bind_mr;   // bind_mw: the region (remote_addr/length/compare_add=access)
  uint8_t flush_type;  // FLUSH (IBA 1.5): flush::type_* and flush::level_*
  uint8_t flush_level;
  bool is_inline;
  bool signaled;
  bool started;       // sent (or executed) at least once
  // requester progress (owner engine only)
  bool done;          // READ/atomic: every response arrived (ACKs alone never complete it)
  uint32_t first_psn;
  uint32_t npkts;     // PSNs the WQE consumes; 0 until first sent
  union {
    Sge sge[kMaxSge];
    uint8_t inline_data[kMaxInline];
  };
};

struct RecvWqe {
  uint64_t wr_id;
  uint32_t num_sge;
  uint32_t length;
  Sge sge[kMaxSge];
};

// An XRC domain: shared by the opens of one file (its device and inode) or private.
// Control path only (Device::ctl()).
struct Xrcd : mid::Xrcd {
  bool by_file = false;
  uint64_t st_dev = 0, st_ino = 0;
  uint32_t opens = 0;  // open_xrcd calls not yet closed
};

// A shared receive queue: any thread posts; responders of any engine take WQEs under a
// short spinlock (several consumers), copying each out before the slot is freed.
struct Srq : mid::Srq {
  Device* hca = nullptr;
  WorkQueue<RecvWqe> rq;
  SpinLock take_lock;
  uint32_t max_sge = 1;            // max_wr (mid::Srq) is the ring's capacity: what fits
  std::atomic<uint32_t> limit{0};  // armed SRQ limit (IBA 11.5.2.4); 0 = not armed
  bool xrc = false;  // an XRC SRQ, published in the device's SRQ table (xrc.cc)
};

// The requester's send window (req.cc, req_window_*): an RC QP keeps at most this many
// packets unacknowledged, and never fewer than kMinSendWindow once the window has shrunk.
constexpr uint32_t kMaxSendWindow = 256;
constexpr uint32_t kMinSendWindow = 2;

// Requester state of an RC/UC/UD QP (IBA 9.7). Owner engine only.
struct Requester {
  uint32_t psn = 0;        // next PSN to send
  uint64_t next_wqe = 0;   // SQ index of the WQE being or next to be sent
  uint32_t next_pkt = 0;   // packet of next_wqe to send next
  uint64_t unacked = 0;    // oldest SQ index not yet completed
  uint32_t last_ack_psn = 0;  // all PSNs before this one are acknowledged
  uint64_t timer_deadline = 0;  // TSC; 0 = not armed
  uint64_t rnr_deadline = 0;    // TSC; 0 = not waiting on an RNR NAK
  uint32_t retry_left = 0;
  uint32_t rnr_left = 0;
  uint32_t max_psn = 0;     // one past the highest PSN ever sent
  uint32_t rd_inflight = 0; // READ/atomic WQEs sent and not yet completed (max_rd_atomic)
  bool gap_rewound = false; // already went back for the current gap in responses
  uint32_t seq_nak_psn = 0; // newest PSN-sequence NAK PSN seen, at least last_ack_psn - 1
  bool sq_drained_sent = false;  // SQD: the SQ-drained event went out
  uint64_t sent_end = 0;    // one past the highest SQ index that has PSNs assigned
  uint32_t xrc_srqn = 0;    // XRC_SEND: the XRCETH of the request being built
  // Congestion response (RC): packets allowed unacknowledged. A retransmission timeout
  // drops it to kMinSendWindow, a new PSN-sequence gap halves it; acknowledged packets
  // grow it again, by one each below `ssthresh` (doubling per round trip), by one per
  // window above it.
  uint32_t cwnd = kMaxSendWindow;  // kMinSendWindow..kMaxSendWindow
  uint32_t ssthresh = kMaxSendWindow;
  uint32_t cwnd_acked = 0;   // packets acknowledged toward the next increase above ssthresh
  uint32_t recover_psn = 0;  // max_psn at the last cut: a gap before it is the same loss
  bool recovering = false;   // recover_psn is not acknowledged yet
};

// One entry of the responder-resource ring (IBA 9.7.4.1.5.2: duplicate READ and atomic
// requests are answered from it): max_dest_rd_atomic entries, oldest overwritten.
struct RespResource {
  bool valid = false;
  const mid::Pd* pd = nullptr;  // XRC: the PD of the request's XRC SRQ (compared only)
  bool atomic = false;
  uint32_t first_psn = 0;
  uint32_t npkts = 0;
  uint64_t va = 0;       // READ: remote address of the first byte
  uint32_t rkey = 0;
  uint32_t length = 0;
  uint64_t orig = 0;     // atomic: the value returned the first time
};

// Responder state (IBA 9.7.3 / 9.7.4). Owner engine only.
struct Responder {
  uint32_t epsn = 0;       // expected PSN
  uint32_t msn = 0;        // message sequence number
  bool nak_sent = false;   // one PSN-sequence NAK per gap (C9-110)
  bool in_send = false;    // a multi-packet SEND is in progress
  bool in_write = false;   // a multi-packet WRITE is in progress
  uint32_t recv_offset = 0;
  RecvWqe* recv = nullptr;
  RecvWqe srq_wqe;           // the WQE taken from the SRQ (recv points here then)
  // XRC_RECV: the XRC SRQ of the packet being handled (looked up by its XRCETH for every
  // packet, never kept across packets) and the number of the one the message in progress
  // fills (a later packet of the message must name the same).
  Srq* xrc_srq = nullptr;
  uint32_t xrc_srqn = 0;
  bool last_wqe_event = false;
  bool comm_est_sent = false;  // first packet in RTR raised Communication Established
  uint32_t write_rkey = 0;
  uint64_t write_va = 0;
  uint32_t write_left = 0;
  uint32_t write_total = 0;
  // READ/atomic responses leave in PSN order, paced by the engine: entries of the ring
  // Qp::rd_res from `res_next_tx` (`pending` of them, the oldest first) still owe
  // responses; `resp_psn` is the next.
  uint32_t res_head = 0;     // next entry to write
  uint32_t res_next_tx = 0;  // entry whose responses leave next
  uint32_t pending = 0;
  uint32_t resp_psn = 0;
  uint32_t stream_start = 0; // PSN that opened the current response stream (FIRST/ONLY)
  bool ack_pending = false;  // coalesced ACK owed at the end of the burst
  bool ack_held = false;     // ... that could not leave yet (no ARP answer, no mbuf)
  // A NAK that waits for READ/atomic responses already queued (PSN order) or for the
  // neighbour to answer ARP; nak_effect (a NakEffect) is applied once it is sent.
  bool nak_owed = false;
  uint8_t nak_effect = 0;
  uint64_t held_since = 0;   // TSC: an ACK or NAK first could not leave (0: none held)
  uint8_t nak_syndrome = 0;
  uint32_t nak_psn = 0;
  uint8_t ack_syndrome = 0;
  uint32_t ack_psn = 0;
};

struct Qp : mid::Qp {
  Device* hca = nullptr;
  Engine* engine = nullptr;  // owner
  SpinLock lock;             // engine steps vs. modify_qp
  std::atomic<QpState> state{QpState::reset};
  QpAttr attr{};             // attributes as last modified
  QpCap cap{};
  bool sq_sig_all = false;
  uint32_t mtu = 1024;       // path MTU in bytes
  uint64_t ack_timeout_tsc = 0;  // attr.timeout in TSC cycles (0: infinite)
  wire::FrameAddr addr{};    // connected QPs: the path to the peer
  bool addr_resolved = false;
  wire::FrameTemplate tmpl{};  // headers of `addr`, built when addr_resolved became true

  WorkQueue<SendWqe> sq;
  WorkQueue<RecvWqe> rq;
  uint64_t rq_consumed = 0;  // responder: next RQ index to take

  Requester req;
  Responder resp;
  // Responder resources (RC): max(1, max_dest_rd_atomic) entries, allocated when the QP
  // enters RTR, so a QP that never serves a READ or atomic stays small.
  std::unique_ptr<RespResource[]> rd_res;
  uint32_t rd_res_size = 0;

  // Engine scheduling: set when the QP is on its engine's kick ring or active list.
  std::atomic<uint32_t> kicked{0};
  bool active = false;     // on the engine's active list (engine only)
  Qp* next_active = nullptr;
  std::atomic<bool> unhooking{false};  // destroy_qp: the engine must drop the QP
  std::atomic<bool> detached{false};  // the engine no longer references the QP
  uint32_t xrc_opens = 0;  // XRC_RECV: handles opened on it (ibv_open_qp); under ctl()

  // Congestion control (cc.cc): the reaction point's rate and the notification point's
  // CNP pacing; owner engine only. cc_ready: the rate has been set up (first use).
  DcqcnRate cc_rate;
  CnpPacer cc_cnp;
  bool cc_ready = false;
  // Counters (stats.h): written by the owning engine only.
  DVERBS_QP_EVENTS(DVERBS_DECLARE_COUNTER)
};

inline Qp* to_qp(mid::Qp* q) { return static_cast<Qp*>(q); }
inline Cq* to_cq(mid::Cq* c) { return static_cast<Cq*>(c); }
inline Mr* to_mr(mid::Mr* m) { return static_cast<Mr*>(m); }
inline Pd* to_pd(mid::Pd* p) { return static_cast<Pd*>(p); }
inline Ah* to_ah(mid::Ah* a) { return static_cast<Ah*>(a); }
inline Mw* to_mw(mid::Mw* m) { return static_cast<Mw*>(m); }
inline Srq* to_srq(mid::Srq* s) { return static_cast<Srq*>(s); }

}  // namespace dverbs::pmd::hca
