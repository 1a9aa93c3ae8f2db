// Connection reuse in the selector: the parking lot (docs/DESIGN.md §13). Time and
// randomness are injected: no sleeps.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/scheduler/selector.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using testing::SelectorFixture;

// Stands for a connector's open connection: records an eviction and keeps its lease (the
// owner closes the socket, then lets the lease go).
struct FakeConnection : ParkedConnection {
  void Evict(Lease l) override {
    ++evicted;
    lease = std::move(l);
  }
  int evicted = 0;
  Lease lease;
};

struct CountingWaiter : SlotWaiter {
  void Wake(Lease l) override {
    lease = std::move(l);
    ++woken;
  }
  int woken = 0;
  Lease lease;
};

int owner_a, owner_b;  // two owners: distinct addresses
const void* const A = &owner_a;
const void* const B = &owner_b;

AcquireResult Reuse(SelectorFixture& f, std::string_view domain, const void* owner) {
  return f.selector.Acquire(domain, {.reuse_owner = owner});
}

TEST(ConnectionReuse, AParkedConnectionKeepsItsSlotAndIsHandedOutReused) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Host "127.0.9.1" { max_outbound_connections = 1 }
  )");
  Lease l = f.MustAcquire("example.com");
  l.Report(Outcome::kConnected);
  FakeConnection conn;
  ASSERT_TRUE(l.Park(&conn, A));
  EXPECT_FALSE(l.valid()) << "the selector holds the lease now";
  EXPECT_EQ(f.selector.parked(), 1);
  EXPECT_EQ(f.selector.server_active(), 1);
  AcquireResult fresh = f.selector.Acquire("example.com");
  ASSERT_FALSE(fresh.ok()) << "the parked connection still counts against the host's limit";
  EXPECT_EQ(fresh.deferral().reason, DeferReason::kHostsAtLimit);
  AcquireResult other = Reuse(f, "example.com", B);
  EXPECT_FALSE(other.ok()) << "another owner cannot take up a socket it does not hold";
  AcquireResult r = Reuse(f, "example.com", A);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().reused(), &conn);
  EXPECT_EQ(r.lease().endpoint().address.ToString(), "127.0.9.1");
  EXPECT_EQ(f.selector.parked(), 0);
  EXPECT_EQ(f.selector.stats().Collect().reuse[static_cast<size_t>(ReuseEvent::kReused)], 1u);
  r.lease().Release();
  EXPECT_EQ(f.selector.server_active(), 0);
  EXPECT_TRUE(f.selector.Acquire("example.com").ok());
}

TEST(ConnectionReuse, StrictPreferenceAParkedWorseTierConnectionIsNotUsedWhileABetterHostHasRoom) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" "127.0.9.2" )
    Host "127.0.9.1" { max_outbound_connections = 1 }
  )");
  Lease best = f.MustAcquire("example.com");
  ASSERT_EQ(best.endpoint().address.ToString(), "127.0.9.1");
  Lease worse = f.MustAcquire("example.com");
  ASSERT_EQ(worse.endpoint().address.ToString(), "127.0.9.2");
  worse.Report(Outcome::kConnected);
  FakeConnection conn;
  ASSERT_TRUE(worse.Park(&conn, A));
  best.Release();
  AcquireResult r = Reuse(f, "example.com", A);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().endpoint().address.ToString(), "127.0.9.1")
      << "tier 0 has room: a fresh connection there, not the parked one to tier 1";
  EXPECT_EQ(r.lease().reused(), nullptr);
  EXPECT_EQ(f.selector.parked(), 1);
  // Tier 0 full now: tier 1 is the best usable tier, and its parked connection serves.
  AcquireResult again = Reuse(f, "example.com", A);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again.lease().reused(), &conn);
  EXPECT_EQ(again.lease().endpoint().address.ToString(), "127.0.9.2");
}

TEST(ConnectionReuse, WithinTheBestTierAParkedConnectionComesBeforeAFreshOne) {
  SelectorFixture f(R"(
    routes = ( "smtp://127.0.9.1?pref=0" "smtp://127.0.9.2?pref=0" )
  )");
  FakeConnection conn;
  Lease l = f.MustAcquire("example.com");
  const std::string host = l.endpoint().address.ToString();
  ASSERT_TRUE(l.Park(&conn, A));
  for (int i = 0; i < 4; ++i) {
    AcquireResult r = Reuse(f, "example.com", A);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.lease().reused(), &conn) << i;
    EXPECT_EQ(r.lease().endpoint().address.ToString(), host);
    ASSERT_TRUE(r.lease().Park(&conn, A));
  }
}

TEST(ConnectionReuse, AParkedConnectionServesAnyDomainWhoseRouteAllowsItsHost) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Host "127.0.9.1" { max_outbound_connections = 1 }
    Domain "c.example" { routes = ( "127.0.9.3" ) }
  )");
  FakeConnection conn;
  Lease l = f.MustAcquire("a.example");
  ASSERT_TRUE(l.Park(&conn, A));
  EXPECT_EQ(f.selector.DescribeResident("a.example")->active, 1);
  AcquireResult c = Reuse(f, "c.example", A);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c.lease().reused(), nullptr) << "c.example's route does not allow 127.0.9.1";
  AcquireResult r = Reuse(f, "b.example", A);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().reused(), &conn);
  EXPECT_EQ(f.selector.DescribeResident("a.example")->active, 0)
      << "the domain slot moved with the connection";
  EXPECT_EQ(f.selector.DescribeResident("b.example")->active, 1);
  r.lease().Release();
  EXPECT_EQ(f.selector.DescribeResident("b.example")->active, 0);
}

TEST(ConnectionReuse, ADomainAtItsLimitStillReusesItsOwnParkedConnection) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    max_outbound_connections = 1
  )");
  FakeConnection conn;
  Lease l = f.MustAcquire("a.example");
  ASSERT_TRUE(l.Park(&conn, A));
  EXPECT_FALSE(f.selector.Acquire("a.example").ok()) << "the parked one holds the domain slot";
  AcquireResult r = Reuse(f, "a.example", A);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.lease().reused(), &conn);
}

TEST(ConnectionReuse, ParkingHandsTheConnectionToTheOldestWaiterThatCanUseIt) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Host "127.0.9.1" { max_outbound_connections = 1 }
  )");
  Lease l = f.MustAcquire("a.example");
  CountingWaiter w;
  f.selector.WaitForSlot("b.example", &w, false, {.reuse_owner = A});
  ASSERT_EQ(w.woken, 0);
  FakeConnection conn;
  EXPECT_TRUE(l.Park(&conn, A));
  ASSERT_EQ(w.woken, 1);
  ASSERT_TRUE(w.lease.valid());
  EXPECT_EQ(w.lease.reused(), &conn);
  EXPECT_EQ(f.selector.parked(), 0);
  EXPECT_EQ(f.selector.waiting(), 0u);
}

TEST(ConnectionReuse, ParkingIsRefusedWhenTheOldestWaiterCannotUseIt) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Host "127.0.9.1" { max_outbound_connections = 1 }
  )");
  Lease l = f.MustAcquire("a.example");
  CountingWaiter w;
  f.selector.WaitForSlot("b.example", &w, false, {.reuse_owner = B});
  FakeConnection conn;
  EXPECT_FALSE(l.Park(&conn, A)) << "the waiter holds no socket of A's";
  ASSERT_TRUE(l.valid()) << "the caller closes the connection and releases";
  EXPECT_EQ(f.selector.parked(), 0);
  l.Release();
  ASSERT_EQ(w.woken, 1);
  EXPECT_TRUE(w.lease.valid());
  EXPECT_EQ(w.lease.reused(), nullptr);
}

TEST(ConnectionReuse, AWaiterForAHostHeldByParkedConnectionsGetsTheOldestClosed) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Host "127.0.9.1" { max_outbound_connections = 2 }
  )");
  FakeConnection older, newer;
  Lease l1 = f.MustAcquire("a.example");
  Lease l2 = f.MustAcquire("a.example");
  ASSERT_TRUE(l1.Park(&older, A));
  f.clock.Advance(1'000'000'000);
  ASSERT_TRUE(l2.Park(&newer, A));
  EXPECT_FALSE(Reuse(f, "b.example", B).ok());
  CountingWaiter w;
  f.selector.WaitForSlot("b.example", &w, false, {.reuse_owner = B});
  EXPECT_EQ(older.evicted, 1) << "the oldest idle one is closed for the waiter";
  EXPECT_EQ(newer.evicted, 0);
  EXPECT_EQ(f.selector.parked(), 1);
  EXPECT_EQ(w.woken, 0) << "the slot is handed over once the connection is closed";
  older.lease.Release();  // the owner sent QUIT and closed the socket
  ASSERT_EQ(w.woken, 1);
  EXPECT_TRUE(w.lease.valid());
  EXPECT_EQ(f.selector.stats().Collect().reuse[static_cast<size_t>(ReuseEvent::kEvicted)], 1u);
}

TEST(ConnectionReuse, AWaiterForItsDomainsLimitGetsOneOfItsParkedConnectionsClosed) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    max_outbound_connections = 1
  )");
  FakeConnection conn;
  Lease l = f.MustAcquire("a.example");
  ASSERT_TRUE(l.Park(&conn, A));
  CountingWaiter w;
  f.selector.WaitForSlot("a.example", &w, false, {.reuse_owner = B});
  ASSERT_EQ(conn.evicted, 1);
  conn.lease.Release();
  ASSERT_EQ(w.woken, 1);
  EXPECT_TRUE(w.lease.valid());
}

TEST(ConnectionReuse, UnparkTakesTheLeaseBackOnce) {
  SelectorFixture f(R"(routes = ( "127.0.9.1" ))");
  FakeConnection conn;
  Lease l = f.MustAcquire("a.example");
  ASSERT_TRUE(l.Park(&conn, A));
  EXPECT_EQ(f.selector.Describe("a.example").tiers[0].hosts[0].parked, 1);
  Lease back = f.selector.Unpark(&conn);
  EXPECT_TRUE(back.valid());
  EXPECT_FALSE(f.selector.Unpark(&conn).valid());
  EXPECT_EQ(f.selector.Describe("a.example").tiers[0].hosts[0].parked, 0);
  back.Release();
  EXPECT_EQ(f.selector.server_active(), 0);
}

TEST(ConnectionReuse, AParkedConnectionServesOnlyItsOwnBinding) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Binding "b1" { bind_address = "127.0.0.1" }
    Binding "b2" { bind_address = "127.0.0.1" }
  )");
  FakeConnection conn;
  AcquireResult first = f.selector.Acquire("a.example", {.binding = "b1"});
  ASSERT_TRUE(first.ok());
  Lease l = first.TakeLease();
  ASSERT_TRUE(l.Park(&conn, A));
  AcquireResult other = f.selector.Acquire("a.example", {.binding = "b2", .reuse_owner = A});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other.lease().reused(), nullptr);
  AcquireResult deflt = Reuse(f, "a.example", A);
  ASSERT_TRUE(deflt.ok());
  EXPECT_EQ(deflt.lease().reused(), nullptr);
  AcquireResult same = f.selector.Acquire("a.example", {.binding = "b1", .reuse_owner = A});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same.lease().reused(), &conn);
  EXPECT_EQ(same.lease().binding(), "b1");
}

// The domain's count through `binding` as Describe shows it (-1: not listed).
int32_t ThroughBinding(Selector& s, std::string_view domain, std::string_view binding) {
  for (const BindingView& b : s.Describe(domain).bindings) {
    if (b.binding == binding) return b.active;
  }
  return -1;
}

// Rule 3 through a named binding: the per-binding domain count moves with the connection
// (before: such a connection served only the domain that parked it), under the new
// domain's Binding::Domain limit; a full one does not take it.
TEST(ConnectionReuse, ThroughANamedBindingThePerBindingDomainCountMovesWithTheConnection) {
  SelectorFixture f(R"(
    routes = ( "127.0.9.1" )
    Binding "b1" { bind_address = "127.0.0.1"  Domain "c.example" { max_outbound_connections = 1 } }
  )");
  FakeConnection conn;
  AcquireResult first = f.selector.Acquire("a.example", {.binding = "b1"});
  ASSERT_TRUE(first.ok());
  Lease l = first.TakeLease();
  ASSERT_TRUE(l.Park(&conn, A));
  EXPECT_EQ(ThroughBinding(f.selector, "a.example", "b1"), 1);
  AcquireResult moved = f.selector.Acquire("b.example", {.binding = "b1", .reuse_owner = A});
  ASSERT_TRUE(moved.ok());
  ASSERT_EQ(moved.lease().reused(), &conn);
  EXPECT_EQ(moved.lease().moving_from(), "a.example");
  EXPECT_EQ(ThroughBinding(f.selector, "a.example", "b1"), 0);
  EXPECT_EQ(ThroughBinding(f.selector, "b.example", "b1"), 1);
  EXPECT_EQ(f.selector.Describe("a.example").active, 0);
  EXPECT_EQ(f.selector.Describe("b.example").active, 1);
  // c.example's limit through b1 is 1, and a fresh connection holds it: not moved there.
  AcquireResult cr = f.selector.Acquire("c.example", {.binding = "b1"});
  ASSERT_TRUE(cr.ok());
  Lease c = cr.TakeLease();
  Lease back = moved.TakeLease();
  back.SettleMove();
  EXPECT_EQ(back.moving_from(), "");
  ASSERT_TRUE(back.Park(&conn, A));
  AcquireResult full = f.selector.Acquire("c.example", {.binding = "b1", .reuse_owner = A});
  EXPECT_FALSE(full.ok() && full.lease().reused() != nullptr);
  EXPECT_EQ(ThroughBinding(f.selector, "b.example", "b1"), 1) << "still b.example's";
  EXPECT_EQ(ThroughBinding(f.selector, "c.example", "b1"), 1);
  Lease unparked = f.selector.Unpark(&conn);
  ASSERT_TRUE(unparked.valid());
  unparked.Release();
  c.Release();
  EXPECT_EQ(ThroughBinding(f.selector, "b.example", "b1"), 0);
  EXPECT_EQ(ThroughBinding(f.selector, "c.example", "b1"), 0);
  EXPECT_EQ(f.selector.Describe("b.example").active, 0);
  EXPECT_EQ(f.selector.Describe("c.example").active, 0);
}

}  // namespace
}  // namespace mxsched
