// Small string helpers over std::string_view.
//
// Debian 12's Abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW=0, so absl::string_view
// is a distinct type and absl::StrCat/StrSplit/SimpleAtoi do not accept std::string_view.
// Rather than convert at every call, the project uses these. Thread-safety: pure functions.
#ifndef MXSCHED_BASE_STRINGS_H_
#define MXSCHED_BASE_STRINGS_H_

#include <charconv>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace mxsched {

namespace strings_internal {
inline void Append(std::string& out, std::string_view s) { out.append(s); }
inline void Append(std::string& out, const char* s) { out.append(s); }
inline void Append(std::string& out, const std::string& s) { out.append(s); }
inline void Append(std::string& out, absl::string_view s) { out.append(s.data(), s.size()); }
inline void Append(std::string& out, char c) { out.push_back(c); }
template <std::integral T>
requires(!std::same_as<T, char> && !std::same_as<T, bool>) void Append(std::string& out, T v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, r.ptr);
}
inline void Append(std::string& out, double v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, 2);
  out.append(buf, r.ptr);
}
}  // namespace strings_internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (strings_internal::Append(out, args), ...);
  return out;
}

inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

inline char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }
inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }
inline bool IsAlnum(char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::string ToLower(std::string_view s);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);
std::vector<std::string_view> Split(std::string_view s, char sep);
// Decimal digits only (no sign, no spaces); false on overflow or anything else.
bool ParseUint(std::string_view s, uint64_t* out);
// Printable ASCII as is; anything else as \xNN. For quoting hostile input in messages.
std::string Escape(std::string_view s);
// A user-supplied value as it may be shown in an error or warning, between double quotes:
// printable ASCII and well-formed UTF-8 as is; \n \r \t \e, \" and \\ escaped; every other
// byte that could act on a terminal or be cut short by a C string (C0 controls, NUL, DEL,
// C1 controls, bidi/line-separator/zero-width format characters, malformed UTF-8) as \xNN.
// At most `max` bytes of escaped text, then "... (N bytes)" with the value's full length:
// a 1 MB value must not become a 1 MB error line, and the reader still learns its size.
std::string EchoForError(std::string_view s, size_t max = 80);
// Bytes from outside (DNS names, reason strings, Redis errors, HTTP bodies, argv) as they may
// be written to a terminal: EchoForError's escapes of controls, format characters and
// malformed UTF-8 (\e, \n, \xNN), but '\\' and '"' kept, so text that is already escaped
// passes unchanged and it can wrap a whole message; no length bound (the caller's line has its
// own). The one helper every terminal path uses (docs/DESIGN.md §11).
std::string ForTerminal(std::string_view s);
std::string Join(const std::vector<std::string>& parts, std::string_view sep);

// Levenshtein distance (insert, delete, substitute: 1 each), O(|a| x |b|) time: for "did you
// mean" suggestions over short names; callers bound the lengths.
size_t EditDistance(std::string_view a, std::string_view b);

}  // namespace mxsched

#endif  // MXSCHED_BASE_STRINGS_H_
