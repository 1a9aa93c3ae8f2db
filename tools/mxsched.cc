// mxsched — the command-line tool: inspect routes, run load and stress tests, benchmark.
//
//   mxsched route --config FILE [--dns HOST:PORT] [--json] DOMAIN...
//   mxsched load  --config FILE [--dns HOST:PORT] --domains D1,D2,... --sessions N
//                 --concurrency C [--threads T] [--hold-ms H] [--json OUT]
//   mxsched farm  --listen ADDR[-ADDR]:PORT ... [--fault ADDR=refuse|blackhole|tempfail|reset|slow:MS|cap:N]
//                 [--stats FILE] [--max-seconds S]
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
#include "mxsched/io/loop.h"
#include "mxsched/io/resolver.h"
#include "tools/commands.h"

namespace mxsched::tools {

constexpr char kUsage[] =
    "usage:\n"
    "  mxsched route --config FILE [--dns HOST:PORT] [--json] DOMAIN...\n"
    "  mxsched load  --config FILE [--dns HOST:PORT] --domains D1,D2,...|@FILE --sessions N\n"
    "                --concurrency C [--threads T] [--hold-ms H] [--json OUT]\n"
    "                [--max-seconds S] [--max-attempts K] [--connect-timeout-ms MS]\n"
    "                [--banner-timeout-ms MS] [--wait-ms MS] [--message BYTES]\n"
    "  mxsched farm  --listen ADDR[-ADDR]:PORT ... [--fault ADDR=refuse|blackhole|tempfail|reset|slow:MS|cap:N]\n"
    "                [--flap ADDR=MS] [--stats FILE] [--max-seconds S]\n"
    "  mxsched demo  [--seconds S] [--out DIR]\n";

int UsageError(std::string_view why) {
  std::fprintf(stderr, "mxsched: %.*s\n%s", static_cast<int>(why.size()), why.data(), kUsage);
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
      std::printf("\n");
    }
  }
}

void AddJson(JsonWriter& w, const DomainView& v) {
  w.BeginObject()
      .Field("domain", v.domain)
      .Field("state", RouteStateName(v.state))
      .Field("detail", v.detail)
      .Field("ttl_left_s", v.ttl_left_s)
      .Field("active", v.active)
      .Field("limit", v.limit == kUnlimited ? int64_t{-1} : int64_t{v.limit});
  w.Key("tiers").BeginArray();
  for (const auto& t : v.tiers) {
    w.BeginObject().Field("tier", t.tier).Field("mx_pref", t.mx_pref);
    w.Key("hosts").BeginArray();
    for (const auto& h : t.hosts) {
      w.BeginObject()
          .Field("name", h.name)
          .Field("address", h.endpoint.address.ToString())
          .Field("port", static_cast<int>(h.endpoint.port))
          .Field("limit", h.limit == kUnlimited ? int64_t{-1} : int64_t{h.limit})
          .Field("active", h.active)
          .Field("reachable", h.reachable)
          .Field("seconds_since_failure", h.seconds_since_failure)
          .Field("consecutive_failures", h.consecutive_failures)
          .EndObject();
    }
    w.EndArray().EndObject();
  }
  w.EndArray().EndObject();
}

}  // namespace

int RouteCommand(const Args& args) {
  std::string config_path, dns;
  bool json = false;
  std::vector<std::string_view> domains;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    if (a == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (a == "--dns" && i + 1 < args.size()) {
      dns = args[++i];
    } else if (a == "--json") {
      json = true;
    } else if (!a.empty() && a[0] == '-') {
      return UsageError(StrCat("route: unknown or incomplete option ", a));
    } else {
      domains.push_back(a);
    }
  }
  if (config_path.empty()) return UsageError("route: --config FILE is required");
  if (domains.empty()) return UsageError("route: give at least one DOMAIN");
  absl::StatusOr<Config> config = LoadConfigFile(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "mxsched: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  io::DnsCache cache;
  std::unique_ptr<io::Loop> loop;
  std::unique_ptr<io::DnsClient> client;
  if (!dns.empty()) {
    auto l = io::Loop::Create(64);
    if (!l.ok()) return UsageError(ToStd(l.status().message()));
    loop = *std::move(l);
    auto c = io::DnsClient::Create(loop.get(), &cache, dns);
    if (!c.ok()) return UsageError(ToStd(c.status().message()));
    client = *std::move(c);
  }
  Selector selector(std::make_shared<const Config>(*std::move(config)), nullptr, nullptr,
                    client ? &cache : nullptr);
  JsonWriter w;
  w.BeginArray();
  int rc = 0;
  for (std::string_view d : domains) {
    DomainView v = selector.Describe(d);
    // With DNS, run the resolver until the route is known (c-ares gives up well before).
    for (int i = 0; loop && v.state == RouteState::kPending && i < 300; ++i) {
      loop->RunOnce(50);
      v = selector.Describe(d);
    }
    if (v.state != RouteState::kReady) rc = 1;
    if (json) {
      AddJson(w, v);
    } else {
      PrintHuman(v);
    }
  }
  w.EndArray();
  if (json) std::printf("%s\n", w.str().c_str());
  return rc;
}

}  // namespace mxsched::tools

int main(int argc, char** argv) {
  namespace t = mxsched::tools;
  if (argc < 2) return t::UsageError("missing command");
  std::string_view cmd = argv[1];
  t::Args args(argv + 2, argv + argc);
  if (cmd == "route") return t::RouteCommand(args);
  if (cmd == "load") return t::LoadCommand(args);
  if (cmd == "farm") return t::FarmCommand(args);
  if (cmd == "demo") return t::DemoCommand(args);
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::printf("%s", t::kUsage);
    return 0;
  }
  return t::UsageError(mxsched::StrCat("unknown command \"", cmd, "\""));
}
