#include "mxsched/admin/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "mxsched/io/connector.h"
#include "mxsched/scheduler/bindings.h"
#include "mxsched/scheduler/epoch.h"
#include "mxsched/scheduler/host_registry.h"
#include "prometheus/text_serializer.h"

namespace mxsched::admin {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr double kNanos = 1e9;
constexpr char kSeriesHostsHelp[] =
    "Destinations with their own mxsched_host_* series: the busiest, at most the collector's "
    "max_hosts; the others are summed under the host label other";

// One host's values, read once per scrape; or the sum of the hosts past the cap
// (`aggregate`: host="other", only the summable families).
struct HostSample {
  std::string host, mx;
  std::string labels;  // host="…",mx="…"
  bool aggregate = false;
  int32_t active = 0, limit = 0, configured = 0;
  int32_t parked = 0;  // of `active`: parked for reuse (DESIGN §13)
  uint64_t busy = 0;
  bool reachable = true;
  uint32_t consecutive = 0;
  double retry_s = 0;
  std::array<uint64_t, kOutcomeKinds> outcomes{};
  HostState::LatencyCounts latency;
  // The fleet's leases on the host's key, from the FleetView's cache (-1: none known, no
  // fleet, or no Host limit).
  int64_t cluster_active = -1;
  // Per (binding, host) state that exists (BindingView::used); hosts shown only.
  std::vector<BindingView> bindings;
};

void AppendLabelValue(std::string* out, std::string_view v);

// The hosts a scrape shows (issue 20: 191k hosts made a 524 MB scrape): the `max_hosts`
// most active — open connections first, then failing ones, then most connections
// reported — each with its own series, and one aggregate of all others.
std::vector<HostSample> SampleHosts(Selector& selector, size_t max_hosts, size_t* total,
                                    const io::FleetView* fleet) {
  epoch::EpochGuard pin;  // evicted hosts are freed through epoch.h: pinned while they are read
  std::vector<const HostState*> hosts = selector.registry().Snapshot();
  *total = hosts.size();
  const int64_t now = selector.clock().NowNanos();
  auto reported = [](const HostState* h) {
    uint64_t n = 0;
    for (size_t o = 0; o < kOutcomeKinds; ++o) n += h->outcomes(o);
    return n;
  };
  if (hosts.size() > max_hosts) {
    struct Rank {
      int32_t active;
      bool failing;
      uint64_t reported;
      const HostState* h;
    };
    std::vector<Rank> ranks;
    ranks.reserve(hosts.size());
    for (const HostState* h : hosts) {
      ranks.push_back({std::max(0, h->active()), h->failed_until() != 0, reported(h), h});
    }
    auto busier = [](const Rank& a, const Rank& b) {
      if (a.active != b.active) return a.active > b.active;
      if (a.failing != b.failing) return a.failing;
      if (a.reported != b.reported) return a.reported > b.reported;
      return a.h->endpoint() < b.h->endpoint();
    };
    std::nth_element(ranks.begin(), ranks.begin() + static_cast<ptrdiff_t>(max_hosts),
                     ranks.end(), busier);
    for (size_t i = 0; i < ranks.size(); ++i) hosts[i] = ranks[i].h;
  }
  const size_t shown = std::min(hosts.size(), max_hosts);
  std::vector<HostSample> samples(shown + (hosts.size() > shown ? 1 : 0));
  for (size_t i = 0; i < hosts.size(); ++i) {
    const HostState& h = *hosts[i];
    if (i >= shown) {
      HostSample& o = samples.back();
      o.aggregate = true;
      o.active += std::max(0, h.active());
      o.busy += h.busy_replies();
      for (size_t k = 0; k < kOutcomeKinds; ++k) o.outcomes[k] += h.outcomes(k);
      const HostState::LatencyCounts lc = h.connect_latency();
      for (size_t k = 0; k < lc.buckets.size(); ++k) o.latency.buckets[k] += lc.buckets[k];
      o.latency.sum_nanos += lc.sum_nanos;
      continue;
    }
    HostSample& s = samples[i];
    s.host = h.endpoint().ToString();
    s.mx = h.name();
    s.active = std::max(0, h.active());  // a host being evicted reads as its dead mark
    s.parked = selector.parked_on(h);  // 0 without a lock when nothing is parked
    s.limit = h.limit();
    s.configured = h.configured_limit();
    s.busy = h.busy_replies();
    s.reachable = h.Reachable(now);
    s.consecutive = h.consecutive_failures();
    const int64_t until = h.failed_until();
    s.retry_s = until > now ? static_cast<double>(until - now) / kNanos : 0.0;
    for (size_t o = 0; o < kOutcomeKinds; ++o) s.outcomes[o] = h.outcomes(o);
    s.latency = h.connect_latency();
    if (fleet != nullptr && s.configured != kUnlimited) s.cluster_active = fleet->HostCount(h.endpoint());
  }
  // Per (binding, host): only pairs whose state exists, of hosts shown — so the series
  // follow the live set: a pair appears with its first admission and goes with its host.
  hosts.resize(shown);
  std::vector<std::vector<BindingView>> bindings = selector.DescribeBindings(hosts);
  for (size_t i = 0; i < shown; ++i) {
    for (BindingView& b : bindings[i]) {
      if (b.used) samples[i].bindings.push_back(std::move(b));
    }
  }
  if (samples.size() > shown) {
    // Parked on the hosts not shown: the lot's total less theirs (one lock per host shown,
    // not one per host of the registry). Read apart, so clamped at 0.
    int64_t rest = selector.parked();
    for (size_t i = 0; i < shown; ++i) rest -= samples[i].parked;
    samples.back().parked = static_cast<int32_t>(std::max<int64_t>(0, rest));
    samples.back().host = "other";
    samples.back().mx = "other";
  }
  for (HostSample& s : samples) {
    s.labels.reserve(64);
    s.labels.append("host=\"");
    AppendLabelValue(&s.labels, s.host);
    s.labels.append("\",mx=\"");
    AppendLabelValue(&s.labels, s.mx);
    s.labels.push_back('"');
  }
  return samples;
}

MetricFamily Family(std::string name, std::string help, MetricType type, size_t reserve) {
  MetricFamily f{std::move(name), std::move(help), type, {}};
  f.metric.reserve(reserve);
  return f;
}

ClientMetric Value(MetricType type, double v, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  return m;
}

// Prometheus histogram from non-cumulative bucket counts and their upper bounds (nanos).
template <size_t N, size_t B>
ClientMetric Histogram(const std::array<uint64_t, N>& counts, const std::array<int64_t, B>& bounds,
                       int64_t sum_nanos, std::vector<ClientMetric::Label> labels = {}) {
  static_assert(N == B + 1);
  ClientMetric m;
  m.label = std::move(labels);
  m.histogram.bucket.resize(N);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < N; ++i) {
    cumulative += counts[i];
    m.histogram.bucket[i].cumulative_count = cumulative;
    m.histogram.bucket[i].upper_bound =
        i < B ? static_cast<double>(bounds[i]) / kNanos : std::numeric_limits<double>::infinity();
  }
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = static_cast<double>(sum_nanos) / kNanos;
  return m;
}

constexpr char kConfiguredHelp[] =
    "Per-destination connection limit as configured (+Inf: unlimited); the effective limit "
    "is lower while busy replies hold it down.";
constexpr char kParkedHelp[] =
    "Connections to the destination parked for reuse now (of "
    "mxsched_host_active_connections: they keep their slot).";
constexpr char kBusyHelp[] =
    "Busy replies (421 too many connections and the like) from the "
    "destination.";

// Provider limits (`Host "*.pattern"` stanzas): one series per configured pattern.
void AddProviderFamilies(Selector& selector, std::vector<MetricFamily>& out) {
  MetricFamily active =
      Family("mxsched_provider_active_connections",
             "Connections held on every host of a provider pattern.", MetricType::Gauge, 4);
  MetricFamily limit =
      Family("mxsched_provider_connection_limit",
             "Connection limit shared by the hosts of a provider pattern.", MetricType::Gauge, 4);
  selector.registry().ForEachGroup([&](const LimitGroup& g) {
    active.metric.push_back(Value(MetricType::Gauge, g.active(), {{"provider", g.pattern()}}));
    limit.metric.push_back(Value(MetricType::Gauge, g.limit(), {{"provider", g.pattern()}}));
  });
  out.push_back(std::move(active));
  out.push_back(std::move(limit));
}

void AddBindingFamilies(Selector& selector, const std::vector<HostSample>& samples,
                        bool fleet, std::vector<MetricFamily>& out);

void AddHostFamilies(Selector& selector, size_t max_hosts, const io::FleetView* fleet,
                     std::vector<MetricFamily>& out) {
  size_t total = 0;
  const std::vector<HostSample> samples = SampleHosts(selector, max_hosts, &total, fleet);
  const size_t n = samples.size();
  MetricFamily active =
      Family("mxsched_host_active_connections", "Connection leases held on the destination now.",
             MetricType::Gauge, n);
  MetricFamily limit =
      Family("mxsched_host_connection_limit",
             "Effective per-destination connection limit (+Inf: unlimited).", MetricType::Gauge, n);
  MetricFamily reachable =
      Family("mxsched_host_reachable",
             "1 if a new connection may go to the destination, 0 while it is marked failed.",
             MetricType::Gauge, n);
  MetricFamily failures = Family("mxsched_host_consecutive_failures",
                                 "Connection failures on the destination since its last success.",
                                 MetricType::Gauge, n);
  MetricFamily retry =
      Family("mxsched_host_retry_after_seconds",
             "Seconds until a failed destination gets its half-open probe.", MetricType::Gauge, n);
  MetricFamily outcomes =
      Family("mxsched_host_connections_total", "Connection outcomes reported on the destination.",
             MetricType::Counter, n * kOutcomeKinds);
  MetricFamily configured =
      Family("mxsched_host_configured_connection_limit", kConfiguredHelp, MetricType::Gauge, n);
  MetricFamily busy = Family("mxsched_host_busy_replies_total", kBusyHelp, MetricType::Counter, n);
  MetricFamily parked =
      Family("mxsched_host_parked_connections", kParkedHelp, MetricType::Gauge, n);
  MetricFamily latency = Family("mxsched_host_connect_duration_seconds",
                                "Time from Acquire to a 2xx greeting, successful connections only.",
                                MetricType::Histogram, n);
  const auto inf = [](int32_t v) {
    return v == kUnlimited ? std::numeric_limits<double>::infinity() : static_cast<double>(v);
  };
  for (const HostSample& h : samples) {
    std::vector<ClientMetric::Label> labels{{"host", h.host}, {"mx", h.mx}};
    active.metric.push_back(Value(MetricType::Gauge, h.active, labels));
    parked.metric.push_back(Value(MetricType::Gauge, h.parked, labels));
    busy.metric.push_back(Value(MetricType::Counter, static_cast<double>(h.busy), labels));
    if (!h.aggregate) {
      limit.metric.push_back(Value(MetricType::Gauge, inf(h.limit), labels));
      configured.metric.push_back(Value(MetricType::Gauge, inf(h.configured), labels));
      reachable.metric.push_back(Value(MetricType::Gauge, h.reachable ? 1 : 0, labels));
      failures.metric.push_back(Value(MetricType::Gauge, h.consecutive, labels));
      retry.metric.push_back(Value(MetricType::Gauge, h.retry_s, labels));
    }
    for (size_t o = 0; o < kOutcomeKinds; ++o) {
      std::vector<ClientMetric::Label> ol = labels;
      ol.push_back({"outcome", std::string(OutcomeName(static_cast<Outcome>(o)))});
      outcomes.metric.push_back(
          Value(MetricType::Counter, static_cast<double>(h.outcomes[o]), std::move(ol)));
    }
    latency.metric.push_back(Histogram(h.latency.buckets, kConnectLatencyBoundsNanos,
                                       h.latency.sum_nanos, std::move(labels)));
  }
  for (MetricFamily* f :
       {&active, &parked, &limit, &configured, &busy, &reachable, &failures, &retry, &outcomes,
        &latency}) {
    out.push_back(std::move(*f));
  }
  MetricFamily count =
      Family("mxsched_hosts", "Destinations known to the host registry.", MetricType::Gauge, 1);
  count.metric.push_back(Value(MetricType::Gauge, static_cast<double>(total)));
  out.push_back(std::move(count));
  MetricFamily series = Family("mxsched_host_series_hosts", kSeriesHostsHelp, MetricType::Gauge, 1);
  series.metric.push_back(
      Value(MetricType::Gauge, static_cast<double>(std::min(total, max_hosts))));
  out.push_back(std::move(series));
  AddBindingFamilies(selector, samples, fleet != nullptr, out);
  AddProviderFamilies(selector, out);
}

constexpr char kClusterHostHelp[] =
    "Fleet-wide leases on the destination's key (its Host limit, cluster_limits), as this "
    "worker's last heartbeat read them; absent when not known.";

// Egress bindings (docs/DESIGN.md §1 rule 13): per (binding, host) for every pair whose state
// exists at a host shown (the series follow the live set: they appear with the pair's first
// admission and go when the host does), and per configured binding its connections over all
// hosts. With a fleet, the fleet's count per host shown. Few series, or none without
// bindings: the MetricFamily path (both the text writer and Collect() use this).
void AddBindingFamilies(Selector& selector, const std::vector<HostSample>& samples, bool fleet,
                        std::vector<MetricFamily>& out) {
  if (fleet) {
    MetricFamily cluster = Family("mxsched_host_cluster_active_connections", kClusterHostHelp,
                                  MetricType::Gauge, samples.size());
    for (const HostSample& h : samples) {
      if (h.aggregate || h.cluster_active < 0) continue;
      cluster.metric.push_back(Value(MetricType::Gauge, static_cast<double>(h.cluster_active),
                                     {{"host", h.host}, {"mx", h.mx}}));
    }
    out.push_back(std::move(cluster));
  }
  const std::vector<const Binding*> all = selector.bindings().All();
  if (all.empty()) return;
  size_t n = 0;
  for (const HostSample& h : samples) n += h.bindings.size();
  MetricFamily active = Family("mxsched_binding_host_active_connections",
                               "Connections open to the destination through the binding (source "
                               "address): what a receiver counting per sending IP sees.",
                               MetricType::Gauge, n);
  MetricFamily limit = Family("mxsched_binding_host_connection_limit",
                              "Per-binding limit at the destination (Binding::Host "
                              "max_outbound_connections; +Inf: none).",
                              MetricType::Gauge, n);
  MetricFamily reachable =
      Family("mxsched_binding_host_reachable",
             "1 if a new connection may go to the destination through the binding, 0 while the "
             "(binding, host) pair is marked failed or its probe is out.",
             MetricType::Gauge, n);
  MetricFamily consecutive = Family("mxsched_binding_host_consecutive_failures",
                                    "Connection failures through the binding at the destination "
                                    "since its last success.",
                                    MetricType::Gauge, n);
  MetricFamily retry = Family("mxsched_binding_host_retry_after_seconds",
                              "Seconds until the failed (binding, host) pair gets its probe.",
                              MetricType::Gauge, n);
  MetricFamily connections = Family("mxsched_binding_host_connections_total",
                                    "Connection slots taken to the destination through the "
                                    "binding (wraps at 2^32).",
                                    MetricType::Counter, n);
  MetricFamily failures = Family("mxsched_binding_host_failures_total",
                                 "Failed connections to the destination through the binding "
                                 "(wraps at 2^32).",
                                 MetricType::Counter, n);
  const auto inf = [](int32_t v) {
    return v == kUnlimited ? std::numeric_limits<double>::infinity() : static_cast<double>(v);
  };
  for (const HostSample& h : samples) {
    for (const BindingView& b : h.bindings) {
      const std::vector<ClientMetric::Label> labels{
          {"binding", b.binding}, {"host", h.host}, {"mx", h.mx}};
      active.metric.push_back(Value(MetricType::Gauge, b.active, labels));
      limit.metric.push_back(Value(MetricType::Gauge, inf(b.limit), labels));
      reachable.metric.push_back(Value(
          MetricType::Gauge, b.state == "up" || b.state == "probe_due" ? 1 : 0, labels));
      consecutive.metric.push_back(Value(MetricType::Gauge, b.consecutive_failures, labels));
      retry.metric.push_back(
          Value(MetricType::Gauge, static_cast<double>(b.retry_in_s), labels));
      connections.metric.push_back(
          Value(MetricType::Counter, static_cast<double>(b.connections), labels));
      failures.metric.push_back(
          Value(MetricType::Counter, static_cast<double>(b.failures), labels));
    }
  }
  for (MetricFamily* f :
       {&active, &limit, &reachable, &consecutive, &retry, &connections, &failures}) {
    out.push_back(std::move(*f));
  }
  // Per binding over every host (shown or not): one series per configured binding.
  MetricFamily total = Family("mxsched_binding_active_connections",
                              "Connections open through the binding (source address), to every "
                              "destination.",
                              MetricType::Gauge, all.size());
  for (const Binding* b : all) {
    int64_t sum = 0;
    b->ForEachHost([&](uint32_t, const BindingHost& bh) {
      sum += std::max(0, bh.active.load(std::memory_order_relaxed));
    });
    total.metric.push_back(
        Value(MetricType::Gauge, static_cast<double>(sum), {{"binding", b->name()}}));
  }
  out.push_back(std::move(total));
  MetricFamily info = Family("mxsched_binding_info",
                             "Always 1: a configured binding and its source address(es) (\"\": "
                             "the kernel chooses).",
                             MetricType::Gauge, all.size());
  for (const Binding* b : all) {
    info.metric.push_back(Value(MetricType::Gauge, 1,
                                {{"binding", b->name()}, {"source", b->addresses().ToString()}}));
  }
  out.push_back(std::move(info));
}

void AddThrottleFamilies(const Selector& selector, std::vector<MetricFamily>& out);

void AddProcessFamilies(Selector& selector, std::vector<MetricFamily>& out) {
  const SelectorStats::Totals t = selector.stats().Collect();
  MetricFamily server = Family("mxsched_server_active_connections",
                               "Connection leases held against server_max_outbound_connections.",
                               MetricType::Gauge, 1);
  server.metric.push_back(Value(MetricType::Gauge, static_cast<double>(selector.server_active())));
  out.push_back(std::move(server));
  // The limit series of the Grafana panel "connections open vs server limit".
  MetricFamily server_limit = Family("mxsched_server_connection_limit",
                                     "server_max_outbound_connections in force (+Inf: unlimited).",
                                     MetricType::Gauge, 1);
  const int32_t sl = selector.config()->server_max_outbound_connections;
  server_limit.metric.push_back(Value(
      MetricType::Gauge, sl == kUnlimited ? std::numeric_limits<double>::infinity() : sl));
  out.push_back(std::move(server_limit));

  MetricFamily deferrals =
      Family("mxsched_acquire_deferrals_total",
             "Acquire answers that were deferrals, by reason; counts answers, not sessions: a "
             "session that waits (for a slot, or reason resolving: for its DNS answer) and asks "
             "again counts each answer, and most resolving answers end in a connection.",
             MetricType::Counter, kDeferReasons);
  for (size_t r = 0; r < kDeferReasons; ++r) {
    deferrals.metric.push_back(
        Value(MetricType::Counter, static_cast<double>(t.deferrals[r]),
              {{"reason", std::string(DeferReasonName(static_cast<DeferReason>(r)))}}));
  }
  out.push_back(std::move(deferrals));

  MetricFamily sessions = Family("mxsched_sessions_total", "Connector sessions ended, by result.",
                                 MetricType::Counter, kSessionResults);
  for (size_t r = 0; r < kSessionResults; ++r) {
    sessions.metric.push_back(Value(
        MetricType::Counter, static_cast<double>(t.sessions[r]),
        {{"result", std::string(io::ConnectKindName(static_cast<io::ConnectResult::Kind>(r)))}}));
  }
  out.push_back(std::move(sessions));

  MetricFamily waiting = Family("mxsched_sessions_waiting",
                                "Sessions queued for a connection slot now.", MetricType::Gauge, 1);
  waiting.metric.push_back(Value(MetricType::Gauge, static_cast<double>(selector.waiting())));
  out.push_back(std::move(waiting));

  MetricFamily wait = Family("mxsched_session_wait_seconds",
                             "Slot-wait time of sessions that waited, from the first wait to "
                             "the session's end.",
                             MetricType::Histogram, 1);
  wait.metric.push_back(Histogram(t.wait_buckets, kWaitBoundsNanos, t.wait_sum_nanos));
  out.push_back(std::move(wait));

  MetricFamily domains =
      Family("mxsched_domains_resident", "Domains with a route entry in the selector.",
             MetricType::Gauge, 1);
  domains.metric.push_back(Value(MetricType::Gauge, static_cast<double>(selector.domain_count())));
  out.push_back(std::move(domains));

  MetricFamily churn = Family("mxsched_domains_total",
                              "Domain entries created (a domain's first use since it was resident) "
                              "and evicted after domain_idle_timeout.",
                              MetricType::Counter, 2);
  churn.metric.push_back(Value(MetricType::Counter, static_cast<double>(t.domains_created),
                               {{"event", "created"}}));
  churn.metric.push_back(Value(MetricType::Counter, static_cast<double>(t.domains_evicted),
                               {{"event", "evicted"}}));
  out.push_back(std::move(churn));

  MetricFamily host_churn =
      Family("mxsched_hosts_total",
             "Host states created (a destination's first use since it was resident) and evicted "
             "(no route, connection, waiter or failure memory left).",
             MetricType::Counter, 2);
  host_churn.metric.push_back(Value(MetricType::Counter,
                                    static_cast<double>(selector.registry().created()),
                                    {{"event", "created"}}));
  host_churn.metric.push_back(Value(MetricType::Counter,
                                    static_cast<double>(selector.registry().evicted()),
                                    {{"event", "evicted"}}));
  out.push_back(std::move(host_churn));

  MetricFamily routes = Family("mxsched_routes_distinct",
                               "Distinct route snapshots held; domains with equal routes share one.",
                               MetricType::Gauge, 1);
  routes.metric.push_back(Value(MetricType::Gauge, static_cast<double>(selector.route_count())));
  out.push_back(std::move(routes));

  // Connection reuse (DESIGN §13): one series per event, a fixed set.
  MetricFamily parked = Family("mxsched_parked_connections",
                               "Connections parked for reuse now, over all destinations.",
                               MetricType::Gauge, 1);
  parked.metric.push_back(Value(MetricType::Gauge, static_cast<double>(selector.parked())));
  out.push_back(std::move(parked));
  MetricFamily reuse =
      Family("mxsched_connection_reuse_events_total",
             "Connection reuse events: parked, reused (handed to a session after RSET), stale "
             "(failed its RSET: closed, a fresh connection opened), and closed parked "
             "connections by why: idle_timeout, server_closed, evicted, max_deliveries, stopped.",
             MetricType::Counter, kReuseEvents);
  for (size_t e = 0; e < kReuseEvents; ++e) {
    reuse.metric.push_back(
        Value(MetricType::Counter, static_cast<double>(t.reuse[e]),
              {{"event", std::string(ReuseEventName(static_cast<ReuseEvent>(e)))}}));
  }
  out.push_back(std::move(reuse));
  AddThrottleFamilies(selector, out);
}

void AddThrottleFamilies(const Selector& selector, std::vector<MetricFamily>& out) {
  // One series per configured throttle: bounded by the configuration, not by traffic.
  const std::vector<ThrottleView> throttles = selector.Throttles();
  if (throttles.empty()) return;
  const size_t n = throttles.size();
  MetricFamily allowed = Family("mxsched_throttle_starts_total",
                                "Starts a rate throttle allowed (outbound_throttle_*), by scope "
                                "and kind.",
                                MetricType::Counter, n);
  MetricFamily waited = Family("mxsched_throttle_waited_total",
                               "Allowed starts that waited for the instant the throttle gave them.",
                               MetricType::Counter, n);
  MetricFamily wait = Family("mxsched_throttle_wait_seconds_total",
                             "Total time allowed starts waited for their throttle.",
                             MetricType::Counter, n);
  MetricFamily refused = Family("mxsched_throttle_deferrals_total",
                                "Starts deferred because the throttle's next instant was later "
                                "than the session would wait.",
                                MetricType::Counter, n);
  for (const ThrottleView& t : throttles) {
    const std::vector<ClientMetric::Label> labels = {{"scope", t.scope}, {"kind", t.kind}};
    allowed.metric.push_back(Value(MetricType::Counter, static_cast<double>(t.allowed), labels));
    waited.metric.push_back(Value(MetricType::Counter, static_cast<double>(t.waited), labels));
    wait.metric.push_back(Value(MetricType::Counter, t.wait_seconds, labels));
    refused.metric.push_back(Value(MetricType::Counter, static_cast<double>(t.throttled), labels));
  }
  out.push_back(std::move(allowed));
  out.push_back(std::move(waited));
  out.push_back(std::move(wait));
  out.push_back(std::move(refused));
}

void AddDnsFamilies(const io::DnsCache& dns, std::vector<MetricFamily>& out) {
  const io::DnsCache::Stats s = dns.stats();
  MetricFamily lookups = Family("mxsched_dns_lookups_total",
                                "Resolver lookups, by whether a fresh cached answer served them.",
                                MetricType::Counter, 2);
  lookups.metric.push_back(
      Value(MetricType::Counter, static_cast<double>(s.hits), {{"result", "hit"}}));
  lookups.metric.push_back(
      Value(MetricType::Counter, static_cast<double>(s.misses), {{"result", "miss"}}));
  out.push_back(std::move(lookups));
  MetricFamily queries = Family("mxsched_dns_queries_total", "DNS queries handed to a DNS client.",
                                MetricType::Counter, 1);
  queries.metric.push_back(Value(MetricType::Counter, static_cast<double>(s.queries)));
  out.push_back(std::move(queries));
  MetricFamily answers =
      Family("mxsched_dns_answers_total", "DNS answers stored, by result.", MetricType::Counter, 4);
  const std::pair<const char*, uint64_t> results[] = {{"ok", s.answers_ok},
                                                      {"nodata", s.answers_nodata},
                                                      {"nxdomain", s.answers_nxdomain},
                                                      {"tempfail", s.answers_tempfail}};
  for (const auto& [name, value] : results) {
    answers.metric.push_back(
        Value(MetricType::Counter, static_cast<double>(value), {{"result", name}}));
  }
  out.push_back(std::move(answers));
  MetricFamily entries =
      Family("mxsched_dns_cache_entries", "Names and record types held in the DNS cache.",
             MetricType::Gauge, 1);
  entries.metric.push_back(Value(MetricType::Gauge, static_cast<double>(s.entries)));
  out.push_back(std::move(entries));
}

// --- the direct text writer ------------------------------------------------------------

void AppendUint(std::string* out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

void AppendDouble(std::string* out, double v) {
  if (std::isinf(v)) {
    out->append(v > 0 ? "+Inf" : "-Inf");
    return;
  }
  if (std::isnan(v)) {
    out->append("NaN");
    return;
  }
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip form
  out->append(buf, r.ptr);
}

// `"` `\\` and newline escaped, as the exposition format requires in label values.
void AppendLabelValue(std::string* out, std::string_view v) {
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (c == '\n') {
      out->append("\\n");
    } else {
      out->push_back(c);
    }
  }
}

void AppendHeader(std::string* out, std::string_view name, std::string_view help,
                  std::string_view type) {
  out->append("# HELP ").append(name).append(" ").append(help).append("\n# TYPE ");
  out->append(name).append(" ").append(type).append("\n");
}

// name{labels} value — `labels` without braces, may be empty.
template <typename V>
void AppendSample(std::string* out, std::string_view name, std::string_view labels, V value) {
  out->append(name);
  if (!labels.empty()) out->append("{").append(labels).append("}");
  out->push_back(' ');
  if constexpr (std::is_floating_point_v<V>) {
    AppendDouble(out, value);
  } else {
    AppendUint(out, static_cast<uint64_t>(value));
  }
  out->push_back('\n');
}

template <size_t N, size_t B>
void AppendHistogram(std::string* out, std::string_view name, std::string_view labels,
                     const std::array<uint64_t, N>& counts, const std::array<int64_t, B>& bounds,
                     int64_t sum_nanos) {
  static_assert(N == B + 1);
  const std::string_view sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < N; ++i) {
    cumulative += counts[i];
    out->append(name).append("_bucket{").append(labels).append(sep).append("le=\"");
    if (i < B) {
      AppendDouble(out, static_cast<double>(bounds[i]) / kNanos);
    } else {
      out->append("+Inf");
    }
    out->append("\"} ");
    AppendUint(out, cumulative);
    out->push_back('\n');
  }
  const std::string sum_name = std::string(name) + "_sum";
  const std::string count_name = std::string(name) + "_count";
  AppendSample(out, sum_name, labels, static_cast<double>(sum_nanos) / kNanos);
  AppendSample(out, count_name, labels, cumulative);
}


void AddFleetFamilies(const io::FleetView& fleet, std::vector<MetricFamily>& out) {
  const io::FleetStatus f = fleet.Status();
  MetricFamily mode = Family("mxsched_cluster_mode",
                             "Cluster-limits mode in force (1) — normal, rejoining, or while "
                             "Redis is away the failure mode: share, closed, open.",
                             MetricType::Gauge, 5);
  for (const char* m : {"normal", "rejoining", "share", "closed", "open"}) {
    mode.metric.push_back(Value(MetricType::Gauge, f.mode == m ? 1 : 0, {{"mode", m}}));
  }
  out.push_back(std::move(mode));
  auto one = [&](const char* name, const char* help, MetricType type, int64_t v) {
    MetricFamily fam = Family(name, help, type, 1);
    fam.metric.push_back(Value(type, static_cast<double>(v)));
    out.push_back(std::move(fam));
  };
  one("mxsched_cluster_live_workers", "Worker processes in the fleet at the last heartbeat.",
      MetricType::Gauge, f.live_workers);
  one("mxsched_cluster_redis_commands_total", "Commands sent to Redis.", MetricType::Counter,
      f.commands);
  one("mxsched_cluster_redis_errors_total", "Redis commands that failed or timed out.",
      MetricType::Counter, f.errors);
  MetricFamily rtt = Family("mxsched_cluster_redis_duration_seconds",
                            "Round trips of answered Redis commands.", MetricType::Histogram, 1);
  rtt.metric.push_back(Histogram(f.latency_buckets, io::kFleetLatencyBoundsNanos,
                                 f.latency_sum_nanos));
  out.push_back(std::move(rtt));
  one("mxsched_cluster_mode_switches_total",
      "Switches of the cluster-limits mode away from normal and back.", MetricType::Counter,
      f.mode_switches);
  one("mxsched_cluster_store_resets_total",
      "Times Redis was found without the fleet's keys (restart or flush).", MetricType::Counter,
      f.store_resets);
  MetricFamily leases = Family("mxsched_cluster_leases_total",
                               "Fleet slots taken, by who decided: redis, or local (Redis away "
                               "or rejoining, within this process's share).",
                               MetricType::Counter, 2);
  leases.metric.push_back(Value(MetricType::Counter,
                                static_cast<double>(f.leases - f.local_leases),
                                {{"decided", "redis"}}));
  leases.metric.push_back(Value(MetricType::Counter, static_cast<double>(f.local_leases),
                                {{"decided", "local"}}));
  out.push_back(std::move(leases));
  one("mxsched_cluster_waits_total", "Sessions that waited at a fleet-wide limit.",
      MetricType::Counter, f.waits);
  one("mxsched_cluster_wakeups_total", "Fleet-limit waits ended by a release's publish.",
      MetricType::Counter, f.wakeups);
  one("mxsched_cluster_throttle_waits_total",
      "Starts the fleet's connection rate throttles reserved at a later instant.",
      MetricType::Counter, f.throttle_waits);
  one("mxsched_cluster_throttle_refusals_total",
      "Fleet asks refused: a rate throttle's next instant was beyond the session's wait.",
      MetricType::Counter, f.throttled);
  one("mxsched_cluster_sentinel_discoveries_total",
      "Redis masters found through Sentinel (redis-sentinel://): the first, and each failover.",
      MetricType::Counter, f.discoveries);
}

}  // namespace

void MetricsCollector::AppendText(std::string* out) const {
  Selector& selector = *selector_;
  size_t total = 0;
  const std::vector<HostSample> samples = SampleHosts(selector, max_hosts_, &total, fleet_);
  out->reserve(out->size() + samples.size() * 2600 + 8192);

  AppendHeader(out, "mxsched_host_active_connections",
               "Connection leases held on the destination now.", "gauge");
  for (const HostSample& s : samples) {
    AppendSample(out, "mxsched_host_active_connections", s.labels, s.active);
  }
  AppendHeader(out, "mxsched_host_connection_limit",
               "Effective per-destination connection limit (+Inf: unlimited).", "gauge");
  for (const HostSample& s : samples) {
    if (s.aggregate) continue;
    AppendSample(out, "mxsched_host_connection_limit", s.labels,
                 s.limit == kUnlimited ? std::numeric_limits<double>::infinity()
                                       : static_cast<double>(s.limit));
  }
  AppendHeader(out, "mxsched_host_configured_connection_limit", kConfiguredHelp, "gauge");
  for (const HostSample& s : samples) {
    if (s.aggregate) continue;
    AppendSample(out, "mxsched_host_configured_connection_limit", s.labels,
                 s.configured == kUnlimited ? std::numeric_limits<double>::infinity()
                                            : static_cast<double>(s.configured));
  }
  AppendHeader(out, "mxsched_host_parked_connections", kParkedHelp, "gauge");
  for (const HostSample& s : samples) {
    AppendSample(out, "mxsched_host_parked_connections", s.labels, s.parked);
  }
  AppendHeader(out, "mxsched_host_busy_replies_total", kBusyHelp, "counter");
  for (const HostSample& s : samples) {
    AppendSample(out, "mxsched_host_busy_replies_total", s.labels, s.busy);
  }
  AppendHeader(out, "mxsched_host_reachable",
               "1 if a new connection may go to the destination, 0 while it is marked failed.",
               "gauge");
  for (const HostSample& s : samples) {
    if (s.aggregate) continue;
    AppendSample(out, "mxsched_host_reachable", s.labels, s.reachable ? 1 : 0);
  }
  AppendHeader(out, "mxsched_host_consecutive_failures",
               "Connection failures on the destination since its last success.", "gauge");
  for (const HostSample& s : samples) {
    if (s.aggregate) continue;
    AppendSample(out, "mxsched_host_consecutive_failures", s.labels, s.consecutive);
  }
  AppendHeader(out, "mxsched_host_retry_after_seconds",
               "Seconds until a failed destination gets its half-open probe.", "gauge");
  for (const HostSample& s : samples) {
    if (s.aggregate) continue;
    AppendSample(out, "mxsched_host_retry_after_seconds", s.labels, s.retry_s);
  }
  AppendHeader(out, "mxsched_host_connections_total",
               "Connection outcomes reported on the destination.", "counter");
  std::string labels;
  for (const HostSample& s : samples) {
    for (size_t o = 0; o < kOutcomeKinds; ++o) {
      labels.assign(s.labels).append(",outcome=\"");
      labels.append(OutcomeName(static_cast<Outcome>(o))).push_back('"');
      AppendSample(out, "mxsched_host_connections_total", labels, s.outcomes[o]);
    }
  }
  AppendHeader(out, "mxsched_host_connect_duration_seconds",
               "Time from Acquire to a 2xx greeting, successful connections only.", "histogram");
  for (const HostSample& s : samples) {
    AppendHistogram(out, "mxsched_host_connect_duration_seconds", s.labels, s.latency.buckets,
                    kConnectLatencyBoundsNanos, s.latency.sum_nanos);
  }
  AppendHeader(out, "mxsched_hosts", "Destinations known to the host registry.", "gauge");
  AppendSample(out, "mxsched_hosts", "", total);
  AppendHeader(out, "mxsched_host_series_hosts", kSeriesHostsHelp, "gauge");
  AppendSample(out, "mxsched_host_series_hosts", "", std::min(total, max_hosts_));

  // Process-wide families: few series, so the MetricFamily path costs nothing here.
  std::vector<MetricFamily> process;
  AddBindingFamilies(selector, samples, fleet_ != nullptr, process);
  AddProviderFamilies(selector, process);
  AddProcessFamilies(selector, process);
  if (dns_ != nullptr) AddDnsFamilies(*dns_, process);
  if (fleet_ != nullptr) AddFleetFamilies(*fleet_, process);
  out->append(SerializeText(process));
}

std::vector<MetricFamily> MetricsCollector::Collect() const {
  std::vector<MetricFamily> out;
  out.reserve(24);
  AddHostFamilies(*selector_, max_hosts_, fleet_, out);
  AddProcessFamilies(*selector_, out);
  if (dns_ != nullptr) AddDnsFamilies(*dns_, out);
  if (fleet_ != nullptr) AddFleetFamilies(*fleet_, out);
  return out;
}

std::string SerializeText(const std::vector<MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return std::move(out).str();
}

}  // namespace mxsched::admin
