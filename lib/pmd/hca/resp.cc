// Responder engine (IBA 9.7.4; UC 9.8.3, UD 9.8.4): takes the request packets of a QP,
// executes SENDs, RDMA WRITEs, READs and atomics against registered memory, completes
// receives, and owes coalesced ACKs or sends NAKs. READ and atomic responses leave later,
// in PSN order, from the responder-resource ring (resp_tx_step). Owner engine only,
// qp->lock held; nothing here allocates, sleeps, logs or makes a system call.
//
// A request packet walks the steps of RespStep (engine.h), one function each, every step
// returning the next; resp_rx runs the machine of the QP's transport:
//
//   all  check_state → check_op_type → check_source (RC, UC) | check_qkey (UD)
//        a packet the QP does not take → drop (counted) → done
//
//   RC   check_psn → check_sequence → check_length → [check_rkey] → check_resources →
//        [check_placement] → execute → acknowledge → done
//          check_psn: older → duplicate (ACK again, or replay a READ/atomic) → done
//                     newer → nak_psn_seq_error (once per gap) → done
//                     expected while a fatal NAK is owed → done
//          check_rkey for a RETH or AtomicETH (WRITE FIRST/ONLY, READ, atomic; ATOMIC
//            WRITE and FLUSH in iba15.cc, answered like a READ from a responder resource);
//          check_placement for a WRITE packet
//          a check or execute that fails → nak_rnr | nak_invalid_request |
//            nak_remote_access | nak_remote_access_reported | nak_remote_op_error → done
//
//   UC   the same steps, but nothing is ever sent: check_psn and check_sequence lose the
//        message in progress on a gap or a broken sequence and resume at the next FIRST
//        or ONLY; where RC would NAK → drop_message → done (a length error: drop)
//
//   UD   check_length → check_resources → execute → done; no receive WQE: done
//
// Every fatal error reaches ERR through enter_error: at once when a receive completion
// reports it (fail_recv), otherwise when its NAK has left (nak, resp_send_held).
#include <array>
#include <bit>
#include <cstring>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"
#include "pmd/hca/xrc.h"

namespace dverbs::pmd::hca {

namespace {

// The steps of one request packet run as one machine per transport (run<rc_step> and so
// on): the small steps and the dispatchers are inlined into it, and the path of a request
// that passes every check is written out step by step, so the machine costs no more than
// the straight-line code it names.
#define DV_STEP [[gnu::always_inline]] inline

using wire::AethType;
using wire::NakCode;
namespace opf = wire::opf;

// The requests answered from a responder resource: READ, atomics, and IBA 1.5's ATOMIC
// WRITE and FLUSH (iba15.cc).
constexpr uint32_t kResourceOps = opf::kRead | opf::kAtomic | opf::kAtomicWrite | opf::kFlush;

constexpr std::array<const char*, size_t(RespStep::done) + 1> kStepNames = {
    "check_state",       "check_op_type",       "check_source",
    "check_qkey",        "check_psn",           "check_sequence",
    "check_length",      "check_rkey",          "check_resources",
    "check_placement",   "execute",             "acknowledge",
    "duplicate",         "drop_message",        "nak_psn_seq_error",
    "nak_rnr",           "nak_invalid_request", "nak_remote_access",
    "nak_remote_access_reported",               "nak_remote_op_error",
    "drop",              "done",
};
static_assert(kStepNames.back() != nullptr, "a name for every RespStep");

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
// above `posted`. The counts are 0–4, then 2^k (code 2k) and 3 * 2^(k-1) (code 2k + 1) up
// to 32768 (code 30), so the code comes from the highest set bit and the one below it.
constexpr uint8_t credits_to_code(uint64_t posted) {
  if (posted >= 32768) return 30;
  if (posted < 4) return uint8_t(posted);
  const int k = std::bit_width(posted) - 1;  // 2^k <= posted < 2^(k+1)
  return uint8_t(2 * k + ((posted >> (k - 1)) & 1));
}

constexpr bool credit_codes_match_table_44() {
  constexpr uint32_t kCredits[31] = {0,    1,    2,    3,     4,     6,     8,    12,
                                     16,   24,   32,   48,    64,    96,    128,  192,
                                     256,  384,  512,  768,   1024,  1536,  2048, 3072,
                                     4096, 6144, 8192, 12288, 16384, 24576, 32768};
  for (uint8_t c = 0; c <= 30; c++) {
    if (credits_to_code(kCredits[c]) != c) return false;
    if (kCredits[c] && credits_to_code(kCredits[c] - 1) != c - 1) return false;
  }
  return credits_to_code(1u << 20) == 30;
}
static_assert(credit_codes_match_table_44());

// The credits an ACK carries: the receive WQEs posted, but the one being filled. An SRQ
// has no per-QP credits (code 31, "invalid").
uint8_t credit_code(Qp& qp) {
  if (qp.srq || qp.qp_type == QpType::xrc_recv) return wire::kCreditsInvalid;
  uint64_t posted = qp.rq.claimed() - qp.rq_consumed;
  if (qp.resp.recv && posted) posted--;
  return credits_to_code(posted);
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
  mid::dispatch_qp_event(
      qp, why == NakEffect::error_access ? EventType::qp_access_err : EventType::qp_req_err);
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
// no more requests from here on (rc_check_psn) and enters ERR once it is sent.
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

// ---------------------------------------------------------------- receive WQEs

void finish_recv(Qp& qp);

constexpr uint8_t kSlRoceV2Ipv4 = 0x8 | 0x2;  // a UD completion's sl: UDP, IPv4 (below)

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
  if (pkt.info->flags & opf::kImm) {
    wc.imm_data = pkt.imm_data;
    wc.wc_flags |= wc_flags::with_imm;
  } else if (pkt.info->flags & opf::kIeth) {
    wc.invalidated_rkey = pkt.ieth_rkey;
    wc.wc_flags |= wc_flags::with_inv;
  }
  if (qp.qp_type == QpType::ud) {
    wc.wc_flags |= wc_flags::grh;
    // A RoCEv2 frame carries no SL. IBA A17.4.5.1 has a RoCEv2 UD completion say whether
    // the frame was IPv4 or IPv6 (the layout of the 40-byte GRH area) and ibv_wc has no
    // field for it; RoCE NICs put it in sl as mlx5 does (bit 3: UDP, bits 2:0: 2 = IPv4),
    // and UCX (1.13 to 1.17) reads it there, dropping every UD packet otherwise.
    wc.sl = kSlRoceV2Ipv4;
  }
  // An XRC receive completes on the CQ of the XRC SRQ it came from.
  mid::Cq* cq = qp.qp_type == QpType::xrc_recv ? qp.resp.xrc_srq->cq : qp.recv_cq;
  finish_recv(qp);  // `w` is dead from here on
  cq_push(*to_cq(cq), wc, solicited);
}

// Takes one WQE out of a shared receive queue (copied: the slot is freed at once) and
// raises the SRQ limit event when the queue drops below the armed limit (IBA 11.5.2.4).
RecvWqe* take_srq(Qp& qp, Srq& srq) {
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
    mid::dispatch_srq_event(srq, EventType::srq_limit_reached);
  }
  return w ? &qp.resp.srq_wqe : nullptr;
}

// Takes the receive WQE for a new message; nullptr when the RQ is empty.
RecvWqe* take_recv(Qp& qp) {
  Responder& rs = qp.resp;
  if (!rs.recv) {
    // XRC_RECV: the XRC SRQ this packet's XRCETH names (xrc_bind).
    Srq* srq = qp.qp_type == QpType::xrc_recv ? rs.xrc_srq : to_srq(qp.srq);
    rs.recv = srq ? take_srq(qp, *srq) : qp.rq.peek(qp.rq_consumed);
    rs.recv_offset = 0;
  }
  return rs.recv;
}

void finish_recv(Qp& qp) {
  if (!qp.srq && qp.qp_type != QpType::xrc_recv) {
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

// ---------------------------------------------------------------- responder resources

// Entries of the responder-resource ring; 0 for a QP that never entered RTR as RC.
uint32_t res_cap(const Qp& qp) { return qp.rd_res_size; }

// Queues a READ/atomic request for its responses (in PSN order after the ones pending).
// check_resources made sure an entry is free (IBA 9.7.4.1.5).
void add_resource(Qp& qp, const RespResource& r) {
  Responder& rs = qp.resp;
  const uint32_t cap = res_cap(qp);
  uint32_t slot = rs.res_head % cap;
  qp.rd_res[slot] = r;
  qp.rd_res[slot].valid = true;
  rs.res_head = (slot + 1) % cap;
  if (rs.pending++ == 0) {
    rs.res_next_tx = slot;
    rs.resp_psn = rs.stream_start = r.first_psn;
  }
}

// The entry add_resource wrote last.
const RespResource& newest_resource(const Qp& qp) {
  return qp.rd_res[(qp.resp.res_head + res_cap(qp) - 1) % res_cap(qp)];
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

// ---------------------------------------------------------------- one request packet

// A request packet and what its steps found out about it.
struct Request {
  Engine& e;
  Qp& qp;
  Responder& rs;
  const wire::Packet& pkt;
  const uint32_t flags;  // opf::* of its opcode
  // The PD memory is checked against: the QP's, or for XRC_RECV its XRC SRQ's (xrc_bind).
  const mid::Pd* pd = qp.pd;
  Mr* mr = nullptr;      // check_rkey (atomic), check_placement (WRITE) → execute

  bool has(uint32_t f) const { return flags & f; }
  Device& dev() const { return e.device(); }
};

// UC: the message in progress is lost; its receive WQE, if any, is kept for the next one.
void drop_message(Responder& rs) {
  rs.in_send = rs.in_write = false;
  if (rs.recv) rs.recv_offset = 0;
}

// Where the message stands after a packet executed: in the middle of a SEND or a WRITE,
// or between messages.
DV_STEP void note_progress(Request& rq) {
  rq.rs.in_send = rq.has(opf::kSend) && !rq.has(opf::kLast);
  rq.rs.in_write = rq.has(opf::kWrite) && !rq.has(opf::kLast);
}

// Are FIRST/MIDDLE/LAST in order (IBA 9.7.4.1.3, C9-93)?
DV_STEP bool sequence_ok(const Request& rq) {
  const bool mid_msg = rq.rs.in_send || rq.rs.in_write;
  if (rq.has(opf::kFirst)) return !mid_msg;
  if (rq.has(opf::kSend)) return rq.rs.in_send;
  if (rq.has(opf::kWrite)) return rq.rs.in_write;
  return false;
}

// Payload length against the path MTU (IBA 9.7.4.1.3): FIRST and MIDDLE carry exactly one
// PMTU, LAST from 1 byte to one PMTU, ONLY up to one PMTU. READ requests and atomics carry
// no payload of this kind (check_rkey checks their lengths).
DV_STEP bool length_ok(const Request& rq) {
  const uint32_t len = rq.pkt.payload_len;
  const uint32_t mtu = rq.qp.mtu;
  if (rq.has(kResourceOps)) return true;
  if (!rq.has(opf::kLast)) return len == mtu;
  if (!rq.has(opf::kFirst)) return len >= 1 && len <= mtu;
  return len <= mtu;
}

// ---- checks every transport makes

// Requests are taken in RTR, RTS and SQD, not in RESET, INIT or ERR (IBA 10.3.1).
DV_STEP RespStep check_state(Request& rq) {
  const QpState s = rq.qp.state.load(std::memory_order_acquire);
  if (s != QpState::rtr && s != QpState::rts && s != QpState::sqd) return RespStep::drop;
  return RespStep::check_op_type;
}

uint8_t transport_of(QpType t) {
  if (t == QpType::xrc_recv) return wire::op::kXrc;
  return t == QpType::rc ? wire::op::kRc : t == QpType::uc ? wire::op::kUc : wire::op::kUd;
}

// The opcode belongs to the QP's transport, and READ and atomics to RC and XRC alone
// (IBA 9.8.1). An XRC_SEND QP takes no requests.
DV_STEP RespStep check_op_type(Request& rq) {
  const QpType t = rq.qp.qp_type;
  if (wire::op::transport(rq.pkt.opcode) != transport_of(t) || t == QpType::xrc_send)
    return RespStep::drop;
  if (rq.has(kResourceOps) && t != QpType::rc && t != QpType::xrc_recv) return RespStep::drop;
  return t == QpType::ud ? RespStep::check_qkey : RespStep::check_source;
}

// The first packet while in RTR: Communication Established (IBA 11.6.3.1), so a passive
// side knows it may move to RTS.
DV_STEP void communication_established(Request& rq) {
  if (rq.qp.state.load(std::memory_order_relaxed) != QpState::rtr || rq.rs.comm_est_sent) return;
  rq.rs.comm_est_sent = true;
  mid::dispatch_qp_event(rq.qp, EventType::comm_est);
}

// A connected QP takes packets from its peer only (IBA 9.6).
DV_STEP RespStep check_source(Request& rq) {
  if (rq.pkt.src_ip != rq.qp.addr.dst_ip) return RespStep::drop;
  communication_established(rq);
  return RespStep::check_psn;
}

// A packet the QP's rules refuse is dropped silently and counted (the frame itself parsed).
RespStep drop(Request& rq) {
  rq.dev().counters().rx_bad_state.fetch_add(1, std::memory_order_relaxed);
  return RespStep::done;
}

// XRC_RECV: the request's XRC SRQ, named by its XRCETH, must be of the QP's domain; its
// PD is then the one memory is checked against (the XRC annex). False: refused (NAK).
bool xrc_bind(Request& rq) {
  const wire::Xrceth* x = rq.pkt.xrceth;
  Srq* s = x ? xrc_request_srq(rq.dev(), rq.qp, x->srq_num(), rq.has(opf::kFirst)) : nullptr;
  rq.rs.xrc_srq = s;
  if (s) rq.pd = s->pd;
  return s != nullptr;
}

// After check_length: a new RDMA request (RETH or AtomicETH) has its target checked.
DV_STEP RespStep after_length(Request& rq) {
  if (rq.qp.qp_type == QpType::xrc_recv && !xrc_bind(rq)) return RespStep::nak_invalid_request;
  return rq.has(opf::kReth | opf::kAtomicEth) ? RespStep::check_rkey : RespStep::check_resources;
}

// ---- check_rkey: the target of a new WRITE, READ or atomic as a whole (IBA 9.7.4.1.4,
// C9-88): the QP's remote access, and the R_Key's PD, bounds and rights (mr.cc). The key is
// checked again at use: check_placement for every WRITE packet, resp_tx_step for every
// READ response.

RespStep check_write_rkey(Request& rq) {
  const wire::Reth& reth = *rq.pkt.reth;
  const uint32_t len = reth.length();
  if (len && (!mr_get_remote(rq.dev(), reth.r_key(), rq.pd, rq.qp.qp_num, reth.vaddr(), len,
                             access::remote_write) ||
              !(rq.qp.attr.qp_access_flags & access::remote_write))) {
    // A WRITE with immediate names the receive WQE it consumes: the violation is
    // reported there (IBV_WC_LOC_ACCESS_ERR, "a protection error ... during an RDMA
    // Write with Immediate"), not as an asynchronous error (C9-222.1.1).
    if (rq.has(opf::kRecvWqe) && take_recv(rq.qp)) {
      fail_recv(rq.e, rq.qp, WcStatus::loc_access_err, rq.pkt);
      return RespStep::nak_remote_access_reported;
    }
    return RespStep::nak_remote_access;
  }
  // A zero-length WRITE checks no R_Key; its packets place nothing.
  rq.rs.write_rkey = reth.r_key();
  rq.rs.write_va = reth.vaddr();
  rq.rs.write_left = rq.rs.write_total = len;
  return RespStep::check_resources;
}

RespStep check_read_rkey(Request& rq) {
  const wire::Reth& reth = *rq.pkt.reth;
  const uint32_t len = reth.length();
  if (len > (1u << 31)) return RespStep::nak_invalid_request;  // beyond any message
  if (!(rq.qp.attr.qp_access_flags & access::remote_read)) return RespStep::nak_remote_access;
  if (len && !mr_get_remote(rq.dev(), reth.r_key(), rq.pd, rq.qp.qp_num, reth.vaddr(), len,
                            access::remote_read))
    return RespStep::nak_remote_access;
  return RespStep::check_resources;
}

RespStep check_atomic_rkey(Request& rq) {
  const wire::AtomicEth& a = *rq.pkt.atomic_eth;
  if (!(rq.qp.attr.qp_access_flags & access::remote_atomic)) return RespStep::nak_remote_access;
  if (a.vaddr() & 7) return RespStep::nak_invalid_request;  // an aligned 8-byte word only
  rq.mr = mr_get_remote(rq.dev(), a.r_key(), rq.pd, rq.qp.qp_num, a.vaddr(), 8,
                        access::remote_atomic);
  return rq.mr ? RespStep::check_resources : RespStep::nak_remote_access;
}

RespStep check_rkey(Request& rq) {
  if (rq.has(opf::kAtomicWrite | opf::kFlush))
    return iba15_check_rkey(rq.e, rq.qp, rq.pkt, &rq.mr);
  if (rq.has(opf::kRead)) return check_read_rkey(rq);
  if (rq.has(opf::kAtomic)) return check_atomic_rkey(rq);
  return check_write_rkey(rq);
}

// Resources: a SEND takes its receive WQE at FIRST and fills it to LAST, a WRITE with
// immediate takes one at its last packet — none posted: RNR NAK (IBA 9.7.5.2.8). A READ or
// atomic needs a free responder resource: beyond max_dest_rd_atomic outstanding it is an
// invalid request (IBA 9.7.4.1.5).
DV_STEP RespStep check_resources(Request& rq) {
  if (rq.has(kResourceOps)) {
    if (rq.rs.pending >= res_cap(rq.qp)) return RespStep::nak_invalid_request;  // (or no ring)
  } else if (rq.has(opf::kRecvWqe)) {
    const RecvWqe* w = rq.has(opf::kFirst | opf::kWrite) ? take_recv(rq.qp) : rq.rs.recv;
    if (!w) return RespStep::nak_rnr;
  }
  return rq.has(opf::kWrite) ? RespStep::check_placement : RespStep::execute;
}

// Where a WRITE packet's payload goes: within the DMA length its RETH announced (length
// errors, IBA 9.7.4.1.3) and, checked for every packet, still under the R_Key: the region
// may have been deregistered since the FIRST packet.
RespStep check_placement(Request& rq) {
  const uint32_t len = rq.pkt.payload_len;
  if (len > rq.rs.write_left) return RespStep::nak_invalid_request;
  if (rq.has(opf::kLast) && len != rq.rs.write_left) return RespStep::nak_invalid_request;
  if (len == 0) return RespStep::execute;
  rq.mr = mr_get_remote(rq.dev(), rq.rs.write_rkey, rq.pd, rq.qp.qp_num, rq.rs.write_va, len,
                        access::remote_write);
  return rq.mr ? RespStep::execute : RespStep::nak_remote_access;
}

// ---- execute: every check passed; what can still fail is local: the receive WQE's buffers
// (scatter) or the window a SEND with Invalidate names

RespStep execute_send(Request& rq) {
  Responder& rs = rq.rs;
  const wire::Packet& pkt = rq.pkt;
  RecvWqe& w = *rs.recv;
  WcStatus st =
      scatter(rq.dev(), rq.pd, w.sge, w.num_sge, rs.recv_offset, pkt.payload, pkt.payload_len);
  if (st != WcStatus::success) [[unlikely]] {
    fail_recv(rq.e, rq.qp, st, pkt);
    return st == WcStatus::loc_len_err ? RespStep::nak_invalid_request
                                       : RespStep::nak_remote_op_error;
  }
  rs.recv_offset += pkt.payload_len;
  if (rq.has(opf::kIeth) && !mw_invalidate(rq.dev(), pkt.ieth_rkey, rq.pd)) {
    // SEND with Invalidate of an rkey that is no bound type 2 window of this PD
    // (IBA 10.6.7.2.4): the receive fails and the requester gets a NAK.
    fail_recv(rq.e, rq.qp, WcStatus::loc_prot_err, pkt);
    return RespStep::nak_invalid_request;
  }
  if (rq.has(opf::kLast))
    complete_recv(rq.qp, w, WcStatus::success, WcOpcode::recv, rs.recv_offset, pkt, pkt.bth->se());
  return RespStep::acknowledge;
}

RespStep execute_write(Request& rq) {
  Responder& rs = rq.rs;
  const wire::Packet& pkt = rq.pkt;
  if (pkt.payload_len) {
    std::memcpy(mr_host(*rq.mr, rs.write_va), pkt.payload, pkt.payload_len);
    rs.write_va += pkt.payload_len;
    rs.write_left -= pkt.payload_len;
  }
  if (rq.has(opf::kLast) && rq.has(opf::kRecvWqe)) {
    complete_recv(rq.qp, *rs.recv, WcStatus::success, WcOpcode::recv_rdma_with_imm, rs.write_total,
                  pkt, pkt.bth->se());
  }
  return RespStep::acknowledge;
}

// A READ is answered later, one response per PMTU of its DMA length (resp_tx_step).
RespStep execute_read(Request& rq) {
  const wire::Reth& reth = *rq.pkt.reth;
  const uint32_t len = reth.length();
  RespResource r;
  r.first_psn = rq.pkt.psn;
  r.npkts = len == 0 ? 1 : (len + rq.qp.mtu - 1) / rq.qp.mtu;
  r.va = reth.vaddr();
  r.rkey = reth.r_key();
  r.length = len;
  r.pd = rq.pd;
  add_resource(rq.qp, r);
  return RespStep::acknowledge;
}

// The CPU's own atomic makes this atomic against every other atomic on the address, from
// any QP or engine, with no lock (IBA 9.4.5 requires atomicity per HCA).
RespStep execute_atomic(Request& rq) {
  const wire::AtomicEth& a = *rq.pkt.atomic_eth;
  auto* p = reinterpret_cast<uint64_t*>(mr_host(*rq.mr, a.vaddr()));
  uint64_t orig;
  if (wire::op::operation(rq.pkt.opcode) == wire::op::kCmpSwap) {
    orig = a.compare_data();
    __atomic_compare_exchange_n(p, &orig, a.swap_add_data(), false, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
  } else {
    orig = __atomic_fetch_add(p, a.swap_add_data(), __ATOMIC_SEQ_CST);
  }
  RespResource r;
  r.atomic = true;
  r.first_psn = rq.pkt.psn;
  r.npkts = 1;
  r.orig = orig;
  add_resource(rq.qp, r);
  return RespStep::acknowledge;
}

// ATOMIC WRITE and FLUSH execute in iba15.cc and are answered from their resource.
RespStep execute_iba15(Request& rq) {
  RespResource r;
  iba15_execute(rq.pkt, rq.mr, &r);
  add_resource(rq.qp, r);
  return RespStep::acknowledge;
}

DV_STEP RespStep execute(Request& rq) {
  if (rq.has(opf::kSend)) return execute_send(rq);
  if (rq.has(opf::kWrite)) return execute_write(rq);
  if (rq.has(opf::kRead)) return execute_read(rq);
  if (rq.has(opf::kAtomicWrite | opf::kFlush)) return execute_iba15(rq);
  return execute_atomic(rq);
}

// The steps every transport takes alike; rc_step, uc_step and ud_step handle their own
// first and pass the others here.
DV_STEP RespStep shared_step(Request& rq, RespStep s) {
  switch (s) {
    case RespStep::check_state: return check_state(rq);
    case RespStep::check_op_type: return check_op_type(rq);
    case RespStep::check_source: return check_source(rq);
    case RespStep::check_rkey: return check_rkey(rq);
    case RespStep::check_resources: return check_resources(rq);
    case RespStep::check_placement: return check_placement(rq);
    case RespStep::execute: return execute(rq);
    case RespStep::drop: return drop(rq);
    default: return RespStep::done;  // not a step of this transport
  }
}

// ---- RC

// PSN check: the expected PSN goes on; an older one is a duplicate (IBA 9.7.4.1.5.1); a
// newer one is out of sequence: one NAK per gap, then silence until the ePSN comes (C9-110).
DV_STEP RespStep rc_check_psn(Request& rq) {
  const int32_t d = wire::psn_diff(rq.pkt.psn, rq.rs.epsn);
  if (d < 0) return RespStep::duplicate;
  if (d > 0) {
    DVERBS_QP_COUNT(rq.qp, out_of_sequence, 1);
    return rq.rs.nak_sent ? RespStep::done : RespStep::nak_psn_seq_error;
  }
  // A fatal NAK is owed: the QP takes no more requests and fails once it is sent.
  if (rq.rs.nak_owed && NakEffect(rq.rs.nak_effect) != NakEffect::none) return RespStep::done;
  return RespStep::check_sequence;
}

// A duplicate is never executed again: a SEND or WRITE is acknowledged again, so the
// requester learns how far we got; a READ or atomic is answered again from its responder
// resource (replay).
RespStep duplicate(Request& rq) {
  DVERBS_QP_COUNT(rq.qp, dup_rcvd, 1);
  if (rq.has(kResourceOps)) {
    replay(rq.qp, rq.pkt.psn);
    if (rq.rs.pending) rq.e.kick(&rq.qp);
  } else {
    owe_ack(rq.qp, wire::psn_add(rq.rs.epsn, -1u));
  }
  return RespStep::done;
}

DV_STEP RespStep rc_check_sequence(Request& rq) {
  return sequence_ok(rq) ? RespStep::check_length : RespStep::nak_invalid_request;
}

DV_STEP RespStep rc_check_length(Request& rq) {
  return length_ok(rq) ? after_length(rq) : RespStep::nak_invalid_request;
}

// The packet executed: the ePSN moves past it — past every response PSN for a READ, whose
// responses are its acknowledgment — the MSN counts a finished message (C9-148), and an
// ACK is owed for an AckReq or a message's last packet (coalesced by the engine).
DV_STEP RespStep rc_acknowledge(Request& rq) {
  Responder& rs = rq.rs;
  rs.nak_sent = false;
  note_progress(rq);
  if (rq.has(opf::kLast)) rs.msn = (rs.msn + 1) & wire::kPsnMask;
  if (rq.has(kResourceOps)) {
    rs.epsn = wire::psn_add(rq.pkt.psn, newest_resource(rq.qp).npkts);
    rq.e.kick(&rq.qp);
    return RespStep::done;
  }
  rs.epsn = wire::psn_add(rs.epsn, 1);
  if (rq.pkt.bth->ack_request() || rq.has(opf::kLast)) owe_ack(rq.qp, rq.pkt.psn);
  return RespStep::done;
}

RespStep nak_with(Request& rq, NakCode code, NakEffect effect) {
  DVERBS_QP_COUNT(rq.qp, fatal_naks_sent, 1);
  nak(rq.e, rq.qp, wire::make_syndrome(AethType::nak, uint8_t(code)), rq.pkt.psn, effect);
  return RespStep::done;
}

RespStep nak_psn_seq_error(Request& rq) {
  rq.rs.nak_sent = true;
  DVERBS_QP_COUNT(rq.qp, seq_naks_sent, 1);
  nak(rq.e, rq.qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::psn_seq_error)), rq.rs.epsn,
      NakEffect::none);
  return RespStep::done;
}

// No receive posted (IBA 9.7.5.2.8): RNR NAK with our minimum RNR timer; the ePSN does
// not move, the requester retries this packet.
RespStep nak_rnr(Request& rq) {
  DVERBS_QP_COUNT(rq.qp, rnr_naks_sent, 1);
  nak(rq.e, rq.qp, wire::make_syndrome(AethType::rnr_nak, rq.qp.attr.min_rnr_timer), rq.pkt.psn,
      NakEffect::none);
  return RespStep::done;
}

DV_STEP RespStep rc_step(Request& rq, RespStep s) {
  switch (s) {
    case RespStep::check_psn: return rc_check_psn(rq);
    case RespStep::check_sequence: return rc_check_sequence(rq);
    case RespStep::check_length: return rc_check_length(rq);
    case RespStep::acknowledge: return rc_acknowledge(rq);
    case RespStep::duplicate: return duplicate(rq);
    case RespStep::nak_psn_seq_error: return nak_psn_seq_error(rq);
    case RespStep::nak_rnr: return nak_rnr(rq);
    case RespStep::nak_invalid_request:
      return nak_with(rq, NakCode::invalid_request, NakEffect::error_invalid);
    case RespStep::nak_remote_access:
      return nak_with(rq, NakCode::remote_access_error, NakEffect::error_access);
    case RespStep::nak_remote_access_reported:
      return nak_with(rq, NakCode::remote_access_error, NakEffect::error_reported);
    case RespStep::nak_remote_op_error:  // fail_recv completed the receive in error
      return nak_with(rq, NakCode::remote_op_error, NakEffect::error_reported);
    default: return shared_step(rq, s);
  }
}

// ---- UC (IBA 9.8.3): no ACK and no NAK is ever sent

// A packet that cannot go on with the message in progress loses it; one that starts a
// message begins the next, any other is dropped.
RespStep uc_resync(Request& rq, RespStep next) {
  drop_message(rq.rs);
  return rq.has(opf::kFirst) ? next : RespStep::done;
}

// The ePSN follows every packet: a gap loses the message in progress.
DV_STEP RespStep uc_check_psn(Request& rq) {
  const int32_t d = wire::psn_diff(rq.pkt.psn, rq.rs.epsn);
  rq.rs.epsn = wire::psn_add(rq.pkt.psn, 1);
  return d == 0 ? RespStep::check_sequence : uc_resync(rq, RespStep::check_sequence);
}

DV_STEP RespStep uc_check_sequence(Request& rq) {
  return sequence_ok(rq) ? RespStep::check_length : uc_resync(rq, RespStep::check_length);
}

DV_STEP RespStep uc_check_length(Request& rq) {
  if (length_ok(rq)) return after_length(rq);
  drop_message(rq.rs);
  return RespStep::drop;
}

DV_STEP RespStep uc_step(Request& rq, RespStep s) {
  switch (s) {
    // No NAK: where RC would send one, the message in progress is dropped (a receive
    // completion may have reported the error already).
    case RespStep::nak_rnr:
    case RespStep::nak_invalid_request:
    case RespStep::nak_remote_access:
    case RespStep::nak_remote_access_reported:
    case RespStep::nak_remote_op_error: return RespStep::drop_message;
    case RespStep::drop_message:
      drop_message(rq.rs);
      return RespStep::done;
    case RespStep::check_psn: return uc_check_psn(rq);
    case RespStep::check_sequence: return uc_check_sequence(rq);
    case RespStep::check_length: return uc_check_length(rq);
    case RespStep::acknowledge:  // nor an ACK
      note_progress(rq);
      return RespStep::done;
    default: return shared_step(rq, s);
  }
}



// ---- UD

// Q_Key check (IBA 10.2.4.2, C10-15): a mismatch drops the packet silently.
DV_STEP RespStep ud_check_qkey(Request& rq) {
  if (!rq.pkt.deth || rq.pkt.deth->q_key() != rq.qp.attr.qkey) return RespStep::drop;
  return RespStep::check_length;
}

// A UD message is one packet of at most the path MTU; a larger one is dropped, counted as
// a bad frame, without consuming a receive.
DV_STEP RespStep ud_check_length(Request& rq) {
  if (rq.pkt.payload_len <= rq.qp.mtu) return RespStep::check_resources;
  rq.dev().counters().rx_bad_frame.fetch_add(1, std::memory_order_relaxed);
  return RespStep::done;
}

// The 40-byte GRH heads the receive buffer (IBA 11.4.1.2); for RoCEv2 over IPv4 the IPv4
// header sits in its last 20 bytes (as rdma-core providers report it), and byte_len counts
// it. A receive too small completes in error; the QP goes on.
RespStep ud_execute(Request& rq) {
  const wire::Packet& pkt = rq.pkt;
  RecvWqe& w = *rq.rs.recv;
  uint8_t grh[wire::kGrhLen] = {};
  std::memcpy(grh + 20, pkt.ip, wire::kIpv4HdrLen);
  WcStatus st = scatter(rq.dev(), rq.qp.pd, w.sge, w.num_sge, 0, grh, sizeof grh);
  if (st == WcStatus::success)
    st = scatter(rq.dev(), rq.qp.pd, w.sge, w.num_sge, wire::kGrhLen, pkt.payload, pkt.payload_len);
  if (st != WcStatus::success) [[unlikely]] {
    complete_recv(rq.qp, w, st, WcOpcode::recv, 0, pkt, false);
    return RespStep::done;
  }
  complete_recv(rq.qp, w, WcStatus::success, WcOpcode::recv, wire::kGrhLen + pkt.payload_len, pkt,
                pkt.bth->se());
  return RespStep::done;
}

DV_STEP RespStep ud_step(Request& rq, RespStep s) {
  switch (s) {
    case RespStep::nak_rnr: return RespStep::done;  // no receive posted: the datagram is lost
    case RespStep::check_qkey: return ud_check_qkey(rq);
    case RespStep::check_length: return ud_check_length(rq);
    case RespStep::execute: return ud_execute(rq);
    default: return shared_step(rq, s);
  }
}

// ---- the machine

// The steps a request that passes every check takes, in an order every transport's
// transitions respect, written out: at each the compiler knows the step, so it is inlined
// with its checks and nothing is dispatched. The first step off this path hands over to
// the loop, which goes on from there as it would have from the start (a step's next step
// depends on the request and the step only).
template <RespStep (*Step)(Request&, RespStep)>
void run(Request& rq) {
  RespStep s = Step(rq, RespStep::check_state);
  if (s == RespStep::check_op_type) s = Step(rq, RespStep::check_op_type);
  if (s == RespStep::check_source) s = Step(rq, RespStep::check_source);
  if (s == RespStep::check_qkey) s = Step(rq, RespStep::check_qkey);
  if (s == RespStep::check_psn) s = Step(rq, RespStep::check_psn);
  if (s == RespStep::check_sequence) s = Step(rq, RespStep::check_sequence);
  if (s == RespStep::check_length) s = Step(rq, RespStep::check_length);
  if (s == RespStep::check_rkey) s = Step(rq, RespStep::check_rkey);
  if (s == RespStep::check_resources) s = Step(rq, RespStep::check_resources);
  if (s == RespStep::check_placement) s = Step(rq, RespStep::check_placement);
  if (s == RespStep::execute) s = Step(rq, RespStep::execute);
  if (s == RespStep::acknowledge) s = Step(rq, RespStep::acknowledge);
  while (s != RespStep::done) s = Step(rq, s);
}

void rc_rx(Request& rq) { run<rc_step>(rq); }
void uc_rx(Request& rq) { run<uc_step>(rq); }
void ud_rx(Request& rq) { run<ud_step>(rq); }

// ---------------------------------------------------------------- READ and atomic responses

// What sending one response packet came to: it left, it must wait (no ARP answer yet, no
// mbuf), or the stream ended in a NAK.
enum class Reply : uint8_t { sent, later, nak };

wire::BthFields response_bth(const Qp& qp, uint8_t opcode) {
  wire::BthFields bth{};
  bth.opcode = opcode;
  bth.pkey = wire::kDefaultPkey;
  bth.dest_qp = qp.attr.dest_qp_num;
  bth.psn = qp.resp.resp_psn;
  return bth;
}

uint8_t response_syndrome() { return wire::make_syndrome(AethType::ack, wire::kCreditsInvalid); }

// ATOMIC ACKNOWLEDGE with the original value saved at execution (IBA 9.7.5.1.7).
Reply atomic_reply(Engine& e, Qp& qp, const RespResource& r) {
  const wire::BthFields bth = response_bth(qp, wire::op::kRc | wire::op::kAtomicAck);
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
  if (!m) return Reply::later;
  wire::write_aeth(p, response_syndrome(), qp.resp.msn);
  wire::write_atomic_ack_eth(p + sizeof(wire::Aeth), r.orig);
  send_packet(e, m, p + sizeof(wire::Aeth) + sizeof(wire::AtomicAckEth), 0);
  return Reply::sent;
}

// READ RESPONSE packet `idx` of `r` (IBA 9.7.5.1.6): one PMTU each but the last, an AETH on
// FIRST, LAST and ONLY; a replay starting mid-READ opens with FIRST.
Reply read_reply(Engine& e, Qp& qp, const RespResource& r, uint32_t idx) {
  Responder& rs = qp.resp;
  const uint32_t off = idx * qp.mtu;
  const uint32_t len = r.length - off < qp.mtu ? r.length - off : qp.mtu;
  const bool first = rs.resp_psn == rs.stream_start;
  const bool last = idx + 1 == r.npkts;
  using namespace wire::op;
  wire::BthFields bth = response_bth(qp, uint8_t(kRc | (first && last ? kReadRespOnly
                                                        : first       ? kReadRespFirst
                                                        : last        ? kReadRespLast
                                                                      : kReadRespMiddle)));
  bth.pad = wire::pad_for(len);
  // Memory is re-validated for every packet: a region deregistered meanwhile ends the
  // stream with a remote access NAK instead of a read of freed memory.
  Mr* mr = len ? mr_get_remote(e.device(), r.rkey, r.pd, qp.qp_num, r.va + off, len,
                               access::remote_read)
               : nullptr;
  if (len && !mr) {
    rs.pending = 0;
    nak(e, qp, wire::make_syndrome(AethType::nak, uint8_t(NakCode::remote_access_error)),
        rs.resp_psn, NakEffect::error_access);
    return Reply::nak;
  }
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, len, &p);
  if (!m) return Reply::later;
  if (wire::opcode_info(bth.opcode).flags & opf::kAeth) {
    wire::write_aeth(p, response_syndrome(), rs.msn);
    p += sizeof(wire::Aeth);
  }
  if (len >= kFusedIcrcMin) {
    const uint32_t crc = wire::icrc_frame_begin(rte_pktmbuf_mtod(m, uint8_t*), p);
    send_packet_icrc(e, m, p + len, bth.pad,
                     wire::icrc_copy(crc, p, mr_host(*mr, r.va + off), len));
    return Reply::sent;
  }
  if (len) std::memcpy(p, mr_host(*mr, r.va + off), len);
  send_packet(e, m, p + len, bth.pad);
  return Reply::sent;
}

// Every response of the entry at res_next_tx has left: on to the next entry. Once none is
// pending, the ACK of later SENDs/WRITEs and any NAK, which waited for these responses (PSN
// order), go out. False when that NAK moved the QP to ERR.
bool next_resource(Engine& e, Qp& qp) {
  Responder& rs = qp.resp;
  rs.res_next_tx = (rs.res_next_tx + 1) % res_cap(qp);
  // The next request may come several PSNs later (SENDs/WRITEs in between).
  if (rs.pending > 1) rs.resp_psn = qp.rd_res[rs.res_next_tx].first_psn;
  rs.stream_start = rs.resp_psn;
  if (--rs.pending) return true;
  if (rs.ack_pending) resp_send_ack(e, qp);
  if (rs.nak_owed) {
    resp_send_held(e, qp);
    if (qp.state.load(std::memory_order_relaxed) == QpState::err) return false;
  }
  return true;
}

}  // namespace

const char* name(RespStep step) noexcept {
  return size_t(step) < kStepNames.size() ? kStepNames[size_t(step)] : "?";
}

void resp_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept {
  Request rq{e, qp, qp.resp, pkt, pkt.info->flags};
  switch (qp.qp_type) {
    case QpType::rc:
    case QpType::xrc_recv:
      return rc_rx(rq);
    case QpType::uc: return uc_rx(rq);
    default: return ud_rx(rq);
  }
}

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
  while (rs.pending && sent < budget && !e.tx_stalled()) {
    const RespResource& r = qp.rd_res[rs.res_next_tx];
    const uint32_t idx = uint32_t(wire::psn_diff(rs.resp_psn, r.first_psn));
    const Reply reply = r.atomic ? atomic_reply(e, qp, r) : read_reply(e, qp, r, idx);
    if (reply == Reply::later) break;
    if (reply == Reply::nak) return sent;
    sent++;
    rs.resp_psn = wire::psn_add(rs.resp_psn, 1);
    if (idx + 1 == r.npkts && !next_resource(e, qp)) return sent;
  }
  return sent;
}

}  // namespace dverbs::pmd::hca
