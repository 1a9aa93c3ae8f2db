#include "mxsched/scheduler/feedback.h"

#include "mxsched/base/strings.h"

namespace mxsched {
namespace {

// Texts receivers use when they cap concurrency or shed load (collected from Postfix,
// KumoMTA's default shaping rules and PowerMTA backoff patterns; lower case).
constexpr std::string_view kBusyPhrases[] = {
    "too many connections",
    "too many concurrent",
    "too many sessions",
    "too many smtp sessions",
    "connection limit",
    "connections limit",
    "maximum number of concurrent",
    "concurrent connections",
    "try again later",
    "try later",
    "please try again",
    "server busy",
    "too busy",
    "temporarily busy",
    "rate limit",
    "throttl",
    "temporarily deferred",
    "service temporarily unavailable",
};

bool ParseStatus(std::string_view s, size_t* len) {
  size_t i = 0;
  for (int part = 0; part < 3; ++part) {
    size_t digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && digits < 4) {
      ++i;
      ++digits;
    }
    if (digits == 0 || digits > 3) return false;
    if (part == 0 && digits != 1) return false;
    if (part < 2) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  if (i < s.size() && s[i] != ' ' && s[i] != '\n' && s[i] != '\t') return false;
  *len = i;
  return true;
}

}  // namespace

SmtpReply SmtpReply::FromText(int code, std::string_view text) {
  SmtpReply r;
  r.code = code;
  size_t len = 0;
  if (ParseStatus(text, &len)) {
    r.enhanced = std::string(text.substr(0, len));
    text.remove_prefix(len);
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  }
  r.text = std::string(text);
  return r;
}

std::string SmtpReply::ToString() const {
  std::string s = std::to_string(code);
  if (!enhanced.empty()) s += StrCat(" ", enhanced);
  if (!text.empty()) s += StrCat(" ", text.substr(0, text.find('\n')));
  return s;
}

ReplyVerdict ClassifyReply(const SmtpReply& reply) {
  if (reply.code >= 200 && reply.code < 400) return {ReplyClass::kPositive, BusyRule::kNone};
  if (reply.code < 400 || reply.code >= 500) return {ReplyClass::kRejected, BusyRule::kNone};
  if (reply.code == 421) return {ReplyClass::kBusy, BusyRule::kCode421};
  const std::string_view st = reply.enhanced;
  if (st.substr(0, 4) == "4.7." || st == "4.3.2" || st == "4.4.5") {
    return {ReplyClass::kBusy, BusyRule::kStatus};
  }
  const std::string text = ToLower(reply.text);
  for (std::string_view phrase : kBusyPhrases) {
    if (text.find(phrase) != std::string::npos) return {ReplyClass::kBusy, BusyRule::kText};
  }
  return {ReplyClass::kRejected, BusyRule::kNone};
}

}  // namespace mxsched
