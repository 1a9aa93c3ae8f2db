// A real DNS server for tests: dnsmasq (Debian dnsmasq-base) on 127.0.0.1 and a free port,
// answering only from the records given (--no-resolv --no-hosts, --local=/test/ so unknown
// names under .test are NXDOMAIN). Started per fixture, ended by its PID.
#ifndef MXSCHED_TESTS_DNSMASQ_H_
#define MXSCHED_TESTS_DNSMASQ_H_

#include <netinet/in.h>
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
  Dnsmasq(std::vector<std::string> records, int ttl) : port_(FreePort()) { Start(records, ttl); }
  ~Dnsmasq() { Stop(); }

  bool ok() const { return pid_ > 0; }
  std::string server() const { return StrCat("127.0.0.1:", port_); }

  // Same port, new records (dnsmasq reads its command line only at start).
  void Restart(std::vector<std::string> records, int ttl) {
    Stop();
    Start(records, ttl);
  }

 private:
  bool UdpPortTaken() const {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port_);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool taken = bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0;
    close(fd);
    return taken;
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
    // Ready once it has bound its port (it binds after reading its whole command line).
    // Bounded generously: a sanitizer build next to another build starts slowly.
    for (int i = 0; i < 3000 && !UdpPortTaken(); ++i) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {  // exited: bad arguments
        pid_ = -1;
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

  uint16_t port_;
  pid_t pid_ = -1;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_DNSMASQ_H_
