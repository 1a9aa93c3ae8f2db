// Eviction under churn (docs/DESIGN.md §5): 10,000,000 distinct domains pass through one selector,
// each used once (Acquire + Release), with domain_idle_timeout = 10 s and a manual clock
// advancing 1 s per 100,000 domains — so about 1,000,000 domains are live (not yet idle)
// at any time. Prints resident domains and the process RSS every 500,000 domains: with
// eviction the RSS levels off once the first idle domains are swept.
//
//   ./build/churn_bench [total=10000000] [per_second=100000] [idle_s=10]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"
#include "bench/rss.h"

using mxsched::bench::RssKb;

int main(int argc, char** argv) {
  using namespace mxsched;
  const long total = argc > 1 ? std::atol(argv[1]) : 10'000'000;
  const long per_second = argc > 2 ? std::atol(argv[2]) : 100'000;
  const long idle_s = argc > 3 ? std::atol(argv[3]) : 10;
  absl::StatusOr<Config> c =
      ParseConfig(StrCat("routes = ( \"smtp://127.0.1.1?pref=10\" \"smtp://127.0.1.2?pref=10\" )\n",
                         "domain_idle_timeout = ", idle_s, "\n"),
                  "churn");
  if (!c.ok()) return 2;
  ManualClock clock;
  SplitMixRandom random(1);
  Selector selector(std::make_shared<const Config>(*std::move(c)),
                    {.clock = &clock, .random = &random});
  std::printf("domains_seen\tresident_domains\trss_mib\n");
  std::printf("0\t0\t%.1f\n", RssKb() / 1024.0);
  for (long i = 0; i < total; ++i) {
    AcquireResult r = selector.Acquire(StrCat("churn", i, ".example"));
    if (!r.ok()) {
      std::fprintf(stderr, "deferred: %s\n", r.deferral().ToString().c_str());
      return 1;
    }
    if (i % per_second == per_second - 1) clock.AdvanceSeconds(1);
    if (i % 500'000 == 499'999) {
      std::printf("%ld\t%zu\t%.1f\n", i + 1, selector.domain_count(), RssKb() / 1024.0);
      std::fflush(stdout);
    }
  }
  return 0;
}
