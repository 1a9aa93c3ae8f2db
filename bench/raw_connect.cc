// Baselines with no scheduler, for the end-to-end comparison (bench/scenarios.py):
// N sessions, C at a time, round-robin over the targets; each session connects, reads the
// greeting, sends QUIT, reads the reply and closes — what `mxsched load` does, minus the
// Selector, the timeouts and the bookkeeping.
//
//   raw_connect --mode uring|epoll --targets ADDR[-ADDR]:PORT --sessions N --concurrency C
//
// Prints one JSON line: {"mode":..., "sessions":..., "seconds":..., "sessions_per_second":...}.
// Single-threaded on purpose: compare with `mxsched load --threads 1`.
#include <fcntl.h>
#include <liburing.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mxsched/base/strings.h"
#include "testbed/farm.h"

namespace {

using mxsched::Endpoint;

struct Conn {
  int fd = -1;
  int phase = 0;  // 0 socket, 1 connect, 2 greeting, 3 quit sent, 4 reply
  size_t target = 0;
  char buf[512];
  sockaddr_storage ss;
  socklen_t len;
};

bool ReplyDone(const char* buf, int n) {  // last line ends with CRLF and is not "NNN-"
  if (n < 2 || buf[n - 1] != '\n') return false;
  int start = n - 2;
  while (start > 0 && buf[start - 1] != '\n') --start;
  return !(n - start > 3 && buf[start + 3] == '-');
}

int RunUring(const std::vector<Endpoint>& targets, long sessions, int concurrency) {
  io_uring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  if (io_uring_queue_init_params(4096, &ring, &p) != 0 &&
      io_uring_queue_init(4096, &ring, 0) != 0) {
    return -1;
  }
  std::vector<Conn> conns(concurrency);
  long started = 0, done = 0;
  auto get_sqe = [&] {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    while (!sqe) {
      io_uring_submit(&ring);
      sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
  };
  auto start_session = [&](Conn& c) {
    c.target = started++ % targets.size();
    c.len = targets[c.target].ToSockaddr(&c.ss);
    c.phase = 0;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_socket(sqe, c.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0, 0);
    io_uring_sqe_set_data(sqe, &c);
  };
  for (auto& c : conns) {
    if (started < sessions) start_session(c);
  }
  static const char kQuit[] = "QUIT\r\n";
  while (done < sessions) {
    io_uring_submit_and_wait(&ring, 1);
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    std::vector<std::pair<Conn*, int>> ready;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ready.emplace_back(static_cast<Conn*>(io_uring_cqe_get_data(cqe)), cqe->res);
      ++n;
    }
    io_uring_cq_advance(&ring, n);
    for (auto [c, res] : ready) {
      io_uring_sqe* sqe;
      if (res < 0 && c->phase != 0) {
        std::fprintf(stderr, "raw_connect: phase %d: %s\n", c->phase, strerror(-res));
        return -1;
      }
      switch (c->phase) {
        case 0:
          c->fd = res;
          c->phase = 1;
          sqe = get_sqe();
          io_uring_prep_connect(sqe, c->fd, reinterpret_cast<sockaddr*>(&c->ss), c->len);
          io_uring_sqe_set_data(sqe, c);
          break;
        case 1:
        case 3:
          c->phase++;
          sqe = get_sqe();
          io_uring_prep_recv(sqe, c->fd, c->buf, sizeof(c->buf), 0);
          io_uring_sqe_set_data(sqe, c);
          break;
        case 2:
          c->phase = 3;
          sqe = get_sqe();
          io_uring_prep_send(sqe, c->fd, kQuit, sizeof(kQuit) - 1, MSG_NOSIGNAL);
          io_uring_sqe_set_data(sqe, c);
          break;
        case 4:
          close(c->fd);
          ++done;
          if (started < sessions) start_session(*c);
          break;
      }
    }
  }
  io_uring_queue_exit(&ring);
  return 0;
}

int RunEpoll(const std::vector<Endpoint>& targets, long sessions, int concurrency) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Conn> conns(concurrency);
  long started = 0, done = 0;
  auto start_session = [&](Conn& c) -> bool {
    c.target = started++ % targets.size();
    c.len = targets[c.target].ToSockaddr(&c.ss);
    c.fd = socket(c.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return false;
    c.phase = 1;
    if (connect(c.fd, reinterpret_cast<sockaddr*>(&c.ss), c.len) != 0 && errno != EINPROGRESS) {
      return false;
    }
    epoll_event ev{EPOLLOUT | EPOLLIN, {.ptr = &c}};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) == 0;
  };
  for (auto& c : conns) {
    if (started < sessions && !start_session(c)) return -1;
  }
  std::vector<epoll_event> events(concurrency);
  while (done < sessions) {
    int n = epoll_wait(ep, events.data(), concurrency, -1);
    for (int i = 0; i < n; ++i) {
      Conn& c = *static_cast<Conn*>(events[i].data.ptr);
      if (c.phase == 1) {  // connected (or failed): wait for the greeting
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0) return -1;
        c.phase = 2;
        epoll_event ev{EPOLLIN, {.ptr = &c}};
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
        continue;
      }
      int r = recv(c.fd, c.buf, sizeof(c.buf), 0);
      if (r <= 0 && errno == EAGAIN) continue;
      if (c.phase == 2 && r > 0 && ReplyDone(c.buf, r)) {
        static const char kQuit[] = "QUIT\r\n";
        send(c.fd, kQuit, sizeof(kQuit) - 1, MSG_NOSIGNAL);
        c.phase = 4;
        continue;
      }
      if (c.phase == 4) {
        close(c.fd);  // also removes it from the epoll set
        ++done;
        if (started < sessions && !start_session(c)) return -1;
      }
    }
  }
  close(ep);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "uring", targets_spec;
  long sessions = 10000;
  int concurrency = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--mode")
      mode = argv[i + 1];
    else if (a == "--targets")
      targets_spec = argv[i + 1];
    else if (a == "--sessions")
      sessions = std::atol(argv[i + 1]);
    else if (a == "--concurrency")
      concurrency = std::atoi(argv[i + 1]);
  }
  auto targets = mxsched::testbed::ParseListenSpec(targets_spec);
  if (!targets.ok() || sessions <= 0 || concurrency <= 0 || (mode != "uring" && mode != "epoll")) {
    std::fprintf(stderr,
                 "usage: raw_connect --mode uring|epoll --targets ADDR[-ADDR]:PORT "
                 "--sessions N --concurrency C\n");
    return 2;
  }
  rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (concurrency > sessions) concurrency = static_cast<int>(sessions);
  const auto t0 = std::chrono::steady_clock::now();
  int rc = mode == "uring" ? RunUring(*targets, sessions, concurrency)
                           : RunEpoll(*targets, sessions, concurrency);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != 0) return 1;
  std::printf("{\"mode\":\"%s\",\"sessions\":%ld,\"seconds\":%.3f,\"sessions_per_second\":%.1f}\n",
              mode.c_str(), sessions, s, sessions / s);
  return 0;
}
