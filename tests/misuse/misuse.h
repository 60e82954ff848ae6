// Shared fixture of the verbs-misuse tests (suite `unit`): every misuse gets its documented
// errno or work-completion status, and the process and the other QPs keep working.
//
// One device on the built-in loopback port in inline-progress mode (DVERBS_LCORES=0) with
// the background helper stopped: the engine runs only inside poll()/post_send(), so every
// outcome is deterministic. A "bystander" RC pair lives for the whole process;
// MisuseTest::TearDown sends a message across it after every test, so a misuse that broke
// the device, the engine or another QP fails the test that caused it.
//
// Every wait is bounded by an iteration count, never by time.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "dverbs/dverbs.h"

namespace dverbs::misuse {

constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read |
                          access::remote_atomic;

// The process-wide context, PDs and GID (opened on first use).
struct Device {
  Context ctx;
  Pd pd, pd2;  // pd2: "another PD"
  Gid gid{};
  static Device& get();
};

// A buffer with its registration.
struct Buf {
  std::vector<uint64_t> store;  // 8-byte aligned
  Mr mr;
  uint8_t* data() { return reinterpret_cast<uint8_t*>(store.data()); }
  uint64_t addr(size_t off = 0) { return reinterpret_cast<uint64_t>(data()) + off; }
  size_t size() const { return store.size() * 8; }
  // Allocates `bytes` (a multiple of 8) and registers them in `pd` with `access`.
  void init(Pd& pd, size_t bytes, uint32_t access);
};

// Two connected QPs (A → B) with one CQ each and a registered buffer each.
struct Pair {
  Cq cqa, cqb;
  Qp a, b;
  Buf ba, bb;
  // b_access: the responder B's QP access flags; mr_access: both buffers' MR flags.
  void init(QpType type = QpType::rc, uint32_t b_access = kAll, uint32_t mr_access = kAll,
            QpCap cap = {16, 16, 4, 4, 0}, const Srq* srq_b = nullptr);
};

// The next completion of `cq` (ADD_FAILURE and a general_err completion if none arrives
// within a bounded number of polls).
Wc wait(Cq& cq);
// True if `cq` stays empty for a bounded number of polls (the engine runs inside poll).
bool stays_empty(Cq& cq, int polls = 20000);

// A signaled work request over one SGE (num_sge 0 when len is 0).
SendWr send_wr(WrOpcode op, Sge* sge, uint64_t wr_id = 1);
int post(Qp& qp, SendWr& wr, SendWr** bad = nullptr);
int post_recv(Qp& qp, uint64_t addr, uint32_t len, uint32_t lkey, uint64_t wr_id = 2);

// One SEND across the process-wide bystander pair, with its bytes checked.
::testing::AssertionResult bystander_ok();

class MisuseTest : public ::testing::Test {
 protected:
  Device& dev = Device::get();
  void TearDown() override { EXPECT_TRUE(bystander_ok()); }
};

}  // namespace dverbs::misuse
