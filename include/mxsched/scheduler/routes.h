// Route items: the entries of a Momentum `routes = ( ... )` list, parsed and validated.
//
//   "relay.example.net"          hostname, resolved with A/AAAA
//   "192.0.2.7", "[2001:db8::7]" literal address (IPv6 only in brackets)
//   "__mx__"                     the domain's own MX set from DNS
//   "smtp://host?pref=P&ttl=T&port=O&type=mx|a"   every parameter optional
//   "apn://", "gcm://", "mm7://", "http://" push URLs with the same parameters
//
// `type=` on an address literal ("smtp://1.2.3.4?type=mx", the first example of Momentum's
// routes page) changes nothing: there is no name to look up, so the address is used as-is,
// a literal route (as with type=a); the config loader warns that it is ignored. Every example of that page is accepted (ctest cli_check,
// Config.EveryExampleOfTheMomentumRoutesPageLoads).
//
// Preference rule (one rule for explicit and implicit preferences): an item with `pref=P`
// sits in tier P. An item without `pref` sits one tier after the highest tier of any item
// listed before it (the first item: tier 0). So a plain list is strictly ordered — the first
// item is used exclusively unless it is unavailable — and `"smtp://a?pref=10" "b"` puts b in
// tier 11, while `"a" "smtp://b?pref=0"` puts a and b together in tier 0.
//
// Thread-safety: pure functions over immutable values.
#ifndef MXSCHED_SCHEDULER_ROUTES_H_
#define MXSCHED_SCHEDULER_ROUTES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"

namespace mxsched {

enum class RouteScheme : uint8_t { kSmtp, kApn, kGcm, kMm7, kHttp };
// How the item turns into addresses: a literal, an A/AAAA lookup, or an MX lookup.
enum class RouteLookup : uint8_t { kLiteral, kA, kMx };

std::string_view RouteSchemeName(RouteScheme s);

struct RouteItem {
  std::string text;  // as written, for messages and `mxsched route`
  RouteScheme scheme = RouteScheme::kSmtp;
  RouteLookup lookup = RouteLookup::kA;
  bool domain_mx = false;            // "__mx__": look up the MX set of the mail's domain
  std::string host;                  // lower-case hostname; empty for literals and __mx__
  std::optional<IpAddress> address;  // set iff lookup == kLiteral
  std::string path;                  // push URLs only, e.g. "/v1/send"
  std::optional<uint32_t> pref;      // 0..65535 when given
  std::optional<uint32_t> ttl;       // seconds, when given
  std::optional<uint16_t> port;      // when given; otherwise remote_smtp_port / scheme default
  uint32_t tier = 0;                 // effective preference (see the rule above)
  // `type=mx` was given on an address literal: accepted (Momentum's own example) but it
  // changes nothing, so the config loader warns (`mxsched check` prints it).
  bool type_mx_ignored = false;

  bool is_push() const { return scheme != RouteScheme::kSmtp; }
  // The port to use when none is given: remote_smtp_port for smtp, the scheme's own for push.
  uint16_t PortOr(uint16_t remote_smtp_port) const;
};

// Parses one item. Errors say what was wrong and what was expected, without location;
// the caller (config) prefixes file:line:column.
absl::StatusOr<RouteItem> ParseRouteItem(std::string_view text);

// Parses a whole list and assigns tiers by the preference rule above. The error names the
// item's 1-based position in the list.
absl::StatusOr<std::vector<RouteItem>> ParseRouteList(const std::vector<std::string>& items);

// Assigns `tier` to already parsed items (exposed for config, which parses item by item to
// report positions).
void AssignTiers(std::vector<RouteItem>& items);

// Validates a DNS hostname (labels of letters, digits, '-' and '_', 1-63 bytes, at most 253
// bytes; one trailing dot allowed) and returns it lower-cased without the trailing dot.
absl::StatusOr<std::string> NormalizeHostname(std::string_view name);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_ROUTES_H_
