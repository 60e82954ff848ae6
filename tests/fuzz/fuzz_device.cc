#include "fuzz_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <rte_eth_ring.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include "pmd/net/config.h"
#include "pmd/net/eal.h"
#include "pmd/net/lcore.h"
#include "pmd/wire/roce.h"

namespace dverbs::pmd::hca {

// Test peer of Device (friend, device.h): stops the inline-progress helper so that only the
// fuzzing thread runs the engine.
struct DeviceTestPeer {
  static void stop_inline_helper(Device& d) {
    if (d.inline_helper_) d.inline_helper_->stop();
  }
};

}  // namespace dverbs::pmd::hca

namespace dverbs::fuzz {

namespace wire = pmd::wire;

namespace {

constexpr const char* kPortName = "dvfuzz";  // ethdev "net_ring_dvfuzz"
constexpr unsigned kRingSize = 4096;

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "fuzz device: %s\n", why.c_str());
  std::abort();
}

}  // namespace

// ---------------------------------------------------------------- Region

Region::~Region() {
  if (map_) munmap(map_, map_len_);
}

void Region::init(size_t len) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t body = (len + 2 * kSlack + page - 1) / page * page;
  map_len_ = body + 2 * page;
  void* p = mmap(nullptr, map_len_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap failed");
  map_ = static_cast<uint8_t*>(p);
  if (mprotect(map_ + page, body, PROT_READ | PROT_WRITE) != 0) die("mprotect failed");
  lo_ = map_ + page;
  hi_ = lo_ + body;
  data_ = lo_ + kSlack;
  len_ = len;
  std::memset(lo_, kCanary, body);
  std::memset(data_, 0, len_);
}

bool Region::canaries_ok(long* where) const {
  for (const uint8_t* p = lo_; p < data_; p++)
    if (*p != kCanary) {
      if (where) *where = long(p - data_);
      return false;
    }
  for (const uint8_t* p = data_ + len_; p < hi_; p++)
    if (*p != kCanary) {
      if (where) *where = long(p - data_);
      return false;
    }
  return true;
}

void Region::protect(bool inaccessible) {
  if (mprotect(lo_, size_t(hi_ - lo_), inaccessible ? PROT_NONE : PROT_READ | PROT_WRITE) != 0)
    die("mprotect failed");
}

// ---------------------------------------------------------------- FuzzDevice

FuzzDevice& FuzzDevice::get() {
  // Never destroyed: the driver owns the device and tears it down at exit.
  static FuzzDevice* d = [] {
    auto* x = new FuzzDevice();
    x->open();
    return x;
  }();
  return *d;
}

void FuzzDevice::open() {
  setenv("DVERBS_LCORES", "0", 1);
  setenv("DVERBS_PORT", (std::string("net_ring_") + kPortName).c_str(), 1);
  setenv("DVERBS_LOG", "emergency", 1);  // malformed frames must not flood the fuzzer's log
  for (const char* v : {"DVERBS_FAULT", "DVERBS_PCAP", "DVERBS_IP", "DVERBS_MAC"}) unsetenv(v);
  std::string err;
  pmd::net::Config cfg;
  if (!pmd::net::config_from_env(&cfg, &err)) die(err);
  if (pmd::net::eal_init(cfg, &err) != 0) die(err);
  rx_ = rte_ring_create("dvfuzz_rx", kRingSize, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
  tx_ = rte_ring_create("dvfuzz_tx", kRingSize, rte_socket_id(), RING_F_SP_ENQ | RING_F_SC_DEQ);
  if (!rx_ || !tx_) die("cannot create the rings");
  if (rte_eth_from_rings(kPortName, &rx_, 1, &tx_, 1, rte_socket_id()) < 0)
    die("rte_eth_from_rings failed");
  auto c = Context::open();
  if (!c) die(std::string("Context::open: ") + std::strerror(c.error()));
  ctx_ = c.take();
  dev_ = static_cast<pmd::hca::Device*>(ctx_.raw());
  if (dev_->port().name().find(kPortName) == std::string::npos || !dev_->inline_progress() ||
      dev_->engine_count() != 1)
    die("the device did not open the fuzz port in inline-progress mode");
  pmd::hca::DeviceTestPeer::stop_inline_helper(*dev_);
  ip_ = dev_->port().ip();
  std::memcpy(mac_, dev_->port().mac(), 6);
  rte_mbuf* probe = dev_->port().alloc_mbuf();
  if (!probe) die("empty mbuf pool");
  max_frame_ = rte_pktmbuf_tailroom(probe);
  rte_pktmbuf_free(probe);

  // Calibrate the accounting: does rx_packets count a valid frame for an unknown QP?
  std::vector<uint8_t> f(wire::headers_len(wire::op::kRc | wire::op::kSendOnly) + 4);
  wire::FrameAddr a{};
  std::memcpy(a.src_mac, mac_, 6);
  std::memcpy(a.dst_mac, mac_, 6);
  a.src_ip = a.dst_ip = ip_;
  a.ttl = 64;
  wire::BthFields b{};
  b.opcode = wire::op::kRc | wire::op::kSendOnly;
  b.pkey = wire::kDefaultPkey;
  b.dest_qp = 0xfffffe;  // never a QPN of this device
  wire::write_headers(f.data(), a, b, 0);
  wire::finish_frame(f.data(), uint32_t(f.size()));
  const RxCounters before = counters();
  receive_copy({f}, true);
  no_qp_in_packets_ = counters().rx_packets != before.rx_packets;
  std::string why;
  if (!counters_consistent(&why)) die("frame accounting: " + why);
}

Gid FuzzDevice::gid() const {
  Gid g{};
  g.raw[10] = g.raw[11] = 0xff;
  wire::store_be32(g.raw + 12, ip_);
  return g;
}

rte_mbuf* FuzzDevice::make_mbuf(const uint8_t* data, uint32_t len, uint32_t split) {
  if (split == 0 || split >= len) {
    if (len > max_frame_) return nullptr;
    rte_mbuf* m = dev_->port().alloc_mbuf();
    if (!m) return nullptr;
    char* d = rte_pktmbuf_append(m, uint16_t(len));
    if (!d && len) {
      rte_pktmbuf_free(m);
      return nullptr;
    }
    if (len) std::memcpy(d, data, len);
    return m;
  }
  rte_mbuf* head = make_mbuf(data, split);
  rte_mbuf* tail = head ? make_mbuf(data + split, len - split) : nullptr;
  if (!tail || rte_pktmbuf_chain(head, tail) != 0) {
    if (head) rte_pktmbuf_free(head);
    if (tail) rte_pktmbuf_free(tail);
    return nullptr;
  }
  return head;
}

// An ARP frame the port's receive filter lets through (ARP counts in no receive counter;
// a frame for another MAC counts in rx_not_for_us whatever it carries).
bool FuzzDevice::is_arp(const rte_mbuf* m) const {
  if (rte_pktmbuf_data_len(m) < 14) return false;
  const uint8_t* d = rte_pktmbuf_mtod(m, const uint8_t*);
  return wire::load_be16(d + 12) == 0x0806 && dev_->port().accepts(d);
}

void FuzzDevice::receive(rte_mbuf** ms, uint16_t n) {
  for (uint16_t i = 0; i < n; i++) {
    fed_++;
    fed_arp_ += is_arp(ms[i]);
  }
  engine().receive(ms, n);
}

void FuzzDevice::receive_copy(const std::vector<std::vector<uint8_t>>& frames, bool one_burst) {
  std::vector<rte_mbuf*> ms;
  for (const auto& f : frames)
    if (rte_mbuf* m = make_mbuf(f.data(), uint32_t(f.size()))) ms.push_back(m);
  if (one_burst) {
    for (size_t i = 0; i < ms.size(); i += 32)
      receive(ms.data() + i, uint16_t(std::min<size_t>(32, ms.size() - i)));
  } else {
    for (rte_mbuf* m : ms) receive(&m, 1);
  }
}

size_t FuzzDevice::pump(int rounds, bool forward, size_t max_forward) {
  size_t sent = 0, fed = 0;
  for (int r = 0; r < rounds; r++) {
    engine().try_poll();
    void* objs[32];
    unsigned n;
    while ((n = rte_ring_dequeue_burst(tx_, objs, 32, nullptr)) > 0) {
      sent += n;
      auto** ms = reinterpret_cast<rte_mbuf**>(objs);
      unsigned k = 0;
      if (forward) {
        k = unsigned(std::min<size_t>(n, max_forward - fed));
        if (k) receive(ms, uint16_t(k));
        fed += k;
      }
      for (unsigned i = k; i < n; i++) rte_pktmbuf_free(ms[i]);
    }
  }
  return sent;
}

size_t FuzzDevice::drop_tx() {
  size_t dropped = 0;
  void* objs[32];
  unsigned n;
  while ((n = rte_ring_dequeue_burst(tx_, objs, 32, nullptr)) > 0) {
    dropped += n;
    for (unsigned i = 0; i < n; i++) rte_pktmbuf_free(static_cast<rte_mbuf*>(objs[i]));
  }
  return dropped;
}

void FuzzDevice::take_tx(std::vector<rte_mbuf*>* out) {
  void* objs[32];
  unsigned n;
  while ((n = rte_ring_dequeue_burst(tx_, objs, 32, nullptr)) > 0)
    for (unsigned i = 0; i < n; i++) out->push_back(static_cast<rte_mbuf*>(objs[i]));
}

RxCounters FuzzDevice::counters() const {
  auto& c = dev_->counters();
  RxCounters r;
  r.rx_packets = c.rx_packets.load();
  r.rx_bad_frame = c.rx_bad_frame.load();
  r.rx_bad_icrc = c.rx_bad_icrc.load();
  r.rx_non_roce = c.rx_non_roce.load();
  r.rx_no_qp = c.rx_no_qp.load();
  r.rx_bad_state = c.rx_bad_state.load();
  r.rx_not_for_us = c.rx_not_for_us.load();
  r.rx_raw = c.rx_raw.load();
  r.rx_raw_dropped = c.rx_raw_dropped.load();
  return r;
}

bool FuzzDevice::counters_consistent(std::string* why) {
  const RxCounters now = counters();
  auto d = [&](uint64_t RxCounters::*f) { return now.*f - base_.*f; };
  const uint64_t accounted =
      d(&RxCounters::rx_packets) + d(&RxCounters::rx_bad_frame) + d(&RxCounters::rx_bad_icrc) +
      d(&RxCounters::rx_non_roce) + d(&RxCounters::rx_not_for_us) + d(&RxCounters::rx_raw) +
      d(&RxCounters::rx_raw_dropped) + (no_qp_in_packets_ ? 0 : d(&RxCounters::rx_no_qp));
  const uint64_t expect = fed_ - fed_arp_;
  bool ok = accounted == expect;
  // Frames that reached a QP are a subset of the received RoCE frames.
  if (no_qp_in_packets_ && d(&RxCounters::rx_no_qp) > d(&RxCounters::rx_packets)) ok = false;
  if (!ok && why) {
    char b[320];
    std::snprintf(
        b, sizeof b,
        "fed %lu frames (%lu ARP) but counted packets %lu + bad_frame %lu + "
        "bad_icrc %lu + non_roce %lu + not_for_us %lu + raw %lu + raw_dropped %lu "
        "(no_qp %lu)",
        (unsigned long)fed_, (unsigned long)fed_arp_, (unsigned long)d(&RxCounters::rx_packets),
        (unsigned long)d(&RxCounters::rx_bad_frame), (unsigned long)d(&RxCounters::rx_bad_icrc),
        (unsigned long)d(&RxCounters::rx_non_roce), (unsigned long)d(&RxCounters::rx_not_for_us),
        (unsigned long)d(&RxCounters::rx_raw), (unsigned long)d(&RxCounters::rx_raw_dropped),
        (unsigned long)d(&RxCounters::rx_no_qp));
    *why = b;
  }
  base_ = now;
  fed_ = fed_arp_ = 0;
  return ok;
}

// ---------------------------------------------------------------- connecting

int connect_qp(Qp& qp, QpType type, uint32_t remote_qpn, uint32_t sq_psn, uint32_t rq_psn,
               uint32_t access, Mtu mtu, uint8_t timeout, uint8_t rnr_retry,
               uint8_t max_rd_atomic) {
  return connect_qp(qp.raw(), type, remote_qpn, sq_psn, rq_psn, access, mtu, timeout, rnr_retry,
                    max_rd_atomic);
}

int connect_qp(mid::Qp* qp, QpType type, uint32_t remote_qpn, uint32_t sq_psn, uint32_t rq_psn,
               uint32_t access, Mtu mtu, uint8_t timeout, uint8_t rnr_retry,
               uint8_t max_rd_atomic) {
  namespace m = qp_attr_mask;
  const bool rc = type == QpType::rc, xrc_recv = type == QpType::xrc_recv;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.pkey_index = 0;
  a.qp_access_flags = access;
  if (int e = mid::modify_qp(qp, &a, m::state | m::pkey_index | m::port | m::access_flags))
    return e;
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.path_mtu = mtu;
  a.dest_qp_num = remote_qpn;
  a.rq_psn = rq_psn;
  a.max_dest_rd_atomic = 4;
  a.min_rnr_timer = 1;
  a.ah_attr.dgid = FuzzDevice::get().gid();
  a.ah_attr.is_global = true;
  a.ah_attr.port_num = 1;
  uint32_t mask = m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn;
  if (rc || xrc_recv) mask |= m::max_dest_rd_atomic | m::min_rnr_timer;
  if (int e = mid::modify_qp(qp, &a, mask)) return e;
  a = QpAttr{};
  a.qp_state = QpState::rts;
  a.sq_psn = sq_psn;
  a.timeout = timeout;
  a.retry_cnt = 7;
  a.rnr_retry = rnr_retry;
  a.max_rd_atomic = max_rd_atomic;
  mask = m::state | m::sq_psn;
  if (rc) mask |= m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic;
  if (xrc_recv) mask |= m::timeout;
  return mid::modify_qp(qp, &a, mask);
}

int connect_ud(Qp& qp, uint32_t qkey, uint32_t sq_psn) {
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.qkey = qkey;
  if (int e = qp.modify(a, m::state | m::pkey_index | m::port | m::qkey)) return e;
  a.qp_state = QpState::rtr;
  if (int e = qp.modify(a, m::state)) return e;
  a.qp_state = QpState::rts;
  a.sq_psn = sq_psn;
  return qp.modify(a, m::state | m::sq_psn);
}

int reset_qp(Qp& qp) { return reset_qp(qp.raw()); }

int reset_qp(mid::Qp* qp) {
  QpAttr a;
  a.qp_state = QpState::reset;
  return mid::modify_qp(qp, &a, qp_attr_mask::state);
}

}  // namespace dverbs::fuzz
