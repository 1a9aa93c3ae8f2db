// DomainTable and HashDomain on their own: case-insensitive hashing and lookup, names of
// every length, growth under concurrent readers.
#include "mxsched/scheduler/domain_table.h"

#include <atomic>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {
namespace {

constexpr void (*kNoSnapshot)(const RouteSnapshot*) = +[](const RouteSnapshot*) {};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(AsciiLower(static_cast<unsigned char>(c)));
  return s;
}

TEST(HashDomain, IgnoresAsciiCaseAtEveryLengthAndTailSize) {
  const std::string base = "AbCdEfGhIjKlMnOpQrStUvWxYz.0123456789-Example.COM";
  for (size_t n = 1; n <= base.size(); ++n) {
    const std::string mixed = base.substr(0, n);
    EXPECT_EQ(HashDomain(mixed), HashDomain(Lower(mixed))) << mixed;
    EXPECT_TRUE(EqualsLower(mixed, Lower(mixed))) << mixed;
  }
}

TEST(HashDomain, DistinguishesNamesThatDifferInOneByte) {
  std::set<uint64_t> seen;
  const std::string base = "mail.example.com";
  for (size_t i = 0; i < base.size(); ++i) {
    std::string s = base;
    s[i] = s[i] == 'x' ? 'y' : 'x';
    seen.insert(HashDomain(s));
    EXPECT_FALSE(EqualsLower(s, base)) << s;
  }
  seen.insert(HashDomain(base));
  EXPECT_EQ(seen.size(), base.size() + 1);
  EXPECT_FALSE(EqualsLower("example.co", "example.com")) << "length differs";
  EXPECT_NE(HashDomain("["), HashDomain("{")) << "only A-Z fold: '[' is not '{'";
  EXPECT_FALSE(EqualsLower("[", "{"));
}

TEST(DomainTable, FindsWhatWasInsertedInAnyCaseAcrossGrowth) {
  DomainTable table(kNoSnapshot);
  epoch::EpochGuard guard;
  std::vector<DomainEntry*> entries;
  constexpr int kN = 20'000;  // several doublings of every shard
  for (int i = 0; i < kN; ++i) {
    const std::string name = StrCat("d", i, i % 7 == 0 ? std::string(120, 'x') : "", ".example");
    int inits = 0;
    entries.push_back(table.FindOrInsert(HashDomain(name), name, [&](DomainEntry&) { ++inits; }));
    ASSERT_EQ(inits, 1);
    ASSERT_EQ(entries.back()->name(), name);
  }
  EXPECT_EQ(table.size(), static_cast<size_t>(kN));
  for (int i = 0; i < kN; ++i) {
    std::string upper = StrCat("D", i, i % 7 == 0 ? std::string(120, 'X') : "", ".EXAMPLE");
    EXPECT_EQ(table.Find(HashDomain(upper), upper), entries[i]) << upper;
  }
  EXPECT_EQ(table.Find(HashDomain("absent.example"), "absent.example"), nullptr);
  const std::string again = "d5.example";
  EXPECT_EQ(table.FindOrInsert(HashDomain(again), again, [](DomainEntry&) { FAIL(); }), entries[5]);
  size_t visited = 0;
  table.ForEach([&](const DomainEntry&) { ++visited; });
  EXPECT_EQ(visited, static_cast<size_t>(kN));
  EXPECT_GT(table.MemoryBytes(), kN * sizeof(DomainEntry));
}

TEST(DomainTable, ReadersSeeEveryInsertedEntryWhileTablesGrow) {
  DomainTable table(kNoSnapshot);
  constexpr int kN = 30'000;
  std::atomic<int> inserted{0};
  std::thread writer([&] {
    for (int i = 0; i < kN; ++i) {
      epoch::EpochGuard guard;
      const std::string name = StrCat("w", i, ".example");
      table.FindOrInsert(HashDomain(name), name, [](DomainEntry&) {});
      inserted.store(i + 1, std::memory_order_release);
    }
  });
  int misses = 0;
  for (int round = 0; round < 200'000 && inserted.load() < kN; ++round) {
    const int upto = inserted.load(std::memory_order_acquire);
    if (upto == 0) continue;
    const std::string name = StrCat("w", round % upto, ".example");
    epoch::EpochGuard guard;
    if (table.Find(HashDomain(name), name) == nullptr) ++misses;
  }
  writer.join();
  EXPECT_EQ(misses, 0);
  epoch::Reclaim();
}

TEST(DomainTable, EvictsOnlyIdleEntriesWithoutConnectionsOrWaiters) {
  DomainTable table(kNoSnapshot);
  std::vector<DomainEntry*> e;
  {
    epoch::EpochGuard guard;
    for (int i = 0; i < 3000; ++i) {
      const std::string name = StrCat("e", i, ".example");
      e.push_back(table.FindOrInsert(HashDomain(name), name, [](DomainEntry&) {}));
    }
  }
  e[0]->active.store(1);   // has a connection
  e[1]->tickets.store(1);  // has a waiter
  // "Idle" by the caller's rule: every entry with an even index (and 0 and 1, which must
  // survive anyway).
  auto idle = [](const DomainEntry& d) {
    int i = 0;
    std::sscanf(std::string(d.name()).c_str(), "e%d", &i);
    return i % 2 == 0 || i == 1;
  };
  epoch::EpochGuard guard;  // a reader that may still hold evicted entries
  EXPECT_EQ(table.EvictIdle(SIZE_MAX, idle), 1499u) << "all even but e0, none odd";
  EXPECT_EQ(table.size(), 1501u);
  for (int i = 0; i < 3000; ++i) {
    const std::string name = StrCat("e", i, ".example");
    const bool kept = i % 2 == 1 || i == 0;
    EXPECT_EQ(table.Find(HashDomain(name), name) != nullptr, kept) << name;
  }
  EXPECT_EQ(e[2]->active.load(), DomainEntry::kDead) << "a reader still holding it sees it dead";
  EXPECT_EQ(e[0]->active.load(), 1);
}

TEST(DomainTable, EvictedEntriesAreReusedSoMemoryLevelsOff) {
  DomainTable table(kNoSnapshot);
  auto all_idle = [](const DomainEntry&) { return true; };
  size_t peak = 0;
  for (int round = 0; round < 20; ++round) {
    {
      epoch::EpochGuard guard;
      for (int i = 0; i < 5000; ++i) {
        const std::string name = StrCat("r", round, "-", i, ".example");
        table.FindOrInsert(HashDomain(name), name, [](DomainEntry&) {});
      }
    }
    EXPECT_EQ(table.EvictIdle(SIZE_MAX, all_idle), 5000u);
    epoch::Reclaim();  // no reader left: evicted entries go back to the free lists
    if (round == 1) peak = table.MemoryBytes();
    if (round > 1) {
      EXPECT_LE(table.MemoryBytes(), peak + peak / 10) << "round " << round;  // table sizes vary
    }
  }
  EXPECT_EQ(table.size(), 0u);
}

}  // namespace
}  // namespace mxsched
