#include "mxsched/scheduler/domain_table.h"

#include <sys/mman.h>

#include <algorithm>
#include <new>

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
      ++used;
      return;
    }
  }
}

DomainTable::EntryPool::~EntryPool() {
  MutexLock lock(&mu_);
  for (void* p : small_) ::operator delete(p, std::align_val_t{alignof(DomainEntry)});
  for (void* c : chunks_) munmap(c, kChunk);
}

void* DomainTable::EntryPool::Arena(size_t bytes) {
  MutexLock lock(&mu_);
  if (small_.size() < kSmallArenas) {
    small_.push_back(::operator new(bytes, std::align_val_t{alignof(DomainEntry)}));
    return small_.back();
  }
  if (chunk_used_ + bytes > kChunk) {
    // 2 MiB-aligned, so the whole chunk can be one huge page: map twice that and trim.
    void* m = mmap(nullptr, 2 * kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t base = reinterpret_cast<uintptr_t>(m);
    const uintptr_t aligned = (base + kChunk - 1) & ~(kChunk - 1);
    if (aligned > base) munmap(m, aligned - base);
    if (aligned + kChunk < base + 2 * kChunk) {
      munmap(reinterpret_cast<void*>(aligned + kChunk), base + 2 * kChunk - aligned - kChunk);
    }
    void* chunk = reinterpret_cast<void*>(aligned);
    (void)madvise(chunk, kChunk, MADV_HUGEPAGE);  // a hint: without THP, plain pages
    chunks_.push_back(chunk);
    chunk_used_ = 0;
  }
  void* p = static_cast<char*>(chunks_.back()) + chunk_used_;
  chunk_used_ += bytes;
  return p;
}

DomainTable::Shard::Shard() : table(new Table(64)) {}
DomainTable::Shard::~Shard() {
  delete table.load();
  MutexLock lock(&mu);
  for (DomainEntry* a : arenas) {
    for (size_t i = 0; i < kArena; ++i) a[i].~DomainEntry();
  }
}

DomainEntry* DomainTable::Shard::NewEntry() {
  if (!free_list.empty()) {
    DomainEntry* e = free_list.back();
    free_list.pop_back();
    return e;
  }
  if (arenas.empty() || arena_used == kArena) {
    auto* a = static_cast<DomainEntry*>(pool->Arena(kArena * sizeof(DomainEntry)));
    for (size_t i = 0; i < kArena; ++i) new (&a[i]) DomainEntry();
    arenas.push_back(a);
    arena_used = 0;
  }
  return &arenas.back()[arena_used++];
}

DomainTable::DomainTable(std::function<void(const RouteSnapshot*)> release_snapshot) {
  shards_.reserve(kShards);
  auto pool = std::make_shared<EntryPool>();
  for (size_t i = 0; i < kShards; ++i) {
    shards_.push_back(std::make_shared<Shard>());
    shards_.back()->pool = pool;
    shards_.back()->release_snapshot = release_snapshot;
  }
}

DomainTable::~DomainTable() = default;

DomainEntry* DomainTable::FindOrInsert(uint64_t hash, std::string_view name,
                                       const std::function<void(DomainEntry&)>& init) {
  Shard& shard = *shards_[ShardIndex(hash)];
  Table* retired = nullptr;
  DomainEntry* e;
  {
    MutexLock lock(&shard.mu);
    if (DomainEntry* found = Find(hash, name)) return found;
    Table* t = shard.table.load(std::memory_order_relaxed);
    e = shard.NewEntry();
    e->hash = hash;
    e->SetName(name);
    init(*e);
    if ((t->used + 1) * 2 > t->mask + 1) {
      // Load (with tombstones) would pass 1/2: rebuild without tombstones at a size where
      // live entries fill at most 1/3, so rebuilds are at least capacity/6 inserts apart.
      // The table shrinks too, after mass eviction.
      size_t capacity = 64;
      while ((t->count + 1) * 3 > capacity) capacity *= 2;
      auto* fresh = new Table(capacity);
      for (size_t i = 0; i <= t->mask; ++i) {
        if (DomainEntry* x = t->At(i)) fresh->Insert(x);
      }
      fresh->Insert(e);
      shard.table.store(fresh, std::memory_order_release);
      retired = t;
    } else {
      t->Insert(e);
    }
  }
  // Outside the mutex: Retire may run deleters, and an evicted entry's deleter takes it.
  if (retired != nullptr) epoch::RetireObject(retired);
  return e;
}

namespace {
struct RetiredEntry {
  std::shared_ptr<void> shard_owner;  // keeps the shard alive until the entry is recycled
  void (*recycle)(void* shard, DomainEntry* e);
  void* shard;
  DomainEntry* entry;
};
}  // namespace

size_t DomainTable::Evict(const std::shared_ptr<Shard>& shard, size_t slots,
                          const std::function<bool(const DomainEntry&)>& idle) {
  std::vector<DomainEntry*> evicted;
  {
    MutexLock lock(&shard->mu);
    Table* t = shard->table.load(std::memory_order_relaxed);
    const size_t n = std::min(slots, t->mask + 1);
    size_t i = shard->hand & t->mask;
    for (size_t k = 0; k < n; ++k, i = (i + 1) & t->mask) {
      DomainEntry* e = t->At(i);
      if (e == nullptr || !idle(*e)) continue;
      if (e->tickets.load(std::memory_order_seq_cst) != 0) continue;
      int32_t zero = 0;
      if (!e->active.compare_exchange_strong(zero, DomainEntry::kDead, std::memory_order_seq_cst)) {
        continue;  // has a connection (or is taking one now)
      }
      // seq_cst pairs with WaitForSlot (tickets++ then reads active): one of us backs off.
      if (e->tickets.load(std::memory_order_seq_cst) != 0) {
        e->active.store(0, std::memory_order_seq_cst);
        continue;
      }
      t->slots[i].store(Table::kTombstone, std::memory_order_release);
      --t->count;
      evicted.push_back(e);
    }
    shard->hand = i;
  }
  for (DomainEntry* e : evicted) {
    auto* r = new RetiredEntry{shard,
                               [](void* sp, DomainEntry* x) {
                                 auto* sh = static_cast<Shard*>(sp);
                                 sh->release_snapshot(x->snapshot.load(std::memory_order_acquire));
                                 x->~DomainEntry();
                                 new (x) DomainEntry();
                                 MutexLock lock(&sh->mu);
                                 sh->free_list.push_back(x);
                               },
                               shard.get(), e};
    epoch::Retire(r, [](void* p) {
      auto* rr = static_cast<RetiredEntry*>(p);
      rr->recycle(rr->shard, rr->entry);
      delete rr;
    });
  }
  return evicted.size();
}

size_t DomainTable::EvictIdle(size_t slots, const std::function<bool(const DomainEntry&)>& idle) {
  size_t n = 0;
  for (const auto& s : shards_) n += Evict(s, slots, idle);
  return n;
}

size_t DomainTable::EvictIdleNear(uint64_t hash, size_t slots,
                                  const std::function<bool(const DomainEntry&)>& idle) {
  return Evict(shards_[ShardIndex(hash)], slots, idle);
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
    bytes += s->arenas.size() * Shard::kArena * sizeof(DomainEntry);  // incl. the free list
    for (size_t i = 0; i <= t->mask; ++i) {
      const DomainEntry* e = t->At(i);
      if (e != nullptr && e->name_heap) bytes += e->name_size;
    }
  }
  return bytes;
}

}  // namespace mxsched
