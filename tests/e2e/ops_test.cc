// Every operation × QP type between two QPs on the loopback port, every byte verified:
// RC SEND/SEND_IMM/WRITE/WRITE_IMM/READ/CMP_SWAP/FETCH_ADD (multi-packet at each path MTU,
// scatter/gather on both sides, inline, zero length, unsignaled, fence), UC SEND/WRITE,
// UD SEND with the GRH at the head of the receive buffer.
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"

using namespace dverbs;

namespace {

struct Env : ::testing::Environment {
  void SetUp() override { setenv("DVERBS_LCORES", "0", 0); }
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

constexpr uint32_t kAll = access::local_write | access::remote_write | access::remote_read |
                          access::remote_atomic;

struct Node {
  Cq cq;
  Qp qp;
  std::vector<uint8_t> buf;
  Mr mr;
};

struct Fabric {
  Context ctx;
  Pd pd;
  Gid gid;
  Node a, b;
  Mtu mtu;

  void init(QpType type, Mtu m = Mtu::mtu1024, size_t bytes = 1 << 22, bool connect = true) {
    auto c = Context::open();
    ASSERT_TRUE(c);
    ctx = c.take();
    ctx.query_gid(1, 0, &gid);
    pd = Pd::alloc(ctx).take();
    mtu = m;
    for (Node* n : {&a, &b}) {
      n->cq = Cq::create(ctx, 4096).take();
      QpInit init;
      init.type = type;
      init.cap = {256, 256, 8, 8, 256};
      auto q = Qp::create(pd, n->cq, n->cq, init);
      ASSERT_TRUE(q) << std::strerror(q.error());
      n->qp = q.take();
      n->buf.assign(bytes, 0);
      auto mr = Mr::reg(pd, n->buf.data(), bytes, kAll);
      ASSERT_TRUE(mr);
      n->mr = mr.take();
    }
    if (!connect) return;
    ASSERT_EQ(a.qp.connect(gid, b.qp.qp_num(), 10, 20, m, kAll), 0);
    ASSERT_EQ(b.qp.connect(gid, a.qp.qp_num(), 20, 10, m, kAll), 0);
  }
};

uint64_t addr(Node& n, size_t off = 0) { return reinterpret_cast<uint64_t>(n.buf.data()) + off; }

void fill(Node& n, size_t off, size_t len, uint32_t seed) {
  std::mt19937 r(seed);
  for (size_t i = 0; i < len; i++) n.buf[off + i] = uint8_t(r());
}

Wc wait(Cq& cq) {
  Wc wc{};
  for (long i = 0; i < 300000000L; i++)
    if (cq.poll(&wc, 1) == 1) return wc;
  ADD_FAILURE() << "no completion";
  wc.status = WcStatus::general_err;
  return wc;
}

int post(Node& n, WrOpcode op, Sge* sg, int nsge, uint64_t raddr, uint32_t rkey,
         uint32_t flags = send_flags::signaled, uint64_t id = 1) {
  SendWr wr{};
  wr.wr_id = id;
  wr.opcode = op;
  wr.sg_list = sg;
  wr.num_sge = nsge;
  wr.send_flags = flags;
  wr.wr.rdma.remote_addr = raddr;
  wr.wr.rdma.rkey = rkey;
  wr.imm_data = htonl(0xabcd0000u + uint32_t(nsge));
  SendWr* bad;
  return n.qp.post_send(&wr, &bad);
}

void post_recv(Node& n, size_t off, uint32_t len, uint64_t id = 2) {
  Sge s{addr(n, off), len, n.mr.lkey()};
  RecvWr wr{};
  wr.wr_id = id;
  wr.sg_list = &s;
  wr.num_sge = 1;
  RecvWr* bad;
  ASSERT_EQ(n.qp.post_recv(&wr, &bad), 0);
}

class RcOps : public ::testing::TestWithParam<Mtu> {};

TEST_P(RcOps, WriteReadAndImmediateAtThisMtu) {
  Fabric f;
  f.init(QpType::rc, GetParam());
  const uint32_t m = mtu_bytes(GetParam());
  for (uint32_t len : {0u, 1u, m - 1, m, m + 1, 5 * m + 3, 300000u}) {
    SCOPED_TRACE(len);
    fill(f.a, 0, len, len);
    Sge s{addr(f.a), len, f.a.mr.lkey()};
    ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, len ? 1 : 0, addr(f.b, 1000), f.b.mr.rkey()), 0);
    Wc wc = wait(f.a.cq);
    ASSERT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
    EXPECT_EQ(wc.opcode, WcOpcode::rdma_write);
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 1000, len), 0);

    // READ it back into another place of A.
    Sge r{addr(f.a, 2000000), len, f.a.mr.lkey()};
    ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &r, len ? 1 : 0, addr(f.b, 1000), f.b.mr.rkey()), 0);
    wc = wait(f.a.cq);
    ASSERT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
    EXPECT_EQ(wc.opcode, WcOpcode::rdma_read);
    EXPECT_EQ(wc.byte_len, len);
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.a.buf.data() + 2000000, len), 0);

    // WRITE with immediate consumes a receive and reports the immediate.
    post_recv(f.b, 0, 0, 77);
    ASSERT_EQ(post(f.a, WrOpcode::rdma_write_with_imm, &s, len ? 1 : 0, addr(f.b, 500000),
                   f.b.mr.rkey()),
              0);
    ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
    wc = wait(f.b.cq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.opcode, WcOpcode::recv_rdma_with_imm);
    EXPECT_EQ(wc.wr_id, 77u);
    EXPECT_EQ(wc.byte_len, len);
    EXPECT_TRUE(wc.wc_flags & wc_flags::with_imm);
    EXPECT_EQ(ntohl(wc.imm_data), 0xabcd0000u + (len ? 1u : 0u));
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 500000, len), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(AllMtus, RcOps,
                         ::testing::Values(Mtu::mtu256, Mtu::mtu512, Mtu::mtu1024, Mtu::mtu2048,
                                           Mtu::mtu4096));

TEST(RcOps, ScatterGatherOnBothSides) {
  Fabric f;
  f.init(QpType::rc);
  fill(f.a, 0, 10000, 5);
  Sge s[3] = {{addr(f.a, 0), 1500, f.a.mr.lkey()},
              {addr(f.a, 4000), 1, f.a.mr.lkey()},
              {addr(f.a, 7000), 2999, f.a.mr.lkey()}};
  Sge r[4] = {{addr(f.b, 100), 1000, f.b.mr.lkey()},
              {addr(f.b, 3000), 7, f.b.mr.lkey()},
              {addr(f.b, 5000), 0, f.b.mr.lkey()},
              {addr(f.b, 9000), 4000, f.b.mr.lkey()}};
  RecvWr rwr{};
  rwr.sg_list = r;
  rwr.num_sge = 4;
  RecvWr* rbad;
  ASSERT_EQ(f.b.qp.post_recv(&rwr, &rbad), 0);
  ASSERT_EQ(post(f.a, WrOpcode::send_with_imm, s, 3, 0, 0), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  Wc wc = wait(f.b.cq);
  ASSERT_EQ(wc.status, WcStatus::success);
  ASSERT_EQ(wc.byte_len, 4500u);
  EXPECT_EQ(ntohl(wc.imm_data), 0xabcd0003u);
  std::vector<uint8_t> sent, got;
  for (auto& x : s) sent.insert(sent.end(), f.a.buf.begin() + long(x.addr - addr(f.a)),
                                f.a.buf.begin() + long(x.addr - addr(f.a) + x.length));
  for (auto& x : r) got.insert(got.end(), f.b.buf.begin() + long(x.addr - addr(f.b)),
                               f.b.buf.begin() + long(x.addr - addr(f.b) + x.length));
  got.resize(4500);
  EXPECT_EQ(sent, got);
}

TEST(RcOps, ReceiveTooSmallIsALocalLengthError) {
  Fabric f;
  f.init(QpType::rc);
  post_recv(f.b, 0, 100);
  Sge s{addr(f.a), 200, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::send, &s, 1, 0, 0), 0);
  Wc wc = wait(f.b.cq);
  EXPECT_EQ(wc.status, WcStatus::loc_len_err);
  wc = wait(f.a.cq);
  EXPECT_EQ(wc.status, WcStatus::rem_inv_req_err);
  EXPECT_EQ(f.a.qp.state(), QpState::err);
}

TEST(RcOps, InlineSendNeedsNoKeyAndMayReuseTheBuffer) {
  Fabric f;
  f.init(QpType::rc);
  post_recv(f.b, 0, 256);
  std::vector<uint8_t> tmp(256);
  for (int i = 0; i < 256; i++) tmp[size_t(i)] = uint8_t(255 - i);
  Sge s{reinterpret_cast<uint64_t>(tmp.data()), 256, 0};  // not registered at all
  ASSERT_EQ(post(f.a, WrOpcode::send, &s, 1, 0, 0,
                 send_flags::signaled | send_flags::inline_data), 0);
  std::vector<uint8_t> want = tmp;
  std::fill(tmp.begin(), tmp.end(), 0);  // reuse at once
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  Wc wc = wait(f.b.cq);
  ASSERT_EQ(wc.status, WcStatus::success);
  EXPECT_EQ(std::memcmp(f.b.buf.data(), want.data(), 256), 0);
}

TEST(RcOps, AtomicsReturnTheOriginalValue) {
  Fabric f;
  f.init(QpType::rc);
  uint64_t* target = reinterpret_cast<uint64_t*>(f.b.buf.data() + 64);
  *target = 100;
  Sge s{addr(f.a, 0), 8, f.a.mr.lkey()};
  SendWr wr{};
  wr.sg_list = &s;
  wr.num_sge = 1;
  wr.send_flags = send_flags::signaled;
  wr.opcode = WrOpcode::atomic_fetch_and_add;
  wr.wr.atomic.remote_addr = addr(f.b, 64);
  wr.wr.atomic.rkey = f.b.mr.rkey();
  wr.wr.atomic.compare_add = 5;
  SendWr* bad;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  Wc wc = wait(f.a.cq);
  ASSERT_EQ(wc.status, WcStatus::success);
  EXPECT_EQ(wc.opcode, WcOpcode::fetch_add);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(f.a.buf.data()), 100u);
  EXPECT_EQ(*target, 105u);
  wr.opcode = WrOpcode::atomic_cmp_and_swp;
  wr.wr.atomic.compare_add = 105;
  wr.wr.atomic.swap = 7;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(f.a.buf.data()), 105u);
  EXPECT_EQ(*target, 7u);
  wr.wr.atomic.compare_add = 1;  // mismatch: no swap
  wr.wr.atomic.swap = 9;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(f.a.buf.data()), 7u);
  EXPECT_EQ(*target, 7u);
  // Misaligned: the responder answers NAK invalid request.
  wr.wr.atomic.remote_addr = addr(f.b, 65);
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_inv_req_err);
}

TEST(RcOps, RemoteAccessViolationsAreNaked) {
  Fabric f;
  f.init(QpType::rc);
  Sge s{addr(f.a), 16, f.a.mr.lkey()};
  // Outside the region.
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, 1, addr(f.b, f.b.buf.size() - 8),
                 f.b.mr.rkey()), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err);
  EXPECT_EQ(f.a.qp.state(), QpState::err);
  EXPECT_EQ(f.b.qp.state(), QpState::err) << "the responder's class C error (IBA 9.9.3.1.3)";
}

TEST(RcOps, WrongRkeyOnReadIsRemoteAccessError) {
  Fabric f;
  f.init(QpType::rc);
  Sge s{addr(f.a), 16, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &s, 1, addr(f.b), f.b.mr.rkey() + 1), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err);
}

TEST(RcOps, UnsignaledRequestsCompleteSilentlyAndInOrder) {
  Fabric f;
  f.init(QpType::rc);
  Sge s{addr(f.a), 64, f.a.mr.lkey()};
  for (int i = 0; i < 50; i++)
    ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, 1, addr(f.b, size_t(i) * 64), f.b.mr.rkey(),
                   i % 10 == 9 ? send_flags::signaled : 0u, uint64_t(i)),
              0);
  for (int i = 9; i < 50; i += 10) {
    Wc wc = wait(f.a.cq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.wr_id, uint64_t(i));
  }
  Wc wc;
  EXPECT_EQ(f.a.cq.poll(&wc, 1), 0);
}

TEST(RcOps, FencedSendSeesTheReadsBeforeIt) {
  Fabric f;
  f.init(QpType::rc);
  fill(f.b, 0, 100000, 9);
  // READ 100 KB into A, then a fenced SEND of that same buffer: with the fence the SEND
  // carries the read data.
  Sge r{addr(f.a), 100000, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &r, 1, addr(f.b), f.b.mr.rkey()), 0);
  post_recv(f.b, 200000, 100000);
  ASSERT_EQ(post(f.a, WrOpcode::send, &r, 1, 0, 0, send_flags::signaled | send_flags::fence), 0);
  ASSERT_EQ(wait(f.a.cq).opcode, WcOpcode::rdma_read);
  ASSERT_EQ(wait(f.a.cq).opcode, WcOpcode::send);
  ASSERT_EQ(wait(f.b.cq).status, WcStatus::success);
  EXPECT_EQ(std::memcmp(f.b.buf.data(), f.b.buf.data() + 200000, 100000), 0);
}

class UcOps : public ::testing::TestWithParam<Mtu> {};

// Every UC operation (SEND, SEND with immediate, WRITE, WRITE with immediate) at this path
// MTU, single- and multi-packet, every byte compared.
TEST_P(UcOps, EveryOperationAtThisMtu) {
  Fabric f;
  f.init(QpType::uc, GetParam());
  const uint32_t m = mtu_bytes(GetParam());
  for (uint32_t len : {0u, 1u, m - 1, m, m + 1, 5 * m + 3, 200000u}) {
    SCOPED_TRACE(len);
    fill(f.a, 0, len, len);
    Sge s{addr(f.a), len, f.a.mr.lkey()};
    for (WrOpcode op : {WrOpcode::send, WrOpcode::send_with_imm}) {
      post_recv(f.b, 300000, len, 5);
      ASSERT_EQ(post(f.a, op, &s, len ? 1 : 0, 0, 0), 0);
      ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
      Wc wc = wait(f.b.cq);
      ASSERT_EQ(wc.status, WcStatus::success);
      EXPECT_EQ(wc.opcode, WcOpcode::recv);
      ASSERT_EQ(wc.byte_len, len);
      const bool imm = op == WrOpcode::send_with_imm;
      EXPECT_EQ(bool(wc.wc_flags & wc_flags::with_imm), imm);
      if (imm) {
        EXPECT_EQ(ntohl(wc.imm_data), 0xabcd0000u + (len ? 1u : 0u));
      }
      ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 300000, len), 0);
      std::memset(f.b.buf.data() + 300000, 0, len);
    }
    ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, len ? 1 : 0, addr(f.b, 1000000),
                   f.b.mr.rkey()), 0);
    ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
    // WRITE with immediate: the receive completes once the data is in place (and, UC
    // having no ACK, it also orders the plain WRITE before it on the same QP).
    post_recv(f.b, 0, 0, 6);
    ASSERT_EQ(post(f.a, WrOpcode::rdma_write_with_imm, &s, len ? 1 : 0, addr(f.b, 2000000),
                   f.b.mr.rkey()), 0);
    ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
    Wc wc = wait(f.b.cq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.opcode, WcOpcode::recv_rdma_with_imm);
    EXPECT_EQ(wc.wr_id, 6u);
    EXPECT_EQ(wc.byte_len, len);
    EXPECT_TRUE(wc.wc_flags & wc_flags::with_imm);
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 1000000, len), 0);
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 2000000, len), 0);
  }
  Sge s{addr(f.a), 8, f.a.mr.lkey()};
  EXPECT_EQ(post(f.a, WrOpcode::rdma_read, &s, 1, addr(f.b), f.b.mr.rkey()), EINVAL)
      << "no READ on UC";
}

INSTANTIATE_TEST_SUITE_P(AllMtus, UcOps,
                         ::testing::Values(Mtu::mtu256, Mtu::mtu512, Mtu::mtu1024, Mtu::mtu2048,
                                           Mtu::mtu4096));

TEST(UdOps, SendCarriesTheGrhAndHonoursTheQkey) {
  Fabric f;
  f.init(QpType::ud, Mtu::mtu1024, 1 << 20, false);
  namespace m = qp_attr_mask;
  for (Node* n : {&f.a, &f.b}) {
    QpAttr a;
    a.qp_state = QpState::init;
    a.port_num = 1;
    a.qkey = 0x11111111;
    ASSERT_EQ(n->qp.modify(a, m::state | m::pkey_index | m::port | m::qkey), 0);
    a.qp_state = QpState::rtr;
    ASSERT_EQ(n->qp.modify(a, m::state), 0);
    a.qp_state = QpState::rts;
    a.sq_psn = 1;
    ASSERT_EQ(n->qp.modify(a, m::state | m::sq_psn), 0);
  }
  AhAttr ah_attr;
  ah_attr.dgid = f.gid;
  auto ah = Ah::create(f.pd, ah_attr);
  ASSERT_TRUE(ah);
  PortAttr pa;
  f.ctx.query_port(1, &pa);
  for (uint32_t len : {0u, 1u, 100u, mtu_bytes(pa.active_mtu)}) {
    fill(f.a, 0, len, len + 1);
    post_recv(f.b, 0, len + 40);
    Sge s{addr(f.a), len, f.a.mr.lkey()};
    SendWr wr{};
    wr.opcode = WrOpcode::send;
    wr.sg_list = &s;
    wr.num_sge = len ? 1 : 0;
    wr.send_flags = send_flags::signaled;
    wr.wr.ud.ah = ah->raw();
    wr.wr.ud.remote_qpn = f.b.qp.qp_num();
    wr.wr.ud.remote_qkey = 0x11111111;
    SendWr* bad;
    ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
    ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
    Wc wc = wait(f.b.cq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.byte_len, len + 40);
    EXPECT_EQ(wc.src_qp, f.a.qp.qp_num());
    EXPECT_TRUE(wc.wc_flags & wc_flags::grh);
    EXPECT_EQ(f.b.buf[20] >> 4, 4) << "IPv4 header in the last 20 bytes of the GRH";
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 40, len), 0);
  }
  // SEND with immediate: the immediate and the flag reach the receiver.
  {
    post_recv(f.b, 0, 140, 9);
    Sge s{addr(f.a), 100, f.a.mr.lkey()};
    SendWr wr{};
    wr.opcode = WrOpcode::send_with_imm;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.send_flags = send_flags::signaled;
    wr.imm_data = htonl(0x5eed1234u);
    wr.wr.ud.ah = ah->raw();
    wr.wr.ud.remote_qpn = f.b.qp.qp_num();
    wr.wr.ud.remote_qkey = 0x11111111;
    SendWr* bad;
    ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
    ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
    Wc wc = wait(f.b.cq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.wr_id, 9u);
    EXPECT_EQ(wc.byte_len, 140u);
    EXPECT_TRUE(wc.wc_flags & wc_flags::with_imm);
    EXPECT_TRUE(wc.wc_flags & wc_flags::grh);
    EXPECT_EQ(ntohl(wc.imm_data), 0x5eed1234u);
    ASSERT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 40, 100), 0);
  }
  // Wrong Q_Key: silently dropped, the receive stays posted.
  post_recv(f.b, 0, 100);
  Sge s{addr(f.a), 10, f.a.mr.lkey()};
  SendWr wr{};
  wr.opcode = WrOpcode::send;
  wr.sg_list = &s;
  wr.num_sge = 1;
  wr.send_flags = send_flags::signaled;
  wr.wr.ud.ah = ah->raw();
  wr.wr.ud.remote_qpn = f.b.qp.qp_num();
  wr.wr.ud.remote_qkey = 0x22222222;
  SendWr* bad;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  wr.wr.ud.remote_qkey = 0x11111111;
  wr.wr_id = 42;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  Wc wc = wait(f.b.cq);
  EXPECT_EQ(wc.byte_len, 50u) << "the first receive got the second datagram";
  // Larger than the path MTU: rejected at post time.
  Sge big{addr(f.a), mtu_bytes(pa.active_mtu) + 1, f.a.mr.lkey()};
  wr.sg_list = &big;
  EXPECT_EQ(f.a.qp.post_send(&wr, &bad), EINVAL);
}

}  // namespace

namespace {

TEST(SrqOps, SeveralQpsShareOneReceiveQueueAndTheLimitEventFires) {
  auto c = Context::open();
  ASSERT_TRUE(c);
  Context ctx = c.take();
  Gid gid;
  ctx.query_gid(1, 0, &gid);
  Pd pd = Pd::alloc(ctx).take();
  std::atomic<int> limit_events{0};
  auto s = Srq::create(pd, 64, 1, 0, [&](EventType t) {
    if (t == EventType::srq_limit_reached) limit_events++;
  });
  ASSERT_TRUE(s) << std::strerror(s.error());
  Srq srq = s.take();
  Cq scq = Cq::create(ctx, 256).take();
  Cq rcq = Cq::create(ctx, 256).take();
  std::vector<uint8_t> buf(1 << 16);
  Mr mr = Mr::reg(pd, buf.data(), buf.size(), kAll).take();
  constexpr int kPairs = 3;
  std::vector<Qp> senders, receivers;
  for (int i = 0; i < kPairs; i++) {
    QpInit si;
    si.cap = {16, 16, 1, 1, 0};
    senders.push_back(Qp::create(pd, scq, scq, si).take());
    QpInit ri = si;
    ri.srq = &srq;
    auto r = Qp::create(pd, rcq, rcq, ri);
    ASSERT_TRUE(r) << std::strerror(r.error());
    receivers.push_back(r.take());
  }
  for (int i = 0; i < kPairs; i++) {
    ASSERT_EQ(senders[size_t(i)].connect(gid, receivers[size_t(i)].qp_num(), 1, 2), 0);
    ASSERT_EQ(receivers[size_t(i)].connect(gid, senders[size_t(i)].qp_num(), 2, 1), 0);
  }
  // The QP's own receive queue is closed when it has an SRQ.
  Sge rs{reinterpret_cast<uint64_t>(buf.data()), 64, mr.lkey()};
  RecvWr rwr{};
  rwr.sg_list = &rs;
  rwr.num_sge = 1;
  RecvWr* rbad;
  EXPECT_EQ(receivers[0].post_recv(&rwr, &rbad), EINVAL);
  for (int i = 0; i < 10; i++) {
    rs.addr = reinterpret_cast<uint64_t>(buf.data()) + uint64_t(i) * 64;
    rwr.wr_id = 1000 + uint64_t(i);
    ASSERT_EQ(srq.post_recv(&rwr, &rbad), 0);
  }
  ASSERT_EQ(srq.arm(5), 0);
  // Six messages: 4 receives remain → below the limit of 5 → one event.
  for (int m = 0; m < 6; m++) {
    Sge ss{reinterpret_cast<uint64_t>(buf.data()) + 32768, 16, mr.lkey()};
    SendWr wr{};
    wr.opcode = WrOpcode::send;
    wr.sg_list = &ss;
    wr.num_sge = 1;
    wr.send_flags = send_flags::signaled;
    SendWr* bad;
    ASSERT_EQ(senders[size_t(m % kPairs)].post_send(&wr, &bad), 0);
    ASSERT_EQ(wait(scq).status, WcStatus::success);
    Wc wc = wait(rcq);
    ASSERT_EQ(wc.status, WcStatus::success);
    EXPECT_EQ(wc.qp_num, receivers[size_t(m % kPairs)].qp_num());
    EXPECT_EQ(wc.wr_id, 1000u + uint64_t(m)) << "receives are taken from the SRQ in order";
  }
  for (long i = 0; i < 1000000000L && limit_events.load() == 0; i++) {
    Wc wc;
    scq.poll(&wc, 0);
  }
  EXPECT_EQ(limit_events.load(), 1);
  EXPECT_EQ(srq.destroy(), EBUSY) << "QPs still use it";
  receivers.clear();
  EXPECT_EQ(srq.destroy(), 0);
}

}  // namespace

namespace {

// Binds `mw` to [off, off+len) of B's buffer through B's own QP (type 2 binds to that QP).
WcStatus bind(Fabric& f, Mw& mw, Qp& qp, Cq& cq, size_t off, uint64_t len, uint32_t acc) {
  SendWr wr{};
  wr.opcode = WrOpcode::bind_mw;
  wr.send_flags = send_flags::signaled;
  wr.bind_mw.mw = mw.raw();
  wr.bind_mw.rkey = mw.next_rkey();
  wr.bind_mw.bind_info.mr = f.b.mr.raw();
  wr.bind_mw.bind_info.addr = addr(f.b, off);
  wr.bind_mw.bind_info.length = len;
  wr.bind_mw.bind_info.mw_access_flags = acc;
  SendWr* bad;
  EXPECT_EQ(qp.post_send(&wr, &bad), 0);
  Wc wc = wait(cq);
  if (wc.status == WcStatus::success) {
    EXPECT_EQ(wc.opcode, WcOpcode::bind_mw);
  }
  return wc.status;
}

TEST(MwOps, Type2WindowGrantsExactlyItsRangeUntilInvalidated) {
  Fabric f;
  f.init(QpType::rc);
  // The region must allow binding.
  f.b.mr = Mr::reg(f.pd, f.b.buf.data(), f.b.buf.size(), kAll | access::mw_bind).take();
  auto m = Mw::alloc(f.pd, 2);
  ASSERT_TRUE(m) << std::strerror(m.error());
  Mw mw = m.take();
  ASSERT_EQ(bind(f, mw, f.b.qp, f.b.cq, 4096, 8192, access::remote_write | access::remote_read),
            WcStatus::success);
  uint32_t rkey = mw.rkey();
  EXPECT_EQ(f.b.mr.destroy(), EBUSY) << "a region with a bound window stays";
  fill(f.a, 0, 8192, 3);
  Sge s{addr(f.a), 8192, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, 1, addr(f.b, 4096), rkey), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  EXPECT_EQ(std::memcmp(f.a.buf.data(), f.b.buf.data() + 4096, 8192), 0);
  // One byte past the window.
  Sge one{addr(f.a), 1, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &one, 1, addr(f.b, 4096 + 8192), rkey), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err);
}

TEST(MwOps, SendWithInvalidateRevokesTheWindow) {
  Fabric f;
  f.init(QpType::rc);
  f.b.mr = Mr::reg(f.pd, f.b.buf.data(), f.b.buf.size(), kAll | access::mw_bind).take();
  Mw mw = Mw::alloc(f.pd, 2).take();
  ASSERT_EQ(bind(f, mw, f.b.qp, f.b.cq, 0, 4096, access::remote_read), WcStatus::success);
  const uint32_t rkey = mw.rkey();
  Sge s{addr(f.a), 64, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &s, 1, addr(f.b), rkey), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  post_recv(f.b, 100000, 64);
  SendWr wr{};
  wr.opcode = WrOpcode::send_with_inv;
  wr.sg_list = &s;
  wr.num_sge = 1;
  wr.send_flags = send_flags::signaled;
  wr.invalidate_rkey = rkey;
  SendWr* bad;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  Wc wc = wait(f.b.cq);
  ASSERT_EQ(wc.status, WcStatus::success);
  EXPECT_TRUE(wc.wc_flags & wc_flags::with_inv);
  EXPECT_EQ(wc.invalidated_rkey, rkey);
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &s, 1, addr(f.b), rkey), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err) << "the window is gone";
}

TEST(MwOps, LocalInvalidateAndRebind) {
  Fabric f;
  f.init(QpType::rc);
  f.b.mr = Mr::reg(f.pd, f.b.buf.data(), f.b.buf.size(), kAll | access::mw_bind).take();
  Mw mw = Mw::alloc(f.pd, 2).take();
  ASSERT_EQ(bind(f, mw, f.b.qp, f.b.cq, 0, 4096, access::remote_read), WcStatus::success);
  EXPECT_EQ(bind(f, mw, f.b.qp, f.b.cq, 0, 4096, access::remote_read), WcStatus::mw_bind_err)
      << "a bound type 2 window must be invalidated before it is bound again";
}

TEST(MwOps, Type1WindowAndBadBinds) {
  Fabric f;
  f.init(QpType::rc);
  Mw mw = Mw::alloc(f.pd, 1).take();
  // The region lacks IBV_ACCESS_MW_BIND: the bind fails.
  EXPECT_EQ(bind(f, mw, f.b.qp, f.b.cq, 0, 4096, access::remote_read), WcStatus::mw_bind_err);
  EXPECT_EQ(Mw::alloc(f.pd, 3).error(), EINVAL);
}

TEST(MwOps, LocalInvalidateByWorkRequest) {
  Fabric f;
  f.init(QpType::rc);
  f.b.mr = Mr::reg(f.pd, f.b.buf.data(), f.b.buf.size(), kAll | access::mw_bind).take();
  Mw mw = Mw::alloc(f.pd, 2).take();
  ASSERT_EQ(bind(f, mw, f.b.qp, f.b.cq, 0, 4096, access::remote_read), WcStatus::success);
  SendWr wr{};
  wr.opcode = WrOpcode::local_inv;
  wr.send_flags = send_flags::signaled;
  wr.invalidate_rkey = mw.rkey();
  SendWr* bad;
  ASSERT_EQ(f.b.qp.post_send(&wr, &bad), 0);
  Wc wc = wait(f.b.cq);
  EXPECT_EQ(wc.status, WcStatus::success);
  EXPECT_EQ(wc.opcode, WcOpcode::local_inv);
  Sge s{addr(f.a), 64, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &s, 1, addr(f.b), mw.rkey()), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err);
}

// dverbsd registers a client's memory at the client's addresses (the iova) while the daemon
// maps it elsewhere (mid::reg_mr_iova): every access — local gather and scatter, remote
// WRITE, READ, atomics, a window bound to the region — must go through the host mapping
// and never dereference the iova itself. The iova here is an address nothing maps.
TEST(Iova, RegionRegisteredAtAnotherAddressIsReachedThroughItsHostMapping) {
  Fabric f;
  f.init(QpType::rc);
  constexpr uint64_t kIova = 0x7ff0deadb000ull;  // unmapped in this process
  constexpr size_t kLen = 200000;
  std::vector<uint8_t> host(kLen, 0);
  mid::Mr* im = nullptr;
  ASSERT_EQ(mid::reg_mr_iova(f.pd.raw(), host.data(), kIova, kLen, kAll | access::mw_bind, &im),
            0);
  EXPECT_EQ(im->addr, kIova);
  // Remote WRITE from A into the iova region of B's PD, multi-packet.
  fill(f.a, 0, 50000, 11);
  Sge s{addr(f.a), 50000, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &s, 1, kIova + 1000, im->rkey), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(host.data() + 1000, f.a.buf.data(), 50000), 0);
  // READ it back into A.
  Sge r{addr(f.a, 100000), 50000, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &r, 1, kIova + 1000, im->rkey), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(f.a.buf.data() + 100000, f.a.buf.data(), 50000), 0);
  // Atomics on an 8-byte word of the host mapping.
  uint64_t word = 40;
  std::memcpy(host.data() + 64, &word, 8);
  Sge at{addr(f.a, 160000), 8, f.a.mr.lkey()};
  SendWr wr{};
  wr.opcode = WrOpcode::atomic_fetch_and_add;
  wr.sg_list = &at;
  wr.num_sge = 1;
  wr.send_flags = send_flags::signaled;
  wr.wr.atomic.remote_addr = kIova + 64;
  wr.wr.atomic.rkey = im->rkey;
  wr.wr.atomic.compare_add = 2;
  SendWr* bad;
  ASSERT_EQ(f.a.qp.post_send(&wr, &bad), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  std::memcpy(&word, host.data() + 64, 8);
  EXPECT_EQ(word, 42u);
  // B sends from and receives into SGEs that name the iova (local gather and scatter).
  fill(f.a, 0, 3000, 12);
  Sge rs{kIova + 100000, 3000, im->lkey};
  RecvWr rwr{};
  rwr.wr_id = 9;
  rwr.sg_list = &rs;
  rwr.num_sge = 1;
  RecvWr* rbad;
  ASSERT_EQ(f.b.qp.post_recv(&rwr, &rbad), 0);
  Sge ss{addr(f.a), 3000, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::send, &ss, 1, 0, 0), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  ASSERT_EQ(wait(f.b.cq).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(host.data() + 100000, f.a.buf.data(), 3000), 0);
  post_recv(f.a, 120000, 3000, 10);
  Sge gs{kIova + 100000, 3000, im->lkey};
  ASSERT_EQ(post(f.b, WrOpcode::send, &gs, 1, 0, 0), 0);
  ASSERT_EQ(wait(f.b.cq).status, WcStatus::success);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(f.a.buf.data() + 120000, host.data() + 100000, 3000), 0);
  // A type 2 window bound inside the region: WRITE through it lands in the host mapping.
  mid::Mw* mw = nullptr;
  ASSERT_EQ(mid::alloc_mw(f.pd.raw(), 2, &mw), 0);
  SendWr bw{};
  bw.opcode = WrOpcode::bind_mw;
  bw.send_flags = send_flags::signaled;
  bw.bind_mw.mw = mw;
  bw.bind_mw.rkey = (mw->rkey & ~0xffu) | 0x5a;
  bw.bind_mw.bind_info.mr = im;
  bw.bind_mw.bind_info.addr = kIova + 150000;
  bw.bind_mw.bind_info.length = 4096;
  bw.bind_mw.bind_info.mw_access_flags = access::remote_write;
  ASSERT_EQ(f.b.qp.post_send(&bw, &bad), 0);
  ASSERT_EQ(wait(f.b.cq).status, WcStatus::success);
  fill(f.a, 0, 4096, 13);
  Sge ws{addr(f.a), 4096, f.a.mr.lkey()};
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &ws, 1, kIova + 150000, bw.bind_mw.rkey), 0);
  ASSERT_EQ(wait(f.a.cq).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(host.data() + 150000, f.a.buf.data(), 4096), 0);
  // Outside the region is still a protection error, judged against the iova.
  ASSERT_EQ(post(f.a, WrOpcode::rdma_write, &ws, 1, kIova + kLen - 100, im->rkey), 0);
  EXPECT_EQ(wait(f.a.cq).status, WcStatus::rem_access_err);
  f.b.qp.destroy();
  EXPECT_EQ(mid::dealloc_mw(mw), 0);
  EXPECT_EQ(mid::dereg_mr(im), 0);
}

// A bind still queued behind a fenced READ when its window is deallocated: the bind must
// not touch the freed window (under ASan a use-after-free fails this test); it completes
// with mw_bind_err, or with success if the engine ran it before the dealloc.
TEST(RcOps, WindowDeallocatedWhileItsBindIsQueued) {
  Fabric f;
  f.init(QpType::rc);
  int errs = 0;
  for (int round = 0; round < 50; round++) {
    mid::Mw* mw = nullptr;
    ASSERT_EQ(mid::alloc_mw(f.pd.raw(), 2, &mw), 0);
    Sge r{addr(f.a, 0), 1u << 21, f.a.mr.lkey()};
    ASSERT_EQ(post(f.a, WrOpcode::rdma_read, &r, 1, addr(f.b), f.b.mr.rkey(), 0, 1), 0);
    SendWr bw{};
    bw.wr_id = 2;
    bw.opcode = WrOpcode::bind_mw;
    bw.send_flags = send_flags::signaled | send_flags::fence;  // waits for the READ
    bw.bind_mw.mw = mw;
    bw.bind_mw.rkey = (mw->rkey & ~0xffu) | 0x11;
    bw.bind_mw.bind_info.mr = f.a.mr.raw();
    bw.bind_mw.bind_info.addr = addr(f.a, 4096);
    bw.bind_mw.bind_info.length = 4096;
    bw.bind_mw.bind_info.mw_access_flags = access::remote_write;
    SendWr* bad;
    ASSERT_EQ(f.a.qp.post_send(&bw, &bad), 0);
    ASSERT_EQ(mid::dealloc_mw(mw), 0);
    Wc wc = wait(f.a.cq);
    ASSERT_EQ(wc.wr_id, 2u);
    ASSERT_TRUE(wc.status == WcStatus::mw_bind_err || wc.status == WcStatus::success)
        << wc_status_str(wc.status);
    if (wc.status != WcStatus::success) {
      errs++;
      // The QP went to ERR with the bind: start the next round on fresh QPs.
      Fabric g;
      g.init(QpType::rc);
      std::swap(f, g);
    }
  }
  RecordProperty("binds_failed", errs);
}

}  // namespace
