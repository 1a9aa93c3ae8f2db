#include "mxsched/scheduler/throttle.h"

#include <algorithm>
#include <map>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/base/clock.h"
#include "mxsched/scheduler/config_options.h"
#include "mxsched/scheduler/selector.h"
#include "tests/testutil.h"

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
    // The value quoted as every other option's is (DESIGN §4 rule 2): " 20" and "20 / 5"
    // showed unquoted, their spaces invisible.
    EXPECT_NE(std::string(s.status().message()).find(StrCat("; got \"", bad, "\"")),
              std::string::npos)
        << s.status();
  }
  for (const char* bad : {"20 / 5", "1e30", "9223372036854775808", "99999999999999999999/1",
                          "1/99999999999999999999", "20/0s", "1/1000000h", "\xef\xbc\x92\xef\xbc\x90"}) {
    EXPECT_FALSE(ParseThrottleSpec(bad).ok()) << bad;
  }
  // The extremes that load keep a sane spacing: 1000000/1 is 1.05 us apart (never 0),
  // 1/86400 is 88128 s (S plus 2%) apart.
  EXPECT_EQ(ParseThrottleSpec("1000000/1")->interval_nanos(), 1050);
  EXPECT_EQ(ParseThrottleSpec("1/86400")->interval_nanos(), int64_t{88128} * 1000000000);
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
    // And no slower than the rate allows: 500 starts in 499 spacings (S/N plus the jitter
    // allowance, rule 1), and the allowance is max(2% of S, 50 ms) over N+1 starts.
    const double span_s = static_cast<double>(starts.back() - starts.front()) / kSec;
    EXPECT_LE(span_s, 499.0 * static_cast<double>(spec.interval_nanos()) / kSec * 1.001)
        << spec.ToString();
    EXPECT_EQ(spec.interval_nanos() * spec.count,
              int64_t{spec.seconds} * kSec + std::max<int64_t>(spec.seconds * kSec / 50, kSec / 20))
        << spec.ToString();
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
  // Counted in the reserving CAS (and taken back when a raced reservation could not undo
  // its instant): exact, across the low bits' wraps.
  EXPECT_EQ(global.allowed(), all.size());
  EXPECT_EQ(domain_a.allowed(), a.size());
  EXPECT_EQ(domain_b.allowed(), b.size());
}

TEST(RateThrottle, AllowedIsExactAcrossTheCountersWrapAndATakeOver) {
  RateThrottle t({1'000'000, 1});
  RateThrottle* ts[] = {&t};
  int64_t now = kSec;
  for (int i = 1; i <= 37; ++i) {
    ASSERT_TRUE(ReserveAll(ts, now, 0).ok);
    EXPECT_EQ(t.allowed(), static_cast<uint64_t>(i));
    now += 2'000;
  }
  const int64_t next = t.next_free();
  EXPECT_EQ(next, now - 2'000 + Interval(1'000'000, 1));
  RateThrottle reloaded({1'000'000, 1});
  reloaded.TakeOver(t);
  EXPECT_EQ(reloaded.allowed(), 37u);
  EXPECT_EQ(reloaded.next_free(), next);
  RateThrottle* rs[] = {&reloaded};
  for (int i = 38; i <= 50; ++i, now += 2'000) ASSERT_TRUE(ReserveAll(rs, now, 0).ok);
  EXPECT_EQ(reloaded.allowed(), 50u);
}


// --- The throttles in the configuration and the selector (DESIGN §12 rules 3-6) ------------

using testing::SelectorFixture;

AcquireResult AcquireWaiting(SelectorFixture& f, std::string_view domain, int64_t wait,
                             std::string_view binding = "") {
  return f.selector.Acquire(domain, AcquireOptions{.binding = binding, .throttle_wait_nanos = wait});
}

TEST(ThrottleConfig, EveryScopeParsesAndListsBackTheSame) {
  constexpr char kText[] = R"(
    outbound_throttle_connections = "20"
    outbound_throttle_messages = "100/60"
    Domain "a.test" { outbound_throttle_connections = "5/2" }
    Host "192.0.2.1" { outbound_throttle_connections = "3" }
    Binding_Group "pool" {
      outbound_throttle_connections = "7"
      Binding "b1" { bind_address = "127.0.0.1"
        Domain "a.test" { outbound_throttle_messages = "9/10" }
        Host "192.0.2.2" { max_outbound_connections = 2 outbound_throttle_connections = "1/5" } }
    }
    Binding "b2" { outbound_throttle_connections = "4" }
  )";
  absl::StatusOr<Config> c = ParseConfig(kText, "t.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outbound_throttle_connections, (ThrottleSpec{20, 1}));
  EXPECT_EQ(c->outbound_throttle_messages, (ThrottleSpec{100, 60}));
  EXPECT_EQ(c->ForDomain("a.test").throttles.connections, (ThrottleSpec{5, 2}));
  EXPECT_FALSE(c->ForDomain("b.test").throttles.any()) << "the global rate is not per domain";
  EXPECT_EQ(c->ForHost("192.0.2.1")->throttles.connections, (ThrottleSpec{3, 1}));
  const BindingSpec* b1 = c->FindBinding("b1");
  ASSERT_NE(b1, nullptr);
  EXPECT_EQ(b1->throttles.connections, (ThrottleSpec{7, 1})) << "the group's, per binding";
  EXPECT_EQ(b1->domain_throttles.at("a.test").messages, (ThrottleSpec{9, 10}));
  EXPECT_EQ(b1->host_throttles.at("192.0.2.2").connections, (ThrottleSpec{1, 5}));
  EXPECT_EQ(b1->host_limits.at("192.0.2.2"), 2);
  EXPECT_EQ(c->FindBinding("b2")->throttles.connections, (ThrottleSpec{4, 1}));
  // What `mxsched check` lists parses back to the same throttles.
  const std::string listed = ListConfig(*c, ConfigListing::kNonDefault);
  absl::StatusOr<Config> again = ParseConfig(listed, "listed");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << listed;
  EXPECT_EQ(ListConfig(*again, ConfigListing::kNonDefault), listed);
  ThrottleSet set(*c, nullptr);
  EXPECT_EQ(set.all().size(), 8u);
}

TEST(ThrottleConfig, BadValuesNameTheFileLineAndTheExpectedForm) {
  for (const char* text : {R"(outbound_throttle_connections = "0")",
                           R"(Domain "a.test" { outbound_throttle_messages = "5/x" })",
                           R"(outbound_throttle_connections = "-3")",
                           R"(outbound_throttle_connections = "20/0")"}) {
    absl::StatusOr<Config> c = ParseConfig(text, "t.conf");
    ASSERT_FALSE(c.ok()) << text;
    const std::string m(c.status().message());
    EXPECT_NE(m.find("t.conf:1:"), std::string::npos) << m;
    EXPECT_NE(m.find("\"N/S\""), std::string::npos) << m;
  }
  absl::StatusOr<Config> c =
      ParseConfig("Host \"*.example\" { outbound_throttle_connections = \"5\" }", "p.conf");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("not supported in a Host pattern"),
            std::string::npos)
      << c.status();
}

TEST(Throttles, WithoutWaitingAThrottledStartDefersNamingTheThrottle) {
  SelectorFixture f(R"(
    routes = ( "127.0.2.1" )
    Domain "a.test" { outbound_throttle_connections = "2" }
  )");
  Lease a = f.MustAcquire("a.test");
  EXPECT_EQ(a.start_at(), 0) << "the first start goes at once";
  a.Release();
  AcquireResult r = f.selector.Acquire("a.test");
  ASSERT_FALSE(r.ok()) << "2 per second: the next start is 0.51 s away";
  EXPECT_EQ(r.deferral().reason, DeferReason::kRateLimited);
  EXPECT_EQ(r.deferral().ToString(), "451 4.4.5 connection rate limit for a.test: 2/1 s");
  EXPECT_TRUE(f.selector.Acquire("b.test").ok()) << "another domain has no throttle";
  f.clock.Advance(ThrottleSpec{2, 1}.interval_nanos());
  EXPECT_TRUE(f.selector.Acquire("a.test").ok()) << "at the instant the throttle allows";
}

TEST(Throttles, AWaitingStartIsGrantedItsInstantAndHoldsTheSlot) {
  SelectorFixture f(R"(
    routes = ( "127.0.2.1" )
    Host "127.0.2.1" { max_outbound_connections = 2 }
    outbound_throttle_connections = "4/2"
  )");
  const int64_t t0 = f.clock.NowNanos();
  const int64_t step = ThrottleSpec{4, 2}.interval_nanos();
  Lease a = AcquireWaiting(f, "a.test", kSec).TakeLease();
  AcquireResult b = AcquireWaiting(f, "b.test", kSec);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a.start_at(), 0);
  EXPECT_EQ(b.lease().start_at(), t0 + step) << "the global throttle spans domains";
  AcquireResult c = AcquireWaiting(f, "a.test", kSec);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.deferral().reason, DeferReason::kHostsAtLimit)
      << "the slot is held while the start waits: the host limit counts it";
  a.Release();
  AcquireResult d = AcquireWaiting(f, "a.test", step);  // would start at t0 + 2*step
  ASSERT_FALSE(d.ok()) << "beyond the caller's wait";
  EXPECT_EQ(d.deferral().ToString(), "451 4.4.5 connection rate limit for global: 4/2 s");
  AcquireResult e = AcquireWaiting(f, "a.test", 2 * step);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.lease().start_at(), t0 + 2 * step) << "FIFO: after b's instant";
}

TEST(Throttles, TheTighterOfDomainAndHostWinsAndANoneTakesNothing) {
  SelectorFixture f(R"(
    routes = ( "127.0.2.1" )
    Domain "a.test" { outbound_throttle_connections = "10" }
    Host "127.0.2.1" { outbound_throttle_connections = "1/4" }
  )");
  Lease a = f.MustAcquire("a.test");
  a.Release();
  AcquireResult r = AcquireWaiting(f, "a.test", kSec);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().ToString(), "451 4.4.5 connection rate limit for host 127.0.2.1: 1/4 s");
  // The domain's throttle was not taken by the refused start (all or none): after the
  // host's interval, a start goes at once.
  f.clock.Advance(ThrottleSpec{1, 4}.interval_nanos());
  Lease b = f.MustAcquire("a.test");
  EXPECT_EQ(b.start_at(), 0);
}

TEST(Throttles, AThrottledTierDoesNotSpillButAThrottledHostLeavesTheTiersOthers) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.2.1?pref=1" "smtp://127.0.2.2?pref=1" "smtp://127.0.2.3?pref=2" )
    Host "127.0.2.1" { outbound_throttle_connections = "1/60" }
    Host "127.0.2.2" { outbound_throttle_connections = "1/60" }
  )");
  std::map<std::string, int> used;
  for (int i = 0; i < 2; ++i) {
    AcquireResult r = f.selector.Acquire("a.test");
    ASSERT_TRUE(r.ok()) << i << ": " << r.deferral().ToString();
    ++used[r.lease().endpoint().address.ToString()];
  }
  EXPECT_EQ(used["127.0.2.1"], 1);
  EXPECT_EQ(used["127.0.2.2"], 1) << "a throttled host's turn goes to its tier's other host";
  AcquireResult r = f.selector.Acquire("a.test");
  ASSERT_FALSE(r.ok()) << "both tier-1 hosts throttled: tier 2 is not used instead";
  EXPECT_EQ(r.deferral().reason, DeferReason::kRateLimited);
  // Strict spacing (rule 1): "N/S" never lets N go at once, it spaces them S/N apart.
  SelectorFixture g(R"(
    routes = ( "127.0.2.1" )
    Domain "a.test" { outbound_throttle_connections = "3/60" }
  )");
  EXPECT_TRUE(g.selector.Acquire("a.test").ok());
  EXPECT_FALSE(g.selector.Acquire("a.test").ok());
  g.clock.Advance(ThrottleSpec{3, 60}.interval_nanos());
  EXPECT_TRUE(g.selector.Acquire("a.test").ok());
}

TEST(Throttles, AReloadKeepsTheThrottlesStateAndADroppedThrottleIsGone) {
  constexpr char kThrottled[] = R"(
    routes = ( "127.0.2.1" )
    Domain "a.test" { outbound_throttle_connections = "1/60" }
  )";
  SelectorFixture f(kThrottled);
  f.MustAcquire("a.test").Release();
  f.selector.SetConfig(testing::ConfigFrom(kThrottled));
  EXPECT_FALSE(f.selector.Acquire("a.test").ok()) << "a reload opens no burst";
  f.selector.SetConfig(testing::ConfigFrom(R"(routes = ( "127.0.2.1" ))"));
  EXPECT_TRUE(f.selector.Acquire("a.test").ok());
}

TEST(Throttles, BindingScopesArePerBindingAndSpreadOverAGroup) {
  SelectorFixture f(R"(
    routes = ( "127.0.2.1" )
    Binding_Group "pool" {
      outbound_throttle_connections = "1/60"
      Binding "b1" { bind_address = "127.0.0.1" }
      Binding "b2" { bind_address = "127.0.0.1" }
    }
    Binding "solo" { bind_address = "127.0.0.1"  Domain "a.test" { outbound_throttle_connections = "1/60" } }
  )");
  std::map<std::string, int> by;
  for (int i = 0; i < 2; ++i) {
    AcquireResult r = f.selector.Acquire("a.test", {.binding = "pool"});
    ASSERT_TRUE(r.ok()) << i << ": " << r.deferral().ToString();
    ++by[std::string(r.lease().binding())];
  }
  EXPECT_EQ(by["b1"], 1);
  EXPECT_EQ(by["b2"], 1) << "each binding has the group's rate";
  EXPECT_FALSE(f.selector.Acquire("a.test", {.binding = "pool"}).ok());
  EXPECT_TRUE(f.selector.Acquire("a.test", {.binding = "solo"}).ok());
  AcquireResult r = f.selector.Acquire("a.test", {.binding = "solo"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().ToString(),
            "451 4.4.5 connection rate limit for binding solo to a.test: 1/60 s");
  EXPECT_TRUE(f.selector.Acquire("b.test", {.binding = "solo"}).ok()) << "per domain";
  EXPECT_TRUE(f.selector.Acquire("a.test").ok()) << "the default binding has no throttle";
}

}  // namespace
}  // namespace mxsched
