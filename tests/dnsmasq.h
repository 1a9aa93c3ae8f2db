// A real DNS server for tests: dnsmasq (Debian dnsmasq-base) on 127.0.0.1 and a free port,
// answering only from the records given (--no-resolv --no-hosts, --local=/test/ so unknown
// names under .test are NXDOMAIN). Started per fixture, ended by its PID.
#ifndef MXSCHED_TESTS_DNSMASQ_H_
#define MXSCHED_TESTS_DNSMASQ_H_

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "mxsched/base/strings.h"
#include "tests/net_testutil.h"

namespace mxsched::testing {

inline const char* DnsmasqBinary() {
  for (const char* p : {"/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return nullptr;
}

class Dnsmasq {
 public:
  // `records`: dnsmasq options such as "--mx-host=a.test,mx1.a.test,10",
  // "--host-record=mx1.a.test,127.0.0.1", "--dns-rr=n.test,15,000000".
  // A port is picked free, but another process may bind it before dnsmasq does (c-ares
  // clients of other tests bind ephemeral UDP ports): dnsmasq then exits, and the next
  // free port is tried.
  Dnsmasq(std::vector<std::string> records, int ttl) {
    for (int attempt = 0; attempt < 5 && pid_ <= 0; ++attempt) {
      port_ = FreePort();
      Start(records, ttl);
    }
  }
  ~Dnsmasq() { Stop(); }

  bool ok() const { return pid_ > 0; }
  std::string server() const { return StrCat("127.0.0.1:", port_); }

  // Same port, new records (dnsmasq reads its command line only at start).
  void Restart(std::vector<std::string> records, int ttl) {
    Stop();
    Start(records, ttl);
  }

 private:
  // True once dnsmasq answers a query on its port: "the port is bound" was not enough, the
  // port could be bound by someone else (a test then saw every lookup time out).
  bool Answers() const {
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port_);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // ID 0x6d78, RD, one question: "ready.test" A IN (NXDOMAIN under --local=/test/).
    static constexpr unsigned char kQuery[] = {
        0x6d, 0x78, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,  //
        5, 'r', 'e', 'a', 'd', 'y', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    bool answered = false;
    if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
        send(fd, kQuery, sizeof(kQuery), 0) == static_cast<ssize_t>(sizeof(kQuery))) {
      pollfd p{fd, POLLIN, 0};
      unsigned char reply[512];
      answered = poll(&p, 1, 100) == 1 && recv(fd, reply, sizeof(reply), 0) >= 12 &&
                 reply[0] == kQuery[0] && reply[1] == kQuery[1] && (reply[2] & 0x80) != 0;
    }
    close(fd);
    return answered;
  }

  void Start(const std::vector<std::string>& records, int ttl) {
    const char* bin = DnsmasqBinary();
    if (bin == nullptr) return;
    std::vector<std::string> args = {bin,
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--no-resolv",
                                     "--no-hosts",
                                     "--no-negcache",
                                     "--listen-address=127.0.0.1",
                                     "--bind-interfaces",
                                     "--user=root",
                                     "--pid-file=",
                                     StrCat("--port=", port_),
                                     StrCat("--local-ttl=", ttl),
                                     "--local=/test/"};
    args.insert(args.end(), records.begin(), records.end());
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      freopen("/dev/null", "w", stdout);
      freopen("/dev/null", "w", stderr);
      execv(bin, argv.data());
      _exit(127);
    }
    // Ready once it answers. Bounded generously: a sanitizer build next to another build
    // starts slowly. Each try waits up to 100 ms for the answer, or 10 ms after a refusal.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!Answers()) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: bad arguments, port taken
        pid_ = -1;
        return;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        Stop();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_DNSMASQ_H_
