// Invariant CRC of RoCEv2 packets (IBA Annex A17.3.3).
//
// The ICRC is CRC-32 (IEEE 802.3 polynomial, reflected, init ~0, final xor ~0) over a
// pseudo-LRH of eight 0xff bytes, then the packet from the IPv4 header on with the fields
// that routers may change masked to all ones. ISA-L's crc32_gzip_refl computes exactly this
// CRC and continues across calls (feeding back the previous result), so the masked headers
// are hashed from a small stack copy and the payload in place, never byte by byte. A frame
// we build is ours to write: its variant bytes are masked in place for a single pass.
#include "pmd/wire/roce.h"

#include <isa-l/crc.h>

#include <algorithm>

namespace dverbs::pmd::wire {
namespace {

// CRC state after the eight 0xff bytes that stand for the masked LRH. Computed at compile
// time with the bitwise definition so the fast path starts one step ahead.
constexpr uint32_t crc_of_ff8() {
  uint32_t c = 0xffffffffu;
  for (int i = 0; i < 8; i++) {
    c ^= 0xffu;
    for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}
constexpr uint32_t kLrhCrc = crc_of_ff8();

// Largest IPv4 header (IHL 15) + UDP + BTH + the longest extension header run.
constexpr uint32_t kMaskBuf = 60 + kUdpHdrLen + sizeof(Bth) + 32;

// The masked bytes (IBA A17.3.3), as offsets from the IPv4 header of IHL `ihl` bytes: IPv4
// TOS, TTL and header checksum; UDP checksum; BTH FECN/BECN/resv6.
constexpr uint32_t kMaskedCount = 7;
struct MaskedOffsets {
  uint32_t at[kMaskedCount];
};
constexpr MaskedOffsets masked_offsets(uint32_t ihl) {
  return {{1, 8, 10, 11, ihl + 6, ihl + 7, ihl + kUdpHdrLen + 4}};
}

// The variant bytes of a packet whose headers through the BTH are all there, as straight
// stores (the per-packet case; masked_offsets serves the short ones).
struct Variant {
  uint8_t tos, ttl, bth_fb;
  uint16_t ip_csum, udp_csum;
};
inline Variant mask_variant(uint8_t* ip, uint32_t ihl) {
  uint8_t* udp = ip + ihl;
  Variant v{ip[1], ip[8], udp[kUdpHdrLen + 4], 0, 0};
  std::memcpy(&v.ip_csum, ip + 10, 2);
  std::memcpy(&v.udp_csum, udp + 6, 2);
  ip[1] = ip[8] = ip[10] = ip[11] = 0xff;
  udp[6] = udp[7] = udp[kUdpHdrLen + 4] = 0xff;
  return v;
}
inline void unmask_variant(uint8_t* ip, uint32_t ihl, const Variant& v) {
  uint8_t* udp = ip + ihl;
  ip[1] = v.tos;
  ip[8] = v.ttl;
  std::memcpy(ip + 10, &v.ip_csum, 2);
  std::memcpy(udp + 6, &v.udp_csum, 2);
  udp[kUdpHdrLen + 4] = v.bth_fb;
}

}  // namespace

uint32_t icrc_begin(const uint8_t* ip, uint32_t hdr_len) noexcept {
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  const uint32_t masked = std::min(ihl + kUdpHdrLen + uint32_t(sizeof(Bth)), hdr_len);
  const uint32_t copied = std::min(hdr_len, kMaskBuf);
  uint8_t buf[kMaskBuf];
  std::memcpy(buf, ip, copied);
  if (masked == ihl + kUdpHdrLen + sizeof(Bth)) {
    mask_variant(buf, ihl);  // the BTH is whole: every masked byte is in the copy
  } else {
    // `masked` guards each write so a short hdr_len never writes past what was copied.
    for (uint32_t p : masked_offsets(ihl).at)
      if (p < masked) buf[p] = 0xff;
  }
  uint32_t crc = crc32_gzip_refl(kLrhCrc, buf, copied);
  if (hdr_len > copied) crc = crc32_gzip_refl(crc, ip + copied, hdr_len - copied);
  return crc;
}

uint32_t icrc_update(uint32_t crc, const void* data, uint32_t len) noexcept {
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), len);
}

uint32_t icrc_compute(const uint8_t* ip, uint32_t len) noexcept {
  // Let icrc_begin take as much as its stack copy holds: small packets (ACKs, READ
  // requests, CNPs) then cost a single CRC call.
  const uint32_t hdr = std::min(len, kMaskBuf);
  uint32_t crc = icrc_begin(ip, hdr);
  if (len > hdr) crc = icrc_update(crc, ip + hdr, len - hdr);
  return icrc_end(crc);
}

uint32_t icrc_compute_in_place(uint8_t* ip, uint32_t len) noexcept {
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  if (len < ihl + kUdpHdrLen + sizeof(Bth)) return icrc_compute(ip, len);
  const Variant saved = mask_variant(ip, ihl);
  const uint32_t crc = crc32_gzip_refl(kLrhCrc, ip, len);
  unmask_variant(ip, ihl, saved);
  return icrc_end(crc);
}

}  // namespace dverbs::pmd::wire
