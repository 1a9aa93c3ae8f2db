// DESIGN §8: the admin library against real peers — its HTTP listener spoken to over real
// loopback sockets (raw requests, so malformed ones can be sent), the metrics checked by
// Prometheus' own `promtool check metrics`.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "mxsched/admin/admin_server.h"
#include "mxsched/admin/metrics.h"
#include "mxsched/admin/views.h"
#include "mxsched/base/strings.h"
#include "tests/testutil.h"

namespace mxsched::admin {
namespace {

using testing::ConfigFrom;

struct HttpReply {
  int status = 0;
  std::string headers, body;
};

// One request over a fresh connection; the server closes after answering.
HttpReply Send(int port, const std::string& raw) {
  HttpReply r;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};  // a bound, not a timing assertion: a hung server fails the test
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return r;
  }
  size_t sent = 0;
  while (sent < raw.size()) {
    ssize_t n = send(fd, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string all;
  char buf[65536];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) all.append(buf, n);
  close(fd);
  const size_t end = all.find("\r\n\r\n");
  if (all.size() < 12 || end == std::string::npos) return r;
  r.status = std::atoi(all.substr(9, 3).c_str());
  r.headers = all.substr(0, end);
  r.body = all.substr(end + 4);
  return r;
}

HttpReply Get(int port, const std::string& path) {
  return Send(port, StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"));
}
HttpReply Post(int port, const std::string& path) {
  return Send(port, StrCat("POST ", path, " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
}

// Series -> value from a text exposition (comments dropped).
std::map<std::string, double> Series(const std::string& text) {
  std::map<std::string, double> out;
  for (std::string_view line : Split(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    out[std::string(line.substr(0, sp))] =
        std::strtod(std::string(line.substr(sp + 1)).c_str(), nullptr);
  }
  return out;
}

// `promtool check metrics` on `text`: its exit status and output.
int Promtool(const std::string& text, std::string* output) {
  char path[] = "/tmp/mxsched_metrics_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  (void)!write(fd, text.data(), text.size());
  close(fd);
  FILE* p = popen(StrCat("promtool check metrics < ", path, " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[512];
  while (fgets(buf, sizeof(buf), p)) *output += buf;
  const int rc = pclose(p);
  unlink(path);
  return WEXITSTATUS(rc);
}

constexpr char kConfig[] = R"(
  routes = ( "smtp://127.0.1.1?pref=1&ttl=3600" "smtp://127.0.1.2?pref=1" )
  Host "127.0.1.1" { max_outbound_connections = 2 }
)";

class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AdminOptions o;
    o.listen = "127.0.0.1:0";
    auto s = AdminServer::Start(&selector_, &dns_, o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    port_ = server_->port();
    ASSERT_GT(port_, 0);
  }

  io::DnsCache dns_;
  Selector selector_{ConfigFrom(kConfig)};
  std::unique_ptr<AdminServer> server_;
  int port_ = 0;
};

TEST_F(AdminServerTest, MetricsPassPromtoolAndMatchTheCollectablePath) {
  Lease a = selector_.Acquire("example.com").TakeLease();
  a.Report(Outcome::kConnected);
  a.RecordConnectLatency(2'000'000);
  Lease b = selector_.Acquire("example.com").TakeLease();
  b.Report(Outcome::kTimedOut);
  EXPECT_FALSE(selector_.Acquire("bad..domain").ok());
  HttpReply r = Get(port_, "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.headers.find("text/plain; version=0.0.4"), std::string::npos);
  std::string promtool;
  EXPECT_EQ(Promtool(r.body, &promtool), 0) << promtool;
  // The fast writer and prometheus-cpp's serializer over Collect() say the same thing.
  auto direct = Series(r.body);
  auto collected = Series(SerializeText(server_->metrics().Collect()));
  // The retry countdown moves between the two scrapes; everything else is still.
  std::erase_if(collected,
                [](const auto& kv) { return kv.first.find("retry_after") != std::string::npos; });
  std::map<std::string, double> still = direct;
  std::erase_if(still,
                [](const auto& kv) { return kv.first.find("retry_after") != std::string::npos; });
  EXPECT_EQ(still, collected);
  const std::string host = R"({host="127.0.1.1:25",mx="127.0.1.1")";
  EXPECT_EQ(direct.at(StrCat("mxsched_host_connection_limit", host, "}")), 2);
  EXPECT_EQ(direct.at(R"(mxsched_acquire_deferrals_total{reason="permanent_failure"})"), 1);
  EXPECT_EQ(direct.at("mxsched_domains_resident"), 1);
  EXPECT_EQ(direct.at(R"(mxsched_domains_total{event="created"})"), 1);
  EXPECT_EQ(direct.at(R"(mxsched_domains_total{event="evicted"})"), 0);
  EXPECT_EQ(direct.at("mxsched_routes_distinct"), 1);
  EXPECT_EQ(direct.at("mxsched_server_active_connections"), 2);
  double active = 0, connected = 0, timed_out = 0;
  for (const char* h : {"127.0.1.1:25", "127.0.1.2:25"}) {
    const std::string l = StrCat("{host=\"", h, "\",mx=\"", std::string_view(h).substr(0, 9));
    active += direct.at(StrCat("mxsched_host_active_connections", l, "\"}"));
    connected +=
        direct.at(StrCat("mxsched_host_connections_total", l, "\",outcome=\"connected\"}"));
    timed_out +=
        direct.at(StrCat("mxsched_host_connections_total", l, "\",outcome=\"timed_out\"}"));
  }
  EXPECT_EQ(active, 2);
  EXPECT_EQ(connected, 1);
  EXPECT_EQ(timed_out, 1);
}

// `served` and `later` are the same domain view read at two moments: ttl_left_s comes from
// the clock and may cross a second boundary in between (it did under ASan), so it is
// compared apart: equal or one second less.
void ExpectSameViewReadLater(nlohmann::json served, nlohmann::json later) {
  const int64_t served_ttl = served["ttl_left_s"].get<int64_t>();
  const int64_t later_ttl = later["ttl_left_s"].get<int64_t>();
  EXPECT_GE(served_ttl, later_ttl);
  EXPECT_LE(served_ttl - later_ttl, 1);
  served.erase("ttl_left_s");
  later.erase("ttl_left_s");
  EXPECT_EQ(served, later);
}

TEST_F(AdminServerTest, DomainViewIsTheRouteJsonAndGetCreatesNothing) {
  HttpReply missing = Get(port_, "/domains/example.com");
  EXPECT_EQ(missing.status, 404) << missing.body;
  EXPECT_EQ(selector_.domain_count(), 0u) << "a GET must not create the domain";
  Lease l = selector_.Acquire("example.com").TakeLease();
  HttpReply r = Get(port_, "/domains/Example.COM");
  ASSERT_EQ(r.status, 200) << r.body;
  nlohmann::json got = nlohmann::json::parse(r.body);
  ExpectSameViewReadLater(got, DomainViewJson(selector_, selector_.Describe("example.com"),
                                              /*have_dns=*/true));
  // The whole `route --json` view (issue 24): the route items, which tiers an MX lookup
  // filled, and the cluster fields (null: this worker has no cluster limits).
  ASSERT_EQ(got["items"].size(), 2u) << got;
  EXPECT_EQ(got["items"][0]["item"], "smtp://127.0.1.1?pref=1&ttl=3600");
  EXPECT_EQ(got["items"][0]["lookup"], "address");
  EXPECT_EQ(got["items"][0]["status"], "1 host(s)");
  EXPECT_EQ(got["tiers"][0]["mx"], false);
  EXPECT_TRUE(got.contains("cluster_active") && got["cluster_active"].is_null()) << got;
  EXPECT_TRUE(got["tiers"][0]["hosts"][0]["cluster_active"].is_null()) << got;
  EXPECT_EQ(got["active"], 1);
  HttpReply hosts = Get(port_, "/hosts");
  ASSERT_EQ(hosts.status, 200);
  nlohmann::json h = nlohmann::json::parse(hosts.body);
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0]["active"], 1);  // busiest first
  EXPECT_EQ(h[0]["state"], "up");
}

TEST_F(AdminServerTest, RefreshAppliesANewConfigurationNow) {
  Lease l = selector_.Acquire("example.com").TakeLease();
  selector_.SetConfig(ConfigFrom(R"(routes = ( "127.0.1.9" ))"));
  // Without a refresh the old route stays until its TTL (3600 s).
  auto before = selector_.DescribeResident("example.com");
  ASSERT_TRUE(before);
  EXPECT_EQ(before->tiers[0].hosts.size(), 2u);
  HttpReply r = Post(port_, "/refresh?domain=example.com");
  ASSERT_EQ(r.status, 200) << r.body;
  auto after = selector_.DescribeResident("example.com");
  ASSERT_TRUE(after);
  ASSERT_EQ(after->tiers.size(), 1u);
  ASSERT_EQ(after->tiers[0].hosts.size(), 1u);
  EXPECT_EQ(after->tiers[0].hosts[0].endpoint.ToString(), "127.0.1.9:25");
  ExpectSameViewReadLater(nlohmann::json::parse(r.body)["route"],
                          DomainViewJson(selector_, *after, /*have_dns=*/true));
  EXPECT_EQ(after->active, 1) << "open leases survive a refresh";
  EXPECT_EQ(Post(port_, "/refresh?domain=all").status, 200);
  EXPECT_EQ(Post(port_, "/refresh?domain=unknown.example").status, 404);
}

TEST_F(AdminServerTest, BadRequestsGet4xxAndChangeNothing) {
  Lease l = selector_.Acquire("example.com").TakeLease();
  selector_.SetConfig(ConfigFrom(R"(routes = ( "127.0.1.9" ))"));  // pending: a refresh would show
  auto tiers = [&] {
    return DomainViewJson(selector_, *selector_.DescribeResident("example.com"), true)["tiers"];
  };
  const nlohmann::json view = tiers();
  struct Case {
    std::string request;
    int status;
  };
  const std::string big(9000, 'a');
  const Case cases[] = {
      {"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"GET /domains/ HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405},
      {"GET /refresh?domain=all HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"PUT /refresh?domain=all HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405},
      {"GET /hosts?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET /domains/bad..name HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"POST /refresh?domain=%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400},
      {"POST /refresh?domain=example.com&x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
       400},
      {"POST /refresh?domain=a&domain=all HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400},
      {"POST /refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400},
      {"POST /refresh?domain=bad..name HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400},
      {StrCat("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ", big, "\r\n\r\n"), 400},
      {"GARBAGE\r\n\r\n", 400},
  };
  for (const Case& c : cases) {
    HttpReply r = Send(port_, c.request);
    EXPECT_GE(r.status, 400) << c.request.substr(0, 60);
    EXPECT_LT(r.status, 500) << c.request.substr(0, 60);
    if (c.request.size() < 200) {
      EXPECT_EQ(r.status, c.status) << c.request << r.body;
    }
  }
  EXPECT_EQ(tiers(), view) << "no bad request re-planned the route";
  EXPECT_EQ(selector_.domain_count(), 1u);
  EXPECT_EQ(Get(port_, "/metrics").status, 200) << "still serving";
}

TEST(AdminServer, StartFailureNamesTheAddress) {
  Selector selector(ConfigFrom(kConfig));
  AdminOptions o;
  o.listen = "127.0.0.1:0";
  auto first = AdminServer::Start(&selector, nullptr, o);
  ASSERT_TRUE(first.ok());
  o.listen = StrCat("127.0.0.1:", (*first)->port());
  auto second = AdminServer::Start(&selector, nullptr, o);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(o.listen), std::string::npos) << second.status();
}

}  // namespace
}  // namespace mxsched::admin
