// Scrape cost of the admin library's metrics (DESIGN §8): MetricsCollector::Collect() and the
// text exposition for a process that has talked to N destinations, against a baseline in the
// same run: the same series kept the conventional prometheus-cpp way (a Registry of Gauge /
// Counter / Histogram objects updated on the data path), collected and serialized.
// Target: a scrape of 10,000 hosts under 50 ms. Results in bench/README.md.
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/admin/metrics.h"
#include "mxsched/base/strings.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace mxsched::bench {
namespace {

std::shared_ptr<const Config> EmptyConfig() {
  return std::make_shared<const Config>(*ParseConfig("", "bench"));
}

Endpoint HostEndpoint(int64_t i) {
  return Endpoint{
      *IpAddress::Parse(StrCat("127.", 100 + i / 62500, ".", (i / 250) % 250, ".", 1 + i % 250)),
      25};
}

// A selector whose registry holds `hosts` destinations with some traffic on each.
struct Populated {
  explicit Populated(int64_t hosts) : selector(EmptyConfig()) {
    for (int64_t i = 0; i < hosts; ++i) {
      HostState* h = selector.registry().GetOrCreate(
          HostEndpoint(i), StrCat("mx", i % 1000, ".provider", i / 1000, ".example"),
          HostConfig{.limit = 32, .retry_nanos = 120 * kNanosPerSecond});
      for (int k = 0; k < 5; ++k) {
        h->CountOutcome(static_cast<size_t>(Outcome::kConnected));
        h->RecordConnectLatency(300'000 * (k + 1) * (1 + i % 7));
      }
      if (i % 10 == 0) h->CountOutcome(static_cast<size_t>(Outcome::kTimedOut));
    }
  }
  Selector selector;
};

void BM_Scrape(benchmark::State& state) {
  Populated p(state.range(0));
  admin::MetricsCollector collector(&p.selector);
  size_t bytes = 0;
  for (auto _ : state) {
    std::string text;
    collector.AppendText(&text);
    bytes = text.size();
    benchmark::DoNotOptimize(text);
  }
  state.counters["bytes"] = static_cast<double>(bytes);
  state.counters["ms_per_scrape"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 1e-3,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The prometheus-cpp Collectable path: Collect() then TextSerializer.
void BM_CollectAndSerialize(benchmark::State& state) {
  Populated p(state.range(0));
  admin::MetricsCollector collector(&p.selector);
  for (auto _ : state) benchmark::DoNotOptimize(admin::SerializeText(collector.Collect()));
  state.counters["ms_per_scrape"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 1e-3,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Baseline: the same series as prometheus-cpp metric objects in a Registry.
void BM_RegistryBaseline(benchmark::State& state) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& active = prometheus::BuildGauge()
                     .Name("mxsched_host_active_connections")
                     .Help("a")
                     .Register(*registry);
  auto& limit =
      prometheus::BuildGauge().Name("mxsched_host_connection_limit").Help("l").Register(*registry);
  auto& reachable =
      prometheus::BuildGauge().Name("mxsched_host_reachable").Help("r").Register(*registry);
  auto& failures = prometheus::BuildGauge()
                       .Name("mxsched_host_consecutive_failures")
                       .Help("f")
                       .Register(*registry);
  auto& retry = prometheus::BuildGauge()
                    .Name("mxsched_host_retry_after_seconds")
                    .Help("t")
                    .Register(*registry);
  auto& outcomes = prometheus::BuildCounter()
                       .Name("mxsched_host_connections_total")
                       .Help("o")
                       .Register(*registry);
  auto& latency = prometheus::BuildHistogram()
                      .Name("mxsched_host_connect_duration_seconds")
                      .Help("d")
                      .Register(*registry);
  const prometheus::Histogram::BucketBoundaries bounds{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                       0.05,  0.1,    0.25,  1,    5};
  for (int64_t i = 0; i < state.range(0); ++i) {
    prometheus::Labels labels{{"host", HostEndpoint(i).ToString()},
                              {"mx", StrCat("mx", i % 1000, ".provider", i / 1000, ".example")}};
    active.Add(labels).Set(1);
    limit.Add(labels).Set(32);
    reachable.Add(labels).Set(1);
    failures.Add(labels).Set(0);
    retry.Add(labels).Set(0);
    for (const char* o : {"connected", "connect_failed", "timed_out", "greeting_rejected",
                          "protocol_error", "local_error"}) {
      prometheus::Labels ol = labels;
      ol["outcome"] = o;
      outcomes.Add(ol).Increment(5);
    }
    auto& h = latency.Add(labels, bounds);
    for (int k = 0; k < 5; ++k) h.Observe(0.0003 * (k + 1));
  }
  for (auto _ : state) {
    std::string text = admin::SerializeText(registry->Collect());
    benchmark::DoNotOptimize(text);
  }
  state.counters["ms_per_scrape"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 1e-3,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

BENCHMARK(BM_Scrape)->Arg(100)->Arg(10000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CollectAndSerialize)->Arg(10000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RegistryBaseline)->Arg(10000)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mxsched::bench

BENCHMARK_MAIN();
