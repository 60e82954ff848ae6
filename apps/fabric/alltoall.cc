// dverbs-alltoall: one host's part of an all-to-all RC exchange (issue 19, scripts/fabric).
//
//   dverbs-alltoall --rank R --hosts IP0,IP1,... [--port P] [--size BYTES] [--iters K]
//                   [--timeout S] [--incast SINK [--latency]]
//
// A program against the system's <infiniband/verbs.h> and <rdma/rdma_cma.h>, run through
// dverbs-run (embedded) or as a client of a dverbsd: nothing in it is dverbs-specific.
// Host R listens on IP_R:P and connects, through rdma_cm, to every host of higher rank;
// the hosts of lower rank connect to it. Over each connection, in both directions:
//   - K RDMA WRITEs of BYTES each into a region the peer announced in the CM private data,
//   - K SENDs of BYTES each into receives posted before the connection was made,
//   - one FIN SEND, after every WRITE and SEND of this direction has completed.
// Every byte carries a pattern of (source rank, destination rank, iteration, offset). The
// receiver checks each SEND's bytes as it completes, and the whole WRITE region when the
// FIN arrives (RC delivers in order: the FIN follows the WRITEs). The host that connected
// disconnects once its FIN completed and the peer's arrived; the other waits for that.
//
// --incast SINK: the other hosts only RDMA WRITE (K x BYTES each) to host SINK, which sends
// nothing but its FIN. --latency adds, beside the incast, a ping-pong of 64-byte SENDs on a
// connection of its own between the host after SINK and SINK, for as long as that host's
// WRITEs run (--min-pings round trips at least, default 200); it prints "LATENCY ... p50_us X p99_us Y".
//
// Output: one line per peer (bytes written and sent to it, bytes received from it and
// verified, the receive rate), then "RESULT rank R: PASS ..." or "FAIL ..." naming what was
// wrong (a completion status, a byte that differed, a CM event). Exit status 0 only on
// PASS. An alarm ends the process after --timeout seconds (default 120): never a hang.
#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Options {
  int rank = -1;
  int incast = -1;       // the sink of --incast, or -1: all-to-all
  bool latency = false;  // --latency
  uint32_t min_pings = 200;  // --min-pings: round trips timed at least
  std::vector<std::string> hosts;
  int port = 18515;
  uint32_t size = 65536;
  uint32_t iters = 100;
  int timeout = 120;
};

// What the CM private data carries, both ways: who I am and where to WRITE.
struct Announce {
  uint32_t rank;
  uint32_t rkey;
  uint64_t addr;
  uint32_t latency;  // 1: the --latency connection
};

constexpr int kWindow = 32;  // WRs in flight per connection (data WRs, both kinds)
enum : uint64_t { kTagWrite = 1, kTagSend = 2, kTagFin = 3, kTagRecv = 4, kTagPing = 5, kTagAlive = 6 };
// A host whose own FIN has completed but which still waits for its peer's sends only; a
// dead peer would leave it waiting forever (a receiver learns nothing). It probes with a
// zero-length RDMA WRITE this often: a dead peer ends the probe in RETRY_EXC_ERR.
constexpr auto kAliveEvery = std::chrono::milliseconds(500);
constexpr uint32_t kPingBytes = 64, kStopBytes = 1;

uint8_t pattern(uint32_t src, uint32_t dst, uint32_t iter, uint64_t off) {
  return static_cast<uint8_t>(src * 131 + dst * 31 + iter * 7 + off * 13 + (off >> 8));
}

struct Peer {
  int rank = -1;
  int slot = -1;  // index in g_peers (the rank, or the slot after them: --latency)
  rdma_cm_id* id = nullptr;
  bool connector = false;  // this host connected (and disconnects)
  bool established = false, disconnected = false;
  int attempts = 0;                                  // connects tried (connector)
  std::chrono::steady_clock::time_point retry_at{};  // next connect (connector, not yet up)
  std::vector<uint8_t> src;      // what this host WRITEs and SENDs to the peer (K x size)
  std::vector<uint8_t> wregion;  // where the peer WRITEs (K x size)
  std::vector<uint8_t> rbufs;    // K + 1 receive buffers (size bytes each)
  ibv_mr *src_mr = nullptr, *w_mr = nullptr, *r_mr = nullptr;
  Announce remote{};
  uint32_t next_write = 0, next_send = 0, inflight = 0, done_write = 0, done_send = 0;
  bool fin_posted = false, fin_done = false, fin_received = false, verified = false;
  uint32_t sends_received = 0;
  uint64_t bytes_verified = 0;
  // What goes each way: all-to-all K WRITEs and K SENDs both ways; --incast K WRITEs to
  // the sink only.
  uint32_t out_writes = 0, out_sends = 0, in_writes = 0, in_sends = 0;
  // The --latency connection (the slot after the ranks): pings, their round trips.
  bool latency = false, stop_sent = false, stopped = false, awaiting_pong = false;
  std::chrono::steady_clock::time_point gone_at{};  // DISCONNECTED seen before the FIN
  std::chrono::steady_clock::time_point ping_at{};
  std::chrono::steady_clock::time_point alive_at{};  // the last keep-alive probe
  bool alive_inflight = false;
  std::vector<double> rtts_us;
  std::chrono::steady_clock::time_point first_rx{}, last_rx{};
};

Options g_opt;
ibv_pd* g_pd = nullptr;
ibv_cq* g_cq = nullptr;
std::vector<std::unique_ptr<Peer>> g_peers;  // indexed by rank (nullptr for this host)

[[noreturn]] void die(const std::string& what) {
  std::printf("RESULT rank %d: FAIL %s\n", g_opt.rank, what.c_str());
  std::fflush(stdout);
  std::_Exit(1);
}

void usage() {
  std::fprintf(stderr,
               "usage: dverbs-alltoall --rank R --hosts IP0,IP1,... [--port P] [--size BYTES] "
               "[--iters K] [--timeout S] [--incast SINK [--latency [--min-pings N]]]\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "--rank") o.rank = std::atoi(value().c_str());
    else if (a == "--hosts") {
      std::string v = value();
      for (size_t at = 0; at <= v.size();) {
        size_t comma = v.find(',', at);
        if (comma == std::string::npos) comma = v.size();
        if (comma > at) o.hosts.push_back(v.substr(at, comma - at));
        at = comma + 1;
      }
    } else if (a == "--port") o.port = std::atoi(value().c_str());
    else if (a == "--size") o.size = static_cast<uint32_t>(std::strtoul(value().c_str(), nullptr, 0));
    else if (a == "--iters") o.iters = static_cast<uint32_t>(std::strtoul(value().c_str(), nullptr, 0));
    else if (a == "--timeout") o.timeout = std::atoi(value().c_str());
    else if (a == "--incast") o.incast = std::atoi(value().c_str());
    else if (a == "--latency") o.latency = true;
    else if (a == "--min-pings") o.min_pings = static_cast<uint32_t>(std::strtoul(value().c_str(), nullptr, 0));
    else usage();
  }
  if (o.rank < 0 || o.rank >= static_cast<int>(o.hosts.size()) || o.hosts.size() < 2 ||
      o.size == 0 || o.iters == 0 || o.port <= 0 || o.port > 65535 ||
      o.incast >= static_cast<int>(o.hosts.size()) || (o.latency && o.incast < 0) ||
      (o.latency && o.size < kPingBytes))
    usage();
  return o;
}

sockaddr_in addr_of(const std::string& ip) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(g_opt.port));
  if (inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) die("not an IPv4 address: " + ip);
  return a;
}

// PD and CQ on the device the first bound id landed on (every id of this host uses it).
void open_device(ibv_context* verbs) {
  if (g_pd) return;
  if (!verbs) die("rdma_cm id has no device (is the address this host's dverbs IP?)");
  g_pd = ibv_alloc_pd(verbs);
  int cqe = static_cast<int>(g_opt.hosts.size()) * (2 * kWindow + 2 * (g_opt.iters + 2));
  g_cq = g_pd ? ibv_create_cq(verbs, cqe, nullptr, nullptr, 0) : nullptr;
  if (!g_cq) die(std::string("ibv_alloc_pd/ibv_create_cq: ") + std::strerror(errno));
}

ibv_mr* reg(std::vector<uint8_t>& v, int access) {
  ibv_mr* mr = ibv_reg_mr(g_pd, v.data(), v.size(), access);
  if (!mr) die(std::string("ibv_reg_mr: ") + std::strerror(errno));
  return mr;
}

void post_recv(Peer& p, uint32_t slot) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(&p.rbufs[size_t{slot} * g_opt.size]), g_opt.size,
              p.r_mr->lkey};
  ibv_recv_wr wr{}, *bad = nullptr;
  wr.wr_id = (uint64_t{kTagRecv} << 56) | (uint64_t(p.slot) << 32) | slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  if (int rc = ibv_post_recv(p.id->qp, &wr, &bad)) die("ibv_post_recv: " + std::string(std::strerror(rc)));
}

// QP, buffers and receives for a connection to `rank` on `id`; returns what to announce.
Announce setup(Peer& p) {
  open_device(p.id->verbs);
  const size_t n = g_opt.size;
  const size_t k_out = std::max(p.out_writes, p.out_sends), k_in = p.in_sends + 1;
  if (!p.src_mr) {
  p.src.resize(std::max<size_t>(k_out, 1) * n);
  for (uint32_t it = 0; it < std::max<size_t>(k_out, 1); ++it)
    for (size_t off = 0; off < n; ++off)
      p.src[it * n + off] = pattern(g_opt.rank, p.rank, it, off);
  p.wregion.assign(std::max<size_t>(p.in_writes, 1) * n, 0);
  p.rbufs.assign((p.latency ? 2 : k_in) * n, 0);
  p.src_mr = reg(p.src, 0);
  p.w_mr = reg(p.wregion, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  p.r_mr = reg(p.rbufs, IBV_ACCESS_LOCAL_WRITE);
  }
  ibv_qp_init_attr qa{};
  qa.send_cq = qa.recv_cq = g_cq;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = kWindow + 2;
  qa.cap.max_recv_wr = static_cast<uint32_t>(p.latency ? 2 : k_in);
  qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
  if (rdma_create_qp(p.id, g_pd, &qa)) die(std::string("rdma_create_qp: ") + std::strerror(errno));
  for (uint32_t s = 0; s < qa.cap.max_recv_wr; ++s) post_recv(p, s);
  return Announce{static_cast<uint32_t>(g_opt.rank), p.w_mr->rkey,
                  reinterpret_cast<uintptr_t>(p.wregion.data()), p.latency ? 1u : 0u};
}

void post_send(Peer& p, ibv_wr_opcode op, uint64_t tag, uint32_t iter, uint32_t len) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(&p.src[size_t{iter} * g_opt.size]), len, p.src_mr->lkey};
  ibv_send_wr wr{}, *bad = nullptr;
  wr.wr_id = (tag << 56) | (uint64_t(p.slot) << 32) | iter;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  if (op == IBV_WR_RDMA_WRITE) {
    wr.wr.rdma.remote_addr = p.remote.addr + uint64_t{iter} * g_opt.size;
    wr.wr.rdma.rkey = p.remote.rkey;
  }
  if (int rc = ibv_post_send(p.id->qp, &wr, &bad))
    die("ibv_post_send to rank " + std::to_string(p.rank) + ": " + std::strerror(rc));
  ++p.inflight;
}

// Keeps the connection's window full: WRITE k and SEND k alternate; the FIN goes last.
// Are this host's own transfers (not the latency flow) still going?
bool bulk_running() {
  for (const auto& p : g_peers)
    if (p && !p->latency &&
        (!p->established || p->done_write < p->out_writes || p->done_send < p->out_sends))
      return true;
  return false;
}

// The --latency connection's client: one ping in flight; once the bulk transfers of this
// host are done (and kMinPings round trips were timed), a STOP instead.
void pump_latency(Peer& p) {
  if (!p.connector || p.inflight || p.awaiting_pong || p.stop_sent) return;
  if (bulk_running() || p.rtts_us.size() < g_opt.min_pings) {
    p.awaiting_pong = true;
    p.ping_at = std::chrono::steady_clock::now();
    post_send(p, IBV_WR_SEND, kTagPing, 0, kPingBytes);
  } else {
    p.stop_sent = true;
    post_send(p, IBV_WR_SEND, kTagFin, 0, kStopBytes);
  }
}

void pump(Peer& p) {
  if (!p.established || p.disconnected) return;
  if (p.latency) return pump_latency(p);
  while (p.inflight < kWindow && (p.next_write < p.out_writes || p.next_send < p.out_sends)) {
    if (p.next_write < p.out_writes && (p.next_write <= p.next_send || p.next_send >= p.out_sends))
      post_send(p, IBV_WR_RDMA_WRITE, kTagWrite, p.next_write++, g_opt.size);
    else
      post_send(p, IBV_WR_SEND, kTagSend, p.next_send++, g_opt.size);
  }
  if (!p.fin_posted && p.done_write == p.out_writes && p.done_send == p.out_sends) {
    p.fin_posted = true;
    post_send(p, IBV_WR_SEND, kTagFin, 0, 4);  // 4 bytes of iteration 0's pattern
  }
  const auto now = std::chrono::steady_clock::now();
  if (p.fin_done && !p.fin_received && !p.alive_inflight && now - p.alive_at >= kAliveEvery) {
    p.alive_at = now;
    p.alive_inflight = true;
    ibv_send_wr wr{}, *bad = nullptr;
    wr.wr_id = (kTagAlive << 56) | (uint64_t(p.slot) << 32);
    wr.opcode = IBV_WR_RDMA_WRITE;  // no SGE: zero bytes
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = p.remote.addr;
    wr.wr.rdma.rkey = p.remote.rkey;
    if (int rc = ibv_post_send(p.id->qp, &wr, &bad))
      die("ibv_post_send (keep-alive) to rank " + std::to_string(p.rank) + ": " + std::strerror(rc));
  }
}

void check_bytes(const Peer& p, const uint8_t* got, uint32_t iter, uint32_t len, const char* what) {
  for (uint32_t off = 0; off < len; ++off) {
    uint8_t want = pattern(p.rank, g_opt.rank, iter, off);
    if (got[off] != want) {
      char b[200];
      std::snprintf(b, sizeof b, "%s from rank %d, iteration %u, byte %u: 0x%02x, expected 0x%02x",
                    what, p.rank, iter, off, got[off], want);
      die(b);
    }
  }
}

// The --latency connection: the client times each ping's round trip and sends the next;
// the sink answers each ping and ends at the STOP.
void on_latency_completion(Peer& p, const ibv_wc& wc) {
  if (!p.id || !p.id->qp || wc.qp_num != p.id->qp->qp_num) return;
  const uint64_t tag = wc.wr_id >> 56;
  if (wc.status != IBV_WC_SUCCESS) {
    // After the STOP, the client disconnects: what is still queued is flushed.
    if ((p.stopped || p.stop_sent) && wc.status == IBV_WC_WR_FLUSH_ERR) {
      if (tag != kTagRecv) --p.inflight;
      return;
    }
    die(std::string("latency connection: ") + ibv_wc_status_str(wc.status));
  }
  if (tag != kTagRecv) {  // a ping, a pong or the STOP left
    --p.inflight;
    if (tag == kTagFin) p.fin_done = p.fin_received = p.verified = true;  // the client is done
    return;
  }
  post_recv(p, static_cast<uint32_t>(wc.wr_id & 0xffffffff));
  if (p.connector) {
    p.awaiting_pong = false;
    p.rtts_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - p.ping_at).count());
    return;  // pump_latency sends the next once the ping's own completion came
  }
  if (wc.byte_len == kStopBytes) {
    p.stopped = p.fin_received = p.verified = p.fin_done = true;
    return;
  }
  if (wc.byte_len != kPingBytes) die("latency connection: a ping of " + std::to_string(wc.byte_len) + " bytes");
  post_send(p, IBV_WR_SEND, kTagPing, 0, kPingBytes);  // the pong
}

void on_completion(const ibv_wc& wc) {
  const uint64_t tag = wc.wr_id >> 56;
  const int rank = static_cast<int>((wc.wr_id >> 32) & 0xffffff);
  if (rank < 0 || rank >= static_cast<int>(g_peers.size()) || !g_peers[rank])
    die("completion with a foreign wr_id");
  Peer& p = *g_peers[rank];
  if (p.latency) return on_latency_completion(p, wc);
  // Receives posted on a QP of an attempt that failed (a REJ, a late REQ turned away) are
  // flushed when rdma_cm moves it to the error state: not this connection's.
  if (!p.id || !p.id->qp || wc.qp_num != p.id->qp->qp_num) return;
  if (wc.status != IBV_WC_SUCCESS) {
    // A FIN the peer acknowledged by disconnecting may be flushed after its DREQ: the
    // peer has everything (it disconnects only after our FIN... or it saw its own).
    if (tag == kTagFin && p.fin_received && wc.status == IBV_WC_WR_FLUSH_ERR) {
      p.fin_done = true;
      return;
    }
    // A probe still queued when the peer's FIN came and the connection went: not a loss.
    if (tag == kTagAlive && p.fin_received && wc.status == IBV_WC_WR_FLUSH_ERR) {
      p.alive_inflight = false;
      return;
    }
    die("completion of " + std::string(tag == kTagRecv ? "a receive" : "a send") + " with rank " +
        std::to_string(rank) + ": " + ibv_wc_status_str(wc.status));
  }
  auto now = std::chrono::steady_clock::now();
  switch (tag) {
    case kTagWrite: --p.inflight; ++p.done_write; break;
    case kTagSend: --p.inflight; ++p.done_send; break;
    case kTagFin: --p.inflight; p.fin_done = true; break;
    case kTagAlive: p.alive_inflight = false; break;
    case kTagRecv: {
      if (p.first_rx == std::chrono::steady_clock::time_point{}) p.first_rx = now;
      p.last_rx = now;
      uint32_t slot = static_cast<uint32_t>(wc.wr_id & 0xffffffff);
      const uint8_t* got = &p.rbufs[size_t{slot} * g_opt.size];
      if (p.sends_received < p.in_sends) {
        if (wc.byte_len != g_opt.size) die("SEND of wrong length from rank " + std::to_string(rank));
        check_bytes(p, got, p.sends_received, g_opt.size, "SEND");
        p.bytes_verified += g_opt.size;
        ++p.sends_received;
      } else {
        if (wc.byte_len != 4) die("FIN of wrong length from rank " + std::to_string(rank));
        check_bytes(p, got, 0, 4, "FIN");
        for (uint32_t it = 0; it < p.in_writes; ++it)
          check_bytes(p, &p.wregion[size_t{it} * g_opt.size], it, g_opt.size, "RDMA WRITE");
        p.bytes_verified += uint64_t{p.in_writes} * g_opt.size;
        p.fin_received = p.verified = true;
      }
      break;
    }
    default: die("completion with an unknown tag");
  }
}

// Handles one CM event; returns an id to destroy once the event is acknowledged (a
// connection attempt that failed, or a request turned away), else nullptr.
rdma_cm_id* on_cm_event(rdma_cm_event* ev, rdma_cm_id* listener) {
  rdma_cm_id* id = ev->id;
  switch (ev->event) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
      if (rdma_resolve_route(id, 5000)) die("rdma_resolve_route: " + std::string(std::strerror(errno)));
      break;
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
      Peer& p = *static_cast<Peer*>(id->context);
      Announce a = setup(p);
      rdma_conn_param cp{};
      cp.private_data = &a;
      cp.private_data_len = sizeof a;
      cp.responder_resources = cp.initiator_depth = 1;
      cp.retry_count = 7;
      cp.rnr_retry_count = 7;
      if (rdma_connect(id, &cp)) die("rdma_connect: " + std::string(std::strerror(errno)));
      break;
    }
    case RDMA_CM_EVENT_CONNECT_REQUEST: {
      if (ev->param.conn.private_data_len < sizeof(Announce)) die("CONNECT_REQUEST without announce");
      Announce remote;
      std::memcpy(&remote, ev->param.conn.private_data, sizeof remote);
      int r = static_cast<int>(remote.rank);
      if (remote.latency) r = static_cast<int>(g_opt.hosts.size());  // the latency slot
      if (r < 0 || r >= static_cast<int>(g_peers.size()) || !g_peers[r] ||
          g_peers[r]->connector || g_peers[r]->established)
        die("unexpected CONNECT_REQUEST from rank " + std::to_string(remote.rank));
      Peer& p = *g_peers[r];
      if (p.id) {
        // An earlier attempt of this peer is still pending here (its REQ came late, after
        // the peer gave up on it): turn this one away, the peer tries again.
        rdma_reject(id, nullptr, 0);
        return id;
      }
      p.id = id;
      id->context = &p;
      p.remote = remote;
      Announce a = setup(p);
      rdma_conn_param cp{};
      cp.private_data = &a;
      cp.private_data_len = sizeof a;
      cp.responder_resources = cp.initiator_depth = 1;
      cp.rnr_retry_count = 7;
      if (rdma_accept(id, &cp)) die("rdma_accept: " + std::string(std::strerror(errno)));
      break;
    }
    case RDMA_CM_EVENT_ESTABLISHED: {
      Peer& p = *static_cast<Peer*>(id->context);
      if (id != p.id) die("ESTABLISHED on a connection attempt given up");
      if (p.connector) {
        if (ev->param.conn.private_data_len < sizeof(Announce)) die("ESTABLISHED without announce");
        std::memcpy(&p.remote, ev->param.conn.private_data, sizeof p.remote);
      }
      p.established = true;
      break;
    }
    case RDMA_CM_EVENT_DISCONNECTED: {
      // Checked against the FIN once the CQ is drained (main loop).
      Peer& p = *static_cast<Peer*>(id->context);
      if (id == p.id) p.disconnected = true;
      break;
    }
    case RDMA_CM_EVENT_REJECTED:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_CONNECT_ERROR: {
      // The peer's listener may not be up yet, or this was a stale attempt: the connector
      // tries again (for 30 s), the acceptor waits for that.
      Peer* p = id == listener ? nullptr : static_cast<Peer*>(id->context);
      if (!p || p->established || ++p->attempts > 150)
        die(std::string(p ? "rank " + std::to_string(p->rank) : "listener") + ": " +
            rdma_event_str(ev->event) + " (status " + std::to_string(ev->status) + ")");
      if (p->connector) p->retry_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      p->id = nullptr;
      return id;
    }
    case RDMA_CM_EVENT_TIMEWAIT_EXIT:
      break;
    default: {
      const Peer* p = id == listener ? nullptr : static_cast<Peer*>(id->context);
      die(std::string(p ? "rank " + std::to_string(p->rank) : "listener") + ": " +
          rdma_event_str(ev->event) + " (status " + std::to_string(ev->status) + ")");
    }
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  g_opt = parse(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::signal(SIGALRM, [](int) {
    static const char m[] = "RESULT: FAIL timed out (--timeout)\n";
    (void)!write(1, m, sizeof m - 1);
    _exit(1);
  });
  alarm(static_cast<unsigned>(g_opt.timeout));
  const int n = static_cast<int>(g_opt.hosts.size());
  // Who talks to whom, and what goes each way.
  const int me = g_opt.rank, sink = g_opt.incast, lat_client = sink >= 0 ? (sink + 1) % n : -1;
  g_peers.resize(n + 1);
  for (int r = 0; r < n; ++r) {
    if (r == me || (sink >= 0 && me != sink && r != sink)) continue;
    auto p = std::make_unique<Peer>();
    p->rank = p->slot = r;
    if (sink < 0) {
      p->connector = r > me;
      p->out_writes = p->out_sends = p->in_writes = p->in_sends = g_opt.iters;
    } else {
      p->connector = me != sink;
      (me == sink ? p->in_writes : p->out_writes) = g_opt.iters;
    }
    g_peers[r] = std::move(p);
  }
  if (g_opt.latency && (me == sink || me == lat_client)) {
    auto p = std::make_unique<Peer>();
    p->rank = me == sink ? lat_client : sink;
    p->slot = n;
    p->latency = true;
    p->connector = me == lat_client;
    g_peers[n] = std::move(p);
  }

  rdma_event_channel* ch = rdma_create_event_channel();
  if (!ch) die("rdma_create_event_channel: " + std::string(std::strerror(errno)));
  fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK);
  rdma_cm_id* listener = nullptr;
  sockaddr_in self = addr_of(g_opt.hosts[g_opt.rank]);
  if (rdma_create_id(ch, &listener, nullptr, RDMA_PS_TCP) ||
      rdma_bind_addr(listener, reinterpret_cast<sockaddr*>(&self)) || rdma_listen(listener, n))
    die("listen on " + g_opt.hosts[g_opt.rank] + ": " + std::strerror(errno));
  open_device(listener->verbs);
  if (sink < 0)
    std::printf("dverbs-alltoall rank %d of %d (%s): %u x %u B RDMA WRITE and SEND to each of %d peers\n",
                me, n, g_opt.hosts[me].c_str(), g_opt.iters, g_opt.size, n - 1);
  else
    std::printf("dverbs-alltoall rank %d of %d (%s): incast into rank %d, %u x %u B RDMA WRITE%s\n",
                me, n, g_opt.hosts[me].c_str(), sink, g_opt.iters, g_opt.size,
                g_opt.latency && (me == sink || me == lat_client) ? ", latency flow" : "");

  // Higher ranks are connected to, with retries while their listener is not up yet
  // (REJECTED / UNREACHABLE from a host that has not started): the outer loop re-arms them.
  const auto start = std::chrono::steady_clock::now();
  auto connect = [&](Peer& p) {
    p.retry_at = {};
    sockaddr_in src = self, dst = addr_of(g_opt.hosts[p.rank]);
    src.sin_port = 0;
    if (rdma_create_id(ch, &p.id, &p, RDMA_PS_TCP)) die("rdma_create_id");
    if (rdma_resolve_addr(p.id, reinterpret_cast<sockaddr*>(&src), reinterpret_cast<sockaddr*>(&dst), 5000))
      die("rdma_resolve_addr " + g_opt.hosts[p.rank] + ": " + std::strerror(errno));
  };

  ibv_wc wcs[32];
  std::chrono::steady_clock::time_point data_start{};  // every connection established
  for (;;) {
    bool work = false;
    rdma_cm_event* ev = nullptr;
    while (rdma_get_cm_event(ch, &ev) == 0) {
      work = true;
      rdma_cm_id* gone = on_cm_event(ev, listener);  // reads private data before the ack
      rdma_ack_cm_event(ev);
      if (gone) {
        if (gone->qp) rdma_destroy_qp(gone);
        rdma_destroy_id(gone);
      }
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) die("rdma_get_cm_event: " + std::string(std::strerror(errno)));
    int got = ibv_poll_cq(g_cq, 32, wcs);
    if (got < 0) die("ibv_poll_cq failed");
    for (int i = 0; i < got; ++i) on_completion(wcs[i]);
    work |= got > 0;
    bool all = true, up = true;
    const auto now = std::chrono::steady_clock::now();
    for (auto& pp : g_peers) {
      if (!pp) continue;
      Peer& p = *pp;
      if (p.connector && !p.id && now >= p.retry_at) connect(p);
      // A peer disconnects only after our FIN reached it and its FIN reached us. The FIN's
      // completion and the DREQ's event travel apart (through a dverbsd: the CQ ring and
      // the CM socket), so the FIN gets 2 s after the event before this counts as a loss.
      if (p.disconnected && !p.fin_received) {
        if (p.gone_at == std::chrono::steady_clock::time_point{}) p.gone_at = now;
        if (now - p.gone_at > std::chrono::seconds(2))
          die("rank " + std::to_string(p.rank) + " disconnected before its FIN");
      }
      pump(p);
      up &= p.established;
      if (p.connector && p.fin_done && p.fin_received && !p.disconnected) {
        rdma_disconnect(p.id);
        p.disconnected = true;
      }
      all &= p.disconnected && p.fin_done && p.verified;
    }
    if (up && data_start == std::chrono::steady_clock::time_point{}) {
      data_start = now;
      std::printf("DATA rank %d: every connection is established\n", g_opt.rank);
    }
    if (all) break;
    if (!work) usleep(20);
  }
  const auto end = std::chrono::steady_clock::now();
  const double setup = std::chrono::duration<double>(data_start - start).count();
  const double secs = std::chrono::duration<double>(end - data_start).count();

  uint64_t total = 0;
  int peers = 0;
  std::printf(" peer  written_B  sent_B  received_and_verified_B  rx_MB/s\n");
  for (auto& pp : g_peers) {
    if (!pp) continue;
    Peer& p = *pp;
    if (p.latency) {
      if (!p.connector) continue;
      std::vector<double> v = p.rtts_us;
      std::sort(v.begin(), v.end());
      auto pct = [&](double q) { return v.empty() ? 0.0 : v[std::min(v.size() - 1, size_t(q * v.size()))]; };
      std::printf("LATENCY rank %d to %d: %zu round trips of %u B, p50_us %.1f p99_us %.1f max_us %.1f\n",
                  g_opt.rank, p.rank, v.size(), kPingBytes, pct(0.50), pct(0.99), v.empty() ? 0 : v.back());
      continue;
    }
    double rx = std::chrono::duration<double>(p.last_rx - p.first_rx).count();
    const uint64_t written = uint64_t{p.out_writes} * g_opt.size, sent = uint64_t{p.out_sends} * g_opt.size;
    std::printf(" %4d  %9llu  %6llu  %23llu  %7.1f\n", p.rank, static_cast<unsigned long long>(written),
                static_cast<unsigned long long>(sent), static_cast<unsigned long long>(p.bytes_verified),
                rx > 0 ? p.bytes_verified / rx / 1e6 : 0.0);
    total += p.bytes_verified;
    peers++;
  }
  // The same instants on the common clock, for the fabric-wide goodput (scripts/fabric).
  auto wall_us = [](std::chrono::steady_clock::time_point t) {
    auto ago = std::chrono::steady_clock::now() - t;
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch() - ago)
        .count();
  };
  std::printf("TIMES rank %d: data_start_us %lld end_us %lld\n", g_opt.rank,
              static_cast<long long>(wall_us(data_start)), static_cast<long long>(wall_us(end)));
  std::printf("RESULT rank %d: PASS verified %llu bytes from %d peers in %.3f s (%.1f MB/s received; "
              "connections took %.2f s)\n",
              g_opt.rank, static_cast<unsigned long long>(total), peers, secs, total / secs / 1e6, setup);
  // Ids and QPs go with the process: every connection has been disconnected.
  return 0;
}
