// RoCEv2 on the wire: Ethernet / [802.1Q] / IPv4 / UDP 4791 / BTH / extension headers /
// payload / pad / ICRC (IBA Annex A17).
//
// Pure functions and packed header structs, no state. Multi-byte fields are big-endian on
// the wire; the accessors below convert. Sizes are static_asserted against the spec.
// Context: any thread, never sleeps (nothing here allocates or blocks).
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dverbs::pmd::wire {

constexpr uint16_t kRoceUdpPort = 4791;
constexpr uint32_t kIcrcLen = 4;
constexpr uint32_t kEthHdrLen = 14;
constexpr uint32_t kVlanTagLen = 4;
constexpr uint32_t kIpv4HdrLen = 20;
constexpr uint32_t kUdpHdrLen = 8;
constexpr uint32_t kGrhLen = 40;  // GRH written at the head of a UD receive buffer
constexpr uint32_t kPsnMask = 0xffffff;
constexpr uint32_t kQpnMask = 0xffffff;
constexpr uint32_t kMulticastQpn = 0xffffff;  // BTH DestQP of a multicast UD SEND (IBA 10.5)
constexpr uint16_t kDefaultPkey = 0xffff;

// Host <-> big-endian (each its own inverse). Whole-word loads and stores through memcpy
// (alignment-free, one instruction each once inlined): every header field of every packet
// goes through these.
inline uint16_t to_be16(uint16_t v) {
  if constexpr (std::endian::native == std::endian::little) return __builtin_bswap16(v);
  return v;
}
inline uint32_t to_be32(uint32_t v) {
  if constexpr (std::endian::native == std::endian::little) return __builtin_bswap32(v);
  return v;
}
inline uint16_t load_be16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return to_be16(v);
}
inline uint32_t load_be24(const uint8_t* p) { return uint32_t(p[0]) << 16 | p[1] << 8 | p[2]; }
inline uint32_t load_be32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return to_be32(v);
}
inline uint64_t load_be64(const uint8_t* p) {
  return uint64_t(load_be32(p)) << 32 | load_be32(p + 4);
}
inline void store_be16(uint8_t* p, uint16_t v) {
  v = to_be16(v);
  std::memcpy(p, &v, 2);
}
inline void store_be24(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 16);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v);
}
inline void store_be32(uint8_t* p, uint32_t v) {
  v = to_be32(v);
  std::memcpy(p, &v, 4);
}
inline void store_be64(uint8_t* p, uint64_t v) {
  store_be32(p, uint32_t(v >> 32));
  store_be32(p + 4, uint32_t(v));
}
// The ICRC is the one little-endian field of the packet (IBA A17.3.3: CRC bit 0 first).
inline uint32_t load_le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  if constexpr (std::endian::native == std::endian::big) return __builtin_bswap32(v);
  return v;
}
inline void store_le32(uint8_t* p, uint32_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}

// Base Transport Header (IBA 9.2), 12 bytes.
struct Bth {
  uint8_t opcode;
  uint8_t flags;  // SE:1 M:1 PadCnt:2 TVer:4
  uint8_t pkey[2];
  uint8_t fecn_becn;  // FECN:1 BECN:1 resv:6 — masked by the ICRC
  uint8_t dest_qp[3];
  uint8_t ack_req;  // AckReq:1 resv:7
  uint8_t psn[3];

  bool se() const { return flags & 0x80; }
  bool mig_req() const { return flags & 0x40; }
  uint8_t pad_count() const { return (flags >> 4) & 3; }
  uint8_t tver() const { return flags & 0xf; }
  uint16_t pkey_value() const { return load_be16(pkey); }
  uint32_t dqpn() const { return load_be24(dest_qp); }
  bool ack_request() const { return ack_req & 0x80; }
  uint32_t psn_value() const { return load_be24(psn); }
  bool becn() const { return fecn_becn & 0x40; }
  bool fecn() const { return fecn_becn & 0x80; }
};
static_assert(sizeof(Bth) == 12);

// RDMA Extended Transport Header (IBA 9.3.3.4), 16 bytes.
struct Reth {
  uint8_t va[8];
  uint8_t rkey[4];
  uint8_t dma_len[4];
  uint64_t vaddr() const { return load_be64(va); }
  uint32_t r_key() const { return load_be32(rkey); }
  uint32_t length() const { return load_be32(dma_len); }
};
static_assert(sizeof(Reth) == 16);

// ACK Extended Transport Header (IBA 9.3.5), 4 bytes.
struct Aeth {
  uint8_t syndrome;
  uint8_t msn[3];
  uint32_t msn_value() const { return load_be24(msn); }
};
static_assert(sizeof(Aeth) == 4);

// AETH syndrome (IBA 9.7.5.2.8): bits 6:5 select ACK / RNR NAK / NAK, bits 4:0 carry
// the credit count, the RNR timer code, or the NAK code.
enum class AethType : uint8_t { ack = 0, rnr_nak = 1, reserved = 2, nak = 3 };
enum class NakCode : uint8_t {
  psn_seq_error = 0,
  invalid_request = 1,
  remote_access_error = 2,
  remote_op_error = 3,
  invalid_rd_request = 4,
};
constexpr uint8_t kCreditsInvalid = 0x1f;
inline AethType aeth_type(uint8_t syndrome) { return AethType((syndrome >> 5) & 3); }
inline uint8_t aeth_value(uint8_t syndrome) { return syndrome & 0x1f; }
inline uint8_t make_syndrome(AethType t, uint8_t value) {
  return uint8_t(uint8_t(t) << 5 | (value & 0x1f));
}

// Datagram Extended Transport Header (IBA 9.3.2), 8 bytes.
struct Deth {
  uint8_t qkey[4];
  uint8_t resv;
  uint8_t src_qp[3];
  uint32_t q_key() const { return load_be32(qkey); }
  uint32_t sqpn() const { return load_be24(src_qp); }
};
static_assert(sizeof(Deth) == 8);

// Atomic Extended Transport Header (IBA 9.3.3.5), 28 bytes.
struct AtomicEth {
  uint8_t va[8];
  uint8_t rkey[4];
  uint8_t swap_add[8];
  uint8_t compare[8];
  uint64_t vaddr() const { return load_be64(va); }
  uint32_t r_key() const { return load_be32(rkey); }
  uint64_t swap_add_data() const { return load_be64(swap_add); }
  uint64_t compare_data() const { return load_be64(compare); }
};
static_assert(sizeof(AtomicEth) == 28);

// Atomic ACK Extended Transport Header (IBA 9.3.6), 8 bytes.
struct AtomicAckEth {
  uint8_t orig[8];
  uint64_t orig_value() const { return load_be64(orig); }
};
static_assert(sizeof(AtomicAckEth) == 8);

// XRC Extended Transport Header (the XRC annex, A14.6.3), 4 bytes: the XRC SRQ of the
// target's XRC domain a request is for. Every XRC request carries one; responses do not.
struct Xrceth {
  uint8_t resv;
  uint8_t srqn[3];
  uint32_t srq_num() const { return load_be24(srqn); }
};
static_assert(sizeof(Xrceth) == 4);

// Flush Extended Transport Header (IBA 1.5, 9.3.3.6 as Linux rxe lays it out), 4 bytes:
// the placement type in bits 3:0 (flush::type_* of dverbs/types.h), the selectivity
// level in bits 5:4 (flush::level_*), the rest reserved.
struct Feth {
  uint8_t bits[4];
  uint32_t value() const { return load_be32(bits); }
  uint8_t placement_type() const { return uint8_t(value() & 0xf); }
  uint8_t selectivity_level() const { return uint8_t((value() >> 4) & 3); }
};
static_assert(sizeof(Feth) == 4);

// Base transport opcodes (IBA Table 38): the transport in bits 7:5, the operation within
// it in bits 4:0.
namespace op {
constexpr uint8_t kTransportMask = 0xe0, kOperationMask = 0x1f;
constexpr uint8_t kRc = 0x00, kUc = 0x20, kRd = 0x40, kUd = 0x60;
// XRC (the XRC annex): RC's operations under the transport prefix 101b.
constexpr uint8_t kXrc = 0xa0;
constexpr uint8_t kSendFirst = 0x00, kSendMiddle = 0x01, kSendLast = 0x02,
                  kSendLastImm = 0x03, kSendOnly = 0x04, kSendOnlyImm = 0x05,
                  kWriteFirst = 0x06, kWriteMiddle = 0x07, kWriteLast = 0x08,
                  kWriteLastImm = 0x09, kWriteOnly = 0x0a, kWriteOnlyImm = 0x0b,
                  kReadRequest = 0x0c, kReadRespFirst = 0x0d, kReadRespMiddle = 0x0e,
                  kReadRespLast = 0x0f, kReadRespOnly = 0x10, kAck = 0x11, kAtomicAck = 0x12,
                  kCmpSwap = 0x13, kFetchAdd = 0x14, kSendLastInv = 0x16, kSendOnlyInv = 0x17,
                  kFlush = 0x1c, kAtomicWrite = 0x1d;  // IBA 1.5, RC only
constexpr uint8_t kCnp = 0x81;
// The transport of an opcode (kRc, kUc, kRd, kUd) and its operation (kSendFirst...).
constexpr uint8_t transport(uint8_t opcode) { return opcode & kTransportMask; }
constexpr uint8_t operation(uint8_t opcode) { return opcode & kOperationMask; }
}  // namespace op

// Extension header sizes (IBA 9.3); ImmDt and IETH are one 32-bit word each.
constexpr uint32_t kRethLen = 16, kAethLen = 4, kDethLen = 8, kImmDtLen = 4, kIethLen = 4,
                   kAtomicEthLen = 28, kAtomicAckEthLen = 8, kFethLen = 4,
                   kXrcethLen = 4;
// An RDMA ATOMIC WRITE carries exactly this much payload (IBA 1.5).
constexpr uint32_t kAtomicWriteLen = 8;
// A CNP carries 16 reserved bytes between the BTH and the ICRC (IBA A17.9.3); parse_frame
// reports them as its payload.
constexpr uint32_t kCnpPayloadLen = 16;

// Properties of each opcode (one table, indexed by the 8-bit opcode).
namespace opf {
constexpr uint32_t kValid = 1u << 0;
constexpr uint32_t kReth = 1u << 1;
constexpr uint32_t kAeth = 1u << 2;
constexpr uint32_t kDeth = 1u << 3;
constexpr uint32_t kImm = 1u << 4;
constexpr uint32_t kIeth = 1u << 5;
constexpr uint32_t kAtomicEth = 1u << 6;
constexpr uint32_t kAtomicAckEth = 1u << 7;
constexpr uint32_t kPayload = 1u << 8;  // may carry payload
constexpr uint32_t kRequest = 1u << 9;
constexpr uint32_t kResponse = 1u << 10;
constexpr uint32_t kSend = 1u << 11;
constexpr uint32_t kWrite = 1u << 12;
constexpr uint32_t kRead = 1u << 13;
constexpr uint32_t kAtomic = 1u << 14;
constexpr uint32_t kFirst = 1u << 15;
constexpr uint32_t kMiddle = 1u << 16;
constexpr uint32_t kLast = 1u << 17;
constexpr uint32_t kOnly = kFirst | kLast;
constexpr uint32_t kRecvWqe = 1u << 18;   // consumes a receive WQE at the responder
constexpr uint32_t kStartMsg = 1u << 19;  // first or only packet of a message
constexpr uint32_t kEndMsg = 1u << 20;    // last or only packet of a message
constexpr uint32_t kFeth = 1u << 21;         // carries a FETH (IBA 1.5 FLUSH)
constexpr uint32_t kAtomicWrite = 1u << 22;  // RDMA ATOMIC WRITE request (IBA 1.5)
constexpr uint32_t kFlush = 1u << 23;        // RDMA FLUSH request (IBA 1.5)
constexpr uint32_t kXrceth = 1u << 24;       // XRC request: XRCETH after the BTH
}  // namespace opf

struct OpcodeInfo {
  const char* name;     // e.g. "RC_SEND_ONLY"; "INVALID" for unassigned codes
  uint32_t flags;       // opf::*
  uint8_t ext_len;      // bytes of extension headers after the BTH
};

// The table behind opcode_info (opcode.cc), visible so every lookup on the packet path is
// one indexed load rather than a call.
extern const std::array<OpcodeInfo, 256> kOpcodeTable;

// Context: any. Never fails: unassigned opcodes return an entry without opf::kValid.
inline const OpcodeInfo& opcode_info(uint8_t opcode) noexcept { return kOpcodeTable[opcode]; }

// Offset from the end of the BTH of extension header `hdr` (one opf::kDeth..kIeth bit) for
// an opcode with `flags`. Wire order (IBA 9.2, Table 39, and the XRC annex): DETH XRCETH
// FETH RETH AtomicETH AETH AtomicAckETH ImmDt IETH (the FETH precedes the RETH of a FLUSH,
// as rxe sends it). Meaningful only when `flags` has `hdr`.
// Context: any.
constexpr uint32_t ext_offset(uint32_t flags, uint32_t hdr) {
  uint32_t off = 0;
  if (hdr == opf::kDeth) return off;
  if (flags & opf::kDeth) off += kDethLen;
  if (hdr == opf::kXrceth) return off;
  if (flags & opf::kXrceth) off += kXrcethLen;
  if (hdr == opf::kFeth) return off;
  if (flags & opf::kFeth) off += kFethLen;
  if (hdr == opf::kReth) return off;
  if (flags & opf::kReth) off += kRethLen;
  if (hdr == opf::kAtomicEth) return off;
  if (flags & opf::kAtomicEth) off += kAtomicEthLen;
  if (hdr == opf::kAeth) return off;
  if (flags & opf::kAeth) off += kAethLen;
  if (hdr == opf::kAtomicAckEth) return off;
  if (flags & opf::kAtomicAckEth) off += kAtomicAckEthLen;
  if (hdr == opf::kImm) return off;
  if (flags & opf::kImm) off += kImmDtLen;
  return off;  // opf::kIeth comes last
}

// ---- ICRC (IBA Annex A17.3.3 for RoCEv2) ----
// CRC-32 over: 8 bytes of 0xff standing for the masked LRH, then the IPv4 header with
// TOS, TTL and header checksum set to all ones, the UDP header with the checksum set to
// all ones, the BTH with FECN/BECN/resv6 (byte 4) set to all ones, and everything after
// the BTH up to (not including) the ICRC. Computed with ISA-L crc32_gzip_refl, so it
// continues across fragments: icrc_begin over the headers, icrc_update per payload
// fragment, icrc_end for the value to put on the wire (little-endian byte order in the
// packet, as hardware sends it).
// `ip` points at the IPv4 header; `hdr_len` covers IPv4+UDP+BTH+extension headers.
uint32_t icrc_begin(const uint8_t* ip, uint32_t hdr_len) noexcept;
uint32_t icrc_update(uint32_t crc, const void* data, uint32_t len) noexcept;
inline uint32_t icrc_end(uint32_t crc) noexcept { return crc; }
// ICRC of a contiguous packet from the IPv4 header to the end of the pad (ICRC excluded).
uint32_t icrc_compute(const uint8_t* ip, uint32_t len) noexcept;
// The same for a packet we own and may write: the variant fields are masked in place for
// the one CRC pass and restored after it, so no byte is copied. `len` must cover the
// IPv4, UDP and BTH headers; shorter input goes the copying way. Context: any, the caller
// owns the bytes (no other thread reads them meanwhile).
uint32_t icrc_compute_in_place(uint8_t* ip, uint32_t len) noexcept;
// Copies `len` bytes from `src` to `dst` (not overlapping) and continues `crc` over them,
// in one pass over the bytes where the CPU allows: a payload gathered into a frame.
uint32_t icrc_copy(uint32_t crc, void* dst, const void* src, uint32_t len) noexcept;

// ---- parsing ----
enum class ParseError : uint8_t {
  ok = 0,
  truncated,        // shorter than the headers it announces
  not_ipv4,         // ethertype is not IPv4 (ARP and others are handled elsewhere)
  bad_ip_header,    // version/IHL/fragment/total length wrong
  bad_ip_checksum,
  not_udp,
  not_roce,         // UDP destination port is not 4791
  bad_udp_length,
  bad_opcode,       // unassigned or unsupported opcode
  bad_tver,         // BTH transport version is not 0
  bad_length,       // payload/pad inconsistent with the opcode
  bad_icrc,
};
const char* parse_error_str(ParseError e) noexcept;

// Everything the transport needs from one received frame; pointers point into the frame.
struct Packet {
  const uint8_t* frame = nullptr;
  uint32_t frame_len = 0;
  const uint8_t* ip = nullptr;  // start of the IPv4 header
  uint8_t src_mac[6] = {};
  uint8_t dst_mac[6] = {};
  uint16_t vlan_tci = 0;        // 0 when untagged
  uint32_t src_ip = 0;          // host byte order
  uint32_t dst_ip = 0;          // host byte order
  uint8_t tos = 0;
  uint8_t ttl = 0;
  uint16_t udp_sport = 0;
  const Bth* bth = nullptr;
  const OpcodeInfo* info = nullptr;
  uint8_t opcode = 0;
  uint32_t dest_qp = 0;
  uint32_t psn = 0;
  const Reth* reth = nullptr;
  const Aeth* aeth = nullptr;
  const Deth* deth = nullptr;
  const AtomicEth* atomic_eth = nullptr;
  const AtomicAckEth* atomic_ack = nullptr;
  const Xrceth* xrceth = nullptr;  // XRC requests
  const Feth* feth = nullptr;
  uint32_t imm_data = 0;        // network byte order, as verbs reports it
  uint32_t ieth_rkey = 0;       // host byte order
  const uint8_t* payload = nullptr;
  uint32_t payload_len = 0;     // excludes pad and ICRC
  uint32_t icrc = 0;            // as found in the frame, read little-endian (= icrc_compute)
};

// Parses and validates one Ethernet frame (FCS excluded, ICRC included). With
// `check_icrc`, a frame whose ICRC does not match is rejected with bad_icrc. On ok every
// field of *out is set; on an error the pointers and optional fields not reached are null
// or 0, the other fields unspecified.
// Context: any, never sleeps.
ParseError parse_frame(const uint8_t* frame, uint32_t len, Packet* out, bool check_icrc) noexcept;

// ---- building ----
// Addressing of one flow (a connected QP or an address handle).
struct FrameAddr {
  uint8_t src_mac[6];
  uint8_t dst_mac[6];
  uint32_t src_ip;    // host byte order
  uint32_t dst_ip;    // host byte order
  uint16_t udp_sport; // ECMP entropy: a hash of the QP pair
  uint8_t tos;        // DSCP/ECN from the traffic class
  uint8_t ttl;        // hop limit
};

// Transport fields of one packet.
struct BthFields {
  uint8_t opcode;
  bool se;
  bool ack_req;
  uint8_t pad;       // 0..3, so that payload+pad is a multiple of 4
  uint16_t pkey;
  uint32_t dest_qp;
  uint32_t psn;
};

// Bytes of Ethernet+IPv4+UDP+BTH+extension headers for `opcode` (no VLAN tag).
inline uint32_t headers_len(uint8_t opcode) noexcept {
  return kEthHdrLen + kIpv4HdrLen + kUdpHdrLen + sizeof(Bth) + opcode_info(opcode).ext_len;
}

// The Ethernet, IPv4 and UDP headers of one flow as every packet of it carries them, but
// for the lengths and the IPv4 checksum, and the RFC 1071 sum of that IPv4 header (total
// length and checksum 0): a packet's headers are then a copy and a few stores, its
// checksum one addition. A connected QP keeps one while its path is resolved.
struct FrameTemplate {
  uint8_t bytes[kEthHdrLen + kIpv4HdrLen + kUdpHdrLen];
  uint32_t ip_sum;  // 16-bit words summed, not folded
};
// Context: any, never sleeps.
void make_template(const FrameAddr& addr, FrameTemplate* t) noexcept;

// Writes Ethernet, IPv4 (with its checksum), UDP and BTH headers for a packet that will
// carry `payload_len` payload bytes; returns a pointer to where the extension headers go
// (right after the BTH). The caller writes the extension headers (helpers below), the
// payload and the pad bytes (zero), then calls finish_icrc() (or finish_frame(), which
// also recomputes the checksum, after changing a header field).
// Context: any, never sleeps.
uint8_t* write_headers(uint8_t* frame, const FrameTemplate& flow, const BthFields& bth,
                       uint32_t payload_len) noexcept;
uint8_t* write_headers(uint8_t* frame, const FrameAddr& addr, const BthFields& bth,
                       uint32_t payload_len) noexcept;
void write_reth(uint8_t* p, uint64_t va, uint32_t rkey, uint32_t len) noexcept;
void write_aeth(uint8_t* p, uint8_t syndrome, uint32_t msn) noexcept;
void write_deth(uint8_t* p, uint32_t qkey, uint32_t src_qp) noexcept;
void write_atomic_eth(uint8_t* p, uint64_t va, uint32_t rkey, uint64_t swap_add,
                      uint64_t compare) noexcept;
void write_atomic_ack_eth(uint8_t* p, uint64_t orig) noexcept;
void write_feth(uint8_t* p, uint8_t placement_type, uint8_t selectivity_level) noexcept;
// `imm_be` in network byte order, as verbs hands it over (the inverse of Packet::imm_data).
void write_immdt(uint8_t* p, uint32_t imm_be) noexcept;
void write_ieth(uint8_t* p, uint32_t rkey) noexcept;
void write_xrceth(uint8_t* p, uint32_t xrc_srqn) noexcept;

// Fills the IPv4 header checksum and the ICRC of a frame built by write_headers(); `len`
// is the frame length including the 4 ICRC bytes. Returns `len`.
uint32_t finish_frame(uint8_t* frame, uint32_t len) noexcept;
// The same for a frame whose IPv4 checksum is right already (write_headers wrote it and
// no header changed since): the ICRC only. Returns `len`.
uint32_t finish_icrc(uint8_t* frame, uint32_t len) noexcept;
// The ICRC of a frame built in order: icrc_frame_begin over its headers, from the IPv4
// header to `payload` (the first payload byte), then icrc_copy/icrc_update over the payload
// and the pad bytes, then icrc_frame_end stores the ICRC at `icrc_at` (right after the pad).
uint32_t icrc_frame_begin(const uint8_t* frame, const uint8_t* payload) noexcept;
inline void icrc_frame_end(uint8_t* icrc_at, uint32_t crc) noexcept {
  store_le32(icrc_at, icrc_end(crc));
}

// RFC 1071 Internet checksum of an IPv4 header of `len` bytes (a multiple of 2); a header
// whose checksum field is correct yields 0.
// Context: any.
uint16_t ipv4_checksum(const uint8_t* ip, uint32_t len) noexcept;

// Pad count for a payload of `len` bytes (IBA 9.2.3: payload padded to 4-byte multiple).
constexpr uint8_t pad_for(uint32_t len) { return uint8_t((4 - (len & 3)) & 3); }

// 24-bit PSN arithmetic (IBA 9.7.1): compare within half the PSN space.
constexpr int32_t psn_diff(uint32_t a, uint32_t b) {
  return int32_t((a - b) << 8) >> 8;
}
constexpr uint32_t psn_add(uint32_t psn, uint32_t n) { return (psn + n) & kPsnMask; }

}  // namespace dverbs::pmd::wire
