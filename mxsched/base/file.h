// Bounded, checked reads of small input files (configuration, domain lists).
//
// Why not std::ifstream: it reads a directory as an empty file (or throws ios_failure when
// exceptions are on), reads /dev/zero until memory runs out, and reports no reason. This
// reads regular files only, at most a caller-given number of bytes, and every error names the
// file and what was wrong. Thread-safety: a pure function over the file system.
#ifndef MXSCHED_BASE_FILE_H_
#define MXSCHED_BASE_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace mxsched {

// 16 MiB: far above any real configuration or domain list, far below memory trouble.
inline constexpr size_t kMaxInputFileBytes = size_t{16} << 20;

// Reads the whole of `path`, which must be a regular file (symlinks to one are fine) of at
// most `max_bytes`. Errors (NotFound, InvalidArgument, ResourceExhausted) read
// "PATH: cannot open: No such file or directory", "PATH: is a directory, not a regular file",
// "PATH: larger than N bytes", with PATH escaped.
absl::StatusOr<std::string> ReadInputFile(const std::string& path,
                                          size_t max_bytes = kMaxInputFileBytes);

}  // namespace mxsched

#endif  // MXSCHED_BASE_FILE_H_
