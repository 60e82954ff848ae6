// DCQCN: see dcqcn.h.
#include "pmd/hca/dcqcn.h"

#include <algorithm>
#include <cmath>

namespace dverbs::pmd::hca {

namespace {
// Stages handled per on_time call at most: a QP idle for long resumes from a reset timer
// rather than replaying every missed stage.
constexpr int kMaxCatchUp = 64;
}  // namespace

void DcqcnRate::reset(const DcqcnParams& p, uint64_t now_ns) {
  rc_ = rt_ = p.line_rate_mbps;
  alpha_ = 1;
  next_send_ns_ = 0;
  alpha_due_ns_ = now_ns + p.alpha_period_ns;
  timer_due_ns_ = now_ns + p.increase_period_ns;
  bytes_ = 0;
  t_stages_ = b_stages_ = 0;
  cnps_ = 0;
}

void DcqcnRate::on_cnp(const DcqcnParams& p, uint64_t now_ns) {
  cnps_++;
  rt_ = rc_;
  rc_ = std::max(rc_ * (1 - alpha_ / 2), p.min_rate_mbps);
  alpha_ = (1 - p.g) * alpha_ + p.g;
  // The cut restarts every clock: alpha's, the increase timer and the byte counter.
  alpha_due_ns_ = now_ns + p.alpha_period_ns;
  timer_due_ns_ = now_ns + p.increase_period_ns;
  bytes_ = 0;
  t_stages_ = b_stages_ = 0;
}

void DcqcnRate::increase(const DcqcnParams& p) {
  const uint32_t hi = std::max(t_stages_, b_stages_), lo = std::min(t_stages_, b_stages_);
  if (hi < p.fast_recovery) {
    // Fast recovery: halfway back to the rate before the cut.
  } else if (lo > p.fast_recovery) {
    rt_ += (lo - p.fast_recovery) * p.rhai_mbps;  // hyper increase
  } else {
    rt_ += p.rai_mbps;  // additive increase
  }
  rt_ = std::min(rt_, p.line_rate_mbps);
  rc_ = std::min((rt_ + rc_) / 2, p.line_rate_mbps);
}

void DcqcnRate::on_sent(const DcqcnParams& p, uint64_t bytes, uint64_t now_ns) {
  if (rc_ >= p.line_rate_mbps) return;  // not limited: no pacing, no stages to climb
  // bytes * 8 bits at rc_ Mbit/s = bytes * 8000 / rc_ ns.
  next_send_ns_ = std::max(next_send_ns_, now_ns) + uint64_t(double(bytes) * 8000.0 / rc_);
  bytes_ += bytes;
  if (bytes_ >= p.increase_bytes) {
    bytes_ = 0;
    b_stages_++;
    increase(p);
  }
}

void DcqcnRate::on_time(const DcqcnParams& p, uint64_t now_ns) {
  for (int i = 0; i < kMaxCatchUp && now_ns >= alpha_due_ns_; i++) {
    alpha_ = (1 - p.g) * alpha_;
    alpha_due_ns_ += p.alpha_period_ns;
  }
  if (now_ns >= alpha_due_ns_) alpha_due_ns_ = now_ns + p.alpha_period_ns;
  if (rc_ >= p.line_rate_mbps) {
    timer_due_ns_ = now_ns + p.increase_period_ns;  // nothing to climb
    return;
  }
  for (int i = 0; i < kMaxCatchUp && now_ns >= timer_due_ns_; i++) {
    t_stages_++;
    increase(p);
    timer_due_ns_ += p.increase_period_ns;
  }
  if (now_ns >= timer_due_ns_) timer_due_ns_ = now_ns + p.increase_period_ns;
}

bool dcqcn_mark(const DcqcnParams& p, uint32_t backlog, uint32_t rnd) {
  if (backlog < p.kmin) return false;
  if (backlog >= p.kmax) return true;
  const double prob = p.pmax * double(backlog - p.kmin) / double(p.kmax - p.kmin);
  return double(rnd) < prob * 4294967296.0;
}

}  // namespace dverbs::pmd::hca
