// Receive-side fault injection (DVERBS_FAULT): loss, duplication, reordering and single-bit
// corruption of received frames, so the transport's retransmission, duplicate detection,
// PSN sequence-error NAKs and ICRC checks can be exercised on any port.
//
// Determinism: the decisions depend only on the seed, the stream id (port and queue) and the
// sequence of frames and burst sizes handed in; the same inputs give the same outputs and
// counts on every run.
//
// Thread safety: one FaultInjector per RX queue, used by that queue's owner only.
//
// Invariants: at most one frame is held back for reordering, and a held frame is released by
// the next apply() at the latest, even when that call brings no new frame — a lost frame's
// lone retransmission is never stuck behind an empty queue.
#pragma once

#include <cstdint>

#include <rte_mbuf.h>

#include "pmd/net/config.h"

namespace dverbs::pmd::net {

struct FaultCounts {
  uint64_t lost = 0, duplicated = 0, reordered = 0, corrupted = 0;
};

// splitmix64: tiny, fast, and statistically good enough for fault decisions.
class SplitMix64 {
 public:
  // Context: any thread; the generator then belongs to one owner.
  explicit SplitMix64(uint64_t seed) : s_(seed) {}
  // Context: owner only, never sleeps.
  uint64_t next() noexcept {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Context: owner only, never sleeps. Uniform in [0, 1).
  double uniform() noexcept { return double(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_;
};

class FaultInjector {
 public:
  static constexpr uint32_t kEthHdrLen = 14;

  // dup_pool provides the copies made for duplicates and for corrupting shared frames.
  // stream tells queues apart (e.g. port_id << 16 | queue).
  // Context: process context.
  FaultInjector(const FaultSpec& spec, uint64_t stream, rte_mempool* dup_pool);
  // Frees a held frame. Context: owner, after the queue stopped.
  ~FaultInjector();
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // How many frames to take from the device so that apply() can always place its output in
  // an array of cap entries (one slot kept for a held frame; with dup, half the rest).
  // Context: owner, never sleeps.
  uint16_t max_input(uint16_t cap) const noexcept;

  // Applies the faults to in[0..nb) (nb <= max_input(cap)) and writes the surviving frames,
  // duplicates and released held frame to out[0..return) (at most cap). in and out may not
  // overlap. Frames dropped are freed. Counts are added to *counts.
  // Context: owner, never sleeps; allocates only mbufs (duplicates, copies of shared frames).
  uint16_t apply(rte_mbuf* const* in, uint16_t nb, rte_mbuf** out, uint16_t cap,
                 FaultCounts* counts) noexcept;

  // Flips one pseudo-random bit in a pseudo-random byte after the Ethernet header, so that
  // the ICRC (not the Ethernet layer) catches it. Returns false (and changes nothing) for a
  // frame with no byte after the Ethernet header. If any segment is shared (refcnt > 1,
  // indirect or external buffer) the frame is first replaced by a private copy in *m, so the
  // sender's retained copy (loopback retransmission buffers) is never touched.
  // Context: owner, never sleeps.
  bool corrupt(rte_mbuf** m) noexcept;

  // Context: owner. True while a frame is held back for reordering.
  bool holding() const noexcept { return held_ != nullptr; }
  // Context: any thread.
  const FaultSpec& spec() const { return spec_; }

 private:
  FaultSpec spec_;
  SplitMix64 rng_;
  rte_mempool* pool_;
  rte_mbuf* held_ = nullptr;
};

}  // namespace dverbs::pmd::net
