#include "pmd/hca/mr.h"

#include <cstring>

#include "base/copy.h"

#include "pmd/hca/device.h"

namespace dverbs::pmd::hca {

Mr* mr_get_remote(Device& dev, uint32_t rkey, const mid::Pd* pd, uint32_t qpn, uint64_t addr,
                  uint64_t len, uint32_t access) noexcept {
  Mr* m = dev.mr_lookup(rkey);
  if (!m || m->pd != pd) return nullptr;
  if (m->kind == Mr::kRegion) return mr_covers(*m, addr, len, access) ? m : nullptr;
  // A window: bound, to this QP for type 2 (type 2 windows are QP-associated, IBA 10.6.7),
  // the access inside its bound range. The key is re-read after the fields so a
  // concurrent rebind (which clears the key first) is never half-seen.
  if (!m->bound_to || (m->kind == Mr::kWindow2 && m->bound_qpn != qpn)) return nullptr;
  bool ok = mr_covers(*m, addr, len, access);
  std::atomic_thread_fence(std::memory_order_acquire);
  if (!ok || m->key.load(std::memory_order_relaxed) != rkey) return nullptr;
  return m;
}

WcStatus mw_bind(Device& dev, Mr& w, Mr* region, uint32_t new_rkey, uint64_t addr, uint64_t len,
                 uint32_t acc, uint32_t qpn, const mid::Pd* qp_pd) noexcept {
  (void)dev;
  const uint32_t old = w.key.load(std::memory_order_relaxed);
  // The consumer picks the key byte, any of the 256 (ibv_inc_rkey wraps 0xff to 0); the
  // index stays the window's, so the whole key is never 0.
  if ((new_rkey >> 8) != (old >> 8)) return WcStatus::mw_bind_err;
  if (w.kind == Mr::kWindow2 && w.bound_to) return WcStatus::mw_bind_err;  // invalidate first
  if (w.kind == Mr::kWindow2 && w.pd != qp_pd) return WcStatus::mw_bind_err;  // C10-72
  // A type 2 window is unbound by invalidation, never by a zero-length bind (o10-37.2.40).
  if (w.kind == Mr::kWindow2 && len == 0) return WcStatus::mw_bind_err;
  if (acc & ~(access::remote_read | access::remote_write | access::remote_atomic))
    return WcStatus::mw_bind_err;
  if (len) {
    if (!region || region->kind != Mr::kRegion || region->pd != w.pd ||
        !(region->access & access::mw_bind) || !mr_covers(*region, addr, len, 0))
      return WcStatus::mw_bind_err;
    // Remote write/atomic through a window needs local write on the region.
    if ((acc & (access::remote_write | access::remote_atomic)) &&
        !(region->access & access::local_write))
      return WcStatus::mw_bind_err;
  }
  // Unpublish, rebind, publish the new key: readers see either the old or the new binding.
  w.key.store(0, std::memory_order_release);
  if (w.bound_to) w.bound_to->windows.fetch_sub(1, std::memory_order_relaxed);
  w.bound_to = len ? region : nullptr;
  if (w.bound_to) w.bound_to->windows.fetch_add(1, std::memory_order_relaxed);
  w.addr = addr;
  w.base = len ? mr_host(*region, addr) : nullptr;
  w.length = len;
  w.access = acc;
  w.bound_qpn = qpn;
  w.lkey = w.rkey = new_rkey;
  w.key.store(new_rkey, std::memory_order_release);
  return WcStatus::success;
}

bool mw_invalidate(Device& dev, uint32_t rkey, const mid::Pd* pd) noexcept {
  Mr* m = dev.mr_lookup(rkey);
  if (!m || m->kind != Mr::kWindow2 || m->pd != pd || !m->bound_to) return false;
  m->key.store(0, std::memory_order_release);
  m->bound_to->windows.fetch_sub(1, std::memory_order_relaxed);
  m->bound_to = nullptr;
  m->length = 0;
  m->key.store(rkey, std::memory_order_release);  // the key stays the window's, unbound
  return true;
}

namespace {
// Walks the SGE list from byte `offset`, calling fn(ptr, n) for each contiguous piece.
template <class Fn>
WcStatus walk(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
              uint32_t len, uint32_t access, Fn&& fn) noexcept {
  uint32_t i = 0;
  while (i < nsge && offset >= sge[i].length) offset -= sge[i++].length;
  while (len > 0) {
    if (i >= nsge) return WcStatus::loc_len_err;
    uint32_t n = sge[i].length - offset;
    if (n > len) n = len;
    uint64_t addr = sge[i].addr + offset;
    Mr* mr = mr_get_local(dev, sge[i].lkey, pd, addr, n, access);
    if (!mr) return WcStatus::loc_prot_err;
    fn(mr_host(*mr, addr), n);
    len -= n;
    offset = 0;
    i++;
  }
  return WcStatus::success;
}

// scatter's general case, out of its line so that the common one saves no registers.
[[gnu::noinline]] WcStatus scatter_walk(Device& dev, const mid::Pd* pd, const Sge* sge,
                                        uint32_t nsge, uint32_t offset, const uint8_t* src,
                                        uint32_t len) noexcept {
  return walk(dev, pd, sge, nsge, offset, len, access::local_write,
              [&](uint8_t* p, uint32_t n) {
                std::memcpy(p, src, n);
                src += n;
              });
}
}  // namespace

WcStatus scatter(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                 const uint8_t* src, uint32_t len) noexcept {
  if (len != 0 && nsge != 0 && offset < sge[0].length && len <= sge[0].length - offset) {
    // All of it lands in the first SGE (every packet of a single-SGE receive): walk's
    // result, without its loop. Nothing to place checks no key, as in walk.
    const uint64_t addr = sge[0].addr + offset;
    Mr* mr = mr_get_local(dev, sge[0].lkey, pd, addr, len, access::local_write);
    if (!mr) return WcStatus::loc_prot_err;
    base::copy_bytes(mr_host(*mr, addr), src, len);
    return WcStatus::success;
  }
  return scatter_walk(dev, pd, sge, nsge, offset, src, len);
}

WcStatus gather(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                uint8_t* dst, uint32_t len) noexcept {
  return walk(dev, pd, sge, nsge, offset, len, 0, [&](uint8_t* p, uint32_t n) {
    std::memcpy(dst, p, n);
    dst += n;
  });
}

WcStatus gather_icrc(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge,
                     uint32_t offset, uint8_t* dst, uint32_t len, uint32_t* crc) noexcept {
  return walk(dev, pd, sge, nsge, offset, len, 0, [&](uint8_t* p, uint32_t n) {
    *crc = wire::icrc_copy(*crc, dst, p, n);
    dst += n;
  });
}

}  // namespace dverbs::pmd::hca
