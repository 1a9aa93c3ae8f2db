// RedisAddress: where the Redis behind cluster-wide limits listens, parsed from the
// `cluster_limits` option's URL. Pure value; thread-compatible.
#ifndef MXSCHED_BASE_REDIS_URL_H_
#define MXSCHED_BASE_REDIS_URL_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace mxsched {

// "redis://HOST:PORT[/DB]" (HOST: a name, an IPv4 address or [IPv6]). Errors name the part.
struct RedisAddress {
  std::string host;
  uint16_t port = 6379;
  int db = 0;
  std::string ToString() const;
};
absl::StatusOr<RedisAddress> ParseRedisUrl(std::string_view url);

}  // namespace mxsched

#endif  // MXSCHED_BASE_REDIS_URL_H_
