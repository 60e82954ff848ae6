// Memory-region checks and the copies between packets and registered memory.
//
// Every access goes through a key lookup and a bounds/access check at the moment of use
// (IBA 10.6.3.2; never "checked at post time, used later"), so a region deregistered after
// a WR was posted yields a protection or access error instead of touching freed memory.
#pragma once

#include <cstdint>

#include "dverbs/types.h"
#include "pmd/hca/device.h"
#include "pmd/hca/objects.h"

namespace dverbs::pmd::hca {

// True if [addr, addr+len) lies inside mr (overflow-safe) and mr grants `access`
// (0 = local read, always granted). Context: any, never sleeps.
inline bool mr_covers(const Mr& mr, uint64_t addr, uint64_t len, uint32_t access) noexcept {
  if ((mr.access & access) != access) return false;
  if (addr < mr.addr) return false;
  uint64_t off = addr - mr.addr;
  return off <= mr.length && len <= mr.length - off;
}

// The host address of `addr` inside `mr` (checked by mr_covers first). A region's iova (its
// `addr`, what WQEs and remote peers name) and where this process maps it (`base`) differ
// for memory dverbsd registers on behalf of a client. Context: any, never sleeps.
inline uint8_t* mr_host(const Mr& mr, uint64_t addr) noexcept {
  return mr.base + (addr - mr.addr);
}

// Looks up an MR by key for a local access by `qp_pd`. Inline: every packet's copy to or
// from a WQE's buffers starts here. Context: any, never sleeps.
inline Mr* mr_get_local(Device& dev, uint32_t lkey, const mid::Pd* pd, uint64_t addr,
                        uint64_t len, uint32_t access) noexcept {
  Mr* mr = dev.mr_lookup(lkey);
  // Windows have no lkey: local access goes through regions only (IBA 10.6.7.1).
  if (!mr || mr->kind != Mr::kRegion || mr->pd != pd || !mr_covers(*mr, addr, len, access))
    return nullptr;
  return mr;
}
// Same for a remote access through an rkey (access among remote_read/write/atomic) by QP
// `qpn`: a region, or a bound window (type 2 only through the QP it is bound to).
Mr* mr_get_remote(Device& dev, uint32_t rkey, const mid::Pd* pd, uint32_t qpn, uint64_t addr,
                  uint64_t len, uint32_t access) noexcept;

// Binds a window (IBA 10.6.7.3): checks the region (same PD, MW_BIND access, covers the
// range, no remote write/atomic without local write) and the new rkey (same index).
// Returns success or mw_bind_err. Context: the binding QP's engine.
WcStatus mw_bind(Device& dev, Mr& window, Mr* region, uint32_t new_rkey, uint64_t addr,
                 uint64_t len, uint32_t access, uint32_t qpn, const mid::Pd* qp_pd) noexcept;
// Invalidates a type 2 window by rkey (LOCAL_INV, SEND_WITH_INV). False if `rkey` is not
// a bound type 2 window of `pd`.
bool mw_invalidate(Device& dev, uint32_t rkey, const mid::Pd* pd) noexcept;

// Scatters `len` bytes of `src` into the SGE list, starting at byte `offset` of the list.
// Returns success, loc_len_err (list too short) or loc_prot_err (bad key, bounds, access).
// Context: owner engine, never sleeps.
WcStatus scatter(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                 const uint8_t* src, uint32_t len) noexcept;
// Gathers `len` bytes starting at byte `offset` of the SGE list into `dst`.
WcStatus gather(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                uint8_t* dst, uint32_t len) noexcept;
// The same, continuing the frame's ICRC `*crc` over the bytes as they are copied
// (wire::icrc_copy: one pass over them).
WcStatus gather_icrc(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge,
                     uint32_t offset, uint8_t* dst, uint32_t len, uint32_t* crc) noexcept;

}  // namespace dverbs::pmd::hca
