// Requester engine (IBA 9.7, the requester side of a QP): turns send WQEs into packets
// segmented by path MTU, assigns PSNs, asks for ACKs, and runs the retransmission and RNR
// timers (go-back-N, IBA 9.7.6.1) and the send window. One state per QP, owner engine only.
//
// States of the requester (req_state), evaluated on each step:
//   idle      — nothing unsent and nothing outstanding
//   rnr_wait  — an RNR NAK arrived; nothing is sent until its timer expires
//   sending   — packets of next_wqe go out, bounded by the send window
//   waiting   — everything sent, ACKs outstanding, retransmit timer armed
//   error     — QP in ERR: flush (comp.cc)
//
// One step (req_step): the frames the responder owes (held ACK/NAK, READ and atomic
// responses) → the state → check_timer (retransmission) → send_wqes, which gives the WQEs
// their turns in order: run_local (bind, local invalidate), or start_wqe (PSNs, fence,
// READ/atomic credits) and then send_rd_atomic (one request) or send_segment (one packet
// of a SEND or WRITE).
#include <cstring>

#include <rte_byteorder.h>

#include "base/copy.h"
#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"
#include "pmd/net/neigh.h"

namespace dverbs::pmd::hca {

namespace {

// Ask for an ACK at least this often inside long messages (IBA 9.7.6.1.2 allows any rate).
constexpr uint32_t kAckReqEvery = 32;

enum class ReqState : uint8_t { idle, rnr_wait, sending, waiting, error };

// Sends the READ request for the part of `w` that starts at response packet `pkt`
// (a retransmission may resume in the middle: IBA 9.7.6.1.4).
bool send_read_request(Engine& e, Qp& qp, SendWqe& w, uint32_t pkt) {
  const uint32_t off = pkt * qp.mtu;
  wire::BthFields bth{};
  bth.opcode = wire::op::kRc | wire::op::kReadRequest;
  bth.pkey = wire::kDefaultPkey;
  bth.psn = wire::psn_add(w.first_psn, pkt);
  bth.ack_req = true;
  bth.dest_qp = qp.attr.dest_qp_num;
  qp.req.xrc_srqn = w.xrc_srqn;
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
  if (!m) return false;
  wire::write_reth(p, w.remote_addr + off, w.rkey, w.length - off);
  send_packet(e, m, p + sizeof(wire::Reth), 0);
  return true;
}

bool send_atomic_request(Engine& e, Qp& qp, SendWqe& w) {
  wire::BthFields bth{};
  bth.opcode = wire::op::kRc | (w.opcode == WrOpcode::atomic_cmp_and_swp ? wire::op::kCmpSwap
                                                                           : wire::op::kFetchAdd);
  bth.pkey = wire::kDefaultPkey;
  bth.psn = w.first_psn;
  bth.ack_req = true;
  bth.dest_qp = qp.attr.dest_qp_num;
  qp.req.xrc_srqn = w.xrc_srqn;
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
  if (!m) return false;
  // AtomicETH: SwapData is the swap value (CmpSwap) or the addend (FetchAdd).
  const bool cas = w.opcode == WrOpcode::atomic_cmp_and_swp;
  wire::write_atomic_eth(p, w.remote_addr, w.rkey, cas ? w.swap : w.compare_add,
                         cas ? w.compare_add : 0);
  send_packet(e, m, p + sizeof(wire::AtomicEth), 0);
  return true;
}

uint8_t opcode_prefix(QpType t) {
  switch (t) {
    case QpType::uc: return wire::op::kUc;
    case QpType::ud: return wire::op::kUd;
    default: return wire::op::kRc;
  }
}

// Picks the opcode of packet `pkt` of `npkts` for a WQE (IBA Table 38): one table row per
// operation, indexed by the packet's place in the message.
uint8_t packet_opcode(const SendWqe& w, uint32_t pkt, uint32_t npkts) {
  using namespace wire::op;
  enum Place { kOnlyPkt, kFirstPkt, kMiddlePkt, kLastPkt };
  static constexpr uint8_t kSendOps[] = {kSendOnly, kSendFirst, kSendMiddle, kSendLast};
  static constexpr uint8_t kSendImmOps[] = {kSendOnlyImm, kSendFirst, kSendMiddle, kSendLastImm};
  static constexpr uint8_t kSendInvOps[] = {kSendOnlyInv, kSendFirst, kSendMiddle, kSendLastInv};
  static constexpr uint8_t kWriteOps[] = {kWriteOnly, kWriteFirst, kWriteMiddle, kWriteLast};
  static constexpr uint8_t kWriteImmOps[] = {kWriteOnlyImm, kWriteFirst, kWriteMiddle,
                                             kWriteLastImm};
  const bool first = pkt == 0, last = pkt + 1 == npkts;
  const Place at = first && last ? kOnlyPkt : first ? kFirstPkt : last ? kLastPkt : kMiddlePkt;
  switch (w.opcode) {
    case WrOpcode::send: return kSendOps[at];
    case WrOpcode::send_with_imm: return kSendImmOps[at];
    case WrOpcode::send_with_inv: return kSendInvOps[at];
    case WrOpcode::rdma_write: return kWriteOps[at];
    case WrOpcode::rdma_write_with_imm: return kWriteImmOps[at];
    default: return 0xff;
  }
}

ReqState req_state(const Qp& qp) {
  QpState s = qp.state.load(std::memory_order_acquire);
  if (s == QpState::err) return ReqState::error;
  if (s != QpState::rts && s != QpState::sqd) return ReqState::idle;
  if (qp.req.rnr_deadline) return ReqState::rnr_wait;
  // In SQD only WQEs already started go on (IBA 10.3.1, Send Queue Drain).
  const SendWqe* w = const_cast<Qp&>(qp).sq.peek(qp.req.next_wqe);
  if (w && (s == QpState::rts || w->started)) return ReqState::sending;
  if (qp.req.psn != qp.req.last_ack_psn) return ReqState::waiting;
  if (s == QpState::sqd && !qp.req.sq_drained_sent) return ReqState::waiting;
  return ReqState::idle;
}

// SQD with nothing outstanding: the SQ is drained; tell the consumer once (IBA 11.6.3.1).
void check_drained(Qp& qp) {
  Requester& r = qp.req;
  if (qp.state.load(std::memory_order_acquire) != QpState::sqd || r.sq_drained_sent) return;
  if (r.psn != r.last_ack_psn || r.next_pkt != 0) return;
  r.sq_drained_sent = true;
  mid::dispatch_qp_event(qp, EventType::sq_drained);
}

// Does the packet `psn` fill the send window (Requester::cwnd)?
bool window_full_after(const Requester& r, uint32_t psn) {
  return uint32_t(wire::psn_diff(wire::psn_add(psn, 1), r.last_ack_psn)) >= r.cwnd;
}

// Sends packet `pkt` of WQE `w`; returns false when it cannot leave yet (neighbour
// unresolved, out of mbufs) or the WQE failed.
bool send_one(Engine& e, Qp& qp, SendWqe& w, uint32_t pkt) {
  const uint32_t mtu = qp.mtu;
  const uint32_t off = pkt * mtu;
  const uint32_t len = w.length - off < mtu ? w.length - off : mtu;
  const bool last = pkt + 1 == w.npkts;
  wire::BthFields bth{};
  bth.opcode = uint8_t(opcode_prefix(qp.qp_type) | packet_opcode(w, pkt, w.npkts));
  bth.se = last && (w.send_flags & send_flags::solicited);
  bth.pad = wire::pad_for(len);
  bth.pkey = wire::kDefaultPkey;
  bth.psn = wire::psn_add(w.first_psn, pkt);
  // The packet that fills the send window asks for an ACK too: nothing more leaves
  // until one comes, and a peer acknowledges only when asked (or at a message's end).
  bth.ack_req = is_reliable_connected(qp.qp_type) &&
                (last || (pkt + 1) % kAckReqEvery == 0 || window_full_after(qp.req, bth.psn));

  const bool ud = qp.qp_type == QpType::ud;
  bth.dest_qp = ud ? w.remote_qpn : qp.attr.dest_qp_num;
  qp.req.xrc_srqn = w.xrc_srqn;
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, ud ? w.ah->addr : qp.addr, bth, len, &p);
  if (!m) return false;
  const wire::OpcodeInfo& info = wire::opcode_info(bth.opcode);
  if (info.flags & wire::opf::kDeth) {
    // A Q_Key with the high bit set means "use the QP's own Q_Key" (IBA 10.2.4.1).
    uint32_t qkey = int32_t(w.remote_qkey) < 0 ? qp.attr.qkey : w.remote_qkey;
    wire::write_deth(p, qkey, qp.qp_num);
    p += sizeof(wire::Deth);
  }
  if (info.flags & wire::opf::kReth) {
    wire::write_reth(p, w.remote_addr, w.rkey, w.length);
    p += sizeof(wire::Reth);
  }
  if (info.flags & wire::opf::kImm) {
    std::memcpy(p, &w.imm_data, 4);
    p += 4;
  }
  if (info.flags & wire::opf::kIeth) {
    wire::store_be32(p, w.imm_data);
    p += 4;
  }
  const bool fused = !w.is_inline && len >= kFusedIcrcMin;
  uint32_t crc = 0;
  if (w.is_inline) {
    base::copy_bytes(p, w.inline_data + off, len);
  } else if (len) {
    WcStatus st;
    if (fused) {
      crc = wire::icrc_frame_begin(rte_pktmbuf_mtod(m, uint8_t*), p);
      st = gather_icrc(e.device(), qp.pd, w.sge, w.num_sge, off, p, len, &crc);
    } else {
      st = gather(e.device(), qp.pd, w.sge, w.num_sge, off, p, len);
    }
    if (st != WcStatus::success) [[unlikely]] {
      rte_pktmbuf_free(m);
      comp_fail_at(e, qp, qp.req.next_wqe, st);
      return false;
    }
  }
  if (fused)
    send_packet_icrc(e, m, p + len, bth.pad, crc);
  else
    send_packet(e, m, p + len, bth.pad);
  if (e.cc_on()) cc_sent(e, qp, wire::headers_len(bth.opcode) + len + wire::kIcrcLen);
  return true;
}

// Executes a memory-window bind or a local invalidate (IBA 10.6.7, 10.8.3.5).
WcStatus execute_local(Engine& e, Qp& qp, SendWqe& w) {
  Device& dev = e.device();
  if (w.opcode == WrOpcode::local_inv)
    return mw_invalidate(dev, w.rkey, qp.pd) ? WcStatus::success : WcStatus::loc_qp_op_err;
  // The window may have been deallocated since the bind was posted: its slot then has a
  // new generation. If not, dealloc_mw cannot free it before this poll iteration ends
  // (free_mr_slot bumps the generation, then quiesces).
  if (w.mw_slot->alloc_gen.load(std::memory_order_acquire) != w.mw_gen)
    return WcStatus::mw_bind_err;
  Mw* mw = to_mw(w.mw);
  Mr* region = w.bind_mr ? to_mr(w.bind_mr) : nullptr;
  if (region && region->key.load(std::memory_order_acquire) == 0) region = nullptr;
  WcStatus st = mw_bind(dev, *mw->slot, region, w.rkey, w.remote_addr, w.compare_add,
                        uint32_t(w.swap), qp.qp_num, qp.pd);
  if (st == WcStatus::success) mw->rkey = w.rkey;
  return st;
}

// The retransmission timer (IBA 9.7.6.1.3): on expiry, go back to the oldest
// unacknowledged PSN with the smallest send window, or fail once retry_cnt is used up.
// Something is outstanding while a WQE is sent and unacknowledged — also right after a
// rewind, when psn == last_ack_psn but the resend could not leave yet. False: the QP
// failed.
bool check_timer(Engine& e, Qp& qp) {
  Requester& r = qp.req;
  const bool outstanding = r.psn != r.last_ack_psn || r.unacked != r.sent_end;
  if (!r.timer_deadline || e.now() < r.timer_deadline || !outstanding) return true;
  r.timer_deadline = 0;
  if (r.retry_left == 0) {
    comp_fail(e, qp, WcStatus::retry_exc_err);
    return false;
  }
  r.retry_left--;
  req_window_lost(qp, true, r.last_ack_psn);
  req_rewind(e, qp, r.last_ack_psn);
  // Re-arm now, not when a packet leaves: a peer that vanished can leave the port refusing
  // frames, and the retries must still run out (IBA 9.7.6.1.3).
  req_arm_timer(e, qp);
  return true;
}

// What one WQE's turn in send_wqes gave.
enum class Turn : uint8_t {
  sent,     // one packet left
  skipped,  // nothing left, go on with the next WQE (a local operation ran)
  blocked,  // nothing can leave now: window, credits, fence, neighbour, mbufs
  failed,   // the WQE failed and the QP is in ERR
};

// A memory-window bind or local invalidate runs once every earlier WQE has completed, so
// its effect and completion are ordered with the traffic before it.
Turn run_local(Engine& e, Qp& qp, SendWqe& w) {
  Requester& r = qp.req;
  if (w.started) {  // executed before a rewind walked back over it
    r.next_wqe++;
    return Turn::skipped;
  }
  if (r.unacked != r.next_wqe) return Turn::blocked;
  w.started = true;
  w.first_psn = r.psn;
  w.npkts = 0;
  WcStatus st = execute_local(e, qp, w);
  if (st != WcStatus::success) {
    comp_fail(e, qp, st);
    return Turn::failed;
  }
  r.next_wqe++;
  if (r.sent_end < r.next_wqe) r.sent_end = r.next_wqe;
  comp_retire_upto(e, qp, r.next_wqe);
  return Turn::skipped;
}

// The first transmission of a WQE takes its PSNs. A fenced WQE waits for every earlier
// READ and atomic to complete (IBA 10.8.3.3); READ/atomic requests are limited to
// max_rd_atomic outstanding (IBA 9.7.7, C9-151). False: it cannot start yet.
bool start_wqe(Qp& qp, SendWqe& w) {
  Requester& r = qp.req;
  const bool rd = is_rd_atomic(w.opcode);
  if ((w.send_flags & send_flags::fence) && r.rd_inflight > 0) return false;
  if (rd && r.rd_inflight >= (qp.attr.max_rd_atomic ? qp.attr.max_rd_atomic : 1u)) return false;
  w.first_psn = r.psn;
  // A SEND or WRITE takes one PSN per packet, a READ one per response packet; an atomic,
  // ATOMIC WRITE or FLUSH one (a FLUSH's length is the remote range's, not a payload's).
  w.npkts = w.length == 0 || (rd && w.opcode != WrOpcode::rdma_read)
                ? 1
                : (w.length + qp.mtu - 1) / qp.mtu;
  w.done = false;
  w.started = true;
  if (rd) r.rd_inflight++;
  r.sent_end = r.next_wqe + 1;
  return true;
}

void psn_sent(Requester& r, uint32_t next) {
  r.psn = next;
  if (wire::psn_diff(r.psn, r.max_psn) > 0) r.max_psn = r.psn;
}

// A READ, atomic, ATOMIC WRITE or FLUSH request: one packet for all the PSNs of its
// responses.
Turn send_rd_atomic(Engine& e, Qp& qp, SendWqe& w) {
  Requester& r = qp.req;
  bool ok = w.opcode == WrOpcode::rdma_read ? send_read_request(e, qp, w, r.next_pkt)
            : is_iba15(w.opcode)            ? iba15_send_request(e, qp, w)
                                            : send_atomic_request(e, qp, w);
  if (!ok && qp.state.load(std::memory_order_relaxed) == QpState::err) return Turn::failed;
  if (r.timer_deadline == 0) req_arm_timer(e, qp);
  if (!ok) return Turn::blocked;
  psn_sent(r, wire::psn_add(w.first_psn, w.npkts));
  r.next_pkt = 0;
  r.next_wqe++;
  return Turn::sent;
}

// The next packet of a SEND or WRITE (segmented by path MTU). UC and UD complete once the
// last packet is handed to the port (IBA 9.8, 9.7.8); they have nothing to acknowledge.
Turn send_segment(Engine& e, Qp& qp, SendWqe& w) {
  Requester& r = qp.req;
  const bool rc = is_reliable_connected(qp.qp_type);
  const bool ok =
      qp.qp_type == QpType::raw_packet ? raw_send(e, qp, w) : send_one(e, qp, w, r.next_pkt);
  if (rc && r.timer_deadline == 0) req_arm_timer(e, qp);
  if (!ok) return qp.state.load(std::memory_order_relaxed) == QpState::err ? Turn::failed
                                                                           : Turn::blocked;
  psn_sent(r, wire::psn_add(r.psn, 1));
  if (!rc) r.last_ack_psn = r.psn;
  if (++r.next_pkt == w.npkts) {
    r.next_pkt = 0;
    r.next_wqe++;
    if (!rc) comp_retire_upto(e, qp, r.next_wqe);
  }
  return Turn::sent;
}

// Sends packets of the WQEs from next_wqe on, in order, until the budget, the port, the
// send window, the READ/atomic credits or a fence stop it. In SQD only WQEs already
// started go on (IBA 10.3.1, Send Queue Drain). Returns packets sent.
int send_wqes(Engine& e, Qp& qp, int budget) {
  Requester& r = qp.req;
  const bool draining = qp.state.load(std::memory_order_relaxed) == QpState::sqd;
  int sent = 0;
  while (sent < budget && !e.tx_stalled()) {
    SendWqe* w = qp.sq.peek(r.next_wqe);
    if (!w || (draining && !w->started)) break;
    Turn t;
    if (w->opcode == WrOpcode::bind_mw || w->opcode == WrOpcode::local_inv) {
      t = run_local(e, qp, *w);
    } else if (!w->started && !start_wqe(qp, *w)) {
      break;
    } else if (is_reliable_connected(qp.qp_type) &&
               uint32_t(wire::psn_diff(r.psn, r.last_ack_psn)) >= r.cwnd) {
      break;
    } else if (e.cc_on() && !cc_may_send(e, qp)) {
      break;  // paced to the QP's congestion-control rate (cc.cc); it stays active
    } else {
      t = is_rd_atomic(w->opcode) ? send_rd_atomic(e, qp, *w) : send_segment(e, qp, *w);
    }
    if (t == Turn::sent) sent++;
    else if (t == Turn::blocked) break;
    else if (t == Turn::failed) return sent;
  }
  return sent;
}

}  // namespace

void req_arm_timer(Engine& e, Qp& qp) noexcept {
  qp.req.timer_deadline = qp.ack_timeout_tsc ? e.now() + qp.ack_timeout_tsc : 0;
}

// The window follows TCP's congestion response (RFC 5681) in packets: IBA 9.7.6.1 leaves
// the requester's pace to the implementation. Without it, a requester whose peer cannot
// keep up (a receive ring overflowing, a slow host) resends its whole window after each
// loss into the same overload, and every round of go-back-N makes the next loss certain:
// the retries run out (RETRY_EXC_ERR) on a link that works at a lower rate.
void req_window_acked(Qp& qp, uint32_t n) noexcept {
  Requester& r = qp.req;
  if (r.recovering && wire::psn_diff(r.last_ack_psn, r.recover_psn) >= 0) r.recovering = false;
  if (r.cwnd >= kMaxSendWindow) return;
  if (r.cwnd < r.ssthresh) {  // slow start: +1 a packet, the window doubles each round trip
    r.cwnd = r.cwnd + n < r.ssthresh ? r.cwnd + n : r.ssthresh;
    return;
  }
  r.cwnd_acked += n;  // congestion avoidance: +1 per window acknowledged
  while (r.cwnd_acked >= r.cwnd && r.cwnd < kMaxSendWindow) {
    r.cwnd_acked -= r.cwnd;
    r.cwnd++;
  }
}

void req_window_lost(Qp& qp, bool timeout, uint32_t psn) noexcept {
  Requester& r = qp.req;
  if (!timeout && r.recovering && wire::psn_diff(psn, r.recover_psn) < 0) return;
  const uint32_t half = r.cwnd / 2 > kMinSendWindow ? r.cwnd / 2 : kMinSendWindow;
  r.ssthresh = half;
  r.cwnd = timeout ? kMinSendWindow : half;
  r.cwnd_acked = 0;
  r.recover_psn = r.max_psn;
  r.recovering = true;
}

bool req_needs_service(Qp& qp) noexcept {
  if (qp.resp.pending || qp.resp.held_since) return true;  // the responder owes frames
  switch (req_state(qp)) {
    case ReqState::idle: return false;
    case ReqState::error:
      return qp.sq.peek(qp.req.unacked) || qp.rq.peek(qp.rq_consumed) ||
             (qp.srq && (qp.resp.recv || !qp.resp.last_wqe_event));
    default: return true;
  }
}

void req_rewind(Engine& e, Qp& qp, uint32_t psn) noexcept {
  Requester& r = qp.req;
  for (uint64_t i = r.unacked; i != r.sent_end; i++) {
    SendWqe& w = qp.sq.at(i);
    int32_t d = wire::psn_diff(psn, w.first_psn);
    if (d >= 0 && uint32_t(d) < w.npkts) {
      r.next_wqe = i;
      r.next_pkt = uint32_t(d);
      r.psn = psn;
      DVERBS_QP_COUNT(qp, retransmits, 1);
      e.kick(&qp);
      return;
    }
  }
}

int req_step(Engine& e, Qp& qp, int budget) noexcept {
  Requester& r = qp.req;
  if (e.cc_on()) cc_time(e, qp);
  if (qp.resp.held_since) resp_send_held(e, qp);
  if (qp.resp.pending) {
    // READ/atomic responses and this QP's own requests share the QP's turn: responses
    // take at most half of it while the requester has packets to send. A peer recovering
    // a long READ asks for it again (IBA 9.7.4.1.5.2) and restarts the response stream
    // each time; our own retransmissions must still leave meanwhile, or our timer would
    // use up retry_cnt (IBA 9.7.6.1.3) without one of them sent.
    const int share = req_state(qp) == ReqState::sending ? (budget + 1) / 2 : budget;
    budget -= resp_tx_step(e, qp, share);
  }
  switch (req_state(qp)) {
    case ReqState::error:
      flush_queues(e, qp);
      return 0;
    case ReqState::idle:
      return 0;
    case ReqState::rnr_wait:
      if (e.now() < r.rnr_deadline) return 0;
      r.rnr_deadline = 0;  // resume from the NAKed PSN (rewound when the NAK arrived)
      break;
    case ReqState::waiting:
    case ReqState::sending:
      break;
  }
  if (!check_timer(e, qp)) return 0;
  const int sent = send_wqes(e, qp, budget);
  if (qp.state.load(std::memory_order_relaxed) == QpState::sqd) check_drained(qp);
  return sent;
}

}  // namespace dverbs::pmd::hca
