// ARP (RFC 826) and the neighbour table of one port: IPv4 address -> MAC.
//
// Address resolution never blocks (ARCHITECTURE.md, "Context rules"): lookup() answers from
// the table or marks the address for resolution and returns false; the caller (the QP) keeps
// its sends and asks again. The ARP traffic itself is sent by poll() and received by
// handle_rx() on a transport lcore (or the inline progress holder).
//
// Thread safety: lookup() is lock-free and may run on any thread at any time. handle_rx()
// and poll() may run on several queues' threads; they serialise on a spinlock held for a
// few hundred nanoseconds (poll only tries it and skips the round when it is busy).
//
// Invariants: a slot's key goes from 0 to an IPv4 address once and never changes (open
// addressing with linear probing, no deletion), so a lock-free reader never sees a chain
// broken. A slot's MAC and state live in one 64-bit word, so readers see them together.
// The table holds kCapacity addresses; once full, new addresses are not resolved (counted
// in table_full()).
//
// Entry life: Incomplete (requests every kRetryMs, kMaxProbes times) -> Reachable (on any
// ARP from it) -> after kReachableSec: Probe if it was looked up since (still usable,
// refreshed with kMaxProbes requests) or Invalid if idle; Incomplete/Probe without an answer
// -> Invalid. An Invalid entry is re-armed by the next lookup, at most once per second.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <rte_mbuf.h>

namespace dverbs::pmd::net {

class Port;

class NeighTable {
 public:
  static constexpr uint32_t kCapacity = 1024;  // power of two
  static constexpr uint32_t kRetryMs = 100;
  static constexpr uint32_t kMaxProbes = 3;
  static constexpr uint32_t kReachableSec = 300;
  static constexpr uint32_t kInvalidHoldMs = 1000;
  static constexpr uint32_t kScanMs = 10;

  enum class State : uint8_t { kIncomplete = 0, kReachable, kProbe, kInvalid };

  // own_ip in host byte order. Context: process context, after eal_init() (reads TSC rate).
  NeighTable(uint32_t own_ip, const uint8_t own_mac[6]);
  // Context: process context. Uses the port's IP and MAC.
  explicit NeighTable(const Port& port);
  // Context: process context, no lookup/handle_rx/poll running.
  ~NeighTable();
  NeighTable(const NeighTable&) = delete;
  NeighTable& operator=(const NeighTable&) = delete;

  // Known -> copies the MAC, returns true. Unknown -> marks it for resolution by poll() and
  // returns false. The own address resolves to the own MAC at once, IPv4 multicast to its
  // 01:00:5e MAC. There is no routing: every address is resolved on the link.
  // Context: any thread, never blocks, lock-free; no allocation, no syscall.
  bool lookup(uint32_t ip, uint8_t mac[6]) noexcept;

  // If m is an ARP frame: learns the sender (RFC 826 merge; inserts it when the frame is
  // for us), answers a request for our address with a reply sent on queue q, frees or
  // reuses m and returns true. Otherwise returns false and leaves m to the caller.
  // *reply_for_us, when given, is set when m was an ARP reply addressed to us (the close
  // barrier counts them). Context: owner of queue q, never sleeps.
  bool handle_rx(Port& port, uint16_t q, rte_mbuf* m, bool* reply_for_us = nullptr) noexcept;

  // Close barrier: sends an ARP request on queue q to every neighbour that has answered
  // (Reachable or Probe). A neighbour reads its link in order, so its reply proves it has
  // read every frame queue q sent before the request. Returns the requests sent.
  // Context: owner of queue q, never sleeps.
  int probe_neighbours(Port& port, uint16_t q) noexcept;

  // Sends the gratuitous ARP on the first call, then requests for entries that need them
  // (at most one per entry per kRetryMs) and ages entries. Returns the number of frames
  // sent ("did work"). Cheap when nothing is pending: one atomic load and a TSC compare.
  // Context: owner of queue q, never sleeps.
  int poll(Port& port, uint16_t q, uint64_t now_tsc) noexcept;

  // Diagnostics. Context: any thread.
  State state(uint32_t ip) const noexcept;  // kInvalid when absent
  uint32_t size() const noexcept;           // addresses in the table
  uint64_t table_full() const noexcept { return table_full_.load(std::memory_order_relaxed); }
  uint64_t conflicts() const noexcept { return conflicts_.load(std::memory_order_relaxed); }
  uint32_t own_ip() const { return own_ip_; }

 private:
  struct Entry;
  Entry* find(uint32_t ip) const noexcept;
  Entry* find_or_insert(uint32_t ip) noexcept;
  void learn(uint32_t ip, const uint8_t mac[6], bool insert, uint64_t now) noexcept;
  rte_mbuf* build_request(Port& port, uint32_t target_ip) noexcept;
  void lock() noexcept;
  bool try_lock() noexcept;
  void unlock() noexcept;

  uint32_t own_ip_;
  uint8_t own_mac_[6];
  uint64_t retry_tsc_, reachable_tsc_, invalid_hold_tsc_, scan_tsc_;
  std::unique_ptr<Entry[]> slots_;
  std::atomic<bool> hint_{false};  // a lookup wants something resolved
  std::atomic<bool> lock_{false};
  std::atomic<bool> announced_{false};  // written with the lock held
  std::atomic<uint64_t> next_scan_{0};  // written with the lock held
  std::atomic<uint64_t> table_full_{0}, conflicts_{0};
};

}  // namespace dverbs::pmd::net
