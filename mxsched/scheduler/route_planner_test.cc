// RoutePlanner on its own: literal-address routes (no DNS needed; DNS routes are tested
// against a real dnsmasq in tests/resolver_test.cc), a manual clock and a seeded random.
#include "mxsched/scheduler/route_planner.h"

#include <memory>
#include <set>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::ConfigFrom;

class RoutePlannerTest : public ::testing::Test {
 protected:
  std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter> Plan(const std::string& config_text,
                                                              std::string_view domain) {
    config_ = ConfigFrom(config_text);
    return std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter>(planner_.Plan(*config_, domain));
  }
  static std::vector<std::string> Addresses(std::span<HostState* const> hosts) {
    std::vector<std::string> out;
    for (const HostState* h : hosts) out.push_back(h->endpoint().ToString());
    return out;
  }

  ManualClock clock_;
  SplitMixRandom random_{42};
  HostRegistry registry_;
  RoutePlanner planner_{&registry_, /*resolver=*/nullptr, &clock_, &random_};
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
  EXPECT_EQ(s->expires_at(), clock_.NowNanos() + 600 * kNanosPerSecond)
      << "a literal route lives max_dns_ttl";
  auto t = Plan(text, "ttl.example");
  EXPECT_EQ(t->expires_at(), clock_.NowNanos() + 30 * kNanosPerSecond) << "ttl= wins";
}

TEST_F(RoutePlannerTest, DomainsSharingHostsShareHostStateButShuffleTheirOwnOrder) {
  const std::string text =
      R"(routes = ( "192.0.2.1" "192.0.2.2" "192.0.2.3" "192.0.2.4" "192.0.2.5" "192.0.2.6" ))";
  const std::string one_tier =
      R"(routes = ( "smtp://192.0.2.1?pref=1" "smtp://192.0.2.2?pref=1" "smtp://192.0.2.3?pref=1"
                    "smtp://192.0.2.4?pref=1" "smtp://192.0.2.5?pref=1" "smtp://192.0.2.6?pref=1" ))";
  std::set<std::vector<std::string>> orders;
  const HostState* first = nullptr;
  for (int d = 0; d < 20; ++d) {
    auto s = Plan(one_tier, StrCat("d", d, ".example"));
    ASSERT_EQ(s->num_tiers(), 1u);
    orders.insert(Addresses(s->TierHosts(0)));
    for (const HostState* h : s->TierHosts(0)) {
      if (h->endpoint().ToString() == "192.0.2.1:25") {
        if (first == nullptr) first = h;
        EXPECT_EQ(h, first) << "one HostState per destination across domains";
      }
    }
  }
  EXPECT_GT(orders.size(), 1u) << "equal preferences are shuffled per domain (RFC 5321 §5.1)";
  EXPECT_EQ(registry_.size(), 6u);
  auto strict = Plan(text, "strict.example");
  EXPECT_EQ(strict->num_tiers(), 6u) << "a plain list is strictly ordered";
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
  EXPECT_EQ(s->expires_at(), clock_.NowNanos() + 30 * kNanosPerSecond) << "looked at again soon";
  auto mixed = Plan(R"(routes = ( "relay.example" "192.0.2.9" ))", "example.com");
  ASSERT_EQ(mixed->state(), RouteState::kReady) << "what resolved is used";
  EXPECT_EQ(Addresses(mixed->TierHosts(0)), (std::vector<std::string>{"192.0.2.9:25"}));
  EXPECT_EQ(mixed->expires_at(), clock_.NowNanos() + 30 * kNanosPerSecond);
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
