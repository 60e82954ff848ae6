// Transport counters: what each QP counts, and the device's sums of them.
//
// One list (DVERBS_QP_EVENTS) declares a QP's counters (Qp), the device's totals of the
// same events (DeviceCounters) and the names query_counters, query_qp_counters and the
// telemetry endpoints report, so the three cannot drift apart.
//
// Writers: a QP's counters are written only by its owning engine (single writer: a plain
// load and store, no locked instruction on the fast path); the device's totals by every
// engine (relaxed fetch_add). Readers: any thread, relaxed loads (statistics, not
// synchronisation). A destroyed QP's counts stay in the device's totals.
#pragma once

#include <atomic>
#include <cstdint>

// X(name, meaning)
#define DVERBS_QP_EVENTS(X)                                                                    \
  X(rx_packets, "RoCE packets received by the QP")                                              \
  X(rx_bytes, "bytes of those packets (whole frames)")                                          \
  X(retransmits, "request packets sent again (timeout, sequence NAK, RNR NAK)")                 \
  X(dup_rcvd, "duplicate requests received (answered again, never executed twice)")             \
  X(out_of_sequence, "requests received beyond the expected PSN (dropped)")                     \
  X(seq_naks_sent, "PSN sequence error NAKs sent (one per gap)")                                \
  X(seq_naks_rcvd, "PSN sequence error NAKs received")                                          \
  X(rnr_naks_sent, "receiver-not-ready NAKs sent (no receive posted)")                          \
  X(rnr_naks_rcvd, "receiver-not-ready NAKs received")                                          \
  X(fatal_naks_sent, "invalid request, remote access and remote operation NAKs sent")           \
  X(fatal_naks_rcvd, "invalid request, remote access and remote operation NAKs received")  \
  X(ecn_marked, "requests received congestion-marked (ECN CE, or the port's RED marking)") \
  X(cnp_sent, "congestion notification packets sent (DCQCN notification point)")         \
  X(cnp_rcvd, "congestion notification packets received (DCQCN rate cuts)")

namespace dverbs::pmd::hca {

#define DVERBS_DECLARE_COUNTER(name, meaning) std::atomic<uint64_t> name{0};

// Counts `n` events `name` of QP `qp` (its owning engine only) and adds them to its
// device's total.
#define DVERBS_QP_COUNT(qp, name, n)                                                          \
  do {                                                                                        \
    const uint64_t dv_n_ = (n);                                                               \
    (qp).name.store((qp).name.load(std::memory_order_relaxed) + dv_n_,                        \
                    std::memory_order_relaxed);                                               \
    (qp).hca->counters().name.fetch_add(dv_n_, std::memory_order_relaxed);                    \
  } while (0)

}  // namespace dverbs::pmd::hca

namespace dverbs {
struct Counter;
}

namespace dverbs::pmd::hca {

class Device;
struct Qp;

// The device's counters: the DeviceCounters (QP totals first), then the port's. Fills up to
// `max` entries of `out` and returns how many there are. Context: any thread; reads only.
int device_counters(Device& dev, Counter* out, int max);
// A QP's counters (DVERBS_QP_EVENTS). Context: any thread, the QP alive; reads only.
int qp_counters(const Qp& qp, Counter* out, int max);
// Upper bounds of the two counts, for callers that size arrays.
inline constexpr int kMaxDeviceCounters = 40;
inline constexpr int kMaxQpCounters = 16;

// DPDK telemetry endpoints (/dverbs/...) for the devices of this process; see stats.cc.
// Context: process context (the driver's probe and device destruction).
void telemetry_add(Device* dev);
void telemetry_remove(Device* dev);

// DVERBS_STAT_FILE=PATH: the device's counters, one "name=value" line each, written to
// PATH when the device goes (process exit), for runs too short to be watched with
// dverbs-stat (scripts/fabric). Context: process context.
void write_stat_file(Device& dev);

}  // namespace dverbs::pmd::hca
