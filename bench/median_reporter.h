// A console reporter that also keeps each benchmark's median CPU time per iteration, so a
// bench can print ratios measured in one run (bench/README.md).
#ifndef MXSCHED_BENCH_MEDIAN_REPORTER_H_
#define MXSCHED_BENCH_MEDIAN_REPORTER_H_

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace mxsched::bench {

struct MedianReporter : benchmark::ConsoleReporter {
  // By the benchmark's name without the aggregate suffix ("BM_X/1").
  std::map<std::string, double> median_cpu_ns;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.aggregate_name != "median") continue;
      std::string name = r.run_name.function_name;
      if (!r.run_name.args.empty()) name += "/" + r.run_name.args;
      median_cpu_ns[name] = r.GetAdjustedCPUTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  // The median of `name`, or 0 if it did not run.
  double Median(const std::string& name) const {
    auto it = median_cpu_ns.find(name);
    return it == median_cpu_ns.end() ? 0 : it->second;
  }
  // Prints "ratio LABEL (median CPU ns per Acquire+Release): R (A / B ns)" for the medians
  // of `name` over `base`, if both ran.
  void PrintRatio(const std::string& label, const std::string& name,
                  const std::string& base) const {
    const double a = Median(name), b = Median(base);
    if (a <= 0 || b <= 0) return;
    std::printf("ratio %s (median CPU ns per Acquire+Release): %.2f (%.1f / %.1f ns)\n",
                label.c_str(), a / b, a, b);
  }
};

}  // namespace mxsched::bench

#endif  // MXSCHED_BENCH_MEDIAN_REPORTER_H_
