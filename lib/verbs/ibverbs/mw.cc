// Memory windows through the drop-in (IBA 10.6.7): the ibv_context_ops entries that
// verbs.h's inline ibv_alloc_mw, ibv_dealloc_mw and ibv_bind_mw call.
//
// A window is allocated unbound. Type 1 windows are bound with ibv_bind_mw, which posts a
// bind work request on the QP's send queue (the bind completes, or fails with
// IBV_WC_MW_BIND_ERR, in order with the QP's other sends); type 2 windows with an
// IBV_WR_BIND_MW work request of the application's own (ibv_post_send, ibv_wr_bind_mw),
// which post.cc translates. Type 2 windows are type 2B: bound to one QP, usable only
// through it and only by a QP of their PD. They are invalidated by IBV_WR_LOCAL_INV or by
// a SEND with Invalidate naming their rkey, type 1 windows by a zero-length bind; and both
// by ibv_dealloc_mw.
//
// ibv_mw::rkey is updated when a bind is posted (as the man page of ibv_bind_mw says for
// type 1, and for type 2 binds too): the key the window will answer to once the bind
// completes. If the bind completes with an error, the window keeps its old key and the
// application restores it, as the man page asks.
//
// Context: alloc/dealloc are process context (g_lock, may sleep); bind_mw is the fast
// path (any thread, never sleeps, trusts its pointers as ibv_post_send does).
#include <cerrno>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

int dealloc_mw_locked(DvMw* mw) {
  // Unbinds a bound window; a bind still queued for it completes with MW_BIND_ERR.
  if (int rc = mid::dealloc_mw(mw->m)) return rc;
  untrack(mw->ctx, mw, mw->mw.handle);
  delete mw;
  return 0;
}

namespace {

ibv_mw* op_alloc_mw(ibv_pd* pd, ibv_mw_type type) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(pd, Kind::pd);
  if (!c) return fail(EINVAL, static_cast<ibv_mw*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_mw*>(nullptr));
  if (type != IBV_MW_TYPE_1 && type != IBV_MW_TYPE_2)
    return fail(EINVAL, static_cast<ibv_mw*>(nullptr));
  auto* mw = new (std::nothrow) DvMw();
  if (!mw) return fail(ENOMEM, static_cast<ibv_mw*>(nullptr));
  if (int rc = mid::alloc_mw(wrap<DvPd>(pd)->m, uint32_t(type), &mw->m)) {
    delete mw;
    return fail(rc, static_cast<ibv_mw*>(nullptr));
  }
  mw->ctx = c;
  mw->mw.context = ibctx(c);
  mw->mw.pd = pd;
  mw->mw.rkey = mw->m->rkey;
  mw->mw.type = type;
  if (int rc = track(c, mw, Kind::mw, &mw->mw.handle)) {
    mid::dealloc_mw(mw->m);
    delete mw;
    return fail(rc, static_cast<ibv_mw*>(nullptr));
  }
  return &mw->mw;
}

int op_dealloc_mw(ibv_mw* mw) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(mw, Kind::mw)) return EINVAL;
  return dealloc_mw_locked(wrap<DvMw>(mw));
}

// ibv_bind_mw (type 1; verbs.h has checked the type and that the region is in the
// window's PD): one bind work request on the QP's send queue, key byte moved on.
int op_bind_mw(ibv_qp* qp, ibv_mw* mw, ibv_mw_bind* bind) {
  if (!bind || mw->type != IBV_MW_TYPE_1) return EINVAL;
  const ibv_mw_bind_info& b = bind->bind_info;
  SendWr wr{};
  wr.wr_id = bind->wr_id;
  wr.opcode = WrOpcode::bind_mw;
  wr.send_flags = bind->send_flags;
  wr.bind_mw.mw = mid_mw(mw);
  wr.bind_mw.rkey = next_window_rkey(mw->rkey);
  wr.bind_mw.bind_info.mr = mid_mr(b.mr);
  wr.bind_mw.bind_info.addr = b.addr;
  wr.bind_mw.bind_info.length = b.length;
  wr.bind_mw.bind_info.mw_access_flags = b.mw_access_flags;
  SendWr* bad = nullptr;
  if (int rc = mid::post_send(wrap<DvQp>(qp)->m, &wr, &bad)) return rc;
  mw->rkey = wr.bind_mw.rkey;
  return 0;
}

}  // namespace

void init_mw_ops(Context* c) noexcept {
  ibv_context_ops& o = c->vctx.context.ops;
  o.alloc_mw = op_alloc_mw;
  o.dealloc_mw = op_dealloc_mw;
  o.bind_mw = op_bind_mw;
}

}  // namespace dverbs::ibv
