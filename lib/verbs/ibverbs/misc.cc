// The rest of the public libibverbs API: strings, rate conversions, sysfs helpers, kernel
// ABI marshalling (used by librdmacm), address handles from work completions, fork
// support, multicast, and the verbs dverbs does not implement (import, ECE), which fail
// with EOPNOTSUPP after validating their arguments (docs/VERBS.md has the whole table).
#include <fcntl.h>
#include <infiniband/sa.h>
#include <rdma/ib_user_sa.h>
#include <rdma/ib_user_verbs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "verbs/ibverbs/internal.h"

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

// Declared in rdma-core's private or removed headers (driver.h, marshall.h).
const char* ibv_get_sysfs_path(void);
int ibv_read_sysfs_file(const char* dir, const char* file, char* buf, size_t size);
int ibv_dontfork_range(void* base, size_t size);
int ibv_dofork_range(void* base, size_t size);
void ibv_copy_qp_attr_from_kern(ibv_qp_attr* dst, ib_uverbs_qp_attr* src);
void ibv_copy_ah_attr_from_kern(ibv_ah_attr* dst, ib_uverbs_ah_attr* src);
void ibv_copy_path_rec_from_kern(ibv_sa_path_rec* dst, ib_user_path_rec* src);
void ibv_copy_path_rec_to_kern(ib_user_path_rec* dst, ibv_sa_path_rec* src);

// ---------------------------------------------------------------- strings
const char* ibv_node_type_str(ibv_node_type node_type) {
  static const char* const kStr[] = {nullptr,
                                     "InfiniBand channel adapter",
                                     "InfiniBand switch",
                                     "InfiniBand router",
                                     "iWARP NIC",
                                     "usNIC",
                                     "usNIC UDP"};
  if (node_type < IBV_NODE_CA || node_type > IBV_NODE_USNIC_UDP) return "unknown";
  return kStr[node_type];
}

const char* ibv_port_state_str(ibv_port_state port_state) {
  static const char* const kStr[] = {"no state change (NOP)", "down", "init", "armed", "active",
                                     "active defer"};
  if (port_state < IBV_PORT_NOP || port_state > IBV_PORT_ACTIVE_DEFER) return "unknown";
  return kStr[port_state];
}

// The names live once, in the midlayer (types.cc): the enums have the same values
// (static_asserts in internal.h), and out-of-range values read "unknown" there too.
const char* ibv_event_type_str(ibv_event_type event) {
  return event_type_str(static_cast<EventType>(event));
}

const char* ibv_wc_status_str(ibv_wc_status status) {
  return wc_status_str(static_cast<WcStatus>(status));
}

// ---------------------------------------------------------------- rates
namespace {
struct RateRow {
  ibv_rate rate;
  int mult;  // of 2.5 Gb/s, 0 when not a multiple
  int mbps;
};
constexpr RateRow kRates[] = {
    {IBV_RATE_2_5_GBPS, 1, 2500},     {IBV_RATE_5_GBPS, 2, 5000},
    {IBV_RATE_10_GBPS, 4, 10000},     {IBV_RATE_20_GBPS, 8, 20000},
    {IBV_RATE_30_GBPS, 12, 30000},    {IBV_RATE_40_GBPS, 16, 40000},
    {IBV_RATE_60_GBPS, 24, 60000},    {IBV_RATE_80_GBPS, 32, 80000},
    {IBV_RATE_120_GBPS, 48, 120000},  {IBV_RATE_14_GBPS, 0, 14062},
    {IBV_RATE_56_GBPS, 0, 56250},     {IBV_RATE_112_GBPS, 0, 112500},
    {IBV_RATE_168_GBPS, 0, 168750},   {IBV_RATE_25_GBPS, 0, 25781},
    {IBV_RATE_100_GBPS, 0, 103125},   {IBV_RATE_200_GBPS, 0, 206250},
    {IBV_RATE_300_GBPS, 0, 309375},   {IBV_RATE_28_GBPS, 0, 28125},
    {IBV_RATE_50_GBPS, 0, 53125},     {IBV_RATE_400_GBPS, 0, 425000},
    {IBV_RATE_600_GBPS, 0, 637500},   {IBV_RATE_800_GBPS, 0, 850000},
    {IBV_RATE_1200_GBPS, 0, 1275000},
};
}  // namespace

int ibv_rate_to_mult(ibv_rate rate) {
  for (const RateRow& r : kRates)
    if (r.rate == rate && r.mult) return r.mult;
  return -1;
}

ibv_rate mult_to_ibv_rate(int mult) {
  for (const RateRow& r : kRates)
    if (r.mult && r.mult == mult) return r.rate;
  return IBV_RATE_MAX;
}

int ibv_rate_to_mbps(ibv_rate rate) {
  for (const RateRow& r : kRates)
    if (r.rate == rate) return r.mbps;
  return -1;
}

ibv_rate mbps_to_ibv_rate(int mbps) {
  for (const RateRow& r : kRates)
    if (r.mbps == mbps) return r.rate;
  return IBV_RATE_MAX;
}

// ---------------------------------------------------------------- sysfs
const char* ibv_get_sysfs_path(void) {
  static char path[IBV_SYSFS_PATH_MAX] = "/sys";
  static std::once_flag once;
  std::call_once(once, [] {
    if (const char* env = std::getenv("SYSFS_PATH")) {
      std::snprintf(path, sizeof path, "%s", env);
      size_t n = std::strlen(path);
      while (n > 1 && path[n - 1] == '/') path[--n] = '\0';
    }
  });
  return path;
}

int ibv_read_sysfs_file(const char* dir, const char* file, char* buf, size_t size) {
  if (!dir || !file || !buf || !size) return fail(EINVAL, -1);
  char path[IBV_SYSFS_PATH_MAX * 2];
  std::snprintf(path, sizeof path, "%s/%s", dir, file);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const ssize_t n = read(fd, buf, size);
  close(fd);
  if (n <= 0) return -1;
  size_t len = size_t(n);
  if (len < size) buf[len] = '\0';
  if (buf[len - 1] == '\n') buf[--len] = '\0';
  return int(len);
}

// ---------------------------------------------------------------- kernel ABI marshalling
void ibv_copy_ah_attr_from_kern(ibv_ah_attr* dst, ib_uverbs_ah_attr* src) {
  std::memcpy(dst->grh.dgid.raw, src->grh.dgid, sizeof dst->grh.dgid);
  dst->grh.flow_label = src->grh.flow_label;
  dst->grh.sgid_index = src->grh.sgid_index;
  dst->grh.hop_limit = src->grh.hop_limit;
  dst->grh.traffic_class = src->grh.traffic_class;
  dst->dlid = src->dlid;
  dst->sl = src->sl;
  dst->src_path_bits = src->src_path_bits;
  dst->static_rate = src->static_rate;
  dst->is_global = src->is_global;
  dst->port_num = src->port_num;
}

void ibv_copy_qp_attr_from_kern(ibv_qp_attr* dst, ib_uverbs_qp_attr* src) {
  dst->cur_qp_state = ibv_qp_state(src->cur_qp_state);
  dst->path_mtu = ibv_mtu(src->path_mtu);
  dst->path_mig_state = ibv_mig_state(src->path_mig_state);
  dst->qkey = src->qkey;
  dst->rq_psn = src->rq_psn;
  dst->sq_psn = src->sq_psn;
  dst->dest_qp_num = src->dest_qp_num;
  dst->qp_access_flags = src->qp_access_flags;
  dst->cap.max_send_wr = src->max_send_wr;
  dst->cap.max_recv_wr = src->max_recv_wr;
  dst->cap.max_send_sge = src->max_send_sge;
  dst->cap.max_recv_sge = src->max_recv_sge;
  dst->cap.max_inline_data = src->max_inline_data;
  ibv_copy_ah_attr_from_kern(&dst->ah_attr, &src->ah_attr);
  ibv_copy_ah_attr_from_kern(&dst->alt_ah_attr, &src->alt_ah_attr);
  dst->pkey_index = src->pkey_index;
  dst->alt_pkey_index = src->alt_pkey_index;
  dst->en_sqd_async_notify = src->en_sqd_async_notify;
  dst->sq_draining = src->sq_draining;
  dst->max_rd_atomic = src->max_rd_atomic;
  dst->max_dest_rd_atomic = src->max_dest_rd_atomic;
  dst->min_rnr_timer = src->min_rnr_timer;
  dst->port_num = src->port_num;
  dst->timeout = src->timeout;
  dst->retry_cnt = src->retry_cnt;
  dst->rnr_retry = src->rnr_retry;
  dst->alt_port_num = src->alt_port_num;
  dst->alt_timeout = src->alt_timeout;
}

void ibv_copy_path_rec_from_kern(ibv_sa_path_rec* dst, ib_user_path_rec* src) {
  std::memcpy(dst->dgid.raw, src->dgid, sizeof dst->dgid);
  std::memcpy(dst->sgid.raw, src->sgid, sizeof dst->sgid);
  dst->dlid = src->dlid;
  dst->slid = src->slid;
  dst->raw_traffic = int(src->raw_traffic);
  dst->flow_label = src->flow_label;
  dst->hop_limit = src->hop_limit;
  dst->traffic_class = src->traffic_class;
  dst->reversible = int(src->reversible);
  dst->numb_path = src->numb_path;
  dst->pkey = src->pkey;
  dst->sl = src->sl;
  dst->mtu_selector = src->mtu_selector;
  dst->mtu = uint8_t(src->mtu);
  dst->rate_selector = src->rate_selector;
  dst->rate = src->rate;
  dst->packet_life_time_selector = src->packet_life_time_selector;
  dst->packet_life_time = src->packet_life_time;
  dst->preference = src->preference;
}

void ibv_copy_path_rec_to_kern(ib_user_path_rec* dst, ibv_sa_path_rec* src) {
  std::memcpy(dst->dgid, src->dgid.raw, sizeof dst->dgid);
  std::memcpy(dst->sgid, src->sgid.raw, sizeof dst->sgid);
  dst->dlid = src->dlid;
  dst->slid = src->slid;
  dst->raw_traffic = __u32(src->raw_traffic);
  dst->flow_label = src->flow_label;
  dst->hop_limit = src->hop_limit;
  dst->traffic_class = src->traffic_class;
  dst->reversible = __u32(src->reversible);
  dst->numb_path = src->numb_path;
  dst->pkey = src->pkey;
  dst->sl = src->sl;
  dst->mtu_selector = src->mtu_selector;
  dst->mtu = src->mtu;
  dst->rate_selector = src->rate_selector;
  dst->rate = src->rate;
  dst->packet_life_time_selector = src->packet_life_time_selector;
  dst->packet_life_time = src->packet_life_time;
  dst->preference = src->preference;
}

// ---------------------------------------------------------------- AH from a completion
// RoCEv2 over IPv4: the 40-byte GRH area of a UD receive holds the IPv4 header in its last
// 20 bytes (as the kernel's RoCE drivers and the dverbs responder lay it out).
int ibv_init_ah_from_wc(ibv_context* context, uint8_t port_num, ibv_wc* wc, ibv_grh* grh,
                        ibv_ah_attr* ah_attr) {
  if (!wc || !ah_attr) return fail(EINVAL, -1);
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    Context* c = registry_find(context, Kind::context);
    if (!c || port_num < 1 || port_num > c->attr.phys_port_cnt) return fail(EINVAL, -1);
  }
  std::memset(ah_attr, 0, sizeof *ah_attr);
  ah_attr->dlid = wc->slid;
  ah_attr->sl = wc->sl;
  ah_attr->src_path_bits = wc->dlid_path_bits;
  ah_attr->port_num = port_num;
  if (!(wc->wc_flags & IBV_WC_GRH) || !grh) return fail(EINVAL, -1);  // RoCE needs the GRH
  union ibv_gid sgid;  // ours: the destination of the received packet
  const auto* raw = reinterpret_cast<const uint8_t*>(grh);
  if ((raw[20] >> 4) == 4) {
    std::memset(&ah_attr->grh.dgid, 0, sizeof ah_attr->grh.dgid);
    ah_attr->grh.dgid.raw[10] = ah_attr->grh.dgid.raw[11] = 0xff;
    std::memcpy(ah_attr->grh.dgid.raw + 12, raw + 20 + 12, 4);  // IPv4 source
    std::memset(&sgid, 0, sizeof sgid);
    sgid.raw[10] = sgid.raw[11] = 0xff;
    std::memcpy(sgid.raw + 12, raw + 20 + 16, 4);  // IPv4 destination
    ah_attr->grh.traffic_class = raw[20 + 1];
  } else {
    ah_attr->grh.dgid = grh->sgid;
    sgid = grh->dgid;
    const uint32_t flow = be32toh(grh->version_tclass_flow);
    ah_attr->grh.flow_label = flow & 0xfffff;
    ah_attr->grh.traffic_class = uint8_t(flow >> 20);
  }
  ah_attr->is_global = 1;
  ah_attr->grh.hop_limit = 0xff;
  // The GID the packet was sent to must be one of ours.
  ibv_port_attr pa;
  if (query_port_op(context, port_num, &pa, sizeof pa)) return fail(EINVAL, -1);
  for (int i = 0; i < pa.gid_tbl_len; ++i) {
    union ibv_gid g;
    if (ibv_query_gid(context, port_num, i, &g) == 0 && std::memcmp(&g, &sgid, sizeof g) == 0) {
      ah_attr->grh.sgid_index = uint8_t(i);
      return 0;
    }
  }
  return fail(ENOENT, -1);
}

ibv_ah* ibv_create_ah_from_wc(ibv_pd* pd, ibv_wc* wc, ibv_grh* grh, uint8_t port_num) {
  ibv_context* context;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(pd, Kind::pd)) return fail(EINVAL, static_cast<ibv_ah*>(nullptr));
    context = pd->context;
  }
  ibv_ah_attr attr;
  if (ibv_init_ah_from_wc(context, port_num, wc, grh, &attr)) return nullptr;
  return ibv_create_ah(pd, &attr);
}

int ibv_resolve_eth_l2_from_gid(ibv_context* context, ibv_ah_attr* attr, uint8_t eth_mac[6],
                                uint16_t* vid) {
  (void)context;
  (void)attr;
  (void)eth_mac;
  (void)vid;
  // Neighbour resolution happens inside the transport (ARP on the DPDK port).
  return fail(EOPNOTSUPP, -1);
}

// ---------------------------------------------------------------- fork
// The transport copies through the registered virtual addresses in this process; a child's
// copy-on-write pages are never touched, so fork needs no preparation.
int ibv_fork_init(void) {
  return 0;
}
ibv_fork_status ibv_is_fork_initialized(void) {
  return IBV_FORK_UNNEEDED;
}
int ibv_dontfork_range(void*, size_t) {
  return 0;
}
int ibv_dofork_range(void*, size_t) {
  return 0;
}

// Multicast: the LID is ignored (RoCE has none); the GID names an IPv4 group.
int ibv_attach_mcast(ibv_qp* qp, const union ibv_gid* gid, uint16_t) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(qp, Kind::qp) || !gid) return EINVAL;
  Gid m;
  std::memcpy(m.raw, gid->raw, sizeof m.raw);
  return mid::attach_mcast(wrap<DvQp>(qp)->m, &m);
}

int ibv_detach_mcast(ibv_qp* qp, const union ibv_gid* gid, uint16_t) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(qp, Kind::qp) || !gid) return EINVAL;
  Gid m;
  std::memcpy(m.raw, gid->raw, sizeof m.raw);
  return mid::detach_mcast(wrap<DvQp>(qp)->m, &m);
}

// ---------------------------------------------------------------- not implemented

int ibv_set_ece(ibv_qp* qp, ibv_ece* ece) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(qp, Kind::qp) || !ece) return EINVAL;
  return EOPNOTSUPP;
}

int ibv_query_ece(ibv_qp* qp, ibv_ece* ece) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(qp, Kind::qp) || !ece) return EINVAL;
  return EOPNOTSUPP;
}

// Sharing objects between processes needs a kernel: there is no command fd to import.
ibv_context* ibv_import_device(int) {
  return fail(EOPNOTSUPP, static_cast<ibv_context*>(nullptr));
}
ibv_pd* ibv_import_pd(ibv_context*, uint32_t) {
  return fail(EOPNOTSUPP, static_cast<ibv_pd*>(nullptr));
}
void ibv_unimport_pd(ibv_pd*) {}
ibv_mr* ibv_import_mr(ibv_pd*, uint32_t) {
  return fail(EOPNOTSUPP, static_cast<ibv_mr*>(nullptr));
}
void ibv_unimport_mr(ibv_mr*) {}
ibv_dm* ibv_import_dm(ibv_context*, uint32_t) {
  return fail(EOPNOTSUPP, static_cast<ibv_dm*>(nullptr));
}
void ibv_unimport_dm(ibv_dm*) {}

// dverbs extensions (version node DVERBS_0.1, outside rdma-core's ABI): hot-plug of DPDK
// ports through the drop-in, as dverbs::add_port/remove_port in the C++ API. The new
// device appears in the next ibv_get_device_list; removing one raises
// IBV_EVENT_DEVICE_FATAL on every context open on it. Context: process context.
int dverbs_add_port(const char* devargs, const char* ip, char* name, size_t name_len) {
  if (!devargs) return EINVAL;
  return mid::add_port(devargs, ip, name, name_len);
}
int dverbs_remove_port(const char* name) {
  if (!name) return EINVAL;
  return mid::remove_port(name);
}

}  // extern "C"
