// Devices and contexts: ibv_get_device_list, ibv_open_device, ibv_close_device, and the
// clean-up that runs when a context closes, when its device goes away, and at exit.
//
// Devices come from the midlayer: the drop-in is a midlayer client ("ibverbs") whose add()
// wraps each registered device in a Device and whose remove() disassociates the contexts
// open on it (the fast path is switched to failing stubs and IBV_EVENT_DEVICE_FATAL is
// queued; the objects stay valid until the application destroys them, as rdma-core keeps
// its structures after uverbs' disassociate).
// Device wrappers live for the process: ibv_device pointers stay valid, as in rdma-core.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

struct Devices {
  mid::Mutex probe_lock;      // serialises the first probe
  bool probed = false;        // under probe_lock
  int probe_rc = 0;           // under probe_lock
  std::vector<Device*> list;  // registration order; under g_lock
  mid::Client client;
};

Devices& devices() {
  static auto* d = new Devices();  // never destroyed: ibv_device pointers outlive main()
  return *d;
}

thread_local bool t_probing = false;  // EAL start-up may load plug-ins that call back
bool g_exit_registered = false;       // under g_lock

void on_device_event(const mid::Event& e, void* p);

void client_add(mid::Device* mdev, mid::Client*) {
  DeviceAttr attr;
  const bool have_attr = mid::query_device(mdev, &attr) == 0;
  PortAttr pa;
  const bool down = mid::query_port(mdev, 1, &pa) != 0 || pa.state != PortState::active;
  std::lock_guard<mid::Mutex> g(g_lock());
  for (Device* d : devices().list)
    if (d->mdev == mdev) return;
  auto* d = new (std::nothrow) Device();
  if (!d) return;
  std::memset(&d->ibdev, 0, sizeof d->ibdev);
  d->mdev = mdev;
  d->node_guid = have_attr ? attr.node_guid : 0;
  d->appeared = std::chrono::steady_clock::now();
  d->down_at_start = down;
  d->ibdev.node_type = IBV_NODE_CA;
  d->ibdev.transport_type = IBV_TRANSPORT_IB;
  std::snprintf(d->ibdev.name, sizeof d->ibdev.name, "%s", mdev->name);
  const size_t idx = devices().list.size();
  std::snprintf(d->ibdev.dev_name, sizeof d->ibdev.dev_name, "uverbs%zu", idx);
  std::snprintf(d->ibdev.dev_path, sizeof d->ibdev.dev_path,
                "/sys/class/infiniband_verbs/uverbs%zu", idx);
  std::snprintf(d->ibdev.ibdev_path, sizeof d->ibdev.ibdev_path, "/sys/class/infiniband/%s",
                mdev->name);
  try {
    devices().list.push_back(d);
  } catch (...) {
    delete d;
  }
}

// Returns every context still open on a removed device to a safe state.
void disassociate_locked(Context* c);

void client_remove(mid::Device* mdev, mid::Client*, void*) {
  std::lock_guard<mid::Mutex> g(g_lock());
  for (Device* d : devices().list) {
    if (d->mdev != mdev) continue;
    d->removed = true;
    for (Context* c : registry_contexts())
      if (c->dev == d) disassociate_locked(c);
  }
}

void probe_once() {
  Devices& d = devices();
  std::lock_guard<mid::Mutex> g(d.probe_lock);
  if (d.probed) return;
  t_probing = true;
  d.probe_rc = mid::probe_drivers();
  d.client.name = "ibverbs";
  d.client.add = client_add;
  d.client.remove = client_remove;
  if (int rc = mid::register_client(&d.client); rc && !d.probe_rc) d.probe_rc = rc;
  t_probing = false;
  d.probed = true;
}

// The link at open time. A port whose link is down is usually a memif server whose peer
// process is still starting (or a veth whose other end is not up yet), and programs such as
// perftest give up when they see PORT_DOWN right after opening. So:
// 1. a context opens only once the link is up, waiting at most DVERBS_LINK_WAIT seconds
//    (default 10; 0 = neither rule applies); after that the port is reported as it is;
// 2. on a memif port — a cable between two processes, whose link comes up exactly when the
//    peer process starts — and on any port whose link was down when the device appeared,
//    contexts are handed out no earlier than kSettle after the device appeared.
// Rule 2 orders the usual two-process start-up: the out-of-band server (pingpong or
// perftest without a host name) starts first, on the memif server socket; the client
// starts second (its device appears later, so its settle ends later) and by then the
// server has seen the link come up, passed its port check and listens for the client.
void wait_for_link(Device* d) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kPoll = std::chrono::milliseconds(10);
  constexpr auto kSettle = std::chrono::seconds(1);
  double limit = 10;
  if (const char* s = std::getenv("DVERBS_LINK_WAIT"); s && *s) {
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (*end == '\0' && v >= 0 && v <= 3600)
      limit = v;
    else
      std::fprintf(
          stderr, "dverbs: DVERBS_LINK_WAIT: '%s' is not a number of seconds (0..3600), using 10\n",
          s);
  }
  if (limit == 0) return;
  PortAttr pa;
  if (mid::query_port(d->mdev, 1, &pa) != 0) return;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(limit);
  bool noted = false;
  while (pa.state != PortState::active) {
    if (Clock::now() >= deadline) {
      std::fprintf(
          stderr,
          "dverbs: %s port 1 link still down after %g s: is the peer of DVERBS_PORT running?\n",
          d->ibdev.name, limit);
      return;
    }
    if (!noted && Clock::now() - start > std::chrono::seconds(1)) {
      std::fprintf(
          stderr,
          "dverbs: %s port 1 link is down, waiting up to %g s for the peer (DVERBS_LINK_WAIT)\n",
          d->ibdev.name, limit);
      noted = true;
    }
    std::this_thread::sleep_for(kPoll);
    if (mid::query_port(d->mdev, 1, &pa) != 0) return;
  }
  const char* port = std::getenv("DVERBS_PORT");
  const bool memif = port && std::strncmp(port, "net_memif", 9) == 0;
  if (d->down_at_start || memif) std::this_thread::sleep_until(d->appeared + kSettle);
}

void close_fds(Context* c) {
  if (c->async_fd >= 0) close(c->async_fd);
  if (c->vctx.context.cmd_fd >= 0) close(c->vctx.context.cmd_fd);
  c->async_fd = c->vctx.context.cmd_fd = -1;
}

// Process exit: destroy what the application left open so that peers stop seeing traffic
// for its QPs and pinned pages are released. Registered with atexit() at the first
// ibv_open_device, i.e. after the pmd built its device (torn down after this runs); the
// midlayer's handler pool, started by the first CQ, may already be stopped, which the
// midlayer's destroy fences tolerate. Never blocks for long: if another thread holds the
// control lock (it is still working while the process exits), clean-up is skipped rather
// than risking a hang. Threads the application leaves running must not use the objects.
void exit_cleanup() {
  mid::Mutex& m = g_lock();
  bool locked = false;
  for (int i = 0; i < 1000 && !(locked = m.try_lock()); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!locked) return;
  for (Context* c : registry_contexts()) {
    destroy_all_locked(c);
    if (c->device_handler) {
      mid::unregister_event_handler(c->mdev, on_device_event, c);
      c->device_handler = false;
    }
  }
  m.unlock();
}

void on_device_event(const mid::Event& e, void* p) {
  auto* c = static_cast<Context*>(p);
  const mid::EventElement el = mid::event_element(e.type);
  // Object events arrive through the object's own handler.
  if (el != mid::EventElement::device && el != mid::EventElement::port) return;
  AsyncEvent ev{};
  ev.type = ibv_event_type(e.type);
  ev.kind = Kind::context;
  ev.port_num = el == mid::EventElement::port ? int(e.element.port_num) : 0;
  push_async(c, ev);
}

// Fast-path stubs of a disassociated context (rdma-core's dummy ops return EIO too).
int dead_post_send(ibv_qp*, ibv_send_wr* wr, ibv_send_wr** bad) {
  *bad = wr;
  return EIO;
}
int dead_post_recv(ibv_qp*, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  *bad = wr;
  return EIO;
}
int dead_post_srq_recv(ibv_srq*, ibv_recv_wr* wr, ibv_recv_wr** bad) {
  *bad = wr;
  return EIO;
}
int dead_poll_cq(ibv_cq*, int, ibv_wc*) {
  return -EIO;
}
int dead_req_notify_cq(ibv_cq*, int) {
  return EIO;
}

void disassociate_locked(Context* c) {
  // The objects stay: the application still holds their ibv_* structures (ibv_post_send
  // and ibv_poll_cq read them inline) and destroys them when it handles DEVICE_FATAL. The
  // retired soft HCA keeps them valid and inert (no port, no lcore) until then.
  if (c->device_handler) {
    mid::unregister_event_handler(c->mdev, on_device_event, c);
    c->device_handler = false;
  }
  ibv_context_ops& o = c->vctx.context.ops;
  o.post_send = dead_post_send;
  o.post_recv = dead_post_recv;
  o.post_srq_recv = dead_post_srq_recv;
  o.poll_cq = dead_poll_cq;
  o.req_notify_cq = dead_req_notify_cq;
  AsyncEvent ev{};
  ev.type = IBV_EVENT_DEVICE_FATAL;
  ev.kind = Kind::context;
  push_async(c, ev);
}

}  // namespace

Device* device_find(const ibv_device* dev) noexcept {
  if (!dev) return nullptr;
  for (Device* d : devices().list)
    if (&d->ibdev == dev) return d;
  return nullptr;
}

void destroy_all_locked(Context* c) {
  // Dependency order (uverbs' ib_uverbs_cleanup_ucontext): flows, QPs, MWs (a queued bind
  // names its window; a bound window keeps its MR), SRQs, XRC domains, CQs, MRs, AHs, PDs,
  // thread domains, then completion channels (no CQ can name them any more).
  for (void* o : c->handles.objects(Kind::flow)) destroy_flow_locked(o);
  for (void* o : c->handles.objects(Kind::qp)) destroy_qp_locked(static_cast<DvQp*>(o));
  for (void* o : c->handles.objects(Kind::mw)) dealloc_mw_locked(static_cast<DvMw*>(o));
  for (void* o : c->handles.objects(Kind::srq)) destroy_srq_locked(static_cast<DvSrq*>(o));
  for (void* o : c->handles.objects(Kind::xrcd)) close_xrcd_locked(static_cast<DvXrcd*>(o));
  for (void* o : c->handles.objects(Kind::cq)) destroy_cq_locked(static_cast<DvCq*>(o));
  for (void* o : c->handles.objects(Kind::mr)) dereg_mr_locked(static_cast<DvMr*>(o));
  for (void* o : c->handles.objects(Kind::ah)) destroy_ah_locked(static_cast<DvAh*>(o));
  // Parent domains before the PDs they stand for.
  for (void* o : c->handles.objects(Kind::pd))
    if (static_cast<DvPd*>(o)->contained) dealloc_pd_locked(static_cast<DvPd*>(o));
  for (void* o : c->handles.objects(Kind::pd)) dealloc_pd_locked(static_cast<DvPd*>(o));
  for (void* o : c->handles.objects(Kind::td)) dealloc_td_locked(static_cast<DvTd*>(o));
  for (void* o : c->handles.objects(Kind::channel))
    destroy_channel_locked(static_cast<Channel*>(o));
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

ibv_device** ibv_get_device_list(int* num_devices) {
  if (num_devices) *num_devices = 0;
  if (t_probing)
    return fail(ENODEV, static_cast<ibv_device**>(std::calloc(1, sizeof(ibv_device*))));
  probe_once();
  Devices& d = devices();
  std::lock_guard<mid::Mutex> g(g_lock());
  std::vector<Device*> live;
  for (Device* dev : d.list)
    if (!dev->removed) live.push_back(dev);
  auto** list = static_cast<ibv_device**>(std::calloc(live.size() + 1, sizeof(ibv_device*)));
  if (!list) return fail(ENOMEM, static_cast<ibv_device**>(nullptr));
  for (size_t i = 0; i < live.size(); ++i) list[i] = &live[i]->ibdev;
  if (num_devices) *num_devices = int(live.size());
  // No device: an empty list and errno saying why (the probe already printed one line
  // naming the DVERBS_* variable at fault).
  if (live.empty()) errno = d.probe_rc ? d.probe_rc : ENODEV;
  return list;
}

void ibv_free_device_list(ibv_device** list) {
  std::free(list);
}

const char* ibv_get_device_name(ibv_device* device) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Device* d = device_find(device);
  if (!d) return fail(EINVAL, static_cast<const char*>(nullptr));
  return d->ibdev.name;
}

int ibv_get_device_index(ibv_device* device) {
  std::lock_guard<mid::Mutex> g(g_lock());
  auto& list = devices().list;
  for (size_t i = 0; i < list.size(); ++i)
    if (&list[i]->ibdev == device) return int(i);
  return fail(EINVAL, -1);
}

__be64 ibv_get_device_guid(ibv_device* device) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Device* d = device_find(device);
  if (!d) return fail(EINVAL, __be64(0));
  return htobe64(d->node_guid);
}

ibv_context* ibv_open_device(ibv_device* device) {
  Device* d;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    d = device_find(device);
    if (!d) return fail(EINVAL, static_cast<ibv_context*>(nullptr));
  }
  wait_for_link(d);  // without the control lock: other threads keep working
  std::lock_guard<mid::Mutex> g(g_lock());
  if (d->removed) return fail(ENODEV, static_cast<ibv_context*>(nullptr));
  auto* c = new (std::nothrow) Context();
  if (!c) return fail(ENOMEM, static_cast<ibv_context*>(nullptr));
  c->dev = d;
  c->mdev = d->mdev;
  c->async_fd = -1;
  ibv_context& ic = c->vctx.context;
  ic.cmd_fd = -1;
  int rc = mid::query_device(d->mdev, &c->attr);
  if (!rc) {
    // Semaphore eventfds: one read() per event, poll()able, blocking unless the
    // application sets O_NONBLOCK (as with uverbs' event files).
    c->async_fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
    ic.cmd_fd = eventfd(0, EFD_CLOEXEC);  // no command channel; a valid, idle fd
    if (c->async_fd < 0 || ic.cmd_fd < 0) rc = errno ? errno : EMFILE;
  }
  if (!rc && !registry_add(&ic, Kind::context, c, 0)) rc = ENOMEM;
  if (rc) {
    close_fds(c);
    delete c;
    return fail(rc, static_cast<ibv_context*>(nullptr));
  }
  ic.device = &d->ibdev;
  ic.async_fd = c->async_fd;
  ic.num_comp_vectors = 1;
  pthread_mutex_init(&ic.mutex, nullptr);
  ic.abi_compat = __VERBS_ABI_IS_EXTENDED;
  c->vctx.sz = sizeof(verbs_context);
  init_context_ops(c);
  init_extended_ops(c);
  if (mid::register_event_handler(d->mdev, on_device_event, c) == 0) c->device_handler = true;
  if (!g_exit_registered) g_exit_registered = std::atexit(exit_cleanup) == 0;
  return &ic;
}

int ibv_close_device(ibv_context* context) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, -1);
  destroy_all_locked(c);
  if (c->device_handler) mid::unregister_event_handler(c->mdev, on_device_event, c);
  registry_remove(context);
  close_fds(c);
  pthread_mutex_destroy(&context->mutex);
  delete c;
  return 0;
}

}  // extern "C"
