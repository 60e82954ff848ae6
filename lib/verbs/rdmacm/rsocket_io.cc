// rsockets data path: the CQ, credits, sending, receiving, the FIN, and what rpoll
// reports. The protocol is described in rsocket_internal.h.
//
// Work request identifiers: a receive carries kRecvTag | its buffer's index, a data send
// kSendData | its send slot, a control message 0. RC completes sends in order, so the
// send ring frees its slots from the tail, one per data send completed.
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "verbs/rdmacm/rsocket_internal.h"

namespace dverbs::rdmacm::rsock {

namespace {

constexpr uint64_t kRecvTag = 1ull << 63;
constexpr uint64_t kSendData = 1ull << 62;

int fail(int err) {
  errno = err;
  return -1;
}

ibv_qp* qp_of(Socket* s) {
  return s->id ? s->id->qp : nullptr;
}

// The connection broke (a completion error other than a flush).
void broken(Socket* s, int err) {
  if (!s->err) s->err = err;
  s->conn->dead = true;
  disconnect(s);  // tells the peer (DREQ)
}

int post_recv(Conn* c, ibv_qp* qp, uint32_t slot) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(c->rbuf) + uint64_t(slot) * kSlotSize, kSlotSize,
              c->rmr->lkey};
  ibv_recv_wr wr{};
  ibv_recv_wr* bad;
  wr.wr_id = kRecvTag | slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  return ibv_post_recv(qp, &wr, &bad);
}

// A buffer back on the receive queue; `data`: it held data, so the peer gets a credit.
void repost(Socket* s, uint32_t slot, bool data) {
  Conn* c = s->conn;
  if (c->dead) return;  // the QP is in ERR: it would only be flushed
  if (post_recv(c, qp_of(s), slot)) {
    broken(s, EIO);
    return;
  }
  if (data) c->owed++;
}

// Takes every credit owed for the immediate of the next message.
uint32_t take_owed(Conn* c) {
  const uint32_t n = std::min(c->owed, kImmCreditMask);
  c->owed -= n;
  return n;
}

int post_ctrl(Socket* s, Op op) {
  Conn* c = s->conn;
  ibv_send_wr wr{};
  ibv_send_wr* bad;
  const uint32_t credits = take_owed(c);
  wr.wr_id = 0;
  wr.num_sge = 0;  // zero bytes
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.imm_data = htobe32(make_imm(op, credits));
  if (int rc = ibv_post_send(qp_of(s), &wr, &bad)) {
    c->owed += credits;
    return rc;
  }
  c->sq_busy++;
  return 0;
}

bool can_send_data(const Conn* c) {
  return c->established && c->have_peer && !c->dead && c->credits > 0 &&
         c->send_head - c->send_tail < c->send_slots;
}

// Returns the owed credits in a message of their own once they reach half the window
// (data messages carry them otherwise). Kept back while the QP is not known to be up.
void return_credits(Socket* s) {
  Conn* c = s->conn;
  if (!c->owed || c->dead || !c->established || c->sq_busy >= c->sq_max) return;
  if (c->owed < std::max<uint32_t>(1, c->data_slots / 2)) return;
  if (post_ctrl(s, Op::credit)) broken(s, EIO);
}

void on_recv(Socket* s, const ibv_wc& wc) {
  Conn* c = s->conn;
  const uint32_t slot = uint32_t(wc.wr_id);
  if (!(wc.wc_flags & IBV_WC_WITH_IMM) || slot >= c->recv_slots) {
    broken(s, EPROTO);
    return;
  }
  const uint32_t imm = be32toh(wc.imm_data);
  c->credits += imm & kImmCreditMask;
  c->established = true;  // it sends: its QP is up (before ESTABLISHED reaches a passive side)
  if (s->state == State::accepting) {
    s->state = State::connected;
    comm_established(s);
  }
  switch (imm_op(imm)) {
    case Op::data:
      if (!wc.byte_len || c->fin_rcvd) {  // nothing, or data after the FIN: dropped
        repost(s, slot, true);
        return;
      }
      c->ready[(c->ready_head + c->ready_count) % c->recv_slots] = {slot, wc.byte_len, 0};
      c->ready_count++;
      return;
    case Op::credit:
      repost(s, slot, false);
      return;
    case Op::fin:
      c->fin_rcvd = true;
      repost(s, slot, false);
      return;
    default:
      broken(s, EPROTO);
  }
}

void on_wc(Socket* s, const ibv_wc& wc) {
  Conn* c = s->conn;
  const bool recv = wc.wr_id & kRecvTag;
  if (!recv) {
    c->sq_busy--;
    if (wc.wr_id & kSendData) c->send_tail++;
  }
  if (wc.status != IBV_WC_SUCCESS) {
    c->dead = true;
    if (wc.status != IBV_WC_WR_FLUSH_ERR) broken(s, ECONNRESET);
    return;
  }
  if (recv) on_recv(s, wc);
}

void poll_cq(Socket* s) {
  Conn* c = s->conn;
  ibv_wc wc[32];
  for (;;) {
    const int n = ibv_poll_cq(c->cq, 32, wc);
    if (n < 0) {
      broken(s, EIO);
      return;
    }
    for (int i = 0; i < n; i++) on_wc(s, wc[i]);
    if (n < 32) return;
  }
}

// Posts one data message of up to c->msg_max bytes gathered from iov at byte `off`.
// Returns the bytes sent, or -1 (the connection is broken).
ssize_t post_data(Socket* s, const iovec* iov, int iovcnt, size_t off, size_t left) {
  Conn* c = s->conn;
  const uint32_t slot = uint32_t(c->send_head % c->send_slots);
  uint8_t* dst = c->sbuf + size_t(slot) * kSlotSize;
  const size_t n = std::min<size_t>(left, c->msg_max);
  size_t done = 0;
  for (int i = 0; i < iovcnt && done < n; i++) {
    if (off >= iov[i].iov_len) {
      off -= iov[i].iov_len;
      continue;
    }
    const size_t k = std::min(iov[i].iov_len - off, n - done);
    std::memcpy(dst + done, static_cast<const uint8_t*>(iov[i].iov_base) + off, k);
    done += k;
    off = 0;
  }
  ibv_sge sge{reinterpret_cast<uintptr_t>(dst), uint32_t(n), c->smr->lkey};
  ibv_send_wr wr{};
  ibv_send_wr* bad;
  const uint32_t credits = take_owed(c);
  wr.wr_id = kSendData | slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND_WITH_IMM;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.imm_data = htobe32(make_imm(Op::data, credits));
  if (ibv_post_send(qp_of(s), &wr, &bad)) {
    c->owed += credits;
    broken(s, EIO);
    return -1;
  }
  c->send_head++;
  c->credits--;
  c->sq_busy++;
  return ssize_t(n);
}

// Copies received bytes into iov from byte `off` on; consumed buffers are reposted unless
// peeking. Returns the bytes copied.
size_t copy_out(Socket* s, const iovec* iov, int iovcnt, size_t off, size_t left, bool peek) {
  Conn* c = s->conn;
  size_t done = 0;
  int vi = 0;
  while (vi < iovcnt && off >= iov[vi].iov_len) off -= iov[vi++].iov_len;
  uint32_t idx = c->ready_head;
  uint32_t count = c->ready_count;
  uint32_t skip = 0;  // peeking: bytes of the current message already copied
  while (done < left && count && vi < iovcnt) {
    Ready& r = c->ready[idx];
    const uint32_t at = r.off + skip;
    const size_t k = std::min({size_t(r.len - at), left - done, iov[vi].iov_len - off});
    std::memcpy(static_cast<uint8_t*>(iov[vi].iov_base) + off,
                c->rbuf + size_t(r.slot) * kSlotSize + at, k);
    done += k;
    off += k;
    if (off == iov[vi].iov_len) {
      vi++;
      off = 0;
    }
    if (peek)
      skip += uint32_t(k);
    else
      r.off += uint32_t(k);
    if (at + k < r.len) continue;
    // the message is used up
    idx = (idx + 1) % c->recv_slots;
    count--;
    skip = 0;
    if (!peek) {
      c->ready_head = idx;
      c->ready_count = count;
      repost(s, r.slot, true);
    }
  }
  return done;
}

bool sendable(Socket* s) {
  Conn* c = s->conn;
  return !c || c->dead || c->disconnected || can_send_data(c);
}
bool receivable(Socket* s) {
  Conn* c = s->conn;
  return !c || c->ready_count || c->fin_rcvd || c->dead || c->disconnected || s->shut_rd;
}
bool fin_postable(Socket* s) {
  Conn* c = s->conn;
  return !c || c->dead || c->sq_busy < c->sq_max;
}
bool sends_done(Socket* s) {
  Conn* c = s->conn;
  return !c || c->dead || c->sq_busy == 0;
}
bool connect_settled(Socket* s) {
  return s->state != State::resolving_addr && s->state != State::resolving_route &&
         s->state != State::connecting;
}

// Sum of the iovec lengths: -1 (EINVAL) for a bad vector or one longer than SSIZE_MAX.
ssize_t iov_total(const iovec* iov, int iovcnt) {
  if (iovcnt < 0 || iovcnt > IOV_MAX || (iovcnt && !iov)) return fail(EINVAL);
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) {
    if (iov[i].iov_len && !iov[i].iov_base) return fail(EFAULT);
    if (iov[i].iov_len > size_t(SSIZE_MAX) - total) return fail(EINVAL);
    total += iov[i].iov_len;
  }
  return ssize_t(total);
}

// Shared by send and receive: waits out a connect in progress. 0 when the socket has a
// connection to use, else -1 with errno.
int usable(Socket* s, Lock& lk, int flags) {
  if (s->state == State::resolving_addr || s->state == State::resolving_route ||
      s->state == State::connecting) {
    if (nonblocking(s, flags)) return would_block();
    if (int rc = wait_for(s, lk, connect_settled, -1)) return fail(rc);
  }
  if (s->state == State::failed && s->err) {
    const int err = s->err;
    s->err = 0;
    return fail(err);
  }
  if (!s->conn || (s->state != State::accepting && s->state != State::connected))
    return fail(ENOTCONN);
  return 0;
}

}  // namespace

int post_all_recvs(Conn* c, ibv_qp* qp) noexcept {
  for (uint32_t i = 0; i < c->recv_slots; i++)
    if (int rc = post_recv(c, qp, i)) return rc;
  return 0;
}

bool connection_open(const Socket* s) noexcept {
  return s->conn && !s->conn->dead &&
         (s->state == State::accepting || s->state == State::connected);
}

void progress(Socket* s) noexcept {
  if (s->closed) return;
  process_cm(s);
  if (!s->conn || !s->conn->cq) return;
  poll_cq(s);
  return_credits(s);
}

short poll_events(Socket* s) noexcept {
  switch (s->state) {
    case State::listening:
      return s->backlog.empty() ? 0 : POLLIN;
    case State::fresh:
      return POLLOUT | POLLHUP;  // as an unconnected TCP socket
    case State::failed:
      return POLLIN | POLLOUT | POLLERR | POLLHUP;
    case State::accepting:
    case State::connected:
      break;
    default:
      return 0;  // connecting
  }
  const Conn* c = s->conn;
  short ev = 0;
  const bool in_done = c->fin_rcvd || c->disconnected || c->dead;  // nothing more comes
  const bool out_done = s->shut_wr || c->disconnected || c->dead;
  if (c->ready_count || in_done || s->shut_rd) ev |= POLLIN;
  if (c->fin_rcvd || c->disconnected) ev |= POLLRDHUP;
  if ((can_send_data(c) && !s->shut_wr) || c->dead || c->disconnected) ev |= POLLOUT;
  // Hung up only once what arrived has been read: rstream takes POLLHUP for an error.
  if (!c->ready_count && in_done && out_done) ev |= POLLHUP;
  if (s->err) ev |= POLLERR;
  return ev;
}

// Blocking: returns once everything is queued (RC delivers it), or with what was queued
// when the connection broke. MSG_DONTWAIT / O_NONBLOCK: what fits now, or EAGAIN.
// ENOTCONN: no connection; EPIPE: shut down for writing, or the peer disconnected;
// ECONNRESET (or SO_ERROR's value): the connection broke.
ssize_t do_send(Socket* s, Lock& lk, const iovec* iov, int iovcnt, int flags) noexcept {
  const ssize_t total = iov_total(iov, iovcnt);
  if (total < 0) return -1;
  if (usable(s, lk, flags)) return -1;
  if (s->shut_wr) return fail(EPIPE);
  if (!total) return 0;
  size_t sent = 0;
  for (;;) {
    progress(s);
    Conn* c = s->conn;
    if (c->dead || c->disconnected) {
      if (sent) break;
      const int err = s->err ? s->err : EPIPE;
      s->err = 0;
      return fail(err);
    }
    while (sent < size_t(total) && can_send_data(c)) {
      const ssize_t n = post_data(s, iov, iovcnt, sent, size_t(total) - sent);
      if (n < 0) break;
      sent += size_t(n);
    }
    if (sent == size_t(total)) break;
    if (c->dead) continue;  // reported above, or returns what was sent
    if (nonblocking(s, flags)) {
      if (sent) break;
      return would_block();
    }
    if (int rc = wait_for(s, lk, sendable, -1)) {
      if (sent && rc != EBADF) break;
      return fail(rc);
    }
  }
  return ssize_t(sent);
}

// Returns what is there (at least one byte), waiting for it unless MSG_DONTWAIT /
// O_NONBLOCK (then EAGAIN); MSG_WAITALL waits for all of it; MSG_PEEK leaves it queued.
// 0 at the end of the stream: the peer's FIN, a disconnection, or SHUT_RD.
// ENOTCONN: no connection; ECONNRESET (or SO_ERROR's value): the connection broke.
ssize_t do_recv(Socket* s, Lock& lk, const iovec* iov, int iovcnt, int flags) noexcept {
  const ssize_t total = iov_total(iov, iovcnt);
  if (total < 0) return -1;
  if (usable(s, lk, flags)) return -1;
  if (!total || s->shut_rd) return 0;
  const bool peek = flags & MSG_PEEK;
  size_t got = 0;
  for (;;) {
    progress(s);
    Conn* c = s->conn;
    got += copy_out(s, iov, iovcnt, got, size_t(total) - got, peek);
    if (got == size_t(total) || (got && (peek || !(flags & MSG_WAITALL)))) break;
    if (c->fin_rcvd || c->disconnected || s->shut_rd) break;  // end of stream
    if (c->dead) {
      if (got) break;
      const int err = s->err;
      s->err = 0;
      return err ? fail(err) : 0;
    }
    if (nonblocking(s, flags)) {
      if (got) break;
      return would_block();
    }
    if (int rc = wait_for(s, lk, receivable, -1)) {
      if (got && rc != EBADF) break;
      return fail(rc);
    }
  }
  if (!s->closed) return_credits(s);
  return ssize_t(got);
}

void send_fin(Socket* s, Lock& lk) noexcept {
  Conn* c = s->conn;
  // Not established: we sent nothing, and the DREQ that follows ends the peer's stream.
  if (!c || c->fin_sent || c->dead || !c->established) return;
  if (wait_for(s, lk, fin_postable, kCloseTimeoutMs) || c->dead) return;
  if (post_ctrl(s, Op::fin)) {
    broken(s, EIO);
    return;
  }
  c->fin_sent = true;
  wait_for(s, lk, sends_done, kCloseTimeoutMs);
}

}  // namespace dverbs::rdmacm::rsock

using namespace dverbs::rdmacm::rsock;

extern "C" {

ssize_t rsend(int socket, const void* buf, size_t len, int flags) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  iovec iov{const_cast<void*>(buf), len};
  Lock lk(s->mu);
  return do_send(s.get(), lk, &iov, 1, flags);
}

// A connected stream ignores the destination, as TCP does.
ssize_t rsendto(int socket, const void* buf, size_t len, int flags, const sockaddr*, socklen_t) {
  return rsend(socket, buf, len, flags);
}

ssize_t rsendmsg(int socket, const msghdr* msg, int flags) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  if (!msg) return fail(EINVAL);
  Lock lk(s->mu);
  return do_send(s.get(), lk, msg->msg_iov, int(msg->msg_iovlen), flags);
}

ssize_t rwrite(int socket, const void* buf, size_t count) {
  return rsend(socket, buf, count, 0);
}

ssize_t rwritev(int socket, const iovec* iov, int iovcnt) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  return do_send(s.get(), lk, iov, iovcnt, 0);
}

ssize_t rrecv(int socket, void* buf, size_t len, int flags) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  iovec iov{buf, len};
  Lock lk(s->mu);
  return do_recv(s.get(), lk, &iov, 1, flags);
}

// src_addr, when given, gets the peer's address (a stream has one source).
ssize_t rrecvfrom(int socket, void* buf, size_t len, int flags, sockaddr* src_addr,
                  socklen_t* addrlen) {
  const ssize_t n = rrecv(socket, buf, len, flags);
  if (n >= 0 && src_addr && addrlen) {
    const int saved = errno;
    if (rgetpeername(socket, src_addr, addrlen)) *addrlen = 0;
    errno = saved;
  }
  return n;
}

ssize_t rrecvmsg(int socket, msghdr* msg, int flags) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  if (!msg) return fail(EINVAL);
  Lock lk(s->mu);
  const ssize_t n = do_recv(s.get(), lk, msg->msg_iov, int(msg->msg_iovlen), flags);
  if (n >= 0) {
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
    msg->msg_namelen = 0;
  }
  return n;
}

ssize_t rread(int socket, void* buf, size_t count) {
  return rrecv(socket, buf, count, 0);
}

ssize_t rreadv(int socket, const iovec* iov, int iovcnt) {
  SocketRef s = find_socket(socket);
  if (!s) return -1;
  Lock lk(s->mu);
  return do_recv(s.get(), lk, iov, iovcnt, 0);
}

}  // extern "C"
