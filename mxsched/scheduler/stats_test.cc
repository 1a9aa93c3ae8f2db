// docs/DESIGN.md §8: the statistics the Selector and HostState keep for the admin library's
// metrics.
#include "mxsched/scheduler/stats.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/scheduler/host_registry.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::SelectorFixture;

constexpr char kTwoHostsLimitOne[] = R"(
  routes = ( "smtp://127.0.1.1?pref=1" "smtp://127.0.1.2?pref=1" )
  Host "127.0.1.1" { max_outbound_connections = 1 }
  Host "127.0.1.2" { max_outbound_connections = 1 }
  Domain "small.example" { max_outbound_connections = 1 }
)";

size_t Reason(DeferReason r) { return static_cast<size_t>(r); }

TEST(Observability, DeferralsAreCountedByReasonAndAdmissionsAreNot) {
  SelectorFixture f(kTwoHostsLimitOne);
  Lease a = f.MustAcquire("example.com");
  Lease b = f.MustAcquire("example.com");
  EXPECT_FALSE(f.selector.Acquire("example.com").ok());  // hosts at limit
  EXPECT_FALSE(f.selector.Acquire("example.com").ok());
  b.Release();
  Lease c = f.MustAcquire("small.example");
  EXPECT_FALSE(f.selector.Acquire("small.example").ok());  // domain limit
  EXPECT_FALSE(f.selector.Acquire("bad..name").ok());      // permanent
  SelectorStats::Totals t = f.selector.stats().Collect();
  EXPECT_EQ(t.deferrals[Reason(DeferReason::kHostsAtLimit)], 2u);
  EXPECT_EQ(t.deferrals[Reason(DeferReason::kDomainLimit)], 1u);
  EXPECT_EQ(t.deferrals[Reason(DeferReason::kPermanent)], 1u);
  uint64_t all = 0;
  for (uint64_t n : t.deferrals) all += n;
  EXPECT_EQ(all, 4u);
}

TEST(Observability, HostCountsEachReportedOutcomeOnce) {
  SelectorFixture f(kTwoHostsLimitOne);
  const HostState* host = nullptr;
  {
    Lease l = f.MustAcquire("example.com");
    host = &l.host();
    l.Report(Outcome::kTimedOut);
    l.Report(Outcome::kConnected);  // ignored: at most one outcome per lease
  }
  {
    Lease l = f.MustAcquire("example.com");  // the other host (the first is down)
    EXPECT_NE(&l.host(), host);
    l.Report(Outcome::kConnected);
    l.RecordConnectLatency(3'000'000);      // 3 ms: the 5 ms bucket
    l.RecordConnectLatency(9'000'000'000);  // above every bound
    const HostState::LatencyCounts c = l.host().connect_latency();
    EXPECT_EQ(c.buckets[2], 1u);
    EXPECT_EQ(c.buckets.back(), 1u);
    EXPECT_EQ(c.sum_nanos, 9'003'000'000);
    EXPECT_EQ(l.host().outcomes(static_cast<size_t>(Outcome::kConnected)), 1u);
  }
  EXPECT_EQ(host->outcomes(static_cast<size_t>(Outcome::kTimedOut)), 1u);
  EXPECT_EQ(host->outcomes(static_cast<size_t>(Outcome::kConnected)), 0u);
}

TEST(Observability, SessionCountsAndWaitTimesAddUpAcrossThreads) {
  SelectorStats stats;
  constexpr int kPerThread = 10'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&stats, t] {
      for (int i = 0; i < kPerThread; ++i) {
        stats.CountSession(static_cast<size_t>(i % 3), t == 0 ? 2'000'000 : -1);
      }
    });
  }
  for (auto& th : threads) th.join();
  SelectorStats::Totals t = stats.Collect();
  EXPECT_EQ(t.sessions[0] + t.sessions[1] + t.sessions[2], 4u * kPerThread);
  EXPECT_EQ(t.wait_buckets[1], static_cast<uint64_t>(kPerThread));  // 2 ms: the 10 ms bucket
  EXPECT_EQ(t.wait_sum_nanos, int64_t{kPerThread} * 2'000'000);
}

TEST(Observability, DescribeResidentChangesNothing) {
  SelectorFixture f(kTwoHostsLimitOne);
  EXPECT_FALSE(f.selector.DescribeResident("example.com").has_value());
  EXPECT_EQ(f.selector.domain_count(), 0u);  // not created by looking
  Lease l = f.MustAcquire("example.com");
  std::optional<DomainView> v = f.selector.DescribeResident("EXAMPLE.com.");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->domain, "example.com");
  EXPECT_EQ(v->active, 1);
  DomainView d = f.selector.Describe("example.com");
  EXPECT_EQ(d.tiers.size(), v->tiers.size());
  EXPECT_EQ(f.selector.domain_count(), 1u);
}

}  // namespace
}  // namespace mxsched
