// The soft HCA device: one DPDK port, its transport engines, and the object tables the
// fast path reaches by key (MRs) and number (QPs).
//
// Locking: `ctl_` (a checked mid::Mutex) serialises the control path (create, destroy,
// modify); the fast path never takes it. Tables are arrays of slots published with atomics:
// a lookup is an index and a compare, lock-free. Freed objects are reclaimed only after
// quiesce(): every engine has passed the end of a poll iteration since the object was
// unpublished (quiescent-state based reclamation), so an engine never touches freed memory.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "midlayer/driver.h"
#include "midlayer/might_sleep.h"
#include "pmd/hca/flow.h"
#include "pmd/hca/objects.h"
#include "pmd/net/config.h"
#include "pmd/net/port.h"

namespace dverbs::pmd::net {
class NeighTable;
class LcoreThread;
}  // namespace dverbs::pmd::net

namespace dverbs::pmd::hca {

constexpr uint32_t kMaxQp = 1u << 14;  // QP table slots (QPN = generation << 14 | index)
constexpr uint32_t kMaxMr = 1u << 16;  // MR table slots (key = index << 8 | generation)
constexpr uint32_t kMaxCqe = 1u << 20;
constexpr uint32_t kMaxQpWr = 1u << 14;
// READ/atomic requests a QP may have outstanding as requester (max_qp_init_rd_atom) and
// responder resources it may offer (max_qp_rd_atom): rxe's 128, so stock perftest, which
// asks each side for the peer's maximum, connects to rxe with its defaults. A responder's
// resources are memory, allocated for max_dest_rd_atomic entries when the QP enters RTR.
constexpr uint32_t kMaxRdAtomic = 128;
constexpr uint32_t kMaxAh = 4096;
constexpr uint32_t kMaxXrcSrq = 1u << 14;  // XRC SRQ table slots (SRQN = gen << 14 | index)

struct DeviceCounters {
  // The sums of every QP's counters (stats.h), destroyed QPs included.
  DVERBS_QP_EVENTS(DVERBS_DECLARE_COUNTER)
  std::atomic<uint64_t> tx_packets{0}, tx_bytes{0};
  std::atomic<uint64_t> rx_bad_frame{0}, rx_bad_icrc{0}, rx_no_qp{0}, rx_bad_state{0};
  std::atomic<uint64_t> rx_non_roce{0};
  // Frames a NIC would not have delivered: another station's MAC, or a RoCE packet for an
  // IPv4 address that is not the port's (Port::accepts, Engine::rx_one).
  std::atomic<uint64_t> rx_not_for_us{0};
  std::atomic<uint64_t> rx_handoff_full{0};
  std::atomic<uint64_t> tx_no_mbuf{0};
  std::atomic<uint64_t> tx_backlog_drop{0};
  std::atomic<uint64_t> cq_overflow{0};
  // XRC requests refused: their XRCETH names no XRC SRQ of the target QP's domain.
  std::atomic<uint64_t> rx_xrc_bad_srq{0};
  // Raw packet QPs: frames a flow rule delivered, and matched frames dropped (no receive
  // WQE posted, QP not ready to receive, or a bad receive buffer).
  std::atomic<uint64_t> rx_raw{0}, rx_raw_dropped{0};
};

class Device : public mid::Device {
 public:
  // Opens the port described by cfg, starts the engines and fills the ops table. Does not
  // register with the midlayer (the driver does, once this returned fully initialised).
  // Context: process context, may sleep. Returns nullptr and sets *err on failure.
  static std::unique_ptr<Device> create(const net::Config& cfg, const char* name,
                                        std::string* err);
  ~Device();

  net::Port& port() { return *port_; }  // engines only; gone once retired
  // The port's addresses, kept for queries and path setup after the port is gone.
  struct PortInfo {
    uint8_t mac[6];
    uint32_t ip;   // host byte order
    uint32_t mtu;  // Ethernet MTU
    uint32_t ifindex;  // the host interface's (net::Port::host_ifindex), else 0
  };
  const PortInfo& port_info() const { return port_info_; }
  bool link_up() const { return !retired() && port_->link_up(); }
  net::NeighTable& neigh() { return *neigh_; }
  const net::Config& config() const { return cfg_; }
  DeviceCounters& counters() { return counters_; }
  bool inline_progress() const { return engines_threads_.empty(); }

  // Fast-path lookups. Context: any thread, never sleeps.
  Mr* mr_lookup(uint32_t key) noexcept {
    Mr& m = mrs_[key >> 8 & (kMaxMr - 1)];
    return m.key.load(std::memory_order_acquire) == key && key != 0 ? &m : nullptr;
  }
  Qp* qp_lookup(uint32_t qpn) noexcept {
    Qp* q = qps_[qpn & (kMaxQp - 1)].load(std::memory_order_acquire);
    return q && q->qp_num == qpn ? q : nullptr;
  }
  // An XRC SRQ by the number an XRCETH names (xrc.cc publishes them).
  Srq* xrc_srq_lookup(uint32_t srqn) noexcept {
    Srq* s = xrc_srqs_[srqn & (kMaxXrcSrq - 1)].load(std::memory_order_acquire);
    return s && s->srq_num == srqn ? s : nullptr;
  }
  // Calls f(qp) for every published QP. Context: process context, ctl() held (destroy_qp
  // unpublishes under it, so each QP stays alive until ctl() is released).
  template <class F>
  void for_each_qp(F&& f) {
    for (uint32_t i = 0; i < kMaxQp; i++)
      if (Qp* q = qps_[i].load(std::memory_order_acquire)) f(*q);
  }

  // Inline progress: run the engines once if no other thread is running them.
  // Context: any thread, never sleeps. No-op when dedicated lcores run the engines.
  void progress() noexcept;
  // One round of the inline-progress helper: runs the engines and returns the work done
  // when the application has made no dverbs call for kAppQuietUs, or -1 while it has (the
  // application is driving the transport or about to: the helper keeps its sleeps short
  // but does not spin, which on a small machine would only compete with it for the CPU).
  // Context: the helper thread only.
  int helper_round() noexcept;
  static constexpr uint64_t kAppQuietUs = 200;

  // Waits until every engine has passed a quiescent point. Context: process context.
  void quiesce();

  // Hot-unplug: raises IBV_EVENT_DEVICE_FATAL and moves every QP to ERR (their engines
  // flush them). The device stays usable for destroy calls. Context: process context.
  void fail_all();
  // DPDK reported the port's device gone; the watchdog removes the device.
  // Context: any thread (DPDK's interrupt thread), never sleeps.
  void mark_removed() noexcept { removed_.store(true, std::memory_order_release); }
  // After unregister_device on hot-unplug: stops every thread, finishes the flush that
  // fail_all() began, closes the port, and leaves the tables in place so that objects the
  // application still holds can be queried and destroyed (the analogue of uverbs'
  // disassociation). Posting then fails with EIO, creating with ENODEV; the memory is
  // freed at driver shutdown. Context: process context.
  void retire();
  // Longest wait of the close barrier (Device::linger) when a peer does not answer.
  static constexpr uint64_t kLingerMs = 500;
  bool retired() const noexcept { return retired_.load(std::memory_order_acquire); }

  // ---- control path, called from the ops table (ops.cc). Context: process context. ----
  // `host` is where this process maps the region, `iova` the address WQEs and peers use.
  int alloc_mr_slot(Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t access,
                    Mr** out);
  void free_mr_slot(Mr* mr);
  int install_qp(Qp* qp, bool gsi = false);  // assigns qp_num (1: GSI) and owner engine
  void remove_qp(Qp* qp);  // unpublishes, detaches from its engine, quiesces
  mid::Mutex& ctl() { return ctl_; }
  // XRC (xrc.cc), under ctl(): the SRQ table (install assigns srq_num; remove unpublishes
  // and quiesces) and the open XRC domains.
  int install_xrc_srq(Srq* srq);
  void remove_xrc_srq(Srq* srq);
  std::vector<Xrcd*>& xrcds() { return xrcds_; }
  Engine& engine(size_t i) { return *engines_[i]; }
  size_t engine_count() const { return engines_.size(); }
  uint32_t alloc_ah_id() { return next_ah_.fetch_add(1, std::memory_order_relaxed); }
  // Address handles come from a preallocated pool: create_ah/destroy_ah may not sleep, so
  // they may not call a blocking allocator either. Context: any thread, lock-free.
  Ah* get_ah() noexcept {
    uint32_t i;
    return ah_free_.pop(&i) ? &ahs_[i] : nullptr;
  }
  void put_ah(Ah* a) noexcept { ah_free_.push(uint32_t(a - ahs_.get())); }

  // Flow steering rules of raw packet QPs (flow.h). Context: engines read, the control
  // path (under ctl()) updates.
  FlowTable& flows() noexcept { return flows_; }

  // Multicast groups (ibv_attach_mcast, IBA 10.5): an IPv4 group address and the UD QPs
  // attached to it. Engines read the table lock-free; attach/detach run under ctl() and
  // a detach quiesces the engines before it returns, so no engine still delivers to the
  // QP. Fixed sizes: no allocation on either side.
  static constexpr uint32_t kMaxMcGroups = 64, kMaxMcQps = 16;
  struct McGroup {
    std::atomic<uint32_t> ip{0};  // host order; 0: free
    std::atomic<Qp*> qps[kMaxMcQps] = {};
  };
  int mcast_attach(Qp* qp, uint32_t ip);  // EINVAL (not UD/multicast), ENOMEM (full)
  int mcast_detach(Qp* qp, uint32_t ip);  // EINVAL when not attached
  void mcast_detach_all(Qp* qp);          // destroy_qp
  // Context: any thread, never sleeps.
  McGroup* mcast_find(uint32_t ip) noexcept {
    for (auto& g : mc_)
      if (g.ip.load(std::memory_order_acquire) == ip) return &g;
    return nullptr;
  }

 private:
  // Test hook (tests/pmd/hca/harness.cc): the protocol suite stops the inline-progress
  // helper so that only the test thread runs the engine.
  friend struct DeviceTestPeer;
  Device() = default;
  net::Config cfg_;
  std::unique_ptr<net::Port> port_;
  PortInfo port_info_{};
  std::unique_ptr<net::NeighTable> neigh_;
  std::vector<std::unique_ptr<Engine>> engines_;
  std::vector<std::unique_ptr<net::LcoreThread>> engines_threads_;
  std::unique_ptr<net::LcoreThread> inline_helper_;
  int lcore_slot_fd_ = -1;  // DVERBS_LCORES=auto's machine-wide lcore slot, if one is held
  // Bumped by every application call of progress(), read by helper_round(): on a line of
  // its own, since the application writes it on every poll_cq while the helper reads it.
  alignas(64) std::atomic<uint64_t> app_rounds_{0};
  uint64_t helper_seen_ = 0;    // app_rounds_ at the helper's last look (helper only)
  uint64_t helper_app_tsc_ = 0;  // when the helper last saw app_rounds_ change
  // Watchdog (a control thread, not an lcore): link-state events and device removal.
  void watchdog();
  std::thread watchdog_;
  mid::Mutex watch_lock_;
  std::condition_variable_any watch_cv_;
  bool watch_stop_ = false;                // guarded by watch_lock_
  std::atomic<bool> removed_{false};       // set by DPDK's RMV callback
  std::atomic<bool> retired_{false};       // retire() began
  void stop_threads();  // watchdog, RMV callback, lcores, inline helper
  void linger();        // the close barrier of ~Device (Engine::linger_step)
  bool rmv_registered_ = false;

  std::unique_ptr<Mr[]> mrs_;
  std::unique_ptr<std::atomic<Qp*>[]> qps_;
  std::unique_ptr<Ah[]> ahs_;
  IndexStack ah_free_;  // indices into ahs_
  uint32_t mr_next_ = 1, qp_next_ = 2;  // QP 0 and 1 are the special QPs
  uint8_t qp_gen_[kMaxQp] = {};
  mid::Mutex ctl_;
  std::atomic<uint32_t> next_ah_{1};
  DeviceCounters counters_;
  McGroup mc_[kMaxMcGroups];
  std::atomic<Srq*> xrc_srqs_[kMaxXrcSrq] = {};
  uint8_t xrc_srq_gen_[kMaxXrcSrq] = {};
  uint32_t xrc_srq_next_ = 1;  // SRQN 0 is never assigned
  std::vector<Xrcd*> xrcds_;
  FlowTable flows_;
};

}  // namespace dverbs::pmd::hca
