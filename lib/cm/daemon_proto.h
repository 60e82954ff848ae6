// The connection manager through dverbsd: the contract between a client's lib/cm (its
// dvcm_* calls, lib/cm/remote.cc) and the daemon's CM (lib/daemon/cm_session.cc), the
// analogue of the kernel's ucma and /dev/infiniband/rdma_cm. It belongs to lib/cm, which
// both sides link (the daemon runs the CM; a client forwards to it).
//
// In daemon mode the daemon owns each port's QP1 and every identifier's protocol state; a
// client's identifiers and channels are the daemon's, named by opaque handles (the
// daemon's values, checked against what that connection created or was given). One
// SOCK_SEQPACKET socket per client process, DIR/rdma_cm; every request is one datagram of
// exactly sizeof(CmRequest), answered by one of exactly sizeof(CmResponse) carrying `seq`
// back. channel_create's answer carries the channel's pipe (the read end: one byte per
// queued event) as SCM_RIGHTS: the client waits on it exactly as on an embedded channel,
// then asks for the event with get_event. When the connection closes (the client exits or
// is killed), the daemon destroys its identifiers, which sends the DREQs and REJs they owe:
// the peers see DISCONNECTED or REJECTED.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <cstring>

#include "cm/dvcm.h"

namespace dverbs::cm {

constexpr uint32_t kCmMagic = 0x4d435644;  // "DVCM"
constexpr const char* kCmSocket = "rdma_cm";

enum class CmOp : uint32_t {
  channel_create = 1,  // → handle, fd
  channel_destroy,     // channel
  get_event,           // channel → event (EAGAIN: none queued)
  create_id,           // channel, a = port space, b = QP type → handle
  destroy_id,          // id
  migrate_id,          // id, channel
  set_option,          // id, a = name, b = value
  bind_addr,           // id, addr
  resolve_addr,        // id, addr (src, family 0: none), addr2 (dst), a = timeout ms
  resolve_route,       // id, a = timeout ms
  listen,              // id, a = backlog
  connect,             // id, param
  accept,              // id, param
  reject,              // id, private data
  notify,              // id, a = event
  disconnect,          // id
  establish,           // id
  join_multicast,      // id, addr, user
  leave_multicast,     // id, addr
  query,               // id → src, dst, path
  get_qp_params,       // id → qp
};

// dvcm_conn_param without its pointer: the private data travels in CmRequest::data.
struct CmConnParam {
  uint8_t responder_resources, initiator_depth, flow_control, retry_count, rnr_retry_count,
      srq;
  uint32_t qp_num, qp_type, psn, qkey;
};

struct CmRequest {
  CmRequest() noexcept { std::memset(static_cast<void*>(this), 0, sizeof *this); }
  uint32_t magic;
  CmOp op;
  uint32_t seq;
  uint64_t channel;  // handles
  uint64_t id;
  int32_t a, b;
  uint64_t user;     // join_multicast: returned in the event, never dereferenced
  sockaddr_storage addr, addr2;
  CmConnParam param;
  uint8_t data_len;
  uint8_t data[DVCM_MAX_PRIVATE_DATA];
};

struct CmResponse {
  CmResponse() noexcept { std::memset(static_cast<void*>(this), 0, sizeof *this); }
  uint32_t magic;
  uint32_t seq;
  int32_t status;    // 0 or a positive errno
  uint64_t handle;   // channel_create, create_id
  // get_event: the event, with id and listen_id as handles (id is new for CONNECT_REQUEST)
  dvcm_event event;
  uint64_t event_id, event_listen_id, event_user;
  sockaddr_storage src, dst;  // query
  dvcm_path path;             // query
  dvcm_qp_params qp;          // get_qp_params
};

}  // namespace dverbs::cm
