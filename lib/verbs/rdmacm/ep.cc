// Endpoints: rdma_create_ep / rdma_destroy_ep, the synchronous-mode shortcut of
// rdma_verbs.h programs (rdma_server, rdma_client): a synchronous identifier bound
// (RAI_PASSIVE, the QP attributes kept for rdma_get_request) or resolved to its peer with
// its QP created (active), as rdma-core's cma.c does.
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

constexpr int kResolveTimeoutMs = 2000;  // rdma-core's

int passive_ep(IdPriv* p, rdma_addrinfo* res, ibv_pd* pd, ibv_qp_init_attr* qp_init_attr) {
  if (rdma_bind_addr(&p->id, res->ai_src_addr)) return -1;
  if (pd) p->id.pd = pd;
  if (qp_init_attr) {
    p->qp_init_attr = static_cast<ibv_qp_init_attr*>(std::malloc(sizeof *qp_init_attr));
    if (!p->qp_init_attr) return fail(ENOMEM);
    *p->qp_init_attr = *qp_init_attr;
    p->qp_init_attr->qp_type = ibv_qp_type(res->ai_qp_type);
  }
  return 0;
}

int active_ep(IdPriv* p, rdma_addrinfo* res, ibv_pd* pd, ibv_qp_init_attr* qp_init_attr) {
  rdma_cm_id* id = &p->id;
  if (rdma_resolve_addr(id, res->ai_src_addr, res->ai_dst_addr, kResolveTimeoutMs)) return -1;
  // rdma_getaddrinfo never fills ai_route (no IB path records on RoCE): resolve it.
  if (rdma_resolve_route(id, kResolveTimeoutMs)) return -1;
  if (qp_init_attr) {
    qp_init_attr->qp_type = ibv_qp_type(res->ai_qp_type);
    if (rdma_create_qp(id, pd, qp_init_attr)) return -1;
  }
  if (res->ai_connect_len && res->ai_connect) {
    p->connect = std::malloc(res->ai_connect_len);
    if (!p->connect) return fail(ENOMEM);
    std::memcpy(p->connect, res->ai_connect, res->ai_connect_len);
    p->connect_len = res->ai_connect_len;
  }
  return 0;
}

}  // namespace

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// EINVAL: id or res NULL, or res with no address for its direction; otherwise the errno
// of the step that failed (the identifier is destroyed then).
int rdma_create_ep(rdma_cm_id** id, rdma_addrinfo* res, ibv_pd* pd,
                   ibv_qp_init_attr* qp_init_attr) {
  if (!id || !res) return fail(EINVAL);
  const bool passive = res->ai_flags & RAI_PASSIVE;
  if (passive ? !res->ai_src_addr : !res->ai_dst_addr) return fail(EINVAL);
  rdma_cm_id* cm_id;
  if (create_id(nullptr, &cm_id, nullptr, res->ai_port_space, ibv_qp_type(res->ai_qp_type)))
    return -1;
  IdPriv* p = reinterpret_cast<IdPriv*>(cm_id);
  if (passive ? passive_ep(p, res, pd, qp_init_attr) : active_ep(p, res, pd, qp_init_attr)) {
    const int err = errno;
    rdma_destroy_ep(cm_id);
    return fail(err);
  }
  *id = cm_id;
  return 0;
}

void rdma_destroy_ep(rdma_cm_id* id) {
  IdPriv* p = lookup_any(id);
  if (!p) return;
  if (p->id.qp) rdma_destroy_qp(id);
  if (p->id.srq) rdma_destroy_srq(id);
  rdma_destroy_id(id);  // frees qp_init_attr and the connect data too
}

}  // extern "C"
