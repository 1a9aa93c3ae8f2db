// DomainTable: the selector's index from domain name to DomainEntry — kShards open-addressing
// hash tables read without locks — and HashDomain, the case-insensitive hash it uses.
//
// Ownership: the table owns its entries (allocated in per-shard arenas, reused through a
// free list) and one reference each to their (shared, interned) route snapshots. An entry pointer stays valid while the reader's
// epoch::EpochGuard lasts; beyond that only while the entry cannot be evicted (it has a
// connection or a waiter: `active` > 0 or `tickets` > 0).
//
// Eviction (docs/DESIGN.md §5): EvictIdle claims an idle entry by CAS of `active` from 0 to kDead,
// backs off if a waiter registered meanwhile (`tickets`), unlinks it (a tombstone slot) and
// retires it through epoch.h; its memory goes back to the shard's free list after every
// reader that might hold it has left. A reader that finds `active` < 0 must look the name
// up again (FindOrInsert creates a fresh entry).
//
// Thread-safety: Find is lock-free and safe from any thread inside an epoch::EpochGuard
// (a table that grows is retired through epoch.h, so a reader may still be walking the old
// one). FindOrInsert and EvictIdle take the shard's mutex (slow path). ForEach, size and
// MemoryBytes take each shard's mutex in turn.
#ifndef MXSCHED_SCHEDULER_DOMAIN_TABLE_H_
#define MXSCHED_SCHEDULER_DOMAIN_TABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "mxsched/base/mutex.h"

namespace mxsched {

class RouteSnapshot;

// ---------------------------------------------------------------------------------------
// Case-insensitive hashing and comparison of domain names, 8 bytes at a time. Hand-written
// rather than absl::Hash over a lower-cased copy: the lookup is on every Acquire and must
// neither allocate nor lower-case byte by byte.

namespace domain_hash_internal {
inline uint64_t Load8(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t Load4(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
// ASCII lower-case of 8 bytes at once (bytes >= 0x80 untouched).
inline uint64_t Lower8(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  const uint64_t heptets = w & (0x7F * kOnes);
  const uint64_t above_z = heptets + (0x25 * kOnes);  // high bit set if byte > 'Z'
  const uint64_t from_a = heptets + (0x3F * kOnes);   // high bit set if byte >= 'A'
  const uint64_t upper = ~w & (from_a ^ above_z) & (0x80 * kOnes);
  return w | (upper >> 2);
}
inline uint64_t Mix(uint64_t a, uint64_t b) {
  __uint128_t r = static_cast<__uint128_t>(a ^ 0xA0761D6478BD642Full) * (b ^ 0xE7037ED1A0B428DBull);
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}
// The last `rem` (1..7) bytes of p[0..n) as the low bytes of a word, without a
// variable-length memcpy call: overlapping fixed-size loads.
inline uint64_t Tail(const char* p, size_t n, size_t rem) {
  if (n >= 8) return Load8(p + n - 8) >> (8 * (8 - rem));
  if (n >= 4) return Load4(p) | (uint64_t{Load4(p + n - 4)} << 32);
  uint64_t w = static_cast<uint8_t>(p[0]);
  w |= uint64_t{static_cast<uint8_t>(p[n / 2])} << 8;
  return w | uint64_t{static_cast<uint8_t>(p[n - 1])} << 16;
}
}  // namespace domain_hash_internal

// Case-insensitive (ASCII) hash of a domain name: HashDomain("A.b") == HashDomain("a.B").
inline uint64_t HashDomain(std::string_view s) {
  using namespace domain_hash_internal;
  const size_t n = s.size();
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) h = Mix(h, Lower8(Load8(s.data() + i)));
  if (i < n) h = Mix(h, Lower8(Tail(s.data(), n, n - i)));
  return Mix(h, 0x8EBC6AF09C88C6E3ull);
}

// True if `query` equals `lower` ignoring ASCII case. REQUIRES: `lower` is lower-case.
bool EqualsLower(std::string_view query, std::string_view lower);

// ---------------------------------------------------------------------------------------

// One domain's state in the selector. 128 bytes, not 64: x86's adjacent-line prefetcher
// moves lines in 128-byte pairs, and with 64-byte entries two threads working on
// neighbouring domains slowed each other by ~30% (bench/README.md). The otherwise idle half
// holds the name inline. The route snapshot is shared (route_interner.h); what is this
// domain's own — when its route expires, where its rotation stands — lives here.
struct DomainBindingCounts;
// A domain's connection counts per named binding (bindings.h): null until its first
// admission through a binding; freed with the entry.
struct DomainBindingsHandle {
  std::atomic<DomainBindingCounts*> head{nullptr};
  DomainBindingsHandle() = default;
  DomainBindingsHandle(const DomainBindingsHandle&) = delete;
  DomainBindingsHandle& operator=(const DomainBindingsHandle&) = delete;
  ~DomainBindingsHandle();
};

struct alignas(128) DomainEntry {
  static constexpr size_t kInlineName = 48;
  // `active` of an evicted entry: any CAS that would take a slot sees it negative.
  static constexpr int32_t kDead = INT32_MIN / 2;
  std::atomic<const RouteSnapshot*> snapshot{nullptr};
  // When the route is to be planned again (clock nanos). Stored before the snapshot it
  // belongs to is published; a reader may pair an older snapshot with a newer expiry for
  // one Acquire, which is harmless (that snapshot was current a moment ago).
  std::atomic<int64_t> expires_at{0};
  // This domain's own order of its first tier's hosts (RFC 5321 §5.1: equal preferences in
  // random order), for tiers of 2..15 hosts: bits 0-3 hold the tier size it was drawn for,
  // then 4 bits per position. It serves any tier of that size; tiers of other sizes are
  // walked with RotationStep (route_planner.h).
  std::atomic<uint64_t> order{0};
  std::atomic<uint32_t> generation{0};  // Selector::generation_ when built; 0 = refresh now
  std::atomic<int32_t> active{0};
  std::atomic<uint32_t> cursor{0};     // rotation position (mod tier size)
  std::atomic<int32_t> waiting{0};     // SlotWaiters queued for this domain's own limit
  std::atomic<int32_t> tickets{0};     // SlotWaiters queued for this domain, any kind
  std::atomic<uint32_t> last_used{0};  // clock nanos >> kUseTickShift of the last Acquire
  std::atomic<bool> refreshing{false};
  uint16_t name_size = 0;
  // ThrottleSet::Collect's cache of the domain's Domain-scope throttles (a set generation
  // and an index; in what was padding).
  mutable std::atomic<uint32_t> throttle_cache{0};
  uint64_t hash = 0;
  std::unique_ptr<char[]> name_heap;  // names longer than kInlineName
  DomainBindingsHandle bindings;
  char name_inline[kInlineName];

  static constexpr int kUseTickShift = 30;  // ~1.07 s: a shift, not a division, per Acquire
  std::string_view name() const { return {name_heap ? name_heap.get() : name_inline, name_size}; }
  void SetName(std::string_view n);
};
static_assert(sizeof(DomainEntry) == 128);

class DomainTable {
 public:
  static constexpr size_t kShards = 64;

  // `release_snapshot` drops an entry's reference to its route snapshot when the entry is
  // freed (after eviction, once no reader can hold it). It may outlive the table (held by
  // entries still waiting for reclamation).
  explicit DomainTable(std::function<void(const RouteSnapshot*)> release_snapshot);
  ~DomainTable();
  DomainTable(const DomainTable&) = delete;
  DomainTable& operator=(const DomainTable&) = delete;

  // The entry for `domain` (any case), or null. REQUIRES: an epoch::EpochGuard.
  DomainEntry* Find(uint64_t hash, std::string_view domain) const {
    const Table* t = shards_[ShardIndex(hash)]->table.load(std::memory_order_acquire);
    const uintptr_t tag = Table::Tag(hash);
    for (size_t i = hash & t->mask;; i = (i + 1) & t->mask) {
      const uintptr_t slot = t->slots[i].load(std::memory_order_acquire);
      if (slot == 0) return nullptr;
      if ((slot >> Table::kTagShift) != tag || slot == Table::kTombstone) continue;
      DomainEntry* e = Table::Entry(slot);
      if (e->hash == hash && EqualsLower(domain, e->name())) return e;
    }
  }

  // The entry for `name`, created if absent: `init` runs on a new entry (hash and name set)
  // under the shard's mutex before any reader can see it.
  // REQUIRES: `name` is lower-case and hash == HashDomain(name); an epoch::EpochGuard.
  DomainEntry* FindOrInsert(uint64_t hash, std::string_view name,
                            const std::function<void(DomainEntry&)>& init);

  // Evicts entries for which `idle(entry)` holds and that have no connection and no waiter,
  // looking at up to `slots` slots of each shard (from where the last call stopped; SIZE_MAX:
  // all). Returns how many were evicted. REQUIRES: an epoch::EpochGuard is NOT held by the
  // caller if it wants memory back promptly (retirement waits for readers).
  size_t EvictIdle(size_t slots, const std::function<bool(const DomainEntry&)>& idle);
  // Evicts idle entries of the shard of `hash` (a few slots; amortized into inserts).
  size_t EvictIdleNear(uint64_t hash, size_t slots,
                       const std::function<bool(const DomainEntry&)>& idle);

  // Visits every entry (order unspecified), each shard under its mutex.
  void ForEach(const std::function<void(const DomainEntry&)>& fn) const;
  size_t size() const;
  // Bytes of tables, entries and out-of-line names (not what entries point to).
  size_t MemoryBytes() const;

 private:
  // Open addressing, linear probing, load <= 1/2. A slot holds the entry pointer with a
  // 16-bit tag of the hash in its unused top bits, so a probe that passes other domains'
  // slots does not touch their entries — whose cache lines other threads are busy writing.
  struct Table {
    static constexpr int kTagShift = 48;
    static constexpr uintptr_t kTombstone = 1;  // an evicted entry's slot (tag 0)
    size_t mask;
    size_t count = 0;  // live entries; written under the shard mutex only
    size_t used = 0;   // live entries + tombstones
    std::unique_ptr<std::atomic<uintptr_t>[]> slots;

    explicit Table(size_t capacity);
    static uintptr_t Tag(uint64_t hash) { return static_cast<uintptr_t>((hash >> 32) & 0xFFFF); }
    static DomainEntry* Entry(uintptr_t slot) {
      return reinterpret_cast<DomainEntry*>(slot & ((uintptr_t{1} << kTagShift) - 1));
    }
    DomainEntry* At(size_t i) const {
      const uintptr_t v = slots[i].load(std::memory_order_acquire);
      return v == kTombstone ? nullptr : Entry(v);
    }
    void Insert(DomainEntry* e);
  };
  // Where entries' memory comes from: after the first few arenas, 2 MiB chunks asked to be
  // transparent huge pages (madvise MADV_HUGEPAGE), shared by every shard. A million
  // entries are 128 MiB; on 4 KiB pages a cold Acquire also missed the TLB (a page walk)
  // on every entry. bench/README.md: 1M domains, with and without.
  // Thread-safety: Arena() takes the pool's mutex (slow path: a shard's arena is full).
  class EntryPool {
   public:
    static constexpr size_t kChunk = size_t{2} << 20;
    // From operator new (2 per shard, 32k domains): a small selector maps no 2 MiB chunk,
    // whose first touch would fault a whole huge page into RSS.
    static constexpr size_t kSmallArenas = 128;
    EntryPool() = default;
    ~EntryPool();
    EntryPool(const EntryPool&) = delete;
    EntryPool& operator=(const EntryPool&) = delete;
    // Uninitialised memory for `bytes` (a multiple of 128, at most kChunk), 128-aligned.
    void* Arena(size_t bytes);

   private:
    Mutex mu_;
    std::vector<void*> small_ ABSL_GUARDED_BY(mu_);
    std::vector<void*> chunks_ ABSL_GUARDED_BY(mu_);
    size_t chunk_used_ ABSL_GUARDED_BY(mu_) = kChunk;
  };
  struct Shard {
    static constexpr size_t kArena = 256;  // bump-allocated; evicted entries are reused
    Mutex mu;                              // writers: inserting, growing, evicting
    std::atomic<Table*> table;
    std::shared_ptr<EntryPool> pool;       // outlives the shard's arenas
    std::vector<DomainEntry*> arenas ABSL_GUARDED_BY(mu);  // kArena constructed entries each
    size_t arena_used ABSL_GUARDED_BY(mu) = 0;
    std::vector<DomainEntry*> free_list ABSL_GUARDED_BY(mu);
    size_t hand ABSL_GUARDED_BY(mu) = 0;  // where the next eviction sweep starts
    std::function<void(const RouteSnapshot*)> release_snapshot;

    Shard();
    ~Shard();
    DomainEntry* NewEntry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  };
  static size_t Evict(const std::shared_ptr<Shard>& shard, size_t slots,
                      const std::function<bool(const DomainEntry&)>& idle);

  static uint32_t ShardIndex(uint64_t hash) { return static_cast<uint32_t>(hash >> 58); }

  // Shared-owned: an evicted entry's deferred reclamation (epoch.h) keeps its shard alive
  // even if the table is destroyed first.
  std::vector<std::shared_ptr<Shard>> shards_;
};

}  // namespace mxsched

#endif  // MXSCHED_SCHEDULER_DOMAIN_TABLE_H_
