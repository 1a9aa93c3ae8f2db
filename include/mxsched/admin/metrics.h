// MetricsCollector: a prometheus-cpp Collectable that builds mxsched's metric families at
// scrape time from state the Selector, its HostRegistry and the DnsCache already keep. It
// adds nothing to Acquire/Release: every value below is read (relaxed atomics, or a lock
// the slow path already owns) only when Collect() runs.
//
//   auto metrics = std::make_shared<mxsched::admin::MetricsCollector>(&selector, &dns_cache);
//   registry-less: prometheus::TextSerializer().Serialize(out, metrics->Collect());
//   or with prometheus-cpp's Exposer: exposer.RegisterCollectable(metrics);
//   or AdminServer (admin_server.h), which serves it on GET /metrics.
//
// Metric table (units are base units; counters end in _total). Labels are bounded: `host`
// (address:port) and `mx` (the first MX or host name that led to the address) exist once
// per destination the process has talked to — bounded by its routes and DNS answers, the
// same bound as the HostRegistry's memory — and every other label has a fixed value set
// listed here; `provider` is one of the configuration's `Host "pattern"` stanzas. There are
// no per-domain labels (domains are unbounded: use GET /domains/NAME).
//
// One line per metric: name (type; labels): meaning.
//   mxsched_host_active_connections (gauge; host, mx): leases held now (connecting, greeting or
//       delivering)
//   mxsched_host_connection_limit (gauge; host, mx): effective per-host limit (+Inf: unlimited)
//   mxsched_host_configured_connection_limit (gauge; host, mx): the configured limit; the effective
//       one is lower while busy replies hold it down (DESIGN §6)
//   mxsched_host_parked_connections (gauge; host, mx): of the active ones, connections parked
//       for reuse now (DESIGN §13; they keep their slot)
//   mxsched_host_busy_replies_total (counter; host, mx): busy replies ("421 too many
//       connections"...) from the destination
//   mxsched_host_reachable (gauge; host, mx): 1 if a new connection may go (0: inside
//       host_failure_retry or its probe is out)
//   mxsched_host_consecutive_failures (gauge; host, mx): failures since the last success
//   mxsched_host_retry_after_seconds (gauge; host, mx): seconds until a failed host gets its probe
//       (0: reachable)
//   mxsched_host_connections_total (counter; host, mx, outcome): reported outcomes: connected,
//       connect_failed, timed_out, greeting_rejected, protocol_error, local_error, busy
//   mxsched_host_connect_duration_seconds (histogram; host, mx): Acquire to 2xx greeting, successful
//       connections only (buckets 1 ms .. 5 s)
//   mxsched_hosts (gauge): destinations known to the registry
//   mxsched_hosts_total (counter; event): host states created and evicted (DESIGN §5)
//   mxsched_host_series_hosts (gauge): hosts with their own series (at most max_hosts; the rest are
//       summed under host="other")
//   mxsched_provider_active_connections (gauge; provider): connections on the hosts of a provider
//       pattern (`Host "*.example"`)
//   mxsched_provider_connection_limit (gauge; provider): the limit they share
//   mxsched_server_active_connections (gauge): leases held against server_max_outbound_connections
//   mxsched_server_connection_limit (gauge): server_max_outbound_connections in force (+Inf:
//       unlimited)
//   mxsched_acquire_deferrals_total (counter; reason): Acquire answers that were deferrals
//       (hosts_at_limit, domain_limit, server_limit, hosts_unreachable, no_mx_reachable, resolving,
//       temporary_failure, permanent_failure); a session that waits and retries counts each answer
//   mxsched_sessions_total (counter; result): connector sessions ended: connected, deferred, failed
//   mxsched_sessions_waiting (gauge): sessions queued for a slot now (rule 8)
//   mxsched_session_wait_seconds (histogram): slot-wait time of sessions that waited, first wait to
//       end (buckets 1 ms .. 120 s)
//   mxsched_domains_resident (gauge): domains with a route entry in the selector
//   mxsched_domains_total (counter; event): domain entries created and evicted (DESIGN §5)
//   mxsched_routes_distinct (gauge): distinct route snapshots; domains with equal routes share one
//   mxsched_parked_connections (gauge): connections parked for reuse now, all hosts (DESIGN §13)
//   mxsched_connection_reuse_events_total (counter; event): parked, reused (taken up after RSET),
//       stale (RSET failed: closed, a fresh connection instead), and parked connections closed:
//       idle_timeout, server_closed, evicted, max_deliveries, stopped
//   mxsched_dns_lookups_total (counter; result): resolver lookups: hit (fresh cached answer), miss
//   mxsched_dns_queries_total (counter): queries handed to a DNS client
//   mxsched_dns_answers_total (counter; result): answers stored: ok, nodata, nxdomain, tempfail
//   mxsched_dns_cache_entries (gauge): names and types in the DNS cache
// With egress bindings configured (DESIGN §1 rule 13, §8); `binding` is a configured name.
// Per (binding, host) series exist only for pairs whose state exists (the binding has taken a
// slot to the host) at a host shown: they appear with the pair's first admission and go with
// the host (its eviction, or its leaving the shown set):
//   mxsched_binding_host_active_connections (gauge; binding, host, mx): connections open to the
//       host through the binding — what a receiver counting per sending IP sees
//   mxsched_binding_host_connection_limit (gauge; binding, host, mx): its Binding::Host limit
//       (+Inf: none)
//   mxsched_binding_host_reachable (gauge; binding, host, mx): 0 while the pair is marked failed
//       (its own failure memory: the host stays up for the other bindings)
//   mxsched_binding_host_consecutive_failures (gauge; binding, host, mx)
//   mxsched_binding_host_retry_after_seconds (gauge; binding, host, mx): until its probe
//   mxsched_binding_host_connections_total (counter; binding, host, mx): slots taken through it
//   mxsched_binding_host_failures_total (counter; binding, host, mx): failed connections
//   mxsched_binding_active_connections (gauge; binding): through the binding to every host
//   mxsched_binding_info (gauge; binding, source): 1 per configured binding, its address(es)
// With cluster_limits (a FleetView given; DESIGN §7):
//   mxsched_cluster_mode (gauge; mode): 1 for the mode in force, else 0: normal, rejoining,
//       share, closed, open (the last three: Redis away, cluster_failure_mode deciding)
//   mxsched_cluster_live_workers (gauge): worker processes in the fleet, last heartbeat
//   mxsched_cluster_redis_commands_total (counter): commands sent to Redis
//   mxsched_cluster_redis_errors_total (counter): failed or timed-out Redis commands
//   mxsched_cluster_redis_duration_seconds (histogram): round trips of answered commands
//       (buckets 100 us .. 1 s)
//   mxsched_cluster_mode_switches_total (counter): switches away from normal and back
//   mxsched_cluster_store_resets_total (counter): Redis found without its keys
//   mxsched_cluster_leases_total (counter; decided): fleet slots taken: redis, local
//   mxsched_cluster_waits_total (counter): sessions that waited at a fleet limit
//   mxsched_cluster_wakeups_total (counter): fleet waits ended by a release's publish
//   mxsched_cluster_sentinel_discoveries_total (counter): masters found through Sentinel
//   mxsched_host_cluster_active_connections (gauge; host, mx): the fleet's leases on a host
//       shown that has a Host limit, as the last heartbeat read them (FleetView::HostCount,
//       never a Redis call at scrape time); absent while not known
//
// Series count: 27 per host shown (6 gauges; 1 + 7 counters; a histogram of 11 buckets + sum +
// count), at most max_hosts (500) of them plus 22 for "other"; 2 per provider pattern, plus 36
// per process, and 30 more with cluster_limits (+1 per host shown with a known fleet count);
// with bindings 7 per (binding, host) pair in use at a host shown and 2 per configured
// binding. Benchmark: bench/metrics_bench.cc (a scrape of 10,000 hosts).
//
// Thread-safety: Collect() is safe from any thread, concurrently with the data path.
// Lifetime: `selector` and `dns` are borrowed and must outlive the collector.
#ifndef MXSCHED_ADMIN_METRICS_H_
#define MXSCHED_ADMIN_METRICS_H_

#include <string>
#include <vector>

#include "mxsched/io/fleet_client.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/selector.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace mxsched::admin {

class MetricsCollector : public prometheus::Collectable {
 public:
  // `dns` may be null (no DNS metrics).
  // Per-host series go to the `max_hosts` busiest destinations (open connections, then
  // failing, then most connections reported); the rest are summed under host="other",
  // mx="other" (active, busy replies, outcomes, latency; not the limits and states, which do
  // not add up), so a scrape stays bounded whatever the traffic (issue 20: 191k hosts made
  // 5.17 M series). A host's series come and go as it enters and leaves the top; "other"'s
  // counters can then fall, which rate() reads as a reset.
  static constexpr size_t kDefaultMaxHosts = 500;
  // `fleet` (with cluster_limits; may be null): the mxsched_cluster_* families.
  explicit MetricsCollector(Selector* selector, io::DnsCache* dns = nullptr,
                            size_t max_hosts = kDefaultMaxHosts,
                            const io::FleetView* fleet = nullptr)
      : selector_(selector), dns_(dns), max_hosts_(max_hosts), fleet_(fleet) {}

  // The prometheus-cpp interface (for an Exposer or a Registry-based pipeline).
  std::vector<prometheus::MetricFamily> Collect() const override;

  // The same metrics written straight into the text exposition (format 0.0.4), without the
  // MetricFamily objects: what GET /metrics serves. With 10,000 hosts Collect() plus
  // TextSerializer costs several times the 50 ms scrape budget (a ClientMetric and its label
  // strings per series, iostream formatting); this writes each host's label set once and
  // formats numbers with std::to_chars. bench/metrics_bench.cc measures both.
  void AppendText(std::string* out) const;

 private:
  Selector* selector_;
  io::DnsCache* dns_;
  size_t max_hosts_;
  const io::FleetView* fleet_;
};

// The Prometheus text exposition (format 0.0.4) of `families`.
std::string SerializeText(const std::vector<prometheus::MetricFamily>& families);

}  // namespace mxsched::admin

#endif  // MXSCHED_ADMIN_METRICS_H_
