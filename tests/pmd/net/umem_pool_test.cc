// umem_pool: the net_af_xdp mbuf pool lies wholly inside the UMEM the PMD registers for it
// (the regression: a rte_pktmbuf_pool_create() pool left its top mbufs outside, and the
// kernel refused every frame sent from them), its objects are dense page-sized frames, it
// works as a pktmbuf pool, and freeing it releases its memory.
#include "pmd/net/umem_pool.h"

#include <unistd.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <rte_errno.h>
#include <rte_mbuf.h>
#include <rte_memzone.h>

#include "pmd/net/config.h"
#include "pmd/net/eal.h"
#include "pmd/net/port.h"

namespace dverbs::pmd::net {
namespace {

bool eal() {
  static int rc = [] {
    std::string err;
    int r = eal_init(Config{}, &err);  // --no-huge: 4 KiB pages, like the daemons
    if (r) std::fprintf(stderr, "%s\n", err.c_str());
    return r;
  }();
  return rc == 0;
}

constexpr unsigned kN = Port::kPoolSize, kCache = Port::kPoolCache;

class UmemPoolTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(eal()); }
};

struct Layout {
  uintptr_t first = 0;
  size_t page = size_t(::getpagesize());
  uint32_t header = 0;
  unsigned objects = 0, off_stride = 0;
};

void check_stride(rte_mempool*, void* arg, void* obj, unsigned idx) {
  auto* l = static_cast<Layout*>(arg);
  const uintptr_t start = uintptr_t(obj) - l->header;
  if (start != l->first + idx * l->page) l->off_stride++;
  l->objects++;
}

TEST_F(UmemPoolTest, EveryObjectIsInsideTheUmemTheAfXdpPmdRegisters) {
  uint16_t room = 0;
  rte_mempool* mp = create_umem_pool("t_umem_in", kN, kCache, int(rte_socket_id()), &room);
  ASSERT_NE(mp, nullptr) << rte_strerror(rte_errno);
  EXPECT_EQ(umem_objects_outside(mp), 0u);
  // One page per object, back to back from a page boundary: frame k is at k x 4096.
  const size_t page = size_t(::getpagesize());
  EXPECT_EQ(rte_mempool_calc_obj_size(mp->elt_size, mp->flags, nullptr), page);
  const rte_mempool_memhdr* first = STAILQ_FIRST(&mp->mem_list);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(uintptr_t(first->addr) % page, 0u);
  Layout l;
  l.first = uintptr_t(first->addr);
  l.header = mp->header_size;
  rte_mempool_obj_iter(mp, check_stride, &l);
  EXPECT_EQ(l.objects, kN);
  EXPECT_EQ(l.off_stride, 0u);
  rte_mempool_free(mp);
}

// The checker itself: the pool the port made before (rte_pktmbuf_pool_create with 4032-byte
// objects, one per 4 KiB page) is caught with the top of the pool outside.
TEST_F(UmemPoolTest, PktmbufPoolCreateLeavesTheTopOfThePoolOutside) {
  rte_mempool* mp =
      rte_pktmbuf_pool_create("t_umem_old", kN, kCache, 0, 3840, int(rte_socket_id()));
  ASSERT_NE(mp, nullptr) << rte_strerror(rte_errno);
  ASSERT_EQ(rte_mempool_calc_obj_size(mp->elt_size, mp->flags, nullptr), 4032u);
  EXPECT_GT(umem_objects_outside(mp), 200u);
  rte_mempool_free(mp);
}

TEST_F(UmemPoolTest, WorksAsAPktmbufPoolAndFreesItsMemory) {
  for (int round = 0; round < 3; round++) {  // the same names again: nothing was left behind
    uint16_t room = 0;
    rte_mempool* mp = create_umem_pool("t_umem_use", kN, kCache, int(rte_socket_id()), &room);
    ASSERT_NE(mp, nullptr) << rte_strerror(rte_errno);
    EXPECT_EQ(rte_pktmbuf_data_room_size(mp), room);
    // A 1500-byte MTU frame (+ Ethernet, VLAN, FCS) fits one mbuf after the headroom.
    EXPECT_GE(room, RTE_PKTMBUF_HEADROOM + 1500 + 22);
    std::vector<rte_mbuf*> all(kN);
    ASSERT_EQ(rte_pktmbuf_alloc_bulk(mp, all.data(), kN), 0);
    for (rte_mbuf* m : all) {
      ASSERT_EQ(m->pool, mp);
      ASSERT_EQ(rte_pktmbuf_tailroom(m), uint16_t(room - RTE_PKTMBUF_HEADROOM));
    }
    rte_pktmbuf_free_bulk(all.data(), kN);
    EXPECT_EQ(rte_mempool_avail_count(mp), kN);
    rte_mempool_free(mp);
    EXPECT_EQ(rte_memzone_lookup("t_umem_use_umem"), nullptr);
  }
}

TEST_F(UmemPoolTest, ANameInUseIsRefusedWithoutLeaking) {
  uint16_t room = 0;
  rte_mempool* a = create_umem_pool("t_umem_dup", 64, 0, int(rte_socket_id()), &room);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(create_umem_pool("t_umem_dup", 64, 0, int(rte_socket_id()), &room), nullptr);
  EXPECT_EQ(rte_errno, EEXIST);
  rte_mempool_free(a);
  EXPECT_EQ(rte_memzone_lookup("t_umem_dup_umem"), nullptr);
}

}  // namespace
}  // namespace dverbs::pmd::net
