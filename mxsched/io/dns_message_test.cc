#include "mxsched/io/dns_message.h"

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"

namespace mxsched::io {
namespace {

// Builds DNS responses byte by byte for the parser's edge cases.
class Msg {
 public:
  Msg(uint16_t flags, uint16_t qd, uint16_t an, uint16_t ns) {
    U16(0x1234), U16(flags), U16(qd), U16(an), U16(ns), U16(0);
  }
  Msg& U16(uint16_t v) {
    b_.push_back(static_cast<char>(v >> 8));
    b_.push_back(static_cast<char>(v));
    return *this;
  }
  Msg& U32(uint32_t v) { return U16(v >> 16).U16(v & 0xFFFF); }
  Msg& Name(std::string_view n) {
    for (std::string_view label : Split(n, '.')) {
      if (label.empty()) continue;
      b_.push_back(static_cast<char>(label.size()));
      b_.append(label);
    }
    b_.push_back(0);
    return *this;
  }
  Msg& Ptr(uint16_t offset) { return U16(0xC000 | offset); }
  Msg& Raw(std::string_view s) {
    b_.append(s);
    return *this;
  }
  Msg& Question(std::string_view n, uint16_t type) { return Name(n).U16(type).U16(1); }
  Msg& Rr(std::string_view owner, uint16_t type, uint32_t ttl, const std::string& rdata) {
    return Name(owner).U16(type).U16(1).U32(ttl).U16(rdata.size()).Raw(rdata);
  }
  size_t size() const { return b_.size(); }
  const std::string& str() const { return b_; }

 private:
  std::string b_;
};

std::string MxRdata(uint16_t pref, std::string_view host) {
  Msg m(0, 0, 0, 0);
  m.U16(pref).Name(host);
  return m.str().substr(12);
}

TEST(DnsMessage, MxAnswersKeepTheirTtls) {
  Msg m(0x8180, 1, 2, 0);
  m.Question("a.test", kTypeMx)
      .Rr("a.test", kTypeMx, 300, MxRdata(10, "MX1.a.test"))
      .Rr("a.test", kTypeMx, 60, MxRdata(20, "mx2.a.test"));
  auto r = ParseDnsResponse(m.str(), "a.test", kTypeMx);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->mx.size(), 2u);
  EXPECT_EQ(r->mx[0].host, "mx1.a.test");
  EXPECT_EQ(r->mx[0].ttl, 300u);
  EXPECT_EQ(r->mx[1].pref, 20);
  EXPECT_EQ(r->mx[1].ttl, 60u);
}

TEST(DnsMessage, CompressedNamesAndNullMx) {
  Msg m(0x8180, 1, 1, 0);
  m.Question("n.test", kTypeMx);
  // owner = pointer to the question name at offset 12; MX exchange = root.
  m.Ptr(12).U16(kTypeMx).U16(1).U32(30).U16(3).U16(0).Raw(std::string(1, '\0'));
  auto r = ParseDnsResponse(m.str(), "n.test", kTypeMx);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->mx.size(), 1u);
  EXPECT_EQ(r->mx[0].host, "") << "the root: a null MX";
}

TEST(DnsMessage, CompressionLoopIsAnError) {
  Msg m(0x8180, 1, 0, 0);
  m.Ptr(12);  // the question name points at itself
  auto r = ParseDnsResponse(m.str(), "x.test", kTypeMx);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(ToStd(r.status().message())).find("loop"), std::string::npos);
}

TEST(DnsMessage, CnameChainIsFollowedAndBounded) {
  Msg m(0x8180, 1, 2, 0);
  m.Question("alias.test", kTypeA);
  Msg target(0, 0, 0, 0);
  target.Name("real.test");
  m.Rr("alias.test", kTypeCname, 50, target.str().substr(12))
      .Rr("real.test", kTypeA, 100, std::string("\x7f\x00\x00\x05", 4));
  auto r = ParseDnsResponse(m.str(), "alias.test", kTypeA);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->addresses.size(), 1u);
  EXPECT_EQ(r->addresses[0].ip.ToString(), "127.0.0.5");
  EXPECT_EQ(r->cname_ttl, 50u);

  Msg loop(0x8180, 1, 2, 0);
  loop.Question("a.test", kTypeA);
  Msg to_b(0, 0, 0, 0), to_a(0, 0, 0, 0);
  to_b.Name("b.test");
  to_a.Name("a.test");
  loop.Rr("a.test", kTypeCname, 5, to_b.str().substr(12))
      .Rr("b.test", kTypeCname, 5, to_a.str().substr(12));
  auto l = ParseDnsResponse(loop.str(), "a.test", kTypeA);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(std::string(ToStd(l.status().message())).find("CNAME chain"), std::string::npos);
}

TEST(DnsMessage, NegativeTtlFromSoa) {
  Msg soa(0, 0, 0, 0);
  soa.Name("ns.test").Name("admin.test").U32(1).U32(2).U32(3).U32(4).U32(45);
  Msg m(0x8183, 1, 0, 1);  // NXDOMAIN
  m.Question("gone.test", kTypeMx).Rr("test", kTypeSoa, 600, soa.str().substr(12));
  auto r = ParseDnsResponse(m.str(), "gone.test", kTypeMx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rcode, 3);
  EXPECT_TRUE(r->has_soa);
  EXPECT_EQ(r->negative_ttl, 45u);
}

TEST(DnsMessage, MalformedInputIsAnErrorNamingTheByte) {
  EXPECT_FALSE(ParseDnsResponse("", "a.test", kTypeA).ok());
  EXPECT_FALSE(ParseDnsResponse(std::string(11, '\0'), "a.test", kTypeA).ok());
  Msg query(0x0100, 0, 0, 0);  // QR=0
  EXPECT_FALSE(ParseDnsResponse(query.str(), "a.test", kTypeA).ok());
  Msg shortrr(0x8180, 1, 1, 0);
  shortrr.Question("a.test", kTypeA).Name("a.test").U16(kTypeA).U16(1).U32(5).U16(40).Raw("ab");
  auto r = ParseDnsResponse(shortrr.str(), "a.test", kTypeA);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(ToStd(r.status().message())).find("at byte"), std::string::npos);
  Msg bad_a(0x8180, 1, 1, 0);
  bad_a.Question("a.test", kTypeA).Rr("a.test", kTypeA, 5, "abc");
  EXPECT_FALSE(ParseDnsResponse(bad_a.str(), "a.test", kTypeA).ok());
}

TEST(DnsMessage, NeverCrashesOnArbitraryBytes) {
  Msg base(0x8180, 1, 2, 0);
  base.Question("a.test", kTypeMx)
      .Rr("a.test", kTypeMx, 300, MxRdata(10, "mx1.a.test"))
      .Rr("a.test", kTypeMx, 60, MxRdata(20, "mx2.a.test"));
  uint64_t x = 7;
  for (int i = 0; i < 50000; ++i) {
    std::string m = base.str();
    for (int k = 0; k < 3; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      m[x % m.size()] = static_cast<char>(x >> 32);
    }
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    m.resize(x % (m.size() + 1));
    auto r = ParseDnsResponse(m, "a.test", kTypeMx);
    if (!r.ok()) {
      EXPECT_FALSE(r.status().message().empty());
    }
  }
}

}  // namespace
}  // namespace mxsched::io
