// Shared memory of dverbsd: the sealed memfds behind every ring, the client's registered
// memory mapped back from the memfds it sends, and the memlock account (uverbs rules).
//
// Rings: the daemon creates the memfd, sizes it and seals it against shrinking, growing
// and further sealing before the client ever sees it, so no client can truncate a ring
// under the daemon (no SIGBUS). Client memory: every piece must be a memfd the client has
// sealed against shrinking (F_SEAL_SHRINK), for the same reason; everything else in the
// request is checked before anything is mapped.
//
// Context: session threads (process context). No locks except Server::mem_mu_.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "daemon/internal.h"

namespace dverbs::daemon {

uint64_t page_size() noexcept {
  static const uint64_t p = uint64_t(::sysconf(_SC_PAGESIZE));
  return p;
}

uint32_t ring_entries(uint32_t at_least) noexcept {
  uint32_t n = 1;
  while (n < at_least && n < (1u << 31)) n <<= 1;
  return n;
}

void Mapping::unmap() noexcept {
  if (base) ::munmap(base, bytes);
  base = nullptr;
  bytes = 0;
}

int make_ring(const char* name, size_t bytes, Mapping* map) {
  const uint64_t pg = page_size();
  bytes = (bytes + pg - 1) & ~(pg - 1);
  int fd = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  int err = 0;
  void* p = MAP_FAILED;
  if (::ftruncate(fd, off_t(bytes)) != 0 ||
      ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    err = errno;
  } else {
    p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) err = errno;
  }
  if (err) {
    ::close(fd);
    return -(err == EINVAL ? ENOMEM : err);
  }
  map->base = p;
  map->bytes = bytes;
  return fd;
}

// Request.reg_mr: the client's range [iova, iova + length) lies in pages starting at
// page_start; the pieces, in order, cover those pages exactly. All arithmetic is checked
// for overflow; nothing is mapped before every field and every fd passed.
int client_span_bytes(const Request& req, uint64_t* bytes) {
  const auto& r = req.reg_mr;
  const uint64_t pg = page_size();
  if (r.length == 0 || r.iova + r.length < r.iova) return EINVAL;
  if (r.page_start != (r.iova & ~(pg - 1))) return EINVAL;
  const uint64_t end = r.iova + r.length;
  if (end > UINT64_MAX - (pg - 1)) return EINVAL;
  const uint64_t span_bytes = ((end + pg - 1) & ~(pg - 1)) - r.page_start;
  if (span_bytes > (uint64_t(1) << 46)) return EINVAL;  // beyond any address space here
  *bytes = span_bytes;
  return 0;
}

int map_client_memory(const Request& req, const int* fds, uint32_t nfds, Mapping* span,
                      void** host) {
  const auto& r = req.reg_mr;
  const uint64_t pg = page_size();
  const uint32_t np = r.npieces;
  if (np < 1 || np > kMaxPieces || np != nfds) return EINVAL;
  uint64_t span_bytes = 0;
  if (int rc = client_span_bytes(req, &span_bytes)) return rc;

  MrPiece pieces[kMaxPieces];
  std::memcpy(pieces, r.pieces, sizeof(MrPiece) * np);
  uint64_t sum = 0;
  for (uint32_t i = 0; i < np; i++) {
    const uint64_t off = pieces[i].offset, len = pieces[i].length;
    if (len == 0 || (off | len) & (pg - 1)) return EINVAL;
    if (off + len < off || off + len > uint64_t(INT64_MAX)) return EINVAL;
    if (sum + len < sum) return EINVAL;
    sum += len;
    // A memfd sealed against shrinking: it can never become shorter than it is now.
    int seals = ::fcntl(fds[i], F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) return EINVAL;
    struct stat st;
    if (::fstat(fds[i], &st) != 0 || !S_ISREG(st.st_mode)) return EINVAL;
    if (uint64_t(st.st_size) < off + len) return EINVAL;
  }
  if (sum != span_bytes) return EINVAL;

  void* base =
      ::mmap(nullptr, span_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return ENOMEM;
  uint64_t pos = 0;
  for (uint32_t i = 0; i < np; i++) {
    void* want = static_cast<char*>(base) + pos;
    void* p = ::mmap(want, pieces[i].length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fds[i],
                     off_t(pieces[i].offset));
    if (p == MAP_FAILED) {
      int err = errno;
      ::munmap(base, span_bytes);
      return err == ENOMEM ? ENOMEM : EINVAL;  // e.g. EPERM: sealed against writing
    }
    pos += pieces[i].length;
  }
  // user_verbs.txt: memory that is a potential I/O target is kept resident. The memfd's
  // pages are shared with the client; locking the daemon's mapping keeps them in RAM (and
  // out of swap) until the region is deregistered. The client's RLIMIT_MEMLOCK account is
  // charged separately (charge_pinned); the daemon itself needs CAP_IPC_LOCK or a large
  // enough limit of its own (the systemd unit sets LimitMEMLOCK=infinity).
  if (::mlock(base, span_bytes) != 0) {
    int err = errno;
    std::fprintf(stderr,
                 "dverbsd: cannot lock %" PRIu64 " bytes of client memory resident: %s (give "
                 "dverbsd CAP_IPC_LOCK or LimitMEMLOCK=infinity)\n",
                 span_bytes, std::strerror(err));
    ::munmap(base, span_bytes);
    return ENOMEM;
  }
  span->base = base;
  span->bytes = span_bytes;
  *host = static_cast<char*>(base) + (r.iova - r.page_start);
  return 0;
}

// Capability `cap` in the effective set of `pid`, read now (uverbs reads CAP_IPC_LOCK at
// each registration too). False for an unknown pid (0: not in our pid namespace).
bool client_has_cap(pid_t pid, int cap) {
  if (pid <= 0) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/status", int(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return false;
  char line[256];
  bool has = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long v;
    if (std::sscanf(line, "CapEff: %llx", &v) == 1) {
      has = (v >> cap) & 1;
      break;
    }
  }
  std::fclose(f);
  return has;
}

namespace {

// RLIMIT_MEMLOCK of `pid` (soft limit). prlimit(2) on another user's process needs
// CAP_SYS_RESOURCE, which a confined daemon may lack; /proc/PID/limits says the same.
bool memlock_limit(pid_t pid, uint64_t* out) {
  rlimit lim{};
  if (::prlimit(pid, RLIMIT_MEMLOCK, nullptr, &lim) == 0) {
    *out = lim.rlim_cur == RLIM_INFINITY ? UINT64_MAX : uint64_t(lim.rlim_cur);
    return true;
  }
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/limits", int(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return false;
  char line[256];
  bool found = false;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "Max locked memory", 17) != 0) continue;
    char soft[64];
    if (std::sscanf(line + 17, "%63s", soft) == 1) {
      if (std::strcmp(soft, "unlimited") == 0) {
        *out = UINT64_MAX;
        found = true;
      } else {
        char* end = nullptr;
        errno = 0;
        unsigned long long v = std::strtoull(soft, &end, 10);
        found = errno == 0 && end && *end == 0;
        if (found) *out = v;
      }
    }
    break;
  }
  std::fclose(f);
  return found;
}

}  // namespace

bool Server::Account::empty() const noexcept {
  if (pinned) return false;
  for (uint32_t n : objects)
    if (n) return false;
  return true;
}

int Server::charge_pinned(Conn& c, uint64_t bytes) {
  // Review fix: SO_PEERCRED reports pid 0 for a peer whose pid has no number in the daemon's
  // pid namespace. prlimit(0, …) and /proc/0 would then read the DAEMON's own limit
  // (LimitMEMLOCK=infinity): no limit at all for such clients. Refuse instead.
  if (c.pid <= 0) {
    std::fprintf(stderr, "dverbsd: client with unknown pid: cannot check RLIMIT_MEMLOCK\n");
    return ENOMEM;
  }
  bool limited = !client_has_cap(c.pid, 14);  // CAP_IPC_LOCK
  uint64_t lim = UINT64_MAX;
  if (limited && !memlock_limit(c.pid, &lim)) {
    std::fprintf(stderr, "dverbsd: client pid %d: cannot read RLIMIT_MEMLOCK: %s\n", int(c.pid),
                 std::strerror(errno));
    return ENOMEM;
  }
  const uint64_t max = opts_.limits.max_mr_bytes;
  std::lock_guard<std::mutex> g(mem_mu_);
  Account& a = accounts_[key_of(c)];
  const uint64_t mine = a.pinned;
  int rc = 0;
  if (max != UINT64_MAX && (mine + bytes < mine || mine + bytes > max)) {
    if (once_a_second(&c.limit_log_ns))
      std::fprintf(stderr,
                   "dverbsd: client pid %d: MR bytes limit %" PRIu64 " reached: %" PRIu64
                   " bytes registered, %" PRIu64 " more asked\n",
                   int(c.pid), max, mine, bytes);
    rc = ENOMEM;
  } else if (limited && lim != UINT64_MAX && (mine + bytes < mine || mine + bytes > lim)) {
    if (once_a_second(&c.limit_log_ns))
      std::fprintf(stderr,
                   "dverbsd: client pid %d: RLIMIT_MEMLOCK (%" PRIu64 " bytes) exceeded: %" PRIu64
                   " bytes registered, %" PRIu64 " more asked\n",
                   int(c.pid), lim, mine, bytes);
    rc = ENOMEM;
  }
  if (rc) {
    if (a.empty()) accounts_.erase(key_of(c));
    return rc;
  }
  a.pinned += bytes;
  stats.pinned_bytes.fetch_add(bytes, std::memory_order_relaxed);
  return 0;
}

void Server::uncharge_pinned(Conn& c, uint64_t bytes) noexcept {
  std::lock_guard<std::mutex> g(mem_mu_);
  auto it = accounts_.find(key_of(c));
  if (it != accounts_.end()) {
    Account& a = it->second;
    a.pinned -= bytes < a.pinned ? bytes : a.pinned;
    if (a.empty()) accounts_.erase(it);
  }
  stats.pinned_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

int Server::reserve_object(Conn& c, Kind k) {
  const Limits& l = opts_.limits;
  uint32_t max = 0;
  switch (k) {
    case Kind::pd:
      max = l.max_pd;
      break;
    case Kind::mr:
      max = l.max_mr;
      break;
    case Kind::cq:
      max = l.max_cq;
      break;
    case Kind::qp:
      max = l.max_qp;
      break;
    case Kind::srq:
      max = l.max_srq;
      break;
    case Kind::mw:
      max = l.max_mw;
      break;
    case Kind::xrcd:  // XRC domains count against the PD limit
      max = l.max_pd;
      break;
    default:
      return EINVAL;
  }
  {
    std::lock_guard<std::mutex> g(mem_mu_);
    Account& a = accounts_[key_of(c)];
    if (a.objects[int(k)] < max) {
      a.objects[int(k)]++;
      return 0;
    }
    if (a.empty()) accounts_.erase(key_of(c));
  }
  if (once_a_second(&c.limit_log_ns))
    std::fprintf(stderr, "dverbsd: client pid %d: %s limit %u reached\n", int(c.pid),
                 kind_name(k), max);
  return ENOMEM;
}

bool once_a_second(uint64_t* last_ns) noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t now = uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
  if (*last_ns && now - *last_ns < 1000000000u) return false;
  *last_ns = now;
  return true;
}

void Server::release_object(Conn& c, Kind k) noexcept {
  std::lock_guard<std::mutex> g(mem_mu_);
  auto it = accounts_.find(key_of(c));
  if (it == accounts_.end()) return;
  Account& a = it->second;
  if (a.objects[int(k)]) a.objects[int(k)]--;
  if (a.empty()) accounts_.erase(it);
}

}  // namespace dverbs::daemon
