// dverbs-stat: the counters of running dverbs processes, per port and per QP.
//
//   dverbs-stat [--json] [--no-qps] [PID | --daemon DIR]...
//
// Reads the DPDK telemetry endpoints of lib/pmd/hca/stats.cc (/dverbs/devices, /dverbs/port,
// /dverbs/qps, /dverbs/qp), which a process serves when it runs with DVERBS_TELEMETRY=on
// (dverbsd turns it on by itself). Without a target: every such process this user can see.
// --daemon DIR: the dverbsd serving DIR/uverbs0 (found through the socket's peer
// credentials). Prints a table per device, or with --json one JSON document:
//   {"processes": [{"pid": P, "devices": [{"port": {...}, "qps": [{...}, ...]}]}]}
// Exit status: 0 when every target answered, 1 otherwise (each failure named on stderr).
#include <sys/types.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "stat/telemetry_client.h"

using dverbs::stat::Json;
using dverbs::stat::TelemetryClient;

namespace {

struct Options {
  bool json = false;
  bool qps = true;
  std::vector<pid_t> pids;
  std::vector<std::string> daemons;
};

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: dverbs-stat [--json] [--no-qps] [PID | --daemon DIR]...\n"
               "Prints the port and QP counters of running dverbs processes (started with\n"
               "DVERBS_TELEMETRY=on; dverbsd has it on). No target: every such process.\n");
  std::exit(rc);
}

// One process: {"pid": P, "devices": [{"port": {...}, "qps": [...]}, ...]}.
bool collect(pid_t pid, const std::string& sock, bool with_qps, Json* out, std::string* err) {
  TelemetryClient c;
  if (!c.connect(sock, err)) return false;
  Json devices;
  if (!c.call("/dverbs/devices", &devices, err)) return false;
  out->kind = Json::Kind::object;
  Json p;
  p.kind = Json::Kind::number;
  p.number = pid;
  out->object.emplace_back("pid", p);
  Json devs;
  devs.kind = Json::Kind::array;
  for (const Json& d : devices.array) {
    Json dev, port, qpns, qps;
    dev.kind = Json::Kind::object;
    qps.kind = Json::Kind::array;
    if (!c.call("/dverbs/port," + d.string, &port, err)) return false;
    dev.object.emplace_back("port", port);
    if (with_qps) {
      if (!c.call("/dverbs/qps," + d.string, &qpns, err)) return false;
      for (const Json& q : qpns.array) {
        Json one;
        std::string e;
        // A QP destroyed between the two calls is simply gone.
        if (c.call("/dverbs/qp," + d.string + "," + std::to_string(q.u64()), &one, &e))
          qps.array.push_back(std::move(one));
      }
      dev.object.emplace_back("qps", qps);
    }
    devs.array.push_back(std::move(dev));
  }
  out->object.emplace_back("devices", devs);
  return true;
}

void print_table(const Json& proc) {
  const Json* devs = proc.get("devices");
  for (const Json& dev : devs ? devs->array : std::vector<Json>{}) {
    const Json* port = dev.get("port");
    if (!port) continue;
    auto str = [&](const char* k) {
      const Json* v = port->get(k);
      return v ? v->string : std::string("?");
    };
    std::printf("pid %" PRIu64 "  %s  %s  %s  link %s  engines %" PRIu64 "\n",
                proc.get("pid")->u64(), str("device").c_str(), str("ip").c_str(),
                str("mac").c_str(), port->get("link_up") && port->get("link_up")->u64() ? "up" : "down",
                port->get("engines") ? port->get("engines")->u64() : 0);
    // Counters two to a line.
    int col = 0;
    for (const auto& [k, v] : port->object) {
      if (v.kind != Json::Kind::number || k == "link_up" || k == "engines") continue;
      std::printf("  %-18s %14" PRIu64 "%s", k.c_str(), v.u64(), ++col % 2 ? "" : "\n");
    }
    if (col % 2) std::printf("\n");
    const Json* qps = dev.get("qps");
    if (!qps || qps->array.empty()) continue;
    static const char* const kCols[] = {"rx_packets",    "rx_bytes",      "retransmits",
                                        "dup_rcvd",      "out_of_sequence", "seq_naks_sent",
                                        "seq_naks_rcvd", "rnr_naks_sent", "rnr_naks_rcvd",
                                        "fatal_naks_sent", "fatal_naks_rcvd"};
    static const char* const kHead[] = {"rx_pkts", "rx_bytes", "retrans", "dup", "oos",
                                        "seqnak>", "seqnak<", "rnr>", "rnr<", "fatal>", "fatal<"};
    std::printf("  %8s %4s %5s", "qpn", "type", "state");
    for (const char* h : kHead) std::printf(" %10s", h);
    std::printf("\n");
    for (const Json& q : qps->array) {
      const Json* t = q.get("type");
      std::printf("  %8" PRIu64 " %4s %5" PRIu64, q.get("qp_num") ? q.get("qp_num")->u64() : 0,
                  t ? t->string.c_str() : "?", q.get("state") ? q.get("state")->u64() : 0);
      for (const char* k : kCols) std::printf(" %10" PRIu64, q.get(k) ? q.get(k)->u64() : 0);
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--json") o.json = true;
    else if (a == "--no-qps") o.qps = false;
    else if (a == "--daemon" && i + 1 < argc) o.daemons.push_back(argv[++i]);
    else if (a == "-h" || a == "--help") usage(0);
    else {
      char* end = nullptr;
      long pid = std::strtol(a.c_str(), &end, 10);
      if (a.empty() || *end || pid <= 0) {
        std::fprintf(stderr, "dverbs-stat: '%s' is neither a PID nor an option\n", a.c_str());
        usage(2);
      }
      o.pids.push_back(pid_t(pid));
    }
  }
  int rc = 0;
  std::vector<std::pair<pid_t, std::string>> targets;
  for (const std::string& dir : o.daemons) {
    pid_t pid;
    std::string err;
    if (!dverbs::stat::listener_pid(dir + "/uverbs0", &pid, &err)) {
      std::fprintf(stderr, "dverbs-stat: --daemon %s: %s\n", dir.c_str(), err.c_str());
      rc = 1;
      continue;
    }
    o.pids.push_back(pid);
  }
  for (pid_t pid : o.pids) {
    std::string s = dverbs::stat::socket_of(pid);
    if (s.empty()) {
      std::fprintf(stderr,
                   "dverbs-stat: process %d has no dverbs telemetry socket (not a dverbs "
                   "process, or started without DVERBS_TELEMETRY=on)\n",
                   int(pid));
      rc = 1;
      continue;
    }
    targets.emplace_back(pid, s);
  }
  if (o.pids.empty() && o.daemons.empty()) {
    targets = dverbs::stat::find_sockets();
    if (targets.empty()) {
      std::fprintf(stderr,
                   "dverbs-stat: no running dverbs process with DVERBS_TELEMETRY=on was found\n");
      return 1;
    }
  }
  Json all;
  all.kind = Json::Kind::object;
  Json procs;
  procs.kind = Json::Kind::array;
  for (const auto& [pid, sock] : targets) {
    Json proc;
    std::string err;
    if (!collect(pid, sock, o.qps, &proc, &err)) {
      // Without explicit targets, a socket nobody answers on is a process that crashed.
      if (!o.pids.empty()) {
        std::fprintf(stderr, "dverbs-stat: process %d: %s\n", int(pid), err.c_str());
        rc = 1;
      }
      continue;
    }
    if (!o.json) print_table(proc);
    procs.array.push_back(std::move(proc));
  }
  all.object.emplace_back("processes", procs);
  if (o.json) std::printf("%s\n", all.dump().c_str());
  return rc;
}
