// Device registry, clients, drivers and async-event delivery (after the Linux IB core's
// drivers/infiniband/core/device.c).
//
// Locking. One sleeping lock, Registry::lock (a mid::Mutex), protects everything here:
// the device list (registration order), the client list (registration order, each with a
// growing id), and per device its client slots (one per (device, client) pair, kept in
// client-id order), its device event handlers and its tracked CQs. Registry::changed is
// signalled whenever a slot or a handler changes state or drops its last in-flight call.
// drivers().lock protects the driver list and the probe state only.
//
// No lock is held while calling out: client add/remove, driver probe/shutdown and event
// callbacks run with the registry unlocked, so they may call back into the midlayer
// (list_devices, alloc_pd, register_event_handler, even register_client). What keeps the
// unlocked callbacks safe is per-slot state instead of a lock held across them, the
// user-space form of the kernel's client_data marks and refcounts:
//   adding   - the thread that created the slot (register_device or register_client) runs
//              add(); nobody removes the slot until add() has returned;
//   added    - visible to event delivery; each delivery holds `inflight` on the slot;
//   removing - exactly one thread (unregister_device or unregister_client, whoever flips
//              it first) waits for `inflight` to drop to zero, runs remove(), erases the
//              slot; the other one waits for the slot to disappear.
// Device event handlers use the same `inflight`/`dead` pair. Thus unregister_client,
// unregister_event_handler and unregister_device are full fences without ever holding a
// lock across a callback.
//
// Lifetime. A DeviceRegistration lives from register_device until unregister_device has
// drained every queued async event of the device (Device::reg is nulled first, see
// cq_events.cc "Fences"), so handler threads may use it while they deliver. A ClientReg
// lives until unregister_client has erased the client's last slot.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "midlayer/core.h"
#include "midlayer/internal.h"

namespace dverbs::mid {

namespace {

struct ClientReg {
  Client* client = nullptr;
  uint64_t id = 0;
};

enum class SlotState { adding, added, removing };

struct ClientSlot {
  ClientReg* client = nullptr;
  void* data = nullptr;
  SlotState state = SlotState::adding;
  uint32_t inflight = 0;  // event callbacks being delivered
};

struct HandlerEntry {
  DeviceEventHandler fn = nullptr;
  void* context = nullptr;
  bool dead = false;
  uint32_t inflight = 0;
};

}  // namespace

struct DeviceRegistration {
  Device* dev = nullptr;
  bool unregistering = false;                      // hidden from lookups and new clients
  std::vector<std::unique_ptr<ClientSlot>> slots;  // ascending client id
  std::vector<std::unique_ptr<HandlerEntry>> handlers;
  std::vector<Cq*> cqs;  // created through create_cq, not destroyed
  uint32_t waiters = 0;  // threads in claim_removal on it; unregister_device waits for 0
};

namespace {

struct Registry {
  Mutex lock;
  std::condition_variable_any changed;
  std::vector<DeviceRegistration*> devices;  // registered, in registration order
  std::vector<ClientReg*> clients;           // registered, in registration order
  uint64_t next_client_id = 1;
};

// Never destroyed: drivers may register from static constructors and unregister from
// static destructors.
Registry& registry() {
  static Registry* const r = new Registry();
  return *r;
}

using Lock = std::unique_lock<Mutex>;

ClientSlot* find_slot(DeviceRegistration* reg, const ClientReg* c) {
  for (auto& s : reg->slots)
    if (s->client == c) return s.get();
  return nullptr;
}

void erase_slot(DeviceRegistration* reg, ClientSlot* slot) {
  auto& v = reg->slots;
  v.erase(std::find_if(v.begin(), v.end(), [&](auto& s) { return s.get() == slot; }));
}

// Runs add() for a slot this thread created, then publishes it to event delivery.
void run_add(Device* dev, ClientSlot* slot) {
  Client* client = slot->client->client;
  if (client->add) client->add(dev, client);
  Registry& r = registry();
  Lock lk(r.lock);
  slot->state = SlotState::added;
  r.changed.notify_all();
}

// Takes the right to remove (reg, c): waits while add() runs; returns nullptr if another
// thread removed the slot meanwhile. On success the slot is `removing` and no event
// callback of it is in flight. Called with the registry locked.
ClientSlot* claim_removal(Lock& lk, DeviceRegistration* reg, const ClientReg* c) {
  Registry& r = registry();
  // While this thread sleeps, another may remove the slot and unregister the device: the
  // waiter count keeps `reg` alive until this thread has looked at it again.
  ++reg->waiters;
  wait(r.changed, lk, [&] {
    ClientSlot* s = find_slot(reg, c);
    return !s || s->state == SlotState::added;
  });
  --reg->waiters;
  r.changed.notify_all();
  ClientSlot* s = find_slot(reg, c);
  if (!s) return nullptr;
  s->state = SlotState::removing;
  wait(r.changed, lk, [&] { return s->inflight == 0; });
  return s;
}

// Runs remove() for a claimed slot and erases it. Called with the registry locked; drops
// the lock around remove().
void run_remove(Lock& lk, DeviceRegistration* reg, ClientSlot* slot) {
  Client* client = slot->client->client;
  Device* dev = reg->dev;
  void* data = slot->data;
  lk.unlock();
  if (client->remove) client->remove(dev, client, data);
  lk.lock();
  erase_slot(reg, slot);
  registry().changed.notify_all();
}

const char* first_missing_op(const DeviceOps& o) {
#define DVERBS_CHECK_OP(op) \
  if (!o.op) return #op;
  DVERBS_CHECK_OP(query_device)
  DVERBS_CHECK_OP(query_port)
  DVERBS_CHECK_OP(query_gid)
  DVERBS_CHECK_OP(alloc_pd)
  DVERBS_CHECK_OP(dealloc_pd)
  DVERBS_CHECK_OP(reg_mr)
  DVERBS_CHECK_OP(dereg_mr)
  DVERBS_CHECK_OP(create_cq)
  DVERBS_CHECK_OP(destroy_cq)
  DVERBS_CHECK_OP(create_qp)
  DVERBS_CHECK_OP(modify_qp)
  DVERBS_CHECK_OP(query_qp)
  DVERBS_CHECK_OP(destroy_qp)
  DVERBS_CHECK_OP(post_send)
  DVERBS_CHECK_OP(post_recv)
  DVERBS_CHECK_OP(poll_cq)
  DVERBS_CHECK_OP(req_notify_cq)
#undef DVERBS_CHECK_OP
  return nullptr;
}

bool same_name(const Device* a, const Device* b) {
  return std::strncmp(a->name, b->name, sizeof a->name) == 0;
}

}  // namespace

// ---- devices ----

int register_device(Device* dev) {
  might_sleep("register_device");
  if (!dev || !dev->ops) {
    std::fprintf(stderr, "dverbs: register_device: no device or no ops table\n");
    return EINVAL;
  }
  if (dev->name[0] == '\0' || !std::memchr(dev->name, '\0', sizeof dev->name)) {
    std::fprintf(stderr, "dverbs: register_device: device has no name\n");
    return EINVAL;
  }
  if (const char* op = first_missing_op(*dev->ops)) {
    std::fprintf(stderr, "dverbs: register_device(%s): mandatory op '%s' is missing\n", dev->name,
                 op);
    return EINVAL;
  }
  Registry& r = registry();
  std::vector<ClientSlot*> to_add;
  try {
    detail::start_handler_pool();
    auto reg = std::make_unique<DeviceRegistration>();
    reg->dev = dev;
    Lock lk(r.lock);
    if (detail::load_reg(dev)) return EEXIST;
    for (DeviceRegistration* d : r.devices)
      if (same_name(d->dev, dev)) return EEXIST;
    reg->slots.reserve(r.clients.size());
    for (ClientReg* c : r.clients) {
      reg->slots.push_back(std::make_unique<ClientSlot>(ClientSlot{c}));
      to_add.push_back(reg->slots.back().get());
    }
    r.devices.push_back(reg.get());
    detail::store_reg(dev, reg.release());
  } catch (const std::bad_alloc&) {
    return ENOMEM;
  }
  // FIFO: slots were created in client registration order.
  for (ClientSlot* slot : to_add) run_add(dev, slot);
  return 0;
}

void unregister_device(Device* dev) {
  might_sleep("unregister_device");
  if (!dev) return;
  Registry& r = registry();
  DeviceRegistration* reg = nullptr;
  {
    Lock lk(r.lock);
    reg = detail::load_reg(dev);
    if (!reg) return;
    if (reg->unregistering) {
      // Another thread is unregistering it: return when it is done, as it would.
      wait(r.changed, lk,
           [&] { return std::find(r.devices.begin(), r.devices.end(), reg) == r.devices.end(); });
      return;
    }
    reg->unregistering = true;
  }
  // Events raised before the unregistration (device_fatal on hot-unplug) reach the clients
  // before their remove().
  detail::flush_async_events();

  // remove() for each client, LIFO. No slot can appear: the device is `unregistering`.
  for (;;) {
    Lock lk(r.lock);
    if (reg->slots.empty()) break;
    ClientSlot* slot = claim_removal(lk, reg, reg->slots.back()->client);
    if (slot) run_remove(lk, reg, slot);
  }

  // Forget the device on the event path, then drain what is queued for it: handler
  // threads see Device::reg == nullptr and skip those events.
  detail::store_reg(dev, nullptr);
  detail::flush_async_events();

  std::vector<Cq*> leaked;
  {
    Lock lk(r.lock);
    leaked.swap(reg->cqs);
  }
  if (!leaked.empty())
    std::fprintf(stderr,
                 "dverbs: unregister_device(%s): %zu CQ(s) still open; their completion "
                 "handlers will not run again\n",
                 dev->name, leaked.size());
  for (Cq* cq : leaked) detail::quiesce_cq(cq);

  {
    Lock lk(r.lock);
    // No delivery can hold a handler any more (the flush above), but be exact; and no
    // unregister_client may still be looking at the registration.
    wait(r.changed, lk, [&] {
      return reg->waiters == 0 &&
             std::all_of(reg->handlers.begin(), reg->handlers.end(),
                         [](auto& h) { return h->inflight == 0; });
    });
    r.devices.erase(std::find(r.devices.begin(), r.devices.end(), reg));
    r.changed.notify_all();
  }
  delete reg;
}

int list_devices(Device** out, int max) {
  Registry& r = registry();
  Lock lk(r.lock);
  int n = 0;
  for (DeviceRegistration* reg : r.devices) {
    if (reg->unregistering) continue;
    if (out && n < max) out[n] = reg->dev;
    ++n;
  }
  return n;
}

Device* find_device(const char* name) {
  if (!name) return nullptr;
  Registry& r = registry();
  Lock lk(r.lock);
  for (DeviceRegistration* reg : r.devices)
    if (!reg->unregistering && std::strncmp(reg->dev->name, name, sizeof reg->dev->name) == 0)
      return reg->dev;
  return nullptr;
}

// ---- clients ----

int register_client(Client* client) {
  might_sleep("register_client");
  if (!client) return EINVAL;
  Registry& r = registry();
  std::vector<std::pair<Device*, ClientSlot*>> to_add;
  try {
    auto creg = std::make_unique<ClientReg>();
    creg->client = client;
    Lock lk(r.lock);
    if (client->internal) return EINVAL;  // already registered
    creg->id = r.next_client_id++;
    for (DeviceRegistration* reg : r.devices) {
      if (reg->unregistering) continue;
      // The new id is the largest: appending keeps the slots in client-id order.
      reg->slots.push_back(std::make_unique<ClientSlot>(ClientSlot{creg.get()}));
      to_add.emplace_back(reg->dev, reg->slots.back().get());
    }
    r.clients.push_back(creg.get());
    client->internal = creg.release();
  } catch (const std::bad_alloc&) {
    return ENOMEM;  // a slot may be left `adding`; not reachable in practice
  }
  for (auto& [dev, slot] : to_add) run_add(dev, slot);
  return 0;
}

void unregister_client(Client* client) {
  might_sleep("unregister_client");
  if (!client) return;
  Registry& r = registry();
  ClientReg* creg = nullptr;
  {
    Lock lk(r.lock);
    auto it = std::find_if(r.clients.begin(), r.clients.end(),
                           [&](ClientReg* c) { return c->client == client; });
    if (it == r.clients.end()) return;
    creg = *it;
    r.clients.erase(it);  // no new slots from now on
  }
  for (;;) {
    Lock lk(r.lock);
    DeviceRegistration* reg = nullptr;
    for (DeviceRegistration* d : r.devices)
      if (find_slot(d, creg)) {
        reg = d;
        break;
      }
    if (!reg) break;
    if (ClientSlot* slot = claim_removal(lk, reg, creg)) run_remove(lk, reg, slot);
  }
  {
    Lock lk(r.lock);
    client->internal = nullptr;
  }
  delete creg;
}

void set_client_data(Device* dev, Client* client, void* data) {
  if (!dev || !client) return;
  Registry& r = registry();
  Lock lk(r.lock);
  DeviceRegistration* reg = detail::load_reg(dev);
  auto* creg = static_cast<ClientReg*>(client->internal);
  if (!reg || !creg) return;
  if (ClientSlot* s = find_slot(reg, creg)) s->data = data;
}

void* get_client_data(Device* dev, Client* client) {
  if (!dev || !client) return nullptr;
  Registry& r = registry();
  Lock lk(r.lock);
  DeviceRegistration* reg = detail::load_reg(dev);
  auto* creg = static_cast<ClientReg*>(client->internal);
  if (!reg || !creg) return nullptr;
  ClientSlot* s = find_slot(reg, creg);
  return s ? s->data : nullptr;
}

// ---- device event handlers ----

int register_event_handler(Device* dev, DeviceEventHandler handler, void* context) {
  might_sleep("register_event_handler");
  if (!dev || !handler) return EINVAL;
  Registry& r = registry();
  try {
    Lock lk(r.lock);
    DeviceRegistration* reg = detail::load_reg(dev);
    if (!reg) return EINVAL;
    reg->handlers.push_back(std::make_unique<HandlerEntry>(HandlerEntry{handler, context}));
  } catch (const std::bad_alloc&) {
    return ENOMEM;
  }
  return 0;
}

// Fence: when it returns the handler does not run and will not run.
void unregister_event_handler(Device* dev, DeviceEventHandler handler, void* context) {
  might_sleep("unregister_event_handler");
  if (!dev || !handler) return;
  Registry& r = registry();
  Lock lk(r.lock);
  DeviceRegistration* reg = detail::load_reg(dev);
  if (!reg) return;
  auto& v = reg->handlers;
  auto it = std::find_if(v.begin(), v.end(), [&](auto& h) {
    return !h->dead && h->fn == handler && h->context == context;
  });
  if (it == v.end()) return;
  HandlerEntry* h = it->get();
  h->dead = true;
  wait(r.changed, lk, [&] { return h->inflight == 0; });
  v.erase(std::find_if(v.begin(), v.end(), [&](auto& e) { return e.get() == h; }));
}

namespace detail {

bool deliver_async_event(const Event& event) noexcept {
  DeviceRegistration* reg = load_reg(event.device);
  if (!reg || event_object_dying(event)) return false;  // being unregistered or destroyed

  // 1. The affected object's own handler.
  switch (event_element(event.type)) {
    case EventElement::qp:
      if (Qp* qp = event.element.qp; qp && qp->event_handler) {
        ConsumerCallbackScope scope("event handler");
        qp->event_handler(event, qp->qp_context);
      }
      break;
    case EventElement::cq:
      if (Cq* cq = event.element.cq; cq && cq->event_handler) {
        ConsumerCallbackScope scope("event handler");
        cq->event_handler(event, cq->cq_context);
      }
      break;
    case EventElement::srq:
      if (Srq* srq = event.element.srq; srq && srq->event_handler) {
        ConsumerCallbackScope scope("event handler");
        srq->event_handler(event, srq->srq_context);
      }
      break;
    default:
      break;
  }

  // 2. Device event handlers, then 3. clients: snapshot with in-flight references (which
  // make the unregister calls wait), call unlocked, drop the references.
  thread_local std::vector<HandlerEntry*> handlers;
  thread_local std::vector<ClientSlot*> slots;
  handlers.clear();
  slots.clear();
  Registry& r = registry();
  {
    Lock lk(r.lock);
    for (auto& h : reg->handlers)
      if (!h->dead) {
        ++h->inflight;
        handlers.push_back(h.get());
      }
    for (auto& s : reg->slots)
      if (s->state == SlotState::added && s->client->client->event) {
        ++s->inflight;
        slots.push_back(s.get());
      }
  }
  for (HandlerEntry* h : handlers) {
    ConsumerCallbackScope scope("event handler");
    h->fn(event, h->context);
  }
  for (ClientSlot* s : slots) {
    ConsumerCallbackScope scope("client event callback");
    Client* c = s->client->client;
    c->event(event, c, s->data);
  }
  {
    Lock lk(r.lock);
    for (HandlerEntry* h : handlers) --h->inflight;
    for (ClientSlot* s : slots) --s->inflight;
    if (!handlers.empty() || !slots.empty()) r.changed.notify_all();
  }
  return true;
}

void track_cq(Cq* cq) {
  Registry& r = registry();
  Lock lk(r.lock);
  if (DeviceRegistration* reg = load_reg(cq->device)) reg->cqs.push_back(cq);
}

void untrack_cq(Cq* cq) {
  Registry& r = registry();
  Lock lk(r.lock);
  DeviceRegistration* reg = load_reg(cq->device);
  if (!reg) return;
  auto it = std::find(reg->cqs.begin(), reg->cqs.end(), cq);
  if (it == reg->cqs.end()) return;
  *it = reg->cqs.back();
  reg->cqs.pop_back();
}

}  // namespace detail

// ---- drivers ----

namespace {

enum class ProbeState { idle, busy, probed };

struct Drivers {
  Mutex lock;
  std::condition_variable_any changed;
  std::vector<const Driver*> list;  // registration order
  ProbeState state = ProbeState::idle;
  std::thread::id owner;  // thread running probe()/shutdown() while busy
  int result = 0;
};

Drivers& drivers() {
  static Drivers* const d = new Drivers();
  return *d;
}

// Waits until no other thread probes or shuts down. Returns false if this thread is the
// one doing it (a probe() that ends up calling probe_drivers again).
bool wait_not_busy(Drivers& d, Lock& lk) {
  if (d.state == ProbeState::busy && d.owner == std::this_thread::get_id()) return false;
  wait(d.changed, lk, [&] { return d.state != ProbeState::busy; });
  return true;
}

}  // namespace

void register_driver(const Driver* driver) {
  if (!driver) return;
  Drivers& d = drivers();
  std::lock_guard lk(d.lock);
  if (std::find(d.list.begin(), d.list.end(), driver) == d.list.end()) d.list.push_back(driver);
}

int probe_drivers() {
  might_sleep("probe_drivers");
  Drivers& d = drivers();
  std::vector<const Driver*> list;
  {
    Lock lk(d.lock);
    if (!wait_not_busy(d, lk)) return 0;
    if (d.state == ProbeState::probed) return d.result;
    d.state = ProbeState::busy;
    d.owner = std::this_thread::get_id();
    list = d.list;
  }
  // Arbitration (Driver::claims): the drivers that claim the process, else the fallbacks.
  std::vector<const Driver*> chosen;
  for (const Driver* drv : list)
    if (drv->claims && drv->claims()) chosen.push_back(drv);
  const bool claimed = !chosen.empty();
  for (const Driver* drv : list)
    if (!drv->claims && (!drv->fallback || !claimed)) chosen.push_back(drv);
  int result = 0;
  for (const Driver* drv : list) {  // in registration order
    if (!drv->probe || std::find(chosen.begin(), chosen.end(), drv) == chosen.end()) continue;
    const int rc = drv->probe();
    if (rc != 0) {
      std::fprintf(stderr, "dverbs: driver %s: probe failed: %s\n", drv->name ? drv->name : "?",
                   std::strerror(rc));
      if (result == 0) result = rc;
    }
  }
  Lock lk(d.lock);
  d.state = ProbeState::probed;
  d.result = result;
  d.changed.notify_all();
  return result;
}

int add_port(const char* devargs, const char* ip, char* name, size_t name_len) {
  might_sleep("add_port");
  if (!devargs || !name || name_len == 0) return EINVAL;
  (void)probe_drivers();  // a failed default port must not stop an explicit one
  std::vector<const Driver*> list;
  {
    std::lock_guard lk(drivers().lock);
    list = drivers().list;
  }
  int result = EOPNOTSUPP;
  for (const Driver* drv : list) {
    if (!drv->add_port) continue;
    result = drv->add_port(devargs, ip, name, name_len);
    if (result == 0) return 0;
  }
  return result;
}

int remove_port(const char* name) {
  might_sleep("remove_port");
  if (!name) return EINVAL;
  std::vector<const Driver*> list;
  {
    std::lock_guard lk(drivers().lock);
    list = drivers().list;
  }
  for (const Driver* drv : list) {
    if (!drv->remove_port) continue;
    int rc = drv->remove_port(name);
    if (rc != ENOENT) return rc;
  }
  return ENOENT;
}

void shutdown_drivers() {
  might_sleep("shutdown_drivers");
  Drivers& d = drivers();
  std::vector<const Driver*> list;
  {
    Lock lk(d.lock);
    if (!wait_not_busy(d, lk) || d.state != ProbeState::probed) return;
    d.state = ProbeState::busy;
    d.owner = std::this_thread::get_id();
    list = d.list;
  }
  for (auto it = list.rbegin(); it != list.rend(); ++it)
    if ((*it)->shutdown) (*it)->shutdown();
  Lock lk(d.lock);
  d.state = ProbeState::idle;  // a later probe_drivers() probes again
  d.result = 0;
  d.changed.notify_all();
}

}  // namespace dverbs::mid
