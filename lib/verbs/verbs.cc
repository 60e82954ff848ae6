// The C++ verbs facade: a midlayer client ("verbs") that sees devices come and go, and
// RAII objects over the midlayer's consumer API.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>

#include "dverbs/dverbs.h"
#include "midlayer/core.h"

namespace dverbs {

namespace {

// The devices this client was added to (core_locking.rst: a consumer may use a device from
// its add() until its remove()).
struct VerbsClient {
  mid::Mutex lock;
  std::vector<mid::Device*> devices;  // guarded by lock
  mid::Client client;
  int probe_rc = 0;
};

VerbsClient* g_client = nullptr;  // set once, before the client is registered

void client_add(mid::Device* dev, mid::Client*) {
  std::lock_guard<mid::Mutex> g(g_client->lock);
  g_client->devices.push_back(dev);
}

void client_remove(mid::Device* dev, mid::Client*, void*) {
  std::lock_guard<mid::Mutex> g(g_client->lock);
  auto& d = g_client->devices;
  d.erase(std::remove(d.begin(), d.end(), dev), d.end());
}

VerbsClient& verbs_client() {
  static VerbsClient* v = [] {
    auto* vc = new VerbsClient();  // lives for the process: devices may outlive main()
    g_client = vc;
    vc->client.name = "verbs";
    vc->client.add = client_add;
    vc->client.remove = client_remove;
    vc->probe_rc = mid::probe_drivers();
    mid::register_client(&vc->client);
    return vc;
  }();
  return *v;
}

}  // namespace

std::vector<std::string> device_names(int* err) {
  VerbsClient& v = verbs_client();
  std::vector<std::string> names;
  std::lock_guard<mid::Mutex> g(v.lock);
  for (auto* d : v.devices) names.emplace_back(d->name);
  if (err) *err = names.empty() ? (v.probe_rc ? v.probe_rc : ENODEV) : 0;
  return names;
}

// ---------------------------------------------------------------- Context
Expected<Context> Context::open(const std::string& name) {
  VerbsClient& v = verbs_client();
  std::lock_guard<mid::Mutex> g(v.lock);
  for (auto* d : v.devices) {
    if (name.empty() || name == d->name) {
      Context c;
      c.dev_ = d;
      return c;
    }
  }
  return Expected<Context>::failure(ENODEV);
}

struct Context::Events {
  mid::Device* dev = nullptr;
  EventHandler handler;
  static void trampoline(const mid::Event& ev, void* ctx) {
    auto* e = static_cast<Events*>(ctx);
    AsyncEvent a{};
    a.type = ev.type;
    switch (ev.type) {
      case EventType::port_active:
      case EventType::port_err:
      case EventType::lid_change:
      case EventType::pkey_change:
      case EventType::gid_change:
      case EventType::sm_change:
      case EventType::client_reregister: a.port_num = uint8_t(ev.element.port_num); break;
      case EventType::cq_err:
      case EventType::srq_err:
      case EventType::srq_limit_reached:
      case EventType::device_fatal: break;
      default: a.qp_num = ev.element.qp ? ev.element.qp->qp_num : 0; break;
    }
    e->handler(a);
  }
  ~Events() {
    if (dev) mid::unregister_event_handler(dev, trampoline, this);
  }
};

Context::Context() = default;
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;
Context::~Context() = default;

int Context::set_event_handler(EventHandler handler) {
  if (!dev_) return EINVAL;
  events_.reset();  // unregisters (a fence) before the new one goes in
  if (!handler) return 0;
  auto e = std::make_unique<Events>();
  e->handler = std::move(handler);
  if (int rc = mid::register_event_handler(dev_, Events::trampoline, e.get())) return rc;
  e->dev = dev_;
  events_ = std::move(e);
  return 0;
}

Expected<std::string> add_port(const std::string& devargs, const std::string& ip) {
  char name[64];
  if (int rc = mid::add_port(devargs.c_str(), ip.empty() ? nullptr : ip.c_str(), name,
                             sizeof name))
    return Expected<std::string>::failure(rc);
  return std::string(name);
}

int remove_port(const std::string& name) { return mid::remove_port(name.c_str()); }

int Context::query_device(DeviceAttr* a) const { return mid::query_device(dev_, a); }
int Context::query_port(uint8_t p, PortAttr* a) const { return mid::query_port(dev_, p, a); }

namespace {
// Reads counters with `query` (the count or -errno) into *out, growing it to fit.
template <class Query>
int read_counters(std::vector<Counter>* out, Query query) {
  if (!out) return EINVAL;
  out->resize(32);
  for (;;) {
    const int n = query(out->data(), int(out->size()));
    if (n < 0) {
      out->clear();
      return -n;
    }
    const bool fits = size_t(n) <= out->size();
    out->resize(size_t(n));
    if (fits) return 0;
  }
}
}  // namespace

int Context::query_counters(std::vector<Counter>* out) const {
  return read_counters(out, [&](Counter* c, int max) { return mid::query_counters(dev_, c, max); });
}
int Context::query_gid(uint8_t p, int i, Gid* g) const { return mid::query_gid(dev_, p, i, g); }
const char* Context::name() const { return dev_ ? dev_->name : ""; }

// ---------------------------------------------------------------- Pd
Expected<Pd> Pd::alloc(const Context& ctx) {
  if (!ctx.raw()) return Expected<Pd>::failure(EINVAL);
  Pd pd;
  if (int rc = mid::alloc_pd(ctx.raw(), &pd.pd_)) return Expected<Pd>::failure(rc);
  return pd;
}
Pd& Pd::operator=(Pd&& o) noexcept {
  if (this != &o) {
    destroy();
    pd_ = std::exchange(o.pd_, nullptr);
  }
  return *this;
}
Pd::~Pd() { destroy(); }
int Pd::destroy() {
  if (!pd_) return 0;
  int rc = mid::dealloc_pd(pd_);
  if (rc == 0) pd_ = nullptr;
  return rc;
}

// ---------------------------------------------------------------- Mr
Expected<Mr> Mr::reg(const Pd& pd, void* addr, size_t length, uint32_t access) {
  if (!pd.raw()) return Expected<Mr>::failure(EINVAL);
  Mr mr;
  if (int rc = mid::reg_mr(pd.raw(), addr, length, access, &mr.mr_))
    return Expected<Mr>::failure(rc);
  return mr;
}
Mr& Mr::operator=(Mr&& o) noexcept {
  if (this != &o) {
    destroy();
    mr_ = std::exchange(o.mr_, nullptr);
  }
  return *this;
}
Mr::~Mr() { destroy(); }
int Mr::destroy() {
  if (!mr_) return 0;
  int rc = mid::dereg_mr(mr_);
  if (rc == 0) mr_ = nullptr;
  return rc;
}
// An empty (moved-from or destroyed) handle answers 0 or EINVAL, never a crash.
uint32_t Mr::lkey() const { return mr_ ? mr_->lkey : 0; }
uint32_t Mr::rkey() const { return mr_ ? mr_->rkey : 0; }
uint64_t Mr::addr() const { return mr_ ? mr_->addr : 0; }
uint64_t Mr::length() const { return mr_ ? mr_->length : 0; }

// ---------------------------------------------------------------- Cq
struct Cq::State {
  mid::Cq* cq = nullptr;
  Handler handler;
  Cq* owner = nullptr;  // the Cq object the handler receives (updated on move)
};

Expected<Cq> Cq::create(const Context& ctx, uint32_t cqe, Handler handler) {
  if (!ctx.raw()) return Expected<Cq>::failure(EINVAL);
  Cq c;
  // No exception may cross this API: allocation failure is ENOMEM.
  c.s_.reset(new (std::nothrow) State());
  if (!c.s_) return Expected<Cq>::failure(ENOMEM);
  c.s_->handler = std::move(handler);
  c.s_->owner = &c;
  auto comp = [](mid::Cq*, void* p) {
    auto* st = static_cast<State*>(p);
    if (st->handler) st->handler(*st->owner);
  };
  if (int rc = mid::create_cq(ctx.raw(), cqe, comp, nullptr, c.s_.get(), &c.s_->cq)) {
    c.s_.reset();
    return Expected<Cq>::failure(rc);
  }
  return c;
}
Cq::Cq() = default;
Cq::Cq(Cq&& o) noexcept : s_(std::move(o.s_)) {
  if (s_) s_->owner = this;
}
Cq& Cq::operator=(Cq&& o) noexcept {
  if (this != &o) {
    destroy();
    s_ = std::move(o.s_);
    if (s_) s_->owner = this;
  }
  return *this;
}
Cq::~Cq() { destroy(); }
int Cq::destroy() {
  if (!s_) return 0;
  int rc = mid::destroy_cq(s_->cq);
  if (rc == 0) s_.reset();
  return rc;
}
int Cq::poll(Wc* wc, int n) noexcept {
  if (!s_ || (n > 0 && !wc)) return -EINVAL;
  return mid::poll_cq(s_->cq, n, wc);
}
int Cq::req_notify(bool solicited_only) noexcept {
  return s_ ? mid::req_notify_cq(s_->cq, solicited_only) : EINVAL;
}
uint32_t Cq::capacity() const { return s_ ? s_->cq->cqe : 0; }
mid::Cq* Cq::raw() const { return s_ ? s_->cq : nullptr; }

// ---------------------------------------------------------------- Qp
Expected<Qp> Qp::create(const Pd& pd, const Cq& send_cq, const Cq& recv_cq, const QpInit& init) {
  if (!pd.raw() || !send_cq.raw() || !recv_cq.raw()) return Expected<Qp>::failure(EINVAL);
  mid::QpInitAttr a;
  a.qp_type = init.type;
  a.send_cq = send_cq.raw();
  a.recv_cq = recv_cq.raw();
  a.cap = init.cap;
  a.sq_sig_all = init.sq_sig_all;
  a.srq = init.srq ? init.srq->raw() : nullptr;
  Qp qp;
  if (int rc = mid::create_qp(pd.raw(), &a, &qp.qp_)) return Expected<Qp>::failure(rc);
  return qp;
}
Qp& Qp::operator=(Qp&& o) noexcept {
  if (this != &o) {
    destroy();
    qp_ = std::exchange(o.qp_, nullptr);
  }
  return *this;
}
Qp::~Qp() { destroy(); }
int Qp::destroy() {
  if (!qp_) return 0;
  int rc = mid::destroy_qp(qp_);
  if (rc == 0) qp_ = nullptr;
  return rc;
}
int Qp::modify(const QpAttr& attr, uint32_t mask) {
  return qp_ ? mid::modify_qp(qp_, &attr, mask) : EINVAL;
}
int Qp::query_counters(std::vector<Counter>* out) const {
  return read_counters(out,
                       [&](Counter* c, int max) { return mid::query_qp_counters(qp_, c, max); });
}

int Qp::query(QpAttr* attr) const {
  return qp_ && attr ? mid::query_qp(qp_, attr, ~0u, nullptr) : EINVAL;
}
QpState Qp::state() const {
  QpAttr a;
  return mid::query_qp(qp_, &a, qp_attr_mask::state, nullptr) == 0 ? a.qp_state : QpState::err;
}
uint32_t Qp::qp_num() const { return qp_ ? qp_->qp_num : 0; }
int Qp::post_send(SendWr* wr, SendWr** bad) noexcept {
  if (!qp_ || !wr || !bad) [[unlikely]] {
    if (bad) *bad = wr;
    return EINVAL;
  }
  return mid::post_send(qp_, wr, bad);
}
int Qp::post_recv(RecvWr* wr, RecvWr** bad) noexcept {
  if (!qp_ || !wr || !bad) [[unlikely]] {
    if (bad) *bad = wr;
    return EINVAL;
  }
  return mid::post_recv(qp_, wr, bad);
}

int Qp::connect(const Gid& gid, uint32_t rqpn, uint32_t lpsn, uint32_t rpsn, Mtu mtu,
                uint32_t access_flags) {
  namespace m = qp_attr_mask;
  QpAttr a;
  mid::QpInitAttr init;
  if (int rc = mid::query_qp(qp_, &a, 0, &init)) return rc;
  const bool rc_qp = init.qp_type == QpType::rc;
  a = QpAttr{};
  a.qp_state = QpState::init;
  a.port_num = 1;
  a.pkey_index = 0;
  a.qp_access_flags = access_flags;
  if (int rc = modify(a, m::state | m::pkey_index | m::port | m::access_flags)) return rc;
  a.qp_state = QpState::rtr;
  a.path_mtu = mtu;
  a.dest_qp_num = rqpn;
  a.rq_psn = rpsn;
  a.max_dest_rd_atomic = 16;
  a.min_rnr_timer = 12;
  a.ah_attr.dgid = gid;
  a.ah_attr.is_global = true;
  a.ah_attr.port_num = 1;
  // UC has no READ/atomic resources, RNR or retransmission attributes (IBA 10.3.1).
  const uint32_t rtr_rc = rc_qp ? m::max_dest_rd_atomic | m::min_rnr_timer : 0;
  if (int rc = modify(a, m::state | m::av | m::path_mtu | m::dest_qpn | m::rq_psn | rtr_rc))
    return rc;
  a.qp_state = QpState::rts;
  a.sq_psn = lpsn;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = 1;
  const uint32_t rts_rc =
      rc_qp ? m::timeout | m::retry_cnt | m::rnr_retry | m::max_qp_rd_atomic : 0;
  return modify(a, m::state | m::sq_psn | rts_rc);
}

// ---------------------------------------------------------------- Srq
struct Srq::State {
  mid::Srq* srq = nullptr;
  EventHandler on_event;
};

Srq::Srq() = default;
Srq::Srq(Srq&& o) noexcept : s_(std::move(o.s_)) {}
Srq& Srq::operator=(Srq&& o) noexcept {
  if (this != &o) {
    destroy();
    s_ = std::move(o.s_);
  }
  return *this;
}
Srq::~Srq() { destroy(); }

Expected<Srq> Srq::create(const Pd& pd, uint32_t max_wr, uint32_t max_sge, uint32_t limit,
                          EventHandler on_event) {
  if (!pd.raw()) return Expected<Srq>::failure(EINVAL);
  Srq srq;
  srq.s_.reset(new (std::nothrow) State());
  if (!srq.s_) return Expected<Srq>::failure(ENOMEM);
  srq.s_->on_event = std::move(on_event);
  mid::SrqInitAttr init;
  init.max_wr = max_wr;
  init.max_sge = max_sge;
  init.srq_limit = limit;
  auto handler = [](const mid::Event& ev, void* ctx) {
    auto* st = static_cast<State*>(ctx);
    if (st->on_event) st->on_event(ev.type);
  };
  if (int rc = mid::create_srq(pd.raw(), &init, handler, srq.s_.get(), &srq.s_->srq)) {
    srq.s_.reset();
    return Expected<Srq>::failure(rc);
  }
  return srq;
}
int Srq::destroy() {
  if (!s_) return 0;
  int rc = mid::destroy_srq(s_->srq);
  if (rc == 0) s_.reset();
  return rc;
}
int Srq::arm(uint32_t limit) { return s_ ? mid::modify_srq(s_->srq, 0, limit, 2) : EINVAL; }
int Srq::post_recv(RecvWr* wr, RecvWr** bad) noexcept {
  if (!s_ || !wr || !bad) [[unlikely]] {
    if (bad) *bad = wr;
    return EINVAL;
  }
  return mid::post_srq_recv(s_->srq, wr, bad);
}
mid::Srq* Srq::raw() const { return s_ ? s_->srq : nullptr; }

// ---------------------------------------------------------------- Mw
Expected<Mw> Mw::alloc(const Pd& pd, uint32_t type) {
  if (!pd.raw()) return Expected<Mw>::failure(EINVAL);
  Mw mw;
  if (int rc = mid::alloc_mw(pd.raw(), type, &mw.mw_)) return Expected<Mw>::failure(rc);
  return mw;
}
Mw& Mw::operator=(Mw&& o) noexcept {
  if (this != &o) {
    destroy();
    mw_ = std::exchange(o.mw_, nullptr);
  }
  return *this;
}
Mw::~Mw() { destroy(); }
int Mw::destroy() {
  if (!mw_) return 0;
  int rc = mid::dealloc_mw(mw_);
  if (rc == 0) mw_ = nullptr;
  return rc;
}
uint32_t Mw::rkey() const { return mw_ ? mw_->rkey : 0; }
uint32_t Mw::next_rkey() const {
  if (!mw_) return 0;
  uint32_t k = mw_->rkey;
  uint8_t b = uint8_t((k & 0xff) + 1);
  return (k & ~0xffu) | (b ? b : 1);
}

// ---------------------------------------------------------------- Ah
Expected<Ah> Ah::create(const Pd& pd, const AhAttr& attr) {
  if (!pd.raw()) return Expected<Ah>::failure(EINVAL);
  Ah ah;
  if (int rc = mid::create_ah(pd.raw(), &attr, &ah.ah_)) return Expected<Ah>::failure(rc);
  return ah;
}
Ah& Ah::operator=(Ah&& o) noexcept {
  if (this != &o) {
    if (ah_) mid::destroy_ah(ah_);
    ah_ = std::exchange(o.ah_, nullptr);
  }
  return *this;
}
Ah::~Ah() {
  if (ah_) mid::destroy_ah(ah_);
}

}  // namespace dverbs
