// Egress bindings at run time (docs/DESIGN.md §4 "Bindings" for the configuration, §1 rule 13
// for selection, limits and reachability): one `Binding` per configured name (never removed,
// ids dense from 1; 0 is the default binding), an `Egress` — what Acquire was asked for: one
// binding or a Binding_Group — and the state kept per (binding, host) and per (binding,
// domain), created on first use only, so memory follows what is used.
//
// Thread-safety: Binding::Find / GetOrCreate, BindingHost and DomainBindingCounts are
// lock-free and safe from any thread. BindingRegistry::Lookup is lock-free inside an
// epoch::EpochGuard; Configure takes a mutex (reload). Memory follows the live set
// (docs/DESIGN.md §1 rule 13): an Egress lives while it is published or a lease or queued
// ticket holds it (Egress::refs), a Binding while it is configured or an Egress lives that
// has it (its BindingHost states go with it); BindingRegistry::Collect frees the rest.
// Internal: not installed.
#ifndef MXSCHED_SCHEDULER_BINDINGS_H_
#define MXSCHED_SCHEDULER_BINDINGS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/base/mutex.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched {

// Connections through one binding to one host: its Binding::Host limit and its own failure
// memory (a receiver that blocks one source address does not take the host away from the
// other bindings). 64 bytes, created on the first admission through the binding.
struct alignas(64) BindingHost {
  std::atomic<int32_t> active{0};
  std::atomic<int32_t> limit{kUnlimited};
  std::atomic<int32_t> peak{0};
  std::atomic<uint32_t> version{0};  // config version `limit` was computed for
  std::atomic<int64_t> failed_until{0};
  std::atomic<bool> probe_in_flight{false};
  std::atomic<uint32_t> consecutive_failures{0};
  std::atomic<uint32_t> connections{0};  // slots taken (statistics, wraps)
  std::atomic<uint32_t> failures{0};     // failed connections through it (statistics)
  // The host this state belongs to: host indexes are reused after a host is evicted, so a
  // state found for another host is reset first (Binding::GetOrCreate).
  std::atomic<const HostState*> host{nullptr};

  // Like HostState::TryAdmit: reachable (or the one half-open probe after the retry window)
  // and below the limit; never passes it.
  Admission TryAdmit(int64_t now_nanos);
  void Release(bool was_probe) {
    if (was_probe) probe_in_flight.store(false, std::memory_order_release);
    active.fetch_sub(1, std::memory_order_acq_rel);
  }
  bool Failed(int64_t now_nanos) const {
    const int64_t fu = failed_until.load(std::memory_order_acquire);
    return fu != 0 && (now_nanos < fu || probe_in_flight.load(std::memory_order_acquire));
  }
  void RecordSuccess() {
    failed_until.store(0, std::memory_order_release);
    consecutive_failures.store(0, std::memory_order_relaxed);
  }
  // "up", "failed", "probe_due" or "probing", as the host's state (admin/views.h).
  std::string_view StateName(int64_t now_nanos) const {
    const int64_t fu = failed_until.load(std::memory_order_acquire);
    if (fu == 0) return "up";
    if (now_nanos < fu) return "failed";
    return probe_in_flight.load(std::memory_order_acquire) ? "probing" : "probe_due";
  }
  void RecordFailure(int64_t now_nanos, int64_t retry_nanos) {
    failures.fetch_add(1, std::memory_order_relaxed);
    consecutive_failures.fetch_add(1, std::memory_order_relaxed);
    failed_until.store(std::max<int64_t>(1, now_nanos + retry_nanos), std::memory_order_release);
  }
};
static_assert(sizeof(BindingHost) == 64);

// The source addresses of a binding (immutable; a reload publishes a new one).
struct BindingAddresses {
  std::optional<IpAddress> v4, v6;
  bool any = true;  // no bind_address: the kernel chooses, for either family
  // The address to bind for a destination of this family; *usable false: the binding has
  // no address of that family (the host is not used through it).
  const IpAddress* For(bool v4_host, bool* usable) const {
    *usable = any || (v4_host ? v4.has_value() : v6.has_value());
    if (any) return nullptr;
    return v4_host ? (v4 ? &*v4 : nullptr) : (v6 ? &*v6 : nullptr);
  }
  // "v4 v6", either alone, or "" (the kernel chooses): for views.
  std::string ToString() const;
};

class Binding {
 public:
  Binding(uint32_t id, std::string name);
  ~Binding();
  uint32_t id() const { return id_; }
  const std::string& name() const { return name_; }
  const BindingAddresses& addresses() const {
    return *addresses_.load(std::memory_order_acquire);
  }
  void SetAddresses(const std::vector<IpAddress>& addresses) ABSL_LOCKS_EXCLUDED(mu_);

  // The state for `host` through this binding, or null if never used (lock-free: two loads).
  BindingHost* Find(const HostState& host) const {
    const uint32_t i = host.index();
    if (i >= kChunks * kChunk) return nullptr;
    const std::atomic<Chunk*>* table = chunks_.load(std::memory_order_acquire);
    if (table == nullptr) return nullptr;
    Chunk* c = table[i / kChunk].load(std::memory_order_acquire);
    return c == nullptr ? nullptr : c->hosts[i % kChunk].load(std::memory_order_acquire);
  }
  // Creates it on first use (CAS-installed; a racing loser frees its copy); a state left by
  // an evicted host whose index `host` reuses is reset (its counts are 0: eviction takes
  // idle hosts only). Null for a host index beyond the table (over a million hosts).
  BindingHost* GetOrCreate(const HostState& host);
  // Every (binding, host) state in use, with its host index.
  template <typename F>
  void ForEachHost(F&& fn) const {
    const std::atomic<Chunk*>* table = chunks_.load(std::memory_order_acquire);
    if (table == nullptr) return;
    for (uint32_t c = 0; c < kChunks; ++c) {
      Chunk* chunk = table[c].load(std::memory_order_acquire);
      if (chunk == nullptr) continue;
      for (uint32_t i = 0; i < kChunk; ++i) {
        if (BindingHost* h = chunk->hosts[i].load(std::memory_order_acquire)) fn(c * kChunk + i, *h);
      }
    }
  }
  size_t MemoryBytes() const;

 private:
  static constexpr uint32_t kChunk = 512;
  static constexpr uint32_t kChunks = 2048;  // 1,048,576 hosts
  struct Chunk {
    std::atomic<BindingHost*> hosts[kChunk] = {};
  };
  const uint32_t id_;
  const std::string name_;
  std::atomic<const BindingAddresses*> addresses_;
  Mutex mu_;
  std::vector<std::unique_ptr<BindingAddresses>> address_history_ ABSL_GUARDED_BY(mu_);
  // The chunk table (kChunks pointers, 16 KiB), made on the binding's first admission: a
  // binding never used holds none (100,000 configured bindings took 1.7 GB when each had
  // its table from the start).
  std::atomic<std::atomic<Chunk*>*> chunks_{nullptr};
};

// What a session is sent through: one binding, or a Binding_Group (its bindings, spread
// evenly by `cursor`). Immutable but for the cursor; a reload makes new ones.
struct Egress {
  std::string name;
  bool is_group = false;
  std::vector<Binding*> members;  // at least one
  mutable std::atomic<uint32_t> cursor{0};
  // Leases and queued tickets that hold it: a reload that replaces it frees it once none
  // does (and no Acquire that read the old name map is still running). Taken while it is
  // reachable: by an admission inside an EpochGuard, or under the waiter queues' mutex.
  mutable std::atomic<int64_t> refs{0};
  uint64_t replaced_in = 0;  // 0: published; else the registry generation that replaced it
  void Ref() const { refs.fetch_add(1, std::memory_order_relaxed); }
  void Unref() const { refs.fetch_sub(1, std::memory_order_release); }
};

// Connections to one domain through each binding (Momentum: max_outbound_connections is per
// binding). Hangs off the DomainEntry, made on the domain's first bound admission and freed
// with the entry; covers binding ids [base, base + n), further ids in `next`.
struct DomainBindingCounts {
  struct Slot {
    std::atomic<int32_t> active{0};
    std::atomic<int32_t> limit{0};
    std::atomic<uint32_t> version{0};  // config version `limit` was computed for
  };
  // Connections of this domain through any named binding (the default binding's count is
  // DomainEntry::active minus this).
  std::atomic<int32_t> bound{0};
  uint32_t base = 0, n = 0;
  std::atomic<DomainBindingCounts*> next{nullptr};
  std::unique_ptr<Slot[]> slots;
  // The slot of binding `id`, created (with a further block) if needed.
  static Slot* Get(std::atomic<DomainBindingCounts*>& head, uint32_t id, uint32_t hint_n);
  // The slot of binding `id` if one was made, else null; creates nothing (views).
  static const Slot* Find(const std::atomic<DomainBindingCounts*>& head, uint32_t id) {
    for (const DomainBindingCounts* c = head.load(std::memory_order_acquire); c != nullptr;
         c = c->next.load(std::memory_order_acquire)) {
      if (id >= c->base && id < c->base + c->n) return &c->slots[id - c->base];
    }
    return nullptr;
  }
  static int32_t Bound(const std::atomic<DomainBindingCounts*>& head) {
    const DomainBindingCounts* c = head.load(std::memory_order_acquire);
    return c == nullptr ? 0 : c->bound.load(std::memory_order_seq_cst);
  }
  static void FreeChain(DomainBindingCounts* c);
};

// Every binding and egress by name, for the selector.
class BindingRegistry {
 public:
  BindingRegistry();
  ~BindingRegistry();
  // Applies a configuration: new bindings get ids (a freed binding's id is reused),
  // addresses are replaced, the name map is rebuilt; an egress whose members are unchanged
  // is kept (its cursor too). What it replaced waits for Collect. Safe while Acquires run.
  void Configure(const Config& config) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees the egresses a reload replaced that no lease or ticket holds any more and no
  // Acquire can still reach, then the bindings no configuration and no live egress has
  // (through the epoch, Freed::Retire: views may still be reading them). REQUIRES: no
  // ticket takes or drops a ref meanwhile — the caller holds the waiter queues' mutex
  // (SelectorImpl::CollectBindings).
  struct Freed {
    std::vector<std::unique_ptr<Egress>> egresses;
    std::vector<std::unique_ptr<Binding>> bindings;
    size_t size() const { return egresses.size() + bindings.size(); }
    // Hands them to the epoch (call outside the caller's locks: a reclamation pass may run
    // other objects' deleters).
    void Retire();
  };
  Freed Collect() ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a reload left anything for Collect (one atomic load).
  bool has_replaced() const { return has_replaced_.load(std::memory_order_acquire); }
  // Objects alive (published or held): for tests and memory accounting.
  struct Live {
    size_t bindings = 0, egresses = 0;
  };
  Live live() const ABSL_LOCKS_EXCLUDED(mu_);
  // The binding or group called `name`, or null. REQUIRES: an epoch::EpochGuard. A thread
  // asking for the same name again under the same map gets it without hashing the name
  // (a one-entry cache per thread: an embedder sends a run of messages through one binding).
  const Egress* Lookup(std::string_view name) const;
  // The egress of an unnamed Acquire: a Binding or Binding_Group named "default", or null
  // (the default binding: no binding state at all).
  const Egress* default_egress() const { return default_.load(std::memory_order_acquire); }
  // The source address of a connection through no binding (no Binding or Binding_Group
  // called "default"): the global bind_address of the host's family, or null (none of that
  // family: the kernel chooses). docs/DESIGN.md §1 rule 13.
  const IpAddress* DefaultSource(bool v4_host) const {
    const BindingAddresses* a = default_addresses_.load(std::memory_order_acquire);
    if (ABSL_PREDICT_TRUE(a == nullptr)) return nullptr;
    const std::optional<IpAddress>& ip = v4_host ? a->v4 : a->v6;
    return ip ? &*ip : nullptr;
  }
  // Binding ids are below this (ids of freed bindings are reused, so it follows the most
  // bindings alive at once).
  uint32_t size() const { return next_id_.load(std::memory_order_acquire); }
  // Every binding alive (configured, or replaced but still held), by id. The pointers stay
  // valid while the caller is inside an epoch::EpochGuard.
  std::vector<const Binding*> All() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t MemoryBytes() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The published names; `generation` is unique per map (over every registry), so a
  // thread's cache of its last lookup (Lookup) cannot mistake another map for it.
  struct Map {
    absl::flat_hash_map<std::string, const Egress*> egress;
    uint64_t generation = 0;
  };
  mutable Mutex mu_;
  // Configured bindings by name; bindings a reload dropped, until Collect frees them.
  absl::flat_hash_map<std::string, std::unique_ptr<Binding>> bindings_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Binding>> dropped_ ABSL_GUARDED_BY(mu_);
  // Published egresses by name; replaced ones, until Collect frees them.
  absl::flat_hash_map<std::string, std::unique_ptr<Egress>> egresses_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Egress>> replaced_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  // The newest generation whose replaced map no reader holds any more (set from the epoch's
  // reclamation, which may run after the registry is gone: shared).
  std::shared_ptr<std::atomic<uint64_t>> quiesced_ =
      std::make_shared<std::atomic<uint64_t>>(0);
  std::atomic<bool> has_replaced_{false};
  std::atomic<const Map*> map_{nullptr};
  std::atomic<const Egress*> default_{nullptr};
  // The global bind_address (null: none). Kept after a reload replaces it, as a binding's
  // addresses are (a few bytes per reload): an Acquire may still be reading it.
  std::atomic<const BindingAddresses*> default_addresses_{nullptr};
  std::vector<std::unique_ptr<BindingAddresses>> default_address_history_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint32_t> next_id_{1};
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_BINDINGS_H_
