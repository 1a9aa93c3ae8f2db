#include "mxsched/scheduler/host_registry.h"

#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"
#include "mxsched/scheduler/epoch.h"

namespace mxsched {

HostState::HostState(Endpoint endpoint, std::string name, const HostConfig& config,
                     uint32_t index)
    : adapt_(Pack(config.limit, 0, 0, false)),
      index_(index),
      group_(config.group),
      configured_(config.limit),
      adaptive_floor_(std::max(1, config.adaptive_floor)),
      adaptive_(config.adaptive),
      retry_nanos_(config.retry_nanos),
      endpoint_(endpoint),
      name_(std::move(name)) {}

void HostState::RaisePeak(int32_t value) {
  int32_t peak = peak_.load(std::memory_order_relaxed);
  while (value > peak && !peak_.compare_exchange_weak(peak, value, std::memory_order_relaxed)) {
  }
}

void HostState::RecordConnectLatency(int64_t nanos) {
  size_t i = 0;
  while (i < kConnectLatencyBoundsNanos.size() && nanos > kConnectLatencyBoundsNanos[i]) ++i;
  latency_buckets_[i].fetch_add(1, std::memory_order_relaxed);
  latency_sum_nanos_.fetch_add(nanos, std::memory_order_relaxed);
}

HostState::LatencyCounts HostState::connect_latency() const {
  LatencyCounts c;
  for (size_t i = 0; i < c.buckets.size(); ++i) {
    c.buckets[i] = latency_buckets_[i].load(std::memory_order_relaxed);
  }
  c.sum_nanos = latency_sum_nanos_.load(std::memory_order_relaxed);
  return c;
}

void HostState::Configure(const HostConfig& config) {
  const int32_t old_configured = configured_.exchange(config.limit, std::memory_order_relaxed);
  retry_nanos_.store(config.retry_nanos, std::memory_order_relaxed);
  group_.store(config.group, std::memory_order_release);
  adaptive_floor_.store(std::max(1, config.adaptive_floor), std::memory_order_relaxed);
  adaptive_.store(config.adaptive, std::memory_order_relaxed);
  uint64_t w = adapt_.load(std::memory_order_relaxed);
  uint64_t nw;
  do {
    const int32_t e = LimitOf(w);
    if (!config.adaptive || e >= old_configured) {
      nw = Pack(config.limit, 0, 0, false);  // not adapted (or adaptation off): follow config
    } else {
      nw = Pack(std::min(e, config.limit), SuccessesOf(w), BackoffOf(w), w & kProbingBit);
    }
    if (nw == w) return;
  } while (
      !adapt_.compare_exchange_weak(w, nw, std::memory_order_acq_rel, std::memory_order_relaxed));
}

bool HostState::RecordSuccess(int32_t level, int64_t now_nanos) {
  successes_.fetch_add(1, std::memory_order_relaxed);
  // Plain loads first: on a healthy host the common case writes nothing shared.
  if (consecutive_failures_.load(std::memory_order_relaxed) != 0) {
    consecutive_failures_.store(0, std::memory_order_relaxed);
  }
  if (failed_until_.load(std::memory_order_relaxed) != 0) {
    failed_until_.store(0, std::memory_order_release);
  }
  if (probe_in_flight_.load(std::memory_order_relaxed)) {
    probe_in_flight_.store(false, std::memory_order_release);
  }
  // Positive feedback, only while the limit is lowered (the common case stops here) and
  // only for a connection that ran with the host at (or one below) its limit: an idle host
  // does not talk itself back up to a level it never carried (cf. RFC 7661).
  const int32_t configured = configured_.load(std::memory_order_relaxed);
  uint64_t w = adapt_.load(std::memory_order_relaxed);
  uint64_t nw;
  bool raised;
  do {
    const int32_t e = LimitOf(w);
    if (e >= configured || level < e - 1) return false;
    uint32_t backoff = BackoffOf(w);
    bool probing = (w & kProbingBit) != 0;
    if (probing && level >= e) {  // the connection that used the raised level got through
      probing = false;
      backoff = 0;
    }
    const uint64_t successes = SuccessesOf(w) + 1;
    const uint64_t needed = static_cast<uint64_t>(std::max(e, 1)) << backoff;
    raised = successes >= needed;
    nw = raised ? Pack(e + 1, 0, backoff, true) : Pack(e, successes, backoff, probing);
  } while (
      !adapt_.compare_exchange_weak(w, nw, std::memory_order_acq_rel, std::memory_order_relaxed));
  if (raised) NoteMove(LimitMove::Kind::kRaised, LimitOf(nw), now_nanos, 0, "", 0);
  return raised;
}

void HostState::RecordFailure(int64_t now_nanos) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  consecutive_failures_.fetch_add(1, std::memory_order_relaxed);
  last_failure_.store(now_nanos, std::memory_order_relaxed);
  int64_t until = now_nanos + retry_nanos_.load(std::memory_order_relaxed);
  if (until == 0) until = 1;  // 0 means reachable
  failed_until_.store(until, std::memory_order_release);
  probe_in_flight_.store(false, std::memory_order_release);
}

bool HostState::RecordBusy(int64_t now_nanos, int reply_code, std::string_view enhanced,
                           uint8_t rule) {
  busy_replies_.fetch_add(1, std::memory_order_relaxed);
  // This connection still holds its slot, so `open` counts it.
  const int32_t open = active_.load(std::memory_order_acquire);
  if (!adaptive_.load(std::memory_order_relaxed) || open <= 1) {
    if (open <= 1) {
      NoteMove(LimitMove::Kind::kFailedAtOne, limit(), now_nanos, reply_code, enhanced, rule);
    }
    RecordFailure(now_nanos);
    return true;
  }
  const int32_t floor = adaptive_floor_.load(std::memory_order_relaxed);
  uint64_t w = adapt_.load(std::memory_order_relaxed);
  uint64_t nw;
  do {
    const int32_t e = LimitOf(w);
    // The receiver refused the open-th connection: it takes fewer than `open`.
    const int32_t lowered = std::min(e, std::max(floor, std::min(e, open) - 1));
    uint32_t backoff = BackoffOf(w);
    if (w & kProbingBit) backoff = std::min(backoff + 1, kMaxBackoff);  // the raise failed
    nw = Pack(lowered, 0, backoff, false);
    if (nw == w) break;
  } while (
      !adapt_.compare_exchange_weak(w, nw, std::memory_order_acq_rel, std::memory_order_relaxed));
  NoteMove(LimitMove::Kind::kLowered, LimitOf(nw), now_nanos, reply_code, enhanced, rule);
  return false;
}

namespace {
uint64_t StatusPart(std::string_view* s) {
  uint64_t v = 0;
  while (!s->empty() && s->front() >= '0' && s->front() <= '9') {
    v = v * 10 + (s->front() - '0');
    s->remove_prefix(1);
  }
  if (!s->empty() && s->front() == '.') s->remove_prefix(1);
  return std::min<uint64_t>(v, 1023);
}
constexpr uint64_t kNoStatus = 7;  // status class field value meaning "no enhanced status"
}  // namespace

void HostState::NoteMove(LimitMove::Kind kind, int32_t to, int64_t now, int code,
                         std::string_view enhanced, uint8_t rule) {
  uint64_t cls = kNoStatus, subject = 0, detail = 0;
  if (!enhanced.empty()) {
    std::string_view s = enhanced;
    cls = std::min<uint64_t>(StatusPart(&s), 6);
    subject = StatusPart(&s);
    detail = StatusPart(&s);
  }
  const uint64_t limit26 = std::min<uint64_t>(static_cast<uint32_t>(to), (1u << 26) - 1);
  const uint64_t packed = uint64_t(kind) | uint64_t(rule & 3) << 2 |
                          uint64_t(std::clamp(code, 0, 1023)) << 4 | cls << 14 | subject << 17 |
                          detail << 27 | limit26 << 37;
  last_move_.store(packed, std::memory_order_relaxed);
  last_move_nanos_.store(now, std::memory_order_relaxed);
}

LimitMove HostState::last_move() const {
  const uint64_t p = last_move_.load(std::memory_order_relaxed);
  LimitMove m;
  m.kind = static_cast<LimitMove::Kind>(p & 3);
  m.rule = static_cast<uint8_t>((p >> 2) & 3);
  m.reply_code = static_cast<int>((p >> 4) & 1023);
  const uint64_t cls = (p >> 14) & 7;
  if (cls != kNoStatus && m.kind != LimitMove::Kind::kRaised) {
    m.enhanced = StrCat(cls, ".", (p >> 17) & 1023, ".", (p >> 27) & 1023);
  }
  const uint64_t to = p >> 37;
  m.to = to == (1u << 26) - 1 ? INT32_MAX : static_cast<int32_t>(to);
  m.at_nanos = last_move_nanos_.load(std::memory_order_relaxed);
  return m;
}

std::string LimitMove::ToString(int64_t now_nanos) const {
  const int64_t ago = std::max<int64_t>(0, (now_nanos - at_nanos) / kNanosPerSecond);
  std::string reply = StrCat(reply_code, enhanced.empty() ? "" : " ", enhanced);
  switch (kind) {
    case Kind::kNone:
      return "";
    case Kind::kLowered:
      return StrCat("lowered to ", to, " by ", reply, ", ", ago, " s ago");
    case Kind::kRaised:
      return StrCat("raised to ", to, " after successes at the limit, ", ago, " s ago");
    case Kind::kFailedAtOne:
      return StrCat("marked failed: ", reply, " with a single connection open, ", ago, " s ago");
  }
  return "";
}

HostState* HostRegistry::GetOrCreate(const Endpoint& endpoint, std::string_view name,
                                     const HostConfig& config, int64_t now_nanos) {
  MutexLock lock(&mu_);
  auto& slot = hosts_[endpoint];
  if (slot == nullptr) {
    uint32_t index = next_index_;
    if (!free_indices_.empty()) {
      index = free_indices_.back();
      free_indices_.pop_back();
    } else {
      ++next_index_;
    }
    slot = std::make_unique<HostState>(
        endpoint, name.empty() ? endpoint.address.ToString() : std::string(name), config, index);
    created_.fetch_add(1, std::memory_order_relaxed);
  } else {
    slot->Configure(config);
  }
  slot->NotePlanned(now_nanos);
  return slot.get();
}

size_t HostRegistry::EvictIdle(const std::function<bool(const HostState*)>& referenced,
                               int64_t now_nanos, int64_t recent_nanos) {
  std::vector<HostState*> gone;
  {
    MutexLock lock(&mu_);
    for (auto it = hosts_.begin(); it != hosts_.end();) {
      HostState* h = it->second.get();
      if (referenced(h) || now_nanos - h->last_planned() < recent_nanos || !h->Idle(now_nanos) ||
          !h->ClaimDead()) {
        ++it;
        continue;
      }
      free_indices_.push_back(h->index());
      gone.push_back(it->second.release());
      hosts_.erase(it++);
    }
  }
  evicted_.fetch_add(gone.size(), std::memory_order_relaxed);
  // Outside the mutex: Retire may run deleters.
  for (HostState* h : gone) epoch::RetireObject(h);
  return gone.size();
}

LimitGroup* HostRegistry::GetOrCreateGroup(std::string_view pattern, int32_t limit) {
  MutexLock lock(&mu_);
  auto& slot = groups_[std::string(pattern)];
  if (slot == nullptr) {
    slot = std::make_unique<LimitGroup>(std::string(pattern), limit);
  } else {
    slot->SetLimit(limit);
  }
  return slot.get();
}

void HostRegistry::ForEachGroup(const std::function<void(const LimitGroup&)>& fn) const {
  MutexLock lock(&mu_);
  for (const auto& [pattern, g] : groups_) fn(*g);
}

HostState* HostRegistry::Find(const Endpoint& endpoint) const {
  MutexLock lock(&mu_);
  auto it = hosts_.find(endpoint);
  return it == hosts_.end() ? nullptr : it->second.get();
}

size_t HostRegistry::size() const {
  MutexLock lock(&mu_);
  return hosts_.size();
}

void HostRegistry::ForEach(const std::function<void(const HostState&)>& fn) const {
  MutexLock lock(&mu_);
  for (const auto& [ep, h] : hosts_) fn(*h);
}

std::vector<const HostState*> HostRegistry::Snapshot() const {
  MutexLock lock(&mu_);
  std::vector<const HostState*> out;
  out.reserve(hosts_.size());
  for (const auto& [ep, h] : hosts_) out.push_back(h.get());
  return out;
}

}  // namespace mxsched
