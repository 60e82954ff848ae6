// qps: message rate and resident memory with 1, 10, 100, 1000 active QP pairs on the
// built-in loopback port. The total window stays the same at every count (so the port's
// queues see the same load); it is handed out in signaled groups round-robin, so every QP
// carries traffic in turn. Memory: RSS growth per QP, and the same minus the QP's WQE rings.
#include <cstdio>
#include <functional>

#include "perf/fabric.h"
#include "perf/scenarios.h"
#include "perf/traffic.h"
#include "pmd/hca/hca.h"
#include "pmd/hca/objects.h"

namespace dverbs::perf {

int child_qps(const Options& o) {
  const uint32_t n = o.nqps;
  const uint32_t group = std::min(o.signal, o.window);
  const uint32_t per_flow = std::max(group, o.window / n / group * group);
  const uint32_t rq_depth = std::max<uint32_t>(16, 2 * per_flow);
  const bool send = o.op == "send";
  Fabric f;
  f.no_pin = o.no_pin;
  f.open(1u << 16, 4096);
  const uint32_t inl = o.size <= 256 && !(o.op == "read") ? std::max<uint32_t>(o.size, 64) : 0;
  Traffic t;
  t.op = send ? WrOpcode::send : o.op == "read" ? WrOpcode::rdma_read : WrOpcode::rdma_write;
  t.size = o.size;
  t.group = group;
  t.per_flow_window = per_flow;
  t.total_window = o.window;
  t.rq_depth = rq_depth;
  t.inline_data = inl != 0;
  t.lazy = o.lazy;
  t.send_addr = reinterpret_cast<uint64_t>(f.sbuf.data());
  t.recv_addr = t.remote_addr = reinterpret_cast<uint64_t>(f.rbuf.data());
  t.lkey = f.smr.lkey();
  t.recv_lkey = f.rmr.lkey();
  t.rkey = f.rmr.rkey();
  t.send_cq = &f.send_cq;
  t.recv_cq = &f.recv_cq;
  // A warm-up pair first, with the same total window: the mbufs, CQ entries and code the
  // traffic touches become resident before the baseline, so the growth is the QPs' own.
  f.add_pairs(1, QpType::rc, o.window + group, std::max<uint32_t>(16, 2 * o.window), inl);
  {
    Traffic w = t;
    w.per_flow_window = o.window;
    w.rq_depth = std::max<uint32_t>(16, 2 * o.window);
    w.flows.push_back({&f.senders[0], send ? &f.receivers[0] : nullptr});
    run_traffic(w, 0, 0.2);
  }
  const uint64_t rss0 = rss_bytes();
  f.add_pairs(n, QpType::rc, per_flow + group, rq_depth, inl);
  f.check_pairs_share_engines();
  for (uint32_t i = 1; i <= n; i++)
    t.flows.push_back({&f.senders[i], send ? &f.receivers[i] : nullptr});
  TrafficResult tr = run_traffic(t, o.warmup, o.duration, o.messages);
  const uint64_t rss1 = rss_bytes();

  // The QPs' WQE rings as allocated (slots of the send and receive work queues).
  using SqSlot = pmd::hca::WorkQueue<pmd::hca::SendWqe>::Slot;
  using RqSlot = pmd::hca::WorkQueue<pmd::hca::RecvWqe>::Slot;
  double ring_bytes = 0;
  for (const auto* v : {&f.senders, &f.receivers})
    for (size_t i = 1; i < v->size(); i++) {
      const auto* h = pmd::hca::qp_of((*v)[i].raw());
      if (!h) die("this scenario measures the embedded HCA; run it with DVERBS_DAEMON=off");
      ring_bytes +=
          double(h->sq.capacity()) * sizeof(SqSlot) + double(h->rq.capacity()) * sizeof(RqSlot);
    }
  const double nq = 2.0 * n;
  Result r = hca_counters(f.ctx);
  r["messages"] = {double(tr.messages)};
  r["seconds"] = {tr.seconds};
  r["total_messages"] = {double(tr.total)};
  r["process_cpu"] = {tr.process_cpu};
  r["lcore_cpu"] = {tr.lcore_cpu};
  r["msg_rate"] = {tr.rate()};
  r["rss_bytes"] = {double(rss1)};
  r["rss_growth_per_qp"] = {(double(rss1) - double(rss0)) / nq};
  r["ring_bytes_per_qp"] = {ring_bytes / nq};
  r["qp_struct_bytes"] = {double(sizeof(pmd::hca::Qp))};
  r["per_flow_window"] = {double(per_flow)};
  f.add_qp_counters(&r);
  print_result(r);
  return 0;
}

int scenario_qps(const Options& in) {
  Options o = in;
  if (!o.size) o.size = 64;
  if (o.op.empty()) o.op = "send";
  if (o.lcores < 0) o.lcores = 1;
  if (!o.duration) o.duration = 1.0;
  if (!o.reps) o.reps = 2;
  if (!o.warmup) o.warmup = 0.5;
  if (!o.window) o.window = 256;
  if (!o.signal) o.signal = 8;
  if (o.qps.empty()) o.qps = {1, 10, 100, 1000};
  print_header(o, "qps");
  std::printf(
      "  RC %s of %u B over N QP pairs on the built-in loopback port, %s; %u WRs in\n"
      "  flight in total, in signaled groups of %u handed out round-robin\n\n",
      o.op.c_str(), o.size,
      o.lcores ? (std::to_string(o.lcores) + " transport lcore(s)").c_str() : "inline progress",
      o.window, std::min(o.signal, o.window));
  std::printf("  %6s %10s %7s %8s %9s %10s %10s %10s\n", "", "rate", "", "CPU", "", "B/QP", "B/QP",
              "B/QP");
  std::printf("  %6s %10s %7s %8s %9s %10s %10s %10s   %s\n", "pairs", "[Mmsg/s]", "vs 1", "ns/msg",
              "RSS [MiB]", "(total)", "(rings)", "(beyond)", "runs [Mmsg/s]");
  std::vector<double> counts, rates, rss, per_qp, rings, beyond, cpu;
  double retrans = 0;
  // Runs interleave over the counts (1, 10, 100, 1000, then again); medians reported.
  std::vector<std::vector<Result>> runs(o.qps.size());
  for (int rep = 0; rep < o.reps; rep++)
    for (size_t i = 0; i < o.qps.size(); i++) {
      Options c = o;
      c.nqps = o.qps[i];
      runs[i].push_back(run_child(forward(c, {"qps", "--nqps", std::to_string(o.qps[i])}),
                                  {"DVERBS_PORT=", "DVERBS_LCORES=" + std::to_string(o.lcores)}));
    }
  for (size_t i = 0; i < o.qps.size(); i++) {
    auto med = [&](const std::function<double(const Result&)>& f) {
      std::vector<double> v;
      for (const Result& r : runs[i]) v.push_back(f(r));
      return median(v);
    };
    counts.push_back(o.qps[i]);
    rates.push_back(med([](const Result& r) { return get(r, "msg_rate"); }));
    cpu.push_back(
        med([](const Result& r) { return get(r, "process_cpu") * 1e9 / get(r, "messages", 1); }));
    rss.push_back(med([](const Result& r) { return get(r, "rss_bytes"); }) / (1 << 20));
    per_qp.push_back(med([](const Result& r) { return get(r, "rss_growth_per_qp"); }));
    rings.push_back(med([](const Result& r) { return get(r, "ring_bytes_per_qp"); }));
    beyond.push_back(per_qp.back() - rings.back());
    std::vector<double> run_rates;
    for (const Result& r : runs[i]) {
      retrans += get(r, "retransmits");
      run_rates.push_back(get(r, "msg_rate"));
    }
    const std::string all = list_millions(run_rates);
    std::printf("  %6u %10.3f %7.3f %8.1f %9.1f %10.0f %10.0f %10.0f   %s\n", o.qps[i],
                rates.back() / 1e6, rates.back() / rates[0], cpu.back(), rss.back(), per_qp.back(),
                rings.back(), beyond.back(), all.c_str());
  }
  const double ratio = rates.back() / rates[0];
  const double bpq = beyond.back();
  std::printf("\n  rate(%u) / rate(%u) = %.3f, target >= 0.8: %s\n", o.qps.back(), o.qps[0], ratio,
              verdict(ratio >= 0.8));
  std::printf("  bytes per QP beyond its WQE rings (at %u pairs) = %.0f, target <= 16384: %s\n",
              o.qps.back(), bpq, verdict(bpq <= 16384));
  std::printf(
      "  CPU cost per message at %u pairs / at %u: %.3f (CPU ns/msg: CPU time of the\n"
      "  process's threads per message, less sensitive to a loaded host)\n",
      o.qps.back(), o.qps[0], cpu.back() / cpu[0]);
  if (retrans) std::printf("  (retransmissions %.0f)\n", retrans);
  if (o.json) {
    Json j;
    j.str("scenario", "qps")
        .str("machine", cpu_model())
        .num("load_average", load_average())
        .str("op", o.op)
        .num("size", o.size)
        .num("lcores", o.lcores);
    j.num("total_window", o.window).arr("qps", counts).arr("rates", rates).arr("rss_mib", rss);
    j.num("bytes_per_qp", bpq).arr("bytes_per_qp_runs", beyond);
    j.arr("rss_growth_per_qp", per_qp).arr("ring_bytes_per_qp", rings);
    j.arr("cpu_ns_per_msg", cpu).num("cpu_cost_ratio", cpu.back() / cpu[0]);
    j.num("rate_ratio", ratio).num("target_rate_ratio", 0.8).num("target_bytes_per_qp", 16384);
    j.flag("met", ratio >= 0.8 && bpq <= 16384).num("retransmits", retrans);
    std::printf("%s\n", j.text().c_str());
  }
  return 0;
}

}  // namespace dverbs::perf
