// libFuzzer target: DNS responses. The first byte picks the query type (A, AAAA, MX).
#include <cstdint>
#include <string_view>

#include "mxsched/io/dns_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static constexpr uint16_t kTypes[] = {mxsched::io::kTypeA, mxsched::io::kTypeAaaa,
                                        mxsched::io::kTypeMx};
  const uint16_t type = kTypes[data[0] % 3];
  std::string_view msg(reinterpret_cast<const char*>(data + 1), size - 1);
  auto r = mxsched::io::ParseDnsResponse(msg, "a.test", type);
  if (r.ok() && r->cname_hops > mxsched::io::kMaxCnameHops) __builtin_trap();
  return 0;
}
