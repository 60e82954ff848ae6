// Helpers of the drop-in programs that connect two RC QPs of one context to each other over
// the loopback port (verbs_iba15_test, verbs_timestamp_test): built against the system's
// <infiniband/verbs.h>, run through tests/e2e/verbs_modes.sh.
#pragma once

#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <cstring>

namespace verbs_loopback {

// The dverbs device, opened; nullptr if there is none.
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

// RESET → INIT (with `access`) → RTR → RTS towards `dqpn` at `gid` (port 1, MTU 1024, PSN 7,
// `rd_atomic` READ/atomic credits each way). Fails the test on an error.
inline void connect_rc(ibv_qp* qp, uint32_t dqpn, const ibv_gid& gid, unsigned access,
                       uint8_t rd_atomic) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  at.qp_access_flags = access;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
            0);
  at = {};
  at.qp_state = IBV_QPS_RTR;
  at.path_mtu = IBV_MTU_1024;
  at.dest_qp_num = dqpn;
  at.rq_psn = 7;
  at.max_dest_rd_atomic = rd_atomic;
  at.min_rnr_timer = 12;
  at.ah_attr.is_global = 1;
  at.ah_attr.grh.dgid = gid;
  at.ah_attr.grh.hop_limit = 1;
  at.ah_attr.port_num = 1;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                              IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER),
            0);
  at.qp_state = IBV_QPS_RTS;
  at.sq_psn = 7;
  at.timeout = 14;
  at.retry_cnt = 7;
  at.rnr_retry = 7;
  at.max_rd_atomic = rd_atomic;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                              IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC),
            0);
}

}  // namespace verbs_loopback
