// IpAddress, Endpoint (address + port) and Cidr: small value types, the keys of shared host
// state. Thread-safety: immutable values; safe to copy and read from any thread.
#ifndef MXSCHED_BASE_ENDPOINT_H_
#define MXSCHED_BASE_ENDPOINT_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/hash/hash.h"
#include "absl/status/statusor.h"

namespace mxsched {

class IpAddress {
 public:
  enum class Family : uint8_t { kV4, kV6 };

  IpAddress() = default;
  static IpAddress V4(uint32_t host_order);
  static IpAddress V6(const std::array<uint8_t, 16>& bytes);

  // Dotted-quad IPv4 or IPv6 text without brackets. Returns nullopt-like error otherwise.
  static absl::StatusOr<IpAddress> Parse(std::string_view text);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::kV4; }
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }  // v4 in the first 4
  int bit_length() const { return is_v4() ? 32 : 128; }
  bool IsLoopback() const;
  std::string ToString() const;  // canonical text, no brackets

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
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
  template <typename H>
  friend H AbslHashValue(H h, const Endpoint& e) {
    return H::combine(std::move(h), e.address, e.port);
  }
};

// "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128).
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
