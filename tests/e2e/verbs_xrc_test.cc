// XRC through the drop-in (issue 18, item 2), a program built against the system's
// <infiniband/verbs.h>: domains shared by file (ibv_open_xrcd's fd/O_CREAT/O_EXCL rules),
// XRC SRQs and their numbers, XRC_SEND QPs whose messages land in the SRQ each WR names
// (data, completions on that SRQ's CQ), RDMA WRITE/READ/atomics over XRC, ibv_open_qp, and
// misuse: an SRQ number of another domain (error completion, nothing delivered), posting
// to the wrong half, closing a domain in use (EBUSY).
//
// Run: tests/e2e/verbs_modes.sh DVERBS_RUN embedded|daemon verbs_xrc_test (meson does):
// every QP is in this process, connected through the loopback port.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "verbs_loop.h"

namespace {

using verbs_loop::open_dverbs;
using verbs_loop::poll_one;

// A file for a domain: created empty, removed at the end.
struct DomainFile {
  std::string path = "/tmp/dverbs-xrc-test.XXXXXX";
  int fd = -1;
  DomainFile() { fd = mkstemp(path.data()); }
  ~DomainFile() {
    if (fd >= 0) close(fd);
    unlink(path.c_str());
  }
};

ibv_xrcd* open_xrcd(ibv_context* ctx, int fd, int oflags) {
  ibv_xrcd_init_attr a{};
  a.comp_mask = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS;
  a.fd = fd;
  a.oflags = oflags;
  return ibv_open_xrcd(ctx, &a);
}

// One context with a PD, a domain, XRC SRQs and XRC QPs connected over loopback.
struct Xrc {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_xrcd* xrcd = nullptr;
  ibv_cq* scq = nullptr;  // the senders'
  ibv_gid gid{};
  std::vector<ibv_qp*> qps;
  std::vector<ibv_srq*> srqs;
  std::vector<ibv_cq*> cqs;

  ~Xrc() {
    for (ibv_qp* q : qps) ibv_destroy_qp(q);
    for (ibv_srq* s : srqs) ibv_destroy_srq(s);
    if (xrcd) ibv_close_xrcd(xrcd);
    for (ibv_cq* c : cqs) ibv_destroy_cq(c);
    if (scq) ibv_destroy_cq(scq);
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
  }

  void init() {
    ctx = open_dverbs();
    ASSERT_NE(ctx, nullptr);
    ASSERT_EQ(ibv_query_gid(ctx, 1, 0, &gid), 0);
    pd = ibv_alloc_pd(ctx);
    scq = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
    xrcd = open_xrcd(ctx, -1, O_CREAT);  // a private domain
    ASSERT_TRUE(pd && scq && xrcd);
  }

  // Remembers a created object for the destructor.
  template <class T>
  static T* kept(std::vector<T*>& all, T* o) {
    if (o) all.push_back(o);
    return o;
  }

  ibv_cq* cq() { return kept(cqs, ibv_create_cq(ctx, 64, nullptr, nullptr, 0)); }

  // A CQ, an XRC SRQ on it, a target and an initiator of the private domain, connected.
  void one_of_each(ibv_cq** c, ibv_srq** s, ibv_qp** t, ibv_qp** i) {
    *c = cq();
    *s = srq(xrcd, *c);
    *t = recv_qp(xrcd);
    *i = send_qp();
    ASSERT_TRUE(*c && *s && *t && *i);
    connect(*i, *t);
  }

  ibv_srq* srq(ibv_xrcd* x, ibv_cq* c) {
    ibv_srq_init_attr_ex a{};
    a.attr.max_wr = 16;
    a.attr.max_sge = 1;
    a.comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_CQ |
                  IBV_SRQ_INIT_ATTR_PD;
    a.srq_type = IBV_SRQT_XRC;
    a.xrcd = x;
    a.cq = c;
    a.pd = pd;
    return kept(srqs, ibv_create_srq_ex(ctx, &a));
  }

  ibv_qp* recv_qp(ibv_xrcd* x) {
    ibv_qp_init_attr_ex a{};
    a.qp_type = IBV_QPT_XRC_RECV;
    a.comp_mask = IBV_QP_INIT_ATTR_XRCD;
    a.xrcd = x;
    return kept(qps, ibv_create_qp_ex(ctx, &a));
  }

  ibv_qp* send_qp() {
    ibv_qp_init_attr_ex a{};
    a.qp_type = IBV_QPT_XRC_SEND;
    a.send_cq = scq;
    a.cap.max_send_wr = 16;
    a.cap.max_send_sge = 1;
    a.comp_mask = IBV_QP_INIT_ATTR_PD;
    a.pd = pd;
    return kept(qps, ibv_create_qp_ex(ctx, &a));
  }

  void modify(ibv_qp* q, ibv_qp_attr& at, int mask) { ASSERT_EQ(ibv_modify_qp(q, &at, mask), 0); }

  // The modify_qp sequences of ibv_xsrq_pingpong: the target needs responder attributes
  // only, the initiator requester attributes only.
  void connect(ibv_qp* snd, ibv_qp* rcv) {
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_INIT;
    at.port_num = 1;
    at.qp_access_flags =
        IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
    const int to_init = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
    modify(rcv, at, to_init);
    at.qp_access_flags = 0;
    modify(snd, at, to_init);
    ibv_qp_attr r{};
    r.qp_state = IBV_QPS_RTR;
    r.path_mtu = IBV_MTU_1024;
    r.rq_psn = 7;
    r.min_rnr_timer = 12;
    r.max_dest_rd_atomic = 4;
    r.ah_attr.is_global = 1;
    r.ah_attr.grh.dgid = gid;
    r.ah_attr.grh.hop_limit = 1;
    r.ah_attr.port_num = 1;
    r.dest_qp_num = snd->qp_num;
    const int rtr = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
    modify(rcv, r, rtr | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    r.dest_qp_num = rcv->qp_num;
    modify(snd, r, rtr);
    ibv_qp_attr s{};
    s.qp_state = IBV_QPS_RTS;
    s.timeout = 14;
    s.sq_psn = 7;
    s.retry_cnt = 7;
    s.rnr_retry = 7;
    s.max_rd_atomic = 4;
    modify(rcv, s, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_SQ_PSN);
    modify(snd, s,
           IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_SQ_PSN | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
               IBV_QP_MAX_QP_RD_ATOMIC);
  }
};

uint32_t srq_num(ibv_srq* s) {
  uint32_t n = 0;
  EXPECT_EQ(ibv_get_srq_num(s, &n), 0);
  return n;
}

void post_srq_recv(ibv_srq* s, ibv_mr* mr, char* buf, uint32_t len, uint64_t id) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(buf), len, mr->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  ASSERT_EQ(ibv_post_srq_recv(s, &wr, &bad), 0);
}

// One signaled WR of `op` on an XRC_SEND QP to remote XRC SRQ `srqn`.
int post_xrc(ibv_qp* q, ibv_wr_opcode op, uint32_t srqn, ibv_mr* mr, char* buf, uint32_t len,
             uint64_t id, uint64_t raddr = 0, uint32_t rkey = 0) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(buf), len, mr->lkey};
  ibv_send_wr wr{};
  wr.wr_id = id;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.qp_type.xrc.remote_srqn = srqn;
  if (op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
    wr.wr.atomic.remote_addr = raddr;
    wr.wr.atomic.rkey = rkey;
    wr.wr.atomic.compare_add = 5;
  } else {
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rkey;
  }
  ibv_send_wr* bad = nullptr;
  return ibv_post_send(q, &wr, &bad);
}

TEST(XrcDevice, AttributesSayXrc) {
  Xrc x;
  x.init();
  ibv_device_attr a{};
  ASSERT_EQ(ibv_query_device(x.ctx, &a), 0);
  EXPECT_TRUE(a.device_cap_flags & IBV_DEVICE_XRC);
  EXPECT_GT(a.max_srq, 0);
  ibv_device_attr_ex ax{};
  ASSERT_EQ(ibv_query_device_ex(x.ctx, nullptr, &ax), 0);
  EXPECT_TRUE(ax.device_cap_flags_ex & IBV_DEVICE_XRC);
}

// Two opens of one file are one domain: a QP created through one handle opens through the
// other; O_EXCL refuses it, a file without a domain needs O_CREAT, and private domains are
// not shared.
TEST(XrcDomain, SharedByFileAndPrivateWithoutOne) {
  Xrc x;
  x.init();
  DomainFile f;
  ASSERT_GE(f.fd, 0);
  EXPECT_EQ(open_xrcd(x.ctx, f.fd, 0), nullptr) << "no domain yet and no O_CREAT";
  EXPECT_EQ(errno, EINVAL);
  ibv_xrcd* d1 = open_xrcd(x.ctx, f.fd, O_CREAT);
  ASSERT_NE(d1, nullptr);
  int fd2 = open(f.path.c_str(), O_RDONLY);  // another descriptor of the same file
  ASSERT_GE(fd2, 0);
  ibv_xrcd* d2 = open_xrcd(x.ctx, fd2, 0);
  ASSERT_NE(d2, nullptr);
  EXPECT_EQ(open_xrcd(x.ctx, fd2, O_CREAT | O_EXCL), nullptr);
  EXPECT_EQ(errno, EINVAL);
  ibv_qp* t = x.recv_qp(d1);
  ASSERT_NE(t, nullptr);
  ibv_qp_open_attr oa{};
  oa.comp_mask = IBV_QP_OPEN_ATTR_NUM | IBV_QP_OPEN_ATTR_XRCD | IBV_QP_OPEN_ATTR_TYPE;
  oa.qp_num = t->qp_num;
  oa.qp_type = IBV_QPT_XRC_RECV;
  oa.xrcd = d2;
  ibv_qp* opened = ibv_open_qp(x.ctx, &oa);
  ASSERT_NE(opened, nullptr) << "the same domain through the second handle";
  EXPECT_EQ(opened->qp_num, t->qp_num);
  EXPECT_EQ(ibv_destroy_qp(opened), 0);
  oa.xrcd = x.xrcd;  // a private domain: not this QP's
  EXPECT_EQ(ibv_open_qp(x.ctx, &oa), nullptr);
  EXPECT_EQ(errno, EINVAL);
  ibv_xrcd* other = open_xrcd(x.ctx, -1, O_CREAT);
  ASSERT_NE(other, nullptr);
  oa.xrcd = other;
  EXPECT_EQ(ibv_open_qp(x.ctx, &oa), nullptr);
  EXPECT_EQ(ibv_close_xrcd(other), 0);
  // The domain stays while a handle has a QP in it: closing the other handle is fine.
  EXPECT_EQ(ibv_close_xrcd(d2), 0);
  EXPECT_EQ(ibv_close_xrcd(d1), EBUSY) << "the last handle of a domain with a QP";
  ASSERT_EQ(ibv_destroy_qp(t), 0);
  x.qps.clear();
  EXPECT_EQ(ibv_close_xrcd(d1), 0);
  close(fd2);
  // Bad arguments.
  EXPECT_EQ(open_xrcd(x.ctx, -1, 0), nullptr) << "a private domain must be created";
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(open_xrcd(x.ctx, 1000000, O_CREAT), nullptr);
  EXPECT_EQ(errno, EBADF);
}

std::string g_self;  // this executable, for the child of SharedAcrossDaemonClients

// The child of SharedAcrossDaemonClients (a process of its own, so a client of its own on
// dverbsd): opens the domain of `path` WITHOUT O_CREAT (it exists only if the daemon shares
// the parent's), creates an XRC_RECV QP in it, writes the QP number to `out` and keeps the
// QP until `in` closes. Exit 0, or 1 with a line on stderr.
int xrc_child(const char* path, int out, int in) {
  ibv_context* ctx = open_dverbs();
  int fd = open(path, O_RDONLY);
  ibv_xrcd* x = ctx && fd >= 0 ? open_xrcd(ctx, fd, 0) : nullptr;
  if (!x) {
    std::fprintf(stderr, "child: no shared domain: %s\n", std::strerror(errno));
    return 1;
  }
  ibv_qp_init_attr_ex a{};
  a.qp_type = IBV_QPT_XRC_RECV;
  a.comp_mask = IBV_QP_INIT_ATTR_XRCD;
  a.xrcd = x;
  ibv_qp* q = ibv_create_qp_ex(ctx, &a);
  if (!q) return 1;
  const uint32_t qpn = q->qp_num;
  if (write(out, &qpn, sizeof qpn) != sizeof qpn) return 1;
  char b;
  while (read(in, &b, 1) > 0) {
  }
  ibv_destroy_qp(q);
  ibv_close_xrcd(x);
  ibv_close_device(ctx);
  return 0;
}

// Daemon mode: a domain is the daemon's, keyed by the file, so two clients (processes) that
// open the same file share it: the parent opens the QP its child created in it.
TEST(XrcDomain, SharedAcrossDaemonClients) {
  if (!std::getenv("DVERBS_DAEMON")) GTEST_SKIP() << "embedded: every process has its own HCA";
  Xrc x;
  x.init();
  DomainFile f;
  ASSERT_GE(f.fd, 0);
  ibv_xrcd* d = open_xrcd(x.ctx, f.fd, O_CREAT);
  ASSERT_NE(d, nullptr);
  int up[2], down[2];
  ASSERT_EQ(pipe(up), 0);
  ASSERT_EQ(pipe(down), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    const std::string o = std::to_string(up[1]), i = std::to_string(down[0]);
    execl(g_self.c_str(), g_self.c_str(), "--xrc-child", f.path.c_str(), o.c_str(), i.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(up[1]);
  close(down[0]);
  uint32_t qpn = 0;
  ASSERT_EQ(read(up[0], &qpn, sizeof qpn), ssize_t(sizeof qpn)) << "the child found no domain";
  ibv_qp_open_attr oa{};
  oa.comp_mask = IBV_QP_OPEN_ATTR_NUM | IBV_QP_OPEN_ATTR_XRCD | IBV_QP_OPEN_ATTR_TYPE;
  oa.qp_num = qpn;
  oa.qp_type = IBV_QPT_XRC_RECV;
  oa.xrcd = d;
  ibv_qp* q = ibv_open_qp(x.ctx, &oa);
  EXPECT_NE(q, nullptr) << "the child's QP through the parent's handle: " << std::strerror(errno);
  if (q) {
    EXPECT_EQ(q->qp_num, qpn);
    EXPECT_EQ(ibv_destroy_qp(q), 0);
  }
  oa.xrcd = x.xrcd;  // the parent's private domain
  EXPECT_EQ(ibv_open_qp(x.ctx, &oa), nullptr);
  close(down[1]);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  close(up[0]);
  EXPECT_EQ(ibv_close_xrcd(d), 0);
}

// Two initiators, each connected to a target of the domain, send into both SRQs: every
// message lands in the SRQ its WR names, completes on that SRQ's CQ, data intact.
TEST(XrcData, SendsLandInTheNamedSrqOfTheDomain) {
  Xrc x;
  x.init();
  ibv_cq* c1 = x.cq();
  ibv_cq* c2 = x.cq();
  ibv_srq* s1 = x.srq(x.xrcd, c1);
  ibv_srq* s2 = x.srq(x.xrcd, c2);
  ASSERT_TRUE(s1 && s2);
  EXPECT_NE(srq_num(s1), srq_num(s2));
  ibv_qp* t1 = x.recv_qp(x.xrcd);
  ibv_qp* t2 = x.recv_qp(x.xrcd);
  ibv_qp* i1 = x.send_qp();
  ibv_qp* i2 = x.send_qp();
  ASSERT_TRUE(t1 && t2 && i1 && i2);
  x.connect(i1, t1);
  x.connect(i2, t2);
  static char rbuf[4][2048], sbuf[4][2048];
  ibv_mr* rmr = ibv_reg_mr(x.pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* smr = ibv_reg_mr(x.pd, sbuf, sizeof sbuf, 0);
  ASSERT_TRUE(rmr && smr);
  for (int i = 0; i < 2; i++) {
    post_srq_recv(s1, rmr, rbuf[i], 2048, 10 + i);
    post_srq_recv(s2, rmr, rbuf[2 + i], 2048, 20 + i);
  }
  // i1 → s1 and s2, i2 → s2 and s1; 1500 bytes: two packets each (MTU 1024).
  struct Msg {
    ibv_qp* qp;
    ibv_srq* srq;
    char fill;
  } msgs[4] = {{i1, s1, 'a'}, {i1, s2, 'b'}, {i2, s2, 'c'}, {i2, s1, 'd'}};
  for (int i = 0; i < 4; i++) {
    std::memset(sbuf[i], msgs[i].fill, 1500);
    ASSERT_EQ(post_xrc(msgs[i].qp, IBV_WR_SEND, srq_num(msgs[i].srq), smr, sbuf[i], 1500, i), 0);
  }
  ibv_wc wc{};
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(poll_one(x.scq, &wc), 1);
    EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  }
  // Each SRQ's CQ got exactly its two messages, from the target the sender is connected to.
  for (ibv_cq* c : {c1, c2}) {
    std::string got;
    for (int i = 0; i < 2; i++) {
      ASSERT_EQ(poll_one(c, &wc), 1);
      ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
      EXPECT_EQ(wc.opcode, IBV_WC_RECV);
      EXPECT_EQ(wc.byte_len, 1500u);
      const char* b = rbuf[wc.wr_id >= 20 ? 2 + (wc.wr_id - 20) : wc.wr_id - 10];
      EXPECT_EQ(std::string(b, 1500), std::string(1500, b[0]));
      EXPECT_EQ(wc.qp_num, b[0] == 'a' || b[0] == 'b' ? t1->qp_num : t2->qp_num);
      EXPECT_EQ(wc.wr_id / 10, c == c1 ? 1u : 2u);
      got += b[0];
    }
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, c == c1 ? "ad" : "bc");
  }
  EXPECT_EQ(ibv_poll_cq(c1, 1, &wc), 0);
  EXPECT_EQ(ibv_poll_cq(c2, 1, &wc), 0);
  ibv_dereg_mr(rmr);
  ibv_dereg_mr(smr);
}

// The ibv_wr_* builder on an XRC_SEND QP: ibv_wr_set_xrc_srqn names the SRQ.
TEST(XrcData, WrBuilderNamesTheSrq) {
  Xrc x;
  x.init();
  ibv_cq* c = x.cq();
  ibv_srq* s1 = x.srq(x.xrcd, c);
  ibv_srq* s2 = x.srq(x.xrcd, c);
  ibv_qp* t = x.recv_qp(x.xrcd);
  ibv_qp_init_attr_ex a{};
  a.qp_type = IBV_QPT_XRC_SEND;
  a.send_cq = x.scq;
  a.cap.max_send_wr = 4;
  a.cap.max_send_sge = 1;
  a.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  a.send_ops_flags = IBV_QP_EX_WITH_SEND;
  a.pd = x.pd;
  ibv_qp* i = Xrc::kept(x.qps, ibv_create_qp_ex(x.ctx, &a));
  ASSERT_TRUE(s1 && s2 && t && i);
  x.connect(i, t);
  static char rbuf[64], sbuf[64] = "built";
  ibv_mr* mr = ibv_reg_mr(x.pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* smr = ibv_reg_mr(x.pd, sbuf, sizeof sbuf, 0);
  post_srq_recv(s2, mr, rbuf, sizeof rbuf, 2);
  ibv_qp_ex* qx = ibv_qp_to_qp_ex(i);
  ASSERT_NE(qx, nullptr);
  ibv_wr_start(qx);
  qx->wr_id = 7;
  qx->wr_flags = IBV_SEND_SIGNALED;
  ibv_wr_send(qx);
  ibv_wr_set_xrc_srqn(qx, srq_num(s2));
  ibv_wr_set_sge(qx, smr->lkey, reinterpret_cast<uintptr_t>(sbuf), 6);
  ASSERT_EQ(ibv_wr_complete(qx), 0);
  ibv_wc wc{};
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  ASSERT_EQ(poll_one(c, &wc), 1);
  EXPECT_EQ(wc.wr_id, 2u) << "the SRQ the builder named";
  EXPECT_STREQ(rbuf, "built");
  ibv_dereg_mr(mr);
  ibv_dereg_mr(smr);
}

// RDMA WRITE, READ and FETCH_ADD over XRC: memory is checked against the PD of the SRQ
// the XRCETH names.
TEST(XrcData, RdmaAndAtomicsOverXrc) {
  Xrc x;
  x.init();
  ibv_cq* c;
  ibv_srq* s;
  ibv_qp *t, *i;
  x.one_of_each(&c, &s, &t, &i);
  alignas(8) static char target[4096], local[4096];
  ibv_mr* tmr = ibv_reg_mr(x.pd, target, sizeof target,
                           IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                               IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
  ibv_mr* lmr = ibv_reg_mr(x.pd, local, sizeof local, IBV_ACCESS_LOCAL_WRITE);
  ASSERT_TRUE(tmr && lmr);
  const auto raddr = reinterpret_cast<uintptr_t>(target);
  std::memset(local, 'w', 3000);
  ASSERT_EQ(post_xrc(i, IBV_WR_RDMA_WRITE, srq_num(s), lmr, local, 3000, 1, raddr, tmr->rkey), 0);
  ibv_wc wc{};
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(std::string(target, 3000), std::string(3000, 'w'));
  std::memset(target + 3000, 'r', 1000);
  ASSERT_EQ(post_xrc(i, IBV_WR_RDMA_READ, srq_num(s), lmr, local, 1000, 2, raddr + 3000, tmr->rkey),
            0);
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(std::string(local, 1000), std::string(1000, 'r'));
  uint64_t v = 37;
  std::memcpy(target + 4088, &v, 8);
  ASSERT_EQ(post_xrc(i, IBV_WR_ATOMIC_FETCH_AND_ADD, srq_num(s), lmr, local, 8, 3, raddr + 4088,
                     tmr->rkey),
            0);
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  uint64_t orig = 0, now = 0;
  std::memcpy(&orig, local, 8);
  std::memcpy(&now, target + 4088, 8);
  EXPECT_EQ(orig, 37u);
  EXPECT_EQ(now, 42u);
  ibv_dereg_mr(tmr);
  ibv_dereg_mr(lmr);
}

// ibv_open_qp: the opened handle keeps the target when its creator destroys its own, and
// the opener may modify it.
TEST(XrcOpenQp, OpenedHandleOutlivesTheCreatorsAndModifies) {
  Xrc x;
  x.init();
  ibv_cq* c = x.cq();
  ibv_srq* s = x.srq(x.xrcd, c);
  ibv_qp* t = x.recv_qp(x.xrcd);
  ibv_qp* i = x.send_qp();
  ASSERT_TRUE(s && t && i);
  ibv_qp_open_attr oa{};
  oa.comp_mask = IBV_QP_OPEN_ATTR_NUM | IBV_QP_OPEN_ATTR_XRCD | IBV_QP_OPEN_ATTR_TYPE |
                 IBV_QP_OPEN_ATTR_CONTEXT;
  oa.qp_num = t->qp_num;
  oa.qp_type = IBV_QPT_XRC_RECV;
  oa.xrcd = x.xrcd;
  oa.qp_context = &oa;
  ibv_qp* o = ibv_open_qp(x.ctx, &oa);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->qp_context, &oa);
  EXPECT_EQ(o->qp_type, IBV_QPT_XRC_RECV);
  x.connect(i, o);  // the opener moves the target to RTS
  ibv_qp_attr qa{};
  ibv_qp_init_attr qi{};
  ASSERT_EQ(ibv_query_qp(t, &qa, IBV_QP_STATE, &qi), 0);
  EXPECT_EQ(qa.qp_state, IBV_QPS_RTS) << "one QP, two handles";
  ASSERT_EQ(ibv_destroy_qp(t), 0);  // the creator's handle
  x.qps.erase(std::find(x.qps.begin(), x.qps.end(), t));
  static char rbuf[64], sbuf[64] = "through the opened handle";
  ibv_mr* mr = ibv_reg_mr(x.pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* smr = ibv_reg_mr(x.pd, sbuf, sizeof sbuf, 0);
  post_srq_recv(s, mr, rbuf, sizeof rbuf, 5);
  ASSERT_EQ(post_xrc(i, IBV_WR_SEND, srq_num(s), smr, sbuf, sizeof sbuf, 6), 0);
  ibv_wc wc{};
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
  ASSERT_EQ(poll_one(c, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_SUCCESS);
  EXPECT_EQ(wc.qp_num, o->qp_num);
  EXPECT_STREQ(rbuf, "through the opened handle");
  EXPECT_EQ(ibv_close_xrcd(x.xrcd), EBUSY) << "the opened QP and the SRQ are in it";
  EXPECT_EQ(ibv_destroy_qp(o), 0);
  ibv_dereg_mr(mr);
  ibv_dereg_mr(smr);
}

// An XRCETH naming an SRQ of another domain: the target refuses it (the sender gets a
// remote invalid request error), and nothing reaches the other domain's SRQ.
TEST(XrcMisuse, ForeignSrqNumberIsAnErrorCompletionNotADelivery) {
  Xrc x;
  x.init();
  ibv_cq* mine = x.cq();
  ibv_cq* theirs = x.cq();
  ibv_srq* s = x.srq(x.xrcd, mine);
  ibv_xrcd* other = open_xrcd(x.ctx, -1, O_CREAT);
  ASSERT_NE(other, nullptr);
  ibv_srq* foreign = x.srq(other, theirs);
  ibv_qp* t = x.recv_qp(x.xrcd);
  ibv_qp* i = x.send_qp();
  ASSERT_TRUE(s && foreign && t && i);
  x.connect(i, t);
  static char rbuf[64];
  ibv_mr* mr = ibv_reg_mr(x.pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  post_srq_recv(foreign, mr, rbuf, sizeof rbuf, 1);
  post_srq_recv(s, mr, rbuf, sizeof rbuf, 2);
  ASSERT_EQ(post_xrc(i, IBV_WR_SEND, srq_num(foreign), mr, rbuf + 32, 16, 3), 0);
  ibv_wc wc{};
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_REM_INV_REQ_ERR) << ibv_wc_status_str(wc.status);
  EXPECT_EQ(ibv_poll_cq(theirs, 1, &wc), 0) << "nothing delivered into the other domain";
  EXPECT_EQ(ibv_poll_cq(mine, 1, &wc), 0);
  // An SRQ number that names nothing: the same refusal, on a fresh pair.
  ibv_qp* t2 = x.recv_qp(x.xrcd);
  ibv_qp* i2 = x.send_qp();
  ASSERT_TRUE(t2 && i2);
  x.connect(i2, t2);
  ASSERT_EQ(post_xrc(i2, IBV_WR_SEND, 0xabcdef, mr, rbuf + 32, 16, 4), 0);
  ASSERT_EQ(poll_one(x.scq, &wc), 1);
  EXPECT_EQ(wc.status, IBV_WC_REM_INV_REQ_ERR) << ibv_wc_status_str(wc.status);
  ibv_destroy_srq(foreign);
  x.srqs.erase(std::find(x.srqs.begin(), x.srqs.end(), foreign));
  EXPECT_EQ(ibv_close_xrcd(other), 0);
  ibv_dereg_mr(mr);
}

TEST(XrcMisuse, WrongHalfWrongTypeAndObjectsInUse) {
  Xrc x;
  x.init();
  ibv_cq* c;
  ibv_srq* s;
  ibv_qp *t, *i;
  x.one_of_each(&c, &s, &t, &i);
  static char buf[64];
  ibv_mr* mr = ibv_reg_mr(x.pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
  // The target has no send queue, the initiator no receive queue.
  EXPECT_EQ(post_xrc(t, IBV_WR_SEND, srq_num(s), mr, buf, 8, 1), EINVAL);
  // IBA 1.5's ATOMIC WRITE is RC's only.
  EXPECT_EQ(post_xrc(i, IBV_WR_ATOMIC_WRITE, srq_num(s), mr, buf, 8, 1), EINVAL);
  // ... so an XRC_SEND QP does not offer it (nor FLUSH) among its send ops: EOPNOTSUPP at
  // create, as on UC, rather than a QP whose every such request fails.
  {
    ibv_qp_init_attr_ex a{};
    a.qp_type = IBV_QPT_XRC_SEND;
    a.send_cq = x.scq;
    a.cap.max_send_wr = 4;
    a.cap.max_send_sge = 1;
    a.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    a.pd = x.pd;
    a.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_ATOMIC_WRITE;
    errno = 0;
    ibv_qp* q = ibv_create_qp_ex(x.ctx, &a);
    EXPECT_EQ(q, nullptr);
    EXPECT_EQ(errno, EOPNOTSUPP);
    if (q) ibv_destroy_qp(q);
    a.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE;
    q = ibv_create_qp_ex(x.ctx, &a);
    EXPECT_NE(q, nullptr) << std::strerror(errno);
    if (q) ibv_destroy_qp(q);
  }
  ibv_sge sge{reinterpret_cast<uintptr_t>(buf), 8, mr->lkey};
  ibv_recv_wr rwr{};
  rwr.sg_list = &sge;
  rwr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  EXPECT_EQ(ibv_post_recv(i, &rwr, &bad), EINVAL);
  // A basic SRQ has no number; an XRC SRQ needs its domain and CQ.
  ibv_srq_init_attr basic{};
  basic.attr.max_wr = 4;
  basic.attr.max_sge = 1;
  ibv_srq* b = ibv_create_srq(x.pd, &basic);
  ASSERT_NE(b, nullptr);
  uint32_t n = 0;
  EXPECT_EQ(ibv_get_srq_num(b, &n), EINVAL);
  EXPECT_EQ(ibv_destroy_srq(b), 0);
  ibv_srq_init_attr_ex a{};
  a.attr.max_wr = 4;
  a.attr.max_sge = 1;
  a.comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_XRCD | IBV_SRQ_INIT_ATTR_PD;
  a.srq_type = IBV_SRQT_XRC;
  a.xrcd = x.xrcd;
  a.pd = x.pd;
  EXPECT_EQ(ibv_create_srq_ex(x.ctx, &a), nullptr) << "no CQ";
  EXPECT_EQ(errno, EINVAL);
  ibv_qp_init_attr_ex q{};
  q.qp_type = IBV_QPT_XRC_RECV;
  q.comp_mask = IBV_QP_INIT_ATTR_PD;
  q.pd = x.pd;
  EXPECT_EQ(ibv_create_qp_ex(x.ctx, &q), nullptr) << "an XRC_RECV QP needs a domain";
  EXPECT_EQ(errno, EINVAL);
  // In use: the domain (SRQ, QP) and the SRQ's CQ.
  EXPECT_EQ(ibv_close_xrcd(x.xrcd), EBUSY);
  EXPECT_EQ(ibv_destroy_cq(c), EBUSY);
  ibv_dereg_mr(mr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--xrc-child") == 0)
    return xrc_child(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  g_self = argv[0];
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
