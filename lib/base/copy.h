// A byte copy for the small, variable sizes of the packet path (inline data, 64-byte
// payloads, headers): up to 64 bytes it is two overlapping fixed-size moves, which the
// compiler emits as a few loads and stores instead of a call into the C library's memcpy;
// larger copies are memcpy's.
//
// Thread safety: none needed (pure function). Context: any, never sleeps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dverbs::base {

namespace detail {
// Copies n bytes, W <= n <= 2 * W, as the first W and the last W bytes (they may overlap).
template <size_t W>
inline void copy_two(uint8_t* d, const uint8_t* s, size_t n) noexcept {
  struct Chunk {
    uint8_t b[W];
  };
  Chunk head, tail;
  std::memcpy(&head, s, W);
  std::memcpy(&tail, s + n - W, W);
  std::memcpy(d, &head, W);
  std::memcpy(d + n - W, &tail, W);
}
}  // namespace detail

// memcpy's contract: the two ranges do not overlap. Context: any, never sleeps.
inline void copy_bytes(void* dst, const void* src, size_t n) noexcept {
  auto* d = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  if (n > 64) {
    std::memcpy(d, s, n);
  } else if (n >= 32) {
    detail::copy_two<32>(d, s, n);
  } else if (n >= 16) {
    detail::copy_two<16>(d, s, n);
  } else if (n >= 8) {
    detail::copy_two<8>(d, s, n);
  } else if (n >= 4) {
    detail::copy_two<4>(d, s, n);
  } else if (n != 0) {  // 1 to 3 bytes: first, middle, last
    d[0] = s[0];
    d[n / 2] = s[n / 2];
    d[n - 1] = s[n - 1];
  }
}

}  // namespace dverbs::base
