// Symbols the installed libibverbs.so.1 exports that dverbs implements only as failing
// stubs, so that every binary and provider linked against rdma-core 44 loads and binds
// (Debian's perftest links libmlx5/libefa, which are BIND_NOW and import the private
// IBVERBS_PRIVATE_34 interface).
//
// - IBVERBS_1.0 compatibility versions (ibv_*@IBVERBS_1.0) and ibv_register_driver@1.1:
//   the pre-2006 libibverbs ABI with different struct layouts. No binary built since uses
//   them; they fail with ENOSYS instead of misreading structures.
// - IBVERBS_PRIVATE_34: the provider interface (ibv_cmd_*, verbs_*). dverbs loads no
//   provider: registration is ignored and the kernel-command helpers fail with EOPNOTSUPP.
//   Providers only call them from their own device-open path, which never runs because
//   their devices are never matched.
#include <cerrno>
#include <cstdint>

#define DV_COMPAT_1_0(name) __attribute__((symver(#name "@IBVERBS_1.0"), used))

extern "C" {

// ---------------------------------------------------------------- IBVERBS_1.0

DV_COMPAT_1_0(ibv_alloc_pd) void* dv_compat_ibv_alloc_pd_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_create_ah) void* dv_compat_ibv_create_ah_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_create_cq) void* dv_compat_ibv_create_cq_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_create_qp) void* dv_compat_ibv_create_qp_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_create_srq) void* dv_compat_ibv_create_srq_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_get_device_list) void* dv_compat_ibv_get_device_list_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_get_device_name) void* dv_compat_ibv_get_device_name_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_open_device) void* dv_compat_ibv_open_device_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_reg_mr) void* dv_compat_ibv_reg_mr_1_0(...) {
  errno = ENOSYS;
  return nullptr;
}
DV_COMPAT_1_0(ibv_ack_async_event) void dv_compat_ibv_ack_async_event_1_0(...) {}
DV_COMPAT_1_0(ibv_ack_cq_events) void dv_compat_ibv_ack_cq_events_1_0(...) {}
DV_COMPAT_1_0(ibv_free_device_list) void dv_compat_ibv_free_device_list_1_0(...) {}
DV_COMPAT_1_0(ibv_close_device) int dv_compat_ibv_close_device_1_0(...) {
  errno = ENOSYS;
  return -1;
}
DV_COMPAT_1_0(ibv_get_async_event) int dv_compat_ibv_get_async_event_1_0(...) {
  errno = ENOSYS;
  return -1;
}
DV_COMPAT_1_0(ibv_get_cq_event) int dv_compat_ibv_get_cq_event_1_0(...) {
  errno = ENOSYS;
  return -1;
}
DV_COMPAT_1_0(ibv_query_gid) int dv_compat_ibv_query_gid_1_0(...) {
  errno = ENOSYS;
  return -1;
}
DV_COMPAT_1_0(ibv_query_pkey) int dv_compat_ibv_query_pkey_1_0(...) {
  errno = ENOSYS;
  return -1;
}
DV_COMPAT_1_0(ibv_attach_mcast) int dv_compat_ibv_attach_mcast_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_dealloc_pd) int dv_compat_ibv_dealloc_pd_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_dereg_mr) int dv_compat_ibv_dereg_mr_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_destroy_ah) int dv_compat_ibv_destroy_ah_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_destroy_cq) int dv_compat_ibv_destroy_cq_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_destroy_qp) int dv_compat_ibv_destroy_qp_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_destroy_srq) int dv_compat_ibv_destroy_srq_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_detach_mcast) int dv_compat_ibv_detach_mcast_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_modify_qp) int dv_compat_ibv_modify_qp_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_modify_srq) int dv_compat_ibv_modify_srq_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_query_device) int dv_compat_ibv_query_device_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_query_port) int dv_compat_ibv_query_port_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_query_qp) int dv_compat_ibv_query_qp_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_query_srq) int dv_compat_ibv_query_srq_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_resize_cq) int dv_compat_ibv_resize_cq_1_0(...) {
  return ENOSYS;
}
DV_COMPAT_1_0(ibv_get_device_guid) uint64_t dv_compat_ibv_get_device_guid_1_0(...) {
  errno = ENOSYS;
  return 0;
}

// Old-style provider registration (libibverbs 1.1): nothing to register with.
__attribute__((symver("ibv_register_driver@IBVERBS_1.1"), used)) void dv_compat_ibv_register_driver(
    ...) {}

// ---------------------------------------------------------------- IBVERBS_PRIVATE_34
bool verbs_allow_disassociate_destroy = false;

void verbs_register_driver_34(...) {}
void verbs_set_ops(...) {}
void verbs_init_cq(...) {}
void verbs_uninit_context(...) {}
void __verbs_log(...) {}
void* _verbs_init_and_alloc_context(...) {
  errno = EOPNOTSUPP;
  return nullptr;
}
void* verbs_open_device(...) {
  errno = EOPNOTSUPP;
  return nullptr;
}
unsigned int __ioctl_final_num_attrs(unsigned int num_attrs, ...) {
  return num_attrs;
}
int ibv_read_ibdev_sysfs_file(...) {
  errno = EOPNOTSUPP;
  return -1;
}

int ibv_cmd_advise_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_alloc_dm(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_alloc_mw(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_alloc_pd(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_attach_mcast(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_close_xrcd(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_ah(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_counters(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_cq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_cq_ex(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_flow(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_flow_action_esp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_qp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_qp_ex(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_qp_ex2(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_rwq_ind_table(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_srq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_srq_ex(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_create_wq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_dealloc_mw(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_dealloc_pd(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_dereg_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_ah(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_counters(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_cq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_flow(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_flow_action(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_qp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_rwq_ind_table(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_srq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_destroy_wq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_detach_mcast(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_free_dm(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_get_context(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_cq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_flow_action_esp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_qp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_qp_ex(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_srq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_modify_wq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_open_qp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_open_xrcd(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_poll_cq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_post_recv(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_post_send(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_post_srq_recv(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_context(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_device_any(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_port(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_qp(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_query_srq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_read_counters(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_reg_dm_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_reg_dmabuf_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_reg_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_req_notify_cq(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_rereg_mr(...) {
  return EOPNOTSUPP;
}
int ibv_cmd_resize_cq(...) {
  return EOPNOTSUPP;
}
int execute_ioctl(...) {
  return EOPNOTSUPP;
}

}  // extern "C"
