// The midlayer's consumer API: what an upper layer (lib/verbs, tests, apps) calls.
//
// Devices appear to consumers through clients (struct ib_client): add() runs for every
// registered device, existing and future; remove() runs before a device goes away. The
// object calls below fill the common fields of the midlayer objects, keep use counts
// (so a PD or CQ still referenced cannot be destroyed: EBUSY), and otherwise go straight
// to the driver: the fast-path calls are inline and add no serialisation
// (core_locking.rst, Reentrancy).
//
// Errors: 0 or a positive errno; poll_cq returns a count or a negative errno.
//
// Callbacks (completion, async event, client event) run on midlayer handler threads inside
// a NonSleepingScope: calling a process-context function from one of them is a bug that the
// might_sleep check reports (and destroying the handler's own CQ from it would deadlock).
#pragma once

#include <cerrno>
#include <cstdint>

#include "midlayer/driver.h"
#include "midlayer/might_sleep.h"

namespace dverbs::mid {

struct Client {
  const char* name = nullptr;
  // Runs once per device, in registration order of the clients (FIFO). May sleep.
  void (*add)(Device* dev, Client* client) = nullptr;
  // Runs before the device is unregistered or the client unregistered, in reverse order
  // of the clients (LIFO). The consumer must have freed every resource of the device
  // when it returns. May sleep.
  void (*remove)(Device* dev, Client* client, void* client_data) = nullptr;
  // Optional: async events of every device this client was added to. Must not sleep.
  void (*event)(const Event& event, Client* client, void* client_data) = nullptr;
  void* internal = nullptr;  // midlayer-private
};

// Context: process context, may sleep. add() runs for every registered device before this
// returns. Returns 0 or EINVAL.
int register_client(Client* client);

// Context: process context, may sleep. Fence: calls remove() for every device this client
// was added to; when it returns, no callback of this client runs or will run.
void unregister_client(Client* client);

// Per-(device, client) cookie, as ib_set_client_data. Context: any thread, may take a
// short lock (process context only).
void set_client_data(Device* dev, Client* client, void* data);
void* get_client_data(Device* dev, Client* client);

// Calls each registered driver's probe() once (later calls return the first result).
// Context: process context, may sleep.
int probe_drivers();
// Unregisters every client-visible device of every driver (driver shutdown()).
// Context: process context, may sleep.
void shutdown_drivers();

// Hot-plug: asks the drivers to add a port by DPDK devargs (the first driver that accepts
// it registers a device; clients' add() runs before this returns) or to remove a device
// by name (clients' remove() runs before this returns). 0 or a positive errno; ENOENT if
// no driver knows the device. Context: process context, may sleep.
int add_port(const char* devargs, const char* ip, char* name, size_t name_len);
int remove_port(const char* name);

// Snapshot of registered devices, in registration order; returns how many exist (which may
// exceed `max`). Devices being unregistered are no longer listed. Context: process context.
int list_devices(Device** out, int max);
Device* find_device(const char* name);

// ---- object creation and destruction. Context: process context, may sleep. ----
int alloc_pd(Device* dev, Pd** out);
int dealloc_pd(Pd* pd);  // EBUSY while objects use it
int reg_mr(Pd* pd, void* addr, uint64_t length, uint32_t access, Mr** out);
// Registration at an iova other than the host address (EOPNOTSUPP if the driver has none).
int reg_mr_iova(Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t access, Mr** out);
int dereg_mr(Mr* mr);
// ibv_rereg_mr: the region moves to `pd` (flags & rereg::pd), to the memory at `host` named
// [iova, iova + length) (rereg::translation; host is the address itself outside dverbsd),
// and/or takes `access` (rereg::access); lkey and rkey stay. 0, EINVAL, EBUSY (windows
// bound), ENOMEM, EOPNOTSUPP (the driver cannot); on failure nothing changed.
int rereg_mr(Mr* mr, uint32_t flags, Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t access);
int create_cq(Device* dev, uint32_t cqe, CompHandler comp_handler, EventHandler event_handler,
              void* cq_context, Cq** out);
// EBUSY while QPs use it. Fence: when it returns, the CQ's completion handler does not run
// and will not run.
int destroy_cq(Cq* cq);
// ibv_resize_cq: at least `cqe` entries, the entries present kept; cq->cqe becomes what fits.
// 0, EINVAL (cqe 0, beyond the device's max_cqe, or fewer than the completions present plus
// `held`, completions polled out of it that the caller still counts: DeviceOps::resize_cq),
// ENOMEM, EOPNOTSUPP (the driver cannot). Callers serialise control verbs on one CQ.
int resize_cq(Cq* cq, uint32_t cqe, uint32_t held = 0);
// The driver's qp_backlog/srq_backlog ops (0 when it has none). Context: any thread, never
// sleeps.
void qp_backlog(Qp* qp, uint32_t* send, uint32_t* recv) noexcept;
uint32_t srq_backlog(Srq* srq) noexcept;
int create_qp(Pd* pd, const QpInitAttr* init, Qp** out);
int modify_qp(Qp* qp, const QpAttr* attr, uint32_t attr_mask);
int query_qp(Qp* qp, QpAttr* attr, uint32_t attr_mask, QpInitAttr* init);
// Fence: when it returns, the QP's event handler does not run and will not run.
int destroy_qp(Qp* qp);
int create_srq(Pd* pd, const SrqInitAttr* init, EventHandler handler, void* context, Srq** out);
int modify_srq(Srq* srq, uint32_t max_wr, uint32_t srq_limit, uint32_t mask);
// EBUSY while QPs use it. Fence: when it returns, the SRQ's event handler does not run.
int destroy_srq(Srq* srq);
// Memory windows of type 1 or 2 (EOPNOTSUPP when the driver has none; EINVAL for another
// type). dealloc_mw of a bound window invalidates it.
int alloc_mw(Pd* pd, uint32_t type, Mw** out);
int dealloc_mw(Mw* mw);
// XRC (the XRC annex; EOPNOTSUPP when the driver has none). open_xrcd/close_xrcd as
// DeviceOps (driver.h): fd -1 a private domain, else the one of that file; close fails with
// EBUSY while the last opener's domain has SRQs or QPs. An XRC SRQ is create_srq with
// SrqInitAttr::xrcd and ::cq. create_xrc_recv_qp makes the target QP of a domain (no PD,
// CQs or queues; init->qp_type xrc_recv); open_xrc_qp returns a handle on an existing one
// by number (destroy_qp drops a handle; the driver destroys the QP with its last handle).
int open_xrcd(Device* dev, int fd, int oflags, Xrcd** out);
int close_xrcd(Xrcd* xrcd);
int create_xrc_recv_qp(Xrcd* xrcd, const QpInitAttr* init, Qp** out);
int open_xrc_qp(Xrcd* xrcd, uint32_t qpn, Qp** out);
int query_device(Device* dev, DeviceAttr* attr);
int query_port(Device* dev, uint8_t port_num, PortAttr* attr);
int query_gid(Device* dev, uint8_t port_num, int index, Gid* gid);
// The driver's counters of the device or of one QP (DeviceOps::query_counters): how many
// there are (at most `max` written), or -EOPNOTSUPP when the driver keeps none, or another
// negative errno. Context: process context.
int query_counters(Device* dev, Counter* out, int max);
int query_qp_counters(Qp* qp, Counter* out, int max);
// The driver's resolve_neigh (driver.h); EOPNOTSUPP when it has none.
int resolve_neigh(Device* dev, uint8_t port_num, uint32_t ip, uint8_t mac[6]) noexcept;
// ibv_attach_mcast / ibv_detach_mcast; EOPNOTSUPP when the driver has no multicast.
int attach_mcast(Qp* qp, const Gid* gid);
int detach_mcast(Qp* qp, const Gid* gid);
// ibv_create_flow / ibv_destroy_flow on a raw packet QP; EOPNOTSUPP when the driver has no
// flow steering.
int create_flow(Qp* qp, const FlowRule* rule, uint32_t* id);
int destroy_flow(Qp* qp, uint32_t id);

// ---- Context: any thread, never sleeps. ----
int create_ah(Pd* pd, const AhAttr* attr, Ah** out) noexcept;
int destroy_ah(Ah* ah) noexcept;

// Fast path: a straight call into the driver (core_locking.rst: "The IB midlayer does not
// perform any serialization of function calls").
// Context: any thread, concurrently on one object, never sleeps.
inline int post_send(Qp* qp, SendWr* wr, SendWr** bad_wr) noexcept {
  NonSleepingScope scope("post_send");
  return qp->device->ops->post_send(qp, wr, bad_wr);
}
inline int post_recv(Qp* qp, RecvWr* wr, RecvWr** bad_wr) noexcept {
  NonSleepingScope scope("post_recv");
  return qp->device->ops->post_recv(qp, wr, bad_wr);
}
inline int post_srq_recv(Srq* srq, RecvWr* wr, RecvWr** bad_wr) noexcept {
  NonSleepingScope scope("post_srq_recv");
  if (!srq->device->ops->post_srq_recv) return EOPNOTSUPP;
  return srq->device->ops->post_srq_recv(srq, wr, bad_wr);
}
inline int poll_cq(Cq* cq, int num_entries, Wc* wc) noexcept {
  NonSleepingScope scope("poll_cq");
  return cq->device->ops->poll_cq(cq, num_entries, wc);
}
// poll_cq with each completion's timestamp (DeviceAttr::core_clock_khz ticks) in ts[i];
// -EOPNOTSUPP where the device stamps none. The device's clock now: read_clock.
inline int poll_cq_ts(Cq* cq, int num_entries, Wc* wc, uint64_t* ts) noexcept {
  NonSleepingScope scope("poll_cq");
  if (!cq->device->ops->poll_cq_ts) return -EOPNOTSUPP;
  return cq->device->ops->poll_cq_ts(cq, num_entries, wc, ts);
}
inline int read_clock(Device* dev, uint64_t* raw) noexcept {
  if (!dev->ops->read_clock) return EOPNOTSUPP;
  return dev->ops->read_clock(dev, raw);
}
// Arms the CQ: the next completion (or next solicited one) raises one completion event.
// Also callable from inside the CQ's own completion handler.
inline int req_notify_cq(Cq* cq, bool solicited_only) noexcept {
  NonSleepingScope scope("req_notify_cq");
  return cq->device->ops->req_notify_cq(cq, solicited_only);
}

// Async-event handlers of a device, beyond clients' (ib_register_event_handler).
// Context: process context.
using DeviceEventHandler = void (*)(const Event& event, void* context);
// Returns 0 or EINVAL (no handler, device not registered).
int register_event_handler(Device* dev, DeviceEventHandler handler, void* context);
// Fence: when it returns, the handler does not run and will not run.
void unregister_event_handler(Device* dev, DeviceEventHandler handler, void* context);

// Counters of the event machinery, for tests and telemetry.
struct EventStats {
  uint64_t cq_events_raised;
  uint64_t cq_handlers_run;
  uint64_t async_events_raised;
  uint64_t async_events_delivered;
  uint64_t ring_full_drops;  // events coalesced because a ring was full (never lost: the
                             // CQ stays scheduled)
};
EventStats event_stats() noexcept;

}  // namespace dverbs::mid
