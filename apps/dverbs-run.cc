// dverbs-run: runs a command with the DVERBS_* environment set from options.
//
//   dverbs-run [--port DEVARGS] [--ip ADDR/PREFIX] [--mac MAC] [--lcores N] [--eal ARGS]
//              [--fault SPEC] [--pcap FILE] [--log LEVEL] -- CMD ARGS...
//
// Options are checked before anything runs: a bad value prints one line naming it.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pmd/net/config.h"

namespace {

void usage(FILE* f) {
  std::fprintf(f,
               "usage: dverbs-run [--port DEVARGS] [--ip ADDR/PREFIX] [--mac MAC] [--lcores N]\n"
               "                  [--eal ARGS] [--fault SPEC] [--pcap FILE] [--log LEVEL]\n"
               "                  -- CMD [ARGS...]\n"
               "Runs CMD with the matching DVERBS_* variables set (see README.md).\n");
}

struct Opt {
  const char* flag;
  const char* var;
};
constexpr Opt kOpts[] = {
    {"--port", "DVERBS_PORT"},   {"--ip", "DVERBS_IP"},       {"--mac", "DVERBS_MAC"},
    {"--lcores", "DVERBS_LCORES"}, {"--eal", "DVERBS_EAL"},   {"--fault", "DVERBS_FAULT"},
    {"--pcap", "DVERBS_PCAP"},   {"--log", "DVERBS_LOG"},
};

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
  execvp(argv[i], argv + i);
  std::fprintf(stderr, "dverbs-run: cannot run '%s': %s\n", argv[i], std::strerror(errno));
  return 127;
}
