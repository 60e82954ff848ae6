// A DPDK ethdev port opened from any devargs string, with its mbuf pool, one RX and one
// TX queue per transport lcore, receive-side fault injection, pcapng capture, and ARP.
//
// Thread safety: queue q is used by one thread at a time (its owner lcore, or the inline
// progress holder); everything else is process-context setup.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <rte_mbuf.h>

#include "pmd/net/config.h"

namespace dverbs::pmd::net {

struct PortStats {
  std::atomic<uint64_t> rx_frames{0}, tx_frames{0}, rx_dropped_malformed{0};
  std::atomic<uint64_t> fault_lost{0}, fault_duplicated{0}, fault_reordered{0}, fault_corrupted{0};
  std::atomic<uint64_t> arp_requests_sent{0}, arp_replies_sent{0}, tx_dropped_no_neigh{0};
};

class Port {
 public:
  // Probes the devargs (or creates the loopback net_ring), configures nb_queues queue
  // pairs and starts the port. Returns nullptr and sets *err to one line naming
  // DVERBS_PORT on failure. Context: process context, after eal_init().
  static std::unique_ptr<Port> open(const Config& cfg, uint16_t nb_queues, std::string* err);
  ~Port();

  // Context: owner of queue q, never sleeps. Fault injection and capture happen here.
  uint16_t rx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept;
  // Sends up to n frames; frees what the PMD refused (counted) so the caller never leaks.
  uint16_t tx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept;
  // Context: any thread, never sleeps (mempool per-lcore cache or lock-free ring).
  rte_mbuf* alloc_mbuf() noexcept;

  uint16_t port_id() const { return port_id_; }
  uint16_t nb_queues() const { return nb_queues_; }
  const uint8_t* mac() const { return mac_; }
  uint32_t ip() const { return ip_; }         // host byte order
  uint32_t mtu() const { return mtu_; }       // Ethernet MTU (payload bytes of a frame)
  bool link_up() const;
  bool is_loopback() const { return loopback_; }
  rte_mempool* pool() const { return pool_; }
  PortStats& stats() { return stats_; }

 private:
  Port() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  uint16_t port_id_ = 0, nb_queues_ = 0;
  uint8_t mac_[6] = {};
  uint32_t ip_ = 0, mtu_ = 1500;
  bool loopback_ = false;
  rte_mempool* pool_ = nullptr;
  PortStats stats_;
};

}  // namespace dverbs::pmd::net
