// DCQCN congestion control (Zhu et al., "Congestion Control for Large-Scale RDMA
// Deployments", SIGCOMM 2015), the scheme RoCE NICs run, in its three roles:
//
//   CP  congestion point: the port that receives marks a RoCE packet "congestion
//       experienced" when its receive backlog is deep (RED-style: no mark below kmin
//       frames, probability rising linearly to pmax at kmax, every packet above kmax), as
//       a switch queue would set ECN CE; a CE mark set by a real switch counts the same.
//   NP  notification point: a QP that receives a CE-marked packet sends a CNP (BTH opcode
//       0x81) to the sending QP, at most one per cnp_interval.
//   RP  reaction point: the sending QP's rate. A CNP cuts it (Rt = Rc, Rc *= 1 - alpha/2,
//       alpha grows); without CNPs alpha decays every alpha_period and the rate climbs
//       back in stages driven by a timer and a byte counter: fast recovery (Rc halfway to
//       Rt) for the first `fast_recovery` stages, then additive increase (Rt += rai), then
//       hyper increase (Rt += rhai per stage beyond), never above the line rate.
//
// Everything here is arithmetic on a caller-supplied clock (nanoseconds), so the protocol
// tests drive it with a simulated one. Context: the owning engine only, never sleeps.
#pragma once

#include <cstdint>

#include "pmd/net/cc_config.h"

namespace dverbs::pmd::hca {

using DcqcnParams = net::DcqcnParams;

// The reaction point of one QP.
class DcqcnRate {
 public:
  void reset(const DcqcnParams& p, uint64_t now_ns);
  // A CNP arrived for this QP.
  void on_cnp(const DcqcnParams& p, uint64_t now_ns);
  // `bytes` left on the wire at `now_ns`: the pacer's next departure and the byte counter.
  void on_sent(const DcqcnParams& p, uint64_t bytes, uint64_t now_ns);
  // Timers: alpha decay and the rate-increase timer, due at `now_ns`.
  void on_time(const DcqcnParams& p, uint64_t now_ns);
  // May a packet leave at `now_ns`? (Pacing to the current rate.)
  bool may_send(uint64_t now_ns) const { return now_ns >= next_send_ns_; }

  double rate_mbps() const { return rc_; }
  double target_mbps() const { return rt_; }
  double alpha() const { return alpha_; }
  uint64_t cnps() const { return cnps_; }

 private:
  void increase(const DcqcnParams& p);
  double rc_ = 0, rt_ = 0, alpha_ = 1;
  uint64_t next_send_ns_ = 0;
  uint64_t alpha_due_ns_ = 0, timer_due_ns_ = 0;
  uint64_t bytes_ = 0;          // since the last byte-counter stage
  uint32_t t_stages_ = 0, b_stages_ = 0;
  uint64_t cnps_ = 0;
};

// The notification point of one QP: should a CE-marked packet arriving at `now_ns` be
// answered with a CNP?
class CnpPacer {
 public:
  bool should_send(const DcqcnParams& p, uint64_t now_ns) {
    if (sent_ && now_ns - last_ns_ < p.cnp_interval_ns) return false;
    sent_ = true;
    last_ns_ = now_ns;
    return true;
  }

 private:
  bool sent_ = false;
  uint64_t last_ns_ = 0;
};

// The congestion point: does a packet received with `backlog` frames waiting get a CE
// mark? `rnd` is a uniform random 32-bit value (the engine's generator, or a test's).
bool dcqcn_mark(const DcqcnParams& p, uint32_t backlog, uint32_t rnd);

}  // namespace dverbs::pmd::hca
