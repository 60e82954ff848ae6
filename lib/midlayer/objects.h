// The midlayer's view of verbs objects (the analogue of struct ib_pd, ib_cq, ib_qp…).
//
// A driver allocates its own object and embeds the midlayer object as its first base
// (`struct RxeQp : mid::Qp`), exactly as Linux drivers embed `struct ib_qp`. The midlayer
// fills the common fields (device, pd, cq pointers, handlers, usecnt) before the object
// reaches a consumer; the driver owns everything else.
//
// Thread safety: the common fields are written once at creation and read-only afterwards,
// except `usecnt` and `dying` (atomic) and the CQ's event state (owned by
// lib/midlayer/cq_events.cc).
#pragma once

#include <atomic>
#include <cstdint>

#include "dverbs/types.h"

namespace dverbs::mid {

struct Device;
struct Cq;
struct Qp;
struct Srq;

// Consumer completion callback: runs on a midlayer handler thread, at most one at a time
// per CQ, never from the call chain of a device method. Must not sleep.
using CompHandler = void (*)(Cq* cq, void* cq_context);

struct Event;
// Consumer async-event callback for one object: runs on a handler thread. Must not sleep.
using EventHandler = void (*)(const Event& event, void* context);

struct Pd {
  Device* device = nullptr;
  std::atomic<uint32_t> usecnt{0};  // MRs, QPs, AHs, SRQs, MWs that reference this PD
};

struct Mr {
  Device* device = nullptr;
  Pd* pd = nullptr;
  uint64_t addr = 0;
  uint64_t length = 0;
  uint32_t lkey = 0;
  uint32_t rkey = 0;
  uint32_t access = 0;
};

// What ibv_rereg_mr changes (the values of IBV_REREG_MR_CHANGE_*).
namespace rereg {
constexpr uint32_t translation = 1u << 0;  // address and length
constexpr uint32_t pd = 1u << 1;
constexpr uint32_t access = 1u << 2;
constexpr uint32_t all = translation | pd | access;
}  // namespace rereg

// A memory window (IBA 10.6.7): type 1 or 2; rkey changes on every bind.
struct Mw {
  Device* device = nullptr;
  Pd* pd = nullptr;
  uint32_t rkey = 0;
  uint32_t type = 2;
};

struct Ah {
  Device* device = nullptr;
  Pd* pd = nullptr;
};

// Per-CQ completion-event state, owned by lib/midlayer/cq_events.cc.
struct CqEventState {
  std::atomic<uint32_t> pending{0};    // events raised and not yet handled
  std::atomic<uint32_t> scheduled{0};  // 1 while the CQ sits in the ready queue or a handler runs
  std::atomic<uint32_t> in_handler{0};  // handler threads holding the CQ (popped, not yet let go)
  std::atomic<uint64_t> delivered{0};  // completion handlers called so far
  std::atomic<uint32_t> dying{0};      // destroy_cq: 1 while fencing, 2 once quiesced
  Cq* next_ready = nullptr;            // link in the overflow list when the ready ring is full
};

struct Cq {
  Device* device = nullptr;
  CompHandler comp_handler = nullptr;
  EventHandler event_handler = nullptr;
  void* cq_context = nullptr;
  uint32_t cqe = 0;                 // capacity granted by the driver
  std::atomic<uint32_t> usecnt{0};  // QPs and SRQs that reference this CQ
  CqEventState events;
};

// An XRC domain (the XRC annex; ibv_open_xrcd): groups XRC SRQs and XRC_RECV QPs. Shared
// by everyone who opens it by the same file (the driver counts the opens,
// DeviceOps::open_xrcd); `usecnt` counts the SRQs and QPs in it.
struct Xrcd {
  Device* device = nullptr;
  std::atomic<uint32_t> usecnt{0};
};

struct SrqInitAttr {
  uint32_t max_wr = 0;
  uint32_t max_sge = 1;
  uint32_t srq_limit = 0;
  // An XRC SRQ (IBV_SRQT_XRC): its domain and the CQ its receive completions go to.
  Xrcd* xrcd = nullptr;
  Cq* cq = nullptr;
};

struct Srq {
  Device* device = nullptr;
  Pd* pd = nullptr;
  EventHandler event_handler = nullptr;
  void* srq_context = nullptr;
  uint32_t max_wr = 0;              // work requests that fit, set by the driver (0: as asked)
  std::atomic<uint32_t> usecnt{0};  // QPs that reference this SRQ
  std::atomic<uint32_t> dying{0};   // set by destroy_srq: queued async events are forgotten
  Xrcd* xrcd = nullptr;             // XRC SRQ: its domain,
  Cq* cq = nullptr;                 // the CQ of its receive completions,
  uint32_t srq_num = 0;             // and the number XRC senders name (the driver's)
};

struct QpInitAttr {
  QpType qp_type = QpType::rc;
  Cq* send_cq = nullptr;
  Cq* recv_cq = nullptr;
  Srq* srq = nullptr;
  QpCap cap{};
  bool sq_sig_all = false;
  EventHandler event_handler = nullptr;
  void* qp_context = nullptr;
  // The port's General Services QP (IB_QPT_GSI): a UD QP numbered 1, one per port, which
  // the connection manager (lib/cm) owns. Drivers without one return EOPNOTSUPP.
  bool gsi = false;
  // XRC_RECV: the domain whose SRQs the QP delivers into (no PD, CQs, SRQ or queues).
  Xrcd* xrcd = nullptr;
};

struct Qp {
  Device* device = nullptr;
  Pd* pd = nullptr;
  Cq* send_cq = nullptr;
  Cq* recv_cq = nullptr;
  Srq* srq = nullptr;
  EventHandler event_handler = nullptr;
  void* qp_context = nullptr;
  uint32_t qp_num = 0;
  QpType qp_type = QpType::rc;
  std::atomic<uint32_t> dying{0};  // set by destroy_qp: queued async events are forgotten
  Xrcd* xrcd = nullptr;            // XRC_RECV: its domain
};

// An asynchronous event (struct ib_event): the element names which object it concerns.
struct Event {
  Device* device = nullptr;
  EventType type = EventType::device_fatal;
  union {
    Cq* cq;
    Qp* qp;
    Srq* srq;
    uint32_t port_num;
  } element{};
};

// Which member of Event::element an event type names (IBA 11.6.3 groups the events by the
// object they affect). Shared by the midlayer's dispatch and the drivers that carry events
// across a process boundary. Context: any.
enum class EventElement : uint8_t { device, port, qp, cq, srq };

constexpr EventElement event_element(EventType t) noexcept {
  switch (t) {
    case EventType::cq_err:
      return EventElement::cq;
    case EventType::qp_fatal:
    case EventType::qp_req_err:
    case EventType::qp_access_err:
    case EventType::comm_est:
    case EventType::sq_drained:
    case EventType::path_mig:
    case EventType::path_mig_err:
    case EventType::qp_last_wqe_reached:
      return EventElement::qp;
    case EventType::srq_err:
    case EventType::srq_limit_reached:
      return EventElement::srq;
    case EventType::port_active:
    case EventType::port_err:
    case EventType::lid_change:
    case EventType::pkey_change:
    case EventType::sm_change:
    case EventType::client_reregister:
    case EventType::gid_change:
      return EventElement::port;
    case EventType::device_fatal:
      break;
  }
  return EventElement::device;
}

}  // namespace dverbs::mid
