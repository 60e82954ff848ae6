// The device side of a measurement child: one context on the port that DVERBS_* selects,
// one PD, a send CQ and a receive CQ, two registered buffers, and connected QP pairs.
//
// Pairs are created senders first, then receivers, so that with DVERBS_LCORES=n the
// device's least-loaded sharding puts sender i and receiver i on the same engine (and so on
// the same loopback queue, where a frame sent on queue q is received on queue q).
//
// Thread safety: one thread (the child's main thread).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dverbs/dverbs.h"

namespace dverbs::perf {

struct Fabric {
  Context ctx;
  Pd pd;
  Cq send_cq, recv_cq;
  Gid gid{};
  Mtu mtu = Mtu::mtu1024;
  std::vector<uint8_t> sbuf, rbuf;
  Mr smr, rmr;
  std::vector<Qp> senders, receivers;
  bool no_pin = false;  // set before open(): leave the lcores floating
  std::string pinned;   // what open() pinned (pin_threads)

  static constexpr uint32_t kAccess =
      access::local_write | access::remote_write | access::remote_read | access::remote_atomic;

  // Opens the device and allocates the CQs and `buf_bytes` per buffer. Exits on failure.
  void open(uint32_t cq_entries, size_t buf_bytes);
  // Creates n sender QPs and n receiver QPs of `type` and connects pair i (RC or UC).
  // Give sq_depth one signaled group more than the window: the engine pushes a send
  // completion before it retires the WQE's slot (comp.cc, comp_retire_upto), so a poster
  // that refills on the completion can find the slot still taken.
  void add_pairs(uint32_t n, QpType type, uint32_t sq_depth, uint32_t rq_depth,
                 uint32_t max_inline);
  // Creates n sender QPs connected to QPNs that do not exist at the port's own address:
  // for a port that drops what it sends (net_null), i.e. the requester path alone. UC only
  // (nothing acknowledges).
  void add_open_loop_senders(uint32_t n, uint32_t sq_depth, uint32_t max_inline);
  // Exits unless each pair's two QPs are owned by the same transport engine.
  void check_pairs_share_engines() const;
  // Engine (queue) index of a QP.
  static uint32_t engine_of(const Qp& qp);
  // Sums of every QP's protocol counters (retransmits, RNR NAKs received, sequence NAKs
  // sent, duplicates received), to merge into a child's result.
  void add_qp_counters(std::map<std::string, std::vector<double>>* r) const;
};

}  // namespace dverbs::perf
