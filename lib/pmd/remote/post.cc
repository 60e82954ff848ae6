// The remote driver's fast path: posting writes WQEs into rings shared with dverbsd and
// publishes the producer index; polling reads completions the daemon wrote. No system
// call, no allocation, no logging, no sleeping lock (uverbs' mmap'ed doorbells and CQEs).
//
// Posting validates every work request with the checks the embedded HCA uses
// (midlayer/wr.h: opcode for the QP type, SGE count, inline size, UD address handle; then
// state and a full queue → ENOMEM) so applications see the same immediate errors in both
// modes; the daemon validates its own copy again and completes a bad WQE with an error
// status.
//
// Locking: one spinlock per ring (SQ, RQ, SRQ, CQ) serialises the local index and the slot
// writes of concurrent posters/pollers. Ordering: slots are written first and the
// producer index is published with release after the whole list; the daemon's consumer
// index is read with acquire before a slot is reused. CQ: `prod` (acquire) before the
// entries are read, `cons` (release) after they were copied.
#include <cstring>

#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

namespace {

void fill_send_wqe(const Qp& qp, const SendWr& wr, daemon::ShmSendWqe* w) {
  w->wr_id = wr.wr_id;
  w->opcode = wr.opcode;
  w->send_flags = wr.send_flags;
  w->imm_data = wr.imm_data;  // also invalidate_rkey (same word)
  w->ah_id = 0;
  w->ah_pd = 0;
  w->remote_qpn = w->remote_qkey = 0;
  w->mw = w->bind_mr = 0;
  w->bind_rkey = 0;
  w->bind_addr = w->bind_length = 0;
  w->bind_access = 0;
  w->compare_add = w->swap = 0;
  if (mid::is_atomic(wr.opcode)) {
    w->remote_addr = wr.wr.atomic.remote_addr;
    w->rkey = wr.wr.atomic.rkey;
    w->compare_add = wr.wr.atomic.compare_add;
    w->swap = wr.wr.atomic.swap;
  } else {
    w->remote_addr = wr.wr.rdma.remote_addr;
    w->rkey = wr.wr.rdma.rkey;
  }
  if (wr.opcode == WrOpcode::flush) {  // IBA 1.5 FLUSH: length, type | level << 8
    w->compare_add = wr.wr.flush.length;
    w->swap = uint64_t(wr.wr.flush.type) | uint64_t(wr.wr.flush.level) << 8;
  }
  if (wr.opcode == WrOpcode::bind_mw) {
    const auto& b = wr.bind_mw;
    w->remote_addr = 0;
    w->rkey = 0;
    w->mw = to_mw(b.mw)->handle;
    w->bind_mr = b.bind_info.mr ? to_mr(b.bind_info.mr)->handle : 0;
    w->bind_rkey = b.rkey;
    w->bind_addr = b.bind_info.addr;
    w->bind_length = b.bind_info.length;
    w->bind_access = b.bind_info.mw_access_flags;
  }
  w->xrc_srqn = wr.qp_type.xrc.remote_srqn;  // read by XRC_SEND QPs only
  if (qp.qp_type == QpType::ud) {
    const Ah* ah = to_ah(wr.wr.ud.ah);
    w->ah_id = ah->id;
    w->ah_pd = ah->pd_handle;
    w->ah_attr = ah->attr;
    w->remote_qpn = wr.wr.ud.remote_qpn;
    w->remote_qkey = wr.wr.ud.remote_qkey;
  }
  if (wr.send_flags & send_flags::inline_data) {
    // Inline data is copied now: the buffer may be reused as soon as we return.
    uint32_t off = 0;
    for (int i = 0; i < wr.num_sge; i++) {
      const uint32_t n = wr.sg_list[i].length;
      if (n) std::memcpy(w->inline_data + off, reinterpret_cast<const void*>(wr.sg_list[i].addr), n);
      off += n;
    }
    w->inline_len = off;
    w->num_sge = 0;
  } else {
    w->inline_len = 0;
    w->num_sge = uint32_t(wr.num_sge);
    if (wr.num_sge) std::memcpy(w->sge, wr.sg_list, sizeof(Sge) * uint32_t(wr.num_sge));
  }
}

// A free slot of `r` (under r.lock), refreshing the daemon's consumer index only when the
// cached view says full.
bool ring_has_room(WorkRing& r, uint32_t* cons_cache) {
  if (r.prod - *cons_cache < r.limit) return true;
  *cons_cache = r.hdr->cons.v.load(std::memory_order_acquire);
  return r.prod - *cons_cache < r.limit;
}

// Validates (mid::check_recv_wr, IBA 10.8.2) and queues receive WRs on `r`.
int queue_recvs(WorkRing& r, uint32_t max_sge, RecvWr* wr, RecvWr** bad) {
  int rc = 0;
  r.lock.lock();
  uint32_t cons = r.hdr->cons.v.load(std::memory_order_acquire);
  const uint32_t start = r.prod;
  for (; wr; wr = wr->next) {
    uint32_t len;
    if (mid::check_recv_wr(*wr, max_sge, &len) != 0) {
      rc = EINVAL;
      break;
    }
    if (!ring_has_room(r, &cons)) {
      rc = ENOMEM;
      break;
    }
    auto* w = r.slot<daemon::ShmRecvWqe>(r.prod);
    w->wr_id = wr->wr_id;
    w->num_sge = uint32_t(wr->num_sge);
    w->pad = 0;
    if (wr->num_sge) std::memcpy(w->sge, wr->sg_list, sizeof(Sge) * uint32_t(wr->num_sge));
    r.prod++;
  }
  if (r.prod != start) r.hdr->prod.v.store(r.prod, std::memory_order_release);
  r.lock.unlock();
  if (rc) *bad = wr;
  return rc;
}

}  // namespace

int post_send(mid::Qp* q, SendWr* wr, SendWr** bad) {
  Qp& qp = *to_qp(q);
  if (rdev(q->device).dead()) {  // nothing would run the WR
    *bad = wr;
    return EIO;
  }
  const QpState s = qp.state.load(std::memory_order_acquire);
  // Posting to the SQ needs RTS (or SQD/SQE/ERR, where WRs are held or flushed) (IBA 10.8.2);
  // an XRC_RECV QP has no SQ (and no ring).
  if ((s != QpState::rts && s != QpState::sqd && s != QpState::err && s != QpState::sqe) ||
      !qp.sq.hdr) {
    *bad = wr;
    return EINVAL;
  }
  WorkRing& r = qp.sq;
  const mid::SendLimits lim{qp.cap.max_send_sge, qp.cap.max_inline_data, qp.ud_mtu};
  uint32_t len;
  int rc = 0;
  r.lock.lock();
  uint32_t cons = r.hdr->cons.v.load(std::memory_order_acquire);
  const uint32_t start = r.prod;
  for (; wr; wr = wr->next) {
    if ((rc = mid::check_send_wr(qp, lim, *wr, &len)) != 0) break;
    if (!ring_has_room(r, &cons)) {
      rc = ENOMEM;
      break;
    }
    fill_send_wqe(qp, *wr, r.slot<daemon::ShmSendWqe>(r.prod));
    // The window's new rkey, as the application expects to read it back from the MW (the
    // embedded HCA sets it when the bind completes).
    if (wr->opcode == WrOpcode::bind_mw) wr->bind_mw.mw->rkey = wr->bind_mw.rkey;
    r.prod++;
  }
  if (r.prod != start) r.hdr->prod.v.store(r.prod, std::memory_order_release);
  r.lock.unlock();
  if (rc) *bad = wr;
  return rc;
}

int post_recv(mid::Qp* q, RecvWr* wr, RecvWr** bad) {
  Qp& qp = *to_qp(q);
  if (rdev(q->device).dead()) {
    *bad = wr;
    return EIO;
  }
  if (qp.state.load(std::memory_order_acquire) == QpState::reset || qp.srq || !qp.rq.hdr ||
      qp.qp_type == QpType::xrc_send) {  // an XRC_SEND QP has no receive queue
    *bad = wr;
    return EINVAL;
  }
  return queue_recvs(qp.rq, qp.cap.max_recv_sge, wr, bad);
}

int post_srq_recv(mid::Srq* s, RecvWr* wr, RecvWr** bad) {
  Srq& srq = *to_srq(s);
  if (rdev(s->device).dead()) {
    *bad = wr;
    return EIO;
  }
  return queue_recvs(srq.rq, srq.max_sge, wr, bad);
}

// Copies up to `n` completions (and their timestamps, when `ts` is not null) out of the
// daemon's ring.
static int poll_ring(mid::Cq* c, int n, Wc* wc, uint64_t* ts) {
  Cq& cq = *to_cq(c);
  if (n < 0) return -EINVAL;
  cq.lock.lock();
  const uint32_t prod = cq.hdr->prod.v.load(std::memory_order_acquire);
  uint32_t avail = prod - cq.cons;
  if (avail > cq.mask + 1) avail = 0;  // impossible indices: a corrupt ring shows nothing
  const uint32_t take = avail < uint32_t(n) ? avail : uint32_t(n);
  for (uint32_t i = 0; i < take; i++) {
    const daemon::ShmCqe& e = cq.ring[(cq.cons + i) & cq.mask];
    wc[i] = e.wc;
    if (ts) ts[i] = e.completion_ts;
  }
  if (take) {
    cq.cons += take;
    cq.hdr->cons.v.store(cq.cons, std::memory_order_release);
  }
  cq.lock.unlock();
  // After the daemon died, what it had completed is still returned; then polling fails
  // so that loops waiting for completions end.
  if (take == 0 && n > 0 && rdev(c->device).dead()) return -EIO;
  return int(take);
}

int poll_cq(mid::Cq* c, int n, Wc* wc) { return poll_ring(c, n, wc, nullptr); }

int poll_cq_ts(mid::Cq* c, int n, Wc* wc, uint64_t* ts) { return poll_ring(c, n, wc, ts); }

// Notification (IBA 11.4.2.2): the daemon applies each new arm_seq; an arm that finds
// completions unpolled at arm time raises the event at once (proto.h).
int req_notify_cq(mid::Cq* c, bool solicited_only) {
  Cq& cq = *to_cq(c);
  if (rdev(c->device).dead()) return EIO;
  cq.lock.lock();
  cq.hdr->arm_flags.store(solicited_only ? 1 : 2, std::memory_order_relaxed);
  cq.hdr->arm_cons.store(cq.cons, std::memory_order_relaxed);
  cq.hdr->arm_seq.fetch_add(1, std::memory_order_release);
  cq.lock.unlock();
  return 0;
}

}  // namespace dverbs::pmd::remote
