// A client of DPDK's telemetry socket (v2), for the /dverbs/... endpoints of a running
// dverbs process (lib/pmd/hca/stats.cc): dverbs-stat and `dverbsd --stat` use it.
//
// The socket is DPDK's runtime directory's dpdk_telemetry.v2: /var/run/dpdk/dverbs-PID/ for
// root, $XDG_RUNTIME_DIR/dpdk/dverbs-PID/ (or /tmp/dpdk/...) for other users; the process
// must run with DVERBS_TELEMETRY=on. Replies are JSON; Json is just enough of it for them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dverbs::stat {

struct Json {
  enum class Kind { null, number, string, array, object } kind = Kind::null;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;  // in the order received

  const Json* get(const std::string& key) const;
  uint64_t u64() const { return kind == Kind::number ? uint64_t(number) : 0; }
  std::string dump() const;  // back to JSON
};

// Parses `text`; false (with *err) when it is not JSON.
bool parse_json(const std::string& text, Json* out, std::string* err);

class TelemetryClient {
 public:
  ~TelemetryClient();
  // Connects to `socket_path`; false with *err (e.g. nobody listens: a crashed process).
  bool connect(const std::string& socket_path, std::string* err);
  // Sends `command` ("/dverbs/port,dverbs0") and returns the reply's value for the command
  // (the reply is {"/dverbs/port": VALUE}); false with *err.
  bool call(const std::string& command, Json* value, std::string* err);

 private:
  int fd_ = -1;
};

// The telemetry sockets of running dverbs processes (every dverbs-PID runtime directory
// this user can see), as (pid, path), sorted by pid. The directory of a process that no
// longer exists (killed before its exit handler removed it) is removed on the way.
std::vector<std::pair<pid_t, std::string>> find_sockets();
// The socket of process `pid`, or "" when it has none.
std::string socket_of(pid_t pid);
// The pid of the process listening on the unix socket `path` (a dverbsd's DIR/uverbs0),
// from the connection's peer credentials; false with *err.
bool listener_pid(const std::string& path, pid_t* pid, std::string* err);

}  // namespace dverbs::stat
