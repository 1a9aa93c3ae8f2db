#include "mxsched/io/resolver.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "mxsched/base/strings.h"
#include "mxsched/io/dns_message.h"

namespace mxsched::io {

// ---------------------------------------------------------------------------------------
// DnsCache

DnsCache::DnsCache(Clock* clock) : clock_(clock ? clock : MonotonicCoarseClock::Default()) {}

DnsAnswer DnsCache::Get(const std::string& name, uint16_t type, bool* queued) {
  Entry& e = entries_[Key{name, type}];
  if (e.expires != 0 && clock_->NowNanos() < e.expires) {
    ++stats_.hits;
    return e.answer;
  }
  ++stats_.misses;
  if (!e.in_flight) {
    e.in_flight = true;
    wanted_.push_back({name, type});
    *queued = true;
  }
  DnsAnswer pending;
  pending.state = DnsAnswer::State::kPending;
  return pending;
}

DnsAnswer DnsCache::LookupMx(std::string_view name) {
  bool queued = false;
  DnsAnswer a;
  {
    MutexLock lock(&mu_);
    a = Get(ToLower(name), kTypeMx, &queued);
    if (queued) PokeAll(false);
  }
  return a;
}

DnsAnswer DnsCache::LookupAddresses(std::string_view name, bool want_v4, bool want_v6) {
  const std::string key = ToLower(name);
  bool queued = false;
  DnsAnswer v4, v6;
  v4.state = v6.state = DnsAnswer::State::kReady;
  v4.ttl_s = v6.ttl_s = UINT32_MAX;
  {
    MutexLock lock(&mu_);
    if (want_v4) v4 = Get(key, kTypeA, &queued);
    if (want_v6) v6 = Get(key, kTypeAaaa, &queued);
    if (queued) PokeAll(false);
  }
  using S = DnsAnswer::State;
  DnsAnswer out;
  if (v4.state == S::kPending || v6.state == S::kPending) return out;  // kPending
  if (v4.state == S::kNxDomain || v6.state == S::kNxDomain) {
    return v4.state == S::kNxDomain ? v4 : v6;
  }
  out.state = S::kReady;
  out.ttl_s = UINT32_MAX;
  for (const DnsAnswer* a : {&v4, &v6}) {
    if (a->state == S::kReady) {
      out.addresses.insert(out.addresses.end(), a->addresses.begin(), a->addresses.end());
      out.ttl_s = std::min(out.ttl_s, a->ttl_s);
    }
  }
  if (out.addresses.empty()) {
    for (const DnsAnswer* a : {&v4, &v6}) {
      if (a->state == S::kTempFail) return *a;
    }
  }
  if (out.ttl_s == UINT32_MAX) out.ttl_s = 60;
  return out;
}

void DnsCache::SetTtlBounds(uint32_t max_ttl_s, uint32_t max_negative_ttl_s) {
  MutexLock lock(&mu_);
  max_ttl_s_ = max_ttl_s;
  max_negative_ttl_s_ = max_negative_ttl_s;
}

void DnsCache::Clear() {
  MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.in_flight) {
      it->second.expires = 0;
      ++it;
    } else {
      entries_.erase(it++);
    }
  }
}

size_t DnsCache::pending() const {
  MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [k, e] : entries_) n += e.in_flight;
  return n;
}

std::vector<DnsCache::Query> DnsCache::TakeWanted() {
  MutexLock lock(&mu_);
  std::vector<Query> out;
  out.swap(wanted_);
  stats_.queries += out.size();
  return out;
}

DnsCache::Stats DnsCache::stats() const {
  MutexLock lock(&mu_);
  Stats s = stats_;
  s.entries = entries_.size();
  return s;
}

void DnsCache::Store(const Query& q, DnsAnswer answer) {
  MutexLock lock(&mu_);
  Entry& e = entries_[Key{q.name, q.type}];
  e.in_flight = false;
  switch (answer.state) {
    case DnsAnswer::State::kReady:
      ++(answer.mx.empty() && answer.addresses.empty() ? stats_.answers_nodata : stats_.answers_ok);
      break;
    case DnsAnswer::State::kNxDomain:
      ++stats_.answers_nxdomain;
      break;
    default:
      ++stats_.answers_tempfail;
      break;
  }
  uint32_t life = answer.ttl_s;
  const bool negative =
      answer.state == DnsAnswer::State::kNxDomain ||
      (answer.state == DnsAnswer::State::kReady && answer.mx.empty() && answer.addresses.empty());
  life = std::min(life, negative ? max_negative_ttl_s_ : max_ttl_s_);
  if (answer.state == DnsAnswer::State::kTempFail) life = kTempFailSeconds;
  life = std::max(life, kMinCacheSeconds);
  e.expires = clock_->NowNanos() + int64_t{life} * kNanosPerSecond;
  e.answer = std::move(answer);
  PokeAll(true);
}

void DnsCache::Abandon(const Query& q) {
  MutexLock lock(&mu_);
  auto it = entries_.find(Key{q.name, q.type});
  if (it != entries_.end()) it->second.in_flight = false;
}

void DnsCache::AddClient(DnsClient* c) {
  MutexLock lock(&mu_);
  clients_.push_back(c);
}

void DnsCache::RemoveClient(DnsClient* c) {
  MutexLock lock(&mu_);
  std::erase(clients_, c);
}

void DnsCache::PokeAll(bool changed) {
  for (DnsClient* c : clients_) c->Poke(changed);
}

// ---------------------------------------------------------------------------------------
// DnsClient

// One socket c-ares opened, from the sock_state_cb that opened it to the one that closed it
// (readable = writable = 0). At most one IORING_OP_POLL_ADD of it is in the ring (`armed`);
// a change of interest removes that poll and the completion re-arms with the new events.
// The watch is freed only when it is both closed by c-ares (`dead`) and out of the ring and
// out of its own callback.
struct DnsClient::Watch {
  Watch(DnsClient* c, int f) : client(c), fd(f) {}
  DnsClient* client;
  int fd;
  short events = 0;
  bool armed = false;
  bool dead = false;
  bool in_callback = false;

  void OnPoll(int res, uint32_t) {
    armed = false;
    --client->ops_in_ring_;
    if (dead || client->destroying_) {
      if (dead) delete this;
      return;
    }
    DnsClient* c = client;
    if (res > 0) {
      const bool in = res & (POLLIN | POLLERR | POLLHUP);
      const bool out = res & (POLLOUT | POLLERR | POLLHUP);
      in_callback = true;  // ares_process_fd may close the socket: free this only after
      ares_process_fd(c->channel_, in ? fd : ARES_SOCKET_BAD, out ? fd : ARES_SOCKET_BAD);
      in_callback = false;
    }
    if (dead) {
      delete this;
    } else if (!armed) {
      c->Arm(this);
    }
    c->AfterAres();
  }
  MemberCompletion<Watch, &Watch::OnPoll> done{this};
};

struct DnsClient::Pending {
  DnsClient* client;
  DnsCache::Query query;

  static void Callback(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    auto* p = static_cast<Pending*>(arg);
    DnsClient* c = p->client;
    --c->in_flight_;
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
      c->cache_->Abandon(p->query);
    } else {
      c->cache_->Store(p->query, Translate(p->query, status, abuf, alen));
    }
    delete p;
  }

  static DnsAnswer Translate(const DnsCache::Query& q, int status, unsigned char* abuf, int alen) {
    DnsAnswer a;
    auto temp = [&](std::string why) {
      a.state = DnsAnswer::State::kTempFail;
      a.detail = std::move(why);
      return a;
    };
    if (abuf == nullptr || alen <= 0) {
      return temp(StrCat(ares_strerror(status), " (", q.name, ")"));
    }
    auto r =
        ParseDnsResponse(std::string_view(reinterpret_cast<char*>(abuf), alen), q.name, q.type);
    if (!r.ok()) return temp(StrCat(ToStd(r.status().message()), " (", q.name, ")"));
    if (r->rcode == 3) {
      a.state = DnsAnswer::State::kNxDomain;
      a.ttl_s = r->has_soa ? r->negative_ttl : 60;
      return a;
    }
    if (r->rcode != 0) {
      return temp(StrCat("server answered rcode ", r->rcode,
                         r->rcode == 2   ? " (SERVFAIL)"
                         : r->rcode == 5 ? " (REFUSED)"
                                         : "",
                         " for ", q.name));
    }
    a.state = DnsAnswer::State::kReady;
    uint32_t ttl = r->cname_ttl;
    for (const auto& m : r->mx) {
      a.mx.push_back({m.pref, m.host});
      ttl = std::min(ttl, m.ttl);
    }
    for (const auto& ad : r->addresses) {
      a.addresses.push_back(ad.ip);
      ttl = std::min(ttl, ad.ttl);
    }
    if (a.mx.empty() && a.addresses.empty()) ttl = r->has_soa ? r->negative_ttl : 60;  // NODATA
    a.ttl_s = ttl;
    return a;
  }
};

absl::StatusOr<std::unique_ptr<DnsClient>> DnsClient::Create(Loop* loop, DnsCache* cache,
                                                             const std::string& servers,
                                                             int timeout_ms, int tries) {
  static std::once_flag init;
  std::call_once(init, [] { ares_library_init(ARES_LIB_INIT_ALL); });
  std::unique_ptr<DnsClient> c(new DnsClient(loop, cache));
  ares_options opts{};
  opts.sock_state_cb = &DnsClient::SockStateCb;
  opts.sock_state_cb_data = c.get();
  opts.timeout = timeout_ms;
  opts.tries = tries;
  opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
  const int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS;
  if (int rc = ares_init_options(&c->channel_, &opts, mask); rc != ARES_SUCCESS) {
    return absl::UnavailableError(StrCat("c-ares init: ", ares_strerror(rc)));
  }
  if (int rc =
          servers.empty() ? ARES_SUCCESS : ares_set_servers_ports_csv(c->channel_, servers.c_str());
      rc != ARES_SUCCESS) {
    return absl::InvalidArgumentError(StrCat("DNS server \"", servers, "\": ", ares_strerror(rc),
                                             " (want HOST:PORT[,HOST:PORT])"));
  }
  DnsClient* raw = c.get();
  auto poke = Notifier::Create(loop, [raw] { raw->OnPoke(); });
  if (!poke.ok()) return poke.status();
  c->poke_ = *std::move(poke);
  cache->AddClient(c.get());
  c->Poke(false);  // pick up anything already wanted
  return c;
}

DnsClient::~DnsClient() {
  destroying_ = true;
  cache_->RemoveClient(this);
  if (channel_ != nullptr) ares_destroy(channel_);  // pending queries: Abandon
  // Take every operation of ours out of the ring before the memory goes.
  poke_.reset();  // no longer poked: RemoveClient ran under the cache's lock
  io_uring_sqe* sqe;
  if (timer_armed_) {
    sqe = loop_->Sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&timer_done_), 0);
    Loop::SetCompletion(sqe, nullptr);
  }
  for (auto& [fd, w] : watches_) {
    w->dead = true;
    if (w->armed) {
      sqe = loop_->Sqe();
      io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(&w->done));
      Loop::SetCompletion(sqe, nullptr);
    } else {
      delete w;
    }
  }
  watches_.clear();
  for (int i = 0; i < 1000 && ops_in_ring_ > 0; ++i) loop_->RunOnce(10);
}

void DnsClient::Poke(bool changed) {
  if (changed) changed_.store(true, std::memory_order_release);
  poke_->Notify();
}

void DnsClient::OnPoke() {
  if (destroying_) return;
  StartQueries();
  if (changed_.exchange(false, std::memory_order_acq_rel) && on_change_) on_change_();
}

void DnsClient::StartQueries() {
  for (DnsCache::Query& q : cache_->TakeWanted()) {
    auto* p = new Pending{this, std::move(q)};
    ++in_flight_;
    ares_query(channel_, p->query.name.c_str(), 1 /* C_IN */, p->query.type, &Pending::Callback, p);
  }
  AfterAres();
}

void DnsClient::AfterAres() {
  // Every socket c-ares has open and wants watched must be watched, whatever the order of
  // its sock_state_cb calls was: ask c-ares which sockets those are (UDP sockets while
  // queries are outstanding, TCP sockets always, writable while a request is queued) and
  // arm any that are not. Cheap: one UDP and one TCP socket per server at most.
  ares_socket_t socks[ARES_GETSOCK_MAXNUM];
  const int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
  for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
    const bool r = ARES_GETSOCK_READABLE(bits, i), w = ARES_GETSOCK_WRITABLE(bits, i);
    if (!r && !w) continue;
    const short events = static_cast<short>((r ? POLLIN : 0) | (w ? POLLOUT : 0));
    auto it = watches_.find(socks[i]);
    if (it == watches_.end() || (it->second->events & events) != events) {
      ++repaired_;
      WatchFd(socks[i], events);
    }
  }
  ArmTimer();
}

std::vector<int> DnsClient::watched_fds() const {
  std::vector<int> out;
  for (const auto& [fd, w] : watches_) {
    if (w->armed) out.push_back(fd);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void DnsClient::ArmTimer() {
  if (timer_armed_ || in_flight_ == 0 || destroying_) return;
  timeval max{1, 0}, tv;
  timeval* t = ares_timeout(channel_, &max, &tv);
  timer_ts_ = {t->tv_sec, t->tv_usec * 1000LL};
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_timeout(sqe, &timer_ts_, 0, 0);
  Loop::SetCompletion(sqe, &timer_done_);
  timer_armed_ = true;
  ++ops_in_ring_;
}

void DnsClient::OnTimer(int, uint32_t) {
  timer_armed_ = false;
  --ops_in_ring_;
  if (destroying_) return;
  ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // handles timeouts
  AfterAres();
}

void DnsClient::Arm(Watch* w) {
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_poll_add(sqe, w->fd, w->events);
  Loop::SetCompletion(sqe, &w->done);
  w->armed = true;
  ++ops_in_ring_;
}

void DnsClient::SockStateCb(void* data, ares_socket_t fd, int readable, int writable) {
  auto* c = static_cast<DnsClient*>(data);
  if (!readable && !writable) return c->UnwatchFd(fd);
  c->WatchFd(fd, static_cast<short>((readable ? POLLIN : 0) | (writable ? POLLOUT : 0)));
}

void DnsClient::WatchFd(int fd, short events) {
  auto it = watches_.find(fd);
  Watch* w;
  if (it == watches_.end()) {
    w = new Watch(this, fd);
    watches_[fd] = w;
  } else {
    w = it->second;
  }
  if (w->armed && w->events != events) {
    // Re-arm with the new interest once the old poll is gone (its completion does it).
    io_uring_sqe* sqe = loop_->Sqe();
    io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(&w->done));
    Loop::SetCompletion(sqe, nullptr);
  }
  w->events = events;
  if (!w->armed && !w->in_callback && !destroying_) Arm(w);
}

void DnsClient::UnwatchFd(int fd) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  Watch* w = it->second;
  watches_.erase(it);
  w->dead = true;
  if (w->armed) {
    io_uring_sqe* sqe = loop_->Sqe();
    io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(&w->done));
    Loop::SetCompletion(sqe, nullptr);
  } else if (!w->in_callback) {
    delete w;
  }
}

}  // namespace mxsched::io
