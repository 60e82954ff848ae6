// The largest message verbs allow (2^31 bytes, ibv_query_port max_msg_sz): one RDMA WRITE,
// one RDMA READ back and one SEND of 2 GiB between two RC QPs on the loopback port, every
// byte compared. Bounded by iteration counts, never by time.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "dverbs/dverbs.h"

using namespace dverbs;

namespace {

constexpr uint64_t kLen = 1ull << 31;

struct Mapping {
  uint8_t* p = nullptr;
  explicit Mapping(uint64_t n) {
    void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = m == MAP_FAILED ? nullptr : static_cast<uint8_t*>(m);
  }
  ~Mapping() {
    if (p) munmap(p, kLen);
  }
};

Wc wait(Cq& cq) {
  Wc wc{};
  for (long i = 0; i < 20'000'000'000L; i++)
    if (cq.poll(&wc, 1) == 1) return wc;
  ADD_FAILURE() << "no completion";
  wc.status = WcStatus::general_err;
  return wc;
}

TEST(LargeMessage, TwoGiBWriteReadAndSend) {
  setenv("DVERBS_LCORES", "0", 0);
  Mapping a(kLen), b(kLen);
  if (!a.p || !b.p) GTEST_SKIP() << "cannot map 2 x 2 GiB here";
  for (uint64_t i = 0; i < kLen; i += 8) {
    uint64_t v = i * 0x9e3779b97f4a7c15ull;
    std::memcpy(a.p + i, &v, 8);
  }
  auto c = Context::open();
  ASSERT_TRUE(c);
  Context ctx = c.take();
  PortAttr pa;
  ASSERT_EQ(ctx.query_port(1, &pa), 0);
  ASSERT_GE(uint64_t(pa.max_msg_sz), kLen);
  Gid gid;
  ctx.query_gid(1, 0, &gid);
  Pd pd = Pd::alloc(ctx).take();
  Cq cqa = Cq::create(ctx, 16).take(), cqb = Cq::create(ctx, 16).take();
  QpInit init;
  Qp qa = Qp::create(pd, cqa, cqa, init).take(), qb = Qp::create(pd, cqb, cqb, init).take();
  const uint32_t acc = access::local_write | access::remote_write | access::remote_read;
  ASSERT_EQ(qa.connect(gid, qb.qp_num(), 7, 9, pa.active_mtu, acc), 0);
  ASSERT_EQ(qb.connect(gid, qa.qp_num(), 9, 7, pa.active_mtu, acc), 0);
  Mr ma = Mr::reg(pd, a.p, kLen, acc).take(), mb = Mr::reg(pd, b.p, kLen, acc).take();

  Sge s{reinterpret_cast<uint64_t>(a.p), uint32_t(kLen), ma.lkey()};
  SendWr wr{};
  wr.opcode = WrOpcode::rdma_write;
  wr.sg_list = &s;
  wr.num_sge = 1;
  wr.send_flags = send_flags::signaled;
  wr.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(b.p);
  wr.wr.rdma.rkey = mb.rkey();
  SendWr* bad;
  ASSERT_EQ(qa.post_send(&wr, &bad), 0);
  Wc wc = wait(cqa);
  ASSERT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
  ASSERT_EQ(std::memcmp(a.p, b.p, kLen), 0) << "2 GiB WRITE";

  // READ it back over A's buffer after clearing it.
  std::memset(a.p, 0, kLen);
  wr.opcode = WrOpcode::rdma_read;
  ASSERT_EQ(qa.post_send(&wr, &bad), 0);
  wc = wait(cqa);
  ASSERT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
  EXPECT_EQ(wc.byte_len, uint32_t(kLen));
  ASSERT_EQ(std::memcmp(a.p, b.p, kLen), 0) << "2 GiB READ";

  // SEND it into a receive of the same size.
  std::memset(b.p, 0, kLen);
  Sge r{reinterpret_cast<uint64_t>(b.p), uint32_t(kLen), mb.lkey()};
  RecvWr rwr{};
  rwr.sg_list = &r;
  rwr.num_sge = 1;
  RecvWr* rbad;
  ASSERT_EQ(qb.post_recv(&rwr, &rbad), 0);
  wr.opcode = WrOpcode::send;
  ASSERT_EQ(qa.post_send(&wr, &bad), 0);
  wc = wait(cqb);
  ASSERT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
  EXPECT_EQ(wc.byte_len, uint32_t(kLen));
  ASSERT_EQ(wait(cqa).status, WcStatus::success);
  ASSERT_EQ(std::memcmp(a.p, b.p, kLen), 0) << "2 GiB SEND";
}

}  // namespace
