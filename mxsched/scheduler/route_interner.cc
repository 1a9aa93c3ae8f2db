#include "mxsched/scheduler/route_interner.h"

#include "mxsched/scheduler/epoch.h"

namespace mxsched {

RouteInterner::~RouteInterner() {
  for (Shard& sh : shards_) {
    MutexLock lock(&sh.mu);
    for (RouteSnapshot* s : sh.set) RouteSnapshot::Destroy(s);
    sh.set.clear();
  }
}

const RouteSnapshot* RouteInterner::Intern(
    std::unique_ptr<RouteSnapshot, RouteSnapshot::Deleter> planned) {
  planned->hash_ = planned->ContentHash();
  Shard& sh = ShardFor(planned->hash_);
  MutexLock lock(&sh.mu);
  auto [it, inserted] = sh.set.insert(planned.get());
  RouteSnapshot* s = *it;
  if (inserted) planned.release();  // else: an equal one is shared, `planned` is freed
  ++s->refs_;
  return s;
}

void RouteInterner::Unref(const RouteSnapshot* cs) {
  if (cs == nullptr) return;
  auto* s = const_cast<RouteSnapshot*>(cs);
  {
    Shard& sh = ShardFor(s->hash_);
    MutexLock lock(&sh.mu);
    if (--s->refs_ > 0) return;
    sh.set.erase(s);
  }
  // Outside the shard mutex: Retire may run deleters (an evicted entry's deleter calls Unref).
  epoch::Retire(s, [](void* p) { RouteSnapshot::Destroy(static_cast<RouteSnapshot*>(p)); });
}

size_t RouteInterner::size() const {
  size_t n = 0;
  for (const Shard& sh : shards_) {
    MutexLock lock(&sh.mu);
    n += sh.set.size();
  }
  return n;
}

void RouteInterner::ForEachHost(const std::function<void(const HostState*)>& fn) const {
  for (const Shard& sh : shards_) {
    MutexLock lock(&sh.mu);
    for (const RouteSnapshot* s : sh.set) {
      for (size_t t = 0; t < s->num_tiers(); ++t) {
        for (const HostState* h : s->TierHosts(t)) fn(h);
      }
    }
  }
}

size_t RouteInterner::bytes() const {
  size_t n = sizeof(*this);
  for (const Shard& sh : shards_) {
    MutexLock lock(&sh.mu);
    n += sh.set.capacity() * (sizeof(RouteSnapshot*) + 1);
    for (const RouteSnapshot* s : sh.set) n += s->bytes();
  }
  return n;
}

}  // namespace mxsched
