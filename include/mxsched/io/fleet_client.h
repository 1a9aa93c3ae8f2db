// FleetClient: what a Connector asks of fleet-wide limits (docs/DESIGN.md §7) — a slot on
// a set of keys shared by every worker, a wait for one, its release — and the handles it
// hands out. The io component declares it so that the connector does not depend on Redis;
// the cluster component (mxsched::cluster, mxsched/cluster/cluster.h) implements it over
// Redis. An embedder builds one per Loop with cluster::NewFleetClient.
//
// Thread-safety: a FleetClient and its ClusterLeases are used on their Loop's thread only.
#ifndef MXSCHED_IO_FLEET_CLIENT_H_
#define MXSCHED_IO_FLEET_CLIENT_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/endpoint.h"

namespace mxsched::io {

class FleetClient;

// One fleet-wide limit: its key and how many slots the fleet may hold on it.
struct ClusterKey {
  std::string key;
  int32_t limit;
};

// A rate throttle taken fleet-wide (docs/DESIGN.md §12 rule 10), of connections or of
// messages: its key and the spacing of starts under it.
struct ClusterThrottle {
  std::string key;          // FleetClient::ThrottleKey(scope)
  int64_t interval_us = 0;  // S/N + 2% (ThrottleSpec::interval_nanos), microseconds
  int32_t count = 1;        // N (a worker that never reached Redis: its startup share of it)
};

// The fleet part of a held slot. Move-only; releases on destruction.
// REQUIRES: used on its client's loop thread; the client outlives it.
class ClusterLease {
 public:
  ClusterLease() = default;
  ClusterLease(ClusterLease&& o) noexcept { *this = std::move(o); }
  ClusterLease& operator=(ClusterLease&& o) noexcept;
  ~ClusterLease() { Release(); }
  bool valid() const { return client_ != nullptr; }
  // Gives the slots back (after the socket is closed). Idempotent.
  void Release();

 private:
  friend class FleetClient;
  ClusterLease(FleetClient* c, uint64_t h) : client_(c), handle_(h) {}
  FleetClient* client_ = nullptr;
  uint64_t handle_ = 0;
};

// A session waiting at a fleet limit. ClusterWake() runs once on the loop thread.
class ClusterWaiter {
 public:
  virtual ~ClusterWaiter() = default;
  virtual void ClusterWake() = 0;
};

class FleetClient {
 public:
  // kThrottled: the keys had room but a throttle's next instant is beyond the caller's
  // throttle wait; nothing was taken.
  enum class Verdict : uint8_t { kGranted, kFull, kClosed, kThrottled };
  struct Result {
    Result(Verdict v, ClusterLease l) : verdict(v), lease(std::move(l)) {}
    Verdict verdict;
    ClusterLease lease;      // kGranted
    uint32_t full_mask = 0;  // kFull: bit i set when keys[i] was full
    // kFull for a reason other than the fleet's count: "" when the keys were full; else why
    // (the store unreachable and this worker's share taken, the store warming up).
    // Sessions deferred for it say "451 4.4.3 cluster limits unavailable: " + unavailable.
    std::string unavailable;
    // Rate throttles (DESIGN §12 rule 10). kGranted: the instant reserved on every throttle
    // is this long after the answer (0: at once) — connect no earlier. kThrottled: how long
    // the caller would have had to wait, and which throttle (index into the ask's) decided.
    int64_t start_in_nanos = 0;
    int32_t throttle = -1;
  };
  using Done = std::function<void(Result)>;

  virtual ~FleetClient() = default;

  // A fresh id for one session (lease and waiter id).
  virtual std::string NewId() = 0;
  // Takes a slot on every key, or none. `done` runs on the loop thread, possibly before
  // Acquire returns. With a `waiter`, kFull also queues it (keeping its place across calls
  // with the same id) and it is woken once — by a release, or at the re-check.
  // REQUIRES: `waiter` stays valid until woken or Unwait/Forget.
  void Acquire(const std::string& id, std::vector<ClusterKey> keys, ClusterWaiter* waiter,
               Done done) {
    Acquire(id, std::move(keys), {}, 0, waiter, std::move(done));
  }
  // The same, also taking one start on every throttle of `throttles`, in the same call and
  // all or none with the keys (DESIGN §12 rule 10): granted, the start is reserved at the
  // earliest instant every throttle allows (Result::start_in_nanos); when that is more than
  // `throttle_wait_nanos` away, nothing is taken (kThrottled).
  virtual void Acquire(const std::string& id, std::vector<ClusterKey> keys,
                       std::vector<ClusterThrottle> throttles, int64_t throttle_wait_nanos,
                       ClusterWaiter* waiter, Done done) = 0;
  // Stops waking `id` (it keeps its place for a last try).
  virtual void Unwait(const std::string& id) = 0;
  // `id` is done: drops its places in every queue it joined.
  virtual void Forget(const std::string& id) = 0;
  // The keys of the limits (docs/DESIGN.md §7, key layout): the totals — a host's over
  // every binding, a domain's through the default binding, a provider pattern's (§6) — and
  // the per-binding ones (§1 rule 13): a domain's and a host's through a named binding.
  virtual std::string HostKey(const Endpoint& e) const = 0;
  virtual std::string DomainKey(std::string_view domain) const = 0;
  virtual std::string ProviderKey(std::string_view pattern) const = 0;
  virtual std::string BindingHostKey(std::string_view binding, const Endpoint& e) const = 0;
  virtual std::string BindingDomainKey(std::string_view binding,
                                       std::string_view domain) const = 0;
  // The key of a connection rate throttle of scope `scope` (ThrottleRef::scope).
  virtual std::string ThrottleKey(std::string_view scope) const = 0;
  // The key of a message rate throttle of scope `scope` (outbound_throttle_messages; DESIGN
  // §12 rule 10): beside the connection throttle's, spaced by the same rule.
  virtual std::string MessageThrottleKey(std::string_view scope) const = 0;
  // A parked connection reused for another domain (docs/DESIGN.md §13 rule 3): `lease` stops
  // counting on key `from` and counts on `to` instead, atomically and only if `to` has room
  // (as an acquire that does not wait: live leases plus waiters below its limit). `from`
  // not among the lease's keys: nothing to give back; `to.key` empty: nothing to take.
  // `done(true)`: moved (re-registration after a Redis restart, rule 4, now names `to`);
  // `done(false)`: `to` is full, nothing changed. Runs on the loop thread, possibly before
  // Move returns. An invalid `lease` moves nothing (done(true)).
  using MoveDone = std::function<void(bool)>;
  void Move(ClusterLease& lease, const std::string& from, ClusterKey to, MoveDone done) {
    if (!lease.valid()) return done(true);
    MoveLease(lease.handle_, from, std::move(to), std::move(done));
  }
  // A parked connection holds `lease` (docs/DESIGN.md §13 rule 7): a session of another
  // worker that queues at the fleet on one of its keys is to take its slot back. Registers
  // this client to be told (the take-back publish of §7 rule 10), in the next batch.
  void Parked(const ClusterLease& lease) {
    if (lease.valid()) ParkedLease(lease.handle_);
  }
  // Does `lease` count on fleet key `key`?
  bool Holds(const ClusterLease& lease, std::string_view key) const {
    return lease.valid() && LeaseHolds(lease.handle_, key);
  }
  // `fn(key)` runs on the loop thread when a session somewhere in the fleet queued on `key`
  // while this client was registered there (Parked, or a hand-off right): the owner closes
  // its oldest idle parked connection holding `key`. One handler per client (the last set).
  using TakeBackFn = std::function<void(std::string_view key)>;
  virtual void OnTakeBack(TakeBackFn /*fn*/) {}

 protected:
  // A lease on `handle` (implementations number their leases), released through
  // ReleaseLease.
  ClusterLease MakeLease(uint64_t handle) { return ClusterLease(this, handle); }
  virtual void ReleaseLease(uint64_t handle) = 0;
  virtual void ParkedLease(uint64_t /*handle*/) {}
  virtual bool LeaseHolds(uint64_t /*handle*/, std::string_view /*key*/) const { return false; }
  // Move (above). The default: no move supported — `to` is refused.
  virtual void MoveLease(uint64_t /*handle*/, const std::string& /*from*/, ClusterKey to,
                         MoveDone done) {
    done(to.key.empty());
  }

 private:
  friend class ClusterLease;
};

// Round-trip buckets of FleetStatus::latency (upper bounds, nanoseconds; one more: +Inf).
inline constexpr std::array<int64_t, 12> kFleetLatencyBoundsNanos = {
    100'000,    250'000,    500'000,     1'000'000,   2'500'000,   5'000'000,
    10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 1'000'000'000};

// What an operator sees of the fleet (docs/DESIGN.md §7, §8): read by the admin endpoint at
// scrape time, from any thread — atomics and a short lock, never a Redis call.
struct FleetStatus {
  // "normal"; "rejoining" (Redis back, shares kept until the fleet is); or, while Redis is
  // away, the failure mode in force: "share", "closed", "open".
  std::string mode;
  int64_t live_workers = 0;   // worker processes in the workers set, last heartbeat
  int64_t commands = 0;       // commands sent to Redis
  int64_t errors = 0;         // failed or timed-out commands
  int64_t mode_switches = 0;  // away from normal and back
  int64_t store_resets = 0;   // Redis found without its keys (restart, flush)
  int64_t leases = 0;         // slots taken
  int64_t local_leases = 0;   // ... of which decided locally (Redis away or rejoining)
  int64_t waits = 0;          // sessions that waited at a fleet limit
  int64_t wakeups = 0;        // waits ended by a release's publish
  int64_t discoveries = 0;    // masters found through Sentinel (redis-sentinel://)
  // Fleet rate throttles (docs/DESIGN.md §12 rule 10): starts granted at a later instant,
  // and asks refused because a throttle's instant was beyond the session's wait.
  int64_t throttle_waits = 0;
  int64_t throttled = 0;
  // Round trips of answered commands (non-cumulative, kFleetLatencyBoundsNanos).
  std::array<uint64_t, kFleetLatencyBoundsNanos.size() + 1> latency_buckets{};
  int64_t latency_sum_nanos = 0;
};

class FleetView {
 public:
  virtual ~FleetView() = default;
  virtual FleetStatus Status() const = 0;
  // Fleet-wide leases on a host's (domain's) key as the last heartbeat read them — at most a
  // few seconds old; -1 when not known (no loop of this process holds or awaits a slot there).
  virtual int64_t HostCount(const Endpoint& e) const = 0;
  virtual int64_t DomainCount(std::string_view domain) const = 0;
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_FLEET_CLIENT_H_
