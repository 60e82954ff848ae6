// Registers the soft HCA with the midlayer: probe() reads DVERBS_*, builds the device
// `dverbs0` on the configured port and registers it once fully initialised
// (core_locking.rst: "all initialization must be complete before this call").
#include <cstdio>
#include <memory>
#include <string>

#include "midlayer/core.h"
#include "midlayer/driver.h"
#include "pmd/hca/device.h"
#include "pmd/net/config.h"

namespace dverbs::pmd::hca {

namespace {

std::unique_ptr<Device> g_device;

int probe() {
  net::Config cfg;
  std::string err;
  if (!net::config_from_env(&cfg, &err)) {
    std::fprintf(stderr, "dverbs: %s\n", err.c_str());
    return EINVAL;
  }
  auto dev = Device::create(cfg, "dverbs0", &err);
  if (!dev) {
    std::fprintf(stderr, "dverbs: %s\n", err.c_str());
    return ENODEV;
  }
  if (int rc = mid::register_device(dev.get())) return rc;
  g_device = std::move(dev);
  return 0;
}

void shutdown() {
  if (!g_device) return;
  mid::unregister_device(g_device.get());
  g_device.reset();
}

const mid::Driver kDriver = {"dverbs-pmd", probe, shutdown};

}  // namespace

DVERBS_REGISTER_DRIVER(kDriver)

}  // namespace dverbs::pmd::hca
