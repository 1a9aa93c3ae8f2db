// Cluster-wide limits against a real redis-server (DESIGN §7): the hiredis adapter and its
// deadlines, the lease scripts, the hand-off of a freed slot to the longest waiter by
// publish, NOSCRIPT, a Redis restart, a Redis that never answers, the failure modes.
// Separate ClusterLimits objects stand for separate worker processes (each has its own
// worker id and Redis connections); their loops are driven from the test thread.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <thread>
#include <memory>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/cluster/cluster_limits.h"
#include "mxsched/cluster/redis_async.h"
#include "mxsched/io/connector.h"
#include "mxsched/scheduler/selector.h"
#include "testbed/farm.h"
#include "tests/testutil.h"
#include "tests/net_testutil.h"
#include "tests/redis_server.h"
#include "tests/smtp_client.h"

namespace mxsched::testing {
namespace {

using io::ClusterClient;
using io::ClusterKey;
using io::ClusterLimits;
using io::ClusterOptions;
using io::Loop;

// Runs `loops` until `done()` (bounded: a generous deadline, not a timing assertion).
bool PumpUntil(const std::vector<Loop*>& loops, const std::function<bool()>& done,
               int bound_ms = 20000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(bound_ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    for (Loop* l : loops) l->RunOnce(1);
  }
  return true;
}

// A TCP listener that accepts (the kernel completes the handshake) and never answers.
class SilentListener {
 public:
  SilentListener() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
    listen(fd_, 64);
    socklen_t len = sizeof(sin);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&sin), &len);
    port_ = ntohs(sin.sin_port);
  }
  ~SilentListener() { close(fd_); }
  std::string url() const { return StrCat("redis://127.0.0.1:", port_); }

 private:
  int fd_;
  uint16_t port_ = 0;
};

// A "Redis" on loopback that misbehaves on purpose: for each connection it waits for the
// first command, then writes `reply` (and `stream_bytes` more bytes of 'x' after it, for a
// huge bulk string that keeps coming), and holds the connection until the client closes it.
// Bounded: a 10 s cap per connection.
class MisbehavingRedis {
 public:
  explicit MisbehavingRedis(std::string reply, size_t stream_bytes = 0)
      : reply_(std::move(reply)), stream_(stream_bytes) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
    listen(fd_, 8);
    socklen_t len = sizeof(sin);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&sin), &len);
    port_ = ntohs(sin.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~MisbehavingRedis() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  std::string url() const { return StrCat("redis://127.0.0.1:", port_); }

 private:
  void Serve() {
    while (!stop_) {
      const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      timeval tv{0, 100'000};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      char buf[4096];
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!stop_ && recv(c, buf, sizeof(buf), 0) <= 0 && std::chrono::steady_clock::now() < end) {
      }
      send(c, reply_.data(), reply_.size(), MSG_NOSIGNAL);
      const std::string chunk(64 * 1024, 'x');
      for (size_t sent = 0; sent < stream_ && !stop_ && std::chrono::steady_clock::now() < end;) {
        const ssize_t n = send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) break;  // the client dropped the connection
        if (n > 0) sent += static_cast<size_t>(n);
      }
      while (!stop_ && std::chrono::steady_clock::now() < end) {
        const ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) break;  // closed by the client
      }
      close(c);
    }
  }
  std::string reply_;
  size_t stream_;
  int fd_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

long MaxRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// One simulated worker process: its own ClusterLimits, loop and client.
struct Worker {
  explicit Worker(ClusterOptions o, bool wait_subscribed = true) {
    loop = *Loop::Create(256);
    limits = std::make_shared<ClusterLimits>(std::move(o));
    client = std::make_unique<ClusterClient>(loop.get(), limits);
    // Until the wake-up channel is subscribed a release could not reach this worker.
    if (wait_subscribed)
      PumpUntil(
          {loop.get()}, [&] { return client->subscribed(); }, 5000);
  }
  ~Worker() {
    leases.clear();
    client.reset();
  }
  std::unique_ptr<Loop> loop;
  std::shared_ptr<ClusterLimits> limits;
  std::unique_ptr<ClusterClient> client;
  std::vector<io::ClusterLease> leases;
};

struct TestWaiter : io::ClusterWaiter {
  void ClusterWake() override { ++woken; }
  int woken = 0;
};

// The verdict of one Acquire, pumping `loops` until it arrives.
std::optional<ClusterClient::Result> AcquireOnce(Worker& w, const std::string& id,
                                                 std::vector<ClusterKey> keys,
                                                 io::ClusterWaiter* waiter,
                                                 const std::vector<Loop*>& loops) {
  std::optional<ClusterClient::Result> out;
  w.client->Acquire(id, std::move(keys), waiter,
                    [&](ClusterClient::Result r) { out = std::move(r); });
  PumpUntil(loops, [&] { return out.has_value(); });
  return out;
}

class ClusterLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RedisServerBinary() == nullptr) GTEST_SKIP() << "redis-server not installed";
    redis_ = std::make_unique<RedisServer>();
    ASSERT_TRUE(redis_->ok());
    Establish();
  }
  // A fleet that has run for a while: its epoch key is past the warm-up (DESIGN §7 rule
  // 4b), so the tests of other rules need not wait it out. Redis restarts lose it.
  void Establish() {
    ASSERT_EQ(redis_->Query({"SET", StrCat("{t", getpid(), "}:epoch"), "1:established"}), "OK");
  }
  ClusterOptions Options() {
    ClusterOptions o;
    o.redis = *ParseRedisUrl(redis_->url());
    o.name = StrCat("t", getpid());
    o.lease_seconds = 30;
    return o;
  }
  std::unique_ptr<RedisServer> redis_;
};

TEST(RedisUrl, ParsesAndNamesWhatIsWrong) {
  auto a = ParseRedisUrl("redis://127.0.0.1:6380/2");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  auto v6 = ParseRedisUrl("redis://[::1]:7000");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->ToString(), "redis://[::1]:7000");
  EXPECT_EQ(ParseRedisUrl("redis://localhost")->port, 6379);
  for (const char* bad : {"http://x:1", "redis://:6379", "redis://h:0", "redis://h:99999",
                          "redis://h:12x", "redis://h:1/db", "redis://u:p@h:1", "redis://[::1"}) {
    auto r = ParseRedisUrl(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(std::string(r.status().message()).find("redis://HOST:PORT[/DB]"), std::string::npos)
        << r.status();
  }
}

TEST(RedisUrl, SentinelUrlsParseAndNameWhatIsWrong) {
  auto a = ParseRedisUrl("redis-sentinel://127.0.0.1:26379,[::1]:26380,s3/mymaster/2");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->sentinels.size(), 3u);
  EXPECT_EQ(a->sentinels[1].host, "::1");
  EXPECT_EQ(a->sentinels[1].port, 26380);
  EXPECT_EQ(a->sentinels[2].port, 26379);
  EXPECT_EQ(a->master_name, "mymaster");
  EXPECT_EQ(a->db, 2);
  EXPECT_EQ(a->ToString(), "redis-sentinel://127.0.0.1:26379,[::1]:26380,s3:26379/mymaster/2");
  for (const char* bad : {"redis-sentinel://h:1", "redis-sentinel://h:1/", "redis-sentinel://h:0/m",
                          "redis-sentinel://h:1,/m", "redis-sentinel://h:1/m/x",
                          "redis-sentinel://h:1/m!"}) {
    auto r = ParseRedisUrl(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(std::string(r.status().message()).find("MASTER_NAME"), std::string::npos)
        << r.status();
  }
}

TEST_F(ClusterLimitsTest, RedisConnectionRepliesInOrder) {
  auto loop = *Loop::Create(64);
  io::RedisConnection c(loop.get(), {*ParseRedisUrl(redis_->url()), 2000});
  std::vector<std::string> got;
  c.Command({"SET", "k", "v"}, [&](auto r) { got.push_back(r.ok() ? r->str : "error"); });
  c.Command({"GET", "k"}, [&](auto r) { got.push_back(r.ok() ? r->str : "error"); });
  c.Command({"NOSUCHCOMMAND"},
            [&](auto r) { got.push_back(r.ok() && r->is_error() ? "redis-error" : "?"); });
  ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return got.size() == 3; }));
  EXPECT_EQ(got, (std::vector<std::string>{"OK", "v", "redis-error"}));
}

// A hostile or broken Redis: every misbehaviour ends the command with an error naming it and
// drops the connection — no abort (hiredis 0.14 asserts on an unrequested reply), no stall
// on a huge declared array, no unbounded buffer for a huge string (DESIGN §7 rule 5a).
TEST(RedisConnectionTest, MisbehavingRedisEndsInErrorsNeverAnAbortOrAStall) {
  struct Case {
    const char* name;
    std::string reply;
    size_t stream;
    const char* expect;  // in the error, or "" when the first command's reply is fine
  };
  const Case cases[] = {
      {"unrequested reply", "+PONG\r\n+SURPRISE\r\n", 0, ""},
      {"huge array", "*2147483647\r\n", 0, "2147483647 elements"},
      {"deep nesting", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 0, "nested deeper"},
      {"huge string", "$10000000000\r\n", 64u << 20, "buffered"},
      {"long string", StrCat("$", 600 * 1024, "\r\n", std::string(600 * 1024, 'y'), "\r\n"), 0,
       "614400 bytes"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    MisbehavingRedis fake(k.reply, k.stream);
    auto loop = *Loop::Create(64);
    io::RedisConnection c(loop.get(), {*ParseRedisUrl(fake.url()), 5000, 50});
    const long rss_before = MaxRssKb();
    std::vector<absl::StatusOr<io::RedisReply>> got;
    c.Command({"PING"}, [&](auto r) { got.push_back(std::move(r)); });
    // Bounded well below the 5 s command deadline: the reader's refusal, not the deadline.
    ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return !got.empty() && c.failures() > 0; }, 4000));
    if (*k.expect == '\0') {
      ASSERT_TRUE(got[0].ok()) << got[0].status();
      EXPECT_EQ(got[0]->str, "PONG");
    } else {
      ASSERT_FALSE(got[0].ok());
      EXPECT_NE(got[0].status().message().find(k.expect), std::string_view::npos)
          << got[0].status();
    }
    EXPECT_FALSE(c.connected());
    EXPECT_LT(MaxRssKb() - rss_before, 32 * 1024) << "KB more resident";
  }
}

// redis://HOST:PORT/99999: the SELECT fails and nothing queued behind it runs (in DB 0).
TEST_F(ClusterLimitsTest, FailedSelectStopsTheCommandsQueuedBehindIt) {
  auto loop = *Loop::Create(64);
  io::RedisConnection c(loop.get(), {*ParseRedisUrl(StrCat(redis_->url(), "/99999")), 2000});
  std::vector<absl::Status> got;
  for (const char* k : {"k1", "k2"}) {
    c.Command({"SET", k, "v"}, [&](auto r) {
      got.push_back(!r.ok() ? r.status() : absl::OkStatus());
    });
  }
  ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return got.size() == 2; }));
  for (const auto& s : got) {
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("SELECT 99999"), std::string_view::npos) << s;
  }
  EXPECT_EQ(redis_->Query({"EXISTS", "k1"}), "0");
  EXPECT_EQ(redis_->Query({"EXISTS", "k2"}), "0");
  // A good DB number: the held commands go out once the SELECT succeeded.
  io::RedisConnection d(loop.get(), {*ParseRedisUrl(StrCat(redis_->url(), "/3")), 2000});
  std::vector<std::string> ok;
  d.Command({"SET", "k3", "v"}, [&](auto r) { ok.push_back(r.ok() ? r->str : "error"); });
  d.Command({"GET", "k3"}, [&](auto r) { ok.push_back(r.ok() ? r->str : "error"); });
  ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return ok.size() == 2; }));
  EXPECT_EQ(ok, (std::vector<std::string>{"OK", "v"}));
  EXPECT_EQ(redis_->Query({"EXISTS", "k3"}), "0");  // in DB 3, not DB 0
}

TEST_F(ClusterLimitsTest, RedisThatNeverAnswersTimesOutEveryCommand) {
  SilentListener silent;
  auto loop = *Loop::Create(64);
  io::RedisConnection c(loop.get(), {*ParseRedisUrl(silent.url()), 200, 50});
  std::vector<absl::Status> got;
  for (int i = 0; i < 3; ++i) c.Command({"PING"}, [&](auto r) { got.push_back(r.status()); });
  ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return got.size() == 3; }));
  for (const auto& s : got) EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  // And again after the reconnect back-off: a new connection, the same bounded outcome.
  got.clear();
  PumpUntil(
      {loop.get()}, [] { return false; }, 100);
  c.Command({"PING"}, [&](auto r) { got.push_back(r.status()); });
  ASSERT_TRUE(PumpUntil({loop.get()}, [&] { return got.size() == 1; }));
  EXPECT_EQ(got[0].code(), absl::StatusCode::kDeadlineExceeded) << got[0];
  EXPECT_EQ(c.pending(), 0u);
}

TEST_F(ClusterLimitsTest, AcquireCountsAcrossWorkersAndReleaseGivesBack) {
  Worker a(Options()), b(Options());
  std::vector<Loop*> loops = {a.loop.get(), b.loop.get()};
  const std::string key = a.limits->HostKey(Ep("127.0.0.1", 25));
  for (int i = 0; i < 3; ++i) {
    auto r = AcquireOnce(a, a.client->NewId(), {{key, 3}}, nullptr, loops);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    a.leases.push_back(std::move(r->lease));
  }
  auto r = AcquireOnce(b, b.client->NewId(), {{key, 3}}, nullptr, loops);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);  // the other worker holds all 3
  EXPECT_EQ(r->full_mask, 1u);
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
  a.leases.pop_back();  // release one
  ASSERT_TRUE(PumpUntil(loops, [&] { return redis_->Query({"ZCARD", key}) == "2"; }));
  r = AcquireOnce(b, b.client->NewId(), {{key, 3}}, nullptr, loops);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kGranted);
  EXPECT_EQ(a.limits->Held(key), 2);
  EXPECT_EQ(b.limits->Held(key), 1);
  EXPECT_EQ(a.limits->stats().redis_errors.load(), 0);
}

// DESIGN §7, batching: what one loop iteration asks — here five acquires, then three
// releases and two acquires — goes as one call of the batch script, run in the order asked:
// the first three of five are granted on a limit of 3; the releases run before the
// acquires behind them, which are granted.
TEST_F(ClusterLimitsTest, AcquiresAndReleasesOfOneIterationGoInOneCallInOrder) {
  Worker a(Options());
  std::vector<Loop*> loops = {a.loop.get()};
  const std::string key = a.limits->HostKey(Ep("127.0.0.9", 25));
  std::vector<std::optional<ClusterClient::Result>> got(5);
  for (int i = 0; i < 5; ++i) {
    a.client->Acquire(a.client->NewId(), {{key, 3}}, nullptr,
                      [&got, i](ClusterClient::Result r) { got[i] = std::move(r); });
  }
  EXPECT_EQ(a.limits->stats().batched.load(), 0);  // nothing sent before the loop comes round
  ASSERT_TRUE(PumpUntil(loops, [&] {
    return std::all_of(got.begin(), got.end(), [](const auto& r) { return r.has_value(); });
  }));
  EXPECT_EQ(a.limits->stats().batched.load(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i]->verdict, i < 3 ? ClusterClient::Verdict::kGranted
                                     : ClusterClient::Verdict::kFull) << i;
    if (i < 3) a.leases.push_back(std::move(got[i]->lease));
  }
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
  a.leases.clear();  // three releases ...
  std::vector<std::optional<ClusterClient::Result>> again(2);
  for (int i = 0; i < 2; ++i) {  // ... and two acquires, in the same iteration
    a.client->Acquire(a.client->NewId(), {{key, 3}}, nullptr,
                      [&again, i](ClusterClient::Result r) { again[i] = std::move(r); });
  }
  ASSERT_TRUE(PumpUntil(loops, [&] { return again[0].has_value() && again[1].has_value(); }));
  EXPECT_EQ(a.limits->stats().batched.load(), 10);
  for (auto& r : again) {
    EXPECT_EQ(r->verdict, ClusterClient::Verdict::kGranted);
    a.leases.push_back(std::move(r->lease));
  }
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
  EXPECT_EQ(a.limits->stats().redis_errors.load(), 0);
}

// DESIGN §7 rule 10: while nobody in the fleet waits on its keys, a released lease passes
// to the client's next session on the same keys with no Redis call — Redis's count never
// moves past the limit, the slot was never free. A waiter that queues takes the right away
// (a publish): the next release goes to Redis and wakes it. An idle lease goes back by itself.
TEST_F(ClusterLimitsTest, ReleasedLeasePassesToTheNextLocalSessionUntilAWaiterQueues) {
  ClusterOptions o = Options();
  o.recheck_ms = 600'000;  // only a publish can wake the waiter in this test
  Worker a(o), b(o);
  std::vector<Loop*> loops = {a.loop.get(), b.loop.get()};
  const std::string key = a.limits->HostKey(Ep("127.0.0.10", 25));
  for (int i = 0; i < 2; ++i) {
    auto r = AcquireOnce(a, a.client->NewId(), {{key, 2}}, nullptr, loops);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    a.leases.push_back(std::move(r->lease));
  }
  EXPECT_EQ(redis_->Query({"SCARD", key + ":r"}), "1");
  EXPECT_TRUE(a.client->MayHandOffForTest({{key, 2}}));
  const int64_t commands = a.limits->stats().commands.load();
  a.leases.pop_back();  // kept: a holds the right on the key (nobody waits)
  std::optional<ClusterClient::Result> handed;
  a.client->Acquire(a.client->NewId(), {{key, 2}}, nullptr,
                    [&](ClusterClient::Result r) { handed = std::move(r); });
  ASSERT_TRUE(handed.has_value());  // decided inside Acquire: no round trip
  EXPECT_EQ(handed->verdict, ClusterClient::Verdict::kGranted);
  a.leases.push_back(std::move(handed->lease));
  EXPECT_EQ(a.limits->stats().handoffs.load(), 1);
  EXPECT_EQ(a.limits->stats().commands.load(), commands);
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
  EXPECT_EQ(a.limits->Held(key), 2);

  // b queues: a's right is revoked; a's next release goes to Redis and wakes b.
  TestWaiter w;
  const std::string id = b.client->NewId();
  auto full = AcquireOnce(b, id, {{key, 2}}, &w, loops);
  ASSERT_TRUE(full && full->verdict == ClusterClient::Verdict::kFull);
  EXPECT_EQ(redis_->Query({"SCARD", key + ":r"}), "0");
  // The revocation travels by publish: a sees it before its next release here.
  ASSERT_TRUE(PumpUntil(loops, [&] { return !a.client->MayHandOffForTest({{key, 2}}); }));
  a.leases.pop_back();
  ASSERT_TRUE(PumpUntil(loops, [&] { return w.woken == 1; }));
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "1");
  auto got = AcquireOnce(b, id, {{key, 2}}, &w, loops);
  ASSERT_TRUE(got && got->verdict == ClusterClient::Verdict::kGranted);
  b.leases.push_back(std::move(got->lease));
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
  EXPECT_EQ(a.limits->stats().handoffs.load(), 1);

  // With nobody waiting again, a's next grant brings the right back; an idle lease that no
  // session takes goes back to Redis by itself (after ~100 ms).
  b.leases.clear();
  ASSERT_TRUE(PumpUntil(loops, [&] { return redis_->Query({"ZCARD", key}) == "1"; }));
  auto r = AcquireOnce(a, a.client->NewId(), {{key, 2}}, nullptr, loops);
  ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
  a.leases.push_back(std::move(r->lease));
  EXPECT_TRUE(a.client->MayHandOffForTest({{key, 2}}));
  a.leases.clear();
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");  // both kept idle
  ASSERT_TRUE(PumpUntil(loops, [&] { return redis_->Query({"ZCARD", key}) == "0"; }));
  EXPECT_EQ(a.limits->Held(key), 0);
  EXPECT_EQ(a.limits->stats().redis_errors.load() + b.limits->stats().redis_errors.load(), 0);
}

TEST_F(ClusterLimitsTest, FreedSlotGoesToTheLongestWaiterByPublish) {
  ClusterOptions o = Options();
  o.recheck_ms = 600'000;  // only a release's publish can wake a waiter in this test
  Worker holder(o), first(o), second(o);
  std::vector<Loop*> loops = {holder.loop.get(), first.loop.get(), second.loop.get()};
  const std::string key = holder.limits->HostKey(Ep("127.0.0.2", 25));
  for (int i = 0; i < 2; ++i) {
    auto r = AcquireOnce(holder, holder.client->NewId(), {{key, 2}}, nullptr, loops);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    holder.leases.push_back(std::move(r->lease));
  }
  TestWaiter w1, w2;
  const std::string id1 = first.client->NewId(), id2 = second.client->NewId();
  auto r1 = AcquireOnce(first, id1, {{key, 2}}, &w1, loops);
  ASSERT_TRUE(r1 && r1->verdict == ClusterClient::Verdict::kFull);
  auto r2 = AcquireOnce(second, id2, {{key, 2}}, &w2, loops);
  ASSERT_TRUE(r2 && r2->verdict == ClusterClient::Verdict::kFull);

  holder.leases.pop_back();  // one slot frees: the first waiter, not the second, is woken
  ASSERT_TRUE(PumpUntil(loops, [&] { return w1.woken == 1; }));
  EXPECT_EQ(w2.woken, 0);
  // A newcomer does not jump the queue while the woken waiter comes to take its slot.
  auto late = AcquireOnce(second, second.client->NewId(), {{key, 2}}, nullptr, loops);
  ASSERT_TRUE(late && late->verdict == ClusterClient::Verdict::kFull);
  auto g1 = AcquireOnce(first, id1, {{key, 2}}, &w1, loops);
  ASSERT_TRUE(g1 && g1->verdict == ClusterClient::Verdict::kGranted);

  holder.leases.pop_back();  // the next slot goes to the second waiter
  ASSERT_TRUE(PumpUntil(loops, [&] { return w2.woken == 1; }));
  auto g2 = AcquireOnce(second, id2, {{key, 2}}, &w2, loops);
  ASSERT_TRUE(g2 && g2->verdict == ClusterClient::Verdict::kGranted);
  EXPECT_EQ(first.limits->stats().wakeups.load(), 1);
  EXPECT_EQ(second.limits->stats().wakeups.load(), 1);
  EXPECT_EQ(redis_->Query({"ZCARD", key + ":w"}), "0");  // queue empty again
}

// Several keys per ask (a host's total and a binding's own, DESIGN §7): a waiter joins the
// queue of the first key that is full for it, and holds no place where the key has room
// for it while another holds it back — it leaves that queue and the next waiter is woken
// there, so a freed total slot does not idle behind a waiter whose binding is full.
TEST_F(ClusterLimitsTest, AWaiterHeldBackByAnotherKeyLeavesThatQueueAndTheNextIsWoken) {
  ClusterOptions o = Options();
  o.recheck_ms = 600'000;  // only publishes wake here
  Worker holder(o), wx(o), wy(o);
  std::vector<Loop*> loops = {holder.loop.get(), wx.loop.get(), wy.loop.get()};
  const Endpoint e = Ep("127.0.0.10", 25);
  const ClusterKey total{holder.limits->HostKey(e), 2};
  const ClusterKey b1{holder.limits->BindingHostKey("b1", e), 1};
  const ClusterKey b2{holder.limits->BindingHostKey("b2", e), 1};
  auto l1 = AcquireOnce(holder, holder.client->NewId(), {total, b1}, nullptr, loops);
  auto l2 = AcquireOnce(holder, holder.client->NewId(), {total, b2}, nullptr, loops);
  ASSERT_TRUE(l1 && l1->verdict == ClusterClient::Verdict::kGranted);
  ASSERT_TRUE(l2 && l2->verdict == ClusterClient::Verdict::kGranted);
  TestWaiter x, y;
  const std::string idx = wx.client->NewId(), idy = wy.client->NewId();
  auto rx = AcquireOnce(wx, idx, {total, b1}, &x, loops);
  ASSERT_TRUE(rx && rx->verdict == ClusterClient::Verdict::kFull);
  EXPECT_EQ(rx->full_mask, 3u);
  EXPECT_EQ(redis_->Query({"ZCARD", total.key + ":w"}), "1");  // the first full key only
  EXPECT_EQ(redis_->Query({"ZCARD", b1.key + ":w"}), "0");
  ASSERT_EQ(AcquireOnce(wy, idy, {total, b2}, &y, loops)->verdict, ClusterClient::Verdict::kFull);

  l2->lease.Release();  // a total slot frees (and b2's): x is at the head of the total's queue
  ASSERT_TRUE(PumpUntil(loops, [&] { return x.woken == 1; }));
  EXPECT_EQ(y.woken, 0);
  rx = AcquireOnce(wx, idx, {total, b1}, &x, loops);  // b1 still full
  ASSERT_TRUE(rx && rx->verdict == ClusterClient::Verdict::kFull);
  EXPECT_EQ(rx->full_mask, 2u);
  EXPECT_EQ(redis_->Query({"ZRANK", total.key + ":w", idx}), "");  // left the total's queue
  EXPECT_EQ(redis_->Query({"ZRANK", b1.key + ":w", idx}), "0");   // waits on b1 now
  ASSERT_TRUE(PumpUntil(loops, [&] { return y.woken == 1; }));    // told by x's ask
  auto gy = AcquireOnce(wy, idy, {total, b2}, &y, loops);
  ASSERT_TRUE(gy && gy->verdict == ClusterClient::Verdict::kGranted);

  l1->lease.Release();  // b1 frees (and a total slot): x's turn
  ASSERT_TRUE(PumpUntil(loops, [&] { return x.woken == 2; }));
  auto gx = AcquireOnce(wx, idx, {total, b1}, &x, loops);
  ASSERT_TRUE(gx && gx->verdict == ClusterClient::Verdict::kGranted);
  EXPECT_EQ(redis_->Query({"ZCARD", total.key}), "2");
  EXPECT_EQ(redis_->Query({"EXISTS", total.key + ":w"}), "0");
  EXPECT_EQ(redis_->Query({"EXISTS", b1.key + ":w"}), "0");
}

TEST_F(ClusterLimitsTest, WaiterThatGivesUpLeavesTheQueue) {
  ClusterOptions o = Options();
  o.recheck_ms = 600'000;
  Worker holder(o), quitter(o), patient(o);
  std::vector<Loop*> loops = {holder.loop.get(), quitter.loop.get(), patient.loop.get()};
  const std::string key = holder.limits->DomainKey("quit.test");
  auto h = AcquireOnce(holder, holder.client->NewId(), {{key, 1}}, nullptr, loops);
  ASSERT_TRUE(h && h->verdict == ClusterClient::Verdict::kGranted);
  TestWaiter wq, wp;
  const std::string idq = quitter.client->NewId(), idp = patient.client->NewId();
  ASSERT_EQ(AcquireOnce(quitter, idq, {{key, 1}}, &wq, loops)->verdict,
            ClusterClient::Verdict::kFull);
  ASSERT_EQ(AcquireOnce(patient, idp, {{key, 1}}, &wp, loops)->verdict,
            ClusterClient::Verdict::kFull);
  quitter.client->Unwait(idq);
  quitter.client->Forget(idq);  // gave up: its place goes
  ASSERT_TRUE(PumpUntil(loops, [&] { return redis_->Query({"ZCARD", key + ":w"}) == "1"; }));
  h->lease.Release();
  ASSERT_TRUE(PumpUntil(loops, [&] { return wp.woken == 1; }));
  EXPECT_EQ(wq.woken, 0);
  EXPECT_EQ(AcquireOnce(patient, idp, {{key, 1}}, &wp, loops)->verdict,
            ClusterClient::Verdict::kGranted);
}

TEST_F(ClusterLimitsTest, NoscriptAfterScriptFlushIsHandled) {
  Worker a(Options());
  std::vector<Loop*> loops = {a.loop.get()};
  const std::string key = a.limits->DomainKey("noscript.test");
  auto r = AcquireOnce(a, a.client->NewId(), {{key, 5}}, nullptr, loops);
  ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
  ASSERT_EQ(redis_->Query({"SCRIPT", "FLUSH"}), "OK");
  r = AcquireOnce(a, a.client->NewId(), {{key, 5}}, nullptr, loops);
  ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
  EXPECT_GE(a.limits->stats().noscript.load(), 1);
  EXPECT_EQ(a.limits->stats().redis_errors.load(), 0);
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
}

TEST_F(ClusterLimitsTest, RestartedRedisGetsTheOpenLeasesBack) {
  ClusterOptions o = Options();
  o.lease_seconds = 3;  // refresh every second
  Worker a(o);
  std::vector<Loop*> loops = {a.loop.get()};
  const std::string key = a.limits->HostKey(Ep("127.0.0.3", 25));
  for (int i = 0; i < 3; ++i) {
    auto r = AcquireOnce(a, a.client->NewId(), {{key, 8}}, nullptr, loops);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    a.leases.push_back(std::move(r->lease));
  }
  redis_->Stop(SIGKILL);
  redis_->Start();  // empty: no leases, no scripts
  ASSERT_TRUE(redis_->ok());
  ASSERT_EQ(redis_->Query({"EXISTS", key}), "0");
  ASSERT_TRUE(PumpUntil(loops, [&] { return a.limits->stats().reregistered.load() >= 3; }));
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
  // Alone in the fleet: back to normal by its next heartbeat, and it vouches for the store.
  ASSERT_TRUE(PumpUntil(loops, [&] { return a.limits->mode() == io::ClusterMode::kNormal; }));
  // Scripts were lost with the restart: the next acquire still works (NOSCRIPT -> EVAL).
  auto r = AcquireOnce(a, a.client->NewId(), {{key, 8}}, nullptr, loops);
  ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "4");
}

TEST_F(ClusterLimitsTest, LeaseOfAWorkerThatStopsRefreshingExpires) {
  ClusterOptions o = Options();
  o.recheck_ms = 200;
  Worker alive(o);
  std::vector<Loop*> loops = {alive.loop.get()};
  const std::string key = alive.limits->HostKey(Ep("127.0.0.4", 25));
  // What a worker SIGKILLed while holding the only slot leaves behind: a lease that is
  // never refreshed nor released, expiring 1 s from now by the Redis clock.
  redis_->Query({"EVAL",
                 "local t = redis.call('TIME') "
                 "return redis.call('ZADD', KEYS[1], t[1] * 1000 + 1000, 'deadbeef.0:1')",
                 "1", key});
  ASSERT_EQ(redis_->Query({"ZCARD", key}), "1");
  TestWaiter w;
  const std::string id = alive.client->NewId();
  auto full = AcquireOnce(alive, id, {{key, 1}}, &w, loops);
  ASSERT_TRUE(full && full->verdict == ClusterClient::Verdict::kFull);
  // No publish comes from a dead worker: the re-check finds the slot once the lease ran out.
  std::optional<ClusterClient::Result> g;
  ASSERT_TRUE(PumpUntil(loops, [&] {
    if (w.woken == 0) return false;
    w.woken = 0;
    g = AcquireOnce(alive, id, {{key, 1}}, &w, loops);
    return g->verdict == ClusterClient::Verdict::kGranted;
  }));
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "1");
  EXPECT_EQ(redis_->Query({"ZSCORE", key, "deadbeef.0:1"}), "");  // the dead lease is gone
  alive.leases.push_back(std::move(g->lease));
}

TEST_F(ClusterLimitsTest, FailureModesWhenRedisNeverAnswers) {
  SilentListener silent;
  for (auto mode : {io::ClusterFailureMode::kShare, io::ClusterFailureMode::kClosed,
                    io::ClusterFailureMode::kOpen}) {
    ClusterOptions o = Options();
    o.redis = *ParseRedisUrl(silent.url());
    o.timeout_ms = 200;
    o.lease_seconds = 1;
    o.failure_mode = mode;
    Worker w(o, /*wait_subscribed=*/false);
    std::vector<Loop*> loops = {w.loop.get()};
    const std::string key = w.limits->HostKey(Ep("127.0.0.5", 25));
    int granted = 0, closed = 0;
    for (int i = 0; i < 8; ++i) {
      auto r = AcquireOnce(w, w.client->NewId(), {{key, 8}}, nullptr, loops);
      ASSERT_TRUE(r);
      if (r->verdict == ClusterClient::Verdict::kGranted) {
        ++granted;
        w.leases.push_back(std::move(r->lease));
      }
      closed += r->verdict == ClusterClient::Verdict::kClosed;
    }
    SCOPED_TRACE(std::string(io::ClusterFailureModeName(mode)));
    EXPECT_TRUE(w.limits->degraded());
    EXPECT_EQ(w.limits->stats().mode_switches.load(), 1);  // switched once
    EXPECT_GE(w.limits->stats().redis_errors.load(), 1);
    switch (mode) {
      case io::ClusterFailureMode::kShare: {
        // Never reached Redis: the startup share (cluster_startup_share, 1) at once, no more
        // — and the refusal names Redis, not a limit.
        EXPECT_EQ(granted, 1);
        auto r = AcquireOnce(w, w.client->NewId(), {{key, 8}}, nullptr, loops);
        EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);
        EXPECT_NE(r->unavailable.find("Redis unreachable, cluster_failure_mode = share"),
                  std::string::npos)
            << r->unavailable;
        break;
      }
      case io::ClusterFailureMode::kClosed:
        EXPECT_EQ(closed, 8);
        break;
      case io::ClusterFailureMode::kOpen:
        EXPECT_EQ(granted, 8);
        break;
    }
  }
}

// The verdict of one Acquire with fleet throttles (DESIGN §12 rule 10).
std::optional<ClusterClient::Result> AcquireRate(Worker& w, std::vector<ClusterKey> keys,
                                                 std::vector<io::ClusterThrottle> throttles,
                                                 int64_t wait_nanos, const std::vector<Loop*>& loops) {
  std::optional<ClusterClient::Result> out;
  w.client->Acquire(w.client->NewId(), std::move(keys), std::move(throttles), wait_nanos, nullptr,
                    [&](ClusterClient::Result r) { out = std::move(r); });
  PumpUntil(loops, [&] { return out.has_value(); });
  return out;
}

// DESIGN §12 rule 10: a throttle's starts are reserved fleet-wide in the acquire script,
// spaced (S + A)/N apart (rule 1) by the Redis clock, all or none with the lease keys; beyond the
// caller's wait nothing is taken; the key expires once its instant has passed.
TEST_F(ClusterLimitsTest, FleetThrottleReservesSpacedInstantsAllOrNoneWithTheKeys) {
  ClusterOptions o = Options();
  Worker a(o), b(o);
  std::vector<Loop*> loops = {a.loop.get(), b.loop.get()};
  const std::string tkey = a.limits->ThrottleKey("global");
  EXPECT_EQ(tkey, StrCat("{t", getpid(), "}:t:c:global"));
  const ThrottleSpec spec{20, 1};
  const io::ClusterThrottle t{tkey, spec.interval_nanos() / 1000 + 1, 20};
  const std::string key = a.limits->HostKey(Ep("127.0.0.9", 25));
  const int64_t second = 1'000'000'000;
  // Ten starts from two workers: each instant one spacing after the last, whoever asks —
  // read from the throttle's key (the next free instant, µs of the Redis clock) and from
  // the waits handed out (the i-th waits about i spacings: the asks take little time).
  // The i-th instant is i spacings after the first ask: its wait is that less the time
  // from the first ask to this answer (measured here, so a slow machine does not fail the
  // test), give or take 5 ms of mapping the Redis clock onto this one.
  std::vector<int64_t> next;
  const auto first = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) {
    Worker& w = i % 2 == 0 ? a : b;
    auto r = AcquireRate(w, {{key, 100}}, {t}, second, loops);
    const int64_t since_first = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now() - first).count();
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted) << i;
    EXPECT_LE(r->start_in_nanos, i * t.interval_us * 1000) << i;
    EXPECT_GE(r->start_in_nanos, i * t.interval_us * 1000 - since_first - 5'000'000) << i;
    next.push_back(std::stoll(redis_->Query({"GET", tkey})));
    w.leases.push_back(std::move(r->lease));
  }
  for (size_t i = 1; i < next.size(); ++i) EXPECT_EQ(next[i] - next[i - 1], t.interval_us) << i;
  EXPECT_EQ(a.limits->stats().throttle_waits.load() + b.limits->stats().throttle_waits.load(), 9);
  // Beyond the wait: refused, naming the throttle, nothing taken (the key's instant and the
  // lease key's count unchanged).
  const std::string before = redis_->Query({"GET", tkey});
  auto r = AcquireRate(a, {{key, 100}}, {t}, 100'000'000, loops);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kThrottled);
  EXPECT_EQ(r->throttle, 0);
  EXPECT_GT(r->start_in_nanos, 100'000'000);
  EXPECT_EQ(redis_->Query({"GET", tkey}), before);
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "10");
  // A full key takes no start either.
  const std::string full = a.limits->HostKey(Ep("127.0.0.10", 25));
  auto f1 = AcquireRate(a, {{full, 1}}, {}, 0, loops);
  ASSERT_TRUE(f1 && f1->verdict == ClusterClient::Verdict::kGranted);
  auto f2 = AcquireRate(b, {{full, 1}}, {t}, second * 10, loops);
  ASSERT_TRUE(f2 && f2->verdict == ClusterClient::Verdict::kFull);
  EXPECT_EQ(redis_->Query({"GET", tkey}), before);
  // The key lives as long as its instant matters, plus a second.
  const int64_t pttl = std::stoll(redis_->Query({"PTTL", tkey}));
  EXPECT_GT(pttl, 0);
  EXPECT_LE(pttl, 1000 + 10 * spec.interval_nanos() / 1'000'000 + 50);
  a.leases.clear();
  b.leases.clear();
  f1->lease.Release();
  // An ask of throttles alone (no limited key) from a worker new to a new store waits out
  // the warm-up (DESIGN §7 rule 4b): past its wait it is refused saying so, never retried.
  redis_->Query({"DEL", StrCat("{t", getpid(), "}:epoch")});
  Worker c(o);
  loops.push_back(c.loop.get());
  auto w1 = AcquireRate(c, {}, {t}, 100'000'000, loops);
  ASSERT_TRUE(w1);
  EXPECT_EQ(w1->verdict, ClusterClient::Verdict::kFull);
  EXPECT_EQ(w1->full_mask, 0u);
  EXPECT_NE(w1->unavailable.find("warm-up"), std::string::npos) << w1->unavailable;
  auto w2 = AcquireRate(c, {}, {t}, 5 * second, loops);
  ASSERT_TRUE(w2 && w2->verdict == ClusterClient::Verdict::kGranted);
  EXPECT_GE(w2->start_in_nanos, 500'000'000);
  // A lease of throttles alone holds nothing in Redis: its release ends it at once, kept
  // for no hand-off (DESIGN §7 rule 10 passes on leases of keys), with no release sent.
  EXPECT_FALSE(c.client->MayHandOffForTest({}));
  EXPECT_EQ(c.client->leases(), 1u);
  w2->lease.Release();
  EXPECT_EQ(c.client->leases(), 0u);
}

// DESIGN §12 rule 10, Redis away in share mode: each worker starts at its share of the rate
// (N/W: the spacing times the live workers last seen); closed: none; open: the fleet
// throttles are not applied here (the selector's per-process throttle holds).
TEST_F(ClusterLimitsTest, FleetThrottleWhileRedisIsAwayFollowsTheFailureMode) {
  for (auto mode : {io::ClusterFailureMode::kShare, io::ClusterFailureMode::kClosed,
                    io::ClusterFailureMode::kOpen}) {
    SCOPED_TRACE(std::string(io::ClusterFailureModeName(mode)));
    if (!redis_->ok()) redis_->Start();
    ASSERT_TRUE(redis_->ok());
    Establish();
    ClusterOptions o = Options();
    o.timeout_ms = 300;
    o.lease_seconds = 3;
    o.failure_mode = mode;
    Worker a(o), b(o);
    std::vector<Loop*> loops = {a.loop.get(), b.loop.get()};
    ASSERT_TRUE(PumpUntil(loops, [&] { return a.limits->live_workers() == 2; }));
    const ThrottleSpec spec{20, 1};
    const io::ClusterThrottle t{a.limits->ThrottleKey("global"), spec.interval_nanos() / 1000 + 1, 20};
    {  // one start through Redis: Redis has been reached, the worker count is known
      auto r = AcquireRate(a, {}, {t}, 0, loops);
      ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    }
    redis_->Stop(SIGKILL);
    // The first ask finds Redis gone (or the switch already happened): from then on local.
    auto first = AcquireRate(a, {}, {t}, 10 * 1'000'000'000LL, loops);
    ASSERT_TRUE(first);
    ASSERT_TRUE(a.limits->degraded());
    int64_t prev = first->start_in_nanos;
    for (int i = 0; i < 4; ++i) {
      auto r = AcquireRate(a, {}, {t}, 10 * 1'000'000'000LL, loops);
      ASSERT_TRUE(r);
      if (mode == io::ClusterFailureMode::kClosed) {
        EXPECT_EQ(r->verdict, ClusterClient::Verdict::kClosed);
        continue;
      }
      ASSERT_EQ(r->verdict, ClusterClient::Verdict::kGranted);
      if (mode == io::ClusterFailureMode::kShare) {
        // Two live workers: twice the spacing (10/s here).
        EXPECT_GE(r->start_in_nanos - prev, 2 * spec.interval_nanos() - 5'000'000) << i;
        EXPECT_LE(r->start_in_nanos - prev, 2 * spec.interval_nanos() + 5'000'000) << i;
      } else {
        EXPECT_EQ(r->start_in_nanos, 0);
      }
      prev = r->start_in_nanos;
    }
    if (mode == io::ClusterFailureMode::kShare) {
      // Beyond the wait: refused, naming the throttle.
      auto r = AcquireRate(a, {}, {t}, 0, loops);
      ASSERT_TRUE(r);
      EXPECT_EQ(r->verdict, ClusterClient::Verdict::kThrottled);
      EXPECT_EQ(r->throttle, 0);
    }
  }
}

TEST_F(ClusterLimitsTest, ShareModeUsesTheWorkerCountLastSeenAndComesBack) {
  ClusterOptions o = Options();
  o.lease_seconds = 3;
  o.timeout_ms = 300;
  Worker a(o), b(o), c(o);  // three workers heartbeat
  std::vector<Loop*> loops = {a.loop.get(), b.loop.get(), c.loop.get()};
  ASSERT_TRUE(PumpUntil(loops, [&] { return a.limits->live_workers() == 3; }));
  const std::string key = a.limits->HostKey(Ep("127.0.0.6", 25));
  const std::string other = a.limits->HostKey(Ep("127.0.0.7", 25));
  for (int i = 0; i < 3; ++i) {  // held through Redis: 3 here, more than the share of 2
    auto r = AcquireOnce(a, a.client->NewId(), {{key, 8}}, nullptr, loops);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    a.leases.push_back(std::move(r->lease));
  }
  redis_->Stop(SIGKILL);
  auto once = [&](const std::string& k) {
    auto r = AcquireOnce(a, a.client->NewId(), {{k, 8}}, nullptr, loops);
    EXPECT_TRUE(r);
    if (r && r->verdict == ClusterClient::Verdict::kGranted) {
      a.leases.push_back(std::move(r->lease));
      return true;
    }
    return false;
  };
  EXPECT_FALSE(once(key));  // over the share, floor(8 / 3) = 2
  EXPECT_TRUE(a.limits->degraded());
  EXPECT_FALSE(once(other));  // held none there at the switch: nothing new right after it
  // Down to 1 on `key`: the share allows 2, and 2 is not more than held at the switch.
  a.leases.erase(a.leases.begin(), a.leases.begin() + 2);
  EXPECT_TRUE(once(key));
  EXPECT_FALSE(once(key));
  // Once lease_seconds have passed the others' old connections had time to end: the share.
  ASSERT_TRUE(PumpUntil(loops, [&] { return once(other); }));
  EXPECT_TRUE(once(other));
  EXPECT_FALSE(once(other)) << "3 on " << other;
  redis_->Start();
  ASSERT_TRUE(PumpUntil(loops, [&] { return a.limits->mode() == io::ClusterMode::kNormal; }));
  EXPECT_EQ(a.limits->stats().mode_switches.load(), 2);  // away and back, once each
  // The connections open across the outage are registered now, those opened while Redis
  // was away among them.
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
  EXPECT_EQ(redis_->Query({"ZCARD", other}), "2");
}

// Redis restarts empty. The worker that comes back first must not take the slots of one
// that has not re-registered its open connections yet: until the whole fleet has, it keeps
// to its share — and then Redis, knowing everything again, decides alone.
TEST_F(ClusterLimitsTest, FirstWorkerBackAfterARestartKeepsItsShareUntilTheOthersRejoin) {
  ClusterOptions o = Options();
  o.lease_seconds = 30;  // the rejoin ends because the fleet is back, not by its deadline
  o.timeout_ms = 300;
  Worker a(o), b(o);
  std::vector<Loop*> both = {a.loop.get(), b.loop.get()};
  std::vector<Loop*> only_a = {a.loop.get()};
  ASSERT_TRUE(PumpUntil(
      both, [&] { return a.limits->live_workers() == 2 && b.limits->live_workers() == 2; }));
  const std::string key = a.limits->HostKey(Ep("127.0.0.8", 25));
  for (Worker* w : {&a, &a, &b, &b}) {  // 2 + 2 of 4
    auto r = AcquireOnce(*w, w->client->NewId(), {{key, 4}}, nullptr, both);
    ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
    w->leases.push_back(std::move(r->lease));
  }
  redis_->Stop(SIGKILL);
  // Both notice while Redis is down: the next acquire fails (and, over the share, is full).
  for (Worker* w : {&a, &b}) {
    auto r = AcquireOnce(*w, w->client->NewId(), {{key, 4}}, nullptr, both);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);
  }
  ASSERT_TRUE(a.limits->degraded() && b.limits->degraded());
  redis_->Start();  // empty: no leases, no heartbeats, no scripts
  ASSERT_TRUE(redis_->ok());
  // Only a runs: it re-registers its 2 and is rejoining; Redis sees 2 of 4 taken.
  ASSERT_TRUE(PumpUntil(only_a, [&] { return a.limits->rejoining(); }));
  ASSERT_TRUE(PumpUntil(only_a, [&] { return redis_->Query({"ZCARD", key}) == "2"; }));
  auto r = AcquireOnce(a, a.client->NewId(), {{key, 4}}, nullptr, only_a);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull) << "took one of b's slots";
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "2");
  EXPECT_TRUE(b.limits->degraded());
  // b comes back and re-registers: both see the whole fleet and are normal again.
  ASSERT_TRUE(PumpUntil(both, [&] {
    return a.limits->mode() == io::ClusterMode::kNormal &&
           b.limits->mode() == io::ClusterMode::kNormal;
  }));
  EXPECT_EQ(redis_->Query({"ZCARD", key}), "4");
  r = AcquireOnce(a, a.client->NewId(), {{key, 4}}, nullptr, both);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);  // Redis: 4 of 4
  b.leases.pop_back();                                   // b lets one go: a may have it
  ASSERT_TRUE(PumpUntil(both, [&] { return redis_->Query({"ZCARD", key}) == "3"; }));
  r = AcquireOnce(a, a.client->NewId(), {{key, 4}}, nullptr, both);
  ASSERT_EQ(r->verdict, ClusterClient::Verdict::kGranted);
  a.leases.push_back(std::move(r->lease));
  EXPECT_EQ(a.limits->stats().mode_switches.load(), 2);
  EXPECT_EQ(b.limits->stats().mode_switches.load(), 2);
}

// Redis loses its keys (FLUSHALL, or a restart) while a worker holds every slot and sends
// nothing: its heartbeat (at least once a second) notices the new epoch and re-registers
// the leases by itself, and a newcomer that reaches the empty store first is granted
// nothing during the warm-up (DESIGN §7 rule 4b) — the limit holds throughout.
TEST_F(ClusterLimitsTest, IdleHolderReRegistersAfterFlushOrRestartAndNewcomerWaitsOutWarmUp) {
  for (const bool restart : {false, true}) {
    SCOPED_TRACE(restart ? "restart" : "FLUSHALL");
    ClusterOptions o = Options();
    o.name = StrCat(o.name, restart ? "r" : "f");
    redis_->Query({"SET", StrCat("{", o.name, "}:epoch"), "1:established"});
    Worker a(o);
    std::vector<Loop*> only_a = {a.loop.get()};
    const std::string key = a.limits->HostKey(Ep("127.0.0.9", 25));
    for (int i = 0; i < 3; ++i) {
      auto r = AcquireOnce(a, a.client->NewId(), {{key, 3}}, nullptr, only_a);
      ASSERT_TRUE(r && r->verdict == ClusterClient::Verdict::kGranted);
      a.leases.push_back(std::move(r->lease));
    }
    if (restart) {
      redis_->Stop(SIGKILL);
      redis_->Start();
      ASSERT_TRUE(redis_->ok());
    } else {
      ASSERT_EQ(redis_->Query({"FLUSHALL"}), "OK");
    }
    // The newcomer starts before the holder has sent anything: its heartbeat creates the
    // new epoch; its acquire is refused for the warm-up, not for the count.
    Worker b(o);
    std::vector<Loop*> both = {a.loop.get(), b.loop.get()};
    auto r = AcquireOnce(b, b.client->NewId(), {{key, 3}}, nullptr, {b.loop.get()});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);
    EXPECT_NE(r->unavailable.find("warm-up"), std::string::npos) << r->unavailable;
    // The holder's heartbeat alone puts its 3 back (no acquire, no release from it).
    ASSERT_TRUE(PumpUntil(both, [&] { return a.limits->stats().store_resets.load() == 1; }, 5000));
    EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
    // After the warm-up the count decides: still full. Never above the limit.
    ASSERT_TRUE(PumpUntil(both, [&] {
      r = AcquireOnce(b, b.client->NewId(), {{key, 3}}, nullptr, both);
      EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);
      return r->unavailable.empty();
    }));
    EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
    EXPECT_GE(b.limits->stats().warmup_refusals.load(), 1);
    // The holder rejoins (alone before the reset, so at once) and frees one: b gets it.
    ASSERT_TRUE(PumpUntil(both, [&] { return a.limits->mode() == io::ClusterMode::kNormal; }));
    a.leases.pop_back();
    ASSERT_TRUE(PumpUntil(both, [&] { return redis_->Query({"ZCARD", key}) == "2"; }));
    r = AcquireOnce(b, b.client->NewId(), {{key, 3}}, nullptr, both);
    ASSERT_EQ(r->verdict, ClusterClient::Verdict::kGranted);
    b.leases.push_back(std::move(r->lease));
    EXPECT_EQ(redis_->Query({"ZCARD", key}), "3");
  }
}

// A fleet's first start (no epoch key at all) pays the warm-up once: grants wait it out.
TEST_F(ClusterLimitsTest, FirstStartOfAFleetWaitsOutTheWarmUpOnce) {
  ClusterOptions o = Options();
  o.name = StrCat(o.name, "new");
  Worker a(o);
  std::vector<Loop*> loops = {a.loop.get()};
  const std::string key = a.limits->DomainKey("first.test");
  TestWaiter w;
  const std::string id = a.client->NewId();
  auto r = AcquireOnce(a, id, {{key, 2}}, &w, loops);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->verdict, ClusterClient::Verdict::kFull);
  EXPECT_NE(r->unavailable.find("warm-up"), std::string::npos);
  // Re-checks (the last one due when the warm-up ends) until the grant.
  ASSERT_TRUE(PumpUntil(
      loops,
      [&] {
        if (w.woken == 0) return false;
        w.woken = 0;
        r = AcquireOnce(a, id, {{key, 2}}, &w, loops);
        return r->verdict == ClusterClient::Verdict::kGranted;
      },
      5000));
  a.leases.push_back(std::move(r->lease));
  r = AcquireOnce(a, a.client->NewId(), {{key, 2}}, nullptr, loops);
  ASSERT_EQ(r->verdict, ClusterClient::Verdict::kGranted);  // past the warm-up: no wait
  a.leases.push_back(std::move(r->lease));
}

// Issue 22's last gap (DESIGN §12 rule 10): message throttles are fleet-wide. Two workers —
// each its own selector (its own per-process throttle of 10/s), connector, loop and cluster
// client — send 15 messages each over reused connections to one farm, sharing
// outbound_throttle_messages = "10" through Redis. Per process each could go at 10/s (20/s
// together); the receiver counts at most 10 MAIL commands in any second. A new connection
// reserves its first message's token in its acquire (no extra command); a reused message
// asks the message throttles alone: one ask each, at most one Redis command.
TEST_F(ClusterLimitsTest, FleetMessageThrottleHoldsAcrossWorkersAndAReusedMessageAsksAlone) {
  const std::string net = LoopbackPrefix();
  const uint16_t port = FreePort();
  testbed::FarmOptions fo;
  fo.listen = {Endpoint{*IpAddress::Parse(StrCat(net, 1)), port}};
  auto farm = testbed::Farm::Start(std::move(fo));
  ASSERT_TRUE(farm.ok()) << farm.status();
  const std::string conf =
      StrCat("remote_smtp_port = ", port, "\nroutes = ( \"", net, "1\" )\n",
             "max_outbound_connections = 8\noutbound_throttle_messages = \"10\"\n"
             "idle_timeout = 30\nmax_deliveries_per_connection = 100\n");
  Worker a(Options()), b(Options());
  struct Side {
    Worker* w;
    std::unique_ptr<Selector> selector;
    std::unique_ptr<io::Connector> connector;
    int started = 0, ended = 0, delivered = 0, reused = 0, fresh = 0;
    int64_t commands0 = 0, asks0 = 0, refreshes0 = 0;
  };
  Side sides[2];
  sides[0].w = &a;
  sides[1].w = &b;
  constexpr int kPerWorker = 15, kConcurrency = 2;
  std::function<void(Side&)> start = [&](Side& s) {
    ++s.started;
    s.connector->Connect("example.com", [&s, &start](io::ConnectResult r) {
      if (r.kind == io::ConnectResult::Kind::kConnected) {
        (r.reused ? s.reused : s.fresh) += 1;
        if (Transact(r.fd, !r.reused)) {
          ++s.delivered;
          s.connector->Park(std::move(r));
        } else {
          CloseConnection(r);
        }
      } else {
        ADD_FAILURE() << "not connected: " << r.reason;
      }
      ++s.ended;
      if (s.started < kPerWorker) start(s);
    });
  };
  for (Side& s : sides) {
    s.selector = std::make_unique<Selector>(ConfigFrom(conf));
    s.connector = std::make_unique<io::Connector>(
        s.w->loop.get(), s.selector.get(),
        io::ConnectorOptions{.connect_timeout_ms = 10000, .banner_timeout_ms = 10000,
                             .slot_wait_ms = 30000, .cluster = s.w->client.get(), .reuse = true});
    s.commands0 = s.w->limits->stats().commands.load();
    s.asks0 = s.w->limits->stats().throttle_asks.load();
    s.refreshes0 = s.w->limits->stats().refreshes.load();
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kConcurrency; ++i) {
    for (Side& s : sides) start(s);
  }
  PumpUntil({a.loop.get(), b.loop.get()},
            [&] { return sides[0].ended == kPerWorker && sides[1].ended == kPerWorker; }, 60000);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (Side& s : sides) s.connector->Stop("test over");  // parked connections QUIT, released
  PumpUntil({a.loop.get(), b.loop.get()},
            [&] { return sides[0].connector->parked() == 0 && sides[1].connector->parked() == 0; });
  for (Side& s : sides) {
    EXPECT_EQ(s.delivered, kPerWorker);
    EXPECT_GT(s.reused, 0) << "messages over parked connections";
  }
  // What the receiver counted: the most MAIL commands within any window of 1 s (half-open).
  const std::vector<int64_t> mails = (*farm)->RecentMailTimes();
  ASSERT_EQ(mails.size(), 2u * kPerWorker);
  const size_t peak = MostInAnySecond(mails);
  EXPECT_LE(peak, 10u) << "the fleet's message throttle: at most 10 MAIL in any second";
  EXPECT_GE(secs, 2.5) << "30 messages at the fleet's 10/s (each process alone: 15 at 10/s)";
  for (Side& s : sides) {
    // Every reused message asked the message throttles alone (a late one again); a new
    // connection's first message rode on its acquire. Commands: an acquire and a release
    // per connection, one ask per reused message (batched: at most one command each), the
    // refreshes.
    const auto& st = s.w->limits->stats();
    const int64_t asks = st.throttle_asks.load() - s.asks0;
    const int64_t commands = st.commands.load() - s.commands0;
    EXPECT_GE(asks, s.reused);
    EXPECT_LE(asks, s.reused + s.fresh) << "at most one re-ask per message, when late";
    EXPECT_LE(commands, 2 * s.fresh + asks + (st.refreshes.load() - s.refreshes0))
        << "a reused message costs at most one Redis command";
    std::printf("worker: %d messages, %d over new connections, %d reused; %lld throttle asks, "
                "%lld Redis commands\n", s.delivered, s.fresh, s.reused,
                static_cast<long long>(asks), static_cast<long long>(commands));
  }
  std::printf("fleet message throttle 10/s: 30 messages from two workers in %.2f s, peak %zu "
              "MAIL in 1 s at the receiver\n", secs, peak);
  sides[0].connector.reset();
  sides[1].connector.reset();
}

}  // namespace
}  // namespace mxsched::testing
