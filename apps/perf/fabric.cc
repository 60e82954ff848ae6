#include "perf/fabric.h"

#include <string>

#include "perf/common.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/hca.h"
#include "pmd/hca/objects.h"

namespace dverbs::perf {

void Fabric::open(uint32_t cq_entries, size_t buf_bytes) {
  auto c = Context::open();
  if (!c) die("cannot open a dverbs device (see the DVERBS_* messages above)", c.error());
  ctx = c.take();
  if (!no_pin) pinned = pin_threads();
  PortAttr pa;
  if (int e = ctx.query_port(1, &pa)) die("query_port", e);
  mtu = pa.active_mtu;
  if (int e = ctx.query_gid(1, 0, &gid)) die("query_gid", e);
  auto p = Pd::alloc(ctx);
  if (!p) die("alloc_pd", p.error());
  pd = p.take();
  auto s = Cq::create(ctx, cq_entries);
  if (!s) die("create_cq", s.error());
  send_cq = s.take();
  auto r = Cq::create(ctx, cq_entries);
  if (!r) die("create_cq", r.error());
  recv_cq = r.take();
  sbuf.assign(buf_bytes, 0x5a);
  rbuf.assign(buf_bytes, 0);
  auto sm = Mr::reg(pd, sbuf.data(), buf_bytes, kAccess);
  if (!sm) die("reg_mr", sm.error());
  smr = sm.take();
  auto rm = Mr::reg(pd, rbuf.data(), buf_bytes, kAccess);
  if (!rm) die("reg_mr", rm.error());
  rmr = rm.take();
}

void Fabric::add_pairs(uint32_t n, QpType type, uint32_t sq_depth, uint32_t rq_depth,
                       uint32_t max_inline) {
  const size_t first = senders.size();
  QpInit init;
  init.type = type;
  init.cap = {sq_depth, 1, 1, 1, max_inline};
  for (uint32_t i = 0; i < n; i++) {
    auto q = Qp::create(pd, send_cq, send_cq, init);
    if (!q) die("create_qp (sender " + std::to_string(i) + ")", q.error());
    senders.push_back(q.take());
  }
  // Room for one repost batch more than the receives kept posted: the responder pushes a
  // receive completion before it retires the WQE's slot (resp.cc, complete_recv), so a
  // repost right after the completion can find the slot still taken.
  init.cap = {1, rq_depth + 64, 1, 1, 0};
  for (uint32_t i = 0; i < n; i++) {
    auto q = Qp::create(pd, recv_cq, recv_cq, init);
    if (!q) die("create_qp (receiver " + std::to_string(i) + ")", q.error());
    receivers.push_back(q.take());
  }
  for (size_t i = first; i < senders.size(); i++) {
    const uint32_t spsn = uint32_t(0x1000 + i * 7), rpsn = uint32_t(0x8000 + i * 13);
    if (int e = connect_qp(senders[i], type, gid, receivers[i].qp_num(), spsn, rpsn, mtu, kAccess))
      die("connect sender", e);
    if (int e = connect_qp(receivers[i], type, gid, senders[i].qp_num(), rpsn, spsn, mtu, kAccess))
      die("connect receiver", e);
  }
}

void Fabric::add_open_loop_senders(uint32_t n, uint32_t sq_depth, uint32_t max_inline) {
  QpInit init;
  init.type = QpType::uc;
  init.cap = {sq_depth, 1, 1, 1, max_inline};
  for (uint32_t i = 0; i < n; i++) {
    auto q = Qp::create(pd, send_cq, send_cq, init);
    if (!q) die("create_qp", q.error());
    senders.push_back(q.take());
    // A QPN no QP of this device has (they are small indexes with a generation above).
    if (int e =
            connect_qp(senders.back(), QpType::uc, gid, 0xabc000 + i, 0x100, 0x100, mtu, kAccess))
      die("connect", e);
  }
}

// Engine placement is the embedded HCA's (a checked downcast: another driver's QP stops
// the run instead of being misread).
uint32_t Fabric::engine_of(const Qp& qp) {
  const pmd::hca::Qp* h = pmd::hca::qp_of(qp.raw());
  if (!h) die("this scenario measures the embedded HCA; run it with DVERBS_DAEMON=off");
  return h->engine->queue();
}

void Fabric::check_pairs_share_engines() const {
  for (size_t i = 0; i < senders.size() && i < receivers.size(); i++)
    if (engine_of(senders[i]) != engine_of(receivers[i]))
      die("pair " + std::to_string(i) + " is split over engines " +
          std::to_string(engine_of(senders[i])) + " and " +
          std::to_string(engine_of(receivers[i])) + " (loopback needs both on one queue)");
}

// The QPs' counters through the driver API (DeviceOps::query_qp_counters), summed; 0 where
// the driver keeps none.
void Fabric::add_qp_counters(std::map<std::string, std::vector<double>>* r) const {
  static const std::map<std::string, std::string> kKeys = {{"retransmits", "retransmits"},
                                                           {"rnr_naks_rcvd", "rnr_naks"},
                                                           {"seq_naks_sent", "seq_naks"},
                                                           {"dup_rcvd", "dups"}};
  std::map<std::string, double> sum;
  for (const auto& [name, key] : kKeys) sum[key] = 0;
  std::vector<Counter> counters;
  for (const auto* v : {&senders, &receivers})
    for (const Qp& q : *v) {
      if (q.query_counters(&counters) != 0) continue;
      for (const Counter& c : counters)
        if (auto k = kKeys.find(c.name); k != kKeys.end()) sum[k->second] += double(c.value);
    }
  for (const auto& [key, value] : sum) (*r)[key] = {value};
}

}  // namespace dverbs::perf
