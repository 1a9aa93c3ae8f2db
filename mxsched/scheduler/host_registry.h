// HostState: the shared, mutable state of one destination (address, port) — active
// connections, limit, reachability — and HostRegistry, which owns one HostState per
// destination for the life of the registry.
//
// Every domain that routes to the same (address, port) shares its HostState, so a per-host
// limit holds across domains (DESIGN §1 rule 5) and a failure seen by one domain protects
// all of them.
//
// Thread-safety: HostState's methods are lock-free and safe from any thread. HostRegistry
// is safe for concurrent use; GetOrCreate takes a mutex and belongs on the slow path
// (route building), never on Acquire/Release. HostState pointers stay valid as long as the
// registry lives (states are never removed: the number of distinct destinations a process
// talks to is bounded by its routes and DNS answers, and keeping them keeps failure memory).
#ifndef MXSCHED_SCHEDULER_HOST_REGISTRY_H_
#define MXSCHED_SCHEDULER_HOST_REGISTRY_H_

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
#include "mxsched/base/mutex.h"
#include "mxsched/base/endpoint.h"

namespace mxsched {

enum class Admission : uint8_t {
  kAdmitted,  // a slot was taken
  kProbe,     // a slot was taken as the single half-open probe of a failed host
  kFull,      // at its limit
  kDown,      // failed and inside host_failure_retry, or its probe is already out
};

// Connect + greeting latency buckets for a host's successful connections (the admin
// library exposes them as a Prometheus histogram). Upper bounds in nanoseconds, ascending;
// one more bucket above the last for everything slower.
inline constexpr std::array<int64_t, 10> kConnectLatencyBoundsNanos = {
    1'000'000,   2'500'000,   5'000'000,   10'000'000,    25'000'000,
    50'000'000, 100'000'000, 250'000'000, 1'000'000'000, 5'000'000'000};
// Per-outcome connection counts kept on each host, indexed by `Outcome` (selector.h).
inline constexpr size_t kOutcomeKinds = 6;

class alignas(128) HostState {
 public:
  HostState(Endpoint endpoint, std::string name, int32_t limit, int64_t retry_nanos);

  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& name() const { return name_; }  // first MX/host name seen, or the IP

  // Takes a slot if the host is reachable and below its limit; never lets `active` pass the
  // limit, even transiently (bounded CAS).
  Admission TryAdmit(int64_t now_nanos) {
    bool probe = false;
    int64_t failed_until = failed_until_.load(std::memory_order_acquire);
    if (ABSL_PREDICT_FALSE(failed_until != 0)) {
      if (now_nanos < failed_until) return Admission::kDown;
      if (probe_in_flight_.exchange(true, std::memory_order_acq_rel)) return Admission::kDown;
      probe = true;
    }
    int32_t limit = limit_.load(std::memory_order_relaxed);
    int32_t active = active_.load(std::memory_order_relaxed);
    do {
      if (active >= limit) {
        if (probe) probe_in_flight_.store(false, std::memory_order_release);
        return Admission::kFull;
      }
    } while (!active_.compare_exchange_weak(active, active + 1, std::memory_order_acq_rel,
                                            std::memory_order_relaxed));
    if (ABSL_PREDICT_FALSE(active + 1 > peak_.load(std::memory_order_relaxed))) RaisePeak(active + 1);
    return probe ? Admission::kProbe : Admission::kAdmitted;
  }

  // Gives a slot back. `was_probe`: the slot was the half-open probe and no outcome was
  // reported, so another probe may go.
  void Release(bool was_probe) {
    if (ABSL_PREDICT_FALSE(was_probe)) probe_in_flight_.store(false, std::memory_order_release);
    // seq_cst (the same instruction on x86): the releaser then reads waiting(); a waiter
    // raises waiting and then looks at active (slot_waiters.h).
    active_.fetch_sub(1, std::memory_order_seq_cst);
  }

  // A connection reached a usable 220 greeting: the host is reachable again.
  void RecordSuccess();
  // Connect failure, timeout or rejecting greeting: mark failed for the retry window.
  void RecordFailure(int64_t now_nanos);

  // Would TryAdmit at `now` see the host as reachable (ignoring its limit)?
  bool Reachable(int64_t now_nanos) const {
    int64_t fu = failed_until_.load(std::memory_order_acquire);
    return fu == 0 || (now_nanos >= fu && !probe_in_flight_.load(std::memory_order_acquire));
  }

  int32_t active() const { return active_.load(std::memory_order_acquire); }
  int32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  int32_t peak() const { return peak_.load(std::memory_order_relaxed); }
  // Slot waiters queued on this host (SlotWaiters): while non-zero, a new Acquire does not
  // take a slot here — a freed slot goes to the oldest waiter (DESIGN §5).
  int32_t waiting() const { return waiting_.load(std::memory_order_seq_cst); }
  void AddWaiting(int32_t delta) { waiting_.fetch_add(delta, std::memory_order_seq_cst); }
  uint32_t consecutive_failures() const {
    return consecutive_failures_.load(std::memory_order_relaxed);
  }
  int64_t failed_until() const { return failed_until_.load(std::memory_order_acquire); }
  int64_t last_failure() const { return last_failure_.load(std::memory_order_relaxed); }
  uint64_t successes() const { return successes_.load(std::memory_order_relaxed); }
  uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

  // Reload: new limit (lowering it below `active` blocks new admissions until enough
  // connections close; open connections are never torn down) and retry window.
  void Configure(int32_t limit, int64_t retry_nanos) {
    limit_.store(limit, std::memory_order_relaxed);
    retry_nanos_.store(retry_nanos, std::memory_order_relaxed);
  }
  void ResetPeak() { peak_.store(active(), std::memory_order_relaxed); }

  // --- statistics, written once per connection outcome (Lease::Report), read by scrapes --
  // Counts one reported outcome (an `Outcome` value, < kOutcomeKinds).
  void CountOutcome(size_t outcome) {
    outcomes_[outcome].fetch_add(1, std::memory_order_relaxed);
  }
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
  void RaisePeak(int32_t value);

  // Hot: touched by every Acquire/Release of this host.
  std::atomic<int32_t> active_{0};
  std::atomic<int32_t> limit_;
  std::atomic<int64_t> failed_until_{0};  // 0 = reachable
  std::atomic<bool> probe_in_flight_{false};
  std::atomic<int32_t> peak_{0};
  std::atomic<int32_t> waiting_{0};
  // Warm: touched on Report.
  std::atomic<uint32_t> consecutive_failures_{0};
  std::atomic<int64_t> retry_nanos_;
  std::atomic<int64_t> last_failure_{0};
  std::atomic<uint64_t> successes_{0};
  std::atomic<uint64_t> failures_{0};
  // Cold: statistics.
  std::array<std::atomic<uint64_t>, kOutcomeKinds> outcomes_{};
  std::array<std::atomic<uint64_t>, kConnectLatencyBoundsNanos.size() + 1> latency_buckets_{};
  std::atomic<int64_t> latency_sum_nanos_{0};
  const Endpoint endpoint_;
  const std::string name_;
};

class HostRegistry {
 public:
  // Returns the state for `endpoint`, creating it on first use; updates its limit and retry
  // window to the given values (the newest configuration wins).
  HostState* GetOrCreate(const Endpoint& endpoint, std::string_view name, int32_t limit,
                         int64_t retry_nanos) ABSL_LOCKS_EXCLUDED(mu_);
  HostState* Find(const Endpoint& endpoint) const ABSL_LOCKS_EXCLUDED(mu_);
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Visits every host (order unspecified) under the registry lock.
  void ForEach(const std::function<void(const HostState&)>& fn) const ABSL_LOCKS_EXCLUDED(mu_);
  // Every host, for readers that should not hold the lock while they look (scrapes): the
  // pointers stay valid for the registry's life.
  std::vector<const HostState*> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<Endpoint, std::unique_ptr<HostState>> hosts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_HOST_REGISTRY_H_
