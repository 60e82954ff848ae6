// Configuration of the embedded soft HCA, from the DVERBS_* environment (ARCHITECTURE.md,
// "External contract"). Every bad value yields one readable line naming the variable.
#pragma once

#include <cstdint>
#include <string>

namespace dverbs::pmd::net {

// DVERBS_FAULT=loss=P,dup=P,reorder=P,corrupt=P,seed=N — applied on the receive side.
struct FaultSpec {
  double loss = 0, dup = 0, reorder = 0, corrupt = 0;
  uint64_t seed = 1;
  bool enabled() const { return loss > 0 || dup > 0 || reorder > 0 || corrupt > 0; }
};

struct Config {
  std::string port;            // DVERBS_PORT devargs; empty = built-in loopback (net_ring)
  uint32_t ip = 0x0a000001;    // DVERBS_IP, host byte order (default 10.0.0.1)
  uint8_t prefix_len = 24;
  uint8_t mac[6] = {};         // DVERBS_MAC
  bool mac_set = false;
  int lcores = 1;              // DVERBS_LCORES: dedicated transport lcores, 0 = inline
  std::string eal_args;        // DVERBS_EAL: extra EAL arguments, space separated
  FaultSpec fault;             // DVERBS_FAULT
  std::string pcap;            // DVERBS_PCAP: pcapng output path
  int log_level = 4;           // DVERBS_LOG: 1 (critical) … 8 (debug); names accepted too
};

// Reads every DVERBS_* variable. On a bad value returns false and sets *err to one line,
// e.g. "DVERBS_IP: '10.0.0.300/24' is not an IPv4 address/prefix".
// Context: process context.
bool config_from_env(Config* cfg, std::string* err);

// Parsers used by config_from_env and dverbs-run's option checks.
bool parse_ip_prefix(const std::string& s, uint32_t* ip, uint8_t* prefix);
bool parse_mac(const std::string& s, uint8_t mac[6]);
bool parse_fault(const std::string& s, FaultSpec* out, std::string* err);

}  // namespace dverbs::pmd::net
