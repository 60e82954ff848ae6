// Reentrancy of the control verbs on the soft HCA (core_locking.rst P5: "all methods
// ... must be reentrant"), suite `stress` (also under ASan and TSan), registered twice:
// inline progress (DVERBS_LCORES=0) and one dedicated transport lcore (DVERBS_LCORES=1).
//
// ConcurrentControlVerbsOnSharedObjects: threads make control calls on shared objects at
// the same time:
// - modify_qp from two threads and query_qp from a third on one RC QP: every modify returns
//   0 or EINVAL (a transition the other thread made illegal; to RESET and to ERR are legal
//   from every state and always return 0), every query returns 0 and a consistent snapshot
//   of one of the states the modifiers produce;
// - reg_mr / dereg_mr from two threads on one PD: never two live regions with one key;
// - create_qp / destroy_qp from two threads on that PD and one CQ: never two live QPs with
//   one number;
// - query_device / query_port / query_gid throughout.
// Afterwards nothing leaks: the PD and CQ use counts are back, no key or QP number handed
// out is still published, the PD and CQ destroy with 0, and the raced-on QP still connects
// and carries a SEND.
//
// CreateAndDestroyAhOnOnePd: create_ah / destroy_ah from four threads on one PD (and MR
// registrations on it): every create succeeds, and the whole AH pool is free afterwards.
//
// Every loop is bounded by an iteration count, never by time. Sanitizer builds run fewer
// iterations (TSan is ~10x slower).
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"
#include "pmd/hca/device.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define DVERBS_CONTROL_RACE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define DVERBS_CONTROL_RACE_SANITIZED 1
#endif
#endif

namespace dverbs::stress {
namespace {

#ifdef DVERBS_CONTROL_RACE_SANITIZED
constexpr int kScale = 10;
#else
constexpr int kScale = 1;
#endif
constexpr int kModifyIters = 30000 / kScale;  // RESET→INIT→RTR→RTS cycles per modifier
constexpr int kQueryIters = 200000 / kScale;
constexpr int kMrIters = 20000 / kScale;     // rounds of kMrBatch registrations
constexpr int kMrBatch = 4;
constexpr int kQpIters = 6000 / kScale;
constexpr int kAhIters = 30000 / kScale;      // rounds of kAhBatch AHs
constexpr int kAhBatch = 8;

constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read |
                          access::remote_atomic;
// The access flags each modifier sets at INIT: a query in INIT/RTR/RTS sees one of them.
constexpr uint32_t kFlags[2] = {kAll, access::local_write | access::remote_read};
constexpr uint32_t kRqPsn = 0x123;
constexpr uint32_t kSqPsn = 0x456;

struct World {
  Context ctx;
  Gid gid{};
  pmd::hca::Device* hca = nullptr;
  static World& get() {
    static World* w = [] {
      setenv("DVERBS_LCORES", "0", 0);  // unless the registration chose
      auto* x = new World();            // lives for the process, like the device
      auto c = Context::open();
      if (!c) {
        ADD_FAILURE() << "Context::open: " << std::strerror(c.error());
        return x;
      }
      x->ctx = c.take();
      x->ctx.query_gid(1, 0, &x->gid);
      x->hca = static_cast<pmd::hca::Device*>(x->ctx.raw());
      return x;
    }();
    return *w;
  }
};

namespace m = qp_attr_mask;

int to_reset(Qp& qp) {
  QpAttr a;
  a.qp_state = QpState::reset;
  return qp.modify(a, m::state);
}
int to_err(Qp& qp) {
  QpAttr a;
  a.qp_state = QpState::err;
  return qp.modify(a, m::state);
}
int to_init(Qp& qp, uint32_t flags) {
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.qp_access_flags = flags;
  return qp.modify(a, m::state | m::pkey_index | m::port | m::access_flags);
}
int to_rtr(Qp& qp, const Gid& gid, uint32_t dest_qpn, uint32_t rq_psn = kRqPsn) {
  QpAttr a;
  a.qp_state = QpState::rtr;
  a.path_mtu = Mtu::mtu1024;
  a.dest_qp_num = dest_qpn;
  a.rq_psn = rq_psn;
  a.max_dest_rd_atomic = 4;
  a.min_rnr_timer = 12;
  a.ah_attr.dgid = gid;
  return qp.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                          m::max_dest_rd_atomic | m::min_rnr_timer);
}
int to_rts(Qp& qp, uint32_t sq_psn = kSqPsn) {
  QpAttr a;
  a.qp_state = QpState::rts;
  a.sq_psn = sq_psn;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = 4;
  return qp.modify(a, m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry |
                          m::max_qp_rd_atomic);
}

bool one_of_flags(uint32_t f) {
  return f == kFlags[0] || f == kFlags[1];
}

// What a query may see while the modifiers run: a whole state, never a torn one. RESET
// clears every attribute; INIT comes only from RESET (or INIT); RTR only from INIT; RTS
// only from RTR; ERR from anything.
::testing::AssertionResult consistent(const QpAttr& a, uint32_t dest_qpn) {
  auto bad = [&](const char* why) {
    return ::testing::AssertionFailure()
           << why << ": state " << int(a.qp_state) << " access " << a.qp_access_flags
           << " dest " << a.dest_qp_num << " rq_psn " << a.rq_psn << " sq_psn " << a.sq_psn;
  };
  if (a.cur_qp_state != a.qp_state) return bad("cur_qp_state differs");
  switch (a.qp_state) {
    case QpState::reset:
      if (a.qp_access_flags || a.dest_qp_num || a.rq_psn || a.sq_psn) return bad("dirty RESET");
      break;
    case QpState::init:
      if (!one_of_flags(a.qp_access_flags) || a.dest_qp_num || a.rq_psn || a.sq_psn)
        return bad("torn INIT");
      break;
    case QpState::rtr:
      if (!one_of_flags(a.qp_access_flags) || a.dest_qp_num != dest_qpn || a.rq_psn != kRqPsn ||
          a.sq_psn)
        return bad("torn RTR");
      break;
    case QpState::rts:
      if (!one_of_flags(a.qp_access_flags) || a.dest_qp_num != dest_qpn || a.rq_psn != kRqPsn ||
          a.sq_psn != kSqPsn)
        return bad("torn RTS");
      break;
    case QpState::err:
      break;
    default:
      return bad("unexpected state");
  }
  return ::testing::AssertionSuccess();
}

// Unexpected results of the worker threads: all counted, the first few reported in
// detail (a broken build would otherwise print a line per iteration).
class Failures {
 public:
  class Msg {
   public:
    explicit Msg(Failures* f) : f_(f) {}
    Msg(const Msg&) = delete;
    ~Msg() {
      if (f_->n_++ < 10) ADD_FAILURE() << os_.str();
    }
    template <class T>
    Msg& operator<<(const T& v) {
      os_ << v;
      return *this;
    }

   private:
    Failures* f_;
    std::ostringstream os_;
  };
  Msg add() { return Msg(this); }
  int count() const { return n_.load(); }

 private:
  std::atomic<int> n_{0};
};

bool ok_or_einval(int rc) {
  return rc == 0 || rc == EINVAL;
}

// Polls one completion, at most `spins` polls.
bool poll_one(Cq& cq, Wc* wc, long spins = 50'000'000L) {
  for (long i = 0; i < spins; i++) {
    int n = cq.poll(wc, 1);
    if (n == 1) return true;
    if (n < 0) return false;
  }
  return false;
}

TEST(ControlRace, ConcurrentControlVerbsOnSharedObjects) {
  World& w = World::get();
  ASSERT_NE(w.hca, nullptr);
  auto p = Pd::alloc(w.ctx);
  ASSERT_TRUE(p) << std::strerror(p.error());
  Pd pd = p.take();
  auto c = Cq::create(w.ctx, 256);
  ASSERT_TRUE(c) << std::strerror(c.error());
  Cq cq = c.take();
  QpInit init;
  init.cap = {16, 16, 1, 1, 0};
  auto q = Qp::create(pd, cq, cq, init);
  ASSERT_TRUE(q) << std::strerror(q.error());
  Qp shared = q.take();
  const uint32_t self = shared.qp_num();
  const uint32_t pd_uses = pd.raw()->usecnt.load();
  const uint32_t cq_uses = cq.raw()->usecnt.load();
  EXPECT_EQ(pd_uses, 1u);
  EXPECT_EQ(cq_uses, 2u);  // send and receive side

  // Keys and QP numbers live now, by table slot: a second live holder of a slot is a race
  // in the allocator. last_* remember what each slot last handed out, for the leak check.
  auto mr_live = std::make_unique<std::atomic<uint8_t>[]>(pmd::hca::kMaxMr);
  auto mr_last = std::make_unique<std::atomic<uint32_t>[]>(pmd::hca::kMaxMr);
  auto qp_live = std::make_unique<std::atomic<uint8_t>[]>(pmd::hca::kMaxQp);
  auto qp_last = std::make_unique<std::atomic<uint32_t>[]>(pmd::hca::kMaxQp);
  for (uint32_t i = 0; i < pmd::hca::kMaxMr; i++) mr_live[i] = 0, mr_last[i] = 0;
  for (uint32_t i = 0; i < pmd::hca::kMaxQp; i++) qp_live[i] = 0, qp_last[i] = 0;
  auto mr_slot = [](uint32_t key) { return key >> 8 & (pmd::hca::kMaxMr - 1); };
  auto qp_slot = [](uint32_t qpn) { return qpn & (pmd::hca::kMaxQp - 1); };
  qp_live[qp_slot(self)] = 1;

  Failures bad;
  std::atomic<long> init_ok{0}, rts_ok{0}, refused{0};
  std::atomic<long> seen[5] = {};  // states the querier saw: RESET, INIT, RTR, RTS, ERR
  std::atomic<int> modifiers_left{2};
  std::vector<std::thread> threads;
  // Start gate: every thread begins its loop together (bounded wait), so the loops overlap
  // instead of each running alone in the time the next thread takes to start.
  constexpr int kThreads = 7;
  std::atomic<int> ready{0};
  auto gate = [&ready] {
    ready++;
    for (long i = 0; i < 100'000'000L && ready.load() < kThreads; i++) std::this_thread::yield();
  };

  // modify_qp || modify_qp || query_qp on one QP.
  for (int k = 0; k < 2; k++)
    threads.emplace_back([&, k] {
      gate();
      for (int i = 0; i < kModifyIters; i++) {
        int rc = to_reset(shared);
        if (rc != 0) bad.add() << "to RESET: " << rc;
        rc = to_init(shared, kFlags[k]);
        if (!ok_or_einval(rc)) bad.add() << "to INIT: " << rc;
        if (rc == 0) init_ok++;
        if (rc == EINVAL) refused++;
        rc = to_rtr(shared, w.gid, self);
        if (!ok_or_einval(rc)) bad.add() << "to RTR: " << rc;
        if (rc == EINVAL) refused++;
        rc = to_rts(shared);
        if (!ok_or_einval(rc)) bad.add() << "to RTS: " << rc;
        if (rc == 0) rts_ok++;
        if (rc == EINVAL) refused++;
        if (i % 4 == k) {
          rc = to_err(shared);
          if (rc != 0) bad.add() << "to ERR: " << rc;
        }
        // Lets the other modifier and the querier in between cycles (a mutex handed back
        // to the same running thread would otherwise keep the two loops apart).
        std::this_thread::yield();
      }
      modifiers_left--;
    });
  threads.emplace_back([&] {
    gate();
    // Queries for as long as the modifiers run (at most kQueryIters).
    for (int i = 0; i < kQueryIters && modifiers_left.load() > 0; i++) {
      QpAttr a;
      mid::QpInitAttr qi;
      int rc = mid::query_qp(shared.raw(), &a, ~0u, &qi);
      if (rc != 0) {
        bad.add() << "query_qp: " << rc;
        continue;
      }
      auto r = consistent(a, self);
      if (!r) bad.add() << r.message();
      if (uint32_t(a.qp_state) < 5) seen[uint32_t(a.qp_state)]++;
      if (qi.qp_type != QpType::rc || qi.send_cq != cq.raw() || qi.recv_cq != cq.raw() ||
          qi.srq != nullptr || a.cap.max_send_wr != 16 || a.cap.max_recv_wr != 16)
        bad.add() << "query_qp: wrong creation attributes";
      if (i % 16 == 0) {
        DeviceAttr da;
        PortAttr pa;
        Gid g;
        if (w.ctx.query_device(&da) != 0 || w.ctx.query_port(1, &pa) != 0 ||
            w.ctx.query_gid(1, 0, &g) != 0 || std::memcmp(g.raw, w.gid.raw, 16) != 0)
          bad.add() << "device query failed";
      }
    }
  });

  // reg_mr || dereg_mr on one PD.
  for (int k = 0; k < 2; k++)
    threads.emplace_back([&, k] {
      gate();
      std::vector<uint8_t> buf(kMrBatch * 4096);
      for (int i = 0; i < kMrIters; i++) {
        Mr mrs[kMrBatch];
        for (int j = 0; j < kMrBatch; j++) {
          uint8_t* a = buf.data() + j * 4096;
          const size_t len = 64 + size_t(j + k) * 512;
          auto r = Mr::reg(pd, a, len, j % 2 ? kAll : access::local_write);
          if (!r) {
            bad.add() << "reg_mr: " << r.error();
            continue;
          }
          mrs[j] = r.take();
          const uint32_t key = mrs[j].lkey();
          if (key == 0 || mrs[j].rkey() != key || mrs[j].addr() != uint64_t(uintptr_t(a)) ||
              mrs[j].length() != len)
            bad.add() << "reg_mr: wrong attributes, key " << key;
          if (mr_live[mr_slot(key)].exchange(1) != 0)
            bad.add() << "key slot handed out twice: " << key;
          mr_last[mr_slot(key)] = key;
          if (w.hca->mr_lookup(key) != static_cast<pmd::hca::Mr*>(mrs[j].raw()))
            bad.add() << "key not published: " << key;
        }
        // Release in another order than taken; the slot is cleared before the dereg that
        // frees it (after the dereg another thread may get it).
        for (int j = kMrBatch - 1; j >= 0; j--) {
          if (!mrs[j].raw()) continue;
          mr_live[mr_slot(mrs[j].lkey())] = 0;
          if (int rc = mrs[j].destroy()) bad.add() << "dereg_mr: " << rc;
        }
      }
    });

  // create_qp || destroy_qp on that PD and CQ (which the raced-on QP also uses).
  for (int k = 0; k < 2; k++)
    threads.emplace_back([&] {
      gate();
      for (int i = 0; i < kQpIters; i++) {
        QpInit qi;
        qi.cap = {8, 8, 1, 1, 0};
        qi.type = i % 3 == 0 ? QpType::ud : QpType::rc;
        auto r = Qp::create(pd, cq, cq, qi);
        if (!r) {
          bad.add() << "create_qp: " << r.error();
          continue;
        }
        Qp qp = r.take();
        const uint32_t qpn = qp.qp_num();
        if (qp_live[qp_slot(qpn)].exchange(1) != 0)
          bad.add() << "QP number slot handed out twice: " << qpn;
        qp_last[qp_slot(qpn)] = qpn;
        if (w.hca->qp_lookup(qpn) != static_cast<pmd::hca::Qp*>(qp.raw()))
          bad.add() << "QP not published: " << qpn;
        if (qp.state() != QpState::reset) bad.add() << "new QP not in RESET";
        if (qi.type == QpType::rc) {
          if (int rc = to_init(qp, kAll)) bad.add() << "own QP to INIT: " << rc;
          if (i % 2)
            if (int rc = to_err(qp)) bad.add() << "own QP to ERR: " << rc;
        }
        qp_live[qp_slot(qpn)] = 0;
        if (int rc = qp.destroy()) bad.add() << "destroy_qp: " << rc;
      }
    });

  ASSERT_EQ(threads.size(), size_t(kThreads));
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.count(), 0);
  EXPECT_GT(init_ok.load(), 0);
  EXPECT_GT(rts_ok.load(), 0);
  // How much the modifiers really raced (transitions the other one made illegal) and what
  // the querier saw: informative, since scheduling decides it.
  RecordProperty("init_ok", std::to_string(init_ok.load()));
  RecordProperty("rts_ok", std::to_string(rts_ok.load()));
  RecordProperty("refused", std::to_string(refused.load()));
  std::string states;
  for (auto& n : seen) states += std::to_string(n.load()) + " ";
  RecordProperty("queried_reset_init_rtr_rts_err", states);
  std::printf("modify: %ld INIT, %ld RTS, %ld refused; query saw RESET/INIT/RTR/RTS/ERR: %s\n",
              init_ok.load(), rts_ok.load(), refused.load(), states.c_str());

  // Nothing leaked: use counts back, no key or QP number still published.
  EXPECT_EQ(pd.raw()->usecnt.load(), pd_uses);
  EXPECT_EQ(cq.raw()->usecnt.load(), cq_uses);
  int published = 0;
  for (uint32_t i = 0; i < pmd::hca::kMaxMr; i++)
    if (uint32_t key = mr_last[i].load(); key && w.hca->mr_lookup(key)) published++;
  for (uint32_t i = 0; i < pmd::hca::kMaxQp; i++)
    if (uint32_t qpn = qp_last[i].load(); qpn && w.hca->qp_lookup(qpn)) published++;
  EXPECT_EQ(published, 0) << "MRs or QPs still published after their destroy returned";
  // The raced-on QP is intact: it connects to a fresh peer and carries a SEND.
  {
    Qp peer = Qp::create(pd, cq, cq, init).take();
    ASSERT_EQ(to_reset(shared), 0);
    ASSERT_EQ(to_init(shared, kAll), 0);
    ASSERT_EQ(to_rtr(shared, w.gid, peer.qp_num(), 7), 0);
    ASSERT_EQ(to_rts(shared, 9), 0);
    ASSERT_EQ(to_init(peer, kAll), 0);
    ASSERT_EQ(to_rtr(peer, w.gid, self, 9), 0);
    ASSERT_EQ(to_rts(peer, 7), 0);
    std::vector<uint8_t> buf(256);
    for (int i = 0; i < 128; i++) buf[size_t(i)] = uint8_t(i * 5 + 1);
    Mr mr = Mr::reg(pd, buf.data(), buf.size(), kAll).take();
    Sge r{reinterpret_cast<uint64_t>(buf.data()) + 128, 128, mr.lkey()};
    RecvWr rw{};
    rw.wr_id = 2;
    rw.sg_list = &r;
    rw.num_sge = 1;
    RecvWr* rbad;
    ASSERT_EQ(peer.post_recv(&rw, &rbad), 0);
    Sge s{reinterpret_cast<uint64_t>(buf.data()), 128, mr.lkey()};
    SendWr sw{};
    sw.wr_id = 1;
    sw.opcode = WrOpcode::send;
    sw.sg_list = &s;
    sw.num_sge = 1;
    sw.send_flags = send_flags::signaled;
    SendWr* sbad;
    ASSERT_EQ(shared.post_send(&sw, &sbad), 0);
    for (int i = 0; i < 2; i++) {
      Wc wc;
      ASSERT_TRUE(poll_one(cq, &wc)) << "no completion";
      EXPECT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
    }
    EXPECT_EQ(std::memcmp(buf.data(), buf.data() + 128, 128), 0);
    EXPECT_EQ(mr.destroy(), 0);
    EXPECT_EQ(peer.destroy(), 0);
  }

  EXPECT_EQ(shared.destroy(), 0);
  EXPECT_EQ(cq.raw()->usecnt.load(), 0u);
  EXPECT_EQ(pd.raw()->usecnt.load(), 0u);
  EXPECT_EQ(cq.destroy(), 0);
  EXPECT_EQ(pd.destroy(), 0);
}


// create_ah || destroy_ah from several threads on one PD (any context, never sleeps; the
// driver takes AHs from a preallocated pool of kMaxAh), while another thread registers
// and deregisters MRs on that PD. At most kAhThreads * kAhBatch AHs are ever in use, so
// every create_ah must succeed; afterwards the whole pool is free again.
TEST(ControlRace, CreateAndDestroyAhOnOnePd) {
  World& w = World::get();
  ASSERT_NE(w.hca, nullptr);
  auto p = Pd::alloc(w.ctx);
  ASSERT_TRUE(p) << std::strerror(p.error());
  Pd pd = p.take();
  constexpr int kAhThreads = 4;
  constexpr int kThreads = kAhThreads + 1;
  Failures bad;
  std::atomic<int> ready{0};
  auto gate = [&ready] {
    ready++;
    for (long i = 0; i < 100'000'000L && ready.load() < kThreads; i++) std::this_thread::yield();
  };
  std::atomic<int> ah_left{kAhThreads};
  std::vector<std::thread> threads;
  for (int k = 0; k < kAhThreads; k++)
    threads.emplace_back([&] {
      gate();
      AhAttr attr;
      attr.dgid = w.gid;
      for (int i = 0; i < kAhIters; i++) {
        mid::Ah* ahs[kAhBatch] = {};
        for (auto& ah : ahs)
          if (int rc = mid::create_ah(pd.raw(), &attr, &ah)) {
            bad.add() << "create_ah: " << rc << " with at most "
                                   << kAhThreads * kAhBatch << " of " << pmd::hca::kMaxAh
                                   << " AHs in use";
            ah = nullptr;
          } else if (ah->pd != pd.raw()) {
            bad.add() << "create_ah: wrong PD";
          }
        for (auto* ah : ahs)
          if (ah)
            if (int rc = mid::destroy_ah(ah)) bad.add() << "destroy_ah: " << rc;
      }
      ah_left--;
    });
  threads.emplace_back([&] {
    gate();
    std::vector<uint8_t> buf(4096);
    for (int i = 0; i < kMrIters * kMrBatch && ah_left.load() > 0; i++) {
      auto r = Mr::reg(pd, buf.data(), buf.size(), access::local_write);
      if (!r) {
        bad.add() << "reg_mr: " << r.error();
        continue;
      }
      if (int rc = r->destroy()) bad.add() << "dereg_mr: " << rc;
    }
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.count(), 0);
  EXPECT_EQ(pd.raw()->usecnt.load(), 0u);
  const uint32_t pd_uses = 0;
  // The whole AH pool is free again: exactly kMaxAh AHs can be created, then ENOMEM.
  {
    AhAttr attr;
    attr.dgid = w.gid;
    std::vector<mid::Ah*> all;
    all.reserve(pmd::hca::kMaxAh);
    int rc = 0;
    for (uint32_t i = 0; i <= pmd::hca::kMaxAh && rc == 0; i++) {
      mid::Ah* ah = nullptr;
      rc = mid::create_ah(pd.raw(), &attr, &ah);
      if (rc == 0) all.push_back(ah);
    }
    EXPECT_EQ(all.size(), size_t(pmd::hca::kMaxAh)) << "AHs leaked from the pool";
    EXPECT_EQ(rc, ENOMEM);
    for (auto* ah : all) EXPECT_EQ(mid::destroy_ah(ah), 0);
    EXPECT_EQ(pd.raw()->usecnt.load(), pd_uses);
  }

  EXPECT_EQ(pd.destroy(), 0);
}

}  // namespace
}  // namespace dverbs::stress
