/* dvcm: the connection manager's private C interface.
 *
 * lib/cm is the analogue of the kernel's ib_cm + rdma_cm + ucma: it owns each port's GSI QP
 * (QP1), speaks the InfiniBand CM (IBA chapter 12, Annex A11 "RDMA IP CM Service") on it,
 * keeps the identifiers, port spaces, listeners, timers and event queues. It is linked into
 * libibverbs.so.1 (next to the midlayer it is a client of) and exports this interface under
 * the private symbol version DVERBS_PRIVATE_CM. librdmacm.so.1 (lib/verbs/rdmacm) is its
 * only user: it turns struct rdma_cm_id / rdma_cm_event into these calls, as rdma-core's
 * librdmacm turns them into writes on /dev/infiniband/rdma_cm.
 *
 * Conventions: every int-returning call returns 0 or a positive errno. Addresses are
 * struct sockaddr (AF_INET or AF_INET6; IPv4-mapped IPv6 is treated as IPv4). Context: every
 * call may sleep (a mutex); none is made on a posting path. Events are produced by the CM
 * thread and consumed with dvcm_get_event; the channel's fd (the read end of a pipe, one
 * byte per queued event) is readable while events are queued.
 */
#ifndef DVERBS_CM_DVCM_H
#define DVERBS_CM_DVCM_H

#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dvcm_channel;
struct dvcm_id;

/* Port spaces (enum rdma_port_space). */
enum { DVCM_PS_IPOIB = 0x0002, DVCM_PS_IB = 0x013F, DVCM_PS_TCP = 0x0106, DVCM_PS_UDP = 0x0111 };

/* Event types: the values of enum rdma_cm_event_type. */
enum {
  DVCM_EVENT_ADDR_RESOLVED = 0,
  DVCM_EVENT_ADDR_ERROR = 1,
  DVCM_EVENT_ROUTE_RESOLVED = 2,
  DVCM_EVENT_ROUTE_ERROR = 3,
  DVCM_EVENT_CONNECT_REQUEST = 4,
  DVCM_EVENT_CONNECT_RESPONSE = 5,
  DVCM_EVENT_CONNECT_ERROR = 6,
  DVCM_EVENT_UNREACHABLE = 7,
  DVCM_EVENT_REJECTED = 8,
  DVCM_EVENT_ESTABLISHED = 9,
  DVCM_EVENT_DISCONNECTED = 10,
  DVCM_EVENT_DEVICE_REMOVAL = 11,
  DVCM_EVENT_MULTICAST_JOIN = 12,
  DVCM_EVENT_MULTICAST_ERROR = 13,
  DVCM_EVENT_ADDR_CHANGE = 14,
  DVCM_EVENT_TIMEWAIT_EXIT = 15,
};

#define DVCM_MAX_PRIVATE_DATA 256

/* What rdma_connect / rdma_accept pass (struct rdma_conn_param plus the QP's identity). */
struct dvcm_conn_param {
  const void *private_data;
  uint8_t private_data_len;
  uint8_t responder_resources;
  uint8_t initiator_depth;
  uint8_t flow_control;
  uint8_t retry_count;      /* ignored by accept */
  uint8_t rnr_retry_count;
  uint8_t srq;              /* the QP uses an SRQ */
  uint32_t qp_num;          /* the local QP (RC/UC), or the UD QP answering SIDR */
  uint32_t qp_type;         /* IBV_QPT_RC, IBV_QPT_UC or IBV_QPT_UD */
  uint32_t psn;             /* Starting PSN to advertise: where the local QP's receive
                               queue starts, i.e. the peer's first send (24 bits) */
  uint32_t qkey;            /* UD: the Q_Key SIDR_REP reports */
};

/* The path an identifier resolved (rdma_route): on which device and port, with which GIDs
 * (IPv4-mapped for IPv4 addresses) and MAC. */
struct dvcm_path {
  char dev_name[64];
  uint8_t port_num;
  uint8_t sgid_index;
  uint8_t sgid[16];
  uint8_t dgid[16];
  uint8_t dmac[6];
  uint8_t hop_limit;
  uint8_t traffic_class;
  uint32_t flow_label;
  uint8_t mtu;              /* IBV_MTU_* */
  uint16_t pkey;
};

/* The negotiated connection, for the QP transitions librdmacm makes (rdma_init_qp_attr). */
struct dvcm_qp_params {
  struct dvcm_path path;
  uint32_t dest_qp_num;
  uint32_t rq_psn;          /* the Starting PSN we advertised */
  uint32_t sq_psn;          /* the Starting PSN the peer advertised */
  uint8_t path_mtu;         /* IBV_MTU_* */
  uint8_t max_dest_rd_atomic;
  uint8_t max_rd_atomic;
  uint8_t timeout;          /* local ACK timeout exponent */
  uint8_t retry_cnt;
  uint8_t rnr_retry;
  uint8_t min_rnr_timer;
  uint32_t qkey;            /* UD */
};

struct dvcm_event {
  int type;                 /* DVCM_EVENT_* */
  int status;               /* 0, a negative errno, or (REJECTED) the IBA reject reason */
  struct dvcm_id *id;       /* CONNECT_REQUEST: a new identifier, owned by the caller now */
  struct dvcm_id *listen_id;
  uint8_t private_data[DVCM_MAX_PRIVATE_DATA];
  uint8_t private_data_len;
  /* CONNECT_REQUEST / CONNECT_RESPONSE / ESTABLISHED (the peer's parameters) */
  uint8_t responder_resources;
  uint8_t initiator_depth;
  uint8_t flow_control;
  uint8_t retry_count;
  uint8_t rnr_retry_count;
  uint8_t srq;
  uint32_t qp_num;          /* the peer's QP */
  /* UD (SIDR_REP, multicast join): where to send */
  uint32_t qkey;
  struct dvcm_path ud_path;
  void *user;               /* multicast: the context given to dvcm_join_multicast */
};

/* Channels. dvcm_channel_fd's descriptor is owned by the channel. */
int dvcm_channel_create(struct dvcm_channel **out);
int dvcm_channel_fd(const struct dvcm_channel *ch);
/* EBUSY while identifiers still use it. */
int dvcm_channel_destroy(struct dvcm_channel *ch);
/* Waits for and pops the oldest event: blocks unless the application made the channel's fd
 * O_NONBLOCK (then EAGAIN when none is queued); EINTR when a signal interrupts the wait. */
int dvcm_get_event(struct dvcm_channel *ch, struct dvcm_event *out);

/* Identifiers. qp_type is IBV_QPT_RC (PS_TCP, PS_IB), IBV_QPT_UD (PS_UDP, PS_IPOIB, PS_IB). */
int dvcm_create_id(struct dvcm_channel *ch, int ps, int qp_type, void *user,
                   struct dvcm_id **out);
/* Tears the identifier down (DREQ or REJ as the state requires); after return no event for
 * it is queued any more (queued ones are discarded). */
int dvcm_destroy_id(struct dvcm_id *id);
void dvcm_set_user(struct dvcm_id *id, void *user);
void *dvcm_get_user(const struct dvcm_id *id);
/* Moves the identifier to another channel (rdma_migrate_id). */
int dvcm_migrate_id(struct dvcm_id *id, struct dvcm_channel *ch);
/* RDMA_OPTION_ID_AFONLY / ID_REUSEADDR / ID_TOS. */
int dvcm_set_option(struct dvcm_id *id, int name, int value);

int dvcm_bind_addr(struct dvcm_id *id, const struct sockaddr *addr);
/* ADDR_RESOLVED or ADDR_ERROR follows (after at most timeout_ms). src may be NULL. */
int dvcm_resolve_addr(struct dvcm_id *id, const struct sockaddr *src,
                      const struct sockaddr *dst, int timeout_ms);
/* ROUTE_RESOLVED follows. */
int dvcm_resolve_route(struct dvcm_id *id, int timeout_ms);
int dvcm_listen(struct dvcm_id *id, int backlog);
int dvcm_connect(struct dvcm_id *id, const struct dvcm_conn_param *param);
int dvcm_accept(struct dvcm_id *id, const struct dvcm_conn_param *param);
int dvcm_reject(struct dvcm_id *id, const void *private_data, uint8_t len);
/* Marks a REQ as being processed (MRA) so the active side waits longer. */
int dvcm_notify(struct dvcm_id *id, int event);
int dvcm_disconnect(struct dvcm_id *id);
int dvcm_establish(struct dvcm_id *id);
int dvcm_join_multicast(struct dvcm_id *id, const struct sockaddr *addr, void *user);
int dvcm_leave_multicast(struct dvcm_id *id, const struct sockaddr *addr);

/* What the identifier is bound to and connected to. Any out pointer may be NULL. ENODEV
 * while it has no device (not bound to a device's address, not resolved). */
int dvcm_query(const struct dvcm_id *id, struct sockaddr_storage *src,
               struct sockaddr_storage *dst, struct dvcm_path *path);
/* The parameters for the QP of a connected identifier (after REQ/REP). */
int dvcm_get_qp_params(const struct dvcm_id *id, struct dvcm_qp_params *out);

#ifdef __cplusplus
}
#endif

#endif /* DVERBS_CM_DVCM_H */
