// An out-of-tree program built against the installed package (tests/install_consumer_test.sh):
// README's embedding snippets, compiled as written there. Prints what it did, one line each.
//   consumer CONFIG
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "mxsched/admin/admin_server.h"
#include "mxsched/cluster/cluster.h"
#include "mxsched/io/connector.h"
#include "mxsched/scheduler/selector.h"
#include "mxsched/version.h"

static_assert(MXSCHED_VERSION >= 300, "mxsched/version.h gives the installed version");

namespace {
void defer(const std::string& why) { std::printf("deferred: %s\n", why.c_str()); }
// README's deliver(): the consumer connects nowhere that answers, so it is never called.
int deliver(int fd, const std::string& greeting) {
  std::printf("connected: %s\n", greeting.c_str());
  return fd >= 0 ? 1 : 0;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::printf("mxsched %s\n", MXSCHED_VERSION_STRING);
  // --- README: Embedding ---
  absl::StatusOr<mxsched::Config> parsed = mxsched::LoadConfigFile(argv[1]);
  if (!parsed.ok()) {  // e.g. "mx.conf:3:1: unknown option ..."
    std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  auto config = std::make_shared<const mxsched::Config>(*std::move(parsed));
  mxsched::Selector selector(config);  // one per process, shared by all workers

  mxsched::AcquireResult r = selector.Acquire("example.com");
  if (!r.ok()) {
    defer(r.deferral().ToString());
  } else {
    mxsched::Lease lease = r.TakeLease();  // holds one slot on host, domain and server
    std::printf("lease %s\n", lease.endpoint().ToString().c_str());
  }  // lease released here

  // --- README: With I/O ---
  auto loop = mxsched::io::Loop::Create();  // one per worker thread
  if (!loop.ok()) return 1;
  // --- README: fleet-wide limits (component cluster), from the same Config ---
  auto fleet = mxsched::cluster::FleetFromConfig(*config);
  if (!fleet.ok()) return 1;
  std::unique_ptr<mxsched::io::FleetClient> client;
  mxsched::io::ConnectorOptions options;
  if (*fleet) {
    client = mxsched::cluster::NewFleetClient(loop->get(), *fleet);
    options.cluster = client.get();
  }
  std::printf("fleet %s\n", *fleet ? "on" : "off");
  mxsched::io::Connector connector(loop->get(), &selector, options);
  connector.Connect("example.com", [&](mxsched::io::ConnectResult r) {
    if (r.kind != mxsched::io::ConnectResult::Kind::kConnected) return defer(r.reason);
    deliver(r.fd, r.greeting);                             // EHLO, MAIL, RCPT, DATA
    connector.Park(std::move(r));                          // QUIT, the server's close, the slot
  });
  while (connector.in_flight() > 0 || connector.parked() > 0) (*loop)->RunOnce(-1);

  // --- README: with reuse, a binding per message, the reason of a deferral ---
  mxsched::io::ConnectorOptions reuse_options;
  reuse_options.reuse = true;          // take parked connections before opening new ones
  reuse_options.slot_wait_ms = 10000;  // wait for a slot or a throttle's instant, not defer
  reuse_options.cluster = client.get();  // with cluster_limits (below); else null
  mxsched::io::Connector worker(loop->get(), &selector, reuse_options);
  std::string group = "pool";                           // a Binding or Binding_Group, per message
  worker.Connect("example.com", {.binding = group}, [&](mxsched::io::ConnectResult r) {
    if (r.kind != mxsched::io::ConnectResult::Kind::kConnected) {
      return defer(r.reason);
    }
    int accepted = deliver(r.fd, r.greeting);   // [EHLO,] MAIL, RCPT, DATA: 1 if accepted
    worker.Park(std::move(r), accepted);         // counts toward max_deliveries_per_connection
  });
  // Shutting down: Stop defers the sessions in flight and closes the parked connections
  // with QUIT (the destructor closes them too, but REQUIRES in_flight() == 0).
  worker.Stop("shutting down");
  while (worker.in_flight() > 0 || worker.parked() > 0) (*loop)->RunOnce(100);
  std::printf("stopped\n");

  // --- README: the admin endpoint (component admin) ---
  mxsched::admin::AdminOptions admin_options;
  admin_options.listen = "127.0.0.1:0";
  auto admin = mxsched::admin::AdminServer::Start(&selector, /*dns=*/nullptr, admin_options);
  if (!admin.ok()) {
    std::fprintf(stderr, "admin: %s\n", std::string(admin.status().message()).c_str());
    return 1;
  }
  std::printf("admin on port %d\n", (*admin)->port() > 0 ? 1 : 0);
  std::printf("done\n");
  return 0;
}
