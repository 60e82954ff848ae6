// A DPDK ethdev port opened from any devargs string, with its mbuf pool, one RX and one
// TX queue per transport lcore, receive-side fault injection and pcapng capture. ARP and
// the neighbour table are in neigh.h.
//
// Empty devargs = the built-in loopback: a net_ring port (rte_eth_from_rings) with one
// ring per queue, so queue q's TX feeds queue q's RX (up to 16 queues).
//
// MTU: the largest the device accepts up to kWantMtu. Devices behind a kernel interface
// (af_packet, af_xdp: "iface=" devargs) follow that interface's MTU and never change it;
// af_packet in DPDK 22.11 stops at 1500, af_xdp at 3542 (page-sized UMEM frames). net_memif
// advertises 1500 but carries jumbo frames, so it gets kWantMtu.
//
// Thread safety: queue q is used by one thread at a time (its owner lcore, or the inline
// progress holder); everything else is process-context setup.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
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
class DpdkLogCapture;

class Port {
 public:
  // The MTU we ask for: a 4096-byte RoCE payload plus IPv4, UDP, BTH, the largest extension
  // headers and ICRC (4160) fits with room to spare. Devices that refuse it keep a smaller
  // mtu(); the transport clamps its path MTU to what fits.
  static constexpr uint32_t kWantMtu = 4096 + 128;
  // Largest mbuf data room: a frame up to kWantMtu (+ Ethernet, VLAN tag, FCS) fits one
  // segment. The pool's data room is sized to the port's mtu(), never above this.
  static constexpr uint16_t kMbufDataRoom = RTE_PKTMBUF_HEADROOM + 4096 + 256;
  static constexpr unsigned kPoolSize = 16383, kPoolCache = 256;
  static constexpr uint16_t kRingSize = 1024;  // loopback ring and descriptor count per queue
  // rx_burst hands the device at most this many frames per call when faults are on.
  static constexpr uint16_t kMaxFaultBurst = 64;

  // Probes the devargs (or creates the loopback net_ring), configures nb_queues queue
  // pairs (fewer if the device has fewer: see nb_queues()), starts the port (promiscuous
  // where possible) and opens the DVERBS_PCAP file. Returns nullptr and sets *err to one
  // line naming DVERBS_PORT (or DVERBS_PCAP) on failure, with DPDK's own reason when it gave
  // one. A memif client needs its server up: DPDK 22.11 connects when the port starts.
  // Context: process context, after eal_init().
  static std::unique_ptr<Port> open(const Config& cfg, uint16_t nb_queues, std::string* err);
  // Drains the RX queues, stops and closes the port, removes the device if open() probed
  // it, and frees the pool. Context: process context, no queue in use.
  ~Port();

  // Receives up to n frames. With DVERBS_FAULT the frames pass the fault injector first (a
  // frame held back for reordering comes out on the next call even if nothing arrives);
  // with DVERBS_PCAP each returned frame is captured as delivered, i.e. after the faults
  // (one writev per burst).
  // Context: owner of queue q, never sleeps; no allocation except mbufs, no syscalls except
  // the capture write.
  uint16_t rx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept;
  // Sends up to n frames; frees what the PMD refused (counted in tx_dropped) so the caller
  // never leaks — unless keep_unsent, where pkts[returned..n) stay the caller's
  // (backpressure: the transport holds them and stops producing). With DVERBS_PCAP the
  // frames the device took are captured. Frames may be chained mbufs when tx_offloads()
  // has RTE_ETH_TX_OFFLOAD_MULTI_SEGS (net_ring passes chains through unchanged).
  // Context: owner of queue q, never sleeps; same rules as rx_burst.
  uint16_t tx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n, bool keep_unsent = false) noexcept;
  // Context: any thread, never sleeps (mempool per-lcore cache or lock-free ring).
  rte_mbuf* alloc_mbuf() noexcept;

  // Accessors. Context: any thread, never sleeps.
  uint16_t port_id() const { return port_id_; }
  uint16_t nb_queues() const { return nb_queues_; }  // may be fewer than asked (device max)
  const uint8_t* mac() const { return mac_; }
  // Receive filtering as a NIC does: a frame is for this port when its destination is the
  // port's unicast MAC or broadcast (ARP). Multicast is accepted only for groups a QP has
  // joined, and no group can be joined yet. Context: any, never sleeps.
  // Our MAC, or a group address (broadcast; IPv4 multicast for UD multicast groups).
  bool accepts(const uint8_t* dst_mac) const noexcept {
    return std::memcmp(dst_mac, mac_, 6) == 0 || (dst_mac[0] & 1) != 0;
  }
  uint32_t ip() const { return ip_; }  // host byte order
  uint8_t prefix_len() const { return prefix_len_; }
  uint32_t mtu() const { return mtu_; }  // Ethernet MTU (payload bytes of a frame)
  bool link_up() const;                  // rte_eth_link_get_nowait
  // The interface index of the host interface the port is on (net_af_xdp, net_af_packet),
  // 0 for any other port. Context: process context (a system call).
  uint32_t host_ifindex() const;
  // A memif client connects once, when its port starts, and a server refuses it while the
  // server's own port is probed but not started yet: two processes that open their ports
  // at the same moment (UCX and MPI ranks open their devices together) leave the client's
  // link down for good. True for a memif client port whose link is down.
  // Context: any thread, may make a syscall (link state).
  bool may_retry_connect() const;
  // Restarts such a port so that it connects again. While `restarting` is set the bursts
  // below neither receive nor send (TX frames count as refused): the caller sets it, waits
  // until no engine is inside a burst (hca::Device::quiesce), calls this, then clears it.
  // Context: the device watchdog (process context).
  void retry_connect();
  void set_restarting(bool on) noexcept { restarting_.store(on, std::memory_order_seq_cst); }
  bool is_loopback() const { return loopback_; }
  // Frames sent but not yet read by the peer are lost when the port closes (net_memif),
  // so a graceful close waits for the peer to read them (hca::Device::linger).
  bool unread_tx_lost_on_close() const { return unread_tx_lost_on_close_; }
  rte_mempool* pool() const { return pool_; }
  PortStats& stats() { return stats_; }
  const std::string& name() const;   // ethdev device name, e.g. "net_memif0"
  uint64_t tx_offloads() const;      // RTE_ETH_TX_OFFLOAD_* enabled (MULTI_SEGS if able)
  uint64_t capture_dropped() const;  // frames DVERBS_PCAP could not record

 private:
  Port() = default;
  struct Impl;
  struct OpenError;
  // The steps of open(), in order; each fills *e when it fails. Context: process context.
  bool probe(const Config& cfg, uint16_t nb_queues, OpenError* e, DpdkLogCapture* log);
  bool setup_queues(OpenError* e);
  bool choose_mac(const Config& cfg, OpenError* e);
  bool start(OpenError* e);
  void setup_faults(const Config& cfg);

  std::unique_ptr<Impl> impl_;
  uint16_t port_id_ = 0, nb_queues_ = 0;
  uint8_t mac_[6] = {};
  uint32_t ip_ = 0, mtu_ = 1500;
  uint8_t prefix_len_ = 24;
  bool loopback_ = false;
  bool unread_tx_lost_on_close_ = false;
  rte_mempool* pool_ = nullptr;
  PortStats stats_;
  std::atomic<bool> restarting_{false};  // retry_connect in progress: bursts do nothing
};

}  // namespace dverbs::pmd::net
