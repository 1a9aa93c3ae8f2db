// RateThrottle: Momentum's outbound_throttle_connections / outbound_throttle_messages —
// "N" (at most N starts in any second) or "N/S" (at most N in any S seconds) — as the
// receiver counts them (docs/DESIGN.md §12).
//
// Strict spacing: starts go at least (S + A)/N apart, A = max(2% of S, 50 ms) a jitter
// allowance (a GCRA with no burst tolerance, one 64-bit value per throttle: the earliest
// instant the next start may go). A GCRA with a burst of N lets 2N-1 through in some window
// of S; a sliding log of the last N starts releases N at once each window, and the
// receiver, counting on its own clock with delivery jitter, sees the tail of one burst and
// the head of the next in one window. With spacing, N+1 starts span S + A, so a receiver
// whose accepts jitter by up to A/2 still counts at most N in any window of S.
//
// Reservations, not polling: ReserveAll takes the next start of every throttle that applies
// at one instant t >= now, all or none; the caller starts at t (a timer, never a periodic
// re-check). Reservations are served in the order they are made (FIFO) and never overlap,
// so a waiting caller knows its instant at once.
//
// Thread-safety: lock-free; any thread. Hand-written (no Debian library offers an exact,
// lock-free, multi-key reservation throttle; Abseil has none).
#ifndef MXSCHED_SCHEDULER_THROTTLE_H_
#define MXSCHED_SCHEDULER_THROTTLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/scheduler/config.h"

namespace mxsched {

// ThrottleSpec and ParseThrottleSpec are public (scheduler/config.h).


struct ThrottleReservation;
class RateThrottle;
ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos);

class RateThrottle {
 public:
  enum class Kind : uint8_t { kConnections, kMessages };
  // `scope` names what it limits, for reasons and views: "global", "example.com",
  // "host 192.0.2.1", "binding b1", "binding b1 to example.com", "binding b1 to host mx.x".
  explicit RateThrottle(ThrottleSpec spec, Kind kind = Kind::kConnections,
                        std::string scope = "global", bool per_host = false)
      : spec_(spec), interval_(spec.interval_nanos()), kind_(kind), per_host_(per_host),
        scope_(std::move(scope)) {}
  const ThrottleSpec& spec() const { return spec_; }
  Kind kind() const { return kind_; }
  const std::string& scope() const { return scope_; }
  // Whether it limits one destination address (Host, Binding::Host): another host of the
  // same tier may still go when this one is throttled.
  bool per_host() const { return per_host_; }
  // The earliest instant (clock nanos) the next start may go: <= now means at once.
  int64_t next_free() const { return TimeOf(next_.load(std::memory_order_acquire)); }
  // "connection rate limit for example.com: 20/1 s"
  std::string Reason() const;

  // Counters (relaxed; for views and metrics): starts reserved, of which some waited, their
  // total wait, and starts refused (the wait would have been longer than the caller's).
  uint64_t allowed() const {
    const int64_t w = next_.load(std::memory_order_relaxed);
    return allowed_.load(std::memory_order_relaxed) + static_cast<uint64_t>(w & kCountMask);
  }
  uint64_t waited() const { return waited_.load(std::memory_order_relaxed); }
  uint64_t wait_nanos() const { return wait_nanos_.load(std::memory_order_relaxed); }
  uint64_t throttled() const { return throttled_.load(std::memory_order_relaxed); }
  void CountThrottled() { throttled_.fetch_add(1, std::memory_order_relaxed); }
  // A reload: this throttle replaces `old` (same scope and kind): it keeps the next free
  // instant (a new configuration does not open a burst) and the counts.
  void TakeOver(const RateThrottle& old);

 private:
  friend ThrottleReservation ReserveAll(std::span<RateThrottle* const>, int64_t, int64_t);
  // next_ packs the next free instant (clock nanos, the high 60 bits: |t| < 2^59 ns, 18
  // years) with the starts reserved modulo 16 (the low 4 bits), so the one CAS that
  // reserves also counts; allowed_ takes 16 each time the low bits wrap. (A separate counter
  // increment per throttle per start was a third of three throttles' cost, bench/README.md.)
  static constexpr int kCountBits = 4;
  static constexpr int64_t kCountMask = (int64_t{1} << kCountBits) - 1;
  static int64_t TimeOf(int64_t word) { return word >> kCountBits; }  // arithmetic shift
  static int64_t Word(int64_t time, int64_t count) {
    return static_cast<int64_t>(static_cast<uint64_t>(time) << kCountBits) | (count & kCountMask);
  }
  ThrottleSpec spec_;
  int64_t interval_;
  Kind kind_;
  bool per_host_;
  std::string scope_;
  alignas(64) std::atomic<int64_t> next_{INT64_MIN};
  std::atomic<uint64_t> allowed_{0}, waited_{0}, wait_nanos_{0}, throttled_{0};
};

// Every throttle a configuration sets, found by scope. Immutable after construction but
// for the throttles' own atomics; shared by every thread (the selector swaps the whole set
// on reload and retires the old one through the epoch, DESIGN §12).
class ThrottleSet {
 public:
  // `previous` (may be null): the set this one replaces; throttles of the same scope and
  // kind take over its state (RateThrottle::TakeOver).
  ThrottleSet(const Config& config, const ThrottleSet* previous);
  bool empty() const { return all_.empty(); }
  // The throttles a start takes: connection and message ones (new_connection false: a
  // reused connection, message throttles only) of every scope that applies to `domain`
  // (lower-case), the host (`host_name` lower-case or "", and `address`) and `binding`
  // ("" = no binding). Returns how many were written to `out` (at most kMaxThrottlesPerStart).
  // `domain_hash` is HashDomain(domain) (DomainEntry::hash: no hashing of the name per start).
  size_t Collect(std::string_view domain, uint64_t domain_hash, std::string_view host_name,
                 const IpAddress& address, std::string_view binding, bool new_connection,
                 RateThrottle** out) const {
    return Collect(domain, domain_hash, nullptr, host_name, address, nullptr, binding,
                   new_connection, out);
  }
  // The same, with the Domain and Host scopes' throttles cached on the domain entry and the
  // host state (`domain_cache`, `host_cache`, either may be null): a word naming this set's
  // generation and the scope's index, written on the first start after a reload, so a start
  // looks nothing up. A word of another set (a reload) is overwritten.
  size_t Collect(std::string_view domain, uint64_t domain_hash,
                 std::atomic<uint32_t>* domain_cache, std::string_view host_name,
                 const IpAddress& address, std::atomic<uint64_t>* host_cache,
                 std::string_view binding, bool new_connection, RateThrottle** out) const;
  // Unique per set (1, 2, ...): what the caches compare.
  uint32_t generation() const { return generation_; }
  // Every throttle, in a stable order (global, domains, hosts, bindings; by name).
  const std::vector<std::unique_ptr<RateThrottle>>& all() const { return all_; }
  // The throttles whose scope is `domain` (its Domain stanza), for /domains/NAME.
  void ForDomain(std::string_view domain, std::vector<const RateThrottle*>* out) const;
  // The throttles whose scope is this host (its Host stanza, by address, else by name).
  void ForHost(const IpAddress& address, std::string_view host_name,
               std::vector<const RateThrottle*>* out) const;

 private:
  struct Pair {
    RateThrottle* connections = nullptr;
    RateThrottle* messages = nullptr;
  };
  // Host stanzas by address (no text per start: the hot path compares IpAddress) and by
  // MX name; an address stanza wins over a name stanza, as for Host limits.
  struct HostPairs {
    absl::flat_hash_map<IpAddress, Pair> by_address;
    absl::flat_hash_map<std::string, Pair> by_name;
    bool empty() const { return by_address.empty() && by_name.empty(); }
    void Insert(const std::string& key, Pair p);
    const Pair* Find(const IpAddress& address, std::string_view host_name) const;
  };
  // Domain stanzas by HashDomain of their name (the entry's precomputed hash), the name
  // compared on a hit.
  struct DomainPairs {
    absl::flat_hash_map<uint64_t, std::vector<std::pair<std::string, Pair>>> by_hash;
    bool empty() const { return by_hash.empty(); }
    void Insert(const std::string& name, Pair p);
    const Pair* Find(std::string_view name, uint64_t hash) const;
  };
  struct PerBinding {
    Pair own;
    DomainPairs domains;
    HostPairs hosts;
  };
  Pair Make(const Throttles& t, std::string scope, bool per_host, const ThrottleSet* previous);
  static void Add(const Pair& p, bool new_connection, RateThrottle** out, size_t* n);
  const Pair* DomainPair(std::string_view domain, uint64_t hash,
                         std::atomic<uint32_t>* cache) const;
  const Pair* HostPair(const IpAddress& address, std::string_view host_name,
                       std::atomic<uint64_t>* cache) const;
  const uint32_t generation_;
  // The Domain and Host scopes' pairs by index (the caches name them by index + 1; 0: none).
  std::vector<const Pair*> domain_index_, host_index_;
  Pair global_;
  DomainPairs domains_;
  HostPairs hosts_;
  absl::flat_hash_map<std::string, PerBinding> bindings_;
  std::vector<std::unique_ptr<RateThrottle>> all_;
};

struct ThrottleReservation {
  bool ok = false;
  int64_t at = 0;       // the instant reserved (ok), or the earliest it could have been
  size_t blocking = 0;  // the throttle that decided `at` (for the deferral's reason)
};
// Reserves one start at the same instant t on every throttle of `throttles`: t is the
// earliest instant >= now that every one allows. If t - now > max_wait_nanos nothing is
// reserved (ok false, `at` says when it would have been). An empty span reserves `now`.
// REQUIRES: at most kMaxThrottlesPerStart throttles (one per scope that can apply).
inline constexpr size_t kMaxThrottlesPerStart = 12;  // 6 scopes x 2 kinds
ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_THROTTLE_H_
