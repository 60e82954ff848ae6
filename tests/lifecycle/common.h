// Helpers of the lifecycle tests: the process-wide device, an RC pair with chosen transport
// timers, and a SEND round trip that proves the device still works.
//
// DVERBS_LCORES comes from the meson registration (0: inline progress, 1: a dedicated
// transport lcore racing with the test's destroys). Every wait is bounded by an iteration
// count, never by time.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dverbs/dverbs.h"

namespace dverbs::lifecycle {

constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read |
                          access::remote_atomic;

struct World {
  Context ctx;
  Pd pd;
  Gid gid{};
  static World& get() {
    static World* w = [] {
      setenv("DVERBS_LCORES", "0", 0);  // unless the registration chose
      auto* x = new World();  // lives for the process, like the device
      auto c = Context::open();
      if (!c) {
        ADD_FAILURE() << "Context::open: " << std::strerror(c.error());
        return x;
      }
      x->ctx = c.take();
      x->ctx.query_gid(1, 0, &x->gid);
      x->pd = Pd::alloc(x->ctx).take();
      return x;
    }();
    return *w;
  }
};

struct Timers {
  uint8_t timeout = 14;  // 4.096 us * 2^14 ≈ 67 ms
  uint8_t retry_cnt = 7;
  uint8_t rnr_retry = 7;
  uint8_t min_rnr_timer = 12;
  uint8_t max_rd_atomic = 4;
};

// RESET→INIT→RTR→RTS toward (gid, remote_qpn) with `t`. Returns 0 or the errno.
inline int connect_rc(Qp& qp, const Gid& gid, uint32_t remote_qpn, uint32_t sq_psn,
                      uint32_t rq_psn, const Timers& t = {}, Mtu mtu = Mtu::mtu1024) {
  namespace m = qp_attr_mask;
  QpAttr a;
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.qp_access_flags = kAll;
  if (int rc = qp.modify(a, m::state | m::pkey_index | m::port | m::access_flags)) return rc;
  a = QpAttr{};
  a.qp_state = QpState::rtr;
  a.path_mtu = mtu;
  a.dest_qp_num = remote_qpn;
  a.rq_psn = rq_psn;
  a.max_dest_rd_atomic = 16;
  a.min_rnr_timer = t.min_rnr_timer;
  a.ah_attr.dgid = gid;
  if (int rc = qp.modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn |
                                m::max_dest_rd_atomic | m::min_rnr_timer))
    return rc;
  a = QpAttr{};
  a.qp_state = QpState::rts;
  a.sq_psn = sq_psn;
  a.timeout = t.timeout;
  a.retry_cnt = t.retry_cnt;
  a.rnr_retry = t.rnr_retry;
  a.max_rd_atomic = t.max_rd_atomic;
  return qp.modify(a, m::state | m::sq_psn | m::timeout | m::retry_cnt | m::rnr_retry |
                          m::max_qp_rd_atomic);
}

// Polls one completion, at most `spins` polls.
inline bool poll_one(Cq& cq, Wc* wc, long spins = 50'000'000L) {
  for (long i = 0; i < spins; i++) {
    int n = cq.poll(wc, 1);
    if (n == 1) return true;
    if (n < 0) return false;
  }
  return false;
}

// A fresh RC pair exchanges one SEND with its bytes intact.
inline ::testing::AssertionResult device_still_works() {
  World& w = World::get();
  Cq cq = Cq::create(w.ctx, 16).take();
  QpInit init;
  Qp a = Qp::create(w.pd, cq, cq, init).take();
  Qp b = Qp::create(w.pd, cq, cq, init).take();
  if (connect_rc(a, w.gid, b.qp_num(), 1, 2) || connect_rc(b, w.gid, a.qp_num(), 2, 1))
    return ::testing::AssertionFailure() << "connect failed";
  std::vector<uint8_t> buf(256);
  for (int i = 0; i < 128; i++) buf[size_t(i)] = uint8_t(i * 3);
  Mr mr = Mr::reg(w.pd, buf.data(), buf.size(), kAll).take();
  Sge r{reinterpret_cast<uint64_t>(buf.data()) + 128, 128, mr.lkey()};
  RecvWr rw{};
  rw.wr_id = 2;
  rw.sg_list = &r;
  rw.num_sge = 1;
  RecvWr* rbad;
  if (b.post_recv(&rw, &rbad)) return ::testing::AssertionFailure() << "post_recv";
  Sge s{reinterpret_cast<uint64_t>(buf.data()), 128, mr.lkey()};
  SendWr sw{};
  sw.wr_id = 1;
  sw.opcode = WrOpcode::send;
  sw.sg_list = &s;
  sw.num_sge = 1;
  sw.send_flags = send_flags::signaled;
  SendWr* sbad;
  if (a.post_send(&sw, &sbad)) return ::testing::AssertionFailure() << "post_send";
  for (int i = 0; i < 2; i++) {
    Wc wc;
    if (!poll_one(cq, &wc)) return ::testing::AssertionFailure() << "no completion";
    if (wc.status != WcStatus::success)
      return ::testing::AssertionFailure() << wc_status_str(wc.status);
  }
  if (std::memcmp(buf.data(), buf.data() + 128, 128) != 0)
    return ::testing::AssertionFailure() << "bytes differ";
  return ::testing::AssertionSuccess();
}

}  // namespace dverbs::lifecycle
