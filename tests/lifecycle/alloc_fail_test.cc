// Allocation failure injected into every create path (suite `stress`; run it under ASan for
// LeakSanitizer): this binary replaces the global operator new/delete with counting versions
// that fail the Nth allocation of the calling thread when armed. For N = 1, 2, … each create
// path runs with its Nth allocation failing, until a run needs fewer than N allocations.
// Asserted for every N:
//   - the create returns ENOMEM (or succeeds if it recovered), never throws, never crashes;
//   - no half-built object stays reachable: the PD's and CQs' use counts and the engine's QP
//     count are unchanged after a failure, and a create that succeeded yields a working
//     object;
//   - nothing leaks: the number of live allocations is back to its value before the call
//     once the object (if any) is destroyed.
// And the fast path allocates nothing: post_send, post_recv and poll_cq with a pair
// exchanging traffic make zero allocations.
#include <atomic>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>

#include "common.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/net/lcore.h"

namespace {

// ---- the counting, failing allocator ----
std::atomic<long> g_live{0};        // allocations not yet freed (every thread)
thread_local long t_fail_at = 0;    // fail the Nth allocation of this thread (0: never,
                                    // -1: count only)
thread_local long t_count = 0;      // allocations of this thread since arm()
thread_local bool t_failed = false;

bool fail_now() {
  if (t_fail_at == 0) return false;
  if (++t_count != t_fail_at) return false;
  if (t_fail_at < 0) return false;  // counting only
  t_failed = true;
  return true;
}

void* counted(size_t n, size_t align) {
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n ? n : 1);
  } else if (posix_memalign(&p, align, n ? n : 1) != 0) {
    p = nullptr;
  }
  if (p) g_live.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void release(void* p) {
  if (!p) return;
  g_live.fetch_sub(1, std::memory_order_relaxed);
  std::free(p);
}

void* throwing(size_t n, size_t align) {
  if (fail_now()) throw std::bad_alloc();
  void* p = counted(n, align);
  if (!p) throw std::bad_alloc();
  return p;
}

void* nothrowing(size_t n, size_t align) noexcept {
  if (fail_now()) return nullptr;
  return counted(n, align);
}

}  // namespace

void* operator new(size_t n) { return throwing(n, 0); }
void* operator new[](size_t n) { return throwing(n, 0); }
void* operator new(size_t n, std::align_val_t a) { return throwing(n, size_t(a)); }
void* operator new[](size_t n, std::align_val_t a) { return throwing(n, size_t(a)); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return nothrowing(n, 0); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return nothrowing(n, 0); }
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return nothrowing(n, size_t(a));
}
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return nothrowing(n, size_t(a));
}
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, size_t) noexcept { release(p); }
void operator delete[](void* p, size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  release(p);
}

namespace dverbs::pmd::hca {
// Test peer of Device (friend, device.h): stops the inline-progress helper so that no other
// thread allocates or frees while a create path is measured.
struct DeviceTestPeer {
  static void stop_inline_helper(Device& d) {
    if (d.inline_helper_) d.inline_helper_->stop();
  }
};
}  // namespace dverbs::pmd::hca

namespace dverbs::lifecycle {
namespace {

struct Armed {
  explicit Armed(long n) {
    t_fail_at = n;
    t_count = 0;
    t_failed = false;
  }
  ~Armed() { t_fail_at = 0; }
};

// One create path: creates the object, checks it works, destroys it; returns the errno of
// the create (0 on success).
using CreatePath = std::function<int()>;

class AllocFailure : public ::testing::Test {
 protected:
  World& w = World::get();
  pmd::hca::Device& dev() { return *static_cast<pmd::hca::Device*>(w.ctx.raw()); }
  Cq cq;
  std::vector<uint8_t> mem = std::vector<uint8_t>(1 << 16);

  void SetUp() override {
    static bool stopped = false;
    if (!stopped) pmd::hca::DeviceTestPeer::stop_inline_helper(dev());
    stopped = true;
    cq = Cq::create(w.ctx, 64).take();
  }

  uint32_t qp_count() {
    uint32_t n = 0;
    for (size_t i = 0; i < dev().engine_count(); i++) n += dev().engine(i).qp_count();
    return n;
  }

  // Runs `path` with its Nth allocation failing, N = 1, 2, … until it needs fewer.
  void sweep(const char* name, const CreatePath& path) {
    for (long n = 1; n < 10000; n++) {
      SCOPED_TRACE(std::string(name) + ", failing allocation " + std::to_string(n));
      const long live = g_live.load();
      const uint32_t pd_use = w.pd.raw()->usecnt.load();
      const uint32_t cq_use = cq.raw()->usecnt.load();
      const uint32_t qps = qp_count();
      int rc = -1;
      bool injected = false;
      try {
        Armed armed(n);
        rc = path();
        injected = t_failed;
      } catch (const std::exception& e) {
        // The C++ API returns errors as Expected<T>; an exception across it is a bug.
        ADD_FAILURE() << "an exception escaped from the create: " << e.what();
        injected = true;
        rc = ENOMEM;
      }
      EXPECT_TRUE(rc == 0 || rc == ENOMEM) << std::strerror(rc);
      if (!injected) {
        EXPECT_EQ(rc, 0) << "failed with no allocation failing";
      }
      EXPECT_EQ(w.pd.raw()->usecnt.load(), pd_use) << "a PD reference leaked";
      EXPECT_EQ(cq.raw()->usecnt.load(), cq_use) << "a CQ reference leaked";
      EXPECT_EQ(qp_count(), qps) << "a QP stayed installed on its engine";
      EXPECT_EQ(g_live.load(), live) << "allocations leaked";
      if (!injected) return;  // the path needs fewer than n allocations: all covered
    }
    ADD_FAILURE() << name << " never completed";
  }
};

TEST_F(AllocFailure, PdAlloc) {
  sweep("Pd::alloc", [&] {
    auto p = Pd::alloc(w.ctx);
    return p ? 0 : p.error();
  });
}

TEST_F(AllocFailure, MrReg) {
  sweep("Mr::reg", [&] {
    auto m = Mr::reg(w.pd, mem.data(), mem.size(), kAll);
    if (!m) return m.error();
    EXPECT_NE(m->lkey(), 0u);
    return 0;
  });
}

TEST_F(AllocFailure, QpCreate) {
  for (QpType t : {QpType::rc, QpType::uc, QpType::ud}) {
    sweep("Qp::create", [&, t] {
      QpInit init;
      init.type = t;
      auto q = Qp::create(w.pd, cq, cq, init);
      if (!q) return q.error();
      QpAttr a;
      a.qp_state = QpState::init;
      a.port_num = 1;
      a.qkey = 1;
      namespace m = qp_attr_mask;
      EXPECT_EQ(q->modify(a, m::state | m::pkey_index | m::port |
                                 (t == QpType::ud ? m::qkey : m::access_flags)),
                0)
          << "a created QP works";
      return 0;
    });
  }
}

TEST_F(AllocFailure, QpCreateWithAnSrq) {
  Srq srq = Srq::create(w.pd, 64, 1).take();
  sweep("Qp::create with an SRQ", [&] {
    QpInit init;
    init.srq = &srq;
    auto q = Qp::create(w.pd, cq, cq, init);
    return q ? 0 : q.error();
  });
}

TEST_F(AllocFailure, MwAlloc) {
  for (uint32_t type : {1u, 2u}) {
    sweep("Mw::alloc", [&, type] {
      auto m = Mw::alloc(w.pd, type);
      return m ? 0 : m.error();
    });
  }
}

TEST_F(AllocFailure, AhCreate) {
  sweep("Ah::create", [&] {
    AhAttr a;
    a.dgid = w.gid;
    auto ah = Ah::create(w.pd, a);
    return ah ? 0 : ah.error();
  });
}

// Cq::create and Srq::create allocate their C++ state: a failed allocation is ENOMEM, never
// a std::bad_alloc escaping the Expected<T> API (a regression test).
TEST_F(AllocFailure, CqCreate) {
  sweep("Cq::create", [&] {
    auto c = Cq::create(w.ctx, 128);
    if (!c) return c.error();
    Wc wc;
    EXPECT_EQ(c->poll(&wc, 1), 0);
    return 0;
  });
  sweep("Cq::create with a handler", [&] {
    auto c = Cq::create(w.ctx, 128, [](Cq&) {});
    if (!c) return c.error();
    EXPECT_EQ(c->req_notify(), 0);
    return 0;
  });
}

TEST_F(AllocFailure, SrqCreate) {
  sweep("Srq::create", [&] {
    auto s = Srq::create(w.pd, 64, 2, 0, [](EventType) {});
    return s ? 0 : s.error();
  });
}

TEST_F(AllocFailure, TheFastPathNeverAllocates) {
  Cq cq2 = Cq::create(w.ctx, 256).take();
  QpInit init;
  Qp a = Qp::create(w.pd, cq2, cq2, init).take();
  Qp b = Qp::create(w.pd, cq2, cq2, init).take();
  ASSERT_EQ(connect_rc(a, w.gid, b.qp_num(), 1, 2), 0);
  ASSERT_EQ(connect_rc(b, w.gid, a.qp_num(), 2, 1), 0);
  Mr mr = Mr::reg(w.pd, mem.data(), mem.size(), kAll).take();
  // Warm up (first-use allocations of the event machinery are not the fast path).
  ASSERT_TRUE(device_still_works());
  for (int round = 0; round < 50; round++) {
    Sge r{reinterpret_cast<uint64_t>(mem.data()) + 4096, 1024, mr.lkey()};
    RecvWr rw{};
    rw.sg_list = &r;
    rw.num_sge = 1;
    Sge s{reinterpret_cast<uint64_t>(mem.data()), 1024, mr.lkey()};
    SendWr sw{};
    sw.opcode = WrOpcode::send;
    sw.sg_list = &s;
    sw.num_sge = 1;
    sw.send_flags = send_flags::signaled;
    SendWr wsw = sw;
    wsw.opcode = WrOpcode::rdma_write;
    wsw.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(mem.data()) + 8192;
    wsw.wr.rdma.rkey = mr.rkey();
    int got = 0;
    {
      Armed armed(-1);  // count this thread's allocations
      RecvWr* rbad;
      SendWr* sbad;
      EXPECT_EQ(b.post_recv(&rw, &rbad), 0);
      EXPECT_EQ(a.post_send(&sw, &sbad), 0);
      EXPECT_EQ(a.post_send(&wsw, &sbad), 0);
      Wc wc[4];
      for (long i = 0; i < 50'000'000L && got < 3; i++) got += cq2.poll(wc, 4);
      EXPECT_EQ(t_count, 0) << "the fast path allocated";
    }
    ASSERT_EQ(got, 3);
  }
}

}  // namespace
}  // namespace dverbs::lifecycle
