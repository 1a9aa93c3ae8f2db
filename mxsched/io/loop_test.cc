// Each io_uring operation the connector relies on, in a tiny complete test against a real
// loopback socket: prep, submit, wait, check res. A kernel without the feature skips.
#include "mxsched/io/loop.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "gtest/gtest.h"
#include "tests/net_testutil.h"

namespace mxsched::io {
namespace {

struct Result : Completion {
  Result() {
    fn = [](Completion* c, int res, uint32_t) {
      auto* self = static_cast<Result*>(c);
      self->res = res;
      self->done = true;
    };
  }
  int res = 0;
  bool done = false;
};

void RunUntil(Loop& loop, const std::vector<Result*>& rs) {
  for (int i = 0; i < 200; ++i) {
    bool all = true;
    for (auto* r : rs) all &= r->done;
    if (all) return;
    loop.RunOnce(50);
  }
  FAIL() << "operations did not complete";
}

TEST(IoUring, SocketOp) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok()) << loop.status();
  if (!(*loop)->has_socket_op()) GTEST_SKIP() << "kernel lacks IORING_OP_SOCKET (5.19+)";
  Result r;
  io_uring_sqe* sqe = (*loop)->Sqe();
  io_uring_prep_socket(sqe, AF_INET, SOCK_STREAM, 0, 0);
  Loop::SetCompletion(sqe, &r);
  RunUntil(**loop, {&r});
  ASSERT_GE(r.res, 0) << strerror(-r.res);
  close(r.res);
}

TEST(IoUring, ConnectLinkedToATimeoutThatFires) {
  testing::FullBacklog peer(testing::Ep(testing::LoopbackPrefix() + "1", testing::FreePort()));
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_storage ss;
  socklen_t len = peer.ep.ToSockaddr(&ss);
  Result conn, timer;
  io_uring_sqe* sqe = (*loop)->Sqe();
  io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&ss), len);
  sqe->flags |= IOSQE_IO_LINK;
  Loop::SetCompletion(sqe, &conn);
  __kernel_timespec ts{0, 100'000'000};
  sqe = (*loop)->Sqe();
  io_uring_prep_link_timeout(sqe, &ts, 0);
  Loop::SetCompletion(sqe, &timer);
  RunUntil(**loop, {&conn, &timer});
  EXPECT_EQ(conn.res, -ECANCELED) << "the connect was cut by its linked timeout";
  EXPECT_EQ(timer.res, -ETIME);
  close(fd);
}

TEST(IoUring, RecvLinkedToATimeoutThatIsCancelledByData) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  char buf[16];
  Result recv, timer;
  io_uring_sqe* sqe = (*loop)->Sqe();
  io_uring_prep_recv(sqe, sv[0], buf, sizeof(buf), 0);
  sqe->flags |= IOSQE_IO_LINK;
  Loop::SetCompletion(sqe, &recv);
  __kernel_timespec ts{5, 0};
  sqe = (*loop)->Sqe();
  io_uring_prep_link_timeout(sqe, &ts, 0);
  Loop::SetCompletion(sqe, &timer);
  ASSERT_EQ(write(sv[1], "220 hi\r\n", 8), 8);
  RunUntil(**loop, {&recv, &timer});
  EXPECT_EQ(recv.res, 8);
  EXPECT_EQ(timer.res, -ECANCELED);
  close(sv[0]);
  close(sv[1]);
}

TEST(IoUring, WakeFromAnotherThread) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  std::thread t([&] { (*loop)->Wake(); });
  // Nothing else is submitted: only the wake-up can complete. A generous bound, so a lost
  // wake-up fails the test instead of hanging it.
  int completions = 0;
  for (int i = 0; i < 600 && completions == 0; ++i) completions = (*loop)->RunOnce(100);
  t.join();
  EXPECT_GT(completions, 0) << "the wake-up from another thread never arrived";
}

TEST(IoUring, NullUserDataCompletionIsDropped) {
  auto loop = Loop::Create(8);
  ASSERT_TRUE(loop.ok());
  Result counted;
  io_uring_sqe* dropped = (*loop)->Sqe();
  io_uring_prep_nop(dropped);
  Loop::SetCompletion(dropped, nullptr);  // a Dispatch that called through it would crash
  io_uring_sqe* tracked = (*loop)->Sqe();
  io_uring_prep_nop(tracked);
  Loop::SetCompletion(tracked, &counted);
  int completions = 0;
  for (int i = 0; i < 100 && completions < 2; ++i) completions += (*loop)->RunOnce(100);
  EXPECT_EQ(completions, 2) << "both NOPs complete; only one has a Completion to call";
  EXPECT_TRUE(counted.done);
}

}  // namespace
}  // namespace mxsched::io
