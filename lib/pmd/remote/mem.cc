// Registered memory in daemon mode: zero copy for `ibv_reg_mr(pd, malloc(n), …)` without
// the application's help.
//
// The daemon can only reach memory it can map, so registration moves the registered pages
// onto memfds and shares those: for each maximal run of pages of the page-aligned span
// [a0, a1) that no live segment covers, a memfd is created, the pages' current contents
// are written into it, it is sealed against resizing, and it is mapped MAP_SHARED |
// MAP_FIXED over the run with the protection the pages have now. From then on the process
// and dverbsd see the same pages at the same addresses (the daemon maps each piece and
// registers it at the client's addresses), and the application keeps using its pointer.
// Pages that an earlier registration re-backed are shared again, not copied: overlapping
// registrations see each other's writes, as on a real HCA.
//
// Segment table: every live memfd is a Segment (fd, references from MR pieces); the lookup
// table maps address ranges (extents) to the segment and offset that back them. Before an
// extent is reused, /proc/self/maps must still show that range mapped from that memfd at
// that offset: the application may have freed and unmapped the memory and mapped new
// memory at the same address. A stale extent is trimmed from the lookup table (its
// segment stays alive while old MRs reference it) and the range is re-backed anew. When
// the last reference goes (dereg_mr), the segment's fd is closed and its extents are
// forgotten; the mapping stays memfd-backed and simply belongs to the application (a later
// registration of it re-backs it again).
//
// Refused: a span in a MAP_SHARED mapping that is not one of ours (EINVAL, one line on
// stderr) — re-backing would silently end its sharing with whoever else maps it; a span
// on the calling thread's own stack (EINVAL) — this function's frames would be rolled back
// by the remap (see below); unmapped or unreadable pages (EFAULT); more than kMaxPieces
// pieces (ENOMEM: a per-registration resource limit, as a page list the kernel cannot
// build; deregistering or registering larger aligned buffers avoids it).
//
// Caveats (the kernel has neither: it pins the pages where they are):
//  - Stale writes: a thread that writes the registered buffer itself between its copy
//    (pwrite) and the remap (mmap) loses its write: register buffers before other threads
//    use them (the usual practice). The run's first and last pages, which it may share
//    with anything else (malloc headers, the drop-in's own objects), are copied and
//    remapped under a write fence instead (fence.h): a store to them waits, none is lost.
//  - fork(): re-backed pages are MAP_SHARED, so the atfork child handler
//    (mem_private_after_fork) copies them into private memory in the child; that copy is
//    paid at fork, in proportion to the registered memory (the kernel copies on write).
//  - Neighbours: the span is page-rounded, so bytes sharing a page with the buffer (malloc
//    headers, other objects) are re-backed too; their contents are preserved, and stores
//    to them during the registration wait for it (the fence) or, made by the kernel
//    (read(2) into them), fail with EFAULT for those microseconds.
//
// Locking: g_mem.lock (checked mutex) guards both tables; everything here is slow path.
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <new>
#include <mutex>
#include <string>
#include <vector>

#include "pmd/remote/fence.h"
#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

constexpr const char* kMemfdName = "dverbs-mr";

struct Segment {
  int fd = -1;
  uint32_t refs = 0;  // MR pieces that use it
  unsigned dev_major = 0, dev_minor = 0;
  uint64_t ino = 0;
};

namespace {

struct Extent {
  uint64_t end;
  Segment* seg;
  uint64_t off;  // file offset of the extent's first byte
};

struct MemState {
  mid::Mutex lock;
  std::map<uint64_t, Extent> extents;  // start → extent, disjoint; guarded by lock
};

MemState& state() {
  static auto* s = new MemState();
  return *s;
}

uint64_t page_size() {
  static const uint64_t p = uint64_t(::sysconf(_SC_PAGESIZE));
  return p;
}

// One line of /proc/self/maps.
struct Vma {
  uint64_t lo, hi;
  char perms[5];
  uint64_t off;
  unsigned maj, min;
  uint64_t ino;
  std::string path;
  bool shared() const { return perms[3] == 's'; }
  bool ours() const { return path.rfind(std::string("/memfd:") + kMemfdName, 0) == 0; }
  int prot() const {
    return (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
           (perms[2] == 'x' ? PROT_EXEC : 0);
  }
};

// The mappings that overlap [lo, hi), in address order. 0 or errno.
int read_maps(uint64_t lo, uint64_t hi, std::vector<Vma>* out) {
  int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, size_t(n));
  }
  ::close(fd);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    Vma v{};
    int consumed = 0;
    if (std::sscanf(line.c_str(), "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64 " %n",
                    &v.lo, &v.hi, v.perms, &v.off, &v.maj, &v.min, &v.ino, &consumed) < 7)
      continue;
    if (v.hi <= lo || v.lo >= hi) continue;
    if (consumed > 0 && size_t(consumed) < line.size()) v.path = line.substr(size_t(consumed));
    out->push_back(std::move(v));
  }
  return 0;
}

// Whether [x, …) of `v` is mapped from `seg` exactly where extent `e` (starting at
// `estart`) says.
bool vma_backs(const Vma& v, const Segment& seg, uint64_t estart, const Extent& e) {
  return v.shared() && v.ino == seg.ino && v.maj == seg.dev_major && v.min == seg.dev_minor &&
         v.off - v.lo == e.off - estart;  // same address → offset translation (mod 2^64)
}

// The extent containing x, or end().
std::map<uint64_t, Extent>::iterator extent_at(std::map<uint64_t, Extent>& m, uint64_t x) {
  auto it = m.upper_bound(x);
  if (it == m.begin()) return m.end();
  --it;
  return x < it->second.end ? it : m.end();
}

// Removes [lo, hi) from the lookup table (splitting extents at the edges).
void forget_range(std::map<uint64_t, Extent>& m, uint64_t lo, uint64_t hi) {
  auto it = extent_at(m, lo);
  if (it != m.end() && it->first < lo) {  // split at lo
    Extent tail{it->second.end, it->second.seg, it->second.off + (lo - it->first)};
    it->second.end = lo;
    m.emplace(lo, tail);
  }
  it = extent_at(m, hi);
  if (it != m.end() && it->first < hi) {  // split at hi
    Extent tail{it->second.end, it->second.seg, it->second.off + (hi - it->first)};
    it->second.end = hi;
    m.emplace(hi, tail);
  }
  for (it = m.lower_bound(lo); it != m.end() && it->first < hi;) it = m.erase(it);
}

void forget_segment(std::map<uint64_t, Extent>& m, const Segment* seg) {
  for (auto it = m.begin(); it != m.end();) it = it->second.seg == seg ? m.erase(it) : std::next(it);
}

// A step of the plan: reuse `len` bytes of `seg` at `off`, or (seg == nullptr) re-back
// [lo, lo + len).
struct Step {
  Segment* seg;
  uint64_t off;
  uint64_t lo, len;
};

void put_segment(std::map<uint64_t, Extent>& m, Segment* seg) {
  if (--seg->refs) return;
  forget_segment(m, seg);
  ::close(seg->fd);
  delete seg;
}

// Creates a memfd holding the current contents of [lo, hi) and maps it over them with the
// protection each mapping has now. With the table lock held.
// Copies [lo, hi) of the address space into `fd` at offset lo - base. 0 or errno.
int copy_out(int fd, uint64_t base, uint64_t lo, uint64_t hi) {
  for (uint64_t done = lo; done < hi;) {
    // The raw system call, not libc's pwrite: the copy covers whole pages, and bytes next
    // to the application's buffer (malloc headers, other objects) are read on purpose. A
    // sanitizer's pwrite interceptor would report those as overflows; the kernel checks
    // that every page is readable (EFAULT otherwise).
    ssize_t n = ::syscall(SYS_pwrite64, fd, reinterpret_cast<const void*>(done), hi - done,
                          off_t(done - base));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return (n < 0 && errno == EFAULT) || n == 0 ? EFAULT : ENOMEM;
    done += uint64_t(n);
  }
  return 0;
}

// Makes the writable parts of `vmas` inside [lo, hi) read-only (`fence`), or gives them
// their protection back. Raw system calls, as the remap's. 0 or errno.
int protect(const std::vector<Vma>& vmas, uint64_t lo, uint64_t hi, bool fence) {
  for (const Vma& v : vmas) {
    const uint64_t a = v.lo > lo ? v.lo : lo;
    const uint64_t b = v.hi < hi ? v.hi : hi;
    if (a >= b || !(v.prot() & PROT_WRITE)) continue;
    const int prot = fence ? v.prot() & ~PROT_WRITE : v.prot();
    if (::syscall(SYS_mprotect, a, b - a, prot) != 0) return errno;
  }
  return 0;
}

// Re-backs the run [lo, hi): a new memfd holds its current contents and is mapped over it.
//
// The run's first and last pages may hold other objects than the registered buffer
// (malloc headers, the drop-in's own objects, other buffers), which any thread may write
// at any time: they are copied and remapped under the write fence (fence.h), so no store
// to them is lost. The pages between belong to the buffer and are copied first, unfenced
// (a store to the buffer itself during its registration may be lost: see "Stale writes").
int rebacks(uint64_t lo, uint64_t hi, const std::vector<Vma>& vmas, Segment** out) {
  const uint64_t len = hi - lo, ps = page_size();
  const uint64_t head_hi = lo + ps < hi ? lo + ps : hi;     // [lo, head_hi): first page
  const uint64_t tail_lo = hi - ps > head_hi ? hi - ps : head_hi;  // [tail_lo, hi): last
  int fd = ::memfd_create(kMemfdName, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return errno == EMFILE || errno == ENFILE ? ENOMEM : errno;
  int rc = 0;
  if (::ftruncate(fd, off_t(len)) != 0) rc = ENOMEM;
  if (rc == 0) rc = copy_out(fd, lo, head_hi, tail_lo);
  if (rc == 0 && ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) rc = errno;
  struct stat st;
  if (rc == 0 && ::fstat(fd, &st) != 0) rc = errno;
  if (rc == 0) rc = fence_arm();
  if (rc) {
    ::close(fd);
    return rc;
  }
  // From here to fence_lower: system calls only (fence.h).
  fence_raise(lo, head_hi, tail_lo, hi);
  rc = protect(vmas, lo, head_hi, true);
  if (rc == 0) rc = protect(vmas, tail_lo, hi, true);
  if (rc == 0) rc = copy_out(fd, lo, lo, head_hi);
  if (rc == 0) rc = copy_out(fd, lo, tail_lo, hi);
  // Map it over the run, one piece per existing mapping so each keeps its protection. A
  // failure part way leaves some pages memfd-backed with unchanged contents: harmless, a
  // later registration re-backs them again. The raw system call: libc's mmap is a
  // sanitizer's interceptor, which would take the pages for new memory (TSan: written by
  // this thread; ASan: addressable), though their contents are the same.
  for (const Vma& v : vmas) {
    if (rc) break;
    const uint64_t a = v.lo > lo ? v.lo : lo;
    const uint64_t b = v.hi < hi ? v.hi : hi;
    if (a >= b) continue;
    long p = ::syscall(SYS_mmap, a, b - a, v.prot(), MAP_SHARED | MAP_FIXED, fd, off_t(a - lo));
    if (p == -1) rc = errno == EINVAL ? EINVAL : ENOMEM;
  }
  if (rc) {  // the fenced pages that were not remapped get their protection back
    protect(vmas, lo, head_hi, false);
    protect(vmas, tail_lo, hi, false);
  }
  fence_lower();
  if (rc) {
    ::close(fd);
    return rc;
  }
  auto* seg = new (std::nothrow) Segment();
  if (!seg) {
    ::close(fd);
    return ENOMEM;
  }
  seg->fd = fd;
  seg->dev_major = major(st.st_dev);
  seg->dev_minor = minor(st.st_dev);
  seg->ino = uint64_t(st.st_ino);
  *out = seg;
  return 0;
}

// Builds the plan for [a0, a1) (trimming stale extents on the way). With the lock held.
int plan(MemState& s, uint64_t a0, uint64_t a1, const std::vector<Vma>& vmas,
         std::vector<Step>* steps) {
  // Every page must be mapped.
  uint64_t pos = a0;
  for (const Vma& v : vmas) {
    if (v.lo > pos) break;
    if (v.hi > pos) pos = v.hi;
  }
  if (pos < a1) return EFAULT;

  int here;
  const uint64_t sp = reinterpret_cast<uint64_t>(&here);
  pos = a0;
  size_t vi = 0;  // first vma that may contain pos
  while (pos < a1) {
    while (vmas[vi].hi <= pos) vi++;
    auto it = extent_at(s.extents, pos);
    if (it != s.extents.end()) {
      const uint64_t estart = it->first;
      const Extent e = it->second;
      const uint64_t q = e.end < a1 ? e.end : a1;
      uint64_t v = pos;  // end of the valid prefix
      for (size_t j = vi; j < vmas.size() && v < q; j++) {
        if (vmas[j].lo > v || !vma_backs(vmas[j], *e.seg, estart, e)) break;
        v = vmas[j].hi < q ? vmas[j].hi : q;
      }
      if (v > pos) {
        steps->push_back(Step{e.seg, e.off + (pos - estart), pos, v - pos});
        pos = v;
        continue;
      }
      // Stale: the memory at pos is no longer this segment's. Forget the extent up to the
      // end of the mapping that disagrees and look again.
      const uint64_t w = vmas[vi].hi < e.end ? vmas[vi].hi : e.end;
      forget_range(s.extents, pos, w);
      continue;
    }
    // Not covered: a run up to the next extent, re-backed as one memfd.
    auto next = s.extents.upper_bound(pos);
    const uint64_t end = next != s.extents.end() && next->first < a1 ? next->first : a1;
    for (size_t j = vi; j < vmas.size() && vmas[j].lo < end; j++) {
      const Vma& v = vmas[j];
      if (v.shared() && !v.ours()) {
        std::fprintf(stderr,
                     "dverbs: ibv_reg_mr: [%#" PRIx64 ", %#" PRIx64 ") lies in a MAP_SHARED mapping "
                     "(%s): daemon mode would have to re-back it and end its sharing\n",
                     a0, a1, v.path.empty() ? "anonymous" : v.path.c_str());
        return EINVAL;
      }
      if (v.lo <= sp && sp < v.hi) {  // our own stack: the remap would roll our frames back
        std::fprintf(stderr,
                     "dverbs: ibv_reg_mr: [%#" PRIx64 ", %#" PRIx64 ") is on the calling thread's "
                     "stack, which daemon mode cannot re-back\n",
                     a0, a1);
        return EINVAL;
      }
    }
    steps->push_back(Step{nullptr, 0, pos, end - pos});
    pos = end;
  }
  return steps->size() > daemon::kMaxPieces ? ENOMEM : 0;
}

}  // namespace

int mem_attach(uint64_t addr, uint64_t length, Backing* out) {
  const uint64_t ps = page_size();
  const uint64_t a0 = addr & ~(ps - 1);
  const uint64_t a1 = (addr + length + ps - 1) & ~(ps - 1);
  if (length == 0 || a1 <= a0) return EINVAL;
  MemState& s = state();
  std::lock_guard<mid::Mutex> g(s.lock);
  std::vector<Vma> vmas;
  std::vector<Step> steps;
  try {
    if (int rc = read_maps(a0, a1, &vmas)) return rc;
    if (int rc = plan(s, a0, a1, vmas, &steps)) return rc;
  } catch (...) {
    return ENOMEM;
  }
  out->page_start = a0;
  out->npieces = 0;
  for (const Step& st : steps) {
    Segment* seg = st.seg;
    uint64_t off = st.off;
    if (!seg) {
      int rc = rebacks(st.lo, st.lo + st.len, vmas, &seg);
      if (rc == 0) {
        try {
          s.extents.emplace(st.lo, Extent{st.lo + st.len, seg, 0});
        } catch (...) {
          rc = ENOMEM;  // it backs the pages but is not looked up: fine, dropped below
        }
      }
      if (rc) {
        if (seg) {
          seg->refs = 1;
          put_segment(s.extents, seg);
        }
        for (uint32_t i = 0; i < out->npieces; i++) put_segment(s.extents, out->segs[i]);
        out->npieces = 0;
        return rc;
      }
      off = 0;
    }
    seg->refs++;
    const uint32_t i = out->npieces++;
    out->pieces[i] = daemon::MrPiece{off, st.len};
    out->fds[i] = seg->fd;
    out->segs[i] = seg;
  }
  return 0;
}

void mem_detach(Backing* b) noexcept {
  MemState& s = state();
  std::lock_guard<mid::Mutex> g(s.lock);
  for (uint32_t i = 0; i < b->npieces; i++) put_segment(s.extents, b->segs[i]);
  b->npieces = 0;
}

namespace {

// Word copy that no sanitizer instruments: the re-backed range holds whole pages, bytes
// around the application's buffers included (see the raw pwrite in rebacks()).
__attribute__((no_sanitize("address", "thread", "undefined"))) void copy_words(
    uint64_t* dst, const volatile uint64_t* src, size_t words) noexcept {
  for (size_t i = 0; i < words; i++) dst[i] = src[i];
}

}  // namespace

void mem_private_after_fork() noexcept {
  struct Range {
    uint64_t lo, hi;
    int prot;
  };
  std::vector<Range> ranges;
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (!f) return;
  char line[512];
  const std::string tag = std::string("/memfd:") + kMemfdName;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long long lo, hi;
    char perms[8] = {};
    int path = 0;
    if (std::sscanf(line, "%llx-%llx %7s %*s %*s %*s %n", &lo, &hi, perms, &path) < 3 || !path)
      continue;
    if (std::strncmp(line + path, tag.c_str(), tag.size()) != 0) continue;
    int prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
               (perms[2] == 'x' ? PROT_EXEC : 0);
    try {
      ranges.push_back({lo, hi, prot});
    } catch (...) {
      break;
    }
  }
  std::fclose(f);
  for (const Range& r : ranges) {
    const size_t len = size_t(r.hi - r.lo);
    void* tmp = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED) continue;  // left shared: nothing better can be done here
    void* at = reinterpret_cast<void*>(r.lo);
    if (!(r.prot & PROT_READ)) ::mprotect(at, len, PROT_READ);
    copy_words(static_cast<uint64_t*>(tmp), static_cast<const volatile uint64_t*>(at),
               len / sizeof(uint64_t));
    // Moves the private copy over the shared range in one step.
    if (::mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED) {
      ::munmap(tmp, len);
      continue;
    }
    if (r.prot != (PROT_READ | PROT_WRITE)) ::mprotect(at, len, r.prot);
  }
  // The parent's segment table describes the parent's memory: the child starts afresh
  // (its own registrations, if it makes any on a new context, re-back anew).
}

}  // namespace dverbs::pmd::remote
