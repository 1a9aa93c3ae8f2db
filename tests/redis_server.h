// A real Redis for tests: Debian's redis-server on 127.0.0.1 and a free port, in memory only
// (--save "" --appendonly no), maxmemory-policy noeviction (an evicted lease key would free
// a slot), started per test and ended by its PID; Kill() + Start() on the same port is a
// Redis restart that loses everything, script cache included. Query() is a synchronous
// hiredis call for the test's own checks.
#ifndef MXSCHED_TESTS_REDIS_SERVER_H_
#define MXSCHED_TESTS_REDIS_SERVER_H_

#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "mxsched/base/strings.h"
#include "tests/net_testutil.h"

namespace mxsched::testing {

inline const char* RedisServerBinary() {
  for (const char* p : {"/usr/bin/redis-server", "/usr/sbin/redis-server"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return nullptr;
}

class RedisServer {
 public:
  RedisServer() : port_(FreePort()) { Start(); }
  ~RedisServer() { Stop(SIGTERM); }

  bool ok() const { return pid_ > 0; }
  uint16_t port() const { return port_; }
  std::string url() const { return StrCat("redis://127.0.0.1:", port_); }

  void Start() {
    const char* bin = RedisServerBinary();
    if (bin == nullptr || pid_ > 0) return;
    std::vector<std::string> args = {bin,
                                     "--port",
                                     StrCat(port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "no",
                                     "--maxmemory-policy",
                                     "noeviction",
                                     "--daemonize",
                                     "no",
                                     "--logfile",
                                     "",
                                     "--loglevel",
                                     "warning"};
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      freopen("/dev/null", "w", stdout);
      execv(bin, argv.data());
      _exit(127);
    }
    for (int i = 0; i < 1000; ++i) {  // bounded: 10 s
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      if (Query("PING") == "PONG") return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // SIGKILL: a crash. SIGTERM: a clean stop.
  void Stop(int sig = SIGKILL) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // One command, the reply as text: a string/status/error as is, an integer in decimal,
  // "" when Redis cannot be reached.
  std::string Query(const std::vector<std::string>& argv) const {
    timeval tv{2, 0};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (c == nullptr || c->err) {
      if (c != nullptr) redisFree(c);
      return "";
    }
    redisSetTimeout(c, tv);
    std::vector<const char*> args;
    std::vector<size_t> lens;
    for (const auto& a : argv) {
      args.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()));
    std::string out;
    if (r != nullptr) {
      if (r->type == REDIS_REPLY_INTEGER) {
        out = StrCat(r->integer);
      } else if (r->str != nullptr) {
        out.assign(r->str, r->len);
      }
      freeReplyObject(r);
    }
    redisFree(c);
    return out;
  }
  std::string Query(const char* one) const { return Query(std::vector<std::string>{one}); }

 private:
  uint16_t port_;
  pid_t pid_ = -1;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_REDIS_SERVER_H_
