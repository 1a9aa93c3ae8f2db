#include "mxsched/scheduler/domain_table.h"

#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {

bool EqualsLower(std::string_view query, std::string_view lower) {
  using namespace domain_hash_internal;
  if (query.size() != lower.size()) return false;
  size_t i = 0;
  for (; i + 8 <= query.size(); i += 8) {
    if (Lower8(Load8(query.data() + i)) != Load8(lower.data() + i)) return false;
  }
  if (i < query.size() && query.size() >= 8) {  // overlapping final word
    const size_t last = query.size() - 8;
    return Lower8(Load8(query.data() + last)) == Load8(lower.data() + last);
  }
  for (; i < query.size(); ++i) {
    if (AsciiLower(static_cast<unsigned char>(query[i])) != lower[i]) return false;
  }
  return true;
}

void DomainEntry::SetName(std::string_view n) {
  name_size = static_cast<uint16_t>(n.size());  // <= 253: validated hostname
  char* dst = name_inline;
  if (n.size() > kInlineName) {
    name_heap.reset(new char[n.size()]);
    dst = name_heap.get();
  }
  std::memcpy(dst, n.data(), n.size());
}

DomainTable::Table::Table(size_t capacity)
    : mask(capacity - 1), slots(new std::atomic<uintptr_t>[capacity]) {
  for (size_t i = 0; i < capacity; ++i) slots[i].store(0, std::memory_order_relaxed);
}

void DomainTable::Table::Insert(DomainEntry* e) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(e) | (Tag(e->hash) << kTagShift);
  for (size_t i = e->hash & mask;; i = (i + 1) & mask) {
    if (slots[i].load(std::memory_order_relaxed) == 0) {
      slots[i].store(v, std::memory_order_release);
      ++count;
      return;
    }
  }
}

DomainTable::Shard::Shard() : table(new Table(64)) {}
DomainTable::Shard::~Shard() { delete table.load(); }

DomainEntry* DomainTable::Shard::NewEntry() {
  if (arenas.empty() || arena_used == kArena) {
    arenas.emplace_back(new DomainEntry[kArena]);
    arena_used = 0;
  }
  return &arenas.back()[arena_used++];
}

DomainTable::DomainTable() {
  shards_.reserve(kShards);
  for (size_t i = 0; i < kShards; ++i) shards_.push_back(std::make_unique<Shard>());
}

DomainTable::~DomainTable() = default;

DomainEntry* DomainTable::FindOrInsert(uint64_t hash, std::string_view name,
                                       const std::function<void(DomainEntry&)>& init) {
  Shard& shard = *shards_[ShardIndex(hash)];
  MutexLock lock(&shard.mu);
  if (DomainEntry* e = Find(hash, name)) return e;
  Table* t = shard.table.load(std::memory_order_relaxed);
  DomainEntry* e = shard.NewEntry();
  e->hash = hash;
  e->SetName(name);
  init(*e);
  if ((t->count + 1) * 2 > t->mask + 1) {  // keep load factor <= 1/2
    auto* bigger = new Table((t->mask + 1) * 2);
    for (size_t i = 0; i <= t->mask; ++i) {
      if (DomainEntry* x = t->At(i)) bigger->Insert(x);
    }
    bigger->Insert(e);
    shard.table.store(bigger, std::memory_order_release);
    epoch::RetireObject(t);
  } else {
    t->Insert(e);
  }
  return e;
}

void DomainTable::ForEach(const std::function<void(const DomainEntry&)>& fn) const {
  for (const auto& s : shards_) {
    MutexLock lock(&s->mu);
    const Table* t = s->table.load();
    for (size_t i = 0; i <= t->mask; ++i) {
      if (const DomainEntry* e = t->At(i)) fn(*e);
    }
  }
}

size_t DomainTable::size() const {
  size_t n = 0;
  for (const auto& s : shards_) {
    MutexLock lock(&s->mu);
    n += s->table.load()->count;
  }
  return n;
}

size_t DomainTable::MemoryBytes() const {
  size_t bytes = sizeof(*this);
  for (const auto& s : shards_) {
    MutexLock lock(&s->mu);
    const Table* t = s->table.load();
    bytes += sizeof(Shard) + sizeof(Table) + (t->mask + 1) * sizeof(std::atomic<uintptr_t>);
    bytes += s->arenas.size() * Shard::kArena * sizeof(DomainEntry);
    for (size_t i = 0; i <= t->mask; ++i) {
      const DomainEntry* e = t->At(i);
      if (e != nullptr && e->name_heap) bytes += e->name_size;
    }
  }
  return bytes;
}

}  // namespace mxsched
