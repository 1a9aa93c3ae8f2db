// Selector micro benchmarks: the lock-free Selector against the mutex-per-domain baseline
// (bench/mutex_selector.h), in one run, with BENCHMARK_TEMPLATE. Each iteration is one
// Acquire + Release pair. Multi-threaded cases use real time, so items_per_second is the
// aggregate rate across threads. bench/ratios.py turns the JSON output into the ratio
// table in bench/README.md.
//
// Scenarios:
//   OneDomain      1 domain, 4 equal-preference hosts (docs/DESIGN.md §10: ≤ 35 ns)
//   MxSpread/N     N domains, each with its own 4 hosts; threads use disjoint domains
//   GlobalRoute    1,000 domains all routed through the same 4 hosts (shared host lines)
//   MillionDomains/0|1  1,000,000 resident domains, uniform (0) or Zipf (1) access
//                       (150 ns, 256 B/domain targets)
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "bench/mutex_selector.h"
#include "benchmark/benchmark.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::bench {
namespace {

std::shared_ptr<const Config> MustParse(const std::string& text) {
  absl::StatusOr<Config> c = ParseConfig(text, "bench");
  if (!c.ok()) {
    std::fprintf(stderr, "bench config: %s\n", std::string(c.status().message()).c_str());
    std::abort();
  }
  return std::make_shared<const Config>(*std::move(c));
}

constexpr char kGlobalFour[] = R"(
  routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
             "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
  max_outbound_connections = 1000
  server_max_outbound_connections = 20000
)";

std::string MxSpreadConfig(int64_t domains) {
  std::string text = "server_max_outbound_connections = 20000\n";
  for (int64_t d = 0; d < domains; ++d) {
    text += StrCat("Domain \"d", d, ".example\" { routes = (");
    for (int h = 1; h <= 4; ++h) {
      text += StrCat(" \"smtp://127.", 100 + d / 250, ".", d % 250, ".", h, "?pref=10\"");
    }
    text += " ) }\n";
  }
  return text;
}

std::vector<std::string> DomainNames(int64_t n) {
  std::vector<std::string> names;
  names.reserve(n);
  for (int64_t i = 0; i < n; ++i) names.push_back(StrCat("d", i, ".example"));
  return names;
}

struct LockFree {
  explicit LockFree(std::shared_ptr<const Config> c) : selector(std::move(c)) {}
  bool Cycle(std::string_view domain) {
    AcquireResult r = selector.Acquire(domain);
    return r.ok();  // the lease is released as `r` goes out of scope
  }
  Selector selector;
};

struct Mutex {
  explicit Mutex(std::shared_ptr<const Config> c) : selector(std::move(c)) {}
  bool Cycle(std::string_view domain) {
    MutexSelector::Lease l = selector.Acquire(domain);
    if (l.host == nullptr) return false;
    selector.Release(l);
    return true;
  }
  MutexSelector selector;
};

template <typename Impl>
void Run(benchmark::State& state, Impl& impl, const std::vector<std::string>& names,
         bool disjoint) {
  // Threads take disjoint domain subsets when `disjoint`, else all share the list.
  const size_t stride = disjoint ? state.threads() : 1;
  size_t i = disjoint ? state.thread_index() : 0;
  int64_t deferred = 0;
  for (auto _ : state) {
    deferred += !impl.Cycle(names[i]);
    i += stride;
    if (i >= names.size()) i %= names.size();
  }
  if (deferred) state.SkipWithError("deferred: limits in the bench config are too low");
  state.SetItemsProcessed(state.iterations());
}

template <typename Impl>
void BM_OneDomain(benchmark::State& state) {
  static Impl* impl = new Impl(MustParse(kGlobalFour));
  static const std::vector<std::string> names = {"example.com"};
  Run(state, *impl, names, false);
}

// Arg: number of domains. 200 fits this machine's per-core cache with room to spare; 2,000
// (about 1.5 MB of entries, snapshots and hosts) does not, and shows the cache cliff.
template <typename Impl>
void BM_MxSpread(benchmark::State& state) {
  struct Setup {
    std::unique_ptr<Impl> impl;
    std::vector<std::string> names;
  };
  static std::map<int64_t, Setup>* setups = new std::map<int64_t, Setup>();
  static absl::Mutex mu;
  Setup* setup;
  {
    absl::MutexLock lock(&mu);
    Setup& s = (*setups)[state.range(0)];
    if (!s.impl) {
      s.impl = std::make_unique<Impl>(MustParse(MxSpreadConfig(state.range(0))));
      s.names = DomainNames(state.range(0));
      for (const auto& n : s.names) s.impl->Cycle(n);
    }
    setup = &s;
  }
  Run(state, *setup->impl, setup->names, true);
}

template <typename Impl>
void BM_GlobalRoute(benchmark::State& state) {
  static Impl* impl = new Impl(MustParse(kGlobalFour));
  static const std::vector<std::string> names = DomainNames(1000);
  Run(state, *impl, names, true);
}

size_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * 4096;
}

// One million resident domains. Arg 0: every acquisition picks a domain uniformly at random
// (worst case: each pair walks three cold cache lines — table slot, entry, route snapshot).
// Arg 1: domains drawn from a Zipf(1) distribution, the shape of real outbound queues, where
// a few thousand receiving domains carry most of the mail.
template <typename Impl>
struct Million {
  static constexpr int kDomains = 1'000'000;
  static constexpr int kSequence = 1 << 22;
  Million() {
    const std::vector<std::string> all = DomainNames(kDomains);
    const size_t before = ResidentBytes();
    impl = std::make_unique<Impl>(MustParse(kGlobalFour));
    for (const auto& n : all) impl->Cycle(n);
    rss_per_domain = static_cast<double>(ResidentBytes() - before) / kDomains;
    // Rank -> domain is a random permutation, so hot domains are scattered in memory.
    std::vector<int> perm(kDomains);
    for (int i = 0; i < kDomains; ++i) perm[i] = i;
    uint64_t x = 88172645463325252ull;
    auto next = [&x] { return x ^= x << 13, x ^= x >> 7, x ^= x << 17; };
    for (size_t k = perm.size() - 1; k > 0; --k) std::swap(perm[k], perm[next() % (k + 1)]);
    // Zipf(1) by inverse CDF over harmonic numbers: H(n) ~ ln(n) + 0.5772.
    const double h_n = std::log(kDomains) + 0.5772156649;
    for (int i = 0; i < kSequence; ++i) {
      uniform.push_back(all[perm[next() % kDomains]]);
      double u = (next() >> 11) * (1.0 / 9007199254740992.0);
      int rank = static_cast<int>(std::exp(u * h_n - 0.5772156649));
      zipf.push_back(all[perm[std::clamp(rank, 1, kDomains) - 1]]);
    }
  }
  std::unique_ptr<Impl> impl;
  std::vector<std::string> uniform, zipf;
  double rss_per_domain = 0;
};

inline std::atomic<size_t> bytes_per_domain{0};

template <typename Impl>
void BM_MillionDomains(benchmark::State& state) {
  static Million<Impl>* m = new Million<Impl>();
  Run(state, *m->impl, state.range(0) == 0 ? m->uniform : m->zipf, true);
  // Every thread reports the same value; average rather than sum them.
  state.counters["rss_bytes_per_domain"] =
      benchmark::Counter(m->rss_per_domain, benchmark::Counter::kAvgThreads);
  if constexpr (std::is_same_v<Impl, LockFree>) {
    if (state.thread_index() == 0) bytes_per_domain = m->impl->selector.DomainMemoryBytes();
    state.counters["bytes_per_domain"] =
        benchmark::Counter(static_cast<double>(bytes_per_domain) / Million<Impl>::kDomains,
                           benchmark::Counter::kAvgThreads);
  }
}

// The floor for MillionDomains/0: one dependent load from DRAM (a pointer chase over 256 MiB
// in a random cycle, on huge pages like the selector's entries). A cold Acquire needs at
// least two such loads in a row — the table slot, then the entry it points to — so uniform
// traffic over a million domains cannot beat 2x this on the machine it runs on.
void BM_DependentDramLoad(benchmark::State& state) {
  constexpr size_t kBytes = size_t{256} << 20, kLines = kBytes / 64;
  static uint64_t* chain = [] {
    void* m = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) std::abort();
    (void)madvise(m, kBytes, MADV_HUGEPAGE);
    auto* p = static_cast<uint64_t*>(m);
    std::vector<uint32_t> order(kLines);
    for (size_t i = 0; i < kLines; ++i) order[i] = static_cast<uint32_t>(i);
    uint64_t x = 88172645463325252ull;
    for (size_t k = kLines - 1; k > 0; --k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::swap(order[k], order[x % (k + 1)]);
    }
    for (size_t i = 0; i < kLines; ++i) p[order[i] * 8] = order[(i + 1) % kLines] * 8;
    return p;
  }();
  uint64_t at = 0;
  for (auto _ : state) {
    at = chain[at];
    benchmark::DoNotOptimize(at);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DependentDramLoad)->Threads(1)->UseRealTime();

#define MXSCHED_BENCH(fn)                                                  \
  BENCHMARK_TEMPLATE(fn, LockFree)->Threads(1)->Threads(2)->UseRealTime(); \
  BENCHMARK_TEMPLATE(fn, Mutex)->Threads(1)->Threads(2)->UseRealTime()

MXSCHED_BENCH(BM_OneDomain);
BENCHMARK_TEMPLATE(BM_MxSpread, LockFree)
    ->Arg(200)
    ->Arg(2000)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_MxSpread, Mutex)->Arg(200)->Arg(2000)->Threads(1)->Threads(2)->UseRealTime();
MXSCHED_BENCH(BM_GlobalRoute);
BENCHMARK_TEMPLATE(BM_MillionDomains, LockFree)
    ->Arg(0)
    ->Arg(1)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();
BENCHMARK_TEMPLATE(BM_MillionDomains, Mutex)->Arg(0)->Arg(1)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace mxsched::bench

BENCHMARK_MAIN();
