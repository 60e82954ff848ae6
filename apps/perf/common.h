// dverbs-perf internals shared by the scenarios: options, results, child processes,
// statistics, and the traffic generator that keeps a window of work requests in flight.
//
// Process model: the parent (the scenario) never opens DPDK. Every measurement runs in a
// child — `dverbs-perf --child KIND [options]` exec'ed from /proc/self/exe with its own
// DVERBS_* environment, because dverbs reads its configuration once per process — and
// reports one "RESULT key=value ..." line on stdout that the parent parses. Baselines run
// in children of the same kind, interleaved with the measured runs.
//
// Thread safety: everything here runs on the calling thread; nothing is shared.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dverbs/dverbs.h"

namespace dverbs::perf {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Command-line options; every scenario reads the ones it needs.
struct Options {
  std::string scenario;
  bool json = false;
  uint32_t size = 0;                  // message bytes (0 = the scenario's default)
  std::string op;                     // send | write | read (empty = the scenario's default)
  int lcores = -1;                    // transport lcores (-1 = the scenario's default)
  double duration = 0;                // measured seconds per run (0 = default)
  double warmup = 0;                  // seconds before measuring (0 = default)
  int reps = 0;                       // measured/baseline pairs (0 = default)
  uint64_t iters = 0;                 // latency: measured round trips (0 = default)
  uint64_t warmup_iters = 0;          // latency: round trips before measuring (0 = default)
  uint32_t window = 0;                // WRs in flight (0 = default)
  uint32_t signal = 0;                // signal every Nth WR (0 = default)
  int max_lcores = 0;                 // scaling: largest n (0 = CPUs available)
  std::vector<uint32_t> qps;          // qps: counts of QP pairs
  uint64_t messages = 0;              // run a fixed number of messages instead of a duration
  std::string port;                   // scaling child: null | loop
  uint32_t nqps = 0;                  // qps child
  bool blocking = false;              // latency child: blocking UDP receive
  bool raw_port = false;              // latency child: raw frames over the port, no transport
  bool lazy = false;                  // traffic generator sleeps when idle (scaling)
  bool no_pin = false;                // leave transport lcores floating (default: pinned)
  bool daemon = false;                // latency: also measure through dverbsd (issue 8)
  std::string role;                   // latency child: server | client
  std::vector<std::string> raw_args;  // as given, for forwarding to children
};

// Parses argv after the scenario name. Exits with a message on a bad option.
Options parse_options(int argc, char** argv, int first);
void usage(FILE* out);

// One child's result: numbers and lists of numbers by key.
using Result = std::map<std::string, std::vector<double>>;
double get(const Result& r, const std::string& key, double dflt = 0);

// Prints the RESULT line (children).
void print_result(const Result& r);

// A child process of this executable. `args` follow "--child"; `env` entries are
// "NAME=value" (an empty value unsets the variable). stdout is captured, stderr inherited.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();
  // Context: process context. Returns false (with a message on stderr) if fork fails.
  bool start(const std::vector<std::string>& args, const std::vector<std::string>& env,
             const std::vector<int>& keep_fds = {});
  // Waits (up to timeout_s, then SIGKILL) and parses the RESULT line. Exits the program with
  // a message if the child failed or printed no result.
  Result wait(double timeout_s = 300);
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string desc_;
};

// Starts a child and waits for it.
Result run_child(const std::vector<std::string>& args, const std::vector<std::string>& env);

// Percentile (0..100) of sorted samples, nearest-rank.
double percentile(const std::vector<double>& sorted, double p);
// "1.234 1.301": rates in millions, for the per-run column of the tables.
std::string list_millions(const std::vector<double>& v);
double median(std::vector<double> v);

// Resident set size of this process in bytes (/proc/self/statm).
uint64_t rss_bytes();
// CPUs this process may run on.
int cpus_available();
// Pins the transport lcores ("dverbs-lcN" threads) to distinct CPUs, lcore N on the N-th
// CPU this process may use, and the calling thread to the last one when there are more
// CPUs than lcores. Returns a description ("lcore 0 -> CPU 0, app -> CPU 1"). DPDK
// applications pin their lcores; dverbs leaves them floating, which on a loaded machine lets
// the scheduler stack a spinning lcore and a spinning application on one CPU.
std::string pin_threads();
// CPU time (seconds) of this process, and of its transport lcore threads ("dverbs-lc*",
// from /proc/self/task/*/schedstat). On a shared machine wall-clock rates say how much CPU
// the threads got; messages per CPU second say what a message costs.
double process_cpu_seconds();
double lcore_cpu_seconds();
// "AMD EPYC (2 CPUs)" from /proc/cpuinfo.
std::string cpu_model();
// The 1-minute load average (/proc/loadavg): other work competing for the CPUs.
double load_average();

// A JSON object written key by key, in order.
class Json {
 public:
  Json& num(const std::string& k, double v);
  Json& str(const std::string& k, const std::string& v);
  Json& arr(const std::string& k, const std::vector<double>& v);
  Json& raw(const std::string& k, const std::string& json);
  Json& flag(const std::string& k, bool v) { return raw(k, v ? "true" : "false"); }
  std::string text() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};
std::string json_number(double v);

// Exits with "dverbs-perf: what: strerror(err)".
[[noreturn]] void die(const std::string& what, int err = 0);

// ---- verbs helpers (children) ----

// Moves an RC or UC QP to RTS towards (gid, qpn). RC gets max_rd_atomic and
// max_dest_rd_atomic 16 so READs pipeline, timeout 14 (67 ms), retry_cnt 7, rnr_retry 7.
int connect_qp(Qp& qp, QpType type, const Gid& gid, uint32_t remote_qpn, uint32_t lpsn,
               uint32_t rpsn, Mtu mtu, uint32_t access_flags);

// Prints the soft HCA's counters of a context to stderr if any error counter moved
// (drops, retransmissions): a measurement with losses is reported as such.
Result hca_counters(const Context& ctx);

}  // namespace dverbs::perf
