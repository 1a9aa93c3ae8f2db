#include "mxsched/scheduler/host_registry.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/clock.h"

namespace mxsched {
namespace {

Endpoint Ep(const char* ip, uint16_t port = 25) { return {*IpAddress::Parse(ip), port}; }

HostConfig Limit(int32_t limit, int64_t retry_s = 60) {
  HostConfig c;
  c.limit = limit;
  c.retry_nanos = retry_s * kNanosPerSecond;
  return c;
}

TEST(HostRegistry, OneStatePerAddressAndPortSharedByEveryCaller) {
  HostRegistry registry;
  HostState* a = registry.GetOrCreate(Ep("192.0.2.1"), "mx1.example", Limit(4));
  EXPECT_EQ(registry.GetOrCreate(Ep("192.0.2.1"), "other-name.example", Limit(4)), a)
      << "the same destination under another MX name is the same host (docs/DESIGN.md §1 rule 5)";
  EXPECT_NE(registry.GetOrCreate(Ep("192.0.2.1", 2525), "mx1.example", Limit(4)), a)
      << "another port is another destination";
  EXPECT_NE(registry.GetOrCreate(Ep("2001:db8::1"), "mx1.example", Limit(4)), a);
  EXPECT_EQ(registry.size(), 3u);
  EXPECT_EQ(registry.Find(Ep("192.0.2.1")), a);
  EXPECT_EQ(registry.Find(Ep("192.0.2.99")), nullptr);
  EXPECT_EQ(a->name(), "mx1.example") << "the first name seen is kept";
  int visited = 0;
  registry.ForEach([&](const HostState&) { ++visited; });
  EXPECT_EQ(visited, 3);
  EXPECT_EQ(registry.Snapshot().size(), 3u);
}

TEST(HostRegistry, NewestConfigurationWinsAndNeverClosesOpenConnections) {
  HostRegistry registry;
  HostState* h = registry.GetOrCreate(Ep("192.0.2.1"), "mx", Limit(2));
  AdmitTicket t1, t2, t3;
  ASSERT_EQ(h->TryAdmit(0, &t1), Admission::kAdmitted);
  ASSERT_EQ(h->TryAdmit(0, &t2), Admission::kAdmitted);
  EXPECT_EQ(h->TryAdmit(0, &t3), Admission::kFull);
  registry.GetOrCreate(Ep("192.0.2.1"), "mx", Limit(1));  // a reload lowers the limit
  EXPECT_EQ(h->limit(), 1);
  EXPECT_EQ(h->active(), 2) << "open connections stay";
  h->Release(false, t1.group);
  EXPECT_EQ(h->TryAdmit(0, &t3), Admission::kFull) << "still at the new limit";
  h->Release(false, t2.group);
  EXPECT_EQ(h->TryAdmit(0, &t3), Admission::kAdmitted);
  h->Release(false, t3.group);
  EXPECT_EQ(h->peak(), 2);
}

TEST(HostRegistry, FailureWindowThenOneHalfOpenProbe) {
  HostRegistry registry;
  HostState* h = registry.GetOrCreate(Ep("192.0.2.1"), "mx", Limit(10, /*retry_s=*/120));
  const int64_t t0 = 1000 * kNanosPerSecond;
  h->RecordFailure(t0);
  EXPECT_EQ(h->consecutive_failures(), 1u);
  AdmitTicket t;
  EXPECT_EQ(h->TryAdmit(t0 + 119 * kNanosPerSecond, &t), Admission::kDown);
  EXPECT_FALSE(h->Reachable(t0 + 119 * kNanosPerSecond));
  const int64_t later = t0 + 120 * kNanosPerSecond;
  EXPECT_TRUE(h->Reachable(later));
  ASSERT_EQ(h->TryAdmit(later, &t), Admission::kProbe);
  AdmitTicket second;
  EXPECT_EQ(h->TryAdmit(later, &second), Admission::kDown) << "one probe at a time";
  h->Release(/*was_probe=*/true, t.group);  // probe ended without an outcome
  ASSERT_EQ(h->TryAdmit(later, &t), Admission::kProbe) << "so another may go";
  h->RecordSuccess(t.level, later);
  h->Release(false, t.group);
  EXPECT_EQ(h->consecutive_failures(), 0u);
  EXPECT_EQ(h->TryAdmit(later, &t), Admission::kAdmitted) << "recovered";
  h->Release(false, t.group);
}

TEST(HostRegistry, ProviderGroupIsSharedByPatternAndBoundsItsHosts) {
  HostRegistry registry;
  LimitGroup* g = registry.GetOrCreateGroup("*.provider.example", 3);
  EXPECT_EQ(registry.GetOrCreateGroup("*.provider.example", 2), g);
  EXPECT_EQ(g->limit(), 2) << "the newest configuration wins";
  HostConfig c = Limit(10);
  c.group = g;
  HostState* a = registry.GetOrCreate(Ep("192.0.2.1"), "mx1.provider.example", c);
  HostState* b = registry.GetOrCreate(Ep("192.0.2.2"), "mx2.provider.example", c);
  AdmitTicket ta, tb, tc;
  ASSERT_EQ(a->TryAdmit(0, &ta), Admission::kAdmitted);
  ASSERT_EQ(b->TryAdmit(0, &tb), Admission::kAdmitted);
  EXPECT_EQ(a->TryAdmit(0, &tc), Admission::kFull) << "the group is full, the host is not";
  EXPECT_EQ(a->active(), 1) << "a refused admission leaves no count behind";
  a->Release(false, ta.group);
  EXPECT_EQ(b->TryAdmit(0, &tc), Admission::kAdmitted);
  b->Release(false, tb.group);
  b->Release(false, tc.group);
  EXPECT_EQ(g->active(), 0);
  int groups = 0;
  registry.ForEachGroup([&](const LimitGroup&) { ++groups; });
  EXPECT_EQ(groups, 1);
}

TEST(HostRegistry, ConcurrentGetOrCreateAndAdmitNeverPassTheLimit) {
  HostRegistry registry;
  constexpr int kThreads = 4, kRounds = 20000, kLimit = 3;
  std::atomic<int> over{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        HostState* h = registry.GetOrCreate(Ep("192.0.2.1"), "mx", Limit(kLimit));
        AdmitTicket ticket;
        if (h->TryAdmit(0, &ticket) == Admission::kAdmitted) {
          if (h->active() > kLimit) over.fetch_add(1);
          h->Release(false, ticket.group);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(registry.size(), 1u);
  EXPECT_EQ(over.load(), 0);
  HostState* h = registry.Find(Ep("192.0.2.1"));
  EXPECT_LE(h->peak(), kLimit);
  EXPECT_EQ(h->active(), 0);
}

}  // namespace
}  // namespace mxsched
