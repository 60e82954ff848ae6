// Re-registration of a memory region in place (ibv_rereg_mr; the IBA verb "Reregister
// Memory Region"): a new PD, a new translation and/or new access flags for the region,
// under the same lkey and rkey (as mlx5 keeps its keys where it can: peers need no new
// key). Validated completely, then applied: on any failure the region is as it was.
//
// The engines read a region's fields lock-free on every access (mr_get_local,
// mr_get_remote), so the fields change only while the region is unpublished: its key is
// cleared, the engines are quiesced (none is still inside a copy through the old
// translation, which the application may unmap as soon as this returns), the fields are
// rewritten, and the key is published again (mlx5 likewise revokes its mkey before it
// rewrites a translation, so that the change is atomic for every user of the region). A
// work request that reaches the region in that instant finds no region, exactly as if it
// had been deregistered: a local protection error or a remote access error. Those before
// it used the old registration, those after it use the new one. (mlx5 changes only a PD
// or access flags without that instant; here every change takes it, as the engines read
// the fields without atomics.) A region with bound windows is EBUSY: their bounds and
// host addresses were computed from the old translation (IBA 10.6.7.2.2 keeps such a
// region from being deregistered too).
//
// Context: process context, may sleep (the device's control mutex, quiesce).
#include <cerrno>
#include <mutex>

#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/hca/ops.h"

namespace dverbs::pmd::hca {

int rereg_mr(mid::Mr* m, uint32_t flags, mid::Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t acc) {
  Device& dev = *static_cast<Device*>(m->device);
  if (dev.retired()) return ENODEV;
  if (flags & mid::rereg::access) {
    if (acc & ~access::supported) return EINVAL;
    // Remote write or atomic access requires local write (IBA 10.6.3.1).
    if ((acc & (access::remote_write | access::remote_atomic)) && !(acc & access::local_write))
      return EINVAL;
  }
  const uint64_t h = reinterpret_cast<uint64_t>(host);
  if ((flags & mid::rereg::translation) && (length == 0 || iova + length < iova || h + length < h))
    return EINVAL;
  Mr* mr = to_mr(m);
  std::lock_guard<mid::Mutex> g(dev.ctl());
  const uint32_t key = mr->key.load(std::memory_order_relaxed);
  if (mr->kind != Mr::kRegion || key == 0) return EINVAL;
  if (mr->windows.load(std::memory_order_acquire)) return EBUSY;
  // Unpublish; once quiesced no engine uses the old fields, and a bind that found the
  // region before it was unpublished has counted its window by now.
  mr->key.store(0, std::memory_order_release);
  dev.quiesce();
  if (mr->windows.load(std::memory_order_acquire)) {
    mr->key.store(key, std::memory_order_release);
    return EBUSY;
  }
  if (flags & mid::rereg::pd) mr->pd = to_pd(pd);
  if (flags & mid::rereg::translation) {
    mr->addr = iova;
    mr->base = static_cast<uint8_t*>(host);
    mr->length = length;
  }
  if (flags & mid::rereg::access) mr->access = acc;
  mr->key.store(key, std::memory_order_release);
  return 0;
}

}  // namespace dverbs::pmd::hca
