// RDMA ATOMIC WRITE and RDMA FLUSH (IBA 1.5), requester and responder sides, with the
// wire layout and the rules of Linux rxe (rxe_req.c, rxe_resp.c), which speaks them too:
//
//   ATOMIC WRITE  RC_ATOMIC_WRITE (0x1d): BTH, RETH (VA, R_Key, DMA length 8), 8 bytes of
//                 payload. The responder stores them with one 8-byte atomic store (atomic
//                 against every other atomic on the word), after every earlier request of
//                 the QP was placed (requests execute in PSN order). REMOTE_WRITE access on
//                 the QP and the R_Key, as rxe; an address not 8-byte aligned is an invalid
//                 request, as for the other atomics.
//   FLUSH         RC_FLUSH (0x1c): BTH, FETH (placement type, selectivity level), RETH (VA,
//                 R_Key, length). The responder makes everything placed before it visible
//                 (global) — with placement in PSN order, a release fence before the response
//                 leaves. The QP and the R_Key must grant FLUSH_GLOBAL and/or
//                 FLUSH_PERSISTENT as the type asks (rxe's check_qp_attr_access and
//                 check_rkey). Level "range" checks the range as a READ would; level "MR"
//                 flushes the whole region and checks only the key.
//
// Persistence: no dverbs memory is persistent. Linux rxe refuses to register a region with
// FLUSH_PERSISTENT on pages that are not pmem (EINVAL); dverbs refuses it for every region
// (access::supported) and does not report IBV_DEVICE_FLUSH_PERSISTENT, so a persistent
// FLUSH here finds no region that grants it: remote access error.
//
// Both take a responder resource and are answered by a zero-length RDMA READ RESPONSE ONLY
// (rxe's send_read_response_ack), so a duplicate is answered again from the resource ring
// and never executed twice (resp.cc replay; read_reply of a zero-length entry).
#include <atomic>
#include <cstring>

#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"

namespace dverbs::pmd::hca {

namespace {

wire::BthFields request_bth(const Qp& qp, const SendWqe& w, uint8_t operation, uint32_t len) {
  wire::BthFields bth{};
  bth.opcode = uint8_t(wire::op::kRc | operation);
  bth.se = w.send_flags & send_flags::solicited;
  bth.pad = wire::pad_for(len);
  bth.pkey = wire::kDefaultPkey;
  bth.psn = w.first_psn;
  bth.ack_req = true;  // the response is its acknowledgment
  bth.dest_qp = qp.attr.dest_qp_num;
  return bth;
}

// The 8 bytes of an ATOMIC WRITE, from its inline copy or gathered through its SGEs now (a
// retransmission gathers them again, as a WRITE would).
bool send_atomic_write(Engine& e, Qp& qp, SendWqe& w) {
  const wire::BthFields bth = request_bth(qp, w, wire::op::kAtomicWrite, wire::kAtomicWriteLen);
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, wire::kAtomicWriteLen, &p);
  if (!m) return false;
  wire::write_reth(p, w.remote_addr, w.rkey, wire::kAtomicWriteLen);
  p += sizeof(wire::Reth);
  if (w.is_inline) {
    std::memcpy(p, w.inline_data, wire::kAtomicWriteLen);
  } else {
    const WcStatus st = gather(e.device(), qp.pd, w.sge, w.num_sge, 0, p, wire::kAtomicWriteLen);
    if (st != WcStatus::success) [[unlikely]] {
      rte_pktmbuf_free(m);
      comp_fail_at(e, qp, qp.req.next_wqe, st);
      return false;
    }
  }
  send_packet(e, m, p + wire::kAtomicWriteLen, 0);
  return true;
}

bool send_flush(Engine& e, Qp& qp, SendWqe& w) {
  const wire::BthFields bth = request_bth(qp, w, wire::op::kFlush, 0);
  uint8_t* p;
  rte_mbuf* m = build_packet(e, qp, qp.addr, bth, 0, &p);
  if (!m) return false;
  wire::write_feth(p, w.flush_type, w.flush_level);
  wire::write_reth(p + sizeof(wire::Feth), w.remote_addr, w.rkey, w.length);
  send_packet(e, m, p + sizeof(wire::Feth) + sizeof(wire::Reth), 0);
  return true;
}

// ATOMIC WRITE: REMOTE_WRITE on the QP and the R_Key over an aligned 8-byte word, and
// exactly 8 bytes announced and carried.
RespStep check_atomic_write(Device& dev, Qp& qp, const wire::Packet& pkt, Mr** mr) {
  const wire::Reth& reth = *pkt.reth;
  if (reth.length() != wire::kAtomicWriteLen || pkt.payload_len != wire::kAtomicWriteLen)
    return RespStep::nak_invalid_request;
  if (!(qp.attr.qp_access_flags & access::remote_write)) return RespStep::nak_remote_access;
  if (reth.vaddr() & 7) return RespStep::nak_invalid_request;  // IBA A19.4.2, rxe
  *mr = mr_get_remote(dev, reth.r_key(), qp.pd, qp.qp_num, reth.vaddr(), wire::kAtomicWriteLen,
                      access::remote_write);
  return *mr ? RespStep::check_resources : RespStep::nak_remote_access;
}

// The access bits a FLUSH of placement type `type` needs, on the QP and on the R_Key.
uint32_t flush_access(uint8_t type) {
  uint32_t acc = 0;
  if (type & flush::type_global) acc |= access::flush_global;
  if (type & flush::type_persistent) acc |= access::flush_persistent;
  return acc;
}

// FLUSH: a known placement type and level (anything else is an invalid request), the
// rights the type asks for, and the range (level "range") or only the key (level "MR").
RespStep check_flush(Device& dev, Qp& qp, const wire::Packet& pkt) {
  const uint8_t type = pkt.feth->placement_type();
  const uint8_t level = pkt.feth->selectivity_level();
  constexpr uint8_t kTypes = flush::type_global | flush::type_persistent;
  if (type == 0 || (type & ~kTypes) || level > flush::level_mr)
    return RespStep::nak_invalid_request;
  const uint32_t acc = flush_access(type);
  if ((qp.attr.qp_access_flags & acc) != acc) return RespStep::nak_remote_access;
  const wire::Reth& reth = *pkt.reth;
  uint64_t va = reth.vaddr(), len = reth.length();
  if (level == flush::level_mr) {
    // The whole region (or the window's bound range): the RETH's range is not looked at
    // (rxe skips it); the key, its PD, its binding and its rights are.
    const Mr* m = dev.mr_lookup(reth.r_key());
    if (!m) return RespStep::nak_remote_access;
    va = m->addr;
    len = m->length;
  } else if (len > (1u << 31)) {
    return RespStep::nak_invalid_request;
  }
  return mr_get_remote(dev, reth.r_key(), qp.pd, qp.qp_num, va, len, acc)
             ? RespStep::check_resources
             : RespStep::nak_remote_access;
}

}  // namespace

bool iba15_send_request(Engine& e, Qp& qp, SendWqe& w) noexcept {
  return w.opcode == WrOpcode::atomic_write ? send_atomic_write(e, qp, w) : send_flush(e, qp, w);
}

RespStep iba15_check_rkey(Engine& e, Qp& qp, const wire::Packet& pkt, Mr** mr) noexcept {
  if (pkt.info->flags & wire::opf::kAtomicWrite) return check_atomic_write(e.device(), qp, pkt, mr);
  return check_flush(e.device(), qp, pkt);
}

void iba15_execute(const wire::Packet& pkt, Mr* mr, RespResource* r) noexcept {
  if (pkt.info->flags & wire::opf::kAtomicWrite) {
    // One aligned 8-byte store: no other atomic on the word sees half of it. Every earlier
    // request of the QP was placed before this packet was taken (PSN order).
    uint64_t v;
    std::memcpy(&v, pkt.payload, sizeof v);
    __atomic_store_n(reinterpret_cast<uint64_t*>(mr_host(*mr, pkt.reth->vaddr())), v,
                     __ATOMIC_SEQ_CST);
  } else {
    // Global visibility: every store placed before the FLUSH is ordered before its
    // response leaves (the engine's memcpy into the region, then this fence).
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  r->valid = true;
  r->atomic = false;
  r->first_psn = pkt.psn;
  r->npkts = 1;
  r->va = 0;
  r->rkey = 0;
  r->length = 0;  // answered by a READ RESPONSE ONLY without payload
  r->orig = 0;
}

}  // namespace dverbs::pmd::hca
