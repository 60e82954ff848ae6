#include "pmd/net/umem_pool.h"

#include <unistd.h>

#include <rte_errno.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_memzone.h>

namespace dverbs::pmd::net {
namespace {

// rte_mempool_populate_virt() gives the free callback to the first memory chunk only: the
// memzone goes with it when the pool is freed.
void free_zone(rte_mempool_memhdr*, void* zone) {
  rte_memzone_free(static_cast<const rte_memzone*>(zone));
}

struct UmemSpan {
  uintptr_t base, end;  // the UMEM net_af_xdp registers
  uint32_t header, size;
  unsigned outside;
};

void count_outside(rte_mempool*, void* arg, void* obj, unsigned) {
  auto* s = static_cast<UmemSpan*>(arg);
  const uintptr_t start = uintptr_t(obj) - s->header;  // the frame address names this
  if (start < s->base || start + s->size > s->end) s->outside++;
}

}  // namespace

rte_mempool* create_umem_pool(const std::string& name, unsigned n, unsigned cache_size, int socket,
                              uint16_t* data_room) {
  const size_t page = size_t(::getpagesize());
  // NO_SPREAD: no padding to an odd number of cache lines, so header + mbuf + data room
  // is exactly one page (4096 = 64 + 128 + 3904 on x86-64).
  const unsigned flags = RTE_MEMPOOL_F_NO_SPREAD;
  rte_mempool_objsz sz{};
  rte_mempool_calc_obj_size(0, flags, &sz);
  const uint32_t elt = uint32_t(page) - sz.header_size;
  if (rte_mempool_calc_obj_size(elt, flags, nullptr) != page || elt <= sizeof(rte_mbuf)) {
    rte_errno = EINVAL;
    return nullptr;
  }
  const auto room = uint16_t(elt - sizeof(rte_mbuf));
  *data_room = room;
  rte_mempool* mp = rte_mempool_create_empty(name.c_str(), n, elt, cache_size,
                                             sizeof(rte_pktmbuf_pool_private), socket, flags);
  if (!mp) return nullptr;
  if (int r = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), nullptr); r != 0) {
    rte_mempool_free(mp);
    rte_errno = -r;
    return nullptr;
  }
  rte_pktmbuf_pool_private priv{};
  priv.mbuf_data_room_size = room;
  rte_pktmbuf_pool_init(mp, &priv);
  // Page-aligned, so the first object starts the first page and none is skipped.
  const std::string zone_name = name + "_umem";
  const rte_memzone* zone =
      rte_memzone_reserve_aligned(zone_name.c_str(), n * page, socket, 0, unsigned(page));
  if (!zone) {
    rte_mempool_free(mp);
    return nullptr;
  }
  const int got = rte_mempool_populate_virt(mp, static_cast<char*>(zone->addr), n * page, page,
                                            free_zone, const_cast<rte_memzone*>(zone));
  if (got <= 0 || unsigned(got) != n) {
    rte_mempool_free(mp);  // frees the zone if a chunk holds it
    if (const rte_memzone* left = rte_memzone_lookup(zone_name.c_str())) rte_memzone_free(left);
    rte_errno = got < 0 ? -got : ENOMEM;
    return nullptr;
  }
  rte_mempool_obj_iter(mp, rte_pktmbuf_init, nullptr);
  return mp;
}

unsigned umem_objects_outside(const rte_mempool* mp) {
  const rte_mempool_memhdr* first = STAILQ_FIRST(&mp->mem_list);
  if (!first) return 0;
  // net_af_xdp's xdp_umem_configure(): base = the page of the first chunk, size =
  // populated_size x object size + the chunk's offset in that page.
  const auto addr = uintptr_t(first->addr);
  const uintptr_t base = addr & ~uintptr_t(::getpagesize() - 1);
  const uint32_t size = rte_mempool_calc_obj_size(mp->elt_size, mp->flags, nullptr);
  UmemSpan s{base, addr + uintptr_t(mp->populated_size) * size, mp->header_size, size, 0};
  rte_mempool_obj_iter(const_cast<rte_mempool*>(mp), count_outside, &s);
  return s.outside;
}

}  // namespace dverbs::pmd::net
