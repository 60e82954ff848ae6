// pcapng capture of every frame a port sends and receives (DVERBS_PCAP), written with
// DPDK's rte_pcapng so Wireshark/tshark decode it (RoCEv2 on UDP 4791).
//
// Cost: when capture is on, each burst copies its frames into mbufs of a private pool and
// makes one writev() to the file — the only syscall on the fast path, and only when
// DVERBS_PCAP is set.
//
// Thread safety: copy()/write() may run on several queues' threads at once. Each write()
// is a single writev() of whole pcapng blocks, which Linux appends atomically to a regular
// file, so blocks of different queues never interleave. The interfaces in the file are the
// ethdev ports that exist when the capture is opened: open it after the port. Each Port
// opens its own file; two ports of one process must not share a DVERBS_PCAP path.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <rte_mbuf.h>

struct rte_pcapng;

namespace dverbs::pmd::net {

class Capture {
 public:
  // Creates (truncates) path and writes the section and interface headers. max_frame is the
  // largest frame that will be captured (larger ones are still captured, as mbuf chains).
  // Returns nullptr and sets *err to one line naming DVERBS_PCAP on failure.
  // Context: process context, after the port exists.
  static std::unique_ptr<Capture> open(const std::string& path, uint32_t max_frame,
                                       std::string* err);
  // Context: process context, no copy()/write() running.
  ~Capture();

  // Copies pkts[0..n) into capture records (copies[i] is nullptr when the capture pool is
  // exhausted; such frames are counted in dropped()). tx selects the direction flag.
  // Context: queue owner, never sleeps; allocates mbufs from the capture pool only.
  void copy(uint16_t port, uint16_t queue, rte_mbuf* const* pkts, uint16_t n, bool tx,
            rte_mbuf** copies) noexcept;
  // Writes copies[0..n) (nullptr entries skipped) with one writev() and frees them.
  // Context: queue owner, never sleeps on a regular file (a write syscall).
  void write(rte_mbuf** copies, uint16_t n) noexcept;
  // Context: queue owner. copy() then write() in chunks of up to kChunk frames.
  void capture(uint16_t port, uint16_t queue, rte_mbuf* const* pkts, uint16_t n, bool tx) noexcept;

  // Context: any thread. Frames not captured (pool exhausted or write error).
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Context: any thread.
  const std::string& path() const { return path_; }

  static constexpr uint16_t kChunk = 64;

 private:
  Capture() = default;
  rte_pcapng* pcapng_ = nullptr;
  rte_mempool* pool_ = nullptr;
  std::string path_;
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace dverbs::pmd::net
