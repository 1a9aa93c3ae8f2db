#include "mxsched/scheduler/epoch.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace mxsched::epoch {
namespace {

struct Tracked {
  explicit Tracked(std::atomic<int>* c) : freed(c) {}
  ~Tracked() { freed->fetch_add(1); }
  std::atomic<int>* freed;
};

TEST(Epoch, RetiredObjectOutlivesAPinnedReaderAndIsFreedAfter) {
  std::atomic<int> freed{0};
  auto* obj = new Tracked(&freed);
  std::atomic<bool> pinned{false}, go{false};
  std::thread reader([&] {
    EpochGuard g;
    pinned = true;
    while (!go) std::this_thread::yield();
  });
  while (!pinned) std::this_thread::yield();
  RetireObject(obj);
  Reclaim();
  EXPECT_EQ(freed.load(), 0) << "freed while a reader that could hold it was pinned";
  go = true;
  reader.join();
  Reclaim();
  EXPECT_EQ(freed.load(), 1);
}

TEST(Epoch, ReaderPinnedAfterRetireDoesNotBlockReclaim) {
  std::atomic<int> freed{0};
  auto* obj = new Tracked(&freed);
  RetireObject(obj);
  EpochGuard g;  // pinned after the retire: cannot have seen obj
  Reclaim();
  EXPECT_EQ(freed.load(), 1);
}

TEST(Epoch, RetireDoesNotWaitForAPinnedReader) {
  std::atomic<int> freed{0};
  std::atomic<bool> pinned{false}, go{false};
  std::thread reader([&] {
    EpochGuard g;
    pinned = true;
    while (!go) std::this_thread::yield();
  });
  while (!pinned) std::this_thread::yield();
  // Several reclamation passes' worth of retires return while the reader stays pinned (a
  // Retire that waited for readers would hang here), and none of them is freed yet.
  constexpr int kRetires = 3 * kReclaimBatch;
  for (int i = 0; i < kRetires; ++i) RetireObject(new Tracked(&freed));
  EXPECT_EQ(freed.load(), 0);
  go = true;
  reader.join();
  EXPECT_EQ(Reclaim(), 0u);
  EXPECT_EQ(freed.load(), kRetires);
}

TEST(Epoch, DeletersMayRetireAgain) {
  // Deleters run outside the retire-list mutex, so a deleter that retires (an object owning
  // another, like a table owning its entries) does not self-deadlock.
  static std::atomic<int> freed{0};
  freed = 0;
  struct Outer {
    ~Outer() {
      RetireObject(new Tracked(&freed));
      freed.fetch_add(1);
    }
  };
  RetireObject(new Outer);
  Reclaim();
  Reclaim();
  EXPECT_EQ(freed.load(), 2);
}

TEST(Epoch, GuardsNest) {
  std::atomic<int> freed{0};
  {
    EpochGuard outer;
    { EpochGuard inner; }
    std::thread([&] {
      RetireObject(new Tracked(&freed));
      Reclaim();
    }).join();
    EXPECT_EQ(freed.load(), 0) << "inner guard's exit unpinned the outer one";
  }
  Reclaim();
  EXPECT_EQ(freed.load(), 1);
}

TEST(Epoch, ConcurrentPublishAndReadNeverSeesFreedMemory) {
  struct Box {
    uint64_t magic = 0xC0FFEE;
    ~Box() { magic = 0xDEAD; }
  };
  std::atomic<Box*> current{new Box};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        EpochGuard g;
        Box* b = current.load(std::memory_order_acquire);
        if (b->magic != 0xC0FFEE) bad.fetch_add(1);
        reads.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  // At least 20,000 swaps, and keep going (bounded) until the readers have overlapped them.
  for (int i = 0; i < 2'000'000 && (i < 20000 || reads.load() < 20000); ++i) {
    Box* old = current.exchange(new Box, std::memory_order_acq_rel);
    RetireObject(old);
  }
  stop = true;
  for (auto& t : readers) t.join();
  RetireObject(current.load());
  EXPECT_EQ(Reclaim(), 0u);
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_GE(reads.load(), 20000u);
}

}  // namespace
}  // namespace mxsched::epoch
