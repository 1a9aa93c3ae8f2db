// RouteSnapshot: one domain's resolved route — its hosts grouped into tiers in strict
// preference order — and RoutePlanner, which builds snapshots from the configuration, the
// DNS (through the Resolver interface) and the shared HostRegistry.
//
// Tier order: by the route item's tier (routes.h), then by MX preference inside an MX item,
// then (with prefer_ipv6_mxs) IPv6 before IPv4. Hosts of one tier are in a canonical order
// (by address and port), so every domain with the same hosts and settings plans an equal
// snapshot and RouteInterner (route_interner.h) keeps one copy for all of them. The random
// order RFC 5321 §5.1 asks for among equal preferences is per domain, not per snapshot: the
// selector walks the first tier in a permutation drawn per domain, other tiers with a
// per-domain stride coprime with the tier size (RotationStep): docs/DESIGN.md §5 rule 11.
//
// A snapshot holds no time: when a route expires is per domain (PlannedRoute::expires_at,
// kept in the DomainEntry), so domains planned at different times still share one.
//
// Thread-safety: a RouteSnapshot is immutable after Create and read without locks; it is
// published through an atomic pointer and reclaimed with epoch-based reclamation.
// RoutePlanner::Plan is safe for concurrent use if the Resolver is; it runs on the slow path.
#ifndef MXSCHED_SCHEDULER_ROUTE_PLANNER_H_
#define MXSCHED_SCHEDULER_ROUTE_PLANNER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/clock.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/dns.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched {


class RouteSnapshot {
 public:
  struct Tier {
    uint32_t key_tier;     // route item tier
    uint32_t key_mx_pref;  // MX preference inside the item (0 for A and literals)
    std::span<HostState* const> hosts;
  };

  static RouteSnapshot* Create(RouteState state, int32_t domain_limit,
                               uint32_t mx_failures_to_delay, std::string detail,
                               const std::vector<std::vector<HostState*>>& tiers,
                               const std::vector<std::pair<uint32_t, uint32_t>>& tier_keys);
  static void Destroy(RouteSnapshot* s);
  struct Deleter {
    void operator()(RouteSnapshot* s) const { Destroy(s); }
  };

  RouteState state() const { return state_; }
  int32_t domain_limit() const { return domain_limit_; }
  uint32_t mx_failures_to_delay() const { return mx_failures_to_delay_; }
  std::string_view detail() const { return detail_ ? std::string_view(*detail_) : ""; }
  size_t num_tiers() const { return num_tiers_; }
  size_t num_hosts() const { return num_hosts_; }
  // Hosts of tier t. REQUIRES: t < num_tiers().
  std::span<HostState* const> TierHosts(size_t t) const {
    const uint16_t* ends = tier_ends();
    uint16_t begin = t == 0 ? 0 : ends[t - 1];
    return {hosts() + begin, static_cast<size_t>(ends[t] - begin)};
  }
  Tier GetTier(size_t t) const {
    const uint32_t* k = keys();
    return {k[2 * t], k[2 * t + 1], TierHosts(t)};
  }
  // Heap bytes this snapshot uses (for the memory benchmark).
  size_t bytes() const;
  // Content hash and equality: what RouteInterner shares snapshots by (everything above:
  // state, limits, detail, tiers and their hosts in order).
  uint64_t ContentHash() const;
  bool SameContent(const RouteSnapshot& o) const;

 private:
  friend class RouteInterner;
  RouteSnapshot() = default;
  HostState* const* hosts() const { return reinterpret_cast<HostState* const*>(this + 1); }
  const uint16_t* tier_ends() const {
    return reinterpret_cast<const uint16_t*>(hosts() + num_hosts_);
  }
  const uint32_t* keys() const {
    // aligned after the uint16 ends
    uintptr_t p = reinterpret_cast<uintptr_t>(tier_ends() + num_tiers_);
    return reinterpret_cast<const uint32_t*>((p + 3) & ~uintptr_t{3});
  }

  int32_t domain_limit_ = 0;
  uint32_t mx_failures_to_delay_ = 0;
  uint16_t num_hosts_ = 0;
  uint16_t num_tiers_ = 0;
  RouteState state_ = RouteState::kPending;
  int32_t refs_ = 0;    // RouteInterner: domains using it (under the interner's shard mutex)
  uint64_t hash_ = 0;   // ContentHash(), set when interned
  // Set only for failures and for ready routes some of whose items gave no address: keeps
  // snapshots small.
  std::unique_ptr<const std::string> detail_;
  // Followed in the same allocation by: HostState* hosts[num_hosts_];
  // uint16_t tier_ends[num_tiers_]; uint32_t keys[2 * num_tiers_].
};

// Caps on what one domain's route may expand to (cf. Postfix smtp_mx_address_limit = 5):
// hostile or huge MX sets are truncated in preference order.
inline constexpr size_t kMaxMxPerDomain = 16;
inline constexpr size_t kMaxAddressesPerRoute = 32;

// What Plan built: a snapshot (not yet interned) and when it is to be planned again.
struct PlannedRoute {
  std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter> snapshot;
  int64_t expires_at = 0;  // clock nanos; a pending route expires at once
  RouteSnapshot* operator->() const { return snapshot.get(); }
};

class RoutePlanner {
 public:
  // `resolver` may be null: then only literal-address routes resolve, and items that need
  // DNS make the route kTempFail with a message saying so.
  RoutePlanner(HostRegistry* registry, Resolver* resolver, Clock* clock)
      : registry_(registry), resolver_(resolver), clock_(clock) {}
  Resolver* resolver() const { return resolver_; }

  // Builds the route for `domain` (lower-case) under `config`. The snapshot is never null.
  PlannedRoute Plan(const Config& config, std::string_view domain);

 private:
  HostRegistry* registry_;
  Resolver* resolver_;
  Clock* clock_;
};

// Equal-preference rotation (RFC 5321 §5.1, docs/DESIGN.md §1 rule 2). A domain walks a
// tier of n hosts as position p -> host (p * step) mod n, where step is coprime with n and
// picked per domain from its hash: with the random start (the entry's cursor) every domain
// has its own order over a shared snapshot, and a host that is full or down hands its turns
// to different hosts in different domains, not always to the same neighbour.
// REQUIRES: 1 <= n <= kMaxAddressesPerRoute.
uint32_t RotationStep(uint32_t n, uint64_t domain_hash);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_ROUTE_PLANNER_H_
