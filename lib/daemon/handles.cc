// The per-connection handle table of dverbsd (the analogue of uverbs' idr): opaque
// generation-tagged handles, never pointers, so a client can name only its own objects and
// a stale or forged handle resolves to nothing.
//
// Threads: the owning session thread reserves, publishes, hides and releases slots; the
// doorbell thread resolves handles named in WQEs with get(), lock-free: a slot's tag
// (generation and kind) is published with release after its object pointer. Slots live in
// chunks that are allocated once and never freed while the table exists, so a lookup never
// touches freed memory; an object is freed only after hide() and Server::synchronize().
#include "daemon/internal.h"

namespace dverbs::daemon {

const char* kind_name(Kind k) noexcept {
  static const char* const names[kKinds] = {"-",  "PD", "MR", "CQ", "QP", "SRQ",
                                            "AH", "MW", "XRC domain"};
  return names[int(k) & (kKinds - 1)];
}

// ---------------------------------------------------------------- HandleTable

HandleTable::~HandleTable() {
  for (auto& c : chunks_) delete[] c.load(std::memory_order_relaxed);
}

HandleTable::Slot* HandleTable::slot(Handle h) const noexcept {
  const uint32_t idx = h & ((1u << kIndexBits) - 1);
  Slot* chunk = chunks_[idx >> kChunkBits].load(std::memory_order_acquire);
  return chunk ? &chunk[idx & (kChunk - 1)] : nullptr;
}

Handle HandleTable::reserve() {
  uint32_t idx;
  // Fresh indices first while the free list is short, so a freed handle's slot is reused
  // late and a stale handle keeps failing for long.
  if (!free_.empty() && (free_.size() > 64 || next_ >= (1u << kIndexBits))) {
    idx = free_.front();
    free_.pop_front();
  } else {
    if (next_ >= (1u << kIndexBits)) return 0;
    idx = next_;
    auto& chunk = chunks_[idx >> kChunkBits];
    if (!chunk.load(std::memory_order_relaxed))
      chunk.store(new Slot[kChunk], std::memory_order_release);
    next_++;
  }
  Slot& s = *slot(idx);
  s.used = true;
  s.kind = Kind::none;
  return s.gen << kIndexBits | idx;
}

void HandleTable::publish(Handle h, Kind kind, void* obj) noexcept {
  Slot& s = *slot(h);
  s.kind = kind;
  s.obj.store(obj, std::memory_order_relaxed);
  s.tag.store(s.gen << 8 | uint32_t(kind), std::memory_order_release);
}

void HandleTable::hide(Handle h) noexcept {
  slot(h)->tag.store(0, std::memory_order_release);
}

void HandleTable::release(Handle h) {
  Slot& s = *slot(h);
  s.tag.store(0, std::memory_order_release);
  s.obj.store(nullptr, std::memory_order_relaxed);
  s.used = false;
  s.kind = Kind::none;
  s.gen = (s.gen + 1) & kGenMask;
  if (s.gen == 0) s.gen = 1;
  free_.push_back(h & ((1u << kIndexBits) - 1));
}

void* HandleTable::get(Handle h, Kind kind) const noexcept {
  const uint32_t gen = h >> kIndexBits;
  if (gen == 0 || kind == Kind::none) return nullptr;
  const Slot* s = slot(h);
  if (!s || s->tag.load(std::memory_order_acquire) != (gen << 8 | uint32_t(kind))) return nullptr;
  return s->obj.load(std::memory_order_relaxed);
}

Kind HandleTable::owner_kind(Handle h, void** obj) const noexcept {
  const Slot* s = slot(h);
  if (!s || !s->used || s->gen != h >> kIndexBits) return Kind::none;
  *obj = s->obj.load(std::memory_order_relaxed);
  return s->kind;
}

void HandleTable::collect(Kind kind, std::vector<Handle>* out) const {
  for (uint32_t i = 0; i < next_; i++) {
    const Slot& s = *slot(i);
    if (s.used && s.kind == kind) out->push_back(s.gen << kIndexBits | i);
  }
}

}  // namespace dverbs::daemon
