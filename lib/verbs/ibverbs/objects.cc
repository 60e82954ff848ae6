// Protection domains, memory regions and address handles.
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

// IBV_ACCESS_* bits the transport knows; the optional range (relaxed ordering…) is a hint
// that rdma-core lets providers ignore.
constexpr unsigned kAccessKnown = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                                  IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC |
                                  IBV_ACCESS_MW_BIND | kAccessFlushGlobal;
// IBV_ACCESS_FLUSH_PERSISTENT is not among them (EINVAL, as Linux rxe on memory that is
// not pmem): nothing here is persistent.
constexpr unsigned kAccessHugetlb = IBV_ACCESS_HUGETLB;  // a hint: pages are pages

// Validates the PD and returns its context (or nullptr with *err).
Context* pd_context(ibv_pd* pd, int* err) {
  Context* c = registry_find(pd, Kind::pd);
  if (!c) {
    *err = EINVAL;
    return nullptr;
  }
  if (c->dev->removed) {
    *err = EIO;
    return nullptr;
  }
  return c;
}

ibv_mr* reg_mr(ibv_pd* pd, void* addr, size_t length, uint64_t iova, unsigned access) {
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = pd_context(pd, &err);
  if (!c) return fail(err, static_cast<ibv_mr*>(nullptr));
  if (int rc = mr_access(&access)) return fail(rc, static_cast<ibv_mr*>(nullptr));
  const uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (length == 0 || a + length < a) return fail(EINVAL, static_cast<ibv_mr*>(nullptr));
  // Remote peers address the region by virtual address: an IOVA other than the address
  // would need translation the transport does not do.
  if (iova != a) return fail(EOPNOTSUPP, static_cast<ibv_mr*>(nullptr));
  auto* mr = new (std::nothrow) DvMr();
  if (!mr) return fail(ENOMEM, static_cast<ibv_mr*>(nullptr));
  // A driver that pins and charges registered memory itself (dverbsd charges the pages to
  // this process's RLIMIT_MEMLOCK) must not be charged twice here.
  if (!c->mdev->pins_memory) {
    if (int rc = pin_range(a, length)) {
      delete mr;
      return fail(rc, static_cast<ibv_mr*>(nullptr));
    }
    mr->pin_addr = a;
    mr->pin_len = length;
  }
  DvPd* dpd = wrap<DvPd>(pd);
  if (int rc = mid::reg_mr(dpd->m, addr, length, access, &mr->m)) {
    if (mr->pin_len) unpin_range(a, length);
    delete mr;
    return fail(rc, static_cast<ibv_mr*>(nullptr));
  }
  mr->ctx = c;
  mr->mr.context = ibctx(c);
  mr->mr.pd = pd;
  mr->mr.addr = addr;
  mr->mr.length = length;
  mr->mr.lkey = mr->m->lkey;
  mr->mr.rkey = mr->m->rkey;
  if (int rc = track(c, mr, Kind::mr, &mr->mr.handle)) {
    mid::dereg_mr(mr->m);
    if (mr->pin_len) unpin_range(a, length);
    delete mr;
    return fail(rc, static_cast<ibv_mr*>(nullptr));
  }
  return &mr->mr;
}

}  // namespace

int mr_access(unsigned* access) noexcept {
  unsigned acc = *access & ~unsigned(IBV_ACCESS_OPTIONAL_RANGE);
  if (acc & IBV_ACCESS_ON_DEMAND) return EOPNOTSUPP;
  if (acc & IBV_ACCESS_ZERO_BASED) return EOPNOTSUPP;
  if (acc & ~(kAccessKnown | kAccessHugetlb)) return EINVAL;
  acc &= kAccessKnown;
  // Remote write/atomic need local write (IBA 10.6.3.1).
  if ((acc & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) &&
      !(acc & IBV_ACCESS_LOCAL_WRITE))
    return EINVAL;
  *access = acc;
  return 0;
}

int dealloc_pd_locked(DvPd* pd) {
  if (pd->contained) return dealloc_parent_domain_locked(pd);  // extended.cc
  if (pd_in_use_by_domains(pd)) return EBUSY;
  if (int rc = mid::dealloc_pd(pd->m)) return rc;  // EBUSY while MRs/QPs/AHs/SRQs use it
  untrack(pd->ctx, pd, pd->pd.handle);
  delete pd;
  return 0;
}

int dereg_mr_locked(DvMr* mr) {
  if (int rc = mid::dereg_mr(mr->m)) return rc;
  if (mr->pin_len) unpin_range(mr->pin_addr, mr->pin_len);  // 0: the driver pins
  untrack(mr->ctx, mr, mr->mr.handle);
  delete mr;
  return 0;
}

int destroy_ah_locked(DvAh* ah) {
  if (int rc = mid::destroy_ah(ah->m)) return rc;
  untrack(ah->ctx, ah, ah->ah.handle);
  delete ah;
  return 0;
}

int ah_from_ibv(const ibv_ah_attr& in, AhAttr* out) noexcept {
  // RoCE addresses are GIDs: an address vector without a GRH cannot be routed.
  if (!in.is_global) return EINVAL;
  if (in.port_num != 0 && in.port_num != 1) return EINVAL;
  *out = AhAttr{};
  std::memcpy(out->dgid.raw, in.grh.dgid.raw, 16);
  // The flow label is a 20-bit field (IBA 8.3.1; the GRH, and the HCA's address vector):
  // uverbs passes all 32 bits through and the kernel and NICs use the low 20
  // (rdma_flow_label_to_udp_sport masks them). UCX relies on it: it sets
  // ~(path factor * path index), 0xffffffff for the first path.
  out->flow_label = in.grh.flow_label & 0xfffff;
  out->sgid_index = in.grh.sgid_index;
  out->hop_limit = in.grh.hop_limit;
  out->traffic_class = in.grh.traffic_class;
  out->sl = in.sl;
  out->port_num = in.port_num ? in.port_num : 1;
  out->is_global = true;
  return 0;
}

void ah_to_ibv(const AhAttr& in, ibv_ah_attr* out) noexcept {
  std::memset(out, 0, sizeof *out);
  std::memcpy(out->grh.dgid.raw, in.dgid.raw, 16);
  out->grh.flow_label = in.flow_label;
  out->grh.sgid_index = in.sgid_index;
  out->grh.hop_limit = in.hop_limit;
  out->grh.traffic_class = in.traffic_class;
  out->sl = in.sl;
  out->port_num = in.port_num;
  out->is_global = in.is_global;
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

ibv_pd* ibv_alloc_pd(ibv_context* context) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_pd*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_pd*>(nullptr));
  auto* pd = new (std::nothrow) DvPd();
  if (!pd) return fail(ENOMEM, static_cast<ibv_pd*>(nullptr));
  if (int rc = mid::alloc_pd(c->mdev, &pd->m)) {
    delete pd;
    return fail(rc, static_cast<ibv_pd*>(nullptr));
  }
  pd->ctx = c;
  pd->pd.context = context;
  if (int rc = track(c, pd, Kind::pd, &pd->pd.handle)) {
    mid::dealloc_pd(pd->m);
    delete pd;
    return fail(rc, static_cast<ibv_pd*>(nullptr));
  }
  return &pd->pd;
}

int ibv_dealloc_pd(ibv_pd* pd) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(pd, Kind::pd)) return EINVAL;
  return dealloc_pd_locked(wrap<DvPd>(pd));
}

ibv_mr* ibv_reg_mr(ibv_pd* pd, void* addr, size_t length, int access) {
  return reg_mr(pd, addr, length, reinterpret_cast<uint64_t>(addr), unsigned(access));
}

ibv_mr* ibv_reg_mr_iova(ibv_pd* pd, void* addr, size_t length, uint64_t iova, int access) {
  return reg_mr(pd, addr, length, iova, unsigned(access));
}

ibv_mr* ibv_reg_mr_iova2(ibv_pd* pd, void* addr, size_t length, uint64_t iova,
                         unsigned int access) {
  return reg_mr(pd, addr, length, iova, access);
}

ibv_mr* ibv_reg_dmabuf_mr(ibv_pd* pd, uint64_t, size_t, uint64_t, int, int) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(pd, Kind::pd)) return fail(EINVAL, static_cast<ibv_mr*>(nullptr));
  return fail(EOPNOTSUPP, static_cast<ibv_mr*>(nullptr));  // no dma-buf importer
}

int ibv_dereg_mr(ibv_mr* mr) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(mr, Kind::mr)) return EINVAL;
  return dereg_mr_locked(wrap<DvMr>(mr));
}

ibv_ah* ibv_create_ah(ibv_pd* pd, ibv_ah_attr* attr) {
  if (!attr) return fail(EINVAL, static_cast<ibv_ah*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = pd_context(pd, &err);
  if (!c) return fail(err, static_cast<ibv_ah*>(nullptr));
  AhAttr a;
  if (int rc = ah_from_ibv(*attr, &a)) return fail(rc, static_cast<ibv_ah*>(nullptr));
  auto* ah = new (std::nothrow) DvAh();
  if (!ah) return fail(ENOMEM, static_cast<ibv_ah*>(nullptr));
  if (int rc = mid::create_ah(wrap<DvPd>(pd)->m, &a, &ah->m)) {
    delete ah;
    return fail(rc, static_cast<ibv_ah*>(nullptr));
  }
  ah->ctx = c;
  ah->ah.context = ibctx(c);
  ah->ah.pd = pd;
  if (int rc = track(c, ah, Kind::ah, &ah->ah.handle)) {
    mid::destroy_ah(ah->m);
    delete ah;
    return fail(rc, static_cast<ibv_ah*>(nullptr));
  }
  return &ah->ah;
}

int ibv_destroy_ah(ibv_ah* ah) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(ah, Kind::ah)) return EINVAL;
  return destroy_ah_locked(wrap<DvAh>(ah));
}

}  // extern "C"
