// SelectorImpl: the state and algorithms behind mxsched::Selector (the public class in
// include/mxsched/scheduler/selector.h forwards to it). Internal: not installed.
//
// Concurrency (docs/DESIGN.md §3): Acquire, Lease::Report and Lease::Release take no
// mutex. Domains live in a DomainTable (sharded open-addressing tables read lock-free);
// route snapshots are immutable, published by atomic pointer and reclaimed with EBR
// (epoch.h). The server-wide limit is a ServerCredit (per-thread credit slots, exact).
// Waiters queue in SlotWaiters. Slow paths (first sight of a domain, TTL expiry, refresh,
// table growth) take the shard's mutex.
//
// Admission (docs/DESIGN.md §1 rules 1-3, §5): every slot — a newcomer's Acquire, a waiter's
// re-check, a hand-off — is taken by one routine, Admit: domain limit, then server limit,
// then the hosts of the route in preference order. A new kind of limit is added there.
#ifndef MXSCHED_SCHEDULER_SELECTOR_IMPL_H_
#define MXSCHED_SCHEDULER_SELECTOR_IMPL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

#include "absl/base/thread_annotations.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/mutex.h"
#include "mxsched/scheduler/bindings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/domain_table.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/route_interner.h"
#include "mxsched/scheduler/route_planner.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/scheduler/server_credit.h"
#include "mxsched/scheduler/slot_waiters.h"
#include "mxsched/scheduler/stats.h"
#include "mxsched/scheduler/throttle.h"

namespace mxsched {

class SelectorImpl {
 public:
  // The public methods are Selector's (selector.h), which forwards here.
  explicit SelectorImpl(std::shared_ptr<const Config> config, SelectorOptions options = {});
  ~SelectorImpl();
  SelectorImpl(const SelectorImpl&) = delete;
  SelectorImpl& operator=(const SelectorImpl&) = delete;

  AcquireResult Acquire(std::string_view domain, const AcquireOptions& options = {});

  void SetConfig(std::shared_ptr<const Config> config);
  std::shared_ptr<const Config> config() const;
  uint64_t config_version() const { return config_version_.load(std::memory_order_acquire); }
  bool RefreshDomain(std::string_view domain);
  void RefreshAll();

  void WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front = false,
                   const AcquireOptions& options = {});
  BindingRegistry& bindings() { return bindings_; }
  // Frees the bindings and egresses a reload replaced that nothing holds any more
  // (BindingRegistry::Collect); on SetConfig and EvictIdle. Not inside an EpochGuard.
  void CollectBindings() ABSL_LOCKS_EXCLUDED(waiters_.mu());
  bool CancelWait(SlotWaiter* waiter);
  size_t waiting() const;

  DomainView Describe(std::string_view domain);
  std::optional<DomainView> DescribeResident(std::string_view domain);
  std::vector<std::vector<BindingView>> DescribeBindings(
      const std::vector<const HostState*>& hosts) const;

  size_t domain_count() const;
  size_t route_count() const { return routes_->size(); }
  size_t EvictIdle();
  size_t EvictIdleHosts();
  size_t DomainMemoryBytes() const;
  int64_t server_active() const;
  std::vector<ThrottleView> Throttles() const;
  std::vector<ThrottleView> ThrottlesAt(const HostState& host) const;
  std::vector<ThrottleRef> StartThrottles(const Lease& lease, bool new_connection) const;
  Lease Unpark(ParkedConnection* conn);
  int64_t parked() const { return parked_.load(std::memory_order_acquire); }
  int32_t parked_on(const HostState& host) const;
  HostRegistry& registry() { return *registry_; }
  SelectorStats& stats() { return stats_; }
  const SelectorStats& stats() const { return stats_; }
  Clock& clock() { return *clock_; }

 private:
  friend class Lease;

  // The domain's entry, created on first sight (null, *invalid set, for a name that is not
  // a valid domain). REQUIRES: an EpochGuard.
  DomainEntry* FindOrCreate(std::string_view domain, Deferral* invalid);
  // The domain's route, re-planned first if it expired or a refresh asked for it.
  // REQUIRES: an EpochGuard.
  const RouteSnapshot* CurrentRoute(DomainEntry* entry, int64_t now);
  // Slow path: creates the domain's entry and first route. Null (and *invalid set) for a
  // name that is not a valid domain. REQUIRES: an EpochGuard.
  DomainEntry* Materialize(std::string_view domain, Deferral* invalid);
  const RouteSnapshot* Refresh(DomainEntry* entry, const RouteSnapshot* old, int64_t now);
  // Plans the entry's route at `now` and installs it (or, DNS failing, keeps `old` a while).
  // REQUIRES: the caller holds entry->refreshing, which this clears; an EpochGuard.
  const RouteSnapshot* Replan(DomainEntry* entry, const RouteSnapshot* old, int64_t now);
  // Installs `planned` (interned) as the entry's route and drops the old one.
  void Publish(DomainEntry* entry, PlannedRoute planned);

  void ReleaseLease(Lease& lease);
  // Counts a deferral (statistics) and answers it.
  AcquireResult Deferred(Deferral d);
  DomainView DescribeEntry(const DomainEntry* e, const RouteSnapshot* snap, int64_t now) const;
  // Per binding at `h` (Selector::DescribeBindings): `all` is bindings_.All(), `c` the
  // configuration in force.
  void BindingsAt(const std::vector<const Binding*>& all, const Config& c, const HostState& h,
                  int64_t now, std::vector<BindingView>* out) const;
  Deferral ClassifyNoHost(const RouteSnapshot& snap, bool saw_full, int64_t now) const;

  // Admission: what stops a grant; kGranted: *out holds the slot. kEvicted: the entry was
  // evicted under the caller (look the domain up again).
  // kRate: a rate throttle would not allow a start within the claim's wait (*blocked).
  enum class Grant : uint8_t { kGranted, kDomain, kServer, kHosts, kEvicted, kRate };
  // Who asks for a slot. A newcomer (ticket null) yields to every queue with waiters,
  // except that it may probe a failed host (waiters do not poll: the probe that brings a
  // host back comes from a new session). A queued ticket may take a slot whose queue it
  // heads; `freed` (a hand-off) is tried first in its tier and does not move the rotation.
  struct Claim {
    const SlotWaiters::Ticket* ticket = nullptr;
    const HostState* freed = nullptr;
    const Egress* egress = nullptr;  // a binding or group; null: the default binding
    int64_t throttle_wait = 0;       // the longest wait for a rate throttle it takes
    RateThrottle** blocked = nullptr;  // out: the throttle behind a kRate (may be null)
    // Connection reuse (DESIGN §13): parked connections of this owner may serve the claim.
    const void* reuse_owner = nullptr;
    // out: a domain whose slot a reused connection gave up (the caller hands it to that
    // domain's waiters once outside waiters_.mu(); may be null when reuse_owner is).
    DomainEntry** released_domain = nullptr;
  };
  // Connection reuse (DESIGN §13): the parking lot. A parked connection keeps its lease.
  struct ParkedSlot {
    Lease lease;
    ParkedConnection* conn = nullptr;
    const void* owner = nullptr;
    int64_t since = 0;
  };
  // Admit's first step when connections are parked: the best usable tier's parked
  // connection of the claim's owner, if that tier holds one; kHosts otherwise (the rest of
  // Admit decides). REQUIRES: an EpochGuard.
  Grant AdmitParked(DomainEntry* entry, const RouteSnapshot& snap, const Claim& claim,
                    int64_t now, Lease* out);
  bool Park(Lease& lease, ParkedConnection* conn, const void* owner);
  // A waiter queued (ticket `t`) behind parked connections that cannot serve it: takes the
  // oldest idle one that holds what it waits for out of the lot (the caller calls Evict
  // outside the locks). REQUIRES: waiters_.mu().
  bool TakeVictim(const SlotWaiters::Ticket* t, ParkedSlot* victim)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu());
  // Reserves the start of a connection to `h` for `entry` through `binding` (null: none) on
  // every throttle that applies (DESIGN §12). REQUIRES: an EpochGuard.
  ThrottleReservation ReserveStart(const ThrottleSet& set, const DomainEntry& entry,
                                   const HostState& h, const Binding* binding, int64_t now,
                                   int64_t max_wait, RateThrottle** blocked);
  // The domain's count through binding `b` (DomainBindingCounts), its limit computed once
  // per configuration version.
  DomainBindingCounts::Slot* BindingDomainSlot(DomainEntry* entry, const Binding* b,
                                               uint32_t version);
  // Undoes AdmitBinding's counts (a grant taken back before it was handed out).
  static void UndoBinding(DomainEntry* entry, Lease& bound);
  // Takes a slot through one of `egress`'s bindings to `host` (whose own slot is held):
  // the group's rotation, skipping a binding without an address of the host's family, at
  // its limit for the domain or the host, or failed at the host. *domain_room: some binding
  // had room for the domain; *saw_usable: some binding has an address of the host's family.
  bool AdmitBinding(DomainEntry* entry, const Egress& egress, HostState* host, int64_t now,
                    Lease* lease, bool* saw_full, bool* domain_room, bool* saw_usable);
  // The egress an Acquire asked for (null: the default binding, no binding state); an
  // unknown name sets *unknown.
  const Egress* ResolveEgress(const AcquireOptions& options, bool* unknown) const;
  // The one admission routine (docs/DESIGN.md §1 rules 1-3, §5): the domain's limit, then
  // the server's, then the route's hosts tier by tier in the domain's order — each a
  // bounded CAS, all given back unless a host admits. *saw_full: a usable host was at its
  // limit (for the deferral's reason). A claim with a ticket REQUIRES waiters_.mu(); a
  // newcomer's reads of the queues are the lock-free counters only.
  Grant Admit(DomainEntry* entry, const RouteSnapshot& snap, const Claim& claim, int64_t now,
              Lease* out, bool* saw_full) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Admit for a waiter (ticket `t`, or null before it is queued) under the queue mutex; a
  // route that is not ready is kHosts. REQUIRES: waiters_.mu(), an EpochGuard.
  Grant TryGrant(DomainEntry* entry, const SlotWaiters::Ticket* t, const HostState* freed,
                 int64_t now, Lease* out, const Egress* egress = nullptr,
                 int64_t throttle_wait = 0, DomainEntry** released = nullptr,
                 const void* reuse_owner = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu());
  // Queues `waiter` by what stopped it. REQUIRES: waiters_.mu(), EpochGuard.
  SlotWaiters::Ticket* Enqueue(DomainEntry* entry, SlotWaiter* waiter, Grant why, bool front,
                               const Egress* egress = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu());
  // A slot freed on `host` (and for `domain`, either may be null): hands it to the oldest
  // waiter that can use it — the host's queue, then the domain's, then the server's — and
  // goes on while `host` has room (a recovered host serves as many as its limit allows).
  void HandOff(HostState* host, DomainEntry* domain);
  // Eviction: which entries are idle at `now`.
  std::function<bool(const DomainEntry&)> IdlePredicate(int64_t now) const;
  static constexpr size_t kEvictSlotsPerInsert = 8;
  std::atomic<int64_t> idle_ticks_{1};
  // Host sweeps (EvictIdleHosts, docs/DESIGN.md §5): when the registry reaches
  // host_sweep_at_ hosts.
  void MaybeEvictIdleHosts();
  static constexpr uint64_t kHostSweepSlack = 1024;
  static constexpr int64_t kHostRecentNanos = 2'000'000'000;
  std::atomic<uint64_t> host_sweep_at_{kHostSweepSlack};
  std::atomic<bool> host_sweeping_{false};

  Clock* clock_;
  Random* random_;
  std::unique_ptr<HostRegistry> owned_registry_;
  HostRegistry* registry_;
  RoutePlanner planner_;
  // Shared with the domain table's shards (an evicted entry may be reclaimed after the
  // selector is gone, and drops its reference then).
  std::shared_ptr<RouteInterner> routes_;
  mutable Mutex config_mu_;
  std::shared_ptr<const Config> config_ ABSL_GUARDED_BY(config_mu_);
  std::atomic<uint64_t> config_version_{0};
  std::atomic<uint32_t> generation_{1};
  ServerCredit server_credit_;
  DomainTable domains_;
  SlotWaiters waiters_;
  BindingRegistry bindings_;
  // The configuration's rate throttles, null when it sets none (the fast path reads one
  // pointer). Replaced on SetConfig, the old set retired through the epoch.
  std::atomic<ThrottleSet*> throttles_{nullptr};
  SelectorStats stats_;
  // The parking lot (DESIGN §13): per host, oldest first. Lock order: waiters_.mu() before
  // lot_mu_; nothing calls out (Evict, ReleaseLease) under lot_mu_.
  mutable Mutex lot_mu_;
  absl::flat_hash_map<const HostState*, std::vector<ParkedSlot>> lot_ ABSL_GUARDED_BY(lot_mu_);
  std::atomic<int64_t> parked_{0};
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SELECTOR_IMPL_H_
