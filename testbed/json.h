// A minimal streaming JSON writer for the CLI's --json output (objects, arrays, scalars).
// Not thread-safe; one writer per document.
#ifndef MXSCHED_TESTBED_JSON_H_
#define MXSCHED_TESTBED_JSON_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mxsched {

class JsonWriter {
 public:
  JsonWriter& BeginObject() { return Open('{'); }
  JsonWriter& EndObject() { return Close('}'); }
  JsonWriter& BeginArray() { return Open('['); }
  JsonWriter& EndArray() { return Close(']'); }
  JsonWriter& Key(std::string_view k) {
    Comma();
    String(k);
    out_ += ':';
    after_key_ = true;
    return *this;
  }
  JsonWriter& Value(std::string_view s) {
    Comma();
    String(s);
    return *this;
  }
  JsonWriter& Value(const char* s) { return Value(std::string_view(s)); }
  JsonWriter& Value(bool b) {
    Comma();
    out_ += b ? "true" : "false";
    return *this;
  }
  JsonWriter& Value(int64_t n) {
    Comma();
    out_ += std::to_string(n);
    return *this;
  }
  JsonWriter& Value(int n) { return Value(static_cast<int64_t>(n)); }
  JsonWriter& Value(uint32_t n) { return Value(static_cast<int64_t>(n)); }
  JsonWriter& Value(uint64_t n) { return Value(static_cast<int64_t>(n)); }
  JsonWriter& Value(double d) {
    Comma();
    char buf[32];
    snprintf(buf, sizeof(buf), "%.3f", d);
    out_ += buf;
    return *this;
  }
  template <typename T>
  JsonWriter& Field(std::string_view k, T v) {
    Key(k);
    return Value(v);
  }
  const std::string& str() const { return out_; }

 private:
  JsonWriter& Open(char c) {
    Comma();
    out_ += c;
    first_.push_back(true);
    return *this;
  }
  JsonWriter& Close(char c) {
    out_ += c;
    first_.pop_back();
    return *this;
  }
  void Comma() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_.empty()) {
      if (!first_.back()) out_ += ',';
      first_.back() = false;
    }
  }
  void String(std::string_view s) {
    out_ += '"';
    for (unsigned char c : s) {
      switch (c) {
        case '"': out_ += "\\\""; break;
        case '\\': out_ += "\\\\"; break;
        case '\n': out_ += "\\n"; break;
        case '\t': out_ += "\\t"; break;
        default:
          if (c < 0x20 || c >= 0x7F) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out_ += buf;
          } else {
            out_ += static_cast<char>(c);
          }
      }
    }
    out_ += '"';
  }

  std::string out_;
  std::vector<bool> first_;
  bool after_key_ = false;
};

}  // namespace mxsched

#endif  // MXSCHED_TESTBED_JSON_H_
