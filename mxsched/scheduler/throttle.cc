#include "mxsched/scheduler/throttle.h"

#include <algorithm>
#include <charconv>

#include "absl/status/status.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/domain_table.h"

namespace mxsched {

namespace {
constexpr uint32_t kMaxCount = 1'000'000;
constexpr uint32_t kMaxSeconds = 86'400;
constexpr int64_t kJitterAllowanceNanos = 50'000'000;

bool ParseUint(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 10) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}
}  // namespace

int64_t ThrottleSpec::interval_nanos() const {
  // N+1 starts span S plus a jitter allowance: 2% of S, at least 50 ms (DESIGN §12 rule 1).
  const int64_t n = std::max<uint32_t>(count, 1);
  const int64_t span = int64_t{seconds} * kNanosPerSecond;
  const int64_t allowance = std::max<int64_t>(span / 50, kJitterAllowanceNanos);
  return std::max<int64_t>(1, (span + allowance) / n);
}

std::string ThrottleSpec::ToString() const { return StrCat(count, "/", seconds, " s"); }

absl::StatusOr<ThrottleSpec> ParseThrottleSpec(std::string_view text) {
  ThrottleSpec spec;
  const size_t slash = text.find('/');
  const std::string_view n = text.substr(0, slash);
  const bool ok = ParseUint(n, &spec.count) &&
                  (slash == std::string_view::npos || ParseUint(text.substr(slash + 1), &spec.seconds));
  if (!ok || spec.count < 1 || spec.count > kMaxCount || spec.seconds < 1 ||
      spec.seconds > kMaxSeconds) {
    return absl::InvalidArgumentError(
        StrCat("expects \"N\" (at most N per second) or \"N/S\" (at most N in any S seconds), "
               "N 1..", kMaxCount, ", S 1..", kMaxSeconds, "; got \"", EchoForError(text), "\""));
  }
  return spec;
}

ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos) {
  using T = RateThrottle;
  int64_t seen[kMaxThrottlesPerStart];
  throttles = throttles.first(std::min(throttles.size(), kMaxThrottlesPerStart));
  for (;;) {
    // The instant: the latest of the throttles' next free instants, and now.
    ThrottleReservation r{false, now, 0};
    for (size_t i = 0; i < throttles.size(); ++i) {
      const int64_t w = throttles[i]->next_.load(std::memory_order_acquire);
      seen[i] = w;
      if (T::TimeOf(w) > r.at) {
        r.at = T::TimeOf(w);
        r.blocking = i;
      }
    }
    if (r.at - now > max_wait_nanos) return r;
    // Take it on each, in order, counting it in the same CAS; a throttle that moved
    // meanwhile (another reservation) undoes the ones taken and the whole reservation
    // starts again.
    size_t taken = 0;
    bool raced = false;
    for (; taken < throttles.size(); ++taken) {
      RateThrottle* t = throttles[taken];
      int64_t expected = seen[taken];
      if (!t->next_.compare_exchange_strong(
              expected, T::Word(r.at + t->interval_, (seen[taken] & T::kCountMask) + 1),
              std::memory_order_acq_rel)) {
        raced = true;
        break;
      }
    }
    if (!raced) {
      r.ok = true;
      for (size_t i = 0; i < throttles.size(); ++i) {
        RateThrottle* t = throttles[i];
        if ((seen[i] & T::kCountMask) == T::kCountMask) {  // the low bits wrapped
          t->allowed_.fetch_add(T::kCountMask + 1, std::memory_order_relaxed);
        }
        if (r.at > now) {
          t->waited_.fetch_add(1, std::memory_order_relaxed);
          t->wait_nanos_.fetch_add(static_cast<uint64_t>(r.at - now), std::memory_order_relaxed);
        }
      }
      return r;
    }
    // Give back what was taken: exact if nobody reserved after us, else (a later instant
    // was reserved on top) the slot stays used — conservative, never over the rate — and
    // its count is taken back from allowed_ (modulo 2^64: the sum read stays exact).
    for (size_t i = 0; i < taken; ++i) {
      RateThrottle* t = throttles[i];
      int64_t mine = T::Word(r.at + t->interval_, (seen[i] & T::kCountMask) + 1);
      if (!t->next_.compare_exchange_strong(mine, seen[i], std::memory_order_acq_rel)) {
        const bool wrapped = (seen[i] & T::kCountMask) == T::kCountMask;
        t->allowed_.fetch_add(wrapped ? T::kCountMask : ~uint64_t{0}, std::memory_order_relaxed);
      }
    }
  }
}

std::string RateThrottle::Reason() const {
  return StrCat(kind_ == Kind::kConnections ? "connection" : "message", " rate limit for ",
                scope_, ": ", spec_.ToString());
}

void RateThrottle::TakeOver(const RateThrottle& old) {
  // The instant, and the count whole in allowed_ (the low bits start again from 0).
  const int64_t w = old.next_.load(std::memory_order_acquire);
  next_.store(Word(TimeOf(w), 0), std::memory_order_release);
  allowed_.store(old.allowed_.load(std::memory_order_relaxed) +
                     static_cast<uint64_t>(w & kCountMask),
                 std::memory_order_relaxed);
  waited_.store(old.waited(), std::memory_order_relaxed);
  wait_nanos_.store(old.wait_nanos(), std::memory_order_relaxed);
  throttled_.store(old.throttled(), std::memory_order_relaxed);
}

ThrottleSet::Pair ThrottleSet::Make(const Throttles& t, std::string scope, bool per_host,
                                    const ThrottleSet* previous) {
  Pair p;
  auto make = [&](const ThrottleSpec& spec, RateThrottle::Kind kind) -> RateThrottle* {
    if (!spec.set()) return nullptr;
    auto r = std::make_unique<RateThrottle>(spec, kind, scope, per_host);
    if (previous != nullptr) {
      // Reloads are rare and sets small: a scan finds the predecessor.
      for (const auto& old : previous->all_) {
        if (old->kind() == kind && old->scope() == scope) r->TakeOver(*old);
      }
    }
    all_.push_back(std::move(r));
    return all_.back().get();
  };
  p.connections = make(t.connections, RateThrottle::Kind::kConnections);
  p.messages = make(t.messages, RateThrottle::Kind::kMessages);
  return p;
}

namespace {
absl::string_view Key(std::string_view s) { return {s.data(), s.size()}; }

const Throttles& Of(const Throttles& t) { return t; }
const Throttles& Of(const DomainSettings& d) { return d.throttles; }
const Throttles& Of(const HostSettings& h) { return h.throttles; }

// The keys whose value sets a throttle, sorted (all() is in a stable order).
template <typename Map>
std::vector<std::string> SortedKeys(const Map& m) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : m) {
    if (Of(v).any()) keys.push_back(k);
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}
}  // namespace

namespace {
std::atomic<uint32_t> next_generation{1};
// The domain cache is 32 bits: the generation's low 20 bits and an index of 12 (so 4094
// Domain stanzas with throttles are cached; more are looked up). Sets past 2^20 cache no
// domain (a stale word could otherwise name another set's index).
constexpr uint32_t kDomainGenBits = 20;
constexpr uint32_t kDomainIndexMask = (1u << (32 - kDomainGenBits)) - 1;
constexpr uint32_t kUncacheable = kDomainIndexMask;
}  // namespace

ThrottleSet::ThrottleSet(const Config& c, const ThrottleSet* previous)
    : generation_(next_generation.fetch_add(1, std::memory_order_relaxed)) {
  global_ = Make(Throttles{c.outbound_throttle_connections, c.outbound_throttle_messages},
                 "global", false, previous);
  for (const std::string& d : SortedKeys(c.domains)) {
    domains_.Insert(d, Make(Of(c.domains.at(d)), d, false, previous));
  }
  for (const std::string& h : SortedKeys(c.hosts)) {
    hosts_.Insert(h, Make(Of(c.hosts.at(h)), StrCat("host ", h), true, previous));
  }
  for (const BindingSpec& b : c.bindings) {
    PerBinding pb;
    if (b.throttles.any()) pb.own = Make(b.throttles, StrCat("binding ", b.name), false, previous);
    for (const std::string& d : SortedKeys(b.domain_throttles)) {
      pb.domains.Insert(d, Make(b.domain_throttles.at(d), StrCat("binding ", b.name, " to ", d),
                                false, previous));
    }
    for (const std::string& h : SortedKeys(b.host_throttles)) {
      pb.hosts.Insert(h, Make(b.host_throttles.at(h), StrCat("binding ", b.name, " to host ", h),
                              true, previous));
    }
    if (pb.own.connections || pb.own.messages || !pb.domains.empty() || !pb.hosts.empty()) {
      bindings_.emplace(b.name, std::move(pb));
    }
  }
  // The maps are complete: their pairs stay where they are from here on.
  for (const auto& [hash, v] : domains_.by_hash) {
    for (const auto& [name, p] : v) domain_index_.push_back(&p);
  }
  for (const auto& [a, p] : hosts_.by_address) host_index_.push_back(&p);
  for (const auto& [n, p] : hosts_.by_name) host_index_.push_back(&p);
}

const ThrottleSet::Pair* ThrottleSet::DomainPair(std::string_view domain, uint64_t hash,
                                                 std::atomic<uint32_t>* cache) const {
  const bool cacheable = cache != nullptr && generation_ < (1u << kDomainGenBits);
  if (cacheable) {
    const uint32_t w = cache->load(std::memory_order_relaxed);
    if (w >> (32 - kDomainGenBits) == generation_) {
      const uint32_t i = w & kDomainIndexMask;
      if (i == 0) return nullptr;
      if (i != kUncacheable) return domain_index_[i - 1];
    }
  }
  const Pair* p = domains_.Find(domain, hash);
  if (cacheable) {
    uint32_t i = 0;
    if (p != nullptr) {
      const auto it = std::find(domain_index_.begin(), domain_index_.end(), p);
      const size_t k = static_cast<size_t>(it - domain_index_.begin());
      i = k + 1 < kUncacheable ? static_cast<uint32_t>(k + 1) : kUncacheable;
    }
    cache->store(generation_ << (32 - kDomainGenBits) | i, std::memory_order_relaxed);
  }
  return p;
}

const ThrottleSet::Pair* ThrottleSet::HostPair(const IpAddress& address,
                                               std::string_view host_name,
                                               std::atomic<uint64_t>* cache) const {
  if (cache != nullptr) {
    const uint64_t w = cache->load(std::memory_order_relaxed);
    if (w >> 32 == generation_) {
      const uint32_t i = static_cast<uint32_t>(w);
      return i == 0 ? nullptr : host_index_[i - 1];
    }
  }
  const Pair* p = hosts_.Find(address, host_name);
  if (cache != nullptr) {
    uint64_t i = 0;
    if (p != nullptr) {
      i = static_cast<uint64_t>(std::find(host_index_.begin(), host_index_.end(), p) -
                                host_index_.begin()) + 1;
    }
    cache->store(uint64_t{generation_} << 32 | i, std::memory_order_relaxed);
  }
  return p;
}

void ThrottleSet::Add(const Pair& p, bool new_connection, RateThrottle** out, size_t* n) {
  if (new_connection && p.connections != nullptr) out[(*n)++] = p.connections;
  if (p.messages != nullptr) out[(*n)++] = p.messages;
}

size_t ThrottleSet::Collect(std::string_view domain, uint64_t domain_hash,
                            std::atomic<uint32_t>* domain_cache, std::string_view host_name,
                            const IpAddress& address, std::atomic<uint64_t>* host_cache,
                            std::string_view binding, bool new_connection,
                            RateThrottle** out) const {
  size_t n = 0;
  Add(global_, new_connection, out, &n);
  if (!domains_.empty()) {
    if (const Pair* p = DomainPair(domain, domain_hash, domain_cache)) {
      Add(*p, new_connection, out, &n);
    }
  }
  if (!hosts_.empty()) {
    if (const Pair* p = HostPair(address, host_name, host_cache)) Add(*p, new_connection, out, &n);
  }
  if (!binding.empty() && !bindings_.empty()) {
    if (auto b = bindings_.find(Key(binding)); b != bindings_.end()) {
      Add(b->second.own, new_connection, out, &n);
      if (const Pair* p = b->second.domains.Find(domain, domain_hash)) {
        Add(*p, new_connection, out, &n);
      }
      if (const Pair* p = b->second.hosts.Find(address, host_name)) {
        Add(*p, new_connection, out, &n);
      }
    }
  }
  return n;
}

void ThrottleSet::HostPairs::Insert(const std::string& key, Pair p) {
  if (absl::StatusOr<IpAddress> a = IpAddress::Parse(key); a.ok()) {
    by_address[*a] = p;
  } else {
    by_name[key] = p;
  }
}

const ThrottleSet::Pair* ThrottleSet::HostPairs::Find(const IpAddress& address,
                                                     std::string_view host_name) const {
  if (!by_address.empty()) {
    if (auto it = by_address.find(address); it != by_address.end()) return &it->second;
  }
  if (!by_name.empty() && !host_name.empty()) {
    if (auto it = by_name.find(Key(host_name)); it != by_name.end()) return &it->second;
  }
  return nullptr;
}

void ThrottleSet::ForDomain(std::string_view domain, std::vector<const RateThrottle*>* out) const {
  auto add = [&](const Pair& p) {
    if (p.connections) out->push_back(p.connections);
    if (p.messages) out->push_back(p.messages);
  };
  add(global_);
  if (const Pair* p = domains_.Find(domain, HashDomain(domain))) add(*p);
}

void ThrottleSet::ForHost(const IpAddress& address, std::string_view host_name,
                          std::vector<const RateThrottle*>* out) const {
  if (const Pair* p = hosts_.Find(address, host_name)) {
    if (p->connections) out->push_back(p->connections);
    if (p->messages) out->push_back(p->messages);
  }
}

void ThrottleSet::DomainPairs::Insert(const std::string& name, Pair p) {
  by_hash[HashDomain(name)].emplace_back(name, p);
}

const ThrottleSet::Pair* ThrottleSet::DomainPairs::Find(std::string_view name,
                                                       uint64_t hash) const {
  if (by_hash.empty()) return nullptr;
  auto it = by_hash.find(hash);
  if (it == by_hash.end()) return nullptr;
  for (const auto& [n, p] : it->second) {
    if (n == name) return &p;
  }
  return nullptr;
}

}  // namespace mxsched
