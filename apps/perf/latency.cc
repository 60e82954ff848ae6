// latency: RC SEND ping-pong between two processes over net_memif with inline progress,
// against a kernel UDP ping-pong between two processes over 127.0.0.1. Both run through
// the same harness (ping_pong below): the client stamps the clock before it sends and after
// the pong arrives, and reports half of each round trip, as perftest does for SEND latency.
//
// Each side is a child process; the parent hands each one end of a socketpair (fd in
// DVPERF_OOB_FD) for the out-of-band exchange of QPN/PSN/GID (or UDP port) and barriers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include <rte_ether.h>
#include <rte_mbuf.h>

#include "perf/common.h"
#include "perf/scenarios.h"
#include "pmd/net/config.h"
#include "pmd/net/eal.h"
#include "pmd/net/port.h"

namespace dverbs::perf {

namespace {

const std::vector<double> kCurve = {0,  10, 20, 30,   40,   50,    60,    70, 80,
                                    90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100};

int oob_fd() {
  const char* v = std::getenv("DVPERF_OOB_FD");
  if (!v) die("DVPERF_OOB_FD not set (latency children are started by the scenario)");
  return std::atoi(v);
}

void oob_write(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t k = write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) die("out-of-band write", errno);
    c += k;
    n -= size_t(k);
  }
}
void oob_read(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t k = read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) die("out-of-band peer went away");
    if (k < 0) die("out-of-band read", errno);
    c += k;
    n -= size_t(k);
  }
}
void barrier(int fd) {
  char b = 1;
  oob_write(fd, &b, 1);
  oob_read(fd, &b, 1);
}

// The harness: both transports provide send(), try_recv() and after_recv().
template <class T>
std::vector<double> ping_pong(T& t, bool client, uint64_t warm, uint64_t iters) {
  std::vector<double> half_rtt_ns;
  half_rtt_ns.reserve(iters);
  for (uint64_t i = 0; i < warm + iters; i++) {
    if (client) {
      const auto t0 = Clock::now();
      t.send();
      while (!t.try_recv()) {
      }
      const auto t1 = Clock::now();
      t.after_recv();
      if (i >= warm)
        half_rtt_ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 2);
    } else {
      while (!t.try_recv()) {
      }
      t.send();
      t.after_recv();
    }
  }
  return half_rtt_ns;
}

void report(std::vector<double> s) {
  std::sort(s.begin(), s.end());
  Result r;
  double sum = 0;
  for (double x : s) sum += x;
  r["samples"] = {double(s.size())};
  r["mean_us"] = {s.empty() ? 0 : sum / double(s.size()) / 1e3};
  r["curve_p"] = kCurve;
  std::vector<double> us;
  for (double p : kCurve) us.push_back(percentile(s, p) / 1e3);
  r["curve_us"] = us;
  r["p50_us"] = {percentile(s, 50) / 1e3};
  r["p99_us"] = {percentile(s, 99) / 1e3};
  r["p999_us"] = {percentile(s, 99.9) / 1e3};
  print_result(r);
}

// ---- dverbs over memif ----
struct VerbsPingPong {
  Context ctx;
  Pd pd;
  Cq cq;
  Qp qp;
  std::vector<uint8_t> buf;
  Mr mr;
  uint32_t size = 64;
  uint64_t sent = 0;
  uint32_t recvs_done = 0;

  void post_recv(uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
      Sge sge{reinterpret_cast<uint64_t>(buf.data()) + 4096, std::max<uint32_t>(size, 1),
              mr.lkey()};
      RecvWr wr{};
      wr.sg_list = &sge;
      wr.num_sge = 1;
      RecvWr* bad;
      if (int e = qp.post_recv(&wr, &bad)) die("post_recv", e);
    }
  }
  void send() {
    Sge sge{reinterpret_cast<uint64_t>(buf.data()), size, mr.lkey()};
    SendWr wr{};
    wr.wr_id = sent;
    wr.sg_list = &sge;
    wr.num_sge = size ? 1 : 0;
    wr.opcode = WrOpcode::send;
    // Unsignaled except every 64th, so the send queue's slots come back with the ACKs.
    wr.send_flags =
        (size <= 256 ? send_flags::inline_data : 0) | (sent % 64 == 63 ? send_flags::signaled : 0);
    SendWr* bad;
    if (int e = qp.post_send(&wr, &bad)) die("post_send", e);
    sent++;
  }
  bool try_recv() {
    Wc wc[8];
    int n = cq.poll(wc, 8);
    if (n < 0) die("poll_cq", -n);
    bool got = false;
    for (int i = 0; i < n; i++) {
      if (wc[i].status != WcStatus::success)
        die(std::string("completion error: ") + wc_status_str(wc[i].status));
      if (wc[i].opcode == WcOpcode::recv) {
        got = true;
        recvs_done++;
      }
    }
    return got;
  }
  void after_recv() {
    post_recv(recvs_done);
    recvs_done = 0;
  }
};

struct Endpoint {
  uint32_t qpn, psn;
  Gid gid;
};

// ---- kernel UDP over 127.0.0.1 ----
struct UdpPingPong {
  int fd = -1;
  uint32_t size = 64;
  bool blocking = false;
  char sbuf[65536] = {}, rbuf[65536] = {};
  void send() {
    if (::send(fd, sbuf, size, 0) != ssize_t(size)) die("send", errno);
  }
  bool try_recv() {
    ssize_t n = recv(fd, rbuf, sizeof rbuf, blocking ? 0 : MSG_DONTWAIT);
    if (n >= 0) return true;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) die("recv", errno);
    return false;
  }
  void after_recv() {}
};

// ---- raw frames over the same memif port, no transport (what the port itself costs) ----
struct RawPingPong {
  std::unique_ptr<pmd::net::Port> port;
  uint32_t size = 64;
  void send() {
    rte_mbuf* m = port->alloc_mbuf();
    if (!m) die("mbuf pool empty");
    uint8_t* p = rte_pktmbuf_mtod(m, uint8_t*);
    std::memset(p, 0xff, 12);  // broadcast from "ff:..": nobody parses it
    p[12] = 0x88;              // local experimental ethertype 0x88b5
    p[13] = 0xb5;
    std::memset(p + 14, 0x5a, size);
    m->data_len = uint16_t(14 + size);
    m->pkt_len = 14 + size;
    if (port->tx_burst(0, &m, 1) != 1) die("memif refused a frame");
  }
  bool try_recv() {
    rte_mbuf* m;
    if (port->rx_burst(0, &m, 1) == 0) return false;
    rte_pktmbuf_free(m);
    return true;
  }
  void after_recv() {}
};

}  // namespace

int child_lat_raw(const Options& o) {
  const int fd = oob_fd();
  const bool client = o.role == "client";
  pmd::net::Config cfg;
  std::string err;
  if (!pmd::net::config_from_env(&cfg, &err)) die(err);
  if (pmd::net::eal_init(cfg, &err) != 0) die(err);
  RawPingPong r;
  r.size = o.size;
  r.port = pmd::net::Port::open(cfg, 1, &err);
  if (!r.port) die(err);
  const auto t0 = Clock::now();
  while (!r.port->link_up()) {
    if (seconds_since(t0) > 30) die("memif link did not come up");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  barrier(fd);
  auto s = ping_pong(r, client, o.warmup_iters, o.iters);
  barrier(fd);
  if (client)
    report(std::move(s));
  else
    print_result({{"server", {1}}});
  return 0;
}

int child_lat(const Options& o) {
  if (o.raw_port) return child_lat_raw(o);
  const int fd = oob_fd();
  const bool client = o.role == "client";
  VerbsPingPong v;
  v.size = o.size;
  auto c = Context::open();
  if (!c) die("cannot open the dverbs device", c.error());
  v.ctx = c.take();
  v.pd = Pd::alloc(v.ctx).take();
  auto cq = Cq::create(v.ctx, 4096);
  if (!cq) die("create_cq", cq.error());
  v.cq = cq.take();
  v.buf.assign(65536 + 4096, 0x33);
  auto mr = Mr::reg(v.pd, v.buf.data(), v.buf.size(), access::local_write);
  if (!mr) die("reg_mr", mr.error());
  v.mr = mr.take();
  QpInit init;
  init.cap = {256, 1024, 1, 1, 256};
  auto qp = Qp::create(v.pd, v.cq, v.cq, init);
  if (!qp) die("create_qp", qp.error());
  v.qp = qp.take();
  PortAttr pa;
  v.ctx.query_port(1, &pa);
  Endpoint me{v.qp.qp_num(), client ? 0x111u : 0x222u, {}}, peer{};
  v.ctx.query_gid(1, 0, &me.gid);
  oob_write(fd, &me, sizeof me);
  oob_read(fd, &peer, sizeof peer);
  if (int e = connect_qp(v.qp, QpType::rc, peer.gid, peer.qpn, me.psn, peer.psn, pa.active_mtu, 0))
    die("connect", e);
  v.post_recv(512);
  barrier(fd);
  auto s = ping_pong(v, client, o.warmup_iters, o.iters);
  barrier(fd);  // the server keeps its QP until the last pong is acknowledged
  if (client) {
    report(std::move(s));
  } else {
    print_result({{"server", {1}}});
  }
  return 0;
}

// Two RC QPs of one process ping-pong over the device's own port (the built-in loopback, or
// the loopback of a dverbsd): one application thread, so it needs a single CPU besides a
// daemon's doorbell thread. latency --daemon compares embedded and daemon mode this way.
int child_lat_loop(const Options& o) {
  VerbsPingPong v[2];
  auto c = Context::open();
  if (!c) die("cannot open the dverbs device", c.error());
  Context ctx = c.take();
  Pd pd = Pd::alloc(ctx).take();
  PortAttr pa;
  ctx.query_port(1, &pa);
  Gid gid;
  ctx.query_gid(1, 0, &gid);
  for (auto& x : v) {
    x.size = o.size;
    auto cq = Cq::create(ctx, 4096);
    if (!cq) die("create_cq", cq.error());
    x.cq = cq.take();
    x.buf.assign(65536 + 4096, 0x33);
    auto mr = Mr::reg(pd, x.buf.data(), x.buf.size(), access::local_write);
    if (!mr) die("reg_mr", mr.error());
    x.mr = mr.take();
    QpInit init;
    init.cap = {256, 1024, 1, 1, 256};
    auto qp = Qp::create(pd, x.cq, x.cq, init);
    if (!qp) die("create_qp", qp.error());
    x.qp = qp.take();
  }
  for (int i = 0; i < 2; i++)
    if (int e = connect_qp(v[i].qp, QpType::rc, gid, v[1 - i].qp.qp_num(), 0x100u + i,
                           0x101u - i, pa.active_mtu, 0))
      die("connect", e);
  for (auto& x : v) x.post_recv(512);
  std::vector<double> half_rtt_ns;
  half_rtt_ns.reserve(o.iters);
  for (uint64_t i = 0; i < o.warmup_iters + o.iters; i++) {
    const auto t0 = Clock::now();
    v[0].send();
    while (!v[1].try_recv()) {
    }
    v[1].send();
    while (!v[0].try_recv()) {
    }
    const auto t1 = Clock::now();
    v[1].after_recv();
    v[0].after_recv();
    if (i >= o.warmup_iters)
      half_rtt_ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 2);
  }
  report(std::move(half_rtt_ns));
  return 0;
}

int child_udp(const Options& o) {
  const int ofd = oob_fd();
  const bool client = o.role == "client";
  UdpPingPong u;
  u.size = std::min<uint32_t>(o.size, sizeof u.sbuf);
  u.blocking = o.blocking;
  u.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (u.fd < 0) die("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(u.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("bind", errno);
  socklen_t len = sizeof a;
  getsockname(u.fd, reinterpret_cast<sockaddr*>(&a), &len);
  uint16_t mine = a.sin_port, theirs = 0;
  oob_write(ofd, &mine, sizeof mine);
  oob_read(ofd, &theirs, sizeof theirs);
  a.sin_port = theirs;
  if (connect(u.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect", errno);
  barrier(ofd);
  auto s = ping_pong(u, client, o.warmup_iters, o.iters);
  barrier(ofd);
  close(u.fd);
  if (client)
    report(std::move(s));
  else
    print_result({{"server", {1}}});
  return 0;
}

namespace {

// Runs one server/client pair; returns the client's result.
Result run_pair(const Options& o, const char* kind, const std::vector<std::string>& server_env,
                const std::vector<std::string>& client_env, const std::string& wait_for_file,
                const std::vector<std::string>& extra = {}) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair", errno);
  auto args = [&](const char* role) {
    std::vector<std::string> a = forward(o, {kind, "--role", role});
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  auto env = [](std::vector<std::string> e, int fd) {
    e.push_back("DVPERF_OOB_FD=" + std::to_string(fd));
    return e;
  };
  Child server, client;
  server.start(args("server"), env(server_env, sv[0]), {sv[0]});
  if (!wait_for_file.empty()) {
    // The memif server creates its socket when its port starts; the client connects then.
    const auto t0 = Clock::now();
    struct stat st;
    while (stat(wait_for_file.c_str(), &st) != 0) {
      if (seconds_since(t0) > 30) die("the memif server did not create " + wait_for_file);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  client.start(args("client"), env(client_env, sv[1]), {sv[1]});
  close(sv[0]);
  close(sv[1]);
  Result r = client.wait();
  server.wait();
  return r;
}

// latency --daemon: a dverbsd child serving DIR/uverbs0 on one end of a memif link, found
// next to this executable (build tree or bindir). Stopped with SIGTERM, as systemd would.
class DaemonProcess {
 public:
  void start(const std::string& dir, const std::vector<std::string>& env) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) die("readlink /proc/self/exe", errno);
    exe[n] = 0;
    std::string path(exe);
    path = path.substr(0, path.rfind('/')) + "/dverbsd";
    log_ = dir + ".log";
    mkdir(dir.c_str(), 0755);
    pid_ = fork();
    if (pid_ < 0) die("fork", errno);
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      for (const auto& e : env) putenv(strdup(e.c_str()));
      execl(path.c_str(), path.c_str(), "--dir", dir.c_str(), "--mode", "0600",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto t0 = Clock::now();
    for (;;) {
      FILE* f = std::fopen(log_.c_str(), "r");
      char line[512];
      bool ready = false;
      while (f && std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "dverbsd: ready", 14) == 0) ready = true;
      if (f) std::fclose(f);
      if (ready) return;
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        die(path + " exited before it was ready; see " + log_);
      }
      if (seconds_since(t0) > 60) die(path + " not ready after 60 s; see " + log_);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~DaemonProcess() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int st;
    waitpid(pid_, &st, 0);
    unlink(log_.c_str());
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

}  // namespace

int scenario_latency(const Options& in) {
  Options o = in;
  if (!o.size) o.size = 64;
  if (!o.iters) o.iters = 100000;
  if (!o.warmup_iters) o.warmup_iters = 10000;
  print_header(o, "latency");
  std::printf(
      "  RC SEND ping-pong of %u B between two processes over net_memif, inline progress\n"
      "  (DVERBS_LCORES=0), %llu round trips after %llu of warm-up; baseline: kernel UDP\n"
      "  ping-pong between two processes over 127.0.0.1, same harness (busy-polling\n"
      "  recv(MSG_DONTWAIT); blocking recv shown too). Half round trip, as perftest. Also: raw\n"
      "  Ethernet frames ping-ponged over the same memif port without any transport. The\n"
      "  blocking-UDP and raw-memif rows run a fifth of the iterations.\n\n",
      o.size, (unsigned long long)o.iters, (unsigned long long)o.warmup_iters);

  const std::string sock = "/tmp/dvperf-" + std::to_string(getpid()) + ".sock";
  unlink(sock.c_str());
  const std::string memif = "net_memif0,socket=" + sock + ",socket-abstract=no,role=";
  Result dv = run_pair(
      o, "lat", {"DVERBS_PORT=" + memif + "server", "DVERBS_IP=10.0.0.1/24", "DVERBS_LCORES=0"},
      {"DVERBS_PORT=" + memif + "client", "DVERBS_IP=10.0.0.2/24", "DVERBS_LCORES=0"}, sock);
  unlink(sock.c_str());
  // The two reference rows (not part of the ratio) run a fifth of the iterations.
  Options ref = o;
  ref.iters = std::max<uint64_t>(1, o.iters / 5);
  ref.warmup_iters = std::max<uint64_t>(1, o.warmup_iters / 5);
  Result raw =
      run_pair(ref, "lat", {"DVERBS_PORT=" + memif + "server", "DVERBS_IP=10.0.0.1/24"},
               {"DVERBS_PORT=" + memif + "client", "DVERBS_IP=10.0.0.2/24"}, sock, {"--raw-port"});
  unlink(sock.c_str());
  // Daemon mode (issue 8). The like-for-like pair: two QPs of one process over a loopback
  // port, embedded, then as a client of one dverbsd (one application thread plus the
  // daemon's doorbell thread: two CPUs suffice). Then the memif pair again, each process a
  // client of its own dverbsd: four spinning threads, which a 2-CPU machine time-slices.
  Result dd, le, ld;
  if (o.daemon) {
    const std::string base = "/tmp/dvperf-" + std::to_string(getpid());
    {
      Child c;
      c.start(forward(o, {"lat-loop"}), {"DVERBS_PORT=", "DVERBS_LCORES=0", "DVERBS_DAEMON=off"});
      le = c.wait();
    }
    {
      DaemonProcess d;
      d.start(base + "-dl", {"DVERBS_PORT=", "DVERBS_LCORES=0"});
      Child c;
      c.start(forward(o, {"lat-loop"}), {"DVERBS_DAEMON=" + base + "-dl", "DVERBS_PORT="});
      ld = c.wait();
    }
  }
  if (o.daemon) {
    const std::string base = "/tmp/dvperf-" + std::to_string(getpid());
    const std::string dsock = base + "-d.sock";
    const std::string dmemif = "net_memif0,socket=" + dsock + ",socket-abstract=no,role=";
    unlink(dsock.c_str());
    DaemonProcess da, db;
    da.start(base + "-da", {"DVERBS_PORT=" + dmemif + "server", "DVERBS_IP=10.0.0.1/24",
                            "DVERBS_LCORES=0"});
    db.start(base + "-db", {"DVERBS_PORT=" + dmemif + "client", "DVERBS_IP=10.0.0.2/24",
                            "DVERBS_LCORES=0"});
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the memif link comes up
    dd = run_pair(o, "lat", {"DVERBS_DAEMON=" + base + "-da", "DVERBS_PORT="},
                  {"DVERBS_DAEMON=" + base + "-db", "DVERBS_PORT="}, "");
    unlink(dsock.c_str());
  }
  Result ku = run_pair(o, "udp", {}, {}, "");
  Result kb = run_pair(ref, "udp", {}, {}, "", {"--blocking"});

  std::printf("  %-28s %9s %9s %9s %9s %9s\n", "half round trip [us]", "p50", "p99", "p99.9",
              "mean", "max");
  auto row = [](const char* name, const Result& r) {
    std::printf("  %-28s %9.2f %9.2f %9.2f %9.2f %9.2f\n", name, get(r, "p50_us"), get(r, "p99_us"),
                get(r, "p999_us"), get(r, "mean_us"), r.at("curve_us").back());
  };
  row("dverbs RC SEND (memif)", dv);
  if (o.daemon) {
    row("  same, each via a dverbsd", dd);
    row("dverbs loopback, 1 process", le);
    row("  same, via one dverbsd", ld);
  }
  row("raw memif frames (floor)", raw);
  row("kernel UDP, busy-poll", ku);
  row("kernel UDP, blocking", kb);
  const double ratio = get(dv, "p50_us") / get(ku, "p50_us");
  const double ratio_b = get(dv, "p50_us") / get(kb, "p50_us");
  std::printf("\n  ratio p50 / kernel p50 = %.3f (vs blocking UDP %.3f); target <= 0.1: %s\n",
              ratio, ratio_b, verdict(ratio <= 0.1));
  // Issue 17, target 6: what the transport adds over the port's own ping-pong.
  const double added = get(dv, "p50_us") - get(raw, "p50_us");
  const double added99 = get(dv, "p99_us") - get(raw, "p99_us");
  std::printf("  dverbs - raw memif floor = %.3f us p50, %.3f us p99; target <= 0.35 us: %s\n",
              added, added99, verdict(added <= 0.35));
  const double dratio = o.daemon ? get(ld, "p50_us") / get(le, "p50_us") : 0;
  if (o.daemon) {
    std::printf("  daemon mode p50 / embedded p50 (loopback, 1 process) = %.3f (p99 %.3f);"
                " target <= 1.5: %s\n",
                dratio, get(ld, "p99_us") / get(le, "p99_us"), verdict(dratio <= 1.5));
    std::printf("  two processes, each via its own dverbsd over memif: p50 %.3f x embedded\n",
                get(dd, "p50_us") / get(dv, "p50_us"));
  }
  if (o.json) {
    Json j;
    j.str("scenario", "latency")
        .str("machine", cpu_model())
        .num("load_average", load_average())
        .num("size", o.size)
        .num("iters", double(o.iters));
    j.num("p50_us", get(dv, "p50_us")).num("p99_us", get(dv, "p99_us"));
    j.num("p999_us", get(dv, "p999_us")).num("mean_us", get(dv, "mean_us"));
    j.num("kernel_p50_us", get(ku, "p50_us")).num("kernel_p99_us", get(ku, "p99_us"));
    j.num("kernel_p999_us", get(ku, "p999_us"));
    j.num("kernel_blocking_p50_us", get(kb, "p50_us"));
    j.num("kernel_blocking_p99_us", get(kb, "p99_us"));
    j.num("ratio", ratio).num("ratio_vs_blocking", ratio_b);
    j.num("raw_memif_p50_us", get(raw, "p50_us")).num("raw_memif_p99_us", get(raw, "p99_us"));
    j.arr("raw_memif_curve_us", raw.at("curve_us"));
    j.num("target_ratio", 0.1).flag("met", ratio <= 0.1);
    j.num("floor_added_us", added).num("floor_added_p99_us", added99);
    j.num("floor_target_us", 0.35).flag("floor_met", added <= 0.35);
    if (o.daemon) {
      j.num("loop_embedded_p50_us", get(le, "p50_us")).num("loop_daemon_p50_us", get(ld, "p50_us"));
      j.num("loop_embedded_p99_us", get(le, "p99_us")).num("loop_daemon_p99_us", get(ld, "p99_us"));
      j.num("daemon_ratio", dratio).num("daemon_target", 1.5).flag("daemon_met", dratio <= 1.5);
      j.num("memif_daemon_p50_us", get(dd, "p50_us")).num("memif_daemon_p99_us", get(dd, "p99_us"));
      j.num("memif_daemon_ratio", get(dd, "p50_us") / get(dv, "p50_us"));
    }
    j.arr("curve_p", dv.at("curve_p")).arr("curve_us", dv.at("curve_us"));
    j.arr("kernel_curve_us", ku.at("curve_us"));
    j.arr("kernel_blocking_curve_us", kb.at("curve_us"));
    std::printf("%s\n", j.text().c_str());
  }
  return 0;
}

}  // namespace dverbs::perf
