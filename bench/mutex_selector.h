// MutexSelector: the straightforward implementation the lock-free Selector is measured
// against — a reader/writer-locked map of domains, a mutex per domain around its route and
// rotation, a mutex per host around its counter, a mutex around the server count.
// Same rules (strict preference, rotation, host/domain/server limits) for literal-address
// routes only; no DNS, no failure tracking — the bench needs neither.
//
// It uses std::mutex rather than absl::Mutex: Debian's Abseil is built with deadlock
// detection on, which makes absl::Mutex over a million objects pathologically slow and would
// flatter the comparison. Thread-safety: safe for concurrent use by multiple threads.
#ifndef MXSCHED_BENCH_MUTEX_SELECTOR_H_
#define MXSCHED_BENCH_MUTEX_SELECTOR_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <mutex>
#include <shared_mutex>

#include "absl/container/flat_hash_map.h"
#include "mxsched/scheduler/config.h"

namespace mxsched::bench {

class MutexSelector {
 public:
  struct Host {
    std::mutex mu;
    int active = 0;  // guarded by mu
    int limit = 0;
    Endpoint endpoint;
  };
  struct Domain {
    std::mutex mu;
    int active = 0;  // guarded by mu
    int limit = 0;
    uint32_t cursor = 0;  // guarded by mu
    std::vector<std::vector<Host*>> tiers;
  };
  struct Lease {
    Host* host = nullptr;
    Domain* domain = nullptr;
  };

  explicit MutexSelector(std::shared_ptr<const Config> config) : config_(std::move(config)) {}

  // Returns a lease with host == nullptr when deferred.
  Lease Acquire(std::string_view domain);
  void Release(const Lease& lease);

 private:
  Domain* GetDomain(std::string_view name);
  Host* GetHost(const Endpoint& ep);

  std::shared_ptr<const Config> config_;
  std::shared_mutex map_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Domain>> domains_;  // guarded by map_mu_
  std::mutex hosts_mu_;
  absl::flat_hash_map<Endpoint, std::unique_ptr<Host>> hosts_;  // guarded by hosts_mu_
  std::mutex server_mu_;
  int server_active_ = 0;  // guarded by server_mu_
};

}  // namespace mxsched::bench

#endif  // MXSCHED_BENCH_MUTEX_SELECTOR_H_
