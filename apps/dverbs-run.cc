// dverbs-run: runs a command with the DVERBS_* environment set from options.
//
//   dverbs-run [--port DEVARGS] [--ip ADDR/PREFIX] [--mac MAC] [--lcores N|auto] [--eal ARGS]
//              [--fault SPEC] [--pcap FILE] [--log LEVEL] -- CMD ARGS...
//
//   --link-wait S: how long ibv_open_device waits for a port whose link is down (memif peer
//   not started yet), DVERBS_LINK_WAIT, default 10 s (lib/verbs/ibverbs/device.cc).
//   --dev-nodes on|off|auto: /dev/infiniband/uverbsN for the program, in a mount namespace
//   of its own (UCX lists a device only if its uverbs node exists), DVERBS_DEV_NODES,
//   default auto: when run as root and the host has none (apps/dev_nodes.cc).
//
// Options are checked before anything runs: a bad value prints one line naming it. Then
// the libibverbs.so.1 and librdmacm.so.1 drop-ins are put first on LD_LIBRARY_PATH, so
// that unmodified verbs and rdma_cm programs (ibv_devinfo, perftest, rping, ucmatose…) load
// dverbs instead of rdma-core's libraries.
#include <limits.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dev_nodes.h"
#include "pmd/net/config.h"

namespace {

void usage(FILE* f) {
  std::fprintf(f,
               "usage: dverbs-run [--port DEVARGS] [--ip ADDR/PREFIX] [--mac MAC] [--lcores N|auto]\n"
               "                  [--eal ARGS] [--fault SPEC] [--pcap FILE] [--log LEVEL]\n"
               "                  [--link-wait SECONDS] [--dev-nodes on|off|auto]\n"
               "                  -- CMD [ARGS...]\n"
               "Runs CMD with the matching DVERBS_* variables set (see README.md) and dverbs'\n"
               "libibverbs.so.1 and librdmacm.so.1 first on LD_LIBRARY_PATH, so unmodified\n"
               "verbs and rdma_cm programs use them.\n");
}

struct Opt {
  const char* flag;
  const char* var;
};
constexpr Opt kOpts[] = {
    {"--port", "DVERBS_PORT"},   {"--ip", "DVERBS_IP"},       {"--mac", "DVERBS_MAC"},
    {"--lcores", "DVERBS_LCORES"}, {"--eal", "DVERBS_EAL"},   {"--fault", "DVERBS_FAULT"},
    {"--pcap", "DVERBS_PCAP"},   {"--log", "DVERBS_LOG"},
    {"--link-wait", "DVERBS_LINK_WAIT"},  // read by the libibverbs drop-in
    {"--dev-nodes", "DVERBS_DEV_NODES"},  // read here (dev_nodes.cc)
};

#ifndef DVERBS_RUN_BUILD_DIR
#define DVERBS_RUN_BUILD_DIR ""
#define DVERBS_IBVERBS_BUILD_DIR ""
#define DVERBS_RDMACM_BUILD_DIR ""
#define DVERBS_IBVERBS_INSTALL_DIR "/usr/local/lib/dverbs"
#endif

// True when this binary is the build tree's dverbs-run.
bool in_build_tree() {
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return false;
  self[n] = '\0';
  std::string dir(self);
  dir.erase(dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  char build[PATH_MAX];
  return *DVERBS_RUN_BUILD_DIR && realpath(DVERBS_RUN_BUILD_DIR, build) && dir == build;
}

// The directory holding the libibverbs.so.1 drop-in: the build tree's when this binary is
// the build tree's dverbs-run, the installed one otherwise.
std::string dropin_dir() {
  return in_build_tree() ? DVERBS_IBVERBS_BUILD_DIR : DVERBS_IBVERBS_INSTALL_DIR;
}

// The directories to put first on LD_LIBRARY_PATH: the libibverbs.so.1 drop-in's, then the
// librdmacm.so.1 drop-in's (its own build directory; installed, the same directory).
std::string dropin_path() {
  const std::string lib = dropin_dir();
  if (!in_build_tree() || !*DVERBS_RDMACM_BUILD_DIR || lib == DVERBS_RDMACM_BUILD_DIR) return lib;
  return lib + ":" + DVERBS_RDMACM_BUILD_DIR;
}

// Sanitizer runtimes this dverbs-run was built with (a -Db_sanitize build): the drop-in was
// built with them too, and an uninstrumented program (ibv_devinfo, perftest) can load it
// only if they are preloaded.
std::string sanitizer_runtimes() {
  std::string out;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* p) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        for (const char* rt : {"/libasan.so", "/libubsan.so", "/libtsan.so"})
          if (name.find(rt) != std::string::npos) {
            auto* o = static_cast<std::string*>(p);
            *o += (o->empty() ? "" : ":") + name;
          }
        return 0;
      },
      &out);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int i = 1;
  for (; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--") {
      i++;
      break;
    }
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    }
    const Opt* o = nullptr;
    std::string value;
    for (const Opt& k : kOpts) {
      size_t n = std::strlen(k.flag);
      if (a == k.flag) {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "dverbs-run: %s needs a value\n", k.flag);
          return 2;
        }
        o = &k;
        value = argv[++i];
      } else if (a.compare(0, n, k.flag) == 0 && a.size() > n && a[n] == '=') {
        o = &k;
        value = a.substr(n + 1);
      }
      if (o) break;
    }
    if (!o) {
      std::fprintf(stderr, "dverbs-run: unknown option '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
    setenv(o->var, value.c_str(), 1);
  }
  if (i >= argc) {
    usage(stderr);
    return 2;
  }
  // Validate the whole environment now, so a typo is one clear line, not a failure later
  // inside the program.
  dverbs::pmd::net::Config cfg;
  std::string err;
  if (!dverbs::pmd::net::config_from_env(&cfg, &err)) {
    std::fprintf(stderr, "dverbs-run: %s\n", err.c_str());
    return 2;
  }
  if (const char* w = std::getenv("DVERBS_LINK_WAIT"); w && *w) {
    char* end = nullptr;
    const double v = std::strtod(w, &end);
    if (*end != '\0' || !(v >= 0 && v <= 3600)) {
      std::fprintf(stderr, "dverbs-run: DVERBS_LINK_WAIT: '%s' is not a number of seconds (0..3600)\n",
                   w);
      return 2;
    }
  }
  dverbs::run::DevNodes nodes;
  if (!dverbs::run::parse_dev_nodes(std::getenv("DVERBS_DEV_NODES"), &nodes)) {
    std::fprintf(stderr, "dverbs-run: DVERBS_DEV_NODES: '%s' is not on, off or auto\n",
                 std::getenv("DVERBS_DEV_NODES"));
    return 2;
  }
  const std::string lib = dropin_dir();
  struct stat st;
  if (stat((lib + "/libibverbs.so.1").c_str(), &st) != 0) {
    std::fprintf(
        stderr,
        "dverbs-run: the libibverbs.so.1 drop-in is missing from %s (build or install dverbs)\n",
        lib.c_str());
    return 127;
  }
  const char* old = std::getenv("LD_LIBRARY_PATH");
  const std::string dirs = dropin_path();
  const std::string path = old && *old ? dirs + ":" + old : dirs;
  setenv("LD_LIBRARY_PATH", path.c_str(), 1);
  if (const std::string rt = sanitizer_runtimes(); !rt.empty()) {
    const char* pre = std::getenv("LD_PRELOAD");
    setenv("LD_PRELOAD", (pre && *pre ? rt + ":" + pre : rt).c_str(), 1);
    // Uninstrumented programs do not free everything at exit; that is not dverbs' leak.
    setenv("ASAN_OPTIONS", "detect_leaks=0", 0);
  }
  if (!dverbs::run::publish_dev_nodes(nodes, &err)) {
    std::fprintf(stderr, "dverbs-run: %s\n", err.c_str());
    return 2;
  }
  execvp(argv[i], argv + i);
  std::fprintf(stderr, "dverbs-run: cannot run '%s': %s\n", argv[i], std::strerror(errno));
  return 127;
}
