// The cost of a release that hands its slot to a waiter (docs/DESIGN.md §5), as the number of
// waiters grows: 10,000 hosts (limit 1 each, all held), 10,000 domains (domain i routes to
// host i), and W waiters spread evenly over the domains (W/10,000 per host). One iteration
// = release the lease on one host (handed to that host's oldest waiter) + that waiter
// queueing again at the back, so the number of waiters stays W. Flat in W means the release
// looks only at its own host's queue, never at unrelated waiters. `release_ns` times the
// release (hand-off included) alone; the iteration time adds the waiter queueing again.
// `handoff_ns` is the mean of the releases that handed a slot over (all of them from
// 10,000 waiters on; 1 in 10 at 1,000, where the rest find the host's queue empty), so
// compare it, not release_ns, across W. W = 0 is the lock-free path (no queue at all).
//
// The bench's own state does not grow with W beyond the waiters themselves (24 bytes
// each, touched once per hand-off as any waiter is: Wake is a virtual call): FIFO order is
// checked with two counters per host, not a mirror queue, and the handed-over lease is
// kept by the bench, not in the waiter.
//
//   ./build/waiters_bench --benchmark_min_time=0.2 --benchmark_repetitions=3
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::bench {
namespace {

constexpr int kHosts = 10'000;

// The slot handed over by the last Wake, and to whom: a waiter holds nothing but the
// SlotWaiter base and its FIFO place (24 bytes), so the bench's own working set per waiter
// is as small as an embedder's could be, and what grows with W is the scheduler's.
struct BenchWaiter;
BenchWaiter* last_woken = nullptr;
Lease handed;

struct BenchWaiter : SlotWaiter {
  void Wake(Lease l) override {
    handed = std::move(l);
    last_woken = this;
  }
  uint32_t host = 0;
  uint32_t order = 0;  // its place in its host's FIFO
};

std::string HostIp(int i) {
  return StrCat("127.", 10 + i / 62500, ".", (i / 250) % 250, ".", 1 + i % 250);
}

struct PerHost {
  Lease held;
  uint32_t queued = 0;  // waiters that queued on this host so far
  uint32_t served = 0;  // ... and were handed a slot
};

struct World {
  explicit World(int waiters) {
    std::string text = "server_max_outbound_connections = 1000000\n";
    for (int i = 0; i < kHosts; ++i) {
      text += StrCat("Domain \"d", i, ".example\" { routes = ( \"", HostIp(i), "\" ) }\n");
      text += StrCat("Host \"", HostIp(i), "\" { max_outbound_connections = 1 }\n");
    }
    absl::StatusOr<Config> c = ParseConfig(text, "bench");
    if (!c.ok()) std::abort();
    selector = std::make_unique<Selector>(std::make_shared<const Config>(*std::move(c)));
    hosts.resize(kHosts);
    for (int i = 0; i < kHosts; ++i) {
      names.push_back(StrCat("d", i, ".example"));
      AcquireResult r = selector->Acquire(names.back());
      if (!r.ok()) std::abort();
      hosts[i].held = r.TakeLease();
    }
    pool = std::vector<BenchWaiter>(static_cast<size_t>(waiters));
    for (int w = 0; w < waiters; ++w) {
      BenchWaiter* bw = &pool[w];
      bw->host = static_cast<uint32_t>(w % kHosts);
      bw->order = hosts[bw->host].queued++;
      selector->WaitForSlot(names[bw->host], bw);
    }
  }
  ~World() {
    for (BenchWaiter& w : pool) selector->CancelWait(&w);
    hosts.clear();
  }
  std::unique_ptr<Selector> selector;
  std::vector<std::string> names;
  std::vector<PerHost> hosts;
  std::vector<BenchWaiter> pool;
};

void BM_ReleaseHandOff(benchmark::State& state) {
  const int waiters = static_cast<int>(state.range(0));
  World world(waiters);
  uint64_t x = 88172645463325252ull;
  int64_t release_nanos = 0;
  int64_t handoff_nanos = 0;
  int64_t handoffs = 0;
  for (auto _ : state) {
    const int h = static_cast<int>((x ^= x << 13, x ^= x >> 7, x ^= x << 17) % kHosts);
    PerHost& ph = world.hosts[h];
    last_woken = nullptr;
    const auto t0 = std::chrono::steady_clock::now();
    ph.held.Release();  // hands the slot to the host's oldest waiter, or frees it
    const int64_t ns = (std::chrono::steady_clock::now() - t0).count();
    release_nanos += ns;
    BenchWaiter* w = last_woken;
    if (w == nullptr) {
      if (ph.queued != ph.served) std::abort();  // a waiter was not handed the slot
      AcquireResult r = world.selector->Acquire(world.names[h]);
      ph.held = r.TakeLease();
      continue;
    }
    handoff_nanos += ns;
    ++handoffs;
    // FIFO: the one woken is the oldest on this host, and it got the slot.
    if (w->host != static_cast<uint32_t>(h) || w->order != ph.served++ || !handed.valid()) {
      std::abort();
    }
    ph.held = std::move(handed);
    w->order = ph.queued++;
    world.selector->WaitForSlot(world.names[h], w);  // back of the queue
  }
  // The release alone (timed around Lease::Release, including ~2 clock reads).
  const double iterations = static_cast<double>(state.iterations());
  state.counters["release_ns"] = static_cast<double>(release_nanos) / iterations;
  state.counters["handoff_ns"] =
      handoffs == 0 ? 0.0 : static_cast<double>(handoff_nanos) / static_cast<double>(handoffs);
  state.counters["handoffs"] = static_cast<double>(handoffs) / iterations;
  state.counters["waiters"] = waiters;
}
// WAITERS_BENCH_ITERATIONS=N runs exactly N iterations per size, for a deterministic count
// of instructions and cache misses per release under
// `valgrind --tool=cachegrind` (subtract a run with fewer iterations to drop the set-up).
void Sizes(benchmark::internal::Benchmark* b) {
  for (int w : {0, 1'000, 10'000, 100'000}) b->Arg(w);
  if (const char* n = std::getenv("WAITERS_BENCH_ITERATIONS")) b->Iterations(std::atoll(n));
}
BENCHMARK(BM_ReleaseHandOff)->Apply(Sizes)->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace mxsched::bench

BENCHMARK_MAIN();
