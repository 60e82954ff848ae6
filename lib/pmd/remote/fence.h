// The write fence of a daemon-mode registration (mem.cc): while the pages shared with
// other objects are copied onto their memfd and remapped, they are read-only, and a thread
// that stores to them meanwhile faults, waits in the fence's SIGSEGV handler until the
// remap is done, and returns to retry its store on the new pages. Nothing written there
// is lost, whichever thread writes: the application's, or the library's own (a mutex of
// the handler pool on the same page as a small buffer).
//
// A store made by the kernel on the caller's behalf (read(2) into such a page) cannot wait:
// it fails with EFAULT. The fence stays up for the copy of two pages and the remap.
//
// The handler is installed on the first fence and put back if the application replaced it
// since; a fault outside a fence goes to the handler that was there before (or the default
// action), with its siginfo, as if the fence's handler were not there.
//
// Context: fence_raise/fence_lower are called under the registration lock (mem.cc), one
// fence at a time; between them the caller makes system calls only (no allocation, no
// lock), so a thread waiting in the handler never waits for something it holds.
#pragma once

#include <cstdint>

namespace dverbs::pmd::remote {

// Installs the handler if it is not the current one. 0 or errno.
int fence_arm();
// Up to two ranges, each [lo, hi) (hi == lo: none), are fenced from now on. The caller
// then write-protects them.
void fence_raise(uint64_t lo0, uint64_t hi0, uint64_t lo1, uint64_t hi1);
// The ranges are writable again (remapped, or their protection restored).
void fence_lower();

}  // namespace dverbs::pmd::remote
