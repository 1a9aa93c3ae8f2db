// ClusterStep: one connector session's fleet-wide step (docs/DESIGN.md §7). After the
// selector's slot and before the socket, the session takes its host's and its domain's slots
// across every worker through the FleetClient; this class builds the ask, sends it, and turns
// the verdict into what the session does next. It keeps what the step remembers over one
// session's attempts: the session's fleet id, the hosts the fleet had full, and whether the
// next ask joins the fleet's queue.
//
// The session keeps the rest (connector.cc): its phase (kClusterAcquire while an ask is out,
// kWaitingCluster while queued), the count of verdicts still to come, the slot-wait timer
// that bounds a fleet wait, and the slot and fleet leases.
//
// Thread-safety: the session's — its loop's thread. Internal: not installed.
#ifndef MXSCHED_IO_CLUSTER_STEP_H_
#define MXSCHED_IO_CLUSTER_STEP_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/endpoint.h"
#include "mxsched/io/fleet_client.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::io {

class ClusterStep {
 public:
  // What the session does with a verdict.
  enum class Next : uint8_t {
    kOpen,   // granted: `lease` holds the fleet's slots; connect (after `start_in_nanos`)
    kWait,   // queued at the fleet: wait for the wake-up (`woken`) or the slot-wait timer
    kRetry,  // full here while another host may have room: Acquire again
    kDefer,  // end the session deferred, for `defer_reason` and `reason`
  };
  struct Decision {
    Next next = Next::kDefer;
    ClusterLease lease;  // kOpen
    // kOpen: the fleet's rate throttles reserved the start this long from now (DESIGN §12
    // rule 10): wait, holding both slots, then connect. 0: at once.
    int64_t start_in_nanos = 0;
    DeferReason defer_reason = DeferReason::kTempFailure;
    std::string reason;  // kDefer: "451 4.4.x ..."
  };

  // `fleet` may be null: no cluster client (enabled() is false, nothing else may be called).
  // `woken` runs on the loop thread when a queued ask is woken (ClusterWaiter::ClusterWake).
  ClusterStep(FleetClient* fleet, std::function<void()> woken)
      : fleet_(fleet), waiter_(std::move(woken)) {}
  ClusterStep(const ClusterStep&) = delete;
  ClusterStep& operator=(const ClusterStep&) = delete;

  bool enabled() const { return fleet_ != nullptr; }

  // Plans the ask for the slot `lease` holds, one key per limit that applies (DESIGN §7,
  // key layout): the host's configured limit over every binding (the fleet's; a lower
  // adaptive one is this process's own view, already applied by the selector); through a
  // named binding, its Binding::Host limit and the domain's limit through it (else
  // `domain_limit`, the default binding's); the provider pattern's limit (§6). With
  // `throttles` (the rate throttles a new connection takes, Selector::StartThrottles: its
  // connection and its first message's), one start on each fleet-wide too, all reserved at
  // one instant (§12 rule 10). Returns false when nothing is limited: nothing to ask.
  bool Plan(const Lease& lease, std::string_view domain, int32_t domain_limit,
            const std::vector<ThrottleRef>& throttles = {});

  // Plans an ask of `throttles` alone (no lease key): a reused connection's message
  // throttles (Selector::StartThrottles(lease, false); DESIGN §12 rule 10). Send it with
  // AskThrottles. Returns false when there are none.
  bool PlanThrottles(const std::vector<ThrottleRef>& throttles);
  // Whether the planned ask holds a message throttle (outbound_throttle_messages).
  bool has_message_throttles() const {
    return std::find(throttle_messages_.begin(), throttle_messages_.end(), true) !=
           throttle_messages_.end();
  }

  // Sends the planned ask. With `may_wait`, it joins the fleet's queue when this session
  // has met full hosts enough (or a full domain) or asks for a host it already found full.
  // The throttles may put the start up to `throttle_wait_nanos` ahead (else kThrottled).
  // `done` runs once, on the loop thread, possibly before Ask returns.
  void Ask(bool may_wait, int64_t throttle_wait_nanos, FleetClient::Done done);

  // Asks the planned throttles alone again (the fleet slots already held): a new instant for
  // a start whose instant passed while the process was held up (DESIGN §12 rule 10). Judge
  // the verdict as an Ask's (kOpen: `start_in_nanos`; its lease holds nothing). With
  // `messages_only`, the message throttles alone: a message whose reserved instant passed
  // before it could go (a new connection's handshake took longer), or a reused one's.
  void AskThrottles(int64_t throttle_wait_nanos, FleetClient::Done done,
                    bool messages_only = false);
  // How late a fleet throttle's start may go before it takes a new instant instead: half the
  // jitter allowance of the shortest window S among the planned throttles (the message
  // throttles' alone with `messages_only`; INT64_MAX when there are none).
  int64_t LateStartLimitNanos(bool messages_only = false) const;

  // What to do with the verdict on the last Ask. `may_wait` is as of now: the session's
  // slot wait may have run out while the ask was out. `domain` names it in a reason.
  Decision Judge(FleetClient::Result res, bool may_wait, std::string_view domain);

  // A parked connection reused for `to_domain` that `from_domain` parked (Lease::moving_from,
  // DESIGN §13 rule 3): moves the fleet's domain count of `cluster_lease` — the old domain's
  // key (d:, or bd:BINDING: through a named binding) to the new one's, `to_limit` its limit
  // (kUnlimited: the new domain takes no key) — in one op of the next batch. A connection
  // that held no fleet lease (nothing limited when it opened) takes one on the new key, not
  // waiting. `done(true)`: moved, or nothing to move; false: the new key is full, nothing
  // changed. Runs on the loop thread, possibly before Move returns.
  void Move(ClusterLease& cluster_lease, const Lease& lease, std::string_view from_domain,
            std::string_view to_domain, int32_t to_limit, FleetClient::MoveDone done);

  // The binding the last Ask queued through ("" when it did not queue, or went through the
  // default binding): a woken session asks through it first.
  std::string_view queued_binding() const {
    return queued_ ? std::string_view(at_.binding) : std::string_view();
  }

  // Leaves the queue the last Ask joined (the fleet keeps the place for a last try).
  void Unwait() { fleet_->Unwait(id_); }
  // At the session's end: leaves every queue joined. Nothing if it never asked.
  void Forget() {
    if (!id_.empty()) fleet_->Forget(id_);
  }

 private:
  struct Waiter : ClusterWaiter {
    explicit Waiter(std::function<void()> f) : woken(std::move(f)) {}
    void ClusterWake() override { woken(); }
    std::function<void()> woken;
  };
  static constexpr size_t kHostTries = 3;  // full hosts met before joining the queue
  // What each key of an ask limits (keys_ and roles_ run in parallel; bit i of a verdict's
  // full_mask is keys_[i]).
  enum class Role : uint8_t { kHost, kBindingHost, kProvider, kDomain };
  // Where a "full" was met: a host, through a binding ("" for the default binding).
  struct FullAt {
    Endpoint endpoint;
    std::string binding;
    bool operator==(const FullAt&) const = default;
  };

  FleetClient* const fleet_;
  Waiter waiter_;
  std::string id_;                  // the session's fleet id (leases and waits)
  std::vector<FullAt> full_hosts_;  // (host, binding)s the fleet had full, this session
  bool queue_ = false;              // the next ask joins the queue (waits) if full
  // The planned (then last sent) ask.
  std::vector<ClusterKey> keys_;
  std::vector<Role> roles_;
  FullAt at_;                   // the host and binding of the planned ask
  std::string provider_;        // its provider pattern, if any
  std::vector<ClusterThrottle> throttles_;  // its fleet throttles (DESIGN §12 rule 10)
  std::vector<std::string> throttle_reasons_;  // "connection rate limit for SCOPE: N/S s"
  std::vector<bool> throttle_messages_;        // a message throttle (else a connection one)
  std::vector<std::string> asked_reasons_;     // the last ask's throttles' reasons (Judge)
  bool queued_ = false;         // the last ask joined the queue
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_CLUSTER_STEP_H_
