// Shared helpers of the stress tests: the connect sequence with chosen transport timers,
// deterministic data patterns, and access to the soft HCA's counters behind the C++ API.
//
// Every wait here is bounded by an iteration count (never by time), so a hang becomes a
// test failure, not a CI timeout.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "dverbs/dverbs.h"
#include "pmd/hca/device.h"

namespace dverbs::stress {

constexpr uint32_t kAllAccess = access::local_write | access::remote_write |
                                access::remote_read | access::remote_atomic;

// Transport attributes the connect sequence sets (IBA 9.7.6.1.3, 9.7.5.2.8).
struct Tuning {
  uint8_t timeout = 8;        // 4.096 us * 2^8 ≈ 1 ms: loss recovery stays quick
  uint8_t retry_cnt = 7;
  uint8_t rnr_retry = 7;      // 7 = retry forever
  uint8_t min_rnr_timer = 1;  // the smallest RNR NAK timer (10 us)
  uint8_t max_rd_atomic = 16;
  uint8_t max_dest_rd_atomic = 16;
};

// RESET→INIT→RTR→RTS of an RC QP toward (gid, remote_qpn), like Qp::connect but with the
// timers of `t`. Returns 0 or the errno of the failing modify.
inline int connect_rc(Qp& qp, const Gid& gid, uint32_t remote_qpn, uint32_t local_psn,
                      uint32_t remote_psn, Mtu mtu, const Tuning& t = {}) {
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.pkey_index = 0;
  a.qp_access_flags = kAllAccess;
  if (int rc = qp.modify(a, m::state | m::pkey_index | m::port | m::access_flags)) return rc;
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.path_mtu = mtu;
  a.dest_qp_num = remote_qpn;
  a.rq_psn = remote_psn;
  a.max_dest_rd_atomic = t.max_dest_rd_atomic;
  a.min_rnr_timer = t.min_rnr_timer;
  a.ah_attr.dgid = gid;
  a.ah_attr.is_global = true;
  a.ah_attr.port_num = 1;
  if (int rc = qp.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                                m::max_dest_rd_atomic | m::min_rnr_timer))
    return rc;
  a = QpAttr{};
  a.qp_state = QpState::rts;
  a.sq_psn = local_psn;
  a.timeout = t.timeout;
  a.retry_cnt = t.retry_cnt;
  a.rnr_retry = t.rnr_retry;
  a.max_rd_atomic = t.max_rd_atomic;
  return qp.modify(a, m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry |
                          m::max_qp_rd_atomic);
}

// The soft HCA objects behind the C++ handles (the pmd is the only driver).
inline pmd::hca::Device& hca(const Context& ctx) {
  return *static_cast<pmd::hca::Device*>(ctx.raw());
}
inline pmd::hca::Qp& hqp(const Qp& qp) { return *pmd::hca::to_qp(qp.raw()); }

// splitmix64 finaliser: the pattern generator.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Byte i of the pattern `seed` depends on seed and i only.
inline void fill_pattern(uint8_t* p, size_t len, uint64_t seed) {
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = mix64(seed * 0x100000001b3ull + i);
    std::memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = mix64(seed * 0x100000001b3ull + i);
    std::memcpy(p + i, &v, len - i);
  }
}

// Offset of the first byte that differs from the pattern, or -1.
inline long check_pattern(const uint8_t* p, size_t len, uint64_t seed) {
  for (size_t i = 0; i < len; i += 8) {
    uint64_t v = mix64(seed * 0x100000001b3ull + i);
    size_t n = len - i < 8 ? len - i : 8;
    if (std::memcmp(p + i, &v, n) != 0) {
      const uint8_t* b = reinterpret_cast<const uint8_t*>(&v);
      for (size_t k = 0; k < n; k++)
        if (p[i + k] != b[k]) return long(i + k);
    }
  }
  return -1;
}

// Polls one completion, at most `spins` polls. Returns false on a hang.
inline bool poll_one(Cq& cq, Wc* wc, long spins = 100000000L) {
  for (long i = 0; i < spins; i++) {
    int n = cq.poll(wc, 1);
    if (n == 1) return true;
    if (n < 0) return false;
  }
  return false;
}

// Polls `spins` times and returns how many completions showed up (expected: none).
inline int poll_extra(Cq& cq, long spins) {
  int extra = 0;
  Wc wc[16];
  for (long i = 0; i < spins; i++) {
    int n = cq.poll(wc, 16);
    if (n > 0) extra += n;
  }
  return extra;
}

}  // namespace dverbs::stress
