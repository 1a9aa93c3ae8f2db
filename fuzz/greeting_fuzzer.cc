// libFuzzer target: SMTP greetings, fed in the chunk sizes the first byte chooses (a server
// may split its greeting anywhere).
#include <cstdint>
#include <string_view>

#include "mxsched/io/greeting.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = 1 + data[0] % 16;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  mxsched::io::GreetingParser p;
  while (!rest.empty() && p.state() == mxsched::io::GreetingParser::State::kNeedMore) {
    p.Feed(rest.substr(0, chunk));
    rest.remove_prefix(std::min(chunk, rest.size()));
  }
  if (p.state() == mxsched::io::GreetingParser::State::kDone &&
      (p.code() < 200 || p.code() > 599)) {
    __builtin_trap();
  }
  if (p.state() == mxsched::io::GreetingParser::State::kError && p.error().empty())
    __builtin_trap();
  return 0;
}
