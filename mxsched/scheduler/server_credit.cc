#include "mxsched/scheduler/server_credit.h"

#include <algorithm>

namespace mxsched {

uint32_t ServerCredit::NewOrdinal() {
  static std::atomic<uint32_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) % (UINT32_MAX - 1);
}

bool ServerCredit::Refill(Slot& slot) {
  // Refill from the pool in a batch.
  int64_t pool = pool_.load(std::memory_order_relaxed);
  while (pool > 0) {
    const int64_t take = std::min<int64_t>(pool, kBatch);
    if (pool_.compare_exchange_weak(pool, pool - take, std::memory_order_acq_rel,
                                    std::memory_order_relaxed)) {
      if (take > 1) {
        slot.credit.fetch_add(static_cast<int32_t>(take - 1), std::memory_order_acq_rel);
      }
      return true;
    }
  }
  // Pool empty: near the limit, take a single credit from any slot that holds spare.
  for (size_t i = 0; i < kSlots; ++i) {
    Slot& other = slots_[i];
    int32_t oc = other.credit.load(std::memory_order_relaxed);
    while (oc > 0) {
      if (other.credit.compare_exchange_weak(oc, oc - 1, std::memory_order_acq_rel,
                                             std::memory_order_relaxed)) {
        return true;
      }
    }
  }
  return false;
}

int64_t ServerCredit::active() const {
  int64_t held = pool_.load();
  for (size_t i = 0; i < kSlots; ++i) held += slots_[i].credit.load();
  return limit_.load() - held;
}

}  // namespace mxsched
