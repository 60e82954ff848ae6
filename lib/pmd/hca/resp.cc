// Responder engine (IBA 9.7.3, 9.7.4): validates request packets against the expected
// PSN, executes SENDs and RDMA WRITEs into registered memory, completes receives, and owes
// coalesced ACKs or sends NAKs. Owner engine only, qp->lock held.
//
// Steps of one packet, in order:
//   check_state → check_psn (duplicate / out of sequence / expected) → check_sequence
//   (FIRST/MIDDLE/LAST order) → execute (send | write) → advance (ePSN, MSN, ACK owed)
#include <cstring>

#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"

namespace dverbs::pmd::hca {

namespace {

using wire::AethType;
using wire::NakCode;

enum class RespResult : uint8_t { done, rnr, nak_inv, nak_access, nak_op, drop };

// Sends an ACK/NAK carrying `syndrome` for `psn` right away (NAKs are never coalesced).
void send_aeth(Engine& e, Qp& qp, uint8_t syndrome, uint32_t psn) {
  wire::BthFields bth{};
  bth.opcode = wire::op::kRc | wire::op::kAck;
  bth.pkey = wire::kDefaultPkey;
  bth.dest_qp = qp.attr.dest_qp_num;
  bth.psn = psn;
  if (!qp.addr_resolved) return;  // resp_rx learnt the peer's MAC before any ACK is owed
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp.addr, bth, 0, &p);
  if (!m) return;  // like a lost ACK: the requester's timer recovers
  wire::write_aeth(p, syndrome, qp.resp.msn);
  send_packet(e, m, p + sizeof(wire::Aeth), 0);
}

void owe_ack(Qp& qp, uint32_t psn) {
  qp.resp.ack_pending = true;
  qp.resp.ack_psn = psn;
  qp.resp.ack_syndrome = wire::make_syndrome(AethType::ack, wire::kCreditsInvalid);
}

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
  cq_push(*to_cq(qp.recv_cq), wc, solicited);
}

// Takes the receive WQE for a new message; nullptr when the RQ is empty.
RecvWqe* take_recv(Qp& qp) {
  Responder& rs = qp.resp;
  if (!rs.recv) {
    rs.recv = qp.rq.peek(qp.rq_consumed);
    rs.recv_offset = 0;
  }
  return rs.recv;
}

void finish_recv(Qp& qp) {
  qp.rq.retire_one();
  qp.rq_consumed++;
  qp.resp.recv = nullptr;
  qp.resp.recv_offset = 0;
}

// Receive-side error: the receive completes in error and the QP moves to ERR (IBA
// 9.9.3.1.2: responder local errors are "class ... error QP").
void fail_recv(Engine& e, Qp& qp, WcStatus st, const wire::Packet& pkt) {
  if (RecvWqe* w = qp.resp.recv) {
    complete_recv(qp, *w, st, WcOpcode::recv, 0, pkt, false);
    finish_recv(qp);
  }
  qp.state.store(QpState::err, std::memory_order_release);
  flush_queues(e, qp);
}

RespResult execute_send(Engine& e, Qp& qp, const wire::Packet& pkt) {
  Responder& rs = qp.resp;
  const uint32_t f = pkt.info->flags;
  RecvWqe* w = (f & wire::opf::kFirst) ? take_recv(qp) : rs.recv;
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
      finish_recv(qp);
      return RespResult::drop;
    }
    off = wire::kGrhLen;
  }
  WcStatus st = scatter(e.device(), qp.pd, w->sge, w->num_sge, off, pkt.payload, pkt.payload_len);
  if (st != WcStatus::success) [[unlikely]] {
    if (qp.qp_type == QpType::ud) {
      complete_recv(qp, *w, st, WcOpcode::recv, 0, pkt, false);
      finish_recv(qp);
      return RespResult::drop;
    }
    fail_recv(e, qp, st, pkt);
    return st == WcStatus::loc_len_err ? RespResult::nak_inv : RespResult::nak_op;
  }
  rs.recv_offset = off + pkt.payload_len;
  if (f & wire::opf::kLast) {
    uint32_t len = rs.recv_offset - (qp.qp_type == QpType::ud ? wire::kGrhLen : 0);
    complete_recv(qp, *w, WcStatus::success, WcOpcode::recv, len, pkt, pkt.bth->se());
    finish_recv(qp);
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
      mr = mr_get_remote(e.device(), reth->r_key(), qp.pd, reth->vaddr(), len,
                         access::remote_write);
      if (!mr || !(qp.attr.qp_access_flags & access::remote_write)) return RespResult::nak_access;
    }
    rs.write_mr = mr;
    rs.write_va = reth->vaddr();
    rs.write_left = len;
    rs.write_total = len;
  }
  // WRITE with immediate consumes a receive WQE at its last packet: check before writing.
  if ((f & wire::opf::kRecvWqe) && !take_recv(qp))
    return qp.qp_type == QpType::rc ? RespResult::rnr : RespResult::drop;
  if (pkt.payload_len > rs.write_left) return RespResult::nak_inv;
  if ((f & wire::opf::kLast) && pkt.payload_len != rs.write_left) return RespResult::nak_inv;
  if (pkt.payload_len) {
    std::memcpy(reinterpret_cast<void*>(rs.write_va), pkt.payload, pkt.payload_len);
    rs.write_va += pkt.payload_len;
    rs.write_left -= pkt.payload_len;
  }
  if ((f & wire::opf::kLast) && (f & wire::opf::kRecvWqe)) {
    complete_recv(qp, *rs.recv, WcStatus::success, WcOpcode::recv_rdma_with_imm, rs.write_total,
                  pkt,
                  pkt.bth->se());
    finish_recv(qp);
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
  if (!rs.ack_pending) return;
  rs.ack_pending = false;
  send_aeth(e, qp, rs.ack_syndrome, rs.ack_psn);
}

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
  if ((pkt.opcode & 0xe0) != want) {
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
  if (!qp.addr_resolved) {
    // The peer's frames came through its next hop: answer the same way (no ARP wait).
    std::memcpy(qp.addr.dst_mac, pkt.src_mac, 6);
    qp.addr_resolved = true;
  }
  if (!(f & (wire::opf::kSend | wire::opf::kWrite))) {
    // READ and atomics are requests this responder does not execute yet.
    if (qp.qp_type == QpType::rc)
      send_aeth(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::invalid_request)),
                pkt.psn);
    return;
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
    owe_ack(qp, wire::psn_add(rs.epsn, -1u));
    return;
  }
  if (d > 0) {
    // Out of sequence (C9-110): one NAK per gap, then silence until ePSN arrives.
    if (!rs.nak_sent) {
      rs.nak_sent = true;
      qp.seq_naks_sent.fetch_add(1, std::memory_order_relaxed);
      send_aeth(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::psn_seq_error)),
                rs.epsn);
    }
    return;
  }
  // FIRST and MIDDLE packets carry exactly one path MTU of payload (C9-...: IBA 9.7.4.1.3).
  if (!sequence_ok(rs, f) || (!(f & wire::opf::kLast) && pkt.payload_len != qp.mtu)) {
    send_aeth(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::invalid_request)),
              pkt.psn);
    qp.state.store(QpState::err, std::memory_order_release);
    flush_queues(e, qp);
    return;
  }
  RespResult r = (f & wire::opf::kSend) ? execute_send(e, qp, pkt) : execute_write(e, qp, pkt);
  switch (r) {
    case RespResult::done:
      break;
    case RespResult::rnr:
      // No receive posted (IBA 9.7.5.2.8): RNR NAK with our minimum RNR timer; the ePSN
      // does not move, the requester retries this packet.
      send_aeth(e, qp, wire::make_syndrome(AethType::rnr_nak, qp.attr.min_rnr_timer), pkt.psn);
      return;
    case RespResult::nak_inv:
    case RespResult::nak_access:
    case RespResult::nak_op:
    case RespResult::drop: {
      NakCode code = r == RespResult::nak_access ? NakCode::remote_access_error
                     : r == RespResult::nak_op   ? NakCode::remote_op_error
                                                 : NakCode::invalid_request;
      send_aeth(e, qp, wire::make_syndrome(AethType::nak, uint8_t(code)), pkt.psn);
      if (qp.state.load(std::memory_order_relaxed) != QpState::err) {
        qp.state.store(QpState::err, std::memory_order_release);
        flush_queues(e, qp);
      }
      return;
    }
  }
  rs.nak_sent = false;
  rs.in_send = (f & wire::opf::kSend) && !(f & wire::opf::kLast);
  rs.in_write = (f & wire::opf::kWrite) && !(f & wire::opf::kLast);
  rs.epsn = wire::psn_add(rs.epsn, 1);
  if (f & wire::opf::kLast) rs.msn = (rs.msn + 1) & wire::kPsnMask;
  if (pkt.bth->ack_request() || (f & wire::opf::kLast)) owe_ack(qp, pkt.psn);
}

}  // namespace dverbs::pmd::hca
