// DomainTable and HashDomain on their own: case-insensitive hashing and lookup, names of
// every length, growth under concurrent readers.
#include "mxsched/scheduler/domain_table.h"

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {
namespace {

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
  DomainTable table;
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
  EXPECT_EQ(table.FindOrInsert(HashDomain(again), again, [](DomainEntry&) { FAIL(); }),
            entries[5]);
  size_t visited = 0;
  table.ForEach([&](const DomainEntry&) { ++visited; });
  EXPECT_EQ(visited, static_cast<size_t>(kN));
  EXPECT_GT(table.MemoryBytes(), kN * sizeof(DomainEntry));
}

TEST(DomainTable, ReadersSeeEveryInsertedEntryWhileTablesGrow) {
  DomainTable table;
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

}  // namespace
}  // namespace mxsched
