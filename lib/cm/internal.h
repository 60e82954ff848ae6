// The connection manager's state, shared by its files (cm.cc: identifiers and the protocol;
// gsi.cc: each port's GSI QP and the CM thread).
//
// Locking: one mutex, Cm::mu, guards everything here: identifiers, channels' event
// queues, the port table and the GSI send slots. The CM thread takes it for each received
// MAD and each timer round; dvcm_* calls take it for their whole body. It is never taken by
// the transport (the engines see the GSI QP as any UD QP), so a posting path never waits
// for it. Nothing here runs on a posting path.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cm/dvcm.h"
#include "cm/mad.h"
#include "midlayer/core.h"

// An event queue and its readiness: one byte in a pipe per queued event. The consumer
// owns the read end's flags (O_NONBLOCK, as on rdma-core's channel fd); the CM takes back
// the byte of an event it discards through a second, non-blocking open of the same pipe,
// so it never blocks on the consumer's file description. Invariant, under Cm::mu: bytes
// in the pipe + bytes read by a consumer that has not popped yet + owed == queue.size().
struct dvcm_channel {
  int fd = -1;                      // read end, the consumer's
  int wfd = -1;                     // write end, non-blocking
  int drain_fd = -1;                // the read end opened again, non-blocking
  uint32_t owed = 0;                // bytes a full pipe did not take
  int readers = 0;                  // threads inside dvcm_get_event's wait
  bool dead = false;                // destroyed while a thread waited: left to it
  std::deque<dvcm_event> queue;
  int ids = 0;                      // identifiers using it (destroy → EBUSY)
};

namespace dverbs::cm {

using Clock = std::chrono::steady_clock;

// The GSI QP of one port and what the CM sends with it.
struct Port {
  mid::Device* dev = nullptr;
  char name[64] = {};
  uint32_t ip = 0;                  // host byte order
  uint8_t gid[16] = {};             // GID index 0: the IPv4-mapped address
  uint64_t guid = 0;                // node GUID, network order as a number
  uint8_t mtu = 3;                  // IBV_MTU_* of the port
  mid::Pd* pd = nullptr;
  mid::Cq* cq = nullptr;
  mid::Qp* qp = nullptr;
  mid::Mr* mr = nullptr;
  uint8_t* buf = nullptr;           // recv slots then send slots
  std::vector<uint16_t> free_send;  // send slots not in flight
  std::map<uint32_t, mid::Ah*> ahs; // destination IPv4 → AH (kept for the port's life)
  uint64_t next_tid = 1;
  uint64_t dropped = 0;             // MADs received and dropped (malformed, unmatched)
  uint64_t send_failed = 0;         // MADs that could not be posted (the timers resend)
};

constexpr uint32_t kRecvSlots = 64, kSendSlots = 64;
constexpr uint32_t kRecvSlotSize = 40 + kMadSize;  // GRH + MAD
constexpr uint32_t kGsiBufSize = kRecvSlots * kRecvSlotSize + kSendSlots * kMadSize;

// Identifier states: the union of rdma_cm's (address, route, listen) and ib_cm's (the
// connection protocol, IBA 12.9.6 figure 97) that an identifier goes through.
enum class St : uint8_t {
  idle,            // created, maybe bound
  addr_query,      // rdma_resolve_addr: waiting for ARP
  addr_resolved,
  route_resolved,
  listen,
  req_sent,        // active: REQ out, waiting for REP (or MRA, REJ)
  mra_rcvd,        // active: the peer asked for more time
  rep_rcvd,        // active: REP in, the consumer moves its QP, then RTU (dvcm_establish)
  req_rcvd,        // passive: CONNECT_REQUEST queued, waiting for accept/reject
  rep_sent,        // passive: REP out, waiting for RTU
  established,
  dreq_sent,
  dreq_rcvd,       // DISCONNECTED queued; the consumer's disconnect sends DREP
  timewait,        // disconnected; answers late DREQs with DREP until it ends
  sidr_req_sent,   // UD active: SIDR_REQ out, waiting for SIDR_REP
  sidr_req_rcvd,   // UD passive: CONNECT_REQUEST queued
  dead,            // device removed, rejected, unreachable: only destroy is left
};
const char* name(St s);

struct Id;

struct Cm {
  std::mutex mu;
  std::condition_variable wake;     // the CM thread's sleep; notified by GSI completions
  std::vector<Port*> ports;
  std::vector<Id*> ids;
  std::unordered_map<uint32_t, Id*> by_comm;  // local comm id (or SIDR request id) → id
  uint32_t next_comm = 0;
  std::thread thread;
  bool stop = false;
  bool started = false;
  bool no_gsi = false;              // a device could not give the CM a GSI QP (dverbsd)
  mid::Client client{};
};

Cm& cm();

struct Id {
  dvcm_channel* ch = nullptr;
  void* user = nullptr;
  int ps = 0;
  int qp_type = 2;                  // IBV_QPT_RC
  St st = St::idle;
  sockaddr_storage src{}, dst{};
  bool bound = false;               // src holds the bound address and port
  bool afonly = false, reuseaddr = false;
  uint8_t tos = 0;
  uint8_t ack_timeout = 0;          // RDMA_OPTION_ID_ACK_TIMEOUT, 0 = default
  Port* port = nullptr;             // once bound to a device address or resolved
  int backlog = 0;
  Id* listener = nullptr;           // a passive connection's listener (until accepted)
  Clock::time_point deadline{};     // address resolution
  // The connection (ib_cm's cm_id). Comm ids are in host order.
  uint32_t local_comm_id = 0, remote_comm_id = 0;
  uint64_t remote_guid = 0;
  uint8_t remote_gid[16] = {};
  uint32_t local_qpn = 0, remote_qpn = 0, local_psn = 0, remote_psn = 0;
  uint8_t resp_res = 0, init_depth = 0, retry = 7, rnr_retry = 7, flow_control = 0, srq = 0;
  uint8_t mtu = 3, local_ack_timeout = 0, peer_cm_timeout = 18, peer_max_retries = 15;
  uint32_t qkey = 0;                // UD: SIDR_REP's
  uint64_t tid = 0;                 // the transaction the connection's MADs carry
  // Retransmission: the last MAD sent that expects an answer.
  uint8_t last[kMadSize] = {};
  bool timer_on = false;
  int retries_left = 0;
  Clock::duration interval{};
  Clock::time_point timer{};
  uint8_t last_reply[kMadSize] = {};  // the answer to resend on a duplicate (REP, RTU, DREP)
  bool has_reply = false;
  std::vector<uint32_t> groups;     // multicast groups joined (IPv4, host order)
};

// gsi.cc
int port_open(mid::Device* dev, Port** out);
void port_close(Port* p);
// Copies the MAD into a send slot and posts it to QP1 at `ip`. Context: Cm::mu held.
bool send_mad(Port* p, uint32_t ip, const uint8_t mad[kMadSize]);
void start_thread_locked();
// cm.cc: one received MAD from `src_ip` (host order); one timer round. Cm::mu held.
void handle_mad(Port* p, uint32_t src_ip, const uint8_t* mad, size_t len);
// Runs the timers that are due and the address queries; returns when the CM thread must
// run them next (`now` + 1 ms while an address query polls the neighbour table).
Clock::time_point run_timers(Clock::time_point now);
void port_removed(Port* p);

}  // namespace dverbs::cm

// The CM of this process (cm.cc), which dvcm_* (api.cc) call unless the process is a
// dverbsd client; the daemon calls them for its clients (lib/daemon/cm_session.cc).
extern "C" {
// Starts the CM (its thread, its midlayer client: QP1 of every port) if not yet running.
void dvcm_local_start();
int dvcm_local_channel_create(dvcm_channel** out);
int dvcm_local_channel_fd(const dvcm_channel* ch);
int dvcm_local_channel_destroy(dvcm_channel* ch);
int dvcm_local_get_event(dvcm_channel* ch, dvcm_event* out);
// Pops without waiting on the pipe (the daemon's client took the byte): EAGAIN when empty.
int dvcm_local_pop_event(dvcm_channel* ch, dvcm_event* out);
int dvcm_local_create_id(dvcm_channel* ch, int ps, int qp_type, void* user, dvcm_id** out);
int dvcm_local_destroy_id(dvcm_id* id);
void dvcm_local_set_user(dvcm_id* id, void* user);
void* dvcm_local_get_user(const dvcm_id* id);
int dvcm_local_migrate_id(dvcm_id* id, dvcm_channel* ch);
int dvcm_local_set_option(dvcm_id* id, int name, int value);
int dvcm_local_bind_addr(dvcm_id* id, const sockaddr* addr);
int dvcm_local_resolve_addr(dvcm_id* id, const sockaddr* src, const sockaddr* dst,
                            int timeout_ms);
int dvcm_local_resolve_route(dvcm_id* id, int timeout_ms);
int dvcm_local_listen(dvcm_id* id, int backlog);
int dvcm_local_connect(dvcm_id* id, const dvcm_conn_param* param);
int dvcm_local_accept(dvcm_id* id, const dvcm_conn_param* param);
int dvcm_local_reject(dvcm_id* id, const void* private_data, uint8_t len);
int dvcm_local_notify(dvcm_id* id, int event);
int dvcm_local_disconnect(dvcm_id* id);
int dvcm_local_establish(dvcm_id* id);
int dvcm_local_join_multicast(dvcm_id* id, const sockaddr* addr, void* user);
int dvcm_local_leave_multicast(dvcm_id* id, const sockaddr* addr);
int dvcm_local_query(const dvcm_id* id, sockaddr_storage* src, sockaddr_storage* dst,
                     dvcm_path* path);
int dvcm_local_get_qp_params(const dvcm_id* id, dvcm_qp_params* out);
}

namespace dverbs::cm {
// remote.cc: non-null when this process is a dverbsd client whose daemon serves the CM
// (decided once, at the first dvcm_* call). Its methods mirror dvcm_*.
class Remote;
Remote* remote();
}  // namespace dverbs::cm
