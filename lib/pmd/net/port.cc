// Port bring-up and the RX/TX burst wrappers.
//
// Loopback: rte_eth_from_rings() with one SP/SC rte_ring per queue, passed as both the RX
// and the TX ring of that queue, so queue q's TX feeds queue q's RX and queues stay
// independent (up to RTE_PMD_RING_MAX_RX_RINGS = 16). The rings are ours and freed here.
#include "pmd/net/port.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdarg>
#include <initializer_list>
#include <mutex>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <vector>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_errno.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_ring.h>

#include "pmd/net/eal.h"
#include "pmd/net/fault.h"
#include "pmd/net/pcap.h"

namespace dverbs::pmd::net {
namespace {

std::atomic<unsigned> port_seq{0};

// Warnings that say nothing to a dverbs user: memif's with --no-shconf (no secondary
// processes to serve), libxdp's when no bpffs is mounted (containers; it falls back).
constexpr std::initializer_list<const char*> kHarmless = {
    "Failed to register mp action callback", "No bpffs found",
    "Can't use dispatcher without a working bpffs",
    "Falling back to loading single prog without dispatcher"};

// libbpf and libxdp (behind net_af_xdp) print to stderr themselves: route their warnings
// into DPDK's log, so that a failed open reports them in its one line, and drop their
// info/debug chatter. Both libraries are loaded (or not) with the PMD plug-ins at EAL start.
int bpf_print(int level, const char* fmt, va_list ap) {
  if (level != 0) return 0;  // LIBBPF_WARN / LIBXDP_WARN only
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  return rte_log(RTE_LOG_WARNING, RTE_LOGTYPE_USER1, "%s", buf);
}

void route_bpf_logging() {
  static std::once_flag once;
  std::call_once(once, [] {
    using print_fn = int (*)(int, const char*, va_list);
    using set_print_fn = print_fn (*)(print_fn);
    const char* const libs[][2] = {{"libbpf.so.1", "libbpf_set_print"},
                                   {"libxdp.so.1", "libxdp_set_print"}};
    for (const auto& l : libs) {
      void* h = dlopen(l[0], RTLD_NOW | RTLD_NOLOAD);
      if (!h) continue;
      if (auto set = reinterpret_cast<set_print_fn>(dlsym(h, l[1]))) set(&bpf_print);
      dlclose(h);  // only drops our reference: the PMD keeps the library loaded
    }
  });
}

std::string errstr(int e) {
  return rte_strerror(e < 0 ? -e : e);
}

// The MTU of the kernel interface behind an "iface=" device (af_packet, af_xdp), or 0.
// Those PMDs would change the host interface's MTU; we follow it instead, as the kernel's
// own RoCE drivers do: raise it with `ip link set dev X mtu N` on both ends for jumbo frames.
uint32_t kernel_iface_mtu(const std::string& devargs) {
  size_t pos = devargs.find(',');
  while (pos != std::string::npos) {
    const size_t start = pos + 1;
    pos = devargs.find(',', start);
    const std::string kv = devargs.substr(start, pos == std::string::npos ? pos : pos - start);
    if (kv.rfind("iface=", 0) != 0) continue;
    const std::string iface = kv.substr(6);
    if (iface.empty() || iface.find('/') != std::string::npos) return 0;
    FILE* f = std::fopen(("/sys/class/net/" + iface + "/mtu").c_str(), "re");
    if (!f) return 0;
    unsigned mtu = 0;
    if (std::fscanf(f, "%u", &mtu) != 1) mtu = 0;
    std::fclose(f);
    return mtu;
  }
  return 0;
}

void add(std::atomic<uint64_t>& c, uint64_t v) {
  if (v) c.fetch_add(v, std::memory_order_relaxed);
}

}  // namespace

struct Port::Impl {
  std::string name;  // ethdev device name
  // Set when we probed the device, so we hot-unplug it on close.
  std::string remove_bus, remove_dev;
  bool have_port = false, started = false;
  bool restore_promisc = false;
  uint64_t tx_offloads = 0;
  std::vector<rte_ring*> rings;                        // loopback
  std::vector<std::unique_ptr<FaultInjector>> faults;  // per queue, empty when off
  std::unique_ptr<Capture> capture;
};

std::unique_ptr<Port> Port::open(const Config& cfg, uint16_t nb_queues, std::string* err) {
  std::unique_ptr<Port> p(new Port());
  p->impl_ = std::make_unique<Impl>();
  Impl& im = *p->impl_;
  const unsigned seq = port_seq.fetch_add(1);
  const std::string what = cfg.port.empty() ? std::string("loopback") : "'" + cfg.port + "'";
  DpdkLogCapture log;
  // One line: what failed, DPDK's own reason if it logged one, and the errno text.
  auto fail = [&](const std::string& msg, int e) -> std::unique_ptr<Port> {
    if (err) {
      const std::string detail = log.first_line(kHarmless);
      *err = "DVERBS_PORT: " + msg;
      if (!detail.empty())
        *err += ": " + detail + (e ? " (" + errstr(e) + ")" : "");
      else if (e)
        *err += ": " + errstr(e);
      for (char& c : *err)
        if (c == '\n') c = ' ';
    }
    log.discard();
    return nullptr;  // ~Port undoes whatever was done
  };

  if (!eal_ready()) return fail("cannot open " + what + ": DPDK is not initialised", 0);
  route_bpf_logging();
  if (nb_queues == 0) nb_queues = 1;
  p->ip_ = cfg.ip;
  p->prefix_len_ = cfg.prefix_len;

  // 1. The device.
  if (cfg.port.empty()) {
    p->loopback_ = true;
    nb_queues = std::min<uint16_t>(nb_queues, RTE_PMD_RING_MAX_RX_RINGS);
    const std::string id = "dv" + std::to_string(seq);
    for (uint16_t q = 0; q < nb_queues; ++q) {
      const std::string rname = "dvlo" + std::to_string(seq) + "_" + std::to_string(q);
      rte_ring* r = rte_ring_create(rname.c_str(), kRingSize, int(rte_socket_id()),
                                    RING_F_SP_ENQ | RING_F_SC_DEQ);
      if (!r) return fail("cannot create loopback ring", rte_errno);
      im.rings.push_back(r);
    }
    int id_or_err = rte_eth_from_rings(id.c_str(), im.rings.data(), nb_queues, im.rings.data(),
                                       nb_queues, rte_socket_id());
    if (id_or_err < 0) return fail("cannot create loopback port", rte_errno);
    p->port_id_ = uint16_t(id_or_err);
    im.have_port = true;
    im.name = "net_ring_" + id;
    im.remove_bus = "vdev";
    im.remove_dev = im.name;
  } else {
    im.name = cfg.port.substr(0, cfg.port.find(','));
    std::string devargs = cfg.port;
    // memif's default 2048-byte buffers chain larger frames, and its 22.11 receive path
    // crashes on such chains: give every RoCE frame (up to 4096 B of payload) one buffer.
    if (im.name.rfind("net_memif", 0) == 0 && devargs.find("bsize=") == std::string::npos)
      devargs += ",bsize=8192";
    int r = rte_dev_probe(devargs.c_str());
    if (r < 0 && r != -EEXIST) return fail("cannot probe '" + cfg.port + "'", r);
    if (r == -EEXIST) {
      log.discard();  // "Failed to attach device": it was there already, which is fine
    } else {
      rte_devargs da{};
      if (rte_devargs_parse(&da, devargs.c_str()) == 0 && da.bus) {
        im.remove_bus = rte_bus_name(da.bus);
        im.remove_dev = da.name;
      }
      rte_devargs_reset(&da);
    }
    uint16_t pid = RTE_MAX_ETHPORTS;
    if (rte_eth_dev_get_port_by_name(im.name.c_str(), &pid) != 0) {
      // PCI names are normalised ("01:00.0" -> "0000:01:00.0"); match the device instead.
      uint16_t id;
      RTE_ETH_FOREACH_DEV(id) {
        rte_eth_dev_info di{};
        if (rte_eth_dev_info_get(id, &di) != 0 || !di.device) continue;
        std::string dn = rte_dev_name(di.device);
        if (dn == im.name || dn == "0000:" + im.name) {
          pid = id;
          break;
        }
      }
    }
    if (pid == RTE_MAX_ETHPORTS) {
      // Keep the device so the destructor can remove it.
      return fail("'" + cfg.port + "' probed but no ethdev port named '" + im.name + "'", 0);
    }
    p->port_id_ = pid;
    im.have_port = true;
  }

  rte_eth_dev_info info{};
  if (int r = rte_eth_dev_info_get(p->port_id_, &info); r != 0)
    return fail("cannot query " + what, r);
  if (info.device) im.name = rte_dev_name(info.device);

  // 2. Queues and MTU.
  nb_queues = std::min({nb_queues, info.max_rx_queues, info.max_tx_queues});
  if (nb_queues == 0) return fail(what + " has no RX/TX queue", 0);
  p->nb_queues_ = nb_queues;

  const std::string_view driver = info.driver_name ? info.driver_name : "";
  // The largest MTU the device accepts, up to kWantMtu (ethdev's own validation rule).
  uint32_t overhead = RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
  if (info.max_mtu != UINT16_MAX && info.max_rx_pktlen > info.max_mtu)
    overhead = info.max_rx_pktlen - info.max_mtu;
  uint32_t mtu = std::min<uint32_t>(kWantMtu, info.max_mtu);
  if (info.max_rx_pktlen > overhead) mtu = std::min(mtu, info.max_rx_pktlen - overhead);
  const uint32_t kernel_mtu = kernel_iface_mtu(cfg.port);
  if (kernel_mtu) mtu = std::min(mtu, kernel_mtu);
  mtu = std::max<uint32_t>(mtu, info.min_mtu);

  rte_eth_conf conf{};
  conf.rxmode.mtu = mtu;
  // The transport may chain a header mbuf to a payload mbuf.
  if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS)
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  im.tx_offloads = conf.txmode.offloads;
  if (int r = rte_eth_dev_configure(p->port_id_, nb_queues, nb_queues, &conf); r != 0)
    return fail("cannot configure " + what + " with " + std::to_string(nb_queues) + " queues", r);
  // Pushes the MTU to drivers that apply it only here; never to a kernel interface
  // (af_packet and af_xdp would change the host's MTU, see kernel_iface_mtu).
  if (!kernel_mtu) rte_eth_dev_set_mtu(p->port_id_, uint16_t(mtu));
  uint16_t got_mtu = 0;
  p->mtu_ = rte_eth_dev_get_mtu(p->port_id_, &got_mtu) == 0 && got_mtu ? got_mtu : mtu;
  // net_memif advertises the Ethernet default (max_rx_pktlen 1518) but chains its
  // pkt_buffer_size buffers on both sides and carries any frame (4242-byte frames tested
  // between two processes), so jumbo RoCE frames are fine.
  if (driver == "net_memif") p->mtu_ = kWantMtu;
  // memif's rings live in memory the two ends share: what the peer has not read when we
  // disconnect is gone (the kernel-backed PMDs hand each frame to the kernel at TX).
  p->unread_tx_lost_on_close_ = driver == "net_memif";

  // 3. The mbuf pool: the largest frame in one segment, and no bigger than that; never
  // below DPDK's default. net_af_xdp maps the pool as its UMEM, one object per frame, and
  // its max_mtu assumes page-sized objects: give it exactly that.
  const uint32_t frame_max = p->mtu_ + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN + RTE_ETHER_CRC_LEN;
  uint16_t data_room = uint16_t(std::clamp<uint32_t>(
      RTE_PKTMBUF_HEADROOM + ((frame_max + 63) & ~63u), RTE_MBUF_DEFAULT_BUF_SIZE, kMbufDataRoom));
  if (driver == "net_af_xdp") {
    data_room = uint16_t(4096 - sizeof(rte_mbuf));
    while (rte_mempool_calc_obj_size(uint32_t(sizeof(rte_mbuf)) + data_room, 0, nullptr) > 4096)
      data_room = uint16_t(data_room - 64);
  }
  const std::string pool_name = "dvpool" + std::to_string(seq);
  p->pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), kPoolSize, kPoolCache, 0, data_room,
                                     int(rte_socket_id()));
  if (!p->pool_)
    return fail("cannot create a pool of " + std::to_string(kPoolSize) + " mbufs of " +
                    std::to_string(data_room) + " B (raise -m in DVERBS_EAL)",
                rte_errno);

  uint16_t nb_rxd = kRingSize, nb_txd = kRingSize;
  rte_eth_dev_adjust_nb_rx_tx_desc(p->port_id_, &nb_rxd, &nb_txd);
  const int socket = rte_eth_dev_socket_id(p->port_id_);
  for (uint16_t q = 0; q < nb_queues; ++q) {
    if (int r = rte_eth_rx_queue_setup(p->port_id_, q, nb_rxd, unsigned(socket), nullptr, p->pool_);
        r != 0)
      return fail("cannot set up RX queue " + std::to_string(q) + " of " + what, r);
    if (int r = rte_eth_tx_queue_setup(p->port_id_, q, nb_txd, unsigned(socket), nullptr); r != 0)
      return fail("cannot set up TX queue " + std::to_string(q) + " of " + what, r);
  }

  // 4. MAC address: DVERBS_MAC, else the port's, else one derived from the IP.
  if (cfg.mac_set) {
    std::memcpy(p->mac_, cfg.mac, 6);
    rte_ether_addr a;
    std::memcpy(a.addr_bytes, cfg.mac, 6);
    // Devices that cannot change it (net_ring) still receive it: promiscuous mode below.
    rte_eth_dev_default_mac_addr_set(p->port_id_, &a);
  } else {
    rte_ether_addr a{};
    rte_eth_macaddr_get(p->port_id_, &a);
    if (rte_is_zero_ether_addr(&a)) {
      // Locally administered unicast 02:00:<IPv4 address>.
      p->mac_[0] = 0x02;
      p->mac_[1] = 0x00;
      for (int i = 0; i < 4; ++i) p->mac_[2 + i] = uint8_t(cfg.ip >> (24 - 8 * i));
    } else {
      std::memcpy(p->mac_, a.addr_bytes, 6);
    }
  }

  // 5. Start.
  if (int r = rte_eth_dev_start(p->port_id_); r != 0) return fail("cannot start " + what, r);
  im.started = true;
  // Not every device can; not fatal. Restored on close (af_packet sets it on the interface).
  if (rte_eth_promiscuous_get(p->port_id_) == 0 && rte_eth_promiscuous_enable(p->port_id_) == 0)
    im.restore_promisc = true;

  // 6. Faults and capture.
  if (cfg.fault.enabled()) {
    for (uint16_t q = 0; q < nb_queues; ++q)
      im.faults.push_back(
          std::make_unique<FaultInjector>(cfg.fault, uint64_t(p->port_id_) << 16 | q, p->pool_));
  }
  if (!cfg.pcap.empty()) {
    std::string cerr;
    im.capture = Capture::open(cfg.pcap, p->mtu_ + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN, &cerr);
    if (!im.capture) {
      if (err) *err = cerr;
      log.discard();
      return nullptr;
    }
  }
  log.replay(kHarmless);
  return p;
}

Port::~Port() {
  if (!impl_) return;
  Impl& im = *impl_;
  DpdkLogCapture quiet;  // tearing down a half-opened port may complain; nothing to act on
  if (im.started) {
    // Frames still queued hold mbufs of our pool (on net_ring the rings are freed below).
    rte_mbuf* drain[32];
    for (uint16_t q = 0; q < nb_queues_; ++q)
      for (int i = 0; i < 1024; ++i) {
        uint16_t n = rte_eth_rx_burst(port_id_, q, drain, 32);
        if (n == 0) break;
        rte_pktmbuf_free_bulk(drain, n);
      }
    rte_eth_dev_stop(port_id_);
  }
  if (im.restore_promisc) rte_eth_promiscuous_disable(port_id_);
  im.faults.clear();
  if (im.have_port) rte_eth_dev_close(port_id_);
  if (!im.remove_dev.empty()) rte_eal_hotplug_remove(im.remove_bus.c_str(), im.remove_dev.c_str());
  quiet.discard();
  for (rte_ring* r : im.rings) rte_ring_free(r);
  im.capture.reset();
  rte_mempool_free(pool_);
}

uint16_t Port::rx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n) noexcept {
  Impl& im = *impl_;
  uint16_t nb;
  if (im.faults.empty()) [[likely]] {
    nb = rte_eth_rx_burst(port_id_, q, pkts, n);
    add(stats_.rx_frames, nb);
  } else {
    if (n == 0) return 0;
    FaultInjector& f = *im.faults[q];
    rte_mbuf* raw[kMaxFaultBurst];
    const uint16_t want = std::min<uint16_t>(f.max_input(n), kMaxFaultBurst);
    const uint16_t got = want ? rte_eth_rx_burst(port_id_, q, raw, want) : 0;
    add(stats_.rx_frames, got);
    FaultCounts c;
    nb = f.apply(raw, got, pkts, n, &c);
    add(stats_.fault_lost, c.lost);
    add(stats_.fault_duplicated, c.duplicated);
    add(stats_.fault_reordered, c.reordered);
    add(stats_.fault_corrupted, c.corrupted);
  }
  if (im.capture && nb) [[unlikely]]
    im.capture->capture(port_id_, q, pkts, nb, false);
  return nb;
}

uint16_t Port::tx_burst(uint16_t q, rte_mbuf** pkts, uint16_t n, bool keep_unsent) noexcept {
  Impl& im = *impl_;
  if (!im.capture) [[likely]] {
    const uint16_t sent = rte_eth_tx_burst(port_id_, q, pkts, n);
    add(stats_.tx_frames, sent);
    if (sent < n && !keep_unsent) [[unlikely]] {
      rte_pktmbuf_free_bulk(pkts + sent, n - sent);
      add(stats_.tx_dropped, n - sent);
    }
    return sent;
  }
  // Capture: copy before the device owns the frames, write the copies of those it took.
  uint16_t total = 0;
  rte_mbuf* copies[Capture::kChunk];
  for (uint16_t done = 0; done < n;) {
    const uint16_t k = std::min<uint16_t>(Capture::kChunk, uint16_t(n - done));
    im.capture->copy(port_id_, q, pkts + done, k, true, copies);
    const uint16_t sent = rte_eth_tx_burst(port_id_, q, pkts + done, k);
    im.capture->write(copies, sent);
    if (sent < k) {
      rte_pktmbuf_free_bulk(copies + sent, k - sent);
      if (keep_unsent) {  // the caller keeps pkts[total + sent .. n)
        total = uint16_t(total + sent);
        break;
      }
      rte_pktmbuf_free_bulk(pkts + done + sent, k - sent);
      add(stats_.tx_dropped, k - sent);
    }
    total = uint16_t(total + sent);
    done = uint16_t(done + k);
  }
  add(stats_.tx_frames, total);
  return total;
}

rte_mbuf* Port::alloc_mbuf() noexcept {
  return rte_pktmbuf_alloc(pool_);
}

bool Port::link_up() const {
  rte_eth_link link{};
  return rte_eth_link_get_nowait(port_id_, &link) == 0 && link.link_status == RTE_ETH_LINK_UP;
}

const std::string& Port::name() const {
  return impl_->name;
}
uint64_t Port::tx_offloads() const {
  return impl_->tx_offloads;
}
uint64_t Port::capture_dropped() const {
  return impl_->capture ? impl_->capture->dropped() : 0;
}

}  // namespace dverbs::pmd::net
