// DPDK EAL bootstrap: once per process, no hugepages, a unique file prefix so several
// processes coexist, every lcore thread floating over the CPUs the process may use.
//
// The EAL is started with --no-shconf, so it leaves no files in /var/run/dpdk (the empty
// runtime directory is removed right after start-up), and with its log stream on stderr,
// never stdout or syslog. The calling thread's CPU affinity is restored after rte_eal_init.
#pragma once

#include <initializer_list>
#include <string>

#include "pmd/net/config.h"

namespace dverbs::pmd::net {

// Initialises the EAL (idempotent; later calls return the first result). Returns 0, or a
// positive errno with *err set to one readable line, e.g. "DVERBS_EAL: '--lcores 0@(99)':
// cannot start DPDK: core 99 unavailable (Invalid argument)". The calling thread becomes
// DPDK's main lcore; its CPU affinity is left as it was.
// Context: process context, may sleep.
int eal_init(const Config& cfg, std::string* err);

// Context: any thread, never sleeps. True once eal_init() has succeeded.
bool eal_ready() noexcept;

// Registers the calling non-EAL thread with DPDK (for per-lcore mempool caches). Returns 0
// (also when already registered) or a positive errno.
// Context: a thread about to run transport work, once.
int register_thread();

// Context: a thread that called register_thread(), before it exits; releases its lcore id.
void unregister_thread() noexcept;

// Collects the DPDK log lines that the calling thread emits while the object lives, so that
// a failed DPDK call can be reported as one line; lines of other threads still go to stderr.
// Context: process context; lives on one thread's stack.
class DpdkLogCapture {
 public:
  DpdkLogCapture();
  ~DpdkLogCapture();
  DpdkLogCapture(const DpdkLogCapture&) = delete;
  DpdkLogCapture& operator=(const DpdkLogCapture&) = delete;
  // Context: the capturing thread. Everything captured so far.
  const std::string& text() const { return text_; }
  // Context: the capturing thread. The first non-empty line without its "EAL: "/"func(): "
  // style prefix, skipping lines that contain any of the given fragments; or "".
  std::string first_line(std::initializer_list<const char*> skip = {}) const;
  // Context: the capturing thread. Writes the captured text to stderr, skipping lines that
  // contain any of the given fragments (known-harmless warnings), and clears it.
  void replay(std::initializer_list<const char*> skip = {});
  // Context: the capturing thread. Drops what was captured (it has been summarised).
  void discard() { text_.clear(); }

 private:
  std::string text_;
  std::string* prev_;
};

// Context: any thread. True when devargs starts with a PCI address ("0000:01:00.0" or
// "01:00.0"): such ports are allow-listed at EAL start instead of passing --no-pci.
bool devargs_is_pci(const std::string& devargs);

}  // namespace dverbs::pmd::net
