#include "pmd/hca/device.h"

#include <cstdio>
#include <cstring>
#include <thread>

#include <unistd.h>

#include <rte_alarm.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_log.h>

#include "midlayer/core.h"
#include "pmd/hca/engine.h"
#include "pmd/net/eal.h"
#include "pmd/net/lcore.h"
#include "pmd/net/neigh.h"

namespace dverbs::pmd::hca {

extern const mid::DeviceOps kHcaOps;  // ops.cc
void request_removal(Device* dev);     // driver.cc

// DPDK's interrupt thread reports the port's device gone (RMV): only a flag here; the
// watchdog removes the device from process context.
namespace {
int on_dpdk_event(uint16_t, rte_eth_event_type, void* cb_arg, void*) {
  static_cast<Device*>(cb_arg)->mark_removed();
  return 0;
}
}  // namespace

namespace {
int engine_poll(void* arg) noexcept { return static_cast<Engine*>(arg)->poll(); }
// The inline-progress helper serves the transport while the application does not: the
// passive side of READs, atomics and WRITEs, timers, and programs asleep in a completion
// channel. It reports the work it did only while the application makes no dverbs call,
// so it spins (LcoreThread's adaptive back-off) while it alone serves traffic, and only
// keeps its sleeps short while the application calls in: two threads spinning for one
// engine on a small machine would only take turns on the CPU.
int inline_helper_round(void* arg) noexcept {
  return static_cast<Device*>(arg)->helper_round();
}
}  // namespace

std::unique_ptr<Device> Device::create(const net::Config& cfg, const char* name,
                                       std::string* err) {
  std::unique_ptr<Device> dev(new Device());
  dev->cfg_ = cfg;
  std::snprintf(dev->name, sizeof dev->name, "%s", name);
  dev->ops = &kHcaOps;
  dev->phys_port_cnt = 1;
  if (int rc = net::eal_init(cfg, err)) {
    (void)rc;
    return nullptr;
  }
  if (cfg.lcores == net::kLcoresAuto) {
    net::LcoreChoice c = net::choose_lcores_auto();
    dev->cfg_.lcores = c.lcores;
    dev->lcore_slot_fd_ = c.slot_fd;
    rte_log(RTE_LOG_INFO, RTE_LOGTYPE_USER1, "dverbs: %s: %s\n", name, c.why.c_str());
  }
  const int lcores = dev->cfg_.lcores;
  const uint16_t nq = uint16_t(lcores > 0 ? lcores : 1);
  dev->port_ = net::Port::open(cfg, nq, err);
  if (!dev->port_) return nullptr;
  dev->neigh_ = std::make_unique<net::NeighTable>(dev->port_->ip(), dev->port_->mac());
  std::memcpy(dev->port_info_.mac, dev->port_->mac(), 6);
  dev->port_info_.ip = dev->port_->ip();
  dev->port_info_.mtu = dev->port_->mtu();
  dev->port_info_.ifindex = dev->port_->host_ifindex();
  dev->mrs_.reset(new Mr[kMaxMr]);
  dev->qps_.reset(new std::atomic<Qp*>[kMaxQp]);
  for (uint32_t i = 0; i < kMaxQp; i++) dev->qps_[i].store(nullptr, std::memory_order_relaxed);
  dev->ahs_.reset(new Ah[kMaxAh]);
  if (!dev->ah_free_.init(kMaxAh)) {
    *err = "dverbs: out of memory creating the address-handle pool";
    return nullptr;
  }
  for (uint16_t q = 0; q < dev->port_->nb_queues(); q++) {
    auto e = std::make_unique<Engine>(dev.get(), q);
    if (!e->init()) {
      *err = "dverbs: out of memory creating transport engines";
      return nullptr;
    }
    dev->engines_.push_back(std::move(e));
  }
  // Dedicated lcores run the engines; in inline-progress mode the application's calls do,
  // and a backing-off helper keeps timers and event-driven programs moving when the
  // application is asleep in a completion channel.
  if (lcores > 0) {
    for (auto& e : dev->engines_) {
      auto t = std::make_unique<net::LcoreThread>();
      char tname[16];
      std::snprintf(tname, sizeof tname, "dverbs-lc%u", e->queue());
      t->start(tname, engine_poll, e.get());
      dev->engines_threads_.push_back(std::move(t));
    }
  } else if (dev->cfg_.inline_helper) {
    dev->inline_helper_ = std::make_unique<net::LcoreThread>();
    dev->inline_helper_->start("dverbs-inline", inline_helper_round, dev.get(),
                               net::IdlePolicy::Depth::deep);
  }
  dev->self_progress = lcores > 0 || dev->inline_helper_ != nullptr;
  dev->rmv_registered_ = rte_eth_dev_callback_register(dev->port_->port_id(),
                                                       RTE_ETH_EVENT_INTR_RMV, on_dpdk_event,
                                                       dev.get()) == 0;
  dev->watchdog_ = std::thread([d = dev.get()] { d->watchdog(); });
  telemetry_add(dev.get());
  return dev;
}

void Device::watchdog() {
  // Link state is polled here rather than in the lcore loop: some PMDs make a syscall to
  // read it, and the lcore loop makes none.
  // A memif client refused by a server that was not started yet is restarted once a
  // second until its link first comes up (net::Port::retry_connect); a link that was up
  // and went down is a peer that left, which a restart would not bring back.
  constexpr int kRetryTicks = 10;
  bool up = port_->link_up();
  bool ever_up = up;
  int down_ticks = 0;
  std::unique_lock<mid::Mutex> lk(watch_lock_);
  for (;;) {
    watch_cv_.wait_for(lk, std::chrono::milliseconds(100), [&] { return watch_stop_; });
    if (watch_stop_) return;
    if (removed_.load(std::memory_order_acquire)) {
      request_removal(this);
      return;
    }
    bool now = port_->link_up();
    ever_up = ever_up || now;
    down_ticks = now ? 0 : down_ticks + 1;
    if (!ever_up && down_ticks >= kRetryTicks && port_->may_retry_connect()) {
      port_->set_restarting(true);
      quiesce();  // no engine inside a burst: DPDK's bursts must not run on a stopped port
      port_->retry_connect();
      port_->set_restarting(false);
      down_ticks = 0;
    }
    if (now != up) {  // dispatch_event drops it unless registered
      up = now;
      mid::Event ev;
      ev.device = this;
      ev.type = up ? EventType::port_active : EventType::port_err;
      ev.element.port_num = 1;
      mid::dispatch_event(ev);
    }
  }
}

void Device::fail_all() {
  mid::Event ev;
  ev.device = this;
  ev.type = EventType::device_fatal;
  mid::dispatch_event(ev);
  std::lock_guard<mid::Mutex> g(ctl_);
  for (uint32_t i = 0; i < kMaxQp; i++) {
    Qp* qp = qps_[i].load(std::memory_order_acquire);
    if (!qp) continue;
    qp->lock.lock();
    qp->state.store(QpState::err, std::memory_order_release);
    qp->lock.unlock();
    qp->engine->kick(qp);
  }
}

Device::~Device() {
  telemetry_remove(this);
  stop_threads();
  write_stat_file(*this);
  if (port_ && neigh_ && !removed_.load(std::memory_order_acquire)) linger();
  engines_.clear();
  neigh_.reset();
  port_.reset();
  if (lcore_slot_fd_ >= 0) close(lcore_slot_fd_);
}

namespace {

// One round of the close barrier, run by DPDK's interrupt thread (linger below).
// `posted` hands the round to that thread (DPDK's alarm list is not a synchronisation
// the sanitizers see), `done` hands it back.
struct LingerRound {
  Device* dev;
  std::vector<std::unique_ptr<Engine>>* engines;
  bool waiting = true;
  std::atomic<bool> posted{false};
  std::atomic<bool> done{false};
};

void linger_round(void* arg) {
  auto* r = static_cast<LingerRound*>(arg);
  r->posted.load(std::memory_order_acquire);
  bool waiting = false;
  if (r->dev->port().link_up())
    for (auto& e : *r->engines) waiting |= !e->linger_step();
  r->waiting = waiting;
  r->done.store(true, std::memory_order_release);
}

}  // namespace

void Device::linger() {
  // Close barrier (Engine::linger_step): the peers read our last frames (final ACKs, READ
  // responses) before the port goes. Every queue at once, so a silent peer on one does
  // not use up the others' time; bounded, and over at once when the link is down.
  //
  // Each round runs on DPDK's interrupt thread (an EAL alarm), the thread on which
  // net_memif handles its peer's disconnect and unmaps the rings the peer shared: a peer
  // that exits while we linger (the usual end of a two-process test) is then either seen
  // as a link down before the round, or disconnected after it, never in the middle of a
  // transmit. If the alarm cannot be set or does not run (EAL gone), the round runs here.
  const uint64_t deadline = rte_get_tsc_cycles() + rte_get_tsc_hz() * kLingerMs / 1000;
  for (auto& e : engines_) e->linger_begin();
  for (bool waiting = true; waiting && rte_get_tsc_cycles() < deadline;) {
    LingerRound r{this, &engines_};
    r.posted.store(true, std::memory_order_release);
    if (rte_eal_alarm_set(1, linger_round, &r) == 0) {
      while (!r.done.load(std::memory_order_acquire) && rte_get_tsc_cycles() < deadline)
        std::this_thread::yield();
      if (!r.done.load(std::memory_order_acquire) && rte_eal_alarm_cancel(linger_round, &r) > 0)
        break;  // never ran: the interrupt thread is not serving alarms
      while (!r.done.load(std::memory_order_acquire)) std::this_thread::yield();  // running
    } else {
      linger_round(&r);
    }
    waiting = r.waiting;
    if (waiting) std::this_thread::yield();
  }
  for (auto& e : engines_) e->linger_end();
}

void Device::stop_threads() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<mid::Mutex> g(watch_lock_);
      watch_stop_ = true;
    }
    watch_cv_.notify_all();
    if (watchdog_.get_id() == std::this_thread::get_id())
      watchdog_.detach();
    else
      watchdog_.join();
  }
  if (rmv_registered_) {
    rte_eth_dev_callback_unregister(port_->port_id(), RTE_ETH_EVENT_INTR_RMV, on_dpdk_event, this);
    rmv_registered_ = false;
  }
  for (auto& t : engines_threads_) t->stop();
  if (inline_helper_) inline_helper_->stop();
}

void Device::retire() {
  mid::might_sleep("Device::retire");
  retired_.store(true, std::memory_order_seq_cst);  // new posts fail from here on
  stop_threads();
  // Application threads may still enter the engines through progress() (inline mode):
  // take each engine's run lock for good, then finish the flush here.
  for (auto& e : engines_) e->retire();
  port_.reset();
}

void Device::progress() noexcept {
  if (!engines_threads_.empty()) return;
  // Several application threads may race here: a lost increment still changes the value.
  app_rounds_.store(app_rounds_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  for (auto& e : engines_) e->try_poll();
}

int Device::helper_round() noexcept {
  int work = 0;
  for (auto& e : engines_) work += e->try_poll();
  const uint64_t now = rte_get_tsc_cycles();
  const uint64_t app = app_rounds_.load(std::memory_order_relaxed);
  if (app != helper_seen_) {
    helper_seen_ = app;
    helper_app_tsc_ = now;
  }
  const bool app_active = now - helper_app_tsc_ < rte_get_tsc_hz() / 1'000'000 * kAppQuietUs;
  return app_active ? -1 : work;
}

void Device::quiesce() {
  mid::might_sleep("Device::quiesce");
  for (auto& e : engines_) {
    uint64_t ep = e->epoch();
    if (!(ep & 1)) continue;  // not inside poll(): nothing in flight
    while (e->epoch() == ep) std::this_thread::yield();
  }
}

int Device::alloc_mr_slot(Pd* pd, void* host, uint64_t iova, uint64_t length, uint32_t acc,
                          Mr** out) {
  // Linear probe from the last allocation; the key's low byte is a generation so a stale
  // key of a reused slot never matches (IBA 10.6.3.2: keys are checked on every use).
  for (uint32_t n = 0; n < kMaxMr; n++) {
    uint32_t idx = (mr_next_ + n) & (kMaxMr - 1);
    if (idx == 0) continue;  // key 0 is never valid
    Mr& m = mrs_[idx];
    if (m.key.load(std::memory_order_relaxed) != 0) continue;
    mr_next_ = idx + 1;
    uint8_t gen = uint8_t((m.lkey & 0xff) + 1);
    if (gen == 0) gen = 1;
    m.alloc_gen.fetch_add(1, std::memory_order_relaxed);
    m.device = this;
    m.pd = pd;
    m.addr = iova;
    m.base = static_cast<uint8_t*>(host);
    m.length = length;
    m.access = acc;
    m.lkey = m.rkey = idx << 8 | gen;
    m.key.store(m.lkey, std::memory_order_release);
    *out = &m;
    return 0;
  }
  return ENOMEM;
}

void Device::free_mr_slot(Mr* mr) {
  // A bind still queued for this window sees the new generation and fails instead of
  // touching the window object, which the caller frees after quiesce().
  mr->alloc_gen.fetch_add(1, std::memory_order_seq_cst);
  mr->key.store(0, std::memory_order_release);
  quiesce();  // no engine still copies through it
}

int Device::install_qp(Qp* qp, bool gsi) {
  for (uint32_t n = 0; n < kMaxQp; n++) {
    // QP0 is reserved (IBA 3.5.11: no SMI on RoCE); QP1 is the GSI QP and only that.
    uint32_t idx = gsi ? 1 : (qp_next_ + n) & (kMaxQp - 1);
    if (!gsi && idx < 2) continue;
    if (qps_[idx].load(std::memory_order_relaxed)) {
      if (gsi) return EBUSY;  // one GSI QP per port
      continue;
    }
    uint32_t gen = 0;  // QPN 1 is exactly 1
    if (!gsi) {
      qp_next_ = idx + 1;
      gen = uint32_t(++qp_gen_[idx]) & 0x3ff;
    }
    qp->qp_num = (gen << 14 | idx) & wire::kQpnMask;
    // Shard QPs over the engines: the least loaded owns the new QP.
    Engine* best = engines_[0].get();
    for (auto& e : engines_)
      if (e->qp_count() < best->qp_count()) best = e.get();
    qp->engine = best;
    best->add_qp_count(1);
    qps_[idx].store(qp, std::memory_order_release);
    return 0;
  }
  return ENOMEM;
}

int Device::mcast_attach(Qp* qp, uint32_t ip) {
  if (qp->qp_type != QpType::ud || (ip >> 28) != 0xe) return EINVAL;
  McGroup* g = mcast_find(ip);
  if (!g) {
    for (auto& f : mc_)
      if (f.ip.load(std::memory_order_relaxed) == 0) {
        g = &f;
        break;
      }
    if (!g) return ENOMEM;
  }
  for (auto& s : g->qps)
    if (s.load(std::memory_order_relaxed) == qp) return 0;  // attached already
  for (auto& s : g->qps)
    if (!s.load(std::memory_order_relaxed)) {
      s.store(qp, std::memory_order_release);
      g->ip.store(ip, std::memory_order_release);
      return 0;
    }
  return ENOMEM;
}

int Device::mcast_detach(Qp* qp, uint32_t ip) {
  McGroup* g = mcast_find(ip);
  if (!g) return EINVAL;
  bool found = false, left = false;
  for (auto& s : g->qps) {
    if (s.load(std::memory_order_relaxed) == qp) {
      s.store(nullptr, std::memory_order_release);
      found = true;
    }
    left |= s.load(std::memory_order_relaxed) != nullptr;
  }
  if (!left) g->ip.store(0, std::memory_order_release);
  if (found) quiesce();  // no engine is still delivering to it
  return found ? 0 : EINVAL;
}

void Device::mcast_detach_all(Qp* qp) {
  for (auto& g : mc_) {
    bool left = false;
    for (auto& s : g.qps) {
      if (s.load(std::memory_order_relaxed) == qp) s.store(nullptr, std::memory_order_release);
      left |= s.load(std::memory_order_relaxed) != nullptr;
    }
    if (!left) g.ip.store(0, std::memory_order_release);
  }
  // remove_qp's quiesce() follows: no engine still delivers to the QP after it.
}

void Device::remove_qp(Qp* qp) {
  mcast_detach_all(qp);
  qps_[qp->qp_num & (kMaxQp - 1)].store(nullptr, std::memory_order_release);
  // The engine may hold the QP on its active list or kick ring: ask it to let go.
  // seq_cst store, then the kick's seq_cst exchange: either the engine, leaving the QP off
  // its list, sees `unhooking` (Engine::active_step), or this kick pushes the QP again.
  qp->unhooking.store(true, std::memory_order_seq_cst);
  qp->engine->kick(qp);  // if already kicked it is on the active list or the kick ring
  // A retired device's engines never run again (Engine::retire): nothing to wait for.
  while (!retired() && !qp->detached.load(std::memory_order_acquire)) {
    if (inline_progress()) progress();
    std::this_thread::yield();
  }
  qp->engine->add_qp_count(-1);
  quiesce();
}

}  // namespace dverbs::pmd::hca
