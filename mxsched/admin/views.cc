#include "mxsched/admin/views.h"

#include <algorithm>
#include <vector>

#include "mxsched/base/clock.h"

namespace mxsched::admin {

namespace {
int64_t LimitJson(int32_t limit) { return limit == kUnlimited ? -1 : int64_t{limit}; }
}  // namespace

nlohmann::json DomainViewJson(const DomainView& v) {
  nlohmann::json tiers = nlohmann::json::array();
  for (const auto& t : v.tiers) {
    nlohmann::json hosts = nlohmann::json::array();
    for (const auto& h : t.hosts) {
      hosts.push_back({{"name", h.name},
                       {"address", h.endpoint.address.ToString()},
                       {"port", h.endpoint.port},
                       {"limit", LimitJson(h.limit)},
                       {"active", h.active},
                       {"reachable", h.reachable},
                       {"seconds_since_failure", h.seconds_since_failure},
                       {"consecutive_failures", h.consecutive_failures},
                       {"configured_limit", LimitJson(h.configured_limit)},
                       {"limit_moved", h.limit_moved},
                       {"busy_replies", h.busy_replies},
                       {"provider", h.group},
                       {"provider_limit", h.group_limit},
                       {"provider_active", h.group_active}});
    }
    tiers.push_back({{"tier", t.tier}, {"mx_pref", t.mx_pref}, {"hosts", std::move(hosts)}});
  }
  return {{"domain", v.domain},       {"state", RouteStateName(v.state)},
          {"detail", v.detail},       {"ttl_left_s", v.ttl_left_s},
          {"active", v.active},       {"limit", LimitJson(v.limit)},
          {"tiers", std::move(tiers)}};
}

std::string HostStateName(const HostState& h, int64_t now_nanos) {
  const int64_t until = h.failed_until();
  if (until == 0) return "up";
  if (now_nanos < until) return "failed";
  return h.Reachable(now_nanos) ? "probe_due" : "probing";
}

nlohmann::json HostsJson(const HostRegistry& registry, int64_t now_nanos) {
  std::vector<const HostState*> hosts = registry.Snapshot();
  std::vector<std::pair<int32_t, const HostState*>> order;
  order.reserve(hosts.size());
  for (const HostState* h : hosts) order.emplace_back(h->active(), h);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    return a.second->endpoint().ToString() < b.second->endpoint().ToString();
  });
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [active, h] : order) {
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
         {"limit", LimitJson(h->limit())},
         {"peak", h->peak()},
         {"state", HostStateName(*h, now_nanos)},
         {"consecutive_failures", h->consecutive_failures()},
         {"seconds_since_failure", last ? (now_nanos - last) / kNanosPerSecond : -1},
         {"retry_in_s",
          until > now_nanos ? (until - now_nanos + kNanosPerSecond - 1) / kNanosPerSecond : 0},
         {"connections", std::move(connections)}});
  }
  return out;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace mxsched::admin
