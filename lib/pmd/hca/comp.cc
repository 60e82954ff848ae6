// Completer engine (IBA 9.7.5, the requester's receive side): consumes ACKs and NAKs,
// retires send WQEs in order, turns NAKs into retransmission or error completions, and
// flushes a QP in ERR. Owner engine only, qp->lock held.
#include <iterator>

#include <rte_cycles.h>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"
#include "pmd/hca/xrc.h"

namespace dverbs::pmd::hca {

namespace {

// ---- the completer's steps for one response packet (comp_rx) ----
//
//   check_state ──► check_opcode ─┬─► read_response
//                                 ├─► atomic_ack
//                                 └─► check_ack_psn ─┬─► ack
//                                                    ├─► rnr_nak
//                                                    ├─► seq_nak
//                                                    └─► fatal_nak
//
// Each step returns the next; every path ends in done, drop (the packet is counted in
// rx_bad_state and ignored) or bad_response (the oldest WQE fails with BAD_RESP_ERR).

// rnr_retry 7 means retry forever (IBA 9.7.5.2.8).
constexpr uint8_t kRnrRetryForever = 7;

// Retires the oldest SQ slot and reports it: the slot is freed before the completion is
// visible, so a consumer that posts again on every completion never sees ENOMEM.
void complete_send(Qp& qp, const SendWqe& w, WcStatus status) {
  if (status == WcStatus::success && !w.signaled) {  // most WQEs of a signaled batch
    qp.sq.retire_one();
    qp.req.unacked++;
    return;
  }
  Wc wc{};
  wc.wr_id = w.wr_id;
  wc.status = status;
  wc.opcode = mid::wc_opcode(w.opcode);
  wc.byte_len = w.length;
  wc.qp_num = qp.qp_num;
  qp.sq.retire_one();  // `w` is dead from here on
  qp.req.unacked++;
  cq_push(*to_cq(qp.send_cq), wc, false);
}

// RNR NAK timer codes (IBA Table 45), in microseconds.
constexpr uint32_t kRnrTimerUs[32] = {
    655360, 10,  20,  30,  40,  60,   80,   120,  160,  240,  320,   480,   640,   960,  1280, 1920,
    2560,   3840, 5120, 7680, 10240, 15360, 20480, 30720, 40960, 61440, 81920, 122880, 163840,
    245760, 327680, 491520};

void restart_timer(Engine& e, Qp& qp) {
  Requester& r = qp.req;
  if (r.psn == r.last_ack_psn) {
    r.timer_deadline = 0;
    return;
  }
  req_arm_timer(e, qp);
}

// Moves the acknowledged point forward to `next` (the oldest PSN still owed).
void advance_ack(Qp& qp, uint32_t next) {
  Requester& r = qp.req;
  const int32_t n = wire::psn_diff(next, r.last_ack_psn);
  if (n <= 0) return;
  r.last_ack_psn = next;
  req_window_acked(qp, uint32_t(n));
  // Keep seq_nak_psn within a PSN of the acknowledged point, so that it never looks ahead
  // after a PSN wrap and a sequence NAK for `next` counts as a new gap (comp_rx).
  if (wire::psn_diff(r.seq_nak_psn, wire::psn_add(next, -1u)) < 0)
    r.seq_nak_psn = wire::psn_add(next, -1u);
  r.retry_left = qp.attr.retry_cnt;  // progress resets both retry budgets
  r.rnr_left = qp.attr.rnr_retry;
  r.gap_rewound = false;
}

// After the acknowledged point moved: if ACKs of packets sent before a rewind overtook
// the retransmission, skip what is already acknowledged.
void fast_forward(Engine& e, Qp& qp) {
  Requester& r = qp.req;
  if (wire::psn_diff(r.last_ack_psn, r.psn) <= 0) return;
  r.psn = r.last_ack_psn;
  if (r.unacked == r.sent_end) {
    r.next_wqe = r.unacked;
    r.next_pkt = 0;
  } else {
    req_rewind(e, qp, r.last_ack_psn);
  }
}

// Resends from the acknowledged point, once per gap (a burst of out-of-order responses
// must not cost one retry each).
void rewind_gap(Engine& e, Qp& qp) {
  Requester& r = qp.req;
  if (r.gap_rewound) return;
  r.gap_rewound = true;
  req_rewind(e, qp, r.last_ack_psn);
}

// All packets up to and including `psn` are acknowledged (IBA 9.7.5.1.1). A READ or
// atomic inside that range whose responses did not all arrive was answered by packets
// that got lost: the ACK implies a NAK for it (IBA 9.7.5.1.3) and it is requested again.
void ack_through(Engine& e, Qp& qp, uint32_t psn) {
  Requester& r = qp.req;
  uint64_t upto = r.unacked;
  bool implied_nak = false;
  uint32_t next = wire::psn_add(psn, 1);  // the acknowledged point this ACK claims
  while (upto != r.sent_end) {
    const SendWqe& w = qp.sq.at(upto);
    if (is_rd_atomic(w.opcode) && !w.done) {
      // Only a READ's own responses move the acknowledged point through its PSNs: an ACK
      // reaching into or past it means responses were lost (IBA 9.7.5.1.6, 9.7.6.1.4).
      uint32_t progress =
          wire::psn_diff(r.last_ack_psn, w.first_psn) > 0 ? r.last_ack_psn : w.first_psn;
      if (wire::psn_diff(next, progress) > 0) {
        implied_nak = true;
        next = progress;
      }
      break;
    }
    if (wire::psn_diff(wire::psn_add(w.first_psn, w.npkts - 1), psn) > 0) break;
    upto++;
  }
  comp_retire_upto(e, qp, upto);
  advance_ack(qp, next);
  if (implied_nak) rewind_gap(e, qp);
  fast_forward(e, qp);
  restart_timer(e, qp);
}

// The WQE a READ response or atomic ACK at `psn` answers, after implicitly acknowledging
// everything before it; nullptr if the packet answers nothing we wait for.
SendWqe* responder_target(Engine& e, Qp& qp, uint32_t psn) {
  Requester& r = qp.req;
  if (wire::psn_diff(psn, r.last_ack_psn) > 0) ack_through(e, qp, wire::psn_add(psn, -1u));
  if (psn != r.last_ack_psn || r.unacked == r.sent_end) return nullptr;
  SendWqe& w = qp.sq.at(r.unacked);
  int32_t d = wire::psn_diff(psn, w.first_psn);
  if (!is_rd_atomic(w.opcode) || d < 0 || uint32_t(d) >= w.npkts) return nullptr;
  return &w;
}

// The answer to an ATOMIC WRITE or FLUSH (IBA 1.5, as rxe sends it): a READ RESPONSE
// ONLY without payload. Anything else for it is a bad response.
CompStep iba15_response(Engine& e, Qp& qp, SendWqe& w, const wire::Packet& pkt) {
  if (pkt.opcode != (wire::op::kRc | wire::op::kReadRespOnly) || pkt.payload_len != 0)
    return CompStep::bad_response;
  w.done = true;
  ack_through(e, qp, pkt.psn);
  return CompStep::done;
}

// A READ response (IBA 9.7.5.1.6): its payload lands at its offset of the READ's buffer.
CompStep read_response(Engine& e, Qp& qp, const wire::Packet& pkt) {
  Requester& r = qp.req;
  if (wire::psn_diff(pkt.psn, r.last_ack_psn) < 0) return CompStep::done;  // already consumed
  SendWqe* w = responder_target(e, qp, pkt.psn);
  if (w && is_iba15(w->opcode)) return iba15_response(e, qp, *w, pkt);
  if (!w || w->opcode != WrOpcode::rdma_read) {
    // Responses before this one are missing: ask again from the first we lack.
    if (wire::psn_diff(pkt.psn, r.last_ack_psn) > 0) rewind_gap(e, qp);
    else if (r.unacked != r.sent_end) return CompStep::bad_response;
    return CompStep::done;
  }
  const uint32_t f = pkt.info->flags;
  const uint32_t off = uint32_t(wire::psn_diff(pkt.psn, w->first_psn)) * qp.mtu;
  const bool last = f & wire::opf::kLast;
  // Every response but the last carries exactly one path MTU (IBA 9.7.5.1.6).
  if ((!last && pkt.payload_len != qp.mtu) || off + pkt.payload_len > w->length ||
      (last && off + pkt.payload_len != w->length))
    return CompStep::bad_response;
  WcStatus st = scatter(e.device(), qp.pd, w->sge, w->num_sge, off, pkt.payload, pkt.payload_len);
  if (st != WcStatus::success) {
    comp_fail(e, qp, st);
    return CompStep::done;
  }
  advance_ack(qp, wire::psn_add(pkt.psn, 1));
  if (last) {
    w->done = true;
    ack_through(e, qp, pkt.psn);
  } else {
    fast_forward(e, qp);  // responses to a request sent before a rewind
    restart_timer(e, qp);
  }
  return CompStep::done;
}

// An atomic ACK: the original value lands in the WQE's buffer.
CompStep atomic_ack(Engine& e, Qp& qp, const wire::Packet& pkt) {
  Requester& r = qp.req;
  if (wire::psn_diff(pkt.psn, r.last_ack_psn) < 0) return CompStep::done;  // duplicate
  SendWqe* w = responder_target(e, qp, pkt.psn);
  if (!w) {
    rewind_gap(e, qp);
    return CompStep::done;
  }
  if (!mid::is_atomic(w->opcode) || !pkt.atomic_ack) return CompStep::bad_response;
  uint64_t orig = pkt.atomic_ack->orig_value();
  WcStatus st = scatter(e.device(), qp.pd, w->sge, w->num_sge, 0,
                        reinterpret_cast<const uint8_t*>(&orig), sizeof orig);
  if (st != WcStatus::success) {
    comp_fail(e, qp, st);
    return CompStep::done;
  }
  w->done = true;
  ack_through(e, qp, pkt.psn);
  return CompStep::done;
}

// Only an RC or XRC_SEND QP that sends requests (RTS, SQD) takes responses, and only the
// opcodes of its own transport.
CompStep check_state(Qp& qp, const wire::Packet& pkt) {
  QpState s = qp.state.load(std::memory_order_acquire);
  const uint8_t transport = qp.qp_type == QpType::xrc_send ? wire::op::kXrc : wire::op::kRc;
  if ((qp.qp_type != QpType::rc && qp.qp_type != QpType::xrc_send) ||
      (s != QpState::rts && s != QpState::sqd) || wire::op::transport(pkt.opcode) != transport)
    return CompStep::drop;
  return CompStep::check_opcode;
}

// Which response this is (IBA 9.7.5.1). READ responses carry an AETH on FIRST/LAST/ONLY
// that must be an ACK: a NAK for a READ comes as an ACK packet.
CompStep check_opcode(const wire::Packet& pkt) {
  if (pkt.info->flags & wire::opf::kRead) {
    if (pkt.aeth && wire::aeth_type(pkt.aeth->syndrome) != wire::AethType::ack)
      return CompStep::bad_response;
    return CompStep::read_response;
  }
  const uint8_t op = wire::op::operation(pkt.opcode);  // RC or XRC (check_state)
  if (op == wire::op::kAtomicAck) return CompStep::atomic_ack;
  if (op != wire::op::kAck || !pkt.aeth) return CompStep::drop;
  return CompStep::check_ack_psn;
}

// An ACK/NAK must name a PSN that is outstanding (IBA 9.7.5.1.2): older ones are stale
// duplicates and ignored; a NAK always names an unacknowledged PSN.
CompStep check_ack_psn(const Qp& qp, const wire::Packet& pkt) {
  const Requester& r = qp.req;
  if (wire::psn_diff(pkt.psn, r.max_psn) >= 0) return CompStep::done;
  const wire::AethType type = wire::aeth_type(pkt.aeth->syndrome);
  if (wire::psn_diff(pkt.psn, r.last_ack_psn) < (type == wire::AethType::ack ? -1 : 0))
    return CompStep::done;
  switch (type) {
    case wire::AethType::ack: return CompStep::ack;
    case wire::AethType::rnr_nak: return CompStep::rnr_nak;
    case wire::AethType::nak:
      return wire::NakCode(wire::aeth_value(pkt.aeth->syndrome)) == wire::NakCode::psn_seq_error
                 ? CompStep::seq_nak
                 : CompStep::fatal_nak;
    case wire::AethType::reserved: break;
  }
  return CompStep::bad_response;
}

CompStep ack(Engine& e, Qp& qp, uint32_t psn) {
  if (wire::psn_diff(psn, qp.req.last_ack_psn) >= 0) ack_through(e, qp, psn);
  return CompStep::done;
}

// Receiver not ready (IBA 9.7.5.2.8): packets before the NAKed one are implicitly
// acknowledged; the requester waits the encoded RNR timer, then resends from the oldest
// PSN still owed (ack_through may have found a READ whose responses are missing).
CompStep rnr_nak(Engine& e, Qp& qp, uint32_t psn, uint8_t syndrome) {
  Requester& r = qp.req;
  if (wire::psn_diff(psn, r.last_ack_psn) > 0) ack_through(e, qp, wire::psn_add(psn, -1u));
  DVERBS_QP_COUNT(qp, rnr_naks_rcvd, 1);
  if (qp.attr.rnr_retry != kRnrRetryForever) {
    if (r.rnr_left == 0) {
      comp_fail(e, qp, WcStatus::rnr_retry_exc_err);
      return CompStep::done;
    }
    r.rnr_left--;
  }
  uint64_t us = kRnrTimerUs[wire::aeth_value(syndrome)];
  r.rnr_deadline = e.now() + us * e.tsc_hz() / 1000000;
  if (r.rnr_deadline == 0) r.rnr_deadline = 1;
  r.timer_deadline = 0;
  req_rewind(e, qp, r.last_ack_psn);
  return CompStep::done;
}

// PSN sequence error (IBA 9.7.5.1.3): go back to the PSN the responder expects, with a
// smaller send window if the gap is a new loss.
CompStep seq_nak(Engine& e, Qp& qp, uint32_t psn) {
  Requester& r = qp.req;
  DVERBS_QP_COUNT(qp, seq_naks_rcvd, 1);
  if (wire::psn_diff(psn, r.seq_nak_psn) > 0) {
    // The responder sends one sequence NAK per gap, naming its expected PSN (C9-110),
    // so a NAK beyond both the acknowledged point and the previous sequence NAK shows that
    // it executed every request before it (IBA 9.7.5.1.2). That is progress, and restores
    // the retry budget (IBA 9.7.6.1.3) as advance_ack does for ACKs, even when the
    // acknowledged point cannot move past a READ or atomic whose responses were lost.
    if (wire::psn_diff(psn, r.last_ack_psn) > 0) r.retry_left = qp.attr.retry_cnt;
    r.seq_nak_psn = psn;
  }
  if (wire::psn_diff(psn, r.last_ack_psn) > 0) ack_through(e, qp, wire::psn_add(psn, -1u));
  if (r.retry_left == 0) {
    comp_fail(e, qp, WcStatus::retry_exc_err);
    return CompStep::done;
  }
  r.retry_left--;
  req_window_lost(qp, false, psn);
  req_rewind(e, qp, r.last_ack_psn);
  return CompStep::done;
}

// The other NAK codes are fatal: the WQE completes with the error the
// code names, after the packets before the NAKed one are implicitly acknowledged.
CompStep fatal_nak(Engine& e, Qp& qp, uint32_t psn, uint8_t syndrome) {
  DVERBS_QP_COUNT(qp, fatal_naks_rcvd, 1);
  if (wire::psn_diff(psn, qp.req.last_ack_psn) > 0) ack_through(e, qp, wire::psn_add(psn, -1u));
  WcStatus st = WcStatus::bad_resp_err;
  switch (wire::NakCode(wire::aeth_value(syndrome))) {
    case wire::NakCode::invalid_request: st = WcStatus::rem_inv_req_err; break;
    case wire::NakCode::remote_access_error: st = WcStatus::rem_access_err; break;
    case wire::NakCode::remote_op_error: st = WcStatus::rem_op_err; break;
    case wire::NakCode::invalid_rd_request: st = WcStatus::rem_inv_rd_req_err; break;
    case wire::NakCode::psn_seq_error: break;  // seq_nak's
  }
  comp_fail(e, qp, st);
  return CompStep::done;
}

}  // namespace

const char* name(CompStep step) noexcept {
  static constexpr const char* kNames[] = {
      "check_state", "check_opcode", "check_ack_psn", "read_response", "atomic_ack", "ack",
      "rnr_nak",     "seq_nak",      "fatal_nak",     "bad_response",  "drop",       "done",
  };
  static_assert(std::size(kNames) == size_t(CompStep::done) + 1);
  return size_t(step) < std::size(kNames) ? kNames[size_t(step)] : "?";
}

void comp_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept {
  const uint32_t psn = pkt.psn;
  CompStep step = CompStep::check_state;
  for (;;) {
    switch (step) {
      case CompStep::check_state: step = check_state(qp, pkt); break;
      case CompStep::check_opcode: step = check_opcode(pkt); break;
      case CompStep::check_ack_psn: step = check_ack_psn(qp, pkt); break;
      case CompStep::read_response: step = read_response(e, qp, pkt); break;
      case CompStep::atomic_ack: step = atomic_ack(e, qp, pkt); break;
      case CompStep::ack: step = ack(e, qp, psn); break;
      case CompStep::rnr_nak: step = rnr_nak(e, qp, psn, pkt.aeth->syndrome); break;
      case CompStep::seq_nak: step = seq_nak(e, qp, psn); break;
      case CompStep::fatal_nak: step = fatal_nak(e, qp, psn, pkt.aeth->syndrome); break;
      case CompStep::bad_response:
        comp_fail(e, qp, WcStatus::bad_resp_err);
        return;
      case CompStep::drop:
        e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
        return;
      case CompStep::done:
        return;
    }
  }
}

void comp_retire_upto(Engine&, Qp& qp, uint64_t upto) noexcept {
  Requester& r = qp.req;
  while (r.unacked != upto) {
    const SendWqe& w = qp.sq.at(r.unacked);
    if (is_rd_atomic(w.opcode) && w.npkts) r.rd_inflight--;
    complete_send(qp, w, WcStatus::success);
  }
  if (r.next_wqe < r.unacked) {
    r.next_wqe = r.unacked;
    r.next_pkt = 0;
  }
}

void comp_fail_at(Engine& e, Qp& qp, uint64_t idx, WcStatus status) noexcept {
  // WQEs before the failing one were not acknowledged yet: they flush, in order, ahead of
  // the error (their fate at the responder is unknown once the QP leaves RTS).
  Requester& r = qp.req;
  while (r.unacked != idx && qp.sq.peek(r.unacked)) {
    complete_send(qp, qp.sq.at(r.unacked), WcStatus::wr_flush_err);
  }
  comp_fail(e, qp, status);
}

void comp_fail(Engine& e, Qp& qp, WcStatus status) noexcept {
  Requester& r = qp.req;
  if (SendWqe* w = qp.sq.peek(r.unacked)) {
    complete_send(qp, *w, status);  // error completions are always generated
  }
  qp.state.store(QpState::err, std::memory_order_release);
  flush_queues(e, qp);
}

void flush_queues(Engine&, Qp& qp) noexcept {
  Requester& r = qp.req;
  while (SendWqe* w = qp.sq.peek(r.unacked)) {
    complete_send(qp, *w, WcStatus::wr_flush_err);
  }
  r.next_wqe = r.sent_end = r.unacked;
  r.next_pkt = 0;
  r.timer_deadline = r.rnr_deadline = 0;
  r.rd_inflight = 0;
  qp.resp.pending = 0;
  Responder& rs = qp.resp;
  if (qp.qp_type == QpType::xrc_recv) return xrc_flush_recv(qp);
  if (qp.srq) {
    // A WQE already taken from the SRQ is flushed; the SRQ keeps the rest. The consumer
    // learns the QP will take no more from it (IBA 11.6.3.1: Last WQE Reached).
    if (RecvWqe* w = rs.recv) {
      Wc wc{};
      wc.wr_id = w->wr_id;
      wc.status = WcStatus::wr_flush_err;
      wc.opcode = WcOpcode::recv;
      wc.qp_num = qp.qp_num;
      cq_push(*to_cq(qp.recv_cq), wc, false);
      rs.recv = nullptr;
    }
    rs.in_send = rs.in_write = false;
    if (!rs.last_wqe_event) {
      rs.last_wqe_event = true;
      mid::dispatch_qp_event(qp, EventType::qp_last_wqe_reached);
    }
    return;
  }
  while (RecvWqe* w = qp.rq.peek(qp.rq_consumed)) {
    Wc wc{};
    wc.wr_id = w->wr_id;
    wc.status = WcStatus::wr_flush_err;
    wc.opcode = WcOpcode::recv;
    wc.qp_num = qp.qp_num;
    qp.rq.retire_one();  // slot first, completion second (see complete_send)
    qp.rq_consumed++;
    cq_push(*to_cq(qp.recv_cq), wc, false);
  }
  rs.recv = nullptr;
  rs.in_send = rs.in_write = false;
}

}  // namespace dverbs::pmd::hca
