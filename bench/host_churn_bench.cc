// Host churn (issue 20 item 1, docs/DESIGN.md §5 and §8): N domains whose routes point at
// their own address each (the case of 200,000 domains whose MXs point at themselves), used
// once each (Acquire + Release) with domain_idle_timeout = 60 s and a manual clock advancing
// 10 s per 1,000 domains, so ~6,000 are live at a time. Prints every 20,000 domains: resident
// domains and host states, hosts created and evicted, the size of a /metrics scrape
// (MetricsCollector::AppendText, per-host series capped at the default 500) and its CPU time,
// and the process RSS. With host eviction and the series cap, hosts, scrape and RSS level off.
//
//   ./build/host_churn_bench [domains=200000]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "mxsched/admin/metrics.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/epoch.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/scheduler/selector.h"
#include "bench/rss.h"

using mxsched::bench::RssKb;

int main(int argc, char** argv) {
  using namespace mxsched;
  const long total = argc > 1 ? std::atol(argv[1]) : 200'000;
  std::string text = "domain_idle_timeout = 60\n";
  for (long i = 0; i < total; ++i) {
    // 10.x.y.z: one address per domain (literal routes are used as written).
    text += StrCat("Domain \"h", i, ".example\" { routes = ( \"10.", i >> 16 & 255, ".",
                   i >> 8 & 255, ".", i & 255, "\" ) }\n");
  }
  absl::StatusOr<Config> c = ParseConfig(text, "host-churn");
  if (!c.ok()) {
    std::fprintf(stderr, "%s\n", std::string(c.status().message()).c_str());
    return 2;
  }
  text = std::string();
  ManualClock clock;
  Selector selector(std::make_shared<const Config>(*std::move(c)), {.clock = &clock});
  admin::MetricsCollector metrics(&selector);
  std::printf("%9s %9s %9s %9s %9s %12s %9s %9s\n", "domains", "resident", "hosts", "created",
              "evicted", "scrape_B", "scrape_ms", "rss_MB");
  for (long i = 0; i < total; ++i) {
    AcquireResult r = selector.Acquire(StrCat("h", i, ".example"));
    if (!r.ok()) {
      std::fprintf(stderr, "h%ld: %s\n", i, r.deferral().ToString().c_str());
      return 1;
    }
    if (i % 1000 == 999) clock.AdvanceSeconds(10);
    if ((i + 1) % 20'000 == 0) {
      std::string scrape;
      const auto t0 = std::chrono::steady_clock::now();
      metrics.AppendText(&scrape);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const HostRegistry& reg = selector.registry();
      std::printf("%9ld %9zu %9zu %9llu %9llu %12zu %9.1f %9.1f\n", i + 1, selector.domain_count(),
                  reg.size(), static_cast<unsigned long long>(reg.created()),
                  static_cast<unsigned long long>(reg.evicted()), scrape.size(), ms,
                  RssKb() / 1024.0);
    }
  }
  return 0;
}
