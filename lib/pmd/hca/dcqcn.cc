// DCQCN: see dcqcn.h.
#include "pmd/hca/dcqcn.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace dverbs::pmd::hca {

namespace {
// Stages handled per on_time call at most: a QP idle for long resumes from a reset timer
// rather than replaying every missed stage.
constexpr int kMaxCatchUp = 64;
}  // namespace

bool parse_dcqcn(const std::string& spec, DcqcnParams* out, std::string* why) {
  DcqcnParams p;
  if (spec.empty() || spec == "off") {
    *out = p;
    return true;
  }
  size_t at = 0;
  std::string first = spec.substr(0, spec.find(','));
  if (first != "on") {
    *why = "must start with 'on' or be 'off'";
    return false;
  }
  p.enabled = true;
  at = first.size();
  while (at < spec.size()) {
    at++;  // the comma
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    std::string kv = spec.substr(at, end - at);
    at = end;
    size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      *why = "'" + kv + "' is not KEY=VALUE";
      return false;
    }
    std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    char* e = nullptr;
    double d = std::strtod(v.c_str(), &e);
    if (v.empty() || *e || !(d >= 0)) {
      *why = "'" + v + "' is not a non-negative number (" + k + ")";
      return false;
    }
    auto ns = [&](double us) { return uint64_t(us * 1000); };
    if (k == "g" && d > 0 && d <= 1) p.g = d;
    else if (k == "alpha_us" && d > 0) p.alpha_period_ns = ns(d);
    else if (k == "increase_us" && d > 0) p.increase_period_ns = ns(d);
    else if (k == "increase_bytes" && d >= 1) p.increase_bytes = uint64_t(d);
    else if (k == "fast_recovery") p.fast_recovery = uint32_t(d);
    else if (k == "rai_mbps") p.rai_mbps = d;
    else if (k == "rhai_mbps") p.rhai_mbps = d;
    else if (k == "min_mbps" && d > 0) p.min_rate_mbps = d;
    else if (k == "line_mbps" && d > 0) p.line_rate_mbps = d;
    else if (k == "cnp_us") p.cnp_interval_ns = ns(d);
    else if (k == "kmin") p.kmin = uint32_t(d);
    else if (k == "kmax" && d >= 1) p.kmax = uint32_t(d);
    else if (k == "pmax" && d <= 1) p.pmax = d;
    else {
      *why = "unknown key or value out of range: " + kv;
      return false;
    }
  }
  if (p.kmin >= p.kmax || p.min_rate_mbps > p.line_rate_mbps) {
    *why = "needs kmin < kmax and min_mbps <= line_mbps";
    return false;
  }
  *out = p;
  return true;
}

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
