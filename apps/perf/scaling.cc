// scaling: message rate with n = 1..N transport lcores, each owning its own QP (pair):
//   null — UC QPs on a net_null port (no-rx=1): the requester path alone (build, ICRC, TX);
//          UC because nothing comes back to acknowledge RC.
//   loop — RC QP pairs on the built-in loopback port (one net_ring queue per lcore): the
//          full path, requester + responder + ACK + completer on each lcore.
// The application thread only refills large windows and sleeps ~20 µs when idle, so that
// the lcores have the CPUs; efficiency(n) = rate(n) / (n * rate(1)).
#include <cstdio>

#include "perf/fabric.h"
#include "perf/scenarios.h"
#include "perf/traffic.h"

namespace dverbs::perf {

int child_scaling(const Options& o) {
  const int n = o.lcores;
  const bool null_port = o.port == "null";
  const bool send = o.op == "send";
  const uint32_t window = o.window, group = std::min(o.signal, window);
  Fabric f;
  f.no_pin = o.no_pin;
  f.open(1u << 16, 4096);
  const uint32_t inl = o.size <= 256 ? std::max<uint32_t>(o.size, 64) : 0;
  if (null_port) {
    f.add_open_loop_senders(uint32_t(n), window + group, inl);
  } else {
    f.add_pairs(uint32_t(n), QpType::rc, window + group, std::min<uint32_t>(2 * window + 64, 16384),
                inl);
    f.check_pairs_share_engines();
  }
  for (int i = 0; i < n; i++)
    if (Fabric::engine_of(f.senders[size_t(i)]) != uint32_t(i))
      die("QP " + std::to_string(i) + " is not alone on its lcore (is DVERBS_LCORES honoured?)");
  Traffic t;
  t.op = send ? WrOpcode::send : WrOpcode::rdma_write;
  t.size = o.size;
  t.group = group;
  t.per_flow_window = window;
  t.total_window = window * uint32_t(n);
  t.rq_depth = std::min<uint32_t>(2 * window + 64, 16384);
  t.inline_data = inl != 0;
  t.lazy = true;
  t.send_addr = reinterpret_cast<uint64_t>(f.sbuf.data());
  t.recv_addr = t.remote_addr = reinterpret_cast<uint64_t>(f.rbuf.data());
  t.lkey = f.smr.lkey();
  t.recv_lkey = f.rmr.lkey();
  t.rkey = f.rmr.rkey();
  t.send_cq = &f.send_cq;
  t.recv_cq = &f.recv_cq;
  for (int i = 0; i < n; i++)
    t.flows.push_back(
        {&f.senders[size_t(i)], send && !null_port ? &f.receivers[size_t(i)] : nullptr});
  TrafficResult tr = run_traffic(t, o.warmup, o.duration, o.messages);
  Result r = hca_counters(f.ctx);
  r["messages"] = {double(tr.messages)};
  r["seconds"] = {tr.seconds};
  r["total_messages"] = {double(tr.total)};
  r["process_cpu"] = {tr.process_cpu};
  r["lcore_cpu"] = {tr.lcore_cpu};
  r["msg_rate"] = {tr.rate()};
  f.add_qp_counters(&r);
  print_result(r);
  return 0;
}

int scenario_scaling(const Options& in) {
  Options o = in;
  if (!o.size) o.size = 64;
  if (o.op.empty()) o.op = "write";
  if (o.op == "read") die("scaling: --op send or write");
  if (!o.duration) o.duration = 1.5;
  if (!o.warmup) o.warmup = 0.3;
  if (!o.window) o.window = 4096;
  if (!o.signal) o.signal = 64;
  if (!o.reps) o.reps = 2;
  const int nmax = o.max_lcores ? o.max_lcores : cpus_available();
  print_header(o, "scaling");
  std::printf(
      "  %s of %u B, n = 1..%d transport lcores, one QP (pair) per lcore, window %u\n"
      "  per QP; null: UC on net_null (no-rx=1), requester path; loop: RC pairs on the\n"
      "  built-in loopback, full path. efficiency = rate(n) / (n * rate(1))\n\n",
      o.op == "send" ? "SEND" : "RDMA WRITE", o.size, nmax, o.window);
  std::printf("  %-5s %2s %10s %8s %6s %9s %9s %7s   %s\n", "", "", "rate", "per lcore", "",
              "lcore CPU", "Mmsg per", "CPU", "");
  std::printf("  %-5s %2s %10s %8s %6s %9s %9s %7s   %s\n", "port", "n", "[Mmsg/s]", "[Mmsg/s]",
              "eff.", "share", "CPU-s", "eff.", "runs [Mmsg/s]");
  Json j;
  j.str("scenario", "scaling")
      .str("machine", cpu_model())
      .num("load_average", load_average())
      .str("op", o.op)
      .num("size", o.size)
      .num("cpus", cpus_available());
  bool met = true;
  // Runs interleave (every n of both ports, then again) so that slow drifts of the
  // machine's load spread over all points; each point is the median of its runs.
  const char* const ports[] = {"null", "loop"};
  struct Runs {
    std::vector<double> rate, per_cpu, share;
  };
  std::vector<std::vector<Runs>> runs(2, std::vector<Runs>(size_t(nmax)));
  for (int rep = 0; rep < o.reps; rep++)
    for (int pi = 0; pi < 2; pi++)
      for (int n = 1; n <= nmax; n++) {
        Options c = o;
        c.lcores = n;
        std::vector<std::string> args = forward(c, {"scaling", "--port", ports[pi]});
        const std::string dev = pi == 0 ? "net_null0,no-rx=1" : "";
        Result r = run_child(args, {"DVERBS_PORT=" + dev, "DVERBS_LCORES=" + std::to_string(n)});
        Runs& x = runs[size_t(pi)][size_t(n - 1)];
        const double cpu = get(r, "lcore_cpu");
        x.rate.push_back(get(r, "msg_rate"));
        x.per_cpu.push_back(cpu > 0 ? get(r, "messages") / cpu : 0);
        x.share.push_back(cpu / (n * get(r, "seconds", 1)));
      }
  for (int pi = 0; pi < 2; pi++) {
    std::vector<double> rates, eff, ns, per_cpu, cpu_eff, share;
    for (int n = 1; n <= nmax; n++) {
      const Runs& x = runs[size_t(pi)][size_t(n - 1)];
      rates.push_back(median(x.rate));
      per_cpu.push_back(median(x.per_cpu));
      share.push_back(median(x.share));
      ns.push_back(n);
      eff.push_back(rates.back() / (n * rates[0]));
      cpu_eff.push_back(per_cpu.back() / per_cpu[0]);
      met &= eff.back() >= 0.9;
      const std::string all = list_millions(x.rate);
      std::printf("  %-5s %2d %10.3f %8.3f %6.3f %9.2f %9.3f %7.3f   %s\n", ports[pi], n,
                  rates.back() / 1e6, rates.back() / n / 1e6, eff.back(), share.back(),
                  per_cpu.back() / 1e6, cpu_eff.back(), all.c_str());
    }
    j.raw(ports[pi], Json()
                         .arr("lcores", ns)
                         .arr("rates", rates)
                         .arr("efficiency", eff)
                         .arr("lcore_cpu_share", share)
                         .arr("msgs_per_lcore_cpu_second", per_cpu)
                         .arr("cpu_efficiency", cpu_eff)
                         .text());
  }
  std::printf(
      "\n  eff. = rate(n) / (n rate(1)), the issue's definition. lcore CPU share = CPU time\n"
      "  the lcores got / (n x wall time); Mmsg per CPU-s = messages per lcore CPU second; CPU\n"
      "  eff. = that per-CPU rate at n / at 1: the cost per message with n lcores, whatever\n"
      "  share of the CPUs the machine gave them.\n");
  std::printf("\n  target efficiency >= 0.9 at every n: %s\n", verdict(met));
  if (nmax >= cpus_available())
    std::printf(
        "  note: with n = %d lcores on %d CPUs the application thread and the system\n"
        "  share the CPUs with the lcores, which bounds efficiency(n) below 1.\n",
        nmax, cpus_available());
  j.num("target_efficiency", 0.9).flag("met", met);
  if (o.json) std::printf("%s\n", j.text().c_str());
  return 0;
}

}  // namespace dverbs::perf
