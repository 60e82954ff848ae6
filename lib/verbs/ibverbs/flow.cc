// Flow steering through the drop-in: the verbs_context ops behind ibv_create_flow and
// ibv_destroy_flow. The rdma-core attribute (an ibv_flow_attr followed by its specs) is
// translated into one dverbs FlowRule; the HCA (or dverbsd) keeps the rule.
//
// What is supported: IBV_FLOW_ATTR_NORMAL rules on raw packet QPs with ETH (dst/src MAC,
// ethertype, VLAN tag), IPV4 (src/dst address) and one of TCP or UDP (src/dst port) specs,
// each with its mask, and a priority. Other rule types (ALL_DEFAULT, MC_DEFAULT, SNIFFER:
// a catch-all or a copy of all traffic, which could show one process another's frames),
// DONT_TRAP and EGRESS flags, inner, IPv6, tunnel and action specs fail with EOPNOTSUPP;
// malformed attributes with EINVAL (both with errno set, as ibv_create_flow(3) says).
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

struct DvFlow {
  ibv_flow flow;  // first: what the application holds
  DvQp* qp;
  uint32_t id;  // the HCA's rule
};

// One spec into `r`; 0, EINVAL (bad size, repeated layer) or EOPNOTSUPP (unsupported type).
int add_spec(const ibv_flow_spec* s, FlowRule* r) {
  switch (s->hdr.type) {
    case IBV_FLOW_SPEC_ETH: {
      if (s->hdr.size != sizeof(ibv_flow_spec_eth) || r->has_eth) return EINVAL;
      const ibv_flow_spec_eth& e = s->eth;
      r->has_eth = 1;
      std::memcpy(r->dst_mac, e.val.dst_mac, 6);
      std::memcpy(r->dst_mac_mask, e.mask.dst_mac, 6);
      std::memcpy(r->src_mac, e.val.src_mac, 6);
      std::memcpy(r->src_mac_mask, e.mask.src_mac, 6);
      r->ether_type = e.val.ether_type;
      r->ether_type_mask = e.mask.ether_type;
      r->vlan_tag = e.val.vlan_tag;
      r->vlan_tag_mask = e.mask.vlan_tag;
      return 0;
    }
    case IBV_FLOW_SPEC_IPV4: {
      if (s->hdr.size != sizeof(ibv_flow_spec_ipv4) || r->has_ipv4) return EINVAL;
      const ibv_flow_spec_ipv4& ip = s->ipv4;
      r->has_ipv4 = 1;
      r->src_ip = ip.val.src_ip;
      r->src_ip_mask = ip.mask.src_ip;
      r->dst_ip = ip.val.dst_ip;
      r->dst_ip_mask = ip.mask.dst_ip;
      return 0;
    }
    case IBV_FLOW_SPEC_TCP:
    case IBV_FLOW_SPEC_UDP: {
      if (s->hdr.size != sizeof(ibv_flow_spec_tcp_udp) || r->l4_proto) return EINVAL;
      const ibv_flow_spec_tcp_udp& l4 = s->tcp_udp;
      r->l4_proto = s->hdr.type == IBV_FLOW_SPEC_TCP ? 6 : 17;
      r->src_port = l4.val.src_port;
      r->src_port_mask = l4.mask.src_port;
      r->dst_port = l4.val.dst_port;
      r->dst_port_mask = l4.mask.dst_port;
      return 0;
    }
    case IBV_FLOW_SPEC_IPV4_EXT:
    case IBV_FLOW_SPEC_IPV6:
    case IBV_FLOW_SPEC_VXLAN_TUNNEL:
    case IBV_FLOW_SPEC_GRE:
    case IBV_FLOW_SPEC_MPLS:
    case IBV_FLOW_SPEC_ESP:
    case IBV_FLOW_SPEC_ACTION_TAG:
    case IBV_FLOW_SPEC_ACTION_DROP:
    case IBV_FLOW_SPEC_ACTION_HANDLE:
    case IBV_FLOW_SPEC_ACTION_COUNT:
      return EOPNOTSUPP;
    default:
      // Any supported type with IBV_FLOW_SPEC_INNER (a tunnel's inner headers).
      return (s->hdr.type & IBV_FLOW_SPEC_INNER) ? EOPNOTSUPP : EINVAL;
  }
}

// The attribute's checks and its specs into `r`. Returns 0 or the errno.
int translate(const ibv_flow_attr* a, FlowRule* r) {
  if (a->comp_mask) return EINVAL;
  switch (a->type) {
    case IBV_FLOW_ATTR_NORMAL:
      break;
    case IBV_FLOW_ATTR_ALL_DEFAULT:
    case IBV_FLOW_ATTR_MC_DEFAULT:
    case IBV_FLOW_ATTR_SNIFFER:
      return EOPNOTSUPP;
    default:
      return EINVAL;
  }
  if (a->flags & (IBV_FLOW_ATTR_FLAGS_DONT_TRAP | IBV_FLOW_ATTR_FLAGS_EGRESS)) return EOPNOTSUPP;
  if (a->flags || a->port != 1) return EINVAL;
  r->priority = a->priority;
  // The specs follow the attribute, each as long as its size says. attr.size is not
  // checked: rdma-core computes the command's size from the specs and ignores it.
  // Each is copied before it is read: the first starts right after the 20-byte attribute,
  // and the next wherever the sizes put it, not where ibv_flow_spec's alignment wants.
  const auto* p = reinterpret_cast<const uint8_t*>(a + 1);
  for (int i = 0; i < a->num_of_specs; i++) {
    ibv_flow_spec s;
    std::memset(&s, 0, sizeof s);
    std::memcpy(&s.hdr, p, sizeof s.hdr);
    if (s.hdr.size < sizeof s.hdr) return EINVAL;
    std::memcpy(&s, p, s.hdr.size < sizeof s ? s.hdr.size : sizeof s);
    if (int rc = add_spec(&s, r)) return rc;
    p += s.hdr.size;
  }
  return 0;
}

}  // namespace

ibv_flow* create_flow_op(ibv_qp* qp, ibv_flow_attr* attr) {
  if (!qp || !attr) return fail(EINVAL, static_cast<ibv_flow*>(nullptr));
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(qp, Kind::qp);
  if (!c) return fail(EINVAL, static_cast<ibv_flow*>(nullptr));
  // Rules steer to raw packet QPs only (as mlx5 without IPoIB underlay QPs).
  if (qp->qp_type != IBV_QPT_RAW_PACKET) return fail(EINVAL, static_cast<ibv_flow*>(nullptr));
  FlowRule rule;
  if (int rc = translate(attr, &rule)) return fail(rc, static_cast<ibv_flow*>(nullptr));
  auto* f = new (std::nothrow) DvFlow();
  if (!f) return fail(ENOMEM, static_cast<ibv_flow*>(nullptr));
  DvQp* d = wrap<DvQp>(qp);
  if (int rc = mid::create_flow(d->m, &rule, &f->id)) {
    delete f;
    return fail(rc, static_cast<ibv_flow*>(nullptr));
  }
  f->qp = d;
  f->flow.context = ibctx(c);
  if (int rc = track(c, f, Kind::flow, &f->flow.handle)) {
    mid::destroy_flow(d->m, f->id);
    delete f;
    return fail(rc, static_cast<ibv_flow*>(nullptr));
  }
  d->flows++;
  return &f->flow;
}

int destroy_flow_locked(void* obj) {
  auto* f = static_cast<DvFlow*>(obj);
  if (int rc = mid::destroy_flow(f->qp->m, f->id)) return rc;
  f->qp->flows--;
  untrack(f->qp->ctx, f, f->flow.handle);
  delete f;
  return 0;
}

int destroy_flow_op(ibv_flow* flow) {
  if (!flow) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(flow, Kind::flow)) return EINVAL;
  return destroy_flow_locked(flow);
}

}  // namespace dverbs::ibv
