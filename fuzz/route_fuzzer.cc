// libFuzzer target: route items ("smtp://host?pref=..", "[v6]", "__mx__", push URLs).
#include <cstdint>
#include <string_view>

#include "mxsched/scheduler/routes.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto item = mxsched::ParseRouteItem(text);
  if (item.ok() && item->pref && *item->pref > 65535) __builtin_trap();
  if (item.ok() && item->port && *item->port == 0) __builtin_trap();
  return 0;
}
