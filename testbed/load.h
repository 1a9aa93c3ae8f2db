// Load driver behind `mxsched load` and the demo: runs N sessions with C in flight over T
// threads (one io_uring Loop + Connector each, one shared Selector). A session: connect
// (through the Connector), hold H ms, send QUIT, read the reply, close, release.
// Every session ends as connected, deferred or failed — the three counts add up to N.
//
// Thread-safety: RunLoad blocks its caller; the progress callback runs on the caller's
// thread about twice a second.
#ifndef MXSCHED_TESTBED_LOAD_H_
#define MXSCHED_TESTBED_LOAD_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/io/cluster_limits.h"
#include "mxsched/io/connector.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::io {

class DnsCache;

struct LoadOptions {
  std::vector<std::string> domains;  // sessions go round-robin over these
  int64_t sessions = 1000;
  int concurrency = 10;
  int threads = 1;
  int hold_ms = 0;
  // >= 0: after the greeting, run one message transaction (EHLO, MAIL, RCPT, DATA with a
  // body of about this many bytes, ".") before QUIT — the dialogue Postfix's smtp-source
  // runs, for a like-for-like comparison. -1: QUIT only.
  int message_bytes = -1;
  // At max_seconds, or once *stop is true (a signal handler's flag), the run stops: no new
  // session starts; a session holding (--hold-ms) quits at once and is counted deferred,
  // kind "stopped"; one in its dialogue finishes it; sessions never started are reported
  // as not_started. Sessions still inside Connect end by their own bounded timeouts.
  int max_seconds = 600;
  const volatile bool* stop = nullptr;
  ConnectorOptions connector;
  // Optional DNS: one c-ares client per thread, pointed at `dns_server` ("127.0.0.1:5353"),
  // all storing into `dns_cache` — which must be the Resolver the Selector was built with.
  std::string dns_server;
  DnsCache* dns_cache = nullptr;
  // Cluster-wide limits (DESIGN §7): one ClusterClient per thread on this process's
  // ClusterLimits. Null: limits are per process.
  std::shared_ptr<ClusterLimits> cluster;
  std::function<void(int64_t done, int64_t connected, int64_t deferred, int64_t failed)> progress;
  int progress_interval_ms = 500;
};

struct LoadReport {
  // connected: the whole dialogue ran. A session whose dialogue failed after the greeting is
  // failed, kind "dialogue" (the connection itself was made).
  int64_t sessions = 0, connected = 0, deferred = 0, failed = 0;
  std::string stopped_by;  // "", "max_seconds" or "signal"
  int64_t not_started = 0;  // sessions never started because the run stopped
  double seconds = 0;
  double sessions_per_second = 0;   // all ended sessions / wall time
  double connected_per_second = 0;  // connected sessions / wall time
  // Connected sessions, from Connect() to a ready connection less any slot wait: the time
  // the network and the server took.
  int64_t connect_p50_us = 0, connect_p99_us = 0, connect_max_us = 0;
  // Sessions (of any outcome) that waited for a free slot, and how long (percentiles over
  // those sessions only).
  int64_t waited = 0;
  int64_t wait_p50_us = 0, wait_p99_us = 0, wait_max_us = 0;
  int64_t max_rss_kb = 0;  // the process's peak resident memory at the end of the run
  // Connected sessions per 250 ms interval since the start, for plots.
  std::vector<int64_t> connected_timeline;
  // Busy greetings ("421 4.7.0 too many connections"...) met by all sessions (docs/DESIGN.md §6).
  int64_t busy_replies = 0;
  struct Host {
    int64_t sessions = 0;
    int64_t peak = 0;  // client-side peak concurrent connections
    // At the end of the run (docs/DESIGN.md §6): the effective limit, the configured one, busy
    // replies the host gave (since the selector started) and why the limit last moved.
    int32_t limit = 0;
    int32_t configured_limit = 0;
    uint64_t busy_replies = 0;
    std::string limit_moved;
  };
  std::map<std::string, Host> hosts;               // "127.0.1.1:2525"
  std::map<std::string, int64_t> deferrals;        // by reason kind
  std::map<std::string, int64_t> failures;         // by outcome
  std::map<std::string, std::string> examples;     // one full reason per kind
  // With cluster limits: this process's counters (ClusterLimits::Stats) at the end.
  struct Cluster {
    int64_t leases = 0, local_leases = 0, waits = 0, wait_ms = 0, wakeups = 0, refreshes = 0,
            reregistered = 0, redis_errors = 0, noscript = 0, mode_switches = 0, commands = 0,
            live_workers = 0;
    std::string mode;  // "normal" or the failure mode in force at the end
  };
  std::optional<Cluster> cluster;
  std::string ToJson() const;
  std::string ToText() const;
};

absl::StatusOr<LoadReport> RunLoad(Selector& selector, const LoadOptions& options);

}  // namespace mxsched::io

#endif  // MXSCHED_TESTBED_LOAD_H_
