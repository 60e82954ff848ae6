// DPDK EAL bootstrap: once per process, no hugepages, a unique file prefix so several
// processes coexist, every lcore thread floating over the CPUs the process may use.
#pragma once

#include <string>

#include "pmd/net/config.h"

namespace dverbs::pmd::net {

// Initialises the EAL (idempotent; later calls return the first result). Returns 0, or a
// positive errno with *err set to one readable line.
// Context: process context, may sleep.
int eal_init(const Config& cfg, std::string* err);

// Registers the calling non-EAL thread with DPDK (for per-lcore mempool caches).
// Context: a thread about to run transport work, once.
int register_thread();

}  // namespace dverbs::pmd::net
