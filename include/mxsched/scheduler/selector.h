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
// Contract: the rules of docs/DESIGN.md §1 (strict preference, even spreading, limits never
// exceeded, reachability, shared hosts, reload), the waiting rules of §5 and the busy-reply
// feedback of §6 hold for every Lease handed out; the thread model is §3.
// Thread-safety: all Selector methods are safe for concurrent use by multiple threads;
// Acquire, Lease::Report and Lease::Release take no mutex.
// Lifetime: the Selector must outlive every Lease it hands out. A domain stays resident
// while it has a connection or a waiter, and until it has been idle for
// domain_idle_timeout (§5).
// Stability: this header is public API, versioned by semver from 0.3 (docs/DESIGN.md §2).
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

#include "mxsched/base/clock.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/dns.h"
#include "mxsched/scheduler/feedback.h"
#include "mxsched/scheduler/stats.h"

namespace mxsched {

class Selector;
// Internals (not installed): what a Lease points at. Opaque to an embedder.
class HostRegistry;
class HostState;
class LimitGroup;
class SelectorImpl;
struct DomainEntry;
class Binding;
class BindingRegistry;
struct BindingHost;
struct Egress;
struct DomainBindingCounts;

// What Acquire is asked for besides the domain (docs/DESIGN.md §1 rule 13).
struct AcquireOptions {
  // A Binding or Binding_Group name (case-sensitive) the message is assigned to; "" = the
  // default binding (a Binding or Binding_Group named "default" if configured, else no
  // binding: the kernel's source address, as before bindings existed). A group spreads new
  // connections evenly over its bindings. An unknown name defers (kTempFailure, 4.3.5).
  // Read during the call only (Connector::Connect copies it): a temporary is fine. Chosen
  // per call, so per message: there is no per-connector or per-domain default besides
  // "default".
  std::string_view binding = {};
  // How long the caller would wait for a rate throttle (outbound_throttle_*, docs/DESIGN.md
  // §12): a start the throttles allow within this is granted with Lease::start_at() set to
  // that instant; a later one defers (kRateLimited, naming the throttle). 0: only at once.
  int64_t throttle_wait_nanos = 0;
  // Connection reuse (docs/DESIGN.md §13): parked connections whose owner is this may be
  // handed out (Lease::reused() is then set: no connect, no greeting). An owner is the
  // holder of the sockets (a Connector: its loop thread), so only it can take them up.
  // Null: never.
  const void* reuse_owner = nullptr;
};

enum class DeferReason : uint8_t {
  kHostsAtLimit,      // reachable hosts exist, all at their limit
  kDomainLimit,       // the domain's max_outbound_connections
  kServerLimit,       // server_max_outbound_connections
  kHostsUnreachable,  // every host failed recently (inside host_failure_retry)
  kNoMxReachable,     // ... and each failed mx_failures_to_delay times in a row
  kResolving,         // DNS in flight
  kTempFailure,       // DNS temporary failure, prohibited addresses, no resolver
  kPermanent,         // NXDOMAIN, null MX, invalid domain: do not retry
  kRateLimited,       // a rate throttle (outbound_throttle_*): the detail names it
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

class Lease;

// A connection kept open between message transactions, parked in the selector with its
// lease (docs/DESIGN.md §13). Implemented by whoever owns the socket (the connector); the
// selector never touches the socket. Lifetime: valid while parked, and until Evict's lease
// is let go.
class ParkedConnection {
 public:
  virtual ~ParkedConnection() = default;
  // The selector takes the slot back (a session waits for what it holds and cannot use the
  // connection): close it with QUIT, then let `lease` go (after the socket is closed, rule 3).
  // Called at most once, from any thread, with the connection already out of the lot: it
  // must be cheap and thread-safe (queue and notify) and must not call into the Selector
  // before returning.
  virtual void Evict(Lease lease) = 0;
};

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
  // The address and port to connect to. REQUIRES: valid().
  const Endpoint& endpoint() const;
  // The MX name the host came from ("" for a literal address). REQUIRES: valid().
  std::string_view host_name() const;
  // The host's shared state: an opaque handle outside the library (its type is internal).
  const HostState& host() const { return *host_; }
  bool is_probe() const { return probe_; }
  // The binding this connection goes out through ("" for the default binding without a
  // stanza), and the source address to bind before connecting (null: the kernel chooses).
  // REQUIRES: valid().
  std::string_view binding() const;
  const IpAddress* source_address() const { return has_source_ ? &source_ : nullptr; }
  // What the fleet's keys need (docs/DESIGN.md §7): through a named binding, the per-binding
  // limits this slot was admitted under — the domain's through the binding and the
  // address's through it (kUnlimited: no Binding::Host limit); 0 for the default binding.
  // The provider limit (§6) this slot holds a share of: its pattern and limit ("" and 0 when
  // none). REQUIRES: valid().
  int32_t binding_domain_limit() const { return binding_domain_limit_; }
  int32_t binding_host_limit() const;
  std::string_view provider() const;
  int32_t provider_limit() const;
  // The instant (the selector's clock, nanos) the connection may start: the rate throttles
  // reserved it (docs/DESIGN.md §12). 0, or an instant already past: at once. Connecting
  // earlier breaks the rate the receiver sees; the slot is held meanwhile.
  int64_t start_at() const { return start_at_; }

  // Records what happened on the connection (marks or clears host failure). At most once;
  // later calls are ignored. Does not release the slot.
  void Report(Outcome outcome);
  // Statistics only: the connect + greeting time of this lease's successful connection
  // (the host's latency histogram).
  void RecordConnectLatency(int64_t nanos);
  // Records an SMTP reply seen on this connection (docs/DESIGN.md §6). The first report is the
  // greeting: 2xx is kConnected, a busy reply (421, 4.7.x, "too many connections"...) is
  // negative concurrency feedback (kBusy: the host's effective limit goes down, the host is
  // not marked failed), any other 4xx/5xx is kGreetingRejected. After that, an embedder
  // may report later replies (EHLO, MAIL, RCPT, DATA): the first busy one is negative
  // feedback, anything else is ignored. Returns what the reply counted as: kConnected
  // (a 2xx greeting — or a later reply that was ignored: nothing recorded), kBusy, or
  // kGreetingRejected — also for a busy reply that marked the host failed because no other
  // connection to it was open (the receiver refuses even one) or adaptation is off. A lease
  // that is not valid() answers kLocalError.
  // Does not release the slot.
  Outcome Report(const SmtpReply& reply);
  // Gives the slot back; call after the socket is closed. Idempotent.
  void Release();
  // Connection reuse (docs/DESIGN.md §13). Parks the open connection `conn` with this lease:
  // its slot stays held (host, domain, binding, server: the receiver still counts it) and
  // an Acquire with AcquireOptions::reuse_owner == owner may get it back, marked reused().
  // True: parked, this lease is now invalid (the selector holds it; Selector::Unpark takes it
  // back). False: not parked — sessions are queued for what it holds and the oldest cannot
  // use it — so close the connection and release this lease (the slot goes to them).
  // REQUIRES: valid(), the greeting was 2xx.
  bool Park(ParkedConnection* conn, const void* owner);
  // Non-null: this slot came out of the parking lot with that open connection (no connect,
  // no greeting to read; the caller checks it is alive, e.g. with RSET).
  ParkedConnection* reused() const { return reused_; }
  // A reused slot whose connection was parked by another domain (docs/DESIGN.md §13 rule 3):
  // that domain's name, until SettleMove. The local domain counts have moved already; the
  // owner moves the fleet's (cluster_limits: the old domain's key to this lease's domain,
  // ClusterStep::Move) before using the connection, or closes it. "" otherwise.
  std::string_view moving_from() const { return moving_from_; }
  // The fleet's domain count has moved with it (or there was none to move).
  void SettleMove() { moving_from_.clear(); }

 private:
  friend class SelectorImpl;
  SelectorImpl* selector_ = nullptr;
  HostState* host_ = nullptr;
  DomainEntry* domain_ = nullptr;
  LimitGroup* group_ = nullptr;  // the provider limit this lease holds a slot of, if any
  // Bound leases: the egress asked for, the binding taken, its (binding, host) state and
  // the domain's count through it. All null for the default binding.
  const Egress* egress_ = nullptr;
  Binding* binding_ = nullptr;
  BindingHost* binding_host_ = nullptr;
  std::atomic<int32_t>* binding_domain_ = nullptr;
  int32_t binding_domain_limit_ = 0;  // the limit binding_domain_ was admitted under
  IpAddress source_;
  bool has_source_ = false;
  bool binding_probe_ = false;
  int64_t start_at_ = 0;
  int32_t level_ = 0;            // host connections open right after this admission
  bool probe_ = false;
  bool reported_ = false;
  bool busy_reported_ = false;
  ParkedConnection* reused_ = nullptr;
  std::string moving_from_;  // moving_from()
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

// A rate throttle as it stands (docs/DESIGN.md §12), for views and metrics.
struct ThrottleView {
  std::string scope;  // "global", "example.com", "host 192.0.2.1", "binding b1 to x.test"...
  std::string kind;   // "connections" or "messages"
  std::string rate;   // "20/1 s"
  int64_t next_in_ms = 0;   // until the next start may go (0: at once)
  uint64_t allowed = 0;     // starts reserved
  uint64_t waited = 0;      // ... of which waited for their instant
  double wait_seconds = 0;  // ... their total wait
  uint64_t throttled = 0;   // starts refused (the wait was longer than the caller's)
};

// A rate throttle a start takes (docs/DESIGN.md §12): its scope, rate and kind — what the
// fleet's copy of it in Redis needs (§12 rule 10).
struct ThrottleRef {
  std::string scope;  // as ThrottleView::scope
  ThrottleSpec spec;
  bool messages = false;  // outbound_throttle_messages (else outbound_throttle_connections)
};

// Connections through one egress binding (docs/DESIGN.md §1 rule 13, §8), for views and
// metrics: per (binding, domain) in DomainView::bindings, per (binding, host) in
// DomainView::Host::bindings and Selector::DescribeBindings.
struct BindingView {
  std::string binding;  // the Binding's name; "default": connections through no binding
  std::string source;   // its source address(es) ("192.0.2.10 2001:db8::10"); "": the kernel's
  int32_t active = 0;   // connections open through it, to the domain or to the host
  // Its limit there, per binding: the domain's (Binding::Domain, Domain, Binding,
  // Binding_Group, global) or the host's (Binding::Host; kUnlimited: none).
  int32_t limit = kUnlimited;
  // Per (binding, host) only: its own failure memory and statistics.
  bool used = false;  // it has taken a slot to the host (state exists; else: a limit only)
  std::string state = "up";  // "up", "failed", "probe_due", "probing" (like the host's)
  uint32_t consecutive_failures = 0;
  int64_t retry_in_s = 0;  // until the probe through it may go (0: not failed)
  int32_t peak = 0;        // most connections open through it at once
  uint64_t connections = 0;  // slots taken through it (wraps at 2^32)
  uint64_t failures = 0;     // failed connections through it (wraps at 2^32)
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
    // Per binding at this host: each binding that has taken a slot here or whose
    // Binding::Host limit names it, in configuration order (DescribeBindings).
    std::vector<BindingView> bindings;
    int32_t parked = 0;  // of `active`: connections parked for reuse (docs/DESIGN.md §13)
    // The Host scope's rate throttles of this host (docs/DESIGN.md §12: a Host stanza's
    // outbound_throttle_*, by address or MX name); the global and Domain ones are the
    // domain's `throttles`.
    std::vector<ThrottleView> throttles;
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
  std::vector<ThrottleView> throttles;  // the global ones and the domain's own
  // Per binding (only when bindings are configured): every configured binding's
  // connections to this domain and its per-binding limit, in configuration order, then
  // "default" (no binding: the domain's connections through none, under `limit`) unless a
  // Binding or Binding_Group named "default" takes unbound connections.
  std::vector<BindingView> bindings;
};

// What a Selector uses besides its Config. Every pointer is borrowed and must outlive the
// selector; null (the default) means the process default named on each.
struct SelectorOptions {
  Clock* clock = nullptr;            // null: MonotonicCoarseClock::Default()
  Random* random = nullptr;          // null: SplitMixRandom::Default() (kernel-seeded)
  Resolver* resolver = nullptr;      // null: no DNS; only literal-address routes resolve
  HostRegistry* registry = nullptr;  // null: the selector owns one
};

// A caller that would rather wait for a slot than take "deferred" registers a SlotWaiter
// (Selector::WaitForSlot). Wake() is called exactly once, from whichever thread freed the
// slot, so it must be cheap and thread-safe — typically: queue and poke an eventfd.
//  - `lease` valid: the slot is the waiter's (hand-off). It holds the host, domain and
//    server slots exactly as a lease from Acquire does; connect with it, or let it go.
//  - `lease` invalid: no slot was handed over — the routes changed (RefreshDomain,
//    RefreshAll) or the domain is invalid; call Acquire again (and wait again if it defers).
// REQUIRES: Wake must not call back into the Selector's WaitForSlot/CancelWait for this
// waiter before returning (it may Acquire, or release the lease). A waiter is queued in at
// most one selector at a time (it carries its ticket, so CancelWait finds it in O(1)).
class SlotWaiter {
 public:
  SlotWaiter() = default;
  SlotWaiter(const SlotWaiter&) {}  // a copy is not queued
  SlotWaiter& operator=(const SlotWaiter&) { return *this; }
  virtual ~SlotWaiter() = default;
  virtual void Wake(Lease lease) = 0;

 private:
  friend class SlotWaiters;
  friend class SelectorImpl;
  void* slot_ticket_ = nullptr;  // its SlotWaiters ticket; guarded by that queue's mutex
  const void* reuse_owner_ = nullptr;  // AcquireOptions::reuse_owner of its wait
};

// The selector. All methods are safe for concurrent use by multiple threads; the state
// behind it (domain table, host registry, waiter queues) is internal (selector_impl.h).
class Selector {
 public:
  //   Selector selector(config);                          // process defaults
  //   Selector selector(config, {.resolver = &cache});    // with DNS
  explicit Selector(std::shared_ptr<const Config> config, SelectorOptions options = {});
  ~Selector();
  Selector(const Selector&) = delete;
  Selector& operator=(const Selector&) = delete;

  // The hot path. `domain` is case-insensitive. docs/DESIGN.md §1 (the rules), §5 (waiters).
  AcquireResult Acquire(std::string_view domain);
  // Through a binding or binding group (docs/DESIGN.md §1 rule 13).
  AcquireResult Acquire(std::string_view domain, const AcquireOptions& options);

  // Reload: new routes and domain settings apply when each domain's route reaches its TTL
  // (or at once with RefreshDomain/RefreshAll); server_max_outbound_connections at once.
  void SetConfig(std::shared_ptr<const Config> config);
  // The configuration in force (the last SetConfig). Takes a mutex: callers on a hot path
  // keep the pointer and fetch again only when config_version() changes.
  std::shared_ptr<const Config> config() const;
  // Starts at 1 and increases with every SetConfig.
  uint64_t config_version() const;
  // Drops the cached route so the next Acquire rebuilds it (console `refresh domain NAME`).
  // Returns false if the domain has no route yet. Open leases are unaffected.
  bool RefreshDomain(std::string_view domain);
  // Every domain (console `refresh domain all`): O(1), applied lazily on each domain's next
  // Acquire. Slot waiters are woken to re-plan against the new routes.
  void RefreshAll();

  // Waiting instead of polling, first come first served: the contract is docs/DESIGN.md §5.
  // `waiter` is woken once (SlotWaiter::Wake), with the slot handed over or without a lease
  // to re-plan. If a slot is free already, Wake runs before WaitForSlot returns. `front`
  // queues ahead of everyone (for a waiter woken without a lease that must wait again).
  // REQUIRES: `waiter` is not queued already, and stays valid until woken or CancelWait
  // returns true.
  void WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front = false);
  // The same for a binding or group: the hand-off takes a slot through it.
  void WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front,
                   const AcquireOptions& options);
  // True if `waiter` was still queued (and now is not); false if it was already woken.
  bool CancelWait(SlotWaiter* waiter);
  size_t waiting() const;

  // Builds the domain's route if needed and describes it.
  DomainView Describe(std::string_view domain);
  // Describes the domain as it is, changing nothing: no entry is created, no expired route
  // re-planned, no DNS asked (the admin endpoint's GET). Empty if the domain is not resident.
  std::optional<DomainView> DescribeResident(std::string_view domain);

  size_t domain_count() const;
  // Distinct route snapshots held: domains with equal routes share one.
  size_t route_count() const;
  // Drops every domain idle for domain_idle_timeout (docs/DESIGN.md §5). Also done a few
  // slots at a time as new domains arrive, so calling this is optional. Returns how many.
  size_t EvictIdle();
  // Evicts host states no interned route refers to and that hold nothing worth keeping
  // (HostRegistry::EvictIdle; not planned in the last 2 s); returns how many. Runs by itself
  // as new domains arrive (when the registry doubled since the last sweep); a no-op when the
  // registry is shared (SelectorOptions::registry): other selectors' routes are unknown.
  size_t EvictIdleHosts();
  // Bytes held for domains: tables, entries, names, snapshots (not hosts).
  size_t DomainMemoryBytes() const;
  // Connections currently held against server_max_outbound_connections.
  int64_t server_active() const;
  // Connection reuse (docs/DESIGN.md §13). Takes `conn` out of the parking lot and returns
  // its lease (close the connection, then let it go); an invalid lease if it is no longer
  // parked (handed to a session, or being evicted: its Evict call comes).
  Lease Unpark(ParkedConnection* conn);
  // Connections parked now, over all hosts; and on one host.
  int64_t parked() const;
  int32_t parked_on(const HostState& host) const;
  // Every rate throttle of the configuration, in a stable order (DESIGN §12).
  std::vector<ThrottleView> Throttles() const;
  // The Host scope's throttles of `host` (its Host stanza's, by address or name; none
  // without one), for per-host views (/hosts, route).
  std::vector<ThrottleView> ThrottlesAt(const HostState& host) const;
  // The rate throttles (every scope) a start on `lease` takes, in the configuration in force
  // now (DESIGN §12 rule 10: with cluster_limits they are fleet-wide too), each marked with
  // its kind: a new connection's connection and message throttles
  // (outbound_throttle_connections, outbound_throttle_messages); with `new_connection`
  // false, a reused connection's message throttles alone. REQUIRES: lease.valid().
  std::vector<ThrottleRef> StartThrottles(const Lease& lease, bool new_connection = true) const;
  // The shared host state (opaque outside the library; the admin endpoint reads it).
  HostRegistry& registry();
  // The bindings (opaque outside the library; the load report and admin read them).
  BindingRegistry& bindings();
  // Per binding at each of `hosts` (docs/DESIGN.md §8): every binding that has taken a slot
  // to the host (BindingView::used) or whose Binding::Host limit names it, in configuration
  // order; limits as the next admission computes them. Changes nothing.
  // REQUIRES: the hosts stay alive meanwhile (from registry().Snapshot() under one
  // epoch::EpochGuard held across both calls).
  std::vector<std::vector<BindingView>> DescribeBindings(
      const std::vector<const HostState*>& hosts) const;
  // Process-wide counters: deferrals by reason, sessions by result, slot-wait times, and
  // domain entries created and evicted.
  SelectorStats& stats();
  const SelectorStats& stats() const;
  Clock& clock();

 private:
  std::unique_ptr<SelectorImpl> impl_;
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_SELECTOR_H_
