// docs/DESIGN.md §6: which replies are busy, the adaptive limit's control law, provider patterns
// and their precedence. Time is injected (ManualClock): no sleeps.
#include "mxsched/scheduler/feedback.h"

#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/host_registry.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::ConfigFrom;
using testing::SelectorFixture;

SmtpReply Reply(int code, std::string_view text) { return SmtpReply::FromText(code, text); }

TEST(BusyReplies, TooManyConnectionsAndTryLaterAreBusy) {
  EXPECT_EQ(ClassifyReply(Reply(421, "4.7.0 too many connections from your IP")).cls,
            ReplyClass::kBusy);
  EXPECT_EQ(ClassifyReply(Reply(421, "Service not available")).cls, ReplyClass::kBusy);
  EXPECT_EQ(ClassifyReply(Reply(451, "4.3.2 system not accepting network messages")).cls,
            ReplyClass::kBusy);
  EXPECT_EQ(ClassifyReply(Reply(450, "4.7.1 rate limited")).cls, ReplyClass::kBusy);
  EXPECT_EQ(ClassifyReply(Reply(451, "Server busy, try again later")).rule, BusyRule::kText);
  EXPECT_EQ(ClassifyReply(Reply(452, "4.4.5 insufficient system storage")).cls, ReplyClass::kBusy);
}

TEST(BusyReplies, PermanentAndOtherTemporaryRepliesAreNotBusy) {
  EXPECT_EQ(ClassifyReply(Reply(554, "5.7.1 too many connections")).cls, ReplyClass::kRejected);
  EXPECT_EQ(ClassifyReply(Reply(450, "4.2.1 mailbox unavailable")).cls, ReplyClass::kRejected);
  EXPECT_EQ(ClassifyReply(Reply(220, "mx.example ESMTP")).cls, ReplyClass::kPositive);
}

TEST(BusyReplies, EnhancedStatusIsSplitOnlyWhenWellFormed) {
  SmtpReply r = Reply(421, "4.7.0 too many");
  EXPECT_EQ(r.enhanced, "4.7.0");
  EXPECT_EQ(r.text, "too many");
  EXPECT_EQ(r.ToString(), "421 4.7.0 too many");
  EXPECT_EQ(Reply(421, "4.7 nope").enhanced, "");
  EXPECT_EQ(Reply(421, "44.7.0 nope").enhanced, "");
}

// One host with a configured limit, literal route: the control law seen through Leases.
struct OneHost {
  explicit OneHost(std::string extra = "")
      : f(StrCat("routes = ( \"127.0.9.1\" )\nmax_outbound_connections = 1000\n", extra)) {}
  // Opens n leases (each reported connected), returns them.
  std::vector<Lease> Open(int n) {
    std::vector<Lease> v;
    for (int i = 0; i < n; ++i) {
      AcquireResult r = f.selector.Acquire("example.com");
      if (!r.ok()) break;
      v.push_back(r.TakeLease());
      v.back().Report(Outcome::kConnected);
    }
    return v;
  }
  const HostState& host() {
    return *f.selector.registry().Find(Endpoint{*IpAddress::Parse("127.0.9.1"), 25});
  }
  SelectorFixture f;
};

TEST(AdaptiveLimit, BusyReplyLowersTheLimitBelowTheOpenConnectionsWithoutFailingTheHost) {
  OneHost h;
  std::vector<Lease> open = h.Open(10);
  ASSERT_EQ(open.size(), 10u);
  AcquireResult r = h.f.selector.Acquire("example.com");
  ASSERT_TRUE(r.ok());
  Lease busy = r.TakeLease();
  EXPECT_EQ(busy.Report(Reply(421, "4.7.0 too many connections from your IP")), Outcome::kBusy);
  EXPECT_EQ(h.host().limit(), 10) << "11 were open when the 11th was refused";
  EXPECT_EQ(h.host().configured_limit(), kUnlimited);
  EXPECT_TRUE(h.host().Reachable(h.f.clock.NowNanos())) << "a full receiver is not a dead one";
  EXPECT_EQ(h.host().consecutive_failures(), 0u);
  busy.Release();
  EXPECT_FALSE(h.f.selector.Acquire("example.com").ok()) << "10 open, limit 10";
  const std::string why = h.host().last_move().ToString(h.f.clock.NowNanos());
  EXPECT_NE(why.find("lowered to 10 by 421 4.7.0"), std::string::npos) << why;
}

TEST(AdaptiveLimit, LoweringBelowActiveOnlyStopsNewAdmissions) {
  OneHost h;
  std::vector<Lease> open = h.Open(6);
  // Three busy replies in a row on the open connections (reported later by the embedder).
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(open[i].Report(Reply(421, "4.7.0 too many")), Outcome::kBusy);
  EXPECT_EQ(h.host().limit(), 3);
  EXPECT_EQ(h.host().active(), 6) << "nothing is torn down";
  EXPECT_FALSE(h.f.selector.Acquire("example.com").ok());
  open.resize(2);  // releases four
  EXPECT_TRUE(h.f.selector.Acquire("example.com").ok()) << "2 open, limit 3";
}

TEST(AdaptiveLimit, NeverBelowTheFloor) {
  OneHost h("adaptive_concurrency_floor = 4\n");
  std::vector<Lease> open = h.Open(8);
  for (auto& l : open) l.Report(Reply(421, "too many connections"));
  EXPECT_EQ(h.host().limit(), 4);
}

TEST(AdaptiveLimit, BusyWithASingleConnectionOpenMarksTheHostFailed) {
  OneHost h;
  AcquireResult r = h.f.selector.Acquire("example.com");
  ASSERT_TRUE(r.ok());
  Lease l = r.TakeLease();
  EXPECT_EQ(l.Report(Reply(421, "4.3.2 try later")), Outcome::kGreetingRejected)
      << "a receiver that refuses even one connection is failed (Postfix's failed cohort)";
  EXPECT_FALSE(h.host().Reachable(h.f.clock.NowNanos()));
}

TEST(AdaptiveLimit, TurnedOffBusyRepliesMarkTheHostFailedAsBefore) {
  OneHost h("adaptive_concurrency = false\n");
  std::vector<Lease> open = h.Open(5);
  EXPECT_EQ(open[0].Report(Reply(421, "4.7.0 too many connections")), Outcome::kGreetingRejected);
  EXPECT_EQ(h.host().limit(), kUnlimited);
  EXPECT_FALSE(h.host().Reachable(h.f.clock.NowNanos()));
}

TEST(AdaptiveLimit, PerHostSettingsWinOverGlobal) {
  OneHost h("adaptive_concurrency = false\nHost \"127.0.9.1\" { adaptive_concurrency = true }\n");
  std::vector<Lease> open = h.Open(5);
  EXPECT_EQ(open[0].Report(Reply(421, "4.7.0 too many connections")), Outcome::kBusy);
  EXPECT_EQ(h.host().limit(), 4);
}

TEST(AdaptiveLimit, SuccessesAtTheLimitRaiseItBackNeverAboveTheConfiguredOne) {
  OneHost h("Host \"127.0.9.1\" { max_outbound_connections = 6 }\n");
  std::vector<Lease> open = h.Open(6);
  open[5].Report(Reply(421, "4.7.0 too many"));
  open[4].Report(Reply(421, "4.7.0 too many"));
  open.resize(4);
  ASSERT_EQ(h.host().limit(), 4);
  // Keep the host full: release one, open one, many times over.
  for (int i = 0; i < 200 && h.host().limit() < 6; ++i) {
    open.erase(open.begin());
    std::vector<Lease> more = h.Open(h.host().limit() - static_cast<int>(open.size()));
    for (auto& l : more) open.push_back(std::move(l));
  }
  EXPECT_EQ(h.host().limit(), 6) << "climbs back to the configured limit";
  for (int i = 0; i < 200; ++i) {
    open.erase(open.begin());
    for (auto& l : h.Open(6 - static_cast<int>(open.size()))) open.push_back(std::move(l));
  }
  EXPECT_EQ(h.host().limit(), 6) << "and never above it";
  EXPECT_NE(h.host().last_move().ToString(0).find("raised to 6"), std::string::npos);
}

TEST(AdaptiveLimit, AnIdleHostDoesNotTalkItselfUp) {
  OneHost h;
  std::vector<Lease> open = h.Open(5);
  open[4].Report(Reply(421, "4.7.0 too many"));
  open.clear();
  ASSERT_EQ(h.host().limit(), 4);
  for (int i = 0; i < 100; ++i) h.Open(1);  // one at a time: far below the limit
  EXPECT_EQ(h.host().limit(), 4);
}

TEST(AdaptiveLimit, FailedProbesBackOffExponentially) {
  OneHost h;
  std::vector<Lease> open = h.Open(5);
  open[4].Report(Reply(421, "4.7.0 too many"));
  open.resize(4);
  ASSERT_EQ(h.host().limit(), 4);
  // A receiver that takes exactly 4: each raise to 5 is refused at once. Count the successes
  // between refusals: 4, 8, 16, 32, 64, 128, 256, 256 (capped at 64 × limit).
  std::vector<int> gaps;
  int successes = 0;
  for (int i = 0; i < 5000 && gaps.size() < 8; ++i) {
    open.erase(open.begin());
    for (AcquireResult r = h.f.selector.Acquire("example.com"); r.ok();
         r = h.f.selector.Acquire("example.com")) {
      Lease l = r.TakeLease();
      if (h.host().active() > 4) {  // the 5th connection: the receiver says no
        EXPECT_EQ(l.Report(Reply(421, "4.7.0 too many")), Outcome::kBusy);
        gaps.push_back(successes);
        successes = 0;
        continue;  // `l` is released here
      }
      l.Report(Outcome::kConnected);
      ++successes;
      open.push_back(std::move(l));
    }
  }
  std::vector<int> want = {4, 8, 16, 32, 64, 128, 256, 256};
  ASSERT_EQ(gaps.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(gaps[i], want[i], 2) << i;
}

TEST(AdaptiveLimit, ReloadKeepsTheLearnedLimitClampedToTheNewConfiguredOne) {
  OneHost h("Host \"127.0.9.1\" { max_outbound_connections = 20 }\n");
  std::vector<Lease> open = h.Open(10);
  open[9].Report(Reply(421, "4.7.0 too many"));
  open.clear();
  ASSERT_EQ(h.host().limit(), 9);
  h.f.selector.SetConfig(ConfigFrom(
      "routes = ( \"127.0.9.1\" )\nHost \"127.0.9.1\" { max_outbound_connections = 5 }\n"));
  h.f.selector.RefreshAll();
  h.Open(0);
  (void)h.f.selector.Describe("example.com");
  EXPECT_EQ(h.host().limit(), 5);
  EXPECT_EQ(h.host().configured_limit(), 5);
}

// --- provider patterns and precedence (Config) ---------------------------------------------

TEST(ProviderPatterns, MostSpecificPatternWinsAndLimitsAreShared) {
  auto c = ConfigFrom(R"(
    Host "*.outlook.com" { max_outbound_connections = 50 host_failure_retry = 10 }
    Host "*.mail.protection.outlook.com" { max_outbound_connections = 20 }
    Host "mx1.mail.protection.outlook.com" { max_outbound_connections = 3 }
    Host "192.0.2.9" { max_outbound_connections = 2 adaptive_concurrency_floor = 2 }
  )");
  const IpAddress a = *IpAddress::Parse("192.0.2.1");
  HostPolicy p = c->PolicyFor("x.mail.protection.outlook.com", a);
  ASSERT_NE(p.provider, nullptr);
  EXPECT_EQ(p.provider->pattern, "*.mail.protection.outlook.com") << "most literal characters";
  EXPECT_EQ(p.limit, kUnlimited) << "a pattern's limit is shared, not per address";
  EXPECT_EQ(p.host_failure_retry_s, 120u) << "the most specific pattern sets no retry";
  p = c->PolicyFor("mx1.mail.protection.outlook.com", a);
  EXPECT_EQ(p.limit, 3) << "the exact name's per-address limit...";
  EXPECT_EQ(p.provider->pattern, "*.mail.protection.outlook.com") << "...and the shared one";
  p = c->PolicyFor("mx1.mail.protection.outlook.com", *IpAddress::Parse("192.0.2.9"));
  EXPECT_EQ(p.limit, 2) << "the IP stanza wins over the name";
  EXPECT_EQ(p.adaptive_floor, 2);
  p = c->PolicyFor("smtp.outlook.com", a);
  EXPECT_EQ(p.provider->pattern, "*.outlook.com");
  EXPECT_EQ(p.host_failure_retry_s, 10u);
  EXPECT_EQ(c->PolicyFor("outlook.com", a).provider, nullptr) << "'*.' needs a label";
}

TEST(ProviderPatterns, BadPatternsAndDuplicatesAreErrors) {
  EXPECT_FALSE(ParseConfig("Host \"*\" { max_outbound_connections = 1 }", "t").ok());
  EXPECT_FALSE(ParseConfig("Host \"*.a b\" { max_outbound_connections = 1 }", "t").ok());
  EXPECT_FALSE(ParseConfig("Host \"*.x\" { }\nHost \"*.X\" { }", "t").ok());
  EXPECT_FALSE(ParseConfig("prohibited_mx_names = ( \"*\" )", "t").ok());
  EXPECT_FALSE(ParseConfig("adaptive_concurrency_floor = 0", "t").ok());
  auto c = ConfigFrom("prohibited_mx_names = ( \"*.Example\" \"bad.test\" )");
  EXPECT_NE(c->ProhibitedMxName("mx.example"), nullptr);
  EXPECT_NE(c->ProhibitedMxName("bad.test"), nullptr);
  EXPECT_EQ(c->ProhibitedMxName("good.test"), nullptr);
}

}  // namespace
}  // namespace mxsched
