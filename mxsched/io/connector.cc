#include "mxsched/io/connector.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "mxsched/base/clock.h"
#include "mxsched/base/sanitizers.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/io/cluster_step.h"
#include "mxsched/io/greeting.h"

namespace mxsched::io {

std::string_view ConnectKindName(ConnectResult::Kind k) {
  switch (k) {
    case ConnectResult::Kind::kConnected:
      return "connected";
    case ConnectResult::Kind::kDeferred:
      return "deferred";
    case ConnectResult::Kind::kFailed:
      return "failed";
  }
  return "?";
}

namespace {

// Every time in a session is a steady_clock time point or a std::chrono duration: the
// configured timeouts are range-checked at load (config_options.cc) and converted once, so no
// millisecond/nanosecond multiplication can overflow on the way (issue: `25d` once became a
// negative count here).
using SteadyClock = std::chrono::steady_clock;  // not mxsched::Clock (the selector's, injectable)
using Nanos = std::chrono::nanoseconds;
using Millis = std::chrono::milliseconds;

__kernel_timespec ToTimespec(Nanos d) {
  const int64_t n = std::max<int64_t>(0, d.count());
  return {n / 1'000'000'000, n % 1'000'000'000};
}

bool IsLocalError(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM ||
         err == EADDRNOTAVAIL || err == EAFNOSUPPORT;
}

// A session's phase: where it is in its one life, Acquire to callback. Every change goes
// through Session::Enter, which checks it against LegalTransition (in debug and sanitizer
// builds). Facts that hold across phases are not phases and stay separate fields: that Stop
// reached the session (`cancelled`), the DNS and slot-wait timers (a budget each, running
// over several waits), what earlier attempts left (`slot_woken_before`, `busy_since_wait`).
//
//   kNew            -> kAcquiring
//   kAcquiring      -> kWaitingDns | kWaitingSlot | kWaitingThrottle | kClusterAcquire
//                      | kConnecting | kDone
//   kWaitingDns, kWaitingSlot, kWaitingCluster
//                   -> kAcquiring  (woken, its timer, new routes, or Stop)
//   kWaitingThrottle -> kClusterAcquire | kConnecting | kDone (its timer; Stop removes it)
//   kClusterAcquire -> kWaitingCluster | kWaitingThrottle (the fleet's rate, DESIGN §12
//                      rule 10) | kConnecting | kAcquiring (another host) | kDone
//   kConnecting     -> kGreeting | kAcquiring (failover) | kDone
//   kGreeting       -> kAcquiring (failover) | kDone
//                      | kClusterAcquire (its fleet message instant passed: a new one, §12
//                      rule 10) -> kWaitingThrottle -> kDone
//   kAcquiring      -> kReusing (a parked connection, DESIGN §13) -> kDone | kAcquiring (stale)
//                      | kWaitingThrottle (its message throttles' instant is ahead) -> kDone
//                      | kClusterAcquire (the fleet's message throttles) -> kWaitingThrottle
//                      (either -> kReusing again: the server closed it during the wait, so it
//                      is closed as stale and the session goes on -> kAcquiring; a new
//                      connection closed during the fleet's re-timed wait, from kGreeting
//                      -> kClusterAcquire -> kWaitingThrottle, likewise -> kReusing -> kDone,
//                      deferred)
//
// A waiting phase is registered with someone who will call back (the connector's DNS list,
// the selector's waiter queue, the fleet's queue), so it cannot end in kDone directly: a
// stop leaves the wait for kAcquiring, whose first step sees the stop. kWaitingThrottle is
// the exception: it already holds its slot (Lease::start_at is ahead), registered with no
// one but its own timer, so its timer's completion — fired, or removed by Stop — ends it.
// Future steps are phases added here (e.g. a connection taken from a reuse pool): a row in
// LegalTransition, a case in Cancel, and the handlers that enter and leave it.
enum class Phase : uint8_t {
  kNew,             // constructed, Connect has not yet made the first attempt
  kAcquiring,       // asking the selector for a slot (synchronous: Attempt)
  kWaitingDns,      // in connector->waiting_dns_: OnRoutesChanged or the DNS timer resumes it
  kWaitingSlot,     // in the selector's waiter queue, or its wake-up queued (QueueWoken)
  kWaitingThrottle, // holding a slot until the rate throttles' instant (Lease::start_at)
  kClusterAcquire,  // a fleet-wide slot asked for (ClusterStep::Ask); the verdict to come
  kWaitingCluster,  // queued at the fleet: ClusterWake or the slot-wait timer resumes it
  kConnecting,      // socket and connect (linked to its timeout) in the ring
  kGreeting,        // reading the greeting (recv linked to the banner deadline)
  kReusing,         // a parked connection taken up (DESIGN §13): its RSET answer to come
  kDone,            // the callback has run; deleted once `pending` reaches zero
};

std::string_view PhaseName(Phase p) {
  switch (p) {
    case Phase::kNew: return "new";
    case Phase::kAcquiring: return "acquiring";
    case Phase::kWaitingDns: return "waiting-dns";
    case Phase::kWaitingSlot: return "waiting-slot";
    case Phase::kWaitingThrottle: return "waiting-throttle";
    case Phase::kClusterAcquire: return "cluster-acquire";
    case Phase::kWaitingCluster: return "waiting-cluster";
    case Phase::kConnecting: return "connecting";
    case Phase::kGreeting: return "greeting";
    case Phase::kReusing: return "reusing";
    case Phase::kDone: return "done";
  }
  return "?";
}

// The transitions of the diagram above, all of them.
constexpr bool LegalTransition(Phase from, Phase to) {
  switch (from) {
    case Phase::kNew:
      return to == Phase::kAcquiring;
    case Phase::kAcquiring:
      return to == Phase::kWaitingDns || to == Phase::kWaitingSlot ||
             to == Phase::kWaitingThrottle || to == Phase::kClusterAcquire ||
             to == Phase::kConnecting || to == Phase::kReusing || to == Phase::kDone;
    case Phase::kWaitingThrottle:  // (kReusing: a ready connection closed during its wait)
      return to == Phase::kClusterAcquire || to == Phase::kConnecting || to == Phase::kDone ||
             to == Phase::kReusing;
    case Phase::kReusing:  // answered RSET: done (or first the message throttles' instant,
                           // or the fleet's message throttles);
                           // stale: a fresh connection (kAcquiring)
      return to == Phase::kDone || to == Phase::kAcquiring || to == Phase::kWaitingThrottle ||
             to == Phase::kClusterAcquire;
    case Phase::kWaitingDns:
    case Phase::kWaitingSlot:
    case Phase::kWaitingCluster:
      return to == Phase::kAcquiring;
    case Phase::kClusterAcquire:
      return to == Phase::kWaitingCluster || to == Phase::kWaitingThrottle ||
             to == Phase::kConnecting || to == Phase::kAcquiring || to == Phase::kDone ||
             to == Phase::kReusing;
    case Phase::kConnecting:
      return to == Phase::kGreeting || to == Phase::kAcquiring || to == Phase::kDone;
    case Phase::kGreeting:
      return to == Phase::kAcquiring || to == Phase::kDone || to == Phase::kClusterAcquire;
    case Phase::kDone:
      return false;
  }
  return false;
}

// A wait budget (dns_wait_ms, slot_wait_ms): one timer per session, armed on the first wait
// and running over every later one; once it fired, the session no longer waits for it.
enum class Timer : uint8_t { kIdle, kArmed, kFired };

#if !defined(NDEBUG) || defined(MXSCHED_ASAN) || defined(MXSCHED_TSAN)
constexpr bool kCheckPhases = true;
#else
constexpr bool kCheckPhases = false;
#endif

}  // namespace

struct Connector::Session {
  Session(Connector* c, std::string d, std::string b, Callback cb)
      : connector(c),
        domain(std::move(d)),
        binding(std::move(b)),
        done(std::move(cb)),
        start(SteadyClock::now()),
        cluster(c->options_.cluster, [this] { OnClusterWoken(); }) {
    ++connector->live_;
  }
  ~Session() { --connector->live_; }

  struct Waiter : SlotWaiter {  // docs/DESIGN.md §1 rule 8: wait for a slot
    explicit Waiter(Session* s) : session(s) {}
    // Any thread. `lease` is the slot handed over (or invalid: re-plan with Acquire).
    void Wake(Lease lease) override { session->connector->QueueWoken(session, std::move(lease)); }
    Session* session;
  };

  Loop* loop() { return connector->loop_; }

  void Enter(Phase to) {
    if (kCheckPhases && !LegalTransition(phase, to)) {
      std::fprintf(stderr, "mxsched: connector session for %s: illegal phase change %s -> %s\n",
                   domain.c_str(), PhaseName(phase).data(), PhaseName(to).data());
      std::abort();
    }
    phase = to;
  }

  bool MayWait() const {
    return connector->options_.slot_wait_ms > 0 && slot_timer != Timer::kFired;
  }

  io_uring_sqe* Submit(Completion* c) {
    io_uring_sqe* sqe = loop()->Sqe();
    Loop::SetCompletion(sqe, c);
    ++pending;
    return sqe;
  }

  // Every attempt, and every wait's end, starts here. `pin`: a binding of the session's group
  // to try first — the one whose fleet queue woke it (DESIGN §7): through another binding it
  // holds no place, and the slot freed for it would stay idle until the next re-check.
  void Attempt(std::string_view pin = {}) {
    Enter(Phase::kAcquiring);
    if (connector->stopped_) return FinishStopped();  // no new attempt, failover included
    if (!pin.empty() && pin != binding) {
      AcquireOptions o = AcquireOpts();
      o.binding = pin;
      AcquireResult p = connector->selector_->Acquire(domain, o);
      if (p.ok()) return Start(p.TakeLease());
    }
    AcquireResult r = connector->selector_->Acquire(domain, AcquireOpts());
    if (r.ok()) return Start(r.TakeLease());
    const Deferral& d = r.deferral();
    if (d.reason == DeferReason::kResolving && connector->options_.dns_wait_ms > 0 &&
        dns_timer != Timer::kFired) {
      return WaitForDns();
    }
    const bool at_limit = d.reason == DeferReason::kHostsAtLimit ||
                          d.reason == DeferReason::kDomainLimit ||
                          d.reason == DeferReason::kServerLimit;
    if (at_limit && MayWait()) return WaitForSlot();
    ConnectResult res;
    res.kind = d.permanent() ? ConnectResult::Kind::kFailed : ConnectResult::Kind::kDeferred;
    res.reason = d.ToString();
    if (!last_error.empty()) res.reason += StrCat(" (last attempt: ", last_error, ")");
    res.defer_reason = d.reason;
    return Finish(std::move(res));
  }

  AcquireOptions AcquireOpts() const {
    return {.binding = binding,
            .throttle_wait_nanos = ThrottleBudget(),
            .reuse_owner = connector->options_.reuse && !no_reuse ? connector : nullptr};
  }

  // How long a rate throttle may hold this session back (DESIGN §12 rule 3): what is left of
  // the slot_wait_ms budget — the same budget as slot and fleet waits; 0 without waiting.
  int64_t ThrottleBudget() const {
    if (!MayWait()) return 0;
    if (slot_timer == Timer::kIdle) return Nanos(Millis(connector->options_.slot_wait_ms)).count();
    return std::max<int64_t>(0, Nanos(slot_deadline - SteadyClock::now()).count());
  }

  // A slot is held (from Acquire, or handed over by the selector to this waiter).
  void Start(Lease l) {
    lease = std::move(l);
    if (ParkedConnection* pc = lease.reused()) return TakeUp(pc);
    if (connector->stopped_) return FinishStopped();  // a slot handed over after Stop
    const int64_t delay = lease.start_at() - connector->selector_->clock().NowNanos();
    if (lease.start_at() != 0 && delay > 0) return WaitForThrottle(delay);
    Proceed();
  }

  // The slot is held and the throttles allow the start now.
  void Proceed() {
    if (cluster.enabled()) return TakeFleetSlot();
    if (!connector->CurrentConfig().cluster_limits.empty()) {
      // The configuration asks for fleet limits and nobody gave this connector the client
      // that enforces them: per-process limits would silently exceed the fleet's.
      lease.Release();
      ConnectResult r;
      r.kind = ConnectResult::Kind::kDeferred;
      r.defer_reason = DeferReason::kTempFailure;
      r.reason =
          "451 4.4.3 cluster limits unavailable: cluster_limits is set but this Connector has "
          "no cluster client (ConnectorOptions::cluster; DESIGN §7)";
      return Finish(std::move(r));
    }
    Open();
  }

  // The host and domain are free here (and fleet-wide, with cluster limits): connect.
  void Open() {
    Enter(Phase::kConnecting);
    ++attempts;
    attempt_start = SteadyClock::now();
    // Per attempt, from the configuration in force now (a reload applies to the next one).
    const DomainSettings& ds = connector->CurrentConfig().ForDomain(domain);
    const ConnectorOptions& o = connector->options_;
    connect_timeout = o.connect_timeout_ms >= 0 ? Millis(o.connect_timeout_ms)
                                                : std::chrono::seconds(ds.connect_timeout_s);
    banner_timeout = o.banner_timeout_ms >= 0 ? Millis(o.banner_timeout_ms)
                                              : std::chrono::seconds(ds.banner_timeout_s);
    parser = GreetingParser();
    addr_len = lease.endpoint().ToSockaddr(&addr);
    const int family = lease.endpoint().address.is_v4() ? AF_INET : AF_INET6;
    if (loop()->has_socket_op()) {
      io_uring_prep_socket(Submit(&socket_done), family, SOCK_STREAM | SOCK_CLOEXEC, 0, 0);
    } else {
      // Kernels before 5.19 have no IORING_OP_SOCKET: one socket(2) call instead.
      int s = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      ++pending;
      OnSocket(s >= 0 ? s : -errno, 0);
    }
  }

  void OnSocket(int res, uint32_t) {
    --pending;
    if (cancelled) {
      if (res >= 0) fd = res;
      CloseAttempt();
      return FinishStopped();
    }
    if (res < 0) return LocalFailure("socket", -res);
    fd = res;
    if (const IpAddress* source = lease.source_address()) {
      // The binding's source address; the kernel picks the port at connect(), so ports are
      // per 4-tuple, not per source address (Linux 4.2+).
      const int one = 1;
      (void)setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      sockaddr_storage local{};
      const socklen_t len = Endpoint{*source, 0}.ToSockaddr(&local);
      if (bind(fd, reinterpret_cast<sockaddr*>(&local), len) != 0) {
        const int err = errno;
        // The global bind_address is the default binding's (an empty name).
        return LocalFailure(StrCat("bind to ", source->ToString(), " (",
                                   lease.binding().empty() ? std::string("default binding")
                                                           : StrCat("binding ", lease.binding()),
                                   ")"),
                            err);
      }
    }
    loop()->Reserve(2);  // connect and its timeout go in one submission, or not linked at all
    io_uring_sqe* sqe = Submit(&connect_done);
    io_op = &connect_done;
    io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&addr), addr_len);
    LinkTimeout(sqe, &connect_ts, connect_timeout);
  }

  // Links a timeout to `op`, the SQE just prepared. REQUIRES: Reserve(2) before `op`.
  void LinkTimeout(io_uring_sqe* op, __kernel_timespec* ts, Nanos after) {
    op->flags |= IOSQE_IO_LINK;
    *ts = ToTimespec(after);
    io_uring_prep_link_timeout(Submit(&timeout_done), ts, 0);
  }

  void OnConnect(int res, uint32_t) {
    --pending;
    io_op = nullptr;
    if (cancelled) {  // Stop: not the host's fault, whatever the result
      CloseAttempt();
      return FinishStopped();
    }
    if (res == -ECANCELED) {
      return HostFailure(Outcome::kTimedOut,
                         StrCat("connect timeout after ", connect_timeout.count(), " ms"));
    }
    if (res < 0) {
      if (IsLocalError(-res)) return LocalFailure("connect", -res);
      return HostFailure(Outcome::kConnectFailed, StrCat("connect: ", std::strerror(-res)));
    }
    Enter(Phase::kGreeting);
    banner_deadline = SteadyClock::now() + banner_timeout;
    Recv();
  }

  void Recv() {
    loop()->Reserve(2);
    io_uring_sqe* sqe = Submit(&recv_done);
    io_op = &recv_done;
    io_uring_prep_recv(sqe, fd, buf, sizeof(buf), 0);
    LinkTimeout(sqe, &recv_ts, banner_deadline - SteadyClock::now());
  }

  void OnRecv(int res, uint32_t) {
    --pending;
    io_op = nullptr;
    if (cancelled) {
      CloseAttempt();
      return FinishStopped();
    }
    if (res == -ECANCELED) {
      return HostFailure(Outcome::kTimedOut,
                         StrCat("no greeting within ", banner_timeout.count(), " ms"));
    }
    if (res < 0) return HostFailure(Outcome::kConnectFailed, StrCat("recv: ", std::strerror(-res)));
    if (res == 0) {
      return HostFailure(Outcome::kProtocolError, "connection closed before a complete greeting");
    }
    switch (parser.Feed(std::string_view(buf, res))) {
      case GreetingParser::State::kNeedMore:
        if (SteadyClock::now() >= banner_deadline) {
          return HostFailure(Outcome::kTimedOut,
                             StrCat("greeting incomplete after ", banner_timeout.count(), " ms"));
        }
        return Recv();
      case GreetingParser::State::kError:
        return HostFailure(Outcome::kProtocolError, StrCat("bad greeting: ", parser.error()));
      case GreetingParser::State::kDone:
        break;
    }
    // The selector classifies the reply (feedback.h): a busy one lowers the host's limit
    // instead of marking it failed.
    const Outcome outcome = lease.Report(SmtpReply::FromText(parser.code(), parser.text()));
    if (outcome == Outcome::kBusy) return HostBusy(StrCat("greeting ", parser.Summary()));
    if (outcome != Outcome::kConnected) {
      return HostFailure(outcome, StrCat("greeting ", parser.Summary()));
    }
    lease.RecordConnectLatency(Nanos(SteadyClock::now() - attempt_start).count());
    ConnectResult r;
    r.kind = ConnectResult::Kind::kConnected;
    r.fd = std::exchange(fd, -1);
    r.lease = std::move(lease);
    r.cluster_lease = std::move(cluster_lease);
    r.greeting = parser.Summary();
    r.last_outcome = Outcome::kConnected;
    // The fleet reserved this connection's first message at its connect instant (DESIGN §12
    // rule 10); the receiver counts the MAIL, which goes out after the handshake. Too late
    // past that instant, it would land next to the fleet's later messages: a new instant on
    // the message throttles alone (one command), waited for before the connection is handed
    // out.
    if (fleet_message_at != 0 &&
        SteadyNowNanos() - fleet_message_at > cluster.LateStartLimitNanos(/*messages_only=*/true)) {
      ready = std::move(r);
      ready_local_done = true;   // its local instant was the connect's
      ready_fleet_asked = true;  // asked now
      ready_waited = false;
      return AskFleetMessages();
    }
    Finish(std::move(r));
  }

  // --- connection reuse (DESIGN §13) ------------------------------------------------------
  void TakeUp(ParkedConnection* pc);  // after Parked
  void OnReused(Parked* p, bool alive);
  void OnMoved(Parked* p, bool moved);
  void Reused(Parked* p, bool alive);
  bool ReadyStillOpen() const;
  void ReplaceClosedReady();  // after Parked

  void OnTimeout(int, uint32_t) {
    --pending;
    MaybeDelete();
  }

  // The host is to blame: mark it, drop this attempt, try the next destination.
  void HostFailure(Outcome outcome, std::string why) {
    last_outcome = outcome;
    last_error = StrCat(lease.endpoint().ToString(), ": ", why);
    lease.Report(outcome);
    CloseAttempt();
    if (attempts >= connector->options_.max_attempts) {
      ConnectResult r;
      r.kind = ConnectResult::Kind::kFailed;
      r.reason = StrCat("451 4.4.1 ", attempts, " attempt(s) failed; last: ", last_error);
      r.last_outcome = outcome;
      return Finish(std::move(r));
    }
    Attempt();
  }

  // The receiver pushed back (a busy greeting, already reported): its limit went down, it is
  // not failed. Try again — the selector now counts this host as full (or finds the next
  // host of the tier); with slot waits the session waits for a slot rather than retrying
  // at once. Busy attempts count toward max_attempts; running out of them defers.
  void HostBusy(std::string why) {
    ++busy_replies;
    busy_since_wait = true;
    last_outcome = Outcome::kBusy;
    last_error = StrCat(lease.endpoint().ToString(), ": ", why);
    CloseAttempt();
    if (attempts >= connector->options_.max_attempts) {
      ConnectResult r;
      r.kind = ConnectResult::Kind::kDeferred;
      r.reason =
          StrCat("451 4.4.5 ", attempts, " attempt(s) met busy receivers; last: ", last_error);
      r.last_outcome = Outcome::kBusy;
      return Finish(std::move(r));
    }
    Attempt();
  }

  // Our side ran out of something: do not blame the host; defer.
  void LocalFailure(std::string_view op, int err) {
    last_outcome = Outcome::kLocalError;
    lease.Report(Outcome::kLocalError);
    CloseAttempt();
    ConnectResult r;
    r.kind = ConnectResult::Kind::kDeferred;
    const bool bind = op.starts_with("bind");
    r.reason = StrCat("451 4.3.0 local ", bind ? "error" : "resource shortage", ": ", op, ": ",
                      std::strerror(err),
                      err == EADDRNOTAVAIL ? (bind ? " (the address is not on this machine)"
                                                   : " (ephemeral ports exhausted)")
                                           : "");
    r.last_outcome = Outcome::kLocalError;
    Finish(std::move(r));
  }

  void CloseAttempt() {
    if (fd >= 0) close(fd);
    fd = -1;
    lease.Release();  // after the socket is closed: the host never sees limit + 1
    cluster_lease.Release();
  }

  // --- cluster-wide limits (DESIGN §7; the step itself is ClusterStep) --------------------
  void TakeFleetSlot() {
    const int32_t domain_limit =
        connector->CurrentConfig().ForDomain(domain).max_outbound_connections;
    // The rate throttles are fleet-wide too (DESIGN §12 rule 10): the connection's and its
    // first message's taken in the same ask.
    if (!cluster.Plan(lease, domain, domain_limit, connector->selector_->StartThrottles(lease))) {
      return Open();
    }
    Enter(Phase::kClusterAcquire);
    // The verdict may come before Ask returns, and end the session: one count for the
    // verdict, one holding the session until Ask has returned.
    pending += 2;
    cluster.Ask(MayWait(), ThrottleBudget(), [this](FleetClient::Result res) {
      --pending;
      OnClusterVerdict(std::move(res));
    });
    --pending;
    MaybeDelete();
  }

  void OnClusterVerdict(FleetClient::Result res) {
    ClusterStep::Decision d = cluster.Judge(std::move(res), MayWait(), domain);
    if (d.next == ClusterStep::Next::kOpen) {
      cluster_lease = std::move(d.lease);
      if (phase == Phase::kDone) return CloseAttempt(), MaybeDelete();
      if (cancelled) return CloseAttempt(), FinishStopped();
      NoteFleetMessageInstant(d.start_in_nanos);
      if (d.start_in_nanos > 0) {  // the fleet's rate reserved a later instant: both slots held
        fleet_throttle_granted = true;
        return WaitForThrottle(d.start_in_nanos);
      }
      return Open();
    }
    lease.Release();  // the local slot is no use without the fleet's
    if (phase == Phase::kDone) return MaybeDelete();
    switch (d.next) {
      case ClusterStep::Next::kWait:
        Enter(Phase::kWaitingCluster);
        if (slot_timer == Timer::kIdle) ArmSlotTimer();
        return;  // the FleetClient wakes us (OnClusterWoken)
      case ClusterStep::Next::kRetry:
        return Attempt();
      case ClusterStep::Next::kDefer:
      case ClusterStep::Next::kOpen: {
        ConnectResult r;
        r.kind = ConnectResult::Kind::kDeferred;
        r.defer_reason = d.defer_reason;
        r.reason = std::move(d.reason);
        return Finish(std::move(r));
      }
    }
  }

  void OnClusterWoken() {  // on the loop thread, from the FleetClient
    if (phase == Phase::kDone) return MaybeDelete();
    Attempt(cluster.queued_binding());
  }

  // --- waiting for DNS --------------------------------------------------------------------
  void WaitForDns() {
    Enter(Phase::kWaitingDns);
    connector->waiting_dns_.push_back(this);
    if (dns_timer == Timer::kIdle) {
      dns_timer = Timer::kArmed;
      dns_ts = ToTimespec(Millis(connector->options_.dns_wait_ms));
      io_uring_prep_timeout(Submit(&dns_timer_done), &dns_ts, 0, 0);
    }
  }

  void OnDnsTimer(int, uint32_t) {
    --pending;
    dns_timer = Timer::kFired;
    if (phase == Phase::kWaitingDns) {
      std::erase(connector->waiting_dns_, this);
      return Attempt();  // one last look, then deferred
    }
    MaybeDelete();
  }

  // --- docs/DESIGN.md §12 rule 3: wait for the throttles' instant -----------------------
  // The slot is held meanwhile (the receiver does not see it; the limit counts it, so no
  // other session takes the slot and then waits for the same throttle). One timer, armed
  // for the instant the reservation was made for: no re-check, no polling. The selector's
  // clock may be coarse (it lags the real monotonic clock by up to a tick), so the delay
  // measured against it never fires early.
  void WaitForThrottle(int64_t delay) {
    Enter(Phase::kWaitingThrottle);
    if (ready) ready_waited = true;
    // The wait counts against the slot_wait_ms budget (ThrottleBudget admitted it).
    if (slot_timer == Timer::kIdle && MayWait()) ArmSlotTimer();
    throttle_wait_since = SteadyClock::now();
    throttle_delay = delay;
    throttle_ts = ToTimespec(Nanos(delay));
    io_uring_prep_timeout(Submit(&throttle_timer_done), &throttle_ts, 0, 0);
  }

  void OnThrottleTimer(int, uint32_t) {
    --pending;
    throttle_waited += SteadyClock::now() - throttle_wait_since;
    if (phase == Phase::kDone) return MaybeDelete();
    if (ready) {  // a connection, ready, waited for its message instant
      if (cancelled || connector->stopped_) return QuitReady(), FinishStopped();
      if (std::exchange(fleet_message_granted, false) &&
          SteadyNowNanos() - fleet_message_at > cluster.LateStartLimitNanos(/*messages_only=*/true)) {
        return AskFleetMessages();  // held up past the fleet's instant: a new one
      }
      return ContinueReady();
    }
    if (cancelled || connector->stopped_) return FinishStopped();
    if (std::exchange(fleet_throttle_granted, false)) {
      // The fleet's instant (DESIGN §12 rule 10) — unless this process was held up past it
      // (a stall fires every timer due at once): starting now would put this start next to
      // the fleet's later ones, so it takes a new instant instead (one more ask).
      const auto late = SteadyClock::now() - throttle_wait_since - Nanos(throttle_delay);
      if (late > Nanos(cluster.LateStartLimitNanos())) return RetimeFleetStart();
      return Open();
    }
    Proceed();
  }

  // The fleet's reply reserved the start, message throttles included, this far ahead: when
  // the first message may go (DESIGN §12 rule 10), for the late-start check after the
  // greeting. 0: no fleet message throttle.
  void NoteFleetMessageInstant(int64_t start_in_nanos) {
    fleet_message_at = cluster.has_message_throttles()
                           ? SteadyNowNanos() + std::max<int64_t>(0, start_in_nanos)
                           : 0;
  }

  // A connection ready for a message (`ready`: reused and checked, or new and greeted) goes
  // to the caller once its message throttles allow: this process's instant (Lease::start_at,
  // the selector's), then the fleet's (a reused connection asks the message throttles alone,
  // one command batched with the loop's others; DESIGN §12 rule 10, §13 rule 2).
  void ContinueReady() {
    if (!ready_local_done) {
      ready_local_done = true;
      const int64_t delay = ready->lease.start_at() - connector->selector_->clock().NowNanos();
      if (ready->lease.start_at() != 0 && delay > 0) return WaitForThrottle(delay);
    }
    if (!ready_fleet_asked) {
      ready_fleet_asked = true;
      if (cluster.enabled() &&
          cluster.PlanThrottles(connector->selector_->StartThrottles(ready->lease, false))) {
        return AskFleetMessages();
      }
    }
    // A connection that waited for its message instant (a reused one after its RSET, a new
    // one after its greeting): the server may have closed it meanwhile (an idle timeout
    // shorter than the wait) or sent a 421. Never handed out then (DESIGN §13 rule 6).
    if (ready_waited && !ReadyStillOpen()) return ReplaceClosedReady();
    ConnectResult r = std::move(*ready);
    ready.reset();
    Finish(std::move(r));
  }

  // Stopped (or refused) with a connection ready: QUIT (not awaited), close, then the slot
  // goes back (rule 3 of §1).
  void QuitReady() {
    if (!ready) return;
    static constexpr char kQuit[] = "QUIT\r\n";
    (void)send(ready->fd, kQuit, sizeof(kQuit) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    close(ready->fd);
    ready->lease.Release();
    ready->cluster_lease.Release();
    ready.reset();
  }

  // The fleet's message throttles alone (the planned ask's), for the ready connection: an
  // instant, then its timer (FIFO across the fleet, no polling). Beyond the session's wait
  // the message is deferred naming the throttle, its connection closed with QUIT.
  void AskFleetMessages() {
    Enter(Phase::kClusterAcquire);
    pending += 2;  // as in TakeFleetSlot
    cluster.AskThrottles(ThrottleBudget(), [this](FleetClient::Result res) {
      --pending;
      ClusterStep::Decision d = cluster.Judge(std::move(res), MayWait(), domain);
      if (phase == Phase::kDone) return QuitReady(), MaybeDelete();
      if (cancelled || connector->stopped_) return QuitReady(), FinishStopped();
      if (d.next == ClusterStep::Next::kOpen) {  // its lease holds nothing: dropped
        fleet_message_at = SteadyNowNanos() + std::max<int64_t>(0, d.start_in_nanos);
        if (d.start_in_nanos > 0) {
          fleet_message_granted = true;
          return WaitForThrottle(d.start_in_nanos);
        }
        return ContinueReady();
      }
      QuitReady();
      ConnectResult r;
      r.kind = ConnectResult::Kind::kDeferred;
      r.defer_reason = d.next == ClusterStep::Next::kDefer ? d.defer_reason : DeferReason::kTempFailure;
      r.reason = d.reason.empty() ? std::string("451 4.4.3 cluster limits unavailable") : std::move(d.reason);
      return Finish(std::move(r));
    }, /*messages_only=*/true);
    --pending;
    MaybeDelete();
  }

  // A new instant on the fleet's throttles for the start whose instant passed while this
  // process was held up; the fleet slots stay held.
  void RetimeFleetStart() {
    Enter(Phase::kClusterAcquire);
    pending += 2;  // as in TakeFleetSlot
    cluster.AskThrottles(ThrottleBudget(), [this](FleetClient::Result res) {
      --pending;
      ClusterStep::Decision d = cluster.Judge(std::move(res), MayWait(), domain);
      if (phase == Phase::kDone) return MaybeDelete();
      if (cancelled) return CloseAttempt(), FinishStopped();
      if (d.next == ClusterStep::Next::kOpen) {
        NoteFleetMessageInstant(d.start_in_nanos);
        if (d.start_in_nanos > 0) {
          fleet_throttle_granted = true;
          return WaitForThrottle(d.start_in_nanos);
        }
        return Open();
      }
      CloseAttempt();  // both slots go back
      ConnectResult r;
      r.kind = ConnectResult::Kind::kDeferred;
      r.defer_reason = d.defer_reason;
      r.reason = std::move(d.reason);
      return Finish(std::move(r));
    });
    --pending;
    MaybeDelete();
  }

  // --- docs/DESIGN.md §1 rule 8: wait for a slot ------------------------------------------
  void ArmSlotTimer() {
    slot_timer = Timer::kArmed;
    slot_deadline = SteadyClock::now() + Millis(connector->options_.slot_wait_ms);
    slot_ts = ToTimespec(Millis(connector->options_.slot_wait_ms));
    io_uring_prep_timeout(Submit(&slot_timer_done), &slot_ts, 0, 0);
  }

  void EndSlotWait() { slot_waited += SteadyClock::now() - slot_wait_since; }

  void WaitForSlot() {
    Enter(Phase::kWaitingSlot);
    if (!slot_wait_start) slot_wait_start = SteadyClock::now();
    if (slot_timer == Timer::kIdle && !slot_woken_before) ArmSlotTimer();
    // A session woken earlier goes back to the head of the queue (it lost a race, not its
    // turn) — unless its last attempt met a busy receiver: then it used its turn, and going
    // to the back spreads the limit's next probe (docs/DESIGN.md §6) over the waiting sessions
    // instead of charging every refused probe to the same one.
    slot_wait_since = SteadyClock::now();
    connector->selector_->WaitForSlot(domain, &waiter,
                                      /*front=*/slot_woken_before && !busy_since_wait,
                                      AcquireOpts());
    busy_since_wait = false;
  }

  void OnWoken(Lease granted) {  // on the loop thread
    if (phase == Phase::kDone) return MaybeDelete();  // (`granted`, if any, goes back)
    EndSlotWait();
    slot_woken_before = true;
    if (!granted.valid()) return Attempt();
    Enter(Phase::kAcquiring);  // handed over: an Acquire that succeeded, no re-race
    Start(std::move(granted));
  }

  void OnSlotTimer(int, uint32_t) {
    --pending;
    slot_timer = Timer::kFired;
    if (phase == Phase::kWaitingSlot && connector->selector_->CancelWait(&waiter)) {
      EndSlotWait();
      return Attempt();  // one last try, then deferred
    }
    if (phase == Phase::kWaitingCluster) {
      cluster.Unwait();
      return Attempt(cluster.queued_binding());  // one last try (keeping its place), then deferred
    }
    MaybeDelete();  // (if already woken, the queued wake-up continues the session)
  }

  // --- Connector::Stop ---------------------------------------------------------------------
  void Cancel() {
    if (phase == Phase::kDone || cancelled) return;
    cancelled = true;
    switch (phase) {
      case Phase::kWaitingDns:
        std::erase(connector->waiting_dns_, this);
        return Attempt();  // which sees the stop
      case Phase::kWaitingSlot:
        if (connector->selector_->CancelWait(&waiter)) {
          EndSlotWait();
          return Attempt();
        }
        return;  // a wake-up is queued: OnWoken -> Attempt sees the stop
      case Phase::kWaitingCluster:
        cluster.Unwait();
        return Attempt();
      case Phase::kWaitingThrottle: {  // OnThrottleTimer (fired or removed) sees `cancelled`
        io_uring_sqe* sqe = loop()->Sqe();
        io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&throttle_timer_done), 0);
        Loop::SetCompletion(sqe, nullptr);
        return;
      }
      case Phase::kConnecting:
      case Phase::kGreeting:
        if (io_op != nullptr) {
          io_uring_sqe* sqe = loop()->Sqe();
          io_uring_prep_cancel(sqe, io_op, 0);
          Loop::SetCompletion(sqe, nullptr);
        }
        return;  // otherwise the socket op is on its way; OnSocket sees `cancelled`
      case Phase::kClusterAcquire:
        return;  // the verdict is on its way; OnClusterVerdict sees `cancelled`
      case Phase::kReusing:
        return;  // the RSET answer (bounded by banner_timeout) is on its way; OnReused sees it
      case Phase::kNew:
      case Phase::kAcquiring:
      case Phase::kDone:
        return;  // (synchronous, or over)
    }
  }

  void FinishStopped() {
    if (lease.valid() || fd >= 0) CloseAttempt();
    ConnectResult r;
    r.kind = ConnectResult::Kind::kDeferred;
    r.stopped = true;
    r.reason = StrCat("451 4.4.0 stopped before a connection was ready (", connector->stop_reason_,
                      ")");
    r.last_outcome = last_outcome;
    Finish(std::move(r));
  }

  void Finish(ConnectResult r) {
    Enter(Phase::kDone);  // never from a wait: each is left (for kAcquiring) first
    connector->Forget(this);
    if (slot_timer == Timer::kArmed) {
      io_uring_sqe* sqe = loop()->Sqe();
      io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&slot_timer_done), 0);
      Loop::SetCompletion(sqe, nullptr);
    }
    if (dns_timer == Timer::kArmed) {  // do not keep the session alive until it would expire
      io_uring_sqe* sqe = loop()->Sqe();
      io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&dns_timer_done), 0);
      Loop::SetCompletion(sqe, nullptr);
    }
    if (cluster.enabled()) cluster.Forget();  // leave every queue joined
    r.attempts = attempts;
    r.busy_replies = busy_replies;
    r.domain = domain;
    r.binding = binding;
    const SteadyClock::time_point now = SteadyClock::now();
    r.elapsed_nanos = Nanos(now - start).count();
    r.slot_wait_nanos = slot_waited.count();
    r.throttle_wait_nanos = throttle_waited.count();
    // A session going on after a stale pipelined reuse (Connector::Stale) was counted
    // connected already: a connection again is not another session.
    if (!replacing || r.kind != ConnectResult::Kind::kConnected) {
      connector->selector_->stats().CountSession(
          static_cast<size_t>(r.kind), slot_wait_start ? Nanos(now - *slot_wait_start).count() : -1);
    }
    --connector->in_flight_;
    Callback cb = std::move(done);
    cb(std::move(r));
    MaybeDelete();
  }

  void MaybeDelete() {
    if (phase == Phase::kDone && pending == 0) delete this;
  }

  // --- the session's state, all of it -----------------------------------------------------
  Connector* const connector;
  const std::string domain;
  const std::string binding;  // AcquireOptions::binding ("" = the default binding)
  Callback done;
  const SteadyClock::time_point start;
  size_t index = 0;  // in connector->sessions_ while not kDone

  // Where it is, and the facts orthogonal to that.
  Phase phase = Phase::kNew;
  bool cancelled = false;            // Connector::Stop reached it (in any phase)
  bool replacing = false;            // Connector::Stale: goes on for a session counted connected
  Timer dns_timer = Timer::kIdle;    // the dns_wait_ms budget
  Timer slot_timer = Timer::kIdle;   // the slot_wait_ms budget (slot waits and fleet waits)
  bool slot_woken_before = false;    // a slot wait ended by a wake-up (goes back to the front)
  bool busy_since_wait = false;      // an attempt met a busy receiver since the last slot wait
  int pending = 0;                   // CQEs and fleet verdicts still to come for it
  Completion* io_op = nullptr;       // the connect or greeting recv in the ring, if any

  // The current attempt and what the attempts so far left.
  Lease lease;
  ClusterLease cluster_lease;
  int fd = -1;
  int attempts = 0;
  int busy_replies = 0;  // attempts answered with a busy greeting
  std::optional<Outcome> last_outcome;
  std::string last_error;
  GreetingParser parser;
  SteadyClock::time_point attempt_start;  // this attempt's Acquire: its connect + greeting latency
  SteadyClock::time_point banner_deadline;
  Millis connect_timeout{0};  // this attempt's (config, or ConnectorOptions' override)
  Millis banner_timeout{0};
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  char buf[1024];
  ClusterStep cluster;  // the fleet-wide step (DESIGN §7)

  // Slot waits (statistics).
  std::optional<SteadyClock::time_point> slot_wait_start;  // the first slot wait
  SteadyClock::time_point slot_wait_since;                 // when the current wait began
  Nanos slot_waited{0};                                    // all waits so far
  SteadyClock::time_point slot_deadline;  // when the slot_wait_ms budget ends (timer armed)
  // Rate throttle waits (statistics).
  SteadyClock::time_point throttle_wait_since;
  Nanos throttle_waited{0};
  // A connection ready for a message whose message throttles' instant is ahead (a reused one,
  // DESIGN §13 rule 2, or a new one whose fleet message instant passed, §12 rule 10): its
  // result, handed out once the throttles allow (ContinueReady).
  std::optional<ConnectResult> ready;
  bool ready_local_done = false;   // its wait for Lease::start_at is over
  bool ready_fleet_asked = false;  // the fleet's message throttles were asked for it
  bool ready_waited = false;       // it waited on the throttle timer (the server may be gone)
                                   // (reset wherever `ready` is set)
  // The fleet's instant (SteadyNowNanos) for the session's message (0: none reserved), and
  // whether the throttle wait under way is for it (late past it: a new instant).
  int64_t fleet_message_at = 0;
  bool fleet_message_granted = false;
  // A cross-domain reuse (DESIGN §13 rule 3): the fleet's domain count is moving (the
  // RSET goes meanwhile); its verdict, and the RSET's answer if it came first.
  bool move_pending = false;
  bool move_refused = false;
  std::optional<bool> rset_alive;
  // The fleet refused to move a parked connection's domain count here: this session takes
  // no more parked connections (each would be refused the same way), a fresh one instead.
  bool no_reuse = false;
  // The throttle wait under way is the fleet's (DESIGN §12 rule 10): the fleet slot is held,
  // its timer leads to the connect.
  bool fleet_throttle_granted = false;
  int64_t throttle_delay = 0;  // the throttle wait under way, as armed

  // What the ring and the selector point into: stable while the session lives.
  Waiter waiter{this};
  __kernel_timespec connect_ts{}, recv_ts{}, dns_ts{}, slot_ts{}, throttle_ts{};
  MemberCompletion<Session, &Session::OnSocket> socket_done{this};
  MemberCompletion<Session, &Session::OnConnect> connect_done{this};
  MemberCompletion<Session, &Session::OnRecv> recv_done{this};
  MemberCompletion<Session, &Session::OnTimeout> timeout_done{this};
  MemberCompletion<Session, &Session::OnDnsTimer> dns_timer_done{this};
  MemberCompletion<Session, &Session::OnSlotTimer> slot_timer_done{this};
  MemberCompletion<Session, &Session::OnThrottleTimer> throttle_timer_done{this};
};


// A parked connection (DESIGN §13): owned by its connector (one loop thread); self-deleting
// like a Session, once closed or handed over and its operations have completed. A read is
// armed while it is parked (the server closing or sending 421 frees the slot, the host not
// blamed) and a timer for idle_timeout.
struct Connector::Parked : ParkedConnection {
  enum class State : uint8_t { kParked, kTaken, kQuitting, kClosed };
  Parked(Connector* c, int f, ClusterLease cl, int d, std::string g)
      : connector(c), fd(f), cluster_lease(std::move(cl)), deliveries(d), greeting(std::move(g)) {
    ++connector->live_;
    connector->parked_.push_back(this);
  }
  ~Parked() { --connector->live_; }

  // Any thread (the selector): queued to the loop.
  void Evict(Lease l) override { connector->QueueEvicted(this, std::move(l)); }

  Loop* loop() { return connector->loop_; }
  io_uring_sqe* Submit(Completion* c) {
    io_uring_sqe* sqe = loop()->Sqe();
    Loop::SetCompletion(sqe, c);
    ++pending;
    return sqe;
  }
  void Cancel(Completion* op) {
    io_uring_sqe* sqe = loop()->Sqe();
    io_uring_prep_cancel(sqe, op, 0);
    Loop::SetCompletion(sqe, nullptr);
  }
  void RemoveTimer(Completion* t) {
    io_uring_sqe* sqe = loop()->Sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(t), 0);
    Loop::SetCompletion(sqe, nullptr);
  }
  void Count(ReuseEvent e) { connector->selector_->stats().CountReuse(e); }

  void ArmRead() {
    read_armed = true;
    io_uring_prep_recv(Submit(&read_done), fd, buf, sizeof(buf), 0);
  }
  void Arm(uint32_t idle_s) {
    ArmRead();
    timer_armed = true;
    idle_ts = ToTimespec(std::chrono::seconds(idle_s));
    io_uring_prep_timeout(Submit(&idle_done), &idle_ts, 0, 0);
  }

  void OnRead(int res, uint32_t) {
    --pending;
    read_armed = false;
    switch (state) {
      case State::kParked:
        // Data (a 421), EOF or an error while idle: the server is done with it.
        if (res != -ECANCELED) {
          // Data (a 421: the server closes a moment later) is answered with QUIT and read on
          // to its EOF before the slot goes back (§1 rule 3); EOF or an error closes now.
          if (Lease l = connector->selector_->Unpark(this); l.valid()) {
            lease = std::move(l);
            if (res <= 0) {
              dead = true;
              Count(ReuseEvent::kServerClosed);
              CloseNow();
            } else {
              Quit(ReuseEvent::kServerClosed);
            }
          } else {
            dead = true;
          }
          // (else an eviction is queued: its Quit finds the socket dead and closes it)
        }
        break;
      case State::kTaken:
        if (res != -ECANCELED) dead = true;
        if (!timer_armed) Verify();
        break;
      case State::kQuitting:
        // The 221 is read on to the server's EOF (RFC 5321 4.1.1.10: it closes after its
        // reply): released before, the slot could carry a new connection to a receiver
        // that still counts this one. Bounded by the quit timer and kQuitReadCap bytes.
        if (res > 0 && quit_read + res < kQuitReadCap) {
          quit_read += res;
          ArmRead();
          break;
        }
        CloseNow();  // EOF, an error, too much, or the quit timer cancelled the read
        break;
      case State::kClosed:
        break;
    }
    MaybeDelete();
  }

  void OnIdle(int res, uint32_t) {
    --pending;
    timer_armed = false;
    if (state == State::kParked && res == -ETIME) {
      if (Lease l = connector->selector_->Unpark(this); l.valid()) {
        lease = std::move(l);
        Quit(ReuseEvent::kIdleTimeout);
      }
    } else if (state == State::kTaken && !read_armed) {
      Verify();
    }
    MaybeDelete();
  }

  // A session took it (Session::TakeUp): stop watching, then check it with RSET.
  void TakeUp(Session* s) {
    state = State::kTaken;
    taker = s;
    if (timer_armed) RemoveTimer(&idle_done);
    if (read_armed) Cancel(&read_done);
    if (!timer_armed && !read_armed) Verify(), MaybeDelete();
  }

  // Both watch operations are done: RSET (as Postfix checks a cached session) — or, parked
  // with rset_with_transaction, none: the embedder sends it with its transaction (rule 6).
  void Verify() {
    if (verifying) return;
    verifying = true;
    if (rset_with_transaction) return Answer(!dead);
    static constexpr char kRset[] = "RSET\r\n";
    if (dead || send(fd, kRset, sizeof(kRset) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(sizeof(kRset) - 1)) {
      return Answer(false);
    }
    have = 0;
    rset_deadline = SteadyClock::now() + rset_timeout;
    ReadRset();
  }
  void ReadRset() {
    loop()->Reserve(2);
    io_uring_sqe* sqe = Submit(&rset_done);
    io_uring_prep_recv(sqe, fd, buf + have, sizeof(buf) - have, 0);
    sqe->flags |= IOSQE_IO_LINK;
    rset_ts = ToTimespec(rset_deadline - SteadyClock::now());
    io_uring_prep_link_timeout(Submit(&rset_timeout_done), &rset_ts, 0);
  }
  void OnRset(int res, uint32_t) {
    --pending;
    if (draining) {
      // After a refused RSET: read on to the server's EOF (bounded by the quit wait).
      if (res > 0 && SteadyClock::now() < rset_deadline) {
        have = 0;
        return ReadRset();
      }
      return Answer(false), MaybeDelete();
    }
    if (res <= 0) return Answer(false), MaybeDelete();
    have += static_cast<size_t>(res);
    std::string_view got(buf, have);
    if (got.find('\n') == std::string_view::npos) {
      if (have < sizeof(buf) && SteadyClock::now() < rset_deadline) return ReadRset();
      return Answer(false), MaybeDelete();
    }
    if (!got.starts_with("250")) {
      // Stale, but the server may still count it (a 421 closes a moment after its reply,
      // another refusal not at all): QUIT, and the slot goes back once the server has
      // closed its side (DESIGN §1 rule 3), or after the quit wait.
      static constexpr char kQuit[] = "QUIT\r\n";
      (void)send(fd, kQuit, sizeof(kQuit) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
      draining = true;
      have = 0;
      rset_deadline = SteadyClock::now() + kQuitWait;
      return ReadRset();
    }
    Answer(true);
    MaybeDelete();
  }
  void OnTimeout(int, uint32_t) {
    --pending;
    MaybeDelete();
  }
  void Answer(bool alive) {
    Session* s = std::exchange(taker, nullptr);
    s->OnReused(this, alive);
  }

  // Closes with QUIT: the server counts a clean end. `why` is counted (unset: not a reuse
  // event, e.g. reuse off or the selector counted it). REQUIRES: `lease` holds the slot.
  void Quit(std::optional<ReuseEvent> why) {
    if (why) Count(*why);
    state = State::kQuitting;
    if (timer_armed) RemoveTimer(&idle_done);
    static constexpr char kQuit[] = "QUIT\r\n";
    if (dead ||
        send(fd, kQuit, sizeof(kQuit) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) !=
            static_cast<ssize_t>(sizeof(kQuit) - 1)) {
      if (read_armed) return Cancel(&read_done);  // its completion closes
      return CloseNow();
    }
    if (!read_armed) ArmRead();  // the 221 (or EOF) ends it
    quit_ts = ToTimespec(kQuitWait);
    io_uring_prep_timeout(Submit(&quit_done), &quit_ts, 0, 0);
    quit_timer_armed = true;
  }
  void OnQuitTimer(int, uint32_t) {
    --pending;
    quit_timer_armed = false;
    if (state == State::kQuitting && read_armed) Cancel(&read_done);
    MaybeDelete();
  }

  // Closes the socket, then gives the slot back (rule 3), and leaves the connector's list.
  void CloseNow() {
    if (fd >= 0) close(fd);
    fd = -1;
    lease.Release();
    cluster_lease.Release();
    Leave();
    if (after_close) std::exchange(after_close, nullptr)();
  }
  void Leave() {
    state = State::kClosed;
    if (timer_armed) RemoveTimer(&idle_done);
    if (quit_timer_armed) RemoveTimer(&quit_done);
    if (read_armed) Cancel(&read_done);
    std::erase(connector->parked_, this);
  }
  void MaybeDelete() {
    if (state == State::kClosed && pending == 0) delete this;
  }

  static constexpr Nanos kQuitWait = Millis(1000);
  static constexpr int kQuitReadCap = 4096;
  // Connector::Stale: the session goes on once the stale connection is closed.
  std::function<void()> after_close;
  int quit_read = 0;  // bytes read after QUIT
  Connector* const connector;
  int fd;
  ClusterLease cluster_lease;
  Lease lease;  // while closing (out of the lot); the lot holds it while parked
  const int deliveries;
  const std::string greeting;
  State state = State::kParked;
  int pending = 0;
  bool read_armed = false, timer_armed = false, quit_timer_armed = false;
  bool dead = false;       // the idle read saw data, EOF or an error
  bool verifying = false;  // RSET sent
  bool draining = false;   // the RSET was refused: reading on to the server's EOF
  bool rset_with_transaction = false;  // ParkOptions: the taker's embedder sends RSET
  Session* taker = nullptr;
  Millis rset_timeout{10000};
  SteadyClock::time_point rset_deadline;
  char buf[512];
  size_t have = 0;
  __kernel_timespec idle_ts{}, quit_ts{}, rset_ts{};
  MemberCompletion<Parked, &Parked::OnRead> read_done{this};
  MemberCompletion<Parked, &Parked::OnIdle> idle_done{this};
  MemberCompletion<Parked, &Parked::OnQuitTimer> quit_done{this};
  MemberCompletion<Parked, &Parked::OnRset> rset_done{this};
  MemberCompletion<Parked, &Parked::OnTimeout> rset_timeout_done{this};
};

void Connector::Session::TakeUp(ParkedConnection* pc) {
  Enter(Phase::kReusing);
  auto* p = static_cast<Parked*>(pc);
  const DomainSettings& ds = connector->CurrentConfig().ForDomain(domain);
  p->rset_timeout = connector->options_.banner_timeout_ms >= 0
                        ? Millis(connector->options_.banner_timeout_ms)
                        : Millis(int64_t{ds.banner_timeout_s} * 1000);
  if (!lease.moving_from().empty()) {
    if (!cluster.enabled()) {
      lease.SettleMove();
    } else {
      // The fleet's domain count moves too, in the next batch, while the RSET goes.
      move_pending = true;
      ++pending;
      const std::string from(lease.moving_from());
      // The new domain's limit: through a named binding the one the selector moved its
      // per-binding count under, else the domain's.
      const int32_t limit =
          lease.binding().empty() ? ds.max_outbound_connections : lease.binding_domain_limit();
      cluster.Move(p->cluster_lease, lease, from, domain, limit,
                   [this, p](bool moved) {
                     --pending;
                     OnMoved(p, moved);
                   });
    }
  }
  p->TakeUp(this);
}

void Connector::Session::OnMoved(Parked* p, bool moved) {
  move_pending = false;
  move_refused = !moved;
  if (moved) lease.SettleMove();
  if (!rset_alive) return;
  const bool alive = *std::exchange(rset_alive, std::nullopt);
  // Reused deletes `p` itself on the paths that QUIT it; on the others (stale, handed out)
  // it only leaves it, and OnRset's MaybeDelete has run already (ASan: a leak).
  const bool deletes = alive && (move_refused || cancelled);
  Reused(p, alive);
  if (!deletes) p->MaybeDelete();
}

void Connector::Session::OnReused(Parked* p, bool alive) {
  if (move_pending) {
    rset_alive = alive;  // OnMoved goes on
    return;
  }
  Reused(p, alive);
}

void Connector::Session::Reused(Parked* p, bool alive) {
  if (alive && move_refused) {
    // The new domain is full fleet-wide: not reused. Closed with QUIT (its slot and fleet
    // lease go back), and the session goes the normal way, with fresh connections only.
    move_refused = false;
    no_reuse = true;
    p->lease = std::move(lease);
    p->Quit(std::nullopt);
    p->MaybeDelete();
    if (cancelled) return FinishStopped();
    return Attempt();
  }
  if (!alive) {
    // Stale: closed (the server is gone: no QUIT to send), counted, and a fresh connection
    // instead — the caller never sees it.
    p->Count(ReuseEvent::kStale);
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
    lease.Release();
    p->cluster_lease.Release();
    p->Leave();
    if (cancelled) return FinishStopped();
    return Attempt();
  }
  if (cancelled) {
    p->lease = std::move(lease);
    p->Quit(ReuseEvent::kStopped);
    p->MaybeDelete();
    return FinishStopped();
  }
  ConnectResult r;
  r.kind = ConnectResult::Kind::kConnected;
  r.fd = std::exchange(p->fd, -1);
  r.lease = std::move(lease);
  r.cluster_lease = std::move(p->cluster_lease);
  r.greeting = p->greeting;
  r.reused = true;
  r.rset_pending = p->rset_with_transaction;
  r.deliveries = p->deliveries;
  r.last_outcome = Outcome::kConnected;
  p->Leave();
  // Its message throttles (DESIGN §12 rule 5) may have reserved an instant ahead: the
  // transaction waits for it, as a fresh connection's start does (rule 9); with
  // cluster_limits, then for the fleet's (rule 10).
  ready = std::move(r);
  ready_local_done = false;
  ready_fleet_asked = false;
  ready_waited = false;
  ContinueReady();
}

// Whether the server still has the ready connection open: nothing to read yet (no EOF, no
// 421 sent while the session waited). One non-blocking peek.
bool Connector::Session::ReadyStillOpen() const {
  char c;
  for (;;) {
    const ssize_t n = recv(ready->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

// The server closed (or refused: a 421) the ready connection while the session waited for
// its message instant. It is closed with QUIT read on to the server's EOF (within the quit
// wait) before its slot and fleet lease go back (§1 rule 3), the host not blamed (it
// answered; the wait was ours). A reused one is stale, as after a refused RSET (§13 rule 6):
// counted, and the session asks again, for a fresh connection (its wait budget bounds the
// asking). A new one, which waited after its greeting for the fleet's re-timed message
// instant (§12 rule 10), is deferred naming the rate: a fresh connection would greet as
// late, wait as long and be closed the same way.
void Connector::Session::ReplaceClosedReady() {
  const bool reused = ready->reused;
  if (reused) connector->selector_->stats().CountReuse(ReuseEvent::kStale);
  Enter(Phase::kReusing);  // Stop meanwhile: the close below goes on, then FinishStopped
  ConnectResult closing = std::move(*ready);
  ready.reset();
  ++pending;
  connector->QuitThen(closing, [this, reused] {
    --pending;
    if (cancelled || connector->stopped_) return FinishStopped();
    if (reused) return Attempt();
    ConnectResult r;
    r.kind = ConnectResult::Kind::kDeferred;
    r.defer_reason = DeferReason::kRateLimited;
    r.reason = "451 4.4.5 message rate limit: the server closed the connection while it "
               "waited for its message instant";
    r.last_outcome = Outcome::kConnected;
    Finish(std::move(r));
  });
}

Connector::Connector(Loop* loop, Selector* selector, ConnectorOptions options)
    : loop_(loop), selector_(selector), options_(options) {
  if (options_.max_attempts < 1) options_.max_attempts = 1;
  if (options_.slot_wait_ms > 0 || options_.reuse) {
    auto wake = Notifier::Create(loop_, [this] { RunWoken(); });
    if (wake.ok()) {
      wake_ = *std::move(wake);
    } else {
      options_.slot_wait_ms = 0;  // cannot be woken: fall back to deferring at once
      options_.reuse = false;     // (an eviction could not reach the loop)
    }
  }
  if (options_.reuse && options_.cluster != nullptr) {
    options_.cluster->OnTakeBack([this](std::string_view key) { TakeBack(key); });
  }
}

Connector::~Connector() {
  if (options_.reuse && options_.cluster != nullptr) options_.cluster->OnTakeBack(nullptr);
  CloseParked();
  // Finished sessions may still await the completions of cancelled timeouts; let them come
  // in (bounded) so no session is freed while the ring can still report to it.
  for (int i = 0; i < 500 && live_ > 0; ++i) loop_->RunOnce(10);
  // A waker on another thread may still be inside QueueWoken for a session that has since
  // finished: wait for it to leave before the notifier goes.
  { MutexLock lock(&wake_mu_); }
  wake_.reset();
}

void Connector::QueueWoken(Session* s, Lease lease) {
  // Notify under the lock: once this thread lets go, the loop thread may finish the
  // session and destroy the connector (ThreadSanitizer found the unlocked version).
  MutexLock lock(&wake_mu_);
  woken_.emplace_back(s, std::move(lease));
  wake_->Notify();
}

void Connector::RunWoken() {
  std::vector<std::pair<Session*, Lease>> woken;
  std::vector<std::pair<Parked*, Lease>> evicted;
  {
    MutexLock lock(&wake_mu_);
    woken.swap(woken_);
    evicted.swap(evicted_);
  }
  for (auto& [p, lease] : evicted) {
    p->lease = std::move(lease);
    p->Quit(std::nullopt);  // (the selector counted the eviction)
    p->MaybeDelete();
  }
  for (auto& [s, lease] : woken) s->OnWoken(std::move(lease));
}

void Connector::QueueEvicted(Parked* p, Lease lease) {
  MutexLock lock(&wake_mu_);
  evicted_.emplace_back(p, std::move(lease));
  wake_->Notify();
}

void Connector::Park(ConnectResult r, int delivered, ParkOptions park) {
  if (r.kind != ConnectResult::Kind::kConnected || r.fd < 0 || !r.lease.valid()) {
    if (r.fd >= 0) close(r.fd);
    return;
  }
  auto* p = new Parked(this, r.fd, std::move(r.cluster_lease), r.deliveries + delivered,
                       std::move(r.greeting));
  const Config& c = CurrentConfig();
  const Endpoint& ep = r.lease.endpoint();
  const std::string_view name = r.lease.host_name() == ep.address.ToString()
                                    ? std::string_view()
                                    : r.lease.host_name();
  const HostPolicy hp = c.PolicyFor(name, ep.address);
  // Host stanza, Domain stanza, Binding, Binding_Group, global (Config::ReuseFor).
  const ReuseSettings rs = c.ReuseFor(r.domain, r.lease.binding(), hp);
  const uint32_t idle = rs.idle_timeout_s;
  const int32_t max_deliveries = rs.max_deliveries_per_connection;
  p->lease = std::move(r.lease);
  p->rset_with_transaction = park.rset_with_transaction;
  if (stopped_) {
    p->Quit(ReuseEvent::kStopped);
  } else if (!options_.reuse || idle == 0) {
    p->Quit(std::nullopt);
  } else if (max_deliveries > 0 && p->deliveries >= max_deliveries) {
    p->Quit(ReuseEvent::kMaxDeliveries);
  } else {
    p->Arm(idle);  // watched before the lot exposes it
    if (!p->lease.Park(p, this)) {
      p->Quit(std::nullopt);  // waiters it cannot serve first
    } else if (options_.cluster != nullptr) {
      // Told when another worker's session queues on one of its fleet keys (rule 7).
      options_.cluster->Parked(p->cluster_lease);
    }
  }
  p->MaybeDelete();
}

void Connector::Stale(ConnectResult r, Callback done) {
  ++in_flight_;
  auto go_on = [this, domain = std::move(r.domain), binding = std::move(r.binding),
                done = std::move(done)]() mutable {
    auto* s = new Session(this, std::move(domain), std::move(binding), std::move(done));
    s->replacing = true;
    s->index = sessions_.size();
    sessions_.push_back(s);
    s->Attempt();
  };
  if (r.kind != ConnectResult::Kind::kConnected) return go_on();
  selector_->stats().CountReuse(ReuseEvent::kStale);
  if (r.fd < 0 || !r.lease.valid()) {
    if (r.fd >= 0) close(r.fd);
    r.fd = -1;
    r.lease.Release();
    r.cluster_lease.Release();
    return go_on();
  }
  // Closed with QUIT where the server still listens (a refused RSET without a close), its
  // answer — after the replies to the rest of the group — read on to the server's EOF: the
  // slot goes back, and the session goes on, once the server no longer counts it (DESIGN
  // §1 rule 3; the host not blamed).
  QuitThen(r, std::move(go_on));
}

void Connector::QuitThen(ConnectResult& r, std::function<void()> after) {
  auto* p = new Parked(this, std::exchange(r.fd, -1), std::move(r.cluster_lease), r.deliveries,
                       std::move(r.greeting));
  p->lease = std::move(r.lease);
  p->after_close = std::move(after);
  p->Quit(std::nullopt);
  p->MaybeDelete();
}

void Connector::TakeBack(std::string_view key) {
  FleetClient* fleet = options_.cluster;
  if (stopped_ || fleet == nullptr) return;
  // One at a time per key: a waiter's re-checks repeat the take-back while the QUIT of the
  // connection closed for it is on its way.
  for (Parked* p : parked_) {
    if (p->state == Parked::State::kQuitting && fleet->Holds(p->cluster_lease, key)) return;
  }
  Parked* victim = nullptr;
  for (Parked* p : parked_) {  // the oldest first
    if (p->state == Parked::State::kParked && fleet->Holds(p->cluster_lease, key)) {
      victim = p;
      break;
    }
  }
  if (victim == nullptr) return;
  Lease l = selector_->Unpark(victim);
  if (!l.valid()) return;  // a local eviction or a session got there first
  selector_->stats().CountReuse(ReuseEvent::kEvicted);
  victim->lease = std::move(l);
  victim->Quit(std::nullopt);  // its release wakes the fleet's waiter (§7 rule 2)
  victim->MaybeDelete();
  // More parked here: stay registered for the next waiter (the take-back emptied KEY:r).
  for (Parked* p : parked_) {
    if (p->state == Parked::State::kParked && fleet->Holds(p->cluster_lease, key)) {
      fleet->Parked(p->cluster_lease);
      break;
    }
  }
}

void Connector::CloseParked() {
  std::vector<Parked*> parked = parked_;
  for (Parked* p : parked) {
    if (p->state != Parked::State::kParked) continue;
    if (Lease l = selector_->Unpark(p); l.valid()) {
      p->lease = std::move(l);
      p->Quit(ReuseEvent::kStopped);
      p->MaybeDelete();
    }
  }
}

const Config& Connector::CurrentConfig() {
  // One atomic load per attempt; the selector's mutex only after a reload.
  if (const uint64_t v = selector_->config_version(); v != config_version_) {
    config_ = selector_->config();
    config_version_ = v;
  }
  return *config_;
}

void Connector::Connect(std::string_view domain, Callback done) {
  Connect(domain, AcquireOptions{}, std::move(done));
}

void Connector::Connect(std::string_view domain, const AcquireOptions& options, Callback done) {
  ++in_flight_;
  auto* s = new Session(this, std::string(domain), std::string(options.binding), std::move(done));
  s->index = sessions_.size();
  sessions_.push_back(s);
  s->Attempt();
}

void Connector::Forget(Session* s) {
  Session* last = sessions_.back();
  sessions_[s->index] = last;
  last->index = s->index;
  sessions_.pop_back();
}

void Connector::Stop(std::string why) {
  if (!stopped_) stop_reason_ = std::move(why);
  stopped_ = true;
  CloseParked();
  // Only pointers read from sessions_ (live ones) are touched: a session's end can change
  // the list (swap-removal, a callback), so passes repeat until none cancels anything.
  for (bool again = true; again;) {
    again = false;
    for (size_t i = 0; i < sessions_.size(); ++i) {
      Session* s = sessions_[i];
      if (s->cancelled) continue;
      s->Cancel();
      again = true;
    }
  }
}

void Connector::OnRoutesChanged() {
  std::vector<Session*> waiting;
  waiting.swap(waiting_dns_);
  for (Session* s : waiting) {
    // (A session stopped meanwhile — by a callback of one resumed before it — is no longer
    // waiting; its armed DNS timer keeps it alive until the next RunOnce.)
    if (s->phase == Phase::kWaitingDns) s->Attempt();  // may wait again; its timer still runs
  }
}

}  // namespace mxsched::io
