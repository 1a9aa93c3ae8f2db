// mxsched — the command-line tool: inspect routes, run load and stress tests, benchmark.
// main() builds the CLI11 parser from kCommands (tools/commands.h) and runs the chosen
// subcommand; `route` lives here, `load` and `farm` in farm_load.cc, `demo` in demo.cc.
// `mxsched --help` and `mxsched SUBCOMMAND --help` list every flag with its default.
//
// Exit codes: 0 success, 1 a domain has no usable route (route) or an I/O problem,
// 2 usage or configuration error.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/admin/views.h"
#include "mxsched/base/strings.h"
#include "mxsched/cluster/cluster_limits.h"
#include "mxsched/io/loop.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/version.h"
#include "testbed/json.h"
#include "tools/commands.h"

namespace mxsched::tools {

int UsageError(std::string_view why) {
  // Messages quote argv and files; ForTerminal keeps any raw byte from acting on the terminal.
  std::fprintf(stderr, "mxsched: %s\n", ForTerminal(why).c_str());
  return 2;
}

std::optional<Config> LoadConfigOrSay(const std::string& path) {
  absl::StatusOr<Config> config = LoadConfigFile(path);
  if (!config.ok()) {
    UsageError(ToStd(config.status().message()));
    return std::nullopt;
  }
  for (const std::string& w : config->warnings) {
    std::fprintf(stderr, "mxsched: warning: %s\n", ForTerminal(w).c_str());
  }
  return *std::move(config);
}

absl::StatusOr<std::string> ResolveDnsServers(std::string_view spec) {
  std::string out;
  for (std::string_view one : Split(spec, ',')) {
    // The argument is the user's, quoted in every error below: escaped and bounded.
    auto bad = [shown = EchoForError(one)](std::string_view why) {
      return absl::InvalidArgumentError(StrCat("\"", shown, "\": ", why));
    };
    std::string_view host = one;
    std::string_view port = "53";
    if (!one.empty() && one[0] == '[') {  // [v6]:port
      const size_t close = one.find(']');
      if (close == std::string_view::npos) return bad("missing ']'");
      host = one.substr(1, close - 1);
      if (close + 1 < one.size()) {
        if (one[close + 1] != ':') return bad("want [ADDR]:PORT");
        port = one.substr(close + 2);
      }
    } else if (const size_t colon = one.rfind(':'); colon != std::string_view::npos) {
      if (one.find(':') != colon) return bad("put an IPv6 address in brackets");
      host = one.substr(0, colon);
      port = one.substr(colon + 1);
    }
    uint64_t port_number = 0;
    if (!ParseUint(port, &port_number) || port_number < 1 || port_number > 65535) {
      return bad("port must be 1..65535");
    }
    std::vector<IpAddress> ips;
    if (absl::StatusOr<IpAddress> ip = IpAddress::Parse(host); ip.ok()) {
      ips.push_back(*ip);
    } else {
      // A name: the system resolver (getaddrinfo) finds the DNS server's addresses; all of
      // them go to c-ares (IPv4 first), which moves on from one that does not answer.
      addrinfo hints{};
      hints.ai_socktype = SOCK_DGRAM;
      addrinfo* res = nullptr;
      const std::string name(host);
      if (int rc = getaddrinfo(name.c_str(), nullptr, &hints, &res); rc != 0) {
        return absl::InvalidArgumentError(
            StrCat("\"", EchoForError(name), "\": ", gai_strerror(rc)));
      }
      for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        char text[INET6_ADDRSTRLEN] = "";
        const void* addr =
            ai->ai_family == AF_INET
                ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
                : static_cast<const void*>(
                      &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
        if (inet_ntop(ai->ai_family, addr, text, sizeof(text)) == nullptr) continue;
        if (auto ip = IpAddress::Parse(text);
            ip.ok() && std::find(ips.begin(), ips.end(), *ip) == ips.end()) {
          ips.push_back(*ip);
        }
      }
      freeaddrinfo(res);
      std::stable_partition(ips.begin(), ips.end(), [](const IpAddress& a) { return a.is_v4(); });
      if (ips.empty()) {
        return absl::InvalidArgumentError(StrCat("\"", EchoForError(name), "\": no address"));
      }
    }
    for (const IpAddress& ip : ips) {
      if (!out.empty()) out += ',';
      out += ip.is_v4() ? StrCat(ip.ToString(), ":", port_number)
                        : StrCat("[", ip.ToString(), "]:", port_number);
    }
  }
  return out;
}

int UnknownSubcommand(std::string_view word) {
  const CommandEntry* best = nullptr;
  size_t best_distance = 0;
  // Nothing longer is a typo of a subcommand; the distance is not computed for it.
  if (word.size() <= 32) {
    for (const CommandEntry& c : kCommands) {
      const size_t d = EditDistance(word, c.name);
      if (best == nullptr || d < best_distance) {
        best = &c;
        best_distance = d;
      }
    }
  }
  std::string why = StrCat("unknown subcommand \"", EchoForError(word), "\"");
  // Within two edits, and not half the word ("chek", "rout", "lod"; not "nope" for "top"),
  // it is most likely a typo of that one.
  if (best != nullptr && best_distance <= 2 && 2 * best_distance < word.size()) {
    why += StrCat("; did you mean \"", best->name, "\"?");
  }
  std::string names;
  for (const CommandEntry& c : kCommands) names += StrCat(names.empty() ? "" : ", ", c.name);
  return UsageError(StrCat(why, " (subcommands: ", names, "; mxsched help SUBCOMMAND)"));
}

namespace {

using admin::ClusterCounts;
using admin::HostClusterCount;
using admin::IsMxTier;
using admin::ItemStatus;
using admin::LookupName;
using admin::StableOrder;

std::string CountText(int64_t n) { return n < 0 ? "?" : std::to_string(n); }
std::string LimitText(int32_t limit) {
  return limit == kUnlimited ? "unlimited" : std::to_string(limit);
}

void PrintHuman(const DomainView& v, const std::vector<RouteItem>& items, bool have_dns,
                const ClusterCounts& cluster) {
  size_t hosts = 0;
  for (const auto& t : v.tiers) hosts += t.hosts.size();
  // The domain is the command line's, valid or not (an invalid one is reported, not refused):
  // escaped so "\e[31m" is shown, not obeyed, and long enough for any real name (253).
  std::printf("%s: %s, %zu tier(s), %zu host(s), TTL %llds, active %d/%s\n",
              EchoForError(v.domain, 256).c_str(), std::string(RouteStateName(v.state)).c_str(),
              v.tiers.size(), hosts, static_cast<long long>(v.ttl_left_s), v.active,
              v.limit == kUnlimited ? "unlimited" : std::to_string(v.limit).c_str());
  if (cluster.enabled) {
    std::string line = StrCat("  cluster-wide (all workers): domain ", CountText(cluster.domain),
                              "/", v.limit == kUnlimited ? "unlimited" : std::to_string(v.limit));
    if (!cluster.error.empty()) line += StrCat("  (Redis: ", ForTerminal(cluster.error), ")");
    std::printf("%s\n", line.c_str());
  }
  if (!v.detail.empty()) std::printf("  %s\n", ForTerminal(v.detail).c_str());
  if (!v.bindings.empty()) {
    // docs/DESIGN.md §1 rule 13: the domain's limit counts per binding.
    std::printf("  bindings (connections to this domain through each / its per-binding limit):\n");
    for (const BindingView& b : v.bindings) {
      std::printf("    %-20s %-32s active %d/%s\n", ForTerminal(b.binding).c_str(),
                  b.source.empty() ? "(kernel's choice)" : ForTerminal(b.source).c_str(),
                  b.active, LimitText(b.limit).c_str());
    }
  }
  // Rate throttles (docs/DESIGN.md §12): the global ones and the domain's own; a host's own
  // are shown under the host.
  auto throttle_line = [](const ThrottleView& t) {
    return StrCat(t.kind, " ", t.rate, " (", ForTerminal(t.scope), "): next start ",
                  t.next_in_ms > 0 ? StrCat("in ", t.next_in_ms, " ms") : std::string("now"),
                  ", ", t.allowed, " allowed, ", t.waited, " waited, ", t.throttled, " deferred");
  };
  if (!v.throttles.empty()) std::printf("  rate throttles:\n");
  for (const ThrottleView& t : v.throttles) std::printf("    %s\n", throttle_line(t).c_str());
  if (!items.empty()) std::printf("  route items (tier: lower is preferred):\n");
  for (const RouteItem& it : items) {
    std::printf("    %-32s %-5s %-14s tier %-5u %s\n", ForTerminal(it.text).c_str(),
                std::string(RouteSchemeName(it.scheme)).c_str(),
                ForTerminal(LookupName(it)).c_str(), it.tier,
                ForTerminal(ItemStatus(it, v, have_dns)).c_str());
  }
  const auto shown = StableOrder(v, items);
  if (hosts > 0) {
    std::printf(
        "  hosts (a tier's hosts share its connections in turn; "
        "* failed, waiting to retry):\n");
  }
  for (size_t t = 0; t < v.tiers.size(); ++t) {
    const DomainView::Tier& tier = v.tiers[t];
    if (IsMxTier(items, tier.tier)) {
      std::printf("  tier %u, MX preference %u:\n", tier.tier, tier.mx_pref);
    } else {
      std::printf("  tier %u:\n", tier.tier);
    }
    for (const DomainView::Host* hp : shown[t]) {
      const DomainView::Host& h = *hp;
      const char* mark = h.reachable ? " " : "*";
      std::string limit = h.limit == kUnlimited ? "unlimited" : std::to_string(h.limit);
      std::printf("    %s %-24s %-28s limit %-9s active %d", mark, h.endpoint.ToString().c_str(),
                  ForTerminal(h.name).c_str(), limit.c_str(), h.active);
      // Of active: parked for reuse (DESIGN §13), shown only when some are.
      if (h.parked > 0) std::printf(" (%d parked)", h.parked);
      if (cluster.enabled && h.configured_limit != kUnlimited) {
        std::printf("  cluster-wide %s/%d", CountText(HostClusterCount(cluster, h)).c_str(),
                    h.configured_limit);
      }
      if (h.seconds_since_failure >= 0) {
        std::printf("  %llds since failure, %u consecutive",
                    static_cast<long long>(h.seconds_since_failure), h.consecutive_failures);
      }
      if (h.limit != h.configured_limit) {  // adaptive (docs/DESIGN.md §6): lowered by busy replies
        std::printf("  (configured %s)", h.configured_limit == kUnlimited
                                             ? "unlimited"
                                             : std::to_string(h.configured_limit).c_str());
      }
      if (!h.limit_moved.empty()) std::printf("  %s", ForTerminal(h.limit_moved).c_str());
      if (!h.group.empty()) {
        std::printf("  provider \"%s\" %d/%d", ForTerminal(h.group).c_str(), h.group_active,
                    h.group_limit);
      }
      std::printf("\n");
      for (const ThrottleView& t : h.throttles) {
        std::printf("        throttle %s\n", throttle_line(t).c_str());
      }
      // Per (binding, host): the Binding::Host limit and the failure memory of that source.
      for (const BindingView& b : h.bindings) {
        std::printf("        via %s from %s: active %d/%s, %s", ForTerminal(b.binding).c_str(),
                    b.source.empty() ? "(kernel's choice)" : ForTerminal(b.source).c_str(),
                    b.active, LimitText(b.limit).c_str(), ForTerminal(b.state).c_str());
        if (b.retry_in_s > 0) std::printf(" (retry in %llds)", static_cast<long long>(b.retry_in_s));
        if (b.consecutive_failures > 0) {
          std::printf(", %u consecutive failure(s)", b.consecutive_failures);
        }
        std::printf("\n");
      }
    }
  }
}

struct RouteFlags {
  std::string config_path;
  std::string dns;
  bool no_dns = false;
  bool json = false;
  std::vector<std::string> domains;
};

int RunRoute(const RouteFlags& f) {
  std::optional<Config> config = LoadConfigOrSay(f.config_path);
  if (!config) return 2;
  auto cluster_options = io::ClusterOptionsFromConfig(*config);
  if (!cluster_options.ok()) return UsageError(ToStd(cluster_options.status().message()));
  auto shared = std::make_shared<const Config>(*std::move(config));
  io::DnsCache cache;
  std::unique_ptr<io::Loop> loop;
  std::unique_ptr<io::DnsClient> client;
  std::unique_ptr<io::ClusterClient> observer;
  if (!f.no_dns) {
    // Without --dns: the system's resolvers (/etc/resolv.conf), as c-ares reads them.
    std::string servers;
    if (!f.dns.empty()) {
      auto s = ResolveDnsServers(f.dns);
      if (!s.ok()) return UsageError(StrCat("route: --dns: ", s.status().message()));
      servers = *std::move(s);
    }
    auto l = io::Loop::Create(64);
    if (!l.ok()) return UsageError(ToStd(l.status().message()));
    loop = *std::move(l);
    auto c = io::DnsClient::Create(loop.get(), &cache, servers);
    if (!c.ok()) return UsageError(StrCat("route: --dns: ", c.status().message()));
    client = *std::move(c);
  }
  if (cluster_options->has_value()) {
    if (loop == nullptr) {
      auto l = io::Loop::Create(64);
      if (!l.ok()) return UsageError(ToStd(l.status().message()));
      loop = *std::move(l);
    }
    // An observer: reads counts, is not counted as a live worker.
    observer = std::make_unique<io::ClusterClient>(
        loop.get(), std::make_shared<io::ClusterLimits>(**cluster_options), /*worker=*/false);
  }
  Selector selector(shared, {.resolver = client ? &cache : nullptr});
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
    // An invalid domain name has no route of its own: list no items for it.
    static const std::vector<RouteItem> kNone;
    const std::vector<RouteItem>& items =
        NormalizeHostname(d).ok() ? shared->ForDomain(d).routes : kNone;
    ClusterCounts counts;
    if (observer != nullptr) {
      counts.enabled = true;
      int waiting = 0;
      auto ask = [&](const std::string& key, int64_t* into) {
        ++waiting;
        observer->CountKey(key, [&, into](absl::StatusOr<int64_t> n) {
          --waiting;
          if (n.ok()) {
            *into = *n;
          } else {
            counts.error = std::string(n.status().message());
          }
        });
      };
      ask(observer->limits().DomainKey(v.domain), &counts.domain);
      for (const auto& t : v.tiers) {
        for (const auto& h : t.hosts) {
          if (h.configured_limit == kUnlimited) continue;
          auto [it, fresh] = counts.hosts.try_emplace(h.endpoint.ToString(), -1);
          if (fresh) ask(observer->limits().HostKey(h.endpoint), &it->second);
        }
      }
      // Each count is one script call under the client's own deadline: this ends.
      while (waiting > 0) loop->RunOnce(50);
    }
    if (f.json) {
      out.push_back(admin::DomainViewJson(v, items, client != nullptr, counts));
    } else {
      PrintHuman(v, items, client != nullptr, counts);
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
  auto* dns = sub.add_option("--dns", f->dns,
                             "DNS server(s) for MX and address lookups, by name or address "
                             "(port 53 if not given)")
                  ->type_name("HOST[:PORT][,...]")
                  ->default_str("the system's, from /etc/resolv.conf");
  sub.add_flag("--no-dns", f->no_dns,
               "Look nothing up: only literal-address routes resolve; names are listed as not "
               "looked up")
      ->excludes(dns);
  sub.add_flag("--json", f->json, "Print a JSON array, one object per domain");
  sub.add_option("DOMAIN", f->domains, "Domains to show")->required();
  return [f] { return RunRoute(*f); };
}

}  // namespace mxsched::tools

int main(int argc, char** argv) {
  namespace t = mxsched::tools;
  CLI::App app{
      "mxsched: outbound SMTP connection scheduler - inspect routes, run load and "
      "stress tests.\nExit status: 0 success, 1 the command ran and found a problem, "
      "2 usage or configuration error.",
      "mxsched"};
  app.set_version_flag("--version", "mxsched " MXSCHED_VERSION_STRING);
  app.require_subcommand(1);
  app.footer("mxsched help SUBCOMMAND (or mxsched SUBCOMMAND --help) lists its flags.");
  app.option_defaults()->always_capture_default();
  std::vector<t::CommandRun> runs(std::size(t::kCommands));
  for (size_t i = 0; i < std::size(t::kCommands); ++i) {
    CLI::App* sub = app.add_subcommand(t::kCommands[i].name, t::kCommands[i].description);
    runs[i] = t::kCommands[i].set_up(*sub);
  }
  // `mxsched help [SUBCOMMAND]` is `mxsched [SUBCOMMAND] --help`; a first word that is no
  // subcommand is named with the nearest one, before CLI11 would call it a missing one.
  if (argc >= 2 && argv[1][0] != '-') {
    std::string_view word = argv[1];
    if (word == "help") {
      if (argc == 2) {
        std::printf("%s", app.help().c_str());
        return 0;
      }
      word = argv[2];
    }
    CLI::App* sub = nullptr;
    for (const auto& c : t::kCommands) {
      if (word == c.name) sub = app.get_subcommand(c.name);
    }
    if (sub == nullptr) return t::UnknownSubcommand(word);
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "help") {
    if (args.size() > 2) return t::UsageError("help takes one subcommand: mxsched help route");
    args = {args[1], "--help"};
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments last first
  try {
    app.parse(args);
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
