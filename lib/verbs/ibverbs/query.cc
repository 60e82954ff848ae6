// Device, port, GID and P_Key queries: the midlayer's DeviceAttr/PortAttr/Gid translated
// into rdma-core's structs. Every value comes from the device (mid::query_*); what dverbs
// has no notion of (LIDs, SMs, VLs, counters) is reported as a RoCE NIC reports it.
#include <cerrno>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

// rdma-core's private enum ibv_gid_type_sysfs (infiniband/driver.h).
constexpr int kGidTypeSysfsRoceV2 = 1;
constexpr uint8_t kWidth1x = 1;     // IBV_WIDTH_1X
constexpr uint8_t kSpeedSdr = 1;    // IBV_SPEED_SDR: what the kernel reports for an
                                    // Ethernet link of unknown speed (ib_get_eth_speed)
constexpr uint8_t kPhysLinkUp = 5;  // PortPhysicalState LinkUp
constexpr uint8_t kPhysDisabled = 3;

void fill_device_attr(const DeviceAttr& a, ibv_device_attr* o) {
  std::memset(o, 0, sizeof *o);
  std::snprintf(o->fw_ver, sizeof o->fw_ver, "%s", a.fw_ver);
  o->node_guid = htobe64(a.node_guid);
  o->sys_image_guid = htobe64(a.node_guid);
  o->max_mr_size = a.max_mr_size;
  o->page_size_cap = a.page_size_cap;
  o->vendor_id = a.vendor_id;
  o->vendor_part_id = a.vendor_part_id;
  o->hw_ver = a.hw_ver;
  o->max_qp = int(a.max_qp);
  o->max_qp_wr = int(a.max_qp_wr);
  // What the transport implements (pmd/hca): RNR NAKs, modify with IBV_QP_CUR_STATE, port
  // active/error events on link changes. DeviceAttr carries no capability flags yet.
  o->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_CURR_QP_STATE_MOD |
                        IBV_DEVICE_SYS_IMAGE_GUID | IBV_DEVICE_PORT_ACTIVE_EVENT;
  // No IBV_DEVICE_SRQ_RESIZE: the pmd's modify_srq refuses IBV_SRQ_MAX_WR.
  // Memory windows: type 1 and type 2B (a type 2 window serves only the QP it is bound to,
  // and only a QP of its PD binds it: IBA 10.6.7, C10-72), as rxe reports them.
  if (a.max_mw) o->device_cap_flags |= IBV_DEVICE_MEM_WINDOW | IBV_DEVICE_MEM_WINDOW_TYPE_2B;
  o->max_mw = int(a.max_mw);
  if (a.xrc) o->device_cap_flags |= IBV_DEVICE_XRC;
  o->max_sge = int(a.max_sge);
  o->max_sge_rd = a.max_qp_rd_atom ? int(a.max_sge) : 0;
  o->max_cq = int(a.max_cq);
  o->max_cqe = int(a.max_cqe);
  o->max_mr = int(a.max_mr);
  o->max_pd = int(a.max_pd);
  o->max_qp_rd_atom = int(a.max_qp_rd_atom);
  o->max_res_rd_atom = int(
      uint64_t(a.max_qp_rd_atom) * a.max_qp > INT32_MAX ? INT32_MAX : a.max_qp_rd_atom * a.max_qp);
  o->max_qp_init_rd_atom = int(a.max_qp_init_rd_atom);
  o->atomic_cap = a.atomic_cap <= IBV_ATOMIC_GLOB ? ibv_atomic_cap(a.atomic_cap) : IBV_ATOMIC_NONE;
  o->max_ah = int(a.max_ah);
  o->max_srq = int(a.max_srq);
  o->max_srq_wr = int(a.max_srq_wr);
  o->max_srq_sge = a.max_srq ? int(a.max_sge) : 0;
  o->max_pkeys = 1;
  o->local_ca_ack_delay = 15;
  o->phys_port_cnt = a.phys_port_cnt;
  // Raw packet QPs with flow steering (ibv_create_flow) and IBV_SEND_IP_CSUM.
  o->max_raw_ethy_qp = int(a.max_raw_qp);
  if (a.max_raw_qp && a.max_flows) o->device_cap_flags |= IBV_DEVICE_MANAGED_FLOW_STEERING;
  if (a.max_raw_qp && a.raw_ip_csum) o->device_cap_flags |= IBV_DEVICE_RAW_IP_CSUM;
}

int fill_port_attr(Context* c, uint8_t port, ibv_port_attr* o) {
  PortAttr p;
  if (int rc = mid::query_port(c->mdev, port, &p)) return rc;
  std::memset(o, 0, sizeof *o);
  o->state = ibv_port_state(p.state);
  o->max_mtu = ibv_mtu(p.max_mtu);
  o->active_mtu = ibv_mtu(p.active_mtu);
  o->gid_tbl_len = int(p.gid_tbl_len);
  o->port_cap_flags = IBV_PORT_IP_BASED_GIDS;
  o->max_msg_sz = p.max_msg_sz;
  o->pkey_tbl_len = 1;
  o->max_vl_num = 1;  // VL0 only
  o->active_width = p.active_width ? p.active_width : kWidth1x;
  o->active_speed = p.active_speed ? p.active_speed : kSpeedSdr;
  o->phys_state = p.state == PortState::active ? kPhysLinkUp : kPhysDisabled;
  o->link_layer = p.link_layer_ethernet ? IBV_LINK_LAYER_ETHERNET : IBV_LINK_LAYER_INFINIBAND;
  return 0;
}

// Validates context and port; returns the Context or nullptr with *err set.
Context* checked(ibv_context* context, uint32_t port, int* err) {
  Context* c = registry_find(context, Kind::context);
  if (!c) {
    *err = EINVAL;
    return nullptr;
  }
  if (c->dev->removed) {
    *err = EIO;
    return nullptr;
  }
  if (port < 1 || port > c->attr.phys_port_cnt) {
    *err = EINVAL;
    return nullptr;
  }
  return c;
}

int query_gid_entry(Context* c, uint32_t port, uint32_t index, ibv_gid_entry* e) {
  PortAttr p;
  if (int rc = mid::query_port(c->mdev, uint8_t(port), &p)) return rc;
  if (index >= p.gid_tbl_len) return EINVAL;
  Gid gid;
  if (int rc = mid::query_gid(c->mdev, uint8_t(port), int(index), &gid)) return rc;
  static const uint8_t kZero[16] = {};
  if (std::memcmp(gid.raw, kZero, 16) == 0) return ENODATA;  // empty slot
  std::memset(e, 0, sizeof *e);
  std::memcpy(e->gid.raw, gid.raw, 16);
  e->gid_index = index;
  e->port_num = port;
  e->gid_type = IBV_GID_TYPE_ROCE_V2;  // IPv4-mapped GIDs of a RoCEv2 port
  e->ndev_ifindex = p.ndev_ifindex;    // the host interface's; 0 without one
  return 0;
}

}  // namespace

// verbs_context::query_port: `port_attr_len` is the size of the caller's ibv_port_attr.
int query_port_op(ibv_context* context, uint8_t port_num, ibv_port_attr* port_attr,
                  size_t port_attr_len) {
  if (!port_attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = checked(context, port_num, &err);
  if (!c) return err;
  ibv_port_attr a;
  if (int rc = fill_port_attr(c, port_num, &a)) return rc;
  std::memset(port_attr, 0, port_attr_len);
  std::memcpy(port_attr, &a, std::min(port_attr_len, sizeof a));
  return 0;
}

// verbs_context::query_device_ex.
int query_device_ex_op(ibv_context* context, const ibv_query_device_ex_input* input,
                       ibv_device_attr_ex* attr, size_t attr_size) {
  if (!attr || attr_size < sizeof(ibv_device_attr)) return EINVAL;
  if (input && input->comp_mask) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return EINVAL;
  ibv_device_attr_ex a;
  std::memset(&a, 0, sizeof a);
  DeviceAttr da;
  if (int rc = mid::query_device(c->mdev, &da)) return rc;
  fill_device_attr(da, &a.orig_attr);
  a.device_cap_flags_ex = a.orig_attr.device_cap_flags;
  // IBA 1.5 ATOMIC WRITE and global FLUSH (they need responder resources). Never
  // FLUSH_PERSISTENT: no dverbs memory is persistent (pmd/hca/iba15.cc).
  if (da.max_qp_init_rd_atom) a.device_cap_flags_ex |= kDeviceAtomicWrite | kDeviceFlushGlobal;
  a.phys_port_cnt_ex = da.phys_port_cnt;
  // Completion timestamps: a 64-bit clock of hca_core_clock kHz (the TSC; clock.cc).
  a.hca_core_clock = da.core_clock_khz;
  a.completion_timestamp_mask = da.core_clock_khz ? ~uint64_t(0) : 0;
  if (da.max_raw_qp && da.raw_ip_csum) a.raw_packet_caps = IBV_RAW_PACKET_CAP_IP_CSUM;
  // No ODP, TSO, RSS, packet pacing, tag matching, CQ moderation or device
  // memory: all zero.
  std::memset(attr, 0, attr_size);
  std::memcpy(attr, &a, std::min(attr_size, sizeof a));
  return 0;
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

int ibv_query_device(ibv_context* context, ibv_device_attr* device_attr) {
  if (!device_attr) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return EINVAL;
  DeviceAttr a;
  if (int rc = mid::query_device(c->mdev, &a)) return rc;
  fill_device_attr(a, device_attr);
  return 0;
}

// The exported symbol takes rdma-core's _compat_ibv_port_attr: ibv_port_attr without the
// fields added since (port_cap_flags2), i.e. everything before `flags`' successor.
int ibv_query_port(ibv_context* context, uint8_t port_num, _compat_ibv_port_attr* port_attr) {
  return query_port_op(context, port_num, reinterpret_cast<ibv_port_attr*>(port_attr),
                       offsetof(ibv_port_attr, port_cap_flags2));
}

int ibv_query_gid(ibv_context* context, uint8_t port_num, int index, ibv_gid* gid) {
  if (!gid || index < 0) return fail(EINVAL, -1);
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = checked(context, port_num, &err);
  if (!c) return fail(err, -1);
  ibv_gid_entry e;
  int rc = query_gid_entry(c, port_num, uint32_t(index), &e);
  if (rc == ENODATA) {  // rdma-core: an empty slot reads as the zero GID
    std::memset(gid, 0, sizeof *gid);
    return 0;
  }
  if (rc) return fail(rc, -1);
  std::memcpy(gid, &e.gid, sizeof *gid);
  return 0;
}

int _ibv_query_gid_ex(ibv_context* context, uint32_t port_num, uint32_t gid_index,
                      ibv_gid_entry* entry, uint32_t flags, size_t entry_size) {
  if (flags) return EOPNOTSUPP;
  if (!entry || entry_size < sizeof(ibv_gid_entry)) return EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = checked(context, port_num, &err);
  if (!c) return err;
  return query_gid_entry(c, port_num, gid_index, entry);
}

ssize_t _ibv_query_gid_table(ibv_context* context, ibv_gid_entry* entries, size_t max_entries,
                             uint32_t flags, size_t entry_size) {
  if (flags) return -EOPNOTSUPP;
  if ((!entries && max_entries) || entry_size < sizeof(ibv_gid_entry)) return -EINVAL;
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return -EINVAL;
  size_t n = 0;
  for (uint32_t port = 1; port <= c->attr.phys_port_cnt; ++port) {
    PortAttr p;
    if (int rc = mid::query_port(c->mdev, uint8_t(port), &p)) return -rc;
    for (uint32_t i = 0; i < p.gid_tbl_len; ++i) {
      ibv_gid_entry e;
      int rc = query_gid_entry(c, port, i, &e);
      if (rc == ENODATA) continue;
      if (rc) return -rc;
      if (n == max_entries) return -EINVAL;  // rdma-core: the table does not fit
      std::memcpy(reinterpret_cast<uint8_t*>(entries) + n * entry_size, &e, sizeof e);
      ++n;
    }
  }
  return ssize_t(n);
}

// Private in rdma-core (infiniband/driver.h); ibv_devinfo uses it.
int ibv_query_gid_type(ibv_context* context, uint8_t port_num, unsigned int index, int* type) {
  if (!type) return fail(EINVAL, -1);
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  Context* c = checked(context, port_num, &err);
  if (!c) return fail(err, -1);
  ibv_gid_entry e;
  int rc = query_gid_entry(c, port_num, index, &e);
  if (rc && rc != ENODATA) return fail(rc, -1);
  *type = kGidTypeSysfsRoceV2;
  return 0;
}

int ibv_query_pkey(ibv_context* context, uint8_t port_num, int index, __be16* pkey) {
  if (!pkey || index != 0) return fail(EINVAL, -1);
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  if (!checked(context, port_num, &err)) return fail(err, -1);
  *pkey = htobe16(0xffff);  // the default full-membership P_Key, the only one
  return 0;
}

int ibv_get_pkey_index(ibv_context* context, uint8_t port_num, __be16 pkey) {
  std::lock_guard<mid::Mutex> g(g_lock());
  int err = 0;
  if (!checked(context, port_num, &err)) return fail(err, -1);
  if ((be16toh(pkey) & 0x7fff) != 0x7fff) return fail(ENOENT, -1);
  return 0;
}

}  // extern "C"
