// DNS for the scheduler: DnsCache, the process-wide cache behind the scheduler's Resolver
// interface, and DnsClient, a c-ares channel driven from one io_uring Loop.
//
// Lookups never block: a name not in the cache answers kPending and is queued; every
// DnsClient is poked (a Notifier) and the first to run sends the query (in-flight lookups are
// coalesced per name and type). When an answer is stored, every client is poked again and
// calls its on_change callback on its own loop thread — the connector uses it to wake
// sessions waiting for routes, without polling.
//
// Caching: answers live for their TTL (MX from the raw answer, which ares_parse_mx_reply
// would drop; negative answers for the SOA minimum, RFC 2308), at least kMinCacheSeconds so
// a TTL of 0 is used once rather than re-queried forever, at most max_dns_ttl (negative
// answers max_negative_dns_ttl: SetTtlBounds, from the Selector's config); temporary failures
// for kTempFailSeconds. Route-level bounds (min_dns_ttl, a route's ttl) apply in
// RoutePlanner. MX sets are capped at kMaxMxPerDomain there.
//
// c-ares 1.18 channels are not thread-safe: each DnsClient owns one and touches it only on
// its Loop's thread. Its sockets are watched with IORING_OP_POLL_ADD (from
// ARES_OPT_SOCK_STATE_CB) and its timeouts with IORING_OP_TIMEOUT.
//
// Thread-safety: DnsCache is safe for concurrent use. DnsClient belongs to its Loop's thread
// except Poke(), callable from any thread.
#ifndef MXSCHED_IO_RESOLVER_H_
#define MXSCHED_IO_RESOLVER_H_

#include <ares.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/mutex.h"
#include "mxsched/io/loop.h"
#include "mxsched/scheduler/dns.h"

namespace mxsched::io {

class DnsClient;

class DnsCache final : public Resolver {
 public:
  static constexpr uint32_t kMinCacheSeconds = 1;
  static constexpr uint32_t kTempFailSeconds = 5;

  explicit DnsCache(Clock* clock = nullptr);

  DnsAnswer LookupMx(std::string_view name) override;
  DnsAnswer LookupAddresses(std::string_view name, bool want_v4, bool want_v6) override;
  // Answers stored from now on live at most max_ttl_s (negative ones max_negative_ttl_s).
  void SetTtlBounds(uint32_t max_ttl_s, uint32_t max_negative_ttl_s) override;

  // Drops every cached answer (console `refresh domain all` also refreshes DNS).
  void Clear();
  // Number of queries queued or in flight.
  size_t pending() const;

  // Statistics (the admin library's DNS metrics), counted under the cache's own lock on
  // paths that already take it.
  struct Stats {
    uint64_t hits = 0;     // lookups answered from the cache
    uint64_t misses = 0;   // lookups that found no fresh answer (pending, or queued a query)
    uint64_t queries = 0;  // queries handed to a DnsClient
    // Answers stored, by result: records, no records (NODATA), NXDOMAIN, temporary failure.
    uint64_t answers_ok = 0, answers_nodata = 0, answers_nxdomain = 0, answers_tempfail = 0;
    size_t entries = 0;  // names and types cached (fresh, expired or in flight)
  };
  Stats stats() const;

  // --- for DnsClient --------------------------------------------------------------------
  struct Query {
    std::string name;
    uint16_t type;
  };
  std::vector<Query> TakeWanted();
  void Store(const Query& q, DnsAnswer answer);
  void Abandon(const Query& q);  // the client went away before an answer: ask again later
  void AddClient(DnsClient* c);
  void RemoveClient(DnsClient* c);

 private:
  struct Entry {
    DnsAnswer answer;     // state kPending while in flight and never answered
    int64_t expires = 0;  // nanos; 0 = not yet answered
    bool in_flight = false;
  };
  struct Key {
    std::string name;
    uint16_t type;
    friend bool operator==(const Key&, const Key&) = default;
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.name, k.type);
    }
  };
  // Returns the usable answer or kPending (queuing a query). REQUIRES: mu_ held.
  DnsAnswer Get(const std::string& name, uint16_t type, bool* queued)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PokeAll(bool changed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock* clock_;
  mutable Mutex mu_;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<Query> wanted_ ABSL_GUARDED_BY(mu_);
  std::vector<DnsClient*> clients_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
  uint32_t max_ttl_s_ ABSL_GUARDED_BY(mu_) = 86400;
  uint32_t max_negative_ttl_s_ ABSL_GUARDED_BY(mu_) = 300;
};

class DnsClient {
 public:
  // `servers`: "127.0.0.1:5353" or a comma-separated list (ares_set_servers_ports_csv);
  // empty: the system's resolvers (/etc/resolv.conf), as c-ares reads them by default.
  static absl::StatusOr<std::unique_ptr<DnsClient>> Create(Loop* loop, DnsCache* cache,
                                                           const std::string& servers,
                                                           int timeout_ms = 1500, int tries = 2);
  ~DnsClient();
  DnsClient(const DnsClient&) = delete;
  DnsClient& operator=(const DnsClient&) = delete;

  // Called on the loop thread whenever any client stored an answer.
  void SetOnChange(std::function<void()> fn) { on_change_ = std::move(fn); }
  // Any thread: queries are wanted or answers changed.
  void Poke(bool changed);
  // Queries this client has in flight.
  int in_flight() const { return in_flight_; }
  // For tests: the sockets with a poll in the ring, and how often AfterAres found a socket
  // c-ares wanted watched that its sock_state_cb calls had not left watched.
  std::vector<int> watched_fds() const;
  int repaired() const { return repaired_; }

  struct Watch;
  struct Pending;

 private:
  DnsClient(Loop* loop, DnsCache* cache) : loop_(loop), cache_(cache) {}
  static void SockStateCb(void* data, ares_socket_t fd, int readable, int writable);
  void OnPoke();
  void OnTimer(int res, uint32_t flags);
  void ArmTimer();
  void StartQueries();
  void Arm(Watch* w);
  // After every call into c-ares: make sure each socket it wants watched is; arm the timer.
  void AfterAres();
  void WatchFd(int fd, short events);
  void UnwatchFd(int fd);
  friend struct Watch;
  friend struct Pending;

  Loop* loop_;
  DnsCache* cache_;
  ares_channel channel_ = nullptr;
  std::unique_ptr<Notifier> poke_;  // notified under DnsCache::mu_, removed before it goes
  std::atomic<bool> changed_{false};
  bool timer_armed_ = false;
  bool destroying_ = false;
  int in_flight_ = 0;
  int ops_in_ring_ = 0;
  int repaired_ = 0;
  __kernel_timespec timer_ts_{};
  std::function<void()> on_change_;
  absl::flat_hash_map<int, Watch*> watches_;
  MemberCompletion<DnsClient, &DnsClient::OnTimer> timer_done_{this};
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_RESOLVER_H_
