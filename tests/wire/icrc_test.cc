// ICRC (IBA Annex A17.3.3) against a bit-by-bit reference CRC-32 and real frames.
#include "pmd/wire/roce.h"

#include <gtest/gtest.h>
#include <isa-l/crc.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace dverbs::pmd::wire {
namespace {

using Bytes = std::vector<uint8_t>;

// CRC-32 straight from the definition: reflected polynomial 0xedb88320, init ~0, final ~.
uint32_t ref_crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int b = 0; b < 8; b++) c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
  }
  return ~c;
}

// The ICRC spelled out: 8 x 0xff, then the masked copy of IPv4/UDP/BTH, then the rest.
uint32_t ref_icrc(const uint8_t* ip, uint32_t len) {
  Bytes m(8 + len, 0xff);
  std::memcpy(m.data() + 8, ip, len);
  uint8_t* q = m.data() + 8;
  const uint32_t ihl = (ip[0] & 0xf) * 4;
  q[1] = q[8] = q[10] = q[11] = 0xff;  // TOS, TTL, header checksum
  q[ihl + 6] = q[ihl + 7] = 0xff;      // UDP checksum
  q[ihl + 8 + 4] = 0xff;               // BTH FECN/BECN/resv6
  return ref_crc32(m.data(), m.size());
}

// A random "packet" from the IPv4 header on (only IHL matters to the ICRC).
Bytes random_packet(std::mt19937& rng, uint32_t ihl_words, uint32_t len) {
  Bytes b(len);
  for (auto& x : b) x = uint8_t(rng());
  b[0] = uint8_t(0x40 | ihl_words);
  return b;
}

std::string frames_path() {
  if (const char* e = std::getenv("ROCE_FRAMES")) return e;
  return ROCE_FRAMES_DEFAULT;
}

Bytes from_hex(const std::string& h) {
  Bytes b;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    b.push_back(uint8_t(std::stoul(h.substr(i, 2), nullptr, 16)));
  return b;
}

std::vector<Bytes> load_frames() {
  std::ifstream in(frames_path());
  std::vector<Bytes> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    out.push_back(from_hex(line.substr(line.find('\t') + 1)));
  }
  return out;
}

TEST(Icrc, IsaLMatchesReferenceCrc32) {
  const char* s = "123456789";
  EXPECT_EQ(icrc_update(0, s, 9), 0xcbf43926u);  // the CRC-32 check value
  EXPECT_EQ(ref_crc32(reinterpret_cast<const uint8_t*>(s), 9), 0xcbf43926u);
}

TEST(Icrc, ContinuesAcrossFragments) {
  std::mt19937 rng(1);
  Bytes b = random_packet(rng, 5, 3000);
  const uint32_t whole = icrc_update(0, b.data(), b.size());
  for (uint32_t cut : {0u, 1u, 7u, 64u, 1499u, 2999u, 3000u}) {
    uint32_t c = icrc_update(0, b.data(), cut);
    EXPECT_EQ(icrc_update(c, b.data() + cut, uint32_t(b.size()) - cut), whole) << cut;
  }
}

// Long buffers take the 256-bit folding loop where the CPU has VPCLMULQDQ and no AVX-512
// (icrc.cc, crc32_wide; elsewhere ISA-L's own loop): every length around its block sizes,
// every alignment, any starting CRC, against ISA-L and the bitwise definition.
TEST(Icrc, LongBuffersMatchIsaLAndTheDefinition) {
  std::mt19937 rng(11);
  Bytes b(9000 + 64);
  for (auto& x : b) x = uint8_t(rng());
  std::vector<uint32_t> lens;
  for (uint32_t l = 120; l <= 560; l++) lens.push_back(l);
  for (uint32_t l : {1023u, 1024u, 1025u, 4095u, 4096u, 4097u, 4111u, 8192u, 9000u})
    lens.push_back(l);
  for (uint32_t len : lens) {
    const uint32_t off = rng() % 64, init = uint32_t(rng());
    ASSERT_EQ(icrc_update(init, b.data() + off, len), crc32_gzip_refl(init, b.data() + off, len))
        << "len " << len << " offset " << off;
  }
  for (uint32_t len : {256u, 300u, 4096u}) {
    ASSERT_EQ(icrc_update(0x1234567u, b.data() + 3, len), ref_crc32(b.data() + 3, len, 0x1234567u))
        << len;
  }
}

// The requester's fused copy: exactly `len` bytes land at dst (the guard bytes around them
// stay), and the CRC is ISA-L's over the source.
TEST(Icrc, CopyCopiesExactlyAndContinuesTheCrc) {
  std::mt19937 rng(13);
  Bytes src(9000 + 64);
  for (auto& x : src) x = uint8_t(rng());
  for (uint32_t len :
       {0u, 1u, 15u, 255u, 256u, 257u, 300u, 511u, 512u, 1000u, 4096u, 4111u, 9000u}) {
    const uint32_t so = rng() % 64, d_off = 16 + rng() % 48, init = uint32_t(rng());
    Bytes dst(len + 128, 0xa5);
    const uint32_t crc = icrc_copy(init, dst.data() + d_off, src.data() + so, len);
    ASSERT_EQ(crc, crc32_gzip_refl(init, src.data() + so, len)) << "len " << len;
    ASSERT_EQ(std::memcmp(dst.data() + d_off, src.data() + so, len), 0) << "len " << len;
    for (uint32_t i = 0; i < d_off; i++) ASSERT_EQ(dst[i], 0xa5) << "before, len " << len;
    for (uint32_t i = d_off + len; i < dst.size(); i++)
      ASSERT_EQ(dst[i], 0xa5) << "after, len " << len;
  }
}

TEST(Icrc, ComputeMatchesBitwiseReferenceOnRandomPackets) {
  std::mt19937 rng(42);
  for (int i = 0; i < 400; i++) {
    const uint32_t ihl = i % 8 == 0 ? 5 + rng() % 11 : 5;
    const uint32_t len = ihl * 4 + 20 + rng() % 4200;
    Bytes b = random_packet(rng, ihl, len);
    ASSERT_EQ(icrc_compute(b.data(), len), ref_icrc(b.data(), len))
        << "ihl " << ihl << " len " << len;
  }
}

TEST(Icrc, BeginUpdateEqualsCompute) {
  std::mt19937 rng(7);
  for (uint32_t hdr : {40u, 44u, 56u, 68u, 200u}) {  // 200 > the masking buffer
    Bytes b = random_packet(rng, 5, 1000);
    uint32_t c = icrc_begin(b.data(), hdr);
    c = icrc_update(c, b.data() + hdr, 300);
    c = icrc_update(c, b.data() + hdr + 300, 1000 - hdr - 300);
    EXPECT_EQ(icrc_end(c), icrc_compute(b.data(), 1000)) << hdr;
  }
}

TEST(Icrc, OnlyVariantFieldsAreMasked) {
  std::mt19937 rng(3);
  Bytes b = random_packet(rng, 5, 128);
  const uint32_t base = icrc_compute(b.data(), 128);
  const std::vector<uint32_t> masked = {1, 8, 10, 11, 26, 27, 32};
  for (uint32_t i = 0; i < 128; i++) {
    Bytes c = b;
    c[i] ^= 0x5a;
    if (i == 0) continue;  // the IHL nibble moves the masks
    const bool is_masked = std::find(masked.begin(), masked.end(), i) != masked.end();
    EXPECT_EQ(icrc_compute(c.data(), 128) == base, is_masked) << "byte " << i;
  }
}

// The key check: every real frame's ICRC, stored little-endian on the wire.
TEST(Icrc, RealFramesVerifyLittleEndian) {
  auto frames = load_frames();
  ASSERT_EQ(frames.size(), 11u) << frames_path();
  for (size_t i = 0; i < frames.size(); i++) {
    const Bytes& f = frames[i];
    const uint32_t ip_off = f[12] == 0x81 && f[13] == 0 ? 18 : 14;
    const uint8_t* ip = f.data() + ip_off;
    const uint32_t total = load_be16(ip + 2);
    ASSERT_LE(ip_off + total, f.size()) << i;
    const uint32_t crc = icrc_compute(ip, total - kIcrcLen);
    EXPECT_EQ(crc, ref_icrc(ip, total - kIcrcLen)) << i;
    EXPECT_EQ(crc, load_le32(ip + total - kIcrcLen)) << "frame " << i;
    EXPECT_NE(crc, load_be32(ip + total - kIcrcLen)) << "frame " << i;
  }
}

}  // namespace
}  // namespace dverbs::pmd::wire
