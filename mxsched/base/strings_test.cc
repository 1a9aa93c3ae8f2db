#include "mxsched/base/strings.h"

#include <cstdint>
#include <limits>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace mxsched {
namespace {

TEST(Strings, StrCatFormatsEveryArgumentKind) {
  const std::string s = "str";
  EXPECT_EQ(StrCat("a", std::string_view("b"), s, absl::string_view("c"), 'd'), "abstrcd");
  EXPECT_EQ(StrCat(int8_t{-5}, " ", uint16_t{65535}, " ", std::numeric_limits<int64_t>::min(),
                   " ", std::numeric_limits<uint64_t>::max()),
            "-5 65535 -9223372036854775808 18446744073709551615");
  EXPECT_EQ(StrCat(1.005, " ", 2.0, " ", -0.5), "1.00 2.00 -0.50") << "two decimals, fixed";
  EXPECT_EQ(StrCat(), "");
}

TEST(Strings, LowerAndCompareAreAsciiOnly) {
  EXPECT_EQ(ToLower("MiXeD.Example-1"), "mixed.example-1");
  EXPECT_EQ(ToLower("\xC3\x89"), "\xC3\x89") << "bytes >= 0x80 are left alone";
  EXPECT_TRUE(EqualsIgnoreCase("Example.COM", "example.com"));
  EXPECT_FALSE(EqualsIgnoreCase("example.com", "example.co"));
  EXPECT_FALSE(EqualsIgnoreCase("a", "b"));
  EXPECT_TRUE(EqualsIgnoreCase("", ""));
  EXPECT_EQ(AsciiLower('@'), '@');
  EXPECT_EQ(AsciiLower('['), '[') << "the byte after 'Z' is not a letter";
  EXPECT_TRUE(IsAlnum('z'));
  EXPECT_FALSE(IsAlnum('_'));
}

TEST(Strings, SplitKeepsEmptyFields) {
  EXPECT_EQ(Split("a,b,c", ','), (std::vector<std::string_view>{"a", "b", "c"}));
  EXPECT_EQ(Split("", ','), (std::vector<std::string_view>{""}));
  EXPECT_EQ(Split(",a,", ','), (std::vector<std::string_view>{"", "a", ""}));
  EXPECT_EQ(Split("abc", '|'), (std::vector<std::string_view>{"abc"}));
}

TEST(Strings, ParseUintTakesDecimalDigitsOnly) {
  uint64_t n = 7;
  EXPECT_TRUE(ParseUint("0", &n));
  EXPECT_EQ(n, 0u);
  EXPECT_TRUE(ParseUint("18446744073709551615", &n));
  EXPECT_EQ(n, std::numeric_limits<uint64_t>::max());
  for (std::string_view bad : {"", "18446744073709551616", "-1", "+1", " 1", "1 ", "0x10", "1e3",
                               "١"}) {
    EXPECT_FALSE(ParseUint(bad, &n)) << "\"" << bad << "\"";
  }
}

TEST(Strings, EscapeShowsHostileBytesAsHex) {
  EXPECT_EQ(Escape("plain text ~"), "plain text ~");
  EXPECT_EQ(Escape(std::string_view("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(Escape("\r\n\t\x7f\xff"), "\\x0d\\x0a\\x09\\x7f\\xff");
  EXPECT_EQ(Escape("back\\slash"), "back\\x5cslash") << "so an escaped text is unambiguous";
}

TEST(Strings, JoinPutsTheSeparatorOnlyBetween) {
  EXPECT_EQ(Join({}, ", "), "");
  EXPECT_EQ(Join({"one"}, ", "), "one");
  EXPECT_EQ(Join({"a", "", "c"}, "|"), "a||c");
}

}  // namespace
}  // namespace mxsched
