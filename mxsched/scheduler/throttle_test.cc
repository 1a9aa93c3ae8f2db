#include "mxsched/scheduler/throttle.h"

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/clock.h"

namespace mxsched {
namespace {

constexpr int64_t kSec = kNanosPerSecond;
constexpr int64_t kForever = INT64_MAX / 4;

int64_t Interval(uint32_t n, uint32_t s) { return ThrottleSpec{n, s}.interval_nanos(); }

// At most n of the sorted instants in any half-open window of `window` nanos.
int MaxInAnyWindow(std::vector<int64_t> at, int64_t window) {
  std::sort(at.begin(), at.end());
  int best = 0;
  for (size_t i = 0, j = 0; i < at.size(); ++i) {
    while (at[i] - at[j] >= window) ++j;
    best = std::max(best, static_cast<int>(i - j + 1));
  }
  return best;
}

TEST(ThrottleSpec, ParsesMomentumsFormsAndRejectsTheRestSayingWhatItExpects) {
  EXPECT_EQ(*ParseThrottleSpec("20"), (ThrottleSpec{20, 1}));
  EXPECT_EQ(*ParseThrottleSpec("100/60"), (ThrottleSpec{100, 60}));
  EXPECT_EQ(ParseThrottleSpec("40/2")->ToString(), "40/2 s");
  for (const char* bad : {"", "0", "20/0", "x", "20/", "/5", "1/2/3", "-1", "99999999999",
                          "2000000", "1/100000", " 20", "20 "}) {
    auto s = ParseThrottleSpec(bad);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_NE(std::string(s.status().message()).find("expects \"N\""), std::string::npos)
        << s.status();
  }
}

TEST(RateThrottle, NeverMoreThanNInAnyWindowWhateverTheArrivals) {
  std::mt19937_64 rng(7);
  for (const ThrottleSpec spec : {ThrottleSpec{20, 1}, ThrottleSpec{40, 2}, ThrottleSpec{3, 60}}) {
    RateThrottle t(spec);
    RateThrottle* ts[] = {&t};
    std::vector<int64_t> starts;
    int64_t now = kSec;
    for (int i = 0; i < 500; ++i) {
      // Bursts and gaps: many arrivals at one instant, then a pause.
      if (rng() % 4 == 0) now += static_cast<int64_t>(rng() % (3 * spec.seconds * kSec / spec.count + 1));
      ThrottleReservation r = ReserveAll(ts, now, kForever);
      ASSERT_TRUE(r.ok);
      ASSERT_GE(r.at, now);
      if (!starts.empty()) {
        ASSERT_GT(r.at, starts.back()) << "reservations are served in order";
      }
      starts.push_back(r.at);
    }
    EXPECT_LE(MaxInAnyWindow(starts, int64_t{spec.seconds} * kSec), static_cast<int>(spec.count))
        << spec.ToString();
    // And no slower than the rate allows (2% spacing margin): 500 starts in about 500/N·S.
    const double span_s = static_cast<double>(starts.back() - starts.front()) / kSec;
    EXPECT_LE(span_s, 499.0 * spec.seconds / spec.count * 1.03) << spec.ToString();
  }
}

TEST(RateThrottle, WithoutWaitingAFullThrottleReservesNothingAndSaysWhen) {
  RateThrottle t({2, 1});
  RateThrottle* ts[] = {&t};
  ASSERT_TRUE(ReserveAll(ts, kSec, 0).ok);
  ThrottleReservation r = ReserveAll(ts, kSec, 0);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.at, kSec + Interval(2, 1)) << "the instant it frees";
  EXPECT_EQ(t.next_free(), r.at) << "a refusal takes nothing";
  EXPECT_TRUE(ReserveAll(ts, r.at, 0).ok) << "free at exactly that instant";
}

TEST(RateThrottle, AllOrNone) {
  RateThrottle wide({10, 1}), tight({2, 1});
  RateThrottle* both[] = {&wide, &tight};
  RateThrottle* wide_only[] = {&wide};
  ASSERT_TRUE(ReserveAll(both, kSec, 0).ok);
  const int64_t wide_next = wide.next_free();
  ThrottleReservation r = ReserveAll(both, kSec, 0);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.blocking, 1u) << "the tight throttle decided";
  EXPECT_EQ(wide.next_free(), wide_next) << "the wide throttle gave nothing to a refused start";
  // Waiting: one instant for both, the later one's.
  r = ReserveAll(both, kSec, kForever);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.at, kSec + Interval(2, 1));
  EXPECT_EQ(wide.next_free(), r.at + Interval(10, 1));
  // The wide one alone is still bounded by what the joint start took.
  EXPECT_EQ(ReserveAll(wide_only, kSec, kForever).at, r.at + Interval(10, 1));
}

// Threads racing on shared throttles (run under TSan by tools/dev.sh): every throttle's
// reserved instants are spaced by its interval, so none ever passes its rate.
TEST(RateThrottle, ConcurrentReservationsNeverOverlap) {
  RateThrottle global({50, 1}), domain_a({20, 1}), domain_b({20, 1});
  std::atomic<int64_t> clock{kSec};
  constexpr int kThreads = 4, kPerThread = 400;
  std::vector<std::vector<std::pair<int, int64_t>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t now = clock.fetch_add(1'000'000);  // 1 ms per call, shared
        const int which = (th + i) % 2;
        RateThrottle* ts[] = {&global, which == 0 ? &domain_a : &domain_b};
        ThrottleReservation r = ReserveAll(ts, now, 200'000'000);
        if (r.ok) got[th].emplace_back(which, r.at);
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<int64_t> all, a, b;
  for (const auto& v : got) {
    for (auto [which, at] : v) {
      all.push_back(at);
      (which == 0 ? a : b).push_back(at);
    }
  }
  ASSERT_GT(all.size(), 50u);  // 1.6 s of shared clock at 50/s, plus the 200 ms of waiting allowed
  EXPECT_LE(MaxInAnyWindow(all, kSec), 50);
  EXPECT_LE(MaxInAnyWindow(a, kSec), 20);
  EXPECT_LE(MaxInAnyWindow(b, kSec), 20);
}

}  // namespace
}  // namespace mxsched
