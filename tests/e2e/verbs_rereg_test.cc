// ibv_rereg_mr through the libibverbs drop-in (issue 18, item 3): IBV_REREG_MR_CHANGE_
// TRANSLATION, _PD and _ACCESS alone and together, with the keys kept (what dverbs does:
// lib/verbs/ibverbs/rereg.cc), the old translation gone, RLIMIT_MEMLOCK re-charged, and
// every refused call leaving the region working as it was. QP `b` owns the region; QP
// `a`, its peer over the loopback port, reads and writes it through the rkey.
//
// Also: stores beside a buffer kept while it is registered (the daemon's write fence).
//
// Run by verbs_modes.sh, embedded and as a dverbsd client (meson does both).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>
#include <thread>

#include "verbs_loop.h"

namespace {

using verbs_loop::addr_of;
using verbs_loop::RcPair;
using verbs_loop::set_ipc_lock;
using verbs_loop::wait_wc;

constexpr size_t kPage = 4096;

// Page-aligned anonymous memory (unmapped at the end).
struct Pages {
  char* p = nullptr;
  size_t len = 0;
  explicit Pages(size_t n) : len(n) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = m == MAP_FAILED ? nullptr : static_cast<char*>(m);
  }
  ~Pages() {
    if (p) munmap(p, len);
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
};

constexpr int kAll = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

struct Fix {
  RcPair p;
  Pages abuf{8 * kPage};
  ibv_mr* amr = nullptr;
  ibv_mr* mr = nullptr;  // B's region, the one re-registered

  ~Fix() {
    if (mr) ibv_dereg_mr(mr);
    if (amr) ibv_dereg_mr(amr);
  }
  void init() {
    p.init();
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_NE(abuf.p, nullptr);
    amr = ibv_reg_mr(p.pd, abuf.p, abuf.len, IBV_ACCESS_LOCAL_WRITE);
    ASSERT_NE(amr, nullptr) << std::strerror(errno);
  }
  // A's WRITE of `len` bytes of `fill` to `dst` through the region's rkey.
  ibv_wc_status write(const void* dst, uint32_t len, char fill) {
    std::memset(abuf.p, fill, len);
    return p.rdma(IBV_WR_RDMA_WRITE, abuf.p, len, amr->lkey, addr_of(dst), mr->rkey);
  }
  ibv_wc_status read(const void* src, uint32_t len) {
    return p.rdma(IBV_WR_RDMA_READ, abuf.p, len, amr->lkey, addr_of(src), mr->rkey);
  }
  // B SENDs `len` bytes from `src` with the region's lkey to A (which posts the receive).
  ibv_wc_status send_from(const void* src, uint32_t len) {
    if (RcPair::recv_one(p.a, abuf.p, len, amr->lkey) != 0 ||
        RcPair::send_one(p.b, IBV_WR_SEND, src, len, mr->lkey) != 0)
      return IBV_WC_GENERAL_ERR;
    const ibv_wc_status st = wait_wc(p.cqb).status;
    if (st == IBV_WC_SUCCESS) {
      EXPECT_EQ(wait_wc(p.cqa).status, IBV_WC_SUCCESS);
    }
    return st;
  }
};

// ---------------------------------------------------------------- translation
TEST(Rereg, NewTranslationKeepsTheKeysAndDropsTheOldRange) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  Pages old_buf(4 * kPage), new_buf(8 * kPage);
  f.mr = ibv_reg_mr(f.p.pd, old_buf.p, old_buf.len, kAll);
  ASSERT_NE(f.mr, nullptr);
  ASSERT_EQ(f.write(old_buf.p, 64, 'o'), IBV_WC_SUCCESS);
  const uint32_t lkey = f.mr->lkey, rkey = f.mr->rkey;
  // A new address and a new length (not page aligned at its end).
  char* at = new_buf.p + 100;
  const size_t len = 5 * kPage + 17;
  ASSERT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, at, len, 0), 0)
      << std::strerror(errno);
  EXPECT_EQ(f.mr->addr, at);
  EXPECT_EQ(f.mr->length, len);
  EXPECT_EQ(f.mr->pd, f.p.pd);
  EXPECT_EQ(f.mr->lkey, lkey) << "dverbs keeps the keys";
  EXPECT_EQ(f.mr->rkey, rkey);
  // The whole new range, written and read through the same rkey; sent with the lkey.
  ASSERT_EQ(f.write(at, uint32_t(len), 'n'), IBV_WC_SUCCESS);
  EXPECT_EQ(at[0], 'n');
  EXPECT_EQ(at[len - 1], 'n');
  EXPECT_EQ(at[len], 0) << "not one byte past the new range";
  EXPECT_EQ(at[-1], 0);
  at[7] = 'r';
  ASSERT_EQ(f.read(at, 64), IBV_WC_SUCCESS);
  EXPECT_EQ(f.abuf.p[7], 'r');
  at[5] = 's';
  ASSERT_EQ(f.send_from(at, 32), IBV_WC_SUCCESS);
  EXPECT_EQ(f.abuf.p[5], 's');
  // The old range is no longer registered: remotely, then locally (a new pair each: the
  // error moves the requester to ERR).
  EXPECT_EQ(f.write(old_buf.p, 64, 'x'), IBV_WC_REM_ACCESS_ERR);
  EXPECT_EQ(old_buf.p[0], 'o') << "the old memory is untouched";
}

TEST(Rereg, OldRangeFailsLocallyAfterAMove) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  Pages old_buf(2 * kPage), new_buf(2 * kPage);
  f.mr = ibv_reg_mr(f.p.pd, old_buf.p, old_buf.len, kAll);
  ASSERT_NE(f.mr, nullptr);
  ASSERT_EQ(f.send_from(old_buf.p, 16), IBV_WC_SUCCESS);
  ASSERT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, new_buf.p, new_buf.len, 0),
            0);
  EXPECT_EQ(f.send_from(old_buf.p, 16), IBV_WC_LOC_PROT_ERR);
}

// ---------------------------------------------------------------- access and PD
TEST(Rereg, NewAccessIsWhatThePeerGets) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  Pages buf(2 * kPage);
  f.mr = ibv_reg_mr(f.p.pd, buf.p, buf.len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  ASSERT_NE(f.mr, nullptr);
  const uint32_t rkey = f.mr->rkey;
  ASSERT_EQ(f.read(buf.p, 64), IBV_WC_SUCCESS);
  ASSERT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0, kAll), 0)
      << std::strerror(errno);
  EXPECT_EQ(f.mr->rkey, rkey);
  EXPECT_EQ(f.mr->addr, buf.p) << "the translation stays";
  ASSERT_EQ(f.write(buf.p, 64, 'a'), IBV_WC_SUCCESS);
  EXPECT_EQ(buf.p[63], 'a');
  // Remote read only: the WRITE that worked a moment ago is refused.
  ASSERT_EQ(
      ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0, IBV_ACCESS_REMOTE_READ),
      0);
  ASSERT_EQ(f.read(buf.p, 64), IBV_WC_SUCCESS);
  EXPECT_EQ(f.write(buf.p, 64, 'b'), IBV_WC_REM_ACCESS_ERR);
  EXPECT_EQ(buf.p[0], 'a');
}

TEST(Rereg, NewPdMovesTheRegionAndItsUse) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_pd* other = ibv_alloc_pd(f.p.ctx);
  ASSERT_NE(other, nullptr);
  Pages buf(2 * kPage);
  f.mr = ibv_reg_mr(other, buf.p, buf.len, kAll);
  ASSERT_NE(f.mr, nullptr);
  EXPECT_EQ(ibv_dealloc_pd(other), EBUSY);
  ASSERT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_PD, f.p.pd, nullptr, 0, 0), 0)
      << std::strerror(errno);
  EXPECT_EQ(f.mr->pd, f.p.pd);
  EXPECT_EQ(ibv_dealloc_pd(other), 0) << "the region no longer uses the old PD";
  ASSERT_EQ(f.write(buf.p, 64, 'p'), IBV_WC_SUCCESS);
  EXPECT_EQ(buf.p[0], 'p');
}

TEST(Rereg, RegionInAnotherPdIsUnreachableUntilMoved) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_pd* other = ibv_alloc_pd(f.p.ctx);
  ASSERT_NE(other, nullptr);
  Pages buf(2 * kPage);
  ibv_mr* mr = ibv_reg_mr(f.p.pd, buf.p, buf.len, kAll);
  ASSERT_NE(mr, nullptr);
  f.mr = mr;
  ASSERT_EQ(ibv_rereg_mr(mr, IBV_REREG_MR_CHANGE_PD, other, nullptr, 0, 0), 0);
  EXPECT_EQ(f.write(buf.p, 64, 'q'), IBV_WC_REM_ACCESS_ERR) << "the QPs' PD no longer has it";
  EXPECT_EQ(buf.p[0], 0);
  EXPECT_EQ(ibv_dereg_mr(mr), 0);
  f.mr = nullptr;
  EXPECT_EQ(ibv_dealloc_pd(other), 0);
}

TEST(Rereg, AllThreeAtOnce) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  ibv_pd* other = ibv_alloc_pd(f.p.ctx);
  ASSERT_NE(other, nullptr);
  Pages old_buf(kPage), new_buf(3 * kPage);
  f.mr = ibv_reg_mr(other, old_buf.p, old_buf.len, IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(f.mr, nullptr);
  const uint32_t rkey = f.mr->rkey;
  ASSERT_EQ(ibv_rereg_mr(f.mr,
                         IBV_REREG_MR_CHANGE_TRANSLATION | IBV_REREG_MR_CHANGE_PD |
                             IBV_REREG_MR_CHANGE_ACCESS,
                         f.p.pd, new_buf.p, new_buf.len, kAll),
            0)
      << std::strerror(errno);
  EXPECT_EQ(f.mr->rkey, rkey);
  EXPECT_EQ(f.mr->pd, f.p.pd);
  EXPECT_EQ(f.mr->addr, new_buf.p);
  ASSERT_EQ(f.write(new_buf.p + 2 * kPage, 64, 't'), IBV_WC_SUCCESS);
  EXPECT_EQ(new_buf.p[2 * kPage], 't');
  EXPECT_EQ(ibv_dealloc_pd(other), 0);
}

// ---------------------------------------------------------------- misuse
TEST(ReregMisuse, BadArgumentsAreEinvalAndLeaveTheRegionWorking) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  Pages buf(2 * kPage), other_buf(kPage);
  f.mr = ibv_reg_mr(f.p.pd, buf.p, buf.len, kAll);
  ASSERT_NE(f.mr, nullptr);
  const ibv_mr before = *f.mr;
  ibv_context* ctx2 = verbs_loop::open_dverbs();
  ASSERT_NE(ctx2, nullptr);
  ibv_pd* foreign = ibv_alloc_pd(ctx2);
  ASSERT_NE(foreign, nullptr);
  struct Case {
    const char* what;
    int flags;
    ibv_pd* pd;
    void* addr;
    size_t len;
    int access;
  } cases[] = {
      {"no flags", 0, nullptr, nullptr, 0, 0},
      {"unknown flag", IBV_REREG_MR_CHANGE_ACCESS | (1 << 3), nullptr, nullptr, 0, kAll},
      {"translation without an address", IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, nullptr, kPage,
       0},
      {"translation of length 0", IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, other_buf.p, 0, 0},
      {"translation wrapping the address space", IBV_REREG_MR_CHANGE_TRANSLATION, nullptr,
       reinterpret_cast<void*>(~uintptr_t(0) - 10), 100, 0},
      {"access without CHANGE_ACCESS", IBV_REREG_MR_CHANGE_PD, f.p.pd, nullptr, 0, kAll},
      {"remote write without local write", IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0,
       IBV_ACCESS_REMOTE_WRITE},
      {"unknown access bit", IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0, 1 << 15},
      {"a PD of another context", IBV_REREG_MR_CHANGE_PD, foreign, nullptr, 0, 0},
      {"a NULL PD", IBV_REREG_MR_CHANGE_PD, nullptr, nullptr, 0, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    errno = 0;
    EXPECT_EQ(ibv_rereg_mr(f.mr, c.flags, c.pd, c.addr, c.len, c.access), IBV_REREG_MR_ERR_INPUT);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(f.mr->addr, before.addr);
    EXPECT_EQ(f.mr->length, before.length);
    EXPECT_EQ(f.mr->pd, before.pd);
    EXPECT_EQ(f.mr->rkey, before.rkey);
  }
  errno = 0;
  EXPECT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0,
                         IBV_ACCESS_ON_DEMAND | IBV_ACCESS_LOCAL_WRITE),
            IBV_REREG_MR_ERR_INPUT);
  EXPECT_EQ(errno, EOPNOTSUPP);
  // A forged region (never registered).
  ibv_mr forged = before;
  EXPECT_EQ(ibv_rereg_mr(&forged, IBV_REREG_MR_CHANGE_ACCESS, nullptr, nullptr, 0, kAll),
            IBV_REREG_MR_ERR_INPUT);
  EXPECT_EQ(errno, EINVAL);
  // Unmapped memory as the new translation: refused by the pinning (embedded) or the
  // re-backing (daemon); the region stays.
  void* hole = mmap(nullptr, 2 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(hole, MAP_FAILED);
  munmap(hole, 2 * kPage);
  EXPECT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, hole, kPage, 0),
            IBV_REREG_MR_ERR_CMD);
  EXPECT_EQ(errno, EFAULT);
  EXPECT_EQ(f.mr->addr, before.addr);
  // Still registered as it was.
  ASSERT_EQ(f.write(buf.p + kPage, 64, 'k'), IBV_WC_SUCCESS);
  EXPECT_EQ(buf.p[kPage], 'k');
  EXPECT_EQ(ibv_dealloc_pd(foreign), 0);
  EXPECT_EQ(ibv_close_device(ctx2), 0);
}

TEST(ReregMisuse, RegionWithABoundWindowIsBusy) {
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());
  Pages buf(2 * kPage), new_buf(kPage);
  f.mr = ibv_reg_mr(f.p.pd, buf.p, buf.len, kAll | IBV_ACCESS_MW_BIND);
  ASSERT_NE(f.mr, nullptr);
  ibv_mw* mw = ibv_alloc_mw(f.p.pd, IBV_MW_TYPE_1);
  ASSERT_NE(mw, nullptr);
  ibv_mw_bind b{};
  b.send_flags = IBV_SEND_SIGNALED;
  b.bind_info = ibv_mw_bind_info{f.mr, addr_of(buf.p), kPage, IBV_ACCESS_REMOTE_WRITE};
  ASSERT_EQ(ibv_bind_mw(f.p.b, mw, &b), 0);
  ASSERT_EQ(wait_wc(f.p.cqb).status, IBV_WC_SUCCESS);
  EXPECT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, new_buf.p, kPage, 0),
            IBV_REREG_MR_ERR_CMD);
  EXPECT_EQ(errno, EBUSY);
  EXPECT_EQ(f.mr->addr, buf.p);
  ASSERT_EQ(f.write(buf.p, 64, 'w'), IBV_WC_SUCCESS) << "the region works as before";
  EXPECT_EQ(ibv_dealloc_mw(mw), 0);
  EXPECT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, new_buf.p, kPage, 0), 0)
      << "without the window it moves";
}

// ---------------------------------------------------------------- pinning
// As an unprivileged process (no CAP_IPC_LOCK) under a 256 KiB RLIMIT_MEMLOCK: a move is
// charged for its new pages before the old ones are uncharged.
TEST(ReregPinning, NewTranslationIsChargedAndTheOldUncharged) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &saved), 0);
  if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < 256 * 1024)
    GTEST_SKIP() << "the hard RLIMIT_MEMLOCK is below 256 KiB";
  const bool had_cap = set_ipc_lock(true);
  ASSERT_TRUE(set_ipc_lock(false));
  struct Restore {
    rlimit r;
    bool cap;
    ~Restore() {
      setrlimit(RLIMIT_MEMLOCK, &r);
      if (cap) set_ipc_lock(true);
    }
  } restore{saved, had_cap};
  Fix f;
  ASSERT_NO_FATAL_FAILURE(f.init());  // A's 32 KiB region is charged too
  rlimit lim = saved;
  lim.rlim_cur = 256 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &lim), 0);
  Pages a(64 * 1024), b(160 * 1024), big(512 * 1024), extra(56 * 1024);
  f.mr = ibv_reg_mr(f.p.pd, a.p, a.len, kAll);  // 32 + 64 = 96 KiB
  ASSERT_NE(f.mr, nullptr) << std::strerror(errno);
  // 96 + 512 KiB do not fit: ENOMEM, the region stays where it was.
  EXPECT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, big.p, big.len, 0),
            IBV_REREG_MR_ERR_CMD);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(f.mr->addr, a.p);
  // 96 + 160 = 256 KiB fit for the moment of the move; afterwards 32 + 160 = 192 are charged.
  ASSERT_EQ(ibv_rereg_mr(f.mr, IBV_REREG_MR_CHANGE_TRANSLATION, nullptr, b.p, b.len, 0), 0)
      << std::strerror(errno);
  // 56 KiB more fit only if the old 64 KiB were uncharged (192 + 56 = 248 KiB).
  ibv_mr* more = ibv_reg_mr(f.p.pd, extra.p, extra.len, IBV_ACCESS_LOCAL_WRITE);
  EXPECT_NE(more, nullptr) << std::strerror(errno);
  ibv_mr* one_more = ibv_reg_mr(f.p.pd, a.p, 16 * 1024, IBV_ACCESS_LOCAL_WRITE);
  EXPECT_EQ(one_more, nullptr) << "the limit still holds";
  EXPECT_EQ(errno, ENOMEM);
  if (one_more) ibv_dereg_mr(one_more);
  if (more) ibv_dereg_mr(more);
  ASSERT_EQ(f.write(b.p + b.len - 64, 64, 'c'), IBV_WC_SUCCESS);
  EXPECT_EQ(b.p[b.len - 1], 'c');
}

// ---------------------------------------------------------------- stores beside a registration
// A thread keeps incrementing two counters that share the first and the last page of a
// buffer registered and deregistered again and again: in daemon mode every registration
// moves those pages onto a new memfd (lib/pmd/remote/mem.cc), and the pages under the
// write fence (fence.h) keep every store. Every increment is there at the end, and the
// buffer's contents too. (Embedded, nothing moves; the test holds as well.)
TEST(RegNeighbours, StoresOnTheBuffersPagesDuringRegistrationAreKept) {
  RcPair p;
  ASSERT_NO_FATAL_FAILURE(p.init());
  Pages pages(4 * kPage);
  ASSERT_NE(pages.p, nullptr);
  auto* head = new (pages.p) std::atomic<uint64_t>(0);              // first page
  auto* tail = new (pages.p + 3 * kPage + 2048) std::atomic<uint64_t>(0);  // last page
  char* buf = pages.p + 256;
  const size_t len = 3 * kPage + 1024;  // ends 768 bytes before `tail`
  for (size_t i = 0; i < len; ++i) buf[i] = char(i * 13);
  std::atomic<bool> stop{false};
  uint64_t stores = 0;
  std::thread writer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      head->fetch_add(1, std::memory_order_relaxed);
      tail->fetch_add(1, std::memory_order_relaxed);
      ++stores;
    }
  });
  int registered = 0;
  for (int i = 0; i < 100; ++i) {
    ibv_mr* mr = ibv_reg_mr(p.pd, buf, len, IBV_ACCESS_LOCAL_WRITE);
    if (!mr) break;
    ++registered;
    ibv_dereg_mr(mr);
  }
  stop = true;
  writer.join();
  EXPECT_EQ(registered, 100) << std::strerror(errno);
  EXPECT_EQ(head->load(), stores);
  EXPECT_EQ(tail->load(), stores);
  size_t wrong = 0;
  for (size_t i = 0; i < len; ++i) wrong += buf[i] != char(i * 13);
  EXPECT_EQ(wrong, 0u);
}

}  // namespace
