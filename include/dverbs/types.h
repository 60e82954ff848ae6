// dverbs — the verbs vocabulary shared by every layer.
//
// Work requests, scatter/gather entries and work completions are laid out exactly like
// rdma-core's `struct ibv_send_wr`, `ibv_recv_wr`, `ibv_sge` and `ibv_wc`, and every enum
// value equals its `IBV_*` counterpart, so the libibverbs front end hands application
// structures to the transport without copying (it checks this with static_asserts).
// This header includes no DPDK and no libibverbs header.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dverbs {

namespace mid {
struct Ah;
struct Mr;
struct Mw;
}  // namespace mid

// raw_packet: IBV_QPT_RAW_PACKET, whole Ethernet frames (pmd/hca/raw.cc).
enum class QpType : uint32_t { rc = 2, uc = 3, ud = 4, raw_packet = 8, xrc_send = 9, xrc_recv = 10 };

// The reliable-connected transports: RC and the two halves of XRC (the XRC annex), which
// share RC's PSNs, ACKs and retransmission. Context: any.
constexpr bool is_reliable_connected(QpType t) noexcept {
  return t == QpType::rc || t == QpType::xrc_send || t == QpType::xrc_recv;
}

enum class QpState : uint32_t { reset = 0, init = 1, rtr = 2, rts = 3, sqd = 4, sqe = 5, err = 6 };

// Path MTU codes of IBA 9.7.2 (IBV_MTU_*).
enum class Mtu : uint32_t { mtu256 = 1, mtu512 = 2, mtu1024 = 3, mtu2048 = 4, mtu4096 = 5 };

constexpr uint32_t mtu_bytes(Mtu m) noexcept { return 128u << static_cast<uint32_t>(m); }

enum class WrOpcode : uint32_t {
  rdma_write = 0,
  rdma_write_with_imm = 1,
  send = 2,
  send_with_imm = 3,
  rdma_read = 4,
  atomic_cmp_and_swp = 5,
  atomic_fetch_and_add = 6,
  local_inv = 7,
  bind_mw = 8,
  send_with_inv = 9,
  flush = 14,         // IBA 1.5 RDMA FLUSH (ibv_wr_flush)
  atomic_write = 15,  // IBA 1.5 RDMA ATOMIC WRITE (ibv_wr_atomic_write)
};

enum class WcOpcode : uint32_t {
  send = 0,
  rdma_write = 1,
  rdma_read = 2,
  comp_swap = 3,
  fetch_add = 4,
  bind_mw = 5,
  local_inv = 6,
  flush = 8,
  atomic_write = 9,
  recv = 128,
  recv_rdma_with_imm = 129,
};

enum class WcStatus : uint32_t {
  success = 0,
  loc_len_err = 1,
  loc_qp_op_err = 2,
  loc_eec_op_err = 3,
  loc_prot_err = 4,
  wr_flush_err = 5,
  mw_bind_err = 6,
  bad_resp_err = 7,
  loc_access_err = 8,
  rem_inv_req_err = 9,
  rem_access_err = 10,
  rem_op_err = 11,
  retry_exc_err = 12,
  rnr_retry_exc_err = 13,
  loc_rdd_viol_err = 14,
  rem_inv_rd_req_err = 15,
  rem_abort_err = 16,
  inv_eecn_err = 17,
  inv_eec_state_err = 18,
  fatal_err = 19,
  resp_timeout_err = 20,
  general_err = 21,
};

// Human-readable name of a completion status, as ibv_wc_status_str() prints it.
const char* wc_status_str(WcStatus s) noexcept;

// IBV_SEND_* flags.
namespace send_flags {
constexpr uint32_t fence = 1u << 0;
constexpr uint32_t signaled = 1u << 1;
constexpr uint32_t solicited = 1u << 2;
constexpr uint32_t inline_data = 1u << 3;
constexpr uint32_t ip_csum = 1u << 4;  // raw packet QPs: fill the IPv4 and TCP/UDP checksums
}  // namespace send_flags

// IBV_ACCESS_* flags.
namespace access {
constexpr uint32_t local_write = 1u << 0;
constexpr uint32_t remote_write = 1u << 1;
constexpr uint32_t remote_read = 1u << 2;
constexpr uint32_t remote_atomic = 1u << 3;
constexpr uint32_t mw_bind = 1u << 4;
constexpr uint32_t zero_based = 1u << 5;
constexpr uint32_t flush_global = 1u << 8;      // IBV_ACCESS_FLUSH_GLOBAL (IBA 1.5 FLUSH)
constexpr uint32_t flush_persistent = 1u << 9;  // IBV_ACCESS_FLUSH_PERSISTENT
// What a memory region may be registered with. FLUSH_PERSISTENT is not among them: no
// dverbs memory is persistent (Linux rxe refuses it on non-pmem pages the same way).
constexpr uint32_t supported =
    local_write | remote_write | remote_read | remote_atomic | mw_bind | flush_global;
// What a QP's qp_access_flags may hold: the flush permissions are checked there too (rxe).
constexpr uint32_t qp_supported = local_write | remote_write | remote_read | remote_atomic |
                                  mw_bind | flush_global | flush_persistent;
}  // namespace access

// IBV_FLUSH_* placement types (a mask) and selectivity levels of an RDMA FLUSH (IBA 1.5).
namespace flush {
constexpr uint8_t type_global = 1u << 0;
constexpr uint8_t type_persistent = 1u << 1;
constexpr uint8_t level_range = 0;
constexpr uint8_t level_mr = 1;
}  // namespace flush

// IBV_WC_* flags.
namespace wc_flags {
constexpr uint32_t grh = 1u << 0;
constexpr uint32_t with_imm = 1u << 1;
constexpr uint32_t with_inv = 1u << 3;
}  // namespace wc_flags

// IBV_QP_* attribute mask bits.
namespace qp_attr_mask {
constexpr uint32_t state = 1u << 0;
constexpr uint32_t cur_state = 1u << 1;
constexpr uint32_t en_sqd_async_notify = 1u << 2;
constexpr uint32_t access_flags = 1u << 3;
constexpr uint32_t pkey_index = 1u << 4;
constexpr uint32_t port = 1u << 5;
constexpr uint32_t qkey = 1u << 6;
constexpr uint32_t av = 1u << 7;
constexpr uint32_t path_mtu = 1u << 8;
constexpr uint32_t timeout = 1u << 9;
constexpr uint32_t retry_cnt = 1u << 10;
constexpr uint32_t rnr_retry = 1u << 11;
constexpr uint32_t rq_psn = 1u << 12;
constexpr uint32_t max_qp_rd_atomic = 1u << 13;
constexpr uint32_t alt_path = 1u << 14;
constexpr uint32_t min_rnr_timer = 1u << 15;
constexpr uint32_t sq_psn = 1u << 16;
constexpr uint32_t max_dest_rd_atomic = 1u << 17;
constexpr uint32_t path_mig_state = 1u << 18;
constexpr uint32_t cap = 1u << 19;
constexpr uint32_t dest_qpn = 1u << 20;
}  // namespace qp_attr_mask

// Layout of struct ibv_sge.
struct Sge {
  uint64_t addr;
  uint32_t length;
  uint32_t lkey;
};

// Layout of struct ibv_send_wr; `ud.ah` is the midlayer's address handle.
struct SendWr {
  uint64_t wr_id;
  SendWr* next;
  Sge* sg_list;
  int num_sge;
  WrOpcode opcode;
  uint32_t send_flags;
  union {
    uint32_t imm_data;  // network byte order, as in verbs
    uint32_t invalidate_rkey;
  };
  union {
    struct {
      uint64_t remote_addr;
      uint32_t rkey;
    } rdma;
    struct {
      uint64_t remote_addr;
      uint64_t compare_add;
      uint64_t swap;
      uint32_t rkey;
    } atomic;
    struct {
      mid::Ah* ah;
      uint32_t remote_qpn;
      uint32_t remote_qkey;
    } ud;
    // dverbs' own: ibv_send_wr has no FLUSH fields. remote_addr and rkey sit where
    // wr.rdma has them; type and level take its padding (zero in a zeroed ibv_send_wr,
    // which the check then refuses), length wr.atomic.swap's place. ibv_wr_flush fills it.
    struct {
      uint64_t remote_addr;
      uint32_t rkey;
      uint8_t type;   // flush::type_*
      uint8_t level;  // flush::level_*
      uint64_t length;
    } flush;
  } wr;
  union {
    struct {
      uint32_t remote_srqn;
    } xrc;
  } qp_type;
  union {
    struct {
      mid::Mw* mw;
      uint32_t rkey;  // the window's new rkey (index bits unchanged, key byte chosen)
      struct {
        mid::Mr* mr;
        uint64_t addr;
        uint64_t length;
        unsigned int mw_access_flags;
      } bind_info;
    } bind_mw;
    struct {
      void* hdr;
      uint16_t hdr_sz;
      uint16_t mss;
    } tso;
  };
};

// Layout of struct ibv_recv_wr.
struct RecvWr {
  uint64_t wr_id;
  RecvWr* next;
  Sge* sg_list;
  int num_sge;
};

// Layout of struct ibv_wc.
struct Wc {
  uint64_t wr_id;
  WcStatus status;
  WcOpcode opcode;
  uint32_t vendor_err;
  uint32_t byte_len;
  union {
    uint32_t imm_data;  // network byte order
    uint32_t invalidated_rkey;
  };
  uint32_t qp_num;
  uint32_t src_qp;
  uint32_t wc_flags;
  uint16_t pkey_index;
  uint16_t slid;
  uint8_t sl;
  uint8_t dlid_path_bits;
};
static_assert(sizeof(Wc) == 48);
static_assert(sizeof(Sge) == 16);

// A 128-bit GID; dverbs ports use the RoCEv2 IPv4-mapped form ::ffff:a.b.c.d.
struct Gid {
  uint8_t raw[16];
};

struct QpCap {
  uint32_t max_send_wr;
  uint32_t max_recv_wr;
  uint32_t max_send_sge;
  uint32_t max_recv_sge;
  uint32_t max_inline_data;
};

// Address vector of a connected QP or an address handle (RoCEv2: the GRH fields matter).
struct AhAttr {
  Gid dgid;
  uint32_t flow_label = 0;
  uint8_t sgid_index = 0;
  uint8_t hop_limit = 64;
  uint8_t traffic_class = 0;
  uint8_t sl = 0;
  uint8_t port_num = 1;
  bool is_global = true;
};

struct QpAttr {
  QpState qp_state = QpState::reset;
  QpState cur_qp_state = QpState::reset;
  Mtu path_mtu = Mtu::mtu1024;
  uint32_t qkey = 0;
  uint32_t rq_psn = 0;
  uint32_t sq_psn = 0;
  uint32_t dest_qp_num = 0;
  uint32_t qp_access_flags = 0;
  QpCap cap{};
  AhAttr ah_attr{};
  uint16_t pkey_index = 0;
  uint8_t max_rd_atomic = 0;
  uint8_t max_dest_rd_atomic = 0;
  uint8_t min_rnr_timer = 0;
  uint8_t port_num = 1;
  uint8_t timeout = 0;
  uint8_t retry_cnt = 0;
  uint8_t rnr_retry = 0;
  bool sq_sig_all = false;
};

struct DeviceAttr {
  uint64_t node_guid = 0;
  uint64_t max_mr_size = 0;
  uint64_t page_size_cap = 0;
  uint32_t vendor_id = 0;
  uint32_t vendor_part_id = 0;
  uint32_t hw_ver = 0;
  uint32_t max_qp = 0;
  uint32_t max_qp_wr = 0;
  uint32_t max_sge = 0;
  uint32_t max_cq = 0;
  uint32_t max_cqe = 0;
  uint32_t max_mr = 0;
  uint32_t max_pd = 0;
  uint32_t max_qp_rd_atom = 0;
  uint32_t max_qp_init_rd_atom = 0;
  uint32_t max_inline_data = 0;
  uint32_t max_srq = 0;
  uint32_t max_srq_wr = 0;
  uint32_t max_ah = 0;
  uint32_t atomic_cap = 0;  // enum ibv_atomic_cap: 0 none, 1 HCA, 2 global
  uint8_t phys_port_cnt = 1;
  char fw_ver[64] = {};
  // Memory windows (type 1 and type 2B) the device can hold; 0: none. The soft HCA's
  // windows share the key table with the regions (max_mr counts both).
  uint32_t max_mw = 0;
  // The clock completion timestamps count (mid::poll_cq_ts, mid::read_clock), in kHz; 0:
  // the device stamps no completions. Appended: dverbsd's query_device reply carries it.
  uint64_t core_clock_khz = 0;
  bool xrc = false;  // XRC domains, SRQs and QPs work (IBV_DEVICE_XRC)
  // Raw packet QPs (max_raw_ethy_qp) and flow steering rules a device can hold; 0: none.
  uint32_t max_raw_qp = 0;
  uint32_t max_flows = 0;
  uint32_t max_raw_frame = 0;  // the largest frame a raw packet QP sends (bytes)
  bool raw_ip_csum = false;    // IBV_SEND_IP_CSUM honoured (IBV_RAW_PACKET_CAP_IP_CSUM)
};

// One flow steering rule (ibv_create_flow, IBV_FLOW_ATTR_NORMAL): a frame matches when
// every field ANDed with its mask equals the value ANDed with the mask. Multi-byte fields
// are in network byte order, as in ibv_flow_spec_*. The drop-in translates the specs.
struct FlowRule {
  uint16_t priority = 0;  // lower value = higher priority (ibv_flow_attr.priority)
  uint8_t has_eth = 0;    // an ETH spec was given
  uint8_t has_ipv4 = 0;   // an IPV4 spec: the frame must be IPv4
  uint8_t l4_proto = 0;   // 6 (TCP) or 17 (UDP) when a TCP/UDP spec was given, else 0
  uint8_t dst_mac[6] = {}, dst_mac_mask[6] = {};
  uint8_t src_mac[6] = {}, src_mac_mask[6] = {};
  uint16_t ether_type = 0, ether_type_mask = 0;
  uint16_t vlan_tag = 0, vlan_tag_mask = 0;  // a nonzero mask: the frame must be tagged
  uint32_t src_ip = 0, src_ip_mask = 0, dst_ip = 0, dst_ip_mask = 0;
  uint16_t src_port = 0, src_port_mask = 0, dst_port = 0, dst_port_mask = 0;
};

enum class PortState : uint32_t { nop = 0, down = 1, init = 2, armed = 3, active = 4 };

struct PortAttr {
  PortState state = PortState::down;
  Mtu max_mtu = Mtu::mtu4096;
  Mtu active_mtu = Mtu::mtu1024;
  uint32_t gid_tbl_len = 1;
  uint32_t max_msg_sz = 0;
  uint8_t active_speed = 0;
  uint8_t active_width = 0;
  uint8_t link_layer_ethernet = 1;
  // The host interface the port is on (net_af_xdp, net_af_packet), as a RoCE NIC's GIDs
  // name their netdev (ibv_gid_entry::ndev_ifindex); 0 for a port with none (memif, the
  // loopback, a NIC driven by its DPDK PMD). Its index in the driver's network namespace.
  uint32_t ndev_ifindex = 0;
};

// One hardware counter (the analogue of the kernel's rdma_hw_stats entries): a name the
// driver owns (a static string) and its value when it was read.
struct Counter {
  const char* name;
  uint64_t value;
};

// Async event types (values of enum ibv_event_type).
enum class EventType : uint32_t {
  cq_err = 0,
  qp_fatal = 1,
  qp_req_err = 2,
  qp_access_err = 3,
  comm_est = 4,
  sq_drained = 5,
  path_mig = 6,
  path_mig_err = 7,
  device_fatal = 8,
  port_active = 9,
  port_err = 10,
  lid_change = 11,
  pkey_change = 12,
  sm_change = 13,
  srq_err = 14,
  srq_limit_reached = 15,
  qp_last_wqe_reached = 16,
  client_reregister = 17,
  gid_change = 18,
};

const char* event_type_str(EventType t) noexcept;

}  // namespace dverbs
