// Raw packet QPs (IBV_QPT_RAW_PACKET) of the soft HCA: whole Ethernet frames in and out,
// and the flow steering verbs that bring received frames to them (flow.h).
//
// Send: a WQE is one frame, the application's bytes as they are (headers included; the
// HCA adds nothing). IBV_SEND_IP_CSUM fills the IPv4 header checksum and the TCP or UDP
// checksum. It completes once handed to the port, like UD.
// Receive: a frame that is not RoCE and matches a rule goes into the rule's QP's next
// receive WQE; byte_len is the frame's length. No WQE posted: the frame is dropped and
// counted (rx_raw_dropped), as a NIC drops when its ring is empty. A receive buffer too
// short completes with IBV_WC_LOC_LEN_ERR, a bad lkey with IBV_WC_LOC_PROT_ERR (the QP then
// enters ERR).
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include <rte_ip.h>
#include <rte_mbuf.h>

#include "base/copy.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/mr.h"
#include "pmd/hca/ops.h"

namespace dverbs::pmd::hca {

namespace {

// Ethernet header, plus an 802.1Q tag, around an IPv4 packet of the port's MTU.
constexpr uint32_t kRawFrameOverhead = 14 + 4;

// CAP_NET_RAW in this process's effective set (ibv_create_qp(3) asks it for RAW_PACKET).
bool has_net_raw() {
  __user_cap_header_struct hdr{};
  __user_cap_data_struct data[2]{};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  hdr.pid = 0;
  if (::syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[CAP_NET_RAW / 32].effective >> (CAP_NET_RAW % 32)) & 1;
}

// IBV_SEND_IP_CSUM: the IPv4 header checksum and, for an unfragmented TCP or UDP packet
// that lies whole inside the frame, its checksum. A frame that is not IPv4 is left as it is.
void fill_checksums(uint8_t* frame, uint32_t len) noexcept {
  uint32_t l3 = 14;
  uint16_t type = uint16_t(frame[12] << 8 | frame[13]);
  if (type == 0x8100 && len >= 18) {
    type = uint16_t(frame[16] << 8 | frame[17]);
    l3 = 18;
  }
  if (type != 0x0800 || len < l3 + 20) return;
  auto* ip = reinterpret_cast<rte_ipv4_hdr*>(frame + l3);
  const uint32_t ihl = rte_ipv4_hdr_len(ip);
  const uint32_t total = rte_be_to_cpu_16(ip->total_length);
  if ((ip->version_ihl >> 4) != 4 || ihl < 20 || total < ihl || len < l3 + total) return;
  ip->hdr_checksum = 0;
  ip->hdr_checksum = rte_ipv4_cksum(ip);
  if (rte_be_to_cpu_16(ip->fragment_offset) & (RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK))
    return;
  uint8_t* l4 = frame + l3 + ihl;
  const uint32_t l4_len = total - ihl;
  uint32_t at;  // offset of the checksum field in the L4 header
  if (ip->next_proto_id == IPPROTO_UDP && l4_len >= 8)
    at = 6;
  else if (ip->next_proto_id == IPPROTO_TCP && l4_len >= 20)
    at = 16;
  else
    return;
  l4[at] = l4[at + 1] = 0;
  const uint16_t c = rte_ipv4_udptcp_cksum(ip, l4);
  std::memcpy(l4 + at, &c, 2);
}

}  // namespace

uint32_t raw_max_frame(Device& dev) {
  return dev.port_info().mtu + kRawFrameOverhead;
}

int raw_qp_init(Device& dev, const mid::QpInitAttr& init, Qp& qp) {
  if (init.srq) return EOPNOTSUPP;  // raw packet QPs take their own receive queue
  if (!has_net_raw()) return EPERM;
  qp.mtu = raw_max_frame(dev);  // the largest frame (check_send_wr)
  return 0;
}

bool raw_send(Engine& e, Qp& qp, SendWqe& w) noexcept {
  rte_mbuf* m = e.alloc_frame(w.length);
  if (!m) return false;
  if (w.length > uint32_t(m->buf_len - m->data_off)) [[unlikely]] {
    rte_pktmbuf_free(m);  // larger than the port's buffers (a port with small mbufs)
    comp_fail_at(e, qp, qp.req.next_wqe, WcStatus::loc_len_err);
    return false;
  }
  uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
  if (w.is_inline) {
    base::copy_bytes(p, w.inline_data, w.length);
  } else {
    const WcStatus st = gather(e.device(), qp.pd, w.sge, w.num_sge, 0, p, w.length);
    if (st != WcStatus::success) [[unlikely]] {
      rte_pktmbuf_free(m);
      comp_fail_at(e, qp, qp.req.next_wqe, st);
      return false;
    }
  }
  if (w.send_flags & send_flags::ip_csum) fill_checksums(p, w.length);
  e.tx(m);
  return true;
}

bool raw_recv(Engine& e, Qp& qp, const rte_mbuf* m) noexcept {
  const QpState s = qp.state.load(std::memory_order_acquire);
  if (s != QpState::rtr && s != QpState::rts && s != QpState::sqd && s != QpState::sqe)
    return false;
  RecvWqe* w = qp.rq.peek(qp.rq_consumed);
  if (!w) return false;
  Wc wc{};
  wc.wr_id = w->wr_id;
  wc.status = WcStatus::success;
  // Segment by segment (a port may chain a long frame), each at its offset in the buffers.
  uint32_t off = 0;
  for (const rte_mbuf* seg = m; seg && wc.status == WcStatus::success; seg = seg->next) {
    wc.status = scatter(e.device(), qp.pd, w->sge, w->num_sge, off,
                        rte_pktmbuf_mtod(seg, const uint8_t*), seg->data_len);
    off += seg->data_len;
  }
  wc.opcode = WcOpcode::recv;
  wc.byte_len = rte_pktmbuf_pkt_len(m);
  wc.qp_num = qp.qp_num;
  qp.rq.retire_one();  // slot first, completion second (see complete_send)
  qp.rq_consumed++;
  cq_push(*to_cq(qp.recv_cq), wc, false);
  if (wc.status == WcStatus::loc_prot_err) {  // a local protection error is QP-fatal
    qp.state.store(QpState::err, std::memory_order_release);
    flush_queues(e, qp);
  }
  return true;
}

bool Engine::rx_raw(rte_mbuf* m, bool verified) noexcept {
  Device& dev = *dev_;
  // The rules look at the headers, in the first segment.
  Qp* qp = dev.flows().lookup(rte_pktmbuf_mtod(m, const uint8_t*), rte_pktmbuf_data_len(m));
  if (!qp) return false;
  if (qp->engine != this) {
    // Only the owner fills a QP's receive queue. A frame handed over already (verified)
    // whose rule now names another engine's QP is dropped: it never travels twice.
    if (verified || !qp->engine->handoff_.push(m)) {
      dev.counters().rx_raw_dropped.fetch_add(1, std::memory_order_relaxed);
      rte_pktmbuf_free(m);
    }
    return true;
  }
  rx_release();  // the QP run of rx_one ends here; this QP is locked on its own
  qp->lock.lock();
  const bool taken = raw_recv(*this, *qp, m);
  qp->lock.unlock();
  (taken ? dev.counters().rx_raw : dev.counters().rx_raw_dropped)
      .fetch_add(1, std::memory_order_relaxed);
  recycle(m);
  return true;
}

// ---------------------------------------------------------------- flow steering verbs

int create_flow(mid::Qp* q, const FlowRule* rule, uint32_t* id) {
  Qp& qp = *to_qp(q);
  Device& dev = *qp.hca;
  if (qp.qp_type != QpType::raw_packet) return EINVAL;  // rules steer to raw packet QPs
  if (rule->l4_proto != 0 && rule->l4_proto != IPPROTO_TCP && rule->l4_proto != IPPROTO_UDP)
    return EINVAL;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  if (dev.retired()) return ENODEV;
  return dev.flows().add(dev, &qp, *rule, id);
}

int destroy_flow(mid::Qp* q, uint32_t id) {
  Qp& qp = *to_qp(q);
  Device& dev = *qp.hca;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  return dev.flows().remove(dev, &qp, id);
}

}  // namespace dverbs::pmd::hca
