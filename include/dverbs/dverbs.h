// dverbs — the public C++ API of the user-space soft RDMA HCA.
//
// RAII handles over the verbs objects: a Context opens a device, and Pd, Mr, Cq, Qp, Ah
// are created from it and destroyed by their destructors (children before parents: the
// caller keeps a Qp alive no longer than its Pd and Cqs — destroying a Pd or Cq still in
// use fails with EBUSY and leaves it alive). Errors are errno values: factory functions
// return Expected<T>, other calls return 0 or an errno, poll() returns a count or -errno.
//
// Context rules (core_locking.rst):
// - post_send, post_recv, poll, req_notify, Ah::create/destroy: any thread, concurrently
//   on one object, never sleep.
// - everything else: process context, may sleep.
// - completion handlers run on midlayer handler threads, one at a time per Cq, never in
//   the caller of post_send; they must not sleep (they may poll and re-arm).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dverbs/types.h"

namespace dverbs {

namespace mid {
struct Mw;
struct Srq;
struct Device;
struct Pd;
struct Mr;
struct Cq;
struct Qp;
struct Ah;
}  // namespace mid

// A value or an errno.
template <class T>
class Expected {
 public:
  Expected(T v) : v_(std::move(v)), err_(0) {}  // NOLINT: implicit by design
  static Expected failure(int err) { return Expected(err, 0); }
  explicit operator bool() const { return err_ == 0; }
  int error() const { return err_; }
  T& operator*() { return v_; }
  T* operator->() { return &v_; }
  T&& take() { return std::move(v_); }

 private:
  Expected(int err, int) : v_(), err_(err) {}
  T v_;
  int err_;
};

// Names of the devices registered now (probing the drivers on first use).
// Context: process context, may sleep. Returns an empty list and sets *err on failure.
std::vector<std::string> device_names(int* err = nullptr);

// Hot-plug. add_port opens a DPDK port by devargs (e.g. "net_memif1,role=server,...",
// "net_af_xdp0,iface=veth1") with IPv4 address/prefix `ip` (empty: DVERBS_IP) and
// registers a new device, returning its name; remove_port raises IBV_EVENT_DEVICE_FATAL,
// moves the device's QPs to ERR (flushing their WRs), tells every client (their remove()
// must free what they created on it) and frees the device.
// Context: process context, may sleep. Errors: EINVAL, ENODEV (the port did not open),
// ENOENT (no such device).
Expected<std::string> add_port(const std::string& devargs, const std::string& ip = {});
int remove_port(const std::string& name);

// An asynchronous event (struct ibv_async_event): which object it concerns.
struct AsyncEvent {
  EventType type;
  uint32_t qp_num;  // QP events
  uint8_t port_num; // port events
};

class Context {
 public:
  using EventHandler = std::function<void(const AsyncEvent&)>;
  Context();
  // Opens a device by name, or the first one when name is empty.
  // Context: process context, may sleep. ENODEV when there is none.
  static Expected<Context> open(const std::string& name = {});
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  ~Context();

  // Receives the device's async events on a midlayer handler thread (must not sleep);
  // replaces an earlier handler. Fence: when a replacement or the destructor returns, the
  // old handler does not run any more. Context: process context.
  int set_event_handler(EventHandler handler);

  int query_device(DeviceAttr* attr) const;
  int query_port(uint8_t port_num, PortAttr* attr) const;
  int query_gid(uint8_t port_num, int index, Gid* gid) const;
  // The device's counters (packets, drops...), replacing *out. 0, or EOPNOTSUPP when the
  // driver keeps none (dverbsd's clients). Context: process context.
  int query_counters(std::vector<Counter>* out) const;
  const char* name() const;
  mid::Device* raw() const { return dev_; }

 private:
  struct Events;
  mid::Device* dev_ = nullptr;
  std::unique_ptr<Events> events_;
};

class Pd {
 public:
  Pd() = default;
  static Expected<Pd> alloc(const Context& ctx);
  Pd(Pd&& o) noexcept : pd_(std::exchange(o.pd_, nullptr)) {}
  Pd& operator=(Pd&& o) noexcept;
  ~Pd();
  // Explicit destruction: 0, or EBUSY while MRs/QPs/AHs use it (then it stays alive).
  int destroy();
  mid::Pd* raw() const { return pd_; }

 private:
  mid::Pd* pd_ = nullptr;
};

class Mr {
 public:
  Mr() = default;
  // Registers [addr, addr+length) with IBV_ACCESS_* flags. EINVAL for bad flags/ranges.
  static Expected<Mr> reg(const Pd& pd, void* addr, size_t length, uint32_t access);
  Mr(Mr&& o) noexcept : mr_(std::exchange(o.mr_, nullptr)) {}
  Mr& operator=(Mr&& o) noexcept;
  ~Mr();
  int destroy();
  uint32_t lkey() const;
  uint32_t rkey() const;
  uint64_t addr() const;
  uint64_t length() const;
  mid::Mr* raw() const { return mr_; }

 private:
  mid::Mr* mr_ = nullptr;
};

class Cq {
 public:
  // Called on a handler thread after a completion on an armed CQ. Must not sleep.
  using Handler = std::function<void(Cq&)>;
  Cq();
  static Expected<Cq> create(const Context& ctx, uint32_t cqe, Handler handler = {});
  Cq(Cq&& o) noexcept;
  Cq& operator=(Cq&& o) noexcept;
  ~Cq();
  // 0, or EBUSY while QPs use it. Fence: afterwards the handler never runs again.
  int destroy();

  // Context: any thread, never sleeps. Returns completions polled, or -errno.
  int poll(Wc* wc, int n) noexcept;
  // Arms the CQ for one completion event. Context: any thread (also its handler).
  int req_notify(bool solicited_only = false) noexcept;
  uint32_t capacity() const;
  mid::Cq* raw() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// A shared receive queue. Context: process context except post_recv (any thread).
class Srq {
 public:
  // Called on a handler thread for the SRQ's async events (srq_limit_reached). No sleeping.
  using EventHandler = std::function<void(EventType)>;
  Srq();
  static Expected<Srq> create(const Pd& pd, uint32_t max_wr, uint32_t max_sge,
                              uint32_t srq_limit = 0, EventHandler on_event = {});
  Srq(Srq&& o) noexcept;
  Srq& operator=(Srq&& o) noexcept;
  ~Srq();
  int destroy();  // EBUSY while QPs use it
  // Arms the limit event: raised once when fewer than `limit` receives remain posted.
  int arm(uint32_t limit);
  int post_recv(RecvWr* wr, RecvWr** bad_wr) noexcept;
  mid::Srq* raw() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

struct QpInit {
  QpType type = QpType::rc;
  QpCap cap{16, 16, 1, 1, 0};
  bool sq_sig_all = false;
  const Srq* srq = nullptr;  // receives come from this SRQ instead of the QP's own RQ
};

class Qp {
 public:
  Qp() = default;
  static Expected<Qp> create(const Pd& pd, const Cq& send_cq, const Cq& recv_cq,
                             const QpInit& init);
  Qp(Qp&& o) noexcept : qp_(std::exchange(o.qp_, nullptr)) {}
  Qp& operator=(Qp&& o) noexcept;
  ~Qp();
  int destroy();

  // IBV_QP_* attribute mask semantics; EINVAL for an illegal transition or attribute.
  int modify(const QpAttr& attr, uint32_t attr_mask);
  int query(QpAttr* attr) const;
  // The QP's counters (retransmissions, NAKs, duplicates), as Context::query_counters.
  int query_counters(std::vector<Counter>* out) const;
  QpState state() const;
  uint32_t qp_num() const;

  // Context: any thread, concurrently, never sleep. 0, EINVAL (bad WR or state: *bad_wr
  // names it), ENOMEM (queue full: *bad_wr names the first WR not posted).
  int post_send(SendWr* wr, SendWr** bad_wr) noexcept;
  int post_recv(RecvWr* wr, RecvWr** bad_wr) noexcept;

  // Drives RESET→INIT→RTR→RTS for a connected QP whose peer is (gid, qpn, psn).
  // Context: process context.
  int connect(const Gid& remote_gid, uint32_t remote_qpn, uint32_t local_psn,
              uint32_t remote_psn, Mtu mtu = Mtu::mtu1024, uint32_t access_flags = 0);
  mid::Qp* raw() const { return qp_; }

 private:
  mid::Qp* qp_ = nullptr;
};

// A memory window (type 1 or 2). Bind it with a WrOpcode::bind_mw work request whose
// bind_mw.rkey is the window's rkey with a new low byte (Mw::next_rkey()).
class Mw {
 public:
  Mw() = default;
  static Expected<Mw> alloc(const Pd& pd, uint32_t type);
  Mw(Mw&& o) noexcept : mw_(std::exchange(o.mw_, nullptr)) {}
  Mw& operator=(Mw&& o) noexcept;
  ~Mw();
  int destroy();
  uint32_t rkey() const;
  // The rkey a new bind should carry (ibv_inc_rkey): same index, next key byte.
  uint32_t next_rkey() const;
  mid::Mw* raw() const { return mw_; }

 private:
  mid::Mw* mw_ = nullptr;
};

class Ah {
 public:
  Ah() = default;
  // Context: any thread, never sleeps.
  static Expected<Ah> create(const Pd& pd, const AhAttr& attr);
  Ah(Ah&& o) noexcept : ah_(std::exchange(o.ah_, nullptr)) {}
  Ah& operator=(Ah&& o) noexcept;
  ~Ah();
  mid::Ah* raw() const { return ah_; }

 private:
  mid::Ah* ah_ = nullptr;
};

}  // namespace dverbs
