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
  EXPECT_EQ(StrCat(int8_t{-5}, " ", uint16_t{65535}, " ", std::numeric_limits<int64_t>::min(), " ",
                   std::numeric_limits<uint64_t>::max()),
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
  for (std::string_view bad :
       {"", "18446744073709551616", "-1", "+1", " 1", "1 ", "0x10", "1e3", "١"}) {
    EXPECT_FALSE(ParseUint(bad, &n)) << "\"" << bad << "\"";
  }
}

TEST(Strings, EscapeShowsHostileBytesAsHex) {
  EXPECT_EQ(Escape("plain text ~"), "plain text ~");
  EXPECT_EQ(Escape(std::string_view("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(Escape("\r\n\t\x7f\xff"), "\\x0d\\x0a\\x09\\x7f\\xff");
  EXPECT_EQ(Escape("back\\slash"), "back\\x5cslash") << "so an escaped text is unambiguous";
}

// Issue 10 #9: a value echoed in an error reached the terminal raw (ESC sequences obeyed),
// was cut at a NUL by printf("%s"), and a 1 MB value made a 1 MB error line.
TEST(Strings, EchoForErrorEscapesEveryByteThatCouldActOnATerminal) {
  EXPECT_EQ(EchoForError("smtp://mx.example?pref=10 ~"), "smtp://mx.example?pref=10 ~");
  EXPECT_EQ(EchoForError("\x1b[31mRED\a"), "\\e[31mRED\\x07");
  EXPECT_EQ(EchoForError(std::string_view("a\0b", 3)), "a\\x00b") << "NUL shown, nothing cut";
  EXPECT_EQ(EchoForError("l1\nl2\r\t\x7f\x01\x1f"), "l1\\nl2\\r\\t\\x7f\\x01\\x1f");
  EXPECT_EQ(EchoForError("say \"hi\" \\e"), "say \\\"hi\\\" \\\\e")
      << "quotes and backslashes escaped: a typed \\e is not an ESC, a quote ends nothing";
  for (unsigned char c = 0; c < 0x20; ++c) {
    const std::string one(1, static_cast<char>(c));
    const std::string shown = EchoForError(one);
    EXPECT_EQ(shown[0], '\\') << int{c};
    for (char s : shown) EXPECT_TRUE(s >= 0x20 && s < 0x7f) << int{c};
  }
}

TEST(Strings, EchoForErrorKeepsWellFormedUtf8AndEscapesTheRest) {
  EXPECT_EQ(EchoForError("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7")
      << "printable UTF-8 is readable as it is";
  EXPECT_EQ(EchoForError("\xc2\x9b"
                         "31m"),
            "\\xc2\\x9b31m")
      << "U+009B is CSI on a terminal";
  EXPECT_EQ(EchoForError("\x9b"
                         "31m"),
            "\\x9b31m")
      << "a bare C1 byte is malformed UTF-8";
  EXPECT_EQ(EchoForError("a\xe2\x80\xae"
                         "b"),
            "a\\xe2\\x80\\xaeb")
      << "U+202E reorders text";
  EXPECT_EQ(EchoForError("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(EchoForError("\xc0\xaf"), "\\xc0\\xaf") << "overlong '/'";
  EXPECT_EQ(EchoForError("\xed\xa0\x80"), "\\xed\\xa0\\x80") << "a surrogate";
  EXPECT_EQ(EchoForError("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80") << "above U+10FFFF";
  EXPECT_EQ(EchoForError("\xe2\x82"), "\\xe2\\x82") << "a sequence cut short";
}

TEST(Strings, EchoForErrorTruncatesWithTheFullLength) {
  const std::string mb(1048576, 'x');
  const std::string shown = EchoForError(mb);
  EXPECT_EQ(shown, std::string(80, 'x') + "... (1048576 bytes)");
  EXPECT_EQ(EchoForError(std::string(80, 'y')), std::string(80, 'y')) << "80 bytes fit";
  EXPECT_EQ(EchoForError("abcdef", 3), "abc... (6 bytes)");
  // The bound is on the escaped text, and an escape or a UTF-8 character is never split.
  EXPECT_EQ(EchoForError(std::string(100, '\x1b'), 9), "\\e\\e\\e\\e... (100 bytes)");
  EXPECT_EQ(EchoForError("ab\x01", 5), "ab... (3 bytes)");
  EXPECT_EQ(EchoForError("a\xc3\xa9\xc3\xa9", 4), "a\xc3\xa9... (5 bytes)");
  EXPECT_EQ(EchoForError(""), "");
}

TEST(Strings, JoinPutsTheSeparatorOnlyBetween) {
  EXPECT_EQ(Join({}, ", "), "");
  EXPECT_EQ(Join({"one"}, ", "), "one");
  EXPECT_EQ(Join({"a", "", "c"}, "|"), "a||c");
}

}  // namespace
}  // namespace mxsched
