// The extended surface of <infiniband/verbs.h> through the drop-in: one TEST per row (or
// small group of rows) of docs/VERBS.md that this file owns, asserting exactly what the
// table says — "works" verbs move data or keep their promises, the others fail with
// EOPNOTSUPP (or the errno the table names) and the process keeps working. The table
// quotes these test names; verbs_surface_doc.sh checks that both agree.
//
// Built against the system's <infiniband/verbs.h> and -libverbs; registered twice
// (tests/e2e/meson.build): embedded and as the client of a dverbsd (verbs_modes.sh).
#include <gtest/gtest.h>
#include <infiniband/sa.h>
#include <infiniband/verbs.h>
#include <rdma/ib_user_sa.h>
#include <rdma/ib_user_verbs.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "verbs_loop.h"

// Exported by libibverbs.so.1, declared in rdma-core's private headers only.
extern "C" {
const char* ibv_get_sysfs_path(void);
int ibv_read_sysfs_file(const char* dir, const char* file, char* buf, size_t size);
int ibv_dontfork_range(void* base, size_t size);
int ibv_dofork_range(void* base, size_t size);
void ibv_copy_qp_attr_from_kern(ibv_qp_attr* dst, ib_uverbs_qp_attr* src);
void ibv_copy_path_rec_from_kern(ibv_sa_path_rec* dst, ib_user_path_rec* src);
void ibv_copy_path_rec_to_kern(ib_user_path_rec* dst, ibv_sa_path_rec* src);
}

namespace {

using verbs_loop::next_async;
using verbs_loop::open_dverbs;
using verbs_loop::poll_one;

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
  init.cap.max_send_sge = init.cap.max_recv_sge = 2;
  init.cap.max_inline_data = 64;
  return ibv_create_qp(pd, &init);
}

void to_init(ibv_qp* qp) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_INIT;
  at.port_num = 1;
  at.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                       IBV_ACCESS_REMOTE_ATOMIC;
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
  verbs_loop::rc_to_rtr(a, gid, b->qp_num);
  verbs_loop::rc_to_rtr(b, gid, a->qp_num);
  verbs_loop::rc_to_rts(a);
  if (b_to_rts) verbs_loop::rc_to_rts(b);
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
  ibv_cq_ex* cqx = nullptr;  // the CQ of a and b, created with ibv_create_cq_ex
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
    ibv_cq_init_attr_ex cx{};
    cx.cqe = 64;
    cx.wc_flags = IBV_WC_STANDARD_FLAGS;
    cqx = ibv_create_cq_ex(ctx, &cx);
    ASSERT_NE(cqx, nullptr);
    cq = ibv_cq_ex_to_cq(cqx);
    a = make_rc_qp(pd, cq);
    b = make_rc_qp(pd, cq);
    ASSERT_TRUE(a && b);
    connect(ctx, a, b);
    mr = ibv_reg_mr(pd, buf.data(), buf.size(),
                    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                        IBV_ACCESS_REMOTE_ATOMIC);
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

// One completion read through the ibv_wc_read_* accessors.
struct Seen {
  uint64_t wr_id;
  ibv_wc_status status;
  ibv_wc_opcode opcode;
  uint32_t byte_len, qp_num, vendor_err, slid;
  unsigned wc_flags;
  __be32 imm;
  uint8_t sl, path_bits;
};

Seen read_current(ibv_cq_ex* c) {
  Seen s{};
  s.wr_id = c->wr_id;
  s.status = c->status;
  s.opcode = ibv_wc_read_opcode(c);
  s.byte_len = ibv_wc_read_byte_len(c);
  s.qp_num = ibv_wc_read_qp_num(c);
  s.vendor_err = ibv_wc_read_vendor_err(c);
  s.slid = ibv_wc_read_slid(c);
  s.wc_flags = ibv_wc_read_wc_flags(c);
  s.imm = (s.wc_flags & IBV_WC_WITH_IMM) ? ibv_wc_read_imm_data(c) : 0;
  s.sl = ibv_wc_read_sl(c);
  s.path_bits = ibv_wc_read_dlid_path_bits(c);
  return s;
}

// Polls `n` completions through ibv_start_poll / ibv_next_poll / ibv_end_poll.
std::vector<Seen> poll_ex(ibv_cq_ex* c, size_t n) {
  std::vector<Seen> out;
  for (long tries = 0; out.size() < n && tries < 200000000L; ++tries) {
    ibv_poll_cq_attr pa{};
    if (ibv_start_poll(c, &pa) != 0) continue;
    do out.push_back(read_current(c));
    while (out.size() < n && ibv_next_poll(c) == 0);
    ibv_end_poll(c);
  }
  return out;
}

const Seen* find_seen(const std::vector<Seen>& v, uint64_t wr_id, ibv_wc_opcode op) {
  for (const Seen& s : v)
    if (s.wr_id == wr_id && s.opcode == op) return &s;
  return nullptr;
}

class Surface : public ::testing::Test, protected Loop {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(init()); }
  void TearDown() override {
    if (!HasFatalFailure()) moves_data();
  }
  // Two UD QPs in RTS (Q_Key 0x11111111) on the fixture's PD and CQ.
  void make_ud_pair(ibv_qp** ua, ibv_qp** ub) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = cq;
    init.qp_type = IBV_QPT_UD;
    init.cap.max_send_wr = init.cap.max_recv_wr = 4;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    *ua = ibv_create_qp(pd, &init);
    *ub = ibv_create_qp(pd, &init);
    ASSERT_TRUE(*ua && *ub);
    for (ibv_qp* q : {*ua, *ub}) {
      ibv_qp_attr at{};
      at.qp_state = IBV_QPS_INIT;
      at.port_num = 1;
      at.qkey = 0x11111111;
      ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY),
                0);
      at.qp_state = IBV_QPS_RTR;
      ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE), 0);
      at.qp_state = IBV_QPS_RTS;
      at.sq_psn = 1;
      ASSERT_EQ(ibv_modify_qp(q, &at, IBV_QP_STATE | IBV_QP_SQ_PSN), 0);
    }
  }
  // qa (on the fixture's CQ) connected to qs, which receives from `srq`.
  void srq_pair(ibv_srq* srq, ibv_qp** qa, ibv_qp** qs) {
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = cq;
    init.srq = srq;
    init.qp_type = IBV_QPT_RC;
    init.cap.max_send_wr = 4;
    init.cap.max_send_sge = 1;
    *qs = ibv_create_qp(pd, &init);
    *qa = make_rc_qp(pd, cq);
    ASSERT_TRUE(*qs && *qa);
    ASSERT_NO_FATAL_FAILURE(connect(ctx, *qa, *qs));
  }
  // `n` receives of 64 bytes into buf + 2048.
  void post_srq_recv(ibv_srq* srq, int n) {
    for (int i = 0; i < n; ++i) {
      ibv_sge s{reinterpret_cast<uint64_t>(buf.data() + 2048), 64, mr->lkey};
      ibv_recv_wr r{};
      r.sg_list = &s;
      r.num_sge = 1;
      ibv_recv_wr* bad;
      ASSERT_EQ(ibv_post_srq_recv(srq, &r, &bad), 0);
    }
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

// No alternate path (APM): IBV_QP_ALT_PATH is refused; the migration state of a QP without
// APM, MIGRATED, is accepted; REARM is refused.
TEST_F(Surface, ModifyQpAltPathIsEopnotsupp) {
  ibv_qp_attr at{};
  at.alt_port_num = 1;
  at.alt_timeout = 14;
  at.alt_ah_attr.is_global = 1;
  at.alt_ah_attr.port_num = 1;
  EXPECT_EQ(ibv_modify_qp(a, &at, IBV_QP_ALT_PATH), EOPNOTSUPP);
  at.path_mig_state = IBV_MIG_REARM;
  EXPECT_EQ(ibv_modify_qp(a, &at, IBV_QP_PATH_MIG_STATE), EOPNOTSUPP);
  at.path_mig_state = IBV_MIG_MIGRATED;
  EXPECT_EQ(ibv_modify_qp(a, &at, IBV_QP_PATH_MIG_STATE), 0);
  ibv_qp_init_attr init{};
  ASSERT_EQ(ibv_query_qp(a, &at, IBV_QP_PATH_MIG_STATE | IBV_QP_STATE, &init), 0);
  EXPECT_EQ(at.path_mig_state, IBV_MIG_MIGRATED);
  EXPECT_EQ(at.qp_state, IBV_QPS_RTS);
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
// ibv_reg_mr_iova and ibv_reg_mr_iova2 (which ibv_reg_mr becomes when an optional access
// flag is given) with the IOVA equal to the address: an RDMA WRITE lands in the region.
TEST_F(Surface, RegMrIovaWorksWhenIovaIsTheAddress) {
  std::vector<char> mem(8192, 'x');
  const uint64_t va = reinterpret_cast<uint64_t>(mem.data());
  const unsigned acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  ibv_mr* m1 = ibv_reg_mr_iova2(pd, mem.data(), 4096, va, acc);
  ibv_mr* m2 = ibv_reg_mr_iova(pd, mem.data() + 4096, 4096, va + 4096, int(acc));
  ibv_mr* m3 = ibv_reg_mr(pd, mem.data(), 4096, int(acc | IBV_ACCESS_RELAXED_ORDERING));
  ASSERT_TRUE(m1 && m2 && m3) << std::strerror(errno);
  std::memcpy(buf.data(), "iova", 5);
  for (ibv_mr* m : {m1, m2, m3}) {
    const uint64_t dst = reinterpret_cast<uint64_t>(m->addr) + 100;
    ASSERT_EQ(post_send(a, IBV_WR_RDMA_WRITE, mr, buf.data(), 5, dst, m->rkey), 0);
    ibv_wc wc;
    ASSERT_EQ(poll_one(cq, &wc), 1);
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
    EXPECT_STREQ(reinterpret_cast<char*>(dst), "iova");
    std::memset(reinterpret_cast<char*>(dst), 'x', 5);
    EXPECT_EQ(ibv_dereg_mr(m), 0);
  }
  EXPECT_NULL_ERRNO(ibv_reg_mr_iova2(pd, mem.data(), mem.size(), 0x10000, IBV_ACCESS_LOCAL_WRITE),
                    EOPNOTSUPP);  // an IOVA other than the address
  EXPECT_NULL_ERRNO(ibv_reg_mr_iova(pd, mem.data(), mem.size(), 0, IBV_ACCESS_LOCAL_WRITE),
                    EOPNOTSUPP);
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

// IBV_CREATE_CQ_ATTR_SINGLE_THREADED is a hint (the CQ works); IGNORE_OVERRUN is refused.
TEST_F(Surface, CreateCqExFlags) {
  ibv_cq_init_attr_ex cx{};
  cx.cqe = 8;
  cx.wc_flags = IBV_WC_STANDARD_FLAGS;
  cx.comp_mask = IBV_CQ_INIT_ATTR_MASK_FLAGS;
  cx.flags = IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN;
  EXPECT_NULL_ERRNO(ibv_create_cq_ex(ctx, &cx), EOPNOTSUPP);
  cx.flags = IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
  ibv_cq_ex* one = ibv_create_cq_ex(ctx, &cx);
  ASSERT_NE(one, nullptr) << std::strerror(errno);
  ibv_qp* qa = make_rc_qp(pd, ibv_cq_ex_to_cq(one));
  ibv_qp* qb = make_rc_qp(pd, ibv_cq_ex_to_cq(one));
  ASSERT_TRUE(qa && qb);
  ASSERT_NO_FATAL_FAILURE(connect(ctx, qa, qb));
  post_recv(qb, mr, buf.data() + 2048, 64);
  ASSERT_EQ(post_send(qa, IBV_WR_SEND, mr, buf.data(), 8), 0);
  const std::vector<Seen> seen = poll_ex(one, 2);
  ASSERT_EQ(seen.size(), 2u);
  for (const Seen& x : seen) EXPECT_EQ(x.status, IBV_WC_SUCCESS);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_destroy_qp(qb), 0);
  EXPECT_EQ(ibv_destroy_cq(ibv_cq_ex_to_cq(one)), 0);
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

// Every ibv_wr_* opcode dverbs implements on RC (SEND with immediate and an SGE list, RDMA
// WRITE with immediate and inline data, both atomics), ibv_wr_abort, and every
// ibv_wc_read_* accessor of an ibv_cq_ex.
TEST_F(Surface, WrBuilderOpcodesAndCqExAccessors) {
  const ibv_device_attr_ex dx = attr_ex();
  const bool atomics = dx.orig_attr.atomic_cap != IBV_ATOMIC_NONE;
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(a);
  ASSERT_NE(qx, nullptr);
  char* const base = buf.data();
  auto at = [&](size_t off) { return reinterpret_cast<uint64_t>(base + off); };
  std::memcpy(base, "0123456789abcdef", 16);
  uint64_t counter = 100;
  std::memcpy(base + 512, &counter, 8);
  post_recv(b, mr, base + 2048, 1024);
  post_recv(b, mr, base + 3072, 1024);
  // Inline data beyond the QP's max_inline_data (as ibv_query_qp reports it): the batch
  // fails, nothing is posted.
  ibv_qp_attr qa{};
  ibv_qp_init_attr qi{};
  ASSERT_EQ(ibv_query_qp(a, &qa, IBV_QP_CAP, &qi), 0);
  const uint32_t cap = qa.cap.max_inline_data;
  std::vector<char> big(cap + 1, 'i');
  ibv_wr_start(qx);
  ibv_wr_send(qx);
  const ibv_data_buf over[2] = {{big.data(), cap}, {big.data(), 1}};
  ibv_wr_set_inline_data_list(qx, 2, over);
  EXPECT_EQ(ibv_wr_complete(qx), EINVAL) << "max_inline_data " << cap;
  // Built and dropped: nothing is posted.
  ibv_wr_start(qx);
  qx->wr_id = 99;
  ibv_wr_send(qx);
  ibv_wr_set_sge(qx, mr->lkey, at(0), 4);
  ibv_wr_abort(qx);

  ibv_wr_start(qx);
  qx->wr_flags = IBV_SEND_SIGNALED;
  qx->wr_id = 1;
  ibv_wr_send_imm(qx, htobe32(0x1234));
  const ibv_sge two[2] = {{at(0), 8, mr->lkey}, {at(8), 8, mr->lkey}};
  ibv_wr_set_sge_list(qx, 2, two);
  qx->wr_id = 2;
  ibv_wr_rdma_write_imm(qx, mr->rkey, at(1024), htobe32(0x5678));
  char abc[] = "abc", def[] = "def";
  const ibv_data_buf parts[2] = {{abc, 3}, {def, 4}};
  ibv_wr_set_inline_data_list(qx, 2, parts);
  if (atomics) {
    qx->wr_id = 3;
    ibv_wr_atomic_fetch_add(qx, mr->rkey, at(512), 5);
    ibv_wr_set_sge(qx, mr->lkey, at(520), 8);
    qx->wr_id = 4;
    ibv_wr_atomic_cmp_swp(qx, mr->rkey, at(512), 105, 7);
    ibv_wr_set_sge(qx, mr->lkey, at(528), 8);
  }
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  const std::vector<Seen> seen = poll_ex(cqx, atomics ? 6 : 4);
  ASSERT_EQ(seen.size(), atomics ? 6u : 4u);
  for (const Seen& s : seen) {
    EXPECT_EQ(s.status, IBV_WC_SUCCESS) << "wr_id " << s.wr_id;
    EXPECT_EQ(s.vendor_err, 0u);
    EXPECT_EQ(s.slid, 0u) << "RoCE: no LIDs";
    EXPECT_EQ(s.sl, 0u);
    EXPECT_EQ(s.path_bits, 0u);
    EXPECT_NE(s.wr_id, 99u) << "an aborted WR was posted";
  }
  ASSERT_NE(find_seen(seen, 1, IBV_WC_SEND), nullptr);
  ASSERT_NE(find_seen(seen, 2, IBV_WC_RDMA_WRITE), nullptr);
  EXPECT_EQ(find_seen(seen, 1, IBV_WC_SEND)->qp_num, a->qp_num);
  const Seen* r1 = nullptr;
  const Seen* r2 = nullptr;
  for (const Seen& s : seen) {
    if (s.opcode == IBV_WC_RECV) r1 = &s;
    if (s.opcode == IBV_WC_RECV_RDMA_WITH_IMM) r2 = &s;
  }
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->qp_num, b->qp_num);
  EXPECT_EQ(r1->byte_len, 16u);
  EXPECT_TRUE(r1->wc_flags & IBV_WC_WITH_IMM);
  EXPECT_EQ(be32toh(r1->imm), 0x1234u);
  EXPECT_EQ(std::memcmp(base + 2048, "0123456789abcdef", 16), 0);
  EXPECT_EQ(r2->byte_len, 7u);
  EXPECT_EQ(be32toh(r2->imm), 0x5678u);
  EXPECT_STREQ(base + 1024, "abcdef");
  if (atomics) {
    ASSERT_NE(find_seen(seen, 3, IBV_WC_FETCH_ADD), nullptr);
    ASSERT_NE(find_seen(seen, 4, IBV_WC_COMP_SWAP), nullptr);
    uint64_t old_add, old_cas, now;
    std::memcpy(&old_add, base + 520, 8);
    std::memcpy(&old_cas, base + 528, 8);
    std::memcpy(&now, base + 512, 8);
    EXPECT_EQ(old_add, 100u);
    EXPECT_EQ(old_cas, 105u);
    EXPECT_EQ(now, 7u);
  }
}

// UD through the builder: ibv_wr_set_ud_addr, and ibv_wc_read_src_qp on the receiver.
TEST_F(Surface, WrSetUdAddrAndReadSrcQp) {
  ibv_qp* ua = nullptr;
  ibv_qp* ub = nullptr;
  ASSERT_NO_FATAL_FAILURE(make_ud_pair(&ua, &ub));
  ibv_ah_attr aa{};
  aa.is_global = 1;
  aa.port_num = 1;
  aa.grh.hop_limit = 1;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &aa.grh.dgid), 0);
  ibv_ah* ah = ibv_create_ah(pd, &aa);
  ASSERT_NE(ah, nullptr);
  post_recv(ub, mr, buf.data() + 2048, 40 + 64);
  std::memcpy(buf.data(), "over UD", 8);
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(ua);
  ASSERT_NE(qx, nullptr);
  ibv_wr_start(qx);
  qx->wr_id = 7;
  qx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_send(qx);
  ibv_wr_set_ud_addr(qx, ah, ub->qp_num, 0x11111111);
  ibv_wr_set_sge(qx, mr->lkey, reinterpret_cast<uint64_t>(buf.data()), 8);
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  const std::vector<Seen> seen = poll_ex(cqx, 2);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NE(find_seen(seen, 7, IBV_WC_SEND), nullptr);
  EXPECT_STREQ(buf.data() + 2048 + 40, "over UD");
  // The receive again, for its source QP.
  post_recv(ub, mr, buf.data() + 2048, 40 + 64);
  ibv_wr_start(qx);
  ibv_wr_send(qx);
  ibv_wr_set_ud_addr(qx, ah, ub->qp_num, 0x11111111);
  ibv_wr_set_sge(qx, mr->lkey, reinterpret_cast<uint64_t>(buf.data()), 8);
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  uint32_t src = 0;
  for (int got = 0; got < 2;) {
    ibv_poll_cq_attr pa{};
    if (ibv_start_poll(cqx, &pa) != 0) continue;
    if (ibv_wc_read_opcode(cqx) == IBV_WC_RECV) src = ibv_wc_read_src_qp(cqx);
    ++got;
    ibv_end_poll(cqx);
  }
  EXPECT_EQ(src, ua->qp_num);
  EXPECT_EQ(ibv_destroy_qp(ua), 0);
  EXPECT_EQ(ibv_destroy_qp(ub), 0);
  EXPECT_EQ(ibv_destroy_ah(ah), 0);
}

// A UD QP attached to an IPv4 multicast group (its IPv4-mapped GID) receives what is sent
// to the group; detached, it no longer belongs to it.
TEST_F(Surface, AttachMcastAndDetachMcast) {
  ibv_qp* ua = nullptr;
  ibv_qp* ub = nullptr;
  ASSERT_NO_FATAL_FAILURE(make_ud_pair(&ua, &ub));
  ibv_gid group{};
  group.raw[10] = group.raw[11] = 0xff;
  const uint8_t ip[4] = {239, 1, 2, 3};
  std::memcpy(group.raw + 12, ip, 4);
  ASSERT_EQ(ibv_attach_mcast(ub, &group, 0), 0);
  ibv_ah_attr aa{};
  aa.is_global = 1;
  aa.port_num = 1;
  aa.grh.hop_limit = 1;
  aa.grh.dgid = group;
  ibv_ah* ah = ibv_create_ah(pd, &aa);
  ASSERT_NE(ah, nullptr);
  post_recv(ub, mr, buf.data() + 2048, 40 + 64);
  std::memcpy(buf.data(), "to the group", 13);
  ibv_sge sg{reinterpret_cast<uint64_t>(buf.data()), 13, mr->lkey};
  ibv_send_wr w{};
  w.sg_list = &sg;
  w.num_sge = 1;
  w.opcode = IBV_WR_SEND;
  w.send_flags = IBV_SEND_SIGNALED;
  w.wr.ud.ah = ah;
  w.wr.ud.remote_qpn = 0xffffff;
  w.wr.ud.remote_qkey = 0x11111111;
  ibv_send_wr* bad;
  ASSERT_EQ(ibv_post_send(ua, &w, &bad), 0);
  ibv_wc wc[2];
  ASSERT_EQ(poll_one(cq, &wc[0]), 1);
  ASSERT_EQ(poll_one(cq, &wc[1]), 1);
  EXPECT_EQ(wc[0].status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc[1].status, IBV_WC_SUCCESS);
  EXPECT_STREQ(buf.data() + 2048 + 40, "to the group");
  EXPECT_EQ(ibv_detach_mcast(ub, &group, 0), 0);
  EXPECT_EQ(ibv_detach_mcast(ub, &group, 0), EINVAL) << "no longer attached";
  ibv_gid unicast;
  ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &unicast), 0);
  EXPECT_EQ(ibv_attach_mcast(ub, &unicast, 0), EINVAL) << "not a multicast GID";
  EXPECT_EQ(ibv_attach_mcast(ub, nullptr, 0), EINVAL);
  EXPECT_EQ(ibv_destroy_qp(ua), 0);
  EXPECT_EQ(ibv_destroy_qp(ub), 0);
  EXPECT_EQ(ibv_destroy_ah(ah), 0);
}

// ---------------------------------------------------------------- devices, QPs, SRQs
TEST_F(Surface, DeviceListNameGuidAndIndex) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  ASSERT_NE(list, nullptr);
  ASSERT_GE(n, 1);
  int found = -1;
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(ibv_get_device_index(list[i]), i);
    if (std::strcmp(ibv_get_device_name(list[i]), "dverbs0") == 0) found = i;
  }
  ASSERT_GE(found, 0);
  EXPECT_EQ(list[n], nullptr);
  EXPECT_EQ(ibv_get_device_guid(list[found]), attr_ex().orig_attr.node_guid);
  ibv_device forged{};
  errno = 0;
  EXPECT_EQ(ibv_get_device_index(&forged), -1);
  EXPECT_EQ(errno, EINVAL);
  ibv_free_device_list(list);
}

TEST_F(Surface, QueryQpReportsWhatWasSet) {
  ibv_qp_attr at{};
  ibv_qp_init_attr init{};
  ASSERT_EQ(ibv_query_qp(a, &at,
                         IBV_QP_STATE | IBV_QP_CAP | IBV_QP_DEST_QPN | IBV_QP_SQ_PSN |
                             IBV_QP_PATH_MTU | IBV_QP_ACCESS_FLAGS,
                         &init),
            0);
  EXPECT_EQ(at.qp_state, IBV_QPS_RTS);
  EXPECT_EQ(at.dest_qp_num, b->qp_num);
  EXPECT_EQ(at.path_mtu, IBV_MTU_1024);
  EXPECT_TRUE(at.qp_access_flags & IBV_ACCESS_REMOTE_WRITE);
  EXPECT_GE(at.cap.max_send_wr, 16u);
  EXPECT_EQ(init.qp_type, IBV_QPT_RC);
  EXPECT_EQ(init.send_cq, cq);
  EXPECT_EQ(ibv_query_qp(a, nullptr, IBV_QP_STATE, &init), EINVAL);
}

// ibv_create_srq_ex: basic SRQs (the inline forwards a PD-only request to ibv_create_srq;
// with IBV_SRQ_INIT_ATTR_TYPE it reaches the create_srq_ex op).
TEST_F(Surface, CreateSrqExBasic) {
  if (attr_ex().orig_attr.max_srq == 0) GTEST_SKIP() << "the device reports no SRQ support";
  ibv_srq_init_attr_ex sx{};
  sx.attr.max_wr = 8;
  sx.attr.max_sge = 1;
  sx.comp_mask = IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_CQ;
  sx.srq_type = IBV_SRQT_BASIC;
  sx.pd = pd;
  sx.cq = cq;
  EXPECT_NULL_ERRNO(ibv_create_srq_ex(ctx, &sx), EOPNOTSUPP);  // a CQ is for XRC SRQs
  sx.comp_mask = IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_TYPE;
  sx.srq_type = IBV_SRQT_TM;
  EXPECT_NULL_ERRNO(ibv_create_srq_ex(ctx, &sx), EOPNOTSUPP);  // tag matching
  sx.srq_type = IBV_SRQT_BASIC;
  sx.comp_mask = IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_TYPE;
  ibv_srq* srq = ibv_create_srq_ex(ctx, &sx);
  ASSERT_NE(srq, nullptr) << std::strerror(errno);
  ibv_qp* qa = nullptr;
  ibv_qp* qs = nullptr;
  ASSERT_NO_FATAL_FAILURE(srq_pair(srq, &qa, &qs));
  ASSERT_NO_FATAL_FAILURE(post_srq_recv(srq, 1));
  std::memcpy(buf.data(), "via SRQ", 8);
  ASSERT_EQ(post_send(qa, IBV_WR_SEND, mr, buf.data(), 8), 0);
  ibv_wc wc[2];
  ASSERT_EQ(poll_one(cq, &wc[0]), 1);
  ASSERT_EQ(poll_one(cq, &wc[1]), 1);
  EXPECT_STREQ(buf.data() + 2048, "via SRQ");
  EXPECT_EQ(ibv_destroy_qp(qs), 0);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_destroy_srq(srq), 0);
}

// IBV_SRQ_MAX_WR with IBV_SRQ_LIMIT: a size the SRQ already holds is accepted and the limit
// is armed (its event arrives); growing the SRQ is EOPNOTSUPP.
TEST_F(Surface, ModifySrqLimitWithMaxWr) {
  const ibv_device_attr_ex dx = attr_ex();
  if (dx.orig_attr.max_srq == 0) GTEST_SKIP() << "the device reports no SRQ support";
  ibv_srq_init_attr si{};
  si.attr.max_wr = 8;
  si.attr.max_sge = 1;
  ibv_srq* srq = ibv_create_srq(pd, &si);
  ASSERT_NE(srq, nullptr);
  ibv_qp* qa = nullptr;
  ibv_qp* qs = nullptr;
  ASSERT_NO_FATAL_FAILURE(srq_pair(srq, &qa, &qs));
  ASSERT_NO_FATAL_FAILURE(post_srq_recv(srq, 4));
  ibv_srq_attr sa{};
  sa.max_wr = dx.orig_attr.max_srq_wr;
  if (uint32_t(dx.orig_attr.max_srq_wr) > si.attr.max_wr) {
    EXPECT_EQ(ibv_modify_srq(srq, &sa, IBV_SRQ_MAX_WR), EOPNOTSUPP) << "growing";
  }
  sa.max_wr = 8;
  sa.srq_limit = 3;
  ASSERT_EQ(ibv_modify_srq(srq, &sa, IBV_SRQ_MAX_WR | IBV_SRQ_LIMIT), 0);
  for (int i = 0; i < 2; ++i) {  // 4 -> 2 posted receives: below the limit of 3
    ASSERT_EQ(post_send(qa, IBV_WR_SEND, mr, buf.data(), 8), 0);
    ibv_wc wc[2];
    ASSERT_EQ(poll_one(cq, &wc[0]), 1);
    ASSERT_EQ(poll_one(cq, &wc[1]), 1);
  }
  ibv_async_event ev;
  ASSERT_TRUE(next_async(ctx, IBV_EVENT_SRQ_LIMIT_REACHED, &ev)) << "the limit was not armed";
  EXPECT_EQ(ev.element.srq, srq);
  ibv_ack_async_event(&ev);
  EXPECT_EQ(ibv_destroy_qp(qs), 0);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_destroy_srq(srq), 0);
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
  ASSERT_NO_FATAL_FAILURE(verbs_loop::rc_to_rts(qb));
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

// SQ_DRAINED when an idle QP enters SQD with the notification asked for; CQ_ERR when a CQ
// overruns (the completion that does not fit is lost).
TEST_F(Surface, GetAsyncEventSqDrainedAndCqErr) {
  ibv_qp_attr at{};
  at.qp_state = IBV_QPS_SQD;
  at.en_sqd_async_notify = 1;
  ASSERT_EQ(ibv_modify_qp(a, &at, IBV_QP_STATE | IBV_QP_EN_SQD_ASYNC_NOTIFY), 0);
  ibv_async_event ev;
  ASSERT_TRUE(next_async(ctx, IBV_EVENT_SQ_DRAINED, &ev)) << "no SQ_DRAINED";
  EXPECT_EQ(ev.element.qp, a);
  ibv_ack_async_event(&ev);
  at.qp_state = IBV_QPS_RTS;
  ASSERT_EQ(ibv_modify_qp(a, &at, IBV_QP_STATE), 0);  // the fixture's pair sends again

  ibv_cq* small = ibv_create_cq(ctx, 1, nullptr, nullptr, 0);
  ASSERT_NE(small, nullptr);
  // One more than fit: the reported cqe is exactly the capacity (Life.CqOverrunAtCqePlusOne).
  const uint32_t n = uint32_t(small->cqe) + 1;
  ibv_qp_init_attr init{};
  init.send_cq = small;
  init.recv_cq = cq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = n;
  init.cap.max_recv_wr = 1;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  ibv_qp* qa = ibv_create_qp(pd, &init);
  ibv_qp* qb = make_rc_qp(pd, cq);
  ASSERT_TRUE(qa && qb) << "send queue of " << n << ": " << std::strerror(errno);
  ASSERT_NO_FATAL_FAILURE(connect(ctx, qa, qb));
  for (uint32_t i = 0; i < n; ++i)
    ASSERT_EQ(post_send(qa, IBV_WR_RDMA_WRITE, mr, buf.data(), 8,
                        reinterpret_cast<uint64_t>(buf.data() + 1024), mr->rkey),
              0);
  ASSERT_TRUE(next_async(ctx, IBV_EVENT_CQ_ERR, &ev)) << "no CQ_ERR after " << n << " WRs";
  EXPECT_EQ(ev.element.cq, small);
  ibv_ack_async_event(&ev);
  EXPECT_EQ(ibv_destroy_qp(qa), 0);
  EXPECT_EQ(ibv_destroy_qp(qb), 0);
  EXPECT_EQ(ibv_destroy_cq(small), 0);
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

// Exported by libibverbs.so.1 but declared in no installed header (rdma-core's private
// driver.h / marshall.h, or removed ones): librdmacm and old programs use them.
TEST_F(Surface, ExportsOutsideVerbsH) {
  const char* sys = ibv_get_sysfs_path();
  ASSERT_NE(sys, nullptr);
  EXPECT_STREQ(sys, std::getenv("SYSFS_PATH") ? std::getenv("SYSFS_PATH") : "/sys");
  char line[64];
  EXPECT_GT(ibv_read_sysfs_file("/proc/self", "stat", line, sizeof line), 0);
  EXPECT_EQ(ibv_read_sysfs_file("/proc/self", "no-such-file", line, sizeof line), -1);
  EXPECT_EQ(ibv_dontfork_range(buf.data(), buf.size()), 0);
  EXPECT_EQ(ibv_dofork_range(buf.data(), buf.size()), 0);
  ib_uverbs_qp_attr k{};
  k.qp_state = IBV_QPS_RTS;
  k.dest_qp_num = 0x1234;
  k.max_send_wr = 17;
  k.ah_attr.grh.hop_limit = 9;
  k.ah_attr.is_global = 1;
  ibv_qp_attr q{};
  ibv_copy_qp_attr_from_kern(&q, &k);
  EXPECT_EQ(q.dest_qp_num, 0x1234u);
  EXPECT_EQ(q.cap.max_send_wr, 17u);
  EXPECT_EQ(q.ah_attr.grh.hop_limit, 9);
  EXPECT_EQ(q.ah_attr.is_global, 1);
  ibv_sa_path_rec p{};
  p.pkey = htobe16(0xffff);
  p.mtu = IBV_MTU_1024;
  p.numb_path = 1;
  ib_user_path_rec u{};
  ibv_copy_path_rec_to_kern(&u, &p);
  ibv_sa_path_rec back{};
  ibv_copy_path_rec_from_kern(&back, &u);
  EXPECT_EQ(back.pkey, p.pkey);
  EXPECT_EQ(back.mtu, p.mtu);
  EXPECT_EQ(back.numb_path, 1);
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
