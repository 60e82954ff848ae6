// Identifiers, addresses, listeners and the CM protocol (IBA 12.9, Annex A11): the dvcm_*
// interface of dvcm.h.
//
// One connection is one Id. The active side goes idle → addr_query → addr_resolved →
// route_resolved → req_sent (→ mra_rcvd) → rep_rcvd → established; the passive side's Id
// is born in req_rcvd from a listener's REQ → rep_sent → established. Both leave through
// dreq_sent / dreq_rcvd → timewait → idle. UD identifiers use SIDR instead (sidr_req_sent,
// sidr_req_rcvd). Every message that expects an answer is kept in Id::last and resent by
// run_timers every Id::interval, up to the peer's Max CM Retries; a duplicate request is
// answered from Id::last_reply. Events go to the identifier's channel: the queue plus one
// byte in its pipe each (internal.h, dvcm_channel).
//
// What the consumer sees follows the kernel's rdma_cm: CONNECT_REQUEST carries the
// consumer's part of the REQ private data (the IP CM header is stripped), the active side
// gets CONNECT_RESPONSE on REP and finishes with dvcm_establish (RTU) after moving its QP,
// REJ gives REJECTED with the reject reason as status, a REQ or REP that is never answered
// gives UNREACHABLE with -ETIMEDOUT.
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <new>
#include <random>

#include "cm/internal.h"

namespace dverbs::cm {

namespace {

// CM timing. A response timeout of 2^18 * 4.096 us ≈ 1.07 s: what we ask the peer to wait
// for our answers, and how long we wait for its (plus the packet lifetime). 15 retries
// (IBA's maximum) → a dead peer costs about 16 s, as the kernel's rdma_cm.
constexpr uint8_t kCmResponseTimeout = 18;
constexpr uint8_t kMaxCmRetries = 15;
constexpr uint8_t kMraServiceTimeout = 24;  // ≈ 69 s, as the kernel's rdma_cm
constexpr uint8_t kPacketLifeTime = 14;     // local ACK timeout we propose (≈ 67 ms)
constexpr auto kTimewait = std::chrono::seconds(1);
constexpr uint32_t kUdpQkey = 0x01234567;   // RDMA_UDP_QKEY
constexpr int kRejStatusBase = 0;           // REJECTED's status is the IBA reason itself

Clock::duration cm_timeout(uint8_t exp) {
  // 4.096 us * 2^exp, at least 100 ms so that a loaded 2-core box does not give up early.
  const auto ns = std::chrono::nanoseconds(uint64_t(4096) << std::min<uint8_t>(exp, 31));
  return std::max<Clock::duration>(ns, std::chrono::milliseconds(100));
}

uint32_t v4(const sockaddr_storage& s) {
  if (s.ss_family == AF_INET) return ntohl(reinterpret_cast<const sockaddr_in&>(s).sin_addr.s_addr);
  const auto& s6 = reinterpret_cast<const sockaddr_in6&>(s);
  if (IN6_IS_ADDR_V4MAPPED(&s6.sin6_addr)) {
    uint32_t a;
    std::memcpy(&a, s6.sin6_addr.s6_addr + 12, 4);
    return ntohl(a);
  }
  return 0;
}
uint16_t port_of(const sockaddr_storage& s) {
  return ntohs(s.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in&>(s).sin_port
                                      : reinterpret_cast<const sockaddr_in6&>(s).sin6_port);
}
void set_port(sockaddr_storage& s, uint16_t port) {
  if (s.ss_family == AF_INET)
    reinterpret_cast<sockaddr_in&>(s).sin_port = htons(port);
  else
    reinterpret_cast<sockaddr_in6&>(s).sin6_port = htons(port);
}
bool is_any(const sockaddr_storage& s) {
  if (s.ss_family == AF_INET) return reinterpret_cast<const sockaddr_in&>(s).sin_addr.s_addr == 0;
  return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(s).sin6_addr);
}
void make_v4(sockaddr_storage& s, uint32_t ip, uint16_t port) {
  std::memset(&s, 0, sizeof s);
  auto& a = reinterpret_cast<sockaddr_in&>(s);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(ip);
  a.sin_port = htons(port);
}
void mapped_gid(uint32_t ip, uint8_t gid[16]) {
  std::memset(gid, 0, 16);
  gid[10] = gid[11] = 0xff;
  gid[12] = uint8_t(ip >> 24);
  gid[13] = uint8_t(ip >> 16);
  gid[14] = uint8_t(ip >> 8);
  gid[15] = uint8_t(ip);
}
int copy_addr(sockaddr_storage& out, const sockaddr* a) {
  if (!a) return EINVAL;
  if (a->sa_family == AF_INET) {
    std::memcpy(&out, a, sizeof(sockaddr_in));
  } else if (a->sa_family == AF_INET6) {
    std::memcpy(&out, a, sizeof(sockaddr_in6));
  } else {
    return EAFNOSUPPORT;
  }
  return 0;
}

Port* port_by_ip(uint32_t ip) {
  for (Port* p : cm().ports)
    if (p->ip == ip) return p;
  return nullptr;
}

bool valid(const dvcm_id* id) {
  const auto& v = cm().ids;
  return id && std::find(v.begin(), v.end(), reinterpret_cast<const Id*>(id)) != v.end();
}
Id* from(dvcm_id* id) { return reinterpret_cast<Id*>(id); }
dvcm_id* to_c(Id* id) { return reinterpret_cast<dvcm_id*>(id); }

// ---------------------------------------------------------------- events
dvcm_event base_event(Id* id, int type, int status = 0) {
  dvcm_event e{};
  e.type = type;
  e.status = status;
  e.id = to_c(id);
  return e;
}
void signal_one(dvcm_channel* ch) {
  const char b = 1;
  if (ch->owed || write(ch->wfd, &b, 1) != 1) ch->owed++;
}
void queue_event(dvcm_channel* ch, const dvcm_event& e) {
  ch->queue.push_back(e);
  signal_one(ch);
}
// Takes back the byte of one event removed from the queue without being popped.
void unsignal_one(dvcm_channel* ch) {
  if (ch->owed) {
    ch->owed--;
    return;
  }
  char b;
  (void)!read(ch->drain_fd, &b, 1);  // EAGAIN: a consumer read it and will find less
}
void emit(Id* id, int type, int status = 0, const uint8_t* pd = nullptr, size_t pd_len = 0) {
  dvcm_event e = base_event(id, type, status);
  if (pd && pd_len) {
    e.private_data_len = uint8_t(std::min<size_t>(pd_len, DVCM_MAX_PRIVATE_DATA));
    std::memcpy(e.private_data, pd, e.private_data_len);
  }
  queue_event(id->ch, e);
}

// ---------------------------------------------------------------- identifiers
uint32_t alloc_comm_id(Id* id) {
  Cm& c = cm();
  uint32_t n;
  do n = ++c.next_comm; while (n == 0 || c.by_comm.count(n));
  c.by_comm[n] = id;
  return n;
}
void release_comm(Id* id) {
  if (id->local_comm_id) cm().by_comm.erase(id->local_comm_id);
  id->local_comm_id = 0;
}
void stop_timer(Id* id) { id->timer_on = false; }
void arm(Id* id, Clock::duration interval, int retries) {
  id->timer_on = true;
  id->interval = interval;
  id->retries_left = retries;
  id->timer = Clock::now() + interval;
}

Id* find_bound(int ps, uint16_t port, const Id* except) {
  for (Id* o : cm().ids)
    if (o != except && o->bound && o->ps == ps && port_of(o->src) == port && !o->listener)
      return o;
  return nullptr;
}
// Two bindings of one port conflict unless they name different specific addresses, or one
// is IPv6-only and the other IPv4.
bool conflicts(const Id* a, const Id* b) {
  const bool a6 = a->src.ss_family == AF_INET6 && a->afonly && !v4(a->src);
  const bool b6 = b->src.ss_family == AF_INET6 && b->afonly && !v4(b->src);
  if (a6 != b6 && (a->src.ss_family != b->src.ss_family)) return false;
  if (is_any(a->src) || is_any(b->src)) return true;
  return v4(a->src) == v4(b->src);
}
int bind_port(Id* id, uint16_t port) {
  if (port) {
    for (Id* o : cm().ids)
      if (o != id && o->bound && o->ps == id->ps && port_of(o->src) == port && !o->listener &&
          conflicts(o, id) && !(o->reuseaddr && id->reuseaddr && o->st != St::listen))
        return EADDRINUSE;
    set_port(id->src, port);
    id->bound = true;
    return 0;
  }
  // An ephemeral port, as the kernel's (32768..60999), starting at a random point.
  static std::minstd_rand rng(uint32_t(Clock::now().time_since_epoch().count()));
  const uint32_t span = 61000 - 32768;
  const uint32_t start = rng() % span;
  for (uint32_t i = 0; i < span; i++) {
    const uint16_t p = uint16_t(32768 + (start + i) % span);
    if (!find_bound(id->ps, p, id)) {
      set_port(id->src, p);
      id->bound = true;
      return 0;
    }
  }
  return EADDRNOTAVAIL;
}

void fill_path(const Id* id, dvcm_path* p) {
  std::memset(p, 0, sizeof *p);
  if (!id->port) return;
  std::snprintf(p->dev_name, sizeof p->dev_name, "%s", id->port->name);
  p->port_num = 1;
  p->sgid_index = 0;
  std::memcpy(p->sgid, id->port->gid, 16);
  mapped_gid(v4(id->dst), p->dgid);
  if (!v4(id->dst)) std::memset(p->dgid, 0, 16);
  p->hop_limit = 64;
  p->traffic_class = id->tos;
  p->mtu = id->port->mtu;
  p->pkey = 0xffff;
  mid::resolve_neigh(id->port->dev, 1, v4(id->dst), p->dmac);
}

void send_on(Id* id, const uint8_t mad[kMadSize], bool expect_answer) {
  if (!id->port) return;
  send_mad(id->port, v4(id->dst), mad);
  if (expect_answer) {
    std::memcpy(id->last, mad, kMadSize);
    const Clock::duration every =
        cm_timeout(id->peer_cm_timeout) + 2 * cm_timeout(kPacketLifeTime);
    arm(id, every, id->peer_max_retries);
  }
}
void keep_reply(Id* id, const uint8_t mad[kMadSize]) {
  std::memcpy(id->last_reply, mad, kMadSize);
  id->has_reply = true;
}

// ---------------------------------------------------------------- messages
void send_rej(Port* p, uint32_t ip, uint64_t tid, uint32_t local_comm, uint32_t remote_comm,
              uint8_t msg_rejected, RejReason reason, const void* pd, size_t pd_len,
              const void* ari = nullptr, size_t ari_len = 0) {
  Rej r{};
  r.local_comm_id = local_comm;
  r.remote_comm_id = remote_comm;
  r.msg_rejected = msg_rejected;
  r.reason = uint16_t(reason);
  if (ari && ari_len) {
    r.reject_info_length = uint8_t(std::min(ari_len, sizeof r.ari));
    std::memcpy(r.ari, ari, r.reject_info_length);
  }
  if (pd) std::memcpy(r.private_data, pd, std::min(pd_len, sizeof r.private_data));
  uint8_t mad[kMadSize];
  build(r, tid, mad);
  send_mad(p, ip, mad);
}

// A CA GUID as REJ's ARI carries it: the bytes of REQ's Local CA GUID field.
std::array<uint8_t, 8> guid_ari(const Port* p) {
  std::array<uint8_t, 8> b{};
  for (int i = 0; i < 8; i++) b[size_t(i)] = uint8_t(p->guid >> (56 - 8 * i));
  return b;
}

void to_timewait(Id* id) {
  id->st = St::timewait;
  id->timer_on = true;
  id->retries_left = 0;
  id->interval = kTimewait;
  id->timer = Clock::now() + kTimewait;
}

// The connection is over without a goodbye (REJ, timeout, removal): forget the peer.
void end_connection(Id* id, St next) {
  stop_timer(id);
  release_comm(id);
  id->has_reply = false;
  id->st = next;
}

void send_dreq(Id* id) {
  Dreq d{};
  d.local_comm_id = id->local_comm_id;
  d.remote_comm_id = id->remote_comm_id;
  d.remote_qpn = id->remote_qpn;
  uint8_t mad[kMadSize];
  build(d, id->port->next_tid++, mad);
  send_on(id, mad, true);
  id->st = St::dreq_sent;
}

void send_drep(Id* id, uint64_t tid) {
  Drep d{};
  d.local_comm_id = id->local_comm_id;
  d.remote_comm_id = id->remote_comm_id;
  uint8_t mad[kMadSize];
  build(d, tid, mad);
  send_on(id, mad, false);
  keep_reply(id, mad);
}

// Destroys an identifier's state: the goodbye the protocol owes, its queued events, its
// pending children. Cm::mu held.
void destroy_locked(Id* id) {
  Cm& c = cm();
  switch (id->st) {
    case St::req_sent:
    case St::mra_rcvd:
    case St::rep_rcvd:
      // REJ "timeout" names us by our CA GUID in its ARI (IBA 12.6.7.2): how the peer finds
      // the connection before it knows our Comm ID.
      if (id->port)
        send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, id->remote_comm_id,
                 id->st == St::rep_rcvd ? 1 : 0, RejReason::timeout, nullptr, 0,
                 guid_ari(id->port).data(), 8);
      break;
    case St::req_rcvd:
      send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, id->remote_comm_id, 0,
               RejReason::consumer_defined, nullptr, 0);
      break;
    case St::rep_sent:
    case St::established:
      send_dreq(id);
      break;
    case St::dreq_rcvd:
      send_drep(id, id->tid);
      break;
    default:
      break;
  }
  release_comm(id);
  // Its children nobody has taken yet go with it; their requests are rejected.
  for (size_t i = 0; i < c.ids.size();) {
    Id* o = c.ids[i];
    if (o->listener == id) {
      o->listener = nullptr;
      destroy_locked(o);
      continue;
    }
    i++;
  }
  if (id->ch) {
    auto& q = id->ch->queue;
    for (auto it = q.begin(); it != q.end();) {
      if (it->id == to_c(id) || it->listen_id == to_c(id)) {
        it = q.erase(it);
        unsignal_one(id->ch);
      } else {
        ++it;
      }
    }
    id->ch->ids--;
  }
  c.ids.erase(std::find(c.ids.begin(), c.ids.end(), id));
  delete id;
}

// ---------------------------------------------------------------- receive side
Id* by_local_comm(uint32_t comm) {
  auto it = cm().by_comm.find(comm);
  return it == cm().by_comm.end() ? nullptr : it->second;
}

Id* find_listener(Port* p, uint16_t ps, uint16_t port, uint32_t dst_ip) {
  Id* wildcard = nullptr;
  for (Id* o : cm().ids) {
    if (o->st != St::listen || o->ps != ps || port_of(o->src) != port) continue;
    if (is_any(o->src)) {
      if (o->src.ss_family == AF_INET6 && o->afonly) continue;  // IPv6 only: no IPv4 peer
      wildcard = o;
    } else if (v4(o->src) == dst_ip && o->port == p) {
      return o;
    }
  }
  return wildcard;
}

int pending_children(const Id* l) {
  int n = 0;
  for (Id* o : cm().ids) n += o->listener == l;
  return n;
}

// A new child of listener `l` for a request from src_ip (IP header `h`).
Id* new_child(Id* l, Port* p, const IpHdr& h, uint32_t src_ip) {
  Id* c = new (std::nothrow) Id();
  if (!c) return nullptr;
  c->ch = l->ch;
  c->ch->ids++;
  c->user = l->user;
  c->ps = l->ps;
  c->qp_type = l->qp_type;
  c->tos = l->tos;
  c->port = p;
  c->listener = l;
  uint32_t dst_ip;
  std::memcpy(&dst_ip, h.dst_ip + 12, 4);
  make_v4(c->src, p->ip, port_of(l->src));
  uint32_t sip;
  std::memcpy(&sip, h.src_ip + 12, 4);
  make_v4(c->dst, ntohl(sip) ? ntohl(sip) : src_ip, h.src_port);
  c->bound = false;  // shares the listener's port; never conflicts with it
  cm().ids.push_back(c);
  return c;
}

void on_req(Port* p, uint32_t src_ip, const MadHdr& hdr, const Req& r) {
  // A retransmitted REQ: the connection it names is already ours.
  for (Id* o : cm().ids) {
    if (o->remote_comm_id != r.local_comm_id || o->remote_guid != r.local_ca_guid ||
        !o->local_comm_id || o->port != p)
      continue;
    if (o->st == St::req_rcvd) {
      Mra m{};
      m.local_comm_id = o->local_comm_id;
      m.remote_comm_id = o->remote_comm_id;
      m.msg_mraed = 0;
      m.service_timeout = kMraServiceTimeout;
      uint8_t mad[kMadSize];
      build(m, o->tid, mad);
      send_mad(p, src_ip, mad);
    } else if (o->st == St::rep_sent) {
      send_mad(p, src_ip, o->last);
    }
    return;  // established: the REQ is stale, drop it (IBA 12.9.6: ignore)
  }
  // A REQ for the QP of a live connection with another comm id: stale (IBA 12.9.8.3.1).
  for (Id* o : cm().ids) {
    if (o->port == p && o->remote_qpn == r.local_qpn && o->st == St::established &&
        std::memcmp(o->remote_gid, r.primary.local_gid, 16) == 0) {
      send_rej(p, src_ip, hdr.tid, 0, r.local_comm_id, 0, RejReason::stale_conn, nullptr, 0);
      p->dropped++;
      return;
    }
  }
  uint16_t ps = 0, port = 0;
  IpHdr h{};
  if (r.transport_service_type > 1 || !split_service_id(r.service_id, &ps, &port) ||
      !parse_ip_hdr(r.private_data, sizeof r.private_data, &h) || h.ip_version != 4) {
    send_rej(p, src_ip, hdr.tid, 0, r.local_comm_id, 0, RejReason::invalid_service_id,
             nullptr, 0);
    return;
  }
  uint32_t dst_ip;
  std::memcpy(&dst_ip, h.dst_ip + 12, 4);
  Id* l = find_listener(p, ps, port, ntohl(dst_ip));
  if (!l || l->qp_type == 4 /* UD */) {
    send_rej(p, src_ip, hdr.tid, 0, r.local_comm_id, 0, RejReason::invalid_service_id,
             nullptr, 0);
    return;
  }
  if (l->backlog > 0 && pending_children(l) >= l->backlog) {
    send_rej(p, src_ip, hdr.tid, 0, r.local_comm_id, 0, RejReason::no_resources, nullptr, 0);
    return;
  }
  Id* c = new_child(l, p, h, src_ip);
  if (!c) return;
  c->qp_type = r.transport_service_type == 1 ? 3 /* UC */ : 2 /* RC */;
  c->st = St::req_rcvd;
  c->tid = hdr.tid;
  c->local_comm_id = alloc_comm_id(c);
  c->remote_comm_id = r.local_comm_id;
  c->remote_guid = r.local_ca_guid;
  std::memcpy(c->remote_gid, r.primary.local_gid, 16);
  c->remote_qpn = r.local_qpn;
  c->remote_psn = r.starting_psn;
  // Seen from this side (ib_cm does the same): their depth is what we must serve.
  c->resp_res = r.initiator_depth;
  c->init_depth = r.responder_resources;
  c->retry = r.retry_count;
  c->rnr_retry = r.rnr_retry_count;
  c->flow_control = r.flow_control;
  c->srq = r.srq;
  c->mtu = std::min<uint8_t>(r.path_mtu, p->mtu);
  c->local_ack_timeout = r.primary.local_ack_timeout;
  c->peer_cm_timeout = r.remote_cm_response_timeout;
  c->peer_max_retries = r.max_cm_retries;
  c->local_psn = 0;
  dvcm_event e = base_event(c, DVCM_EVENT_CONNECT_REQUEST);
  e.listen_id = to_c(l);
  e.private_data_len = uint8_t(sizeof r.private_data - kIpHdrSize);
  std::memcpy(e.private_data, r.private_data + kIpHdrSize, e.private_data_len);
  e.responder_resources = c->resp_res;
  e.initiator_depth = c->init_depth;
  e.flow_control = r.flow_control;
  e.retry_count = r.retry_count;
  e.rnr_retry_count = r.rnr_retry_count;
  e.srq = r.srq;
  e.qp_num = r.local_qpn;
  queue_event(c->ch, e);
}

// The identifier a reply names: its Remote Comm ID is our Local Comm ID.
Id* answered(Port* p, uint32_t our_comm, uint32_t their_comm, bool their_known) {
  Id* id = by_local_comm(our_comm);
  if (!id || id->port != p) return nullptr;
  if (their_known && id->remote_comm_id != their_comm) return nullptr;
  return id;
}

void on_mra(Port* p, const Mra& m) {
  Id* id = answered(p, m.remote_comm_id, m.local_comm_id, false);
  if (!id) return p->dropped++, void();
  if ((id->st == St::req_sent && m.msg_mraed == 0) || (id->st == St::rep_sent && m.msg_mraed == 1)) {
    // The peer needs more time: wait its service timeout, once, then resume retrying.
    if (id->st == St::req_sent) id->st = St::mra_rcvd;
    id->timer = Clock::now() + cm_timeout(m.service_timeout) + id->interval;
    return;
  }
  p->dropped++;
}

void on_rep(Port* p, uint32_t src_ip, const Rep& r) {
  Id* id = answered(p, r.remote_comm_id, 0, false);
  if (!id) {
    // A REP for no REQ of ours: tell the sender (IBA 12.9.8.1, invalid comm ID).
    send_rej(p, src_ip, p->next_tid++, 0, r.local_comm_id, 1, RejReason::invalid_comm_id,
             nullptr, 0);
    p->dropped++;
    return;
  }
  if (id->st == St::established && id->has_reply) {  // our RTU was lost
    send_mad(p, src_ip, id->last_reply);
    return;
  }
  if (id->st != St::req_sent && id->st != St::mra_rcvd) return p->dropped++, void();
  stop_timer(id);
  id->st = St::rep_rcvd;
  id->remote_comm_id = r.local_comm_id;
  id->remote_guid = r.local_ca_guid;
  id->remote_qpn = r.local_qpn;
  id->remote_psn = r.starting_psn;
  // Seen from this side: the reads they serve bound ours, and the reverse.
  id->init_depth = r.responder_resources;
  id->resp_res = r.initiator_depth;
  id->rnr_retry = r.rnr_retry_count;
  dvcm_event e = base_event(id, DVCM_EVENT_CONNECT_RESPONSE);
  e.private_data_len = uint8_t(sizeof r.private_data);
  std::memcpy(e.private_data, r.private_data, sizeof r.private_data);
  e.responder_resources = id->resp_res;
  e.initiator_depth = id->init_depth;
  e.flow_control = r.flow_control;
  e.rnr_retry_count = r.rnr_retry_count;
  e.srq = r.srq;
  e.qp_num = r.local_qpn;
  queue_event(id->ch, e);
}

void on_rtu(Port* p, const Rtu& r) {
  Id* id = answered(p, r.remote_comm_id, r.local_comm_id, true);
  if (!id || id->st != St::rep_sent) return p->dropped++, void();
  stop_timer(id);
  id->st = St::established;
  emit(id, DVCM_EVENT_ESTABLISHED, 0, r.private_data, sizeof r.private_data);
}

void on_rej(Port* p, const Rej& r) {
  // A REJ of our REQ carries no Remote Comm ID of theirs yet.
  Id* id = answered(p, r.remote_comm_id, r.local_comm_id, false);
  if (!id) return p->dropped++, void();
  switch (id->st) {
    case St::req_sent:
    case St::mra_rcvd:
    case St::rep_rcvd:
    case St::rep_sent: {
      const bool timeout = r.reason == uint16_t(RejReason::timeout);
      end_connection(id, St::dead);
      if (timeout)
        emit(id, DVCM_EVENT_UNREACHABLE, -ETIMEDOUT);
      else
        emit(id, DVCM_EVENT_REJECTED, kRejStatusBase + r.reason, r.private_data,
             sizeof r.private_data);
      return;
    }
    case St::established:
      end_connection(id, St::dead);
      emit(id, DVCM_EVENT_DISCONNECTED);
      return;
    default:
      p->dropped++;
  }
}

void on_dreq(Port* p, uint32_t src_ip, const MadHdr& hdr, const Dreq& d) {
  Id* id = answered(p, d.remote_comm_id, d.local_comm_id, true);
  if (!id || d.remote_qpn != id->local_qpn) {
    // Nothing to disconnect (already gone): a DREP lets the peer finish (IBA 12.9.6.2).
    Drep r{};
    r.local_comm_id = d.remote_comm_id;
    r.remote_comm_id = d.local_comm_id;
    uint8_t mad[kMadSize];
    build(r, hdr.tid, mad);
    send_mad(p, src_ip, mad);
    return;
  }
  switch (id->st) {
    case St::rep_sent:    // the RTU was lost, the peer is done already
    case St::established:
    case St::rep_rcvd:
      stop_timer(id);
      id->st = St::dreq_rcvd;
      id->tid = hdr.tid;
      emit(id, DVCM_EVENT_DISCONNECTED);
      return;
    case St::dreq_sent:   // both sides at once: answer, and we are done too
      stop_timer(id);
      send_drep(id, hdr.tid);
      to_timewait(id);
      emit(id, DVCM_EVENT_DISCONNECTED);
      return;
    case St::timewait:
      send_drep(id, hdr.tid);
      return;
    default:
      return;  // dreq_rcvd: the consumer's disconnect answers
  }
}

void on_drep(Port* p, const Drep& d) {
  Id* id = answered(p, d.remote_comm_id, d.local_comm_id, true);
  if (!id || id->st != St::dreq_sent) return p->dropped++, void();
  stop_timer(id);
  to_timewait(id);
  emit(id, DVCM_EVENT_DISCONNECTED);
}

void send_sidr_rep(Port* p, uint32_t ip, uint64_t tid, uint32_t req_id, uint64_t sid,
                   uint8_t status, uint32_t qpn, uint32_t qkey, const void* pd, size_t len) {
  SidrRep r{};
  r.request_id = req_id;
  r.status = status;
  r.qpn = qpn;
  r.qkey = qkey;
  r.service_id = sid;
  if (pd) std::memcpy(r.private_data, pd, std::min(len, sizeof r.private_data));
  uint8_t mad[kMadSize];
  build(r, tid, mad);
  send_mad(p, ip, mad);
}

void on_sidr_req(Port* p, uint32_t src_ip, const MadHdr& hdr, const SidrReq& r) {
  uint16_t ps = 0, port = 0;
  IpHdr h{};
  Id* l = nullptr;
  uint32_t dst_ip = 0;
  if (split_service_id(r.service_id, &ps, &port) &&
      parse_ip_hdr(r.private_data, sizeof r.private_data, &h) && h.ip_version == 4) {
    std::memcpy(&dst_ip, h.dst_ip + 12, 4);
    l = find_listener(p, ps, port, ntohl(dst_ip));
  }
  if (!l || l->qp_type != 4) {
    send_sidr_rep(p, src_ip, hdr.tid, r.request_id, r.service_id, 1 /* no such service */, 0,
                  0, nullptr, 0);
    return;
  }
  for (Id* o : cm().ids)  // a retransmitted SIDR_REQ still being considered
    if (o->st == St::sidr_req_rcvd && o->remote_comm_id == r.request_id && v4(o->dst) == src_ip)
      return;
  Id* c = new_child(l, p, h, src_ip);
  if (!c) return;
  c->st = St::sidr_req_rcvd;
  c->tid = hdr.tid;
  c->remote_comm_id = r.request_id;
  c->qkey = uint64_t(r.service_id);  // remembered for the SIDR_REP below
  c->remote_guid = r.service_id;
  dvcm_event e = base_event(c, DVCM_EVENT_CONNECT_REQUEST);
  e.listen_id = to_c(l);
  e.private_data_len = uint8_t(sizeof r.private_data - kIpHdrSize);
  std::memcpy(e.private_data, r.private_data + kIpHdrSize, e.private_data_len);
  fill_path(c, &e.ud_path);
  queue_event(c->ch, e);
}

void on_sidr_rep(Port* p, const SidrRep& r) {
  Id* id = by_local_comm(r.request_id);
  if (!id || id->port != p || id->st != St::sidr_req_sent) return p->dropped++, void();
  end_connection(id, St::route_resolved);
  if (r.status != 0) {  // as the kernel's rdma_cm: the SIDR status is the event's
    emit(id, DVCM_EVENT_UNREACHABLE, r.status, r.private_data, sizeof r.private_data);
    return;
  }
  dvcm_event e = base_event(id, DVCM_EVENT_ESTABLISHED);
  e.private_data_len = uint8_t(sizeof r.private_data);
  std::memcpy(e.private_data, r.private_data, sizeof r.private_data);
  e.qp_num = r.qpn;
  e.qkey = r.qkey;
  fill_path(id, &e.ud_path);
  queue_event(id->ch, e);
}

void on_timer(Id* id) {
  if (id->st == St::timewait) {
    id->timer_on = false;
    release_comm(id);
    id->has_reply = false;
    id->st = St::idle;
    return;
  }
  if (id->st == St::addr_query) return;  // run_timers polls ARP separately
  if (id->retries_left-- > 0) {
    send_mad(id->port, v4(id->dst), id->last);
    id->timer = Clock::now() + id->interval;
    return;
  }
  // Out of retries.
  id->timer_on = false;
  switch (id->st) {
    case St::req_sent:
    case St::mra_rcvd:
      send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, 0, 0, RejReason::timeout,
               nullptr, 0, guid_ari(id->port).data(), 8);
      end_connection(id, St::dead);
      emit(id, DVCM_EVENT_UNREACHABLE, -ETIMEDOUT);
      break;
    case St::rep_sent:
      send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, id->remote_comm_id, 1,
               RejReason::timeout, nullptr, 0, guid_ari(id->port).data(), 8);
      end_connection(id, St::dead);
      emit(id, DVCM_EVENT_UNREACHABLE, -ETIMEDOUT);
      break;
    case St::sidr_req_sent:
      end_connection(id, St::route_resolved);
      emit(id, DVCM_EVENT_UNREACHABLE, -ETIMEDOUT);
      break;
    case St::dreq_sent:  // no DREP: the peer is gone; disconnected all the same
      to_timewait(id);
      emit(id, DVCM_EVENT_DISCONNECTED);
      break;
    default:
      break;
  }
}

}  // namespace

const char* name(St s) {
  static const char* const kNames[] = {
      "idle",     "addr_query", "addr_resolved", "route_resolved", "listen",
      "req_sent", "mra_rcvd",   "rep_rcvd",      "req_rcvd",       "rep_sent",
      "established", "dreq_sent", "dreq_rcvd",   "timewait",       "sidr_req_sent",
      "sidr_req_rcvd", "dead"};
  return unsigned(s) < std::size(kNames) ? kNames[unsigned(s)] : "?";
}

void handle_mad(Port* p, uint32_t src_ip, const uint8_t* buf, size_t len) {
  Mad m{};
  if (parse(buf, len, &m) != ParseError::ok) {
    p->dropped++;
    return;
  }
  std::visit(
      [&](const auto& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, Req>) on_req(p, src_ip, m.hdr, msg);
        else if constexpr (std::is_same_v<T, Mra>) on_mra(p, msg);
        else if constexpr (std::is_same_v<T, Rep>) on_rep(p, src_ip, msg);
        else if constexpr (std::is_same_v<T, Rtu>) on_rtu(p, msg);
        else if constexpr (std::is_same_v<T, Rej>) on_rej(p, msg);
        else if constexpr (std::is_same_v<T, Dreq>) on_dreq(p, src_ip, m.hdr, msg);
        else if constexpr (std::is_same_v<T, Drep>) on_drep(p, msg);
        else if constexpr (std::is_same_v<T, SidrReq>) on_sidr_req(p, src_ip, m.hdr, msg);
        else if constexpr (std::is_same_v<T, SidrRep>) on_sidr_rep(p, msg);
        else p->dropped++;
      },
      m.msg);
}

Clock::time_point run_timers(Clock::time_point now) {
  Cm& c = cm();
  Clock::time_point next = Clock::time_point::max();
  for (size_t i = 0; i < c.ids.size(); i++) {
    Id* id = c.ids[i];
    if (id->st == St::addr_query) {
      next = std::min(next, now + std::chrono::milliseconds(1));
      uint8_t mac[6];
      const int rc = mid::resolve_neigh(id->port->dev, 1, v4(id->dst), mac);
      if (rc == 0) {
        id->st = St::addr_resolved;
        emit(id, DVCM_EVENT_ADDR_RESOLVED);
      } else if (rc != EAGAIN || now >= id->deadline) {
        id->st = St::idle;
        emit(id, DVCM_EVENT_ADDR_ERROR, rc == EAGAIN ? -ETIMEDOUT : -rc);
      }
      continue;
    }
    if (id->timer_on && now >= id->timer) on_timer(id);
    if (id->timer_on) next = std::min(next, id->timer);
  }
  return next;
}

// The port is going away: every identifier on it ends with DEVICE_REMOVAL.
void port_removed(Port* p) {
  for (Id* id : cm().ids) {
    if (id->port != p) continue;
    stop_timer(id);
    release_comm(id);
    id->st = St::dead;
    id->port = nullptr;
    emit(id, DVCM_EVENT_DEVICE_REMOVAL);
  }
}

}  // namespace dverbs::cm

// ---------------------------------------------------------------- the local CM
// dvcm_local_*: the CM of this process (internal.h). api.cc exports dvcm_*, which come here
// unless the process is a dverbsd client (remote.cc).
using namespace dverbs::cm;

namespace {

// Takes the CM lock, starting the CM (thread, client registration) on the first call.
std::unique_lock<std::mutex> lock_cm() {
  std::unique_lock<std::mutex> g(cm().mu);
  start_thread_locked();
  return g;
}

}  // namespace

extern "C" {

void dvcm_local_start() { auto g = lock_cm(); }

int dvcm_local_channel_create(dvcm_channel** out) {
  if (!out) return EINVAL;
  auto g = lock_cm();
  auto* ch = new (std::nothrow) dvcm_channel();
  if (!ch) return ENOMEM;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    const int e = errno;
    delete ch;
    return e;
  }
  ch->fd = p[0];
  ch->wfd = p[1];
  fcntl(ch->wfd, F_SETFL, O_NONBLOCK);
  fcntl(ch->wfd, F_SETPIPE_SZ, 1 << 20);  // room for many events before `owed` counts
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", ch->fd);
  ch->drain_fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (ch->drain_fd < 0) {
    const int e = errno;
    close(p[0]);
    close(p[1]);
    delete ch;
    return e == ENOENT ? ENOSYS : e;  // no /proc
  }
  *out = ch;
  return 0;
}

int dvcm_local_channel_fd(const dvcm_channel* ch) {
  return ch ? ch->fd : -1;
}

int dvcm_local_channel_destroy(dvcm_channel* ch) {
  if (!ch) return EINVAL;
  auto g = lock_cm();
  if (ch->ids) return EBUSY;
  if (ch->readers) {
    // A thread still waits in dvcm_get_event (rping's CM thread does, as the process
    // ends): as with rdma-core's channel, it keeps waiting and never sees an end of file.
    // The pipe and this small object stay behind for it (closing the descriptor it reads
    // would let the number be reused under it).
    ch->dead = true;
    return 0;
  }
  close(ch->fd);
  close(ch->drain_fd);
  close(ch->wfd);
  delete ch;
  return 0;
}

int dvcm_local_get_event(dvcm_channel* ch, dvcm_event* out) {
  if (!ch || !out) return EINVAL;
  for (;;) {
    // One byte per event, read as the consumer set the descriptor (blocking or not).
    char b;
    {
      auto g = lock_cm();
      if (ch->dead) return EBADF;
      ch->readers++;
    }
    const ssize_t n = read(ch->fd, &b, 1);
    const int err = errno;
    auto g = lock_cm();
    ch->readers--;
    if (ch->dead) return EBADF;
    if (n < 0) return err;
    if (n == 0) return EPIPE;
    if (ch->queue.empty()) continue;  // its event was discarded meanwhile: wait for another
    *out = ch->queue.front();
    ch->queue.pop_front();
    if (ch->owed && write(ch->wfd, &b, 1) == 1) ch->owed--;
    // The request is the consumer's now: a listener destroyed later leaves it alone.
    if (out->type == DVCM_EVENT_CONNECT_REQUEST && valid(out->id)) from(out->id)->listener = nullptr;
    return 0;
  }
}

// The daemon's get_event: the client waited on its copy of the pipe and took the byte.
int dvcm_local_pop_event(dvcm_channel* ch, dvcm_event* out) {
  auto g = lock_cm();
  if (ch->queue.empty()) return EAGAIN;
  *out = ch->queue.front();
  ch->queue.pop_front();
  const char b = 1;
  if (ch->owed && write(ch->wfd, &b, 1) == 1) ch->owed--;
  if (out->type == DVCM_EVENT_CONNECT_REQUEST && valid(out->id)) from(out->id)->listener = nullptr;
  return 0;
}

int dvcm_local_create_id(dvcm_channel* ch, int ps, int qp_type,
                                                          void* user, dvcm_id** out) {
  if (!ch || !out) return EINVAL;
  if (ps != DVCM_PS_TCP && ps != DVCM_PS_UDP && ps != DVCM_PS_IB && ps != DVCM_PS_IPOIB)
    return EPROTONOSUPPORT;
  if (qp_type != 2 && qp_type != 3 && qp_type != 4) return EINVAL;
  if ((ps == DVCM_PS_TCP && qp_type == 4) || ((ps == DVCM_PS_UDP || ps == DVCM_PS_IPOIB) && qp_type != 4))
    return EINVAL;
  auto g = lock_cm();
  Id* id = new (std::nothrow) Id();
  if (!id) return ENOMEM;
  id->ch = ch;
  ch->ids++;
  id->ps = ps;
  id->qp_type = qp_type;
  id->user = user;
  cm().ids.push_back(id);
  *out = to_c(id);
  return 0;
}

int dvcm_local_destroy_id(dvcm_id* cid) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  destroy_locked(from(cid));
  return 0;
}

void dvcm_local_set_user(dvcm_id* cid, void* user) {
  auto g = lock_cm();
  if (valid(cid)) from(cid)->user = user;
}

void* dvcm_local_get_user(const dvcm_id* cid) {
  auto g = lock_cm();
  return valid(cid) ? reinterpret_cast<const Id*>(cid)->user : nullptr;
}

int dvcm_local_migrate_id(dvcm_id* cid, dvcm_channel* ch) {
  if (!ch) return EINVAL;
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  // Its queued events move with it, in order.
  auto& q = id->ch->queue;
  for (auto it = q.begin(); it != q.end();) {
    if (it->id == cid) {
      unsignal_one(id->ch);
      queue_event(ch, *it);
      it = q.erase(it);
    } else {
      ++it;
    }
  }
  id->ch->ids--;
  id->ch = ch;
  ch->ids++;
  return 0;
}

int dvcm_local_set_option(dvcm_id* cid, int name, int value) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  switch (name) {
    case 0:  // RDMA_OPTION_ID_TOS
      id->tos = uint8_t(value);
      return 0;
    case 1:  // RDMA_OPTION_ID_REUSEADDR
      id->reuseaddr = value != 0;
      return 0;
    case 2:  // RDMA_OPTION_ID_AFONLY
      if (id->bound) return EINVAL;
      id->afonly = value != 0;
      return 0;
    case 3:  // RDMA_OPTION_ID_ACK_TIMEOUT
      if (value < 0 || value > 31) return EINVAL;
      id->ack_timeout = uint8_t(value);
      return 0;
    default:
      return ENOSYS;
  }
}

int dvcm_local_bind_addr(dvcm_id* cid, const sockaddr* a) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->bound || id->st != St::idle) return EINVAL;
  sockaddr_storage s{};
  if (int rc = copy_addr(s, a)) return rc;
  Port* p = nullptr;
  if (!is_any(s)) {
    const uint32_t ip = v4(s);
    if (!ip || !(p = port_by_ip(ip)))  // no dverbs port has it
      return cm().ports.empty() && cm().no_gsi ? EOPNOTSUPP : EADDRNOTAVAIL;
  }
  const sockaddr_storage old = id->src;
  id->src = s;
  if (int rc = bind_port(id, port_of(s))) {
    id->src = old;
    return rc;
  }
  id->port = p;
  return 0;
}

int dvcm_local_resolve_addr(dvcm_id* cid, const sockaddr* src,
                                                             const sockaddr* dst, int timeout_ms) {
  auto g = lock_cm();
  if (!valid(cid) || !dst) return EINVAL;
  Id* id = from(cid);
  if (id->st != St::idle && id->st != St::addr_resolved) return EINVAL;
  sockaddr_storage d{};
  if (int rc = copy_addr(d, dst)) return rc;
  const uint32_t dip = v4(d);
  if (!dip) return d.ss_family == AF_INET6 ? EAFNOSUPPORT : EINVAL;
  if (src && !id->bound) {
    sockaddr_storage s{};
    if (int rc = copy_addr(s, src)) return rc;
    g.unlock();
    if (int rc = dvcm_local_bind_addr(cid, reinterpret_cast<const sockaddr*>(&s))) return rc;
    g.lock();
    if (!valid(cid)) return EINVAL;
  }
  Port* p = id->port;
  if (!p) {
    // No routing: the destination is on the link of the one port there is (or, with
    // several, the port whose own address is closest to it, by the longest common prefix).
    int best = -1;
    for (Port* q : cm().ports) {
      const int common = __builtin_clz((q->ip ^ dip) | 1);
      if (common > best) best = common, p = q;
    }
  }
  if (!p) return cm().no_gsi ? EOPNOTSUPP : ENODEV;
  id->port = p;
  if (!id->bound) {
    make_v4(id->src, p->ip, 0);
    if (int rc = bind_port(id, 0)) return rc;
  } else if (is_any(id->src)) {
    const uint16_t port = port_of(id->src);
    make_v4(id->src, p->ip, port);
  }
  id->dst = d;
  if (d.ss_family == AF_INET6) make_v4(id->dst, dip, port_of(d));
  id->st = St::addr_query;
  id->deadline = Clock::now() + std::chrono::milliseconds(timeout_ms > 0 ? timeout_ms : 2000);
  cm().wake.notify_one();
  return 0;
}

int dvcm_local_resolve_route(dvcm_id* cid, int) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->st != St::addr_resolved) return EINVAL;
  // RoCEv2 has no path query: the route is the GID pair and the port's MTU.
  id->st = St::route_resolved;
  emit(id, DVCM_EVENT_ROUTE_RESOLVED);
  return 0;
}

int dvcm_local_listen(dvcm_id* cid, int backlog) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->st == St::listen) {
    id->backlog = backlog;
    return 0;
  }
  if (id->st != St::idle) return EINVAL;
  if (!id->bound) {
    make_v4(id->src, 0, 0);
    if (int rc = bind_port(id, 0)) return rc;
  }
  for (Id* o : cm().ids)
    if (o != id && o->st == St::listen && o->ps == id->ps && port_of(o->src) == port_of(id->src) &&
        conflicts(o, id))
      return EADDRINUSE;
  id->backlog = backlog;
  id->st = St::listen;
  return 0;
}

int dvcm_local_connect(dvcm_id* cid, const dvcm_conn_param* cp) {
  auto g = lock_cm();
  if (!valid(cid) || !cp) return EINVAL;
  Id* id = from(cid);
  if (id->st != St::route_resolved || !id->port) return EINVAL;
  uint8_t mad[kMadSize];
  IpHdr h{};
  h.ip_version = 4;
  h.src_port = port_of(id->src);
  mapped_gid(v4(id->src), h.src_ip);
  mapped_gid(v4(id->dst), h.dst_ip);
  id->tid = id->port->next_tid++;
  if (id->qp_type == 4) {
    if (cp->private_data_len > sizeof SidrReq{}.private_data - kIpHdrSize) return EINVAL;
    SidrReq r{};
    r.request_id = id->local_comm_id = alloc_comm_id(id);
    r.pkey = 0xffff;
    r.service_id = ip_service_id(uint16_t(id->ps), port_of(id->dst));
    build_ip_hdr(h, r.private_data);
    if (cp->private_data)
      std::memcpy(r.private_data + kIpHdrSize, cp->private_data, cp->private_data_len);
    build(r, id->tid, mad);
    id->st = St::sidr_req_sent;
    id->peer_cm_timeout = kCmResponseTimeout;
    id->peer_max_retries = kMaxCmRetries;
    send_on(id, mad, true);
    return 0;
  }
  if (cp->private_data_len > sizeof Req{}.private_data - kIpHdrSize) return EINVAL;
  Req r{};
  id->local_comm_id = alloc_comm_id(id);
  id->local_qpn = cp->qp_num & 0xffffff;
  id->local_psn = cp->psn & 0xffffff;
  id->resp_res = cp->responder_resources;
  id->init_depth = cp->initiator_depth;
  id->retry = std::min<uint8_t>(cp->retry_count, 7);
  id->rnr_retry = std::min<uint8_t>(cp->rnr_retry_count, 7);
  id->flow_control = cp->flow_control;
  id->srq = cp->srq;
  id->mtu = id->port->mtu;
  id->local_ack_timeout = id->ack_timeout ? id->ack_timeout : kPacketLifeTime;
  mapped_gid(v4(id->dst), id->remote_gid);
  r.local_comm_id = id->local_comm_id;
  r.service_id = ip_service_id(uint16_t(id->ps), port_of(id->dst));
  r.local_ca_guid = id->port->guid;
  r.local_qpn = id->local_qpn;
  r.responder_resources = id->resp_res;
  r.initiator_depth = id->init_depth;
  r.remote_cm_response_timeout = kCmResponseTimeout;
  r.transport_service_type = id->qp_type == 3 ? 1 : 0;
  r.flow_control = id->flow_control;
  r.starting_psn = id->local_psn;
  r.local_cm_response_timeout = kCmResponseTimeout;
  r.retry_count = id->retry;
  r.pkey = 0xffff;
  r.path_mtu = id->mtu;
  r.rnr_retry_count = id->rnr_retry;
  r.max_cm_retries = kMaxCmRetries;
  r.srq = id->srq;
  r.primary.local_lid = r.primary.remote_lid = 0xffff;  // permissive: RoCE has no LIDs
  std::memcpy(r.primary.local_gid, id->port->gid, 16);
  std::memcpy(r.primary.remote_gid, id->remote_gid, 16);
  r.primary.traffic_class = id->tos;
  r.primary.hop_limit = 64;
  r.primary.packet_rate = 0;
  r.primary.subnet_local = false;
  r.primary.local_ack_timeout = id->local_ack_timeout;
  build_ip_hdr(h, r.private_data);
  if (cp->private_data)
    std::memcpy(r.private_data + kIpHdrSize, cp->private_data, cp->private_data_len);
  build(r, id->tid, mad);
  id->st = St::req_sent;
  // How long the peer may take to answer is its business (REP's timeouts are ours): wait
  // our response timeout, retry up to our Max CM Retries.
  id->peer_cm_timeout = kCmResponseTimeout;
  id->peer_max_retries = kMaxCmRetries;
  send_on(id, mad, true);
  return 0;
}

int dvcm_local_accept(dvcm_id* cid, const dvcm_conn_param* cp) {
  auto g = lock_cm();
  if (!valid(cid) || !cp) return EINVAL;
  Id* id = from(cid);
  uint8_t mad[kMadSize];
  if (id->st == St::sidr_req_rcvd) {
    if (cp->private_data_len > sizeof SidrRep{}.private_data) return EINVAL;
    send_sidr_rep(id->port, v4(id->dst), id->tid, id->remote_comm_id, id->remote_guid, 0,
                  cp->qp_num & 0xffffff, cp->qkey ? cp->qkey : kUdpQkey, cp->private_data,
                  cp->private_data_len);
    id->listener = nullptr;
    id->st = St::idle;
    return 0;
  }
  if (id->st != St::req_rcvd) return EINVAL;
  if (cp->private_data_len > sizeof Rep{}.private_data) return EINVAL;
  Rep r{};
  id->local_qpn = cp->qp_num & 0xffffff;
  id->local_psn = cp->psn & 0xffffff;
  // Our responder resources serve their reads: no more than they will issue; our initiator
  // depth no more than they will serve.
  // The consumer chose within what CONNECT_REQUEST offered (librdmacm caps it).
  id->resp_res = cp->responder_resources;
  id->init_depth = cp->initiator_depth;
  r.local_comm_id = id->local_comm_id;
  r.remote_comm_id = id->remote_comm_id;
  r.local_qpn = id->local_qpn;
  r.starting_psn = id->local_psn;
  r.responder_resources = id->resp_res;
  r.initiator_depth = id->init_depth;
  r.target_ack_delay = 15;
  r.flow_control = cp->flow_control;
  r.rnr_retry_count = std::min<uint8_t>(cp->rnr_retry_count, 7);
  r.srq = cp->srq;
  r.local_ca_guid = id->port->guid;
  if (cp->private_data) std::memcpy(r.private_data, cp->private_data, cp->private_data_len);
  build(r, id->tid, mad);
  id->listener = nullptr;
  id->st = St::rep_sent;
  send_on(id, mad, true);
  return 0;
}

int dvcm_local_reject(dvcm_id* cid, const void* pd, uint8_t len) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->st == St::sidr_req_rcvd) {
    send_sidr_rep(id->port, v4(id->dst), id->tid, id->remote_comm_id, id->remote_guid,
                  2 /* rejected by the service */, 0, 0, pd, len);
  } else if (id->st == St::req_rcvd || id->st == St::rep_rcvd) {
    if (len > sizeof Rej{}.private_data) return EINVAL;
    send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, id->remote_comm_id,
             id->st == St::req_rcvd ? 0 : 1, RejReason::consumer_defined, pd, len);
  } else {
    return EINVAL;
  }
  id->listener = nullptr;
  end_connection(id, St::dead);
  return 0;
}

int dvcm_local_notify(dvcm_id* cid, int) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->st == St::rep_sent) {  // data arrived before the RTU: communication established
    stop_timer(id);
    id->st = St::established;
    emit(id, DVCM_EVENT_ESTABLISHED);
  }
  return 0;
}

int dvcm_local_establish(dvcm_id* cid) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  if (id->st != St::rep_rcvd) return EINVAL;
  Rtu r{};
  r.local_comm_id = id->local_comm_id;
  r.remote_comm_id = id->remote_comm_id;
  uint8_t mad[kMadSize];
  build(r, id->tid, mad);
  send_on(id, mad, false);
  keep_reply(id, mad);
  id->st = St::established;
  return 0;
}

int dvcm_local_disconnect(dvcm_id* cid) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  Id* id = from(cid);
  switch (id->st) {
    case St::established:
    case St::rep_sent:
      send_dreq(id);
      return 0;
    case St::req_rcvd:
    case St::rep_rcvd:
      send_rej(id->port, v4(id->dst), id->tid, id->local_comm_id, id->remote_comm_id,
               id->st == St::req_rcvd ? 0 : 1, RejReason::consumer_defined, nullptr, 0);
      end_connection(id, St::dead);
      return 0;
    case St::dreq_rcvd:
      send_drep(id, id->tid);
      to_timewait(id);
      return 0;
    case St::dreq_sent:
    case St::timewait:
      return 0;  // on its way out already
    default:
      return EINVAL;
  }
}

// RoCE multicast needs no SA (the kernel's cma_iboe_join_multicast): the group is the
// IPv4 address, its GID the IPv4-mapped one, its MAC the 01:00:5e mapping, and the join
// completes at once. The consumer attaches its UD QP (librdmacm does, on the event).
int dvcm_local_join_multicast(dvcm_id* cid, const sockaddr* a,
                                                               void* user) {
  auto g = lock_cm();
  if (!valid(cid) || !a) return EINVAL;
  Id* id = from(cid);
  sockaddr_storage m{};
  if (int rc = copy_addr(m, a)) return rc;
  const uint32_t ip = v4(m);
  if ((ip >> 28) != 0xe) return EINVAL;
  if (id->qp_type != 4) return EINVAL;  // multicast is for UD
  if (!id->port) return ENODEV;         // bind to an address of the port (or resolve) first
  if (std::find(id->groups.begin(), id->groups.end(), ip) != id->groups.end()) return EADDRINUSE;
  id->groups.push_back(ip);
  dvcm_event e = base_event(id, DVCM_EVENT_MULTICAST_JOIN);
  e.user = user;
  e.qp_num = 0xffffff;
  e.qkey = kUdpQkey;
  fill_path(id, &e.ud_path);
  mapped_gid(ip, e.ud_path.dgid);
  const uint8_t mac[6] = {0x01, 0x00, 0x5e, uint8_t(ip >> 16 & 0x7f), uint8_t(ip >> 8),
                          uint8_t(ip)};
  std::memcpy(e.ud_path.dmac, mac, 6);
  queue_event(id->ch, e);
  return 0;
}

int dvcm_local_leave_multicast(dvcm_id* cid, const sockaddr* a) {
  auto g = lock_cm();
  if (!valid(cid) || !a) return EINVAL;
  Id* id = from(cid);
  sockaddr_storage m{};
  if (int rc = copy_addr(m, a)) return rc;
  auto it = std::find(id->groups.begin(), id->groups.end(), v4(m));
  if (it == id->groups.end()) return EADDRNOTAVAIL;
  id->groups.erase(it);
  return 0;
}

int dvcm_local_query(const dvcm_id* cid, sockaddr_storage* src,
                                                      sockaddr_storage* dst, dvcm_path* path) {
  auto g = lock_cm();
  if (!valid(cid)) return EINVAL;
  const Id* id = reinterpret_cast<const Id*>(cid);
  if (src) *src = id->src;
  if (dst) *dst = id->dst;
  if (path) fill_path(id, path);
  return id->port ? 0 : ENODEV;
}

int dvcm_local_get_qp_params(const dvcm_id* cid, struct dvcm_qp_params* out) {
  auto g = lock_cm();
  if (!valid(cid) || !out) return EINVAL;
  const Id* id = reinterpret_cast<const Id*>(cid);
  if (!id->port) return ENODEV;
  std::memset(out, 0, sizeof *out);
  fill_path(id, &out->path);
  out->dest_qp_num = id->remote_qpn;
  // A REQ's or REP's Starting PSN is where its sender's receive queue starts (as the
  // kernel's ib_cm reads IBA 12.7.23): the peer sends from what we advertised.
  out->rq_psn = id->local_psn;
  out->sq_psn = id->remote_psn;
  out->path_mtu = id->mtu;
  out->max_dest_rd_atomic = id->resp_res;
  out->max_rd_atomic = id->init_depth;
  out->timeout = id->local_ack_timeout ? id->local_ack_timeout : kPacketLifeTime;
  out->retry_cnt = id->retry;
  out->rnr_retry = id->rnr_retry;
  out->min_rnr_timer = 12;  // 0.64 ms, librdmacm's default
  out->qkey = id->qp_type == 4 ? (id->ps == DVCM_PS_UDP ? kUdpQkey : id->qkey) : 0;
  return 0;
}

}  // extern "C"
