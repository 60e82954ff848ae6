// The CM protocol (lib/cm) through its C interface, both sides in this process on the
// loopback port: the CM MADs really go out of one GSI QP and into the same one, so every
// state transition below is the wire protocol's, not a shortcut. Events are what the
// consumer (librdmacm) would see.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cm/dvcm.h"
#include "cm/internal.h"
#include "cm/mad.h"
#include "dverbs/types.h"
#include "midlayer/core.h"

using namespace dverbs;

namespace {

struct Env : ::testing::Environment {
  void SetUp() override { setenv("DVERBS_LCORES", "0", 0); }
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

uint32_t own_ip() {
  mid::probe_drivers();
  mid::Device* d[4];
  EXPECT_GE(mid::list_devices(d, 4), 1);
  Gid g{};
  EXPECT_EQ(mid::query_gid(d[0], 1, 0, &g), 0);
  return uint32_t(g.raw[12]) << 24 | uint32_t(g.raw[13]) << 16 | uint32_t(g.raw[14]) << 8 |
         g.raw[15];
}

sockaddr_in v4(uint32_t ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(ip);
  a.sin_port = htons(port);
  return a;
}
const sockaddr* sa(const sockaddr_in& a) { return reinterpret_cast<const sockaddr*>(&a); }

// Waits for the next event on `ch` (10 s at most) and checks its type.
dvcm_event next(dvcm_channel* ch, int type, int timeout_ms = 30000) {
  dvcm_event e{};
  e.type = -1;
  pollfd p{dvcm_channel_fd(ch), POLLIN, 0};
  if (poll(&p, 1, timeout_ms) != 1) {
    ADD_FAILURE() << "no event, expected " << type;
    return e;
  }
  EXPECT_EQ(dvcm_get_event(ch, &e), 0);
  EXPECT_EQ(e.type, type) << "status " << e.status;
  return e;
}

bool quiet(dvcm_channel* ch, int ms) {
  pollfd p{dvcm_channel_fd(ch), POLLIN, 0};
  return poll(&p, 1, ms) == 0;
}

struct Side {
  dvcm_channel* ch = nullptr;
  Side() { EXPECT_EQ(dvcm_channel_create(&ch), 0); }
  ~Side() { EXPECT_EQ(dvcm_channel_destroy(ch), 0); }
  dvcm_id* id(int ps = DVCM_PS_TCP, int qpt = 2) {
    dvcm_id* i = nullptr;
    EXPECT_EQ(dvcm_create_id(ch, ps, qpt, this, &i), 0);
    return i;
  }
};

dvcm_conn_param param(uint32_t qpn, uint32_t psn, const char* pd = nullptr) {
  dvcm_conn_param p{};
  p.qp_num = qpn;
  p.psn = psn;
  p.responder_resources = 4;
  p.initiator_depth = 4;
  p.retry_count = 7;
  p.rnr_retry_count = 7;
  p.qp_type = 2;
  if (pd) {
    p.private_data = pd;
    p.private_data_len = uint8_t(std::strlen(pd) + 1);
  }
  return p;
}

// An active identifier on `ch`, resolved towards own_ip():port.
dvcm_id* resolved(Side& s, uint16_t port, int ps = DVCM_PS_TCP, int qpt = 2) {
  dvcm_id* c = s.id(ps, qpt);
  auto dst = v4(own_ip(), port);
  EXPECT_EQ(dvcm_resolve_addr(c, nullptr, sa(dst), 2000), 0);
  next(s.ch, DVCM_EVENT_ADDR_RESOLVED);
  EXPECT_EQ(dvcm_resolve_route(c, 2000), 0);
  next(s.ch, DVCM_EVENT_ROUTE_RESOLVED);
  return c;
}

dvcm_id* listening(Side& s, uint16_t port, int ps = DVCM_PS_TCP, int qpt = 2) {
  dvcm_id* l = s.id(ps, qpt);
  auto any = v4(0, port);
  EXPECT_EQ(dvcm_bind_addr(l, sa(any)), 0);
  EXPECT_EQ(dvcm_listen(l, 8), 0);
  return l;
}

// A listener on `port`, and a connection to it established both ways (REQ, REP, RTU).
struct Conn {
  dvcm_id *l = nullptr, *c = nullptr, *s = nullptr;
};
Conn establish(Side& srv, Side& cli, uint16_t port) {
  Conn k;
  k.l = listening(srv, port);
  k.c = resolved(cli, port);
  auto cp = param(0x100 + port, 1);
  EXPECT_EQ(dvcm_connect(k.c, &cp), 0);
  k.s = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST).id;
  auto ap = param(0x200 + port, 2);
  EXPECT_EQ(dvcm_accept(k.s, &ap), 0);
  next(cli.ch, DVCM_EVENT_CONNECT_RESPONSE);
  EXPECT_EQ(dvcm_establish(k.c), 0);
  next(srv.ch, DVCM_EVENT_ESTABLISHED);
  return k;
}

TEST(Cm, ConnectAcceptEstablishDisconnect) {
  Side srv, cli;
  dvcm_id* l = listening(srv, 7001);
  dvcm_id* c = resolved(cli, 7001);
  auto cp = param(0x123, 0x456, "hello");
  ASSERT_EQ(dvcm_connect(c, &cp), 0);

  dvcm_event req = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST);
  EXPECT_EQ(req.listen_id, l);
  EXPECT_EQ(req.qp_num, 0x123u);
  EXPECT_STREQ(reinterpret_cast<char*>(req.private_data), "hello");
  EXPECT_EQ(req.private_data_len, 92 - 36);  // REQ private data less the IP CM header
  dvcm_id* s = req.id;
  sockaddr_storage src{}, dst{};
  ASSERT_EQ(dvcm_query(s, &src, &dst, nullptr), 0);
  EXPECT_EQ(ntohs(reinterpret_cast<sockaddr_in&>(src).sin_port), 7001);
  sockaddr_storage csrc{};
  ASSERT_EQ(dvcm_query(c, &csrc, nullptr, nullptr), 0);
  EXPECT_EQ(reinterpret_cast<sockaddr_in&>(dst).sin_port,
            reinterpret_cast<sockaddr_in&>(csrc).sin_port);  // the IP CM header's source port

  auto ap = param(0x789, 0xabc, "world");
  ASSERT_EQ(dvcm_accept(s, &ap), 0);
  dvcm_event rep = next(cli.ch, DVCM_EVENT_CONNECT_RESPONSE);
  EXPECT_EQ(rep.qp_num, 0x789u);
  EXPECT_STREQ(reinterpret_cast<char*>(rep.private_data), "world");
  dvcm_qp_params qp{};
  ASSERT_EQ(dvcm_get_qp_params(c, &qp), 0);
  // Each side receives from the Starting PSN it advertised and sends from the peer's.
  EXPECT_EQ(qp.dest_qp_num, 0x789u);
  EXPECT_EQ(qp.rq_psn, 0x456u);
  EXPECT_EQ(qp.sq_psn, 0xabcu);
  EXPECT_EQ(qp.max_rd_atomic, 4);
  ASSERT_EQ(dvcm_get_qp_params(s, &qp), 0);
  EXPECT_EQ(qp.dest_qp_num, 0x123u);
  EXPECT_EQ(qp.rq_psn, 0xabcu);
  EXPECT_EQ(qp.sq_psn, 0x456u);

  ASSERT_EQ(dvcm_establish(c), 0);  // RTU
  next(srv.ch, DVCM_EVENT_ESTABLISHED);

  ASSERT_EQ(dvcm_disconnect(c), 0);  // DREQ
  next(srv.ch, DVCM_EVENT_DISCONNECTED);
  ASSERT_EQ(dvcm_disconnect(s), 0);  // DREP
  next(cli.ch, DVCM_EVENT_DISCONNECTED);
  EXPECT_EQ(dvcm_destroy_id(s), 0);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
  EXPECT_EQ(dvcm_destroy_id(l), 0);
}

TEST(Cm, NoListenerIsRejectedWithInvalidServiceId) {
  Side cli;
  dvcm_id* c = resolved(cli, 7002);
  auto cp = param(0x10, 1);
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  dvcm_event e = next(cli.ch, DVCM_EVENT_REJECTED);
  EXPECT_EQ(e.status, int(cm::RejReason::invalid_service_id));
  EXPECT_EQ(dvcm_destroy_id(c), 0);
}

TEST(Cm, ConsumerRejectCarriesPrivateData) {
  Side srv, cli;
  dvcm_id* l = listening(srv, 7003);
  dvcm_id* c = resolved(cli, 7003);
  auto cp = param(0x11, 2);
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  dvcm_event req = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST);
  ASSERT_EQ(dvcm_reject(req.id, "nope", 5), 0);
  dvcm_event e = next(cli.ch, DVCM_EVENT_REJECTED);
  EXPECT_EQ(e.status, int(cm::RejReason::consumer_defined));
  EXPECT_STREQ(reinterpret_cast<char*>(e.private_data), "nope");
  EXPECT_EQ(dvcm_accept(req.id, &cp), EINVAL);  // rejected: nothing left to accept
  EXPECT_EQ(dvcm_destroy_id(req.id), 0);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
  EXPECT_EQ(dvcm_destroy_id(l), 0);
}

TEST(Cm, DestroyedListenerRejectsItsPendingRequests) {
  Side srv, cli;
  dvcm_id* l = listening(srv, 7004);
  dvcm_id* c = resolved(cli, 7004);
  auto cp = param(0x12, 3);
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  // The request is queued but the consumer never takes it, as when a server exits: the
  // child goes with the listener, the peer hears a REJ, and the queued event is gone.
  pollfd p{dvcm_channel_fd(srv.ch), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 30000), 1);
  EXPECT_EQ(dvcm_destroy_id(l), 0);
  dvcm_event e = next(cli.ch, DVCM_EVENT_REJECTED);
  EXPECT_EQ(e.status, int(cm::RejReason::consumer_defined));
  EXPECT_TRUE(quiet(srv.ch, 100));  // its readiness went with it
  EXPECT_EQ(dvcm_destroy_id(c), 0);
  // A request the consumer took is its own: destroying the listener leaves it alone.
  l = listening(srv, 7004);
  c = resolved(cli, 7004);
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  dvcm_id* s = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST).id;
  EXPECT_EQ(dvcm_destroy_id(l), 0);
  auto ap = param(0x13, 4);
  EXPECT_EQ(dvcm_accept(s, &ap), 0);
  next(cli.ch, DVCM_EVENT_CONNECT_RESPONSE);
  EXPECT_EQ(dvcm_destroy_id(s), 0);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
}

TEST(Cm, SimultaneousDisconnect) {
  Side srv, cli;
  Conn k = establish(srv, cli, 7005);
  ASSERT_EQ(dvcm_disconnect(k.c), 0);
  ASSERT_EQ(dvcm_disconnect(k.s), 0);  // both DREQs cross (or the second answers the first)
  next(srv.ch, DVCM_EVENT_DISCONNECTED);
  next(cli.ch, DVCM_EVENT_DISCONNECTED);
  EXPECT_TRUE(quiet(cli.ch, 200));
  for (dvcm_id* i : {k.s, k.c, k.l}) EXPECT_EQ(dvcm_destroy_id(i), 0);
}

TEST(Cm, DestroyingAConnectedIdDisconnectsThePeer) {
  Side srv, cli;
  Conn k = establish(srv, cli, 7006);
  EXPECT_EQ(dvcm_destroy_id(k.s), 0);  // DREQ on the way out
  next(cli.ch, DVCM_EVENT_DISCONNECTED);
  EXPECT_EQ(dvcm_disconnect(k.c), 0);  // DREP to a peer that is gone: answered by its CM
  EXPECT_EQ(dvcm_destroy_id(k.c), 0);
  EXPECT_EQ(dvcm_destroy_id(k.l), 0);
}

TEST(Cm, SidrResolvesAUdService) {
  Side srv, cli;
  dvcm_id* l = listening(srv, 7007, DVCM_PS_UDP, 4);
  dvcm_id* c = resolved(cli, 7007, DVCM_PS_UDP, 4);
  auto cp = param(0x21, 0, "sidr");
  cp.qp_type = 4;
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  dvcm_event req = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST);
  EXPECT_STREQ(reinterpret_cast<char*>(req.private_data), "sidr");
  auto ap = param(0x22, 0);
  ap.qkey = 0x01234567;
  ASSERT_EQ(dvcm_accept(req.id, &ap), 0);
  dvcm_event e = next(cli.ch, DVCM_EVENT_ESTABLISHED);
  EXPECT_EQ(e.qp_num, 0x22u);
  EXPECT_EQ(e.qkey, 0x01234567u);
  EXPECT_EQ(e.ud_path.dgid[15], uint8_t(own_ip()));
  EXPECT_EQ(dvcm_destroy_id(req.id), 0);
  // No UD service on the port: SIDR_REP with a failure status.
  dvcm_id* c2 = resolved(cli, 7017, DVCM_PS_UDP, 4);
  ASSERT_EQ(dvcm_connect(c2, &cp), 0);
  next(cli.ch, DVCM_EVENT_UNREACHABLE);
  EXPECT_EQ(dvcm_destroy_id(c2), 0);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
  EXPECT_EQ(dvcm_destroy_id(l), 0);
}

// The channel's fd is an ordinary pollable descriptor: epoll reports it readable exactly
// while events are queued, and O_NONBLOCK makes an empty channel EAGAIN, not a wait.
TEST(Cm, ChannelFdWorksWithEpollAndNonBlocking) {
  Side s;
  const int fd = dvcm_channel_fd(s.ch);
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
  epoll_event out{};
  EXPECT_EQ(epoll_wait(ep, &out, 1, 0), 0);
  ASSERT_EQ(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  dvcm_event e{};
  EXPECT_EQ(dvcm_get_event(s.ch, &e), EAGAIN);
  dvcm_id* c = s.id();
  auto dst = v4(own_ip(), 7600);
  ASSERT_EQ(dvcm_resolve_addr(c, nullptr, sa(dst), 2000), 0);
  EXPECT_EQ(epoll_wait(ep, &out, 1, 10000), 1);  // ADDR_RESOLVED
  EXPECT_EQ(dvcm_get_event(s.ch, &e), 0);
  EXPECT_EQ(e.type, DVCM_EVENT_ADDR_RESOLVED);
  EXPECT_EQ(epoll_wait(ep, &out, 1, 0), 0);  // drained
  EXPECT_EQ(dvcm_get_event(s.ch, &e), EAGAIN);
  close(ep);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
}

TEST(Cm, Binding) {
  Side s;
  dvcm_id* a = s.id();
  dvcm_id* b = s.id();
  auto any = v4(0, 7100);
  ASSERT_EQ(dvcm_bind_addr(a, sa(any)), 0);
  EXPECT_EQ(dvcm_bind_addr(b, sa(any)), EADDRINUSE);
  auto mine = v4(own_ip(), 7100);
  EXPECT_EQ(dvcm_bind_addr(b, sa(mine)), EADDRINUSE);
  auto foreign = v4(0x0a0b0c0d, 7101);
  EXPECT_EQ(dvcm_bind_addr(b, sa(foreign)), EADDRNOTAVAIL);
  // Another port space is another namespace.
  dvcm_id* u = s.id(DVCM_PS_UDP, 4);
  EXPECT_EQ(dvcm_bind_addr(u, sa(any)), 0);
  // [::]:7100 conflicts with 0.0.0.0:7100 unless IPv6-only.
  dvcm_id* six = s.id();
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_any;
  a6.sin6_port = htons(7100);
  EXPECT_EQ(dvcm_bind_addr(six, reinterpret_cast<sockaddr*>(&a6)), EADDRINUSE);
  ASSERT_EQ(dvcm_set_option(six, 2 /* AFONLY */, 1), 0);
  EXPECT_EQ(dvcm_bind_addr(six, reinterpret_cast<sockaddr*>(&a6)), 0);
  EXPECT_EQ(dvcm_listen(six, 4), 0);
  // Port 0: an ephemeral port.
  dvcm_id* e = s.id();
  auto any0 = v4(0, 0);
  ASSERT_EQ(dvcm_bind_addr(e, sa(any0)), 0);
  sockaddr_storage src{};
  dvcm_query(e, &src, nullptr, nullptr);
  EXPECT_GE(ntohs(reinterpret_cast<sockaddr_in&>(src).sin_port), 32768);
  sockaddr bad{};
  bad.sa_family = AF_UNIX;
  dvcm_id* f = s.id();
  EXPECT_EQ(dvcm_bind_addr(f, &bad), EAFNOSUPPORT);
  dvcm_id* g = s.id();
  EXPECT_EQ(dvcm_listen(g, 1), 0);  // unbound listen: an ephemeral port
  for (dvcm_id* i : {a, b, u, six, e, f}) EXPECT_EQ(dvcm_destroy_id(i), 0);
  EXPECT_EQ(dvcm_channel_destroy(s.ch), EBUSY);  // g is still on it
  EXPECT_EQ(dvcm_destroy_id(g), 0);
}

TEST(Cm, UnreachableAddressIsAnAddrError) {
  Side s;
  dvcm_id* c = s.id();
  auto dst = v4(0xc6336401, 7200);  // 198.51.100.1 (TEST-NET-2): nobody answers ARP
  ASSERT_EQ(dvcm_resolve_addr(c, nullptr, sa(dst), 800), 0);
  dvcm_event e = next(s.ch, DVCM_EVENT_ADDR_ERROR);
  EXPECT_LT(e.status, 0);
  EXPECT_EQ(dvcm_resolve_route(c, 100), EINVAL);  // not resolved
  auto cp = param(1, 1);
  EXPECT_EQ(dvcm_connect(c, &cp), EINVAL);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
}

TEST(Cm, BadArguments) {
  Side s;
  dvcm_id* i = nullptr;
  EXPECT_EQ(dvcm_create_id(s.ch, 0x7777, 2, nullptr, &i), EPROTONOSUPPORT);
  EXPECT_EQ(dvcm_create_id(s.ch, DVCM_PS_TCP, 4, nullptr, &i), EINVAL);  // UD over TCP space
  EXPECT_EQ(dvcm_create_id(nullptr, DVCM_PS_TCP, 2, nullptr, &i), EINVAL);
  dvcm_id* c = s.id();
  EXPECT_EQ(dvcm_accept(c, nullptr), EINVAL);
  auto cp = param(1, 1);
  EXPECT_EQ(dvcm_accept(c, &cp), EINVAL);
  EXPECT_EQ(dvcm_establish(c), EINVAL);
  EXPECT_EQ(dvcm_disconnect(c), EINVAL);
  EXPECT_EQ(dvcm_reject(c, nullptr, 0), EINVAL);
  EXPECT_EQ(dvcm_destroy_id(c), 0);
  EXPECT_EQ(dvcm_destroy_id(c), EINVAL);  // stale
}

// Hostile MADs sent to QP1 from an ordinary UD QP: each is dropped and counted, none
// disturbs the CM, which connects afterwards as before.
TEST(Cm, MalformedMadsAreDroppedAndCounted) {
  mid::Device* devs[4];
  ASSERT_GE(mid::list_devices(devs, 4), 1);
  mid::Device* d = devs[0];
  mid::Pd* pd = nullptr;
  ASSERT_EQ(mid::alloc_pd(d, &pd), 0);
  mid::Cq* cq = nullptr;
  ASSERT_EQ(mid::create_cq(d, 64, nullptr, nullptr, nullptr, &cq), 0);
  mid::QpInitAttr init{};
  init.qp_type = QpType::ud;
  init.send_cq = init.recv_cq = cq;
  init.cap.max_send_wr = init.cap.max_recv_wr = 32;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  mid::Qp* qp = nullptr;
  ASSERT_EQ(mid::create_qp(pd, &init, &qp), 0);
  {
    using namespace qp_attr_mask;
    QpAttr a{};
    a.qp_state = QpState::init;
    // A Q_Key with the high bit set is sent from the QP's own (IBA 10.2.4.2): GSI's.
    a.qkey = cm::kGsiQkey;
    ASSERT_EQ(mid::modify_qp(qp, &a, state | pkey_index | port | qkey), 0);
    a.qp_state = QpState::rtr;
    ASSERT_EQ(mid::modify_qp(qp, &a, state), 0);
    a.qp_state = QpState::rts;
    ASSERT_EQ(mid::modify_qp(qp, &a, state | sq_psn), 0);
  }
  static uint8_t buf[64][256];
  mid::Mr* mr = nullptr;
  ASSERT_EQ(mid::reg_mr(pd, buf, sizeof buf, access::local_write, &mr), 0);
  AhAttr aa{};
  const uint32_t ip = own_ip();
  aa.dgid.raw[10] = aa.dgid.raw[11] = 0xff;
  aa.dgid.raw[12] = uint8_t(ip >> 24);
  aa.dgid.raw[13] = uint8_t(ip >> 16);
  aa.dgid.raw[14] = uint8_t(ip >> 8);
  aa.dgid.raw[15] = uint8_t(ip);
  mid::Ah* ah = nullptr;
  ASSERT_EQ(mid::create_ah(pd, &aa, &ah), 0);

  Side warm;  // the CM runs from the first call
  uint64_t before;
  {
    std::lock_guard<std::mutex> g(cm::cm().mu);
    ASSERT_FALSE(cm::cm().ports.empty());
    before = cm::cm().ports[0]->dropped;
  }
  // The kinds: a short MAD, another management class, a bad class version, an unknown
  // attribute, a REP for no REQ, an RTU/DREP/MRA for no connection, a REQ for a bad
  // service id, a REQ whose IP CM header is garbage.
  int n = 0;
  auto mk = [&](cm::AttrId attr) {
    uint8_t* m = buf[n];
    std::memset(m, 0, 256);
    m[0] = 1;
    m[1] = 0x07;
    m[2] = 2;
    m[3] = 0x03;
    m[16] = uint8_t(uint16_t(attr) >> 8);
    m[17] = uint8_t(uint16_t(attr));
    return m;
  };
  std::vector<uint32_t> lens;
  mk(cm::AttrId::req); lens.push_back(100); n++;             // truncated
  mk(cm::AttrId::req)[1] = 0x04; lens.push_back(256); n++;   // not the CM class
  mk(cm::AttrId::req)[2] = 9; lens.push_back(256); n++;      // class version 9
  mk(cm::AttrId(0x0077)); lens.push_back(256); n++;          // unknown attribute
  mk(cm::AttrId::lap); lens.push_back(256); n++;             // LAP: not supported
  {
    cm::Rep r{};
    r.local_comm_id = 0x1234;
    r.remote_comm_id = 0xdeadbeef;  // no REQ of ours
    cm::build(r, 1, buf[n]);
    lens.push_back(256);
    n++;
  }
  {
    cm::Rtu r{};
    r.local_comm_id = 1;
    r.remote_comm_id = 0xfeedf00d;
    cm::build(r, 2, buf[n]);
    lens.push_back(256);
    n++;
  }
  {
    cm::Drep r{};
    r.remote_comm_id = 0xfeedf00e;
    cm::build(r, 3, buf[n]);
    lens.push_back(256);
    n++;
  }
  for (int i = 0; i < n; i++) {
    Sge sge{reinterpret_cast<uint64_t>(buf[i]), lens[size_t(i)], mr->lkey};
    SendWr wr{};
    wr.wr_id = uint64_t(i);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = WrOpcode::send;
    wr.send_flags = send_flags::signaled;
    wr.wr.ud.ah = ah;
    wr.wr.ud.remote_qpn = 1;
    wr.wr.ud.remote_qkey = cm::kGsiQkey;
    SendWr* bad = nullptr;
    ASSERT_EQ(mid::post_send(qp, &wr, &bad), 0);
  }
  int done = 0;
  Wc wc[16];
  for (int spin = 0; done < n && spin < 200000; spin++) {
    int k = mid::poll_cq(cq, 16, wc);
    for (int j = 0; j < k; j++) EXPECT_EQ(wc[j].status, WcStatus::success);
    done += k > 0 ? k : 0;
    if (k <= 0) usleep(50);
  }
  ASSERT_EQ(done, n);
  bool all = false;
  for (int t = 0; t < 2000 && !all; t++) {
    usleep(1000);
    std::lock_guard<std::mutex> g(cm::cm().mu);
    all = cm::cm().ports[0]->dropped >= before + uint64_t(n);
  }
  EXPECT_TRUE(all) << "dropped " << cm::cm().ports[0]->dropped - before << " of " << n;

  // The CM still connects.
  {
    Side srv, cli;
    Conn k = establish(srv, cli, 7300);
    for (dvcm_id* i : {k.s, k.c, k.l}) EXPECT_EQ(dvcm_destroy_id(i), 0);
  }
  mid::destroy_ah(ah);
  mid::destroy_qp(qp);
  mid::destroy_cq(cq);
  mid::dereg_mr(mr);
  mid::dealloc_pd(pd);
}

// rdma_join_multicast's half in the CM (the event, at once, with the group's UD path) and
// the HCA's half: a UD SEND to the group reaches every attached QP, and no detached one.
TEST(Cm, MulticastJoinAndDelivery) {
  Side s;
  dvcm_id* id = s.id(DVCM_PS_UDP, 4);
  auto any = v4(own_ip(), 0);
  ASSERT_EQ(dvcm_bind_addr(id, sa(any)), 0);
  auto group = v4(0xe0010203, 0);  // 224.1.2.3
  int ctx = 0;
  ASSERT_EQ(dvcm_join_multicast(id, sa(group), &ctx), 0);
  EXPECT_EQ(dvcm_join_multicast(id, sa(group), &ctx), EADDRINUSE);
  auto uni = v4(own_ip(), 0);
  EXPECT_EQ(dvcm_join_multicast(id, sa(uni), &ctx), EINVAL);
  dvcm_event e = next(s.ch, DVCM_EVENT_MULTICAST_JOIN);
  EXPECT_EQ(e.user, &ctx);
  EXPECT_EQ(e.qp_num, 0xffffffu);
  EXPECT_EQ(e.qkey, 0x01234567u);
  const uint8_t mgid[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 224, 1, 2, 3};
  EXPECT_EQ(std::memcmp(e.ud_path.dgid, mgid, 16), 0);
  const uint8_t mac[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
  EXPECT_EQ(std::memcmp(e.ud_path.dmac, mac, 6), 0);

  mid::Device* devs[4];
  ASSERT_GE(mid::list_devices(devs, 4), 1);
  mid::Pd* pd = nullptr;
  ASSERT_EQ(mid::alloc_pd(devs[0], &pd), 0);
  mid::Cq* cq = nullptr;
  ASSERT_EQ(mid::create_cq(devs[0], 256, nullptr, nullptr, nullptr, &cq), 0);
  static uint8_t buf[4][4096];
  mid::Mr* mr = nullptr;
  ASSERT_EQ(mid::reg_mr(pd, buf, sizeof buf, access::local_write, &mr), 0);
  mid::Qp* qps[3] = {};  // sender, two members
  for (auto& q : qps) {
    mid::QpInitAttr init{};
    init.qp_type = QpType::ud;
    init.send_cq = init.recv_cq = cq;
    init.cap.max_send_wr = init.cap.max_recv_wr = 8;
    init.cap.max_send_sge = init.cap.max_recv_sge = 1;
    ASSERT_EQ(mid::create_qp(pd, &init, &q), 0);
    using namespace qp_attr_mask;
    QpAttr a{};
    a.qp_state = QpState::init;
    a.qkey = e.qkey;
    ASSERT_EQ(mid::modify_qp(q, &a, state | pkey_index | port | qkey), 0);
    a.qp_state = QpState::rtr;
    ASSERT_EQ(mid::modify_qp(q, &a, state), 0);
    a.qp_state = QpState::rts;
    ASSERT_EQ(mid::modify_qp(q, &a, state | sq_psn), 0);
  }
  Gid g{};
  std::memcpy(g.raw, e.ud_path.dgid, 16);
  EXPECT_EQ(mid::attach_mcast(qps[1], &g), 0);
  EXPECT_EQ(mid::attach_mcast(qps[2], &g), 0);
  Gid bad{};
  bad.raw[10] = bad.raw[11] = 0xff;
  bad.raw[12] = 10;  // 10.0.0.0: not a group
  EXPECT_EQ(mid::attach_mcast(qps[1], &bad), EINVAL);
  for (int i = 1; i <= 2; i++) {
    Sge sge{reinterpret_cast<uint64_t>(buf[i]), 4096, mr->lkey};
    RecvWr r{};
    r.wr_id = uint64_t(i);
    r.sg_list = &sge;
    r.num_sge = 1;
    RecvWr* badr = nullptr;
    ASSERT_EQ(mid::post_recv(qps[i], &r, &badr), 0);
  }
  AhAttr aa{};
  std::memcpy(aa.dgid.raw, e.ud_path.dgid, 16);
  mid::Ah* ah = nullptr;
  ASSERT_EQ(mid::create_ah(pd, &aa, &ah), 0);
  std::memcpy(buf[0], "to the group", 13);
  Sge sge{reinterpret_cast<uint64_t>(buf[0]), 13, mr->lkey};
  SendWr wr{};
  wr.wr_id = 0;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = WrOpcode::send;
  wr.send_flags = send_flags::signaled;
  wr.wr.ud.ah = ah;
  wr.wr.ud.remote_qpn = e.qp_num;
  wr.wr.ud.remote_qkey = e.qkey;
  SendWr* bad_wr = nullptr;
  ASSERT_EQ(mid::post_send(qps[0], &wr, &bad_wr), 0);
  int got[3] = {};
  Wc wc[8];
  for (int spin = 0; spin < 100000 && got[0] + got[1] + got[2] < 3; spin++) {
    const int k = mid::poll_cq(cq, 8, wc);
    for (int j = 0; j < k; j++) {
      EXPECT_EQ(wc[j].status, WcStatus::success);
      got[wc[j].wr_id]++;
      if (wc[j].wr_id) {
        EXPECT_EQ(wc[j].byte_len, 40u + 13u);
      }
    }
    if (k <= 0) usleep(50);
  }
  EXPECT_EQ(got[0], 1);
  EXPECT_EQ(got[1], 1);
  EXPECT_EQ(got[2], 1);
  EXPECT_STREQ(reinterpret_cast<char*>(buf[1] + 40), "to the group");
  EXPECT_STREQ(reinterpret_cast<char*>(buf[2] + 40), "to the group");
  EXPECT_EQ(mid::detach_mcast(qps[2], &g), 0);
  EXPECT_EQ(mid::detach_mcast(qps[2], &g), EINVAL);
  EXPECT_EQ(dvcm_leave_multicast(id, sa(group)), 0);
  EXPECT_EQ(dvcm_leave_multicast(id, sa(group)), EADDRNOTAVAIL);
  mid::destroy_ah(ah);
  for (auto* q : qps) mid::destroy_qp(q);  // qps[1] still attached: destroy detaches it
  mid::destroy_cq(cq);
  mid::dereg_mr(mr);
  mid::dealloc_pd(pd);
  EXPECT_EQ(dvcm_destroy_id(id), 0);
}

// Hot-unplug: a port that goes away ends its identifiers with DEVICE_REMOVAL (the CM's
// midlayer client remove()), and the CM keeps serving the other ports.
TEST(Cm, RemovedPortEndsItsIdentifiers) {
  Side s;  // the CM runs (and is a client) before the port comes
  char name[32];
  ASSERT_EQ(mid::add_port("net_ring_cmhp", "10.9.7.1/24", name, sizeof name), 0);
  dvcm_id* l = s.id();
  auto mine = v4(0x0a090701, 7500);
  ASSERT_EQ(dvcm_bind_addr(l, sa(mine)), 0);
  ASSERT_EQ(dvcm_listen(l, 4), 0);
  dvcm_path path{};
  ASSERT_EQ(dvcm_query(l, nullptr, nullptr, &path), 0);
  EXPECT_STREQ(path.dev_name, name);
  ASSERT_EQ(mid::remove_port(name), 0);
  next(s.ch, DVCM_EVENT_DEVICE_REMOVAL);
  EXPECT_EQ(dvcm_query(l, nullptr, nullptr, nullptr), ENODEV);
  EXPECT_EQ(dvcm_destroy_id(l), 0);
  // The first port still connects.
  Side srv, cli;
  Conn k = establish(srv, cli, 7501);
  for (dvcm_id* i : {k.s, k.c, k.l}) EXPECT_EQ(dvcm_destroy_id(i), 0);
}

// The passive side accepted, the active side never sends its RTU (a peer that dies between
// REQ and RTU): the REP is resent up to Max CM Retries, then UNREACHABLE; nothing hangs.
TEST(Cm, MissingRtuEndsUnreachable) {
  Side srv, cli;
  dvcm_id* l = listening(srv, 7400);
  dvcm_id* c = resolved(cli, 7400);
  auto cp = param(0x41, 1);
  ASSERT_EQ(dvcm_connect(c, &cp), 0);
  dvcm_id* s = next(srv.ch, DVCM_EVENT_CONNECT_REQUEST).id;
  auto ap = param(0x42, 2);
  ASSERT_EQ(dvcm_accept(s, &ap), 0);
  next(cli.ch, DVCM_EVENT_CONNECT_RESPONSE);
  // The active consumer never calls dvcm_establish. Each REP retransmission reaches the
  // active CM, which is in rep_rcvd and keeps waiting for its consumer.
  dvcm_event e = next(srv.ch, DVCM_EVENT_UNREACHABLE, 120000);
  EXPECT_EQ(e.status, -ETIMEDOUT);
  // The passive CM's REJ (timeout) reached the active side too.
  next(cli.ch, DVCM_EVENT_UNREACHABLE);
  for (dvcm_id* i : {s, c, l}) EXPECT_EQ(dvcm_destroy_id(i), 0);
}

}  // namespace
