#include "mxsched/scheduler/host_registry.h"

namespace mxsched {

HostState::HostState(Endpoint endpoint, std::string name, int32_t limit, int64_t retry_nanos)
    : limit_(limit), retry_nanos_(retry_nanos), endpoint_(endpoint), name_(std::move(name)) {}

void HostState::RaisePeak(int32_t value) {
  int32_t peak = peak_.load(std::memory_order_relaxed);
  while (value > peak &&
         !peak_.compare_exchange_weak(peak, value, std::memory_order_relaxed)) {
  }
}

void HostState::RecordConnectLatency(int64_t nanos) {
  size_t i = 0;
  while (i < kConnectLatencyBoundsNanos.size() && nanos > kConnectLatencyBoundsNanos[i]) ++i;
  latency_buckets_[i].fetch_add(1, std::memory_order_relaxed);
  latency_sum_nanos_.fetch_add(nanos, std::memory_order_relaxed);
}

HostState::LatencyCounts HostState::connect_latency() const {
  LatencyCounts c;
  for (size_t i = 0; i < c.buckets.size(); ++i) {
    c.buckets[i] = latency_buckets_[i].load(std::memory_order_relaxed);
  }
  c.sum_nanos = latency_sum_nanos_.load(std::memory_order_relaxed);
  return c;
}

void HostState::RecordSuccess() {
  successes_.fetch_add(1, std::memory_order_relaxed);
  // Plain loads first: on a healthy host the common case writes nothing shared.
  if (consecutive_failures_.load(std::memory_order_relaxed) != 0) {
    consecutive_failures_.store(0, std::memory_order_relaxed);
  }
  if (failed_until_.load(std::memory_order_relaxed) != 0) {
    failed_until_.store(0, std::memory_order_release);
  }
  if (probe_in_flight_.load(std::memory_order_relaxed)) {
    probe_in_flight_.store(false, std::memory_order_release);
  }
}

void HostState::RecordFailure(int64_t now_nanos) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  consecutive_failures_.fetch_add(1, std::memory_order_relaxed);
  last_failure_.store(now_nanos, std::memory_order_relaxed);
  int64_t until = now_nanos + retry_nanos_.load(std::memory_order_relaxed);
  if (until == 0) until = 1;  // 0 means reachable
  failed_until_.store(until, std::memory_order_release);
  probe_in_flight_.store(false, std::memory_order_release);
}

HostState* HostRegistry::GetOrCreate(const Endpoint& endpoint, std::string_view name,
                                     int32_t limit, int64_t retry_nanos) {
  MutexLock lock(&mu_);
  auto& slot = hosts_[endpoint];
  if (slot == nullptr) {
    slot = std::make_unique<HostState>(endpoint,
                                       name.empty() ? endpoint.address.ToString()
                                                    : std::string(name),
                                       limit, retry_nanos);
  } else {
    slot->Configure(limit, retry_nanos);
  }
  return slot.get();
}

HostState* HostRegistry::Find(const Endpoint& endpoint) const {
  MutexLock lock(&mu_);
  auto it = hosts_.find(endpoint);
  return it == hosts_.end() ? nullptr : it->second.get();
}

size_t HostRegistry::size() const {
  MutexLock lock(&mu_);
  return hosts_.size();
}

void HostRegistry::ForEach(const std::function<void(const HostState&)>& fn) const {
  MutexLock lock(&mu_);
  for (const auto& [ep, h] : hosts_) fn(*h);
}

std::vector<const HostState*> HostRegistry::Snapshot() const {
  MutexLock lock(&mu_);
  std::vector<const HostState*> out;
  out.reserve(hosts_.size());
  for (const auto& [ep, h] : hosts_) out.push_back(h.get());
  return out;
}

}  // namespace mxsched
