#include "pmd/net/neigh.h"

#include <cstring>

#include <rte_arp.h>
#include <rte_byteorder.h>
#include <rte_cycles.h>
#include <rte_ether.h>
#include <rte_pause.h>

#include "pmd/net/port.h"

namespace dverbs::pmd::net {
namespace {

constexpr uint32_t kMask = NeighTable::kCapacity - 1;
constexpr uint32_t kArpFrameLen = RTE_ETHER_HDR_LEN + sizeof(rte_arp_hdr);  // 42
constexpr uint32_t kMinFrameLen = RTE_ETHER_MIN_LEN - RTE_ETHER_CRC_LEN;    // 60

uint32_t slot_of(uint32_t ip) {
  return (ip * 2654435761u) >> (32 - 10);
}
static_assert(NeighTable::kCapacity == 1u << 10);

uint64_t pack(const uint8_t mac[6], NeighTable::State st) {
  uint64_t w = 0;
  for (int i = 0; i < 6; ++i) w = w << 8 | mac[i];
  return w << 8 | uint8_t(st);
}
NeighTable::State state_of(uint64_t w) {
  return NeighTable::State(w & 0xff);
}
void unpack_mac(uint64_t w, uint8_t mac[6]) {
  w >>= 8;
  for (int i = 5; i >= 0; --i, w >>= 8) mac[i] = uint8_t(w);
}
bool usable(NeighTable::State st) {
  return st == NeighTable::State::kReachable || st == NeighTable::State::kProbe;
}

}  // namespace

struct NeighTable::Entry {
  std::atomic<uint32_t> ip{0};    // 0 = free; set once
  std::atomic<uint32_t> want{0};  // looked up while not usable
  std::atomic<uint32_t> used{0};  // looked up successfully since last confirmation
  std::atomic<uint64_t> word{0};  // mac << 8 | state (0 = kIncomplete)
  // Writer-only (lock held).
  uint64_t confirmed_tsc = 0, last_tx_tsc = 0;
  uint32_t probes = 0;
};

NeighTable::NeighTable(uint32_t own_ip, const uint8_t own_mac[6])
    : own_ip_(own_ip), slots_(new Entry[kCapacity]) {
  std::memcpy(own_mac_, own_mac, 6);
  const uint64_t hz = rte_get_tsc_hz();
  retry_tsc_ = hz * kRetryMs / 1000;
  reachable_tsc_ = hz * kReachableSec;
  invalid_hold_tsc_ = hz * kInvalidHoldMs / 1000;
  scan_tsc_ = hz * kScanMs / 1000;
}

NeighTable::NeighTable(const Port& port) : NeighTable(port.ip(), port.mac()) {}

NeighTable::~NeighTable() = default;

void NeighTable::lock() noexcept {
  while (lock_.exchange(true, std::memory_order_acquire))
    while (lock_.load(std::memory_order_relaxed)) rte_pause();
}
bool NeighTable::try_lock() noexcept {
  return !lock_.load(std::memory_order_relaxed) && !lock_.exchange(true, std::memory_order_acquire);
}
void NeighTable::unlock() noexcept {
  lock_.store(false, std::memory_order_release);
}

NeighTable::Entry* NeighTable::find(uint32_t ip) const noexcept {
  const uint32_t h = slot_of(ip);
  for (uint32_t i = 0; i < kCapacity; ++i) {
    Entry& e = slots_[(h + i) & kMask];
    const uint32_t k = e.ip.load(std::memory_order_acquire);
    if (k == ip) return &e;
    if (k == 0) return nullptr;
  }
  return nullptr;
}

NeighTable::Entry* NeighTable::find_or_insert(uint32_t ip) noexcept {
  const uint32_t h = slot_of(ip);
  for (uint32_t i = 0; i < kCapacity; ++i) {
    Entry& e = slots_[(h + i) & kMask];
    uint32_t k = e.ip.load(std::memory_order_acquire);
    if (k == 0 && e.ip.compare_exchange_strong(k, ip, std::memory_order_acq_rel)) return &e;
    if (k == ip) return &e;  // present, or another thread inserted it just now
  }
  table_full_.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

bool NeighTable::lookup(uint32_t ip, uint8_t mac[6]) noexcept {
  if (ip == own_ip_) {
    std::memcpy(mac, own_mac_, 6);
    return true;
  }
  if (ip == 0 || ip == 0xffffffff) return false;
  if ((ip >> 28) == 0xe) {  // multicast: 01:00:5e + the low 23 bits (RFC 1112, 6.4)
    const uint8_t m[6] = {0x01,       0x00, 0x5e, uint8_t((ip >> 16) & 0x7f), uint8_t(ip >> 8),
                          uint8_t(ip)};
    std::memcpy(mac, m, 6);
    return true;
  }
  Entry* e = find_or_insert(ip);
  if (!e) return false;
  const uint64_t w = e->word.load(std::memory_order_acquire);
  if (usable(state_of(w))) {
    unpack_mac(w, mac);
    if (!e->used.load(std::memory_order_relaxed)) e->used.store(1, std::memory_order_relaxed);
    return true;
  }
  // Check before storing: waiting posters must not bounce these cache lines.
  if (!e->want.load(std::memory_order_relaxed)) e->want.store(1, std::memory_order_relaxed);
  if (!hint_.load(std::memory_order_relaxed)) hint_.store(true, std::memory_order_release);
  return false;
}

NeighTable::State NeighTable::state(uint32_t ip) const noexcept {
  if (ip == own_ip_) return State::kReachable;
  const Entry* e = find(ip);
  return e ? state_of(e->word.load(std::memory_order_acquire)) : State::kInvalid;
}

uint32_t NeighTable::size() const noexcept {
  uint32_t n = 0;
  for (uint32_t i = 0; i < kCapacity; ++i) n += slots_[i].ip.load(std::memory_order_relaxed) != 0;
  return n;
}

void NeighTable::learn(uint32_t ip, const uint8_t mac[6], bool insert, uint64_t now) noexcept {
  Entry* e = insert ? find_or_insert(ip) : find(ip);
  if (!e) return;
  lock();
  e->word.store(pack(mac, State::kReachable), std::memory_order_release);
  e->confirmed_tsc = now;
  e->probes = 0;
  e->used.store(0, std::memory_order_relaxed);
  e->want.store(0, std::memory_order_relaxed);
  unlock();
}

bool NeighTable::handle_rx(Port& port, uint16_t q, rte_mbuf* m, bool* reply_for_us) noexcept {
  if (rte_pktmbuf_data_len(m) < RTE_ETHER_HDR_LEN) return false;
  auto* eth = rte_pktmbuf_mtod(m, rte_ether_hdr*);
  if (eth->ether_type != rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP)) return false;

  auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
  if (rte_pktmbuf_data_len(m) < kArpFrameLen ||
      arp->arp_hardware != rte_cpu_to_be_16(RTE_ARP_HRD_ETHER) ||
      arp->arp_protocol != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) ||
      arp->arp_hlen != RTE_ETHER_ADDR_LEN || arp->arp_plen != 4) {
    port.stats().rx_dropped_malformed.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return true;
  }
  rte_arp_ipv4& d = arp->arp_data;
  const uint16_t op = rte_be_to_cpu_16(arp->arp_opcode);
  const uint32_t sip = rte_be_to_cpu_32(d.arp_sip), tip = rte_be_to_cpu_32(d.arp_tip);
  uint8_t sha[6];
  std::memcpy(sha, d.arp_sha.addr_bytes, 6);

  if (std::memcmp(sha, own_mac_, 6) == 0) {  // our own frame, looped back
    rte_pktmbuf_free(m);
    return true;
  }
  if (sip == own_ip_) {  // someone else claims our address
    conflicts_.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return true;
  }
  const bool for_us = tip == own_ip_;
  if (sip != 0 && sip != 0xffffffff && !(sha[0] & 1)) learn(sip, sha, for_us, rte_rdtsc());
  if (reply_for_us && op == RTE_ARP_OP_REPLY && for_us) *reply_for_us = true;

  if (op == RTE_ARP_OP_REQUEST && for_us) {
    // Answer in place: swap the addresses, fill in ours.
    std::memcpy(eth->dst_addr.addr_bytes, sha, 6);
    std::memcpy(eth->src_addr.addr_bytes, own_mac_, 6);
    arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REPLY);
    std::memcpy(d.arp_tha.addr_bytes, sha, 6);
    d.arp_tip = rte_cpu_to_be_32(sip);
    std::memcpy(d.arp_sha.addr_bytes, own_mac_, 6);
    d.arp_sip = rte_cpu_to_be_32(own_ip_);
    if (port.tx_burst(q, &m, 1) == 1)
      port.stats().arp_replies_sent.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  rte_pktmbuf_free(m);
  return true;
}

rte_mbuf* NeighTable::build_request(Port& port, uint32_t target_ip) noexcept {
  rte_mbuf* m = port.alloc_mbuf();
  if (!m) return nullptr;
  auto* eth = reinterpret_cast<rte_ether_hdr*>(rte_pktmbuf_append(m, kMinFrameLen));
  if (!eth) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  std::memset(eth, 0, kMinFrameLen);
  std::memset(eth->dst_addr.addr_bytes, 0xff, 6);
  std::memcpy(eth->src_addr.addr_bytes, own_mac_, 6);
  eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
  auto* arp = reinterpret_cast<rte_arp_hdr*>(eth + 1);
  arp->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
  arp->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
  arp->arp_hlen = RTE_ETHER_ADDR_LEN;
  arp->arp_plen = 4;
  arp->arp_opcode = rte_cpu_to_be_16(RTE_ARP_OP_REQUEST);
  std::memcpy(arp->arp_data.arp_sha.addr_bytes, own_mac_, 6);
  arp->arp_data.arp_sip = rte_cpu_to_be_32(own_ip_);
  arp->arp_data.arp_tip = rte_cpu_to_be_32(target_ip);  // == own_ip_: gratuitous
  return m;
}

int NeighTable::probe_neighbours(Port& port, uint16_t q) noexcept {
  int sent = 0;
  for (uint32_t i = 0; i < kCapacity; ++i) {
    const uint32_t ip = slots_[i].ip.load(std::memory_order_acquire);
    if (ip == 0 || !usable(state_of(slots_[i].word.load(std::memory_order_acquire)))) continue;
    rte_mbuf* m = build_request(port, ip);
    if (!m) break;
    if (port.tx_burst(q, &m, 1) != 1) break;  // the port is full: stop asking
    ++sent;
  }
  return sent;
}

int NeighTable::poll(Port& port, uint16_t q, uint64_t now) noexcept {
  const bool hinted = hint_.load(std::memory_order_acquire);
  if (!hinted && announced_.load(std::memory_order_relaxed) &&
      now < next_scan_.load(std::memory_order_relaxed))
    return 0;
  if (!try_lock()) return 0;
  if (hinted) hint_.store(false, std::memory_order_relaxed);
  next_scan_.store(now + scan_tsc_, std::memory_order_relaxed);

  rte_mbuf* out[32];
  uint16_t n = 0;
  auto send = [&](uint32_t ip, Entry* e) {
    if (n == 32) return false;
    rte_mbuf* m = build_request(port, ip);
    if (!m) return false;
    out[n++] = m;
    if (e) {
      e->last_tx_tsc = now;
      ++e->probes;
    }
    return true;
  };
  if (!announced_.load(std::memory_order_relaxed))
    announced_.store(send(own_ip_, nullptr), std::memory_order_relaxed);

  for (uint32_t i = 0; i < kCapacity && n < 32; ++i) {
    Entry& e = slots_[i];
    const uint32_t ip = e.ip.load(std::memory_order_acquire);
    if (ip == 0) continue;
    const uint64_t w = e.word.load(std::memory_order_relaxed);
    const bool want = e.want.load(std::memory_order_relaxed) != 0;
    // Written as sums, not differences: another thread may have stamped an entry with a
    // TSC a little later than the `now` this caller read.
    const bool due = now >= e.last_tx_tsc + retry_tsc_;
    auto set_state = [&](State st) {
      e.word.store((w & ~uint64_t(0xff)) | uint8_t(st), std::memory_order_release);
    };
    switch (state_of(w)) {
      case State::kIncomplete:
        if (!due) break;
        if (e.probes < kMaxProbes) {
          send(ip, &e);
          e.want.store(0, std::memory_order_relaxed);
        } else {
          set_state(State::kInvalid);  // no answer
        }
        break;
      case State::kReachable:
        if (now < e.confirmed_tsc + reachable_tsc_) break;
        if (e.used.load(std::memory_order_relaxed)) {
          e.probes = 0;
          set_state(State::kProbe);
          send(ip, &e);
        } else {
          e.last_tx_tsc = 0;  // idle: the next lookup re-arms it at once
          set_state(State::kInvalid);
        }
        break;
      case State::kProbe:
        if (!due) break;
        if (e.probes < kMaxProbes)
          send(ip, &e);
        else
          set_state(State::kInvalid);
        break;
      case State::kInvalid:
        if (want && now >= e.last_tx_tsc + invalid_hold_tsc_) {
          e.probes = 0;
          e.want.store(0, std::memory_order_relaxed);
          set_state(State::kIncomplete);
          send(ip, &e);
        }  // else: the periodic scan looks again after the hold time
        break;
    }
  }
  if (n == 32) next_scan_.store(now, std::memory_order_relaxed);  // more to do next call
  unlock();
  if (n == 0) return 0;
  const uint16_t sent = port.tx_burst(q, out, n);  // frees what it could not send
  port.stats().arp_requests_sent.fetch_add(sent, std::memory_order_relaxed);
  return sent;
}

}  // namespace dverbs::pmd::net
