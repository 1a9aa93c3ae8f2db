// RoutePlanner on its own: literal-address routes (no DNS needed; DNS routes are tested
// against a real dnsmasq in tests/resolver_test.cc) and a manual clock.
#include "mxsched/scheduler/route_planner.h"

#include <algorithm>
#include <memory>
#include <set>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/domain_table.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::ConfigFrom;

class RoutePlannerTest : public ::testing::Test {
 protected:
  PlannedRoute Plan(const std::string& config_text, std::string_view domain) {
    config_ = ConfigFrom(config_text);
    return planner_.Plan(*config_, domain);
  }
  static std::vector<std::string> Addresses(std::span<HostState* const> hosts) {
    std::vector<std::string> out;
    for (const HostState* h : hosts) out.push_back(h->endpoint().ToString());
    return out;
  }

  ManualClock clock_;
  HostRegistry registry_;
  RoutePlanner planner_{&registry_, /*resolver=*/nullptr, &clock_};
  std::shared_ptr<const Config> config_;
};

TEST_F(RoutePlannerTest, TiersFollowThePreferenceRuleInOrder) {
  auto s = Plan(R"(routes = ( "smtp://192.0.2.3?pref=20" "192.0.2.1" "smtp://192.0.2.2?pref=0"
                              "192.0.2.4" ))",
                "example.com");
  ASSERT_EQ(s->state(), RouteState::kReady) << s->detail();
  // "192.0.2.1" has no pref after a pref=20 item: tier 21 (docs/DESIGN.md §1); pref=0 is
  // tier 0; "192.0.2.4" follows the highest tier before it: 22.
  ASSERT_EQ(s->num_tiers(), 4u);
  EXPECT_EQ(s->GetTier(0).key_tier, 0u);
  EXPECT_EQ(Addresses(s->TierHosts(0)), (std::vector<std::string>{"192.0.2.2:25"}));
  EXPECT_EQ(Addresses(s->TierHosts(1)), (std::vector<std::string>{"192.0.2.3:25"}));
  EXPECT_EQ(s->GetTier(2).key_tier, 21u);
  EXPECT_EQ(Addresses(s->TierHosts(3)), (std::vector<std::string>{"192.0.2.4:25"}));
  EXPECT_EQ(s->num_hosts(), 4u);
}

TEST_F(RoutePlannerTest, PortsLimitsAndTtlComeFromTheConfiguration) {
  clock_.AdvanceSeconds(100);
  const std::string text = R"(remote_smtp_port = 2525
                   max_dns_ttl = 600
                   routes = ( "192.0.2.1" "smtp://192.0.2.2?port=26&pref=9" )
                   Domain "ttl.example" { routes = ( "smtp://192.0.2.1?ttl=30" ) }
                   Host "192.0.2.1" { max_outbound_connections = 7 })";
  auto s = Plan(text, "example.com");
  ASSERT_EQ(s->state(), RouteState::kReady);
  EXPECT_EQ(Addresses(s->TierHosts(0)), (std::vector<std::string>{"192.0.2.1:2525"}));
  EXPECT_EQ(Addresses(s->TierHosts(1)), (std::vector<std::string>{"192.0.2.2:26"}));
  EXPECT_EQ(s->TierHosts(0)[0]->limit(), 7);
  EXPECT_EQ(s->TierHosts(1)[0]->limit(), kUnlimited);
  EXPECT_EQ(s->domain_limit(), 32);
  EXPECT_EQ(s.expires_at, clock_.NowNanos() + 600 * kNanosPerSecond)
      << "a literal route lives max_dns_ttl";
  auto t = Plan(text, "ttl.example");
  EXPECT_EQ(t.expires_at, clock_.NowNanos() + 30 * kNanosPerSecond) << "ttl= wins";
}

TEST_F(RoutePlannerTest, DomainsSharingHostsPlanEqualSnapshotsInACanonicalOrder) {
  // Equal routes must plan equal snapshots, whatever order the configuration (or a rotating
  // DNS server) lists them in, so RouteInterner can share one; the per-domain random order
  // of RFC 5321 §5.1 is the selector's walk (RotationStep), tested in selector_test.cc.
  const std::string one_tier =
      R"(routes = ( "smtp://192.0.2.3?pref=1" "smtp://192.0.2.1?pref=1" "smtp://192.0.2.2?pref=1" ))";
  const std::string reordered =
      R"(routes = ( "smtp://192.0.2.2?pref=1" "smtp://192.0.2.3?pref=1" "smtp://192.0.2.1?pref=1" ))";
  auto a = Plan(one_tier, "a.example");
  auto b = Plan(reordered, "b.example");
  ASSERT_EQ(a->num_tiers(), 1u);
  EXPECT_EQ(Addresses(a->TierHosts(0)),
            (std::vector<std::string>{"192.0.2.1:25", "192.0.2.2:25", "192.0.2.3:25"}));
  EXPECT_TRUE(a->SameContent(*b.snapshot));
  EXPECT_EQ(a->ContentHash(), b->ContentHash());
  EXPECT_EQ(a->TierHosts(0)[0], b->TierHosts(0)[0]) << "one HostState per destination";
  EXPECT_EQ(registry_.size(), 3u);
  auto limited = Plan(one_tier + "\nmax_outbound_connections = 3", "c.example");
  EXPECT_FALSE(a->SameContent(*limited.snapshot)) << "the domain limit is part of the route";
  const std::string text =
      R"(routes = ( "192.0.2.1" "192.0.2.2" "192.0.2.3" "192.0.2.4" "192.0.2.5" "192.0.2.6" ))";
  auto strict = Plan(text, "strict.example");
  EXPECT_EQ(strict->num_tiers(), 6u) << "a plain list is strictly ordered";
  EXPECT_FALSE(a->SameContent(*strict.snapshot));
}

TEST(RotationStep, IsCoprimeWithTheTierSizeAndVariesByDomain) {
  for (uint32_t n = 1; n <= kMaxAddressesPerRoute; ++n) {
    std::set<uint32_t> seen;
    for (uint64_t d = 0; d < 2000; ++d) {
      const uint32_t step = RotationStep(n, HashDomain(StrCat("d", d, ".example")));
      ASSERT_LT(step, std::max<uint32_t>(n, 2u));
      std::set<uint32_t> visited;  // the walk visits every host once per cycle
      for (uint32_t p = 0, i = 0; i < n; ++i, p = (p + step) % n) visited.insert(p);
      ASSERT_EQ(visited.size(), n) << "n=" << n << " step=" << step;
      seen.insert(step);
    }
    if (n >= 3) {
      EXPECT_GT(seen.size(), 1u) << "n=" << n << ": domains walk in different orders";
    }
  }
}

TEST_F(RoutePlannerTest, PreferIpv6PutsV6FirstWithinATier) {
  auto s = Plan(R"(prefer_ipv6_mxs = true
                   routes = ( "smtp://192.0.2.1?pref=1" "smtp://[2001:db8::1]?pref=1" ))",
                "example.com");
  ASSERT_EQ(s->state(), RouteState::kReady);
  ASSERT_EQ(s->num_tiers(), 2u) << "the family rank splits the tier, v6 first";
  EXPECT_EQ(Addresses(s->TierHosts(0)), (std::vector<std::string>{"[2001:db8::1]:25"}));
  EXPECT_EQ(Addresses(s->TierHosts(1)), (std::vector<std::string>{"192.0.2.1:25"}));
}

TEST_F(RoutePlannerTest, DnsItemsWithoutAResolverAreATemporaryFailureThatSaysWhy) {
  clock_.AdvanceSeconds(5);
  auto s = Plan(R"(routes = ( "__mx__" ))", "example.com");
  EXPECT_EQ(s->state(), RouteState::kTempFail);
  EXPECT_NE(s->detail().find("needs DNS, and no resolver is configured"), std::string::npos)
      << s->detail();
  EXPECT_EQ(s.expires_at, clock_.NowNanos() + 30 * kNanosPerSecond) << "looked at again soon";
  auto mixed = Plan(R"(routes = ( "relay.example" "192.0.2.9" ))", "example.com");
  ASSERT_EQ(mixed->state(), RouteState::kReady) << "what resolved is used";
  EXPECT_EQ(Addresses(mixed->TierHosts(0)), (std::vector<std::string>{"192.0.2.9:25"}));
  EXPECT_EQ(mixed.expires_at, clock_.NowNanos() + 30 * kNanosPerSecond);
  // ... and says why the other item is not in it (issue 24: `route` pointed at a detail
  // that was ""); a route whose items all resolved has none.
  EXPECT_EQ(mixed->detail(),
            "items without addresses: 4.4.3 relay.example: needs DNS, and no resolver is "
            "configured");
  EXPECT_EQ(Plan(R"(routes = ( "192.0.2.9" ))", "example.com")->detail(), "");
}

TEST_F(RoutePlannerTest, PushRoutesAreNotConnectedAndADuplicateKeepsItsBestPlace) {
  auto push = Plan(R"(routes = ( "apn://push.example/v1" ))", "example.com");
  EXPECT_EQ(push->state(), RouteState::kPermFail);
  EXPECT_EQ(push->detail(), "5.4.4 route has no SMTP destinations");
  auto dup = Plan(R"(routes = ( "192.0.2.1" "192.0.2.2" "192.0.2.1" ))", "example.com");
  ASSERT_EQ(dup->num_hosts(), 2u);
  EXPECT_EQ(Addresses(dup->TierHosts(0)), (std::vector<std::string>{"192.0.2.1:25"}));
}

}  // namespace
}  // namespace mxsched
