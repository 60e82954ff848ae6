// Counters of the soft HCA (stats.h) and their DPDK telemetry endpoints.
//
// Endpoints (DVERBS_TELEMETRY=on; `dverbs-stat` and DPDK's dpdk-telemetry.py read them):
//   /dverbs/devices            the devices of the process: ["dverbs0", ...]
//   /dverbs/port,DEV           DEV's counters (device_counters) and its port: link, ip, mac
//   /dverbs/qps,DEV            the numbers of DEV's QPs
//   /dverbs/qp,DEV,QPN         one QP's counters (qp_counters), its type and state
// DEV may be left out (the first device). Callbacks run on DPDK's telemetry thread: they take
// the registry's lock and a device's ctl() lock, never a lock an engine takes, and read the
// counters with relaxed loads.
#include "pmd/hca/stats.h"

#include <rte_telemetry.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "midlayer/might_sleep.h"
#include "pmd/hca/device.h"

namespace dverbs::pmd::hca {
namespace {

uint64_t load_relaxed(const std::atomic<uint64_t>& a) {
  return a.load(std::memory_order_relaxed);
}

// Fills what fits in `out` and returns how many there are.
int put_counters(std::initializer_list<Counter> all, Counter* out, int max) {
  int n = 0;
  for (const Counter& c : all) {
    if (n < max) out[n] = c;
    n++;
  }
  return n;
}

#define DVERBS_COUNTER_ENTRY(name, meaning) {#name, load_relaxed(c.name)},

}  // namespace

int device_counters(Device& dev, Counter* out, int max) {
  const DeviceCounters& c = dev.counters();
  // The port's own counters only while the device has one (it goes at retire).
  const uint64_t tx_dropped = dev.retired() ? 0 : load_relaxed(dev.port().stats().tx_dropped);
  return put_counters({DVERBS_QP_EVENTS(DVERBS_COUNTER_ENTRY)
                       {"tx_packets", load_relaxed(c.tx_packets)},
                       {"tx_bytes", load_relaxed(c.tx_bytes)},
                       {"rx_bad_frame", load_relaxed(c.rx_bad_frame)},
                       {"rx_bad_icrc", load_relaxed(c.rx_bad_icrc)},
                       {"rx_no_qp", load_relaxed(c.rx_no_qp)},
                       {"rx_bad_state", load_relaxed(c.rx_bad_state)},
                       {"rx_non_roce", load_relaxed(c.rx_non_roce)},
                       {"rx_not_for_us", load_relaxed(c.rx_not_for_us)},
                       {"rx_handoff_full", load_relaxed(c.rx_handoff_full)},
                       {"tx_no_mbuf", load_relaxed(c.tx_no_mbuf)},
                       {"tx_backlog_drop", load_relaxed(c.tx_backlog_drop)},
                       {"cq_overflow", load_relaxed(c.cq_overflow)},
                       {"rx_raw", load_relaxed(c.rx_raw)},
                       {"rx_raw_dropped", load_relaxed(c.rx_raw_dropped)},
                       {"port_tx_dropped", tx_dropped}},
                      out, max);
}

int qp_counters(const Qp& c, Counter* out, int max) {
  return put_counters({DVERBS_QP_EVENTS(DVERBS_COUNTER_ENTRY)}, out, max);
}

// ---------------------------------------------------------------- telemetry
namespace {

// Never destroyed: devices go at exit, after static destructors may have run (a device
// outlives this file's globals), and their destructors call telemetry_remove.
struct TelRegistry {
  mid::Mutex lock;
  std::vector<Device*> devices;  // guarded by lock
  bool registered = false;       // guarded by lock
};
TelRegistry& tel() {
  static TelRegistry* r = new TelRegistry;
  return *r;
}

// The device a parameter string names ("dverbs0", or empty for the first); `rest` gets
// what follows the name's comma. Call with tel().lock held.
Device* find_device(const char* params, std::string* rest) {
  std::string p = params ? params : "";
  std::string name = p.substr(0, p.find(','));
  if (rest) *rest = p.find(',') == std::string::npos ? "" : p.substr(p.find(',') + 1);
  for (Device* d : tel().devices)
    if (name.empty() || name == d->name) return d;
  return nullptr;
}

void add_counters(rte_tel_data* t, const Counter* c, int n) {
  for (int i = 0; i < n; i++) rte_tel_data_add_dict_u64(t, c[i].name, c[i].value);
}

int tel_devices(const char*, const char*, rte_tel_data* t) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  rte_tel_data_start_array(t, RTE_TEL_STRING_VAL);
  for (Device* d : tel().devices) rte_tel_data_add_array_string(t, d->name);
  return 0;
}

int tel_port(const char*, const char* params, rte_tel_data* t) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  Device* d = find_device(params, nullptr);
  if (!d) return -EINVAL;
  Counter c[kMaxDeviceCounters];
  int n = std::min(device_counters(*d, c, kMaxDeviceCounters), kMaxDeviceCounters);
  rte_tel_data_start_dict(t);
  rte_tel_data_add_dict_string(t, "device", d->name);
  const Device::PortInfo& pi = d->port_info();
  char ip[16], mac[18];
  std::snprintf(ip, sizeof ip, "%u.%u.%u.%u", pi.ip >> 24, pi.ip >> 16 & 255, pi.ip >> 8 & 255,
                pi.ip & 255);
  std::snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", pi.mac[0], pi.mac[1],
                pi.mac[2], pi.mac[3], pi.mac[4], pi.mac[5]);
  rte_tel_data_add_dict_string(t, "ip", ip);
  rte_tel_data_add_dict_string(t, "mac", mac);
  rte_tel_data_add_dict_u64(t, "link_up", d->link_up() ? 1 : 0);
  rte_tel_data_add_dict_u64(t, "engines", d->engine_count());
  add_counters(t, c, n);
  return 0;
}

int tel_qps(const char*, const char* params, rte_tel_data* t) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  Device* d = find_device(params, nullptr);
  if (!d) return -EINVAL;
  std::lock_guard<mid::Mutex> c(d->ctl());
  rte_tel_data_start_array(t, RTE_TEL_INT_VAL);
  d->for_each_qp([&](Qp& qp) { rte_tel_data_add_array_int(t, int(qp.qp_num)); });
  return 0;
}

int tel_qp(const char*, const char* params, rte_tel_data* t) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  std::string rest;
  Device* d = find_device(params, &rest);
  char* end = nullptr;
  const unsigned long qpn = std::strtoul(rest.c_str(), &end, 0);
  if (!d || rest.empty() || *end) return -EINVAL;
  std::lock_guard<mid::Mutex> c(d->ctl());
  Qp* qp = d->qp_lookup(uint32_t(qpn));
  if (!qp) return -ENOENT;
  Counter cs[kMaxQpCounters];
  int n = std::min(qp_counters(*qp, cs, kMaxQpCounters), kMaxQpCounters);
  rte_tel_data_start_dict(t);
  rte_tel_data_add_dict_u64(t, "qp_num", qp->qp_num);
  static const char* const kTypes[] = {"", "", "RC", "UC", "UD"};
  const auto type = uint32_t(qp->qp_type);
  rte_tel_data_add_dict_string(t, "type", type < 5 && *kTypes[type] ? kTypes[type] : "other");
  rte_tel_data_add_dict_u64(t, "state", uint64_t(qp->state.load(std::memory_order_relaxed)));
  add_counters(t, cs, n);
  return 0;
}

}  // namespace

void telemetry_add(Device* dev) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  tel().devices.push_back(dev);
  if (tel().registered) return;
  tel().registered = true;
  // Registration only lists the commands: harmless while telemetry is off.
  rte_telemetry_register_cmd("/dverbs/devices", tel_devices, "dverbs devices. No parameters");
  rte_telemetry_register_cmd("/dverbs/port", tel_port,
                             "A dverbs device's port and counters. Parameter: device name");
  rte_telemetry_register_cmd("/dverbs/qps", tel_qps,
                             "A dverbs device's QP numbers. Parameter: device name");
  rte_telemetry_register_cmd("/dverbs/qp", tel_qp,
                             "One QP's counters. Parameters: device name, QP number");
}

void telemetry_remove(Device* dev) {
  std::lock_guard<mid::Mutex> g(tel().lock);
  std::erase(tel().devices, dev);
}

void write_stat_file(Device& dev) {
  const char* path = std::getenv("DVERBS_STAT_FILE");
  if (!path || !*path) return;
  FILE* f = std::fopen(path, "w");
  if (!f) {
    std::fprintf(stderr, "dverbs: DVERBS_STAT_FILE=%s: %s\n", path, std::strerror(errno));
    return;
  }
  Counter c[kMaxDeviceCounters];
  int n = std::min(device_counters(dev, c, kMaxDeviceCounters), kMaxDeviceCounters);
  std::fprintf(f, "device=%s\n", dev.name);
  for (int i = 0; i < n; i++) std::fprintf(f, "%s=%" PRIu64 "\n", c[i].name, c[i].value);
  std::fclose(f);
}

}  // namespace dverbs::pmd::hca
