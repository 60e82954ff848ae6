// The CM MAD codec (lib/cm/mad.cc): byte positions against IBA Tables 106..120 (as Linux's
// include/rdma/ibta_vol1_c12.h gives them), round trips, every ParseError, truncation, the
// Annex A11 IP header, and real REQ/RTU/DREQ MADs sent by a ConnectX NIC and by rxe.
#include "cm/mad.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace dverbs::cm {
namespace {

using Bytes = std::vector<uint8_t>;

// MAD byte of CM data offset `off` (the IBA tables count from the end of the MAD header).
constexpr size_t at(size_t off) {
  return kMadHdrSize + off;
}

void fill(uint8_t* p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = uint8_t(seed + 7 * i);
}

Path sample_path(uint8_t k) {
  Path p{};
  p.local_lid = uint16_t(0x1234 + k);
  p.remote_lid = uint16_t(0x5678 + k);
  fill(p.local_gid, 16, uint8_t(0x10 + k));
  fill(p.remote_gid, 16, uint8_t(0x20 + k));
  p.flow_label = 0xabcde - k;
  p.packet_rate = uint8_t(0x2a + k);
  p.traffic_class = uint8_t(0x60 + k);
  p.hop_limit = uint8_t(0x40 + k);
  p.sl = uint8_t(0xb - k);
  p.subnet_local = true;
  p.local_ack_timeout = uint8_t(0x13 + k);
  return p;
}

Req sample_req() {
  Req m{};
  m.local_comm_id = 0x11223344;
  m.service_id = ip_service_id(0x0106, 5000);
  m.local_ca_guid = 0x0102030405060708;
  m.local_qkey = 0x0a0b0c0d;
  m.local_qpn = 0x123456;
  m.responder_resources = 0x9a;
  m.local_eecn = 0x654321;
  m.initiator_depth = 0x7b;
  m.remote_eecn = 0xabcdef;
  m.remote_cm_response_timeout = 0x15;
  m.transport_service_type = 1;
  m.flow_control = true;
  m.starting_psn = 0xfedcba;
  m.local_cm_response_timeout = 0x0e;
  m.retry_count = 5;
  m.pkey = 0x8001;
  m.path_mtu = 3;
  m.rdc_exists = true;
  m.rnr_retry_count = 6;
  m.max_cm_retries = 0xc;
  m.srq = true;
  m.ext_transport_type = 0;
  m.primary = sample_path(0);
  m.has_alternate = true;
  m.alternate = sample_path(3);
  fill(m.private_data, sizeof m.private_data, 0x31);
  m.vendor_id = 0x0015b3;
  m.sap_supported = true;
  return m;
}

Mra sample_mra() {
  Mra m{};
  m.local_comm_id = 0xa1a2a3a4;
  m.remote_comm_id = 0xb1b2b3b4;
  m.msg_mraed = uint8_t(MsgResponse::rep);
  m.service_timeout = 0x1d;
  fill(m.private_data, sizeof m.private_data, 0x41);
  return m;
}

Rej sample_rej() {
  Rej m{};
  m.local_comm_id = 0xc1c2c3c4;
  m.remote_comm_id = 0xd1d2d3d4;
  m.msg_rejected = uint8_t(MsgResponse::other);
  m.reject_info_length = 0x45;
  m.reason = uint16_t(RejReason::consumer_defined);
  fill(m.ari, sizeof m.ari, 0x51);
  fill(m.private_data, sizeof m.private_data, 0x61);
  return m;
}

Rep sample_rep() {
  Rep m{};
  m.local_comm_id = 0xe1e2e3e4;
  m.remote_comm_id = 0xf1f2f3f4;
  m.local_qkey = 0x01234567;
  m.local_qpn = 0x89abcd;
  m.local_eecn = 0x456789;
  m.starting_psn = 0x13579b;
  m.responder_resources = 0x21;
  m.initiator_depth = 0x43;
  m.target_ack_delay = 0x19;
  m.failover_accepted = 2;
  m.flow_control = true;
  m.rnr_retry_count = 5;
  m.srq = true;
  m.local_ca_guid = 0x1122334455667788;
  fill(m.private_data, sizeof m.private_data, 0x71);
  m.vendor_id = 0xa5b6c7;
  return m;
}

Rtu sample_rtu() {
  Rtu m{};
  m.local_comm_id = 0x0badcafe;
  m.remote_comm_id = 0xdeadbeef;
  fill(m.private_data, sizeof m.private_data, 0x81);
  return m;
}

Dreq sample_dreq() {
  Dreq m{};
  m.local_comm_id = 0x12345678;
  m.remote_comm_id = 0x9abcdef0;
  m.remote_qpn = 0xdeaded;
  fill(m.private_data, sizeof m.private_data, 0x91);
  return m;
}

Drep sample_drep() {
  Drep m{};
  m.local_comm_id = 0x0f1e2d3c;
  m.remote_comm_id = 0x4b5a6978;
  fill(m.private_data, sizeof m.private_data, 0xa1);
  return m;
}

SidrReq sample_sidr_req() {
  SidrReq m{};
  m.request_id = 0x76543210;
  m.pkey = 0x7fff;
  m.service_id = ip_service_id(0x0111, 4791);
  fill(m.private_data, sizeof m.private_data, 0xb1);
  return m;
}

SidrRep sample_sidr_rep() {
  SidrRep m{};
  m.request_id = 0x76543210;
  m.status = uint8_t(SidrStatus::redirect);
  m.additional_info_length = 72;
  m.qpn = 0x00cafe;
  m.service_id = ip_service_id(0x0111, 4791);
  m.qkey = 0x01234567;
  fill(m.class_port_info, sizeof m.class_port_info, 0xc1);
  fill(m.private_data, sizeof m.private_data, 0xd1);
  m.vendor_id = 0x123456;
  return m;
}

template <class M>
Bytes built(const M& m, uint64_t tid = 0x0102030405060708) {
  Bytes b(kMadSize);
  build(m, tid, b.data());
  return b;
}

ParseError parse_bytes(const Bytes& b, Mad* out) {
  return parse(b.data(), b.size(), out);
}

template <class M>
void expect_round_trip(const M& m, AttrId id) {
  const Bytes b = built(m, 0xfeedfacecafe0001);
  Mad out{};
  ASSERT_EQ(parse_bytes(b, &out), ParseError::ok) << name(id);
  EXPECT_EQ(out.hdr.base_version, kBaseVersion);
  EXPECT_EQ(out.hdr.mgmt_class, kMgmtClassCm);
  EXPECT_EQ(out.hdr.class_version, kCmClassVersion);
  EXPECT_EQ(out.hdr.method, kMethodSend);
  EXPECT_EQ(out.hdr.status, 0);
  EXPECT_EQ(out.hdr.tid, 0xfeedfacecafe0001u);
  EXPECT_EQ(out.hdr.attr_id, id);
  EXPECT_EQ(out.hdr.attr_mod, 0u);
  ASSERT_TRUE(std::holds_alternative<M>(out.msg)) << name(id);
  EXPECT_TRUE(std::get<M>(out.msg) == m) << name(id);
  // And back: the same bytes.
  Bytes again(kMadSize);
  ASSERT_TRUE(build(out, again.data()));
  EXPECT_EQ(again, b) << name(id);
}

TEST(CmMadRoundTrip, EveryMessage) {
  expect_round_trip(sample_req(), AttrId::req);
  expect_round_trip(sample_mra(), AttrId::mra);
  expect_round_trip(sample_rej(), AttrId::rej);
  expect_round_trip(sample_rep(), AttrId::rep);
  expect_round_trip(sample_rtu(), AttrId::rtu);
  expect_round_trip(sample_dreq(), AttrId::dreq);
  expect_round_trip(sample_drep(), AttrId::drep);
  expect_round_trip(sample_sidr_req(), AttrId::sidr_req);
  expect_round_trip(sample_sidr_rep(), AttrId::sidr_rep);
}

TEST(CmMadRoundTrip, ReqWithoutAlternateAndXrc) {
  Req m = sample_req();
  m.has_alternate = false;
  m.alternate = Path{};
  m.transport_service_type = 3;  // extended: XRC (Linux cm_req_set_qp_type, XRC_INI)
  m.ext_transport_type = 1;
  expect_round_trip(m, AttrId::req);
}

TEST(CmMadRoundTrip, MadOverloadKeepsAttrMod) {
  Mad m{};
  m.hdr.tid = 42;
  m.hdr.attr_mod = 0x01020304;  // ECE options ride here (Linux ece.attr_mod)
  m.msg = sample_rep();
  uint8_t b[kMadSize];
  ASSERT_TRUE(build(m, b));
  Mad out{};
  ASSERT_EQ(parse(b, sizeof b, &out), ParseError::ok);
  EXPECT_EQ(out.hdr.attr_mod, 0x01020304u);
  EXPECT_EQ(out.hdr.tid, 42u);
  EXPECT_TRUE(out.msg == m.msg);
  Mad none{};
  std::memset(b, 0xee, sizeof b);
  EXPECT_FALSE(build(none, b));
  EXPECT_EQ(b[0], 0xee);
}

// ---- known answers: byte positions ----

TEST(CmMadLayout, Header) {
  const Bytes b = built(sample_rtu(), 0x0102030405060708);
  const Bytes want = {0x01, 0x07, 0x02, 0x03, 0,    0,    0, 0, 1, 2, 3, 4,
                      5,    6,    7,    8,    0x00, 0x14, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(Bytes(b.begin(), b.begin() + 24), want);
}

TEST(CmMadLayout, Req) {
  Req m = sample_req();
  m.has_alternate = false;
  m.alternate = Path{};
  const Bytes b = built(m);
  auto span = [&](size_t off, size_t n) {
    return Bytes(b.begin() + at(off), b.begin() + at(off) + n);
  };
  EXPECT_EQ(span(0, 4), (Bytes{0x11, 0x22, 0x33, 0x44}));              // local comm ID
  EXPECT_EQ(span(4, 4), (Bytes{0x00, 0x00, 0x15, 0xb3}));              // reserved, ECE vendor ID
  EXPECT_EQ(span(8, 8), (Bytes{0, 0, 0, 0, 0x01, 0x06, 0x13, 0x88}));  // service ID, MAD 32
  EXPECT_EQ(b[32], 0);
  EXPECT_EQ(span(16, 8), (Bytes{1, 2, 3, 4, 5, 6, 7, 8}));  // local CA GUID
  EXPECT_EQ(span(24, 4), (Bytes{0, 0, 0, 0}));              // reserved
  EXPECT_EQ(span(28, 4), (Bytes{0x0a, 0x0b, 0x0c, 0x0d}));  // local Q_Key
  EXPECT_EQ(span(32, 4), (Bytes{0x12, 0x34, 0x56, 0x9a}));  // QPN:24 responder res:8
  EXPECT_EQ(at(32), 56u);                                   // CM_REQ_LOCAL_QPN
  EXPECT_EQ(span(36, 4), (Bytes{0x65, 0x43, 0x21, 0x7b}));  // EECN:24 initiator depth:8
  // remote EECN:24 | remote CM response timeout 10101b, transport 01b, flow control 1b
  EXPECT_EQ(span(40, 4), (Bytes{0xab, 0xcd, 0xef, 0xab}));
  // starting PSN:24 | local CM response timeout 01110b, retry count 101b
  EXPECT_EQ(span(44, 4), (Bytes{0xfe, 0xdc, 0xba, 0x75}));
  EXPECT_EQ(span(48, 2), (Bytes{0x80, 0x01}));  // P_Key
  EXPECT_EQ(b[at(50)], 0x3e);                   // MTU 0011b, RDC exists 1b, RNR retry 110b
  EXPECT_EQ(b[at(51)], 0xc8);  // max CM retries 1100b, SRQ 1b, extended transport 000b
  EXPECT_EQ(span(52, 4), (Bytes{0x12, 0x34, 0x56, 0x78}));  // primary LIDs
  EXPECT_EQ(span(56, 16), Bytes(m.primary.local_gid, m.primary.local_gid + 16));
  EXPECT_EQ(span(72, 16), Bytes(m.primary.remote_gid, m.primary.remote_gid + 16));
  EXPECT_EQ(span(88, 4), (Bytes{0xab, 0xcd, 0xe0, 0x2a}));  // flow label:20 rsvd:6 rate 101010b
  EXPECT_EQ(b[at(92)], 0x60);                               // traffic class
  EXPECT_EQ(b[at(93)], 0x40);                               // hop limit
  EXPECT_EQ(b[at(94)], 0xb8);                               // SL 1011b, subnet local 1b, reserved
  EXPECT_EQ(b[at(95)], 0x98);                               // local ACK timeout 10011b, reserved
  for (size_t i = 96; i < 139; ++i) EXPECT_EQ(b[at(i)], 0) << "alternate path byte " << i;
  EXPECT_EQ(b[at(139)], 0x04);  // SAP supported: bit 5
  EXPECT_EQ(span(140, 92), Bytes(m.private_data, m.private_data + 92));
}

TEST(CmMadLayout, ReqAlternatePath) {
  const Req m = sample_req();  // alternate = sample_path(3)
  const Bytes b = built(m);
  EXPECT_EQ(b[at(96)], 0x12);  // local LID 0x1237
  EXPECT_EQ(b[at(97)], 0x37);
  EXPECT_EQ(b[at(98)], 0x56);  // remote LID 0x567b
  EXPECT_EQ(b[at(99)], 0x7b);
  EXPECT_EQ(b[at(100)], m.alternate.local_gid[0]);
  EXPECT_EQ(b[at(116)], m.alternate.remote_gid[0]);
  // flow label 0xabcdb, packet rate 0x2d
  EXPECT_EQ(Bytes(b.begin() + at(132), b.begin() + at(136)), (Bytes{0xab, 0xcd, 0xb0, 0x2d}));
  EXPECT_EQ(b[at(136)], 0x63);
  EXPECT_EQ(b[at(137)], 0x43);
  EXPECT_EQ(b[at(138)], 0x88);         // SL 1000b, subnet local
  EXPECT_EQ(b[at(139)], 0xb0 | 0x04);  // ACK timeout 10110b, SAP supported
}

TEST(CmMadLayout, ReqWideValuesAreCut) {
  Req m = sample_req();
  m.local_qpn = 0xab123456;  // 24 bits: must not spill into responder resources
  m.starting_psn = 0xfffedcba;
  m.retry_count = 0xff;
  m.primary.flow_label = 0xfffabcde;
  m.primary.packet_rate = 0xea;
  const Bytes b = built(m);
  EXPECT_EQ(b[at(35)], 0x9a);
  EXPECT_EQ(b[at(32)], 0x12);
  EXPECT_EQ(b[at(44)], 0xfe);
  EXPECT_EQ(b[at(47)], 0x77);  // timeout 01110b kept, retry 111b
  EXPECT_EQ(Bytes(b.begin() + at(88), b.begin() + at(92)), (Bytes{0xab, 0xcd, 0xe0, 0x2a}));
}

TEST(CmMadLayout, MraRejRep) {
  Bytes b = built(sample_mra());
  EXPECT_EQ(b[at(0)], 0xa1);
  EXPECT_EQ(b[at(4)], 0xb1);
  EXPECT_EQ(b[at(8)], 0x40);  // message MRAed 01b (REP)
  EXPECT_EQ(b[at(9)], 0xe8);  // service timeout 11101b
  EXPECT_EQ(b[at(10)], 0x41);

  b = built(sample_rej());
  EXPECT_EQ(b[at(8)], 0x80);       // message rejected 10b (other)
  EXPECT_EQ(b[at(9)], 0x45 << 1);  // reject info length:7
  EXPECT_EQ(b[at(10)], 0x00);
  EXPECT_EQ(b[at(11)], 28);  // consumer defined
  EXPECT_EQ(b[at(12)], 0x51);
  EXPECT_EQ(b[at(84)], 0x61);

  b = built(sample_rep());
  EXPECT_EQ(Bytes(b.begin() + at(8), b.begin() + at(28)),
            (Bytes{0x01, 0x23, 0x45, 0x67,  // Q_Key
                   0x89, 0xab, 0xcd, 0xa5,  // QPN:24 vendor ID[23:16]
                   0x45, 0x67, 0x89, 0xb6,  // EECN:24 vendor ID[15:8]
                   0x13, 0x57, 0x9b, 0xc7,  // PSN:24 vendor ID[7:0]
                   0x21, 0x43,              // responder resources, initiator depth
                   0xcd,                    // ACK delay 11001b, failover 10b, EEFC 1b
                   0xb0}));                 // RNR retry 101b, SRQ 1b, reserved
  EXPECT_EQ(b[at(28)], 0x11);               // local CA GUID
  EXPECT_EQ(b[at(35)], 0x88);
  EXPECT_EQ(b[at(36)], 0x71);
}

TEST(CmMadLayout, DreqSidr) {
  Bytes b = built(sample_dreq());
  EXPECT_EQ(Bytes(b.begin() + at(8), b.begin() + at(13)), (Bytes{0xde, 0xad, 0xed, 0, 0x91}));

  b = built(sample_sidr_req());
  EXPECT_EQ(Bytes(b.begin() + at(4), b.begin() + at(16)),
            (Bytes{0x7f, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x11, 0x12, 0xb7}));

  b = built(sample_sidr_rep());
  EXPECT_EQ(Bytes(b.begin() + at(4), b.begin() + at(24)),
            (Bytes{4,    72,   0x12, 0x34,  // status, info length, VID[23:8]
                   0x00, 0xca, 0xfe, 0x56,  // QPN:24 VID[7:0]
                   0,    0,    0,    0,    0x01, 0x11, 0x12, 0xb7,  // service ID
                   0x01, 0x23, 0x45, 0x67}));                       // Q_Key
  EXPECT_EQ(b[at(24)], 0xc1);
  EXPECT_EQ(b[at(96)], 0xd1);
}

// The reserved bits as Linux's field list leaves them (spot checks of defined_bits).
TEST(CmMadLayout, DefinedBits) {
  uint8_t m[kMadSize];
  defined_bits(AttrId::req, m);
  EXPECT_EQ(Bytes(m, m + 8), (Bytes{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}));
  EXPECT_EQ(Bytes(m + 16, m + 24), (Bytes{0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff}));
  EXPECT_EQ(m[at(4)], 0x00);  // reserved byte before the vendor ID
  EXPECT_EQ(Bytes(m + at(24), m + at(28)), (Bytes{0, 0, 0, 0}));
  EXPECT_EQ(Bytes(m + at(88), m + at(92)), (Bytes{0xff, 0xff, 0xf0, 0x3f}));
  EXPECT_EQ(m[at(94)], 0xf8);
  EXPECT_EQ(m[at(95)], 0xf8);
  EXPECT_EQ(m[at(139)], 0xfc);
  EXPECT_EQ(m[at(231)], 0xff);
  defined_bits(AttrId::mra, m);
  EXPECT_EQ(m[at(8)], 0xc0);
  EXPECT_EQ(m[at(9)], 0xf8);
  defined_bits(AttrId::rej, m);
  EXPECT_EQ(m[at(9)], 0xfe);
  defined_bits(AttrId::rep, m);
  EXPECT_EQ(m[at(27)], 0xf0);
  defined_bits(AttrId::dreq, m);
  EXPECT_EQ(m[at(11)], 0x00);
  defined_bits(AttrId::sidr_req, m);
  EXPECT_EQ(Bytes(m + at(6), m + at(8)), (Bytes{0, 0}));
  defined_bits(AttrId::lap, m);
  EXPECT_EQ(Bytes(m, m + kMadSize), Bytes(kMadSize, 0));
}

// Reserved bits set by a peer are ignored, and a rebuilt MAD has them zero.
TEST(CmMadLayout, ReservedBitsIgnored) {
  const std::pair<AttrId, Bytes> cases[] = {
      {AttrId::req, built(sample_req())},           {AttrId::mra, built(sample_mra())},
      {AttrId::rej, built(sample_rej())},           {AttrId::rep, built(sample_rep())},
      {AttrId::rtu, built(sample_rtu())},           {AttrId::dreq, built(sample_dreq())},
      {AttrId::drep, built(sample_drep())},         {AttrId::sidr_req, built(sample_sidr_req())},
      {AttrId::sidr_rep, built(sample_sidr_rep())},
  };
  for (const auto& [id, clean] : cases) {
    uint8_t mask[kMadSize];
    defined_bits(id, mask);
    Bytes dirty = clean;
    for (size_t i = 4; i < kMadSize; ++i)  // status/class-specific (4..7) included
      dirty[i] |= uint8_t(~mask[i]);
    Mad a{}, b{};
    ASSERT_EQ(parse_bytes(clean, &a), ParseError::ok) << name(id);
    ASSERT_EQ(parse_bytes(dirty, &b), ParseError::ok) << name(id);
    EXPECT_TRUE(a.msg == b.msg) << name(id);
    Bytes rebuilt(kMadSize);
    ASSERT_TRUE(build(b, rebuilt.data()));
    EXPECT_EQ(rebuilt, clean) << name(id);
  }
}

// ---- ParseError ----

TEST(CmMadParse, HeaderErrors) {
  const Bytes good = built(sample_rtu());
  Mad out{};
  struct Case {
    size_t off;
    uint8_t value;
    ParseError want;
  };
  const Case cases[] = {
      {0, 2, ParseError::bad_base_version},  {1, 0x01, ParseError::not_cm_class},
      {1, 0x03, ParseError::not_cm_class},   {2, 1, ParseError::bad_class_version},
      {2, 3, ParseError::bad_class_version}, {3, 0x01, ParseError::bad_method},  // Get
      {3, 0x83, ParseError::bad_method},                                         // a response
      {3, 0x81, ParseError::bad_method},
  };
  for (const Case& c : cases) {
    Bytes b = good;
    b[c.off] = c.value;
    EXPECT_EQ(parse_bytes(b, &out), c.want) << "byte " << c.off << " = " << int(c.value);
    EXPECT_TRUE(std::holds_alternative<std::monostate>(out.msg));
    EXPECT_EQ(out.hdr.tid, 0x0102030405060708u);  // the header is still there to answer with
  }
  // Checks run in header order: the first wrong byte names the error.
  Bytes b = good;
  b[0] = 0;
  b[1] = 0;
  EXPECT_EQ(parse_bytes(b, &out), ParseError::bad_base_version);
}

TEST(CmMadParse, UnknownAttributes) {
  Bytes b = built(sample_rtu());
  Mad out{};
  for (uint16_t id : {0x0000, 0x0001, 0x000f, 0x0019, 0x001a, 0x001b, 0x1010, 0xffff}) {
    b[16] = uint8_t(id >> 8);
    b[17] = uint8_t(id);
    EXPECT_EQ(parse_bytes(b, &out), ParseError::unknown_attr) << std::hex << id;
    EXPECT_EQ(uint16_t(out.hdr.attr_id), id);
  }
}

TEST(CmMadParse, TooShortAtEveryLength) {
  const Bytes good = built(sample_req());
  Mad out{};
  EXPECT_EQ(parse(nullptr, 0, &out), ParseError::too_short);
  // Each prefix in a heap block of exactly its size: ASan reports any read past it.
  for (size_t len = 0; len < kMadSize; ++len) {
    std::unique_ptr<uint8_t[]> p(new uint8_t[len]);
    std::memcpy(p.get(), good.data(), len);
    EXPECT_EQ(parse(p.get(), len, &out), ParseError::too_short) << len;
    EXPECT_TRUE(std::holds_alternative<std::monostate>(out.msg));
  }
  // Longer than a MAD (a caller's receive buffer): the first 256 bytes are the MAD.
  Bytes longer = good;
  longer.resize(300, 0xff);
  EXPECT_EQ(parse_bytes(longer, &out), ParseError::ok);
}

TEST(CmMadParse, ReqFieldChecks) {
  Mad out{};
  const Bytes good = built(sample_req());
  for (uint8_t mtu = 0; mtu < 16; ++mtu) {
    Bytes b = good;
    b[at(50)] = uint8_t((b[at(50)] & 0x0f) | mtu << 4);
    const ParseError want = mtu >= 1 && mtu <= 5 ? ParseError::ok : ParseError::bad_field;
    EXPECT_EQ(parse_bytes(b, &out), want) << "path MTU " << int(mtu);
  }
  for (uint8_t tst = 0; tst < 4; ++tst) {
    for (uint8_t ext = 0; ext < 8; ++ext) {
      Bytes b = good;
      b[at(43)] = uint8_t((b[at(43)] & ~0x06) | tst << 1);
      b[at(51)] = uint8_t((b[at(51)] & ~0x07) | ext);
      // RD (2) is well formed; the CM answers it with REJ invalid transport type.
      const bool ok = tst != 3 || ext == 1;
      EXPECT_EQ(parse_bytes(b, &out), ok ? ParseError::ok : ParseError::bad_field)
          << "transport " << int(tst) << " ext " << int(ext);
      if (!ok) {
        EXPECT_TRUE(std::holds_alternative<std::monostate>(out.msg));
      }
    }
  }
}

TEST(CmMadParse, OtherFieldChecks) {
  Mad out{};
  for (uint8_t v = 0; v < 4; ++v) {
    Bytes b = built(sample_mra());
    b[at(8)] = uint8_t(v << 6);
    EXPECT_EQ(parse_bytes(b, &out), v == 3 ? ParseError::bad_field : ParseError::ok);
    b = built(sample_rej());
    b[at(8)] = uint8_t(v << 6);
    EXPECT_EQ(parse_bytes(b, &out), v == 3 ? ParseError::bad_field : ParseError::ok);
    b = built(sample_rep());
    b[at(26)] = uint8_t((b[at(26)] & ~0x06) | v << 1);
    EXPECT_EQ(parse_bytes(b, &out), v == 3 ? ParseError::bad_field : ParseError::ok);
  }
  for (uint8_t len : {0, 1, 72, 73, 127}) {
    Bytes b = built(sample_rej());
    b[at(9)] = uint8_t(len << 1);
    EXPECT_EQ(parse_bytes(b, &out), len <= 72 ? ParseError::ok : ParseError::bad_field) << +len;
  }
  for (uint8_t len : {0, 72, 73, 255}) {
    Bytes b = built(sample_sidr_rep());
    b[at(5)] = len;
    EXPECT_EQ(parse_bytes(b, &out), len <= 72 ? ParseError::ok : ParseError::bad_field) << +len;
  }
}

TEST(CmMadNames, Tables) {
  EXPECT_STREQ(name(AttrId::req), "REQ");
  EXPECT_STREQ(name(AttrId::sidr_rep), "SIDR_REP");
  EXPECT_STREQ(name(AttrId::apr), "APR");
  EXPECT_STREQ(name(AttrId(0x0042)), "?");
  EXPECT_STREQ(name(ParseError::ok), "ok");
  EXPECT_STREQ(name(ParseError::bad_field), "bad_field");
  EXPECT_STREQ(name(ParseError::too_short), "too_short");
  EXPECT_STREQ(name(RejReason::consumer_defined), "consumer_defined");
  EXPECT_STREQ(name(RejReason::vendor_option_not_supported), "vendor_option_not_supported");
  EXPECT_STREQ(name(RejReason(34)), "?");
  EXPECT_STREQ(name(RejReason(0)), "?");
  // Values that must equal Linux's enum ib_cm_rej_reason.
  EXPECT_EQ(uint16_t(RejReason::no_qp), 1);
  EXPECT_EQ(uint16_t(RejReason::timeout), 4);
  EXPECT_EQ(uint16_t(RejReason::invalid_service_id), 8);
  EXPECT_EQ(uint16_t(RejReason::stale_conn), 10);
  EXPECT_EQ(uint16_t(RejReason::consumer_defined), 28);
  EXPECT_EQ(uint16_t(RejReason::invalid_class_version), 31);
}

// ---- Annex A11 ----

TEST(CmIpHdr, Ipv4KnownAnswer) {
  IpHdr h{};
  h.ip_version = 4;
  h.src_port = 5000;
  const uint8_t src[4] = {192, 0, 2, 1}, dst[4] = {192, 0, 2, 2};
  std::memcpy(h.src_ip + 12, src, 4);
  std::memcpy(h.dst_ip + 12, dst, 4);
  uint8_t b[kIpHdrSize];
  build_ip_hdr(h, b);
  Bytes want = {0x00, 0x40, 0x13, 0x88};
  want.resize(4 + 12);
  want.insert(want.end(), {192, 0, 2, 1});
  want.resize(20 + 12);
  want.insert(want.end(), {192, 0, 2, 2});
  EXPECT_EQ(Bytes(b, b + kIpHdrSize), want);

  IpHdr back{};
  ASSERT_TRUE(parse_ip_hdr(b, sizeof b, &back));
  EXPECT_TRUE(back == h);
  // Whatever a peer leaves in the IPv4 pad does not reach the address.
  std::memset(b + 4, 0xaa, 12);
  std::memset(b + 20, 0xbb, 12);
  b[1] |= 0x0f;  // the low nibble is reserved
  ASSERT_TRUE(parse_ip_hdr(b, sizeof b, &back));
  EXPECT_TRUE(back == h);
  // An IPv4 builder ignores the first 12 bytes it is handed.
  std::memset(h.src_ip, 0x77, 12);
  build_ip_hdr(h, b);
  EXPECT_EQ(Bytes(b, b + kIpHdrSize), want);
}

TEST(CmIpHdr, Ipv6AndErrors) {
  IpHdr h{};
  h.ip_version = 6;
  h.src_port = 0xabcd;
  fill(h.src_ip, 16, 0x20);
  fill(h.dst_ip, 16, 0xfe);
  uint8_t b[kIpHdrSize + 4];
  std::memset(b, 0x5a, sizeof b);
  build_ip_hdr(h, b);
  EXPECT_EQ(b[kIpHdrSize], 0x5a);  // exactly 36 bytes written
  EXPECT_EQ(b[1], 0x60);
  EXPECT_EQ(b[4], 0x20);
  EXPECT_EQ(b[20], 0xfe);
  IpHdr back{};
  ASSERT_TRUE(parse_ip_hdr(b, kIpHdrSize, &back));
  EXPECT_TRUE(back == h);
  EXPECT_FALSE(parse_ip_hdr(b, kIpHdrSize - 1, &back));
  b[0] = 0x10;  // MajV 1
  EXPECT_FALSE(parse_ip_hdr(b, kIpHdrSize, &back));
  b[0] = 0;
  for (uint8_t v : {0, 1, 5, 7, 15}) {
    b[1] = uint8_t(v << 4);
    EXPECT_FALSE(parse_ip_hdr(b, kIpHdrSize, &back)) << +v;
  }
}

TEST(CmServiceId, IpCmService) {
  static_assert(ip_service_id(0x0106, 5000) == 0x0000000001061388);    // RDMA_IB_IP_PS_TCP | port
  static_assert(ip_service_id(0x0111, 0) == 0x0000000001110000);       // RDMA_IB_IP_PS_UDP
  static_assert(ip_service_id(0x013f, 0xffff) == 0x00000000013fffff);  // RDMA_IB_IP_PS_IB
  uint16_t ps = 0, port = 0;
  ASSERT_TRUE(split_service_id(0x0000000001061388, &ps, &port));
  EXPECT_EQ(ps, 0x0106);
  EXPECT_EQ(port, 5000);
  ASSERT_TRUE(split_service_id(ip_service_id(0x013f, 1), &ps, &port));
  EXPECT_EQ(ps, 0x013f);
  EXPECT_EQ(port, 1);
  EXPECT_FALSE(split_service_id(0x0000000000021388, &ps, &port));  // IPoIB space: not A11
  EXPECT_FALSE(split_service_id(0x0200000001061388, &ps, &port));  // IB_CM_ASSIGN_SERVICE_ID
  EXPECT_FALSE(split_service_id(0x0000000101061388, &ps, &port));
}

// ---- real MADs: tests/data/roce_frames.txt ----

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

// The MAD of the frame whose source note contains `tag`: past Ethernet [802.1Q], IPv4, UDP,
// BTH (12) and DETH (8).
Bytes real_mad(const std::string& tag) {
  std::ifstream in(frames_path());
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.find(tag) == std::string::npos) continue;
    const Bytes f = from_hex(line.substr(line.find('\t') + 1));
    const size_t ip = f[12] == 0x81 && f[13] == 0x00 ? 18 : 14;
    const size_t mad = ip + (f[ip] & 0xf) * 4 + 8 + 12 + 8;
    if (f.size() < mad + kMadSize) break;
    return Bytes(f.begin() + mad, f.begin() + mad + kMadSize);
  }
  ADD_FAILURE() << "no frame '" << tag << "' in " << frames_path();
  return Bytes(kMadSize);
}

const uint8_t kV4Mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

Bytes gid_v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  Bytes g(kV4Mapped, kV4Mapped + 12);
  g.insert(g.end(), {a, b, c, d});
  return g;
}

TEST(CmMadReal, ConnectXReq) {
  const Bytes b = real_mad("ConnectX host b8:59:9f, VLAN; UD SEND_ONLY QP1 CM MAD #1");
  Mad out{};
  ASSERT_EQ(parse_bytes(b, &out), ParseError::ok);
  EXPECT_EQ(out.hdr.tid, 0x0000000357feb735u);
  EXPECT_EQ(out.hdr.attr_id, AttrId::req);
  ASSERT_TRUE(std::holds_alternative<Req>(out.msg));
  const Req& r = std::get<Req>(out.msg);
  EXPECT_EQ(r.local_comm_id, 0x35b7fe57u);
  EXPECT_EQ(r.vendor_id, 0x0015b3u);  // Mellanox OUI (ECE)
  EXPECT_EQ(r.service_id, 0x0000000001066b13u);
  EXPECT_EQ(r.local_ca_guid, 0xb8599f0300077e2au);
  EXPECT_EQ(r.local_qkey, 0u);
  EXPECT_EQ(r.local_qpn, 0x000144u);
  EXPECT_EQ(r.responder_resources, 0x10);
  EXPECT_EQ(r.local_eecn, 0u);
  EXPECT_EQ(r.initiator_depth, 0x10);
  EXPECT_EQ(r.remote_cm_response_timeout, 22);
  EXPECT_EQ(r.transport_service_type, 0);  // RC
  EXPECT_FALSE(r.flow_control);
  EXPECT_EQ(r.starting_psn, 0xcf7bf6u);
  EXPECT_EQ(r.local_cm_response_timeout, 22);
  EXPECT_EQ(r.retry_count, 7);
  EXPECT_EQ(r.pkey, 0xffff);
  EXPECT_EQ(r.path_mtu, 3);  // 1024
  EXPECT_FALSE(r.rdc_exists);
  EXPECT_EQ(r.rnr_retry_count, 7);
  EXPECT_EQ(r.max_cm_retries, 15);
  EXPECT_FALSE(r.srq);
  EXPECT_EQ(r.primary.local_lid, 0xffff);  // permissive: Linux's RoCE work-around
  EXPECT_EQ(r.primary.remote_lid, 0xffff);
  EXPECT_EQ(Bytes(r.primary.local_gid, r.primary.local_gid + 16), gid_v4(192, 170, 1, 2));
  EXPECT_EQ(Bytes(r.primary.remote_gid, r.primary.remote_gid + 16), gid_v4(192, 170, 1, 50));
  EXPECT_EQ(r.primary.flow_label, 0x5ba59u);
  EXPECT_EQ(r.primary.packet_rate, 0);
  EXPECT_EQ(r.primary.traffic_class, 0);
  EXPECT_EQ(r.primary.hop_limit, 0x40);
  EXPECT_EQ(r.primary.sl, 0);
  EXPECT_FALSE(r.primary.subnet_local);
  EXPECT_EQ(r.primary.local_ack_timeout, 18);
  EXPECT_FALSE(r.has_alternate);

  uint16_t ps = 0, port = 0;
  ASSERT_TRUE(split_service_id(r.service_id, &ps, &port));
  EXPECT_EQ(ps, 0x0106);  // RDMA_PS_TCP
  EXPECT_EQ(port, 0x6b13);
  IpHdr ip{};
  ASSERT_TRUE(parse_ip_hdr(r.private_data, sizeof r.private_data, &ip));
  EXPECT_EQ(ip.ip_version, 4);
  EXPECT_EQ(ip.src_port, 0xaffa);
  EXPECT_EQ(Bytes(ip.src_ip + 12, ip.src_ip + 16), (Bytes{192, 170, 1, 2}));
  EXPECT_EQ(Bytes(ip.dst_ip + 12, ip.dst_ip + 16), (Bytes{192, 170, 1, 50}));

  Bytes again(kMadSize);
  ASSERT_TRUE(build(out, again.data()));
  EXPECT_EQ(again, b);  // nothing lost, nothing reserved was set
}

TEST(CmMadReal, RxeReq) {
  const Bytes b = real_mad("rxe host 20:7b:d2; UD SEND_ONLY QP1 CM MAD #1");
  Mad out{};
  ASSERT_EQ(parse_bytes(b, &out), ParseError::ok);
  ASSERT_TRUE(std::holds_alternative<Req>(out.msg));
  const Req& r = std::get<Req>(out.msg);
  EXPECT_EQ(out.hdr.tid, 0x00000002f2c97e40u);
  EXPECT_EQ(r.local_comm_id, 0x407ec9f2u);
  EXPECT_EQ(r.vendor_id, 0u);
  EXPECT_EQ(r.service_id, 0x0000000001061c06u);
  EXPECT_EQ(r.local_ca_guid, 0x227bd2fffe93899au);
  EXPECT_EQ(r.local_qpn, 0x15u);
  EXPECT_EQ(r.responder_resources, 1);
  EXPECT_EQ(r.initiator_depth, 0x10);
  EXPECT_EQ(r.remote_cm_response_timeout, 20);
  EXPECT_EQ(r.starting_psn, 0x4b1dd4u);
  EXPECT_EQ(r.local_cm_response_timeout, 20);
  EXPECT_EQ(r.retry_count, 7);
  EXPECT_EQ(r.path_mtu, 3);
  EXPECT_EQ(r.primary.flow_label, 0x4d8c6u);
  EXPECT_EQ(r.primary.local_ack_timeout, 17);
  IpHdr ip{};
  ASSERT_TRUE(parse_ip_hdr(r.private_data, sizeof r.private_data, &ip));
  EXPECT_EQ(ip.src_port, 0xab40);
  Bytes again(kMadSize);
  ASSERT_TRUE(build(out, again.data()));
  EXPECT_EQ(again, b);
}

TEST(CmMadReal, RtuAndDreq) {
  for (const char* tag : {"ConnectX host b8:59:9f, VLAN; UD SEND_ONLY QP1 CM MAD #2",
                          "rxe host 20:7b:d2; UD SEND_ONLY QP1 CM MAD #2"}) {
    const Bytes b = real_mad(tag);
    Mad out{};
    ASSERT_EQ(parse_bytes(b, &out), ParseError::ok) << tag;
    ASSERT_TRUE(std::holds_alternative<Rtu>(out.msg)) << tag;
    EXPECT_EQ(std::get<Rtu>(out.msg).remote_comm_id, 0xfedcabedu);
  }
  const Bytes b = real_mad("rxe host 20:7b:d2; UD SEND_ONLY QP1 CM MAD #3");
  Mad out{};
  ASSERT_EQ(parse_bytes(b, &out), ParseError::ok);
  ASSERT_TRUE(std::holds_alternative<Dreq>(out.msg));
  const Dreq& d = std::get<Dreq>(out.msg);
  EXPECT_EQ(d.local_comm_id, 0x407ec9f2u);
  EXPECT_EQ(d.remote_comm_id, 0xfedcabedu);
  EXPECT_EQ(d.remote_qpn, 0xdeadedu);
  Bytes again(kMadSize);
  ASSERT_TRUE(build(out, again.data()));
  EXPECT_EQ(again, b);
}

}  // namespace
}  // namespace dverbs::cm
