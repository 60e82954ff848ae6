// Congestion control in the engine: DCQCN's three roles (dcqcn.h) on the packet path.
//
//   receive  a CNP for a QP cuts its rate (reaction point); a request that arrives
//            congestion-marked — CE in the IPv4 ECN field, set by a switch, or marked here
//            by the port's RED curve over its receive backlog (congestion point) — makes
//            the QP send a CNP back to the requester, at most one per interval
//            (notification point). RC and UC: the CNP goes to the connected peer QP.
//   send     the requester paces RC/UC request packets to the QP's current rate and runs
//            its timers (alpha decay, rate increase) while the QP is active.
// Senders mark their frames ECN-capable (ECT(0)) when DVERBS_CC is on (ops.cc,
// make_frame_addr), so a switch on the path may mark them too.
//
// Not paced: READ responses and atomic responses (the responder's output), ACKs, CNPs.
// Context: the owning engine, qp.lock held; never sleeps.
#include <cstring>

#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"

namespace dverbs::pmd::hca {
namespace {

const DcqcnParams& params(Engine& e) { return e.device().config().cc; }

void ready(Engine& e, Qp& qp) {
  if (qp.cc_ready) return;
  qp.cc_rate.reset(params(e), e.now_ns());
  qp.cc_ready = true;
}

// A CNP to the requester of `qp` (IBA A17.9.3: BTH opcode 0x81, the destination QP, 16
// reserved bytes). Lost when no mbuf is free: the next marked packet asks again.
void send_cnp(Engine& e, Qp& qp) {
  wire::BthFields bth{};
  bth.opcode = wire::op::kCnp;
  bth.pkey = wire::kDefaultPkey;
  bth.dest_qp = qp.attr.dest_qp_num;
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, wire::kCnpPayloadLen, &p);
  if (!m) return;
  std::memset(p, 0, wire::kCnpPayloadLen);
  send_packet(e, m, p + wire::kCnpPayloadLen, 0);
  DVERBS_QP_COUNT(qp, cnp_sent, 1);
}

}  // namespace

bool cc_rx(Engine& e, Qp& qp, const wire::Packet& pkt) noexcept {
  if (pkt.opcode == wire::op::kCnp) {
    DVERBS_QP_COUNT(qp, cnp_rcvd, 1);
    if (e.cc_on() && (qp.qp_type == QpType::rc || qp.qp_type == QpType::uc)) {
      ready(e, qp);
      qp.cc_rate.on_cnp(params(e), e.now_ns());
    }
    return true;
  }
  if (!(pkt.info->flags & wire::opf::kRequest) ||
      (qp.qp_type != QpType::rc && qp.qp_type != QpType::uc))
    return false;
  const bool ce = (pkt.tos & 3) == 3 || dcqcn_mark(params(e), e.rx_backlog(), e.random32());
  if (!ce) return false;
  DVERBS_QP_COUNT(qp, ecn_marked, 1);
  if (qp.cc_cnp.should_send(params(e), e.now_ns())) send_cnp(e, qp);
  return false;
}

bool cc_may_send(Engine& e, Qp& qp) noexcept {
  if (!e.cc_on() || (qp.qp_type != QpType::rc && qp.qp_type != QpType::uc)) return true;
  ready(e, qp);
  return qp.cc_rate.may_send(e.now_ns());
}

void cc_sent(Engine& e, Qp& qp, uint32_t bytes) noexcept {
  if (!e.cc_on() || !qp.cc_ready) return;
  qp.cc_rate.on_sent(params(e), bytes, e.now_ns());
}

void cc_time(Engine& e, Qp& qp) noexcept {
  if (!e.cc_on() || !qp.cc_ready) return;
  qp.cc_rate.on_time(params(e), e.now_ns());
}

}  // namespace dverbs::pmd::hca
