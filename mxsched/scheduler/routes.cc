#include "mxsched/scheduler/routes.h"

#include <algorithm>
#include "mxsched/base/strings.h"

namespace mxsched {
namespace {

// Every piece of the item a message quotes goes through EchoForError: an item may hold
// terminal escapes, a NUL or a megabyte (issue 10 #9), and the message ends up on a terminal.
absl::Status Bad(std::string_view item, std::string_view why) {
  return absl::InvalidArgumentError(StrCat("route \"", EchoForError(item), "\": ", why));
}

struct SchemeInfo {
  std::string_view name;
  RouteScheme scheme;
  uint16_t default_port;  // 0: remote_smtp_port
};
constexpr SchemeInfo kSchemes[] = {
    {"smtp", RouteScheme::kSmtp, 0},  {"apn", RouteScheme::kApn, 2195},
    {"gcm", RouteScheme::kGcm, 443},  {"mm7", RouteScheme::kMm7, 80},
    {"http", RouteScheme::kHttp, 80},
};

const SchemeInfo* FindScheme(std::string_view name) {
  for (const auto& s : kSchemes) {
    if (EqualsIgnoreCase(s.name, name)) return &s;
  }
  return nullptr;
}

absl::StatusOr<uint32_t> ParseBounded(std::string_view item, std::string_view key,
                                      std::string_view value, uint32_t lo, uint32_t hi) {
  uint64_t v;
  if (!ParseUint(value, &v) || v < lo || v > hi) {
    return Bad(item,
               StrCat(key, "=\"", EchoForError(value), "\" must be an integer in ", lo, "..", hi));
  }
  return static_cast<uint32_t>(v);
}

// host part: "name", "1.2.3.4" or "[v6]"; fills address or host.
absl::Status ParseHostPart(std::string_view item, std::string_view host, RouteItem& out) {
  if (host.empty()) return Bad(item, "missing host");
  if (host.front() == '[') {
    if (host.back() != ']') return Bad(item, "unterminated '[' in IPv6 address");
    // An IPv4-mapped address ("[::ffff:7f00:5]", "[::ffff:127.0.0.5]") is IPv6 text that
    // Parse() returns as the IPv4 host it reaches, the one identity limits and filters use
    // (endpoint.h); only a dotted quad in brackets ("[127.0.0.5]") is not IPv6 text at all.
    const std::string_view inside = host.substr(1, host.size() - 2);
    auto ip = IpAddress::Parse(inside);
    if (!ip.ok() || inside.find(':') == std::string_view::npos) {
      return Bad(item, "expected an IPv6 address inside [ ]");
    }
    out.address = *ip;
    out.lookup = RouteLookup::kLiteral;
    return absl::OkStatus();
  }
  if (host.find(':') != std::string_view::npos) {
    if (IpAddress::Parse(host).ok()) {
      return Bad(item, "IPv6 addresses must be written in brackets, e.g. \"[2001:db8::7]\"");
    }
    return Bad(item, "unexpected ':' in host (give the port as ?port=N)");
  }
  if (auto ip = IpAddress::Parse(host); ip.ok()) {
    out.address = *ip;
    out.lookup = RouteLookup::kLiteral;
    return absl::OkStatus();
  }
  auto name = NormalizeHostname(host);
  if (!name.ok()) return Bad(item, ToStd(name.status().message()));
  out.host = *std::move(name);
  out.lookup = RouteLookup::kA;
  return absl::OkStatus();
}

absl::Status ParseQuery(std::string_view item, std::string_view query, RouteItem& out) {
  if (query.empty()) return absl::OkStatus();
  bool seen_type = false;
  for (std::string_view param : Split(query, '&')) {
    if (param.empty()) return Bad(item, "empty query parameter");
    size_t eq = param.find('=');
    if (eq == std::string_view::npos) {
      return Bad(item, StrCat("parameter \"", EchoForError(param), "\" has no '=value'"));
    }
    std::string key = ToLower(param.substr(0, eq));
    std::string_view value = param.substr(eq + 1);
    auto duplicate = [&] {
      return Bad(item, StrCat("parameter \"", EchoForError(key), "\" repeated"));
    };
    if (key == "pref") {
      if (out.pref) return duplicate();
      auto v = ParseBounded(item, key, value, 0, 65535);
      if (!v.ok()) return v.status();
      out.pref = *v;
    } else if (key == "ttl") {
      if (out.ttl) return duplicate();
      auto v = ParseBounded(item, key, value, 0, 0x7FFFFFFF);
      if (!v.ok()) return v.status();
      out.ttl = *v;
    } else if (key == "port") {
      if (out.port) return duplicate();
      auto v = ParseBounded(item, key, value, 1, 65535);
      if (!v.ok()) return v.status();
      out.port = static_cast<uint16_t>(*v);
    } else if (key == "type") {
      if (seen_type) return duplicate();
      seen_type = true;
      std::string t = ToLower(value);
      if (t != "mx" && t != "a") {
        return Bad(item, StrCat("type=\"", EchoForError(value), "\" must be mx or a"));
      }
      // type=mx on an address literal (the first example of Momentum's routes page,
      // "smtp://1.2.3.4?pref=10&ttl=300&type=mx"): there is no name to look up, so the
      // address is used as-is, exactly like type=a on it — a literal route.
      if (t == "mx") {
        if (out.lookup == RouteLookup::kLiteral) {
          out.type_mx_ignored = true;
        } else {
          out.lookup = RouteLookup::kMx;
        }
      }
    } else {
      return Bad(item, StrCat("unknown parameter \"", EchoForError(key),
                              "\" (expected pref, ttl, port or type)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view RouteSchemeName(RouteScheme s) {
  for (const auto& info : kSchemes) {
    if (info.scheme == s) return info.name;
  }
  return "?";
}

uint16_t RouteItem::PortOr(uint16_t remote_smtp_port) const {
  if (port) return *port;
  for (const auto& info : kSchemes) {
    if (info.scheme == scheme && info.default_port != 0) return info.default_port;
  }
  return remote_smtp_port;
}

absl::StatusOr<std::string> NormalizeHostname(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty()) return absl::InvalidArgumentError("empty hostname");
  if (name.size() > 253) return absl::InvalidArgumentError("hostname longer than 253 bytes");
  for (std::string_view label : Split(name, '.')) {
    if (label.empty()) return absl::InvalidArgumentError("empty label in hostname");
    if (label.size() > 63) return absl::InvalidArgumentError("hostname label over 63 bytes");
    for (char c : label) {
      if (!IsAlnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
        return absl::InvalidArgumentError(
            StrCat("invalid character '", EchoForError(std::string_view(&c, 1)), "' in hostname"));
      }
    }
  }
  return ToLower(name);
}

absl::StatusOr<RouteItem> ParseRouteItem(std::string_view text) {
  RouteItem out;
  out.text = std::string(text);
  if (text.empty()) return Bad(text, "empty route item");
  if (text == "__mx__") {
    out.domain_mx = true;
    out.lookup = RouteLookup::kMx;
    return out;
  }
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) {
    if (text.find_first_of("?&/") != std::string_view::npos) {
      return Bad(text, "parameters need the URL form \"smtp://host?pref=P\"");
    }
    if (absl::Status s = ParseHostPart(text, text, out); !s.ok()) return s;
    return out;
  }
  const SchemeInfo* scheme = FindScheme(text.substr(0, sep));
  if (scheme == nullptr) {
    return Bad(text, StrCat("unknown scheme \"", EchoForError(text.substr(0, sep)),
                            "\" (expected smtp, apn, gcm, mm7 or http)"));
  }
  out.scheme = scheme->scheme;
  std::string_view rest = text.substr(sep + 3);
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    if (query.empty()) return Bad(text, "empty query after '?'");
  }
  // The authority ends at the first '/' outside brackets.
  size_t slash = rest.find('/', rest.empty() || rest.front() != '[' ? 0 : rest.find(']'));
  if (slash != std::string_view::npos) {
    if (!out.is_push()) return Bad(text, "smtp routes take no path");
    // A URL path is printable ASCII (RFC 3986; anything else is %-encoded). Checked because
    // the path is the one part of an item no other rule constrains, and `check` and `route`
    // print accepted items as they are: an ESC here reached the terminal raw.
    for (char c : rest.substr(slash)) {
      if (static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7F) {
        return Bad(text, StrCat("invalid character '", EchoForError(std::string_view(&c, 1)),
                                "' in the path (%-encode it)"));
      }
    }
    out.path = std::string(rest.substr(slash));
    rest = rest.substr(0, slash);
  }
  if (absl::Status s = ParseHostPart(text, rest, out); !s.ok()) return s;
  if (absl::Status s = ParseQuery(text, query, out); !s.ok()) return s;
  if (out.is_push() && out.lookup == RouteLookup::kMx) {
    return Bad(text, "type=mx is only meaningful for smtp:// routes");
  }
  return out;
}

void AssignTiers(std::vector<RouteItem>& items) {
  std::optional<uint32_t> highest;
  for (RouteItem& item : items) {
    item.tier = item.pref ? *item.pref : (highest ? *highest + 1 : 0);
    highest = std::max(highest.value_or(0), item.tier);
  }
}

absl::StatusOr<std::vector<RouteItem>> ParseRouteList(const std::vector<std::string>& items) {
  std::vector<RouteItem> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    auto item = ParseRouteItem(items[i]);
    if (!item.ok()) {
      return absl::InvalidArgumentError(
          StrCat("item ", i + 1, ": ", ToStd(item.status().message())));
    }
    out.push_back(*std::move(item));
  }
  AssignTiers(out);
  return out;
}

}  // namespace mxsched
