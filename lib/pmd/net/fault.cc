#include "pmd/net/fault.h"

namespace dverbs::pmd::net {
namespace {

uint64_t mix(uint64_t x) {
  return SplitMix64(x).next();
}

bool frame_is_private(const rte_mbuf* m) {
  for (const rte_mbuf* s = m; s; s = s->next)
    if (!RTE_MBUF_DIRECT(s) || rte_mbuf_refcnt_read(s) != 1) return false;
  return true;
}

}  // namespace

FaultInjector::FaultInjector(const FaultSpec& spec, uint64_t stream, rte_mempool* dup_pool)
    : spec_(spec), rng_(mix(spec.seed) ^ mix(~stream)), pool_(dup_pool) {}

FaultInjector::~FaultInjector() {
  rte_pktmbuf_free(held_);
}

uint16_t FaultInjector::max_input(uint16_t cap) const noexcept {
  uint16_t room = held_ ? uint16_t(cap - (cap > 0)) : cap;
  if (spec_.dup > 0 && room > 1) room = uint16_t(room / 2);
  return room;
}

bool FaultInjector::corrupt(rte_mbuf** mp) noexcept {
  rte_mbuf* m = *mp;
  const uint64_t r = rng_.next();  // drawn even when unused: decisions stay in step
  if (rte_pktmbuf_pkt_len(m) <= kEthHdrLen) return false;
  if (!frame_is_private(m)) {
    rte_mbuf* c = rte_pktmbuf_copy(m, pool_, 0, UINT32_MAX);
    if (!c) return false;
    rte_pktmbuf_free(m);
    *mp = m = c;
  }
  uint32_t off = kEthHdrLen + uint32_t((r & 0xffffffff) % (rte_pktmbuf_pkt_len(m) - kEthHdrLen));
  const uint8_t bit = uint8_t(1u << ((r >> 32) & 7));
  for (rte_mbuf* s = m; s; s = s->next) {
    if (off < s->data_len) {
      *rte_pktmbuf_mtod_offset(s, uint8_t*, off) ^= bit;
      return true;
    }
    off -= s->data_len;
  }
  return false;
}

uint16_t FaultInjector::apply(rte_mbuf* const* in, uint16_t nb, rte_mbuf** out, uint16_t cap,
                              FaultCounts* counts) noexcept {
  rte_mbuf* const held_before = held_;
  // Outputs other than duplicates never exceed nb (+1 for a frame held before this call):
  // a frame passing the held one emits two, a frame being held emits none.
  const uint32_t base = uint32_t(nb) + (held_before ? 1 : 0);
  uint32_t dups = 0;
  uint16_t o = 0;
  for (uint16_t i = 0; i < nb; ++i) {
    rte_mbuf* m = in[i];
    if (spec_.loss > 0 && rng_.uniform() < spec_.loss) {
      rte_pktmbuf_free(m);
      ++counts->lost;
      continue;
    }
    if (spec_.corrupt > 0 && rng_.uniform() < spec_.corrupt && corrupt(&m)) ++counts->corrupted;
    rte_mbuf* copy = nullptr;
    if (spec_.dup > 0 && rng_.uniform() < spec_.dup && base + dups + 1 <= cap) {
      copy = rte_pktmbuf_copy(m, pool_, 0, UINT32_MAX);
      if (copy) {
        ++dups;
        ++counts->duplicated;
      }
    }
    const bool hold = spec_.reorder > 0 && rng_.uniform() < spec_.reorder;
    if (held_) {  // m overtakes the held frame
      out[o++] = m;
      out[o++] = held_;
      held_ = nullptr;
    } else if (hold) {
      held_ = m;
      ++counts->reordered;
    } else {
      out[o++] = m;
    }
    if (copy) out[o++] = copy;
  }
  // Nothing overtook a frame held since an earlier call: let it go now.
  if (held_ && held_ == held_before) {
    out[o++] = held_;
    held_ = nullptr;
  }
  return o;
}

}  // namespace dverbs::pmd::net
