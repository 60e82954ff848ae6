// EAL start-up. rte_eal_init may run once per process, pins the calling thread, parses (and
// permutes) argv with getopt, prints its usage text to stdout on a bad option and logs to
// stdout+syslog by default. We undo or contain each of these so that embedding dverbs in an
// arbitrary verbs program has no visible side effect other than DPDK's own threads.
#include "pmd/net/eal.h"

#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <vector>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_log.h>

namespace dverbs::pmd::net {
namespace {

struct EalState {
  std::once_flag once;
  int rc = 0;
  std::string err;
  std::atomic<bool> ready{false};
  // argv must outlive rte_eal_init: some options keep pointers into it.
  std::vector<std::string> args;
  std::vector<char*> argv;
};

EalState& state() {
  static EalState s;
  return s;
}

thread_local bool registered_here = false;

// DPDK's log stream: an unbuffered cookie stream, so each message reaches log_write() on the
// thread that logged it; that thread's active DpdkLogCapture (if any) gets it, else stderr.
thread_local std::string* log_capture = nullptr;

ssize_t log_write(void*, const char* buf, size_t n) {
  try {
    if (log_capture) {
      log_capture->append(buf, n);
      return ssize_t(n);
    }
  } catch (...) {  // out of memory: fall through to stderr
  }
  std::fwrite(buf, 1, n, stderr);
  return ssize_t(n);
}

FILE* log_sink() {
  static FILE* sink = [] {
    cookie_io_functions_t io{};
    io.write = log_write;
    FILE* f = fopencookie(nullptr, "w", io);
    if (f) setvbuf(f, nullptr, _IONBF, 0);
    return f ? f : stderr;
  }();
  return sink;
}

std::string_view strip_log_prefix(std::string_view line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '.'))
    line.remove_suffix(1);
  if (line.starts_with("EAL: ")) line.remove_prefix(5);
  // "rte_pmd_memif_probe(): msg" -> "msg"
  if (size_t p = line.find("(): "); p != std::string_view::npos && p < 48 &&
                                    line.substr(0, p).find(' ') == std::string_view::npos)
    line.remove_prefix(p + 4);
  return line;
}

std::vector<std::string> split_spaces(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t' && s[j] != '\n') ++j;
    if (j > i) out.emplace_back(s, i, j - i);
    i = j;
  }
  return out;
}

// The option a token names: "--file-prefix=x" -> "--file-prefix", "-m512" -> "-m".
std::string_view option_key(std::string_view tok) {
  if (tok.starts_with("--")) return tok.substr(0, tok.find('='));
  if (tok.size() >= 2 && tok[0] == '-') return tok.substr(0, 2);
  return {};
}

bool has_option(const std::vector<std::string>& toks,
                std::initializer_list<std::string_view> keys) {
  for (const auto& t : toks)
    for (auto k : keys)
      if (option_key(t) == k) return true;
  return false;
}

// "0-3,6,8-9" for the CPUs in *set below RTE_MAX_LCORE (EAL rejects higher ids).
std::string cpu_list(const cpu_set_t& set) {
  std::string out;
  for (int c = 0; c < RTE_MAX_LCORE && c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    int last = c;
    while (last + 1 < RTE_MAX_LCORE && last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, &set)) ++last;
    if (!out.empty()) out += ',';
    out += std::to_string(c);
    if (last > c) out += '-' + std::to_string(last);
    c = last;
  }
  return out;
}

std::vector<std::string> build_args(const Config& cfg, const cpu_set_t& affinity) {
  const std::vector<std::string> user = split_spaces(cfg.eal_args);
  std::vector<std::string> a{"dverbs"};
  // Hugepages stay off unless the user asks for them through DVERBS_EAL.
  const bool wants_huge = has_option(user, {"--huge-dir", "--socket-mem", "--huge-unlink",
                                            "--in-memory", "--single-file-segments"});
  if (!wants_huge) a.emplace_back("--no-huge");
  if (!has_option(user, {"-m", "--socket-mem"}) && !wants_huge) {
    a.emplace_back("-m");
    a.emplace_back("512");
  }
  if (devargs_is_pci(cfg.port)) {
    a.emplace_back("-a");
    a.emplace_back(cfg.port);
  } else if (!has_option(user, {"-a", "--allow", "-b", "--block"})) {
    a.emplace_back("--no-pci");
  }
  if (!has_option(user, {"--file-prefix"}))
    a.emplace_back("--file-prefix=dverbs-" + std::to_string(getpid()));
  // No shared config files: nothing is left in /var/run/dpdk, even after a crash. (EAL's
  // --in-memory would do the same but refuses --no-huge.)
  if (!has_option(user, {"--in-memory", "--no-shconf"})) a.emplace_back("--no-shconf");
  // The main lcore floats over every CPU we may use instead of being pinned to one.
  if (!has_option(user, {"-l", "-c", "--lcores"})) {
    std::string cpus = cpu_list(affinity);
    a.emplace_back("--lcores");
    a.emplace_back(cpus.empty() ? std::string("0") : "0@(" + cpus + ")");
  }
  if (!has_option(user, {"--telemetry", "--no-telemetry"}))
    a.emplace_back(cfg.telemetry ? "--telemetry" : "--no-telemetry");
  a.emplace_back("--log-level=" + std::to_string(cfg.log_level));
  a.insert(a.end(), user.begin(), user.end());
  return a;
}

void remove_runtime_dir() {
  const char* dir = rte_eal_get_runtime_dir();
  if (!dir || !*dir) return;
  for (const char* sock : {"dpdk_telemetry.v2", "telemetry"})
    unlink((std::string(dir) + "/" + sock).c_str());
  rmdir(dir);
}

int do_init(const Config& cfg, std::string* err) {
  EalState& st = state();
  cpu_set_t affinity;
  CPU_ZERO(&affinity);
  const bool have_affinity = sched_getaffinity(0, sizeof(affinity), &affinity) == 0;
  st.args = build_args(cfg, affinity);
  st.argv.clear();
  for (auto& s : st.args) st.argv.push_back(s.data());
  st.argv.push_back(nullptr);

  // Collect EAL's log while it starts: on failure it becomes part of our one-line error, on
  // success it is replayed to stderr (it only holds warnings at the default level).
  rte_openlog_stream(log_sink());
  DpdkLogCapture log;

  // On a bad option EAL prints its usage text to stdout and a "FATAL" line to stderr, outside
  // its log: keep both out of the program's output (the reason is in the captured log).
  std::fflush(stdout);
  std::fflush(stderr);
  const int saved_out = dup(STDOUT_FILENO), saved_err = dup(STDERR_FILENO);
  const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  const bool silenced = saved_out >= 0 && saved_err >= 0 && devnull >= 0;
  if (silenced) {
    dup2(devnull, STDOUT_FILENO);
    dup2(devnull, STDERR_FILENO);
  }

  // getopt state belongs to the program; EAL resets it.
  const int saved_optind = optind, saved_opterr = opterr, saved_optopt = optopt;
  char* const saved_optarg = optarg;

  int ret = rte_eal_init(int(st.argv.size() - 1), st.argv.data());
  const int eal_errno = rte_errno;

  optind = saved_optind;
  opterr = saved_opterr;
  optopt = saved_optopt;
  optarg = saved_optarg;
  std::fflush(stdout);
  std::fflush(stderr);
  if (silenced) {
    dup2(saved_out, STDOUT_FILENO);
    dup2(saved_err, STDERR_FILENO);
  }
  for (int fd : {saved_out, saved_err, devnull})
    if (fd >= 0) close(fd);
  if (have_affinity) sched_setaffinity(0, sizeof(affinity), &affinity);

  if (ret < 0) {
    int e = eal_errno > 0 ? eal_errno : EINVAL;
    std::string why = log.first_line();
    log.discard();
    if (err) {
      *err = "DVERBS_EAL: " + (cfg.eal_args.empty() ? "" : "'" + cfg.eal_args + "': ") +
             "cannot start DPDK: " + (why.empty() ? "" : why + " (") + rte_strerror(e) +
             (why.empty() ? "" : ")");
      for (char& c : *err)
        if (c == '\n') c = ' ';
    }
    return e;
  }
  // DVERBS_TELEMETRY=on: DPDK says that it made no socket for the legacy protocol, which
  // nobody asked for.
  log.replay({"No legacy callbacks, legacy socket not created"});
  // With --no-shconf the runtime directory stays empty; do not leave it behind. Telemetry's
  // sockets live there until exit: then they and the directory go (after a crash they
  // stay, and dverbs-stat skips a socket nobody answers on).
  if (const char* dir = rte_eal_get_runtime_dir(); dir && *dir) rmdir(dir);
  if (cfg.telemetry) std::atexit(remove_runtime_dir);
  st.ready.store(true, std::memory_order_release);
  return 0;
}

}  // namespace

int eal_init(const Config& cfg, std::string* err) {
  EalState& st = state();
  std::call_once(st.once, [&] { st.rc = do_init(cfg, &st.err); });
  if (st.rc != 0 && err) *err = st.err;
  return st.rc;
}

bool eal_ready() noexcept {
  return state().ready.load(std::memory_order_acquire);
}

int register_thread() {
  if (rte_lcore_id() != LCORE_ID_ANY) return 0;
  if (!eal_ready()) return EINVAL;
  if (rte_thread_register() < 0) return rte_errno > 0 ? rte_errno : EINVAL;
  registered_here = true;
  return 0;
}

void unregister_thread() noexcept {
  if (!registered_here) return;
  rte_thread_unregister();
  registered_here = false;
}

DpdkLogCapture::DpdkLogCapture() : prev_(log_capture) {
  log_capture = &text_;
}

DpdkLogCapture::~DpdkLogCapture() {
  log_capture = prev_;
  replay();
}

std::string DpdkLogCapture::first_line(std::initializer_list<const char*> skip) const {
  std::string_view rest(text_);
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = strip_log_prefix(rest.substr(0, nl));
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    bool keep = !line.empty();
    for (const char* frag : skip)
      if (line.find(frag) != std::string_view::npos) keep = false;
    if (keep) return std::string(line);
  }
  return {};
}

void DpdkLogCapture::replay(std::initializer_list<const char*> skip) {
  std::string_view rest(text_);
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl == std::string_view::npos ? rest.size() : nl + 1);
    rest.remove_prefix(line.size());
    bool keep = true;
    for (const char* frag : skip)
      if (line.find(frag) != std::string_view::npos) keep = false;
    if (keep) std::fwrite(line.data(), 1, line.size(), stderr);
  }
  text_.clear();
}

bool devargs_is_pci(const std::string& devargs) {
  auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  };
  // [DDDD:]BB:DD.F
  auto match = [&](std::string_view s, std::string_view pattern) {
    if (s.size() < pattern.size()) return false;
    for (size_t i = 0; i < pattern.size(); ++i) {
      if (pattern[i] == 'h'   ? !hex(s[i])
          : pattern[i] == 'f' ? !(s[i] >= '0' && s[i] <= '7')
                              : s[i] != pattern[i])
        return false;
    }
    return s.size() == pattern.size() || s[pattern.size()] == ',';
  };
  std::string_view s(devargs);
  return match(s, "hhhh:hh:hh.f") || match(s, "hh:hh.f");
}

}  // namespace dverbs::pmd::net
