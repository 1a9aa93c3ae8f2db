// Egress bindings against the farm on loopback (issue 21, docs/DESIGN.md §1 rule 13): the
// connector binds each socket to its binding's source address (127.x.y.2, 127.x.y.3, ::1)
// and the farm counts connections per source address — what a receiver that limits or
// blocks per sending IP sees.
#include "mxsched/io/connector.h"

#include "mxsched/scheduler/host_registry.h"
#include "testbed/load.h"
#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using io::ConnectResult;
using testbed::Fault;
using testing::ConfigFrom;
using testing::Ep;
using testing::StatsFor;

const testbed::FarmSourceStats* SourceFor(const std::vector<testbed::FarmSourceStats>& all,
                                          const std::string& ip) {
  for (const auto& s : all) {
    if (s.address.ToString() == ip) return &s;
  }
  return nullptr;
}

class BindingsTest : public testing::LoopbackTest {
 protected:
  // The farm on .1; two bindings in group "pool" from .2 and .3, 3 each at the host, 10
  // at the host in all.
  std::string PoolConfig(std::string_view extra = "") const {
    return StrCat("remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 0), " )\n",
                  "Host \"", Ip(1), "\" { max_outbound_connections = 10 }\n",
                  "Binding_Group \"pool\" {\n",
                  "  Binding \"b2\" { bind_address = \"", Ip(2), "\"  Host \"", Ip(1),
                  "\" { max_outbound_connections = 3 } }\n",
                  "  Binding \"b3\" { bind_address = \"", Ip(3), "\"  Host \"", Ip(1),
                  "\" { max_outbound_connections = 3 } }\n}\n", extra);
  }
  testbed::LoadReport Load(Selector& s, std::string_view binding, int64_t sessions,
                           int concurrency, int hold_ms, int max_attempts = 3) {
    testbed::LoadOptions o;
    o.domains = {"example.com"};
    o.sessions = sessions;
    o.concurrency = concurrency;
    o.hold_ms = hold_ms;
    o.threads = 2;
    o.max_seconds = 60;
    o.binding = std::string(binding);
    o.connector.slot_wait_ms = 30'000;
    o.connector.max_attempts = max_attempts;
    return testing::RunAccountedLoad(s, std::move(o));
  }
};

TEST_F(BindingsTest, AGroupSpreadsOverItsSourcesAndEachSourceKeepsItsLimitAtTheReceiver) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  Selector selector(ConfigFrom(PoolConfig()));
  testbed::LoadReport r = Load(selector, "pool", 240, 12, 20);
  EXPECT_EQ(r.connected, 240) << r.ToText();
  const auto sources = farm->SourceStats();
  const auto* s2 = SourceFor(sources, Ip(2));
  const auto* s3 = SourceFor(sources, Ip(3));
  ASSERT_NE(s2, nullptr) << farm->StatsJson();
  ASSERT_NE(s3, nullptr) << farm->StatsJson();
  // What the receiver counted per sending IP: never past the Binding::Host limit of 3.
  EXPECT_LE(s2->peak, 3);
  EXPECT_LE(s3->peak, 3);
  EXPECT_EQ(s2->peak, 3) << "with 12 sessions in flight each source fills its 3";
  EXPECT_EQ(s3->peak, 3);
  // About evenly: neither source carries less than a third of the sessions.
  EXPECT_EQ(s2->total + s3->total, 240u);
  EXPECT_GE(s2->total, 80u);
  EXPECT_GE(s3->total, 80u);
  // Only the two sources were used, and the host saw at most 3 + 3 at once.
  EXPECT_EQ(sources.size(), 2u) << farm->StatsJson();
  EXPECT_LE(StatsFor(farm->Stats(), Ip(1))->peak, 6);
  EXPECT_EQ(r.bindings["b2"].peak, 3) << r.ToText();
  EXPECT_EQ(r.bindings["b2"].source, Ip(2));
}

TEST_F(BindingsTest, ThePerHostTotalHoldsOverAllBindings) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  std::string text = PoolConfig();
  text.replace(text.find("max_outbound_connections = 10"), 29, "max_outbound_connections = 4");
  Selector selector(ConfigFrom(text));
  testbed::LoadReport r = Load(selector, "pool", 120, 10, 20);
  EXPECT_EQ(r.connected, 120) << r.ToText();
  EXPECT_LE(StatsFor(farm->Stats(), Ip(1))->peak, 4) << "the Host stanza is a total";
  const auto sources = farm->SourceStats();
  ASSERT_EQ(sources.size(), 2u);
  EXPECT_LE(sources[0].peak, 3);
  EXPECT_LE(sources[1].peak, 3);
}

TEST_F(BindingsTest, AReceiverBlockingOneSourceLeavesTheHostToTheOther) {
  // Every connection from .2 is reset at once (a block list naming the IP).
  testbed::FarmOptions fo;
  fo.listen = {Ep(Ip(1), port_)};
  fo.source_faults = {{*IpAddress::Parse(Ip(2)), Fault{Fault::Kind::kReset}}};
  auto farm = testbed::Farm::Start(std::move(fo));
  ASSERT_TRUE(farm.ok()) << farm.status();
  Selector selector(ConfigFrom(PoolConfig()));
  testbed::LoadReport r = Load(selector, "pool", 150, 6, 10);
  EXPECT_EQ(r.connected, 150) << r.ToText();
  const auto sources = (*farm)->SourceStats();
  const auto* s2 = SourceFor(sources, Ip(2));
  const auto* s3 = SourceFor(sources, Ip(3));
  ASSERT_NE(s3, nullptr);
  EXPECT_EQ(s3->total, 150u) << "everything went out through the other source";
  // The blocked source was tried only by the sessions that raced its first failure.
  ASSERT_NE(s2, nullptr);
  EXPECT_LE(s2->total, 6u) << (*farm)->StatsJson();
  EXPECT_LE(s3->peak, 3);
  // The host was never marked failed (one binding's failures are that binding's).
  HostState* h = selector.registry().Find(Ep(Ip(1), port_));
  ASSERT_NE(h, nullptr);
  EXPECT_TRUE(h->Reachable(selector.clock().NowNanos()));
  EXPECT_EQ(r.bindings["b2"].hosts_failed, 1) << r.ToText();
}

ConnectResult ConnectThrough(Selector& selector, std::string_view binding) {
  auto loop = io::Loop::Create(64);
  EXPECT_TRUE(loop.ok()) << loop.status();
  io::Connector connector(loop->get(), &selector, {});
  ConnectResult out;
  bool done = false;
  connector.Connect("example.com", {.binding = binding}, [&](ConnectResult r) {
    out = std::move(r);
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done && std::chrono::steady_clock::now() < deadline) (*loop)->RunOnce(100);
  EXPECT_TRUE(done);
  for (int i = 0; i < 5; ++i) (*loop)->RunOnce(1);
  return out;
}

TEST_F(BindingsTest, ABindFailureIsALocalErrorThatNeverBlamesTheHost) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  // 192.0.2.1 (TEST-NET-1) is not an address of this machine.
  Selector selector(ConfigFrom(PoolConfig("Binding \"away\" { bind_address = \"192.0.2.1\" }\n")));
  for (int i = 0; i < 3; ++i) {
    ConnectResult r = ConnectThrough(selector, "away");
    EXPECT_EQ(r.kind, ConnectResult::Kind::kDeferred) << r.reason;
    EXPECT_EQ(r.last_outcome, Outcome::kLocalError);
    EXPECT_NE(r.reason.find("bind to 192.0.2.1 (binding away)"), std::string::npos) << r.reason;
    EXPECT_NE(r.reason.find("not on this machine"), std::string::npos) << r.reason;
  }
  HostState* h = selector.registry().Find(Ep(Ip(1), port_));
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->consecutive_failures(), 0u);
  EXPECT_TRUE(h->Reachable(selector.clock().NowNanos()));
  EXPECT_EQ(farm->SourceStats().size(), 0u) << "nothing reached the receiver";
  ConnectResult ok = ConnectThrough(selector, "b2");
  ASSERT_EQ(ok.kind, ConnectResult::Kind::kConnected) << ok.reason;
  testing::CloseConnection(ok);
}

TEST_F(BindingsTest, AnIpv6BindingConnectsFromItsIpv6Address) {
  const uint16_t port = port_;
  testbed::FarmOptions fo;
  fo.listen = {Endpoint{*IpAddress::Parse("::1"), port}};
  auto farm = testbed::Farm::Start(std::move(fo));
  if (!farm.ok()) GTEST_SKIP() << "no IPv6 loopback: " << farm.status();
  Selector selector(ConfigFrom(StrCat("remote_smtp_port = ", port, "\nroutes = ( \"[::1]\" )\n",
                                      "Binding \"dual\" { bind_address = ( \"", Ip(2),
                                      "\" \"::1\" ) }\n",
                                      "Binding \"v4only\" { bind_address = \"", Ip(2), "\" }\n")));
  ConnectResult r = ConnectThrough(selector, "dual");
  ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
  ASSERT_NE(r.lease.source_address(), nullptr);
  EXPECT_EQ(r.lease.source_address()->ToString(), "::1");
  testing::CloseConnection(r);
  const auto sources = (*farm)->SourceStats();
  ASSERT_EQ(sources.size(), 1u);
  EXPECT_EQ(sources[0].address.ToString(), "::1");
  // A binding with no IPv6 address cannot reach an IPv6-only route.
  ConnectResult none = ConnectThrough(selector, "v4only");
  EXPECT_NE(none.kind, ConnectResult::Kind::kConnected);
}

}  // namespace
}  // namespace mxsched
