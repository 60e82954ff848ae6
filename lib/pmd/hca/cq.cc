// Completion queues: engines push, any thread polls (MPMC ring), and an armed CQ raises
// one completion event through the midlayer (never calling the consumer itself).
#include <rte_cycles.h>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"

namespace dverbs::pmd::hca {

void cq_push(Cq& cq, const Wc& wc, bool solicited) noexcept {
  // The completion timestamp: the TSC, one clock every lcore shares (an instruction, no
  // system call), read where the packet that completes the work request is handled.
  if (!cq.ring.push(Cqe{wc, rte_rdtsc()})) [[unlikely]] {
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

}  // namespace dverbs::pmd::hca
