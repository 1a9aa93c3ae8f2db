// The io_uring connector and load driver against real peers on loopback: the in-process
// farm (server-side counts prove the limits) and raw TCP peers for malformed greetings.
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/io/connector.h"

#include <sys/resource.h>

#include "testbed/load.h"
#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using io::ConnectResult;
using testbed::Fault;
using testing::ConfigFrom;
using testing::ConnectOnce;
using testing::Ep;
using testing::StatsFor;

class ConnectorTest : public testing::LoopbackTest {
 protected:
  std::string Common() const { return StrCat("remote_smtp_port = ", port_, "\n"); }
  std::vector<Endpoint> Hosts(std::initializer_list<int> lasts) const {
    std::vector<Endpoint> v;
    for (int l : lasts) v.push_back(Ep(Ip(l), port_));
    return v;
  }
  testbed::LoadReport Load(Selector& s, std::vector<std::string> domains, int64_t sessions,
                      int concurrency, int hold_ms, int threads = 2) {
    testbed::LoadOptions o;
    o.domains = std::move(domains);
    o.sessions = sessions;
    o.concurrency = concurrency;
    o.hold_ms = hold_ms;
    o.threads = threads;
    o.max_seconds = 60;
    return testing::RunAccountedLoad(s, std::move(o));
  }
};

TEST_F(ConnectorTest, ConnectsAndReadsTheGreeting) {
  auto farm = testing::StartFarm(Hosts({1}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )"));
  Selector selector(config);
  ConnectResult r = ConnectOnce(selector, "example.com");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.greeting, "220 farm.mxsched.test ESMTP mxsched farm");
  EXPECT_GE(r.fd, 0);
  EXPECT_EQ(r.lease.endpoint(), Ep(Ip(1), port_));
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.lease.host().active(), 1) << "slot held while the socket is open";
  testing::CloseConnection(r);
}

TEST_F(ConnectorTest, StrictPreferenceWithHostLimitsServerSidePeak) {
  auto farm = testing::StartFarm(Hosts({1, 2, 3}));
  auto config = ConfigFrom(Common() + StrCat(R"(
    routes = ( )",
                                             Url(1, 10), " ", Url(2, 10), " ", Url(3, 20), R"( )
    max_outbound_connections = 1000
    Host ")",
                                             Ip(1), R"(" { max_outbound_connections = 3 }
    Host ")",
                                             Ip(2), R"(" { max_outbound_connections = 3 })"));
  Selector selector(config);
  testbed::LoadReport r = Load(selector, {"example.com"}, 400, 10, 20);
  auto stats = farm->Stats();
  EXPECT_EQ(StatsFor(stats, Ip(1))->peak, 3) << "tier 0 host filled to, never past, its limit";
  EXPECT_EQ(StatsFor(stats, Ip(2))->peak, 3);
  EXPECT_LE(StatsFor(stats, Ip(3))->peak, 4) << "tier 1 takes only the overflow (10 - 6)";
  EXPECT_GT(StatsFor(stats, Ip(3))->total, 0u);
  EXPECT_EQ(r.connected, 400);
}

TEST_F(ConnectorTest, EvenSpreadAcrossFourHosts) {
  auto farm = testing::StartFarm(Hosts({1, 2, 3, 4}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 5), Url(2, 5), Url(3, 5),
                                             Url(4, 5), " )\nmax_outbound_connections = 100"));
  Selector selector(config);
  testbed::LoadReport r = Load(selector, {"a.example", "b.example", "c.example"}, 4000, 8, 0);
  EXPECT_EQ(r.connected, 4000);
  // No host ever reaches a limit here, so each domain's rotation is a strict round robin:
  // every host gets 1000 sessions, give or take one per domain — a count, not a timing.
  for (int h = 1; h <= 4; ++h) {
    EXPECT_NEAR(static_cast<double>(StatsFor(farm->Stats(), Ip(h))->total), 1000, 3) << Ip(h);
  }
}

TEST_F(ConnectorTest, FailoverOnRefusedConnection) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kRefuse}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )"));
  Selector selector(config);
  ConnectResult r = ConnectOnce(selector, "example.com");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(2));
  testing::CloseConnection(r);
  const HostState* failed = selector.registry().Find(Ep(Ip(1), port_));
  ASSERT_NE(failed, nullptr);
  EXPECT_FALSE(failed->Reachable(selector.clock().NowNanos()));
  EXPECT_EQ(failed->consecutive_failures(), 1u);
}

TEST_F(ConnectorTest, FailoverOnConnectTimeout) {
  const Endpoint dead = Ep(Ip(1), port_);
  auto peer = std::make_unique<testing::FullBacklog>(dead);  // SYNs to Ip(1) are dropped
  auto farm = testing::StartFarm(Hosts({2}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )"));
  Selector selector(config);
  io::ConnectorOptions o;
  o.connect_timeout_ms = 200;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  peer.reset();
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(2));
  const HostState* timed_out = selector.registry().Find(dead);
  ASSERT_NE(timed_out, nullptr);
  EXPECT_EQ(timed_out->consecutive_failures(), 1u);
  testing::CloseConnection(r);
}

TEST_F(ConnectorTest, FailoverOnBlackholeBannerTimeout) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kBlackhole}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )"));
  Selector selector(config);
  io::ConnectorOptions o;
  o.banner_timeout_ms = 300;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.attempts, 2);
  EXPECT_GE(r.elapsed_nanos, 300'000'000);
  EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(2));
  testing::CloseConnection(r);
}

TEST_F(ConnectorTest, TimeoutsComeFromTheSelectorsConfigAfterAReload) {
  auto farm =
      testing::StartFarm(Hosts({1}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kBlackhole}}});
  const std::string routes = Common() + StrCat("routes = ( ", Url(1, 0), " )\n");
  Selector selector(ConfigFrom(routes + "banner_timeout = 1h\n"));
  selector.SetConfig(ConfigFrom(routes + "banner_timeout = 1s\n"));
  io::ConnectorOptions o;
  o.max_attempts = 1;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  EXPECT_NE(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_NE(r.reason.find("no greeting within 1000 ms"), std::string::npos)
      << "the reloaded banner_timeout applies: " << r.reason;
}

TEST_F(ConnectorTest, FailoverOn421Greeting) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kTempfail}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )"));
  Selector selector(config);
  ConnectResult r = ConnectOnce(selector, "example.com");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.attempts, 2);
  testing::CloseConnection(r);
  // With nowhere else to go, the 421 is the reason given.
  auto only =
      ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\nmx_failures_to_delay = 1"));
  Selector s2(only);
  ConnectResult r2 = ConnectOnce(s2, "example.com");
  EXPECT_EQ(r2.kind, ConnectResult::Kind::kDeferred);
  EXPECT_NE(r2.reason.find("greeting 421 4.3.2 farm fault"), std::string::npos) << r2.reason;
}

TEST_F(ConnectorTest, SlowBannerWithinTimeoutConnectsBeyondItFailsOver) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kSlow, 200}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )"));
  {
    Selector selector(config);
    io::ConnectorOptions o;
    o.banner_timeout_ms = 2000;
    ConnectResult r = ConnectOnce(selector, "example.com", o);
    ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
    EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(1));
    EXPECT_GE(r.elapsed_nanos, 200'000'000);
    testing::CloseConnection(r);
  }
  Selector selector(config);
  io::ConnectorOptions o;
  o.banner_timeout_ms = 50;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(2));
  testing::CloseConnection(r);
}

TEST_F(ConnectorTest, HostComesBackAfterHostFailureRetry) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kRefuse}}});
  auto config = ConfigFrom(
      Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 1), " )\n", "host_failure_retry = 1"));
  // The failure window runs on the selector's clock: a manual one, so the test moves time
  // forward instead of sleeping through the window.
  ManualClock clock;
  Selector selector(config, {.clock = &clock});
  ConnectResult r = ConnectOnce(selector, "example.com");
  EXPECT_EQ(r.lease.endpoint().address.ToString(), Ip(2));
  testing::CloseConnection(r);
  farm->SetFault(*IpAddress::Parse(Ip(1)), Fault{});
  ConnectResult still = ConnectOnce(selector, "example.com");
  EXPECT_EQ(still.lease.endpoint().address.ToString(), Ip(2)) << "inside the retry window";
  testing::CloseConnection(still);
  clock.AdvanceSeconds(2);  // past host_failure_retry
  ConnectResult back = ConnectOnce(selector, "example.com");
  ASSERT_EQ(back.kind, ConnectResult::Kind::kConnected) << back.reason;
  EXPECT_EQ(back.lease.endpoint().address.ToString(), Ip(1)) << "probe after the window";
  testing::CloseConnection(back);
}

TEST_F(ConnectorTest, AllMxsDownDefersWith421) {
  auto farm =
      testing::StartFarm(Hosts({1, 2}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kRefuse}},
                                         {*IpAddress::Parse(Ip(2)), {Fault::Kind::kRefuse}}});
  auto config = ConfigFrom(
      Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 0), " )\n", "mx_failures_to_delay = 1"));
  Selector selector(config);
  ConnectResult first = ConnectOnce(selector, "example.com");
  EXPECT_EQ(first.kind, ConnectResult::Kind::kDeferred);
  EXPECT_EQ(first.attempts, 2);
  EXPECT_EQ(first.reason.rfind("421 4.4.0 no MXs for this domain could be reached", 0), 0u)
      << first.reason;
  EXPECT_NE(first.reason.find("Connection refused"), std::string::npos) << first.reason;
  ConnectResult next = ConnectOnce(selector, "example.com");
  EXPECT_EQ(next.kind, ConnectResult::Kind::kDeferred);
  EXPECT_EQ(next.attempts, 0) << "no connection is tried while every MX is in its window";
  EXPECT_EQ(*next.defer_reason, DeferReason::kNoMxReachable);
}

TEST_F(ConnectorTest, AttemptsAreBoundedLikeHostsMaxTry) {
  auto farm =
      testing::StartFarm(Hosts({1, 2, 3}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kTempfail}},
                                            {*IpAddress::Parse(Ip(2)), {Fault::Kind::kTempfail}},
                                            {*IpAddress::Parse(Ip(3)), {Fault::Kind::kTempfail}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), Url(2, 0), Url(3, 0), " )"));
  Selector selector(config);
  io::ConnectorOptions o;
  o.max_attempts = 2;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  EXPECT_EQ(r.kind, ConnectResult::Kind::kFailed);
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(*r.last_outcome, Outcome::kGreetingRejected);
  EXPECT_NE(r.reason.find("2 attempt(s) failed"), std::string::npos) << r.reason;
}

TEST_F(ConnectorTest, Ipv6Loopback) {
  const uint16_t port = testing::FreePort();
  auto farm = testing::StartFarm({Ep("::1", port)});
  if (farm == nullptr) GTEST_SKIP() << "no IPv6 loopback here";
  auto config = ConfigFrom(StrCat("routes = ( \"smtp://[::1]?port=", port, "\" )"));
  Selector selector(config);
  ConnectResult r = ConnectOnce(selector, "example.com");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.lease.endpoint().ToString(), StrCat("[::1]:", port));
  testing::CloseConnection(r);
}

TEST_F(ConnectorTest, GlobalRouteSharedByManyDomainsKeepsTheHostLimit) {
  auto farm = testing::StartFarm(Hosts({1}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\n", "Host \"", Ip(1),
                                             "\" { max_outbound_connections = 5 }"));
  Selector selector(config);
  std::vector<std::string> domains;
  for (int i = 0; i < 100; ++i) domains.push_back(StrCat("d", i, ".example"));
  testbed::LoadReport r = Load(selector, domains, 3000, 40, 5);
  EXPECT_EQ(StatsFor(farm->Stats(), Ip(1))->peak, 5) << "server-side peak";
  EXPECT_GT(r.connected, 0);
  EXPECT_GT(r.deferred, 0) << "concurrency 40 against a limit of 5 must defer";
  EXPECT_EQ(r.deferrals["hosts_at_limit"], r.deferred);
  EXPECT_EQ(r.failed, 0);
}

TEST_F(ConnectorTest, WaitingForASlotInsteadOfDeferring) {
  auto farm = testing::StartFarm(Hosts({1}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\n", "Host \"", Ip(1),
                                             "\" { max_outbound_connections = 5 }"));
  Selector selector(config);
  testbed::LoadOptions o;
  for (int i = 0; i < 50; ++i) o.domains.push_back(StrCat("d", i, ".example"));
  o.sessions = 2000;
  o.concurrency = 40;
  o.threads = 2;
  o.hold_ms = 2;
  o.connector.slot_wait_ms = 20000;
  auto r = testbed::RunLoad(selector, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->connected, 2000) << "every session waited for a slot instead of deferring";
  EXPECT_EQ(r->deferred, 0);
  EXPECT_EQ(StatsFor(farm->Stats(), Ip(1))->peak, 5) << "and the limit still held";
  EXPECT_EQ(selector.waiting(), 0u);
}

TEST_F(ConnectorTest,
       SlotsAreServedFirstComeFirstServedAndNoWaiterTimesOutWhileLaterOnesAreServed) {
  // docs/DESIGN.md §5 against the farm: 60 sessions for three domains of one route contend for 2
  // slots on a host that greets after 20 ms; each waits at most 300 ms. The farm serves
  // ~2 per 20 ms, so some are served and some may time out. Fair hand-off means service
  // follows arrival (within the 2 slots' overlap), and no session is deferred after a later
  // one was served. Order is checked by callback sequence, not by clock.
  auto farm =
      testing::StartFarm(Hosts({1}), {{*IpAddress::Parse(Ip(1)), {Fault::Kind::kSlow, 20}}});
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\n", "Host \"", Ip(1),
                                             "\" { max_outbound_connections = 2 }"));
  Selector selector(config);
  auto loop = io::Loop::Create(1024);
  ASSERT_TRUE(loop.ok()) << loop.status();
  io::ConnectorOptions o;
  o.slot_wait_ms = 300;
  o.banner_timeout_ms = 5000;
  o.connect_timeout_ms = 5000;
  constexpr int kSessions = 60;
  struct Done {
    int index;
    ConnectResult::Kind kind;
  };
  std::vector<Done> order;  // callback order
  {
    io::Connector connector(loop->get(), &selector, o);
    // Like a delivery worker: 20 in flight, and each session that ends starts the next, so
    // new arrivals keep coming while older ones wait (the issue 13 scenario: the newcomer
    // used to take the slot its predecessor just freed, ahead of the woken waiter).
    int next = 0;
    std::function<void()> start_one = [&] {
      const int i = next++;
      connector.Connect(StrCat("d", i % 3, ".example"), [&, i](ConnectResult r) {
        order.push_back({i, r.kind});
        if (r.kind == ConnectResult::Kind::kConnected) testing::CloseConnection(r);
        if (next < kSessions) start_one();
      });
    };
    while (next < 20) start_one();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (connector.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
      (*loop)->RunOnce(100);
    }
    ASSERT_EQ(connector.in_flight(), 0u);
  }
  ASSERT_EQ(order.size(), static_cast<size_t>(kSessions));
  std::vector<int> served;  // indices of connected sessions, in order of service
  int deferred = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    if (order[k].kind == ConnectResult::Kind::kConnected) {
      served.push_back(order[k].index);
      continue;
    }
    ASSERT_EQ(order[k].kind, ConnectResult::Kind::kDeferred);
    ++deferred;
    // Nobody who arrived later than this waiter had been served when it gave up.
    for (int s : served)
      EXPECT_LT(s, order[k].index)
          << "session " << s << " arrived after " << order[k].index << " but was served first";
  }
  ASSERT_GE(served.size(), 4u) << "too few served to say anything about order";
  int max_before = -1;  // FIFO: no one overtakes more than the other slot's overlap
  for (size_t k = 2; k < served.size(); ++k) {
    max_before = std::max(max_before, served[k - 2]);
    EXPECT_GT(served[k], max_before) << "served #" << k << " arrived before #" << k - 2;
  }
  EXPECT_LE(StatsFor(farm->Stats(), Ip(1))->peak, 2);
  EXPECT_EQ(selector.waiting(), 0u);
  RecordProperty("served", static_cast<int>(served.size()));
  RecordProperty("deferred", deferred);
}

TEST_F(ConnectorTest, SlotWaitIsBoundedAndEndsDeferred) {
  auto farm = testing::StartFarm(Hosts({1}));
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\n", "Host \"", Ip(1),
                                             "\" { max_outbound_connections = 1 }"));
  Selector selector(config);
  ConnectResult holder = ConnectOnce(selector, "example.com");
  ASSERT_EQ(holder.kind, ConnectResult::Kind::kConnected);
  io::ConnectorOptions o;
  o.slot_wait_ms = 200;
  const auto start = std::chrono::steady_clock::now();
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  EXPECT_EQ(r.kind, ConnectResult::Kind::kDeferred);
  EXPECT_EQ(*r.defer_reason, DeferReason::kHostsAtLimit);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(200));
  EXPECT_EQ(selector.waiting(), 0u) << "the expired waiter was withdrawn";
  testing::CloseConnection(holder);
}

struct BadGreeting {
  const char* name;
  std::vector<std::string> chunks;
  Outcome outcome;
  const char* says;
};

class BadGreetingTest : public ConnectorTest, public ::testing::WithParamInterface<BadGreeting> {};

TEST_P(BadGreetingTest, FailsTheHostWithAClearReason) {
  const BadGreeting& c = GetParam();
  testing::RawPeer peer(Ep(Ip(1), port_), c.chunks);
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )"));
  Selector selector(config);
  io::ConnectorOptions o;
  o.banner_timeout_ms = 500;
  o.max_attempts = 1;
  ConnectResult r = ConnectOnce(selector, "example.com", o);
  EXPECT_EQ(r.kind, ConnectResult::Kind::kFailed);
  ASSERT_TRUE(r.last_outcome.has_value());
  EXPECT_EQ(*r.last_outcome, c.outcome);
  EXPECT_NE(r.reason.find(c.says), std::string::npos) << r.reason;
}

INSTANTIATE_TEST_SUITE_P(
    Greetings, BadGreetingTest,
    ::testing::Values(
        BadGreeting{"garbage", {"HTTP/1.1 200 OK\r\n"}, Outcome::kProtocolError, "not an SMTP"},
        BadGreeting{
            "overlong", {"220 " + std::string(5000, 'x')}, Outcome::kProtocolError, "longer than"},
        BadGreeting{"closed", {"220-partial\r\n"}, Outcome::kTimedOut, "no greeting within"},
        BadGreeting{
            "rejected", {"554 5.7.1 no thanks\r\n"}, Outcome::kGreetingRejected, "greeting 554"}),
    [](const auto& info) { return info.param.name; });

TEST_F(ConnectorTest, GreetingSplitAcrossManyReads) {
  std::vector<std::string> chunks;
  for (char c : std::string("220-mx first\r\n220 mx second\r\n")) chunks.emplace_back(1, c);
  testing::RawPeer peer(Ep(Ip(1), port_), chunks, /*gap_ms=*/2);
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )"));
  Selector selector(config);
  ConnectResult r = ConnectOnce(selector, "example.com");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  EXPECT_EQ(r.greeting, "220 mx first");
  testing::CloseConnection(r);
}

// DESIGN §1 rule 3: a connection closed with QUIT gives its slot back once the server has
// closed its side, not when its 221 is read — a server that counts until it closes would
// otherwise see limit + 1. This server answers QUIT and keeps the socket open a while: no
// second connection may arrive in that while, and one arrives once it closes.
TEST_F(ConnectorTest, AQuitConnectionsSlotGoesBackWhenTheServerClosesNotAtIts221) {
  const Endpoint ep = Ep(Ip(1), port_);
  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss;
  const socklen_t len = ep.ToSockaddr(&ss);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&ss), len), 0);
  ASSERT_EQ(listen(lfd, 16), 0);
  std::atomic<bool> early{false}, second{false}, quit_seen{false};
  auto wait_readable = [](int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
  };
  std::thread server([&] {
    const int a = accept(lfd, nullptr, nullptr);
    if (a < 0) return;
    send(a, "220 hi\r\n", 8, MSG_NOSIGNAL);
    std::string in;
    char buf[256];
    for (int i = 0; i < 100 && in.find("QUIT\r\n") == std::string::npos; ++i) {
      if (!wait_readable(a, 10'000)) break;
      const ssize_t n = recv(a, buf, sizeof(buf), 0);
      if (n <= 0) break;
      in.append(buf, n);
    }
    quit_seen = in.find("QUIT\r\n") != std::string::npos;
    send(a, "221 bye\r\n", 9, MSG_NOSIGNAL);
    // Still open: the client must not have reused the slot (300 ms, well inside the
    // connector's 1 s quit timer).
    early = wait_readable(lfd, 300);
    close(a);
    if (!wait_readable(lfd, 30'000)) return;
    const int b = accept(lfd, nullptr, nullptr);
    if (b < 0) return;
    second = true;
    send(b, "220 hi\r\n", 8, MSG_NOSIGNAL);
    for (int i = 0; i < 100 && wait_readable(b, 10'000) && recv(b, buf, sizeof(buf), 0) > 0;) {
      ++i;
    }
    close(b);
  });
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\n", "Host \"", Ip(1),
                                             "\" { max_outbound_connections = 1 }"));
  Selector selector(config);
  auto loop = io::Loop::Create(256);
  ASSERT_TRUE(loop.ok()) << loop.status();
  int finished = 0;
  {
    io::Connector connector(loop->get(), &selector, {.slot_wait_ms = 30'000});
    connector.Connect("example.com", [&](ConnectResult r) {
      ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
      connector.Park(std::move(r));  // reuse off: QUIT at once
      ++finished;
    });
    connector.Connect("example.com", [&](ConnectResult r) {  // waits for the one slot
      EXPECT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
      testing::CloseConnection(r);
      ++finished;
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while ((finished < 2 || connector.parked() > 0) &&
           std::chrono::steady_clock::now() < deadline) {
      (*loop)->RunOnce(100);
    }
    EXPECT_EQ(finished, 2);
  }
  server.join();
  close(lfd);
  EXPECT_TRUE(quit_seen);
  EXPECT_FALSE(early) << "a second connection arrived while the server still held the first";
  EXPECT_TRUE(second);
}


// A server that says 421 on a connection and closes it only a while later. Connection A
// is greeted and sends its 421 — as the reply to RSET, or (`idle_421`) unasked once `go` is
// set — then stays open 300 ms watching for a second connection (`early`); then it closes,
// and B is greeted and served to its EOF.
struct RsetRefuser {
  explicit RsetRefuser(const Endpoint& ep, bool idle = false) : idle_421(idle) {
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_storage ss;
    const socklen_t len = ep.ToSockaddr(&ss);
    EXPECT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&ss), len), 0);
    EXPECT_EQ(listen(lfd, 16), 0);
    thread = std::thread([this] { Serve(); });
  }
  ~RsetRefuser() {
    thread.join();
    close(lfd);
  }
  static bool Readable(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
  }
  // Reads until `what` is in (bounded): true if it came.
  static bool ReadUntil(int fd, std::string_view what) {
    std::string in;
    char buf[256];
    for (int i = 0; i < 100 && in.find(what) == std::string::npos; ++i) {
      if (!Readable(fd, 10'000)) return false;
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      in.append(buf, n);
    }
    return in.find(what) != std::string::npos;
  }
  void Serve() {
    const int a = accept(lfd, nullptr, nullptr);
    if (a < 0) return;
    send(a, "220 a\r\n", 7, MSG_NOSIGNAL);
    if (idle_421) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!go && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } else {
      rset_seen = ReadUntil(a, "RSET\r\n");
    }
    send(a, "421 4.3.2 closing soon\r\n", 24, MSG_NOSIGNAL);
    early = Readable(lfd, 300);  // well inside the connector's 1 s quit wait
    close(a);
    if (!Readable(lfd, 30'000)) return;
    const int b = accept(lfd, nullptr, nullptr);
    if (b < 0) return;
    second = true;
    send(b, "220 b\r\n", 7, MSG_NOSIGNAL);
    ReadUntil(b, "never");  // to EOF
    close(b);
  }
  const bool idle_421;
  int lfd = -1;
  std::atomic<bool> go{false}, early{false}, second{false}, rset_seen{false};
  std::thread thread;
};

// DESIGN §1 rule 3 with reuse (§13 rule 6): a stale reused connection whose RSET is refused
// gives its slot back once the server has closed it, not at the refusal: the session's
// fresh connection (limit 1) must not reach the server while it still holds the stale one.
// Both ways: the connector's own RSET, and the embedder's pipelined RSET (Connector::Stale).
TEST_F(ConnectorTest, AStaleConnectionsSlotGoesBackWhenTheServerClosesIt) {
  for (const bool pipelined : {false, true}) {
    SCOPED_TRACE(pipelined ? "pipelined RSET, Connector::Stale" : "the connector's RSET");
    port_ = testing::FreePort();
    RsetRefuser server(Ep(Ip(1), port_));
    auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\nidle_timeout = 30\n",
                                               "Host \"", Ip(1), "\" { max_outbound_connections = 1 }"));
    Selector selector(config);
    auto loop = io::Loop::Create(256);
    ASSERT_TRUE(loop.ok()) << loop.status();
    int finished = 0;
    std::string fresh_greeting;
    {
      io::Connector connector(loop->get(), &selector, {.slot_wait_ms = 30'000, .reuse = true});
      auto second = [&](ConnectResult r) {
        EXPECT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
        EXPECT_FALSE(r.reused);
        fresh_greeting = r.greeting;
        testing::CloseConnection(r);
        ++finished;
      };
      connector.Connect("example.com", [&](ConnectResult r) {
        ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
        connector.Park(std::move(r), 1, {.rset_with_transaction = pipelined});
        connector.Connect("example.com", [&](ConnectResult r2) {
          if (!r2.rset_pending) return second(std::move(r2));
          // The embedder's pipelined group starts with RSET; its reply is the 421.
          ASSERT_EQ(write(r2.fd, "RSET\r\n", 6), 6);
          EXPECT_TRUE(RsetRefuser::ReadUntil(r2.fd, "421"));
          connector.Stale(std::move(r2), second);
        });
      });
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while ((finished < 1 || connector.parked() > 0 || connector.in_flight() > 0) &&
             std::chrono::steady_clock::now() < deadline) {
        (*loop)->RunOnce(100);
      }
      EXPECT_EQ(finished, 1);
    }
    EXPECT_TRUE(server.rset_seen);
    EXPECT_FALSE(server.early) << "the fresh connection came while the server held the stale one";
    EXPECT_TRUE(server.second);
    EXPECT_EQ(fresh_greeting, "220 b");
  }
}


// The same for a parked connection the server ends with a 421 while it is idle: QUIT, and
// the slot goes back at the server's EOF; a session that asks meanwhile waits for it.
TEST_F(ConnectorTest, AParkedConnectionEndedBy421KeepsItsSlotUntilTheServerCloses) {
  RsetRefuser server(Ep(Ip(1), port_), /*idle=*/true);
  auto config = ConfigFrom(Common() + StrCat("routes = ( ", Url(1, 0), " )\nidle_timeout = 30\n",
                                             "Host \"", Ip(1), "\" { max_outbound_connections = 1 }"));
  Selector selector(config);
  auto server_closed = [&] {
    return selector.stats().Collect().reuse[static_cast<size_t>(ReuseEvent::kServerClosed)];
  };
  auto loop = io::Loop::Create(256);
  ASSERT_TRUE(loop.ok()) << loop.status();
  bool parked = false, done = false;
  std::string greeting;
  {
    io::Connector connector(loop->get(), &selector, {.slot_wait_ms = 30'000, .reuse = true});
    connector.Connect("example.com", [&](ConnectResult r) {
      ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
      connector.Park(std::move(r));
      parked = true;
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!parked && std::chrono::steady_clock::now() < deadline) (*loop)->RunOnce(100);
    ASSERT_TRUE(parked);
    server.go = true;  // the 421 comes now
    while (server_closed() == 0 && std::chrono::steady_clock::now() < deadline) {
      (*loop)->RunOnce(100);
    }
    ASSERT_EQ(server_closed(), 1u);
    connector.Connect("example.com", [&](ConnectResult r) {
      EXPECT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
      EXPECT_FALSE(r.reused);
      greeting = r.greeting;
      testing::CloseConnection(r);
      done = true;
    });
    while ((!done || connector.parked() > 0) && std::chrono::steady_clock::now() < deadline) {
      (*loop)->RunOnce(100);
    }
    EXPECT_TRUE(done);
  }
  EXPECT_FALSE(server.early) << "a new connection came while the server held the one it ended";
  EXPECT_TRUE(server.second);
  EXPECT_EQ(greeting, "220 b");
}

}  // namespace
}  // namespace mxsched
