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

// Counters are bumped once per burst (relaxed) by the queue owners; any thread may read them.
struct PortStats {
  // rx_frames counts frames taken from the device, before fault injection.
  std::atomic<uint64_t> rx_frames{0}, tx_frames{0}, rx_dropped_malformed{0};
  std::atomic<uint64_t> fault_lost{0}, fault_duplicated{0}, fault_reordered{0}, fault_corrupted{0};
  std::atomic<uint64_t> arp_requests_sent{0}, arp_replies_sent{0}, tx_dropped_no_neigh{0};
  std::atomic<uint64_t> tx_dropped{0};  // refused by the device (queue full), freed by tx_burst
};

class Capture;

class Port {
 public:
  // The MTU we ask for: a 4096-byte RoCE payload plus IPv4, UDP, BTH, the largest extension
  // headers and ICRC (4160) fits with room to spare. Devices that refuse it keep a smaller
  // mtu(); the transport clamps its path MTU to what fits.
  static constexpr uint32_t kWantMtu = 4096 + 128;
  // mbuf data room: any frame up to kWantMtu (+ Ethernet and a VLAN tag) fits one segment.
  static constexpr uint16_t kMbufDataRoom = RTE_PKTMBUF_HEADROOM + 4096 + 256;
  static constexpr unsigned kPoolSize = 16383, kPoolCache = 256;
  static constexpr uint16_t kRingSize = 1024;  // loopback ring and descriptor count per queue
  // rx_burst hands the device at most this many frames per call when faults are on.
  static constexpr uint16_t kMaxFaultBurst = 64;

  // Probes the devargs (or creates the loopback net_ring), configures nb_queues queue
  // pairs and starts the port. Returns nullptr and sets *err to one line naming
  // DVERBS_PORT on failure. Context: process context, after eal_init().
  static std::unique_ptr<Port> open(const Config& cfg, uint16_t nb_queues, std::string* err);
  ~Port();

  // Receives up to n frames. With DVERBS_FAULT the frames pass the fault injector first (a
  // frame held back for reordering comes out on the next call even if nothing arrives);
  // with DVERBS_PCAP each returned frame is captured (one writev per burst).
  // Context: owner of queue q, never sleeps; no allocation except mbufs, no syscalls except
  // the capture write.
  uint16_t rx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept;
  // Sends up to n frames; frees what the PMD refused (counted in tx_dropped) so the caller
  // never leaks. With DVERBS_PCAP the frames actually sent are captured.
  // Context: owner of queue q, never sleeps; same rules as rx_burst.
  uint16_t tx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept;
  // Context: any thread, never sleeps (mempool per-lcore cache or lock-free ring).
  rte_mbuf* alloc_mbuf() noexcept;

  // Accessors. Context: any thread, never sleeps.
  uint16_t port_id() const { return port_id_; }
  uint16_t nb_queues() const { return nb_queues_; }  // may be fewer than asked (device max)
  const uint8_t* mac() const { return mac_; }
  uint32_t ip() const { return ip_; }         // host byte order
  uint8_t prefix_len() const { return prefix_len_; }
  uint32_t mtu() const { return mtu_; }       // Ethernet MTU (payload bytes of a frame)
  bool link_up() const;                       // rte_eth_link_get_nowait
  bool is_loopback() const { return loopback_; }
  rte_mempool* pool() const { return pool_; }
  PortStats& stats() { return stats_; }
  const std::string& name() const;            // ethdev device name, e.g. "net_memif0"
  uint64_t tx_offloads() const;               // RTE_ETH_TX_OFFLOAD_* enabled (MULTI_SEGS if able)
  uint64_t capture_dropped() const;           // frames DVERBS_PCAP could not record

 private:
  Port() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  uint16_t port_id_ = 0, nb_queues_ = 0;
  uint8_t mac_[6] = {};
  uint32_t ip_ = 0, mtu_ = 1500;
  uint8_t prefix_len_ = 24;
  bool loopback_ = false;
  rte_mempool* pool_ = nullptr;
  PortStats stats_;
};

}  // namespace dverbs::pmd::net
