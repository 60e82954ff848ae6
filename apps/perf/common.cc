#include "perf/common.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace dverbs::perf {

// ---------------------------------------------------------------- errors, options

void die(const std::string& what, int err) {
  std::fflush(stdout);
  if (err)
    std::fprintf(stderr, "dverbs-perf: %s: %s\n", what.c_str(), std::strerror(err));
  else
    std::fprintf(stderr, "dverbs-perf: %s\n", what.c_str());
  std::exit(1);
}

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: dverbs-perf SCENARIO [options] [--json]\n"
      "\n"
      "scenarios (each measures its baseline in the same run and prints the ratio):\n"
      "  rate       64-byte RC messages, two QPs on the built-in loopback port, one\n"
      "             transport lcore; baseline: raw mbuf alloc + header/payload write +\n"
      "             rte_eth_tx_burst + rte_eth_rx_burst + copy out + free on the same port\n"
      "  latency    64-byte RC SEND ping-pong between two processes over net_memif, inline\n"
      "             progress; baseline: kernel UDP ping-pong over 127.0.0.1, same harness\n"
      "  bandwidth  64 KiB RDMA WRITEs on one QP over loopback; baseline: single-core memcpy\n"
      "  scaling    1..N transport lcores, one QP each, on net_null (requester path) and on\n"
      "             loopback (full path); efficiency = rate(n) / (n * rate(1))\n"
      "  qps        message rate and RSS with 1, 10, 100, 1000 active QP pairs\n"
      "  idle       CPU of a process without traffic (inline, one lcore, the default) and\n"
      "             the first message after the pause against one sent hot\n"
      "\n"
      "options:\n"
      "  --json             one JSON object on the last line of stdout\n"
      "  --size N           message bytes (rate 64, bandwidth 65536, latency 64)\n"
      "  --op send|write|read   (rate, scaling, qps)\n"
      "  --lcores N         transport lcores (rate/bandwidth/qps: 1; 0 = inline progress)\n"
      "  --duration S       measured seconds per run      --warmup S   seconds before\n"
      "  --reps N           measured/baseline pairs, medians reported\n"
      "  --iters N          latency round trips (100000)  --warmup-iters N (10000)\n"
      "  --window N         WRs in flight                 --signal N   signal every Nth WR\n"
      "  --max-lcores N     scaling: largest lcore count (default: CPUs available)\n"
      "  --qps a,b,...      qps: QP pair counts (default 1,10,100,1000)\n"
      "  --messages N       run exactly N messages per run (for callgrind)\n"
      "  --lazy             the application sleeps ~20 us when it finds nothing to do\n"
      "  --no-pin           leave transport lcores floating (default: one CPU each, the\n"
      "                     application thread on another when there is one)\n"
      "  --daemon           latency: also run the ping-pong as clients of two dverbsd\n"
      "                     (one per memif end) and report daemon / embedded\n");
}

namespace {

uint64_t to_u64(const std::string& opt, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  unsigned long long x = std::strtoull(v.c_str(), &end, 0);
  if (v.empty() || errno || *end || v[0] == '-') die(opt + ": '" + v + "' is not a number");
  return x;
}
double to_double(const std::string& opt, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || errno || *end || !(x >= 0)) die(opt + ": '" + v + "' is not a number");
  return x;
}

}  // namespace

Options parse_options(int argc, char** argv, int first) {
  Options o;
  for (int i = first; i < argc; i++) {
    std::string a = argv[i], v;
    o.raw_args.push_back(a);
    const bool has_eq = a.rfind("--", 0) == 0 && a.find('=') != std::string::npos;
    if (has_eq) {
      v = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
    }
    auto val = [&]() -> std::string {
      if (has_eq) return v;
      if (i + 1 >= argc) die(a + " needs a value");
      o.raw_args.push_back(argv[i + 1]);
      return argv[++i];
    };
    if (a == "--json")
      o.json = true;
    else if (a == "--size")
      o.size = uint32_t(to_u64(a, val()));
    else if (a == "--op") {
      o.op = val();
      if (o.op != "send" && o.op != "write" && o.op != "read") die("--op: send, write or read");
    } else if (a == "--lcores")
      o.lcores = int(to_u64(a, val()));
    else if (a == "--duration")
      o.duration = to_double(a, val());
    else if (a == "--warmup")
      o.warmup = to_double(a, val());
    else if (a == "--reps")
      o.reps = int(to_u64(a, val()));
    else if (a == "--iters")
      o.iters = to_u64(a, val());
    else if (a == "--warmup-iters")
      o.warmup_iters = to_u64(a, val());
    else if (a == "--window")
      o.window = uint32_t(to_u64(a, val()));
    else if (a == "--signal")
      o.signal = uint32_t(to_u64(a, val()));
    else if (a == "--max-lcores")
      o.max_lcores = int(to_u64(a, val()));
    else if (a == "--messages")
      o.messages = to_u64(a, val());
    else if (a == "--port")
      o.port = val();
    else if (a == "--nqps")
      o.nqps = uint32_t(to_u64(a, val()));
    else if (a == "--role")
      o.role = val();
    else if (a == "--blocking")
      o.blocking = true;
    else if (a == "--raw-port")
      o.raw_port = true;
    else if (a == "--lazy")
      o.lazy = true;
    else if (a == "--no-pin")
      o.no_pin = true;
    else if (a == "--daemon")
      o.daemon = true;
    else if (a == "--qps") {
      std::stringstream ss(val());
      std::string item;
      while (std::getline(ss, item, ',')) o.qps.push_back(uint32_t(to_u64(a, item)));
    } else if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    } else {
      usage(stderr);
      die("unknown option '" + a + "'");
    }
  }
  return o;
}

// ---------------------------------------------------------------- results

double get(const Result& r, const std::string& key, double dflt) {
  auto it = r.find(key);
  return it == r.end() || it->second.empty() ? dflt : it->second[0];
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    std::snprintf(b, sizeof b, "%.0f", v);
  else
    std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

void print_result(const Result& r) {
  std::string line = "RESULT";
  for (const auto& [k, vs] : r) {
    line += " " + k + "=";
    for (size_t i = 0; i < vs.size(); i++) {
      char b[64];
      std::snprintf(b, sizeof b, "%.17g", vs[i]);
      if (i) line += ',';
      line += b;
    }
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// ---------------------------------------------------------------- children

Child::~Child() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

bool Child::start(const std::vector<std::string>& args, const std::vector<std::string>& env,
                  const std::vector<int>& keep_fds) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) die("pipe", errno);
  desc_ = "child";
  for (const auto& a : args) desc_ += " " + a;
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) die("fork", errno);
  if (pid == 0) {
    dup2(p[1], STDOUT_FILENO);
    for (const auto& e : env) {
      size_t eq = e.find('=');
      std::string k = e.substr(0, eq), v = eq == std::string::npos ? "" : e.substr(eq + 1);
      if (v.empty())
        unsetenv(k.c_str());
      else
        setenv(k.c_str(), v.c_str(), 1);
    }
    for (int fd : keep_fds) fcntl(fd, F_SETFD, 0);
    std::vector<std::string> all{"dverbs-perf", "--child"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> av;
    for (auto& s : all) av.push_back(s.data());
    av.push_back(nullptr);
    execv("/proc/self/exe", av.data());
    std::fprintf(stderr, "dverbs-perf: exec: %s\n", std::strerror(errno));
    _exit(127);
  }
  close(p[1]);
  pid_ = pid;
  out_fd_ = p[0];
  return true;
}

Result Child::wait(double timeout_s) {
  std::string out;
  auto t0 = Clock::now();
  char buf[4096];
  for (;;) {
    pollfd pfd{out_fd_, POLLIN, 0};
    int r = poll(&pfd, 1, 200);
    if (r > 0) {
      ssize_t n = read(out_fd_, buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, size_t(n));
    }
    if (seconds_since(t0) > timeout_s) {
      kill(pid_, SIGKILL);
      std::fprintf(stderr, "dverbs-perf: %s: no result after %.0f s, killed\n", desc_.c_str(),
                   timeout_s);
      break;
    }
  }
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  close(out_fd_);
  out_fd_ = -1;
  Result res;
  bool found = false;
  std::stringstream ss(out);
  std::string line;
  while (std::getline(ss, line)) {
    if (line.rfind("RESULT", 0) != 0) continue;
    found = true;
    res.clear();
    std::stringstream ls(line.substr(6));
    std::string kv;
    while (ls >> kv) {
      size_t eq = kv.find('=');
      if (eq == std::string::npos) continue;
      std::vector<double>& vs = res[kv.substr(0, eq)];
      std::stringstream vss(kv.substr(eq + 1));
      std::string item;
      while (std::getline(vss, item, ',')) vs.push_back(std::strtod(item.c_str(), nullptr));
    }
  }
  if (!found || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string why = WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                          : "exit status " + std::to_string(WEXITSTATUS(status));
    die(desc_ + ": failed (" + why + ")" + (found ? "" : ", no result"));
  }
  return res;
}

Result run_child(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  Child c;
  c.start(args, env);
  return c.wait();
}

// ---------------------------------------------------------------- statistics, machine

double percentile(const std::vector<double>& s, double p) {
  if (s.empty()) return 0;
  size_t rank = size_t(std::ceil(p / 100.0 * double(s.size())));
  if (rank < 1) rank = 1;
  if (rank > s.size()) rank = s.size();
  return s[rank - 1];
}

std::string list_millions(const std::vector<double>& v) {
  std::string out;
  for (double x : v) {
    char b[32];
    std::snprintf(b, sizeof b, "%s%.3f", out.empty() ? "" : " ", x / 1e6);
    out += b;
  }
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "re");
  if (!f) return 0;
  unsigned long long size = 0, res = 0;
  if (std::fscanf(f, "%llu %llu", &size, &res) != 2) res = 0;
  std::fclose(f);
  return res * uint64_t(sysconf(_SC_PAGESIZE));
}

int cpus_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

std::string pin_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return "not pinned";
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  if (cpus.empty()) return "not pinned";
  std::string desc;
  int lcores = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const std::string tid = e->d_name;
      char comm[64] = {};
      if (FILE* f = std::fopen(("/proc/self/task/" + tid + "/comm").c_str(), "re")) {
        if (!std::fgets(comm, sizeof comm, f)) comm[0] = 0;
        std::fclose(f);
      }
      unsigned n = 0;
      if (std::sscanf(comm, "dverbs-lc%u", &n) != 1) continue;
      cpu_set_t one;
      CPU_ZERO(&one);
      const int cpu = cpus[n % cpus.size()];
      CPU_SET(cpu, &one);
      if (sched_setaffinity(pid_t(std::stol(tid)), sizeof one, &one) == 0) {
        desc += (desc.empty() ? "" : ", ") + std::string("lcore ") + std::to_string(n) +
                " -> CPU " + std::to_string(cpu);
        lcores++;
      }
    }
    closedir(d);
  }
  if (lcores > 0 && size_t(lcores) < cpus.size()) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus.back(), &one);
    if (sched_setaffinity(0, sizeof one, &one) == 0)
      desc += ", app -> CPU " + std::to_string(cpus.back());
  }
  return desc.empty() ? "no lcores" : desc;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

double lcore_cpu_seconds() {
  double total = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const std::string base = std::string("/proc/self/task/") + e->d_name;
      char comm[64] = {};
      if (FILE* f = std::fopen((base + "/comm").c_str(), "re")) {
        if (!std::fgets(comm, sizeof comm, f)) comm[0] = 0;
        std::fclose(f);
      }
      if (std::strncmp(comm, "dverbs-lc", 9) != 0) continue;
      if (FILE* f = std::fopen((base + "/schedstat").c_str(), "re")) {
        unsigned long long ns = 0;
        if (std::fscanf(f, "%llu", &ns) == 1) total += double(ns) / 1e9;
        std::fclose(f);
      }
    }
    closedir(d);
  }
  return total;
}

std::string cpu_model() {
  FILE* f = std::fopen("/proc/cpuinfo", "re");
  std::string model = "unknown CPU";
  if (f) {
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      if (std::strncmp(line, "model name", 10) != 0) continue;
      const char* c = std::strchr(line, ':');
      if (!c) continue;
      model = c + 1;
      while (!model.empty() && (model.front() == ' ' || model.front() == '\t')) model.erase(0, 1);
      while (!model.empty() && (model.back() == '\n' || model.back() == ' ')) model.pop_back();
      break;
    }
    std::fclose(f);
  }
  return model + " (" + std::to_string(cpus_available()) + " CPUs available, " +
         std::to_string(std::thread::hardware_concurrency()) + " online)";
}

double load_average() {
  double l = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "re")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = 0;
    std::fclose(f);
  }
  return l;
}

// ---------------------------------------------------------------- JSON

void Json::key(const std::string& k) {
  if (!body_.empty()) body_ += ",";
  body_ += "\"" + k + "\":";
}
Json& Json::num(const std::string& k, double v) {
  key(k);
  body_ += json_number(v);
  return *this;
}
Json& Json::str(const std::string& k, const std::string& v) {
  key(k);
  body_ += "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') body_ += '\\';
    if (uint8_t(c) >= 0x20) body_ += c;
  }
  body_ += "\"";
  return *this;
}
Json& Json::arr(const std::string& k, const std::vector<double>& v) {
  key(k);
  body_ += "[";
  for (size_t i = 0; i < v.size(); i++) {
    if (i) body_ += ',';
    body_ += json_number(v[i]);
  }
  body_ += "]";
  return *this;
}
Json& Json::raw(const std::string& k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}

// ---------------------------------------------------------------- verbs helpers

int connect_qp(Qp& qp, QpType type, const Gid& gid, uint32_t rqpn, uint32_t lpsn, uint32_t rpsn,
               Mtu mtu, uint32_t access_flags) {
  namespace m = qp_attr_mask;
  const bool rc = type == QpType::rc;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.pkey_index = 0;
  a.qp_access_flags = access_flags;
  if (int e = qp.modify(a, m::state | m::pkey_index | m::port | m::access_flags)) return e;
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.path_mtu = mtu;
  a.dest_qp_num = rqpn;
  a.rq_psn = rpsn;
  a.max_dest_rd_atomic = 16;
  a.min_rnr_timer = 1;
  a.ah_attr.dgid = gid;
  a.ah_attr.is_global = true;
  a.ah_attr.port_num = 1;
  if (int e = qp.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                               (rc ? m::max_dest_rd_atomic | m::min_rnr_timer : 0)))
    return e;
  a = QpAttr{};
  a.qp_state = QpState::rts;
  a.sq_psn = lpsn;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = 16;
  return qp.modify(a,
                   m::state | m::sq_psn |
                       (rc ? m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic : 0));
}

Result hca_counters(const Context& ctx) {
  // Through the driver API (DeviceOps::query_counters): nothing when the driver keeps no
  // counters (daemon mode).
  Result r;
  std::vector<Counter> all;
  if (ctx.query_counters(&all) != 0) return r;
  for (const Counter& c : all) {
    const std::string name = c.name;
    if (name == "port_tx_dropped")
      r[name] = {double(c.value)};
    else if (name == "tx_packets" || name == "rx_packets" || name == "rx_bad_icrc" ||
             name == "rx_no_qp" || name == "tx_no_mbuf" || name == "cq_overflow")
      r["hca_" + name] = {double(c.value)};
  }
  return r;
}

}  // namespace dverbs::perf
