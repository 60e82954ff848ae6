// The traffic generator of the throughput scenarios (rate, bandwidth, scaling, qps): keeps
// windows of work requests in flight on a set of QPs and counts what completes.
//
// Thread safety: one thread (the child's main thread) runs it; the transport runs on its
// lcores or, with inline progress, inside this thread's post/poll calls.
#pragma once

#include <cstdint>
#include <vector>

#include "dverbs/dverbs.h"

namespace dverbs::perf {

// Work requests are posted in groups of `group` WRs whose last one is signaled, so that a
// completion accounts for a whole group. A flow is one sending QP (and, for SEND, its
// receiving peer). At most `per_flow_window` WRs of a flow and `total_window` WRs overall
// are in flight; flows with room are served round-robin, so with many flows every QP gets
// traffic in turn.
struct Traffic {
  WrOpcode op = WrOpcode::send;
  uint32_t size = 64;
  uint32_t group = 16;
  uint32_t per_flow_window = 256;
  uint32_t total_window = 256;
  uint32_t rq_depth = 512;  // receives kept posted per receiving QP (SEND)
  bool inline_data = true;
  bool lazy = false;  // sleep ~20 µs when a pass found nothing to do

  // Buffers: every flow sends from send_addr (lkey) and SENDs land in recv_addr
  // (recv_lkey); WRITE/READ target remote_addr (rkey). Each op moves `size` bytes at
  // offset (seq % slots) * size so large transfers walk the whole buffer.
  uint64_t send_addr = 0, recv_addr = 0, remote_addr = 0;
  uint32_t lkey = 0, recv_lkey = 0, rkey = 0;
  uint32_t slots = 1;

  Cq* send_cq = nullptr;
  Cq* recv_cq = nullptr;
  struct Flow {
    Qp* qp = nullptr;
    Qp* peer = nullptr;  // receiver of SENDs (posts receives), or nullptr
    uint64_t posted = 0, completed = 0, received = 0, recv_posted = 0;
    uint32_t repost = 0;
    bool queued = false, touched = false;
  };
  std::vector<Flow> flows;
};

struct TrafficResult {
  uint64_t messages = 0;  // counted in the measured interval
  uint64_t total = 0;     // counted over the whole run (warm-up and drain included)
  double seconds = 0;
  double process_cpu = 0;  // CPU seconds of the whole process in the interval
  double lcore_cpu = 0;    // CPU seconds of the transport lcores in the interval
  double rate() const { return seconds > 0 ? double(messages) / seconds : 0; }
};

// Runs the traffic: warm-up, then `duration` seconds (or exactly `messages` messages when
// non-zero), then drains what is in flight. Messages are counted at the receiver for SEND
// (receive completions) and at the sender otherwise (acknowledged WRs). Exits on an error
// completion or when nothing completes for 5 s.
TrafficResult run_traffic(Traffic& t, double warmup, double duration, uint64_t messages = 0);

}  // namespace dverbs::perf
