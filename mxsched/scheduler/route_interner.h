// RouteInterner: one RouteSnapshot per distinct route, shared by every domain that plans it.
//
// Why: with a global route (every domain through the same smarthosts) or a big provider
// (thousands of domains with the same MX hosts), per-domain copies cost ~80 bytes each and —
// worse — a cold Acquire paid a dependent DRAM miss for its own copy. Shared, the snapshot
// is one hot cache line for all of them (bench/README.md, "1M domains").
//
// Hand-written rather than a library: the snapshots are variable-length, epoch-reclaimed
// objects (epoch.h) looked up by content; absl::flat_hash_set does the indexing, this adds
// reference counts and the reclamation rule.
//
// Ownership: Intern takes a planned snapshot and returns the shared one (the argument is
// freed if an equal one exists); each DomainEntry holding a snapshot holds one reference.
// Unref drops one; the last Unref removes it from the set and retires it through epoch.h
// (a reader that loaded it from a domain entry may still be reading it). Snapshots still in
// the set when the interner is destroyed are freed then (REQUIRES: no reader left).
//
// Thread-safety: all methods are safe for concurrent use; they take one of kShards mutexes
// (by content hash) and are meant for slow paths only: planning and re-planning a route,
// evicting a domain. Never called with a lock held that an epoch deleter takes.
#ifndef MXSCHED_SCHEDULER_ROUTE_INTERNER_H_
#define MXSCHED_SCHEDULER_ROUTE_INTERNER_H_

#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "mxsched/base/mutex.h"
#include <functional>

#include "mxsched/scheduler/route_planner.h"

namespace mxsched {

class RouteInterner {
 public:
  RouteInterner() = default;
  ~RouteInterner();
  RouteInterner(const RouteInterner&) = delete;
  RouteInterner& operator=(const RouteInterner&) = delete;

  // The shared snapshot with the content of `planned`, with one more reference.
  const RouteSnapshot* Intern(std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter> planned);
  // Drops a reference taken by Intern. Null is ignored.
  void Unref(const RouteSnapshot* s);

  // Distinct snapshots held, and their bytes (for DomainMemoryBytes and the benchmarks).
  size_t size() const;
  size_t bytes() const;
  // Calls fn for every host of every interned snapshot (repeats included), under each
  // shard's mutex: the hosts routes refer to, for the host sweep (Selector::EvictIdleHosts).
  void ForEachHost(const std::function<void(const HostState*)>& fn) const;

 private:
  static constexpr size_t kShards = 16;
  struct Hash {
    using is_transparent = void;
    size_t operator()(const RouteSnapshot* s) const { return s->hash_; }
  };
  struct Eq {
    bool operator()(const RouteSnapshot* a, const RouteSnapshot* b) const {
      return a == b || (a->hash_ == b->hash_ && a->SameContent(*b));
    }
  };
  struct alignas(64) Shard {
    mutable Mutex mu;
    absl::flat_hash_set<RouteSnapshot*, Hash, Eq> set ABSL_GUARDED_BY(mu);
  };
  Shard& ShardFor(uint64_t hash) { return shards_[(hash >> 56) % kShards]; }

  Shard shards_[kShards];
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_ROUTE_INTERNER_H_
