// SMTP replies as concurrency feedback (docs/DESIGN.md §6): which replies say "you have too many
// connections open to me, come back later" — negative feedback on a host's concurrency, not
// a sign that the host is down.
//
// A reply is *busy* when it is a 4xx and any of:
//   - its code is 421 (RFC 5321: "service not available, closing transmission channel", the
//     reply receivers send when they cap connections per client: Yahoo, Microsoft, GMX...);
//   - its enhanced status is 4.7.x (policy: "too many connections from your IP"), 4.3.2
//     (system not accepting network messages) or 4.4.5 (system congestion);
//   - its text says so: "too many connections", "try again later", "server busy", ... (the
//     list is kBusyPhrases in feedback.cc; case-insensitive substrings).
// 5xx replies are never busy: a permanent refusal is not about concurrency.
//
// Thread-safety: pure functions and values.
#ifndef MXSCHED_SCHEDULER_FEEDBACK_H_
#define MXSCHED_SCHEDULER_FEEDBACK_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace mxsched {

// One SMTP reply as the embedder saw it (greeting, or the reply to EHLO/MAIL/RCPT/DATA).
struct SmtpReply {
  int code = 0;          // 220, 421, 550...
  std::string enhanced;  // RFC 3463 status "4.7.0", or "" when the reply has none
  std::string text;      // the rest of the reply (lines joined by "\n"), without the status

  // Splits "4.7.0 too many connections" into enhanced status and text; the status is taken
  // only when it is well-formed (class.subject.detail, 1-3 digits each).
  static SmtpReply FromText(int code, std::string_view text);
  std::string ToString() const;  // "421 4.7.0 too many connections"
};

enum class ReplyClass : uint8_t {
  kPositive,  // 2xx/3xx
  kBusy,      // the receiver pushes back on concurrency (see above)
  kRejected,  // any other 4xx/5xx (or an unparsable code)
};

// Which rule made a reply busy; kept with the host for "why did the limit move".
enum class BusyRule : uint8_t { kNone, kCode421, kStatus, kText };

struct ReplyVerdict {
  ReplyClass cls = ReplyClass::kRejected;
  BusyRule rule = BusyRule::kNone;
};
ReplyVerdict ClassifyReply(const SmtpReply& reply);

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_FEEDBACK_H_
