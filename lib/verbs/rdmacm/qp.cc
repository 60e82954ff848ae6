// QPs and SRQs on an identifier: rdma_create_qp(_ex) (CQs and completion channels made
// when the application gives none, the QP moved to INIT — UD all the way to RTS),
// rdma_destroy_qp, rdma_create_srq(_ex), rdma_destroy_srq, and the QP attributes of the
// connection (rdma_init_qp_attr) with the transitions librdmacm makes from them.
//
// rdma-core asks the kernel for the attributes (UCMA_CMD_INIT_QP_ATTR, which calls
// ib_cm_init_qp_attr); here they come from dvcm_query (INIT: port, P_Key index 0) and
// dvcm_get_qp_params (RTR, RTS: the negotiated path, QPNs, PSNs, depths and timers), with the
// same masks the IB CM uses.
#include <cerrno>
#include <cstring>
#include <mutex>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

int init_attrs(IdPriv* p, const struct dvcm_qp_params* q, ibv_qp_attr* a, int* mask) {
  a->pkey_index = 0;
  a->port_num = p->id.port_num;
  *mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
  if (p->id.qp_type == IBV_QPT_UD) {
    // The kernel's cma_set_qkey gives RDMA_UDP_QKEY for PS_UDP and PS_IB; PS_IPOIB's
    // broadcast group Q_Key does not exist on RoCE, so it gets the same.
    a->qkey = RDMA_UDP_QKEY;
    *mask |= IBV_QP_QKEY;
    return 0;
  }
  // Before a connection: remote READ and WRITE. Once the CM has negotiated: the IB CM's
  // rule, READ and atomics only with responder resources.
  a->qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  if (p->id.qp_type != IBV_QPT_UC) {
    if (!q)
      a->qp_access_flags |= IBV_ACCESS_REMOTE_READ;
    else if (q->max_dest_rd_atomic)
      a->qp_access_flags |= IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
  }
  *mask |= IBV_QP_ACCESS_FLAGS;
  return 0;
}

void fill_ah(const dvcm_path& path, ibv_ah_attr* ah) {
  std::memset(ah, 0, sizeof *ah);
  ah->is_global = 1;
  std::memcpy(ah->grh.dgid.raw, path.dgid, 16);
  ah->grh.sgid_index = path.sgid_index;
  ah->grh.hop_limit = path.hop_limit ? path.hop_limit : 64;
  ah->grh.traffic_class = path.traffic_class;
  ah->grh.flow_label = path.flow_label;
  ah->port_num = path.port_num;
}

uint8_t clamp(uint8_t v, uint8_t max) {
  return max && v > max ? max : v;
}

bool reliable(IdPriv* p) {
  return p->id.qp_type == IBV_QPT_RC || p->id.qp_type == IBV_QPT_XRC_SEND ||
         p->id.qp_type == IBV_QPT_XRC_RECV;
}

int modify(ibv_qp* qp, ibv_qp_attr* a, int mask) {
  const int rc = ibv_modify_qp(qp, a, mask);
  return rc < 0 ? (errno ? errno : EINVAL) : rc;
}

void destroy_cqs(rdma_cm_id* id) {
  if (id->qp_type == IBV_QPT_XRC_RECV && id->srq) return;
  if (id->recv_cq) {
    ibv_destroy_cq(id->recv_cq);
    if (id->send_cq && id->send_cq != id->recv_cq) ibv_destroy_cq(id->send_cq);
    id->send_cq = nullptr;
    id->recv_cq = nullptr;
  } else if (id->send_cq) {
    ibv_destroy_cq(id->send_cq);
    id->send_cq = nullptr;
  }
  if (id->recv_cq_channel) {
    ibv_destroy_comp_channel(id->recv_cq_channel);
    if (id->send_cq_channel && id->send_cq_channel != id->recv_cq_channel)
      ibv_destroy_comp_channel(id->send_cq_channel);
    id->send_cq_channel = nullptr;
    id->recv_cq_channel = nullptr;
  } else if (id->send_cq_channel) {
    ibv_destroy_comp_channel(id->send_cq_channel);
    id->send_cq_channel = nullptr;
  }
}

// ucma_create_cqs: a CQ with its own completion channel for each side of size > 0.
int create_cqs(rdma_cm_id* id, uint32_t send_size, uint32_t recv_size) {
  if (recv_size) {
    if (!(id->recv_cq_channel = ibv_create_comp_channel(id->verbs))) goto err;
    if (!(id->recv_cq = ibv_create_cq(id->verbs, int(recv_size), id, id->recv_cq_channel, 0)))
      goto err;
  }
  if (send_size) {
    if (!(id->send_cq_channel = ibv_create_comp_channel(id->verbs))) goto err;
    if (!(id->send_cq = ibv_create_cq(id->verbs, int(send_size), id, id->send_cq_channel, 0)))
      goto err;
  }
  return 0;
err:
  const int rc = errno ? errno : ENOMEM;
  destroy_cqs(id);
  return rc;
}

// A new QP to INIT (RC, UC) or through to RTS (UD, which needs no peer), as
// ucma_init_conn_qp / ucma_init_ud_qp do.
int init_qp(IdPriv* p, ibv_qp* qp) {
  ibv_qp_attr a{};
  int mask;
  a.qp_state = IBV_QPS_INIT;
  if (int rc = init_qp_attr(p, &a, &mask)) return rc;
  if (int rc = modify(qp, &a, mask)) return rc;
  if (p->id.qp_type != IBV_QPT_UD) return 0;
  std::memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTR;
  if (int rc = modify(qp, &a, IBV_QP_STATE)) return rc;
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = 0;
  return modify(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN);
}

}  // namespace

int init_qp_attr(IdPriv* p, ibv_qp_attr* a, int* mask) noexcept {
  if (!p->dev) return EINVAL;  // no device: nothing to say about a QP
  const ibv_qp_state want = a->qp_state;
  // dvcm_get_qp_params answers as soon as there is a port; it describes a connection only
  // once the REQ (passive) or REP (active) is in.
  struct dvcm_qp_params q {};
  const bool have = p->negotiated && dvcm_get_qp_params(p->dv, &q) == 0;
  std::memset(a, 0, sizeof *a);
  a->qp_state = want;
  // UD has no connection: its attributes are INIT's whatever the state asked (the
  // kernel's cma_ib_init_qp_attr).
  if (want == IBV_QPS_INIT || p->id.qp_type == IBV_QPT_UD)
    return init_attrs(p, have ? &q : nullptr, a, mask);
  if (!have) return EINVAL;  // RTR/RTS before the CM exchanged REQ/REP
  switch (want) {
    case IBV_QPS_RTR:
      fill_ah(q.path, &a->ah_attr);
      a->path_mtu = ibv_mtu(q.path_mtu   ? q.path_mtu
                            : q.path.mtu ? q.path.mtu
                                         : uint8_t(IBV_MTU_1024));
      a->dest_qp_num = q.dest_qp_num;
      // We receive from the Starting PSN we advertise (REQ or REP; rdma_accept moves the QP
      // before the REP is built, so it is ours, not dvcm's, that is known here).
      a->rq_psn = p->psn & 0xffffff;
      *mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
      // The responder attributes: RC and the XRC target (the kernel's cm_init_qp_rtr_attr).
      if (reliable(p) && p->id.qp_type != IBV_QPT_XRC_SEND) {
        a->max_dest_rd_atomic = clamp(q.max_dest_rd_atomic, p->dev->max_responder_resources);
        a->min_rnr_timer = q.min_rnr_timer;
        *mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
      }
      return 0;
    case IBV_QPS_RTS:
      a->sq_psn = q.sq_psn & 0xffffff;  // what the peer advertised in its REQ or REP
      *mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
      if (reliable(p)) {
        a->timeout = q.timeout;
        *mask |= IBV_QP_TIMEOUT;
      }
      // The requester attributes: RC and the XRC initiator (cm_init_qp_rts_attr).
      if (reliable(p) && p->id.qp_type != IBV_QPT_XRC_RECV) {
        a->retry_cnt = q.retry_cnt;
        a->rnr_retry = q.rnr_retry;
        a->max_rd_atomic = clamp(q.max_rd_atomic, p->dev->max_initiator_depth);
        *mask |= IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
      }
      return 0;
    default:
      return EINVAL;
  }
}

int modify_qp_rtr(IdPriv* p, uint8_t responder_resources) noexcept {
  ibv_qp* qp = p->id.qp;
  if (!qp) return 0;
  ibv_qp_attr a{};
  int mask;
  // INIT again first: the access flags follow the negotiated responder resources.
  a.qp_state = IBV_QPS_INIT;
  if (int rc = init_qp_attr(p, &a, &mask)) return rc;
  if (responder_resources != RDMA_MAX_RESP_RES && reliable(p))
    a.qp_access_flags =
        IBV_ACCESS_REMOTE_WRITE |
        (responder_resources ? IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC : 0);
  if (int rc = modify(qp, &a, mask)) return rc;
  a.qp_state = IBV_QPS_RTR;
  if (int rc = init_qp_attr(p, &a, &mask)) return rc;
  if (responder_resources != RDMA_MAX_RESP_RES) a.max_dest_rd_atomic = responder_resources;
  return modify(qp, &a, mask);
}

int modify_qp_rts(IdPriv* p, uint8_t initiator_depth) noexcept {
  ibv_qp* qp = p->id.qp;
  if (!qp) return 0;
  ibv_qp_attr a{};
  int mask;
  a.qp_state = IBV_QPS_RTS;
  if (int rc = init_qp_attr(p, &a, &mask)) return rc;
  if (initiator_depth != RDMA_MAX_INIT_DEPTH) a.max_rd_atomic = initiator_depth;
  return modify(qp, &a, mask);
}

int modify_qp_err(IdPriv* p) noexcept {
  if (!p->id.qp) return 0;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_ERR;
  return modify(p->id.qp, &a, IBV_QP_STATE);
}

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// EINVAL: NULL arguments, no device yet (bind or resolve first), or a state with no
// attributes (RTR/RTS before the connection request or response).
int rdma_init_qp_attr(rdma_cm_id* id, ibv_qp_attr* qp_attr, int* qp_attr_mask) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!qp_attr || !qp_attr_mask) return fail(EINVAL);
  if (int rc = init_qp_attr(p, qp_attr, qp_attr_mask)) return fail(rc);
  return 0;
}

// EINVAL: NULL arguments, a QP already, no device yet, a PD of another device, CQs that
// contradict the identifier's; the verbs' errno otherwise.
int rdma_create_qp_ex(rdma_cm_id* id, ibv_qp_init_attr_ex* attr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!attr || p->id.qp || !p->dev) return fail(EINVAL);
  if (!(attr->comp_mask & IBV_QP_INIT_ATTR_PD) || !attr->pd) {
    attr->comp_mask |= IBV_QP_INIT_ATTR_PD;
    attr->pd = p->id.pd;
  } else if (attr->pd->context != p->id.verbs) {
    return fail(EINVAL);
  }
  if ((p->id.recv_cq && attr->recv_cq && p->id.recv_cq != attr->recv_cq) ||
      (p->id.send_cq && attr->send_cq && p->id.send_cq != attr->send_cq))
    return fail(EINVAL);
  if (p->id.qp_type == IBV_QPT_XRC_RECV &&
      (!(attr->comp_mask & IBV_QP_INIT_ATTR_XRCD) || !attr->xrcd)) {
    if (!(attr->xrcd = device_xrcd(p->dev))) return fail(errno ? errno : EOPNOTSUPP);
    attr->comp_mask |= IBV_QP_INIT_ATTR_XRCD;
  }
  if (int rc = create_cqs(&p->id, attr->send_cq || p->id.send_cq ? 0 : attr->cap.max_send_wr,
                          attr->recv_cq || p->id.recv_cq ? 0 : attr->cap.max_recv_wr))
    return fail(rc);
  if (!attr->send_cq) attr->send_cq = p->id.send_cq;
  if (!attr->recv_cq) attr->recv_cq = p->id.recv_cq;
  if (p->id.srq && !attr->srq) attr->srq = p->id.srq;
  ibv_qp* qp = ibv_create_qp_ex(p->id.verbs, attr);
  int rc = qp ? 0 : (errno ? errno : ENOMEM);
  if (qp && (rc = init_qp(p, qp))) ibv_destroy_qp(qp);
  if (rc) {
    destroy_cqs(&p->id);
    return fail(rc);
  }
  p->id.pd = qp->pd;
  p->id.qp = qp;
  p->qp_connected = false;
  return 0;
}

// pd NULL: the identifier's (the device's default PD unless rdma_create_ep was given one).
int rdma_create_qp(rdma_cm_id* id, ibv_pd* pd, ibv_qp_init_attr* qp_init_attr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!qp_init_attr) return fail(EINVAL);
  ibv_qp_init_attr_ex ex{};
  std::memcpy(&ex, qp_init_attr, sizeof *qp_init_attr);
  ex.comp_mask = IBV_QP_INIT_ATTR_PD;
  ex.pd = pd ? pd : p->id.pd;
  const int rc = rdma_create_qp_ex(id, &ex);
  std::memcpy(qp_init_attr, &ex, sizeof *qp_init_attr);
  return rc;
}

// Destroys the QP and the CQs rdma_create_qp made (not the application's).
void rdma_destroy_qp(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  if (!p) return;
  if (p->id.qp) ibv_destroy_qp(p->id.qp);
  p->id.qp = nullptr;
  p->qp_connected = false;
  {
    std::lock_guard<std::mutex> l(p->mu);
    for (Multicast* m = p->mc_list; m; m = m->next) m->attached = false;
  }
  destroy_cqs(&p->id);
}

// EINVAL: NULL arguments, no device yet, comp_mask without IBV_SRQ_INIT_ATTR_TYPE.
int rdma_create_srq_ex(rdma_cm_id* id, ibv_srq_init_attr_ex* attr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!attr || !p->dev) return fail(EINVAL);
  if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_TYPE)) return fail(EINVAL);
  if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_PD) || !attr->pd) {
    attr->pd = p->id.pd;
    attr->comp_mask |= IBV_SRQ_INIT_ATTR_PD;
  }
  if (attr->srq_type == IBV_SRQT_XRC) {
    if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_XRCD) || !attr->xrcd) {
      if (!(attr->xrcd = device_xrcd(p->dev))) return fail(errno ? errno : EOPNOTSUPP);
    }
    if (!(attr->comp_mask & IBV_SRQ_INIT_ATTR_CQ) || !attr->cq) {
      if (int rc = create_cqs(&p->id, 0, attr->attr.max_wr)) return fail(rc);
      attr->cq = p->id.recv_cq;
    }
    attr->comp_mask |= IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ;
  }
  ibv_srq* srq = ibv_create_srq_ex(p->id.verbs, attr);
  if (!srq) {
    const int rc = errno ? errno : ENOMEM;
    destroy_cqs(&p->id);
    return fail(rc);
  }
  if (!p->id.pd) p->id.pd = attr->pd;
  p->id.srq = srq;
  return 0;
}

int rdma_create_srq(rdma_cm_id* id, ibv_pd* pd, ibv_srq_init_attr* attr) {
  IdPriv* p = lookup_id(id);
  if (!p) return -1;
  if (!attr) return fail(EINVAL);
  ibv_srq_init_attr_ex ex{};
  std::memcpy(&ex, attr, sizeof *attr);
  ex.comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD;
  ex.srq_type = p->id.qp_type == IBV_QPT_XRC_RECV ? IBV_SRQT_XRC : IBV_SRQT_BASIC;
  ex.pd = pd;
  const int rc = rdma_create_srq_ex(id, &ex);
  std::memcpy(attr, &ex, sizeof *attr);
  return rc;
}

// Destroys the SRQ and, as rdma-core does, the CQs rdma_create_qp/srq made.
void rdma_destroy_srq(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  if (!p) return;
  if (p->id.srq) ibv_destroy_srq(p->id.srq);
  p->id.srq = nullptr;
  destroy_cqs(&p->id);
}

}  // extern "C"
