#include "pmd/hca/mr.h"

#include <cstring>

#include "pmd/hca/device.h"

namespace dverbs::pmd::hca {

Mr* mr_get_local(Device& dev, uint32_t lkey, const mid::Pd* pd, uint64_t addr, uint64_t len,
                 uint32_t access) noexcept {
  Mr* mr = dev.mr_lookup(lkey);
  if (!mr || mr->pd != pd || !mr_covers(*mr, addr, len, access)) return nullptr;
  return mr;
}

Mr* mr_get_remote(Device& dev, uint32_t rkey, const mid::Pd* pd, uint64_t addr, uint64_t len,
                  uint32_t access) noexcept {
  return mr_get_local(dev, rkey, pd, addr, len, access);
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
    fn(reinterpret_cast<uint8_t*>(addr), n);
    len -= n;
    offset = 0;
    i++;
  }
  return WcStatus::success;
}
}  // namespace

WcStatus scatter(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                 const uint8_t* src, uint32_t len) noexcept {
  return walk(dev, pd, sge, nsge, offset, len, access::local_write,
              [&](uint8_t* p, uint32_t n) {
                std::memcpy(p, src, n);
                src += n;
              });
}

WcStatus gather(Device& dev, const mid::Pd* pd, const Sge* sge, uint32_t nsge, uint32_t offset,
                uint8_t* dst, uint32_t len) noexcept {
  return walk(dev, pd, sge, nsge, offset, len, 0, [&](uint8_t* p, uint32_t n) {
    std::memcpy(dst, p, n);
    dst += n;
  });
}

}  // namespace dverbs::pmd::hca
