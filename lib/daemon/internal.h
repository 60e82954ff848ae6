// dverbsd internals shared by server.cc (start-up, sockets, accounting), session.cc (one
// thread per connection: the command path), memory.cc (memfd rings, client memory) and
// doorbell.cc (the fast path).
//
// Threads:
//  - main: accept loop (poll on the listening sockets and a signalfd), reaps sessions.
//  - one session thread per connection: commands, the relay of event kicks to the client's
//    eventfd, and the connection's cleanup. It alone edits its connection's handle table.
//  - the doorbell thread: WQEs from shared rings to the HCA, completions back, CQ arms.
//  - midlayer handler threads: completion and async-event callbacks (never sleep).
//
// Locking and lifetime:
//  - HandleTable: written by the owning session thread only; read lock-free by the doorbell
//    (atomic tag compare). An object reachable by the doorbell (by handle, or as a QP/SRQ/CQ
//    of the doorbell's set) is freed only after it was unpublished and synchronize() saw the
//    doorbell finish the pass it might have been in (epoch: odd while inside a pass).
//  - The doorbell's set: a copy-on-write DbSet published with an atomic pointer; edits are
//    serialised by Server::db_mu_ and each is followed by synchronize() before the old copy
//    (and any object removed) is freed.
//  - Conn::ev_lock: a spinlock around the event ring (doorbell and handler threads append).
//    Handler threads never write the client's eventfd: they write the connection's private
//    `notify_fd` and its session thread relays the kick (a client controls the blocking
//    mode and the counter of its eventfd; only its own session may ever stall on it).
//  - DevCtx::conns_lock: a spinlock around the device's list of connections (device async
//    events walk it from handler threads).
//  - Server::mem_mu_: pinned bytes per client pid (control path only).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/spinlock.h"
#include "daemon/server.h"
#include "midlayer/core.h"
#include "uapi/dverbsd/proto.h"

namespace dverbs::daemon {

using base::cpu_relax;
using base::SpinLock;

enum class Kind : uint8_t { none = 0, pd, mr, cq, qp, srq, ah, mw, xrcd };
constexpr int kKinds = 16;  // a power of two above the largest Kind
const char* kind_name(Kind k) noexcept;  // "PD", "MR", ...

// A MAP_SHARED mapping of a memfd (rings) or a reserved span (client memory).
struct Mapping {
  void* base = nullptr;
  size_t bytes = 0;
  void unmap() noexcept;
};

struct Conn;

struct PdObj {
  mid::Pd* pd = nullptr;
};
struct MrObj {
  mid::Mr* mr = nullptr;
  Mapping span;      // the client's pieces mapped back to back
  uint64_t charged;  // bytes charged against the client's memlock account
};
struct MwObj {
  mid::Mw* mw = nullptr;
};
// An XRC domain handle (xrc.cc): every open_xrcd is one reference on the HCA's domain.
struct XrcdObj {
  mid::Xrcd* xrcd = nullptr;
};

struct CqObj {
  Conn* conn = nullptr;
  Handle handle = 0;
  mid::Cq* cq = nullptr;
  Mapping map;
  CqRingHeader* hdr = nullptr;
  ShmCqe* ring = nullptr;
  uint32_t n = 0;  // ring entries (power of two)
  // Doorbell thread only: `prod` counts what is written into the ring, `published` what
  // hdr->prod says (publish_cq, after the work rings' freed indices: a client that polls a
  // completion finds its WQE's slot free).
  uint32_t prod = 0;
  uint32_t published = 0;
  uint32_t arm_seen = 0;
  bool arm_applied = false;  // pass_cq applied an arm: publish_cq raises if due
  uint32_t arm_cons = 0;
  bool error_staged = false;  // complete_error wrote an error completion
  // Set when the doorbell applies an arm, cleared by whoever raises the event.
  std::atomic<bool> armed{false};
  // Set by the first overrun, the HCA's or the doorbell's: one IBV_EVENT_CQ_ERR per CQ.
  // The doorbell copies it into hdr->overflow (hdr changes under a resize).
  std::atomic<bool> overrun{false};
  // Set by resize_cq (session thread) before it synchronize()s with the doorbell: the
  // doorbell then leaves map/hdr/ring/n/prod alone until it is cleared (release).
  std::atomic<bool> resizing{false};
};

struct SrqObj {
  Conn* conn = nullptr;
  Handle handle = 0;
  mid::Srq* srq = nullptr;
  Mapping map;
  WorkRingHeader* hdr = nullptr;
  ShmRecvWqe* ring = nullptr;
  uint32_t n = 0;
  uint32_t max_wr = 0, max_sge = 0, srq_limit = 0;
  uint32_t cons = 0;   // doorbell only: read so far
  uint32_t freed = 0;  // doorbell only: published as hdr->cons (see pass_srq)
};

struct QpObj {
  Conn* conn = nullptr;
  Handle handle = 0;
  mid::Qp* qp = nullptr;
  QpType type = QpType::rc;
  QpCap cap{};  // granted
  uint32_t qp_num = 0;
  CqObj* scq = nullptr;
  CqObj* rcq = nullptr;
  SrqObj* srq = nullptr;
  Mapping map;
  WorkRingHeader* sq = nullptr;
  ShmSendWqe* sqe = nullptr;
  uint32_t sq_n = 0;
  WorkRingHeader* rq = nullptr;
  ShmRecvWqe* rqe = nullptr;
  uint32_t rq_n = 0;                  // 0 with an SRQ
  uint32_t sq_cons = 0, rq_cons = 0;  // doorbell only: read so far
  uint32_t sq_freed = 0, rq_freed = 0;  // doorbell only: published as cons (publish_freed)
};

// Per-connection handle table: generation << 20 | index, never 0, never a pointer.
// Writers: the owning session thread. get(): any thread, lock-free.
class HandleTable {
 public:
  static constexpr uint32_t kIndexBits = 20;
  static constexpr uint32_t kChunkBits = 10;
  static constexpr uint32_t kChunk = 1u << kChunkBits;
  static constexpr uint32_t kChunks = 1u << (kIndexBits - kChunkBits);
  static constexpr uint32_t kGenMask = 0xfff;

  HandleTable() = default;
  ~HandleTable();
  HandleTable(const HandleTable&) = delete;
  HandleTable& operator=(const HandleTable&) = delete;

  // Reserves a slot (invisible to get()); 0 when the table is full.
  Handle reserve();
  // Makes a reserved or hidden slot visible as `kind` → `obj`.
  void publish(Handle h, Kind kind, void* obj) noexcept;
  // Hides a visible slot (get() fails from now on); the slot stays reserved.
  void hide(Handle h) noexcept;
  // Frees a reserved or hidden slot; its handle never resolves again (until the 12-bit
  // generation wraps).
  void release(Handle h);
  // Context: any thread, never sleeps. The object of a visible slot of this kind, or null.
  void* get(Handle h, Kind kind) const noexcept;
  // Owner only: the kind and object of a reserved slot (visible or hidden), or none.
  Kind owner_kind(Handle h, void** obj) const noexcept;
  // Owner only: every reserved slot of `kind`.
  void collect(Kind kind, std::vector<Handle>* out) const;

 private:
  struct Slot {
    std::atomic<uint32_t> tag{0};  // gen << 8 | kind while visible, else 0
    std::atomic<void*> obj{nullptr};
    uint32_t gen = 1;
    Kind kind = Kind::none;  // owner's view (kept while hidden)
    bool used = false;
  };
  Slot* slot(Handle h) const noexcept;
  std::atomic<Slot*> chunks_[kChunks] = {};
  uint32_t next_ = 0;
  std::deque<uint32_t> free_;  // FIFO: a freed index is reused as late as possible
};

struct DevCtx;

// The HCA address handles of one connection (proto.h, kAhSlots): the doorbell creates one
// from the address vector of the first UD WQE that names a new client AH id and caches it
// in the id's slot; a newer id in the slot replaces it. mid::create_ah/destroy_ah never
// sleep, so the doorbell may call them. `lock` orders the doorbell against the session's
// dealloc_pd and clean-up, which drop entries.
struct AhSlot {
  uint32_t id = 0;
  Handle pd = 0;
  mid::Ah* ah = nullptr;
};
struct AhCache {
  SpinLock lock;
  std::vector<AhSlot> slots;  // kAhSlots entries from hello on
};

struct Conn {
  Server* srv = nullptr;
  DevCtx* dev = nullptr;
  int fd = -1;
  pid_t pid = 0;
  uint64_t start = 0;  // the client process's start time (/proc/PID/stat), 0 if unknown
  uid_t uid = 0;
  gid_t gid = 0;
  uint64_t limit_log_ns = 0;  // the last "limit reached" line (at most one a second)
  std::thread thread;
  std::atomic<bool> done{false};
  bool hello = false;

  // Events (set up by hello, before the connection joins its device's list).
  int efd = -1;        // the client's eventfd (shared with the client)
  int notify_fd = -1;  // private eventfd: kicks for the session thread to relay
  std::atomic<bool> kick_pending{false};
  Mapping ev_map;
  EventRingHeader* ev_hdr = nullptr;
  ShmEvent* ev = nullptr;
  uint32_t ev_n = 0;
  uint32_t ev_prod = 0;  // under ev_lock
  SpinLock ev_lock;

  Conn* dev_prev = nullptr;  // DevCtx::conns, under conns_lock
  Conn* dev_next = nullptr;
  bool on_dev_list = false;

  HandleTable table;
  AhCache ahs;
  uint64_t destroyed = 0;
  bool leak = false;  // an object survived cleanup: its handlers may still name this Conn

  ~Conn();
};

struct DevCtx {
  mid::Device* dev = nullptr;
  unsigned index = 0;
  std::string path;
  int listen_fd = -1;
  bool handler_registered = false;
  SpinLock conns_lock;
  Conn* conns = nullptr;
};

// What the doorbell walks; immutable once published.
struct DbSet {
  std::vector<QpObj*> qps;
  std::vector<SrqObj*> srqs;
  std::vector<CqObj*> cqs;
};

struct Counters {
  std::atomic<uint64_t> objects[kKinds] = {};
  std::atomic<uint64_t> clients{0}, pinned_bytes{0}, bad_commands{0}, bad_wqes{0}, corrupt_rings{0},
      wqes_posted{0}, cqes_delivered{0}, events_delivered{0}, events_dropped{0},
      refused_conns{0};
};

// Rate limit for the log lines a client can provoke: true when a second has passed since
// *last_ns (CLOCK_MONOTONIC), which it then updates. Context: any; one writer per last_ns.
bool once_a_second(uint64_t* last_ns) noexcept;

// Destroys the cached AHs of `c` whose PD is `pd` (0: all). Context: process context or the
// doorbell, never sleeps.
void drop_ahs(Conn& c, Counters& st, Handle pd) noexcept;

class Server {
 public:
  explicit Server(const Options& opts);
  ~Server();
  int run();

  // ---- session.cc ----
  void session_main(Conn* c);

  // ---- doorbell.cc ----
  // Context: any thread, never sleeps.
  void raise_event(Conn& c, EventKind kind, EventType type, Handle obj, uint32_t port) noexcept;
  // Context: process context: waits until the doorbell is outside the pass it may be in.
  void synchronize() noexcept;
  // Context: process context. Edits the doorbell's set, publishes it and waits out readers.
  void db_edit(const std::function<void(DbSet&)>& edit);
  // A session ran a command (before its reply is sent). The client acts on the reply by
  // posting to its rings, which the doorbell thread reads: that order passes through the
  // client process and shared memory, where neither the C++ memory model nor
  // ThreadSanitizer sees it. This release, and the acquire at the start of every doorbell
  // pass, make it an edge inside dverbsd (what a command wrote, e.g. a region's or a
  // window's fields, happens before the engines that a posted WR runs read it).
  // Context: session threads, never sleeps.
  void command_done() noexcept { cmd_done_.fetch_add(1, std::memory_order_release); }

  // ---- memory.cc: the client's account (per pid, all its connections together) ----
  // Charges `bytes` of a new registration to the client (memlock rules, --max-mr-bytes).
  int charge_pinned(Conn& c, uint64_t bytes);
  void uncharge_pinned(Conn& c, uint64_t bytes) noexcept;
  // Reserves one object of kind k against the client's --max-* limit: 0, or ENOMEM with
  // one line naming the limit. release_object returns it (failed create, destroy).
  int reserve_object(Conn& c, Kind k);
  void release_object(Conn& c, Kind k) noexcept;

  const Options& opts() const noexcept { return opts_; }
  Counters stats;

 private:
  friend struct ServerAccess;
  int open_socket(DevCtx& d);
  // Binds and listens on `path` with the configured mode and group: the fd, or -1 with a
  // line on stderr.
  int listen_on(const std::string& path);
  void accept_one(DevCtx& d);
  void accept_cm();
  bool over_conn_cap(uid_t uid, pid_t pid);
  void reap(bool all);
  void stop_device(mid::Device* dev);
  void doorbell_main();
  bool pass_sq(QpObj& q) noexcept;
  bool pass_rq(QpObj& q) noexcept;
  bool pass_srq(SrqObj& s) noexcept;
  bool pass_freed(QpObj& q) noexcept;
  bool pass_freed(SrqObj& s) noexcept;
  bool pass_cq(CqObj& c) noexcept;
  void cq_overrun(CqObj& c) noexcept;
  void publish_cq(CqObj& c) noexcept;
  bool complete_error(CqObj& c, uint64_t wr_id, WcOpcode op, uint32_t qp_num) noexcept;

  static void client_add(mid::Device* dev, mid::Client* client);
  static void client_remove(mid::Device* dev, mid::Client* client, void* data);
  static void device_event(const mid::Event& ev, void* context);

  Options opts_;
  mid::Client client_{};
  std::vector<DevCtx*> devs_;  // control path (main thread, client callbacks)
  std::mutex conns_mu_;
  std::vector<Conn*> conns_;  // live sessions

  // The CM socket (DIR/rdma_cm) and its connections, one thread each (cm_session.cc).
  struct CmConn {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  int cm_fd_ = -1;
  std::string cm_path_;
  std::vector<CmConn*> cm_conns_;  // main thread only
  void reap_cm(bool all);

  // Doorbell.
  std::thread db_thread_;
  std::atomic<bool> db_stop_{false};
  std::atomic<uint64_t> db_epoch_{0};
  std::atomic<uint64_t> cmd_done_{0};  // command_done(); acquired by each doorbell pass
  std::atomic<const DbSet*> db_snap_{nullptr};
  std::mutex db_mu_;
  DbSet db_master_;

  // Accounts by client process (uverbs charges the process, not the context): pinned
  // bytes and objects. Keyed by pid and the process's start time, so a connection that
  // outlives its process (a child kept the fd) never charges a later process that got
  // the same pid. An account goes when it is back to zero.
  struct Account {
    uint64_t pinned = 0;
    uint32_t objects[kKinds] = {};
    bool empty() const noexcept;
  };
  using AccountKey = std::pair<pid_t, uint64_t>;
  static AccountKey key_of(const Conn& c) noexcept { return {c.pid, c.start}; }
  std::mutex mem_mu_;
  std::map<AccountKey, Account> accounts_;
  uint64_t refused_log_ns_ = 0;  // main thread: the last "too many connections" line
};

// ---- memory.cc ----
// Creates a sealed memfd of `bytes` (rounded up to pages), maps it; returns the fd or
// -errno.
int make_ring(const char* name, size_t bytes, Mapping* map);
// The page-rounded span of a reg_mr request (what it will map, mlock and charge), after
// the range checks; EINVAL when the request's range is impossible.
int client_span_bytes(const Request& req, uint64_t* bytes);
// Validates a reg_mr request and its memfds and maps them; see memory.cc.
int map_client_memory(const Request& req, const int* fds, uint32_t nfds, Mapping* span,
                      void** host);
// Capability `cap` (CAP_*) in the effective set of client process `pid` (/proc/PID/status
// now; the pid comes from SO_PEERCRED, which the client cannot forge); false when unknown.
bool client_has_cap(pid_t pid, int cap);
uint32_t ring_entries(uint32_t at_least) noexcept;  // power of two >= max(1, at_least)

// ---- resize_cq.cc ----
// Cmd::resize_cq for connection `c`: 0 and the new ring's memfd in *fd_out (the caller
// sends and closes it), or a positive errno with nothing changed.
int resize_cq(Server& srv, Conn& c, const Request& req, Response& resp, int* fd_out);

// ---- rereg.cc ----
// Cmd::rereg_mr for connection `c` with the `nfds` memfds it sent (not closed here): 0 or
// a positive errno; on failure the region is unchanged.
int rereg_mr(Server& srv, Conn& c, const Request& req, const int* fds, uint32_t nfds,
             Response& resp);
uint64_t page_size() noexcept;

}  // namespace dverbs::daemon
