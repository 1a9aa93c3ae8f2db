// A delivery worker as README's "With I/O" section describes one (public headers only):
// messages over reused connections (ConnectorOptions::reuse, Park, ConnectResult::reused),
// through a Binding or Binding_Group chosen per message, under the configuration's
// throttles and, with cluster_limits, the fleet's client. Ends with Stop and runs the loop
// until the parked connections are closed. tests/embed_reuse_test.sh runs it against the farm.
//   embed_worker CONFIG BINDING MESSAGES CONCURRENCY DOMAIN...
// Prints "delivered D fresh F reused R deferred X failed Y parked_after_stop P", then one
// "binding NAME N" line per Binding taken and one "reason ..." line per deferral kind.
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mxsched/cluster/cluster.h"
#include "mxsched/io/connector.h"

namespace {
// One reply (multi-line aware) from the blocking socket: its code, or 0 on EOF or garbage.
int ReadReply(int fd) {
  for (int lines = 0; lines < 100; ++lines) {
    std::string line;
    char c = 0;
    while (line.size() < 1000) {
      if (recv(fd, &c, 1, 0) != 1) return 0;
      if (c == '\n') break;
      line += c;
    }
    if (line.size() < 4) return 0;
    if (line[3] == ' ') return std::atoi(line.substr(0, 3).c_str());
  }
  return 0;
}
bool Step(int fd, const std::string& cmd, int want) {
  if (send(fd, cmd.data(), cmd.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(cmd.size()))
    return false;
  return ReadReply(fd) / 100 == want;
}
// A dialogue that broke: half-close and read on to the server's EOF (at most 1 s, 64 KiB),
// so the server has stopped counting it before the slot goes (DESIGN §1 rule 3).
void Abandon(int fd) {
  shutdown(fd, SHUT_WR);
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  for (int i = 0; i < 16 && recv(fd, buf, sizeof(buf), 0) > 0; ++i) {
  }
  close(fd);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: embed_worker CONFIG BINDING MESSAGES CONCURRENCY DOMAIN...\n");
    return 2;
  }
  auto parsed = mxsched::LoadConfigFile(argv[1]);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  auto config = std::make_shared<const mxsched::Config>(*std::move(parsed));
  const std::string binding = argv[2];
  const int messages = std::atoi(argv[3]);
  const size_t concurrency = std::strtoul(argv[4], nullptr, 10);
  const std::vector<std::string> domains(argv + 5, argv + argc);

  auto loop = mxsched::io::Loop::Create();
  if (!loop.ok()) return 1;
  mxsched::Selector selector(config);
  auto fleet = mxsched::cluster::FleetFromConfig(*config);
  if (!fleet.ok()) {
    std::fprintf(stderr, "%s\n", std::string(fleet.status().message()).c_str());
    return 2;
  }
  std::unique_ptr<mxsched::io::FleetClient> client;
  mxsched::io::ConnectorOptions options;
  options.reuse = true;
  options.slot_wait_ms = 30000;
  if (*fleet) {
    client = mxsched::cluster::NewFleetClient(loop->get(), *fleet);
    options.cluster = client.get();
  }
  mxsched::io::Connector connector(loop->get(), &selector, options);

  int delivered = 0, fresh = 0, reused = 0, deferred = 0, failed = 0;
  std::map<std::string, int> bindings, reasons;
  auto done = [&](mxsched::io::ConnectResult r) {
    if (r.kind != mxsched::io::ConnectResult::Kind::kConnected) {
      ++(r.kind == mxsched::io::ConnectResult::Kind::kDeferred ? deferred : failed);
      reasons[r.reason]++;
      return;
    }
    ++(r.reused ? reused : fresh);
    bindings[std::string(r.lease.binding())]++;
    // A reused connection answered RSET: its EHLO state stands, no EHLO again.
    const bool ok = (r.reused || Step(r.fd, "EHLO worker.test\r\n", 2)) &&
                    Step(r.fd, "MAIL FROM:<a@worker.test>\r\n", 2) &&
                    Step(r.fd, "RCPT TO:<b@" + r.domain + ">\r\n", 2) &&
                    Step(r.fd, "DATA\r\n", 3) && Step(r.fd, "Subject: t\r\n\r\nhi\r\n.\r\n", 2);
    if (!ok) {  // broken mid-transaction: not parked; the socket first, then the slot
      ++failed;
      reasons["dialogue"]++;
      Abandon(r.fd);
      return;
    }
    ++delivered;
    connector.Park(std::move(r), 1);
  };
  int started = 0;
  for (int turns = 0; turns < 10'000'000; ++turns) {
    while (started < messages && connector.in_flight() < concurrency) {
      connector.Connect(domains[started % domains.size()], {.binding = binding}, done);
      ++started;
    }
    if (started >= messages && connector.in_flight() == 0) break;
    (*loop)->RunOnce(-1);
  }
  connector.Stop("worker done");
  for (int turns = 0; turns < 1000 && (connector.in_flight() > 0 || connector.parked() > 0);
       ++turns) {
    (*loop)->RunOnce(100);
  }
  std::printf("delivered %d fresh %d reused %d deferred %d failed %d parked_after_stop %zu\n",
              delivered, fresh, reused, deferred, failed, connector.parked());
  for (const auto& [name, n] : bindings) std::printf("binding %s %d\n", name.c_str(), n);
  for (const auto& [why, n] : reasons) std::printf("reason %d %s\n", n, why.c_str());
  return delivered == messages ? 0 : 1;
}
