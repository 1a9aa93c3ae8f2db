#include "mxsched/admin/views.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched::admin {

namespace {
int64_t LimitJson(int32_t limit) { return limit == kUnlimited ? -1 : int64_t{limit}; }

// Position of the route item a host came from (its literal address or its A-lookup name),
// or items.size() for MX hosts: the key that lists hosts in the order the config gives them.
size_t ItemIndex(const std::vector<RouteItem>& items, const DomainView::Host& h) {
  for (size_t i = 0; i < items.size(); ++i) {
    const RouteItem& it = items[i];
    if (it.address ? *it.address == h.endpoint.address
                   : (it.lookup == RouteLookup::kA && it.host == h.name)) {
      return i;
    }
  }
  return items.size();
}

}  // namespace

std::vector<std::vector<const DomainView::Host*>> StableOrder(const DomainView& v,
                                                              const std::vector<RouteItem>& items) {
  std::vector<std::vector<const DomainView::Host*>> out;
  for (const auto& t : v.tiers) {
    std::vector<const DomainView::Host*> hosts;
    for (const auto& h : t.hosts) hosts.push_back(&h);
    auto key = [&](const DomainView::Host* h) {
      return std::make_tuple(ItemIndex(items, *h), !h->endpoint.address.is_v4(),
                             h->endpoint.address.bytes(), h->endpoint.port);
    };
    std::stable_sort(hosts.begin(), hosts.end(),
                     [&](const auto* a, const auto* b) { return key(a) < key(b); });
    out.push_back(std::move(hosts));
  }
  return out;
}

bool IsMxTier(const std::vector<RouteItem>& items, uint32_t tier) {
  for (const RouteItem& it : items) {
    if (it.tier == tier && it.lookup == RouteLookup::kMx && !it.is_push()) return true;
  }
  return false;
}

std::string_view LookupName(const RouteItem& it) {
  if (it.is_push()) return "push";
  switch (it.lookup) {
    case RouteLookup::kLiteral:
      return "address";
    case RouteLookup::kA:
      return "A/AAAA lookup";
    case RouteLookup::kMx:
      return "MX lookup";
  }
  return "";
}

// What became of one route item in this view: the hosts it gave, or why it gave none.
std::string ItemStatus(const RouteItem& it, const DomainView& v, bool have_dns) {
  if (it.is_push()) {
    return StrCat("not used here: ", RouteSchemeName(it.scheme),
                  " is a push protocol (mxsched schedules SMTP connections only)");
  }
  size_t n = 0;
  for (const auto& t : v.tiers) {
    for (const auto& h : t.hosts) {
      if (it.address                     ? *it.address == h.endpoint.address
          : it.lookup == RouteLookup::kA ? h.name == it.host
                                         : t.tier == it.tier) {
        ++n;
      }
    }
  }
  if (n > 0) return StrCat(n, " host(s)");
  if (it.lookup != RouteLookup::kLiteral && !have_dns) {
    return "not looked up: no DNS resolver (--no-dns)";
  }
  if (v.state == RouteState::kPending) return "lookup still in progress";
  if (it.lookup != RouteLookup::kLiteral) return "no usable address (see the route's detail)";
  return "not used (listed earlier in the route, or prohibited)";
}

nlohmann::json BindingsJson(const std::vector<BindingView>& bindings, bool per_host) {
  nlohmann::json out = nlohmann::json::array();
  for (const BindingView& b : bindings) {
    nlohmann::json j = {{"binding", b.binding},
                        {"source", b.source},
                        {"active", b.active},
                        {"limit", LimitJson(b.limit)}};
    if (per_host) {
      j["used"] = b.used;
      j["state"] = b.state;
      j["consecutive_failures"] = b.consecutive_failures;
      j["retry_in_s"] = b.retry_in_s;
      j["peak"] = b.peak;
      j["connections"] = b.connections;
      j["failures"] = b.failures;
    }
    out.push_back(std::move(j));
  }
  return out;
}

int64_t HostClusterCount(const ClusterCounts& c, const DomainView::Host& h) {
  auto it = c.hosts.find(h.endpoint.ToString());
  return it == c.hosts.end() ? -1 : it->second;
}


nlohmann::json DomainViewJson(const DomainView& v, const std::vector<RouteItem>& items,
                              bool have_dns, const ClusterCounts& cluster) {
  nlohmann::json item_json = nlohmann::json::array();
  for (const RouteItem& it : items) {
    item_json.push_back({{"item", it.text},
                         {"protocol", RouteSchemeName(it.scheme)},
                         {"lookup", LookupName(it)},
                         {"tier", it.tier},
                         {"status", ItemStatus(it, v, have_dns)}});
  }
  const auto shown = StableOrder(v, items);
  nlohmann::json tiers = nlohmann::json::array();
  for (size_t t = 0; t < v.tiers.size(); ++t) {
    nlohmann::json hosts = nlohmann::json::array();
    for (const DomainView::Host* hp : shown[t]) {
      const DomainView::Host& h = *hp;
      hosts.push_back(
          {{"name", h.name},
           {"address", h.endpoint.address.ToString()},
           {"port", h.endpoint.port},
           {"limit", h.limit == kUnlimited ? int64_t{-1} : int64_t{h.limit}},
           {"active", h.active},
           {"parked", h.parked},  // of active: parked for reuse (DESIGN §13)
           {"cluster_active", cluster.enabled && h.configured_limit != kUnlimited
                                  ? nlohmann::json(HostClusterCount(cluster, h))
                                  : nlohmann::json(nullptr)},
           {"reachable", h.reachable},
           {"seconds_since_failure", h.seconds_since_failure},
           {"consecutive_failures", h.consecutive_failures},
           {"configured_limit",
            h.configured_limit == kUnlimited ? int64_t{-1} : int64_t{h.configured_limit}},
           {"limit_moved", h.limit_moved},
           {"busy_replies", h.busy_replies},
           {"provider", h.group},
           {"provider_limit", h.group_limit},
           {"provider_active", h.group_active},
           {"bindings", BindingsJson(h.bindings, /*per_host=*/true)},
           {"throttles", ThrottlesJson(h.throttles)}});
    }
    const DomainView::Tier& tier = v.tiers[t];
    tiers.push_back({{"tier", tier.tier},
                     {"mx", IsMxTier(items, tier.tier)},
                     {"mx_pref", tier.mx_pref},
                     {"hosts", std::move(hosts)}});
  }
  return {{"domain", v.domain},
          {"state", RouteStateName(v.state)},
          {"detail", v.detail},
          {"ttl_left_s", v.ttl_left_s},
          {"active", v.active},
          {"cluster_active",
           cluster.enabled ? nlohmann::json(cluster.domain) : nlohmann::json(nullptr)},
          {"limit", v.limit == kUnlimited ? int64_t{-1} : int64_t{v.limit}},
          {"items", std::move(item_json)},
          {"tiers", std::move(tiers)},
          {"throttles", ThrottlesJson(v.throttles)},
          {"bindings", BindingsJson(v.bindings, /*per_host=*/false)}};
}

nlohmann::json ThrottlesJson(const std::vector<ThrottleView>& throttles) {
  nlohmann::json out = nlohmann::json::array();
  for (const ThrottleView& t : throttles) {
    out.push_back({{"scope", t.scope},
                   {"kind", t.kind},
                   {"rate", t.rate},
                   {"next_in_ms", t.next_in_ms},
                   {"allowed", t.allowed},
                   {"waited", t.waited},
                   {"wait_seconds", t.wait_seconds},
                   {"throttled", t.throttled}});
  }
  return out;
}

nlohmann::json DomainViewJson(const Selector& selector, const DomainView& v, bool have_dns,
                              const io::FleetView* fleet) {
  // The domain of a view is normalized already (DescribeResident/Describe).
  ClusterCounts counts;
  if (fleet != nullptr) {
    counts.enabled = true;
    counts.domain = fleet->DomainCount(v.domain);
    for (const DomainView::Tier& t : v.tiers) {
      for (const DomainView::Host& h : t.hosts) {
        counts.hosts[h.endpoint.ToString()] = fleet->HostCount(h.endpoint);
      }
    }
  }
  return DomainViewJson(v, selector.config()->ForDomain(v.domain).routes, have_dns, counts);
}

std::string HostStateName(const HostState& h, int64_t now_nanos) {
  const int64_t until = h.failed_until();
  if (until == 0) return "up";
  if (now_nanos < until) return "failed";
  return h.Reachable(now_nanos) ? "probe_due" : "probing";
}

nlohmann::json HostsJson(Selector& selector, int64_t now_nanos, size_t max_hosts,
                         const io::FleetView* fleet) {
  epoch::EpochGuard pin;  // evicted hosts are freed through epoch.h
  std::vector<const HostState*> hosts = selector.registry().Snapshot();
  std::vector<std::pair<int32_t, const HostState*>> order;
  order.reserve(hosts.size());
  for (const HostState* h : hosts) order.emplace_back(std::max(0, h->active()), h);
  // Busiest first, then by address: only the first max_hosts are sorted (and shown), and
  // endpoints compare as values (formatting 191k of them per comparison took seconds).
  const size_t shown = std::min(order.size(), max_hosts);
  std::partial_sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(shown), order.end(),
                    [](const auto& a, const auto& b) {
                      if (a.first != b.first) return a.first > b.first;
                      return a.second->endpoint() < b.second->endpoint();
                    });
  order.resize(shown);
  hosts.clear();
  for (const auto& [active, h] : order) hosts.push_back(h);
  const std::vector<std::vector<BindingView>> bindings = selector.DescribeBindings(hosts);
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& [active, h] = order[i];
    nlohmann::json connections = nlohmann::json::object();
    for (size_t o = 0; o < kOutcomeKinds; ++o) {
      connections[std::string(OutcomeName(static_cast<Outcome>(o)))] = h->outcomes(o);
    }
    const int64_t until = h->failed_until();
    const int64_t last = h->last_failure();
    out.push_back(
        {{"host", h->endpoint().ToString()},
         {"address", h->endpoint().address.ToString()},
         {"port", h->endpoint().port},
         {"name", h->name()},
         {"active", active},
         {"parked", selector.parked_on(*h)},  // of active: parked for reuse (DESIGN §13)
         {"limit", LimitJson(h->limit())},
         {"peak", h->peak()},
         {"state", HostStateName(*h, now_nanos)},
         {"consecutive_failures", h->consecutive_failures()},
         {"seconds_since_failure", last ? (now_nanos - last) / kNanosPerSecond : -1},
         {"retry_in_s",
          until > now_nanos ? (until - now_nanos + kNanosPerSecond - 1) / kNanosPerSecond : 0},
         {"connections", std::move(connections)},
         // The fleet's leases on the host's key (a Host limit with cluster_limits), as the
         // last heartbeat read them: -1 unknown; null without cluster limits or Host limit.
         {"cluster_active", fleet != nullptr && h->configured_limit() != kUnlimited
                                ? nlohmann::json(fleet->HostCount(h->endpoint()))
                                : nlohmann::json(nullptr)},
         {"bindings", BindingsJson(bindings[i], /*per_host=*/true)},
         // Its Host stanza's rate throttles (docs/DESIGN.md §12), [] without.
         {"throttles", ThrottlesJson(selector.ThrottlesAt(*h))}});
  }
  return out;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace mxsched::admin
