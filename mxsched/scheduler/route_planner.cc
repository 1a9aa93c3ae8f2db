#include "mxsched/scheduler/route_planner.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <numeric>
#include "mxsched/base/strings.h"

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/types/span.h"

namespace mxsched {

std::string_view RouteStateName(RouteState s) {
  switch (s) {
    case RouteState::kReady:
      return "ready";
    case RouteState::kPending:
      return "resolving";
    case RouteState::kTempFail:
      return "temporary failure";
    case RouteState::kPermFail:
      return "permanent failure";
  }
  return "?";
}

namespace {
size_t AllocationSize(size_t hosts, size_t tiers) {
  size_t n = sizeof(RouteSnapshot) + hosts * sizeof(HostState*) + tiers * sizeof(uint16_t);
  n = (n + 3) & ~size_t{3};
  return n + 2 * tiers * sizeof(uint32_t);
}
}  // namespace

RouteSnapshot* RouteSnapshot::Create(RouteState state, int32_t domain_limit,
                                     uint32_t mx_failures_to_delay,
                                     std::string detail,
                                     const std::vector<std::vector<HostState*>>& tiers,
                                     const std::vector<std::pair<uint32_t, uint32_t>>& keys) {
  size_t num_hosts = 0;
  for (const auto& t : tiers) num_hosts += t.size();
  void* mem = ::operator new(AllocationSize(num_hosts, tiers.size()));
  auto* s = new (mem) RouteSnapshot();
  s->state_ = state;
  s->domain_limit_ = domain_limit;
  s->mx_failures_to_delay_ = mx_failures_to_delay;
  if (!detail.empty()) s->detail_ = std::make_unique<const std::string>(std::move(detail));
  s->num_hosts_ = static_cast<uint16_t>(num_hosts);
  s->num_tiers_ = static_cast<uint16_t>(tiers.size());
  auto** hosts = const_cast<HostState**>(s->hosts());
  auto* ends = const_cast<uint16_t*>(s->tier_ends());
  auto* k = const_cast<uint32_t*>(s->keys());
  size_t at = 0;
  for (size_t t = 0; t < tiers.size(); ++t) {
    for (HostState* h : tiers[t]) hosts[at++] = h;
    ends[t] = static_cast<uint16_t>(at);
    k[2 * t] = keys[t].first;
    k[2 * t + 1] = keys[t].second;
  }
  return s;
}

void RouteSnapshot::Destroy(RouteSnapshot* s) {
  if (s == nullptr) return;
  s->~RouteSnapshot();
  ::operator delete(s);
}

size_t RouteSnapshot::bytes() const {
  return AllocationSize(num_hosts_, num_tiers_) +
         (detail_ ? sizeof(std::string) + detail_->capacity() : 0);
}

uint64_t RouteSnapshot::ContentHash() const {
  const uint16_t* ends = tier_ends();
  const uint32_t* k = keys();
  return absl::HashOf(static_cast<uint8_t>(state_), domain_limit_, mx_failures_to_delay_,
                      detail(), absl::MakeConstSpan(hosts(), num_hosts_),
                      absl::MakeConstSpan(ends, num_tiers_),
                      absl::MakeConstSpan(k, 2 * size_t{num_tiers_}));
}

bool RouteSnapshot::SameContent(const RouteSnapshot& o) const {
  if (state_ != o.state_ || domain_limit_ != o.domain_limit_ ||
      mx_failures_to_delay_ != o.mx_failures_to_delay_ || num_hosts_ != o.num_hosts_ ||
      num_tiers_ != o.num_tiers_ || detail() != o.detail()) {
    return false;
  }
  return std::equal(hosts(), hosts() + num_hosts_, o.hosts()) &&
         std::equal(tier_ends(), tier_ends() + num_tiers_, o.tier_ends()) &&
         std::equal(keys(), keys() + 2 * size_t{num_tiers_}, o.keys());
}

namespace {
// For each tier size n (1..kMaxAddressesPerRoute), the steps coprime with n.
struct StepTable {
  uint8_t count[kMaxAddressesPerRoute + 1] = {};
  uint8_t steps[kMaxAddressesPerRoute + 1][kMaxAddressesPerRoute] = {};
  constexpr StepTable() {
    for (uint32_t n = 1; n <= kMaxAddressesPerRoute; ++n) {
      for (uint32_t s = 1; s <= n; ++s) {
        if (std::gcd(s, n) == 1) steps[n][count[n]++] = static_cast<uint8_t>(s % n);
      }
    }
  }
};
constexpr StepTable kSteps;
}  // namespace

uint32_t RotationStep(uint32_t n, uint64_t domain_hash) {
  if (n <= 1 || n > kMaxAddressesPerRoute) return 1;
  // Multiply-shift instead of a modulo: bits of the hash the table index does not use.
  const uint64_t pick = ((domain_hash >> 20) & 0xFFFFFFFF) * kSteps.count[n] >> 32;
  return kSteps.steps[n][pick];
}

namespace {

struct Candidate {
  uint32_t tier;
  uint32_t mx_pref;
  uint8_t family_rank;
  Endpoint endpoint;
  std::string name;
};

// Collects candidates and the outcome of every lookup for one Plan call.
class Collector {
 public:
  Collector(const Config& config, const DomainSettings& ds, Resolver* resolver)
      : config_(config), ds_(ds), resolver_(resolver) {}

  void AddItem(const RouteItem& item, std::string_view domain) {
    const uint16_t port = item.PortOr(ds_.remote_smtp_port);
    if (item.ttl) NoteTtl(*item.ttl);
    switch (item.lookup) {
      case RouteLookup::kLiteral:
        Add(item.tier, 0, Endpoint{*item.address, port}, "", /*from_dns=*/false);
        return;
      case RouteLookup::kA:
        AddAddresses(item.tier, 0, item.host, port);
        return;
      case RouteLookup::kMx:
        AddMx(item.tier, item.domain_mx ? domain : std::string_view(item.host), port);
        return;
    }
  }

  std::vector<Candidate>& candidates() { return candidates_; }
  bool pending() const { return pending_; }
  const std::string& temp_detail() const { return temp_detail_; }
  const std::string& perm_detail() const { return perm_detail_; }
  std::optional<uint32_t> ttl() const { return ttl_; }

 private:
  void NoteTtl(uint32_t ttl) { ttl_ = std::min(ttl_.value_or(ttl), ttl); }

  // Returns true when the answer is usable.
  bool Accept(const DnsAnswer& a, std::string_view what) {
    switch (a.state) {
      case DnsAnswer::State::kReady:
        if (a.mx.empty() && a.addresses.empty()) {  // NODATA: a negative answer
          NoteTtl(std::min(a.ttl_s, config_.max_negative_dns_ttl_s));
        } else {
          NoteTtl(std::clamp(a.ttl_s, config_.min_dns_ttl_s, config_.max_dns_ttl_s));
        }
        return true;
      case DnsAnswer::State::kPending:
        pending_ = true;
        return false;
      case DnsAnswer::State::kNxDomain:
        // Reused for the negative TTL (RFC 2308) and no longer than max_negative_dns_ttl:
        // a domain whose DNS is fixed delivers again within minutes, not after max_dns_ttl.
        NoteTtl(std::min(a.ttl_s, config_.max_negative_dns_ttl_s));
        if (perm_detail_.empty()) {
          perm_detail_ = StrCat("5.1.2 ", what, ": no such domain (NXDOMAIN)");
        }
        return false;
      case DnsAnswer::State::kTempFail:
        if (temp_detail_.empty()) {
          temp_detail_ = StrCat("4.4.3 ", what, ": DNS lookup failed: ", a.detail);
        }
        return false;
    }
    return false;
  }

  void AddAddresses(uint32_t tier, uint32_t mx_pref, std::string_view name, uint16_t port) {
    if (resolver_ == nullptr) {
      if (temp_detail_.empty()) {
        temp_detail_ = StrCat("4.4.3 ", name, ": needs DNS, and no resolver is configured");
      }
      return;
    }
    DnsAnswer a = resolver_->LookupAddresses(name, /*want_v4=*/true, ds_.use_ipv6);
    if (!Accept(a, name)) return;
    if (a.addresses.empty() && perm_detail_.empty()) {
      perm_detail_ = StrCat("5.1.2 ", name, ": no A/AAAA records");
    }
    for (const IpAddress& ip : a.addresses) {
      if (!ip.is_v4() && !ds_.use_ipv6) continue;
      Add(tier, mx_pref, Endpoint{ip, port}, name, /*from_dns=*/true);
    }
  }

  void AddMx(uint32_t tier, std::string_view name, uint16_t port) {
    if (resolver_ == nullptr) {
      if (temp_detail_.empty()) {
        temp_detail_ = StrCat("4.4.3 ", name,
                              ": MX lookup needs DNS, and no resolver is "
                              "configured");
      }
      return;
    }
    DnsAnswer a = resolver_->LookupMx(name);
    if (!Accept(a, name)) return;
    if (a.mx.empty()) {  // RFC 5321 §5.1: no MX -> the name itself is an implicit MX, pref 0
      if (!Prohibited(name)) AddAddresses(tier, 0, name, port);
      return;
    }
    if (a.mx.size() == 1 && a.mx[0].host.empty()) {  // RFC 7505 null MX
      if (perm_detail_.empty()) {
        perm_detail_ = StrCat("5.1.10 ", name, " accepts no mail (null MX, RFC 7505)");
      }
      return;
    }
    std::vector<DnsAnswer::Mx> mx = a.mx;
    std::stable_sort(mx.begin(), mx.end(),
                     [](const auto& x, const auto& y) { return x.pref < y.pref; });
    if (mx.size() > kMaxMxPerDomain) mx.resize(kMaxMxPerDomain);
    for (const auto& m : mx) {
      if (m.host.empty()) continue;  // a "." among real MXs is meaningless: skip it
      if (Prohibited(m.host)) continue;
      AddAddresses(tier, m.pref, m.host, port);
    }
  }

  // prohibited_mx_names: an MX target blocked by name is skipped; if nothing else is left,
  // the route is a temporary failure that names the MX and the pattern.
  bool Prohibited(std::string_view mx_name) {
    if (config_.prohibited_mx_names.empty()) return false;
    const std::string* p = config_.ProhibitedMxName(ToLower(mx_name));
    if (p == nullptr) return false;
    if (temp_detail_.empty()) {
      temp_detail_ =
          StrCat("4.4.0 MX ", mx_name, " is blocked by prohibited_mx_names \"", *p, "\"");
    }
    return true;
  }

  void Add(uint32_t tier, uint32_t mx_pref, Endpoint ep, std::string_view name, bool from_dns) {
    if (from_dns) {
      // A NAT64 address leads to the IPv4 address it embeds: judge both (64:ff9b::7f00:1
      // must not reach 127.0.0.1 through a translator when 127.0.0.0/8 is prohibited).
      const std::optional<IpAddress> via = ep.address.Nat64Embedded();
      for (const Cidr& c : config_.prohibited_hosts) {
        if (c.Contains(ep.address) || (via && c.Contains(*via))) {
          if (temp_detail_.empty()) {
            temp_detail_ = StrCat("4.4.0 ", name, " resolves to prohibited address ",
                                  ep.address.ToString(), " (prohibited_hosts ", c.ToString(), ")");
          }
          return;
        }
      }
    }
    if (!seen_.insert(ep).second) return;  // first (best) position wins
    if (candidates_.size() >= kMaxAddressesPerRoute) return;
    uint8_t rank = ds_.prefer_ipv6_mxs ? (ep.address.is_v4() ? 1 : 0) : 0;
    candidates_.push_back({tier, mx_pref, rank, ep, std::string(name)});
  }

  const Config& config_;
  const DomainSettings& ds_;
  Resolver* resolver_;
  std::vector<Candidate> candidates_;
  absl::flat_hash_set<Endpoint> seen_;
  bool pending_ = false;
  std::string temp_detail_, perm_detail_;
  std::optional<uint32_t> ttl_;
};

PlannedRoute Made(RouteSnapshot* s, int64_t expires_at) {
  return PlannedRoute{std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter>(s), expires_at};
}

}  // namespace

PlannedRoute RoutePlanner::Plan(const Config& config, std::string_view domain) {
  const DomainSettings& ds = config.ForDomain(domain);
  const int64_t now = clock_->NowNanos();
  Collector c(config, ds, resolver_);
  for (const RouteItem& item : ds.routes) {
    if (item.is_push()) continue;  // push routes are shown by `mxsched route`, not connected
    c.AddItem(item, domain);
  }
  auto expiry = [&](uint32_t seconds) { return now + int64_t{seconds} * kNanosPerSecond; };
  const uint32_t ttl = c.ttl().value_or(config.max_dns_ttl_s);
  if (c.pending()) {
    // Strict preference forbids using a later tier while an earlier one is unknown, so a
    // route with any lookup in flight waits for all of them. Expires at once: re-planned on
    // the next Acquire (the resolver coalesces and caches).
    return Made(RouteSnapshot::Create(RouteState::kPending, ds.max_outbound_connections,
                                      ds.mx_failures_to_delay, "4.4.3 DNS lookup in progress",
                                      {}, {}),
                now);
  }
  auto& cands = c.candidates();
  if (cands.empty()) {
    if (!c.temp_detail().empty()) {
      return Made(RouteSnapshot::Create(RouteState::kTempFail, ds.max_outbound_connections,
                                        ds.mx_failures_to_delay, c.temp_detail(), {}, {}),
                  expiry(std::min<uint32_t>(ttl, 30)));
    }
    std::string detail =
        c.perm_detail().empty() ? "5.4.4 route has no SMTP destinations" : c.perm_detail();
    return Made(RouteSnapshot::Create(RouteState::kPermFail, ds.max_outbound_connections,
                                      ds.mx_failures_to_delay, std::move(detail), {}, {}),
                expiry(ttl));
  }
  std::stable_sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
    return std::tie(a.tier, a.mx_pref, a.family_rank) < std::tie(b.tier, b.mx_pref, b.family_rank);
  });
  std::vector<std::vector<HostState*>> tiers;
  std::vector<std::pair<uint32_t, uint32_t>> keys;
  for (size_t i = 0; i < cands.size(); ++i) {
    const Candidate& k = cands[i];
    if (i == 0 || k.tier != cands[i - 1].tier || k.mx_pref != cands[i - 1].mx_pref ||
        k.family_rank != cands[i - 1].family_rank) {
      tiers.emplace_back();
      keys.emplace_back(k.tier, k.mx_pref);
    }
    const HostPolicy policy = config.PolicyFor(k.name, k.endpoint.address);
    HostConfig hc;
    hc.limit = policy.limit;
    hc.retry_nanos = int64_t{policy.host_failure_retry_s} * kNanosPerSecond;
    hc.adaptive = policy.adaptive;
    hc.adaptive_floor = policy.adaptive_floor;
    if (policy.provider != nullptr) {
      hc.group = registry_->GetOrCreateGroup(policy.provider->pattern,
                                             policy.provider->settings.max_outbound_connections);
    }
    tiers.back().push_back(registry_->GetOrCreate(k.endpoint, k.name, hc, now));
  }
  // Canonical order inside a tier (DNS servers rotate their answers): equal routes plan
  // equal snapshots, and the interner shares them. Per-domain order: RotationStep.
  for (auto& t : tiers) {
    std::sort(t.begin(), t.end(), [](const HostState* a, const HostState* b) {
      return a->endpoint() < b->endpoint();
    });
  }
  // A temporarily failed item elsewhere in the list: use what resolved, but look again soon.
  const uint32_t life = c.temp_detail().empty() ? ttl : std::min<uint32_t>(ttl, 30);
  // Items that gave nothing (an __mx__ that was NXDOMAIN beside a fallback host): the route
  // is usable, and its detail says why those items are not in it (`mxsched route` points
  // there). Such snapshots are shared only by domains whose items failed alike.
  const std::string& failed = c.temp_detail().empty() ? c.perm_detail() : c.temp_detail();
  return Made(
      RouteSnapshot::Create(RouteState::kReady, ds.max_outbound_connections,
                            ds.mx_failures_to_delay,
                            failed.empty() ? "" : StrCat("items without addresses: ", failed),
                            tiers, keys),
      expiry(life));
}

}  // namespace mxsched
