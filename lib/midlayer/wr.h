// Work-request rules every driver applies the same way, part of the driver API: which send
// opcodes a QP type takes, what a send or receive work request must satisfy before it is
// queued (IBA 10.8.2, 10.8.3), and the completion opcode a send reports (IBA 11.4.2.1).
// The embedded HCA checks each WR with these in post_send/post_recv; the remote driver
// does the same before it writes a WQE into its ring, so applications see the same
// immediate errors in both modes; dverbsd checks its copy again through the HCA.
//
// All inline and constexpr where they can be: they run on the fast path (no allocation,
// no lock, no system call, no indirect call).
#pragma once

#include <cerrno>
#include <cstdint>

#include "midlayer/objects.h"

namespace dverbs::mid {

constexpr uint32_t kQpnMask = 0xffffff;       // QP numbers are 24 bits (IBA 9.2)
constexpr uint64_t kMaxMessage = 1ull << 31;  // the largest message (ibv max_msg_sz)

// Which send opcodes a QP type accepts (IBA 9.2 / 11.4.1.1: UD only SEND; READ, atomics
// and SEND with invalidate only RC and XRC_SEND; an XRC_RECV QP has no send queue; a raw
// packet QP only a plain SEND, the frame).
// Context: any, never sleeps.
constexpr bool opcode_allowed(QpType t, WrOpcode op) noexcept {
  if (t == QpType::xrc_recv) return false;
  if (t == QpType::raw_packet) return op == WrOpcode::send;
  if (t == QpType::xrc_send) {
    if (op == WrOpcode::atomic_write || op == WrOpcode::flush) return false;  // RC's only
    t = QpType::rc;
  }
  switch (op) {
    case WrOpcode::send:
    case WrOpcode::send_with_imm:
      return true;
    case WrOpcode::rdma_write:
    case WrOpcode::rdma_write_with_imm:
      return t != QpType::ud;
    case WrOpcode::send_with_inv:
    case WrOpcode::rdma_read:
    case WrOpcode::atomic_cmp_and_swp:
    case WrOpcode::atomic_fetch_and_add:
    case WrOpcode::atomic_write:  // IBA 1.5: RC only, as rxe
    case WrOpcode::flush:
      return t == QpType::rc;
    case WrOpcode::bind_mw:
    case WrOpcode::local_inv:
      return t != QpType::ud;
    default:
      return false;
  }
}

// The two atomics (8-byte operand, one 8-byte SGE, RC only). Context: any.
constexpr bool is_atomic(WrOpcode op) noexcept {
  return op == WrOpcode::atomic_cmp_and_swp || op == WrOpcode::atomic_fetch_and_add;
}

// The completion opcode of a send work request (IBA 11.4.2.1: a WRITE with immediate
// completes as a WRITE at the requester). Context: any, never sleeps.
constexpr WcOpcode wc_opcode(WrOpcode op) noexcept {
  switch (op) {
    case WrOpcode::rdma_write:
    case WrOpcode::rdma_write_with_imm:
      return WcOpcode::rdma_write;
    case WrOpcode::rdma_read:
      return WcOpcode::rdma_read;
    case WrOpcode::atomic_cmp_and_swp:
      return WcOpcode::comp_swap;
    case WrOpcode::atomic_fetch_and_add:
      return WcOpcode::fetch_add;
    case WrOpcode::local_inv:
      return WcOpcode::local_inv;
    case WrOpcode::bind_mw:
      return WcOpcode::bind_mw;
    case WrOpcode::atomic_write:
      return WcOpcode::atomic_write;
    case WrOpcode::flush:
      return WcOpcode::flush;
    default:
      return WcOpcode::send;
  }
}

// An RDMA FLUSH (IBA 1.5, ibv_wr_flush): a placement type mask of global and/or
// persistent, a level of range or whole region, no local buffer, not inline; a range of at
// most one message (a whole-region FLUSH ignores the length). Whether the remote memory
// can be flushed so is the responder's to say (IBV_WC_REM_ACCESS_ERR). Context: any.
constexpr bool flush_wr_ok(const SendWr& wr) noexcept {
  const auto& f = wr.wr.flush;
  constexpr uint8_t kTypes = flush::type_global | flush::type_persistent;
  return f.type != 0 && !(f.type & ~kTypes) && f.level <= flush::level_mr && wr.num_sge == 0 &&
         !(wr.send_flags & send_flags::inline_data) &&
         (f.level == flush::level_mr || f.length <= kMaxMessage);
}

// What a QP lets a send WR carry: its granted capabilities, read once per post_send.
struct SendLimits {
  uint32_t max_sge;         // the QP's max_send_sge
  uint32_t max_inline;      // the QP's max_inline_data, as granted at create_qp
  uint32_t max_ud_message;  // UD: the path MTU in bytes (a UD message is one packet);
                            // raw packet QP: the largest frame
};

// The smallest frame a raw packet QP sends: an Ethernet header.
constexpr uint32_t kMinRawFrame = 14;

// Validates one send WR completely (IBA 10.8.2) and stores its length in *length (0 for a
// bind). Returns 0 or EINVAL. As rxe and mlx5 do, inline data is limited by the QP's own
// max_inline_data, not the device's. Context: any thread, never sleeps.
inline int check_send_wr(const Qp& qp, const SendLimits& lim, const SendWr& wr,
                         uint32_t* length) noexcept {
  if (!opcode_allowed(qp.qp_type, wr.opcode)) return EINVAL;
  const uint32_t raw_flags = qp.qp_type == QpType::raw_packet ? send_flags::ip_csum : 0;
  if (wr.send_flags & ~(send_flags::fence | send_flags::signaled | send_flags::solicited |
                        send_flags::inline_data | raw_flags))
    return EINVAL;
  if (wr.num_sge < 0 || uint32_t(wr.num_sge) > lim.max_sge) return EINVAL;
  if (wr.num_sge > 0 && !wr.sg_list) return EINVAL;
  uint64_t len = 0;
  for (int i = 0; i < wr.num_sge; i++) {
    const Sge& s = wr.sg_list[i];
    if (s.addr + s.length < s.addr) return EINVAL;  // wraps the address space
    len += s.length;
  }
  if (len > kMaxMessage) return EINVAL;
  const bool inl = wr.send_flags & send_flags::inline_data;
  if (inl && len > lim.max_inline) return EINVAL;
  // The local buffer of a READ or an atomic is written: it cannot be inline.
  if (inl && (wr.opcode == WrOpcode::rdma_read || is_atomic(wr.opcode))) return EINVAL;
  // An atomic returns the 8-byte original value into exactly one 8-byte SGE (IBA 10.8.3.4).
  if (is_atomic(wr.opcode) && (wr.num_sge != 1 || len != 8)) return EINVAL;
  // An RDMA ATOMIC WRITE carries exactly 8 bytes, from SGEs or inline (IBA 1.5).
  if (wr.opcode == WrOpcode::atomic_write && len != 8) return EINVAL;
  if (wr.opcode == WrOpcode::flush) {
    if (!flush_wr_ok(wr)) return EINVAL;
    *length = wr.wr.flush.level == flush::level_mr ? 0 : uint32_t(wr.wr.flush.length);
    return 0;
  }
  if (wr.opcode == WrOpcode::bind_mw) {
    // Type 1 windows are bound with ibv_bind_mw, type 2 with this WR; both arrive here.
    const auto& b = wr.bind_mw;
    if (!b.mw || b.mw->device != qp.device || wr.num_sge != 0) return EINVAL;
    if (b.bind_info.length && (!b.bind_info.mr || b.bind_info.mr->device != qp.device))
      return EINVAL;
    if (b.bind_info.addr + b.bind_info.length < b.bind_info.addr) return EINVAL;
    // A window grants remote access only; zero-based windows are not implemented.
    if (b.bind_info.mw_access_flags &
        ~(access::remote_read | access::remote_write | access::remote_atomic))
      return EINVAL;
    *length = 0;
    return 0;
  }
  if (wr.opcode == WrOpcode::local_inv && wr.num_sge != 0) return EINVAL;
  if (qp.qp_type == QpType::ud) {
    if (!wr.wr.ud.ah || wr.wr.ud.ah->device != qp.device || wr.wr.ud.remote_qpn > kQpnMask)
      return EINVAL;
    if (len > lim.max_ud_message) return EINVAL;
  }
  // A raw frame is one Ethernet frame, headers included (ibv_create_qp(3), RAW_PACKET).
  if (qp.qp_type == QpType::raw_packet && (len < kMinRawFrame || len > lim.max_ud_message))
    return EINVAL;
  *length = uint32_t(len);
  return 0;
}

// Validates one receive WR (IBA 10.8.2): at most `max_sge` SGEs, none wrapping the address
// space, at most 2^31 bytes in all. Stores the length in *length. Returns 0 or EINVAL.
// Context: any thread, never sleeps.
inline int check_recv_wr(const RecvWr& wr, uint32_t max_sge, uint32_t* length) noexcept {
  if (wr.num_sge < 0 || uint32_t(wr.num_sge) > max_sge || (wr.num_sge > 0 && !wr.sg_list))
    return EINVAL;
  uint64_t len = 0;
  bool wraps = false;
  for (int i = 0; i < wr.num_sge; i++) {
    const Sge& s = wr.sg_list[i];
    wraps |= s.addr + s.length < s.addr;
    len += s.length;
  }
  if (wraps || len > kMaxMessage) return EINVAL;
  *length = uint32_t(len);
  return 0;
}

}  // namespace dverbs::mid
