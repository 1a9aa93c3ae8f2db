// Time and randomness, injected so that every scheduling rule (failure windows, TTLs,
// equal-preference shuffles) can be tested deterministically without sleeping.
//
// Thread-safety: implementations must be safe for concurrent use by multiple threads;
// the selector calls them from whichever thread runs Acquire/Report.
#ifndef MXSCHED_BASE_CLOCK_H_
#define MXSCHED_BASE_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace mxsched {

inline constexpr int64_t kNanosPerSecond = 1'000'000'000;

// std::chrono::steady_clock in nanoseconds (the precise monotonic clock, for deadlines and
// latencies; the selector's Clock is coarse and injectable).
int64_t SteadyNowNanos();

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds. Only differences are meaningful. The scheduler needs second
  // granularity (TTLs, host_failure_retry), so a coarse clock is acceptable.
  virtual int64_t NowNanos() = 0;
};

// CLOCK_MONOTONIC_COARSE: ~1-4 ms resolution, a few ns per read (no vDSO rdtsc math).
class MonotonicCoarseClock final : public Clock {
 public:
  int64_t NowNanos() override;
  static MonotonicCoarseClock* Default();
};

// A clock the test moves by hand.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_nanos = kNanosPerSecond) : now_(start_nanos) {}
  int64_t NowNanos() override { return now_.load(std::memory_order_acquire); }
  void Advance(int64_t nanos) { now_.fetch_add(nanos, std::memory_order_acq_rel); }
  void AdvanceSeconds(int64_t s) { Advance(s * kNanosPerSecond); }

 private:
  std::atomic<int64_t> now_;
};

class Random {
 public:
  virtual ~Random() = default;
  virtual uint64_t Next() = 0;
  // Uniform in [0, n). REQUIRES: n > 0.
  uint64_t Uniform(uint64_t n) { return static_cast<uint64_t>((__uint128_t{Next()} * n) >> 64); }
};

// splitmix64 behind an atomic counter: fast, thread-safe, seedable. Not cryptographic:
// it only decides equal-preference order, which RFC 5321 requires to be random, not secret.
class SplitMixRandom final : public Random {
 public:
  explicit SplitMixRandom(uint64_t seed) : state_(seed) {}
  uint64_t Next() override;
  static SplitMixRandom* Default();  // seeded from the kernel once per process

 private:
  std::atomic<uint64_t> state_;
};

}  // namespace mxsched

#endif  // MXSCHED_BASE_CLOCK_H_
