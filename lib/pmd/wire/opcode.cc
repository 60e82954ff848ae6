// Base transport opcode table (IBA 9.2 Table 38, extension headers per Table 39).
//
// One constexpr table of 256 entries, indexed by the raw BTH opcode. RD opcodes (0x40..0x5f)
// stay invalid: dverbs implements RC, UC, UD and XRC.
#include "pmd/wire/roce.h"

#include <array>
#include <iterator>

namespace dverbs::pmd::wire {
namespace {

constexpr uint8_t ext_len_of(uint32_t f) {
  uint32_t n = 0;
  if (f & opf::kReth) n += kRethLen;
  if (f & opf::kAeth) n += kAethLen;
  if (f & opf::kDeth) n += kDethLen;
  if (f & opf::kImm) n += kImmDtLen;
  if (f & opf::kIeth) n += kIethLen;
  if (f & opf::kAtomicEth) n += kAtomicEthLen;
  if (f & opf::kAtomicAckEth) n += kAtomicAckEthLen;
  if (f & opf::kXrceth) n += kXrcethLen;
  if (f & opf::kFeth) n += kFethLen;
  return uint8_t(n);
}

using namespace opf;

// Message position. Single-packet operations (READ request, atomics, ACKs) are "only".
constexpr uint32_t kF = kFirst | kStartMsg;
constexpr uint32_t kM = kMiddle;
constexpr uint32_t kL = kLast | kEndMsg;
constexpr uint32_t kO = kOnly | kStartMsg | kEndMsg;

// Every SEND packet consumes (or continues) a receive WQE; WRITE with immediate consumes one
// on its last/only packet only (IBA 9.4.3, 9.4.4).
constexpr uint32_t kSendReq = kValid | kRequest | kSend | kPayload | kRecvWqe;
constexpr uint32_t kWriteReq = kValid | kRequest | kWrite | kPayload;
constexpr uint32_t kReadResp = kValid | kResponse | kRead | kPayload;

struct Entry {
  uint8_t code;  // low 5 bits; the transport prefix is added per table
  const char* rc_name;
  const char* uc_name;  // nullptr: not valid on UC
  uint32_t flags;
};

// Opcodes shared by RC and UC (UC has SEND and RDMA WRITE only, IBA 9.8.3).
constexpr Entry kConnected[] = {
    {op::kSendFirst, "RC_SEND_FIRST", "UC_SEND_FIRST", kSendReq | kF},
    {op::kSendMiddle, "RC_SEND_MIDDLE", "UC_SEND_MIDDLE", kSendReq | kM},
    {op::kSendLast, "RC_SEND_LAST", "UC_SEND_LAST", kSendReq | kL},
    {op::kSendLastImm, "RC_SEND_LAST_WITH_IMMEDIATE", "UC_SEND_LAST_WITH_IMMEDIATE",
     kSendReq | kL | kImm},
    {op::kSendOnly, "RC_SEND_ONLY", "UC_SEND_ONLY", kSendReq | kO},
    {op::kSendOnlyImm, "RC_SEND_ONLY_WITH_IMMEDIATE", "UC_SEND_ONLY_WITH_IMMEDIATE",
     kSendReq | kO | kImm},
    {op::kWriteFirst, "RC_RDMA_WRITE_FIRST", "UC_RDMA_WRITE_FIRST", kWriteReq | kF | kReth},
    {op::kWriteMiddle, "RC_RDMA_WRITE_MIDDLE", "UC_RDMA_WRITE_MIDDLE", kWriteReq | kM},
    {op::kWriteLast, "RC_RDMA_WRITE_LAST", "UC_RDMA_WRITE_LAST", kWriteReq | kL},
    {op::kWriteLastImm, "RC_RDMA_WRITE_LAST_WITH_IMMEDIATE", "UC_RDMA_WRITE_LAST_WITH_IMMEDIATE",
     kWriteReq | kL | kImm | kRecvWqe},
    {op::kWriteOnly, "RC_RDMA_WRITE_ONLY", "UC_RDMA_WRITE_ONLY", kWriteReq | kO | kReth},
    {op::kWriteOnlyImm, "RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE", "UC_RDMA_WRITE_ONLY_WITH_IMMEDIATE",
     kWriteReq | kO | kReth | kImm | kRecvWqe},
    {op::kReadRequest, "RC_RDMA_READ_REQUEST", nullptr, kValid | kRequest | kRead | kO | kReth},
    {op::kReadRespFirst, "RC_RDMA_READ_RESPONSE_FIRST", nullptr, kReadResp | kF | kAeth},
    {op::kReadRespMiddle, "RC_RDMA_READ_RESPONSE_MIDDLE", nullptr, kReadResp | kM},
    {op::kReadRespLast, "RC_RDMA_READ_RESPONSE_LAST", nullptr, kReadResp | kL | kAeth},
    {op::kReadRespOnly, "RC_RDMA_READ_RESPONSE_ONLY", nullptr, kReadResp | kO | kAeth},
    {op::kAck, "RC_ACKNOWLEDGE", nullptr, kValid | kResponse | kO | kAeth},
    {op::kAtomicAck, "RC_ATOMIC_ACKNOWLEDGE", nullptr,
     kValid | kResponse | kAtomic | kO | kAeth | kAtomicAckEth},
    {op::kCmpSwap, "RC_COMPARE_SWAP", nullptr, kValid | kRequest | kAtomic | kO | kAtomicEth},
    {op::kFetchAdd, "RC_FETCH_ADD", nullptr, kValid | kRequest | kAtomic | kO | kAtomicEth},
    {op::kSendLastInv, "RC_SEND_LAST_WITH_INVALIDATE", nullptr, kSendReq | kL | kIeth},
    {op::kSendOnlyInv, "RC_SEND_ONLY_WITH_INVALIDATE", nullptr, kSendReq | kO | kIeth},
    // IBA 1.5: one packet each, answered by a zero-length READ RESPONSE ONLY (rxe's
    // layout: FLUSH is BTH FETH RETH; ATOMIC WRITE is BTH RETH and 8 bytes of payload).
    {op::kFlush, "RC_FLUSH", nullptr, kValid | kRequest | kFlush | kO | kFeth | kReth},
    {op::kAtomicWrite, "RC_ATOMIC_WRITE", nullptr,
     kValid | kRequest | kAtomicWrite | kO | kReth | kPayload},
};

// XRC (the XRC annex): RC's operations of IBA 1.4 under the prefix 0xA0, in kConnected's
// order (its first entries; IBA 1.5's FLUSH and ATOMIC WRITE are RC's only here, as rxe).
// Requests carry an XRCETH; responses (ACK, READ responses, atomic ACK) do not.
constexpr const char* kXrcNames[] = {
    "XRC_SEND_FIRST",
    "XRC_SEND_MIDDLE",
    "XRC_SEND_LAST",
    "XRC_SEND_LAST_WITH_IMMEDIATE",
    "XRC_SEND_ONLY",
    "XRC_SEND_ONLY_WITH_IMMEDIATE",
    "XRC_RDMA_WRITE_FIRST",
    "XRC_RDMA_WRITE_MIDDLE",
    "XRC_RDMA_WRITE_LAST",
    "XRC_RDMA_WRITE_LAST_WITH_IMMEDIATE",
    "XRC_RDMA_WRITE_ONLY",
    "XRC_RDMA_WRITE_ONLY_WITH_IMMEDIATE",
    "XRC_RDMA_READ_REQUEST",
    "XRC_RDMA_READ_RESPONSE_FIRST",
    "XRC_RDMA_READ_RESPONSE_MIDDLE",
    "XRC_RDMA_READ_RESPONSE_LAST",
    "XRC_RDMA_READ_RESPONSE_ONLY",
    "XRC_ACKNOWLEDGE",
    "XRC_ATOMIC_ACKNOWLEDGE",
    "XRC_COMPARE_SWAP",
    "XRC_FETCH_ADD",
    "XRC_SEND_LAST_WITH_INVALIDATE",
    "XRC_SEND_ONLY_WITH_INVALIDATE",
};
static_assert(std::size(kXrcNames) + 2 == std::size(kConnected));

constexpr std::array<OpcodeInfo, 256> make_table() {
  std::array<OpcodeInfo, 256> t{};
  for (auto& e : t) e = {"INVALID", 0, 0};
  auto set = [&t](uint8_t code, const char* name, uint32_t flags) {
    t[code] = {name, flags, ext_len_of(flags)};
  };
  for (const Entry& e : kConnected) {
    set(uint8_t(op::kRc | e.code), e.rc_name, e.flags);
    if (e.uc_name) set(uint8_t(op::kUc | e.code), e.uc_name, e.flags);
  }
  for (size_t i = 0; i < std::size(kXrcNames); i++) {
    const Entry& e = kConnected[i];
    set(uint8_t(op::kXrc | e.code), kXrcNames[i], e.flags | (e.flags & kRequest ? kXrceth : 0));
  }
  // UD: SEND only, one packet per message, DETH first (IBA 9.8.4).
  set(op::kUd | op::kSendOnly, "UD_SEND_ONLY", kSendReq | kO | kDeth);
  set(op::kUd | op::kSendOnlyImm, "UD_SEND_ONLY_WITH_IMMEDIATE", kSendReq | kO | kDeth | kImm);
  // CNP (IBA A17.9.3): no extension header; its 16 reserved bytes count as payload.
  set(op::kCnp, "CNP", kValid | kPayload);
  return t;
}

}  // namespace

// Declared extern in roce.h, so this constant has external linkage.
constexpr std::array<OpcodeInfo, 256> kOpcodeTable = make_table();

static_assert(kOpcodeTable[op::kAtomicAck].ext_len == kAethLen + kAtomicAckEthLen);
static_assert(kOpcodeTable[op::kUd | op::kSendOnlyImm].ext_len == kDethLen + kImmDtLen);
static_assert(kOpcodeTable[op::kRc | op::kWriteOnlyImm].ext_len == kRethLen + kImmDtLen);
static_assert(!(kOpcodeTable[op::kRd | op::kSendOnly].flags & opf::kValid));
static_assert(!(kOpcodeTable[op::kUc | op::kReadRequest].flags & opf::kValid));
static_assert(kOpcodeTable[op::kRc | op::kFlush].ext_len == kFethLen + kRethLen);
static_assert(kOpcodeTable[op::kRc | op::kAtomicWrite].ext_len == kRethLen);
static_assert(!(kOpcodeTable[op::kUc | op::kAtomicWrite].flags & opf::kValid));
static_assert(kOpcodeTable[op::kXrc | op::kWriteOnlyImm].ext_len ==
              kXrcethLen + kRethLen + kImmDtLen);
static_assert(kOpcodeTable[op::kXrc | op::kAck].ext_len == kAethLen);
static_assert(ext_offset(kOpcodeTable[op::kXrc | op::kWriteFirst].flags, opf::kReth) ==
              kXrcethLen);

}  // namespace dverbs::pmd::wire
