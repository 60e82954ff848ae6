// librdmacm.so.1 drop-in misuse (lib/verbs/rdmacm): every rdma_* entry point given bad
// arguments or called in the wrong state fails with -1 and the errno below, never crashes,
// and leaves the library usable. Built against rdma-core's <rdma/rdma_cma.h> and linked
// with the drop-ins (not the HCA: the one copy is in libibverbs.so.1), on the built-in
// loopback port (DVERBS_PORT unset, DVERBS_IP 10.0.0.1/24 by default).
//
//   misuse                                                           errno
//   NULL / forged / destroyed id, channel or event                    EINVAL
//   unknown port space, address family not AF_INET/AF_INET6           EINVAL
//   connect / resolve_route / create_qp / init_qp_attr, no device     EINVAL
//   accept / reject / establish / disconnect on a fresh id            EINVAL
//   bind twice, connect or accept on a listener                       EINVAL
//   bind to an address no dverbs port has                             EADDRNOTAVAIL
//   RTR attributes before the connection, a second QP, foreign CQs    EINVAL
//   rdma_get_request on an asynchronous listener                      EINVAL
//   rdma_migrate_id(sync id, NULL)                                    EINVAL
//   rdma_set_option: NULL optval / wrong optlen / unknown option      EINVAL / ENOSYS
//   join_multicast_ex: reserved comp_mask / missing fields             ENOTSUP / EINVAL
//   leave a group never joined                                        EADDRNOTAVAIL
//   rdma_get_cm_event on an empty O_NONBLOCK channel                  EAGAIN
//   rsockets: a descriptor that is no open rsocket                    EBADF
//   rsocket: SOCK_DGRAM / other protocol; other type; other family     EPROTONOSUPPORT;
//                                                                      ESOCKTNOSUPPORT;
//                                                                      EAFNOSUPPORT
//   rsend/rrecv/rshutdown unconnected; raccept not listening          ENOTCONN; EINVAL
//   rsetsockopt/rgetsockopt: unknown option; short or NULL value       ENOPROTOOPT; EINVAL
//   rfcntl: unknown command; riomap/riounmap/riowrite                 EINVAL; ENOSYS
//   rdma_getaddrinfo with nothing to resolve; a bad numeric host      EINVAL; EAI_NONAME
// rdma_listen on an unbound identifier is no misuse: as with the kernel's rdma_cm it binds
// to the IPv4 wildcard address.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>
#include <rdma/rsocket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/select.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace {

#define EXPECT_FAILS(call, err)                                     \
  do {                                                              \
    errno = 0;                                                      \
    EXPECT_EQ(-1, (call)) << #call;                                 \
    EXPECT_EQ(err, errno) << #call << ": " << std::strerror(errno); \
  } while (0)

sockaddr_in ip4(const char* a, uint16_t port = 0) {
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_port = htons(port);
  inet_pton(AF_INET, a, &s.sin_addr);
  return s;
}
sockaddr* sa(sockaddr_in& s) {
  return reinterpret_cast<sockaddr*>(&s);
}

constexpr const char* kLocal = "10.0.0.1";  // the port's address (DVERBS_IP's default)

class RdmacmMisuse : public ::testing::Test {
 protected:
  rdma_event_channel* ch = nullptr;
  rdma_cm_id* id = nullptr;
  void SetUp() override {
    ch = rdma_create_event_channel();
    ASSERT_NE(nullptr, ch) << std::strerror(errno);
    ASSERT_EQ(0, rdma_create_id(ch, &id, nullptr, RDMA_PS_TCP)) << std::strerror(errno);
  }
  void TearDown() override {
    if (id) {
      if (id->qp) rdma_destroy_qp(id);
      EXPECT_EQ(0, rdma_destroy_id(id)) << std::strerror(errno);
    }
    rdma_destroy_event_channel(ch);
    // The library still works.
    rdma_cm_id* x = nullptr;
    ASSERT_EQ(0, rdma_create_id(nullptr, &x, nullptr, RDMA_PS_UDP)) << std::strerror(errno);
    EXPECT_EQ(0, rdma_destroy_id(x));
  }
};

TEST_F(RdmacmMisuse, NullArguments) {
  sockaddr_in a = ip4(kLocal);
  rdma_cm_id* out = nullptr;
  rdma_cm_event* ev = nullptr;
  ibv_qp_init_attr qia{};
  ibv_qp_init_attr_ex qiax{};
  ibv_srq_init_attr sia{};
  ibv_srq_init_attr_ex siax{};
  ibv_qp_attr qa{};
  int mask = 0;
  rdma_conn_param cp{};
  ibv_ece ece{};
  int one = 1;
  EXPECT_FAILS(rdma_create_id(ch, nullptr, nullptr, RDMA_PS_TCP), EINVAL);
  EXPECT_FAILS(rdma_destroy_id(nullptr), EINVAL);
  EXPECT_FAILS(rdma_bind_addr(nullptr, sa(a)), EINVAL);
  EXPECT_FAILS(rdma_bind_addr(id, nullptr), EINVAL);
  EXPECT_FAILS(rdma_resolve_addr(nullptr, nullptr, sa(a), 100), EINVAL);
  EXPECT_FAILS(rdma_resolve_addr(id, nullptr, nullptr, 100), EINVAL);
  EXPECT_FAILS(rdma_resolve_route(nullptr, 100), EINVAL);
  EXPECT_FAILS(rdma_listen(nullptr, 1), EINVAL);
  EXPECT_FAILS(rdma_connect(nullptr, &cp), EINVAL);
  EXPECT_FAILS(rdma_accept(nullptr, &cp), EINVAL);
  EXPECT_FAILS(rdma_reject(nullptr, nullptr, 0), EINVAL);
  EXPECT_FAILS(rdma_reject(id, nullptr, 4), EINVAL);  // length without data
  EXPECT_FAILS(rdma_reject_ece(nullptr, nullptr, 0), EINVAL);
  EXPECT_FAILS(rdma_notify(nullptr, IBV_EVENT_COMM_EST), EINVAL);
  EXPECT_FAILS(rdma_disconnect(nullptr), EINVAL);
  EXPECT_FAILS(rdma_establish(nullptr), EINVAL);
  EXPECT_FAILS(rdma_get_request(nullptr, &out), EINVAL);
  EXPECT_FAILS(rdma_join_multicast(nullptr, sa(a), nullptr), EINVAL);
  EXPECT_FAILS(rdma_join_multicast(id, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_join_multicast_ex(id, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_leave_multicast(nullptr, sa(a)), EINVAL);
  EXPECT_FAILS(rdma_leave_multicast(id, nullptr), EINVAL);
  EXPECT_FAILS(rdma_set_option(nullptr, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, &one, sizeof one),
               EINVAL);
  EXPECT_FAILS(rdma_migrate_id(nullptr, ch), EINVAL);
  EXPECT_FAILS(rdma_init_qp_attr(nullptr, &qa, &mask), EINVAL);
  EXPECT_FAILS(rdma_init_qp_attr(id, nullptr, &mask), EINVAL);
  EXPECT_FAILS(rdma_init_qp_attr(id, &qa, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_qp(nullptr, nullptr, &qia), EINVAL);
  EXPECT_FAILS(rdma_create_qp(id, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_qp_ex(nullptr, &qiax), EINVAL);
  EXPECT_FAILS(rdma_create_qp_ex(id, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_srq(nullptr, nullptr, &sia), EINVAL);
  EXPECT_FAILS(rdma_create_srq(id, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_srq_ex(nullptr, &siax), EINVAL);
  EXPECT_FAILS(rdma_set_local_ece(nullptr, &ece), EINVAL);
  EXPECT_FAILS(rdma_set_local_ece(id, nullptr), EINVAL);
  EXPECT_FAILS(rdma_get_remote_ece(nullptr, &ece), EINVAL);
  EXPECT_FAILS(rdma_get_remote_ece(id, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_ep(nullptr, nullptr, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_create_ep(&out, nullptr, nullptr, nullptr), EINVAL);
  EXPECT_FAILS(rdma_get_cm_event(nullptr, &ev), EINVAL);
  EXPECT_FAILS(rdma_get_cm_event(ch, nullptr), EINVAL);
  EXPECT_FAILS(rdma_ack_cm_event(nullptr), EINVAL);
  errno = 0;
  EXPECT_EQ(0, rdma_get_src_port(nullptr));
  EXPECT_EQ(EINVAL, errno);
  EXPECT_EQ(0, rdma_get_dst_port(nullptr));
  // The void calls only must not crash.
  rdma_destroy_qp(nullptr);
  rdma_destroy_srq(nullptr);
  rdma_destroy_ep(nullptr);
  rdma_destroy_event_channel(nullptr);
  rdma_free_devices(nullptr);
  rdma_freeaddrinfo(nullptr);
}

// Pointers the library never handed out, or took back.
TEST_F(RdmacmMisuse, ForgedAndStalePointers) {
  rdma_cm_id fake{};
  fake.channel = ch;
  rdma_event_channel fake_ch{};
  fake_ch.fd = ch->fd;
  rdma_cm_event fake_ev{};
  rdma_cm_event* ev = nullptr;
  sockaddr_in a = ip4(kLocal);
  EXPECT_FAILS(rdma_destroy_id(&fake), EINVAL);
  EXPECT_FAILS(rdma_bind_addr(&fake, sa(a)), EINVAL);
  EXPECT_FAILS(rdma_listen(&fake, 1), EINVAL);
  rdma_cm_id* out = nullptr;
  EXPECT_FAILS(rdma_create_id(&fake_ch, &out, nullptr, RDMA_PS_TCP), EINVAL);
  EXPECT_FAILS(rdma_get_cm_event(&fake_ch, &ev), EINVAL);
  EXPECT_FAILS(rdma_migrate_id(id, &fake_ch), EINVAL);
  EXPECT_FAILS(rdma_ack_cm_event(&fake_ev), EINVAL);
  // A destroyed identifier.
  rdma_cm_id* gone = nullptr;
  ASSERT_EQ(0, rdma_create_id(ch, &gone, nullptr, RDMA_PS_TCP));
  ASSERT_EQ(0, rdma_destroy_id(gone));
  EXPECT_FAILS(rdma_destroy_id(gone), EINVAL);
  EXPECT_FAILS(rdma_bind_addr(gone, sa(a)), EINVAL);
}

TEST_F(RdmacmMisuse, BadPortSpaceAndFamily) {
  rdma_cm_id* out = nullptr;
  EXPECT_FAILS(rdma_create_id(ch, &out, nullptr, rdma_port_space(0x1234)), EINVAL);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  auto* bad = reinterpret_cast<sockaddr*>(&un);
  sockaddr_in good = ip4(kLocal, 7471);
  EXPECT_FAILS(rdma_bind_addr(id, bad), EINVAL);
  EXPECT_FAILS(rdma_resolve_addr(id, nullptr, bad, 100), EINVAL);
  EXPECT_FAILS(rdma_resolve_addr(id, bad, sa(good), 100), EINVAL);
  EXPECT_FAILS(rdma_join_multicast(id, bad, nullptr), EINVAL);
  EXPECT_FAILS(rdma_leave_multicast(id, bad), EINVAL);
  sockaddr_in group = ip4("239.1.2.3");
  EXPECT_FAILS(rdma_leave_multicast(id, sa(group)), EADDRNOTAVAIL);  // never joined
}

TEST_F(RdmacmMisuse, UnresolvedIdentifier) {
  rdma_conn_param cp{};
  cp.qp_num = 0x123;
  ibv_qp_init_attr qia{};
  qia.qp_type = IBV_QPT_RC;
  qia.cap.max_send_wr = qia.cap.max_recv_wr = 4;
  qia.cap.max_send_sge = qia.cap.max_recv_sge = 1;
  ibv_qp_attr qa{};
  qa.qp_state = IBV_QPS_INIT;
  int mask = 0;
  EXPECT_EQ(nullptr, id->verbs);
  EXPECT_FAILS(rdma_connect(id, &cp), EINVAL);
  EXPECT_FAILS(rdma_resolve_route(id, 100), EINVAL);
  EXPECT_FAILS(rdma_accept(id, &cp), EINVAL);
  EXPECT_FAILS(rdma_disconnect(id), EINVAL);
  EXPECT_FAILS(rdma_establish(id), EINVAL);
  EXPECT_FAILS(rdma_reject(id, nullptr, 0), EINVAL);
  EXPECT_FAILS(rdma_create_qp(id, nullptr, &qia), EINVAL);
  EXPECT_FAILS(rdma_init_qp_attr(id, &qa, &mask), EINVAL);
  ibv_srq_init_attr sia{};
  sia.attr.max_wr = 4;
  sia.attr.max_sge = 1;
  EXPECT_FAILS(rdma_create_srq(id, nullptr, &sia), EINVAL);
}

TEST_F(RdmacmMisuse, BindAndListen) {
  sockaddr_in nowhere = ip4("192.0.2.1", 7471);  // TEST-NET-1: no dverbs port has it
  EXPECT_FAILS(rdma_bind_addr(id, sa(nowhere)), EADDRNOTAVAIL);
  sockaddr_in a = ip4(kLocal, 7471);
  ASSERT_EQ(0, rdma_bind_addr(id, sa(a))) << std::strerror(errno);
  EXPECT_NE(nullptr, id->verbs);  // bound to a device's address: the device is known
  EXPECT_EQ(htons(7471), rdma_get_src_port(id));
  EXPECT_FAILS(rdma_bind_addr(id, sa(a)), EINVAL);  // twice
  // Another identifier on the same address and port.
  rdma_cm_id* other = nullptr;
  ASSERT_EQ(0, rdma_create_id(ch, &other, nullptr, RDMA_PS_TCP));
  errno = 0;
  EXPECT_EQ(-1, rdma_bind_addr(other, sa(a)));
  EXPECT_EQ(EADDRINUSE, errno);
  // Listening on an unbound identifier binds it to the wildcard address (kernel semantics).
  ASSERT_EQ(0, rdma_listen(other, 4)) << std::strerror(errno);
  EXPECT_EQ(AF_INET, rdma_get_local_addr(other)->sa_family);
  EXPECT_EQ(0u, reinterpret_cast<sockaddr_in*>(rdma_get_local_addr(other))->sin_addr.s_addr);
  rdma_conn_param cp{};
  cp.qp_num = 0x123;
  EXPECT_FAILS(rdma_connect(other, &cp), EINVAL);  // no route
  EXPECT_FAILS(rdma_accept(other, &cp), EINVAL);   // a listener is no request
  rdma_cm_id* req = nullptr;
  EXPECT_FAILS(rdma_get_request(other, &req), EINVAL);  // asynchronous listener
  EXPECT_EQ(0, rdma_destroy_id(other));
  ASSERT_EQ(0, rdma_listen(id, 4)) << std::strerror(errno);
}

TEST_F(RdmacmMisuse, QpOnBoundIdentifier) {
  sockaddr_in a = ip4(kLocal);
  ASSERT_EQ(0, rdma_bind_addr(id, sa(a))) << std::strerror(errno);
  ASSERT_NE(nullptr, id->verbs);
  ASSERT_NE(nullptr, id->pd);
  ibv_qp_attr qa{};
  int mask = 0;
  qa.qp_state = IBV_QPS_RTR;
  EXPECT_FAILS(rdma_init_qp_attr(id, &qa, &mask), EINVAL);  // no connection yet
  qa.qp_state = IBV_QPS_INIT;
  ASSERT_EQ(0, rdma_init_qp_attr(id, &qa, &mask));
  EXPECT_EQ(IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS, mask);
  EXPECT_EQ(id->port_num, qa.port_num);

  ibv_qp_init_attr qia{};
  qia.qp_type = IBV_QPT_RC;
  qia.cap.max_send_wr = qia.cap.max_recv_wr = 4;
  qia.cap.max_send_sge = qia.cap.max_recv_sge = 1;
  ASSERT_EQ(0, rdma_create_qp(id, nullptr, &qia)) << std::strerror(errno);
  ASSERT_NE(nullptr, id->qp);
  EXPECT_NE(nullptr, id->send_cq);
  EXPECT_NE(nullptr, id->recv_cq_channel);
  ibv_qp_attr got{};
  ibv_qp_init_attr init{};
  ASSERT_EQ(0, ibv_query_qp(id->qp, &got, IBV_QP_STATE, &init));
  EXPECT_EQ(IBV_QPS_INIT, got.qp_state);
  ibv_qp_init_attr again = qia;
  EXPECT_FAILS(rdma_create_qp(id, nullptr, &again), EINVAL);  // a second QP
  EXPECT_FAILS(rdma_establish(id), EINVAL);                   // librdmacm's job with a QP
  EXPECT_FAILS(rdma_set_local_ece(id, nullptr), EINVAL);
  rdma_conn_param cp{};
  EXPECT_FAILS(rdma_accept(id, &cp), EINVAL);  // not a request
  EXPECT_FAILS(rdma_disconnect(id), EINVAL);   // not connected
  rdma_destroy_qp(id);
  EXPECT_EQ(nullptr, id->qp);
  EXPECT_EQ(nullptr, id->send_cq);

  // CQs that contradict the ones the identifier has.
  ibv_cq* cq = ibv_create_cq(id->verbs, 4, nullptr, nullptr, 0);
  ASSERT_NE(nullptr, cq);
  ibv_qp_init_attr_ex x{};
  x.qp_type = IBV_QPT_RC;
  x.cap = qia.cap;
  x.send_cq = x.recv_cq = cq;
  x.comp_mask = IBV_QP_INIT_ATTR_PD;
  x.pd = id->pd;
  ibv_qp_init_attr_ex first = x;
  first.send_cq = first.recv_cq = nullptr;
  ASSERT_EQ(0, rdma_create_qp_ex(id, &first)) << std::strerror(errno);
  ibv_qp* qp = id->qp;
  id->qp = nullptr;  // pretend: the identifier's CQs stay
  EXPECT_FAILS(rdma_create_qp_ex(id, &x), EINVAL);
  id->qp = qp;
  rdma_destroy_qp(id);
  ibv_destroy_cq(cq);
}

TEST_F(RdmacmMisuse, Options) {
  int one = 1;
  uint8_t tos = 0x20;
  EXPECT_FAILS(rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, nullptr, 4), EINVAL);
  EXPECT_FAILS(rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, &one, 1), EINVAL);
  EXPECT_FAILS(rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, 4), EINVAL);
  EXPECT_FAILS(rdma_set_option(id, RDMA_OPTION_ID, 99, &one, sizeof one), ENOSYS);
  EXPECT_FAILS(rdma_set_option(id, 42, RDMA_OPTION_ID_TOS, &tos, 1), ENOSYS);
  EXPECT_FAILS(rdma_set_option(id, RDMA_OPTION_IB, RDMA_OPTION_IB_PATH, &one, sizeof one), ENOSYS);
  EXPECT_EQ(0, rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_REUSEADDR, &one, sizeof one));
  EXPECT_EQ(0, rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &tos, sizeof tos));
}

TEST_F(RdmacmMisuse, MulticastEx) {
  sockaddr_in group = ip4("239.1.2.3");
  rdma_cm_join_mc_attr_ex mc{};
  mc.addr = sa(group);
  mc.comp_mask = RDMA_CM_JOIN_MC_ATTR_RESERVED;
  EXPECT_FAILS(rdma_join_multicast_ex(id, &mc, nullptr), ENOTSUP);
  mc.comp_mask = RDMA_CM_JOIN_MC_ATTR_JOIN_FLAGS;
  EXPECT_FAILS(rdma_join_multicast_ex(id, &mc, nullptr), EINVAL);  // no address
  mc.comp_mask = RDMA_CM_JOIN_MC_ATTR_ADDRESS;
  EXPECT_FAILS(rdma_join_multicast_ex(id, &mc, nullptr), EINVAL);  // no flags
  mc.comp_mask |= RDMA_CM_JOIN_MC_ATTR_JOIN_FLAGS;
  mc.join_flags = RDMA_MC_JOIN_FLAG_RESERVED;
  EXPECT_FAILS(rdma_join_multicast_ex(id, &mc, nullptr), EINVAL);
}

TEST_F(RdmacmMisuse, ChannelsAndEvents) {
  rdma_cm_event* ev = nullptr;
  const int fl = fcntl(ch->fd, F_GETFL);
  ASSERT_EQ(0, fcntl(ch->fd, F_SETFL, fl | O_NONBLOCK));
  EXPECT_FAILS(rdma_get_cm_event(ch, &ev), EAGAIN);
  // A synchronous identifier has its own channel; it cannot drop it for none.
  rdma_cm_id* sync = nullptr;
  ASSERT_EQ(0, rdma_create_id(nullptr, &sync, nullptr, RDMA_PS_TCP));
  EXPECT_NE(nullptr, sync->channel);
  EXPECT_NE(ch, sync->channel);
  EXPECT_FAILS(rdma_migrate_id(sync, nullptr), EINVAL);
  rdma_cm_id* req = nullptr;
  sockaddr_in a = ip4(kLocal, 7472);
  ASSERT_EQ(0, rdma_bind_addr(sync, sa(a)));
  ASSERT_EQ(0, rdma_listen(sync, 1));
  EXPECT_EQ(0, rdma_migrate_id(sync, ch));  // now asynchronous
  EXPECT_FAILS(rdma_get_request(sync, &req), EINVAL);
  EXPECT_EQ(0, rdma_migrate_id(sync, nullptr));  // and synchronous again
  EXPECT_EQ(0, rdma_destroy_id(sync));
  // A channel with identifiers on it is not destroyed (errno EBUSY); the identifier works.
  rdma_event_channel* busy = rdma_create_event_channel();
  ASSERT_NE(nullptr, busy);
  rdma_cm_id* on_busy = nullptr;
  ASSERT_EQ(0, rdma_create_id(busy, &on_busy, nullptr, RDMA_PS_TCP));
  errno = 0;
  rdma_destroy_event_channel(busy);
  EXPECT_EQ(EBUSY, errno);
  EXPECT_EQ(0, rdma_destroy_id(on_busy));
  rdma_destroy_event_channel(busy);
  EXPECT_STREQ("RDMA_CM_EVENT_ESTABLISHED", rdma_event_str(RDMA_CM_EVENT_ESTABLISHED));
  EXPECT_STREQ("UNKNOWN EVENT", rdma_event_str(rdma_cm_event_type(99)));
}

TEST_F(RdmacmMisuse, AddrInfoAndEndpoints) {
  rdma_addrinfo* res = nullptr;
  EXPECT_FAILS(rdma_getaddrinfo(nullptr, nullptr, nullptr, &res), EINVAL);
  EXPECT_FAILS(rdma_getaddrinfo(kLocal, "7471", nullptr, nullptr), EINVAL);
  rdma_addrinfo hints{};
  hints.ai_flags = RAI_NUMERICHOST;
  EXPECT_EQ(EAI_NONAME, rdma_getaddrinfo("not-an-address", "7471", &hints, &res));
  hints.ai_flags = RAI_PASSIVE | RAI_NUMERICHOST;
  ASSERT_EQ(0, rdma_getaddrinfo(kLocal, "7473", &hints, &res));
  ASSERT_NE(nullptr, res->ai_src_addr);
  EXPECT_EQ(nullptr, res->ai_dst_addr);
  EXPECT_EQ(RAI_PASSIVE, res->ai_flags);
  EXPECT_EQ(AF_INET, res->ai_family);
  EXPECT_EQ(RDMA_PS_TCP, res->ai_port_space);
  EXPECT_EQ(IBV_QPT_RC, res->ai_qp_type);
  EXPECT_EQ(htons(7473), reinterpret_cast<sockaddr_in*>(res->ai_src_addr)->sin_port);
  // A passive endpoint: a synchronous listener-to-be bound to the address.
  rdma_cm_id* ep = nullptr;
  ASSERT_EQ(0, rdma_create_ep(&ep, res, nullptr, nullptr)) << std::strerror(errno);
  EXPECT_NE(nullptr, ep->verbs);
  rdma_destroy_ep(ep);
  // An active request without a destination.
  res->ai_flags = 0;
  EXPECT_FAILS(rdma_create_ep(&ep, res, nullptr, nullptr), EINVAL);
  rdma_freeaddrinfo(res);
  hints.ai_flags = RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_UDP;
  hints.ai_qp_type = IBV_QPT_UD;
  ASSERT_EQ(0, rdma_getaddrinfo(kLocal, "7474", &hints, &res));
  EXPECT_NE(nullptr, res->ai_dst_addr);
  EXPECT_EQ(RDMA_PS_UDP, res->ai_port_space);
  rdma_freeaddrinfo(res);
}

TEST_F(RdmacmMisuse, Devices) {
  int n = -1;
  ibv_context** list = rdma_get_devices(&n);
  ASSERT_NE(nullptr, list) << std::strerror(errno);
  ASSERT_GE(n, 1);
  EXPECT_EQ(nullptr, list[n]);
  EXPECT_STREQ("dverbs0", ibv_get_device_name(list[0]->device));
  ibv_context** again = rdma_get_devices(nullptr);  // the same contexts, opened once
  ASSERT_NE(nullptr, again);
  EXPECT_EQ(list[0], again[0]);
  rdma_free_devices(again);
  rdma_free_devices(list);
}

// The next event on `ch`, which must be `type` for `id` (acked unless `keep`).
rdma_cm_event* next_event(rdma_event_channel* ch, rdma_cm_event_type type, rdma_cm_id* id,
                          bool keep = false) {
  rdma_cm_event* e = nullptr;
  if (rdma_get_cm_event(ch, &e) != 0) {
    ADD_FAILURE() << "rdma_get_cm_event: " << std::strerror(errno);
    return nullptr;
  }
  EXPECT_STREQ(rdma_event_str(type), rdma_event_str(e->event)) << "status " << e->status;
  if (id) {
    EXPECT_EQ(id, e->id);
  }
  if (keep) return e;
  rdma_ack_cm_event(e);
  return nullptr;
}

ibv_qp_init_attr rc_attr() {
  ibv_qp_init_attr a{};
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = a.cap.max_recv_wr = 8;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  a.sq_sig_all = 1;
  return a;
}

// Not misuse: the whole life of an RC connection across the loopback port, both ends in
// this process on one channel, so that the calls above are known to fail for their reason
// and not because nothing works. The QP transitions are librdmacm's (INIT at create, RTR
// and RTS at accept and on the connect response, ERR at disconnect).
TEST(RdmacmLoopback, ConnectSendDisconnect) {
  rdma_event_channel* ch = rdma_create_event_channel();
  ASSERT_NE(nullptr, ch);
  rdma_cm_id *listen = nullptr, *act = nullptr;
  ASSERT_EQ(0, rdma_create_id(ch, &listen, nullptr, RDMA_PS_TCP));
  ASSERT_EQ(0, rdma_create_id(ch, &act, nullptr, RDMA_PS_TCP));
  sockaddr_in a = ip4(kLocal, 7480);
  ASSERT_EQ(0, rdma_bind_addr(listen, sa(a))) << std::strerror(errno);
  ASSERT_EQ(0, rdma_listen(listen, 4)) << std::strerror(errno);

  ASSERT_EQ(0, rdma_resolve_addr(act, nullptr, sa(a), 2000)) << std::strerror(errno);
  next_event(ch, RDMA_CM_EVENT_ADDR_RESOLVED, act);
  ASSERT_NE(nullptr, act->verbs);
  ASSERT_EQ(0, rdma_resolve_route(act, 2000)) << std::strerror(errno);
  next_event(ch, RDMA_CM_EVENT_ROUTE_RESOLVED, act);
  EXPECT_EQ(1, act->route.num_paths);
  ibv_qp_init_attr qa = rc_attr();
  ASSERT_EQ(0, rdma_create_qp(act, nullptr, &qa)) << std::strerror(errno);
  rdma_conn_param cp{};
  const char hello[] = "hello";
  cp.private_data = hello;
  cp.private_data_len = sizeof hello;
  cp.responder_resources = cp.initiator_depth = 1;
  cp.retry_count = cp.rnr_retry_count = 7;
  ASSERT_EQ(0, rdma_connect(act, &cp)) << std::strerror(errno);

  rdma_cm_event* req = next_event(ch, RDMA_CM_EVENT_CONNECT_REQUEST, nullptr, true);
  ASSERT_NE(nullptr, req);
  EXPECT_EQ(listen, req->listen_id);
  rdma_cm_id* pas = req->id;
  ASSERT_NE(nullptr, pas);
  EXPECT_NE(listen, pas);
  EXPECT_EQ(act->verbs, pas->verbs);
  ASSERT_GE(req->param.conn.private_data_len, sizeof hello);
  EXPECT_STREQ(hello, static_cast<const char*>(req->param.conn.private_data));
  EXPECT_EQ(act->qp->qp_num, req->param.conn.qp_num);
  rdma_ack_cm_event(req);
  ibv_qp_init_attr pa = rc_attr();
  ASSERT_EQ(0, rdma_create_qp(pas, nullptr, &pa)) << std::strerror(errno);
  char rbuf[64] = {};
  ibv_mr* rmr = ibv_reg_mr(pas->pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  ASSERT_NE(nullptr, rmr);
  ASSERT_EQ(0, rdma_post_recv(pas, nullptr, rbuf, sizeof rbuf, rmr));
  rdma_conn_param ap{};
  ap.responder_resources = ap.initiator_depth = 1;
  ap.rnr_retry_count = 7;
  ASSERT_EQ(0, rdma_accept(pas, &ap)) << std::strerror(errno);
  ibv_qp_attr got{};
  ibv_qp_init_attr gi{};
  ASSERT_EQ(0, ibv_query_qp(pas->qp, &got, IBV_QP_STATE, &gi));
  EXPECT_EQ(IBV_QPS_RTS, got.qp_state);  // before the REP went out

  // The active side sees ESTABLISHED (its QP in RTS, the RTU sent), then the passive side.
  next_event(ch, RDMA_CM_EVENT_ESTABLISHED, act);
  ASSERT_EQ(0, ibv_query_qp(act->qp, &got, IBV_QP_STATE, &gi));
  EXPECT_EQ(IBV_QPS_RTS, got.qp_state);
  next_event(ch, RDMA_CM_EVENT_ESTABLISHED, pas);

  char sbuf[] = "over the wire";
  ibv_mr* smr = ibv_reg_mr(act->pd, sbuf, sizeof sbuf, 0);
  ASSERT_NE(nullptr, smr);
  ASSERT_EQ(0, rdma_post_send(act, nullptr, sbuf, sizeof sbuf, smr, 0));
  ibv_wc wc{};
  ASSERT_EQ(1, rdma_get_send_comp(act, &wc)) << std::strerror(errno);
  EXPECT_EQ(IBV_WC_SUCCESS, wc.status);
  ASSERT_EQ(1, rdma_get_recv_comp(pas, &wc)) << std::strerror(errno);
  EXPECT_EQ(IBV_WC_SUCCESS, wc.status);
  EXPECT_STREQ(sbuf, rbuf);

  ASSERT_EQ(0, rdma_disconnect(act)) << std::strerror(errno);
  ASSERT_EQ(0, ibv_query_qp(act->qp, &got, IBV_QP_STATE, &gi));
  EXPECT_EQ(IBV_QPS_ERR, got.qp_state);
  next_event(ch, RDMA_CM_EVENT_DISCONNECTED, pas);
  ASSERT_EQ(0, rdma_disconnect(pas)) << std::strerror(errno);  // answers the DREQ
  next_event(ch, RDMA_CM_EVENT_DISCONNECTED, act);

  ibv_dereg_mr(smr);
  ibv_dereg_mr(rmr);
  rdma_destroy_qp(pas);
  rdma_destroy_qp(act);
  EXPECT_EQ(0, rdma_destroy_id(pas));
  EXPECT_EQ(0, rdma_destroy_id(act));
  EXPECT_EQ(0, rdma_destroy_id(listen));
  rdma_destroy_event_channel(ch);
}

// A request handed to the application is its own, as with the kernel's rdma_cm: it
// outlives its listener and can still be rejected (or accepted).
TEST(RdmacmLoopback, RequestOutlivedByItsListener) {
  rdma_event_channel* ch = rdma_create_event_channel();
  ASSERT_NE(nullptr, ch);
  rdma_cm_id *listen = nullptr, *act = nullptr;
  ASSERT_EQ(0, rdma_create_id(ch, &listen, nullptr, RDMA_PS_TCP));
  ASSERT_EQ(0, rdma_create_id(nullptr, &act, nullptr, RDMA_PS_TCP));  // synchronous
  sockaddr_in a = ip4(kLocal, 7481);
  ASSERT_EQ(0, rdma_bind_addr(listen, sa(a)));
  ASSERT_EQ(0, rdma_listen(listen, 4));
  ASSERT_EQ(0, rdma_resolve_addr(act, nullptr, sa(a), 2000)) << std::strerror(errno);
  ASSERT_EQ(0, rdma_resolve_route(act, 2000)) << std::strerror(errno);
  rdma_conn_param cp{};
  cp.qp_num = 0x1234;  // no QP on the identifier: the application's own
  cp.retry_count = cp.rnr_retry_count = 7;
  // The synchronous connect waits for the answer; answer from another thread.
  rdma_cm_id* pas = nullptr;
  std::thread listener([&] {
    rdma_cm_event* req = next_event(ch, RDMA_CM_EVENT_CONNECT_REQUEST, nullptr, true);
    if (!req) return;
    pas = req->id;
    rdma_ack_cm_event(req);
    EXPECT_EQ(0, rdma_destroy_id(listen));  // the request stays
    EXPECT_EQ(0, rdma_reject(pas, "no", 3));
  });
  errno = 0;
  EXPECT_EQ(-1, rdma_connect(act, &cp));
  EXPECT_EQ(ECONNREFUSED, errno);
  listener.join();
  ASSERT_NE(nullptr, pas);
  rdma_conn_param ap{};
  ap.qp_num = 0x4321;
  EXPECT_FAILS(rdma_accept(pas, &ap), EINVAL);  // rejected already
  EXPECT_EQ(0, rdma_destroy_id(pas));
  EXPECT_EQ(0, rdma_destroy_id(act));
  rdma_destroy_event_channel(ch);
}

// rsockets misuse: every call on a descriptor that is no open rsocket (never one, a real
// file descriptor, one rclose'd) fails with EBADF; the rest fail for their reason.
TEST(RdmacmRsockets, BadDescriptors) {
  char buf[8];
  sockaddr_in a = ip4(kLocal, 7475);
  socklen_t len = sizeof a;
  iovec iov{buf, sizeof buf};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  int v = 1;
  const int closed = rsocket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(closed, 0) << std::strerror(errno);
  EXPECT_EQ(0, rclose(closed));
  for (int fd : {-1, 0, 2, 100000, closed}) {
    SCOPED_TRACE(fd);
    EXPECT_FAILS(rbind(fd, sa(a), sizeof a), EBADF);
    EXPECT_FAILS(rlisten(fd, 1), EBADF);
    EXPECT_FAILS(raccept(fd, sa(a), &len), EBADF);
    EXPECT_FAILS(rconnect(fd, sa(a), sizeof a), EBADF);
    EXPECT_FAILS(rshutdown(fd, SHUT_RDWR), EBADF);
    EXPECT_FAILS(rclose(fd), EBADF);
    EXPECT_FAILS(rrecv(fd, buf, sizeof buf, 0), EBADF);
    EXPECT_FAILS(rrecvfrom(fd, buf, sizeof buf, 0, sa(a), &len), EBADF);
    EXPECT_FAILS(rrecvmsg(fd, &msg, 0), EBADF);
    EXPECT_FAILS(rsend(fd, buf, sizeof buf, 0), EBADF);
    EXPECT_FAILS(rsendto(fd, buf, sizeof buf, 0, sa(a), sizeof a), EBADF);
    EXPECT_FAILS(rsendmsg(fd, &msg, 0), EBADF);
    EXPECT_FAILS(rread(fd, buf, sizeof buf), EBADF);
    EXPECT_FAILS(rreadv(fd, &iov, 1), EBADF);
    EXPECT_FAILS(rwrite(fd, buf, sizeof buf), EBADF);
    EXPECT_FAILS(rwritev(fd, &iov, 1), EBADF);
    EXPECT_FAILS(rgetpeername(fd, sa(a), &len), EBADF);
    EXPECT_FAILS(rgetsockname(fd, sa(a), &len), EBADF);
    EXPECT_FAILS(rsetsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v), EBADF);
    EXPECT_FAILS(rgetsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, &len), EBADF);
    EXPECT_FAILS(rfcntl(fd, F_GETFL), EBADF);
    EXPECT_FAILS(riomap(fd, buf, sizeof buf, PROT_WRITE, 0, -1), EBADF);
    EXPECT_FAILS(riounmap(fd, buf, sizeof buf), EBADF);
  }
  // rpoll reports a descriptor that is not open as POLLNVAL; rselect fails.
  pollfd pfd{closed, POLLIN, 0};
  EXPECT_EQ(1, rpoll(&pfd, 1, 0));
  EXPECT_EQ(POLLNVAL, pfd.revents);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(closed, &rd);
  timeval zero{};
  EXPECT_FAILS(rselect(closed + 1, &rd, nullptr, nullptr, &zero), EBADF);
  EXPECT_FAILS(rselect(-1, nullptr, nullptr, nullptr, &zero), EINVAL);
}

TEST(RdmacmRsockets, SocketArguments) {
  EXPECT_FAILS(rsocket(AF_INET, SOCK_DGRAM, 0), EPROTONOSUPPORT);  // datagram rsockets
  EXPECT_FAILS(rsocket(AF_INET, SOCK_STREAM, IPPROTO_UDP), EPROTONOSUPPORT);
  EXPECT_FAILS(rsocket(AF_INET, SOCK_SEQPACKET, 0), ESOCKTNOSUPPORT);
  EXPECT_FAILS(rsocket(AF_UNIX, SOCK_STREAM, 0), EAFNOSUPPORT);
  EXPECT_FAILS(rsocket(AF_IB, SOCK_STREAM, 0), EAFNOSUPPORT);
}

// The calls a fresh, a listening and an unconnected socket refuse, and the options.
TEST(RdmacmRsockets, StateAndOptions) {
  char buf[8] = {};
  const int s = rsocket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
  ASSERT_GE(s, 0) << std::strerror(errno);
  EXPECT_FAILS(rsend(s, buf, sizeof buf, 0), ENOTCONN);
  EXPECT_FAILS(rrecv(s, buf, sizeof buf, 0), ENOTCONN);
  EXPECT_FAILS(rshutdown(s, SHUT_RDWR), ENOTCONN);
  EXPECT_FAILS(rshutdown(s, 42), EINVAL);
  EXPECT_FAILS(raccept(s, nullptr, nullptr), EINVAL);  // not listening
  sockaddr_in a{};
  socklen_t len = sizeof a;
  EXPECT_FAILS(rgetpeername(s, sa(a), &len), ENOTCONN);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  EXPECT_FAILS(rconnect(s, reinterpret_cast<sockaddr*>(&un), sizeof un), EAFNOSUPPORT);
  EXPECT_FAILS(rbind(s, nullptr, 0), EINVAL);
  sockaddr_in nowhere = ip4("192.0.2.1", 7476);
  EXPECT_FAILS(rbind(s, sa(nowhere), sizeof nowhere), EADDRNOTAVAIL);
  sockaddr_in local = ip4(kLocal, 7476);
  EXPECT_FAILS(rbind(s, sa(local), sizeof local - 1), EINVAL);

  int v = 1;
  socklen_t vl = sizeof v;
  EXPECT_EQ(0, rsetsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v)) << std::strerror(errno);
  EXPECT_EQ(0, rsetsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v));
  EXPECT_EQ(0, rsetsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof v));
  v = 1 << 19;
  EXPECT_EQ(0, rsetsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof v));
  v = 0;
  EXPECT_EQ(0, rgetsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, &vl));
  EXPECT_EQ(1 << 20, v);  // doubled, as Linux does
  v = 0;
  EXPECT_EQ(0, rgetsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl));
  EXPECT_EQ(1, v);
  linger lg{1, 5};
  EXPECT_EQ(0, rsetsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
  v = 64;
  EXPECT_EQ(0, rsetsockopt(s, SOL_RDMA, RDMA_INLINE, &v, sizeof v));
  EXPECT_FAILS(rsetsockopt(s, SOL_SOCKET, SO_BROADCAST, &v, sizeof v), ENOPROTOOPT);
  EXPECT_FAILS(rsetsockopt(s, IPPROTO_IP, IP_TTL, &v, sizeof v), ENOPROTOOPT);
  EXPECT_FAILS(rsetsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, 1), EINVAL);
  EXPECT_FAILS(rsetsockopt(s, SOL_SOCKET, SO_REUSEADDR, nullptr, sizeof v), EINVAL);
  v = 0;
  EXPECT_FAILS(rsetsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof v), EINVAL);
  EXPECT_FAILS(rsetsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v, sizeof v), ENOPROTOOPT);
  EXPECT_FAILS(rgetsockopt(s, SOL_SOCKET, SO_PEERCRED, &v, &vl), ENOPROTOOPT);
  vl = 1;
  EXPECT_FAILS(rgetsockopt(s, SOL_SOCKET, SO_ERROR, &v, &vl), EINVAL);
  vl = sizeof v;
  EXPECT_EQ(0, rgetsockopt(s, SOL_SOCKET, SO_ERROR, &v, &vl));
  EXPECT_EQ(0, v);
  EXPECT_EQ(0, rgetsockopt(s, SOL_SOCKET, SO_TYPE, &v, &vl));
  EXPECT_EQ(SOCK_STREAM, v);

  EXPECT_EQ(O_RDWR, rfcntl(s, F_GETFL));
  EXPECT_EQ(0, rfcntl(s, F_SETFL, O_NONBLOCK));
  EXPECT_EQ(O_RDWR | O_NONBLOCK, rfcntl(s, F_GETFL));
  EXPECT_FAILS(rfcntl(s, F_GETLK, nullptr), EINVAL);
  EXPECT_FAILS(riomap(s, buf, sizeof buf, PROT_WRITE, 0, -1), ENOSYS);
  EXPECT_FAILS(riounmap(s, buf, sizeof buf), ENOSYS);
  errno = 0;
  EXPECT_EQ(size_t(-1), riowrite(s, buf, sizeof buf, 0, 0));
  EXPECT_EQ(ENOSYS, errno);

  ASSERT_EQ(0, rbind(s, sa(local), sizeof local)) << std::strerror(errno);
  EXPECT_FAILS(rbind(s, sa(local), sizeof local), EINVAL);  // bound already
  ASSERT_EQ(0, rlisten(s, 4)) << std::strerror(errno);
  EXPECT_FAILS(raccept(s, nullptr, nullptr), EAGAIN);  // O_NONBLOCK, no request
  EXPECT_FAILS(rconnect(s, sa(local), sizeof local), EINVAL);
  EXPECT_FAILS(rrecv(s, buf, sizeof buf, 0), ENOTCONN);
  v = 8;  // as rdma-core, SOL_RDMA options are taken until a connection exists
  EXPECT_EQ(0, rsetsockopt(s, SOL_RDMA, RDMA_INLINE, &v, sizeof v));
  len = sizeof a;
  ASSERT_EQ(0, rgetsockname(s, sa(a), &len));
  EXPECT_EQ(sizeof a, len);
  EXPECT_EQ(htons(7476), a.sin_port);
  v = 0;
  EXPECT_EQ(0, rgetsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &v, &vl));
  EXPECT_EQ(1, v);
  EXPECT_EQ(0, rclose(s));

  // Nobody listens there: the blocking rconnect is refused.
  const int c = rsocket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(c, 0);
  sockaddr_in none = ip4(kLocal, 7477);
  EXPECT_FAILS(rconnect(c, sa(none), sizeof none), ECONNREFUSED);
  EXPECT_EQ(0, rclose(c));
}

// Sends `n` bytes of a pattern from `tx` and reads them on `rx`, both non-blocking, in one
// thread; true when they arrived intact.
bool stream_pattern(int tx, int rx, size_t n) {
  std::vector<uint8_t> out(n), in(n);
  for (size_t i = 0; i < n; i++) out[i] = uint8_t(i * 7 + 3);
  size_t sent = 0, got = 0;
  for (int spins = 0; got < n && spins < 10'000'000; spins++) {
    if (sent < n) {
      const ssize_t k = rsend(tx, out.data() + sent, n - sent, MSG_DONTWAIT);
      if (k > 0)
        sent += size_t(k);
      else if (errno != EAGAIN)
        return ADD_FAILURE() << "rsend: " << std::strerror(errno), false;
    }
    const ssize_t k = rrecv(rx, in.data() + got, n - got, MSG_DONTWAIT);
    if (k > 0)
      got += size_t(k);
    else if (k == 0)
      return ADD_FAILURE() << "rrecv: early end of stream", false;
    else if (errno != EAGAIN)
      return ADD_FAILURE() << "rrecv: " << std::strerror(errno), false;
  }
  return got == n && out == in;
}

// Not misuse: a stream across the loopback port in one process — a non-blocking connect
// finished through rpoll, data both ways (more than the windows hold), scatter/gather,
// MSG_PEEK, rselect, and the end of the stream after rshutdown.
TEST(RdmacmRsockets, LoopbackStream) {
  const int l = rsocket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(l, 0) << std::strerror(errno);
  sockaddr_in a = ip4(kLocal, 7490);
  int v = 1;
  ASSERT_EQ(0, rsetsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v));
  ASSERT_EQ(0, rbind(l, sa(a), sizeof a)) << std::strerror(errno);
  ASSERT_EQ(0, rlisten(l, 4)) << std::strerror(errno);
  const int c = rsocket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(c, 0);
  EXPECT_FAILS(rconnect(c, sa(a), sizeof a), EINPROGRESS);
  EXPECT_FAILS(rconnect(c, sa(a), sizeof a), EALREADY);
  int p = -1;
  bool writable = false;
  for (int i = 0; i < 500 && (p < 0 || !writable); i++) {
    pollfd fds[2] = {{l, POLLIN, 0}, {c, POLLOUT, 0}};
    ASSERT_GE(rpoll(fds, 2, 20), 0) << std::strerror(errno);
    EXPECT_EQ(0, fds[0].revents & ~POLLIN);
    EXPECT_EQ(0, fds[1].revents & ~POLLOUT);
    if (fds[0].revents & POLLIN) {
      sockaddr_in peer{};
      socklen_t len = sizeof peer;
      p = raccept(l, sa(peer), &len);
      ASSERT_GE(p, 0) << std::strerror(errno);
      EXPECT_EQ(sizeof peer, len);
      EXPECT_EQ(AF_INET, peer.sin_family);
    }
    writable = fds[1].revents & POLLOUT;
  }
  ASSERT_GE(p, 0);
  ASSERT_TRUE(writable);
  socklen_t vl = sizeof v;
  ASSERT_EQ(0, rgetsockopt(c, SOL_SOCKET, SO_ERROR, &v, &vl));
  EXPECT_EQ(0, v);
  EXPECT_FAILS(rconnect(c, sa(a), sizeof a), EISCONN);
  EXPECT_FAILS(rsetsockopt(c, SOL_RDMA, RDMA_INLINE, &v, sizeof v), EINVAL);  // too late
  sockaddr_in peer{};
  socklen_t len = sizeof peer;
  ASSERT_EQ(0, rgetpeername(c, sa(peer), &len));
  EXPECT_EQ(a.sin_port, peer.sin_port);
  EXPECT_EQ(a.sin_addr.s_addr, peer.sin_addr.s_addr);
  len = sizeof peer;
  ASSERT_EQ(0, rgetsockname(p, sa(peer), &len));
  EXPECT_EQ(a.sin_port, peer.sin_port);
  EXPECT_EQ(O_RDWR, rfcntl(p, F_GETFL));  // an accepted socket blocks
  ASSERT_EQ(0, rfcntl(p, F_SETFL, O_NONBLOCK));

  EXPECT_TRUE(stream_pattern(c, p, 3 << 20));  // 3 MiB: many times each window
  EXPECT_TRUE(stream_pattern(p, c, 1 << 20));

  // Gather on one side, scatter, peek and select on the other. p blocks again: its send
  // ring may still wait for the ACKs of the stream (DVERBS_LCORES=1).
  ASSERT_EQ(0, rfcntl(p, F_SETFL, 0));
  char h[] = "head-", t[] = "tail";
  iovec wv[2] = {{h, 5}, {t, 4}};
  EXPECT_EQ(9, rwritev(p, wv, 2));
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(c, &rd);
  timeval tv{2, 0};
  EXPECT_EQ(1, rselect(c + 1, &rd, nullptr, nullptr, &tv));
  EXPECT_TRUE(FD_ISSET(c, &rd));
  char peekbuf[4] = {};
  ASSERT_EQ(0, rfcntl(c, F_SETFL, 0));  // blocking from here on
  EXPECT_EQ(4, rrecv(c, peekbuf, sizeof peekbuf, MSG_PEEK));
  EXPECT_EQ(0, std::memcmp("head", peekbuf, 4));
  char r1[3] = {}, r2[6] = {};
  iovec rv[2] = {{r1, 3}, {r2, 6}};
  EXPECT_EQ(9, rreadv(c, rv, 2));
  EXPECT_EQ(0, std::memcmp("hea", r1, 3));
  EXPECT_EQ(0, std::memcmp("d-tail", r2, 6));

  // The end of the stream: rrecv returns 0 after the data sent before the FIN.
  EXPECT_EQ(3, rsend(c, "bye", 3, 0));
  ASSERT_EQ(0, rshutdown(c, SHUT_WR));
  EXPECT_FAILS(rsend(c, "x", 1, 0), EPIPE);
  char bye[8] = {};
  EXPECT_EQ(3, rrecv(p, bye, sizeof bye, MSG_WAITALL));
  EXPECT_EQ(0, rrecv(p, bye, sizeof bye, 0));
  pollfd fin{p, POLLIN | POLLRDHUP, 0};
  EXPECT_EQ(1, rpoll(&fin, 1, 0));
  EXPECT_EQ(POLLIN | POLLRDHUP, fin.revents);
  EXPECT_EQ(2, rsend(p, "ok", 2, 0));  // half closed: the other way still works
  char ok[2] = {};
  EXPECT_EQ(2, rrecv(c, ok, sizeof ok, MSG_WAITALL));
  EXPECT_EQ(0, rclose(p));
  EXPECT_EQ(0, rrecv(c, ok, sizeof ok, 0));  // the peer closed
  EXPECT_EQ(0, rclose(c));
  EXPECT_EQ(0, rclose(l));
}

// Blocking calls in two threads: raccept and rconnect meet, and rclose wakes a thread
// blocked in rrecv on the same socket, which then fails with EBADF.
TEST(RdmacmRsockets, CloseWakesABlockedReader) {
  const int l = rsocket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(l, 0) << std::strerror(errno);
  sockaddr_in a = ip4(kLocal, 7491);
  ASSERT_EQ(0, rbind(l, sa(a), sizeof a)) << std::strerror(errno);
  ASSERT_EQ(0, rlisten(l, 4)) << std::strerror(errno);
  int p = -1;
  std::thread acceptor([&] { p = raccept(l, nullptr, nullptr); });
  const int c = rsocket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(c, 0);
  EXPECT_EQ(0, rconnect(c, sa(a), sizeof a)) << std::strerror(errno);
  acceptor.join();
  ASSERT_GE(p, 0);
  ssize_t n = 0;
  int err = 0;
  std::thread reader([&] {
    char b;
    n = rrecv(p, &b, 1, 0);
    err = errno;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(0, rclose(p));
  reader.join();
  EXPECT_EQ(-1, n);
  EXPECT_EQ(EBADF, err);
  char b;
  EXPECT_EQ(0, rrecv(c, &b, 1, 0));  // the end of the stream
  EXPECT_EQ(0, rclose(c));
  EXPECT_EQ(0, rclose(l));
}

}  // namespace
