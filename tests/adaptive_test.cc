// Receivers that push back (DESIGN §6), against real peers on loopback: the farm's cap:N
// fault (a receiver serving N sessions at once that answers the rest "421 4.7.0 too many
// connections"), adaptive per-host limits learned from those replies, provider limits shared
// by MX-name pattern and MX names blocked by name (dnsmasq for DNS).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/net_testutil.h"
#include "tests/testutil.h"

namespace mxsched {
namespace {

using io::Fault;
using testing::Ep;
using testing::StatsFor;

// Connects a blocking socket to `ep` and reads the first line the server sends.
std::string RawGreeting(const Endpoint& ep, int* fd_out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage ss;
  socklen_t len = ep.ToSockaddr(&ss);
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return "connect failed";
  }
  std::string line;
  char c;
  while (recv(fd, &c, 1, 0) == 1 && c != '\n') line += c;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  *fd_out = fd;
  return line;
}

class FarmCapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    net_ = testing::LoopbackPrefix();
    port_ = testing::FreePort();
  }
  std::string Ip(int last) const { return StrCat(net_, last); }
  std::string net_;
  uint16_t port_ = 0;
};

TEST_F(FarmCapTest, ServesNAtOnceAndAnswersTheRest421TooManyConnections) {
  Fault cap{Fault::Kind::kCap, 2};
  auto farm = testing::StartFarm({Ep(Ip(1), port_)}, {{*IpAddress::Parse(Ip(1)), cap}});
  ASSERT_NE(farm, nullptr);
  int a = -1, b = -1, c = -1, d = -1;
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &a).substr(0, 4), "220 ");
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &b).substr(0, 4), "220 ");
  EXPECT_EQ(RawGreeting(Ep(Ip(1), port_), &c), "421 4.7.0 too many connections from your IP");
  close(c);
  close(a);  // a served slot frees: the next connection is served again
  std::string g;
  for (int i = 0; i < 1000; ++i) {  // the farm sees the close asynchronously
    g = RawGreeting(Ep(Ip(1), port_), &d);
    if (g.substr(0, 4) == "220 ") break;
    close(d);
  }
  EXPECT_EQ(g.substr(0, 4), "220 ");
  close(b);
  close(d);
  const auto stats = farm->Stats();
  EXPECT_EQ(StatsFor(stats, Ip(1))->served_peak, 2);
  EXPECT_GE(StatsFor(stats, Ip(1))->rejected, 1u);
  EXPECT_EQ(StatsFor(stats, Ip(1))->fault.ToString(), "cap:2");
}

TEST(FarmFaultSpec, ParsesCap) {
  auto f = io::ParseFaultSpec("127.0.0.1=cap:4");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->second.kind, Fault::Kind::kCap);
  EXPECT_EQ(f->second.slow_ms, 4);
  EXPECT_FALSE(io::ParseFaultSpec("127.0.0.1=cap:x").ok());
}

}  // namespace
}  // namespace mxsched
