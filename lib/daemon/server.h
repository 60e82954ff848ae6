// dverbsd, the daemon that owns the soft HCA's ports and serves them to unprivileged
// processes (issue 8; the user-verbs model of reference/user_verbs.txt): one
// SOCK_SEQPACKET socket per device, DIR/uverbsN, speaking the contract of proto.h.
//
// apps/dverbsd.cc parses the command line and the config file into Options and calls
// run_daemon(); `dverbsd --stat` calls print_stats(). The implementation is split by
// thread: server.cc (start-up, accept loop, shutdown), session.cc (a connection's
// commands), doorbell.cc (the fast path), memory.cc (memfds and memlock accounting).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace dverbs::daemon {

struct Limits {
  // Objects per client (process, by SO_PEERCRED pid: all its connections together), by
  // kind. Address handles are bounded by the client's pool (proto.h, kAhSlots) instead.
  uint32_t max_pd = 4096, max_mr = 4096, max_cq = 4096, max_qp = 4096, max_srq = 4096,
           max_mw = 4096;
  uint64_t max_mr_bytes = UINT64_MAX;  // registered bytes per client
  // Open connections per uid: each costs the daemon a thread, so this bounds what one
  // user can make it hold however many processes it starts.
  uint32_t max_conns = 64;
};

struct Options {
  std::string dir = "/run/dverbs";
  mode_t mode = 0660;
  bool set_group = false;
  gid_t gid = 0;
  std::string group;  // for messages
  Limits limits;
};

class Server;

// Runs the daemon until SIGTERM or SIGINT; returns the process exit code (0 on a clean
// shutdown). The caller must have set DVERBS_DAEMON=off and the DVERBS_* configuration.
// Context: the main thread, before any other thread exists (it blocks SIGTERM/SIGINT for
// every thread it and the drivers start).
int run_daemon(const Options& opts);

// Connects to `socket_path` as a client, sends hello and stats and prints one key=value
// line per Stats field. Returns 0, or 1 with a message on stderr.
int print_stats(const char* socket_path);

}  // namespace dverbs::daemon
