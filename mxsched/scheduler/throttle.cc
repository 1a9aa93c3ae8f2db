#include "mxsched/scheduler/throttle.h"

#include <algorithm>
#include <charconv>

#include "absl/status/status.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"

namespace mxsched {

namespace {
constexpr uint32_t kMaxCount = 1'000'000;
constexpr uint32_t kMaxSeconds = 86'400;

bool ParseUint(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 10) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}
}  // namespace

int64_t ThrottleSpec::interval_nanos() const {
  const int64_t base = int64_t{seconds} * kNanosPerSecond / std::max<uint32_t>(count, 1);
  return std::max<int64_t>(1, base + base / 50);
}

std::string ThrottleSpec::ToString() const { return StrCat(count, "/", seconds, " s"); }

absl::StatusOr<ThrottleSpec> ParseThrottleSpec(std::string_view text) {
  ThrottleSpec spec;
  const size_t slash = text.find('/');
  const std::string_view n = text.substr(0, slash);
  const bool ok = ParseUint(n, &spec.count) &&
                  (slash == std::string_view::npos || ParseUint(text.substr(slash + 1), &spec.seconds));
  if (!ok || spec.count < 1 || spec.count > kMaxCount || spec.seconds < 1 ||
      spec.seconds > kMaxSeconds) {
    return absl::InvalidArgumentError(
        StrCat("expects \"N\" (at most N per second) or \"N/S\" (at most N in any S seconds), "
               "N 1..", kMaxCount, ", S 1..", kMaxSeconds, "; got ", EchoForError(text)));
  }
  return spec;
}

ThrottleReservation ReserveAll(std::span<RateThrottle* const> throttles, int64_t now,
                               int64_t max_wait_nanos) {
  int64_t seen[kMaxThrottlesPerStart];
  throttles = throttles.first(std::min(throttles.size(), kMaxThrottlesPerStart));
  for (;;) {
    // The instant: the latest of the throttles' next free instants, and now.
    ThrottleReservation r{false, now, 0};
    for (size_t i = 0; i < throttles.size(); ++i) {
      const int64_t v = throttles[i]->next_.load(std::memory_order_acquire);
      seen[i] = v;
      if (v > r.at) {
        r.at = v;
        r.blocking = i;
      }
    }
    if (r.at - now > max_wait_nanos) return r;
    // Take it on each, in order; a throttle that moved meanwhile (another reservation)
    // undoes the ones taken and the whole reservation starts again.
    size_t taken = 0;
    bool raced = false;
    for (; taken < throttles.size(); ++taken) {
      RateThrottle* t = throttles[taken];
      int64_t expected = seen[taken];
      if (expected > r.at ||
          !t->next_.compare_exchange_strong(expected, r.at + t->interval_,
                                            std::memory_order_acq_rel)) {
        raced = true;
        break;
      }
    }
    if (!raced) {
      r.ok = true;
      return r;
    }
    // Give back what was taken: exact if nobody reserved after us, else (a later instant
    // was reserved on top) the slot stays used — conservative, never over the rate.
    for (size_t i = 0; i < taken; ++i) {
      RateThrottle* t = throttles[i];
      int64_t mine = r.at + t->interval_;
      t->next_.compare_exchange_strong(mine, seen[i], std::memory_order_acq_rel);
    }
  }
}

}  // namespace mxsched
