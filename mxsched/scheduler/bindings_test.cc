// Egress bindings: configuration (docs/DESIGN.md §4, Bindings) and selection, limits and
// reachability per binding (§1 rule 13), deterministic (manual clock, no I/O).
#include "mxsched/scheduler/bindings.h"

#include <algorithm>
#include <iostream>
#include <chrono>
#include <cstdio>
#include <atomic>
#include <map>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/sanitizers.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/config_options.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched {
namespace {

std::string ErrorOf(std::string_view text) {
  auto c = ParseConfig(text, "b.conf");
  EXPECT_FALSE(c.ok()) << "parsed: " << text;
  return c.ok() ? "" : std::string(ToStd(c.status().message()));
}

constexpr std::string_view kPool = R"(
bind_address = "127.0.0.9"
max_outbound_connections = 7
Binding_Group "pool" {
  max_outbound_connections = 4
  Binding "b1" { bind_address = ( "127.0.0.2" "::1" )
                 Host "127.0.0.1" { max_outbound_connections = 3 } }
  Binding "b2" { bind_address = "127.0.0.3"  max_outbound_connections = 5 }
}
Binding "transactional" { Domain "example.com" { max_outbound_connections = 2 } }
Domain "pinned.example" { max_outbound_connections = 9 }
)";

TEST(BindingConfig, MomentumSyntaxScopesAndFallBacks) {
  auto c = ParseConfig(kPool, "b.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->bindings.size(), 3u);
  ASSERT_EQ(c->binding_groups.size(), 1u);
  EXPECT_EQ(c->binding_groups[0].bindings, (std::vector<std::string>{"b1", "b2"}));
  const BindingSpec& b1 = *c->FindBinding("b1");
  const BindingSpec& b2 = *c->FindBinding("b2");
  const BindingSpec& tx = *c->FindBinding("transactional");
  EXPECT_EQ(b1.group, "pool");
  ASSERT_NE(b1.AddressFor(true), nullptr);
  EXPECT_EQ(b1.AddressFor(true)->ToString(), "127.0.0.2");
  ASSERT_NE(b1.AddressFor(false), nullptr);
  EXPECT_EQ(b1.AddressFor(false)->ToString(), "::1");
  EXPECT_EQ(b2.AddressFor(false), nullptr);  // no IPv6 address: IPv6 hosts not through it
  EXPECT_EQ(tx.AddressFor(true)->ToString(), "127.0.0.9");  // the global bind_address
  // Per domain, per binding: Binding::Domain, then Domain, then Binding, then group, then global.
  EXPECT_EQ(c->BindingDomainLimit(tx, "example.com"), 2);
  EXPECT_EQ(c->BindingDomainLimit(tx, "other.example"), 7);     // global
  EXPECT_EQ(c->BindingDomainLimit(b1, "other.example"), 4);     // the group's
  EXPECT_EQ(c->BindingDomainLimit(b2, "other.example"), 5);     // the binding's own
  EXPECT_EQ(c->BindingDomainLimit(b2, "pinned.example"), 9);    // a Domain stanza
  EXPECT_EQ(Config::BindingHostLimit(b1, "", *IpAddress::Parse("127.0.0.1")), 3);
  EXPECT_EQ(Config::BindingHostLimit(b2, "", *IpAddress::Parse("127.0.0.1")), kUnlimited);
  // The listing parses back to the same settings.
  std::string listed = ListConfig(*c, ConfigListing::kNonDefault);
  auto again = ParseConfig(listed, "listed.conf");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << listed;
  EXPECT_EQ(ListConfig(*again, ConfigListing::kNonDefault), listed);
}

TEST(BindingConfig, ErrorsNameFileLineAndWhatWasExpected) {
  EXPECT_EQ(ErrorOf("Binding_Group \"g1\" { Binding \"a\" { } }\n"
                    "Binding_Group \"g2\" { Binding \"a\" { } }\n"),
            "b.conf:2:30: Binding \"a\" is in two Binding_Groups: \"g1\" (b.conf:1) and \"g2\"");
  EXPECT_EQ(ErrorOf("Binding \"a\" { }\nBinding \"a\" { }\n"),
            "b.conf:2:9: Binding \"a\" defined twice (first at b.conf:1)");
  EXPECT_EQ(ErrorOf("Binding \"a\" { bind_address = ( \"127.0.0.2\" \"127.0.0.3\" ) }"),
            "b.conf:1:30: bind_address has two IPv4 addresses; a binding has at most one of each "
            "family (\"127.0.0.2\" and \"127.0.0.3\")");
  EXPECT_NE(ErrorOf("Binding \"a\" { bind_address = \"[::1]\" }").find("not an IP address"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"a b\" { }").find("expected 1..64 of"), std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"a\" { routes = ( \"x.example\" ) }")
                .find("\"routes\" is not valid in Binding, Binding_Group scope"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"a\" { Host \"h.example\" { host_failure_retry = 5 } }")
                .find("not valid in Binding::Host scope"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"a\" { Binding \"b\" { } }").find("cannot be nested here"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Domain \"x.example\" { bind_address = \"127.0.0.2\" }")
                .find("valid in: global, Binding, Binding_Group"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"p\" { }\nBinding_Group \"p\" { }").find("cannot share a name"),
            std::string::npos);
}

// A source address must be one the machine sends from: a multicast, broadcast or unspecified
// one binds on Linux, but the connection then leaves from an address the kernel picks (the
// farm saw 127.0.0.1 for "224.0.0.1" and "255.255.255.255"). Rejected at load, in every scope.
TEST(BindingConfig, ANonUnicastBindAddressIsAnError) {
  for (const char* a : {"224.0.0.1", "239.255.255.250", "255.255.255.255", "0.0.0.0", "::",
                        "ff02::1"}) {
    for (const std::string& text :
         {StrCat("bind_address = \"", a, "\"\n"),
          StrCat("Binding \"b\" {\n  bind_address = \"", a, "\"\n}\n"),
          StrCat("Binding_Group \"g\" {\n  bind_address = \"", a, "\"\n  Binding \"b\" { }\n}\n")}) {
      const std::string e = ErrorOf(text);
      EXPECT_NE(e.find(StrCat("bind_address \"", a, "\" is ")), std::string::npos) << e;
      EXPECT_NE(e.find("not a source address of this machine"), std::string::npos) << e;
      EXPECT_EQ(e.rfind(text[0] == 'b' ? "b.conf:1:" : "b.conf:2:", 0), 0u) << e;
    }
  }
  // Unicast addresses of either family, and the kernel's choice, still load.
  for (const char* ok : {"bind_address = \"127.0.0.2\"", "bind_address = \"::1\"",
                         "bind_address = \"*\"", "bind_address = ( )",
                         "bind_address = ( \"192.0.2.1\" \"2001:db8::1\" )"}) {
    EXPECT_TRUE(ParseConfig(ok, "b.conf").ok()) << ok;
  }
}

// A Binding_Group with no Binding in any of its declarations could only defer every session
// sent through it as an unknown name; it is a load error at its first declaration.
TEST(BindingConfig, AnEmptyGroupIsAnError) {
  EXPECT_EQ(ErrorOf("Binding_Group \"empty\" { }\n"),
            "b.conf:1:15: Binding_Group \"empty\" holds no Binding (expected at least one "
            "Binding \"name\" { } stanza inside it)");
  EXPECT_NE(ErrorOf("Binding_Group \"g\" { max_outbound_connections = 3 }\n"
                    "Binding_Group \"g\" { bind_address = \"127.0.0.2\" }\n")
                .find("b.conf:1:15: Binding_Group \"g\" holds no Binding"),
            std::string::npos);
  // Declared empty once and with a binding in another declaration: it adds up (Momentum).
  EXPECT_TRUE(ParseConfig("Binding_Group \"g\" { max_outbound_connections = 3 }\n"
                          "Binding_Group \"g\" { Binding \"b\" { } }\n",
                          "b.conf")
                  .ok());
}

// Names are found through the parser's index: a file of many bindings loads in time linear
// in their number (100,000 took minutes when every binding was a scan of those before it),
// and a binding or group changed by hand after the load is still found.
TEST(BindingConfig, ManyBindingsAreFoundByIndexAndAHandEditedConfigStillFindsThem) {
  std::string text = "Binding_Group \"g\" {\n";
  for (int i = 0; i < 20000; ++i) text += StrCat("  Binding \"b", i, "\" { }\n");
  text += "}\nBinding \"b7\" { }\n";
  const std::string e = ErrorOf(text);
  EXPECT_EQ(e, "b.conf:20003:9: Binding \"b7\" defined twice (first at b.conf:9)");
  text.resize(text.rfind("Binding \"b7\""));
  auto c = ParseConfig(text, "b.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->bindings.size(), 20000u);
  ASSERT_NE(c->FindBinding("b19999"), nullptr);
  EXPECT_EQ(c->FindBinding("b19999")->group, "g");
  EXPECT_EQ(c->FindBinding("b20000"), nullptr);
  EXPECT_EQ(c->FindBindingGroup("g")->bindings.size(), 20000u);
  // By hand: a binding appended, one renamed, the index left as it was.
  Config& h = *c;
  BindingSpec added;
  added.name = "added";
  h.bindings.push_back(added);
  h.bindings[0].name = "renamed";
  EXPECT_NE(h.FindBinding("added"), nullptr);
  EXPECT_NE(h.FindBinding("renamed"), nullptr);
  EXPECT_EQ(h.FindBinding("b0"), nullptr);
  EXPECT_EQ(h.FindBinding("b1")->name, "b1");
}

// Connection reuse options (docs/DESIGN.md §13) in Binding and Binding_Group scopes, with
// Momentum's fall-back: Host, then Domain, then Binding, then Binding_Group, then global.
TEST(BindingConfig, ReuseOptionsInBindingAndGroupScopesFallBackNarrowestFirst) {
  auto c = ParseConfig(R"(
idle_timeout = 7
max_deliveries_per_connection = 100
Binding_Group "pool" {
  idle_timeout = 30
  max_deliveries_per_connection = 20
  Binding "b1" { bind_address = "127.0.0.2" }
  Binding "b2" { bind_address = "127.0.0.3"  idle_timeout = 2  max_deliveries_per_connection = 3 }
}
Binding "solo" { idle_timeout = 0 }
Domain "pinned.example" { idle_timeout = 11  max_deliveries_per_connection = 12 }
Host "127.0.0.50" { idle_timeout = 1 }
)", "b.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  const HostPolicy plain = c->PolicyFor("", *IpAddress::Parse("127.0.0.1"));
  const HostPolicy stanza = c->PolicyFor("", *IpAddress::Parse("127.0.0.50"));
  auto idle = [&](std::string_view d, std::string_view b, const HostPolicy& h) {
    return c->ReuseFor(d, b, h).idle_timeout_s;
  };
  auto max = [&](std::string_view d, std::string_view b, const HostPolicy& h) {
    return c->ReuseFor(d, b, h).max_deliveries_per_connection;
  };
  EXPECT_EQ(idle("a.example", "", plain), 7u);            // global (the default binding)
  EXPECT_EQ(max("a.example", "", plain), 100);
  EXPECT_EQ(idle("a.example", "b1", plain), 30u);         // the group's
  EXPECT_EQ(max("a.example", "b1", plain), 20);
  EXPECT_EQ(idle("a.example", "b2", plain), 2u);          // the binding's own
  EXPECT_EQ(max("a.example", "b2", plain), 3);
  EXPECT_EQ(idle("a.example", "solo", plain), 0u);        // 0: never parked through it
  EXPECT_EQ(max("a.example", "solo", plain), 100);        // not set there: global
  EXPECT_EQ(idle("pinned.example", "b2", plain), 11u);    // a Domain stanza wins
  EXPECT_EQ(max("pinned.example", "b2", plain), 12);
  EXPECT_EQ(idle("pinned.example", "b2", stanza), 1u);    // a Host stanza wins over all
  EXPECT_EQ(max("pinned.example", "b2", stanza), 12);
  EXPECT_EQ(idle("a.example", "no-such", plain), 7u);     // unknown: the default binding's
  EXPECT_NE(ErrorOf("Binding_Group \"g\" { idle_timeout = 1 }\n"
                    "Binding_Group \"g\" { idle_timeout = 2 }")
                .find("idle_timeout of Binding_Group \"g\" set twice"),
            std::string::npos);
  EXPECT_NE(ErrorOf("Binding \"a\" { Host \"127.0.0.1\" { idle_timeout = 2 } }")
                .find("not valid in Binding::Host scope"),
            std::string::npos);
  // The listing parses back to the same settings (each binding with its effective values).
  std::string listed = ListConfig(*c, ConfigListing::kNonDefault);
  auto again = ParseConfig(listed, "listed.conf");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << listed;
  EXPECT_EQ(ListConfig(*again, ConfigListing::kNonDefault), listed);
  EXPECT_EQ(again->ReuseFor("a.example", "b1", plain).idle_timeout_s, 30u);
}

TEST(BindingConfig, AGroupDeclaredTwiceAddsUp) {
  auto c = ParseConfig("Binding_Group \"g\" { Binding \"a\" { } }\n"
                       "Binding_Group \"g\" { Binding \"b\" { } }\n",
                       "b.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->binding_groups.size(), 1u);
  EXPECT_EQ(c->binding_groups[0].bindings, (std::vector<std::string>{"a", "b"}));
}

// --- selection ---------------------------------------------------------------------------

struct Fixture {
  explicit Fixture(std::string_view text) {
    auto c = ParseConfig(text, "t.conf");
    EXPECT_TRUE(c.ok()) << c.status();
    selector = std::make_unique<Selector>(std::make_shared<const Config>(*std::move(c)),
                                          SelectorOptions{.clock = &clock, .random = &random});
  }
  ManualClock clock;
  SplitMixRandom random{7};
  std::unique_ptr<Selector> selector;
};

constexpr std::string_view kTwo = R"(
routes = ( "127.0.0.1" )
prohibited_hosts = ( )
Host "127.0.0.1" { max_outbound_connections = 10 }
Binding_Group "pool" {
  Binding "b2" { bind_address = "127.0.0.2"  Host "127.0.0.1" { max_outbound_connections = 3 } }
  Binding "b3" { bind_address = "127.0.0.3"  Host "127.0.0.1" { max_outbound_connections = 3 } }
}
)";

TEST(BindingSelection, AGroupSpreadsEvenlyAndEachBindingKeepsItsHostLimit) {
  Fixture f(kTwo);
  std::vector<Lease> leases;
  std::map<std::string, int> per;
  for (int i = 0; i < 8; ++i) {
    AcquireResult r = f.selector->Acquire("a.example", {.binding = "pool"});
    if (!r.ok()) {
      EXPECT_EQ(r.deferral().reason, DeferReason::kHostsAtLimit) << i;
      continue;
    }
    Lease l = r.TakeLease();
    ++per[std::string(l.binding())];
    ASSERT_NE(l.source_address(), nullptr);
    EXPECT_EQ(l.source_address()->ToString(), l.binding() == "b2" ? "127.0.0.2" : "127.0.0.3");
    leases.push_back(std::move(l));
  }
  // 3 per binding (Binding::Host), 6 in all, alternating.
  EXPECT_EQ(per["b2"], 3);
  EXPECT_EQ(per["b3"], 3);
  EXPECT_EQ(leases.size(), 6u);
  EXPECT_NE(leases[0].binding(), leases[1].binding());
  // Releasing one of b3's lets the next go through b3 only.
  for (Lease& l : leases) {
    if (l.binding() == "b3") {
      l.Release();
      break;
    }
  }
  AcquireResult r = f.selector->Acquire("a.example", {.binding = "pool"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().binding(), "b3");
}

TEST(BindingSelection, ManyThreadsNeverPassAPerBindingOrTotalLimit) {
  // Host total 5, 3 per binding, 2 per binding per domain: counted by the test itself
  // while 4 threads acquire and release through the group and the default binding.
  std::string text(kTwo);
  text.replace(text.find("max_outbound_connections = 10"), 29, "max_outbound_connections = 5");
  text += "max_outbound_connections = 2\n";
  Fixture f(text);
  std::atomic<int> per[3] = {0, 0, 0}, total{0}, per_domain[3] = {0, 0, 0};
  std::atomic<int> max_per[3] = {0, 0, 0}, max_total{0}, max_domain[3] = {0, 0, 0};
  auto raise = [](std::atomic<int>& m, int v) {
    int old = m.load();
    while (v > old && !m.compare_exchange_weak(old, v)) {
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        AcquireResult r = t == 3 ? f.selector->Acquire("a.example")
                                 : f.selector->Acquire("a.example", {.binding = "pool"});
        if (!r.ok()) continue;
        const int b = r.lease().binding() == "b2" ? 0 : r.lease().binding() == "b3" ? 1 : 2;
        raise(max_per[b], per[b].fetch_add(1) + 1);
        raise(max_domain[b], per_domain[b].fetch_add(1) + 1);
        raise(max_total, total.fetch_add(1) + 1);
        total.fetch_sub(1);
        per_domain[b].fetch_sub(1);
        per[b].fetch_sub(1);
      }  // released here
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_LE(max_total.load(), 5);
  for (int b = 0; b < 3; ++b) {
    EXPECT_LE(max_per[b].load(), b < 2 ? 3 : 5) << b;
    EXPECT_LE(max_domain[b].load(), 2) << b;
  }
  // Slots were taken (which binding wins how often under contention is not the rule here).
  EXPECT_GT(max_total.load(), 0);
  EXPECT_EQ(f.selector->server_active(), 0);
}

TEST(BindingSelection, HostTotalIsOverAllBindings) {
  // Host stanza 4 (a total) with per-binding 3: at most 4 in all.
  std::string text(kTwo);
  text.replace(text.find("max_outbound_connections = 10"), 29, "max_outbound_connections = 4");
  Fixture f(text);
  std::vector<Lease> leases;
  for (int i = 0; i < 8; ++i) {
    AcquireResult r = f.selector->Acquire("a.example", {.binding = "pool"});
    if (r.ok()) leases.push_back(r.TakeLease());
  }
  EXPECT_EQ(leases.size(), 4u);
  // The default binding shares the host total.
  EXPECT_FALSE(f.selector->Acquire("a.example").ok());
}

TEST(BindingSelection, DomainLimitIsPerBinding) {
  Fixture f(R"(
routes = ( "127.0.0.1" )
max_outbound_connections = 2
Binding "x" { bind_address = "127.0.0.2" }
Binding "y" { bind_address = "127.0.0.3"  Domain "a.example" { max_outbound_connections = 3 } }
)");
  std::vector<Lease> leases;
  auto take = [&](std::string_view binding) {
    AcquireResult r = f.selector->Acquire("a.example", {.binding = binding});
    if (!r.ok()) return std::string(DeferReasonName(r.deferral().reason));
    leases.push_back(r.TakeLease());
    return std::string("ok");
  };
  EXPECT_EQ(take("x"), "ok");
  EXPECT_EQ(take("x"), "ok");
  EXPECT_EQ(take("x"), "domain_limit");  // 2 per binding (global)
  EXPECT_EQ(take("y"), "ok");
  EXPECT_EQ(take("y"), "ok");
  EXPECT_EQ(take("y"), "ok");
  EXPECT_EQ(take("y"), "domain_limit");  // Binding::Domain 3
  EXPECT_EQ(take(""), "ok");             // the default binding counts its own 2
  EXPECT_EQ(take(""), "ok");
  EXPECT_EQ(take(""), "domain_limit");
  EXPECT_EQ(take("nope"), "temporary_failure");
}

TEST(BindingReachability, AFailureThroughOneBindingKeepsTheHostForTheOthers) {
  Fixture f(kTwo);
  AcquireResult r = f.selector->Acquire("a.example", {.binding = "pool"});
  ASSERT_TRUE(r.ok());
  const std::string blocked(r.lease().binding());
  r.lease().Report(Outcome::kGreetingRejected);  // the receiver blocks this source
  r.lease().Release();
  for (int i = 0; i < 5; ++i) {
    AcquireResult n = f.selector->Acquire("a.example", {.binding = "pool"});
    ASSERT_TRUE(n.ok()) << i;
    EXPECT_NE(n.lease().binding(), blocked) << i;
    n.lease().Report(Outcome::kConnected);
  }
  // The default binding still reaches the host.
  EXPECT_TRUE(f.selector->Acquire("a.example").ok());
  // After host_failure_retry one probe goes through the blocked binding.
  f.clock.AdvanceSeconds(121);
  std::vector<Lease> held;
  bool probed = false;
  for (int i = 0; i < 4; ++i) {
    AcquireResult n = f.selector->Acquire("a.example", {.binding = "pool"});
    ASSERT_TRUE(n.ok());
    probed |= n.lease().binding() == blocked;
    held.push_back(n.TakeLease());
  }
  EXPECT_TRUE(probed);
}

TEST(BindingReachability, FailuresThroughTwoBindingsMarkTheHostDown) {
  Fixture f(kTwo);
  for (int i = 0; i < 2; ++i) {
    AcquireResult r = f.selector->Acquire("a.example", {.binding = "pool"});
    ASSERT_TRUE(r.ok()) << i;
    r.lease().Report(Outcome::kConnectFailed);
  }
  AcquireResult r = f.selector->Acquire("a.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.deferral().reason, DeferReason::kHostsUnreachable);
}

TEST(BindingReachability, ALocalErrorBlamesNeitherTheBindingNorTheHost) {
  Fixture f(kTwo);
  for (int i = 0; i < 4; ++i) {
    AcquireResult r = f.selector->Acquire("a.example", {.binding = "b2"});
    ASSERT_TRUE(r.ok()) << i;
    r.lease().Report(Outcome::kLocalError);
  }
}

TEST(BindingSelection, AHostOfAFamilyTheBindingLacksIsNotUsedThroughIt) {
  Fixture f(R"(
routes = ( "[::1]" "127.0.0.1" )
Binding "v4only" { bind_address = "127.0.0.2" }
)");
  AcquireResult r = f.selector->Acquire("a.example", {.binding = "v4only"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().endpoint().address.ToString(), "127.0.0.1");
  // A route of IPv6 hosts only: the binding says why it cannot be used.
  Fixture v6(R"(
routes = ( "[::1]" )
Binding "v4only" { bind_address = "127.0.0.2" }
)");
  AcquireResult none = v6.selector->Acquire("a.example", {.binding = "v4only"});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.deferral().reason, DeferReason::kTempFailure);
  EXPECT_NE(none.deferral().detail.find("no source address of the family"), std::string::npos);
  // Without a binding the IPv6 host (first tier) is used.
  AcquireResult d = f.selector->Acquire("b.example");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d.lease().endpoint().address.ToString(), "::1");
}

// The global bind_address is the default binding's source (DESIGN §4): a session through no
// binding binds it (main's code left the source to the kernel: `mxsched load` with only a
// global bind_address reached the farm from 127.0.0.1). A family it has no address for is
// the kernel's choice; a Binding "default" still takes precedence; a reload replaces it.
TEST(BindingSelection, TheGlobalBindAddressIsTheDefaultBindingsSource) {
  Fixture f(R"(
routes = ( "127.0.0.1" )
bind_address = "127.0.0.9"
)");
  AcquireResult r = f.selector->Acquire("a.example");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().binding(), "");
  ASSERT_NE(r.lease().source_address(), nullptr);
  EXPECT_EQ(r.lease().source_address()->ToString(), "127.0.0.9");
  Fixture v6(R"(
routes = ( "[::1]" )
bind_address = "127.0.0.9"
)");
  AcquireResult k = v6.selector->Acquire("a.example");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k.lease().source_address(), nullptr);  // no IPv6 address: the kernel chooses
  Fixture both(R"(
routes = ( "[::1]" )
bind_address = ( "127.0.0.9" "::1" )
)");
  AcquireResult b = both.selector->Acquire("a.example");
  ASSERT_TRUE(b.ok());
  ASSERT_NE(b.lease().source_address(), nullptr);
  EXPECT_EQ(b.lease().source_address()->ToString(), "::1");
  Fixture named(R"(
routes = ( "127.0.0.1" )
bind_address = "127.0.0.9"
Binding "default" { bind_address = "127.0.0.8" }
)");
  AcquireResult n = named.selector->Acquire("a.example");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n.lease().binding(), "default");
  EXPECT_EQ(n.lease().source_address()->ToString(), "127.0.0.8");
  // Reloaded without it: the kernel chooses again.
  auto plain = ParseConfig("routes = ( \"127.0.0.1\" )\n", "b.conf");
  ASSERT_TRUE(plain.ok());
  f.selector->SetConfig(std::make_shared<const Config>(*plain));
  AcquireResult after = f.selector->Acquire("b.example");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after.lease().source_address(), nullptr);
}

// --- views (docs/DESIGN.md §8, "Egress bindings in the views") ---------------------------

// What Describe shows per binding is what the next admission applies; reading creates
// nothing (no per-domain block, no (binding, host) state).
TEST(BindingViews, CountsPerBindingAndPerPairAreTheAdmissionsAndReadingCreatesNothing) {
  Fixture f(kTwo);
  auto rows = [](const std::vector<BindingView>& v) {
    std::map<std::string, std::pair<int32_t, int32_t>> out;
    for (const BindingView& b : v) out[b.binding] = {b.active, b.limit};
    return out;
  };
  using Rows = std::map<std::string, std::pair<int32_t, int32_t>>;
  DomainView v = f.selector->Describe("a.example");
  // The domain's limit is per binding (32 each), and "default": connections through none.
  EXPECT_EQ(rows(v.bindings), (Rows{{"b2", {0, 32}}, {"b3", {0, 32}}, {"default", {0, 32}}}));
  ASSERT_EQ(v.tiers.size(), 1u);
  const auto& hb = v.tiers[0].hosts[0].bindings;
  // Not used yet: rows for the Binding::Host limits only, no state made by reading.
  EXPECT_EQ(rows(hb), (Rows{{"b2", {0, 3}}, {"b3", {0, 3}}}));
  for (const BindingView& b : hb) EXPECT_FALSE(b.used) << b.binding;
  EXPECT_EQ(hb[0].source, "127.0.0.2");
  EXPECT_FALSE(f.selector->Describe("a.example").tiers[0].hosts[0].bindings[0].used);

  Lease a = f.selector->Acquire("a.example", {.binding = "pool"}).TakeLease();
  Lease b = f.selector->Acquire("a.example", {.binding = "pool"}).TakeLease();
  Lease c = f.selector->Acquire("a.example").TakeLease();
  ASSERT_TRUE(a.valid() && b.valid() && c.valid());
  v = f.selector->Describe("a.example");
  EXPECT_EQ(rows(v.bindings), (Rows{{"b2", {1, 32}}, {"b3", {1, 32}}, {"default", {1, 32}}}));
  EXPECT_EQ(v.tiers[0].hosts[0].active, 3) << "the host's total over every binding";
  EXPECT_EQ(rows(v.tiers[0].hosts[0].bindings), (Rows{{"b2", {1, 3}}, {"b3", {1, 3}}}));

  // A failure through one binding: that pair's failure memory, the host still up.
  const std::string blocked(a.binding());
  a.Report(Outcome::kConnectFailed);
  a.Release();
  std::vector<const HostState*> hosts = {&b.host()};
  auto pair = [&](const std::string& name) {
    const std::vector<std::vector<BindingView>> all = f.selector->DescribeBindings(hosts);
    for (const BindingView& x : all[0]) {
      if (x.binding == name) return x;
    }
    return BindingView{};
  };
  EXPECT_TRUE(pair(blocked).used);
  EXPECT_EQ(pair(blocked).state, "failed");
  EXPECT_EQ(pair(blocked).retry_in_s, 120);
  EXPECT_EQ(pair(blocked).consecutive_failures, 1u);
  EXPECT_EQ(pair(blocked).failures, 1u);
  EXPECT_EQ(pair(blocked).connections, 1u);
  EXPECT_EQ(pair(blocked).active, 0);
  EXPECT_TRUE(f.selector->Describe("a.example").tiers[0].hosts[0].reachable);
  f.clock.AdvanceSeconds(121);
  EXPECT_EQ(pair(blocked).state, "probe_due");
  EXPECT_EQ(pair(blocked).retry_in_s, 0);

  // A reload: the limits shown are the new ones at once (what the next admission uses).
  auto reloaded = ParseConfig(StrCat(kTwo, "\nBinding \"default\" { }\n"), "t.conf");
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  f.selector->SetConfig(std::make_shared<const Config>(*std::move(reloaded)));
  v = f.selector->Describe("a.example");
  // A Binding named "default" takes the unbound connections: it is a binding like the others
  // (no second "default" row), its count 0 (c went through no binding before the reload).
  Rows want{{"b2", {1, 32}}, {"b3", {1, 32}}, {"default", {0, 32}}};
  want[blocked].first = 0;  // its lease was released
  EXPECT_EQ(rows(v.bindings), want);
}


// --- memory follows the live set (§1 rule 13) ------------------------------------------

std::shared_ptr<const Config> PoolOf(int i) {
  // A group of two bindings whose names change every reload, and one that stays.
  auto c = ParseConfig(StrCat("routes = ( \"127.0.0.1\" )\nprohibited_hosts = ( )\n",
                              "Binding \"stays\" { bind_address = \"127.0.0.4\" }\n",
                              "Binding_Group \"pool\" {\n  Binding \"b", i,
                              "\" { bind_address = \"127.0.0.2\" }\n  Binding \"b", i + 1,
                              "\" { bind_address = \"127.0.0.3\" }\n}\n"),
                       "t.conf");
  EXPECT_TRUE(c.ok()) << c.status();
  return std::make_shared<const Config>(*std::move(c));
}

// Resident kilobytes of this process (/proc/self/statm), for bounds on what a step costs.
int64_t ResidentKiB() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  long size = 0, resident = 0;
  if (f != nullptr) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return int64_t{resident} * 4;  // 4 KiB pages
}

// A binding holds its (binding, host) table only once used: 100,000 configured bindings made
// `mxsched load` and `route` take 1.7 GB before any connection (16 KiB of table each).
TEST(BindingMemory, ABindingNeverUsedHoldsNoHostTable) {
  std::string text = "routes = ( \"127.0.0.1\" )\nBinding_Group \"g\" {\n";
  constexpr int kBindings = 20000;
  for (int i = 0; i < kBindings; ++i) text += StrCat("  Binding \"b", i, "\" { }\n");
  text += "}\n";
  auto c = ParseConfig(text, "t.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  auto config = std::make_shared<const Config>(*std::move(c));
  ManualClock clock;
  SplitMixRandom random{7};
  const int64_t before = ResidentKiB();
  Selector selector(config, SelectorOptions{.clock = &clock, .random = &random});
  const int64_t grew = ResidentKiB() - before;
  const size_t bytes = selector.bindings().MemoryBytes();
  // Each binding: its object, name and address record, a few hundred bytes (320 MB with a
  // table each from the start).
  EXPECT_LT(bytes, size_t{kBindings} * 512) << bytes;
#if !defined(MXSCHED_TSAN) && !defined(MXSCHED_ASAN)
  // And the process's own count agrees (a sanitizer's shadow memory would not: TSan's grew
  // 52 MB here).
  EXPECT_LT(grew, kBindings * 2) << "KiB for " << kBindings << " bindings";
#else
  (void)grew;
#endif
  // One admission through the group makes the table of the binding it used, and only that.
  AcquireResult r = selector.Acquire("a.example", {.binding = "g"});
  ASSERT_TRUE(r.ok());
  EXPECT_GT(selector.bindings().MemoryBytes(), bytes + 16 * 1024);
  EXPECT_LT(selector.bindings().MemoryBytes(), bytes + 2 * 16 * 1024 + 4096);
}

// A reload that renames many bindings takes time linear in their number: each new binding
// took the lowest free id by a scan and an erase of the free list, and looked for itself
// among the dropped bindings by a scan (100,000 renamed twice: 25 s, under the registry's
// mutex). Measured as a ratio in one run, not against a clock: four times the bindings
// take about four times as long (quadratic: sixteen). Ids stay dense: the lowest free ones
// are taken first.
TEST(BindingMemory, AReloadRenamingManyBindingsTakesLinearTime) {
  auto named = [&](int n, char prefix) {
    std::string text = "routes = ( \"127.0.0.1\" )\n";
    for (int i = 0; i < n; ++i) text += StrCat("Binding \"", prefix, i, "\" { }\n");
    auto c = ParseConfig(text, "t.conf");
    EXPECT_TRUE(c.ok()) << c.status();
    return std::make_shared<const Config>(*std::move(c));
  };
  // Three reloads of n renamed bindings: every a dropped and freed (n free ids), every c
  // takes one of them, and back (the c's dropped and freed). Returns seconds.
  auto reloads = [&](int n) {
    auto a = named(n, 'a'), b = named(n, 'b'), c = named(n, 'c');
    ManualClock clock;
    SplitMixRandom random{7};
    Selector selector(a, SelectorOptions{.clock = &clock, .random = &random});
    const auto start = std::chrono::steady_clock::now();
    selector.SetConfig(b);
    selector.SetConfig(c);
    selector.SetConfig(b);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(selector.bindings().live().bindings, size_t(n));
    EXPECT_LE(selector.bindings().size(), uint32_t(2 * n + 1)) << "ids are reused";
    return seconds;
  };
  const double small = reloads(25000);
  const double large = reloads(100000);
  std::cout << "three reloads of renamed bindings: 25,000 " << small << " s, 100,000 " << large
            << " s (" << large / small << "x)\n";
  EXPECT_LT(large / small, 9.0) << "4x the bindings; linear is ~4x, quadratic 16x";
}

TEST(BindingMemory, AReloadFreesWhatItReplacedOnceNoLeaseHoldsIt) {
  ManualClock clock;
  SplitMixRandom random{7};
  Selector selector(PoolOf(0), SelectorOptions{.clock = &clock, .random = &random});
  BindingRegistry& reg = selector.bindings();
  EXPECT_EQ(reg.live().bindings, 3u);
  EXPECT_EQ(reg.live().egresses, 4u);  // each binding, and the group
  // The same configuration again replaces nothing (the egresses are kept, cursors too).
  selector.SetConfig(PoolOf(0));
  EXPECT_EQ(reg.live().egresses, 4u);
  EXPECT_FALSE(reg.has_replaced());

  // A lease held across three reloads keeps its binding (name, counts, failure memory).
  Lease held = selector.Acquire("a.example", {.binding = "pool"}).TakeLease();
  ASSERT_TRUE(held.valid());
  const std::string held_name(held.binding());
  Lease stays = selector.Acquire("a.example", {.binding = "stays"}).TakeLease();
  ASSERT_TRUE(stays.valid());
  size_t most_bindings = 0, most_egresses = 0;
  uint32_t most_ids = 0;  // (ids only grow to the most bindings alive at once)
  std::vector<Lease> recent;
  for (int i = 1; i <= 300; ++i) {
    selector.SetConfig(PoolOf(i * 2));
    if (i == 3) {
      EXPECT_EQ(held.binding(), held_name);  // still readable (ASan: not freed)
      held.Report(Outcome::kConnectFailed);
      held.Release();
    }
    AcquireResult r = selector.Acquire("a.example", {.binding = "pool"});
    ASSERT_TRUE(r.ok()) << i << ": " << r.deferral().detail;
    recent.push_back(r.TakeLease());
    if (recent.size() > 2) recent.erase(recent.begin());  // two reloads' leases held
    if (i <= 3) continue;  // (`held` kept the first pair meanwhile)
    most_bindings = std::max(most_bindings, reg.live().bindings);
    most_egresses = std::max(most_egresses, reg.live().egresses);
    most_ids = std::max(most_ids, reg.size());
  }
  // Live: 3 configured + the pairs the two held leases keep (2 each) — never the 600
  // configured over time; ids are reused (a reload's new bindings take theirs before the
  // last ones are freed), so per-domain counts stay as small.
  EXPECT_EQ(most_bindings, 7u);
  EXPECT_LE(most_egresses, 4u + 2 * 3);
  EXPECT_LE(most_ids, 12u) << "ids: at most the peak alive (9, with `held`) + 2 new + 1";
  EXPECT_EQ(stays.binding(), "stays");  // an unchanged binding is the same object
  stays.Release();
  recent.clear();
  selector.EvictIdle();  // collects what the last leases held
  EXPECT_EQ(reg.live().bindings, 3u);
  EXPECT_EQ(reg.live().egresses, 4u);
  EXPECT_FALSE(reg.has_replaced());
  // The views list the configured bindings only, with fresh counts.
  DomainView v = selector.Describe("a.example");
  std::vector<std::string> names;
  for (const BindingView& b : v.bindings) names.push_back(b.binding);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"b600", "b601", "default", "stays"}));
  for (const BindingView& b : v.bindings) EXPECT_EQ(b.active, 0) << b.binding;
}

TEST(BindingMemory, AQueuedWaiterKeepsItsEgressAcrossAReload) {
  // Host limit 1: the second session queues through the group; a reload replaces the group;
  // the hand-off after the release grants it through the old egress, which is then freed.
  auto conf = [](int i) {
    auto c = ParseConfig(StrCat("routes = ( \"127.0.0.1\" )\nprohibited_hosts = ( )\n",
                                "Host \"127.0.0.1\" { max_outbound_connections = 1 }\n",
                                "Binding_Group \"pool\" { Binding \"w", i,
                                "\" { bind_address = \"127.0.0.2\" } }\n"),
                         "t.conf");
    EXPECT_TRUE(c.ok()) << c.status();
    return std::make_shared<const Config>(*std::move(c));
  };
  ManualClock clock;
  SplitMixRandom random{7};
  Selector selector(conf(0), SelectorOptions{.clock = &clock, .random = &random});
  Lease first = selector.Acquire("a.example", {.binding = "pool"}).TakeLease();
  ASSERT_TRUE(first.valid());
  struct Waiter : SlotWaiter {
    void Wake(Lease l) override { lease = std::move(l); }
    Lease lease;
  } waiter;
  selector.WaitForSlot("a.example", &waiter, false, {.binding = "pool"});
  ASSERT_FALSE(waiter.lease.valid());
  selector.SetConfig(conf(1));
  selector.SetConfig(conf(2));
  // w2 configured; w0 held by the lease and the ticket; w1 (held by nothing) freed.
  EXPECT_EQ(selector.bindings().live().bindings, 2u);
  first.Release();
  ASSERT_TRUE(waiter.lease.valid());
  EXPECT_EQ(waiter.lease.binding(), "w0");
  selector.EvictIdle();
  EXPECT_EQ(selector.bindings().live().bindings, 2u) << "w0 held by the granted lease";
  waiter.lease.Release();
  selector.EvictIdle();
  EXPECT_EQ(selector.bindings().live().bindings, 1u);
  EXPECT_EQ(selector.bindings().live().egresses, 2u);
}

}  // namespace
}  // namespace mxsched
