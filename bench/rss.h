// Resident set size of this process, for the memory benchmarks (churn_bench, host_churn_bench).
#ifndef MXSCHED_BENCH_RSS_H_
#define MXSCHED_BENCH_RSS_H_

#include <cstdlib>
#include <fstream>
#include <string>

namespace mxsched::bench {

// VmRSS from /proc/self/status in KiB, or -1 if it cannot be read.
inline long RssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

}  // namespace mxsched::bench

#endif  // MXSCHED_BENCH_RSS_H_
