// IpAddress, Endpoint (address + port) and Cidr: small value types, the keys of shared host
// state. Thread-safety: immutable values; safe to copy and read from any thread.
#ifndef MXSCHED_BASE_ENDPOINT_H_
#define MXSCHED_BASE_ENDPOINT_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/hash/hash.h"
#include "absl/status/statusor.h"

namespace mxsched {

// One identity per host: an IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) is
// the IPv4 address a.b.c.d — the kernel sends IPv4 packets to it — so V6() and Parse() return
// it as IPv4, and limits, the host registry and prohibited_hosts see one address, not two.
// IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96, RFC 6052) addresses stay
// IPv6: they are different paths (NAT64 goes through a translator), but Nat64Embedded() lets
// filters judge the IPv4 address a NAT64 one leads to.
class IpAddress {
 public:
  enum class Family : uint8_t { kV4, kV6 };

  IpAddress() = default;
  static IpAddress V4(uint32_t host_order);
  static IpAddress V6(const std::array<uint8_t, 16>& bytes);  // mapped -> IPv4

  // Dotted-quad IPv4 or IPv6 text without brackets. Returns nullopt-like error otherwise.
  static absl::StatusOr<IpAddress> Parse(std::string_view text);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::kV4; }
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }  // v4 in the first 4
  int bit_length() const { return is_v4() ? 32 : 128; }
  bool IsLoopback() const;
  // For an address in the NAT64 well-known prefix 64:ff9b::/96, the IPv4 address it embeds.
  std::optional<IpAddress> Nat64Embedded() const;
  std::string ToString() const;  // canonical text, no brackets

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
  // IPv4 before IPv6, then by bytes (a canonical order, e.g. of a route's hosts).
  friend std::strong_ordering operator<=>(const IpAddress&, const IpAddress&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const IpAddress& a) {
    return H::combine(std::move(h), a.family_, a.bytes_);
  }

 private:
  Family family_ = Family::kV4;
  std::array<uint8_t, 16> bytes_{};
};

struct Endpoint {
  IpAddress address;
  uint16_t port = 25;

  // "1.2.3.4:25" or "[::1]:25".
  std::string ToString() const;
  // Fills a sockaddr_in/sockaddr_in6; returns its length.
  socklen_t ToSockaddr(sockaddr_storage* out) const;

  friend bool operator==(const Endpoint&, const Endpoint&) = default;
  friend std::strong_ordering operator<=>(const Endpoint&, const Endpoint&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Endpoint& e) {
    return H::combine(std::move(h), e.address, e.port);
  }
};

// "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128). An IPv4-mapped range
// "::ffff:10.0.0.0/104" is the IPv4 range 10.0.0.0/8; one of /96 or shorter (all of IPv4 and
// more) is refused rather than silently matching every IPv4 address.
class Cidr {
 public:
  static absl::StatusOr<Cidr> Parse(std::string_view text);
  bool Contains(const IpAddress& a) const;
  std::string ToString() const;

 private:
  IpAddress base_;
  int prefix_ = 0;
};

}  // namespace mxsched

#endif  // MXSCHED_BASE_ENDPOINT_H_
