#include "mxsched/base/endpoint.h"

#include <arpa/inet.h>
#include "mxsched/base/strings.h"

#include <algorithm>
#include <cstring>

namespace mxsched {

IpAddress IpAddress::V4(uint32_t host_order) {
  IpAddress a;
  a.family_ = Family::kV4;
  a.bytes_[0] = static_cast<uint8_t>(host_order >> 24);
  a.bytes_[1] = static_cast<uint8_t>(host_order >> 16);
  a.bytes_[2] = static_cast<uint8_t>(host_order >> 8);
  a.bytes_[3] = static_cast<uint8_t>(host_order);
  return a;
}

namespace {
bool IsV4Mapped(const std::array<uint8_t, 16>& b) {
  for (int i = 0; i < 10; ++i) {
    if (b[i] != 0) return false;
  }
  return b[10] == 0xff && b[11] == 0xff;
}
}  // namespace

IpAddress IpAddress::V6(const std::array<uint8_t, 16>& bytes) {
  if (IsV4Mapped(bytes)) {
    return V4(uint32_t{bytes[12]} << 24 | uint32_t{bytes[13]} << 16 | uint32_t{bytes[14]} << 8 |
              bytes[15]);
  }
  IpAddress a;
  a.family_ = Family::kV6;
  a.bytes_ = bytes;
  return a;
}

absl::StatusOr<IpAddress> IpAddress::Parse(std::string_view text) {
  // inet_pton needs a NUL-terminated string; addresses are short, so bound the copy.
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof(buf)) {
    return absl::InvalidArgumentError(StrCat("not an IP address: \"", EchoForError(text), "\""));
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress a;
  if (inet_pton(AF_INET, buf, a.bytes_.data()) == 1) {
    a.family_ = Family::kV4;
    return a;
  }
  if (inet_pton(AF_INET6, buf, a.bytes_.data()) == 1) return V6(a.bytes_);
  return absl::InvalidArgumentError(StrCat("not an IP address: \"", EchoForError(text), "\""));
}

bool IpAddress::IsLoopback() const {
  if (is_v4()) return bytes_[0] == 127;
  static constexpr std::array<uint8_t, 16> kV6Loopback{0, 0, 0, 0, 0, 0, 0, 0,
                                                       0, 0, 0, 0, 0, 0, 0, 1};
  return bytes_ == kV6Loopback;
}

std::optional<IpAddress> IpAddress::Nat64Embedded() const {
  static constexpr std::array<uint8_t, 12> kWellKnown{0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (is_v4() || !std::equal(kWellKnown.begin(), kWellKnown.end(), bytes_.begin())) {
    return std::nullopt;
  }
  return V4(uint32_t{bytes_[12]} << 24 | uint32_t{bytes_[13]} << 16 | uint32_t{bytes_[14]} << 8 |
            bytes_[15]);
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(is_v4() ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof(buf));
  return buf;
}

std::string Endpoint::ToString() const {
  if (address.is_v4()) return StrCat(address.ToString(), ":", port);
  return StrCat("[", address.ToString(), "]:", port);
}

socklen_t Endpoint::ToSockaddr(sockaddr_storage* out) const {
  std::memset(out, 0, sizeof(*out));
  if (address.is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, address.bytes().data(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, address.bytes().data(), 16);
  return sizeof(sockaddr_in6);
}

absl::StatusOr<Cidr> Cidr::Parse(std::string_view text) {
  std::string_view addr = text;
  int prefix = -1;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    uint64_t bits;
    if (!ParseUint(text.substr(slash + 1), &bits) || bits > 128) {
      return absl::InvalidArgumentError(
          StrCat("bad prefix length in CIDR \"", EchoForError(text), "\""));
    }
    prefix = static_cast<int>(bits);
  }
  auto ip = IpAddress::Parse(addr);
  if (!ip.ok()) {
    return absl::InvalidArgumentError(StrCat("not a CIDR \"", EchoForError(text),
                                             "\" (want ADDRESS[/BITS], IPv6 without brackets)"));
  }
  if (ip->is_v4() && addr.find(':') != std::string_view::npos && prefix >= 0) {
    // Written as IPv4-mapped: judged as the IPv4 range it maps.
    if (prefix <= 96) {
      return absl::InvalidArgumentError(
          StrCat("CIDR \"", EchoForError(text),
                 "\" covers all of IPv4: IPv4-mapped addresses are judged as IPv4, "
                 "so write IPv4 ranges"));
    }
    prefix -= 96;
  }
  if (prefix < 0) prefix = ip->bit_length();
  if (prefix > ip->bit_length()) {
    return absl::InvalidArgumentError(
        StrCat("prefix /", prefix, " too long for \"", EchoForError(text), "\""));
  }
  Cidr c;
  c.base_ = *ip;
  c.prefix_ = prefix;
  return c;
}

bool Cidr::Contains(const IpAddress& a) const {
  if (a.family() != base_.family()) return false;
  int full = prefix_ / 8, rest = prefix_ % 8;
  if (std::memcmp(a.bytes().data(), base_.bytes().data(), full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xFF << (8 - rest));
  return (a.bytes()[full] & mask) == (base_.bytes()[full] & mask);
}

std::string Cidr::ToString() const { return StrCat(base_.ToString(), "/", prefix_); }

}  // namespace mxsched
