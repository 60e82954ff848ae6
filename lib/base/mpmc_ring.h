// A bounded multi-producer multi-consumer ring after Dmitry Vyukov (sequence-numbered
// cells), the one every layer uses: CQs and engine kick rings in the soft HCA, the
// midlayer's async-event and ready-CQ rings.
//
// Cell `seq` == pos: free for the producer of pos; pos + 1: filled; pos + capacity:
// consumed, free for the producer of the next lap. push() and pop() are the classic
// queue. The two-phase calls split them so that a slot can stay owned by its consumer
// until the item is fully processed (reserve/at/publish, claim/at/release): the
// midlayer's async-event fence waits for release(), not for claim().
//
// kSeqCst: the producer side (reserve, publish) and the observers (head_ready, backlog,
// enqueue_position) use seq_cst instead of acquire/release, for users that pair the ring
// with other atomics in a Dekker-style handshake (the midlayer's waking rule). On x86 it
// costs an xchg at publish instead of a plain store.
//
// Thread safety: as stated per method. No method allocates (except init), sleeps or makes
// a system call; a full ring fails the push, an empty one the pop.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace dverbs::base {

constexpr size_t kCacheLine = 64;

// The smallest power of two >= v (1 for 0). Context: any.
constexpr uint32_t next_pow2(uint32_t v) noexcept {
  if (v <= 1) return 1;
  return 1u << (32 - __builtin_clz(v - 1));
}

template <class T, bool kSeqCst = false>
class MpmcRing {
  static constexpr std::memory_order kEnq =
      kSeqCst ? std::memory_order_seq_cst : std::memory_order_relaxed;
  static constexpr std::memory_order kPub =
      kSeqCst ? std::memory_order_seq_cst : std::memory_order_release;
  static constexpr std::memory_order kObs =
      kSeqCst ? std::memory_order_seq_cst : std::memory_order_acquire;

 public:
  // Allocates `capacity` cells, rounded up to a power of two (at least 2). False when the
  // allocation failed. Context: process context, before any other call.
  bool init(uint32_t capacity) {
    size_ = next_pow2(capacity < 2 ? 2 : capacity);
    mask_ = size_ - 1;
    cells_.reset(new (std::nothrow) Cell[size_]);
    if (!cells_) return false;
    for (uint32_t i = 0; i < size_; i++) cells_[i].seq.store(i, std::memory_order_relaxed);
    return true;
  }
  uint32_t capacity() const noexcept { return size_; }

  // Copies `v` in. False when full. Context: any thread; lock-free.
  bool push(const T& v) noexcept {
    uint64_t pos;
    if (!reserve(pos)) return false;
    at(pos) = v;
    publish(pos);
    return true;
  }
  // Copies the oldest item out. False when empty. Context: any thread; lock-free.
  bool pop(T* out) noexcept {
    uint64_t pos;
    if (!claim(pos)) return false;
    *out = at(pos);
    release(pos);
    return true;
  }

  // Takes the next producer position. False when full. Context: any thread; lock-free.
  bool reserve(uint64_t& pos) noexcept {
    uint64_t p = enq_.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t seq = cells_[p & mask_].seq.load(std::memory_order_acquire);
      const auto diff = static_cast<int64_t>(seq - p);
      if (diff == 0) {
        if (enq_.compare_exchange_weak(p, p + 1, kEnq, std::memory_order_relaxed)) {
          pos = p;
          return true;
        }
      } else if (diff < 0) {
        return false;
      } else {
        p = enq_.load(std::memory_order_relaxed);
      }
    }
  }
  // The item at a reserved or claimed position. Context: its producer or consumer.
  T& at(uint64_t pos) noexcept { return cells_[pos & mask_].value; }
  // Makes a reserved position visible to consumers. Context: its producer.
  void publish(uint64_t pos) noexcept { cells_[pos & mask_].seq.store(pos + 1, kPub); }

  // Takes the oldest published position. False when the head item is not published yet.
  // Context: any thread; lock-free.
  bool claim(uint64_t& pos) noexcept {
    uint64_t p = deq_.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t seq = cells_[p & mask_].seq.load(std::memory_order_acquire);
      const auto diff = static_cast<int64_t>(seq - (p + 1));
      if (diff == 0) {
        if (deq_.compare_exchange_weak(p, p + 1, std::memory_order_relaxed,
                                       std::memory_order_relaxed)) {
          pos = p;
          return true;
        }
      } else if (diff < 0) {
        return false;
      } else {
        p = deq_.load(std::memory_order_relaxed);
      }
    }
  }
  // Frees a claimed position for the producer of the next lap. Context: its consumer.
  void release(uint64_t pos) noexcept {
    cells_[pos & mask_].seq.store(pos + size_, std::memory_order_release);
  }

  // Position `pos` (already reserved) has been claimed and released. Context: any.
  bool done(uint64_t pos) const noexcept {
    return cells_[pos & mask_].seq.load(std::memory_order_acquire) >= pos + size_;
  }
  // The oldest position is published (a claim would succeed). Context: any.
  bool head_ready() const noexcept {
    const uint64_t p = deq_.load(kObs);
    return cells_[p & mask_].seq.load(kObs) == p + 1;
  }
  // The next position a producer will reserve. Context: any.
  uint64_t enqueue_position() const noexcept { return enq_.load(kObs); }
  // Reserved and not yet claimed (exact when nothing moves). Context: any.
  uint64_t backlog() const noexcept {
    const uint64_t d = deq_.load(kObs);  // first: d <= e below
    const uint64_t e = enq_.load(kObs);
    return e - d;
  }
  // Approximate count, for statistics. Context: any.
  uint64_t size_approx() const noexcept {
    return enq_.load(std::memory_order_relaxed) - deq_.load(std::memory_order_relaxed);
  }

 private:
  struct Cell {
    std::atomic<uint64_t> seq;
    T value;  // default-initialised: written by its producer before it is read
  };
  alignas(kCacheLine) std::atomic<uint64_t> enq_{0};
  alignas(kCacheLine) std::atomic<uint64_t> deq_{0};
  alignas(kCacheLine) std::unique_ptr<Cell[]> cells_;
  uint32_t size_ = 0, mask_ = 0;
};

}  // namespace dverbs::base
