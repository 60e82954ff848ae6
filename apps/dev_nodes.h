// dverbs-run's /dev/infiniband nodes for programs that look for a uverbs character device
// before they use a verbs device (UCX: uct_ib_device_is_accessible). See dev_nodes.cc.
#pragma once

#include <string>

namespace dverbs::run {

enum class DevNodes { off, on, auto_ };

// Parses "on", "off" or "auto" (DVERBS_DEV_NODES / --dev-nodes). False on anything else.
bool parse_dev_nodes(const char* s, DevNodes* out);

// Gives this process (and the program it executes) a private mount namespace in which
// /dev/infiniband/uverbs0..uverbs{kDevNodes-1} exist as character devices. `auto_` does it
// when the process may (root) and the host has no /dev/infiniband/uverbs0 of its own, and
// is silent otherwise; `on` fails with a line in *err when it cannot. Returns true when the
// program may run (nodes published, or not wanted).
// Context: dverbs-run's main thread before exec, while the process has no other thread
// (unshare(CLONE_NEWNS) needs that).
bool publish_dev_nodes(DevNodes mode, std::string* err);

}  // namespace dverbs::run
