// Thread domains and parent domains: the verbs_context ops alloc_td, dealloc_td and
// alloc_parent_domain. docs/VERBS.md lists the whole surface of <infiniband/verbs.h> and
// what dverbs does with each verb.
//
// A thread domain (TD) is the application's promise that it serialises its use of the
// objects created under it; rdma-core's providers use it to drop a lock and to give the
// QP a doorbell page of its own. dverbs' fast path takes no lock and rings no doorbell page,
// so a TD changes nothing in how the objects work: it is tracked, referenced by the parent
// domains that name it (EBUSY until they are gone), and freed.
//
// A parent domain is an ibv_pd that stands for a protection domain, plus an optional TD,
// the application's pd_context and its allocator callbacks. It shares the protection
// domain's mid::Pd: every verb taking an ibv_pd accepts it, and an MR registered on the
// parent domain or on the PD is usable by a QP created on either (one protection domain,
// as rdma-core's providers make it). A parent domain of a parent domain stands for the
// same protection domain (mlx5 does the same). The allocator callbacks are kept and never
// called: providers call them for the memory the device reads and writes by DMA (queue
// buffers, doorbell records); dverbs puts none of that in the application's memory — the
// queues live in the soft HCA, in this process (embedded) or in dverbsd (daemon mode).
//
// The extended ops left null (counters, work queues, RSS indirection tables, flow actions,
// device memory, null MRs, advise_mr, modify_cq, rate limits, post_srq_ops) make the
// inline wrappers of verbs.h fail with EOPNOTSUPP, as rdma-core does for a provider that
// has not got them; the device attributes report none of them (query.cc).
//
// Context: process context; every op takes g_lock (the control path, internal.h).
#include <cerrno>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

struct DvTd {
  ibv_td td;  // first
  Context* ctx;
  uint32_t handle;
};

namespace {

using AllocFn = void* (*)(ibv_pd*, void*, size_t, size_t, uint64_t);
using FreeFn = void (*)(ibv_pd*, void*, void*, uint64_t);

struct DvParentDomain {
  DvPd base;  // first; base.contained is the protection domain
  DvTd* td;   // or nullptr
  void* pd_context;
  AllocFn alloc;  // kept, never called (file comment)
  FreeFn free;
};

// Whether an object of `ctx` was created on the parent domain `pd`. Memory windows are not
// counted: a window holds the protection domain's mid::Pd, which outlives the parent
// domain (mid::dealloc_pd refuses while the window exists).
bool domain_in_use(Context* c, DvPd* pd) {
  for (void* o : c->handles.objects(Kind::qp))
    if (static_cast<DvQp*>(o)->pd == pd) return true;
  for (void* o : c->handles.objects(Kind::srq))
    if (static_cast<DvSrq*>(o)->pd == pd) return true;
  for (void* o : c->handles.objects(Kind::cq))
    if (static_cast<DvCq*>(o)->parent_domain == pd) return true;
  for (void* o : c->handles.objects(Kind::mr))
    if (static_cast<DvMr*>(o)->mr.pd == &pd->pd) return true;
  for (void* o : c->handles.objects(Kind::ah))
    if (static_cast<DvAh*>(o)->ah.pd == &pd->pd) return true;
  return false;
}

ibv_td* alloc_td_op(ibv_context* context, ibv_td_init_attr* init_attr) {
  if (!init_attr || init_attr->comp_mask) return fail(EINVAL, static_cast<ibv_td*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_td*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_td*>(nullptr));
  auto* td = new (std::nothrow) DvTd();
  if (!td) return fail(ENOMEM, static_cast<ibv_td*>(nullptr));
  td->ctx = c;
  td->td.context = context;
  if (int rc = track(c, td, Kind::td, &td->handle)) {
    delete td;
    return fail(rc, static_cast<ibv_td*>(nullptr));
  }
  return &td->td;
}

int dealloc_td_op(ibv_td* td) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(td, Kind::td)) return EINVAL;
  return dealloc_td_locked(wrap<DvTd>(td));
}

ibv_pd* alloc_parent_domain_op(ibv_context* context, ibv_parent_domain_init_attr* a) {
  constexpr uint32_t kKnown =
      IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS | IBV_PARENT_DOMAIN_INIT_ATTR_PD_CONTEXT;
  if (!a || (a->comp_mask & ~kKnown)) return fail(EINVAL, static_cast<ibv_pd*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_pd*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_pd*>(nullptr));
  // The PD is mandatory (rdma-core's ibv_check_alloc_parent_domain); PD and TD must be
  // this context's.
  if (registry_find(a->pd, Kind::pd) != c) return fail(EINVAL, static_cast<ibv_pd*>(nullptr));
  if (a->td && registry_find(a->td, Kind::td) != c)
    return fail(EINVAL, static_cast<ibv_pd*>(nullptr));
  DvPd* contained = wrap<DvPd>(a->pd);
  if (contained->contained) contained = contained->contained;
  auto* d = new (std::nothrow) DvParentDomain();
  if (!d) return fail(ENOMEM, static_cast<ibv_pd*>(nullptr));
  d->base.m = contained->m;
  d->base.ctx = c;
  d->base.contained = contained;
  d->base.pd.context = context;
  d->td = a->td ? wrap<DvTd>(a->td) : nullptr;
  if (a->comp_mask & IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS) {
    d->alloc = a->alloc;
    d->free = a->free;
  }
  if (a->comp_mask & IBV_PARENT_DOMAIN_INIT_ATTR_PD_CONTEXT) d->pd_context = a->pd_context;
  if (int rc = track(c, d, Kind::pd, &d->base.pd.handle)) {
    delete d;
    return fail(rc, static_cast<ibv_pd*>(nullptr));
  }
  return &d->base.pd;
}

}  // namespace

DvPd* parent_domain_of(Context* c, ibv_pd* pd) noexcept {
  if (!pd || registry_find(pd, Kind::pd) != c) return nullptr;
  DvPd* d = wrap<DvPd>(pd);
  return d->contained ? d : nullptr;
}

bool pd_in_use_by_domains(DvPd* pd) {
  for (void* o : pd->ctx->handles.objects(Kind::pd))
    if (static_cast<DvPd*>(o)->contained == pd) return true;
  return false;
}

int dealloc_parent_domain_locked(DvPd* pd) {
  if (domain_in_use(pd->ctx, pd)) return EBUSY;
  untrack(pd->ctx, pd, pd->pd.handle);
  delete reinterpret_cast<DvParentDomain*>(pd);
  return 0;
}

int dealloc_td_locked(DvTd* td) {
  for (void* o : td->ctx->handles.objects(Kind::pd)) {
    auto* d = static_cast<DvPd*>(o);
    if (d->contained && reinterpret_cast<DvParentDomain*>(d)->td == td) return EBUSY;
  }
  untrack(td->ctx, td, td->handle);
  delete td;
  return 0;
}

void init_extended_ops(Context* c) noexcept {
  verbs_context& v = c->vctx;
  v.alloc_td = alloc_td_op;
  v.dealloc_td = dealloc_td_op;
  v.alloc_parent_domain = alloc_parent_domain_op;
}

}  // namespace dverbs::ibv
