// bandwidth: RDMA WRITEs of 64 KiB on one RC QP over the built-in loopback port, against
// single-core memcpy over the same buffer sizes (a window of messages, each copied from the
// source buffer to the destination buffer at the same offsets the WRITEs use).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "perf/fabric.h"
#include "perf/scenarios.h"
#include "perf/traffic.h"

namespace dverbs::perf {

int child_bandwidth(const Options& o) {
  const uint32_t window = o.window, group = std::min(o.signal, window);
  Fabric f;
  f.no_pin = o.no_pin;
  f.open(4096, size_t(o.size) * window);
  f.add_pairs(1, QpType::rc, window + group, 16, 0);
  f.check_pairs_share_engines();
  Traffic t;
  t.op = WrOpcode::rdma_write;
  t.size = o.size;
  t.group = group;
  t.per_flow_window = t.total_window = window;
  t.inline_data = false;
  t.lazy = o.lazy;
  t.slots = window;
  t.send_addr = reinterpret_cast<uint64_t>(f.sbuf.data());
  t.recv_addr = t.remote_addr = reinterpret_cast<uint64_t>(f.rbuf.data());
  t.lkey = f.smr.lkey();
  t.recv_lkey = f.rmr.lkey();
  t.rkey = f.rmr.rkey();
  t.send_cq = &f.send_cq;
  t.flows.push_back({&f.senders[0], nullptr});
  TrafficResult tr = run_traffic(t, o.warmup, o.duration, o.messages);
  // One spot check that the bytes arrived.
  if (std::memcmp(f.sbuf.data(), f.rbuf.data(), o.size) != 0) die("WRITE data mismatch");
  Result r = hca_counters(f.ctx);
  r["messages"] = {double(tr.messages)};
  r["seconds"] = {tr.seconds};
  r["total_messages"] = {double(tr.total)};
  r["process_cpu"] = {tr.process_cpu};
  r["lcore_cpu"] = {tr.lcore_cpu};
  r["bytes_per_s"] = {tr.rate() * o.size};
  r["path_mtu"] = {double(mtu_bytes(f.mtu))};
  f.add_qp_counters(&r);
  print_result(r);
  return 0;
}

namespace {

// Single-core memcpy of `size`-byte chunks, src → dst at the same offsets, cycling over
// `window` chunks, for `seconds`. Returns bytes per second; *cpu gets the CPU seconds used.
double memcpy_bandwidth(uint32_t size, uint32_t window, double warmup, double seconds,
                        double* cpu) {
  // Page-aligned, as the child's buffers are: two heap vectors land at any distance modulo
  // 4 KiB, and at some distances this CPU's `rep movsb` (glibc's memcpy for 64 KiB) runs at
  // a sixteenth of its speed (measured: 27.5 GB/s, then 1.6 GB/s for the next vectors).
  const size_t bytes = size_t(size) * window;
  auto page_buffer = [bytes](int fill) {
    std::unique_ptr<uint8_t, decltype(&std::free)> p(
        static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes + 4095) & ~size_t(4095))),
        &std::free);
    if (!p) die("memcpy baseline: out of memory");
    std::memset(p.get(), fill, bytes);
    return p;
  };
  auto src_buf = page_buffer(0x5a), dst_buf = page_buffer(0);
  uint8_t *src = src_buf.get(), *dst = dst_buf.get();
  uint64_t copied = 0, i = 0;
  bool measuring = false;
  const auto t_start = Clock::now();
  auto t0 = t_start;
  double el = 0;
  for (;;) {
    for (int k = 0; k < 16; k++, i++) {
      const size_t off = size_t(i % window) * size;
      std::memcpy(dst + off, src + off, size);
      asm volatile("" : : "r"(dst) : "memory");
    }
    if (measuring) copied += 16ull * size;
    const auto now = Clock::now();
    if (!measuring && std::chrono::duration<double>(now - t_start).count() >= warmup) {
      measuring = true;
      t0 = now;
      *cpu = -process_cpu_seconds();
    }
    if (measuring && (el = std::chrono::duration<double>(now - t0).count()) >= seconds) break;
  }
  *cpu += process_cpu_seconds();
  return double(copied) / el;
}

}  // namespace

int scenario_bandwidth(const Options& in) {
  constexpr double kTarget = 0.35;  // issue 17
  Options o = in;
  if (!o.size) o.size = 65536;
  if (o.lcores < 0) o.lcores = 1;
  if (!o.duration) o.duration = 2;
  if (!o.warmup) o.warmup = 0.5;
  if (!o.reps) o.reps = 2;
  if (!o.window) o.window = 16;
  if (!o.signal) o.signal = 4;
  print_header(o, "bandwidth");
  std::printf(
      "  RDMA WRITE of %u B on one RC QP over the built-in loopback port, %s,\n"
      "  window %u WRs over %u KiB buffers; baseline: single-core memcpy of the same\n"
      "  chunks between buffers of the same sizes\n\n",
      o.size,
      o.lcores ? (std::to_string(o.lcores) + " transport lcore(s)").c_str() : "inline progress",
      o.window, unsigned(uint64_t(o.size) * o.window / 1024));
  std::printf("  %-6s %12s %12s %12s %12s %8s %8s\n", "", "WRITE", "WRITE", "memcpy", "memcpy", "",
              "CPU");
  std::printf("  %-6s %12s %12s %12s %12s %8s %8s\n", "run", "[GB/s]", "[GB/CPU-s]", "[GB/s]",
              "[GB/CPU-s]", "ratio", "ratio");
  std::vector<double> bws, mcs, bw_cpus, mc_cpus;
  double retrans = 0, mtu = 0;
  auto row = [](const std::string& name, double bw, double bwc, double mc, double mcc) {
    std::printf("  %-6s %12.3f %12.3f %12.3f %12.3f %8.4f %8.4f\n", name.c_str(), bw, bwc, mc, mcc,
                bw / mc, bwc / mcc);
  };
  for (int i = 0; i < o.reps; i++) {
    double mc_cpu = 0;
    const double mc = memcpy_bandwidth(o.size, o.window, o.warmup, o.duration, &mc_cpu);
    Result r = run_child(forward(o, {"bw"}),
                         {"DVERBS_PORT=", "DVERBS_LCORES=" + std::to_string(o.lcores)});
    const double bw = get(r, "bytes_per_s");
    // The transport's CPU: its lcores' (the application thread only polls), or the whole
    // process with inline progress.
    const double cpu = o.lcores ? get(r, "lcore_cpu") : get(r, "process_cpu");
    const double bytes = bw * get(r, "seconds");
    retrans += get(r, "retransmits");
    mtu = get(r, "path_mtu");
    bws.push_back(bw / 1e9);
    mcs.push_back(mc / 1e9);
    bw_cpus.push_back(cpu > 0 ? bytes / cpu / 1e9 : 0);
    mc_cpus.push_back(mc * o.duration / mc_cpu / 1e9);
    row(std::to_string(i + 1), bws.back(), bw_cpus.back(), mcs.back(), mc_cpus.back());
  }
  const double bw = median(bws), mc = median(mcs), ratio = bw / mc;
  const double bwc = median(bw_cpus), mcc = median(mc_cpus);
  row("median", bw, bwc, mc, mcc);
  std::printf("\n  path MTU %.0f; target ratio >= %.2f: %s", mtu, kTarget,
              verdict(ratio >= kTarget));
  if (retrans) std::printf("   (retransmissions %.0f)", retrans);
  std::printf(
      "\n  GB/CPU-s: bytes per CPU second of the transport lcore(s) (inline: the process) and\n"
      "  of the memcpy thread; CPU ratio compares those, less sensitive to a loaded host.\n");
  if (o.json) {
    Json j;
    j.str("scenario", "bandwidth")
        .str("machine", cpu_model())
        .num("load_average", load_average())
        .num("size", o.size)
        .num("lcores", o.lcores);
    j.num("window", o.window).num("path_mtu", mtu);
    j.num("gbytes_per_s", bw).num("memcpy_gbytes_per_s", mc).num("ratio", ratio);
    j.num("target_ratio", kTarget).flag("met", ratio >= kTarget);
    j.arr("gbytes_per_s_runs", bws).arr("memcpy_gbytes_per_s_runs", mcs);
    j.num("gbytes_per_cpu_s", bwc).num("memcpy_gbytes_per_cpu_s", mcc).num("cpu_ratio", bwc / mcc);
    j.num("retransmits", retrans);
    std::printf("%s\n", j.text().c_str());
  }
  return 0;
}

}  // namespace dverbs::perf
