// Cluster-wide limits: per-host, per-domain, per-binding and provider (MX-name pattern)
// max_outbound_connections shared by every worker process that uses the same Redis and
// cluster_name (DESIGN §7; which keys a connection takes: io/cluster_step.h).
//
//   ClusterLimits  one per process: options, worker id, the process's own count of slots
//                  held per key, the failure mode (normal or degraded) and the counters.
//                  Thread-safe.
//   ClusterClient  one per io_uring Loop (one per Connector): a command connection and a
//                  subscriber connection to Redis (redis_async.h), the leases its
//                  connections hold (refreshed before expiry, re-registered after a Redis
//                  restart), its waiting sessions, and a 100 ms tick for refreshes, the
//                  heartbeat, waiter re-checks and recovery probes. Loop thread only.
//   ClusterLease   the cluster part of a connection's slot; releases on destruction.
//
// Protocol (all keys hash-tagged `{cluster_name}`, so every script call stays in one Redis
// Cluster slot): the workers set {name}:workers has one member per ClusterClient
// ("WORKER.N", score the Redis time of its last heartbeat, negated while the client has not
// re-registered its leases after an outage); per limit key K a ZSET K of leases (member lease id,
// score expiry in ms of the Redis server's clock, TIME inside the scripts), a ZSET K:w of waiters
// (score = when they started waiting: the order slots are handed out in) and K:wx (their expiry).
// Acquire, release and refresh are Lua scripts run by EVALSHA (EVAL when Redis answers NOSCRIPT,
// e.g. after a restart). A release publishes only when K has waiters, to the channel of the
// client owning the longest waiter (CLUSTER_NAME:wake:CLIENT), naming that waiter; idle
// keys cost no pub/sub traffic. Waiters also re-check every recheck_ms (≤ 1 s), so a lost
// wake-up or an expired lease of a dead worker only delays.
//
// Failure modes (cluster_failure_mode), entered on the first Redis error or timeout (logged
// once to stderr and counted):
//   share   each process holds at most its share on every key: floor(limit × its clients /
//           live clients) (at least 1) — with one client (loop) per process, floor(limit /
//           live workers) — from the count last seen in the workers set (every acquire and
//           heartbeat reads it; a process that never saw it assumes the worst). For the
//           first lease_seconds after the switch a process also holds no more on a key than
//           it held at the switch: the others may still hold theirs, which only Redis knew,
//           and this way the fleet's total on a key can only fall until those connections
//           had time to end.
//   closed  nothing new is opened (sessions end deferred).
//   open    the local (per-process) limits only.
// Coming back (share and closed): the first successful probe re-registers this process's
// open connections (Refresh) and starts the rejoin. Until every live worker has
// re-registered too — each client's heartbeat in the workers set is newer than the rejoin's
// start and the set counts at least the workers last seen — or lease_seconds have passed
// (a worker that has not come back by then is dead), acquires go through Redis *and* the
// share above: a Redis that restarted empty knows only the workers that came back, and a
// worker that came back first must not take the slots of one that has not yet. Then the
// mode is normal again (logged once and counted).
#ifndef MXSCHED_IO_CLUSTER_LIMITS_H_
#define MXSCHED_IO_CLUSTER_LIMITS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/base/mutex.h"
#include "mxsched/io/fleet_client.h"
#include "mxsched/io/loop.h"
#include "mxsched/cluster/redis_async.h"
#include "mxsched/scheduler/config.h"

namespace mxsched::io {

enum class ClusterFailureMode : uint8_t { kShare, kClosed, kOpen };
std::string_view ClusterFailureModeName(ClusterFailureMode m);
// Where a process stands with Redis (header comment): normal, degraded (Redis away, the
// failure mode decides locally), rejoining (Redis back, shares kept until the fleet is).
enum class ClusterMode : uint8_t { kNormal, kDegraded, kRejoining };

struct ClusterOptions {
  RedisAddress redis;
  std::string name = "mxsched";
  int lease_seconds = 30;  // a dead worker's slots come back within this
  ClusterFailureMode failure_mode = ClusterFailureMode::kShare;
  // Share mode, before this process has ever reached Redis: per key it may hold this many
  // at once (it knows neither the fleet's size nor what the others hold; DESIGN §7 rule 6).
  int startup_share = 1;
  int timeout_ms = 1000;     // per Redis command
  int recheck_ms = 1000;     // waiters look again at least this often
  int waiter_ttl_ms = 3000;  // a waiter not seen for this long is dropped from the queue
  // Every worker client heartbeats (and re-registers its leases) at least this often.
  int heartbeat_ms = 1000;
  // After the fleet epoch key is found missing (Redis restarted, flushed, or the fleet's
  // first start), grants to a client that cannot vouch for the store wait this long: the
  // survivors re-register by their next heartbeat (DESIGN §7 rule 4b). 0: no warm-up.
  int warmup_ms = 1500;
};

// The options from a parsed Config (cluster_limits, cluster_name, cluster_lease_seconds,
// cluster_failure_mode); nullopt when cluster_limits is unset.
absl::StatusOr<std::optional<ClusterOptions>> ClusterOptionsFromConfig(const Config& config);

// One limit a connection counts against: its Redis key and the configured limit.
class ClusterLimits final : public FleetView {
 public:
  explicit ClusterLimits(ClusterOptions options);
  ClusterLimits(const ClusterLimits&) = delete;
  ClusterLimits& operator=(const ClusterLimits&) = delete;

  const ClusterOptions& options() const { return options_; }
  const std::string& worker_id() const { return worker_id_; }

  // FleetView (fleet_client.h): for the admin endpoint.
  FleetStatus Status() const override;
  int64_t HostCount(const Endpoint& e) const override { return FleetCount(HostKey(e)); }
  int64_t DomainCount(std::string_view domain) const override {
    return FleetCount(DomainKey(domain));
  }
  // The fleet's count on `key` as the last heartbeat read it (-1: none in the last 5 s).
  int64_t FleetCount(const std::string& key) const;
  // From a heartbeat: the fleet's counts on the keys a loop holds or awaits (the cache
  // FleetCount reads; entries not renewed for 5 s are dropped).
  void NoteFleetCounts(const std::vector<std::string>& keys, const std::vector<int64_t>& counts);
  // One answered command's round trip.
  void NoteLatency(int64_t nanos);
  std::string NewClientId();  // "WORKER.N", one per ClusterClient
  std::string HostKey(const Endpoint& e) const;
  std::string DomainKey(std::string_view domain) const;
  std::string ProviderKey(std::string_view pattern) const;
  std::string BindingHostKey(std::string_view binding, const Endpoint& e) const;
  std::string BindingDomainKey(std::string_view binding, std::string_view domain) const;
  // {NAME}:t:c:SCOPE — a connection rate throttle's next free instant (DESIGN §12 rule 10);
  // with `messages`, {NAME}:t:m:SCOPE — a message rate throttle's.
  std::string ThrottleKey(std::string_view scope, bool messages = false) const;
  std::string WorkersKey() const { return tag_ + ":workers"; }
  std::string EpochKey() const { return tag_ + ":epoch"; }
  std::string ChannelPrefix() const { return options_.name + ":wake:"; }

  ClusterMode mode() const { return mode_.load(std::memory_order_acquire); }
  bool degraded() const { return mode() == ClusterMode::kDegraded; }
  bool rejoining() const { return mode() == ClusterMode::kRejoining; }
  // First failure after normal operation (or while rejoining) switches to the failure mode
  // (one log line; counted once per outage).
  void ReportFailure(const absl::Status& why);
  // A refresh succeeded while degraded: this process's leases are in Redis again. Starts the
  // rejoin at `redis_now_ms` (the Redis clock).
  void BeginRejoin(int64_t redis_now_ms);
  // A complete refresh succeeded while rejoining: `clients` live clients in the workers set,
  // the oldest complete heartbeat at `oldest_heartbeat_ms` (Redis clock; 0 when a client
  // has not re-registered yet), Redis's clock at `redis_now_ms`. Normal again (one log
  // line, counted) when the rejoin has lasted warmup_ms by Redis's clock (every live worker,
  // seen or not, has probed and re-registered by then), every client seen before the outage
  // is back and has re-registered since the rejoin began — or the rejoin has lasted
  // lease_seconds (DESIGN §7 rule 4a).
  void MaybeFinishRejoin(int64_t clients, int64_t oldest_heartbeat_ms, int64_t redis_now_ms);
  // Redis answered with fleet epoch `epoch` (`warm_left_ms` of its warm-up to go). Returns
  // true when this process knew another epoch: Redis lost its keys (restart or FLUSHALL)
  // without this process seeing an error — the caller reports it with StoreLost.
  bool NoteEpoch(const std::string& epoch, int64_t warm_left_ms);
  // Redis lost its keys (NoteEpoch): as after an outage, open connections are re-registered
  // (recovery_epoch) and the rejoin's shares hold until the fleet has re-registered too.
  void StoreLost(int64_t redis_now_ms);
  // The epoch this process vouches Redis knows the fleet in ("" if none): known, and either
  // seen past its warm-up or this process's rejoin finished in it.
  std::string Vouch() const;
  // Bumped when the rejoin starts: every client of the process re-registers its leases.
  uint64_t recovery_epoch() const { return recovery_epoch_.load(std::memory_order_acquire); }

  // Degraded or rejoining: may this process open one more connection on every key? Takes
  // the slots if so. The failure mode decides (header comment).
  // With `throttles` (DESIGN §12 rule 10), also one start on each, all or none with the
  // keys: in share mode at this process's share of each rate (the spacing times the
  // divisor of the keys' share); within `throttle_wait_nanos`, else nothing is taken and
  // `*throttled` names the throttle (index) that decided. `*start_in_nanos`: the wait
  // before the start (0: at once).
  bool TryTakeLocal(const std::vector<ClusterKey>& keys,
                    const std::vector<ClusterThrottle>& throttles = {},
                    int64_t throttle_wait_nanos = 0, int64_t* start_in_nanos = nullptr,
                    int32_t* throttled = nullptr);
  // Redis granted a start at `start_nanos` (steady clock) under `throttles`: should this
  // process decide locally next (Redis away), its next start under each is at least its
  // share's spacing after this one — so the fleet's reservations still pending and the
  // shares that follow them do not overlap (DESIGN §12 rule 10).
  void NoteFleetStart(const std::vector<ClusterThrottle>& throttles, int64_t start_nanos);
  // Redis granted: count the slots here too (unless TryTakeLocal already took them).
  void AddHeld(const std::vector<ClusterKey>& keys);
  void RemoveHeld(const std::vector<ClusterKey>& keys);
  int64_t Held(const std::string& key) const;
  // From each heartbeat: distinct worker processes and their clients (one per loop).
  void SetLive(int64_t workers, int64_t clients) {
    live_workers_.store(workers, std::memory_order_relaxed);
    live_clients_.store(clients, std::memory_order_relaxed);
  }
  int64_t live_workers() const { return live_workers_.load(std::memory_order_relaxed); }
  // From each acquire: the clients in the workers set (the divisor of the share).
  void NoteClients(int64_t clients) { live_clients_.store(clients, std::memory_order_relaxed); }
  // A worker ClusterClient of this process starts (+1) or ends (-1).
  void AddClient(int delta) { my_clients_.fetch_add(delta, std::memory_order_relaxed); }

  struct Stats {
    std::atomic<int64_t> leases{0};         // slots taken (through Redis or locally)
    std::atomic<int64_t> local_leases{0};   // ... of which decided locally (degraded)
    std::atomic<int64_t> waits{0};          // times a session waited at a cluster limit
    std::atomic<int64_t> wait_nanos{0};     // total time spent waiting
    std::atomic<int64_t> wakeups{0};        // waits ended by a release's publish
    std::atomic<int64_t> refreshes{0};      // refresh calls (each renews all of a client's)
    std::atomic<int64_t> reregistered{0};   // leases Redis had lost, added back by refresh
    std::atomic<int64_t> redis_errors{0};   // failed or timed-out Redis calls
    std::atomic<int64_t> noscript{0};       // NOSCRIPT answers (script cache lost)
    std::atomic<int64_t> mode_switches{0};  // normal -> degraded and back
    std::atomic<int64_t> commands{0};       // commands sent to Redis
    std::atomic<int64_t> batched{0};        // acquires and releases sent in a batch of 2+
    std::atomic<int64_t> handoffs{0};       // slots handed to the next session, no Redis call
    std::atomic<int64_t> store_resets{0};   // Redis found without its keys (new epoch)
    std::atomic<int64_t> warmup_refusals{0};  // grants refused during a warm-up
    std::atomic<int64_t> discoveries{0};      // masters found through Sentinel
    std::atomic<int64_t> throttle_waits{0};   // starts granted at a later instant (rate)
    std::atomic<int64_t> throttled{0};        // asks refused by a rate throttle
    // Asks of throttles alone: a start retimed after its process was held up past its
    // instant, a start with no limited key, a reused connection's message (its message
    // throttles, DESIGN §12 rule 10) or a new connection's first message re-timed.
    std::atomic<int64_t> throttle_asks{0};
    std::array<std::atomic<uint64_t>, kFleetLatencyBoundsNanos.size() + 1> latency{};
    std::atomic<int64_t> latency_sum_nanos{0};
  };
  Stats& stats() { return stats_; }
  const Stats& stats() const { return stats_; }

 private:
  struct KeyHolding {
    int64_t here = 0;
    int64_t at_switch = 0;  // `here` when the process last switched away from normal
  };
  ClusterOptions options_;
  std::string tag_;  // "{name}"
  std::string worker_id_;
  std::atomic<int> next_client_{0};
  std::atomic<ClusterMode> mode_{ClusterMode::kNormal};
  std::atomic<uint64_t> recovery_epoch_{0};
  std::atomic<int64_t> live_workers_{0};
  std::atomic<int64_t> live_clients_{0};
  std::atomic<int64_t> my_clients_{0};
  mutable Mutex mu_;
  // This process's share of a throttle's rate as a multiple of its spacing: W = `all` live
  // clients / its own (at most N, the floor of one start per window).
  double ShareSpacing(const ClusterThrottle& t, int64_t all) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  int64_t degraded_since_ ABSL_GUARDED_BY(mu_) = 0;   // steady nanos of the switch
  int64_t share_clients_ ABSL_GUARDED_BY(mu_) = 0;    // live clients at the switch
  int64_t rejoin_since_ms_ ABSL_GUARDED_BY(mu_) = 0;  // Redis clock
  int64_t rejoin_deadline_ ABSL_GUARDED_BY(mu_) = 0;  // steady nanos
  absl::flat_hash_map<std::string, KeyHolding> held_ ABSL_GUARDED_BY(mu_);
  // Throttle key -> the next instant (steady nanos) this process may start under it while
  // deciding locally (share mode, or rejoining): its share of the rate.
  absl::flat_hash_map<std::string, int64_t> local_next_ ABSL_GUARDED_BY(mu_);
  std::string epoch_ ABSL_GUARDED_BY(mu_);  // the fleet epoch last seen
  bool knows_fleet_ ABSL_GUARDED_BY(mu_) = false;  // may vouch for epoch_ (Vouch)
  bool reached_ ABSL_GUARDED_BY(mu_) = false;      // Redis answered a script at least once
  mutable Mutex counts_mu_;
  // key -> {fleet-wide count, steady nanos read}
  absl::flat_hash_map<std::string, std::pair<int64_t, int64_t>> fleet_counts_
      ABSL_GUARDED_BY(counts_mu_);
  Stats stats_;
};

// The FleetClient (fleet_client.h) over Redis: one per Loop, on a process's ClusterLimits.
class ClusterClient final : public FleetClient {
 public:

  // `worker` false: an observer (`mxsched route`) that only reads counts — no heartbeat
  // (it is not counted as a live worker), no wake-up channel, no leases.
  ClusterClient(Loop* loop, std::shared_ptr<ClusterLimits> limits, bool worker = true);
  // Sends what is still owed to Redis (releases) and waits for it, bounded by timeout_ms.
  // REQUIRES: no acquire in flight, no waiter registered, every ClusterLease released.
  ~ClusterClient();
  ClusterClient(const ClusterClient&) = delete;
  ClusterClient& operator=(const ClusterClient&) = delete;

  // A fresh id for one session (lease and waiter id).
  std::string NewId() override;
  // Takes a slot on every key, or none. `done` runs on the loop thread, possibly before
  // Acquire returns (degraded mode, Redis in reconnect backoff). With a `waiter`, kFull
  // also queues it (in Redis, keeping its place across calls with the same id) and it is
  // woken once — by a release, or at the re-check. REQUIRES: `waiter` stays valid until
  // woken or Unwait/Forget.
  using FleetClient::Acquire;
  void Acquire(const std::string& id, std::vector<ClusterKey> keys,
               std::vector<ClusterThrottle> throttles, int64_t throttle_wait_nanos,
               ClusterWaiter* waiter, Done done) override;
  // Stops waking `id` (it keeps its place in Redis for a last try).
  void Unwait(const std::string& id) override;
  // `id` is done: drops its places in every queue it joined (here and in Redis).
  void Forget(const std::string& id) override;
  std::string HostKey(const Endpoint& e) const override { return limits_->HostKey(e); }
  std::string DomainKey(std::string_view domain) const override {
    return limits_->DomainKey(domain);
  }
  std::string ProviderKey(std::string_view pattern) const override {
    return limits_->ProviderKey(pattern);
  }
  std::string BindingHostKey(std::string_view binding, const Endpoint& e) const override {
    return limits_->BindingHostKey(binding, e);
  }
  std::string BindingDomainKey(std::string_view binding, std::string_view domain) const override {
    return limits_->BindingDomainKey(binding, domain);
  }
  std::string ThrottleKey(std::string_view scope) const override {
    return limits_->ThrottleKey(scope);
  }
  std::string MessageThrottleKey(std::string_view scope) const override {
    return limits_->ThrottleKey(scope, /*messages=*/true);
  }

  ClusterLimits& limits() { return *limits_; }
  // For tests: would a lease on `keys` pass to the next session now (DESIGN §7 rule 10)?
  bool MayHandOffForTest(const std::vector<ClusterKey>& keys) const { return MayHandOff(keys); }
  size_t leases() const { return leases_.size(); }
  size_t waiting() const { return waiting_.size(); }
  // The wake-up channel is subscribed (until then a waiter is found by its re-check only).
  bool subscribed() const { return sub_.subscribed(); }
  // Cluster-wide count on `key` (ZCOUNT of live leases); for `route` and tests.
  void CountKey(const std::string& key, std::function<void(absl::StatusOr<int64_t>)> done);

 private:
  struct LeaseRec {
    std::string id;
    std::vector<ClusterKey> keys;
  };
  struct WaitRec {
    ClusterWaiter* waiter = nullptr;  // null: not to be woken (Unwait), places kept
    std::vector<ClusterKey> queued;   // keys whose Redis queue holds this id
    int64_t since = 0;  // first found full (0: not waiting); the order of local wake-ups
    int64_t recheck_at = 0;
    bool local = false;  // degraded-mode wait (no Redis queue)
    // A release's publish came while the waiter's own re-ask was out (waiter null): if that
    // ask comes back full, the wake-up is delivered then, not lost until the re-check.
    bool missed = false;
  };
  struct Script;

  void ReleaseLease(uint64_t handle) override;
  // FleetClient::Move: the "move" op of the batch script (DESIGN §7, §13 rule 3).
  void MoveLease(uint64_t handle, const std::string& from, ClusterKey to,
                 MoveDone done) override;
  // FleetClient::Parked: the "park" op of the batch script (this client joins KEY:r of each
  // key, so a waiter queueing there tells it, DESIGN §13 rule 7).
  void ParkedLease(uint64_t handle) override;
  bool LeaseHolds(uint64_t handle, std::string_view key) const override;
 public:
  void OnTakeBack(TakeBackFn fn) override { take_back_ = std::move(fn); }
 private:
  void Eval(const Script& s, std::vector<std::string> keys, std::vector<std::string> args,
            RedisConnection::ReplyFn fn);
  // A fleet ask's rate part (DESIGN §12 rule 10): the throttles and the caller's wait.
  struct RateAsk {
    std::vector<ClusterThrottle> throttles;
    int64_t wait_nanos = 0;
    int64_t local_start_in = 0;  // rejoining: the wait the local share already reserved
  };
  void Decide(const std::string& id, std::vector<ClusterKey> keys, RateAsk rate,
              ClusterWaiter* waiter, bool reserved, Done done);
  // An acquire or release, sent with the others asked for in the same loop iteration as
  // one call of the batch script (DESIGN §7, "Batching").
  void Batched(size_t script, std::vector<std::string> keys, std::vector<std::string> args,
               RedisConnection::ReplyFn fn, std::vector<std::string> handoff_keys = {});
  void Flush();
  void OnFlush(int res, uint32_t flags);
  // Hand-off (DESIGN §7 rule 10): may a lease on `keys` pass to this client's next session?
  bool MayHandOff(const std::vector<ClusterKey>& keys) const;
  // A "!NOW_US KEY" message: a waiter queued on KEY; stop handing off there.
  void OnRevoke(std::string_view payload);
  // Releases idle leases: every one (`all`), those idle for kIdleMs or that may no longer be
  // handed off, or (with `sharing`) those on any of those keys.
  void ReleaseIdle(bool all, const std::vector<ClusterKey>* sharing = nullptr);
  void DropLease(uint64_t handle);  // forgets the lease here and releases it in Redis
  // Full without asking Redis (degraded, or over the share while rejoining).
  void LocalFull(const std::string& id, std::vector<ClusterKey> keys, ClusterWaiter* waiter,
                 Done done);
  void DecideLocally(const std::string& id, std::vector<ClusterKey> keys, RateAsk rate,
                     ClusterWaiter* waiter, Done done);
  void Wake(const std::string& id, bool by_publish);
  // The Redis clock mapped onto the steady clock (DESIGN §12 rule 10), from the answers'
  // clock readings: NoteClock with each, ToSteady an instant (µs of Redis's clock).
  void NoteClock(int64_t recv_steady_nanos, int64_t redis_us);
  int64_t ToSteady(int64_t redis_us) const;
  void EndWait(WaitRec& w);
  void SendRelease(const std::string& id, const std::vector<ClusterKey>& keys);
  void Refresh();
  void OnFailure(const absl::Status& s);
  void ArmTick();
  void OnTick(int res, uint32_t flags);

  Loop* loop_;
  std::shared_ptr<ClusterLimits> limits_;
  std::string client_id_;
  uint64_t next_id_ = 0;
  uint64_t next_handle_ = 1;
  RedisConnection cmd_;
  RedisConnection sub_;
  absl::flat_hash_map<uint64_t, LeaseRec> leases_;
  absl::flat_hash_map<std::string, WaitRec> waiting_;
  std::vector<std::string> shas_;
  std::vector<LeaseRec> owed_;  // releases Redis has not seen yet (it was away)
  int64_t next_refresh_ = 0;
  int64_t next_probe_ = 0;
  uint64_t seen_epoch_ = 0;
  int64_t clock_cur_ = INT64_MAX;  // NoteClock: the least sample this bucket, the last
  int64_t clock_prev_ = INT64_MAX;
  int64_t clock_bucket_start_ = 0;
  int64_t discoveries_seen_ = 0;  // cmd_.discoveries() counted into the stats
  bool worker_ = true;
  bool refresh_in_flight_ = false;
  struct BatchOp {
    size_t script;
    std::vector<std::string> keys;
    std::vector<std::string> args;
    RedisConnection::ReplyFn fn;
    std::vector<std::string> handoff_keys;  // an acquire's K:r sets (DESIGN §7 rule 10)
  };
  std::vector<BatchOp> batch_;  // asked for this loop iteration, not sent yet
  // Hand-off (DESIGN §7 rule 10). A right to hand off on a key: granted by Redis at
  // `granted_us` (its clock), noted here at `noted`, while the wake-up channel had seen
  // `sub_failures` failures (a failure since: a revocation may have been missed).
  struct Right {
    int64_t granted_us = 0;
    int64_t noted = 0;
    int64_t sub_failures = 0;
  };
  absl::flat_hash_map<std::string, Right> rights_;
  // The latest revocation per key: {Redis µs, local nanos noted} (kept 5 s: a reply granting
  // a right before it may arrive after it).
  absl::flat_hash_map<std::string, std::pair<int64_t, int64_t>> revoked_;
  // Keys whose `K:r` set holds this client (ParkedLease): until when (local nanos, half the
  // set's lease time) and under which recovery epoch. A park on such a key sends nothing; a
  // take-back there (which empties the set), a Redis restart or flush, or the time ends it.
  struct ParkedOn {
    int64_t until;
    uint64_t epoch;
  };
  absl::flat_hash_map<std::string, ParkedOn> parked_on_;
  struct Idle {
    uint64_t handle;
    int64_t since;
  };
  // Released leases kept for the next session on the same keys, by the keys' signature.
  absl::flat_hash_map<std::string, std::vector<Idle>> idle_;
  TakeBackFn take_back_;  // FleetClient::OnTakeBack
  bool flush_armed_ = false;
  bool tick_armed_ = false;
  bool destroying_ = false;
  __kernel_timespec tick_ts_{};
  MemberCompletion<ClusterClient, &ClusterClient::OnTick> tick_done_{this};
  MemberCompletion<ClusterClient, &ClusterClient::OnFlush> flush_done_{this};
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_CLUSTER_LIMITS_H_
