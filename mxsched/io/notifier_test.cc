// Notifier on its own: the cross-thread wake-up behind slot waits (SlotWaiter::Wake ->
// Connector::QueueWoken) and DNS answers (DnsClient::Poke). Real eventfd, real io_uring.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/io/loop.h"

namespace mxsched::io {
namespace {

// Runs `loop` until `done()` (bounded: a lost wake-up fails the test instead of hanging it).
template <typename Pred>
bool RunUntil(Loop& loop, Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done() && std::chrono::steady_clock::now() < deadline) loop.RunOnce(100);
  return done();
}

TEST(Notifier, NotifyFromAnotherThreadRunsTheCallbackOnTheLoopThread) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::thread::id ran_on;
  int calls = 0;
  auto n = Notifier::Create(loop->get(), [&] {
    ran_on = std::this_thread::get_id();
    ++calls;
  });
  ASSERT_TRUE(n.ok()) << n.status();
  std::thread([&] { (*n)->Notify(); }).join();
  ASSERT_TRUE(RunUntil(**loop, [&] { return calls > 0; }));
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(Notifier, NotificationsCoalesceAndTheReadIsArmedAgain) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  int calls = 0;
  auto n = Notifier::Create(loop->get(), [&] { ++calls; });
  ASSERT_TRUE(n.ok());
  for (int i = 0; i < 10; ++i) (*n)->Notify();
  ASSERT_TRUE(RunUntil(**loop, [&] { return calls > 0; }));
  for (int i = 0; i < 5; ++i) (*loop)->RunOnce(0);
  EXPECT_EQ(calls, 1) << "ten notifications before the loop ran are one call";
  (*n)->Notify();
  EXPECT_TRUE(RunUntil(**loop, [&] { return calls == 2; })) << "re-armed after the first";
}

TEST(Notifier, NoNotificationIsLostUnderConcurrentNotifiers) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  constexpr int kThreads = 4, kEach = 2000;
  std::atomic<int> sent{0};
  int seen = 0;  // what the callback observed, on the loop thread
  auto n = Notifier::Create(loop->get(), [&] { seen = sent.load(std::memory_order_acquire); });
  ASSERT_TRUE(n.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        sent.fetch_add(1, std::memory_order_release);
        (*n)->Notify();  // after the work it announces, as SlotWaiter::Wake does
      }
    });
  }
  // Every Notify follows its increment, so some callback after the last Notify must see
  // the final count.
  EXPECT_TRUE(RunUntil(**loop, [&] { return seen == kThreads * kEach; })) << seen;
  for (auto& t : threads) t.join();
}

TEST(Notifier, DestroyingWithTheReadArmedLeavesTheLoopUsable) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  int calls = 0;
  {
    auto n = Notifier::Create(loop->get(), [&] { ++calls; });
    ASSERT_TRUE(n.ok());
    (*n)->Notify();  // pending, never run: the destructor cancels the read
  }
  // A completion for the destroyed notifier would call into freed memory (ASan) or count.
  for (int i = 0; i < 5; ++i) (*loop)->RunOnce(0);
  EXPECT_LE(calls, 1);
  const int before = calls;
  auto again = Notifier::Create(loop->get(), [&] { ++calls; });
  ASSERT_TRUE(again.ok());
  (*again)->Notify();
  EXPECT_TRUE(RunUntil(**loop, [&] { return calls == before + 1; }));
}

}  // namespace
}  // namespace mxsched::io
