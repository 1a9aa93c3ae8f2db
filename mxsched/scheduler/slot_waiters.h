// SlotWaiter, the callback of a caller waiting for a connection slot (docs/DESIGN.md §5), and
// SlotWaiters, the selector's first-come-first-served queues of them.
//
// Fair hand-off: a slot that frees goes to the oldest waiter that can use it — the slot is
// handed over as a Lease inside Wake(), not re-raced — and a new Acquire does not take a
// host (or a domain slot, or server credit) that older waiters are queued for. Waiters are
// kept per resource they wait on, so a release looks only at the queue of what it freed:
//   - per host, for waiters whose route was at its hosts' limits (a waiter is linked into
//     the queue of every host of its route; the first grant unlinks it from all);
//   - per domain, for waiters stopped by their domain's max_outbound_connections;
//   - one server queue, for waiters stopped by server_max_outbound_connections.
// Arrival order is a global sequence number (`Ticket::seq`), so queues can be compared.
//
// The API is general on purpose: a queue is "waiters for one resource, oldest first", and
// the caller decides what "can use it" means. A cluster-wide limit (a Redis lease per host)
// can hand a freed cluster slot to the longest waiter by the same pattern: queue the
// ticket under the resource, and on release grant Head()/the first eligible one.
//
// Owned by the Selector. Thread-safety: all queue methods REQUIRE mu() held (the selector
// takes it only on the slow path: a release that sees waiters, WaitForSlot, cancel);
// maybe_nonempty() and the counters in HostState/DomainEntry are read lock-free.
#ifndef MXSCHED_SCHEDULER_SLOT_WAITERS_H_
#define MXSCHED_SCHEDULER_SLOT_WAITERS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "mxsched/base/mutex.h"

namespace mxsched {

struct DomainEntry;
class HostState;
class Lease;

// A caller that would rather wait for a slot than take "deferred" registers a SlotWaiter
// (Selector::WaitForSlot). Wake() is called exactly once, from whichever thread freed the
// slot, so it must be cheap and thread-safe — typically: queue and poke an eventfd.
//  - `lease` valid: the slot is the waiter's (hand-off). It holds the host, domain and
//    server slots exactly as a lease from Acquire does; connect with it, or let it go.
//  - `lease` invalid: no slot was handed over — the routes changed (RefreshDomain,
//    RefreshAll) or the domain is invalid; call Acquire again (and wait again if it defers).
// REQUIRES: Wake must not call back into the Selector's WaitForSlot/CancelWait for this
// waiter before returning (it may Acquire, or release the lease).
class SlotWaiter {
 public:
  virtual ~SlotWaiter() = default;
  virtual void Wake(Lease lease) = 0;
};

class SlotWaiters {
 public:
  enum class Kind : uint8_t {
    kHosts,   // every host of the route at its limit (or down): queued on each host
    kDomain,  // the domain's own limit
    kServer,  // the server-wide limit
  };

  struct Ticket;
  struct Queue;
  // One link of a ticket into one queue (intrusive, doubly linked, so unlinking is O(1)).
  struct Node {
    Node* prev = nullptr;
    Node* next = nullptr;
    Ticket* ticket = nullptr;
    Queue* queue = nullptr;
  };
  struct Queue {
    Node* head = nullptr;
    Node* tail = nullptr;
  };
  struct Ticket {
    SlotWaiter* waiter;
    DomainEntry* domain;
    Kind kind;
    uint64_t seq;                   // arrival order (smaller = older)
    int64_t since_nanos;            // when it was queued
    std::vector<Node> nodes;        // one per queue it is linked into; never resized once linked
    std::vector<HostState*> hosts;  // kHosts: the hosts it is queued on, parallel to nodes
  };

  SlotWaiters() = default;
  ~SlotWaiters();
  SlotWaiters(const SlotWaiters&) = delete;
  SlotWaiters& operator=(const SlotWaiters&) = delete;

  Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }

  // Queues `waiter` for `domain` by `kind` (kHosts: on each of `hosts`), at the back — or,
  // `front`, ahead of everyone (a waiter that was woken to re-plan keeps its place).
  // Raises the waiting counters of the hosts or the domain before returning.
  Ticket* Add(SlotWaiter* waiter, DomainEntry* domain, Kind kind,
              const std::vector<HostState*>& hosts, bool front, int64_t now_nanos)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unlinks `t` from every queue, lowers the counters and frees it; returns its waiter.
  SlotWaiter* Remove(Ticket* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Ticket* Find(SlotWaiter* waiter) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The queue of waiters on `host` / for `domain` / for the server, oldest first (null if
  // none). Walk with Node::next.
  Node* HostHead(const HostState* host) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Node* DomainHead(const DomainEntry* domain) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Node* ServerHead() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return server_.head; }

  // Every ticket, in no particular order.
  std::vector<Ticket*> All() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  size_t size() const;
  // False only if no waiter is queued (a release then skips the queue's mutex).
  bool maybe_nonempty() const { return count_.load(std::memory_order_seq_cst) != 0; }
  // True while a waiter is queued for server credit: new Acquires then defer.
  bool server_waiting() const { return server_count_.load(std::memory_order_relaxed) != 0; }

 private:
  static void Link(Queue* q, Node* n, bool front);
  static void Unlink(Node* n);

  mutable Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<const HostState*, std::unique_ptr<Queue>> host_queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<const DomainEntry*, std::unique_ptr<Queue>> domain_queues_
      ABSL_GUARDED_BY(mu_);
  Queue server_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<SlotWaiter*, std::unique_ptr<Ticket>> tickets_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> server_count_{0};
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SLOT_WAITERS_H_
