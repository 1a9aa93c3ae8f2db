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
// Serving order is a global sequence number (`Ticket::seq`; front-queued tickets get
// smaller ones than everyone), so queues can be compared.
//
// Cost: a release looks at the freed host's queue through an array indexed by
// HostState::index(), a ticket is found through its waiter, tickets come from a free list
// with their nodes inline — no hash lookup and no allocation per hand-off. A freed slot of
// a provider group (host_registry.h) looks at the heads of the group's hosts that have
// waiters (O(those hosts)), not at the waiters.
//
// A queue is "waiters for one resource, oldest first"; the caller decides what "can use
// it" means (SelectorImpl::Admit). Fleet-wide waits (cluster limits through Redis) do not
// use these queues: they queue in Redis (docs/DESIGN.md §7).
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
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "mxsched/base/mutex.h"
#include "mxsched/scheduler/selector.h"  // SlotWaiter

namespace mxsched {

struct Egress;

struct DomainEntry;
class HostState;
class Lease;
class LimitGroup;
class SlotWaiter;

class SlotWaiters {
 public:
  enum class Kind : uint8_t {
    kHosts,   // every host of the route at its limit (or down): queued on each host
    kDomain,  // the domain's own limit
    kServer,  // the server-wide limit
  };

  struct Ticket;
  struct Queue;
  static uint32_t ThrottleDeadline(int64_t now, int64_t wait) {
    return static_cast<uint32_t>(static_cast<uint64_t>(now + wait) >> 20);
  }
  // Nanos from `now` to a ticket's throttle deadline (0 when past); waits under ~25 days.
  static int64_t ThrottleWaitLeft(uint32_t deadline, int64_t now) {
    const int32_t units = static_cast<int32_t>(deadline - static_cast<uint32_t>(static_cast<uint64_t>(now) >> 20));
    return units <= 0 ? 0 : int64_t{units} << 20;
  }
  // One link of a ticket into one queue (intrusive, doubly linked, so unlinking is O(1)).
  // `prev` is meaningful only while the node is not its queue's head: taking the head off
  // (the hand-off) does not write to the next waiter's node.
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
  // A host's queue, found by HostState::index() (an array, no hash lookup). While non-empty
  // and its host is in a provider group, it is listed in the group's hosts with waiters.
  struct HostQueue : Queue {
    HostQueue* group_prev = nullptr;
    HostQueue* group_next = nullptr;
    const LimitGroup* group = nullptr;  // the list it is in (the host's group when listed)
    HostState* host = nullptr;
  };
  // The distinct hosts of a route, as Add takes them (no allocation for small routes).
  using HostList = absl::InlinedVector<HostState*, 8>;
  static constexpr uint32_t kInlineNodes = 2;  // more hosts: nodes on the heap (kept on reuse)
  // 128 bytes; what a hand-off reads and writes (the first node, waiter, domain, order) is
  // the first cache line.
  struct alignas(64) Ticket {
    Node first;                    // node(0) unless on the heap; while the ticket is
                                   // free, first.ticket links the free list
    SlotWaiter* waiter = nullptr;  // null while free (in the pool)
    DomainEntry* domain = nullptr;
    const Egress* egress = nullptr;  // the binding or group it waits through (bindings.h)
    int64_t seq = 0;  // queue order across queues (smaller = served first)
    uint32_t num_nodes = 0;
    Kind kind = Kind::kHosts;
    bool on_heap = false;
    // Second line: not touched by a hand-off or a re-queue of a route of <= 2 hosts.
    const SlotWaiters* owner = nullptr;  // set once: a ticket stays in its SlotWaiters' pool

    std::unique_ptr<Node[]> heap_nodes;
    uint32_t heap_capacity = 0;
    // The latest instant a rate throttle may make it start (its wait's end; DESIGN §12),
    // in clock units of 2^20 ns, modulo 2^32 (the ticket stays one 128-byte block): compare
    // with ThrottleWaitLeft.
    uint32_t throttle_deadline = 0;
    Node more[kInlineNodes - 1];

    // One per queue it is linked into (kHosts: one per host, in route order).
    Node& node(uint32_t i) { return on_heap ? heap_nodes[i] : i == 0 ? first : more[i - 1]; }
    // kHosts: the host of node(i)'s queue.
    HostState* host(uint32_t i) { return static_cast<HostQueue*>(node(i).queue)->host; }
    // Whether `n` is one of this ticket's nodes (compares addresses: `n` is not read).
    bool Owns(const Node* n) const {
      const std::less<const void*> lt;
      if (on_heap) return !lt(n, heap_nodes.get()) && lt(n, heap_nodes.get() + num_nodes);
      return !lt(n, this) && lt(n, this + 1);
    }
  };

  SlotWaiters() = default;
  ~SlotWaiters();
  SlotWaiters(const SlotWaiters&) = delete;
  SlotWaiters& operator=(const SlotWaiters&) = delete;

  Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }

  // Queues `waiter` for `domain` by `kind` (kHosts: on each of `hosts`, distinct), at the
  // back — or, `front`, ahead of everyone (a waiter that was woken to re-plan keeps its
  // place). Raises the waiting counters of the hosts or the domain before returning.
  // O(hosts): tickets come from a free list, nodes are inline for up to kInlineNodes hosts.
  Ticket* Add(SlotWaiter* waiter, DomainEntry* domain, Kind kind,
              std::span<HostState* const> hosts, bool front) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unlinks `t` from every queue, lowers the counters and recycles it; returns its waiter.
  SlotWaiter* Remove(Ticket* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // O(1): the ticket is found through the waiter.
  Ticket* Find(SlotWaiter* waiter) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The queue of waiters on `host` / for `domain` / for the server, in serving order (null
  // if none). Walk with Node::next. HostHead is an array index.
  Node* HostHead(const HostState* host) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Node* DomainHead(const DomainEntry* domain) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Node* ServerHead() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return server_.head; }
  // Whether `t` is first in `host`'s queue / `domain`'s / the server's (without reading the
  // first ticket when it is another one: a re-check after queueing touches no other waiter).
  bool HeadsHost(const HostState* host, const Ticket* t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Node* head = HostHead(host);
    return head != nullptr && t != nullptr && t->Owns(head);
  }
  bool HeadsDomain(const DomainEntry* domain, const Ticket* t) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Node* head = DomainHead(domain);
    return head != nullptr && t != nullptr && t->Owns(head);
  }
  bool HeadsServer(const Ticket* t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return server_.head != nullptr && t != nullptr && t->Owns(server_.head);
  }
  // The queues, non-empty, of hosts in provider group `group` (walk with group_next), or
  // null: a freed group slot looks at these hosts' heads, not at every waiter.
  HostQueue* GroupHosts(const LimitGroup* group) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A freed provider-group slot (docs/DESIGN.md §6) may serve a waiter queued on another
  // host of the group. GroupHandOff walks the heads of the queues of the group's hosts
  // that have waiters, first in line (smallest seq) first: O(hosts of the group with
  // waiters) per candidate, however many waiters there are. Used under mu().
  class GroupHandOff {
   public:
    // `skip`: the freed host, whose own queue the caller served already.
    GroupHandOff(const SlotWaiters& w, const LimitGroup* group, const HostState* skip)
        : w_(w), group_(group), skip_(skip) {}
    // The next candidate among hosts for which `eligible(host)` holds (room of its own,
    // reachable), or null. The caller then reports what became of it, once.
    template <typename Eligible>
    Node* Next(Eligible eligible) ABSL_NO_THREAD_SAFETY_ANALYSIS;
    // Its ticket was granted (the caller removes it next): its other nodes are passed over.
    void Granted(const Ticket* t);
    // Its own domain is full: the next waiter on that host may use the slot.
    void DomainFull() { at_[last_].second = at_[last_].second->next; }
    // Nobody on that host can use the slot now.
    void HostDone() { at_[last_].second = nullptr; }

   private:
    const SlotWaiters& w_;
    const LimitGroup* group_;
    const HostState* skip_;
    // Queues already looked at: the next node to try there (null: none).
    absl::InlinedVector<std::pair<const HostQueue*, Node*>, 4> at_;
    size_t last_ = 0;
  };

  // Every ticket, in no particular order. O(most tickets ever queued at once): for
  // refreshes, not for releases.
  std::vector<Ticket*> All() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  size_t size() const;
  // False only if no waiter is queued (a release then skips the queue's mutex).
  bool maybe_nonempty() const { return count_.load(std::memory_order_seq_cst) != 0; }
  // True while a waiter is queued for server credit: new Acquires then defer.
  // seq_cst: a release reads it, without the mutex, after giving its credit back.
  bool server_waiting() const { return server_count_.load(std::memory_order_seq_cst) != 0; }

 private:
  static constexpr size_t kChunkBits = 10;  // host queues and tickets, 1,024 per chunk
  static constexpr size_t kChunk = size_t{1} << kChunkBits;

  static void Link(Queue* q, Node* n, bool front);
  static void Unlink(Node* n);
  HostQueue* HostQueueOf(HostState* host) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ListInGroup(HostQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnlistFromGroup(HostQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Ticket* NewTicket() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;    // back of the queues: 1, 2, 3...
  int64_t front_seq_ ABSL_GUARDED_BY(mu_) = 0;   // front of the queues: 0, -1, -2...
  // Host queues by HostState::index(), in chunks (stable addresses; allocated on first use).
  std::vector<std::unique_ptr<HostQueue[]>> host_queues_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<const DomainEntry*, std::unique_ptr<Queue>> domain_queues_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<const LimitGroup*, HostQueue*> group_hosts_ ABSL_GUARDED_BY(mu_);
  Queue server_ ABSL_GUARDED_BY(mu_);
  // Ticket pool: chunks never freed before the SlotWaiters; freed tickets are reused LIFO.
  std::vector<std::unique_ptr<Ticket[]>> ticket_chunks_ ABSL_GUARDED_BY(mu_);
  size_t ticket_chunk_used_ ABSL_GUARDED_BY(mu_) = kChunk;
  Ticket* free_tickets_ ABSL_GUARDED_BY(mu_) = nullptr;  // linked by first.ticket
  size_t live_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> server_count_{0};
};

template <typename Eligible>
SlotWaiters::Node* SlotWaiters::GroupHandOff::Next(Eligible eligible) {
  Node* best = nullptr;
  size_t best_at = SIZE_MAX;
  for (const HostQueue* q = w_.GroupHosts(group_); q != nullptr; q = q->group_next) {
    if (q->host == skip_ || !eligible(q->host)) continue;
    Node* n = q->head;
    size_t i = 0;
    while (i < at_.size() && at_[i].first != q) ++i;
    if (i < at_.size()) n = at_[i].second;
    if (n != nullptr && (best == nullptr || n->ticket->seq < best->ticket->seq)) {
      best = n;
      best_at = i;
    }
  }
  if (best == nullptr) return nullptr;
  if (best_at == at_.size()) at_.emplace_back(static_cast<const HostQueue*>(best->queue), best);
  last_ = best_at;
  return best;
}

inline void SlotWaiters::GroupHandOff::Granted(const Ticket* t) {
  for (auto& [q, n] : at_) {
    if (n != nullptr && n->ticket == t) n = n->next;  // before Remove unlinks it
  }
}

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SLOT_WAITERS_H_
