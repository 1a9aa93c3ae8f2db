#include "mxsched/scheduler/selector.h"

#include "mxsched/base/strings.h"
#include <cstring>
#include <thread>

#include "mxsched/scheduler/epoch.h"

namespace mxsched {

// ---------------------------------------------------------------------------------------
// Domain entries and shard tables.

// 128 bytes, not 64: x86's adjacent-line prefetcher moves lines in 128-byte pairs, and with
// 64-byte entries two threads working on neighbouring domains slowed each other by ~30%
// (bench/README.md). The otherwise idle half holds the name inline.
struct alignas(128) DomainEntry {
  static constexpr size_t kInlineName = 88;
  std::atomic<const RouteSnapshot*> snapshot{nullptr};
  std::atomic<uint32_t> generation{0};  // Selector::generation_ when built; 0 = refresh now
  std::atomic<int32_t> active{0};
  std::atomic<uint32_t> cursor{0};      // rotation position (mod tier size)
  std::atomic<bool> refreshing{false};
  uint16_t name_size = 0;
  uint64_t hash = 0;
  std::unique_ptr<char[]> name_heap;  // names longer than kInlineName
  char name_inline[kInlineName];

  std::string_view name() const {
    return {name_heap ? name_heap.get() : name_inline, name_size};
  }
  void SetName(std::string_view n) {
    name_size = static_cast<uint16_t>(n.size());  // <= 253: validated hostname
    char* dst = name_inline;
    if (n.size() > kInlineName) {
      name_heap.reset(new char[n.size()]);
      dst = name_heap.get();
    }
    std::memcpy(dst, n.data(), n.size());
  }
};
static_assert(sizeof(DomainEntry) == 128);

// Open addressing, linear probing, load <= 1/2. A slot holds the entry pointer with a 16-bit
// tag of the hash in its unused top bits, so a probe that passes other domains' slots does
// not touch their entries — whose cache lines other threads are busy writing.
struct Selector::Table {
  static constexpr int kTagShift = 48;
  size_t mask;
  size_t count = 0;  // written under the shard mutex only
  std::unique_ptr<std::atomic<uintptr_t>[]> slots;

  explicit Table(size_t capacity)
      : mask(capacity - 1), slots(new std::atomic<uintptr_t>[capacity]) {
    for (size_t i = 0; i < capacity; ++i) slots[i].store(0, std::memory_order_relaxed);
  }
  static uintptr_t Tag(uint64_t hash) { return static_cast<uintptr_t>((hash >> 32) & 0xFFFF); }
  static DomainEntry* Entry(uintptr_t slot) {
    return reinterpret_cast<DomainEntry*>(slot & ((uintptr_t{1} << kTagShift) - 1));
  }
  DomainEntry* At(size_t i) const { return Entry(slots[i].load(std::memory_order_acquire)); }
  void Insert(DomainEntry* e) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(e) | (Tag(e->hash) << kTagShift);
    for (size_t i = e->hash & mask;; i = (i + 1) & mask) {
      if (slots[i].load(std::memory_order_relaxed) == 0) {
        slots[i].store(v, std::memory_order_release);
        ++count;
        return;
      }
    }
  }
};

struct Selector::Shard {
  Mutex mu;  // writers: inserting, growing, rebuilding routes
  std::atomic<Table*> table;
  std::vector<std::unique_ptr<DomainEntry[]>> arenas ABSL_GUARDED_BY(mu);
  size_t arena_used ABSL_GUARDED_BY(mu) = 0;

  Shard() : table(new Table(64)) {}
  ~Shard() { delete table.load(); }

  DomainEntry* NewEntry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    static constexpr size_t kArena = 256;  // entries are never freed: bump-allocate them
    if (arenas.empty() || arena_used == kArena) {
      arenas.emplace_back(new DomainEntry[kArena]);
      arena_used = 0;
    }
    return &arenas.back()[arena_used++];
  }
};

struct alignas(128) Selector::CreditSlot {
  std::atomic<int32_t> credit{0};
};

namespace {

constexpr int32_t kCreditBatch = 32;
// While a refresh waits for DNS, the previous hosts serve and the route is re-planned this
// often (one thread at a time) until the answer is in.
constexpr int64_t kStaleRetryNanos = 200'000'000;

inline uint64_t Load8(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// ASCII lower-case of 8 bytes at once (bytes >= 0x80 untouched).
inline uint64_t Lower8(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  const uint64_t heptets = w & (0x7F * kOnes);
  const uint64_t above_z = heptets + (0x25 * kOnes);   // high bit set if byte > 'Z'
  const uint64_t from_a = heptets + (0x3F * kOnes);    // high bit set if byte >= 'A'
  const uint64_t upper = ~w & (from_a ^ above_z) & (0x80 * kOnes);
  return w | (upper >> 2);
}

inline uint64_t Mix(uint64_t a, uint64_t b) {
  __uint128_t r = static_cast<__uint128_t>(a ^ 0xA0761D6478BD642Full) * (b ^ 0xE7037ED1A0B428DBull);
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

inline uint32_t Load4(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The last `rem` (1..7) bytes of s as the low bytes of a word, without a variable-length
// memcpy call: overlapping fixed-size loads.
inline uint64_t Tail(const char* p, size_t n, size_t rem) {
  if (n >= 8) return Load8(p + n - 8) >> (8 * (8 - rem));
  if (n >= 4) return Load4(p) | (uint64_t{Load4(p + n - 4)} << 32);
  uint64_t w = static_cast<uint8_t>(p[0]);
  w |= uint64_t{static_cast<uint8_t>(p[n / 2])} << 8;
  return w | uint64_t{static_cast<uint8_t>(p[n - 1])} << 16;
}

// Case-insensitive hash of a domain name.
uint64_t HashDomain(std::string_view s) {
  const size_t n = s.size();
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) h = Mix(h, Lower8(Load8(s.data() + i)));
  if (i < n) h = Mix(h, Lower8(Tail(s.data(), n, n - i)));
  return Mix(h, 0x8EBC6AF09C88C6E3ull);
}

// `lower` is already lower-case.
bool EqualsLower(std::string_view query, std::string_view lower) {
  if (query.size() != lower.size()) return false;
  size_t i = 0;
  for (; i + 8 <= query.size(); i += 8) {
    if (Lower8(Load8(query.data() + i)) != Load8(lower.data() + i)) return false;
  }
  if (i < query.size() && query.size() >= 8) {  // overlapping final word
    const size_t last = query.size() - 8;
    return Lower8(Load8(query.data() + last)) == Load8(lower.data() + last);
  }
  for (; i < query.size(); ++i) {
    if (AsciiLower(static_cast<unsigned char>(query[i])) != lower[i]) return false;
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Names and messages.

std::string_view DeferReasonName(DeferReason r) {
  switch (r) {
    case DeferReason::kHostsAtLimit: return "hosts_at_limit";
    case DeferReason::kDomainLimit: return "domain_limit";
    case DeferReason::kServerLimit: return "server_limit";
    case DeferReason::kHostsUnreachable: return "hosts_unreachable";
    case DeferReason::kNoMxReachable: return "no_mx_reachable";
    case DeferReason::kResolving: return "resolving";
    case DeferReason::kTempFailure: return "temporary_failure";
    case DeferReason::kPermanent: return "permanent_failure";
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
  }
  return "?";
}

std::string_view OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kConnected: return "connected";
    case Outcome::kConnectFailed: return "connect_failed";
    case Outcome::kTimedOut: return "timed_out";
    case Outcome::kGreetingRejected: return "greeting_rejected";
    case Outcome::kProtocolError: return "protocol_error";
    case Outcome::kLocalError: return "local_error";
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
    probe_ = o.probe_;
    reported_ = o.reported_;
  }
  return *this;
}

void Lease::Report(Outcome outcome) {
  if (host_ == nullptr || reported_) return;
  reported_ = true;
  switch (outcome) {
    case Outcome::kConnected: {
      const bool recovered = host_->failed_until() != 0;
      host_->RecordSuccess();
      if (recovered) selector_->WakeWaiters(host_, /*all=*/true);
      break;
    }
    case Outcome::kLocalError:
      break;
    default:
      host_->RecordFailure(selector_->clock_->NowNanos());
      break;
  }
  probe_ = false;  // the outcome settled the probe either way
}

void Lease::Release() {
  if (host_ == nullptr) return;
  selector_->ReleaseLease(*this);
  host_ = nullptr;
}

// ---------------------------------------------------------------------------------------
// Selector.

Selector::Selector(std::shared_ptr<const Config> config, Clock* clock, Random* random,
                   Resolver* resolver, HostRegistry* registry)
    : clock_(clock ? clock : MonotonicCoarseClock::Default()),
      random_(random ? random : SplitMixRandom::Default()),
      owned_registry_(registry ? nullptr : std::make_unique<HostRegistry>()),
      registry_(registry ? registry : owned_registry_.get()),
      planner_(registry_, resolver, clock_, random_),
      credit_(new CreditSlot[kCreditSlots]) {
  shards_.reserve(kShards);
  for (size_t i = 0; i < kShards; ++i) shards_.push_back(std::make_unique<Shard>());
  SetConfig(std::move(config));
}

Selector::~Selector() {
  // REQUIRES: no Lease outstanding and no concurrent call. Snapshots may be read by no one
  // now, so free them directly; tables likewise.
  for (auto& shard : shards_) {
    Table* t = shard->table.load();
    for (size_t i = 0; i <= t->mask; ++i) {
      if (DomainEntry* e = t->At(i)) {
        RouteSnapshot::Destroy(const_cast<RouteSnapshot*>(e->snapshot.load()));
      }
    }
  }
  epoch::Reclaim();
}

std::shared_ptr<const Config> Selector::config() const {
  MutexLock lock(&config_mu_);
  return config_;
}

void Selector::SetConfig(std::shared_ptr<const Config> config) {
  const int32_t limit = config->server_max_outbound_connections;
  {
    MutexLock lock(&config_mu_);
    config_ = std::move(config);
  }
  // The pool absorbs the difference; it may go negative until enough slots come back.
  const int32_t old = server_limit_.exchange(limit);
  server_pool_.fetch_add(int64_t{limit} - old);
  server_limited_.store(limit != kUnlimited);
}

DomainEntry* Selector::Find(const Table* t, uint64_t hash, std::string_view domain) const {
  const uintptr_t tag = Table::Tag(hash);
  for (size_t i = hash & t->mask;; i = (i + 1) & t->mask) {
    const uintptr_t slot = t->slots[i].load(std::memory_order_acquire);
    if (slot == 0) return nullptr;
    if ((slot >> Table::kTagShift) != tag) continue;
    DomainEntry* e = Table::Entry(slot);
    if (e->hash == hash && EqualsLower(domain, e->name())) return e;
  }
}

DomainEntry* Selector::Materialize(std::string_view domain, Deferral* invalid) {
  absl::StatusOr<std::string> name = NormalizeHostname(domain);
  if (!name.ok()) {
    *invalid = {DeferReason::kPermanent,
                StrCat("5.1.2 invalid domain \"", Escape(domain.substr(0, 300)),
                             "\": ", ToStd(name.status().message()))};
    return nullptr;
  }
  // Entries are stored under the normalized name (lower-case, no trailing dot), which may
  // live in another shard than the name as given.
  const uint64_t norm_hash = HashDomain(*name);
  Shard& shard = ShardFor(norm_hash);
  MutexLock lock(&shard.mu);
  Table* t = shard.table.load(std::memory_order_relaxed);
  if (DomainEntry* e = Find(t, norm_hash, *name)) return e;
  DomainEntry* e = shard.NewEntry();
  e->hash = norm_hash;
  e->SetName(*name);
  e->cursor.store(static_cast<uint32_t>(random_->Next()), std::memory_order_relaxed);
  e->snapshot.store(planner_.Plan(*config(), e->name()), std::memory_order_release);
  e->generation.store(generation_.load(std::memory_order_acquire), std::memory_order_release);
  if ((t->count + 1) * 2 > t->mask + 1) {  // keep load factor <= 1/2
    auto* bigger = new Table((t->mask + 1) * 2);
    for (size_t i = 0; i <= t->mask; ++i) {
      if (DomainEntry* x = t->At(i)) bigger->Insert(x);
    }
    bigger->Insert(e);
    shard.table.store(bigger, std::memory_order_release);
    epoch::RetireObject(t);
  } else {
    t->Insert(e);
  }
  return e;
}

void Selector::Publish(DomainEntry* entry, RouteSnapshot* fresh) {
  const RouteSnapshot* old = entry->snapshot.exchange(fresh, std::memory_order_acq_rel);
  epoch::Retire(const_cast<RouteSnapshot*>(old),
                [](void* p) { RouteSnapshot::Destroy(static_cast<RouteSnapshot*>(p)); });
}

const RouteSnapshot* Selector::Refresh(DomainEntry* entry, const RouteSnapshot* old,
                                       int64_t now) {
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
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  RouteSnapshot* fresh = planner_.Plan(*config(), entry->name());
  if (old->state() == RouteState::kReady && fresh->state() != RouteState::kReady &&
      fresh->state() != RouteState::kPermFail) {
    // Stale-while-revalidate: DNS is slow or failing; keep the hosts we had rather than
    // deferring mail that could go, and look again shortly (the answer may be in by then).
    std::vector<std::vector<HostState*>> tiers;
    std::vector<std::pair<uint32_t, uint32_t>> keys;
    for (size_t t = 0; t < old->num_tiers(); ++t) {
      RouteSnapshot::Tier tier = old->GetTier(t);
      tiers.emplace_back(tier.hosts.begin(), tier.hosts.end());
      keys.emplace_back(tier.key_tier, tier.key_mx_pref);
    }
    RouteSnapshot::Destroy(fresh);
    fresh = RouteSnapshot::Create(RouteState::kReady, now + kStaleRetryNanos,
                                  old->domain_limit(), old->mx_failures_to_delay(), "", tiers,
                                  keys);
  }
  Publish(entry, fresh);
  entry->generation.store(gen, std::memory_order_release);
  entry->refreshing.store(false, std::memory_order_release);
  return fresh;
}

namespace {
// A small dense number per thread, so threads land on different credit slots. Constant-
// initialized (no TLS guard on every access); assigned on first use.
thread_local uint32_t tls_ordinal = UINT32_MAX;
std::atomic<uint32_t> next_ordinal{0};

inline uint32_t ThreadOrdinal() {
  uint32_t o = tls_ordinal;
  if (ABSL_PREDICT_FALSE(o == UINT32_MAX)) {
    o = next_ordinal.fetch_add(1, std::memory_order_relaxed) % (UINT32_MAX - 1);
    tls_ordinal = o;
  }
  return o;
}
}  // namespace

inline Selector::CreditSlot& Selector::MyCreditSlot() {
  return credit_[ThreadOrdinal() % kCreditSlots];
}

// Fast path inline (one CAS on this thread's slot); refill and stealing out of line.
inline bool Selector::TakeServerSlot() {
  CreditSlot& slot = MyCreditSlot();
  int32_t c = slot.credit.load(std::memory_order_relaxed);
  while (c > 0) {
    if (slot.credit.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
      return true;
    }
  }
  return RefillServerSlot(slot);
}

bool Selector::RefillServerSlot(CreditSlot& slot) {
  // Refill from the pool in a batch.
  int64_t pool = server_pool_.load(std::memory_order_relaxed);
  while (pool > 0) {
    const int64_t take = std::min<int64_t>(pool, kCreditBatch);
    if (server_pool_.compare_exchange_weak(pool, pool - take, std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
      if (take > 1) slot.credit.fetch_add(static_cast<int32_t>(take - 1), std::memory_order_acq_rel);
      return true;
    }
  }
  // Pool empty: near the limit, take a single credit from any slot that holds spare.
  for (size_t i = 0; i < kCreditSlots; ++i) {
    CreditSlot& other = credit_[i];
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

inline void Selector::ReturnServerSlot() {
  CreditSlot& slot = MyCreditSlot();
  int32_t c = slot.credit.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (ABSL_PREDICT_FALSE(c > 2 * kCreditBatch)) {
    if (slot.credit.compare_exchange_strong(c, c - kCreditBatch, std::memory_order_acq_rel,
                                             std::memory_order_relaxed)) {
      server_pool_.fetch_add(kCreditBatch, std::memory_order_acq_rel);
    }
  }
}

int64_t Selector::server_active() const {
  int64_t held = server_pool_.load();
  for (size_t i = 0; i < kCreditSlots; ++i) held += credit_[i].credit.load();
  return server_limit_.load() - held;
}

void Selector::ReleaseLease(Lease& lease) {
  lease.host_->Release(lease.probe_);
  lease.domain_->active.fetch_sub(1, std::memory_order_acq_rel);
  if (server_limited_.load(std::memory_order_relaxed)) ReturnServerSlot();
  if (ABSL_PREDICT_FALSE(waiter_count_.load(std::memory_order_acquire) != 0)) {
    WakeWaiters(lease.host_, /*all=*/false);
  }
}

namespace {
// Could `domain` get a slot now: below its own limit, and a host of its route (`host` if
// given) reachable and below its limit? REQUIRES: an EpochGuard.
bool HasRoom(const DomainEntry* domain, const HostState* host, int64_t now) {
  const RouteSnapshot* snap = domain->snapshot.load(std::memory_order_acquire);
  if (domain->active.load(std::memory_order_relaxed) >= snap->domain_limit()) return false;
  for (size_t t = 0; t < snap->num_tiers(); ++t) {
    for (const HostState* h : snap->TierHosts(t)) {
      if ((host == nullptr || h == host) && h->active() < h->limit() && h->Reachable(now)) {
        return true;
      }
    }
  }
  return false;
}
}  // namespace

void Selector::WaitForSlot(std::string_view domain, SlotWaiter* waiter, bool front) {
  DomainEntry* entry;
  {
    epoch::EpochGuard guard;
    Deferral unused{DeferReason::kPermanent, {}};
    entry = FindOrCreate(domain, &unused);
  }
  if (entry == nullptr) {  // not a valid domain: nothing will ever free up
    waiter->Wake();
    return;
  }
  {
    MutexLock lock(&wait_mu_);
    if (front) {
      waiters_.push_front({waiter, entry});
    } else {
      waiters_.push_back({waiter, entry});
    }
    waiter_count_.fetch_add(1, std::memory_order_acq_rel);
  }
  // A slot may have freed between the caller's failed Acquire and the registration (that
  // release saw no waiter): look once more, for this waiter only.
  bool room;
  {
    epoch::EpochGuard guard;
    room = HasRoom(entry, nullptr, clock_->NowNanos());
  }
  if (room && CancelWait(waiter)) waiter->Wake();
}

bool Selector::CancelWait(SlotWaiter* waiter) {
  MutexLock lock(&wait_mu_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->waiter == waiter) {
      waiters_.erase(it);
      waiter_count_.fetch_sub(1, std::memory_order_acq_rel);
      return true;
    }
  }
  return false;
}

size_t Selector::waiting() const {
  MutexLock lock(&wait_mu_);
  return waiters_.size();
}

void Selector::WakeWaiters(const HostState* host, bool all) {
  const int64_t now = clock_->NowNanos();
  // Nothing to hand out (a concurrent Acquire took the slot): no need to look at anyone.
  if (host->active() >= host->limit() || !host->Reachable(now)) return;
  std::vector<SlotWaiter*> wake;
  {
    epoch::EpochGuard guard;
    MutexLock lock(&wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (!HasRoom(it->domain, host, now)) {
        ++it;
        continue;
      }
      wake.push_back(it->waiter);
      it = waiters_.erase(it);
      waiter_count_.fetch_sub(1, std::memory_order_acq_rel);
      if (!all) break;
    }
  }
  for (SlotWaiter* w : wake) w->Wake();
}

Deferral Selector::ClassifyNoHost(const RouteSnapshot& snap, bool saw_full, int64_t now) const {
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

inline DomainEntry* Selector::FindOrCreate(std::string_view domain, Deferral* invalid) {
  const uint64_t hash = HashDomain(domain);
  DomainEntry* entry = Find(ShardFor(hash).table.load(std::memory_order_acquire), hash, domain);
  if (ABSL_PREDICT_FALSE(entry == nullptr)) entry = Materialize(domain, invalid);
  return entry;
}

inline const RouteSnapshot* Selector::CurrentRoute(DomainEntry* entry, int64_t now) {
  const RouteSnapshot* snap = entry->snapshot.load(std::memory_order_acquire);
  if (ABSL_PREDICT_FALSE(now >= snap->expires_at() ||
                         entry->generation.load(std::memory_order_relaxed) !=
                             generation_.load(std::memory_order_relaxed))) {
    snap = Refresh(entry, snap, now);
  }
  return snap;
}

AcquireResult Selector::Acquire(std::string_view domain) {
  epoch::EpochGuard guard;
  Deferral invalid{DeferReason::kPermanent, {}};
  DomainEntry* entry = FindOrCreate(domain, &invalid);
  if (ABSL_PREDICT_FALSE(entry == nullptr)) return AcquireResult(std::move(invalid));
  const int64_t now = clock_->NowNanos();
  const RouteSnapshot* snap = CurrentRoute(entry, now);
  if (ABSL_PREDICT_FALSE(snap->state() != RouteState::kReady)) {
    DeferReason r = snap->state() == RouteState::kPending  ? DeferReason::kResolving
                    : snap->state() == RouteState::kPermFail ? DeferReason::kPermanent
                                                             : DeferReason::kTempFailure;
    return AcquireResult(Deferral{r, std::string(snap->detail())});
  }

  // Domain, then server: both bounded CAS, undone if no host admits.
  const int32_t domain_limit = snap->domain_limit();
  int32_t active = entry->active.load(std::memory_order_relaxed);
  do {
    if (active >= domain_limit) return AcquireResult(Deferral{DeferReason::kDomainLimit, {}});
  } while (!entry->active.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                                std::memory_order_relaxed));
  const bool server_limited = server_limited_.load(std::memory_order_relaxed);
  if (server_limited && !TakeServerSlot()) {
    entry->active.fetch_sub(1, std::memory_order_acq_rel);
    return AcquireResult(Deferral{DeferReason::kServerLimit, {}});
  }

  bool saw_full = false;
  for (size_t t = 0; t < snap->num_tiers(); ++t) {
    std::span<HostState* const> hosts = snap->TierHosts(t);
    const uint32_t n = static_cast<uint32_t>(hosts.size());
    const uint32_t start = entry->cursor.load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < n; ++i) {
      HostState* h = hosts[(start + i) % n];
      Admission a = h->TryAdmit(now);
      if (a == Admission::kAdmitted || a == Admission::kProbe) {
        // Racy by design: concurrent pickers may both start at the same place; the limit
        // is still exact, only the rotation is approximate under contention.
        entry->cursor.store(start + i + 1, std::memory_order_relaxed);
        Lease lease;
        lease.selector_ = this;
        lease.host_ = h;
        lease.domain_ = entry;
        lease.probe_ = a == Admission::kProbe;
        return AcquireResult(std::move(lease));
      }
      saw_full |= a == Admission::kFull;
    }
  }
  entry->active.fetch_sub(1, std::memory_order_acq_rel);
  if (server_limited) ReturnServerSlot();
  return AcquireResult(ClassifyNoHost(*snap, saw_full, now));
}

bool Selector::RefreshDomain(std::string_view domain) {
  const uint64_t hash = HashDomain(domain);
  epoch::EpochGuard guard;
  DomainEntry* e = Find(ShardFor(hash).table.load(std::memory_order_acquire), hash, domain);
  if (e == nullptr) return false;
  e->generation.store(0, std::memory_order_release);
  std::vector<SlotWaiter*> wake;  // this domain's waiters re-plan against the new route
  {
    MutexLock lock(&wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->domain != e) {
        ++it;
        continue;
      }
      wake.push_back(it->waiter);
      it = waiters_.erase(it);
      waiter_count_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
  for (SlotWaiter* w : wake) w->Wake();
  return true;
}

void Selector::RefreshAll() {
  uint32_t g = generation_.load();
  uint32_t next;
  do {
    next = g + 1 == 0 ? 1 : g + 1;  // 0 is reserved for "refresh this one"
  } while (!generation_.compare_exchange_weak(g, next));
  // Waiters were judged against the old routes; the new ones may have room. Wake them all
  // to re-plan (those still without a slot queue again, at the front).
  std::deque<Waiting> all;
  {
    MutexLock lock(&wait_mu_);
    all.swap(waiters_);
    waiter_count_.store(0, std::memory_order_release);
  }
  for (const Waiting& w : all) w.waiter->Wake();
}

DomainView Selector::Describe(std::string_view domain) {
  DomainView v;
  epoch::EpochGuard guard;
  Deferral invalid{DeferReason::kPermanent, {}};
  DomainEntry* e = FindOrCreate(domain, &invalid);
  if (e == nullptr) {
    v.domain = std::string(domain);
    v.state = RouteState::kPermFail;
    v.detail = invalid.detail;
    return v;
  }
  const int64_t now = clock_->NowNanos();
  const RouteSnapshot* snap = CurrentRoute(e, now);
  v.domain = std::string(e->name());
  v.state = snap->state();
  v.detail = std::string(snap->detail());
  v.ttl_left_s = std::max<int64_t>(0, (snap->expires_at() - now) / kNanosPerSecond);
  v.active = e->active.load();
  v.limit = snap->domain_limit();
  const uint32_t cursor = e->cursor.load();
  for (size_t t = 0; t < snap->num_tiers(); ++t) {
    RouteSnapshot::Tier tier = snap->GetTier(t);
    DomainView::Tier vt{tier.key_tier, tier.key_mx_pref, {}};
    const size_t n = tier.hosts.size();
    for (size_t i = 0; i < n; ++i) {
      const HostState* h = tier.hosts[(cursor + i) % n];
      vt.hosts.push_back({h->name(), h->endpoint(), h->limit(), h->active(), h->Reachable(now),
                          h->last_failure() ? (now - h->last_failure()) / kNanosPerSecond : -1,
                          h->consecutive_failures()});
    }
    v.tiers.push_back(std::move(vt));
  }
  return v;
}

size_t Selector::domain_count() const {
  size_t n = 0;
  for (const auto& s : shards_) {
    MutexLock lock(&s->mu);
    n += s->table.load()->count;
  }
  return n;
}

size_t Selector::DomainMemoryBytes() const {
  size_t bytes = sizeof(*this);
  epoch::EpochGuard guard;
  for (const auto& s : shards_) {
    MutexLock lock(&s->mu);
    const Table* t = s->table.load();
    bytes += sizeof(Shard) + sizeof(Table) + (t->mask + 1) * sizeof(std::atomic<uintptr_t>);
    bytes += s->arenas.size() * 256 * sizeof(DomainEntry);
    for (size_t i = 0; i <= t->mask; ++i) {
      const DomainEntry* e = t->At(i);
      if (e == nullptr) continue;
      if (e->name_heap) bytes += e->name_size;
      bytes += e->snapshot.load()->bytes();
    }
  }
  return bytes;
}

}  // namespace mxsched
