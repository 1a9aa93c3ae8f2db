// Connection reuse under cluster_limits (docs/DESIGN.md §13 rules 3 and 7, §7): a real
// redis-server and the farm; two FleetWorkers stand for two worker processes (each its own
// selector, loop, ClusterLimits, ClusterClient and connector), driven from the test thread.
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/cluster/cluster_limits.h"
#include "mxsched/io/connector.h"
#include "mxsched/io/loop.h"
#include "testbed/farm.h"
#include "tests/net_testutil.h"
#include "tests/redis_server.h"
#include "tests/smtp_client.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using io::ConnectResult;
using testing::ConfigFrom;
using testing::Ep;
using testing::StatsFor;
using testing::Transact;

// One worker process: its selector, loop, fleet client and a reusing connector.
struct FleetWorker {
  FleetWorker(const std::string& config, io::ClusterOptions o, int slot_wait_ms) {
    loop = *io::Loop::Create(256);
    selector = std::make_unique<Selector>(ConfigFrom(config));
    limits = std::make_shared<io::ClusterLimits>(std::move(o));
    client = std::make_unique<io::ClusterClient>(loop.get(), limits);
    connector = std::make_unique<io::Connector>(
        loop.get(), selector.get(),
        io::ConnectorOptions{.connect_timeout_ms = 10000,
                             .banner_timeout_ms = 10000,
                             .slot_wait_ms = slot_wait_ms,
                             .cluster = client.get(),
                             .reuse = true});
  }
  ~FleetWorker() {
    held.clear();
    connector->Stop("test over");
    for (int i = 0; i < 400 && connector->parked() > 0; ++i) loop->RunOnce(10);
    connector.reset();
    client.reset();
  }
  // Starts a session; its result lands in `results`.
  void Connect(std::string_view domain) {
    connector->Connect(domain, [this](ConnectResult r) { results.push_back(std::move(r)); });
  }
  std::unique_ptr<io::Loop> loop;
  std::unique_ptr<Selector> selector;
  std::shared_ptr<io::ClusterLimits> limits;
  std::unique_ptr<io::ClusterClient> client;
  std::unique_ptr<io::Connector> connector;
  std::vector<ConnectResult> results;
  std::vector<ConnectResult> held;  // open connections the test keeps
};

class ReuseFleetTest : public testing::LoopbackTest {
 protected:
  void SetUp() override {
    LoopbackTest::SetUp();
    if (testing::RedisServerBinary() == nullptr) GTEST_SKIP() << "redis-server not installed";
    redis_ = std::make_unique<testing::RedisServer>();
    ASSERT_TRUE(redis_->ok());
    // A fleet past its warm-up (DESIGN §7 rule 4b).
    ASSERT_EQ(redis_->Query({"SET", StrCat("{", name_, "}:epoch"), "1:established"}), "OK");
  }
  io::ClusterOptions Options() {
    io::ClusterOptions o;
    o.redis = *ParseRedisUrl(redis_->url());
    o.name = name_;
    o.lease_seconds = 30;
    return o;
  }
  std::string Key(std::string_view kind, std::string_view what) const {
    return StrCat("{", name_, "}:", kind, ":", what);
  }
  // The lease ids on a fleet key, as Redis has them ("" when none).
  std::string Members(const std::string& key) {
    return redis_->Query({"EVAL", "return table.concat(redis.call('ZRANGE', KEYS[1], 0, -1), ',')",
                          "1", key});
  }
  std::string ZCard(const std::string& key) { return redis_->Query({"ZCARD", key}); }
  // Runs every worker's loop until `done()` (bounded).
  static bool Pump(const std::vector<FleetWorker*>& ws, const std::function<bool()>& done,
                   int bound_ms = 30000) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(bound_ms);
    while (!done()) {
      if (std::chrono::steady_clock::now() > end) return false;
      for (FleetWorker* w : ws) w->loop->RunOnce(1);
    }
    return true;
  }
  std::string name_ = StrCat("rf", getpid());
  std::unique_ptr<testing::RedisServer> redis_;
};

// DESIGN §13 rule 3 with cluster_limits: a parked connection opened for a.test and reused
// for b.test moves its fleet domain key from d:a.test to d:b.test — only if b.test has room
// fleet-wide. Before: the lease stayed on d:a.test, so b.test's fleet limit of 1 was
// exceeded (worker 2 held b.test's slot, worker 1 reused for b.test anyway) and a.test's
// count was held by a connection serving b.test.
TEST_F(ReuseFleetTest, AConnectionReusedForAnotherDomainMovesItsFleetDomainKey) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  ASSERT_TRUE(farm);
  const std::string config =
      StrCat("remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10),
             " )\nidle_timeout = 300\nDomain \"a.test\" { max_outbound_connections = 5 }\n"
             "Domain \"b.test\" { max_outbound_connections = 1 }\n");
  FleetWorker w1(config, Options(), /*slot_wait_ms=*/0), w2(config, Options(), 0);
  const std::vector<FleetWorker*> both = {&w1, &w2};
  const std::string da = Key("d", "a.test"), db = Key("d", "b.test");

  // Worker 2 holds b.test's one fleet slot.
  w2.Connect("b.test");
  ASSERT_TRUE(Pump(both, [&] { return w2.results.size() == 1; }));
  ASSERT_EQ(w2.results[0].kind, ConnectResult::Kind::kConnected) << w2.results[0].reason;
  w2.held.push_back(std::move(w2.results[0]));
  w2.results.clear();
  ASSERT_EQ(ZCard(db), "1");

  // Worker 1 delivers to a.test and parks the connection.
  w1.Connect("a.test");
  ASSERT_TRUE(Pump(both, [&] { return w1.results.size() == 1; }));
  ASSERT_EQ(w1.results[0].kind, ConnectResult::Kind::kConnected) << w1.results[0].reason;
  ASSERT_TRUE(Transact(w1.results[0].fd, true));
  w1.connector->Park(std::move(w1.results[0]));
  w1.results.clear();
  ASSERT_EQ(w1.selector->parked(), 1);
  ASSERT_EQ(ZCard(da), "1");

  // b.test is full fleet-wide: the parked a.test connection must not serve it.
  w1.Connect("b.test");
  ASSERT_TRUE(Pump(both, [&] { return w1.results.size() == 1; }));
  {
    ConnectResult& r = w1.results[0];
    EXPECT_NE(r.kind, ConnectResult::Kind::kConnected)
        << "b.test's fleet limit is 1 and worker 2 holds it: reused " << r.reused
        << ", Redis d:b.test " << Members(db) << ", d:a.test " << Members(da);
    if (r.kind == ConnectResult::Kind::kConnected) testing::CloseConnection(r);
  }
  w1.results.clear();
  // Refused: the parked connection was closed (QUIT), both its slots given back.
  ASSERT_TRUE(Pump(both, [&] { return w1.connector->parked() == 0 && ZCard(da) == "0"; }))
      << "d:a.test " << Members(da);
  EXPECT_EQ(ZCard(db), "1") << "only worker 2's b.test connection";

  // Worker 2 lets go of b.test; worker 1 parks a fresh a.test connection and reuses it for
  // b.test: the lease moves from d:a.test to d:b.test.
  w2.held.clear();
  ASSERT_TRUE(Pump(both, [&] { return ZCard(db) == "0"; }));
  w1.Connect("a.test");
  ASSERT_TRUE(Pump(both, [&] { return w1.results.size() == 1; }));
  ASSERT_EQ(w1.results[0].kind, ConnectResult::Kind::kConnected) << w1.results[0].reason;
  ASSERT_TRUE(Transact(w1.results[0].fd, !w1.results[0].reused));
  w1.connector->Park(std::move(w1.results[0]));
  w1.results.clear();
  const std::string lease_id = Members(da);
  ASSERT_FALSE(lease_id.empty());
  w1.Connect("b.test");
  ASSERT_TRUE(Pump(both, [&] { return w1.results.size() == 1; }));
  ASSERT_EQ(w1.results[0].kind, ConnectResult::Kind::kConnected) << w1.results[0].reason;
  EXPECT_TRUE(w1.results[0].reused);
  EXPECT_EQ(Members(db), lease_id) << "the reused connection counts on b.test now";
  EXPECT_EQ(ZCard(da), "0") << "and no longer on a.test";
  EXPECT_EQ(w1.limits->Held(db), 1);
  EXPECT_EQ(w1.limits->Held(da), 0);

  // b.test is full again (the moved lease holds it): worker 2 cannot take it.
  w2.Connect("b.test");
  ASSERT_TRUE(Pump(both, [&] { return w2.results.size() == 1; }));
  EXPECT_NE(w2.results[0].kind, ConnectResult::Kind::kConnected);
  w2.results.clear();

  // Redis loses its keys (DESIGN §7 rule 4b): the refresh re-registers the moved key.
  ASSERT_EQ(redis_->Query({"FLUSHALL"}), "OK");
  ASSERT_TRUE(Pump(both, [&] { return Members(db) == lease_id; }))
      << "re-registered on d:b.test, d:a.test " << Members(da);
  EXPECT_EQ(ZCard(da), "0") << "not on the old key";

  // Done: the connection and its lease on b.test go back.
  ASSERT_TRUE(Transact(w1.results[0].fd, false));
  testing::CloseConnection(w1.results[0]);
  w1.results.clear();
  ASSERT_TRUE(Pump(both, [&] { return ZCard(db) == "0"; }));
  EXPECT_EQ(w1.selector->server_active(), 0);
  EXPECT_EQ(w1.limits->stats().redis_errors.load(), 0);
}

// Through a named binding the fleet's per-binding domain key moves the same way: from
// bd:b1:a.test to bd:b1:b.test (DESIGN §7 rule 1a, §13 rules 3 and 7).
TEST_F(ReuseFleetTest, ThroughANamedBindingThePerBindingFleetKeyMovesToo) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  ASSERT_TRUE(farm);
  const std::string config = StrCat(
      "remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10),
      " )\nidle_timeout = 300\nBinding \"b1\" { bind_address = \"127.0.0.1\"\n"
      "  Domain \"a.test\" { max_outbound_connections = 5 }\n"
      "  Domain \"b.test\" { max_outbound_connections = 1 } }\n");
  FleetWorker w(config, Options(), 0);
  const std::vector<FleetWorker*> one = {&w};
  const std::string ka = Key("bd", "b1:a.test"), kb = Key("bd", "b1:b.test");
  auto connect = [&](std::string_view domain) {
    w.connector->Connect(domain, AcquireOptions{.binding = "b1"},
                         [&](ConnectResult r) { w.results.push_back(std::move(r)); });
    return Pump(one, [&] { return w.results.size() == 1; });
  };
  ASSERT_TRUE(connect("a.test"));
  ASSERT_EQ(w.results[0].kind, ConnectResult::Kind::kConnected) << w.results[0].reason;
  ASSERT_TRUE(Transact(w.results[0].fd, true));
  w.connector->Park(std::move(w.results[0]));
  w.results.clear();
  const std::string lease_id = Members(ka);
  ASSERT_FALSE(lease_id.empty());
  ASSERT_TRUE(connect("b.test"));
  ASSERT_EQ(w.results[0].kind, ConnectResult::Kind::kConnected) << w.results[0].reason;
  EXPECT_TRUE(w.results[0].reused);
  EXPECT_EQ(w.results[0].lease.binding(), "b1");
  EXPECT_EQ(Members(kb), lease_id);
  EXPECT_EQ(ZCard(ka), "0");
  ASSERT_TRUE(Transact(w.results[0].fd, false));
  testing::CloseConnection(w.results[0]);
  w.results.clear();
  ASSERT_TRUE(Pump(one, [&] { return ZCard(kb) == "0"; }));
}

// DESIGN §13 rule 7: a parked connection of worker A holds the fleet's only slot on a host
// (Host limit 1 fleet-wide) while worker B's session queues for that host in Redis. B's
// queueing tells A (the take-back publish, §7 rule 10), A closes its parked connection with
// QUIT and its release wakes B — long before the 300 s idle timeout (before: B waited for
// it, and with slot_wait_ms 20 s ended deferred).
TEST_F(ReuseFleetTest, AFleetWaiterOfAnotherWorkerGetsAParkedConnectionClosedForIt) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  ASSERT_TRUE(farm);
  const std::string config =
      StrCat("remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10),
             " )\nidle_timeout = 300\nHost \"", Ip(1), "\" { max_outbound_connections = 1 }\n");
  FleetWorker a(config, Options(), 20000), b(config, Options(), 20000);
  ASSERT_TRUE(Pump({&a, &b}, [&] { return a.client->subscribed() && b.client->subscribed(); }));
  const std::vector<FleetWorker*> both = {&a, &b};
  const std::string hk = Key("h", StrCat(Ip(1), ":", port_));
  a.Connect("a.test");
  ASSERT_TRUE(Pump(both, [&] { return a.results.size() == 1; }));
  ASSERT_EQ(a.results[0].kind, ConnectResult::Kind::kConnected) << a.results[0].reason;
  ASSERT_TRUE(Transact(a.results[0].fd, true));
  a.connector->Park(std::move(a.results[0]));
  a.results.clear();
  ASSERT_EQ(a.connector->parked(), 1u);
  ASSERT_TRUE(Pump(both, [&] { return ZCard(hk) == "1"; }));
  const auto t0 = std::chrono::steady_clock::now();
  b.Connect("b.test");
  ASSERT_TRUE(Pump(both, [&] { return b.results.size() == 1; }, 40000));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(b.results[0].kind, ConnectResult::Kind::kConnected) << b.results[0].reason;
  EXPECT_FALSE(b.results[0].reused);
  EXPECT_LT(waited, 10.0) << "not the 300 s idle timeout";
  EXPECT_EQ(a.connector->parked(), 0u) << "A's parked connection was closed for B";
  const auto totals = a.selector->stats().Collect();
  EXPECT_EQ(totals.reuse[static_cast<size_t>(ReuseEvent::kEvicted)], 1u);
  ASSERT_TRUE(Transact(b.results[0].fd, true));
  testing::CloseConnection(b.results[0]);
  b.results.clear();
  std::vector<testbed::FarmAddressStats> s;
  ASSERT_TRUE(Pump(both, [&] {
    s = farm->Stats();
    const auto* h = StatsFor(s, Ip(1));
    return h != nullptr && h->current == 0 && h->total == 2;
  }));
  const auto* h = StatsFor(s, Ip(1));
  EXPECT_EQ(h->peak, 1) << "the fleet's Host limit of 1 held server-side";
  EXPECT_EQ(h->quits, 1u) << "the evicted connection QUIT (the test closed its own)";
  std::printf("cross-worker eviction: B connected after %.3f s (idle_timeout 300 s)\n", waited);
}

// DESIGN §13 rule 2 / §12: Stop while a reused connection waits for its message throttle's
// instant ends it with QUIT and gives back its slot and its fleet lease.
TEST_F(ReuseFleetTest, StopWhileAReusedConnectionWaitsForItsMessageInstantQuitsAndFreesAll) {
  auto farm = testing::StartFarm({Ep(Ip(1), port_)});
  ASSERT_TRUE(farm);
  const std::string config = StrCat(
      "remote_smtp_port = ", port_, "\nroutes = ( ", Url(1, 10),
      " )\nidle_timeout = 300\noutbound_throttle_messages = \"1/60\"\nHost \"", Ip(1),
      "\" { max_outbound_connections = 2 }\n");
  FleetWorker w(config, Options(), /*slot_wait_ms=*/120000);
  const std::vector<FleetWorker*> one = {&w};
  const std::string hk = Key("h", StrCat(Ip(1), ":", port_));
  w.Connect("a.test");
  ASSERT_TRUE(Pump(one, [&] { return w.results.size() == 1; }));
  ASSERT_EQ(w.results[0].kind, ConnectResult::Kind::kConnected) << w.results[0].reason;
  ASSERT_TRUE(Transact(w.results[0].fd, true));
  w.connector->Park(std::move(w.results[0]));
  w.results.clear();
  ASSERT_EQ(ZCard(hk), "1");
  // The next message over it waits ~60 s for the message throttle: reused (out of the lot)
  // and checked (RSET answered: out of the connector's parked list), not handed out.
  w.Connect("a.test");
  ASSERT_TRUE(Pump(one, [&] {
    const auto t = w.selector->stats().Collect();
    return t.reuse[static_cast<size_t>(ReuseEvent::kReused)] == 1 && w.connector->parked() == 0;
  }));
  EXPECT_TRUE(w.results.empty()) << "handed out before its message instant";
  EXPECT_EQ(w.selector->server_active(), 1);
  w.connector->Stop("test over");
  ASSERT_TRUE(Pump(one, [&] { return w.results.size() == 1; }));
  EXPECT_EQ(w.results[0].kind, ConnectResult::Kind::kDeferred);
  EXPECT_TRUE(w.results[0].stopped);
  EXPECT_EQ(w.selector->server_active(), 0) << "the slot is back";
  ASSERT_TRUE(Pump(one, [&] { return ZCard(hk) == "0"; })) << "the fleet lease is back";
  std::vector<testbed::FarmAddressStats> s;
  ASSERT_TRUE(Pump(one, [&] {
    s = farm->Stats();
    const auto* h = StatsFor(s, Ip(1));
    return h != nullptr && h->current == 0;
  }));
  const auto* h = StatsFor(s, Ip(1));
  EXPECT_EQ(h->total, 1u);
  EXPECT_EQ(h->quits, 1u) << "ended with QUIT";
  EXPECT_EQ(h->messages, 1u);
}

}  // namespace
}  // namespace mxsched
