// A blocking SMTP client for integration tests: the embedder's side of a connection the
// Connector handed over (the farm runs on its own thread, so the test thread may block on
// it). One message transaction, or its parts: send a command, read a reply's code.
#ifndef MXSCHED_TESTS_SMTP_CLIENT_H_
#define MXSCHED_TESTS_SMTP_CLIENT_H_

#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "gtest/gtest.h"

namespace mxsched::testing {

// One SMTP reply, multi-line ones ("250-...") read to their last line ("250 ..."); false on
// timeout, EOF or a code other than `code`.
inline bool Expect(int fd, std::string_view code) {
  char buf[2048];
  size_t have = 0;
  for (;;) {
    std::string_view got(buf, have);
    const size_t end = got.rfind('\n');
    if (end != std::string_view::npos) {
      const size_t start = got.rfind('\n', end == 0 ? 0 : end - 1);
      std::string_view last = got.substr(start == std::string_view::npos || end == 0 ? 0 : start + 1);
      if (last.size() >= 4 && last[3] == ' ') return got.starts_with(code);
    }
    if (have == sizeof(buf)) return false;
    ssize_t n = recv(fd, buf + have, sizeof(buf) - have, 0);
    if (n < 0 && errno == EINTR) continue;  // (io_uring's task work interrupts blocking calls)
    if (n <= 0) {
      ADD_FAILURE() << "waiting for " << code << ": " << (n == 0 ? "EOF" : std::strerror(errno))
                    << " after \"" << std::string_view(buf, have) << "\"";
      return false;
    }
    have += static_cast<size_t>(n);
  }
}

// Writes all of `s` or returns false.
inline bool Send(int fd, std::string_view s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

// One message transaction on a connected socket, blocking, each read bounded by a 10 s
// receive timeout; `ehlo` on a fresh connection (a reused one has had its EHLO).
inline bool Transact(int fd, bool ehlo) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (ehlo && !(Send(fd, "EHLO client.test\r\n") && Expect(fd, "250"))) return false;
  return Send(fd, "MAIL FROM:<s@example.test>\r\n") && Expect(fd, "250") &&
         Send(fd, "RCPT TO:<r@example.test>\r\n") && Expect(fd, "250") &&
         Send(fd, "DATA\r\n") && Expect(fd, "354") &&
         Send(fd, "Subject: t\r\n\r\nhello\r\n.\r\n") && Expect(fd, "250");
}

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_SMTP_CLIENT_H_
