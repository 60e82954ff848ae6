// Registers `dverbs-remote`. It claims the process in daemon mode (daemon_dir() below;
// the midlayer then does not probe the embedded HCA, Driver::claims), and probe() opens
// every dverbsd socket DIR/uverbs0, uverbs1, … (the analogue of /dev/infiniband/uverbsN),
// says hello (receiving the connection's eventfd and event ring), and registers one
// midlayer device per socket, named as the daemon names it.
//
// Errors are for people: a socket this user may not open prints one line naming the
// group that may; any other failure one line with the path and the reason. When
// DVERBS_DAEMON was set explicitly and no device could be opened, probe() fails with that
// errno so programs fail clearly instead of seeing an empty device list silently.
//
// Locking: g_lock (checked mutex) guards the device list; it is never held while the
// midlayer calls clients (register/unregister run outside it).
#include <grp.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "midlayer/core.h"
#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

namespace {

// Embedded or daemon mode: which soft HCA the process uses (docs/ARCHITECTURE.md, daemon
// mode). DVERBS_DAEMON=DIR selects the daemon serving sockets DIR/uverbsN; DVERBS_DAEMON=off
// forces the embedded HCA. dverbsd runs with DVERBS_DAEMON=dverbsd: embedded, and the HCA's
// inline-progress helper is left to its doorbell thread (net::Config::inline_helper). Unset:
// daemon mode when no embedded port is configured (DVERBS_PORT unset) and the default
// socket /run/dverbs/uverbs0 exists. Returns the socket directory, or "" for embedded.
// Context: process context (reads the environment and stats one path).
std::string daemon_dir() {
  if (const char* d = std::getenv("DVERBS_DAEMON"); d && *d)
    return std::strcmp(d, "off") == 0 || std::strcmp(d, "dverbsd") == 0 ? std::string()
                                                                          : std::string(d);
  if (const char* p = std::getenv("DVERBS_PORT"); p && *p) return {};
  std::string sock = std::string(daemon::kDefaultDir) + "/" + daemon::kSocketPrefix + "0";
  struct stat st;
  if (::stat(sock.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return daemon::kDefaultDir;
  return {};
}

bool claims() { return !daemon_dir().empty(); }

mid::Mutex g_lock;
// Guarded by g_lock. Never destroyed: at exit the event threads may still run (nothing
// calls shutdown_drivers()), and the kernel closes the sockets, which is all the daemon
// needs to clean up.
std::vector<std::unique_ptr<Device>>& g_devices = *new std::vector<std::unique_ptr<Device>>;

constexpr int kMaxSockets = 64;

std::string group_of(const std::string& path, const std::string& dir) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 && ::stat(dir.c_str(), &st) != 0) return "?";
  if (group* g = ::getgrgid(st.st_gid)) return g->gr_name;
  return std::to_string(st.st_gid);
}

// Hello: the connection's eventfd and event ring. Fills the device's name and event state.
int hello(Device& dev) {
  daemon::Request req;
  std::memset(static_cast<void*>(&req), 0, sizeof req);
  req.cmd = daemon::Cmd::hello;
  req.hello.version = daemon::kVersion;
  daemon::Response resp;
  int fds[kMaxRecvFds];
  int nfds = 0;
  if (int rc = dev.command(req, &resp, nullptr, 0, fds, &nfds)) return rc;
  const auto& h = resp.hello;
  int rc = 0;
  if (nfds < 2)
    rc = EPROTO;
  else if (h.version != daemon::kVersion)
    rc = EPROTONOSUPPORT;
  else if (!h.event_ring_entries || (h.event_ring_entries & (h.event_ring_entries - 1)) ||
           h.event_ring_bytes < daemon::kRingHeaderBytes +
                                    uint64_t(h.event_ring_entries) * sizeof(daemon::ShmEvent))
    rc = EPROTO;
  for (int i = 2; i < nfds; i++) ::close(fds[i]);
  if (rc) {
    for (int i = 0; i < nfds && i < 2; i++) ::close(fds[i]);
    return rc;
  }
  dev.event_fd = fds[0];
  if ((rc = dev.event_map.map(fds[1], h.event_ring_bytes))) return rc;
  auto* base = static_cast<uint8_t*>(dev.event_map.base);
  dev.event_hdr = reinterpret_cast<daemon::EventRingHeader*>(base);
  dev.events = reinterpret_cast<daemon::ShmEvent*>(base + daemon::kRingHeaderBytes);
  dev.event_entries = h.event_ring_entries;
  dev.event_cons = dev.event_hdr->cons.v.load(std::memory_order_relaxed);
  dev.node_guid = h.node_guid;
  static_assert(sizeof dev.name == sizeof h.device_name);
  std::memcpy(dev.name, h.device_name, sizeof dev.name);
  dev.name[sizeof dev.name - 1] = '\0';
  if (!dev.name[0]) return EPROTO;
  return 0;
}

// Opens DIR/uverbsN and registers its device. Returns 0, ENOENT when the socket does not
// exist (the end of the list), or the errno of a failure it has reported on stderr.
int open_one(const std::string& dir, int index) {
  auto dev = std::make_unique<Device>();
  dev->path = dir + "/" + daemon::kSocketPrefix + std::to_string(index);
  dev->ops = &kRemoteOps;
  dev->pins_memory = true;  // dverbsd charges registered memory to our RLIMIT_MEMLOCK
  dev->ahs = std::make_unique<Ah[]>(daemon::kAhSlots);
  dev->ah_free.reserve(daemon::kAhSlots);
  for (uint32_t i = daemon::kAhSlots; i-- > 0;) dev->ah_free.push_back(i);
  if (int rc = dev->conn.connect_to(dev->path)) {
    if (rc == ENOENT && index > 0) return ENOENT;
    if (rc == EACCES)
      std::fprintf(stderr,
                   "dverbs: cannot open %s: permission denied (the socket belongs to group %s; "
                   "ask to be added to it)\n",
                   dev->path.c_str(), group_of(dev->path, dir).c_str());
    else if (rc == ENOENT)
      std::fprintf(stderr, "dverbs: cannot open %s: %s (is dverbsd running?)\n",
                   dev->path.c_str(), std::strerror(rc));
    else
      std::fprintf(stderr, "dverbs: cannot open %s: %s\n", dev->path.c_str(),
                   std::strerror(rc));
    return rc;
  }
  int rc = hello(*dev);
  DeviceAttr attr;
  if (rc == 0) rc = kRemoteOps.query_device(dev.get(), &attr);
  if (rc == 0) dev->phys_port_cnt = attr.phys_port_cnt ? attr.phys_port_cnt : 1;
  if (rc == ECONNREFUSED) {
    std::fprintf(stderr,
                 "dverbs: cannot open %s: dverbsd refused the connection: this user has as many "
                 "connections open as the daemon allows (dverbsd --max-conns)\n",
                 dev->path.c_str());
    return EMFILE;
  }
  if (rc) {
    std::fprintf(stderr, "dverbs: %s: the daemon's greeting failed: %s\n", dev->path.c_str(),
                 std::strerror(rc));
    return rc;
  }
  Device* raw = dev.get();
  {
    std::lock_guard<mid::Mutex> g(g_lock);
    g_devices.push_back(std::move(dev));
  }
  if ((rc = mid::register_device(raw)) == 0) rc = start_events(raw);
  if (rc) {
    std::fprintf(stderr, "dverbs: %s: cannot register device %s: %s\n", raw->path.c_str(),
                 raw->name, std::strerror(rc));
    if (raw->reg) mid::unregister_device(raw);
    std::lock_guard<mid::Mutex> g(g_lock);
    std::erase_if(g_devices, [&](auto& d) { return d.get() == raw; });
    return rc;
  }
  return 0;
}

// fork(): the child inherits the parent's sockets and the re-backed pages. Like a uverbs
// context, the parent's devices are unusable in the child: their connections are dropped
// (verbs return EIO, the parent's conversation with the daemon is left alone), and the
// re-backed pages become private copies so the child never writes into the parent's
// memory. Runs in the single-threaded child; g_lock may have been held by another thread
// at fork, so the list is read without it.
void atfork_child() {
  for (auto& d : g_devices) d->conn.drop_in_child();
  mem_private_after_fork();
}

int probe() {
  const std::string dir = daemon_dir();
  if (dir.empty()) return 0;  // embedded mode (claims() said so): the hca driver serves it
  ::pthread_atfork(nullptr, nullptr, atfork_child);
  const char* env = std::getenv("DVERBS_DAEMON");
  const bool explicit_dir = env && *env;
  int first_err = 0;
  int opened = 0;
  for (int i = 0; i < kMaxSockets; i++) {
    int rc = open_one(dir, i);
    if (rc == ENOENT && i > 0) break;
    if (rc == 0)
      opened++;
    else if (first_err == 0)
      first_err = rc;
    if (rc == ENOENT) break;  // no uverbs0
  }
  return opened == 0 && explicit_dir ? first_err : 0;
}

void shutdown() {
  for (;;) {
    std::unique_ptr<Device> dev;
    {
      std::lock_guard<mid::Mutex> g(g_lock);
      if (g_devices.empty()) break;
      dev = std::move(g_devices.back());
      g_devices.pop_back();
    }
    // The event thread stops first: after unregister_device no event may reach a
    // consumer. Closing the socket (~Device) makes the daemon free what is left.
    stop_events(dev.get());
    mid::unregister_device(dev.get());
  }
}

const mid::Driver kDriver = {"dverbs-remote", probe, shutdown, nullptr, nullptr, claims};

}  // namespace

DVERBS_REGISTER_DRIVER(kDriver)

}  // namespace dverbs::pmd::remote
