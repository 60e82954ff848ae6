// Wire layer micro-benchmarks: header build and parse, ICRC via ISA-L against a bytewise
// (table-driven) and a bitwise CRC-32 in the same run.
#include "pmd/wire/roce.h"

#include <benchmark/benchmark.h>

#include <array>
#include <vector>

namespace {

using namespace dverbs::pmd::wire;

constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int b = 0; b < 8; b++) c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr auto kCrcTable = make_crc_table();

// The classic one-table-lookup-per-byte CRC-32 (what a naive ICRC would do).
uint32_t crc32_bytewise(uint32_t crc, const uint8_t* p, size_t n) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; i++) c = kCrcTable[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t crc32_bitwise(uint32_t crc, const uint8_t* p, size_t n) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

std::vector<uint8_t> packet_bytes(size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; i++) b[i] = uint8_t(i * 131 + 7);
  b[0] = 0x45;
  return b;
}

void BM_IcrcIsal(benchmark::State& s) {
  auto b = packet_bytes(size_t(s.range(0)));
  for (auto _ : s) benchmark::DoNotOptimize(icrc_compute(b.data(), uint32_t(b.size())));
  s.SetBytesProcessed(int64_t(s.iterations()) * s.range(0));
}
BENCHMARK(BM_IcrcIsal)->Arg(64)->Arg(1024)->Arg(4096);

void BM_Crc32Bytewise(benchmark::State& s) {
  auto b = packet_bytes(size_t(s.range(0)));
  for (auto _ : s) benchmark::DoNotOptimize(crc32_bytewise(0, b.data(), b.size()));
  s.SetBytesProcessed(int64_t(s.iterations()) * s.range(0));
}
BENCHMARK(BM_Crc32Bytewise)->Arg(64)->Arg(1024)->Arg(4096);

void BM_Crc32Bitwise(benchmark::State& s) {
  auto b = packet_bytes(size_t(s.range(0)));
  for (auto _ : s) benchmark::DoNotOptimize(crc32_bitwise(0, b.data(), b.size()));
  s.SetBytesProcessed(int64_t(s.iterations()) * s.range(0));
}
BENCHMARK(BM_Crc32Bitwise)->Arg(64)->Arg(1024)->Arg(4096);

const FrameAddr kAddr = {{0x02, 0, 0, 0, 0, 1}, {0x02, 0, 0, 0, 0, 2}, 0x0a000001, 0x0a000002,
                         0xc123, 0, 64};

// Headers only: what the requester does per packet before copying the payload.
void BM_WriteHeaders(benchmark::State& s) {
  std::vector<uint8_t> f(headers_len(op::kWriteOnly) + 64);
  uint32_t psn = 0;
  for (auto _ : s) {
    BthFields t{op::kWriteOnly, false, true, 0, kDefaultPkey, 0x123, psn++ & kPsnMask};
    uint8_t* ext = write_headers(f.data(), kAddr, t, 0);
    write_reth(ext, 0x1000, 0x55, 0);
    benchmark::DoNotOptimize(f.data());
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_WriteHeaders);

std::vector<uint8_t> build_send(uint32_t payload) {
  std::vector<uint8_t> f(headers_len(op::kSendOnly) + payload + pad_for(payload) + kIcrcLen);
  BthFields t{op::kSendOnly, false, true, pad_for(payload), kDefaultPkey, 0x123, 7};
  uint8_t* p = write_headers(f.data(), kAddr, t, payload);
  for (uint32_t i = 0; i < payload; i++) p[i] = uint8_t(i);
  finish_frame(f.data(), uint32_t(f.size()));
  return f;
}

// Full build of a SEND_ONLY frame: headers + IP checksum + ICRC.
void BM_BuildFrame(benchmark::State& s) {
  auto f = build_send(uint32_t(s.range(0)));
  BthFields t{op::kSendOnly, false, true, pad_for(uint32_t(s.range(0))), kDefaultPkey, 0x123, 7};
  for (auto _ : s) {
    write_headers(f.data(), kAddr, t, uint32_t(s.range(0)));
    benchmark::DoNotOptimize(finish_frame(f.data(), uint32_t(f.size())));
  }
  s.SetBytesProcessed(int64_t(s.iterations()) * int64_t(f.size()));
}
BENCHMARK(BM_BuildFrame)->Arg(0)->Arg(1024)->Arg(4096);

void BM_ParseFrame(benchmark::State& s) {
  auto f = build_send(uint32_t(s.range(0)));
  const bool icrc = s.range(1);
  Packet p;
  for (auto _ : s) {
    benchmark::DoNotOptimize(parse_frame(f.data(), uint32_t(f.size()), &p, icrc));
    benchmark::ClobberMemory();
  }
  s.SetBytesProcessed(int64_t(s.iterations()) * int64_t(f.size()));
}
BENCHMARK(BM_ParseFrame)->ArgsProduct({{0, 1024, 4096}, {0, 1}});

}  // namespace

BENCHMARK_MAIN();
