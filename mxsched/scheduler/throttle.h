// RateThrottle: Momentum's outbound_throttle_connections / outbound_throttle_messages —
// "N" (at most N starts in any second) or "N/S" (at most N in any S seconds) — as the
// receiver counts them (docs/DESIGN.md §12).
//
// Strict spacing: starts go at least S/N apart, plus 2% (a GCRA with no burst tolerance,
// one 64-bit value per throttle: the earliest instant the next start may go). A GCRA with
// a burst of N lets 2N-1 through in some window of S; a sliding log of the last N starts
// releases N at once each window, and the receiver, counting on its own clock with
// delivery jitter, sees the tail of one burst and the head of the next in one window. With
// spacing, N+1 starts span 1.02·S, so a receiver whose accepts jitter by up to 1% of S
// still counts at most N in any window of S.
//
// Reservations, not polling: ReserveAll takes the next start of every throttle that applies
// at one instant t >= now, all or none; the caller starts at t (a timer, never a periodic
// re-check). Reservations are served in the order they are made (FIFO) and never overlap,
// so a waiting caller knows its instant at once.
//
// Thread-safety: lock-free; any thread. Hand-written (no Debian library offers an exact,
// lock-free, multi-key reservation throttle; Abseil has none).
#ifndef MXSCHED_SCHEDULER_THROTTLE_H_
#define MXSCHED_SCHEDULER_THROTTLE_H_

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace mxsched {

struct ThrottleSpec {
  uint32_t count = 0;    // N starts ...
  uint32_t seconds = 1;  // ... in any S seconds
  // The spacing between starts: S/N + 2% (see above), at least 1 ns.
  int64_t interval_nanos() const;
  std::string ToString() const;  // "20/1 s", "100/60 s"
  friend bool operator==(const ThrottleSpec&, const ThrottleSpec&) = default;
};
// "N" or "N/S": N 1..1000000, S 1..86400. Errors say what was expected.
absl::StatusOr<ThrottleSpec> ParseThrottleSpec(std::string_view text);

struct ThrottleReservation;
class RateThrottle;
ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos);

class RateThrottle {
 public:
  explicit RateThrottle(ThrottleSpec spec) : spec_(spec), interval_(spec.interval_nanos()) {}
  const ThrottleSpec& spec() const { return spec_; }
  // The earliest instant (clock nanos) the next start may go: <= now means at once.
  int64_t next_free() const { return next_.load(std::memory_order_acquire); }

 private:
  friend ThrottleReservation ReserveAll(std::span<RateThrottle* const>, int64_t, int64_t);
  ThrottleSpec spec_;
  int64_t interval_;
  std::atomic<int64_t> next_{INT64_MIN};
};

struct ThrottleReservation {
  bool ok = false;
  int64_t at = 0;       // the instant reserved (ok), or the earliest it could have been
  size_t blocking = 0;  // the throttle that decided `at` (for the deferral's reason)
};
// Reserves one start at the same instant t on every throttle of `throttles`: t is the
// earliest instant >= now that every one allows. If t - now > max_wait_nanos nothing is
// reserved (ok false, `at` says when it would have been). An empty span reserves `now`.
// REQUIRES: at most kMaxThrottlesPerStart throttles (one per scope that can apply).
inline constexpr size_t kMaxThrottlesPerStart = 8;
ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_THROTTLE_H_
