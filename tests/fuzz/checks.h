// Checks shared by the fuzz harnesses: a failed invariant prints what broke and aborts, which
// libFuzzer reports as a crash (and saves the input).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "dverbs/types.h"

namespace dverbs::fuzz {

[[noreturn]] inline void invariant_failed(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "\n==== fuzz invariant violated: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::abort();
}

#define FUZZ_CHECK(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond)) ::dverbs::fuzz::invariant_failed("%s:%d: %s — " FUZZ_FIRST(__VA_ARGS__),  \
                                                  __FILE__, __LINE__, #cond                \
                                                  FUZZ_REST(__VA_ARGS__));                 \
  } while (0)
#define FUZZ_FIRST(first, ...) first
#define FUZZ_REST(first, ...) __VA_OPT__(, ) __VA_ARGS__

inline bool valid_status(WcStatus s) { return uint32_t(s) <= uint32_t(WcStatus::general_err); }

inline bool valid_wc_opcode(WcOpcode o) {
  switch (o) {
    case WcOpcode::send:
    case WcOpcode::rdma_write:
    case WcOpcode::rdma_read:
    case WcOpcode::comp_swap:
    case WcOpcode::fetch_add:
    case WcOpcode::bind_mw:
    case WcOpcode::local_inv:
    case WcOpcode::flush:
    case WcOpcode::atomic_write:
    case WcOpcode::recv:
    case WcOpcode::recv_rdma_with_imm: return true;
  }
  return false;
}

inline bool valid_qp_state(QpState s) { return uint32_t(s) <= uint32_t(QpState::err); }

}  // namespace dverbs::fuzz
