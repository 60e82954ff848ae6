// ibv_rereg_mr in daemon mode: one Cmd::rereg_mr (lib/daemon/rereg.cc does the rest).
//
// A new translation is re-backed with memfds as ibv_reg_mr's is (mem.cc) and sent with
// the command; once dverbsd has moved the region (keys unchanged), the old backing's
// references are dropped. On any failure the new backing is dropped and the region keeps
// the old one: nothing changed.
//
// Context: process context, may sleep.
#include <cstring>

#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

int rereg_mr(mid::Mr* m, uint32_t flags, mid::Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t acc) {
  Mr* mr = to_mr(m);
  Device& dev = rdev(m->device);
  if (dev.dead()) return EIO;
  if (flags & mid::rereg::access) {
    if (acc & ~access::supported) return EINVAL;
    if ((acc & (access::remote_write | access::remote_atomic)) && !(acc & access::local_write))
      return EINVAL;  // IBA 10.6.3.1
  }
  const bool move = flags & mid::rereg::translation;
  // The client registers its own addresses: what the HCA will name is where it maps.
  if (move && (length == 0 || iova + length < iova || reinterpret_cast<uint64_t>(host) != iova))
    return EINVAL;
  daemon::Request req;
  req.cmd = daemon::Cmd::rereg_mr;
  req.handle = mr->handle;
  auto& r = req.rereg_mr;
  r.flags = flags;
  r.pd = (flags & mid::rereg::pd) ? to_pd(pd)->handle : 0;
  r.access = acc;
  Backing nb{};
  if (move) {
    if (int rc = mem_attach(iova, length, &nb)) return rc;
    r.iova = iova;
    r.length = length;
    r.page_start = nb.page_start;
    r.npieces = nb.npieces;
    std::memcpy(r.pieces, nb.pieces, sizeof(daemon::MrPiece) * nb.npieces);
  }
  daemon::Response resp;
  if (int rc = dev.command(req, &resp, move ? nb.fds : nullptr, move ? int(nb.npieces) : 0)) {
    if (move) mem_detach(&nb);
    return rc;
  }
  if (move) {
    mem_detach(&mr->backing);
    mr->backing = nb;
    mr->addr = iova;
    mr->length = length;
  }
  if (flags & mid::rereg::pd) mr->pd = pd;
  if (flags & mid::rereg::access) mr->access = acc;
  return 0;
}

}  // namespace dverbs::pmd::remote
