#include "mxsched/scheduler/config_options.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"

namespace mxsched {
namespace {

// A value of the option's type that the parser accepts (the minimum for ranged types).
std::string SomeValidValue(const OptionDescriptor& o) {
  switch (o.type) {
    case OptionType::kCount:
    case OptionType::kPort:
    case OptionType::kSeconds:
      return StrCat(o.min);
    case OptionType::kBool:
      return "true";
    case OptionType::kChoice:
      return std::string(Split(o.choices, '|').back());
    case OptionType::kRoutes:
      return "( \"192.0.2.1\" )";
    case OptionType::kCidrList:
      return "( \"192.0.2.0/24\" )";
    case OptionType::kNameList:
      return "( \"*.blocked.example\" )";
    case OptionType::kRedisUrl:
      return "\"redis://127.0.0.1:6379/1\"";
    case OptionType::kName:
      return "fleet-1";
    case OptionType::kBindAddress:
      return "( \"127.0.0.2\" \"::1\" )";
    case OptionType::kThrottle:
      return "\"20/2\"";
  }
  return "";
}

std::string InScope(unsigned scope, const std::string& assignment) {
  if (scope == kDomainScope) return "Domain \"a.example\" {\n" + assignment + "\n}\n";
  if (scope == kHostScope) return "Host \"h.example\" {\n" + assignment + "\n}\n";
  if (scope == kBindingScope) return "Binding \"b\" {\n" + assignment + "\n}\n";
  if (scope == kBindingDomainScope) {
    return "Binding \"b\" { Domain \"a.example\" {\n" + assignment + "\n} }\n";
  }
  if (scope == kBindingHostScope) {
    return "Binding \"b\" { Host \"h.example\" {\n" + assignment + "\n} }\n";
  }
  return assignment + "\n";
}

TEST(ConfigOptions, EveryOptionIsAcceptedExactlyInItsScopes) {
  ASSERT_FALSE(ConfigOptions().empty());
  for (const OptionDescriptor& o : ConfigOptions()) {
    EXPECT_EQ(ToLower(o.name), o.name);
    EXPECT_FALSE(o.doc.empty()) << o.name;
    EXPECT_EQ(FindConfigOption(o.name), &o);
    EXPECT_EQ(bool(o.host), (o.scopes & kHostScope) != 0) << o.name << ": Host setter vs scope";
    EXPECT_EQ(bool(o.domain) || bool(o.config), (o.scopes & kGlobalScope) != 0) << o.name;
    for (unsigned scope : {kGlobalScope, kDomainScope, kHostScope, kBindingScope,
                           kBindingDomainScope, kBindingHostScope}) {
      std::string text = InScope(scope, StrCat(o.name, " = ", SomeValidValue(o)));
      auto c = ParseConfig(text, "s.conf");
      if (o.scopes & scope) {
        EXPECT_TRUE(c.ok()) << text << c.status();
      } else {
        ASSERT_FALSE(c.ok()) << text;
        EXPECT_NE(ToStd(c.status().message()).find("is not valid in"), std::string::npos)
            << c.status();
      }
    }
  }
}

TEST(ConfigOptions, SetInAStanzaReachesTheSettingsOfThatStanza) {
  for (const OptionDescriptor& o : ConfigOptions()) {
    if (o.type == OptionType::kBool || o.type == OptionType::kRoutes) continue;
    std::string value = o.type == OptionType::kChoice     ? std::string(Split(o.choices, '|')[1])
                        : o.type == OptionType::kCidrList ? "( \"198.51.100.0/24\" )"
                                                          : StrCat(o.min + 1);
    if (o.scopes & kDomainScope) {
      auto c = ParseConfig(InScope(kDomainScope, StrCat(o.name, " = ", value)), "d.conf");
      ASSERT_TRUE(c.ok()) << c.status();
      auto parsed = ParseConfig(StrCat(o.name, " = ", value), "g.conf");
      ASSERT_TRUE(parsed.ok());
      EXPECT_EQ(FormatOptionValue(o, o.domain.get(c->ForDomain("a.example"))),
                FormatOptionValue(o, *GlobalOptionValue(o, *parsed)))
          << o.name;
      EXPECT_EQ(FormatOptionValue(o, o.domain.get(c->global)),
                FormatOptionValue(o, *GlobalOptionValue(o, Config{})))
          << o.name << ": a Domain stanza must not change the global value";
    }
    if (o.scopes & kHostScope) {
      auto c = ParseConfig(InScope(kHostScope, StrCat(o.name, " = ", value)), "h.conf");
      ASSERT_TRUE(c.ok()) << c.status();
      OptionValue v = o.host.get(*c->ForHost("h.example"));
      EXPECT_TRUE(v.present) << o.name;
      EXPECT_EQ(FormatOptionValue(o, v), FormatOptionValue(o, *ParseScalarOption(o, value)));
    }
  }
}

TEST(ConfigOptions, RangesAreCheckedAtLoadWithFileLineColumn) {
  for (const OptionDescriptor& o : ConfigOptions()) {
    if (o.type != OptionType::kCount && o.type != OptionType::kSeconds &&
        o.type != OptionType::kPort) {
      continue;
    }
    for (int64_t ok : {o.min, o.max}) {
      auto c = ParseConfig(StrCat("\n  ", o.name, " = ", ok, "\n"), "r.conf");
      EXPECT_EQ(c.ok(), (o.scopes & kGlobalScope) != 0) << o.name << " = " << ok;
    }
    for (int64_t bad : {o.min - 1, o.max + 1}) {
      if (bad < 0) continue;
      std::string line = StrCat(o.name, " = ", bad);
      auto c =
          ParseConfig(InScope(o.scopes & kGlobalScope ? kGlobalScope : kHostScope, line), "r.conf");
      ASSERT_FALSE(c.ok()) << line;
      const int line_no = o.scopes & kGlobalScope ? 1 : 2;
      EXPECT_EQ(ToStd(c.status().message())
                    .rfind(StrCat("r.conf:", line_no, ":", o.name.size() + 4, ": option \"", o.name,
                                  "\" expects "),
                           0),
                0u)
          << c.status();
      EXPECT_NE(ToStd(c.status().message()).find(StrCat(o.min, "..", o.max)), std::string::npos)
          << c.status();
    }
  }
}

TEST(ConfigOptions, ZeroOrHugeTimeoutsAreRejected) {
  for (const char* text : {"connect_timeout = 0", "banner_timeout = 0", "connect_timeout = 2h",
                           "banner_timeout = 99999999999", "max_dns_ttl = 0",
                           "max_outbound_connections = 0", "server_max_outbound_connections = 0",
                           "mx_failures_to_delay = 0", "connect_timeout = 9999999999999999d"}) {
    auto c = ParseConfig(text, "t.conf");
    EXPECT_FALSE(c.ok()) << text;
    if (!c.ok()) {
      EXPECT_EQ(ToStd(c.status().message()).rfind("t.conf:1:", 0), 0u) << c.status();
    }
  }
  auto c = ParseConfig("connect_timeout = 1h\nbanner_timeout = 1s\nhost_failure_retry = 0", "t");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->global.connect_timeout_s, 3600u);
  EXPECT_EQ(c->global.banner_timeout_s, 1u);
  EXPECT_EQ(c->host_failure_retry_s, 0u);
}

TEST(ConfigOptions, CrossOptionErrorNamesTheLaterOption) {
  auto c = ParseConfig("min_dns_ttl = 100\n  max_dns_ttl = 10\n", "x.conf");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(ToStd(c.status().message()), "x.conf:2:17: min_dns_ttl (100) exceeds max_dns_ttl (10)");
}

constexpr char kFull[] = R"(
server_max_outbound_connections = 500
routes = ( "smtp://192.0.2.7?pref=10" "smtp://192.0.2.8?pref=10" "backup.example" )
host_failure_retry = 3m
prohibited_hosts = ( "10.0.0.0/8" "fe80::/10" )
connect_timeout = 30
Domain "b.example" { max_outbound_connections = 8  routes = ( "__mx__" )  use_ipv6 = yes }
Domain "a.example" { banner_timeout = 2m  delivery_method = "smtp" }
Host "mx1.example.com" { max_outbound_connections = 4  host_failure_retry = 30 }
Host 192.0.2.7 { max_outbound_connections = 2 }
prohibited_mx_names = ( "*.blocked.example" "mx.bad.example" )
adaptive_concurrency_floor = 2
Host "*.provider.example" { max_outbound_connections = 40  adaptive_concurrency = no }
)";

TEST(ConfigOptions, ListingParsesBackToTheSameSettings) {
  auto c = ParseConfig(kFull, "full.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  for (ConfigListing l : {ConfigListing::kEffective, ConfigListing::kNonDefault}) {
    std::string listed = ListConfig(*c, l);
    auto again = ParseConfig(listed, "listed.conf");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << listed;
    EXPECT_EQ(ListConfig(*again, ConfigListing::kEffective),
              ListConfig(*c, ConfigListing::kEffective));
  }
  std::string effective = ListConfig(*c, ConfigListing::kEffective);
  EXPECT_NE(effective.find("connect_timeout = 30s\n"), std::string::npos) << effective;
  EXPECT_NE(effective.find("banner_timeout = 60s  # default\n"), std::string::npos) << effective;
  EXPECT_NE(effective.find("Domain \"a.example\" {\n  banner_timeout = 120s\n  delivery_method = "
                           "\"smtp\"\n}\nDomain \"b.example\" {\n"),
            std::string::npos)
      << effective;
  EXPECT_NE(effective.find("Host \"192.0.2.7\" {\n  max_outbound_connections = 2\n}\n"),
            std::string::npos)
      << effective;
  EXPECT_NE(effective.find("Host \"*.provider.example\" {\n  max_outbound_connections = 40\n"
                           "  adaptive_concurrency = false\n}\n"),
            std::string::npos)
      << effective;
  EXPECT_NE(effective.find("prohibited_mx_names = ( \"*.blocked.example\" \"mx.bad.example\" )"),
            std::string::npos)
      << effective;
  std::string non_default = ListConfig(*c, ConfigListing::kNonDefault);
  EXPECT_EQ(non_default.find("banner_timeout = 60s"), std::string::npos) << non_default;
  EXPECT_EQ(non_default.find("# default"), std::string::npos) << non_default;
  EXPECT_NE(non_default.find("server_max_outbound_connections = 500\n"), std::string::npos);
}

TEST(ConfigOptions, DefaultsListingIsTheDefaultConfig) {
  auto parsed = ParseConfig(ListConfig(Config{}, ConfigListing::kDefaults), "d.conf");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(ListConfig(*parsed, ConfigListing::kEffective),
            ListConfig(Config{}, ConfigListing::kEffective));
  auto full = ParseConfig(kFull, "full.conf");
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(ListConfig(*full, ConfigListing::kDefaults),
            ListConfig(Config{}, ConfigListing::kDefaults));
  std::string d = ListConfig(Config{}, ConfigListing::kDefaults);
  for (const OptionDescriptor& o : ConfigOptions()) {
    EXPECT_NE(d.find(StrCat(o.name, " = ")), std::string::npos) << o.name;
  }
  EXPECT_NE(d.find("connect_timeout = 300s\n"), std::string::npos) << d;
  EXPECT_NE(d.find("routes = ( \"__mx__\" )\n"), std::string::npos) << d;
}

TEST(ConfigOptions, DesignDocTableIsGeneratedFromTheDescriptors) {
  const std::string path = MXSCHED_SOURCE_DIR "/docs/DESIGN.md";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- config-options:begin (generated; see config_options.h) -->\n";
  const std::string end = "<!-- config-options:end -->";
  const size_t b = doc.find(begin);
  const size_t e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << "docs/DESIGN.md §4 lacks the marker " << begin;
  ASSERT_NE(e, std::string::npos);
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), ConfigOptionsMarkdown())
      << "docs/DESIGN.md §4 is out of date; replace the table between the markers with:\n"
      << ConfigOptionsMarkdown();
}

}  // namespace
}  // namespace mxsched
