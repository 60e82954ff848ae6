// Responder engine (IBA 9.7.3, 9.7.4): validates request packets against the expected
// PSN, executes SENDs and RDMA WRITEs into registered memory, completes receives, and owes
// coalesced ACKs or sends NAKs. Owner engine only, qp->lock held.
//
// Steps of one packet, in order:
//   check_state → check_psn (duplicate / out of sequence / expected) → check_sequence
//   (FIRST/MIDDLE/LAST order) → execute (send | write) → advance (ePSN, MSN, ACK owed)
#include <cstring>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"

namespace dverbs::pmd::hca {

namespace {

using wire::AethType;
using wire::NakCode;

// nak_access_reported: an access violation a receive completion already reported.
enum class RespResult : uint8_t { done, rnr, nak_inv, nak_access, nak_access_reported, nak_op, drop };

// What a NAK does besides being sent: nothing (PSN sequence error, RNR), or the QP enters
// ERR (IBA 9.9.3.1.2: the responder's class B/C/D errors are QP-fatal), raising the
// affiliated asynchronous error that tells the consumer why (C9-222.1.1) — unless a receive
// completion already carried the error (error_reported).
enum class NakEffect : uint8_t { none, error_reported, error_access, error_invalid };

// An ACK or NAK that cannot leave (the neighbour has not answered ARP, no mbuf) is held
// and retried by every requester step; past this it is given up like a lost frame (a
// fatal NAK's QP enters ERR all the same), so an unanswered ARP costs no engine forever.
constexpr uint64_t kHoldLimitMs = 2000;

// Sends an ACK/NAK carrying `syndrome` for `psn` right away (NAKs are never coalesced).
// False when it cannot leave now (neighbour unresolved, out of mbufs): the caller holds it
// (nak, resp_send_ack) and resp_send_held sends it later.
bool send_aeth(Engine& e, Qp& qp, uint8_t syndrome, uint32_t psn) {
  wire::BthFields bth{};
  bth.opcode = wire::op::kRc | wire::op::kAck;
  bth.pkey = wire::kDefaultPkey;
  bth.dest_qp = qp.attr.dest_qp_num;
  bth.psn = psn;
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
  if (!m) return false;
  wire::write_aeth(p, syndrome, qp.resp.msn);
  send_packet(e, m, p + sizeof(wire::Aeth), 0);
  return true;
}

// End-to-end credits (IBA 9.7.7.2, Table 44): the 5-bit code of the largest count not
// above the receive WQEs posted. An SRQ has no per-QP credits (code 31, "invalid").
uint8_t credit_code(Qp& qp) {
  static constexpr uint32_t kCredits[31] = {0,    1,    2,    3,     4,     6,     8,    12,
                                            16,   24,   32,   48,    64,    96,    128,  192,
                                            256,  384,  512,  768,   1024,  1536,  2048, 3072,
                                            4096, 6144, 8192, 12288, 16384, 24576, 32768};
  if (qp.srq) return wire::kCreditsInvalid;
  uint64_t posted = qp.rq.claimed() - qp.rq_consumed;
  if (qp.resp.recv && posted) posted--;  // the one being filled is not a credit
  uint8_t code = 0;
  while (code < 30 && kCredits[code + 1] <= posted) code++;
  return code;
}

void owe_ack(Qp& qp, uint32_t psn) {
  qp.resp.ack_pending = true;
  qp.resp.ack_psn = psn;
  qp.resp.ack_syndrome = wire::make_syndrome(AethType::ack, credit_code(qp));
}

// The one way the responder moves its QP to ERR: every queue is flushed and, for an
// error no receive completion reported, the affiliated asynchronous event is raised: Local
// Access Violation for an R_Key, bounds or permission violation, Invalid Request for a
// malformed or unexpected request (IBA 11.6.3, C9-222.1.1).
void enter_error(Engine& e, Qp& qp, NakEffect why) {
  if (why == NakEffect::none || qp.state.load(std::memory_order_relaxed) == QpState::err) return;
  qp.state.store(QpState::err, std::memory_order_release);
  flush_queues(e, qp);
  if (why == NakEffect::error_reported) return;
  mid::Event ev;
  ev.device = qp.device;
  ev.type = why == NakEffect::error_access ? EventType::qp_access_err : EventType::qp_req_err;
  ev.element.qp = &qp;
  mid::dispatch_event(ev);
}

void hold(Engine& e, Qp& qp) {
  if (qp.resp.held_since == 0) {
    qp.resp.held_since = e.now() ? e.now() : 1;
    e.kick(&qp);
  }
}

// Sends a NAK now, or — while READ/atomic responses for earlier PSNs are still queued, or
// while the neighbour is unresolved — later (resp_send_held), so the requester sees
// responses and NAKs in PSN order and a NAK is never lost to ARP. A fatal NAK's QP takes
// no more requests from here on (resp_rx) and enters ERR once it is sent.
void nak(Engine& e, Qp& qp, uint8_t syndrome, uint32_t psn, NakEffect effect) {
  Responder& rs = qp.resp;
  if (!rs.pending && !rs.nak_owed && send_aeth(e, qp, syndrome, psn)) {
    enter_error(e, qp, effect);
    return;
  }
  if (!rs.nak_owed) {
    rs.nak_owed = true;
    rs.nak_syndrome = syndrome;
    rs.nak_psn = psn;
    rs.nak_effect = uint8_t(effect);
  }
  if (!rs.pending) hold(e, qp);
}

NakEffect nak_effect_of(RespResult r) {
  switch (r) {
    case RespResult::nak_access: return NakEffect::error_access;
    case RespResult::nak_op:  // fail_recv completed the receive in error
    case RespResult::nak_access_reported: return NakEffect::error_reported;
    default: return NakEffect::error_invalid;
  }
}

void finish_recv(Qp& qp);

// Completes the receive being filled: the slot is freed before the completion becomes
// visible, so a consumer that reposts on every completion never finds the ring full.
void complete_recv(Qp& qp, const RecvWqe& w, WcStatus st, WcOpcode op, uint32_t len,
                   const wire::Packet& pkt, bool solicited) {
  Wc wc{};
  wc.wr_id = w.wr_id;
  wc.status = st;
  wc.opcode = op;
  wc.byte_len = len;
  wc.qp_num = qp.qp_num;
  wc.src_qp = qp.qp_type == QpType::ud && pkt.deth ? pkt.deth->sqpn() : qp.attr.dest_qp_num;
  if (pkt.info->flags & wire::opf::kImm) {
    wc.imm_data = pkt.imm_data;
    wc.wc_flags |= wc_flags::with_imm;
  } else if (pkt.info->flags & wire::opf::kIeth) {
    wc.invalidated_rkey = pkt.ieth_rkey;
    wc.wc_flags |= wc_flags::with_inv;
  }
  if (qp.qp_type == QpType::ud) wc.wc_flags |= wc_flags::grh;
  finish_recv(qp);  // `w` is dead from here on
  cq_push(*to_cq(qp.recv_cq), wc, solicited);
}

// Takes one WQE out of a shared receive queue (copied: the slot is freed at once) and
// raises the SRQ limit event when the queue drops below the armed limit (IBA 11.5.2.4).
RecvWqe* take_srq(Engine& e, Qp& qp) {
  Srq& srq = *to_srq(qp.srq);
  srq.take_lock.lock();
  RecvWqe* w = srq.rq.peek(srq.rq.retired());
  if (w) {
    qp.resp.srq_wqe = *w;
    srq.rq.retire_one();
  }
  uint64_t left = srq.rq.claimed() - srq.rq.retired();
  uint32_t lim = srq.limit.load(std::memory_order_relaxed);
  bool fire = lim && left < lim && srq.limit.exchange(0, std::memory_order_acq_rel) != 0;
  srq.take_lock.unlock();
  if (fire) {
    mid::Event ev;
    ev.device = &e.device();
    ev.type = EventType::srq_limit_reached;
    ev.element.srq = &srq;
    mid::dispatch_event(ev);
  }
  return w ? &qp.resp.srq_wqe : nullptr;
}

// Takes the receive WQE for a new message; nullptr when the RQ is empty.
RecvWqe* take_recv(Engine& e, Qp& qp) {
  Responder& rs = qp.resp;
  if (!rs.recv) {
    rs.recv = qp.srq ? take_srq(e, qp) : qp.rq.peek(qp.rq_consumed);
    rs.recv_offset = 0;
  }
  return rs.recv;
}

void finish_recv(Qp& qp) {
  if (!qp.srq) {
    qp.rq.retire_one();
    qp.rq_consumed++;
  }
  qp.resp.recv = nullptr;
  qp.resp.recv_offset = 0;
}

// Receive-side error: the receive completes in error, which reports it, and the QP moves
// to ERR (IBA 9.9.3.1.2: responder errors are QP-fatal).
void fail_recv(Engine& e, Qp& qp, WcStatus st, const wire::Packet& pkt) {
  if (RecvWqe* w = qp.resp.recv) {
    complete_recv(qp, *w, st, WcOpcode::recv, 0, pkt, false);
  }
  enter_error(e, qp, NakEffect::error_reported);
}

RespResult execute_send(Engine& e, Qp& qp, const wire::Packet& pkt) {
  Responder& rs = qp.resp;
  const uint32_t f = pkt.info->flags;
  RecvWqe* w = (f & wire::opf::kFirst) ? take_recv(e, qp) : rs.recv;
  if (!w) return qp.qp_type == QpType::rc ? RespResult::rnr : RespResult::drop;
  uint32_t off = rs.recv_offset;
  if (qp.qp_type == QpType::ud) {
    // UD: the 40-byte GRH heads the buffer (IBA 11.4.1.2); for RoCEv2 over IPv4 the IPv4
    // header sits in its last 20 bytes (as rdma-core providers report it).
    uint8_t grh[wire::kGrhLen] = {};
    std::memcpy(grh + 20, pkt.ip, wire::kIpv4HdrLen);
    WcStatus st = scatter(e.device(), qp.pd, w->sge, w->num_sge, 0, grh, sizeof grh);
    if (st != WcStatus::success) {
      complete_recv(qp, *w, st, WcOpcode::recv, 0, pkt, false);
      return RespResult::drop;
    }
    off = wire::kGrhLen;
  }
  WcStatus st = scatter(e.device(), qp.pd, w->sge, w->num_sge, off, pkt.payload, pkt.payload_len);
  if (st != WcStatus::success) [[unlikely]] {
    if (qp.qp_type == QpType::ud) {
      complete_recv(qp, *w, st, WcOpcode::recv, 0, pkt, false);
      return RespResult::drop;
    }
    fail_recv(e, qp, st, pkt);
    return st == WcStatus::loc_len_err ? RespResult::nak_inv : RespResult::nak_op;
  }
  rs.recv_offset = off + pkt.payload_len;
  if ((f & wire::opf::kIeth) && !mw_invalidate(e.device(), pkt.ieth_rkey, qp.pd)) {
    // SEND with Invalidate of an rkey that is no bound type 2 window of this PD
    // (IBA 9.4.?, 10.6.7.2.4): the receive fails and the requester gets a NAK.
    fail_recv(e, qp, WcStatus::loc_prot_err, pkt);
    return RespResult::nak_inv;
  }
  if (f & wire::opf::kLast) {
    // For UD, byte_len counts the 40-byte GRH as well (IBA 11.4.1.2).
    uint32_t len = rs.recv_offset;
    complete_recv(qp, *w, WcStatus::success, WcOpcode::recv, len, pkt, pkt.bth->se());
  }
  return RespResult::done;
}

RespResult execute_write(Engine& e, Qp& qp, const wire::Packet& pkt) {
  Responder& rs = qp.resp;
  const uint32_t f = pkt.info->flags;
  if (f & wire::opf::kFirst) {
    const wire::Reth* reth = pkt.reth;
    uint32_t len = reth->length();
    // Remote access checks (IBA 9.7.4.1.4 / C9-88): rkey, PD, bounds, permission.
    Mr* mr = nullptr;
    if (len) {
      mr = mr_get_remote(e.device(), reth->r_key(), qp.pd, qp.qp_num, reth->vaddr(), len,
                         access::remote_write);
      if (!mr || !(qp.attr.qp_access_flags & access::remote_write)) {
        // A WRITE with immediate names the receive WQE it consumes: the violation is
        // reported there (IBV_WC_LOC_ACCESS_ERR, "a protection error ... during an RDMA
        // Write with Immediate"), not as an asynchronous error (C9-222.1.1).
        if ((f & wire::opf::kRecvWqe) && take_recv(e, qp)) {
          fail_recv(e, qp, WcStatus::loc_access_err, pkt);
          return RespResult::nak_access_reported;
        }
        return RespResult::nak_access;
      }
    }
    (void)mr;
    rs.write_rkey = reth->r_key();
    rs.write_va = reth->vaddr();
    rs.write_left = len;
    rs.write_total = len;
  }
  // WRITE with immediate consumes a receive WQE at its last packet: check before writing.
  if ((f & wire::opf::kRecvWqe) && !take_recv(e, qp))
    return qp.qp_type == QpType::rc ? RespResult::rnr : RespResult::drop;
  if (pkt.payload_len > rs.write_left) return RespResult::nak_inv;
  if ((f & wire::opf::kLast) && pkt.payload_len != rs.write_left) return RespResult::nak_inv;
  // Every packet re-checks its own range: the region may have been deregistered since the
  // FIRST packet (the key check happens at use, never only once per message).
  if (pkt.payload_len) {
    Mr* mr = mr_get_remote(e.device(), rs.write_rkey, qp.pd, qp.qp_num, rs.write_va,
                           pkt.payload_len, access::remote_write);
    if (!mr) return RespResult::nak_access;
    std::memcpy(mr_host(*mr, rs.write_va), pkt.payload, pkt.payload_len);
    rs.write_va += pkt.payload_len;
    rs.write_left -= pkt.payload_len;
  }
  if ((f & wire::opf::kLast) && (f & wire::opf::kRecvWqe)) {
    complete_recv(qp, *rs.recv, WcStatus::success, WcOpcode::recv_rdma_with_imm, rs.write_total,
                  pkt,
                  pkt.bth->se());
  }
  return RespResult::done;
}

// Are FIRST/MIDDLE/LAST in order (IBA 9.7.4.1.3, C9-93)?
bool sequence_ok(const Responder& rs, uint32_t f) {
  bool mid_msg = rs.in_send || rs.in_write;
  if (f & wire::opf::kFirst) return !mid_msg;
  if (f & wire::opf::kSend) return rs.in_send;
  if (f & wire::opf::kWrite) return rs.in_write;
  return false;
}

// Entries of the responder-resource ring; 0 for a QP that never entered RTR as RC.
uint32_t res_cap(const Qp& qp) { return qp.rd_res_size; }

// Queues a READ/atomic request for its responses (in PSN order after the ones pending).
// False when every responder resource still owes responses (IBA 9.7.4.1.5: too many
// outstanding requests → NAK invalid request).
bool add_resource(Qp& qp, const RespResource& r) {
  Responder& rs = qp.resp;
  const uint32_t cap = res_cap(qp);
  if (rs.pending >= cap) return false;
  uint32_t slot = rs.res_head % cap;
  qp.rd_res[slot] = r;
  qp.rd_res[slot].valid = true;
  rs.res_head = (slot + 1) % cap;
  if (rs.pending++ == 0) {
    rs.res_next_tx = slot;
    rs.resp_psn = rs.stream_start = r.first_psn;
  }
  return true;
}

RespResult execute_read(Engine& e, Qp& qp, const wire::Packet& pkt) {
  const wire::Reth* reth = pkt.reth;
  const uint32_t len = reth->length();
  if (len > (1u << 31)) return RespResult::nak_inv;
  if (!(qp.attr.qp_access_flags & access::remote_read)) return RespResult::nak_access;
  if (len && !mr_get_remote(e.device(), reth->r_key(), qp.pd, qp.qp_num, reth->vaddr(), len,
                            access::remote_read))
    return RespResult::nak_access;
  RespResource r;
  r.first_psn = pkt.psn;
  r.npkts = len == 0 ? 1 : (len + qp.mtu - 1) / qp.mtu;
  r.va = reth->vaddr();
  r.rkey = reth->r_key();
  r.length = len;
  if (!add_resource(qp, r)) return RespResult::nak_inv;
  return RespResult::done;
}

RespResult execute_atomic(Engine& e, Qp& qp, const wire::Packet& pkt) {
  const wire::AtomicEth* a = pkt.atomic_eth;
  const uint64_t va = a->vaddr();
  if (!(qp.attr.qp_access_flags & access::remote_atomic)) return RespResult::nak_access;
  if (va & 7) return RespResult::nak_inv;  // atomics are naturally aligned (C9-...)
  Mr* mr = mr_get_remote(e.device(), a->r_key(), qp.pd, qp.qp_num, va, 8, access::remote_atomic);
  if (!mr) return RespResult::nak_access;
  if (qp.resp.pending >= res_cap(qp)) return RespResult::nak_inv;  // (also: no ring)
  // The CPU's own atomic makes this atomic against every other atomic on the address,
  // from any QP or engine, with no lock (IBA 9.4.5 requires atomicity per HCA).
  auto* p = reinterpret_cast<uint64_t*>(mr_host(*mr, va));
  uint64_t orig;
  if (wire::op::operation(pkt.opcode) == wire::op::kCmpSwap) {
    orig = a->compare_data();
    __atomic_compare_exchange_n(p, &orig, a->swap_add_data(), false, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
  } else {
    orig = __atomic_fetch_add(p, a->swap_add_data(), __ATOMIC_SEQ_CST);
  }
  RespResource r;
  r.atomic = true;
  r.first_psn = pkt.psn;
  r.npkts = 1;
  r.orig = orig;
  add_resource(qp, r);
  return RespResult::done;
}

// A duplicate READ or atomic (IBA 9.7.4.1.5.2): restart the responses at the resource
// holding its PSN — READs re-read memory, atomics resend the saved original value and are
// never executed twice. Unknown (too old) duplicates are dropped.
void replay(Qp& qp, uint32_t psn) {
  Responder& rs = qp.resp;
  const uint32_t cap = res_cap(qp);
  // A go-back-N resend repeats every request after the first lost one: duplicates at or
  // past the stream position are answered by the stream already running.
  if (rs.pending && wire::psn_diff(psn, rs.resp_psn) >= 0) return;
  for (uint32_t age = 1; age <= cap; age++) {
    uint32_t slot = (rs.res_head + cap - age) % cap;
    const RespResource& r = qp.rd_res[slot];
    if (!r.valid) break;
    int32_t d = wire::psn_diff(psn, r.first_psn);
    if (d < 0 || uint32_t(d) >= r.npkts) continue;
    rs.res_next_tx = slot;
    rs.pending = age;  // this entry and every newer one
    rs.resp_psn = rs.stream_start = psn;
    return;
  }
}

void ud_rx(Engine& e, Qp& qp, const wire::Packet& pkt) {
  // Q_Key check (IBA 10.2.4.2, C10-15): a mismatch drops the packet silently.
  if (!pkt.deth || pkt.deth->q_key() != qp.attr.qkey) {
    e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // A UD message fits one packet; anything longer than the path MTU is invalid (C11-...).
  if (pkt.payload_len > qp.mtu) {
    e.device().counters().rx_bad_frame.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  execute_send(e, qp, pkt);
}

}  // namespace

void resp_send_ack(Engine& e, Qp& qp) noexcept {
  Responder& rs = qp.resp;
  if (!rs.ack_pending || rs.pending || rs.nak_owed) return;  // PSN order
  if (!send_aeth(e, qp, rs.ack_syndrome, rs.ack_psn)) {
    // Held until it can leave (resp_send_held): an ACK dropped for want of an ARP answer
    // would cost the requester a whole retransmission timeout.
    rs.ack_held = true;
    hold(e, qp);
    return;
  }
  rs.ack_pending = rs.ack_held = false;
}

void resp_send_held(Engine& e, Qp& qp) noexcept {
  Responder& rs = qp.resp;
  if (rs.pending) return;  // READ/atomic responses first, in PSN order
  const bool give_up =
      rs.held_since && e.now() - rs.held_since > kHoldLimitMs * e.tsc_hz() / 1000;
  if (rs.nak_owed) {
    if (!send_aeth(e, qp, rs.nak_syndrome, rs.nak_psn) && !give_up) return hold(e, qp);
    rs.nak_owed = false;
    enter_error(e, qp, NakEffect(rs.nak_effect));
  }
  if (qp.state.load(std::memory_order_relaxed) == QpState::err) {
    rs.ack_pending = rs.ack_held = false;  // nothing is acknowledged in ERR
  } else if (rs.ack_held) {
    rs.ack_held = false;
    if (give_up) rs.ack_pending = false;
    resp_send_ack(e, qp);
    if (rs.ack_held) return;
  }
  rs.held_since = 0;
}

int resp_tx_step(Engine& e, Qp& qp, int budget) noexcept {
  Responder& rs = qp.resp;
  int sent = 0;
  const uint32_t cap = res_cap(qp);
  while (rs.pending && sent < budget && !e.tx_stalled()) {
    RespResource& r = qp.rd_res[rs.res_next_tx];
    const uint32_t idx = uint32_t(wire::psn_diff(rs.resp_psn, r.first_psn));
    const uint32_t ack = wire::make_syndrome(AethType::ack, wire::kCreditsInvalid);
    wire::BthFields bth{};
    bth.pkey = wire::kDefaultPkey;
    bth.dest_qp = qp.attr.dest_qp_num;
    bth.psn = rs.resp_psn;
    uint8_t* p;
    if (r.atomic) {
      bth.opcode = wire::op::kRc | wire::op::kAtomicAck;
      rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
      if (!m) break;
      wire::write_aeth(p, uint8_t(ack), rs.msn);
      wire::write_atomic_ack_eth(p + sizeof(wire::Aeth), r.orig);
      send_packet(e, m, p + sizeof(wire::Aeth) + sizeof(wire::AtomicAckEth), 0);
    } else {
      const uint32_t off = idx * qp.mtu;
      const uint32_t len = r.length - off < qp.mtu ? r.length - off : qp.mtu;
      const bool first = rs.resp_psn == rs.stream_start;
      const bool last = idx + 1 == r.npkts;
      using namespace wire::op;
      bth.opcode = uint8_t(kRc | (first && last ? kReadRespOnly
                                  : first       ? kReadRespFirst
                                  : last        ? kReadRespLast
                                                : kReadRespMiddle));
      bth.pad = wire::pad_for(len);
      // Memory is re-validated for every packet: a region deregistered meanwhile ends the
      // stream with a remote access NAK instead of a read of freed memory.
      Mr* mr = len ? mr_get_remote(e.device(), r.rkey, qp.pd, qp.qp_num, r.va + off, len,
                                   access::remote_read)
                   : nullptr;
      if (len && !mr) {
        rs.pending = 0;
        nak(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::remote_access_error)),
            rs.resp_psn, NakEffect::error_access);
        return sent;
      }
      rte_mbuf* m = build_packet(e, qp, qp.addr, bth, len, &p);
      if (!m) break;
      if (wire::opcode_info(bth.opcode).flags & wire::opf::kAeth) {
        wire::write_aeth(p, uint8_t(ack), rs.msn);
        p += sizeof(wire::Aeth);
      }
      if (len) std::memcpy(p, mr_host(*mr, r.va + off), len);
      send_packet(e, m, p + len, bth.pad);
    }
    sent++;
    rs.resp_psn = wire::psn_add(rs.resp_psn, 1);
    if (idx + 1 == r.npkts) {
      rs.res_next_tx = (rs.res_next_tx + 1) % cap;
      // The next request may come several PSNs later (SENDs/WRITEs in between).
      if (rs.pending > 1) rs.resp_psn = qp.rd_res[rs.res_next_tx].first_psn;
      rs.stream_start = rs.resp_psn;
      if (--rs.pending == 0) {
        // The ACK of later SENDs/WRITEs and any NAK waited for these responses (PSN order).
        if (rs.ack_pending) resp_send_ack(e, qp);
        if (rs.nak_owed) {
          resp_send_held(e, qp);
          if (qp.state.load(std::memory_order_relaxed) == QpState::err) return sent;
        }
      }
    }
  }
  return sent;
}

namespace {

// Payload length against the path MTU (IBA 9.7.4.1.3): FIRST and MIDDLE carry exactly one
// PMTU, LAST from 1 byte to one PMTU, ONLY up to one PMTU. READ requests and atomics carry
// no payload of this kind (their lengths are checked where they execute).
bool length_ok(const Qp& qp, uint32_t f, uint32_t len) noexcept {
  if (f & (wire::opf::kRead | wire::opf::kAtomic)) return true;
  if (!(f & wire::opf::kLast)) return len == qp.mtu;
  if (!(f & wire::opf::kFirst)) return len >= 1 && len <= qp.mtu;
  return len <= qp.mtu;
}

}  // namespace

void resp_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept {
  Responder& rs = qp.resp;
  const uint32_t f = pkt.info->flags;
  QpState s = qp.state.load(std::memory_order_acquire);
  // Requests are accepted in RTR and later, not in RESET/INIT/ERR (IBA 10.3.1).
  if (s != QpState::rtr && s != QpState::rts && s != QpState::sqd) {
    e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  uint8_t want = qp.qp_type == QpType::rc   ? wire::op::kRc
                 : qp.qp_type == QpType::uc ? wire::op::kUc
                                            : wire::op::kUd;
  if (wire::op::transport(pkt.opcode) != want) {
    e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (qp.qp_type == QpType::ud) {
    ud_rx(e, qp, pkt);
    return;
  }
  // Connected QPs accept packets only from their peer QP.
  if (pkt.src_ip != qp.addr.dst_ip) {
    e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (s == QpState::rtr && !rs.comm_est_sent) {
    // First packet while in RTR: Communication Established (IBA 11.6.3.1), so a passive
    // side knows it may move to RTS.
    rs.comm_est_sent = true;
    mid::Event ev;
    ev.device = qp.device;
    ev.type = EventType::comm_est;
    ev.element.qp = &qp;
    mid::dispatch_event(ev);
  }
  const bool rd_atomic = f & (wire::opf::kRead | wire::opf::kAtomic);
  if (rd_atomic && qp.qp_type != QpType::rc) {
    e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
    return;  // UC has no READ or atomics (IBA 9.8.1): dropped
  }

  const int32_t d = wire::psn_diff(pkt.psn, rs.epsn);
  if (qp.qp_type == QpType::uc) {
    // UC (IBA 9.8.3): no ACKs; a gap drops the message in progress and resyncs on the next
    // packet that starts a message.
    if (d != 0) {
      rs.in_send = rs.in_write = false;
      if (rs.recv) rs.recv_offset = 0;  // the receive WQE is reused for the next message
      if (!(f & wire::opf::kFirst)) {
        rs.epsn = wire::psn_add(pkt.psn, 1);
        return;
      }
    }
    if (!sequence_ok(rs, f)) {
      rs.in_send = rs.in_write = false;
      if (rs.recv) rs.recv_offset = 0;
      if (!(f & wire::opf::kFirst)) {
        rs.epsn = wire::psn_add(pkt.psn, 1);
        return;
      }
    }
    rs.epsn = wire::psn_add(pkt.psn, 1);
    if (!length_ok(qp, f, pkt.payload_len)) {  // no NAKs in UC: the message is dropped
      // Counted like the other drops by a QP's rules: the frame itself parsed (rx_packets).
      e.device().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
      rs.in_send = rs.in_write = false;
      if (rs.recv) rs.recv_offset = 0;
      return;
    }
    RespResult r = (f & wire::opf::kSend) ? execute_send(e, qp, pkt) : execute_write(e, qp, pkt);
    if (r == RespResult::done) {
      rs.in_send = (f & wire::opf::kSend) && !(f & wire::opf::kLast);
      rs.in_write = (f & wire::opf::kWrite) && !(f & wire::opf::kLast);
    } else {
      rs.in_send = rs.in_write = false;
      if (rs.recv) rs.recv_offset = 0;
    }
    return;
  }

  // ---- RC ----
  if (d < 0) {
    // Duplicate (IBA 9.7.4.1.5.1): never re-executed; re-acknowledge so the requester
    // learns how far we got.
    qp.dup_rcvd.fetch_add(1, std::memory_order_relaxed);
    if (rd_atomic) {
      replay(qp, pkt.psn);
      if (rs.pending) e.kick(&qp);
    } else {
      owe_ack(qp, wire::psn_add(rs.epsn, -1u));
    }
    return;
  }
  if (d > 0) {
    // Out of sequence (C9-110): one NAK per gap, then silence until ePSN arrives.
    if (!rs.nak_sent) {
      rs.nak_sent = true;
      qp.seq_naks_sent.fetch_add(1, std::memory_order_relaxed);
      nak(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::psn_seq_error)), rs.epsn,
          NakEffect::none);
    }
    return;
  }
  // A fatal NAK is owed: the QP takes no more requests and fails once it is sent.
  if (rs.nak_owed && NakEffect(rs.nak_effect) != NakEffect::none) return;
  if (!sequence_ok(rs, f) || !length_ok(qp, f, pkt.payload_len)) {
    nak(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::invalid_request)), pkt.psn,
        NakEffect::error_invalid);
    return;
  }
  RespResult r = (f & wire::opf::kSend)    ? execute_send(e, qp, pkt)
                 : (f & wire::opf::kWrite) ? execute_write(e, qp, pkt)
                 : (f & wire::opf::kRead)  ? execute_read(e, qp, pkt)
                                           : execute_atomic(e, qp, pkt);
  switch (r) {
    case RespResult::done:
      break;
    case RespResult::rnr:
      // No receive posted (IBA 9.7.5.2.8): RNR NAK with our minimum RNR timer; the ePSN
      // does not move, the requester retries this packet.
      nak(e, qp, wire::make_syndrome(AethType::rnr_nak, qp.attr.min_rnr_timer), pkt.psn,
          NakEffect::none);
      return;
    case RespResult::nak_inv:
    case RespResult::nak_access:
    case RespResult::nak_access_reported:
    case RespResult::nak_op:
    case RespResult::drop: {
      NakCode code = r == RespResult::nak_access || r == RespResult::nak_access_reported
                         ? NakCode::remote_access_error
                     : r == RespResult::nak_op ? NakCode::remote_op_error
                                               : NakCode::invalid_request;
      nak(e, qp, wire::make_syndrome(AethType::nak, uint8_t(code)), pkt.psn, nak_effect_of(r));
      return;
    }
  }
  rs.nak_sent = false;
  rs.in_send = (f & wire::opf::kSend) && !(f & wire::opf::kLast);
  rs.in_write = (f & wire::opf::kWrite) && !(f & wire::opf::kLast);
  if (f & wire::opf::kLast) rs.msn = (rs.msn + 1) & wire::kPsnMask;
  if (rd_atomic) {
    // A READ consumes one PSN per response packet; its responses are its acknowledgment.
    const RespResource& last = qp.rd_res[(rs.res_head + res_cap(qp) - 1) % res_cap(qp)];
    rs.epsn = wire::psn_add(pkt.psn, last.npkts);
    e.kick(&qp);
    return;
  }
  rs.epsn = wire::psn_add(rs.epsn, 1);
  if (pkt.bth->ack_request() || (f & wire::opf::kLast)) owe_ack(qp, pkt.psn);
}

}  // namespace dverbs::pmd::hca
