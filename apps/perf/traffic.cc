#include "perf/traffic.h"

#include <sys/prctl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <ctime>

#include "perf/common.h"

namespace dverbs::perf {

namespace {

constexpr uint32_t kQpIndexMask = (1u << 14) - 1;  // QPN = generation << 14 | table index

void sleep_us(long us) {
  timespec ts{0, us * 1000};
  nanosleep(&ts, nullptr);
}

}  // namespace

TrafficResult run_traffic(Traffic& t, double warmup, double duration, uint64_t messages) {
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);  // 1 µs: lazy sleeps stay short
  const bool is_send = t.op == WrOpcode::send;
  const uint32_t g = std::max<uint32_t>(1, t.group);
  std::vector<int32_t> send_map(kQpIndexMask + 1, -1), recv_map(kQpIndexMask + 1, -1);
  for (size_t i = 0; i < t.flows.size(); i++) {
    send_map[t.flows[i].qp->qp_num() & kQpIndexMask] = int32_t(i);
    if (t.flows[i].peer) recv_map[t.flows[i].peer->qp_num() & kQpIndexMask] = int32_t(i);
  }

  std::vector<SendWr> wrs(g);
  std::vector<Sge> sges(g);
  std::vector<RecvWr> rwrs(64);
  std::vector<Sge> rsges(64);
  for (auto& s : rsges) s = Sge{t.recv_addr, std::max<uint32_t>(t.size, 1), t.recv_lkey};

  auto post_recvs = [&](Traffic::Flow& f, uint32_t n) {
    while (n) {
      uint32_t k = std::min<uint32_t>(n, uint32_t(rwrs.size()));
      for (uint32_t i = 0; i < k; i++) {
        rwrs[i] = RecvWr{};
        rwrs[i].wr_id = f.recv_posted + i;
        rwrs[i].sg_list = &rsges[i];
        rwrs[i].num_sge = 1;
        rwrs[i].next = i + 1 < k ? &rwrs[i + 1] : nullptr;
      }
      RecvWr* bad = nullptr;
      if (int e = f.peer->post_recv(&rwrs[0], &bad)) die("post_recv", e);
      f.recv_posted += k;
      n -= k;
    }
  };
  if (is_send)
    for (auto& f : t.flows)
      if (f.peer) post_recvs(f, t.rq_depth);

  std::deque<uint32_t> ready;
  for (uint32_t i = 0; i < t.flows.size(); i++) {
    ready.push_back(i);
    t.flows[i].queued = true;
  }
  uint64_t inflight = 0, total_completed = 0, total_received = 0, total_posted = 0;
  std::vector<uint32_t> touched;
  bool stopping = false, measuring = false;
  const auto t_start = Clock::now();
  auto t_measure = t_start;
  uint64_t count0 = 0;
  auto last_progress = t_start;
  TrafficResult res;
  Wc wc[64];
  uint32_t spins = 0;

  // A flow may post another group while its window has room both for completions (the
  // sender's ACKs) and, for SEND, for receives the application has not yet reposted: the
  // sender can be acknowledged before the receiver's completions are polled, and running
  // ahead of the reposts would exhaust the receive queue (RNR NAKs).
  auto room = [&](const Traffic::Flow& f) {
    return f.posted - f.completed + g <= t.per_flow_window &&
           (!f.peer || f.posted - f.received + g <= t.per_flow_window);
  };
  auto post_group = [&](Traffic::Flow& f) {
    for (uint32_t i = 0; i < g; i++) {
      const uint64_t seq = f.posted + i;
      const uint64_t off = uint64_t(seq % t.slots) * t.size;
      SendWr& w = wrs[i];
      w = SendWr{};
      w.wr_id = seq;
      w.next = i + 1 < g ? &wrs[i + 1] : nullptr;
      w.opcode = t.op;
      sges[i] = Sge{(t.op == WrOpcode::rdma_read ? t.recv_addr : t.send_addr) + off, t.size,
                    t.op == WrOpcode::rdma_read ? t.recv_lkey : t.lkey};
      w.sg_list = &sges[i];
      w.num_sge = t.size ? 1 : 0;
      w.send_flags = (i + 1 == g ? send_flags::signaled : 0) |
                     (t.inline_data && t.op != WrOpcode::rdma_read ? send_flags::inline_data : 0);
      w.wr.rdma.remote_addr = t.remote_addr + off;
      w.wr.rdma.rkey = t.rkey;
    }
    SendWr* bad = nullptr;
    if (int e = f.qp->post_send(&wrs[0], &bad)) die("post_send", e);
    f.posted += g;
    inflight += g;
    total_posted += g;
  };

  for (;;) {
    bool did = false;
    // Completions: sender groups and receives (the CQs may be one).
    Cq* const cqs[2] = {t.send_cq, t.recv_cq != t.send_cq ? t.recv_cq : nullptr};
    for (Cq* cq : cqs) {
      if (!cq) continue;
      int n = cq->poll(wc, 64);
      if (n < 0) die("poll_cq", -n);
      for (int i = 0; i < n; i++) {
        const Wc& c = wc[i];
        if (c.status != WcStatus::success)
          die(std::string("completion error: ") + wc_status_str(c.status));
        if (c.opcode == WcOpcode::recv) {
          int32_t fi = recv_map[c.qp_num & kQpIndexMask];
          if (fi < 0) die("receive completion for an unknown QP");
          Traffic::Flow& f = t.flows[size_t(fi)];
          f.received++;
          total_received++;
          f.repost++;
          if (!f.touched) {
            f.touched = true;
            touched.push_back(uint32_t(fi));
          }
          if (!f.queued && !stopping && room(f)) {
            f.queued = true;
            ready.push_back(uint32_t(fi));
          }
        } else {
          int32_t fi = send_map[c.qp_num & kQpIndexMask];
          if (fi < 0) die("send completion for an unknown QP");
          Traffic::Flow& f = t.flows[size_t(fi)];
          const uint64_t done = c.wr_id + 1 - f.completed;
          f.completed = c.wr_id + 1;
          inflight -= done;
          total_completed += done;
          if (!f.queued && !stopping && room(f)) {
            f.queued = true;
            ready.push_back(uint32_t(fi));
          }
        }
      }
      if (n > 0) did = true;
    }
    for (uint32_t fi : touched) {
      Traffic::Flow& f = t.flows[fi];
      if (!stopping) post_recvs(f, f.repost);
      f.repost = 0;
      f.touched = false;
    }
    touched.clear();

    // Post groups to flows with room, round-robin.
    while (!stopping && !ready.empty() && inflight + g <= t.total_window) {
      Traffic::Flow& f = t.flows[ready.front()];
      ready.pop_front();
      f.queued = false;
      post_group(f);
      did = true;
      if (room(f)) {
        f.queued = true;
        ready.push_back(uint32_t(&f - t.flows.data()));
      }
    }

    const uint64_t count = is_send ? total_received : total_completed;
    if (did || ++spins % 1024 == 0) {
      const auto now = Clock::now();
      if (did) last_progress = now;
      const double el = std::chrono::duration<double>(now - t_start).count();
      if (!measuring && (messages || el >= warmup)) {
        measuring = true;
        t_measure = now;
        count0 = count;
        res.process_cpu = -process_cpu_seconds();
        res.lcore_cpu = -lcore_cpu_seconds();
      }
      if (measuring && !stopping) {
        const double m = std::chrono::duration<double>(now - t_measure).count();
        if (messages ? count - count0 >= messages : m >= duration) {
          res.messages = count - count0;
          res.seconds = m;
          res.process_cpu += process_cpu_seconds();
          res.lcore_cpu += lcore_cpu_seconds();
          stopping = true;
        }
      }
      if (stopping && inflight == 0 && (!is_send || total_received == total_posted)) {
        res.total = count;
        break;
      }
      if (std::chrono::duration<double>(now - last_progress).count() > 5) {
        std::fprintf(stderr,
                     "dverbs-perf: no completion for 5 s (posted %llu, completed %llu, "
                     "received %llu)\n",
                     (unsigned long long)total_posted, (unsigned long long)total_completed,
                     (unsigned long long)total_received);
        std::exit(1);
      }
    }
    if (!did && t.lazy) sleep_us(20);
  }
  return res;
}

}  // namespace dverbs::perf
