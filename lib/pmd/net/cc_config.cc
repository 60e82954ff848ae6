#include "pmd/net/cc_config.h"

#include <cstdlib>

namespace dverbs::pmd::net {

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

}  // namespace dverbs::pmd::net
