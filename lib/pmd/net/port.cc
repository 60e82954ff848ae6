// Port bring-up and the RX/TX burst wrappers.
//
// Loopback: rte_eth_from_rings() with one SP/SC rte_ring per queue, passed as both the RX
// and the TX ring of that queue, so queue q's TX feeds queue q's RX and queues stay
// independent (up to RTE_PMD_RING_MAX_RX_RINGS = 16). The rings are ours and freed here.
#include "pmd/net/port.h"

#include <dlfcn.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <initializer_list>
#include <mutex>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

// The kernel network interface behind an "iface=" device (net_af_packet, net_af_xdp):
// its configuration belongs to the host. A port on one never changes its MAC, MTU or
// flags: it follows the interface's MTU (raise it with `ip link set dev X mtu N` on both
// ends for jumbo frames, as the kernel's own RoCE drivers need too) and, when it answers
// for a MAC other than the interface's (DVERBS_MAC), asks for promiscuous reception through
// a packet-socket membership, which the kernel counts and drops when the process exits,
// crash or not (packet(7), PACKET_MR_PROMISC). Nothing is left to restore.
struct KernelIface {
  std::string name;
  uint32_t mtu = 0;
  uint8_t mac[6] = {};
  bool have_mac = false;
};

std::string read_sysfs(const std::string& iface, const char* attr) {
  std::string v;
  if (FILE* f = std::fopen(("/sys/class/net/" + iface + "/" + attr).c_str(), "re")) {
    char buf[64];
    if (std::fgets(buf, sizeof buf, f)) v = buf;
    std::fclose(f);
  }
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

// The interface named by "iface=" in the devargs; name empty when there is none.
KernelIface kernel_iface(const std::string& devargs) {
  KernelIface k;
  for (size_t pos = devargs.find(','); pos != std::string::npos;) {
    const size_t start = pos + 1;
    pos = devargs.find(',', start);
    const std::string kv = devargs.substr(start, pos == std::string::npos ? pos : pos - start);
    if (kv.rfind("iface=", 0) != 0) continue;
    std::string name = kv.substr(6);
    if (name.empty() || name.find('/') != std::string::npos) return k;
    k.name = name;
    k.mtu = uint32_t(std::strtoul(read_sysfs(name, "mtu").c_str(), nullptr, 10));
    unsigned b[6];
    const std::string mac = read_sysfs(name, "address");
    if (std::sscanf(mac.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) ==
        6) {
      for (int i = 0; i < 6; i++) k.mac[i] = uint8_t(b[i]);
      k.have_mac = true;
    }
    return k;
  }
  return k;
}

// The id of the XDP program attached to `iface` (0: none; also 0 when libbpf, which
// net_af_xdp loads, is not in the process). net_af_xdp attaches one while the port is open
// and detaches it on close; a process that died leaves it behind, and the next port on the
// interface replaces it.
uint32_t attached_xdp_prog(const std::string& iface) {
  using query_fn = int (*)(int, int, uint32_t*);
  void* h = dlopen("libbpf.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!h) return 0;
  auto query = reinterpret_cast<query_fn>(dlsym(h, "bpf_xdp_query_id"));
  uint32_t id = 0;
  const unsigned idx = if_nametoindex(iface.c_str());
  if (!query || idx == 0 || query(int(idx), 0, &id) != 0) id = 0;
  dlclose(h);
  return id;
}

// Promiscuous reception on a kernel interface for as long as the returned socket is open
// (-1 and errno on failure). The socket's protocol is 0, so it receives nothing itself.
int hold_promiscuous(const std::string& iface) {
  const unsigned idx = if_nametoindex(iface.c_str());
  if (idx == 0) return -1;
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  packet_mreq mr{};
  mr.mr_ifindex = int(idx);
  mr.mr_type = PACKET_MR_PROMISC;
  if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) != 0) {
    const int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

void add(std::atomic<uint64_t>& c, uint64_t v) {
  if (v) c.fetch_add(v, std::memory_order_relaxed);
}

}  // namespace

struct Port::Impl {
  std::string name;  // ethdev device name
  std::string what;  // how errors name the port: 'devargs' or loopback
  // Set when we probed the device, so we hot-unplug it on close.
  std::string remove_bus, remove_dev;
  bool have_port = false, started = false;
  bool restore_promisc = false;  // a DPDK-owned device we made promiscuous
  bool memif_client = false;     // net_memif with role=client (Port::retry_connect)
  KernelIface kernel;            // the host interface behind the port, if any
  int promisc_fd = -1;           // hold_promiscuous() on `kernel`
  uint64_t tx_offloads = 0;
  std::string driver;
  unsigned seq = 0;  // names this port's rings and pool uniquely in the process
  std::vector<rte_ring*> rings;                        // loopback
  std::vector<std::unique_ptr<FaultInjector>> faults;  // per queue, empty when off
  std::unique_ptr<Capture> capture;
};

// What a step of Port::open could not do: a message and, where there is one, the errno.
struct Port::OpenError {
  std::string msg;
  int err = 0;
};

std::unique_ptr<Port> Port::open(const Config& cfg, uint16_t nb_queues, std::string* err) {
  std::unique_ptr<Port> p(new Port());
  p->impl_ = std::make_unique<Impl>();
  Impl& im = *p->impl_;
  im.what = cfg.port.empty() ? std::string("loopback") : "'" + cfg.port + "'";
  DpdkLogCapture log;
  // One line: what failed, DPDK's own reason if it logged one, and the errno text.
  auto fail = [&](const OpenError& e) -> std::unique_ptr<Port> {
    if (err) {
      const std::string detail = log.first_line(kHarmless);
      *err = "DVERBS_PORT: " + e.msg;
      if (!detail.empty())
        *err += ": " + detail + (e.err ? " (" + errstr(e.err) + ")" : "");
      else if (e.err)
        *err += ": " + errstr(e.err);
      for (char& c : *err)
        if (c == '\n') c = ' ';
    }
    log.discard();
    return nullptr;  // ~Port undoes whatever was done
  };

  if (!eal_ready()) return fail({"cannot open " + im.what + ": DPDK is not initialised"});
  route_bpf_logging();
  p->ip_ = cfg.ip;
  p->prefix_len_ = cfg.prefix_len;
  OpenError e;
  if (!p->probe(cfg, std::max<uint16_t>(nb_queues, 1), &e, &log) || !p->setup_queues(&e) ||
      !p->choose_mac(cfg, &e) || !p->start(&e))
    return fail(e);
  p->setup_faults(cfg);
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

// Step 1: the device — the built-in loopback (a net_ring over our own rings) or the
// devargs probed (or found already probed) — and how many queue pairs it gets.
bool Port::probe(const Config& cfg, uint16_t nb_queues, OpenError* e, DpdkLogCapture* log) {
  Impl& im = *impl_;
  const unsigned seq = im.seq = port_seq.fetch_add(1);
  if (cfg.port.empty()) {
    loopback_ = true;
    nb_queues = std::min<uint16_t>(nb_queues, RTE_PMD_RING_MAX_RX_RINGS);
    const std::string id = "dv" + std::to_string(seq);
    for (uint16_t q = 0; q < nb_queues; ++q) {
      const std::string rname = "dvlo" + std::to_string(seq) + "_" + std::to_string(q);
      rte_ring* r = rte_ring_create(rname.c_str(), kRingSize, int(rte_socket_id()),
                                    RING_F_SP_ENQ | RING_F_SC_DEQ);
      if (!r) return *e = {"cannot create loopback ring", rte_errno}, false;
      im.rings.push_back(r);
    }
    int id_or_err = rte_eth_from_rings(id.c_str(), im.rings.data(), nb_queues, im.rings.data(),
                                       nb_queues, rte_socket_id());
    if (id_or_err < 0) return *e = {"cannot create loopback port", rte_errno}, false;
    port_id_ = uint16_t(id_or_err);
    im.have_port = true;
    im.name = "net_ring_" + id;
    im.remove_bus = "vdev";
    im.remove_dev = im.name;
  } else {
    im.name = cfg.port.substr(0, cfg.port.find(','));
    im.kernel = kernel_iface(cfg.port);
    if (im.name.rfind("net_af_xdp", 0) == 0 && !im.kernel.name.empty())
      if (uint32_t id = attached_xdp_prog(im.kernel.name))
        std::fprintf(stderr,
                     "dverbs: %s already has XDP program %u attached (left by an AF_XDP "
                     "program that did not close, such as a dverbs process that died); "
                     "replacing it, and detaching ours on close\n",
                     im.kernel.name.c_str(), id);
    std::string devargs = cfg.port;
    // memif's default 2048-byte buffers chain larger frames, and its 22.11 receive path
    // crashes on such chains: give every RoCE frame (up to 4096 B of payload) one buffer.
    if (im.name.rfind("net_memif", 0) == 0 && devargs.find("bsize=") == std::string::npos)
      devargs += ",bsize=8192";
    im.memif_client =
        im.name.rfind("net_memif", 0) == 0 && devargs.find("role=client") != std::string::npos;
    int r = rte_dev_probe(devargs.c_str());
    if (r < 0 && r != -EEXIST) return *e = {"cannot probe '" + cfg.port + "'", r}, false;
    if (r == -EEXIST) {
      log->discard();  // "Failed to attach device": it was there already, which is fine
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
    if (pid == RTE_MAX_ETHPORTS)  // the device is kept so that ~Port removes it
      return *e = {"'" + cfg.port + "' probed but no ethdev port named '" + im.name + "'"}, false;
    port_id_ = pid;
    im.have_port = true;
  }
  nb_queues_ = nb_queues;
  return true;
}

// Step 2: MTU, queues and the mbuf pool, sized to the largest frame the port carries.
bool Port::setup_queues(OpenError* e) {
  Impl& im = *impl_;
  rte_eth_dev_info info{};
  if (int r = rte_eth_dev_info_get(port_id_, &info); r != 0)
    return *e = {"cannot query " + im.what, r}, false;
  if (info.device) im.name = rte_dev_name(info.device);
  im.driver = info.driver_name ? info.driver_name : "";
  uint16_t nb_queues = std::min({nb_queues_, info.max_rx_queues, info.max_tx_queues});
  if (nb_queues == 0) return *e = {im.what + " has no RX/TX queue"}, false;
  nb_queues_ = nb_queues;

  // The largest MTU the device accepts, up to kWantMtu (ethdev's own validation rule), and
  // never above a host interface's own (af_packet's 1500 gives a 1024 B path MTU).
  uint32_t overhead = RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
  if (info.max_mtu != UINT16_MAX && info.max_rx_pktlen > info.max_mtu)
    overhead = info.max_rx_pktlen - info.max_mtu;
  uint32_t mtu = std::min<uint32_t>(kWantMtu, info.max_mtu);
  if (info.max_rx_pktlen > overhead) mtu = std::min(mtu, info.max_rx_pktlen - overhead);
  if (im.kernel.mtu) mtu = std::min(mtu, im.kernel.mtu);
  mtu = std::max<uint32_t>(mtu, info.min_mtu);

  rte_eth_conf conf{};
  conf.rxmode.mtu = mtu;
  // The transport may chain a header mbuf to a payload mbuf.
  if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS)
    conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  im.tx_offloads = conf.txmode.offloads;
  if (int r = rte_eth_dev_configure(port_id_, nb_queues, nb_queues, &conf); r != 0)
    return *e = {"cannot configure " + im.what + " with " + std::to_string(nb_queues) +
                     " queues", r},
           false;
  // Pushes the MTU to drivers that apply it only here; never to a host interface.
  if (im.kernel.name.empty()) rte_eth_dev_set_mtu(port_id_, uint16_t(mtu));
  uint16_t got_mtu = 0;
  mtu_ = rte_eth_dev_get_mtu(port_id_, &got_mtu) == 0 && got_mtu ? got_mtu : mtu;
  // A host interface carries what its own MTU says, whatever the PMD keeps.
  if (!im.kernel.name.empty()) mtu_ = mtu;
  // net_memif advertises the Ethernet default (max_rx_pktlen 1518) but chains its
  // pkt_buffer_size buffers on both sides and carries any frame (4242-byte frames tested
  // between two processes), so jumbo RoCE frames are fine.
  if (im.driver == "net_memif") mtu_ = kWantMtu;
  // memif's rings live in memory the two ends share: what the peer has not read when we
  // disconnect is gone (the kernel-backed PMDs hand each frame to the kernel at TX).
  unread_tx_lost_on_close_ = im.driver == "net_memif";

  // The mbuf pool: the largest frame in one segment, and no bigger than that; never below
  // DPDK's default. net_af_xdp maps the pool as its UMEM, one object per frame, and its
  // max_mtu assumes page-sized objects: give it exactly that.
  const uint32_t frame_max = mtu_ + RTE_ETHER_HDR_LEN + RTE_VLAN_HLEN + RTE_ETHER_CRC_LEN;
  uint16_t data_room = uint16_t(std::clamp<uint32_t>(
      RTE_PKTMBUF_HEADROOM + ((frame_max + 63) & ~63u), RTE_MBUF_DEFAULT_BUF_SIZE, kMbufDataRoom));
  if (im.driver == "net_af_xdp") {
    data_room = uint16_t(4096 - sizeof(rte_mbuf));
    while (rte_mempool_calc_obj_size(uint32_t(sizeof(rte_mbuf)) + data_room, 0, nullptr) > 4096)
      data_room = uint16_t(data_room - 64);
  }
  const std::string pool_name = "dvpool" + std::to_string(im.seq);
  pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), kPoolSize, kPoolCache, 0, data_room,
                                  int(rte_socket_id()));
  if (!pool_)
    return *e = {"cannot create a pool of " + std::to_string(kPoolSize) + " mbufs of " +
                     std::to_string(data_room) + " B (raise -m in DVERBS_EAL)",
                 rte_errno},
           false;

  uint16_t nb_rxd = kRingSize, nb_txd = kRingSize;
  rte_eth_dev_adjust_nb_rx_tx_desc(port_id_, &nb_rxd, &nb_txd);
  const int socket = rte_eth_dev_socket_id(port_id_);
  for (uint16_t q = 0; q < nb_queues; ++q) {
    if (int r = rte_eth_rx_queue_setup(port_id_, q, nb_rxd, unsigned(socket), nullptr, pool_);
        r != 0)
      return *e = {"cannot set up RX queue " + std::to_string(q) + " of " + im.what, r}, false;
    if (int r = rte_eth_tx_queue_setup(port_id_, q, nb_txd, unsigned(socket), nullptr); r != 0)
      return *e = {"cannot set up TX queue " + std::to_string(q) + " of " + im.what, r}, false;
  }
  return true;
}

// Step 3: the port's MAC: DVERBS_MAC, else the device's, else one derived from the IP.
// A DPDK-owned device is given DVERBS_MAC; a host interface keeps its own (see
// KernelIface) and receives ours through a promiscuous membership.
bool Port::choose_mac(const Config& cfg, OpenError* e) {
  Impl& im = *impl_;
  if (cfg.mac_set) {
    std::memcpy(mac_, cfg.mac, 6);
    if (!im.kernel.name.empty()) {
      if (!im.kernel.have_mac || std::memcmp(im.kernel.mac, mac_, 6) != 0) {
        im.promisc_fd = hold_promiscuous(im.kernel.name);
        if (im.promisc_fd < 0)
          return *e = {"DVERBS_MAC differs from " + im.kernel.name +
                           "'s own and promiscuous reception cannot be had",
                       errno},
                 false;
      }
    } else {
      rte_ether_addr a;
      std::memcpy(a.addr_bytes, cfg.mac, 6);
      // Devices that cannot change it (net_ring) still receive it: promiscuous mode below.
      rte_eth_dev_default_mac_addr_set(port_id_, &a);
    }
    return true;
  }
  rte_ether_addr a{};
  rte_eth_macaddr_get(port_id_, &a);
  if (rte_is_zero_ether_addr(&a)) {
    // Locally administered unicast 02:00:<IPv4 address>.
    mac_[0] = 0x02;
    mac_[1] = 0x00;
    for (int i = 0; i < 4; ++i) mac_[2 + i] = uint8_t(cfg.ip >> (24 - 8 * i));
  } else {
    std::memcpy(mac_, a.addr_bytes, 6);
  }
  return true;
}

// Step 4: start. A DPDK-owned device is made promiscuous where it can be (restored on
// close); a host interface's flags are never touched.
bool Port::start(OpenError* e) {
  Impl& im = *impl_;
  if (int r = rte_eth_dev_start(port_id_); r != 0)
    return *e = {"cannot start " + im.what, r}, false;
  im.started = true;
  if (im.kernel.name.empty() && rte_eth_promiscuous_get(port_id_) == 0 &&
      rte_eth_promiscuous_enable(port_id_) == 0)
    im.restore_promisc = true;
  return true;
}

// Step 5: DVERBS_FAULT, one injector per receive queue.
void Port::setup_faults(const Config& cfg) {
  if (!cfg.fault.enabled()) return;
  for (uint16_t q = 0; q < nb_queues_; ++q)
    impl_->faults.push_back(
        std::make_unique<FaultInjector>(cfg.fault, uint64_t(port_id_) << 16 | q, pool_));
}

uint32_t Port::host_ifindex() const {
  return impl_->kernel.name.empty() ? 0 : if_nametoindex(impl_->kernel.name.c_str());
}

bool Port::may_retry_connect() const {
  return impl_->memif_client && impl_->started && !link_up();
}

void Port::retry_connect() {
  DpdkLogCapture quiet;  // "Failed to connect socket" if the server is gone: retried later
  rte_eth_dev_stop(port_id_);
  rte_eth_dev_start(port_id_);  // a failure leaves the port stopped until the next retry
  quiet.discard();
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
  if (im.promisc_fd >= 0) close(im.promisc_fd);
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
  if (restarting_.load(std::memory_order_acquire)) [[unlikely]]
    return 0;
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
  if (restarting_.load(std::memory_order_acquire)) [[unlikely]] {  // as a full queue
    if (!keep_unsent) {
      rte_pktmbuf_free_bulk(pkts, n);
      add(stats_.tx_dropped, n);
    }
    return 0;
  }
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
