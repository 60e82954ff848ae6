// Writes the seed corpora of rx_fuzz and wr_fuzz: gen_corpus OUT_DIR writes OUT_DIR/rx/*
// and OUT_DIR/wr/*. The committed tests/fuzz/corpus/ was produced by it (plus the frames
// pcap_to_corpus.py extracted from the e2e tests' capture); re-run it when an input format
// changes.
//
// rx seeds: one input per malformed-packet class of the Linux rxe/siw CVEs (length underflow
// through pad/ICRC, opcode 0xff and other unassigned opcodes, zero-length atomic write,
// oversized UD payload, truncated headers) and well-formed traffic of every opcode toward
// each QP of the harness. wr seeds: one program per work-request misuse and a few valid ones.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "pmd/wire/roce.h"
#include "rx_input.h"

namespace wire = dverbs::pmd::wire;
namespace op = dverbs::pmd::wire::op;
using namespace dverbs::fuzz::rx;

namespace {

std::string g_out;

void save(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = g_out + "/" + dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = uint8_t(seed + i * 11);
  return v;
}

// ---------------------------------------------------------------- rx: structured

struct In {
  uint8_t mode;
  std::vector<uint8_t> body;
  explicit In(uint8_t m) : mode(m) {}
  In& add(const Rec& r, const std::vector<uint8_t>& payload = {}) {
    encode(body, r, payload);
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> v{mode};
    v.insert(v.end(), body.begin(), body.end());
    return v;
  }
};

Rec rec(uint8_t opcode, uint8_t target, int16_t psn = 0) {
  Rec r;
  r.opcode = opcode;
  r.target = target;
  r.psn = psn;
  return r;
}

Rec reth(uint8_t opcode, uint8_t target, uint8_t key, uint8_t base, int32_t off, uint32_t len) {
  Rec r = rec(opcode, target);
  r.key = key;
  r.va_base = base;
  r.va_off = off;
  r.dma_len = len;
  return r;
}

Rec aeth(uint8_t opcode, int16_t psn, uint8_t syndrome, uint32_t msn = 0) {
  Rec r = rec(opcode, kQpA, psn);
  r.syndrome = syndrome;
  r.msn = msn;
  return r;
}

void rx_structured() {
  const uint8_t S = mode::kStructured;
  const uint8_t RC = op::kRc, UC = op::kUc, UD = op::kUd;
  const uint8_t ack = wire::make_syndrome(wire::AethType::ack, wire::kCreditsInvalid);
  auto nak = [](wire::NakCode c) { return wire::make_syndrome(wire::AethType::nak, uint8_t(c)); };
  auto rnr = [](uint8_t t) { return wire::make_syndrome(wire::AethType::rnr_nak, t); };

  // --- CVE class: length underflow through pad and ICRC ---
  {
    Rec r = rec(RC | op::kSendOnly, kQpB);
    r.length = 4 | 3 | (kIpLenMinus << 3);  // pad 3, datagram 6 bytes short
    r.k = 6;
    save("rx", "cve-underflow-send-pad3", In(S).add(r).bytes());
    r = reth(RC | op::kWriteOnly, kQpB, kKeyB, kVaB, 0, 16);
    r.length = 4 | 3 | (kIpLenMinus << 3);  // RETH cut into: ext_len + pad > rest
    r.k = 14;
    save("rx", "cve-underflow-write-reth", In(S).add(r, pattern(16, 1)).bytes());
    r = rec(RC | op::kAck, kQpA);
    r.syndrome = ack;
    r.length = kIpLenMinus << 3;  // AETH missing entirely
    r.k = 4;
    save("rx", "cve-underflow-ack-no-aeth", In(S | mode::kQueueRequests).add(r).bytes());
    r = rec(UD | op::kSendOnly, kQpU);
    r.length = 4 | 2 | (kIpLenMinus << 3);  // DETH + pad beyond the datagram
    r.k = 9;
    save("rx", "cve-underflow-ud-deth", In(S).add(r, pattern(3, 2)).bytes());
    r = reth(RC | op::kReadRespOnly, kQpA, 0, 0, 0, 0);
    r.syndrome = ack;
    r.length = 4 | 3 | (kIpLenMinus << 3);
    r.k = 2;
    save("rx", "cve-underflow-read-resp", In(S | mode::kQueueRequests).add(r, pattern(1, 3)).bytes());
  }
  // --- CVE class: unassigned opcodes (0xff and neighbours) ---
  for (uint8_t opc : {uint8_t(0xff), uint8_t(0x1d), uint8_t(0x1c), uint8_t(0x1e), uint8_t(0x15),
                      uint8_t(0x18), uint8_t(0x3f), uint8_t(0x7f), uint8_t(0xe4), uint8_t(0xa0)}) {
    Rec r = reth(opc, kQpB, kKeyB, kVaB, 0, 8);
    char name[64];
    std::snprintf(name, sizeof name, "cve-opcode-%02x", opc);
    save("rx", name, In(S).add(r, pattern(8, opc)).bytes());
  }
  // --- IBA 1.5 ATOMIC WRITE and FLUSH (FETH type and level from swap_add's low bytes) ---
  {
    save("rx", "iba15-atomic-write",
         In(S).add(reth(RC | op::kAtomicWrite, kQpB, kKeyB, kVaB, 8, 8), pattern(8, 5)).bytes());
    save("rx", "iba15-atomic-write-unaligned",
         In(S).add(reth(RC | op::kAtomicWrite, kQpB, kKeyB, kVaB, 4, 8), pattern(8, 6)).bytes());
    save("rx", "iba15-atomic-write-long",
         In(S).add(reth(RC | op::kAtomicWrite, kQpB, kKeyB, kVaB, 8, 16), pattern(16, 7)).bytes());
    for (auto [name, type_level] : {std::pair<const char*, uint64_t>{"iba15-flush-global-range", 1},
                                    {"iba15-flush-global-mr", 1 | 1 << 8},
                                    {"iba15-flush-persistent", 2},
                                    {"iba15-flush-no-type", 0},
                                    {"iba15-flush-bad-level", 1 | 3 << 8}}) {
      Rec r = reth(RC | op::kFlush, kQpB, kKeyB, kVaB, 0, 4096);
      r.swap_add = type_level;
      save("rx", name, In(S).add(r).bytes());
    }
  }
  // --- CVE class: zero-length atomic write / zero-length RDMA that must not touch memory ---
  {
    // RC ATOMIC WRITE (IBA 1.5, opcode 0x1d) announcing 0 bytes: an invalid request.
    save("rx", "cve-atomic-write-zero-len",
         In(S).add(reth(RC | 0x1d, kQpB, kKeyRaw, kVaZero, 0x1000, 0), pattern(8, 9)).bytes());
    // Zero-length WRITE with a bogus rkey and address: no access, no check needed.
    Rec r = reth(RC | op::kWriteOnly, kQpB, kKeyRaw, kVaZero, 0x12345678, 0);
    r.raw = 0xdeadbe00;
    save("rx", "cve-zero-len-write-bogus-va", In(S).add(r).bytes());
    // Zero DMA length but a payload: must not be written anywhere.
    r = reth(RC | op::kWriteOnly, kQpB, kKeyB, kVaB, int32_t(256 * 1024 - 4), 0);
    save("rx", "cve-zero-len-write-with-payload", In(S).add(r, pattern(64, 4)).bytes());
    // Zero-length READ aimed outside every region: an empty response, no read.
    r = reth(RC | op::kReadRequest, kQpB, kKeyRaw, kVaZero, -4096, 0);
    save("rx", "cve-zero-len-read-outside", In(S | mode::kLoopBack).add(r).bytes());
    // Atomics: unaligned, past the end, through a read-only key, another PD's key.
    Rec at = reth(RC | op::kFetchAdd, kQpB, kKeyB, kVaB, 3, 0);
    save("rx", "cve-atomic-unaligned", In(S).add(at).bytes());
    at = reth(RC | op::kCmpSwap, kQpB, kKeyB, kVaB, 256 * 1024 - 4, 0);
    save("rx", "cve-atomic-straddles-end", In(S).add(at).bytes());
    at = reth(RC | op::kFetchAdd, kQpB, kKeyR, kVaR, 0, 0);
    save("rx", "cve-atomic-read-only-key", In(S).add(at).bytes());
    at = reth(RC | op::kFetchAdd, kQpB, kKeyP2, kVaP2, 0, 0);
    save("rx", "cve-atomic-other-pd", In(S).add(at).bytes());
  }
  // --- CVE class: oversized UD payload ---
  {
    Rec r = rec(UD | op::kSendOnly, kQpU);
    save("rx", "cve-ud-oversized", In(S).add(r, pattern(4097 + 60, 5)).bytes());
    save("rx", "cve-ud-mtu-exact", In(S).add(r, pattern(4096, 6)).bytes());
    r = rec(UD | op::kSendOnlyImm, kQpU);
    r.raw = 0;  // Q_Key of the QP
    save("rx", "cve-ud-imm-oversized", In(S).add(r, pattern(4200, 7)).bytes());
    r = rec(UD | op::kSendOnly, kQpU);
    r.raw = 0x22222222;  // wrong Q_Key
    save("rx", "cve-ud-wrong-qkey", In(S).add(r, pattern(64, 8)).bytes());
    r = rec(RC | op::kSendOnly, kQpU);  // RC opcode at a UD QP
    save("rx", "cve-ud-rc-opcode", In(S).add(r, pattern(64, 8)).bytes());
  }
  // --- CVE class: truncated headers (structured: cut k bytes off a well-formed frame) ---
  {
    const struct { uint8_t opc; uint8_t tgt; uint8_t cut; } cuts[] = {
        {RC | op::kWriteFirst, kQpB, 30}, {RC | op::kCmpSwap, kQpB, 24},
        {RC | op::kAtomicAck, kQpA, 10},   {UD | op::kSendOnly, kQpU, 12},
        {RC | op::kSendOnlyInv, kQpB, 6},  {RC | op::kReadRequest, kQpB, 18},
        {RC | op::kAck, kQpA, 7},          {UC | op::kWriteOnlyImm, kQpD, 21}};
    for (const auto& c : cuts) {
      Rec r = reth(c.opc, c.tgt, kKeyB, kVaB, 0, 0);
      r.length = kTruncate << 3;
      r.k = c.cut;
      char name[64];
      std::snprintf(name, sizeof name, "cve-truncated-%02x-by-%u", c.opc, c.cut);
      save("rx", name, In(S).add(r).bytes());
    }
    Rec r = rec(RC | op::kSendOnly, kQpB);
    r.target |= tflag::kVlan;
    r.length = kTruncate << 3;
    r.k = 40;
    save("rx", "cve-truncated-vlan", In(S).add(r, pattern(4, 1)).bytes());
  }
  // --- other malformed: bad ICRC, bad IP checksum, UDP length, foreign source, TVer ---
  {
    Rec r = rec(RC | op::kSendOnly, kQpB);
    r.length = kBadIcrc << 3;
    save("rx", "bad-icrc", In(S).add(r, pattern(16, 1)).bytes());
    r.length = kBadIpCsum << 3;
    save("rx", "bad-ip-csum", In(S).add(r, pattern(16, 1)).bytes());
    r.length = kUdpLenXor << 3;
    r.k = 4;
    save("rx", "bad-udp-len", In(S).add(r, pattern(16, 1)).bytes());
    r.length = kIpLenPlus << 3;
    r.k = 100;
    save("rx", "ip-len-past-frame", In(S).add(r, pattern(16, 1)).bytes());
    r.length = kEthPad << 3;
    r.k = 40;
    save("rx", "eth-padding", In(S).add(r, pattern(4, 1)).bytes());
    r.length = 0;
    r.target = kQpB | tflag::kForeignIp;
    save("rx", "foreign-source", In(S).add(r, pattern(16, 1)).bytes());
    r.target = kQpB | tflag::kJunkFlags;
    save("rx", "bad-tver", In(S).add(r, pattern(16, 1)).bytes());
    r.target = kNoQp;
    save("rx", "no-such-qp", In(S).add(r, pattern(16, 1)).bytes());
    Rec cnp = rec(op::kCnp, kQpA);
    save("rx", "cnp", In(S).add(cnp, std::vector<uint8_t>(16, 0)).bytes());
  }

  // --- well-formed traffic toward every QP ---
  {
    // RC SEND first/middle/last (path MTU 256) and with immediate / invalidate.
    In in(S | mode::kOneBurst | mode::kLoopBack);
    in.add(rec(RC | op::kSendFirst, kQpB, 0), pattern(256, 1))
        .add(rec(RC | op::kSendMiddle, kQpB, 1), pattern(256, 2))
        .add(rec(RC | op::kSendLastImm, kQpB, 2), pattern(100, 3));
    save("rx", "rc-send-multi", in.bytes());
    Rec inv = rec(RC | op::kSendOnlyInv, kQpB);
    save("rx", "rc-send-inv-mw2", In(S).add(inv, pattern(32, 4)).bytes());
    // RC WRITE through the region, the type 2 window and the type 1 window.
    In w(S | mode::kOneBurst | mode::kLoopBack);
    w.add(reth(RC | op::kWriteFirst, kQpB, kKeyB, kVaB, 0x8000, 600), pattern(256, 5))
        .add(rec(RC | op::kWriteMiddle, kQpB, 1), pattern(256, 6))
        .add(rec(RC | op::kWriteLastImm, kQpB, 2), pattern(88, 7));
    save("rx", "rc-write-multi-imm", w.bytes());
    save("rx", "rc-write-mw2",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyMw2, kVaMw2, 16, 64), pattern(64, 8)).bytes());
    save("rx", "rc-write-mw2-past-window",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyMw2, kVaMw2, 0x2000 - 8, 16), pattern(16, 8))
             .bytes());
    save("rx", "rc-write-mw1-read-only",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyMw1, kVaB, 0x4000, 8), pattern(8, 8)).bytes());
    save("rx", "rc-write-read-only-region",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyR, kVaR, 0, 8), pattern(8, 8)).bytes());
    save("rx", "rc-write-other-pd",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyP2, kVaP2, 0, 8), pattern(8, 8)).bytes());
    save("rx", "rc-write-rkey-plus-one",
         In(S).add(reth(RC | op::kWriteOnly, kQpB, kKeyBPlus1, kVaB, 0, 8), pattern(8, 8)).bytes());
    save("rx", "rc-write-first-wrong-length",
         In(S).add(reth(RC | op::kWriteFirst, kQpB, kKeyB, kVaB, 0, 600), pattern(200, 8)).bytes());
    // READ and atomics (responses looped back to A, which did not ask: ignored).
    In rd(S | mode::kOneBurst | mode::kLoopBack);
    rd.add(reth(RC | op::kReadRequest, kQpB, kKeyB, kVaB, 0x100, 700))
        .add(rec(RC | op::kSendOnly, kQpB, 3), pattern(10, 1))
        .add([] {
          Rec r2 = reth(RC | op::kReadRequest, kQpB, kKeyR, kVaR, 0, 300);
          r2.psn = 4;
          return r2;
        }());
    // The second READ's PSN follows the SEND (READ 700 B at MTU 256 consumes 3 PSNs).
    save("rx", "rc-read-send-read", rd.bytes());
    Rec cas = reth(RC | op::kCmpSwap, kQpB, kKeyB, kVaB, 0xa000, 0);
    cas.compare = 0;
    cas.swap_add = 0x1122334455667788ull;
    save("rx", "rc-cmp-swap", In(S | mode::kLoopBack).add(cas).bytes());
    save("rx", "rc-cmp-swap-then-duplicate",
         In(S | mode::kLoopBack | mode::kOneBurst).add(cas).add(cas).bytes());
    Rec fa = reth(RC | op::kFetchAdd, kQpB, kKeyMw2, kVaMw2, 8, 0);
    fa.swap_add = 5;
    save("rx", "rc-fetch-add-mw2", In(S | mode::kLoopBack).add(fa).bytes());
    // Out of sequence and duplicate requests.
    save("rx", "rc-send-out-of-sequence", In(S).add(rec(RC | op::kSendOnly, kQpB, 5), pattern(8, 1)).bytes());
    save("rx", "rc-send-duplicate", In(S).add(rec(RC | op::kSendOnly, kQpB, -1), pattern(8, 1)).bytes());
    save("rx", "rc-middle-without-first",
         In(S).add(rec(RC | op::kSendMiddle, kQpB, 0), pattern(256, 1)).bytes());
    // UC SEND/WRITE into D, UD SEND into U, SEND into the SRQ QP.
    In uc(S | mode::kOneBurst);
    uc.add(rec(UC | op::kSendFirst, kQpD, 0), pattern(1024, 1))
        .add(rec(UC | op::kSendLast, kQpD, 1), pattern(10, 2))
        .add(reth(UC | op::kWriteOnlyImm, kQpD, kKeyB, kVaB, 0xc000, 32), pattern(32, 3));
    save("rx", "uc-send-write", uc.bytes());
    save("rx", "uc-gap", In(S).add(rec(UC | op::kSendMiddle, kQpD, 7), pattern(1024, 1)).bytes());
    save("rx", "ud-send", In(S).add(rec(UD | op::kSendOnly, kQpU), pattern(300, 1)).bytes());
    save("rx", "srq-send", In(S).add(rec(RC | op::kSendOnly, kQpS), pattern(300, 1)).bytes());
    save("rx", "srq-send-too-long", In(S).add(rec(RC | op::kSendOnly, kQpS), pattern(2100, 1)).bytes());
    // XRC (issue 18) at the XRC_RECV QP (kQpS with XRC opcodes): the XRCETH names the
    // domain's SRQ (key 0), another domain's (key 1: refused, never delivered) or a raw
    // number (key 2); WRITE, READ and FETCH_ADD check memory against the named SRQ's PD.
    const uint8_t XRC = op::kXrc;
    save("rx", "xrc-send", In(S).add(rec(XRC | op::kSendOnly, kQpS), pattern(300, 1)).bytes());
    Rec xf = rec(XRC | op::kSendOnly, kQpS);
    xf.key = 1;
    save("rx", "xrc-send-foreign-srq", In(S).add(xf, pattern(64, 2)).bytes());
    xf.key = 2;
    xf.raw = 0x00c0ff;
    save("rx", "xrc-send-raw-srqn", In(S).add(xf, pattern(64, 3)).bytes());
    In xm(S | mode::kOneBurst);
    xm.add(rec(XRC | op::kSendFirst, kQpS, 0), pattern(256, 1)).add([] {
      Rec r2 = rec(op::kXrc | op::kSendLast, kQpS, 1);
      r2.key = 1;  // the message's later packet names another domain's SRQ
      return r2;
    }(), pattern(8, 2));
    save("rx", "xrc-send-srq-changes-mid-message", xm.bytes());
    save("rx", "xrc-write",
         In(S).add(reth(XRC | op::kWriteOnlyImm, kQpS, kKeyB, kVaB, 0xd000, 40), pattern(40, 4)).bytes());
    save("rx", "xrc-read",
         In(S | mode::kLoopBack).add(reth(XRC | op::kReadRequest, kQpS, kKeyB, kVaB, 0x100, 300)).bytes());
    Rec xa = reth(XRC | op::kFetchAdd, kQpS, kKeyB, kVaB, 0xa008, 0);
    xa.swap_add = 3;
    save("rx", "xrc-fetch-add", In(S | mode::kLoopBack).add(xa).bytes());
    save("rx", "xrc-opcode-at-rc-qp", In(S).add(rec(XRC | op::kSendOnly, kQpB), pattern(8, 1)).bytes());
    save("rx", "xrc-ack-at-rc-requester",
         In(S | mode::kQueueRequests).add(aeth(XRC | op::kAck, 2, ack, 1)).bytes());
  }

  // --- responses to A's queued requests: WRITE (3 PSNs), READ (3), FETCH_ADD (1), SEND (1) ---
  {
    const uint8_t Q = S | mode::kQueueRequests;
    In all(Q | mode::kOneBurst);
    all.add(aeth(RC | op::kAck, 2, ack, 1));
    Rec r1 = aeth(RC | op::kReadRespFirst, 3, ack, 1);
    all.add(r1, pattern(256, 1));
    all.add(rec(RC | op::kReadRespMiddle, kQpA, 4), pattern(256, 2));
    all.add(aeth(RC | op::kReadRespLast, 5, ack, 2), pattern(188, 3));
    Rec aa = aeth(RC | op::kAtomicAck, 6, ack, 3);
    aa.compare = 41;
    all.add(aa);
    all.add(aeth(RC | op::kAck, 7, ack, 4));
    save("rx", "a-all-answered", all.bytes());
    save("rx", "a-nak-seq", In(Q).add(aeth(RC | op::kAck, 1, nak(wire::NakCode::psn_seq_error))).bytes());
    save("rx", "a-nak-access", In(Q).add(aeth(RC | op::kAck, 0, nak(wire::NakCode::remote_access_error))).bytes());
    save("rx", "a-nak-inv", In(Q).add(aeth(RC | op::kAck, 3, nak(wire::NakCode::invalid_request))).bytes());
    save("rx", "a-nak-reserved-code", In(Q).add(aeth(RC | op::kAck, 0, wire::make_syndrome(wire::AethType::nak, 9))).bytes());
    save("rx", "a-rnr", In(Q).add(aeth(RC | op::kAck, 0, rnr(1))).bytes());
    save("rx", "a-reserved-aeth", In(Q).add(aeth(RC | op::kAck, 0, wire::make_syndrome(wire::AethType::reserved, 0))).bytes());
    save("rx", "a-ack-far-future", In(Q).add(aeth(RC | op::kAck, 1000, ack)).bytes());
    save("rx", "a-read-resp-wrong-length",
         In(Q).add(aeth(RC | op::kAck, 2, ack)).add(aeth(RC | op::kReadRespOnly, 3, ack), pattern(700, 1)).bytes());
    save("rx", "a-read-resp-middle-first",
         In(Q | mode::kOneBurst).add(aeth(RC | op::kAck, 2, ack)).add(rec(RC | op::kReadRespMiddle, kQpA, 3), pattern(256, 1)).bytes());
    save("rx", "a-atomic-ack-for-read",
         In(Q | mode::kOneBurst).add(aeth(RC | op::kAck, 2, ack)).add(aeth(RC | op::kAtomicAck, 3, ack)).bytes());
    save("rx", "a-unsolicited-read-resp", In(S).add(aeth(RC | op::kReadRespOnly, 0, ack), pattern(64, 1)).bytes());
  }
}

// ---------------------------------------------------------------- rx: raw frames

void rx_steered();

std::vector<uint8_t> raw_frame(uint8_t opcode, uint32_t dqpn, uint32_t psn, uint32_t plen) {
  const wire::OpcodeInfo& info = wire::opcode_info(opcode);
  const uint8_t pad = (info.flags & wire::opf::kPayload) ? wire::pad_for(plen) : 0;
  std::vector<uint8_t> f(wire::headers_len(opcode) + plen + pad + wire::kIcrcLen);
  wire::FrameAddr a{};
  const uint8_t mac[6] = {0x02, 0x00, 0x0a, 0x00, 0x00, 0x01};
  std::memcpy(a.src_mac, mac, 6);
  std::memcpy(a.dst_mac, mac, 6);
  a.src_ip = a.dst_ip = 0x0a000001;  // DVERBS_IP default
  a.udp_sport = 0xc001;
  a.ttl = 64;
  wire::BthFields b{};
  b.opcode = opcode;
  b.pad = pad;
  b.pkey = wire::kDefaultPkey;
  b.dest_qp = dqpn;
  b.psn = psn;
  uint8_t* ext = wire::write_headers(f.data(), a, b, plen);
  std::vector<uint8_t> p = pattern(plen, uint8_t(opcode));
  if (plen) std::memcpy(ext + info.ext_len, p.data(), plen);
  wire::finish_frame(f.data(), uint32_t(f.size()));
  return f;
}

std::vector<uint8_t> raw_input(uint8_t m, const std::vector<uint8_t>& frame) {
  std::vector<uint8_t> v{m};
  v.insert(v.end(), frame.begin(), frame.end());
  return v;
}

void rx_raw() {
  // QPNs of the harness: the first QPs created on a fresh device (generation 1, index 2…).
  const uint32_t kB = 1u << 14 | 3;
  std::vector<uint8_t> f = raw_frame(op::kRc | op::kSendOnly, kB, 0x100, 40);
  save("rx", "raw-rc-send", raw_input(mode::kRawOne, f));
  // Frames the port's receive filter drops before the transport (rx_not_for_us): another
  // station's MAC, a multicast group nobody joined, another IPv4 address. Under kFixup the
  // low two bits of MAC byte 5 keep the destination MAC / IPv4 address as written.
  {
    std::vector<uint8_t> other = f;
    const uint8_t stranger[6] = {0x02, 0x99, 0x99, 0x99, 0x99, 0x99};
    std::memcpy(other.data(), stranger, 6);
    save("rx", "filter-other-mac", raw_input(mode::kRawOne | mode::kFixup, other));
    std::vector<uint8_t> mc = f;
    const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
    std::memcpy(mc.data(), group, 6);
    save("rx", "filter-multicast", raw_input(mode::kRawOne | mode::kFixup, mc));
    std::vector<uint8_t> ip = f;
    ip[5] = 0x02;  // the MAC is re-aimed at the port, the IPv4 destination kept
    wire::store_be32(ip.data() + 14 + 16, 0xc0000201);  // 192.0.2.1
    save("rx", "filter-other-ip", raw_input(mode::kRawOne | mode::kFixup, ip));
  }
  // Truncated at every header boundary (and inside each header), checksums fixed up.
  for (uint32_t cut : {0u, 1u, 13u, 14u, 20u, 33u, 34u, 41u, 42u, 50u, 53u, 54u, 57u}) {
    std::vector<uint8_t> t(f.begin(), f.begin() + std::min<size_t>(cut, f.size()));
    char name[64];
    std::snprintf(name, sizeof name, "cve-raw-truncated-%u", cut);
    save("rx", name, raw_input(mode::kRawOne | mode::kFixup, t));
  }
  // Opcode 0xff in an otherwise valid frame (fixed-up ICRC).
  std::vector<uint8_t> ff = f;
  ff[42] = 0xff;
  save("rx", "cve-raw-opcode-ff", raw_input(mode::kRawOne | mode::kFixup, ff));
  // UDP length smaller than BTH + ICRC; IP total length covering only part of the BTH.
  std::vector<uint8_t> u = f;
  wire::store_be16(u.data() + 38, 8 + 12 + 3);
  save("rx", "cve-raw-udp-len-short", raw_input(mode::kRawOne | mode::kFixup, u));
  std::vector<uint8_t> ipl = f;
  wire::store_be16(ipl.data() + 16, 20 + 8 + 5);
  wire::store_be16(ipl.data() + 38, 8 + 5);
  save("rx", "cve-raw-ip-len-short", raw_input(mode::kRawOne | mode::kFixup, ipl));
  // Pad count 3 on a header-only frame: pad + ICRC exceed what is left.
  std::vector<uint8_t> pd = raw_frame(op::kRc | op::kSendOnly, kB, 0x100, 0);
  pd[43] |= 0x30;
  save("rx", "cve-raw-pad3-empty", raw_input(mode::kRawOne | mode::kFixup, pd));
  // IHL 15 (options) with a frame too short for them.
  std::vector<uint8_t> ihl = f;
  ihl[14] = 0x4f;
  save("rx", "cve-raw-ihl-options", raw_input(mode::kRawOne | mode::kFixup, ihl));
  // Several frames in one input (length-prefixed), one burst: valid, truncated, ARP.
  std::vector<uint8_t> multi{mode::kRawMulti | mode::kOneBurst};
  std::vector<uint8_t> arp(60, 0);
  std::memset(arp.data(), 0xff, 6);
  arp[12] = 0x08;
  arp[13] = 0x06;
  for (const auto* fr : {&f, &ff, &arp}) {
    multi.push_back(uint8_t(fr->size() >> 8));
    multi.push_back(uint8_t(fr->size()));
    multi.insert(multi.end(), fr->begin(), fr->end());
  }
  save("rx", "raw-multi", multi);
  // A frame as a two-segment mbuf chain.
  save("rx", "raw-chained", raw_input(mode::kRawOne | mode::kChain, raw_frame(op::kRc | op::kSendOnly, kB, 0x100, 1000)));
  rx_steered();
}

// A UDP (not RoCE) frame to `dport` with `plen` payload bytes, optionally 802.1Q-tagged;
// the IPv4 checksum is left to kFixup.
std::vector<uint8_t> udp_frame(uint16_t dport, uint32_t plen, uint16_t vlan = 0) {
  const uint8_t mac[6] = {0x02, 0x00, 0x0a, 0x00, 0x00, 0x01};
  std::vector<uint8_t> f(mac, mac + 6);
  f.insert(f.end(), {0x02, 0x00, 0x0a, 0x00, 0x00, 0x02});
  if (vlan) f.insert(f.end(), {0x81, 0x00, uint8_t(vlan >> 8), uint8_t(vlan)});
  f.insert(f.end(), {0x08, 0x00});
  const uint16_t total = uint16_t(20 + 8 + plen);
  f.insert(f.end(), {0x45, 0, uint8_t(total >> 8), uint8_t(total), 0, 0, 0, 0, 64, 17, 0, 0,
                     10, 0, 0, 2, 10, 0, 0, 1, 0x30, 0x39, uint8_t(dport >> 8), uint8_t(dport),
                     uint8_t((8 + plen) >> 8), uint8_t(8 + plen), 0, 0});
  std::vector<uint8_t> p = pattern(plen, 0x5e);
  f.insert(f.end(), p.begin(), p.end());
  return f;
}

// Frames rx_fuzz's flow rules steer to its raw packet QP W (UDP port 5000, ethertype
// 0x88b5): one each, tagged, more than W has receives for (drops), one longer than its
// receive buffers (LOC_LEN_ERR), and a UDP frame to 4791 that is not valid RoCE (never
// steered).
void rx_steered() {
  save("rx", "steer-udp", raw_input(mode::kRawOne | mode::kFixup, udp_frame(5000, 64)));
  save("rx", "steer-udp-vlan", raw_input(mode::kRawOne | mode::kFixup, udp_frame(5000, 64, 7)));
  std::vector<uint8_t> eth = udp_frame(0, 46);
  eth[12] = 0x88;
  eth[13] = 0xb5;
  save("rx", "steer-ethertype", raw_input(mode::kRawOne | mode::kFixup, eth));
  std::vector<uint8_t> multi{mode::kRawMulti | mode::kOneBurst | mode::kFixup};
  for (uint32_t plen : {16u, 100u, 3000u, 40u, 40u, 40u, 0u}) {
    std::vector<uint8_t> f = udp_frame(plen ? 5000 : 5001, plen);
    multi.push_back(uint8_t(f.size() >> 8));
    multi.push_back(uint8_t(f.size()));
    multi.insert(multi.end(), f.begin(), f.end());
  }
  save("rx", "steer-burst", multi);
  save("rx", "steer-never-roce", raw_input(mode::kRawOne | mode::kFixup, udp_frame(4791, 8)));
}

// ---------------------------------------------------------------- wr programs

// Writes the operations wr_fuzz.cc decodes (see the layout at the top of that file).
struct Prog {
  std::vector<uint8_t> b;
  void u8(uint8_t v) { b.push_back(v); }
  void u16(uint16_t v) { put16(b, v); }
  void u32(uint32_t v) { put32(b, v); }
  void u64(uint64_t v) { put64(b, v); }
  struct Sg {
    uint8_t addr = 0;   // selector
    uint32_t off = 0;
    uint32_t len = 0;
    uint8_t key = 0;    // selector
  };
  void sge(const Sg& s) {
    u8(s.addr);
    u32(s.off);
    u32(s.len);
    key(s.key);
  }
  // A key selector; selector 6 ("raw") is followed by the key itself.
  void key(uint8_t sel) {
    u8(sel);
    if (sel % 8 == 6) u32(0xdeadbe01);
  }
  struct Wr {
    uint8_t opcode = 2;  // SEND
    uint8_t flags = 2;   // signaled
    int8_t num_sge = 1;
    uint8_t list = 0;
    std::vector<Sg> sg{Sg{}};
    uint8_t raddr = 0;
    uint32_t roff = 0;
    uint8_t rkey = 0;
    uint64_t ca = 0, swap = 0;
    uint32_t imm = 0;
    uint8_t ah = 0, rqpn = 0;
    uint32_t qkey = 0;
    uint8_t mw = 0, bmr = 0, baddr = 0;
    uint32_t boff = 0, blen = 0;
    uint8_t bacc = 0;
  };
  Prog& send(uint8_t qp, std::vector<Wr> wrs) {
    u8(0);
    u8(qp);
    u8(uint8_t(wrs.size() - 1));
    for (const Wr& w : wrs) {
      u8(w.opcode);
      u8(w.flags);
      u8(uint8_t(w.num_sge));
      u8(w.list);
      for (const Sg& s : w.sg) sge(s);
      u8(w.raddr);
      u32(w.roff);
      key(w.rkey);
      u64(w.ca);
      u64(w.swap);
      u32(w.imm);
      u8(w.ah);
      u8(w.rqpn);
      u32(w.qkey);
      u8(w.mw);
      u8(w.bmr);
      u8(w.baddr);
      u32(w.boff);
      u32(w.blen);
      u8(w.bacc);
    }
    return *this;
  }
  Prog& recv(uint8_t qp, std::vector<std::vector<Sg>> wrs, bool srq = false) {
    u8(srq ? 2 : 1);
    if (!srq) u8(qp);
    u8(uint8_t(wrs.size() - 1));
    for (const auto& sg : wrs) {
      u8(uint8_t(sg.size()));
      u8(0);
      for (const Sg& s : sg) sge(s);
    }
    return *this;
  }
  Prog& deliver(uint8_t rounds, uint8_t frames) {
    u8(5);
    u8(rounds);
    u8(frames);
    return *this;
  }
  Prog& poll() {
    u8(6);
    return *this;
  }
  Prog& reg(uint8_t slot, uint8_t acc, uint16_t off, uint32_t len, uint8_t bogus = 0) {
    u8(4);
    u8(slot);
    u8(acc);
    u16(off);
    u32(len);
    u8(bogus);
    return *this;
  }
  Prog& modify(uint8_t qp, uint32_t mask, uint8_t state, uint8_t mtu = 3, uint8_t port = 1,
               uint8_t timeout = 0, uint8_t gid = 0) {
    u8(3);
    u8(qp);
    u32(mask);
    u8(state);
    u8(0);
    u8(mtu);
    u32(0x11111111);
    u32(0x10);
    u32(0x20);
    u8(2);  // dest: QP 1
    u32(0);
    u8(0x0f);
    u8(timeout);
    u8(7);
    u8(7);
    u8(1);
    u8(1);
    u8(1);
    u8(port);
    u16(0);
    u8(gid);
    u8(1);
    return *this;
  }
  Prog& reconnect(uint8_t qp) {
    u8(7);
    u8(qp);
    return *this;
  }
};

void wr_programs() {
  using Sg = Prog::Sg;
  using Wr = Prog::Wr;
  const Sg r0{0, 0x100, 64, 0};
  const Sg recv_b{0, 0x4000, 4096, 0};
  // A SEND that completes, a WRITE, a READ, both atomics.
  {
    Prog p;
    p.recv(1, {{recv_b}}).send(0, {Wr{}}).deliver(4, 0).poll();
    save("wr", "send-recv", p.b);
    Wr w;
    w.opcode = 0;  // WRITE
    w.raddr = 0;
    w.roff = 0x2000;
    Wr rd = w;
    rd.opcode = 4;  // READ
    rd.sg = {Sg{0, 0x3000, 64, 0}};
    Wr fa = w;
    fa.opcode = 6;
    fa.sg = {Sg{0, 0x3100, 8, 0}};
    fa.roff = 0x2800;
    fa.ca = 3;
    Wr cs = fa;
    cs.opcode = 5;
    cs.ca = 3;
    cs.swap = 9;
    Prog q;
    q.send(0, {w, rd, fa}).send(0, {cs}).deliver(8, 0).poll();
    save("wr", "write-read-atomics", q.b);
  }
  // Misuse, one program each.
  {
    Wr w;
    w.sg = {Sg{0, 0x100, 64, 2}};  // lkey - 1
    save("wr", "lkey-off-by-one", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    w.sg = {Sg{0, 0x100, 64, 2 | 8}};  // lkey + 1
    save("wr", "lkey-plus-one", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    w.sg = {Sg{1, 32, 64, 0}};  // straddles the end
    save("wr", "sge-straddles-end", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    w.sg = {Sg{2, 0, 64, 0}};  // starts before
    save("wr", "sge-before-start", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    w.sg = {Sg{8, 16, 64, 0}};  // addr + len overflows
    save("wr", "sge-overflow", Prog().send(0, {w}).b);
    w.sg = {Sg{0, 0x100, 64, 3}};  // the other PD's key
    save("wr", "sge-other-pd", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    w.sg = {Sg{7, 0, 64, 6}};  // unmapped address, random key
    save("wr", "sge-unmapped", Prog().recv(1, {{recv_b}}).send(0, {w}).deliver(4, 0).b);
    Wr bad = Wr{};
    bad.opcode = 0xf7;
    save("wr", "unknown-opcode", Prog().send(0, {Wr{}, bad, Wr{}}).b);
    bad = Wr{};
    bad.flags = 0x80 | 0x40 | 2;
    save("wr", "unknown-flag", Prog().send(0, {bad}).b);
    bad = Wr{};
    bad.num_sge = 5;
    bad.sg = std::vector<Sg>(5, r0);
    save("wr", "too-many-sge", Prog().send(0, {bad}).b);
    bad.num_sge = -1;
    bad.sg = {};
    save("wr", "negative-sge", Prog().send(0, {bad}).b);
    bad = Wr{};
    bad.list = 1;
    save("wr", "null-sg-list", Prog().send(0, {bad}).b);
    Wr rd;
    rd.opcode = 4;
    rd.roff = 0x100;
    save("wr", "read-on-uc", Prog().send(2, {rd}).b);
    Wr at;
    at.opcode = 6;
    at.sg = {Sg{0, 0x100, 8, 0}};
    at.roff = 3;  // unaligned
    save("wr", "atomic-unaligned", Prog().send(0, {at}).deliver(4, 0).b);
    at.sg = {Sg{0, 0x100, 4, 0}};
    at.roff = 0;
    save("wr", "atomic-short-sge", Prog().send(0, {at}).b);
    Wr inl;
    inl.flags = 2 | 8;
    inl.sg = {Sg{0, 0, 300, 0}};
    save("wr", "inline-too-long", Prog().send(0, {inl}).b);
    inl.sg = {Sg{0, 0, 200, 0}};
    save("wr", "inline-ok", Prog().recv(1, {{recv_b}}).send(0, {inl}).deliver(4, 0).b);
    Wr rw;
    rw.opcode = 0;
    rw.raddr = 5;  // the read-only region
    rw.rkey = 0;
    save("wr", "write-read-only-region", Prog().send(0, {rw}).deliver(4, 0).b);
    rw.raddr = 0;
    rw.rkey = 2;  // rkey - 1
    save("wr", "rkey-off-by-one", Prog().send(0, {rw}).deliver(4, 0).b);
    Wr ud;
    ud.ah = 1;  // null AH
    save("wr", "ud-null-ah", Prog().send(4, {ud}).b);
    ud.ah = 0;
    ud.rqpn = 2;  // U2, with the Q_Key given
    ud.qkey = 0x11111111;
    ud.sg = {Sg{0, 0, 4090, 0}};
    save("wr", "ud-send", Prog().recv(5, {{Sg{0, 0x4000, 4096 + 40, 0}}}).send(4, {ud}).deliver(4, 0).b);
    ud.sg = {Sg{0, 0, 4096, 0}, Sg{0, 0, 8, 0}};
    ud.num_sge = 2;
    save("wr", "ud-oversized", Prog().send(4, {ud}).b);
    // Past max_wr (8): the queue fills while nothing is delivered.
    Prog full;
    for (int i = 0; i < 4; i++) full.send(0, {Wr{}, Wr{}, Wr{}});
    full.recv(1, {{recv_b}, {recv_b}, {recv_b}}).deliver(8, 0).send(0, {Wr{}});
    save("wr", "queue-full", full.b);
    Prog rfull;
    for (int i = 0; i < 4; i++) rfull.recv(1, {{recv_b}, {recv_b}, {recv_b}});
    save("wr", "recv-queue-full", rfull.b);
  }
  // Registration churn: a region deregistered while a WRITE to it is mid-message (frames
  // held back between the FIRST and the rest), a stale key afterwards, a bogus reg.
  {
    Wr w;
    w.opcode = 0;
    w.sg = {Sg{0, 0x1000, 1000, 0}};  // 4 packets at MTU 256
    w.raddr = 6;                      // dynamic slot 0 (off % 4 == 0)
    w.roff = 0x400 << 2;
    w.rkey = 0;                       // its key
    Prog p;
    p.reg(0, 0x0f, 0, 32 * 1024).send(0, {w}).deliver(1, 1).reg(0, 0, 0, 0).deliver(4, 0).poll();
    save("wr", "dereg-mid-write", p.b);
    Wr r = w;
    r.opcode = 4;  // READ from it after dereg: stale rkey
    r.sg = {Sg{0, 0x1000, 64, 0}};
    r.rkey = 7;    // dkey[0]
    Prog q;
    q.reg(0, 0x0f, 0, 4096).reg(0, 0, 0, 0).send(0, {r}).deliver(4, 0);
    save("wr", "stale-rkey", q.b);
    Prog s;
    s.reg(1, 0x0f, 16, 100).recv(1, {{Sg{6, 1 | (16 << 2), 64, 0}}}).reg(1, 0, 0, 0).send(0, {Wr{}}).deliver(4, 0);
    save("wr", "dereg-posted-recv", s.b);
    save("wr", "reg-bogus", Prog().reg(0, 0x40, 0, 0, 3).reg(0, 0x02, 5, 100, 3).reg(1, 0xff, 5, 100, 7).b);
  }
  // Memory windows: bind a type 2 window on B, WRITE through it, invalidate, bind type 1.
  {
    Wr bind;
    bind.opcode = 8;
    bind.num_sge = 0;
    bind.sg = {};
    bind.mw = 1;  // type 2
    bind.bmr = 0;
    bind.baddr = 0;
    bind.boff = 0x1000;
    bind.blen = 0x1000;
    bind.bacc = 0x06;
    Wr w;
    w.opcode = 0;
    w.raddr = 0;
    w.roff = 0x1000;
    w.rkey = 4;  // the type 2 window's rkey
    Wr inv;
    inv.opcode = 7;
    inv.num_sge = 0;
    inv.sg = {};
    inv.mw = 1;
    Prog p;
    p.send(1, {bind}).deliver(2, 0).send(0, {w}).deliver(4, 0).send(1, {inv}).send(0, {w}).deliver(4, 0);
    save("wr", "mw2-bind-write-invalidate", p.b);
    bind.mw = 0;  // type 1
    bind.bmr = 2;  // the other PD's region
    save("wr", "mw1-bind-other-pd", Prog().send(1, {bind}).deliver(2, 0).b);
  }
  // QP transitions: illegal, missing attributes, bad values, ERR with work queued.
  {
    Prog p;
    p.modify(0, 1, 2);                    // RTS → RTR: illegal
    p.modify(0, 1 | (1u << 19), 3);       // cap: not supported
    p.modify(0, 1 | (1u << 5), 0, 3, 2);  // to RESET with a bad port
    p.modify(2, 1, 0).modify(2, 1, 3);    // UC: RESET then RESET → RTS
    p.modify(0, 1 | (1u << 9), 3, 3, 1, 40);  // timeout 40
    p.modify(0, 0xffffffffu, 1);
    save("wr", "modify-illegal", p.b);
    Prog e;
    e.recv(1, {{recv_b}}).send(0, {Wr{}, Wr{}}).modify(0, 1, 6).deliver(4, 0).send(0, {Wr{}}).poll();
    save("wr", "error-flush", e.b);
    Prog r;
    r.send(0, {Wr{}, Wr{}}).modify(0, 1, 0).deliver(2, 0).reconnect(0).recv(1, {{recv_b}}).send(0, {Wr{}}).deliver(4, 0);
    save("wr", "reset-discards", r.b);
    Prog g;
    g.modify(0, 1, 0).modify(0, 1 | (1u << 4) | (1u << 5) | (1u << 3), 1)
        .modify(0, 1 | (1u << 7) | (1u << 8) | (1u << 20) | (1u << 12) | (1u << 17) | (1u << 15), 2, 3, 1, 0, 1);
    save("wr", "modify-bad-gid", g.b);
  }
  // SRQ receives.
  {
    Prog p;
    p.recv(0, {{recv_b}, {recv_b}}, true).send(7, {Wr{}}).deliver(4, 0).modify(6, 1, 6).deliver(4, 0);
    save("wr", "srq", p.b);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR (writes OUT_DIR/rx and OUT_DIR/wr)\n", argv[0]);
    return 2;
  }
  g_out = argv[1];
  rx_structured();
  rx_raw();
  wr_programs();
  return 0;
}
