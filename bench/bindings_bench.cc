// Egress bindings: Acquire + Release through a Binding_Group of 8 bindings against the same
// without bindings (the default binding), in one run (issue 21; target ≤ 1.5×). The route
// is 4 equal-preference hosts; each binding has its own Binding::Host limit on every host,
// so the group path takes the per (binding, host) and per (binding, domain) counts on
// every iteration. The program prints the ratio of the medians after Google Benchmark's
// table (bench/README.md).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench/median_reporter.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::bench {
namespace {

std::shared_ptr<const Config> BenchConfig() {
  std::string text = R"(
  routes = ( "smtp://127.0.1.1?pref=10" "smtp://127.0.1.2?pref=10"
             "smtp://127.0.1.3?pref=10" "smtp://127.0.1.4?pref=10" )
  max_outbound_connections = 1000
  Binding_Group "pool" {
)";
  for (int b = 0; b < 8; ++b) {
    text += StrCat("    Binding \"b", b, "\" { bind_address = \"127.0.2.", b + 1, "\"");
    for (int h = 1; h <= 4; ++h) {
      text += StrCat(" Host \"127.0.1.", h, "\" { max_outbound_connections = 100 }");
    }
    text += " }\n";
  }
  text += "  }\n";
  absl::StatusOr<Config> c = ParseConfig(text, "bench");
  if (!c.ok()) {
    std::fprintf(stderr, "bench config: %s\n", std::string(c.status().message()).c_str());
    std::abort();
  }
  return std::make_shared<const Config>(*std::move(c));
}

Selector& Shared() {
  static Selector* s = new Selector(BenchConfig());
  return *s;
}

// Arg 0: no binding (today's path); 1: the group of 8.
void BM_AcquireRelease(benchmark::State& state) {
  Selector& s = Shared();
  const AcquireOptions options{.binding = state.range(0) == 0 ? "" : "pool"};
  const std::string domain = StrCat("t", state.thread_index(), ".example");
  for (auto _ : state) {
    AcquireResult r = s.Acquire(domain, options);
    benchmark::DoNotOptimize(r.ok());
  }
}
BENCHMARK(BM_AcquireRelease)->Arg(0)->Arg(1)->Repetitions(5)->ReportAggregatesOnly(true);

}  // namespace
}  // namespace mxsched::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  mxsched::bench::MedianReporter reporter;  // the ratio comes from this run's medians
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatio("group-of-8 / no binding", "BM_AcquireRelease/1", "BM_AcquireRelease/0");
  benchmark::Shutdown();
  return 0;
}
