// Completion channels and async events: real file descriptors fed by midlayer handler
// threads.
//
// A completion channel is an eventfd in semaphore mode plus a FIFO of the CQs that have
// events pending (intrusive, under the channel's spinlock). The CQ's completion handler —
// on a midlayer handler thread, at most one at a time per CQ, once per arm — appends the
// CQ (or bumps its count) and then writes 1 to the eventfd. ibv_get_cq_event reads one
// count (blocking unless the application made the fd O_NONBLOCK) and pops one event.
// Invariant: counts written >= events queued, because a count is written after its event
// is queued and destroy_cq may drop queued events without taking their counts back; a
// reader that finds the FIFO empty therefore just reads again.
//
// Async events work the same way per context, with a bounded ring of events (overflow is
// counted, not reported: most programs never read their async events). As in rdma-core, destroying a CQ/QP/SRQ waits until every
// event the application was given for it has been acknowledged; events are counted as
// given under the lock that the destroy's purge takes, so none slips past the wait.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <mutex>
#include <new>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

void on_cq_comp(mid::Cq*, void* p) {
  auto* cq = static_cast<DvCq*>(p);
  Channel* ch = cq->channel;
  if (!ch) return;
  ch->lock.lock();
  if (cq->queued++ == 0 && !cq->in_queue) {
    cq->in_queue = true;
    cq->next_ready = nullptr;
    if (ch->tail)
      ch->tail->next_ready = cq;
    else
      ch->head = cq;
    ch->tail = cq;
  }
  ch->lock.unlock();
  const uint64_t one = 1;
  // Never blocks: the counter would have to reach 2^64 - 2.
  [[maybe_unused]] ssize_t n = write(ch->ch.fd, &one, sizeof one);
}

void channel_forget(DvCq* cq) noexcept {
  Channel* ch = cq->channel;
  if (!ch) return;
  ch->lock.lock();
  if (cq->in_queue) {
    DvCq** pp = &ch->head;
    DvCq* prev = nullptr;
    while (*pp && *pp != cq) {
      prev = *pp;
      pp = &(*pp)->next_ready;
    }
    if (*pp) {
      *pp = cq->next_ready;
      if (ch->tail == cq) ch->tail = prev;
    }
    cq->in_queue = false;
  }
  cq->queued = 0;  // their counts stay in the eventfd: readers skip them (see above)
  ch->lock.unlock();
}

int destroy_channel_locked(Channel* ch) {
  if (ch->ch.refcnt) return EBUSY;
  untrack(ch->ctx, ch, ch->handle);
  close(ch->ch.fd);
  delete ch;
  return 0;
}

void wait_acks(pthread_mutex_t* m, pthread_cond_t* c, const uint32_t* acked, uint32_t reported) {
  pthread_mutex_lock(m);
  while (*acked != reported) pthread_cond_wait(c, m);
  pthread_mutex_unlock(m);
}

void push_async(Context* c, const AsyncEvent& ev) noexcept {
  c->async_lock.lock();
  bool ok = c->async_count < Context::kAsyncRing;
  if (ok) {
    c->async_ring[(c->async_head + c->async_count) % Context::kAsyncRing] = ev;
    ++c->async_count;
  }
  c->async_lock.unlock();
  if (!ok) {
    // Most programs never read async events (COMM_EST, port changes…): a full queue drops
    // the newest quietly, counted in async_dropped, instead of printing into their output.
    c->async_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(c->async_fd, &one, sizeof one);
}

void purge_async(Context* c, const void* obj) noexcept {
  c->async_lock.lock();
  uint32_t keep = 0;
  for (uint32_t i = 0; i < c->async_count; ++i) {
    const AsyncEvent& e = c->async_ring[(c->async_head + i) % Context::kAsyncRing];
    if (e.obj != obj) c->async_ring[(c->async_head + keep++) % Context::kAsyncRing] = e;
  }
  c->async_count = keep;  // dropped events' counts stay in the eventfd; readers skip them
  c->async_lock.unlock();
}

}  // namespace dverbs::ibv

using namespace dverbs;
using namespace dverbs::ibv;

extern "C" {

ibv_comp_channel* ibv_create_comp_channel(ibv_context* context) {
  std::lock_guard<mid::Mutex> g(g_lock());
  Context* c = registry_find(context, Kind::context);
  if (!c) return fail(EINVAL, static_cast<ibv_comp_channel*>(nullptr));
  if (c->dev->removed) return fail(EIO, static_cast<ibv_comp_channel*>(nullptr));
  auto* ch = new (std::nothrow) Channel();
  if (!ch) return fail(ENOMEM, static_cast<ibv_comp_channel*>(nullptr));
  ch->ch.fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
  if (ch->ch.fd < 0) {
    int e = errno;
    delete ch;
    return fail(e, static_cast<ibv_comp_channel*>(nullptr));
  }
  ch->ch.context = context;
  ch->ch.refcnt = 0;
  ch->ctx = c;
  if (int rc = track(c, ch, Kind::channel, &ch->handle)) {
    close(ch->ch.fd);
    delete ch;
    return fail(rc, static_cast<ibv_comp_channel*>(nullptr));
  }
  return &ch->ch;
}

// Returns 0 or an errno value (EBUSY while CQs use the channel), as rdma-core's does.
int ibv_destroy_comp_channel(ibv_comp_channel* channel) {
  std::lock_guard<mid::Mutex> g(g_lock());
  if (!registry_find(channel, Kind::channel)) return EINVAL;
  return destroy_channel_locked(wrap<Channel>(channel));
}

int ibv_get_cq_event(ibv_comp_channel* channel, ibv_cq** cq, void** cq_context) {
  if (!cq || !cq_context) return fail(EINVAL, -1);
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    if (!registry_find(channel, Kind::channel)) return fail(EINVAL, -1);
  }
  Channel* ch = wrap<Channel>(channel);
  for (;;) {
    uint64_t v;
    if (read(ch->ch.fd, &v, sizeof v) != ssize_t(sizeof v)) return -1;  // errno from read
    ch->lock.lock();
    DvCq* got = ch->head;
    if (got) {
      // Counted under the channel lock: destroy_cq, after channel_forget, waits for the
      // acknowledgement of every event popped so far.
      ++got->comp_reported;
      if (--got->queued == 0) {
        ch->head = got->next_ready;
        if (!ch->head) ch->tail = nullptr;
        got->in_queue = false;
      }
    }
    ch->lock.unlock();
    if (!got) continue;  // the count of an event dropped by destroy_cq
    *cq = ibv_cq_ex_to_cq(&got->cq);
    *cq_context = got->cq.cq_context;
    return 0;
  }
}

void ibv_ack_cq_events(ibv_cq* cq, unsigned int nevents) {
  if (!cq) return;
  pthread_mutex_lock(&cq->mutex);
  cq->comp_events_completed += nevents;
  pthread_cond_signal(&cq->cond);
  pthread_mutex_unlock(&cq->mutex);
}

int ibv_get_async_event(ibv_context* context, ibv_async_event* event) {
  if (!event) return fail(EINVAL, -1);
  Context* c;
  {
    std::lock_guard<mid::Mutex> g(g_lock());
    c = registry_find(context, Kind::context);
    if (!c) return fail(EINVAL, -1);
  }
  for (;;) {
    uint64_t v;
    if (read(c->async_fd, &v, sizeof v) != ssize_t(sizeof v)) return -1;
    AsyncEvent e;
    c->async_lock.lock();
    const bool got = c->async_count > 0;
    if (got) {
      e = c->async_ring[c->async_head];
      c->async_head = (c->async_head + 1) % Context::kAsyncRing;
      --c->async_count;
      // Counted under the queue lock: a destroy, after purge_async, waits for the
      // acknowledgement of every event popped so far.
      switch (e.kind) {
        case Kind::cq:
          ++static_cast<DvCq*>(e.obj)->async_reported;
          break;
        case Kind::qp:
          ++static_cast<DvQp*>(e.obj)->async_reported;
          break;
        case Kind::srq:
          ++static_cast<DvSrq*>(e.obj)->async_reported;
          break;
        default:
          break;
      }
    }
    c->async_lock.unlock();
    if (!got) continue;  // the count of an event purged by a destroy
    event->event_type = e.type;
    switch (e.kind) {
      case Kind::cq:
        event->element.cq = ibv_cq_ex_to_cq(&static_cast<DvCq*>(e.obj)->cq);
        break;
      case Kind::qp:
        event->element.qp = &static_cast<DvQp*>(e.obj)->qpx.qp_base;
        break;
      case Kind::srq:
        event->element.srq = &static_cast<DvSrq*>(e.obj)->srq;
        break;
      default:
        event->element.port_num = e.port_num;
        break;
    }
    return 0;
  }
}

void ibv_ack_async_event(ibv_async_event* event) {
  if (!event) return;
  switch (event->event_type) {
    case IBV_EVENT_CQ_ERR: {
      ibv_cq* cq = event->element.cq;
      pthread_mutex_lock(&cq->mutex);
      ++cq->async_events_completed;
      pthread_cond_signal(&cq->cond);
      pthread_mutex_unlock(&cq->mutex);
      return;
    }
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED: {
      ibv_qp* qp = event->element.qp;
      pthread_mutex_lock(&qp->mutex);
      ++qp->events_completed;
      pthread_cond_signal(&qp->cond);
      pthread_mutex_unlock(&qp->mutex);
      return;
    }
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED: {
      ibv_srq* srq = event->element.srq;
      pthread_mutex_lock(&srq->mutex);
      ++srq->events_completed;
      pthread_cond_signal(&srq->cond);
      pthread_mutex_unlock(&srq->mutex);
      return;
    }
    default:
      return;  // device and port events: nothing waits for them
  }
}

}  // extern "C"
