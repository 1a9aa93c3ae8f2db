// The cost of a release that hands its slot to a waiter (docs/DESIGN.md §5), as the number of
// waiters grows: 10,000 hosts (limit 1 each, all held), 10,000 domains (domain i routes to
// host i), and W waiters spread evenly over the domains (W/10,000 per host). One iteration
// = release the lease on one host (handed to that host's oldest waiter) + that waiter
// queueing again at the back, so the number of waiters stays W. Flat in W means the release
// looks only at its own host's queue, never at unrelated waiters. `release_ns` times the
// release (hand-off included) alone; the iteration time adds the waiter queueing again.
//
//   ./build/waiters_bench --benchmark_min_time=0.3
#include <chrono>
#include <deque>
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

struct BenchWaiter : SlotWaiter {
  void Wake(Lease l) override { got = std::move(l); }
  Lease got;
  int domain = 0;
};

std::string HostIp(int i) {
  return StrCat("127.", 10 + i / 62500, ".", (i / 250) % 250, ".", 1 + i % 250);
}

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
    for (int i = 0; i < kHosts; ++i) {
      names.push_back(StrCat("d", i, ".example"));
      AcquireResult r = selector->Acquire(names.back());
      if (!r.ok()) std::abort();
      held.push_back(r.TakeLease());
    }
    queues.resize(kHosts);
    pool.resize(waiters);
    for (int w = 0; w < waiters; ++w) {
      BenchWaiter* bw = &pool[w];
      bw->domain = w % kHosts;
      selector->WaitForSlot(names[bw->domain], bw);
      queues[bw->domain].push_back(bw);
    }
  }
  ~World() {
    for (auto& q : queues) {
      for (BenchWaiter* w : q) selector->CancelWait(w);
    }
    held.clear();
  }
  std::unique_ptr<Selector> selector;
  std::vector<std::string> names;
  std::vector<Lease> held;
  std::vector<std::deque<BenchWaiter*>> queues;  // mirror of each host's FIFO
  std::deque<BenchWaiter> pool;
};

void BM_ReleaseHandOff(benchmark::State& state) {
  const int waiters = static_cast<int>(state.range(0));
  World world(waiters);
  uint64_t x = 88172645463325252ull;
  int64_t release_nanos = 0;
  for (auto _ : state) {
    const int h = static_cast<int>((x ^= x << 13, x ^= x >> 7, x ^= x << 17) % kHosts);
    std::deque<BenchWaiter*>& q = world.queues[h];
    const auto t0 = std::chrono::steady_clock::now();
    world.held[h].Release();  // hands the slot to q.front(), or frees it if nobody waits
    release_nanos += (std::chrono::steady_clock::now() - t0).count();
    if (q.empty()) {
      AcquireResult r = world.selector->Acquire(world.names[h]);
      world.held[h] = r.TakeLease();
      continue;
    }
    BenchWaiter* w = q.front();
    q.pop_front();
    if (!w->got.valid()) std::abort();  // FIFO broken: the mirror disagrees
    world.held[h] = std::move(w->got);
    world.selector->WaitForSlot(world.names[h], w);  // back of the queue
    q.push_back(w);
  }
  // The release alone (timed around Lease::Release, including ~2 clock reads).
  state.counters["release_ns"] =
      static_cast<double>(release_nanos) / static_cast<double>(state.iterations());
  state.counters["waiters"] = waiters;
  state.counters["waiters_per_host"] = static_cast<double>(waiters) / kHosts;
}
BENCHMARK(BM_ReleaseHandOff)
    ->Arg(0)
    ->Arg(1'000)
    ->Arg(10'000)
    ->Arg(100'000)
    ->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace mxsched::bench

BENCHMARK_MAIN();
