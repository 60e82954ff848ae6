// Embedded or daemon mode: which soft HCA a process uses (ARCHITECTURE.md, dverbsd).
//
// DVERBS_DAEMON=DIR selects the daemon serving sockets DIR/uverbsN; DVERBS_DAEMON=off forces
// the embedded HCA. dverbsd runs with DVERBS_DAEMON=dverbsd: embedded, and the HCA's
// inline-progress helper is left to its doorbell thread (net::Config::inline_helper). Unset: daemon mode when no embedded port is
// configured (DVERBS_PORT unset) and the default socket /run/dverbs/uverbs0 exists.
#pragma once

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "daemon/proto.h"

namespace dverbs::daemon {

// The socket directory of the daemon to use, or "" for the embedded HCA.
// Context: process context (reads the environment and stats one path).
inline std::string daemon_dir() {
  if (const char* d = std::getenv("DVERBS_DAEMON"); d && *d)
    return std::strcmp(d, "off") == 0 || std::strcmp(d, "dverbsd") == 0 ? std::string()
                                                                          : std::string(d);
  if (const char* p = std::getenv("DVERBS_PORT"); p && *p) return {};
  std::string sock = std::string(kDefaultDir) + "/" + kSocketPrefix + "0";
  struct stat st;
  if (::stat(sock.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return kDefaultDir;
  return {};
}

}  // namespace dverbs::daemon
