// Invariant CRC of RoCEv2 packets (IBA Annex A17.3.3).
//
// The ICRC is CRC-32 (IEEE 802.3 polynomial, reflected, init ~0, final xor ~0) over a
// pseudo-LRH of eight 0xff bytes, then the packet from the IPv4 header on with the fields
// that routers may change masked to all ones. ISA-L's crc32_gzip_refl computes exactly this
// CRC and continues across calls (feeding back the previous result), so the masked headers
// are hashed from a small stack copy and the payload in place, never byte by byte; long
// payloads go through crc32_wide below where the CPU has 256-bit carry-less multiplies. A frame
// we build is ours to write: its variant bytes are masked in place for a single pass.
#include "pmd/wire/roce.h"

#include <immintrin.h>
#include <isa-l/crc.h>

#include <algorithm>

namespace dverbs::pmd::wire {
namespace {

// ---- CRC-32 over long buffers with 256-bit carry-less multiplies
//
// ISA-L 2.30 folds 512 bits at a time only with AVX-512; on a CPU with VPCLMULQDQ but no
// AVX-512 (AMD Zen 3, Intel Alder Lake) it falls back to 128-bit PCLMULQDQ, about 9 GB/s
// here, under half of memcpy: the two ICRC passes of every payload byte (one per end) were
// the largest cost of a 64 KiB WRITE. This loop folds eight 128-bit lanes (four 256-bit
// registers, 128 bytes) per iteration, then hands the last 16 to 31 bytes to ISA-L.
//
// Folding (the PCLMULQDQ method for a reflected CRC): a 128-bit block X that lies D bits
// before a later block contributes X(x) * x^D modulo the polynomial there, which two 64x64
// carry-less products compute: X.hi * k(D - 32) xor X.lo * k(D + 32), where k(n) is
// x^n mod P bit-reflected (33 bits; the extra shift is the reflected product's). The CRC
// register itself enters as the first 32 bits of the message (for a reflected CRC,
// starting from register r is the same as starting from 0 with r xored into the first four
// bytes).

constexpr uint64_t fold_constant(uint32_t n) {
  uint64_t r = 1;  // x^n mod P, P = x^32 + 0x04c11db7
  for (uint32_t i = 0; i < n; i++) {
    r <<= 1;
    if (r & (1ull << 32)) r ^= 0x104c11db7ull;
  }
  uint64_t reflected = 0;
  for (int b = 0; b < 32; b++)
    if (r & (1ull << b)) reflected |= 1ull << (31 - b);
  return reflected << 1;
}
static_assert(fold_constant(96) == 0xccaa009e && fold_constant(160) == 0x1751997d0,
              "the 128-bit fold constants of CRC-32 (IEEE 802.3)");

// The fold of X by D bits, as {lo, hi} qwords for the multiplies below.
template <uint32_t D>
constexpr uint64_t kFoldLo = fold_constant(D - 32);  // multiplies X.hi
template <uint32_t D>
constexpr uint64_t kFoldHi = fold_constant(D + 32);  // multiplies X.lo

constexpr uint32_t kWideMin = 256;  // below this, ISA-L's setup costs less than ours

__attribute__((target("avx2,pclmul,vpclmulqdq"))) inline __m256i fold256(__m256i a, __m256i k) {
  return _mm256_xor_si256(_mm256_clmulepi64_epi128(a, k, 0x01),
                          _mm256_clmulepi64_epi128(a, k, 0x10));
}
__attribute__((target("avx2,pclmul,vpclmulqdq"))) inline __m128i fold128(__m128i a, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x01), _mm_clmulepi64_si128(a, k, 0x10));
}

// One 32-byte block of the source (also stored to dst with kCopy). A function of its own:
// a lambda would not inherit the target attribute, and clang then refuses the AVX types.
template <bool kCopy>
__attribute__((target("avx2,pclmul,vpclmulqdq"))) inline __m256i load_block(const uint8_t* p,
                                                                            uint8_t* dst,
                                                                            uint32_t at) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + at));
  if constexpr (kCopy) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + at), v);
  return v;
}

// crc32_gzip_refl's contract (crc in and out with the final inversion), n >= 128. With
// kCopy, each block is also stored to `dst` as it is folded: the copy and the CRC in one
// pass over the bytes.
template <bool kCopy>
__attribute__((target("avx2,pclmul,vpclmulqdq"))) uint32_t crc32_wide(uint32_t crc, uint8_t* dst,
                                                                      const uint8_t* p,
                                                                      uint32_t n) {
  const __m256i k1024 = _mm256_setr_epi64x(int64_t(kFoldLo<1024>), int64_t(kFoldHi<1024>),
                                           int64_t(kFoldLo<1024>), int64_t(kFoldHi<1024>));
  const __m256i k256 = _mm256_setr_epi64x(int64_t(kFoldLo<256>), int64_t(kFoldHi<256>),
                                          int64_t(kFoldLo<256>), int64_t(kFoldHi<256>));
  const __m128i k128 = _mm_set_epi64x(int64_t(kFoldHi<128>), int64_t(kFoldLo<128>));
  __m256i a0 = _mm256_xor_si256(load_block<kCopy>(p, dst, 0),
                                _mm256_setr_epi32(int(~crc), 0, 0, 0, 0, 0, 0, 0));
  __m256i a1 = load_block<kCopy>(p, dst, 32), a2 = load_block<kCopy>(p, dst, 64),
          a3 = load_block<kCopy>(p, dst, 96);
  for (uint32_t at = 128; n - at >= 128; at += 128) {
    a0 = _mm256_xor_si256(fold256(a0, k1024), load_block<kCopy>(p, dst, at));
    a1 = _mm256_xor_si256(fold256(a1, k1024), load_block<kCopy>(p, dst, at + 32));
    a2 = _mm256_xor_si256(fold256(a2, k1024), load_block<kCopy>(p, dst, at + 64));
    a3 = _mm256_xor_si256(fold256(a3, k1024), load_block<kCopy>(p, dst, at + 96));
  }
  const uint32_t done = n - (n % 128);
  p += done;
  if constexpr (kCopy) dst += done;
  n -= done;
  a1 = _mm256_xor_si256(fold256(a0, k256), a1);
  a2 = _mm256_xor_si256(fold256(a1, k256), a2);
  a3 = _mm256_xor_si256(fold256(a2, k256), a3);
  __m128i x =
      _mm_xor_si128(fold128(_mm256_castsi256_si128(a3), k128), _mm256_extracti128_si256(a3, 1));
  for (; n >= 16; p += 16, n -= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (kCopy) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), v);
      dst += 16;
    }
    x = _mm_xor_si128(fold128(x, k128), v);
  }
  // What is left is the 16 bytes of x, then the last n < 16 bytes, from a zero register.
  alignas(16) uint8_t tail[32];
  _mm_store_si128(reinterpret_cast<__m128i*>(tail), x);
  std::memcpy(tail + 16, p, n);
  if constexpr (kCopy) std::memcpy(dst, p, n);
  return crc32_gzip_refl(0xffffffffu, tail, 16 + n);
}

// ISA-L picks its own 512-bit loop where AVX-512 is there; ours runs only where it would not.
const bool kWide = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq") &&
         !__builtin_cpu_supports("avx512f");
}();

inline uint32_t crc32_run(uint32_t crc, const uint8_t* p, uint32_t n) noexcept {
  if (n >= kWideMin && kWide) return crc32_wide<false>(crc, nullptr, p, n);
  return crc32_gzip_refl(crc, p, n);
}

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
  uint32_t crc = crc32_run(kLrhCrc, buf, copied);
  if (hdr_len > copied) crc = crc32_run(crc, ip + copied, hdr_len - copied);
  return crc;
}

uint32_t icrc_update(uint32_t crc, const void* data, uint32_t len) noexcept {
  return crc32_run(crc, static_cast<const unsigned char*>(data), len);
}

uint32_t icrc_copy(uint32_t crc, void* dst, const void* src, uint32_t len) noexcept {
  const auto* s = static_cast<const uint8_t*>(src);
  if (len >= kWideMin && kWide) return crc32_wide<true>(crc, static_cast<uint8_t*>(dst), s, len);
  std::memcpy(dst, s, len);
  return crc32_gzip_refl(crc, s, len);
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
  const uint32_t crc = crc32_run(kLrhCrc, ip, len);
  unmask_variant(ip, ihl, saved);
  return icrc_end(crc);
}

}  // namespace dverbs::pmd::wire
