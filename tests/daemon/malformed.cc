// Hostile-client test for dverbsd (issue 8, "Bad input"): connects to a running daemon's
// socket (argv[1]) and sends malformed datagrams, commands before hello, forged, foreign
// and stale handles, bad memory registrations, corrupt ring indices and garbage WQEs. The
// daemon must answer EINVAL where the contract says so, complete bad WQEs with an error
// status, keep serving other connections and still answer stats at the end.
//
// Usage: malformed SOCKET. Exit 0 when every check passed; one line per failed check.
// No gtest: the suites run it against a daemon they start.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "uapi/dverbsd/proto.h"

using namespace dverbs;
using namespace dverbs::daemon;

namespace {

int g_failed = 0;
int g_line_checks = 0;

#define CHECK(cond, ...)                                  \
  do {                                                    \
    g_line_checks++;                                      \
    if (!(cond)) {                                        \
      g_failed++;                                         \
      std::printf("FAIL line %d: %s: ", __LINE__, #cond); \
      std::printf(__VA_ARGS__);                           \
      std::printf("\n");                                  \
    }                                                     \
  } while (0)

const char* g_path;
uint32_t g_seq = 100;

int connect_daemon() {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", g_path);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::printf("FAIL: cannot connect to %s: %s\n", g_path, std::strerror(errno));
    std::exit(1);
  }
  timeval tv{10, 0};  // a hung daemon fails the test instead of hanging it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Sends `len` raw bytes with `nfds` fds, receives one response. Returns false when no
// response of the right size came back. Received fds go to rfds (closed if rfds is null).
bool raw_call(int fd, const void* buf, size_t len, const int* fds, int nfds, Response* resp,
              int* rfds = nullptr, int* nr = nullptr) {
  iovec iov{const_cast<void*>(buf), len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * 64));
  if (nfds > 0) {
    mh.msg_control = cbuf.data();
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * size_t(nfds));
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * size_t(nfds));
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * size_t(nfds));
  }
  if (::sendmsg(fd, &mh, MSG_NOSIGNAL) < 0) return false;
  iovec riov{resp, sizeof *resp};
  msghdr rh{};
  rh.msg_iov = &riov;
  rh.msg_iovlen = 1;
  rh.msg_control = cbuf.data();
  rh.msg_controllen = cbuf.size();
  ssize_t n = ::recvmsg(fd, &rh, MSG_CMSG_CLOEXEC);
  int got = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&rh); c; c = CMSG_NXTHDR(&rh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (rfds && got < 4)
        rfds[got++] = f;
      else
        ::close(f);
    }
  }
  if (nr) *nr = got;
  return n == ssize_t(sizeof *resp);
}

// A well-formed command; returns the status (or -1 when no response came).
int call(int fd, Request& req, Response* resp, const int* fds = nullptr, int nfds = 0,
         int* rfds = nullptr, int* nr = nullptr) {
  req.magic = kMagic;
  req.seq = ++g_seq;
  if (!raw_call(fd, &req, sizeof req, fds, nfds, resp, rfds, nr)) return -1;
  if (resp->seq != req.seq) return -2;
  return resp->status;
}

int simple(int fd, Cmd cmd, Handle h, Response* resp = nullptr) {
  Request req;
  Response r;
  req.cmd = cmd;
  req.handle = h;
  return call(fd, req, resp ? resp : &r);
}

bool hello(int fd) {
  Request req;
  Response resp;
  req.cmd = Cmd::hello;
  req.hello.version = kVersion;
  int rfds[4], nr = 0;
  int st = call(fd, req, &resp, nullptr, 0, rfds, &nr);
  for (int i = 0; i < nr; i++) ::close(rfds[i]);
  return st == 0 && nr == 2;
}

Handle alloc_pd(int fd) {
  Response resp;
  return simple(fd, Cmd::alloc_pd, 0, &resp) == 0 ? resp.handle : 0;
}

Stats stats(int fd, bool* ok) {
  Response resp;
  *ok = simple(fd, Cmd::stats, 0, &resp) == 0;
  return resp.stats;
}

int sealed_memfd(size_t bytes, bool seal) {
  int fd = ::memfd_create("malformed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, off_t(bytes)) != 0) return -1;
  if (seal) ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  return fd;
}

int reg_mr(int fd, Handle pd, uint64_t iova, uint64_t len, const MrPiece* pieces, uint32_t np,
           const int* fds, int nfds, Response* resp) {
  Request req;
  req.cmd = Cmd::reg_mr;
  req.reg_mr.pd = pd;
  req.reg_mr.access = access::local_write;
  req.reg_mr.iova = iova;
  req.reg_mr.length = len;
  req.reg_mr.page_start = iova & ~uint64_t(4095);
  req.reg_mr.npieces = np;
  for (uint32_t i = 0; i < np && i < kMaxPieces; i++) req.reg_mr.pieces[i] = pieces[i];
  return call(fd, req, resp, fds, nfds);
}

void test_framing(int fd) {
  Response resp;
  // Too short, too long, bad magic: EINVAL, the connection stays open.
  char small[10] = {};
  CHECK(raw_call(fd, small, sizeof small, nullptr, 0, &resp) && resp.status == EINVAL,
        "short datagram: status %d", resp.status);
  std::vector<char> big(sizeof(Request) + 100, 0);
  CHECK(raw_call(fd, big.data(), big.size(), nullptr, 0, &resp) && resp.status == EINVAL,
        "long datagram: status %d", resp.status);
  Request req;
  req.magic = 0xdeadbeef;
  req.cmd = Cmd::hello;
  req.seq = 77;
  req.hello.version = kVersion;
  CHECK(
      raw_call(fd, &req, sizeof req, nullptr, 0, &resp) && resp.status == EINVAL && resp.seq == 77,
      "bad magic: status %d seq %u", resp.status, resp.seq);
  // Commands before hello.
  CHECK(simple(fd, Cmd::alloc_pd, 0) == EINVAL, "alloc_pd before hello");
  CHECK(simple(fd, Cmd::stats, 0) == EINVAL, "stats before hello");
  // hello with an fd attached: refused, then a clean hello works.
  int mfd = sealed_memfd(4096, true);
  Request h;
  h.cmd = Cmd::hello;
  h.hello.version = kVersion;
  CHECK(call(fd, h, &resp, &mfd, 1) == EINVAL, "hello with an fd: status %d", resp.status);
  ::close(mfd);
  Request hv;
  hv.cmd = Cmd::hello;
  hv.hello.version = kVersion + 41;
  CHECK(call(fd, hv, &resp) != 0, "hello with a wrong version accepted");
  CHECK(hello(fd), "hello");
  CHECK(!hello(fd), "second hello accepted");
  // Unknown command.
  Request u;
  u.cmd = static_cast<Cmd>(999);
  CHECK(call(fd, u, &resp) == EINVAL, "unknown command: status %d", resp.status);
  // Fds on a command that takes none.
  int mfd2 = sealed_memfd(4096, true);
  Request a;
  a.cmd = Cmd::alloc_pd;
  CHECK(call(fd, a, &resp, &mfd2, 1) == EINVAL, "alloc_pd with an fd: status %d", resp.status);
  ::close(mfd2);
}

void test_handles(int fd, int other) {
  // Forged.
  CHECK(simple(fd, Cmd::dealloc_pd, 0) == EINVAL, "handle 0");
  CHECK(simple(fd, Cmd::dealloc_pd, 0xffffffff) == EINVAL, "handle ~0");
  CHECK(simple(fd, Cmd::destroy_qp, 0x12345678) == EINVAL, "forged QP handle");
  Handle pd = alloc_pd(fd);
  CHECK(pd != 0, "alloc_pd");
  // Wrong kind.
  CHECK(simple(fd, Cmd::destroy_cq, pd) == EINVAL, "PD handle as CQ");
  CHECK(simple(fd, Cmd::dereg_mr, pd) == EINVAL, "PD handle as MR");
  CHECK(simple(fd, Cmd::dealloc_pd, pd ^ (1u << 20)) == EINVAL, "PD handle, other generation");
  // Stale.
  Handle stale = alloc_pd(fd);
  CHECK(stale && simple(fd, Cmd::dealloc_pd, stale) == 0, "dealloc_pd");
  CHECK(simple(fd, Cmd::dealloc_pd, stale) == EINVAL, "stale PD handle");
  // Foreign: a handle of the other connection beyond anything this one ever allocated.
  Handle foreign = 0;
  for (int i = 0; i < 8; i++) foreign = alloc_pd(other);
  CHECK(foreign != 0, "alloc_pd on the other connection");
  CHECK(simple(fd, Cmd::dealloc_pd, foreign) == EINVAL, "foreign PD handle");
  Response r;
  CHECK(simple(other, Cmd::query_device, 0, &r) == 0, "other connection still serves");
}

void test_reg_mr(int fd) {
  Handle pd = alloc_pd(fd);
  Response resp;
  const uint64_t iova = 0x7f0000001000;
  MrPiece one{0, 8192};
  // Not a memfd.
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  CHECK(reg_mr(fd, pd, iova, 8192, &one, 1, &devnull, 1, &resp) == EINVAL, "/dev/null piece");
  ::close(devnull);
  int pfd[2];
  if (::pipe(pfd) == 0) {
    CHECK(reg_mr(fd, pd, iova, 8192, &one, 1, &pfd[0], 1, &resp) == EINVAL, "pipe piece");
    ::close(pfd[0]);
    ::close(pfd[1]);
  }
  // Unsealed memfd.
  int unsealed = sealed_memfd(8192, false);
  CHECK(reg_mr(fd, pd, iova, 8192, &one, 1, &unsealed, 1, &resp) == EINVAL, "unsealed memfd");
  ::close(unsealed);
  int m = sealed_memfd(16384, true);
  // Bad offsets and lengths.
  MrPiece odd{100, 8192};
  CHECK(reg_mr(fd, pd, iova, 8192, &odd, 1, &m, 1, &resp) == EINVAL, "unaligned offset");
  MrPiece oddlen{0, 8000};
  CHECK(reg_mr(fd, pd, iova, 8000, &oddlen, 1, &m, 1, &resp) == EINVAL, "unaligned length");
  MrPiece past{16384, 8192};
  CHECK(reg_mr(fd, pd, iova, 8192, &past, 1, &m, 1, &resp) == EINVAL, "piece past the file");
  MrPiece wrap{~uint64_t(4095), 8192};
  CHECK(reg_mr(fd, pd, iova, 8192, &wrap, 1, &m, 1, &resp) == EINVAL, "offset overflow");
  MrPiece small{0, 4096};
  CHECK(reg_mr(fd, pd, iova, 8192, &small, 1, &m, 1, &resp) == EINVAL, "pieces short of span");
  CHECK(reg_mr(fd, pd, iova, 0, &one, 1, &m, 1, &resp) == EINVAL, "length 0");
  CHECK(reg_mr(fd, pd, ~uint64_t(0) - 100, 8192, &one, 1, &m, 1, &resp) == EINVAL,
        "iova + length overflows");
  // npieces disagreeing with the fds.
  int two[2] = {m, m};
  CHECK(reg_mr(fd, pd, iova, 8192, &one, 1, two, 2, &resp) == EINVAL, "npieces 1, 2 fds");
  CHECK(reg_mr(fd, pd, iova, 8192, &one, 0, &m, 1, &resp) == EINVAL, "npieces 0");
  std::vector<MrPiece> thousand(1000, one);  // the request carries kMaxPieces of them
  CHECK(reg_mr(fd, pd, iova, 8192, thousand.data(), 1000, &m, 1, &resp) == EINVAL,
        "npieces 1000");
  CHECK(reg_mr(fd, pd, iova, 8192, &one, 1, nullptr, 0, &resp) == EINVAL, "no fd");
  // Too many fds for one datagram.
  std::vector<int> many(48, m);
  std::vector<MrPiece> mp(48, MrPiece{0, 4096});
  CHECK(reg_mr(fd, pd, iova, 48 * 4096, mp.data(), 48, many.data(), 48, &resp) == EINVAL, "48 fds");
  // Bad PD.
  CHECK(reg_mr(fd, 0x4242, iova, 8192, &one, 1, &m, 1, &resp) == EINVAL, "forged PD");
  // And a good one still works.
  int st = reg_mr(fd, pd, iova + 100, 8000, &one, 1, &m, 1, &resp);
  CHECK(st == 0, "valid reg_mr: status %d", st);
  if (st == 0) CHECK(simple(fd, Cmd::dereg_mr, resp.handle) == 0, "dereg_mr");
  ::close(m);

  // Over RLIMIT_MEMLOCK: ENOMEM, and refused before the daemon mapped and mlock()ed (so
  // populated) the client's sparse memfd. Unprivileged clients only (CAP_IPC_LOCK = no
  // limit).
  rlimit old{};
  if (::geteuid() != 0 && ::getrlimit(RLIMIT_MEMLOCK, &old) == 0) {
    rlimit low = old;
    low.rlim_cur = 1 << 20;
    if (old.rlim_cur > low.rlim_cur && ::setrlimit(RLIMIT_MEMLOCK, &low) == 0) {
      const uint64_t big = uint64_t(64) << 20;
      int h = sealed_memfd(big, true);
      MrPiece whole{0, big};
      st = reg_mr(fd, pd, iova, big, &whole, 1, &h, 1, &resp);
      CHECK(st == ENOMEM, "reg_mr over RLIMIT_MEMLOCK: status %d", st);
      struct stat sb {};
      CHECK(::fstat(h, &sb) == 0 && sb.st_blocks == 0,
            "memfd populated by a refused registration: %lld blocks", (long long)sb.st_blocks);
      ::close(h);
      ::setrlimit(RLIMIT_MEMLOCK, &old);
    }
  }
}

template <class T>
T* at(void* base, uint64_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

void test_rings(int fd) {
  Handle pd = alloc_pd(fd);
  Request req;
  Response cq;
  req.cmd = Cmd::create_cq;
  req.create_cq.cqe = 16;
  int cqfd = -1, nr = 0;
  int st = call(fd, req, &cq, nullptr, 0, &cqfd, &nr);
  CHECK(st == 0 && nr == 1, "create_cq: status %d nfds %d", st, nr);
  if (st || nr != 1) return;
  void* cqmem = ::mmap(nullptr, cq.cq.ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, cqfd, 0);
  CHECK(cqmem != MAP_FAILED, "mmap CQ ring");
  // A memfd the daemon created must be sealed against shrinking.
  CHECK(::ftruncate(cqfd, 0) != 0, "CQ ring memfd can be truncated");
  auto* ch = static_cast<CqRingHeader*>(cqmem);
  ShmCqe* cqe = at<ShmCqe>(cqmem, kRingHeaderBytes);

  Request q;
  Response qr;
  q.cmd = Cmd::create_qp;
  q.create_qp.pd = pd;
  q.create_qp.send_cq = cq.handle;
  q.create_qp.recv_cq = cq.handle;
  q.create_qp.qp_type = QpType::rc;
  q.create_qp.cap = QpCap{8, 8, 2, 2, 64};
  int qpfd = -1;
  st = call(fd, q, &qr, nullptr, 0, &qpfd, &nr);
  CHECK(st == 0 && nr == 1, "create_qp: status %d nfds %d", st, nr);
  if (st || nr != 1) return;
  // QP with a CQ handle of the wrong kind.
  Request qbad = q;
  qbad.create_qp.send_cq = pd;
  Response tmp;
  CHECK(call(fd, qbad, &tmp) == EINVAL, "create_qp with a PD as CQ");
  // The CQ is in use: EBUSY.
  CHECK(simple(fd, Cmd::destroy_cq, cq.handle) == EBUSY, "destroy_cq of a used CQ");
  CHECK(simple(fd, Cmd::dealloc_pd, pd) == EBUSY, "dealloc_pd of a used PD");

  void* qmem = ::mmap(nullptr, qr.qp.ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, qpfd, 0);
  CHECK(qmem != MAP_FAILED, "mmap QP ring");
  auto* sq = at<WorkRingHeader>(qmem, qr.qp.sq_offset);
  auto* sqe = at<ShmSendWqe>(qmem, qr.qp.sq_offset + kRingHeaderBytes);
  auto* rq = at<WorkRingHeader>(qmem, qr.qp.rq_offset);
  auto* rqe = at<ShmRecvWqe>(qmem, qr.qp.rq_offset + kRingHeaderBytes);
  const uint32_t sqn = qr.qp.sq_entries, rqn = qr.qp.rq_entries;

  bool ok;
  Stats before = stats(fd, &ok);

  // Garbage WQEs: unknown opcode, too many SGEs, too much inline data, and a well-formed
  // SEND that the QP (still in RESET) refuses. Each must complete with an error.
  std::memset(static_cast<void*>(sqe), 0xa5, sizeof(ShmSendWqe) * 4);
  sqe[0].wr_id = 1001;
  sqe[0].opcode = static_cast<WrOpcode>(77);
  sqe[1].wr_id = 1002;
  sqe[1].opcode = WrOpcode::send;
  sqe[1].send_flags = 0;
  sqe[1].num_sge = 1000;
  sqe[2].wr_id = 1003;
  sqe[2].opcode = WrOpcode::send;
  sqe[2].send_flags = send_flags::inline_data;
  sqe[2].inline_len = 99999;
  sqe[3].wr_id = 1004;
  sqe[3].opcode = WrOpcode::send;
  sqe[3].send_flags = send_flags::signaled;
  sqe[3].num_sge = 0;
  sq->prod.v.store(4, std::memory_order_release);
  // A receive with too many SGEs.
  rqe[0].wr_id = 2001;
  rqe[0].num_sge = 5000;
  rq->prod.v.store(1, std::memory_order_release);

  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (ch->prod.v.load(std::memory_order_acquire) < 5 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const uint32_t prod = ch->prod.v.load(std::memory_order_acquire);
  CHECK(prod == 5, "error completions: %u of 5", prod);
  int seen_send = 0, seen_recv = 0;
  for (uint32_t i = 0; i < prod && i < cq.cq.ring_entries; i++) {
    const Wc& w = cqe[i].wc;
    CHECK(cqe[i].completion_ts != 0, "CQE %u without a timestamp", i);
    CHECK(w.status == WcStatus::loc_qp_op_err, "CQE %u status %u", i, unsigned(w.status));
    CHECK(w.qp_num == qr.qp.qp_num, "CQE %u qp_num %u", i, w.qp_num);
    if (w.wr_id >= 1001 && w.wr_id <= 1004) seen_send++;
    if (w.wr_id == 2001 && w.opcode == WcOpcode::recv) seen_recv++;
  }
  CHECK(seen_send == 4 && seen_recv == 1, "error CQEs: %d sends, %d recvs", seen_send, seen_recv);
  CHECK(sq->cons.v.load() == 4, "SQ cons %u", sq->cons.v.load());
  CHECK(rq->cons.v.load() == 1, "RQ cons %u", rq->cons.v.load());
  ch->cons.v.store(prod, std::memory_order_release);

  // Impossible indices: prod far ahead of cons in SQ and RQ, CQ cons ahead of prod.
  sq->prod.v.store(4 + sqn * 3 + 7, std::memory_order_release);
  rq->prod.v.store(1 + rqn + 1, std::memory_order_release);
  ch->cons.v.store(prod + 12345, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Stats after = stats(fd, &ok);
  CHECK(ok, "stats after corrupt rings");
  CHECK(after.corrupt_rings > before.corrupt_rings, "corrupt_rings %llu -> %llu",
        (unsigned long long)before.corrupt_rings, (unsigned long long)after.corrupt_rings);
  CHECK(after.bad_wqes >= before.bad_wqes + 5, "bad_wqes %llu -> %llu",
        (unsigned long long)before.bad_wqes, (unsigned long long)after.bad_wqes);
  CHECK(sq->cons.v.load() == 4, "SQ consumed past a corrupt prod: %u", sq->cons.v.load());
  // Corrupt event/arm values: arm with garbage flags, then a sane state again.
  ch->arm_flags.store(0xffffffff);
  ch->arm_cons.store(0xdeadbeef);
  ch->arm_seq.fetch_add(1);
  // Restore sanity; the QP can still be destroyed, the CQ then too.
  sq->prod.v.store(4, std::memory_order_release);
  rq->prod.v.store(1, std::memory_order_release);
  ch->cons.v.store(prod, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(simple(fd, Cmd::destroy_qp, qr.handle) == 0, "destroy_qp");
  CHECK(simple(fd, Cmd::destroy_qp, qr.handle) == EINVAL, "destroy_qp twice");
  CHECK(simple(fd, Cmd::destroy_cq, cq.handle) == 0, "destroy_cq");
  // The rings stay mapped on our side; touching them must be harmless for the daemon.
  sq->prod.v.store(123456, std::memory_order_release);
  ::munmap(qmem, qr.qp.ring_bytes);
  ::munmap(cqmem, cq.cq.ring_bytes);
  ::close(qpfd);
  ::close(cqfd);

  // Objects left for the disconnect to clean up: a QP with its CQ and PD.
  Request c2 = req;
  Response cq2;
  int f2 = -1;
  if (call(fd, c2, &cq2, nullptr, 0, &f2, &nr) == 0) {
    ::close(f2);
    Request q2 = q;
    q2.create_qp.send_cq = q2.create_qp.recv_cq = cq2.handle;
    Response qr2;
    int f3 = -1;
    CHECK(call(fd, q2, &qr2, nullptr, 0, &f3, &nr) == 0, "second create_qp");
    if (nr) ::close(f3);
  }
}

// A create_cq of `cqe` entries: its status, the ring's fd in *cqfd (*nr fds received).
int create_cq(int fd, uint32_t cqe, Response* resp, int* cqfd, int* nr) {
  Request req;
  req.cmd = Cmd::create_cq;
  req.create_cq.cqe = cqe;
  return call(fd, req, resp, nullptr, 0, cqfd, nr);
}

// Cmd::resize_cq: bad handles and sizes are EINVAL; a client that never attaches the
// resized ring (proto.h CqRingHeader) stalls only that CQ: a second resize is EBUSY and
// the CQ can still be destroyed.
void test_resize_cq(int fd) {
  Handle pd = alloc_pd(fd);
  Response cq;
  int cqfd = -1, nr = 0;
  int st = create_cq(fd, 16, &cq, &cqfd, &nr);
  CHECK(st == 0 && nr == 1, "create_cq for resize: status %d nfds %d", st, nr);
  if (st || nr != 1) return;
  ::close(cqfd);
  Request r;
  Response rr;
  r.cmd = Cmd::resize_cq;
  r.handle = pd;
  r.resize_cq.cqe = 32;
  CHECK(call(fd, r, &rr) == EINVAL, "resize_cq of a PD handle");
  r.handle = cq.handle;
  r.resize_cq.cqe = 0;
  CHECK(call(fd, r, &rr) == EINVAL, "resize_cq to 0");
  r.resize_cq.cqe = (1u << 22) + 1;
  CHECK(call(fd, r, &rr) == EINVAL, "resize_cq beyond the daemon's bound");
  r.resize_cq.cqe = 32;
  int rfd = -1;
  st = call(fd, r, &rr, nullptr, 0, &rfd, &nr);
  CHECK(st == 0 && nr == 1, "resize_cq: status %d nfds %d", st, nr);
  if (st || nr != 1) return;
  CHECK(rr.resize_cq.cqe >= 32 && rr.resize_cq.cqe <= rr.resize_cq.ring_entries,
        "resize_cq granted %u in %u entries", rr.resize_cq.cqe, rr.resize_cq.ring_entries);
  void* mem = ::mmap(nullptr, rr.resize_cq.ring_bytes, PROT_READ, MAP_SHARED, rfd, 0);
  CHECK(mem != MAP_FAILED, "mmap the resized ring");
  if (mem != MAP_FAILED) {
    CHECK(static_cast<CqRingHeader*>(mem)->attached.load() == 0, "resized ring attached");
    ::munmap(mem, rr.resize_cq.ring_bytes);
  }
  ::close(rfd);
  CHECK(call(fd, r, &rr) == EBUSY, "a second resize_cq before the client attached");
  CHECK(simple(fd, Cmd::destroy_cq, cq.handle) == 0, "destroy_cq of an unattached CQ");
  CHECK(simple(fd, Cmd::dealloc_pd, pd) == 0, "dealloc_pd after resize_cq");
}

}  // namespace

Handle alloc_mw(int fd, Handle pd) {
  Request req;
  Response resp;
  req.cmd = Cmd::alloc_mw;
  req.alloc_mw.pd = pd;
  req.alloc_mw.type = 1;
  return call(fd, req, &resp) == 0 ? resp.handle : 0;
}

// Limits are per client process, not per connection: with --max-mw 2, two windows on one
// connection leave none for this process's other connection, until one is deallocated.
void test_object_limit_is_per_process(int fd, int other) {
  Handle pd1 = alloc_pd(fd), pd2 = alloc_pd(other);
  CHECK(pd1 && pd2, "alloc_pd for the window checks");
  Handle w1 = alloc_mw(fd, pd1), w2 = alloc_mw(fd, pd1);
  CHECK(w1 && w2, "two windows under --max-mw 2");
  Request req;
  Response resp;
  req.cmd = Cmd::alloc_mw;
  req.alloc_mw.pd = pd2;
  req.alloc_mw.type = 1;
  int st = call(other, req, &resp);
  CHECK(st == ENOMEM, "a third window on another connection of the same process: %d", st);
  CHECK(simple(fd, Cmd::dealloc_mw, w2) == 0, "dealloc_mw");
  Handle w3 = alloc_mw(other, pd2);
  CHECK(w3 != 0, "the freed window's share is usable from the other connection");
  CHECK(simple(other, Cmd::dealloc_mw, w3) == 0 && simple(fd, Cmd::dealloc_mw, w1) == 0,
        "dealloc_mw of the rest");
  CHECK(simple(other, Cmd::dealloc_pd, pd2) == 0 && simple(fd, Cmd::dealloc_pd, pd1) == 0,
        "dealloc_pd");
}

// --max-conns: `held` connections of this uid are open; fill up to the cap, then the next
// one gets the refusal (seq 0, EMFILE) without sending anything, and is closed.
void test_connection_cap(int held, int cap, int watcher) {
  bool ok;
  const uint64_t before = stats(watcher, &ok).clients;
  std::vector<int> extra;
  for (int i = held; i < cap; i++) {
    int f = connect_daemon();
    CHECK(hello(f), "hello on connection %d of %d", i + 1, cap);
    extra.push_back(f);
  }
  // Twice: once reading without sending, once sending hello first as a real client does
  // (then the daemon closes with our request unread, and the first read may fail with
  // ECONNRESET ahead of the queued refusal).
  for (bool send_hello : {false, true}) {
    int f = connect_daemon();
    if (send_hello) {
      Request req;
      req.magic = kMagic;
      req.cmd = Cmd::hello;
      req.seq = ++g_seq;
      req.hello.version = kVersion;
      (void)!::send(f, &req, sizeof req, MSG_NOSIGNAL);  // may fail: the daemon may have closed
    }
    Response r;
    ssize_t n = ::recv(f, &r, sizeof r, 0);
    if (n < 0 && errno == ECONNRESET) n = ::recv(f, &r, sizeof r, 0);
    CHECK(n == ssize_t(sizeof r) && r.seq == 0 && r.status == EMFILE,
          "connection %d (hello sent: %d): no refusal (n %zd seq %u status %d)", cap + 1,
          int(send_hello), n, r.seq, r.status);
    CHECK(::recv(f, &r, sizeof r, 0) <= 0, "the refused connection is not closed");
    ::close(f);
  }
  Stats s = stats(watcher, &ok);
  CHECK(ok && s.refused_conns >= 2, "refused_conns %llu", (unsigned long long)s.refused_conns);
  for (int e : extra) ::close(e);
  // The daemon forgets them as their sessions end: wait, so later connections fit again.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((s = stats(watcher, &ok)).clients != before && ok &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(s.clients == before, "clients %llu, expected %llu after closing the extras",
        (unsigned long long)s.clients, (unsigned long long)before);
}

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: malformed SOCKET [MAX_CONNS]\n");
    return 2;
  }
  g_path = argv[1];
  const int max_conns = argc == 3 ? std::atoi(argv[2]) : 0;
  int other = connect_daemon();
  CHECK(hello(other), "hello on the second connection");
  bool ok;
  Stats base = stats(other, &ok);
  CHECK(ok, "stats at start");

  int fd = connect_daemon();
  if (max_conns > 0) {
    CHECK(hello(fd), "hello on the first connection");
    test_object_limit_is_per_process(fd, other);
    test_connection_cap(2, max_conns, other);
    ::close(fd);
    fd = connect_daemon();
  }
  test_framing(fd);
  test_handles(fd, other);
  test_reg_mr(fd);
  test_rings(fd);
  test_resize_cq(fd);

  Stats mid = stats(other, &ok);
  CHECK(ok, "stats from the second connection");
  CHECK(mid.bad_commands > base.bad_commands, "bad_commands did not grow");
  CHECK(mid.qps >= base.qps + 1, "the hostile client's QP is not counted");
  ::close(fd);

  // The hostile client is gone: its objects must be too (the other connection's 8 PDs stay).
  Stats end{};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    end = stats(other, &ok);
  } while (ok && (end.qps != base.qps || end.cqs != base.cqs || end.pds != base.pds + 8) &&
           std::chrono::steady_clock::now() < deadline);
  CHECK(ok, "stats after the hostile client left");
  CHECK(end.qps == base.qps && end.cqs == base.cqs && end.mrs == base.mrs,
        "objects left behind: qps %llu cqs %llu mrs %llu", (unsigned long long)end.qps,
        (unsigned long long)end.cqs, (unsigned long long)end.mrs);
  CHECK(end.pds == base.pds + 8, "pds %llu, expected %llu", (unsigned long long)end.pds,
        (unsigned long long)(base.pds + 8));
  CHECK(end.pinned_bytes == base.pinned_bytes, "pinned bytes %llu -> %llu",
        (unsigned long long)base.pinned_bytes, (unsigned long long)end.pinned_bytes);
  ::close(other);

  // A fresh connection still works.
  int fresh = connect_daemon();
  CHECK(hello(fresh), "hello on a fresh connection");
  Stats last{};
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    last = stats(fresh, &ok);
    if (ok && last.pds == base.pds) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (ok && std::chrono::steady_clock::now() < deadline);
  CHECK(ok, "stats on a fresh connection");
  CHECK(last.pds == base.pds, "the second connection's PDs were not destroyed: %llu",
        (unsigned long long)last.pds);
  ::close(fresh);

  if (g_failed) {
    std::printf("%d of %d checks failed\n", g_failed, g_line_checks);
    return 1;
  }
  std::printf("malformed: all %d checks passed\n", g_line_checks);
  return 0;
}
