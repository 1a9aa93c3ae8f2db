// Connection reuse end to end (docs/DESIGN.md §13): the connector parks connections between
// message transactions; the farm counts connections, QUITs and messages server-side.
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <string>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/connector.h"
#include "mxsched/io/loop.h"
#include "testbed/farm.h"
#include "tests/net_testutil.h"
#include "tests/smtp_client.h"
#include "tests/testutil.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched {
namespace {

using io::ConnectResult;
using testing::ConfigFrom;
using testing::Ep;
using testing::Send;
using testing::StatsFor;
using testing::Transact;

// Replies read off one connection, kept between reads: pipelined commands' replies (RFC
// 2920) arrive together, so a reader that drops what follows the reply it wants loses them.
struct Replies {
  int fd;
  std::string in;
  // The next reply's code ("250"), multi-line aware; "" at EOF, an error or a timeout.
  std::string Next() {
    for (;;) {
      size_t at = 0;
      for (size_t nl; (nl = in.find('\n', at)) != std::string::npos;) {
        const bool last = nl - at < 4 || in[at + 3] != '-';
        at = nl + 1;
        if (!last) continue;
        std::string code = in.substr(0, 3);
        in.erase(0, at);
        return code;
      }
      char buf[2048];
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;  // (io_uring's task work interrupts blocking calls)
      if (n <= 0) return "";
      in.append(buf, static_cast<size_t>(n));
    }
  }
};

enum class Sent { kDelivered, kFailed, kStale };

// One message transaction pipelined (RFC 2920), blocking: EHLO on a fresh connection (the
// farm advertises PIPELINING), then MAIL, RCPT and DATA in one write — led by RSET when the
// connector left it to the transaction (rset_pending, DESIGN §13 rule 6) — and their replies
// read in order. A refused RSET, or a close before its reply: stale (nothing was sent).
Sent TransactPipelined(const ConnectResult& r) {
  timeval tv{10, 0};
  setsockopt(r.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  Replies in{r.fd, {}};
  if (!r.reused) {
    if (!Send(r.fd, "EHLO client.test\r\n")) return Sent::kFailed;
    // (Replies::Next keeps only the code: the farm's EHLO reply ends "250 PIPELINING".)
    if (in.Next() != "250") return Sent::kFailed;
  }
  const std::string group = StrCat(r.rset_pending ? "RSET\r\n" : "",
                                   "MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n"
                                   "DATA\r\n");
  if (!Send(r.fd, group)) return r.rset_pending ? Sent::kStale : Sent::kFailed;
  if (r.rset_pending && !in.Next().starts_with("2")) return Sent::kStale;
  if (in.Next() != "250" || in.Next() != "250" || in.Next() != "354") return Sent::kFailed;
  if (!Send(r.fd, "Subject: t\r\n\r\nhello\r\n.\r\n")) return Sent::kFailed;
  return in.Next() == "250" ? Sent::kDelivered : Sent::kFailed;
}

struct Tally {
  int64_t delivered = 0, failed = 0, deferred = 0, reused = 0, fresh = 0;
  int64_t stale = 0;       // pipelined: reused connections whose RSET the embedder found refused
  int64_t rset_pending = 0;  // pipelined: reused connections handed over without an RSET
};

// Sends `messages` messages to `domain`, `concurrency` at a time, each session one message;
// with `reuse` the connection is parked after each. Every session is accounted for.
// `rounds` > 1: the messages are sent that many times, and between rounds the loop runs
// until `between()` holds (bounded: 15 s), e.g. until the server closed the parked ones.
// `pipelined`: each transaction is pipelined and parks with rset_with_transaction, so a
// reused connection carries its RSET in the transaction's write (DESIGN §13 rule 6).
Tally SendMessages(Selector& selector, std::string_view domain, int messages, int concurrency, bool reuse,
          int idle_gap_ms = 0, int rounds = 1, std::function<bool()> between = nullptr,
          bool pipelined = false) {
  auto loop = io::Loop::Create();
  EXPECT_TRUE(loop.ok());
  Tally t;
  {
    io::Connector connector(loop->get(), &selector,
                            {.connect_timeout_ms = 10000, .banner_timeout_ms = 10000,
                             .slot_wait_ms = 30000, .reuse = reuse});
    int started = 0, ended = 0, target = 0;
    std::function<void()> start;
    std::function<void(ConnectResult)> on_result = [&](ConnectResult r) {
      if (r.kind == ConnectResult::Kind::kConnected) {
        (r.reused ? t.reused : t.fresh) += 1;
        t.rset_pending += r.rset_pending ? 1 : 0;
        const Sent sent = pipelined ? TransactPipelined(r)
                          : Transact(r.fd, !r.reused) ? Sent::kDelivered : Sent::kFailed;
        if (sent == Sent::kStale) {
          ++t.stale;
          --t.reused;  // it carried nothing; the same session goes on
          return connector.Stale(std::move(r), on_result);
        }
        if (sent == Sent::kDelivered) {
          ++t.delivered;
          connector.Park(std::move(r), 1, {.rset_with_transaction = pipelined});
        } else {
          ++t.failed;
          testing::CloseConnection(r);
        }
      } else {
        ++t.deferred;
      }
      ++ended;
      if (started < target) start();
    };
    start = [&] {
      ++started;
      connector.Connect(domain, on_result);
    };
    for (int round = 0; round < rounds; ++round) {
      if (round > 0 && between) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
        while (!between() && std::chrono::steady_clock::now() < until) (*loop)->RunOnce(50);
        EXPECT_TRUE(between()) << "the condition between rounds " << round << " and " << round + 1;
      }
      target += messages;
      for (int i = 0; i < concurrency && started < target; ++i) start();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (ended < target && std::chrono::steady_clock::now() < deadline) {
        (*loop)->RunOnce(100);
      }
      EXPECT_EQ(ended, target) << "sessions lost";
    }
    messages = target;
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

// How a reusing run over two hosts of limit 3, `a` and `b`, ends when nothing fails: each of
// `messages` delivered once, every connection made by a session (t.fresh) and closed with
// QUIT, neither host past its limit. Returns the connections.
uint64_t ExpectEveryMessageOnceEveryConnectionQuit(const testbed::FarmAddressStats& a,
                                                   const testbed::FarmAddressStats& b,
                                                   const Tally& t, uint64_t messages) {
  EXPECT_EQ(a.messages + b.messages, messages) << "every message delivered once";
  const uint64_t connections = a.total + b.total;
  EXPECT_EQ(static_cast<int64_t>(connections), t.fresh) << "every connection made by a session";
  EXPECT_EQ(a.quits + b.quits, connections) << "every connection closed with QUIT";
  EXPECT_LE(a.peak, 3);
  EXPECT_LE(b.peak, 3);
  return connections;
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
  const uint64_t connections = ExpectEveryMessageOnceEveryConnectionQuit(*a, *b, t, 1000);
  EXPECT_LE(connections, 200u) << "a fifth or fewer of the no-reuse run's 1000";
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
  const size_t peak = testing::MostInAnySecond(mails);
  EXPECT_LE(peak, 10u) << "the message throttle passed through reused connections";
  EXPECT_GE(secs, 3.5) << "40 messages at 10/s";
  std::printf("message throttle 10/s with reuse: 40 messages in %.2f s, %lld reused, peak %zu "
              "MAIL in 1 s\n", secs, static_cast<long long>(t.reused), peak);
}

// No host is marked failed and none has a failure on record.
void ExpectNoHostBlamed(Selector& selector) {
  int hosts = 0;
  selector.registry().ForEach([&](const HostState& h) {
    ++hosts;
    EXPECT_EQ(h.consecutive_failures(), 0u) << h.endpoint().ToString();
    EXPECT_EQ(h.failed_until(), 0) << h.endpoint().ToString();
  });
  EXPECT_GT(hosts, 0);
}

std::unique_ptr<testbed::Farm> StartFarmWith(testbed::FarmOptions o) {
  auto farm = testbed::Farm::Start(std::move(o));
  EXPECT_TRUE(farm.ok()) << farm.status();
  return farm.ok() ? *std::move(farm) : nullptr;
}

// A receiver that closes connections idle for 1 s (the farm's idle timeout) while the
// client would keep them parked for 30: each is freed when the server closes it (the read
// armed while parked sees EOF: server_closed), no message is lost, no host is blamed, and
// the next round opens fresh connections.
TEST_F(ReuseTest, AServerClosingIdleConnectionsAfterOneSecondLosesNothingAndBlamesNoHost) {
  testbed::FarmOptions fo;
  fo.listen = {Ep(Ip(1), port_), Ep(Ip(2), port_)};
  fo.idle_timeout_ms = 1000;
  auto farm = StartFarmWith(std::move(fo));
  ASSERT_TRUE(farm);
  Selector selector(ConfigFrom(TwoHosts(3, "idle_timeout = 30\n")));
  auto server_closed = [&] {
    return selector.stats().Collect().reuse[static_cast<size_t>(ReuseEvent::kServerClosed)];
  };
  // Between rounds: every connection of the round was closed by the server (1 s idle).
  Tally t = SendMessages(selector, "example.com", 30, 3, /*reuse=*/true, 0, /*rounds=*/3,
                         [&] { return selector.parked() == 0; });
  EXPECT_EQ(t.delivered, 90);
  EXPECT_EQ(t.failed, 0);
  EXPECT_EQ(t.deferred, 0);
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->messages + b->messages, 90u) << "every message delivered once";
  const uint64_t connections = a->total + b->total;
  EXPECT_EQ(static_cast<int64_t>(connections), t.fresh);
  EXPECT_GE(connections, 2u) << "the rounds after the first needed fresh connections";
  EXPECT_GT(server_closed(), 0u);
  EXPECT_EQ(a->idle_closed + b->idle_closed, server_closed())
      << "each connection the server closed idle was freed as server_closed";
  EXPECT_EQ(a->quits + b->quits + a->idle_closed + b->idle_closed, connections)
      << "every other connection ended with the client's QUIT";
  ExpectNoHostBlamed(selector);
  EXPECT_EQ(selector.server_active(), 0);
}

// A reused connection whose message throttle's instant is ahead waits for it after its RSET
// (DESIGN §13 rule 2, §12 rule 9); a receiver that closes connections idle for 100 ms closes
// it meanwhile. Found probing `load --reuse` against `farm --idle-timeout-ms 50` with
// outbound_throttle_messages = "10": 14 of 30 sessions ended failed "connection closed before
// the reply to MAIL". Such a connection is stale, like one whose RSET is refused: counted,
// closed, and the session goes on over a fresh connection — no message fails, no host is
// blamed, every connection the server did not close ends with QUIT.
TEST_F(ReuseTest, AConnectionClosedByTheServerWhileItWaitsForItsMessageInstantIsReplaced) {
  testbed::FarmOptions fo;
  fo.listen = {Ep(Ip(1), port_), Ep(Ip(2), port_)};
  fo.idle_timeout_ms = 100;
  auto farm = StartFarmWith(std::move(fo));
  ASSERT_TRUE(farm);
  // "5": messages 210 ms apart, so every reused connection waits past the farm's 100 ms.
  Selector selector(ConfigFrom(TwoHosts(
      3, "outbound_throttle_messages = \"5\"\nidle_timeout = 30\n"
         "max_deliveries_per_connection = 100\n")));
  Tally t = SendMessages(selector, "example.com", 8, 2, /*reuse=*/true);
  EXPECT_EQ(t.delivered, 8);
  EXPECT_EQ(t.failed, 0) << "a connection the server closed during the wait was handed out";
  EXPECT_EQ(t.deferred, 0);
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->messages + b->messages, 8u) << "every message delivered once";
  const uint64_t closed = a->idle_closed + b->idle_closed;
  EXPECT_GT(closed, 0u) << "the farm closed connections waiting for their instant";
  const uint64_t stale = selector.stats().Collect().reuse[static_cast<size_t>(ReuseEvent::kStale)];
  EXPECT_GT(stale, 0u) << "each closed during its wait counted stale";
  EXPECT_EQ(a->quits + b->quits + closed, a->total + b->total)
      << "every connection the server did not close ended with the client's QUIT";
  EXPECT_LE(a->peak, 3);
  EXPECT_LE(b->peak, 3);
  ExpectNoHostBlamed(selector);
  EXPECT_EQ(selector.server_active(), 0);
}

// How a run against a farm that refuses some RSETs (rset_fail_every) ends, over its two
// hosts `a` and `b` (DESIGN §13 rule 6): each of `messages` delivered once; the refused RSETs
// counted stale once each; the replacement connections are the sessions' fresh ones; every
// connection not dropped by the server ended with QUIT; no host blamed, no slot held.
// Returns the refused RSETs.
uint64_t ExpectStaleRunAccounted(Selector& selector, const testbed::FarmAddressStats& a,
                                 const testbed::FarmAddressStats& b, const Tally& t,
                                 uint64_t messages) {
  EXPECT_EQ(a.messages + b.messages, messages) << "each message once: none twice, none lost";
  const uint64_t refused = a.rsets_refused + b.rsets_refused;
  EXPECT_GT(refused, 0u);
  const auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kStale)], refused)
      << "each refused RSET counted stale once";
  const uint64_t connections = a.total + b.total;
  EXPECT_EQ(static_cast<int64_t>(connections), t.fresh)
      << "the replacement connections are the sessions' fresh ones";
  EXPECT_EQ(a.quits + b.quits + refused, connections)
      << "every connection not dropped by the server ended with QUIT";
  ExpectNoHostBlamed(selector);
  EXPECT_EQ(selector.server_active(), 0);
  return refused;
}

// A reused connection whose RSET fails (the farm answers every third RSET 421 and closes)
// is stale: counted, closed, and the session gets a fresh connection without noticing.
TEST_F(ReuseTest, AStaleConnectionFoundByRsetIsCountedAndReplacedTransparently) {
  testbed::FarmOptions fo;
  fo.listen = {Ep(Ip(1), port_), Ep(Ip(2), port_)};
  fo.rset_fail_every = 3;
  auto farm = StartFarmWith(std::move(fo));
  ASSERT_TRUE(farm);
  Selector selector(ConfigFrom(TwoHosts(3, "")));
  Tally t = SendMessages(selector, "example.com", 60, 2, /*reuse=*/true);
  EXPECT_EQ(t.delivered, 60) << "no session saw the stale connection";
  EXPECT_EQ(t.failed, 0);
  EXPECT_EQ(t.deferred, 0);
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  ExpectStaleRunAccounted(selector, *a, *b, t, 60);
}

// DESIGN §13 rule 6, pipelined: parked with rset_with_transaction, a reused connection comes
// back at once with rset_pending (no RSET round trip of the connector's) and the embedder's
// one write carries RSET, MAIL, RCPT and DATA. Every message once, every connection closed
// with QUIT, the farm saw an RSET before each reused transaction, and far fewer connections.
TEST_F(ReuseTest, PipelinedRsetTravelsWithTheTransactionAndDeliversEveryMessageOnce) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_), Ep(Ip(2), port_)});
  Selector selector(ConfigFrom(TwoHosts(3, "max_deliveries_per_connection = 10\n")));
  Tally t = SendMessages(selector, "example.com", 300, 4, /*reuse=*/true, 0, 1, nullptr,
                         /*pipelined=*/true);
  EXPECT_EQ(t.delivered, 300);
  EXPECT_EQ(t.failed, 0);
  EXPECT_EQ(t.deferred, 0);
  EXPECT_EQ(t.stale, 0);
  EXPECT_GE(t.reused, 240) << "nine of ten messages over a parked connection";
  EXPECT_EQ(t.rset_pending, t.reused) << "every reused connection left its RSET to the embedder";
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  ExpectEveryMessageOnceEveryConnectionQuit(*a, *b, t, 300);
  const auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kReused)], static_cast<uint64_t>(t.reused));
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kStale)], 0u);
  EXPECT_EQ(totals.sessions[static_cast<size_t>(ConnectResult::Kind::kConnected)], 300u);
  ExpectNoHostBlamed(selector);
  EXPECT_EQ(selector.server_active(), 0);
}

// The stale case of the pipelined path: the farm answers every third RSET 421 and closes,
// after MAIL, RCPT and DATA were already written behind it. The embedder reads the 421 first
// and hands the connection to Connector::Stale: counted stale (the same counter as the
// connector's own RSET), closed, no host blamed, and the same session gets a fresh
// connection — each message delivered once (DATA was never answered 354 on the stale one).
TEST_F(ReuseTest, APipelinedRsetRefusedIsCountedStaleAndTheMessageGoesOnceOverAFreshConnection) {
  testbed::FarmOptions fo;
  fo.listen = {Ep(Ip(1), port_), Ep(Ip(2), port_)};
  fo.rset_fail_every = 3;
  auto farm = StartFarmWith(std::move(fo));
  ASSERT_TRUE(farm);
  Selector selector(ConfigFrom(TwoHosts(3, "")));
  Tally t = SendMessages(selector, "example.com", 60, 2, /*reuse=*/true, 0, 1, nullptr,
                         /*pipelined=*/true);
  EXPECT_EQ(t.delivered, 60) << "every session ended delivered";
  EXPECT_EQ(t.failed, 0);
  EXPECT_EQ(t.deferred, 0);
  auto s = SettledStats(*farm);
  const auto* a = StatsFor(s, Ip(1));
  const auto* b = StatsFor(s, Ip(2));
  ASSERT_TRUE(a && b);
  const uint64_t refused = ExpectStaleRunAccounted(selector, *a, *b, t, 60);
  EXPECT_EQ(static_cast<uint64_t>(t.stale), refused) << "the embedder saw each refusal";
  const auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.sessions[static_cast<size_t>(ConnectResult::Kind::kConnected)], 60u)
      << "a session that went on after a stale connection is counted once";
}


// A waiter that cannot use the parked connections holding its host's slots (another
// connector: another owner) does not wait for their idle timeout (300 s here): the oldest
// is closed with QUIT for it and its slot handed over (DESIGN §13 rule 4), across two
// connectors on the farm.
TEST_F(ReuseTest, AWaiterOfAnotherConnectorGetsAParkedConnectionClosedForIt) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  ASSERT_TRUE(farm);
  Selector selector(ConfigFrom(StrCat("remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10),
                                      " )\nidle_timeout = 300\nHost \"", Ip(1),
                                      "\" { max_outbound_connections = 2 }\n")));
  auto loop = io::Loop::Create();
  ASSERT_TRUE(loop.ok());
  const io::ConnectorOptions co{.connect_timeout_ms = 10000, .banner_timeout_ms = 10000,
                                .slot_wait_ms = 30000, .reuse = true};
  io::Connector a(loop->get(), &selector, co), b(loop->get(), &selector, co);
  auto run = [&](const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done() && std::chrono::steady_clock::now() < deadline) (*loop)->RunOnce(50);
    return done();
  };
  std::vector<ConnectResult> got;
  for (int i = 0; i < 2; ++i) {
    a.Connect("a.example", [&](ConnectResult r) { got.push_back(std::move(r)); });
  }
  ASSERT_TRUE(run([&] { return got.size() == 2; }));
  for (ConnectResult& r : got) {
    ASSERT_EQ(r.kind, ConnectResult::Kind::kConnected) << r.reason;
    ASSERT_TRUE(Transact(r.fd, true));
    a.Park(std::move(r));
  }
  got.clear();
  ASSERT_EQ(selector.parked(), 2);
  const auto t0 = std::chrono::steady_clock::now();
  b.Connect("b.example", [&](ConnectResult r) { got.push_back(std::move(r)); });
  ASSERT_TRUE(run([&] { return got.size() == 1; }));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(got[0].kind, ConnectResult::Kind::kConnected) << got[0].reason;
  EXPECT_FALSE(got[0].reused) << "another owner's parked connection is never handed over";
  EXPECT_LT(waited, 30.0) << "not the 300 s idle timeout";
  EXPECT_EQ(selector.parked(), 1);
  EXPECT_EQ(a.parked(), 1u);
  const auto totals = selector.stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kEvicted)], 1u);
  ASSERT_TRUE(Transact(got[0].fd, true));
  testing::CloseConnection(got[0]);
  a.Stop("test over");
  b.Stop("test over");
  ASSERT_TRUE(run([&] { return a.parked() == 0 && b.parked() == 0; }));
  auto s = SettledStats(*farm);
  const auto* h = StatsFor(s, Ip(1));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->total, 3u);
  EXPECT_LE(h->peak, 2) << "the evicted connection closed before the waiter's connected";
  EXPECT_EQ(h->quits, 2u) << "the evicted and the stopped one QUIT (the test closed its own)";
  EXPECT_EQ(selector.server_active(), 0);
}

}  // namespace
}  // namespace mxsched
