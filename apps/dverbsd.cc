// dverbsd: one owner of the soft HCA's ports, serving them to unprivileged processes over
// DIR/uverbsN (issue 8). This file is the command line and the config file; the daemon is
// lib/daemon (server.h).
//
//   dverbsd [--config FILE] [--dir DIR] [--mode OCTAL] [--group NAME]
//           [--max-pd N] [--max-mr N] [--max-cq N] [--max-qp N] [--max-srq N]
//           [--max-mw N] [--max-mr-bytes BYTES] [--max-conns N]
//   dverbsd --stat SOCKET
//
// Ports are configured like the embedded mode, from the DVERBS_* environment (or DVERBS_*
// lines of the config file). Exit codes: 0 clean shutdown, 1 run-time failure, 2 usage.
#include <grp.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/server.h"
#include "stat/telemetry_client.h"

namespace {

using dverbs::daemon::Options;

void usage(FILE* f) {
  std::fprintf(f,
               "usage: dverbsd [options]\n"
               "       dverbsd --stat SOCKET\n"
               "  --config FILE       KEY=VALUE lines: DVERBS_* variables and long options\n"
               "  --dir DIR           socket directory (default /run/dverbs)\n"
               "  --mode OCTAL        socket mode (default 0660)\n"
               "  --group NAME        socket group (who may use the device)\n"
               "  --max-pd/--max-mr/--max-cq/--max-qp/--max-srq/--max-mw N\n"
               "                      objects per client process (default 4096 each)\n"
               "  --max-conns N       connections per user (uid; default 64)\n"
               "  --max-mr-bytes N    registered bytes per client process (K/M/G/T; default\n"
               "                      unlimited; RLIMIT_MEMLOCK applies regardless)\n"
               "  --stat SOCKET       print a running daemon's counters and exit\n"
               "Ports come from DVERBS_PORT, DVERBS_IP, DVERBS_LCORES, DVERBS_EAL, ...\n");
}

bool parse_u64(const std::string& s, uint64_t* out, bool suffixes) {
  if (s.empty() || s[0] == '-') return false;
  if (suffixes && s == "unlimited") {
    *out = UINT64_MAX;
    return true;
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || end == s.c_str()) return false;
  uint64_t mul = 1;
  if (suffixes && *end) {
    switch (*end) {
      case 'K':
      case 'k':
        mul = 1ull << 10;
        break;
      case 'M':
      case 'm':
        mul = 1ull << 20;
        break;
      case 'G':
      case 'g':
        mul = 1ull << 30;
        break;
      case 'T':
      case 't':
        mul = 1ull << 40;
        break;
      default:
        return false;
    }
    end++;
  }
  if (*end) return false;
  if (v > UINT64_MAX / mul) return false;
  *out = uint64_t(v) * mul;
  return true;
}

// Applies one long option (name without dashes, '_' and '-' alike). Returns "" or an error.
std::string apply(Options& o, std::string name, const std::string& value) {
  for (char& ch : name)
    if (ch == '_') ch = '-';
  if (name == "dir") {
    if (value.empty()) return "empty directory";
    o.dir = value;
    return {};
  }
  if (name == "mode") {
    char* end = nullptr;
    errno = 0;
    unsigned long m = std::strtoul(value.c_str(), &end, 8);
    if (value.empty() || errno || *end || m > 07777) return "bad mode '" + value + "' (octal)";
    o.mode = mode_t(m);
    return {};
  }
  if (name == "group") {
    group gr;
    group* res = nullptr;
    std::vector<char> buf(16384);
    if (getgrnam_r(value.c_str(), &gr, buf.data(), buf.size(), &res) != 0 || !res) {
      uint64_t g;
      if (!parse_u64(value, &g, false) || g > 0xfffffffe) return "unknown group '" + value + "'";
      o.gid = gid_t(g);
    } else {
      o.gid = res->gr_gid;
    }
    o.set_group = true;
    o.group = value;
    return {};
  }
  if (name == "max-ah") {  // accepted so older configuration files still start the daemon
    std::fprintf(stderr,
                 "dverbsd: max-ah is obsolete and ignored (address handles live in each "
                 "client's pool of 4096)\n");
    return {};
  }
  if (name == "max-mr-bytes") {
    uint64_t v;
    if (!parse_u64(value, &v, true)) return "bad byte count '" + value + "'";
    o.limits.max_mr_bytes = v;
    return {};
  }
  struct {
    const char* n;
    uint32_t* p;
  } counts[] = {{"max-pd", &o.limits.max_pd},   {"max-mr", &o.limits.max_mr},
                {"max-cq", &o.limits.max_cq},   {"max-qp", &o.limits.max_qp},
                {"max-srq", &o.limits.max_srq},
                {"max-mw", &o.limits.max_mw},   {"max-conns", &o.limits.max_conns}};
  for (auto& c : counts)
    if (name == c.n) {
      uint64_t v;
      if (!parse_u64(value, &v, false) || v > UINT32_MAX) return "bad count '" + value + "'";
      *c.p = uint32_t(v);
      return {};
    }
  return "unknown option '" + name + "'";
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// KEY=VALUE lines; '#' starts a comment line; DVERBS_* keys go to the environment.
bool load_config(const char* path, Options& o) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "dverbsd: cannot read %s: %s\n", path, std::strerror(errno));
    return false;
  }
  std::string line;
  for (int no = 1; std::getline(in, line); no++) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    std::string key = eq == std::string::npos ? std::string() : trim(line.substr(0, eq));
    if (key.empty()) {
      std::fprintf(stderr, "dverbsd: %s:%d: expected KEY=VALUE\n", path, no);
      return false;
    }
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value[0] == '"' || value[0] == '\'') && value.back() == value[0])
      value = value.substr(1, value.size() - 2);
    if (key.rfind("DVERBS_", 0) == 0) {
      if (key != "DVERBS_DAEMON") setenv(key.c_str(), value.c_str(), 1);
      continue;
    }
    if (std::string err = apply(o, key, value); !err.empty()) {
      std::fprintf(stderr, "dverbsd: %s:%d: %s\n", path, no, err.c_str());
      return false;
    }
  }
  return true;
}

// The transport counters of the daemon listening on `socket_path`, read from its
// telemetry endpoint, as name=value lines after print_stats' object counters. A daemon
// started with DVERBS_TELEMETRY=off has none: one line says so.
int print_port_counters(const std::string& socket_path) {
  pid_t pid;
  std::string err;
  dverbs::stat::TelemetryClient c;
  dverbs::stat::Json port;
  if (!dverbs::stat::listener_pid(socket_path, &pid, &err)) {
    std::fprintf(stderr, "dverbsd: %s\n", err.c_str());
    return 1;
  }
  const std::string sock = dverbs::stat::socket_of(pid);
  if (sock.empty()) {
    std::printf("# no transport counters: dverbsd %d runs with DVERBS_TELEMETRY=off\n", int(pid));
    return 0;
  }
  if (!c.connect(sock, &err) || !c.call("/dverbs/port", &port, &err)) {
    std::fprintf(stderr, "dverbsd: telemetry of %d: %s\n", int(pid), err.c_str());
    return 1;
  }
  for (const auto& [k, v] : port.object)
    if (v.kind == dverbs::stat::Json::Kind::number) std::printf("%s=%" PRIu64 "\n", k.c_str(), v.u64());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The daemon serves the embedded HCA; the remote driver must never claim it.
  setenv("DVERBS_DAEMON", "dverbsd", 1);

  Options opts;
  std::vector<std::pair<std::string, std::string>> args;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    }
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "dverbsd: unexpected argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
    std::string name = a.substr(2), value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "dverbsd: --%s needs a value\n", name.c_str());
      return 2;
    }
    args.emplace_back(name, value);
  }
  std::string config_path, stat_path;
  for (auto& [k, v] : args) {
    if (k == "config") config_path = v;
    if (k == "stat") stat_path = v;
  }
  if (!stat_path.empty()) {
    if (int rc = dverbs::daemon::print_stats(stat_path.c_str())) return rc;
    return print_port_counters(stat_path);
  }

  // The file first, the command line over it.
  if (!config_path.empty() && !load_config(config_path.c_str(), opts)) return 2;
  for (auto& [k, v] : args) {
    if (k == "config" || k == "stat") continue;
    if (std::string err = apply(opts, k, v); !err.empty()) {
      std::fprintf(stderr, "dverbsd: --%s: %s\n", k.c_str(), err.c_str());
      return 2;
    }
  }
  setenv("DVERBS_DAEMON", "dverbsd", 1);
  // The daemon's port and QP counters are served on DPDK telemetry (dverbs-stat,
  // dverbsd --stat) unless the environment says DVERBS_TELEMETRY=off.
  setenv("DVERBS_TELEMETRY", "on", 0);
  return dverbs::daemon::run_daemon(opts);
}
