// Helpers shared by the drop-in's e2e programs (built against the system's
// <infiniband/verbs.h>): open dverbs0, take an RC QP from INIT through RTR to RTS towards
// a QP of the same process over the loopback port, wait for one completion or one
// asynchronous event.
#pragma once

#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <poll.h>

#include <cstdint>
#include <cstring>

namespace verbs_e2e {

// A context on the loopback device "dverbs0", or nullptr.
inline ibv_context* open_dverbs() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return nullptr;
  ibv_context* ctx = nullptr;
  for (int i = 0; i < n; ++i)
    if (std::strcmp(ibv_get_device_name(list[i]), "dverbs0") == 0) ctx = ibv_open_device(list[i]);
  ibv_free_device_list(list);
  return ctx;
}

// INIT -> RTR towards QP `dqpn` at `gid` (PSN 100, MTU 1024, one responder resource).
inline void rc_to_rtr(ibv_qp* qp, const ibv_gid& gid, uint32_t dqpn) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_RTR;
  at.path_mtu = IBV_MTU_1024;
  at.dest_qp_num = dqpn;
  at.rq_psn = 100;
  at.max_dest_rd_atomic = 1;
  at.min_rnr_timer = 12;
  at.ah_attr.is_global = 1;
  at.ah_attr.grh.dgid = gid;
  at.ah_attr.grh.hop_limit = 1;
  at.ah_attr.port_num = 1;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                              IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER),
            0);
}

// RTR -> RTS (PSN 100, retries 7, one outstanding READ/atomic).
inline void rc_to_rts(ibv_qp* qp) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_RTS;
  at.sq_psn = 100;
  at.timeout = 14;
  at.retry_cnt = 7;
  at.rnr_retry = 7;
  at.max_rd_atomic = 1;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                              IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC),
            0);
}

// Polls until one completion arrives (returns 1) or a bounded number of tries (returns 0).
inline int poll_one(ibv_cq* cq, ibv_wc* wc) {
  for (long i = 0; i < 200000000L; ++i) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n) return n;
  }
  return 0;
}

// Reads asynchronous events until one of `type` (true, *ev to be acknowledged) or none
// comes within 20 s or 64 events (false). Others are acknowledged and skipped.
inline bool next_async(ibv_context* ctx, ibv_event_type type, ibv_async_event* ev) {
  for (int i = 0; i < 64; ++i) {
    pollfd pfd{ctx->async_fd, POLLIN, 0};
    if (poll(&pfd, 1, 20000) != 1 || ibv_get_async_event(ctx, ev) != 0) return false;
    if (ev->event_type == type) return true;
    ibv_ack_async_event(ev);
  }
  return false;
}

}  // namespace verbs_e2e
