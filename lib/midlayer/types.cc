// Names of completion statuses and async event types, worded as rdma-core's
// ibv_wc_status_str() and ibv_event_type_str() print them.
#include <cstddef>
#include <iterator>

#include "dverbs/types.h"

namespace dverbs {

const char* wc_status_str(WcStatus s) noexcept {
  static constexpr const char* kNames[] = {
      "success",
      "local length error",
      "local QP operation error",
      "local EE context operation error",
      "local protection error",
      "Work Request Flushed Error",
      "memory management operation error",
      "bad response error",
      "local access error",
      "remote invalid request error",
      "remote access error",
      "remote operation error",
      "transport retry counter exceeded",
      "RNR retry counter exceeded",
      "local RDD violation error",
      "remote invalid RD request",
      "aborted error",
      "invalid EE context number",
      "invalid EE context state",
      "fatal error",
      "response timeout error",
      "general error",
  };
  static_assert(std::size(kNames) == static_cast<size_t>(WcStatus::general_err) + 1);
  const auto i = static_cast<size_t>(s);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

const char* event_type_str(EventType t) noexcept {
  static constexpr const char* kNames[] = {
      "CQ error",
      "local work queue catastrophic error",
      "invalid request local work queue error",
      "local access violation work queue error",
      "communication established",
      "send queue drained",
      "path migrated",
      "path migration request error",
      "local catastrophic error",
      "port active",
      "port error",
      "LID change",
      "P_Key change",
      "SM change",
      "SRQ catastrophic error",
      "SRQ limit reached",
      "last WQE reached",
      "client reregistration",
      "GID table change",
  };
  static_assert(std::size(kNames) == static_cast<size_t>(EventType::gid_change) + 1);
  const auto i = static_cast<size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

}  // namespace dverbs
