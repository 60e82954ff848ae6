// A minimal pcapng reader and an independent RoCEv2 frame checker for tests: the capture
// written by DVERBS_PCAP is read back without DPDK, and every RoCE frame's IPv4 header
// checksum and ICRC are recomputed from their definitions (IBA Annex A17.3.3, a table CRC-32
// — not the library's ISA-L path), so the tests judge the wire independently of lib/pmd/wire.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

namespace dverbs::testing {

enum class Dir : uint8_t { unknown = 0, in = 1, out = 2 };

// One captured packet: its bytes, direction and timestamp (ns since the Unix epoch, from
// the EPB timestamp and its interface's if_tsresol).
struct Packet {
  const uint8_t* data;
  uint32_t len;
  Dir dir;
  uint64_t ts_ns;
};

// Calls fn(packet) for every Enhanced Packet Block of a little-endian pcapng file. Returns
// false and sets *err when the file is missing or malformed.
inline bool for_each_pcapng_packet(const std::string& path,
                                   const std::function<void(const Packet&)>& fn,
                                   std::string* err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *err = "cannot open " + path;
    return false;
  }
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto u32 = [&](size_t o) {
    uint32_t v;
    std::memcpy(&v, b.data() + o, 4);
    return v;
  };
  auto u16 = [&](size_t o) {
    uint16_t v;
    std::memcpy(&v, b.data() + o, 2);
    return v;
  };
  // Calls opt(code, offset, length) for each option in [o, end).
  auto options = [&](size_t o, size_t end, const std::function<void(uint16_t, size_t, uint16_t)>& opt) {
    while (o + 4 <= end) {
      const uint16_t code = u16(o), olen = u16(o + 2);
      if (code == 0 || o + 4 + olen > end) break;
      opt(code, o + 4, olen);
      o += 4 + ((size_t(olen) + 3) & ~size_t(3));
    }
  };
  std::vector<uint8_t> tsresol;  // per interface of the current section
  size_t off = 0;
  bool shb = false;
  while (off + 12 <= b.size()) {
    const uint32_t type = u32(off), len = u32(off + 4);
    if (len < 12 || len % 4 || off + len > b.size() || u32(off + len - 4) != len) {
      *err = "malformed block at offset " + std::to_string(off);
      return false;
    }
    if (type == 0x0a0d0d0a) {  // Section Header Block
      if (u32(off + 8) != 0x1a2b3c4d) {
        *err = "not a little-endian pcapng section";
        return false;
      }
      shb = true;
      tsresol.clear();
    } else if (type == 1) {  // Interface Description Block
      uint8_t res = 6;       // default: microseconds
      if (len >= 20)
        options(off + 16, off + len - 4, [&](uint16_t code, size_t o, uint16_t olen) {
          if (code == 9 && olen == 1) res = b[o];
        });
      tsresol.push_back(res);
    } else if (type == 6) {  // Enhanced Packet Block
      if (!shb || len < 32) {
        *err = "packet block outside a section";
        return false;
      }
      const uint32_t iface = u32(off + 8), cap = u32(off + 20);
      const size_t data = off + 28, padded = (size_t(cap) + 3) & ~size_t(3);
      if (data + padded + 4 > off + len || iface >= tsresol.size()) {
        *err = "packet block too short or of an unknown interface";
        return false;
      }
      Dir dir = Dir::unknown;
      options(data + padded, off + len - 4, [&](uint16_t code, size_t o, uint16_t olen) {
        if (code == 2 && olen == 4) dir = Dir(u32(o) & 3);  // epb_flags: direction
      });
      const uint64_t ts = uint64_t(u32(off + 12)) << 32 | u32(off + 16);
      const uint8_t r = tsresol[iface];
      long double secs = (r & 0x80) ? (long double)ts / (long double)(1ull << (r & 0x7f))
                                    : (long double)ts / powl(10.0L, r);
      fn(Packet{b.data() + data, cap, dir, uint64_t(secs * 1e9L)});
    }
    off += len;
  }
  if (off != b.size()) {
    *err = "trailing bytes after the last block";
    return false;
  }
  return true;
}

// Calls fn(frame, length, direction) for every packet of a pcapng file.
inline bool for_each_pcapng_frame(const std::string& path,
                                  const std::function<void(const uint8_t*, uint32_t, Dir)>& fn,
                                  std::string* err) {
  return for_each_pcapng_packet(path, [&](const Packet& p) { fn(p.data, p.len, p.dir); }, err);
}

// CRC-32 (reflected 0xedb88320, init ~0, final ~), table driven.
inline uint32_t crc32_ref(const uint8_t* p, size_t n, uint32_t crc = 0) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

// What an independent look at one Ethernet frame finds.
struct RoceFrame {
  bool ipv4 = false;        // Ethernet type IPv4 and a sane IPv4 header
  bool ip_csum_ok = false;  // IPv4 header checksum
  bool roce = false;        // UDP to port 4791 with room for BTH and ICRC
  bool icrc_ok = false;     // the ICRC recomputed from its definition matches
  uint8_t opcode = 0;
  uint32_t dest_qp = 0, psn = 0;
};

inline RoceFrame check_roce_frame(const uint8_t* f, uint32_t len) {
  RoceFrame r;
  if (len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00) return r;
  const uint8_t* ip = f + 14;
  const uint32_t ihl = (ip[0] & 0xfu) * 4;
  const uint32_t total = uint32_t(ip[2]) << 8 | ip[3];
  if (ip[0] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > len) return r;
  r.ipv4 = true;
  uint32_t sum = 0;
  for (uint32_t i = 0; i < ihl; i += 2) sum += uint32_t(ip[i]) << 8 | ip[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  r.ip_csum_ok = sum == 0xffff;
  if (ip[9] != 17 || total < ihl + 8 + 12 + 4) return r;
  const uint8_t* udp = ip + ihl;
  if ((uint32_t(udp[2]) << 8 | udp[3]) != 4791) return r;
  r.roce = true;
  const uint8_t* bth = udp + 8;
  r.opcode = bth[0];
  r.dest_qp = uint32_t(bth[5]) << 16 | uint32_t(bth[6]) << 8 | bth[7];
  r.psn = uint32_t(bth[9]) << 16 | uint32_t(bth[10]) << 8 | bth[11];
  // ICRC: 8 bytes of ones, then IPv4..end of payload with the variant fields masked.
  const uint32_t covered = total - 4;
  std::vector<uint8_t> m(8 + covered, 0xff);
  std::memcpy(m.data() + 8, ip, covered);
  uint8_t* q = m.data() + 8;
  q[1] = q[8] = q[10] = q[11] = 0xff;  // TOS, TTL, header checksum
  q[ihl + 6] = q[ihl + 7] = 0xff;      // UDP checksum
  q[ihl + 8 + 4] = 0xff;               // BTH FECN/BECN/resv6
  uint32_t want = crc32_ref(m.data(), m.size());
  uint32_t got;
  std::memcpy(&got, ip + covered, 4);  // little-endian on the wire, as rxe and NICs send it
  r.icrc_ok = got == want;
  return r;
}

// FNV-1a over a frame, optionally with the ICRC-masked bytes that no other check covers
// (UDP checksum, BTH byte 4) zeroed, to match a corrupted frame with its original.
inline uint64_t frame_hash(const uint8_t* f, uint32_t len, bool mask_invariant = false) {
  uint32_t skip[3] = {~0u, ~0u, ~0u};
  if (mask_invariant && len >= 14 + 20) {
    const uint32_t ihl = (f[14] & 0xfu) * 4;
    skip[0] = 14 + ihl + 6;
    skip[1] = 14 + ihl + 7;
    skip[2] = 14 + ihl + 8 + 4;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint32_t i = 0; i < len; i++) {
    uint8_t c = (i == skip[0] || i == skip[1] || i == skip[2]) ? 0 : f[i];
    h = (h ^ c) * 0x100000001b3ull;
  }
  return h;
}

}  // namespace dverbs::testing
