#include "mxsched/scheduler/slot_waiters.h"

namespace mxsched {

void SlotWaiters::Add(SlotWaiter* waiter, DomainEntry* domain, bool front) {
  MutexLock lock(&mu_);
  if (front) {
    queue_.push_front({waiter, domain});
  } else {
    queue_.push_back({waiter, domain});
  }
  count_.fetch_add(1, std::memory_order_acq_rel);
}

bool SlotWaiters::Cancel(SlotWaiter* waiter) {
  MutexLock lock(&mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->waiter == waiter) {
      queue_.erase(it);
      count_.fetch_sub(1, std::memory_order_acq_rel);
      return true;
    }
  }
  return false;
}

std::vector<SlotWaiter*> SlotWaiters::Take(
    const std::function<bool(const DomainEntry*)>& match, bool all) {
  std::vector<SlotWaiter*> out;
  MutexLock lock(&mu_);
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!match(it->domain)) {
      ++it;
      continue;
    }
    out.push_back(it->waiter);
    it = queue_.erase(it);
    count_.fetch_sub(1, std::memory_order_acq_rel);
    if (!all) break;
  }
  return out;
}

std::vector<SlotWaiter*> SlotWaiters::TakeAll() {
  std::vector<SlotWaiter*> out;
  MutexLock lock(&mu_);
  for (const Waiting& w : queue_) out.push_back(w.waiter);
  queue_.clear();
  count_.store(0, std::memory_order_release);
  return out;
}

size_t SlotWaiters::size() const {
  MutexLock lock(&mu_);
  return queue_.size();
}

}  // namespace mxsched
