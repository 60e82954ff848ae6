// The InfiniBand CM MAD codec: the messages of IBA Vol 1 chapter 12 (12.6, message formats)
// and the IP addressing header of Annex A11 (RDMA IP CM Service) that rdma_cm puts at the
// start of the REQ and SIDR_REQ private data.
//
// Plain structs in host byte order on one side, the 256-byte big-endian MAD on the other.
// Field offsets and bit positions follow the IBA tables as Linux transcribes them in
// include/rdma/ibta_vol1_c12.h (offsets there, as here, count from the end of the 24-byte
// MAD header). parse() rejects what is malformed (ParseError); whether a well-formed message
// is acceptable — a transport the CM does not serve, an unknown comm ID — is for the CM to
// decide and answer with a REJ.
//
// Reserved bits are ignored on receive and written as zero; values wider than their wire
// field are cut to the field's width.
//
// Thread safety: no state; every function may run on any thread at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <variant>

namespace dverbs::cm {

constexpr size_t kMadSize = 256, kMadHdrSize = 24, kCmDataSize = 232;
constexpr uint8_t kMgmtClassCm = 0x07, kCmClassVersion = 2, kBaseVersion = 1;
constexpr uint8_t kMethodSend = 0x03;
constexpr uint32_t kGsiQkey = 0x80010000;

// Attribute IDs of the CM class (Linux CM_*_ATTR_ID in include/rdma/ib_cm.h).
enum class AttrId : uint16_t {
  class_port_info = 0x0001,
  req = 0x0010,
  mra = 0x0011,
  rej = 0x0012,
  rep = 0x0013,
  rtu = 0x0014,
  dreq = 0x0015,
  drep = 0x0016,
  sidr_req = 0x0017,
  sidr_rep = 0x0018,
  lap = 0x0019,
  apr = 0x001A,
};
// "REQ", "MRA", ...; "?" for an id that is not a CM attribute.
// Context: any thread, never sleeps.
const char* name(AttrId id) noexcept;

// The common MAD header (IBA chapter 13), bytes 0..23.
struct MadHdr {
  uint8_t base_version, mgmt_class, class_version, method;
  uint16_t status, class_specific;
  uint64_t tid;
  AttrId attr_id;
  uint32_t attr_mod;  // 0 for the CM, except ECE options in REQ/REP (Linux ece.attr_mod)
  bool operator==(const MadHdr&) const = default;
};

// One path of a REQ (primary at CM offset 52, alternate at 96; 44 bytes each).
struct Path {
  uint16_t local_lid, remote_lid;
  uint8_t local_gid[16], remote_gid[16];
  uint32_t flow_label;  // 20 bits
  uint8_t packet_rate;  // 6 bits
  uint8_t traffic_class, hop_limit;
  uint8_t sl;  // 4 bits
  bool subnet_local;
  uint8_t local_ack_timeout;  // 5 bits
  bool operator==(const Path&) const = default;
};

// REQ (IBA Table 106). QPNs, EECNs and the PSN are 24 bits; timeouts 5; retry counts
// 3 (max_cm_retries 4); path_mtu 4 (IBA encoding, 1 = 256 .. 5 = 4096).
// transport_service_type: 0 RC, 1 UC, 2 RD, 3 "extended", which ext_transport_type names
// (1 = XRC, the XRC annex; Linux cm_req_get_qp_type).
struct Req {
  uint32_t local_comm_id;
  uint64_t service_id, local_ca_guid;
  uint32_t local_qkey, local_qpn;
  uint8_t responder_resources;
  uint32_t local_eecn;
  uint8_t initiator_depth;
  uint32_t remote_eecn;
  uint8_t remote_cm_response_timeout, transport_service_type;
  bool flow_control;
  uint32_t starting_psn;
  uint8_t local_cm_response_timeout, retry_count;
  uint16_t pkey;
  uint8_t path_mtu;
  bool rdc_exists;
  uint8_t rnr_retry_count, max_cm_retries;
  bool srq;
  uint8_t ext_transport_type;
  Path primary;
  // On receive: some alternate path field is not zero. Linux tests the alternate local LID
  // alone (cm_req_has_alt_path), but a RoCE path has LID 0. build() writes the alternate
  // path only when set, so an all-zero alternate path does not survive a round trip.
  bool has_alternate;
  Path alternate;
  uint8_t private_data[92];
  // Beyond the IBA 1.2 fields the brief lists: the ECE vendor ID (IBA 1.4, CM offset 5..7,
  // Linux CM_REQ_VENDOR_ID; ConnectX sends its OUI there) and SAP supported (byte 139 bit 5,
  // Linux CM_REQ_SAP_SUPPORTED).
  uint32_t vendor_id;  // 24 bits
  bool sap_supported;
  bool operator==(const Req&) const = default;
};

// Which message an MRA or a REJ answers (IBA Tables 107 and 108; Linux enum cm_msg_response).
enum class MsgResponse : uint8_t { req = 0, rep = 1, other = 2 };  // 3 is reserved

// MRA (IBA Table 107).
struct Mra {
  uint32_t local_comm_id, remote_comm_id;
  uint8_t msg_mraed;        // MsgResponse, 2 bits
  uint8_t service_timeout;  // 5 bits
  uint8_t private_data[222];
  bool operator==(const Mra&) const = default;
};

// REJ (IBA Table 108). reason is a RejReason; ari holds reject_info_length bytes of
// additional rejection information (at most 72).
struct Rej {
  uint32_t local_comm_id, remote_comm_id;
  uint8_t msg_rejected;        // MsgResponse, 2 bits
  uint8_t reject_info_length;  // 7 bits
  uint16_t reason;
  uint8_t ari[72];
  uint8_t private_data[148];
  bool operator==(const Rej&) const = default;
};

// REP (IBA Table 110). failover_accepted: 0 accepted, 1 not supported, 2 rejected.
struct Rep {
  uint32_t local_comm_id, remote_comm_id, local_qkey, local_qpn, local_eecn, starting_psn;
  uint8_t responder_resources, initiator_depth, target_ack_delay, failover_accepted;
  bool flow_control;
  uint8_t rnr_retry_count;
  bool srq;
  uint64_t local_ca_guid;
  uint8_t private_data[196];
  // ECE vendor ID, 24 bits in the low bytes of the QPN, EECN and PSN words (IBA 1.4, Linux
  // CM_REP_VENDOR_ID_H/M/L).
  uint32_t vendor_id;
  bool operator==(const Rep&) const = default;
};

// RTU (IBA Table 111).
struct Rtu {
  uint32_t local_comm_id, remote_comm_id;
  uint8_t private_data[224];
  bool operator==(const Rtu&) const = default;
};

// DREQ (IBA Table 112). remote_qpn is 24 bits (QPN or EECN).
struct Dreq {
  uint32_t local_comm_id, remote_comm_id, remote_qpn;
  uint8_t private_data[220];
  bool operator==(const Dreq&) const = default;
};

// DREP (IBA Table 113).
struct Drep {
  uint32_t local_comm_id, remote_comm_id;
  uint8_t private_data[224];
  bool operator==(const Drep&) const = default;
};

// SIDR_REQ (IBA Table 119).
struct SidrReq {
  uint32_t request_id;
  uint16_t pkey;
  uint64_t service_id;
  uint8_t private_data[216];
  bool operator==(const SidrReq&) const = default;
};

// SIDR_REP status (values as Linux's enum ib_cm_sidr_status).
enum class SidrStatus : uint8_t {
  success = 0,
  unsupported = 1,  // service ID not supported
  reject = 2,
  no_qp = 3,
  redirect = 4,  // class_port_info holds where to ask
  unsupported_version = 5,
};

// SIDR_REP (IBA Table 120). qpn is 24 bits; class_port_info is the "additional
// information" field, additional_info_length bytes of it meaningful (at most 72).
struct SidrRep {
  uint32_t request_id;
  uint8_t status, additional_info_length;
  uint32_t qpn;
  uint64_t service_id;
  uint32_t qkey;
  uint8_t class_port_info[72];
  uint8_t private_data[136];
  // ECE vendor ID: bits 23..8 at CM offset 6..7, bits 7..0 at 11 (IBA 1.4). Linux writes
  // only bits 15..8 into the 16-bit high field (cm_format_sidr_rep): equal for OUIs < 2^16.
  uint32_t vendor_id;
  bool operator==(const SidrRep&) const = default;
};

// One decoded MAD: the header plus the message its attribute id names.
struct Mad {
  MadHdr hdr;
  std::variant<std::monostate, Req, Mra, Rej, Rep, Rtu, Dreq, Drep, SidrReq, SidrRep> msg;
  bool operator==(const Mad&) const = default;
};

enum class ParseError {
  ok,
  too_short,          // fewer than 256 bytes
  bad_base_version,   // not 1
  not_cm_class,       // management class is not 0x07
  bad_class_version,  // not 2
  bad_method,         // not Send: every CM message is an unsolicited Send
  unknown_attr,       // not one of REQ..SIDR_REP (LAP, APR, ClassPortInfo: not supported)
  bad_field,          // a field holds a reserved encoding (see parse())
};
// Context: any thread, never sleeps.
const char* name(ParseError e) noexcept;

// Decodes one MAD. Reads at most 256 bytes and never past `len`; a buffer shorter than 256
// bytes is too_short. Past the header checks out->hdr holds the header even on failure (a
// caller may want the TID or the class version to answer with); out->msg is the message on
// ok, monostate otherwise. bad_field, for encodings no IBA release defines:
//   REQ  path MTU 0 or > 5; transport service type 3 with an extended transport type other
//        than 1 (XRC);
//   MRA  message MRAed 3;  REJ  message rejected 3, reject info length > 72;
//   REP  failover accepted 3;  SIDR_REP  additional information length > 72.
// Context: any thread, never sleeps.
ParseError parse(const uint8_t* buf, size_t len, Mad* out) noexcept;

// Encoders: a full 256-byte MAD with header base version 1, class 0x07, class version 2,
// method Send, status 0, the given TID and the message's attribute id, attribute modifier 0;
// every reserved bit zero. Context: any thread, never sleeps.
void build(const Req& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Mra& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Rej& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Rep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Rtu& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Dreq& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const Drep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const SidrReq& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
void build(const SidrRep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept;
// The message of `m` with m.hdr.tid and m.hdr.attr_mod (the rest of the header as above);
// false, and nothing written, when m.msg is monostate. Context: any thread, never sleeps.
bool build(const Mad& m, uint8_t out[kMadSize]) noexcept;

// The bits a build() of `id` can set: 1 where a field lives, 0 in reserved bits and in the
// header's status and class-specific words (always 0 in a Send). parse() then build() of any
// MAD that parses gives the MAD masked by these bits. All zero for an unknown id.
// Context: any thread, never sleeps.
void defined_bits(AttrId id, uint8_t mask[kMadSize]) noexcept;

// Rejection reasons (IBA chapter 12, the REJ reason table; values as Linux's enum
// ib_cm_rej_reason, include/rdma/ib_cm.h). 34 is not assigned.
enum class RejReason : uint16_t {
  no_qp = 1,
  no_eec = 2,
  no_resources = 3,
  timeout = 4,
  unsupported = 5,
  invalid_comm_id = 6,
  invalid_comm_instance = 7,
  invalid_service_id = 8,
  invalid_transport_type = 9,
  stale_conn = 10,
  rdc_not_exist = 11,
  invalid_gid = 12,
  invalid_lid = 13,
  invalid_sl = 14,
  invalid_traffic_class = 15,
  invalid_hop_limit = 16,
  invalid_packet_rate = 17,
  invalid_alt_gid = 18,
  invalid_alt_lid = 19,
  invalid_alt_sl = 20,
  invalid_alt_traffic_class = 21,
  invalid_alt_hop_limit = 22,
  invalid_alt_packet_rate = 23,
  port_cm_redirect = 24,
  port_redirect = 25,
  invalid_mtu = 26,
  insufficient_resp_resources = 27,
  consumer_defined = 28,
  invalid_rnr_retry = 29,
  duplicate_local_comm_id = 30,
  invalid_class_version = 31,
  invalid_flow_label = 32,
  invalid_alt_flow_label = 33,
  vendor_option_not_supported = 35,
};
// "no_qp", ...; "?" for an unassigned value. Context: any thread, never sleeps.
const char* name(RejReason r) noexcept;

// Annex A11 IP addressing header, first in REQ and SIDR_REQ private data (Linux struct
// cma_hdr): byte 0 version (MajV:4 MinV:4, both 0), byte 1 IP version in bits 7:4, bytes
// 2..3 the active side's source port, then source and destination address, 16 bytes each,
// an IPv4 address in the last 4 with the first 12 zero. The destination port is not here:
// it is the low 16 bits of the service ID.
struct IpHdr {
  uint8_t ip_version;  // 4 or 6
  uint16_t src_port;
  uint8_t src_ip[16], dst_ip[16];
  bool operator==(const IpHdr&) const = default;
};
constexpr size_t kIpHdrSize = 36;
// False when len < 36, the version byte is not 0 or the IP version is neither 4 nor 6 (as
// cma_save_ip_info refuses them). For IPv4 the first 12 address bytes come out zero, what
// the peer put there notwithstanding. Context: any thread, never sleeps.
bool parse_ip_hdr(const uint8_t* pd, size_t len, IpHdr* out) noexcept;
// Writes the 36 bytes; for IPv4 only the last 4 bytes of each address are copied.
// Context: any thread, never sleeps.
void build_ip_hdr(const IpHdr& h, uint8_t out[kIpHdrSize]) noexcept;

// Service IDs of the IP CM service (Annex A11: 0x0000000001 | protocol:8 | port:16). `ps` is
// the whole rdma_port_space value (TCP 0x0106, UDP 0x0111, IB 0x013F), so this is Linux's
// cma_get_service_id: RDMA_IB_IP_PS_TCP | port for TCP.
constexpr uint64_t ip_service_id(uint16_t ps, uint16_t port) {
  return uint64_t(ps) << 16 | port;
}
// The inverse, for IDs in the A11 range (Linux IB_CMA_SERVICE_ID / IB_CMA_SERVICE_ID_MASK:
// top 40 bits 0x0000000001); false otherwise. Context: any thread, never sleeps.
bool split_service_id(uint64_t sid, uint16_t* ps, uint16_t* port) noexcept;

}  // namespace dverbs::cm
