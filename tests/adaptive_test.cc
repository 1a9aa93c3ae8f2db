// Receivers that push back (docs/DESIGN.md §6), against real peers on loopback: the farm's cap:N
// fault (a receiver serving N sessions at once that answers the rest "421 4.7.0 too many
// connections"), adaptive per-host limits learned from those replies, provider limits shared
// by MX-name pattern and MX names blocked by name (dnsmasq for DNS).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mxsched/scheduler/host_registry.h"
#include "mxsched/io/resolver.h"
#include "testbed/load.h"
#include "tests/dnsmasq.h"
#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testbed::Fault;
using testing::ConfigFrom;
using testing::Ep;
using testing::StatsFor;

// Connects a blocking socket to `ep` and reads the first line the server sends.
std::string RawGreeting(const Endpoint& ep, int* fd_out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage ss;
  socklen_t len = ep.ToSockaddr(&ss);
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return "connect failed";
  }
  std::string line;
  char c;
  while (recv(fd, &c, 1, 0) == 1 && c != '\n') line += c;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  *fd_out = fd;
  return line;
}

class FarmCapTest : public testing::LoopbackTest {};

TEST_F(FarmCapTest, ServesNAtOnceAndAnswersTheRest421TooManyConnections) {
  Fault cap{Fault::Kind::kCap, 2};
  auto farm = testing::StartFarm({Ep(Ip(1), port_)}, {{*IpAddress::Parse(Ip(1)), cap}});
  ASSERT_NE(farm, nullptr);
  int a = -1, b = -1, c = -1, d = -1;
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &a).substr(0, 4), "220 ");
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &b).substr(0, 4), "220 ");
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &c), "421 4.7.0 too many connections from your IP");
  close(c);
  close(a);  // a served slot frees: the next connection is served again
  std::string g;
  for (int i = 0; i < 1000; ++i) {  // the farm sees the close asynchronously
    g = RawGreeting(Ep(Ip(1), port_), &d);
    if (g.substr(0, 4) == "220 ") break;
    close(d);
  }
  EXPECT_EQ(g.substr(0, 4), "220 ");
  close(b);
  close(d);
  const auto stats = farm->Stats();
  EXPECT_EQ(StatsFor(stats, Ip(1))->served_peak, 2);
  EXPECT_GE(StatsFor(stats, Ip(1))->rejected, 1u);
  EXPECT_EQ(StatsFor(stats, Ip(1))->fault.ToString(), "cap:2");
}

TEST(FarmFaultSpec, ParsesCap) {
  auto f = testbed::ParseFaultSpec("127.0.0.1=cap:4");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->second.kind, Fault::Kind::kCap);
  EXPECT_EQ(f->second.slow_ms, 4);
  EXPECT_FALSE(testbed::ParseFaultSpec("127.0.0.1=cap:x").ok());
}

// --- adaptive limits against the farm's capped receiver ------------------------------------

class AdaptiveTest : public testing::LoopbackTest {
 protected:
  Endpoint Host(int last) const { return Ep(Ip(last), port_); }
  std::string Routes(std::initializer_list<int> hosts) const {
    std::string r =
        StrCat("remote_smtp_port = ", port_, "\nmax_outbound_connections = 1000\n", "routes = (");
    for (int h : hosts) r += StrCat(" \"smtp://", Ip(h), "?pref=1\"");
    return r + " )\n";
  }
  static Fault Cap(int n) { return {Fault::Kind::kCap, n}; }
  // Sessions with slot waits (docs/DESIGN.md §1 rule 8), as a delivery worker would run them.
  testbed::LoadReport Load(Selector& s, int64_t sessions, int concurrency, int hold_ms,
                      std::vector<std::string> domains = {}, io::DnsCache* dns_cache = nullptr,
                      std::string dns_server = "") {
    testbed::LoadOptions o;
    o.domains = domains.empty() ? std::vector<std::string>{"capped.example"} : domains;
    o.sessions = sessions;
    o.concurrency = concurrency;
    o.hold_ms = hold_ms;
    o.threads = 2;
    o.max_seconds = 120;
    o.connector.banner_timeout_ms = 10000;
    o.connector.connect_timeout_ms = 10000;
    o.connector.slot_wait_ms = 60000;
    o.dns_cache = dns_cache;
    o.dns_server = std::move(dns_server);
    auto r = testbed::RunLoad(s, o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    EXPECT_EQ(r->connected + r->deferred + r->failed, sessions) << "a session was lost";
    return *r;
  }
  const HostState& State(Selector& s, int last) { return *s.registry().Find(Host(last)); }
};

TEST_F(AdaptiveTest, CappedReceiverLimitIsLearnedAndNothingIsWrittenOff) {
  auto farm = testing::StartFarm({Host(1)}, {{*IpAddress::Parse(Ip(1)), Cap(4)}});
  auto config = ConfigFrom(Routes({1}));
  Selector selector(config);
  testbed::LoadReport r = Load(selector, 400, 16, /*hold_ms=*/10);
  EXPECT_EQ(r.connected, 400) << r.ToText();
  EXPECT_EQ(r.failed, 0) << r.ToText();
  const HostState& h = State(selector, 1);
  EXPECT_EQ(h.failures(), 0u) << "a full receiver is not a dead one";
  EXPECT_GE(h.limit(), 1);
  // Learned: about the cap. Not exactly: the receiver closes a session (after its 221) a
  // moment before the client releases the slot, so a probe one above the cap can succeed
  // and the limit can stand a little above the cap until the next refusal.
  EXPECT_LE(h.limit(), 8) << r.ToText();
  EXPECT_EQ(h.configured_limit(), kUnlimited);
  const auto farm_stats = farm->Stats();
  const auto* fs = StatsFor(farm_stats, Ip(1));
  EXPECT_EQ(static_cast<uint64_t>(r.busy_replies), fs->rejected)
      << "every 421 the receiver sent was seen and counted";
  EXPECT_LT(r.busy_replies, 100) << "probing above the cap backs off: " << r.ToText();
  EXPECT_NE(r.ToText().find("(configured unlimited)"), std::string::npos) << r.ToText();
}

TEST_F(AdaptiveTest, LimitRecoversWhenTheReceiversCapRisesNeverAboveTheConfiguredOne) {
  auto farm = testing::StartFarm({Host(1)}, {{*IpAddress::Parse(Ip(1)), Cap(3)}});
  auto config =
      ConfigFrom(Routes({1}) + StrCat("Host \"", Ip(1), "\" { max_outbound_connections = 8 }\n"));
  Selector selector(config);
  testbed::LoadReport r = Load(selector, 300, 16, /*hold_ms=*/5);
  EXPECT_EQ(r.connected, 300) << r.ToText();
  EXPECT_LE(State(selector, 1).limit(), 4);
  farm->SetFault(*IpAddress::Parse(Ip(1)), Cap(20));
  for (int round = 0; round < 20 && State(selector, 1).limit() < 8; ++round) {
    r = Load(selector, 300, 16, /*hold_ms=*/5);
    EXPECT_EQ(r.connected, 300) << r.ToText();
  }
  EXPECT_EQ(State(selector, 1).limit(), 8) << "back to the configured limit";
  farm->ResetCounters();
  r = Load(selector, 300, 16, /*hold_ms=*/5);
  EXPECT_EQ(r.connected, 300) << r.ToText();
  EXPECT_EQ(r.busy_replies, 0);
  EXPECT_EQ(State(selector, 1).limit(), 8) << "never above the configured limit";
  EXPECT_EQ(StatsFor(farm->Stats(), Ip(1))->peak, 8) << "server-side";
}

TEST_F(AdaptiveTest, TwoEqualHostsOneCappedItServesWhatItAcceptsTheRestGoesToTheOther) {
  auto farm = testing::StartFarm({Host(1), Host(2)}, {{*IpAddress::Parse(Ip(1)), Cap(4)}});
  auto config = ConfigFrom(Routes({1, 2}));
  Selector selector(config);
  testbed::LoadReport r = Load(selector, 600, 16, /*hold_ms=*/10);
  EXPECT_EQ(r.connected, 600) << r.ToText();
  const int64_t capped = r.hosts[Host(1).ToString()].sessions;
  const int64_t other = r.hosts[Host(2).ToString()].sessions;
  EXPECT_GT(capped, 0) << "the capped host keeps serving: " << r.ToText();
  EXPECT_GT(other, capped) << "the rest goes to the other: " << r.ToText();
  EXPECT_EQ(State(selector, 1).failures(), 0u);
  EXPECT_LE(State(selector, 1).limit(), 8) << "learned (see CappedReceiver...)";
  EXPECT_EQ(State(selector, 2).limit(), kUnlimited) << "the other host never pushed back";
}

// --- provider limits and blocked MX names, through real DNS --------------------------------

class ProviderTest : public AdaptiveTest {
 protected:
  void SetUp() override {
    if (testing::DnsmasqBinary() == nullptr) {
      GTEST_SKIP() << "dnsmasq not installed (Debian dnsmasq-base); tools/dev.sh installs it";
    }
    AdaptiveTest::SetUp();
  }
};

TEST_F(ProviderTest, PatternSharedBy50DomainsWithDifferentMxNamesNeverExceedsItsLimit) {
  std::vector<std::string> records, domains;
  std::vector<Endpoint> hosts;
  for (int i = 1; i <= 50; ++i) {
    domains.push_back(StrCat("d", i, ".test"));
    records.push_back(StrCat("--mx-host=d", i, ".test,mx", i, ".provider.test,10"));
    records.push_back(StrCat("--host-record=mx", i, ".provider.test,", Ip(i)));
    hosts.push_back(Host(i));
  }
  testing::Dnsmasq dns(records, 300);
  ASSERT_TRUE(dns.ok());
  auto farm = testing::StartFarm(hosts);
  auto config = ConfigFrom(StrCat("remote_smtp_port = ", port_, R"(
    prohibited_hosts = ( )
    Host "*.provider.test" { max_outbound_connections = 5 })"));
  io::DnsCache cache;
  Selector selector(config, {.resolver = &cache});
  testbed::LoadReport r = Load(selector, 1000, 32, /*hold_ms=*/5, domains, &cache, dns.server());
  EXPECT_EQ(r.connected, 1000) << "waiters on one host are woken by releases on another "
                                  "host of the same provider: "
                               << r.ToText();
  EXPECT_LE(farm->PeakAllAddresses(), 5) << "server-side, over all 50 addresses";
  EXPECT_GE(farm->PeakAllAddresses(), 2) << "the test must have had concurrency to limit";
  int used = 0;
  for (const auto& s : farm->Stats()) used += s.total > 0;
  EXPECT_GT(used, 10) << "sessions spread over the provider's MXs";
  DomainView v = selector.Describe("d7.test");
  ASSERT_EQ(v.tiers.size(), 1u);
  EXPECT_EQ(v.tiers[0].hosts[0].group, "*.provider.test");
  EXPECT_EQ(v.tiers[0].hosts[0].group_limit, 5);
}

TEST_F(ProviderTest, BlockedMxNameDefersWithTheNameAndPatternInTheReason) {
  testing::Dnsmasq dns(
      {"--mx-host=b.test,mx.blocked.test,10", "--host-record=mx.blocked.test," + Ip(1),
       "--mx-host=c.test,mx.blocked.test,10", "--mx-host=c.test,mx.ok.test,20",
       "--host-record=mx.ok.test," + Ip(2)},
      300);
  ASSERT_TRUE(dns.ok());
  auto config = ConfigFrom(StrCat("remote_smtp_port = ", port_, R"(
    prohibited_hosts = ( )
    prohibited_mx_names = ( "*.blocked.test" ))"));
  io::DnsCache cache;
  Selector selector(config, {.resolver = &cache});
  auto loop = io::Loop::Create(64);
  ASSERT_TRUE(loop.ok());
  auto client = io::DnsClient::Create(loop->get(), &cache, dns.server());
  ASSERT_TRUE(client.ok()) << client.status();
  auto resolve = [&](const std::string& d) {
    DomainView v = selector.Describe(d);
    for (int i = 0; i < 200 && v.state == RouteState::kPending; ++i) {
      (*loop)->RunOnce(50);
      v = selector.Describe(d);
    }
    return v;
  };
  DomainView b = resolve("b.test");
  EXPECT_EQ(b.state, RouteState::kTempFail);
  AcquireResult a = selector.Acquire("b.test");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.deferral().ToString(),
            "451 4.4.0 MX mx.blocked.test is blocked by prohibited_mx_names \"*.blocked.test\"");
  DomainView c = resolve("c.test");
  ASSERT_EQ(c.state, RouteState::kReady);
  ASSERT_EQ(c.tiers.size(), 1u) << "the blocked MX is skipped, the other one serves";
  EXPECT_EQ(c.tiers[0].hosts[0].name, "mx.ok.test");
}

}  // namespace
}  // namespace mxsched
