// Memory pinning for ibv_reg_mr (user_verbs.txt, "Memory pinning").
//
// Registration locks the pages of the region (mlock) so the transport may copy to and from
// them at any time without a fault, and charges the page-rounded size to a per-process
// account checked against RLIMIT_MEMLOCK, read at every registration. As in uverbs, pages
// pinned by several registrations are charged once per registration ("pages pinned twice
// count twice"), so the account may exceed what is really locked. Over the limit the
// registration fails with ENOMEM; deregistration uncharges.
//
// As in uverbs, only unprivileged processes are held to the limit: a process whose
// effective capabilities include CAP_IPC_LOCK (root, by default) is charged but may pin past
// it, which is also what mlock() itself allows such a process. The capability is read at
// every registration: a process that drops it (capset) is held to the limit from its next
// ibv_reg_mr.
//
// mlock() is not reference counted, so the pages locked by overlapping registrations are
// tracked as disjoint segments with a pin count; a segment is munlock()ed when its count
// drops to zero. A range that is not mapped fails with EFAULT (as ibv_reg_mr reports it;
// checked with msync(MS_ASYNC), a no-op on mapped memory); if mlock() itself fails the
// registration fails with ENOMEM.
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

struct Segment {
  uint64_t end;
  uint32_t pins;
};

struct PinState {
  mid::Mutex lock;
  uint64_t charged = 0;                  // bytes, under lock
  std::map<uint64_t, Segment> segments;  // start -> [start, end) pinned `pins` times
};

PinState& state() {
  static auto* s = new PinState();
  return *s;
}

uint64_t page_size() {
  static const uint64_t p = uint64_t(sysconf(_SC_PAGESIZE));
  return p;
}

// Splits the segment that strictly contains `x` so that a segment boundary lies at x.
void split_at(std::map<uint64_t, Segment>& m, uint64_t x) {
  auto it = m.upper_bound(x);
  if (it == m.begin()) return;
  --it;
  if (it->first < x && x < it->second.end) {
    Segment tail{it->second.end, it->second.pins};
    it->second.end = x;
    m.emplace(x, tail);
  }
}

void add_pins(std::map<uint64_t, Segment>& m, uint64_t lo, uint64_t hi) {
  split_at(m, lo);
  split_at(m, hi);
  uint64_t pos = lo;
  auto it = m.lower_bound(lo);
  while (pos < hi) {
    if (it != m.end() && it->first == pos) {
      ++it->second.pins;
      pos = it->second.end;
      ++it;
    } else {
      const uint64_t gap_end = (it != m.end() && it->first < hi) ? it->first : hi;
      m.emplace_hint(it, pos, Segment{gap_end, 1});
      pos = gap_end;
    }
  }
}

// Decrements the pins of [lo, hi); returns the ranges no longer pinned.
std::vector<std::pair<uint64_t, uint64_t>> drop_pins(std::map<uint64_t, Segment>& m, uint64_t lo,
                                                     uint64_t hi) {
  split_at(m, lo);
  split_at(m, hi);
  std::vector<std::pair<uint64_t, uint64_t>> freed;
  for (auto it = m.lower_bound(lo); it != m.end() && it->first < hi;) {
    if (--it->second.pins == 0) {
      if (!freed.empty() && freed.back().second == it->first)
        freed.back().second = it->second.end;
      else
        freed.emplace_back(it->first, it->second.end);
      it = m.erase(it);
    } else {
      ++it;
    }
  }
  return freed;
}

// CAP_IPC_LOCK in the calling thread's effective set (capget; no libcap dependency).
bool may_exceed_memlock() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32)) & 1;
}

// msync(MS_ASYNC) schedules nothing (since Linux 2.6.19) and fails with ENOMEM exactly
// when part of the range is not mapped.
bool range_mapped(uint64_t lo, uint64_t hi) {
  return msync(reinterpret_cast<void*>(lo), hi - lo, MS_ASYNC) == 0 || errno != ENOMEM;
}

}  // namespace

int pin_range(uint64_t addr, uint64_t len) noexcept {
  const uint64_t ps = page_size();
  const uint64_t lo = addr & ~(ps - 1);
  const uint64_t hi = (addr + len + ps - 1) & ~(ps - 1);
  if (hi <= lo) return EINVAL;
  const uint64_t bytes = hi - lo;
  PinState& s = state();
  std::lock_guard<mid::Mutex> g(s.lock);
  rlimit rl{};
  if (s.charged + bytes < s.charged) return ENOMEM;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      s.charged + bytes > rl.rlim_cur && !may_exceed_memlock())
    return ENOMEM;
  if (!range_mapped(lo, hi)) return EFAULT;
  if (mlock(reinterpret_cast<void*>(lo), bytes) != 0) return ENOMEM;
  try {
    add_pins(s.segments, lo, hi);
  } catch (...) {
    // Out of memory for the bookkeeping: the pages stay locked (never unlocked under
    // another registration); the registration fails.
    return ENOMEM;
  }
  s.charged += bytes;
  return 0;
}

void unpin_range(uint64_t addr, uint64_t len) noexcept {
  const uint64_t ps = page_size();
  const uint64_t lo = addr & ~(ps - 1);
  const uint64_t hi = (addr + len + ps - 1) & ~(ps - 1);
  if (hi <= lo) return;
  PinState& s = state();
  std::lock_guard<mid::Mutex> g(s.lock);
  s.charged -= hi - lo;
  try {
    for (auto [a, b] : drop_pins(s.segments, lo, hi))
      munlock(reinterpret_cast<void*>(a), b - a);  // fails harmlessly if already unmapped
  } catch (...) {
    // Bookkeeping allocation failed: the pages stay locked until exit, never unlocked early.
  }
}

uint64_t pinned_bytes() noexcept {
  PinState& s = state();
  std::lock_guard<mid::Mutex> g(s.lock);
  return s.charged;
}

}  // namespace dverbs::ibv
