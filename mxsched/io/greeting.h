// GreetingParser: incremental parser for the SMTP server greeting (RFC 5321 §4.2, §4.3.1).
//
//   220-first line\r\n 220-more\r\n 220 last line\r\n
//
// Feed it bytes as they arrive; it says when the reply is complete, its code and text, or
// why the bytes are not a greeting. Bounded: at most kMaxLine bytes per line, kMaxLines lines
// and kMaxBytes in all; anything beyond is an error, never unbounded buffering.
// Tolerates bare LF line ends (common in the wild). Thread-compatible.
#ifndef MXSCHED_IO_GREETING_H_
#define MXSCHED_IO_GREETING_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace mxsched::io {

class GreetingParser {
 public:
  static constexpr size_t kMaxLine = 1000;  // RFC 5321 says 512; be lenient
  static constexpr size_t kMaxLines = 64;
  static constexpr size_t kMaxBytes = 8192;

  enum class State { kNeedMore, kDone, kError };

  // Consumes `data`. Bytes after the final line are a protocol error (the server must wait
  // for our command) — except on kDone, where they are ignored by the caller's choice.
  State Feed(std::string_view data);

  State state() const { return state_; }
  int code() const { return code_; }                 // valid when kDone
  const std::string& text() const { return text_; }  // lines joined by "\n", without codes
  const std::string& error() const { return error_; }
  // "220 mx.example ESMTP" style one-line summary for logs (first line, trimmed).
  std::string Summary() const;

 private:
  State Fail(std::string why);
  State Line(std::string_view line);

  State state_ = State::kNeedMore;
  int code_ = 0;
  size_t lines_ = 0;
  size_t total_ = 0;
  std::string partial_;
  std::string text_;
  std::string error_;
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_GREETING_H_
