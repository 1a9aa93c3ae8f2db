#include "mxsched/base/endpoint.h"

#include "gtest/gtest.h"

namespace mxsched {
namespace {

TEST(IpAddress, ParsesV4AndV6AndRejectsGarbage) {
  EXPECT_EQ(IpAddress::Parse("192.0.2.7")->ToString(), "192.0.2.7");
  EXPECT_EQ(IpAddress::Parse("2001:DB8::7")->ToString(), "2001:db8::7");
  EXPECT_FALSE(IpAddress::Parse("").ok());
  EXPECT_FALSE(IpAddress::Parse("300.1.1.1").ok());
  EXPECT_FALSE(IpAddress::Parse("[::1]").ok());
  EXPECT_FALSE(IpAddress::Parse(std::string(200, '1')).ok());
}

TEST(Endpoint, FormatsWithBracketsForV6) {
  EXPECT_EQ((Endpoint{*IpAddress::Parse("::1"), 2525}).ToString(), "[::1]:2525");
  EXPECT_EQ((Endpoint{*IpAddress::Parse("127.0.0.9"), 25}).ToString(), "127.0.0.9:25");
}

TEST(Cidr, ContainsByPrefix) {
  Cidr loop = *Cidr::Parse("127.0.0.0/8");
  EXPECT_TRUE(loop.Contains(*IpAddress::Parse("127.9.8.7")));
  EXPECT_FALSE(loop.Contains(*IpAddress::Parse("128.0.0.1")));
  EXPECT_FALSE(loop.Contains(*IpAddress::Parse("::1")));
  Cidr odd = *Cidr::Parse("10.64.0.0/10");
  EXPECT_TRUE(odd.Contains(*IpAddress::Parse("10.127.255.255")));
  EXPECT_FALSE(odd.Contains(*IpAddress::Parse("10.128.0.0")));
  Cidr v6 = *Cidr::Parse("fe80::/10");
  EXPECT_TRUE(v6.Contains(*IpAddress::Parse("febf::1")));
  EXPECT_TRUE(Cidr::Parse("192.0.2.1")->Contains(*IpAddress::Parse("192.0.2.1")));
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/33").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/x").ok());
  EXPECT_FALSE(Cidr::Parse("[::1]/128").ok());
}

// Issue 10 #3: one identity per host.
TEST(IpAddress, Ipv4MappedIsIpv4CompatibleAndNat64StayIpv6) {
  IpAddress mapped = *IpAddress::Parse("::ffff:127.0.1.5");
  EXPECT_TRUE(mapped.is_v4());
  EXPECT_EQ(mapped, *IpAddress::Parse("127.0.1.5"));
  EXPECT_EQ(IpAddress::Parse("::FFFF:7f00:105")->ToString(), "127.0.1.5");
  std::array<uint8_t, 16> b{};
  b[10] = b[11] = 0xff;
  b[12] = 10;
  b[15] = 1;
  EXPECT_EQ(IpAddress::V6(b), *IpAddress::Parse("10.0.0.1")) << "AAAA answers too";
  EXPECT_FALSE(IpAddress::Parse("::127.0.1.5")->is_v4()) << "IPv4-compatible stays IPv6";
  IpAddress nat64 = *IpAddress::Parse("64:ff9b::7f00:1");
  EXPECT_FALSE(nat64.is_v4());
  ASSERT_TRUE(nat64.Nat64Embedded().has_value());
  EXPECT_EQ(*nat64.Nat64Embedded(), *IpAddress::Parse("127.0.0.1"));
  EXPECT_FALSE(IpAddress::Parse("2001:db8::1")->Nat64Embedded().has_value());
}

TEST(Cidr, Ipv4MappedRangesAreIpv4Ranges) {
  Cidr c = *Cidr::Parse("::ffff:10.0.0.0/104");
  EXPECT_TRUE(c.Contains(*IpAddress::Parse("10.1.2.3")));
  EXPECT_TRUE(c.Contains(*IpAddress::Parse("::ffff:10.1.2.3")));
  EXPECT_EQ(c.ToString(), "10.0.0.0/8");
  EXPECT_TRUE(Cidr::Parse("127.0.0.0/8")->Contains(*IpAddress::Parse("::ffff:127.0.0.1")));
  EXPECT_FALSE(Cidr::Parse("::ffff:0:0/96").ok()) << "would silently be all of IPv4";
}

}  // namespace
}  // namespace mxsched

namespace mxsched {
namespace {

// Addresses and ranges come from configs and DNS: their errors quote them escaped and bounded.
TEST(IpAddress, ErrorsEscapeAndBoundWhatTheyQuote) {
  const std::string hostile = "\x1b[31m1.2.3.4\a" + std::string(100000, '9');
  for (const absl::Status& s : {IpAddress::Parse(hostile).status(), Cidr::Parse(hostile).status(),
                                Cidr::Parse("10.0.0.0/\x1b").status()}) {
    ASSERT_FALSE(s.ok());
    const std::string m(s.message());
    EXPECT_EQ(m.find('\x1b'), std::string::npos) << m;
    EXPECT_EQ(m.find('\a'), std::string::npos) << m;
    EXPECT_LT(m.size(), 300u) << m.substr(0, 300);
  }
}

}  // namespace
}  // namespace mxsched
