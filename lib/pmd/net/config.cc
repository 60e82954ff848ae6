// DVERBS_* environment parsing. Strict: a value is either fully understood or rejected with
// one line naming the variable, so a typo never silently runs with a default.
#include "pmd/net/config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace dverbs::pmd::net {
namespace {

bool parse_u64(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  uint64_t v = 0;
  for (char c : s) {
    unsigned d;
    if (c >= '0' && c <= '9')
      d = unsigned(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = unsigned(c - 'a' + 10);
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = unsigned(c - 'A' + 10);
    else
      return false;
    if (v > (UINT64_MAX - d) / unsigned(base)) return false;
    v = v * unsigned(base) + d;
  }
  *out = v;
  return true;
}

bool parse_probability(std::string_view s, double* out) {
  if (s.empty() || s.size() > 32) return false;
  char buf[40];
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  if (buf[0] == '-' || buf[0] == '+' || buf[0] == ' ') return false;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(buf, &end);
  if (errno != 0 || end != buf + s.size() || !std::isfinite(v) || v < 0 || v > 1) return false;
  *out = v;
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return r;
}

// Returns the value of an environment variable, or nullptr when unset or empty.
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

std::string bad(const char* var, const char* value, const std::string& why) {
  std::string line = std::string(var) + ": '" + value + "' " + why;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';  // one line, whatever the user typed
  return line;
}

}  // namespace

bool parse_ip_prefix(const std::string& s, uint32_t* ip, uint8_t* prefix) {
  std::string_view v(s);
  uint8_t len = 24;
  if (size_t slash = v.find('/'); slash != std::string_view::npos) {
    std::string_view p = v.substr(slash + 1);
    uint64_t n;
    if (p.size() > 2 || !parse_u64(p, &n) || p.starts_with("0x") || n < 1 || n > 32) return false;
    len = uint8_t(n);
    v = v.substr(0, slash);
  }
  uint32_t addr = 0;
  for (int i = 0; i < 4; ++i) {
    size_t dot = v.find('.');
    std::string_view part = i < 3 ? v.substr(0, dot) : v;
    if (i < 3 && dot == std::string_view::npos) return false;
    if (part.empty() || part.size() > 3) return false;
    unsigned octet = 0;
    for (char c : part) {
      if (c < '0' || c > '9') return false;
      octet = octet * 10 + unsigned(c - '0');
    }
    if (octet > 255) return false;
    addr = addr << 8 | octet;
    if (i < 3) v.remove_prefix(dot + 1);
  }
  *ip = addr;
  *prefix = len;
  return true;
}

bool parse_mac(const std::string& s, uint8_t mac[6]) {
  if (s.size() != 17) return false;
  uint8_t m[6];
  for (int i = 0; i < 6; ++i) {
    int hi = hex_digit(s[size_t(i) * 3]), lo = hex_digit(s[size_t(i) * 3 + 1]);
    if (hi < 0 || lo < 0) return false;
    if (i < 5 && s[size_t(i) * 3 + 2] != ':' && s[size_t(i) * 3 + 2] != '-') return false;
    m[i] = uint8_t(hi << 4 | lo);
  }
  std::memcpy(mac, m, 6);
  return true;
}

bool parse_fault(const std::string& s, FaultSpec* out, std::string* err) {
  FaultSpec spec;
  if (s.empty() || lower(s) == "off" || s == "0") {
    *out = spec;
    return true;
  }
  std::string_view rest(s);
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) continue;  // tolerate "loss=0.1," and ",,"
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      if (err) *err = "item '" + std::string(item) + "' is not key=value";
      return false;
    }
    std::string_view key = item.substr(0, eq), val = item.substr(eq + 1);
    double* prob = key == "loss"      ? &spec.loss
                   : key == "dup"     ? &spec.dup
                   : key == "reorder" ? &spec.reorder
                   : key == "corrupt" ? &spec.corrupt
                                      : nullptr;
    if (prob) {
      if (!parse_probability(val, prob)) {
        if (err)
          *err = std::string(key) + "=" + std::string(val) + " is not a probability in [0,1]";
        return false;
      }
    } else if (key == "seed") {
      if (!parse_u64(val, &spec.seed)) {
        if (err) *err = "seed=" + std::string(val) + " is not an unsigned 64-bit number";
        return false;
      }
    } else {
      if (err)
        *err =
            "unknown key '" + std::string(key) + "' (expected loss, dup, reorder, corrupt, seed)";
      return false;
    }
  }
  *out = spec;
  return true;
}

int parse_log_level(const std::string& s) {
  static constexpr const char* kNames[][2] = {
      {"emergency", "emerg"}, {"alert", "alert"},   {"critical", "crit"}, {"error", "err"},
      {"warning", "warn"},    {"notice", "notice"}, {"info", "info"},     {"debug", "debug"}};
  if (s.size() == 1 && s[0] >= '1' && s[0] <= '8') return s[0] - '0';
  std::string l = lower(s);
  for (int i = 0; i < 8; ++i)
    if (l == kNames[i][0] || l == kNames[i][1]) return i + 1;
  return -1;
}

int parse_lcores(const std::string& s) {
  if (lower(s) == "auto") return kLcoresAuto;
  uint64_t n;
  if (s.size() > 3 || s.starts_with("0x") || !parse_u64(s, &n) || n > uint64_t(kMaxLcores))
    return -1;
  return int(n);
}

bool config_from_env(Config* cfg, std::string* err) {
  Config c = *cfg;
  auto fail = [&](const char* var, const char* value, const std::string& why) {
    if (err) *err = bad(var, value, why);
    return false;
  };

  if (const char* v = env("DVERBS_PORT")) c.port = v;
  // dverbsd marks itself with DVERBS_DAEMON=dverbsd (lib/pmd/remote/driver.cc); see
  // Config::inline_helper.
  if (const char* v = env("DVERBS_DAEMON"); v && std::strcmp(v, "dverbsd") == 0)
    c.inline_helper = false;
  if (const char* v = env("DVERBS_IP")) {
    if (!parse_ip_prefix(v, &c.ip, &c.prefix_len))
      return fail("DVERBS_IP", v, "is not an IPv4 address/prefix (a.b.c.d/len, len 1..32)");
    if (c.ip == 0 || c.ip == 0xffffffff || (c.ip >> 28) == 0xe)
      return fail("DVERBS_IP", v, "is not a unicast IPv4 address");
  }
  if (const char* v = env("DVERBS_MAC")) {
    if (!parse_mac(v, c.mac))
      return fail("DVERBS_MAC", v, "is not a MAC address (aa:bb:cc:dd:ee:ff)");
    static constexpr uint8_t kZero[6] = {};
    if (c.mac[0] & 1) return fail("DVERBS_MAC", v, "is a multicast address");
    if (std::memcmp(c.mac, kZero, 6) == 0) return fail("DVERBS_MAC", v, "is the zero address");
    c.mac_set = true;
  }
  if (const char* v = env("DVERBS_LCORES")) {
    c.lcores = parse_lcores(v);
    if (c.lcores == -1)
      return fail("DVERBS_LCORES", v,
                  "is not a number of lcores in 0.." + std::to_string(kMaxLcores) +
                      " (0 = inline progress) or auto");
  }
  if (const char* v = env("DVERBS_EAL")) c.eal_args = v;
  if (const char* v = env("DVERBS_FAULT")) {
    std::string why;
    if (!parse_fault(v, &c.fault, &why)) return fail("DVERBS_FAULT", v, "is invalid: " + why);
  }
  if (const char* v = env("DVERBS_PCAP")) c.pcap = v;
  if (const char* v = env("DVERBS_CC")) {
    std::string why;
    if (!parse_dcqcn(v, &c.cc, &why)) return fail("DVERBS_CC", v, "is invalid: " + why);
  }
  if (const char* v = env("DVERBS_TELEMETRY")) {
    if (std::strcmp(v, "on") == 0 || std::strcmp(v, "1") == 0) c.telemetry = true;
    else if (std::strcmp(v, "off") == 0 || std::strcmp(v, "0") == 0) c.telemetry = false;
    else return fail("DVERBS_TELEMETRY", v, "is neither on nor off");
  }
  if (const char* v = env("DVERBS_LOG")) {
    c.log_level = parse_log_level(v);
    if (c.log_level < 0)
      return fail("DVERBS_LOG", v,
                  "is not a log level (1..8 or emergency, alert, critical, error, warning, "
                  "notice, info, debug)");
  }
  *cfg = c;
  return true;
}

}  // namespace dverbs::pmd::net
