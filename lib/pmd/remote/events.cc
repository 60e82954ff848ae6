// Completion and async events from dverbsd: one thread per connection.
//
// The daemon writes ShmEvent entries into the connection's event ring and signals the
// eventfd it passed at hello. The thread sleeps in poll() on that eventfd, on the socket
// (POLLRDHUP/POLLHUP: the daemon died) and on a private stop eventfd. On wake it drains the
// ring: each entry is copied out of shared memory, checked (kind, type, handle, port) and
// handed to the midlayer — mid::cq_comp_event for a completion event, mid::dispatch_event
// for an async one — then the consumer index is published. Both midlayer calls only
// enqueue; the consumers' handlers run on midlayer handler threads.
//
// Locking: the drain runs under Device::obj_lock, which the destroy ops take to erase a
// handle before they free the object: an event never reaches a freed CQ, QP or SRQ. The
// ring's consumer index is this thread's alone.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

namespace {

template <class M>
auto find(const M& m, Handle h) -> typename M::mapped_type {
  auto it = m.find(h);
  return it == m.end() ? nullptr : it->second;
}

// One event, copied out of the ring. With dev.obj_lock held.
void deliver(Device& dev, const daemon::ShmEvent& e) {
  if (e.kind == daemon::EventKind::comp) {
    if (mid::Cq* cq = find(dev.cqs, e.object)) mid::cq_comp_event(cq);
    return;
  }
  if (e.kind != daemon::EventKind::async) return;
  mid::Event ev;
  ev.device = &dev;
  ev.type = e.type;
  if (uint32_t(e.type) > uint32_t(EventType::gid_change)) return;  // not an event type
  switch (mid::event_element(e.type)) {
    case mid::EventElement::cq:
      if (!(ev.element.cq = find(dev.cqs, e.object))) return;
      break;
    case mid::EventElement::qp:
      if (!(ev.element.qp = find(dev.qps, e.object))) return;
      break;
    case mid::EventElement::srq:
      if (!(ev.element.srq = find(dev.srqs, e.object))) return;
      break;
    case mid::EventElement::device:
      dev.raise_fatal();  // once, whoever notices first
      return;
    case mid::EventElement::port:
      if (e.port_num < 1 || e.port_num > dev.phys_port_cnt) return;
      ev.element.port_num = e.port_num;
      break;
  }
  mid::dispatch_event(ev);
}

void drain(Device& dev) {
  std::lock_guard<mid::Mutex> g(dev.obj_lock);
  const uint32_t prod = dev.event_hdr->prod.v.load(std::memory_order_acquire);
  uint32_t cons = dev.event_cons;
  if (prod - cons > dev.event_entries) {
    cons = prod;  // impossible indices: skip what cannot be trusted
  } else {
    for (; cons != prod; cons++) {
      const daemon::ShmEvent e = dev.events[cons & (dev.event_entries - 1)];
      deliver(dev, e);
    }
  }
  dev.event_cons = cons;
  dev.event_hdr->cons.v.store(cons, std::memory_order_release);
}

void event_loop(Device* dev) {
  pollfd p[3] = {{dev->event_fd, POLLIN, 0}, {dev->conn.fd(), POLLRDHUP, 0},
                 {dev->stop_fd, POLLIN, 0}};
  for (;;) {
    if (::poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[2].revents) break;
    if (p[0].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t n = ::read(dev->event_fd, &v, sizeof v);
    }
    drain(*dev);
    if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      // The daemon is gone (or shut our connection down): it has freed everything this
      // process owned. Commands now fail with EIO, polling drains what was completed.
      dev->conn.mark_dead();
      dev->raise_fatal();
      break;
    }
    if (p[0].revents & (POLLERR | POLLNVAL)) break;
  }
}

}  // namespace

int start_events(Device* dev) {
  dev->stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (dev->stop_fd < 0) return errno;
  try {
    dev->event_thread = std::thread(event_loop, dev);
  } catch (...) {
    return EAGAIN;
  }
  return 0;
}

void stop_events(Device* dev) noexcept {
  if (!dev->event_thread.joinable()) return;
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(dev->stop_fd, &one, sizeof one);
  dev->event_thread.join();
}

}  // namespace dverbs::pmd::remote
