#include "mxsched/base/clock.h"

#include <chrono>

#include <sys/random.h>
#include <time.h>

namespace mxsched {

int64_t SteadyNowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t MonotonicCoarseClock::NowNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return int64_t{ts.tv_sec} * kNanosPerSecond + ts.tv_nsec;
}

MonotonicCoarseClock* MonotonicCoarseClock::Default() {
  static MonotonicCoarseClock clock;
  return &clock;
}

uint64_t SplitMixRandom::Next() {
  uint64_t z =
      state_.fetch_add(0x9E3779B97F4A7C15ull, std::memory_order_relaxed) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

SplitMixRandom* SplitMixRandom::Default() {
  static SplitMixRandom* random = [] {
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) {
      seed = static_cast<uint64_t>(MonotonicCoarseClock::Default()->NowNanos());
    }
    return new SplitMixRandom(seed);
  }();
  return random;
}

}  // namespace mxsched
