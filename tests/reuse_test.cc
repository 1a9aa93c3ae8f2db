// Connection reuse end to end (docs/DESIGN.md §13): the connector parks connections between
// message transactions; the farm counts connections, QUITs and messages server-side.
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/connector.h"
#include "mxsched/io/loop.h"
#include "testbed/farm.h"
#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using io::ConnectResult;
using testing::ConfigFrom;
using testing::Ep;
using testing::StatsFor;

// One SMTP reply, multi-line ones ("250-...") read to their last line ("250 ..."); false on
// timeout, EOF or a code other than `code`.
bool Expect(int fd, std::string_view code) {
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

bool Send(int fd, std::string_view s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

// One message transaction, blocking (the farm runs on its own thread).
bool Transact(int fd, bool ehlo) {
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (ehlo && !(Send(fd, "EHLO client.test\r\n") && Expect(fd, "250"))) return false;
  return Send(fd, "MAIL FROM:<s@example.test>\r\n") && Expect(fd, "250") &&
         Send(fd, "RCPT TO:<r@example.test>\r\n") && Expect(fd, "250") &&
         Send(fd, "DATA\r\n") && Expect(fd, "354") &&
         Send(fd, "Subject: t\r\n\r\nhello\r\n.\r\n") && Expect(fd, "250");
}

struct Tally {
  int64_t delivered = 0, failed = 0, deferred = 0, reused = 0, fresh = 0;
};

// Sends `messages` messages to `domain`, `concurrency` at a time, each session one message;
// with `reuse` the connection is parked after each. Every session is accounted for.
Tally SendMessages(Selector& selector, std::string_view domain, int messages, int concurrency, bool reuse,
          int idle_gap_ms = 0) {
  auto loop = io::Loop::Create();
  EXPECT_TRUE(loop.ok());
  Tally t;
  {
    io::Connector connector(loop->get(), &selector,
                            {.connect_timeout_ms = 10000, .banner_timeout_ms = 10000,
                             .slot_wait_ms = 30000, .reuse = reuse});
    int started = 0, ended = 0;
    std::function<void()> start = [&] {
      ++started;
      connector.Connect(domain, [&](ConnectResult r) {
        if (r.kind == ConnectResult::Kind::kConnected) {
          (r.reused ? t.reused : t.fresh) += 1;
          if (Transact(r.fd, !r.reused)) {
            ++t.delivered;
            connector.Park(std::move(r));
          } else {
            ++t.failed;
            testing::CloseConnection(r);
          }
        } else {
          ++t.deferred;
        }
        ++ended;
        if (started < messages) start();
      });
    };
    for (int i = 0; i < concurrency && started < messages; ++i) start();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (ended < messages && std::chrono::steady_clock::now() < deadline) {
      (*loop)->RunOnce(100);
    }
    EXPECT_EQ(ended, messages) << "sessions lost";
    if (idle_gap_ms > 0) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(idle_gap_ms);
      while (std::chrono::steady_clock::now() < until) (*loop)->RunOnce(50);
    }
    connector.Stop("test over");  // parked connections end with QUIT
    for (int i = 0; i < 200 && connector.parked() > 0; ++i) (*loop)->RunOnce(50);
    EXPECT_EQ(connector.parked(), 0u);
  }
  EXPECT_EQ(t.delivered + t.failed + t.deferred, messages);
  return t;
}

// Server-side counts settle a moment after the client closes: wait for the condition.
std::vector<testbed::FarmAddressStats> SettledStats(testbed::Farm& farm) {
  std::vector<testbed::FarmAddressStats> s;
  for (int i = 0; i < 200; ++i) {
    s = farm.Stats();
    bool open = false;
    for (const auto& a : s) open |= a.current != 0;
    if (!open) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling a condition
  }
  return s;
}

class ReuseTest : public testing::LoopbackTest {
 protected:
  std::string TwoHosts(int limit, std::string extra) const {
    return StrCat("remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10), " ", Url(2, 10),
                  " )\nHost \"", Ip(1), "\" { max_outbound_connections = ", limit, " }\nHost \"",
                  Ip(2), "\" { max_outbound_connections = ", limit, " }\n", extra);
  }
};

TEST_F(ReuseTest, AThousandMessagesOverTwoHostsOfLimitThreeTakeAFifthOfTheConnections) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_), Ep(Ip(2), port_)});
  Selector selector(ConfigFrom(TwoHosts(3, "max_deliveries_per_connection = 10\n")));
  const auto t0 = std::chrono::steady_clock::now();
  Tally t = SendMessages(selector, "example.com", 1000, 8, /*reuse=*/true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(t.delivered, 1000);
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->messages + b->messages, 1000u) << "every message delivered once";
  const uint64_t connections = a->total + b->total;
  EXPECT_EQ(static_cast<int64_t>(connections), t.fresh) << "every connection made by a session";
  EXPECT_LE(connections, 200u) << "a fifth or fewer of the no-reuse run's 1000";
  EXPECT_EQ(a->quits + b->quits, connections) << "every connection closed with QUIT";
  EXPECT_LE(a->peak, 3);
  EXPECT_LE(b->peak, 3);
  EXPECT_NEAR(static_cast<double>(a->messages), 500, 150) << "messages spread over both hosts";
  auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kReused)], static_cast<uint64_t>(t.reused));
  std::printf("reuse: 1000 messages in %.2f s (%.0f/s) over %llu connections, %lld reused\n",
              secs, 1000 / secs, static_cast<unsigned long long>(connections),
              static_cast<long long>(t.reused));
}

TEST_F(ReuseTest, WithoutReuseEveryMessageTakesAConnection) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_), Ep(Ip(2), port_)});
  Selector selector(ConfigFrom(TwoHosts(3, "")));
  const auto t0 = std::chrono::steady_clock::now();
  Tally t = SendMessages(selector, "example.com", 1000, 8, /*reuse=*/false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(t.delivered, 1000);
  auto s = SettledStats(*farm);
  const uint64_t connections = StatsFor(s, Ip(1))->total + StatsFor(s, Ip(2))->total;
  EXPECT_EQ(connections, 1000u);
  EXPECT_EQ(StatsFor(s, Ip(1))->quits + StatsFor(s, Ip(2))->quits, 1000u);
  std::printf("no reuse: 1000 messages in %.2f s (%.0f/s) over %llu connections\n", secs,
              1000 / secs, static_cast<unsigned long long>(connections));
}

TEST_F(ReuseTest, ParkedConnectionsAreClosedWithQuitAfterTheIdleTimeout) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_), Ep(Ip(2), port_)});
  Selector selector(ConfigFrom(TwoHosts(3, "idle_timeout = 1\n")));
  Tally t = SendMessages(selector, "example.com", 20, 2, /*reuse=*/true, /*idle_gap_ms=*/2500);
  EXPECT_EQ(t.delivered, 20);
  auto s = SettledStats(*farm);
  const uint64_t connections = StatsFor(s, Ip(1))->total + StatsFor(s, Ip(2))->total;
  EXPECT_EQ(StatsFor(s, Ip(1))->quits + StatsFor(s, Ip(2))->quits, connections);
  auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kIdleTimeout)], connections)
      << "every parked connection timed out idle before the stop";
  EXPECT_EQ(selector.server_active(), 0);
}


// Issue 22 items 1-2 with reuse (DESIGN §12 rule 5, §13 rule 2): a reused connection takes
// no connection token but a message token, and waits for its instant as a fresh start does,
// so the receiver counts at most N message transactions (MAIL) in any second.
TEST_F(ReuseTest, AMessageThrottleHoldsOverReusedConnections) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_), Ep(Ip(2), port_)});
  Selector selector(ConfigFrom(TwoHosts(
      3, "outbound_throttle_messages = \"10\"\nmax_deliveries_per_connection = 100\n")));
  const auto t0 = std::chrono::steady_clock::now();
  Tally t = SendMessages(selector, "example.com", 40, 4, /*reuse=*/true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(t.delivered, 40);
  EXPECT_GE(t.reused, 30) << "most messages over parked connections";
  const std::vector<int64_t> mails = farm->RecentMailTimes();
  ASSERT_EQ(mails.size(), 40u);
  // The most MAIL commands the receiver saw within any window of 1 s (half-open).
  size_t peak = 0;
  for (size_t i = 0, j = 0; i < mails.size(); ++i) {
    while (mails[i] - mails[j] >= 1'000'000'000) ++j;
    peak = std::max(peak, i - j + 1);
  }
  EXPECT_LE(peak, 10u) << "the message throttle passed through reused connections";
  EXPECT_GE(secs, 3.5) << "40 messages at 10/s";
  std::printf("message throttle 10/s with reuse: 40 messages in %.2f s, %lld reused, peak %zu "
              "MAIL in 1 s\n", secs, static_cast<long long>(t.reused), peak);
}

}  // namespace
}  // namespace mxsched
