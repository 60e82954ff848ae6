// ibv_rereg_mr: a memory region re-registered in place (issue 18).
//
// What dverbs does, which ibv_rereg_mr(3) leaves to the provider:
//  - The lkey and rkey stay the same for every combination of IBV_REREG_MR_CHANGE_PD,
//    _TRANSLATION and _ACCESS (as mlx5 keeps its keys where it can): peers that hold the
//    rkey need no new one, and reach the new memory, with the new access, through it.
//    ibv_mr's pd, addr, length, lkey and rkey are updated on success.
//  - The old translation is gone when the call returns: an access to the old range
//    through the keys fails (a local protection or remote access error) unless the new
//    range covers it, and the old memory may be freed at once.
//  - Work requests that reach the region while it changes fail as with a deregistered
//    region; those before used the old registration, those after use the new one
//    (pmd/hca/rereg.cc).
//  - On every failure the region is unchanged and still usable (the return value is
//    IBV_REREG_MR_ERR_INPUT for a bad argument, IBV_REREG_MR_ERR_CMD when the device or
//    the memory accounting refused; errno says why). Unknown or no flags, a
//    translation without an address or length, access bits without
//    IBV_REREG_MR_CHANGE_ACCESS, a PD of another context: EINVAL.
//  - Pinning: a new translation is pinned and charged against RLIMIT_MEMLOCK (pin.cc)
//    before the region moves, and the old range is uncharged after it; in daemon mode
//    dverbsd charges the new span and uncharges the old one the same way. For that
//    moment both are charged, so a move close to the limit fails with ENOMEM (the kernel
//    pins the new pages before it releases the old ones too).
//  - A region with memory windows bound to it: EBUSY.
//
// Context: process context, may sleep (g_lock, the device's control path).
#include <cerrno>
#include <mutex>

#include "verbs/ibverbs/internal.h"

using namespace dverbs;
using namespace dverbs::ibv;

namespace {

constexpr int kReregFlags =
    IBV_REREG_MR_CHANGE_TRANSLATION | IBV_REREG_MR_CHANGE_PD | IBV_REREG_MR_CHANGE_ACCESS;
static_assert(IBV_REREG_MR_CHANGE_TRANSLATION == int(mid::rereg::translation) &&
              IBV_REREG_MR_CHANGE_PD == int(mid::rereg::pd) &&
              IBV_REREG_MR_CHANGE_ACCESS == int(mid::rereg::access));

int input_error(int err) {
  errno = err;
  return IBV_REREG_MR_ERR_INPUT;
}

}  // namespace

extern "C" int ibv_rereg_mr(ibv_mr* mr, int flags, ibv_pd* pd, void* addr, size_t length,
                            int access) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(mr, Kind::mr);
  if (!c) return input_error(EINVAL);
  if (flags == 0 || (flags & ~kReregFlags)) return input_error(EINVAL);
  if (c->dev->removed) return input_error(EIO);
  const bool move = flags & IBV_REREG_MR_CHANGE_TRANSLATION;
  const uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (move && (!addr || length == 0 || a + length < a)) return input_error(EINVAL);
  if (access && !(flags & IBV_REREG_MR_CHANGE_ACCESS)) return input_error(EINVAL);
  unsigned acc = unsigned(access);
  if (flags & IBV_REREG_MR_CHANGE_ACCESS)
    if (int rc = mr_access(&acc)) return input_error(rc);
  mid::Pd* npd = nullptr;
  if (flags & IBV_REREG_MR_CHANGE_PD) {
    if (registry_find(pd, Kind::pd) != c) return input_error(EINVAL);
    npd = wrap<DvPd>(pd)->m;
  }
  DvMr* d = wrap<DvMr>(mr);
  // The new range is pinned (and charged) before the region moves; the old one after.
  const bool pin = move && !c->mdev->pins_memory;
  if (pin) {
    if (int rc = pin_range(a, length)) {
      errno = rc;
      return IBV_REREG_MR_ERR_CMD;
    }
  }
  if (int rc = mid::rereg_mr(d->m, uint32_t(flags), npd, addr, a, length, acc)) {
    if (pin) unpin_range(a, length);
    errno = rc;
    return IBV_REREG_MR_ERR_CMD;
  }
  if (pin) {
    if (d->pin_len) unpin_range(d->pin_addr, d->pin_len);
    d->pin_addr = a;
    d->pin_len = length;
  }
  if (flags & IBV_REREG_MR_CHANGE_PD) mr->pd = pd;
  if (move) {
    mr->addr = addr;
    mr->length = length;
  }
  mr->lkey = d->m->lkey;
  mr->rkey = d->m->rkey;
  return 0;
}
