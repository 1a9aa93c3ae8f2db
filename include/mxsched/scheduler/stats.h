// SelectorStats: process-wide counters of what the Selector answered and how sessions ended,
// kept for observability (the admin library turns them into Prometheus metrics at scrape
// time). Owned by the Selector (Selector::stats()); per-host counters live in HostState.
//
// Nothing here runs on the admitted Acquire or on Release: deferrals are counted on
// Acquire's deferral branch, sessions by the connector when one ends, domain entries where
// they are created and evicted (both under a shard mutex already). Counters are striped
// per thread (a small thread ordinal picks one of kStripes cache-line-aligned stripes), so
// threads deferring or finishing sessions at high rates do not bounce one shared line;
// Collect() sums the stripes.
//
// Thread-safety: every method is safe for concurrent use from any thread. Collect() is a
// relaxed read: each counter is exact, the set of counters is not one atomic snapshot.
#ifndef MXSCHED_SCHEDULER_STATS_H_
#define MXSCHED_SCHEDULER_STATS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace mxsched {

// Number of DeferReason values (selector.h); checked there.
inline constexpr size_t kDeferReasons = 9;
// How a connector session ended (ConnectResult::Kind): connected, deferred, failed.
inline constexpr size_t kSessionResults = 3;
// Slot-wait time buckets (docs/DESIGN.md §1 rule 8 waits), upper bounds in nanoseconds; one more
// above them.
inline constexpr std::array<int64_t, 8> kWaitBoundsNanos = {
    1'000'000,     10'000'000,    100'000'000,    500'000'000,
    1'000'000'000, 5'000'000'000, 30'000'000'000, 120'000'000'000};

// Connection reuse events (docs/DESIGN.md §13), counted by the selector (parked, reused,
// evicted) and the connector (the rest).
enum class ReuseEvent : uint8_t {
  kParked,         // a connection parked after a transaction
  kReused,         // a parked connection handed to a session (no connect)
  kStale,          // a reused connection that failed its RSET: closed, a fresh one opened
  kIdleTimeout,    // closed with QUIT after idle_timeout
  kServerClosed,   // the server closed it, or sent 421, while it was parked
  kEvicted,        // closed with QUIT for a waiter that could not use it
  kMaxDeliveries,  // closed with QUIT after max_deliveries_per_connection messages
  kStopped,        // closed with QUIT when its connector stopped
};
inline constexpr size_t kReuseEvents = 8;
std::string_view ReuseEventName(ReuseEvent e);

class SelectorStats {
 public:
  static constexpr size_t kStripes = 16;

  SelectorStats();
  ~SelectorStats();
  SelectorStats(const SelectorStats&) = delete;
  SelectorStats& operator=(const SelectorStats&) = delete;

  // An Acquire answered "deferred" for `reason` (a DeferReason value).
  void CountDeferral(size_t reason) { Mine().deferrals[reason].fetch_add(1, kRelaxed); }
  // A connector session ended with `result` (a ConnectResult::Kind value); `waited_nanos`
  // is the time it spent waiting for a slot (docs/DESIGN.md §1 rule 8), or -1 if it never waited.
  void CountSession(size_t result, int64_t waited_nanos);
  // A domain entry was created (a domain's first use, or its first use since it was evicted).
  void CountDomainCreated() { Mine().domains_created.fetch_add(1, kRelaxed); }
  // `n` idle domain entries were evicted (docs/DESIGN.md §5 rule 8: Selector::EvictIdle or the
  // sweep a new domain pays for).
  void CountDomainsEvicted(uint64_t n) { Mine().domains_evicted.fetch_add(n, kRelaxed); }

  void CountReuse(ReuseEvent e) { Mine().reuse[static_cast<size_t>(e)].fetch_add(1, kRelaxed); }

  struct Totals {
    std::array<uint64_t, kDeferReasons> deferrals{};
    std::array<uint64_t, kSessionResults> sessions{};
    // Sessions that waited for a slot: non-cumulative buckets (last: above every bound).
    std::array<uint64_t, kWaitBoundsNanos.size() + 1> wait_buckets{};
    int64_t wait_sum_nanos = 0;
    // Domain entries created and evicted since the Selector started: resident entries
    // (Selector::domain_count()) are domains_created - domains_evicted whenever no domain is
    // being created or evicted at the same time.
    uint64_t domains_created = 0, domains_evicted = 0;
    std::array<uint64_t, kReuseEvents> reuse{};  // by ReuseEvent
  };
  Totals Collect() const;

 private:
  static constexpr std::memory_order kRelaxed = std::memory_order_relaxed;
  struct alignas(64) Stripe {
    std::array<std::atomic<uint64_t>, kDeferReasons> deferrals{};
    std::array<std::atomic<uint64_t>, kSessionResults> sessions{};
    std::array<std::atomic<uint64_t>, kWaitBoundsNanos.size() + 1> wait_buckets{};
    std::atomic<int64_t> wait_sum_nanos{0};
    std::atomic<uint64_t> domains_created{0}, domains_evicted{0};
    std::array<std::atomic<uint64_t>, kReuseEvents> reuse{};
  };
  Stripe& Mine();

  std::unique_ptr<Stripe[]> stripes_;
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_STATS_H_
