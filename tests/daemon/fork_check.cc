// fork() in daemon mode, through the libibverbs API (run with the drop-in and
// DVERBS_DAEMON set, by tests/e2e/daemon.sh). Registered memory is re-backed with memfds
// shared with dverbsd; a child must get private copies of those pages, as the kernel gives
// a child private copies of pinned pages, and the parent's context must be unusable (EIO)
// in the child without disturbing the parent. Exit 0 when every check passed.
#include <infiniband/verbs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

int failures = 0;
#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      std::printf("fork_check: FAIL: " __VA_ARGS__); \
      std::printf("\n");                          \
      failures++;                                 \
    }                                             \
  } while (0)

bool all(const unsigned char* p, size_t n, unsigned char v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != v) return false;
  return true;
}

}  // namespace

int main() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list || n == 0) {
    std::printf("fork_check: FAIL: no device (%s)\n", std::strerror(errno));
    return 1;
  }
  ibv_context* ctx = ibv_open_device(list[0]);
  ibv_free_device_list(list);
  if (!ctx) return std::printf("fork_check: FAIL: open: %s\n", std::strerror(errno)), 1;
  ibv_pd* pd = ibv_alloc_pd(ctx);
  if (!pd) return std::printf("fork_check: FAIL: alloc_pd: %s\n", std::strerror(errno)), 1;
  const size_t kBytes = 3 * 4096;
  auto* buf = static_cast<unsigned char*>(std::malloc(kBytes));
  std::memset(buf, 0xab, kBytes);
  // Registers an unaligned part: whole pages around it are re-backed.
  ibv_mr* mr = ibv_reg_mr(pd, buf + 100, 5000, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) return std::printf("fork_check: FAIL: reg_mr: %s\n", std::strerror(errno)), 1;
  CHECK(all(buf, kBytes, 0xab), "registration changed the buffer");

  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    // The child writes everywhere around the registered buffer and allocates.
    std::memset(buf, 0xcd, kBytes);
    for (int i = 0; i < 1000; i++) std::free(std::malloc(size_t(64 + i)));
    errno = 0;
    ibv_pd* p = ibv_alloc_pd(ctx);
    int bad = 0;
    if (p) bad |= 1;              // the parent's context must not work in the child
    if (errno != EIO) bad |= 2;
    _exit(bad);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: alloc_pd on the parent's context %s",
        WIFEXITED(st) && (WEXITSTATUS(st) & 1) ? "worked" : "did not fail with EIO");
  CHECK(all(buf, kBytes, 0xab), "the child's writes reached the parent's registered pages");
  // The parent's context still works.
  ibv_pd* pd2 = ibv_alloc_pd(ctx);
  CHECK(pd2 != nullptr, "parent alloc_pd after fork: %s", std::strerror(errno));
  if (pd2) ibv_dealloc_pd(pd2);
  CHECK(ibv_dereg_mr(mr) == 0, "dereg_mr");
  CHECK(ibv_dealloc_pd(pd) == 0, "dealloc_pd");
  CHECK(ibv_close_device(ctx) == 0, "close_device");
  std::free(buf);
  if (failures == 0) std::printf("fork_check: all checks passed\n");
  return failures ? 1 : 0;
}
