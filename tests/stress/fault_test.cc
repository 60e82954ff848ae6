// Mixed RC traffic under the fault profile of DVERBS_FAULT (meson registers this executable
// once per profile: the spec is read once, when the device is created).
//
// 16 RC QP pairs on the loopback port, traffic in both directions of every pair, path MTU
// 256…4096 across the pairs, messages of 0 B … 64 KiB: SEND (some inline, some with
// immediate), RDMA WRITE (some with immediate), RDMA READ, fetch-and-add and
// compare-and-swap, up to 16 WRs outstanding per QP (max_rd_atomic 16), PSNs crossing the
// 24-bit wrap. Asserted:
// - 0 corrupt bytes: every received SEND payload, every WRITE target and every READ result
//   equals its pattern, and the bytes just past each receive/READ buffer are untouched;
// - every WR completes exactly once, in order per QP, with success: each QP's completions
//   carry exactly the wr_id sequence 0, 1, 2, … and nothing shows up afterwards; receives
//   likewise, with the right opcode, length and immediate;
// - fetch-and-add returns the exact running sum, compare-and-swap chains return exactly k,
//   and the counters end exact (per QP and one counter every QP shares);
// - no frame fails a check unless the injector corrupted it; with DVERBS_PCAP set, the
//   capture is read back and every corrupted frame is accounted for exactly.
// Figures are printed at the end (bytes verified, retransmissions, fault counters).
//
// DVERBS_STRESS_ALLOW_RETRY_EXC=1 (the 30 % loss profile): retry_cnt is at most 7, and at
// 30 % loss a round trip fails with p = 1 − 0.7² = 0.51, so 8 failed round trips in a row
// (p ≈ 0.5 %) happen somewhere in a run of thousands: IBV_WC_RETRY_EXC_ERR is then the
// correct outcome. A QP may end that way, provided its first error is RETRY_EXC_ERR, every
// later WR flushes in order, and everything that did succeed is verified; its peer is
// moved to ERR and flushes. Each pair's atomic counter must still be an exact prefix sum.
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "harness.h"
#include "pcapng.h"

using namespace dverbs;
using namespace dverbs::stress;

namespace {

struct Env : ::testing::Environment {
  void SetUp() override { setenv("DVERBS_LCORES", "0", 1); }  // inline progress, before open
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

constexpr int kPairs = 16;  // DVERBS_STRESS_PAIRS overrides it (1..16) for diagnosis
constexpr uint32_t kDepth = 16;      // outstanding send WRs per QP
constexpr uint32_t kRecvDepth = 24;  // receives kept posted per QP
constexpr uint32_t kMaxMsg = 64 * 1024;
constexpr uint32_t kCanary = 64;
constexpr uint32_t kStride = kMaxMsg + kCanary;  // a slot and its canary
constexpr uint8_t kCanaryByte = 0xa5;
constexpr uint32_t kReadSrc = 2 * kMaxMsg;
// Layout of each endpoint's registered buffer.
constexpr size_t kLocalOff = 0;  // kDepth slots: send/WRITE source, READ/atomic destination
constexpr size_t kRecvOff = kLocalOff + size_t(kDepth) * kStride;
constexpr size_t kWriteOff = kRecvOff + size_t(kRecvDepth) * kStride;  // the peer WRITEs here
constexpr size_t kReadOff = kWriteOff + size_t(kDepth) * kStride;      // the peer READs here
constexpr size_t kAtomicOff = kReadOff + kReadSrc;  // +0 fetch-add counter, +8 CAS word
constexpr size_t kBufBytes = kAtomicOff + 64;

uint32_t env_u32(const char* name, uint32_t dflt) {
  const char* s = std::getenv(name);
  return s && *s ? uint32_t(std::strtoul(s, nullptr, 10)) : dflt;
}

// Transport timers: ~4 ms retransmission timeout, 7 retries, infinite RNR retry, 10 us RNR
// timer; DVERBS_STRESS_RD_ATOMIC and DVERBS_STRESS_TIMEOUT override max_rd_atomic (16) and
// the timeout exponent for diagnosis.
Tuning tuning() {
  Tuning t;
  t.max_rd_atomic = uint8_t(env_u32("DVERBS_STRESS_RD_ATOMIC", 16));
  // 4.096 us * 2^12 ≈ 17 ms: long enough that a CI machine busy with other work does not
  // turn scheduling delays into retries that exhaust retry_cnt under heavy reordering.
  t.timeout = uint8_t(env_u32("DVERBS_STRESS_TIMEOUT", 12));
  return t;
}

struct Op {
  WrOpcode op = WrOpcode::send;
  uint32_t len = 0;
  uint64_t seed = 0;
  uint32_t read_off = 0;  // READ: offset in the peer's READ source
  uint64_t add = 0;       // fetch-add addend / CAS compare
  uint64_t swap = 0;
  uint64_t expect = 0;    // fetch-add/CAS: the original value the responder must return
  bool global = false;    // fetch-add on the counter every QP shares
  bool inl = false;
  uint32_t imm = 0;
};

bool consumes_recv(WrOpcode op) {
  return op == WrOpcode::send || op == WrOpcode::send_with_imm ||
         op == WrOpcode::rdma_write_with_imm;
}

const char* op_name(WrOpcode op) {
  switch (op) {
    case WrOpcode::send: return "SEND";
    case WrOpcode::send_with_imm: return "SEND_IMM";
    case WrOpcode::rdma_write: return "WRITE";
    case WrOpcode::rdma_write_with_imm: return "WRITE_IMM";
    case WrOpcode::rdma_read: return "READ";
    case WrOpcode::atomic_fetch_and_add: return "FETCH_ADD";
    case WrOpcode::atomic_cmp_and_swp: return "CMP_SWAP";
    default: return "?";
  }
}

uint32_t pick_len(std::mt19937_64& r) {
  uint32_t x = uint32_t(r() % 100);
  if (x < 5) return 0;
  if (x < 35) return 1 + uint32_t(r() % 64);
  if (x < 65) return 65 + uint32_t(r() % (2048 - 64));
  if (x < 87) return 2049 + uint32_t(r() % (16384 - 2048));
  return 16385 + uint32_t(r() % (kMaxMsg - 16384));
}

struct Ep {
  int id = 0;
  Ep* peer = nullptr;
  Mtu mtu = Mtu::mtu1024;
  std::vector<uint8_t> buf;
  Mr mr;
  Qp qp;
  std::vector<Op> ops;
  std::vector<uint64_t> recv_ops;  // indices into ops of the ones consuming peer receives
  std::vector<uint64_t> fa_prefix;  // fa_prefix[k]: sum of the first k per-QP fetch-adds
  uint64_t fa_total = 0, cas_total = 0;
  uint64_t posted = 0, completed = 0, succeeded = 0;
  uint64_t recv_posted = 0, recv_completed = 0, recv_expected = 0;
  bool failed = false;  // ended in RETRY_EXC_ERR (allowed profiles only) or its peer did
  bool retry_exc = false;
  uint8_t* at(size_t off) { return buf.data() + off; }
  uint64_t addr(size_t off) const { return reinterpret_cast<uint64_t>(buf.data()) + off; }
  uint8_t* local(uint64_t seq) { return at(kLocalOff + (seq % kDepth) * kStride); }
};

static WcOpcode want_opcode(WrOpcode op) {
  switch (op) {
    case WrOpcode::rdma_write:
    case WrOpcode::rdma_write_with_imm: return WcOpcode::rdma_write;
    case WrOpcode::rdma_read: return WcOpcode::rdma_read;
    case WrOpcode::atomic_cmp_and_swp: return WcOpcode::comp_swap;
    case WrOpcode::atomic_fetch_and_add: return WcOpcode::fetch_add;
    default: return WcOpcode::send;
  }
}

// What the device, the port and the QPs counted during the run.
struct Counters {
  uint64_t lost = 0, dup = 0, reo = 0, cor = 0, icrc = 0, badf = 0, nonroce = 0, noqp = 0,
           badstate = 0, rx = 0, txd = 0, no_mbuf = 0, cap_dropped = 0;
  static Counters read(pmd::hca::Device& dev) {
    auto& ps = dev.port().stats();
    auto& dc = dev.counters();
    Counters c;
    c.lost = ps.fault_lost;
    c.dup = ps.fault_duplicated;
    c.reo = ps.fault_reordered;
    c.cor = ps.fault_corrupted;
    c.rx = ps.rx_frames;
    c.txd = ps.tx_dropped;
    c.no_mbuf = dc.tx_no_mbuf;
    c.cap_dropped = dev.port().capture_dropped();
    c.icrc = dc.rx_bad_icrc;
    c.badf = dc.rx_bad_frame;
    c.nonroce = dc.rx_non_roce;
    c.noqp = dc.rx_no_qp;
    c.badstate = dc.rx_bad_state;
    return c;
  }
  Counters operator-(const Counters& o) const {
    Counters c;
    c.lost = lost - o.lost;
    c.dup = dup - o.dup;
    c.reo = reo - o.reo;
    c.cor = cor - o.cor;
    c.icrc = icrc - o.icrc;
    c.badf = badf - o.badf;
    c.nonroce = nonroce - o.nonroce;
    c.noqp = noqp - o.noqp;
    c.badstate = badstate - o.badstate;
    c.rx = rx - o.rx;
    c.txd = txd - o.txd;
    c.no_mbuf = no_mbuf - o.no_mbuf;
    c.cap_dropped = cap_dropped - o.cap_dropped;
    return c;
  }
  uint64_t dropped_by_checks() const { return icrc + badf + nonroce; }
};

class FaultStress : public ::testing::Test {
 protected:
  Context ctx;
  Pd pd;
  Cq scq, rcq;
  Gid gid{};
  std::vector<uint64_t> shared;  // the counter every QP adds to
  Mr shared_mr;
  std::unique_ptr<Ep[]> eps;
  std::unordered_map<uint32_t, Ep*> by_qpn;
  uint64_t shared_total = 0;
  bool allow_retry_exc = false;
  int kEps = 2 * kPairs;  // endpoints: two per pair

  uint64_t bytes_verified = 0, wrs_completed = 0, recvs_completed = 0, flushed = 0, failures = 0;

  void SetUp() override {
    allow_retry_exc = env_u32("DVERBS_STRESS_ALLOW_RETRY_EXC", 0) != 0;
    auto c = Context::open();
    ASSERT_TRUE(c) << std::strerror(c.error());
    ctx = c.take();
    ASSERT_EQ(ctx.query_gid(1, 0, &gid), 0);
    pd = Pd::alloc(ctx).take();
    auto s = Cq::create(ctx, 4096);
    auto r = Cq::create(ctx, 4096);
    ASSERT_TRUE(s && r);
    scq = s.take();
    rcq = r.take();
    shared.assign(8, 0);
    auto sm = Mr::reg(pd, shared.data(), shared.size() * 8, kAllAccess);
    ASSERT_TRUE(sm);
    shared_mr = sm.take();
    kEps = 2 * int(std::min<uint32_t>(std::max<uint32_t>(env_u32("DVERBS_STRESS_PAIRS", kPairs), 1), kPairs));
    eps.reset(new Ep[size_t(kEps)]);
    for (int i = 0; i < kEps; i++) {
      Ep& e = eps[i];
      e.id = i;
      e.peer = &eps[i ^ 1];
      e.mtu = Mtu(1 + (i / 2) % 5);  // pairs cover every path MTU
      e.buf.assign(kBufBytes, 0);
      fill_pattern(e.at(kReadOff), kReadSrc, 0x5eed0000u + uint64_t(i));
      auto m = Mr::reg(pd, e.buf.data(), e.buf.size(), kAllAccess);
      ASSERT_TRUE(m);
      e.mr = m.take();
      QpInit init;
      init.cap = {kDepth, kRecvDepth, 1, 1, 256};
      auto q = Qp::create(pd, scq, rcq, init);
      ASSERT_TRUE(q) << std::strerror(q.error());
      e.qp = q.take();
      by_qpn[e.qp.qp_num()] = &e;
    }
    for (int i = 0; i < kEps; i++) {
      Ep& e = eps[i];
      // PSNs just below the 24-bit wrap so that every QP crosses it.
      uint32_t lpsn = 0xffffff - 40 - uint32_t(i) * 3, rpsn = 0xffffff - 40 - uint32_t(i ^ 1) * 3;
      ASSERT_EQ(connect_rc(e.qp, gid, e.peer->qp.qp_num(), lpsn, rpsn, e.mtu, tuning()), 0);
    }
    for (int i = 0; i < kEps; i++) generate(eps[i]);
    for (int i = 0; i < kEps; i++) eps[i].recv_expected = eps[i].peer->recv_ops.size();
  }

  void generate(Ep& e) {
    std::mt19937_64 r(0xfa17 + uint64_t(e.id));
    const uint32_t n = env_u32("DVERBS_STRESS_OPS", 160);
    e.ops.resize(n);
    e.fa_prefix.push_back(0);
    for (uint32_t k = 0; k < n; k++) {
      Op& o = e.ops[k];
      uint32_t x = uint32_t(r() % 100);
      o.seed = (uint64_t(e.id) << 32) | k;
      if (x < 25) {
        o.op = WrOpcode::send;
        o.len = pick_len(r);
        o.inl = o.len <= 256 && r() % 3 == 0;
      } else if (x < 30) {
        o.op = WrOpcode::send_with_imm;
        o.len = pick_len(r);
        o.imm = uint32_t(mix64(o.seed));
      } else if (x < 50) {
        o.op = WrOpcode::rdma_write;
        o.len = pick_len(r);
      } else if (x < 55) {
        o.op = WrOpcode::rdma_write_with_imm;
        o.len = pick_len(r);
        o.imm = uint32_t(mix64(o.seed));
      } else if (x < 75) {
        o.op = WrOpcode::rdma_read;
        o.len = pick_len(r);
        o.read_off = uint32_t(r() % (kReadSrc - o.len + 1));
      } else if (x < 95) {
        o.op = WrOpcode::atomic_fetch_and_add;
        o.len = 8;
        o.global = x >= 90;
        o.add = 1 + r() % 100000;
        if (o.global) {
          shared_total += o.add;
        } else {
          o.expect = e.fa_total;
          e.fa_total += o.add;
          e.fa_prefix.push_back(e.fa_total);
        }
      } else {
        o.op = WrOpcode::atomic_cmp_and_swp;
        o.len = 8;
        o.add = e.cas_total;  // compare
        o.swap = e.cas_total + 1;
        o.expect = e.cas_total++;
      }
      if (consumes_recv(o.op)) e.recv_ops.push_back(k);
    }
  }

  void fail(const std::string& what) {
    if (failures++ < 40) ADD_FAILURE() << what;
  }

  void post_recvs(Ep& e) {
    while (!e.failed && e.recv_posted < e.recv_expected &&
           e.recv_posted - e.recv_completed < kRecvDepth) {
      const uint64_t idx = e.recv_posted;
      uint8_t* slot = e.at(kRecvOff + (idx % kRecvDepth) * kStride);
      std::memset(slot, kCanaryByte, kStride);
      Sge s{reinterpret_cast<uint64_t>(slot), kMaxMsg, e.mr.lkey()};
      RecvWr wr{};
      wr.wr_id = (uint64_t(e.id) << 32) | idx;
      wr.sg_list = &s;
      wr.num_sge = 1;
      RecvWr* bad;
      if (int rc = e.qp.post_recv(&wr, &bad)) return fail("post_recv: " + std::string(std::strerror(rc)));
      e.recv_posted++;
    }
  }

  void post_sends(Ep& e) {
    // Up to four WRs per call, chained, to exercise linked posting.
    SendWr wrs[4]{};
    Sge sges[4]{};
    int n = 0;
    while (!e.failed && n < 4 && e.posted + uint64_t(n) < e.ops.size() &&
           e.posted + uint64_t(n) - e.completed < kDepth) {
      const uint64_t seq = e.posted + uint64_t(n);
      const Op& o = e.ops[seq];
      uint8_t* local = e.local(seq);
      Ep& p = *e.peer;
      SendWr& wr = wrs[n];
      wr = SendWr{};
      wr.wr_id = (uint64_t(e.id) << 32) | seq;
      wr.opcode = o.op;
      wr.send_flags = send_flags::signaled;
      sges[n] = Sge{reinterpret_cast<uint64_t>(local), o.len, e.mr.lkey()};
      wr.sg_list = &sges[n];
      wr.num_sge = o.len ? 1 : 0;
      switch (o.op) {
        case WrOpcode::send:
        case WrOpcode::send_with_imm:
          fill_pattern(local, o.len, o.seed);
          if (o.inl) wr.send_flags |= send_flags::inline_data;
          wr.imm_data = htonl(o.imm);
          break;
        case WrOpcode::rdma_write:
        case WrOpcode::rdma_write_with_imm:
          fill_pattern(local, o.len, o.seed);
          wr.imm_data = htonl(o.imm);
          wr.wr.rdma.remote_addr = p.addr(kWriteOff + (seq % kDepth) * kStride);
          wr.wr.rdma.rkey = p.mr.rkey();
          break;
        case WrOpcode::rdma_read:
          std::memset(local, kCanaryByte, size_t(o.len) + kCanary);
          wr.wr.rdma.remote_addr = p.addr(kReadOff + o.read_off);
          wr.wr.rdma.rkey = p.mr.rkey();
          break;
        case WrOpcode::atomic_fetch_and_add:
        case WrOpcode::atomic_cmp_and_swp: {
          std::memset(local, kCanaryByte, 8 + kCanary);
          wr.num_sge = 1;
          const bool cas = o.op == WrOpcode::atomic_cmp_and_swp;
          wr.wr.atomic.remote_addr = o.global ? reinterpret_cast<uint64_t>(shared.data())
                                              : p.addr(kAtomicOff + (cas ? 8 : 0));
          wr.wr.atomic.rkey = o.global ? shared_mr.rkey() : p.mr.rkey();
          wr.wr.atomic.compare_add = o.add;
          wr.wr.atomic.swap = o.swap;
          break;
        }
        default: break;
      }
      if (n) wrs[n - 1].next = &wr;
      n++;
    }
    if (!n) return;
    SendWr* bad = nullptr;
    if (int rc = e.qp.post_send(wrs, &bad))
      return fail("post_send on QP " + std::to_string(e.id) + ": " + std::strerror(rc));
    for (int i = 0; i < n; i++) {
      const uint64_t seq = e.posted + uint64_t(i);
      if (e.ops[seq].inl) std::memset(e.local(seq), 0, e.ops[seq].len);  // reusable at once
    }
    e.posted += uint64_t(n);
  }

  // A QP ended in RETRY_EXC_ERR (allowed profiles): its peer cannot finish either; move it
  // to ERR so that everything it has outstanding flushes.
  void fail_pair(Ep& e) {
    e.failed = e.peer->failed = true;
    QpAttr a;
    a.qp_state = QpState::err;
    if (e.peer->qp.state() != QpState::err) {
      EXPECT_EQ(e.peer->qp.modify(a, qp_attr_mask::state), 0);
    }
  }

  void on_send_wc(const Wc& wc) {
    auto it = by_qpn.find(wc.qp_num);
    if (it == by_qpn.end()) return fail("send completion for unknown QP " + std::to_string(wc.qp_num));
    Ep& e = *it->second;
    const uint64_t seq = wc.wr_id & 0xffffffffu;
    std::string where = "QP " + std::to_string(e.id) + " wr " + std::to_string(seq);
    if (int(wc.wr_id >> 32) != e.id) return fail(where + ": wr_id of another QP");
    if (seq != e.completed)
      return fail(where + ": completed out of order or twice (expected wr " +
                  std::to_string(e.completed) + ")");
    e.completed++;
    wrs_completed++;
    if (seq >= e.posted) return fail(where + ": never posted");
    const Op& o = e.ops[seq];
    where += std::string(" (") + op_name(o.op) + ", " + std::to_string(o.len) + " B, path MTU " +
             std::to_string(mtu_bytes(e.mtu)) + ")";
    if (wc.status != WcStatus::success) {
      if (wc.status == WcStatus::retry_exc_err && allow_retry_exc && !e.retry_exc) {
        e.retry_exc = true;
        fail_pair(e);
      } else if (wc.status == WcStatus::wr_flush_err && e.failed) {
        flushed++;
      } else {
        fail(where + ": status " + wc_status_str(wc.status));
      }
      return;
    }
    if (e.failed && e.retry_exc) return fail(where + ": success after RETRY_EXC_ERR");
    e.succeeded++;
    if (wc.opcode != want_opcode(o.op)) fail(where + ": wrong opcode");
    uint8_t* local = e.local(seq);
    Ep& p = *e.peer;
    switch (o.op) {
      case WrOpcode::rdma_write:
      case WrOpcode::rdma_write_with_imm: {
        long bad = check_pattern(p.at(kWriteOff + (seq % kDepth) * kStride), o.len, o.seed);
        if (bad >= 0) fail(where + ": WRITE target corrupt at byte " + std::to_string(bad));
        bytes_verified += o.len;
        break;
      }
      case WrOpcode::rdma_read: {
        if (wc.byte_len != o.len) fail(where + ": READ byte_len " + std::to_string(wc.byte_len));
        const uint8_t* src = p.at(kReadOff + o.read_off);
        for (uint32_t i = 0; i < o.len; i++)
          if (local[i] != src[i]) {
            uint32_t j = i;
            while (j < o.len && local[j] != src[j]) j++;
            fail(where + ": READ result corrupt, bytes " + std::to_string(i) + ".." +
                 std::to_string(j) + " differ" + (local[i] == kCanaryByte ? " (never written)" : ""));
            break;
          }
        for (uint32_t i = 0; i < kCanary; i++)
          if (local[o.len + i] != kCanaryByte) {
            fail(where + ": READ wrote past its buffer");
            break;
          }
        bytes_verified += o.len;
        break;
      }
      case WrOpcode::atomic_fetch_and_add:
      case WrOpcode::atomic_cmp_and_swp: {
        uint64_t got;
        std::memcpy(&got, local, 8);
        if (!o.global && got != o.expect)
          fail(where + ": atomic returned " + std::to_string(got) + ", expected " +
               std::to_string(o.expect));
        if (o.global && got >= shared_total) fail(where + ": shared counter value impossible");
        if (local[8] != kCanaryByte) fail(where + ": atomic wrote past 8 bytes");
        bytes_verified += 8;
        break;
      }
      default: break;
    }
  }

  void on_recv_wc(const Wc& wc) {
    auto it = by_qpn.find(wc.qp_num);
    if (it == by_qpn.end()) return fail("recv completion for unknown QP " + std::to_string(wc.qp_num));
    Ep& e = *it->second;
    const uint64_t idx = wc.wr_id & 0xffffffffu;
    std::string where = "QP " + std::to_string(e.id) + " recv " + std::to_string(idx);
    if (idx != e.recv_completed) return fail(where + ": receive completed out of order or twice");
    e.recv_completed++;
    recvs_completed++;
    if (wc.status != WcStatus::success) {
      // Flushed receives are expected once the pair failed (the failing QP's own flush may
      // be polled before its error completion: the QP is in ERR then).
      if (wc.status == WcStatus::wr_flush_err && allow_retry_exc &&
          (e.failed || e.qp.state() == QpState::err)) {
        flushed++;
        return;
      }
      return fail(where + ": status " + wc_status_str(wc.status));
    }
    if (idx >= e.peer->recv_ops.size()) return fail(where + ": more messages than sent");
    const Op& o = e.peer->ops[e.peer->recv_ops[idx]];
    const bool imm = o.op != WrOpcode::send;
    if (wc.opcode != (o.op == WrOpcode::rdma_write_with_imm ? WcOpcode::recv_rdma_with_imm
                                                            : WcOpcode::recv))
      fail(where + ": wrong opcode");
    if (wc.byte_len != o.len)
      fail(where + ": byte_len " + std::to_string(wc.byte_len) + ", sent " + std::to_string(o.len));
    if (bool(wc.wc_flags & wc_flags::with_imm) != imm || (imm && ntohl(wc.imm_data) != o.imm))
      fail(where + ": immediate data wrong");
    if (o.op != WrOpcode::rdma_write_with_imm) {
      const uint8_t* slot = e.at(kRecvOff + (idx % kRecvDepth) * kStride);
      long bad = check_pattern(slot, o.len, o.seed);
      if (bad >= 0) fail(where + ": SEND payload corrupt at byte " + std::to_string(bad));
      for (uint32_t i = o.len; i < o.len + kCanary; i++)
        if (slot[i] != kCanaryByte) {
          fail(where + ": receive written past the message");
          break;
        }
      bytes_verified += o.len;
    }
  }

  bool done(const Ep& e) const {
    if (e.failed) return e.completed == e.posted && e.recv_completed == e.recv_posted;
    return e.completed == e.ops.size() && e.recv_completed == e.recv_expected;
  }
  bool all_done() const {
    for (int i = 0; i < kEps; i++)
      if (!done(eps[i])) return false;
    return true;
  }

  // Reads the DVERBS_PCAP capture back and accounts for every corrupted frame: a received
  // frame that equals no sent frame was corrupted by the injector. Each must have been
  // dropped by a check (IPv4 checksum, UDP port, ICRC — recomputed here independently),
  // except flips of the ICRC-masked bytes no other check covers (UDP checksum, BTH byte 4),
  // which are harmless and match a sent frame once those bytes are masked.
  void account_corruption(const std::string& path, const Counters& c) {
    using namespace dverbs::testing;
    std::unordered_multiset<uint64_t> sent;
    std::unordered_set<uint64_t> sent_masked;
    std::string err;
    ASSERT_TRUE(for_each_pcapng_frame(path, [&](const uint8_t* f, uint32_t n, Dir d) {
      if (d != Dir::out) return;
      sent.insert(frame_hash(f, n));
      sent_masked.insert(frame_hash(f, n, true));
    }, &err)) << err;
    uint64_t received = 0, corrupted = 0, bad = 0, bad_icrc_only = 0, masked = 0, unexplained = 0;
    std::unordered_set<uint64_t> distinct;  // a corrupted frame may also be duplicated
    ASSERT_TRUE(for_each_pcapng_frame(path, [&](const uint8_t* f, uint32_t n, Dir d) {
      if (d != Dir::in) return;
      received++;
      const uint64_t h = frame_hash(f, n);
      if (sent.count(h)) return;
      corrupted++;
      distinct.insert(h);
      RoceFrame r = check_roce_frame(f, n);
      if (!r.ipv4 || !r.ip_csum_ok || !r.roce || !r.icrc_ok) {
        bad++;
        if (r.ipv4 && r.ip_csum_ok && r.roce) bad_icrc_only++;
      } else if (sent_masked.count(frame_hash(f, n, true))) {
        masked++;
      } else {
        unexplained++;  // passes every check yet differs from every sent frame
      }
    }, &err)) << err;
    std::printf("[stress] capture: %" PRIu64 " frames received, %" PRIu64
                " corrupted (%zu distinct): %" PRIu64 " fail a check (%" PRIu64
                " only the ICRC), %" PRIu64 " flipped an ICRC-masked UDP checksum/BTH bit\n",
                received, corrupted, distinct.size(), bad, bad_icrc_only, masked);
    EXPECT_EQ(unexplained, 0u) << "corrupted frames that pass every check";
    EXPECT_EQ(distinct.size(), c.cor) << "the capture disagrees with fault_corrupted";
    EXPECT_EQ(c.dropped_by_checks(), bad) << "device drops vs frames that fail a check";
    EXPECT_LE(c.icrc, bad_icrc_only);
    EXPECT_EQ(c.icrc + c.badf + c.nonroce + masked, corrupted);
  }
};

TEST_F(FaultStress, MixedTrafficOnSixteenQpPairs) {
  auto& dev = hca(ctx);
  const char* spec = std::getenv("DVERBS_FAULT");
  const char* pcap = std::getenv("DVERBS_PCAP");
  const auto& fs = dev.config().fault;
  const Counters c0 = Counters::read(dev);

  for (int i = 0; i < kEps; i++) post_recvs(eps[i]);
  // Bounded: the run fails if no completion shows up for kMaxIdle loop iterations.
  constexpr long kMaxIdle = 20000000L;
  long idle = 0, loops = 0;
  bool hang = false;
  Wc wcs[64];
  while (!all_done() && failures < 1000 && !hang) {
    for (int i = 0; i < kEps; i++) post_sends(eps[i]);
    int got = 0;
    int n = scq.poll(wcs, 64);
    ASSERT_GE(n, 0);
    for (int i = 0; i < n; i++) on_send_wc(wcs[i]);
    got += n;
    n = rcq.poll(wcs, 64);
    ASSERT_GE(n, 0);
    for (int i = 0; i < n; i++) on_recv_wc(wcs[i]);
    got += n;
    if (n)
      for (int i = 0; i < kEps; i++) post_recvs(eps[i]);
    loops++;
    if (got) {
      idle = 0;
    } else if (++idle > kMaxIdle) {
      std::string st;
      for (int i = 0; i < kEps; i++) {
        const Ep& e = eps[i];
        const auto& q = hqp(e.qp);
        if (!done(e))
          st += " qp" + std::to_string(i) + "[sent " + std::to_string(e.completed) + "/" +
                std::to_string(e.ops.size()) + " posted " + std::to_string(e.posted) + " recv " +
                std::to_string(e.recv_completed) + "/" + std::to_string(e.recv_expected) +
                " state " + std::to_string(int(e.qp.state())) + " req.psn " +
                std::to_string(q.req.psn) + " last_ack " + std::to_string(q.req.last_ack_psn) +
                " timer " + std::to_string(q.req.timer_deadline) + "]";
      }
      ADD_FAILURE() << "hang: no completion for " << kMaxIdle << " polls;" << st;
      hang = true;
    }
  }

  uint64_t retransmits = 0, rnr = 0, seq_naks = 0, dups = 0;
  int failed_qps = 0;
  for (int i = 0; i < kEps; i++) {
    auto& q = hqp(eps[i].qp);
    retransmits += q.retransmits;
    rnr += q.rnr_naks_rcvd;
    seq_naks += q.seq_naks_sent;
    dups += q.dup_rcvd;
    failed_qps += eps[i].retry_exc;
  }
  const Counters c = Counters::read(dev) - c0;
  std::printf(
      "[stress] DVERBS_FAULT=%s: %d RC QPs, %" PRIu64 " WRs + %" PRIu64
      " receives completed exactly once in order (%" PRIu64 " flushed after %d RETRY_EXC_ERR), %" PRIu64
      " bytes verified, %" PRIu64 " failures; retransmissions %" PRIu64
      ", PSN-sequence NAKs %" PRIu64 ", duplicates received %" PRIu64 ", RNR NAKs %" PRIu64
      "; frames received %" PRIu64 " (tx dropped %" PRIu64 ", no mbuf %" PRIu64 "); injected: lost %" PRIu64
      ", duplicated %" PRIu64 ", reordered %" PRIu64 ", corrupted %" PRIu64
      "; dropped: ICRC %" PRIu64 ", bad header %" PRIu64 ", not RoCE %" PRIu64 ", no QP %" PRIu64
      ", bad state %" PRIu64 "; loops %ld\n",
      spec ? spec : "(unset)", kEps, wrs_completed, recvs_completed, flushed, failed_qps,
      bytes_verified, failures, retransmits, seq_naks, dups, rnr, c.rx, c.txd, c.no_mbuf, c.lost, c.dup,
      c.reo, c.cor, c.icrc, c.badf, c.nonroce, c.noqp, c.badstate, loops);
  std::fflush(stdout);
  RecordProperty("bytes_verified", std::to_string(bytes_verified));
  RecordProperty("retransmissions", std::to_string(retransmits));
  RecordProperty("fault_corrupted", std::to_string(c.cor));
  RecordProperty("rx_bad_icrc", std::to_string(c.icrc));
  ASSERT_FALSE(hang);
  ASSERT_EQ(failures, 0u);

  // Exactly once: nothing more arrives once every WR and receive completed.
  EXPECT_EQ(poll_extra(scq, 200000), 0) << "extra send completions";
  EXPECT_EQ(poll_extra(rcq, 200000), 0) << "extra receive completions";

  // Counters end exact; WRITE targets hold the last WRITE of each slot (a stale duplicate
  // re-executed later would have overwritten it); READ sources were never touched.
  bool any_failed = false;
  for (int i = 0; i < kEps; i++) {
    Ep& e = eps[i];
    Ep& p = *e.peer;
    uint64_t fa, cas;
    std::memcpy(&fa, p.at(kAtomicOff), 8);
    std::memcpy(&cas, p.at(kAtomicOff + 8), 8);
    EXPECT_EQ(check_pattern(e.at(kReadOff), kReadSrc, 0x5eed0000u + uint64_t(i)), -1)
        << "READ source of QP " << i << " was modified";
    if (e.failed) {
      // Every add executed exactly once and in order: the counter is a prefix sum covering
      // at least every add that completed successfully.
      any_failed = true;
      size_t k = 0;
      while (k < e.fa_prefix.size() && e.fa_prefix[k] != fa) k++;
      EXPECT_LT(k, e.fa_prefix.size()) << "fetch-add counter of QP " << i << " is no prefix sum";
      EXPECT_LE(cas, e.cas_total);
      continue;
    }
    EXPECT_EQ(e.succeeded, e.ops.size());
    EXPECT_EQ(fa, e.fa_total) << "fetch-add counter of QP " << i;
    EXPECT_EQ(cas, e.cas_total) << "CAS word of QP " << i;
    std::vector<int64_t> last(kDepth, -1);
    for (uint64_t k = 0; k < e.ops.size(); k++)
      if (e.ops[k].op == WrOpcode::rdma_write || e.ops[k].op == WrOpcode::rdma_write_with_imm)
        last[k % kDepth] = int64_t(k);
    for (uint32_t s = 0; s < kDepth; s++) {
      if (last[s] < 0) continue;
      const Op& o = e.ops[size_t(last[s])];
      EXPECT_EQ(check_pattern(p.at(kWriteOff + s * kStride), o.len, o.seed), -1)
          << "WRITE slot " << s << " of QP " << i << " changed after its last WRITE completed";
    }
    EXPECT_EQ(e.qp.state(), QpState::rts);
  }
  if (any_failed) {
    EXPECT_LE(shared[0], shared_total) << "shared fetch-add counter";
  } else {
    EXPECT_EQ(shared[0], shared_total) << "shared fetch-add counter";
  }
  EXPECT_EQ(dev.counters().cq_overflow.load(), 0u);

  // No frame fails a check unless the injector corrupted it (a corrupted frame may also be
  // duplicated, and then fails twice).
  if (fs.corrupt == 0) {
    EXPECT_EQ(c.dropped_by_checks(), 0u);
  } else {
    EXPECT_LE(c.dropped_by_checks(), fs.dup > 0 ? 2 * c.cor : c.cor);
    EXPECT_GT(c.icrc, 0u);
  }
  if (fs.enabled()) {
    EXPECT_GT(c.lost + c.dup + c.reo + c.cor, 0u) << "nothing injected";
  }
  if (pcap && *pcap && fs.corrupt > 0) {
    ASSERT_EQ(c.cap_dropped, 0u) << "the capture missed frames: no exact accounting";
    account_corruption(pcap, c);
    std::remove(pcap);
  }
}

}  // namespace
