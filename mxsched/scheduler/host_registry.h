// HostState: the shared, mutable state of one destination (address, port) — active
// connections, configured and effective (adaptive, docs/DESIGN.md §6) limit, reachability —
// LimitGroup, a provider limit shared by hosts whose MX names match one pattern, and
// HostRegistry, which owns one HostState per destination and one LimitGroup per pattern for
// the life of the registry.
//
// Every domain that routes to the same (address, port) shares its HostState, so a per-host
// limit holds across domains (docs/DESIGN.md §1 rule 5) and a failure seen by one domain protects
// all of them.
//
// Thread-safety: HostState's methods are lock-free and safe from any thread. HostRegistry
// is safe for concurrent use; GetOrCreate takes a mutex and belongs on the slow path
// (route building), never on Acquire/Release. Host states are evicted (EvictIdle) when no
// route refers to them and they hold nothing worth keeping — no connection, no waiter, no
// failure inside its retry window, no limit lowered by busy replies (issue 20: 200,000
// self-hosted domains left 191k states behind). An evicted state is claimed (its active
// count set to a dead mark, so a reader still holding a retired route sees it full) and
// freed through epoch.h: a pointer read from a route, Snapshot() or a Lease stays valid
// while its reader is pinned (EpochGuard) or holds a lease on it (docs/DESIGN.md §5).
#ifndef MXSCHED_SCHEDULER_HOST_REGISTRY_H_
#define MXSCHED_SCHEDULER_HOST_REGISTRY_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/base/mutex.h"

namespace mxsched {

enum class Admission : uint8_t {
  kAdmitted,  // a slot was taken
  kProbe,     // a slot was taken as the single half-open probe of a failed host
  kFull,      // at its (effective) limit, or its provider group is at its limit
  kDown,      // failed and inside host_failure_retry, or its probe is already out
};

// Connect + greeting latency buckets for a host's successful connections (the admin
// library exposes them as a Prometheus histogram). Upper bounds in nanoseconds, ascending;
// one more bucket above the last for everything slower.
inline constexpr std::array<int64_t, 10> kConnectLatencyBoundsNanos = {
    1'000'000,  2'500'000,   5'000'000,   10'000'000,    25'000'000,
    50'000'000, 100'000'000, 250'000'000, 1'000'000'000, 5'000'000'000};
// Per-outcome connection counts kept on each host, indexed by `Outcome` (selector.h).
inline constexpr size_t kOutcomeKinds = 7;
// A limit shared by every host whose MX name matches one `Host "*.pattern" { }` stanza: a
// provider limit (docs/DESIGN.md §6). Lock-free; owned by the HostRegistry, never removed.
class alignas(64) LimitGroup {
 public:
  LimitGroup(std::string pattern, int32_t limit) : limit_(limit), pattern_(std::move(pattern)) {}
  const std::string& pattern() const { return pattern_; }
  // Bounded CAS: `active` never passes the limit.
  bool TryTake() {
    const int32_t limit = limit_.load(std::memory_order_relaxed);
    int32_t active = active_.load(std::memory_order_relaxed);
    do {
      if (active >= limit) return false;
    } while (!active_.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                            std::memory_order_relaxed));
    int32_t p = peak_.load(std::memory_order_relaxed);
    while (active + 1 > p && !peak_.compare_exchange_weak(p, active + 1)) {
    }
    return true;
  }
  void Give() { active_.fetch_sub(1, std::memory_order_acq_rel); }
  bool HasRoom() const { return active() < limit(); }
  int32_t active() const { return active_.load(std::memory_order_acquire); }
  int32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  int32_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void SetLimit(int32_t limit) { limit_.store(limit, std::memory_order_relaxed); }

 private:
  std::atomic<int32_t> active_{0};
  std::atomic<int32_t> limit_;
  std::atomic<int32_t> peak_{0};
  const std::string pattern_;
};

// What the configuration says about one host; applied on every route plan (newest wins).
struct HostConfig {
  int32_t limit = INT32_MAX;    // configured per-address limit
  int64_t retry_nanos = 0;      // host_failure_retry
  LimitGroup* group = nullptr;  // provider limit shared by name pattern, or none
  bool adaptive = true;         // adaptive_concurrency
  int32_t adaptive_floor = 1;   // adaptive_concurrency_floor
};

// Why a host's effective limit last moved (docs/DESIGN.md §6), for `route`, `load` and DomainView.
struct LimitMove {
  enum class Kind : uint8_t { kNone, kLowered, kRaised, kFailedAtOne };
  Kind kind = Kind::kNone;
  int32_t to = 0;                                 // the effective limit after the move
  int64_t at_nanos = 0;                           // when (the selector's clock)
  int reply_code = 0;                             // kLowered/kFailedAtOne: the busy reply
  std::string enhanced;                           // its enhanced status, if any
  uint8_t rule = 0;                               // BusyRule (feedback.h)
  std::string ToString(int64_t now_nanos) const;  // "lowered to 4 by 421 4.7.0, 3 s ago"
};

// Where a slot was taken: released through the same group even if a reload moved the host.
struct AdmitTicket {
  LimitGroup* group = nullptr;
  int32_t level = 0;  // host connections open right after this admission (this one included)
};

class alignas(128) HostState {
 public:
  // `index`: unique within the registry, dense (0, 1, 2... in creation order).
  HostState(Endpoint endpoint, std::string name, const HostConfig& config, uint32_t index = 0);

  const Endpoint& endpoint() const { return endpoint_; }
  // Dense, unique within its registry: lets per-host side tables (SlotWaiters' queues) be
  // arrays instead of hash maps.
  uint32_t index() const { return index_; }
  const std::string& name() const { return name_; }  // first MX/host name seen, or the IP
  // ThrottleSet::Collect's cache of this host's throttles (a set generation and an index).
  std::atomic<uint64_t>& throttle_cache() const { return throttle_cache_; }

  // Takes a slot if the host is reachable, below its effective limit and its provider group
  // (if any) below the group's limit; never lets either count pass its limit, even
  // transiently (bounded CAS, the host first, undone if the group is full).
  Admission TryAdmit(int64_t now_nanos, AdmitTicket* ticket) {
    bool probe = false;
    int64_t failed_until = failed_until_.load(std::memory_order_acquire);
    if (ABSL_PREDICT_FALSE(failed_until != 0)) {
      if (now_nanos < failed_until) return Admission::kDown;
      if (probe_in_flight_.exchange(true, std::memory_order_acq_rel)) return Admission::kDown;
      probe = true;
    }
    const int32_t limit = LimitOf(adapt_.load(std::memory_order_relaxed));
    int32_t active = active_.load(std::memory_order_relaxed);
    do {
      // Unsigned: an evicted host's dead mark (negative) reads as full, at no extra cost.
      if (static_cast<uint32_t>(active) >= static_cast<uint32_t>(limit)) {
        if (probe) probe_in_flight_.store(false, std::memory_order_release);
        return Admission::kFull;
      }
    } while (!active_.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                            std::memory_order_relaxed));
    LimitGroup* group = group_.load(std::memory_order_acquire);
    if (ABSL_PREDICT_FALSE(group != nullptr) && !group->TryTake()) {
      active_.fetch_sub(1, std::memory_order_acq_rel);
      if (probe) probe_in_flight_.store(false, std::memory_order_release);
      return Admission::kFull;
    }
    if (ABSL_PREDICT_FALSE(active + 1 > peak_.load(std::memory_order_relaxed)))
      RaisePeak(active + 1);
    ticket->group = group;
    ticket->level = active + 1;
    return probe ? Admission::kProbe : Admission::kAdmitted;
  }

  // Gives a slot back. `was_probe`: the slot was the half-open probe and no outcome was
  // reported, so another probe may go.
  void Release(bool was_probe, LimitGroup* group) {
    if (ABSL_PREDICT_FALSE(was_probe)) probe_in_flight_.store(false, std::memory_order_release);
    if (group != nullptr) group->Give();
    // seq_cst (the same instruction on x86): the releaser then reads waiting(); a waiter
    // raises waiting and then looks at active (slot_waiters.h).
    active_.fetch_sub(1, std::memory_order_seq_cst);
  }

  // A connection reached a usable 2xx greeting: the host is reachable again, and — if its
  // limit was lowered by busy replies — positive feedback (docs/DESIGN.md §6). `level` is the
  // ticket's. Returns true when the effective limit went up (a waiter may now fit).
  bool RecordSuccess(int32_t level, int64_t now_nanos);
  // Connect failure, timeout or rejecting greeting: mark failed for the retry window.
  void RecordFailure(int64_t now_nanos);
  // A busy reply (feedback.h) on a connection that holds a slot here: negative feedback.
  // Lowers the effective limit to below the connections open now; marks the host failed
  // instead when this was the only connection open (the receiver refuses even one: Postfix's
  // failed cohort) or adaptive concurrency is off. Returns true if the host was marked failed.
  bool RecordBusy(int64_t now_nanos, int reply_code, std::string_view enhanced, uint8_t rule);

  // Would TryAdmit at `now` see the host as reachable (ignoring its limit)?
  bool Reachable(int64_t now_nanos) const {
    int64_t fu = failed_until_.load(std::memory_order_acquire);
    return fu == 0 || (now_nanos >= fu && !probe_in_flight_.load(std::memory_order_acquire));
  }
  // Below its effective limit and its group's.
  bool HasRoom() const {
    const LimitGroup* g = group_.load(std::memory_order_acquire);
    return active() < limit() && (g == nullptr || g->HasRoom());
  }

  int32_t active() const { return active_.load(std::memory_order_acquire); }
  // The effective limit: the configured one, or lower after busy replies.
  int32_t limit() const { return LimitOf(adapt_.load(std::memory_order_relaxed)); }
  int32_t configured_limit() const { return configured_.load(std::memory_order_relaxed); }
  const LimitGroup* group() const { return group_.load(std::memory_order_acquire); }
  LimitMove last_move() const;
  uint64_t busy_replies() const { return busy_replies_.load(std::memory_order_relaxed); }
  int32_t peak() const { return peak_.load(std::memory_order_relaxed); }
  // Slot waiters queued on this host (SlotWaiters): while non-zero, a new Acquire does not
  // take a slot here — a freed slot goes to the oldest waiter (docs/DESIGN.md §5).
  int32_t waiting() const { return waiting_.load(std::memory_order_seq_cst); }
  void AddWaiting(int32_t delta) { waiting_.fetch_add(delta, std::memory_order_seq_cst); }
  uint32_t consecutive_failures() const {
    return consecutive_failures_.load(std::memory_order_relaxed);
  }
  int64_t failed_until() const { return failed_until_.load(std::memory_order_acquire); }
  int64_t last_failure() const { return last_failure_.load(std::memory_order_relaxed); }
  uint64_t successes() const { return successes_.load(std::memory_order_relaxed); }
  uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

  // Reload and re-plan: new configured limit (lowering it below `active` blocks new
  // admissions until enough connections close; open connections are never torn down),
  // retry window, group and adaptive settings. A learned (lowered) limit is kept, clamped
  // to the new configured limit; a host that was at its configured limit follows it.
  void Configure(const HostConfig& config);
  void ResetPeak() { peak_.store(std::max(0, active()), std::memory_order_relaxed); }
  // --- eviction (HostRegistry::EvictIdle) ---------------------------------------------
  // Nothing a new route plan could not rebuild: no connection, no waiter, no failure inside
  // its retry window, no probe out, no learned (lowered) limit.
  bool Idle(int64_t now_nanos) const {
    return active() == 0 && waiting() == 0 && failed_until() <= now_nanos &&
           !probe_in_flight_.load(std::memory_order_acquire) && limit() >= configured_limit();
  }
  // Claims an idle host for eviction: active 0 -> dead mark, so TryAdmit answers kFull.
  bool ClaimDead() {
    int32_t zero = 0;
    return active_.compare_exchange_strong(zero, kDeadMark, std::memory_order_acq_rel);
  }
  static constexpr int32_t kDeadMark = INT32_MIN / 2;
  int64_t last_planned() const { return last_planned_.load(std::memory_order_relaxed); }
  void NotePlanned(int64_t now_nanos) { last_planned_.store(now_nanos, std::memory_order_relaxed); }

  // --- statistics, written once per connection outcome (Lease::Report), read by scrapes --
  // Counts one reported outcome (an `Outcome` value, < kOutcomeKinds).
  void CountOutcome(size_t outcome) { outcomes_[outcome].fetch_add(1, std::memory_order_relaxed); }
  uint64_t outcomes(size_t outcome) const {
    return outcomes_[outcome].load(std::memory_order_relaxed);
  }
  // Records the connect + greeting time of one successful connection.
  void RecordConnectLatency(int64_t nanos);
  // Non-cumulative bucket counts (the last is above every bound) and their sum.
  struct LatencyCounts {
    std::array<uint64_t, kConnectLatencyBoundsNanos.size() + 1> buckets{};
    int64_t sum_nanos = 0;
  };
  LatencyCounts connect_latency() const;

 private:
  // adapt_ packs the adaptive state so one CAS moves it consistently and TryAdmit reads the
  // effective limit with one load: bits 0-31 effective limit, 32-51 successes counted
  // toward the next raise, 52-55 probe backoff exponent, 56 "a raise is being probed".
  static constexpr uint64_t kLimitMask = 0xFFFF'FFFFull;
  static constexpr int kSuccessShift = 32;
  static constexpr uint64_t kSuccessMax = (1u << 20) - 1;
  static constexpr int kBackoffShift = 52;
  static constexpr uint32_t kMaxBackoff = 6;  // a raise needs at most 64 × limit successes
  static constexpr uint64_t kProbingBit = uint64_t{1} << 56;
  static int32_t LimitOf(uint64_t w) { return static_cast<int32_t>(w & kLimitMask); }
  static uint32_t SuccessesOf(uint64_t w) {
    return static_cast<uint32_t>((w >> kSuccessShift) & kSuccessMax);
  }
  static uint32_t BackoffOf(uint64_t w) {
    return static_cast<uint32_t>((w >> kBackoffShift) & 0xF);
  }
  static uint64_t Pack(int32_t limit, uint64_t successes, uint32_t backoff, bool probing) {
    return static_cast<uint32_t>(limit) | std::min(successes, kSuccessMax) << kSuccessShift |
           uint64_t{backoff} << kBackoffShift | (probing ? kProbingBit : 0);
  }
  void RaisePeak(int32_t value);
  void NoteMove(LimitMove::Kind kind, int32_t to, int64_t now, int code, std::string_view enhanced,
                uint8_t rule);

  // Hot: touched by every Acquire/Release of this host.
  std::atomic<int32_t> active_{0};
  std::atomic<uint64_t> adapt_;
  std::atomic<int64_t> failed_until_{0};  // 0 = reachable
  std::atomic<bool> probe_in_flight_{false};
  const uint32_t index_;  // read with waiting_ by a hand-off
  std::atomic<int32_t> peak_{0};
  std::atomic<int32_t> waiting_{0};
  std::atomic<LimitGroup*> group_{nullptr};
  // The Host-scope rate throttles of this host in the current throttle set, found once per
  // set (ThrottleSet::Collect, docs/DESIGN.md §12): read by every start while throttles
  // are configured.
  mutable std::atomic<uint64_t> throttle_cache_{0};
  // Warm: touched on Report.
  std::atomic<int32_t> configured_;
  std::atomic<int32_t> adaptive_floor_{1};
  std::atomic<bool> adaptive_{true};
  std::atomic<uint32_t> consecutive_failures_{0};
  std::atomic<int64_t> retry_nanos_;
  std::atomic<int64_t> last_failure_{0};
  std::atomic<uint64_t> successes_{0};
  std::atomic<uint64_t> failures_{0};
  // Cold: statistics.
  std::array<std::atomic<uint64_t>, kOutcomeKinds> outcomes_{};
  std::array<std::atomic<uint64_t>, kConnectLatencyBoundsNanos.size() + 1> latency_buckets_{};
  std::atomic<int64_t> latency_sum_nanos_{0};
  std::atomic<uint64_t> busy_replies_{0};
  // The last limit move, packed (kind 2 bits, rule 2, code 10, status class 3, subject 10,
  // detail 10, limit after 26 bits saturating) so it is written and read without a lock.
  std::atomic<uint64_t> last_move_{0};
  std::atomic<int64_t> last_move_nanos_{0};
  std::atomic<int64_t> last_planned_{0};  // the last GetOrCreate (a route plan's), selector clock
  const Endpoint endpoint_;
  const std::string name_;
};

class HostRegistry {
 public:
  // Returns the state for `endpoint`, creating it on first use; updates its limit and retry
  // window to the given values (the newest configuration wins).
  HostState* GetOrCreate(const Endpoint& endpoint, std::string_view name, const HostConfig& config,
                         int64_t now_nanos = 0) ABSL_LOCKS_EXCLUDED(mu_);
  // Evicts every host not in `referenced` (the hosts of live routes), Idle at `now`, and not
  // planned within `recent_nanos` (a plan between GetOrCreate and interning its route is
  // not in `referenced` yet): claimed dead, removed, its index reused, freed through
  // epoch.h. Returns how many. REQUIRES: `referenced` covers every route of every Selector
  // that uses this registry.
  size_t EvictIdle(const std::function<bool(const HostState*)>& referenced, int64_t now_nanos,
                   int64_t recent_nanos) ABSL_LOCKS_EXCLUDED(mu_);
  // Host states created and evicted since the registry was made.
  uint64_t created() const { return created_.load(std::memory_order_relaxed); }
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  // The provider group for a `Host "pattern"` stanza, created on first use; its limit is
  // set to `limit` (the newest configuration wins).
  LimitGroup* GetOrCreateGroup(std::string_view pattern, int32_t limit) ABSL_LOCKS_EXCLUDED(mu_);
  void ForEachGroup(const std::function<void(const LimitGroup&)>& fn) const
      ABSL_LOCKS_EXCLUDED(mu_);
  HostState* Find(const Endpoint& endpoint) const ABSL_LOCKS_EXCLUDED(mu_);
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Visits every host (order unspecified) under the registry lock.
  void ForEach(const std::function<void(const HostState&)>& fn) const ABSL_LOCKS_EXCLUDED(mu_);
  // Every host, for readers that should not hold the lock while they look (scrapes): the
  // pointers stay valid while the caller is pinned (epoch::EpochGuard, taken before this).
  std::vector<const HostState*> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<Endpoint, std::unique_ptr<HostState>> hosts_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<LimitGroup>> groups_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_indices_ ABSL_GUARDED_BY(mu_);  // of evicted hosts, for reuse
  uint32_t next_index_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> created_{0}, evicted_{0};
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_HOST_REGISTRY_H_
