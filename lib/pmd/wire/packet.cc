// RoCEv2 frame parsing and building.
//
// parse_frame() sees untrusted bytes straight from the NIC (and the fuzzer): every read is
// preceded by a length check against what is left, and all lengths are 32-bit unsigned
// values compared so that no subtraction can wrap (rxe's payload-length underflow,
// CVE-2023-2176 class, is exactly such a wrap).
#include "pmd/wire/roce.h"

#include <bit>

namespace dverbs::pmd::wire {
namespace {

constexpr uint16_t kEtherIpv4 = 0x0800;
constexpr uint16_t kEtherVlan = 0x8100;
constexpr uint8_t kIpProtoUdp = 17;
constexpr uint16_t kIpDf = 0x4000;
constexpr uint16_t kIpMf = 0x2000;
constexpr uint16_t kIpFragOffMask = 0x1fff;
constexpr uint32_t kBthLen = sizeof(Bth);

}  // namespace

uint16_t ipv4_checksum(const uint8_t* ip, uint32_t len) noexcept {
  // RFC 1071 sums 16-bit words with end-around carry; that sum does not depend on the
  // byte order it is taken in (RFC 1071 2.B) and 32-bit words fold to the same 16 bits
  // (2^16 = 1 modulo 0xffff), so the header is read a word at a time in host order and the
  // result swapped once.
  uint64_t sum = 0;
  uint32_t i = 0;
  if (len == kIpv4HdrLen) {  // no options: five words, no loop
    uint32_t w[5];
    std::memcpy(w, ip, sizeof w);
    sum = uint64_t(w[0]) + w[1] + w[2] + w[3] + w[4];
    i = len;
  }
  for (; i + 4 <= len; i += 4) {
    uint32_t w;
    std::memcpy(&w, ip + i, 4);
    sum += w;
  }
  if (i + 2 <= len) {
    uint16_t h;
    std::memcpy(&h, ip + i, 2);
    sum += h;
  }
  sum = (sum & 0xffffffffu) + (sum >> 32);
  sum = (sum & 0xffffu) + (sum >> 16);
  sum = (sum & 0xffffu) + (sum >> 16);
  sum = (sum & 0xffffu) + (sum >> 16);
  const uint16_t folded = uint16_t(~sum);
  if constexpr (std::endian::native == std::endian::little) return __builtin_bswap16(folded);
  return folded;
}

const char* parse_error_str(ParseError e) noexcept {
  switch (e) {
    case ParseError::ok: return "ok";
    case ParseError::truncated: return "truncated";
    case ParseError::not_ipv4: return "not_ipv4";
    case ParseError::bad_ip_header: return "bad_ip_header";
    case ParseError::bad_ip_checksum: return "bad_ip_checksum";
    case ParseError::not_udp: return "not_udp";
    case ParseError::not_roce: return "not_roce";
    case ParseError::bad_udp_length: return "bad_udp_length";
    case ParseError::bad_opcode: return "bad_opcode";
    case ParseError::bad_tver: return "bad_tver";
    case ParseError::bad_length: return "bad_length";
    case ParseError::bad_icrc: return "bad_icrc";
  }
  return "unknown";
}

ParseError parse_frame(const uint8_t* frame, uint32_t len, Packet* out, bool check_icrc) noexcept {
  Packet& p = *out;
  // Reset field by field, not with `p = Packet{}` (a memset and a copy per frame): the
  // pointers and the optional fields are cleared here, every other field is written before
  // parse_frame returns ok.
  p.frame = frame;
  p.frame_len = len;
  p.ip = nullptr;
  p.vlan_tci = 0;
  p.bth = nullptr;
  p.info = nullptr;
  p.reth = nullptr;
  p.aeth = nullptr;
  p.deth = nullptr;
  p.atomic_eth = nullptr;
  p.atomic_ack = nullptr;
  p.xrceth = nullptr;
  p.feth = nullptr;
  p.imm_data = 0;
  p.ieth_rkey = 0;
  p.payload = nullptr;
  p.payload_len = 0;

  // Ethernet, at most one 802.1Q tag.
  if (len < kEthHdrLen) return ParseError::truncated;
  std::memcpy(p.dst_mac, frame, 6);
  std::memcpy(p.src_mac, frame + 6, 6);
  uint32_t off = 12;
  uint16_t type = load_be16(frame + off);
  if (type == kEtherVlan) {
    if (len < kEthHdrLen + kVlanTagLen) return ParseError::truncated;
    p.vlan_tci = load_be16(frame + off + 2);
    off += kVlanTagLen;
    type = load_be16(frame + off);
  }
  off += 2;
  if (type != kEtherIpv4) return ParseError::not_ipv4;

  // IPv4 (RFC 791). The frame may carry Ethernet padding after the IP datagram, so the
  // datagram ends at its total length, never at the frame end.
  const uint8_t* ip = frame + off;
  const uint32_t avail = len - off;
  if (avail < kIpv4HdrLen) return ParseError::truncated;
  if (ip[0] >> 4 != 4 || (ip[0] & 0xf) < 5) return ParseError::bad_ip_header;
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  if (avail < ihl) return ParseError::truncated;
  if (ipv4_checksum(ip, ihl) != 0) return ParseError::bad_ip_checksum;
  const uint32_t total = load_be16(ip + 2);
  const uint16_t frag = load_be16(ip + 6);
  if ((frag & kIpMf) || (frag & kIpFragOffMask)) return ParseError::bad_ip_header;
  if (total < ihl) return ParseError::bad_ip_header;
  if (total > avail) return ParseError::truncated;
  if (ip[9] != kIpProtoUdp) return ParseError::not_udp;
  p.ip = ip;
  p.tos = ip[1];
  p.ttl = ip[8];
  p.src_ip = load_be32(ip + 12);
  p.dst_ip = load_be32(ip + 16);

  // UDP: the datagram is exactly the IP payload.
  if (total - ihl < kUdpHdrLen) return ParseError::bad_udp_length;
  const uint8_t* udp = ip + ihl;
  if (load_be16(udp + 2) != kRoceUdpPort) return ParseError::not_roce;
  if (load_be16(udp + 4) != total - ihl) return ParseError::bad_udp_length;
  p.udp_sport = load_be16(udp);

  // BTH (IBA 9.2). `rest` counts the bytes from the BTH to the end of the ICRC.
  uint32_t rest = total - ihl - kUdpHdrLen;
  if (rest < kBthLen + kIcrcLen) return ParseError::bad_length;
  const Bth* bth = reinterpret_cast<const Bth*>(udp + kUdpHdrLen);
  const OpcodeInfo& info = opcode_info(bth->opcode);
  if (!(info.flags & opf::kValid)) return ParseError::bad_opcode;
  // IBA 9.2: a TVer other than 0 is a version this HCA does not speak; drop the packet.
  if (bth->tver() != 0) return ParseError::bad_tver;
  p.bth = bth;
  p.info = &info;
  p.opcode = bth->opcode;
  p.dest_qp = bth->dqpn();
  p.psn = bth->psn_value();

  // Extension headers, payload, pad, ICRC (IBA 9.2.3): compare, never subtract first.
  const uint32_t pad = bth->pad_count();
  rest -= kBthLen + kIcrcLen;
  if (uint32_t(info.ext_len) + pad > rest) return ParseError::bad_length;
  const uint32_t payload_len = rest - info.ext_len - pad;
  if (!(info.flags & opf::kPayload) && (payload_len != 0 || pad != 0))
    return ParseError::bad_length;
  if (bth->opcode == op::kCnp && (payload_len != kCnpPayloadLen || pad != 0))
    return ParseError::bad_length;

  // The extension headers in wire order (IBA 9.2, Table 39; ext_offset's order).
  const uint8_t* ext = reinterpret_cast<const uint8_t*>(bth) + kBthLen;
  const uint32_t f = info.flags;
  const uint8_t* x = ext;
  if (f & opf::kDeth) {
    p.deth = reinterpret_cast<const Deth*>(x);
    x += kDethLen;
  }
  if (f & opf::kXrceth) {
    p.xrceth = reinterpret_cast<const Xrceth*>(x);
    x += kXrcethLen;
  }
  if (f & opf::kFeth) {
    p.feth = reinterpret_cast<const Feth*>(x);
    x += kFethLen;
  }
  if (f & opf::kReth) {
    p.reth = reinterpret_cast<const Reth*>(x);
    x += kRethLen;
  }
  if (f & opf::kAtomicEth) {
    p.atomic_eth = reinterpret_cast<const AtomicEth*>(x);
    x += kAtomicEthLen;
  }
  if (f & opf::kAeth) {
    p.aeth = reinterpret_cast<const Aeth*>(x);
    x += kAethLen;
  }
  if (f & opf::kAtomicAckEth) {
    p.atomic_ack = reinterpret_cast<const AtomicAckEth*>(x);
    x += kAtomicAckEthLen;
  }
  if (f & opf::kImm) {
    std::memcpy(&p.imm_data, x, 4);
    x += kImmDtLen;
  }
  if (f & opf::kIeth) p.ieth_rkey = load_be32(x);

  p.payload = ext + info.ext_len;
  p.payload_len = payload_len;
  const uint8_t* icrc = p.payload + payload_len + pad;
  p.icrc = load_le32(icrc);
  if (check_icrc && icrc_compute(ip, uint32_t(icrc - ip)) != p.icrc) return ParseError::bad_icrc;
  return ParseError::ok;
}

void make_template(const FrameAddr& addr, FrameTemplate* t) noexcept {
  uint8_t* eth = t->bytes;
  std::memcpy(eth, addr.dst_mac, 6);
  std::memcpy(eth + 6, addr.src_mac, 6);
  store_be16(eth + 12, kEtherIpv4);

  uint8_t* ip = eth + kEthHdrLen;
  // Version 4, IHL 5, total length per packet; id 0 with DF set (RoCEv2 packets must not be
  // fragmented, so they are never reassembled); checksum per packet.
  store_be32(ip, 0x45u << 24 | uint32_t(addr.tos) << 16);
  store_be32(ip + 4, kIpDf);
  store_be32(ip + 8, uint32_t(addr.ttl) << 24 | uint32_t(kIpProtoUdp) << 16);
  store_be32(ip + 12, addr.src_ip);
  store_be32(ip + 16, addr.dst_ip);
  uint32_t sum = 0;
  for (uint32_t i = 0; i < kIpv4HdrLen; i += 2) sum += load_be16(ip + i);
  t->ip_sum = sum;

  uint8_t* udp = ip + kIpv4HdrLen;
  store_be32(udp, uint32_t(addr.udp_sport) << 16 | kRoceUdpPort);
  // Length per packet; RoCEv2 leaves the UDP checksum zero, the ICRC covers the datagram.
  store_be32(udp + 4, 0);
}

uint8_t* write_headers(uint8_t* frame, const FrameTemplate& flow, const BthFields& bth,
                       uint32_t payload_len) noexcept {
  const uint32_t ext_len = opcode_info(bth.opcode).ext_len;
  const uint32_t ip_len =
      kIpv4HdrLen + kUdpHdrLen + kBthLen + ext_len + payload_len + (bth.pad & 3) + kIcrcLen;

  std::memcpy(frame, flow.bytes, sizeof flow.bytes);
  uint8_t* ip = frame + kEthHdrLen;
  store_be16(ip + 2, uint16_t(ip_len));
  // The template's sum plus the total length, folded (at most 11 16-bit words: two folds).
  uint32_t sum = flow.ip_sum + (ip_len & 0xffff);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  store_be16(ip + 10, uint16_t(~sum));

  uint8_t* udp = ip + kIpv4HdrLen;
  store_be16(udp + 4, uint16_t(ip_len - kIpv4HdrLen));

  uint8_t* b = udp + kUdpHdrLen;
  // OpCode, SE | MigReq 0 | PadCnt | TVer 0, P_Key; FECN/BECN 0, DestQP; AckReq, PSN.
  store_be32(b, uint32_t(bth.opcode) << 24 |
                    uint32_t((bth.se ? 0x80 : 0) | (bth.pad & 3) << 4) << 16 | bth.pkey);
  store_be32(b + 4, bth.dest_qp & kQpnMask);
  store_be32(b + 8, (bth.ack_req ? 0x80000000u : 0) | (bth.psn & kPsnMask));
  return b + kBthLen;
}

uint8_t* write_headers(uint8_t* frame, const FrameAddr& addr, const BthFields& bth,
                       uint32_t payload_len) noexcept {
  FrameTemplate flow;
  make_template(addr, &flow);
  return write_headers(frame, flow, bth, payload_len);
}

void write_reth(uint8_t* p, uint64_t va, uint32_t rkey, uint32_t len) noexcept {
  store_be64(p, va);
  store_be32(p + 8, rkey);
  store_be32(p + 12, len);
}

void write_aeth(uint8_t* p, uint8_t syndrome, uint32_t msn) noexcept {
  p[0] = syndrome;
  store_be24(p + 1, msn & 0xffffff);
}

void write_deth(uint8_t* p, uint32_t qkey, uint32_t src_qp) noexcept {
  store_be32(p, qkey);
  p[4] = 0;
  store_be24(p + 5, src_qp & kQpnMask);
}

void write_atomic_eth(uint8_t* p, uint64_t va, uint32_t rkey, uint64_t swap_add,
                      uint64_t compare) noexcept {
  store_be64(p, va);
  store_be32(p + 8, rkey);
  store_be64(p + 12, swap_add);
  store_be64(p + 20, compare);
}

void write_atomic_ack_eth(uint8_t* p, uint64_t orig) noexcept { store_be64(p, orig); }

void write_feth(uint8_t* p, uint8_t placement_type, uint8_t selectivity_level) noexcept {
  store_be32(p, uint32_t(placement_type & 0xf) | uint32_t(selectivity_level & 3) << 4);
}

void write_immdt(uint8_t* p, uint32_t imm_be) noexcept { std::memcpy(p, &imm_be, 4); }

void write_ieth(uint8_t* p, uint32_t rkey) noexcept { store_be32(p, rkey); }

void write_xrceth(uint8_t* p, uint32_t xrc_srqn) noexcept { store_be32(p, xrc_srqn & kQpnMask); }

namespace {
// Where the IPv4 header of a frame we built starts: after Ethernet and its 802.1Q tag if any.
uint32_t ip_offset(const uint8_t* frame) noexcept {
  return load_be16(frame + 12) == kEtherVlan ? kEthHdrLen + kVlanTagLen : kEthHdrLen;
}
}  // namespace

uint32_t finish_frame(uint8_t* frame, uint32_t len) noexcept {
  uint8_t* ip = frame + ip_offset(frame);
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  store_be16(ip + 10, 0);
  store_be16(ip + 10, ipv4_checksum(ip, ihl));
  return finish_icrc(frame, len);
}

uint32_t icrc_frame_begin(const uint8_t* frame, const uint8_t* payload) noexcept {
  const uint32_t off = ip_offset(frame);
  return icrc_begin(frame + off, uint32_t(payload - frame) - off);
}

uint32_t finish_icrc(uint8_t* frame, uint32_t len) noexcept {
  const uint32_t off = ip_offset(frame);
  store_le32(frame + len - kIcrcLen, icrc_compute_in_place(frame + off, len - off - kIcrcLen));
  return len;
}

}  // namespace dverbs::pmd::wire
