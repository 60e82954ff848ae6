// The dverbsd wire contract: fixed-layout commands on a SOCK_SEQPACKET Unix socket (the
// slow path, uverbs' write() commands) and the shared-memory layouts of the rings (the
// fast path, uverbs' mmap'ed queues). Shared by the daemon (lib/daemon) and the drop-in's
// remote driver (lib/pmd/remote). It lives in lib/uapi, a header-only library both depend
// on (uapi_dep) as the kernel and rdma-core share include/uapi/rdma/: neither side sees the
// other's headers. Change the layout only with kVersion.
//
// Slow path: every request is one datagram of exactly sizeof(Request) bytes, answered by
// one datagram of exactly sizeof(Response) bytes carrying `seq` back; file descriptors
// travel as SCM_RIGHTS ancillary data (memfds of rings and of registered memory, the
// connection's eventfd). `status` is 0 or a positive errno. A datagram of another size, an
// unknown command, or a bad magic is answered with EINVAL; the connection stays open.
//
// Fast path (no system call): the client writes WQEs into the SQ/RQ/SRQ rings of a memfd
// it shares with the daemon and then publishes `prod` (release); the daemon's doorbell
// thread copies each WQE out of shared memory before it looks at any field, validates the
// copy, and posts it to the soft HCA. The daemon writes completions into the CQ ring and
// publishes its `prod`; the client polls them and publishes `cons`. Completion and async
// events go into the connection's event ring and the client's eventfd is signalled.
//
// Trust: the daemon treats every byte a client controls — datagrams, fds, ring indices,
// WQEs — as hostile. Ring indices are free-running uint32_t; `prod - cons` above the ring
// size means a corrupt ring and the daemon ignores the rest of that ring for the pass.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dverbs/types.h"

namespace dverbs::daemon {

constexpr uint32_t kMagic = 0x31425644;  // "DVB1"
constexpr uint32_t kVersion = 3;  // 3: attach_mcast/detach_mcast; 2: no create_ah/destroy_ah
constexpr const char* kDefaultDir = "/run/dverbs";
// Socket of device N: DIR/uverbsN (the analogue of /dev/infiniband/uverbsN).
constexpr const char* kSocketPrefix = "uverbs";

enum class Cmd : uint32_t {
  hello = 1,   // → Hello reply + fd: the connection's eventfd, fd: event-ring memfd
  query_device,
  query_port,
  query_gid,
  alloc_pd,
  dealloc_pd,
  reg_mr,      // fds: one memfd per piece (see RegMr)
  dereg_mr,
  create_cq,   // → fd: the CQ ring memfd
  destroy_cq,
  create_qp,   // → fd: the QP ring memfd (SQ then RQ)
  modify_qp,
  query_qp,
  destroy_qp,
  create_srq,  // → fd: the SRQ ring memfd
  modify_srq,
  destroy_srq,
  alloc_mw,
  dealloc_mw,
  stats,       // daemon-wide resource counters (tests, dverbsd --stat)
  attach_mcast,  // handle = QP, mcast.gid (ibv_attach_mcast)
  detach_mcast,
  rereg_mr,      // handle = MR; fds: one memfd per piece with a new translation (RegMr)
  create_flow,   // handle = raw packet QP, flow.rule → flow.id (ibv_create_flow)
  destroy_flow,  // handle = the QP, flow.id
  // XRC (ibv_open_xrcd): fd (optional, open_xrcd.has_fd): the file whose domain to open;
  // the daemon keys the domain by that file's device and inode (fstat of the fd it got).
  open_xrcd,
  close_xrcd,   // handle = the domain
  open_xrc_qp,  // open_xrc_qp: → a QP handle on the domain's XRC_RECV QP (no rings)
  resize_cq,    // handle = CQ → fd: the new CQ ring memfd (CqRingHeader: resizing)
};

// Handles are opaque per-connection values: generation << 20 | index. 0 is never valid.
using Handle = uint32_t;

constexpr uint32_t kMaxPieces = 32;  // memfd pieces of one registration

// Address handles never cross the socket (there is no AH command): ibv_create_ah and
// ibv_destroy_ah may be called where nothing may sleep (core_locking.rst), so the client keeps its AHs itself and a UD WQE carries the
// AH's id, PD and address vector. The daemon's doorbell creates the HCA's AH on the first
// WQE with a new id and caches it in the id's slot. Id = generation << 12 | slot.
constexpr uint32_t kAhSlots = 4096;

struct MrPiece {
  uint64_t offset;  // offset into the piece's memfd
  uint64_t length;  // bytes, a multiple of the page size
};

struct Request {
  // All bytes zero (the union holds types with default member initialisers, so neither
  // struct would be default-constructible otherwise).
  Request() noexcept { std::memset(static_cast<void*>(this), 0, sizeof *this); }
  uint32_t magic;
  Cmd cmd;
  uint32_t seq;
  Handle handle;  // the object the command acts on (dealloc/destroy/modify/query), or 0
  union {
    struct {
      uint32_t version;
    } hello;
    struct {
      uint8_t port_num;
      int32_t index;
    } port;
    struct {
      Handle pd;
      uint32_t access;
      uint64_t iova;        // the client's address of the first byte (ibv_reg_mr's addr)
      uint64_t length;
      uint64_t page_start;  // iova rounded down to a page
      uint32_t npieces;     // pieces cover [page_start, page_start + sum of lengths), in order
      MrPiece pieces[kMaxPieces];
    } reg_mr;
    struct {
      uint32_t cqe;
    } create_cq;
    struct {
      Handle pd, send_cq, recv_cq, srq;  // srq 0 = none
      QpType qp_type;
      QpCap cap;
      uint8_t sq_sig_all;
      Handle xrcd;  // XRC_RECV: the domain (pd, send_cq, recv_cq 0); XRC_SEND: recv_cq 0
    } create_qp;
    struct {
      QpAttr attr;
      uint32_t attr_mask;
    } modify_qp;
    struct {
      uint32_t attr_mask;
    } query_qp;
    struct {
      Handle pd;
      uint32_t max_wr, max_sge, srq_limit;
      Handle xrcd, cq;  // an XRC SRQ: its domain and CQ (0: a basic SRQ)
    } create_srq;
    struct {
      uint32_t max_wr, srq_limit, mask;
    } modify_srq;
    struct {
      Handle pd;
      uint32_t type;
    } alloc_mw;
    struct {
      Gid gid;
    } mcast;
    // ibv_rereg_mr: `flags` (mid::rereg) says which of pd, access and the translation
    // (laid out as in reg_mr) apply. → Response.mr (the keys, unchanged).
    struct {
      uint32_t flags;
      Handle pd;
      uint32_t access;
      uint64_t iova, length, page_start;
      uint32_t npieces;
      MrPiece pieces[kMaxPieces];
    } rereg_mr;
    struct {
      int32_t oflags;  // O_CREAT, O_EXCL
      uint8_t has_fd;  // 1: one fd attached; 0: a private domain
    } open_xrcd;
    struct {
      Handle xrcd;
      uint32_t qp_num;
    } open_xrc_qp;
    struct {
      FlowRule rule;
      uint32_t id;
    } flow;
    struct {
      uint32_t cqe;
    } resize_cq;
    uint8_t raw[640];
  };
};

struct Stats {
  uint64_t clients;  // connections other than the one asking
  uint64_t pds, mrs, cqs, qps, srqs, ahs, mws;
  uint64_t pinned_bytes;   // sum over clients
  uint64_t bad_commands;   // malformed datagrams, bad handles, refused fds
  uint64_t bad_wqes;       // WQEs refused by validation (completed with an error status)
  uint64_t corrupt_rings;  // passes skipped because a client's ring indices were impossible
  uint64_t wqes_posted, cqes_delivered, events_delivered, events_dropped;
  uint64_t refused_conns;  // connections refused by --max-conns
};

// A Response with seq 0 answers no request: it is the daemon refusing the connection
// before reading anything (status EMFILE: the uid has --max-conns connections already);
// the daemon closes the socket after it.
struct Response {
  Response() noexcept { std::memset(static_cast<void*>(this), 0, sizeof *this); }  // all zero
  uint32_t seq;
  int32_t status;  // 0 or a positive errno
  Handle handle;   // the object created
  uint32_t nfds;   // fds attached
  union {
    struct {
      uint32_t version;
      char device_name[32];
      uint64_t node_guid;      // host order
      uint32_t event_ring_entries;
      uint32_t event_ring_bytes;  // size of the event-ring memfd
    } hello;
    DeviceAttr device;
    PortAttr port;
    Gid gid;
    struct {
      uint32_t lkey, rkey;
    } mr;
    struct {
      uint32_t cqe;            // granted (what the client reports as ibv_cq::cqe)
      uint32_t ring_entries;   // power of two
      uint64_t ring_bytes;
    } cq;
    struct {
      uint32_t qp_num;
      QpCap cap;               // granted
      uint32_t sq_entries, rq_entries;  // powers of two (rq_entries 0 with an SRQ)
      uint64_t sq_offset, rq_offset, ring_bytes;
    } qp;
    struct {
      QpAttr attr;
      QpCap cap;
      QpType qp_type;
      uint8_t sq_sig_all;
    } query_qp;
    struct {
      uint32_t max_wr, max_sge, srq_limit;
      uint32_t ring_entries;
      uint64_t ring_bytes;
      uint32_t srq_num;  // an XRC SRQ's number
    } srq;
    struct {
      uint32_t rkey;
    } mw;
    Stats stats;
    struct {
      uint32_t id;
    } flow;
    struct {
      uint32_t cqe;           // granted
      uint32_t ring_entries;  // power of two
      uint64_t ring_bytes;
      uint32_t old_prod;      // the old ring's final `prod`
    } resize_cq;
    uint8_t raw[640];
  };
};

// ---- shared memory ----

// Ring indices: the producer's and the consumer's on separate cache lines.
struct alignas(64) RingIndex {
  std::atomic<uint32_t> v{0};
};

// A work ring (SQ, RQ, SRQ): client produces, daemon consumes. `cons` counts the WQEs
// that no longer occupy the queue: read by the daemon and retired by its HCA (completed,
// or taken from an SRQ), so that the granted cap is exact: the client posts while
// prod - cons < cap, and its slots up to `cons` are free. Header first, entries after it.
struct WorkRingHeader {
  RingIndex prod;  // written by the client
  RingIndex cons;  // written by the daemon
};

// Send WQE as the client writes it. Objects are named by handles, never pointers.
struct ShmSendWqe {
  uint64_t wr_id;
  WrOpcode opcode;
  uint32_t send_flags;
  uint32_t imm_data;    // network order, or the rkey to invalidate
  uint32_t num_sge;     // gather list (not inline)
  uint32_t inline_len;  // IBV_SEND_INLINE: bytes in inline_data
  uint32_t rkey;
  uint64_t remote_addr;
  uint64_t compare_add, swap;  // atomics; FLUSH: its length, type | level << 8
  uint32_t ah_id;       // UD: the client's AH (kAhSlots)
  uint32_t remote_qpn, remote_qkey;
  Handle mw, bind_mr;   // bind_mw
  uint32_t bind_rkey;
  uint64_t bind_addr, bind_length;
  uint32_t bind_access;
  Handle ah_pd;         // UD: the PD of the AH
  AhAttr ah_attr;       // UD: its address vector
  union {
    Sge sge[16];
    uint8_t inline_data[256];
  };
  uint32_t xrc_srqn;    // XRC_SEND: the remote XRC SRQ
};

struct ShmRecvWqe {
  uint64_t wr_id;
  uint32_t num_sge;
  uint32_t pad;
  Sge sge[16];
};

// A completion ring: daemon produces, client consumes. It holds exactly the granted cqe
// completions: one that finds it full is an overrun (CQ_ERR), never held back.
// Notification: the client writes `arm_flags` (1 = solicited only, 2 = next completion)
// and `arm_cons` (its `cons` when it armed), then increments `arm_seq` (release). The
// daemon applies each new arm_seq; an arm applied while completions the client had not
// polled at arm time are in the ring, or arrive before it applied it, raises the event at
// once (an extra event is allowed by the verbs; a lost one is not).
//
// Resizing (Cmd::resize_cq): the daemon stops writing the old ring (its `prod` is final,
// returned as old_prod), moves the completions its HCA holds into a new ring from old_prod
// on, and answers with it, `attached` 0: it writes nothing more until the client attached.
// The client, under its CQ lock, copies its unpolled [cons, old_prod) of the old ring to
// the same indices of the new one, carries its arm fields over, sets `cons`, then
// `attached` = 1 (release). Nothing is lost, duplicated or reordered.
struct CqRingHeader {
  RingIndex prod;  // daemon
  RingIndex cons;  // client
  alignas(64) std::atomic<uint32_t> arm_seq{0};
  std::atomic<uint32_t> arm_flags{0};
  std::atomic<uint32_t> arm_cons{0};
  std::atomic<uint32_t> overflow{0};  // set by the daemon when the CQ overflowed
  std::atomic<uint32_t> attached{1};  // 0 in a ring of resize_cq until the client took it
};

// A completion as the daemon writes it into a CQ ring: the work completion, then
// (appended) the device clock when the HCA made it (DeviceAttr::core_clock_khz ticks; the
// TSC, which the daemon and its clients on one host share).
struct ShmCqe {
  Wc wc;
  uint64_t completion_ts;
};

// The connection's event ring: daemon produces (completion and async events), client
// consumes after reading its eventfd.
enum class EventKind : uint32_t { comp = 1, async = 2 };
struct ShmEvent {
  EventKind kind;
  EventType type;   // async only
  Handle object;    // the CQ (comp), or the CQ/QP/SRQ of an async event; 0 for device/port
  uint32_t port_num;
};
struct EventRingHeader {
  RingIndex prod;  // daemon
  RingIndex cons;  // client
};

constexpr uint64_t kRingHeaderBytes = 256;  // entries start here in every ring memfd

static_assert(sizeof(WorkRingHeader) <= kRingHeaderBytes);
static_assert(sizeof(CqRingHeader) <= kRingHeaderBytes);
static_assert(sizeof(EventRingHeader) <= kRingHeaderBytes);
static_assert(std::is_trivially_copyable_v<Request> && std::is_trivially_copyable_v<Response>);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

}  // namespace dverbs::daemon
