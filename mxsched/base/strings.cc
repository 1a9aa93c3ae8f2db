#include "mxsched/base/strings.h"

#include <algorithm>
#include <vector>

namespace mxsched {

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = AsciiLower(c);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return true;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool ParseUint(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsDigit(c)) return false;
  }
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

std::string Escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

namespace {

// The length of the well-formed UTF-8 sequence (Unicode 15, table 3-7) starting at s[i], and
// its code point; 0 if the bytes there are not one (overlong, surrogate, > U+10FFFF, cut).
size_t Utf8Sequence(std::string_view s, size_t i, char32_t* cp) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char b0 = at(0);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || at(1) < lo || at(1) > hi) return 0;
  char32_t v = b0 & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((at(k) & 0xC0) != 0x80) return 0;
    v = v << 6 | (at(k) & 0x3F);
  }
  *cp = v;
  return n;
}

// Code points that are well-formed but act on a terminal or hide/reorder text: C1 controls
// (U+009B is CSI on many terminals), zero-width and direction marks, line/paragraph
// separators, bidi embeddings/overrides/isolates ("Trojan Source") and the BOM.
bool IsFormatOrControl(char32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || (cp >= 0x200B && cp <= 0x200F) ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xFEFF;
}

void AppendHex(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out.push_back(kHex[c >> 4]);
  out.push_back(kHex[c & 15]);
}

}  // namespace

namespace {

// EchoForError and ForTerminal: `quoting` also escapes '\\' and '"' (a value shown between
// quotes); without it, text already escaped passes through unchanged.
std::string EscapeForDisplay(std::string_view s, size_t max, bool quoting) {
  std::string out;
  std::string unit;  // the escaped form of the character at s[i]
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = 1;
    char32_t cp = 0;
    unit.clear();
    switch (c) {
      case '\\':
        unit = quoting ? "\\\\" : "\\";
        break;
      case '"':
        unit = quoting ? "\\\"" : "\"";
        break;
      case '\n':
        unit = "\\n";
        break;
      case '\r':
        unit = "\\r";
        break;
      case '\t':
        unit = "\\t";
        break;
      case 0x1B:
        unit = "\\e";
        break;
      default:
        if (c >= 0x20 && c < 0x7F) {
          unit.push_back(static_cast<char>(c));
        } else if (c >= 0x80 && (n = Utf8Sequence(s, i, &cp)) != 0) {
          if (IsFormatOrControl(cp)) {
            for (size_t k = 0; k < n; ++k) AppendHex(unit, static_cast<unsigned char>(s[i + k]));
          } else {
            unit.assign(s.substr(i, n));
          }
        } else {
          n = 1;  // a control byte, or a byte that starts no well-formed sequence
          AppendHex(unit, c);
        }
    }
    // Whole characters only: a cut never leaves half an escape or half a UTF-8 sequence.
    if (out.size() + unit.size() > max) break;
    out += unit;
    i += n;
  }
  if (i < s.size()) out += StrCat("... (", s.size(), " bytes)");
  return out;
}

}  // namespace

std::string EchoForError(std::string_view s, size_t max) {
  return EscapeForDisplay(s, max, /*quoting=*/true);
}

std::string ForTerminal(std::string_view s) {
  return EscapeForDisplay(s, SIZE_MAX, /*quoting=*/false);
}

std::string Join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out.append(sep);
    out.append(parts[i]);
  }
  return out;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace mxsched
