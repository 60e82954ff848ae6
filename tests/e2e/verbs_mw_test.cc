// Memory windows through the libibverbs drop-in (issue 18, item 1), as a stock program
// uses them: ibv_alloc_mw (types 1 and 2), ibv_bind_mw, IBV_WR_BIND_MW, ibv_wr_bind_mw,
// IBV_WR_LOCAL_INV, ibv_wr_local_inv, SEND with Invalidate, ibv_dealloc_mw, and the device
// attributes that announce them. QP `b` owns the memory and binds the windows; QP `a` (the
// peer, over the loopback port) reads and writes through their rkeys.
//
// Run by verbs_modes.sh, embedded and as a dverbsd client (meson does both).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::addr_of;
using verbs_loop::RcPair;
using verbs_loop::stays_empty;
using verbs_loop::wait_wc;

constexpr size_t kBuf = 16384;
constexpr size_t kWinOff = 4096, kWinLen = 8192;  // the window: [4096, 12288) of B's buffer
constexpr unsigned kRw = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;

// A connected pair, B's 16 KiB region (bindable), A's local buffer.
struct Fix {
  RcPair p;
  std::vector<char> bbuf = std::vector<char>(kBuf), abuf = std::vector<char>(kBuf);
  ibv_mr* bmr = nullptr;
  ibv_mr* amr = nullptr;
  std::vector<ibv_mw*> mws;

  ~Fix() {
    for (ibv_mw* mw : mws) ibv_dealloc_mw(mw);
    if (bmr) ibv_dereg_mr(bmr);
    if (amr) ibv_dereg_mr(amr);
  }
  void init(uint64_t b_send_ops = 0, int bmr_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_MW_BIND) {
    p.init(b_send_ops);
    if (::testing::Test::HasFatalFailure()) return;
    bmr = ibv_reg_mr(p.pd, bbuf.data(), kBuf, bmr_access);
    amr = ibv_reg_mr(p.pd, abuf.data(), kBuf, IBV_ACCESS_LOCAL_WRITE);
    ASSERT_TRUE(bmr && amr) << std::strerror(errno);
  }
  ibv_mw* alloc(ibv_mw_type t) {
    ibv_mw* mw = ibv_alloc_mw(p.pd, t);
    EXPECT_NE(mw, nullptr) << std::strerror(errno);
    if (mw) mws.push_back(mw);
    return mw;
  }
  void dealloc(ibv_mw* mw) {
    ASSERT_EQ(ibv_dealloc_mw(mw), 0);
    std::erase(mws, mw);
  }
  ibv_mw_bind_info info(size_t off, size_t len, unsigned acc) {
    return ibv_mw_bind_info{bmr, addr_of(bbuf.data() + off), len, acc};
  }
  // A type 2 bind posted on B's QP with ibv_post_send: its completion status (or -errno
  // from the post).
  int bind2(ibv_mw* mw, const ibv_mw_bind_info& bi, uint32_t rkey) {
    ibv_send_wr wr{};
    wr.wr_id = 0xb1d;
    wr.opcode = IBV_WR_BIND_MW;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.bind_mw.mw = mw;
    wr.bind_mw.rkey = rkey;
    wr.bind_mw.bind_info = bi;
    ibv_send_wr* bad = nullptr;
    if (int rc = ibv_post_send(p.b, &wr, &bad)) return -rc;
    ibv_wc wc = wait_wc(p.cqb);
    EXPECT_EQ(wc.wr_id, 0xb1du);
    if (wc.status == IBV_WC_SUCCESS) {
      EXPECT_EQ(wc.opcode, IBV_WC_BIND_MW);
    }
    return wc.status;
  }
  // A type 1 bind with ibv_bind_mw on B's QP: its completion status (or -errno).
  int bind1(ibv_mw* mw, const ibv_mw_bind_info& bi) {
    ibv_mw_bind b{};
    b.wr_id = 0xb1;
    b.send_flags = IBV_SEND_SIGNALED;
    b.bind_info = bi;
    if (int rc = ibv_bind_mw(p.b, mw, &b)) return -rc;
    ibv_wc wc = wait_wc(p.cqb);
    EXPECT_EQ(wc.wr_id, 0xb1u);
    if (wc.status == IBV_WC_SUCCESS) {
      EXPECT_EQ(wc.opcode, IBV_WC_BIND_MW);
    }
    return wc.status;
  }
  // A type 2 window bound to [kWinOff, kWinOff + kWinLen) for remote read and write;
  // its new rkey in *rkey (nullptr, with a test failure, if that did not work).
  ibv_mw* bound2(uint32_t* rkey) {
    ibv_mw* mw = alloc(IBV_MW_TYPE_2);
    if (!mw) return nullptr;
    *rkey = ibv_inc_rkey(mw->rkey);
    const int st = bind2(mw, info(kWinOff, kWinLen, kRw), *rkey);
    EXPECT_EQ(st, IBV_WC_SUCCESS);
    return st == IBV_WC_SUCCESS ? mw : nullptr;
  }
  // IBV_WR_LOCAL_INV of `rkey` on B's QP: its completion.
  ibv_wc local_inv(uint32_t rkey, uint64_t wr_id = 0x1e) {
    ibv_send_wr wr{};
    wr.wr_id = wr_id;
    wr.opcode = IBV_WR_LOCAL_INV;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.invalidate_rkey = rkey;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(p.b, &wr, &bad) != 0) {
      ADD_FAILURE() << "post LOCAL_INV";
      return ibv_wc{};
    }
    return wait_wc(p.cqb);
  }
  // WRITE (then READ back) `len` bytes at offset `off` of B's buffer through `rkey`.
  ibv_wc_status write(size_t off, uint32_t len, uint32_t rkey, char fill = 'w') {
    std::memset(abuf.data(), fill, len);
    return p.rdma(IBV_WR_RDMA_WRITE, abuf.data(), len, amr->lkey, addr_of(bbuf.data() + off), rkey);
  }
  ibv_wc_status read(size_t off, uint32_t len, uint32_t rkey) {
    return p.rdma(IBV_WR_RDMA_READ, abuf.data(), len, amr->lkey, addr_of(bbuf.data() + off), rkey);
  }
};

// ---------------------------------------------------------------- device attributes
TEST(MwDevice, AttributesAnnounceType1AndType2BWindows) {
  ibv_context* ctx = verbs_loop::open_dverbs();
  ASSERT_NE(ctx, nullptr);
  ibv_device_attr a{};
  ASSERT_EQ(ibv_query_device(ctx, &a), 0);
  EXPECT_GT(a.max_mw, 0);
  EXPECT_TRUE(a.device_cap_flags & IBV_DEVICE_MEM_WINDOW);
  EXPECT_TRUE(a.device_cap_flags & IBV_DEVICE_MEM_WINDOW_TYPE_2B);
  EXPECT_FALSE(a.device_cap_flags & IBV_DEVICE_MEM_WINDOW_TYPE_2A);
  ibv_device_attr_ex x{};
  ASSERT_EQ(ibv_query_device_ex(ctx, nullptr, &x), 0);
  EXPECT_EQ(x.orig_attr.max_mw, a.max_mw);
  EXPECT_TRUE(x.device_cap_flags_ex & IBV_DEVICE_MEM_WINDOW);
  EXPECT_TRUE(x.device_cap_flags_ex & IBV_DEVICE_MEM_WINDOW_TYPE_2B);
  EXPECT_EQ(ibv_close_device(ctx), 0);
}

// ---------------------------------------------------------------- type 1
TEST(MwType1, BindGrantsTheWindowAndAZeroLengthBindRevokesIt) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  EXPECT_EQ(mw->type, IBV_MW_TYPE_1);
  EXPECT_EQ(mw->pd, f.p.pd);
  const uint32_t before = mw->rkey;
  ASSERT_EQ(f.bind1(mw, f.info(kWinOff, kWinLen, kRw)), IBV_WC_SUCCESS);
  EXPECT_EQ(mw->rkey, ibv_inc_rkey(before)) << "ibv_bind_mw returns the new rkey in mw->rkey";
  EXPECT_NE(mw->rkey, f.bmr->rkey);
  // The whole window, written and read back through its rkey.
  ASSERT_EQ(f.write(kWinOff, kWinLen, mw->rkey, 'x'), IBV_WC_SUCCESS);
  EXPECT_EQ(std::memcmp(f.bbuf.data() + kWinOff, f.abuf.data(), kWinLen), 0);
  EXPECT_EQ(f.bbuf[kWinOff - 1], 0) << "nothing outside the window";
  EXPECT_EQ(f.bbuf[kWinOff + kWinLen], 0);
  f.bbuf[kWinOff + 10] = 'r';
  ASSERT_EQ(f.read(kWinOff, 64, mw->rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(f.abuf[10], 'r');
  // The region has a window bound: it stays.
  EXPECT_EQ(ibv_dereg_mr(f.bmr), EBUSY);
  // Unbind (length 0, no MR), then the key serves nothing.
  ASSERT_EQ(f.bind1(mw, ibv_mw_bind_info{nullptr, 0, 0, 0}), IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(kWinOff, 8, mw->rkey), IBV_WC_REM_ACCESS_ERR);
}

TEST(MwType1, UnsignaledBindTakesEffectWithoutACompletion) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  ibv_mw_bind b{};
  b.wr_id = 0xb0;
  b.send_flags = 0;  // the QP does not signal every WR
  b.bind_info = f.info(kWinOff, kWinLen, kRw);
  ASSERT_EQ(ibv_bind_mw(f.p.b, mw, &b), 0);
  // A signalled SEND after the bind on the same send queue: its completion, and only it,
  // says the bind has run (the send queue completes in order).
  ASSERT_EQ(RcPair::recv_one(f.p.a, f.abuf.data(), 16, f.amr->lkey), 0);
  ASSERT_EQ(RcPair::send_one(f.p.b, IBV_WR_SEND, f.bbuf.data(), 16, f.bmr->lkey, 0x5e0), 0);
  ibv_wc wc = wait_wc(f.p.cqb);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.wr_id, 0x5e0u) << "the unsignalled bind completes nothing";
  EXPECT_TRUE(stays_empty(f.p.cqb));
  ASSERT_EQ(wait_wc(f.p.cqa).status, IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(kWinOff, 256, mw->rkey, 'u'), IBV_WC_SUCCESS);
  EXPECT_EQ(f.bbuf[kWinOff + 255], 'u');
}

TEST(MwType1, AccessOutsideTheWindowIsARemoteAccessError) {
  struct Case {
    const char* what;
    size_t off;
    uint32_t len;
    bool read;
  } cases[] = {{"one byte past the end", kWinOff + kWinLen, 1, false},
               {"straddling the end", kWinOff + kWinLen - 4, 8, false},
               {"one byte before the start", kWinOff - 1, 1, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Fix f;
    ASSERT_NO_FATAL_FAILURE(f.init());
    ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
    ASSERT_NE(mw, nullptr);
    ASSERT_EQ(f.bind1(mw, f.info(kWinOff, kWinLen, kRw)), IBV_WC_SUCCESS);
    EXPECT_EQ(c.read ? f.read(c.off, c.len, mw->rkey) : f.write(c.off, c.len, mw->rkey),
              IBV_WC_REM_ACCESS_ERR);
    EXPECT_EQ(f.bbuf[kWinOff + kWinLen], 0) << "not one byte written";
  }
}

TEST(MwType1, ReadOnlyWindowRefusesAWrite) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  ASSERT_EQ(f.bind1(mw, f.info(kWinOff, kWinLen, IBV_ACCESS_REMOTE_READ)), IBV_WC_SUCCESS);
  ASSERT_EQ(f.read(kWinOff, 64, mw->rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(kWinOff, 64, mw->rkey), IBV_WC_REM_ACCESS_ERR);
  EXPECT_EQ(f.bbuf[kWinOff], 0);
}

TEST(MwType1, DeallocRevokesTheWindowAndFreesTheRegion) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  ASSERT_EQ(f.bind1(mw, f.info(kWinOff, kWinLen, kRw)), IBV_WC_SUCCESS);
  const uint32_t rkey = mw->rkey;
  ASSERT_EQ(f.write(kWinOff, 8, rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(ibv_dealloc_pd(f.p.pd), EBUSY) << "the PD has a window";
  ASSERT_NO_FATAL_FAILURE(f.dealloc(mw));
  EXPECT_EQ(f.write(kWinOff, 8, rkey), IBV_WC_REM_ACCESS_ERR);
  EXPECT_EQ(ibv_dereg_mr(f.bmr), 0) << "no window is bound to the region any more";
  f.bmr = nullptr;
}

// ---------------------------------------------------------------- type 2
TEST(MwType2, BindWithPostSendGrantsTheWindowOnItsQp) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_2);
  ASSERT_NE(mw, nullptr);
  EXPECT_EQ(mw->type, IBV_MW_TYPE_2);
  const uint32_t rkey = ibv_inc_rkey(mw->rkey);
  ASSERT_EQ(f.bind2(mw, f.info(kWinOff, kWinLen, kRw), rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(mw->rkey, rkey);
  ASSERT_EQ(f.write(kWinOff, kWinLen, rkey, 'y'), IBV_WC_SUCCESS);
  EXPECT_EQ(std::memcmp(f.bbuf.data() + kWinOff, f.abuf.data(), kWinLen), 0);
  ASSERT_EQ(f.read(kWinOff + 100, 100, rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(f.abuf[0], 'y');
  EXPECT_EQ(f.write(kWinOff + kWinLen, 1, rkey), IBV_WC_REM_ACCESS_ERR) << "past the end";
}

TEST(MwType2, LocalInvalidateRevokesTheWindow) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  uint32_t rkey = 0;
  ibv_mw* mw = f.bound2(&rkey);
  ASSERT_NE(mw, nullptr);
  ASSERT_EQ(f.write(kWinOff, 8, rkey), IBV_WC_SUCCESS);
  EXPECT_EQ(f.bind2(mw, f.info(0, 4096, kRw), ibv_inc_rkey(rkey)), IBV_WC_MW_BIND_ERR)
      << "a bound type 2 window is invalidated before it is bound again";
  // That error moved B to ERR: a new pair for the invalidation itself.
  Fix g;
  ASSERT_NO_FATAL_FAILURE(g.init());
  uint32_t k = 0;
  mw = g.bound2(&k);
  ASSERT_NE(mw, nullptr);
  ibv_wc wc = g.local_inv(k, 0x1e);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.opcode, IBV_WC_LOCAL_INV);
  EXPECT_EQ(wc.wr_id, 0x1eu);
  // Invalidated, the window binds again (a new key); the old key stays dead.
  const uint32_t k2 = ibv_inc_rkey(k);
  ASSERT_EQ(g.bind2(mw, g.info(0, 4096, kRw), k2), IBV_WC_SUCCESS);
  ASSERT_EQ(g.write(0, 8, k2), IBV_WC_SUCCESS);
  EXPECT_EQ(g.write(kWinOff, 8, k), IBV_WC_REM_ACCESS_ERR);
}

TEST(MwType2, SendWithInvalidateRevokesTheWindow) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  uint32_t rkey = 0;
  ASSERT_NE(f.bound2(&rkey), nullptr);
  ASSERT_EQ(f.read(kWinOff, 64, rkey), IBV_WC_SUCCESS);
  // B receives a SEND with Invalidate naming the window's rkey.
  ASSERT_EQ(RcPair::recv_one(f.p.b, f.bbuf.data(), 64, f.bmr->lkey, 0x5ec), 0);
  ASSERT_EQ(
      RcPair::send_one(f.p.a, IBV_WR_SEND_WITH_INV, f.abuf.data(), 16, f.amr->lkey, 0x5e, rkey), 0);
  EXPECT_EQ(wait_wc(f.p.cqa).status, IBV_WC_SUCCESS);
  ibv_wc wc = wait_wc(f.p.cqb);
  ASSERT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.wr_id, 0x5ecu);
  EXPECT_EQ(wc.opcode, IBV_WC_RECV);
  EXPECT_EQ(wc.byte_len, 16u);
  EXPECT_TRUE(wc.wc_flags & IBV_WC_WITH_INV);
  EXPECT_EQ(wc.invalidated_rkey, rkey);
  EXPECT_EQ(f.read(kWinOff, 64, rkey), IBV_WC_REM_ACCESS_ERR) << "the window is invalidated";
}

TEST(MwType2, DeallocRevokesABoundWindow) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  uint32_t rkey = 0;
  ibv_mw* mw = f.bound2(&rkey);
  ASSERT_NE(mw, nullptr);
  EXPECT_EQ(ibv_dereg_mr(f.bmr), EBUSY) << "a region with a bound window stays";
  ASSERT_NO_FATAL_FAILURE(f.dealloc(mw));
  EXPECT_EQ(f.write(kWinOff, 8, rkey), IBV_WC_REM_ACCESS_ERR);
}

TEST(MwType2, KeyByteWrapsAroundOverManyBinds) {
  // ibv_inc_rkey wraps the key byte from 0xff to 0: every one of 260 rebinds works.
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_2);
  ASSERT_NE(mw, nullptr);
  uint32_t k = mw->rkey;
  for (int i = 0; i < 260; ++i) {
    k = ibv_inc_rkey(k);
    ASSERT_EQ(f.bind2(mw, f.info(kWinOff, 64, kRw), k), IBV_WC_SUCCESS) << "bind " << i;
    ASSERT_EQ(f.local_inv(k).status, IBV_WC_SUCCESS) << "invalidate " << i;
  }
  k = ibv_inc_rkey(k);
  ASSERT_EQ(f.bind2(mw, f.info(kWinOff, 64, kRw), k), IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(kWinOff, 64, k), IBV_WC_SUCCESS);
}

// ibv_qp_ex: ibv_wr_bind_mw and ibv_wr_local_inv.
TEST(MwType2, WrBindMwAndWrLocalInv) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(
      f.init(IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_BIND_MW | IBV_QP_EX_WITH_LOCAL_INV));
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_2);
  ASSERT_NE(mw, nullptr);
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(f.p.b);
  ASSERT_NE(qx, nullptr);
  const uint32_t rkey = ibv_inc_rkey(mw->rkey);
  const ibv_mw_bind_info bi = f.info(kWinOff, kWinLen, kRw);
  ibv_wr_start(qx);
  qx->wr_id = 0x77;
  qx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_bind_mw(qx, mw, rkey, &bi);
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  ibv_wc wc = wait_wc(f.p.cqb);
  ASSERT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.opcode, IBV_WC_BIND_MW);
  EXPECT_EQ(wc.wr_id, 0x77u);
  EXPECT_EQ(mw->rkey, rkey);
  ASSERT_EQ(f.write(kWinOff, 128, rkey), IBV_WC_SUCCESS);
  ibv_wr_start(qx);
  qx->wr_id = 0x78;
  qx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_local_inv(qx, rkey);
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  wc = wait_wc(f.p.cqb);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.opcode, IBV_WC_LOCAL_INV);
  EXPECT_EQ(wc.wr_id, 0x78u);
  EXPECT_EQ(f.write(kWinOff, 128, rkey), IBV_WC_REM_ACCESS_ERR);
}

TEST(MwType2, WrBindMwWithoutTheSendOpIsEopnotsupp) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init(IBV_QP_EX_WITH_SEND));
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_2);
  ASSERT_NE(mw, nullptr);
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(f.p.b);
  ASSERT_NE(qx, nullptr);
  const ibv_mw_bind_info bi = f.info(kWinOff, kWinLen, kRw);
  ibv_wr_start(qx);
  ibv_wr_bind_mw(qx, mw, ibv_inc_rkey(mw->rkey), &bi);
  EXPECT_EQ(ibv_wr_complete(qx), EOPNOTSUPP);
  EXPECT_TRUE(stays_empty(f.p.cqb));
}

// ---------------------------------------------------------------- misuse
TEST(MwMisuse, BadTypesAndBindsAreRefusedAtPost) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  EXPECT_EQ(ibv_alloc_mw(f.p.pd, ibv_mw_type(3)), nullptr);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(ibv_alloc_mw(f.p.pd, ibv_mw_type(0)), nullptr);
  EXPECT_EQ(errno, EINVAL);
  ibv_mw* mw2 = f.alloc(IBV_MW_TYPE_2);
  ibv_mw* mw1 = f.alloc(IBV_MW_TYPE_1);
  ASSERT_TRUE(mw1 && mw2);
  // ibv_bind_mw is for type 1 only.
  EXPECT_EQ(f.bind1(mw2, f.info(kWinOff, kWinLen, kRw)), -EINVAL);
  // Zero-based windows are not implemented; local or unknown bits are not window access.
  EXPECT_EQ(f.bind1(mw1, f.info(kWinOff, kWinLen, kRw | IBV_ACCESS_ZERO_BASED)), -EINVAL);
  EXPECT_EQ(f.bind2(mw2, f.info(kWinOff, kWinLen, IBV_ACCESS_ZERO_BASED), ibv_inc_rkey(mw2->rkey)),
            -EINVAL);
  EXPECT_EQ(f.bind2(mw2, f.info(kWinOff, kWinLen, IBV_ACCESS_LOCAL_WRITE), ibv_inc_rkey(mw2->rkey)),
            -EINVAL);
  // A bind on a UD QP.
  ibv_qp_init_attr ui{};
  ui.send_cq = ui.recv_cq = f.p.cqb;
  ui.qp_type = IBV_QPT_UD;
  ui.cap.max_send_wr = ui.cap.max_recv_wr = 4;
  ui.cap.max_send_sge = ui.cap.max_recv_sge = 1;
  ibv_qp* ud = ibv_create_qp(f.p.pd, &ui);
  ASSERT_NE(ud, nullptr);
  ibv_mw_bind b{};
  b.bind_info = f.info(kWinOff, kWinLen, kRw);
  EXPECT_EQ(ibv_bind_mw(ud, mw1, &b), EINVAL);
  EXPECT_EQ(ibv_destroy_qp(ud), 0);
  const uint32_t rkey1 = mw1->rkey, rkey2 = mw2->rkey;
  EXPECT_EQ(mw1->rkey, rkey1) << "a refused bind leaves the key";
  EXPECT_TRUE(stays_empty(f.p.cqb)) << "a refused post completes nothing";
  // Nothing was bound: the keys serve nothing, and the pair still works.
  ASSERT_EQ(f.bind2(mw2, f.info(0, 64, kRw), ibv_inc_rkey(rkey2)), IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(0, 64, mw2->rkey), IBV_WC_SUCCESS);
}

TEST(MwMisuse, BindBeyondTheRegionIsABindError) {
  for (int type : {1, 2}) {
    SCOPED_TRACE(type);
    Fix f;
    ASSERT_NO_FATAL_FAILURE(f.init());
    ibv_mw* mw = f.alloc(ibv_mw_type(type));
    ASSERT_NE(mw, nullptr);
    const uint32_t old = mw->rkey;
    const ibv_mw_bind_info bi = f.info(kBuf - 4096, 8192, kRw);  // 4 KiB past the end
    const int st = type == 1 ? f.bind1(mw, bi) : f.bind2(mw, bi, ibv_inc_rkey(old));
    EXPECT_EQ(st, IBV_WC_MW_BIND_ERR);
    mw->rkey = old;  // the man page: the application restores the key of a failed bind
  }
}

TEST(MwMisuse, RegionWithoutMwBindRefusesTheBind) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init(0, IBV_ACCESS_LOCAL_WRITE));
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_2);
  ASSERT_NE(mw, nullptr);
  EXPECT_EQ(f.bind2(mw, f.info(kWinOff, kWinLen, kRw), ibv_inc_rkey(mw->rkey)), IBV_WC_MW_BIND_ERR);
}

TEST(MwMisuse, RemoteWriteWindowOnARegionWithoutLocalWriteIsABindError) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init(0, IBV_ACCESS_MW_BIND));
  ibv_mw* mw = f.alloc(IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  EXPECT_EQ(f.bind1(mw, f.info(kWinOff, kWinLen, IBV_ACCESS_REMOTE_WRITE)), IBV_WC_MW_BIND_ERR);
}

TEST(MwMisuse, DeallocOfAForeignPointerIsEinval) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  // A zeroed window struct with a real context: never found in the registry.
  ibv_mw forged{};
  forged.context = f.p.ctx;
  forged.pd = f.p.pd;
  forged.type = IBV_MW_TYPE_2;
  EXPECT_EQ(ibv_dealloc_mw(&forged), EINVAL);
}

}  // namespace
