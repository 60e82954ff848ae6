// Lock-free queues of the soft HCA.
//
// WorkQueue — a send or receive queue: any number of posting threads claim and publish
// slots (multi-producer), one engine consumes them in order, and slots are retired in order
// by the engine when their work request completes. The ring is full while
// (claimed - retired) == capacity, the count asked for (the slots are a power of two, the
// spare ones unused): posting then fails with ENOMEM, never waits.
//
// MpmcQueue — the bounded MPMC ring of lib/base (base/mpmc_ring.h): CQs (engines push,
// any thread polls) and engine kick rings (posting threads push QPs). SpinLock is
// base/spinlock.h's.
//
// Thread safety: as stated per method. No method allocates, sleeps or makes a syscall.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "base/mpmc_ring.h"
#include "base/spinlock.h"

namespace dverbs::pmd::hca {

using base::kCacheLine;
using base::next_pow2;
using base::SpinLock;
template <class T>
using MpmcQueue = base::MpmcRing<T>;

template <class T>
class WorkQueue {
 public:
  struct Slot {
    std::atomic<uint64_t> seq{0};  // index+1 once published for that index
    T wqe;
  };

  // Context: process context. Holds exactly `capacity` entries (0: none) in a power of two
  // of slots.
  bool init(uint32_t capacity) {
    limit_ = capacity;
    size_ = next_pow2(capacity < 1 ? 1 : capacity);
    mask_ = size_ - 1;
    slots_.reset(new (std::nothrow) Slot[size_]);
    return slots_ != nullptr;
  }
  // What fits. Context: any.
  uint32_t capacity() const { return limit_; }

  // Claims the next slot, or returns nullptr when the queue is full.
  // Context: any thread, concurrently; lock-free.
  T* claim(uint64_t* index) noexcept {
    uint64_t pos = head_.load(std::memory_order_relaxed);
    for (;;) {
      if (pos - retired_.load(std::memory_order_acquire) >= limit_) return nullptr;
      if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_acq_rel,
                                      std::memory_order_relaxed))
        break;
    }
    *index = pos;
    return &slots_[pos & mask_].wqe;
  }
  // Makes a claimed slot visible to the consumer. Context: the claiming thread.
  void publish(uint64_t index) noexcept {
    slots_[index & mask_].seq.store(index + 1, std::memory_order_release);
  }

  // The WQE at `index` if it is published, else nullptr. Context: the consumer engine.
  T* peek(uint64_t index) noexcept {
    Slot& s = slots_[index & mask_];
    return s.seq.load(std::memory_order_acquire) == index + 1 ? &s.wqe : nullptr;
  }
  // The WQE at an index known to be published and not yet retired. Context: consumer.
  T& at(uint64_t index) noexcept { return slots_[index & mask_].wqe; }
  // Frees the oldest slot for producers. Context: the consumer engine.
  void retire_one() noexcept { retired_.store(retired_.load(std::memory_order_relaxed) + 1,
                                              std::memory_order_release); }
  uint64_t retired() const noexcept { return retired_.load(std::memory_order_relaxed); }
  // Claimed so far (may include slots still being written). Context: any.
  uint64_t claimed() const noexcept { return head_.load(std::memory_order_acquire); }

 private:
  alignas(kCacheLine) std::atomic<uint64_t> head_{0};
  alignas(kCacheLine) std::atomic<uint64_t> retired_{0};
  alignas(kCacheLine) std::unique_ptr<Slot[]> slots_;
  uint32_t size_ = 0, mask_ = 0, limit_ = 0;
};

// A lock-free LIFO of the indices [0, n): a free list for a pool of preallocated objects.
// A bounded ring used as a pool can fail for a moment while another thread is half-way
// through a push or a pop (pop sees "empty", push "full"), which loses pool entries; this
// stack never fails while it holds an index and never loses one. The head packs a 32-bit
// generation above the top index + 1, so a pop that read a stale `next` fails its CAS
// (no ABA). Context: any thread, never sleeps.
class IndexStack {
 public:
  bool init(uint32_t n) {  // all n indices present, 0 on top
    next_.reset(new (std::nothrow) std::atomic<uint32_t>[n]);
    if (!next_ && n) return false;
    for (uint32_t i = 0; i < n; i++)
      next_[i].store(i + 1 < n ? i + 2 : 0, std::memory_order_relaxed);  // index + 1; 0 ends
    head_.store(n ? 1 : 0, std::memory_order_release);
    return true;
  }
  bool pop(uint32_t* index) noexcept {
    uint64_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t top = uint32_t(h);
      if (top == 0) return false;
      const uint32_t next = next_[top - 1].load(std::memory_order_relaxed);
      const uint64_t nh = ((h >> 32) + 1) << 32 | next;
      if (head_.compare_exchange_weak(h, nh, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        *index = top - 1;
        return true;
      }
    }
  }
  void push(uint32_t index) noexcept {
    uint64_t h = head_.load(std::memory_order_relaxed);
    for (;;) {
      next_[index].store(uint32_t(h), std::memory_order_relaxed);
      const uint64_t nh = ((h >> 32) + 1) << 32 | (index + 1);
      if (head_.compare_exchange_weak(h, nh, std::memory_order_release,
                                      std::memory_order_relaxed))
        return;
    }
  }

 private:
  std::unique_ptr<std::atomic<uint32_t>[]> next_;
  alignas(64) std::atomic<uint64_t> head_{0};
};

}  // namespace dverbs::pmd::hca
