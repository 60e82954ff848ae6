// The midlayer's driver API: what a low-level driver (lib/pmd) implements and calls.
//
// A driver fills a DeviceOps table, embeds mid::Device in its device object and calls
// register_device() once the device is fully initialised (core_locking.rst, Hot-plug).
// The midlayer checks the mandatory ops at registration and never serialises calls into
// the driver: every op must be reentrant.
//
// Error convention: ops return 0 or a positive errno value (as the verbs ABI does);
// poll_cq returns a count >= 0 or a negative errno.
//
// Work-request validation is shared, not per driver: post_send/post_recv call
// check_send_wr/check_recv_wr of midlayer/wr.h.
#pragma once

#include <cstdint>

#include "midlayer/objects.h"
#include "midlayer/wr.h"

namespace dverbs::mid {

struct DeviceOps {
  // --- mandatory (register_device fails with EINVAL if any is missing) ---
  // Context: process context, may sleep (unless noted).
  int (*query_device)(Device* dev, DeviceAttr* attr);
  int (*query_port)(Device* dev, uint8_t port_num, PortAttr* attr);
  int (*query_gid)(Device* dev, uint8_t port_num, int index, Gid* gid);
  int (*alloc_pd)(Device* dev, Pd** out);
  int (*dealloc_pd)(Pd* pd);
  int (*reg_mr)(Pd* pd, void* addr, uint64_t length, uint32_t access, Mr** out);
  int (*dereg_mr)(Mr* mr);
  int (*create_cq)(Device* dev, uint32_t cqe, Cq** out);
  int (*destroy_cq)(Cq* cq);
  int (*create_qp)(Pd* pd, const QpInitAttr* init, Qp** out);
  int (*modify_qp)(Qp* qp, const QpAttr* attr, uint32_t attr_mask);
  int (*query_qp)(Qp* qp, QpAttr* attr, uint32_t attr_mask, QpInitAttr* init);
  int (*destroy_qp)(Qp* qp);
  // Context: any thread, concurrently on one object, never sleeps.
  int (*post_send)(Qp* qp, SendWr* wr, SendWr** bad_wr);
  int (*post_recv)(Qp* qp, RecvWr* wr, RecvWr** bad_wr);
  int (*poll_cq)(Cq* cq, int num_entries, Wc* wc);
  int (*req_notify_cq)(Cq* cq, bool solicited_only);

  // --- optional (nullptr → the consumer call returns EOPNOTSUPP) ---
  // Context: any thread, never sleeps (core_locking.rst lists the AH methods).
  int (*create_ah)(Pd* pd, const AhAttr* attr, Ah** out);
  int (*destroy_ah)(Ah* ah);
  // Context: process context, may sleep.
  int (*create_srq)(Pd* pd, const SrqInitAttr* init, Srq** out);
  int (*modify_srq)(Srq* srq, uint32_t max_wr, uint32_t srq_limit, uint32_t mask);
  int (*destroy_srq)(Srq* srq);
  // Context: any thread, never sleeps.
  int (*post_srq_recv)(Srq* srq, RecvWr* wr, RecvWr** bad_wr);
  // Memory windows. Binding is a send work request (WrOpcode::bind_mw).
  // Context: process context, may sleep.
  int (*alloc_mw)(Pd* pd, uint32_t type, Mw** out);
  int (*dealloc_mw)(Mw* mw);
  // Registers memory this process maps at `host` under the address `iova` (what work
  // requests and remote peers use): dverbsd registers a client's memory, mapped from the
  // client's memfd, at the client's own addresses. Context: process context, may sleep.
  int (*reg_mr_iova)(Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t access,
                     Mr** out);
  // Counters, as the kernel's rdma_hw_stats: fill up to `max` entries of `out` (names are
  // the driver's static strings) and return how many the device, or the QP, has (which
  // may exceed max), or a negative errno. Context: process context; reads counters only.
  int (*query_counters)(Device* dev, Counter* out, int max);
  int (*query_qp_counters)(Qp* qp, Counter* out, int max);
  // Address resolution on the port's link (the CM's rdma_resolve_addr): `ip` (IPv4, host
  // byte order) known → its MAC in `mac`, 0; being resolved → EAGAIN (ask again later);
  // resolution failed (no answer to ARP) → EHOSTUNREACH. Starts resolution when needed.
  // Context: any thread, never sleeps.
  int (*resolve_neigh)(Device* dev, uint8_t port_num, uint32_t ip, uint8_t mac[6]);
  // Multicast groups of UD QPs (ibv_attach_mcast): `gid` an IPv4-mapped group address.
  // Context: process context, may sleep.
  int (*attach_mcast)(Qp* qp, const Gid* gid);
  int (*detach_mcast)(Qp* qp, const Gid* gid);
  // Re-registration in place (ibv_rereg_mr), the keys unchanged: `flags` (rereg::*) says
  // which of the new PD, the translation (memory mapped at `host`, named `iova`, `length`
  // bytes) and the access flags apply; the op updates the Mr's common fields. Validated
  // completely before anything changes: on failure the region is as it was. EBUSY while
  // windows are bound to it. Context: process context, may sleep.
  int (*rereg_mr)(Mr* mr, uint32_t flags, Pd* pd, void* host, uint64_t iova, uint64_t length,
                  uint32_t access);
  // Completion timestamps (DeviceAttr::core_clock_khz): poll_cq that also returns, in
  // ts[i], the device clock when completion i was made (its packet handled); read_clock
  // reads that clock now. One clock for the whole device, monotonic, shared by every
  // engine (and by dverbsd and its clients). Context: any thread, never sleeps.
  int (*poll_cq_ts)(Cq* cq, int num_entries, Wc* wc, uint64_t* ts);
  int (*read_clock)(Device* dev, uint64_t* raw);
  // XRC (the XRC annex). open_xrcd: `fd` -1 for a private domain (oflags must hold
  // O_CREAT), else the domain of the file `fd` names (its device and inode), created when
  // none exists and oflags hold O_CREAT; EINVAL when none exists without O_CREAT, or one
  // exists with O_EXCL. Each successful open is one reference; close_xrcd drops it and
  // frees the domain with the last one, or fails with EBUSY when that last one still has
  // SRQs or QPs. open_xrc_qp returns a handle on the XRC_RECV QP `qpn` of the domain
  // (ENOENT, EINVAL): destroy_qp of any handle drops it, and the QP goes with the last.
  // An XRC SRQ is create_srq with SrqInitAttr::xrcd, an XRC_RECV QP create_qp with
  // QpInitAttr::xrcd and a null PD. Context: process context, may sleep.
  int (*open_xrcd)(Device* dev, int fd, int oflags, Xrcd** out);
  int (*close_xrcd)(Xrcd* xrcd);
  int (*open_xrc_qp)(Xrcd* xrcd, uint32_t qpn, Qp** out);
  // Flow steering (ibv_create_flow): frames that match `rule` go to raw packet QP `qp`;
  // *id names the rule for destroy_flow. A QP's rules go with it when it is destroyed.
  // Context: process context, may sleep.
  int (*create_flow)(Qp* qp, const FlowRule* rule, uint32_t* id);
  int (*destroy_flow)(Qp* qp, uint32_t id);
  // ibv_resize_cq: the CQ holds at least `cqe` completions (cqe >= 1, checked against
  // max_cqe by the driver) and the op sets Cq::cqe to what fits. The completions present
  // stay, in order; none is lost or duplicated while the device keeps completing and other
  // threads poll. EINVAL when `cqe` is below the completions present plus `held` (those a
  // caller took out of the CQ and still holds: dverbsd's client rings); on failure the CQ
  // is as it was. Context: process context, may sleep; one call per CQ at a time.
  int (*resize_cq)(Cq* cq, uint32_t cqe, uint32_t held);
  // Work requests queued and not yet retired (a send until it completes, a receive until it
  // completes or, on an SRQ, until a QP took it): what occupies the queues. dverbsd counts
  // them against the capacity its clients see, so that the capacity is exact through its
  // two-stage queues. Context: any thread, never sleeps; a snapshot.
  void (*qp_backlog)(Qp* qp, uint32_t* send, uint32_t* recv);
  uint32_t (*srq_backlog)(Srq* srq);
};

struct DeviceRegistration;  // midlayer-private

struct Device {
  char name[32] = {};
  const DeviceOps* ops = nullptr;
  uint8_t phys_port_cnt = 1;
  // The driver pins and charges registered memory itself (the remote driver: dverbsd
  // accounts it against the client's RLIMIT_MEMLOCK); front ends then do not pin.
  bool pins_memory = false;
  // The device moves its transport by itself (transport lcores, or an inline-progress
  // helper): frames are received and completion events raised without a consumer polling.
  // Consumers that poll only to make the transport progress (the CM thread) may then sleep
  // until they have something of their own to do.
  bool self_progress = false;
  DeviceRegistration* reg = nullptr;  // owned by the midlayer while registered
};

// Announces a fully initialised device to every client (their add() runs, FIFO).
// Returns 0, EINVAL (mandatory op missing, no name), or EEXIST (name taken).
// Context: process context, may sleep. Must not be called with a lock a client might need.
int register_device(Device* dev);

// Calls every client's remove() (LIFO), then forgets the device. The device stays usable
// until this returns; afterwards no midlayer callback touches it.
// Context: process context, may sleep. Fence: when it returns, no completion or event
// handler for an object of this device runs or will run.
void unregister_device(Device* dev);

// Queues an asynchronous event for the device's event handlers and the affected object's
// handler. Never calls a consumer directly.
// Context: any, including transport lcores; never sleeps, only enqueues. The common case is
// a few atomic operations; only when the handler pool goes from idle to busy does it hand a
// task to TBB (a small allocation, maybe a futex wake of a worker), as raising a softirq.
// Allowed for an object until the midlayer calls its destroy op, and for the device until
// unregister_device returns; events for a destroyed or unregistering object are forgotten.
// A full event ring drops the event (counted in EventStats::ring_full_drops).
void dispatch_event(const Event& event) noexcept;

// dispatch_event for an event affiliated with a QP, a CQ or an SRQ. Context: as above.
inline void dispatch_qp_event(Qp& qp, EventType type) noexcept {
  Event ev{.device = qp.device, .type = type};
  ev.element.qp = &qp;
  dispatch_event(ev);
}
inline void dispatch_cq_event(Cq& cq, EventType type) noexcept {
  Event ev{.device = cq.device, .type = type};
  ev.element.cq = &cq;
  dispatch_event(ev);
}
inline void dispatch_srq_event(Srq& srq, EventType type) noexcept {
  Event ev{.device = srq.device, .type = type};
  ev.element.srq = &srq;
  dispatch_event(ev);
}

// Tells the midlayer that an armed CQ received a completion: queues the CQ on its event
// ring so a handler thread calls the consumer's completion handler. Never calls a consumer
// directly. Context: any, including transport lcores; never sleeps, only enqueues.
// The driver's destroy_cq op must stop every caller for that CQ before freeing it; the
// midlayer has stopped the CQ's handlers before it calls the op.
void cq_comp_event(Cq* cq) noexcept;

// A driver that can create devices: probe() is called once, from process context, the
// first time a consumer asks for devices (probe_drivers()). It reads its configuration,
// builds its devices and registers them. Returns 0 or a positive errno.
struct Driver {
  const char* name;
  int (*probe)();
  void (*shutdown)();  // unregisters and frees its devices; called by shutdown_drivers()
  // Hot-plug (optional): builds and registers a device on a new port given by `devargs`
  // with IPv4 address/prefix `ip` (nullptr: the configured default), writing its name;
  // or tears the named device down (device-fatal event, QPs to ERR, unregister, free).
  // Return 0 or a positive errno (ENOENT: not this driver's device).
  int (*add_port)(const char* devargs, const char* ip, char* name, size_t name_len);
  int (*remove_port)(const char* name);
  // Arbitration between drivers that offer the same ports in different ways (the embedded
  // HCA, or dverbsd through dverbs-remote): a process uses one. probe_drivers() asks every
  // driver with `claims` whether it serves this process, probes those that say yes, and
  // probes a `fallback` driver only when none did. A driver with neither is always probed.
  // Context of claims(): process context; cheap (reads the environment, stats a path),
  // no side effects.
  bool (*claims)() = nullptr;
  bool fallback = false;
};

// Adds a driver to the list probe_drivers() walks. Context: static initialisation or
// process context.
void register_driver(const Driver* driver);

}  // namespace dverbs::mid

// Registers a driver at load time (SPDK-style plug-in macro).
#define DVERBS_REGISTER_DRIVER(var)                                      \
  __attribute__((constructor)) static void dverbs_register_##var() {     \
    ::dverbs::mid::register_driver(&(var));                              \
  }
