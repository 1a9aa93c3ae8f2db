// What the scheduler asks of DNS: the Resolver interface an embedder may implement (or take
// mxsched::io::DnsCache, mxsched/io/resolver.h), its answers, and the state of a planned
// route. Part of the public API (docs/DESIGN.md §2, stability promise).
//
// Thread-safety: a Resolver is called from every thread that calls Selector::Acquire on a
// cold or expired route; an implementation must be safe for concurrent use and must not
// block (answer kPending and resolve in the background).
#ifndef MXSCHED_SCHEDULER_DNS_H_
#define MXSCHED_SCHEDULER_DNS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/endpoint.h"

namespace mxsched {

// What the resolver knows about a name now. Lookups never block: an unknown name answers
// kPending and the resolver starts (or joins) a query; the caller asks again later.
struct DnsAnswer {
  enum class State : uint8_t {
    kReady,     // records below (may be empty for "no such record type": NODATA)
    kPending,   // query in flight
    kNxDomain,  // permanent: the name does not exist
    kTempFail,  // SERVFAIL, timeout, refused: try again later
  };
  struct Mx {
    uint16_t pref;
    std::string host;  // "" for a null MX (RFC 7505)
  };
  State state = State::kPending;
  std::vector<Mx> mx;                // LookupMx
  std::vector<IpAddress> addresses;  // LookupAddresses
  uint32_t ttl_s = 0;
  std::string detail;  // for failures: what the server said
};

class Resolver {
 public:
  virtual ~Resolver() = default;
  virtual DnsAnswer LookupMx(std::string_view name) = 0;
  virtual DnsAnswer LookupAddresses(std::string_view name, bool want_v4, bool want_v6) = 0;
  // The longest a positive and a negative (NXDOMAIN, NODATA) answer may be reused; the
  // Selector passes max_dns_ttl and max_negative_dns_ttl on every SetConfig, so a cache
  // never serves an answer older than the route built from it may live.
  virtual void SetTtlBounds(uint32_t /*max_ttl_s*/, uint32_t /*max_negative_ttl_s*/) {}
};

enum class RouteState : uint8_t {
  kReady,     // hosts below
  kPending,   // DNS in flight
  kTempFail,  // DNS failed temporarily, or every address was filtered out
  kPermFail,  // NXDOMAIN, null MX, nothing deliverable
};
std::string_view RouteStateName(RouteState s);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_DNS_H_
