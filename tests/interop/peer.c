/*
 * peer: RoCEv2 RC conformance peer for interop runs (dverbs against Linux rxe, or dverbs
 * against dverbs). A standalone program against the system's <infiniband/verbs.h>:
 *
 *   cc -O2 -Wall -o peer peer.c -libverbs          (tests/interop/build-peer.sh OUT)
 *
 *   server:  peer -d DEV -g GIDIDX [-p PORT] [options] CASE
 *   client:  peer -d DEV -g GIDIDX [-p PORT] [options] CASE SERVERHOST
 *
 * In the style of ibv_rc_pingpong: a TCP side channel carries QPN, PSN, GID, MTU, rkey and
 * address; the QPs use RoCEv2 addressing (is_global=1, sgid_index=GIDIDX, hop limit 64)
 * and the smaller of both ports' active_mtu as the path MTU. Both sides check their own
 * expectations and print one PASS or FAIL line per check, naming what was expected and
 * what was seen (statuses as IBV_WC_* and ibv_wc_status_str), then a RESULT line; the exit
 * status is 0 only if every check of this side passed.
 *
 * Nothing waits without a bound: CQs are polled against a deadline, the TCP channel uses
 * poll() with deadlines, and an alarm ends the process after -T seconds in any case. While
 * waiting on TCP the program keeps polling its CQs: with a software HCA that progresses
 * inside the application's verbs calls (dverbs with --lcores 0) the transport only moves
 * while somebody polls. Completions found that way are kept for the later waits.
 *
 * Cases (see usage()): rnr, rkey, vanish, vanish-exit, data. The server plays the
 * responder, the client the requester; the interop suite runs each case both ways round.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

/* ------------------------------------------------------------------ options, output */

static struct {
  const char* dev_name;
  const char* host; /* NULL: server */
  const char* casename;
  int gidx;
  int ib_port;
  int tcp_port;
  int op_timeout_ms;  /* one completion or one side-channel message */
  int rnr_delay_ms;   /* rnr: how long the server holds its receive back */
  int vanish_limit_s; /* vanish: RETRY_EXC_ERR must come within this */
  int total_s;        /* whole run */
} opt = {
    .gidx = -1,
    .ib_port = 1,
    .tcp_port = 18515,
    .op_timeout_ms = 15000,
    .rnr_delay_ms = 100,
    .vanish_limit_s = 60,
    .total_s = 300,
};

static const char* role = "?";   /* "server" or "client" */
static char phase[64] = "setup"; /* current phase, in every line */
static int nchecks, nfails;

static void set_phase(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(phase, sizeof phase, fmt, ap);
  va_end(ap);
}

static void vline(const char* kind, const char* fmt, va_list ap) {
  printf("%s [%s %s %s] ", kind, opt.casename ? opt.casename : "-", role, phase);
  vprintf(fmt, ap);
  putchar('\n');
  fflush(stdout);
}

static void info(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vline("INFO", fmt, ap);
  va_end(ap);
}

/* One check: a PASS or FAIL line. Returns ok. */
static int ck(int ok, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vline(ok ? "PASS" : "FAIL", fmt, ap);
  va_end(ap);
  nchecks++;
  if (!ok) nfails++;
  return ok;
}

/* A check that prints only when it fails (a summary PASS line follows in the caller). */
static int ckq(int ok, const char* fmt, ...) {
  nchecks++;
  if (ok) return 1;
  nfails++;
  va_list ap;
  va_start(ap, fmt);
  vline("FAIL", fmt, ap);
  va_end(ap);
  return 0;
}

static void finish(void) {
  set_phase("end");
  if (nfails)
    printf("RESULT %s %s: FAIL (%d of %d checks failed)\n", opt.casename, role, nfails, nchecks);
  else
    printf("RESULT %s %s: PASS (%d checks)\n", opt.casename, role, nchecks);
  fflush(stdout);
}

static int sock = -1;
static void tcp_abort_peer(const char* why);

/* A failure that ends the run (setup error, protocol error, missed deadline). */
static void fatal(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fatal(const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ck(0, "%s", msg);
  tcp_abort_peer(msg);
  finish();
  exit(1);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char m[] = "FAIL [watchdog] the whole run exceeded its time limit (-T)\n";
  (void)!write(1, m, sizeof m - 1);
  _exit(1);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ names */

static const char* wc_status_name(int s) {
  switch (s) {
#define N(x) \
  case x:    \
    return #x
    N(IBV_WC_SUCCESS);
    N(IBV_WC_LOC_LEN_ERR);
    N(IBV_WC_LOC_QP_OP_ERR);
    N(IBV_WC_LOC_EEC_OP_ERR);
    N(IBV_WC_LOC_PROT_ERR);
    N(IBV_WC_WR_FLUSH_ERR);
    N(IBV_WC_MW_BIND_ERR);
    N(IBV_WC_BAD_RESP_ERR);
    N(IBV_WC_LOC_ACCESS_ERR);
    N(IBV_WC_REM_INV_REQ_ERR);
    N(IBV_WC_REM_ACCESS_ERR);
    N(IBV_WC_REM_OP_ERR);
    N(IBV_WC_RETRY_EXC_ERR);
    N(IBV_WC_RNR_RETRY_EXC_ERR);
    N(IBV_WC_LOC_RDD_VIOL_ERR);
    N(IBV_WC_REM_INV_RD_REQ_ERR);
    N(IBV_WC_REM_ABORT_ERR);
    N(IBV_WC_INV_EECN_ERR);
    N(IBV_WC_INV_EEC_STATE_ERR);
    N(IBV_WC_FATAL_ERR);
    N(IBV_WC_RESP_TIMEOUT_ERR);
    N(IBV_WC_GENERAL_ERR);
    default:
      return "IBV_WC_(unknown)";
  }
}

static const char* wc_opcode_name(int o) {
  switch (o) {
    N(IBV_WC_SEND);
    N(IBV_WC_RDMA_WRITE);
    N(IBV_WC_RDMA_READ);
    N(IBV_WC_COMP_SWAP);
    N(IBV_WC_FETCH_ADD);
    N(IBV_WC_BIND_MW);
    N(IBV_WC_LOCAL_INV);
    N(IBV_WC_RECV);
    N(IBV_WC_RECV_RDMA_WITH_IMM);
    default:
      return "IBV_WC_(unknown opcode)";
  }
}

static const char* qp_state_name(int s) {
  switch (s) {
    N(IBV_QPS_RESET);
    N(IBV_QPS_INIT);
    N(IBV_QPS_RTR);
    N(IBV_QPS_RTS);
    N(IBV_QPS_SQD);
    N(IBV_QPS_SQE);
    N(IBV_QPS_ERR);
    N(IBV_QPS_UNKNOWN);
#undef N
    default:
      return "(ibv_query_qp failed)";
  }
}

/* "IBV_WC_REM_ACCESS_ERR (\"remote access error\")" */
static const char* st(int s, char* buf, size_t n) {
  snprintf(buf, n, "%s (\"%s\")", wc_status_name(s), ibv_wc_status_str((enum ibv_wc_status)s));
  return buf;
}

/* ------------------------------------------------------------------ verbs objects */

static struct ibv_context* ctx;
static struct ibv_pd* pd;
static struct ibv_device_attr dattr;
static struct ibv_port_attr pattr;
static union ibv_gid my_gid;

#define STASH 256
struct cqx {
  struct ibv_cq* cq;
  struct ibv_wc wc[STASH]; /* completions polled while waiting for something else */
  int head, n;
  struct cqx* next;
};
static struct cqx* all_cqs;

struct qpx {
  struct ibv_qp* qp;
  struct cqx *scq, *rcq;
  uint32_t psn;
};

struct rinfo { /* what the peer told us about its QP and memory */
  uint32_t qpn, psn, rkey;
  uint64_t addr, len;
  int mtu;
  union ibv_gid gid;
};

struct qpparm {
  uint8_t min_rnr_timer; /* responder: the timer our RNR NAKs ask for */
  uint8_t timeout;       /* requester: local ACK timeout, 4.096 us * 2^timeout */
  uint8_t retry_cnt;
  uint8_t rnr_retry;
};

static void cq_drain_into_stash(struct cqx* c) {
  while (c->n < STASH) {
    struct ibv_wc wc;
    int k = ibv_poll_cq(c->cq, 1, &wc);
    if (k < 0) fatal("ibv_poll_cq returned %d", k);
    if (k == 0) break;
    c->wc[(c->head + c->n) % STASH] = wc;
    c->n++;
  }
}

/* Polls every CQ (drives an inline-progress HCA), keeping what it finds. */
static void pump(void) {
  for (struct cqx* c = all_cqs; c; c = c->next) cq_drain_into_stash(c);
}

static struct cqx* cq_create(int cqe) {
  struct cqx* c = calloc(1, sizeof *c);
  if (!c) fatal("out of memory");
  c->cq = ibv_create_cq(ctx, cqe, NULL, NULL, 0);
  if (!c->cq) fatal("ibv_create_cq(%d): %s", cqe, strerror(errno));
  c->next = all_cqs;
  all_cqs = c;
  return c;
}

static void cq_destroy(struct cqx* c) {
  for (struct cqx** p = &all_cqs; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  if (ibv_destroy_cq(c->cq)) info("ibv_destroy_cq: %s", strerror(errno));
  free(c);
}

/* 1: a completion in *wc; 0: none before timeout_ms. */
static int cq_wait(struct cqx* c, struct ibv_wc* wc, int timeout_ms) {
  long long end = now_ms() + timeout_ms;
  for (;;) {
    pump();
    if (c->n) {
      *wc = c->wc[c->head];
      c->head = (c->head + 1) % STASH;
      c->n--;
      return 1;
    }
    if (now_ms() >= end) return 0;
    usleep(c->n ? 0 : 50);
  }
}

/* Checks one awaited completion: the status, and for a success the opcode (if want_op >=
 * 0) and byte_len (if want_len >= 0). quiet: print only failures. Returns ok. */
static int ck_wc(int quiet, const char* what, int got, const struct ibv_wc* wc, int timeout_ms,
                 enum ibv_wc_status want, int want_op, long long want_len) {
  char a[96], b[96];
  int (*f)(int, const char*, ...) = quiet ? ckq : ck;
  if (!got)
    return f(0, "%s: expected status %s, saw no completion within %d ms", what,
             st(want, a, sizeof a), timeout_ms);
  if (wc->status != want)
    return f(0, "%s: expected status %s, saw %s (vendor_err 0x%x, wr_id %" PRIu64 ")", what,
             st(want, a, sizeof a), st(wc->status, b, sizeof b), wc->vendor_err, wc->wr_id);
  if (want == IBV_WC_SUCCESS && want_op >= 0 && (int)wc->opcode != want_op)
    return f(0, "%s: status %s as expected, but expected opcode %s, saw %s (%d)", what,
             st(want, a, sizeof a), wc_opcode_name(want_op), wc_opcode_name(wc->opcode),
             wc->opcode);
  if (want == IBV_WC_SUCCESS && want_len >= 0 && (long long)wc->byte_len != want_len)
    return f(0, "%s: status %s, opcode %s as expected, but expected byte_len %lld, saw %u", what,
             st(want, a, sizeof a), wc_opcode_name(wc->opcode), want_len, wc->byte_len);
  if (want == IBV_WC_SUCCESS && want_op >= 0)
    return f(1, "%s: expected status %s, opcode %s%s; saw status %s, opcode %s, byte_len %u", what,
             st(want, a, sizeof a), wc_opcode_name(want_op),
             want_len >= 0 ? " and the byte_len" : "", st(wc->status, b, sizeof b),
             wc_opcode_name(wc->opcode), wc->byte_len);
  return f(1, "%s: expected status %s, saw %s", what, st(want, a, sizeof a),
           st(wc->status, b, sizeof b));
}

static int qp_state(struct ibv_qp* qp) {
  struct ibv_qp_attr a;
  struct ibv_qp_init_attr ia;
  memset(&a, 0, sizeof a);
  if (ibv_query_qp(qp, &a, IBV_QP_STATE, &ia)) return -1;
  return a.qp_state;
}

/* The QP state, allowing up to wait_ms for it to become `want` (an HCA may apply a
 * transition in its own time after the completion that reports it). */
static int ck_qp_state(const char* what, struct ibv_qp* qp, int want, int wait_ms) {
  long long end = now_ms() + wait_ms;
  int s;
  for (;;) {
    pump();
    s = qp_state(qp);
    if (s == want || now_ms() >= end) break;
    usleep(1000);
  }
  return ck(s == want, "%s: expected QP state %s, saw %s", what, qp_state_name(want),
            qp_state_name(s));
}

static struct qpx* qp_create(int max_send, int max_recv) {
  struct qpx* q = calloc(1, sizeof *q);
  if (!q) fatal("out of memory");
  q->scq = cq_create(max_send + 4);
  q->rcq = cq_create(max_recv + 4);
  struct ibv_qp_init_attr ia;
  memset(&ia, 0, sizeof ia);
  ia.send_cq = q->scq->cq;
  ia.recv_cq = q->rcq->cq;
  ia.cap.max_send_wr = max_send;
  ia.cap.max_recv_wr = max_recv;
  ia.cap.max_send_sge = 1;
  ia.cap.max_recv_sge = 1;
  ia.qp_type = IBV_QPT_RC;
  ia.sq_sig_all = 0;
  q->qp = ibv_create_qp(pd, &ia);
  if (!q->qp) fatal("ibv_create_qp: %s", strerror(errno));
  q->psn = (uint32_t)lrand48() & 0xffffff;
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = (uint8_t)opt.ib_port;
  a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                      IBV_ACCESS_REMOTE_ATOMIC;
  if ((errno = ibv_modify_qp(q->qp, &a,
                             IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)))
    fatal("ibv_modify_qp(INIT): %s", strerror(errno));
  return q;
}

/* Destroys the QP and its CQs. */
static void qp_destroy(struct qpx* q) {
  if (q->qp && ibv_destroy_qp(q->qp)) info("ibv_destroy_qp: %s", strerror(errno));
  cq_destroy(q->scq);
  cq_destroy(q->rcq);
  free(q);
}

static int mtu_bytes(int m) {
  return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

/* The path MTU of a connection to r: the smaller of both ports' active MTUs. */
static int path_mtu(const struct rinfo* r) {
  return r->mtu < (int)pattr.active_mtu ? r->mtu : (int)pattr.active_mtu;
}

static int path_mtu_bytes(const struct rinfo* r) {
  return mtu_bytes(path_mtu(r));
}

static void qp_connect(struct qpx* q, const struct rinfo* r, const struct qpparm* p) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = (enum ibv_mtu)path_mtu(r);
  a.dest_qp_num = r->qpn;
  a.rq_psn = r->psn;
  a.max_dest_rd_atomic =
      dattr.max_qp_rd_atom > 16 ? 16 : (dattr.max_qp_rd_atom ? dattr.max_qp_rd_atom : 1);
  a.min_rnr_timer = p->min_rnr_timer;
  a.ah_attr.is_global = 1;
  a.ah_attr.grh.dgid = r->gid;
  a.ah_attr.grh.sgid_index = (uint8_t)opt.gidx;
  a.ah_attr.grh.hop_limit = 64;
  a.ah_attr.grh.flow_label = 0;
  a.ah_attr.grh.traffic_class = 0;
  a.ah_attr.dlid = 0;
  a.ah_attr.sl = 0;
  a.ah_attr.src_path_bits = 0;
  a.ah_attr.port_num = (uint8_t)opt.ib_port;
  if ((errno = ibv_modify_qp(q->qp, &a,
                             IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                 IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)))
    fatal("ibv_modify_qp(RTR): %s", strerror(errno));
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = q->psn;
  a.timeout = p->timeout;
  a.retry_cnt = p->retry_cnt;
  a.rnr_retry = p->rnr_retry;
  a.max_rd_atomic = dattr.max_qp_init_rd_atom > 16
                        ? 16
                        : (dattr.max_qp_init_rd_atom ? dattr.max_qp_init_rd_atom : 1);
  if ((errno = ibv_modify_qp(q->qp, &a,
                             IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                 IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC)))
    fatal("ibv_modify_qp(RTS): %s", strerror(errno));
}

static struct ibv_mr* mr_alloc(size_t len, int access) {
  void* buf = NULL;
  if (posix_memalign(&buf, 4096, len)) fatal("out of memory (%zu bytes)", len);
  memset(buf, 0xa5, len);
  struct ibv_mr* mr = ibv_reg_mr(pd, buf, len, access);
  if (!mr) fatal("ibv_reg_mr(%zu bytes, access 0x%x): %s", len, access, strerror(errno));
  return mr;
}

static void mr_free(struct ibv_mr* mr) {
  void* buf = mr->addr;
  if (ibv_dereg_mr(mr)) info("ibv_dereg_mr: %s", strerror(errno));
  free(buf);
}

static void post_recv(struct qpx* q, uint64_t wr_id, void* addr, uint32_t len, uint32_t lkey) {
  struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = len, .lkey = lkey};
  struct ibv_recv_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  if ((errno = ibv_post_recv(q->qp, &wr, &bad))) fatal("ibv_post_recv: %s", strerror(errno));
}

/* Posts one signaled send-queue WR. */
static void post_send(struct qpx* q, uint64_t wr_id, enum ibv_wr_opcode op, void* addr,
                      uint32_t len, uint32_t lkey, uint64_t raddr, uint32_t rkey, uint32_t imm,
                      uint64_t cmp_add, uint64_t swap) {
  struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = len, .lkey = lkey};
  struct ibv_send_wr wr, *bad;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (op == IBV_WR_SEND_WITH_IMM || op == IBV_WR_RDMA_WRITE_WITH_IMM) wr.imm_data = htonl(imm);
  if (op == IBV_WR_ATOMIC_FETCH_AND_ADD || op == IBV_WR_ATOMIC_CMP_AND_SWP) {
    wr.wr.atomic.remote_addr = raddr;
    wr.wr.atomic.rkey = rkey;
    wr.wr.atomic.compare_add = cmp_add;
    wr.wr.atomic.swap = swap;
  } else {
    wr.wr.rdma.remote_addr = raddr;
    wr.wr.rdma.rkey = rkey;
  }
  if ((errno = ibv_post_send(q->qp, &wr, &bad))) fatal("ibv_post_send: %s", strerror(errno));
}

/* ------------------------------------------------------------------ TCP side channel */

static char inbuf[8192];
static size_t inlen;

static void tcp_send(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void tcp_send(const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0 || n >= (int)sizeof line - 1) fatal("side-channel message too long");
  line[n++] = '\n';
  long long end = now_ms() + opt.op_timeout_ms;
  int off = 0;
  while (off < n) {
    struct pollfd pfd = {.fd = sock, .events = POLLOUT};
    int r = poll(&pfd, 1, 1);
    if (r > 0) {
      ssize_t w = send(sock, line + off, n - off, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        int e = errno;
        sock = -1; /* no ABORT through a broken channel */
        fatal("side channel: send: %s", strerror(e));
      }
      if (w > 0) off += w;
    }
    pump();
    if (off < n && now_ms() >= end) fatal("side channel: send timed out");
  }
}

static void tcp_abort_peer(const char* why) {
  if (sock < 0) return;
  char line[300];
  int n = snprintf(line, sizeof line, "ABORT %s: %.200s\n", role, why);
  (void)!send(sock, line, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Reads one line into `out`. 1: a line; 0: timeout; -1: the peer closed the channel. */
static int tcp_recv_raw(char* out, size_t n, int timeout_ms) {
  long long end = now_ms() + timeout_ms;
  for (;;) {
    char* nl = memchr(inbuf, '\n', inlen);
    if (nl) {
      size_t l = nl - inbuf;
      if (l >= n) l = n - 1;
      memcpy(out, inbuf, l);
      out[l] = 0;
      inlen -= nl + 1 - inbuf;
      memmove(inbuf, nl + 1, inlen);
      return 1;
    }
    if (inlen == sizeof inbuf) fatal("side channel: line too long");
    struct pollfd pfd = {.fd = sock, .events = POLLIN};
    int r = poll(&pfd, 1, 1);
    if (r > 0) {
      ssize_t k = recv(sock, inbuf + inlen, sizeof inbuf - inlen, 0);
      if (k == 0) return -1;
      if (k < 0 && errno != EAGAIN && errno != EINTR) return -1;
      if (k > 0) inlen += k;
      continue;
    }
    pump();
    if (now_ms() >= end) return 0;
  }
}

/* Waits for a line that starts with `word` (a space or the end after it); fatal if a
 * different line, an ABORT, EOF or the timeout comes first. Returns what follows. */
static const char* tcp_expect(const char* word, int timeout_ms) {
  static char line[512];
  int r = tcp_recv_raw(line, sizeof line, timeout_ms);
  if (r == 0)
    fatal("side channel: expected \"%s\" from the peer, saw nothing within %d ms", word,
          timeout_ms);
  if (r < 0) {
    sock = -1;
    fatal("side channel: expected \"%s\" from the peer, saw the channel close", word);
  }
  if (!strncmp(line, "ABORT", 5)) {
    int s = sock;
    sock = -1;
    close(s);
    fatal("side channel: expected \"%s\", the peer aborted (%s)", word, line);
  }
  size_t l = strlen(word);
  if (strncmp(line, word, l) || (line[l] && line[l] != ' '))
    fatal("side channel: expected \"%s\", saw \"%s\"", word, line);
  return line[l] ? line + l + 1 : line + l;
}

static void tcp_setup(void) {
  long long end = now_ms() + 90000;
  int one = 1;
  if (!opt.host) {
    int ls = socket(AF_INET6, SOCK_STREAM, 0);
    int v6 = ls >= 0;
    if (!v6) ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) fatal("socket: %s", strerror(errno));
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (v6) {
      int zero = 0;
      setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
      struct sockaddr_in6 sa = {
          .sin6_family = AF_INET6, .sin6_port = htons(opt.tcp_port), .sin6_addr = in6addr_any};
      rc = bind(ls, (struct sockaddr*)&sa, sizeof sa);
    } else {
      struct sockaddr_in sa = {.sin_family = AF_INET,
                               .sin_port = htons(opt.tcp_port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
      rc = bind(ls, (struct sockaddr*)&sa, sizeof sa);
    }
    if (rc || listen(ls, 1))
      fatal("side channel: bind/listen on TCP port %d: %s", opt.tcp_port, strerror(errno));
    info("side channel: listening on TCP port %d", opt.tcp_port);
    for (;;) {
      struct pollfd pfd = {.fd = ls, .events = POLLIN};
      if (poll(&pfd, 1, 10) > 0) {
        sock = accept(ls, NULL, NULL);
        if (sock >= 0) break;
      }
      if (now_ms() >= end)
        fatal("side channel: no client connected to TCP port %d within 90 s", opt.tcp_port);
    }
    close(ls);
  } else {
    char port[16];
    snprintf(port, sizeof port, "%d", opt.tcp_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(opt.host, port, &hints, &res);
    if (g) fatal("side channel: %s: %s", opt.host, gai_strerror(g));
    for (;;) {
      for (struct addrinfo* ai = res; ai && sock < 0; ai = ai->ai_next) {
        int s = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK, ai->ai_protocol);
        if (s < 0) continue;
        if (connect(s, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
          close(s);
          continue;
        }
        struct pollfd pfd = {.fd = s, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pfd, 1, 2000) == 1 && !getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) && !err)
          sock = s;
        else
          close(s);
      }
      if (sock >= 0) break;
      if (now_ms() >= end)
        fatal("side channel: could not connect to %s:%d within 90 s", opt.host, opt.tcp_port);
      usleep(100000);
    }
    freeaddrinfo(res);
  }
  fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void gid_to_hex(const union ibv_gid* g, char* out) {
  for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", g->raw[i]);
}

static void gid_fmt(const union ibv_gid* g, char* out, size_t n) {
  if (!memcmp(g->raw, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12))
    snprintf(out, n, "::ffff:%u.%u.%u.%u", g->raw[12], g->raw[13], g->raw[14], g->raw[15]);
  else
    inet_ntop(AF_INET6, g->raw, out, n);
}

/* Both sides tell each other about a QP (and, from the server, a memory region). */
static void exchange(const char* tag, struct qpx* q, uint32_t rkey, uint64_t addr, uint64_t len,
                     struct rinfo* r) {
  char g[33];
  gid_to_hex(&my_gid, g);
  tcp_send("QP %s %x %x %d %s %x %" PRIx64 " %" PRIx64, tag, q->qp->qp_num, q->psn,
           (int)pattr.active_mtu, g, rkey, addr, len);
  const char* rest = tcp_expect("QP", opt.op_timeout_ms);
  char rtag[64], rg[64];
  memset(r, 0, sizeof *r);
  if (sscanf(rest, "%63s %x %x %d %63s %x %" SCNx64 " %" SCNx64, rtag, &r->qpn, &r->psn, &r->mtu,
             rg, &r->rkey, &r->addr, &r->len) != 8 ||
      strlen(rg) != 32)
    fatal("side channel: malformed QP message \"%s\"", rest);
  if (strcmp(rtag, tag))
    fatal("side channel: expected the peer's QP for \"%s\", saw \"%s\"", tag, rtag);
  for (int i = 0; i < 16; i++) {
    unsigned b;
    sscanf(rg + 2 * i, "%2x", &b);
    r->gid.raw[i] = (uint8_t)b;
  }
  char gs[64];
  gid_fmt(&r->gid, gs, sizeof gs);
  info("local QPN 0x%06x PSN 0x%06x, remote QPN 0x%06x PSN 0x%06x GID %s, path MTU %d",
       q->qp->qp_num, q->psn, r->qpn, r->psn, gs, path_mtu_bytes(r));
}

/* ------------------------------------------------------------------ data patterns */

static uint8_t pat(uint32_t tag, size_t size, size_t i) {
  uint32_t x = (uint32_t)i * 2654435761u ^ (uint32_t)size * 40503u ^ tag * 0x9e3779b9u;
  x ^= x >> 15;
  x *= 0x2c1b3c6du;
  x ^= x >> 12;
  return (uint8_t)(x ^ (uint32_t)(i >> 8));
}

static void fill_pat(uint8_t* p, uint32_t tag, size_t size) {
  for (size_t i = 0; i < size; i++) p[i] = pat(tag, size, i);
}

#define GUARD 0xa5
/* Checks a region that should hold GUARD bytes except pattern (tag, size) at [off,
 * off+size). quiet: a FAIL line only. Returns ok. */
static int ck_region(int quiet, const char* what, const uint8_t* base, size_t reglen, size_t off,
                     size_t size, uint32_t tag) {
  size_t bad = 0, first = (size_t)-1;
  uint8_t fe = 0, fs = 0;
  for (size_t i = 0; i < reglen; i++) {
    uint8_t e = (i >= off && i < off + size) ? pat(tag, size, i - off) : GUARD;
    if (base[i] != e) {
      if (!bad) {
        first = i;
        fe = e;
        fs = base[i];
      }
      bad++;
    }
  }
  if (!bad && off == 0 && size == reglen) {
    if (!quiet)
      ck(1, "%s: expected all %zu bytes unchanged, saw them unchanged", what, size);
    else
      ckq(1, "");
    return 1;
  }
  if (!bad) {
    if (!quiet)
      ck(1,
         "%s: expected the %zu-byte pattern at offset %zu and guard bytes around it, saw exactly "
         "that",
         what, size, off);
    else
      ckq(1, "");
    return 1;
  }
  char where[80];
  if (first < off)
    snprintf(where, sizeof where, "guard byte %zu before the data", off - first);
  else if (first >= off + size)
    snprintf(where, sizeof where, "guard byte %zu after the data", first - off - size);
  else
    snprintf(where, sizeof where, "data byte %zu", first - off);
  return (quiet ? ckq : ck)(
      0,
      "%s: expected the %zu-byte pattern at offset %zu with guard bytes 0x%02x around it; "
      "%zu bytes differ, the first at %s: expected 0x%02x, saw 0x%02x",
      what, size, off, GUARD, bad, where, fe, fs);
}

/* ------------------------------------------------------------------ case: rnr */

/* The RNR timer code of the IBA RNR NAK syndrome, in microseconds. */
static const uint32_t rnr_us[32] = {655360, 10,    20,    30,     40,     60,     80,     120,
                                    160,    240,   320,   480,    640,    960,    1280,   1920,
                                    2560,   3840,  5120,  7680,   10240,  15360,  20480,  30720,
                                    40960,  61440, 81920, 122880, 163840, 245760, 327680, 491520};

/* The smallest timer at least as long as the server's delay: the receive is posted no
 * earlier than the delay after the SEND, so the first transmission is always RNR NAKed, and
 * the three retries (three timers) leave twice the delay for a slow peer or side channel
 * before RNR_RETRY_EXC_ERR. */
static uint8_t rnr_timer_for(int delay_ms) {
  for (int c = 1; c < 32; c++)
    if (rnr_us[c] >= 1000ull * delay_ms) return (uint8_t)c;
  return 0; /* 655.36 ms, the longest */
}

/* Phase 1: the receive comes late; rnr_retry=3 must ride it out. A message of `packets`
 * full path-MTU packets and 5 bytes more, or of 200 bytes if 0. */
static void rnr_late_receive(const char* name, int packets) {
  set_phase("%s", name);
  uint8_t timer = rnr_timer_for(opt.rnr_delay_ms);
  struct qpparm p = {.min_rnr_timer = timer, .timeout = 14, .retry_cnt = 7, .rnr_retry = 3};
  struct qpx* q = qp_create(4, 4);
  struct rinfo r;
  struct ibv_wc wc;
  exchange(name, q, 0, 0, 0, &r);
  qp_connect(q, &r, &p);
  const size_t size = packets ? (size_t)packets * path_mtu_bytes(&r) + 5 : 200;
  struct ibv_mr* mr = mr_alloc(size + 128, IBV_ACCESS_LOCAL_WRITE);
  if (!opt.host) {
    info(
        "min_rnr_timer %u (%.2f ms); the receive is posted %d ms after the client says it "
        "posts its SEND",
        timer, rnr_us[timer] / 1000.0, opt.rnr_delay_ms);
    tcp_send("GO %s", name);
    tcp_expect("POSTING", opt.op_timeout_ms);
    long long t0 = now_ms();
    int early = 0;
    while (now_ms() - t0 < opt.rnr_delay_ms) {
      pump();
      early += q->rcq->n;
      usleep(200);
    }
    ck(!early, "before the receive is posted: expected no receive completion, saw %d", early);
    post_recv(q, 1, mr->addr, (uint32_t)(size + 128), mr->lkey);
    int got = cq_wait(q->rcq, &wc, opt.op_timeout_ms);
    if (ck_wc(0, "receive posted late", got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS, IBV_WC_RECV,
              (long long)size))
      ck_region(0, "received bytes", mr->addr, size + 128, 0, size, 1);
    tcp_expect("DONE", opt.op_timeout_ms);
    ck_qp_state("after the exchange", q->qp, IBV_QPS_RTS, 0);
  } else {
    fill_pat(mr->addr, 1, size);
    tcp_expect("GO", opt.op_timeout_ms);
    /* The server starts its delay when this arrives, so its receive is posted at least the
     * delay after our SEND. */
    tcp_send("POSTING");
    long long t0 = now_ms();
    post_send(q, 1, IBV_WR_SEND, mr->addr, (uint32_t)size, mr->lkey, 0, 0, 0, 0, 0);
    int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
    long long dt = now_ms() - t0;
    char what[96];
    snprintf(what, sizeof what, "%zu-byte SEND with rnr_retry=3 (completed after %lld ms)", size,
             dt);
    const int min_ms = opt.rnr_delay_ms * 9 / 10;
    if (ck_wc(0, what, got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS, IBV_WC_SEND, -1))
      ck(dt >= min_ms,
         "SEND completion time: expected >= %d ms (the server posts its receive %d ms after it "
         "learns that we post the SEND, so the responder must answer RNR NAK until then), saw "
         "%lld ms",
         min_ms, opt.rnr_delay_ms, dt);
    tcp_send("DONE %s", name);
    ck_qp_state("after the SEND", q->qp, IBV_QPS_RTS, 0);
  }
  qp_destroy(q);
  mr_free(mr);
}

/* Phase 2: no receive ever; rnr_retry=0 must fail the SEND at the first RNR NAK. */
static void rnr_no_retry(void) {
  const char* name = "rnr_retry=0";
  set_phase("%s", name);
  struct qpparm p = {
      .min_rnr_timer = 12 /* 0.64 ms */, .timeout = 14, .retry_cnt = 7, .rnr_retry = 0};
  struct qpx* q = qp_create(4, 4);
  struct ibv_mr* mr = mr_alloc(4096, IBV_ACCESS_LOCAL_WRITE);
  struct rinfo r;
  struct ibv_wc wc;
  exchange(name, q, 0, 0, 0, &r);
  qp_connect(q, &r, &p);
  if (!opt.host) {
    tcp_send("GO %s", name);
    const char* rest = tcp_expect("DONE", opt.op_timeout_ms + 5000);
    info("the client reports: %s", rest);
    int got = cq_wait(q->rcq, &wc, 100);
    char b[96];
    ck(!got, "receive queue with nothing posted: expected no completion, saw %s",
       got ? st(wc.status, b, sizeof b) : "none");
    /* An RNR NAK is no error of the responder (a class B condition): the QP stays in RTS. */
    ck_qp_state("responder after sending RNR NAK", q->qp, IBV_QPS_RTS, 0);
  } else {
    fill_pat(mr->addr, 2, 64);
    tcp_expect("GO", opt.op_timeout_ms);
    long long t0 = now_ms();
    post_send(q, 1, IBV_WR_SEND, mr->addr, 64, mr->lkey, 0, 0, 0, 0, 0);
    int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
    char what[96];
    snprintf(what, sizeof what, "64-byte SEND, no receive posted, rnr_retry=0 (after %lld ms)",
             now_ms() - t0);
    ck_wc(0, what, got, &wc, opt.op_timeout_ms, IBV_WC_RNR_RETRY_EXC_ERR, -1, -1);
    /* A completion in error moves an RC requester to the Error state. */
    ck_qp_state("requester after the error completion", q->qp, IBV_QPS_ERR, 1000);
    char b[96];
    tcp_send("DONE %s", got ? st(wc.status, b, sizeof b) : "no-completion");
  }
  qp_destroy(q);
  mr_free(mr);
}

static void case_rnr(void) {
  rnr_late_receive("rnr_retry=3/one-packet", 0);
  /* The RNR NAK answers the first packet; the rest of the message must be resent too. */
  rnr_late_receive("rnr_retry=3/multi-packet", 3);
  rnr_no_retry();
}

/* ------------------------------------------------------------------ case: rkey */

enum rk_mode { RK_BADKEY, RK_OOB, RK_NOPERM };

/* Reads the async events that arrive within wait_ms (all of them, acknowledged at once).
 * Returns 1 if one of them is `want` for `qp`; describes them all in `seen`. */
static int await_qp_event(struct ibv_qp* qp, enum ibv_event_type want, int wait_ms, char* seen,
                          size_t n) {
  long long end = now_ms() + wait_ms;
  int found = 0;
  size_t off = 0;
  seen[0] = 0;
  for (;;) {
    struct pollfd pfd = {.fd = ctx->async_fd, .events = POLLIN};
    if (poll(&pfd, 1, 1) == 1) {
      struct ibv_async_event ev;
      if (ibv_get_async_event(ctx, &ev) == 0) {
        int mine = 0;
        switch (ev.event_type) {
          case IBV_EVENT_CQ_ERR:
            break;
          case IBV_EVENT_SRQ_ERR:
          case IBV_EVENT_SRQ_LIMIT_REACHED:
            break;
          case IBV_EVENT_DEVICE_FATAL:
          case IBV_EVENT_PORT_ACTIVE:
          case IBV_EVENT_PORT_ERR:
          case IBV_EVENT_LID_CHANGE:
          case IBV_EVENT_PKEY_CHANGE:
          case IBV_EVENT_SM_CHANGE:
          case IBV_EVENT_CLIENT_REREGISTER:
          case IBV_EVENT_GID_CHANGE:
            break;
          default:
            mine = ev.element.qp == qp;
            break;
        }
        if (off < n)
          off += snprintf(seen + off, n - off, "%s%s%s", off ? ", " : "",
                          ibv_event_type_str(ev.event_type), mine ? "" : " (another object)");
        if (mine && ev.event_type == want) found = 1;
        ibv_ack_async_event(&ev);
        continue;
      }
    }
    pump();
    if (found || now_ms() >= end) break;
  }
  if (!off) snprintf(seen, n, "none");
  return found;
}

static int async_advisory; /* -A: the async-event check warns instead of failing */

static void case_rkey(void) {
  static const struct {
    const char* name;
    enum ibv_wr_opcode op;
    enum rk_mode mode;
  } sub[] = {
      {"write/bad-rkey", IBV_WR_RDMA_WRITE, RK_BADKEY},
      {"read/bad-rkey", IBV_WR_RDMA_READ, RK_BADKEY},
      {"write/out-of-bounds", IBV_WR_RDMA_WRITE, RK_OOB},
      {"read/out-of-bounds", IBV_WR_RDMA_READ, RK_OOB},
      {"write/read-only-mr", IBV_WR_RDMA_WRITE, RK_NOPERM},
      {"read/write-only-mr", IBV_WR_RDMA_READ, RK_NOPERM},
      {"write-imm/bad-rkey", IBV_WR_RDMA_WRITE_WITH_IMM, RK_BADKEY},
  };
  const size_t mrlen = 4096, oplen = 64;
  struct ibv_mr *rw = NULL, *ro = NULL, *wo = NULL, *scratch, *local = NULL;
  if (!opt.host) {
    rw = mr_alloc(mrlen, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
    ro = mr_alloc(mrlen, IBV_ACCESS_REMOTE_READ);
    wo = mr_alloc(mrlen, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    scratch = mr_alloc(4096, IBV_ACCESS_LOCAL_WRITE);
    int fl = fcntl(ctx->async_fd, F_GETFL);
    if (fl < 0 || fcntl(ctx->async_fd, F_SETFL, fl | O_NONBLOCK))
      fatal("cannot make the async event fd non-blocking: %s", strerror(errno));
    char seen[256];
    await_qp_event(NULL, IBV_EVENT_QP_ACCESS_ERR, 0, seen, sizeof seen); /* drop old ones */
  } else {
    local = mr_alloc(4096, IBV_ACCESS_LOCAL_WRITE);
    scratch = NULL;
  }
  for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
    set_phase("%s", sub[i].name);
    struct qpparm p = {.min_rnr_timer = 12, .timeout = 14, .retry_cnt = 7, .rnr_retry = 3};
    struct qpx* q = qp_create(4, 4);
    struct rinfo r;
    struct ibv_wc wc;
    const int imm = sub[i].op == IBV_WR_RDMA_WRITE_WITH_IMM;
    const char* opname = imm                              ? "RDMA WRITE with immediate"
                         : sub[i].op == IBV_WR_RDMA_WRITE ? "RDMA WRITE"
                                                          : "RDMA READ";
    if (!opt.host) {
      struct ibv_mr* mr = rw;
      uint32_t rkey = rw->rkey;
      uint64_t addr = (uintptr_t)rw->addr;
      const char* how = "";
      switch (sub[i].mode) {
        case RK_BADKEY:
          rkey ^= 0x5a; /* same MR index, wrong key byte: no such rkey */
          how = "a wrong rkey";
          break;
        case RK_OOB:
          addr += mrlen - oplen / 2; /* the last half of the access lies past the MR */
          how = "an address whose last 32 of 64 bytes lie past the MR";
          break;
        case RK_NOPERM:
          mr = sub[i].op == IBV_WR_RDMA_WRITE ? ro : wo;
          rkey = mr->rkey;
          addr = (uintptr_t)mr->addr;
          how = sub[i].op == IBV_WR_RDMA_WRITE ? "the rkey of an MR without REMOTE_WRITE"
                                               : "the rkey of an MR without REMOTE_READ";
          break;
      }
      for (struct ibv_mr* m2 = rw; m2; m2 = m2 == rw ? ro : m2 == ro ? wo : NULL)
        fill_pat(m2->addr, 3, mrlen);
      post_recv(q, 77, scratch->addr, 4096, scratch->lkey);
      info("advertising %s: rkey 0x%x addr 0x%" PRIx64 " (MR rkey 0x%x, %zu bytes at %p)", how,
           rkey, addr, mr->rkey, mrlen, mr->addr);
      exchange(sub[i].name, q, rkey, addr, oplen, &r);
      qp_connect(q, &r, &p);
      tcp_send("GO %s", sub[i].name);
      /* IBA C9-222.1.1 (9.9.3.1.3, Table 63: an R_Key, bounds or access-right violation is
       * a class C responder error): the requester gets a Remote Access Error NAK. If the
       * error cannot be related to a receive WQE (WRITE without immediate, READ), it is
       * reported to the responder's client as an affiliated asynchronous error - in verbs
       * IBV_EVENT_QP_ACCESS_ERR ("Local Access Violation Work Queue Error", see 10.10.2.3; a
       * work queue error, the QP is left in Error); if it can (WRITE with immediate consumes a
       * receive WQE), the QP is placed in the Error state and the error reported as a completion
       * error of that WQE. A QP in Error completes every other outstanding receive with flush
       * error. */
      int got = cq_wait(q->rcq, &wc, opt.op_timeout_ms);
      char what[160];
      if (imm) {
        char a[96];
        snprintf(what, sizeof what, "responder's receive consumed by the peer's %s with %s", opname,
                 how);
        if (!got)
          ck(0,
             "%s: expected a completion error (IBV_WC_LOC_ACCESS_ERR in ibv_poll_cq(3)'s terms), "
             "saw no completion within %d ms",
             what, opt.op_timeout_ms);
        else
          ck(wc.status != IBV_WC_SUCCESS && wc.status != IBV_WC_WR_FLUSH_ERR,
             "%s: expected a completion error for that WQE (IBV_WC_LOC_ACCESS_ERR in "
             "ibv_poll_cq(3)'s "
             "terms; not a success, not a flush, which would say the WQE was never involved), saw "
             "%s",
             what, st(wc.status, a, sizeof a));
      } else {
        snprintf(what, sizeof what, "responder's posted receive after the peer's %s with %s",
                 opname, how);
        ck_wc(0, what, got, &wc, opt.op_timeout_ms, IBV_WC_WR_FLUSH_ERR, -1, -1);
      }
      ck_qp_state("responder after the access violation", q->qp, IBV_QPS_ERR, 1000);
      if (!imm) {
        char seen[256];
        int ev = await_qp_event(q->qp, IBV_EVENT_QP_ACCESS_ERR, 2000, seen, sizeof seen);
        const char* m =
            "responder's async events: expected IBV_EVENT_QP_ACCESS_ERR (\"%s\") for this QP "
            "within 2 s (IBA C9-222.1.1: an error not related to a receive WQE is an "
            "affiliated asynchronous error), saw %s";
        if (ev || !async_advisory)
          ck(ev, m, ibv_event_type_str(IBV_EVENT_QP_ACCESS_ERR), seen);
        else
          printf(
              "WARN [%s %s %s] (advisory, -A) "
              "responder's async events: expected "
              "IBV_EVENT_QP_ACCESS_ERR for this QP within 2 s, saw %s\n",
              opt.casename, role, phase, seen);
      }
      const char* rest = tcp_expect("DONE", opt.op_timeout_ms + 5000);
      info("the client reports: %s", rest);
      /* Nothing may be written by a request that failed its access check (the check covers
       * the whole RETH range before data is placed). */
      ck_region(0, "target MR contents", mr->addr, mrlen, 0, mrlen, 3);
    } else {
      exchange(sub[i].name, q, 0, 0, 0, &r);
      qp_connect(q, &r, &p);
      fill_pat(local->addr, 4, oplen);
      tcp_expect("GO", opt.op_timeout_ms);
      post_send(q, 1, sub[i].op, local->addr, (uint32_t)oplen, local->lkey, r.addr, r.rkey,
                0x12345678, 0, 0);
      int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
      char what[128];
      snprintf(what, sizeof what, "%zu-byte %s to rkey 0x%x addr 0x%" PRIx64, oplen, opname, r.rkey,
               r.addr);
      ck_wc(0, what, got, &wc, opt.op_timeout_ms, IBV_WC_REM_ACCESS_ERR, -1, -1);
      ck_qp_state("requester after the error completion", q->qp, IBV_QPS_ERR, 1000);
      char b[96];
      tcp_send("DONE %s", got ? st(wc.status, b, sizeof b) : "no-completion");
    }
    qp_destroy(q);
  }
  if (rw) mr_free(rw);
  if (ro) mr_free(ro);
  if (wo) mr_free(wo);
  if (scratch) mr_free(scratch);
  if (local) mr_free(local);
}

/* ------------------------------------------------------------------ case: vanish */

static void case_vanish(int by_exit) {
  set_phase("%s", by_exit ? "server-exits" : "server-destroys-qp");
  /* timeout 12: 16.8 ms local ACK timeout; retry_cnt 2: three transmissions in all. */
  struct qpparm p = {.min_rnr_timer = 12, .timeout = 12, .retry_cnt = 2, .rnr_retry = 3};
  struct qpx* q = qp_create(4, 4);
  struct ibv_mr* mr = mr_alloc(4096, IBV_ACCESS_LOCAL_WRITE);
  struct rinfo r;
  struct ibv_wc wc;
  const size_t size = 256;
  if (!opt.host) {
    post_recv(q, 1, mr->addr, 4096, mr->lkey);
    exchange("vanish", q, 0, 0, 0, &r);
    qp_connect(q, &r, &p);
    tcp_send("GO");
    int got = cq_wait(q->rcq, &wc, opt.op_timeout_ms);
    if (ck_wc(0, "receive of the first SEND", got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS,
              IBV_WC_RECV, (long long)size))
      ck_region(0, "received bytes", mr->addr, 4096, 0, size, 5);
    /* The client's SEND must have completed (our ACK reached it) before we vanish. */
    tcp_expect("SENT", opt.op_timeout_ms);
    if (by_exit) {
      info("exiting now without destroying anything");
      finish();
      _exit(nfails ? 1 : 0);
    }
    int rc = ibv_destroy_qp(q->qp);
    ck(rc == 0, "ibv_destroy_qp without telling the peer: expected 0, saw %d (%s)", rc,
       rc ? strerror(rc) : "ok");
    q->qp = NULL;
    tcp_send("GONE");
    /* Keep the device polled, so that a software HCA would answer if it (wrongly) still
     * knew the QP. */
    const char* rest = tcp_expect("DONE", opt.vanish_limit_s * 1000 + 10000);
    info("the client reports: %s", rest);
  } else {
    fill_pat(mr->addr, 5, size);
    exchange("vanish", q, 0, 0, 0, &r);
    qp_connect(q, &r, &p);
    tcp_expect("GO", opt.op_timeout_ms);
    post_send(q, 1, IBV_WR_SEND, mr->addr, (uint32_t)size, mr->lkey, 0, 0, 0, 0, 0);
    int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
    if (!ck_wc(0, "first SEND, to the live peer", got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS,
               IBV_WC_SEND, -1))
      fatal("the connection never worked, so the vanished peer cannot be tested");
    tcp_send("SENT");
    char line[512];
    int rr = tcp_recv_raw(line, sizeof line, opt.op_timeout_ms);
    if (by_exit) {
      if (rr > 0) fatal("side channel: expected the server to exit (EOF), saw \"%s\"", line);
      if (rr == 0)
        fatal("side channel: expected the server to exit (EOF), saw nothing within %d ms",
              opt.op_timeout_ms);
      close(sock);
      sock = -1;
      info("the server's side channel closed: it has exited");
    } else {
      if (rr <= 0 || strcmp(line, "GONE"))
        fatal("side channel: expected \"GONE\", saw %s", rr > 0 ? line
                                                         : rr   ? "the channel close"
                                                                : "nothing");
      info("the server has destroyed its QP");
    }
    fill_pat(mr->addr, 6, size);
    long long t0 = now_ms();
    post_send(q, 2, IBV_WR_SEND, mr->addr, (uint32_t)size, mr->lkey, 0, 0, 0, 0, 0);
    got = cq_wait(q->scq, &wc, opt.vanish_limit_s * 1000);
    long long dt = now_ms() - t0;
    char what[160];
    snprintf(what, sizeof what,
             "second SEND, to the vanished peer (timeout=12, retry_cnt=2; completed after %lld ms, "
             "limit %d s)",
             dt, opt.vanish_limit_s);
    if (ck_wc(0, what, got, &wc, opt.vanish_limit_s * 1000, IBV_WC_RETRY_EXC_ERR, -1, -1)) {
      /* The transport timer (the local ACK timeout) runs at least 4.096 us * 2^timeout:
       * three transmissions, three expiries. A 1 ms allowance for the clock's truncation. */
      long long min_ms = 3 * 4096LL * (1 << p.timeout) / 1000000 - 1;
      ck(dt >= min_ms,
         "time to RETRY_EXC_ERR: expected at least %lld ms (1 + retry_cnt 2 transmissions, each "
         "waiting the %.1f ms local ACK timeout), saw %lld ms",
         min_ms, 4.096 * (1 << p.timeout) / 1000, dt);
    }
    ck_qp_state("requester after the error completion", q->qp, IBV_QPS_ERR, 1000);
    if (!by_exit) {
      char b[96];
      tcp_send("DONE %s", got ? st(wc.status, b, sizeof b) : "no-completion");
    }
  }
  qp_destroy(q);
  mr_free(mr);
}

/* ------------------------------------------------------------------ case: data */

#define MAXS ((size_t)1 << 20)
#define GB 64                    /* guard bytes before each region's data */
#define REG (GB + 8 + MAXS + GB) /* one region: guard, misalignment, data, guard */
enum { T_WRITE = 11, T_WIMM = 12, T_READ = 13, T_SEND = 14 };

static int cmp_size(const void* a, const void* b) {
  size_t x = *(const size_t*)a, y = *(const size_t*)b;
  return x < y ? -1 : x > y;
}

static void case_data(void) {
  set_phase("setup");
  struct qpparm p = {.min_rnr_timer = 12, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7};
  struct qpx* q = qp_create(16, 16);
  /* PSNs just below the 24-bit wrap: the first multi-packet messages cross it. */
  q->psn = 0xfffff0 + ((uint32_t)lrand48() & 7);
  /* server: regions W (WRITE target), I (WRITE_WITH_IMM target), R (READ source),
   * V (SEND receive buffer), then 64 bytes for atomics. client: sources for W, I, V, the
   * READ destination, and 64 bytes for atomic results. Same layout both sides. */
  const size_t total = 4 * REG + 64;
  const int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                  IBV_ACCESS_REMOTE_ATOMIC;
  struct ibv_mr* mr = mr_alloc(total, opt.host ? IBV_ACCESS_LOCAL_WRITE : acc);
  uint8_t* base = mr->addr;
  uint8_t *W = base, *I = base + REG, *R = base + 2 * REG, *V = base + 3 * REG;
  uint64_t* A = (uint64_t*)(base + 4 * REG);
  struct ibv_mr* scratch = mr_alloc(4096, IBV_ACCESS_LOCAL_WRITE);
  struct rinfo r;
  struct ibv_wc wc;
  if (opt.host && dattr.atomic_cap == IBV_ATOMIC_NONE)
    info("the device reports atomic_cap IBV_ATOMIC_NONE; trying atomics anyway");
  exchange("data", q, opt.host ? 0 : mr->rkey, opt.host ? 0 : (uintptr_t)base, total, &r);
  qp_connect(q, &r, &p);

  int m = path_mtu_bytes(&r);
  size_t sizes[64], ns = 0;
  size_t fixed[] = {1,    2,    3,    7,     8,     63,    64,       255, 256,
                    4095, 4096, 4097, 65535, 65536, 65537, MAXS - 1, MAXS};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) sizes[ns++] = fixed[i];
  size_t mtus[] = {m - 1, m, m + 1, 2 * m - 1, 2 * m, 2 * m + 1, 3 * m + 5};
  for (size_t i = 0; i < sizeof mtus / sizeof mtus[0]; i++) sizes[ns++] = mtus[i];
  qsort(sizes, ns, sizeof sizes[0], cmp_size);
  size_t k = 0;
  for (size_t i = 0; i < ns; i++)
    if (!k || sizes[i] != sizes[k - 1]) sizes[k++] = sizes[i];
  ns = k;

  int stopped = 0;
  for (size_t si = 0; si < ns; si++) {
    size_t s = sizes[si], mis = s % 8, off = GB + mis;
    uint32_t imm_w = 0x1a000000u | (uint32_t)s, imm_s = 0x5e000000u | (uint32_t)s;
    set_phase("size %zu", s);
    int fails0 = nfails;
    if (!opt.host) {
      memset(base, GUARD, 4 * REG);
      fill_pat(R + off, T_READ, s);
      post_recv(q, 100 + si, scratch->addr, 16, scratch->lkey); /* for the WRITE_WITH_IMM */
      post_recv(q, 200 + si, V + off, (uint32_t)(MAXS + 8), mr->lkey);
      tcp_send("READY %zu", s);
      struct ibv_wc w1, w2;
      memset(&w1, 0, sizeof w1);
      memset(&w2, 0, sizeof w2);
      int g1 = cq_wait(q->rcq, &w1, opt.op_timeout_ms);
      int g2 = g1 ? cq_wait(q->rcq, &w2, opt.op_timeout_ms) : 0;
      if (ckq(!g1 || w1.wr_id == 100 + si,
              "first receive completion: expected wr_id %zu, saw %" PRIu64, 100 + si, w1.wr_id) &&
          ck_wc(1, "receive consumed by the RDMA WRITE with immediate", g1, &w1, opt.op_timeout_ms,
                IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM, (long long)s)) {
        ckq(w1.wc_flags & IBV_WC_WITH_IMM,
            "RDMA WRITE with immediate: expected IBV_WC_WITH_IMM in wc_flags, saw 0x%x",
            w1.wc_flags);
        ckq(ntohl(w1.imm_data) == imm_w,
            "RDMA WRITE with immediate: expected imm_data 0x%08x, saw 0x%08x", imm_w,
            ntohl(w1.imm_data));
      }
      if (g1 && ck_wc(1, "receive of the SEND with immediate", g2, &w2, opt.op_timeout_ms,
                      IBV_WC_SUCCESS, IBV_WC_RECV, (long long)s)) {
        ckq(w2.wr_id == 200 + si, "SEND receive: expected wr_id %zu, saw %" PRIu64, 200 + si,
            w2.wr_id);
        ckq(w2.wc_flags & IBV_WC_WITH_IMM,
            "SEND with immediate: expected IBV_WC_WITH_IMM in wc_flags, saw 0x%x", w2.wc_flags);
        ckq(ntohl(w2.imm_data) == imm_s,
            "SEND with immediate: expected imm_data 0x%08x, saw 0x%08x", imm_s, ntohl(w2.imm_data));
      }
      /* RC ordering: the SEND completes after the WRITEs before it were placed. */
      ck_region(1, "RDMA WRITE target", W, REG, off, s, T_WRITE);
      ck_region(1, "RDMA WRITE with immediate target", I, REG, off, s, T_WIMM);
      ck_region(1, "SEND receive buffer", V, REG, off, s, T_SEND);
      ck_region(1, "RDMA READ source (must be unchanged)", R, REG, off, s, T_READ);
      const char* rest = tcp_expect("DONE", opt.op_timeout_ms);
      int peer_ok = !strcmp(rest, "ok");
      ck(nfails == fails0,
         "%zu bytes (path MTU %d, offset %zu): expected WRITE, WRITE_WITH_IMM and SEND_WITH_IMM "
         "data placed byte-exact with guards intact, both receive completions right, the READ "
         "source unchanged; %s (client: %s)",
         s, m, off, nfails == fails0 ? "saw exactly that" : "see the FAIL lines above", rest);
      tcp_send("CHECKED %s", nfails == fails0 ? "ok" : "FAILED");
      if (nfails != fails0 || !peer_ok) {
        info("stopping at the first failing size (the QPs may be in error)");
        stopped = 1;
        break;
      }
    } else {
      uint8_t *lw = base + off, *li = base + REG + off, *ls = base + 3 * REG + off;
      uint8_t* lr = R;
      memset(base, GUARD, 4 * REG);
      fill_pat(lw, T_WRITE, s);
      fill_pat(li, T_WIMM, s);
      fill_pat(ls, T_SEND, s);
      const char* rest = tcp_expect("READY", opt.op_timeout_ms);
      if ((size_t)strtoull(rest, NULL, 10) != s)
        fatal("side channel: expected READY %zu, saw READY %s", s, rest);
      uint64_t rb = r.addr;
      post_send(q, 1, IBV_WR_RDMA_WRITE, lw, (uint32_t)s, mr->lkey, rb + off, r.rkey, 0, 0, 0);
      post_send(q, 2, IBV_WR_RDMA_WRITE_WITH_IMM, li, (uint32_t)s, mr->lkey, rb + REG + off, r.rkey,
                imm_w, 0, 0);
      post_send(q, 3, IBV_WR_RDMA_READ, lr + off, (uint32_t)s, mr->lkey, rb + 2 * REG + off, r.rkey,
                0, 0, 0);
      post_send(q, 4, IBV_WR_SEND_WITH_IMM, ls, (uint32_t)s, mr->lkey, 0, 0, imm_s, 0, 0);
      static const struct {
        const char* n;
        int op;
      } want[4] = {{"RDMA WRITE", IBV_WC_RDMA_WRITE},
                   {"RDMA WRITE with immediate", IBV_WC_RDMA_WRITE},
                   {"RDMA READ", IBV_WC_RDMA_READ},
                   {"SEND with immediate", IBV_WC_SEND}};
      int read_ok = 0;
      for (int j = 0; j < 4; j++) {
        int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
        char what[64];
        snprintf(what, sizeof what, "%s completion", want[j].n);
        if (!ck_wc(1, what, got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS, want[j].op, -1)) {
          if (!got) break;
          continue;
        }
        ckq(wc.wr_id == (uint64_t)j + 1,
            "%s: completions in posting order: expected wr_id %d, saw %" PRIu64, what, j + 1,
            wc.wr_id);
        if (wc.wr_id == 3) read_ok = 1;
      }
      if (read_ok) ck_region(1, "RDMA READ destination", lr, REG, off, s, T_READ);
      tcp_send("DONE %s", nfails == fails0 ? "ok" : "FAILED");
      ck(nfails == fails0,
         "%zu bytes (path MTU %d, offset %zu): expected WRITE, WRITE_WITH_IMM, READ and "
         "SEND_WITH_IMM to complete successfully in order and the READ data byte-exact with "
         "guards intact; %s",
         s, m, off, nfails == fails0 ? "saw exactly that" : "see the FAIL lines above");
      rest = tcp_expect("CHECKED", opt.op_timeout_ms + 30000);
      if (nfails != fails0 || strcmp(rest, "ok")) {
        info("stopping at the first failing size (the QPs may be in error); the server: %s", rest);
        stopped = 1;
        break;
      }
    }
  }

  /* Atomics on two 8-byte words (host byte order, as rxe and dverbs both keep them). */
  set_phase("atomics");
  if (stopped) {
    info("skipped after the failure above");
    goto end;
  }
  const uint64_t V0 = 0x0123456789fffff0ull,
                 ADD = 0x0000001000000011ull; /* carries across bit 32 */
  const uint64_t SW = 0xfeedfacecafebeefull, V1 = 0x1122334455667788ull, WRONG = 0xdeadbeefull;
  if (!opt.host) {
    A[0] = V0;
    A[1] = V1;
    tcp_send("ATOMIC_READY");
    const char* rest = tcp_expect("DONE", opt.op_timeout_ms);
    info("the client reports: %s", rest);
    ck(A[0] == SW,
       "word 0 after FETCH_AND_ADD(0x%" PRIx64 ") then CMP_AND_SWP(0x%" PRIx64 " -> 0x%" PRIx64
       "): expected 0x%" PRIx64 ", saw 0x%" PRIx64,
       ADD, V0 + ADD, SW, SW, A[0]);
    ck(A[1] == V1,
       "word 1 after a CMP_AND_SWP whose compare (0x%" PRIx64
       ") mismatches: expected it unchanged, 0x%" PRIx64 ", saw 0x%" PRIx64,
       WRONG, V1, A[1]);
  } else {
    uint64_t* res = (uint64_t*)(base + 4 * REG);
    for (int j = 0; j < 8; j++) res[j] = 0x5555555555555555ull;
    tcp_expect("ATOMIC_READY", opt.op_timeout_ms);
    uint64_t ra = r.addr + 4 * REG;
    post_send(q, 1, IBV_WR_ATOMIC_FETCH_AND_ADD, &res[0], 8, mr->lkey, ra, r.rkey, 0, ADD, 0);
    post_send(q, 2, IBV_WR_ATOMIC_CMP_AND_SWP, &res[1], 8, mr->lkey, ra, r.rkey, 0, V0 + ADD, SW);
    post_send(q, 3, IBV_WR_ATOMIC_CMP_AND_SWP, &res[2], 8, mr->lkey, ra + 8, r.rkey, 0, WRONG, 0);
    post_send(q, 4, IBV_WR_RDMA_READ, &res[3], 16, mr->lkey, ra, r.rkey, 0, 0, 0);
    static const struct {
      const char* n;
      int op;
    } want[4] = {{"FETCH_AND_ADD", IBV_WC_FETCH_ADD},
                 {"CMP_AND_SWP (compare matches)", IBV_WC_COMP_SWAP},
                 {"CMP_AND_SWP (compare mismatches)", IBV_WC_COMP_SWAP},
                 {"RDMA READ of both words", IBV_WC_RDMA_READ}};
    int ok[5] = {0};
    for (int j = 0; j < 4; j++) {
      int got = cq_wait(q->scq, &wc, opt.op_timeout_ms);
      if (ck_wc(0, want[j].n, got, &wc, opt.op_timeout_ms, IBV_WC_SUCCESS, want[j].op, -1))
        ok[wc.wr_id < 5 ? wc.wr_id : 0] = 1;
      else if (!got)
        break;
    }
    if (ok[1])
      ck(res[0] == V0,
         "FETCH_AND_ADD returned: expected the original 0x%" PRIx64 ", saw 0x%" PRIx64, V0, res[0]);
    if (ok[2])
      ck(res[1] == V0 + ADD, "CMP_AND_SWP (match) returned: expected 0x%" PRIx64 ", saw 0x%" PRIx64,
         V0 + ADD, res[1]);
    if (ok[3])
      ck(res[2] == V1, "CMP_AND_SWP (mismatch) returned: expected 0x%" PRIx64 ", saw 0x%" PRIx64,
         V1, res[2]);
    if (ok[4]) {
      ck(res[3] == SW, "READ of word 0 afterwards: expected 0x%" PRIx64 ", saw 0x%" PRIx64, SW,
         res[3]);
      ck(res[4] == V1,
         "READ of word 1 afterwards: expected 0x%" PRIx64 " (unchanged), saw 0x%" PRIx64, V1,
         res[4]);
    }
    ck(res[5] == 0x5555555555555555ull,
       "result buffer past the READ: expected untouched 0x5555555555555555, saw 0x%" PRIx64,
       res[5]);
    tcp_send("DONE %s", nfails ? "FAILED" : "ok");
  }
end:
  set_phase("end");
  /* A last handshake so that neither side tears down while the other still polls. */
  tcp_send("BYE");
  tcp_expect("BYE", opt.op_timeout_ms);
  qp_destroy(q);
  mr_free(mr);
  mr_free(scratch);
}

/* ------------------------------------------------------------------ main */

static void usage(const char* argv0) {
  fprintf(stderr,
          "usage: %s -d DEV -g GIDIDX [options] CASE             (server)\n"
          "       %s -d DEV -g GIDIDX [options] CASE SERVERHOST  (client)\n"
          "options:\n"
          "  -d DEV     RDMA device (default: the first one)\n"
          "  -g GIDIDX  GID index of a RoCEv2 GID (required)\n"
          "  -i PORT    IB port (default 1)\n"
          "  -p PORT    TCP port of the side channel (default 18515)\n"
          "  -t MS      deadline of one completion or side-channel message (default 15000)\n"
          "  -D MS      rnr: delay before the server posts its receive (default 100)\n"
          "  -V S       vanish: limit for the RETRY_EXC_ERR completion (default 60)\n"
          "  -T S       limit for the whole run (default 300)\n"
          "  -A         rkey: the responder's IBV_EVENT_QP_ACCESS_ERR check only warns (for a\n"
          "             responder known to lack it, e.g. Linux rxe before \"RDMA/rxe: Generate\n"
          "             async error for r_key violations\", 2026; Debian 12's 6.1 lacks it)\n"
          "cases (the server is the responder, the client the requester):\n"
          "  rnr          SEND before the receive is posted: rnr_retry=3 must succeed (one- and\n"
          "               multi-packet); rnr_retry=0 with no receive: RNR_RETRY_EXC_ERR\n"
          "  rkey         WRITE/READ with a wrong rkey, out of bounds, without the access right,\n"
          "               and WRITE with immediate with a wrong rkey: REM_ACCESS_ERR at the\n"
          "               requester; at the responder the QP in error, IBV_EVENT_QP_ACCESS_ERR\n"
          "               (receive flushed) or, with immediate, a completion error on the\n"
          "               receive; target memory untouched\n"
          "  vanish       the server destroys its QP silently: the next SEND (timeout 12,\n"
          "               retry_cnt 2) ends in RETRY_EXC_ERR within -V seconds\n"
          "  vanish-exit  the same, but the server process exits\n"
          "  data         WRITE, WRITE_WITH_IMM, READ, SEND_WITH_IMM of 1 B .. 1 MiB across the\n"
          "               path MTU, PSNs across the 24-bit wrap, FETCH_AND_ADD, CMP_AND_SWP\n"
          "exit status: 0 if every check of this side passed, 1 otherwise, 2 usage\n",
          argv0, argv0);
  exit(2);
}

int main(int argc, char** argv) {
  int c;
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  while ((c = getopt(argc, argv, "d:g:i:p:t:D:V:T:Ah")) != -1) {
    switch (c) {
      case 'd':
        opt.dev_name = optarg;
        break;
      case 'g':
        opt.gidx = atoi(optarg);
        break;
      case 'i':
        opt.ib_port = atoi(optarg);
        break;
      case 'p':
        opt.tcp_port = atoi(optarg);
        break;
      case 't':
        opt.op_timeout_ms = atoi(optarg);
        break;
      case 'D':
        opt.rnr_delay_ms = atoi(optarg);
        break;
      case 'V':
        opt.vanish_limit_s = atoi(optarg);
        break;
      case 'T':
        opt.total_s = atoi(optarg);
        break;
      case 'A':
        async_advisory = 1;
        break;
      default:
        usage(argv[0]);
    }
  }
  if (optind >= argc || argc - optind > 2 || opt.gidx < 0 || opt.op_timeout_ms <= 0 ||
      opt.rnr_delay_ms <= 0 || opt.vanish_limit_s <= 0 || opt.total_s <= 0)
    usage(argv[0]);
  opt.casename = argv[optind];
  opt.host = argc - optind == 2 ? argv[optind + 1] : NULL;
  role = opt.host ? "client" : "server";
  int which = !strcmp(opt.casename, "rnr")           ? 1
              : !strcmp(opt.casename, "rkey")        ? 2
              : !strcmp(opt.casename, "vanish")      ? 3
              : !strcmp(opt.casename, "vanish-exit") ? 4
              : !strcmp(opt.casename, "data")        ? 5
                                                     : 0;
  if (!which) usage(argv[0]);
  signal(SIGALRM, on_alarm);
  alarm((unsigned)opt.total_s);
  srand48((long)getpid() * 7919 ^ (long)now_ms());

  int n;
  struct ibv_device** list = ibv_get_device_list(&n);
  if (!list || !n) fatal("no RDMA devices (ibv_get_device_list: %s)", strerror(errno));
  struct ibv_device* dev = NULL;
  for (int i = 0; i < n; i++)
    if (!opt.dev_name || !strcmp(ibv_get_device_name(list[i]), opt.dev_name)) {
      dev = list[i];
      break;
    }
  if (!dev) fatal("no RDMA device named %s", opt.dev_name);
  ctx = ibv_open_device(dev);
  if (!ctx) fatal("ibv_open_device(%s): %s", ibv_get_device_name(dev), strerror(errno));
  if (ibv_query_device(ctx, &dattr)) fatal("ibv_query_device: %s", strerror(errno));
  if (ibv_query_port(ctx, (uint8_t)opt.ib_port, &pattr))
    fatal("ibv_query_port: %s", strerror(errno));
  if (pattr.link_layer != IBV_LINK_LAYER_ETHERNET)
    info("port %d link layer is not Ethernet (%d): RoCE addressing may not apply", opt.ib_port,
         pattr.link_layer);
  if (pattr.state != IBV_PORT_ACTIVE)
    fatal("port %d of %s: expected state ACTIVE, saw %s: the link is not up, nothing can be tested",
          opt.ib_port, ibv_get_device_name(dev), ibv_port_state_str(pattr.state));
  if (ibv_query_gid(ctx, (uint8_t)opt.ib_port, opt.gidx, &my_gid))
    fatal("ibv_query_gid(port %d, index %d): %s", opt.ib_port, opt.gidx, strerror(errno));
  char gs[64];
  gid_fmt(&my_gid, gs, sizeof gs);
  info("device %s port %d: active MTU %d, GID[%d] %s", ibv_get_device_name(dev), opt.ib_port,
       mtu_bytes(pattr.active_mtu), opt.gidx, gs);
  pd = ibv_alloc_pd(ctx);
  if (!pd) fatal("ibv_alloc_pd: %s", strerror(errno));

  tcp_setup();
  /* Both sides must be running the same case. */
  tcp_send("HELLO %s", opt.casename);
  const char* peer_case = tcp_expect("HELLO", opt.op_timeout_ms);
  if (strcmp(peer_case, opt.casename))
    fatal("the peer runs case \"%s\", not \"%s\"", peer_case, opt.casename);

  switch (which) {
    case 1:
      case_rnr();
      break;
    case 2:
      case_rkey();
      break;
    case 3:
      case_vanish(0);
      break;
    case 4:
      case_vanish(1);
      break;
    case 5:
      case_data();
      break;
  }
  if (sock >= 0) close(sock);
  ibv_dealloc_pd(pd);
  ibv_close_device(ctx);
  ibv_free_device_list(list);
  finish();
  return nfails ? 1 : 0;
}
