// raw_pair — two processes exchange raw Ethernet frames through raw packet QPs and a flow
// rule, over whatever port each one's dverbs has (memif in the e2e suite), embedded or as
// clients of their own dverbsd (tests/e2e/ibverbs_pair.sh). Built against the system
// <infiniband/verbs.h>: a stock program's view.
//
//   raw_pair -p PORT          the receiver: a raw packet QP, one rule (its MAC, UDP
//                             destination port PORT), then TCP PORT for the sender
//   raw_pair -p PORT HOST     the sender: learns the receiver's MAC and IPv4 address over
//                             TCP, sends kFrames UDP frames to port PORT and as many to
//                             PORT + 1, alternating, kWindow at a time; after each window
//                             it waits for the receiver to report what it got over TCP
//
// The receiver checks every frame: in order, to PORT only, byte for byte as built (the
// checksums filled by IBV_SEND_IP_CSUM, verified). Both print "raw_pair: N frames" on
// success and exit 0; any failure exits 1 with one line saying why.
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr int kFrames = 128, kWindow = 16, kSlot = 2048;
constexpr size_t kPayload = 100, kLen = 14 + 20 + 8 + kPayload;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "raw_pair: %s (%s)\n", what, std::strerror(errno));
  std::exit(1);
}

struct Verbs {
  ibv_context* ctx = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* cq = nullptr;
  ibv_qp* qp = nullptr;
  ibv_mr* mr = nullptr;
  std::vector<uint8_t> buf = std::vector<uint8_t>(size_t(kWindow) * 2 * kSlot);
  uint8_t mac[6] = {};
  uint32_t ip_be = 0;

  Verbs() {
    int n = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (!list || n < 1) die("no device");
    ctx = ibv_open_device(list[0]);
    ibv_free_device_list(list);
    if (!ctx) die("ibv_open_device");
    ibv_device_attr da;
    ibv_gid gid;
    if (ibv_query_device(ctx, &da) || ibv_query_gid(ctx, 1, 0, &gid)) die("query");
    uint8_t g[8];  // the node GUID is the port MAC's EUI-64
    std::memcpy(g, &da.node_guid, 8);
    const uint8_t m[6] = {uint8_t(g[0] ^ 2), g[1], g[2], g[5], g[6], g[7]};
    std::memcpy(mac, m, 6);
    std::memcpy(&ip_be, gid.raw + 12, 4);
    pd = ibv_alloc_pd(ctx);
    cq = pd ? ibv_create_cq(ctx, 4 * kWindow, nullptr, nullptr, 0) : nullptr;
    mr = cq ? ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE) : nullptr;
    if (!mr) die("pd/cq/mr");
    ibv_qp_init_attr init{};
    init.send_cq = init.recv_cq = cq;
    init.qp_type = IBV_QPT_RAW_PACKET;
    init.cap.max_send_wr = init.cap.max_recv_wr = 2 * kWindow;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    qp = ibv_create_qp(pd, &init);
    if (!qp) die("ibv_create_qp(IBV_QPT_RAW_PACKET)");
    ibv_qp_attr at{};
    at.qp_state = IBV_QPS_INIT;
    at.port_num = 1;
    if (ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_PORT)) die("INIT");
    at.qp_state = IBV_QPS_RTR;
    if (ibv_modify_qp(qp, &at, IBV_QP_STATE)) die("RTR");
    at.qp_state = IBV_QPS_RTS;
    if (ibv_modify_qp(qp, &at, IBV_QP_STATE)) die("RTS");
  }
  ~Verbs() {
    ibv_destroy_qp(qp);
    ibv_dereg_mr(mr);
    ibv_destroy_cq(cq);
    ibv_dealloc_pd(pd);
    ibv_close_device(ctx);
  }
  uint8_t* slot(int i) { return buf.data() + size_t(i) * kSlot; }
  void post_recv(int i) {
    ibv_sge s{uint64_t(uintptr_t(slot(i))), kSlot, mr->lkey};
    ibv_recv_wr wr{}, *bad;
    wr.wr_id = uint64_t(i);
    wr.sg_list = &s;
    wr.num_sge = 1;
    if (ibv_post_recv(qp, &wr, &bad)) die("ibv_post_recv");
  }
  ibv_wc poll() {
    ibv_wc wc{};
    for (long spin = 0;; spin++) {
      int n = ibv_poll_cq(cq, 1, &wc);
      if (n < 0) die("ibv_poll_cq");
      if (n) break;
      if (spin > 2000000000L) die("no completion");
    }
    if (wc.status != IBV_WC_SUCCESS) {
      std::fprintf(stderr, "raw_pair: completion %s\n", ibv_wc_status_str(wc.status));
      std::exit(1);
    }
    return wc;
  }
};

// Frame `seq` from the sender to (mac, ip_be), UDP destination `dport`.
std::vector<uint8_t> build(const uint8_t mac[6], uint32_t ip_be, uint16_t dport, int seq) {
  std::vector<uint8_t> f(kLen, 0);
  std::memcpy(f.data(), mac, 6);
  const uint8_t src[6] = {0x02, 0x00, 0x5e, 0x00, 0x53, 0x01};
  std::memcpy(f.data() + 6, src, 6);
  f[12] = 0x08;
  uint8_t* ip = f.data() + 14;
  ip[0] = 0x45;
  ip[2] = uint8_t((kLen - 14) >> 8);
  ip[3] = uint8_t(kLen - 14);
  ip[8] = 64;
  ip[9] = 17;
  const uint32_t src_ip = htonl(0xc0000201);
  std::memcpy(ip + 12, &src_ip, 4);
  std::memcpy(ip + 16, &ip_be, 4);
  uint8_t* udp = ip + 20;
  udp[0] = 0x9c;
  udp[2] = uint8_t(dport >> 8);
  udp[3] = uint8_t(dport);
  udp[5] = uint8_t(8 + kPayload);
  for (size_t i = 0; i < kPayload; i++) udp[8 + i] = uint8_t(seq * 7 + int(i));
  return f;
}

uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return uint16_t(s);
}
uint32_t sum(const uint8_t* p, size_t n, uint32_t s = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) s += uint32_t(p[i] << 8 | p[i + 1]);
  if (n & 1) s += uint32_t(p[n - 1] << 8);
  return s;
}

// The received frame against what was built: checksums valid, the rest identical.
bool same(std::vector<uint8_t> got, const std::vector<uint8_t>& want) {
  if (fold(sum(got.data() + 14, 20)) != 0xffff) return false;
  uint8_t ph[12] = {};
  std::memcpy(ph, got.data() + 26, 8);
  ph[9] = 17;
  ph[11] = uint8_t(8 + kPayload);
  if (fold(sum(got.data() + 34, 8 + kPayload, sum(ph, 12))) != 0xffff) return false;
  got[24] = got[25] = got[40] = got[41] = 0;
  return got == want;
}

void full_write(int fd, const void* p, size_t n) {
  if (::send(fd, p, n, MSG_NOSIGNAL) != ssize_t(n)) die("tcp send");
}
void full_read(int fd, void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = ::recv(fd, b, n, 0);
    if (r <= 0) die("tcp recv");
    b += r;
    n -= size_t(r);
  }
}

int receiver(uint16_t port) {
  Verbs v;
  for (int i = 0; i < 2 * kWindow; i++) v.post_recv(i);
  struct {
    ibv_flow_attr attr;
    ibv_flow_spec_eth eth;
    ibv_flow_spec_tcp_udp udp;
  } rule{};
  rule.attr.type = IBV_FLOW_ATTR_NORMAL;
  rule.attr.size = sizeof rule;
  rule.attr.num_of_specs = 2;
  rule.attr.port = 1;
  rule.eth.type = IBV_FLOW_SPEC_ETH;
  rule.eth.size = sizeof rule.eth;
  std::memcpy(rule.eth.val.dst_mac, v.mac, 6);
  std::memset(rule.eth.mask.dst_mac, 0xff, 6);
  rule.udp.type = IBV_FLOW_SPEC_UDP;
  rule.udp.size = sizeof rule.udp;
  rule.udp.val.dst_port = htons(port);
  rule.udp.mask.dst_port = 0xffff;
  ibv_flow* flow = ibv_create_flow(v.qp, &rule.attr);
  if (!flow) die("ibv_create_flow");

  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) || ::listen(ls, 1)) die("listen");
  int fd = ::accept(ls, nullptr, nullptr);
  if (fd < 0) die("accept");
  full_write(fd, v.mac, 6);
  full_write(fd, &v.ip_be, 4);
  for (int seq = 0; seq < kFrames; seq++) {
    ibv_wc wc = v.poll();
    if (wc.opcode != IBV_WC_RECV || wc.byte_len != kLen) {
      std::fprintf(stderr, "raw_pair: frame %d: opcode %d, %u bytes\n", seq, int(wc.opcode),
                   wc.byte_len);
      return 1;
    }
    const int i = int(wc.wr_id);
    if (!same(std::vector<uint8_t>(v.slot(i), v.slot(i) + kLen),
              build(v.mac, v.ip_be, port, seq))) {
      std::fprintf(stderr, "raw_pair: frame %d is not the one sent (or a checksum is wrong)\n",
                   seq);
      return 1;
    }
    v.post_recv(i);
    if ((seq + 1) % kWindow == 0) full_write(fd, &seq, sizeof seq);  // window received
  }
  if (ibv_destroy_flow(flow)) die("ibv_destroy_flow");
  ::close(fd);
  ::close(ls);
  std::printf("raw_pair: %d frames\n", kFrames);
  return 0;
}

int sender(uint16_t port, const char* host) {
  Verbs v;
  addrinfo hints{}, *ai = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  char ps[8];
  std::snprintf(ps, sizeof ps, "%u", port);
  if (getaddrinfo(host, ps, &hints, &ai) || !ai) die("getaddrinfo");
  // The receiver listens once its QP and rule exist: try for up to 20 s.
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 200; attempt++) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
    ::close(fd);
    fd = -1;
    ::usleep(100000);
  }
  freeaddrinfo(ai);
  if (fd < 0) die("connect");
  uint8_t mac[6];
  uint32_t ip_be;
  full_read(fd, mac, 6);
  full_read(fd, &ip_be, 4);
  for (int seq = 0; seq < kFrames; seq++) {
    // A frame the rule does not take (UDP port + 1) before each one it does.
    for (uint16_t dport : {uint16_t(port + 1), port}) {
      const auto f = build(mac, ip_be, dport, seq);
      uint8_t* s = v.slot(seq % kWindow);
      std::memcpy(s, f.data(), f.size());
      ibv_sge sg{uint64_t(uintptr_t(s)), uint32_t(f.size()), v.mr->lkey};
      ibv_send_wr wr{}, *bad;
      wr.sg_list = &sg;
      wr.num_sge = 1;
      wr.opcode = IBV_WR_SEND;
      wr.send_flags = IBV_SEND_SIGNALED | IBV_SEND_IP_CSUM;
      if (ibv_post_send(v.qp, &wr, &bad)) die("ibv_post_send");
      if (v.poll().opcode != IBV_WC_SEND) die("send completion");
    }
    if ((seq + 1) % kWindow == 0) {
      int got;
      full_read(fd, &got, sizeof got);
      if (got != seq) die("receiver out of step");
    }
  }
  ::close(fd);
  std::printf("raw_pair: %d frames\n", kFrames);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0;
  const char* host = nullptr;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "-p") == 0 && i + 1 < argc)
      port = std::atoi(argv[++i]);
    else
      host = argv[i];
  }
  if (port <= 0 || port > 65534) {
    std::fprintf(stderr, "usage: raw_pair -p PORT [HOST]\n");
    return 2;
  }
  return host ? sender(uint16_t(port), host) : receiver(uint16_t(port));
}
