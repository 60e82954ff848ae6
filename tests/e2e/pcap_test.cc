// DVERBS_PCAP end to end: RC SEND/SEND_IMM/WRITE/READ/atomics between two QPs on the
// loopback port are captured to a pcapng file, which is then
// - read back by an independent pcapng reader: every RoCE frame has a good IPv4 header
//   checksum and a good ICRC recomputed from IBA Annex A17 (tests/stress/pcapng.h), each
//   frame appears once sent and once received, and the requests carry exactly the
//   expected opcodes and PSNs;
// - decoded by tshark when it is installed (Debian `tshark`): every RoCE frame decodes as
//   InfiniBand with the same opcode, destination QP and PSN, and none is malformed.
// tshark (4.0) does not verify the ICRC (no field or preference for it), hence the
// independent check. Its heuristics for what an InfiniBand payload carries are disabled:
// they misread our payloads and then report the frame malformed — "eth_over_ib" takes a
// 1-byte READ response (0x91 + pad → Ethertype 0x9100, QinQ) for Ethernet over IB, and the
// RPC-over-RDMA heuristic throws on a zero-length SEND. The RoCE headers are dissected
// either way.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "dverbs/dverbs.h"
#include "pcapng.h"
#include "pmd/hca/device.h"

using namespace dverbs;
using dverbs::testing::check_roce_frame;
using dverbs::testing::Dir;
using dverbs::testing::for_each_pcapng_frame;
using dverbs::testing::RoceFrame;

namespace {

const std::string& pcap_path() {
  static const std::string p = "/tmp/dverbs_pcap_test_" + std::to_string(getpid()) + ".pcapng";
  return p;
}

struct Env : ::testing::Environment {
  void SetUp() override {
    setenv("DVERBS_LCORES", "0", 1);
    setenv("DVERBS_PCAP", pcap_path().c_str(), 1);  // read when the device is created
    unsetenv("DVERBS_FAULT");
  }
  // KEEP_PCAP=1 keeps the capture for a look with Wireshark.
  void TearDown() override {
    if (!std::getenv("KEEP_PCAP")) std::remove(pcap_path().c_str());
  }
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

constexpr uint32_t kPsnA = 0xfffffa;  // A's requests cross the 24-bit wrap
constexpr uint32_t kPsnB = 500;

// IB opcodes (RC) of the requests A sends, in order, and of B's responses.
enum : uint8_t {
  kSendFirst = 0, kSendMiddle = 1, kSendLast = 2, kSendOnly = 4, kSendOnlyImm = 5,
  kWriteFirst = 6, kWriteMiddle = 7, kWriteLast = 8, kWriteOnly = 10, kReadRequest = 12,
  kReadRespFirst = 13, kReadRespMiddle = 14, kReadRespLast = 15, kReadRespOnly = 16, kAck = 17,
  kAtomicAck = 18, kCmpSwap = 19, kFetchAdd = 20,
};

struct Captured {
  bool ok = false;
  uint32_t qpn_a = 0, qpn_b = 0;
  // (opcode, psn) of each request packet A sends, in order.
  std::vector<std::pair<uint8_t, uint32_t>> want_requests;
};

uint32_t psn(uint32_t base, uint32_t k) { return (base + k) & 0xffffff; }

Wc wait(Cq& cq) {
  Wc wc{};
  for (long i = 0; i < 100000000L; i++)
    if (cq.poll(&wc, 1) == 1) return wc;
  ADD_FAILURE() << "no completion";
  wc.status = WcStatus::general_err;
  return wc;
}

// Runs the traffic once per process; both tests read the same capture.
const Captured& capture() {
  static Captured c = [] {
    Captured r;
    auto ctx_or = Context::open();
    if (!ctx_or) {
      ADD_FAILURE() << "open: " << std::strerror(ctx_or.error());
      return r;
    }
    Context ctx = ctx_or.take();
    auto& dev = *static_cast<pmd::hca::Device*>(ctx.raw());
    Gid gid{};
    ctx.query_gid(1, 0, &gid);
    {
      Pd pd = Pd::alloc(ctx).take();
      Cq cqa = Cq::create(ctx, 64).take(), cqb = Cq::create(ctx, 64).take();
      QpInit init;
      init.cap = {16, 16, 1, 1, 64};
      Qp a = Qp::create(pd, cqa, cqa, init).take(), b = Qp::create(pd, cqb, cqb, init).take();
      constexpr uint32_t kAll = access::local_write | access::remote_write |
                                access::remote_read | access::remote_atomic;
      if (a.connect(gid, b.qp_num(), kPsnA, kPsnB, Mtu::mtu1024, kAll) ||
          b.connect(gid, a.qp_num(), kPsnB, kPsnA, Mtu::mtu1024, kAll)) {
        ADD_FAILURE() << "connect";
        return r;
      }
      r.qpn_a = a.qp_num();
      r.qpn_b = b.qp_num();
      std::vector<uint8_t> abuf(1 << 16), bbuf(1 << 16);
      for (size_t i = 0; i < abuf.size(); i++) abuf[i] = uint8_t(i * 7 + 1);
      Mr amr = Mr::reg(pd, abuf.data(), abuf.size(), kAll).take();
      Mr bmr = Mr::reg(pd, bbuf.data(), bbuf.size(), kAll).take();
      uint32_t k = 0;  // A's next request PSN offset
      auto op = [&](WrOpcode o, uint32_t len, std::vector<uint8_t> opcodes, bool recv) {
        if (recv) {
          Sge s{reinterpret_cast<uint64_t>(bbuf.data()), 8192, bmr.lkey()};
          RecvWr w{};
          w.sg_list = &s;
          w.num_sge = 1;
          RecvWr* bad;
          EXPECT_EQ(b.post_recv(&w, &bad), 0);
        }
        Sge s{reinterpret_cast<uint64_t>(abuf.data() + 256), len, amr.lkey()};
        SendWr w{};
        w.opcode = o;
        w.sg_list = &s;
        w.num_sge = len ? 1 : 0;
        w.send_flags = send_flags::signaled;
        w.imm_data = 0x01020304;
        w.wr.rdma.remote_addr = reinterpret_cast<uint64_t>(bbuf.data() + 8192);
        w.wr.rdma.rkey = bmr.rkey();
        if (o == WrOpcode::atomic_fetch_and_add || o == WrOpcode::atomic_cmp_and_swp) {
          w.wr.atomic.remote_addr = reinterpret_cast<uint64_t>(bbuf.data() + 64);
          w.wr.atomic.rkey = bmr.rkey();
          w.wr.atomic.compare_add = 0;
          w.wr.atomic.swap = 5;
        }
        SendWr* bad;
        EXPECT_EQ(a.post_send(&w, &bad), 0);
        Wc wc = wait(cqa);
        EXPECT_EQ(wc.status, WcStatus::success) << wc_status_str(wc.status);
        if (recv) {
          EXPECT_EQ(wait(cqb).status, WcStatus::success);
        }
        if (o == WrOpcode::rdma_read) {
          r.want_requests.push_back({kReadRequest, psn(kPsnA, k)});
          k += uint32_t(opcodes.size());  // a READ consumes one PSN per response packet
        } else {
          for (uint8_t x : opcodes) r.want_requests.push_back({x, psn(kPsnA, k++)});
        }
      };
      op(WrOpcode::send, 100, {kSendOnly}, true);
      op(WrOpcode::send, 3000, {kSendFirst, kSendMiddle, kSendLast}, true);
      op(WrOpcode::send_with_imm, 1, {kSendOnlyImm}, true);
      op(WrOpcode::send, 0, {kSendOnly}, true);
      op(WrOpcode::rdma_write, 2500, {kWriteFirst, kWriteMiddle, kWriteLast}, false);
      op(WrOpcode::rdma_write, 16, {kWriteOnly}, false);
      op(WrOpcode::rdma_read, 3000, {kReadRespFirst, kReadRespMiddle, kReadRespLast}, false);
      op(WrOpcode::rdma_read, 1, {kReadRespOnly}, false);
      op(WrOpcode::atomic_fetch_and_add, 8, {kFetchAdd}, false);
      op(WrOpcode::atomic_cmp_and_swp, 8, {kCmpSwap}, false);
      // Let the engine drain its receive queue (inline progress runs in poll) so that every
      // frame sent was also received and captured.
      Wc spare;
      for (int i = 0; i < 10000; i++) {
        EXPECT_EQ(cqa.poll(&spare, 1), 0);
        EXPECT_EQ(cqb.poll(&spare, 1), 0);
      }
      EXPECT_EQ(dev.port().capture_dropped(), 0u);
      // Objects are destroyed here (QPs before MRs, PD, CQs). Each capture burst is one
      // writev() of whole pcapng blocks, so the file is complete without closing the device.
    }
    r.ok = !::testing::Test::HasFailure();
    return r;
  }();
  return c;
}

TEST(PcapCapture, EveryRoceFrameIsWellFormedWithAGoodIcrc) {
  const Captured& c = capture();
  ASSERT_TRUE(c.ok);
  std::string err;
  uint64_t in = 0, out = 0, roce = 0, bad_ip = 0, bad_icrc = 0;
  std::vector<std::pair<uint8_t, uint32_t>> requests;
  std::map<std::vector<uint8_t>, int> balance;  // +1 sent, -1 received: loopback echoes all
  std::set<uint8_t> response_ops;
  ASSERT_TRUE(for_each_pcapng_frame(pcap_path(), [&](const uint8_t* f, uint32_t n, Dir d) {
    (d == Dir::in ? in : out)++;
    balance[std::vector<uint8_t>(f, f + n)] += d == Dir::out ? 1 : -1;
    RoceFrame r = check_roce_frame(f, n);
    if (!r.roce) return;
    roce++;
    bad_ip += !r.ip_csum_ok;
    bad_icrc += !r.icrc_ok;
    if (d == Dir::out && r.dest_qp == c.qpn_b && (r.opcode < kReadRespFirst || r.opcode > kAtomicAck) &&
        (requests.empty() || requests.back() != std::make_pair(r.opcode, r.psn)))
      requests.push_back({r.opcode, r.psn});
    if (d == Dir::out && r.dest_qp == c.qpn_a) response_ops.insert(r.opcode);
  }, &err)) << err;
  EXPECT_GT(roce, 0u);
  EXPECT_EQ(in, out) << "the loopback receives every frame it sends";
  for (auto& [frame, n] : balance) EXPECT_EQ(n, 0) << "a frame of " << frame.size() << " B";
  EXPECT_EQ(bad_ip, 0u);
  EXPECT_EQ(bad_icrc, 0u) << "frames whose ICRC does not match IBA Annex A17";
  EXPECT_EQ(requests, c.want_requests);
  EXPECT_EQ(response_ops, (std::set<uint8_t>{kReadRespFirst, kReadRespMiddle, kReadRespLast,
                                             kReadRespOnly, kAck, kAtomicAck}));
  std::printf("[pcap] %s: %llu frames sent, %llu received, %llu RoCE, all ICRCs good\n",
              pcap_path().c_str(), (unsigned long long)out, (unsigned long long)in,
              (unsigned long long)roce);
}

// The capture's timestamps are wall-clock time: within a day of now (Wireshark shows them
// as the arrival time of each frame).
TEST(PcapCapture, DISABLED_TimestampsAreWallClockTime) {
  const Captured& c = capture();
  ASSERT_TRUE(c.ok);
  const uint64_t now = uint64_t(std::time(nullptr)) * 1000000000ull, day = 86400ull * 1000000000ull;
  uint64_t first = 0, n = 0, bad = 0;
  std::string err;
  ASSERT_TRUE(dverbs::testing::for_each_pcapng_packet(pcap_path(),
      [&](const dverbs::testing::Packet& p) {
        if (!n++) first = p.ts_ns;
        bad += p.ts_ns + day < now || p.ts_ns > now + day;
      }, &err)) << err;
  EXPECT_GT(n, 0u);
  EXPECT_EQ(bad, 0u) << "first frame at " << first / 1000000000ull << " s since the epoch, now "
                     << now / 1000000000ull << " s";
}

std::string run(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *status = pclose(p);
  return out;
}

TEST(PcapCapture, TsharkDecodesEveryRoceFrameAndNoneIsMalformed) {
  int st;
  run("command -v tshark >/dev/null 2>&1", &st);
  if (st != 0) GTEST_SKIP() << "tshark is not installed (Debian package tshark)";
  const Captured& c = capture();
  ASSERT_TRUE(c.ok);
  // InfiniBand payload heuristics of tshark 4.0 (names differ between versions: those this
  // tshark does not know are dropped one by one).
  std::vector<std::string> heur = {"eth_over_ib",  "rpcrdma_infiniband", "nvme_rdma",
                                   "iser_infiniband", "lnet_ib", "smcr_infiniband",
                                   "smb_direct_infiniband", "fc_infiniband", "sdp_infiniband",
                                   "mellanox_eoib"};
  std::string base;
  for (int tries = 0; tries < 16; tries++) {
    base = "tshark -n -r " + pcap_path() + " -d udp.port==4791,infiniband";
    for (auto& h : heur) base += " --disable-heuristic " + h;
    std::string probe = run(base + " -c 1 2>&1 >/dev/null", &st);
    bool dropped = false;
    for (size_t i = 0; i < heur.size(); i++)
      if (probe.find("No such protocol " + heur[i]) != std::string::npos) {
        heur.erase(heur.begin() + long(i));
        dropped = true;
        break;
      }
    if (!dropped) break;
  }
  const std::string errf = pcap_path() + ".err";
  // 1. The fields of every RoCE frame.
  std::string fields = run(base + " -Y udp.port==4791 -T fields -E separator=, -e frame.number"
                                  " -e frame.protocols -e infiniband.bth.opcode"
                                  " -e infiniband.bth.destqp -e infiniband.bth.psn 2>" + errf, &st);
  ASSERT_EQ(st, 0) << "tshark failed: " << run("cat " + errf, &st);
  // 2. Malformed frames and expert warnings or errors.
  std::string malformed =
      run(base + " -Y '_ws.malformed || _ws.expert.severity >= \"Warning\"' 2>" + errf, &st);
  ASSERT_EQ(st, 0) << "tshark failed: " << run("cat " + errf, &st);
  std::remove(errf.c_str());
  EXPECT_EQ(malformed, "") << "tshark reports malformed frames";

  // Our own view of the same frames, in file order.
  std::vector<std::tuple<unsigned, unsigned, unsigned>> ours;
  std::string err;
  ASSERT_TRUE(for_each_pcapng_frame(pcap_path(), [&](const uint8_t* f, uint32_t n, Dir) {
    RoceFrame r = check_roce_frame(f, n);
    if (r.roce) ours.emplace_back(r.opcode, r.dest_qp, r.psn);
  }, &err)) << err;

  std::vector<std::tuple<unsigned, unsigned, unsigned>> theirs;
  std::set<unsigned> opcodes;
  std::istringstream lines(fields);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<std::string> v;
    std::istringstream ls(line);
    std::string x;
    while (std::getline(ls, x, ',')) v.push_back(x);
    ASSERT_EQ(v.size(), 5u) << "not decoded as InfiniBand: " << line;
    EXPECT_NE(v[1].find("infiniband"), std::string::npos) << line;
    unsigned op = unsigned(std::stoul(v[2])), qp = unsigned(std::stoul(v[3], nullptr, 16)),
             psn_v = unsigned(std::stoul(v[4]));
    theirs.emplace_back(op, qp, psn_v);
    opcodes.insert(op);
  }
  EXPECT_EQ(theirs, ours) << "tshark and the independent parser disagree";
  for (unsigned want : {unsigned(kSendOnly), unsigned(kSendFirst), unsigned(kSendMiddle),
                        unsigned(kSendLast), unsigned(kSendOnlyImm), unsigned(kWriteFirst),
                        unsigned(kWriteLast), unsigned(kWriteOnly), unsigned(kReadRequest),
                        unsigned(kReadRespFirst), unsigned(kReadRespOnly), unsigned(kAck),
                        unsigned(kAtomicAck), unsigned(kFetchAdd), unsigned(kCmpSwap)})
    EXPECT_TRUE(opcodes.count(want)) << "tshark saw no frame with opcode " << want;
  std::printf("[pcap] tshark decoded %zu RoCE frames (%zu opcodes), none malformed\n",
              theirs.size(), opcodes.size());
}

}  // namespace
