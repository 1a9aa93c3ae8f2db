#include "mxsched/scheduler/selector.h"

#include "mxsched/scheduler/selector_impl.h"

#include <algorithm>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "mxsched/base/sanitizers.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {

namespace {
// While a refresh waits for DNS, the previous hosts serve and the route is re-planned this
// often (one thread at a time) until the answer is in.
constexpr int64_t kStaleRetryNanos = 200'000'000;

// Walks one tier of n hosts in a domain's own order: the entry's drawn permutation
// (DomainEntry::order) if it was drawn for this tier size, else position p -> host
// (p * step) mod n (RotationStep). One division to start either way; then a shift or an add.
struct TierWalk {
  uint32_t n, pos, step = 1, affine = 0;
  uint64_t perm = 0;  // 4 bits per position; 0: affine walk
  TierWalk(uint32_t tier_size, uint32_t start, const DomainEntry& e)
      : n(tier_size), pos(start % tier_size) {
    const uint64_t order = e.order.load(std::memory_order_relaxed);
    if ((order & 15) == n && n > 1) {
      perm = order >> 4;
    } else if (n > 1) {
      step = RotationStep(n, e.hash);
      affine = step == 1 ? pos : static_cast<uint32_t>(uint64_t{pos} * step % n);
    }
  }
  uint32_t idx() const {
    return perm != 0 ? static_cast<uint32_t>(perm >> (4 * pos)) & 15 : affine;
  }
  void Next() {
    if (++pos == n) pos = 0;
    if (perm == 0) {
      affine += step;
      if (affine >= n) affine -= n;
    }
  }
};

// A random order of `n` hosts packed as DomainEntry::order (0 if n is outside 2..15).
uint64_t DrawOrder(uint32_t n, Random& random) {
  if (n < 2 || n > 15) return 0;
  uint8_t p[15];
  for (uint32_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(i);
  for (uint32_t i = n; i > 1; --i) std::swap(p[i - 1], p[random.Uniform(i)]);
  uint64_t w = n;
  for (uint32_t i = 0; i < n; ++i) w |= uint64_t{p[i]} << (4 + 4 * i);
  return w;
}

uint32_t FirstTierSize(const RouteSnapshot& s) {
  return s.num_tiers() == 0 ? 0 : static_cast<uint32_t>(s.TierHosts(0).size());
}
}  // namespace

// ---------------------------------------------------------------------------------------
// Names and messages.

std::string_view DeferReasonName(DeferReason r) {
  switch (r) {
    case DeferReason::kHostsAtLimit:
      return "hosts_at_limit";
    case DeferReason::kDomainLimit:
      return "domain_limit";
    case DeferReason::kServerLimit:
      return "server_limit";
    case DeferReason::kHostsUnreachable:
      return "hosts_unreachable";
    case DeferReason::kNoMxReachable:
      return "no_mx_reachable";
    case DeferReason::kResolving:
      return "resolving";
    case DeferReason::kTempFailure:
      return "temporary_failure";
    case DeferReason::kPermanent:
      return "permanent_failure";
    case DeferReason::kRateLimited:
      return "rate_limited";
  }
  return "?";
}

std::string Deferral::ToString() const {
  switch (reason) {
    case DeferReason::kHostsAtLimit:
      return "451 4.4.5 every reachable host is at its connection limit";
    case DeferReason::kDomainLimit:
      return "451 4.4.5 domain at max_outbound_connections";
    case DeferReason::kServerLimit:
      return "451 4.4.5 server_max_outbound_connections reached";
    case DeferReason::kHostsUnreachable:
      return "451 4.4.1 every host failed recently; waiting for host_failure_retry";
    case DeferReason::kNoMxReachable:
      return "421 4.4.0 no MXs for this domain could be reached";
    case DeferReason::kResolving:
    case DeferReason::kTempFailure:
      return StrCat("451 ", detail);
    case DeferReason::kPermanent:
      return StrCat("550 ", detail);
    case DeferReason::kRateLimited:
      return StrCat("451 4.4.5 ", detail);
  }
  return "?";
}

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kConnected:
      return "connected";
    case Outcome::kConnectFailed:
      return "connect_failed";
    case Outcome::kTimedOut:
      return "timed_out";
    case Outcome::kGreetingRejected:
      return "greeting_rejected";
    case Outcome::kProtocolError:
      return "protocol_error";
    case Outcome::kLocalError:
      return "local_error";
    case Outcome::kBusy:
      return "busy";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// Lease.

Lease& Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    Release();
    selector_ = std::exchange(o.selector_, nullptr);
    host_ = std::exchange(o.host_, nullptr);
    domain_ = std::exchange(o.domain_, nullptr);
    group_ = o.group_;
    egress_ = o.egress_;
    binding_ = o.binding_;
    binding_host_ = o.binding_host_;
    binding_domain_ = o.binding_domain_;
    binding_domain_limit_ = o.binding_domain_limit_;
    source_ = o.source_;
    has_source_ = o.has_source_;
    binding_probe_ = o.binding_probe_;
    start_at_ = o.start_at_;
    level_ = o.level_;
    probe_ = o.probe_;
    reported_ = o.reported_;
    busy_reported_ = o.busy_reported_;
    reused_ = std::exchange(o.reused_, nullptr);
    moving_from_ = std::move(o.moving_from_);
    o.moving_from_.clear();
  }
  return *this;
}

static_assert(static_cast<size_t>(Outcome::kBusy) + 1 == kOutcomeKinds);
static_assert(static_cast<size_t>(DeferReason::kRateLimited) + 1 == kDeferReasons);

void Lease::Report(Outcome outcome) {
  if (host_ == nullptr || reported_) return;
  reported_ = true;
  host_->CountOutcome(static_cast<size_t>(outcome));
  if (binding_host_ != nullptr) {
    switch (outcome) {
      case Outcome::kConnected:
        binding_host_->RecordSuccess();
        break;
      case Outcome::kLocalError:
      case Outcome::kBusy:
        break;
      default: {
        // Failure memory per (binding, host) (docs/DESIGN.md §1 rule 13): this source
        // address is kept off the host for host_failure_retry. The host itself is marked
        // failed only when another binding of the same egress is failed there too.
        const int64_t now = selector_->clock_->NowNanos();
        const int64_t retry =
            int64_t{selector_->config()
                        ->PolicyFor(host_->name() == host_->endpoint().address.ToString()
                                        ? std::string_view()
                                        : std::string_view(host_->name()),
                                    host_->endpoint().address)
                        .host_failure_retry_s} *
            kNanosPerSecond;
        binding_host_->RecordFailure(now, retry);
        binding_probe_ = false;
        bool others_failed = false;
        for (Binding* b : egress_->members) {
          if (b == binding_) continue;
          const BindingHost* bh = b->Find(*host_);
          if (bh != nullptr && bh->host.load(std::memory_order_acquire) == host_ &&
              bh->Failed(now)) {
            others_failed = true;
          }
        }
        if (!others_failed) return;  // the host stays up for the other bindings
        host_->RecordFailure(now);
        probe_ = false;
        return;
      }
    }
    binding_probe_ = false;
  }
  switch (outcome) {
    case Outcome::kConnected: {
      const bool recovered = host_->failed_until() != 0;
      const bool raised = host_->RecordSuccess(level_, selector_->clock_->NowNanos());
      // A recovered host, or one whose adaptive limit rose, has room for waiters.
      if (recovered || raised) selector_->HandOff(host_, nullptr);
      break;
    }
    case Outcome::kLocalError:
      break;
    case Outcome::kBusy:
      // A probe that found the host busy stays a probe: its Release lets the next one go.
      busy_reported_ = true;
      host_->RecordBusy(selector_->clock_->NowNanos(), 0, "", 0);
      return;
    default:
      host_->RecordFailure(selector_->clock_->NowNanos());
      break;
  }
  probe_ = false;  // the outcome settled the probe either way
}

Outcome Lease::Report(const SmtpReply& reply) {
  if (host_ == nullptr) return Outcome::kLocalError;
  const ReplyVerdict v = ClassifyReply(reply);
  if (!reported_) {
    if (v.cls == ReplyClass::kPositive) {
      Report(Outcome::kConnected);
      return Outcome::kConnected;
    }
    if (v.cls == ReplyClass::kRejected) {
      Report(Outcome::kGreetingRejected);
      return Outcome::kGreetingRejected;
    }
    reported_ = true;  // a probe that found the host busy stays a probe (see above)
    host_->CountOutcome(static_cast<size_t>(Outcome::kBusy));
  } else if (v.cls != ReplyClass::kBusy || busy_reported_) {
    return Outcome::kConnected;
  }
  busy_reported_ = true;
  const bool failed = host_->RecordBusy(selector_->clock_->NowNanos(), reply.code, reply.enhanced,
                                        static_cast<uint8_t>(v.rule));
  // Busy with no other connection open (or adaptation off): the host was marked failed.
  return failed ? Outcome::kGreetingRejected : Outcome::kBusy;
}

const Endpoint& Lease::endpoint() const { return host_->endpoint(); }
std::string_view Lease::binding() const {
  return binding_ == nullptr ? std::string_view() : std::string_view(binding_->name());
}
std::string_view Lease::host_name() const { return host_->name(); }
int32_t Lease::binding_host_limit() const {
  return binding_host_ == nullptr ? 0 : binding_host_->limit.load(std::memory_order_relaxed);
}
std::string_view Lease::provider() const {
  return group_ == nullptr ? std::string_view() : std::string_view(group_->pattern());
}
int32_t Lease::provider_limit() const { return group_ == nullptr ? 0 : group_->limit(); }
void Lease::RecordConnectLatency(int64_t nanos) {
  if (host_ != nullptr) host_->RecordConnectLatency(nanos);
}

void Lease::Release() {
  if (host_ == nullptr) return;
  selector_->ReleaseLease(*this);
  host_ = nullptr;
  reused_ = nullptr;
  moving_from_.clear();
  // A binding a reload dropped may be freed now (BindingRegistry::Collect).
  egress_ = nullptr;
  binding_ = nullptr;
  binding_host_ = nullptr;
}

bool Lease::Park(ParkedConnection* conn, const void* owner) {
  if (host_ == nullptr || conn == nullptr) return false;
  return selector_->Park(*this, conn, owner);
}

// ---------------------------------------------------------------------------------------
// Selector.

SelectorImpl::SelectorImpl(std::shared_ptr<const Config> config, SelectorOptions options)
    : clock_(options.clock ? options.clock : MonotonicCoarseClock::Default()),
      random_(options.random ? options.random : SplitMixRandom::Default()),
      owned_registry_(options.registry ? nullptr : std::make_unique<HostRegistry>()),
      registry_(options.registry ? options.registry : owned_registry_.get()),
      planner_(registry_, options.resolver, clock_),
      routes_(std::make_shared<RouteInterner>()),
      domains_([routes = routes_](const RouteSnapshot* snap) { routes->Unref(snap); }) {
  SetConfig(std::move(config));
}

SelectorImpl::~SelectorImpl() {
  // REQUIRES: no Lease outstanding and no concurrent call. The table frees itself; the
  // snapshots its entries shared go with the interner (routes_), once evicted entries still
  // waiting for reclamation have dropped theirs. The live throttle set is owned here
  // (SetConfig only retires the sets it replaces).
  // Parked connections' owners must have unparked them (their sockets are theirs); any
  // left give their slots back here rather than leak.
  absl::flat_hash_map<const HostState*, std::vector<ParkedSlot>> lot;
  {
    MutexLock lock(&lot_mu_);
    lot.swap(lot_);
  }
  lot.clear();
  delete throttles_.exchange(nullptr, std::memory_order_acq_rel);
  epoch::Reclaim();
}

std::shared_ptr<const Config> SelectorImpl::config() const {
  MutexLock lock(&config_mu_);
  return config_;
}

void SelectorImpl::SetConfig(std::shared_ptr<const Config> config) {
  const int32_t limit = config->server_max_outbound_connections;
  if (Resolver* r = planner_.resolver()) {
    r->SetTtlBounds(config->max_dns_ttl_s, config->max_negative_dns_ttl_s);
  }
  const uint32_t idle_s = config->domain_idle_timeout_s;
  {
    MutexLock lock(&config_mu_);
    config_ = std::move(config);
    config_version_.fetch_add(1, std::memory_order_acq_rel);
  }
  {
    MutexLock lock(&config_mu_);
    bindings_.Configure(*config_);
    // Rate throttles: a new set takes over the old one's state (no burst on reload).
    ThrottleSet* old = throttles_.load(std::memory_order_acquire);
    auto set = std::make_unique<ThrottleSet>(*config_, old);
    throttles_.store(set->empty() ? nullptr : set.release(), std::memory_order_release);
    if (old != nullptr) epoch::RetireObject(old);
  }
  CollectBindings();
  server_credit_.SetLimit(limit, limit != kUnlimited);
  idle_ticks_.store(
      std::max<int64_t>(1, (int64_t{idle_s} * kNanosPerSecond) >> DomainEntry::kUseTickShift),
      std::memory_order_relaxed);
}

void SelectorImpl::CollectBindings() {
  if (!bindings_.has_replaced()) return;
  epoch::Reclaim();  // frees the replaced name maps no Acquire reads any more
  BindingRegistry::Freed freed;
  {
    // Tickets take and drop their egress refs under this mutex.
    MutexLock lock(&waiters_.mu());
    freed = bindings_.Collect();
  }
  freed.Retire();
}

DomainEntry* SelectorImpl::Materialize(std::string_view domain, Deferral* invalid) {
  absl::StatusOr<std::string> name = NormalizeHostname(domain);
  if (!name.ok()) {
    *invalid = {DeferReason::kPermanent,
                StrCat("5.1.2 invalid domain \"", Escape(domain.substr(0, 300)),
                       "\": ", ToStd(name.status().message()))};
    return nullptr;
  }
  // Entries are stored under the normalized name (lower-case, no trailing dot), which may
  // live in another shard than the name as given.
  const uint64_t hash = HashDomain(*name);
  const int64_t now = clock_->NowNanos();
  bool created = false;
  DomainEntry* entry = domains_.FindOrInsert(hash, *name, [&](DomainEntry& e) {
    created = true;
    e.cursor.store(static_cast<uint32_t>(random_->Next()), std::memory_order_relaxed);
    Publish(&e, planner_.Plan(*config(), e.name()));  // a new entry: no old route to drop
    e.generation.store(generation_.load(std::memory_order_acquire), std::memory_order_release);
    e.last_used.store(static_cast<uint32_t>(now >> DomainEntry::kUseTickShift),
                      std::memory_order_relaxed);
  });
  // Each new domain pays for sweeping a few slots of its shard, so idle domains leave at
  // the rate new ones come and memory levels off (docs/DESIGN.md §5), without a background thread.
  if (created) {
    stats_.CountDomainCreated();
    const size_t evicted = domains_.EvictIdleNear(hash, kEvictSlotsPerInsert, IdlePredicate(now));
    if (evicted > 0) stats_.CountDomainsEvicted(evicted);
    MaybeEvictIdleHosts();
  }
  return entry;
}

// Host states follow the live set like domains (docs/DESIGN.md §5): when the registry has
// doubled since the last sweep's survivors, one sweep marks the hosts of every interned
// route and evicts the idle rest — amortized O(1) per host created, no thread.
void SelectorImpl::MaybeEvictIdleHosts() {
  const HostRegistry& r = *registry_;
  const uint64_t resident = r.created() - r.evicted();
  if (owned_registry_ == nullptr || resident < host_sweep_at_.load(std::memory_order_relaxed)) {
    return;
  }
  if (host_sweeping_.exchange(true, std::memory_order_acquire)) return;  // another one sweeps
  EvictIdleHosts();
  const uint64_t left = r.created() - r.evicted();
  host_sweep_at_.store(std::max<uint64_t>(2 * left, left + kHostSweepSlack),
                       std::memory_order_relaxed);
  host_sweeping_.store(false, std::memory_order_release);
}

size_t SelectorImpl::EvictIdleHosts() {
  if (owned_registry_ == nullptr) return 0;  // shared: other selectors' routes are not known here
  absl::flat_hash_set<const HostState*> live;
  routes_->ForEachHost([&](const HostState* h) { live.insert(h); });
  return registry_->EvictIdle([&](const HostState* h) { return live.contains(h); },
                              clock_->NowNanos(), kHostRecentNanos);
}

std::function<bool(const DomainEntry&)> SelectorImpl::IdlePredicate(int64_t now) const {
  const uint32_t tick = static_cast<uint32_t>(now >> DomainEntry::kUseTickShift);
  const int64_t idle = idle_ticks_.load(std::memory_order_relaxed);
  return [tick, idle](const DomainEntry& e) {
    return static_cast<int64_t>(
               static_cast<uint32_t>(tick - e.last_used.load(std::memory_order_relaxed))) >= idle &&
           e.active.load(std::memory_order_relaxed) == 0 &&
           e.tickets.load(std::memory_order_relaxed) == 0;
  };
}

size_t SelectorImpl::EvictIdle() {
  CollectBindings();  // what a reload replaced and the last lease has since let go
  const size_t evicted = domains_.EvictIdle(SIZE_MAX, IdlePredicate(clock_->NowNanos()));
  if (evicted > 0) stats_.CountDomainsEvicted(evicted);
  return evicted;
}

void SelectorImpl::Publish(DomainEntry* entry, PlannedRoute planned) {
  const RouteSnapshot* fresh = routes_->Intern(std::move(planned.snapshot));
  entry->expires_at.store(planned.expires_at, std::memory_order_relaxed);
  const uint32_t n = FirstTierSize(*fresh);
  if ((entry->order.load(std::memory_order_relaxed) & 15) != n) {  // keep an order that fits
    entry->order.store(DrawOrder(n, *random_), std::memory_order_relaxed);
  }
  const RouteSnapshot* old = entry->snapshot.exchange(fresh, std::memory_order_acq_rel);
  routes_->Unref(old);  // retired through epoch.h if it was the last domain using it
}

const RouteSnapshot* SelectorImpl::Refresh(DomainEntry* entry, const RouteSnapshot* old, int64_t now) {
  for (int round = 0; entry->refreshing.exchange(true, std::memory_order_acquire); ++round) {
    // Another thread is re-planning. A usable route keeps serving meanwhile; an unusable
    // one (still resolving) would make this caller wait for the *next* DNS answer — which
    // may never come — so wait for the winner's result. The winner may have planned before
    // the answer that woke this caller was stored: if its route is still unusable, plan
    // (or, losing again, take the plan of a thread that started after this one waited).
    // Planning never blocks (DNS lookups only read the cache), so this is short.
    if (old->state() == RouteState::kReady) return old;
    while (entry->refreshing.load(std::memory_order_acquire)) std::this_thread::yield();
    old = entry->snapshot.load(std::memory_order_acquire);
    if (round == 1 || old->state() == RouteState::kReady) return old;
  }
  // Won the flag, but another thread may have re-planned between this caller's load and
  // now: if the route in place is current, use it (planning again could land on an answer
  // that just left the DNS cache, and the stale path below would then cut a fresh TTL to
  // 200 ms and hand out a superseded route).
  old = entry->snapshot.load(std::memory_order_acquire);
  if (now < entry->expires_at.load(std::memory_order_relaxed) &&
      entry->generation.load(std::memory_order_acquire) ==
          generation_.load(std::memory_order_acquire)) {
    entry->refreshing.store(false, std::memory_order_release);
    return old;
  }
  return Replan(entry, old, now);
}

const RouteSnapshot* SelectorImpl::Replan(DomainEntry* entry, const RouteSnapshot* old,
                                          int64_t now) {
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  PlannedRoute fresh = planner_.Plan(*config(), entry->name());
  const RouteSnapshot* now_serving = old;
  if (old->state() == RouteState::kReady && fresh->state() != RouteState::kReady &&
      fresh->state() != RouteState::kPermFail) {
    // Stale-while-revalidate: DNS is slow or failing; keep the hosts we had rather than
    // deferring mail that could go, and look again shortly (the answer may be in by then).
    entry->expires_at.store(now + kStaleRetryNanos, std::memory_order_relaxed);
  } else {
    Publish(entry, std::move(fresh));
    now_serving = entry->snapshot.load(std::memory_order_acquire);
  }
  entry->generation.store(gen, std::memory_order_release);
  entry->refreshing.store(false, std::memory_order_release);
  return now_serving;
}

void SelectorImpl::ReleaseLease(Lease& lease) {
  // Pinned: once the host's count reaches 0 a host sweep may claim and retire it
  // (EvictIdleHosts), and the hand-off below still reads it.
  epoch::EpochGuard pin;
  __builtin_prefetch(lease.domain_, 1);  // the host's RMW below stalls; fetch both lines at once
  if (lease.binding_host_ != nullptr) {
    // The binding's counts first, then the domain's total: the default binding's count
    // (active - bound) is never seen too low (Admit).
    lease.binding_host_->Release(lease.binding_probe_);
    lease.binding_domain_->fetch_sub(1, std::memory_order_acq_rel);
    lease.domain_->bindings.head.load(std::memory_order_acquire)
        ->bound.fetch_sub(1, std::memory_order_seq_cst);
    lease.egress_->Unref();  // last: the binding may be freed after a reload (Collect)
  }
  lease.host_->Release(lease.probe_, lease.group_);
  lease.domain_->active.fetch_sub(1, std::memory_order_seq_cst);
  if (server_credit_.limited()) server_credit_.Return();
  // The slot is free; if anyone waits, hand it over before a newcomer can race for it
  // (newcomers skip hosts and domains with waiters). The seq_cst RMWs above and the read
  // here pair with WaitForSlot's registration, so a waiter is never missed.
  if (ABSL_PREDICT_FALSE(waiters_.maybe_nonempty())) HandOff(lease.host_, lease.domain_);
}

// The one admission routine: DESIGN §1 rules 1-3 and §5's "older waiters first". Inlined
// into both callers, so Acquire's copy (no ticket, nothing freed) folds the queue checks
// away to the lock-free counters.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline SelectorImpl::Grant SelectorImpl::Admit(
    DomainEntry* entry, const RouteSnapshot& snap, const Claim& claim, int64_t now, Lease* out,
    bool* saw_full) {
  const SlotWaiters::Ticket* t = claim.ticket;
  const HostState* freed = claim.freed;
  // Domain: a bounded CAS. Older waiters for this domain's own limit go first.
  if (ABSL_PREDICT_FALSE(entry->waiting.load(std::memory_order_seq_cst) != 0) &&
      (t == nullptr || !waiters_.HeadsDomain(entry, t))) {
    return entry->active.load(std::memory_order_relaxed) < 0 ? Grant::kEvicted : Grant::kDomain;
  }
  // Connection reuse (DESIGN §13): a parked connection in the best usable tier first.
  if (ABSL_PREDICT_FALSE(claim.reuse_owner != nullptr &&
                         parked_.load(std::memory_order_acquire) != 0) &&
      AdmitParked(entry, snap, claim, now, out) == Grant::kGranted) {
    return Grant::kGranted;
  }
  const Egress* egress = claim.egress;
  const int32_t domain_limit = snap.domain_limit();
  int32_t active = entry->active.load(std::memory_order_seq_cst);
  if (ABSL_PREDICT_TRUE(egress == nullptr)) {
    // The default binding: the domain's connections minus those through named bindings
    // (read after `active`: a bound take raises active first, a bound release lowers
    // `bound` first, and any of them fails this CAS, so the count is never seen too low).
    do {
      if (ABSL_PREDICT_FALSE(active < 0)) return Grant::kEvicted;
      if (active - DomainBindingCounts::Bound(entry->bindings.head) >= domain_limit) {
        return Grant::kDomain;
      }
    } while (!entry->active.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                                  std::memory_order_relaxed));
  } else {
    // Through a binding: the limit is per binding (AdmitBinding); `active` is the total.
    do {
      if (ABSL_PREDICT_FALSE(active < 0)) return Grant::kEvicted;
    } while (!entry->active.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                                  std::memory_order_relaxed));
  }
  bool binding_domain_room = false, binding_usable = false;
  RateThrottle* rate_blocked = nullptr;
  // Server: per-thread credit, exact. Older server waiters first.
  const bool server_limited = server_credit_.limited();
  if (server_limited) {
    const bool older_waits = t == nullptr ? waiters_.server_waiting()
                                          : waiters_.ServerHead() != nullptr && !waiters_.HeadsServer(t);
    if (ABSL_PREDICT_FALSE(older_waits) || !server_credit_.Take()) {
      entry->active.fetch_sub(1, std::memory_order_acq_rel);
      return Grant::kServer;
    }
  }
  // Hosts: strict preference (tier by tier), even spreading (the domain's own order).
  for (size_t ti = 0; ti < snap.num_tiers(); ++ti) {
    std::span<HostState* const> hosts = snap.TierHosts(ti);
    const uint32_t n = static_cast<uint32_t>(hosts.size());
    const uint32_t start = entry->cursor.load(std::memory_order_relaxed);
    // A hand-off tries the freed host first in its tier: the slot is handed over, not re-raced.
    int32_t freed_at = -1;
    for (uint32_t i = 0; i < n && freed != nullptr; ++i) {
      if (hosts[i] == freed) freed_at = static_cast<int32_t>(i);
    }
    TierWalk walk(n, start, *entry);
    for (uint32_t k = 0; k < n + (freed_at >= 0 ? 1 : 0); ++k) {
      const bool handed = freed_at >= 0 && k == 0;     // the freed host, out of turn
      const uint32_t pos = freed_at >= 0 ? k - 1 : k;  // position in this domain's order
      uint32_t idx;
      if (handed) {
        idx = static_cast<uint32_t>(freed_at);
      } else {
        idx = walk.idx();
        walk.Next();
        if (freed_at >= 0 && idx == static_cast<uint32_t>(freed_at)) continue;
      }
      HostState* h = hosts[idx];
      // Waiters queued on a host get its next slot. A newcomer may still probe a failed
      // host (waiters do not poll: the probe that brings it back comes from a new session).
      if (ABSL_PREDICT_FALSE(h->waiting() != 0) && h != freed) {
        const bool may = t == nullptr ? h->failed_until() != 0 : waiters_.HeadsHost(h, t);
        if (!may) {
          *saw_full = true;
          continue;
        }
      }
      AdmitTicket ticket;
      Admission a = h->TryAdmit(now, &ticket);
      Lease bound;
      if (egress != nullptr && (a == Admission::kAdmitted || a == Admission::kProbe) &&
          !AdmitBinding(entry, *egress, h, now, &bound, saw_full, &binding_domain_room,
                        &binding_usable)) {
        h->Release(a == Admission::kProbe, ticket.group);
        continue;  // no binding can use this host now
      }
      if (a == Admission::kAdmitted || a == Admission::kProbe) {
        int64_t start_at = 0;
        if (ThrottleSet* ts = throttles_.load(std::memory_order_acquire);
            ABSL_PREDICT_FALSE(ts != nullptr)) {
          // Rate throttles (DESIGN §12): all or none, after every count has room.
          RateThrottle* blocked = nullptr;
          const ThrottleReservation r = ReserveStart(*ts, *entry, *h, bound.binding_, now,
                                                     claim.throttle_wait, &blocked);
          if (!r.ok) {
            if (egress != nullptr) UndoBinding(entry, bound);
            h->Release(a == Admission::kProbe, ticket.group);
            rate_blocked = blocked;
            if (blocked->per_host()) continue;  // another host of the tier may go
            break;  // the same for every host: the tier waits (no spill)
          }
          if (r.at > now) start_at = r.at;
        }
        // Racy by design: concurrent pickers may start at the same place; the limits stay
        // exact, only the rotation is approximate under contention. A hand-off does not
        // move the rotation: the host was not this domain's turn.
        if (!handed) entry->cursor.store(start + pos + 1, std::memory_order_relaxed);
        Lease lease;
        lease.selector_ = this;
        lease.host_ = h;
        lease.domain_ = entry;
        lease.group_ = ticket.group;
        lease.level_ = ticket.level;
        lease.probe_ = a == Admission::kProbe;
        lease.start_at_ = start_at;
        if (egress != nullptr) {
          lease.egress_ = egress;
          egress->Ref();  // a reload frees it once no lease holds it (bindings.h)
          lease.binding_ = std::exchange(bound.binding_, nullptr);
          lease.binding_host_ = std::exchange(bound.binding_host_, nullptr);
          lease.binding_domain_ = std::exchange(bound.binding_domain_, nullptr);
          lease.binding_domain_limit_ = bound.binding_domain_limit_;
          lease.source_ = bound.source_;
          lease.has_source_ = bound.has_source_;
          lease.binding_probe_ = bound.binding_probe_;
        } else if (const IpAddress* src = bindings_.DefaultSource(h->endpoint().address.is_v4())) {
          // The default binding's source: the global bind_address (rule 13).
          lease.source_ = *src;
          lease.has_source_ = true;
        }
        *out = std::move(lease);
        return Grant::kGranted;
      }
      *saw_full |= a == Admission::kFull;
    }
    // A throttled tier does not spill to a worse one (a rate is not "at its limit").
    if (ABSL_PREDICT_FALSE(rate_blocked != nullptr)) break;
  }
  entry->active.fetch_sub(1, std::memory_order_acq_rel);
  if (server_limited) server_credit_.Return();
  if (ABSL_PREDICT_FALSE(rate_blocked != nullptr)) {
    rate_blocked->CountThrottled();
    if (claim.blocked != nullptr) *claim.blocked = rate_blocked;
    return Grant::kRate;
  }
  // Through bindings: every binding tried was at its limit for this domain.
  if (egress != nullptr && binding_usable && !binding_domain_room && !*saw_full) {
    return Grant::kDomain;
  }
  return Grant::kHosts;
}

SelectorImpl::Grant SelectorImpl::AdmitParked(DomainEntry* entry, const RouteSnapshot& snap,
                                              const Claim& claim, int64_t now, Lease* out) {
  const Egress* egress = claim.egress;
  MutexLock lock(&lot_mu_);
  for (size_t ti = 0; ti < snap.num_tiers(); ++ti) {
    std::span<HostState* const> hosts = snap.TierHosts(ti);
    const uint32_t n = static_cast<uint32_t>(hosts.size());
    const uint32_t start = entry->cursor.load(std::memory_order_relaxed);
    TierWalk walk(n, start, *entry);
    bool room = false;  // a host of this tier could take a fresh connection now
    for (uint32_t k = 0; k < n; ++k) {
      HostState* h = hosts[walk.idx()];
      walk.Next();
      if (!h->Reachable(now)) continue;
      room |= h->HasRoom() && h->waiting() == 0;
      auto it = lot_.find(h);
      if (it == lot_.end()) continue;
      std::vector<ParkedSlot>& slots = it->second;
      // The most recently parked first: the oldest idle ones age out (idle_timeout).
      for (size_t j = slots.size(); j-- > 0;) {
        ParkedSlot& p = slots[j];
        if (p.owner != claim.reuse_owner) continue;
        Lease& l = p.lease;
        // A parked connection serves only its own binding (rule 13): the default binding's
        // only without a binding, a named one only through an egress that has it.
        if ((l.binding_ == nullptr) != (egress == nullptr)) continue;
        if (egress != nullptr &&
            std::find(egress->members.begin(), egress->members.end(), l.binding_) ==
                egress->members.end()) {
          continue;
        }
        DomainEntry* from = l.domain_;
        // Through a named binding: the new domain's count through that binding.
        DomainBindingCounts::Slot* bds = nullptr;
        int32_t blimit = 0;
        if (from != entry && l.binding_ != nullptr) {
          // The per-binding domain count moves (rule 13 of §1): taken through the binding as
          // AdmitBinding takes it, then the total (raised and marked bound, as Admit does).
          bds = BindingDomainSlot(
              entry, l.binding_,
              static_cast<uint32_t>(config_version_.load(std::memory_order_acquire)));
          blimit = bds->limit.load(std::memory_order_relaxed);
          int32_t a = bds->active.load(std::memory_order_relaxed);
          bool took = false;
          while (a < blimit) {
            if (bds->active.compare_exchange_weak(a, a + 1, std::memory_order_acq_rel,
                                                  std::memory_order_relaxed)) {
              took = true;
              break;
            }
          }
          if (!took) continue;  // full through this binding: maybe another parked one
          entry->active.fetch_add(1, std::memory_order_seq_cst);
          entry->bindings.head.load(std::memory_order_acquire)
              ->bound.fetch_add(1, std::memory_order_seq_cst);
        } else if (from != entry) {
          // The domain's own slot, as a fresh connection would take it (the default
          // binding's count, rule 13).
          int32_t a = entry->active.load(std::memory_order_seq_cst);
          bool took = false;
          while (a >= 0 &&
                 a - DomainBindingCounts::Bound(entry->bindings.head) < snap.domain_limit()) {
            if (entry->active.compare_exchange_weak(a, a + 1, std::memory_order_acq_rel,
                                                    std::memory_order_relaxed)) {
              took = true;
              break;
            }
          }
          if (!took) return Grant::kHosts;  // the domain is full: Admit says why
        }
        int64_t start_at = 0;
        if (ThrottleSet* ts = throttles_.load(std::memory_order_acquire);
            ABSL_PREDICT_FALSE(ts != nullptr)) {
          // A reused connection takes a message token only (DESIGN §12 rule 5).
          RateThrottle* t[kMaxThrottlesPerStart];
          const size_t nt = ts->Collect(entry->name(), entry->hash, &entry->throttle_cache,
                                        h->name(), h->endpoint().address, &h->throttle_cache(),
                                        l.binding_ != nullptr ? std::string_view(l.binding_->name())
                                                              : std::string_view(),
                                        /*new_connection=*/false, t);
          const ThrottleReservation r =
              ReserveAll(std::span<RateThrottle* const>(t, nt), now, claim.throttle_wait);
          if (!r.ok) {
            if (bds != nullptr) {
              bds->active.fetch_sub(1, std::memory_order_acq_rel);
              entry->bindings.head.load(std::memory_order_acquire)
                  ->bound.fetch_sub(1, std::memory_order_seq_cst);
            }
            if (from != entry) entry->active.fetch_sub(1, std::memory_order_acq_rel);
            return Grant::kHosts;  // Admit meets the same throttle and says so
          }
          if (r.at > now) start_at = r.at;
        }
        Lease lease = std::move(l);
        lease.domain_ = entry;
        lease.reused_ = p.conn;
        lease.reported_ = true;
        lease.probe_ = false;
        lease.start_at_ = start_at;
        if (from != entry) lease.moving_from_.assign(from->name());
        slots.erase(slots.begin() + static_cast<ptrdiff_t>(j));
        if (slots.empty()) lot_.erase(it);
        parked_.fetch_sub(1, std::memory_order_acq_rel);
        if (bds != nullptr) {
          // The old domain's count through the binding goes back (as ReleaseLease: the
          // binding's counts first, then the total below).
          lease.binding_domain_->fetch_sub(1, std::memory_order_acq_rel);
          from->bindings.head.load(std::memory_order_acquire)
              ->bound.fetch_sub(1, std::memory_order_seq_cst);
          lease.binding_domain_ = &bds->active;
          lease.binding_domain_limit_ = blimit;
        }
        if (from != entry) {
          // The old domain's slot is free: its waiters are served once outside the locks.
          from->active.fetch_sub(1, std::memory_order_seq_cst);
          if (claim.released_domain != nullptr) *claim.released_domain = from;
        }
        entry->cursor.store(start + k + 1, std::memory_order_relaxed);
        stats_.CountReuse(ReuseEvent::kReused);
        *out = std::move(lease);
        return Grant::kGranted;
      }
    }
    if (room) return Grant::kHosts;  // strict preference: a fresh connection in this tier
  }
  return Grant::kHosts;
}

bool SelectorImpl::Park(Lease& lease, ParkedConnection* conn, const void* owner) {
  HostState* h = lease.host_;
  DomainEntry* d = lease.domain_;
  const int64_t now = clock_->NowNanos();
  auto put = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<ParkedSlot>& slots = lot_[h];
    slots.push_back(ParkedSlot{std::move(lease), conn, owner, now});
    slots.back().lease.reused_ = nullptr;
    parked_.fetch_add(1, std::memory_order_acq_rel);
  };
  const bool contested = waiters_.maybe_nonempty() &&
                         (h->waiting() != 0 || d->waiting.load(std::memory_order_seq_cst) != 0 ||
                          waiters_.server_waiting());
  if (!contested) {
    MutexLock lock(&lot_mu_);
    put();
    stats_.CountReuse(ReuseEvent::kParked);
    return true;
  }
  // Sessions wait for what it holds: the oldest of them gets it if it can use it (its owner
  // and route), else the connection is not parked and its slot goes to them on Release.
  absl::InlinedVector<std::pair<SlotWaiter*, Lease>, 2> grants;
  absl::InlinedVector<DomainEntry*, 2> released;
  bool parked = true;
  {
    epoch::EpochGuard guard;
    MutexLock lock(&waiters_.mu());
    {
      MutexLock lot_lock(&lot_mu_);
      put();
    }
    auto still_parked = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      MutexLock lot_lock(&lot_mu_);
      auto it = lot_.find(h);
      if (it == lot_.end()) return false;
      for (const ParkedSlot& p : it->second) {
        if (p.conn == conn) return true;
      }
      return false;
    };
    for (int guard_n = 0; guard_n < 1024 && still_parked(); ++guard_n) {
      SlotWaiters::Node* head = h->waiting() != 0 ? waiters_.HostHead(h)
                                : d->waiting.load(std::memory_order_seq_cst) != 0
                                    ? waiters_.DomainHead(d)
                                    : waiters_.ServerHead();
      if (head == nullptr) break;
      SlotWaiters::Ticket* t = head->ticket;
      Lease granted;
      DomainEntry* rel = nullptr;
      if (TryGrant(t->domain, t, h, now, &granted, nullptr, 0, &rel) != Grant::kGranted) {
        // The oldest cannot use it: it is not parked; Release hands its slot over.
        MutexLock lot_lock(&lot_mu_);
        auto it = lot_.find(h);
        for (size_t j = 0; it != lot_.end() && j < it->second.size(); ++j) {
          if (it->second[j].conn != conn) continue;
          lease = std::move(it->second[j].lease);
          it->second.erase(it->second.begin() + static_cast<ptrdiff_t>(j));
          if (it->second.empty()) lot_.erase(it);
          parked_.fetch_sub(1, std::memory_order_acq_rel);
          parked = false;
          break;
        }
        break;
      }
      if (rel != nullptr) released.push_back(rel);
      grants.emplace_back(waiters_.Remove(t), std::move(granted));
    }
  }
  if (parked) stats_.CountReuse(ReuseEvent::kParked);
  for (auto& [w, l] : grants) w->Wake(std::move(l));
  for (DomainEntry* e : released) HandOff(nullptr, e);
  return parked;
}

bool SelectorImpl::TakeVictim(const SlotWaiters::Ticket* t, ParkedSlot* victim) {
  MutexLock lock(&lot_mu_);
  if (lot_.empty()) return false;
  auto take = [&](std::vector<ParkedSlot>& slots, size_t j, const HostState* key)
                  ABSL_NO_THREAD_SAFETY_ANALYSIS {
    *victim = std::move(slots[j]);
    slots.erase(slots.begin() + static_cast<ptrdiff_t>(j));
    if (slots.empty()) lot_.erase(key);
    parked_.fetch_sub(1, std::memory_order_acq_rel);
    return true;
  };
  if (t->kind == SlotWaiters::Kind::kHosts) {
    // The best tier of its route with a parked connection on a full host: its oldest.
    const RouteSnapshot* snap = t->domain->snapshot.load(std::memory_order_acquire);
    for (size_t ti = 0; ti < snap->num_tiers(); ++ti) {
      const HostState* best = nullptr;
      int64_t since = 0;
      for (HostState* h : snap->TierHosts(ti)) {
        auto it = lot_.find(h);
        if (it == lot_.end() || h->HasRoom()) continue;
        if (best == nullptr || it->second.front().since < since) {
          best = h;
          since = it->second.front().since;
        }
      }
      if (best != nullptr) return take(lot_[best], 0, best);
    }
    return false;
  }
  // The domain's limit (its own parked connections) or the server's (any): the oldest.
  const HostState* best = nullptr;
  size_t best_j = 0;
  int64_t since = 0;
  for (auto& [h, slots] : lot_) {
    for (size_t j = 0; j < slots.size(); ++j) {
      if (t->kind == SlotWaiters::Kind::kDomain && slots[j].lease.domain_ != t->domain) continue;
      if (best == nullptr || slots[j].since < since) {
        best = h;
        best_j = j;
        since = slots[j].since;
      }
      break;  // oldest first within a host
    }
  }
  return best != nullptr && take(lot_[best], best_j, best);
}

Lease SelectorImpl::Unpark(ParkedConnection* conn) {
  MutexLock lock(&lot_mu_);
  for (auto it = lot_.begin(); it != lot_.end(); ++it) {
    std::vector<ParkedSlot>& slots = it->second;
    for (size_t j = 0; j < slots.size(); ++j) {
      if (slots[j].conn != conn) continue;
      Lease l = std::move(slots[j].lease);
      slots.erase(slots.begin() + static_cast<ptrdiff_t>(j));
      if (slots.empty()) lot_.erase(it);
      parked_.fetch_sub(1, std::memory_order_acq_rel);
      return l;
    }
  }
  return Lease();
}

int32_t SelectorImpl::parked_on(const HostState& host) const {
  if (parked_.load(std::memory_order_acquire) == 0) return 0;
  MutexLock lock(&lot_mu_);
  auto it = lot_.find(&host);
  return it == lot_.end() ? 0 : static_cast<int32_t>(it->second.size());
}

bool SelectorImpl::AdmitBinding(DomainEntry* entry, const Egress& egress, HostState* h,
                                int64_t now, Lease* out, bool* saw_full, bool* domain_room,
                                bool* saw_usable) {
  const uint32_t n = static_cast<uint32_t>(egress.members.size());
  const uint32_t start = egress.cursor.load(std::memory_order_relaxed);
  const bool v4 = h->endpoint().address.is_v4();
  const uint32_t version = static_cast<uint32_t>(config_version_.load(std::memory_order_acquire));
  for (uint32_t k = 0; k < n; ++k) {
    const uint32_t i = n == 1 ? 0 : (start + k) % n;
    Binding* b = egress.members[i];
    bool usable;
    const IpAddress* source = b->addresses().For(v4, &usable);
    if (!usable) continue;  // no address of the host's family
    *saw_usable = true;
    // The domain's count through this binding (Momentum: max_outbound_connections per
    // binding), its limit computed once per configuration.
    DomainBindingCounts::Slot* ds = BindingDomainSlot(entry, b, version);
    const int32_t dlimit = ds->limit.load(std::memory_order_relaxed);
    int32_t a = ds->active.load(std::memory_order_relaxed);
    bool took = false;
    while (a < dlimit) {
      if (ds->active.compare_exchange_weak(a, a + 1, std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
        took = true;
        break;
      }
    }
    if (!took) continue;
    *domain_room = true;
    BindingHost* bh = b->GetOrCreate(*h);
    if (bh == nullptr) {
      ds->active.fetch_sub(1, std::memory_order_acq_rel);
      continue;
    }
    if (ABSL_PREDICT_FALSE(bh->version.load(std::memory_order_acquire) != version)) {
      std::shared_ptr<const Config> c = config();
      const BindingSpec* spec = c->FindBinding(b->name());
      const std::string_view name = h->name() == h->endpoint().address.ToString()
                                        ? std::string_view()
                                        : std::string_view(h->name());
      bh->limit.store(spec ? Config::BindingHostLimit(*spec, name, h->endpoint().address)
                           : kUnlimited,
                      std::memory_order_relaxed);
      bh->version.store(version, std::memory_order_release);
    }
    const Admission adm = bh->TryAdmit(now);
    if (adm != Admission::kAdmitted && adm != Admission::kProbe) {
      *saw_full |= adm == Admission::kFull;
      ds->active.fetch_sub(1, std::memory_order_acq_rel);
      continue;
    }
    // The domain's total was raised before (Admit): now `bound` (see ReleaseLease).
    entry->bindings.head.load(std::memory_order_acquire)
        ->bound.fetch_add(1, std::memory_order_seq_cst);
    if (n > 1) egress.cursor.store(start + k + 1, std::memory_order_relaxed);
    out->binding_ = b;
    out->binding_host_ = bh;
    out->binding_domain_ = &ds->active;
    out->binding_domain_limit_ = dlimit;
    out->binding_probe_ = adm == Admission::kProbe;
    out->has_source_ = source != nullptr;
    if (source != nullptr) out->source_ = *source;
    return true;
  }
  return false;
}

DomainBindingCounts::Slot* SelectorImpl::BindingDomainSlot(DomainEntry* entry, const Binding* b,
                                                           uint32_t version) {
  DomainBindingCounts::Slot* ds =
      DomainBindingCounts::Get(entry->bindings.head, b->id(), bindings_.size());
  if (ABSL_PREDICT_FALSE(ds->version.load(std::memory_order_acquire) != version)) {
    std::shared_ptr<const Config> c = config();
    const BindingSpec* spec = c->FindBinding(b->name());
    ds->limit.store(spec ? c->BindingDomainLimit(*spec, entry->name())
                         : c->ForDomain(entry->name()).max_outbound_connections,
                    std::memory_order_relaxed);
    ds->version.store(version, std::memory_order_release);
  }
  return ds;
}

void SelectorImpl::UndoBinding(DomainEntry* entry, Lease& bound) {
  bound.binding_host_->Release(bound.binding_probe_);
  bound.binding_domain_->fetch_sub(1, std::memory_order_acq_rel);
  entry->bindings.head.load(std::memory_order_acquire)->bound.fetch_sub(1, std::memory_order_seq_cst);
  bound.binding_ = nullptr;
  bound.binding_host_ = nullptr;
  bound.binding_domain_ = nullptr;
}

ThrottleReservation SelectorImpl::ReserveStart(const ThrottleSet& set, const DomainEntry& entry,
                                               const HostState& h, const Binding* binding,
                                               int64_t now, int64_t max_wait,
                                               RateThrottle** blocked) {
  RateThrottle* ts[kMaxThrottlesPerStart];
  const size_t n = set.Collect(entry.name(), entry.hash, &entry.throttle_cache, h.name(),
                               h.endpoint().address, &h.throttle_cache(),
                               binding != nullptr ? std::string_view(binding->name()) : "",
                               /*new_connection=*/true, ts);
  const ThrottleReservation r = ReserveAll(std::span<RateThrottle* const>(ts, n), now, max_wait);
  if (!r.ok) *blocked = ts[r.blocking];
  return r;
}

const Egress* SelectorImpl::ResolveEgress(const AcquireOptions& options, bool* unknown) const {
  *unknown = false;
  if (options.binding.empty()) return bindings_.default_egress();
  const Egress* e = bindings_.Lookup(options.binding);
  *unknown = e == nullptr;
  return e;
}

SelectorImpl::Grant SelectorImpl::TryGrant(DomainEntry* entry, const SlotWaiters::Ticket* t,
                                           const HostState* freed, int64_t now, Lease* out,
                                           const Egress* egress, int64_t throttle_wait,
                                           DomainEntry** released, const void* reuse_owner) {
  const RouteSnapshot* snap = entry->snapshot.load(std::memory_order_acquire);
  if (snap->state() != RouteState::kReady) return Grant::kHosts;
  bool saw_full = false;
  const int64_t wait =
      t != nullptr ? SlotWaiters::ThrottleWaitLeft(t->throttle_deadline, now) : throttle_wait;
  Claim claim{t, freed, t != nullptr ? t->egress : egress, wait};
  claim.reuse_owner = t != nullptr ? t->waiter->reuse_owner_ : reuse_owner;
  claim.released_domain = released;
  const Grant g = Admit(entry, *snap, claim, now, out, &saw_full);
  return g == Grant::kEvicted ? Grant::kHosts : g;  // WaitForSlot looks it up again
}

SlotWaiters::Ticket* SelectorImpl::Enqueue(DomainEntry* entry, SlotWaiter* waiter, Grant why,
                                           bool front, const Egress* egress) {
  SlotWaiters::Kind kind = why == Grant::kDomain   ? SlotWaiters::Kind::kDomain
                           : why == Grant::kServer ? SlotWaiters::Kind::kServer
                                                   : SlotWaiters::Kind::kHosts;
  SlotWaiters::HostList hosts;
  if (kind == SlotWaiters::Kind::kHosts) {
    const RouteSnapshot* snap = entry->snapshot.load(std::memory_order_acquire);
    for (size_t ti = 0; ti < snap->num_tiers(); ++ti) {
      for (HostState* h : snap->TierHosts(ti)) {
        if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
      }
    }
  }
  SlotWaiters::Ticket* t = waiters_.Add(waiter, entry, kind, hosts, front);
  t->egress = egress;
  if (egress != nullptr) egress->Ref();  // dropped by SlotWaiters::Remove
  return t;
}

void SelectorImpl::HandOff(HostState* host, DomainEntry* domain) {
  // Nobody waits for what was freed (waiters on other hosts or domains do not count): done
  // without the mutex. Sound for the same reason as ReleaseLease's maybe_nonempty(): these
  // seq_cst reads follow the seq_cst RMWs that freed the slot, and a waiter raises the same
  // counters (seq_cst) before its re-check. A group host always looks (its group's slot
  // may serve waiters queued on the group's other hosts).
  if ((host == nullptr || (host->waiting() == 0 && host->group() == nullptr)) &&
      (domain == nullptr || domain->waiting.load(std::memory_order_seq_cst) == 0) &&
      !waiters_.server_waiting()) {
    return;
  }
  absl::InlinedVector<std::pair<SlotWaiter*, Lease>, 2> grants;
  absl::InlinedVector<DomainEntry*, 2> released;  // slots given up by reused connections
  {
    epoch::EpochGuard guard;
    MutexLock lock(&waiters_.mu());
    const int64_t now = clock_->NowNanos();
    // Tickets that lost their reason to wait on one queue but must wait on another (a
    // domain waiter whose domain now has room but whose hosts are full) move there.
    absl::InlinedVector<std::pair<SlotWaiters::Ticket*, Grant>, 2> moves;
    auto serve = [&](SlotWaiters::Node* n, const HostState* freed,
                     bool skip_domain_full) ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_.mu()) {
      while (n != nullptr) {
        if (freed != nullptr && (!freed->HasRoom() || !freed->Reachable(now))) {
          return;  // nothing left to hand out here
        }
        SlotWaiters::Node* next = n->next;
        SlotWaiters::Ticket* t = n->ticket;
        // The waiter is written (Remove, Wake) after TryGrant's reads: fetch it meanwhile.
        __builtin_prefetch(t->waiter, 1);
        Lease lease;
        DomainEntry* rel = nullptr;
        const Grant g = TryGrant(t->domain, t, freed, now, &lease, nullptr, 0, &rel);
        if (rel != nullptr) released.push_back(rel);
        if (g == Grant::kGranted) {
          grants.emplace_back(waiters_.Remove(t), std::move(lease));
          if (freed == nullptr) return;  // one domain or server slot freed: one grant
        } else if (g == Grant::kRate) {
          // A throttle would make it start after its wait ends: it asks again and defers
          // with the throttle's reason; the slot may serve the next waiter.
          grants.emplace_back(waiters_.Remove(t), Lease());
        } else if (g == Grant::kDomain && skip_domain_full) {
          // This waiter's own domain is full: the slot may serve the next one.
        } else {
          const bool misplaced = (t->kind == SlotWaiters::Kind::kDomain && g == Grant::kHosts) ||
                                 (t->kind == SlotWaiters::Kind::kServer && g != Grant::kServer);
          if (freed != nullptr || !misplaced) return;
          moves.emplace_back(t, g);  // and look further for one who can use the slot
        }
        n = next;
      }
    };
    if (host != nullptr && host->waiting() != 0) serve(waiters_.HostHead(host), host, true);
    // A provider limit (docs/DESIGN.md §6) shared with other hosts: the freed group slot may
    // serve a waiter queued on another host of the group, first in line first.
    if (host != nullptr && host->group() != nullptr) {
      const LimitGroup* group = host->group();
      SlotWaiters::GroupHandOff walk(waiters_, group, host);
      auto eligible = [&](const HostState* h) {
        return h->group() == group && h->active() < h->limit() && h->Reachable(now);
      };
      while (group->HasRoom()) {
        SlotWaiters::Node* best = walk.Next(eligible);
        if (best == nullptr) break;
        SlotWaiters::Ticket* t = best->ticket;
        Lease lease;
        const HostState* freed = static_cast<const SlotWaiters::HostQueue*>(best->queue)->host;
        DomainEntry* rel = nullptr;
        const Grant g = TryGrant(t->domain, t, freed, now, &lease, nullptr, 0, &rel);
        if (rel != nullptr) released.push_back(rel);
        if (g == Grant::kGranted) {
          walk.Granted(t);
          grants.emplace_back(waiters_.Remove(t), std::move(lease));
        } else if (g == Grant::kRate) {
          walk.Granted(t);  // leaves the queue: it asks again (see serve)
          grants.emplace_back(waiters_.Remove(t), Lease());
        } else if (g == Grant::kServer) {
          break;  // no server credit: nobody else can use the slot either
        } else if (g == Grant::kDomain) {
          walk.DomainFull();
        } else {
          walk.HostDone();
        }
      }
    }
    if (domain != nullptr && domain->waiting.load(std::memory_order_seq_cst) != 0) {
      serve(waiters_.DomainHead(domain), nullptr, false);
    }
    if (waiters_.server_waiting()) serve(waiters_.ServerHead(), nullptr, false);
    for (auto& [t, why] : moves) {
      DomainEntry* e = t->domain;
      const Egress* egress = t->egress;
      const uint32_t deadline = t->throttle_deadline;
      Enqueue(e, waiters_.Remove(t), why, /*front=*/false, egress)->throttle_deadline = deadline;
    }
  }
  for (auto& [w, lease] : grants) w->Wake(std::move(lease));
  for (DomainEntry* e : released) HandOff(nullptr, e);
}

namespace {
// A full fence. ThreadSanitizer does not model fences (GCC rejects them under
// -fsanitize=thread with -Werror=tsan); every access the fence orders here is itself a
// seq_cst atomic, which TSan does model, so its race detection loses nothing without it.
inline void SeqCstFence() {
#ifndef MXSCHED_TSAN
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}
}  // namespace

void SelectorImpl::WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front,
                               const AcquireOptions& options) {
  epoch::EpochGuard guard;
  bool unknown = false;
  const Egress* egress = ResolveEgress(options, &unknown);
  if (unknown) {  // nothing will ever free up through a binding that does not exist
    waiter->Wake(Lease());
    return;
  }
  Lease lease;
  bool rate_limited = false;
  waiter->reuse_owner_ = options.reuse_owner;
  DomainEntry* released = nullptr;  // a slot a reused connection gave up
  ParkedSlot victim;                // a parked connection closed for this waiter
  for (;;) {
    Deferral unused{DeferReason::kPermanent, {}};
    DomainEntry* entry = FindOrCreate(domain, &unused);
    if (entry == nullptr) {  // not a valid domain: nothing will ever free up
      waiter->Wake(Lease());
      return;
    }
    const int64_t now = clock_->NowNanos();
    bool evicted = false;
    {
      MutexLock lock(&waiters_.mu());
      Grant g = front ? Grant::kHosts
                      : TryGrant(entry, nullptr, nullptr, now, &lease, egress,
                                 options.throttle_wait_nanos, &released, options.reuse_owner);
      if (g == Grant::kRate) {
        rate_limited = true;  // not a slot to wait for: it asks again and defers
      } else if (g != Grant::kGranted) {
        SlotWaiters::Ticket* t = Enqueue(entry, waiter, g, front, egress);
        t->throttle_deadline = SlotWaiters::ThrottleDeadline(now, options.throttle_wait_nanos);
        // A slot may have freed between the caller's failed Acquire and the registration
        // (that release saw no waiter): look once more, as this ticket. The fence also
        // pairs with eviction (DomainTable::Evict): the entry is live or we see it dead.
        SeqCstFence();
        if (entry->active.load(std::memory_order_seq_cst) < 0) {
          waiters_.Remove(t);
          evicted = true;
        } else if (TryGrant(entry, t, nullptr, now, &lease, nullptr, 0, &released) ==
                   Grant::kGranted) {
          waiters_.Remove(t);
        } else if (parked_.load(std::memory_order_acquire) != 0 && TakeVictim(t, &victim)) {
          // Queued behind parked connections it cannot use (DESIGN §13): the oldest idle
          // one is closed; its Release hands the slot over, oldest waiter first.
          stats_.CountReuse(ReuseEvent::kEvicted);
        }
      }
    }
    if (!evicted) break;
    Materialize(domain, &unused);  // evicted meanwhile: queue on its fresh entry
  }
  if (lease.valid() || rate_limited) waiter->Wake(std::move(lease));
  if (victim.conn != nullptr) victim.conn->Evict(std::move(victim.lease));
  if (released != nullptr) HandOff(nullptr, released);
}

bool SelectorImpl::CancelWait(SlotWaiter* waiter) {
  MutexLock lock(&waiters_.mu());
  SlotWaiters::Ticket* t = waiters_.Find(waiter);
  if (t == nullptr) return false;
  waiters_.Remove(t);
  return true;
}

size_t SelectorImpl::waiting() const { return waiters_.size(); }

Deferral SelectorImpl::ClassifyNoHost(const RouteSnapshot& snap, bool saw_full, int64_t now) const {
  if (saw_full) return {DeferReason::kHostsAtLimit, {}};
  bool all_over_threshold = true;
  for (size_t t = 0; t < snap.num_tiers() && all_over_threshold; ++t) {
    for (HostState* h : snap.TierHosts(t)) {
      if (h->Reachable(now) || h->consecutive_failures() < snap.mx_failures_to_delay()) {
        all_over_threshold = false;
        break;
      }
    }
  }
  return {all_over_threshold ? DeferReason::kNoMxReachable : DeferReason::kHostsUnreachable, {}};
}

inline DomainEntry* SelectorImpl::FindOrCreate(std::string_view domain, Deferral* invalid) {
  DomainEntry* entry = domains_.Find(HashDomain(domain), domain);
  if (ABSL_PREDICT_FALSE(entry == nullptr)) entry = Materialize(domain, invalid);
  return entry;
}

inline const RouteSnapshot* SelectorImpl::CurrentRoute(DomainEntry* entry, int64_t now) {
  const RouteSnapshot* snap = entry->snapshot.load(std::memory_order_acquire);
  if (ABSL_PREDICT_FALSE(now >= entry->expires_at.load(std::memory_order_relaxed) ||
                         entry->generation.load(std::memory_order_relaxed) !=
                             generation_.load(std::memory_order_relaxed))) {
    snap = Refresh(entry, snap, now);
  }
  return snap;
}

AcquireResult SelectorImpl::Deferred(Deferral d) {
  stats_.CountDeferral(static_cast<size_t>(d.reason));
  return AcquireResult(std::move(d));
}

AcquireResult SelectorImpl::Acquire(std::string_view domain, const AcquireOptions& options) {
  epoch::EpochGuard guard;
  bool unknown_binding;
  const Egress* egress = ResolveEgress(options, &unknown_binding);
  if (ABSL_PREDICT_FALSE(unknown_binding)) {
    return Deferred(Deferral{DeferReason::kTempFailure,
                             StrCat("4.3.5 unknown binding or binding group \"",
                                    Escape(options.binding.substr(0, 64)), "\"")});
  }
  Deferral invalid{DeferReason::kPermanent, {}};
  DomainEntry* entry = FindOrCreate(domain, &invalid);
  if (ABSL_PREDICT_FALSE(entry == nullptr)) return Deferred(std::move(invalid));
  const int64_t now = clock_->NowNanos();
  const uint32_t tick = static_cast<uint32_t>(now >> DomainEntry::kUseTickShift);
  if (entry->last_used.load(std::memory_order_relaxed) != tick) {  // idle clock (eviction)
    entry->last_used.store(tick, std::memory_order_relaxed);
  }
  const RouteSnapshot* snap = CurrentRoute(entry, now);
  if (ABSL_PREDICT_FALSE(snap->state() != RouteState::kReady)) {
    DeferReason r = snap->state() == RouteState::kPending    ? DeferReason::kResolving
                    : snap->state() == RouteState::kPermFail ? DeferReason::kPermanent
                                                             : DeferReason::kTempFailure;
    return Deferred(Deferral{r, std::string(snap->detail())});
  }

  Lease lease;
  bool saw_full = false;
  RateThrottle* blocked = nullptr;
  DomainEntry* released = nullptr;
  switch (Admit(entry, *snap,
                Claim{nullptr, nullptr, egress, options.throttle_wait_nanos, &blocked,
                      options.reuse_owner, &released},
                now, &lease, &saw_full)) {
    case Grant::kGranted:
      if (ABSL_PREDICT_FALSE(released != nullptr)) HandOff(nullptr, released);
      return AcquireResult(std::move(lease));
    case Grant::kRate:
      return Deferred(Deferral{DeferReason::kRateLimited, blocked->Reason()});
    case Grant::kDomain:
      return Deferred(Deferral{DeferReason::kDomainLimit, {}});
    case Grant::kServer:
      return Deferred(Deferral{DeferReason::kServerLimit, {}});
    case Grant::kEvicted:  // evicted under us: look it up again (a fresh entry)
      Materialize(domain, &invalid);
      return Acquire(domain, options);
    case Grant::kHosts:
      break;
  }
  if (egress != nullptr) {
    // Slow path (a deferral): a route none of whose hosts the bindings can reach for lack
    // of an address of the family says so, rather than blaming the hosts.
    bool usable = false;
    for (size_t t = 0; t < snap->num_tiers() && !usable; ++t) {
      for (HostState* h : snap->TierHosts(t)) {
        for (Binding* b : egress->members) {
          bool u;
          b->addresses().For(h->endpoint().address.is_v4(), &u);
          usable |= u;
        }
      }
    }
    if (!usable) {
      return Deferred(Deferral{DeferReason::kTempFailure,
                               StrCat("4.4.4 binding \"", egress->name,
                                      "\" has no source address of the family of any host "
                                      "of the route")});
    }
  }
  return Deferred(ClassifyNoHost(*snap, saw_full, now));
}

bool SelectorImpl::RefreshDomain(std::string_view domain) {
  const uint64_t hash = HashDomain(domain);
  epoch::EpochGuard guard;
  DomainEntry* e = domains_.Find(hash, domain);
  if (e == nullptr) return false;
  // Re-plan here, not at the next use: a caller that describes the domain next must see the
  // new route even when a delivery thread holds the re-plan flag at that moment (and that
  // thread may have checked the generation before this refresh). Planning never blocks.
  while (e->refreshing.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  Replan(e, e->snapshot.load(std::memory_order_acquire), clock_->NowNanos());
  // This domain's waiters re-plan against the new route.
  std::vector<SlotWaiter*> wake;
  {
    MutexLock lock(&waiters_.mu());
    for (SlotWaiters::Ticket* t : waiters_.All()) {
      if (t->domain == e) wake.push_back(waiters_.Remove(t));
    }
  }
  for (SlotWaiter* w : wake) w->Wake(Lease());
  return true;
}

void SelectorImpl::RefreshAll() {
  uint32_t g = generation_.load();
  uint32_t next;
  do {
    next = g + 1 == 0 ? 1 : g + 1;  // 0 is reserved for "refresh this one"
  } while (!generation_.compare_exchange_weak(g, next));
  // Waiters were judged against the old routes; the new ones may have room. Wake them all
  // to re-plan (those still without a slot queue again, at the front).
  std::vector<SlotWaiter*> wake;
  {
    MutexLock lock(&waiters_.mu());
    for (SlotWaiters::Ticket* t : waiters_.All()) wake.push_back(waiters_.Remove(t));
  }
  for (SlotWaiter* w : wake) w->Wake(Lease());
}

DomainView SelectorImpl::Describe(std::string_view domain) {
  epoch::EpochGuard guard;
  Deferral invalid{DeferReason::kPermanent, {}};
  DomainEntry* e = FindOrCreate(domain, &invalid);
  if (e == nullptr) {
    DomainView v;
    v.domain = std::string(domain);
    v.state = RouteState::kPermFail;
    v.detail = invalid.detail;
    return v;
  }
  const int64_t now = clock_->NowNanos();
  return DescribeEntry(e, CurrentRoute(e, now), now);
}

std::optional<DomainView> SelectorImpl::DescribeResident(std::string_view domain) {
  absl::StatusOr<std::string> name = NormalizeHostname(domain);
  if (!name.ok()) return std::nullopt;
  const uint64_t hash = HashDomain(*name);
  epoch::EpochGuard guard;
  const DomainEntry* e = domains_.Find(hash, *name);
  if (e == nullptr) return std::nullopt;
  return DescribeEntry(e, e->snapshot.load(std::memory_order_acquire), clock_->NowNanos());
}

namespace {
ThrottleView ViewOf(const RateThrottle& t, int64_t now) {
  ThrottleView v;
  v.scope = t.scope();
  v.kind = t.kind() == RateThrottle::Kind::kConnections ? "connections" : "messages";
  v.rate = t.spec().ToString();
  v.next_in_ms = std::max<int64_t>(0, (t.next_free() - now) / 1'000'000);
  v.allowed = t.allowed();
  v.waited = t.waited();
  v.wait_seconds = static_cast<double>(t.wait_nanos()) / kNanosPerSecond;
  v.throttled = t.throttled();
  return v;
}
}  // namespace

DomainView SelectorImpl::DescribeEntry(const DomainEntry* e, const RouteSnapshot* snap,
                                   int64_t now) const {
  DomainView v;
  // Bindings in configuration order (ids follow first appearance), and the configuration
  // whose limits the next admission applies.
  const std::vector<const Binding*> all = bindings_.All();
  const std::shared_ptr<const Config> c = all.empty() ? nullptr : config();
  v.domain = std::string(e->name());
  v.state = snap->state();
  v.detail = std::string(snap->detail());
  v.ttl_left_s = std::max<int64_t>(0, (e->expires_at.load() - now) / kNanosPerSecond);
  v.active = e->active.load();
  v.limit = snap->domain_limit();
  if (const ThrottleSet* set = throttles_.load(std::memory_order_acquire)) {
    std::vector<const RateThrottle*> ts;
    set->ForDomain(e->name(), &ts);
    for (const RateThrottle* t : ts) v.throttles.push_back(ViewOf(*t, now));
  }
  const uint32_t cursor = e->cursor.load();
  for (size_t t = 0; t < snap->num_tiers(); ++t) {
    RouteSnapshot::Tier tier = snap->GetTier(t);
    DomainView::Tier vt{tier.key_tier, tier.key_mx_pref, {}};
    const uint32_t n = static_cast<uint32_t>(tier.hosts.size());
    TierWalk walk(n, cursor, *e);
    for (uint32_t i = 0; i < n; ++i, walk.Next()) {
      const HostState* h = tier.hosts[walk.idx()];
      DomainView::Host vh;
      vh.name = h->name();
      vh.endpoint = h->endpoint();
      vh.limit = h->limit();
      vh.active = h->active();
      vh.reachable = h->Reachable(now);
      vh.seconds_since_failure =
          h->last_failure() ? (now - h->last_failure()) / kNanosPerSecond : -1;
      vh.consecutive_failures = h->consecutive_failures();
      vh.configured_limit = h->configured_limit();
      vh.limit_moved = h->last_move().ToString(now);
      vh.busy_replies = h->busy_replies();
      vh.parked = parked_on(*h);
      if (const LimitGroup* g = h->group()) {
        vh.group = g->pattern();
        vh.group_limit = g->limit();
        vh.group_active = g->active();
      }
      if (!all.empty()) BindingsAt(all, *c, *h, now, &vh.bindings);
      vh.throttles = ThrottlesAt(*h);
      vt.hosts.push_back(std::move(vh));
    }
    v.tiers.push_back(std::move(vt));
  }
  if (!all.empty()) {
    // Per binding: the domain's count through each (Momentum: the domain's limit is per
    // binding), read from the entry's counts without creating any.
    int32_t bound = 0;
    for (const Binding* b : all) {
      const BindingSpec* spec = c->FindBinding(b->name());
      const DomainBindingCounts::Slot* slot =
          DomainBindingCounts::Find(e->bindings.head, b->id());
      const int32_t active = slot ? slot->active.load(std::memory_order_acquire) : 0;
      bound += active;
      if (spec == nullptr && active == 0) continue;  // gone with a reload, nothing open
      BindingView bv;
      bv.binding = b->name();
      bv.source = b->addresses().ToString();
      bv.active = active;
      bv.limit = spec ? c->BindingDomainLimit(*spec, e->name())
                      : c->ForDomain(e->name()).max_outbound_connections;
      v.bindings.push_back(std::move(bv));
    }
    if (bindings_.default_egress() == nullptr) {
      // No binding: the domain's connections through none (the total less the bound ones).
      BindingView bv;
      bv.binding = "default";
      BindingAddresses global;  // the global bind_address: the default binding's
      for (const IpAddress& ip : c->bind_address) (ip.is_v4() ? global.v4 : global.v6) = ip;
      bv.source = global.ToString();
      bv.active = std::max(0, v.active - bound);
      bv.limit = v.limit;
      v.bindings.push_back(std::move(bv));
    }
  }
  return v;
}

void SelectorImpl::BindingsAt(const std::vector<const Binding*>& all, const Config& c,
                              const HostState& h, int64_t now,
                              std::vector<BindingView>* out) const {
  const std::string_view name = h.name() == h.endpoint().address.ToString()
                                    ? std::string_view()
                                    : std::string_view(h.name());
  for (const Binding* b : all) {
    const BindingHost* bh = b->Find(h);
    // A state left by an evicted host whose index `h` reuses is not h's (GetOrCreate).
    if (bh != nullptr && bh->host.load(std::memory_order_acquire) != &h) bh = nullptr;
    const BindingSpec* spec = c.FindBinding(b->name());
    // The limit the next admission through b computes (AdmitBinding).
    const int32_t limit =
        spec ? Config::BindingHostLimit(*spec, name, h.endpoint().address) : kUnlimited;
    if (bh == nullptr && limit == kUnlimited) continue;
    BindingView bv;
    bv.binding = b->name();
    bv.source = b->addresses().ToString();
    bv.limit = limit;
    if (bh != nullptr) {
      bv.used = true;
      bv.active = std::max(0, bh->active.load(std::memory_order_acquire));
      bv.peak = bh->peak.load(std::memory_order_relaxed);
      bv.state = std::string(bh->StateName(now));
      bv.consecutive_failures = bh->consecutive_failures.load(std::memory_order_relaxed);
      const int64_t until = bh->failed_until.load(std::memory_order_acquire);
      bv.retry_in_s = until > now ? (until - now + kNanosPerSecond - 1) / kNanosPerSecond : 0;
      bv.connections = bh->connections.load(std::memory_order_relaxed);
      bv.failures = bh->failures.load(std::memory_order_relaxed);
    }
    out->push_back(std::move(bv));
  }
}

std::vector<std::vector<BindingView>> SelectorImpl::DescribeBindings(
    const std::vector<const HostState*>& hosts) const {
  std::vector<std::vector<BindingView>> out(hosts.size());
  epoch::EpochGuard guard;  // `all` may hold bindings a reload dropped (Collect)
  const std::vector<const Binding*> all = bindings_.All();
  if (all.empty()) return out;
  const std::shared_ptr<const Config> c = config();
  const int64_t now = clock_->NowNanos();
  for (size_t i = 0; i < hosts.size(); ++i) BindingsAt(all, *c, *hosts[i], now, &out[i]);
  return out;
}

size_t SelectorImpl::domain_count() const { return domains_.size(); }

size_t SelectorImpl::DomainMemoryBytes() const {
  return sizeof(Selector) + sizeof(*this) + domains_.MemoryBytes() + routes_->bytes();
}

int64_t SelectorImpl::server_active() const { return server_credit_.active(); }
int64_t Selector::parked() const { return impl_->parked(); }
int32_t Selector::parked_on(const HostState& host) const { return impl_->parked_on(host); }
Lease Selector::Unpark(ParkedConnection* conn) { return impl_->Unpark(conn); }


std::vector<ThrottleView> SelectorImpl::ThrottlesAt(const HostState& h) const {
  epoch::EpochGuard guard;
  std::vector<ThrottleView> out;
  const ThrottleSet* set = throttles_.load(std::memory_order_acquire);
  if (set == nullptr) return out;
  std::vector<const RateThrottle*> ts;
  const std::string_view name = h.name() == h.endpoint().address.ToString()
                                    ? std::string_view()
                                    : std::string_view(h.name());
  set->ForHost(h.endpoint().address, name, &ts);
  const int64_t now = clock_->NowNanos();
  for (const RateThrottle* t : ts) out.push_back(ViewOf(*t, now));
  return out;
}

std::vector<ThrottleView> SelectorImpl::Throttles() const {
  epoch::EpochGuard guard;
  std::vector<ThrottleView> out;
  const ThrottleSet* set = throttles_.load(std::memory_order_acquire);
  if (set == nullptr) return out;
  const int64_t now = clock_->NowNanos();
  for (const auto& t : set->all()) out.push_back(ViewOf(*t, now));
  return out;
}

std::vector<ThrottleRef> SelectorImpl::StartThrottles(const Lease& lease,
                                                      bool new_connection) const {
  epoch::EpochGuard guard;
  std::vector<ThrottleRef> out;
  const ThrottleSet* set = throttles_.load(std::memory_order_acquire);
  if (set == nullptr) return out;
  RateThrottle* ts[kMaxThrottlesPerStart];
  const size_t n = set->Collect(lease.domain_->name(), lease.domain_->hash, lease.host_->name(),
                                lease.host_->endpoint().address, lease.binding(),
                                new_connection, ts);
  for (size_t i = 0; i < n; ++i) {
    out.push_back({ts[i]->scope(), ts[i]->spec(),
                   ts[i]->kind() == RateThrottle::Kind::kMessages});
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Selector: the public face (selector.h) of SelectorImpl.

Selector::Selector(std::shared_ptr<const Config> config, SelectorOptions options)
    : impl_(std::make_unique<SelectorImpl>(std::move(config), options)) {}
Selector::~Selector() = default;
AcquireResult Selector::Acquire(std::string_view domain) { return impl_->Acquire(domain); }
AcquireResult Selector::Acquire(std::string_view domain, const AcquireOptions& options) {
  return impl_->Acquire(domain, options);
}
void Selector::SetConfig(std::shared_ptr<const Config> config) { impl_->SetConfig(std::move(config)); }
std::shared_ptr<const Config> Selector::config() const { return impl_->config(); }
uint64_t Selector::config_version() const { return impl_->config_version(); }
bool Selector::RefreshDomain(std::string_view domain) { return impl_->RefreshDomain(domain); }
void Selector::RefreshAll() { impl_->RefreshAll(); }
void Selector::WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front) {
  impl_->WaitForSlot(domain, waiter, front);
}
void Selector::WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front,
                           const AcquireOptions& options) {
  impl_->WaitForSlot(domain, waiter, front, options);
}
bool Selector::CancelWait(SlotWaiter* waiter) { return impl_->CancelWait(waiter); }
size_t Selector::waiting() const { return impl_->waiting(); }
DomainView Selector::Describe(std::string_view domain) { return impl_->Describe(domain); }
std::optional<DomainView> Selector::DescribeResident(std::string_view domain) {
  return impl_->DescribeResident(domain);
}
size_t Selector::domain_count() const { return impl_->domain_count(); }
size_t Selector::route_count() const { return impl_->route_count(); }
size_t Selector::EvictIdle() { return impl_->EvictIdle(); }
size_t Selector::EvictIdleHosts() { return impl_->EvictIdleHosts(); }
size_t Selector::DomainMemoryBytes() const { return impl_->DomainMemoryBytes(); }
int64_t Selector::server_active() const { return impl_->server_active(); }
std::vector<ThrottleView> Selector::Throttles() const { return impl_->Throttles(); }
std::vector<ThrottleView> Selector::ThrottlesAt(const HostState& host) const {
  return impl_->ThrottlesAt(host);
}
std::vector<ThrottleRef> Selector::StartThrottles(const Lease& lease, bool new_connection) const {
  return impl_->StartThrottles(lease, new_connection);
}
HostRegistry& Selector::registry() { return impl_->registry(); }
BindingRegistry& Selector::bindings() { return impl_->bindings(); }
std::vector<std::vector<BindingView>> Selector::DescribeBindings(
    const std::vector<const HostState*>& hosts) const {
  return impl_->DescribeBindings(hosts);
}
SelectorStats& Selector::stats() { return impl_->stats(); }
const SelectorStats& Selector::stats() const { return impl_->stats(); }
Clock& Selector::clock() { return impl_->clock(); }

}  // namespace mxsched
