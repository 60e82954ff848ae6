// The remote driver `dverbs-remote`: the client half of daemon mode (issue 8). Each
// dverbsd socket DIR/uverbsN becomes one midlayer device; every verb is either a command
// on the socket (slow path, conn.h) or a ring operation in memory shared with the daemon
// (fast path, post.cc). Because it is a midlayer driver, the libibverbs drop-in, the C++
// API and every tool get daemon mode unchanged.
//
// Objects embed their midlayer object as first base (as the hca driver's do) and keep the
// daemon's handle; pointers never cross the socket.
//
// Thread safety and invariants:
//  - Device::conn serialises commands (conn.h).
//  - Device::obj_lock guards the handle → CQ/QP/SRQ maps. The event thread holds it while
//    it calls mid::cq_comp_event / mid::dispatch_event; destroy_cq/qp/srq erase the handle
//    under it before the destroy command, so no event reaches a freed object.
//  - Ring state (the local producer index of a work ring, the consumer index of a CQ) is
//    under the ring's spinlock; the shared indices are atomics in the memfd, written by
//    exactly one side each (proto.h).
//  - Qp::state mirrors the state the client set with modify_qp (the daemon may move the
//    QP to ERR on its own; posting is allowed there, so the mirror stays conservative).
#pragma once

#include <atomic>
#include <memory>
#include <cstdint>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/spinlock.h"
#include "midlayer/driver.h"
#include "midlayer/might_sleep.h"
#include "pmd/remote/conn.h"
#include "uapi/dverbsd/proto.h"

namespace dverbs::pmd::remote {

using base::SpinLock;
using daemon::Handle;

// A shared-memory mapping of a ring memfd. Context: process context.
struct Mapping {
  void* base = nullptr;
  size_t bytes = 0;
  // mmaps `fd` (read/write, shared) after checking its size; closes fd in all cases.
  int map(int fd, uint64_t bytes);
  void unmap() noexcept;
};

struct Ah;

struct Device : mid::Device {
  std::string path;  // DIR/uverbsN
  Conn conn;
  uint64_t node_guid = 0;

  // Device and port attributes, cached by the first successful query (they do not change
  // while the daemon runs). Guarded by attr_lock.
  mid::Mutex attr_lock;
  bool have_attr = false;
  DeviceAttr attr{};

  // The connection's event ring and eventfd (hello), read by the event thread only.
  Mapping event_map;
  daemon::EventRingHeader* event_hdr = nullptr;
  daemon::ShmEvent* events = nullptr;
  uint32_t event_entries = 0;
  uint32_t event_cons = 0;  // event thread only
  int event_fd = -1;
  int stop_fd = -1;  // eventfd: wakes the event thread at shutdown
  std::thread event_thread;

  std::atomic<bool> fatal_raised{false};

  // Address handles: a fixed pool, taken and returned under a spinlock (any context).
  std::unique_ptr<Ah[]> ahs;
  std::vector<uint32_t> ah_free;  // capacity kAhSlots, reserved at creation
  SpinLock ah_lock;

  mid::Mutex obj_lock;
  std::unordered_map<Handle, mid::Cq*> cqs;    // guarded by obj_lock
  std::unordered_map<Handle, mid::Qp*> qps;    // guarded by obj_lock
  std::unordered_map<Handle, mid::Srq*> srqs;  // guarded by obj_lock

  ~Device();

  // Sends one command (see Conn::call); raises IBV_EVENT_DEVICE_FATAL when it finds the
  // daemon gone. Returns the response status, EIO (daemon gone) or EPROTO.
  // Context: process context, may sleep.
  int command(daemon::Request& req, daemon::Response* resp, const int* fds = nullptr,
              int nfds = 0, int* rfds = nullptr, int* nrfds = nullptr);
  // Raises IBV_EVENT_DEVICE_FATAL once. Context: any, never sleeps.
  void raise_fatal() noexcept;
  bool dead() const noexcept { return conn.dead(); }
};

inline Device& rdev(mid::Device* d) noexcept { return *static_cast<Device*>(d); }

struct Pd : mid::Pd {
  Handle handle = 0;
};

struct Segment;  // mem.cc

// What one registration holds of the memfd segments that back it (mem.cc).
struct Backing {
  uint64_t page_start = 0;
  uint32_t npieces = 0;
  daemon::MrPiece pieces[daemon::kMaxPieces];
  int fds[daemon::kMaxPieces];
  Segment* segs[daemon::kMaxPieces];
};

struct Mr : mid::Mr {
  Handle handle = 0;
  Backing backing;
};

struct Mw : mid::Mw {
  Handle handle = 0;
};

// An XRC domain handle (xrc.cc); the daemon's HCA shares the domain by file.
struct Xrcd : mid::Xrcd {
  Handle handle = 0;
};

// A client-side address handle (daemon::kAhSlots): created and destroyed here, with no
// command, so neither sleeps. Slots live as long as the device.
struct Ah : mid::Ah {
  uint32_t id = 0;   // generation << 12 | slot; 0 = free
  uint32_t gen = 0;
  Handle pd_handle = 0;
  AhAttr attr{};
  std::atomic<bool> live{false};
};

// A work ring (SQ, RQ, SRQ) as the client sees it.
struct WorkRing {
  daemon::WorkRingHeader* hdr = nullptr;
  uint8_t* slots = nullptr;
  uint32_t mask = 0;
  uint32_t limit = 0;      // granted work requests: "full" is prod - cons >= limit
  uint32_t slot_size = 0;
  uint32_t prod = 0;       // local copy of hdr->prod, under `lock`
  SpinLock lock;
  template <class T>
  T* slot(uint32_t idx) noexcept {
    return reinterpret_cast<T*>(slots + size_t(idx & mask) * slot_size);
  }
};

struct Cq : mid::Cq {
  Handle handle = 0;
  Mapping map;
  daemon::CqRingHeader* hdr = nullptr;
  daemon::ShmCqe* ring = nullptr;
  uint32_t mask = 0;
  uint32_t cons = 0;  // local copy of hdr->cons, under `lock`
  SpinLock lock;
};

struct Srq : mid::Srq {
  Handle handle = 0;
  Mapping map;
  WorkRing rq;
  uint32_t max_sge = 0;
};

struct Qp : mid::Qp {
  Handle handle = 0;
  Mapping map;
  WorkRing sq;
  WorkRing rq;
  QpCap cap{};                      // granted
  uint32_t ud_mtu = 0;              // UD: the largest message (one packet)
  std::atomic<QpState> state{QpState::reset};  // as set by modify_qp
};

inline Pd* to_pd(mid::Pd* p) noexcept { return static_cast<Pd*>(p); }
inline Mr* to_mr(mid::Mr* p) noexcept { return static_cast<Mr*>(p); }
inline Mw* to_mw(mid::Mw* p) noexcept { return static_cast<Mw*>(p); }
inline Ah* to_ah(mid::Ah* p) noexcept { return static_cast<Ah*>(p); }
inline Cq* to_cq(mid::Cq* p) noexcept { return static_cast<Cq*>(p); }
inline Srq* to_srq(mid::Srq* p) noexcept { return static_cast<Srq*>(p); }
inline Qp* to_qp(mid::Qp* p) noexcept { return static_cast<Qp*>(p); }
inline Xrcd* to_xrcd(mid::Xrcd* p) noexcept { return static_cast<Xrcd*>(p); }

// ---- commands shared by ops.cc and xrc.cc. Context: process context, may sleep. ----
// A zeroed request for `cmd` on `handle`.
daemon::Request make(daemon::Cmd cmd, Handle handle = 0);
// Sends a destroy/dealloc. 0 also when the daemon is gone (it freed everything when the
// socket closed); otherwise the daemon's status (EBUSY…).
int destroy_cmd(Device& dev, daemon::Cmd cmd, Handle h);

// ---- XRC (xrc.cc): DeviceOps, and the XRC_RECV QP handles create_qp makes. An XRC_RECV
// handle has no rings: the QP has no queues. `qpn` nullptr creates the domain's QP,
// else opens QP *qpn. Context: process context, may sleep. ----
int open_xrcd(mid::Device* d, int fd, int oflags, mid::Xrcd** out);
int close_xrcd(mid::Xrcd* x);
int open_xrc_qp(mid::Xrcd* x, uint32_t qpn, mid::Qp** out);
int xrc_recv_qp(mid::Xrcd* x, const uint32_t* qpn, mid::Qp** out);

// ---- registered memory (mem.cc). Context: process context, may sleep. ----
// Re-backs the pages of [addr, addr + length) with memfds shared with the daemon and
// describes them in *out (holding a reference on every segment used). 0, EINVAL (a
// MAP_SHARED mapping, bad range), EFAULT (unmapped or unreadable pages), ENOMEM (more than
// kMaxPieces pieces, out of memory or descriptors).
int mem_attach(uint64_t addr, uint64_t length, Backing* out);
// Drops the references taken by mem_attach.
void mem_detach(Backing* b) noexcept;
// In a fork() child: every page this process re-backed becomes private memory with the
// same contents and protection (as the kernel gives a child private copies of pinned
// pages), so the child no longer writes into the parent's memory. Context: the atfork
// child handler (single-threaded).
void mem_private_after_fork() noexcept;

// ---- ibv_rereg_mr (rereg.cc): the DeviceOps rereg_mr op, one Cmd::rereg_mr with the new
// translation's memfds. Context: process context, may sleep. ----
int rereg_mr(mid::Mr* mr, uint32_t flags, mid::Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t access);

// ---- fast path (post.cc). Context: any thread, never sleeps. ----
int post_send(mid::Qp* qp, SendWr* wr, SendWr** bad_wr);
int post_recv(mid::Qp* qp, RecvWr* wr, RecvWr** bad_wr);
int post_srq_recv(mid::Srq* srq, RecvWr* wr, RecvWr** bad_wr);
int poll_cq(mid::Cq* cq, int n, Wc* wc);
int poll_cq_ts(mid::Cq* cq, int n, Wc* wc, uint64_t* ts);
int req_notify_cq(mid::Cq* cq, bool solicited_only);

// The ops table (ops.cc).
extern const mid::DeviceOps kRemoteOps;

// The event thread of a device (events.cc). Context: process context.
int start_events(Device* dev);
void stop_events(Device* dev) noexcept;

// ---- ibv_resize_cq (resize_cq.cc): the DeviceOps resize_cq op, one Cmd::resize_cq and the
// switch to the new ring. Context: process context, may sleep. ----
int resize_cq(mid::Cq* c, uint32_t cqe, uint32_t held);

}  // namespace dverbs::pmd::remote
