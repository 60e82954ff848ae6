// DVERBS_CC: the congestion-control parameters (DCQCN, lib/pmd/hca/dcqcn.h), parsed with the
// other DVERBS_* variables (config.h) so that a bad value is refused before anything starts.
#pragma once

#include <cstdint>
#include <string>

namespace dverbs::pmd::net {

struct DcqcnParams {
  bool enabled = false;
  // RP (the paper's defaults, section 6 / Table 1 where it gives them).
  double g = 1.0 / 256;                 // alpha gain
  uint64_t alpha_period_ns = 55'000;    // K: alpha decays after this long without a CNP
  uint64_t increase_period_ns = 55'000; // T: rate-increase timer
  uint64_t increase_bytes = 10u << 20;  // B: rate-increase byte counter
  uint32_t fast_recovery = 5;           // F: stages of fast recovery
  double rai_mbps = 40;                 // additive increase step
  double rhai_mbps = 200;               // hyper increase step
  double min_rate_mbps = 10;            // the rate never goes below this
  double line_rate_mbps = 25'000;       // the start and the ceiling
  // NP.
  uint64_t cnp_interval_ns = 50'000;    // N: at most one CNP per QP per interval
  // CP: receive backlog in frames (the frames one RX burst returned).
  uint32_t kmin = 16, kmax = 64;
  double pmax = 0.2;
};

// DVERBS_CC: "off" (default), "on", or "on,KEY=VALUE,..." with the keys g, alpha_us,
// increase_us, increase_bytes, fast_recovery, rai_mbps, rhai_mbps, min_mbps, line_mbps,
// cnp_us, kmin, kmax, pmax. Returns false with *why on a bad value.
bool parse_dcqcn(const std::string& spec, DcqcnParams* out, std::string* why);

}  // namespace dverbs::pmd::net
