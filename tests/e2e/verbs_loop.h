// Helpers of the drop-in's e2e programs (the verbs_*_test programs verbs_modes.sh runs,
// and ibverbs_api_test): open dverbs0, RC QPs of one context connected to each other
// through the loopback port, waits that end (a hang fails the test instead of stopping
// the suite), asynchronous events, CAP_IPC_LOCK on and off.
//
// Built against the system's <infiniband/verbs.h>; run through dverbs-run, embedded or as
// a dverbsd client.
#pragma once

#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <linux/capability.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

namespace verbs_loop {

inline ibv_context* open_dverbs() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return nullptr;
  ibv_context* ctx = nullptr;
  for (int i = 0; i < n && !ctx; ++i)
    if (std::strcmp(ibv_get_device_name(list[i]), "dverbs0") == 0) ctx = ibv_open_device(list[i]);
  ibv_free_device_list(list);
  return ctx;
}

// INIT -> RTR towards QP `dqpn` at `gid` (the loopback port's own GID; PSN 100, MTU 1024,
// `rd_atomic` responder resources).
inline void rc_to_rtr(ibv_qp* qp, const ibv_gid& gid, uint32_t dqpn, uint8_t rd_atomic = 1) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_RTR;
  at.path_mtu = IBV_MTU_1024;
  at.dest_qp_num = dqpn;
  at.rq_psn = 100;
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
}

// RTR -> RTS (PSN 100, retries 7, `rd_atomic` outstanding READs/atomics).
inline void rc_to_rts(ibv_qp* qp, uint8_t rd_atomic = 1) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_RTS;
  at.sq_psn = 100;
  at.timeout = 14;
  at.retry_cnt = 7;
  at.rnr_retry = 7;
  at.max_rd_atomic = rd_atomic;
  ASSERT_EQ(ibv_modify_qp(qp, &at,
                          IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                              IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC),
            0);
}

// An RC QP in RESET taken to INIT (QP access flags `access`), RTR toward `dqpn` at `gid`
// and RTS, with `rd_atomic` READs/atomics each way.
inline void connect_rc(ibv_qp* qp, uint32_t dqpn, const ibv_gid& gid, int access,
                       uint8_t rd_atomic) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  at.qp_access_flags = unsigned(access);
  ASSERT_EQ(
      ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
      0);
  ASSERT_NO_FATAL_FAILURE(rc_to_rtr(qp, gid, dqpn, rd_atomic));
  ASSERT_NO_FATAL_FAILURE(rc_to_rts(qp, rd_atomic));
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

// Sets or clears CAP_IPC_LOCK in this thread's effective set (setting needs it permitted);
// false when that is not possible. Like uverbs, dverbs holds only processes without it
// to RLIMIT_MEMLOCK.
inline bool set_ipc_lock(bool on) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3]{};
  if (syscall(SYS_capget, &hdr, d) != 0) return false;
  const uint32_t bit = 1u << (CAP_IPC_LOCK % 32);
  auto& w = d[CAP_IPC_LOCK / 32];
  if (on && !(w.permitted & bit)) return false;
  w.effective = on ? (w.effective | bit) : (w.effective & ~bit);
  return syscall(SYS_capset, &hdr, d) == 0;
}

// One completion, or a zeroed wc with status IBV_WC_GENERAL_ERR and wr_id ~0 if none
// arrives within `seconds` (the test then fails on the status it expected).
inline ibv_wc wait_wc(ibv_cq* cq, int seconds = 20) {
  ibv_wc wc{};
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    int n = ibv_poll_cq(cq, 1, &wc);
    if (n == 1) return wc;
    if (n < 0) break;
  }
  ADD_FAILURE() << "no completion";
  wc = ibv_wc{};
  wc.status = IBV_WC_GENERAL_ERR;
  wc.wr_id = ~0ull;
  return wc;
}

// No completion arrives on `cq` while the transport runs for a while (polls, which also
// drive inline progress).
inline bool stays_empty(ibv_cq* cq, int polls = 20000) {
  ibv_wc wc;
  for (int i = 0; i < polls; ++i)
    if (ibv_poll_cq(cq, 1, &wc) != 0) return false;
  return true;
}

// A context with a PD, and RC QPs `a` and `b` (own CQs) connected to each other. `b` may
// be an ibv_qp_ex with the given send_ops_flags (0: ibv_create_qp).
struct RcPair {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* cqa = nullptr;
  ibv_cq* cqb = nullptr;
  ibv_qp* a = nullptr;
  ibv_qp* b = nullptr;
  ibv_gid gid{};

  RcPair() = default;
  RcPair(const RcPair&) = delete;
  RcPair& operator=(const RcPair&) = delete;
  ~RcPair() {
    if (a) ibv_destroy_qp(a);
    if (b) ibv_destroy_qp(b);
    if (cqa) ibv_destroy_cq(cqa);
    if (cqb) ibv_destroy_cq(cqb);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_qp* make_qp(ibv_cq* cq, uint64_t send_ops) {
    ibv_qp_init_attr_ex init{};
    init.send_cq = init.recv_cq = cq;
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = init.cap.max_recv_wr = 64;
    init.cap.max_send_sge = init.cap.max_recv_sge = 2;
    init.cap.max_inline_data = 64;
    init.pd = pd;
    init.comp_mask = IBV_QP_INIT_ATTR_PD;
    if (send_ops) {
      init.comp_mask |= IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
      init.send_ops_flags = send_ops;
    }
    return ibv_create_qp_ex(ctx, &init);
  }

  // RESET → INIT → RTR → RTS toward `dqpn`, with every remote access allowed.
  void connect(ibv_qp* qp, uint32_t dqpn) {
    connect_rc(qp, dqpn, gid,
               IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                   IBV_ACCESS_REMOTE_ATOMIC,
               4);
  }

  void init(uint64_t b_send_ops = 0) {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr) << "the loaded libibverbs is not dverbs";
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    cqa = ibv_create_cq(ctx, 256, nullptr, nullptr, 0);
    cqb = ibv_create_cq(ctx, 256, nullptr, nullptr, 0);
    ASSERT_TRUE(cqa && cqb);
    a = make_qp(cqa, 0);
    b = make_qp(cqb, b_send_ops);
    ASSERT_TRUE(a && b);
    connect(a, b->qp_num);
    connect(b, a->qp_num);
  }

  // One receive of [buf, buf + len) (lkey) on `qp`; 0 or the errno of ibv_post_recv.
  static int recv_one(ibv_qp* qp, void* buf, uint32_t len, uint32_t lkey, uint64_t wr_id = 0) {
    ibv_sge s{reinterpret_cast<uint64_t>(buf), len, lkey};
    ibv_recv_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = &s;
    wr.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    return ibv_post_recv(qp, &wr, &bad);
  }
  // One signalled SEND (`op`: IBV_WR_SEND or IBV_WR_SEND_WITH_INV of `inv_rkey`) of
  // [buf, buf + len) on `qp`; 0 or the errno of ibv_post_send.
  static int send_one(ibv_qp* qp, ibv_wr_opcode op, const void* buf, uint32_t len, uint32_t lkey,
                      uint64_t wr_id = 0, uint32_t inv_rkey = 0) {
    ibv_sge s{reinterpret_cast<uint64_t>(buf), len, lkey};
    ibv_send_wr wr{};
    wr.wr_id = wr_id;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.opcode = op;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.invalidate_rkey = inv_rkey;
    ibv_send_wr* bad = nullptr;
    return ibv_post_send(qp, &wr, &bad);
  }

  // One signalled RDMA WRITE or READ from `a` of [local, local + len) (lkey) to or from
  // remote [raddr, raddr + len) under rkey; its completion status.
  ibv_wc_status rdma(ibv_wr_opcode op, void* local, uint32_t len, uint32_t lkey, uint64_t raddr,
                     uint32_t rkey) {
    ibv_sge s{reinterpret_cast<uint64_t>(local), len, lkey};
    ibv_send_wr wr{};
    wr.wr_id = 0xa11;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.opcode = op;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rkey;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(a, &wr, &bad) != 0) {
      ADD_FAILURE() << "post_send";
      return IBV_WC_GENERAL_ERR;
    }
    return wait_wc(cqa).status;
  }
};

inline uint64_t addr_of(const void* p) {
  return reinterpret_cast<uint64_t>(p);
}

}  // namespace verbs_loop
