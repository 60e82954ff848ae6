// Cmd::resize_cq: a client's CQ resized (ibv_resize_cq) while its QPs keep completing.
//
// The CQ's completions live in two places: the client's ring (written by the doorbell,
// polled by the client) and the HCA's CQ (staging, drained by the doorbell). The resize
// stops the doorbell for this CQ (CqObj::resizing, then synchronize()), so the old ring's
// `prod` is final. The HCA's CQ is resized with the client's unpolled completions counted
// as present (mid::resize_cq's `held`: asking for fewer than present is EINVAL), and a new
// ring of the granted size starts at the same indices. The client then copies what it has
// not polled from its old ring and attaches (proto.h CqRingHeader); the doorbell resumes on
// the new ring only once it has. Nothing is lost, duplicated or reordered: the doorbell
// moves completions from the HCA into exactly one ring, in order.
//
// Context: the connection's session thread (session.cc dispatches here).
#include <cerrno>

#include "daemon/internal.h"

namespace dverbs::daemon {

int resize_cq(Server& srv, Conn& c, const Request& req, Response& resp, int* fd_out) {
  auto* o = static_cast<CqObj*>(c.table.get(req.handle, Kind::cq));
  const uint32_t cqe = req.resize_cq.cqe;
  if (!o || cqe == 0 || cqe > (1u << 22)) {
    srv.stats.bad_commands.fetch_add(1, std::memory_order_relaxed);
    return EINVAL;
  }
  // A client that has not attached its last resized ring yet is resizing again (or hostile).
  if (!o->hdr->attached.load(std::memory_order_acquire)) return EBUSY;
  o->resizing.store(true, std::memory_order_seq_cst);
  srv.synchronize();  // the doorbell is out of its pass: the old ring is final from here
  auto resume = [o](int rc) {
    o->resizing.store(false, std::memory_order_release);
    return rc;
  };
  const uint32_t unpolled = o->prod - o->hdr->cons.v.load(std::memory_order_acquire);
  if (unpolled > o->n) return resume(EINVAL);  // impossible indices: a corrupt ring
  const uint32_t old_cqe = o->cq->cqe;
  if (int rc = mid::resize_cq(o->cq, cqe, unpolled)) return resume(rc);
  const uint32_t granted = o->cq->cqe < (1u << 22) ? o->cq->cqe : (1u << 22);
  const uint32_t n = ring_entries(granted);
  Mapping map;
  const int fd = make_ring("dverbs-cq", kRingHeaderBytes + uint64_t(n) * sizeof(ShmCqe), &map);
  if (fd < 0) {
    mid::resize_cq(o->cq, old_cqe, unpolled);  // best effort: the staging CQ as it was
    return resume(-fd);
  }
  auto* hdr = new (map.base) CqRingHeader();
  hdr->prod.v.store(o->prod, std::memory_order_relaxed);
  o->published = o->prod;  // publish_cq ran in the pass synchronize() waited for
  hdr->cons.v.store(o->prod - unpolled, std::memory_order_relaxed);  // the client sets it too
  // The client copies its arm fields over when it attaches.
  hdr->arm_seq.store(o->arm_seen, std::memory_order_relaxed);
  hdr->overflow.store(o->overrun.load(std::memory_order_relaxed), std::memory_order_relaxed);
  hdr->attached.store(0, std::memory_order_relaxed);
  const Mapping old = o->map;
  o->map = map;
  o->hdr = hdr;
  o->ring = reinterpret_cast<ShmCqe*>(static_cast<char*>(map.base) + kRingHeaderBytes);
  o->n = n;
  resp.resize_cq.cqe = granted;
  resp.resize_cq.ring_entries = n;
  resp.resize_cq.ring_bytes = map.bytes;
  resp.resize_cq.old_prod = o->prod;
  Mapping(old).unmap();  // the client keeps its own mapping of the old memfd until it attached
  *fd_out = fd;
  return resume(0);
}

}  // namespace dverbs::daemon
