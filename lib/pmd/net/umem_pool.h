// The mbuf pool of a net_af_xdp port, laid out the way the PMD registers it as its UMEM.
//
// net_af_xdp (DPDK 22.11) hands the pool's memory to the kernel as the AF_XDP UMEM and
// assumes the objects sit back to back: the UMEM is the page holding the first memory
// chunk, `populated_size` times the object size long (plus the chunk's offset in that
// page), and a frame's address is its object's offset from that base. A pool made by
// rte_pktmbuf_pool_create() does not look like that: objects are padded to an odd number
// of cache lines (4032 B, not 4096) and, on 4 KiB pages, placed one per page so that none
// crosses a page, at a stride of 4096. The top ~1.5 % of the pool then lies beyond the
// registered UMEM: the kernel refuses every TX descriptor and fill-ring entry naming one of
// those mbufs (tx_invalid_descs), and — on recent kernels — ends the sendto() kick at such
// a descriptor, so the frames queued behind it wait for the next burst.
//
// create_umem_pool() makes each object exactly one page (NO_SPREAD: no padding) in
// page-aligned memory, so the objects are dense and the PMD's UMEM covers all of them.
#pragma once

#include <cstdint>
#include <string>

#include <rte_mempool.h>

namespace dverbs::pmd::net {

// A pktmbuf pool of n page-sized objects in page-aligned memory (see above), mbuf data room
// *data_room (set even on failure). rte_mempool_free() releases it and its memory. nullptr with
// rte_errno set on failure. Context: process context, after EAL init, may sleep.
rte_mempool* create_umem_pool(const std::string& name, unsigned n, unsigned cache_size, int socket,
                              uint16_t* data_room);

// How many objects of mp lie (partly) outside the UMEM net_af_xdp registers for it: 0 for
// a pool it can use whole. Context: process context.
unsigned umem_objects_outside(const rte_mempool* mp);

}  // namespace dverbs::pmd::net
