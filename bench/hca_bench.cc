// Fast-path micro-benchmarks of the soft HCA, one per piece: post_send, poll_cq, the CQ
// event path (cq_push → mid::cq_comp_event → handler thread), key and QP lookup, the
// requester, responder and completer steps, a whole single-thread round of the transport,
// and neighbour lookup. (Header build/parse and ICRC are in wire_bench.cc.)
//
// One device on the built-in loopback port, opened with DVERBS_LCORES=1 and its lcore
// stopped (BenchPeer below), so this thread owns engine 0: it drives the engine itself
// through req_step, Engine::receive and Engine::poll, and post_send/poll_cq run without
// inline progress (Device::progress is a no-op while the device has lcores). Frames a step
// sends land on loopback queue 0 and are taken back with Port::rx_burst for the next step.
// Step benchmarks time only their step (manual time) and run the rest of the round
// untimed. Objects are created once and never destroyed (destroying a QP would wait for the
// stopped lcore).
#include <benchmark/benchmark.h>

#include <rte_arp.h>
#include <rte_ether.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/hca.h"
#include "pmd/hca/objects.h"
#include "pmd/net/lcore.h"
#include "pmd/net/neigh.h"
#include "pmd/net/port.h"

namespace dverbs::pmd::hca {
// Device's test peer (friend in device.h): stops the transport lcore so that the benchmark
// thread is the only one running engine 0.
struct DeviceTestPeer {
  static void stop_lcores(Device& d) {
    for (auto& t : d.engines_threads_) t->stop();
    if (d.inline_helper_) d.inline_helper_->stop();
  }
};
}  // namespace dverbs::pmd::hca

namespace {

using namespace dverbs;
namespace hca = dverbs::pmd::hca;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kBatch = hca::Engine::kBurst;  // messages per step round
constexpr uint32_t kMsg = 64;
constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read;

[[noreturn]] void fail(const char* what, int err = 0) {
  std::fprintf(stderr, "hca_bench: %s%s%s\n", what, err ? ": " : "", err ? std::strerror(err) : "");
  std::exit(1);
}

int connect(Qp& qp, const Gid& gid, uint32_t rqpn, uint32_t lpsn, uint32_t rpsn) {
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.qp_access_flags = kAll;
  if (int e = qp.modify(a, m::state | m::pkey_index | m::port | m::access_flags)) return e;
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.path_mtu = Mtu::mtu1024;
  a.dest_qp_num = rqpn;
  a.rq_psn = rpsn;
  a.max_dest_rd_atomic = 16;
  a.min_rnr_timer = 1;
  a.ah_attr.dgid = gid;
  a.ah_attr.port_num = 1;
  if (int e = qp.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                               m::max_dest_rd_atomic | m::min_rnr_timer))
    return e;
  a = QpAttr{};
  a.qp_state = QpState::rts;
  a.sq_psn = lpsn;
  a.timeout = 0;  // no retransmission timer: nothing is lost on the loopback
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = 16;
  return qp.modify(
      a, m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic);
}

// A connected RC pair on engine 0 with its own CQs.
struct Pair {
  Cq cq_a, cq_b;
  Qp a, b;
  hca::Qp* ha = nullptr;
  hca::Qp* hb = nullptr;
};

struct Bench {
  Context ctx;
  Pd pd;
  hca::Device* dev = nullptr;
  hca::Engine* eng = nullptr;
  std::vector<uint8_t> buf;
  Mr mr;
  Gid gid{};
  Pair send_pair, write_pair, post_pair;
  Cq poll_cq, event_cq, cross_cq;
  std::atomic<uint64_t> handled{0};

  void make_pair(Pair& p, uint32_t depth) {
    p.cq_a = Cq::create(ctx, 1u << 16).take();
    p.cq_b = Cq::create(ctx, 1u << 16).take();
    QpInit init;
    init.cap = {depth, depth, 1, 1, 256};
    auto a = Qp::create(pd, p.cq_a, p.cq_a, init);
    auto b = Qp::create(pd, p.cq_b, p.cq_b, init);
    if (!a || !b) fail("create_qp", a ? b.error() : a.error());
    p.a = a.take();
    p.b = b.take();
    if (connect(p.a, gid, p.b.qp_num(), 100, 200) || connect(p.b, gid, p.a.qp_num(), 200, 100))
      fail("connect");
    p.ha = hca::qp_of(p.a.raw());
    p.hb = hca::qp_of(p.b.raw());
    if (p.ha->engine != eng || p.hb->engine != eng) fail("QP not on engine 0");
  }

  Bench() {
    setenv("DVERBS_LCORES", "1", 1);
    unsetenv("DVERBS_PORT");
    unsetenv("DVERBS_FAULT");
    unsetenv("DVERBS_PCAP");
    auto c = Context::open();
    if (!c) fail("cannot open the dverbs device", c.error());
    ctx = c.take();
    dev = hca::device_of(ctx.raw());  // checked: nullptr when dverbsd serves the process
    if (!dev) fail("the device is not the embedded HCA (set DVERBS_DAEMON=off)");
    hca::DeviceTestPeer::stop_lcores(*dev);
    eng = &dev->engine(0);
    pd = Pd::alloc(ctx).take();
    ctx.query_gid(1, 0, &gid);
    buf.assign(1 << 20, 0x5a);
    auto m = Mr::reg(pd, buf.data(), buf.size(), kAll);
    if (!m) fail("reg_mr", m.error());
    mr = m.take();
    make_pair(send_pair, 4096);
    make_pair(write_pair, 4096);
    make_pair(post_pair, 4096);
    poll_cq = Cq::create(ctx, 1u << 16).take();
    cross_cq = Cq::create(ctx, 1u << 16).take();
    event_cq = Cq::create(ctx, 1u << 16, [this](Cq&) {
                 handled.fetch_add(1, std::memory_order_release);
               }).take();
  }

  uint64_t addr(uint32_t off = 0) const { return reinterpret_cast<uint64_t>(buf.data()) + off; }

  // Posts n WRs on p.a (SEND: and n receives on p.b); the last one signaled unless `all`.
  void post(Pair& p, WrOpcode op, uint32_t n, bool signal_all = true) {
    SendWr wrs[kBatch];
    Sge sges[kBatch];
    for (uint32_t i = 0; i < n; i++) {
      sges[i] = Sge{addr(), kMsg, mr.lkey()};
      wrs[i] = SendWr{};
      wrs[i].wr_id = i;
      wrs[i].next = i + 1 < n ? &wrs[i + 1] : nullptr;
      wrs[i].sg_list = &sges[i];
      wrs[i].num_sge = 1;
      wrs[i].opcode = op;
      wrs[i].send_flags =
          send_flags::inline_data | (signal_all || i + 1 == n ? send_flags::signaled : 0);
      wrs[i].wr.rdma.remote_addr = addr(4096);
      wrs[i].wr.rdma.rkey = mr.rkey();
    }
    if (op == WrOpcode::send) {
      RecvWr rw[kBatch];
      Sge rs[kBatch];
      for (uint32_t i = 0; i < n; i++) {
        rs[i] = Sge{addr(8192), kMsg, mr.lkey()};
        rw[i] = RecvWr{};
        rw[i].sg_list = &rs[i];
        rw[i].num_sge = 1;
        rw[i].next = i + 1 < n ? &rw[i + 1] : nullptr;
      }
      RecvWr* bad;
      if (int e = p.b.post_recv(rw, &bad)) fail("post_recv", e);
    }
    SendWr* bad;
    if (int e = p.a.post_send(wrs, &bad)) fail("post_send", e);
  }

  // The requester step for everything posted on p.a, then the TX flush.
  void requester(Pair& p, uint32_t budget) {
    p.ha->lock.lock();
    hca::req_step(*eng, *p.ha, int(budget));
    p.ha->lock.unlock();
    eng->tx_flush();
  }

  // Takes exactly n frames (or what arrives) back from loopback queue 0.
  uint16_t take(rte_mbuf** pkts, uint16_t n) {
    uint16_t got = 0;
    for (int tries = 0; got < n && tries < 1000; tries++)
      got = uint16_t(got + dev->port().rx_burst(0, pkts + got, uint16_t(n - got)));
    return got;
  }

  // Polls until `n` completions arrived on cq (the engine is driven by the caller).
  void drain(Cq& cq, uint32_t n) {
    Wc wc[64];
    uint32_t got = 0;
    for (int tries = 0; got < n; tries++) {
      int k = cq.poll(wc, 64);
      if (k < 0) fail("poll_cq", -k);
      for (int i = 0; i < k; i++)
        if (wc[i].status != WcStatus::success) fail(wc_status_str(wc[i].status));
      got += uint32_t(k);
      if (tries > 10'000'000) fail("completions missing");
    }
  }
};

Bench& bench() {
  static Bench* b = new Bench();  // never destroyed (see the top of the file)
  return *b;
}

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---------------------------------------------------------------- posting and polling

// post_send of `chain` inline 64-byte unsignaled WRITEs per call; the engine empties the
// SQ (untimed) whenever it is nearly full.
void BM_PostSend(benchmark::State& s) {
  Bench& b = bench();
  Pair& p = b.post_pair;
  const uint32_t chain = uint32_t(s.range(0));
  std::vector<SendWr> wrs(chain);
  std::vector<Sge> sges(chain);
  for (uint32_t i = 0; i < chain; i++) {
    sges[i] = Sge{b.addr(), kMsg, b.mr.lkey()};
    wrs[i] = SendWr{};
    wrs[i].next = i + 1 < chain ? &wrs[i + 1] : nullptr;
    wrs[i].sg_list = &sges[i];
    wrs[i].num_sge = 1;
    wrs[i].opcode = WrOpcode::rdma_write;
    wrs[i].send_flags = send_flags::inline_data;
    wrs[i].wr.rdma.remote_addr = b.addr(4096);
    wrs[i].wr.rdma.rkey = b.mr.rkey();
  }
  const uint64_t cap = p.ha->sq.capacity();
  for (auto _ : s) {
    if (p.ha->sq.claimed() - p.ha->sq.retired() + chain > cap) {
      s.PauseTiming();
      while (p.ha->sq.retired() != p.ha->sq.claimed()) b.eng->poll();
      s.ResumeTiming();
    }
    SendWr* bad;
    if (int e = p.a.post_send(wrs.data(), &bad)) fail("post_send", e);
  }
  s.SetItemsProcessed(int64_t(s.iterations()) * chain);
}
BENCHMARK(BM_PostSend)->Arg(1)->Arg(16);

// poll_cq taking `batch` completions per call from a CQ refilled (untimed) with cq_push.
void BM_PollCq(benchmark::State& s) {
  Bench& b = bench();
  hca::Cq& cq = *hca::to_cq(b.poll_cq.raw());
  const int batch = int(s.range(0));
  Wc wc{};
  wc.status = WcStatus::success;
  wc.opcode = WcOpcode::send;
  std::vector<Wc> out(static_cast<size_t>(batch));
  int left = 0;
  for (auto _ : s) {
    if (left < batch) {
      s.PauseTiming();
      for (int i = 0; i < 4096; i++) hca::cq_push(cq, wc, false);
      left += 4096;
      s.ResumeTiming();
    }
    int n = b.poll_cq.poll(out.data(), batch);
    benchmark::DoNotOptimize(n);
    left -= n;
  }
  s.SetItemsProcessed(int64_t(s.iterations()) * batch);
}
BENCHMARK(BM_PollCq)->Arg(1)->Arg(16);

// poll_cq on an empty CQ: what every idle poll of an application costs.
void BM_PollCqEmpty(benchmark::State& s) {
  Bench& b = bench();
  Wc wc[16];
  for (auto _ : s) benchmark::DoNotOptimize(b.poll_cq.poll(wc, 16));
}
BENCHMARK(BM_PollCqEmpty);

// Completions crossing cores: a second thread pushes (the role of the engine's lcore)
// while this one polls in batches of up to 16 (the application's), with at most half the
// ring in flight. Per item: what a completion costs when producer and consumer run on two
// cores and the ring's and the resize gate's cache lines travel between them.
void BM_CqCrossThread(benchmark::State& s) {
  Bench& b = bench();
  hca::Cq& cq = *hca::to_cq(b.cross_cq.raw());
  constexpr uint64_t kInFlight = 1u << 15, kCheck = 1024;
  std::atomic<uint64_t> polled{0};
  std::atomic<bool> stop{false};
  std::thread pusher([&] {
    Wc wc{};
    wc.opcode = WcOpcode::recv;
    uint64_t pushed = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (pushed % kCheck == 0)
        while (pushed - polled.load(std::memory_order_acquire) > kInFlight - kCheck &&
               !stop.load(std::memory_order_relaxed))
          __builtin_ia32_pause();
      hca::cq_push(cq, wc, false);
      ++pushed;
    }
  });
  Wc out[16];
  uint64_t got = 0;
  for (auto _ : s) {
    int n;
    while ((n = b.cross_cq.poll(out, 16)) == 0) __builtin_ia32_pause();
    got += uint64_t(n);
    polled.store(got, std::memory_order_release);
  }
  stop = true;
  pusher.join();
  while (b.cross_cq.poll(out, 16) > 0) {
  }
  s.SetItemsProcessed(int64_t(got));
}
BENCHMARK(BM_CqCrossThread)->UseRealTime();

// ---------------------------------------------------------------- CQ event path

// Producer side: arm, push one completion (cq_push sees the CQ armed and calls
// mid::cq_comp_event, which queues the CQ for a handler thread), poll it back out.
void BM_CqEventRaise(benchmark::State& s) {
  Bench& b = bench();
  hca::Cq& cq = *hca::to_cq(b.event_cq.raw());
  Wc wc{}, out;
  wc.opcode = WcOpcode::recv;
  for (auto _ : s) {
    b.event_cq.req_notify();
    hca::cq_push(cq, wc, false);
    benchmark::DoNotOptimize(b.event_cq.poll(&out, 1));
  }
}
BENCHMARK(BM_CqEventRaise);

// End to end: from cq_push on an armed CQ until the consumer's handler has run on a
// midlayer handler thread (includes waking that thread).
void BM_CqEventToHandler(benchmark::State& s) {
  Bench& b = bench();
  hca::Cq& cq = *hca::to_cq(b.event_cq.raw());
  Wc wc{}, out;
  wc.opcode = WcOpcode::recv;
  for (auto _ : s) {
    const uint64_t before = b.handled.load(std::memory_order_acquire);
    b.event_cq.req_notify();
    hca::cq_push(cq, wc, false);
    while (b.handled.load(std::memory_order_acquire) == before) __builtin_ia32_pause();
    s.PauseTiming();
    while (b.event_cq.poll(&out, 1) > 0) {
    }
    s.ResumeTiming();
  }
}
BENCHMARK(BM_CqEventToHandler)->UseRealTime();

// ---------------------------------------------------------------- lookups

// Device::mr_lookup over n registered keys (cycled).
void BM_MrLookup(benchmark::State& s) {
  Bench& b = bench();
  static auto& mrs = *new std::vector<Mr>();  // never destroyed (see the top of the file)
  const size_t n = size_t(s.range(0));
  while (mrs.size() < n) {
    auto m = Mr::reg(b.pd, b.buf.data() + (mrs.size() % 1024) * 64, 64, kAll);
    if (!m) fail("reg_mr", m.error());
    mrs.push_back(m.take());
  }
  std::vector<uint32_t> keys;
  for (size_t i = 0; i < n; i++) keys.push_back(mrs[(i * 7919) % n].lkey());
  size_t i = 0;
  for (auto _ : s) {
    benchmark::DoNotOptimize(b.dev->mr_lookup(keys[i]));
    if (++i == n) i = 0;
  }
}
BENCHMARK(BM_MrLookup)->Arg(1)->Arg(1000);

// Device::qp_lookup over n QPs (cycled).
void BM_QpLookup(benchmark::State& s) {
  Bench& b = bench();
  static auto& qps = *new std::vector<Qp>();  // never destroyed (see the top of the file)
  static auto& cq = *new Cq(Cq::create(b.ctx, 16).take());
  const size_t n = size_t(s.range(0));
  QpInit init;
  init.cap = {1, 1, 1, 1, 0};
  while (qps.size() < n) {
    auto q = Qp::create(b.pd, cq, cq, init);
    if (!q) fail("create_qp", q.error());
    qps.push_back(q.take());
  }
  std::vector<uint32_t> qpns;
  for (size_t i = 0; i < n; i++) qpns.push_back(qps[(i * 7919) % n].qp_num());
  size_t i = 0;
  for (auto _ : s) {
    benchmark::DoNotOptimize(b.dev->qp_lookup(qpns[i]));
    if (++i == n) i = 0;
  }
}
BENCHMARK(BM_QpLookup)->Arg(1)->Arg(1000);

// ---------------------------------------------------------------- transport steps

Pair& pair_for(Bench& b, int op) {
  return op == 0 ? b.send_pair : b.write_pair;
}
WrOpcode opcode(int op) {
  return op == 0 ? WrOpcode::send : WrOpcode::rdma_write;
}
const char* op_label(int op) {
  return op == 0 ? "RC SEND 64 B" : "RC WRITE 64 B";
}

// Runs one round of 32 messages through the engine, timing only the step `which`:
// 0 = requester (req_step + TX flush), 1 = responder (Engine::receive of the 32 request
// frames: parse, ICRC, QP lookup, responder, coalesced ACK built), 2 = completer
// (Engine::receive of the ACK: retire 32 WQEs, 32 send completions).
double round_trip(Bench& b, int op, int which) {
  Pair& p = pair_for(b, op);
  rte_mbuf* pkts[kBatch];
  double t = 0;
  b.post(p, opcode(op), kBatch);
  auto t0 = Clock::now();
  b.requester(p, kBatch);
  if (which == 0) t = since(t0);
  uint16_t n = b.take(pkts, kBatch);
  if (n != kBatch) fail("requester frames missing");
  t0 = Clock::now();
  b.eng->receive(pkts, n);
  if (which == 1) t = since(t0);
  b.eng->tx_flush();
  n = b.take(pkts, 1);
  if (n != 1) fail("no coalesced ACK");
  t0 = Clock::now();
  b.eng->receive(pkts, n);
  if (which == 2) t = since(t0);
  b.drain(p.cq_a, kBatch);
  if (op == 0) b.drain(p.cq_b, kBatch);
  return t;
}

void BM_RequesterStep(benchmark::State& s) {
  Bench& b = bench();
  s.SetLabel(op_label(int(s.range(0))));
  for (auto _ : s) s.SetIterationTime(round_trip(b, int(s.range(0)), 0));
  s.SetItemsProcessed(int64_t(s.iterations()) * kBatch);
}
BENCHMARK(BM_RequesterStep)->Arg(0)->Arg(1)->UseManualTime();

void BM_ResponderStep(benchmark::State& s) {
  Bench& b = bench();
  s.SetLabel(op_label(int(s.range(0))));
  for (auto _ : s) s.SetIterationTime(round_trip(b, int(s.range(0)), 1));
  s.SetItemsProcessed(int64_t(s.iterations()) * kBatch);
}
BENCHMARK(BM_ResponderStep)->Arg(0)->Arg(1)->UseManualTime();

void BM_CompleterStep(benchmark::State& s) {
  Bench& b = bench();
  s.SetLabel(op_label(int(s.range(0))));
  for (auto _ : s) s.SetIterationTime(round_trip(b, int(s.range(0)), 2));
  s.SetItemsProcessed(int64_t(s.iterations()) * kBatch);
}
BENCHMARK(BM_CompleterStep)->Arg(0)->Arg(1)->UseManualTime();

// The whole transport on one thread: post 32 messages, run Engine::poll until every
// completion (both sides) is polled. Comparable to `dverbs-perf rate --lcores 0`.
void BM_EngineRound(benchmark::State& s) {
  Bench& b = bench();
  const int op = int(s.range(0));
  Pair& p = pair_for(b, op);
  s.SetLabel(op_label(op));
  Wc wc[64];
  for (auto _ : s) {
    b.post(p, opcode(op), kBatch);
    uint32_t sent = 0, recvd = op == 0 ? 0 : kBatch;
    for (long spins = 0; sent < kBatch || recvd < kBatch; spins++) {
      b.eng->poll();
      int k = p.cq_a.poll(wc, 64);
      sent += k > 0 ? uint32_t(k) : 0;
      if (op == 0) {
        k = p.cq_b.poll(wc, 64);
        recvd += k > 0 ? uint32_t(k) : 0;
      }
      if (spins > 10'000'000) fail("engine round did not complete");
    }
  }
  s.SetItemsProcessed(int64_t(s.iterations()) * kBatch);
}
BENCHMARK(BM_EngineRound)->Arg(0)->Arg(1);

// ---------------------------------------------------------------- neighbour table

struct NeighFixture {
  pmd::net::NeighTable table;
  std::vector<uint32_t> ips;
  explicit NeighFixture(Bench& b) : table(b.dev->port().ip(), b.dev->port().mac()) {
    // Learn 1000 neighbours from ARP replies addressed to us.
    const uint32_t own = b.dev->port().ip();
    for (uint32_t i = 0; i < 1000; i++) {
      const uint32_t ip = (own & 0xffff0000u) | (0x0100u + i);
      rte_mbuf* m = b.dev->port().alloc_mbuf();
      if (!m) fail("mbuf");
      auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
      const uint8_t mac[6] = {0x02, 0x11, 0x22, uint8_t(i >> 16), uint8_t(i >> 8), uint8_t(i)};
      std::memcpy(eth->dst_addr.addr_bytes, b.dev->port().mac(), 6);
      std::memcpy(eth->src_addr.addr_bytes, mac, 6);
      eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
      auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
      arp->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
      arp->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
      arp->arp_hlen = RTE_ETHER_ADDR_LEN;
      arp->arp_plen = 4;
      arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REPLY);
      std::memcpy(arp->arp_data.arp_sha.addr_bytes, mac, 6);
      arp->arp_data.arp_sip = rte_cpu_to_be_32(ip);
      std::memcpy(arp->arp_data.arp_tha.addr_bytes, b.dev->port().mac(), 6);
      arp->arp_data.arp_tip = rte_cpu_to_be_32(own);
      m->data_len = m->pkt_len = uint32_t(sizeof(rte_ether_hdr) + sizeof(rte_arp_hdr));
      if (!table.handle_rx(b.dev->port(), 0, m)) fail("ARP frame not taken");
      ips.push_back(ip);
    }
  }
};

NeighFixture& neigh() {
  static NeighFixture* f = new NeighFixture(bench());
  return *f;
}

// NeighTable::lookup: 0 = the port's own address, 1 = one learnt neighbour,
// 2 = 1000 learnt neighbours cycled.
void BM_NeighLookup(benchmark::State& s) {
  Bench& b = bench();
  NeighFixture& f = neigh();
  const int mode = int(s.range(0));
  std::vector<uint32_t> ips = mode == 0   ? std::vector<uint32_t>{b.dev->port().ip()}
                              : mode == 1 ? std::vector<uint32_t>{f.ips[17]}
                                          : f.ips;
  for (size_t i = 0; i < ips.size(); i++) ips[i] = ips[(i * 7919) % ips.size()];
  uint8_t mac[6];
  size_t i = 0;
  for (auto _ : s) {
    if (!f.table.lookup(ips[i], mac)) fail("neighbour not resolved");
    benchmark::DoNotOptimize(mac);
    if (++i == ips.size()) i = 0;
  }
  s.SetLabel(mode == 0 ? "own address" : mode == 1 ? "1 neighbour" : "1000 neighbours");
}
BENCHMARK(BM_NeighLookup)->Arg(0)->Arg(1)->Arg(2);

}  // namespace

BENCHMARK_MAIN();
