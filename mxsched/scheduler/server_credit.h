// ServerCredit: the server-wide connection limit (server_max_outbound_connections) as a pool
// of credit split into per-thread slots, so two threads acquiring for distinct domains do
// not bounce one counter's cache line.
//
// A thread takes credit from its own slot (one CAS); an empty slot refills from the global
// pool in batches of kBatch; when the pool is empty (near the limit) a thread takes single
// credits from any slot holding spare. So the limit is exact — never exceeded, and
// reachable — while the common case touches only a thread-local line.
//
// Owned by the Selector. Thread-safety: every method is lock-free and safe from any thread.
#ifndef MXSCHED_SCHEDULER_SERVER_CREDIT_H_
#define MXSCHED_SCHEDULER_SERVER_CREDIT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/base/optimization.h"

namespace mxsched {

class ServerCredit {
 public:
  static constexpr size_t kSlots = 64;
  static constexpr int32_t kBatch = 32;

  ServerCredit() : slots_(new Slot[kSlots]) {}

  // Sets the limit; `limited` false turns the check off (kUnlimited). Lowering the limit below
  // the connections held lets the pool go negative until enough come back; held connections
  // are never revoked.
  void SetLimit(int32_t limit, bool limited) {
    const int32_t old = limit_.exchange(limit);
    pool_.fetch_add(int64_t{limit} - old);
    limited_.store(limited);
  }
  bool limited() const { return limited_.load(std::memory_order_relaxed); }

  // Takes one credit; false at the limit. Fast path inline: one CAS on this thread's slot.
  bool Take() {
    Slot& slot = Mine();
    int32_t c = slot.credit.load(std::memory_order_relaxed);
    while (c > 0) {
      if (slot.credit.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel,
                                            std::memory_order_relaxed)) {
        return true;
      }
    }
    return Refill(slot);
  }

  // Gives one credit back (to this thread's slot; a slot holding more than two batches
  // returns one to the pool).
  void Return() {
    Slot& slot = Mine();
    int32_t c = slot.credit.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (ABSL_PREDICT_FALSE(c > 2 * kBatch)) {
      if (slot.credit.compare_exchange_strong(c, c - kBatch, std::memory_order_acq_rel,
                                              std::memory_order_relaxed)) {
        pool_.fetch_add(kBatch, std::memory_order_acq_rel);
      }
    }
  }

  // Credits currently taken (connections held against the limit).
  int64_t active() const;

 private:
  struct alignas(128) Slot {
    std::atomic<int32_t> credit{0};
  };

  // A small dense number per thread, so threads land on different slots. Constant-
  // initialized (no TLS guard on every access); assigned on first use.
  static inline thread_local uint32_t tls_ordinal_ = UINT32_MAX;
  static uint32_t NewOrdinal();

  Slot& Mine() {
    uint32_t o = tls_ordinal_;
    if (ABSL_PREDICT_FALSE(o == UINT32_MAX)) o = tls_ordinal_ = NewOrdinal();
    return slots_[o % kSlots];
  }
  bool Refill(Slot& slot);

  std::atomic<int64_t> pool_{0};  // credit not yet handed to a slot
  std::atomic<int32_t> limit_{0};
  std::atomic<bool> limited_{true};
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SERVER_CREDIT_H_
