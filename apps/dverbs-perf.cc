// dverbs-perf: benchmarks of the soft HCA, each against a baseline measured in the same run
// on the same machine (issue 6). `dverbs-perf SCENARIO [options] [--json]` prints a
// perftest-like table and, with --json, one JSON object on the last line of stdout.
//
// The scenarios live in apps/perf/; measurements run in child processes
// (`dverbs-perf --child KIND ...`, see perf/common.h) because dverbs reads its DVERBS_*
// configuration once per process. Nothing here asserts on time.
#include <cstdio>
#include <cstring>
#include <string>

#include "perf/common.h"
#include "perf/scenarios.h"

namespace dverbs::perf {

const char* verdict(bool met) {
  return met ? "MET" : "not met";
}

void print_header(const Options& o, const char* title) {
  (void)o;
  std::printf("dverbs-perf %s — %s, load average %.2f\n\n", title, cpu_model().c_str(),
              load_average());
}

std::vector<std::string> forward(const Options& o, std::vector<std::string> args) {
  auto add = [&](const char* k, const std::string& v) {
    args.push_back(k);
    args.push_back(v);
  };
  add("--size", std::to_string(o.size));
  if (!o.op.empty()) add("--op", o.op);
  if (o.lcores >= 0) add("--lcores", std::to_string(o.lcores));
  add("--duration", std::to_string(o.duration));
  add("--warmup", std::to_string(o.warmup));
  add("--window", std::to_string(o.window));
  add("--signal", std::to_string(o.signal));
  if (o.iters) add("--iters", std::to_string(o.iters));
  if (o.warmup_iters) add("--warmup-iters", std::to_string(o.warmup_iters));
  if (o.messages) add("--messages", std::to_string(o.messages));
  if (o.lazy) args.push_back("--lazy");
  if (o.no_pin) args.push_back("--no-pin");
  return args;
}

}  // namespace dverbs::perf

int main(int argc, char** argv) {
  using namespace dverbs::perf;
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string first = argv[1];
  if (first == "-h" || first == "--help") {
    usage(stdout);
    return 0;
  }
  if (first == "--child") {
    if (argc < 3) die("--child needs a kind");
    const std::string kind = argv[2];
    Options o = parse_options(argc, argv, 3);
    if (kind == "rate") return child_rate(o);
    if (kind == "raw") return child_raw(o);
    if (kind == "lat") return child_lat(o);
    if (kind == "lat-loop") return child_lat_loop(o);
    if (kind == "udp") return child_udp(o);
    if (kind == "bw") return child_bandwidth(o);
    if (kind == "scaling") return child_scaling(o);
    if (kind == "qps") return child_qps(o);
    if (kind == "idle") return child_idle(o);
    die("unknown child kind '" + kind + "'");
  }
  Options o = parse_options(argc, argv, 2);
  o.scenario = first;
  // stdout is a pipe when captured: keep the table and the JSON line in order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (first == "rate") return scenario_rate(o);
  if (first == "latency") return scenario_latency(o);
  if (first == "bandwidth") return scenario_bandwidth(o);
  if (first == "scaling") return scenario_scaling(o);
  if (first == "qps") return scenario_qps(o);
  if (first == "idle") return scenario_idle(o);
  usage(stderr);
  die("unknown scenario '" + first + "'");
}
