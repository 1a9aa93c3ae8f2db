// JSON views for operators: a domain's route (`mxsched route --json`, GET /domains/NAME) and
// the host list (GET /hosts). One definition so the CLI and the admin endpoint agree.
// Stateless functions; thread-safe as far as their arguments are.
#ifndef MXSCHED_ADMIN_VIEWS_H_
#define MXSCHED_ADMIN_VIEWS_H_

#include <cstdint>
#include <string>

#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/selector.h"
#include "nlohmann/json.hpp"

namespace mxsched::admin {

// {"domain", "state", "detail", "ttl_left_s", "active", "limit" (-1: unlimited), "tiers":
// [{"tier", "mx_pref", "hosts": [{"name", "address", "port", "limit", "active", "reachable",
// "seconds_since_failure", "consecutive_failures", "configured_limit", "limit_moved",
// "busy_replies", "provider", "provider_limit", "provider_active"}]}]}
nlohmann::json DomainViewJson(const DomainView& v);

// "up" (never failed or recovered), "failed" (inside host_failure_retry), "probe_due" (the
// window passed: the next connection is the half-open probe), "probing" (the probe is out).
std::string HostStateName(const HostState& h, int64_t now_nanos);

// Every host of `registry`, busiest first: {"host", "address", "port", "name", "active",
// "limit" (-1: unlimited), "peak", "state", "consecutive_failures", "seconds_since_failure"
// (-1: never), "retry_in_s" (0 unless failed), "connections": {outcome: count}}.
nlohmann::json HostsJson(const HostRegistry& registry, int64_t now_nanos);

// One line of JSON; bytes that are not UTF-8 become U+FFFD instead of throwing.
std::string Dump(const nlohmann::json& j);

}  // namespace mxsched::admin

#endif  // MXSCHED_ADMIN_VIEWS_H_
