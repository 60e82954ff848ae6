// Registers the soft HCA with the midlayer. probe() reads DVERBS_*, builds `dverbs0` on
// the configured port and registers it once fully initialised (core_locking.rst: "all
// initialization must be complete before this call"). It is the fallback driver: the
// midlayer probes it unless another driver claims the process (dverbs-remote in daemon
// mode, Driver::claims), so this file knows nothing of dverbsd. add_port()/remove_port() plug
// further ports in and out at run time; a port whose DPDK device goes away (ethdev RMV
// event) is removed the same way by the device's watchdog.
//
// Locking: g_lock (checked mutex) guards the device list; it is never held while the
// midlayer calls clients (register/unregister run outside it).
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "midlayer/core.h"
#include "midlayer/driver.h"
#include "midlayer/might_sleep.h"
#include "pmd/hca/device.h"
#include "pmd/net/config.h"

namespace dverbs::pmd::hca {

namespace {

mid::Mutex g_lock;
std::vector<std::unique_ptr<Device>> g_devices;  // guarded by g_lock
// Removed ports whose objects the application may still hold (Device::retire); freed at
// driver shutdown. Guarded by g_lock.
std::vector<std::unique_ptr<Device>> g_retired;
int g_next_index = 0;                            // guarded by g_lock

int create_and_register(const net::Config& cfg, char* name_out, size_t name_len) {
  char name[32];
  {
    std::lock_guard<mid::Mutex> g(g_lock);
    std::snprintf(name, sizeof name, "dverbs%d", g_next_index++);
  }
  std::string err;
  auto dev = Device::create(cfg, name, &err);
  if (!dev) {
    std::fprintf(stderr, "dverbs: %s\n", err.c_str());
    return ENODEV;
  }
  Device* raw = dev.get();
  {
    std::lock_guard<mid::Mutex> g(g_lock);
    g_devices.push_back(std::move(dev));
  }
  if (int rc = mid::register_device(raw)) {
    std::lock_guard<mid::Mutex> g(g_lock);
    std::erase_if(g_devices, [&](auto& d) { return d.get() == raw; });
    return rc;
  }
  if (name_out) std::snprintf(name_out, name_len, "%s", name);
  return 0;
}

int probe() {
  net::Config cfg;
  std::string err;
  if (!net::config_from_env(&cfg, &err)) {
    std::fprintf(stderr, "dverbs: %s\n", err.c_str());
    return EINVAL;
  }
  return create_and_register(cfg, nullptr, 0);
}

int add_port(const char* devargs, const char* ip, char* name, size_t name_len) {
  net::Config cfg;
  std::string err;
  if (!net::config_from_env(&cfg, &err)) {
    std::fprintf(stderr, "dverbs: %s\n", err.c_str());
    return EINVAL;
  }
  cfg.port = devargs;
  cfg.mac_set = false;  // one MAC per port: the new port's own (or a derived one)
  if (ip && *ip && !net::parse_ip_prefix(ip, &cfg.ip, &cfg.prefix_len)) {
    std::fprintf(stderr, "dverbs: add_port: '%s' is not an IPv4 address/prefix\n", ip);
    return EINVAL;
  }
  cfg.pcap.clear();  // one capture file belongs to one port (DVERBS_PCAP is the first's)
  return create_and_register(cfg, name, name_len);
}

// Takes the device out of the list (so no one else removes it), then tears it down.
std::unique_ptr<Device> take(const char* name) {
  std::lock_guard<mid::Mutex> g(g_lock);
  for (auto it = g_devices.begin(); it != g_devices.end(); ++it) {
    if (std::strcmp((*it)->name, name) == 0) {
      std::unique_ptr<Device> d = std::move(*it);
      g_devices.erase(it);
      return d;
    }
  }
  return nullptr;
}

int remove_port(const char* name) {
  std::unique_ptr<Device> dev = take(name);
  if (!dev) return ENOENT;
  dev->fail_all();  // device-fatal event, every QP to ERR (flushed by its engine)
  mid::unregister_device(dev.get());  // clients' remove() (LIFO); usable until it returns
  // Clients have freed what they built in add(), but an application may still hold
  // objects of this device (C++ API handles): keep the tables, release the port.
  dev->retire();
  std::lock_guard<mid::Mutex> g(g_lock);
  g_retired.push_back(std::move(dev));
  return 0;
}

void shutdown() {
  for (;;) {
    std::unique_ptr<Device> dev;
    {
      std::lock_guard<mid::Mutex> g(g_lock);
      if (g_devices.empty()) break;
      dev = std::move(g_devices.back());
      g_devices.pop_back();
    }
    mid::unregister_device(dev.get());
  }
  std::lock_guard<mid::Mutex> g(g_lock);
  g_retired.clear();
}

const mid::Driver kDriver = {"dverbs-pmd", probe,   shutdown, add_port,
                             remove_port, nullptr, /*fallback=*/true};

}  // namespace

void request_removal(Device* dev) {
  // Called by the device's watchdog thread (process context) when DPDK reports the port
  // gone. remove_port() ends by destroying the device, which joins the watchdog: hand the
  // work to a detached thread so the watchdog is not joining itself.
  std::string name = dev->name;
  std::thread([name] { remove_port(name.c_str()); }).detach();
}

DVERBS_REGISTER_DRIVER(kDriver)

}  // namespace dverbs::pmd::hca
