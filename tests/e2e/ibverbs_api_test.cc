// The libibverbs.so.1 drop-in seen by a program built against the system's
// <infiniband/verbs.h> and linked with -libverbs, run through dverbs-run (so it loads the
// drop-in) on the built-in loopback port: the resource model (handles, clean-up, MR
// pinning against RLIMIT_MEMLOCK), argument checks, completion channels, the inline
// dispatch of verbs.h (ops table, verbs_context ops, ibv_qp_ex, ibv_cq_ex) and UD.
//
// Run: dverbs-run --lcores 0 -- ibverbs_api_test   (meson does). Run directly, it fails
// at once unless the loaded libibverbs is dverbs.
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::open_dverbs;
using verbs_loop::next_async;
using verbs_loop::poll_one;

std::string g_self;  // this executable, for the exit-without-clean-up child
using verbs_loop::set_ipc_lock;

// Two QPs of one context connected to each other through the loopback port.
struct Pair {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_comp_channel* ch = nullptr;
  ibv_cq* cqa = nullptr;
  ibv_cq* cqb = nullptr;
  ibv_qp* a = nullptr;
  ibv_qp* b = nullptr;
  ibv_gid gid{};

  ~Pair() {
    if (a) ibv_destroy_qp(a);
    if (b) ibv_destroy_qp(b);
    if (cqa) ibv_destroy_cq(cqa);
    if (cqb) ibv_destroy_cq(cqb);
    if (ch) ibv_destroy_comp_channel(ch);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  ibv_qp* make_qp(ibv_qp_type type, ibv_cq* cq) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = cq;
    init.qp_type = type;
    init.cap.max_send_wr = init.cap.max_recv_wr = 128;
    init.cap.max_send_sge = init.cap.max_recv_sge = 2;
    init.cap.max_inline_data = 64;
    return ibv_create_qp(pd, &init);
  }

  static void to_init(ibv_qp* qp, ibv_qp_type type) {
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_INIT;
    at.port_num = 1;
    int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
    if (type == IBV_QPT_UD) {
      at.qkey = 0x11111111;
      mask |= IBV_QP_QKEY;
    } else {
      at.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
      mask |= IBV_QP_ACCESS_FLAGS;
    }
    ASSERT_EQ(ibv_modify_qp(qp, &at, mask), 0);
  }

  void connect(ibv_qp* qp, uint32_t dqpn) {
    to_init(qp, IBV_QPT_RC);
    verbs_loop::rc_to_rtr(qp, gid, dqpn);
    verbs_loop::rc_to_rts(qp);
  }

  void init_rc(bool channel = false) {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    if (channel) {
      ch = ibv_create_comp_channel(ctx);
      ASSERT_NE(ch, nullptr);
    }
    cqa = ibv_create_cq(ctx, 256, reinterpret_cast<void*>(0xa), ch, 0);
    cqb = ibv_create_cq(ctx, 256, reinterpret_cast<void*>(0xb), ch, 0);
    ASSERT_TRUE(cqa && cqb);
    a = make_qp(IBV_QPT_RC, cqa);
    b = make_qp(IBV_QPT_RC, cqb);
    ASSERT_TRUE(a && b);
    connect(a, b->qp_num);
    connect(b, a->qp_num);
  }
};

uint64_t vm_locked_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmLck:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
}

// The sanitizers' mlock() interceptor ignores the call: VmLck cannot be checked then.
bool vm_locked_ignored() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------- devices and queries
TEST(Device, DverbsIsTheLoadedLibibverbs) {
  int n = -1;
  ibv_device** list = ibv_get_device_list(&n);
  ASSERT_NE(list, nullptr);
  ASSERT_EQ(n, 1);
  EXPECT_STREQ(ibv_get_device_name(list[0]), "dverbs0");
  EXPECT_EQ(list[0]->node_type, IBV_NODE_CA);
  EXPECT_EQ(list[0]->transport_type, IBV_TRANSPORT_IB);
  EXPECT_NE(ibv_get_device_guid(list[0]), 0u);
  EXPECT_EQ(list[1], nullptr);
  ibv_free_device_list(list);
}

TEST(Device, QueriesThroughExportsAndVerbsContextOps) {
  ibv_context* ctx = open_dverbs();
  ASSERT_NE(ctx, nullptr);
  ibv_device_attr da;
  ASSERT_EQ(ibv_query_device(ctx, &da), 0);
  EXPECT_EQ(da.phys_port_cnt, 1);
  EXPECT_GT(da.max_qp_wr, 0);
  ibv_device_attr_ex dx;
  ASSERT_EQ(ibv_query_device_ex(ctx, nullptr, &dx), 0);  // inline -> verbs_context op
  EXPECT_EQ(dx.orig_attr.max_qp, da.max_qp);
  EXPECT_EQ(dx.phys_port_cnt_ex, 1u);
  ibv_query_device_ex_input in{};
  in.comp_mask = 1;
  EXPECT_EQ(ibv_query_device_ex(ctx, &in, &dx), EINVAL);

  ibv_port_attr pa;
  ASSERT_EQ(ibv_query_port(ctx, 1, &pa), 0);  // inline -> verbs_context::query_port
  EXPECT_EQ(pa.state, IBV_PORT_ACTIVE);
  EXPECT_EQ(pa.link_layer, IBV_LINK_LAYER_ETHERNET);
  EXPECT_GE(pa.gid_tbl_len, 1);
  EXPECT_EQ(ibv_query_port(ctx, 2, &pa), EINVAL);

  ibv_gid gid;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
  const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  EXPECT_EQ(std::memcmp(gid.raw, mapped, 12), 0) << "GID 0 is IPv4-mapped";
  EXPECT_EQ(ibv_query_gid(ctx, 1, 9999, &gid), -1);
  EXPECT_EQ(errno, EINVAL);
  ibv_gid_entry e;
  ASSERT_EQ(ibv_query_gid_ex(ctx, 1, 0, &e, 0), 0);
  EXPECT_EQ(e.gid_type, uint32_t(IBV_GID_TYPE_ROCE_V2));
  EXPECT_EQ(e.port_num, 1u);
  EXPECT_EQ(ibv_query_gid_ex(ctx, 1, 0, &e, 1), EOPNOTSUPP);
  ibv_gid_entry table[4];
  EXPECT_EQ(ibv_query_gid_table(ctx, table, 4, 0), 1);
  __be16 pkey;
  ASSERT_EQ(ibv_query_pkey(ctx, 1, 0, &pkey), 0);
  EXPECT_EQ(be16toh(pkey), 0xffff);
  EXPECT_EQ(ibv_get_pkey_index(ctx, 1, htobe16(0xffff)), 0);
  EXPECT_EQ(ctx->num_comp_vectors, 1);
  EXPECT_GE(ctx->async_fd, 0);
  EXPECT_EQ(ibv_close_device(ctx), 0);
}

// ---------------------------------------------------------------- resource model
TEST(Handles, StaleForgedAndForeignObjectsAreEinval) {
  ibv_context* c1 = open_dverbs();
  ibv_context* c2 = open_dverbs();
  ASSERT_TRUE(c1 && c2);
  ibv_pd* pd1 = ibv_alloc_pd(c1);
  ibv_pd* pd1b = ibv_alloc_pd(c1);
  ASSERT_TRUE(pd1 && pd1b);
  EXPECT_NE(pd1->handle, pd1b->handle);
  ibv_cq* cq2 = ibv_create_cq(c2, 16, nullptr, nullptr, 0);
  ibv_cq* cq1 = ibv_create_cq(c1, 16, nullptr, nullptr, 0);
  ASSERT_TRUE(cq1 && cq2);

  // A CQ of another context.
  ibv_qp_init_attr init{};
  init.send_cq = init.recv_cq = cq2;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = init.cap.max_recv_wr = 4;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  errno = 0;
  EXPECT_EQ(ibv_create_qp(pd1, &init), nullptr);
  EXPECT_EQ(errno, EINVAL);

  // Forged objects: never dereferenced, rejected.
  ibv_pd fake_pd{};
  fake_pd.context = c1;
  EXPECT_EQ(ibv_dealloc_pd(&fake_pd), EINVAL);
  EXPECT_EQ(ibv_dealloc_pd(reinterpret_cast<ibv_pd*>(0x10)), EINVAL);
  EXPECT_EQ(ibv_destroy_cq(reinterpret_cast<ibv_cq*>(pd1)), EINVAL) << "a PD is not a CQ";
  errno = 0;
  EXPECT_EQ(ibv_alloc_pd(reinterpret_cast<ibv_context*>(&fake_pd)), nullptr);
  EXPECT_EQ(errno, EINVAL);

  // In use: EBUSY, and the object stays usable.
  init.send_cq = init.recv_cq = cq1;
  ibv_qp* qp = ibv_create_qp(pd1, &init);
  ASSERT_NE(qp, nullptr);
  EXPECT_EQ(ibv_dealloc_pd(pd1), EBUSY);
  EXPECT_EQ(ibv_destroy_cq(cq1), EBUSY);
  EXPECT_EQ(ibv_destroy_qp(qp), 0);
  EXPECT_EQ(ibv_destroy_qp(qp), EINVAL) << "stale QP";
  EXPECT_EQ(ibv_destroy_cq(cq1), 0);
  EXPECT_EQ(ibv_destroy_cq(cq1), EINVAL) << "stale CQ";
  EXPECT_EQ(ibv_dealloc_pd(pd1), 0);
  EXPECT_EQ(ibv_dealloc_pd(pd1), EINVAL) << "stale PD";

  // Closing a context destroys what it owns; its objects are then stale.
  std::vector<char> buf(8192);
  ibv_mr* mr = ibv_reg_mr(pd1b, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(mr, nullptr);
  EXPECT_EQ(ibv_close_device(c1), 0);
  EXPECT_EQ(ibv_dereg_mr(mr), EINVAL);
  EXPECT_EQ(ibv_dealloc_pd(pd1b), EINVAL);
  EXPECT_EQ(ibv_close_device(c1), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_close_device(c2), 0) << "c2 still owns cq2";
}

TEST(Args, BadArgumentsAndUnsupportedFeatures) {
  ibv_context* ctx = open_dverbs();
  ASSERT_NE(ctx, nullptr);
  ibv_pd* pd = ibv_alloc_pd(ctx);
  ASSERT_NE(pd, nullptr);
  errno = 0;
  EXPECT_EQ(ibv_create_cq(ctx, 0, nullptr, nullptr, 0), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_create_cq(ctx, 16, nullptr, nullptr, 5), nullptr) << "comp_vector";
  EXPECT_EQ(errno, EINVAL);
  ibv_cq_init_attr_ex cx{};
  cx.cqe = 16;
  cx.comp_mask = 1u << 7;  // unknown
  EXPECT_EQ(ibv_create_cq_ex(ctx, &cx), nullptr);
  EXPECT_EQ(errno, EINVAL);
  cx.comp_mask = 0;
  cx.wc_flags = IBV_WC_EX_WITH_CVLAN;  // timestamps are produced (verbs_timestamp), VLANs not
  EXPECT_EQ(ibv_create_cq_ex(ctx, &cx), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);

  ibv_cq* cq = ibv_create_cq(ctx, 16, nullptr, nullptr, 0);
  ASSERT_NE(cq, nullptr);
  ibv_qp_init_attr_ex qx{};
  qx.send_cq = qx.recv_cq = cq;
  qx.qp_type = IBV_QPT_RC;
  qx.cap.max_send_wr = qx.cap.max_recv_wr = 4;
  qx.cap.max_send_sge = qx.cap.max_recv_sge = 1;
  qx.pd = pd;
  qx.comp_mask = IBV_QP_INIT_ATTR_PD | (1u << 12);  // unknown bit
  EXPECT_EQ(ibv_create_qp_ex(ctx, &qx), nullptr);
  EXPECT_EQ(errno, EINVAL);
  qx.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_XRCD;
  EXPECT_EQ(ibv_create_qp_ex(ctx, &qx), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);
  qx.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  qx.send_ops_flags = IBV_QP_EX_WITH_TSO;  // no TSO
  EXPECT_EQ(ibv_create_qp_ex(ctx, &qx), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);
  ibv_qp_init_attr qi{};
  qi.send_cq = qi.recv_cq = cq;
  qi.qp_type = IBV_QPT_DRIVER;  // raw packet QPs work: tests/e2e/verbs_raw_test.cc
  qi.cap.max_send_wr = 1;
  EXPECT_EQ(ibv_create_qp(pd, &qi), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);
  qi.qp_type = IBV_QPT_RC;
  qi.cap.max_send_sge = 100000;
  EXPECT_EQ(ibv_create_qp(pd, &qi), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_create_qp(pd, nullptr), nullptr);
  EXPECT_EQ(errno, EINVAL);

  std::vector<char> buf(4096);
  EXPECT_EQ(ibv_reg_mr(pd, buf.data(), 0, IBV_ACCESS_LOCAL_WRITE), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_REMOTE_WRITE), nullptr)
      << "remote write needs local write";
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_ON_DEMAND), nullptr);
  EXPECT_EQ(errno, EOPNOTSUPP);
  ibv_mr* relaxed =
      ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_RELAXED_ORDERING);
  EXPECT_NE(relaxed, nullptr) << "optional access bits are hints";
  if (relaxed) {
    EXPECT_EQ(ibv_dereg_mr(relaxed), 0);
  }

  EXPECT_EQ(ibv_alloc_mw(pd, ibv_mw_type(3)), nullptr);
  EXPECT_EQ(errno, EINVAL);
  ibv_ah_attr ah{};
  ah.port_num = 1;
  ah.is_global = 0;  // RoCE needs a GRH
  EXPECT_EQ(ibv_create_ah(pd, &ah), nullptr);
  EXPECT_EQ(errno, EINVAL);
  ibv_xrcd_init_attr xa{};
  EXPECT_EQ(ibv_open_xrcd(ctx, &xa), nullptr);  // neither _FD nor _OFLAGS (verbs_xrc_test)
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_destroy_cq(cq), 0);
  EXPECT_EQ(ibv_dealloc_pd(pd), 0);
  EXPECT_EQ(ibv_close_device(ctx), 0);
}

// ---------------------------------------------------------------- MR pinning
bool has_ipc_lock() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3]{};
  return syscall(SYS_capget, &hdr, d) == 0 &&
         (d[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32) & 1);
}

// Runs as an unprivileged process would: without CAP_IPC_LOCK (restored afterwards).
class Pinning : public ::testing::Test {
 protected:
  void SetUp() override {
    had_ipc_lock_ = has_ipc_lock();
    if (had_ipc_lock_) {
      ASSERT_TRUE(set_ipc_lock(false));
    }
    ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &saved_), 0);
    ctx_ = open_dverbs();
    ASSERT_NE(ctx_, nullptr);
    pd_ = ibv_alloc_pd(ctx_);
    ASSERT_NE(pd_, nullptr);
    const size_t len = 4 * kChunk;
    mem_ = static_cast<char*>(
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
  }
  void TearDown() override {
    setrlimit(RLIMIT_MEMLOCK, &saved_);
    if (ctx_) ibv_close_device(ctx_);
    if (mem_ != MAP_FAILED) munmap(mem_, 4 * kChunk);
    if (had_ipc_lock_) set_ipc_lock(true);
  }
  // Limits the process to `bytes` of pinned memory (the soft limit; needs hard >= it).
  bool limit(rlim_t bytes) {
    rlimit r = saved_;
    if (r.rlim_max != RLIM_INFINITY && r.rlim_max < bytes) return false;
    r.rlim_cur = bytes;
    return setrlimit(RLIMIT_MEMLOCK, &r) == 0;
  }
  ibv_mr* reg(size_t off, size_t len) {
    return ibv_reg_mr(pd_, mem_ + off, len, IBV_ACCESS_LOCAL_WRITE);
  }

  static constexpr size_t kChunk = 512 * 1024;
  bool had_ipc_lock_ = false;
  rlimit saved_{};
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  char* mem_ = static_cast<char*>(MAP_FAILED);
};

TEST_F(Pinning, OverTheLimitIsEnomemAndDeregistrationUncharges) {
  if (!limit(2 * kChunk)) GTEST_SKIP() << "RLIMIT_MEMLOCK hard limit below 1 MiB";
  ibv_mr* a = reg(0, kChunk);
  ibv_mr* b = reg(kChunk, kChunk);
  ASSERT_TRUE(a && b) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(reg(2 * kChunk, kChunk), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(reg(2 * kChunk, 1), nullptr) << "one byte is one page over the limit";
  EXPECT_EQ(errno, ENOMEM);
  ASSERT_EQ(ibv_dereg_mr(a), 0);
  ibv_mr* c = reg(2 * kChunk, kChunk);
  ASSERT_NE(c, nullptr) << "room again after ibv_dereg_mr: " << std::strerror(errno);
  EXPECT_EQ(ibv_dereg_mr(b), 0);
  EXPECT_EQ(ibv_dereg_mr(c), 0);
}

// "checks that unprivileged processes do not exceed their RLIMIT_MEMLOCK limit": a process
// with CAP_IPC_LOCK may pin past it, and is held to it again once it drops the capability.
TEST_F(Pinning, CapIpcLockExemptsFromTheLimit) {
  if (!limit(2 * kChunk)) GTEST_SKIP() << "RLIMIT_MEMLOCK hard limit below 1 MiB";
  if (!set_ipc_lock(true)) GTEST_SKIP() << "CAP_IPC_LOCK is not in the permitted set";
  ibv_mr* a = reg(0, 3 * kChunk);
  ASSERT_NE(a, nullptr) << "privileged: 1.5 MiB past a 1 MiB limit: " << std::strerror(errno);
  ASSERT_TRUE(set_ipc_lock(false));
  errno = 0;
  EXPECT_EQ(reg(3 * kChunk, 4096), nullptr) << "unprivileged again: over the limit";
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(ibv_dereg_mr(a), 0);
  ibv_mr* b = reg(0, 2 * kChunk);
  EXPECT_NE(b, nullptr) << "the 1.5 MiB was uncharged";
  if (b) {
    EXPECT_EQ(ibv_dereg_mr(b), 0);
  }
}

TEST_F(Pinning, PagesPinnedTwiceCountTwiceAndStayLockedUntilTheLastDeregistration) {
  if (!limit(2 * kChunk)) GTEST_SKIP() << "RLIMIT_MEMLOCK hard limit below 1 MiB";
  const bool asan = vm_locked_ignored();
  const uint64_t base = vm_locked_kib();
  ibv_mr* a = reg(0, kChunk);
  ibv_mr* b = reg(0, kChunk);  // the same pages again
  ASSERT_TRUE(a && b) << std::strerror(errno);
  EXPECT_EQ(reg(3 * kChunk, 4096), nullptr) << "1 MiB charged for 512 KiB of pages";
  EXPECT_EQ(errno, ENOMEM);
  if (!asan) {
    EXPECT_GE(vm_locked_kib(), base + kChunk / 1024) << "the pages are mlock()ed";
  }
  ASSERT_EQ(ibv_dereg_mr(a), 0);
  if (!asan) {
    EXPECT_GE(vm_locked_kib(), base + kChunk / 1024) << "still pinned by the second MR";
  }
  ASSERT_EQ(ibv_dereg_mr(b), 0);
  EXPECT_LT(vm_locked_kib(), base + kChunk / 1024) << "unlocked with the last MR";
}

TEST_F(Pinning, ChargesWholePagesAndRejectsUnmappedMemory) {
  if (!limit(2 * 4096)) GTEST_SKIP() << "cannot set RLIMIT_MEMLOCK";
  ibv_mr* a = reg(100, 4096);  // straddles two pages: both are charged
  ASSERT_NE(a, nullptr) << std::strerror(errno);
  EXPECT_EQ(reg(3 * kChunk, 1), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(ibv_dereg_mr(a), 0);
  ASSERT_TRUE(limit(saved_.rlim_cur));
  void* hole = mmap(nullptr, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(hole, MAP_FAILED);
  munmap(hole, 8192);
  errno = 0;
  EXPECT_EQ(ibv_reg_mr(pd_, hole, 8192, IBV_ACCESS_LOCAL_WRITE), nullptr);
  EXPECT_EQ(errno, EFAULT);
}

TEST_F(Pinning, CloseDeviceReleasesThePinnedPages) {
  if (!limit(2 * kChunk)) GTEST_SKIP() << "RLIMIT_MEMLOCK hard limit below 1 MiB";
  ASSERT_NE(reg(0, 2 * kChunk), nullptr);
  EXPECT_EQ(reg(2 * kChunk, 4096), nullptr);
  ASSERT_EQ(ibv_close_device(ctx_), 0);
  ctx_ = open_dverbs();
  ASSERT_NE(ctx_, nullptr);
  pd_ = ibv_alloc_pd(ctx_);
  ibv_mr* m = reg(0, 2 * kChunk);
  EXPECT_NE(m, nullptr) << "the closed context's MR was uncharged";
}

// ---------------------------------------------------------------- data path
TEST(DataPath, RcSendWithCompletionChannel) {
  Pair p;
  p.init_rc(true);
  ASSERT_FALSE(HasFatalFailure());
  std::vector<uint8_t> src(3000), dst(4096, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 7);
  ibv_mr* smr = ibv_reg_mr(p.pd, src.data(), src.size(), 0);
  ibv_mr* rmr = ibv_reg_mr(p.pd, dst.data(), dst.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(smr && rmr);

  // Non-blocking channel with nothing pending: EAGAIN at once.
  const int fl = fcntl(p.ch->fd, F_GETFL);
  ASSERT_EQ(fcntl(p.ch->fd, F_SETFL, fl | O_NONBLOCK), 0);
  ibv_cq* ev_cq = nullptr;
  void* ev_ctx = nullptr;
  EXPECT_EQ(ibv_get_cq_event(p.ch, &ev_cq, &ev_ctx), -1);
  EXPECT_EQ(errno, EAGAIN);

  ASSERT_EQ(ibv_req_notify_cq(p.cqb, 0), 0);
  ibv_sge rs{reinterpret_cast<uint64_t>(dst.data()), uint32_t(dst.size()), rmr->lkey};
  ibv_recv_wr rwr{};
  rwr.wr_id = 5;
  rwr.sg_list = &rs;
  rwr.num_sge = 1;
  ibv_recv_wr* rbad = nullptr;
  ASSERT_EQ(ibv_post_recv(p.b, &rwr, &rbad), 0);
  ibv_sge ss{reinterpret_cast<uint64_t>(src.data()), uint32_t(src.size()), smr->lkey};
  ibv_send_wr swr{};
  swr.wr_id = 6;
  swr.sg_list = &ss;
  swr.num_sge = 1;
  swr.opcode = IBV_WR_SEND;
  swr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* sbad = nullptr;
  ASSERT_EQ(ibv_post_send(p.a, &swr, &sbad), 0);

  pollfd pfd{p.ch->fd, POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 20000), 1) << "the channel fd became readable";
  ASSERT_EQ(ibv_get_cq_event(p.ch, &ev_cq, &ev_ctx), 0);
  EXPECT_EQ(ev_cq, p.cqb);
  EXPECT_EQ(ev_ctx, reinterpret_cast<void*>(0xb));
  ibv_ack_cq_events(ev_cq, 1);
  EXPECT_EQ(ibv_get_cq_event(p.ch, &ev_cq, &ev_ctx), -1) << "one event per arm";
  EXPECT_EQ(errno, EAGAIN);
  ibv_wc wc;
  ASSERT_EQ(ibv_poll_cq(p.cqb, 1, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.wr_id, 5u);
  EXPECT_EQ(wc.byte_len, src.size());
  EXPECT_EQ(wc.opcode, IBV_WC_RECV);
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), src.size()), 0);
  ASSERT_EQ(poll_one(p.cqa, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.opcode, IBV_WC_SEND);

  // The async fd is a real, pollable fd; nothing is pending.
  ASSERT_EQ(fcntl(p.ctx->async_fd, F_SETFL, fcntl(p.ctx->async_fd, F_GETFL) | O_NONBLOCK), 0);
  ibv_async_event ae;
  EXPECT_EQ(ibv_get_async_event(p.ctx, &ae), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(ibv_destroy_comp_channel(p.ch), EBUSY) << "still used by CQs";
  ibv_dereg_mr(smr);
  ibv_dereg_mr(rmr);
}

// The event-driven loop of ibv_*_pingpong -e, many times, with two CQs sharing one channel
// and a reliable transport: every completion must come with a wake-up (a lost one would
// leave poll() waiting).
TEST(DataPath, SharedChannelNeverLosesAWakeup) {
  Pair p;
  p.init_rc(true);
  ASSERT_FALSE(HasFatalFailure());
  std::vector<uint8_t> buf(64, 1);
  ibv_mr* mr = ibv_reg_mr(p.pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(mr, nullptr);
  ASSERT_EQ(ibv_req_notify_cq(p.cqa, 0), 0);
  ASSERT_EQ(ibv_req_notify_cq(p.cqb, 0), 0);
  constexpr int kRounds = 3000;
  unsigned events_a = 0, events_b = 0;
  for (int i = 0; i < kRounds; ++i) {
    ibv_sge s{reinterpret_cast<uint64_t>(buf.data()), 32, mr->lkey};
    ibv_recv_wr r{};
    r.sg_list = &s;
    r.num_sge = 1;
    ibv_recv_wr* rbad;
    ASSERT_EQ(ibv_post_recv(p.b, &r, &rbad), 0);
    ibv_send_wr w{};
    w.sg_list = &s;
    w.num_sge = 1;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    ibv_send_wr* sbad;
    ASSERT_EQ(ibv_post_send(p.a, &w, &sbad), 0);
    int sends = 0, recvs = 0;
    while (sends < 1 || recvs < 1) {
      pollfd pfd{p.ch->fd, POLLIN, 0};
      ASSERT_EQ(poll(&pfd, 1, 10000), 1) << "no wake-up in round " << i;
      ibv_cq* cq;
      void* cq_ctx;
      ASSERT_EQ(ibv_get_cq_event(p.ch, &cq, &cq_ctx), 0);
      ASSERT_TRUE(cq == p.cqa || cq == p.cqb);
      (cq == p.cqa ? events_a : events_b)++;
      ASSERT_EQ(ibv_req_notify_cq(cq, 0), 0);  // re-arm, then drain: nothing slips between
      ibv_wc wc[4];
      int n;
      while ((n = ibv_poll_cq(cq, 4, wc)) > 0)
        for (int k = 0; k < n; ++k) {
          ASSERT_EQ(wc[k].status, IBV_WC_SUCCESS);
          (wc[k].opcode == IBV_WC_SEND ? sends : recvs)++;
        }
      ASSERT_EQ(n, 0);
    }
  }
  ibv_ack_cq_events(p.cqa, events_a);
  ibv_ack_cq_events(p.cqb, events_b);
  ibv_dereg_mr(mr);
}

TEST(DataPath, WrApiAndExtendedCq) {
  Pair p;
  p.ctx = open_dverbs();
  ASSERT_NE(p.ctx, nullptr);
  ASSERT_EQ(ibv_query_gid(p.ctx, 1, 0, &p.gid), 0);
  p.pd = ibv_alloc_pd(p.ctx);
  ibv_cq_init_attr_ex cx{};
  cx.cqe = 64;
  cx.wc_flags = IBV_WC_STANDARD_FLAGS;
  ibv_cq_ex* cqx = ibv_create_cq_ex(p.ctx, &cx);
  ASSERT_NE(cqx, nullptr);
  p.cqa = ibv_cq_ex_to_cq(cqx);
  p.cqb = ibv_create_cq(p.ctx, 64, nullptr, nullptr, 0);
  ibv_qp_init_attr_ex qx{};
  qx.send_cq = qx.recv_cq = p.cqa;
  qx.qp_type = IBV_QPT_RC;
  qx.cap.max_send_wr = qx.cap.max_recv_wr = 32;
  qx.cap.max_send_sge = qx.cap.max_recv_sge = 2;
  qx.cap.max_inline_data = 64;
  qx.pd = p.pd;
  qx.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  qx.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE;
  p.a = ibv_create_qp_ex(p.ctx, &qx);
  ASSERT_NE(p.a, nullptr) << std::strerror(errno);
  p.b = p.make_qp(IBV_QPT_RC, p.cqb);
  ASSERT_NE(p.b, nullptr);
  p.connect(p.a, p.b->qp_num);
  p.connect(p.b, p.a->qp_num);
  ASSERT_FALSE(HasFatalFailure());

  std::vector<uint8_t> src(2048), dst(8192, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 13 + 1);
  ibv_mr* smr = ibv_reg_mr(p.pd, src.data(), src.size(), 0);
  ibv_mr* rmr =
      ibv_reg_mr(p.pd, dst.data(), dst.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  ASSERT_TRUE(smr && rmr);
  ibv_sge rs{reinterpret_cast<uint64_t>(dst.data()), 4096, rmr->lkey};
  ibv_recv_wr rwr{};
  rwr.wr_id = 70;
  rwr.sg_list = &rs;
  rwr.num_sge = 1;
  ibv_recv_wr* rbad;
  ASSERT_EQ(ibv_post_recv(p.b, &rwr, &rbad), 0);

  ibv_qp_ex* qpx = ibv_qp_to_qp_ex(p.a);
  ASSERT_NE(qpx, nullptr);
  char inl[] = "inline through ibv_wr_set_inline_data";
  ibv_wr_start(qpx);
  qpx->wr_id = 1;
  qpx->wr_flags = 0;
  ibv_wr_rdma_write(qpx, rmr->rkey, reinterpret_cast<uint64_t>(dst.data()) + 4096);
  ibv_wr_set_sge(qpx, smr->lkey, reinterpret_cast<uint64_t>(src.data()), uint32_t(src.size()));
  qpx->wr_id = 2;
  qpx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_send(qpx);
  ibv_wr_set_inline_data(qpx, inl, sizeof inl);
  std::memset(inl, 0, sizeof inl);  // copied at ibv_wr_set_inline_data
  ASSERT_EQ(ibv_wr_complete(qpx), 0);

  ibv_wc wc;
  ASSERT_EQ(poll_one(p.cqb, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.byte_len, sizeof "inline through ibv_wr_set_inline_data");
  EXPECT_STREQ(reinterpret_cast<char*>(dst.data()), "inline through ibv_wr_set_inline_data");
  EXPECT_EQ(std::memcmp(dst.data() + 4096, src.data(), src.size()), 0) << "RDMA WRITE landed";

  ibv_poll_cq_attr pa{};
  int rc;
  for (long i = 0; (rc = ibv_start_poll(cqx, &pa)) == ENOENT && i < 100000000L; ++i) {
  }
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(cqx->status, IBV_WC_SUCCESS);
  EXPECT_EQ(cqx->wr_id, 2u) << "only the signaled WR completes";
  EXPECT_EQ(ibv_wc_read_opcode(cqx), IBV_WC_SEND);
  EXPECT_EQ(ibv_wc_read_qp_num(cqx), p.a->qp_num);
  EXPECT_EQ(ibv_next_poll(cqx), ENOENT);
  ibv_end_poll(cqx);

  // Latched errors: an opcode the QP was not created for posts nothing.
  ibv_wr_start(qpx);
  ibv_wr_rdma_read(qpx, rmr->rkey, reinterpret_cast<uint64_t>(dst.data()));
  EXPECT_EQ(ibv_wr_complete(qpx), EOPNOTSUPP);
  ibv_dereg_mr(smr);
  ibv_dereg_mr(rmr);
}

TEST(DataPath, UdListsLongerThanOneBatchAndAhFromWc) {
  Pair p;
  p.ctx = open_dverbs();
  ASSERT_NE(p.ctx, nullptr);
  ASSERT_EQ(ibv_query_gid(p.ctx, 1, 0, &p.gid), 0);
  p.pd = ibv_alloc_pd(p.ctx);
  p.cqa = ibv_create_cq(p.ctx, 256, nullptr, nullptr, 0);
  p.cqb = ibv_create_cq(p.ctx, 256, nullptr, nullptr, 0);
  p.a = p.make_qp(IBV_QPT_UD, p.cqa);
  p.b = p.make_qp(IBV_QPT_UD, p.cqb);
  ASSERT_TRUE(p.a && p.b);
  for (ibv_qp* q : {p.a, p.b}) {
    Pair::to_init(q, IBV_QPT_UD);
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_RTR;
    ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE), 0);
    at.qp_state = IBV_QPS_RTS;
    at.sq_psn = 1;
    ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_SQ_PSN), 0);
  }
  ASSERT_FALSE(HasFatalFailure());
  ibv_ah_attr aa{};
  aa.is_global = 1;
  aa.grh.dgid = p.gid;
  aa.grh.hop_limit = 64;
  aa.port_num = 1;
  ibv_ah* ah = ibv_create_ah(p.pd, &aa);
  ASSERT_NE(ah, nullptr);

  constexpr int kN = 40;  // more than one stack batch of the UD translation
  constexpr uint32_t kLen = 100;
  std::vector<uint8_t> src(kN * kLen), dst(kN * (40 + kLen), 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i);
  ibv_mr* smr = ibv_reg_mr(p.pd, src.data(), src.size(), 0);
  ibv_mr* rmr = ibv_reg_mr(p.pd, dst.data(), dst.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(smr && rmr);
  std::vector<ibv_sge> rsg(kN), ssg(kN);
  std::vector<ibv_recv_wr> rwr(kN);
  std::vector<ibv_send_wr> swr(kN);
  for (int i = 0; i < kN; ++i) {
    rsg[i] = {reinterpret_cast<uint64_t>(dst.data()) + i * (40 + kLen), 40 + kLen, rmr->lkey};
    rwr[i] = {};
    rwr[i].wr_id = 1000 + i;
    rwr[i].sg_list = &rsg[i];
    rwr[i].num_sge = 1;
    rwr[i].next = i + 1 < kN ? &rwr[i + 1] : nullptr;
    ssg[i] = {reinterpret_cast<uint64_t>(src.data()) + i * kLen, kLen, smr->lkey};
    swr[i] = {};
    swr[i].wr_id = 2000 + i;
    swr[i].sg_list = &ssg[i];
    swr[i].num_sge = 1;
    swr[i].opcode = IBV_WR_SEND;
    swr[i].send_flags = IBV_SEND_SIGNALED;
    swr[i].wr.ud.ah = ah;
    swr[i].wr.ud.remote_qpn = p.b->qp_num;
    swr[i].wr.ud.remote_qkey = 0x11111111;
    swr[i].next = i + 1 < kN ? &swr[i + 1] : nullptr;
  }
  ibv_recv_wr* rbad = nullptr;
  ASSERT_EQ(ibv_post_recv(p.b, rwr.data(), &rbad), 0);
  ibv_send_wr* sbad = nullptr;
  ASSERT_EQ(ibv_post_send(p.a, swr.data(), &sbad), 0);
  std::vector<ibv_wc> wcs;
  for (long spin = 0; wcs.size() < size_t(kN) && spin < 200000000L; ++spin) {
    ibv_wc wc[8];
    int n = ibv_poll_cq(p.cqb, 8, wc);
    ASSERT_GE(n, 0);
    wcs.insert(wcs.end(), wc, wc + n);
  }
  ASSERT_EQ(wcs.size(), size_t(kN));
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(wcs[i].status, IBV_WC_SUCCESS);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(1000 + i));
    EXPECT_EQ(wcs[i].byte_len, 40 + kLen) << "GRH + payload";
    EXPECT_TRUE(wcs[i].wc_flags & IBV_WC_GRH);
    EXPECT_EQ(wcs[i].src_qp, p.a->qp_num);
    EXPECT_EQ(std::memcmp(dst.data() + i * (40 + kLen) + 40, src.data() + i * kLen, kLen), 0);
  }
  int sent = 0;
  for (long spin = 0; sent < kN && spin < 200000000L; ++spin) {
    ibv_wc wc[8];
    int n = ibv_poll_cq(p.cqa, 8, wc);
    ASSERT_GE(n, 0);
    sent += n;
  }
  EXPECT_EQ(sent, kN);

  // An AH back to the sender from the first completion and its GRH.
  ibv_ah_attr back;
  ASSERT_EQ(ibv_init_ah_from_wc(p.ctx, 1, &wcs[0], reinterpret_cast<ibv_grh*>(dst.data()), &back),
            0);
  EXPECT_EQ(back.is_global, 1);
  EXPECT_EQ(std::memcmp(back.grh.dgid.raw, p.gid.raw, 16), 0);
  ibv_ah* ah2 = ibv_create_ah_from_wc(p.pd, &wcs[0], reinterpret_cast<ibv_grh*>(dst.data()), 1);
  EXPECT_NE(ah2, nullptr);
  if (ah2) {
    EXPECT_EQ(ibv_destroy_ah(ah2), 0);
  }

  // The bad WR of a list is the application's own, also past the first batch.
  for (int i = 0; i < kN; ++i) swr[i].send_flags = 0;
  swr[20].num_sge = -1;
  sbad = nullptr;
  EXPECT_EQ(ibv_post_send(p.a, swr.data(), &sbad), EINVAL);
  EXPECT_EQ(sbad, &swr[20]);
  for (long spin = 0; spin < 1000000; ++spin) {  // drain the 20 posted before it
    ibv_wc wc[8];
    ibv_poll_cq(p.cqb, 8, wc);
  }
  EXPECT_EQ(ibv_dealloc_pd(p.pd), EBUSY) << "AH, MRs and QPs use it";
  EXPECT_EQ(ibv_destroy_ah(ah), 0);
  ibv_dereg_mr(smr);
  ibv_dereg_mr(rmr);
}

// Waits (bounded) for the next async event of `type` on the context's fd, acknowledging
// the others (communication established, port changes) on the way.
TEST(Events, SrqLimitAndLastWqeReachTheAsyncFd) {
  Pair p;
  p.ctx = open_dverbs();
  ASSERT_NE(p.ctx, nullptr);
  ibv_device_attr da;
  ASSERT_EQ(ibv_query_device(p.ctx, &da), 0);
  if (da.max_srq == 0) GTEST_SKIP() << "the device reports no SRQ support";
  ASSERT_EQ(ibv_query_gid(p.ctx, 1, 0, &p.gid), 0);
  p.pd = ibv_alloc_pd(p.ctx);
  p.cqa = ibv_create_cq(p.ctx, 64, nullptr, nullptr, 0);
  p.cqb = ibv_create_cq(p.ctx, 64, nullptr, nullptr, 0);
  ibv_srq_init_attr si{};
  si.srq_context = reinterpret_cast<void*>(0x5);
  si.attr.max_wr = 16;
  si.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(p.pd, &si);
  ASSERT_NE(srq, nullptr) << std::strerror(errno);
  p.a = p.make_qp(IBV_QPT_RC, p.cqa);
  ibv_qp_init_attr init{};
  init.send_cq = init.recv_cq = p.cqb;
  init.srq = srq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = 8;
  init.cap.max_send_sge = 1;
  p.b = ibv_create_qp(p.pd, &init);
  ASSERT_TRUE(p.a && p.b);
  p.connect(p.a, p.b->qp_num);
  p.connect(p.b, p.a->qp_num);
  ASSERT_FALSE(HasFatalFailure());

  std::vector<uint8_t> buf(4 * 256);
  ibv_mr* mr = ibv_reg_mr(p.pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(mr, nullptr);
  for (int i = 0; i < 4; ++i) {
    ibv_sge s{reinterpret_cast<uint64_t>(buf.data()) + i * 256, 256, mr->lkey};
    ibv_recv_wr r{};
    r.wr_id = uint64_t(i);
    r.sg_list = &s;
    r.num_sge = 1;
    ibv_recv_wr* bad;
    ASSERT_EQ(ibv_post_srq_recv(srq, &r, &bad), 0);
  }
  ibv_srq_attr sa{};
  sa.srq_limit = 3;
  ASSERT_EQ(ibv_modify_srq(srq, &sa, IBV_SRQ_LIMIT), 0);
  ASSERT_EQ(ibv_query_srq(srq, &sa), 0);
  EXPECT_EQ(sa.srq_limit, 3u);
  for (int i = 0; i < 2; ++i) {  // 4 -> 2 posted receives: below the limit of 3
    ibv_sge s{reinterpret_cast<uint64_t>(buf.data()), 8, mr->lkey};
    ibv_send_wr w{};
    w.sg_list = &s;
    w.num_sge = 1;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    ibv_send_wr* bad;
    ASSERT_EQ(ibv_post_send(p.a, &w, &bad), 0);
    ibv_wc wc;
    ASSERT_EQ(poll_one(p.cqb, &wc), 1);
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
    ASSERT_EQ(poll_one(p.cqa, &wc), 1);
  }
  ibv_async_event ev;
  ASSERT_TRUE(next_async(p.ctx, IBV_EVENT_SRQ_LIMIT_REACHED, &ev)) << "no SRQ limit event";
  EXPECT_EQ(ev.event_type, IBV_EVENT_SRQ_LIMIT_REACHED) << ibv_event_type_str(ev.event_type);
  EXPECT_EQ(ev.element.srq, srq);
  ibv_ack_async_event(&ev);

  // A QP of the SRQ entering the error state reports its last WQE.
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_ERR;
  ASSERT_EQ(ibv_modify_qp(p.b, &at, IBV_QP_STATE), 0);
  ASSERT_TRUE(next_async(p.ctx, IBV_EVENT_QP_LAST_WQE_REACHED, &ev)) << "no last-WQE event";
  EXPECT_EQ(ev.event_type, IBV_EVENT_QP_LAST_WQE_REACHED) << ibv_event_type_str(ev.event_type);
  EXPECT_EQ(ev.element.qp, p.b);
  ibv_ack_async_event(&ev);
  EXPECT_EQ(ibv_destroy_srq(srq), EBUSY) << "QP b uses it";
  EXPECT_EQ(ibv_destroy_qp(p.b), 0) << "returns: its event was acknowledged";
  p.b = nullptr;
  EXPECT_EQ(ibv_destroy_srq(srq), 0);
  ibv_dereg_mr(mr);
}

// ---------------------------------------------------------------- hot-unplug
// A port added and removed through the drop-in's extension (dverbs_add_port /
// dverbs_remove_port, found with dlsym as a program would): the context open on it gets
// IBV_EVENT_DEVICE_FATAL, posting and polling fail with EIO, and every object the program
// still holds stays valid to destroy (ASan checks nothing is touched after it is freed).
TEST(HotUnplug, ContextOfARemovedPortGetsDeviceFatalAndItsObjectsStayDestroyable) {
  using AddPort = int (*)(const char*, const char*, char*, size_t);
  using RemovePort = int (*)(const char*);
  auto add = reinterpret_cast<AddPort>(dlsym(RTLD_DEFAULT, "dverbs_add_port"));
  auto remove = reinterpret_cast<RemovePort>(dlsym(RTLD_DEFAULT, "dverbs_remove_port"));
  ASSERT_TRUE(add && remove) << "the drop-in exports dverbs_add_port/dverbs_remove_port";
  char name[64] = {};
  ASSERT_EQ(add("net_ring_hp5", "10.9.5.1/24", name, sizeof name), 0);
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  ASSERT_NE(list, nullptr);
  ibv_context* ctx = nullptr;
  for (int i = 0; i < n; ++i)
    if (std::strcmp(ibv_get_device_name(list[i]), name) == 0) ctx = ibv_open_device(list[i]);
  ibv_free_device_list(list);
  ASSERT_NE(ctx, nullptr) << name << " is listed and opens";
  ibv_pd* pd = ibv_alloc_pd(ctx);
  ibv_cq* cq = ibv_create_cq(ctx, 16, nullptr, nullptr, 0);
  ASSERT_TRUE(pd && cq);
  ibv_qp_init_attr qa{};
  qa.send_cq = qa.recv_cq = cq;
  qa.qp_type = IBV_QPT_RC;
  qa.cap = {4, 4, 1, 1, 0};
  ibv_qp* qp = ibv_create_qp(pd, &qa);
  ASSERT_NE(qp, nullptr);
  std::vector<uint8_t> buf(4096);
  ibv_mr* mr = ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(mr, nullptr);

  ASSERT_EQ(remove(name), 0);
  EXPECT_EQ(remove(name), ENOENT);

  pollfd pfd{ctx->async_fd, POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 10000), 1) << "an async event is queued by the removal";
  ibv_async_event ev{};
  ASSERT_EQ(ibv_get_async_event(ctx, &ev), 0);
  EXPECT_EQ(ev.event_type, IBV_EVENT_DEVICE_FATAL);
  ibv_ack_async_event(&ev);
  ibv_sge sge{reinterpret_cast<uint64_t>(buf.data()), 8, mr->lkey};
  ibv_send_wr wr{};
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  ibv_send_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_send(qp, &wr, &bad), EIO);
  ibv_wc wc;
  EXPECT_LT(ibv_poll_cq(cq, 1, &wc), 0);
  EXPECT_EQ(ibv_destroy_qp(qp), 0);
  EXPECT_EQ(ibv_dereg_mr(mr), 0);
  EXPECT_EQ(ibv_destroy_cq(cq), 0);
  EXPECT_EQ(ibv_dealloc_pd(pd), 0);
  EXPECT_EQ(ibv_close_device(ctx), 0);
}

// ---------------------------------------------------------------- process exit
TEST(Exit, ResourcesLeftOpenAreCleanedUpAtExit) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(g_self.c_str(), g_self.c_str(), "--exit-without-cleanup", static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st)) << "the child died of signal " << WTERMSIG(st);
  EXPECT_EQ(WEXITSTATUS(st), 0);
}

// The child: opens everything, leaves it all open and returns from main.
int exit_without_cleanup() {
  Pair* p = new Pair();  // deliberately leaked
  p->init_rc(true);
  std::vector<char>* buf = new std::vector<char>(1 << 20);
  if (!ibv_reg_mr(p->pd, buf->data(), buf->size(), IBV_ACCESS_LOCAL_WRITE)) return 3;
  if (ibv_req_notify_cq(p->cqa, 0)) return 4;
  return ::testing::Test::HasFailure() ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  g_self = n > 0 ? std::string(self, size_t(n)) : std::string(argv[0]);
  if (argc > 1 && std::strcmp(argv[1], "--exit-without-cleanup") == 0)
    return exit_without_cleanup();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
