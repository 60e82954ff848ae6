// Memory protection misuse: each becomes a work-completion status, never an access.
//
//   misuse                                              requester (A)      responder (B)
//   SGE lkey of an MR of another PD                     loc_prot_err       —
//   lkey + 1 / lkey − 1 (generation byte)               loc_prot_err       —
//   SGE straddling the end of its MR / before its start loc_prot_err       —
//   receive SGE in an MR without local write            rem_op_err         loc_prot_err
//   READ into a local MR without local write            loc_prot_err       —
//   READ of an MR without remote read                   rem_access_err     (ERR)
//   WRITE into an MR without remote write               rem_access_err     (ERR)
//   atomic on an MR without remote atomic               rem_access_err     (ERR)
//   responder QP without remote write access            rem_access_err     (ERR)
//   rkey + 1, rkey of another PD's MR                   rem_access_err     (ERR)
//   remote range straddling the end of the MR           rem_access_err     (ERR)
//   unaligned atomic (remote address % 8 != 0)          rem_inv_req_err    (ERR)
//   type 2 window used through a QP it is not bound to  rem_access_err     (ERR)
//   MR deregistered while a WR naming it is queued      loc_prot_err       —
//   bad lkey on a WR behind one still in flight         loc_prot_err on    —
//                                                       that WR (a regression test now)
//   stale rkey (MR deregistered)                        rem_access_err     (ERR)
// A requester error moves A to ERR and flushes what follows (wr_flush_err).
#include <cstring>

#include "misuse.h"

namespace dverbs::misuse {
namespace {

class Access : public MisuseTest {
 protected:
  Pair p;
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(p.init()); }

  // Posts `wr` on A and returns its completion; checks A ended in ERR unless success.
  Wc run(SendWr wr) {
    EXPECT_EQ(post(p.a, wr), 0);
    Wc wc = wait(p.cqa);
    EXPECT_EQ(wc.wr_id, wr.wr_id);
    if (wc.status != WcStatus::success) {
      EXPECT_EQ(p.a.state(), QpState::err);
    }
    return wc;
  }
  // A signaled SEND behind the failed WR is flushed, in order.
  void expect_flushed_after() {
    Sge s{p.ba.addr(), 8, p.ba.mr.lkey()};
    SendWr w = send_wr(WrOpcode::send, &s, 99);
    ASSERT_EQ(post(p.a, w), 0);
    Wc wc = wait(p.cqa);
    EXPECT_EQ(wc.wr_id, 99u);
    EXPECT_EQ(wc.status, WcStatus::wr_flush_err) << wc_status_str(wc.status);
  }
};

TEST_F(Access, LkeyOfAnotherPdIsALocalProtectionError) {
  Buf other;
  other.init(dev.pd2, 4096, kAll);
  Sge s{other.addr(), 64, other.mr.lkey()};
  EXPECT_EQ(run(send_wr(WrOpcode::send, &s)).status, WcStatus::loc_prot_err);
  expect_flushed_after();
}

TEST_F(Access, LkeyOffByOneIsALocalProtectionError) {
  for (int delta : {+1, -1}) {
    SCOPED_TRACE(delta);
    Pair q;
    ASSERT_NO_FATAL_FAILURE(q.init());
    Sge s{q.ba.addr(), 64, q.ba.mr.lkey() + uint32_t(delta)};
    SendWr w = send_wr(WrOpcode::rdma_write, &s);
    w.wr.rdma.remote_addr = q.bb.addr();
    w.wr.rdma.rkey = q.bb.mr.rkey();
    ASSERT_EQ(post(q.a, w), 0);
    EXPECT_EQ(wait(q.cqa).status, WcStatus::loc_prot_err);
  }
}

TEST_F(Access, SgeStraddlingTheEndOrStartOfItsMrIsALocalProtectionError) {
  Sge s{p.ba.addr(p.ba.size() - 8), 16, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_write, &s);
  w.wr.rdma.remote_addr = p.bb.addr();
  w.wr.rdma.rkey = p.bb.mr.rkey();
  EXPECT_EQ(run(w).status, WcStatus::loc_prot_err);
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init());
  Sge t{q.ba.addr() - 1, 16, q.ba.mr.lkey()};
  w = send_wr(WrOpcode::rdma_write, &t);
  w.wr.rdma.remote_addr = q.bb.addr();
  w.wr.rdma.rkey = q.bb.mr.rkey();
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::loc_prot_err);
}

TEST_F(Access, ReceiveBufferWithoutLocalWriteFailsBothSides) {
  Buf ro;
  ro.init(dev.pd, 4096, access::remote_read);  // no local write
  ASSERT_EQ(post_recv(p.b, ro.addr(), 256, ro.mr.lkey(), 7), 0);
  Sge s{p.ba.addr(), 64, p.ba.mr.lkey()};
  EXPECT_EQ(run(send_wr(WrOpcode::send, &s)).status, WcStatus::rem_op_err);
  Wc r = wait(p.cqb);
  EXPECT_EQ(r.wr_id, 7u);
  EXPECT_EQ(r.status, WcStatus::loc_prot_err);
  EXPECT_EQ(p.b.state(), QpState::err);
  for (size_t i = 0; i < 256; i++) ASSERT_EQ(ro.data()[i], 0) << "written at " << i;
}

TEST_F(Access, ReadIntoALocalMrWithoutLocalWriteIsALocalProtectionError) {
  Buf ro;
  ro.init(dev.pd, 4096, access::remote_read);
  Sge s{ro.addr(), 64, ro.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_read, &s);
  w.wr.rdma.remote_addr = p.bb.addr();
  w.wr.rdma.rkey = p.bb.mr.rkey();
  std::memset(p.bb.data(), 0x5a, 64);
  EXPECT_EQ(run(w).status, WcStatus::loc_prot_err);
  for (size_t i = 0; i < 64; i++) ASSERT_EQ(ro.data()[i], 0) << "written at " << i;
}

struct RemoteCase {
  const char* name;
  WrOpcode op;
  uint32_t mr_access;  // of B's target region
  WcStatus want;
};

class RemoteAccess : public Access, public ::testing::WithParamInterface<RemoteCase> {};

TEST_P(RemoteAccess, MissingPermissionIsARemoteAccessError) {
  const RemoteCase& c = GetParam();
  Buf target;
  target.init(dev.pd, 4096, c.mr_access);
  std::memset(target.data(), 0x11, 4096);
  const bool atomic = c.op == WrOpcode::atomic_fetch_and_add;
  Sge s{p.ba.addr(), atomic ? 8u : 64u, p.ba.mr.lkey()};
  SendWr w = send_wr(c.op, &s);
  if (atomic) {
    w.wr.atomic.remote_addr = target.addr(64);
    w.wr.atomic.rkey = target.mr.rkey();
    w.wr.atomic.compare_add = 1;
  } else {
    w.wr.rdma.remote_addr = target.addr(64);
    w.wr.rdma.rkey = target.mr.rkey();
  }
  EXPECT_EQ(run(w).status, c.want) << c.name;
  for (size_t i = 0; i < 4096; i++) ASSERT_EQ(target.data()[i], 0x11) << "written at " << i;
  EXPECT_EQ(p.b.state(), QpState::err) << "a remote access error is fatal for the responder";
}

INSTANTIATE_TEST_SUITE_P(
    Permissions, RemoteAccess,
    ::testing::Values(
        RemoteCase{"read", WrOpcode::rdma_read, access::local_write | access::remote_write,
                   WcStatus::rem_access_err},
        RemoteCase{"write", WrOpcode::rdma_write, access::remote_read, WcStatus::rem_access_err},
        RemoteCase{"atomic", WrOpcode::atomic_fetch_and_add,
                   access::local_write | access::remote_write | access::remote_read,
                   WcStatus::rem_access_err}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(Access, ResponderQpWithoutRemoteWriteRefusesAWrite) {
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init(QpType::rc, access::remote_read));
  Sge s{q.ba.addr(), 64, q.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_write, &s);
  w.wr.rdma.remote_addr = q.bb.addr();
  w.wr.rdma.rkey = q.bb.mr.rkey();
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::rem_access_err);
}

TEST_F(Access, RkeyOffByOneOrOfAnotherPdIsARemoteAccessError) {
  Buf other;
  other.init(dev.pd2, 4096, kAll);
  for (int i = 0; i < 3; i++) {
    SCOPED_TRACE(i);
    Pair q;
    ASSERT_NO_FATAL_FAILURE(q.init());
    Sge s{q.ba.addr(), 64, q.ba.mr.lkey()};
    SendWr w = send_wr(WrOpcode::rdma_write, &s);
    w.wr.rdma.rkey = i == 0 ? q.bb.mr.rkey() + 1 : i == 1 ? q.bb.mr.rkey() - 1 : other.mr.rkey();
    w.wr.rdma.remote_addr = i < 2 ? q.bb.addr() : other.addr();
    ASSERT_EQ(post(q.a, w), 0);
    EXPECT_EQ(wait(q.cqa).status, WcStatus::rem_access_err);
  }
  for (size_t i = 0; i < 4096; i++) ASSERT_EQ(other.data()[i], 0);
}

TEST_F(Access, RemoteRangeStraddlingTheEndIsARemoteAccessError) {
  Sge s{p.ba.addr(), 16, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_read, &s);
  w.wr.rdma.remote_addr = p.bb.addr(p.bb.size() - 8);
  w.wr.rdma.rkey = p.bb.mr.rkey();
  EXPECT_EQ(run(w).status, WcStatus::rem_access_err);
  expect_flushed_after();
}

TEST_F(Access, UnalignedAtomicIsARemoteInvalidRequest) {
  uint64_t* target = reinterpret_cast<uint64_t*>(p.bb.data() + 64);
  *target = 7;
  Sge s{p.ba.addr(), 8, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::atomic_cmp_and_swp, &s);
  w.wr.atomic.remote_addr = p.bb.addr(68);
  w.wr.atomic.rkey = p.bb.mr.rkey();
  w.wr.atomic.compare_add = 7;
  w.wr.atomic.swap = 9;
  EXPECT_EQ(run(w).status, WcStatus::rem_inv_req_err);
  EXPECT_EQ(*target, 7u);
}

TEST_F(Access, Type2WindowOnlyServesTheQpItIsBoundTo) {
  // Windows need MW_BIND on the region.
  Buf region;
  region.init(dev.pd, 8192, kAll | access::mw_bind);
  auto m = Mw::alloc(dev.pd, 2);
  ASSERT_TRUE(m);
  Mw mw = m.take();
  SendWr bind{};
  bind.wr_id = 5;
  bind.opcode = WrOpcode::bind_mw;
  bind.send_flags = send_flags::signaled;
  bind.bind_mw.mw = mw.raw();
  bind.bind_mw.rkey = mw.next_rkey();
  bind.bind_mw.bind_info.mr = region.mr.raw();
  bind.bind_mw.bind_info.addr = region.addr();
  bind.bind_mw.bind_info.length = 4096;
  bind.bind_mw.bind_info.mw_access_flags = access::remote_write;
  ASSERT_EQ(post(p.b, bind), 0);
  ASSERT_EQ(wait(p.cqb).status, WcStatus::success);
  // Another pair's responder gets the window's rkey: refused.
  Pair q;
  ASSERT_NO_FATAL_FAILURE(q.init());
  Sge s{q.ba.addr(), 64, q.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_write, &s);
  w.wr.rdma.remote_addr = region.addr();
  w.wr.rdma.rkey = mw.rkey();
  ASSERT_EQ(post(q.a, w), 0);
  EXPECT_EQ(wait(q.cqa).status, WcStatus::rem_access_err);
  // Through the QP it is bound to: granted.
  ASSERT_EQ(post(p.a, w), 0);
  EXPECT_EQ(wait(p.cqa).status, WcStatus::success);
  // A region with a bound window cannot go.
  EXPECT_EQ(region.mr.destroy(), EBUSY);
  EXPECT_EQ(mw.destroy(), 0);
  EXPECT_EQ(region.mr.destroy(), 0);
}

// Memory is checked when it is used, not when the WR is posted (IBA 10.6.3.2), and the error
// completes the WR that caused it: WRs before it complete (successfully if their ACK came
// first, else flushed), never with its error.
class AccessRegression : public Access {};

TEST_F(Access, MrDeregisteredWhileItsWrIsQueuedIsALocalProtectionError) {
  // Hold a fenced WRITE behind a READ that B (in RESET) does not answer yet.
  QpAttr r;
  r.qp_state = QpState::reset;
  ASSERT_EQ(p.b.modify(r, qp_attr_mask::state), 0);
  std::memset(p.bb.data(), 0x42, 64);
  Sge rd{p.ba.addr(), 64, p.ba.mr.lkey()};
  SendWr read = send_wr(WrOpcode::rdma_read, &rd, 1);
  read.wr.rdma.remote_addr = p.bb.addr();
  read.wr.rdma.rkey = p.bb.mr.rkey();
  ASSERT_EQ(post(p.a, read), 0);
  Buf src;
  src.init(dev.pd, 4096, kAll);
  std::memset(src.data(), 0x77, 4096);
  Sge t{src.addr(), 256, src.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_write, &t, 2);
  w.send_flags |= send_flags::fence;
  w.wr.rdma.remote_addr = p.bb.addr(4096);
  w.wr.rdma.rkey = p.bb.mr.rkey();
  ASSERT_EQ(post(p.a, w), 0);
  EXPECT_TRUE(stays_empty(p.cqa));
  ASSERT_EQ(src.mr.destroy(), 0);
  // B comes back; A's retransmission timer resends the READ, then the WRITE may go.
  ASSERT_EQ(p.b.connect(dev.gid, p.a.qp_num(), 200, 100, Mtu::mtu1024, kAll), 0);
  Wc c1 = wait(p.cqa);
  EXPECT_EQ(c1.wr_id, 1u);
  EXPECT_EQ(c1.status, WcStatus::success) << wc_status_str(c1.status);
  EXPECT_EQ(p.ba.data()[0], 0x42);
  Wc c2 = wait(p.cqa);
  EXPECT_EQ(c2.wr_id, 2u);
  EXPECT_EQ(c2.status, WcStatus::loc_prot_err) << wc_status_str(c2.status);
  for (size_t i = 0; i < 256; i++) ASSERT_EQ(p.bb.data()[4096 + i], 0) << "written at " << i;
}

TEST_F(AccessRegression, BadLkeyBehindAGoodWrFailsItsOwnWr) {
  ASSERT_EQ(post_recv(p.b, p.bb.addr(), 64, p.bb.mr.lkey(), 3), 0);
  Sge good{p.ba.addr(), 8, p.ba.mr.lkey()};
  Sge bad{p.ba.addr(), 8, p.ba.mr.lkey() + 1};
  SendWr w[2] = {send_wr(WrOpcode::send, &good, 1), send_wr(WrOpcode::rdma_write, &bad, 2)};
  w[1].wr.rdma.remote_addr = p.bb.addr(4096);
  w[1].wr.rdma.rkey = p.bb.mr.rkey();
  w[0].next = &w[1];
  SendWr* b = nullptr;
  ASSERT_EQ(p.a.post_send(&w[0], &b), 0);
  Wc c1 = wait(p.cqa);
  EXPECT_EQ(c1.wr_id, 1u);
  EXPECT_TRUE(c1.status == WcStatus::success || c1.status == WcStatus::wr_flush_err)
      << "the SEND was fine, got " << wc_status_str(c1.status);
  Wc c2 = wait(p.cqa);
  EXPECT_EQ(c2.wr_id, 2u);
  EXPECT_EQ(c2.status, WcStatus::loc_prot_err) << wc_status_str(c2.status);
}

TEST_F(Access, StaleRkeyIsARemoteAccessError) {
  Buf gone;
  gone.init(dev.pd, 4096, kAll);
  const uint32_t rkey = gone.mr.rkey();
  const uint64_t addr = gone.addr();
  ASSERT_EQ(gone.mr.destroy(), 0);
  Sge s{p.ba.addr(), 64, p.ba.mr.lkey()};
  SendWr w = send_wr(WrOpcode::rdma_read, &s);
  w.wr.rdma.remote_addr = addr;
  w.wr.rdma.rkey = rkey;
  EXPECT_EQ(run(w).status, WcStatus::rem_access_err);
  // A new registration of the same memory has a different key; the old one stays dead.
  auto again = Mr::reg(dev.pd, gone.data(), 4096, kAll);
  ASSERT_TRUE(again);
  EXPECT_NE(again->rkey(), rkey);
}

}  // namespace
}  // namespace dverbs::misuse
