// Port: the built-in loopback (bytes in = bytes out, per-queue loops), MTU and MAC choice,
// TX drop accounting, receive-side faults, pcapng capture readable by tshark, and one-line
// errors for bad devargs.
#include "pmd/net/port.h"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <rte_eal.h>
#include <rte_ethdev.h>

#include "pmd/net/eal.h"

namespace dverbs::pmd::net {
namespace {

cpu_set_t affinity_before_eal;

bool eal() {
  static int rc = [] {
    sched_getaffinity(0, sizeof(affinity_before_eal), &affinity_before_eal);
    std::string err;
    int r = eal_init(Config{}, &err);
    if (r) std::fprintf(stderr, "%s\n", err.c_str());
    return r;
  }();
  return rc == 0;
}

class PortTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(eal()); }

  static std::unique_ptr<Port> open(const Config& cfg, uint16_t queues = 1) {
    std::string err;
    auto p = Port::open(cfg, queues, &err);
    EXPECT_TRUE(p) << err;
    return p;
  }

  // An Ethernet/IPv4/UDP frame to port 4791 of `len` bytes, payload filled from seed.
  static rte_mbuf* udp_frame(Port& port, uint16_t len, uint8_t seed) {
    rte_mbuf* m = port.alloc_mbuf();
    auto* p = m ? reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, len)) : nullptr;
    if (!p) {
      ADD_FAILURE() << "no mbuf for a " << len << "-byte frame";
      return m;
    }
    std::memset(p, 0, len);
    std::memset(p, 0xff, 6);
    std::memcpy(p + 6, port.mac(), 6);
    p[12] = 0x08;  // IPv4
    uint8_t* ip = p + 14;
    const uint16_t ip_len = uint16_t(len - 14);
    ip[0] = 0x45;
    ip[2] = uint8_t(ip_len >> 8);
    ip[3] = uint8_t(ip_len);
    ip[8] = 64;
    ip[9] = 17;  // UDP
    const uint8_t src[4] = {10, 0, 0, 1}, dst[4] = {10, 0, 0, 2};
    std::memcpy(ip + 12, src, 4);
    std::memcpy(ip + 16, dst, 4);
    uint8_t* udp = ip + 20;
    udp[0] = 0xc0;
    udp[2] = 0x12;
    udp[3] = 0xb7;  // 4791
    const uint16_t udp_len = uint16_t(ip_len - 20);
    udp[4] = uint8_t(udp_len >> 8);
    udp[5] = uint8_t(udp_len);
    for (uint16_t i = 42; i < len; ++i) p[i] = uint8_t(seed + i);
    return m;
  }

  static std::vector<uint8_t> bytes(const rte_mbuf* m) {
    std::vector<uint8_t> v(rte_pktmbuf_pkt_len(m));
    const void* d = rte_pktmbuf_read(m, 0, uint32_t(v.size()), v.data());
    if (d != v.data()) std::memcpy(v.data(), d, v.size());
    return v;
  }

  // Echoes frames until the client has had `want` back and hung up (closing earlier could
  // drop the last echo from the shared ring before the client reads it); ~10 s at most if
  // nothing happens. Returns how many were echoed.
  static uint32_t echo_until_hangup(Port& port, uint32_t want) {
    uint32_t echoed = 0;
    bool was_up = false;
    for (int i = 0; i < 100'000; ++i) {
      rte_mbuf* r[8];
      const uint16_t n = port.rx_burst(0, r, 8);
      if (n) echoed += port.tx_burst(0, r, n);
      const bool up = port.link_up();
      if (was_up && !up && echoed >= want) break;
      was_up |= up;
      if (!n) usleep(100);
    }
    return echoed;
  }

  // Sends a frame of `len` bytes and expects it back unchanged from the echoing peer.
  static void expect_echo(Port& port, uint16_t len) {
    rte_mbuf* m = udp_frame(port, len, uint8_t(len));
    const std::vector<uint8_t> sent = bytes(m);
    ASSERT_EQ(port.tx_burst(0, &m, 1), 1);
    rte_mbuf* r = nullptr;
    for (int i = 0; i < 200000 && !port.rx_burst(0, &r, 1); ++i) usleep(50);
    ASSERT_NE(r, nullptr) << "no echo of " << len;
    EXPECT_EQ(bytes(r), sent);
    rte_pktmbuf_free(r);
  }

  // Reaps the helper process and expects it to have passed; clears `child`.
  static void expect_exit_0(pid_t& child) {
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    child = -1;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }

  static std::string tmp_path(const char* name) {
    return "/tmp/dverbs-port-test-" + std::to_string(getpid()) + "-" + name;
  }
};

// eal.cc has no test file of its own: its effects are checked here, where ports need it.
TEST_F(PortTest, EalKeepsCallerAffinityLeavesNoFilesAndIsIdempotent) {
  cpu_set_t now;
  ASSERT_EQ(sched_getaffinity(0, sizeof(now), &now), 0);
  EXPECT_TRUE(CPU_EQUAL(&now, &affinity_before_eal)) << "rte_eal_init pinned the caller";
  EXPECT_TRUE(eal_ready());
  EXPECT_NE(access(rte_eal_get_runtime_dir(), F_OK), 0) << rte_eal_get_runtime_dir();
  Config other;
  other.eal_args = "--no-such-option";
  std::string err;
  EXPECT_EQ(eal_init(other, &err), 0);  // the first result, whatever the arguments
  EXPECT_EQ(register_thread(), 0);      // the main lcore is registered already
}

TEST_F(PortTest, LoopbackReturnsTheSameBytes) {
  auto port = open(Config{});
  ASSERT_TRUE(port);
  EXPECT_TRUE(port->is_loopback());
  EXPECT_TRUE(port->link_up());
  EXPECT_EQ(port->nb_queues(), 1);
  EXPECT_GE(port->mtu(), 4096u + 64);  // a 4096 path MTU fits
  EXPECT_EQ(port->ip(), 0x0a000001u);
  const uint8_t derived[6] = {0x02, 0x00, 10, 0, 0, 1};  // locally administered, from the IP
  EXPECT_EQ(std::memcmp(port->mac(), derived, 6), 0);

  for (uint16_t len : {uint16_t(60), uint16_t(1514), uint16_t(port->mtu() + 14)}) {
    rte_mbuf* m = udp_frame(*port, len, uint8_t(len));
    const std::vector<uint8_t> sent = bytes(m);
    ASSERT_EQ(port->tx_burst(0, &m, 1), 1);
    rte_mbuf* r[4];
    ASSERT_EQ(port->rx_burst(0, r, 4), 1);
    EXPECT_EQ(r[0]->nb_segs, 1) << "a max-MTU frame fits one mbuf";
    EXPECT_EQ(bytes(r[0]), sent);
    rte_pktmbuf_free(r[0]);
  }
  EXPECT_EQ(port->stats().tx_frames.load(), 3u);
  EXPECT_EQ(port->stats().rx_frames.load(), 3u);
}

TEST_F(PortTest, ConfiguredMacIsUsed) {
  Config cfg;
  const uint8_t mac[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
  std::memcpy(cfg.mac, mac, 6);
  cfg.mac_set = true;
  auto port = open(cfg);
  ASSERT_TRUE(port);
  EXPECT_EQ(std::memcmp(port->mac(), mac, 6), 0);
}

TEST_F(PortTest, LoopbackQueuesAreSeparateLoops) {
  auto port = open(Config{}, 4);
  ASSERT_TRUE(port);
  ASSERT_EQ(port->nb_queues(), 4);
  for (uint16_t q = 0; q < 4; ++q) {
    rte_mbuf* m = udp_frame(*port, 100, uint8_t(q));
    ASSERT_EQ(port->tx_burst(q, &m, 1), 1);
    rte_mbuf* r[4];
    for (uint16_t other = 0; other < 4; ++other) {
      if (other != q) {
        EXPECT_EQ(port->rx_burst(other, r, 4), 0) << q << "->" << other;
      }
    }
    ASSERT_EQ(port->rx_burst(q, r, 4), 1);
    EXPECT_EQ(bytes(r[0])[50], uint8_t(q + 50));
    rte_pktmbuf_free(r[0]);
  }
}

TEST_F(PortTest, UnsentFramesAreFreedAndCounted) {
  auto port = open(Config{});
  ASSERT_TRUE(port);
  rte_mempool* pool = port->pool();
  const unsigned avail = rte_mempool_avail_count(pool);
  constexpr uint16_t kBurst = 32;
  uint32_t sent = 0, offered = 0;
  for (int b = 0; b < 40; ++b) {  // 1280 frames into a 1024-entry loop nobody drains
    rte_mbuf* m[kBurst];
    for (auto& x : m) x = udp_frame(*port, 64, 0);
    sent += port->tx_burst(0, m, kBurst);
    offered += kBurst;
  }
  EXPECT_LT(sent, offered);
  EXPECT_EQ(port->stats().tx_dropped.load(), offered - sent);
  EXPECT_EQ(port->stats().tx_frames.load(), sent);
  rte_mbuf* r[64];
  uint32_t got = 0;
  while (uint16_t n = port->rx_burst(0, r, 64)) {
    got += n;
    rte_pktmbuf_free_bulk(r, n);
  }
  EXPECT_EQ(got, sent);
  // Per-lcore cache may keep some; everything is either available or cached.
  EXPECT_GE(rte_mempool_avail_count(pool) + Port::kPoolCache, avail);
}

TEST_F(PortTest, FaultInjectionOnReceive) {
  Config cfg;
  cfg.fault.loss = 1.0;
  auto port = open(cfg);
  ASSERT_TRUE(port);
  rte_mbuf* m[8];
  for (auto& x : m) x = udp_frame(*port, 64, 0);
  ASSERT_EQ(port->tx_burst(0, m, 8), 8);
  rte_mbuf* r[8];
  EXPECT_EQ(port->rx_burst(0, r, 8), 0);
  EXPECT_EQ(port->stats().fault_lost.load(), 8u);
  EXPECT_EQ(port->stats().rx_frames.load(), 8u);

  // Reorder: a frame held back comes out on the next call even if nothing else arrives.
  Config rcfg;
  rcfg.fault.reorder = 1.0;
  port.reset();
  port = open(rcfg);
  ASSERT_TRUE(port);
  rte_mbuf* one = udp_frame(*port, 64, 1);
  ASSERT_EQ(port->tx_burst(0, &one, 1), 1);
  EXPECT_EQ(port->rx_burst(0, r, 8), 0);
  ASSERT_EQ(port->rx_burst(0, r, 8), 1);
  EXPECT_EQ(r[0], one);
  rte_pktmbuf_free(r[0]);
  EXPECT_EQ(port->stats().fault_reordered.load(), 1u);
}

TEST_F(PortTest, PcapCapturesBothDirections) {
  Config cfg;
  cfg.pcap = tmp_path("cap.pcapng");
  {
    auto port = open(cfg);
    ASSERT_TRUE(port);
    for (int i = 0; i < 3; ++i) {
      rte_mbuf* m = udp_frame(*port, uint16_t(100 + i), uint8_t(i));
      ASSERT_EQ(port->tx_burst(0, &m, 1), 1);
    }
    rte_mbuf* r[8];
    ASSERT_EQ(port->rx_burst(0, r, 8), 3);
    rte_pktmbuf_free_bulk(r, 3);
    EXPECT_EQ(port->capture_dropped(), 0u);
  }
  std::ifstream f(cfg.pcap, std::ios::binary);
  ASSERT_TRUE(f);
  uint8_t magic[4] = {};
  f.read(reinterpret_cast<char*>(magic), 4);
  EXPECT_EQ(magic[0], 0x0a);  // pcapng section header block 0x0A0D0D0A
  EXPECT_EQ(magic[1], 0x0d);

  if (std::system("command -v tshark >/dev/null 2>&1") != 0) {
    std::remove(cfg.pcap.c_str());
    GTEST_SKIP() << "tshark not installed: file format checked by magic only";
  }
  const std::string cmd =
      "tshark -r " + cfg.pcap + " -T fields -e frame.len -e udp.dstport 2>/dev/null";
  FILE* out = popen(cmd.c_str(), "r");
  ASSERT_TRUE(out);
  std::vector<std::string> lines;
  char buf[256];
  while (std::fgets(buf, sizeof buf, out)) lines.emplace_back(buf);
  EXPECT_EQ(pclose(out), 0);
  ASSERT_EQ(lines.size(), 6u);  // 3 out + 3 in
  EXPECT_EQ(lines[0], "100\t4791\n");
  EXPECT_EQ(lines[5], "102\t4791\n");
  std::remove(cfg.pcap.c_str());
}

TEST_F(PortTest, PcapErrorIsOneLine) {
  Config cfg;
  cfg.pcap = "/nonexistent-dir/x.pcapng";
  std::string err;
  EXPECT_FALSE(Port::open(cfg, 1, &err));
  EXPECT_EQ(err.rfind("DVERBS_PCAP: cannot capture to '/nonexistent-dir/x.pcapng': ", 0), 0u)
      << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);
}

TEST_F(PortTest, BadDevargsIsOneLine) {
  Config cfg;
  cfg.port = "net_bogus0,foo=1";
  std::string err;
  EXPECT_FALSE(Port::open(cfg, 1, &err));
  EXPECT_EQ(err.rfind("DVERBS_PORT: cannot probe 'net_bogus0,foo=1': ", 0), 0u) << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);
  std::printf("%s\n", err.c_str());

  cfg.port = "net_null0,bogus_arg=1";
  EXPECT_FALSE(Port::open(cfg, 1, &err));
  EXPECT_EQ(err.rfind("DVERBS_PORT: cannot probe 'net_null0,bogus_arg=1': ", 0), 0u) << err;
  std::printf("%s\n", err.c_str());
}

TEST_F(PortTest, NullDeviceOpensAndCloses) {
  Config cfg;
  cfg.port = "net_null0";
  auto port = open(cfg, 2);
  ASSERT_TRUE(port);
  EXPECT_FALSE(port->is_loopback());
  EXPECT_EQ(port->name(), "net_null0");
  EXPECT_EQ(port->nb_queues(), 2);
  EXPECT_GE(port->mtu(), 4096u + 64);
  rte_mbuf* m = udp_frame(*port, 64, 0);
  EXPECT_EQ(port->tx_burst(0, &m, 1), 1);
  port.reset();
  // The device was ours: it is gone, and can be probed again.
  uint16_t id;
  EXPECT_NE(rte_eth_dev_get_port_by_name("net_null0", &id), 0);
  port = open(cfg);
  EXPECT_TRUE(port);
}

// memif needs a peer process. The peer is this executable again, running only the helper
// test below with DVERBS_TEST_MEMIF_ECHO=<socket>: a memif server that echoes frames back.
std::string memif_devargs(const std::string& sock, const char* role) {
  return "net_memif0,role=" + std::string(role) + ",socket=" + sock + ",socket-abstract=no";
}

TEST_F(PortTest, MemifEchoServerHelper) {
  const char* sock = std::getenv("DVERBS_TEST_MEMIF_ECHO");
  if (!sock) GTEST_SKIP() << "helper for MemifBetweenTwoProcesses";
  Config cfg;
  cfg.port = memif_devargs(sock, "server");
  auto port = open(cfg);
  ASSERT_TRUE(port);
  // Tell the client only now: a 22.11 memif server rejects ("ID not found") a client that
  // connects between probe and configure, and that client never retries.
  std::ofstream(std::string(sock) + ".ready") << "up\n";
  EXPECT_EQ(echo_until_hangup(*port, 3), 3u);
}

TEST_F(PortTest, MemifClientWithoutServerIsOneLine) {
  Config cfg;
  cfg.port = memif_devargs(tmp_path("nobody.sock"), "client");
  std::string err;
  EXPECT_FALSE(Port::open(cfg, 1, &err));
  // DPDK 22.11's memif client connects when the port starts: no server, no port.
  EXPECT_EQ(err.rfind("DVERBS_PORT: cannot start '" + cfg.port + "': Failed to connect socket", 0),
            0u)
      << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);
}

TEST_F(PortTest, MemifServerWithoutClientIsLinkDown) {
  Config cfg;
  cfg.port = memif_devargs(tmp_path("lonely.sock"), "server");
  auto port = open(cfg);
  ASSERT_TRUE(port);
  EXPECT_FALSE(port->link_up());
  EXPECT_EQ(port->mtu(), Port::kWantMtu);  // memif carries jumbo frames in chained buffers
  rte_mbuf* r[4];
  EXPECT_EQ(port->rx_burst(0, r, 4), 0);
  rte_mbuf* m = udp_frame(*port, 64, 0);
  EXPECT_EQ(port->tx_burst(0, &m, 1), 0);  // no peer: freed and counted
  EXPECT_EQ(port->stats().tx_dropped.load(), 1u);
}

TEST_F(PortTest, MemifBetweenTwoProcesses) {
  const std::string sock = tmp_path("echo.sock"), ready = sock + ".ready";
  pid_t child = -1;
  struct Cleanup {  // also when an assertion returns early
    const std::string& sock;
    const std::string& ready;
    pid_t& child;
    ~Cleanup() {
      if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
      }
      std::remove(sock.c_str());
      std::remove(ready.c_str());
    }
  } cleanup{sock, ready, child};
  std::remove(sock.c_str());
  std::remove(ready.c_str());
  child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // exec at once: a forked DPDK process must not touch the EAL
    setenv("DVERBS_TEST_MEMIF_ECHO", sock.c_str(), 1);
    execl("/proc/self/exe", "net_port_test", "--gtest_filter=PortTest.MemifEchoServerHelper",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  Config cfg;
  cfg.port = memif_devargs(sock, "client");
  std::unique_ptr<Port> port;
  std::string err;
  for (int i = 0; i < 20000 && access(ready.c_str(), F_OK) != 0; ++i) usleep(500);
  port = Port::open(cfg, 1, &err);
  ASSERT_TRUE(port) << err;
  for (int i = 0; i < 200000 && !port->link_up(); ++i) usleep(50);
  ASSERT_TRUE(port->link_up());

  // Jumbo frames cross in one piece, whatever memif's 2 KiB buffers.
  for (uint16_t len : {uint16_t(64), uint16_t(1514), uint16_t(Port::kWantMtu + 14)}) {
    expect_echo(*port, len);
    if (HasFatalFailure()) return;
  }
  port.reset();
  expect_exit_0(child);
}

// A memif server probed but not started yet (the listening socket exists from the probe)
// refuses a client, and DPDK's client connects only when its port starts. The helper is
// such a server: it probes, says so, starts its port once told to, then echoes a frame.
TEST_F(PortTest, MemifLateServerHelper) {
  const char* sock = std::getenv("DVERBS_TEST_MEMIF_LATE");
  if (!sock) GTEST_SKIP() << "helper for MemifClientRefusedByAServerNotStartedConnectsAgain";
  Config cfg;
  cfg.port = memif_devargs(sock, "server");
  // Port::open probes the same devargs (with the bsize it adds) and finds it probed.
  {
    DpdkLogCapture quiet;  // memif's "Failed to register mp action callback" (no mp)
    ASSERT_GE(rte_dev_probe((cfg.port + ",bsize=8192").c_str()), 0);
    quiet.discard();
  }
  std::ofstream(std::string(sock) + ".probed") << "probed\n";
  for (int i = 0; i < 40000 && access((std::string(sock) + ".go").c_str(), F_OK) != 0; ++i)
    usleep(500);
  auto port = open(cfg);
  ASSERT_TRUE(port);
  EXPECT_EQ(echo_until_hangup(*port, 1), 1u);
}

TEST_F(PortTest, MemifClientRefusedByAServerNotStartedConnectsAgain) {
  const std::string sock = tmp_path("late.sock");
  const std::string probed = sock + ".probed", go = sock + ".go";
  pid_t child = -1;
  struct Cleanup {
    std::vector<std::string> files;
    pid_t& child;
    ~Cleanup() {
      if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
      }
      for (const std::string& f : files) std::remove(f.c_str());
    }
  } cleanup{{sock, probed, go}, child};
  for (const std::string& f : cleanup.files) std::remove(f.c_str());
  child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setenv("DVERBS_TEST_MEMIF_LATE", sock.c_str(), 1);
    execl("/proc/self/exe", "net_port_test", "--gtest_filter=PortTest.MemifLateServerHelper",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 20000 && access(probed.c_str(), F_OK) != 0; ++i) usleep(500);
  ASSERT_EQ(access(probed.c_str(), F_OK), 0) << "the server never probed";
  Config cfg;
  cfg.port = memif_devargs(sock, "client");
  std::string err;
  auto port = Port::open(cfg, 1, &err);
  ASSERT_TRUE(port) << err;  // connected, then refused: the server's port is not started
  EXPECT_FALSE(port->link_up());
  EXPECT_TRUE(port->may_retry_connect());
  std::ofstream(go) << "go\n";
  // What the device watchdog does once a second while the link has never been up.
  for (int i = 0; i < 100 && !port->link_up(); ++i) {
    for (int k = 0; k < 100 && !port->link_up(); ++k) usleep(1000);
    if (port->link_up() || !port->may_retry_connect()) break;
    port->set_restarting(true);
    rte_mbuf* r[1];
    EXPECT_EQ(port->rx_burst(0, r, 1), 0);  // paused: no burst reaches the stopped port
    port->retry_connect();
    port->set_restarting(false);
  }
  ASSERT_TRUE(port->link_up());
  EXPECT_FALSE(port->may_retry_connect());
  expect_echo(*port, 64);
  if (HasFatalFailure()) return;
  port.reset();
  expect_exit_0(child);
}

TEST_F(PortTest, OpenCloseManyTimes) {
  for (int i = 0; i < 20; ++i) {
    auto port = open(Config{}, 2);
    ASSERT_TRUE(port);
    rte_mbuf* m = udp_frame(*port, 64, 0);
    ASSERT_EQ(port->tx_burst(1, &m, 1), 1);  // left in the loop: the destructor drains it
  }
}

}  // namespace
}  // namespace dverbs::pmd::net
