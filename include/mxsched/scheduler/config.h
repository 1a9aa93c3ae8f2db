// Momentum-syntax configuration: parsing and the typed, validated result.
//
//   # comment          /* block comment */
//   Server_Max_Outbound_Connections = 20000
//   Routes = ( "smtp://relay.example.net?pref=10" "__mx__" )
//   Domain "example.com" { Max_Outbound_Connections = 8  Routes = ( "__mx__" ) }
//   Host "mx1.example.com" { Max_Outbound_Connections = 4 }
//
// Option names are case-insensitive. Values: integers, durations (seconds, or with a unit
// suffix s/m/h/d: "90s", "5m"), booleans (true/false/yes/no/on/off/1/0), strings in double
// quotes (escapes \" \\ \n \t) or bare words, and lists `( "a" "b" )` (commas optional).
// Every error is "FILE:LINE:COLUMN: what was expected"; an unknown option names the nearest
// known one; an option in a scope where it has no meaning is an error.
//
// The options — names, scopes, types, ranges, defaults and meaning — are the descriptor table
// in config_options.h, which the parser reads; `mxsched check -d` prints the defaults and
// docs/DESIGN.md §4 lists them. The defaults are the member initializers below. Choices where
// Momentum is silent or differs: banner_timeout is separate from connect_timeout (as in
// KumoMTA); prohibited_hosts defaults to DefaultProhibitedHosts() — loopback, RFC 1918,
// link-local, CGNAT, unspecified, ULA and multicast — so a hostile MX record cannot aim
// connections inside the network (SECURITY.md); `prohibited_hosts = ( )` allows everything
// (tests on loopback opt in that way). It applies to addresses from DNS, never to literal
// addresses written in routes.
//
// Host stanzas are keyed by an IP address, an exact MX/host name, or a name pattern with
// `*`/`?` (`Host "*.mail.protection.outlook.com" { }`: a provider). Precedence (docs/DESIGN.md §6):
// the per-address limit comes from the IP stanza, else the exact-name stanza, else none; a
// pattern stanza's max_outbound_connections is one limit SHARED by every address behind
// every matching MX name, for all domains (in addition to any per-address limit); other
// Host options come from the IP stanza, else the exact name, else the most specific
// matching pattern (most literal characters; ties by name), else the global value.
//
// Bindings (Momentum's egress source addresses, docs/DESIGN.md §4 "Bindings"):
//   bind_address = "192.0.2.1"                        # the default binding's address
//   Binding_Group "pool" {
//     max_outbound_connections = 10                   # per binding, for its bindings
//     Binding "b1" { bind_address = ( "192.0.2.10" "2001:db8::10" )
//                    Host "203.0.113.5" { max_outbound_connections = 3 }
//                    Domain "example.com" { max_outbound_connections = 5 } }
//   }
//   Binding "transactional" { bind_address = "192.0.2.20" }
// Binding and Binding_Group names are case-sensitive, 1..64 of [A-Za-z0-9_.-], one namespace
// (Acquire takes either). A binding is in at most one group; a group may be declared more
// than once (its bindings add up, as in Momentum). Inside a Binding only Domain and Host
// stanzas nest, and they take only max_outbound_connections.
//
// Thread-safety: Config is an immutable value once parsed; share it with shared_ptr<const>.
#ifndef MXSCHED_SCHEDULER_CONFIG_H_
#define MXSCHED_SCHEDULER_CONFIG_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/scheduler/routes.h"

namespace mxsched {

inline constexpr int32_t kUnlimited = INT32_MAX;

// ( "__mx__" ): the default routes, the domain's own MX set.
std::vector<RouteItem> DefaultRoutes();

// Settings that a Domain stanza can override; the global scope gives the defaults.
// A rate throttle: at most `count` new starts in any `seconds` (Momentum's
// outbound_throttle_connections / outbound_throttle_messages, "N" or "N/S"; docs/DESIGN.md
// §12). count 0: not set.
struct ThrottleSpec {
  uint32_t count = 0;
  uint32_t seconds = 1;
  bool set() const { return count != 0; }
  // The spacing between starts: S/N + 2% (DESIGN §12 rule 1), at least 1 ns.
  int64_t interval_nanos() const;
  std::string ToString() const;  // "20/1 s", "100/60 s"
  friend bool operator==(const ThrottleSpec&, const ThrottleSpec&) = default;
};
// "N" or "N/S": N 1..1000000, S 1..86400. Errors say what was expected.
absl::StatusOr<ThrottleSpec> ParseThrottleSpec(std::string_view text);

// The two throttles a scope may set.
struct Throttles {
  ThrottleSpec connections;  // outbound_throttle_connections
  ThrottleSpec messages;     // outbound_throttle_messages
  bool any() const { return connections.set() || messages.set(); }
};

struct DomainSettings {
  std::vector<RouteItem> routes = DefaultRoutes();  // never empty
  int32_t max_outbound_connections = 32;
  uint16_t remote_smtp_port = 25;
  uint32_t connect_timeout_s = 300;
  uint32_t banner_timeout_s = 60;
  uint32_t mx_failures_to_delay = 50;
  bool use_ipv6 = false;
  bool prefer_ipv6_mxs = false;
  std::string delivery_method = "esmtp";
  // Connection reuse (docs/DESIGN.md §13): how long a parked connection is kept (0: never
  // parked), and successful messages per connection before it is closed (0: no limit).
  uint32_t idle_timeout_s = 5;
  int32_t max_deliveries_per_connection = 0;
  // Set when a Domain stanza sets them: they then win over a Binding's (ReuseFor).
  bool idle_timeout_from_domain = false, max_deliveries_from_domain = false;
  bool routes_from_domain = false;  // true when a Domain stanza set routes (for display)
  bool limit_from_domain = false;   // true when a Domain stanza set max_outbound_connections
  // A Domain stanza's throttles: that domain's rate over all bindings (the global scope's
  // are Config::throttles, never copied into domains: one throttle for the process).
  Throttles throttles;
};

struct HostSettings {
  int32_t max_outbound_connections = kUnlimited;
  std::optional<uint32_t> host_failure_retry_s;
  std::optional<bool> adaptive_concurrency;
  std::optional<int32_t> adaptive_concurrency_floor;
  Throttles throttles;  // the address's rate over all bindings (exact-name or IP stanzas)
  std::optional<uint32_t> idle_timeout_s;                 // connection reuse (§13)
  std::optional<int32_t> max_deliveries_per_connection;
};

// Host name patterns: `*` matches any run of characters (dots included), `?` one; at least
// one literal character other than '.'. `lower_name` must be lower-case.
bool ValidNamePattern(std::string_view pattern);
bool NamePatternMatches(std::string_view pattern, std::string_view lower_name);

// A `Host "pattern" { }` stanza.
struct HostPattern {
  std::string pattern;  // lower-case
  HostSettings settings;
  bool Matches(std::string_view lower_name) const;
};

// Everything the configuration says about one destination, with precedence applied.
struct HostPolicy {
  int32_t limit = kUnlimited;  // per address
  uint32_t host_failure_retry_s = 120;
  bool adaptive = true;
  int32_t adaptive_floor = 1;
  // Connection reuse (§13): set when a Host stanza sets them (they override the domain's).
  std::optional<uint32_t> idle_timeout_s;
  std::optional<int32_t> max_deliveries_per_connection;
  const HostPattern* provider = nullptr;  // the matching pattern with a shared limit, if any
};

// A `Binding "name" { }` stanza, with the fall-backs of its group and the global scope applied
// to its addresses (docs/DESIGN.md §4, Bindings).
struct BindingSpec {
  std::string name;   // case-sensitive
  std::string group;  // its Binding_Group, or ""
  // At most one IPv4 and one IPv6 address (Momentum's bind_address_secondary); empty: the
  // kernel chooses. From the Binding stanza, else its group's, else the global bind_address.
  std::vector<IpAddress> bind_address;
  // Connections to one domain through this binding (binding scope, else its group's);
  // 0: unset (the domain's max_outbound_connections applies per binding).
  int32_t max_outbound_connections = 0;
  absl::flat_hash_map<std::string, int32_t> domain_limits;  // Binding::Domain; lower-case
  absl::flat_hash_map<std::string, int32_t> host_limits;    // Binding::Host; IP text or name
  // Rates through this binding: its own (binding scope, else its group's), per domain
  // (Binding::Domain) and per address (Binding::Host), keys as for the limits.
  Throttles throttles;
  absl::flat_hash_map<std::string, Throttles> domain_throttles;
  absl::flat_hash_map<std::string, Throttles> host_throttles;
  // Connection reuse (docs/DESIGN.md §13): the binding's own, else its group's; unset: the
  // domain's (Config::ReuseFor).
  std::optional<uint32_t> idle_timeout_s;
  std::optional<int32_t> max_deliveries_per_connection;
  std::string where;  // "FILE:LINE" of the stanza, for messages
  // The address of `family` this binding connects from, or null (kernel's choice).
  const IpAddress* AddressFor(bool v4) const;
};

struct BindingGroupSpec {
  std::string name;
  std::vector<std::string> bindings;  // in declaration order
  std::vector<IpAddress> bind_address;
  int32_t max_outbound_connections = 0;  // 0: unset
  Throttles throttles;                    // each binding's, unless it sets its own
  std::optional<uint32_t> idle_timeout_s;  // each binding's, unless it sets its own (§13)
  std::optional<int32_t> max_deliveries_per_connection;
};

// Connection reuse settings for one connection (docs/DESIGN.md §13, Config::ReuseFor).
struct ReuseSettings {
  uint32_t idle_timeout_s = 5;
  int32_t max_deliveries_per_connection = 0;
};

// The ranges DNS answers may not point at unless the configuration says otherwise.
std::vector<Cidr> DefaultProhibitedHosts();

struct Config {
  // Legal but probably unintended settings, "FILE:LINE:COL: what" (e.g. a routes list longer
  // than the planner uses); the CLI prints them as warnings at load.
  std::vector<std::string> warnings;
  DomainSettings global;  // also the settings of every domain without a stanza
  absl::flat_hash_map<std::string, DomainSettings> domains;  // key: lower-case name
  absl::flat_hash_map<std::string, HostSettings> hosts;      // key: lower-case name or IP text
  int32_t server_max_outbound_connections = 20000;
  uint32_t host_failure_retry_s = 120;
  uint32_t min_dns_ttl_s = 0;
  uint32_t max_dns_ttl_s = 86400;
  uint32_t max_negative_dns_ttl_s = 300;
  uint32_t domain_idle_timeout_s = 3600;
  std::vector<Cidr> prohibited_hosts = DefaultProhibitedHosts();
  bool adaptive_concurrency = true;
  int32_t adaptive_concurrency_floor = 1;
  std::vector<HostPattern> host_patterns;        // most specific first
  std::vector<std::string> prohibited_mx_names;  // lower-case name patterns
  // Cluster-wide limits (docs/DESIGN.md §7). cluster_limits "" = off (limits per process).
  std::string cluster_limits;
  std::string cluster_name = "mxsched";
  uint32_t cluster_lease_seconds = 30;
  std::string cluster_failure_mode = "share";
  int32_t cluster_startup_share = 1;
  // Egress bindings (docs/DESIGN.md §4, Bindings). bind_address: the default binding's.
  std::vector<IpAddress> bind_address;
  std::vector<BindingSpec> bindings;             // in declaration order
  std::vector<BindingGroupSpec> binding_groups;  // in declaration order
  // Positions in `bindings` and `binding_groups` by name, kept by the parser so that
  // FindBinding and FindBindingGroup cost one hash lookup (a file of 100,000 bindings took
  // minutes to load when each was a scan). An entry is checked against the name it points
  // at, and a miss scans: a Config built or changed by hand is still found.
  absl::flat_hash_map<std::string, uint32_t> binding_index;
  absl::flat_hash_map<std::string, uint32_t> binding_group_index;
  // Global-scope throttles: one rate for the whole process (or fleet; docs/DESIGN.md §12).
  ThrottleSpec outbound_throttle_connections;
  ThrottleSpec outbound_throttle_messages;

  // The effective settings for `domain` (case-insensitive): its stanza or the global ones.
  const DomainSettings& ForDomain(std::string_view domain) const;
  // Host stanza for an MX name or an address text, or nullptr.
  const HostSettings* ForHost(std::string_view name_or_ip) const;
  // Per-address limit: an IP-keyed stanza wins over the name's stanza; unset is unlimited.
  int32_t HostLimit(std::string_view name, const IpAddress& address) const;
  // The most specific pattern stanza matching `name` (lower-case), or nullptr.
  const HostPattern* MatchHostPattern(std::string_view name) const;
  // All Host settings for `address` reached through MX/host `name` ("" for literals).
  HostPolicy PolicyFor(std::string_view name, const IpAddress& address) const;
  const BindingSpec* FindBinding(std::string_view name) const;
  const BindingGroupSpec* FindBindingGroup(std::string_view name) const;
  // idle_timeout and max_deliveries_per_connection for a connection to `domain` through
  // `binding` ("" or unknown: the default binding) at the host of `host` (PolicyFor), each
  // from the narrowest scope that sets it: Host stanza, then Domain stanza, then Binding,
  // then Binding_Group, then global — the order of max_outbound_connections (§4).
  ReuseSettings ReuseFor(std::string_view domain, std::string_view binding,
                         const HostPolicy& host) const;
  // Connections to `domain` (lower-case) at once through `binding`: Binding::Domain, else
  // a Domain stanza's max_outbound_connections, else the binding's (or its group's), else
  // the global value — Momentum's fall-back from the narrower scope to the wider.
  int32_t BindingDomainLimit(const BindingSpec& binding, std::string_view domain) const;
  // Connections to one address through `binding` (Binding::Host by IP, else by name);
  // kUnlimited when unset (no fall-back, as for Host stanzas).
  static int32_t BindingHostLimit(const BindingSpec& binding, std::string_view name,
                                  const IpAddress& address);
  // The prohibited_mx_names pattern `name` (lower-case) matches, or nullptr.
  const std::string* ProhibitedMxName(std::string_view name) const;
};

// `source_name` is used in error messages ("FILE:LINE:COL: ...").
absl::StatusOr<Config> ParseConfig(std::string_view text, std::string_view source_name);
absl::StatusOr<Config> LoadConfigFile(const std::string& path);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_CONFIG_H_
