#include "mxsched/io/greeting.h"

#include "gtest/gtest.h"

namespace mxsched::io {
namespace {

using State = GreetingParser::State;

TEST(Greeting, SingleLine) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220 mx.example ESMTP ready\r\n"), State::kDone);
  EXPECT_EQ(p.code(), 220);
  EXPECT_EQ(p.text(), "mx.example ESMTP ready");
  EXPECT_EQ(p.Summary(), "220 mx.example ESMTP ready");
}

TEST(Greeting, MultiLineSplitAcrossReadsByteByByte) {
  const std::string g = "220-mx.example first\r\n220-second\r\n220 last\r\n";
  GreetingParser p;
  for (size_t i = 0; i + 1 < g.size(); ++i) ASSERT_EQ(p.Feed(g.substr(i, 1)), State::kNeedMore);
  EXPECT_EQ(p.Feed(g.substr(g.size() - 1)), State::kDone);
  EXPECT_EQ(p.text(), "mx.example first\nsecond\nlast");
}

TEST(Greeting, BareCodeAndBareLf) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220\n"), State::kDone);
  EXPECT_EQ(p.code(), 220);
}

TEST(Greeting, RejectionCodesAreReported) {
  GreetingParser a, b;
  EXPECT_EQ(a.Feed("421 4.3.2 busy\r\n"), State::kDone);
  EXPECT_EQ(a.code(), 421);
  EXPECT_EQ(b.Feed("554 5.7.1 go away\r\n"), State::kDone);
  EXPECT_EQ(b.code(), 554);
}

TEST(Greeting, GarbageIsAnErrorWithTheOffendingText) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("HTTP/1.1 400 Bad Request\r\n"), State::kError);
  EXPECT_NE(p.error().find("not an SMTP reply line: \"HTTP/1.1"), std::string::npos) << p.error();
  GreetingParser q;
  EXPECT_EQ(q.Feed(std::string_view("\x16\x03\x01\x02\x00\n", 6)), State::kError);
  EXPECT_NE(q.error().find("\\x16"), std::string::npos) << q.error();
}

TEST(Greeting, OverLongLineIsAnError) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220 " + std::string(GreetingParser::kMaxLine, 'x')), State::kError);
  EXPECT_NE(p.error().find("longer than"), std::string::npos);
}

TEST(Greeting, TooManyLinesOrBytesIsAnError) {
  GreetingParser p;
  State s = State::kNeedMore;
  for (size_t i = 0; i <= GreetingParser::kMaxLines && s == State::kNeedMore; ++i) {
    s = p.Feed("220-more\r\n");
  }
  EXPECT_EQ(s, State::kError);
  GreetingParser q;
  EXPECT_EQ(q.Feed(std::string(GreetingParser::kMaxBytes + 1, '2')), State::kError);
}

TEST(Greeting, CodeChangeInsideMultiLineIsAnError) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220-a\r\n250 b\r\n"), State::kError);
}

TEST(Greeting, DataAfterGreetingIsAnError) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220 hi\r\n250 early\r\n"), State::kError);
  EXPECT_NE(p.error().find("without waiting"), std::string::npos);
}

TEST(Greeting, BadSeparatorIsAnError) {
  GreetingParser p;
  EXPECT_EQ(p.Feed("220xhello\r\n"), State::kError);
}

TEST(Greeting, NeverCrashesOnArbitraryBytes) {
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 20000; ++i) {
    GreetingParser p;
    std::string s;
    for (int j = 0; j < 64; ++j) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      const char alphabet[] =
          "2245- \r\n\x00\xff"
          "0";
      s.push_back(alphabet[x % (sizeof(alphabet) - 1)]);
    }
    State st = p.Feed(s);
    if (st == State::kError) {
      EXPECT_FALSE(p.error().empty());
    }
  }
}

}  // namespace
}  // namespace mxsched::io
