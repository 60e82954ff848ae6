// The doorbell thread: dverbsd's fast path, the user-space stand-in for the doorbell
// registers a hardware HCA maps into a process.
//
// One thread walks every QP, SRQ and CQ of every connection (the published DbSet):
//  - SQ/RQ/SRQ: new WQEs are copied out of shared memory into a local before any field is
//    read, validated against the object's granted limits and the connection's handle
//    table, and posted. The HCA's ENOMEM (its queue is full) leaves the WQE in the ring for
//    the next pass; any other refusal completes the WQE with IBV_WC_LOC_QP_OP_ERR in the
//    QP's CQ ring. `cons` is published after consuming.
//  - CQ: applies a new arm, moves completions from the internal CQ into the ring while it
//    has room, raises the completion event the arm asks for.
// Every pass calls poll_cq on every CQ, so with DVERBS_LCORES=0 (inline progress) the
// transport keeps moving even when no client touches anything.
//
// Rules: noexcept, no allocation, no logging, no sleeping lock; hostile ring indices are
// counted (corrupt_rings) and the ring is left alone for the pass.
//
// Reclamation: db_epoch_ is odd while a pass runs. The control path unpublishes an object
// (DbSet edit or HandleTable::hide), then synchronize(): once the epoch it saw odd has
// moved, no pass can still hold the object.
#include <sys/prctl.h>
#include <unistd.h>

#include <cstring>
#include <ctime>

#include "daemon/internal.h"

namespace dverbs::daemon {

namespace {

constexpr uint32_t kBudget = 64;        // WQEs per ring per pass (fairness)
constexpr int kPollBatch = 32;          // completions per poll_cq
constexpr uint32_t kSpinPasses = 4096;  // empty passes before sleeping
constexpr long kSleepMinNs = 1000, kSleepMaxNs = 50000;

inline uint32_t min_u32(uint32_t a, uint32_t b) noexcept {
  return a < b ? a : b;
}

// The HCA's AH for the client AH a UD WQE names (internal.h, AhCache), created on the
// first WQE with a new id from the address vector in the copy. nullptr when the id, the PD
// or the address is not acceptable.
mid::Ah* ah_for(Conn& c, Counters& st, const ShmSendWqe& w) noexcept {
  const uint32_t slot = w.ah_id & (kAhSlots - 1);
  if (w.ah_id == 0) return nullptr;
  mid::Ah* ah = nullptr;
  c.ahs.lock.lock();
  if (c.ahs.slots.size() == kAhSlots) {
    AhSlot& s = c.ahs.slots[slot];
    if (s.ah && s.id == w.ah_id && s.pd == w.ah_pd) {
      ah = s.ah;
    } else if (auto* pd = static_cast<PdObj*>(c.table.get(w.ah_pd, Kind::pd))) {
      AhAttr attr = w.ah_attr;
      mid::Ah* fresh = nullptr;
      if (mid::create_ah(pd->pd, &attr, &fresh) == 0) {
        if (s.ah) {
          mid::destroy_ah(s.ah);  // the client reused the slot: its old AH is gone
          st.objects[int(Kind::ah)].fetch_sub(1, std::memory_order_relaxed);
        }
        s = {w.ah_id, w.ah_pd, fresh};
        st.objects[int(Kind::ah)].fetch_add(1, std::memory_order_relaxed);
        ah = fresh;
      }
    }
  }
  c.ahs.lock.unlock();
  return ah;
}

// Builds the SendWr for the local copy `w`; EINVAL when the copy is not acceptable.
int build_send(const QpObj& q, Counters& st, ShmSendWqe& w, SendWr* wr, Sge* inl) noexcept {
  if (uint32_t(w.opcode) > uint32_t(WrOpcode::send_with_inv) && w.opcode != WrOpcode::flush &&
      w.opcode != WrOpcode::atomic_write)
    return EINVAL;
  std::memset(static_cast<void*>(wr), 0, sizeof *wr);
  wr->wr_id = w.wr_id;
  wr->opcode = w.opcode;
  wr->send_flags = w.send_flags;
  wr->imm_data = w.imm_data;  // also invalidate_rkey
  if (w.send_flags & send_flags::inline_data) {
    if (w.inline_len > min_u32(q.cap.max_inline_data, sizeof w.inline_data)) return EINVAL;
    inl->addr = reinterpret_cast<uint64_t>(w.inline_data);
    inl->length = w.inline_len;
    inl->lkey = 0;
    wr->sg_list = inl;
    wr->num_sge = w.inline_len ? 1 : 0;
  } else {
    if (w.num_sge > min_u32(q.cap.max_send_sge, 16)) return EINVAL;
    wr->sg_list = w.sge;
    wr->num_sge = int(w.num_sge);
  }
  const HandleTable& t = q.conn->table;
  if (w.opcode == WrOpcode::atomic_cmp_and_swp || w.opcode == WrOpcode::atomic_fetch_and_add) {
    wr->wr.atomic.remote_addr = w.remote_addr;
    wr->wr.atomic.compare_add = w.compare_add;
    wr->wr.atomic.swap = w.swap;
    wr->wr.atomic.rkey = w.rkey;
  } else if (q.type == QpType::ud) {
    mid::Ah* ah = ah_for(*q.conn, st, w);
    if (!ah) return EINVAL;
    wr->wr.ud.ah = ah;
    wr->wr.ud.remote_qpn = w.remote_qpn;
    wr->wr.ud.remote_qkey = w.remote_qkey;
  } else {
    wr->wr.rdma.remote_addr = w.remote_addr;
    wr->wr.rdma.rkey = w.rkey;
  }
  if (w.opcode == WrOpcode::flush) {  // the client's encoding (pmd/remote/post.cc)
    wr->wr.flush.length = w.compare_add;
    wr->wr.flush.type = uint8_t(w.swap);
    wr->wr.flush.level = uint8_t(w.swap >> 8);
  }
  wr->qp_type.xrc.remote_srqn = w.xrc_srqn;  // read by XRC_SEND QPs only
  if (w.opcode == WrOpcode::bind_mw) {
    auto* mw = static_cast<MwObj*>(t.get(w.mw, Kind::mw));
    if (!mw) return EINVAL;
    mid::Mr* mr = nullptr;
    if (w.bind_mr != 0 || w.bind_length != 0) {
      auto* m = static_cast<MrObj*>(t.get(w.bind_mr, Kind::mr));
      if (!m) return EINVAL;
      mr = m->mr;
    }
    wr->bind_mw.mw = mw->mw;
    wr->bind_mw.rkey = w.bind_rkey;
    wr->bind_mw.bind_info.mr = mr;
    wr->bind_mw.bind_info.addr = w.bind_addr;
    wr->bind_mw.bind_info.length = w.bind_length;
    wr->bind_mw.bind_info.mw_access_flags = w.bind_access;
  }
  return 0;
}

// Builds the RecvWr for the local copy `w`.
int build_recv(ShmRecvWqe& w, uint32_t max_sge, RecvWr* wr) noexcept {
  if (w.num_sge > min_u32(max_sge, 16)) return EINVAL;
  wr->wr_id = w.wr_id;
  wr->next = nullptr;
  wr->sg_list = w.sge;
  wr->num_sge = int(w.num_sge);
  return 0;
}

}  // namespace

void drop_ahs(Conn& c, Counters& st, Handle pd) noexcept {
  c.ahs.lock.lock();
  for (AhSlot& s : c.ahs.slots) {
    if (!s.ah || (pd != 0 && s.pd != pd)) continue;
    mid::destroy_ah(s.ah);
    st.objects[int(Kind::ah)].fetch_sub(1, std::memory_order_relaxed);
    s = {};
  }
  c.ahs.lock.unlock();
}

// ---------------------------------------------------------------- events

void Server::raise_event(Conn& c, EventKind kind, EventType type, Handle obj,
                         uint32_t port) noexcept {
  ShmEvent e;
  std::memset(&e, 0, sizeof e);
  e.kind = kind;
  e.type = type;
  e.object = obj;
  e.port_num = port;
  bool ok = false;
  c.ev_lock.lock();
  if (c.ev) {
    const uint32_t cons = c.ev_hdr->cons.v.load(std::memory_order_acquire);
    // A client `cons` ahead of prod or more than a ring behind reads as a full ring.
    if (c.ev_prod - cons < c.ev_n) {
      std::memcpy(&c.ev[c.ev_prod & (c.ev_n - 1)], &e, sizeof e);
      c.ev_prod++;
      c.ev_hdr->prod.v.store(c.ev_prod, std::memory_order_release);
      ok = true;
    }
  }
  c.ev_lock.unlock();
  if (!ok) {
    stats.events_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  stats.events_delivered.fetch_add(1, std::memory_order_relaxed);
  // The session thread relays the kick to the client's eventfd (internal.h).
  if (!c.kick_pending.exchange(true, std::memory_order_acq_rel)) {
    const uint64_t one = 1;
    ssize_t n = ::write(c.notify_fd, &one, sizeof one);
    (void)n;  // private, non-blocking, coalesced: it cannot fill up
  }
}

// ---------------------------------------------------------------- reclamation

void Server::synchronize() noexcept {
  // Review fix: HandleTable::hide() is a release store; without a full fence the epoch load
  // below may be satisfied before that store is visible (StoreLoad), read an even epoch, and
  // return while a pass that started afterwards still resolves the hidden handle.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint64_t e = db_epoch_.load(std::memory_order_seq_cst);
  if (!(e & 1)) return;  // not inside a pass: later passes see the new state
  uint32_t spins = 0;
  while (db_epoch_.load(std::memory_order_acquire) == e) {
    if (++spins < 64) {
      cpu_relax();
    } else {
      timespec ts{0, 2000};
      ::nanosleep(&ts, nullptr);
    }
  }
}

void Server::db_edit(const std::function<void(DbSet&)>& edit) {
  std::lock_guard<std::mutex> g(db_mu_);
  edit(db_master_);
  const DbSet* next = new DbSet(db_master_);
  const DbSet* old = db_snap_.exchange(next, std::memory_order_seq_cst);
  synchronize();
  delete old;
}

// ---------------------------------------------------------------- rings

// The ring may be written: no resize under way, and a resized ring taken by its client
// (proto.h CqRingHeader). Context: the doorbell thread.
static bool cq_writable(const CqObj& c) noexcept {
  return !c.resizing.load(std::memory_order_acquire) &&
         c.hdr->attached.load(std::memory_order_acquire) != 0;
}

bool Server::complete_error(CqObj& c, uint64_t wr_id, WcOpcode op, uint32_t qp_num) noexcept {
  if (!cq_writable(c)) return false;  // being resized: the WQE waits
  const uint32_t cons = c.hdr->cons.v.load(std::memory_order_acquire);
  const uint32_t used = c.prod - cons;
  if (used >= c.n) {
    if (used > c.n) stats.corrupt_rings.fetch_add(1, std::memory_order_relaxed);
    return false;  // no room: the WQE stays in its ring until there is
  }
  ShmCqe e;
  std::memset(&e, 0, sizeof e);
  e.wc.wr_id = wr_id;
  e.wc.status = WcStatus::loc_qp_op_err;
  e.wc.opcode = op;
  e.wc.qp_num = qp_num;
  mid::read_clock(c.cq->device, &e.completion_ts);  // made here, now
  std::memcpy(&c.ring[c.prod & (c.n - 1)], &e, sizeof e);
  c.prod++;  // published by publish_cq
  stats.cqes_delivered.fetch_add(1, std::memory_order_relaxed);
  c.error_staged = true;
  return true;
}

// Exact capacities (proto.h WorkRingHeader): a work ring's `cons` is what the client may
// reuse, and a WQE occupies a place until the HCA retired it, not only until it was read
// (the HCA's queue is granted as large as the client's ring: counting only the read ones
// would let a client queue twice its cap). Published: read - still queued on the HCA.
// True when the published index moved. Context: the doorbell thread.
static bool publish_freed(RingIndex& cons, uint32_t read, uint32_t backlog,
                          uint32_t* freed) noexcept {
  const uint32_t now = read - backlog;
  if (now == *freed) return false;
  *freed = now;
  cons.v.store(now, std::memory_order_release);
  return true;
}

bool Server::pass_sq(QpObj& q) noexcept {
  const uint32_t prod = q.sq->prod.v.load(std::memory_order_acquire);
  uint32_t cons = q.sq_cons;
  if (prod == cons) return false;
  if (prod - cons > q.sq_n) {
    stats.corrupt_rings.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  bool work = false;
  for (uint32_t budget = kBudget; cons != prod && budget; budget--) {
    ShmSendWqe w;  // copy first: the client may rewrite the slot at any time
    std::memcpy(static_cast<void*>(&w), &q.sqe[cons & (q.sq_n - 1)], sizeof w);
    SendWr wr;
    Sge inl;
    int rc = build_send(q, stats, w, &wr, &inl);
    if (rc == 0) {
      SendWr* bad = nullptr;
      rc = mid::post_send(q.qp, &wr, &bad);
      if (rc == ENOMEM) break;  // the HCA's SQ is full: retry next pass
      if (rc == 0) stats.wqes_posted.fetch_add(1, std::memory_order_relaxed);
    }
    if (rc != 0) {
      if (!complete_error(*q.scq, w.wr_id, mid::wc_opcode(w.opcode), q.qp_num)) break;
      stats.bad_wqes.fetch_add(1, std::memory_order_relaxed);
    }
    cons++;
    work = true;
  }
  if (work) q.sq_cons = cons;
  return work;
}

bool Server::pass_rq(QpObj& q) noexcept {
  if (q.rq_n == 0) return false;
  const uint32_t prod = q.rq->prod.v.load(std::memory_order_acquire);
  uint32_t cons = q.rq_cons;
  if (prod == cons) return false;
  if (prod - cons > q.rq_n) {
    stats.corrupt_rings.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  bool work = false;
  for (uint32_t budget = kBudget; cons != prod && budget; budget--) {
    ShmRecvWqe w;
    std::memcpy(static_cast<void*>(&w), &q.rqe[cons & (q.rq_n - 1)], sizeof w);
    RecvWr wr;
    int rc = build_recv(w, q.cap.max_recv_sge, &wr);
    if (rc == 0) {
      RecvWr* bad = nullptr;
      rc = mid::post_recv(q.qp, &wr, &bad);
      if (rc == ENOMEM) break;
      if (rc == 0) stats.wqes_posted.fetch_add(1, std::memory_order_relaxed);
    }
    if (rc != 0) {
      if (!complete_error(*q.rcq, w.wr_id, WcOpcode::recv, q.qp_num)) break;
      stats.bad_wqes.fetch_add(1, std::memory_order_relaxed);
    }
    cons++;
    work = true;
  }
  if (work) q.rq_cons = cons;
  return work;
}

// Publishes what the HCA retired since the last pass (publish_freed).
bool Server::pass_freed(QpObj& q) noexcept {
  uint32_t send, recv;
  mid::qp_backlog(q.qp, &send, &recv);
  bool moved = publish_freed(q.sq->cons, q.sq_cons, send, &q.sq_freed);
  if (q.rq_n) moved |= publish_freed(q.rq->cons, q.rq_cons, recv, &q.rq_freed);
  return moved;
}

bool Server::pass_freed(SrqObj& s) noexcept {
  return publish_freed(s.hdr->cons, s.cons, mid::srq_backlog(s.srq), &s.freed);
}

// An SRQ has no CQ of its own: a refused WQE is consumed and counted (bad_wqes).
bool Server::pass_srq(SrqObj& s) noexcept {
  const uint32_t prod = s.hdr->prod.v.load(std::memory_order_acquire);
  uint32_t cons = s.cons;
  if (prod == cons) return false;
  if (prod - cons > s.n) {
    stats.corrupt_rings.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  bool work = false;
  for (uint32_t budget = kBudget; cons != prod && budget; budget--) {
    ShmRecvWqe w;
    std::memcpy(static_cast<void*>(&w), &s.ring[cons & (s.n - 1)], sizeof w);
    RecvWr wr;
    int rc = build_recv(w, s.max_sge, &wr);
    if (rc == 0) {
      RecvWr* bad = nullptr;
      rc = mid::post_srq_recv(s.srq, &wr, &bad);
      if (rc == ENOMEM) break;
    }
    if (rc == 0)
      stats.wqes_posted.fetch_add(1, std::memory_order_relaxed);
    else
      stats.bad_wqes.fetch_add(1, std::memory_order_relaxed);
    cons++;
    work = true;
  }
  if (work) s.cons = cons;
  return work;
}

// CQ overrun (IBA 11.4.2.1): the completions are lost and the client learns it from one
// IBV_EVENT_CQ_ERR (shared with an overrun the HCA itself reports, session.cc cq_async).
// Holding them back in the HCA's CQ instead would let a client exceed its cqe unnoticed.
void Server::cq_overrun(CqObj& c) noexcept {
  if (c.overrun.exchange(true, std::memory_order_acq_rel)) return;
  c.hdr->overflow.store(1, std::memory_order_release);
  raise_event(*c.conn, EventKind::async, EventType::cq_err, c.handle, 0);
}

// proto.h CqRingHeader: apply a new arm (req_notify on the internal CQ first), then move
// everything pending into the ring, then raise at once if the client has anything unpolled
// since it armed.
bool Server::pass_cq(CqObj& c) noexcept {
  if (!cq_writable(c)) return false;
  if (c.overrun.load(std::memory_order_relaxed) && !c.hdr->overflow.load(std::memory_order_relaxed))
    c.hdr->overflow.store(1, std::memory_order_release);
  bool work = false;
  bool applied = false;
  uint32_t arm_cons = 0;
  const uint32_t seq = c.hdr->arm_seq.load(std::memory_order_acquire);
  if (seq != c.arm_seen) {
    c.arm_seen = seq;
    const uint32_t flags = c.hdr->arm_flags.load(std::memory_order_relaxed);
    arm_cons = c.hdr->arm_cons.load(std::memory_order_relaxed);
    c.armed.store(true, std::memory_order_release);
    mid::req_notify_cq(c.cq, flags == 1);
    applied = true;
    work = true;
  }
  Wc wcs[kPollBatch];
  uint64_t ts[kPollBatch] = {};
  for (;;) {
    const uint32_t cons = c.hdr->cons.v.load(std::memory_order_acquire);
    const uint32_t used = c.prod - cons;
    uint32_t space = 0;
    if (used > c.n)
      stats.corrupt_rings.fetch_add(1, std::memory_order_relaxed);
    else
      space = c.n - used;
    if (space == 0) {
      // The client holds cqe completions unpolled: what the HCA has beyond them does not
      // fit (polled anyway: in inline-progress mode this call drives the transport).
      if (mid::poll_cq(c.cq, int(kPollBatch), wcs) > 0) {
        cq_overrun(c);
        work = true;
      }
      break;
    }
    const int want = int(min_u32(space, kPollBatch));
    // With each completion its timestamp (a device without them: 0).
    int got = mid::poll_cq_ts(c.cq, want, wcs, ts);
    if (got == -EOPNOTSUPP) got = mid::poll_cq(c.cq, want, wcs);
    if (got <= 0) break;
    for (int i = 0; i < got; i++) {
      ShmCqe& e = c.ring[(c.prod + uint32_t(i)) & (c.n - 1)];
      std::memcpy(&e.wc, &wcs[i], sizeof(Wc));
      e.completion_ts = ts[i];
    }
    c.prod += uint32_t(got);  // published by publish_cq
    stats.cqes_delivered.fetch_add(uint64_t(got), std::memory_order_relaxed);
    work = true;
    if (!applied || got < want) break;  // drain completely only when an arm was applied
  }
  if (applied) {
    c.arm_applied = true;
    c.arm_cons = arm_cons;
  }
  return work;
}

// The second half of a pass over a CQ, after the work rings published what the HCA retired
// (pass_freed): the completions written into the ring become visible, then the events due.
// Error completions always raise an armed CQ's event (solicited-only or not); an arm
// applied with completions unpolled since it was made raises at once. The session thread
// may be waiting in synchronize() to resize this CQ: hdr is still the ring written. Once
// the resize has begun (resizing set), it owns hdr, prod and published until it resumes:
// the pass leaves the CQ alone, and what is due is published on the pass after.
void Server::publish_cq(CqObj& c) noexcept {
  if (c.resizing.load(std::memory_order_acquire)) return;
  if (c.prod != c.published) {
    c.published = c.prod;
    c.hdr->prod.v.store(c.prod, std::memory_order_release);
  }
  bool raise = false;
  if (c.error_staged) {
    c.error_staged = false;
    raise = true;
  }
  if (c.arm_applied) {
    c.arm_applied = false;
    raise |= c.prod != c.arm_cons;
  }
  if (raise && c.armed.exchange(false, std::memory_order_acq_rel))
    raise_event(*c.conn, EventKind::comp, EventType::cq_err, c.handle, 0);
}

// ---------------------------------------------------------------- the thread

void Server::doorbell_main() {
  ::prctl(PR_SET_NAME, "dverbsd-db", 0, 0, 0);
  ::prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
  uint32_t idle = 0;
  long sleep_ns = kSleepMinNs;
  while (!db_stop_.load(std::memory_order_relaxed)) {
    db_epoch_.fetch_add(1, std::memory_order_seq_cst);  // odd: inside a pass
    // Pairs with the fence in synchronize(): the pass's handle-tag loads (acquire) must not
    // be performed before the epoch became odd.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const DbSet* s = db_snap_.load(std::memory_order_seq_cst);
    cmd_done_.load(std::memory_order_acquire);  // after the commands clients saw replies to
    bool work = false;
    bool empty = true;
    if (s) {
      empty = s->qps.empty() && s->srqs.empty() && s->cqs.empty();
      for (QpObj* q : s->qps) {
        work |= pass_sq(*q);
        work |= pass_rq(*q);
      }
      for (SrqObj* q : s->srqs) work |= pass_srq(*q);
      for (CqObj* c : s->cqs) work |= pass_cq(*c);
      // Slots freed before the completions that free them are seen (pass_freed reads what
      // the HCA retired after pass_cq polled it: the HCA retires a WQE before it completes).
      for (QpObj* q : s->qps) work |= pass_freed(*q);
      for (SrqObj* q : s->srqs) work |= pass_freed(*q);
      for (CqObj* c : s->cqs) publish_cq(*c);
    }
    db_epoch_.fetch_add(1, std::memory_order_seq_cst);  // even: quiescent
    if (work) {
      idle = 0;
      sleep_ns = kSleepMinNs;
      continue;
    }
    if (empty) {  // nothing to serve: a new object is noticed within a millisecond
      timespec ts{0, 1000000};
      ::nanosleep(&ts, nullptr);
      continue;
    }
    if (++idle < kSpinPasses) {
      cpu_relax();
      continue;
    }
    timespec ts{0, sleep_ns};
    ::nanosleep(&ts, nullptr);
    sleep_ns = sleep_ns * 2 > kSleepMaxNs ? kSleepMaxNs : sleep_ns * 2;
  }
}

}  // namespace dverbs::daemon
