// Loopback helpers for integration tests: unique addresses per test process (ctest runs
// test cases as parallel processes), a free port, an in-process farm, a raw TCP peer that
// writes given bytes, and a driver that runs a Connector to completion.
#ifndef MXSCHED_TESTS_NET_TESTUTIL_H_
#define MXSCHED_TESTS_NET_TESTUTIL_H_

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/connector.h"
#include "mxsched/io/loop.h"
#include "testbed/farm.h"
#include "testbed/load.h"

namespace mxsched::testing {

// "127.<a>.<b>." for one fixture, unique among every process on the machine that uses this
// function (and distinct from the shell tests' 127.30-127.x ranges): <a>.<b> is the number
// of a UDP port on 127.0.0.1 that this process binds and holds until it exits, and the
// kernel never gives one port to two live sockets. (A pid-derived prefix collided when
// pids shared a residue.) Ephemeral ports are >= 32768, so <a> >= 128.
inline std::string LoopbackPrefix() {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // held until exit
  EXPECT_GE(fd, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len), 0);
  const int port = ntohs(sin.sin_port);
  return StrCat("127.", port >> 8, ".", port & 255, ".");
}

inline uint16_t FreePort() { return testbed::FreeLoopbackPort(); }

// A fixture on a loopback network and a port of its own: Ip(5) is "127.a.b.5", Url(5, 10) a
// route item "smtp://127.a.b.5?pref=10" for the routes list.
class LoopbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    net_ = LoopbackPrefix();
    port_ = FreePort();
  }
  std::string Ip(int last) const { return StrCat(net_, last); }
  std::string Url(int last, int pref) const {
    return StrCat("\"smtp://", Ip(last), "?pref=", pref, "\"");
  }
  std::string net_;
  uint16_t port_ = 0;
};

inline Endpoint Ep(const std::string& ip, uint16_t port) {
  return Endpoint{*IpAddress::Parse(ip), port};
}

inline std::unique_ptr<testbed::Farm> StartFarm(
    const std::vector<Endpoint>& listen, std::vector<std::pair<IpAddress, testbed::Fault>> faults = {}) {
  testbed::FarmOptions o;
  o.listen = listen;
  o.faults = std::move(faults);
  auto farm = testbed::Farm::Start(std::move(o));
  EXPECT_TRUE(farm.ok()) << farm.status();
  return farm.ok() ? *std::move(farm) : nullptr;
}

// The most of `times` (steady nanoseconds, ascending: the farm's RecentMailTimes or
// RecentAcceptTimes) within any window of 1 s (half-open), as a receiver that limits the rate
// counts them.
inline size_t MostInAnySecond(const std::vector<int64_t>& times) {
  size_t peak = 0;
  for (size_t i = 0, j = 0; i < times.size(); ++i) {
    while (times[i] - times[j] >= 1'000'000'000) ++j;
    peak = std::max(peak, i - j + 1);
  }
  return peak;
}

// Runs `o` against `s` and checks that every session is accounted for. Timeouts not set
// are generous: on a loaded machine a timeout would turn into a failover and skew what the
// tests count.
inline testbed::LoadReport RunAccountedLoad(Selector& s, testbed::LoadOptions o) {
  if (o.connector.banner_timeout_ms < 0) o.connector.banner_timeout_ms = 30'000;
  if (o.connector.connect_timeout_ms < 0) o.connector.connect_timeout_ms = 30'000;
  auto r = testbed::RunLoad(s, o);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  EXPECT_EQ(r->connected + r->deferred + r->failed, o.sessions) << "sessions lost";
  return *std::move(r);
}

inline const testbed::FarmAddressStats* StatsFor(const std::vector<testbed::FarmAddressStats>& all,
                                            const std::string& ip) {
  for (const auto& s : all) {
    if (s.endpoint.address.ToString() == ip) return &s;
  }
  return nullptr;
}

// Runs one Connect to completion on a private loop. The lease and fd come back in the
// result; the caller closes and releases.
inline io::ConnectResult ConnectOnce(Selector& selector, const std::string& domain,
                                     io::ConnectorOptions options = {}) {
  auto loop = io::Loop::Create(256);
  EXPECT_TRUE(loop.ok()) << loop.status();
  io::Connector connector(loop->get(), &selector, options);
  io::ConnectResult out;
  bool done = false;
  connector.Connect(domain, [&](io::ConnectResult r) {
    out = std::move(r);
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done && std::chrono::steady_clock::now() < deadline) (*loop)->RunOnce(100);
  EXPECT_TRUE(done) << "connect did not finish within 60 s";
  for (int i = 0; i < 5; ++i) (*loop)->RunOnce(1);  // drain cancelled link timeouts
  return out;
}

// Ends a connected session as the receiver counts it (DESIGN §1 rule 3): half-closes, waits
// (bounded, 10 s) for the server's EOF — it has closed its side, so it no longer counts the
// connection — then closes and releases the slot. Closing and releasing at once let the
// next connection reach the farm before it read the FIN: it counted limit + 1 (CI, ASan).
inline void CloseConnection(io::ConnectResult& r) {
  if (r.fd >= 0) {
    shutdown(r.fd, SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    char buf[512];
    for (auto now = std::chrono::steady_clock::now(); now < deadline;
         now = std::chrono::steady_clock::now()) {
      pollfd p{r.fd, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      if (poll(&p, 1, static_cast<int>(left.count()) + 1) <= 0) continue;
      if (recv(r.fd, buf, sizeof(buf), 0) <= 0) break;  // EOF (or reset): the server closed
    }
    close(r.fd);
  }
  r.fd = -1;
  r.lease.Release();
}

// A listener that never accepts, its accept queue already full: further SYNs are dropped,
// so a connect to it hangs until a timeout — a real connect timeout on loopback.
struct FullBacklog {
  explicit FullBacklog(const Endpoint& endpoint) : ep(endpoint) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_storage ss;
    socklen_t len = ep.ToSockaddr(&ss);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&ss), len), 0);
    EXPECT_EQ(listen(fd, 0), 0);
    for (int i = 0; i < 4; ++i) {  // non-blocking connects fill the queue
      int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      connect(c, reinterpret_cast<sockaddr*>(&ss), len);
      fillers.push_back(c);
    }
    // Wait (bounded) until the kernel has queued a completed connection: then the queue is
    // full and further SYNs are dropped. TCP_INFO on a listener reports the accept queue's
    // length (tcpi_unacked) and capacity (tcpi_sacked).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    tcp_info info{};
    socklen_t info_len = sizeof(info);
    while (std::chrono::steady_clock::now() < deadline &&
           getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &info_len) == 0 &&
           info.tcpi_unacked <= info.tcpi_sacked) {
      std::this_thread::yield();
    }
    EXPECT_GT(info.tcpi_unacked, info.tcpi_sacked) << "accept queue never filled";
  }
  ~FullBacklog() {
    for (int c : fillers) close(c);
    close(fd);
  }
  Endpoint ep;
  int fd;
  std::vector<int> fillers;
};

// A raw TCP peer: accepts connections and writes `chunks` to each, pausing `gap_ms` between
// chunks, then keeps the connection open until the client closes. For greetings the farm
// would never send (garbage, split, over-long).
class RawPeer {
 public:
  RawPeer(const Endpoint& ep, std::vector<std::string> chunks, int gap_ms = 0)
      : chunks_(std::move(chunks)), gap_ms_(gap_ms) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_storage ss;
    socklen_t len = ep.ToSockaddr(&ss);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&ss), len), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~RawPeer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  int accepted() const { return accepted_; }

 private:
  void Serve() {
    while (!stop_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      ++accepted_;
      for (const std::string& chunk : chunks_) {
        if (send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) break;
        if (gap_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms_));
      }
      char buf[256];
      while (!stop_ && recv(c, buf, sizeof(buf), 0) > 0) {
      }
      close(c);
    }
  }
  std::vector<std::string> chunks_;
  int gap_ms_;
  int fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_NET_TESTUTIL_H_
