#include "mxsched/io/greeting.h"

#include "mxsched/base/strings.h"

namespace mxsched::io {

GreetingParser::State GreetingParser::Fail(std::string why) {
  error_ = std::move(why);
  state_ = State::kError;
  return state_;
}

GreetingParser::State GreetingParser::Feed(std::string_view data) {
  if (state_ != State::kNeedMore) return state_;
  total_ += data.size();
  if (total_ > kMaxBytes) return Fail(StrCat("greeting longer than ", kMaxBytes, " bytes"));
  for (size_t i = 0; i < data.size(); ++i) {
    const char c = data[i];
    if (c == '\n') {
      std::string_view line = partial_;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (Line(line) != State::kNeedMore) {
        if (state_ == State::kDone && i + 1 < data.size()) {
          return Fail(
              "server sent data after its greeting without waiting (pipelining "
              "before EHLO)");
        }
        return state_;
      }
      partial_.clear();
      continue;
    }
    if (partial_.size() >= kMaxLine) {
      return Fail(StrCat("greeting line longer than ", kMaxLine, " bytes"));
    }
    partial_.push_back(c);
  }
  return state_;
}

GreetingParser::State GreetingParser::Line(std::string_view line) {
  if (++lines_ > kMaxLines) return Fail(StrCat("greeting has more than ", kMaxLines, " lines"));
  if (line.size() < 3 || !IsDigit(line[0]) || !IsDigit(line[1]) || !IsDigit(line[2]) ||
      line[0] < '2' || line[0] > '5') {
    return Fail(StrCat("not an SMTP reply line: \"", Escape(line.substr(0, 80)), "\""));
  }
  const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (code_ != 0 && code != code_) {
    return Fail(StrCat("reply code changed from ", code_, " to ", code,
                       " inside a multi-line "
                       "greeting"));
  }
  code_ = code;
  char sep = line.size() > 3 ? line[3] : ' ';
  if (sep != ' ' && sep != '-') {
    return Fail(StrCat("expected ' ' or '-' after the code: \"", Escape(line.substr(0, 80)), "\""));
  }
  if (!text_.empty()) text_ += '\n';
  if (line.size() > 4) text_.append(line.substr(4));
  if (sep == '-') return state_;
  state_ = State::kDone;
  return state_;
}

std::string GreetingParser::Summary() const {
  std::string first = text_.substr(0, text_.find('\n'));
  return StrCat(code_, " ", Escape(first.substr(0, 200)));
}

}  // namespace mxsched::io
