// The floor of any transport on a port (the `rate` baseline): per burst of kBurst frames,
// allocate mbufs, write Ethernet/IPv4/UDP headers (with the IPv4 checksum) and the payload,
// rte_eth_tx_burst, rte_eth_rx_burst, copy each payload out to a destination buffer, free.
// Runs on the EAL main lcore of its own process, on the same kind of port the transport
// uses (DVERBS_PORT, default the built-in net_ring loopback), opened through lib/pmd/net.
#include <cstring>
#include <string>
#include <vector>

#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_udp.h>

#include "perf/scenarios.h"
#include "pmd/hca/engine.h"
#include "pmd/net/config.h"
#include "pmd/net/eal.h"
#include "pmd/net/port.h"

namespace dverbs::perf {

namespace {

constexpr uint16_t kBurst = pmd::hca::Engine::kBurst;  // the transport's RX burst
constexpr uint32_t kHdr = sizeof(rte_ether_hdr) + sizeof(rte_ipv4_hdr) + sizeof(rte_udp_hdr);

void write_frame(rte_mbuf* m, const pmd::net::Port& port, const uint8_t* payload, uint32_t len,
                 uint16_t id) {
  uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
  auto* eth = reinterpret_cast<rte_ether_hdr*>(p);
  std::memcpy(&eth->dst_addr, port.mac(), 6);
  std::memcpy(&eth->src_addr, port.mac(), 6);
  eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
  auto* ip = reinterpret_cast<rte_ipv4_hdr*>(eth + 1);
  ip->version_ihl = RTE_IPV4_VHL_DEF;
  ip->type_of_service = 0;
  ip->total_length = rte_cpu_to_be_16(uint16_t(sizeof(rte_ipv4_hdr) + sizeof(rte_udp_hdr) + len));
  ip->packet_id = rte_cpu_to_be_16(id);
  ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
  ip->time_to_live = 64;
  ip->next_proto_id = IPPROTO_UDP;
  ip->hdr_checksum = 0;
  ip->src_addr = rte_cpu_to_be_32(port.ip());
  ip->dst_addr = rte_cpu_to_be_32(port.ip());
  ip->hdr_checksum = rte_ipv4_cksum(ip);
  auto* udp = reinterpret_cast<rte_udp_hdr*>(ip + 1);
  udp->src_port = rte_cpu_to_be_16(49152);
  udp->dst_port = rte_cpu_to_be_16(4791);
  udp->dgram_len = rte_cpu_to_be_16(uint16_t(sizeof(rte_udp_hdr) + len));
  udp->dgram_cksum = 0;
  std::memcpy(p + kHdr, payload, len);
  m->data_len = uint16_t(kHdr + len);
  m->pkt_len = kHdr + len;
}

}  // namespace

int child_raw(const Options& o) {
  pmd::net::Config cfg;
  std::string err;
  if (!pmd::net::config_from_env(&cfg, &err)) die(err);
  if (pmd::net::eal_init(cfg, &err) != 0) die(err);
  auto port = pmd::net::Port::open(cfg, 1, &err);
  if (!port) die(err);
  const uint16_t pid = port->port_id();
  rte_mempool* pool = port->pool();
  const uint32_t size = o.size;
  if (kHdr + size > port->mtu() + RTE_ETHER_HDR_LEN) die("--size too large for the port");
  std::vector<uint8_t> src(size, 0x5a), dst(size, 0);

  rte_mbuf* tx[kBurst];
  rte_mbuf* rx[kBurst];
  uint64_t received = 0, count0 = 0;
  uint16_t id = 0;
  bool measuring = false;
  const auto t_start = Clock::now();
  auto t0 = t_start;
  double seconds = 0, cpu0 = 0;
  for (;;) {
    if (rte_pktmbuf_alloc_bulk(pool, tx, kBurst) != 0) die("mbuf pool empty");
    for (uint16_t i = 0; i < kBurst; i++) write_frame(tx[i], *port, src.data(), size, id++);
    const uint16_t sent = rte_eth_tx_burst(pid, 0, tx, kBurst);
    if (sent < kBurst) rte_pktmbuf_free_bulk(tx + sent, kBurst - sent);
    const uint16_t n = rte_eth_rx_burst(pid, 0, rx, kBurst);
    for (uint16_t i = 0; i < n; i++)
      std::memcpy(dst.data(), rte_pktmbuf_mtod_offset(rx[i], const uint8_t*, kHdr), size);
    asm volatile("" : : "r"(dst.data()) : "memory");
    rte_pktmbuf_free_bulk(rx, n);
    received += n;

    const auto now = Clock::now();
    if (!measuring &&
        (o.messages || std::chrono::duration<double>(now - t_start).count() >= o.warmup)) {
      measuring = true;
      t0 = now;
      count0 = received;
      cpu0 = process_cpu_seconds();
    }
    if (measuring) {
      seconds = std::chrono::duration<double>(now - t0).count();
      if (o.messages ? received - count0 >= o.messages : seconds >= o.duration) break;
    }
  }
  const double msgs = double(received - count0);
  Result r;
  r["messages"] = {msgs};
  r["seconds"] = {seconds};
  r["raw_rate"] = {msgs / seconds};
  r["process_cpu"] = {process_cpu_seconds() - cpu0};
  r["tx_dropped"] = {double(port->stats().tx_dropped.load())};
  print_result(r);
  port.reset();
  return 0;
}

}  // namespace dverbs::perf
