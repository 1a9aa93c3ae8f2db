// A bounded parser for DNS responses (RFC 1035 §4), used instead of c-ares' ares_parse_*
// helpers because those drop MX TTLs. Handles name compression with a jump limit (no
// loops), CNAME chains (at most kMaxCnameHops), and negative-answer TTLs from the SOA in
// the authority section (RFC 2308). Every read is bounds-checked; a malformed message is an
// error naming what and where, never a crash.
//
// Thread-safety: pure functions.
#ifndef MXSCHED_IO_DNS_MESSAGE_H_
#define MXSCHED_IO_DNS_MESSAGE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"

namespace mxsched::io {

inline constexpr uint16_t kTypeA = 1, kTypeCname = 5, kTypeSoa = 6, kTypeMx = 15, kTypeAaaa = 28;
inline constexpr int kMaxCnameHops = 8;

struct DnsResponse {
  int rcode = 0;  // 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, ...
  bool truncated = false;
  struct Mx {
    uint16_t pref;
    std::string host;  // lower-case, no trailing dot; "" for the root (null MX)
    uint32_t ttl;
  };
  std::vector<Mx> mx;
  struct Address {
    IpAddress ip;
    uint32_t ttl;
  };
  std::vector<Address> addresses;
  uint32_t cname_ttl = UINT32_MAX;  // lowest TTL along the CNAME chain followed, if any
  int cname_hops = 0;
  uint32_t negative_ttl = 0;  // from the SOA when there is no answer; 0 if absent
  bool has_soa = false;
};

// Parses a response to a query for (`qname`, `qtype`). Only records that answer the query —
// owned by qname or by the end of its CNAME chain — are kept.
absl::StatusOr<DnsResponse> ParseDnsResponse(std::string_view message, std::string_view qname,
                                             uint16_t qtype);

}  // namespace mxsched::io

#endif  // MXSCHED_IO_DNS_MESSAGE_H_
