// Devices: every dverbs device opened once per process at first use (rdma-core's
// ucma_init + ucma_init_device), the default PD per device, rdma_get_devices and
// rdma_free_devices.
//
// rdma-core refcounts its cma_device and releases the PD when the last identifier lets
// go; here contexts and PDs live for the process, which is what an application sees
// anyway (rdma_get_devices keeps returning the same ibv_context pointers).
#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

namespace {

struct Devices {
  std::mutex mu;
  bool opened = false;  // under mu
  int rc = 0;           // under mu: the result of the first open
  Device* list = nullptr;
  int count = 0;
};

Devices& devices() {
  static auto* d = new Devices();  // never destroyed: contexts outlive main()
  return *d;
}

int open_all(Devices& d) {
  int n = 0;
  ibv_device** l = ibv_get_device_list(&n);
  if (!l) return errno ? errno : ENODEV;
  if (n <= 0) {
    ibv_free_device_list(l);
    return ENODEV;
  }
  d.list = new (std::nothrow) Device[n];
  if (!d.list) {
    ibv_free_device_list(l);
    return ENOMEM;
  }
  for (int i = 0; i < n; ++i) {
    ibv_context* c = ibv_open_device(l[i]);
    if (!c) continue;  // rdma-core marks it dead and goes on
    ibv_device_attr a{};
    if (ibv_query_device(c, &a) != 0) {
      ibv_close_device(c);
      continue;
    }
    Device& dv = d.list[d.count++];
    dv.verbs = c;
    dv.max_qp_wr = a.max_qp_wr;
    dv.max_initiator_depth = uint8_t(a.max_qp_init_rd_atom > 255 ? 255 : a.max_qp_init_rd_atom);
    dv.max_responder_resources = uint8_t(a.max_qp_rd_atom > 255 ? 255 : a.max_qp_rd_atom);
    const char* name = ibv_get_device_name(l[i]);
    std::snprintf(dv.name, sizeof dv.name, "%s", name ? name : "");
  }
  ibv_free_device_list(l);
  return d.count ? 0 : ENODEV;
}

}  // namespace

int init_devices() noexcept {
  Devices& d = devices();
  std::lock_guard<std::mutex> g(d.mu);
  if (!d.opened) {
    d.rc = open_all(d);
    d.opened = true;
  }
  return d.rc;
}

Device* attach_device(const char* name) noexcept {
  if (int rc = init_devices()) return fail(rc, static_cast<Device*>(nullptr));
  Devices& d = devices();
  std::lock_guard<std::mutex> g(d.mu);
  for (int i = 0; i < d.count; ++i) {
    Device& dv = d.list[i];
    if (std::strcmp(dv.name, name) != 0) continue;
    if (!dv.pd) dv.pd = ibv_alloc_pd(dv.verbs);
    if (!dv.pd) return fail(errno ? errno : ENOMEM, static_cast<Device*>(nullptr));
    return &dv;
  }
  return fail(ENODEV, static_cast<Device*>(nullptr));
}

ibv_xrcd* device_xrcd(Device* dv) noexcept {
  Devices& d = devices();
  std::lock_guard<std::mutex> g(d.mu);
  if (!dv->xrcd) {
    ibv_xrcd_init_attr a{};
    a.comp_mask = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS;
    a.fd = -1;
    a.oflags = O_CREAT;
    dv->xrcd = ibv_open_xrcd(dv->verbs, &a);
  }
  return dv->xrcd;
}

int max_qp_size() noexcept {
  if (init_devices()) return 0;
  Devices& d = devices();
  std::lock_guard<std::mutex> g(d.mu);
  int m = 0;
  for (int i = 0; i < d.count; ++i)
    if (!m || d.list[i].max_qp_wr < m) m = d.list[i].max_qp_wr;
  return m;
}

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// NULL (errno set, *num_devices 0) when no device can be opened.
ibv_context** rdma_get_devices(int* num_devices) {
  if (num_devices) *num_devices = 0;
  if (int rc = init_devices()) return fail(rc, static_cast<ibv_context**>(nullptr));
  Devices& d = devices();
  std::lock_guard<std::mutex> g(d.mu);
  auto** out = static_cast<ibv_context**>(std::calloc(size_t(d.count) + 1, sizeof(ibv_context*)));
  if (!out) return fail(ENOMEM, static_cast<ibv_context**>(nullptr));
  for (int i = 0; i < d.count; ++i) out[i] = d.list[i].verbs;
  if (num_devices) *num_devices = d.count;
  return out;
}

// The contexts stay open (they are the process's); only the array is freed.
void rdma_free_devices(ibv_context** list) {
  std::free(list);
}

}  // extern "C"
