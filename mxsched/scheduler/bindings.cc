#include "mxsched/scheduler/bindings.h"

#include <algorithm>
#include <functional>
#include <cstring>

#include "absl/container/flat_hash_set.h"

#include "mxsched/scheduler/domain_table.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {

Admission BindingHost::TryAdmit(int64_t now_nanos) {
  bool probe = false;
  const int64_t fu = failed_until.load(std::memory_order_acquire);
  if (ABSL_PREDICT_FALSE(fu != 0)) {
    if (now_nanos < fu) return Admission::kDown;
    if (probe_in_flight.exchange(true, std::memory_order_acq_rel)) return Admission::kDown;
    probe = true;
  }
  const int32_t lim = limit.load(std::memory_order_relaxed);
  int32_t a = active.load(std::memory_order_relaxed);
  do {
    if (a >= lim) {
      if (probe) probe_in_flight.store(false, std::memory_order_release);
      return Admission::kFull;
    }
  } while (!active.compare_exchange_weak(a, a + 1, std::memory_order_acq_rel,
                                         std::memory_order_relaxed));
  int32_t p = peak.load(std::memory_order_relaxed);
  while (a + 1 > p && !peak.compare_exchange_weak(p, a + 1)) {
  }
  connections.fetch_add(1, std::memory_order_relaxed);
  return probe ? Admission::kProbe : Admission::kAdmitted;
}

Binding::Binding(uint32_t id, std::string name)
    : id_(id), name_(std::move(name)) {
  auto a = std::make_unique<BindingAddresses>();
  addresses_.store(a.get(), std::memory_order_release);
  MutexLock lock(&mu_);
  address_history_.push_back(std::move(a));
}

Binding::~Binding() {
  std::atomic<Chunk*>* table = chunks_.load(std::memory_order_acquire);
  if (table == nullptr) return;
  for (uint32_t c = 0; c < kChunks; ++c) {
    Chunk* chunk = table[c].load(std::memory_order_acquire);
    if (chunk == nullptr) continue;
    for (auto& h : chunk->hosts) delete h.load(std::memory_order_acquire);
    delete chunk;
  }
  delete[] table;
}

std::string BindingAddresses::ToString() const {
  std::string out;
  for (const std::optional<IpAddress>* a : {&v4, &v6}) {
    if (!a->has_value()) continue;
    if (!out.empty()) out += ' ';
    out += (*a)->ToString();
  }
  return out;
}

namespace {
// `addresses` as a binding (or the default binding) holds them: one per family; none: any.
std::unique_ptr<BindingAddresses> MakeAddresses(const std::vector<IpAddress>& addresses) {
  auto a = std::make_unique<BindingAddresses>();
  a->any = addresses.empty();
  for (const IpAddress& ip : addresses) (ip.is_v4() ? a->v4 : a->v6) = ip;
  return a;
}
bool SameAddresses(const BindingAddresses* a, const BindingAddresses& b) {
  return a != nullptr && a->any == b.any && a->v4 == b.v4 && a->v6 == b.v6;
}
}  // namespace

void Binding::SetAddresses(const std::vector<IpAddress>& addresses) {
  auto a = MakeAddresses(addresses);
  // Leases copy the address they need, so the old value may go with the binding; it is
  // kept (a few bytes per reload that changes it) because a concurrent Acquire may still be
  // reading it. Unchanged (most reloads): nothing new is kept.
  MutexLock lock(&mu_);
  if (SameAddresses(addresses_.load(std::memory_order_acquire), *a)) return;
  addresses_.store(a.get(), std::memory_order_release);
  address_history_.push_back(std::move(a));
}

BindingHost* Binding::GetOrCreate(const HostState& host) {
  const uint32_t i = host.index();
  if (i >= kChunks * kChunk) return nullptr;
  std::atomic<Chunk*>* table = chunks_.load(std::memory_order_acquire);
  if (ABSL_PREDICT_FALSE(table == nullptr)) {
    auto* fresh = new std::atomic<Chunk*>[kChunks];
    for (uint32_t k = 0; k < kChunks; ++k) fresh[k].store(nullptr, std::memory_order_relaxed);
    if (chunks_.compare_exchange_strong(table, fresh, std::memory_order_acq_rel)) {
      table = fresh;
    } else {
      delete[] fresh;  // table holds the winner's
    }
  }
  std::atomic<Chunk*>& slot = table[i / kChunk];
  Chunk* c = slot.load(std::memory_order_acquire);
  if (c == nullptr) {
    auto* fresh = new Chunk;
    if (slot.compare_exchange_strong(c, fresh, std::memory_order_acq_rel)) {
      c = fresh;
    } else {
      delete fresh;  // c holds the winner's
    }
  }
  std::atomic<BindingHost*>& hs = c->hosts[i % kChunk];
  BindingHost* h = hs.load(std::memory_order_acquire);
  if (h == nullptr) {
    auto* fresh = new BindingHost;
    fresh->host.store(&host, std::memory_order_relaxed);
    if (hs.compare_exchange_strong(h, fresh, std::memory_order_acq_rel)) return fresh;
    delete fresh;
  }
  const HostState* owner = h->host.load(std::memory_order_acquire);
  if (ABSL_PREDICT_FALSE(owner != &host) &&
      h->host.compare_exchange_strong(owner, &host, std::memory_order_acq_rel)) {
    // The index was another (evicted) host's: forget its limit and failure memory.
    h->version.store(0, std::memory_order_relaxed);
    h->failed_until.store(0, std::memory_order_relaxed);
    h->probe_in_flight.store(false, std::memory_order_relaxed);
    h->consecutive_failures.store(0, std::memory_order_relaxed);
    h->peak.store(0, std::memory_order_relaxed);
  }
  return h;
}

size_t Binding::MemoryBytes() const {
  size_t bytes = sizeof(*this);
  const std::atomic<Chunk*>* table = chunks_.load(std::memory_order_acquire);
  if (table == nullptr) return bytes;
  bytes += kChunks * sizeof(std::atomic<Chunk*>);
  ForEachHost([&](uint32_t, const BindingHost&) { bytes += sizeof(BindingHost); });
  for (uint32_t c = 0; c < kChunks; ++c) {
    if (table[c].load(std::memory_order_acquire) != nullptr) bytes += sizeof(Chunk);
  }
  return bytes;
}

DomainBindingCounts::Slot* DomainBindingCounts::Get(std::atomic<DomainBindingCounts*>& head,
                                                    uint32_t id, uint32_t hint_n) {
  std::atomic<DomainBindingCounts*>* link = &head;
  uint32_t base = 0;
  for (;;) {
    DomainBindingCounts* c = link->load(std::memory_order_acquire);
    if (c == nullptr) {
      auto* fresh = new DomainBindingCounts;
      fresh->base = base;
      fresh->n = std::max<uint32_t>(std::max<uint32_t>(hint_n, id + 1) - base, 4);
      fresh->slots.reset(new Slot[fresh->n]);
      if (link->compare_exchange_strong(c, fresh, std::memory_order_acq_rel)) {
        c = fresh;
      } else {
        delete fresh;
      }
    }
    if (id < c->base + c->n) return &c->slots[id - c->base];
    base = c->base + c->n;
    link = &c->next;
  }
}

void DomainBindingCounts::FreeChain(DomainBindingCounts* c) {
  while (c != nullptr) {
    DomainBindingCounts* next = c->next.load(std::memory_order_relaxed);
    delete c;
    c = next;
  }
}

DomainBindingsHandle::~DomainBindingsHandle() {
  DomainBindingCounts::FreeChain(head.load(std::memory_order_acquire));
}

BindingRegistry::BindingRegistry() = default;

BindingRegistry::~BindingRegistry() {
  // Retired maps may still wait in the epoch lists: they are freed there. The current one:
  delete map_.load(std::memory_order_acquire);
}

namespace {
// The name map a reload replaced, retired through the epoch: when it is freed no Acquire
// that could have read it (or the old default egress) is running, so the egresses that
// generation replaced may go once nothing holds them.
std::atomic<uint64_t> next_map_generation{1};

struct ReplacedMap {
  const void* map;
  std::shared_ptr<std::atomic<uint64_t>> quiesced;
  uint64_t generation;
  static void Free(void* p) {
    auto* r = static_cast<ReplacedMap*>(p);
    uint64_t q = r->quiesced->load(std::memory_order_relaxed);
    while (q < r->generation &&
           !r->quiesced->compare_exchange_weak(q, r->generation, std::memory_order_acq_rel)) {
    }
    r->free_map(r->map);
    delete r;
  }
  void (*free_map)(const void*);
};

// Lookup's one-entry cache per thread.
struct LastLookup {
  uint64_t generation = 0;  // of the map it was found in; 0: empty
  const Egress* egress = nullptr;
  uint8_t size = 0;
  char name[64];
};
thread_local LastLookup last_lookup;
}  // namespace

void BindingRegistry::Configure(const Config& config) {
  auto map = std::make_unique<Map>();
  map->generation = next_map_generation.fetch_add(1, std::memory_order_relaxed);
  const Egress* dflt = nullptr;
  uint64_t generation;
  {
    MutexLock lock(&mu_);
    generation = ++generation_;
    absl::flat_hash_map<std::string, std::unique_ptr<Binding>> configured;
    absl::flat_hash_map<std::string, Binding*> current;
    // The dropped bindings by name (one named again before Collect freed it is taken back)
    // and the free ids lowest last: one pass each, not a scan per new binding (a reload
    // renaming 100,000 bindings took minutes under mu_).
    absl::flat_hash_map<std::string_view, size_t> dropped_at;
    for (size_t i = 0; i < dropped_.size(); ++i) dropped_at.emplace(dropped_[i]->name(), i);
    std::sort(free_ids_.begin(), free_ids_.end(), std::greater<>());
    for (const BindingSpec& spec : config.bindings) {
      std::unique_ptr<Binding> b;
      if (auto it = bindings_.find(spec.name); it != bindings_.end()) {
        b = std::move(it->second);
        bindings_.erase(it);
      } else if (auto d = dropped_at.find(spec.name);
                 d != dropped_at.end() && dropped_[d->second] != nullptr) {
        b = std::move(dropped_[d->second]);  // dropped and configured again before it was
                                             // freed: the same one
      } else {
        uint32_t id;
        if (!free_ids_.empty()) {
          id = free_ids_.back();  // the lowest
          free_ids_.pop_back();
        } else {
          id = next_id_.load(std::memory_order_relaxed);
          next_id_.fetch_add(1, std::memory_order_acq_rel);
        }
        b = std::make_unique<Binding>(id, spec.name);
      }
      b->SetAddresses(spec.bind_address);
      current[spec.name] = b.get();
      configured[spec.name] = std::move(b);
    }
    std::erase_if(dropped_, [](const std::unique_ptr<Binding>& b) { return b == nullptr; });
    for (auto& [name, b] : bindings_) dropped_.push_back(std::move(b));
    bindings_.swap(configured);

    absl::flat_hash_map<std::string, std::unique_ptr<Egress>> published;
    auto add = [&](const std::string& name, bool group, std::vector<Binding*> members)
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      std::unique_ptr<Egress>& e = published[name];
      if (auto it = egresses_.find(name);
          it != egresses_.end() && it->second->is_group == group && it->second->members == members) {
        e = std::move(it->second);  // unchanged: kept, with its cursor
        egresses_.erase(it);
      } else {
        e = std::make_unique<Egress>();
        e->name = name;
        e->is_group = group;
        e->members = std::move(members);
      }
      map->egress[name] = e.get();
    };
    for (const BindingSpec& spec : config.bindings) add(spec.name, false, {current.at(spec.name)});
    for (const BindingGroupSpec& g : config.binding_groups) {
      if (g.bindings.empty()) continue;  // an empty group routes nothing: unknown
      std::vector<Binding*> members;
      for (const std::string& name : g.bindings) members.push_back(current.at(name));
      add(g.name, true, std::move(members));
    }
    for (auto& [name, e] : egresses_) {
      e->replaced_in = generation;
      replaced_.push_back(std::move(e));
    }
    egresses_.swap(published);
    if (auto it = map->egress.find("default"); it != map->egress.end()) dflt = it->second;
    // The global bind_address is the default binding's source (docs/DESIGN.md §4): a
    // connection through no binding binds it too, not only the bindings that fall back to it.
    if (config.bind_address.empty()) {
      default_addresses_.store(nullptr, std::memory_order_release);
    } else if (auto a = MakeAddresses(config.bind_address);
               !SameAddresses(default_addresses_.load(std::memory_order_acquire), *a)) {
      default_addresses_.store(a.get(), std::memory_order_release);
      default_address_history_.push_back(std::move(a));
    }
    has_replaced_.store(!replaced_.empty() || !dropped_.empty(), std::memory_order_release);
  }
  const Map* old = map_.exchange(map.release(), std::memory_order_acq_rel);
  default_.store(dflt, std::memory_order_release);
  if (old != nullptr) {
    epoch::Retire(new ReplacedMap{old, quiesced_, generation,
                                  [](const void* m) { delete static_cast<const Map*>(m); }},
                  &ReplacedMap::Free);
  } else {
    quiesced_->store(generation, std::memory_order_release);  // nothing was published before
  }
}

void BindingRegistry::Freed::Retire() {
  for (auto& e : egresses) epoch::RetireObject(e.release());
  for (auto& b : bindings) epoch::RetireObject(b.release());
  egresses.clear();
  bindings.clear();
}

BindingRegistry::Freed BindingRegistry::Collect() {
  Freed freed;
  if (!has_replaced()) return freed;
  MutexLock lock(&mu_);
  const uint64_t quiesced = quiesced_->load(std::memory_order_acquire);
  for (size_t i = 0; i < replaced_.size();) {
    if (replaced_[i]->replaced_in <= quiesced &&
        replaced_[i]->refs.load(std::memory_order_acquire) == 0) {
      freed.egresses.push_back(std::move(replaced_[i]));
      replaced_[i] = std::move(replaced_.back());
      replaced_.pop_back();
    } else {
      ++i;
    }
  }
  // A dropped binding goes once no egress alive has it (every lease through it holds one).
  absl::flat_hash_set<const Binding*> held;
  for (const auto& [name, e] : egresses_) held.insert(e->members.begin(), e->members.end());
  for (const auto& e : replaced_) held.insert(e->members.begin(), e->members.end());
  for (size_t i = 0; i < dropped_.size();) {
    if (!held.contains(dropped_[i].get())) {
      free_ids_.push_back(dropped_[i]->id());
      freed.bindings.push_back(std::move(dropped_[i]));
      dropped_[i] = std::move(dropped_.back());
      dropped_.pop_back();
    } else {
      ++i;
    }
  }
  has_replaced_.store(!replaced_.empty() || !dropped_.empty(), std::memory_order_release);
  return freed;
}

BindingRegistry::Live BindingRegistry::live() const {
  MutexLock lock(&mu_);
  return {bindings_.size() + dropped_.size(), egresses_.size() + replaced_.size()};
}

const Egress* BindingRegistry::Lookup(std::string_view name) const {
  const Map* m = map_.load(std::memory_order_acquire);
  if (m == nullptr || m->egress.empty()) return nullptr;
  LastLookup& last = last_lookup;
  // The cached egress is in this map (same generation), so published and alive.
  if (last.generation == m->generation && last.size == name.size() &&
      std::memcmp(last.name, name.data(), name.size()) == 0) {
    return last.egress;
  }
  auto it = m->egress.find(absl::string_view(name.data(), name.size()));
  const Egress* e = it == m->egress.end() ? nullptr : it->second;
  if (e != nullptr && name.size() <= sizeof(last.name)) {
    last.generation = m->generation;
    last.egress = e;
    last.size = static_cast<uint8_t>(name.size());
    std::memcpy(last.name, name.data(), name.size());
  }
  return e;
}

std::vector<const Binding*> BindingRegistry::All() const {
  MutexLock lock(&mu_);
  std::vector<const Binding*> out;
  for (const auto& [name, b] : bindings_) out.push_back(b.get());
  for (const auto& b : dropped_) out.push_back(b.get());
  std::sort(out.begin(), out.end(), [](const Binding* a, const Binding* b) { return a->id() < b->id(); });
  return out;
}

size_t BindingRegistry::MemoryBytes() const {
  MutexLock lock(&mu_);
  size_t bytes = 0;
  for (const auto& [name, b] : bindings_) bytes += b->MemoryBytes();
  for (const auto& b : dropped_) bytes += b->MemoryBytes();
  bytes += (egresses_.size() + replaced_.size()) * sizeof(Egress);
  return bytes;
}

}  // namespace mxsched
