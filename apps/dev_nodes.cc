// /dev/infiniband/uverbsN for dverbs devices, in a mount namespace of the program's own.
//
// UCX lists a verbs device only if "/dev/infiniband/" + ibv_device::dev_name is a character
// device the process can open for reading and writing (uct_ib_device_is_accessible in
// src/uct/ib/base/ib_md.c, UCX 1.13): a permission check on the kernel's uverbs node. It
// never opens the node; everything else goes through libibverbs. dverbs has no kernel
// driver and so no uverbs node, and names its devices uverbs0, uverbs1... in registration
// order (lib/verbs/ibverbs/device.cc). dverbs-run therefore gives the program what that
// check asks for, without changing what the rest of the host sees:
//   1. unshare(CLONE_NEWNS), with mounts propagating from the host but not back (MS_SLAVE
//      on /, or on /dev when / is not a mount point, as under a plain chroot);
//   2. a small tmpfs on /dev/infiniband, private to the namespace (the directory itself is
//      created on the host's /dev when it is missing: an empty directory, the one trace);
//   3. character nodes uverbs0..uverbs{kDevNodes-1}, mode 0666 as rdma-core's udev rules
//      give uverbs nodes, with the null device's numbers: dverbs does nothing through them,
//      and a program that opened one would read nothing and write nowhere.
// Only root may do this (mount and mknod). A host with RDMA hardware has its own
// /dev/infiniband/uverbs0, which already passes the check: then nothing is done.
#include "dev_nodes.h"

#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace dverbs::run {

namespace {

constexpr const char* kDir = "/dev/infiniband";
constexpr int kDevNodes = 4;  // devices a dverbs process registers: one per port, rarely more

std::string why(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

bool make_nodes(std::string* err) {
  if (unshare(CLONE_NEWNS) != 0) {
    *err = why("unshare(CLONE_NEWNS)");
    return false;
  }
  // Our mounts stay in this namespace; the host's later mounts still reach the program.
  // Under chroot(2) the root is often not a mount point (EINVAL); then the mount holding
  // /dev (a bind mount there) is made a slave instead: the tmpfs below lands in it.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0) {
    if (errno != EINVAL || mount(nullptr, "/dev", nullptr, MS_REC | MS_SLAVE, nullptr) != 0) {
      *err = why("mount --make-rslave / (and /dev)");
      return false;
    }
  }
  if (mkdir(kDir, 0755) != 0 && errno != EEXIST) {
    *err = why("mkdir /dev/infiniband");
    return false;
  }
  if (mount("dverbs", kDir, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=16k") != 0) {
    *err = why("mount tmpfs on /dev/infiniband");
    return false;
  }
  const mode_t old = umask(0);
  for (int i = 0; i < kDevNodes; ++i) {
    const std::string node = std::string(kDir) + "/uverbs" + std::to_string(i);
    if (mknod(node.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
      *err = why(("mknod " + node).c_str());
      umask(old);
      return false;
    }
  }
  umask(old);
  return true;
}

}  // namespace

bool parse_dev_nodes(const char* s, DevNodes* out) {
  if (!s || !*s || std::strcmp(s, "auto") == 0)
    *out = DevNodes::auto_;
  else if (std::strcmp(s, "on") == 0)
    *out = DevNodes::on;
  else if (std::strcmp(s, "off") == 0)
    *out = DevNodes::off;
  else
    return false;
  return true;
}

bool publish_dev_nodes(DevNodes mode, std::string* err) {
  if (mode == DevNodes::off) return true;
  struct stat st;
  const std::string first = std::string(kDir) + "/uverbs0";
  if (stat(first.c_str(), &st) == 0 && S_ISCHR(st.st_mode)) return true;  // the host has one
  if (mode == DevNodes::auto_ && geteuid() != 0) return true;
  if (make_nodes(err)) return true;
  if (mode == DevNodes::auto_) {  // e.g. root in a container without CAP_SYS_ADMIN
    err->clear();
    return true;
  }
  *err = "--dev-nodes on: " + *err + " (root is needed to publish /dev/infiniband/uverbsN)";
  return false;
}

}  // namespace dverbs::run
