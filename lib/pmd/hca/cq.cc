// Completion queues: engines push, any thread polls (MPMC ring), and an armed CQ raises
// one completion event through the midlayer (never calling the consumer itself).
//
// Capacity: the ring is a power of two and every cell holds a completion, so the cqe
// reported is the ring's size. As rdma-core's providers do, a request is rounded up and
// the rounded value reported; what is reported is then exactly what fits: completion
// cqe + 1 without a poll in between is an overrun (IBA 11.4.2.1).
//
// Resize (ibv_resize_cq): the ring is replaced by a new one while engines keep pushing.
// The gate of objects.h (Cq::pushers, Cq::pollers, Cq::resizing) stops pushers and
// pollers, on their side with a spin of a few stores, never a sleep; the entries present
// move to the new ring in order, so none is lost, duplicated or reordered.
#include <rte_cycles.h>
#include <sched.h>

#include <cerrno>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/ops.h"

namespace dverbs::pmd::hca {

namespace {

// Context: any thread, never sleeps (spins only while a resize moves the entries).
// `side` is cq.pushers or cq.pollers.
void gate_enter(const Cq& cq, std::atomic<uint32_t>& side) noexcept {
  for (;;) {
    side.fetch_add(1, std::memory_order_seq_cst);
    if (!cq.resizing.load(std::memory_order_seq_cst)) return;
    side.fetch_sub(1, std::memory_order_release);
    while (cq.resizing.load(std::memory_order_acquire)) base::cpu_relax();
  }
}
void gate_leave(std::atomic<uint32_t>& side) noexcept {
  side.fetch_sub(1, std::memory_order_release);
}

// A ring of at least `cqe` entries (at least 2: MpmcRing's minimum), or nullptr.
std::unique_ptr<MpmcQueue<Cqe>> make_ring(uint32_t cqe) {
  std::unique_ptr<MpmcQueue<Cqe>> r(new (std::nothrow) MpmcQueue<Cqe>());
  if (!r || !r->init(cqe)) return nullptr;
  return r;
}

}  // namespace

void cq_push(Cq& cq, const Wc& wc, bool solicited) noexcept {
  // The completion timestamp: the TSC, one clock every lcore shares (an instruction, no
  // system call), read where the packet that completes the work request is handled.
  const Cqe e{wc, rte_rdtsc()};
  gate_enter(cq, cq.pushers);
  const bool pushed = cq.ring->push(e);
  gate_leave(cq.pushers);
  if (!pushed) [[unlikely]] {
    // CQ overrun (IBA 11.4.2.1, C11-34): an affiliated asynchronous error; the completion
    // is lost, the consumer learns it from IBV_EVENT_CQ_ERR.
    if (cq.overflows.fetch_add(1, std::memory_order_relaxed) == 0) {
      mid::dispatch_cq_event(cq, EventType::cq_err);
    }
    cq.hca->counters().cq_overflow.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Notification (IBA 11.4.2.2): "next" fires on any completion, "solicited" on a
  // solicited receive or any error completion.
  uint32_t a = cq.armed.load(std::memory_order_acquire);
  if (a == 2 || (a == 1 && (solicited || wc.status != WcStatus::success))) {
    if (cq.armed.exchange(0, std::memory_order_acq_rel) != 0) mid::cq_comp_event(&cq);
  }
}

int create_cq(mid::Device* d, uint32_t cqe, mid::Cq** out) {
  Device& dev = *static_cast<Device*>(d);
  if (dev.retired()) return ENODEV;
  if (cqe == 0 || cqe > kMaxCqe) return EINVAL;  // kMaxCqe is a power of two
  Cq* cq = new (std::nothrow) Cq();
  if (!cq) return ENOMEM;
  cq->ring = make_ring(cqe);
  if (!cq->ring) {
    delete cq;
    return ENOMEM;
  }
  cq->hca = &dev;
  cq->cqe = cq->ring->capacity();
  *out = cq;
  return 0;
}

int poll_cq(mid::Cq* c, int n, Wc* wc) {
  Cq* cq = to_cq(c);
  if (n < 0) return -EINVAL;
  cq->hca->progress();
  gate_enter(*cq, cq->pollers);
  int i = 0;
  Cqe e;
  for (; i < n && cq->ring->pop(&e); i++) wc[i] = e.wc;
  gate_leave(cq->pollers);
  return i;
}

int poll_cq_ts(mid::Cq* c, int n, Wc* wc, uint64_t* ts) {
  Cq* cq = to_cq(c);
  if (n < 0) return -EINVAL;
  cq->hca->progress();
  gate_enter(*cq, cq->pollers);
  int i = 0;
  Cqe e;
  for (; i < n && cq->ring->pop(&e); i++) {
    wc[i] = e.wc;
    ts[i] = e.ts;
  }
  gate_leave(cq->pollers);
  return i;
}

// The caller (the midlayer) serialises control verbs on one CQ; pushers and pollers run.
int resize_cq(mid::Cq* c, uint32_t cqe, uint32_t held) {
  Cq& cq = *to_cq(c);
  if (cqe == 0 || cqe > kMaxCqe) return EINVAL;
  std::unique_ptr<MpmcQueue<Cqe>> next = make_ring(cqe);  // allocated before the gate closes
  if (!next) return ENOMEM;
  cq.resizing.store(1, std::memory_order_seq_cst);
  while (cq.pushers.load(std::memory_order_seq_cst) != 0 ||
         cq.pollers.load(std::memory_order_seq_cst) != 0)
    sched_yield();
  // Nothing moves now: the backlog is exact. Fewer entries than present is refused (as the
  // man page allows), judged by the request, not by the rounded-up ring.
  int rc = 0;
  if (cq.ring->size_approx() + held > cqe) {
    rc = EINVAL;
  } else {
    Cqe e;
    while (cq.ring->pop(&e)) next->push(e);  // fits: size >= cqe >= backlog, stamps kept
    cq.ring.swap(next);
    cq.cqe = cq.ring->capacity();
  }
  cq.resizing.store(0, std::memory_order_release);
  return rc;  // `next` (the old ring, or the unused one) is freed here
}

}  // namespace dverbs::pmd::hca
