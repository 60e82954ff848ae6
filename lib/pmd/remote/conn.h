// One connection to dverbsd: the slow path of daemon mode (uverbs' write() on
// /dev/infiniband/uverbsN).
//
// Commands are strictly one at a time per connection: call() holds the connection's
// mutex across sendmsg and the matching recvmsg, so a response is never read by another
// caller and file descriptors always arrive with their own response. The daemon answers
// every request (proto.h); a response whose seq does not match is discarded.
//
// Death: EOF, EPIPE or ECONNRESET on the socket marks the connection dead for good;
// call() then returns EIO without touching the socket. The owner (Device) turns the first
// death into IBV_EVENT_DEVICE_FATAL.
//
// Thread safety: call() from any thread in process context (it sleeps). dead() from any
// thread, never sleeps.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "midlayer/might_sleep.h"
#include "uapi/dverbsd/proto.h"

namespace dverbs::pmd::remote {

// Receives at most this many descriptors with one response (hello sends two).
constexpr int kMaxRecvFds = 4;

class Conn {
 public:
  Conn() = default;
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // Connects to the socket at `path`. Returns 0 or the errno of socket()/connect().
  // Context: process context, may sleep.
  int connect_to(const std::string& path);

  // Sends `req` (magic and seq are filled in) with `nfds` descriptors and waits for its
  // response. Returns 0 when a response arrived (its status is in resp->status), EIO
  // when the daemon is gone (the connection is then dead), ECONNREFUSED when the daemon
  // refused the connection (proto.h: the seq-0 answer, whose status in resp->status says
  // why; the connection is then dead), EPROTO for a malformed response. Descriptors that came with the response are stored in rfds[0..*nrfds) and
  // belong to the caller; none are returned on error.
  // Context: process context, sleeps until the daemon answers.
  int call(daemon::Request& req, daemon::Response* resp, const int* fds = nullptr, int nfds = 0,
           int* rfds = nullptr, int* nrfds = nullptr);

  // Context: any, never sleeps.
  bool dead() const noexcept { return dead_.load(std::memory_order_acquire); }
  // Marks the connection dead; returns true for the first caller only.
  // Context: any, never sleeps.
  bool mark_dead() noexcept { return !dead_.exchange(true, std::memory_order_acq_rel); }
  // In a fork() child: the socket is the parent's conversation with the daemon. The child
  // closes its copy and its verbs fail with EIO. Context: the atfork child handler.
  void drop_in_child() noexcept {
    dead_.store(true, std::memory_order_release);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const noexcept { return fd_; }

 private:
  int exchange(daemon::Request& req, daemon::Response* resp, const int* fds, int nfds, int* rfds,
               int* nrfds);
  // Reads a queued seq-0 refusal without waiting. Context: process context, never sleeps.
  bool take_refusal(daemon::Response* resp) noexcept;

  int fd_ = -1;
  mid::Mutex lock_;           // one command in flight
  uint32_t next_seq_ = 1;     // guarded by lock_
  std::atomic<bool> dead_{false};
};

}  // namespace dverbs::pmd::remote
