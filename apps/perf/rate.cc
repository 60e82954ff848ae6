// rate: small RC messages between two QPs on the built-in loopback port, against the raw
// packet-I/O floor of the same port (raw.cc), interleaved run by run.
#include <algorithm>
#include <cstdio>

#include "perf/fabric.h"
#include "perf/scenarios.h"
#include "perf/traffic.h"

namespace dverbs::perf {

namespace {

WrOpcode opcode_of(const std::string& op) {
  return op == "write" ? WrOpcode::rdma_write : op == "read" ? WrOpcode::rdma_read : WrOpcode::send;
}

}  // namespace

int child_rate(const Options& o) {
  const uint32_t window = o.window, group = std::min(o.signal, window);
  Fabric f;
  f.no_pin = o.no_pin;
  f.open(1u << 16, std::max<uint32_t>(o.size, 64));
  const bool inl = o.size <= 256 && o.op != "read";
  f.add_pairs(1, QpType::rc, window + group, std::min<uint32_t>(2 * window + 64, 16384),
              inl ? std::max<uint32_t>(o.size, 64) : 0);
  f.check_pairs_share_engines();
  Traffic t;
  t.op = opcode_of(o.op);
  t.size = o.size;
  t.group = group;
  t.per_flow_window = t.total_window = window;
  t.rq_depth = std::min<uint32_t>(2 * window + 64, 16384);
  t.inline_data = inl;
  t.lazy = o.lazy;
  t.send_addr = reinterpret_cast<uint64_t>(f.sbuf.data());
  t.recv_addr = reinterpret_cast<uint64_t>(f.rbuf.data());
  t.remote_addr = o.op == "read" ? t.send_addr : t.recv_addr;
  t.lkey = f.smr.lkey();
  t.recv_lkey = f.rmr.lkey();
  t.rkey = o.op == "read" ? f.smr.rkey() : f.rmr.rkey();
  t.send_cq = &f.send_cq;
  t.recv_cq = &f.recv_cq;
  t.flows.push_back({&f.senders[0], t.op == WrOpcode::send ? &f.receivers[0] : nullptr});
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

int scenario_rate(const Options& in) {
  Options o = in;
  if (!o.size) o.size = 64;
  if (o.op.empty()) o.op = "send";
  if (o.lcores < 0) o.lcores = 1;
  if (!o.duration) o.duration = 1.2;
  if (!o.warmup) o.warmup = 0.5;
  if (!o.reps) o.reps = 2;
  if (!o.window) o.window = 256;
  if (!o.signal) o.signal = 16;

  print_header(o, "rate");
  std::printf(
      "  RC %s of %u B, one QP pair on the built-in loopback port (net_ring), %s,\n"
      "  window %u WRs, every %uth signaled; baseline: raw mbuf alloc + Eth/IPv4/UDP +\n"
      "  payload write + rte_eth_tx_burst + rte_eth_rx_burst + copy out + free, bursts "
      "of 32\n\n",
      o.op.c_str(), o.size,
      o.lcores ? (std::to_string(o.lcores) + " transport lcore(s)").c_str() : "inline progress",
      o.window, std::min(o.signal, o.window));
  std::printf("  %-6s %13s %8s %8s %13s %8s %8s %7s %7s\n", "", "dverbs", "", "CPU", "raw", "",
              "CPU", "", "CPU");
  std::printf("  %-6s %13s %8s %8s %13s %8s %8s %7s %7s\n", "run", "[Mmsg/s]", "ns/msg", "ns/msg",
              "[Mmsg/s]", "ns/msg", "ns/msg", "ratio", "ratio");
  std::vector<double> rates, raws, cpus, raw_cpus, lcore_cpus;
  double retrans = 0, drops = 0, frames = 0;
  auto row = [](const std::string& name, double rate, double cpu, double raw, double raw_cpu) {
    std::printf("  %-6s %13.3f %8.1f %8.1f %13.3f %8.1f %8.1f %7.4f %7.4f\n", name.c_str(),
                rate / 1e6, 1e9 / rate, cpu, raw / 1e6, 1e9 / raw, raw_cpu, rate / raw,
                raw_cpu / cpu);
  };
  for (int i = 0; i < o.reps; i++) {
    Result raw = run_child(forward(o, {"raw"}), {"DVERBS_PORT="});
    Result rr = run_child(forward(o, {"rate"}),
                          {"DVERBS_PORT=", "DVERBS_LCORES=" + std::to_string(o.lcores)});
    const double rate = get(rr, "msg_rate"), raw_rate = get(raw, "raw_rate");
    const double cpu = get(rr, "process_cpu") * 1e9 / get(rr, "messages", 1);
    const double raw_cpu = get(raw, "process_cpu") * 1e9 / get(raw, "messages", 1);
    if (get(rr, "lcore_cpu") > 0)
      lcore_cpus.push_back(get(rr, "lcore_cpu") * 1e9 / get(rr, "messages", 1));
    retrans += get(rr, "retransmits");
    drops += get(rr, "port_tx_dropped") + get(rr, "hca_tx_no_mbuf");
    frames += get(rr, "hca_tx_packets") / get(rr, "total_messages", 1) / o.reps;
    rates.push_back(rate);
    raws.push_back(raw_rate);
    cpus.push_back(cpu);
    raw_cpus.push_back(raw_cpu);
    row(std::to_string(i + 1), rate, cpu, raw_rate, raw_cpu);
  }
  const double rate = median(rates), raw = median(raws), ratio = rate / raw;
  const double cpu = median(cpus), raw_cpu = median(raw_cpus);
  row("median", rate, cpu, raw, raw_cpu);
  std::printf("\n  target ratio >= 0.5: %s", verdict(ratio >= 0.5));
  if (retrans || drops)
    std::printf("   (retransmissions %.0f, frames dropped %.0f)", retrans, drops);
  std::printf("\n  frames on the wire per message (requests + ACKs): %.3f\n", frames);
  if (!lcore_cpus.empty())
    std::printf(
        "  CPU of the transport lcore alone: %.1f ns/msg (the application thread spins "
        "in poll_cq)\n",
        median(lcore_cpus));
  std::printf(
      "  CPU ns/msg: CPU time of all the process's threads per message (the raw floor runs on\n"
      "  one thread); CPU ratio = raw CPU ns / dverbs CPU ns, less sensitive to a loaded host.\n");
  if (o.json) {
    Json j;
    j.str("scenario", "rate")
        .str("machine", cpu_model())
        .num("load_average", load_average())
        .str("op", o.op)
        .num("size", o.size)
        .num("lcores", o.lcores);
    j.num("window", o.window).num("msg_rate", rate).num("ns_per_msg", 1e9 / rate);
    j.num("raw_rate", raw).num("raw_ns_per_msg", 1e9 / raw).num("ratio", ratio);
    j.num("target_ratio", 0.5).flag("met", ratio >= 0.5);
    j.arr("msg_rates", rates).arr("raw_rates", raws);
    j.num("cpu_ns_per_msg", cpu).num("raw_cpu_ns_per_msg", raw_cpu).num("cpu_ratio", raw_cpu / cpu);
    j.num("frames_per_msg", frames);
    if (!lcore_cpus.empty()) j.num("lcore_cpu_ns_per_msg", median(lcore_cpus));
    j.num("retransmits", retrans).num("dropped", drops);
    std::printf("%s\n", j.text().c_str());
  }
  return 0;
}

}  // namespace dverbs::perf
