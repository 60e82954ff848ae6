// The extended surface of <infiniband/verbs.h> through the drop-in: one TEST per row (or
// small group of rows) of docs/VERBS.md that this file owns, asserting exactly what the
// table says — "works" verbs move data or keep their promises, the others fail with
// EOPNOTSUPP (or the errno the table names) and the process keeps working. The table
// quotes these test names; verbs_surface_doc.sh checks that both agree.
//
// Built against the system's <infiniband/verbs.h> and -libverbs; registered twice
// (tests/e2e/meson.build): embedded and as the client of a dverbsd (verbs_modes.sh).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "verbs_rc.h"

namespace {

using verbs_e2e::next_async;
using verbs_e2e::open_dverbs;
using verbs_e2e::poll_one;

// `call` returns NULL and sets errno to `err`.
#define EXPECT_NULL_ERRNO(call, err)     \
  do {                                   \
    errno = 0;                           \
    EXPECT_EQ((call), nullptr) << #call; \
    EXPECT_EQ(errno, (err)) << #call;    \
  } while (0)

ibv_qp* make_rc_qp(ibv_pd* pd, ibv_cq* cq) {
  ibv_qp_init_attr init{};
  init.send_cq = init.recv_cq = cq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = init.cap.max_recv_wr = 16;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  return ibv_create_qp(pd, &init);
}

void to_init(ibv_qp* qp) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  at.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
  ASSERT_EQ(
      ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
      0);
}

// Connects a and b to each other over the loopback port (b is left in RTR if asked).
void connect(ibv_context* ctx, ibv_qp* a, ibv_qp* b, bool b_to_rts = true) {
  ibv_gid gid;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
  to_init(a);
  to_init(b);
  verbs_e2e::rc_to_rtr(a, gid, b->qp_num);
  verbs_e2e::rc_to_rtr(b, gid, a->qp_num);
  verbs_e2e::rc_to_rts(a);
  if (b_to_rts) verbs_e2e::rc_to_rts(b);
}

void post_recv(ibv_qp* qp, ibv_mr* mr, void* buf, uint32_t len) {
  ibv_sge s{reinterpret_cast<uint64_t>(buf), len, mr->lkey};
  ibv_recv_wr r{};
  r.sg_list = &s;
  r.num_sge = 1;
  ibv_recv_wr* bad;
  ASSERT_EQ(ibv_post_recv(qp, &r, &bad), 0);
}

int post_send(ibv_qp* qp, ibv_wr_opcode op, ibv_mr* mr, void* buf, uint32_t len, uint64_t raddr = 0,
              uint32_t rkey = 0) {
  ibv_sge s{reinterpret_cast<uint64_t>(buf), len, mr->lkey};
  ibv_send_wr w{};
  w.sg_list = &s;
  w.num_sge = 1;
  w.opcode = op;
  w.send_flags = IBV_SEND_SIGNALED;
  w.wr.rdma.remote_addr = raddr;
  w.wr.rdma.rkey = rkey;
  ibv_send_wr* bad;
  return ibv_post_send(qp, &w, &bad);
}

// One RC pair on one context, all on one PD: every test ends by moving data over it (the
// "process keeps working" half of each row).
struct Loop {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* cq = nullptr;
  ibv_qp* a = nullptr;
  ibv_qp* b = nullptr;
  std::vector<char> buf = std::vector<char>(4096);
  ibv_mr* mr = nullptr;

  void init() {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    pd = ibv_alloc_pd(ctx);
    ASSERT_NE(pd, nullptr);
    cq = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
    ASSERT_NE(cq, nullptr);
    a = make_rc_qp(pd, cq);
    b = make_rc_qp(pd, cq);
    ASSERT_TRUE(a && b);
    connect(ctx, a, b);
    mr = ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
    ASSERT_NE(mr, nullptr);
  }
  // A SEND from a to b arrives intact.
  void moves_data() {
    std::memset(buf.data(), 0, buf.size());
    std::memcpy(buf.data(), "still working", 14);
    post_recv(b, mr, buf.data() + 2048, 2048);
    ASSERT_EQ(post_send(a, IBV_WR_SEND, mr, buf.data(), 14), 0);
    ibv_wc wc[2];
    ASSERT_EQ(poll_one(cq, &wc[0]), 1);
    ASSERT_EQ(poll_one(cq, &wc[1]), 1);
    EXPECT_EQ(wc[0].status, IBV_WC_SUCCESS);
    EXPECT_EQ(wc[1].status, IBV_WC_SUCCESS);
    EXPECT_STREQ(buf.data() + 2048, "still working");
  }
  ~Loop() {
    if (mr) ibv_dereg_mr(mr);
    if (a) ibv_destroy_qp(a);
    if (b) ibv_destroy_qp(b);
    if (cq) ibv_destroy_cq(cq);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }
};

class Surface : public ::testing::Test, protected Loop {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(init()); }
  void TearDown() override {
    if (!HasFatalFailure()) moves_data();
  }
  ibv_device_attr_ex attr_ex() {
    ibv_device_attr_ex dx;
    EXPECT_EQ(ibv_query_device_ex(ctx, nullptr, &dx), 0);
    return dx;
  }
};

// ---------------------------------------------------------------- thread domains
TEST_F(Surface, AllocTdAndDeallocTd) {
  ibv_td_init_attr ta{};
  ibv_td* td = ibv_alloc_td(ctx, &ta);
  ASSERT_NE(td, nullptr) << std::strerror(errno);
  EXPECT_EQ(td->context, ctx);
  ibv_td* td2 = ibv_alloc_td(ctx, &ta);
  ASSERT_NE(td2, nullptr);
  EXPECT_NE(td, td2);
  EXPECT_EQ(ibv_dealloc_td(td2), 0);
  // Bad input.
  ta.comp_mask = 1;
  EXPECT_NULL_ERRNO(ibv_alloc_td(ctx, &ta), EINVAL);
  EXPECT_NULL_ERRNO(ibv_alloc_td(ctx, nullptr), EINVAL);
  ibv_td forged{ctx};
  EXPECT_EQ(ibv_dealloc_td(&forged), EINVAL);
  EXPECT_EQ(ibv_dealloc_td(td), 0);
  // td's memory is gone: the op (not the inline, which reads td->context) says EINVAL.
  EXPECT_EQ(verbs_get_ctx(ctx)->dealloc_td(td), EINVAL) << "stale TD";
}

// ---------------------------------------------------------------- parent domains
std::atomic<int> g_alloc_calls{0};
std::atomic<int> g_free_calls{0};
void* count_alloc(ibv_pd*, void*, size_t, size_t, uint64_t) {
  ++g_alloc_calls;
  return IBV_ALLOCATOR_USE_DEFAULT;
}
void count_free(ibv_pd*, void*, void*, uint64_t) {
  ++g_free_calls;
}

// A parent domain (with a TD and allocators) is a PD for CQs, QPs, SRQs, MRs and AHs; an MR
// of the protection domain serves a QP of the parent domain and the other way round. The
// allocators are never called (docs/VERBS.md).
TEST_F(Surface, AllocParentDomainIsAPdForQpsCqsMrs) {
  ibv_pd* prot = ibv_alloc_pd(ctx);
  ibv_td_init_attr ta{};
  ibv_td* td = ibv_alloc_td(ctx, &ta);
  ASSERT_TRUE(prot && td);
  ibv_parent_domain_init_attr pa{};
  pa.pd = prot;
  pa.td = td;
  pa.comp_mask = IBV_PARENT_DOMAIN_INIT_ATTR_ALLOCATORS | IBV_PARENT_DOMAIN_INIT_ATTR_PD_CONTEXT;
  pa.alloc = count_alloc;
  pa.free = count_free;
  pa.pd_context = &pa;
  ibv_pd* par = ibv_alloc_parent_domain(ctx, &pa);
  ASSERT_NE(par, nullptr) << std::strerror(errno);
  EXPECT_EQ(par->context, ctx);
  EXPECT_NE(par, prot);

  ibv_cq_init_attr_ex cx{};
  cx.cqe = 64;
  cx.comp_mask = IBV_CQ_INIT_ATTR_MASK_PD;
  cx.parent_domain = par;
  ibv_cq_ex* cqx = ibv_create_cq_ex(ctx, &cx);
  ASSERT_NE(cqx, nullptr) << std::strerror(errno);
  ibv_cq* cqa = ibv_cq_ex_to_cq(cqx);
  ibv_cq* cqb = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
  ASSERT_NE(cqb, nullptr);
  ibv_qp* qa = make_rc_qp(par, cqa);   // on the parent domain
  ibv_qp* qb = make_rc_qp(prot, cqb);  // on the protection domain
  ASSERT_TRUE(qa && qb) << std::strerror(errno);
  EXPECT_EQ(qa->pd, par);
  ASSERT_NO_FATAL_FAILURE(connect(ctx, qa, qb));

  std::vector<char> src(4096), dst(4096, 0), wdst(4096, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = char(i * 7 + 1);
  ibv_mr* msrc = ibv_reg_mr(prot, src.data(), src.size(), IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* mdst = ibv_reg_mr(par, dst.data(), dst.size(), IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* mw =
      ibv_reg_mr(par, wdst.data(), wdst.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  ASSERT_TRUE(msrc && mdst && mw) << std::strerror(errno);
  EXPECT_EQ(mdst->pd, par);
  // SEND: qa (parent domain) sends from an MR of the PD; qb (PD) receives into one of the
  // parent domain.
  post_recv(qb, mdst, dst.data(), uint32_t(dst.size()));
  ASSERT_EQ(post_send(qa, IBV_WR_SEND, msrc, src.data(), 3000), 0);
  ibv_wc wc;
  ASSERT_EQ(poll_one(cqa, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  ASSERT_EQ(poll_one(cqb, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(wc.byte_len, 3000u);
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 3000), 0);
  // RDMA WRITE from qb into an MR of the parent domain, owned by qa's side.
  ASSERT_EQ(post_send(qb, IBV_WR_RDMA_WRITE, msrc, src.data(), 4096,
                      reinterpret_cast<uint64_t>(wdst.data()), mw->rkey),
            0);
  ASSERT_EQ(poll_one(cqb, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(std::memcmp(src.data(), wdst.data(), 4096), 0);

  // An SRQ and an AH on the parent domain.
  ibv_srq_init_attr si{};
  si.attr.max_wr = 4;
  si.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(par, &si);
  ibv_device_attr da;
  ASSERT_EQ(ibv_query_device(ctx, &da), 0);
  if (da.max_srq) {
    EXPECT_NE(srq, nullptr) << std::strerror(errno);
  }
  ibv_ah_attr aa{};
  aa.is_global = 1;
  aa.port_num = 1;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &aa.grh.dgid), 0);
  ibv_ah* ah = ibv_create_ah(par, &aa);
  EXPECT_NE(ah, nullptr) << std::strerror(errno);
  EXPECT_EQ(g_alloc_calls.load(), 0) << "dverbs never calls the allocators";
  EXPECT_EQ(g_free_calls.load(), 0);

  // Lifetime: each object keeps the one it was created on.
  EXPECT_EQ(ibv_dealloc_pd(prot), EBUSY) << "the parent domain stands for it";
  EXPECT_EQ(ibv_dealloc_td(td), EBUSY) << "the parent domain names it";
  EXPECT_EQ(ibv_dealloc_pd(par), EBUSY) << "QP qa, its CQ, MRs, SRQ and AH use it";
  if (ah) {
    EXPECT_EQ(ibv_destroy_ah(ah), 0);
  }
  if (srq) {
    EXPECT_EQ(ibv_destroy_srq(srq), 0);
  }
  EXPECT_EQ(ibv_dereg_mr(mdst), 0);
  EXPECT_EQ(ibv_dereg_mr(mw), 0);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_dealloc_pd(par), EBUSY) << "CQ qa still uses it";
  EXPECT_EQ(ibv_destroy_cq(cqa), 0);
  EXPECT_EQ(ibv_dealloc_pd(par), 0);
  EXPECT_EQ(ibv_dealloc_pd(par), EINVAL) << "stale parent domain";
  EXPECT_EQ(ibv_dealloc_td(td), 0);
  EXPECT_EQ(ibv_destroy_qp(qb), 0);
  EXPECT_EQ(ibv_dereg_mr(msrc), 0);
  EXPECT_EQ(ibv_destroy_cq(cqb), 0);
  EXPECT_EQ(ibv_dealloc_pd(prot), 0);
}

TEST_F(Surface, AllocParentDomainBadInput) {
  ibv_context* c1 = open_dverbs();
  ibv_context* other = open_dverbs();
  ASSERT_TRUE(c1 && other);
  ibv_pd* prot = ibv_alloc_pd(c1);
  ibv_pd* opd = ibv_alloc_pd(other);
  ibv_td_init_attr ta{};
  ibv_td* otd = ibv_alloc_td(other, &ta);
  ASSERT_TRUE(prot && opd && otd);
  ibv_parent_domain_init_attr pa{};
  EXPECT_NULL_ERRNO(ibv_alloc_parent_domain(c1, &pa), EINVAL);  // no PD
  pa.pd = opd;
  EXPECT_NULL_ERRNO(ibv_alloc_parent_domain(c1, &pa), EINVAL);  // another context's PD
  pa.pd = prot;
  pa.td = otd;
  EXPECT_NULL_ERRNO(ibv_alloc_parent_domain(c1, &pa), EINVAL);  // another context's TD
  pa.td = nullptr;
  pa.comp_mask = 1u << 5;
  EXPECT_NULL_ERRNO(ibv_alloc_parent_domain(c1, &pa), EINVAL);  // unknown comp_mask bit
  EXPECT_NULL_ERRNO(ibv_alloc_parent_domain(c1, nullptr), EINVAL);
  // A CQ's parent_domain must be a parent domain of the context.
  ibv_cq_init_attr_ex cx{};
  cx.cqe = 8;
  cx.comp_mask = IBV_CQ_INIT_ATTR_MASK_PD;
  cx.parent_domain = prot;
  EXPECT_NULL_ERRNO(ibv_create_cq_ex(c1, &cx), EINVAL);  // a plain PD
  cx.parent_domain = nullptr;
  EXPECT_NULL_ERRNO(ibv_create_cq_ex(c1, &cx), EINVAL);  // no parent domain
  // A parent domain of a parent domain stands for the same PD; closing the context frees
  // parent domains and TDs left open.
  pa.comp_mask = 0;
  ibv_pd* p1 = ibv_alloc_parent_domain(c1, &pa);
  ASSERT_NE(p1, nullptr);
  pa.pd = p1;
  ibv_pd* p2 = ibv_alloc_parent_domain(c1, &pa);
  ASSERT_NE(p2, nullptr);
  EXPECT_EQ(ibv_dealloc_pd(prot), EBUSY);
  std::vector<char> buf(4096);
  ibv_mr* mr = ibv_reg_mr(p2, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE);
  EXPECT_NE(mr, nullptr);
  cx.parent_domain = p2;
  ibv_cq_ex* cq = ibv_create_cq_ex(c1, &cx);
  EXPECT_NE(cq, nullptr);
  ibv_td* td = ibv_alloc_td(c1, &ta);
  ASSERT_NE(td, nullptr);
  EXPECT_EQ(ibv_close_device(c1), 0);
  EXPECT_EQ(ibv_close_device(other), 0);
}

// ---------------------------------------------------------------- QP queries
TEST_F(Surface, QueryQpDataInOrderIsZero) {
  EXPECT_EQ(ibv_query_qp_data_in_order(a, IBV_WR_RDMA_WRITE, 0), 0);
  EXPECT_EQ(ibv_query_qp_data_in_order(a, IBV_WR_SEND, 0), 0);
  EXPECT_EQ(ibv_query_qp_data_in_order(b, IBV_WR_RDMA_WRITE_WITH_IMM, 0), 0);
}

TEST_F(Surface, SetEceAndQueryEceAreEopnotsupp) {
  ibv_ece ece{};
  ece.vendor_id = 0x15b3;
  ece.options = 1;
  EXPECT_EQ(ibv_set_ece(a, &ece), EOPNOTSUPP);
  EXPECT_EQ(ibv_query_ece(a, &ece), EOPNOTSUPP);
  EXPECT_EQ(ibv_set_ece(a, nullptr), EINVAL);
  EXPECT_EQ(ibv_query_ece(a, nullptr), EINVAL);
  ibv_qp forged{};
  forged.context = ctx;
  EXPECT_EQ(ibv_query_ece(&forged, &ece), EINVAL);
}

TEST_F(Surface, ModifyQpRateLimitIsEopnotsupp) {
  ibv_qp_rate_limit_attr ra{};
  ra.rate_limit = 1000;
  EXPECT_EQ(ibv_modify_qp_rate_limit(a, &ra), EOPNOTSUPP);
  ibv_qp_attr at{};
  at.rate_limit = 1000;
  EXPECT_EQ(ibv_modify_qp(a, &at, IBV_QP_RATE_LIMIT), EOPNOTSUPP);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.packet_pacing_caps.qp_rate_limit_max, 0u);
  EXPECT_EQ(dx.packet_pacing_caps.supported_qpts, 0u);
}

// ---------------------------------------------------------------- memory
TEST_F(Surface, RegMrIova2WorksWhenIovaIsTheAddress) {
  std::vector<char> buf(8192, 'x');
  const uint64_t va = reinterpret_cast<uint64_t>(buf.data());
  ibv_mr* mr = ibv_reg_mr_iova2(pd, buf.data(), buf.size(), va,
                                IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  ASSERT_NE(mr, nullptr) << std::strerror(errno);
  // It works: an RDMA WRITE lands in it.
  std::memcpy(buf.data(), "iova", 5);
  ASSERT_EQ(post_send(a, IBV_WR_RDMA_WRITE, mr, buf.data(), 5, va + 100, mr->rkey), 0);
  ibv_wc wc;
  ASSERT_EQ(poll_one(cq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_STREQ(buf.data() + 100, "iova");
  EXPECT_EQ(ibv_dereg_mr(mr), 0);
  errno = 0;
  EXPECT_EQ(ibv_reg_mr_iova2(pd, buf.data(), buf.size(), 0x10000, IBV_ACCESS_LOCAL_WRITE), nullptr)
      << "an IOVA other than the address";
  EXPECT_EQ(errno, EOPNOTSUPP);
}

TEST_F(Surface, RegDmabufMrIsEopnotsupp) {
  const int fd = memfd_create("dmabuf-stand-in", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  EXPECT_NULL_ERRNO(ibv_reg_dmabuf_mr(pd, 0, 4096, 0, fd, IBV_ACCESS_LOCAL_WRITE), EOPNOTSUPP);
  ibv_pd forged{};
  forged.context = ctx;
  EXPECT_NULL_ERRNO(ibv_reg_dmabuf_mr(&forged, 0, 4096, 0, fd, IBV_ACCESS_LOCAL_WRITE), EINVAL);
  close(fd);
}

TEST_F(Surface, AdviseMrIsEopnotsupp) {
  ibv_sge s{reinterpret_cast<uint64_t>(buf.data()), 4096, mr->lkey};
  EXPECT_EQ(ibv_advise_mr(pd, IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE, IBV_ADVISE_MR_FLAG_FLUSH, &s, 1),
            EOPNOTSUPP);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.odp_caps.general_caps, 0u) << "no on-demand paging";
}

TEST_F(Surface, AllocNullMrIsEopnotsupp) {
  EXPECT_NULL_ERRNO(ibv_alloc_null_mr(pd), EOPNOTSUPP);
}

TEST_F(Surface, DeviceMemoryIsEopnotsupp) {
  ibv_alloc_dm_attr da{};
  da.length = 4096;
  EXPECT_NULL_ERRNO(ibv_alloc_dm(ctx, &da), EOPNOTSUPP);
  // No DM can exist; the verbs that take one fail before looking at it.
  ibv_dm forged{};
  forged.context = ctx;
  EXPECT_EQ(ibv_free_dm(&forged), EOPNOTSUPP);
  EXPECT_NULL_ERRNO(ibv_reg_dm_mr(pd, &forged, 0, 64, IBV_ACCESS_ZERO_BASED), EOPNOTSUPP);
  EXPECT_NULL_ERRNO(ibv_import_dm(ctx, 1), EOPNOTSUPP);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.max_dm_size, 0u);
}

TEST_F(Surface, ImportVerbsAreEopnotsupp) {
  EXPECT_NULL_ERRNO(ibv_import_device(ctx->cmd_fd), EOPNOTSUPP);
  EXPECT_NULL_ERRNO(ibv_import_pd(ctx, pd->handle), EOPNOTSUPP);
  EXPECT_NULL_ERRNO(ibv_import_mr(pd, mr->handle), EOPNOTSUPP);
  // Nothing was imported: unimporting a PD or MR of this process leaves it as it was.
  ibv_unimport_mr(mr);
  ibv_unimport_pd(pd);
}

// ---------------------------------------------------------------- CQs
TEST_F(Surface, ModifyCqIsEopnotsupp) {
  ibv_modify_cq_attr ma{};
  ma.attr_mask = IBV_CQ_ATTR_MODERATE;
  ma.moderate.cq_count = 8;
  ma.moderate.cq_period = 10;
  EXPECT_EQ(ibv_modify_cq(cq, &ma), EOPNOTSUPP);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.cq_mod_caps.max_cq_count, 0u);
  EXPECT_EQ(dx.cq_mod_caps.max_cq_period, 0u);
}

TEST_F(Surface, CreateCqExTagMatchingInfoIsEopnotsupp) {
  ibv_cq_init_attr_ex cx{};
  cx.cqe = 8;
  cx.wc_flags = IBV_WC_EX_WITH_TM_INFO;
  EXPECT_NULL_ERRNO(ibv_create_cq_ex(ctx, &cx), EOPNOTSUPP);
}

// ---------------------------------------------------------------- SRQ operations
TEST_F(Surface, PostSrqOpsIsEopnotsupp) {
  ibv_srq_init_attr si{};
  si.attr.max_wr = 4;
  si.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(pd, &si);
  if (!srq) GTEST_SKIP() << "no SRQ: " << std::strerror(errno);
  ibv_ops_wr op{};
  op.opcode = IBV_WR_TAG_ADD;
  ibv_ops_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_srq_ops(srq, &op, &bad), EOPNOTSUPP);
  EXPECT_EQ(bad, &op);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.tm_caps.max_num_tags, 0u);
  EXPECT_EQ(ibv_destroy_srq(srq), 0);
}

// ---------------------------------------------------------------- RSS, counters, flow actions
TEST_F(Surface, WorkQueuesAndIndirectionTablesAreEopnotsupp) {
  ibv_wq_init_attr wa{};
  wa.wq_type = IBV_WQT_RQ;
  wa.max_wr = 8;
  wa.max_sge = 1;
  wa.pd = pd;
  wa.cq = cq;
  EXPECT_NULL_ERRNO(ibv_create_wq(ctx, &wa), EOPNOTSUPP);
  ibv_wq forged{};
  forged.context = ctx;
  ibv_wq_attr wattr{};
  EXPECT_EQ(ibv_modify_wq(&forged, &wattr), EOPNOTSUPP);
  EXPECT_EQ(ibv_destroy_wq(&forged), EOPNOTSUPP);
  ibv_rwq_ind_table_init_attr ia{};
  EXPECT_NULL_ERRNO(ibv_create_rwq_ind_table(ctx, &ia), EOPNOTSUPP);
  ibv_rwq_ind_table ft{};
  ft.context = ctx;
  EXPECT_EQ(ibv_destroy_rwq_ind_table(&ft), EOPNOTSUPP);
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.rss_caps.supported_qpts, 0u);
  EXPECT_EQ(dx.max_wq_type_rq, 0u);
}

TEST_F(Surface, CountersAreEopnotsupp) {
  ibv_counters_init_attr ca{};
  EXPECT_NULL_ERRNO(ibv_create_counters(ctx, &ca), EOPNOTSUPP);
  ibv_counters forged{};
  forged.context = ctx;
  uint64_t v[2];
  EXPECT_EQ(ibv_read_counters(&forged, v, 2, 0), EOPNOTSUPP);
  ibv_counter_attach_attr aa{};
  EXPECT_EQ(ibv_attach_counters_point_flow(&forged, &aa, nullptr), EOPNOTSUPP);
  EXPECT_EQ(ibv_destroy_counters(&forged), EOPNOTSUPP);
}

TEST_F(Surface, FlowActionEspIsEopnotsupp) {
  ibv_flow_action_esp_attr ea{};
  EXPECT_NULL_ERRNO(ibv_create_flow_action_esp(ctx, &ea), EOPNOTSUPP);
  ibv_flow_action forged{};
  forged.context = ctx;
  EXPECT_EQ(ibv_modify_flow_action_esp(&forged, &ea), EOPNOTSUPP);
  EXPECT_EQ(ibv_destroy_flow_action(&forged), EOPNOTSUPP);
}

// ---------------------------------------------------------------- work-request builder
TEST_F(Surface, WrSendTsoIsEopnotsupp) {
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(a);
  ASSERT_NE(qx, nullptr);
  char hdr[64] = {};
  ibv_wr_start(qx);
  ibv_wr_send_tso(qx, hdr, sizeof hdr, 1024);
  ibv_wr_set_sge(qx, mr->lkey, reinterpret_cast<uint64_t>(buf.data()), 64);
  EXPECT_EQ(ibv_wr_complete(qx), EOPNOTSUPP) << "nothing posted";
  const ibv_device_attr_ex dx = attr_ex();
  EXPECT_EQ(dx.tso_caps.max_tso, 0u);
}

// ---------------------------------------------------------------- device queries
TEST_F(Surface, QueryDeviceExCompMaskAndSize) {
  ibv_device_attr da;
  ASSERT_EQ(ibv_query_device(ctx, &da), 0);
  ibv_device_attr_ex dx;
  std::memset(&dx, 0xab, sizeof dx);
  ASSERT_EQ(ibv_query_device_ex(ctx, nullptr, &dx), 0);
  EXPECT_EQ(dx.comp_mask, 0u) << "no optional output field";
  EXPECT_EQ(dx.orig_attr.max_qp, da.max_qp);
  ibv_query_device_ex_input in{};
  in.comp_mask = 1;
  EXPECT_EQ(ibv_query_device_ex(ctx, &in, &dx), EINVAL);
  // A caller built against an older, shorter ibv_device_attr_ex: only its size is written.
  verbs_context* v = verbs_get_ctx(ctx);
  ASSERT_NE(v, nullptr);
  std::memset(&dx, 0xab, sizeof dx);
  ASSERT_EQ(v->query_device_ex(ctx, nullptr, &dx, sizeof(ibv_device_attr) + 8), 0);
  EXPECT_EQ(dx.orig_attr.max_qp, da.max_qp);
  const auto* raw = reinterpret_cast<const unsigned char*>(&dx);
  for (size_t i = sizeof(ibv_device_attr) + 8; i < sizeof dx; ++i)
    ASSERT_EQ(raw[i], 0xab) << "byte " << i << " beyond attr_size written";
  EXPECT_EQ(v->query_device_ex(ctx, nullptr, &dx, 8), EINVAL) << "smaller than the base";
}

// ---------------------------------------------------------------- asynchronous events
// COMM_EST on a passive side's first packet in RTR; QP_ACCESS_ERR on a responder whose
// RDMA WRITE names a bad R_Key (the table lists every type dverbs raises).
TEST_F(Surface, GetAsyncEventQpTypes) {
  ibv_qp* qa = make_rc_qp(pd, cq);
  ibv_qp* qb = make_rc_qp(pd, cq);
  ASSERT_TRUE(qa && qb);
  ASSERT_NO_FATAL_FAILURE(connect(ctx, qa, qb, false));
  char* const data = buf.data() + 1024;
  post_recv(qb, mr, data, 1024);
  ASSERT_EQ(post_send(qa, IBV_WR_SEND, mr, buf.data(), 16), 0);
  ibv_wc wc;
  ASSERT_EQ(poll_one(cq, &wc), 1);
  ASSERT_EQ(poll_one(cq, &wc), 1);
  ibv_async_event ev;
  ASSERT_TRUE(next_async(ctx, IBV_EVENT_COMM_EST, &ev)) << "no COMM_EST";
  EXPECT_EQ(ev.element.qp, qb);
  ibv_ack_async_event(&ev);
  ASSERT_NO_FATAL_FAILURE(verbs_e2e::rc_to_rts(qb));
  ASSERT_EQ(post_send(qa, IBV_WR_RDMA_WRITE, mr, buf.data(), 16, reinterpret_cast<uint64_t>(data),
                      mr->rkey ^ 0x5a5a00),
            0);
  ASSERT_EQ(poll_one(cq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_REM_ACCESS_ERR) << ibv_wc_status_str(wc.status);
  ASSERT_TRUE(next_async(ctx, IBV_EVENT_QP_ACCESS_ERR, &ev)) << "no QP_ACCESS_ERR";
  EXPECT_EQ(ev.element.qp, qb);
  EXPECT_STREQ(ibv_event_type_str(ev.event_type), "local access violation work queue error");
  ibv_ack_async_event(&ev);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_destroy_qp(qb), 0);
}

// ---------------------------------------------------------------- helpers without a device
TEST_F(Surface, ResolveEthL2FromGidIsEopnotsupp) {
  ibv_ah_attr aa{};
  aa.is_global = 1;
  aa.port_num = 1;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &aa.grh.dgid), 0);
  uint8_t mac[6];
  uint16_t vid;
  errno = 0;
  EXPECT_EQ(ibv_resolve_eth_l2_from_gid(ctx, &aa, mac, &vid), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
}

TEST_F(Surface, ForkInitIsUnneeded) {
  EXPECT_EQ(ibv_fork_init(), 0);
  EXPECT_EQ(ibv_is_fork_initialized(), IBV_FORK_UNNEEDED);
}

TEST_F(Surface, InlineHelpers) {
  EXPECT_EQ(ibv_inc_rkey(0x123456ffu), 0x12345600u);
  EXPECT_EQ(ibv_inc_rkey(0x12345601u), 0x12345602u);
  EXPECT_TRUE(ibv_is_qpt_supported(1u << IBV_QPT_UD, IBV_QPT_UD));
  EXPECT_FALSE(ibv_is_qpt_supported(1u << IBV_QPT_UD, IBV_QPT_RC));
  EXPECT_EQ(ibv_flow_label_to_udp_sport(0), 0xc000);
  EXPECT_EQ(ibv_flow_label_to_udp_sport(0x4001), 0xc000);  // high bits folded onto low
  EXPECT_EQ(ibv_rate_to_mbps(IBV_RATE_100_GBPS), 103125);
  EXPECT_EQ(mbps_to_ibv_rate(25781), IBV_RATE_25_GBPS);
  EXPECT_EQ(ibv_rate_to_mult(IBV_RATE_10_GBPS), 4);
  EXPECT_EQ(mult_to_ibv_rate(4), IBV_RATE_10_GBPS);
  EXPECT_STREQ(ibv_node_type_str(IBV_NODE_CA), "InfiniBand channel adapter");
  EXPECT_STREQ(ibv_port_state_str(IBV_PORT_ACTIVE), "active");
  EXPECT_STREQ(ibv_wc_status_str(IBV_WC_SUCCESS), "success");
}

}  // namespace
