// One connection of dverbsd: the command path (uverbs' write() commands) and, when the
// connection closes, the destruction of everything it owned.
//
// Thread: the connection's session thread runs everything here. It waits in poll() on the
// socket and on the connection's private notify eventfd; a datagram is one command, a
// notify kick is relayed to the client's eventfd (internal.h says why). It alone edits the
// connection's handle table and counters, so commands of one connection are serialised
// and need no lock of their own.
//
// Trust: the datagram is copied into a local Request before any field is read; its size,
// magic, handles (kind-checked in this connection's table), counts and fds are validated;
// bool fields from the wire are normalised before they are read as bool. A bad command is
// answered with EINVAL and counted; the connection stays open.
//
// Destruction of an object the doorbell can reach (a ring in the DbSet, or a handle a WQE
// may name: MR, MW, AH) goes unpublish → Server::synchronize() → midlayer destroy → unmap;
// a destroy the midlayer refuses (EBUSY) publishes the object again.
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>

#include "daemon/internal.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

namespace dverbs::daemon {

Conn::~Conn() {
  if (fd >= 0) ::close(fd);
}

namespace {

constexpr uint32_t kEventEntries = 4096;
constexpr int kMaxInFds = int(kMaxPieces) + 8;

struct InFds {
  int fd[kMaxInFds];
  uint32_t n = 0;
  void close_all() noexcept {
    for (uint32_t i = 0; i < n; i++) ::close(fd[i]);
    n = 0;
  }
};

struct OutFds {
  int fd[2];
  bool close_after[2];
  uint32_t n = 0;
  void add(int f, bool close) noexcept {
    fd[n] = f;
    close_after[n] = close;
    n++;
  }
  void done() noexcept {
    for (uint32_t i = 0; i < n; i++)
      if (close_after[i]) ::close(fd[i]);
    n = 0;
  }
};

// Bytes from the wire read as bool are undefined behaviour unless 0 or 1.
void fix_bool(bool* b) noexcept {
  unsigned char v;
  std::memcpy(&v, b, 1);
  v = v != 0;
  std::memcpy(b, &v, 1);
}

template <class T>
T* at(void* base, uint64_t off) noexcept {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

// ---- midlayer callbacks (handler threads; never sleep) ----

void cq_comp(mid::Cq*, void* ctx) {
  auto* o = static_cast<CqObj*>(ctx);
  o->armed.store(false, std::memory_order_release);
  o->conn->srv->raise_event(*o->conn, EventKind::comp, EventType::cq_err, o->handle, 0);
}

void cq_async(const mid::Event& ev, void* ctx) {
  auto* o = static_cast<CqObj*>(ctx);
  // The doorbell copies `overrun` into the ring's header (which a resize may be replacing).
  if (ev.type == EventType::cq_err && o->overrun.exchange(true, std::memory_order_acq_rel))
    return;  // the doorbell's overrun raised it already
  o->conn->srv->raise_event(*o->conn, EventKind::async, ev.type, o->handle, 0);
}

void qp_async(const mid::Event& ev, void* ctx) {
  auto* o = static_cast<QpObj*>(ctx);
  o->conn->srv->raise_event(*o->conn, EventKind::async, ev.type, o->handle, 0);
}

void srq_async(const mid::Event& ev, void* ctx) {
  auto* o = static_cast<SrqObj*>(ctx);
  o->conn->srv->raise_event(*o->conn, EventKind::async, ev.type, o->handle, 0);
}

void erase_ptr(auto& v, const void* p) {
  v.erase(std::remove(v.begin(), v.end(), p), v.end());
}

class Session {
 public:
  Session(Server& srv, Conn& c) : srv_(srv), c_(c) {}
  void run();

 private:
  bool receive();
  int dispatch(Request& req, InFds& in, Response& resp, OutFds& out);
  void relay_kick();
  void cleanup();

  int invalid() noexcept {
    srv_.stats.bad_commands.fetch_add(1, std::memory_order_relaxed);
    return EINVAL;
  }
  template <class T>
  T* lookup(Handle h, Kind k) noexcept {
    auto* p = static_cast<T*>(c_.table.get(h, k));
    if (!p) srv_.stats.bad_commands.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  // One object of kind k reserved in the client's account (--max-*); returned when the
  // create fails, i.e. unless created() keeps it.
  class Reserved {
   public:
    Reserved(Server& s, Conn& c, Kind k) : s_(s), c_(c), k_(k), rc_(s.reserve_object(c, k)) {}
    ~Reserved() {
      if (rc_ == 0 && !kept_) s_.release_object(c_, k_);
    }
    Reserved(const Reserved&) = delete;
    Reserved& operator=(const Reserved&) = delete;
    int rc() const noexcept { return rc_; }
    void keep() noexcept { kept_ = true; }

   private:
    Server& s_;
    Conn& c_;
    Kind k_;
    int rc_;
    bool kept_ = false;
  };
  // A new ring-owning object (CqObj, QpObj, SrqObj) in a reserved handle slot; nullptr
  // when the table is full or memory is short (ENOMEM).
  template <class T>
  T* new_conn_obj(Handle* h) {
    if (!(*h = c_.table.reserve())) return nullptr;
    auto* o = new (std::nothrow) T();
    if (!o) {
      c_.table.release(*h);
      return nullptr;
    }
    o->conn = &c_;
    o->handle = *h;
    return o;
  }
  void created(Kind k, Reserved& r) noexcept {
    r.keep();
    srv_.stats.objects[int(k)].fetch_add(1, std::memory_order_relaxed);
  }

  int hello(const Request& req, Response& resp, OutFds& out);
  int alloc_pd(Response& resp);
  int reg_mr(const Request& req, InFds& in, Response& resp);
  int create_cq(const Request& req, Response& resp, OutFds& out);
  int create_qp(const Request& req, Response& resp, OutFds& out);
  int modify_qp(Request& req);
  int query_qp(const Request& req, Response& resp);
  int create_srq(const Request& req, Response& resp, OutFds& out);
  int modify_srq(const Request& req);
  int alloc_mw(const Request& req, Response& resp);
  int stats(Response& resp);
  // XRC (xrc.cc in spirit, here for the Session's helpers): domains by file, the target QP
  // of a domain created or opened by number (no rings: it has no queues).
  int open_xrcd(const Request& req, InFds& in, Response& resp);
  int xrc_recv_qp(const Request& req, Response& resp);
  // Destroys an object of kind `k`. `detached`: cleanup has already hidden every handle and
  // taken every ring out of the doorbell's set.
  int destroy(Handle h, Kind k, bool detached);

  Server& srv_;
  Conn& c_;
  timer_t timer_{};
  bool have_timer_ = false;
};

// ---------------------------------------------------------------- commands

int Session::hello(const Request& req, Response& resp, OutFds& out) {
  if (c_.hello) return invalid();
  if (req.hello.version != kVersion) return EPROTONOSUPPORT;
  DeviceAttr attr;
  if (int rc = mid::query_device(c_.dev->dev, &attr)) return rc;
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return errno;
  Mapping m;
  const uint64_t bytes = kRingHeaderBytes + uint64_t(kEventEntries) * sizeof(ShmEvent);
  int rfd = make_ring("dverbs-events", bytes, &m);
  if (rfd < 0) {
    ::close(efd);
    return -rfd;
  }
  c_.ev_map = m;
  c_.ev_hdr = new (m.base) EventRingHeader();
  c_.ev = at<ShmEvent>(m.base, kRingHeaderBytes);
  c_.ev_n = kEventEntries;
  c_.efd = efd;
  c_.ahs.slots.assign(kAhSlots, AhSlot{});
  c_.hello = true;
  DevCtx& d = *c_.dev;
  d.conns_lock.lock();  // device events reach this connection from now on
  c_.dev_next = d.conns;
  if (d.conns) d.conns->dev_prev = &c_;
  d.conns = &c_;
  c_.on_dev_list = true;
  d.conns_lock.unlock();

  resp.hello.version = kVersion;
  std::snprintf(resp.hello.device_name, sizeof resp.hello.device_name, "%s", d.dev->name);
  resp.hello.node_guid = attr.node_guid;
  resp.hello.event_ring_entries = kEventEntries;
  resp.hello.event_ring_bytes = uint32_t(m.bytes);
  out.add(efd, false);
  out.add(rfd, true);
  return 0;
}

int Session::alloc_pd(Response& resp) {
  Reserved res(srv_, c_, Kind::pd);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) PdObj();
  int rc = o ? mid::alloc_pd(c_.dev->dev, &o->pd) : ENOMEM;
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  c_.table.publish(h, Kind::pd, o);
  created(Kind::pd, res);
  resp.handle = h;
  return 0;
}

int Session::reg_mr(const Request& req, InFds& in, Response& resp) {
  auto* pd = lookup<PdObj>(req.reg_mr.pd, Kind::pd);
  if (!pd) return EINVAL;
  Reserved res(srv_, c_, Kind::mr);
  if (res.rc()) return res.rc();
  // Review fix: charge the client's memlock account BEFORE mapping. map_client_memory
  // mlock()s the span, which populates every page of the client's memfds; doing that first
  // let a client without any RLIMIT_MEMLOCK make the daemon (LimitMEMLOCK=infinity) fault
  // in and pin up to 2^46 bytes of a sparse memfd before the ENOMEM.
  uint64_t span_bytes = 0;
  const uint32_t np = req.reg_mr.npieces;  // structural errors stay EINVAL, not ENOMEM
  if (np < 1 || np > kMaxPieces || np != in.n || client_span_bytes(req, &span_bytes) != 0)
    return invalid();
  if (int rc = srv_.charge_pinned(c_, span_bytes)) return rc;
  auto* o = new (std::nothrow) MrObj();
  if (!o) {
    srv_.uncharge_pinned(c_, span_bytes);
    return ENOMEM;
  }
  o->charged = span_bytes;
  void* host = nullptr;
  int rc = map_client_memory(req, in.fd, in.n, &o->span, &host);
  in.close_all();  // the mappings hold the memory now
  if (rc) {
    srv_.uncharge_pinned(c_, o->charged);
    delete o;
    return rc == EINVAL ? invalid() : rc;
  }
  Handle h = c_.table.reserve();
  rc = h ? mid::reg_mr_iova(pd->pd, host, req.reg_mr.iova, req.reg_mr.length, req.reg_mr.access,
                            &o->mr)
         : ENOMEM;
  if (rc) {
    if (h) c_.table.release(h);
    srv_.uncharge_pinned(c_, o->charged);
    o->span.unmap();
    delete o;
    return rc;
  }
  c_.table.publish(h, Kind::mr, o);
  created(Kind::mr, res);
  resp.handle = h;
  resp.mr.lkey = o->mr->lkey;
  resp.mr.rkey = o->mr->rkey;
  return 0;
}

int Session::create_cq(const Request& req, Response& resp, OutFds& out) {
  const uint32_t cqe = req.create_cq.cqe;
  if (cqe == 0 || cqe > (1u << 22)) return EINVAL;
  Reserved res(srv_, c_, Kind::cq);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) CqObj();
  if (!o) {
    c_.table.release(h);
    return ENOMEM;
  }
  o->conn = &c_;
  o->handle = h;
  int rc = mid::create_cq(c_.dev->dev, cqe, cq_comp, cq_async, o, &o->cq);
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  // The client's ring holds exactly what the HCA granted (a power of two): a completion
  // that finds it full is an overrun (pass_cq), so the cqe reported is what fits.
  const uint32_t granted = o->cq->cqe < (1u << 22) ? o->cq->cqe : (1u << 22);
  o->n = ring_entries(granted);
  int fd = make_ring("dverbs-cq", kRingHeaderBytes + uint64_t(o->n) * sizeof(ShmCqe), &o->map);
  if (fd < 0) {
    mid::destroy_cq(o->cq);
    delete o;
    c_.table.release(h);
    return -fd;
  }
  o->hdr = new (o->map.base) CqRingHeader();
  o->ring = at<ShmCqe>(o->map.base, kRingHeaderBytes);
  srv_.db_edit([o](DbSet& s) { s.cqs.push_back(o); });
  c_.table.publish(h, Kind::cq, o);
  created(Kind::cq, res);
  resp.handle = h;
  resp.cq.cqe = granted;
  resp.cq.ring_entries = o->n;
  resp.cq.ring_bytes = o->map.bytes;
  out.add(fd, true);
  return 0;
}

int Session::create_qp(const Request& req, Response& resp, OutFds& out) {
  const auto& r = req.create_qp;
  if (r.qp_type == QpType::xrc_recv) return xrc_recv_qp(req, resp);
  const bool xrc_send = r.qp_type == QpType::xrc_send;  // no receive side
  auto* pd = lookup<PdObj>(r.pd, Kind::pd);
  auto* scq = lookup<CqObj>(r.send_cq, Kind::cq);
  auto* rcq = xrc_send ? nullptr : lookup<CqObj>(r.recv_cq, Kind::cq);
  SrqObj* srq = r.srq && !xrc_send ? lookup<SrqObj>(r.srq, Kind::srq) : nullptr;
  if (!pd || !scq || (!rcq && !xrc_send) || (r.srq && !srq && !xrc_send)) return EINVAL;
  // A raw packet QP needs the CLIENT's CAP_NET_RAW (its pid from SO_PEERCRED), as Linux
  // asks of the process that creates one.
  if (r.qp_type == QpType::raw_packet && !client_has_cap(c_.pid, CAP_NET_RAW)) return EPERM;
  Reserved res(srv_, c_, Kind::qp);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) QpObj();
  if (!o) {
    c_.table.release(h);
    return ENOMEM;
  }
  o->conn = &c_;
  o->handle = h;
  o->scq = scq;
  o->rcq = rcq;
  o->srq = srq;
  mid::QpInitAttr init;
  init.qp_type = r.qp_type;
  init.send_cq = scq->cq;
  init.recv_cq = rcq ? rcq->cq : nullptr;
  init.srq = srq ? srq->srq : nullptr;
  init.cap = r.cap;
  init.sq_sig_all = r.sq_sig_all != 0;
  init.event_handler = qp_async;
  init.qp_context = o;
  int rc = mid::create_qp(pd->pd, &init, &o->qp);
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  QpAttr attr;
  mid::QpInitAttr granted;
  rc = mid::query_qp(o->qp, &attr, 0, &granted);
  const uint32_t kMaxWr = 1u << 20;
  if (!rc && (granted.cap.max_send_wr > kMaxWr || granted.cap.max_recv_wr > kMaxWr)) rc = ENOMEM;
  int fd = -1;
  if (!rc) {
    o->type = r.qp_type;
    o->cap = granted.cap;
    o->qp_num = o->qp->qp_num;
    o->sq_n = ring_entries(o->cap.max_send_wr);
    o->rq_n = srq ? 0 : ring_entries(o->cap.max_recv_wr);
    const uint64_t pg = page_size();
    const uint64_t sq_bytes = kRingHeaderBytes + uint64_t(o->sq_n) * sizeof(ShmSendWqe);
    const uint64_t rq_off = (sq_bytes + pg - 1) & ~(pg - 1);
    const uint64_t rq_bytes = kRingHeaderBytes + uint64_t(o->rq_n) * sizeof(ShmRecvWqe);
    fd = make_ring("dverbs-qp", rq_off + rq_bytes, &o->map);
    if (fd < 0) {
      rc = -fd;
    } else {
      o->sq = new (o->map.base) WorkRingHeader();
      o->sqe = at<ShmSendWqe>(o->map.base, kRingHeaderBytes);
      o->rq = new (at<char>(o->map.base, rq_off)) WorkRingHeader();
      o->rqe = at<ShmRecvWqe>(o->map.base, rq_off + kRingHeaderBytes);
      resp.qp.sq_offset = 0;
      resp.qp.rq_offset = rq_off;
    }
  }
  if (rc) {
    mid::destroy_qp(o->qp);
    delete o;
    c_.table.release(h);
    return rc;
  }
  srv_.db_edit([o](DbSet& s) { s.qps.push_back(o); });
  c_.table.publish(h, Kind::qp, o);
  created(Kind::qp, res);
  resp.handle = h;
  resp.qp.qp_num = o->qp_num;
  resp.qp.cap = o->cap;
  resp.qp.sq_entries = o->sq_n;
  resp.qp.rq_entries = o->rq_n;
  resp.qp.ring_bytes = o->map.bytes;
  out.add(fd, true);
  return 0;
}

// An XRC domain by the file the client sent (its own fd: it could open the file) or a
// private one. The daemon's HCA shares one domain among every open of the same file, by
// any client.
int Session::open_xrcd(const Request& req, InFds& in, Response& resp) {
  const auto& r = req.open_xrcd;
  if (in.n != (r.has_fd ? 1u : 0u)) return invalid();
  Reserved res(srv_, c_, Kind::xrcd);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) XrcdObj();
  int rc = o ? mid::open_xrcd(c_.dev->dev, r.has_fd ? in.fd[0] : -1, r.oflags, &o->xrcd)
             : ENOMEM;
  in.close_all();  // the HCA keys the domain by the file, not by this descriptor
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  c_.table.publish(h, Kind::xrcd, o);
  created(Kind::xrcd, res);
  resp.handle = h;
  return 0;
}

// create_qp of an XRC_RECV QP, or open_xrc_qp: a QP handle without rings (the QP has no
// queues), which the doorbell never sees.
int Session::xrc_recv_qp(const Request& req, Response& resp) {
  const bool open = req.cmd == Cmd::open_xrc_qp;
  auto* x = lookup<XrcdObj>(open ? req.open_xrc_qp.xrcd : req.create_qp.xrcd, Kind::xrcd);
  if (!x) return EINVAL;
  Reserved res(srv_, c_, Kind::qp);
  if (res.rc()) return res.rc();
  Handle h;
  auto* o = new_conn_obj<QpObj>(&h);
  if (!o) return ENOMEM;
  o->type = QpType::xrc_recv;
  int rc;
  if (open) {
    rc = mid::open_xrc_qp(x->xrcd, req.open_xrc_qp.qp_num, &o->qp);
  } else {
    mid::QpInitAttr init;
    init.qp_type = QpType::xrc_recv;
    rc = mid::create_xrc_recv_qp(x->xrcd, &init, &o->qp);
  }
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  o->qp_num = o->qp->qp_num;
  c_.table.publish(h, Kind::qp, o);
  created(Kind::qp, res);
  resp.handle = h;
  resp.qp.qp_num = o->qp_num;
  return 0;
}

int Session::modify_qp(Request& req) {
  auto* o = lookup<QpObj>(req.handle, Kind::qp);
  if (!o) return EINVAL;
  QpAttr& a = req.modify_qp.attr;
  fix_bool(&a.sq_sig_all);
  fix_bool(&a.ah_attr.is_global);
  const uint32_t mask = req.modify_qp.attr_mask;
  if (((mask & qp_attr_mask::state) && uint32_t(a.qp_state) > uint32_t(QpState::err)) ||
      ((mask & qp_attr_mask::cur_state) && uint32_t(a.cur_qp_state) > uint32_t(QpState::err)))
    return invalid();
  return mid::modify_qp(o->qp, &a, mask);
}

int Session::query_qp(const Request& req, Response& resp) {
  auto* o = lookup<QpObj>(req.handle, Kind::qp);
  if (!o) return EINVAL;
  QpAttr attr;
  mid::QpInitAttr init;
  if (int rc = mid::query_qp(o->qp, &attr, req.query_qp.attr_mask, &init)) return rc;
  resp.query_qp.attr = attr;
  resp.query_qp.cap = init.cap;
  resp.query_qp.qp_type = init.qp_type;
  resp.query_qp.sq_sig_all = init.sq_sig_all;
  return 0;
}

int Session::create_srq(const Request& req, Response& resp, OutFds& out) {
  const auto& r = req.create_srq;
  auto* pd = lookup<PdObj>(r.pd, Kind::pd);
  if (!pd) return EINVAL;
  if (r.max_wr == 0 || r.max_wr > (1u << 20) || r.max_sge == 0 || r.max_sge > 16) return invalid();
  // An XRC SRQ: its domain and CQ, both handles of this connection.
  XrcdObj* xrcd = r.xrcd ? lookup<XrcdObj>(r.xrcd, Kind::xrcd) : nullptr;
  CqObj* xcq = r.xrcd ? lookup<CqObj>(r.cq, Kind::cq) : nullptr;
  if (r.xrcd && (!xrcd || !xcq)) return EINVAL;
  Reserved res(srv_, c_, Kind::srq);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) SrqObj();
  if (!o) {
    c_.table.release(h);
    return ENOMEM;
  }
  o->conn = &c_;
  o->handle = h;
  mid::SrqInitAttr init;
  init.max_wr = r.max_wr;
  init.max_sge = r.max_sge;
  init.srq_limit = r.srq_limit;
  init.xrcd = xrcd ? xrcd->xrcd : nullptr;
  init.cq = xcq ? xcq->cq : nullptr;
  int rc = mid::create_srq(pd->pd, &init, srq_async, o, &o->srq);
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  o->max_wr = o->srq->max_wr ? o->srq->max_wr : r.max_wr;  // granted: what fits
  o->max_sge = r.max_sge;
  o->srq_limit = r.srq_limit;
  o->n = ring_entries(o->max_wr);
  int fd = make_ring("dverbs-srq", kRingHeaderBytes + uint64_t(o->n) * sizeof(ShmRecvWqe), &o->map);
  if (fd < 0) {
    mid::destroy_srq(o->srq);
    delete o;
    c_.table.release(h);
    return -fd;
  }
  o->hdr = new (o->map.base) WorkRingHeader();
  o->ring = at<ShmRecvWqe>(o->map.base, kRingHeaderBytes);
  srv_.db_edit([o](DbSet& s) { s.srqs.push_back(o); });
  c_.table.publish(h, Kind::srq, o);
  created(Kind::srq, res);
  resp.handle = h;
  resp.srq.max_wr = o->max_wr;
  resp.srq.max_sge = o->max_sge;
  resp.srq.srq_limit = o->srq_limit;
  resp.srq.ring_entries = o->n;
  resp.srq.ring_bytes = o->map.bytes;
  resp.srq.srq_num = o->srq->srq_num;
  out.add(fd, true);
  return 0;
}

int Session::modify_srq(const Request& req) {
  auto* o = lookup<SrqObj>(req.handle, Kind::srq);
  if (!o) return EINVAL;
  const auto& r = req.modify_srq;
  int rc = mid::modify_srq(o->srq, r.max_wr, r.srq_limit, r.mask);
  if (rc == 0 && (r.mask & 2u)) o->srq_limit = r.srq_limit;
  return rc;
}

int Session::alloc_mw(const Request& req, Response& resp) {
  auto* pd = lookup<PdObj>(req.alloc_mw.pd, Kind::pd);
  if (!pd) return EINVAL;
  Reserved res(srv_, c_, Kind::mw);
  if (res.rc()) return res.rc();
  Handle h = c_.table.reserve();
  if (!h) return ENOMEM;
  auto* o = new (std::nothrow) MwObj();
  int rc = o ? mid::alloc_mw(pd->pd, req.alloc_mw.type, &o->mw) : ENOMEM;
  if (rc) {
    delete o;
    c_.table.release(h);
    return rc;
  }
  c_.table.publish(h, Kind::mw, o);
  created(Kind::mw, res);
  resp.handle = h;
  resp.mw.rkey = o->mw->rkey;
  return 0;
}

int Session::stats(Response& resp) {
  Counters& s = srv_.stats;
  auto ld = [](const std::atomic<uint64_t>& v) { return v.load(std::memory_order_relaxed); };
  Stats& o = resp.stats;
  const uint64_t all = ld(s.clients);
  o.clients = all ? all - 1 : 0;  // not counting the asking connection
  o.pds = ld(s.objects[int(Kind::pd)]);
  o.mrs = ld(s.objects[int(Kind::mr)]);
  o.cqs = ld(s.objects[int(Kind::cq)]);
  o.qps = ld(s.objects[int(Kind::qp)]);
  o.srqs = ld(s.objects[int(Kind::srq)]);
  o.ahs = ld(s.objects[int(Kind::ah)]);
  o.mws = ld(s.objects[int(Kind::mw)]);
  o.pinned_bytes = ld(s.pinned_bytes);
  o.bad_commands = ld(s.bad_commands);
  o.bad_wqes = ld(s.bad_wqes);
  o.corrupt_rings = ld(s.corrupt_rings);
  o.wqes_posted = ld(s.wqes_posted);
  o.cqes_delivered = ld(s.cqes_delivered);
  o.events_delivered = ld(s.events_delivered);
  o.events_dropped = ld(s.events_dropped);
  o.refused_conns = ld(s.refused_conns);
  return 0;
}

int Session::destroy(Handle h, Kind k, bool detached) {
  void* p = nullptr;
  if (detached) {
    if (c_.table.owner_kind(h, &p) != k) return EINVAL;
  } else if (!(p = c_.table.get(h, k))) {
    return invalid();
  }
  // Unpublish and wait out the doorbell (objects it can reach by handle).
  auto unpublish = [&] {
    if (detached) return;
    c_.table.hide(h);
    srv_.synchronize();
  };
  auto republish = [&] {
    if (!detached) c_.table.publish(h, k, p);
  };
  int rc = 0;
  switch (k) {
    case Kind::pd: {
      auto* o = static_cast<PdObj*>(p);
      drop_ahs(c_, srv_.stats, h);  // the doorbell's AHs on it (internal.h, AhCache)
      if ((rc = mid::dealloc_pd(o->pd)) != 0) return rc;
      delete o;
      break;
    }
    case Kind::mr: {
      auto* o = static_cast<MrObj*>(p);
      unpublish();
      if ((rc = mid::dereg_mr(o->mr)) != 0) {
        republish();
        return rc;
      }
      o->span.unmap();  // dereg_mr quiesced the HCA: nothing copies through it any more
      srv_.uncharge_pinned(c_, o->charged);
      delete o;
      break;
    }
    case Kind::mw: {
      auto* o = static_cast<MwObj*>(p);
      unpublish();
      if ((rc = mid::dealloc_mw(o->mw)) != 0) {
        republish();
        return rc;
      }
      delete o;
      break;
    }
    case Kind::cq: {
      auto* o = static_cast<CqObj*>(p);
      if (o->cq->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
      if (!detached) {
        c_.table.hide(h);
        srv_.db_edit([o](DbSet& s) { erase_ptr(s.cqs, o); });
      }
      if ((rc = mid::destroy_cq(o->cq)) != 0) {
        if (!detached) srv_.db_edit([o](DbSet& s) { s.cqs.push_back(o); });
        republish();
        return rc;
      }
      o->map.unmap();
      delete o;
      break;
    }
    case Kind::qp: {
      auto* o = static_cast<QpObj*>(p);
      if (!detached) {
        c_.table.hide(h);
        srv_.db_edit([o](DbSet& s) { erase_ptr(s.qps, o); });
      }
      if ((rc = mid::destroy_qp(o->qp)) != 0) {
        if (!detached) srv_.db_edit([o](DbSet& s) { s.qps.push_back(o); });
        republish();
        return rc;
      }
      o->map.unmap();
      delete o;
      break;
    }
    case Kind::xrcd: {
      auto* o = static_cast<XrcdObj*>(p);
      if ((rc = mid::close_xrcd(o->xrcd)) != 0) return rc;  // EBUSY: SRQs or QPs in it
      delete o;
      break;
    }
    case Kind::srq: {
      auto* o = static_cast<SrqObj*>(p);
      if (o->srq->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
      if (!detached) {
        c_.table.hide(h);
        srv_.db_edit([o](DbSet& s) { erase_ptr(s.srqs, o); });
      }
      if ((rc = mid::destroy_srq(o->srq)) != 0) {
        if (!detached) srv_.db_edit([o](DbSet& s) { s.srqs.push_back(o); });
        republish();
        return rc;
      }
      o->map.unmap();
      delete o;
      break;
    }
    default:
      return EINVAL;
  }
  c_.table.release(h);
  srv_.release_object(c_, k);
  srv_.stats.objects[int(k)].fetch_sub(1, std::memory_order_relaxed);
  return 0;
}

int Session::dispatch(Request& req, InFds& in, Response& resp, OutFds& out) {
  if (!c_.hello && req.cmd != Cmd::hello) return invalid();
  // Unexpected fds are closed by the caller.
  if (in.n && req.cmd != Cmd::reg_mr && req.cmd != Cmd::rereg_mr && req.cmd != Cmd::open_xrcd)
    return invalid();
  switch (req.cmd) {
    case Cmd::hello:
      return hello(req, resp, out);
    case Cmd::query_device:
      return mid::query_device(c_.dev->dev, &resp.device);
    case Cmd::query_port:
      return mid::query_port(c_.dev->dev, req.port.port_num, &resp.port);
    case Cmd::query_gid:
      return mid::query_gid(c_.dev->dev, req.port.port_num, req.port.index, &resp.gid);
    case Cmd::alloc_pd:
      return alloc_pd(resp);
    case Cmd::dealloc_pd:
      return destroy(req.handle, Kind::pd, false);
    case Cmd::reg_mr:
      return reg_mr(req, in, resp);
    case Cmd::dereg_mr:
      return destroy(req.handle, Kind::mr, false);
    case Cmd::create_cq:
      return create_cq(req, resp, out);
    case Cmd::destroy_cq:
      return destroy(req.handle, Kind::cq, false);
    case Cmd::create_qp:
      return create_qp(req, resp, out);
    case Cmd::modify_qp:
      return modify_qp(req);
    case Cmd::query_qp:
      return query_qp(req, resp);
    case Cmd::destroy_qp:
      return destroy(req.handle, Kind::qp, false);
    case Cmd::create_srq:
      return create_srq(req, resp, out);
    case Cmd::modify_srq:
      return modify_srq(req);
    case Cmd::destroy_srq:
      return destroy(req.handle, Kind::srq, false);
    case Cmd::alloc_mw:
      return alloc_mw(req, resp);
    case Cmd::dealloc_mw:
      return destroy(req.handle, Kind::mw, false);
    case Cmd::stats:
      return stats(resp);
    case Cmd::resize_cq: {
      int fd = -1;
      const int rc = daemon::resize_cq(srv_, c_, req, resp, &fd);
      if (rc == 0) out.add(fd, true);
      return rc;
    }
    case Cmd::rereg_mr:
      return rereg_mr(srv_, c_, req, in.fd, in.n, resp);
    case Cmd::open_xrcd:
      return open_xrcd(req, in, resp);
    case Cmd::close_xrcd:
      return destroy(req.handle, Kind::xrcd, false);
    case Cmd::open_xrc_qp:
      return xrc_recv_qp(req, resp);
    case Cmd::attach_mcast:
    case Cmd::detach_mcast: {
      auto* o = lookup<QpObj>(req.handle, Kind::qp);
      if (!o) return EINVAL;
      return req.cmd == Cmd::attach_mcast ? mid::attach_mcast(o->qp, &req.mcast.gid)
                                          : mid::detach_mcast(o->qp, &req.mcast.gid);
    }
    case Cmd::create_flow:
    case Cmd::destroy_flow: {
      // Rules steer only to this client's own QPs (its handle table names them).
      auto* o = lookup<QpObj>(req.handle, Kind::qp);
      if (!o) return EINVAL;
      return req.cmd == Cmd::create_flow ? mid::create_flow(o->qp, &req.flow.rule, &resp.flow.id)
                                         : mid::destroy_flow(o->qp, req.flow.id);
    }
  }
  return invalid();
}

// ---------------------------------------------------------------- I/O

// One datagram: false when the connection is over (EOF or a socket error).
bool Session::receive() {
  alignas(Request) unsigned char buf[sizeof(Request) + 64];
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxInFds)];
  iovec iov{buf, sizeof buf};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  ssize_t n = ::recvmsg(c_.fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (n == 0) return false;

  InFds in;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int f;
      std::memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof f);
      if (in.n < uint32_t(kMaxInFds))
        in.fd[in.n++] = f;
      else
        ::close(f);
    }
  }

  Response resp;
  OutFds out;
  uint32_t seq = 0;
  if (size_t(n) >= offsetof(Request, seq) + sizeof seq)
    std::memcpy(&seq, buf + offsetof(Request, seq), sizeof seq);
  int status;
  Request req;
  if (size_t(n) != sizeof(Request) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    status = invalid();
  } else {
    std::memcpy(static_cast<void*>(&req), buf, sizeof req);  // copy first, then validate
    status = req.magic != kMagic ? invalid() : dispatch(req, in, resp, out);
  }
  srv_.command_done();  // before the reply: see Server::command_done
  in.close_all();
  if (status != 0) out.done();
  resp.seq = seq;
  resp.status = status;
  resp.nfds = out.n;

  iovec riov{&resp, sizeof resp};
  msghdr rh{};
  rh.msg_iov = &riov;
  rh.msg_iovlen = 1;
  alignas(cmsghdr) char rbuf[CMSG_SPACE(sizeof(int) * 2)];
  if (out.n) {
    rh.msg_control = rbuf;
    rh.msg_controllen = CMSG_SPACE(sizeof(int) * out.n);
    cmsghdr* cm = CMSG_FIRSTHDR(&rh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * out.n);
    std::memcpy(CMSG_DATA(cm), out.fd, sizeof(int) * out.n);
  }
  ssize_t s;
  do {
    s = ::sendmsg(c_.fd, &rh, MSG_NOSIGNAL);
  } while (s < 0 && errno == EINTR);
  out.done();
  return s == ssize_t(sizeof resp);
}

// Relays a kick to the client's eventfd. The client shares that file: it may have cleared
// O_NONBLOCK and filled the counter. A thread-directed timer bounds the write (SIGUSR1,
// installed without SA_RESTART, interrupts it): a hostile client can only stall itself.
void Session::relay_kick() {
  uint64_t v;
  ssize_t n = ::read(c_.notify_fd, &v, sizeof v);
  (void)n;
  c_.kick_pending.store(false, std::memory_order_release);
  if (c_.efd < 0) return;
  int fl = ::fcntl(c_.efd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) ::fcntl(c_.efd, F_SETFL, fl | O_NONBLOCK);
  itimerspec its{};
  its.it_value.tv_nsec = 100 * 1000 * 1000;
  if (have_timer_) ::timer_settime(timer_, 0, &its, nullptr);
  const uint64_t one = 1;
  n = ::write(c_.efd, &one, sizeof one);
  if (have_timer_) {
    its.it_value.tv_nsec = 0;
    ::timer_settime(timer_, 0, &its, nullptr);
  }
}

void Session::cleanup() {
  // 1. No device event reaches this connection any more.
  if (c_.on_dev_list) {
    DevCtx& d = *c_.dev;
    d.conns_lock.lock();
    if (c_.dev_prev)
      c_.dev_prev->dev_next = c_.dev_next;
    else
      d.conns = c_.dev_next;
    if (c_.dev_next) c_.dev_next->dev_prev = c_.dev_prev;
    c_.on_dev_list = false;
    d.conns_lock.unlock();
  }
  // 2. Unpublish every handle and every ring, then wait out the doorbell once.
  // Review fix: QPs before MWs. A bind_mw WQE still queued in the HCA's SQ holds the
  // mid::Mw pointer (pmd/hca execute_local dereferences it) and dealloc_mw deletes it, so
  // freeing MWs while the QPs still exist was a use-after-free on kill -9 during a bind;
  // destroy_qp drops the queued WQEs (and does not care about bound windows).
  static const Kind order[] = {Kind::qp, Kind::mw, Kind::ah, Kind::srq, Kind::xrcd,
                               Kind::cq, Kind::mr, Kind::pd};
  std::vector<Handle> hs[kKinds];
  bool any = false;
  for (Kind k : order) {
    c_.table.collect(k, &hs[int(k)]);
    for (Handle h : hs[int(k)]) c_.table.hide(h);
    any |= !hs[int(k)].empty();
  }
  if (any) {
    Conn* me = &c_;
    srv_.db_edit([me](DbSet& s) {
      std::erase_if(s.qps, [me](QpObj* o) { return o->conn == me; });
      std::erase_if(s.srqs, [me](SrqObj* o) { return o->conn == me; });
      std::erase_if(s.cqs, [me](CqObj* o) { return o->conn == me; });
    });
  }
  // 3. Destroy in dependency order; the doorbell's AHs go with the AH handles (after the
  // QPs whose queued WQEs may name them, before the PDs).
  for (Kind k : order) {
    if (k == Kind::ah) drop_ahs(c_, srv_.stats, 0);
    for (Handle h : hs[int(k)]) {
      if (int rc = destroy(h, k, true)) {
        std::fprintf(stderr, "dverbsd: client pid %d: cannot destroy %s: %s (left allocated)\n",
                     int(c_.pid), kind_name(k), std::strerror(rc));
        c_.leak = true;
        continue;
      }
      c_.destroyed++;
    }
  }
  // 4. Events.
  c_.ev_lock.lock();
  c_.ev = nullptr;
  c_.ev_lock.unlock();
  c_.ev_map.unmap();
  if (c_.efd >= 0) ::close(c_.efd);
  c_.efd = -1;
}

void Session::run() {
  sigevent sev{};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGUSR1;
  sev.sigev_notify_thread_id = int(::syscall(SYS_gettid));
  have_timer_ = ::timer_create(CLOCK_MONOTONIC, &sev, &timer_) == 0;

  pollfd p[2] = {{c_.fd, POLLIN, 0}, {c_.notify_fd, POLLIN, 0}};
  for (;;) {
    int r = ::poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents & POLLIN) relay_kick();
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!receive()) break;
    }
  }
  cleanup();
  if (have_timer_) ::timer_delete(timer_);
}

}  // namespace

void Server::session_main(Conn* c) {
  std::fprintf(stderr, "dverbsd: client pid %d uid %u connected to %s%u\n", int(c->pid),
               unsigned(c->uid), kSocketPrefix, c->dev->index);
  Session s(*this, *c);
  s.run();
  std::fprintf(stderr,
               "dverbsd: client pid %d uid %u disconnected, destroyed %" PRIu64 " objects\n",
               int(c->pid), unsigned(c->uid), c->destroyed);
  if (c->notify_fd >= 0) ::close(c->notify_fd);
  c->notify_fd = -1;
  // done first: --max-conns counts connections not done, and a client that has seen
  // `clients` drop may connect again at once.
  c->done.store(true, std::memory_order_release);
  stats.clients.fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace dverbs::daemon
