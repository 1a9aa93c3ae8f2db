// SlotWaiter, the callback interface of a caller waiting for a connection slot (DESIGN §1
// rule 8), and SlotWaiters, the selector's queue of them.
//
// Owned by the Selector. Thread-safety: every method is safe from any thread; the queue is
// guarded by one mutex, and `maybe_nonempty` is a lock-free hint read on every release.
#ifndef MXSCHED_SCHEDULER_SLOT_WAITERS_H_
#define MXSCHED_SCHEDULER_SLOT_WAITERS_H_

#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "mxsched/base/mutex.h"

namespace mxsched {

struct DomainEntry;

// Rule 8: a caller that would rather wait for a slot than take "deferred" registers a
// SlotWaiter. Wake() is called once, from whichever thread released the slot (or reported
// the recovery), so it must be cheap and thread-safe — typically: queue and poke an eventfd.
class SlotWaiter {
 public:
  virtual ~SlotWaiter() = default;
  virtual void Wake() = 0;
};

class SlotWaiters {
 public:
  // Queues `waiter` for `domain`, at the back (or the front).
  void Add(SlotWaiter* waiter, DomainEntry* domain, bool front);
  // True if `waiter` was queued (and now is not).
  bool Cancel(SlotWaiter* waiter);
  // Removes and returns, in FIFO order, the first waiter (or every waiter, `all`) for which
  // `match(domain)` holds. `match` runs under the queue's mutex.
  std::vector<SlotWaiter*> Take(const std::function<bool(const DomainEntry*)>& match, bool all);
  // Removes and returns every waiter.
  std::vector<SlotWaiter*> TakeAll();
  size_t size() const;
  // False only if no waiter is queued (a release then skips the queue's mutex).
  bool maybe_nonempty() const { return count_.load(std::memory_order_acquire) != 0; }

 private:
  struct Waiting {
    SlotWaiter* waiter;
    DomainEntry* domain;
  };
  mutable Mutex mu_;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> count_{0};
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SLOT_WAITERS_H_
