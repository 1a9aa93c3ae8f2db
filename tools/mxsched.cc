// mxsched — the command-line tool: inspect routes, run load and stress tests, benchmark.
// main() builds the CLI11 parser from kCommands (tools/commands.h) and runs the chosen
// subcommand; `route` lives here, `load` and `farm` in farm_load.cc, `demo` in demo.cc.
// `mxsched --help` and `mxsched SUBCOMMAND --help` list every flag with its default.
//
// Exit codes: 0 success, 1 a domain has no usable route (route) or an I/O problem,
// 2 usage or configuration error.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/base/strings.h"
#include "testbed/json.h"
#include "mxsched/version.h"
#include "mxsched/io/loop.h"
#include "mxsched/io/resolver.h"
#include "tools/commands.h"

namespace mxsched::tools {

int UsageError(std::string_view why) {
  std::fprintf(stderr, "mxsched: %.*s\n", static_cast<int>(why.size()), why.data());
  return 2;
}

namespace {

void PrintHuman(const DomainView& v) {
  size_t hosts = 0;
  for (const auto& t : v.tiers) hosts += t.hosts.size();
  std::printf("%s: %s, %zu tier(s), %zu host(s), TTL %llds, active %d/%s\n", v.domain.c_str(),
              std::string(RouteStateName(v.state)).c_str(), v.tiers.size(), hosts,
              static_cast<long long>(v.ttl_left_s), v.active,
              v.limit == kUnlimited ? "unlimited" : std::to_string(v.limit).c_str());
  if (!v.detail.empty()) std::printf("  %s\n", v.detail.c_str());
  for (const auto& t : v.tiers) {
    std::printf("  tier %u, mx pref %u:\n", t.tier, t.mx_pref);
    for (size_t i = 0; i < t.hosts.size(); ++i) {
      const DomainView::Host& h = t.hosts[i];
      // Momentum's console marks: "=>" next pick, "*" failed.
      const char* mark = !h.reachable ? " *" : (i == 0 ? "=>" : "  ");
      std::string limit = h.limit == kUnlimited ? "unlimited" : std::to_string(h.limit);
      std::printf("    %s %-24s %-28s limit %-9s active %d", mark, h.endpoint.ToString().c_str(),
                  h.name.c_str(), limit.c_str(), h.active);
      if (h.seconds_since_failure >= 0) {
        std::printf("  %llds since failure, %u consecutive",
                    static_cast<long long>(h.seconds_since_failure), h.consecutive_failures);
      }
      if (h.limit != h.configured_limit) {  // adaptive (DESIGN §6): lowered by busy replies
        std::printf("  (configured %s)", h.configured_limit == kUnlimited
                                             ? "unlimited"
                                             : std::to_string(h.configured_limit).c_str());
      }
      if (!h.limit_moved.empty()) std::printf("  %s", h.limit_moved.c_str());
      if (!h.group.empty()) {
        std::printf("  provider \"%s\" %d/%d", h.group.c_str(), h.group_active, h.group_limit);
      }
      std::printf("\n");
    }
  }
}

nlohmann::json ToJson(const DomainView& v) {
  nlohmann::json tiers = nlohmann::json::array();
  for (const auto& t : v.tiers) {
    nlohmann::json hosts = nlohmann::json::array();
    for (const auto& h : t.hosts) {
      hosts.push_back({{"name", h.name},
                       {"address", h.endpoint.address.ToString()},
                       {"port", h.endpoint.port},
                       {"limit", h.limit == kUnlimited ? int64_t{-1} : int64_t{h.limit}},
                       {"active", h.active},
                       {"reachable", h.reachable},
                       {"seconds_since_failure", h.seconds_since_failure},
                       {"consecutive_failures", h.consecutive_failures},
                       {"configured_limit", h.configured_limit == kUnlimited
                                                ? int64_t{-1}
                                                : int64_t{h.configured_limit}},
                       {"limit_moved", h.limit_moved},
                       {"busy_replies", h.busy_replies},
                       {"provider", h.group},
                       {"provider_limit", h.group_limit},
                       {"provider_active", h.group_active}});
    }
    tiers.push_back({{"tier", t.tier}, {"mx_pref", t.mx_pref}, {"hosts", std::move(hosts)}});
  }
  return {{"domain", v.domain},
          {"state", RouteStateName(v.state)},
          {"detail", v.detail},
          {"ttl_left_s", v.ttl_left_s},
          {"active", v.active},
          {"limit", v.limit == kUnlimited ? int64_t{-1} : int64_t{v.limit}},
          {"tiers", std::move(tiers)}};
}

struct RouteFlags {
  std::string config_path;
  std::string dns;
  bool json = false;
  std::vector<std::string> domains;
};

int RunRoute(const RouteFlags& f) {
  absl::StatusOr<Config> config = LoadConfigFile(f.config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "mxsched: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  io::DnsCache cache;
  std::unique_ptr<io::Loop> loop;
  std::unique_ptr<io::DnsClient> client;
  if (!f.dns.empty()) {
    auto l = io::Loop::Create(64);
    if (!l.ok()) return UsageError(ToStd(l.status().message()));
    loop = *std::move(l);
    auto c = io::DnsClient::Create(loop.get(), &cache, f.dns);
    if (!c.ok()) return UsageError(ToStd(c.status().message()));
    client = *std::move(c);
  }
  Selector selector(std::make_shared<const Config>(*std::move(config)),
                    {.resolver = client ? &cache : nullptr});
  nlohmann::json out = nlohmann::json::array();
  int rc = 0;
  for (const std::string& d : f.domains) {
    DomainView v = selector.Describe(d);
    // With DNS, run the resolver until the route is known (c-ares gives up well before).
    for (int i = 0; loop && v.state == RouteState::kPending && i < 300; ++i) {
      loop->RunOnce(50);
      v = selector.Describe(d);
    }
    if (v.state != RouteState::kReady) rc = 1;
    if (f.json) {
      out.push_back(ToJson(v));
    } else {
      PrintHuman(v);
    }
  }
  if (f.json) std::printf("%s\n", DumpJson(out).c_str());
  return rc;
}

}  // namespace

CommandRun SetUpRouteCommand(CLI::App& sub) {
  auto f = std::make_shared<RouteFlags>();
  sub.add_option("--config", f->config_path, "Configuration file (Momentum syntax)")
      ->required()
      ->type_name("FILE");
  sub.add_option("--dns", f->dns,
                 "DNS server for MX and address lookups; without it only literal-address "
                 "routes resolve")
      ->type_name("HOST:PORT");
  sub.add_flag("--json", f->json, "Print a JSON array, one object per domain");
  sub.add_option("DOMAIN", f->domains, "Domains to show")->required();
  return [f] { return RunRoute(*f); };
}

}  // namespace mxsched::tools

int main(int argc, char** argv) {
  namespace t = mxsched::tools;
  CLI::App app{"mxsched: outbound SMTP connection scheduler - inspect routes, run load and "
               "stress tests.\nExit status: 0 success, 1 the command ran and found a problem, "
               "2 usage or configuration error.",
               "mxsched"};
  app.set_version_flag("--version", "mxsched " MXSCHED_VERSION_STRING);
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  std::vector<t::CommandRun> runs(std::size(t::kCommands));
  for (size_t i = 0; i < std::size(t::kCommands); ++i) {
    CLI::App* sub = app.add_subcommand(t::kCommands[i].name, t::kCommands[i].description);
    runs[i] = t::kCommands[i].set_up(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every real parse error is a usage error (2).
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  for (size_t i = 0; i < std::size(t::kCommands); ++i) {
    if (app.got_subcommand(t::kCommands[i].name)) return runs[i]();
  }
  return 2;  // unreachable: require_subcommand(1)
}
