// The remote driver's control verbs: each is one command to dverbsd (proto.h), the
// analogue of a uverbs write(). The daemon validates everything again; the checks here
// only keep obviously bad requests (and their side effects, such as re-backing memory)
// off the socket and give the same errors as the embedded HCA.
//
// Creation maps the rings the daemon returns (CQ, QP, SRQ memfds) after checking their
// geometry; a response the client cannot use destroys the new object again (EPROTO).
// Destruction: the handle leaves the event maps (obj_lock) before the destroy command, so
// the event thread never hands a freed object to the midlayer. Once the daemon is gone
// every command fails with EIO, except the destroys, which free the client object and
// return 0 so applications can clean up (the daemon freed its side when the socket closed).
//
// Context: process context, may sleep; create_ah/destroy_ah never sleep (no command).
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <new>

#include "midlayer/core.h"
#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

using daemon::Cmd;
using daemon::Request;
using daemon::Response;

// ---------------------------------------------------------------- shared pieces

// An object joins its device's event map (where the event thread finds it by handle) at
// the first control call that can make it raise an event, not inside its create op: the
// midlayer fills the object's common fields (handlers, contexts) after the op returns, and
// the event thread may read them only once that is ordered before it by obj_lock. A QP
// joins at its first modify_qp (a QP in RESET raises nothing), an SRQ at modify_srq or when
// a QP attaches it, a CQ when a QP attaches it (nothing completes on a CQ without one).
// Context: process context (takes obj_lock).
template <class Map, class Obj>
void publish_for_events(Device& dev, Handle h, Map* map, Obj* obj) {
  std::lock_guard<mid::Mutex> g(dev.obj_lock);
  map->try_emplace(h, obj);
}
int Mapping::map(int fd, uint64_t len) {
  struct stat st;
  int rc = 0;
  if (len < daemon::kRingHeaderBytes || len > (uint64_t(1) << 40))
    rc = EPROTO;
  else if (::fstat(fd, &st) != 0)
    rc = errno;
  else if (uint64_t(st.st_size) < len)
    rc = EPROTO;  // touching past the end of a memfd is SIGBUS
  if (rc == 0) {
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      rc = errno == ENOMEM ? ENOMEM : errno;
    } else {
      base = p;
      bytes = len;
    }
  }
  ::close(fd);
  return rc;
}

void Mapping::unmap() noexcept {
  if (base) ::munmap(base, bytes);
  base = nullptr;
  bytes = 0;
}

Device::~Device() {
  stop_events(this);
  event_map.unmap();
  if (event_fd >= 0) ::close(event_fd);
  if (stop_fd >= 0) ::close(stop_fd);
}

void Device::raise_fatal() noexcept {
  if (fatal_raised.exchange(true, std::memory_order_acq_rel)) return;
  mid::Event ev;
  ev.device = this;
  ev.type = EventType::device_fatal;
  mid::dispatch_event(ev);
}

int Device::command(Request& req, Response* resp, const int* fds, int nfds, int* rfds,
                    int* nrfds) {
  int rc = conn.call(req, resp, fds, nfds, rfds, nrfds);
  if (rc == EIO && conn.dead()) raise_fatal();
  if (rc) return rc;
  if (resp->status < 0 || resp->status > 4095) return EPROTO;
  return resp->status;
}

Request make(Cmd cmd, Handle handle) {
  Request r;
  std::memset(static_cast<void*>(&r), 0, sizeof r);
  r.cmd = cmd;
  r.handle = handle;
  return r;
}

// Sends a destroy/dealloc. 0 also when the daemon is gone (it freed everything when the
// socket closed); otherwise the daemon's status (EBUSY…).
int destroy_cmd(Device& dev, Cmd cmd, Handle h) {
  if (dev.dead()) return 0;
  Request req = make(cmd, h);
  Response resp;
  int rc = dev.command(req, &resp);
  return rc == EIO && dev.dead() ? 0 : rc;
}

namespace {

bool pow2(uint64_t v) { return v && !(v & (v - 1)); }

// Takes the single descriptor a create command returns (closing any extra).
int take_one_fd(const int* fds, int n, int* fd) {
  for (int i = 1; i < n; i++) ::close(fds[i]);
  if (n < 1) return EPROTO;
  *fd = fds[0];
  return 0;
}

// ---------------------------------------------------------------- device and port
// The daemon stamps completions with the TSC (DeviceAttr::core_clock_khz): one counter for
// every process of the host, so the client reads the same clock itself, without a command.
int read_clock(mid::Device*, uint64_t* raw) {
#if defined(__x86_64__)
  *raw = __builtin_ia32_rdtsc();
  return 0;
#else
  (void)raw;
  return EOPNOTSUPP;
#endif
}

int query_device(mid::Device* d, DeviceAttr* a) {
  Device& dev = rdev(d);
  {
    std::lock_guard<mid::Mutex> g(dev.attr_lock);
    if (dev.have_attr) {
      *a = dev.attr;
      return 0;
    }
  }
  Request req = make(Cmd::query_device);
  Response resp;
  if (int rc = dev.command(req, &resp)) return rc;
  DeviceAttr got = resp.device;
  got.fw_ver[sizeof got.fw_ver - 1] = '\0';
#if !defined(__x86_64__)
  got.core_clock_khz = 0;  // read_clock reads the daemon's clock (the TSC) on x86-64 only
#endif
  std::lock_guard<mid::Mutex> g(dev.attr_lock);
  dev.attr = got;
  dev.have_attr = true;
  *a = got;
  return 0;
}

int query_port(mid::Device* d, uint8_t port_num, PortAttr* a) {
  if (port_num < 1 || port_num > d->phys_port_cnt) return EINVAL;
  Request req = make(Cmd::query_port);
  req.port.port_num = port_num;
  Response resp;
  if (int rc = rdev(d).command(req, &resp)) return rc;
  *a = resp.port;
  return 0;
}

int query_gid(mid::Device* d, uint8_t port_num, int index, Gid* g) {
  if (port_num < 1 || port_num > d->phys_port_cnt || index < 0) return EINVAL;
  Request req = make(Cmd::query_gid);
  req.port.port_num = port_num;
  req.port.index = index;
  Response resp;
  if (int rc = rdev(d).command(req, &resp)) return rc;
  *g = resp.gid;
  return 0;
}

// ---------------------------------------------------------------- PD
int alloc_pd(mid::Device* d, mid::Pd** out) {
  Pd* pd = new (std::nothrow) Pd();
  if (!pd) return ENOMEM;
  Request req = make(Cmd::alloc_pd);
  Response resp;
  if (int rc = rdev(d).command(req, &resp)) {
    delete pd;
    return rc;
  }
  pd->handle = resp.handle;
  *out = pd;
  return 0;
}

int dealloc_pd(mid::Pd* p) {
  if (int rc = destroy_cmd(rdev(p->device), Cmd::dealloc_pd, to_pd(p)->handle)) return rc;
  delete to_pd(p);
  return 0;
}

// ---------------------------------------------------------------- MR
// Zero copy without the application's help: the registered pages are moved onto memfds
// the daemon maps too (mem.cc), then the daemon registers them at the client's addresses.
int reg_mr(mid::Pd* pd, void* addr, uint64_t length, uint32_t acc, mid::Mr** out) {
  Device& dev = rdev(pd->device);
  if (dev.dead()) return EIO;
  if (acc & ~access::supported) return EINVAL;
  if ((acc & (access::remote_write | access::remote_atomic)) && !(acc & access::local_write))
    return EINVAL;  // IBA 10.6.3.1
  const uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (length == 0 || a + length < a) return EINVAL;
  Mr* mr = new (std::nothrow) Mr();
  if (!mr) return ENOMEM;
  Backing& b = mr->backing;
  if (int rc = mem_attach(a, length, &b)) {
    delete mr;
    return rc;
  }
  Request req = make(Cmd::reg_mr);
  req.reg_mr.pd = to_pd(pd)->handle;
  req.reg_mr.access = acc;
  req.reg_mr.iova = a;
  req.reg_mr.length = length;
  req.reg_mr.page_start = b.page_start;
  req.reg_mr.npieces = b.npieces;
  std::memcpy(req.reg_mr.pieces, b.pieces, sizeof(daemon::MrPiece) * b.npieces);
  Response resp;
  if (int rc = dev.command(req, &resp, b.fds, int(b.npieces))) {
    mem_detach(&b);
    delete mr;
    return rc;
  }
  mr->handle = resp.handle;
  mr->lkey = resp.mr.lkey;
  mr->rkey = resp.mr.rkey;
  *out = mr;
  return 0;
}

int dereg_mr(mid::Mr* m) {
  Mr* mr = to_mr(m);
  if (int rc = destroy_cmd(rdev(m->device), Cmd::dereg_mr, mr->handle)) return rc;
  mem_detach(&mr->backing);
  delete mr;
  return 0;
}

// ---------------------------------------------------------------- MW
int alloc_mw(mid::Pd* pd, uint32_t type, mid::Mw** out) {
  Mw* mw = new (std::nothrow) Mw();
  if (!mw) return ENOMEM;
  Request req = make(Cmd::alloc_mw);
  req.alloc_mw.pd = to_pd(pd)->handle;
  req.alloc_mw.type = type;
  Response resp;
  if (int rc = rdev(pd->device).command(req, &resp)) {
    delete mw;
    return rc;
  }
  mw->handle = resp.handle;
  mw->rkey = resp.mw.rkey;
  *out = mw;
  return 0;
}

int dealloc_mw(mid::Mw* m) {
  if (int rc = destroy_cmd(rdev(m->device), Cmd::dealloc_mw, to_mw(m)->handle)) return rc;
  delete to_mw(m);
  return 0;
}

// ---------------------------------------------------------------- CQ
int create_cq(mid::Device* d, uint32_t cqe, mid::Cq** out) {
  Device& dev = rdev(d);
  if (cqe == 0) return EINVAL;
  Cq* cq = new (std::nothrow) Cq();
  if (!cq) return ENOMEM;
  Request req = make(Cmd::create_cq);
  req.create_cq.cqe = cqe;
  Response resp;
  int fds[kMaxRecvFds];
  int nfds = 0;
  if (int rc = dev.command(req, &resp, nullptr, 0, fds, &nfds)) {
    delete cq;
    return rc;
  }
  const auto& r = resp.cq;
  int fd = -1;
  int rc = take_one_fd(fds, nfds, &fd);
  if (rc == 0) {
    if (!pow2(r.ring_entries) || r.cqe == 0 || r.cqe > r.ring_entries ||
        r.ring_bytes <
            daemon::kRingHeaderBytes + uint64_t(r.ring_entries) * sizeof(daemon::ShmCqe)) {
      ::close(fd);
      rc = EPROTO;
    } else {
      rc = cq->map.map(fd, r.ring_bytes);
    }
  }
  if (rc) {
    destroy_cmd(dev, Cmd::destroy_cq, resp.handle);
    delete cq;
    return rc;
  }
  auto* base = static_cast<uint8_t*>(cq->map.base);
  cq->handle = resp.handle;
  cq->hdr = reinterpret_cast<daemon::CqRingHeader*>(base);
  cq->ring = reinterpret_cast<daemon::ShmCqe*>(base + daemon::kRingHeaderBytes);
  cq->mask = r.ring_entries - 1;
  cq->cons = cq->hdr->cons.v.load(std::memory_order_relaxed);
  cq->cqe = r.cqe;
  // Not in the event map yet: see publish_for_events.
  *out = cq;
  return 0;
}

int destroy_cq(mid::Cq* c) {
  Cq* cq = to_cq(c);
  Device& dev = rdev(c->device);
  {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);  // waits out the event thread's pass
    dev.cqs.erase(cq->handle);
  }
  if (int rc = destroy_cmd(dev, Cmd::destroy_cq, cq->handle)) {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.cqs[cq->handle] = cq;
    return rc;
  }
  cq->map.unmap();
  delete cq;
  return 0;
}

// ---------------------------------------------------------------- QP
// Checks one work ring of a QP/SRQ memfd and points `w` at it.
bool setup_ring(WorkRing* w, void* base, uint64_t bytes, uint64_t offset, uint32_t entries,
                uint32_t slot_size, uint32_t granted) {
  if (!pow2(entries) || offset % 64 || offset > bytes) return false;
  const uint64_t need = daemon::kRingHeaderBytes + uint64_t(entries) * slot_size;
  if (bytes - offset < need) return false;
  auto* p = static_cast<uint8_t*>(base) + offset;
  w->hdr = reinterpret_cast<daemon::WorkRingHeader*>(p);
  w->slots = p + daemon::kRingHeaderBytes;
  w->mask = entries - 1;
  w->slot_size = slot_size;
  w->limit = granted < entries ? granted : entries;
  w->prod = w->hdr->prod.v.load(std::memory_order_relaxed);
  return true;
}

uint32_t ud_message_limit(Device& dev) {
  PortAttr pa;
  if (remote::query_port(&dev, 1, &pa) != 0) return mtu_bytes(Mtu::mtu1024);
  return mtu_bytes(pa.active_mtu);
}

// A raw packet QP's largest frame, as the daemon's HCA reports it (0 if it cannot say:
// every frame is then refused here, as the daemon would refuse it).
uint32_t raw_frame_limit(Device& dev) {
  DeviceAttr da;
  return remote::query_device(&dev, &da) == 0 ? da.max_raw_frame : 0;
}

int create_qp(mid::Pd* pd, const mid::QpInitAttr* init, mid::Qp** out) {
  if (init->qp_type == QpType::xrc_recv) return xrc_recv_qp(init->xrcd, nullptr, out);  // xrc.cc
  Device& dev = rdev(pd->device);
  const bool xrc_send = init->qp_type == QpType::xrc_send;  // a send queue only
  if (init->qp_type != QpType::rc && init->qp_type != QpType::uc &&
      init->qp_type != QpType::ud && !xrc_send && init->qp_type != QpType::raw_packet)
    return EINVAL;
  // dverbsd owns each port's QP1 (the CM runs in the daemon), not its clients.
  if (init->gsi) return EOPNOTSUPP;
  if (!init->send_cq || (!init->recv_cq && !xrc_send)) return EINVAL;
  Qp* qp = new (std::nothrow) Qp();
  if (!qp) return ENOMEM;
  if (init->qp_type == QpType::ud) qp->ud_mtu = ud_message_limit(dev);
  if (init->qp_type == QpType::raw_packet) qp->ud_mtu = raw_frame_limit(dev);
  Request req = make(Cmd::create_qp);
  auto& c = req.create_qp;
  c.pd = to_pd(pd)->handle;
  c.send_cq = to_cq(init->send_cq)->handle;
  c.recv_cq = init->recv_cq ? to_cq(init->recv_cq)->handle : 0;
  c.srq = init->srq ? to_srq(init->srq)->handle : 0;
  c.qp_type = init->qp_type;
  c.cap = init->cap;
  c.sq_sig_all = init->sq_sig_all;
  Response resp;
  int fds[kMaxRecvFds];
  int nfds = 0;
  if (int rc = dev.command(req, &resp, nullptr, 0, fds, &nfds)) {
    delete qp;
    return rc;
  }
  const auto& r = resp.qp;
  int fd = -1;
  int rc = take_one_fd(fds, nfds, &fd);
  if (rc == 0) rc = qp->map.map(fd, r.ring_bytes);
  if (rc == 0) {
    QpCap cap = r.cap;
    // The WQE layout bounds what can be posted, whatever the daemon granted.
    constexpr uint32_t kWqeSges = sizeof(daemon::ShmSendWqe::sge) / sizeof(Sge);
    constexpr uint32_t kWqeInline = sizeof(daemon::ShmSendWqe::inline_data);
    if (cap.max_send_sge > kWqeSges) cap.max_send_sge = kWqeSges;
    if (cap.max_recv_sge > kWqeSges) cap.max_recv_sge = kWqeSges;
    if (cap.max_inline_data > kWqeInline) cap.max_inline_data = kWqeInline;
    qp->cap = cap;
    bool ok = setup_ring(&qp->sq, qp->map.base, r.ring_bytes, r.sq_offset, r.sq_entries,
                         sizeof(daemon::ShmSendWqe), cap.max_send_wr);
    if (ok && !init->srq)
      ok = setup_ring(&qp->rq, qp->map.base, r.ring_bytes, r.rq_offset, r.rq_entries,
                      sizeof(daemon::ShmRecvWqe), cap.max_recv_wr);
    if (!ok) rc = EPROTO;
  }
  if (rc) {
    qp->map.unmap();
    destroy_cmd(dev, Cmd::destroy_qp, resp.handle);
    delete qp;
    return rc;
  }
  qp->handle = resp.handle;
  qp->qp_num = r.qp_num;
  // The QP's CQs and SRQ can raise events from now on; their midlayer fields were filled
  // when their own create calls returned, before this one.
  {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    for (mid::Cq* c : {init->send_cq, init->recv_cq})
      if (c) dev.cqs.try_emplace(to_cq(c)->handle, c);
    if (init->srq) dev.srqs.try_emplace(to_srq(init->srq)->handle, init->srq);
  }
  *out = qp;
  return 0;
}

// Multicast groups live in the daemon's HCA, as everything else of the QP.
int mcast(mid::Qp* q, const Gid* g, Cmd cmd) {
  Request req = make(cmd, to_qp(q)->handle);
  req.mcast.gid = *g;
  Response resp;
  return rdev(q->device).command(req, &resp);
}
int attach_mcast(mid::Qp* q, const Gid* g) { return mcast(q, g, Cmd::attach_mcast); }
int detach_mcast(mid::Qp* q, const Gid* g) { return mcast(q, g, Cmd::detach_mcast); }

// Flow steering rules live in the daemon's HCA too; it checks that the QP is this
// client's and a raw packet QP.
int create_flow(mid::Qp* q, const FlowRule* rule, uint32_t* id) {
  Request req = make(Cmd::create_flow, to_qp(q)->handle);
  req.flow.rule = *rule;
  Response resp;
  int rc = rdev(q->device).command(req, &resp);
  if (rc == 0) *id = resp.flow.id;
  return rc;
}
int destroy_flow(mid::Qp* q, uint32_t id) {
  Request req = make(Cmd::destroy_flow, to_qp(q)->handle);
  req.flow.id = id;
  Response resp;
  return rdev(q->device).command(req, &resp);
}

int modify_qp(mid::Qp* q, const QpAttr* a, uint32_t mask) {
  Qp* qp = to_qp(q);
  publish_for_events(rdev(q->device), qp->handle, &rdev(q->device).qps, q);
  Request req = make(Cmd::modify_qp, qp->handle);
  req.modify_qp.attr = *a;
  req.modify_qp.attr_mask = mask;
  Response resp;
  if (int rc = rdev(q->device).command(req, &resp)) return rc;
  // The posting checks follow the state the daemon accepted.
  if (mask & qp_attr_mask::state) qp->state.store(a->qp_state, std::memory_order_release);
  return 0;
}

int query_qp(mid::Qp* q, QpAttr* a, uint32_t mask, mid::QpInitAttr* init) {
  Qp* qp = to_qp(q);
  Request req = make(Cmd::query_qp, qp->handle);
  req.query_qp.attr_mask = mask;
  Response resp;
  if (int rc = rdev(q->device).command(req, &resp)) return rc;
  const auto& r = resp.query_qp;
  *a = r.attr;
  a->cap = qp->cap;  // what this client can post (≤ the daemon's grant)
  a->sq_sig_all = r.sq_sig_all;
  if (init) {
    init->qp_type = qp->qp_type;
    init->send_cq = qp->send_cq;
    init->recv_cq = qp->recv_cq;
    init->srq = qp->srq;
    init->cap = qp->cap;
    init->sq_sig_all = r.sq_sig_all;
    init->qp_context = qp->qp_context;
  }
  return 0;
}

int destroy_qp(mid::Qp* q) {
  Qp* qp = to_qp(q);
  Device& dev = rdev(q->device);
  {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.qps.erase(qp->handle);
  }
  if (int rc = destroy_cmd(dev, Cmd::destroy_qp, qp->handle)) {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.qps[qp->handle] = qp;
    return rc;
  }
  qp->map.unmap();  // (an XRC_RECV handle has no rings)
  delete qp;
  return 0;
}

// ---------------------------------------------------------------- SRQ
int create_srq(mid::Pd* pd, const mid::SrqInitAttr* init, mid::Srq** out) {
  Device& dev = rdev(pd->device);
  if (init->max_wr == 0 || init->max_sge == 0 || init->srq_limit > init->max_wr) return EINVAL;
  Srq* srq = new (std::nothrow) Srq();
  if (!srq) return ENOMEM;
  Request req = make(Cmd::create_srq);
  req.create_srq.pd = to_pd(pd)->handle;
  req.create_srq.max_wr = init->max_wr;
  req.create_srq.max_sge = init->max_sge;
  req.create_srq.srq_limit = init->srq_limit;
  if (init->xrcd) {  // an XRC SRQ
    req.create_srq.xrcd = to_xrcd(init->xrcd)->handle;
    req.create_srq.cq = to_cq(init->cq)->handle;
  }
  Response resp;
  int fds[kMaxRecvFds];
  int nfds = 0;
  if (int rc = dev.command(req, &resp, nullptr, 0, fds, &nfds)) {
    delete srq;
    return rc;
  }
  const auto& r = resp.srq;
  int fd = -1;
  int rc = take_one_fd(fds, nfds, &fd);
  if (rc == 0) rc = srq->map.map(fd, r.ring_bytes);
  if (rc == 0 && !setup_ring(&srq->rq, srq->map.base, r.ring_bytes, 0, r.ring_entries,
                             sizeof(daemon::ShmRecvWqe), r.max_wr))
    rc = EPROTO;
  if (rc) {
    srq->map.unmap();
    destroy_cmd(dev, Cmd::destroy_srq, resp.handle);
    delete srq;
    return rc;
  }
  constexpr uint32_t kWqeSges = sizeof(daemon::ShmRecvWqe::sge) / sizeof(Sge);
  srq->max_sge = r.max_sge < kWqeSges ? r.max_sge : kWqeSges;
  srq->max_wr = r.max_wr;  // granted: what fits (the ring's limit)
  srq->handle = resp.handle;
  srq->srq_num = r.srq_num;
  if (init->cq) {  // an XRC SRQ's CQ can raise events from now on
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.cqs.try_emplace(to_cq(init->cq)->handle, init->cq);
  }
  *out = srq;
  return 0;
}

int modify_srq(mid::Srq* s, uint32_t max_wr, uint32_t srq_limit, uint32_t mask) {
  publish_for_events(rdev(s->device), to_srq(s)->handle, &rdev(s->device).srqs, s);
  Request req = make(Cmd::modify_srq, to_srq(s)->handle);
  req.modify_srq.max_wr = max_wr;
  req.modify_srq.srq_limit = srq_limit;
  req.modify_srq.mask = mask;
  Response resp;
  return rdev(s->device).command(req, &resp);
}

int destroy_srq(mid::Srq* s) {
  Srq* srq = to_srq(s);
  Device& dev = rdev(s->device);
  {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.srqs.erase(srq->handle);
  }
  if (int rc = destroy_cmd(dev, Cmd::destroy_srq, srq->handle)) {
    std::lock_guard<mid::Mutex> g(dev.obj_lock);
    dev.srqs[srq->handle] = srq;
    return rc;
  }
  srq->map.unmap();
  delete srq;
  return 0;
}

// ---------------------------------------------------------------- AH
// The midlayer calls these inside a NonSleepingScope (kernel consumers need atomic AH
// creation); a remote AH lives in the daemon, so this is a round trip like uverbs' user
// AHs. The command lock is taken without the might_sleep check (Conn::call).
// Address handles stay in this process (proto.h, kAhSlots): create_ah and destroy_ah may
// be called where nothing sleeps, so they take a slot of the device's pool under a
// spinlock and send nothing. The address vector is checked as the embedded HCA checks it;
// the daemon builds its own AH from the copy in the first UD WQE that names this one.
// Context: any, never sleeps.
int create_ah(mid::Pd* pd, const AhAttr* attr, mid::Ah** out) {
  Device& dev = rdev(pd->device);
  if (attr->port_num < 1 || attr->port_num > pd->device->phys_port_cnt || attr->sgid_index != 0)
    return EINVAL;
  if (dev.dead()) return EIO;
  dev.ah_lock.lock();
  if (dev.ah_free.empty()) {
    dev.ah_lock.unlock();
    return ENOMEM;
  }
  const uint32_t slot = dev.ah_free.back();
  dev.ah_free.pop_back();
  dev.ah_lock.unlock();
  Ah& ah = dev.ahs[slot];
  ah.gen = (ah.gen + 1) & 0xfffff;
  if (ah.gen == 0) ah.gen = 1;
  ah.id = ah.gen << 12 | slot;
  ah.pd_handle = to_pd(pd)->handle;
  ah.attr = *attr;
  ah.live.store(true, std::memory_order_release);
  *out = &ah;
  return 0;
}

int destroy_ah(mid::Ah* a) {
  Device& dev = rdev(a->device);
  Ah* ah = to_ah(a);
  if (!ah->live.exchange(false, std::memory_order_acq_rel)) return EINVAL;  // destroyed twice
  dev.ah_lock.lock();
  dev.ah_free.push_back(uint32_t(ah - dev.ahs.get()));  // never beyond the reserved capacity
  dev.ah_lock.unlock();
  return 0;
}

}  // namespace

const mid::DeviceOps kRemoteOps = {
    .query_device = query_device,
    .query_port = query_port,
    .query_gid = query_gid,
    .alloc_pd = alloc_pd,
    .dealloc_pd = dealloc_pd,
    .reg_mr = reg_mr,
    .dereg_mr = dereg_mr,
    .create_cq = create_cq,
    .destroy_cq = destroy_cq,
    .create_qp = create_qp,
    .modify_qp = modify_qp,
    .query_qp = query_qp,
    .destroy_qp = destroy_qp,
    .post_send = post_send,
    .post_recv = post_recv,
    .poll_cq = poll_cq,
    .req_notify_cq = req_notify_cq,
    .create_ah = create_ah,
    .destroy_ah = destroy_ah,
    .create_srq = create_srq,
    .modify_srq = modify_srq,
    .destroy_srq = destroy_srq,
    .post_srq_recv = post_srq_recv,
    .alloc_mw = alloc_mw,
    .dealloc_mw = dealloc_mw,
    .reg_mr_iova = nullptr,  // the client registers at its own addresses only
    .attach_mcast = attach_mcast,
    .detach_mcast = detach_mcast,
    .rereg_mr = rereg_mr,
    .poll_cq_ts = poll_cq_ts,
    .read_clock = read_clock,
    .open_xrcd = open_xrcd,
    .close_xrcd = close_xrcd,
    .open_xrc_qp = open_xrc_qp,
    .create_flow = create_flow,
    .destroy_flow = destroy_flow,
    .resize_cq = resize_cq,
};

}  // namespace dverbs::pmd::remote
