// Load driver behind `mxsched load` and the demo: runs N sessions with C in flight over T
// threads (one io_uring Loop + Connector each, one shared Selector). A session: connect
// (through the Connector), hold H ms, send QUIT, read the reply, close, release.
// Every session ends as connected, deferred or failed — the three counts add up to N.
//
// Thread-safety: RunLoad blocks its caller; the progress callback runs on the caller's
// thread about twice a second.
#ifndef MXSCHED_TESTBED_LOAD_H_
#define MXSCHED_TESTBED_LOAD_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/cluster/cluster_limits.h"
#include "mxsched/io/connector.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::io {
class DnsCache;
}  // namespace mxsched::io

namespace mxsched::testbed {

using io::ClusterLimits;
using io::ConnectorOptions;
using io::DnsCache;

// Log-linear histogram of non-negative values (nanoseconds here) in fixed memory, so a run's
// memory does not grow with its length: `load` used to keep one 8-byte sample per session
// (a day at 24k sessions/s: ~16 GB). Values below 128 have a bucket each; above that, every
// power of two is split into 64 equal buckets, so a bucket is at most 1/64 of its lower
// bound wide. A quantile is its bucket's midpoint clamped to the exact min and max: within
// 1/128 (0.8%) of the exact sample of that rank. It covers 0 .. 2^63 ns (292 years) in
// 3,712 counters (29 KB), however many values are added.
// Hand-written: Debian 12 packages no HDR histogram for C++; Abseil has none, and
// prometheus-cpp's histograms have fixed, caller-chosen buckets, too coarse for a p99 over
// microseconds to hours.
//
// Thread-safety: none; each load worker keeps its own and they are merged at the end.
class LatencyHistogram {
 public:
  void Add(int64_t value);  // a negative value counts as 0
  void Merge(const LatencyHistogram& other);
  int64_t count() const { return count_; }
  // Exact; 0 when empty.
  int64_t min() const { return count_ == 0 ? 0 : min_; }
  int64_t max() const { return max_; }
  // The value of 0-based rank `rank` in sorted order (clamped to 0 .. count-1), within 1/128;
  // 0 when empty.
  int64_t ValueAtRank(int64_t rank) const;
  // Rank min(count - 1, count * percent / 100), as the sorted-sample code computed it (p50
  // is the element at count / 2).
  int64_t Percentile(int percent) const;

  static constexpr int kSubBits = 6;  // 64 buckets per power of two
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kLinear = 2 * kSub;  // 0..127: one bucket per value
  static constexpr int kBuckets = kLinear + (63 - kSubBits - 1) * kSub;  // up to 2^63 - 1
  static int BucketOf(uint64_t value);
  static uint64_t BucketLow(int bucket);
  static uint64_t BucketWidth(int bucket);

 private:
  std::array<uint64_t, kBuckets> counts_{};
  int64_t count_ = 0;
  int64_t min_ = 0, max_ = 0;
};

struct LoadOptions {
  std::vector<std::string> domains;  // sessions go round-robin over these
  // > 0: sessions go round-robin over this many generated domains instead, name j being
  // "d<j>." + domains[j % domains.size()] (d0.a.test, d1.b.test, ... for a.test,b.test), so
  // each of the first N sessions meets a domain the Selector has not seen — the churn that
  // makes it evict idle domains (docs/DESIGN.md §5). 1 .. kMaxDistinctDomains; every
  // generated name must stay within 253 characters.
  int64_t distinct_domains = 0;
  static constexpr int64_t kMaxDistinctDomains = 100'000'000;
  int64_t sessions = 1000;
  int concurrency = 10;
  int threads = 1;
  int hold_ms = 0;
  // >= 0: after the greeting, run one message transaction (EHLO, MAIL, RCPT, DATA with a
  // body of about this many bytes, ".") before QUIT — the dialogue Postfix's smtp-source
  // runs, for a like-for-like comparison. -1: QUIT only.
  int message_bytes = -1;
  // With message_bytes >= 0 and connector.reuse (`--reuse`): the connection is parked
  // after the message (Connector::Park, docs/DESIGN.md §13) instead of QUIT, and a session
  // that gets a parked one (ConnectResult::reused: RSET already answered) runs MAIL, RCPT,
  // DATA without EHLO. Parked connections are closed with QUIT when the run ends.
  // With message_bytes >= 0 and `pipelining` (`--pipelining`): MAIL, RCPT and DATA go in one
  // write when the server's EHLO reply advertised PIPELINING (RFC 2920), their three replies
  // read together — one round trip where there were three. (smtp-source has no pipelining.)
  // With reuse too, such a connection is parked with ParkOptions::rset_with_transaction: the
  // next session's write is RSET, MAIL, RCPT, DATA (the connector sends no RSET of its own),
  // and a refused RSET (or a close before its reply) hands it to Connector::Stale, which
  // gets the session a fresh connection (docs/DESIGN.md §13 rule 6).
  bool pipelining = false;
  // At max_seconds, or once *stop is true (a signal handler's flag), the run stops: no new
  // session starts; a session holding (--hold-ms) quits at once and is counted deferred,
  // kind "stopped"; one in its dialogue finishes it; sessions never started are reported
  // as not_started. Sessions still inside Connect end by their own bounded timeouts.
  int max_seconds = 600;
  const volatile bool* stop = nullptr;
  ConnectorOptions connector;
  // Optional DNS: with `dns_cache` set, one c-ares client per thread, pointed at
  // `dns_server` ("127.0.0.1:5353"; empty: the system's resolvers from /etc/resolv.conf),
  // all storing into `dns_cache` — which must be the Resolver the Selector was built with.
  std::string dns_server;
  DnsCache* dns_cache = nullptr;
  // Cluster-wide limits (DESIGN §7): one ClusterClient per thread on this process's
  // ClusterLimits. Null: limits are per process.
  std::shared_ptr<ClusterLimits> cluster;
  std::function<void(int64_t done, int64_t connected, int64_t deferred, int64_t failed)> progress;
  int progress_interval_ms = 500;
  // A Binding or Binding_Group name every session goes out through (Selector's
  // AcquireOptions); "": the default binding.
  std::string binding;
};

struct LoadReport {
  // connected: the whole dialogue ran. A session whose dialogue failed after the greeting is
  // failed, kind "dialogue" (the connection itself was made).
  int64_t sessions = 0, connected = 0, deferred = 0, failed = 0;
  std::string stopped_by;   // "", "max_seconds" or "signal"
  int64_t not_started = 0;  // sessions never started because the run stopped
  double seconds = 0;
  double sessions_per_second = 0;   // all ended sessions / wall time
  double connected_per_second = 0;  // connected sessions / wall time
  // Sessions that got a 2xx greeting (connected, or later cut short or failed in their
  // dialogue), and their time from Connect() to the ready connection less any slot wait:
  // the time the network and the server took. From a histogram (LatencyHistogram: within
  // 0.8%; the max is exact). All 0 when greeted is 0 (the text prints "-", the JSON null).
  int64_t greeted = 0;
  int64_t connect_p50_us = 0, connect_p99_us = 0, connect_max_us = 0;
  // Sessions (of any outcome) that waited for a free slot, and how long (percentiles over
  // those sessions only; 0, "-" and null when none waited).
  int64_t waited = 0;
  int64_t wait_p50_us = 0, wait_p99_us = 0, wait_max_us = 0;
  // Sessions that waited for a rate throttle's instant (outbound_throttle_*, DESIGN §12),
  // and how long, the same way; apart from slot waits and from connect latency.
  int64_t throttle_waited = 0;
  int64_t throttle_wait_p50_us = 0, throttle_wait_p99_us = 0, throttle_wait_max_us = 0;
  int64_t max_rss_kb = 0;  // the process's peak resident memory at the end of the run
  // Connected sessions per 250 ms interval since the start, for plots.
  std::vector<int64_t> connected_timeline;
  // Busy greetings ("421 4.7.0 too many connections"...) met by all sessions (docs/DESIGN.md §6).
  int64_t busy_replies = 0;
  // Every host that got a lease or a busy reply in the run, including hosts whose connects
  // all failed (sessions 0, peak 0).
  struct Host {
    int64_t sessions = 0;  // sessions that got a 2xx greeting from this host
    // Peak concurrent connected sessions (from the 2xx greeting to close): what the
    // receiving server counts. Connects that failed before connecting are not in it.
    int64_t peak = 0;
    // Peak concurrent leases the scheduler handed out for this host (HostState::peak()):
    // also counts attempts still connecting and those that then failed (refused, timed out).
    int64_t lease_peak = 0;
    // At the end of the run (docs/DESIGN.md §6): the effective limit, the configured one, busy
    // replies the host gave (since the selector started) and why the limit last moved.
    int32_t limit = 0;
    int32_t configured_limit = 0;
    uint64_t busy_replies = 0;
    std::string limit_moved;
  };
  std::map<std::string, Host> hosts;            // "127.0.1.1:2525"
  // Per binding the sessions went out through ("" is the default binding), as the client
  // saw them: sessions greeted 2xx, peak concurrent connected sessions; and from the
  // selector, per (binding, host): failures through it and whether it is failed now.
  struct Binding {
    int64_t sessions = 0, peak = 0;
    std::string source;  // the source address(es) bound, "" for the kernel's choice
    uint64_t failures = 0;       // failed connections through this binding (all hosts)
    int64_t hosts_failed = 0;    // hosts this binding is kept off at the end
  };
  std::map<std::string, Binding> bindings;
  // The Selector's domain entries (docs/DESIGN.md §5 eviction). `distinct`: distinct domain
  // names sessions were started for; `resident`: entries at the end; `peak_resident`: the
  // most seen, sampled every 250 ms and at the start and end (so a shorter peak between
  // samples can be missed); `created` and `evicted`: during this run (SelectorStats), so
  // resident = resident at the start + created - evicted; `memory_bytes`: DomainMemoryBytes
  // at the end.
  struct Domains {
    int64_t distinct = 0, resident = 0, peak_resident = 0, created = 0, evicted = 0,
            memory_bytes = 0;
  };
  Domains domains;
  std::map<std::string, int64_t> deferrals;     // by reason kind
  std::map<std::string, int64_t> failures;      // by outcome
  std::map<std::string, std::string> examples;  // one full reason per kind
  // With cluster limits: this process's counters (ClusterLimits::Stats) at the end.
  struct Cluster {
    int64_t leases = 0, local_leases = 0, waits = 0, wait_ms = 0, wakeups = 0, refreshes = 0,
            reregistered = 0, redis_errors = 0, noscript = 0, mode_switches = 0, commands = 0,
            live_workers = 0, store_resets = 0, warmup_refusals = 0;
    // Fleet rate throttles (DESIGN §12 rule 10): starts granted at a later instant, and
    // asks refused (the instant beyond the session's wait).
    int64_t throttle_waits = 0, throttled = 0, throttle_asks = 0;
    std::string mode;  // "normal" or the failure mode in force at the end
  };
  std::optional<Cluster> cluster;
  // Message transactions (--message; docs/DESIGN.md §13 for --reuse): `messages` sessions
  // whose whole transaction ran (= connected), over `connections` opened (fresh
  // connections, 2xx greeting) and `reused` (parked ones taken up after RSET); from the
  // selector's counters over the run, `stale` (a reused connection whose RSET failed:
  // closed, a fresh one opened) and why parked connections were closed. Unset without
  // --message.
  struct Reuse {
    bool enabled = false;  // --reuse
    int64_t messages = 0, connections = 0, reused = 0;
    std::map<std::string, int64_t> events;  // ReuseEventName -> count during the run
    int64_t stale() const { auto it = events.find("stale"); return it == events.end() ? 0 : it->second; }
    double messages_per_connection() const {
      return connections > 0 ? static_cast<double>(messages) / connections : 0;
    }
  };
  std::optional<Reuse> reuse;
  std::string ToJson() const;
  std::string ToText() const;
};

// Checks options.distinct_domains (range, and that each generated name is a valid domain);
// the message names the flag, --distinct-domains. RunLoad checks it too.
absl::Status ValidateDistinctDomains(const LoadOptions& options);

absl::StatusOr<LoadReport> RunLoad(Selector& selector, const LoadOptions& options);

}  // namespace mxsched::testbed

#endif  // MXSCHED_TESTBED_LOAD_H_
