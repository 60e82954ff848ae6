// Opcode table against IBA Tables 38 and 39.
#include "pmd/wire/roce.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace dverbs::pmd::wire {
namespace {

using namespace opf;

constexpr uint32_t kHdrMask =
    kReth | kAeth | kDeth | kImm | kIeth | kAtomicEth | kAtomicAckEth | kFeth;

uint32_t hdrs(uint8_t opcode) { return opcode_info(opcode).flags & kHdrMask; }
bool has(uint8_t opcode, uint32_t f) { return (opcode_info(opcode).flags & f) == f; }

TEST(Opcode, ValidSet) {
  std::set<unsigned> valid;
  for (unsigned c = 0; c < 256; c++)
    if (opcode_info(uint8_t(c)).flags & kValid) valid.insert(c);
  std::set<unsigned> want;
  for (unsigned c = 0x00; c <= 0x14; c++) want.insert(c);  // RC
  want.insert(0x16);
  want.insert(0x17);
  want.insert(0x1c);  // RC FLUSH (IBA 1.5)
  want.insert(0x1d);  // RC ATOMIC WRITE (IBA 1.5)
  for (unsigned c = 0x20; c <= 0x2b; c++) want.insert(c);  // UC
  want.insert(0x64);  // UD
  want.insert(0x65);
  want.insert(0x81);  // CNP
  for (unsigned c = 0xa0; c <= 0xb4; c++) want.insert(c);  // XRC: RC's operations
  want.insert(0xb6);
  want.insert(0xb7);
  EXPECT_EQ(valid, want);
  EXPECT_EQ(valid.size(), 63u);
}

TEST(Opcode, RdAndReservedAreInvalid) {
  for (unsigned c = 0x40; c < 0x60; c++) EXPECT_FALSE(has(uint8_t(c), kValid)) << c;
  for (uint8_t c : {0x15, 0x18, 0x1e, 0x3c, 0x3d, 0x2c, 0x60, 0x63, 0x66, 0x80, 0x82, 0xff}) {
    EXPECT_FALSE(has(c, kValid)) << int(c);
    EXPECT_STREQ(opcode_info(c).name, "INVALID");
    EXPECT_EQ(opcode_info(c).ext_len, 0);
  }
}

TEST(Opcode, NamesAreUniqueAndCarryTheTransport) {
  std::set<std::string> names;
  for (unsigned c = 0; c < 256; c++) {
    const OpcodeInfo& i = opcode_info(uint8_t(c));
    if (!(i.flags & kValid)) continue;
    EXPECT_TRUE(names.insert(i.name).second) << i.name;
    const std::string n = i.name;
    const std::string prefix = c == 0x81 ? "CNP"
                               : c >= 0xa0 ? "XRC_"
                               : c < 0x20  ? "RC_"
                               : c < 0x40  ? "UC_"
                                           : "UD_";
    EXPECT_EQ(n.rfind(prefix, 0), 0u) << n;
  }
  EXPECT_STREQ(opcode_info(0x04).name, "RC_SEND_ONLY");
  EXPECT_STREQ(opcode_info(0x65).name, "UD_SEND_ONLY_WITH_IMMEDIATE");
  EXPECT_STREQ(opcode_info(0x81).name, "CNP");
  EXPECT_STREQ(opcode_info(0x2b).name, "UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE");
  EXPECT_STREQ(opcode_info(0x17).name, "RC_SEND_ONLY_WITH_INVALIDATE");
}

// IBA Table 39: which extension headers follow the BTH.
TEST(Opcode, ExtensionHeadersPerTable39) {
  for (uint8_t t : {op::kRc, op::kUc}) {
    EXPECT_EQ(hdrs(t | op::kSendFirst), 0u);
    EXPECT_EQ(hdrs(t | op::kSendMiddle), 0u);
    EXPECT_EQ(hdrs(t | op::kSendLast), 0u);
    EXPECT_EQ(hdrs(t | op::kSendLastImm), kImm);
    EXPECT_EQ(hdrs(t | op::kSendOnly), 0u);
    EXPECT_EQ(hdrs(t | op::kSendOnlyImm), kImm);
    EXPECT_EQ(hdrs(t | op::kWriteFirst), kReth);
    EXPECT_EQ(hdrs(t | op::kWriteMiddle), 0u);
    EXPECT_EQ(hdrs(t | op::kWriteLast), 0u);
    EXPECT_EQ(hdrs(t | op::kWriteLastImm), kImm);
    EXPECT_EQ(hdrs(t | op::kWriteOnly), kReth);
    EXPECT_EQ(hdrs(t | op::kWriteOnlyImm), kReth | kImm);
  }
  EXPECT_EQ(hdrs(op::kReadRequest), kReth);
  EXPECT_EQ(hdrs(op::kReadRespFirst), kAeth);
  EXPECT_EQ(hdrs(op::kReadRespMiddle), 0u);
  EXPECT_EQ(hdrs(op::kReadRespLast), kAeth);
  EXPECT_EQ(hdrs(op::kReadRespOnly), kAeth);
  EXPECT_EQ(hdrs(op::kAck), kAeth);
  EXPECT_EQ(hdrs(op::kAtomicAck), kAeth | kAtomicAckEth);
  EXPECT_EQ(hdrs(op::kCmpSwap), kAtomicEth);
  EXPECT_EQ(hdrs(op::kFetchAdd), kAtomicEth);
  EXPECT_EQ(hdrs(op::kSendLastInv), kIeth);
  EXPECT_EQ(hdrs(op::kSendOnlyInv), kIeth);
  EXPECT_EQ(hdrs(op::kFlush), kFeth | kReth);  // IBA 1.5, rxe's layout
  EXPECT_EQ(hdrs(op::kAtomicWrite), kReth);
  EXPECT_TRUE(has(op::kAtomicWrite, kPayload | kRequest | kAtomicWrite | kOnly));
  EXPECT_TRUE(has(op::kFlush, kRequest | kFlush | kOnly));
  EXPECT_FALSE(has(op::kFlush, kPayload));
  EXPECT_EQ(hdrs(op::kUd | op::kSendOnly), kDeth);
  EXPECT_EQ(hdrs(op::kUd | op::kSendOnlyImm), kDeth | kImm);
  EXPECT_EQ(hdrs(op::kCnp), 0u);
}

TEST(Opcode, ExtLenIsTheSumOfHeaderSizes) {
  EXPECT_EQ(opcode_info(op::kSendOnly).ext_len, 0);
  EXPECT_EQ(opcode_info(op::kSendOnlyImm).ext_len, 4);
  EXPECT_EQ(opcode_info(op::kSendOnlyInv).ext_len, 4);
  EXPECT_EQ(opcode_info(op::kWriteFirst).ext_len, 16);
  EXPECT_EQ(opcode_info(op::kWriteOnlyImm).ext_len, 20);
  EXPECT_EQ(opcode_info(op::kReadRequest).ext_len, 16);
  EXPECT_EQ(opcode_info(op::kReadRespMiddle).ext_len, 0);
  EXPECT_EQ(opcode_info(op::kAck).ext_len, 4);
  EXPECT_EQ(opcode_info(op::kAtomicAck).ext_len, 12);
  EXPECT_EQ(opcode_info(op::kCmpSwap).ext_len, 28);
  EXPECT_EQ(opcode_info(op::kFlush).ext_len, 20);
  EXPECT_EQ(opcode_info(op::kAtomicWrite).ext_len, 16);
  EXPECT_EQ(opcode_info(op::kUd | op::kSendOnly).ext_len, 8);
  EXPECT_EQ(opcode_info(op::kUd | op::kSendOnlyImm).ext_len, 12);
  EXPECT_EQ(opcode_info(op::kCnp).ext_len, 0);
}

// Wire order after the BTH: DETH FETH RETH AtomicETH AETH AtomicAckETH ImmDt IETH.
TEST(Opcode, ExtOffsets) {
  auto f = [](uint8_t c) { return opcode_info(c).flags; };
  EXPECT_EQ(ext_offset(f(op::kWriteOnlyImm), kReth), 0u);
  EXPECT_EQ(ext_offset(f(op::kWriteOnlyImm), kImm), 16u);
  EXPECT_EQ(ext_offset(f(op::kWriteLastImm), kImm), 0u);
  EXPECT_EQ(ext_offset(f(op::kUd | op::kSendOnlyImm), kDeth), 0u);
  EXPECT_EQ(ext_offset(f(op::kUd | op::kSendOnlyImm), kImm), 8u);
  EXPECT_EQ(ext_offset(f(op::kAtomicAck), kAeth), 0u);
  EXPECT_EQ(ext_offset(f(op::kAtomicAck), kAtomicAckEth), 4u);
  EXPECT_EQ(ext_offset(f(op::kSendOnlyInv), kIeth), 0u);
  EXPECT_EQ(ext_offset(f(op::kCmpSwap), kAtomicEth), 0u);
  EXPECT_EQ(ext_offset(f(op::kFlush), kFeth), 0u);
  EXPECT_EQ(ext_offset(f(op::kFlush), kReth), 4u);
}

// The XRC annex: RC's operations under the prefix 0xA0, requests with an XRCETH first;
// IBA 1.5's FLUSH and ATOMIC WRITE are RC's only.
TEST(Opcode, XrcIsRcWithAnXrcethOnRequests) {
  EXPECT_FALSE(has(op::kXrc | op::kFlush, kValid));
  EXPECT_FALSE(has(op::kXrc | op::kAtomicWrite, kValid));
  for (unsigned c = 0; c < 0x20; c++) {
    if (c == op::kFlush || c == op::kAtomicWrite) continue;
    const OpcodeInfo& rc = opcode_info(uint8_t(c));
    const OpcodeInfo& x = opcode_info(uint8_t(op::kXrc | c));
    EXPECT_EQ(x.flags & ~kXrceth, rc.flags) << c;
    EXPECT_EQ(bool(x.flags & kXrceth), bool(rc.flags & kRequest)) << c;
    EXPECT_EQ(x.ext_len, rc.ext_len + ((rc.flags & kRequest) ? kXrcethLen : 0)) << c;
    if (x.flags & kXrceth) {
      EXPECT_EQ(ext_offset(x.flags, kXrceth), 0u) << c;
    }
  }
}

TEST(Opcode, OperationAndDirection) {
  for (unsigned c = 0; c < 256; c++) {
    const uint32_t fl = opcode_info(uint8_t(c)).flags;
    if (!(fl & kValid) || c == op::kCnp) continue;
    EXPECT_NE(bool(fl & kRequest), bool(fl & kResponse)) << c;
    const int kinds = bool(fl & kSend) + bool(fl & kWrite) + bool(fl & kRead) + bool(fl & kAtomic) +
                      bool(fl & kAtomicWrite) + bool(fl & kFlush);
    EXPECT_EQ(kinds, c == op::kAck || c == (op::kXrc | op::kAck) ? 0 : 1) << c;
    // kStartMsg/kEndMsg mirror kFirst/kLast.
    EXPECT_EQ(bool(fl & kStartMsg), bool(fl & kFirst)) << c;
    EXPECT_EQ(bool(fl & kEndMsg), bool(fl & kLast)) << c;
    EXPECT_FALSE((fl & kMiddle) && (fl & (kFirst | kLast))) << c;
    EXPECT_TRUE(fl & (kFirst | kMiddle | kLast)) << c;
  }
  EXPECT_TRUE(has(op::kReadRequest, kRequest | kRead | kOnly));
  EXPECT_TRUE(has(op::kReadRespMiddle, kResponse | kRead | kMiddle | kPayload));
  EXPECT_TRUE(has(op::kAtomicAck, kResponse | kAtomic));
  EXPECT_TRUE(has(op::kFetchAdd, kRequest | kAtomic));
  EXPECT_FALSE(has(op::kReadRequest, kPayload));
  EXPECT_FALSE(has(op::kAck, kPayload));
  EXPECT_FALSE(has(op::kCmpSwap, kPayload));
  EXPECT_TRUE(has(op::kCnp, kValid | kPayload));
  EXPECT_FALSE(has(op::kCnp, kRequest));
  EXPECT_FALSE(has(op::kCnp, kResponse));
}

// SEND consumes a receive WQE (flagged on every SEND packet), WRITE with immediate only on
// its last/only packet; nothing else does.
TEST(Opcode, RecvWqe) {
  for (unsigned c = 0; c < 256; c++) {
    const uint32_t fl = opcode_info(uint8_t(c)).flags;
    if (!(fl & kValid)) continue;
    const bool want = (fl & kSend) || ((fl & kWrite) && (fl & kImm));
    EXPECT_EQ(bool(fl & kRecvWqe), want) << opcode_info(uint8_t(c)).name;
  }
  EXPECT_TRUE(has(op::kWriteLastImm, kRecvWqe));
  EXPECT_TRUE(has(op::kUc | op::kWriteOnlyImm, kRecvWqe));
  EXPECT_FALSE(has(op::kWriteFirst, kRecvWqe));
  EXPECT_TRUE(has(op::kSendMiddle, kRecvWqe));
}

TEST(Opcode, HeadersLen) {
  EXPECT_EQ(headers_len(op::kSendOnly), 14u + 20 + 8 + 12);
  EXPECT_EQ(headers_len(op::kWriteOnlyImm), 14u + 20 + 8 + 12 + 20);
  EXPECT_EQ(headers_len(op::kAtomicAck), 14u + 20 + 8 + 12 + 12);
}

}  // namespace
}  // namespace dverbs::pmd::wire
