#include "testbed/load.h"

#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstring>
#include <thread>
#include <unordered_set>

#include "absl/container/flat_hash_map.h"
#include "mxsched/scheduler/bindings.h"
#include "mxsched/scheduler/host_registry.h"
#include "mxsched/base/mutex.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/resolver.h"
#include "mxsched/scheduler/routes.h"
#include "testbed/json.h"

namespace mxsched::testbed {

// The testbed drives the product's io layer (loop, connector, cluster client) from outside.
using namespace mxsched::io;  // NOLINT(google-build-using-namespace)

int LatencyHistogram::BucketOf(uint64_t value) {
  if (value < static_cast<uint64_t>(kLinear)) return static_cast<int>(value);
  // Keep the top kSubBits + 1 bits: the leading 1 picks the power of two, the rest the
  // sub-bucket within it.
  const int shift = std::bit_width(value) - (kSubBits + 1);
  return kLinear + (shift - 1) * kSub + static_cast<int>((value >> shift) - kSub);
}

uint64_t LatencyHistogram::BucketLow(int bucket) {
  if (bucket < kLinear) return static_cast<uint64_t>(bucket);
  const int shift = (bucket - kLinear) / kSub + 1;
  return static_cast<uint64_t>((bucket - kLinear) % kSub + kSub) << shift;
}

uint64_t LatencyHistogram::BucketWidth(int bucket) {
  return bucket < kLinear ? 1 : uint64_t{1} << ((bucket - kLinear) / kSub + 1);
}

void LatencyHistogram::Add(int64_t value) {
  value = std::max<int64_t>(value, 0);
  ++counts_[BucketOf(static_cast<uint64_t>(value))];
  min_ = count_ == 0 ? value : std::min(min_, value);
  max_ = std::max(max_, value);
  ++count_;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (int i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
}

int64_t LatencyHistogram::ValueAtRank(int64_t rank) const {
  if (count_ == 0) return 0;
  rank = std::clamp<int64_t>(rank, 0, count_ - 1);
  if (rank == count_ - 1) return max_;
  if (rank == 0) return min_;
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen > static_cast<uint64_t>(rank)) {
      // The midpoint halves the worst error; min and max are exact, so clamp to them.
      const int64_t mid = static_cast<int64_t>(BucketLow(i) + (BucketWidth(i) - 1) / 2);
      return std::clamp(mid, min_, max_);
    }
  }
  return max_;
}

int64_t LatencyHistogram::Percentile(int percent) const {
  return ValueAtRank(std::min(count_ - 1, count_ * percent / 100));
}

namespace {

// Sessions connected to one host right now (from the 2xx greeting to close) and the peak:
// what the receiving server counts, unlike the lease peak, which also counts connects
// still in progress and those that fail. Shared by the workers, since they share hosts.
struct HostCount {
  std::atomic<int64_t> sessions{0}, current{0}, peak{0};
  void Opened() {
    sessions.fetch_add(1, std::memory_order_relaxed);
    const int64_t now = current.fetch_add(1, std::memory_order_relaxed) + 1;
    int64_t p = peak.load(std::memory_order_relaxed);
    while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
  void Closed() { current.fetch_sub(1, std::memory_order_relaxed); }
};

struct Shared {
  const LoadOptions* options;
  // One lookup per connected session, under a mutex the workers rarely contend for; the
  // entries live until the report is built, so a Hold keeps a plain pointer.
  Mutex hosts_mu;
  absl::flat_hash_map<Endpoint, std::unique_ptr<HostCount>> hosts ABSL_GUARDED_BY(hosts_mu);
  HostCount* Host(const Endpoint& e) {
    MutexLock l(&hosts_mu);
    std::unique_ptr<HostCount>& c = hosts[e];
    if (c == nullptr) c = std::make_unique<HostCount>();
    return c.get();
  }
  // The same per binding (by name; "" the default binding).
  absl::flat_hash_map<std::string, std::unique_ptr<HostCount>> bindings ABSL_GUARDED_BY(hosts_mu);
  HostCount* BindingCount(std::string_view name) {
    MutexLock l(&hosts_mu);
    std::unique_ptr<HostCount>& c = bindings[std::string(name)];
    if (c == nullptr) c = std::make_unique<HostCount>();
    return c.get();
  }
  std::atomic<int64_t> next{0}, done{0}, connected{0}, deferred{0}, failed{0};
  int64_t deadline_nanos = 0;
  // Set by RunLoad's thread at --max-seconds or on options->stop: workers start nothing
  // more and cut the sessions they hold short (counted deferred, kind "stopped").
  std::atomic<bool> stop{false};
};

// The domain of session `i`: round-robin over the list, or over the generated names
// (LoadOptions::distinct_domains), built into *buf.
std::string_view SessionDomain(const LoadOptions& o, int64_t i, std::string* buf) {
  if (o.distinct_domains <= 0) return o.domains[i % o.domains.size()];
  const int64_t j = i % o.distinct_domains;
  *buf = StrCat("d", j, ".", o.domains[j % o.domains.size()]);
  return *buf;
}

constexpr char kStoppedReason[] =
    "the run was stopped (--max-seconds or a signal) before this session ended";

class Worker;

// The part of a session after the connection is ready: hold, then the dialogue (QUIT, or a
// whole message transaction like smtp-source's), one command at a time, each reply read in
// full (multi-line aware), the whole dialogue under one 30 s deadline; then close, release.
struct Hold {
  Hold(Worker* w, ConnectResult c, HostCount* h, HostCount* b)
      : worker(w), conn(std::move(c)), host(h), binding(b) {}
  Worker* worker;
  ConnectResult conn;
  HostCount* host;     // Closed() when the socket closes
  HostCount* binding;  // the same for the binding
  int pending = 0;
  size_t step = 0;
  size_t sent = 0;
  bool pipelining = false;  // this connection's EHLO advertised PIPELINING (and --pipelining)
  std::string reply;
  __kernel_timespec hold_ts{}, reply_ts{};
  char buf[512];

  void Start();
  void OnHold(int, uint32_t);
  void Send();
  void OnSent(int res, uint32_t);
  void Recv();
  void OnReply(int res, uint32_t);
  void OnTimer(int, uint32_t);
  // MAIL, RCPT and DATA in one write (pipelining, at step 1), else the step's command.
  bool Grouped() const { return pipelining && step == 1; }
  const std::string& Out() const;
  // Cuts the hold short (the run is stopping): the hold timer is cancelled and QUIT is sent
  // at once, so the server sees the session end before the slot is released (a shutdown
  // would let a waiter connect while the server still counts the old connection). End()
  // counts it "stopped". A session already in its dialogue finishes it.
  void Stop();
  // `why` empty: the dialogue ran to its end (connected); else it failed after the greeting.
  // `stale`: a reused connection's pipelined RSET was refused, or it closed before the reply
  // (Connector::Stale gets the session a fresh connection; nothing is counted here).
  void End(std::string why = {}, bool stale = false);
  // The command whose reply is awaited, for messages: "EHLO", "QUIT", "the message body".
  std::string DialogueStep() const;

  MemberCompletion<Hold, &Hold::OnHold> hold_done{this};
  MemberCompletion<Hold, &Hold::OnSent> sent_done{this};
  MemberCompletion<Hold, &Hold::OnReply> reply_done{this};
  MemberCompletion<Hold, &Hold::OnTimer> timer_done{this};
  bool ended = false;
  bool timer_fired = false;
  bool stopped = false;
  bool holding = false;  // the hold timer is outstanding
  bool quit_answered = false;  // the 221 is in: what is left is the server's EOF
};

class Worker {
 public:
  Worker(Shared* shared, Selector* selector, int concurrency)
      : shared_(shared), selector_(selector), concurrency_(concurrency) {}

  absl::Status Run() {
    const LoadOptions& opts = *shared_->options;
    if (opts.message_bytes >= 0) {  // the transaction smtp-source runs
      dialogue_ = {"EHLO load.mxsched.test\r\n", "MAIL FROM:<load@mxsched.test>\r\n",
                   "RCPT TO:<rcpt@example.test>\r\n", "DATA\r\n"};
      std::string body =
          "From: <load@mxsched.test>\r\nTo: <rcpt@example.test>\r\n"
          "Subject: mxsched load\r\n\r\n";
      while (body.size() < static_cast<size_t>(opts.message_bytes)) {
        body += "La-la-la mxsched load test body line.\r\n";
      }
      dialogue_.push_back(body + ".\r\n");
      pipelined_group_ = dialogue_[1] + dialogue_[2] + dialogue_[3];
      rset_group_ = "RSET\r\n" + pipelined_group_;
    }
    dialogue_.push_back("QUIT\r\n");
    auto loop = Loop::Create(4096);
    if (!loop.ok()) return loop.status();
    loop_ = *std::move(loop);
    ConnectorOptions copts = shared_->options->connector;
    if (shared_->options->cluster != nullptr) {
      cluster_ = std::make_unique<ClusterClient>(loop_.get(), shared_->options->cluster);
      copts.cluster = cluster_.get();
    }
    connector_ = std::make_unique<Connector>(loop_.get(), selector_, copts);
    const LoadOptions& o = *shared_->options;
    if (o.dns_cache != nullptr) {
      auto client = DnsClient::Create(loop_.get(), o.dns_cache, o.dns_server);
      if (!client.ok()) return client.status();
      dns_ = *std::move(client);
      dns_->SetOnChange([this] { connector_->OnRoutesChanged(); });
    }
    StartMore();
    // A bounded wait, so a stop (--max-seconds, a signal) is seen within 50 ms even when
    // nothing completes — sessions held for --hold-ms are then cut short, and those still
    // connecting are cancelled (Connector::Stop: no failover attempt starts after it).
    // While sessions are left to start (a batch ended, see StartLoop), the ring is only
    // polled, then more start.
    while (in_flight_ > 0 || connector_->in_flight() > 0 || more_to_start_) {
      loop_->RunOnce(more_to_start_ ? 0 : 50);
      if (!stopping_ && shared_->stop.load(std::memory_order_relaxed)) {
        stopping_ = true;
        more_to_start_ = false;
        connector_->Stop("the run was stopped: --max-seconds or a signal");
        for (Hold* h : std::vector<Hold*>(holds_.begin(), holds_.end())) h->Stop();
      }
      if (more_to_start_) StartMore();
    }
    // Parked connections (--reuse) end with QUIT, answered or not within 1 s each, so the
    // server sees every connection closed by the client (docs/DESIGN.md §13 rule 6).
    if (connector_->parked() > 0) {
      if (!connector_->stopped()) connector_->Stop("the load run is over");
      for (int i = 0; i < 100 && connector_->parked() > 0; ++i) loop_->RunOnce(50);
    }
    // Let cancelled timers' completions drain so no session object outlives the loop.
    for (int i = 0; i < 10 && loop_->RunOnce(1) > 0; ++i) {
    }
    connector_.reset();
    cluster_.reset();  // after the connector: its sessions' leases are back by now
    dns_.reset();
    return absl::OkStatus();
  }

  void StartMore() {
    // A session can end inside Connect() (an immediate deferral calls back synchronously),
    // which calls StartMore again: without this guard, thousands of instant deferrals nest
    // that deep (AddressSanitizer caught the stack overflow). The outer loop carries on.
    if (starting_) return;
    starting_ = true;
    StartLoop();
    starting_ = false;
  }

  // At most `concurrency_` sessions start per call, then the loop gets the thread back
  // (more_to_start_): sessions deferred at once (a failed or full host) used to end inside
  // Connect and let the next one start, ~3 M a second without the ring serviced, so the
  // connects in flight — a recovering host's probe among them — waited seconds (issue 20).
  void StartLoop() {
    const LoadOptions& o = *shared_->options;
    more_to_start_ = false;
    for (int started = 0; in_flight_ < concurrency_; ++started) {
      if (SteadyNowNanos() >= shared_->deadline_nanos) return;
      if (shared_->stop.load(std::memory_order_relaxed)) return;
      if (started >= concurrency_) {
        more_to_start_ = true;
        return;
      }
      const int64_t i = shared_->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= o.sessions) return;
      ++in_flight_;
      connector_->Connect(SessionDomain(o, i, &domain_buf_), {.binding = o.binding},
                          [this](ConnectResult r) { OnConnected(std::move(r)); });
    }
  }

  void OnConnected(ConnectResult r) {
    busy_replies_ += r.busy_replies;
    if (r.stopped) {  // cut short by the stop while connecting: deferred, "stopped"
      CountStopped();
      return SessionEnded();
    }
    if (r.slot_wait_nanos > 0) slot_waits_.Add(r.slot_wait_nanos);
    if (r.throttle_wait_nanos > 0) throttle_waits_.Add(r.throttle_wait_nanos);
    if (r.kind == ConnectResult::Kind::kConnected) {
      // A reused connection had no connect and no greeting: its latency is not a connect's.
      if (r.reused) {
        ++reused_;
      } else {
        ++fresh_;
        latencies_.Add(r.elapsed_nanos - r.slot_wait_nanos - r.throttle_wait_nanos);
      }
      HostCount* host = shared_->Host(r.lease.endpoint());
      host->Opened();
      HostCount* binding = shared_->BindingCount(r.lease.binding());
      binding->Opened();
      auto* h = new Hold(this, std::move(r), host, binding);
      holds_.insert(h);
      h->Start();
      if (stopping_) h->Stop();  // (a no-op without --hold-ms: QUIT is already on its way)
      return;
    }
    std::string kind;
    if (r.kind == ConnectResult::Kind::kDeferred) {
      kind = r.defer_reason ? std::string(DeferReasonName(*r.defer_reason))
                            : std::string(r.last_outcome ? OutcomeName(*r.last_outcome) : "?");
      ++deferrals_[kind];
      shared_->deferred.fetch_add(1, std::memory_order_relaxed);
    } else {
      kind = r.defer_reason ? std::string(DeferReasonName(*r.defer_reason))
                            : std::string(r.last_outcome ? OutcomeName(*r.last_outcome) : "?");
      ++failures_[kind];
      shared_->failed.fetch_add(1, std::memory_order_relaxed);
    }
    examples_.try_emplace(kind, r.reason);
    SessionEnded();
  }

  // A session cut short by a stop, or whose dialogue failed after the greeting.
  void CountStopped() {
    ++deferrals_["stopped"];
    examples_.try_emplace("stopped", kStoppedReason);
    shared_->deferred.fetch_add(1, std::memory_order_relaxed);
  }
  void CountDialogueFailed(const std::string& why) {
    ++failures_["dialogue"];
    examples_.try_emplace("dialogue", why);
    shared_->failed.fetch_add(1, std::memory_order_relaxed);
  }
  void HoldEnded(Hold* h) { holds_.erase(h); }
  // A reused connection found stale by its pipelined RSET (Hold::End): it carried no
  // message, so it is not a reuse; the connector gets the session a fresh connection.
  void GoStale(ConnectResult r) {
    --reused_;
    connector_->Stale(std::move(r), [this](ConnectResult c) { OnConnected(std::move(c)); });
  }

  void SessionEnded() {
    shared_->done.fetch_add(1, std::memory_order_relaxed);
    --in_flight_;
    StartMore();
  }

  Loop* loop() { return loop_.get(); }
  Connector* connector() { return connector_.get(); }
  // --reuse with --message: a finished transaction parks its connection instead of QUIT.
  bool parking() const {
    return shared_->options->message_bytes >= 0 && shared_->options->connector.reuse;
  }
  const LoadOptions& options() const { return *shared_->options; }
  const std::vector<std::string>& dialogue() const { return dialogue_; }
  const std::string& pipelined_group() const { return pipelined_group_; }
  // RSET + MAIL + RCPT + DATA: a reused connection whose RSET the connector left to the
  // transaction (ConnectResult::rset_pending, DESIGN §13 rule 6).
  const std::string& rset_group() const { return rset_group_; }
  // Whether a connection's EHLO advertised PIPELINING, by fd: a reused connection (no EHLO
  // this session) keeps what its first session learnt; a fresh one on the same fd replaces it.
  absl::flat_hash_map<int, bool>& ehlo_pipelining() { return ehlo_pipelining_; }
  Shared* shared() { return shared_; }

  // Histograms, not samples: a run's memory must not grow with its length.
  LatencyHistogram latencies_;  // greeted sessions: connect time less slot wait
  int64_t busy_replies_ = 0;
  LatencyHistogram slot_waits_;  // every session that waited for a slot
  LatencyHistogram throttle_waits_;  // every session that waited for a rate throttle
  int64_t fresh_ = 0, reused_ = 0;  // connected results: opened, taken up from the lot
  std::map<std::string, int64_t> deferrals_, failures_;
  std::map<std::string, std::string> examples_;

 private:
  std::unordered_set<Hold*> holds_;  // sessions past Connect, not yet ended
  bool stopping_ = false;
  bool more_to_start_ = false;  // StartLoop ended its batch with room left
  Shared* shared_;
  Selector* selector_;
  int concurrency_;
  int in_flight_ = 0;
  bool starting_ = false;
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<ClusterClient> cluster_;
  std::unique_ptr<Connector> connector_;
  std::unique_ptr<DnsClient> dns_;
  std::vector<std::string> dialogue_;
  std::string pipelined_group_;  // MAIL + RCPT + DATA
  std::string rset_group_;       // RSET + MAIL + RCPT + DATA
  absl::flat_hash_map<int, bool> ehlo_pipelining_;
  std::string domain_buf_;  // a generated session domain (Connect copies it)
};

void Hold::Start() {
  // One deadline for the hold and the whole dialogue after it (not a linked timeout per
  // read: half the SQEs); the hold counts in, or a hold over 30 s would outlive it.
  const int ms = worker->options().hold_ms;
  reply_ts = {30 + ms / 1000, (ms % 1000) * 1'000'000LL};
  io_uring_sqe* dl = worker->loop()->Sqe();
  io_uring_prep_timeout(dl, &reply_ts, 0, 0);
  Loop::SetCompletion(dl, &timer_done);
  ++pending;
  if (conn.reused) {
    step = 1;  // EHLO was said on this connection before (RSET since)
    auto it = worker->ehlo_pipelining().find(conn.fd);
    pipelining = it != worker->ehlo_pipelining().end() && it->second;
  }
  if (ms <= 0) return Send();
  hold_ts = {ms / 1000, (ms % 1000) * 1'000'000LL};
  io_uring_sqe* sqe = worker->loop()->Sqe();
  io_uring_prep_timeout(sqe, &hold_ts, 0, 0);
  Loop::SetCompletion(sqe, &hold_done);
  ++pending;
  holding = true;
}

void Hold::OnHold(int, uint32_t) {
  --pending;
  holding = false;
  if (stopped) {
    step = worker->dialogue().size() - 1;  // straight to QUIT (no RSET: nothing follows)
    conn.rset_pending = false;
  }
  Send();
}

const std::string& Hold::Out() const {
  if (!Grouped()) return worker->dialogue()[step];
  return conn.rset_pending ? worker->rset_group() : worker->pipelined_group();
}

std::string Hold::DialogueStep() const {
  const std::string& cmd = worker->dialogue()[std::min(step, worker->dialogue().size() - 1)];
  if (worker->dialogue().size() > 1 && step == 4)
    return "the message body";  // EHLO, MAIL, RCPT, DATA, body, QUIT
  return cmd.substr(0, cmd.find_first_of(" \r"));
}

void Hold::Stop() {
  if (stopped || ended || !holding) return;
  stopped = true;
  // Its completion (-ECANCELED) sends QUIT.
  io_uring_sqe* sqe = worker->loop()->Sqe();
  io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&hold_done), 0);
  Loop::SetCompletion(sqe, nullptr);
}

void Hold::Send() {
  const std::string& cmd = Out();
  io_uring_sqe* sqe = worker->loop()->Sqe();
  io_uring_prep_send(sqe, conn.fd, cmd.data() + sent, cmd.size() - sent, MSG_NOSIGNAL);
  Loop::SetCompletion(sqe, &sent_done);
  ++pending;
}

void Hold::OnSent(int res, uint32_t) {
  --pending;
  if (res < 0) return End(StrCat("dialogue: sending ", DialogueStep(), ": ", std::strerror(-res)));
  sent += res;
  if (sent < Out().size()) return Send();
  reply.clear();
  Recv();
}

void Hold::Recv() {
  io_uring_sqe* sqe = worker->loop()->Sqe();
  io_uring_prep_recv(sqe, conn.fd, buf, sizeof(buf), 0);
  Loop::SetCompletion(sqe, &reply_done);
  ++pending;
}

void Hold::OnReply(int res, uint32_t) {
  --pending;
  if (quit_answered) {
    // After the 221, read on to the server's EOF (or the deadline's shutdown): released
    // before it, the slot could carry a new connection to a server still counting this one.
    if (res > 0 && (reply.size() + res) <= 65536) {
      reply.append(buf, res);
      return Recv();
    }
    return End();
  }
  // A close or an error before the RSET reply of a reused connection: it was stale (the
  // message was not sent; the connector gets the session a fresh connection).
  if (res <= 0 && conn.rset_pending && !timer_fired) return End({}, /*stale=*/true);
  if (res < 0) return End(StrCat("dialogue: reply to ", DialogueStep(), ": ", std::strerror(-res)));
  if (res == 0)
    return End(StrCat("dialogue: connection closed before the reply to ", DialogueStep()));
  reply.append(buf, res);
  if (reply.size() > 65536) {  // a server that never ends its reply
    return End(StrCat("dialogue: reply to ", DialogueStep(), " over 65536 bytes"));
  }
  if (conn.rset_pending) {
    // The RSET reply comes first (multi-line aware): a 2xx lets the transaction go on.
    size_t at = 0;
    for (size_t nl; (nl = reply.find('\n', at)) != std::string::npos;) {
      const bool last = nl - at < 4 || reply[at + 3] != '-';
      at = nl + 1;
      if (!last) continue;
      if (reply[0] != '2') return End({}, /*stale=*/true);
      conn.rset_pending = false;
      reply.erase(0, at);
      break;
    }
    if (conn.rset_pending || reply.empty()) return Recv();
  }
  // Complete when the last line is "NNN text\r\n" (not "NNN-"); a pipelined group when
  // its three replies' last lines are in.
  if (reply.size() < 2 || reply.back() != '\n') return Recv();
  if (Grouped()) {
    int finals = 0;
    for (size_t at = 0, nl; (nl = reply.find('\n', at)) != std::string::npos; at = nl + 1) {
      if (nl - at < 4 || reply[at + 3] != '-') ++finals;
    }
    if (finals < 3) return Recv();
    step = 3;  // the group was MAIL, RCPT, DATA: the body is next
  } else {
    const size_t line = reply.rfind('\n', reply.size() - 2);
    const size_t start = line == std::string::npos ? 0 : line + 1;
    if (reply.size() - start > 3 && reply[start + 3] == '-') return Recv();
  }
  if (step == 0 && worker->options().pipelining && worker->dialogue().size() > 2) {
    // The EHLO reply: does the server take pipelined commands (RFC 2920)?
    pipelining = ToLower(reply).find("pipelining") != std::string::npos;
    worker->ehlo_pipelining()[conn.fd] = pipelining;
  }
  // Parking: the transaction ends before QUIT (the last step), which the connector sends
  // when it closes the connection. A stopped hold sends QUIT and ends after it.
  const size_t end = worker->dialogue().size() - (worker->parking() && !stopped ? 1 : 0);
  if (++step >= end) {
    if (end < worker->dialogue().size()) return End();  // parking: no QUIT was sent
    quit_answered = true;
    reply.clear();
    return Recv();
  }
  sent = 0;
  Send();
}

void Hold::OnTimer(int, uint32_t) {
  --pending;
  timer_fired = true;
  if (!ended) {
    // The deadline passed: shut the socket down so the outstanding read completes.
    shutdown(conn.fd, SHUT_RDWR);
    return;
  }
  End();
}

void Hold::End(std::string why, bool stale) {
  if (!ended) {
    ended = true;
    if (timer_fired && !why.empty()) {
      why = StrCat("dialogue: no complete reply to ", DialogueStep(), " within 30 s");
    }
    if (!timer_fired) {  // cancel the deadline; its completion frees this object
      io_uring_sqe* sqe = worker->loop()->Sqe();
      io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&timer_done), 0);
      Loop::SetCompletion(sqe, nullptr);
    }
    host->Closed();
    binding->Closed();
    if (stale) {
      // Not ended: the session goes on over a fresh connection (OnConnected again).
      worker->HoldEnded(this);
      worker->GoStale(std::move(conn));
      if (pending == 0) delete this;
      return;
    }
    if (worker->parking() && !stopped && why.empty()) {
      // Before SessionEnded: the next session may take it up (or a waiter gets it now). With
      // pipelining the next transaction carries the RSET (DESIGN §13 rule 6).
      worker->connector()->Park(std::move(conn), 1, {.rset_with_transaction = pipelining});
    } else {
      close(conn.fd);
      conn.fd = -1;
      conn.lease.Release();  // after close: the slot covers the socket's whole life
      conn.cluster_lease.Release();
    }
    // Connected means the whole dialogue ran. A session cut short by a stop is deferred; one
    // whose dialogue failed after the greeting is failed, kind "dialogue" — not connected.
    if (stopped) {
      worker->CountStopped();
    } else if (!why.empty()) {
      worker->CountDialogueFailed(why);
    } else {
      worker->shared()->connected.fetch_add(1, std::memory_order_relaxed);
    }
    worker->HoldEnded(this);
    worker->SessionEnded();
  }
  if (pending == 0) delete this;
}

}  // namespace

absl::Status ValidateDistinctDomains(const LoadOptions& o) {
  if (o.distinct_domains == 0) return absl::OkStatus();
  if (o.distinct_domains < 0 || o.distinct_domains > LoadOptions::kMaxDistinctDomains) {
    return absl::InvalidArgumentError(StrCat("--distinct-domains ", o.distinct_domains,
                                             ": want 1..", LoadOptions::kMaxDistinctDomains));
  }
  // The longest prefix ("d<N-1>.") on each base: if that name is valid, all of them are.
  const std::string prefix = StrCat("d", o.distinct_domains - 1, ".");
  for (const std::string& base : o.domains) {
    const std::string name = prefix + base;
    absl::StatusOr<std::string> normal = NormalizeHostname(name);
    if (!normal.ok()) {
      return absl::InvalidArgumentError(
          StrCat("--distinct-domains ", o.distinct_domains, ": generated name \"",
                 Escape(std::string_view(name).substr(0, 300)),
                 "\" is not a valid domain: ", ToStd(normal.status().message())));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadReport> RunLoad(Selector& selector, const LoadOptions& options) {
  if (options.domains.empty()) return absl::InvalidArgumentError("load: no domains");
  if (absl::Status s = ValidateDistinctDomains(options); !s.ok()) {
    return absl::InvalidArgumentError(StrCat("load: ", s.message()));
  }
  if (options.sessions < 0 || options.concurrency < 1 || options.threads < 1) {
    return absl::InvalidArgumentError("load: sessions >= 0, concurrency >= 1, threads >= 1");
  }
  if (!options.dns_server.empty() && options.dns_cache == nullptr) {
    return absl::InvalidArgumentError("load: a DNS server needs the Selector's DnsCache");
  }
  selector.registry().ForEach([](const HostState& h) { const_cast<HostState&>(h).ResetPeak(); });
  Shared shared;
  shared.options = &options;
  // Domain figures (LoadReport::Domains): counters as deltas over the run; the resident
  // count sampled on the 250 ms timeline below (a few shard-mutex reads, off the workers).
  const SelectorStats::Totals stats_before = selector.stats().Collect();
  int64_t peak_resident = static_cast<int64_t>(selector.domain_count());
  const int64_t start = SteadyNowNanos();
  shared.deadline_nanos = start + int64_t{options.max_seconds} * 1'000'000'000;
  const int threads = std::min<int>(options.threads, options.concurrency);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) {
    int c = options.concurrency / threads + (t < options.concurrency % threads ? 1 : 0);
    workers.push_back(std::make_unique<Worker>(&shared, &selector, c));
  }
  std::vector<absl::Status> status(threads);
  std::vector<std::thread> pool;
  std::atomic<int> running{threads};
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      status[t] = workers[t]->Run();
      running.fetch_sub(1);
    });
  }
  int64_t last = 0;
  std::vector<int64_t> timeline;
  int64_t next_sample = start + 250'000'000, last_connected = 0;
  std::string stopped_by;
  while (running.load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (stopped_by.empty()) {
      if (options.stop != nullptr && *options.stop) stopped_by = "signal";
      if (SteadyNowNanos() >= shared.deadline_nanos) stopped_by = "max_seconds";
      if (!stopped_by.empty()) shared.stop.store(true);
    }
    if (SteadyNowNanos() >= next_sample) {
      next_sample += 250'000'000;
      const int64_t c = shared.connected.load();
      timeline.push_back(c - last_connected);
      last_connected = c;
      peak_resident = std::max(peak_resident, static_cast<int64_t>(selector.domain_count()));
    }
    if (options.progress && SteadyNowNanos() - last > int64_t{options.progress_interval_ms} * 1'000'000) {
      last = SteadyNowNanos();
      options.progress(shared.done.load(), shared.connected.load(), shared.deferred.load(),
                       shared.failed.load());
    }
  }
  for (auto& th : pool) th.join();
  for (const auto& s : status) {
    if (!s.ok()) return s;
  }
  LoadReport report;
  report.seconds = (SteadyNowNanos() - start) / 1e9;
  timeline.push_back(shared.connected.load() - last_connected);
  report.connected_timeline = std::move(timeline);
  rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) report.max_rss_kb = ru.ru_maxrss;
  report.connected = shared.connected.load();
  report.deferred = shared.deferred.load();
  report.failed = shared.failed.load();
  report.stopped_by = stopped_by;
  // Sessions never started because the run stopped (the demo asks for "as many as fit").
  report.not_started =
      std::max<int64_t>(0, options.sessions - std::min(shared.next.load(), options.sessions));
  report.sessions = report.connected + report.deferred + report.failed;
  {
    const int64_t started = std::min(shared.next.load(), options.sessions);
    LoadReport::Domains& d = report.domains;
    if (options.distinct_domains > 0) {
      d.distinct = std::min(started, options.distinct_domains);
    } else {
      std::unordered_set<std::string> names;  // as the Selector stores them
      const int64_t n = std::min<int64_t>(started, static_cast<int64_t>(options.domains.size()));
      for (int64_t k = 0; k < n; ++k) {
        if (auto name = NormalizeHostname(options.domains[k]); name.ok()) names.insert(*name);
      }
      d.distinct = static_cast<int64_t>(names.size());
    }
    const SelectorStats::Totals after = selector.stats().Collect();
    d.created = static_cast<int64_t>(after.domains_created - stats_before.domains_created);
    d.evicted = static_cast<int64_t>(after.domains_evicted - stats_before.domains_evicted);
    d.resident = static_cast<int64_t>(selector.domain_count());
    d.peak_resident = std::max(peak_resident, d.resident);
    d.memory_bytes = static_cast<int64_t>(selector.DomainMemoryBytes());
  }
  report.sessions_per_second = report.sessions / std::max(report.seconds, 1e-9);
  report.connected_per_second = report.connected / std::max(report.seconds, 1e-9);
  LatencyHistogram lat, waits, throttle_waits;
  int64_t fresh = 0, reused = 0;
  for (auto& w : workers) {
    lat.Merge(w->latencies_);
    waits.Merge(w->slot_waits_);
    throttle_waits.Merge(w->throttle_waits_);
    report.busy_replies += w->busy_replies_;
    fresh += w->fresh_;
    reused += w->reused_;
    for (auto& [k, v] : w->deferrals_) report.deferrals[k] += v;
    for (auto& [k, v] : w->failures_) report.failures[k] += v;
    for (auto& [k, v] : w->examples_) report.examples.try_emplace(k, v);
  }
  {
    MutexLock l(&shared.hosts_mu);
    for (const auto& [e, c] : shared.hosts) {
      LoadReport::Host& rh = report.hosts[e.ToString()];
      rh.sessions = c->sessions.load();
      rh.peak = c->peak.load();
    }
    for (const auto& [name, c] : shared.bindings) {
      LoadReport::Binding& rb = report.bindings[name];
      rb.sessions = c->sessions.load();
      rb.peak = c->peak.load();
    }
  }
  {
    // The selector's side: every binding the configuration names (even unused ones: a
    // binding kept off every host shows up here with no sessions).
    const std::shared_ptr<const Config> config = selector.config();
    const int64_t at = selector.clock().NowNanos();
    auto joined = [](const std::vector<IpAddress>& addresses) {
      std::vector<std::string> out;
      for (const IpAddress& a : addresses) out.push_back(a.ToString());
      return Join(out, " ");
    };
    for (const Binding* b : selector.bindings().All()) {
      const BindingSpec* spec = config->FindBinding(b->name());
      if (spec == nullptr) continue;
      LoadReport::Binding& rb = report.bindings[b->name()];
      rb.source = joined(spec->bind_address);
      b->ForEachHost([&](uint32_t, const BindingHost& bh) {
        rb.failures += bh.failures.load();
        rb.hosts_failed += bh.Failed(at) ? 1 : 0;
      });
    }
    // The default binding's source: the global bind_address (DESIGN §4), if any.
    if (auto it = report.bindings.find(""); it != report.bindings.end() && it->second.source.empty()) {
      it->second.source = joined(config->bind_address);
    }
  }
  const int64_t now = selector.clock().NowNanos();
  selector.registry().ForEach([&](const HostState& h) {
    // The peak was reset at the start: a lease peak above 0 means this run leased the host
    // (a host whose connects all failed is listed too, with 0 sessions).
    auto it = report.hosts.find(h.endpoint().ToString());
    if (it == report.hosts.end() && h.busy_replies() == 0 && h.peak() == 0) return;
    LoadReport::Host& rh = report.hosts[h.endpoint().ToString()];
    rh.lease_peak = h.peak();
    rh.limit = h.limit();
    rh.configured_limit = h.configured_limit();
    rh.busy_replies = h.busy_replies();
    rh.limit_moved = h.last_move().ToString(now);
  });
  report.greeted = lat.count();
  report.connect_p50_us = lat.Percentile(50) / 1000;
  report.connect_p99_us = lat.Percentile(99) / 1000;
  report.connect_max_us = lat.max() / 1000;
  report.waited = waits.count();
  report.wait_p50_us = waits.Percentile(50) / 1000;
  report.wait_p99_us = waits.Percentile(99) / 1000;
  report.wait_max_us = waits.max() / 1000;
  report.throttle_waited = throttle_waits.count();
  report.throttle_wait_p50_us = throttle_waits.Percentile(50) / 1000;
  report.throttle_wait_p99_us = throttle_waits.Percentile(99) / 1000;
  report.throttle_wait_max_us = throttle_waits.max() / 1000;
  if (options.message_bytes >= 0) {
    LoadReport::Reuse& r = report.reuse.emplace();
    r.enabled = options.connector.reuse;
    r.messages = report.connected;
    r.connections = fresh;
    r.reused = reused;
    const SelectorStats::Totals after = selector.stats().Collect();
    for (size_t e = 0; e < kReuseEvents; ++e) {
      r.events[std::string(ReuseEventName(static_cast<ReuseEvent>(e)))] =
          static_cast<int64_t>(after.reuse[e] - stats_before.reuse[e]);
    }
  }
  if (options.cluster != nullptr) {
    const ClusterLimits::Stats& st = options.cluster->stats();
    LoadReport::Cluster c;
    c.leases = st.leases.load();
    c.local_leases = st.local_leases.load();
    c.waits = st.waits.load();
    c.wait_ms = st.wait_nanos.load() / 1'000'000;
    c.wakeups = st.wakeups.load();
    c.refreshes = st.refreshes.load();
    c.reregistered = st.reregistered.load();
    c.redis_errors = st.redis_errors.load();
    c.noscript = st.noscript.load();
    c.mode_switches = st.mode_switches.load();
    c.store_resets = st.store_resets.load();
    c.warmup_refusals = st.warmup_refusals.load();
    c.throttle_waits = st.throttle_waits.load();
    c.throttled = st.throttled.load();
    c.throttle_asks = st.throttle_asks.load();
    c.commands = st.commands.load();
    c.live_workers = options.cluster->live_workers();
    c.mode = options.cluster->degraded()
                 ? std::string(ClusterFailureModeName(options.cluster->options().failure_mode))
             : options.cluster->rejoining() ? "rejoining"
                                            : "normal";
    report.cluster = c;
  }
  return report;
}

std::string LoadReport::ToJson() const {
  nlohmann::json host_json = nlohmann::json::object();
  auto limit = [](int32_t l) { return l == kUnlimited ? int64_t{-1} : int64_t{l}; };
  for (const auto& [k, h] : hosts) {
    host_json[k] = {{"sessions", h.sessions},
                    {"peak", h.peak},
                    {"lease_peak", h.lease_peak},
                    {"limit", limit(h.limit)},
                    {"configured_limit", limit(h.configured_limit)},
                    {"busy_replies", h.busy_replies},
                    {"limit_moved", h.limit_moved}};
  }
  // A percentile of an empty set is no number: null, not a 0 that reads as "instant".
  auto unless_empty = [](int64_t n, int64_t v) {
    return n > 0 ? nlohmann::json(v) : nlohmann::json(nullptr);
  };
  nlohmann::json cluster_json = nullptr;
  if (cluster) {
    const Cluster& c = *cluster;
    cluster_json = {{"leases", c.leases},
                    {"local_leases", c.local_leases},
                    {"waits", c.waits},
                    {"wait_ms", c.wait_ms},
                    {"wakeups", c.wakeups},
                    {"refreshes", c.refreshes},
                    {"reregistered", c.reregistered},
                    {"redis_errors", c.redis_errors},
                    {"noscript", c.noscript},
                    {"mode_switches", c.mode_switches},
                    {"store_resets", c.store_resets},
                    {"warmup_refusals", c.warmup_refusals},
                    {"throttle_waits", c.throttle_waits},
                    {"throttled", c.throttled},
                    {"throttle_asks", c.throttle_asks},
                    {"redis_commands", c.commands},
                    {"live_workers", c.live_workers},
                    {"mode", c.mode}};
  }
  nlohmann::json binding_json = nlohmann::json::object();
  for (const auto& [name, b] : bindings) {
    binding_json[name.empty() ? "default" : name] = {{"sessions", b.sessions},
                                                     {"peak", b.peak},
                                                     {"source", b.source},
                                                     {"failures", b.failures},
                                                     {"hosts_failed", b.hosts_failed}};
  }
  nlohmann::json reuse_json = nullptr;
  if (reuse) {
    reuse_json = {{"enabled", reuse->enabled},
                  {"messages", reuse->messages},
                  {"connections", reuse->connections},
                  {"reused", reuse->reused},
                  {"stale", reuse->stale()},
                  {"messages_per_connection", reuse->messages_per_connection()},
                  {"events", reuse->events}};
  }
  return DumpJson(
      {{"cluster", std::move(cluster_json)},
       {"reuse", std::move(reuse_json)},
       {"sessions", sessions},
       {"connected", connected},
       {"deferred", deferred},
       {"failed", failed},
       {"not_started", not_started},
       {"stopped_by", stopped_by.empty() ? nlohmann::json(nullptr) : nlohmann::json(stopped_by)},
       {"seconds", seconds},
       {"sessions_per_second", sessions_per_second},
       {"connected_per_second", connected_per_second},
       {"greeted", greeted},
       {"connect_p50_us", unless_empty(greeted, connect_p50_us)},
       {"connect_p99_us", unless_empty(greeted, connect_p99_us)},
       {"connect_max_us", unless_empty(greeted, connect_max_us)},
       {"busy_replies", busy_replies},
       {"waited", waited},
       {"wait_p50_us", unless_empty(waited, wait_p50_us)},
       {"wait_p99_us", unless_empty(waited, wait_p99_us)},
       {"wait_max_us", unless_empty(waited, wait_max_us)},
       {"throttle_waited", throttle_waited},
       {"throttle_wait_p50_us", unless_empty(throttle_waited, throttle_wait_p50_us)},
       {"throttle_wait_p99_us", unless_empty(throttle_waited, throttle_wait_p99_us)},
       {"throttle_wait_max_us", unless_empty(throttle_waited, throttle_wait_max_us)},
       {"max_rss_kb", max_rss_kb},
       {"connected_per_250ms", connected_timeline},
       {"hosts", std::move(host_json)},
       {"bindings", std::move(binding_json)},
       {"domains",
        {{"distinct", domains.distinct},
         {"resident", domains.resident},
         {"peak_resident", domains.peak_resident},
         {"created", domains.created},
         {"evicted", domains.evicted},
         {"memory_bytes", domains.memory_bytes}}},
       {"deferrals", deferrals},
       {"failures", failures},
       {"examples", examples}});
}

std::string LoadReport::ToText() const {
  std::string s = StrCat("sessions ", sessions, ": connected ", connected, ", deferred ", deferred,
                         ", failed ", failed, " in ", seconds, " s\n");
  if (!stopped_by.empty()) {
    s += StrCat("stopped early (", stopped_by == "signal" ? "by a signal" : "at --max-seconds",
                "): sessions cut short counted deferred, kind \"stopped\"; ", not_started,
                " not started\n");
  }
  s += StrCat("rate: ", connected_per_second, " connected/s (", sessions_per_second,
              " sessions ended/s, counting deferred and failed)\n");
  if (greeted > 0) {
    s += StrCat("connect latency (without slot or throttle wait), ", greeted, " sessions greeted: p50 ",
                connect_p50_us, " us, p99 ", connect_p99_us, " us, max ", connect_max_us, " us\n");
  } else {
    s += "connect latency (without slot or throttle wait): - (no session got a greeting)\n";
  }
  if (waited > 0) {
    s += StrCat("waited for a slot: ", waited, " sessions, p50 ", wait_p50_us, " us, p99 ",
                wait_p99_us, " us, max ", wait_max_us, " us\n");
  } else {
    s += "waited for a slot: no session\n";
  }
  if (throttle_waited > 0) {
    s += StrCat("waited for a rate throttle: ", throttle_waited, " sessions, p50 ",
                throttle_wait_p50_us, " us, p99 ", throttle_wait_p99_us, " us, max ",
                throttle_wait_max_us, " us\n");
  }
  if (reuse) {
    const Reuse& r = *reuse;
    s += StrCat("messages: ", r.messages, " over ", r.connections, " connections opened (",
                r.messages_per_connection(), " per connection); reuse ",
                r.enabled ? "on" : "off", ": ", r.reused, " reused, ", r.stale(), " stale");
    if (r.enabled) {
      std::vector<std::string> closed;
      for (const char* k : {"idle_timeout", "server_closed", "evicted", "max_deliveries", "stopped"}) {
        auto it = r.events.find(k);
        if (it != r.events.end() && it->second > 0) closed.push_back(StrCat(k, " ", it->second));
      }
      s += StrCat("; parked closed: ", closed.empty() ? std::string("none") : Join(closed, ", "));
    }
    s += "\n";
  }
  if (busy_replies > 0) {
    s += StrCat("busy replies (421 too many connections...): ", busy_replies, "\n");
  }
  if (!hosts.empty()) {
    s += "per host (sessions, peak concurrent connections, peak leases incl. failed connects, "
         "limit):\n";
  }
  auto limit = [](int32_t l) { return l == kUnlimited ? std::string("unlimited") : StrCat(l); };
  for (const auto& [k, h] : hosts) {
    s += StrCat("  ", k, "  ", h.sessions, "  ", h.peak, "  ", h.lease_peak, "  ", limit(h.limit));
    if (h.limit != h.configured_limit) s += StrCat(" (configured ", limit(h.configured_limit), ")");
    if (!h.limit_moved.empty()) s += StrCat("  ", ForTerminal(h.limit_moved));
    s += "\n";
  }
  if (bindings.size() > 1 || (bindings.size() == 1 && !bindings.begin()->first.empty())) {
    s += "per binding (sessions, peak concurrent connections, source, failures through it, "
         "hosts it is kept off now):\n";
    // Only the bindings this run used or keeps off a host: a configuration may name 100,000
    // (the JSON report has them all), and at most kMaxRows of those.
    constexpr size_t kMaxRows = 100;
    size_t listed = 0, unused = 0, over = 0;
    for (const auto& [name, b] : bindings) {
      if (b.sessions == 0 && b.failures == 0 && b.hosts_failed == 0) {
        ++unused;
      } else if (listed == kMaxRows) {
        ++over;
      } else {
        ++listed;
        s += StrCat("  ", name.empty() ? "default" : ForTerminal(name), "  ", b.sessions, "  ",
                    b.peak, "  ", b.source.empty() ? "-" : b.source, "  ", b.failures, "  ",
                    b.hosts_failed, "\n");
      }
    }
    if (over > 0) s += StrCat("  ... ", over, " more used (--json lists every binding)\n");
    if (unused > 0) s += StrCat("  (", unused, " configured, not used in this run)\n");
  }
  s += StrCat("domains: ", domains.distinct, " distinct; resident at the end ", domains.resident,
              ", peak ", domains.peak_resident, " (sampled every 250 ms); created ",
              domains.created, ", evicted ", domains.evicted, " (idle for domain_idle_timeout); ",
              domains.memory_bytes, " bytes held for domains\n");
  for (const auto& [k, v] : deferrals) {
    s += StrCat("deferred ", k, ": ", v, "  e.g. ", ForTerminal(examples.at(k)), "\n");
  }
  for (const auto& [k, v] : failures) {
    s += StrCat("failed ", k, ": ", v, "  e.g. ", ForTerminal(examples.at(k)), "\n");
  }
  if (cluster) {
    const Cluster& c = *cluster;
    s += StrCat("cluster: leases ", c.leases, " (", c.local_leases, " decided locally), waits ",
                c.waits, " (", c.wait_ms, " ms in all, ", c.wakeups, " woken by a release), ",
                "refreshes ", c.refreshes, " (", c.reregistered, " leases re-registered), ",
                "Redis errors ", c.redis_errors, " (NOSCRIPT ", c.noscript, "), mode switches ",
                c.mode_switches, ", Redis commands ", c.commands, ", live workers ", c.live_workers,
                ", mode ", c.mode, ", fleet throttle waits ", c.throttle_waits, " (", c.throttled,
                " refused, ", c.throttle_asks, " asks of throttles alone)\n");
  }
  return s;
}

}  // namespace mxsched::testbed
