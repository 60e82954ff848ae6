// The input format of rx_fuzz, shared with the corpus generator (gen_corpus.cc).
//
//   input := mode:u8 body
//
// mode bits:
//   0-1  kind: 0 = body is one raw Ethernet frame; 1 = body is raw frames, each prefixed by
//        its length (u16 big-endian); 2, 3 = body is structured records (below), from which
//        the harness builds well-formed frames with a correct ICRC aimed at its live QPs
//   2    raw kinds: fix up the IPv4 header checksum and the ICRC of frames that look like
//        RoCEv2 (IPv4, UDP port 4791, lengths that fit), so random bytes reach the transport
//   3    queue requests on the RC requester A first (WRITE, READ, FETCH_ADD, SEND), sent and
//        unanswered, so that ACKs and responses in the input have something to answer
//   4    loop what the HCA sends back into its receive path (bounded)
//   5    one Engine::receive burst for all frames (else one call per frame)
//   6    hand each frame over as a chain of two mbuf segments cut in its middle
//   7    structured kinds: a record's PSN is absolute instead of relative to the target
//
// A structured record is kRecLen header bytes, then `payload_len` payload bytes (bytes past
// the end of the input read as a pattern). Multi-byte fields are big-endian.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace dverbs::fuzz::rx {

namespace mode {
constexpr uint8_t kRawOne = 0, kRawMulti = 1, kStructured = 2;
constexpr uint8_t kFixup = 1u << 2;
constexpr uint8_t kQueueRequests = 1u << 3;
constexpr uint8_t kLoopBack = 1u << 4;
constexpr uint8_t kOneBurst = 1u << 5;
constexpr uint8_t kChain = 1u << 6;
constexpr uint8_t kAbsolutePsn = 1u << 7;
}  // namespace mode

// Targets (record byte 1, bits 0-2).
enum Target : uint8_t {
  kQpA = 0,       // RC requester (remote read only as a responder)
  kQpB = 1,       // RC responder: every remote access, type 1 and 2 windows bound to it
  kQpC = 2,       // UC requester
  kQpD = 3,       // UC responder (remote write)
  kQpU = 4,       // UD
  kQpS = 5,       // RC with a shared receive queue; XRC opcodes: the XRC_RECV QP, whose
                  // XRCETH names (key mod 3) its domain's SRQ, another domain's, or `raw`
  kNoQp = 6,      // a QPN that does not exist
  kRawQpn = 7,    // the QPN in `raw`
};
namespace tflag {
constexpr uint8_t kForeignIp = 1u << 3;  // source IP is not the connected peer's
constexpr uint8_t kVlan = 1u << 4;       // an 802.1Q tag
constexpr uint8_t kSe = 1u << 5;
constexpr uint8_t kAckReq = 1u << 6;
constexpr uint8_t kJunkFlags = 1u << 7;  // MigReq and a nonzero TVer
}  // namespace tflag

// Length control (record byte 4): bits 0-1 pad count, bit 2 use it (else computed),
// bits 3-5 one mutation with amount k (byte 5).
enum Mutation : uint8_t {
  kNone = 0,
  kIpLenPlus = 1,    // IPv4 total length += k
  kIpLenMinus = 2,   // IPv4 total length -= k
  kUdpLenXor = 3,    // UDP length ^= k
  kTruncate = 4,     // frame cut short by k bytes (ICRC recomputed over what is left)
  kBadIcrc = 5,      // ICRC ^= k | 1
  kBadIpCsum = 6,    // IPv4 header checksum ^= k | 1
  kEthPad = 7,       // k bytes of Ethernet padding after the datagram
};

// Key selectors (byte 6) and address bases (byte 7).
enum KeySel : uint8_t {
  kKeyB = 0, kKeyR = 1, kKeyL = 2, kKeyP2 = 3, kKeyMw2 = 4, kKeyMw1 = 5, kKeyRaw = 6, kKeyBPlus1 = 7,
};
enum VaBase : uint8_t { kVaB = 0, kVaR = 1, kVaL = 2, kVaP2 = 3, kVaMw2 = 4, kVaZero = 5 };

constexpr size_t kRecLen = 42;

struct Rec {
  uint8_t opcode = 0;
  uint8_t target = 0;       // Target | tflag::*
  int16_t psn = 0;          // delta (or absolute with mode::kAbsolutePsn)
  uint8_t length = 0;       // pad control | Mutation << 3
  uint8_t k = 0;
  uint8_t key = 0;          // KeySel (mod 8)
  uint8_t va_base = 0;      // VaBase (mod 6)
  int32_t va_off = 0;
  uint32_t dma_len = 0;
  uint8_t syndrome = 0;
  uint32_t msn = 0;         // 24 bits
  uint64_t swap_add = 0;
  uint64_t compare = 0;     // compare (AtomicETH) or original value (AtomicAckETH)
  uint32_t raw = 0;         // Q_Key / ImmDt / IETH rkey / raw key / raw QPN
  uint16_t payload_len = 0;
};

inline void put16(std::vector<uint8_t>& v, uint16_t x) {
  v.push_back(uint8_t(x >> 8));
  v.push_back(uint8_t(x));
}
inline void put32(std::vector<uint8_t>& v, uint32_t x) {
  put16(v, uint16_t(x >> 16));
  put16(v, uint16_t(x));
}
inline void put64(std::vector<uint8_t>& v, uint64_t x) {
  put32(v, uint32_t(x >> 32));
  put32(v, uint32_t(x));
}

// Appends one record and its payload to `out`.
inline void encode(std::vector<uint8_t>& out, const Rec& r, const std::vector<uint8_t>& payload) {
  out.push_back(r.opcode);
  out.push_back(r.target);
  put16(out, uint16_t(r.psn));
  out.push_back(r.length);
  out.push_back(r.k);
  out.push_back(r.key);
  out.push_back(r.va_base);
  put32(out, uint32_t(r.va_off));
  put32(out, r.dma_len);
  out.push_back(r.syndrome);
  out.push_back(uint8_t(r.msn >> 16));
  put16(out, uint16_t(r.msn));
  put64(out, r.swap_add);
  put64(out, r.compare);
  put32(out, r.raw);
  put16(out, uint16_t(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
}

// Reads one record header from [p, end) (missing bytes read as zero). Returns the bytes used.
inline size_t decode(const uint8_t* p, const uint8_t* end, Rec* r) {
  uint8_t b[kRecLen] = {};
  const size_t n = size_t(end - p) < kRecLen ? size_t(end - p) : kRecLen;
  std::memcpy(b, p, n);
  auto g16 = [&](size_t o) { return uint16_t(b[o] << 8 | b[o + 1]); };
  auto g32 = [&](size_t o) { return uint32_t(g16(o)) << 16 | g16(o + 2); };
  auto g64 = [&](size_t o) { return uint64_t(g32(o)) << 32 | g32(o + 4); };
  r->opcode = b[0];
  r->target = b[1];
  r->psn = int16_t(g16(2));
  r->length = b[4];
  r->k = b[5];
  r->key = b[6];
  r->va_base = b[7];
  r->va_off = int32_t(g32(8));
  r->dma_len = g32(12);
  r->syndrome = b[16];
  r->msn = uint32_t(b[17]) << 16 | g16(18);
  r->swap_add = g64(20);
  r->compare = g64(28);
  r->raw = g32(36);
  r->payload_len = g16(40);
  return n;
}

}  // namespace dverbs::fuzz::rx
