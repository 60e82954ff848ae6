// Cmd::rereg_mr: a client's memory region re-registered in place (ibv_rereg_mr), keys kept.
//
// A new translation arrives as reg_mr's does (memfd pieces the client has re-backed), is
// charged against the client's RLIMIT_MEMLOCK account and mapped before the HCA moves the
// region to it (mid::rereg_mr quiesces the engines); only then is the old span unmapped and
// uncharged. Every failure leaves the region, its mapping and its charge as they were.
// The doorbell can still name the MR by handle meanwhile (a bind's region): the MrObj and
// its mid::Mr stay the same object throughout.
//
// Context: the connection's session thread (session.cc dispatches here).
#include <cerrno>
#include <cstring>

#include "daemon/internal.h"

namespace dverbs::daemon {

namespace {

int bad(Server& srv) noexcept {
  srv.stats.bad_commands.fetch_add(1, std::memory_order_relaxed);
  return EINVAL;
}

}  // namespace

int rereg_mr(Server& srv, Conn& c, const Request& req, const int* fds, uint32_t nfds,
             Response& resp) {
  const auto& r = req.rereg_mr;
  auto* o = static_cast<MrObj*>(c.table.get(req.handle, Kind::mr));
  if (!o || r.flags == 0 || (r.flags & ~mid::rereg::all)) return bad(srv);
  mid::Pd* pd = nullptr;
  if (r.flags & mid::rereg::pd) {
    auto* p = static_cast<PdObj*>(c.table.get(r.pd, Kind::pd));
    if (!p) return bad(srv);
    pd = p->pd;
  }
  const bool move = r.flags & mid::rereg::translation;
  if (!move && nfds) return bad(srv);
  Mapping span;
  void* host = nullptr;
  uint64_t bytes = 0;
  if (move) {
    // The translation in reg_mr's layout, for the checks and the mapping reg_mr uses.
    Request m;
    m.reg_mr.iova = r.iova;
    m.reg_mr.length = r.length;
    m.reg_mr.page_start = r.page_start;
    m.reg_mr.npieces = r.npieces;
    if (r.npieces < 1 || r.npieces > kMaxPieces || r.npieces != nfds) return bad(srv);
    std::memcpy(m.reg_mr.pieces, r.pieces, sizeof(MrPiece) * r.npieces);
    if (client_span_bytes(m, &bytes) != 0) return bad(srv);
    // Charged before mapping, as reg_mr (mapping mlock()s and so populates the span).
    if (int rc = srv.charge_pinned(c, bytes)) return rc;
    if (int rc = map_client_memory(m, fds, nfds, &span, &host)) {
      srv.uncharge_pinned(c, bytes);
      return rc == EINVAL ? bad(srv) : rc;
    }
  }
  if (int rc = mid::rereg_mr(o->mr, r.flags, pd, host, r.iova, r.length, r.access)) {
    if (move) {
      span.unmap();
      srv.uncharge_pinned(c, bytes);
    }
    return rc;
  }
  if (move) {  // the HCA was quiesced: nothing copies through the old span any more
    o->span.unmap();
    srv.uncharge_pinned(c, o->charged);
    o->span = span;
    o->charged = bytes;
  }
  resp.handle = req.handle;
  resp.mr.lkey = o->mr->lkey;
  resp.mr.rkey = o->mr->rkey;
  return 0;
}

}  // namespace dverbs::daemon
