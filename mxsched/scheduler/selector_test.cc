// One test (or more) per rule of docs/DESIGN.md §1, named after the rule. Time and randomness are
// injected: no sleeps.
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/selector.h"

#include <deque>
#include <map>
#include <random>
#include <thread>
#include "mxsched/base/mutex.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

#include "gtest/gtest.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::ConfigFrom;
using testing::SelectorFixture;

constexpr char kFourEqual[] = R"(
  routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
             "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
  max_outbound_connections = 100000
)";

// --- Rule 1: strict preference ----------------------------------------------------------

TEST(StrictPreference, LowerTierIsUsedUntilItsHostsAreAtTheirLimit) {
  SelectorFixture f(R"(
    routes = ( "127.0.2.1" "127.0.2.2" )
    Host "127.0.2.1" { max_outbound_connections = 2 }
  )");
  Lease a = f.MustAcquire("example.com");
  Lease b = f.MustAcquire("example.com");
  EXPECT_EQ(a.endpoint().address.ToString(), "127.0.2.1");
  EXPECT_EQ(b.endpoint().address.ToString(), "127.0.2.1");
  Lease c = f.MustAcquire("example.com");
  EXPECT_EQ(c.endpoint().address.ToString(), "127.0.2.2") << "spills only when tier 0 is full";
  a.Release();
  EXPECT_EQ(f.Pick("example.com"), "127.0.2.1") << "returns to tier 0 as soon as a slot frees";
}

TEST(StrictPreference, UnreachableLowerTierSpillsToNextTier) {
  SelectorFixture f(R"(routes = ( "smtp://127.0.2.1?pref=0" "smtp://127.0.2.2?pref=5" ))");
  Lease a = f.MustAcquire("example.com");
  ASSERT_EQ(a.endpoint().address.ToString(), "127.0.2.1");
  a.Report(Outcome::kConnectFailed);
  a.Release();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(f.Pick("example.com"), "127.0.2.2");
}

TEST(StrictPreference, NeverUsesHigherTierWhileAnyLowerHostHasRoom) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.2.1?pref=1" "smtp://127.0.2.2?pref=1" "smtp://127.0.2.3?pref=2" )
    Host "127.0.2.1" { max_outbound_connections = 3 }
    Host "127.0.2.2" { max_outbound_connections = 5 }
  )");
  std::vector<Lease> held;
  for (int i = 0; i < 8; ++i) {
    held.push_back(f.MustAcquire("example.com"));
    EXPECT_NE(held.back().endpoint().address.ToString(), "127.0.2.3") << "acquisition " << i;
  }
  EXPECT_EQ(f.Pick("example.com"), "127.0.2.3");
}

// --- Rule 2: even spreading -------------------------------------------------------------

std::map<std::string, int> Spread(SelectorFixture& f, std::string_view domain, int picks) {
  std::map<std::string, int> count;
  for (int i = 0; i < picks; ++i) ++count[f.Pick(domain)];
  return count;
}

TEST(EvenSpreading, EqualPreferenceHostsShareConnectionsEvenly) {
  SelectorFixture f(kFourEqual);
  const int kPicks = 40000;
  auto count = Spread(f, "example.com", kPicks);
  ASSERT_EQ(count.size(), 4u);
  for (const auto& [host, n] : count) {
    EXPECT_NEAR(n, kPicks / 4, kPicks / 100) << host;  // within 1 percentage point
  }
}

TEST(EvenSpreading, HostAtItsLimitIsSkippedAndTheRestStayEven) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
               "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
    Host "127.0.1.1" { max_outbound_connections = 1 }
  )");
  // Occupy 127.0.1.1's only slot.
  std::vector<Lease> held;
  while (held.empty() || held.back().endpoint().address.ToString() != "127.0.1.1") {
    held.push_back(f.MustAcquire("example.com"));
  }
  Lease full = std::move(held.back());
  held.clear();
  const int kPicks = 30000;
  auto count = Spread(f, "example.com", kPicks);
  EXPECT_EQ(count.count("127.0.1.1"), 0u);
  ASSERT_EQ(count.size(), 3u);
  for (const auto& [host, n] : count) EXPECT_NEAR(n, kPicks / 3, kPicks / 100) << host;
}

TEST(EvenSpreading, NotProportionalToLimits) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10" )
    Host "127.0.1.1" { max_outbound_connections = 1000 }
    Host "127.0.1.2" { max_outbound_connections = 10 }
  )");
  std::vector<Lease> held;
  std::map<std::string, int> count;
  for (int i = 0; i < 20; ++i) {
    held.push_back(f.MustAcquire("example.com"));
    ++count[held.back().endpoint().address.ToString()];
  }
  EXPECT_EQ(count["127.0.1.1"], 10);
  EXPECT_EQ(count["127.0.1.2"], 10);
}

TEST(EvenSpreading, EqualPreferenceOrderIsRandomisedPerDomain) {
  SelectorFixture f(kFourEqual);
  std::map<std::string, int> first_pick;
  const int kDomains = 400;
  for (int d = 0; d < kDomains; ++d) ++first_pick[f.Pick(StrCat("d", d, ".example"))];
  ASSERT_EQ(first_pick.size(), 4u) << "domains sharing hosts all started on the same ones";
  for (const auto& [host, n] : first_pick) {
    EXPECT_GT(n, kDomains / 4 / 2) << host;  // each host is first for a fair share of domains
  }
}

TEST(EvenSpreading, DifferentSeedsGiveDifferentOrders) {
  SelectorFixture a(kFourEqual, 1), b(kFourEqual, 2);
  std::string seq_a, seq_b;
  for (int d = 0; d < 20; ++d) {
    seq_a += a.Pick(StrCat("d", d, ".example"));
    seq_b += b.Pick(StrCat("d", d, ".example"));
  }
  EXPECT_NE(seq_a, seq_b);
}

TEST(EvenSpreading, AFullHostsTurnsGoToEveryOtherHostAcrossDomainsSharingARoute) {
  // Domains share one snapshot (one host order); each walks it from its own start with its
  // own stride. With one host full, the domains whose walk starts on it must spread over
  // the other three, not all go to the host after it in the shared order.
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
               "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
    Host "127.0.1.1" { max_outbound_connections = 1 }
    Domain "holder.example" { routes = ( "127.0.1.1" ) }
  )");
  Lease full = f.MustAcquire("holder.example");
  ASSERT_EQ(full.endpoint().address.ToString(), "127.0.1.1");
  const int kDomains = 6000;
  std::map<std::string, int> first_pick;
  for (int d = 0; d < kDomains; ++d) ++first_pick[f.Pick(StrCat("d", d, ".example"))];
  EXPECT_EQ(first_pick.count("127.0.1.1"), 0u);
  ASSERT_EQ(first_pick.size(), 3u);
  // Even: 2,000 each. Without per-domain strides the host after the full one would get the
  // full one's turns too: 3,000 / 1,500 / 1,500.
  for (const auto& [host, n] : first_pick) EXPECT_NEAR(n, kDomains / 3, kDomains / 20) << host;
  EXPECT_EQ(f.selector.route_count(), 2u) << "6,000 domains, two distinct routes";
}

TEST(Interning, DomainsWithEqualRoutesShareOneSnapshotUntilTheLastIsGone) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10" )
    domain_idle_timeout = 10
    Domain "own.example" { routes = ( "127.0.1.3" ) }
  )");
  for (int d = 0; d < 1000; ++d) f.MustAcquire(StrCat("d", d, ".example"));
  EXPECT_EQ(f.selector.route_count(), 1u);
  f.MustAcquire("own.example");
  EXPECT_EQ(f.selector.route_count(), 2u);
  // Re-planning (a refresh, or a TTL) lands on the same shared snapshot.
  f.selector.RefreshAll();
  for (int d = 0; d < 1000; ++d) f.MustAcquire(StrCat("d", d, ".example"));
  EXPECT_EQ(f.selector.route_count(), 2u);
  // Hold one domain of the shared route; evict the rest: the snapshot stays while it is used.
  Lease kept = f.MustAcquire("d7.example");
  f.clock.AdvanceSeconds(30);
  EXPECT_EQ(f.selector.EvictIdle(), 1000u) << "999 of the route and own.example";
  epoch::Reclaim();
  EXPECT_EQ(f.selector.route_count(), 1u) << "own.example's route went with it";
  ASSERT_EQ(kept.endpoint().address.ToString().substr(0, 8), "127.0.1.");
  kept.Release();
  f.clock.AdvanceSeconds(30);
  EXPECT_EQ(f.selector.EvictIdle(), 1u);
  epoch::Reclaim();
  EXPECT_EQ(f.selector.route_count(), 0u);
  f.MustAcquire("d1.example");  // and it comes back
  EXPECT_EQ(f.selector.route_count(), 1u);
}

// --- Rule 3: limits are never exceeded --------------------------------------------------

TEST(LimitsNeverExceeded, AllHostsAtLimitDefersWithReason) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=1" "smtp://127.0.1.2?pref=1" )
    Host "127.0.1.1" { max_outbound_connections = 1 }
    Host "127.0.1.2" { max_outbound_connections = 1 }
  )");
  Lease a = f.MustAcquire("example.com");
  Lease b = f.MustAcquire("example.com");
  AcquireResult r = f.selector.Acquire("example.com");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kHostsAtLimit);
  EXPECT_NE(r.deferral().ToString().find("connection limit"), std::string::npos);
}

TEST(LimitsNeverExceeded, DomainLimit) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    Domain "small.example" { max_outbound_connections = 3 }
  )");
  std::vector<Lease> held;
  for (int i = 0; i < 3; ++i) held.push_back(f.MustAcquire("small.example"));
  AcquireResult r = f.selector.Acquire("small.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kDomainLimit);
  EXPECT_TRUE(f.selector.Acquire("other.example").ok()) << "domain limit is per domain";
  held.pop_back();
  EXPECT_TRUE(f.selector.Acquire("small.example").ok());
}

TEST(LimitsNeverExceeded, DomainDefaultLimitIs32) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" ))");
  std::vector<Lease> held;
  for (int i = 0; i < 32; ++i) held.push_back(f.MustAcquire("example.com"));
  EXPECT_EQ(f.selector.Acquire("example.com").deferral().reason, DeferReason::kDomainLimit);
}

TEST(LimitsNeverExceeded, ServerLimitIsExactAcrossShards) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    server_max_outbound_connections = 150
  )");
  // Many domains spread over every shard: the per-shard credit must still add up to exactly
  // the server limit, no more, no fewer.
  std::vector<Lease> held;
  int deferred = 0;
  for (int i = 0; i < 400; ++i) {
    AcquireResult r = f.selector.Acquire(StrCat("d", i, ".example"));
    if (r.ok()) {
      held.push_back(r.TakeLease());
    } else {
      EXPECT_EQ(r.deferral().reason, DeferReason::kServerLimit);
      ++deferred;
    }
  }
  EXPECT_EQ(held.size(), 150u);
  EXPECT_EQ(deferred, 250);
  EXPECT_EQ(f.selector.server_active(), 150);
  held.resize(100);
  EXPECT_EQ(f.selector.server_active(), 100);
  for (int i = 0; i < 50; ++i) held.push_back(f.MustAcquire(StrCat("e", i, ".example")));
  EXPECT_FALSE(f.selector.Acquire("last.example").ok());
}

TEST(LimitsNeverExceeded, StressManyThreadsNeverPassAnyLimit) {
  // 4 hosts with small limits shared by 64 domains; threads grab and release leases in
  // random order. After every admission the host's active count is checked against its
  // limit, and the peak the host itself recorded is checked at the end.
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=1" "smtp://127.0.1.2?pref=1"
               "smtp://127.0.1.3?pref=1" "smtp://127.0.1.4?pref=2" )
    Host "127.0.1.1" { max_outbound_connections = 3 }
    Host "127.0.1.2" { max_outbound_connections = 5 }
    Host "127.0.1.3" { max_outbound_connections = 7 }
    Host "127.0.1.4" { max_outbound_connections = 2 }
    max_outbound_connections = 6
    server_max_outbound_connections = 15
  )");
  const int kThreads = std::max(2u, std::thread::hardware_concurrency());
  const int kOpsPerThread = 2'000'000 / kThreads;
  std::atomic<int64_t> violations{0}, admitted{0}, deferred{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<Lease> held;
      for (int i = 0; i < kOpsPerThread; ++i) {
        // Up to 16 held per thread: one thread alone can reach the server limit (15), so
        // the limits are hit even when the threads happen to run one at a time.
        if (!held.empty() && (held.size() >= 16 || rng() % 2)) {
          std::swap(held[rng() % held.size()], held.back());
          held.pop_back();
          continue;
        }
        AcquireResult r = f.selector.Acquire(StrCat("d", rng() % 64, ".example"));
        if (!r.ok()) {
          deferred.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        const HostState& h = r.lease().host();
        if (h.active() > h.limit()) violations.fetch_add(1);
        if (f.selector.server_active() > 15) violations.fetch_add(1);
        admitted.fetch_add(1, std::memory_order_relaxed);
        held.push_back(r.TakeLease());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(admitted.load(), 100000);
  EXPECT_GT(deferred.load(), 0) << "the limits were never reached: the test proves nothing";
  f.selector.registry().ForEach([](const HostState& h) {
    EXPECT_LE(h.peak(), h.limit()) << h.endpoint().ToString();
    EXPECT_EQ(h.active(), 0) << h.endpoint().ToString() << " leaked a slot";
  });
  EXPECT_EQ(f.selector.server_active(), 0);
}

TEST(LimitsNeverExceeded, SlotIsHeldUntilReleaseNotUntilReport) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    Host "127.0.1.1" { max_outbound_connections = 1 }
  )");
  Lease a = f.MustAcquire("example.com");
  a.Report(Outcome::kConnected);
  EXPECT_FALSE(f.selector.Acquire("example.com").ok()) << "slot freed before the socket closed";
  a.Release();
  EXPECT_TRUE(f.selector.Acquire("example.com").ok());
}

TEST(LimitsNeverExceeded, LeaseReleasesOnDestructionAndOnMove) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    Host "127.0.1.1" { max_outbound_connections = 1 }
  )");
  { Lease a = f.MustAcquire("example.com"); }
  Lease b = f.MustAcquire("example.com");
  Lease c = std::move(b);
  EXPECT_FALSE(b.valid());
  EXPECT_FALSE(f.selector.Acquire("x.example").ok()) << "host full";
  c = Lease();  // move-assign releases c's slot
  EXPECT_TRUE(f.selector.Acquire("example.com").ok());
}

// --- Rule 4: reachability ---------------------------------------------------------------

TEST(Reachability, FailedHostIsSkippedForHostFailureRetryThenOneProbe) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=1" "smtp://127.0.1.2?pref=1" )
    host_failure_retry = 120
  )");
  // Find and fail 127.0.1.1.
  for (;;) {
    Lease l = f.MustAcquire("example.com");
    if (l.endpoint().address.ToString() == "127.0.1.1") {
      l.Report(Outcome::kTimedOut);
      break;
    }
  }
  for (int i = 0; i < 20; ++i) EXPECT_EQ(f.Pick("example.com"), "127.0.1.2");
  f.clock.AdvanceSeconds(119);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(f.Pick("example.com"), "127.0.1.2");
  f.clock.AdvanceSeconds(1);
  // Half-open: exactly one probe gets through while it is outstanding.
  std::vector<Lease> held;
  int probes = 0;
  for (int i = 0; i < 20; ++i) {
    held.push_back(f.MustAcquire("example.com"));
    if (held.back().endpoint().address.ToString() == "127.0.1.1") {
      ++probes;
      EXPECT_TRUE(held.back().is_probe());
    }
  }
  EXPECT_EQ(probes, 1);
  for (Lease& l : held) {
    if (l.is_probe()) l.Report(Outcome::kConnected);
  }
  held.clear();
  auto count = Spread(f, "example.com", 1000);
  EXPECT_EQ(count["127.0.1.1"], 500) << "a successful probe restores the host";
}

TEST(Reachability, FailedProbeRestartsTheWindow) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" "127.0.1.2" ))");
  Lease a = f.MustAcquire("example.com");
  a.Report(Outcome::kConnectFailed);
  a.Release();
  f.clock.AdvanceSeconds(120);
  Lease probe = f.MustAcquire("example.com");
  ASSERT_TRUE(probe.is_probe());
  probe.Report(Outcome::kGreetingRejected);
  probe.Release();
  EXPECT_EQ(f.Pick("example.com"), "127.0.1.2");
  f.clock.AdvanceSeconds(119);
  EXPECT_EQ(f.Pick("example.com"), "127.0.1.2");
  f.clock.AdvanceSeconds(1);
  EXPECT_EQ(f.Pick("example.com"), "127.0.1.1");
}

TEST(Reachability, ProbeReleasedWithoutOutcomeLetsAnotherProbeGo) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" "127.0.1.2" ))");
  f.MustAcquire("example.com").Report(Outcome::kConnectFailed);
  f.clock.AdvanceSeconds(120);
  {
    Lease probe = f.MustAcquire("example.com");
    ASSERT_TRUE(probe.is_probe());
  }
  Lease again = f.MustAcquire("example.com");
  EXPECT_TRUE(again.is_probe());
  EXPECT_EQ(again.endpoint().address.ToString(), "127.0.1.1");
}

TEST(Reachability, LocalErrorsDoNotBlameTheHost) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" "127.0.1.2" ))");
  f.MustAcquire("example.com").Report(Outcome::kLocalError);
  EXPECT_EQ(f.Pick("example.com"), "127.0.1.1");
}

TEST(Reachability, AllHostsDownDefersAsUnreachable) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" ))");
  f.MustAcquire("example.com").Report(Outcome::kConnectFailed);
  AcquireResult r = f.selector.Acquire("example.com");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kHostsUnreachable);
}

TEST(Reachability, MxFailuresToDelayGives421NoMxs) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=1" "smtp://127.0.1.2?pref=1" )
    mx_failures_to_delay = 3
  )");
  for (int round = 0; round < 3; ++round) {
    // Both hosts fail once per round (a probe each after the first round).
    for (int k = 0; k < 2; ++k) {
      AcquireResult r = f.selector.Acquire("example.com");
      ASSERT_TRUE(r.ok()) << "round " << round << ": " << r.deferral().ToString();
      r.lease().Report(Outcome::kConnectFailed);
    }
    AcquireResult r = f.selector.Acquire("example.com");
    ASSERT_FALSE(r.ok());
    if (round < 2) {
      EXPECT_EQ(r.deferral().reason, DeferReason::kHostsUnreachable) << "round " << round;
    } else {
      EXPECT_EQ(r.deferral().reason, DeferReason::kNoMxReachable);
      EXPECT_EQ(r.deferral().ToString(), "421 4.4.0 no MXs for this domain could be reached");
    }
    f.clock.AdvanceSeconds(120);
  }
  // A success anywhere lifts the delay.
  Lease l = f.MustAcquire("example.com");
  l.Report(Outcome::kConnected);
  EXPECT_EQ(l.host().consecutive_failures(), 0u);
}

// --- Rule 5: hosts are shared -----------------------------------------------------------

TEST(HostsAreShared, HostLimitHoldsAcrossDomains) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    Host "127.0.1.1" { max_outbound_connections = 2 }
  )");
  Lease a = f.MustAcquire("a.example");
  Lease b = f.MustAcquire("b.example");
  AcquireResult r = f.selector.Acquire("c.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kHostsAtLimit);
  EXPECT_EQ(&a.host(), &b.host());
}

TEST(HostsAreShared, FailureSeenByOneDomainProtectsOthers) {
  SelectorFixture f(R"(routes = ( "127.0.1.1" "127.0.1.2" ))");
  Lease a = f.MustAcquire("a.example");
  ASSERT_EQ(a.endpoint().address.ToString(), "127.0.1.1");
  a.Report(Outcome::kConnectFailed);
  EXPECT_EQ(f.Pick("b.example"), "127.0.1.2");
}

TEST(HostsAreShared, KeyIsAddressAndPort) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?port=2525" )
    Domain "other.example" { routes = ( "smtp://127.0.1.1?port=2526" ) }
  )");
  Lease a = f.MustAcquire("a.example");
  Lease b = f.MustAcquire("other.example");
  EXPECT_NE(&a.host(), &b.host());
  EXPECT_EQ(a.endpoint().port, 2525);
  EXPECT_EQ(b.endpoint().port, 2526);
}

// --- Rule 7: reload and refresh ---------------------------------------------------------

constexpr char kOldRoutes[] = R"(routes = ( "smtp://127.0.3.1?ttl=300" ))";
constexpr char kNewRoutes[] = R"(routes = ( "smtp://127.0.3.2?ttl=300" ))";

TEST(Reload, NewConfigAppliesWhenTheRouteReachesItsTtl) {
  SelectorFixture f(kOldRoutes);
  EXPECT_EQ(f.Pick("example.com"), "127.0.3.1");
  f.selector.SetConfig(ConfigFrom(kNewRoutes));
  f.clock.AdvanceSeconds(299);
  EXPECT_EQ(f.Pick("example.com"), "127.0.3.1");
  f.clock.AdvanceSeconds(1);
  EXPECT_EQ(f.Pick("example.com"), "127.0.3.2");
}

TEST(Reload, RefreshDomainAppliesNowAndOnlyThere) {
  SelectorFixture f(kOldRoutes);
  EXPECT_EQ(f.Pick("a.example"), "127.0.3.1");
  EXPECT_EQ(f.Pick("b.example"), "127.0.3.1");
  f.selector.SetConfig(ConfigFrom(kNewRoutes));
  EXPECT_TRUE(f.selector.RefreshDomain("A.Example"));
  EXPECT_FALSE(f.selector.RefreshDomain("never-seen.example"));
  EXPECT_EQ(f.Pick("a.example"), "127.0.3.2");
  EXPECT_EQ(f.Pick("b.example"), "127.0.3.1");
  f.selector.RefreshAll();
  EXPECT_EQ(f.Pick("b.example"), "127.0.3.2");
}

// Found in CI (cli_admin_top under ASan): POST /refresh answered with the old route when a
// delivery thread was re-planning the same domain at that moment — RefreshDomain only marked
// the route stale, and Describe, losing the re-plan flag to that thread, showed the route
// still in place. RefreshDomain re-plans before it returns.
TEST(Reload, RefreshDomainHasReplannedWhenItReturnsWhileOthersAcquire) {
  SelectorFixture f(R"(routes = ( "smtp://127.0.3.1?ttl=60" ))");
  f.MustAcquire("example.com").Release();
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      AcquireResult r = f.selector.Acquire("example.com");
      if (r.ok()) r.lease().Release();
    }
  });
  int stale = 0;
  for (int i = 0; i < 20000; ++i) {
    f.clock.AdvanceSeconds(1);  // the route ages: an un-replanned view shows less than 60
    ASSERT_TRUE(f.selector.RefreshDomain("example.com"));
    if (f.selector.Describe("example.com").ttl_left_s != 60) ++stale;
  }
  stop = true;
  worker.join();
  EXPECT_EQ(stale, 0);
}

TEST(Reload, OpenLeasesSurviveARefresh) {
  SelectorFixture f(R"(
    routes = ( "127.0.3.1" )
    Host "127.0.3.1" { max_outbound_connections = 1 }
  )");
  Lease old = f.MustAcquire("example.com");
  const HostState* host = &old.host();
  f.selector.SetConfig(ConfigFrom(R"(routes = ( "127.0.3.2" ))"));
  f.selector.RefreshAll();
  Lease fresh = f.MustAcquire("example.com");
  EXPECT_EQ(fresh.endpoint().address.ToString(), "127.0.3.2");
  EXPECT_TRUE(old.valid());
  EXPECT_EQ(host->active(), 1);
  old.Release();
  EXPECT_EQ(host->active(), 0);
}

TEST(Reload, NewHostLimitAppliesOnRefreshWithoutTearingDownConnections) {
  SelectorFixture f(R"(
    routes = ( "127.0.3.1" )
    Host "127.0.3.1" { max_outbound_connections = 3 }
  )");
  std::vector<Lease> held;
  for (int i = 0; i < 3; ++i) held.push_back(f.MustAcquire("example.com"));
  f.selector.SetConfig(ConfigFrom(R"(
    routes = ( "127.0.3.1" )
    Host "127.0.3.1" { max_outbound_connections = 1 }
  )"));
  f.selector.RefreshAll();
  EXPECT_FALSE(f.selector.Acquire("example.com").ok());
  EXPECT_EQ(held[0].host().active(), 3);
  held.resize(1);
  EXPECT_FALSE(f.selector.Acquire("example.com").ok()) << "new limit 1 is already used";
  held.clear();
  EXPECT_TRUE(f.selector.Acquire("example.com").ok());
}

// --- Bad input --------------------------------------------------------------------------

TEST(BadInput, InvalidDomainIsAPermanentDeferralNotACrash) {
  SelectorFixture f(kFourEqual);
  for (std::string_view bad :
       {std::string_view(""), std::string_view("a..b"), std::string_view("sp ace.example"),
        std::string_view("\xff\x00", 2)}) {
    AcquireResult r = f.selector.Acquire(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.deferral().permanent());
    EXPECT_NE(r.deferral().ToString().find("invalid domain"), std::string::npos);
  }
}

TEST(BadInput, DomainNamesAreCaseInsensitiveAndTrailingDotTolerant) {
  SelectorFixture f(R"(
    routes = ( "127.0.1.1" )
    Domain "example.com" { max_outbound_connections = 2 }
  )");
  Lease a = f.MustAcquire("EXAMPLE.com");
  Lease b = f.MustAcquire("example.com.");
  EXPECT_EQ(f.selector.Acquire("Example.Com").deferral().reason, DeferReason::kDomainLimit);
  EXPECT_EQ(f.selector.domain_count(), 1u);
}

TEST(BadInput, RouteNeedingDnsWithoutResolverIsTemporaryWithReason) {
  SelectorFixture f(R"(routes = ( "relay.example.net" ))");
  AcquireResult r = f.selector.Acquire("example.com");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kTempFailure);
  EXPECT_NE(r.deferral().ToString().find("no resolver"), std::string::npos);
}

TEST(Describe, ShowsTiersHostsAndState) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.1.1?pref=5&ttl=60" "smtp://127.0.1.2?pref=5" "127.0.1.9" )
    Host "127.0.1.1" { max_outbound_connections = 4 }
  )");
  Lease l = f.MustAcquire("example.com");
  DomainView v = f.selector.Describe("example.com");
  EXPECT_EQ(v.state, RouteState::kReady);
  EXPECT_EQ(v.ttl_left_s, 60);
  EXPECT_EQ(v.active, 1);
  ASSERT_EQ(v.tiers.size(), 2u);
  EXPECT_EQ(v.tiers[0].tier, 5u);
  EXPECT_EQ(v.tiers[0].hosts.size(), 2u);
  EXPECT_EQ(v.tiers[1].tier, 6u);
  EXPECT_EQ(v.tiers[1].hosts[0].endpoint.ToString(), "127.0.1.9:25");
}

}  // namespace
}  // namespace mxsched

namespace mxsched {
namespace {

// --- Rule 8: waiting instead of polling -------------------------------------------------

// Records its wake-up and keeps the lease it was handed (if any).
struct CountingWaiter : SlotWaiter {
  void Wake(Lease l) override {
    lease = std::move(l);
    woken.fetch_add(1);
  }
  std::atomic<int> woken{0};
  Lease lease;
};

constexpr char kOneSlot[] = R"(
  routes = ( "127.0.4.1" )
  Host "127.0.4.1" { max_outbound_connections = 1 }
)";

// --- docs/DESIGN.md §5: waiting, first come first served, slot handed over ----------------------

TEST(FairHandOff, ReleasedSlotIsHandedToTheWaiterNotReRaced) {
  SelectorFixture f(kOneSlot);
  Lease held = f.MustAcquire("example.com");
  ASSERT_FALSE(f.selector.Acquire("example.com").ok());
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  EXPECT_EQ(w.woken.load(), 0) << "nothing freed yet";
  EXPECT_EQ(f.selector.waiting(), 1u);
  held.Release();
  EXPECT_EQ(w.woken.load(), 1);
  ASSERT_TRUE(w.lease.valid()) << "the slot itself is handed over";
  EXPECT_EQ(w.lease.endpoint().address.ToString(), "127.0.4.1");
  EXPECT_EQ(f.selector.waiting(), 0u);
  EXPECT_FALSE(f.selector.Acquire("example.com").ok()) << "the waiter holds the only slot";
  w.lease.Release();
  EXPECT_TRUE(f.selector.Acquire("example.com").ok());
}

TEST(FairHandOff, WaitersAreServedInArrivalOrderOnePerFreedSlot) {
  SelectorFixture f(kOneSlot);
  Lease held = f.MustAcquire("a.example");
  CountingWaiter first, second;
  f.selector.WaitForSlot("b.example", &first);
  f.selector.WaitForSlot("c.example", &second);
  held.Release();
  EXPECT_EQ(first.woken.load(), 1);
  EXPECT_EQ(second.woken.load(), 0) << "one slot freed: one waiter served";
  first.lease.Release();
  EXPECT_EQ(second.woken.load(), 1);
  EXPECT_TRUE(second.lease.valid());
}

TEST(FairHandOff, NewSessionDoesNotOvertakeWaitersForTheSameHost) {
  // Regression for issue 13 §1: a new session's Acquire took a freed slot before the
  // woken waiter ran. Now the slot never becomes free while someone waits for it.
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 2 }
  )");
  Lease a = f.MustAcquire("a.example");
  Lease b = f.MustAcquire("b.example");
  CountingWaiter w;
  f.selector.WaitForSlot("c.example", &w);
  a.Release();
  ASSERT_EQ(w.woken.load(), 1);
  w.lease.Release();  // the waiter is done: the slot is free for anyone again
  Lease c = f.MustAcquire("d.example");
  CountingWaiter w2;
  f.selector.WaitForSlot("e.example", &w2);
  AcquireResult newcomer = f.selector.Acquire("f.example");
  EXPECT_FALSE(newcomer.ok()) << "host full";
  // A slot frees while w2 waits: a newcomer racing for it loses.
  b.Release();
  EXPECT_EQ(w2.woken.load(), 1);
  EXPECT_FALSE(f.selector.Acquire("g.example").ok());
}

TEST(FairHandOff, NewcomerDefersWhileOthersWaitEvenIfItsRouteHasOtherHosts) {
  // Waiters on host .1 only; a newcomer whose route also has host .2 (tier 1) goes to .2,
  // never to .1 ahead of them — strict preference still holds (.1 is full for it).
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 1 }
    Domain "both.example" { routes = ( "smtp://127.0.4.1?pref=0" "smtp://127.0.4.2?pref=5" ) }
  )");
  Lease held = f.MustAcquire("a.example");
  CountingWaiter w;
  f.selector.WaitForSlot("b.example", &w);
  held.Release();
  ASSERT_TRUE(w.lease.valid());
  EXPECT_EQ(f.Pick("both.example"), "127.0.4.2");
}

TEST(FairHandOff, HandOffKeepsStrictPreference) {
  // A waiter on a two-tier route; a tier-1 slot frees while a tier-0 host has room: the
  // waiter gets tier 0, and the tier-1 slot stays free.
  SelectorFixture f(R"(
    Domain "w.example" { routes = ( "smtp://127.0.4.1?pref=0" "smtp://127.0.4.2?pref=5" ) }
    Domain "x.example" { routes = ( "127.0.4.2" ) }
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 1 }
    Host "127.0.4.2" { max_outbound_connections = 1 }
  )");
  Lease t0 = f.MustAcquire("a.example");  // tier 0 of w.example, via another domain
  Lease t1 = f.MustAcquire("x.example");  // tier 1 of w.example
  CountingWaiter w;
  f.selector.WaitForSlot("w.example", &w);
  ASSERT_EQ(w.woken.load(), 0);
  t0.Release();
  ASSERT_TRUE(w.lease.valid());
  EXPECT_EQ(w.lease.endpoint().address.ToString(), "127.0.4.1");
  w.lease.Release();
  CountingWaiter w2;
  Lease t0b = f.MustAcquire("a.example");
  f.selector.WaitForSlot("w.example", &w2);
  t1.Release();  // tier 1 frees while tier 0 is full: the waiter may use tier 1
  ASSERT_TRUE(w2.lease.valid());
  EXPECT_EQ(w2.lease.endpoint().address.ToString(), "127.0.4.2");
}

TEST(FairHandOff, DomainLimitWaiterIsServedByItsDomainsRelease) {
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" "127.0.4.2" )
    max_outbound_connections = 1
  )");
  Lease held = f.MustAcquire("example.com");
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  EXPECT_TRUE(f.selector.Acquire("other.example").ok()) << "hosts have room for others";
  EXPECT_FALSE(f.selector.Acquire("example.com").ok()) << "domain full, and a waiter first";
  held.Release();
  EXPECT_TRUE(w.lease.valid());
  EXPECT_EQ(f.selector.waiting(), 0u);
}

TEST(FairHandOff, ServerLimitWaitersAreServedInOrder) {
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" "127.0.4.2" )
    server_max_outbound_connections = 1
  )");
  Lease held = f.MustAcquire("a.example");
  CountingWaiter w1, w2;
  f.selector.WaitForSlot("b.example", &w1);
  f.selector.WaitForSlot("c.example", &w2);
  EXPECT_FALSE(f.selector.Acquire("d.example").ok());
  held.Release();
  EXPECT_TRUE(w1.lease.valid());
  EXPECT_EQ(w2.woken.load(), 0);
  w1.lease.Release();
  EXPECT_TRUE(w2.lease.valid());
  EXPECT_EQ(f.selector.server_active(), 1);
}

TEST(FairHandOff, ManyWaitersManyDomainsServedStrictlyFifo) {
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" "127.0.4.2" )
    Host "127.0.4.1" { max_outbound_connections = 2 }
    Host "127.0.4.2" { max_outbound_connections = 1 }
  )");
  std::vector<Lease> held;
  for (int i = 0; i < 3; ++i) held.push_back(f.MustAcquire(StrCat("h", i, ".example")));
  constexpr int kWaiters = 200;
  std::vector<std::unique_ptr<CountingWaiter>> ws;
  for (int i = 0; i < kWaiters; ++i) {
    ws.push_back(std::make_unique<CountingWaiter>());
    f.selector.WaitForSlot(StrCat("d", i % 17, ".example"), ws.back().get());
  }
  int served = 0;
  for (auto& l : held) l.Release();
  // Each served waiter releases in turn; service must follow arrival order exactly.
  for (int round = 0; round < kWaiters; ++round) {
    ASSERT_EQ(ws[round]->woken.load(), 1) << "waiter " << round;
    ASSERT_TRUE(ws[round]->lease.valid());
    for (int later = round + 4; later < kWaiters && later < round + 8; ++later) {
      ASSERT_EQ(ws[later]->woken.load(), 0) << "waiter " << later << " overtook " << round;
    }
    ws[round]->lease.Release();
    ++served;
  }
  EXPECT_EQ(served, kWaiters);
  EXPECT_EQ(f.selector.waiting(), 0u);
}

TEST(FairHandOff, ReleaseOnAnUnrelatedHostWakesNobody) {
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 1 }
    Domain "other.example" { routes = ( "127.0.4.2" ) }
  )");
  Lease held = f.MustAcquire("example.com");
  Lease unrelated = f.MustAcquire("other.example");
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  unrelated.Release();
  EXPECT_EQ(w.woken.load(), 0);
  held.Release();
  EXPECT_EQ(w.woken.load(), 1);
}

TEST(FairHandOff, SlotFreedBeforeRegistrationIsNotMissed) {
  SelectorFixture f(kOneSlot);
  Lease held = f.MustAcquire("example.com");
  ASSERT_FALSE(f.selector.Acquire("example.com").ok());
  held.Release();  // freed between the failed Acquire and the registration
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  EXPECT_EQ(w.woken.load(), 1);
  EXPECT_TRUE(w.lease.valid());
}

TEST(FairHandOff, RecoveredHostServesWaitersUpToItsLimit) {
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 2 }
  )");
  f.MustAcquire("a.example").Report(Outcome::kConnectFailed);
  CountingWaiter w1, w2, w3;
  f.selector.WaitForSlot("a.example", &w1);
  f.selector.WaitForSlot("b.example", &w2);
  f.selector.WaitForSlot("b.example", &w3);
  EXPECT_EQ(w1.woken.load() + w2.woken.load() + w3.woken.load(), 0);
  f.clock.AdvanceSeconds(120);
  Lease probe = f.MustAcquire("c.example");
  ASSERT_TRUE(probe.is_probe()) << "waiters do not poll: a new session probes";
  probe.Report(Outcome::kConnected);
  EXPECT_EQ(w1.woken.load(), 1);
  EXPECT_EQ(w2.woken.load(), 0) << "limit 2: the probe holds one, w1 the other";
  probe.Release();
  EXPECT_EQ(w2.woken.load(), 1);
  EXPECT_EQ(w3.woken.load(), 0);
}

TEST(FairHandOff, CancelWait) {
  SelectorFixture f(kOneSlot);
  Lease held = f.MustAcquire("example.com");
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  EXPECT_TRUE(f.selector.CancelWait(&w));
  EXPECT_FALSE(f.selector.CancelWait(&w));
  held.Release();
  EXPECT_EQ(w.woken.load(), 0);
  EXPECT_TRUE(f.selector.Acquire("example.com").ok()) << "a cancelled waiter holds nothing";
}

TEST(FairHandOff, ConcurrentWaitersAndReleasesNeverLoseOrDuplicateASlot) {
  // Threads wait and release in a loop on a small route; every waiter is served exactly
  // once and the limits hold (the host's own peak).
  SelectorFixture f(R"(
    routes = ( "127.0.4.1" "127.0.4.2" )
    Host "127.0.4.1" { max_outbound_connections = 2 }
    Host "127.0.4.2" { max_outbound_connections = 1 }
  )");
  struct QueueWaiter : SlotWaiter {
    void Wake(Lease l) override {
      MutexLock lock(&mu);
      got = std::move(l);
      done = true;
    }
    Mutex mu;
    bool done = false;
    Lease got;
  };
  constexpr int kThreads = 4, kRounds = 3000;
  std::atomic<int> served{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        AcquireResult r = f.selector.Acquire(StrCat("t", t, ".example"));
        Lease l;
        if (r.ok()) {
          l = r.TakeLease();
        } else {
          QueueWaiter w;
          f.selector.WaitForSlot(StrCat("t", t, ".example"), &w);
          for (;;) {  // the other threads' releases serve us; bounded by the test timeout
            {
              MutexLock lock(&w.mu);
              if (w.done) break;
            }
            std::this_thread::yield();
          }
          MutexLock lock(&w.mu);
          l = std::move(w.got);
        }
        ASSERT_TRUE(l.valid());
        served.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(served.load(), kThreads * kRounds);
  f.selector.registry().ForEach([](const HostState& h) {
    EXPECT_LE(h.peak(), h.limit());
    EXPECT_EQ(h.active(), 0);
  });
  EXPECT_EQ(f.selector.waiting(), 0u);
}

}  // namespace
}  // namespace mxsched

namespace mxsched {
namespace {

TEST(FairHandOff, RefreshWakesWaitersToReplanAgainstNewRoutes) {
  testing::SelectorFixture f(R"(
    routes = ( "127.0.4.1" )
    Host "127.0.4.1" { max_outbound_connections = 1 }
  )");
  Lease held = f.MustAcquire("example.com");
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  f.selector.SetConfig(testing::ConfigFrom(R"(routes = ( "127.0.4.2" ))"));
  EXPECT_EQ(w.woken.load(), 0) << "a new config alone changes nothing until it applies";
  f.selector.RefreshAll();
  EXPECT_EQ(w.woken.load(), 1);
  EXPECT_FALSE(w.lease.valid()) << "woken to re-plan: no slot handed over";
  EXPECT_EQ(f.Pick("example.com"), "127.0.4.2");
}

}  // namespace
}  // namespace mxsched

namespace mxsched {
namespace {

// --- docs/DESIGN.md §5: eviction of idle domains
// --------------------------------------------------

constexpr char kIdle[] = R"(
  routes = ( "127.0.5.1" )
  domain_idle_timeout = 60
)";

// --- provider groups, big routes, recycled tickets (issue 13: O(1) release) ----------------

// Answers MX and address lookups from tables (a route by MX name, so a provider pattern
// can match it without a DNS server).
class TableResolver : public Resolver {
 public:
  void Mx(const std::string& domain, const std::string& host) { mx_[domain].push_back(host); }
  void A(const std::string& host, const std::string& ip) { a_[host] = ip; }
  DnsAnswer LookupMx(std::string_view name) override {
    DnsAnswer ans;
    ans.state = DnsAnswer::State::kReady;
    ans.ttl_s = 300;
    auto it = mx_.find(std::string(name));
    if (it == mx_.end()) {
      ans.state = DnsAnswer::State::kNxDomain;
      return ans;
    }
    for (const std::string& h : it->second) ans.mx.push_back({10, h});
    return ans;
  }
  DnsAnswer LookupAddresses(std::string_view name, bool want_v4, bool /*want_v6*/) override {
    DnsAnswer ans;
    ans.state = DnsAnswer::State::kReady;
    ans.ttl_s = 300;
    auto it = a_.find(std::string(name));
    if (it == a_.end()) {
      ans.state = DnsAnswer::State::kNxDomain;
      return ans;
    }
    if (want_v4) ans.addresses.push_back(*IpAddress::Parse(it->second));
    return ans;
  }

 private:
  std::map<std::string, std::vector<std::string>> mx_;
  std::map<std::string, std::string> a_;
};

// Three provider hosts (limit 5 each) sharing a group limit of 2; domain X.test routes to
// mxX.prov.test only.
struct GroupFixture {
  GroupFixture() {
    for (int i = 1; i <= 3; ++i) {
      resolver.Mx(StrCat("d", i, ".test"), StrCat("mx", i, ".prov.test"));
      resolver.A(StrCat("mx", i, ".prov.test"), StrCat("127.0.9.", i));
    }
  }
  int32_t GroupActive() {
    DomainView v = selector.Describe("d1.test");
    return v.tiers.empty() ? -1 : v.tiers[0].hosts[0].group_active;
  }
  TableResolver resolver;
  ManualClock clock;
  SplitMixRandom random{42};
  Selector selector{ConfigFrom(R"(
    prohibited_hosts = ( )
    Host "*.prov.test" { max_outbound_connections = 2 }
    Host "127.0.9.1" { max_outbound_connections = 5 }
    Host "127.0.9.2" { max_outbound_connections = 5 }
    Host "127.0.9.3" { max_outbound_connections = 5 })"),
                    {.clock = &clock, .random = &random, .resolver = &resolver}};
};

TEST(FairHandOff, FreedGroupSlotGoesToTheOldestWaiterOnAnotherHostOfTheGroup) {
  GroupFixture f;
  AcquireResult a1 = f.selector.Acquire("d1.test");
  ASSERT_TRUE(a1.ok()) << a1.deferral().ToString();
  AcquireResult a2 = f.selector.Acquire("d1.test");
  ASSERT_TRUE(a2.ok());
  ASSERT_EQ(f.GroupActive(), 2);
  EXPECT_FALSE(f.selector.Acquire("d2.test").ok()) << "mx2 has room, its group does not";
  CountingWaiter w2, w3, w2b;
  f.selector.WaitForSlot("d2.test", &w2);
  f.selector.WaitForSlot("d3.test", &w3);
  f.selector.WaitForSlot("d2.test", &w2b);
  EXPECT_EQ(f.selector.waiting(), 3u);
  a1.lease().Release();  // a slot of the group frees on mx1, where nobody waits
  EXPECT_EQ(w2.woken.load(), 1) << "the oldest waiter of the group, on mx2";
  ASSERT_TRUE(w2.lease.valid());
  EXPECT_EQ(w2.lease.endpoint().address.ToString(), "127.0.9.2");
  EXPECT_EQ(w3.woken.load() + w2b.woken.load(), 0) << "one freed slot, one grant";
  EXPECT_EQ(f.GroupActive(), 2);
  w2.lease.Release();  // on mx2, whose own queue has w2b; w3 (on mx3) is older
  EXPECT_EQ(w3.woken.load(), 0) << "mx2's own waiter first: the slot is handed over on mx2";
  EXPECT_EQ(w2b.woken.load(), 1);
  a2.lease().Release();
  EXPECT_EQ(w3.woken.load(), 1);
  ASSERT_TRUE(w3.lease.valid());
  EXPECT_EQ(w3.lease.endpoint().address.ToString(), "127.0.9.3");
  EXPECT_EQ(f.GroupActive(), 2);
  EXPECT_EQ(f.selector.waiting(), 0u);
  w2b.lease.Release();
  w3.lease.Release();
  EXPECT_EQ(f.GroupActive(), 0);
  EXPECT_TRUE(f.selector.Acquire("d2.test").ok()) << "no waiter left behind in the books";
}

TEST(FairHandOff, FrontQueuedWaiterIsFirstAcrossTheGroupsHosts) {
  GroupFixture f;
  AcquireResult a1 = f.selector.Acquire("d1.test");
  AcquireResult a2 = f.selector.Acquire("d1.test");
  ASSERT_TRUE(a1.ok() && a2.ok());
  CountingWaiter older, front;
  f.selector.WaitForSlot("d2.test", &older);
  f.selector.WaitForSlot("d3.test", &front, /*front=*/true);  // woken to re-plan earlier
  a1.lease().Release();
  EXPECT_EQ(front.woken.load(), 1) << "ahead of everyone, also of waiters on other hosts";
  EXPECT_EQ(older.woken.load(), 0);
  a2.lease().Release();
  EXPECT_EQ(older.woken.load(), 1);
}

TEST(FairHandOff, GroupReleaseSkipsAHostWithoutRoomOfItsOwn) {
  // mx2 is at its own limit (1) as well: its waiter cannot use a freed group slot; the
  // younger waiter on mx3 can.
  TableResolver resolver;
  for (int i = 1; i <= 3; ++i) {
    resolver.Mx(StrCat("d", i, ".test"), StrCat("mx", i, ".prov.test"));
    resolver.A(StrCat("mx", i, ".prov.test"), StrCat("127.0.9.", i));
  }
  ManualClock clock;
  SplitMixRandom random{42};
  Selector selector(ConfigFrom(R"(
    prohibited_hosts = ( )
    Host "*.prov.test" { max_outbound_connections = 2 }
    Host "127.0.9.2" { max_outbound_connections = 1 })"),
                    {.clock = &clock, .random = &random, .resolver = &resolver});
  AcquireResult on2 = selector.Acquire("d2.test");
  AcquireResult on1 = selector.Acquire("d1.test");
  ASSERT_TRUE(on2.ok() && on1.ok());
  CountingWaiter w2, w3;
  selector.WaitForSlot("d2.test", &w2);
  selector.WaitForSlot("d3.test", &w3);
  on1.lease().Release();
  EXPECT_EQ(w2.woken.load(), 0) << "mx2 is full on its own";
  EXPECT_EQ(w3.woken.load(), 1);
  on2.lease().Release();  // mx2's own slot (and a group slot)
  EXPECT_EQ(w2.woken.load(), 1);
}

TEST(FairHandOff, BigRoutesAndRecycledTicketsKeepFifoAndTheBooks) {
  // Six hosts (more than a ticket holds inline) next to one-host routes, the tickets
  // recycled between them many times: FIFO per host, every waiter served once, and no
  // waiting count left behind.
  SelectorFixture f(R"(
    routes = ( "127.0.6.1" "127.0.6.2" "127.0.6.3" "127.0.6.4" "127.0.6.5" "127.0.6.6" )
    Domain "one.example" { routes = ( "127.0.6.1" ) }
    Host "127.0.6.1" { max_outbound_connections = 1 }
    Host "127.0.6.2" { max_outbound_connections = 1 }
    Host "127.0.6.3" { max_outbound_connections = 1 }
    Host "127.0.6.4" { max_outbound_connections = 1 }
    Host "127.0.6.5" { max_outbound_connections = 1 }
    Host "127.0.6.6" { max_outbound_connections = 1 }
  )");
  std::vector<Lease> held;
  for (int i = 0; i < 6; ++i) held.push_back(f.MustAcquire("big.example"));
  std::deque<std::unique_ptr<CountingWaiter>> queue;
  int served = 0;
  for (int round = 0; round < 300; ++round) {
    auto w = std::make_unique<CountingWaiter>();
    f.selector.WaitForSlot(round % 3 == 0 ? "one.example" : "big.example", w.get());
    queue.push_back(std::move(w));
    if (round % 7 == 6) {  // cancel the newest now and then
      EXPECT_TRUE(f.selector.CancelWait(queue.back().get()));
      queue.pop_back();
    }
    if (queue.size() > 5) {
      // Release the host the oldest waiter can use (one.example's only host, or any).
      CountingWaiter* oldest = queue.front().get();
      size_t k = 0;
      while (k < held.size() && held[k].endpoint().address.ToString() != "127.0.6.1") ++k;
      ASSERT_LT(k, held.size());
      held[k].Release();
      ASSERT_EQ(oldest->woken.load(), 1) << "round " << round;
      ASSERT_TRUE(oldest->lease.valid());
      for (size_t j = 1; j < queue.size(); ++j) ASSERT_EQ(queue[j]->woken.load(), 0);
      held[k] = std::move(oldest->lease);
      queue.pop_front();
      ++served;
    }
  }
  EXPECT_GT(served, 100);
  EXPECT_EQ(f.selector.waiting(), queue.size());
  for (auto& w : queue) EXPECT_TRUE(f.selector.CancelWait(w.get()));
  EXPECT_EQ(f.selector.waiting(), 0u);
  held.clear();
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(f.selector.Acquire("big.example").ok()) << "host " << i << " has no ghost waiter";
  }
}

TEST(FairHandOff, CancelWaitOnAnotherSelectorFindsNothing) {
  SelectorFixture f(kOneSlot), g(kOneSlot);
  Lease held = f.MustAcquire("example.com");
  CountingWaiter w;
  f.selector.WaitForSlot("example.com", &w);
  EXPECT_FALSE(g.selector.CancelWait(&w)) << "queued on f, not g";
  EXPECT_EQ(f.selector.waiting(), 1u);
  held.Release();
  EXPECT_EQ(w.woken.load(), 1);
}

TEST(Eviction, IdleDomainIsDroppedAndComesBackOnNextUse) {
  testing::SelectorFixture f(kIdle);
  for (int i = 0; i < 100; ++i) f.MustAcquire(StrCat("d", i, ".example"));
  EXPECT_EQ(f.selector.domain_count(), 100u);
  f.clock.AdvanceSeconds(30);
  EXPECT_EQ(f.selector.EvictIdle(), 0u) << "not idle long enough";
  f.MustAcquire("d7.example");  // used again: its idle clock restarts
  f.clock.AdvanceSeconds(40);
  EXPECT_EQ(f.selector.EvictIdle(), 99u);
  EXPECT_EQ(f.selector.domain_count(), 1u);
  EXPECT_EQ(f.Pick("d3.example"), "127.0.5.1") << "planned again on next use";
  EXPECT_EQ(f.selector.domain_count(), 2u);
  const SelectorStats::Totals t = f.selector.stats().Collect();
  EXPECT_EQ(t.domains_evicted, 99u) << "EvictIdle counts what it drops";
  EXPECT_EQ(t.domains_created, 101u) << "d3.example was created again";
  EXPECT_EQ(t.domains_created - t.domains_evicted, f.selector.domain_count());
}

TEST(Eviction, DomainWithAConnectionOrAWaiterIsKept) {
  testing::SelectorFixture f(R"(
    routes = ( "127.0.5.1" )
    Host "127.0.5.1" { max_outbound_connections = 1 }
    domain_idle_timeout = 60
  )");
  Lease held = f.MustAcquire("held.example");  // the host's only slot
  CountingWaiter w;
  f.selector.WaitForSlot("waits.example", &w);
  f.selector.Describe("idle.example");  // resident, no lease, no waiter
  f.clock.AdvanceSeconds(3600);
  EXPECT_EQ(f.selector.EvictIdle(), 1u) << "only idle.example";
  EXPECT_EQ(f.selector.domain_count(), 2u);
  held.Release();
  EXPECT_TRUE(w.lease.valid()) << "the waiter's domain survived to be served";
}

TEST(Eviction, NewDomainsSweepIdleOnesSoTheCountLevelsOff) {
  testing::SelectorFixture f(kIdle);
  size_t max_count = 0;
  for (int i = 0; i < 200'000; ++i) {
    f.MustAcquire(StrCat("churn", i, ".example"));
    if (i % 1000 == 999) f.clock.AdvanceSeconds(10);  // ~6,000 domains live per 60 s
    max_count = std::max(max_count, f.selector.domain_count());
  }
  EXPECT_LT(max_count, 40'000u) << "idle domains were not swept as new ones arrived";
  // The sweep new domains pay for counts what it drops too (no EvictIdle call here).
  const SelectorStats::Totals t = f.selector.stats().Collect();
  EXPECT_EQ(t.domains_created, 200'000u);
  EXPECT_GT(t.domains_evicted, 200'000u - 40'000u);
  EXPECT_EQ(t.domains_created - t.domains_evicted, f.selector.domain_count());
}

// Issue 20 item 1: 200,000 domains whose MXs pointed at their own addresses left ~191k host
// states after the domains were evicted. Now a host no interned route refers to, with no
// connection, waiter or failure memory left, is evicted too: resident hosts level off.
TEST(Eviction, HostsOfEvictedRoutesGoSoResidentHostsLevelOff) {
  constexpr int kDomains = 40'000;
  std::string conf = "domain_idle_timeout = 60\n";
  for (int i = 0; i < kDomains; ++i) {
    conf += StrCat("Domain \"h", i, ".example\" { routes = ( \"127.1.", i / 250, ".",
                   i % 250 + 1, "\" ) }\n");
  }
  testing::SelectorFixture f(conf);
  const HostRegistry& registry = f.selector.registry();
  size_t max_hosts = 0;
  for (int i = 0; i < kDomains; ++i) {
    f.MustAcquire(StrCat("h", i, ".example"));
    if (i % 500 == 499) f.clock.AdvanceSeconds(10);  // ~3,000 domains live per 60 s
    max_hosts = std::max(max_hosts, registry.size());
  }
  EXPECT_LT(max_hosts, 16'000u) << "host states of evicted domains were kept";
  EXPECT_EQ(registry.created(), static_cast<uint64_t>(kDomains));
  EXPECT_GT(registry.evicted(), static_cast<uint64_t>(kDomains) - 16'000u);
  EXPECT_EQ(registry.created() - registry.evicted(), registry.size());

  // Everything idle: domains, then their routes (after the epoch), then the hosts go.
  f.clock.AdvanceSeconds(120);
  f.selector.EvictIdle();
  epoch::Reclaim();
  f.selector.EvictIdleHosts();
  EXPECT_EQ(registry.size(), 0u);
  // A host with a failure inside its retry window (120 s) keeps its memory without a route;
  // one with an open connection is kept too.
  Lease failed = f.MustAcquire("h1.example");
  const Endpoint failed_ep = failed.endpoint();
  failed.Report(Outcome::kConnectFailed);
  failed.Release();
  Lease open = f.MustAcquire("h2.example");
  f.clock.AdvanceSeconds(70);
  EXPECT_EQ(f.selector.EvictIdle(), 1u) << "h1 is idle, h2 holds a connection";
  epoch::Reclaim();
  EXPECT_EQ(f.selector.EvictIdleHosts(), 0u);
  ASSERT_NE(registry.Find(failed_ep), nullptr) << "failure memory kept";
  EXPECT_FALSE(registry.Find(failed_ep)->Reachable(f.clock.NowNanos()));
  f.clock.AdvanceSeconds(60);  // past the retry window
  EXPECT_EQ(f.selector.EvictIdleHosts(), 1u);
  EXPECT_EQ(registry.Find(failed_ep), nullptr);
  EXPECT_NE(registry.Find(open.endpoint()), nullptr);
  // A domain comes back with a fresh host.
  EXPECT_TRUE(f.MustAcquire("h1.example").valid());
  EXPECT_EQ(registry.size(), 2u);
}

TEST(Eviction, SafeUnderConcurrentAcquireAndWait) {
  // One thread evicts everything idle as fast as it can (idle = 1 s, the clock jumps);
  // others Acquire, Release and wait on a small set of domains. Entries are evicted and
  // re-created under them; no lease is lost or doubled and no limit passed (ASan/TSan
  // check the memory side).
  testing::SelectorFixture f(R"(
    routes = ( "127.0.5.1" "127.0.5.2" )
    Host "127.0.5.1" { max_outbound_connections = 3 }
    Host "127.0.5.2" { max_outbound_connections = 2 }
    domain_idle_timeout = 1
  )");
  std::atomic<bool> stop{false};
  std::atomic<int64_t> evicted{0};
  std::thread evictor([&] {
    for (int i = 0; i < 10'000'000 && !stop.load(); ++i) {  // until the users are done
      f.clock.AdvanceSeconds(2);
      evicted.fetch_add(static_cast<int64_t>(f.selector.EvictIdle()));
    }
  });
  std::vector<std::thread> users;
  std::atomic<int> granted{0}, waited{0};
  for (int t = 0; t < 2; ++t) {
    users.emplace_back([&, t] {
      // Each thread holds up to 6 leases (more than the 5 slots), so the limits are reached
      // and sessions wait while entries are evicted and re-created under them.
      std::mt19937_64 rng(t);
      std::deque<Lease> held;
      // At least 30,000 rounds, and on until eviction has run under them (bounded).
      for (int i = 0; i < 3'000'000 && (i < 30'000 || evicted.load() < 1000); ++i) {
        if (held.size() == 6) held.pop_front();
        const std::string d = StrCat("c", rng() % 64, ".example");
        AcquireResult r = f.selector.Acquire(d);
        if (r.ok()) {
          granted.fetch_add(1);
          held.push_back(std::move(r.lease()));
          continue;
        }
        held.clear();  // wait holding nothing: the other thread's releases wake us
        waited.fetch_add(1);
        CountingWaiter w;
        f.selector.WaitForSlot(d, &w);
        if (!f.selector.CancelWait(&w)) {  // a wake-up is on its way: it may carry a lease
          while (w.woken.load() == 0) std::this_thread::yield();
          if (w.lease.valid()) held.push_back(std::move(w.lease));
        }
      }
    });
  }
  for (auto& u : users) u.join();
  stop.store(true);
  evictor.join();
  EXPECT_GT(evicted.load(), 0) << "nothing was evicted: the test proves nothing";
  EXPECT_GT(granted.load(), 0);
  EXPECT_GT(waited.load(), 0) << "no session waited: the limits were never reached";
  int64_t at_limit = 0;
  f.selector.registry().ForEach([&](const HostState& h) {
    at_limit += h.peak() == h.limit();
    EXPECT_LE(h.peak(), h.limit());
    EXPECT_EQ(h.active(), 0);
  });
  EXPECT_EQ(at_limit, 2) << "both hosts filled up at some point";
  EXPECT_EQ(at_limit, 2) << "both hosts filled up at some point";
  EXPECT_EQ(f.selector.waiting(), 0u);
}

}  // namespace
}  // namespace mxsched
