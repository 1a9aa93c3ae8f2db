// A minimal delivery worker embedding mxsched: one io_uring loop, one connector, optional
// DNS. For each domain on the command line it gets a ready SMTP connection (or the reason
// there is none), says QUIT, closes the socket and only then releases the slot.
//
//   example_worker CONFIG [--dns HOST:PORT] DOMAIN...

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "mxsched/cluster/cluster.h"
#include "mxsched/io/connector.h"
#include "mxsched/io/resolver.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: example_worker CONFIG [--dns HOST:PORT] DOMAIN...\n");
    return 2;
  }
  auto parsed = mxsched::LoadConfigFile(argv[1]);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  auto config = std::make_shared<const mxsched::Config>(*std::move(parsed));
  int first_domain = 2;
  std::string dns;
  if (std::string(argv[2]) == "--dns" && argc > 4) {
    dns = argv[3];
    first_domain = 4;
  }

  auto loop = mxsched::io::Loop::Create();  // one per worker thread
  if (!loop.ok()) return 1;
  mxsched::io::DnsCache cache;  // one per process, shared by all workers
  mxsched::Selector selector(config, {.resolver = dns.empty() ? nullptr : &cache});
  // cluster_limits set: the fleet's client, on this loop (the Connector refuses to connect
  // without it). It outlives the connector and every lease.
  auto fleet = mxsched::cluster::FleetFromConfig(*config);  // one per process
  if (!fleet.ok()) {
    std::fprintf(stderr, "%s\n", std::string(fleet.status().message()).c_str());
    return 2;
  }
  std::unique_ptr<mxsched::io::FleetClient> client;  // one per loop
  mxsched::io::ConnectorOptions options;
  if (*fleet) {
    client = mxsched::cluster::NewFleetClient(loop->get(), *fleet);
    options.cluster = client.get();
  }
  if (getenv("EXAMPLE_WORKER_NO_CLUSTER") != nullptr) options.cluster = nullptr;  // tests
  mxsched::io::Connector connector(loop->get(), &selector, options);
  std::unique_ptr<mxsched::io::DnsClient> resolver;
  if (!dns.empty()) {
    auto c = mxsched::io::DnsClient::Create(loop->get(), &cache, dns);
    if (!c.ok()) return 2;
    resolver = *std::move(c);
    resolver->SetOnChange([&] { connector.OnRoutesChanged(); });  // wake sessions waiting on DNS
  }

  for (int i = first_domain; i < argc; ++i) {
    std::string domain = argv[i];
    connector.Connect(domain, [domain, &connector](mxsched::io::ConnectResult r) {
      if (r.kind != mxsched::io::ConnectResult::Kind::kConnected) {
        std::printf("%s: %s: %s\n", domain.c_str(),
                    std::string(mxsched::io::ConnectKindName(r.kind)).c_str(), r.reason.c_str());
        return;
      }
      std::printf("%s: connected to %s after %d attempt(s): %s\n", domain.c_str(),
                  r.lease.endpoint().ToString().c_str(), r.attempts, r.greeting.c_str());
      // ... EHLO, MAIL, RCPT, DATA would go here ...
      // QUIT, read on to the server's close, then the slot and the fleet's lease go back:
      // the MX never sees limit + 1 (DESIGN §1 rule 3). With ConnectorOptions::reuse the
      // connection would stay open for the next message instead (§13).
      connector.Park(std::move(r));
    });
  }
  while (connector.in_flight() > 0 || connector.parked() > 0) (*loop)->RunOnce(-1);
  return 0;
}
