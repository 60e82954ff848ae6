// rsockets (<rdma/rsocket.h>) over the drop-in's own rdma_* calls: the socket object and
// what its files share.
//
// Files: rsocket.cc (the descriptor table, socket life, names, options, fcntl),
// rsocket_conn.cc (connection set-up and teardown: the CM events, rconnect, rlisten,
// raccept), rsocket_io.cc (the data path: CQ, credits, send, receive, FIN),
// rsocket_poll.cc (waiting: wait_for, rpoll, rselect).
//
// Protocol (dverbs to dverbs only; rdma-core's rsockets wire format is not spoken). One RC
// QP per connected socket, made with rdma_create_qp on the socket's identifier, which has
// an event channel of its own. Each side posts `slots + kSpareRecvs` receive buffers of
// kSlotSize bytes and tells the peer, in the CM private data (Hello), how many data
// messages it may send: `slots`, its initial credits. Every message is a SEND with
// immediate; the immediate (Imm) says what it is and returns credits:
//   data    1..slot_size bytes of the stream; costs the sender one credit. The receiver
//           reposts the buffer once the application has read all of it and owes the peer
//           one credit for it.
//   credit  zero bytes: only returns credits. Sent when the owed credits reach half the
//           window and no data goes the other way to carry them (every data message
//           carries all the credits owed).
//   fin     zero bytes: no more data (rshutdown SHUT_WR, rclose); the peer's rrecv then
//           returns 0 once it has read everything before it.
// Control messages cost no credit: their buffers are reposted as soon as they are polled,
// and kSpareRecvs buffers are posted for them. Should more of them be in flight than the
// peer has spare buffers, the SEND is NAKed RNR and retried (rnr_retry 7, forever): the
// window bounds data, RC's retry only ever delays a control message.
//
// Progress. With DVERBS_LCORES=0 the transport moves only when someone polls a CQ, so
// every call polls the socket's CQ and reads its CM events (progress()), and every wait
// polls for a while (kSpinNs) before it arms the CQ and sleeps in poll(2) on the
// completion channel, the CM channel and the socket's eventfd (the dverbs-inline helper
// thread keeps the transport moving meanwhile). Polling yields the CPU between rounds,
// and so does a non-blocking call that finds nothing to do: on a small machine the
// transport lcores (DVERBS_LCORES>=1) and the peer need it more than a busy loop does.
//
// Locking. table_lock() (rsocket.cc) guards the descriptor table only; lookups hand out a
// shared_ptr, so a socket lives as long as a call is using it. Socket::mu guards
// everything in a Socket; it is dropped only while a wait sleeps in poll(2) (and briefly
// between spins). rclose marks the socket closed and wakes its eventfd: a call that wakes
// to find it closed fails with EBADF without touching the (destroyed) resources.
#pragma once

#include <endian.h>
#include <fcntl.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <rdma/rsocket.h>
#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

namespace dverbs::rdmacm::rsock {

constexpr uint32_t kSlotSize = 16 * 1024;  // one message at most; one receive buffer
constexpr uint32_t kMinSlots = 4;
constexpr uint32_t kMaxSlots = 256;
constexpr uint32_t kSpareRecvs = 8;           // receive buffers for control messages
constexpr uint32_t kCtrlSends = 8;            // send-queue entries beyond the data slots
constexpr int kDefaultBufBytes = 128 * 1024;  // SO_SNDBUF / SO_RCVBUF before doubling
constexpr int kResolveTimeoutMs = 2000;
constexpr int kCloseTimeoutMs = 10'000;  // rshutdown/rclose wait this long for sends
constexpr int64_t kSpinNs = 50'000;      // poll the CQ this long before sleeping
constexpr int kMaxSleepMs = 100;         // re-check at least this often while asleep

// The CM private data both sides send (REQ and REP), big-endian.
struct Hello {
  uint32_t magic;   // kHelloMagic
  uint8_t version;  // kHelloVersion
  uint8_t reserved[3];
  uint32_t slot_size;  // bytes per receive buffer: the largest message the peer may send
  uint32_t slots;      // data messages the peer may send before credits come back
};
constexpr uint32_t kHelloMagic = 0x64765253;  // "dvRS"
constexpr uint8_t kHelloVersion = 1;

// The immediate data of every message (host order; sent big-endian).
enum class Op : uint32_t { data = 0, credit = 1, fin = 2 };
constexpr uint32_t kImmCreditMask = 0x00ffffff;
inline uint32_t make_imm(Op op, uint32_t credits) {
  return (uint32_t(op) << 24) | (credits & kImmCreditMask);
}
inline Op imm_op(uint32_t imm) {
  return Op(imm >> 24);
}

enum class State : uint8_t {
  fresh,  // rsocket() done (bound or not)
  listening,
  resolving_addr,   // rconnect: waiting for ADDR_RESOLVED
  resolving_route,  // waiting for ROUTE_RESOLVED
  connecting,       // REQ sent, waiting for ESTABLISHED
  accepting,        // raccept: REP sent; data may already arrive
  connected,        // ESTABLISHED (or the peer's first message) seen
  failed,           // the connect failed: Socket::err says why
};
const char* state_name(State s) noexcept;

// A connection request a listener holds until raccept takes it.
struct Pending {
  rdma_cm_id* id = nullptr;
  Hello peer{};
  bool dead = false;  // the peer gave up before raccept
};

// One received message not fully read yet.
struct Ready {
  uint32_t slot;
  uint32_t len;
  uint32_t off;
};

// The QP, CQ and buffers of a connection, and the data path's state.
struct Conn {
  ibv_comp_channel* cc = nullptr;
  ibv_cq* cq = nullptr;
  ibv_mr* rmr = nullptr;
  ibv_mr* smr = nullptr;
  uint8_t* rbuf = nullptr;
  uint8_t* sbuf = nullptr;
  uint32_t data_slots = 0;  // D: the credits the peer starts with
  uint32_t recv_slots = 0;  // D + kSpareRecvs buffers
  uint32_t send_slots = 0;
  uint32_t sq_max = 0;   // send_slots + kCtrlSends
  uint32_t msg_max = 0;  // min(kSlotSize, the peer's slot_size)

  // receive side
  Ready* ready = nullptr;  // ring of recv_slots entries, in arrival order
  uint32_t ready_head = 0;
  uint32_t ready_count = 0;
  uint32_t owed = 0;  // credits to return: data buffers reposted since the last return
  // send side
  uint32_t credits = 0;    // data messages the peer can take now
  uint64_t send_head = 0;  // data slots posted
  uint64_t send_tail = 0;  // data slots completed
  uint32_t sq_busy = 0;    // work requests posted, not completed

  bool have_peer = false;    // the peer's Hello is known
  bool established = false;  // the peer's QP is ready: we may send
  bool fin_sent = false;
  bool fin_rcvd = false;
  bool disconnected = false;  // DISCONNECTED seen or rdma_disconnect called
  bool disconnect_sent = false;
  bool dead = false;  // the QP flushed or failed: nothing more moves
};

struct Options {
  int sndbuf = 2 * kDefaultBufBytes;
  int rcvbuf = 2 * kDefaultBufBytes;
  bool reuseaddr = false;
  bool keepalive = false;  // recorded: RC's own retries detect a dead peer
  bool oobinline = false;
  bool nodelay = false;  // recorded: every rsend goes out at once anyway
  bool v6only = false;
  linger lg{};
  int keepidle = 7200;
  int keepintvl = 75;
  int keepcnt = 9;
  int maxseg = 0;
  int sqsize = 0;  // SOL_RDMA options: recorded
  int rqsize = 0;
  int inline_size = 64;
  int iomapsize = 0;
};

struct Socket {
  Socket(int efd, int dom) : fd(efd), domain(dom) {}
  ~Socket();  // closes fd (the resources are gone by then: teardown())
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  const int fd;  // an eventfd: the application's descriptor, and rclose's wake-up
  const int domain;
  std::mutex mu;
  // ---- under mu ----
  State state = State::fresh;
  bool closed = false;  // rclose ran: fail with EBADF
  bool bound = false;
  bool shut_rd = false;
  bool shut_wr = false;
  int fd_flags = 0;  // F_GETFL/F_SETFL (O_NONBLOCK)
  int err = 0;       // SO_ERROR: why the connection failed or broke
  Options opt;
  rdma_event_channel* ch = nullptr;  // private to this socket, O_NONBLOCK
  rdma_cm_id* id = nullptr;
  std::deque<Pending> backlog;  // listener
  Conn* conn = nullptr;
};
using SocketRef = std::shared_ptr<Socket>;
using Lock = std::unique_lock<std::mutex>;

// ---- the descriptor table (rsocket.cc) ----
// A new socket with its eventfd, already in the table; nullptr with errno.
// Context: any thread, takes the table lock.
SocketRef new_socket(int domain) noexcept;
// The live socket behind fd, or nullptr (errno EBADF). Context: any thread.
SocketRef find_socket(int fd) noexcept;
// Takes fd out of the table (false: it was not there). Context: any thread.
bool remove_socket(int fd) noexcept;

// ---- connection set-up (rsocket_conn.cc) ----
// Every function here: Context: process context, s->mu held; may sleep where it waits.
// The private channel (O_NONBLOCK) and the identifier of a new socket. 0 or an errno.
int open_id(Socket* s) noexcept;
// Reads every queued CM event of the socket and acts on it. Never blocks.
void process_cm(Socket* s) noexcept;
// The bodies of rconnect, rlisten and raccept: 0 (raccept: the new descriptor) or -1
// with errno. do_connect and do_accept wait unless the socket is O_NONBLOCK.
int do_connect(Socket* s, Lock& lk, const sockaddr* addr, socklen_t len) noexcept;
int do_listen(Socket* s, int backlog) noexcept;
int do_accept(Socket* s, Lock& lk, sockaddr* addr, socklen_t* len) noexcept;
// rdma_disconnect, once: the QP to ERR, then DREQ (or the DREP that answers one).
void disconnect(Socket* s) noexcept;
// An accepted socket's first message came before ESTABLISHED (the RTU is late or lost):
// tells the CM (rdma_notify COMM_EST), which would otherwise resend the REP and, out of
// retries, fail a connection that works.
void comm_established(Socket* s) noexcept;
// Destroys the QP, CQ, rings, pending requests, identifier and channel. Never blocks
// long: rdma_destroy_id waits only for events, and every event is acked when handled.
void teardown(Socket* s) noexcept;

// ---- data path (rsocket_io.cc) ----
// Every function here: Context: process context, s->mu held.
// Reads the CM events, polls the CQ, returns credits due. Never blocks.
void progress(Socket* s) noexcept;
// Posts every receive buffer of a new connection. 0 or an errno.
int post_all_recvs(Conn* c, ibv_qp* qp) noexcept;
// What poll(2) would report for the socket now (no progress made).
short poll_events(Socket* s) noexcept;
// The bodies of the send and receive calls: bytes or -1 with errno. They wait (dropping
// s->mu while asleep) unless O_NONBLOCK or MSG_DONTWAIT.
ssize_t do_send(Socket* s, Lock& lk, const iovec* iov, int iovcnt, int flags) noexcept;
ssize_t do_recv(Socket* s, Lock& lk, const iovec* iov, int iovcnt, int flags) noexcept;
// Sends the FIN (once), then waits up to kCloseTimeoutMs for every send to complete.
// May sleep.
void send_fin(Socket* s, Lock& lk) noexcept;
// A connection that can still carry data (accepting or connected, QP alive).
bool connection_open(const Socket* s) noexcept;

// ---- waiting (rsocket_poll.cc) ----
using ReadyFn = bool (*)(Socket*);
// Waits until ready(s), polling first and then asleep; timeout_ms < 0: forever. 0 when
// ready; ETIMEDOUT; EBADF when another thread closed the socket meanwhile (its resources
// are gone: touch nothing of it).
// Context: process context, may sleep; s->mu held on entry and on return, dropped while
// asleep and between polls.
int wait_for(Socket* s, Lock& lk, ReadyFn ready, int timeout_ms) noexcept;
// Wakes every thread asleep on the socket (writes its eventfd). Context: any thread.
void wake(Socket* s) noexcept;
// A non-blocking call found nothing to do: yields the CPU (transport lcores and the peer
// may share it with a program that polls in a loop), then -1 with errno EAGAIN.
// Context: any thread.
int would_block() noexcept;

inline bool nonblocking(const Socket* s, int flags) {
  return (s->fd_flags & O_NONBLOCK) || (flags & MSG_DONTWAIT);
}

}  // namespace dverbs::rdmacm::rsock
