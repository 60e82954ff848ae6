// The CM MAD codec (mad.h).
//
// Offsets are the IBA table offsets, counted from the end of the 24-byte MAD header, as in
// Linux's include/rdma/ibta_vol1_c12.h. Sub-byte fields use the tables' Byte[Bit] notation:
// bit 0 is the most significant bit of the byte (Linux IBA_FIELD_BLOC). 24-bit fields sit
// in the top three bytes of a big-endian word whose low byte holds the next field.
//
// Every builder starts from a zeroed MAD and writes each field through a mask, which is what
// makes reserved bits zero and over-wide values lose their high bits.
#include "cm/mad.h"

#include <cstring>
#include <type_traits>

namespace dverbs::cm {
namespace {

uint16_t get16(const uint8_t* p) {
  return uint16_t(p[0] << 8 | p[1]);
}
uint32_t get24(const uint8_t* p) {
  return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
}
uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | get24(p + 1);
}
uint64_t get64(const uint8_t* p) {
  return uint64_t(get32(p)) << 32 | get32(p + 4);
}
void put16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
void put24(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 16);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v);
}
void put32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  put24(p + 1, v);
}
void put64(uint8_t* p, uint64_t v) {
  put32(p, uint32_t(v >> 32));
  put32(p + 4, uint32_t(v));
}

// A field of `width` bits starting at IBA bit `bit` (0 = most significant) of a byte.
constexpr uint8_t bits_mask(unsigned bit, unsigned width) {
  return uint8_t(((1u << width) - 1) << (8 - bit - width));
}
uint8_t get_bits(uint8_t byte, unsigned bit, unsigned width) {
  return uint8_t((byte & bits_mask(bit, width)) >> (8 - bit - width));
}
void put_bits(uint8_t* byte, unsigned bit, unsigned width, unsigned v) {
  const uint8_t m = bits_mask(bit, width);
  *byte = uint8_t((*byte & ~m) | ((v << (8 - bit - width)) & m));
}

constexpr uint32_t kMask24 = 0xffffff;
constexpr uint32_t kFlowLabelMask = 0xfffff;

// ---- offsets (IBA Tables 106..120; Linux ibta_vol1_c12.h) ----
namespace req {
constexpr size_t kLocalCommId = 0;
constexpr size_t kVendorId = 5;  // 24 bits; byte 4 reserved
constexpr size_t kServiceId = 8;
constexpr size_t kLocalCaGuid = 16;
constexpr size_t kLocalQkey = 28;  // 24..27 reserved
constexpr size_t kLocalQpn = 32;   // 24 bits, then responder resources
constexpr size_t kResponderResources = 35;
constexpr size_t kLocalEecn = 36;  // 24 bits, then initiator depth
constexpr size_t kInitiatorDepth = 39;
constexpr size_t kRemoteEecn = 40;          // 24 bits
constexpr size_t kTimeoutTransportFc = 43;  // remote CM response timeout:5 transport:2 EEFC:1
constexpr size_t kStartingPsn = 44;         // 24 bits
constexpr size_t kTimeoutRetry = 47;        // local CM response timeout:5 retry count:3
constexpr size_t kPkey = 48;
constexpr size_t kMtuRdcRnr = 50;      // path MTU:4 RDC exists:1 RNR retry count:3
constexpr size_t kRetriesSrqExt = 51;  // max CM retries:4 SRQ:1 extended transport type:3
constexpr size_t kPrimaryPath = 52;
constexpr size_t kAlternatePath = 96;
constexpr size_t kSapSupported = 139;  // bit 5, beside the alternate ACK timeout
constexpr size_t kPrivateData = 140;
}  // namespace req
// Within a path (REQ primary at 52, alternate at 96).
namespace path {
constexpr size_t kLocalLid = 0;
constexpr size_t kRemoteLid = 2;
constexpr size_t kLocalGid = 4;
constexpr size_t kRemoteGid = 20;
constexpr size_t kFlowRate = 36;  // flow label:20 reserved:6 packet rate:6
constexpr size_t kTrafficClass = 40;
constexpr size_t kHopLimit = 41;
constexpr size_t kSlSubnet = 42;    // SL:4 subnet local:1 reserved:3
constexpr size_t kAckTimeout = 43;  // local ACK timeout:5 reserved:3
}  // namespace path
namespace mra {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kMsgMraed = 8;        // bits 0..1
constexpr size_t kServiceTimeout = 9;  // bits 0..4
constexpr size_t kPrivateData = 10;
}  // namespace mra
namespace rej {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kMsgRejected = 8;  // bits 0..1
constexpr size_t kInfoLength = 9;   // bits 0..6
constexpr size_t kReason = 10;
constexpr size_t kAri = 12;
constexpr size_t kPrivateData = 84;
}  // namespace rej
namespace rep {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kLocalQkey = 8;
constexpr size_t kLocalQpn = 12;  // 24 bits, then vendor ID bits 23..16
constexpr size_t kVendorIdH = 15;
constexpr size_t kLocalEecn = 16;  // 24 bits, then vendor ID bits 15..8
constexpr size_t kVendorIdM = 19;
constexpr size_t kStartingPsn = 20;  // 24 bits, then vendor ID bits 7..0
constexpr size_t kVendorIdL = 23;
constexpr size_t kResponderResources = 24;
constexpr size_t kInitiatorDepth = 25;
constexpr size_t kAckFailoverFc = 26;  // target ACK delay:5 failover accepted:2 EEFC:1
constexpr size_t kRnrSrq = 27;         // RNR retry count:3 SRQ:1 reserved:4
constexpr size_t kLocalCaGuid = 28;
constexpr size_t kPrivateData = 36;
}  // namespace rep
namespace rtu {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kPrivateData = 8;
}  // namespace rtu
namespace dreq {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kRemoteQpn = 8;  // 24 bits
constexpr size_t kPrivateData = 12;
}  // namespace dreq
namespace drep {
constexpr size_t kLocalCommId = 0;
constexpr size_t kRemoteCommId = 4;
constexpr size_t kPrivateData = 8;
}  // namespace drep
namespace sidr_req {
constexpr size_t kRequestId = 0;
constexpr size_t kPkey = 4;  // 6..7 reserved
constexpr size_t kServiceId = 8;
constexpr size_t kPrivateData = 16;
}  // namespace sidr_req
namespace sidr_rep {
constexpr size_t kRequestId = 0;
constexpr size_t kStatus = 4;
constexpr size_t kInfoLength = 5;
constexpr size_t kVendorIdH = 6;  // vendor ID bits 23..8
constexpr size_t kQpn = 8;        // 24 bits, then vendor ID bits 7..0
constexpr size_t kVendorIdL = 11;
constexpr size_t kServiceId = 12;
constexpr size_t kQkey = 20;
constexpr size_t kInfo = 24;
constexpr size_t kPrivateData = 96;
}  // namespace sidr_rep

static_assert(req::kPrivateData + sizeof(Req::private_data) == kCmDataSize);
static_assert(mra::kPrivateData + sizeof(Mra::private_data) == kCmDataSize);
static_assert(rej::kPrivateData + sizeof(Rej::private_data) == kCmDataSize);
static_assert(rej::kAri + sizeof(Rej::ari) == rej::kPrivateData);
static_assert(rep::kPrivateData + sizeof(Rep::private_data) == kCmDataSize);
static_assert(rtu::kPrivateData + sizeof(Rtu::private_data) == kCmDataSize);
static_assert(dreq::kPrivateData + sizeof(Dreq::private_data) == kCmDataSize);
static_assert(drep::kPrivateData + sizeof(Drep::private_data) == kCmDataSize);
static_assert(sidr_req::kPrivateData + sizeof(SidrReq::private_data) == kCmDataSize);
static_assert(sidr_rep::kPrivateData + sizeof(SidrRep::private_data) == kCmDataSize);
static_assert(sidr_rep::kInfo + sizeof(SidrRep::class_port_info) == sidr_rep::kPrivateData);
static_assert(kMadHdrSize + kCmDataSize == kMadSize);

constexpr uint8_t kMaxInfoLength = 72;  // REJ ARI, SIDR_REP additional information
constexpr uint8_t kMsgResponseReserved = 3;
constexpr uint8_t kTransportExtended = 3, kExtTransportXrc = 1;
constexpr uint8_t kMtuMin = 1, kMtuMax = 5;  // 256 .. 4096
constexpr uint8_t kFailoverReserved = 3;

// ---- paths ----
void get_path(const uint8_t* p, Path* o) {
  o->local_lid = get16(p + path::kLocalLid);
  o->remote_lid = get16(p + path::kRemoteLid);
  std::memcpy(o->local_gid, p + path::kLocalGid, 16);
  std::memcpy(o->remote_gid, p + path::kRemoteGid, 16);
  const uint32_t w = get32(p + path::kFlowRate);
  o->flow_label = w >> 12;
  o->packet_rate = uint8_t(w & 0x3f);
  o->traffic_class = p[path::kTrafficClass];
  o->hop_limit = p[path::kHopLimit];
  o->sl = get_bits(p[path::kSlSubnet], 0, 4);
  o->subnet_local = get_bits(p[path::kSlSubnet], 4, 1);
  o->local_ack_timeout = get_bits(p[path::kAckTimeout], 0, 5);
}

void put_path(const Path& s, uint8_t* p) {
  put16(p + path::kLocalLid, s.local_lid);
  put16(p + path::kRemoteLid, s.remote_lid);
  std::memcpy(p + path::kLocalGid, s.local_gid, 16);
  std::memcpy(p + path::kRemoteGid, s.remote_gid, 16);
  put32(p + path::kFlowRate, (s.flow_label & kFlowLabelMask) << 12 | (s.packet_rate & 0x3f));
  p[path::kTrafficClass] = s.traffic_class;
  p[path::kHopLimit] = s.hop_limit;
  put_bits(&p[path::kSlSubnet], 0, 4, s.sl);
  put_bits(&p[path::kSlSubnet], 4, 1, s.subnet_local);
  put_bits(&p[path::kAckTimeout], 0, 5, s.local_ack_timeout);
}

// ---- decoders: `d` is the CM data (MAD byte 24 on); false on a reserved encoding ----
bool decode(const uint8_t* d, Req* m) {
  m->local_comm_id = get32(d + req::kLocalCommId);
  m->vendor_id = get24(d + req::kVendorId);
  m->service_id = get64(d + req::kServiceId);
  m->local_ca_guid = get64(d + req::kLocalCaGuid);
  m->local_qkey = get32(d + req::kLocalQkey);
  m->local_qpn = get24(d + req::kLocalQpn);
  m->responder_resources = d[req::kResponderResources];
  m->local_eecn = get24(d + req::kLocalEecn);
  m->initiator_depth = d[req::kInitiatorDepth];
  m->remote_eecn = get24(d + req::kRemoteEecn);
  const uint8_t b43 = d[req::kTimeoutTransportFc];
  m->remote_cm_response_timeout = get_bits(b43, 0, 5);
  m->transport_service_type = get_bits(b43, 5, 2);
  m->flow_control = get_bits(b43, 7, 1);
  m->starting_psn = get24(d + req::kStartingPsn);
  m->local_cm_response_timeout = get_bits(d[req::kTimeoutRetry], 0, 5);
  m->retry_count = get_bits(d[req::kTimeoutRetry], 5, 3);
  m->pkey = get16(d + req::kPkey);
  m->path_mtu = get_bits(d[req::kMtuRdcRnr], 0, 4);
  m->rdc_exists = get_bits(d[req::kMtuRdcRnr], 4, 1);
  m->rnr_retry_count = get_bits(d[req::kMtuRdcRnr], 5, 3);
  m->max_cm_retries = get_bits(d[req::kRetriesSrqExt], 0, 4);
  m->srq = get_bits(d[req::kRetriesSrqExt], 4, 1);
  m->ext_transport_type = get_bits(d[req::kRetriesSrqExt], 5, 3);
  get_path(d + req::kPrimaryPath, &m->primary);
  get_path(d + req::kAlternatePath, &m->alternate);
  m->has_alternate = !(m->alternate == Path{});
  m->sap_supported = get_bits(d[req::kSapSupported], 5, 1);
  std::memcpy(m->private_data, d + req::kPrivateData, sizeof m->private_data);

  if (m->path_mtu < kMtuMin || m->path_mtu > kMtuMax) return false;
  if (m->transport_service_type == kTransportExtended && m->ext_transport_type != kExtTransportXrc)
    return false;
  return true;
}

bool decode(const uint8_t* d, Mra* m) {
  m->local_comm_id = get32(d + mra::kLocalCommId);
  m->remote_comm_id = get32(d + mra::kRemoteCommId);
  m->msg_mraed = get_bits(d[mra::kMsgMraed], 0, 2);
  m->service_timeout = get_bits(d[mra::kServiceTimeout], 0, 5);
  std::memcpy(m->private_data, d + mra::kPrivateData, sizeof m->private_data);
  return m->msg_mraed != kMsgResponseReserved;
}

bool decode(const uint8_t* d, Rej* m) {
  m->local_comm_id = get32(d + rej::kLocalCommId);
  m->remote_comm_id = get32(d + rej::kRemoteCommId);
  m->msg_rejected = get_bits(d[rej::kMsgRejected], 0, 2);
  m->reject_info_length = get_bits(d[rej::kInfoLength], 0, 7);
  m->reason = get16(d + rej::kReason);
  std::memcpy(m->ari, d + rej::kAri, sizeof m->ari);
  std::memcpy(m->private_data, d + rej::kPrivateData, sizeof m->private_data);
  return m->msg_rejected != kMsgResponseReserved && m->reject_info_length <= kMaxInfoLength;
}

bool decode(const uint8_t* d, Rep* m) {
  m->local_comm_id = get32(d + rep::kLocalCommId);
  m->remote_comm_id = get32(d + rep::kRemoteCommId);
  m->local_qkey = get32(d + rep::kLocalQkey);
  m->local_qpn = get24(d + rep::kLocalQpn);
  m->local_eecn = get24(d + rep::kLocalEecn);
  m->starting_psn = get24(d + rep::kStartingPsn);
  m->vendor_id =
      uint32_t(d[rep::kVendorIdH]) << 16 | uint32_t(d[rep::kVendorIdM]) << 8 | d[rep::kVendorIdL];
  m->responder_resources = d[rep::kResponderResources];
  m->initiator_depth = d[rep::kInitiatorDepth];
  const uint8_t b26 = d[rep::kAckFailoverFc];
  m->target_ack_delay = get_bits(b26, 0, 5);
  m->failover_accepted = get_bits(b26, 5, 2);
  m->flow_control = get_bits(b26, 7, 1);
  m->rnr_retry_count = get_bits(d[rep::kRnrSrq], 0, 3);
  m->srq = get_bits(d[rep::kRnrSrq], 3, 1);
  m->local_ca_guid = get64(d + rep::kLocalCaGuid);
  std::memcpy(m->private_data, d + rep::kPrivateData, sizeof m->private_data);
  return m->failover_accepted != kFailoverReserved;
}

bool decode(const uint8_t* d, Rtu* m) {
  m->local_comm_id = get32(d + rtu::kLocalCommId);
  m->remote_comm_id = get32(d + rtu::kRemoteCommId);
  std::memcpy(m->private_data, d + rtu::kPrivateData, sizeof m->private_data);
  return true;
}

bool decode(const uint8_t* d, Dreq* m) {
  m->local_comm_id = get32(d + dreq::kLocalCommId);
  m->remote_comm_id = get32(d + dreq::kRemoteCommId);
  m->remote_qpn = get24(d + dreq::kRemoteQpn);
  std::memcpy(m->private_data, d + dreq::kPrivateData, sizeof m->private_data);
  return true;
}

bool decode(const uint8_t* d, Drep* m) {
  m->local_comm_id = get32(d + drep::kLocalCommId);
  m->remote_comm_id = get32(d + drep::kRemoteCommId);
  std::memcpy(m->private_data, d + drep::kPrivateData, sizeof m->private_data);
  return true;
}

bool decode(const uint8_t* d, SidrReq* m) {
  m->request_id = get32(d + sidr_req::kRequestId);
  m->pkey = get16(d + sidr_req::kPkey);
  m->service_id = get64(d + sidr_req::kServiceId);
  std::memcpy(m->private_data, d + sidr_req::kPrivateData, sizeof m->private_data);
  return true;
}

bool decode(const uint8_t* d, SidrRep* m) {
  m->request_id = get32(d + sidr_rep::kRequestId);
  m->status = d[sidr_rep::kStatus];
  m->additional_info_length = d[sidr_rep::kInfoLength];
  m->vendor_id = uint32_t(get16(d + sidr_rep::kVendorIdH)) << 8 | d[sidr_rep::kVendorIdL];
  m->qpn = get24(d + sidr_rep::kQpn);
  m->service_id = get64(d + sidr_rep::kServiceId);
  m->qkey = get32(d + sidr_rep::kQkey);
  std::memcpy(m->class_port_info, d + sidr_rep::kInfo, sizeof m->class_port_info);
  std::memcpy(m->private_data, d + sidr_rep::kPrivateData, sizeof m->private_data);
  return m->additional_info_length <= kMaxInfoLength;
}

template <class M>
ParseError decode_into(const uint8_t* d, Mad* out) {
  if (decode(d, &out->msg.emplace<M>())) return ParseError::ok;
  out->msg = std::monostate{};
  return ParseError::bad_field;
}

// ---- encoders: `d` is the zeroed CM data ----
constexpr AttrId attr_of(const Req&) {
  return AttrId::req;
}
constexpr AttrId attr_of(const Mra&) {
  return AttrId::mra;
}
constexpr AttrId attr_of(const Rej&) {
  return AttrId::rej;
}
constexpr AttrId attr_of(const Rep&) {
  return AttrId::rep;
}
constexpr AttrId attr_of(const Rtu&) {
  return AttrId::rtu;
}
constexpr AttrId attr_of(const Dreq&) {
  return AttrId::dreq;
}
constexpr AttrId attr_of(const Drep&) {
  return AttrId::drep;
}
constexpr AttrId attr_of(const SidrReq&) {
  return AttrId::sidr_req;
}
constexpr AttrId attr_of(const SidrRep&) {
  return AttrId::sidr_rep;
}

void encode(const Req& m, uint8_t* d) {
  put32(d + req::kLocalCommId, m.local_comm_id);
  put24(d + req::kVendorId, m.vendor_id & kMask24);
  put64(d + req::kServiceId, m.service_id);
  put64(d + req::kLocalCaGuid, m.local_ca_guid);
  put32(d + req::kLocalQkey, m.local_qkey);
  put24(d + req::kLocalQpn, m.local_qpn & kMask24);
  d[req::kResponderResources] = m.responder_resources;
  put24(d + req::kLocalEecn, m.local_eecn & kMask24);
  d[req::kInitiatorDepth] = m.initiator_depth;
  put24(d + req::kRemoteEecn, m.remote_eecn & kMask24);
  uint8_t* b43 = &d[req::kTimeoutTransportFc];
  put_bits(b43, 0, 5, m.remote_cm_response_timeout);
  put_bits(b43, 5, 2, m.transport_service_type);
  put_bits(b43, 7, 1, m.flow_control);
  put24(d + req::kStartingPsn, m.starting_psn & kMask24);
  put_bits(&d[req::kTimeoutRetry], 0, 5, m.local_cm_response_timeout);
  put_bits(&d[req::kTimeoutRetry], 5, 3, m.retry_count);
  put16(d + req::kPkey, m.pkey);
  put_bits(&d[req::kMtuRdcRnr], 0, 4, m.path_mtu);
  put_bits(&d[req::kMtuRdcRnr], 4, 1, m.rdc_exists);
  put_bits(&d[req::kMtuRdcRnr], 5, 3, m.rnr_retry_count);
  put_bits(&d[req::kRetriesSrqExt], 0, 4, m.max_cm_retries);
  put_bits(&d[req::kRetriesSrqExt], 4, 1, m.srq);
  put_bits(&d[req::kRetriesSrqExt], 5, 3, m.ext_transport_type);
  put_path(m.primary, d + req::kPrimaryPath);
  if (m.has_alternate) put_path(m.alternate, d + req::kAlternatePath);
  put_bits(&d[req::kSapSupported], 5, 1, m.sap_supported);
  std::memcpy(d + req::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Mra& m, uint8_t* d) {
  put32(d + mra::kLocalCommId, m.local_comm_id);
  put32(d + mra::kRemoteCommId, m.remote_comm_id);
  put_bits(&d[mra::kMsgMraed], 0, 2, m.msg_mraed);
  put_bits(&d[mra::kServiceTimeout], 0, 5, m.service_timeout);
  std::memcpy(d + mra::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Rej& m, uint8_t* d) {
  put32(d + rej::kLocalCommId, m.local_comm_id);
  put32(d + rej::kRemoteCommId, m.remote_comm_id);
  put_bits(&d[rej::kMsgRejected], 0, 2, m.msg_rejected);
  put_bits(&d[rej::kInfoLength], 0, 7, m.reject_info_length);
  put16(d + rej::kReason, m.reason);
  std::memcpy(d + rej::kAri, m.ari, sizeof m.ari);
  std::memcpy(d + rej::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Rep& m, uint8_t* d) {
  put32(d + rep::kLocalCommId, m.local_comm_id);
  put32(d + rep::kRemoteCommId, m.remote_comm_id);
  put32(d + rep::kLocalQkey, m.local_qkey);
  put24(d + rep::kLocalQpn, m.local_qpn & kMask24);
  put24(d + rep::kLocalEecn, m.local_eecn & kMask24);
  put24(d + rep::kStartingPsn, m.starting_psn & kMask24);
  d[rep::kVendorIdH] = uint8_t(m.vendor_id >> 16);
  d[rep::kVendorIdM] = uint8_t(m.vendor_id >> 8);
  d[rep::kVendorIdL] = uint8_t(m.vendor_id);
  d[rep::kResponderResources] = m.responder_resources;
  d[rep::kInitiatorDepth] = m.initiator_depth;
  uint8_t* b26 = &d[rep::kAckFailoverFc];
  put_bits(b26, 0, 5, m.target_ack_delay);
  put_bits(b26, 5, 2, m.failover_accepted);
  put_bits(b26, 7, 1, m.flow_control);
  put_bits(&d[rep::kRnrSrq], 0, 3, m.rnr_retry_count);
  put_bits(&d[rep::kRnrSrq], 3, 1, m.srq);
  put64(d + rep::kLocalCaGuid, m.local_ca_guid);
  std::memcpy(d + rep::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Rtu& m, uint8_t* d) {
  put32(d + rtu::kLocalCommId, m.local_comm_id);
  put32(d + rtu::kRemoteCommId, m.remote_comm_id);
  std::memcpy(d + rtu::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Dreq& m, uint8_t* d) {
  put32(d + dreq::kLocalCommId, m.local_comm_id);
  put32(d + dreq::kRemoteCommId, m.remote_comm_id);
  put24(d + dreq::kRemoteQpn, m.remote_qpn & kMask24);
  std::memcpy(d + dreq::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const Drep& m, uint8_t* d) {
  put32(d + drep::kLocalCommId, m.local_comm_id);
  put32(d + drep::kRemoteCommId, m.remote_comm_id);
  std::memcpy(d + drep::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const SidrReq& m, uint8_t* d) {
  put32(d + sidr_req::kRequestId, m.request_id);
  put16(d + sidr_req::kPkey, m.pkey);
  put64(d + sidr_req::kServiceId, m.service_id);
  std::memcpy(d + sidr_req::kPrivateData, m.private_data, sizeof m.private_data);
}

void encode(const SidrRep& m, uint8_t* d) {
  put32(d + sidr_rep::kRequestId, m.request_id);
  d[sidr_rep::kStatus] = m.status;
  d[sidr_rep::kInfoLength] = m.additional_info_length;
  put16(d + sidr_rep::kVendorIdH, uint16_t(m.vendor_id >> 8));
  put24(d + sidr_rep::kQpn, m.qpn & kMask24);
  d[sidr_rep::kVendorIdL] = uint8_t(m.vendor_id);
  put64(d + sidr_rep::kServiceId, m.service_id);
  put32(d + sidr_rep::kQkey, m.qkey);
  std::memcpy(d + sidr_rep::kInfo, m.class_port_info, sizeof m.class_port_info);
  std::memcpy(d + sidr_rep::kPrivateData, m.private_data, sizeof m.private_data);
}

template <class M>
void build_msg(const M& m, uint64_t tid, uint32_t attr_mod, uint8_t* out) {
  std::memset(out, 0, kMadSize);
  out[0] = kBaseVersion;
  out[1] = kMgmtClassCm;
  out[2] = kCmClassVersion;
  out[3] = kMethodSend;
  // Bytes 4..7, status and class-specific, stay 0; 18..19 are reserved.
  put64(out + 8, tid);
  put16(out + 16, uint16_t(attr_of(m)));
  put32(out + 20, attr_mod);
  encode(m, out + kMadHdrSize);
}

// Every field at its widest, for defined_bits().
Path ones_path() {
  Path p{};
  p.local_lid = p.remote_lid = 0xffff;
  std::memset(p.local_gid, 0xff, sizeof p.local_gid);
  std::memset(p.remote_gid, 0xff, sizeof p.remote_gid);
  p.flow_label = ~0u;
  p.packet_rate = p.traffic_class = p.hop_limit = p.sl = p.local_ack_timeout = 0xff;
  p.subnet_local = true;
  return p;
}

Req ones_req() {
  Req m{};
  m.local_comm_id = m.local_qkey = m.local_qpn = m.local_eecn = m.remote_eecn = m.starting_psn =
      m.vendor_id = ~0u;
  m.service_id = m.local_ca_guid = ~0ull;
  m.responder_resources = m.initiator_depth = m.remote_cm_response_timeout =
      m.transport_service_type = m.local_cm_response_timeout = m.retry_count = m.path_mtu =
          m.rnr_retry_count = m.max_cm_retries = m.ext_transport_type = 0xff;
  m.pkey = 0xffff;
  m.flow_control = m.rdc_exists = m.srq = m.has_alternate = m.sap_supported = true;
  m.primary = m.alternate = ones_path();
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

Mra ones_mra() {
  Mra m{};
  m.local_comm_id = m.remote_comm_id = ~0u;
  m.msg_mraed = m.service_timeout = 0xff;
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

Rej ones_rej() {
  Rej m{};
  m.local_comm_id = m.remote_comm_id = ~0u;
  m.msg_rejected = m.reject_info_length = 0xff;
  m.reason = 0xffff;
  std::memset(m.ari, 0xff, sizeof m.ari);
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

Rep ones_rep() {
  Rep m{};
  m.local_comm_id = m.remote_comm_id = m.local_qkey = m.local_qpn = m.local_eecn = m.starting_psn =
      m.vendor_id = ~0u;
  m.responder_resources = m.initiator_depth = m.target_ack_delay = m.failover_accepted =
      m.rnr_retry_count = 0xff;
  m.flow_control = m.srq = true;
  m.local_ca_guid = ~0ull;
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

template <class M>
M ones_ids_pd() {  // RTU, DREQ, DREP: comm IDs (and QPN) plus private data
  M m{};
  m.local_comm_id = m.remote_comm_id = ~0u;
  if constexpr (requires { m.remote_qpn; }) m.remote_qpn = ~0u;
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

SidrReq ones_sidr_req() {
  SidrReq m{};
  m.request_id = ~0u;
  m.pkey = 0xffff;
  m.service_id = ~0ull;
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

SidrRep ones_sidr_rep() {
  SidrRep m{};
  m.request_id = m.qpn = m.qkey = m.vendor_id = ~0u;
  m.status = m.additional_info_length = 0xff;
  m.service_id = ~0ull;
  std::memset(m.class_port_info, 0xff, sizeof m.class_port_info);
  std::memset(m.private_data, 0xff, sizeof m.private_data);
  return m;
}

}  // namespace

const char* name(AttrId id) noexcept {
  switch (id) {
    case AttrId::class_port_info:
      return "ClassPortInfo";
    case AttrId::req:
      return "REQ";
    case AttrId::mra:
      return "MRA";
    case AttrId::rej:
      return "REJ";
    case AttrId::rep:
      return "REP";
    case AttrId::rtu:
      return "RTU";
    case AttrId::dreq:
      return "DREQ";
    case AttrId::drep:
      return "DREP";
    case AttrId::sidr_req:
      return "SIDR_REQ";
    case AttrId::sidr_rep:
      return "SIDR_REP";
    case AttrId::lap:
      return "LAP";
    case AttrId::apr:
      return "APR";
  }
  return "?";
}

const char* name(ParseError e) noexcept {
  switch (e) {
    case ParseError::ok:
      return "ok";
    case ParseError::too_short:
      return "too_short";
    case ParseError::bad_base_version:
      return "bad_base_version";
    case ParseError::not_cm_class:
      return "not_cm_class";
    case ParseError::bad_class_version:
      return "bad_class_version";
    case ParseError::bad_method:
      return "bad_method";
    case ParseError::unknown_attr:
      return "unknown_attr";
    case ParseError::bad_field:
      return "bad_field";
  }
  return "?";
}

const char* name(RejReason r) noexcept {
  switch (r) {
    case RejReason::no_qp:
      return "no_qp";
    case RejReason::no_eec:
      return "no_eec";
    case RejReason::no_resources:
      return "no_resources";
    case RejReason::timeout:
      return "timeout";
    case RejReason::unsupported:
      return "unsupported";
    case RejReason::invalid_comm_id:
      return "invalid_comm_id";
    case RejReason::invalid_comm_instance:
      return "invalid_comm_instance";
    case RejReason::invalid_service_id:
      return "invalid_service_id";
    case RejReason::invalid_transport_type:
      return "invalid_transport_type";
    case RejReason::stale_conn:
      return "stale_conn";
    case RejReason::rdc_not_exist:
      return "rdc_not_exist";
    case RejReason::invalid_gid:
      return "invalid_gid";
    case RejReason::invalid_lid:
      return "invalid_lid";
    case RejReason::invalid_sl:
      return "invalid_sl";
    case RejReason::invalid_traffic_class:
      return "invalid_traffic_class";
    case RejReason::invalid_hop_limit:
      return "invalid_hop_limit";
    case RejReason::invalid_packet_rate:
      return "invalid_packet_rate";
    case RejReason::invalid_alt_gid:
      return "invalid_alt_gid";
    case RejReason::invalid_alt_lid:
      return "invalid_alt_lid";
    case RejReason::invalid_alt_sl:
      return "invalid_alt_sl";
    case RejReason::invalid_alt_traffic_class:
      return "invalid_alt_traffic_class";
    case RejReason::invalid_alt_hop_limit:
      return "invalid_alt_hop_limit";
    case RejReason::invalid_alt_packet_rate:
      return "invalid_alt_packet_rate";
    case RejReason::port_cm_redirect:
      return "port_cm_redirect";
    case RejReason::port_redirect:
      return "port_redirect";
    case RejReason::invalid_mtu:
      return "invalid_mtu";
    case RejReason::insufficient_resp_resources:
      return "insufficient_resp_resources";
    case RejReason::consumer_defined:
      return "consumer_defined";
    case RejReason::invalid_rnr_retry:
      return "invalid_rnr_retry";
    case RejReason::duplicate_local_comm_id:
      return "duplicate_local_comm_id";
    case RejReason::invalid_class_version:
      return "invalid_class_version";
    case RejReason::invalid_flow_label:
      return "invalid_flow_label";
    case RejReason::invalid_alt_flow_label:
      return "invalid_alt_flow_label";
    case RejReason::vendor_option_not_supported:
      return "vendor_option_not_supported";
  }
  return "?";
}

ParseError parse(const uint8_t* buf, size_t len, Mad* out) noexcept {
  out->msg = std::monostate{};
  if (len < kMadSize) {
    out->hdr = MadHdr{};
    return ParseError::too_short;
  }
  MadHdr& h = out->hdr;
  h.base_version = buf[0];
  h.mgmt_class = buf[1];
  h.class_version = buf[2];
  h.method = buf[3];
  h.status = get16(buf + 4);
  h.class_specific = get16(buf + 6);
  h.tid = get64(buf + 8);
  h.attr_id = AttrId(get16(buf + 16));
  h.attr_mod = get32(buf + 20);
  if (h.base_version != kBaseVersion) return ParseError::bad_base_version;
  if (h.mgmt_class != kMgmtClassCm) return ParseError::not_cm_class;
  if (h.class_version != kCmClassVersion) return ParseError::bad_class_version;
  if (h.method != kMethodSend) return ParseError::bad_method;

  const uint8_t* d = buf + kMadHdrSize;
  switch (h.attr_id) {
    case AttrId::req:
      return decode_into<Req>(d, out);
    case AttrId::mra:
      return decode_into<Mra>(d, out);
    case AttrId::rej:
      return decode_into<Rej>(d, out);
    case AttrId::rep:
      return decode_into<Rep>(d, out);
    case AttrId::rtu:
      return decode_into<Rtu>(d, out);
    case AttrId::dreq:
      return decode_into<Dreq>(d, out);
    case AttrId::drep:
      return decode_into<Drep>(d, out);
    case AttrId::sidr_req:
      return decode_into<SidrReq>(d, out);
    case AttrId::sidr_rep:
      return decode_into<SidrRep>(d, out);
    default:
      return ParseError::unknown_attr;  // LAP, APR, ClassPortInfo: not supported
  }
}

void build(const Req& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Mra& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Rej& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Rep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Rtu& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Dreq& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const Drep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const SidrReq& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}
void build(const SidrRep& m, uint64_t tid, uint8_t out[kMadSize]) noexcept {
  build_msg(m, tid, 0, out);
}

bool build(const Mad& m, uint8_t out[kMadSize]) noexcept {
  return std::visit(
      [&](const auto& msg) {
        if constexpr (std::is_same_v<std::decay_t<decltype(msg)>, std::monostate>) {
          return false;
        } else {
          build_msg(msg, m.hdr.tid, m.hdr.attr_mod, out);
          return true;
        }
      },
      m.msg);
}

void defined_bits(AttrId id, uint8_t mask[kMadSize]) noexcept {
  Mad m{};
  m.hdr.tid = ~0ull;
  m.hdr.attr_mod = ~0u;
  switch (id) {
    case AttrId::req:
      m.msg = ones_req();
      break;
    case AttrId::mra:
      m.msg = ones_mra();
      break;
    case AttrId::rej:
      m.msg = ones_rej();
      break;
    case AttrId::rep:
      m.msg = ones_rep();
      break;
    case AttrId::rtu:
      m.msg = ones_ids_pd<Rtu>();
      break;
    case AttrId::dreq:
      m.msg = ones_ids_pd<Dreq>();
      break;
    case AttrId::drep:
      m.msg = ones_ids_pd<Drep>();
      break;
    case AttrId::sidr_req:
      m.msg = ones_sidr_req();
      break;
    case AttrId::sidr_rep:
      m.msg = ones_sidr_rep();
      break;
    default:
      std::memset(mask, 0, kMadSize);
      return;
  }
  build(m, mask);
  // The fixed header bytes are fields too: parse() requires exactly these values.
  std::memset(mask, 0xff, 4);
  mask[16] = mask[17] = 0xff;
}

bool parse_ip_hdr(const uint8_t* pd, size_t len, IpHdr* out) noexcept {
  if (len < kIpHdrSize) return false;
  if (pd[0] != 0) return false;  // MajV:4 MinV:4 (Linux CMA_VERSION 0x00)
  const uint8_t v = get_bits(pd[1], 0, 4);
  if (v != 4 && v != 6) return false;
  out->ip_version = v;
  out->src_port = get16(pd + 2);
  std::memset(out->src_ip, 0, 16);
  std::memset(out->dst_ip, 0, 16);
  const size_t skip = v == 4 ? 12 : 0;  // IPv4 in the last 4 bytes (union cma_ip_addr)
  std::memcpy(out->src_ip + skip, pd + 4 + skip, 16 - skip);
  std::memcpy(out->dst_ip + skip, pd + 20 + skip, 16 - skip);
  return true;
}

void build_ip_hdr(const IpHdr& h, uint8_t out[kIpHdrSize]) noexcept {
  std::memset(out, 0, kIpHdrSize);
  put_bits(&out[1], 0, 4, h.ip_version);
  put16(out + 2, h.src_port);
  const size_t skip = h.ip_version == 4 ? 12 : 0;
  std::memcpy(out + 4 + skip, h.src_ip + skip, 16 - skip);
  std::memcpy(out + 20 + skip, h.dst_ip + skip, 16 - skip);
}

bool split_service_id(uint64_t sid, uint16_t* ps, uint16_t* port) noexcept {
  if (sid >> 24 != 1) return false;  // not 0x0000000001xxxxxx
  *ps = uint16_t(sid >> 16);
  *port = uint16_t(sid);
  return true;
}

}  // namespace dverbs::cm
