// The selector alone, as README's "Embedding" snippet has it, built against an installed
// mxsched with no optional package present (tests/install_consumer_test.sh).
//   selector_consumer CONFIG
#include <cstdio>
#include <memory>
#include <string>

#include "mxsched/scheduler/selector.h"
#include "mxsched/version.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::printf("mxsched %s\n", MXSCHED_VERSION_STRING);
  absl::StatusOr<mxsched::Config> parsed = mxsched::LoadConfigFile(argv[1]);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  mxsched::Selector selector(std::make_shared<const mxsched::Config>(*std::move(parsed)));
  mxsched::AcquireResult r = selector.Acquire("example.com");
  if (!r.ok()) {
    std::printf("deferred: %s\n", r.deferral().ToString().c_str());
    return 1;
  }
  mxsched::Lease lease = r.TakeLease();
  std::printf("lease %s\n", lease.endpoint().ToString().c_str());
  lease.Report(mxsched::Outcome::kConnected);
  lease.Release();
  std::printf("done\n");
  return 0;
}
