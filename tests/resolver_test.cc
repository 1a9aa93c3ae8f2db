// DNS against a real dnsmasq on loopback: MX with TTLs, implicit MX, null MX, NXDOMAIN,
// timeouts, TTL expiry, refresh, CNAMEs, prohibited addresses — and the connector waiting
// for resolution end to end with the farm.
#include "mxsched/scheduler/route_planner.h"  // kMaxMxPerDomain
#include "mxsched/io/resolver.h"

#include "mxsched/io/connector.h"
#include "testbed/load.h"
#include "tests/dns_peer.h"
#include "tests/dnsmasq.h"
#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::ConfigFrom;

class ResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::DnsmasqBinary() == nullptr) {
      GTEST_SKIP() << "dnsmasq not installed (Debian dnsmasq-base); tools/dev.sh installs it";
    }
    net_ = testing::LoopbackPrefix();
    auto loop = io::Loop::Create(256);
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
  }
  void TearDown() override {
    client_.reset();
    selector_.reset();
  }

  void StartDns(std::vector<std::string> records, int ttl = 300) {
    dns_ = std::make_unique<testing::Dnsmasq>(std::move(records), ttl);
    ASSERT_TRUE(dns_->ok()) << "dnsmasq did not start";
    Connect(dns_->server());
  }
  void Connect(const std::string& server, int timeout_ms = 1500) {
    auto c = io::DnsClient::Create(loop_.get(), &cache_, server, timeout_ms, 2);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }
  // Tests resolve to loopback addresses, which the default prohibited_hosts refuses: they
  // opt in explicitly unless the test is about prohibited_hosts itself.
  void MakeSelector(const std::string& config_text) {
    const bool opt_in = config_text.find("prohibited_hosts") == std::string::npos;
    config_ = ConfigFrom(config_text + (opt_in ? "\nprohibited_hosts = ( )\n" : ""));
    selector_ = std::make_unique<Selector>(config_, SelectorOptions{.resolver = &cache_});
  }
  // Runs the loop until the domain's first host is `ip` (at most 10 s); returns that host.
  std::string WaitForFirstHost(const std::string& domain, const std::string& ip) {
    std::string host;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (host != ip && std::chrono::steady_clock::now() < deadline) {
      DomainView v = selector_->Describe(domain);
      if (v.state == RouteState::kReady) host = v.tiers[0].hosts[0].endpoint.address.ToString();
      loop_->RunOnce(20);
    }
    return host;
  }
  // Runs the loop until the domain's route is no longer resolving (at most 10 s).
  DomainView Resolve(const std::string& domain) {
    DomainView v = selector_->Describe(domain);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (v.state == RouteState::kPending && std::chrono::steady_clock::now() < deadline) {
      loop_->RunOnce(50);
      v = selector_->Describe(domain);
    }
    return v;
  }
  std::string Ip(int last) const { return StrCat(net_, last); }

  std::string net_;
  std::unique_ptr<io::Loop> loop_;
  io::DnsCache cache_;
  std::unique_ptr<testing::Dnsmasq> dns_;
  std::unique_ptr<io::DnsClient> client_;
  std::shared_ptr<const Config> config_;
  std::unique_ptr<Selector> selector_;
};

TEST_F(ResolverTest, MxSetInPreferenceOrderWithTtl) {
  StartDns({"--mx-host=a.test,mx1.a.test,10", "--mx-host=a.test,mx2.a.test,20",
            StrCat("--host-record=mx1.a.test,", Ip(1)), StrCat("--host-record=mx2.a.test,", Ip(2))},
           120);
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("a.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  ASSERT_EQ(v.tiers.size(), 2u);
  EXPECT_EQ(v.tiers[0].mx_pref, 10u);
  EXPECT_EQ(v.tiers[0].hosts[0].name, "mx1.a.test");
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.address.ToString(), Ip(1));
  EXPECT_EQ(v.tiers[1].mx_pref, 20u);
  EXPECT_EQ(v.tiers[1].hosts[0].endpoint.address.ToString(), Ip(2));
  EXPECT_GT(v.ttl_left_s, 100);
  EXPECT_LE(v.ttl_left_s, 120) << "route lives no longer than the DNS TTL";
}

TEST_F(ResolverTest, NoMxUsesTheDomainsAddressAsImplicitMx) {
  StartDns({StrCat("--host-record=b.test,", Ip(3))});
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("b.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  ASSERT_EQ(v.tiers.size(), 1u);
  EXPECT_EQ(v.tiers[0].mx_pref, 0u);
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.address.ToString(), Ip(3));
}

TEST_F(ResolverTest, NullMxFailsAtOncePermanently) {
  StartDns({"--dns-rr=nullmx.test,15,000000", StrCat("--host-record=nullmx.test,", Ip(4))});
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("nullmx.test");
  EXPECT_EQ(v.state, RouteState::kPermFail);
  EXPECT_NE(v.detail.find("5.1.10"), std::string::npos) << v.detail;
  AcquireResult r = selector_->Acquire("nullmx.test");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.deferral().permanent());
}

TEST_F(ResolverTest, NxDomainIsPermanent) {
  StartDns({});
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("missing.test");
  EXPECT_EQ(v.state, RouteState::kPermFail);
  EXPECT_NE(v.detail.find("NXDOMAIN"), std::string::npos) << v.detail;
}

TEST_F(ResolverTest, DnsTimeoutIsTemporary) {
  // A UDP socket that never answers: c-ares times out.
  int silent = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(silent, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  socklen_t len = sizeof(sin);
  getsockname(silent, reinterpret_cast<sockaddr*>(&sin), &len);
  Connect(StrCat("127.0.0.1:", ntohs(sin.sin_port)), /*timeout_ms=*/200);
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("slow.test");
  close(silent);
  EXPECT_EQ(v.state, RouteState::kTempFail);
  EXPECT_NE(v.detail.find("4.4.3"), std::string::npos) << v.detail;
  AcquireResult r = selector_->Acquire("slow.test");
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(r.deferral().permanent());
}

TEST_F(ResolverTest, TtlExpiryReResolvesAndPicksUpTheNewMxSet) {
  StartDns({"--mx-host=c.test,mx1.c.test,10", StrCat("--host-record=mx1.c.test,", Ip(1)),
            StrCat("--host-record=mx9.c.test,", Ip(9))},
           1);
  MakeSelector("routes = ( \"__mx__\" )");
  // The answer is cached after this instant, so its 1 s TTL cannot run out before
  // `cached_after` + 1 s, however long the restart below takes (a lower bound only: a slow
  // machine makes the wait longer, never shorter).
  const auto cached_after = std::chrono::steady_clock::now();
  ASSERT_EQ(Resolve("c.test").tiers[0].hosts[0].endpoint.address.ToString(), Ip(1));
  dns_->Restart({"--mx-host=c.test,mx9.c.test,10", StrCat("--host-record=mx1.c.test,", Ip(1)),
                 StrCat("--host-record=mx9.c.test,", Ip(9))},
                1);
  EXPECT_EQ(WaitForFirstHost("c.test", Ip(9)), Ip(9));
  // 1 s, less the coarse clock's tick (MonotonicCoarseClock: a few ms).
  EXPECT_GE(std::chrono::steady_clock::now() - cached_after, std::chrono::milliseconds(950))
      << "picked up before the 1 s TTL ran out";
}

TEST_F(ResolverTest, RefreshAppliesANewMxSetBeforeTheTtl) {
  StartDns({"--mx-host=d.test,mx1.d.test,10", StrCat("--host-record=mx1.d.test,", Ip(1)),
            StrCat("--host-record=mx9.d.test,", Ip(9))},
           300);
  MakeSelector("routes = ( \"__mx__\" )");
  ASSERT_EQ(Resolve("d.test").tiers[0].hosts[0].endpoint.address.ToString(), Ip(1));
  dns_->Restart({"--mx-host=d.test,mx9.d.test,10", StrCat("--host-record=mx1.d.test,", Ip(1)),
                 StrCat("--host-record=mx9.d.test,", Ip(9))},
                300);
  EXPECT_EQ(Resolve("d.test").tiers[0].hosts[0].endpoint.address.ToString(), Ip(1))
      << "cached for 300 s";
  cache_.Clear();
  selector_->RefreshDomain("d.test");
  EXPECT_EQ(WaitForFirstHost("d.test", Ip(9)), Ip(9));
}

TEST_F(ResolverTest, MxTargetBehindCnameChain) {
  StartDns({"--mx-host=e.test,alias.e.test,10", "--cname=alias.e.test,real.e.test",
            StrCat("--host-record=real.e.test,", Ip(5))});
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("e.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.address.ToString(), Ip(5));
}

TEST_F(ResolverTest, OverlongCnameChainIsRefusedNotFollowedForever) {
  // dnsmasq refuses CNAME loops outright, so the bound is exercised with a chain of 12
  // (the parser stops at kMaxCnameHops = 8; a crafted loop is in dns_message_test).
  std::vector<std::string> records = {"--mx-host=long.test,c0.long.test,10"};
  for (int i = 0; i < 12; ++i) {
    records.push_back(StrCat("--cname=c", i, ".long.test,c", i + 1, ".long.test"));
  }
  records.push_back(StrCat("--host-record=c12.long.test,", Ip(9)));
  StartDns(records);
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("long.test");
  EXPECT_NE(v.state, RouteState::kReady);
  EXPECT_NE(v.detail.find("CNAME chain longer than"), std::string::npos) << v.detail;
}

TEST_F(ResolverTest, ProhibitedAddressesFromDnsAreSkipped) {
  StartDns({"--mx-host=f.test,evil.f.test,10", "--mx-host=f.test,good.f.test,20",
            "--host-record=evil.f.test,10.1.2.3", StrCat("--host-record=good.f.test,", Ip(6))});
  MakeSelector("routes = ( \"__mx__\" )\nprohibited_hosts = ( \"10.0.0.0/8\" )");
  DomainView v = Resolve("f.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  ASSERT_EQ(v.tiers.size(), 1u) << "the prohibited MX is gone, not just deprioritised";
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.address.ToString(), Ip(6));
}

TEST_F(ResolverTest, ByDefaultDnsCannotAimConnectionsAtLoopbackOrPrivateRanges) {
  StartDns({"--mx-host=p.test,lo.p.test,10", "--mx-host=p.test,lan.p.test,20",
            StrCat("--host-record=lo.p.test,", Ip(1)), "--host-record=lan.p.test,192.168.1.25"});
  config_ = ConfigFrom("routes = ( \"__mx__\" )");  // no opt-in: the production default
  selector_ = std::make_unique<Selector>(config_, SelectorOptions{.resolver = &cache_});
  DomainView v = Resolve("p.test");
  EXPECT_EQ(v.state, RouteState::kTempFail) << "no usable MX left";
  EXPECT_NE(v.detail.find("prohibited address"), std::string::npos) << v.detail;
  EXPECT_FALSE(selector_->Acquire("p.test").ok());
}

TEST_F(ResolverTest, HugeMxSetIsCapped) {
  std::vector<std::string> records;
  for (int i = 0; i < 40; ++i) {
    records.push_back(StrCat("--mx-host=big.test,mx", i, ".big.test,", 10 + i));
    records.push_back(StrCat("--host-record=mx", i, ".big.test,", Ip(100 + i)));
  }
  StartDns(records);
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("big.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  size_t hosts = 0;
  for (const auto& t : v.tiers) hosts += t.hosts.size();
  EXPECT_EQ(hosts, kMaxMxPerDomain) << "40 MXs in DNS, capped in preference order";
  EXPECT_EQ(v.tiers.front().mx_pref, 10u);
  EXPECT_EQ(v.tiers.back().mx_pref, 10u + kMaxMxPerDomain - 1);
}

TEST_F(ResolverTest, TtlZeroIsUsedOnceAndAskedAgain) {
  StartDns({"--mx-host=z.test,mx.z.test,10", StrCat("--host-record=mx.z.test,", Ip(8))}, 0);
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("z.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.address.ToString(), Ip(8));
  EXPECT_TRUE(selector_->Acquire("z.test").ok()) << "a TTL of 0 still delivers";
  // Asked again: the server now gives a different answer, and only a new query can see it
  // (with any TTL above 0 the cached Ip(8) would stay).
  dns_->Restart({"--mx-host=z.test,mx.z.test,10", StrCat("--host-record=mx.z.test,", Ip(9))}, 0);
  EXPECT_EQ(WaitForFirstHost("z.test", Ip(9)), Ip(9)) << "the TTL-0 answer was reused";
}

TEST_F(ResolverTest, HostnameRouteItemResolvesWithA) {
  StartDns({StrCat("--host-record=relay.g.test,", Ip(7))});
  MakeSelector("routes = ( \"smtp://relay.g.test?pref=5&port=2600\" )");
  DomainView v = Resolve("anything.example");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  EXPECT_EQ(v.tiers[0].hosts[0].endpoint.ToString(), StrCat(Ip(7), ":2600"));
}

TEST_F(ResolverTest, ConnectorWaitsForDnsThenConnectsEndToEnd) {
  const uint16_t port = testing::FreePort();
  auto farm = testing::StartFarm({testing::Ep(Ip(1), port), testing::Ep(Ip(2), port)});
  StartDns({"--mx-host=h.test,mx1.h.test,10", "--mx-host=h.test,mx2.h.test,10",
            StrCat("--host-record=mx1.h.test,", Ip(1)),
            StrCat("--host-record=mx2.h.test,", Ip(2))});
  MakeSelector(StrCat("routes = ( \"__mx__\" )\nremote_smtp_port = ", port));
  io::Connector connector(loop_.get(), selector_.get());
  client_->SetOnChange([&] { connector.OnRoutesChanged(); });
  int connected = 0, other = 0;
  for (int i = 0; i < 20; ++i) {
    connector.Connect("h.test", [&](io::ConnectResult r) {
      if (r.kind == io::ConnectResult::Kind::kConnected) {
        ++connected;
        testing::CloseConnection(r);
      } else {
        ++other;
        ADD_FAILURE() << r.reason;
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (connector.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    loop_->RunOnce(100);
  }
  EXPECT_EQ(connected, 20) << "sessions that arrived before DNS answered waited, not deferred";
  EXPECT_EQ(other, 0);
  EXPECT_EQ(testing::StatsFor(farm->Stats(), Ip(1))->total +
                testing::StatsFor(farm->Stats(), Ip(2))->total,
            20u);
  for (int i = 0; i < 5; ++i) loop_->RunOnce(1);
}

// Sessions resumed by one OnRoutesChanged run one after another; a callback of the first
// may call Stop, which ends the others while they are still in the resumed list. Each must
// still end exactly once (the connector once resumed a stopped session a second time).
TEST_F(ResolverTest, StopFromACallbackWhileSessionsWaitForDnsEndsEachSessionOnce) {
  StartDns({});
  MakeSelector("routes = ( \"__mx__\" )");
  io::Connector connector(loop_.get(), selector_.get());
  client_->SetOnChange([&] { connector.OnRoutesChanged(); });
  std::vector<std::string> ends;
  for (int i = 0; i < 3; ++i) {
    connector.Connect("missing.test", [&](io::ConnectResult r) {
      ends.push_back(r.stopped ? "stopped" : r.reason);
      connector.Stop("a callback stops the connector");
    });
  }
  ASSERT_EQ(connector.in_flight(), 3u) << "all three wait for the MX answer";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (connector.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    loop_->RunOnce(50);
  }
  ASSERT_EQ(ends.size(), 3u) << "one end per session";
  EXPECT_NE(ends[0].find("NXDOMAIN"), std::string::npos) << ends[0];
  EXPECT_EQ(ends[1], "stopped");
  EXPECT_EQ(ends[2], "stopped");
  EXPECT_EQ(connector.in_flight(), 0u);
  for (int i = 0; i < 5; ++i) loop_->RunOnce(1);
}

// Issue 10 #1: a truncated answer makes c-ares retry over TCP. While that TCP answer is held,
// lookups of other names go over UDP and must still be answered: every socket c-ares opens
// stays watched until c-ares closes it.
TEST_F(ResolverTest, HeldTcpRetryDoesNotStallUdpLookupsOfOtherNames) {
  testing::DnsPeer::Options o;
  o.address = Ip(1);
  o.hold_udp_until_tcp = true;
  testing::DnsPeer peer(o);
  ASSERT_TRUE(peer.ok());
  Connect(peer.server());
  auto run_until = [&](auto done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done() && std::chrono::steady_clock::now() < deadline) loop_->RunOnce(20);
    return done();
  };
  using S = DnsAnswer::State;
  // All at once: the MX query and 20 A queries leave together; the peer answers the MX
  // query TC=1 at once and the A queries only after the TCP retry arrived.
  std::vector<std::string> names;
  for (int i = 0; i < 20; ++i) names.push_back(StrCat("h", i, ".ok.test"));
  ASSERT_EQ(cache_.LookupMx("many.test").state, S::kPending);
  for (const auto& n : names) cache_.LookupAddresses(n, true, false);
  ASSERT_TRUE(run_until([&] { return peer.tcp_queries() > 0; })) << "no TCP retry after TC=1";
  EXPECT_EQ(client_->watched_fds().size(), 2u) << "the UDP and the TCP socket";
  // The TCP answer is held from here on; the UDP answers must all be read.
  for (const auto& n : names) {
    DnsAnswer a;
    ASSERT_TRUE(run_until([&] {
      a = cache_.LookupAddresses(n, true, false);
      return a.state != S::kPending;
    })) << n;
    ASSERT_EQ(a.state, S::kReady) << n << ": " << a.detail;
    ASSERT_EQ(a.addresses.size(), 1u);
    EXPECT_EQ(a.addresses[0].ToString(), Ip(1));
  }
  // And lookups started while the TCP answer is outstanding, one after another.
  for (const char* name : {"a.ok.test", "b.ok.test", "c.ok.test"}) {
    DnsAnswer a = cache_.LookupAddresses(name, true, false);
    ASSERT_TRUE(run_until([&] {
      a = cache_.LookupAddresses(name, true, false);
      return a.state != S::kPending;
    })) << name;
    ASSERT_EQ(a.state, S::kReady) << name << ": " << a.detail;
  }
  peer.Release();
  DnsAnswer mx;
  ASSERT_TRUE(run_until([&] {
    mx = cache_.LookupMx("many.test");
    return mx.state != S::kPending;
  }));
  ASSERT_EQ(mx.state, S::kReady) << mx.detail;
  EXPECT_EQ(mx.mx.size(), 50u);
  EXPECT_EQ(client_->repaired(), 0) << "a socket c-ares wanted watched was not";
}

// Issue 10 #2: an NXDOMAIN is reused for its negative TTL (SOA minimum, RFC 2308), not for
// max_dns_ttl: a domain whose DNS is fixed delivers again.
TEST_F(ResolverTest, NxDomainLastsOnlyItsNegativeTtl) {
  testing::DnsPeer::Options o;
  o.address = Ip(2);
  o.negative_ttl = 1;
  testing::DnsPeer peer(o);
  ASSERT_TRUE(peer.ok());
  Connect(peer.server());
  MakeSelector("routes = ( \"__mx__\" )");
  DomainView v = Resolve("fixed.nx.test");
  ASSERT_EQ(v.state, RouteState::kPermFail) << v.detail;
  EXPECT_NE(v.detail.find("NXDOMAIN"), std::string::npos) << v.detail;
  EXPECT_LE(v.ttl_left_s, 1) << "the SOA minimum, not max_dns_ttl";
  peer.SetNxExists(true);  // the owner fixes the zone
  EXPECT_EQ(WaitForFirstHost("fixed.nx.test", Ip(2)), Ip(2));
}

TEST_F(ResolverTest, NegativeTtlIsBoundedByMaxNegativeDnsTtl) {
  testing::DnsPeer::Options o;
  o.address = Ip(3);
  o.negative_ttl = 86400;  // a zone that asks for a day of negative caching
  testing::DnsPeer peer(o);
  ASSERT_TRUE(peer.ok());
  Connect(peer.server());
  MakeSelector("routes = ( \"__mx__\" )\nmax_negative_dns_ttl = 1s");
  DomainView v = Resolve("day.nx.test");
  ASSERT_EQ(v.state, RouteState::kPermFail) << v.detail;
  EXPECT_LE(v.ttl_left_s, 1);
  peer.SetNxExists(true);
  EXPECT_EQ(WaitForFirstHost("day.nx.test", Ip(3)), Ip(3)) << "neither route nor cache kept it";
}

// Issue 10 #3: an AAAA ::ffff:a.b.c.d is the host a.b.c.d — one registry entry, one limit —
// and a prohibited IPv4 range blocks its mapped form.
TEST_F(ResolverTest, Ipv4MappedAaaaIsTheSameHostForLimits) {
  StartDns({"--mx-host=mapped.test,mx.mapped.test,10",
            StrCat("--host-record=mx.mapped.test,", Ip(5), ",::ffff:", Ip(5))});
  MakeSelector(StrCat("routes = ( \"__mx__\" )\nuse_ipv6 = true\nHost \"", Ip(5),
                      "\" { max_outbound_connections = 2 }"));
  DomainView v = Resolve("mapped.test");
  ASSERT_EQ(v.state, RouteState::kReady) << v.detail;
  size_t hosts = 0;
  for (const auto& t : v.tiers) {
    for (const auto& h : t.hosts) {
      ++hosts;
      EXPECT_EQ(h.endpoint.address.ToString(), Ip(5));
    }
  }
  EXPECT_EQ(hosts, 1u) << "A and mapped AAAA are one host";
  std::vector<Lease> leases;
  for (int i = 0; i < 5; ++i) {
    AcquireResult r = selector_->Acquire("mapped.test");
    if (r.ok()) leases.push_back(r.TakeLease());
  }
  EXPECT_EQ(leases.size(), 2u) << "the Host limit holds across both address forms";
}

TEST_F(ResolverTest, ProhibitedIpv4RangeBlocksTheMappedForm) {
  StartDns({"--mx-host=mapped2.test,mx.mapped2.test,10",
            StrCat("--host-record=mx.mapped2.test,::ffff:", Ip(6))});
  MakeSelector("routes = ( \"__mx__\" )\nuse_ipv6 = true\nprohibited_hosts = ( \"127.0.0.0/8\" )");
  DomainView v = Resolve("mapped2.test");
  EXPECT_EQ(v.state, RouteState::kTempFail);
  EXPECT_NE(v.detail.find("prohibited address"), std::string::npos) << v.detail;
}

}  // namespace
}  // namespace mxsched
