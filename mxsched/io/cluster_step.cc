#include "mxsched/io/cluster_step.h"

#include <algorithm>

#include "mxsched/base/strings.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched::io {

bool ClusterStep::Plan(const Lease& lease, std::string_view domain, int32_t domain_limit) {
  if (id_.empty()) id_ = fleet_->NewId();
  keys_.clear();
  has_host_key_ = false;
  if (const int32_t host_limit = lease.host().configured_limit(); host_limit != kUnlimited) {
    keys_.push_back({fleet_->HostKey(lease.endpoint()), host_limit});
    has_host_key_ = true;
  }
  if (domain_limit != kUnlimited) keys_.push_back({fleet_->DomainKey(domain), domain_limit});
  endpoint_ = lease.endpoint();
  return !keys_.empty();
}

void ClusterStep::Ask(bool may_wait, FleetClient::Done done) {
  const bool seen =
      std::find(full_hosts_.begin(), full_hosts_.end(), endpoint_) != full_hosts_.end();
  queued_ = may_wait && (queue_ || seen);
  // The verdict may come before Acquire returns, and the session (this step's owner) may
  // end in it: nothing of `this` is touched after the call.
  std::vector<ClusterKey> keys = std::exchange(keys_, {});
  fleet_->Acquire(id_, std::move(keys), queued_ ? &waiter_ : nullptr, std::move(done));
}

ClusterStep::Decision ClusterStep::Judge(FleetClient::Result res, bool may_wait,
                                         std::string_view domain) {
  using V = FleetClient::Verdict;
  Decision d;
  if (res.verdict == V::kGranted) {
    d.next = Next::kOpen;
    d.lease = std::move(res.lease);
    return d;
  }
  if (res.verdict == V::kClosed) {
    d.reason =
        "451 4.4.3 cluster limits unavailable: Redis unreachable, cluster_failure_mode = closed";
    return d;
  }
  const bool host_full = has_host_key_ && (res.full_mask & 1);
  const bool domain_full = res.full_mask & (has_host_key_ ? 2u : 1u);
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
                      domain_full ? StrCat("domain ", domain) : endpoint_.ToString());
    return d;
  }
  // Another host of the domain may have room fleet-wide (the selector's rotation moves on);
  // after a few, or when the domain itself is full, join the queue.
  if (host_full && !domain_full) full_hosts_.push_back(endpoint_);
  if (domain_full || full_hosts_.size() >= kHostTries) queue_ = true;
  d.next = Next::kRetry;
  return d;
}

}  // namespace mxsched::io
