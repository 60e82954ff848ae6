// Configuration of the embedded soft HCA, from the DVERBS_* environment (ARCHITECTURE.md,
// "External contract"). Every bad value yields one readable line naming the variable.
#pragma once

#include <cstdint>
#include <string>

#include "pmd/net/cc_config.h"

namespace dverbs::pmd::net {

constexpr int kMaxLcores = 64;   // upper bound of DVERBS_LCORES
constexpr int kLcoresAuto = -2;  // DVERBS_LCORES=auto

// DVERBS_FAULT=loss=P,dup=P,reorder=P,corrupt=P,seed=N — applied on the receive side.
struct FaultSpec {
  double loss = 0, dup = 0, reorder = 0, corrupt = 0;
  uint64_t seed = 1;
  bool enabled() const { return loss > 0 || dup > 0 || reorder > 0 || corrupt > 0; }
};

struct Config {
  std::string port;          // DVERBS_PORT devargs; empty = built-in loopback (net_ring)
  uint32_t ip = 0x0a000001;  // DVERBS_IP, host byte order (default 10.0.0.1)
  uint8_t prefix_len = 24;
  uint8_t mac[6] = {};  // DVERBS_MAC
  bool mac_set = false;
  // DVERBS_LCORES: dedicated transport lcores, 0 = inline progress, kLcoresAuto (the
  // default) = one lcore when the process can give it a CPU of its own, else inline
  // (net::choose_lcores_auto, resolved when the device is created).
  int lcores = kLcoresAuto;
  // Inline progress only: a backing-off helper thread runs the engines while the
  // application is not calling dverbs. dverbsd turns it off (it runs with
  // DVERBS_DAEMON=dverbsd): its doorbell thread polls every CQ on every pass, which drives the
  // transport, and a third thread on a small machine only takes CPU from it.
  bool inline_helper = true;
  std::string eal_args;  // DVERBS_EAL: extra EAL arguments, space separated
  FaultSpec fault;       // DVERBS_FAULT
  std::string pcap;      // DVERBS_PCAP: pcapng output path
  // DVERBS_TELEMETRY=on: DPDK's telemetry socket with the /dverbs/... endpoints (dverbs-stat,
  // dpdk-telemetry.py). Off by default: it is a socket and a thread per process.
  bool telemetry = false;
  DcqcnParams cc;  // DVERBS_CC: congestion control (DCQCN), off by default
  int log_level = 5;     // DVERBS_LOG: RTE_LOG_* 1 (emergency) … 8 (debug), 5 = warning;
                         // names accepted too
};


// Reads every DVERBS_* variable. A variable that is unset or empty leaves its field of *cfg
// as it was (a fresh Config holds the defaults). On a bad value returns false, leaves *cfg
// untouched and sets *err to one line naming the variable and the value, e.g.
// "DVERBS_IP: '10.0.0.300/24' is not an IPv4 address/prefix (a.b.c.d/len)".
// Context: process context.
bool config_from_env(Config* cfg, std::string* err);

// Parsers used by config_from_env and dverbs-run's option checks. Each returns false (or -1)
// on a malformed value and then leaves its outputs untouched.

// Context: any thread. "a.b.c.d/len" (len 1..32) or "a.b.c.d" (prefix 24); *ip in host
// byte order.
bool parse_ip_prefix(const std::string& s, uint32_t* ip, uint8_t* prefix);
// Context: any thread. "aa:bb:cc:dd:ee:ff" (or '-' separated), two hex digits per byte.
bool parse_mac(const std::string& s, uint8_t mac[6]);
// Context: any thread, may allocate. "loss=P,dup=P,reorder=P,corrupt=P,seed=N", P in [0,1],
// N decimal or 0x-hex; keys in any order, each optional; "" or "off" = no faults. *err gets
// the reason without the variable name, e.g. "unknown key 'los' (expected loss, dup,
// reorder, corrupt, seed)".
bool parse_fault(const std::string& s, FaultSpec* out, std::string* err);
// Context: any thread. DVERBS_LOG syntax: 1..8 or emergency|alert|critical|error|warning|
// notice|info|debug (also emerg, crit, err, warn; any case). Returns the RTE_LOG_* level or -1.
int parse_log_level(const std::string& s);
// Context: any thread. DVERBS_LCORES syntax: decimal 0..kMaxLcores, or "auto". Returns the
// number, kLcoresAuto, or -1.
int parse_lcores(const std::string& s);

}  // namespace dverbs::pmd::net
