// Rate throttles (docs/DESIGN.md §12): Acquire + Release with no throttle, with one (global)
// and with three (global, Domain, Host) in one run (issue 22; target ≤ 1.3× with three).
// Every throttle allows 1,000,000 starts per second and the clock moves past the spacing
// between iterations, so every iteration is granted at once and reserves its instant on each
// throttle (the grant path: one CAS per throttle), never the deferral path. The program prints the ratios of the medians after
// Google Benchmark's table (bench/README.md).
#include <cstdio>
#include <memory>
#include <string>

#include "bench/median_reporter.h"
#include "benchmark/benchmark.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::bench {
namespace {

std::shared_ptr<const Config> BenchConfig(int throttles) {
  std::string text = R"(
  routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
             "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
  max_outbound_connections = 1000
)";
  const std::string rate = "outbound_throttle_connections = \"1000000\"";
  if (throttles >= 1) text += rate + "\n";
  if (throttles >= 3) {
    text += StrCat("Domain \"t0.example\" { ", rate, " }\n");
    for (int h = 1; h <= 4; ++h) text += StrCat("Host \"127.0.1.", h, "\" { ", rate, " }\n");
  }
  absl::StatusOr<Config> c = ParseConfig(text, "bench");
  if (!c.ok()) {
    std::fprintf(stderr, "bench config: %s\n", std::string(c.status().message()).c_str());
    std::abort();
  }
  return std::make_shared<const Config>(*std::move(c));
}

// Arg: how many throttles apply to each start (0, 1 or 3). The clock moves 2 µs per
// iteration (in every variant), past each throttle's 1.02 µs spacing: every start goes at
// once, the common case of a throttle that is not the bottleneck right now.
void BM_AcquireRelease(benchmark::State& state) {
  ManualClock clock;
  Selector s(BenchConfig(static_cast<int>(state.range(0))), SelectorOptions{.clock = &clock});
  for (auto _ : state) {
    clock.Advance(2000);
    AcquireResult r = s.Acquire("t0.example");
    if (!r.ok()) {
      state.SkipWithError("a start was refused: the bench must measure the grant path");
      break;
    }
  }
}
BENCHMARK(BM_AcquireRelease)->Arg(0)->Arg(1)->Arg(3)->Repetitions(5)->ReportAggregatesOnly(true);

}  // namespace
}  // namespace mxsched::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mxsched::bench::MedianReporter reporter;  // the ratios come from this run's medians
  benchmark::RunSpecifiedBenchmarks(&reporter);
  for (int n : {1, 3}) {
    reporter.PrintRatio(std::to_string(n) + " throttle(s) / none",
                        "BM_AcquireRelease/" + std::to_string(n), "BM_AcquireRelease/0");
  }
  benchmark::Shutdown();
  return 0;
}
