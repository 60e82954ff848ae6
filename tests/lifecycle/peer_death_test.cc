// Peer death (suite `e2e`): two processes joined by net_memif, one RC QP each; the survivor
// streams RDMA WRITEs and the peer is killed with SIGKILL in the middle of the stream.
// Asserted: the survivor's WRs complete exactly once each, in order: successes, then one
// IBV_WC_RETRY_EXC_ERR, then IBV_WC_WR_FLUSH_ERR for every other WR (also those posted
// after the error); the error comes after at most retry_cnt retransmissions; the QP ends in
// ERR; nothing hangs (every wait is bounded by an iteration count).
//
// The peer is this executable again (PeerDeathHelper.Peer, run with DVERBS_TEST_PEER_DIR).
// Each registration is its own process (DVERBS_PORT is read once per process):
//   PeerDeath.MemifServerDies — the survivor is the memif client;
//   PeerDeath.MemifClientDies — the survivor is the memif server.
// The processes exchange QPN, rkey and address through small files in a private directory.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common.h"
#include "pmd/hca/device.h"
#include "pmd/hca/objects.h"

namespace dverbs::lifecycle {
namespace {

constexpr uint32_t kMsg = 16 * 1024;
constexpr int kDepth = 16;
constexpr uint8_t kRetryCnt = 7;

std::string memif(const std::string& dir, const char* role) {
  return "net_memif0,role=" + std::string(role) + ",socket=" + dir +
         "/memif.sock,socket-abstract=no";
}

bool wait_file(const std::string& path, long polls = 40000) {
  for (long i = 0; i < polls; i++) {
    if (::access(path.c_str(), F_OK) == 0) return true;
    usleep(500);
  }
  return false;
}

void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  std::rename(tmp.c_str(), path.c_str());  // appears complete or not at all
}

Gid gid_of(uint32_t ip) {
  Gid g{};
  g.raw[10] = g.raw[11] = 0xff;
  g.raw[12] = uint8_t(ip >> 24);
  g.raw[13] = uint8_t(ip >> 16);
  g.raw[14] = uint8_t(ip >> 8);
  g.raw[15] = uint8_t(ip);
  return g;
}

bool link_up(Context& ctx, long polls = 200000) {
  for (long i = 0; i < polls; i++) {
    PortAttr pa;
    if (ctx.query_port(1, &pa) == 0 && pa.state == PortState::active) return true;
    usleep(50);
  }
  return false;
}

// The peer: a responder that serves WRITEs until it is killed.
TEST(PeerDeathHelper, Peer) {
  const char* d = std::getenv("DVERBS_TEST_PEER_DIR");
  const char* role = std::getenv("DVERBS_TEST_PEER_ROLE");
  if (!d || !role) GTEST_SKIP() << "the peer process of PeerDeath.Memif*Dies";
  const std::string dir = d;
  if (std::string(role) == "client") {
    ASSERT_TRUE(wait_file(dir + "/server.ready"));
  }
  setenv("DVERBS_PORT", memif(dir, role).c_str(), 1);
  setenv("DVERBS_IP", "10.0.0.2/24", 1);
  setenv("DVERBS_LCORES", "0", 1);
  auto c = Context::open();
  ASSERT_TRUE(c) << std::strerror(c.error());
  Context ctx = c.take();
  if (std::string(role) == "server") write_file(dir + "/server.ready", "up\n");
  Pd pd = Pd::alloc(ctx).take();
  Cq cq = Cq::create(ctx, 1024).take();
  QpInit init;
  Qp qp = Qp::create(pd, cq, cq, init).take();
  std::vector<uint8_t> buf(kMsg * kDepth);
  Mr mr = Mr::reg(pd, buf.data(), buf.size(), kAll).take();
  write_file(dir + "/peer.info", std::to_string(qp.qp_num()) + " " + std::to_string(mr.rkey()) +
                                     " " + std::to_string(reinterpret_cast<uint64_t>(buf.data())) +
                                     "\n");
  ASSERT_TRUE(wait_file(dir + "/survivor.info"));
  uint32_t sqpn = 0;
  std::ifstream(dir + "/survivor.info") >> sqpn;
  ASSERT_EQ(connect_rc(qp, gid_of(0x0a000001), sqpn, 500, 100), 0);
  write_file(dir + "/peer.connected", "ok\n");
  // Serve until killed (bounded anyway: the survivor kills us long before).
  Wc wc;
  for (long i = 0; i < 4'000'000'000L; i++) cq.poll(&wc, 1);
  FAIL() << "never killed";
}

// The survivor's transport state, for a failure message.
std::string describe(Context& ctx, pmd::hca::Qp& q) {
  auto& dev = *static_cast<pmd::hca::Device*>(ctx.raw());
  auto& c = dev.counters();
  auto& ps = dev.port().stats();
  const auto& r = q.req;
  char b[512];
  std::snprintf(b, sizeof b,
                "state %u psn %#x last_ack %#x max_psn %#x timer %lu rnr %lu retry_left %u "
                "unacked %lu next_wqe %lu sent_end %lu addr_resolved %d retransmits %lu | "
                "tx_packets %lu tx_no_mbuf %lu port tx_frames %lu tx_dropped %lu link %d",
                unsigned(q.state.load()), r.psn, r.last_ack_psn, r.max_psn,
                (unsigned long)r.timer_deadline, (unsigned long)r.rnr_deadline, r.retry_left,
                (unsigned long)r.unacked, (unsigned long)r.next_wqe, (unsigned long)r.sent_end,
                int(q.addr_resolved), (unsigned long)q.retransmits.load(),
                (unsigned long)c.tx_packets.load(), (unsigned long)c.tx_no_mbuf.load(),
                (unsigned long)ps.tx_frames.load(), (unsigned long)ps.tx_dropped.load(),
                int(dev.port().link_up()));
  return b;
}

class PeerDeath : public ::testing::Test {
 protected:
  std::string dir;
  pid_t child = -1;

  void SetUp() override {
    char tmpl[] = "/tmp/dverbs-peer-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }
  void TearDown() override {
    if (child > 0) {
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
    }
    for (const char* f : {"/memif.sock", "/server.ready", "/peer.info", "/survivor.info",
                          "/peer.connected"})
      std::remove((dir + f).c_str());
    rmdir(dir.c_str());
  }
  void spawn(const char* role) {
    child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {  // exec at once: a forked DPDK process must not touch the EAL
      setenv("DVERBS_TEST_PEER_DIR", dir.c_str(), 1);
      setenv("DVERBS_TEST_PEER_ROLE", role, 1);
      execl("/proc/self/exe", "peer_death_test", "--gtest_filter=PeerDeathHelper.Peer",
            static_cast<char*>(nullptr));
      _exit(127);
    }
  }

  // The survivor: `role` is its memif role; the peer takes the other one.
  void run(const char* role) {
    const bool server = std::string(role) == "server";
    if (!server) {
      ASSERT_NO_FATAL_FAILURE(spawn("server"));
      ASSERT_TRUE(wait_file(dir + "/server.ready")) << "the peer did not start";
    }
    setenv("DVERBS_PORT", memif(dir, role).c_str(), 1);
    setenv("DVERBS_IP", "10.0.0.1/24", 1);
    auto c = Context::open();
    ASSERT_TRUE(c) << std::strerror(c.error());
    Context ctx = c.take();
    if (server) {
      write_file(dir + "/server.ready", "up\n");
      ASSERT_NO_FATAL_FAILURE(spawn("client"));
    }
    ASSERT_TRUE(link_up(ctx)) << "memif link never came up";
    Pd pd = Pd::alloc(ctx).take();
    Cq cq = Cq::create(ctx, 4096).take();
    QpInit init;
    init.cap = {256, 16, 1, 1, 0};
    Qp qp = Qp::create(pd, cq, cq, init).take();
    std::vector<uint8_t> buf(kMsg);
    for (uint32_t i = 0; i < kMsg; i++) buf[i] = uint8_t(i * 7);
    Mr mr = Mr::reg(pd, buf.data(), buf.size(), kAll).take();
    ASSERT_TRUE(wait_file(dir + "/peer.info")) << "the peer did not publish its QP";
    uint32_t pqpn = 0, rkey = 0;
    uint64_t raddr = 0;
    std::ifstream(dir + "/peer.info") >> pqpn >> rkey >> raddr;
    Timers t;
    // ~67 ms: long enough that a peer descheduled on a loaded 2-core machine is not taken
    // for a dead one; the error comes after retry_cnt + 1 timeouts (~0.5 s). With 7 retries
    // of a full 256-packet window the dead memif link's ring fills, so the port pushes back
    // (the case where the timer must keep running without transmissions).
    t.timeout = 14;
    t.retry_cnt = kRetryCnt;
    ASSERT_EQ(connect_rc(qp, gid_of(0x0a000002), pqpn, 100, 500, t), 0);
    write_file(dir + "/survivor.info", std::to_string(qp.qp_num()) + "\n");
    ASSERT_TRUE(wait_file(dir + "/peer.connected"));

    // Stream WRITEs, kDepth outstanding; kill the peer after 200 successes; keep posting.
    uint64_t posted = 0, completed = 0, successes = 0;
    std::vector<WcStatus> statuses;
    uint64_t retrans_at_kill = 0, retrans_at_error = 0;
    bool killed = false, error_seen = false;
    auto* hq = pmd::hca::to_qp(qp.raw());
    auto post_one = [&] {
      Sge s{reinterpret_cast<uint64_t>(buf.data()), kMsg, mr.lkey()};
      SendWr w{};
      w.wr_id = posted;
      w.opcode = WrOpcode::rdma_write;
      w.sg_list = &s;
      w.num_sge = 1;
      w.send_flags = send_flags::signaled;
      w.wr.rdma.remote_addr = raddr + (posted % kDepth) * kMsg;
      w.wr.rdma.rkey = rkey;
      SendWr* bad;
      ASSERT_EQ(qp.post_send(&w, &bad), 0);
      posted++;
    };
    long spins = 0, spins_since_kill = 0;
    const long kMaxSpins = 2'000'000'000L, kMaxSpinsAfterKill = 400'000'000L;
    uint64_t after_kill_posts = 0;
    while (spins++ < kMaxSpins) {
      while (posted - completed < kDepth && (!killed || after_kill_posts < 32)) {
        ASSERT_NO_FATAL_FAILURE(post_one());
        if (killed) after_kill_posts++;
      }
      Wc wc[16];
      int n = cq.poll(wc, 16);
      ASSERT_GE(n, 0);
      for (int i = 0; i < n; i++) {
        ASSERT_EQ(wc[i].wr_id, completed) << "completions out of order or twice";
        completed++;
        statuses.push_back(wc[i].status);
        if (wc[i].status == WcStatus::success) successes++;
        if (wc[i].status != WcStatus::success && !error_seen) {
          error_seen = true;
          retrans_at_error = hq->retransmits.load();
          ASSERT_TRUE(killed) << "WR " << wc[i].wr_id << " failed before the peer died: "
                              << wc_status_str(wc[i].status) << " after " << successes
                              << " successes";
        }
      }
      if (killed && ++spins_since_kill > kMaxSpinsAfterKill) break;
      if (!killed && successes >= 200) {
        retrans_at_kill = hq->retransmits.load();
        ASSERT_EQ(kill(child, SIGKILL), 0);
        ASSERT_EQ(waitpid(child, nullptr, 0), child);
        child = -1;
        killed = true;
      }
      if (killed && after_kill_posts >= 32 && completed == posted) break;
    }
    ASSERT_TRUE(spins < kMaxSpins && spins_since_kill <= kMaxSpinsAfterKill)
        << "hung: " << completed << " of " << posted << " completed; "
                                << describe(ctx, *hq);
    ASSERT_TRUE(error_seen);
    // successes…, RETRY_EXC_ERR, WR_FLUSH_ERR…
    size_t i = 0;
    while (i < statuses.size() && statuses[i] == WcStatus::success) i++;
    ASSERT_LT(i, statuses.size());
    EXPECT_EQ(statuses[i], WcStatus::retry_exc_err) << wc_status_str(statuses[i]);
    for (size_t k = i + 1; k < statuses.size(); k++)
      ASSERT_EQ(statuses[k], WcStatus::wr_flush_err) << "WR " << k << ": "
                                                     << wc_status_str(statuses[k]);
    EXPECT_GE(successes, 200u);
    EXPECT_LE(retrans_at_error - retrans_at_kill, uint64_t(kRetryCnt))
        << "more retransmissions than the retry budget";
    EXPECT_EQ(qp.state(), QpState::err);
    // A WR posted now flushes at once.
    ASSERT_NO_FATAL_FAILURE(post_one());
    Wc wc;
    ASSERT_TRUE(poll_one(cq, &wc));
    EXPECT_EQ(wc.status, WcStatus::wr_flush_err);
    std::printf("peer death: %lu WRITEs succeeded, %lu flushed, %lu retransmissions after "
                "the kill\n",
                (unsigned long)successes, (unsigned long)(statuses.size() - i - 1),
                (unsigned long)(retrans_at_error - retrans_at_kill));
  }
};

TEST_F(PeerDeath, MemifServerDies) { run("client"); }
TEST_F(PeerDeath, MemifClientDies) { run("server"); }

}  // namespace
}  // namespace dverbs::lifecycle
