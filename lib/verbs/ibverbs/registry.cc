// Handle tables and the registry of live objects (uverbs' idr, in user space).
//
// The registry maps an object's address to (kind, owning context, handle). Lookups hash
// the address only, so validating an application pointer never reads through it. Every
// entry also sits in its context's handle table; the two agree by construction (both are
// changed together under g_lock) and handles carry a generation so that a recycled slot
// never matches an old handle.
#include <cerrno>
#include <new>
#include <unordered_map>

#include "verbs/ibverbs/internal.h"

namespace dverbs::ibv {

namespace {

struct Entry {
  Kind kind;
  Context* ctx;
  uint32_t handle;
};

// Never destroyed: process-exit clean-up and late callers may still use it.
std::unordered_map<const void*, Entry>& registry() {
  static auto* r = new std::unordered_map<const void*, Entry>();
  return *r;
}

}  // namespace

mid::Mutex& g_lock() {
  static auto* m = new mid::Mutex();
  return *m;
}

const char* kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::context:
      return "context";
    case Kind::channel:
      return "completion channel";
    case Kind::pd:
      return "PD";
    case Kind::mr:
      return "MR";
    case Kind::ah:
      return "AH";
    case Kind::cq:
      return "CQ";
    case Kind::srq:
      return "SRQ";
    case Kind::qp:
      return "QP";
    case Kind::td:
      return "TD";
    case Kind::mw:
      return "MW";
    case Kind::xrcd:
      return "XRC domain";
    case Kind::flow:
      return "flow";
  }
  return "?";
}

// ---------------------------------------------------------------- HandleTable
uint32_t HandleTable::insert(void* obj, Kind kind) noexcept {
  try {
    uint32_t idx;
    if (!free_.empty()) {
      idx = free_.back();
      free_.pop_back();
    } else {
      if (slots_.size() > kIndexMask) return UINT32_MAX;
      idx = uint32_t(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[idx];
    s.obj = obj;
    s.kind = kind;
    s.gen = uint16_t((s.gen + 1) & 0xfff);
    if (s.gen == 0) s.gen = 1;
    ++live_;
    return uint32_t(s.gen) << kIndexBits | idx;
  } catch (...) {
    return UINT32_MAX;
  }
}

bool HandleTable::matches(uint32_t handle, const void* obj, Kind kind) const noexcept {
  const uint32_t idx = handle & kIndexMask;
  if (idx >= slots_.size()) return false;
  const Slot& s = slots_[idx];
  return s.obj == obj && s.kind == kind && s.gen == (handle >> kIndexBits);
}

void HandleTable::erase(uint32_t handle) noexcept {
  const uint32_t idx = handle & kIndexMask;
  if (idx >= slots_.size() || !slots_[idx].obj) return;
  slots_[idx].obj = nullptr;
  --live_;
  try {
    free_.push_back(idx);
  } catch (...) {
    // The slot is leaked for reuse, nothing else.
  }
}

std::vector<void*> HandleTable::objects(Kind kind) const {
  std::vector<void*> out;
  for (size_t i = slots_.size(); i-- > 0;)
    if (slots_[i].obj && slots_[i].kind == kind) out.push_back(slots_[i].obj);
  return out;
}

// ---------------------------------------------------------------- registry
bool registry_add(const void* obj, Kind kind, Context* ctx, uint32_t handle) noexcept {
  try {
    return registry().emplace(obj, Entry{kind, ctx, handle}).second;
  } catch (...) {
    return false;
  }
}

void registry_remove(const void* obj) noexcept {
  registry().erase(obj);
}

Context* registry_find(const void* obj, Kind kind) noexcept {
  if (!obj) return nullptr;
  auto& r = registry();
  auto it = r.find(obj);
  if (it == r.end() || it->second.kind != kind) return nullptr;
  Context* ctx = it->second.ctx;
  // The context's table must agree (it always does unless memory was corrupted).
  if (kind != Kind::context && !ctx->handles.matches(it->second.handle, obj, kind)) return nullptr;
  return ctx;
}

std::vector<Context*> registry_contexts() {
  std::vector<Context*> out;
  for (auto& [obj, e] : registry())
    if (e.kind == Kind::context) out.push_back(e.ctx);
  return out;
}

int track(Context* ctx, void* obj, Kind kind, uint32_t* handle) noexcept {
  const uint32_t h = ctx->handles.insert(obj, kind);
  if (h == UINT32_MAX) return ENOMEM;
  if (!registry_add(obj, kind, ctx, h)) {
    ctx->handles.erase(h);
    return ENOMEM;
  }
  *handle = h;
  return 0;
}

void untrack(Context* ctx, void* obj, uint32_t handle) noexcept {
  registry_remove(obj);
  ctx->handles.erase(handle);
}

}  // namespace dverbs::ibv
