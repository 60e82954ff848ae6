// The QP state machine of the soft HCA (IBA 10.3.1): modify_qp checks the transition, the
// attributes it requires and allows, and their values (rxe's qp_chk_attr), then applies
// them under Qp::lock (qp_from_attr). Process context, under the device's control mutex.
#include <memory>
#include <mutex>
#include <new>

#include <rte_cycles.h>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/ops.h"

namespace dverbs::pmd::hca {

namespace {

// Required and optional attributes of each transition (IBA 10.3.1, Table 91; the same
// table Linux keeps in ib_modify_qp_is_ok).
struct Transition {
  uint32_t req[4];  // RC, UC, UD, raw packet
  uint32_t opt[4];
  bool valid;
};

// XRC QPs use RC's column, adjusted by xrc_transition; raw packet QPs the fourth.
int type_index(QpType t) {
  return is_reliable_connected(t) ? 0 : t == QpType::uc ? 1 : t == QpType::ud ? 2 : 3;
}

Transition transition(QpState from, QpState to) {
  namespace m = qp_attr_mask;
  Transition t{};
  if (to == QpState::reset || to == QpState::err) {
    t.valid = true;
    return t;
  }
  auto set = [&](uint32_t rc_r, uint32_t uc_r, uint32_t ud_r, uint32_t rc_o, uint32_t uc_o,
                 uint32_t ud_o) {
    t = Transition{{rc_r, uc_r, ud_r, 0}, {rc_o, uc_o, ud_o, 0}, true};
  };
  const uint32_t cur = m::cur_state;
  if (from == QpState::reset && to == QpState::init) {
    set(m::pkey_index | m::port | m::access_flags, m::pkey_index | m::port | m::access_flags,
        m::pkey_index | m::port | m::qkey, 0, 0, 0);
  } else if (from == QpState::init && to == QpState::init) {
    set(0, 0, 0, m::pkey_index | m::port | m::access_flags,
        m::pkey_index | m::port | m::access_flags, m::pkey_index | m::port | m::qkey);
  } else if (from == QpState::init && to == QpState::rtr) {
    set(m::av | m::path_mtu | m::dest_qpn | m::rq_psn | m::max_dest_rd_atomic | m::min_rnr_timer,
        m::av | m::path_mtu | m::dest_qpn | m::rq_psn, 0,
        m::alt_path | m::access_flags | m::pkey_index, m::alt_path | m::access_flags | m::pkey_index,
        m::pkey_index | m::qkey);
  } else if (from == QpState::rtr && to == QpState::rts) {
    set(m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic, m::sq_psn,
        m::sq_psn,
        cur | m::alt_path | m::access_flags | m::min_rnr_timer | m::path_mig_state,
        cur | m::alt_path | m::access_flags | m::path_mig_state, cur | m::qkey);
  } else if ((from == QpState::rts || from == QpState::sqd || from == QpState::sqe) &&
             to == QpState::rts) {
    set(0, 0, 0, cur | m::access_flags | m::alt_path | m::path_mig_state | m::min_rnr_timer,
        cur | m::access_flags | m::alt_path | m::path_mig_state, cur | m::qkey);
  } else if ((from == QpState::rts || from == QpState::sqd) && to == QpState::sqd) {
    set(0, 0, 0, m::en_sqd_async_notify, m::en_sqd_async_notify, m::en_sqd_async_notify);
  }
  // Raw packet QPs (Linux's qp_state_table for IB_QPT_RAW_PACKET): the port at RESET→INIT
  // (optional at INIT→INIT), otherwise only what every type may give (cur_state, SQD
  // notification); no path, PSNs, Q_Key or P_Key.
  if (from == QpState::reset && to == QpState::init)
    t.req[3] = m::port;
  else if (from == QpState::init && to == QpState::init)
    t.opt[3] = m::port;
  else
    t.opt[3] = t.opt[2] & (cur | m::en_sqd_async_notify);
  return t;
}

// XRC's columns of the table (the XRC annex; Linux's XRC_INI and XRC_TGT columns): RC's,
// but an XRC_SEND QP has no responder (no max_dest_rd_atomic or min_rnr_timer) and an
// XRC_RECV QP no requester (RTS needs only sq_psn and timeout). Only RC's column (0) is
// changed; the caller reads that one for XRC QPs.
void xrc_transition(QpType type, QpState from, QpState to, Transition* t) {
  namespace m = qp_attr_mask;
  if (type == QpType::xrc_send && from == QpState::init && to == QpState::rtr) {
    t->req[0] &= ~(m::max_dest_rd_atomic | m::min_rnr_timer);
  } else if (type == QpType::xrc_send && from == QpState::rtr && to == QpState::rts) {
    t->opt[0] &= ~m::min_rnr_timer;
  } else if (type == QpType::xrc_recv && from == QpState::rtr && to == QpState::rts) {
    t->req[0] &= ~(m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic);
  }
}

// Value checks of the attributes present in `mask` (qp_chk_attr).
int check_attr(Device& dev, const Qp& qp, const QpAttr& a, uint32_t mask) {
  namespace m = qp_attr_mask;
  if ((mask & m::port) && a.port_num != 1) return EINVAL;
  if ((mask & m::pkey_index) && a.pkey_index != 0) return EINVAL;
  if ((mask & m::access_flags) &&
      (a.qp_access_flags & ~access::qp_supported))
    return EINVAL;
  if (mask & m::path_mtu) {
    uint32_t v = uint32_t(a.path_mtu);
    if (v < 1 || v > 5) return EINVAL;
  }
  if ((mask & m::timeout) && a.timeout > 31) return EINVAL;
  if ((mask & m::retry_cnt) && a.retry_cnt > 7) return EINVAL;
  if ((mask & m::rnr_retry) && a.rnr_retry > 7) return EINVAL;
  if ((mask & m::min_rnr_timer) && a.min_rnr_timer > 31) return EINVAL;
  if ((mask & m::max_qp_rd_atomic) && a.max_rd_atomic > kMaxRdAtomic) return EINVAL;
  if ((mask & m::max_dest_rd_atomic) && a.max_dest_rd_atomic > kMaxRdAtomic) return EINVAL;
  if ((mask & m::dest_qpn) && a.dest_qp_num > wire::kQpnMask) return EINVAL;
  if ((mask & m::rq_psn) && a.rq_psn > wire::kPsnMask) return EINVAL;
  if ((mask & m::sq_psn) && a.sq_psn > wire::kPsnMask) return EINVAL;
  if (mask & m::av) {
    uint32_t ip;
    if (!ipv4_from_gid(a.ah_attr.dgid, &ip) || a.ah_attr.sgid_index != 0) return EINVAL;
    if (a.ah_attr.port_num != 0 && a.ah_attr.port_num != 1) return EINVAL;
  }
  if (mask & m::cap) return EOPNOTSUPP;  // resizing queues of a live QP is not supported
  (void)dev;
  (void)qp;
  return 0;
}

void reset_qp(Qp& qp) {
  // Called with qp.lock held and the QP already out of every engine's hands for new work.
  qp.req = Requester{};
  qp.resp = Responder{};
  for (uint32_t i = 0; i < qp.rd_res_size; i++) qp.rd_res[i] = RespResource{};
  while (qp.sq.peek(qp.sq.retired())) qp.sq.retire_one();
  while (qp.rq.peek(qp.rq.retired())) qp.rq.retire_one();
  qp.rq_consumed = qp.rq.retired();
  qp.req.unacked = qp.req.next_wqe = qp.req.sent_end = qp.sq.retired();
  qp.addr_resolved = false;
  qp.ack_timeout_tsc = 0;
}

}  // namespace

int modify_qp(mid::Qp* q, const QpAttr* a, uint32_t mask) {
  namespace m = qp_attr_mask;
  Qp& qp = *to_qp(q);
  Device& dev = *qp.hca;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  const QpState cur = qp.state.load(std::memory_order_acquire);
  if ((mask & m::cur_state) && a->cur_qp_state != cur) return EINVAL;
  const QpState to = (mask & m::state) ? a->qp_state : cur;
  if (uint32_t(to) > uint32_t(QpState::err)) return EINVAL;
  Transition t = transition(cur, to);
  if (!t.valid) return EINVAL;
  xrc_transition(qp.qp_type, cur, to, &t);
  const int ti = type_index(qp.qp_type);
  const uint32_t attrs = mask & ~m::state;
  if ((attrs & t.req[ti]) != t.req[ti]) return EINVAL;               // missing required
  if (attrs & ~(t.req[ti] | t.opt[ti] | m::cur_state)) return EINVAL;  // not allowed here
  if (int rc = check_attr(dev, qp, *a, attrs)) return rc;
  wire::FrameAddr addr{};
  if ((attrs & m::av) &&
      !make_frame_addr(dev, a->ah_attr, qp.qp_num, (attrs & m::dest_qpn) ? a->dest_qp_num
                                                                         : qp.attr.dest_qp_num,
                       &addr))
    return EINVAL;
  // The port's MTU as cached at device creation, not query_port (see QpLock).
  const Mtu port_mtu = active_mtu(dev.port_info().mtu);

  // Responder resources for the new max_dest_rd_atomic, allocated here (process context)
  // and swapped in under the QP lock; the old ring is freed after it.
  std::unique_ptr<RespResource[]> ring;
  uint32_t ring_size = 0;
  if ((attrs & m::max_dest_rd_atomic) &&
      (qp.qp_type == QpType::rc || qp.qp_type == QpType::xrc_recv)) {
    ring_size = a->max_dest_rd_atomic ? a->max_dest_rd_atomic : 1;
    if (ring_size != qp.rd_res_size) {
      ring.reset(new (std::nothrow) RespResource[ring_size]());
      if (!ring) return ENOMEM;
    }
  }

  // ---- apply (qp_from_attr) ----
  QpLock held(qp);
  QpAttr& s = qp.attr;
  if (attrs & m::port) s.port_num = a->port_num;
  if (attrs & m::pkey_index) s.pkey_index = a->pkey_index;
  if (attrs & m::access_flags) s.qp_access_flags = a->qp_access_flags;
  if (attrs & m::qkey) s.qkey = a->qkey;
  if (attrs & m::av) {
    s.ah_attr = a->ah_attr;
    qp.addr = addr;
    qp.addr_resolved = false;
  }
  if (attrs & m::path_mtu) {
    s.path_mtu = a->path_mtu;
    qp.mtu = mtu_bytes(uint32_t(a->path_mtu) < uint32_t(port_mtu) ? a->path_mtu : port_mtu);
  }
  if (attrs & m::dest_qpn) s.dest_qp_num = a->dest_qp_num;
  if (attrs & m::rq_psn) {
    s.rq_psn = a->rq_psn;
    qp.resp.epsn = a->rq_psn;
  }
  if (attrs & m::max_dest_rd_atomic) s.max_dest_rd_atomic = a->max_dest_rd_atomic;
  if (ring) {
    qp.rd_res.swap(ring);
    qp.rd_res_size = ring_size;
  }
  if (attrs & m::min_rnr_timer) s.min_rnr_timer = a->min_rnr_timer;
  if (attrs & m::timeout) {
    s.timeout = a->timeout;
    qp.ack_timeout_tsc = ack_timeout_tsc(a->timeout, rte_get_tsc_hz());
  }
  if (attrs & m::retry_cnt) s.retry_cnt = a->retry_cnt;
  if (attrs & m::rnr_retry) s.rnr_retry = a->rnr_retry;
  if (attrs & m::max_qp_rd_atomic) s.max_rd_atomic = a->max_rd_atomic;
  if (attrs & m::sq_psn) {
    s.sq_psn = a->sq_psn;
    Requester& r = qp.req;
    r.psn = r.last_ack_psn = r.max_psn = a->sq_psn;
    r.seq_nak_psn = wire::psn_add(a->sq_psn, -1u);
  }
  if (to == QpState::rts && cur == QpState::rtr) {
    qp.req.retry_left = s.retry_cnt;
    qp.req.rnr_left = s.rnr_retry;
  }
  if (to == QpState::sqd && cur != QpState::sqd) qp.req.sq_drained_sent = false;
  if (to == QpState::reset && cur != QpState::reset) {
    reset_qp(qp);
    s = QpAttr{};
  }
  s.qp_state = to;
  qp.state.store(to, std::memory_order_release);
  held.unlock();
  // Entering ERR flushes (owner engine); RTS may have WQEs waiting.
  if (to == QpState::err || to == QpState::rts || to == QpState::sqd) qp.engine->kick(&qp);
  return 0;
}

}  // namespace dverbs::pmd::hca
