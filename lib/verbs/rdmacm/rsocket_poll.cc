// rsockets waiting: wait_for (every blocking call), rpoll and rselect.
//
// A wait polls first: it makes progress (the socket's CM events and CQ) for kSpinNs,
// which is also what drives the transport under inline progress (DVERBS_LCORES=0). Then it
// arms the CQ, makes progress once more (a completion that came before the arm raised no
// event), and sleeps in poll(2) on the completion channel, the CM channel and the socket's
// eventfd (written by rclose and rshutdown) for at most kMaxSleepMs, so that a wake-up
// another waiter took is not waited for long. rpoll does the same over all its rsockets,
// with the application's other descriptors in the same poll(2).
#include <sched.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "verbs/rdmacm/rsocket_internal.h"

namespace dverbs::rdmacm::rsock {

namespace {

int64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

int64_t deadline_of(int timeout_ms) {
  return timeout_ms < 0 ? INT64_MAX : now_ns() + int64_t(timeout_ms) * 1'000'000;
}

// Milliseconds to sleep before `deadline` (rounded up), at most kMaxSleepMs.
int sleep_ms(int64_t deadline) {
  if (deadline == INT64_MAX) return kMaxSleepMs;
  const int64_t left = deadline - now_ns();
  if (left <= 0) return 0;
  return int(std::min<int64_t>(kMaxSleepMs, (left + 999'999) / 1'000'000));
}

// Arms the CQ and clears the eventfd before a sleep. Context: s->mu held.
void arm(Socket* s) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = read(s->fd, &v, sizeof v);
  if (s->conn && s->conn->cq) ibv_req_notify_cq(s->conn->cq, 0);
}

// After a sleep: acks the completion events it may have produced.
void drain(Socket* s) {
  if (s->closed || !s->conn || !s->conn->cc) return;
  ibv_cq* cq;
  void* ctx;
  while (ibv_get_cq_event(s->conn->cc, &cq, &ctx) == 0) ibv_ack_cq_events(cq, 1);
}

// The descriptors a sleep on the socket watches; returns how many (at most 3).
int watch(Socket* s, pollfd* out) {
  int n = 0;
  out[n++] = {s->fd, POLLIN, 0};
  if (s->ch) out[n++] = {s->ch->fd, POLLIN, 0};
  if (s->conn && s->conn->cc) out[n++] = {s->conn->cc->fd, POLLIN, 0};
  return n;
}

// rpoll's pass over its descriptors: progress on every rsocket, poll(2) with no timeout
// on the others. Returns the number with events, or -1 (poll(2)'s errno).
int scan(pollfd* fds, nfds_t nfds, const std::vector<SocketRef>& socks, std::vector<pollfd>& real,
         std::vector<nfds_t>& real_at) {
  int n = 0;
  real.clear();
  real_at.clear();
  for (nfds_t i = 0; i < nfds; i++) {
    fds[i].revents = 0;
    if (fds[i].fd < 0) continue;
    Socket* s = socks[i].get();
    if (!s) {
      real.push_back({fds[i].fd, fds[i].events, 0});
      real_at.push_back(i);
      continue;
    }
    Lock lk(s->mu);
    if (s->closed) {
      fds[i].revents = POLLNVAL;
    } else {
      progress(s);
      fds[i].revents = short(poll_events(s) & (fds[i].events | POLLERR | POLLHUP));
    }
    if (fds[i].revents) n++;
  }
  if (!real.empty()) {
    const int rc = poll(real.data(), real.size(), 0);
    if (rc < 0) return -1;
    for (size_t k = 0; k < real.size(); k++) {
      fds[real_at[k]].revents = real[k].revents;
      if (real[k].revents) n++;
    }
  }
  return n;
}

}  // namespace

int would_block() noexcept {
  sched_yield();
  errno = EAGAIN;
  return -1;
}

void wake(Socket* s) noexcept {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(s->fd, &one, sizeof one);
}

int wait_for(Socket* s, Lock& lk, ReadyFn ready, int timeout_ms) noexcept {
  const int64_t deadline = deadline_of(timeout_ms);
  for (;;) {
    const int64_t spin_end = std::min(now_ns() + kSpinNs, deadline);
    for (;;) {
      if (s->closed) return EBADF;
      progress(s);
      if (ready(s)) return 0;
      const int64_t t = now_ns();
      if (t >= deadline) return ETIMEDOUT;
      if (t >= spin_end) break;
      lk.unlock();  // let another thread of the socket in, and the transport's
      sched_yield();
      lk.lock();
    }
    arm(s);
    progress(s);
    if (ready(s)) return 0;
    pollfd fds[3];
    const int n = watch(s, fds);
    const int ms = sleep_ms(deadline);
    lk.unlock();
    poll(fds, nfds_t(n), ms);
    lk.lock();
    drain(s);
  }
}

}  // namespace dverbs::rdmacm::rsock

using namespace dverbs::rdmacm::rsock;

extern "C" {

// poll(2) over rsockets and other descriptors alike. An rsocket reports POLLIN (data, a
// request on a listener, or the end of the stream), POLLOUT (a send would take data now),
// POLLRDHUP (the peer's FIN), POLLHUP, POLLERR (SO_ERROR set); one closed meanwhile
// POLLNVAL. EINVAL: nfds above INT_MAX; EFAULT: fds NULL; EINTR.
int rpoll(pollfd* fds, nfds_t nfds, int timeout) {
  if (nfds && !fds) {
    errno = EFAULT;
    return -1;
  }
  if (nfds > nfds_t(INT_MAX)) {
    errno = EINVAL;
    return -1;
  }
  std::vector<SocketRef> socks(nfds);
  std::vector<pollfd> real, sleep_fds;
  std::vector<nfds_t> real_at;
  const int saved = errno;
  size_t nsocks = 0;
  for (nfds_t i = 0; i < nfds; i++)
    if (fds[i].fd >= 0 && (socks[i] = find_socket(fds[i].fd))) nsocks++;
  errno = saved;
  const int64_t deadline = deadline_of(timeout);
  int64_t spin_end = std::min(now_ns() + kSpinNs, deadline);
  for (;;) {
    int n = scan(fds, nfds, socks, real, real_at);
    if (n) return n;
    if (timeout == 0) {
      sched_yield();  // as would_block(): rstream polls with timeout 0 in a loop
      return 0;
    }
    const int64_t t = now_ns();
    if (t >= deadline) return 0;
    if (nsocks && t < spin_end) {
      sched_yield();
      continue;
    }
    // Asleep: the other descriptors plus, per rsocket, what wait_for watches.
    sleep_fds = real;
    for (nfds_t i = 0; i < nfds; i++) {
      Socket* s = socks[i].get();
      if (!s || fds[i].fd < 0) continue;
      Lock lk(s->mu);
      if (s->closed) continue;
      arm(s);
      progress(s);
      if (poll_events(s) & (fds[i].events | POLLERR | POLLHUP)) n++;
      pollfd w[3];
      const int k = watch(s, w);
      sleep_fds.insert(sleep_fds.end(), w, w + k);
    }
    if (n) continue;  // ready after the arm: report it
    const int rc = poll(sleep_fds.data(), sleep_fds.size(), sleep_ms(deadline));
    if (rc < 0 && errno == EINTR) return -1;
    for (nfds_t i = 0; i < nfds; i++) {
      if (!socks[i]) continue;
      Lock lk(socks[i]->mu);
      drain(socks[i].get());
    }
    spin_end = std::min(now_ns() + kSpinNs, deadline);
  }
}

// select(2) over rpoll. EINVAL: nfds outside 0..FD_SETSIZE or a bad timeout; EBADF: a
// descriptor in a set is neither open nor an rsocket. The timeout is not updated.
int rselect(int nfds, fd_set* readfds, fd_set* writefds, fd_set* exceptfds, timeval* timeout) {
  if (nfds < 0 || nfds > FD_SETSIZE) {
    errno = EINVAL;
    return -1;
  }
  int ms = -1;
  if (timeout) {
    if (timeout->tv_sec < 0 || timeout->tv_usec < 0 || timeout->tv_usec >= 1'000'000) {
      errno = EINVAL;
      return -1;
    }
    const int64_t t = int64_t(timeout->tv_sec) * 1000 + (timeout->tv_usec + 999) / 1000;
    ms = int(std::min<int64_t>(t, INT_MAX));
  }
  std::vector<pollfd> fds;
  for (int fd = 0; fd < nfds; fd++) {
    short ev = 0;
    if (readfds && FD_ISSET(fd, readfds)) ev |= POLLIN;
    if (writefds && FD_ISSET(fd, writefds)) ev |= POLLOUT;
    if (exceptfds && FD_ISSET(fd, exceptfds)) ev |= POLLPRI;
    if (ev) fds.push_back({fd, ev, 0});
  }
  const int rc = rpoll(fds.data(), fds.size(), ms);
  if (rc < 0) return -1;
  for (const pollfd& p : fds)
    if (p.revents & POLLNVAL) {
      errno = EBADF;
      return -1;
    }
  if (readfds) FD_ZERO(readfds);
  if (writefds) FD_ZERO(writefds);
  if (exceptfds) FD_ZERO(exceptfds);
  int n = 0;
  for (const pollfd& p : fds) {
    if (readfds && (p.events & POLLIN) && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      FD_SET(p.fd, readfds);
      n++;
    }
    if (writefds && (p.events & POLLOUT) && (p.revents & (POLLOUT | POLLERR))) {
      FD_SET(p.fd, writefds);
      n++;
    }
    if (exceptfds && (p.events & POLLPRI) && (p.revents & POLLPRI)) {
      FD_SET(p.fd, exceptfds);
      n++;
    }
  }
  return n;
}

}  // extern "C"
