// AdminServer: the HTTP admin endpoint of a process that embeds mxsched — Envoy's admin
// port, Momentum's console and KumoMTA's metrics listener in one small listener over a
// Selector (its HostRegistry) and, optionally, its DnsCache.
//
//   GET  /metrics          Prometheus text exposition (MetricsCollector, metrics.h)
//   GET  /domains/NAME     the domain's route as JSON, the same view as `mxsched route
//                          --json` with live counts; 404 if the domain is not resident
//   GET  /hosts            every destination: active, limit, state, failures, retry time
//   POST /refresh?domain=NAME|all
//                          Momentum's `refresh domain`: NAME re-plans now and answers its
//                          new view; `all` re-plans every domain lazily and drops the DNS
//                          cache. (A form body `domain=...` works too.)
//
// Rules: GET never changes state (GET /domains uses Selector::DescribeResident: no entry is
// created, nothing re-planned, no DNS asked). Anything else — unknown path or method, a query
// parameter an endpoint does not take, malformed percent-encoding, an invalid domain name,
// headers over `max_request_bytes` — gets a 4xx and changes nothing. The listener binds
// loopback unless told otherwise; it has no authentication, so bind it where only operators
// reach it.
//
// Why CivetWeb: prometheus-cpp's Exposer (Debian prometheus-cpp-dev 1.0.1) serves only
// Collectables on GET and keeps its CivetServer private, so it cannot serve JSON or POST.
// The same package depends on libcivetweb-dev (CivetWeb 1.15), whose C API registers
// arbitrary handlers, enforces a request-size limit and runs its own worker threads: this
// class uses that directly rather than hand-writing an HTTP/1.1 server.
//
// Threads: CivetWeb's (`threads` workers plus its listener thread); handlers call only the
// thread-safe Selector, HostRegistry and DnsCache methods, concurrently with the data path.
// Lifetime: `selector` and `dns` are borrowed and must outlive the server. The destructor
// stops the listener and waits for requests in progress.
#ifndef MXSCHED_ADMIN_ADMIN_SERVER_H_
#define MXSCHED_ADMIN_ADMIN_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "mxsched/admin/metrics.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/selector.h"

struct mg_context;
struct mg_connection;

namespace mxsched::admin {

struct AdminOptions {
  // ADDRESS:PORT; port 0 picks a free port (see AdminServer::port()). IPv6: "[::1]:9464".
  std::string listen = "127.0.0.1:9464";
  int threads = 2;
  // Request line + headers larger than this get 413 (CivetWeb's max_request_size).
  int max_request_bytes = 8192;
};

class AdminServer {
 public:
  // Starts listening. Errors name the address and what went wrong.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(Selector* selector, io::DnsCache* dns,
                                                            const AdminOptions& options = {});
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // The port listened on (the one picked, when asked for port 0).
  int port() const { return port_; }
  const MetricsCollector& metrics() const { return metrics_; }

 private:
  AdminServer(Selector* selector, io::DnsCache* dns)
      : selector_(selector), dns_(dns), metrics_(selector, dns) {}
  static int Handle(mg_connection* conn, void* self);
  int Dispatch(mg_connection* conn);

  Selector* selector_;
  io::DnsCache* dns_;
  MetricsCollector metrics_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace mxsched::admin

#endif  // MXSCHED_ADMIN_ADMIN_SERVER_H_
