// An in-memory driver for the midlayer tests: implements every DeviceOps entry with plain
// heap objects. post_send completes signaled work requests at once into the send CQ and,
// if the CQ is armed, raises a completion event through mid::cq_comp_event — from the
// posting call chain, as a driver may; the midlayer must defer the consumer callback.
//
// Non-sleeping ops use a spinlock, never a sleeping lock (core_locking.rst).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "midlayer/core.h"

namespace dverbs::mid::fake {

class SpinLock {
 public:
  void lock() noexcept {
    while (flag_.exchange(true, std::memory_order_acquire))
      while (flag_.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
  void unlock() noexcept { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> flag_{false};
};

// Models a driver's event source (an lcore) that destroy_cq must quiesce before freeing the
// CQ: raisers enter the gate, destroy_cq closes it and waits for them.
struct Gate {
  std::atomic<bool> open{true};
  std::atomic<int> users{0};
  // Context: any. Raises a completion event unless the CQ is being destroyed.
  bool raise(Cq* cq) noexcept {
    users.fetch_add(1, std::memory_order_seq_cst);
    const bool ok = open.load(std::memory_order_seq_cst);
    if (ok) cq_comp_event(cq);
    users.fetch_sub(1, std::memory_order_seq_cst);
    return ok;
  }
  void close() noexcept {
    open.store(false, std::memory_order_seq_cst);
    while (users.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  }
};

struct FakePd : Pd {};
struct FakeMr : Mr {};
struct FakeAh : Ah {};
struct FakeSrq : Srq {
  uint32_t max_wr = 0;
  uint32_t limit = 0;
};

struct FakeCq : Cq {
  SpinLock lock;
  std::vector<Wc> ring;
  size_t head = 0;
  size_t count = 0;
  std::atomic<bool> armed{false};
  Gate* gate = nullptr;  // set by a test that raises events from its own threads
};

struct FakeQp : Qp {
  bool sq_sig_all = false;
  QpState state = QpState::reset;
};

// Handlers installed in destroyed objects kept in the graveyard: any call means the
// midlayer touched an object after its destroy call returned.
inline std::atomic<int> zombie_calls{0};
inline void zombie_comp(Cq*, void*) {
  zombie_calls++;
}
inline void zombie_event(const Event&, void*) {
  zombie_calls++;
}

struct FakeDevice : Device {
  DeviceOps table{};
  std::atomic<int> live_pds{0}, live_mrs{0}, live_cqs{0}, live_qps{0}, live_srqs{0}, live_ahs{0};
  std::atomic<uint32_t> next_qpn{1};
  std::atomic<uint32_t> next_key{0x100};
  // Graveyard mode: destroyed CQs, QPs and SRQs are not freed but made to look like fresh
  // objects of a new owner (zombie handlers, an event pending), as reused memory would.
  bool graveyard = false;
  SpinLock graveyard_lock;
  std::vector<std::unique_ptr<FakeCq>> dead_cqs;
  std::vector<std::unique_ptr<FakeQp>> dead_qps;
  std::vector<std::unique_ptr<FakeSrq>> dead_srqs;
  explicit FakeDevice(const char* n);
};

inline FakeDevice* dev_of(Device* d) {
  return static_cast<FakeDevice*>(d);
}

// Puts one completion on the CQ; raises the completion event if the CQ was armed.
// Context: any, never sleeps.
inline bool complete(FakeCq* cq, const Wc& wc) noexcept {
  cq->lock.lock();
  const bool ok = cq->count < cq->ring.size();
  if (ok) {
    cq->ring[(cq->head + cq->count) % cq->ring.size()] = wc;
    ++cq->count;
  }
  cq->lock.unlock();
  if (ok && cq->armed.exchange(false, std::memory_order_acq_rel)) cq_comp_event(cq);
  return ok;
}

namespace ops {

inline int query_device(Device* d, DeviceAttr* attr) {
  *attr = DeviceAttr{};
  attr->max_qp = 1u << 16;
  attr->max_cq = 1u << 16;
  attr->max_cqe = 1u << 20;
  attr->max_pd = 1u << 16;
  attr->phys_port_cnt = d->phys_port_cnt;
  return 0;
}
inline int query_port(Device*, uint8_t, PortAttr* attr) {
  *attr = PortAttr{};
  attr->state = PortState::active;
  return 0;
}
inline int query_gid(Device*, uint8_t, int index, Gid* gid) {
  if (index != 0) return EINVAL;
  const uint8_t g[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
  std::memcpy(gid->raw, g, sizeof g);
  return 0;
}
inline int alloc_pd(Device* d, Pd** out) {
  *out = new FakePd();
  dev_of(d)->live_pds++;
  return 0;
}
inline int dealloc_pd(Pd* pd) {
  dev_of(pd->device)->live_pds--;
  delete static_cast<FakePd*>(pd);
  return 0;
}
inline int reg_mr(Pd* pd, void*, uint64_t, uint32_t, Mr** out) {
  auto* mr = new FakeMr();
  mr->lkey = mr->rkey = dev_of(pd->device)->next_key++;
  dev_of(pd->device)->live_mrs++;
  *out = mr;
  return 0;
}
inline int dereg_mr(Mr* mr) {
  dev_of(mr->device)->live_mrs--;
  delete static_cast<FakeMr*>(mr);
  return 0;
}
inline int create_cq(Device* d, uint32_t cqe, Cq** out) {
  auto* cq = new FakeCq();
  cq->ring.resize(cqe);
  cq->cqe = cqe;
  dev_of(d)->live_cqs++;
  *out = cq;
  return 0;
}
inline int destroy_cq(Cq* cq) {
  auto* f = static_cast<FakeCq*>(cq);
  if (f->gate) f->gate->close();  // a real driver stops its lcores touching the CQ
  FakeDevice* d = dev_of(cq->device);
  d->live_cqs--;
  if (!d->graveyard) {
    delete f;
    return 0;
  }
  f->comp_handler = zombie_comp;
  f->event_handler = zombie_event;
  f->events.dying = 0;
  f->events.scheduled = 0;
  f->events.in_handler = 0;
  f->events.pending = 1;
  d->graveyard_lock.lock();
  d->dead_cqs.emplace_back(f);
  d->graveyard_lock.unlock();
  return 0;
}
inline int create_qp(Pd* pd, const QpInitAttr* init, Qp** out) {
  auto* qp = new FakeQp();
  qp->qp_num = dev_of(pd->device)->next_qpn++;
  qp->sq_sig_all = init->sq_sig_all;
  dev_of(pd->device)->live_qps++;
  *out = qp;
  return 0;
}
inline int modify_qp(Qp* qp, const QpAttr* attr, uint32_t mask) {
  if (mask & qp_attr_mask::state) static_cast<FakeQp*>(qp)->state = attr->qp_state;
  return 0;
}
inline int query_qp(Qp* qp, QpAttr* attr, uint32_t, QpInitAttr*) {
  attr->qp_state = static_cast<FakeQp*>(qp)->state;
  return 0;
}
inline int destroy_qp(Qp* qp) {
  FakeDevice* d = dev_of(qp->device);
  d->live_qps--;
  if (!d->graveyard) {
    delete static_cast<FakeQp*>(qp);
    return 0;
  }
  qp->event_handler = zombie_event;
  qp->dying = 0;
  d->graveyard_lock.lock();
  d->dead_qps.emplace_back(static_cast<FakeQp*>(qp));
  d->graveyard_lock.unlock();
  return 0;
}
inline int post_send(Qp* qp, SendWr* wr, SendWr** bad_wr) {
  auto* q = static_cast<FakeQp*>(qp);
  for (; wr; wr = wr->next) {
    if (!q->sq_sig_all && !(wr->send_flags & send_flags::signaled)) continue;
    Wc wc{};
    wc.wr_id = wr->wr_id;
    wc.status = WcStatus::success;
    wc.opcode = WcOpcode::send;
    wc.qp_num = qp->qp_num;
    if (!complete(static_cast<FakeCq*>(qp->send_cq), wc)) {
      *bad_wr = wr;
      return ENOMEM;
    }
  }
  return 0;
}
inline int post_recv(Qp*, RecvWr*, RecvWr**) {
  return 0;
}
inline int poll_cq(Cq* cq, int n, Wc* wc) {
  auto* f = static_cast<FakeCq*>(cq);
  f->lock.lock();
  int got = 0;
  for (; got < n && f->count; ++got, --f->count) {
    wc[got] = f->ring[f->head];
    f->head = (f->head + 1) % f->ring.size();
  }
  f->lock.unlock();
  return got;
}
inline int req_notify_cq(Cq* cq, bool) {
  static_cast<FakeCq*>(cq)->armed.store(true, std::memory_order_release);
  return 0;
}
inline int create_ah(Pd* pd, const AhAttr*, Ah** out) {
  *out = new FakeAh();
  dev_of(pd->device)->live_ahs++;
  return 0;
}
inline int destroy_ah(Ah* ah) {
  dev_of(ah->device)->live_ahs--;
  delete static_cast<FakeAh*>(ah);
  return 0;
}
inline int create_srq(Pd* pd, const SrqInitAttr* init, Srq** out) {
  auto* srq = new FakeSrq();
  srq->max_wr = init->max_wr;
  srq->limit = init->srq_limit;
  dev_of(pd->device)->live_srqs++;
  *out = srq;
  return 0;
}
inline int modify_srq(Srq* srq, uint32_t max_wr, uint32_t limit, uint32_t) {
  static_cast<FakeSrq*>(srq)->max_wr = max_wr;
  static_cast<FakeSrq*>(srq)->limit = limit;
  return 0;
}
inline int destroy_srq(Srq* srq) {
  FakeDevice* d = dev_of(srq->device);
  d->live_srqs--;
  if (!d->graveyard) {
    delete static_cast<FakeSrq*>(srq);
    return 0;
  }
  srq->event_handler = zombie_event;
  srq->dying = 0;
  d->graveyard_lock.lock();
  d->dead_srqs.emplace_back(static_cast<FakeSrq*>(srq));
  d->graveyard_lock.unlock();
  return 0;
}
inline int post_srq_recv(Srq*, RecvWr*, RecvWr**) {
  return 0;
}

}  // namespace ops

inline DeviceOps full_ops() {
  DeviceOps o{};
  o.query_device = ops::query_device;
  o.query_port = ops::query_port;
  o.query_gid = ops::query_gid;
  o.alloc_pd = ops::alloc_pd;
  o.dealloc_pd = ops::dealloc_pd;
  o.reg_mr = ops::reg_mr;
  o.dereg_mr = ops::dereg_mr;
  o.create_cq = ops::create_cq;
  o.destroy_cq = ops::destroy_cq;
  o.create_qp = ops::create_qp;
  o.modify_qp = ops::modify_qp;
  o.query_qp = ops::query_qp;
  o.destroy_qp = ops::destroy_qp;
  o.post_send = ops::post_send;
  o.post_recv = ops::post_recv;
  o.poll_cq = ops::poll_cq;
  o.req_notify_cq = ops::req_notify_cq;
  o.create_ah = ops::create_ah;
  o.destroy_ah = ops::destroy_ah;
  o.create_srq = ops::create_srq;
  o.modify_srq = ops::modify_srq;
  o.destroy_srq = ops::destroy_srq;
  o.post_srq_recv = ops::post_srq_recv;
  return o;
}

// Only the mandatory ops: every optional consumer call gets EOPNOTSUPP.
inline DeviceOps mandatory_ops() {
  DeviceOps o = full_ops();
  o.create_ah = nullptr;
  o.destroy_ah = nullptr;
  o.create_srq = nullptr;
  o.modify_srq = nullptr;
  o.destroy_srq = nullptr;
  o.post_srq_recv = nullptr;
  return o;
}

inline FakeDevice::FakeDevice(const char* n) {
  std::strncpy(name, n, sizeof name - 1);
  table = full_ops();
  ops = &table;
}

inline std::unique_ptr<FakeDevice> make_device(const char* name) {
  return std::make_unique<FakeDevice>(name);
}

// Polls `pred` until it holds; gives up after a generous liveness bound so that a broken
// build fails instead of hanging. Never used to assert on time.
template <class Pred>
bool eventually(Pred pred) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > give_up) return pred();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return true;
}

// Waits until a CQ is neither queued nor in a handler and has no event pending.
inline bool cq_idle(Cq* cq) {
  return eventually([&] {
    return cq->events.pending.load() == 0 && cq->events.scheduled.load() == 0 &&
           cq->events.in_handler.load() == 0;
  });
}

}  // namespace dverbs::mid::fake
