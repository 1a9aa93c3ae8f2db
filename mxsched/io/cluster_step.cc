#include "mxsched/io/cluster_step.h"

#include <algorithm>
#include <utility>

#include "mxsched/base/strings.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched::io {

bool ClusterStep::PlanThrottles(const std::vector<ThrottleRef>& throttles) {
  if (id_.empty()) id_ = fleet_->NewId();
  keys_.clear();
  roles_.clear();
  throttles_.clear();
  throttle_reasons_.clear();
  throttle_messages_.clear();
  for (const ThrottleRef& t : throttles) {
    // A message throttle's key is beside the connection throttle's of the same scope, and
    // spaced by the same rule (DESIGN §12 rules 1, 10).
    throttles_.push_back({t.messages ? fleet_->MessageThrottleKey(t.scope)
                                     : fleet_->ThrottleKey(t.scope),
                          t.spec.interval_nanos() / 1000 + 1, static_cast<int32_t>(t.spec.count)});
    throttle_reasons_.push_back(StrCat(t.messages ? "message" : "connection", " rate limit for ",
                                       t.scope, ": ", t.spec.ToString()));
    throttle_messages_.push_back(t.messages);
  }
  return !throttles_.empty();
}

bool ClusterStep::Plan(const Lease& lease, std::string_view domain, int32_t domain_limit,
                       const std::vector<ThrottleRef>& throttles) {
  PlanThrottles(throttles);
  const std::string_view binding = lease.binding();
  const Endpoint& e = lease.endpoint();
  auto add = [this](std::string key, int32_t limit, Role role) {
    keys_.push_back({std::move(key), limit});
    roles_.push_back(role);
  };
  // Totals keep their keys; what is per binding (DESIGN §1 rule 13) has the binding in it.
  if (const int32_t host_limit = lease.host().configured_limit(); host_limit != kUnlimited) {
    add(fleet_->HostKey(e), host_limit, Role::kHost);
  }
  if (!binding.empty()) {
    if (const int32_t l = lease.binding_host_limit(); l != kUnlimited && l > 0) {
      add(fleet_->BindingHostKey(binding, e), l, Role::kBindingHost);
    }
  }
  provider_.assign(lease.provider());
  if (!provider_.empty()) add(fleet_->ProviderKey(provider_), lease.provider_limit(), Role::kProvider);
  if (!binding.empty()) {
    if (const int32_t l = lease.binding_domain_limit(); l != kUnlimited && l > 0) {
      add(fleet_->BindingDomainKey(binding, domain), l, Role::kDomain);
    }
  } else if (domain_limit != kUnlimited) {
    add(fleet_->DomainKey(domain), domain_limit, Role::kDomain);
  }
  at_ = FullAt{e, std::string(binding)};
  return !keys_.empty() || !throttles_.empty();
}

void ClusterStep::Ask(bool may_wait, int64_t throttle_wait_nanos, FleetClient::Done done) {
  const bool seen = std::find(full_hosts_.begin(), full_hosts_.end(), at_) != full_hosts_.end();
  queued_ = may_wait && (queue_ || seen);
  std::vector<ClusterKey> keys = std::exchange(keys_, {});
  asked_reasons_ = throttle_reasons_;
  // Nothing of this object after the call: `done` may run inside it (a local decision) and
  // end the session that owns this step (ASan: heap-use-after-free in redis_down_at_start).
  fleet_->Acquire(id_, std::move(keys), throttles_, throttle_wait_nanos,
                  queued_ ? &waiter_ : nullptr, std::move(done));
}

void ClusterStep::AskThrottles(int64_t throttle_wait_nanos, FleetClient::Done done,
                               bool messages_only) {
  queued_ = false;
  std::vector<ClusterThrottle> ask;
  asked_reasons_.clear();
  for (size_t i = 0; i < throttles_.size(); ++i) {
    if (messages_only && !throttle_messages_[i]) continue;
    ask.push_back(throttles_[i]);
    asked_reasons_.push_back(throttle_reasons_[i]);
  }
  fleet_->Acquire(id_, {}, std::move(ask), throttle_wait_nanos, nullptr, std::move(done));
}

void ClusterStep::Move(ClusterLease& cluster_lease, const Lease& lease,
                       std::string_view from_domain, std::string_view to_domain,
                       int32_t to_limit, FleetClient::MoveDone done) {
  const std::string_view binding = lease.binding();
  auto key = [&](std::string_view d) {
    return binding.empty() ? fleet_->DomainKey(d) : fleet_->BindingDomainKey(binding, d);
  };
  ClusterKey to{"", 0};
  if (to_limit != kUnlimited && to_limit > 0) to = {key(to_domain), to_limit};
  if (cluster_lease.valid()) {
    return fleet_->Move(cluster_lease, key(from_domain), std::move(to), std::move(done));
  }
  if (to.key.empty()) return done(true);
  // Nothing held fleet-wide yet: a lease on the new domain's key, granted now or not at all.
  if (id_.empty()) id_ = fleet_->NewId();
  fleet_->Acquire(id_, {std::move(to)}, nullptr,
                  [&cluster_lease, done = std::move(done)](FleetClient::Result r) {
                    const bool ok = r.verdict == FleetClient::Verdict::kGranted;
                    if (ok) cluster_lease = std::move(r.lease);
                    done(ok);
                  });
}

int64_t ClusterStep::LateStartLimitNanos(bool messages_only) const {
  int64_t limit = INT64_MAX;
  for (size_t i = 0; i < throttles_.size(); ++i) {
    if (messages_only && !throttle_messages_[i]) continue;
    const ClusterThrottle& t = throttles_[i];
    // Half the jitter allowance (DESIGN §12 rule 1): interval·N = S + max(S/50, 50 ms), so
    // A/2 is interval·N/102 from S = 2.5 s up and 25 ms below.
    limit = std::min(limit, std::max<int64_t>(t.interval_us * 1000 * t.count / 102, 25'000'000));
  }
  return limit;
}

ClusterStep::Decision ClusterStep::Judge(FleetClient::Result res, bool may_wait,
                                         std::string_view domain) {
  using V = FleetClient::Verdict;
  Decision d;
  if (res.verdict == V::kGranted) {
    d.next = Next::kOpen;
    d.lease = std::move(res.lease);
    d.start_in_nanos = res.start_in_nanos;
    return d;
  }
  if (res.verdict == V::kThrottled) {
    // The fleet's next start under a throttle is beyond this session's wait (§12 rule 10):
    // deferred now, as the per-process throttle does (§12 rule 3); nothing was taken.
    d.defer_reason = DeferReason::kRateLimited;
    const size_t i = static_cast<size_t>(res.throttle);
    d.reason = StrCat("451 4.4.5 ", i < asked_reasons_.size() ? asked_reasons_[i]
                                                              : std::string("rate limit"));
    return d;
  }
  if (res.verdict == V::kClosed) {
    d.reason =
        "451 4.4.3 cluster limits unavailable: Redis unreachable, cluster_failure_mode = closed";
    return d;
  }
  if (res.full_mask == 0) {
    // Refused with no key full (an ask of throttles alone during the warm-up, or this
    // worker's share of none): no queue to join, nothing another host would change.
    d.reason = StrCat("451 4.4.3 cluster limits unavailable: ",
                      res.unavailable.empty() ? std::string("refused") : res.unavailable);
    return d;
  }
  // The first full key names the verdict (the host's before the provider's).
  bool host_full = false, domain_full = false;
  std::string where;
  for (size_t i = 0; i < roles_.size() && i < 32; ++i) {
    if (!((res.full_mask >> i) & 1)) continue;
    const Role role = roles_[i];
    if (role == Role::kDomain) {
      domain_full = true;
      continue;
    }
    if (!host_full) {
      where = role == Role::kProvider ? StrCat("provider ", provider_, " (at ", at_.endpoint.ToString(), ")")
                                      : at_.endpoint.ToString();
      if (role == Role::kBindingHost) where += StrCat(" through binding ", at_.binding);
    }
    host_full = true;
  }
  if (queued_) {
    d.next = Next::kWait;  // the FleetClient wakes the session: a release, or the re-check
    return d;
  }
  if (!may_wait && !res.unavailable.empty()) {
    // Not the fleet's count: Redis away (this worker's share taken) or warming up.
    d.reason = StrCat("451 4.4.3 cluster limits unavailable: ", res.unavailable);
    return d;
  }
  if (!may_wait) {
    d.defer_reason = domain_full ? DeferReason::kDomainLimit : DeferReason::kHostsAtLimit;
    d.reason = StrCat("451 4.4.5 cluster-wide limit reached on ",
                      domain_full ? StrCat("domain ", domain,
                                           at_.binding.empty() ? std::string()
                                                               : StrCat(" through binding ", at_.binding))
                                  : where);
    return d;
  }
  // Another host of the domain may have room fleet-wide (the selector's rotation moves on),
  // and so may another binding of a group, for the domain too (its limit is per binding);
  // after a few, or when the default binding's domain is full, join the queue.
  const bool bound = !at_.binding.empty();
  if ((host_full && !domain_full) || (domain_full && bound)) full_hosts_.push_back(at_);
  if ((domain_full && !bound) || full_hosts_.size() >= kHostTries) queue_ = true;
  d.next = Next::kRetry;
  return d;
}

}  // namespace mxsched::io
