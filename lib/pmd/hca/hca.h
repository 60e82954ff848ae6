// The soft HCA behind a midlayer object, for code outside the HCA that measures or tests
// its internals (its tests, bench/hca_bench, dverbs-perf's footprint and engine-placement
// scenarios). These are checked downcasts: a device or QP another driver serves (dverbs-
// remote in daemon mode) yields nullptr instead of undefined behaviour. Everything else
// (counters included) goes through the midlayer's driver ops.
#pragma once

#include "midlayer/driver.h"

namespace dverbs::pmd::hca {

class Device;
struct Qp;

// Context: any thread, never sleeps. nullptr when `dev` (or `qp`) is not the soft HCA's.
Device* device_of(mid::Device* dev) noexcept;
Qp* qp_of(mid::Qp* qp) noexcept;

}  // namespace dverbs::pmd::hca
