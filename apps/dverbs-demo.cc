// dverbs-demo: two RC queue pairs on the embedded device ping-pong SENDs of several
// sizes through the DPDK port (the built-in loopback unless DVERBS_PORT says otherwise),
// verify every byte, and print half-round-trip latency and streaming message rate.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dverbs/dverbs.h"

using namespace dverbs;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const char* what, int err) {
  std::fprintf(stderr, "dverbs-demo: %s: %s\n", what, std::strerror(err));
  std::exit(1);
}

// Polls until one completion arrives; exits on an error status.
Wc wait_one(Cq& cq) {
  Wc wc;
  for (;;) {
    int n = cq.poll(&wc, 1);
    if (n < 0) die("poll_cq", -n);
    if (n == 1) break;
  }
  if (wc.status != WcStatus::success) {
    std::fprintf(stderr, "dverbs-demo: completion error: %s (wr_id %llu)\n",
                 wc_status_str(wc.status), (unsigned long long)wc.wr_id);
    std::exit(1);
  }
  return wc;
}

struct Side {
  Cq cq;
  Qp qp;
  std::vector<uint8_t> sbuf, rbuf;
  Mr smr, rmr;
};

void post_recv(Side& s, uint32_t len, uint64_t id) {
  Sge sge{reinterpret_cast<uint64_t>(s.rbuf.data()), len, s.rmr.lkey()};
  RecvWr wr{};
  wr.wr_id = id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  RecvWr* bad;
  if (int rc = s.qp.post_recv(&wr, &bad)) die("post_recv", rc);
}

int post_send(Side& s, uint32_t len, uint64_t id, bool signaled) {
  Sge sge{reinterpret_cast<uint64_t>(s.sbuf.data()), len, s.smr.lkey()};
  SendWr wr{};
  wr.wr_id = id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = WrOpcode::send;
  wr.send_flags = signaled ? send_flags::signaled : 0;
  if (len <= 64) wr.send_flags |= send_flags::inline_data;
  SendWr* bad;
  return s.qp.post_send(&wr, &bad);
}

void fill(std::vector<uint8_t>& b, uint32_t len, uint32_t seed) {
  for (uint32_t i = 0; i < len; i++) b[i] = uint8_t(i * 31 + seed);
}
bool check(const std::vector<uint8_t>& b, uint32_t len, uint32_t seed) {
  for (uint32_t i = 0; i < len; i++)
    if (b[i] != uint8_t(i * 31 + seed)) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 2000;
  const uint32_t kMax = 1u << 20;
  auto ctx = Context::open();
  if (!ctx) die("no dverbs device (check DVERBS_* settings above)", ctx.error());
  DeviceAttr da;
  PortAttr pa;
  Gid gid;
  ctx->query_device(&da);
  ctx->query_port(1, &pa);
  ctx->query_gid(1, 0, &gid);
  std::printf("dverbs demo: device %s, port %s, active MTU %u, GID ::ffff:%u.%u.%u.%u\n",
              ctx->name(), pa.state == PortState::active ? "ACTIVE" : "DOWN",
              mtu_bytes(pa.active_mtu), gid.raw[12], gid.raw[13], gid.raw[14], gid.raw[15]);

  auto pd = Pd::alloc(*ctx);
  if (!pd) die("alloc_pd", pd.error());
  Side a, b;
  for (Side* s : {&a, &b}) {
    auto cq = Cq::create(*ctx, 1024);
    if (!cq) die("create_cq", cq.error());
    s->cq = cq.take();
    QpInit init;
    init.cap = {256, 256, 1, 1, 64};
    auto qp = Qp::create(*pd, s->cq, s->cq, init);
    if (!qp) die("create_qp", qp.error());
    s->qp = qp.take();
    s->sbuf.assign(kMax, 0);
    s->rbuf.assign(kMax, 0);
    auto smr = Mr::reg(*pd, s->sbuf.data(), kMax, access::local_write);
    auto rmr = Mr::reg(*pd, s->rbuf.data(), kMax, access::local_write);
    if (!smr || !rmr) die("reg_mr", smr ? rmr.error() : smr.error());
    s->smr = smr.take();
    s->rmr = rmr.take();
  }
  Mtu mtu = pa.active_mtu;
  if (int rc = a.qp.connect(gid, b.qp.qp_num(), 100, 200, mtu)) die("connect a", rc);
  if (int rc = b.qp.connect(gid, a.qp.qp_num(), 200, 100, mtu)) die("connect b", rc);

  std::printf("\n  RC SEND ping-pong, QP %u <-> QP %u, %d round trips per size, every byte "
              "verified\n\n", a.qp.qp_num(), b.qp.qp_num(), iters);
  std::printf("  %9s %14s %16s %14s\n", "bytes", "latency [us]", "rate [Mmsg/s]", "bw [MB/s]");
  uint64_t verified = 0;
  for (uint32_t len : {1u, 64u, 1024u, 4096u, 65536u, 1u << 20}) {
    int n = len >= (1u << 20) ? iters / 20 + 1 : len >= 65536 ? iters / 4 + 1 : iters;
    // Ping-pong: A→B, B→A; half the round trip is the one-way latency.
    auto t0 = Clock::now();
    for (int i = 0; i < n; i++) {
      fill(a.sbuf, len, uint32_t(i));
      post_recv(b, len, 1);
      post_recv(a, len, 2);
      if (int rc = post_send(a, len, 3, true)) die("post_send", rc);
      wait_one(a.cq);  // A's send or B's... both QPs share nothing: A.cq sees A's events
      Wc r = wait_one(b.cq);
      if (r.byte_len != len || !check(b.rbuf, len, uint32_t(i))) {
        std::fprintf(stderr, "dverbs-demo: data mismatch at size %u iteration %d\n", len, i);
        return 1;
      }
      std::memcpy(b.sbuf.data(), b.rbuf.data(), len);
      if (int rc = post_send(b, len, 4, true)) die("post_send", rc);
      wait_one(b.cq);
      Wc r2 = wait_one(a.cq);
      if (r2.byte_len != len || !check(a.rbuf, len, uint32_t(i))) {
        std::fprintf(stderr, "dverbs-demo: echo mismatch at size %u iteration %d\n", len, i);
        return 1;
      }
      verified += 2ull * len;
    }
    double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    double lat = us / n / 2;

    // Streaming rate: A keeps a window of unsignaled-but-every-16th-signaled sends.
    const int kWindow = 128;
    int total = n * 4, sent = 0, recvd = 0;
    for (int i = 0; i < kWindow && i < total; i++) post_recv(b, len, 10);
    int posted_recv = kWindow < total ? kWindow : total;
    auto t1 = Clock::now();
    int inflight = 0;
    while (recvd < total) {
      while (sent < total && inflight < kWindow) {
        if (post_send(a, len, 11, true) != 0) break;
        sent++;
        inflight++;
      }
      Wc wc[32];
      int k = a.cq.poll(wc, 32);
      for (int j = 0; j < k; j++) {
        if (wc[j].status != WcStatus::success) die("send completion", EIO);
        inflight--;
      }
      k = b.cq.poll(wc, 32);
      for (int j = 0; j < k; j++) {
        if (wc[j].status != WcStatus::success) die("recv completion", EIO);
        recvd++;
        if (posted_recv < total) {
          post_recv(b, len, 10);
          posted_recv++;
        }
      }
    }
    while (inflight > 0) {
      Wc wc[32];
      int k = a.cq.poll(wc, 32);
      inflight -= k > 0 ? k : 0;
    }
    double s = std::chrono::duration<double>(Clock::now() - t1).count();
    double rate = total / s;
    std::printf("  %9u %14.2f %16.3f %14.1f\n", len, lat, rate / 1e6, rate * len / 1e6);
  }
  std::printf("\n  %llu bytes verified; demo OK\n", (unsigned long long)verified);
  return 0;
}
