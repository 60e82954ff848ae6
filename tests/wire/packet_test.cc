// parse_frame / write_headers / finish_frame: real frames, round trips, malformed input.
#include "pmd/wire/roce.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace dverbs::pmd::wire {
namespace {

using Bytes = std::vector<uint8_t>;

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

ParseError parse(const Bytes& f, Packet* p = nullptr, bool icrc = true) {
  Packet tmp;
  return parse_frame(f.data(), uint32_t(f.size()), p ? p : &tmp, icrc);
}

uint32_t ip_off(const Bytes& f) { return f[12] == 0x81 && f[13] == 0x00 ? 18 : 14; }

// Recomputes the IPv4 header checksum and the ICRC after a test edited the frame.
void refinish(Bytes& f) {
  uint8_t* ip = f.data() + ip_off(f);
  const uint32_t ihl = (ip[0] & 0xf) * 4;
  store_be16(ip + 10, 0);
  store_be16(ip + 10, ipv4_checksum(ip, ihl));
  const uint32_t end = ip_off(f) + load_be16(ip + 2);
  if (end <= f.size() && end >= ip_off(f) + ihl + 8 + 12 + 4)
    store_le32(f.data() + end - 4, icrc_compute(ip, end - ip_off(f) - 4));
}

void fix_ip_csum(Bytes& f) {
  uint8_t* ip = f.data() + ip_off(f);
  store_be16(ip + 10, 0);
  store_be16(ip + 10, ipv4_checksum(ip, (ip[0] & 0xf) * 4));
}

struct Built {
  Bytes frame;
  FrameAddr addr;
  BthFields bth;
  uint64_t va, a, b;
  uint32_t rkey, qkey, sqpn, msn, imm_be;
  uint8_t syndrome;
  Bytes payload;
};

Built build(std::mt19937& rng, uint8_t opcode, uint32_t payload_len) {
  Built r{};
  const uint32_t fl = opcode_info(opcode).flags;
  if (!(fl & opf::kPayload)) payload_len = 0;
  if (opcode == op::kCnp) payload_len = kCnpPayloadLen;
  r.addr = {{0x02, 0, 0, 0, 0, 1}, {0x02, 0, 0, 0, 0, 2}, 0x0a000001, 0x0a000002,
            uint16_t(0xc000 | (rng() & 0x3fff)), uint8_t(rng()), uint8_t(1 + rng() % 255)};
  r.bth = {opcode, bool(rng() & 1), bool(rng() & 1), pad_for(payload_len),
           uint16_t(rng()), uint32_t(rng() & kQpnMask), uint32_t(rng() & kPsnMask)};
  r.va = (uint64_t(rng()) << 32) | rng();
  r.a = (uint64_t(rng()) << 32) | rng();
  r.b = (uint64_t(rng()) << 32) | rng();
  r.rkey = rng();
  r.qkey = rng();
  r.sqpn = rng() & kQpnMask;
  r.msn = rng() & 0xffffff;
  r.imm_be = rng();
  r.syndrome = uint8_t(rng() & 0x7f);
  r.payload.resize(payload_len);
  for (auto& x : r.payload) x = uint8_t(rng());

  const uint32_t len = headers_len(opcode) + payload_len + r.bth.pad + kIcrcLen;
  r.frame.assign(len, 0xee);
  uint8_t* ext = write_headers(r.frame.data(), r.addr, r.bth, payload_len);
  EXPECT_EQ(ext, r.frame.data() + headers_len(opcode) - opcode_info(opcode).ext_len);
  if (fl & opf::kDeth) write_deth(ext + ext_offset(fl, opf::kDeth), r.qkey, r.sqpn);
  if (fl & opf::kFeth)
    write_feth(ext + ext_offset(fl, opf::kFeth), uint8_t(r.a & 0xf), uint8_t(r.a >> 4 & 3));
  if (fl & opf::kReth) write_reth(ext + ext_offset(fl, opf::kReth), r.va, r.rkey, r.qkey);
  if (fl & opf::kAtomicEth)
    write_atomic_eth(ext + ext_offset(fl, opf::kAtomicEth), r.va, r.rkey, r.a, r.b);
  if (fl & opf::kAeth) write_aeth(ext + ext_offset(fl, opf::kAeth), r.syndrome, r.msn);
  if (fl & opf::kAtomicAckEth) write_atomic_ack_eth(ext + ext_offset(fl, opf::kAtomicAckEth), r.a);
  if (fl & opf::kImm) write_immdt(ext + ext_offset(fl, opf::kImm), r.imm_be);
  if (fl & opf::kIeth) write_ieth(ext + ext_offset(fl, opf::kIeth), r.rkey);
  uint8_t* pl = ext + opcode_info(opcode).ext_len;
  if (payload_len) std::memcpy(pl, r.payload.data(), payload_len);
  std::memset(pl + payload_len, 0, r.bth.pad);
  EXPECT_EQ(finish_frame(r.frame.data(), len), len);
  return r;
}

std::vector<uint8_t> valid_opcodes() {
  std::vector<uint8_t> v;
  for (unsigned c = 0; c < 256; c++)
    if (opcode_info(uint8_t(c)).flags & opf::kValid) v.push_back(uint8_t(c));
  return v;
}

// ---- real frames ----

struct Expect {
  uint8_t opcode;
  uint32_t qpn, psn;
  uint16_t vlan;
  uint32_t payload_len;
};
const Expect kReal[] = {
    {0x81, 0x118, 0, 0, 16},  // CNP, ConnectX-4 Lx (BECN set)
    {0x64, 1, 0x1cc, 1, 256},  // UD CM MAD, ConnectX, VLAN 1
    {0x64, 1, 0x1cd, 1, 256},
    {0x04, 0xdeaded, 0xfedfed, 1, 192},  // RC SEND_ONLY
    {0x11, 0xdeaded, 0xcf7bf7, 1, 0},  // RC ACK
    {0x11, 0xdeaded, 0xcf7bf9, 1, 0},
    {0x64, 1, 0x12, 0, 256},  // UD CM MAD, rxe
    {0x64, 1, 0x13, 0, 256},
    {0x04, 0xdeaded, 0xfedfed, 0, 192},  // RC SEND_ONLY, rxe
    {0x64, 1, 0x14, 0, 256},
    {0x0c, 0x11, 0x54cb63, 0, 0},  // RC RDMA READ request, rxe
};

TEST(RealFrames, ParseAndIcrc) {
  auto frames = load_frames();
  ASSERT_EQ(frames.size(), std::size(kReal)) << frames_path();
  for (size_t i = 0; i < frames.size(); i++) {
    SCOPED_TRACE("frame " + std::to_string(i));
    Packet p;
    ASSERT_EQ(parse(frames[i], &p), ParseError::ok) << parse_error_str(parse(frames[i]));
    EXPECT_EQ(p.opcode, kReal[i].opcode);
    EXPECT_EQ(p.dest_qp, kReal[i].qpn);
    EXPECT_EQ(p.psn, kReal[i].psn);
    EXPECT_EQ(p.vlan_tci, kReal[i].vlan);
    EXPECT_EQ(p.payload_len, kReal[i].payload_len);
    const uint8_t* end = p.payload + p.payload_len + p.bth->pad_count();
    EXPECT_EQ(p.icrc, icrc_compute(p.ip, uint32_t(end - p.ip)));
    EXPECT_EQ(end + kIcrcLen, p.ip + load_be16(p.ip + 2));
    if (p.opcode == 0x64) {
      ASSERT_NE(p.deth, nullptr);
      EXPECT_EQ(p.deth->q_key(), 0x80010000u);  // the well-known GSI Q_Key
      EXPECT_EQ(p.payload[0], 0x01);            // MAD base version
    }
    if (p.opcode == op::kReadRequest) {
      ASSERT_NE(p.reth, nullptr);
      EXPECT_EQ(p.reth->length(), 0x10000u);
    }
    if (p.opcode == op::kAck) {
      ASSERT_NE(p.aeth, nullptr);
      EXPECT_EQ(aeth_type(p.aeth->syndrome), AethType::ack);
    }
    if (p.opcode == op::kCnp) {
      EXPECT_TRUE(p.bth->becn());
    }
  }
}

TEST(RealFrames, TruncatedAtEveryLength) {
  for (const Bytes& f : load_frames())
    for (uint32_t n = 0; n < f.size(); n++) {
      Packet p;
      ASSERT_EQ(parse_frame(f.data(), n, &p, true), ParseError::truncated) << n;
    }
}

// ---- round trips ----

TEST(RoundTrip, EveryValidOpcode) {
  std::mt19937 rng(2024);
  for (uint8_t opcode : valid_opcodes()) {
    for (int rep = 0; rep < 24; rep++) {
      const uint32_t want_len = rep == 0 ? 0 : rep == 1 ? 4096 : rng() % 4097;
      Built b = build(rng, opcode, want_len);
      SCOPED_TRACE(std::string(opcode_info(opcode).name) + " len " + std::to_string(want_len));
      Packet p;
      ASSERT_EQ(parse(b.frame, &p), ParseError::ok) << parse_error_str(parse(b.frame));
      const uint32_t fl = p.info->flags;
      EXPECT_EQ(p.info, &opcode_info(opcode));
      EXPECT_EQ(0, std::memcmp(p.src_mac, b.addr.src_mac, 6));
      EXPECT_EQ(0, std::memcmp(p.dst_mac, b.addr.dst_mac, 6));
      EXPECT_EQ(p.vlan_tci, 0);
      EXPECT_EQ(p.src_ip, b.addr.src_ip);
      EXPECT_EQ(p.dst_ip, b.addr.dst_ip);
      EXPECT_EQ(p.tos, b.addr.tos);
      EXPECT_EQ(p.ttl, b.addr.ttl);
      EXPECT_EQ(p.udp_sport, b.addr.udp_sport);
      EXPECT_EQ(p.opcode, opcode);
      EXPECT_EQ(p.dest_qp, b.bth.dest_qp);
      EXPECT_EQ(p.psn, b.bth.psn);
      EXPECT_EQ(p.bth->se(), b.bth.se);
      EXPECT_EQ(p.bth->ack_request(), b.bth.ack_req);
      EXPECT_EQ(p.bth->pkey_value(), b.bth.pkey);
      EXPECT_EQ(p.bth->pad_count(), b.bth.pad);
      EXPECT_EQ(p.bth->tver(), 0);
      EXPECT_FALSE(p.bth->mig_req());
      EXPECT_FALSE(p.bth->fecn() || p.bth->becn());
      EXPECT_EQ(p.payload_len, uint32_t(b.payload.size()));
      if (!b.payload.empty()) {
        EXPECT_EQ(0, std::memcmp(p.payload, b.payload.data(), b.payload.size()));
      }
      EXPECT_EQ((p.payload_len + p.bth->pad_count()) % 4, 0u);
      EXPECT_EQ(p.deth != nullptr, bool(fl & opf::kDeth));
      EXPECT_EQ(p.reth != nullptr, bool(fl & opf::kReth));
      EXPECT_EQ(p.aeth != nullptr, bool(fl & opf::kAeth));
      EXPECT_EQ(p.atomic_eth != nullptr, bool(fl & opf::kAtomicEth));
      EXPECT_EQ(p.atomic_ack != nullptr, bool(fl & opf::kAtomicAckEth));
      if (p.deth) {
        EXPECT_EQ(p.deth->q_key(), b.qkey);
        EXPECT_EQ(p.deth->sqpn(), b.sqpn);
      }
      if (p.reth) {
        EXPECT_EQ(p.reth->vaddr(), b.va);
        EXPECT_EQ(p.reth->r_key(), b.rkey);
        EXPECT_EQ(p.reth->length(), b.qkey);
      }
      if (p.atomic_eth) {
        EXPECT_EQ(p.atomic_eth->vaddr(), b.va);
        EXPECT_EQ(p.atomic_eth->r_key(), b.rkey);
        EXPECT_EQ(p.atomic_eth->swap_add_data(), b.a);
        EXPECT_EQ(p.atomic_eth->compare_data(), b.b);
      }
      if (p.aeth) {
        EXPECT_EQ(p.aeth->syndrome, b.syndrome);
        EXPECT_EQ(p.aeth->msn_value(), b.msn);
      }
      if (p.atomic_ack) {
        EXPECT_EQ(p.atomic_ack->orig_value(), b.a);
      }
      EXPECT_EQ(p.feth != nullptr, bool(fl & opf::kFeth));
      if (p.feth) {
        EXPECT_EQ(p.feth->placement_type(), b.a & 0xf);
        EXPECT_EQ(p.feth->selectivity_level(), b.a >> 4 & 3);
        EXPECT_EQ(p.feth->value() >> 6, 0u);  // reserved bits stay zero
      }
      if (fl & opf::kImm) {
        EXPECT_EQ(p.imm_data, b.imm_be);
      }
      if (fl & opf::kIeth) {
        EXPECT_EQ(p.ieth_rkey, b.rkey);
      }
      EXPECT_EQ(p.icrc, load_le32(b.frame.data() + b.frame.size() - 4));
      EXPECT_EQ(ipv4_checksum(p.ip, 20), 0);
      EXPECT_EQ(load_be16(p.ip + 6), 0x4000);  // DF
    }
  }
}

TEST(RoundTrip, VlanTaggedAndEthernetPadded) {
  std::mt19937 rng(5);
  Built b = build(rng, op::kSendOnly, 0);  // 58 bytes: below the Ethernet minimum
  Bytes f = b.frame;
  f.insert(f.begin() + 12, {0x81, 0x00, 0x20, 0x07});
  f.resize(64, 0);  // MAC padding after the IP datagram
  Packet p;
  ASSERT_EQ(parse(f, &p), ParseError::ok);
  EXPECT_EQ(p.vlan_tci, 0x2007);
  EXPECT_EQ(p.payload_len, 0u);
  EXPECT_EQ(p.frame_len, 64u);
}

TEST(RoundTrip, IpOptionsAreHonoured) {
  std::mt19937 rng(6);
  Built b = build(rng, op::kWriteOnly, 100);
  Bytes f = b.frame;
  f.insert(f.begin() + 34, {0x01, 0x01, 0x01, 0x00});  // NOP NOP NOP EOL
  f[14] = 0x46;
  store_be16(f.data() + 16, uint16_t(load_be16(f.data() + 16) + 4));
  refinish(f);
  Packet p;
  ASSERT_EQ(parse(f, &p), ParseError::ok) << parse_error_str(parse(f));
  EXPECT_EQ(p.payload_len, 100u);
  EXPECT_EQ(p.reth->vaddr(), b.va);
  EXPECT_EQ(0, std::memcmp(p.payload, b.payload.data(), 100));
}

TEST(RoundTrip, BuilderMatchesRealFrameBytes) {
  // Rebuild the rxe READ request from its fields: the bytes (and so the ICRC) must agree.
  const Bytes real = load_frames().at(10);
  Packet p;
  ASSERT_EQ(parse(real, &p), ParseError::ok);
  FrameAddr a{};
  std::memcpy(a.src_mac, p.src_mac, 6);
  std::memcpy(a.dst_mac, p.dst_mac, 6);
  a.src_ip = p.src_ip;
  a.dst_ip = p.dst_ip;
  a.udp_sport = p.udp_sport;
  a.tos = p.tos;
  a.ttl = p.ttl;
  BthFields t{p.opcode, p.bth->se(), p.bth->ack_request(), 0, p.bth->pkey_value(), p.dest_qp,
              p.psn};
  Bytes f(real.size());
  uint8_t* ext = write_headers(f.data(), a, t, 0);
  write_reth(ext, p.reth->vaddr(), p.reth->r_key(), p.reth->length());
  store_be16(f.data() + 18, load_be16(real.data() + 18));  // rxe sets an IP id; we send 0
  finish_frame(f.data(), uint32_t(f.size()));
  EXPECT_EQ(f, real);
}

// ---- malformed ----

class Malformed : public ::testing::Test {
 protected:
  std::mt19937 rng{99};
  Built b = build(rng, op::kWriteOnlyImm, 37);
  Bytes f = b.frame;
  uint8_t* ip() { return f.data() + 14; }
  uint8_t* udp() { return ip() + 20; }
  uint8_t* bth() { return udp() + 8; }
};

TEST_F(Malformed, BaselineIsValid) { EXPECT_EQ(parse(f), ParseError::ok); }

TEST_F(Malformed, TruncatedAtEveryLength) {
  for (uint32_t n = 0; n < f.size(); n++) {
    Packet p;
    ASSERT_EQ(parse_frame(f.data(), n, &p, true), ParseError::truncated) << n;
  }
}

TEST_F(Malformed, NotIpv4) {
  store_be16(f.data() + 12, 0x0806);
  EXPECT_EQ(parse(f), ParseError::not_ipv4);
  store_be16(f.data() + 12, 0x86dd);
  EXPECT_EQ(parse(f), ParseError::not_ipv4);
  Bytes q = b.frame;
  q.insert(q.begin() + 12, {0x88, 0xa8, 0x00, 0x05});  // QinQ outer tag is not supported
  EXPECT_EQ(parse(q), ParseError::not_ipv4);
}

TEST_F(Malformed, BadIpChecksum) {
  ip()[10] ^= 1;
  EXPECT_EQ(parse(f), ParseError::bad_ip_checksum);
  f = b.frame;
  ip()[12] ^= 0x80;  // source address without fixing the checksum
  EXPECT_EQ(parse(f), ParseError::bad_ip_checksum);
}

TEST_F(Malformed, BadIpHeader) {
  ip()[0] = 0x65;  // version 6
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::bad_ip_header);
  f = b.frame;
  ip()[0] = 0x44;  // IHL < 5
  EXPECT_EQ(parse(f), ParseError::bad_ip_header);
  f = b.frame;
  store_be16(ip() + 6, 0x2000);  // MF: first fragment
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::bad_ip_header);
  f = b.frame;
  store_be16(ip() + 6, 0x4001);  // non-zero fragment offset
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::bad_ip_header);
  f = b.frame;
  store_be16(ip() + 2, 19);  // total length shorter than the header
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::bad_ip_header);
}

TEST_F(Malformed, IpTotalLengthBeyondFrame) {
  store_be16(ip() + 2, uint16_t(load_be16(ip() + 2) + 1));
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::truncated);
}

TEST_F(Malformed, NotUdp) {
  ip()[9] = 6;
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::not_udp);
}

TEST_F(Malformed, WrongUdpPort) {
  store_be16(udp() + 2, 4790);
  EXPECT_EQ(parse(f), ParseError::not_roce);
  store_be16(udp() + 2, 0xb712);  // byte-swapped 4791
  EXPECT_EQ(parse(f), ParseError::not_roce);
}

TEST_F(Malformed, BadUdpLength) {
  store_be16(udp() + 4, uint16_t(load_be16(udp() + 4) - 4));
  EXPECT_EQ(parse(f), ParseError::bad_udp_length);
  store_be16(udp() + 4, uint16_t(load_be16(udp() + 4) + 8));
  EXPECT_EQ(parse(f), ParseError::bad_udp_length);
  f = b.frame;
  store_be16(ip() + 2, 20 + 4);  // IP datagram too short for a UDP header
  fix_ip_csum(f);
  EXPECT_EQ(parse(f), ParseError::bad_udp_length);
}

TEST_F(Malformed, UnknownOpcode) {
  for (uint8_t c : {0x15, 0x18, 0x1f, 0x2c, 0x40, 0x44, 0x5f, 0x60, 0x66, 0x80, 0xff}) {
    bth()[0] = c;
    EXPECT_EQ(parse(f), ParseError::bad_opcode) << int(c);
  }
}

TEST_F(Malformed, TverNotZero) {
  for (uint8_t v = 1; v < 16; v++) {
    bth()[1] = uint8_t((bth()[1] & 0xf0) | v);
    EXPECT_EQ(parse(f), ParseError::bad_tver) << int(v);
  }
}

// Shrinks the datagram to `udp_payload` bytes (BTH..ICRC) keeping IP and UDP consistent.
void shrink(Bytes& f, uint32_t udp_payload) {
  store_be16(f.data() + 16, uint16_t(20 + 8 + udp_payload));
  store_be16(f.data() + 38, uint16_t(8 + udp_payload));
  f.resize(14 + 20 + 8 + udp_payload);
  refinish(f);
}

TEST_F(Malformed, LengthUnderflow) {
  // No room for BTH + ICRC.
  for (uint32_t n : {0u, 4u, 12u, 15u}) {
    Bytes g = b.frame;
    shrink(g, n);
    EXPECT_EQ(parse(g), ParseError::bad_length) << n;
  }
  // RETH + ImmDt (20 bytes) do not fit: every length from BTH+ICRC up to the headers.
  for (uint32_t n = 16; n < 12 + 20 + 4; n++) {
    Bytes g = b.frame;
    shrink(g, n);
    EXPECT_EQ(parse(g), ParseError::bad_length) << n;
  }
  // Headers fit but the pad count does not: payload + pad + ICRC > what is left.
  Bytes g = b.frame;
  shrink(g, 12 + 20 + 4 + 2);
  g[42 + 1] = uint8_t((g[42 + 1] & 0xcf) | 3 << 4);
  refinish(g);
  EXPECT_EQ(parse(g), ParseError::bad_length);
}

TEST_F(Malformed, ZeroPayloadWithPad) {
  Built s = build(rng, op::kSendOnly, 0);
  s.frame[42 + 1] |= 3 << 4;
  refinish(s.frame);
  EXPECT_EQ(parse(s.frame), ParseError::bad_length);
}

TEST_F(Malformed, PayloadOnNonPayloadOpcode) {
  for (uint8_t c : {op::kAck, op::kReadRequest, op::kCmpSwap, op::kAtomicAck}) {
    Built s = build(rng, c, 0);
    ASSERT_EQ(parse(s.frame), ParseError::ok);
    Bytes g = s.frame;
    g.insert(g.end() - 4, {1, 2, 3, 4});
    store_be16(g.data() + 16, uint16_t(load_be16(g.data() + 16) + 4));
    store_be16(g.data() + 38, uint16_t(load_be16(g.data() + 38) + 4));
    refinish(g);
    EXPECT_EQ(parse(g), ParseError::bad_length) << int(c);
    g = s.frame;
    g[43] |= 1 << 4;  // pad without payload
    refinish(g);
    EXPECT_EQ(parse(g), ParseError::bad_length) << int(c);
  }
}

TEST_F(Malformed, CnpMustCarry16Bytes) {
  Built s = build(rng, op::kCnp, 0);
  ASSERT_EQ(parse(s.frame), ParseError::ok);
  Bytes g = s.frame;
  g.erase(g.end() - 8, g.end() - 4);
  store_be16(g.data() + 16, uint16_t(load_be16(g.data() + 16) - 4));
  store_be16(g.data() + 38, uint16_t(load_be16(g.data() + 38) - 4));
  refinish(g);
  EXPECT_EQ(parse(g), ParseError::bad_length);
}

TEST_F(Malformed, CorruptedByteIsBadIcrc) {
  // Every byte the ICRC protects and that leaves the headers well-formed: pkey, dqpn,
  // AckReq, PSN, extension headers, payload, pad and the ICRC itself.
  const uint32_t bth_off = 42;
  for (uint32_t i = bth_off + 2; i < f.size(); i++) {
    if (i == bth_off + 4) continue;  // FECN/BECN: masked, see below
    Bytes g = f;
    g[i] ^= uint8_t(1 << (i % 8));
    ASSERT_EQ(parse(g), ParseError::bad_icrc) << "byte " << i;
    Packet p;
    EXPECT_EQ(parse(g, &p, false), ParseError::ok) << "byte " << i;
  }
  // Fields routers may rewrite are masked: FECN/BECN, TOS (ECN), TTL, UDP checksum.
  Bytes g = f;
  g[bth_off + 4] = 0xc0;
  g[14 + 1] = 0x03;  // ECN CE
  g[14 + 8] = 1;
  store_be16(g.data() + 40, 0x1234);
  fix_ip_csum(g);
  Packet p;
  EXPECT_EQ(parse(g, &p), ParseError::ok);
  EXPECT_TRUE(p.bth->fecn());
  EXPECT_EQ(p.tos, 0x03);
  // The UDP source port is not masked.
  g = f;
  g[34] ^= 1;
  EXPECT_EQ(parse(g), ParseError::bad_icrc);
}

// Random mutations of valid frames: any verdict is fine, reading out of bounds is not
// (run under ASan to make that visible).
TEST(Robustness, MutatedFramesNeverCrash) {
  std::mt19937 rng(77);
  auto ops = valid_opcodes();
  std::vector<Bytes> seeds = load_frames();
  for (uint8_t c : ops) seeds.push_back(build(rng, c, rng() % 300).frame);
  int ok = 0;
  for (int iter = 0; iter < 20000; iter++) {
    const Bytes& s = seeds[rng() % seeds.size()];
    const uint32_t n = rng() % (s.size() + 1);
    std::unique_ptr<uint8_t[]> buf(new uint8_t[n ? n : 1]);  // exact size for ASan
    std::memcpy(buf.get(), s.data(), n);
    for (int k = rng() % 4; k > 0 && n; k--) buf[rng() % n] ^= uint8_t(1 << (rng() % 8));
    Packet p;
    if (parse_frame(buf.get(), n, &p, rng() & 1) == ParseError::ok) {
      ok++;
      ASSERT_LE(p.payload + p.payload_len + p.bth->pad_count() + kIcrcLen, buf.get() + n);
      ASSERT_GE(p.payload, buf.get());
    }
  }
  EXPECT_GT(ok, 0);
}

TEST(ParseErrorStr, AllNamed) {
  for (int e = 0; e <= int(ParseError::bad_icrc); e++)
    EXPECT_STRNE(parse_error_str(ParseError(e)), "unknown") << e;
  EXPECT_STREQ(parse_error_str(ParseError::bad_icrc), "bad_icrc");
}

// ---- PSN arithmetic (IBA 9.7.1) ----

TEST(Psn, WrapAround) {
  EXPECT_EQ(psn_add(0xffffff, 1), 0u);
  EXPECT_EQ(psn_add(0xfffffe, 5), 3u);
  EXPECT_EQ(psn_add(7, 0), 7u);
  EXPECT_EQ(psn_diff(0, 0xffffff), 1);
  EXPECT_EQ(psn_diff(0xffffff, 0), -1);
  EXPECT_EQ(psn_diff(3, 0xfffffe), 5);
  EXPECT_EQ(psn_diff(5, 3), 2);
  EXPECT_EQ(psn_diff(3, 5), -2);
  EXPECT_EQ(psn_diff(0x7fffff, 0), 0x7fffff);
  EXPECT_EQ(psn_diff(0x800000, 0), -0x800000);  // half the space: "behind"
  EXPECT_EQ(psn_diff(psn_add(0xfff000, 0x2000), 0xfff000), 0x2000);
  static_assert(psn_diff(1, 0xffffff) == 2);
}

}  // namespace
}  // namespace dverbs::pmd::wire
