// Helpers of the drop-in programs of tests/e2e (built against the system's
// <infiniband/verbs.h>): the dverbs device and a bounded completion poll.
#pragma once

#include <infiniband/verbs.h>

#include <cstring>

namespace {

// The context of dverbs0, or nullptr.
inline ibv_context* open_dverbs() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return nullptr;
  ibv_context* ctx = nullptr;
  for (int i = 0; i < n; ++i)
    if (std::strcmp(ibv_get_device_name(list[i]), "dverbs0") == 0) ctx = ibv_open_device(list[i]);
  ibv_free_device_list(list);
  return ctx;
}

// Polls one completion; 0 when none came within a bounded number of polls.
inline int poll_one(ibv_cq* cq, ibv_wc* wc) {
  for (long i = 0; i < 200000000L; ++i) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n) return n;
  }
  return 0;
}

}  // namespace
