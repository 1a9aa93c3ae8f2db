#include "mxsched/base/redis_url.h"

#include "mxsched/base/strings.h"

namespace mxsched {

std::string RedisAddress::ToString() const {
  const bool v6 = host.find(':') != std::string::npos;
  return StrCat("redis://", v6 ? "[" : "", host, v6 ? "]" : "", ":", port,
                db != 0 ? StrCat("/", db) : "");
}

absl::StatusOr<RedisAddress> ParseRedisUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        StrCat("Redis URL \"", EchoForError(url), "\": ", why, " (want redis://HOST:PORT[/DB])"));
  };
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) return bad("must start with redis://");
  std::string_view rest = url.substr(kScheme.size());
  RedisAddress a;
  std::string_view hostport = rest.substr(0, rest.find('/'));
  std::string_view path =
      hostport.size() < rest.size() ? rest.substr(hostport.size() + 1) : std::string_view();
  if (hostport.find('@') != std::string_view::npos) return bad("credentials are not supported");
  std::string_view port_text;
  if (!hostport.empty() && hostport[0] == '[') {
    const size_t close = hostport.find(']');
    if (close == std::string_view::npos) return bad("unclosed [ in the host");
    a.host = std::string(hostport.substr(1, close - 1));
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("expected :PORT after ]");
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = hostport.find(':');
    a.host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos) port_text = hostport.substr(colon + 1);
  }
  if (a.host.empty()) return bad("no host");
  for (char c : a.host) {
    if (!IsAlnum(c) && c != '.' && c != '-' && c != ':' && c != '_') return bad("bad host");
  }
  if (!port_text.empty() || hostport.find(':') != std::string_view::npos) {
    uint64_t port = 0;
    if (!ParseUint(port_text, &port) || port == 0 || port > 65535) {
      return bad("port must be 1..65535");
    }
    a.port = static_cast<uint16_t>(port);
  }
  if (!path.empty()) {
    uint64_t db = 0;
    if (!ParseUint(path, &db) || db > 1'000'000) return bad("DB must be a number");
    a.db = static_cast<int>(db);
  }
  return a;
}

}  // namespace mxsched
