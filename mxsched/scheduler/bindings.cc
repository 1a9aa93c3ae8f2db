#include "mxsched/scheduler/bindings.h"

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
    : id_(id), name_(std::move(name)), chunks_(new std::atomic<Chunk*>[kChunks]) {
  for (uint32_t i = 0; i < kChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
  auto a = std::make_unique<BindingAddresses>();
  addresses_.store(a.get(), std::memory_order_release);
  MutexLock lock(&mu_);
  address_history_.push_back(std::move(a));
}

Binding::~Binding() {
  for (uint32_t c = 0; c < kChunks; ++c) {
    Chunk* chunk = chunks_[c].load(std::memory_order_acquire);
    if (chunk == nullptr) continue;
    for (auto& h : chunk->hosts) delete h.load(std::memory_order_acquire);
    delete chunk;
  }
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

void Binding::SetAddresses(const std::vector<IpAddress>& addresses) {
  auto a = std::make_unique<BindingAddresses>();
  a->any = addresses.empty();
  for (const IpAddress& ip : addresses) (ip.is_v4() ? a->v4 : a->v6) = ip;
  // Leases copy the address they need, so the old value may go with the binding; it is
  // kept (a few bytes per reload) because a concurrent Acquire may still be reading it.
  addresses_.store(a.get(), std::memory_order_release);
  MutexLock lock(&mu_);
  address_history_.push_back(std::move(a));
}

BindingHost* Binding::GetOrCreate(const HostState& host) {
  const uint32_t i = host.index();
  if (i >= kChunks * kChunk) return nullptr;
  std::atomic<Chunk*>& slot = chunks_[i / kChunk];
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
  size_t bytes = sizeof(*this) + kChunks * sizeof(std::atomic<Chunk*>);
  ForEachHost([&](uint32_t, const BindingHost&) { bytes += sizeof(BindingHost); });
  for (uint32_t c = 0; c < kChunks; ++c) {
    if (chunks_[c].load(std::memory_order_acquire) != nullptr) bytes += sizeof(Chunk);
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

void BindingRegistry::Configure(const Config& config) {
  auto map = std::make_unique<Map>();
  const Egress* dflt = nullptr;
  {
    MutexLock lock(&mu_);
    absl::flat_hash_map<std::string, Binding*> current;
    for (const BindingSpec& spec : config.bindings) {
      std::unique_ptr<Binding>& b = bindings_[spec.name];
      if (b == nullptr) {
        b = std::make_unique<Binding>(next_id_.load(std::memory_order_relaxed), spec.name);
        next_id_.fetch_add(1, std::memory_order_acq_rel);
      }
      b->SetAddresses(spec.bind_address);
      current[spec.name] = b.get();
      auto e = std::make_unique<Egress>();
      e->name = spec.name;
      e->members.push_back(b.get());
      (*map)[spec.name] = e.get();
      egresses_.push_back(std::move(e));
    }
    for (const BindingGroupSpec& g : config.binding_groups) {
      if (g.bindings.empty()) continue;  // an empty group routes nothing: unknown
      auto e = std::make_unique<Egress>();
      e->name = g.name;
      e->is_group = true;
      for (const std::string& name : g.bindings) e->members.push_back(current.at(name));
      (*map)[g.name] = e.get();
      egresses_.push_back(std::move(e));
    }
    if (auto it = map->find("default"); it != map->end()) dflt = it->second;
  }
  const Map* old = map_.exchange(map.release(), std::memory_order_acq_rel);
  default_.store(dflt, std::memory_order_release);
  if (old != nullptr) epoch::RetireObject(const_cast<Map*>(old));
}

const Egress* BindingRegistry::Lookup(std::string_view name) const {
  const Map* m = map_.load(std::memory_order_acquire);
  if (m == nullptr || m->empty()) return nullptr;
  auto it = m->find(absl::string_view(name.data(), name.size()));
  return it == m->end() ? nullptr : it->second;
}

std::vector<const Binding*> BindingRegistry::All() const {
  MutexLock lock(&mu_);
  std::vector<const Binding*> out;
  for (const auto& [name, b] : bindings_) out.push_back(b.get());
  std::sort(out.begin(), out.end(), [](const Binding* a, const Binding* b) { return a->id() < b->id(); });
  return out;
}

size_t BindingRegistry::MemoryBytes() const {
  MutexLock lock(&mu_);
  size_t bytes = 0;
  for (const auto& [name, b] : bindings_) bytes += b->MemoryBytes();
  return bytes;
}

}  // namespace mxsched
