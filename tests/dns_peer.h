// A hand-written DNS server for tests that need answers dnsmasq will not give on demand: it
// listens on UDP and TCP on 127.0.0.1 and a free port, on one thread of its own, and
//  - answers A queries for any name not `truncated` with `address` (TTL `ttl`),
//  - answers every query for `truncated` over UDP with an empty, TC=1 answer (RFC 1035 4.2.1:
//    the client must retry over TCP), and over TCP with `mx_count` MX records;
//  - holds every TCP answer until Release() was called, and with `hold_udp_until_tcp` every
//    UDP answer for another name until a TCP query arrived (so UDP queries are outstanding
//    when c-ares switches to TCP);
//  - answers NXDOMAIN with an SOA whose minimum is `negative_ttl` for names with an `nx`
//    label — until SetNxExists(true), from when they exist like any other name.
// dnsmasq cannot hold one answer while giving others, which is what makes races between a
// TCP retry and UDP lookups deterministic. Stopped (thread joined) by its destructor.
//
// Thread-safety: the counters and Release() may be used from any thread.
#ifndef MXSCHED_TESTS_DNS_PEER_H_
#define MXSCHED_TESTS_DNS_PEER_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "mxsched/base/strings.h"
#include "tests/net_testutil.h"

namespace mxsched::testing {

class DnsPeer {
 public:
  struct Options {
    std::string truncated = "many.test";
    int mx_count = 50;
    std::string address = "127.0.0.1";
    uint32_t ttl = 300;
    uint32_t negative_ttl = 2;
    bool hold_udp_until_tcp = false;
  };

  explicit DnsPeer(Options o) : o_(std::move(o)) {
    wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    // FreePort() is free for TCP when asked; the UDP port of the same number may be a
    // resolver's ephemeral socket (c-ares of an earlier test): try other ports until both
    // bind (bounded).
    for (int attempt = 0; attempt < 20 && !ok_; ++attempt) {
      if (udp_ >= 0) close(udp_);
      if (tcp_ >= 0) close(tcp_);
      port_ = FreePort();
      udp_ = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      tcp_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      int one = 1;
      setsockopt(tcp_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      sockaddr_in sin{};
      sin.sin_family = AF_INET;
      sin.sin_port = htons(port_);
      sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ok_ = bind(udp_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
            bind(tcp_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
            listen(tcp_, 8) == 0;
    }
    if (ok_) thread_ = std::thread([this] { Run(); });
  }
  ~DnsPeer() {
    stop_ = true;
    Wake();
    if (thread_.joinable()) thread_.join();
    for (int fd : {udp_, tcp_, wake_}) close(fd);
    for (Conn& c : conns_) close(c.fd);
  }

  bool ok() const { return ok_; }
  std::string server() const { return StrCat("127.0.0.1:", port_); }
  // Lets the held TCP answers go (and every later one).
  void Release() {
    released_ = true;
    Wake();
  }
  void SetNxExists(bool exists) { nx_exists_ = exists; }
  int tcp_queries() const { return tcp_queries_; }
  int udp_queries() const { return udp_queries_; }

 private:
  struct Conn {
    int fd;
    std::string in;
    std::vector<std::string> held;  // full answers (with length prefix) not yet sent
  };

  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_, &one, sizeof(one));
  }

  void Run() {
    while (!stop_) {
      std::vector<pollfd> fds = {{wake_, POLLIN, 0}, {udp_, POLLIN, 0}, {tcp_, POLLIN, 0}};
      for (const Conn& c : conns_) fds.push_back({c.fd, POLLIN, 0});
      if (poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents) {
        uint64_t v;
        [[maybe_unused]] ssize_t n = read(wake_, &v, sizeof(v));
      }
      if (fds[1].revents) ServeUdp();
      if (fds[2].revents) {
        int fd = accept4(tcp_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) conns_.push_back({fd, {}, {}});
      }
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (i + 3 < fds.size() && fds[i + 3].revents) ReadTcp(conns_[i]);
      }
      FlushUdp();
      if (released_) {
        for (Conn& c : conns_) {
          for (const std::string& a : c.held) {
            [[maybe_unused]] ssize_t n = send(c.fd, a.data(), a.size(), MSG_NOSIGNAL);
          }
          c.held.clear();
        }
      }
      std::erase_if(conns_, [](const Conn& c) { return c.fd < 0; });
    }
  }

  void ServeUdp() {
    char buf[1500];
    sockaddr_in from{};
    socklen_t len = sizeof(from);
    ssize_t n;
    while ((n = recvfrom(udp_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len)) >
           0) {
      ++udp_queries_;
      std::string answer = Answer(std::string_view(buf, n), /*tcp=*/false);
      const bool tc = answer.size() > 3 && (answer[2] & 0x02);
      if (!answer.empty()) udp_held_.push_back({std::move(answer), from});
      if (tc) {  // the truncated answer goes at once, the others wait for the TCP retry
        SendUdp(udp_held_.back());
        udp_held_.pop_back();
      }
      len = sizeof(from);
    }
    FlushUdp();
  }
  void FlushUdp() {
    if (o_.hold_udp_until_tcp && tcp_queries_ == 0) return;
    for (const auto& h : udp_held_) SendUdp(h);
    udp_held_.clear();
  }
  void SendUdp(const std::pair<std::string, sockaddr_in>& h) {
    sendto(udp_, h.first.data(), h.first.size(), 0, reinterpret_cast<const sockaddr*>(&h.second),
           sizeof(h.second));
  }

  void ReadTcp(Conn& c) {
    char buf[4096];
    ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(c.fd);
        c.fd = -1;
      }
      return;
    }
    c.in.append(buf, n);
    while (c.in.size() >= 2) {
      const size_t len = (uint8_t(c.in[0]) << 8) | uint8_t(c.in[1]);
      if (c.in.size() < 2 + len) break;
      ++tcp_queries_;
      std::string answer = Answer(std::string_view(c.in).substr(2, len), /*tcp=*/true);
      c.in.erase(0, 2 + len);
      if (answer.empty()) continue;
      std::string framed;
      framed.push_back(char(answer.size() >> 8));
      framed.push_back(char(answer.size() & 0xff));
      framed += answer;
      c.held.push_back(std::move(framed));
    }
  }

  static void Put16(std::string& s, uint16_t v) {
    s.push_back(char(v >> 8));
    s.push_back(char(v & 0xff));
  }
  static void Put32(std::string& s, uint32_t v) {
    Put16(s, uint16_t(v >> 16));
    Put16(s, uint16_t(v & 0xffff));
  }
  static void PutName(std::string& s, const std::string& name) {
    size_t start = 0;
    while (start < name.size()) {
      size_t dot = name.find('.', start);
      if (dot == std::string::npos) dot = name.size();
      s.push_back(char(dot - start));
      s.append(name, start, dot - start);
      start = dot + 1;
    }
    s.push_back('\0');
  }

  // The answer to one query, or "" to ignore it.
  std::string Answer(std::string_view q, bool tcp) {
    if (q.size() < 12) return "";
    std::string name;
    size_t i = 12;
    while (i < q.size() && q[i] != 0) {
      const size_t l = uint8_t(q[i]);
      if (i + 1 + l > q.size()) return "";
      if (!name.empty()) name.push_back('.');
      name.append(q.substr(i + 1, l));
      i += 1 + l;
    }
    if (i + 5 > q.size()) return "";
    const size_t question_end = i + 5;
    const uint16_t qtype = (uint8_t(q[i + 1]) << 8) | uint8_t(q[i + 2]);
    name = ToLower(name);
    std::string r(q.substr(0, 2));  // id
    const bool nx =
        !nx_exists_ && (name.starts_with("nx.") || name.find(".nx.") != std::string::npos);
    uint16_t flags = 0x8400 | (uint8_t(q[2]) & 0x01) << 8;  // QR AA, RD copied
    if (nx) flags |= 3;
    const bool truncate = name == o_.truncated && !tcp;
    if (truncate) flags |= 0x0200;
    Put16(r, flags);
    Put16(r, 1);  // QDCOUNT
    std::string answers;
    uint16_t ancount = 0, nscount = 0;
    if (nx) {
      Put16(answers, 0xc00c);
      Put16(answers, 6);  // SOA
      Put16(answers, 1);
      Put32(answers, o_.negative_ttl);
      std::string rdata;
      PutName(rdata, "ns.nx.test");
      PutName(rdata, "hostmaster.nx.test");
      for (uint32_t v : {1u, 3600u, 600u, 86400u}) Put32(rdata, v);
      Put32(rdata, o_.negative_ttl);
      Put16(answers, uint16_t(rdata.size()));
      answers += rdata;
      nscount = 1;
    } else if (truncate) {
      // nothing: TC=1 and an empty answer section
    } else if (name == o_.truncated && qtype == 15) {
      for (int k = 0; k < o_.mx_count; ++k) {
        Put16(answers, 0xc00c);
        Put16(answers, 15);
        Put16(answers, 1);
        Put32(answers, o_.ttl);
        std::string rdata;
        Put16(rdata, 10);
        PutName(rdata, StrCat("mx", k, ".", o_.truncated));
        Put16(answers, uint16_t(rdata.size()));
        answers += rdata;
        ++ancount;
      }
    } else if (qtype == 1) {
      Put16(answers, 0xc00c);
      Put16(answers, 1);
      Put16(answers, 1);
      Put32(answers, o_.ttl);
      Put16(answers, 4);
      in_addr a{};
      inet_pton(AF_INET, o_.address.c_str(), &a);
      answers.append(reinterpret_cast<const char*>(&a), 4);
      ancount = 1;
    }
    Put16(r, ancount);
    Put16(r, nscount);
    Put16(r, 0);
    r.append(q.substr(12, question_end - 12));
    r += answers;
    return r;
  }

  Options o_;
  uint16_t port_ = 0;
  int wake_ = -1, udp_ = -1, tcp_ = -1;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<bool> released_{false};
  std::atomic<bool> nx_exists_{false};
  std::atomic<int> tcp_queries_{0};
  std::atomic<int> udp_queries_{0};
  std::vector<Conn> conns_;
  std::vector<std::pair<std::string, sockaddr_in>> udp_held_;
  std::thread thread_;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_DNS_PEER_H_
