// AdminServer: the HTTP admin endpoint of a process that embeds mxsched — Envoy's admin
// port, Momentum's console and KumoMTA's metrics listener in one small listener over a
// Selector (its HostRegistry) and, optionally, its DnsCache.
//
//   GET  /metrics          Prometheus text exposition (MetricsCollector, metrics.h)
//   GET  /domains/NAME     the domain's route as JSON, the same view as `mxsched route
//                          --json` with live counts (fleet-wide ones as the last heartbeat
//                          read them, with AdminOptions::fleet); 404 if not resident
//   GET  /hosts            every destination: active, limit, state, failures, retry time,
//                          the fleet's count (AdminOptions::fleet), and per egress binding
//                          its active, limit and failure memory
//   POST /refresh?domain=NAME|all
//                          Momentum's `refresh domain`: NAME re-plans now and answers its
//                          new view; `all` re-plans every domain lazily and drops the DNS
//                          cache. (A form body `domain=...` works too.)
//
//   GET  /                 an index of these endpoints
//
// Rules: GET never changes state (GET /domains uses Selector::DescribeResident: no entry is
// created, nothing re-planned, no DNS asked). Anything else — unknown path or method, a query
// parameter an endpoint does not take, malformed percent-encoding, a byte not valid in a
// domain name (a %00 included), headers over `max_request_bytes` — gets a 4xx and changes
// nothing. There is no authentication: whoever reaches the port can read every metric and
// view and POST /refresh (SECURITY.md), so the address is parsed here, not handed to a
// library: one ADDRESS:PORT, a bare PORT meaning 127.0.0.1 (docs/DESIGN.md §8).
//
// Why its own listener (was CivetWeb until issue 20): with CivetWeb each connection held a
// worker thread while its request trickled in, so ten slowloris connections kept /metrics
// unreachable for 40 s. Here one thread polls every connection: a request must be complete
// within `request_timeout_ms` of its accept (not per read), at most `max_connections` are
// open (a new one closes the oldest still reading), and a partial request costs a buffer,
// never a thread. Requests are HTTP/1.0/1.1 with `Connection: close`, no keep-alive, no
// chunked bodies — all a scraper, curl and `mxsched top` need.
//
// Threads: one, the listener's; handlers call only the thread-safe Selector, HostRegistry and
// DnsCache methods, concurrently with the data path, and are served one at a time.
// Lifetime: `selector` and `dns` are borrowed and must outlive the server. The destructor
// stops the listener thread and closes every connection.
#ifndef MXSCHED_ADMIN_ADMIN_SERVER_H_
#define MXSCHED_ADMIN_ADMIN_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/admin/metrics.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::admin {

struct AdminOptions {
  // ADDRESS:PORT ("127.0.0.1:9464", "[::1]:9464") or a bare PORT, which means 127.0.0.1.
  // Port 0 picks a free port (see AdminServer::port()). See ParseAdminAddress.
  std::string listen = "127.0.0.1:9464";
  // Connections open at once; a new one beyond this closes the oldest whose request is
  // still incomplete (or is refused if every open one is being answered).
  int max_connections = 32;
  // From accept to the end of the request (line, headers, body): the whole request, not a
  // read, so a client sending a byte a second is closed at this deadline.
  int request_timeout_ms = 5000;
  // For writing the answer (a large /metrics to a slow reader).
  int response_timeout_ms = 30000;
  // Request line + headers larger than this get 431.
  int max_request_bytes = 8192;
  // Hosts with their own /metrics series and /hosts entries (the busiest); the rest are
  // summed under host="other" (MetricsCollector).
  size_t max_host_series = MetricsCollector::kDefaultMaxHosts;
  // With cluster_limits: the process's fleet (cluster::View): the mxsched_cluster_* metrics
  // and the fleet-wide counts ("cluster_active") in GET /domains/NAME. Borrowed; outlives
  // the server.
  const io::FleetView* fleet = nullptr;
};

// The admin listen address: exactly one ADDRESS:PORT with an IP literal ("[v6]:port" for
// IPv6) or a bare PORT (127.0.0.1). Lists ("a:1,b:2"), names and CivetWeb's port suffixes
// ("9464s", "9464r") are refused with an error naming the value. A non-loopback address is
// accepted (the caller warns: the endpoint has no authentication).
absl::StatusOr<Endpoint> ParseAdminAddress(std::string_view text);

class AdminServer {
 public:
  // Starts listening. Errors name the address and what went wrong ("address in use").
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(Selector* selector, io::DnsCache* dns,
                                                            const AdminOptions& options = {});
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // The port listened on (the one picked, when asked for port 0), and the whole address.
  int port() const { return endpoint_.port; }
  const Endpoint& endpoint() const { return endpoint_; }
  const MetricsCollector& metrics() const { return metrics_; }

  // One answer; public for the listener's implementation only.
  struct Response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::string extra_headers;  // each ending in \r\n
  };
  Response Dispatch(std::string_view method, std::string_view target, std::string_view body);

 private:
  AdminServer(Selector* selector, io::DnsCache* dns, const AdminOptions& options)
      : selector_(selector), dns_(dns),
        metrics_(selector, dns, options.max_host_series, options.fleet),
        options_(options) {}
  void Run();

  Selector* selector_;
  io::DnsCache* dns_;
  MetricsCollector metrics_;
  AdminOptions options_;
  Endpoint endpoint_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: the destructor's stop signal
  std::thread thread_;
};

}  // namespace mxsched::admin

#endif  // MXSCHED_ADMIN_ADMIN_SERVER_H_
