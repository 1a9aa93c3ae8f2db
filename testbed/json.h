// JSON output for the farm, the load report and the CLI: nlohmann-json (Debian
// nlohmann-json3-dev) instead of a hand-written writer, so uint64 counts stay unsigned,
// strings are escaped as UTF-8 and a NaN or infinity is written as null, never as invalid JSON.
// Stateless; safe from any thread.
#ifndef MXSCHED_TESTBED_JSON_H_
#define MXSCHED_TESTBED_JSON_H_

#include <string>

#include "nlohmann/json.hpp"

namespace mxsched {

// One line of JSON. Bytes that are not valid UTF-8 (a hostname or reply from the wire) become
// U+FFFD rather than throwing: a report must always be written.
inline std::string DumpJson(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace mxsched

#endif  // MXSCHED_TESTBED_JSON_H_
