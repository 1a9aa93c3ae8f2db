// The JSON the farm, the load report and the CLI write (testbed/json.h, nlohmann-json):
// uint64 counts stay unsigned, strings are valid UTF-8 JSON, NaN is null — each read back.
#include "testbed/json.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "gtest/gtest.h"
#include "testbed/load.h"

namespace mxsched {
namespace {

TEST(DumpJson, Uint64StaysUnsigned) {
  const uint64_t big = std::numeric_limits<uint64_t>::max();
  nlohmann::json back = nlohmann::json::parse(DumpJson({{"total", big}}));
  ASSERT_TRUE(back["total"].is_number_unsigned());
  EXPECT_EQ(back["total"].get<uint64_t>(), big);
}

TEST(DumpJson, NanAndInfinityAreNullNotInvalidJson) {
  const std::string text =
      DumpJson({{"nan", std::nan("")}, {"inf", std::numeric_limits<double>::infinity()}});
  nlohmann::json back = nlohmann::json::parse(text);  // throws on invalid JSON
  EXPECT_TRUE(back["nan"].is_null());
  EXPECT_TRUE(back["inf"].is_null());
}

TEST(DumpJson, Utf8IsKeptAndInvalidBytesAreReplaced) {
  // "café" (valid UTF-8), then a lone 0xFF byte as a server might send in a greeting.
  const std::string text = DumpJson({{"s", "caf\xc3\xa9 \"q\" \xff"}});
  nlohmann::json back = nlohmann::json::parse(text);
  EXPECT_EQ(back["s"].get<std::string>(), "caf\xc3\xa9 \"q\" \xef\xbf\xbd");  // U+FFFD
}

TEST(LoadReportJson, ZeroLengthRunIsStillValidJson) {
  testbed::LoadReport r;
  r.seconds = 0;
  r.sessions_per_second = std::nan("");  // what 0/0 would give
  r.examples["refused"] = "421 \xff";
  nlohmann::json back = nlohmann::json::parse(r.ToJson());
  EXPECT_TRUE(back["sessions_per_second"].is_null());
  EXPECT_EQ(back["examples"]["refused"].get<std::string>(), "421 \xef\xbf\xbd");
}

}  // namespace
}  // namespace mxsched
