// Flow steering rules (flow.h): frame parsing and matching for the engines, copy-on-write
// updates of the rule set for the control path.
#include "pmd/hca/flow.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "pmd/hca/device.h"

namespace dverbs::pmd::hca {

namespace {

constexpr uint16_t kEtherVlan = 0x8100, kEtherIpv4 = 0x0800;

uint16_t load16(const uint8_t* p) noexcept {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;  // network order
}

uint32_t load32(const uint8_t* p) noexcept {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Network-order constant of a host-order 16-bit value.
uint16_t be16(uint16_t v) noexcept {
  return uint16_t(v >> 8 | v << 8);
}

bool bytes_match(const uint8_t* have, const uint8_t* want, const uint8_t* mask, int n) {
  for (int i = 0; i < n; i++)
    if ((have[i] ^ want[i]) & mask[i]) return false;
  return true;
}

template <class T>
bool masked_eq(T have, T want, T mask) noexcept {
  return ((have ^ want) & mask) == 0;
}

}  // namespace

bool flow_parse(const uint8_t* frame, uint32_t len, FrameFields* f) noexcept {
  *f = FrameFields{};
  if (len < 14) return false;
  std::memcpy(f->dst_mac, frame, 6);
  std::memcpy(f->src_mac, frame + 6, 6);
  uint32_t l3 = 14;
  f->ether_type = load16(frame + 12);
  if (f->ether_type == be16(kEtherVlan)) {
    if (len < 18) return false;
    f->tagged = true;
    f->vlan_tag = load16(frame + 14);
    f->ether_type = load16(frame + 16);
    l3 = 18;
  }
  if (f->ether_type != be16(kEtherIpv4) || len < l3 + 20) return true;
  const uint8_t* ip = frame + l3;
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  if (ip[0] >> 4 != 4 || ihl < 20 || len < l3 + ihl) return true;
  f->ipv4 = true;
  f->ip_proto = ip[9];
  f->src_ip = load32(ip + 12);
  f->dst_ip = load32(ip + 16);
  // Ports are in the first fragment only (fragment offset 0).
  const bool first = (load16(ip + 6) & be16(0x1fff)) == 0;
  if (first && (f->ip_proto == 6 || f->ip_proto == 17) && len >= l3 + ihl + 4) {
    f->l4 = true;
    f->src_port = load16(ip + ihl);
    f->dst_port = load16(ip + ihl + 2);
  }
  return true;
}

bool flow_match(const FlowRule& r, const FrameFields& f) noexcept {
  if (r.has_eth) {
    if (!bytes_match(f.dst_mac, r.dst_mac, r.dst_mac_mask, 6) ||
        !bytes_match(f.src_mac, r.src_mac, r.src_mac_mask, 6) ||
        !masked_eq(f.ether_type, r.ether_type, r.ether_type_mask))
      return false;
    if (r.vlan_tag_mask && (!f.tagged || !masked_eq(f.vlan_tag, r.vlan_tag, r.vlan_tag_mask)))
      return false;
  }
  if (r.has_ipv4 || r.l4_proto) {
    if (!f.ipv4 || !masked_eq(f.src_ip, r.src_ip, r.src_ip_mask) ||
        !masked_eq(f.dst_ip, r.dst_ip, r.dst_ip_mask))
      return false;
  }
  if (r.l4_proto) {
    if (!f.l4 || f.ip_proto != r.l4_proto || !masked_eq(f.src_port, r.src_port, r.src_port_mask) ||
        !masked_eq(f.dst_port, r.dst_port, r.dst_port_mask))
      return false;
  }
  return true;
}

FlowTable::~FlowTable() {
  delete set_.load(std::memory_order_relaxed);
}

Qp* FlowTable::lookup(const uint8_t* frame, uint32_t len) const noexcept {
  const Set* s = set_.load(std::memory_order_acquire);
  if (!s) return nullptr;
  FrameFields f;
  if (!flow_parse(frame, len, &f)) return nullptr;
  for (const Entry& e : s->rules)
    if (flow_match(e.rule, f)) return e.qp;
  return nullptr;
}

uint32_t FlowTable::size() const noexcept {
  const Set* s = set_.load(std::memory_order_acquire);
  return s ? uint32_t(s->rules.size()) : 0;
}

void FlowTable::publish(Device& dev, Set* next) {
  if (next && next->rules.empty()) {
    delete next;
    next = nullptr;
  }
  Set* old = set_.exchange(next, std::memory_order_acq_rel);
  if (!old) return;
  dev.quiesce();  // no engine still walks `old` (or delivers to a QP it alone named)
  delete old;
}

int FlowTable::add(Device& dev, Qp* qp, const FlowRule& rule, uint32_t* id) {
  const Set* cur = set_.load(std::memory_order_acquire);
  if (cur && cur->rules.size() >= kMaxFlows) return ENOMEM;
  std::unique_ptr<Set> next(new (std::nothrow) Set());
  if (!next) return ENOMEM;
  try {
    if (cur) next->rules = cur->rules;
    Entry e{rule, next_id_, qp};
    // After every rule of the same or a higher priority: equal priorities keep the order
    // they were created in.
    auto at = std::upper_bound(
        next->rules.begin(), next->rules.end(), e,
        [](const Entry& a, const Entry& b) { return a.rule.priority < b.rule.priority; });
    next->rules.insert(at, e);
  } catch (...) {
    return ENOMEM;
  }
  *id = next_id_++;
  if (next_id_ == 0) next_id_ = 1;
  // Nothing was removed: the old set can go once no engine reads it (publish quiesces).
  publish(dev, next.release());
  return 0;
}

int FlowTable::remove(Device& dev, Qp* qp, uint32_t id) {
  const Set* cur = set_.load(std::memory_order_acquire);
  if (!cur) return EINVAL;
  auto it = std::find_if(cur->rules.begin(), cur->rules.end(),
                         [&](const Entry& e) { return e.id == id && e.qp == qp; });
  if (it == cur->rules.end()) return EINVAL;
  std::unique_ptr<Set> next(new (std::nothrow) Set());
  if (!next) return ENOMEM;
  try {
    next->rules = cur->rules;
  } catch (...) {
    return ENOMEM;
  }
  next->rules.erase(next->rules.begin() + (it - cur->rules.begin()));
  publish(dev, next.release());
  return 0;
}

void FlowTable::remove_qp(Device& dev, Qp* qp) {
  const Set* cur = set_.load(std::memory_order_acquire);
  if (!cur || std::none_of(cur->rules.begin(), cur->rules.end(),
                           [&](const Entry& e) { return e.qp == qp; }))
    return;
  // Without memory for a copy, the whole table goes: the QP must leave it either way.
  std::unique_ptr<Set> next(new (std::nothrow) Set());
  try {
    if (next)
      for (const Entry& e : cur->rules)
        if (e.qp != qp) next->rules.push_back(e);
  } catch (...) {
    next.reset();
  }
  publish(dev, next.release());
}

}  // namespace dverbs::pmd::hca
