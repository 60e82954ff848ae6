// ibv_resize_cq in a dverbsd client: the DeviceOps resize_cq op. One Cmd::resize_cq; the
// daemon answers with a new ring that continues the old one's indices (proto.h
// CqRingHeader, Resizing). Under the CQ's spinlock (pollers of this CQ spin for the copy of
// at most cqe completions, never for the command, as a NIC's provider holds its CQ lock
// while it copies CQEs to a resized buffer) the completions not polled yet move from the old
// ring to the new one, the arm fields with them, and the client attaches.
//
// Context: process context, may sleep (the command); the midlayer serialises it per CQ.
#include <unistd.h>

#include <cerrno>

#include "pmd/remote/conn.h"
#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

namespace {

// The answer describes a ring that can hold what the client has not polled yet.
bool sane(const daemon::Response& resp, uint32_t unpolled) {
  const auto& r = resp.resize_cq;
  const bool pow2 = r.ring_entries && !(r.ring_entries & (r.ring_entries - 1));
  return pow2 && r.cqe != 0 && r.cqe <= r.ring_entries && unpolled <= r.ring_entries &&
         r.ring_bytes >=
             daemon::kRingHeaderBytes + uint64_t(r.ring_entries) * sizeof(daemon::ShmCqe);
}

}  // namespace

int resize_cq(mid::Cq* c, uint32_t cqe, uint32_t held) {
  Cq& cq = *to_cq(c);
  Device& dev = rdev(c->device);
  if (held) return EINVAL;  // only dverbsd holds completions outside a CQ
  if (dev.dead()) return EIO;
  daemon::Request req;
  req.cmd = daemon::Cmd::resize_cq;
  req.handle = cq.handle;
  req.resize_cq.cqe = cqe;
  daemon::Response resp;
  int fds[kMaxRecvFds];
  int nfds = 0;
  if (int rc = dev.command(req, &resp, nullptr, 0, fds, &nfds)) return rc;
  for (int i = 1; i < nfds; i++) ::close(fds[i]);
  // From here the daemon writes only the new ring, and only once this client attached: a
  // failure below leaves the CQ without new completions (reported as EIO).
  if (nfds < 1) return EIO;
  const uint32_t old_prod = resp.resize_cq.old_prod;
  cq.lock.lock();
  const uint32_t unpolled = old_prod - cq.cons;
  cq.lock.unlock();
  Mapping map;
  if (!sane(resp, unpolled)) {
    ::close(fds[0]);
    return EIO;
  }
  if (map.map(fds[0], resp.resize_cq.ring_bytes) != 0) return EIO;
  auto* base = static_cast<uint8_t*>(map.base);
  auto* hdr = reinterpret_cast<daemon::CqRingHeader*>(base);
  auto* ring = reinterpret_cast<daemon::ShmCqe*>(base + daemon::kRingHeaderBytes);
  const uint32_t mask = resp.resize_cq.ring_entries - 1;
  cq.lock.lock();
  for (uint32_t i = cq.cons; i != old_prod; i++) ring[i & mask] = cq.ring[i & cq.mask];
  hdr->arm_flags.store(cq.hdr->arm_flags.load(std::memory_order_relaxed),
                       std::memory_order_relaxed);
  hdr->arm_cons.store(cq.hdr->arm_cons.load(std::memory_order_relaxed), std::memory_order_relaxed);
  hdr->arm_seq.store(cq.hdr->arm_seq.load(std::memory_order_relaxed), std::memory_order_relaxed);
  hdr->cons.v.store(cq.cons, std::memory_order_relaxed);
  Mapping old = cq.map;
  cq.map = map;
  cq.hdr = hdr;
  cq.ring = ring;
  cq.mask = mask;
  cq.cqe = resp.resize_cq.cqe;
  hdr->attached.store(1, std::memory_order_release);  // after the copy, cons and the arm
  cq.lock.unlock();
  old.unmap();
  return 0;
}

}  // namespace dverbs::pmd::remote
