// Selector: decides which destination a new outbound connection for a domain goes to, under
// the Momentum `routes` rules (docs/DESIGN.md §1), and hands out Leases that hold the slot.
//
//   mxsched::Selector selector(config);
//   mxsched::AcquireResult r = selector.Acquire("example.com");
//   if (r.ok()) {
//     mxsched::Lease lease = r.TakeLease();
//     connect to lease.endpoint() ...; lease.Report(Outcome::kConnected);
//     ... deliver ...; close the socket; lease.Release();   // or let it go out of scope
//   } else {
//     defer the message with r.deferral().ToString();
//   }
//
// Rules enforced here:
//  1. strict preference — tier k+1 only when every host of tiers 0..k is unreachable or at
//     its limit;
//  2. even spreading — a per-domain rotation over the tier (starting at a random offset per
//     domain, in the domain's own order over a shared snapshot: docs/DESIGN.md §5 rule 11),
//     skipping full or failed hosts; the cursor moves past
//     the host chosen, so a full host's turns are spread over the rest, not given to its
//     neighbour;
//  3. limits never exceeded — host, domain and server counters are taken by bounded CAS (domain,
//     then server, then host) and given back on failure; the slot is held
//     until Lease::Release (after the socket is closed);
//  4. reachability — failures mark the host for host_failure_retry, then one half-open probe;
//     when every host is down and each has failed mx_failures_to_delay times in a row, the
//     deferral is "421 4.4.0 no MXs for this domain could be reached";
//  5. hosts are shared — host state lives in the HostRegistry keyed by (address, port);
//  7. reload — SetConfig applies at each domain's TTL; RefreshDomain/RefreshAll at once.
//
// Concurrency: Acquire, Lease::Report and Lease::Release take no mutex. Domains live in a
// DomainTable (domain_table.h: sharded open-addressing tables read lock-free); route
// snapshots are immutable and published by atomic pointer, reclaimed with EBR (epoch.h). The
// server-wide limit is a ServerCredit (server_credit.h: per-thread credit slots, exact).
// Waiters queue in SlotWaiters (slot_waiters.h).
// Slow paths (first sight of a domain, TTL expiry, refresh, table growth) take the shard's
// mutex. All public methods are safe for concurrent use by multiple threads.
//
// Lifetime: the Selector must outlive every Lease it hands out. A domain entry (128 bytes +
// table slot; its route snapshot is shared with every domain of the same route through
// RouteInterner) stays resident while it has a connection or a waiter, and until it
// has been idle for domain_idle_timeout (then it is evicted: docs/DESIGN.md §5).
#ifndef MXSCHED_SCHEDULER_SELECTOR_H_
#define MXSCHED_SCHEDULER_SELECTOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/mutex.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/domain_table.h"
#include "mxsched/scheduler/feedback.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/route_interner.h"
#include "mxsched/scheduler/route_planner.h"
#include "mxsched/scheduler/server_credit.h"
#include "mxsched/scheduler/slot_waiters.h"
#include "mxsched/scheduler/stats.h"

namespace mxsched {

class Selector;

enum class DeferReason : uint8_t {
  kHostsAtLimit,      // reachable hosts exist, all at their limit
  kDomainLimit,       // the domain's max_outbound_connections
  kServerLimit,       // server_max_outbound_connections
  kHostsUnreachable,  // every host failed recently (inside host_failure_retry)
  kNoMxReachable,     // ... and each failed mx_failures_to_delay times in a row
  kResolving,         // DNS in flight
  kTempFailure,       // DNS temporary failure, prohibited addresses, no resolver
  kPermanent,         // NXDOMAIN, null MX, invalid domain: do not retry
};
std::string_view DeferReasonName(DeferReason r);

struct Deferral {
  DeferReason reason;
  std::string detail;  // enhanced status + text for DNS and permanent failures
  bool permanent() const { return reason == DeferReason::kPermanent; }
  // "421 4.4.0 no MXs for this domain could be reached", "4.4.5 ...", etc.
  std::string ToString() const;
};

// What the caller observed on the connection a Lease was for.
enum class Outcome : uint8_t {
  kConnected,         // TCP connected and a 2xx greeting read
  kConnectFailed,     // refused, unreachable, reset
  kTimedOut,          // connect or greeting timeout
  kGreetingRejected,  // 4xx/5xx greeting
  kProtocolError,     // garbage or over-long greeting
  kLocalError,        // our side (EMFILE, EADDRNOTAVAIL...): the host is not blamed
  kBusy,              // a busy reply (feedback.h): lowers the host's limit, not a failure
};
std::string_view OutcomeName(Outcome o);

// A held connection slot on one host. Move-only; releases on destruction.
// Thread-compatible: one owner at a time (it may move between threads).
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& o) noexcept { *this = std::move(o); }
  Lease& operator=(Lease&& o) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { Release(); }

  bool valid() const { return host_ != nullptr; }
  const Endpoint& endpoint() const { return host_->endpoint(); }
  const HostState& host() const { return *host_; }
  bool is_probe() const { return probe_; }

  // Records what happened on the connection (marks or clears host failure). At most once;
  // later calls are ignored. Does not release the slot.
  void Report(Outcome outcome);
  // Statistics only: the connect + greeting time of this lease's successful connection
  // (the host's latency histogram).
  void RecordConnectLatency(int64_t nanos) {
    if (host_ != nullptr) host_->RecordConnectLatency(nanos);
  }
  // Records an SMTP reply seen on this connection (docs/DESIGN.md §6). The first report is the
  // greeting: 2xx is kConnected, a busy reply (421, 4.7.x, "too many connections"...) is
  // negative concurrency feedback (kBusy: the host's effective limit goes down, the host is
  // not marked failed), any other 4xx/5xx is kGreetingRejected. After that, an embedder
  // may report later replies (EHLO, MAIL, RCPT, DATA): the first busy one is negative
  // feedback, anything else is ignored. Returns what was recorded: kConnected, kBusy, or
  // kGreetingRejected — also for a busy reply that marked the host failed because no other
  // connection to it was open (the receiver refuses even one) or adaptation is off.
  // Does not release the slot.
  Outcome Report(const SmtpReply& reply);
  // Gives the slot back; call after the socket is closed. Idempotent.
  void Release();

 private:
  friend class Selector;
  Selector* selector_ = nullptr;
  HostState* host_ = nullptr;
  DomainEntry* domain_ = nullptr;
  AdmitTicket ticket_;
  bool probe_ = false;
  bool reported_ = false;
  bool busy_reported_ = false;
};

class AcquireResult {
 public:
  explicit AcquireResult(Lease lease) : v_(std::move(lease)) {}
  explicit AcquireResult(Deferral d) : v_(std::move(d)) {}
  bool ok() const { return v_.index() == 0; }
  Lease& lease() { return std::get<0>(v_); }
  Lease TakeLease() { return std::move(std::get<0>(v_)); }
  const Deferral& deferral() const { return std::get<1>(v_); }

 private:
  std::variant<Lease, Deferral> v_;
};

// A read-only picture of a domain's route, for `mxsched route` and the console.
struct DomainView {
  struct Host {
    std::string name;
    Endpoint endpoint;
    int32_t limit = 0;  // effective: the configured one, or lower after busy replies
    int32_t active = 0;
    bool reachable = true;
    int64_t seconds_since_failure = -1;  // -1 if never failed
    uint32_t consecutive_failures = 0;
    int32_t configured_limit = kUnlimited;
    std::string limit_moved;  // why the effective limit last moved ("" if it never did)
    uint64_t busy_replies = 0;
    std::string group;  // provider pattern sharing a limit with other hosts, or ""
    int32_t group_limit = 0;
    int32_t group_active = 0;
  };
  struct Tier {
    uint32_t tier;
    uint32_t mx_pref;
    std::vector<Host> hosts;  // in the domain's rotation order, next pick first
  };
  std::string domain;
  RouteState state = RouteState::kPending;
  std::string detail;
  int64_t ttl_left_s = 0;
  int32_t active = 0;
  int32_t limit = 0;
  std::vector<Tier> tiers;
};

// What a Selector uses besides its Config. Every pointer is borrowed and must outlive the
// selector; null (the default) means the process default named on each.
struct SelectorOptions {
  Clock* clock = nullptr;            // null: MonotonicCoarseClock::Default()
  Random* random = nullptr;          // null: SplitMixRandom::Default() (kernel-seeded)
  Resolver* resolver = nullptr;      // null: no DNS; only literal-address routes resolve
  HostRegistry* registry = nullptr;  // null: the selector owns one
};

class Selector {
 public:
  //   Selector selector(config);                          // process defaults
  //   Selector selector(config, {.resolver = &cache});    // with DNS
  explicit Selector(std::shared_ptr<const Config> config, SelectorOptions options = {});
  ~Selector();
  Selector(const Selector&) = delete;
  Selector& operator=(const Selector&) = delete;

  // The hot path. `domain` is case-insensitive.
  AcquireResult Acquire(std::string_view domain);

  // Reload: new routes and domain settings apply when each domain's route reaches its TTL
  // (or at once with RefreshDomain/RefreshAll); server_max_outbound_connections at once.
  void SetConfig(std::shared_ptr<const Config> config);
  // The configuration in force (the last SetConfig). Takes a mutex: callers on a hot path
  // keep the pointer and fetch again only when config_version() changes.
  std::shared_ptr<const Config> config() const;
  // Starts at 1 and increases with every SetConfig.
  uint64_t config_version() const { return config_version_.load(std::memory_order_acquire); }
  // Drops the cached route so the next Acquire rebuilds it (console `refresh domain NAME`).
  // Returns false if the domain has no route yet. Open leases are unaffected.
  bool RefreshDomain(std::string_view domain);
  // Every domain (console `refresh domain all`): O(1), applied lazily on each domain's next
  // Acquire. Slot waiters are woken to re-plan against the new routes.
  void RefreshAll();

  // Waiting instead of polling, first come first served (docs/DESIGN.md §5): `waiter` is queued for
  // what stopped `domain` (its hosts' limits, its own limit or the server's) and woken once,
  // with the slot handed over in Wake(lease), when that frees and it is the oldest waiter
  // that can use it. Strict preference holds for the hand-off (a freed tier-1 slot is not
  // given while a tier-0 host of the waiter's route has room), and while waiters are queued
  // for a host, domain or the server, new Acquires do not take that slot from them. If a
  // slot is free already, Wake runs before WaitForSlot returns. `front` queues ahead of
  // everyone (for a waiter woken without a lease that must wait again).
  // A release costs O(1) queue work plus one grant; only the freed host's, the releasing
  // domain's and the server's queues are looked at.
  // REQUIRES: `waiter` is not queued already, and stays valid until woken or CancelWait
  // returns true.
  void WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front = false);
  // True if `waiter` was still queued (and now is not); false if it was already woken.
  bool CancelWait(SlotWaiter* waiter);
  size_t waiting() const;

  // Builds the domain's route if needed and describes it.
  DomainView Describe(std::string_view domain);
  // Describes the domain as it is, changing nothing: no entry is created, no expired route
  // re-planned, no DNS asked (the admin endpoint's GET). Empty if the domain is not resident.
  std::optional<DomainView> DescribeResident(std::string_view domain);

  size_t domain_count() const;
  // Distinct route snapshots held: domains with equal routes share one (route_interner.h).
  size_t route_count() const { return routes_->size(); }
  // Drops every domain idle for domain_idle_timeout (no connection, no waiter, no Acquire):
  // its route is planned again on next use. Also done a few slots at a time as new domains
  // arrive, so calling this is optional. Returns how many were dropped; their memory is
  // reused once no reader can hold them (epoch.h).
  size_t EvictIdle();
  // Bytes held for domains: tables, entries, names, snapshots (not hosts).
  size_t DomainMemoryBytes() const;
  // Connections currently held against server_max_outbound_connections.
  int64_t server_active() const;
  HostRegistry& registry() { return *registry_; }
  // Process-wide counters: deferrals by reason, sessions by result, slot-wait times, and
  // domain entries created and evicted.
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
  // Installs `planned` (interned) as the entry's route and drops the old one.
  void Publish(DomainEntry* entry, PlannedRoute planned);

  void ReleaseLease(Lease& lease);
  // Counts a deferral (statistics) and answers it.
  AcquireResult Deferred(Deferral d);
  DomainView DescribeEntry(const DomainEntry* e, const RouteSnapshot* snap, int64_t now) const;
  Deferral ClassifyNoHost(const RouteSnapshot& snap, bool saw_full, int64_t now) const;

  // Fair hand-off. What stops a grant; kGranted: *out holds the slot.
  enum class Grant : uint8_t { kGranted, kDomain, kServer, kHosts };
  // Takes a slot for `entry` on behalf of ticket `t` (null: a caller not queued yet),
  // respecting older waiters: a host whose queue `t` does not head is skipped, except
  // `freed` (the host whose slot is being handed over). REQUIRES: waiters_.mu(), EpochGuard.
  Grant TryGrant(DomainEntry* entry, const SlotWaiters::Ticket* t, const HostState* freed,
                 int64_t now, Lease* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu());
  // Queues `waiter` by what stopped it. REQUIRES: waiters_.mu(), EpochGuard.
  SlotWaiters::Ticket* Enqueue(DomainEntry* entry, SlotWaiter* waiter, Grant why, bool front,
                               int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu());
  // A slot freed on `host` (and for `domain`, either may be null): hands it to the oldest
  // waiter that can use it — the host's queue, then the domain's, then the server's — and
  // goes on while `host` has room (a recovered host serves as many as its limit allows).
  void HandOff(HostState* host, DomainEntry* domain);
  // Eviction: which entries are idle at `now`.
  std::function<bool(const DomainEntry&)> IdlePredicate(int64_t now) const;
  static constexpr size_t kEvictSlotsPerInsert = 8;
  std::atomic<int64_t> idle_ticks_{1};

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
  SelectorStats stats_;
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SELECTOR_H_
