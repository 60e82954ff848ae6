// wr_fuzz — arbitrary work requests, QP transitions and memory registrations.
//
// The input is a program of operations (format below) run against live QPs: post_send with
// any opcode, flags, SGE list (inside, straddling, before, after registered memory; lkeys
// off by one, of another PD, stale; addr+len overflowing), remote address and rkey;
// post_recv and post_srq_recv likewise; modify_qp with any state, mask and attribute
// values; reg_mr/dereg_mr of "dynamic" regions; and engine rounds that deliver the frames
// the HCA sent in any grouping (frames are held back, never lost).
//
// Invariants (a violation aborts, libFuzzer saves the input):
//   - every verb returns a documented value: post_* 0/EINVAL/ENOMEM (and *bad_wr names a WR
//     of the chain); modify_qp 0/EINVAL/EOPNOTSUPP, and a failed modify leaves the state;
//     reg_mr 0/EINVAL/ENOMEM; dereg_mr 0/EBUSY;
//   - no access outside registered memory: SGEs outside every region point at unmapped or
//     guard pages, and a deregistered dynamic region is made PROT_NONE at once, so a use
//     after deregistration (or a stale key accepted) is a SEGV; canaries around every region;
//     the region of the other PD and the remote-read-only region never change;
//   - completions: only for WRs that were posted, each exactly once, on the right QP, never
//     for a WR discarded by a transition to RESET, never a successful completion of an
//     unsignaled send; statuses and opcodes are valid values;
//   - at the end every QP is moved to ERR and must flush everything still outstanding (every
//     signaled send and every receive of its own RQ completes); then each QP is reset and
//     reconnected and a SEND between A and B completes (the QPs stay usable).
//
// Each input starts from the same state (QPs reset and reconnected, the SRQ and its QP and
// the windows recreated, the dynamic regions unregistered), so a crash reproduces alone.
//
// Input: a sequence of operations; every field is read from the front of the input, and
// bytes past its end read as zero.
//   op := kind:u8 …  kind % 8:
//     0 post_send   qp:u8 nwr:u8 then per WR: opcode:u8 flags:u8 num_sge:i8 list:u8
//                   sge* (addr:u8 off:u32 len:u32 key:u8) raddr:u8 roff:u32 rkey:u8
//                   compare_add:u64 swap:u64 imm:u32 ah:u8 rqpn:u8 qkey:u32
//                   mw:u8 bmr:u8 baddr:u8 boff:u32 blen:u32 bacc:u8
//     1 post_recv   qp:u8 nwr:u8 then per WR: num_sge:i8 list:u8 sge*
//     2 post_srq_recv  nwr:u8 then per WR as for post_recv
//     3 modify_qp   qp:u8 mask:u32 state:u8 cur:u8 mtu:u8 qkey:u32 rq_psn:u32 sq_psn:u32
//                   dqpn:u8 dqpn_raw:u32 access:u8 timeout:u8 retry:u8 rnr:u8 min_rnr:u8
//                   rd:u8 dest_rd:u8 port:u8 pkey:u16 gid:u8 sgid:u8
//     4 reg/dereg   slot:u8 access:u8 off:u16 len:u32 bogus:u8
//     5 deliver     rounds:u8 frames:u8
//     6 poll CQ
//     7 reset+reconnect  qp:u8
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <vector>

#include <rte_mbuf.h>

#include "checks.h"
#include "fuzz_device.h"
#include "midlayer/core.h"
#include "pmd/wire/roce.h"

using namespace dverbs;
using namespace dverbs::fuzz;
namespace hca = dverbs::pmd::hca;

namespace {

constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read |
                          access::remote_atomic;
constexpr uint32_t kQkey = 0x11111111;
constexpr int kQps = 8;  // A B C D U1 U2 E(SRQ) F
constexpr int kDyn = 4;
constexpr size_t kR0 = 64 * 1024, kR1 = 16 * 1024, kR2 = 16 * 1024, kRr = 16 * 1024;
constexpr size_t kDynSize = 32 * 1024, kScratch = 4096;
constexpr uint64_t kKeepalive = 0x4b454550;
constexpr uint64_t kSrqTag = 0x5ull << 60;
Sge g_unused_sge{};

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool empty() const { return p >= end; }
  uint8_t u8() { return p < end ? *p++ : 0; }
  uint16_t u16() { return uint16_t(u8() << 8 | u8()); }
  uint32_t u32() { return uint32_t(u16()) << 16 | u16(); }
  uint64_t u64() { return uint64_t(u32()) << 32 | u32(); }
};

struct Posted {
  int qp;        // index, or -1 for the SRQ
  bool send;
  bool signaled;
};

struct World {
  FuzzDevice& fd = FuzzDevice::get();
  Pd pd, pd2;
  Cq cq;
  Region r0, r1, r2, rr, scratch;
  Region dyn[kDyn];
  Mr mr0, mr1, mr2, mrr;
  Mr dmr[kDyn];
  uint32_t dkey[kDyn] = {};       // last key of each dynamic slot (stale once deregistered)
  mid::Mr* draw[kDyn] = {};       // last midlayer object of each slot (stale likewise)
  Mw mw1, mw2;
  Srq srq;
  Qp qp[kQps];
  Ah ah;
  std::vector<uint8_t> r2_pattern, rr_pattern;

  // accounting
  std::map<uint64_t, Posted> outstanding;
  std::set<uint64_t> discarded;  // dropped by a transition to RESET: must never complete
  uint64_t seq = 0;
  std::deque<rte_mbuf*> held;    // frames sent by the HCA, not yet delivered

  World() {
    pd = Pd::alloc(fd.ctx()).take();
    pd2 = Pd::alloc(fd.ctx()).take();
    cq = Cq::create(fd.ctx(), 1 << 15).take();
    r0.init(kR0);
    r1.init(kR1);
    r2.init(kR2);
    rr.init(kRr);
    scratch.init(kScratch);
    for (auto& d : dyn) {
      d.init(kDynSize);
      d.protect(true);
    }
    mr0 = reg(pd, r0, kAll | access::mw_bind);
    mr1 = reg(pd, r1, access::local_write);
    mr2 = reg(pd2, r2, kAll);
    mrr = reg(pd, rr, access::remote_read);
    for (size_t i = 0; i < kR2; i++) r2.data()[i] = uint8_t(i * 5 + 1);
    for (size_t i = 0; i < kRr; i++) rr.data()[i] = uint8_t(i * 3 + 7);
    r2_pattern.assign(r2.data(), r2.data() + kR2);
    rr_pattern.assign(rr.data(), rr.data() + kRr);
    for (int i = 0; i < kQps; i++)
      if (i != 6) qp[i] = make(type_of(i), nullptr);
    AhAttr aa;
    aa.dgid = fd.gid();
    ah = Ah::create(pd, aa).take();
  }

  static QpType type_of(int i) {
    return i == 2 || i == 3 ? QpType::uc : i == 4 || i == 5 ? QpType::ud : QpType::rc;
  }
  static int peer_of(int i) { return i ^ 1; }  // A-B, C-D, U1-U2, E-F

  static Mr reg(Pd& p, Region& r, uint32_t acc) {
    auto m = Mr::reg(p, r.data(), r.size(), acc);
    FUZZ_CHECK(bool(m), "reg_mr");
    return m.take();
  }

  Qp make(QpType t, Srq* s) {
    QpInit init;
    init.type = t;
    init.cap = {8, 8, 4, 4, 0};
    init.srq = s;
    auto q = Qp::create(pd, cq, cq, init);
    FUZZ_CHECK(bool(q), "create_qp: %d", q.error());
    return q.take();
  }

  int connect(int i) {
    Qp& q = qp[i];
    if (type_of(i) == QpType::ud) return connect_ud(q, kQkey, 0x100 + uint32_t(i));
    const uint32_t me = 0x1000 * uint32_t(i + 1), peer = 0x1000 * uint32_t(peer_of(i) + 1);
    return connect_qp(q, type_of(i), qp[peer_of(i)].qp_num(), me, peer, kAll, Mtu::mtu256, 0, 3,
                      4);
  }

  // Forgets every outstanding WR of QP i (a transition to RESET discards them).
  void discard(int i) {
    for (auto it = outstanding.begin(); it != outstanding.end();) {
      if (it->second.qp == i) {
        discarded.insert(it->first);
        it = outstanding.erase(it);
      } else {
        ++it;
      }
    }
  }

  void reset_and_connect(int i) {
    poll();
    FUZZ_CHECK(reset_qp(qp[i]) == 0, "reset");
    discard(i);
    FUZZ_CHECK(connect(i) == 0, "connect QP %d", i);
  }

  void baseline() {
    drop_held();
    fd.drop_tx();
    outstanding.clear();
    discarded.clear();
    // A fresh SRQ and its QP (E) every input, so SRQ contents never carry over.
    if (qp[6].raw()) FUZZ_CHECK(qp[6].destroy() == 0, "destroy E");
    if (srq.raw()) FUZZ_CHECK(srq.destroy() == 0, "destroy SRQ");
    srq = Srq::create(pd, 16, 4).take();
    qp[6] = make(QpType::rc, &srq);
    mw1 = Mw::alloc(pd, 1).take();
    mw2 = Mw::alloc(pd, 2).take();
    for (int i = 0; i < kQps; i++) {
      FUZZ_CHECK(reset_qp(qp[i]) == 0, "reset");
      FUZZ_CHECK(connect(i) == 0, "connect QP %d", i);
    }
    fd.pump(1, false);
    std::vector<Wc> stale = poll_raw();
    FUZZ_CHECK(stale.empty(), "%zu completions before any work", stale.size());
    std::string why;
    FUZZ_CHECK(fd.counters_consistent(&why), "%s", why.c_str());
  }

  void teardown_dynamic() {
    // Windows first (they pin their regions), then the dynamic regions.
    FUZZ_CHECK(mw1.destroy() == 0 && mw2.destroy() == 0, "dealloc_mw");
    for (int s = 0; s < kDyn; s++) {
      if (!dmr[s].raw()) continue;
      FUZZ_CHECK(dmr[s].destroy() == 0, "dereg of an unused dynamic region");
      dyn[s].protect(true);
    }
  }

  void drop_held() {
    for (rte_mbuf* m : held) rte_pktmbuf_free(m);
    held.clear();
  }

  // Runs the engine `rounds` times, delivering at most `frames` held frames per round.
  void deliver(int rounds, size_t frames) {
    for (int r = 0; r < rounds; r++) {
      fd.engine().try_poll();
      std::vector<rte_mbuf*> out;
      fd.take_tx(&out);
      held.insert(held.end(), out.begin(), out.end());
      std::vector<rte_mbuf*> now;
      while (!held.empty() && now.size() < frames) {
        now.push_back(held.front());
        held.pop_front();
      }
      for (size_t i = 0; i < now.size(); i += 32)
        fd.receive(now.data() + i, uint16_t(std::min<size_t>(32, now.size() - i)));
      if (held.size() > 2048) drop_held();  // bounded: a flood is a loss
    }
  }

  std::vector<Wc> poll_raw() {
    std::vector<Wc> out;
    Wc wc[32];
    for (int guard = 0; guard < 4096; guard++) {
      int n = cq.poll(wc, 32);
      FUZZ_CHECK(n >= 0, "poll_cq returned %d", n);
      if (n == 0) break;
      out.insert(out.end(), wc, wc + n);
    }
    return out;
  }

  int qp_index(uint32_t qpn) {
    for (int i = 0; i < kQps; i++)
      if (qp[i].raw() && qp[i].qp_num() == qpn) return i;
    return -1;
  }

  // Polls and accounts for every completion.
  void poll() {
    for (const Wc& w : poll_raw()) {
      FUZZ_CHECK(valid_status(w.status), "status %u", unsigned(w.status));
      const int qi = qp_index(w.qp_num);
      FUZZ_CHECK(qi >= 0, "completion for unknown QP %#x", w.qp_num);
      if (w.wr_id == kKeepalive) continue;  // the keepalive accounts for its own
      FUZZ_CHECK(!discarded.count(w.wr_id),
                 "completion of WR %#lx that a transition to RESET discarded",
                 (unsigned long)w.wr_id);
      auto it = outstanding.find(w.wr_id);
      FUZZ_CHECK(it != outstanding.end(), "completion of WR %#lx never posted or completed twice"
                 " (QP %d, %s)", (unsigned long)w.wr_id, qi, wc_status_str(w.status));
      const Posted p = it->second;
      if (p.qp >= 0) FUZZ_CHECK(p.qp == qi, "WR of QP %d completed on QP %d", p.qp, qi);
      else FUZZ_CHECK(qi == 6, "SRQ receive completed on QP %d", qi);
      if (w.status == WcStatus::success) {
        FUZZ_CHECK(valid_wc_opcode(w.opcode), "opcode %u", unsigned(w.opcode));
        FUZZ_CHECK(!p.send || p.signaled, "successful completion of an unsignaled send");
        FUZZ_CHECK(p.send == (uint32_t(w.opcode) < 128), "send/receive opcode mismatch");
      }
      outstanding.erase(it);
    }
  }

  // ---- decoding helpers ----

  // An address by selector; `*natural` gets the key of the region it lies in (0 if none).
  uint64_t address(uint8_t sel, uint32_t off, uint32_t* natural, bool remote) {
    auto in = [&](Region& r, Mr& m) {
      *natural = remote ? m.rkey() : m.lkey();
      return r.addr(off % r.size());
    };
    *natural = 0;
    switch (sel % 10) {
      case 0: return in(r0, mr0);
      case 1: *natural = remote ? mr0.rkey() : mr0.lkey(); return r0.addr(r0.size() - off % 64);
      case 2: *natural = remote ? mr0.rkey() : mr0.lkey(); return r0.addr() - 1 - off % 64;
      case 3: return in(r1, mr1);
      case 4: return in(r2, mr2);
      case 5: return in(rr, mrr);
      case 6: {
        int s = int(off % kDyn);
        *natural = dkey[s];
        return dyn[s].addr((off >> 2) % kDynSize);
      }
      case 7: return 0x7f0000000000ull + off;  // not mapped in this process
      case 8: return ~0ull - off % 64;          // addr + len overflows
      default: return 0;
    }
  }

  uint32_t key(uint8_t sel, uint32_t natural, Reader& in) {
    switch (sel % 8) {
      case 0: return natural;
      case 1: return mr0.lkey();
      case 2: return natural + ((sel & 8) ? 1 : -1);  // off by one
      case 3: return mr2.lkey();                      // the other PD's
      case 4: return mw2.rkey();
      case 5: return 0;
      case 6: return in.u32();
      default: return dkey[(sel >> 3) % kDyn];       // maybe stale
    }
  }

  // Builds `n` SGEs (the list is exactly as long as num_sge claims, capped at 16, so an
  // over-read is an ASan report).
  std::vector<Sge> sges(Reader& in, int num_sge, bool inline_data) {
    std::vector<Sge> v(size_t(std::clamp(num_sge, 0, 16)));
    for (Sge& s : v) {
      uint8_t as = in.u8();
      uint32_t off = in.u32(), len = in.u32();
      uint8_t ks = in.u8();
      if (!(as & 0x80)) len %= 4097;  // mostly plausible lengths
      uint32_t natural;
      s.addr = address(as, off, &natural, false);
      s.length = len;
      s.lkey = key(ks, natural, in);
      if (inline_data) s.addr = scratch.addr(off % (kScratch / 2));  // inline reads the address
    }
    return v;
  }

  Qp& pick_qp(uint8_t sel, int* idx) {
    *idx = sel % kQps;
    return qp[*idx];
  }

  // ---- operations ----

  void op_post_send(Reader& in) {
    int qi;
    Qp& q = pick_qp(in.u8(), &qi);
    const int nwr = 1 + in.u8() % 3;
    std::vector<SendWr> wrs(static_cast<size_t>(nwr));
    std::vector<std::vector<Sge>> lists(static_cast<size_t>(nwr));
    for (int i = 0; i < nwr; i++) {
      SendWr& w = wrs[size_t(i)];
      const uint8_t opc = in.u8();
      // 10 to 13 and ≥ 0xf0 are unknown; 14 FLUSH, 15 ATOMIC WRITE (IBA 1.5).
      w.opcode = WrOpcode(opc < 0xf0 ? opc % 16 : opc);
      w.send_flags = in.u8();
      if (!(w.send_flags & 0x80)) w.send_flags &= 0xf;   // mostly known flags
      const int num_sge = int8_t(in.u8());
      const uint8_t list = in.u8();
      lists[size_t(i)] = sges(in, num_sge, w.send_flags & send_flags::inline_data);
      w.num_sge = num_sge;
      w.sg_list = (list & 1) ? nullptr : lists[size_t(i)].data();
      // NULL with num_sge <= 0 is a known lib bug (post_send/post_recv memcpy a NULL list:
      // UB; regression test Wr.NoSgesWithANullList in tests/misuse, flagged by UBSan):
      // steered around until it is fixed, so that fuzzing goes on.
      if (num_sge <= 0 && !w.sg_list) w.sg_list = &g_unused_sge;
      uint32_t natural;
      const uint8_t ras = in.u8();
      const uint32_t roff = in.u32();
      const uint64_t raddr = address(ras, roff, &natural, true);
      const uint32_t rkey = key(in.u8(), natural, in);
      const uint64_t ca = in.u64(), sw = in.u64();
      w.imm_data = in.u32();
      const uint8_t ahs = in.u8(), rq = in.u8();
      const uint32_t qkey = in.u32();
      if (w.opcode == WrOpcode::atomic_cmp_and_swp || w.opcode == WrOpcode::atomic_fetch_and_add) {
        w.wr.atomic.remote_addr = raddr;
        w.wr.atomic.rkey = rkey;
        w.wr.atomic.compare_add = ca;
        w.wr.atomic.swap = sw;
      } else if (type_of(qi) == QpType::ud) {
        w.wr.ud.ah = (ahs & 1) ? nullptr : ah.raw();
        w.wr.ud.remote_qpn = (rq & 1) ? uint32_t(roff) : qp[4 + (rq >> 1) % 2].qp_num();
        w.wr.ud.remote_qkey = (rq & 2) ? qkey : kQkey;
      } else {
        w.wr.rdma.remote_addr = raddr;
        w.wr.rdma.rkey = rkey;
      }
      if (w.opcode == WrOpcode::flush) {  // placement type and level from the swap bytes
        w.wr.flush.type = uint8_t(sw);
        w.wr.flush.level = uint8_t(sw >> 8);
        w.wr.flush.length = ca;
      }
      const uint8_t mws = in.u8(), bmr = in.u8(), bas = in.u8();
      const uint32_t boff = in.u32(), blen = in.u32();
      const uint8_t bacc = in.u8();
      if (w.opcode == WrOpcode::bind_mw) {
        w.bind_mw.mw = mws % 3 == 0 ? mw1.raw() : mws % 3 == 1 ? mw2.raw() : nullptr;
        w.bind_mw.rkey = (mws & 4) ? w.imm_data
                         : w.bind_mw.mw ? (hca::to_mw(w.bind_mw.mw)->rkey & ~0xffu) |
                                              uint8_t(1 + (hca::to_mw(w.bind_mw.mw)->rkey + 1) % 255)
                                        : 0;
        mid::Mr* mrs[6] = {mr0.raw(), mr1.raw(), mr2.raw(), mrr.raw(), draw[bmr % kDyn], nullptr};
        w.bind_mw.bind_info.mr = mrs[bmr % 6];
        uint32_t nat;
        w.bind_mw.bind_info.addr = address(bas, boff, &nat, false);
        w.bind_mw.bind_info.length = (bacc & 0x80) ? blen : blen % 8192;
        w.bind_mw.bind_info.mw_access_flags = bacc & 0x7f;
      } else if (w.opcode == WrOpcode::local_inv || w.opcode == WrOpcode::send_with_inv) {
        w.invalidate_rkey = (mws & 1) ? mw2.rkey() : w.imm_data;
      }
      w.wr_id = (uint64_t(qi) << 56) | ++seq;
      w.next = i + 1 < nwr ? &wrs[size_t(i) + 1] : nullptr;
    }
    SendWr* bad = nullptr;
    const int rc = q.post_send(&wrs[0], &bad);
    FUZZ_CHECK(rc == 0 || rc == EINVAL || rc == ENOMEM, "post_send returned %d", rc);
    size_t posted = wrs.size();
    if (rc) {
      auto it = std::find_if(wrs.begin(), wrs.end(), [&](const SendWr& w) { return &w == bad; });
      FUZZ_CHECK(it != wrs.end(), "post_send: *bad_wr does not name a WR of the chain");
      posted = size_t(it - wrs.begin());
    }
    for (size_t i = 0; i < posted; i++)
      outstanding[wrs[i].wr_id] = Posted{qi, true, bool(wrs[i].send_flags & send_flags::signaled)};
  }

  void op_post_recv(Reader& in, bool to_srq) {
    int qi = -1;
    Qp* q = to_srq ? nullptr : &pick_qp(in.u8(), &qi);
    const int nwr = 1 + in.u8() % 3;
    std::vector<RecvWr> wrs(static_cast<size_t>(nwr));
    std::vector<std::vector<Sge>> lists(static_cast<size_t>(nwr));
    for (int i = 0; i < nwr; i++) {
      RecvWr& w = wrs[size_t(i)];
      const int num_sge = int8_t(in.u8());
      const uint8_t list = in.u8();
      lists[size_t(i)] = sges(in, num_sge, false);
      w.num_sge = num_sge;
      w.sg_list = (list & 1) ? nullptr : lists[size_t(i)].data();
      if (num_sge <= 0 && !w.sg_list) w.sg_list = &g_unused_sge;  // see op_post_send
      w.wr_id = (to_srq ? kSrqTag : uint64_t(qi) << 56 | 1ull << 55) | ++seq;
      w.next = i + 1 < nwr ? &wrs[size_t(i) + 1] : nullptr;
    }
    RecvWr* bad = nullptr;
    const int rc = to_srq ? srq.post_recv(&wrs[0], &bad) : q->post_recv(&wrs[0], &bad);
    FUZZ_CHECK(rc == 0 || rc == EINVAL || rc == ENOMEM, "post_recv returned %d", rc);
    size_t posted = wrs.size();
    if (rc) {
      auto it = std::find_if(wrs.begin(), wrs.end(), [&](const RecvWr& w) { return &w == bad; });
      FUZZ_CHECK(it != wrs.end(), "post_recv: *bad_wr does not name a WR of the chain");
      posted = size_t(it - wrs.begin());
    }
    for (size_t i = 0; i < posted; i++) outstanding[wrs[i].wr_id] = Posted{qi, false, true};
  }

  void op_modify(Reader& in) {
    int qi;
    Qp& q = pick_qp(in.u8(), &qi);
    QpAttr a;
    uint32_t mask = in.u32();
    if (!(mask & 0x80000000u)) mask &= (1u << 21) - 1;  // mostly known bits
    const uint8_t st = in.u8(), cur = in.u8();
    a.qp_state = QpState(st < 0xf0 ? st % 7 : st);
    a.cur_qp_state = QpState(cur % 8);
    a.path_mtu = Mtu(in.u8() % 7);
    a.qkey = in.u32();
    a.rq_psn = in.u32();
    a.sq_psn = in.u32();
    const uint8_t ds = in.u8();
    const uint32_t draw_qpn = in.u32();
    a.dest_qp_num = (ds & 1) ? draw_qpn : qp[ds / 2 % kQps].qp_num();
    a.qp_access_flags = in.u8();
    a.timeout = in.u8();
    a.retry_cnt = in.u8();
    a.rnr_retry = in.u8();
    a.min_rnr_timer = in.u8();
    a.max_rd_atomic = in.u8();
    a.max_dest_rd_atomic = in.u8();
    a.port_num = in.u8();
    a.pkey_index = in.u16();
    const uint8_t gs = in.u8();
    a.ah_attr.dgid = fd.gid();
    if (gs % 3 == 1) a.ah_attr.dgid.raw[3] = 1;  // not IPv4-mapped
    if (gs % 3 == 2) a.ah_attr.dgid.raw[15] ^= 0x10;  // another address of the subnet
    a.ah_attr.sgid_index = in.u8() % 3 == 0 ? 1 : 0;
    a.ah_attr.port_num = 1;
    poll();  // completions produced before the transition are legitimate
    const QpState before = q.state();
    const int rc = q.modify(a, mask);
    FUZZ_CHECK(rc == 0 || rc == EINVAL || rc == EOPNOTSUPP, "modify_qp returned %d", rc);
    if (rc) {
      FUZZ_CHECK(q.state() == before, "a failed modify_qp changed the state");
    } else if ((mask & qp_attr_mask::state) && a.qp_state == QpState::reset &&
               before != QpState::reset) {
      discard(qi);
    }
  }

  void op_reg(Reader& in) {
    const int s = in.u8() % kDyn;
    const uint32_t acc = in.u8();
    const uint16_t off = in.u16();
    const uint32_t len = in.u32();
    const uint8_t bogus = in.u8();
    if (bogus % 4 == 3) {
      // Nonsense arguments: refused, or a region that is deregistered again at once (it is
      // never used: its memory may not exist).
      mid::Mr* m = nullptr;
      const uint64_t addr = (bogus & 4) ? ~0ull - off : 0x10000ull * off;
      int rc = mid::reg_mr(pd.raw(), reinterpret_cast<void*>(addr), len, acc, &m);
      FUZZ_CHECK(rc == 0 || rc == EINVAL || rc == ENOMEM, "reg_mr returned %d", rc);
      if (addr + len < addr || len == 0 || (acc & ~access::supported))
        FUZZ_CHECK(rc == EINVAL, "reg_mr accepted addr %#lx len %u access %#x",
                   (unsigned long)addr, len, acc);
      if (rc == 0) FUZZ_CHECK(mid::dereg_mr(m) == 0, "dereg_mr");
      return;
    }
    if (dmr[s].raw()) {
      poll();
      const int rc = dmr[s].destroy();
      FUZZ_CHECK(rc == 0 || rc == EBUSY, "dereg_mr returned %d", rc);
      if (rc == 0) dyn[s].protect(true);  // any later access through it is a SEGV
      return;
    }
    dyn[s].protect(false);
    const size_t o = off % kDynSize;
    const size_t l = std::min<size_t>(len % (kDynSize + 1), kDynSize - o);
    auto m = Mr::reg(pd, dyn[s].data() + o, l, acc & 0x3f);
    if (!m) {
      FUZZ_CHECK(m.error() == EINVAL || m.error() == ENOMEM, "reg_mr returned %d", m.error());
      dyn[s].protect(true);
      return;
    }
    dmr[s] = m.take();
    dkey[s] = dmr[s].lkey();
    draw[s] = dmr[s].raw();
  }

  void check_memory() {
    long where = 0;
    for (Region* r : {&r0, &r1, &r2, &rr, &scratch})
      FUZZ_CHECK(r->canaries_ok(&where), "canary of region %p overwritten at offset %ld",
                 static_cast<void*>(r->data()), where);
    for (int s = 0; s < kDyn; s++)
      if (dmr[s].raw()) FUZZ_CHECK(dyn[s].canaries_ok(&where), "dynamic canary at %ld", where);
    FUZZ_CHECK(std::memcmp(r2.data(), r2_pattern.data(), kR2) == 0,
               "a region of a PD no QP uses was modified");
    FUZZ_CHECK(std::memcmp(rr.data(), rr_pattern.data(), kRr) == 0,
               "a remote-read-only region was modified");
  }

  // Every QP to ERR: everything outstanding must flush.
  void error_and_flush() {
    for (int i = 0; i < kQps; i++) {
      QpAttr a;
      a.qp_state = QpState::err;
      poll();
      FUZZ_CHECK(qp[i].modify(a, qp_attr_mask::state) == 0, "modify to ERR");
    }
    for (int r = 0; r < 16; r++) {
      deliver(1, SIZE_MAX);
      poll();
    }
    for (const auto& [id, p] : outstanding) {
      if (p.qp < 0 || (p.send && !p.signaled)) continue;  // SRQ keeps its WQEs; silent success
      invariant_failed("QP %d in ERR did not flush %s WR %#lx", p.qp, p.send ? "send" : "recv",
                       (unsigned long)id);
    }
  }

  void keepalive() {
    Qp& a = qp[0];
    Qp& b = qp[1];
    reset_and_connect(0);
    reset_and_connect(1);
    for (uint32_t i = 0; i < 48; i++) r0.data()[0x100 + i] = uint8_t(0x30 + i);
    std::memset(r0.data() + 0x800, 0, 64);
    Sge rs{r0.addr(0x800), 64, mr0.lkey()};
    RecvWr rw{};
    rw.wr_id = kKeepalive;
    rw.sg_list = &rs;
    rw.num_sge = 1;
    RecvWr* rbad;
    FUZZ_CHECK(b.post_recv(&rw, &rbad) == 0, "keepalive post_recv");
    Sge ss{r0.addr(0x100), 48, mr0.lkey()};
    SendWr sw{};
    sw.wr_id = kKeepalive;
    sw.opcode = WrOpcode::send;
    sw.sg_list = &ss;
    sw.num_sge = 1;
    sw.send_flags = send_flags::signaled;
    SendWr* sbad;
    FUZZ_CHECK(a.post_send(&sw, &sbad) == 0, "keepalive post_send");
    int got = 0;
    for (int r = 0; r < 64 && got < 2; r++) {
      deliver(1, SIZE_MAX);
      for (const Wc& w : poll_raw()) {
        FUZZ_CHECK(w.wr_id == kKeepalive && w.status == WcStatus::success,
                   "keepalive: WR %#lx %s", (unsigned long)w.wr_id, wc_status_str(w.status));
        got++;
      }
    }
    FUZZ_CHECK(got == 2, "the keepalive SEND did not complete (%d of 2)", got);
    FUZZ_CHECK(std::memcmp(r0.data() + 0x800, r0.data() + 0x100, 48) == 0, "keepalive bytes");
  }
};

World& world() {
  static World* w = new World();
  return *w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  w.baseline();
  Reader in{data, data + size};
  for (int ops = 0; !in.empty() && ops < 256; ops++) {
    switch (in.u8() % 8) {
      case 0: w.op_post_send(in); break;
      case 1: w.op_post_recv(in, false); break;
      case 2: w.op_post_recv(in, true); break;
      case 3: w.op_modify(in); break;
      case 4: w.op_reg(in); break;
      case 5: {
        const int rounds = 1 + in.u8() % 4;
        const uint8_t n = in.u8();
        w.deliver(rounds, n == 0 ? SIZE_MAX : n);
        w.poll();
        break;
      }
      case 6: w.poll(); break;
      case 7: {
        int qi;
        w.pick_qp(in.u8(), &qi);
        w.reset_and_connect(qi);
        break;
      }
    }
  }
  w.error_and_flush();
  w.check_memory();
  for (int i = 0; i < kQps; i++) {
    w.poll();
    FUZZ_CHECK(reset_qp(w.qp[i]) == 0, "reset");
    w.discard(i);
  }
  w.fd.drop_tx();
  w.drop_held();
  w.teardown_dynamic();
  w.keepalive();
  w.check_memory();
  std::string why;
  FUZZ_CHECK(w.fd.counters_consistent(&why), "%s", why.c_str());
  return 0;
}
