// IBA 1.5 RDMA ATOMIC WRITE and RDMA FLUSH through the libibverbs.so.1 drop-in, seen by a
// program built against the system's <infiniband/verbs.h>: the device capability bits,
// IBV_ACCESS_FLUSH_* on regions, ibv_wr_atomic_write and ibv_wr_flush (ibv_qp_ex), the
// completions, the responder's access checks and the misuse the post-time checks refuse.
// Two RC QPs of one context, connected over the loopback port.
//
// rdma-core 44's header has ATOMIC WRITE but not FLUSH (rdma-core 45 added it): the FLUSH
// names are spelled here with rdma-core 45's values, and ibv_wr_flush is called as its
// inline function does, through the ibv_qp_ex member that follows wr_atomic_write.
//
// Run: tests/e2e/verbs_modes.sh DVERBS_RUN embedded|daemon verbs_iba15_test (meson does).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::open_dverbs;

// rdma-core 45's names (libibverbs/verbs.h, kernel-headers/rdma/ib_user_verbs.h).
constexpr unsigned kAccessFlushGlobal = 1u << 8;
constexpr unsigned kAccessFlushPersistent = 1u << 9;
constexpr uint64_t kDeviceFlushGlobal = 1ull << 38;
constexpr uint64_t kDeviceFlushPersistent = 1ull << 39;
constexpr uint64_t kDeviceAtomicWrite = 1ull << 40;
constexpr int kWrFlush = 14;
constexpr int kWcFlush = 8;
constexpr uint8_t kFlushGlobal = 1, kFlushPersistent = 2;
constexpr uint8_t kFlushRange = 0, kFlushMr = 1;

// ibv_wr_flush as rdma-core 45 declares it: qp->wr_flush(...), the member after
// wr_atomic_write.
void wr_flush(ibv_qp_ex* qx, uint32_t rkey, uint64_t addr, size_t len, uint8_t type,
              uint8_t level) {
  using Fn = void (*)(ibv_qp_ex*, uint32_t, uint64_t, size_t, uint8_t, uint8_t);
  Fn fn;
  std::memcpy(&fn, reinterpret_cast<const char*>(qx) + sizeof(ibv_qp_ex), sizeof fn);
  fn(qx, rkey, addr, len, type, level);
}

int poll_one(ibv_cq* cq, ibv_wc* wc) {
  for (long i = 0; i < 200000000L; ++i) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n) return n;
  }
  return 0;
}

// Requester `a` and responder `b`; `b` grants `b_access` (its qp_access_flags).
struct Pair {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* cqa = nullptr;
  ibv_cq* cqb = nullptr;
  ibv_qp* a = nullptr;
  ibv_qp* b = nullptr;
  ibv_qp_ex* ax = nullptr;
  ibv_gid gid{};
  std::vector<ibv_mr*> mrs;

  ~Pair() {
    for (ibv_mr* m : mrs) ibv_dereg_mr(m);
    if (a) ibv_destroy_qp(a);
    if (b) ibv_destroy_qp(b);
    if (cqa) ibv_destroy_cq(cqa);
    if (cqb) ibv_destroy_cq(cqb);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_qp* make_qp(ibv_cq* cq) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = cq;
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = init.cap.max_recv_wr = 64;
    init.cap.max_send_sge = init.cap.max_recv_sge = 2;
    init.cap.max_inline_data = 16;
    return ibv_create_qp(pd, &init);
  }

  void connect(ibv_qp* qp, uint32_t dqpn, unsigned access) {
    verbs_loop::connect_rc(qp, dqpn, gid, access, 4);
  }

  void init(unsigned b_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                IBV_ACCESS_REMOTE_READ | kAccessFlushGlobal) {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    cqa = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
    cqb = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
    ASSERT_TRUE(cqa && cqb);
    a = make_qp(cqa);
    b = make_qp(cqb);
    ASSERT_TRUE(a && b);
    connect(a, b->qp_num, IBV_ACCESS_LOCAL_WRITE);
    connect(b, a->qp_num, b_access);
    ax = ibv_qp_to_qp_ex(a);
    ASSERT_NE(ax, nullptr);
  }

  ibv_mr* reg(void* p, size_t n, unsigned access) {
    ibv_mr* m = ibv_reg_mr(pd, p, n, int(access));
    if (m) mrs.push_back(m);
    return m;
  }

  // One signaled ATOMIC WRITE of `value` through ibv_wr_atomic_write; wr_complete's result.
  int atomic_write(uint32_t rkey, uint64_t addr, uint64_t value, uint64_t wr_id = 1) {
    ibv_wr_start(ax);
    ax->wr_id = wr_id;
    ax->wr_flags = IBV_SEND_SIGNALED;
    ibv_wr_atomic_write(ax, rkey, addr, &value);
    return ibv_wr_complete(ax);
  }

  int flush(uint32_t rkey, uint64_t addr, size_t len, uint8_t type, uint8_t level,
            uint64_t wr_id = 2) {
    ibv_wr_start(ax);
    ax->wr_id = wr_id;
    ax->wr_flags = IBV_SEND_SIGNALED;
    wr_flush(ax, rkey, addr, len, type, level);
    return ibv_wr_complete(ax);
  }

  // The next completion of `a`'s send queue (status and opcode checked by the caller).
  ibv_wc next() {
    ibv_wc wc{};
    EXPECT_EQ(poll_one(cqa, &wc), 1);
    return wc;
  }
};

constexpr unsigned kTarget =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | kAccessFlushGlobal;

// ---------------------------------------------------------------- capabilities

TEST(Caps, AtomicWriteAndGlobalFlushNotPersistent) {
  Pair p;
  p.init();
  ibv_device_attr_ex ax{};
  ASSERT_EQ(ibv_query_device_ex(p.ctx, nullptr, &ax), 0);
  EXPECT_TRUE(ax.device_cap_flags_ex & kDeviceAtomicWrite);
  EXPECT_TRUE(ax.device_cap_flags_ex & kDeviceFlushGlobal);
  EXPECT_FALSE(ax.device_cap_flags_ex & kDeviceFlushPersistent);
}

TEST(Caps, RegionFlushAccess) {
  Pair p;
  p.init();
  std::vector<uint8_t> buf(4096);
  EXPECT_NE(p.reg(buf.data(), buf.size(), kTarget), nullptr);
  // No memory here is persistent: refused as rxe refuses non-pmem pages.
  errno = 0;
  EXPECT_EQ(p.reg(buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE | kAccessFlushPersistent),
            nullptr);
  EXPECT_EQ(errno, EINVAL);
}

// ---------------------------------------------------------------- ATOMIC WRITE

TEST(AtomicWrite, LandsExactlyEightBytes) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(64, 0xaa);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), kTarget);
  ASSERT_NE(mr, nullptr);
  const uint64_t v = 0x1122334455667788ull;
  ASSERT_EQ(p.atomic_write(mr->rkey, uint64_t(uintptr_t(dst.data() + 16)), v, 77), 0);
  ibv_wc wc = p.next();
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(wc.opcode, IBV_WC_ATOMIC_WRITE);
  EXPECT_EQ(wc.wr_id, 77u);
  uint64_t got;
  std::memcpy(&got, dst.data() + 16, 8);
  EXPECT_EQ(got, v);
  for (size_t i = 0; i < dst.size(); i++)
    if (i < 16 || i >= 24) {
      ASSERT_EQ(dst[i], 0xaa) << "byte " << i;
    }
}

// ibv_post_send takes IBV_WR_ATOMIC_WRITE with the 8 bytes in one SGE (as rxe's provider).
TEST(AtomicWrite, PostSendWithSge) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(32, 0);
  std::vector<uint64_t> src(512, 0x0102030405060708ull);  // heap pages (daemon mode re-backs them)
  ibv_mr* dmr = p.reg(dst.data(), dst.size(), kTarget);
  ibv_mr* smr = p.reg(src.data(), src.size() * 8, IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(dmr && smr);
  ibv_sge sge{uint64_t(uintptr_t(&src[1])), 8, smr->lkey};
  ibv_send_wr wr{}, *bad = nullptr;
  wr.wr_id = 5;
  wr.opcode = IBV_WR_ATOMIC_WRITE;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.wr.rdma.remote_addr = uint64_t(uintptr_t(dst.data() + 8));
  wr.wr.rdma.rkey = dmr->rkey;
  ASSERT_EQ(ibv_post_send(p.a, &wr, &bad), 0);
  ibv_wc wc = p.next();
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(wc.opcode, IBV_WC_ATOMIC_WRITE);
  uint64_t got;
  std::memcpy(&got, dst.data() + 8, 8);
  EXPECT_EQ(got, src[1]);
}

// Ordered after the WRITE before it: the last value at the word is the atomic write's.
TEST(AtomicWrite, AfterWritesInOrder) {
  Pair p;
  p.init();
  std::vector<uint64_t> dst(512, 0);
  std::vector<uint64_t> src(512, 0x5555555555555555ull);
  ibv_mr* dmr = p.reg(dst.data(), dst.size() * 8, kTarget);
  ibv_mr* smr = p.reg(src.data(), src.size() * 8, IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(dmr && smr);
  ibv_wr_start(p.ax);
  p.ax->wr_id = 1;
  p.ax->wr_flags = 0;
  ibv_wr_rdma_write(p.ax, dmr->rkey, uint64_t(uintptr_t(dst.data())));
  ibv_wr_set_sge(p.ax, smr->lkey, uint64_t(uintptr_t(src.data())), uint32_t(src.size() * 8));
  p.ax->wr_id = 2;
  p.ax->wr_flags = IBV_SEND_SIGNALED;
  const uint64_t v = 0xfeedfacecafebeefull;
  ibv_wr_atomic_write(p.ax, dmr->rkey, uint64_t(uintptr_t(&dst[300])), &v);
  ASSERT_EQ(ibv_wr_complete(p.ax), 0);
  ibv_wc wc = p.next();
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(wc.wr_id, 2u);
  EXPECT_EQ(dst[300], v);
  EXPECT_EQ(dst[299], 0x5555555555555555ull);
  EXPECT_EQ(dst[301], 0x5555555555555555ull);
}

TEST(AtomicWrite, RegionWithoutRemoteWriteIsRemoteAccessError) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(64, 0);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(p.atomic_write(mr->rkey, uint64_t(uintptr_t(dst.data())), 1), 0);
  ibv_wc wc = p.next();
  EXPECT_EQ(wc.status, IBV_WC_REM_ACCESS_ERR) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(dst[0], 0);
}

TEST(AtomicWrite, QpWithoutRemoteWriteIsRemoteAccessError) {
  Pair p;
  p.init(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  std::vector<uint8_t> dst(64, 0);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), kTarget);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(p.atomic_write(mr->rkey, uint64_t(uintptr_t(dst.data())), 1), 0);
  EXPECT_EQ(p.next().status, IBV_WC_REM_ACCESS_ERR);
}

TEST(AtomicWrite, OutOfBoundsIsRemoteAccessError) {
  Pair p;
  p.init();
  std::vector<uint64_t> dst(4, 0);
  ibv_mr* mr = p.reg(dst.data(), 32, kTarget);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(p.atomic_write(mr->rkey, uint64_t(uintptr_t(&dst[4])), 1), 0);
  EXPECT_EQ(p.next().status, IBV_WC_REM_ACCESS_ERR);
}

TEST(AtomicWrite, MisalignedIsRemoteInvalidRequest) {
  Pair p;
  p.init();
  std::vector<uint64_t> dst(4, 0);
  ibv_mr* mr = p.reg(dst.data(), 32, kTarget);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(p.atomic_write(mr->rkey, uint64_t(uintptr_t(dst.data())) + 4, 1), 0);
  EXPECT_EQ(p.next().status, IBV_WC_REM_INV_REQ_ERR);
  EXPECT_EQ(dst[0], 0u);
  EXPECT_EQ(dst[1], 0u);
}

// ---------------------------------------------------------------- FLUSH

// A FLUSH completes after the WRITEs before it were placed: when its completion is polled,
// every byte of the WRITE is in the target.
TEST(Flush, CompletesAfterPriorWrites) {
  for (uint8_t level : {kFlushRange, kFlushMr}) {
    Pair p;
    p.init();
    std::vector<uint8_t> dst(65536, 0), src(65536);
    for (size_t i = 0; i < src.size(); i++) src[i] = uint8_t(i * 7 + 1);
    ibv_mr* dmr = p.reg(dst.data(), dst.size(), kTarget);
    ibv_mr* smr = p.reg(src.data(), src.size(), IBV_ACCESS_LOCAL_WRITE);
    ASSERT_TRUE(dmr && smr);
    ibv_wr_start(p.ax);
    p.ax->wr_id = 1;
    p.ax->wr_flags = 0;  // unsignaled: the FLUSH's completion is the only one
    ibv_wr_rdma_write(p.ax, dmr->rkey, uint64_t(uintptr_t(dst.data())));
    ibv_wr_set_sge(p.ax, smr->lkey, uint64_t(uintptr_t(src.data())), uint32_t(src.size()));
    p.ax->wr_id = 2;
    p.ax->wr_flags = IBV_SEND_SIGNALED;
    wr_flush(p.ax, dmr->rkey, uint64_t(uintptr_t(dst.data())), dst.size(), kFlushGlobal, level);
    ASSERT_EQ(ibv_wr_complete(p.ax), 0);
    ibv_wc wc = p.next();
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
    EXPECT_EQ(int(wc.opcode), kWcFlush);
    EXPECT_EQ(wc.wr_id, 2u);
    EXPECT_EQ(dst, src) << "level " << int(level);
  }
}

// A FLUSH the responder refuses: the requester's completion says IBV_WC_REM_ACCESS_ERR.
void expect_flush_refused(unsigned qp_access, unsigned mr_access, size_t len, uint8_t type,
                          uint8_t level) {
  Pair p;
  p.init(qp_access);
  std::vector<uint8_t> dst(4096);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), mr_access);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(p.flush(mr->rkey, uint64_t(uintptr_t(dst.data())), len, type, level), 0);
  ibv_wc wc = p.next();
  EXPECT_EQ(wc.status, IBV_WC_REM_ACCESS_ERR) << ibv_wc_status_str(wc.status);
}

TEST(Flush, RegionWithoutFlushAccessIsRemoteAccessError) {
  expect_flush_refused(kTarget, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 64, kFlushGlobal,
                       kFlushRange);
}

TEST(Flush, QpWithoutFlushAccessIsRemoteAccessError) {
  expect_flush_refused(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, kTarget, 64, kFlushGlobal,
                       kFlushMr);
}

// A persistent FLUSH finds no region that can be flushed so (none is persistent).
TEST(Flush, PersistentIsRemoteAccessError) {
  expect_flush_refused(kTarget | kAccessFlushPersistent, kTarget, 64, kFlushPersistent,
                       kFlushRange);
}

TEST(Flush, RangeBeyondRegionIsRemoteAccessError) {
  expect_flush_refused(kTarget, kTarget, 8192, kFlushGlobal, kFlushRange);
}

// ---------------------------------------------------------------- misuse

TEST(Misuse, FlushTypeAndLevelChecked) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(4096);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), kTarget);
  ASSERT_NE(mr, nullptr);
  const uint64_t addr = uint64_t(uintptr_t(dst.data()));
  EXPECT_EQ(p.flush(mr->rkey, addr, 64, 0, kFlushRange), EINVAL);   // no type
  EXPECT_EQ(p.flush(mr->rkey, addr, 64, 4, kFlushRange), EINVAL);   // unknown type bit
  EXPECT_EQ(p.flush(mr->rkey, addr, 64, kFlushGlobal, 2), EINVAL);  // unknown level
  EXPECT_EQ(p.flush(mr->rkey, addr, 1ull << 32, kFlushGlobal, kFlushRange), EINVAL);
  // Nothing was posted: the QP still works.
  ASSERT_EQ(p.flush(mr->rkey, addr, 64, kFlushGlobal, kFlushRange), 0);
  EXPECT_EQ(p.next().status, IBV_WC_SUCCESS);
}

TEST(Misuse, AtomicWriteNeedsEightBytes) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(64), src(64);
  ibv_mr* dmr = p.reg(dst.data(), dst.size(), kTarget);
  ibv_mr* smr = p.reg(src.data(), src.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(dmr && smr);
  ibv_send_wr wr{}, *bad = nullptr;
  ibv_sge sge{uint64_t(uintptr_t(src.data())), 4, smr->lkey};
  wr.opcode = IBV_WR_ATOMIC_WRITE;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.wr.rdma.remote_addr = uint64_t(uintptr_t(dst.data()));
  wr.wr.rdma.rkey = dmr->rkey;
  EXPECT_EQ(ibv_post_send(p.a, &wr, &bad), EINVAL);
  EXPECT_EQ(bad, &wr);
  sge.length = 16;
  EXPECT_EQ(ibv_post_send(p.a, &wr, &bad), EINVAL);
  // A NULL value pointer through ibv_wr_atomic_write.
  ibv_wr_start(p.ax);
  ibv_wr_atomic_write(p.ax, dmr->rkey, uint64_t(uintptr_t(dst.data())), nullptr);
  EXPECT_EQ(ibv_wr_complete(p.ax), EINVAL);
}

// ibv_send_wr has no FLUSH fields: a zeroed WR with IBV_WR_FLUSH carries no placement type.
TEST(Misuse, FlushThroughPostSendHasNoType) {
  Pair p;
  p.init();
  std::vector<uint8_t> dst(64);
  ibv_mr* mr = p.reg(dst.data(), dst.size(), kTarget);
  ASSERT_NE(mr, nullptr);
  ibv_send_wr wr{}, *bad = nullptr;
  wr.opcode = ibv_wr_opcode(kWrFlush);
  wr.wr.rdma.remote_addr = uint64_t(uintptr_t(dst.data()));
  wr.wr.rdma.rkey = mr->rkey;
  EXPECT_EQ(ibv_post_send(p.a, &wr, &bad), EINVAL);
}

// RC only, as rxe: a UC QP's ibv_qp_ex does not offer them.
TEST(Misuse, UcQpRefusesBoth) {
  Pair p;
  p.init();
  ibv_qp_init_attr init{};
  init.send_cq = init.recv_cq = p.cqa;
  init.qp_type = IBV_QPT_UC;
  init.cap.max_send_wr = init.cap.max_recv_wr = 4;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  ibv_qp* uc = ibv_create_qp(p.pd, &init);
  ASSERT_NE(uc, nullptr);
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  ASSERT_EQ(
      ibv_modify_qp(uc, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
      0);
  ibv_qp_ex* ux = ibv_qp_to_qp_ex(uc);
  ASSERT_NE(ux, nullptr);
  const uint64_t v = 1;
  ibv_wr_start(ux);
  ibv_wr_atomic_write(ux, 1, 0, &v);
  EXPECT_EQ(ibv_wr_complete(ux), EOPNOTSUPP);  // not among the UC QP's send ops
  ibv_wr_start(ux);
  wr_flush(ux, 1, 0, 64, kFlushGlobal, kFlushRange);
  EXPECT_EQ(ibv_wr_complete(ux), EOPNOTSUPP);
  ASSERT_EQ(ibv_destroy_qp(uc), 0);
}

}  // namespace
