// JSON views for operators: a domain's route (`mxsched route --json`, GET /domains/NAME) and
// the host list (GET /hosts). One definition so the CLI and the admin endpoint agree.
// Stateless functions; thread-safe as far as their arguments are.
#ifndef MXSCHED_ADMIN_VIEWS_H_
#define MXSCHED_ADMIN_VIEWS_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/io/fleet_client.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/routes.h"
#include "mxsched/scheduler/selector.h"
#include "nlohmann/json.hpp"

namespace mxsched::admin {

// With cluster_limits (docs/DESIGN.md §7): live leases in Redis per host key and per domain
// key, as an observer sees them (-1: could not be read). `mxsched route` reads them from
// Redis; the admin endpoint never asks Redis from its request thread: it shows the counts the
// worker's heartbeats last read (io::FleetView), -1 (null) where none is known.
struct ClusterCounts {
  bool enabled = false;
  std::string error;  // Redis could not be asked
  int64_t domain = -1;
  std::map<std::string, int64_t> hosts;  // by endpoint text
};

// The route view (`mxsched route --json`, GET /domains/NAME): {"domain", "state", "detail",
// "ttl_left_s", "active", "cluster_active" (null without cluster counts), "limit" (-1:
// unlimited), "items": [{"item", "protocol", "lookup", "tier", "status"}], "tiers": [{"tier",
// "mx" (filled by an MX lookup), "mx_pref", "hosts": [{"name", "address", "port", "limit",
// "active", "cluster_active", "reachable", "seconds_since_failure", "consecutive_failures",
// "configured_limit", "limit_moved", "busy_replies", "provider", "provider_limit",
// "provider_active", "bindings": BindingsJson per host, "throttles": ThrottlesJson of the
// host's own (Host stanza)}]}], "throttles": ThrottlesJson of the global and the domain's own, "bindings": BindingsJson per domain}. Hosts in
// StableOrder. `items`: the domain's route items (Config::ForDomain(domain).routes);
// `have_dns`: whether names were looked up at all.
nlohmann::json DomainViewJson(const DomainView& v, const std::vector<RouteItem>& items,
                              bool have_dns, const ClusterCounts& cluster = {});
// Rate throttles (docs/DESIGN.md §12; GET /throttles, "throttles" of the route view):
// [{"scope", "kind", "rate", "next_in_ms", "allowed", "waited", "wait_seconds", "throttled"}].
nlohmann::json ThrottlesJson(const std::vector<ThrottleView>& throttles);
// Egress bindings (docs/DESIGN.md §1 rule 13, §8): [{"binding", "source" ("": the kernel
// chooses), "active", "limit" (-1: unlimited)}], per domain (DomainView::bindings); per host
// (`per_host`, DomainView::Host::bindings, /hosts) also "used", "state", "consecutive_failures",
// "retry_in_s", "peak", "connections", "failures" — the (binding, host) failure memory.
nlohmann::json BindingsJson(const std::vector<BindingView>& bindings, bool per_host);
// The same for a domain of `selector`, its items from the selector's configuration; the
// fleet-wide counts from `fleet` (its cache, at most a few seconds old; null: none).
nlohmann::json DomainViewJson(const Selector& selector, const DomainView& v, bool have_dns,
                              const io::FleetView* fleet = nullptr);

// Pieces of the view the CLI's human-readable `route` prints too:
// each tier's hosts in a stable order (config order, then address) instead of the rotation
// order, which starts at a random host in every process and moves on every Acquire — so no
// host is marked "next" the way Momentum's long-running console does;
std::vector<std::vector<const DomainView::Host*>> StableOrder(const DomainView& v,
                                                              const std::vector<RouteItem>& items);
// true when tier `tier` holds an MX lookup (its hosts are grouped by MX preference);
bool IsMxTier(const std::vector<RouteItem>& items, uint32_t tier);
// "address", "A/AAAA lookup", "MX lookup" or "push";
std::string_view LookupName(const RouteItem& it);
// what became of one route item in the view: the hosts it gave, or why it gave none;
std::string ItemStatus(const RouteItem& it, const DomainView& v, bool have_dns);
// the cluster-wide count of a host (-1: not read).
int64_t HostClusterCount(const ClusterCounts& c, const DomainView::Host& h);

// "up" (never failed or recovered), "failed" (inside host_failure_retry), "probe_due" (the
// window passed: the next connection is the half-open probe), "probing" (the probe is out).
std::string HostStateName(const HostState& h, int64_t now_nanos);

// Every host of the selector's registry, busiest first: {"host", "address", "port", "name",
// "active", "limit" (-1: unlimited), "peak", "state", "consecutive_failures",
// "seconds_since_failure" (-1: never), "retry_in_s" (0 unless failed), "connections":
// {outcome: count}, "cluster_active" (the fleet's count from `fleet`'s cache for a host with
// a Host limit, -1 unknown; null without `fleet` or limit), "bindings": BindingsJson per
// host, "throttles": ThrottlesJson of its Host stanza's rate throttles}. At most `max_hosts` entries, the busiest first (the admin endpoint passes its
// max_host_series; mxsched_hosts in /metrics gives the total).
nlohmann::json HostsJson(Selector& selector, int64_t now_nanos, size_t max_hosts = SIZE_MAX,
                         const io::FleetView* fleet = nullptr);

// One line of JSON; bytes that are not UTF-8 become U+FFFD instead of throwing.
std::string Dump(const nlohmann::json& j);

}  // namespace mxsched::admin

#endif  // MXSCHED_ADMIN_VIEWS_H_
