// Connector: the io_uring outbound connector. A delivery worker asks for "a connection for
// domain D"; the connector acquires a destination from the Selector, opens the TCP
// connection, reads the SMTP greeting and hands back a ready connection — or says why not.
//
//   io::Connector connector(loop, &selector);
//   connector.Connect("example.com", [](io::ConnectResult r) {
//     if (r.kind == io::ConnectResult::Kind::kConnected) {
//       // r.fd is a connected, blocking TCP socket after a 2xx greeting (r.greeting); r.lease
//       // (and r.cluster_lease) hold the slot. Between transactions: connector.Park(std::move(r))
//       // (parked with ConnectorOptions::reuse, else QUIT; the slot goes after the server's
//       // close). A dialogue that broke mid-transaction: half-close and read on to the
//       // server's EOF (unless it closed already; DESIGN §1 rule 3), close(r.fd), let r go.
//     } else {
//       // kDeferred (try later) or kFailed, with r.reason ("421 4.4.0 ...", "...: refused").
//     }
//   });
//   while (connector.in_flight() > 0 || connector.parked() > 0) loop->RunOnce(-1);
//
// One attempt: Acquire -> socket (IORING_OP_SOCKET, or socket(2) where the kernel lacks
// it) -> connect linked to a timeout (connect_timeout) -> recv linked to a timeout until a
// complete greeting arrives (banner_timeout, one deadline for all reads). A refused or timed
// out connect, a 4xx/5xx greeting or garbage marks the host failed (Lease::Report) and the
// connector tries again for the same domain — the selector now skips that host — up to
// max_attempts (like Exim's hosts_max_try). A busy greeting ("421 4.7.0 too many
// connections", docs/DESIGN.md §6) instead lowers the host's effective limit and the session tries
// again the same way (waiting for a slot if slot_wait_ms is set). Local errors (no fds, no
// ephemeral ports) do not blame the host and end the session as deferred.
//
// While a domain's DNS is still resolving, sessions wait (woken by OnRoutesChanged(), no
// polling) up to dns_wait_ms, then end as deferred.
//
// With ConnectorOptions::cluster, a cluster-wide slot (host and domain limits across every
// worker process) is taken after the selector's and before the socket (DESIGN §7).
//
// Thread-safety: REQUIRES external synchronization — a Connector belongs to its Loop's
// thread. Several connectors (one per thread) may share one Selector. A ConnectResult is
// the loop thread's too: Park, Stale and its destruction (ClusterLease) happen there, so a
// worker that delivers on another thread hands the result back before ending it.
#ifndef MXSCHED_IO_CONNECTOR_H_
#define MXSCHED_IO_CONNECTOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mxsched/base/mutex.h"
#include "mxsched/io/fleet_client.h"
#include "mxsched/io/loop.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::io {

struct ConnectResult {
  enum class Kind : uint8_t { kConnected, kDeferred, kFailed };
  Kind kind = Kind::kFailed;
  std::string reason;  // why not connected: an SMTP-style status and text
  // The selector's reason when it deferred (kDeferred from Acquire), else unset.
  std::optional<DeferReason> defer_reason;
  // What the last connection attempt ended with (kFailed, or kDeferred after failures).
  std::optional<Outcome> last_outcome;
  int attempts = 0;
  int busy_replies = 0;       // attempts whose greeting was busy (421 "too many connections")
  int64_t elapsed_nanos = 0;  // from Connect() to this result
  // The part of elapsed_nanos spent waiting for a free slot (0 if it never waited): time the
  // limits kept the session queued behind others, not time the network took.
  int64_t slot_wait_nanos = 0;
  // The part of elapsed_nanos spent waiting for a rate throttle's instant (DESIGN §12),
  // holding the slot: time the receiver's rate kept the session back. Apart from (and not
  // in) slot_wait_nanos.
  int64_t throttle_wait_nanos = 0;
  // kConnected only:
  int fd = -1;
  Lease lease;
  std::string greeting;  // "220 mx.example ESMTP ..." (first line)
  // With cluster limits: the fleet-wide part of the slot, refreshed while held. Release it
  // with `lease`, on this connector's loop thread.
  ClusterLease cluster_lease;
  // kDeferred because Connector::Stop cut the session short (no host was blamed).
  bool stopped = false;
  // kConnected from the parking lot (DESIGN §13): no connect, no greeting (`greeting` is the
  // one of the connection's first session) and no EHLO to send (RSET keeps the EHLO state;
  // what the EHLO advertised is not kept here: an embedder needing it keeps it by fd,
  // replaced at every result that is not reused); it answered RSET, and, if it then waited
  // for its message throttles' instant, the server had not closed it (nor sent anything) by
  // the end of the wait. `deliveries`: messages delivered over this connection before
  // (Connector::Park counts them).
  bool reused = false;
  int deliveries = 0;
  // Reused, parked with ParkOptions::rset_with_transaction (DESIGN §13 rule 6): the connector
  // sent no RSET. The embedder sends "RSET\r\n" first in its pipelined group (RSET, MAIL,
  // RCPT, DATA in one write, RFC 2920) and reads the RSET reply first: a 2xx goes on with the
  // transaction; any other reply, EOF or an error before it means the connection was stale —
  // hand the result to Connector::Stale (the message was not sent: DATA was not answered).
  bool rset_pending = false;
  std::string domain;   // the domain the session was for (Park reads its settings)
  // The Binding or Binding_Group it asked for (Stale asks again); the Binding taken is
  // lease.binding().
  std::string binding;
};
std::string_view ConnectKindName(ConnectResult::Kind k);
static_assert(static_cast<size_t>(ConnectResult::Kind::kFailed) + 1 == kSessionResults);

struct ConnectorOptions {
  int max_attempts = 5;
  // Override the per-domain connect_timeout / banner_timeout (config has whole seconds;
  // tests and the load tool need less). -1: the selector's configuration decides.
  int connect_timeout_ms = -1;
  int banner_timeout_ms = -1;
  int dns_wait_ms = 30000;
  // docs/DESIGN.md §1 rule 8: when every usable host (or the domain, or the server) is at its
  // limit, wait up to this long for a slot — handed over by the Selector, first come first served,
  // the moment one frees (docs/DESIGN.md §5), no polling — instead of ending as deferred at once.
  // The same budget bounds a rate throttle's wait (outbound_throttle_*, DESIGN §12): a start
  // the throttles allow within what is left of it waits, holding its slot, for that instant
  // (one timer); a later one is deferred at once naming the throttle.
  // 0: defer at once.
  int slot_wait_ms = 0;
  // Cluster-wide limits (DESIGN §7), borrowed; must outlive the connector and every
  // ClusterLease it hands out. REQUIRED when the configuration sets cluster_limits: without
  // it every session ends deferred "451 4.4.3 cluster limits unavailable: cluster_limits is
  // set but this Connector has no cluster client" (it never connects past the fleet's limits).
  // Build it from the same Config with the cluster component: cluster::FleetFromConfig once
  // per process, cluster::NewFleetClient on this loop (mxsched/cluster/cluster.h, README
  // "Embedding"). It is used on this loop only. After the selector picks a host, the
  // session takes the host's (if it has a Host limit) and the domain's cluster slot —
  // one Redis round trip — before connecting. At a cluster limit it waits like at a local
  // one (slot_wait_ms), queued in Redis and woken by the release that frees a slot.
  FleetClient* cluster = nullptr;
  // Connection reuse (DESIGN §13): sessions take up this connector's parked connections
  // (Connector::Park) before opening new ones.
  bool reuse = false;
};

// How Connector::Park keeps a connection (DESIGN §13 rule 6).
struct ParkOptions {
  // The next session to take it up sends RSET itself, in the same write as its transaction
  // (MAIL, RCPT, DATA), instead of the connector sending RSET and waiting for the answer:
  // one round trip less per reused message. Set it only when the server advertised
  // PIPELINING (RFC 2920) and every session of this connector pipelines; the result then has
  // ConnectResult::rset_pending. Unset: the connector checks it with RSET first, as before.
  bool rset_with_transaction = false;
};

class Connector {
 public:
  using Callback = std::function<void(ConnectResult)>;

  // Timeouts come from the selector's configuration in force when each attempt starts, so a
  // Selector::SetConfig reload reaches them without telling the connector.
  // REQUIRES: `loop` and `selector` outlive the connector.
  Connector(Loop* loop, Selector* selector, ConnectorOptions options = {});
  // REQUIRES: in_flight() == 0 (Stop, then run the loop until it is). Closes the parked
  // connections with QUIT and runs the loop briefly (bounded) so they end and finished
  // sessions can collect the completions of their cancelled timeouts.
  ~Connector();

  // `done` is called exactly once, on this loop's thread — possibly before Connect returns
  // (an immediate deferral or permanent failure), so it must not assume otherwise.
  void Connect(std::string_view domain, Callback done);
  // Through a binding or binding group (Selector::Acquire's AcquireOptions): the socket is
  // bound to the binding's source address before connecting (IP_BIND_ADDRESS_NO_PORT: the
  // port is picked at connect time, per 4-tuple). A bind that fails (the address is not on
  // this machine) is a local error: deferred with the reason, the host not blamed. Only
  // options.binding is read (copied; chosen per call, so per message): the throttle wait
  // and the reuse owner come from ConnectorOptions (slot_wait_ms, reuse).
  void Connect(std::string_view domain, const AcquireOptions& options, Callback done);
  // Routes may have changed (a DNS answer arrived): sessions waiting on resolution retry.
  void OnRoutesChanged();
  // Connection reuse (DESIGN §13). After a successful transaction over `r` (a kConnected
  // result, fd and lease untouched, `delivered` more messages sent over it): parks the
  // connection for this connector's next session — its slot stays held, a read stays armed
  // (the server closing or sending 421 frees it, the host not blamed), closed with QUIT after
  // idle_timeout — or closes it with QUIT at once when max_deliveries_per_connection is
  // reached, idle_timeout is 0, reuse is off, the connector stopped, or sessions wait for its
  // slot that cannot use it. Either way the connector owns the socket from here. Call it
  // only between transactions (the last reply read, nothing unanswered): a transaction the
  // server refused is parked with delivered = 0; a dialogue that broke mid-transaction is
  // not parked — shutdown(r.fd, SHUT_WR) and read on to the server's EOF (bounded; not
  // needed if it closed already), close(r.fd), then let `r` go (lease and cluster lease
  // release): the slot covers the server's count (DESIGN §1 rule 3).
  void Park(ConnectResult r, int delivered = 1, ParkOptions park = {});
  // A reused connection with rset_pending (an unchanged kConnected result from this
  // connector: fd and lease untouched) whose RSET the embedder found refused (non-2xx), or
  // which closed before the RSET reply: counted stale (as when the connector's own RSET
  // fails), closed with QUIT read on to the server's EOF (bounded by 1 s; at once if the
  // server is gone), then its slot freed without blaming the host, and the same session goes
  // on for a fresh connection: `done` is called exactly once with its result, as for
  // Connect (possibly before Stale returns). in_flight() counts the session meanwhile. The embedder counts the session once: the stale connection carried nothing.
  void Stale(ConnectResult r, Callback done);
  // Connections parked by this connector now, and closing (QUIT sent, lease still held).
  size_t parked() const { return parked_.size(); }
  // Ends every session in flight as deferred (ConnectResult::stopped, `why` in its reason)
  // and every later Connect at once: a connect or greeting read in progress is cancelled
  // (io_uring async cancel; its host is not blamed), a slot, DNS or cluster wait is left,
  // and no further attempt (failover) starts. Sessions whose cancelled operation has not
  // completed yet end when it does, within a loop iteration. Parked connections are closed
  // with QUIT (so is a connection Park is given after Stop); each stays in parked(), its
  // slot held, until the server's close, at most 1 s (the loop must run for that; the
  // destructor, which closes parked connections the same way, runs it itself). `load --max-seconds`
  // uses it so a run ends at its deadline, not attempts x timeouts later.
  void Stop(std::string why);
  bool stopped() const { return stopped_; }

  size_t in_flight() const { return in_flight_; }
  Loop* loop() { return loop_; }

  struct Session;
  struct Parked;

 private:
  friend struct Session;
  friend struct Parked;
  // The selector evicts a parked connection from any thread (ParkedConnection::Evict): it
  // is queued here and closed on the loop (RunWoken).
  void QueueEvicted(Parked* p, Lease lease);
  void CloseParked();  // Stop and the destructor: QUIT on every parked connection
  // A connection not to be parked (stale, or closed during a throttle wait): QUIT, read on
  // to the server's EOF, then its slot and fleet lease go back and `after` runs (§1 rule 3).
  void QuitThen(ConnectResult& r, std::function<void()> after);
  // A session of another worker queued at the fleet on `key` (FleetClient::OnTakeBack,
  // DESIGN §13 rule 7): the oldest idle parked connection holding it is closed with QUIT
  // (one at a time per key).
  void TakeBack(std::string_view key);
  // Slot waits: the Selector wakes sessions from any thread; they are queued here and an
  // eventfd read on this loop picks them up.
  void QueueWoken(Session* s, Lease lease);
  void RunWoken();
  void Forget(Session* s);  // out of sessions_ (swap with the last: O(1))
  // The selector's configuration, fetched again only when it changed.
  const Config& CurrentConfig();

  Loop* loop_;
  Selector* selector_;
  std::shared_ptr<const Config> config_;  // the selector's, as of config_version_
  uint64_t config_version_ = 0;
  ConnectorOptions options_;
  size_t in_flight_ = 0;
  bool stopped_ = false;
  std::string stop_reason_;
  std::vector<Session*> sessions_;  // in flight (not finished), for Stop
  size_t live_ = 0;  // Session objects not yet deleted (in flight, or awaiting completions)
  std::vector<Session*> waiting_dns_;
  Mutex wake_mu_;
  std::vector<std::pair<Session*, Lease>> woken_ ABSL_GUARDED_BY(wake_mu_);
  std::vector<std::pair<Parked*, Lease>> evicted_ ABSL_GUARDED_BY(wake_mu_);
  std::vector<Parked*> parked_;  // parked or closing (live Parked objects), for Stop
  // Set when slot_wait_ms > 0 or reuse; notified by wakers on any thread under wake_mu_.
  std::unique_ptr<Notifier> wake_;
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_CONNECTOR_H_
