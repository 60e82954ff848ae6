// Flow steering of the soft HCA (ibv_create_flow): rules that send received frames which
// are not RoCE to raw packet QPs.
//
// Which frames are steered: only those the engine's parser rejected as "not RoCE" (not
// IPv4, not UDP, or UDP to a port other than 4791) and that ARP did not consume. A RoCE
// frame never reaches the table, whatever the rules say, so no rule and no raw QP ever sees
// another QP's (or another process's) RoCE traffic; that costs the RoCE fast path nothing.
//
// Concurrency: the rule set the engines read is immutable. An update (under the device's
// control mutex) builds a new sorted set, publishes it with one atomic store, waits for
// every engine to pass a quiescent point (Device::quiesce) and only then frees the old
// set: engines never lock, never wait, and never see a freed rule or a rule's freed QP.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "dverbs/types.h"

namespace dverbs::pmd::hca {

class Device;
struct Qp;

// The fields of a frame the rules look at, in network byte order (FlowRule's layout).
struct FrameFields {
  uint8_t dst_mac[6], src_mac[6];
  uint16_t ether_type;  // after the VLAN tag, if any
  uint16_t vlan_tag;    // the TCI of an 802.1Q tag
  bool tagged;
  bool ipv4;  // an IPv4 header follows
  uint8_t ip_proto;
  uint32_t src_ip, dst_ip;
  bool l4;  // a TCP or UDP header is present (first or only fragment)
  uint16_t src_port, dst_port;
};

// Extracts the fields of an Ethernet frame; false when it is shorter than its header.
// Context: any, never sleeps.
bool flow_parse(const uint8_t* frame, uint32_t len, FrameFields* f) noexcept;
// True when the frame's fields satisfy every spec of the rule. Context: any.
bool flow_match(const FlowRule& r, const FrameFields& f) noexcept;

class FlowTable {
 public:
  // Rules a device holds (ibv_create_flow beyond: ENOMEM).
  static constexpr uint32_t kMaxFlows = 1024;

  FlowTable() = default;
  ~FlowTable();
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  // The QP the highest-priority matching rule names (lower priority value first, then
  // the older rule), or nullptr. Context: an engine inside its poll iteration.
  Qp* lookup(const uint8_t* frame, uint32_t len) const noexcept;
  bool empty() const noexcept { return set_.load(std::memory_order_acquire) == nullptr; }

  // Control path, under dev.ctl(); both wait for the engines (dev.quiesce) when a rule
  // goes away. add: 0, ENOMEM (table full or no memory). remove: 0, or EINVAL when `id`
  // is not a rule of `qp`. remove_qp drops every rule of `qp` (destroy_qp).
  int add(Device& dev, Qp* qp, const FlowRule& rule, uint32_t* id);
  int remove(Device& dev, Qp* qp, uint32_t id);
  void remove_qp(Device& dev, Qp* qp);
  uint32_t size() const noexcept;

 private:
  struct Entry {
    FlowRule rule;
    uint32_t id;
    Qp* qp;
  };
  struct Set {
    std::vector<Entry> rules;  // sorted: priority, then id
  };
  // Publishes `next` (nullptr when empty), waits for the engines, frees the old set.
  void publish(Device& dev, Set* next);
  std::atomic<Set*> set_{nullptr};
  uint32_t next_id_ = 1;
};

}  // namespace dverbs::pmd::hca
