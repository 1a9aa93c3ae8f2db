#include "mxsched/base/redis_url.h"

#include "mxsched/base/strings.h"

namespace mxsched {

namespace {

std::string HostText(const std::string& host) {
  return host.find(':') != std::string::npos ? StrCat("[", host, "]") : host;
}

// "HOST[:PORT]" ("[V6][:PORT]"): "" when fine, else what is wrong.
std::string ParseHostPort(std::string_view hostport, std::string* host, uint16_t* port) {
  std::string_view port_text;
  if (!hostport.empty() && hostport[0] == '[') {
    const size_t close = hostport.find(']');
    if (close == std::string_view::npos) return "unclosed [ in the host";
    *host = std::string(hostport.substr(1, close - 1));
    std::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return "expected :PORT after ]";
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = hostport.find(':');
    *host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos) port_text = hostport.substr(colon + 1);
  }
  if (host->empty()) return "no host";
  for (char c : *host) {
    if (!IsAlnum(c) && c != '.' && c != '-' && c != ':' && c != '_') return "bad host";
  }
  if (!port_text.empty() || hostport.find(':') != std::string_view::npos) {
    uint64_t p = 0;
    if (!ParseUint(port_text, &p) || p == 0 || p > 65535) return "port must be 1..65535";
    *port = static_cast<uint16_t>(p);
  }
  return "";
}

}  // namespace

std::string RedisAddress::ToString() const {
  if (sentinel()) {
    std::string s = "redis-sentinel://";
    for (size_t i = 0; i < sentinels.size(); ++i) {
      s += StrCat(i ? "," : "", HostText(sentinels[i].host), ":", sentinels[i].port);
    }
    return StrCat(s, "/", master_name, db != 0 ? StrCat("/", db) : "");
  }
  return StrCat("redis://", HostText(host), ":", port, db != 0 ? StrCat("/", db) : "");
}

absl::StatusOr<RedisAddress> ParseRedisUrl(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  constexpr std::string_view kSentinel = "redis-sentinel://";
  const bool sentinel = url.substr(0, kSentinel.size()) == kSentinel;
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        StrCat("Redis URL \"", EchoForError(url), "\": ", why,
               sentinel ? " (want redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB])"
                        : " (want redis://HOST:PORT[/DB] or redis-sentinel://HOST:PORT[,...]/MASTER_NAME[/DB])"));
  };
  if (!sentinel && url.substr(0, kScheme.size()) != kScheme) {
    return bad("must start with redis:// or redis-sentinel://");
  }
  std::string_view rest = url.substr(sentinel ? kSentinel.size() : kScheme.size());
  RedisAddress a;
  std::string_view hostport = rest.substr(0, rest.find('/'));
  std::string_view path =
      hostport.size() < rest.size() ? rest.substr(hostport.size() + 1) : std::string_view();
  if (hostport.find('@') != std::string_view::npos) return bad("credentials are not supported");
  if (sentinel) {
    while (true) {
      const size_t comma = hostport.find(',');
      RedisAddress::HostPort hp;
      if (std::string why = ParseHostPort(hostport.substr(0, comma), &hp.host, &hp.port);
          !why.empty()) {
        return bad(StrCat("sentinel ", a.sentinels.size() + 1, ": ", why));
      }
      a.sentinels.push_back(std::move(hp));
      if (a.sentinels.size() > 16) return bad("more than 16 sentinels");
      if (comma == std::string_view::npos) break;
      hostport = hostport.substr(comma + 1);
    }
    const std::string_view name = path.substr(0, path.find('/'));
    if (name.empty()) return bad("no MASTER_NAME");
    for (char c : name) {
      if (!IsAlnum(c) && c != '.' && c != '-' && c != '_') return bad("bad MASTER_NAME");
    }
    a.master_name = std::string(name);
    path = name.size() < path.size() ? path.substr(name.size() + 1) : std::string_view();
  } else if (std::string why = ParseHostPort(hostport, &a.host, &a.port); !why.empty()) {
    return bad(why);
  }
  if (!path.empty()) {
    uint64_t db = 0;
    if (!ParseUint(path, &db) || db > 1'000'000) return bad("DB must be a number");
    a.db = static_cast<int>(db);
  }
  return a;
}

}  // namespace mxsched
