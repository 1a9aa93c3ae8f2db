#include "mxsched/scheduler/config_options.h"

#include <algorithm>
#include <type_traits>

#include "mxsched/base/redis_url.h"
#include "mxsched/base/strings.h"

namespace mxsched {
namespace {

// --- reading and writing typed fields -----------------------------------------------------

void Assign(int32_t& f, const OptionValue& v) { f = static_cast<int32_t>(v.number); }
void Assign(uint32_t& f, const OptionValue& v) { f = static_cast<uint32_t>(v.number); }
void Assign(uint16_t& f, const OptionValue& v) { f = static_cast<uint16_t>(v.number); }
void Assign(bool& f, const OptionValue& v) { f = v.flag; }
void Assign(std::string& f, const OptionValue& v) { f = v.text; }
void Assign(std::vector<RouteItem>& f, const OptionValue& v) { f = v.routes; }
void Assign(std::vector<Cidr>& f, const OptionValue& v) { f = v.cidrs; }
void Assign(std::vector<std::string>& f, const OptionValue& v) { f = v.names; }
void Assign(std::vector<IpAddress>& f, const OptionValue& v) { f = v.addresses; }
void Assign(ThrottleSpec& f, const OptionValue& v) { f = v.throttle; }
void Assign(std::optional<uint32_t>& f, const OptionValue& v) {
  f = static_cast<uint32_t>(v.number);
}
void Assign(std::optional<int32_t>& f, const OptionValue& v) { f = static_cast<int32_t>(v.number); }
void Assign(std::optional<bool>& f, const OptionValue& v) { f = v.flag; }

OptionValue Read(int64_t n) {
  OptionValue v;
  v.number = n;
  return v;
}
OptionValue Read(bool b) {
  OptionValue v;
  v.flag = b;
  return v;
}
OptionValue Read(const std::string& s) {
  OptionValue v;
  v.text = s;
  return v;
}
OptionValue Read(const std::vector<RouteItem>& r) {
  OptionValue v;
  v.routes = r;
  return v;
}
OptionValue Read(const std::vector<Cidr>& c) {
  OptionValue v;
  v.cidrs = c;
  return v;
}
OptionValue Read(const std::vector<std::string>& n) {
  OptionValue v;
  v.names = n;
  return v;
}
OptionValue Read(const std::vector<IpAddress>& a) {
  OptionValue v;
  v.addresses = a;
  return v;
}
OptionValue Read(const ThrottleSpec& t) {
  OptionValue v;
  v.throttle = t;
  v.present = t.set();
  return v;
}
OptionValue Read(const std::optional<uint32_t>& o) {
  OptionValue v = Read(int64_t{o.value_or(0)});
  v.present = o.has_value();
  return v;
}
OptionValue Read(const std::optional<int32_t>& o) {
  OptionValue v = Read(int64_t{o.value_or(0)});
  v.present = o.has_value();
  return v;
}
OptionValue Read(const std::optional<bool>& o) {
  OptionValue v = Read(o.value_or(false));
  v.present = o.has_value();
  return v;
}

template <typename S, typename T>
S ClassOf(T S::*);

// The accessor pair for a data member: Field<&DomainSettings::connect_timeout_s>().
template <auto kMember>
constexpr auto Field() {
  using S = decltype(ClassOf(kMember));
  return FieldAccess<S>{[](S& s, const OptionValue& v) { Assign(s.*kMember, v); },
                        [](const S& s) {
                          const auto& f = s.*kMember;
                          if constexpr (std::is_integral_v<std::remove_cvref_t<decltype(f)>> &&
                                        !std::is_same_v<std::remove_cvref_t<decltype(f)>, bool>) {
                            return Read(static_cast<int64_t>(f));
                          } else {
                            return Read(f);
                          }
                        }};
}

// A Host stanza's limit: kUnlimited stands for "not set" (no per-host limit).
constexpr FieldAccess<HostSettings> kHostLimit{
    [](HostSettings& h, const OptionValue& v) {
      h.max_outbound_connections = static_cast<int32_t>(v.number);
    },
    [](const HostSettings& h) {
      OptionValue v = Read(int64_t{h.max_outbound_connections});
      v.present = h.max_outbound_connections != kUnlimited;
      return v;
    }};

// The throttles of a Domain or Host stanza (Throttles::connections or ::messages).
template <typename S, ThrottleSpec Throttles::*kMember>
constexpr FieldAccess<S> kThrottleField{
    [](S& s, const OptionValue& v) { s.throttles.*kMember = v.throttle; },
    [](const S& s) { return Read(s.throttles.*kMember); }};

constexpr unsigned G = kGlobalScope, D = kDomainScope, H = kHostScope, B = kBindingScope,
                   BD = kBindingDomainScope, BH = kBindingHostScope;
constexpr int64_t kMaxConnections = 1000000;  // beyond any fd limit: a typo, not a setting
constexpr int64_t kDay = 86400;

// The option table. Ranges reject what can only be a mistake: a zero timeout or limit, a
// timeout longer than an hour (a connector slot held that long is an outage), a TTL beyond
// a week. See the header for how to add a row.
constexpr OptionDescriptor kOptions[] = {
    {.name = "routes",
     .scopes = G | D,
     .type = OptionType::kRoutes,
     .doc = "where mail for the domain goes, in tiers (docs/DESIGN.md §1); \"__mx__\" is the "
            "domain's own MX set",
     .domain = Field<&DomainSettings::routes>()},
    {.name = "max_outbound_connections",
     .scopes = G | D | H | B | BD | BH,
     .type = OptionType::kCount,
     .min = 1,
     .max = kMaxConnections,
     .doc = "connections at once per domain, per binding (Binding::Domain, then Domain, then "
            "Binding, then Binding_Group, then global); in a Host stanza, per destination "
            "address over all bindings; in a Binding::Host stanza, per address through that "
            "binding (unset in Host stanzas: no limit, as in Momentum; docs/DESIGN.md §4)",
     .domain = Field<&DomainSettings::max_outbound_connections>(),
     .host = kHostLimit},
    {.name = "server_max_outbound_connections",
     .scopes = G,
     .type = OptionType::kCount,
     .min = 1,
     .max = kMaxConnections,
     .doc = "connections at once over all domains",
     .config = Field<&Config::server_max_outbound_connections>()},
    {.name = "remote_smtp_port",
     .scopes = G | D,
     .type = OptionType::kPort,
     .min = 1,
     .max = 65535,
     .doc = "port for route items that name none",
     .domain = Field<&DomainSettings::remote_smtp_port>()},
    {.name = "connect_timeout",
     .scopes = G | D,
     .type = OptionType::kSeconds,
     .min = 1,
     .max = 3600,
     .doc = "time for the TCP connect (Momentum's default)",
     .domain = Field<&DomainSettings::connect_timeout_s>()},
    {.name = "banner_timeout",
     .scopes = G | D,
     .type = OptionType::kSeconds,
     .min = 1,
     .max = 3600,
     .doc = "time to read the 220 greeting after connect (separate from connect_timeout, as "
            "in KumoMTA)",
     .domain = Field<&DomainSettings::banner_timeout_s>()},
    {.name = "host_failure_retry",
     .scopes = G | H,
     .type = OptionType::kSeconds,
     .min = 0,
     .max = kDay,
     .doc = "how long a failed host is skipped before one probe is let through (0: at once)",
     .config = Field<&Config::host_failure_retry_s>(),
     .host = Field<&HostSettings::host_failure_retry_s>()},
    {.name = "mx_failures_to_delay",
     .scopes = G | D,
     .type = OptionType::kCount,
     .min = 1,
     .max = INT32_MAX,
     .doc = "consecutive failures of every host of a domain before its sessions get the 421 "
            "\"no MXs\" deferral",
     .domain = Field<&DomainSettings::mx_failures_to_delay>()},
    {.name = "domain_idle_timeout",
     .scopes = G,
     .type = OptionType::kSeconds,
     .min = 1,
     .max = 30 * kDay,
     .doc = "a domain with no connection and no waiter for this long is dropped from memory "
            "(its route is planned again on its next use; docs/DESIGN.md §5)",
     .config = Field<&Config::domain_idle_timeout_s>()},
    {.name = "min_dns_ttl",
     .scopes = G,
     .type = OptionType::kSeconds,
     .min = 0,
     .max = kDay,
     .doc = "DNS answers are kept at least this long (at most max_dns_ttl)",
     .config = Field<&Config::min_dns_ttl_s>()},
    {.name = "max_dns_ttl",
     .scopes = G,
     .type = OptionType::kSeconds,
     .min = 1,
     .max = 7 * kDay,
     .doc = "DNS answers are kept at most this long; also the lifetime of literal-address "
            "routes without ttl=",
     .config = Field<&Config::max_dns_ttl_s>()},
    {.name = "max_negative_dns_ttl",
     .scopes = G,
     .type = OptionType::kSeconds,
     .min = 0,
     .max = kDay,
     .doc = "NXDOMAIN and NODATA answers are kept for their negative TTL (SOA minimum, "
            "RFC 2308), at most this long; NXDOMAIN fails messages (5.1.2) while it lasts",
     .config = Field<&Config::max_negative_dns_ttl_s>()},
    {.name = "use_ipv6",
     .scopes = G | D,
     .type = OptionType::kBool,
     .doc = "look up AAAA records and connect over IPv6",
     .domain = Field<&DomainSettings::use_ipv6>()},
    {.name = "prefer_ipv6_mxs",
     .scopes = G | D,
     .type = OptionType::kBool,
     .doc = "within a tier, try IPv6 addresses before IPv4 ones",
     .domain = Field<&DomainSettings::prefer_ipv6_mxs>()},
    {.name = "prohibited_hosts",
     .scopes = G,
     .type = OptionType::kCidrList,
     .doc = "address ranges DNS answers may not point at (never applied to literal routes); "
            "the default refuses internal ranges, ( ) allows all (SECURITY.md)",
     .config = Field<&Config::prohibited_hosts>()},
    {.name = "delivery_method",
     .scopes = G | D,
     .type = OptionType::kChoice,
     .choices = "esmtp|smtp|apn|gcm|mm7|http",
     .doc = "protocol of the domain's deliveries",
     .domain = Field<&DomainSettings::delivery_method>()},
    {.name = "adaptive_concurrency",
     .scopes = G | H,
     .type = OptionType::kBool,
     .doc = "busy replies (421, 4.7.x, \"too many connections\"...) lower a host's effective "
            "limit instead of marking it failed; successes raise it back (docs/DESIGN.md §6)",
     .config = Field<&Config::adaptive_concurrency>(),
     .host = Field<&HostSettings::adaptive_concurrency>()},
    {.name = "adaptive_concurrency_floor",
     .scopes = G | H,
     .type = OptionType::kCount,
     .min = 1,
     .max = kMaxConnections,
     .doc = "the effective limit never goes below this (docs/DESIGN.md §6)",
     .config = Field<&Config::adaptive_concurrency_floor>(),
     .host = Field<&HostSettings::adaptive_concurrency_floor>()},
    {.name = "prohibited_mx_names",
     .scopes = G,
     .type = OptionType::kNameList,
     .doc = "MX target names or patterns (\"*.example\") never connected to; a domain left "
            "without MXs is deferred naming the MX and the pattern (docs/DESIGN.md §6)",
     .config = Field<&Config::prohibited_mx_names>()},
    {.name = "cluster_limits",
     .scopes = G,
     .type = OptionType::kRedisUrl,
     .doc = "share per-host (Host stanza) and per-domain max_outbound_connections with every "
            "worker using this Redis and cluster_name (docs/DESIGN.md §7); \"\": per process",
     .config = Field<&Config::cluster_limits>()},
    {.name = "cluster_name",
     .scopes = G,
     .type = OptionType::kName,
     .doc = "the fleet's Redis key namespace ({NAME}:...) and channel prefix",
     .config = Field<&Config::cluster_name>()},
    {.name = "cluster_lease_seconds",
     .scopes = G,
     .type = OptionType::kSeconds,
     .min = 3,
     .max = 3600,
     .doc = "life of a cluster slot lease, refreshed every third of it while the connection is "
            "open: a worker that dies gives its slots back within this",
     .config = Field<&Config::cluster_lease_seconds>()},
    {.name = "cluster_failure_mode",
     .scopes = G,
     .type = OptionType::kChoice,
     .choices = "share|closed|open",
     .doc = "while Redis is unreachable: share = floor(limit / live workers) each (at least 1), "
            "closed = open nothing new, open = per-process limits",
     .config = Field<&Config::cluster_failure_mode>()},
    {.name = "cluster_startup_share",
     .scopes = G,
     .type = OptionType::kCount,
     .min = 0,
     .max = kMaxConnections,
     .doc = "share mode, for a worker that has not reached Redis since it started: connections "
            "it may open per limited key at once (0: none until Redis answers)",
     .config = Field<&Config::cluster_startup_share>()},
    {.name = "bind_address",
     .scopes = G | B,
     .type = OptionType::kBindAddress,
     .doc = "source address(es) of a binding's connections, one IPv4 and one IPv6 at most "
            "(a host of a family the binding has no address for is not used through it); "
            "global: the default binding; a Binding without one takes its group's, then the "
            "global one; \"*\" or ( ): the kernel chooses (docs/DESIGN.md §4)",
     .config = Field<&Config::bind_address>()},
    {.name = "idle_timeout",
     .scopes = G | D | H | B,
     .type = OptionType::kSeconds,
     .min = 0,
     .max = kDay,
     .doc = "how long a connection parked after a message is kept open for the next one, "
            "then closed with QUIT (0: never parked); Host: that address; Binding (or its "
            "Binding_Group): through it; Host, then Domain, then Binding, then Binding_Group, "
            "then global (docs/DESIGN.md §13)",
     .domain = Field<&DomainSettings::idle_timeout_s>(),
     .host = Field<&HostSettings::idle_timeout_s>()},
    {.name = "max_deliveries_per_connection",
     .scopes = G | D | H | B,
     .type = OptionType::kCount,
     .min = 0,
     .max = 1000000,
     .doc = "successful messages over one connection; after the last it is closed with "
            "QUIT, not parked (0: no limit); scopes and fall-back as idle_timeout "
            "(docs/DESIGN.md §13)",
     .domain = Field<&DomainSettings::max_deliveries_per_connection>(),
     .host = Field<&HostSettings::max_deliveries_per_connection>()},
    {.name = "outbound_throttle_connections",
     .scopes = G | D | H | B | BD | BH,
     .type = OptionType::kThrottle,
     .doc = "new connections: \"N\" at most N in any second, \"N/S\" at most N in any S "
            "seconds; global: the whole process, Domain: that domain, Host: that address, "
            "Binding (or its Binding_Group): through it, Binding::Domain and Binding::Host: "
            "through it to that domain or address; every one that applies must allow a start; "
            "with cluster_limits each holds across the fleet (docs/DESIGN.md §12 rule 10)",
     .config = Field<&Config::outbound_throttle_connections>(),
     .domain = kThrottleField<DomainSettings, &Throttles::connections>,
     .host = kThrottleField<HostSettings, &Throttles::connections>},
    {.name = "outbound_throttle_messages",
     .scopes = G | D | H | B | BD | BH,
     .type = OptionType::kThrottle,
     .doc = "messages, in the form and scopes of outbound_throttle_connections; a new "
            "connection carries one message, a reused one takes one per message; "
            "fleet-wide with cluster_limits (docs/DESIGN.md §12 rule 10)",
     .config = Field<&Config::outbound_throttle_messages>(),
     .domain = kThrottleField<DomainSettings, &Throttles::messages>,
     .host = kThrottleField<HostSettings, &Throttles::messages>},
};

std::optional<int64_t> ParseInt(std::string_view s) {
  uint64_t n;
  if (!ParseUint(s, &n) || n > uint64_t{INT64_MAX}) return std::nullopt;
  return static_cast<int64_t>(n);
}

std::optional<int64_t> ParseSeconds(std::string_view s) {
  int64_t unit = 1;
  if (!s.empty()) {
    switch (AsciiLower(s.back())) {
      case 's':
        unit = 1;
        s.remove_suffix(1);
        break;
      case 'm':
        unit = 60;
        s.remove_suffix(1);
        break;
      case 'h':
        unit = 3600;
        s.remove_suffix(1);
        break;
      case 'd':
        unit = kDay;
        s.remove_suffix(1);
        break;
      default:
        break;
    }
  }
  auto n = ParseInt(s);
  if (!n || *n > INT64_MAX / unit) return std::nullopt;
  return *n * unit;
}

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

std::string TypeAndRange(const OptionDescriptor& o) {
  switch (o.type) {
    case OptionType::kCount:
      return StrCat("integer ", o.min, "..", o.max);
    case OptionType::kSeconds:
      return StrCat("seconds ", o.min, "..", o.max);
    case OptionType::kPort:
      return StrCat("port ", o.min, "..", o.max);
    case OptionType::kBool:
      return "boolean";
    case OptionType::kChoice: {
      std::string s = StrCat("one of ", o.choices);
      std::replace(s.begin(), s.end(), '|', ' ');  // '|' would end a Markdown table cell
      return s;
    }
    case OptionType::kRoutes:
      return "route list";
    case OptionType::kCidrList:
      return "CIDR list";
    case OptionType::kNameList:
      return "name pattern list";
    case OptionType::kRedisUrl:
      return "redis://HOST:PORT[/DB] or \"\"";
    case OptionType::kName:
      return "name [A-Za-z0-9_.-]{1,64}";
    case OptionType::kBindAddress:
      return "address or ( v4 v6 )";
    case OptionType::kThrottle:
      return "\"N\" or \"N/S\", N 1..1000000, S 1..86400";
  }
  return "?";
}

std::string ScopeLetters(unsigned scopes) {
  std::string s;
  if (scopes & kGlobalScope) s += "G";
  if (scopes & kDomainScope) s += "D";
  if (scopes & kHostScope) s += "H";
  if (scopes & kBindingScope) s += "B";
  if (scopes & kBindingDomainScope) s += " B::D";
  if (scopes & kBindingHostScope) s += " B::H";
  return s;
}

}  // namespace

std::span<const OptionDescriptor> ConfigOptions() { return kOptions; }

const OptionDescriptor* FindConfigOption(std::string_view lower_name) {
  for (const OptionDescriptor& o : kOptions) {
    if (o.name == lower_name) return &o;
  }
  return nullptr;
}

absl::StatusOr<OptionValue> ParseScalarOption(const OptionDescriptor& o, std::string_view text) {
  OptionValue out;
  switch (o.type) {
    case OptionType::kCount:
    case OptionType::kPort:
    case OptionType::kSeconds: {
      const bool seconds = o.type == OptionType::kSeconds;
      auto n = seconds ? ParseSeconds(text) : ParseInt(text);
      if (!n || *n < o.min || *n > o.max) {
        return absl::InvalidArgumentError(
            StrCat("option \"", o.name, "\" expects ",
                   seconds ? "a duration (e.g. 30, 90s, 5m) in " : "an integer in ", o.min, "..",
                   o.max, seconds ? " seconds" : "", ", got \"", EchoForError(text), "\""));
      }
      out.number = *n;
      return out;
    }
    case OptionType::kBool: {
      std::string s = ToLower(text);
      if (s == "true" || s == "yes" || s == "on" || s == "1") {
        out.flag = true;
      } else if (s == "false" || s == "no" || s == "off" || s == "0") {
        out.flag = false;
      } else {
        return absl::InvalidArgumentError(StrCat(
            "option \"", o.name, "\" expects true or false, got \"", EchoForError(text), "\""));
      }
      return out;
    }
    case OptionType::kChoice: {
      std::string s = ToLower(text);
      for (std::string_view c : Split(o.choices, '|')) {
        if (c == s) {
          out.text = s;
          return out;
        }
      }
      std::string expected(o.choices);
      std::replace(expected.begin(), expected.end(), '|', ' ');
      return absl::InvalidArgumentError(StrCat(o.name, " \"", EchoForError(text),
                                               "\" unknown (expected one of: ", expected, ")"));
    }
    case OptionType::kRedisUrl: {
      if (!text.empty()) {
        auto url = ParseRedisUrl(text);
        if (!url.ok()) {
          // ParseRedisUrl escapes the URL but shows all of it; a URL that would need
          // truncating or escaping is no Redis address, so it is quoted here instead.
          if (EchoForError(text) != text) {
            return absl::InvalidArgumentError(
                StrCat("option \"", o.name, "\": \"", EchoForError(text),
                       "\" is not a Redis URL (want redis://HOST:PORT[/DB])"));
          }
          return absl::InvalidArgumentError(
              StrCat("option \"", o.name, "\": ", ToStd(url.status().message())));
        }
      }
      out.text = std::string(text);
      return out;
    }
    case OptionType::kName: {
      bool ok = !text.empty() && text.size() <= 64;
      for (char c : text) ok = ok && (IsAlnum(c) || c == '_' || c == '.' || c == '-');
      if (!ok) {
        return absl::InvalidArgumentError(
            StrCat("option \"", o.name,
                   "\" expects 1..64 of A-Z a-z 0-9 _ . - (it names Redis "
                   "keys and channels), got \"",
                   EchoForError(text), "\""));
      }
      out.text = std::string(text);
      return out;
    }
    case OptionType::kThrottle: {
      if (text.empty()) return out;  // none
      absl::StatusOr<ThrottleSpec> t = ParseThrottleSpec(text);
      if (!t.ok()) {
        return absl::InvalidArgumentError(
            StrCat("option \"", o.name, "\" ", ToStd(t.status().message())));
      }
      out.throttle = *t;
      return out;
    }
    case OptionType::kRoutes:
    case OptionType::kCidrList:
    case OptionType::kNameList:
    case OptionType::kBindAddress:
      break;
  }
  return absl::InvalidArgumentError(StrCat("option \"", o.name, "\" expects a list"));
}

absl::StatusOr<std::vector<IpAddress>> ParseBindAddress(const std::vector<std::string>& items) {
  std::vector<IpAddress> out;
  if (items.size() == 1 && items[0] == "*") return out;
  for (const std::string& item : items) {
    absl::StatusOr<IpAddress> ip = IpAddress::Parse(item);
    if (!ip.ok()) {
      return absl::InvalidArgumentError(StrCat("bind_address \"", EchoForError(item),
                                               "\" is not an IP address (IPv6 without "
                                               "brackets; \"*\" alone: the kernel chooses)"));
    }
    // A source address must be one this host can send from: a multicast or broadcast
    // address, or the unspecified one, binds (on Linux) but the connection then leaves from
    // an address the kernel picks — mail sent from an address nobody configured.
    const auto& b = ip->bytes();
    const bool v4 = ip->is_v4();
    const bool unspecified =
        std::all_of(b.begin(), b.begin() + (v4 ? 4 : 16), [](uint8_t x) { return x == 0; });
    const bool multicast = v4 ? (b[0] & 0xf0) == 0xe0 : b[0] == 0xff;
    const bool broadcast = v4 && b[0] == 255 && b[1] == 255 && b[2] == 255 && b[3] == 255;
    if (unspecified || multicast || broadcast) {
      return absl::InvalidArgumentError(
          StrCat("bind_address \"", ip->ToString(), "\" is ",
                 unspecified ? "the unspecified address" : multicast ? "a multicast address"
                                                                     : "the broadcast address",
                 ", not a source address of this machine (\"*\" or ( ): the kernel chooses)"));
    }
    for (const IpAddress& a : out) {
      if (a.is_v4() == ip->is_v4()) {
        return absl::InvalidArgumentError(
            StrCat("bind_address has two IPv", ip->is_v4() ? "4" : "6",
                   " addresses; a binding has at most one of each family (\"", a.ToString(),
                   "\" and \"", ip->ToString(), "\")"));
      }
    }
    out.push_back(*ip);
  }
  return out;
}

std::string FormatOptionValue(const OptionDescriptor& o, const OptionValue& v) {
  switch (o.type) {
    case OptionType::kCount:
    case OptionType::kPort:
      return StrCat(v.number);
    case OptionType::kSeconds:
      return StrCat(v.number, "s");
    case OptionType::kBool:
      return v.flag ? "true" : "false";
    case OptionType::kChoice:
    case OptionType::kRedisUrl:
    case OptionType::kName:
      return Quote(v.text);
    case OptionType::kThrottle:
      if (!v.throttle.set()) return "\"\"";
      return Quote(v.throttle.seconds == 1 ? StrCat(v.throttle.count)
                                           : StrCat(v.throttle.count, "/", v.throttle.seconds));
    case OptionType::kRoutes: {
      std::string s = "(";
      for (const RouteItem& r : v.routes) s += " " + Quote(r.text);
      return s + " )";
    }
    case OptionType::kCidrList: {
      std::string s = "(";
      for (const Cidr& c : v.cidrs) s += " " + Quote(c.ToString());
      return s + " )";
    }
    case OptionType::kNameList: {
      std::string s = "(";
      for (const std::string& n : v.names) s += " " + Quote(n);
      return s + " )";
    }
    case OptionType::kBindAddress: {
      std::string s = "(";
      for (const IpAddress& a : v.addresses) s += " " + Quote(a.ToString());
      return s + " )";
    }
  }
  return "";
}

std::optional<OptionValue> GlobalOptionValue(const OptionDescriptor& o, const Config& c) {
  if (o.config) return o.config.get(c);
  if (o.domain) return o.domain.get(c.global);
  return std::nullopt;
}

std::string ListConfig(const Config& config, ConfigListing listing) {
  static const Config kDefaults;
  const Config& shown = listing == ConfigListing::kDefaults ? kDefaults : config;
  std::string out;
  for (const OptionDescriptor& o : kOptions) {
    std::optional<OptionValue> v = GlobalOptionValue(o, shown);
    if (!v) continue;
    std::string text = FormatOptionValue(o, *v);
    const bool is_default = text == FormatOptionValue(o, *GlobalOptionValue(o, kDefaults));
    if (listing == ConfigListing::kNonDefault && is_default) continue;
    out += StrCat(o.name, " = ", text,
                  listing == ConfigListing::kEffective && is_default ? "  # default" : "", "\n");
  }
  if (listing == ConfigListing::kDefaults) return out;

  std::vector<std::string> names;
  for (const auto& [name, d] : config.domains) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const DomainSettings& d = config.domains.at(name);
    out += StrCat("Domain ", Quote(name), " {\n");
    for (const OptionDescriptor& o : kOptions) {
      if (!(o.scopes & kDomainScope) || !o.domain) continue;
      std::string text = FormatOptionValue(o, o.domain.get(d));
      // Set in the stanza, equal to the global value or not: it still wins over a binding's.
      const bool pinned = (o.name == "max_outbound_connections" && d.limit_from_domain) ||
                          (o.name == "idle_timeout" && d.idle_timeout_from_domain) ||
                          (o.name == "max_deliveries_per_connection" &&
                           d.max_deliveries_from_domain);
      if (!pinned && text == FormatOptionValue(o, o.domain.get(config.global))) continue;
      out += StrCat("  ", o.name, " = ", text, "\n");
    }
    out += "}\n";
  }
  auto host_stanza = [&](const std::string& name, const HostSettings& h) {
    out += StrCat("Host ", Quote(name), " {\n");
    for (const OptionDescriptor& o : kOptions) {
      if (!(o.scopes & kHostScope) || !o.host) continue;
      OptionValue v = o.host.get(h);
      if (v.present) out += StrCat("  ", o.name, " = ", FormatOptionValue(o, v), "\n");
    }
    out += "}\n";
  };
  names.clear();
  for (const auto& [name, h] : config.hosts) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) host_stanza(name, config.hosts.at(name));
  for (const HostPattern& p : config.host_patterns) host_stanza(p.pattern, p.settings);
  // Bindings: each group with its bindings, then the bindings of no group. A binding lists
  // its own values, after the group's and global fall-backs (it parses back the same).
  const OptionDescriptor& bind = *FindConfigOption("bind_address");
  auto binding_stanza = [&](const BindingSpec& b, std::string_view indent) {
    out += StrCat(indent, "Binding ", Quote(b.name), " {\n");
    if (!b.bind_address.empty()) {
      OptionValue v;
      v.addresses = b.bind_address;
      out += StrCat(indent, "  bind_address = ", FormatOptionValue(bind, v), "\n");
    }
    if (b.max_outbound_connections != 0) {
      out += StrCat(indent, "  max_outbound_connections = ", b.max_outbound_connections, "\n");
    }
    const OptionDescriptor& conn = *FindConfigOption("outbound_throttle_connections");
    const OptionDescriptor& msg = *FindConfigOption("outbound_throttle_messages");
    auto throttles = [&](const Throttles& t) {
      std::string s;
      if (t.connections.set()) s += StrCat(" ", conn.name, " = ", FormatOptionValue(conn, Read(t.connections)));
      if (t.messages.set()) s += StrCat(" ", msg.name, " = ", FormatOptionValue(msg, Read(t.messages)));
      return s;
    };
    if (b.throttles.any()) out += StrCat(indent, " ", throttles(b.throttles), "\n");
    if (b.idle_timeout_s) {
      const OptionDescriptor& idle = *FindConfigOption("idle_timeout");
      out += StrCat(indent, "  idle_timeout = ",
                    FormatOptionValue(idle, Read(int64_t{*b.idle_timeout_s})), "\n");
    }
    if (b.max_deliveries_per_connection) {
      out += StrCat(indent, "  max_deliveries_per_connection = ",
                    *b.max_deliveries_per_connection, "\n");
    }
    for (bool domain : {true, false}) {
      const auto& limits = domain ? b.domain_limits : b.host_limits;
      const auto& rates = domain ? b.domain_throttles : b.host_throttles;
      std::vector<std::string> keys;
      for (const auto& [k, v] : limits) keys.push_back(k);
      for (const auto& [k, v] : rates) {
        if (!limits.contains(k)) keys.push_back(k);
      }
      std::sort(keys.begin(), keys.end());
      for (const std::string& k : keys) {
        std::string body;
        if (auto it = limits.find(k); it != limits.end()) {
          body += StrCat(" max_outbound_connections = ", it->second);
        }
        if (auto it = rates.find(k); it != rates.end()) body += throttles(it->second);
        out += StrCat(indent, "  ", domain ? "Domain " : "Host ", Quote(k), " {", body, " }\n");
      }
    }
    out += StrCat(indent, "}\n");
  };
  for (const BindingGroupSpec& g : config.binding_groups) {
    out += StrCat("Binding_Group ", Quote(g.name), " {\n");
    for (const std::string& name : g.bindings) binding_stanza(*config.FindBinding(name), "  ");
    out += "}\n";
  }
  for (const BindingSpec& b : config.bindings) {
    if (b.group.empty()) binding_stanza(b, "");
  }
  return out;
}

std::string ConfigOptionsMarkdown() {
  static const Config kDefaults;
  std::string out =
      "| option | scopes | type, range | default | meaning |\n"
      "|---|---|---|---|---|\n";
  for (const OptionDescriptor& o : kOptions) {
    std::optional<OptionValue> v = GlobalOptionValue(o, kDefaults);
    std::string def = v ? StrCat("`", FormatOptionValue(o, *v), "`") : "unset";
    if (o.host) def += " (Host stanza: unset)";
    out += StrCat("| `", o.name, "` | ", ScopeLetters(o.scopes), " | ", TypeAndRange(o), " | ", def,
                  " | ", o.doc, " |\n");
  }
  return out;
}

}  // namespace mxsched
