// The soft HCA's device-ops table: the verbs as the midlayer sees them.
//
// Control verbs (process context) validate everything first and only then apply, under
// the device's control mutex (rxe's qp_chk_attr / qp_from_attr split). Posting verbs
// validate each work request completely before anything is queued, copy it into the ring
// (never re-reading application memory later, except the payload through its MR), and
// never block: a full ring is ENOMEM.
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <new>

#include <rte_cycles.h>

#include "base/copy.h"
#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/hca.h"
#include "pmd/hca/mr.h"
#include "pmd/hca/ops.h"
#include "pmd/hca/xrc.h"
#include "pmd/net/neigh.h"

namespace dverbs::pmd::hca {

// Largest IB path MTU whose RoCEv2 packet fits an Ethernet MTU of `eth_mtu` bytes:
// IPv4 20 + UDP 8 + BTH 12 + up to 28 bytes of extension headers + ICRC 4.
Mtu active_mtu(uint32_t eth_mtu) {
  Mtu best = Mtu::mtu256;
  for (Mtu m : {Mtu::mtu256, Mtu::mtu512, Mtu::mtu1024, Mtu::mtu2048, Mtu::mtu4096})
    if (mtu_bytes(m) + 72 <= eth_mtu) best = m;
  return best;
}

bool ipv4_from_gid(const Gid& g, uint32_t* ip) {
  static const uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(g.raw, kPrefix, 12) != 0) return false;
  *ip = wire::load_be32(g.raw + 12);
  return true;
}

// The path of a connected QP or an AH. MACs come from the neighbour table at send time.
bool make_frame_addr(Device& dev, const AhAttr& ah, uint32_t src_qpn, uint32_t dst_qpn,
                     wire::FrameAddr* out) {
  uint32_t ip;
  if (!ipv4_from_gid(ah.dgid, &ip)) return false;
  std::memset(out, 0, sizeof *out);
  std::memcpy(out->src_mac, dev.port_info().mac, 6);
  out->src_ip = dev.port_info().ip;
  out->dst_ip = ip;
  // RoCEv2 source port: entropy for ECMP from the QP pair, in 0xC000..0xFFFF (IBA A17.5).
  uint32_t h = (src_qpn * 0x9e3779b1u) ^ (dst_qpn * 0x85ebca6bu) ^ ah.flow_label;
  out->udp_sport = uint16_t(0xc000 | ((h ^ (h >> 16)) & 0x3fff));
  out->tos = ah.traffic_class;
  // With congestion control on, frames say they are ECN-capable (ECT(0)) unless the
  // traffic class already chose an ECN codepoint, so a switch may mark them CE.
  if (dev.config().cc.enabled && (out->tos & 3) == 0) out->tos |= 2;
  out->ttl = ah.hop_limit ? ah.hop_limit : 64;
  return true;
}

namespace {

Device& hca(mid::Device* d) { return *static_cast<Device*>(d); }

// ---------------------------------------------------------------- device and port
int query_device(mid::Device* d, DeviceAttr* a) {
  Device& dev = hca(d);
  *a = DeviceAttr{};
  const uint8_t* mac = dev.port_info().mac;
  // EUI-64 from the MAC, as RoCE NICs derive their node GUID.
  a->node_guid = uint64_t(mac[0] ^ 2) << 56 | uint64_t(mac[1]) << 48 | uint64_t(mac[2]) << 40 |
                 uint64_t(0xfffe) << 24 | uint64_t(mac[3]) << 16 | uint64_t(mac[4]) << 8 | mac[5];
  a->max_mr_size = uint64_t(1) << 40;
  a->page_size_cap = 4096;
  a->vendor_id = 0xffffff;
  a->max_qp = kMaxQp - 2;
  a->max_qp_wr = kMaxQpWr;
  a->max_sge = kMaxSge;
  a->max_cq = 1u << 16;
  a->max_cqe = kMaxCqe;
  a->max_mr = kMaxMr - 1;
  a->max_mw = kMaxMr - 1;  // windows take slots of the same key table
  a->max_pd = 1u << 16;
  a->max_qp_rd_atom = kMaxRdAtomic;
  a->max_qp_init_rd_atom = kMaxRdAtomic;
  a->atomic_cap = 1;  // IBV_ATOMIC_HCA: atomic among all QPs of this HCA
  a->max_inline_data = kMaxInline;
  a->max_ah = 1u << 16;
  a->max_srq = 1u << 14;
  a->max_srq_wr = kMaxQpWr;
  a->xrc = true;
  a->phys_port_cnt = 1;
  std::snprintf(a->fw_ver, sizeof a->fw_ver, "dverbs-0.1");
  a->core_clock_khz = rte_get_tsc_hz() / 1000;  // completion timestamps count TSC ticks
  a->max_raw_qp = a->max_qp;  // raw packet QPs and flow steering (raw.cc)
  a->max_flows = FlowTable::kMaxFlows;
  a->max_raw_frame = raw_max_frame(dev);
  a->raw_ip_csum = true;
  return 0;
}

// Context: process context. The link state is read from the port (rte_eth_link_get_nowait,
// which some PMDs answer with a system call): never call this under a spinlock (the MTU
// is cached in port_info()).
int query_port(mid::Device* d, uint8_t port_num, PortAttr* a) {
  if (port_num != 1) return EINVAL;
  Device& dev = hca(d);
  mid::might_sleep("query_port (link state)");
  *a = PortAttr{};
  a->state = dev.link_up() ? PortState::active : PortState::down;
  a->max_mtu = active_mtu(dev.port_info().mtu);
  a->active_mtu = a->max_mtu;
  a->gid_tbl_len = 1;
  a->max_msg_sz = 1u << 31;
  a->link_layer_ethernet = 1;
  a->ndev_ifindex = dev.port_info().ifindex;
  return 0;
}

int query_gid(mid::Device* d, uint8_t port_num, int index, Gid* g) {
  if (port_num != 1 || index != 0) return EINVAL;
  std::memset(g->raw, 0, sizeof g->raw);
  g->raw[10] = g->raw[11] = 0xff;
  wire::store_be32(g->raw + 12, hca(d).port_info().ip);
  return 0;
}

// ---------------------------------------------------------------- PD and MR
int alloc_pd(mid::Device* d, mid::Pd** out) {
  if (hca(d).retired()) return ENODEV;
  Pd* pd = new (std::nothrow) Pd();
  if (!pd) return ENOMEM;
  *out = pd;
  return 0;
}

int dealloc_pd(mid::Pd* pd) {
  delete to_pd(pd);
  return 0;
}

int reg_mr_iova(mid::Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t acc,
                mid::Mr** out) {
  Device& dev = hca(pd->device);
  if (dev.retired()) return ENODEV;
  if (acc & ~access::supported) return EINVAL;
  // Remote write or atomic access requires local write (IBA 10.6.3.1).
  if ((acc & (access::remote_write | access::remote_atomic)) && !(acc & access::local_write))
    return EINVAL;
  const uint64_t h = reinterpret_cast<uint64_t>(host);
  if (length == 0 || iova + length < iova || h + length < h) return EINVAL;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  Mr* mr;
  if (int rc = dev.alloc_mr_slot(to_pd(pd), host, iova, length, acc, &mr)) return rc;
  *out = mr;
  return 0;
}

int reg_mr(mid::Pd* pd, void* addr, uint64_t length, uint32_t acc, mid::Mr** out) {
  return reg_mr_iova(pd, addr, reinterpret_cast<uint64_t>(addr), length, acc, out);
}

int dereg_mr(mid::Mr* m) {
  Device& dev = hca(m->device);
  std::lock_guard<mid::Mutex> g(dev.ctl());
  // A region with bound windows cannot go (IBA 10.6.7.2.2): the windows would dangle.
  if (to_mr(m)->windows.load(std::memory_order_acquire)) return EBUSY;
  dev.free_mr_slot(to_mr(m));
  return 0;
}

// ---------------------------------------------------------------- MW
int alloc_mw(mid::Pd* pd, uint32_t type, mid::Mw** out) {
  Device& dev = hca(pd->device);
  if (dev.retired()) return ENODEV;
  Mw* mw = new (std::nothrow) Mw();
  if (!mw) return ENOMEM;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  Mr* slot;
  // A window holds a key-table slot of its own, unbound (length 0) until a bind.
  int rc = dev.alloc_mr_slot(to_pd(pd), nullptr, 0, 0, 0, &slot);
  if (rc) {
    delete mw;
    return rc;
  }
  slot->kind = type == 1 ? Mr::kWindow1 : Mr::kWindow2;
  slot->bound_to = nullptr;
  mw->slot = slot;
  mw->rkey = slot->rkey;
  *out = mw;
  return 0;
}

int dealloc_mw(mid::Mw* m) {
  Mw* mw = to_mw(m);
  Device& dev = hca(m->device);
  std::lock_guard<mid::Mutex> g(dev.ctl());
  Mr* slot = mw->slot;
  if (slot->bound_to) slot->bound_to->windows.fetch_sub(1, std::memory_order_relaxed);
  slot->bound_to = nullptr;
  slot->kind = Mr::kRegion;
  dev.free_mr_slot(slot);
  delete mw;
  return 0;
}

// ---------------------------------------------------------------- CQ
int destroy_cq(mid::Cq* c) {
  hca(c->device).quiesce();
  delete to_cq(c);
  return 0;
}

int read_clock(mid::Device*, uint64_t* raw) {
  *raw = rte_rdtsc();
  return 0;
}

int req_notify_cq(mid::Cq* c, bool solicited_only) {
  Cq* cq = to_cq(c);
  uint32_t want = solicited_only ? 1 : 2;
  uint32_t cur = cq->armed.load(std::memory_order_relaxed);
  while (cur < want && !cq->armed.compare_exchange_weak(cur, want, std::memory_order_acq_rel)) {
  }
  return 0;
}

// ---------------------------------------------------------------- QP
int create_qp(mid::Pd* pd, const mid::QpInitAttr* init, mid::Qp** out) {
  // An XRC_RECV QP belongs to a domain, not a PD (mid::create_xrc_recv_qp).
  const bool xrc_recv = init->qp_type == QpType::xrc_recv;
  if (xrc_recv ? !init->xrcd : !pd) return EINVAL;
  Device& dev = hca(xrc_recv ? init->xrcd->device : pd->device);
  if (dev.retired()) return ENODEV;
  if (init->qp_type != QpType::rc && init->qp_type != QpType::uc &&
      init->qp_type != QpType::ud && init->qp_type != QpType::xrc_send && !xrc_recv &&
      init->qp_type != QpType::raw_packet)
    return EINVAL;
  if (init->gsi && init->qp_type != QpType::ud) return EINVAL;
  const QpCap& c = init->cap;
  // XRC_SEND has a send queue only, XRC_RECV no queue at all.
  if (!xrc_recv && (!init->send_cq || (!init->recv_cq && init->qp_type != QpType::xrc_send)))
    return EINVAL;
  if (c.max_send_wr > kMaxQpWr || c.max_recv_wr > kMaxQpWr || c.max_send_sge > kMaxSge ||
      c.max_recv_sge > kMaxSge || c.max_inline_data > kMaxInline)
    return EINVAL;
  Qp* qp = new (std::nothrow) Qp();
  if (!qp) return ENOMEM;
  qp->hca = &dev;
  qp->qp_type = init->qp_type;
  qp->cap = c;
  if (init->qp_type == QpType::xrc_send || xrc_recv) qp->cap.max_recv_wr = qp->cap.max_recv_sge = 0;
  if (xrc_recv) qp->cap = QpCap{};
  qp->xrcd = init->xrcd;  // the midlayer fills it too; the responder needs it from the start
  if (qp->cap.max_send_wr == 0) qp->cap.max_send_wr = 1;
  if (qp->cap.max_send_sge == 0) qp->cap.max_send_sge = 1;
  if (qp->cap.max_recv_sge == 0) qp->cap.max_recv_sge = 1;
  qp->cap.max_inline_data = kMaxInline;  // report what we really support
  qp->sq_sig_all = init->sq_sig_all;
  qp->srq = init->srq;  // the midlayer fills it too; the engine needs it from the start
  qp->mtu = mtu_bytes(active_mtu(dev.port_info().mtu));  // UD uses it; RTR sets connected QPs'
  if (init->qp_type == QpType::raw_packet) {
    if (int rc = raw_qp_init(dev, *init, *qp)) {
      delete qp;
      return rc;
    }
  }
  // Exactly the WRs asked for fit (queue.h): the cap written back is the request, not the
  // rings' power of two. rdma-core's providers report a rounded-up cap instead, but
  // applications commonly post cap.max_recv_wr receives into buffers sized by what they
  // asked for (the fabric's dverbs-alltoall does); granting the request keeps them right,
  // and the WR beyond it gets ENOMEM either way.
  if (!qp->sq.init(qp->cap.max_send_wr) || !qp->rq.init(qp->srq ? 1 : qp->cap.max_recv_wr)) {
    delete qp;
    return ENOMEM;
  }
  std::lock_guard<mid::Mutex> g(dev.ctl());
  if (int rc = dev.install_qp(qp, init->gsi)) {
    delete qp;
    return rc;
  }
  *out = qp;
  return 0;
}

int destroy_qp(mid::Qp* q) {
  Qp* qp = to_qp(q);
  Device& dev = *qp->hca;
  {
    std::lock_guard<mid::Mutex> g(dev.ctl());
    // An XRC_RECV QP lives until the last of its handles (open_xrc_qp) is destroyed.
    if (qp->xrc_opens) {
      qp->xrc_opens--;
      return 0;
    }
    dev.flows().remove_qp(dev, qp);  // its flow rules first: no engine steers to it then
    dev.remove_qp(qp);
  }
  delete qp;
  return 0;
}


int query_qp(mid::Qp* q, QpAttr* a, uint32_t, mid::QpInitAttr* init) {
  Qp& qp = *to_qp(q);
  std::lock_guard<mid::Mutex> g(qp.hca->ctl());
  QpLock held(qp);
  *a = qp.attr;
  a->qp_state = a->cur_qp_state = qp.state.load(std::memory_order_acquire);
  a->cap = qp.cap;
  a->sq_sig_all = qp.sq_sig_all;
  held.unlock();
  if (init) {
    init->qp_type = qp.qp_type;
    init->send_cq = qp.send_cq;
    init->recv_cq = qp.recv_cq;
    init->srq = qp.srq;
    init->cap = qp.cap;
    init->sq_sig_all = qp.sq_sig_all;
    init->qp_context = qp.qp_context;
  }
  return 0;
}

// ---------------------------------------------------------------- posting

// A WR's SGEs into its WQE (checked against the WQE's kMaxSge by check_*_wr): one or two
// SGEs are the rule, a 16-byte move each, never a call to memcpy.
void copy_sges(Sge* to, const Sge* from, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) to[i] = from[i];
}

int post_send(mid::Qp* q, SendWr* wr, SendWr** bad) {
  Qp& qp = *to_qp(q);
  if (qp.hca->retired()) {  // the port was removed: nothing would run the WR
    *bad = wr;
    return EIO;
  }
  QpState s = qp.state.load(std::memory_order_acquire);
  // Posting to the SQ needs RTS (or SQD/ERR, where WRs are held or flushed) (IBA 10.8.2).
  if (s != QpState::rts && s != QpState::sqd && s != QpState::err && s != QpState::sqe) {
    *bad = wr;
    return EINVAL;
  }
  // The QP grants max_inline_data = kMaxInline (create_qp), the size of a WQE's inline
  // buffer, so the shared check bounds the copy below.
  const mid::SendLimits lim{qp.cap.max_send_sge, qp.cap.max_inline_data, qp.mtu};
  int rc = 0;
  for (; wr; wr = wr->next) {
    uint32_t total;
    if ((rc = mid::check_send_wr(qp, lim, *wr, &total)) != 0) break;
    uint64_t idx;
    SendWqe* w = qp.sq.claim(&idx);
    if (!w) {
      rc = ENOMEM;
      break;
    }
    w->wr_id = wr->wr_id;
    w->opcode = wr->opcode;
    w->send_flags = wr->send_flags;
    w->signaled = qp.sq_sig_all || (wr->send_flags & send_flags::signaled);
    w->imm_data = wr->imm_data;
    w->length = total;
    if (wr->opcode == WrOpcode::atomic_cmp_and_swp || wr->opcode == WrOpcode::atomic_fetch_and_add) {
      w->remote_addr = wr->wr.atomic.remote_addr;
      w->rkey = wr->wr.atomic.rkey;
      w->compare_add = wr->wr.atomic.compare_add;
      w->swap = wr->wr.atomic.swap;
    } else {
      w->remote_addr = wr->wr.rdma.remote_addr;
      w->rkey = wr->wr.rdma.rkey;
    }
    w->npkts = 0;
    w->first_psn = 0;
    w->started = false;
    if (wr->opcode == WrOpcode::bind_mw) {
      w->mw = wr->bind_mw.mw;
      w->mw_slot = to_mw(wr->bind_mw.mw)->slot;
      w->mw_gen = w->mw_slot->alloc_gen.load(std::memory_order_acquire);
      w->bind_mr = wr->bind_mw.bind_info.mr;
      w->rkey = wr->bind_mw.rkey;
      w->remote_addr = wr->bind_mw.bind_info.addr;
      w->compare_add = wr->bind_mw.bind_info.length;
      w->swap = wr->bind_mw.bind_info.mw_access_flags;
    } else if (wr->opcode == WrOpcode::local_inv) {
      w->rkey = wr->invalidate_rkey;
    } else if (wr->opcode == WrOpcode::flush) {
      w->flush_type = wr->wr.flush.type;
      w->flush_level = wr->wr.flush.level;
    }
    w->xrc_srqn = wr->qp_type.xrc.remote_srqn;  // read by XRC_SEND QPs only
    if (qp.qp_type == QpType::ud) {
      w->ah = to_ah(wr->wr.ud.ah);
      w->remote_qpn = wr->wr.ud.remote_qpn;
      w->remote_qkey = wr->wr.ud.remote_qkey;
    }
    w->is_inline = wr->send_flags & send_flags::inline_data;
    if (w->is_inline) {
      // Inline data is copied now; the buffer may be reused as soon as we return.
      uint32_t off = 0;
      for (int i = 0; i < wr->num_sge; i++) {
        // An empty SGE may carry address 0; memcpy's pointers must be valid even for 0 bytes.
        if (wr->sg_list[i].length)
          base::copy_bytes(w->inline_data + off,
                           reinterpret_cast<const void*>(wr->sg_list[i].addr),
                           wr->sg_list[i].length);
        off += wr->sg_list[i].length;
      }
      w->num_sge = 0;
    } else {
      w->num_sge = uint32_t(wr->num_sge);
      copy_sges(w->sge, wr->sg_list, w->num_sge);
    }
    qp.sq.publish(idx);
  }
  if (rc) *bad = wr;
  qp.engine->kick(&qp);
  qp.hca->progress();
  return rc;
}

// Validates receive WRs (mid::check_recv_wr, IBA 10.8.2) and queues them on `rq` in order.
// Stops at the first bad WR (EINVAL) or when the ring is full (ENOMEM) and names it in *bad.
int queue_recvs(WorkQueue<RecvWqe>& rq, uint32_t max_sge, RecvWr* wr, RecvWr** bad) {
  for (; wr; wr = wr->next) {
    uint32_t len;
    if (mid::check_recv_wr(*wr, max_sge, &len) != 0) {
      *bad = wr;
      return EINVAL;
    }
    uint64_t idx;
    RecvWqe* w = rq.claim(&idx);
    if (!w) {
      *bad = wr;
      return ENOMEM;
    }
    w->wr_id = wr->wr_id;
    w->num_sge = uint32_t(wr->num_sge);
    w->length = len;
    copy_sges(w->sge, wr->sg_list, w->num_sge);
    rq.publish(idx);
  }
  return 0;
}

int post_recv(mid::Qp* q, RecvWr* wr, RecvWr** bad) {
  Qp& qp = *to_qp(q);
  if (qp.hca->retired()) {
    *bad = wr;
    return EIO;
  }
  // An SRQ's QP, and either half of XRC, has no receive queue of its own.
  if (qp.state.load(std::memory_order_acquire) == QpState::reset || qp.srq ||
      qp.qp_type == QpType::xrc_send || qp.qp_type == QpType::xrc_recv) {
    *bad = wr;
    return EINVAL;
  }
  int rc = queue_recvs(qp.rq, qp.cap.max_recv_sge, wr, bad);
  if (qp.state.load(std::memory_order_acquire) == QpState::err) qp.engine->kick(&qp);  // flush
  return rc;
}

// ---------------------------------------------------------------- SRQ
int create_srq(mid::Pd* pd, const mid::SrqInitAttr* init, mid::Srq** out) {
  if (hca(pd->device).retired()) return ENODEV;
  if (init->max_wr == 0 || init->max_wr > kMaxQpWr || init->max_sge == 0 ||
      init->max_sge > kMaxSge || init->srq_limit > init->max_wr)
    return EINVAL;
  Srq* srq = new (std::nothrow) Srq();
  if (!srq) return ENOMEM;
  srq->hca = &hca(pd->device);
  srq->max_sge = init->max_sge;
  srq->limit.store(init->srq_limit, std::memory_order_relaxed);
  if (!srq->rq.init(init->max_wr)) {
    delete srq;
    return ENOMEM;
  }
  srq->max_wr = srq->rq.capacity();  // the request, exactly what fits (as create_qp)
  if (init->xrcd) {  // an XRC SRQ gets its number: XRC senders name it
    srq->xrcd = init->xrcd;
    srq->cq = init->cq;
    std::lock_guard<mid::Mutex> g(srq->hca->ctl());
    if (int rc = srq->hca->install_xrc_srq(srq)) {
      delete srq;
      return rc;
    }
  }
  *out = srq;
  return 0;
}

// mask: IBV_SRQ_MAX_WR (1) resizes — not supported; IBV_SRQ_LIMIT (2) arms the limit.
int modify_srq(mid::Srq* s, uint32_t max_wr, uint32_t srq_limit, uint32_t mask) {
  Srq& srq = *to_srq(s);
  if (mask & ~3u) return EINVAL;
  // No resizing: a size the queue already holds is accepted, a larger one is not. The
  // limit is armed too when both are given.
  if ((mask & 1u) && max_wr > srq.rq.capacity()) return EOPNOTSUPP;
  if (mask & 2u) {
    if (srq_limit > srq.rq.capacity()) return EINVAL;
    srq.limit.store(srq_limit, std::memory_order_release);
  }
  return 0;
}

int destroy_srq(mid::Srq* s) {
  Srq* srq = to_srq(s);
  if (srq->xrc) {
    std::lock_guard<mid::Mutex> g(srq->hca->ctl());
    srq->hca->remove_xrc_srq(srq);
  } else {
    srq->hca->quiesce();
  }
  delete srq;
  return 0;
}

int post_srq_recv(mid::Srq* s, RecvWr* wr, RecvWr** bad) {
  Srq& srq = *to_srq(s);
  if (srq.hca->retired()) {
    *bad = wr;
    return EIO;
  }
  return queue_recvs(srq.rq, srq.max_sge, wr, bad);
}

// Claimed and not yet retired: the occupancy a full ring refuses at (queue.h). Claimed is
// read first, so a retirement in between cannot make the difference negative.
template <class T>
uint32_t backlog_of(const WorkQueue<T>& q) {
  const uint64_t claimed = q.claimed();
  const uint64_t retired = q.retired();
  return retired < claimed ? uint32_t(claimed - retired) : 0;
}

void qp_backlog(mid::Qp* q, uint32_t* send, uint32_t* recv) {
  Qp& qp = *to_qp(q);
  *send = backlog_of(qp.sq);
  *recv = qp.srq ? 0 : backlog_of(qp.rq);
}

uint32_t srq_backlog(mid::Srq* s) {
  return backlog_of(to_srq(s)->rq);
}

// ---------------------------------------------------------------- AH
// Context: any thread, never sleeps (core_locking.rst): no allocation, no lock; the MAC
// is resolved at send time by the neighbour table, never here.
int create_ah(mid::Pd* pd, const AhAttr* attr, mid::Ah** out) {
  Device& dev = hca(pd->device);
  if (attr->port_num > 1 || attr->sgid_index != 0) return EINVAL;
  wire::FrameAddr fa;
  if (!make_frame_addr(dev, *attr, dev.alloc_ah_id(), 0, &fa)) return EINVAL;
  Ah* ah = dev.get_ah();
  if (!ah) return ENOMEM;
  ah->addr = fa;
  ah->attr = *attr;
  ah->live.store(true, std::memory_order_release);
  *out = ah;
  return 0;
}

// A UD WQE keeps a pointer to its AH until it is sent; verbs forbid destroying an AH that
// outstanding WRs use, and the slot is only reused, never unmapped.
int destroy_ah(mid::Ah* ah) {
  // A second destroy of the same AH must not put it on the free list twice.
  if (!to_ah(ah)->live.exchange(false, std::memory_order_acq_rel)) return EINVAL;
  hca(ah->device).put_ah(to_ah(ah));
  return 0;
}

int resolve_neigh(mid::Device* d, uint8_t port_num, uint32_t ip, uint8_t mac[6]) {
  Device& dev = hca(d);
  if (port_num != 1) return EINVAL;
  if (dev.retired()) return ENODEV;
  if (dev.neigh().lookup(ip, mac)) return 0;
  dev.progress();  // inline progress: let the engine send the ARP request
  return dev.neigh().state(ip) == net::NeighTable::State::kInvalid ? EHOSTUNREACH : EAGAIN;
}

// Only IPv4-mapped group GIDs (::ffff:224.0.0.0/4): RoCEv2 over IPv4.
bool mcast_ip(const Gid* g, uint32_t* ip) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(g->raw, kMapped, 12) != 0) return false;
  *ip = wire::load_be32(g->raw + 12);
  return (*ip >> 28) == 0xe;
}

int attach_mcast(mid::Qp* q, const Gid* g) {
  Qp* qp = to_qp(q);
  uint32_t ip;
  if (!mcast_ip(g, &ip)) return EINVAL;
  std::lock_guard<mid::Mutex> l(qp->hca->ctl());
  return qp->hca->mcast_attach(qp, ip);
}

int detach_mcast(mid::Qp* q, const Gid* g) {
  Qp* qp = to_qp(q);
  uint32_t ip;
  if (!mcast_ip(g, &ip)) return EINVAL;
  std::lock_guard<mid::Mutex> l(qp->hca->ctl());
  return qp->hca->mcast_detach(qp, ip);
}

int query_counters(mid::Device* d, Counter* out, int max) {
  return device_counters(hca(d), out, max);
}

int query_qp_counters(mid::Qp* q, Counter* out, int max) {
  return qp_counters(*to_qp(q), out, max);
}

}  // namespace

extern const mid::DeviceOps kHcaOps;

Device* device_of(mid::Device* d) noexcept {
  return d && d->ops == &kHcaOps ? static_cast<Device*>(d) : nullptr;
}

Qp* qp_of(mid::Qp* q) noexcept {
  return q && device_of(q->device) ? to_qp(q) : nullptr;
}

const mid::DeviceOps kHcaOps = {
    .query_device = query_device,
    .query_port = query_port,
    .query_gid = query_gid,
    .alloc_pd = alloc_pd,
    .dealloc_pd = dealloc_pd,
    .reg_mr = reg_mr,
    .dereg_mr = dereg_mr,
    .create_cq = create_cq,
    .destroy_cq = destroy_cq,
    .create_qp = create_qp,
    .modify_qp = modify_qp,
    .query_qp = query_qp,
    .destroy_qp = destroy_qp,
    .post_send = post_send,
    .post_recv = post_recv,
    .poll_cq = poll_cq,
    .req_notify_cq = req_notify_cq,
    .create_ah = create_ah,
    .destroy_ah = destroy_ah,
    .create_srq = create_srq,
    .modify_srq = modify_srq,
    .destroy_srq = destroy_srq,
    .post_srq_recv = post_srq_recv,
    .alloc_mw = alloc_mw,
    .dealloc_mw = dealloc_mw,
    .reg_mr_iova = reg_mr_iova,
    .query_counters = query_counters,
    .query_qp_counters = query_qp_counters,
    .resolve_neigh = resolve_neigh,
    .attach_mcast = attach_mcast,
    .detach_mcast = detach_mcast,
    .rereg_mr = rereg_mr,
    .poll_cq_ts = poll_cq_ts,
    .read_clock = read_clock,
    .open_xrcd = open_xrcd,
    .close_xrcd = close_xrcd,
    .open_xrc_qp = open_xrc_qp,
    .create_flow = create_flow,
    .destroy_flow = destroy_flow,
    .resize_cq = resize_cq,
    .qp_backlog = qp_backlog,
    .srq_backlog = srq_backlog,
};

}  // namespace dverbs::pmd::hca
