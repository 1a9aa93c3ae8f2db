// RedisAddress: where the Redis behind cluster-wide limits listens, parsed from the
// `cluster_limits` option's URL. Pure value; thread-compatible.
#ifndef MXSCHED_BASE_REDIS_URL_H_
#define MXSCHED_BASE_REDIS_URL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mxsched {

// "redis://HOST:PORT[/DB]" (HOST: a name, an IPv4 address or [IPv6]), or
// "redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]": the master is found by asking
// the sentinels (DESIGN §7, Sentinel). Errors name the part.
struct RedisAddress {
  struct HostPort {
    std::string host;
    uint16_t port = 26379;
  };
  std::string host;  // redis://: the server; redis-sentinel://: the master last discovered
  uint16_t port = 6379;
  int db = 0;
  std::vector<HostPort> sentinels;  // redis-sentinel:// only (at most 16)
  std::string master_name;          // redis-sentinel:// only
  bool sentinel() const { return !sentinels.empty(); }
  // The URL as configured (for redis-sentinel://, the sentinels and the master's name).
  std::string ToString() const;
};
absl::StatusOr<RedisAddress> ParseRedisUrl(std::string_view url);

}  // namespace mxsched

#endif  // MXSCHED_BASE_REDIS_URL_H_
