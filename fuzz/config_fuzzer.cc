// libFuzzer target: the Momentum config parser must return a value or an error naming
// FILE:LINE:COLUMN for any byte string — never crash, hang or grow without bound.
#include <cstdint>
#include <string_view>

#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = mxsched::ParseConfig(text, "fuzz.conf");
  if (!config.ok() && mxsched::ToStd(config.status().message()).rfind("fuzz.conf:", 0) != 0) {
    __builtin_trap();  // every error must say where
  }
  return 0;
}
