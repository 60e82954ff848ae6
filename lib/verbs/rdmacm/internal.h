// The librdmacm.so.1 drop-in: object layouts and the state shared by its files.
//
// rdma-core's librdmacm turns each rdma_* call into a write on /dev/infiniband/rdma_cm
// (the kernel's ucma); this one turns it into a dvcm_* call (lib/cm/dvcm.h), the
// connection manager linked into dverbs' libibverbs.so.1. Everything else is what
// librdmacm itself does in user space, kept as close to rdma-core 44 (librdmacm/cma.c) as
// the model allows: the devices it opens once per process, the per-event allocation, the
// "destroy waits for every reported event to be acked" rule, the synchronous mode
// (channel NULL), and the QP transitions it makes for the application (INIT at
// rdma_create_qp, RTR and RTS at rdma_accept and when the connect response arrives, ERR on
// disconnect and errors). This library links no part of the HCA: exactly one copy of it
// lives in each process, inside libibverbs.so.1.
//
// Every object an application sees is the rdma-core struct (`rdma_cm_id`,
// `rdma_event_channel`, `rdma_cm_event`) as the first member of a wrapper. Every entry
// point looks the application's pointer up in a process-wide registry of live objects
// first: NULL, stale or forged pointers fail with EINVAL instead of crashing.
//
// Locking (lock order top to bottom):
//   g_lock()   the registry, and the pairing of "an event is popped from dvcm" with "its
//              identifier's delivered count goes up"; dvcm_destroy_id, dvcm_migrate_id and
//              dvcm_leave_multicast run under it too. So an event popped for an identifier
//              keeps it alive until acked, and an identifier destroyed first has its queued
//              events discarded by dvcm before anyone could see them.
//   IdPriv::mu the delivered/completed counts, the multicast list, the condition variable
//              rdma_destroy_id, rdma_migrate_id and rdma_leave_multicast wait on.
//   devices    (device.cc) the device table, opened once.
// No lock is held across a blocking read() of a channel nor across ibv_modify_qp.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>
#include <sys/socket.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "cm/dvcm.h"

namespace dverbs::rdmacm {

// rdma-core's convention: -1 (or the given value) with errno set.
inline int fail(int err) noexcept {
  errno = err;
  return -1;
}
template <class T>
inline T fail(int err, T ret) noexcept {
  errno = err;
  return ret;
}

// ---- devices (device.cc) ----
// One per dverbs device, opened at first use and kept for the process (rdma-core's
// cma_device, without the refcount: contexts and default PDs are never released).
struct Device {
  ibv_context* verbs = nullptr;
  ibv_pd* pd = nullptr;      // the default PD (rdma_create_qp(id, NULL, ...)), lazily
  ibv_xrcd* xrcd = nullptr;  // lazily, for XRC identifiers
  int max_qp_wr = 0;
  uint8_t max_initiator_depth = 0;      // max_qp_init_rd_atom
  uint8_t max_responder_resources = 0;  // max_qp_rd_atom
  char name[64] = {};
};

// Opens every device once (ibv_get_device_list + ibv_open_device). 0 or ENODEV/ENOMEM.
// Context: process context, may sleep (the first call waits for the ports' links).
int init_devices() noexcept;
// The device ibv_get_device_name calls `name`, with its default PD allocated; nullptr
// (errno set) when there is none.
Device* attach_device(const char* name) noexcept;
ibv_xrcd* device_xrcd(Device* d) noexcept;
// The smallest max_qp_wr over the devices (rdma-core's ucma_max_qpsize), 0 if none.
int max_qp_size() noexcept;

// ---- channels, identifiers, events (id.cc) ----
struct Channel {
  rdma_event_channel ch;  // first: the application's pointer
  dvcm_channel* dv = nullptr;
};

struct IdPriv;

struct Multicast {
  Multicast* next = nullptr;
  IdPriv* owner = nullptr;
  void* context = nullptr;
  sockaddr_storage addr{};
  socklen_t addrlen = 0;
  uint16_t join_flags = 0;
  ibv_gid mgid{};
  bool attached = false;  // ibv_attach_mcast done on owner->id.qp
  int delivered = 0;      // under owner->mu
  int completed = 0;
  std::condition_variable cv;
};

struct IdPriv {
  rdma_cm_id id{};  // first: the application's pointer
  dvcm_id* dv = nullptr;  // under g_lock once handed out; nullptr once destroyed
  Device* dev = nullptr;  // once dvcm_query reports a device
  bool sync = false;      // created with channel NULL: id.channel is private to it

  // A connection request not accepted nor rejected yet hangs off its listener (under
  // g_lock); it outlives the listener (the link is cut when the listener goes).
  IdPriv* listener = nullptr;
  IdPriv* pending = nullptr;  // listener: the first such request
  IdPriv* pending_next = nullptr;

  std::mutex mu;
  std::condition_variable cv;
  int delivered = 0;  // events rdma_get_cm_event returned for it (under mu)
  int completed = 0;  // events acked (under mu)
  Multicast* mc_list = nullptr;

  // Connection state librdmacm keeps (rdma-core's cma_id_private).
  uint32_t psn = 0;         // our starting send PSN (24 bits), advertised in REQ/REP
  bool negotiated = false;  // dvcm_qp_params describes a connection (REQ or REP seen)
  uint8_t initiator_depth = 0;
  uint8_t responder_resources = 0;
  bool active = false;         // rdma_connect was called
  bool connect_error = false;  // the connect response could not be completed
  bool qp_connected = false;   // we moved id.qp to RTR/RTS for this connection
  bool est_reported = false;   // ESTABLISHED or CONNECT_RESPONSE handed out (active side)
  void* connect = nullptr;     // private data rdma_create_ep took from rdma_addrinfo
  size_t connect_len = 0;
  ibv_qp_init_attr* qp_init_attr = nullptr;  // passive rdma_create_ep
  ibv_ece local_ece{};
  ibv_ece remote_ece{};
};

// What rdma_get_cm_event hands out; rdma_ack_cm_event frees it.
struct Event {
  rdma_cm_event event{};  // first: the application's pointer
  uint8_t private_data[DVCM_MAX_PRIVATE_DATA];
  IdPriv* owner = nullptr;  // whose completed count the ack raises
  Multicast* mc = nullptr;
  IdPriv* child = nullptr;  // CONNECT_REQUEST: the new identifier
  dvcm_event dv;            // as popped
};

std::mutex& g_lock();
enum class Kind : uint8_t { channel, id, event };
// Registry of live objects (under g_lock). register_object returns false on ENOMEM.
bool register_object(const void* p, Kind k) noexcept;
void unregister_object(const void* p) noexcept;
bool registered(const void* p, Kind k) noexcept;

// The live wrapper behind an application pointer, or nullptr (errno EINVAL). lookup_id
// also refuses an identifier dvcm destroyed (a request whose listener is gone);
// lookup_any (the destroy calls) accepts it.
IdPriv* lookup_id(rdma_cm_id* id) noexcept;
IdPriv* lookup_any(rdma_cm_id* id) noexcept;
Channel* lookup_channel(rdma_event_channel* ch) noexcept;

// rdma-core's rdma_create_id2: channel NULL makes a synchronous identifier. 0 or -1/errno.
int create_id(rdma_event_channel* channel, rdma_cm_id** out, void* context, int ps,
              ibv_qp_type qp_type) noexcept;
// The identifier of a CONNECT_REQUEST: wraps the dvcm_id dvcm created (caller holds
// g_lock), or nullptr (ENOMEM). drop_request_id (g_lock not held) rejects and frees it.
// setup_request_id (g_lock not held) gives it its private channel under a synchronous
// listener and its route: 0 or an errno.
IdPriv* adopt_request_id(IdPriv* listen, dvcm_id* dv) noexcept;
void drop_request_id(IdPriv* p) noexcept;
int setup_request_id(IdPriv* p) noexcept;
// The request was accepted or rejected: it no longer dies with its listener (g_lock held).
void unlink_pending(IdPriv* p) noexcept;

// rdma-core's ucma_complete: for a synchronous identifier, acks the previous event and
// waits for the next one on its private channel; 0, or -1 with errno from the event's
// status (ECONNREFUSED for REJECTED). 0 at once for an asynchronous identifier.
int complete_sync(IdPriv* p) noexcept;

// Refreshes id.route.addr, id.verbs/pd/port_num and the GIDs from dvcm_query (the device
// once known). `path_rec`: also fill route.path_rec (one path). 0 or an errno.
int query_route(IdPriv* p, bool path_rec) noexcept;

// An application's channel wrapper (it was looked up before).
inline Channel* channel_of(rdma_event_channel* ch) noexcept {
  return reinterpret_cast<Channel*>(ch);
}

// ---- QP transitions (qp.cc) ----
// The attributes for moving the identifier's QP to attr->qp_state (rdma_init_qp_attr):
// 0 or an errno.
int init_qp_attr(IdPriv* p, ibv_qp_attr* attr, int* mask) noexcept;
// ucma_modify_qp_rtr / _rts / _err: no-ops without id.qp. 0 or an errno.
int modify_qp_rtr(IdPriv* p, uint8_t responder_resources) noexcept;
int modify_qp_rts(IdPriv* p, uint8_t initiator_depth) noexcept;
int modify_qp_err(IdPriv* p) noexcept;

// ---- addresses (addr.cc) ----
// sizeof the sockaddr for AF_INET / AF_INET6, 0 for anything else (and NULL).
socklen_t addr_len(const sockaddr* a) noexcept;
uint16_t addr_port_be(const sockaddr* a) noexcept;

// A random starting PSN (24 bits).
uint32_t random_psn() noexcept;

}  // namespace dverbs::rdmacm
