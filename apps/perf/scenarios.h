// The scenarios of dverbs-perf (run in the parent) and the measurement children they start.
// Each scenario returns the process exit status; each child prints one RESULT line.
#pragma once

#include "perf/common.h"

namespace dverbs::perf {

int scenario_rate(const Options& o);
int scenario_latency(const Options& o);
int scenario_bandwidth(const Options& o);
int scenario_scaling(const Options& o);
int scenario_qps(const Options& o);
int scenario_idle(const Options& o);

int child_rate(const Options& o);       // RC messages between two QPs (rate.cc)
int child_raw(const Options& o);        // the raw packet-I/O floor (raw.cc)
int child_lat(const Options& o);        // memif ping-pong, --role server|client (latency.cc)
int child_lat_loop(const Options& o);   // two QPs of one process over a loopback port
int child_udp(const Options& o);        // kernel UDP ping-pong, --role server|client
int child_bandwidth(const Options& o);  // RDMA WRITE stream (bandwidth.cc)
int child_scaling(const Options& o);    // n lcores, --port null|loop (scaling.cc)
int child_qps(const Options& o);        // --nqps N pairs, rate and RSS (qps.cc)
int child_idle(const Options& o);       // CPU while idle, first message after (idle.cc)

// Shared by scenarios: "MET"/"not met" against a target, and the report header.
const char* verdict(bool met);
void print_header(const Options& o, const char* title);

// Forwards the common measurement options of the parent to a child's argument list.
std::vector<std::string> forward(const Options& o, std::vector<std::string> args);

}  // namespace dverbs::perf
