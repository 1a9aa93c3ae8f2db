#include "testbed/farm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <future>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/io/loop.h"
#include "testbed/json.h"

namespace mxsched::testbed {

// The testbed drives the product's io layer (loop, connector, cluster client) from outside.
using namespace mxsched::io;  // NOLINT(google-build-using-namespace)

std::string Fault::ToString() const {
  switch (kind) {
    case Kind::kNone:
      return "none";
    case Kind::kRefuse:
      return "refuse";
    case Kind::kBlackhole:
      return "blackhole";
    case Kind::kTempfail:
      return "tempfail";
    case Kind::kSlow:
      return StrCat("slow:", slow_ms);
    case Kind::kReset:
      return "reset";
    case Kind::kCap:
      return StrCat("cap:", slow_ms);
  }
  return "?";
}

absl::StatusOr<std::vector<Endpoint>> ParseListenSpec(std::string_view spec) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        StrCat("listen \"", EchoForError(spec), "\": ", why, " (want ADDR[-ADDR]:PORT or [::1]:PORT)"));
  };
  size_t colon = spec.rfind(':');
  if (colon == std::string_view::npos) return bad("missing :PORT");
  uint64_t port;
  if (!ParseUint(spec.substr(colon + 1), &port) || port == 0 || port > 65535) {
    return bad("port must be 1..65535");
  }
  std::string_view addrs = spec.substr(0, colon);
  std::vector<Endpoint> out;
  if (!addrs.empty() && addrs.front() == '[') {
    if (addrs.back() != ']') return bad("unterminated [");
    auto ip = IpAddress::Parse(addrs.substr(1, addrs.size() - 2));
    if (!ip.ok() || ip->is_v4()) return bad("expected an IPv6 address in [ ]");
    if (!ip->IsLoopback()) return bad("only loopback addresses");
    out.push_back({*ip, static_cast<uint16_t>(port)});
    return out;
  }
  size_t dash = addrs.find('-');
  auto first = IpAddress::Parse(addrs.substr(0, dash));
  auto last = dash == std::string_view::npos ? first : IpAddress::Parse(addrs.substr(dash + 1));
  if (!first.ok() || !last.ok() || !first->is_v4() || !last->is_v4()) {
    return bad("expected IPv4 addresses");
  }
  auto to_u32 = [](const IpAddress& a) {
    const auto& b = a.bytes();
    return uint32_t{b[0]} << 24 | uint32_t{b[1]} << 16 | uint32_t{b[2]} << 8 | b[3];
  };
  const uint32_t lo = to_u32(*first), hi = to_u32(*last);
  if (hi < lo) return bad("range ends before it starts");
  if (hi - lo >= 65536) return bad("range longer than 65,536 addresses");
  for (uint32_t a = lo; a <= hi; ++a) {
    IpAddress ip = IpAddress::V4(a);
    if (!ip.IsLoopback()) return bad("only loopback addresses (127.0.0.0/8)");
    out.push_back({ip, static_cast<uint16_t>(port)});
  }
  return out;
}

absl::StatusOr<std::pair<IpAddress, Fault>> ParseFaultSpec(std::string_view spec) {
  size_t eq = spec.find('=');
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        StrCat("fault \"", EchoForError(spec), "\": ", why,
               " (want ADDR=refuse|blackhole|tempfail|reset|slow:MS|cap:N)"));
  };
  if (eq == std::string_view::npos) return bad("missing '='");
  auto ip = IpAddress::Parse(spec.substr(0, eq));
  if (!ip.ok()) return bad("bad address");
  std::string_view what = spec.substr(eq + 1);
  Fault f;
  if (what == "refuse") {
    f.kind = Fault::Kind::kRefuse;
  } else if (what == "blackhole") {
    f.kind = Fault::Kind::kBlackhole;
  } else if (what == "tempfail") {
    f.kind = Fault::Kind::kTempfail;
  } else if (what == "reset") {
    f.kind = Fault::Kind::kReset;
  } else if (what == "none") {
    f.kind = Fault::Kind::kNone;
  } else if (what.substr(0, 5) == "slow:") {
    uint64_t ms;
    if (!ParseUint(what.substr(5), &ms) || ms > 3'600'000) return bad("slow:MS needs 0..3600000");
    f.kind = Fault::Kind::kSlow;
    f.slow_ms = static_cast<int>(ms);
  } else if (what.substr(0, 4) == "cap:") {
    uint64_t n;
    if (!ParseUint(what.substr(4), &n) || n > 1'000'000) return bad("cap:N needs 0..1000000");
    f.kind = Fault::Kind::kCap;
    f.slow_ms = static_cast<int>(n);
  } else {
    return bad("unknown fault");
  }
  return std::make_pair(*ip, f);
}

uint16_t FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  uint16_t port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0) {
    port = ntohs(sin.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

namespace {

// Accept failures that say the process (or the system) is out of something that only
// freeing can give back. The kernel takes the fd before it looks at the queue, so an accept
// re-armed while they last fails at once: re-arming straight away is a busy loop.
bool IsResourceShortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

// While starved, the farm waits this long before it looks again, doubling up to the cap:
// ~no CPU while it lasts, and service back within the cap once fds are freed.
constexpr int kFirstBackoffMs = 10;
constexpr int kMaxBackoffMs = 250;

int OpenListener(const Endpoint& ep, std::string* error) {
  int fd = socket(ep.address.is_v4() ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int err = errno;
    *error = StrCat("socket: ", std::strerror(err));
    errno = err;  // callers tell a shortage (retry later) from a real failure
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss;
  socklen_t len = ep.ToSockaddr(&ss);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 4096) != 0) {
    const int err = errno;
    *error = StrCat("listen on ", ep.ToString(), ": ", std::strerror(err));
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

}  // namespace

struct Listener;
struct Conn;

// The most accepts within any window of `window` nanoseconds: a queue of the accept times
// still inside the window ending now.
struct RateWindow {
  explicit RateWindow(int ms) : window_ms(ms), window(int64_t{ms} * 1'000'000) {}
  void Add(int64_t t) {
    while (!times.empty() && t - times.front() >= window) times.pop_front();
    times.push_back(t);
    peak = std::max<int64_t>(peak, static_cast<int64_t>(times.size()));
  }
  void Reset() { peak = static_cast<int64_t>(times.size()); }
  int window_ms;
  int64_t window;
  std::deque<int64_t> times;
  int64_t peak = 0;
};

std::vector<FarmRatePeak> Peaks(const std::vector<RateWindow>& ws) {
  std::vector<FarmRatePeak> out;
  for (const RateWindow& w : ws) out.push_back({w.window_ms, w.peak});
  return out;
}

struct Farm::Impl {
  FarmOptions options;
  std::unique_ptr<Loop> loop;  // created and reset on the farm thread; Wake() under `mu`
  std::vector<std::unique_ptr<Listener>> listeners;
  absl::flat_hash_set<Conn*> conns;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> current_all{0}, peak_all{0};  // over every listener
  std::atomic<uint64_t> rsets{0};  // RSETs seen, for FarmOptions::rset_fail_every
  // Accept rates (FarmOptions::rate_windows_ms): over all listeners, per listener (index),
  // and the recent accept times. Written on the farm thread, read by Stats.
  static constexpr size_t kRecentAccepts = 65536;
  mutable Mutex rate_mu;
  std::vector<RateWindow> rate_all ABSL_GUARDED_BY(rate_mu);
  std::vector<std::vector<RateWindow>> rate_by_listener ABSL_GUARDED_BY(rate_mu);
  std::deque<int64_t> recent_accepts ABSL_GUARDED_BY(rate_mu);
  std::deque<int64_t> recent_mails ABSL_GUARDED_BY(rate_mu);  // MAIL commands received
  // MAIL commands over all listeners in the same windows: the message rate a receiver counts.
  std::vector<RateWindow> mail_rate_all ABSL_GUARDED_BY(rate_mu);
  void CountMail() {
    const int64_t t = SteadyNowNanos();
    MutexLock lock(&rate_mu);
    for (RateWindow& w : mail_rate_all) w.Add(t);
    if (recent_mails.size() == kRecentAccepts) recent_mails.pop_front();
    recent_mails.push_back(t);
  }
  void CountAccept(size_t listener) {
    const int64_t t = SteadyNowNanos();
    MutexLock lock(&rate_mu);
    for (RateWindow& w : rate_all) w.Add(t);
    for (RateWindow& w : rate_by_listener[listener]) w.Add(t);
    if (recent_accepts.size() == kRecentAccepts) recent_accepts.pop_front();
    recent_accepts.push_back(t);
  }
  Mutex mu;
  std::vector<std::pair<IpAddress, Fault>> fault_changes ABSL_GUARDED_BY(mu);
  // Per client address: counters and faults (farm thread writes, Stats reads).
  struct Source {
    uint64_t total = 0;
    int64_t current = 0, peak = 0;
    Fault fault;
  };
  mutable Mutex sources_mu;
  absl::flat_hash_map<IpAddress, Source> sources ABSL_GUARDED_BY(sources_mu);
  // A new connection from `a`: counted; returns its source fault (kNone if none).
  Fault OpenFrom(const IpAddress& a) {
    MutexLock lock(&sources_mu);
    Source& s = sources[a];
    ++s.total;
    s.peak = std::max(s.peak, ++s.current);
    return s.fault;
  }
  void CloseFrom(const IpAddress& a) {
    MutexLock lock(&sources_mu);
    --sources[a].current;
  }
  std::string banner;
  // Listeners out of fds (or memory), waiting for the one backoff timer of the farm: one
  // timer and one probe for all of them, not a failing accept per listener per tick.
  std::vector<Listener*> starved;
  bool backoff_armed = false;
  int backoff_ms = 0;  // the next wait; 0 after an accept succeeded
  __kernel_timespec backoff_ts{};

  void Run(std::promise<absl::Status>* ready);
  void ApplyFaultChanges();
  Listener* ListenerFor(const IpAddress& a);
  // `l` could not accept (or reopen its socket) for lack of resources: retry it after the
  // backoff instead of now.
  void Starve(Listener* l);
  void OnBackoff(int res, uint32_t flags);
  MemberCompletion<Impl, &Impl::OnBackoff> backoff_done{this};
};

struct alignas(64) Listener {
  Farm::Impl* farm = nullptr;
  size_t index = 0;  // in farm->listeners
  Endpoint endpoint;
  int fd = -1;
  bool accept_armed = false;
  bool starved = false;  // in farm->starved
  std::atomic<uint8_t> fault_kind{0};
  std::atomic<int> slow_ms{0};
  std::atomic<uint64_t> total{0}, quits{0}, messages{0};
  std::atomic<int64_t> current{0}, peak{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<int64_t> serving{0}, served_peak{0};  // sessions greeted 220 and still open
  std::atomic<uint64_t> idle_closed{0}, accept_backoffs{0};
  std::atomic<uint64_t> rsets_refused{0};
  Fault fault() const { return {static_cast<Fault::Kind>(fault_kind.load()), slow_ms.load()}; }
  void ArmAccept() {
    if (fd < 0 || accept_armed) return;
    io_uring_sqe* sqe = farm->loop->Sqe();
    io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    Loop::SetCompletion(sqe, &accept_done);
    accept_armed = true;
  }
  void OnAccept(int res, uint32_t flags);
  // Makes the listening socket match the fault: closed for refuse, open otherwise.
  void Reconcile() {
    const bool want_open = fault().kind != Fault::Kind::kRefuse;
    if (want_open && fd < 0) {
      std::string error;
      fd = OpenListener(endpoint, &error);
      if (fd < 0 && IsResourceShortage(errno)) return farm->Starve(this);
      ArmAccept();
    } else if (!want_open && fd >= 0 && accept_armed) {
      io_uring_sqe* sqe = farm->loop->Sqe();
      io_uring_prep_cancel(sqe, &accept_done, 0);
      Loop::SetCompletion(sqe, nullptr);
      // OnAccept(-ECANCELED) closes the socket.
    } else if (!want_open && fd >= 0) {
      close(fd);
      fd = -1;
    }
  }
  MemberCompletion<Listener, &Listener::OnAccept> accept_done{this};
};

struct Conn {
  Conn(Farm::Impl* f, Listener* l, int s) : farm(f), listener(l), fd(s) {}
  Farm::Impl* farm;
  Listener* listener;
  int fd;
  std::optional<IpAddress> source;  // the client's address (getpeername), if known
  Fault source_fault;
  std::string in;
  std::string out;
  size_t out_off = 0;
  bool data_mode = false;
  bool close_after_send = false;
  bool serving = false;  // counted in listener->serving
  char buf[4096];
  __kernel_timespec ts{};
  __kernel_timespec idle_ts{};  // read by the kernel when the recv is submitted

  void Start() {
    const Fault f = source_fault.kind != Fault::Kind::kNone ? source_fault : listener->fault();
    switch (f.kind) {
      case Fault::Kind::kTempfail:
        out = "421 4.3.2 farm fault: try later\r\n";
        close_after_send = true;
        return Send();
      case Fault::Kind::kBlackhole:
        return Recv();  // never answer; wait for the client to give up
      case Fault::Kind::kRefuse:  // a source fault: accepted already, so reset
      case Fault::Kind::kReset: {
        linger l{1, 0};  // close with RST instead of FIN
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        return Close();
      }
      case Fault::Kind::kCap:
        // The farm runs on one thread: the check and the increment cannot race.
        if (listener->serving.load(std::memory_order_relaxed) >= f.slow_ms) {
          listener->rejected.fetch_add(1, std::memory_order_relaxed);
          out = "421 4.7.0 too many connections from your IP\r\n";
          close_after_send = true;
          return Send();
        }
        StartServing();
        out = farm->banner;
        return Send();
      case Fault::Kind::kSlow: {
        ts.tv_sec = f.slow_ms / 1000;
        ts.tv_nsec = (f.slow_ms % 1000) * 1'000'000LL;
        io_uring_sqe* sqe = farm->loop->Sqe();
        io_uring_prep_timeout(sqe, &ts, 0, 0);
        Loop::SetCompletion(sqe, &timer_done);
        return;
      }
      default:
        StartServing();
        out = farm->banner;
        return Send();
    }
  }
  void StartServing() {
    serving = true;
    const int64_t now = listener->serving.fetch_add(1, std::memory_order_relaxed) + 1;
    int64_t p = listener->served_peak.load(std::memory_order_relaxed);
    while (now > p && !listener->served_peak.compare_exchange_weak(p, now)) {
    }
  }
  void OnTimer(int, uint32_t) {
    StartServing();
    out = farm->banner;
    Send();
  }
  void Recv() {
    const int idle_ms = farm->options.idle_timeout_ms;
    // A blackhole's clients never speak by design; they wait for a greeting until they give
    // up, and the fault is that nobody hangs up on them first.
    const bool timed = idle_ms > 0 && listener->fault().kind != Fault::Kind::kBlackhole;
    if (timed) farm->loop->Reserve(2);  // a chain split by a submit loses its timeout
    io_uring_sqe* sqe = farm->loop->Sqe();
    io_uring_prep_recv(sqe, fd, buf, sizeof(buf), 0);
    Loop::SetCompletion(sqe, &recv_done);
    if (!timed) return;
    // A linked timeout, restarted with every recv: it measures the silence since the farm
    // last answered, not the session's length. When it fires the recv ends -ECANCELED; the
    // timeout's own completion says nothing the recv's does not.
    sqe->flags |= IOSQE_IO_LINK;
    idle_ts.tv_sec = idle_ms / 1000;
    idle_ts.tv_nsec = (idle_ms % 1000) * 1'000'000LL;
    io_uring_sqe* timeout = farm->loop->Sqe();
    io_uring_prep_link_timeout(timeout, &idle_ts, 0);
    Loop::SetCompletion(timeout, nullptr);
  }
  void Send() {
    io_uring_sqe* sqe = farm->loop->Sqe();
    io_uring_prep_send(sqe, fd, out.data() + out_off, out.size() - out_off, MSG_NOSIGNAL);
    Loop::SetCompletion(sqe, &send_done);
  }
  void OnSend(int res, uint32_t) {
    if (res <= 0) return Close();
    out_off += res;
    if (out_off < out.size()) return Send();
    out.clear();
    out_off = 0;
    if (close_after_send) return Close();
    Recv();
  }
  void OnRecv(int res, uint32_t) {
    if (res == -ECANCELED && !farm->stopping.load(std::memory_order_relaxed)) {
      // Counted before the close, so a client that reads EOF finds it counted.
      listener->idle_closed.fetch_add(1, std::memory_order_relaxed);
      return Close();
    }
    if (res <= 0) return Close();
    if (listener->fault().kind == Fault::Kind::kBlackhole) return Recv();
    in.append(buf, res);
    size_t start = 0;
    for (size_t nl; (nl = in.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(in.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      Command(line);
      if (close_after_send) break;
    }
    in.erase(0, start);
    if (in.size() > 65536) {
      out += "500 5.5.2 line too long\r\n";
      close_after_send = true;
    }
    if (!out.empty()) return Send();
    if (close_after_send) return Close();
    Recv();
  }
  void Command(std::string_view line) {
    if (data_mode) {
      if (line == ".") {
        data_mode = false;
        listener->messages.fetch_add(1, std::memory_order_relaxed);
        out += "250 2.0.0 queued\r\n";
      }
      return;
    }
    std::string verb = ToLower(line.substr(0, 4));
    if (verb == "ehlo") {
      out += StrCat("250-", farm->options.hostname, "\r\n250 PIPELINING\r\n");
    } else if (verb == "helo") {
      out += StrCat("250 ", farm->options.hostname, "\r\n");
    } else if (verb == "rset" && farm->options.rset_fail_every > 0 &&
               farm->rsets.fetch_add(1, std::memory_order_relaxed) %
                       farm->options.rset_fail_every ==
                   static_cast<uint64_t>(farm->options.rset_fail_every - 1)) {
      listener->rsets_refused.fetch_add(1, std::memory_order_relaxed);
      out += "421 4.3.2 session lost, closing\r\n";
      close_after_send = true;
    } else if (verb == "mail" || verb == "rcpt" || verb == "rset" || verb == "noop") {
      if (verb == "mail") farm->CountMail();
      out += "250 2.0.0 ok\r\n";
    } else if (verb == "data") {
      data_mode = true;
      out += "354 go ahead\r\n";
    } else if (verb == "quit") {
      listener->quits.fetch_add(1, std::memory_order_relaxed);
      out += "221 2.0.0 bye\r\n";
      close_after_send = true;
    } else {
      out += "502 5.5.2 command not recognized\r\n";
    }
  }
  void Close() {
    close(fd);
    if (source) farm->CloseFrom(*source);
    listener->current.fetch_sub(1, std::memory_order_relaxed);
    farm->current_all.fetch_sub(1, std::memory_order_relaxed);
    if (serving) listener->serving.fetch_sub(1, std::memory_order_relaxed);
    farm->conns.erase(this);
    delete this;
  }
  MemberCompletion<Conn, &Conn::OnRecv> recv_done{this};
  MemberCompletion<Conn, &Conn::OnSend> send_done{this};
  MemberCompletion<Conn, &Conn::OnTimer> timer_done{this};
};

void Listener::OnAccept(int res, uint32_t) {
  accept_armed = false;
  if (res == -ECANCELED || farm->stopping.load()) {
    if (fault().kind == Fault::Kind::kRefuse && fd >= 0) {
      shutdown(fd, SHUT_RDWR);
      close(fd);
      fd = -1;
    }
    return;
  }
  if (IsResourceShortage(-res)) {
    accept_backoffs.fetch_add(1, std::memory_order_relaxed);
    return farm->Starve(this);
  }
  if (res >= 0) {
    farm->backoff_ms = 0;  // fds are there again: the next shortage starts short
    int one = 1;
    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    total.fetch_add(1, std::memory_order_relaxed);
    farm->CountAccept(index);
    const int64_t all = farm->current_all.fetch_add(1, std::memory_order_relaxed) + 1;
    int64_t pa = farm->peak_all.load(std::memory_order_relaxed);
    while (all > pa && !farm->peak_all.compare_exchange_weak(pa, all)) {
    }
    const int64_t now = current.fetch_add(1, std::memory_order_relaxed) + 1;
    int64_t p = peak.load(std::memory_order_relaxed);
    while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
    auto* c = new Conn(farm, this, res);
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    if (getpeername(res, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0) {
      IpAddress a;
      if (peer.ss_family == AF_INET) {
        a = IpAddress::V4(ntohl(reinterpret_cast<const sockaddr_in&>(peer).sin_addr.s_addr));
      } else {
        std::array<uint8_t, 16> b;
        std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr, 16);
        a = IpAddress::V6(b);
      }
      c->source = a;
      c->source_fault = farm->OpenFrom(a);
    }
    farm->conns.insert(c);
    c->Start();
  }
  // Errors that concern one connection (ECONNABORTED...): accept the next one now.
  ArmAccept();
}

void Farm::Impl::Starve(Listener* l) {
  if (!l->starved) {
    l->starved = true;
    starved.push_back(l);
  }
  if (backoff_armed) return;
  backoff_ms = backoff_ms == 0 ? kFirstBackoffMs : std::min(backoff_ms * 2, kMaxBackoffMs);
  backoff_ts.tv_sec = backoff_ms / 1000;
  backoff_ts.tv_nsec = (backoff_ms % 1000) * 1'000'000LL;
  io_uring_sqe* sqe = loop->Sqe();
  io_uring_prep_timeout(sqe, &backoff_ts, 0, 0);
  Loop::SetCompletion(sqe, &backoff_done);
  backoff_armed = true;
}

void Farm::Impl::OnBackoff(int, uint32_t) {
  backoff_armed = false;
  if (stopping.load(std::memory_order_relaxed) || starved.empty()) return;
  // One probe for every starved listener: if no fd is free, every accept would fail again,
  // so wait longer without submitting any. (ENOBUFS/ENOMEM cannot be probed so: the accepts
  // are retried, and fail back here with a longer wait if they still lack memory.)
  const int probe = fcntl(loop->ring()->ring_fd, F_DUPFD_CLOEXEC, 0);
  if (probe < 0) {
    if (IsResourceShortage(errno)) return Starve(starved.front());
  } else {
    close(probe);
  }
  std::vector<Listener*> retry;
  retry.swap(starved);
  for (Listener* l : retry) {
    l->starved = false;
    // A listener that could not reopen its socket gets another try; one that could, its accept.
    if (l->fd < 0) {
      l->Reconcile();
    } else {
      l->ArmAccept();
    }
  }
}

Listener* Farm::Impl::ListenerFor(const IpAddress& a) {
  for (auto& l : listeners) {
    if (l->endpoint.address == a) return l.get();
  }
  return nullptr;
}

void Farm::Impl::ApplyFaultChanges() {
  std::vector<std::pair<IpAddress, Fault>> changes;
  {
    MutexLock lock(&mu);
    changes.swap(fault_changes);
  }
  for (const auto& [addr, fault] : changes) {
    for (auto& l : listeners) {
      if (!(l->endpoint.address == addr)) continue;
      l->fault_kind.store(static_cast<uint8_t>(fault.kind));
      l->slow_ms.store(fault.slow_ms);
      l->Reconcile();
    }
  }
}

void Farm::Impl::Run(std::promise<absl::Status>* ready) {
  auto created = Loop::Create(8192);
  if (!created.ok()) {
    ready->set_value(created.status());
    return;
  }
  {
    MutexLock lock(&mu);
    loop = *std::move(created);
  }
  for (auto& l : listeners) {
    if (l->fault().kind == Fault::Kind::kRefuse) continue;
    std::string error;
    l->fd = OpenListener(l->endpoint, &error);
    if (l->fd < 0) {
      ready->set_value(absl::UnavailableError(error));
      return;
    }
    l->ArmAccept();
  }
  ready->set_value(absl::OkStatus());
  while (!stopping.load(std::memory_order_acquire)) {
    loop->RunOnce(-1);
    ApplyFaultChanges();
  }
  // Stop listening now, not when the ring's teardown drops its last file reference: a
  // pending accept keeps a listening socket alive (and its port bound) after close(), even
  // after the process exits. shutdown() takes it out of LISTEN at once.
  for (auto& l : listeners) {
    if (l->fd >= 0) {
      shutdown(l->fd, SHUT_RDWR);
      close(l->fd);
    }
    l->fd = -1;
  }
  for (Conn* c : conns) {
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    if (c->source) CloseFrom(*c->source);
    c->listener->current.fetch_sub(1);
    current_all.fetch_sub(1);
    if (c->serving) c->listener->serving.fetch_sub(1);
  }
  {
    MutexLock lock(&mu);  // Stop()/SetFault() may be calling loop->Wake() right now
    loop.reset();         // cancels every outstanding operation before the Conns go
  }
  for (Conn* c : conns) delete c;
  conns.clear();
}

Farm::Farm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Farm>> Farm::Start(FarmOptions options) {
  if (options.listen.empty()) return absl::InvalidArgumentError("farm: nothing to listen on");
  if (options.idle_timeout_ms < 0) {
    return absl::InvalidArgumentError("farm: the idle timeout must be >= 0 ms (0: never)");
  }
  // Mistakes in the options are errors here, at start, not surprises in the results.
  absl::flat_hash_set<Endpoint> endpoints;
  absl::flat_hash_set<IpAddress> addresses;
  for (const Endpoint& ep : options.listen) {
    if (!endpoints.insert(ep).second) {
      return absl::InvalidArgumentError(StrCat("farm: ", ep.ToString(), " is given twice"));
    }
    addresses.insert(ep.address);
  }
  for (const auto& [addr, fault] : options.faults) {
    if (!addresses.contains(addr)) {
      return absl::InvalidArgumentError(StrCat("farm: fault ", fault.ToString(), " for ",
                                               addr.ToString(),
                                               ", which the farm does not "
                                               "serve"));
    }
  }
  for (int ms : options.rate_windows_ms) {
    if (ms < 1 || ms > 3'600'000) {
      return absl::InvalidArgumentError(
          StrCat("farm: rate window ", ms, " ms: expected 1..3600000 ms"));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->banner = StrCat("220 ", options.hostname, " ESMTP mxsched farm\r\n");
  std::vector<RateWindow> windows;
  for (int ms : options.rate_windows_ms) windows.emplace_back(ms);
  {
    MutexLock lock(&impl->rate_mu);
    impl->rate_all = windows;
    impl->mail_rate_all = windows;
    impl->rate_by_listener.assign(options.listen.size(), windows);
  }
  for (const Endpoint& ep : options.listen) {
    if (!ep.address.IsLoopback()) {
      return absl::InvalidArgumentError(StrCat("farm: ", ep.ToString(), " is not loopback"));
    }
    auto l = std::make_unique<Listener>();
    l->farm = impl.get();
    l->index = impl->listeners.size();
    l->endpoint = ep;
    for (const auto& [addr, fault] : options.faults) {
      if (addr == ep.address) {
        l->fault_kind.store(static_cast<uint8_t>(fault.kind));
        l->slow_ms.store(fault.slow_ms);
      }
    }
    impl->listeners.push_back(std::move(l));
  }
  {
    MutexLock lock(&impl->sources_mu);
    for (const auto& [addr, fault] : options.source_faults) impl->sources[addr].fault = fault;
  }
  impl->options = std::move(options);
  std::promise<absl::Status> ready;
  Impl* raw = impl.get();
  impl->thread = std::thread([raw, &ready] { raw->Run(&ready); });
  absl::Status status = ready.get_future().get();
  std::unique_ptr<Farm> farm(new Farm(std::move(impl)));
  if (!status.ok()) {
    farm->Stop();
    return status;
  }
  return farm;
}

Farm::~Farm() { Stop(); }

void Farm::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->stopping.store(true, std::memory_order_release);
  {
    MutexLock lock(&impl_->mu);
    if (impl_->loop) impl_->loop->Wake();
  }
  impl_->thread.join();
}

void Farm::SetFault(const IpAddress& address, Fault fault) {
  MutexLock lock(&impl_->mu);
  impl_->fault_changes.emplace_back(address, fault);
  if (impl_->loop) impl_->loop->Wake();
}

void Farm::SetSourceFault(const IpAddress& source, Fault fault) {
  MutexLock lock(&impl_->sources_mu);
  impl_->sources[source].fault = fault;
}

std::vector<FarmSourceStats> Farm::SourceStats() const {
  std::vector<FarmSourceStats> out;
  {
    MutexLock lock(&impl_->sources_mu);
    for (const auto& [a, s] : impl_->sources) {
      if (s.total > 0) out.push_back({a, s.total, s.current, s.peak});
    }
  }
  std::sort(out.begin(), out.end(),
            [](const FarmSourceStats& a, const FarmSourceStats& b) { return a.address < b.address; });
  return out;
}

std::vector<FarmAddressStats> Farm::Stats() const {
  std::vector<FarmAddressStats> out;
  MutexLock lock(&impl_->rate_mu);
  for (const auto& l : impl_->listeners) {
    out.push_back({l->endpoint, l->fault(), l->total.load(), l->quits.load(), l->messages.load(),
                   l->current.load(), l->peak.load(), l->rejected.load(), l->served_peak.load(),
                   l->idle_closed.load(), l->accept_backoffs.load(),
                   Peaks(impl_->rate_by_listener[l->index])});
    out.back().rsets_refused = l->rsets_refused.load();
  }
  return out;
}

int64_t Farm::PeakAllAddresses() const { return impl_->peak_all.load(); }

std::vector<FarmRatePeak> Farm::RatePeaksAllAddresses() const {
  MutexLock lock(&impl_->rate_mu);
  return Peaks(impl_->rate_all);
}

std::vector<FarmRatePeak> Farm::MailRatePeaksAllAddresses() const {
  MutexLock lock(&impl_->rate_mu);
  return Peaks(impl_->mail_rate_all);
}

std::vector<int64_t> Farm::RecentAcceptTimes() const {
  MutexLock lock(&impl_->rate_mu);
  return {impl_->recent_accepts.begin(), impl_->recent_accepts.end()};
}

std::vector<int64_t> Farm::RecentMailTimes() const {
  MutexLock lock(&impl_->rate_mu);
  return {impl_->recent_mails.begin(), impl_->recent_mails.end()};
}

void Farm::ResetCounters() {
  impl_->peak_all = impl_->current_all.load();
  for (auto& l : impl_->listeners) {
    l->total = 0;
    l->quits = 0;
    l->messages = 0;
    l->peak = l->current.load();
    l->rejected = 0;
    l->served_peak = l->serving.load();
    l->idle_closed = 0;
    l->accept_backoffs = 0;
    l->rsets_refused = 0;
  }
  {
    MutexLock lock(&impl_->rate_mu);
    for (RateWindow& w : impl_->rate_all) w.Reset();
    for (RateWindow& w : impl_->mail_rate_all) w.Reset();
    for (auto& ws : impl_->rate_by_listener) {
      for (RateWindow& w : ws) w.Reset();
    }
    impl_->recent_accepts.clear();
    impl_->recent_mails.clear();
  }
  MutexLock lock(&impl_->sources_mu);
  for (auto& [a, src] : impl_->sources) {
    src.total = 0;
    src.peak = src.current;
  }
}

namespace {
// {"1000": 20, ...}: the most accepts within any window of that many milliseconds.
nlohmann::json RateJson(const std::vector<FarmRatePeak>& peaks) {
  nlohmann::json j = nlohmann::json::object();
  for (const FarmRatePeak& p : peaks) j[std::to_string(p.window_ms)] = p.peak;
  return j;
}
}  // namespace

std::string Farm::StatsJson() const {
  uint64_t total = 0, idle_closed = 0, accept_backoffs = 0;
  int64_t peak = 0;
  nlohmann::json addresses = nlohmann::json::array();
  for (const FarmAddressStats& s : Stats()) {
    total += s.total;
    idle_closed += s.idle_closed;
    accept_backoffs += s.accept_backoffs;
    peak = std::max(peak, s.peak);
    addresses.push_back({{"address", s.endpoint.ToString()},
                         {"fault", s.fault.ToString()},
                         {"total", s.total},
                         {"quits", s.quits},
                         {"messages", s.messages},
                         {"current", s.current},
                         {"peak", s.peak},
                         {"rejected", s.rejected},
                         {"served_peak", s.served_peak},
                         {"idle_closed", s.idle_closed},
                         {"rsets_refused", s.rsets_refused},
                         {"accept_backoffs", s.accept_backoffs},
                         {"accept_rate_peaks", RateJson(s.rate_peaks)}});
  }
  nlohmann::json sources = nlohmann::json::array();
  for (const FarmSourceStats& s : SourceStats()) {
    sources.push_back({{"source", s.address.ToString()},
                       {"accepted", s.total},
                       {"current", s.current},
                       {"peak", s.peak}});
  }
  return DumpJson({{"addresses", std::move(addresses)},
                   {"sources", std::move(sources)},
                   {"total", total},
                   {"max_peak", peak},
                   {"peak_all_addresses", PeakAllAddresses()},
                   {"accept_rate_peaks", RateJson(RatePeaksAllAddresses())},
                   {"mail_rate_peaks", RateJson(MailRatePeaksAllAddresses())},
                   {"idle_closed", idle_closed},
                   {"accept_backoffs", accept_backoffs}});
}

}  // namespace mxsched::testbed
