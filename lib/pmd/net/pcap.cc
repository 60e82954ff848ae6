#include "pmd/net/pcap.h"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_pcapng.h>

namespace dverbs::pmd::net {
namespace {

std::atomic<unsigned> pool_seq{0};

// Capture records are written as single segments (rte_pcapng checks the first segment's
// length against the block length), so the pool's buffers hold the largest frame.
constexpr unsigned kPoolSize = 2047;
constexpr unsigned kPoolCache = 64;

}  // namespace

std::unique_ptr<Capture> Capture::open(const std::string& path, uint32_t max_frame,
                                       std::string* err) {
  auto fail = [&](const std::string& why) {
    if (err) *err = "DVERBS_PCAP: cannot capture to '" + path + "': " + why;
    return nullptr;
  };
  std::unique_ptr<Capture> c(new Capture());
  c->path_ = path;
  const uint32_t room = std::min<uint32_t>(rte_pcapng_mbuf_size(max_frame), UINT16_MAX);
  const std::string name = "dvcap" + std::to_string(pool_seq.fetch_add(1));
  c->pool_ = rte_pktmbuf_pool_create(name.c_str(), kPoolSize, kPoolCache, 0, uint16_t(room),
                                     int(rte_socket_id()));
  if (!c->pool_) return fail(std::string("no capture buffers: ") + rte_strerror(rte_errno));

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail(std::strerror(errno));
  utsname u{};
  std::string os = uname(&u) == 0 ? std::string(u.sysname) + " " + u.release : "Linux";
  c->pcapng_ = rte_pcapng_fdopen(fd, os.c_str(), nullptr, "dverbs 0.1", nullptr);
  if (!c->pcapng_) {
    int e = rte_errno;
    ::close(fd);
    return fail(rte_strerror(e));
  }
  return c;
}

Capture::~Capture() {
  if (pcapng_) rte_pcapng_close(pcapng_);  // closes the file descriptor too
  rte_mempool_free(pool_);
}

void Capture::copy(uint16_t port, uint16_t queue, rte_mbuf* const* pkts, uint16_t n, bool tx,
                   rte_mbuf** copies) noexcept {
  const uint64_t now = rte_get_tsc_cycles();
  const auto dir = tx ? RTE_PCAPNG_DIRECTION_OUT : RTE_PCAPNG_DIRECTION_IN;
  uint64_t lost = 0;
  for (uint16_t i = 0; i < n; ++i) {
    copies[i] = rte_pcapng_copy(port, queue, pkts[i], pool_, UINT32_MAX, now, dir);
    // A record that did not fit one segment would be rejected by the writer.
    if (copies[i] && copies[i]->nb_segs != 1) {
      rte_pktmbuf_free(copies[i]);
      copies[i] = nullptr;
    }
    lost += copies[i] == nullptr;
  }
  if (lost) dropped_.fetch_add(lost, std::memory_order_relaxed);
}

void Capture::write(rte_mbuf** copies, uint16_t n) noexcept {
  uint16_t k = 0;
  for (uint16_t i = 0; i < n; ++i)
    if (copies[i]) copies[k++] = copies[i];
  if (k == 0) return;
  if (rte_pcapng_write_packets(pcapng_, copies, k) < 0)
    dropped_.fetch_add(k, std::memory_order_relaxed);
  rte_pktmbuf_free_bulk(copies, k);
}

void Capture::capture(uint16_t port, uint16_t queue, rte_mbuf* const* pkts, uint16_t n,
                      bool tx) noexcept {
  rte_mbuf* copies[kChunk];
  for (uint16_t done = 0; done < n;) {
    const uint16_t k = std::min<uint16_t>(kChunk, uint16_t(n - done));
    copy(port, queue, pkts + done, k, tx, copies);
    write(copies, k);
    done = uint16_t(done + k);
  }
}

}  // namespace dverbs::pmd::net
