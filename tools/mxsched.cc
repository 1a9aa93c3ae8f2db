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

#include "mxsched/base/strings.h"
#include "mxsched/io/cluster_limits.h"
#include "mxsched/io/loop.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/version.h"
#include "testbed/json.h"
#include "tools/commands.h"

namespace mxsched::tools {

int UsageError(std::string_view why) {
  std::fprintf(stderr, "mxsched: %.*s\n", static_cast<int>(why.size()), why.data());
  return 2;
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

namespace {

// Position of the route item a host came from (its literal address or its A-lookup name),
// or items.size() for MX hosts: the key that lists hosts in the order the config gives them.
size_t ItemIndex(const std::vector<RouteItem>& items, const DomainView::Host& h) {
  for (size_t i = 0; i < items.size(); ++i) {
    const RouteItem& it = items[i];
    if (it.address ? *it.address == h.endpoint.address
                   : (it.lookup == RouteLookup::kA && it.host == h.name)) {
      return i;
    }
  }
  return items.size();
}

// The view for display: each tier's hosts in a stable order (config order, then address)
// instead of the rotation order, which starts at a random host in every process and moves on
// every Acquire — so no host is marked "next" the way Momentum's long-running console does.
std::vector<std::vector<const DomainView::Host*>> StableOrder(const DomainView& v,
                                                              const std::vector<RouteItem>& items) {
  std::vector<std::vector<const DomainView::Host*>> out;
  for (const auto& t : v.tiers) {
    std::vector<const DomainView::Host*> hosts;
    for (const auto& h : t.hosts) hosts.push_back(&h);
    auto key = [&](const DomainView::Host* h) {
      return std::make_tuple(ItemIndex(items, *h), !h->endpoint.address.is_v4(),
                             h->endpoint.address.bytes(), h->endpoint.port);
    };
    std::stable_sort(hosts.begin(), hosts.end(),
                     [&](const auto* a, const auto* b) { return key(a) < key(b); });
    out.push_back(std::move(hosts));
  }
  return out;
}

// True when tier `tier` holds an MX lookup: its hosts are grouped by MX preference.
bool IsMxTier(const std::vector<RouteItem>& items, uint32_t tier) {
  for (const RouteItem& it : items) {
    if (it.tier == tier && it.lookup == RouteLookup::kMx && !it.is_push()) return true;
  }
  return false;
}

std::string_view LookupName(const RouteItem& it) {
  if (it.is_push()) return "push";
  switch (it.lookup) {
    case RouteLookup::kLiteral:
      return "address";
    case RouteLookup::kA:
      return "A/AAAA lookup";
    case RouteLookup::kMx:
      return "MX lookup";
  }
  return "";
}

// What became of one route item in this view: the hosts it gave, or why it gave none.
std::string ItemStatus(const RouteItem& it, const DomainView& v, bool have_dns) {
  if (it.is_push()) {
    return StrCat("not used here: ", RouteSchemeName(it.scheme),
                  " is a push protocol (mxsched schedules SMTP connections only)");
  }
  size_t n = 0;
  for (const auto& t : v.tiers) {
    for (const auto& h : t.hosts) {
      if (it.address                     ? *it.address == h.endpoint.address
          : it.lookup == RouteLookup::kA ? h.name == it.host
                                         : t.tier == it.tier) {
        ++n;
      }
    }
  }
  if (n > 0) return StrCat(n, " host(s)");
  if (it.lookup != RouteLookup::kLiteral && !have_dns) {
    return "not looked up: no DNS resolver (--no-dns)";
  }
  if (v.state == RouteState::kPending) return "lookup still in progress";
  if (it.lookup != RouteLookup::kLiteral) return "no usable address (see the route's detail)";
  return "not used (listed earlier in the route, or prohibited)";
}

// With cluster_limits (DESIGN §7): live leases in Redis per host key and per domain key, as
// an observer sees them (-1: could not be read).
struct ClusterCounts {
  bool enabled = false;
  std::string error;  // Redis could not be asked
  int64_t domain = -1;
  std::map<std::string, int64_t> hosts;  // by endpoint text
};

int64_t HostClusterCount(const ClusterCounts& c, const DomainView::Host& h) {
  auto it = c.hosts.find(h.endpoint.ToString());
  return it == c.hosts.end() ? -1 : it->second;
}

std::string CountText(int64_t n) { return n < 0 ? "?" : std::to_string(n); }

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
    if (!cluster.error.empty()) line += StrCat("  (Redis: ", cluster.error, ")");
    std::printf("%s\n", line.c_str());
  }
  if (!v.detail.empty()) std::printf("  %s\n", v.detail.c_str());
  if (!items.empty()) std::printf("  route items (tier: lower is preferred):\n");
  for (const RouteItem& it : items) {
    std::printf("    %-32s %-5s %-14s tier %-5u %s\n", it.text.c_str(),
                std::string(RouteSchemeName(it.scheme)).c_str(),
                std::string(LookupName(it)).c_str(), it.tier, ItemStatus(it, v, have_dns).c_str());
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
                  h.name.c_str(), limit.c_str(), h.active);
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
      if (!h.limit_moved.empty()) std::printf("  %s", h.limit_moved.c_str());
      if (!h.group.empty()) {
        std::printf("  provider \"%s\" %d/%d", h.group.c_str(), h.group_active, h.group_limit);
      }
      std::printf("\n");
    }
  }
}

nlohmann::json ToJson(const DomainView& v, const std::vector<RouteItem>& items, bool have_dns,
                      const ClusterCounts& cluster) {
  nlohmann::json item_json = nlohmann::json::array();
  for (const RouteItem& it : items) {
    item_json.push_back({{"item", it.text},
                         {"protocol", RouteSchemeName(it.scheme)},
                         {"lookup", LookupName(it)},
                         {"tier", it.tier},
                         {"status", ItemStatus(it, v, have_dns)}});
  }
  const auto shown = StableOrder(v, items);
  nlohmann::json tiers = nlohmann::json::array();
  for (size_t t = 0; t < v.tiers.size(); ++t) {
    nlohmann::json hosts = nlohmann::json::array();
    for (const DomainView::Host* hp : shown[t]) {
      const DomainView::Host& h = *hp;
      hosts.push_back(
          {{"name", h.name},
           {"address", h.endpoint.address.ToString()},
           {"port", h.endpoint.port},
           {"limit", h.limit == kUnlimited ? int64_t{-1} : int64_t{h.limit}},
           {"active", h.active},
           {"cluster_active", cluster.enabled && h.configured_limit != kUnlimited
                                  ? nlohmann::json(HostClusterCount(cluster, h))
                                  : nlohmann::json(nullptr)},
           {"reachable", h.reachable},
           {"seconds_since_failure", h.seconds_since_failure},
           {"consecutive_failures", h.consecutive_failures},
           {"configured_limit",
            h.configured_limit == kUnlimited ? int64_t{-1} : int64_t{h.configured_limit}},
           {"limit_moved", h.limit_moved},
           {"busy_replies", h.busy_replies},
           {"provider", h.group},
           {"provider_limit", h.group_limit},
           {"provider_active", h.group_active}});
    }
    const DomainView::Tier& tier = v.tiers[t];
    tiers.push_back({{"tier", tier.tier},
                     {"mx", IsMxTier(items, tier.tier)},
                     {"mx_pref", tier.mx_pref},
                     {"hosts", std::move(hosts)}});
  }
  return {{"domain", v.domain},
          {"state", RouteStateName(v.state)},
          {"detail", v.detail},
          {"ttl_left_s", v.ttl_left_s},
          {"active", v.active},
          {"cluster_active",
           cluster.enabled ? nlohmann::json(cluster.domain) : nlohmann::json(nullptr)},
          {"limit", v.limit == kUnlimited ? int64_t{-1} : int64_t{v.limit}},
          {"items", std::move(item_json)},
          {"tiers", std::move(tiers)}};
}

struct RouteFlags {
  std::string config_path;
  std::string dns;
  bool no_dns = false;
  bool json = false;
  std::vector<std::string> domains;
};

int RunRoute(const RouteFlags& f) {
  absl::StatusOr<Config> config = LoadConfigFile(f.config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "mxsched: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  for (const std::string& w : config->warnings) {
    std::fprintf(stderr, "mxsched: warning: %s\n", w.c_str());
  }
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
      out.push_back(ToJson(v, items, client != nullptr, counts));
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
