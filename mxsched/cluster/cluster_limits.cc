#include "mxsched/cluster/cluster_limits.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"

namespace mxsched::io {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int kTickMs = 100;
constexpr int kProbeMs = 500;
constexpr size_t kMaxOwed = 100'000;
constexpr char kAnyEpoch[] = "*";  // acquire within this process's rejoin share
// Hand-off (DESIGN §7 rule 10): an idle lease is released after this long unused; a right
// to hand off lasts this long after the grant that gave it (then a grant renews it).
constexpr int64_t kIdleNanos = 100 * kMs;
constexpr int64_t kRightNanos = 1000 * kMs;
constexpr int64_t kRevokedKeepNanos = 5000 * kMs;

// The keys and limits of an ask, as one string: an idle lease passes only to an ask with
// the same.
std::string Signature(const std::vector<ClusterKey>& keys) {
  std::string sig;
  for (const ClusterKey& k : keys) sig += StrCat(k.key, "\n", k.limit, "\n");
  return sig;
}

// BORN_MS of a fleet epoch "BORN_MS:CREATOR" (Redis clock).
int64_t EpochBorn(const std::string& epoch) {
  int64_t v = 0;
  for (char c : epoch) {
    if (c < '0' || c > '9') break;
    v = v * 10 + (c - '0');
  }
  return v;
}

// KEYS: per limit key K, three keys: K (leases), K:w (waiters by wait start), K:wx (waiter
// expiry); then the fleet epoch key and the workers set. ARGV: id, lease_ms, wait (0/1),
// waiter_ttl_ms, warmup_ms, creator (client id, for a new epoch), vouch (the epoch the
// caller vouches Redis knows the fleet in, "*" within its rejoin share, or ""), channel
// prefix, then one limit per key. Returns {granted
// (1/0), full_mask, clients, epoch, warm_left_ms, counts...} (clients: members of the
// workers set, so the share a failure would fall back to is as fresh as the last acquire;
// bit i-1 of full_mask set when key i was full; with wait=1 the id queued there, keeping
// its place if already queued). A key has room for `id` when its live leases plus the
// waiters queued ahead of `id` (all of them, if `id` is not queued) are below the limit: a
// freed slot goes to the longest waiter, not to whoever asks first. Not granted, `id` keeps
// a place only where the key was full: a queue whose key has room for it now (another key
// holds it back) it leaves, waking the waiters behind it as a release would — else they
// would count it ahead of them and a free slot would idle until their re-check (DESIGN §7).
// Fleet throttles (DESIGN §12 rule 10; the block between the >>> and <<< marks): KEYS
// after the triples hold T throttle keys (before the epoch and workers keys), each the next
// free instant in µs of the Redis clock; ARGV ends with their spacings (µs), the earliest
// the caller may start (µs from now: its own share while rejoining), its throttle wait (µs)
// and T. When every key has room, the start is reserved at the latest of the throttles'
// next instants and that earliest — all of them move on by their spacing — unless that
// is more than the wait away: then nothing at all is taken. The reply carries, after
// warm_left_ms, the wait in µs (granted: until the reserved instant; refused: what it would
// have been), the 1-based throttle that decided it (0: none — the warm-up did, when the
// ask has no lease key) and the Redis clock in µs (the client maps the instant to its own
// clock by the least-delayed answer it has seen: ClusterClient::ToSteady).
// The epoch key ("BORN_MS:CREATOR") is created when missing — Redis restarted, flushed, or
// the fleet's first start — and for warmup_ms after BORN_MS (the warm-up) nothing is granted
// to a caller that does not vouch for this epoch: the survivors of the old store re-register
// their leases by their next heartbeat (DESIGN §7 rule 4b).
constexpr char kAcquireLua[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local T = tonumber(ARGV[#ARGV])  -- fleet throttles (DESIGN §12 rule 10)
local n = (#KEYS - 2 - T) / 3
local clients = redis.call('ZCARD', KEYS[#KEYS])
local ep = redis.call('GET', KEYS[#KEYS - 1])
if not ep then
  ep = now .. ':' .. ARGV[6]
  redis.call('SET', KEYS[#KEYS - 1], ep)
end
local warm_left = tonumber(string.match(ep, '^(%d+)') or 0) + tonumber(ARGV[5]) - now
if warm_left < 0 then warm_left = 0 end
local warming = warm_left > 0 and ARGV[7] ~= ep and ARGV[7] ~= '*'
local counts, full, queued, mask = {}, {}, {}, 0
for i = 1, n do
  local L, W, WX = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
  local ahead = 0
  if redis.call('EXISTS', W) == 1 then  -- the common case, nobody waiting, skips all this
    local gone = redis.call('ZRANGEBYSCORE', WX, '-inf', now)
    if #gone > 0 then
      redis.call('ZREM', W, unpack(gone))
      redis.call('ZREM', WX, unpack(gone))
    end
    ahead = redis.call('ZRANK', W, id)
    if ahead then
      queued[i] = true
    else
      ahead = redis.call('ZCARD', W)
    end
  end
  local c = redis.call('ZCARD', L)
  counts[i] = c
  if warming or c + ahead >= tonumber(ARGV[8 + i]) then
    full[i] = true
    mask = mask + 2 ^ (i - 1)
  end
end
-- >>> fleet throttles: one start on each, all or none with the leases
local wait_us, blocking = 0, 0
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if mask == 0 and T > 0 then
  local at = now_us + tonumber(ARGV[#ARGV - 2])
  -- No lease key (else warming made them full): the start waits out the warm-up.
  if warming then at = math.max(at, now_us + warm_left * 1000) end
  for j = 1, T do
    local v = tonumber(redis.call('GET', KEYS[3*n + j]) or 0) or 0
    if v > at then at, blocking = v, j end
  end
  wait_us = at - now_us
  if wait_us > tonumber(ARGV[#ARGV - 1]) then
    return {0, 0, clients, ep, warm_left, wait_us, blocking, now_us, unpack(counts)}
  end
  for j = 1, T do
    local nxt = at + tonumber(ARGV[8 + n + j])
    redis.call('SET', KEYS[3*n + j], string.format('%d', nxt), 'PX',
               string.format('%d', math.floor((nxt - now_us) / 1000) + 1000))
  end
end
-- <<< fleet throttles
if mask == 0 then
  for i = 1, n do
    redis.call('ZADD', KEYS[3*i-2], now + lease_ms, id)
    redis.call('PEXPIRE', KEYS[3*i-2], lease_ms + 60000)
    if queued[i] then
      redis.call('ZREM', KEYS[3*i-1], id)
      redis.call('ZREM', KEYS[3*i], id)
    end
    counts[i] = counts[i] + 1
  end
  return {1, 0, clients, ep, warm_left, wait_us, blocking, now_us, unpack(counts)}
end
for i = 1, n do
  if queued[i] and not full[i] then
    -- Room here, held back by another key: leave this queue, and tell the waiters behind
    -- (as a release does), so no slot idles behind a waiter that cannot use it.
    local W, WX = KEYS[3*i-1], KEYS[3*i]
    redis.call('ZREM', W, id)
    redis.call('ZREM', WX, id)
    local free = tonumber(ARGV[8 + i]) - counts[i]
    if free > 0 then
      for _, w in ipairs(redis.call('ZRANGE', W, 0, free - 1)) do
        local client = string.match(w, '^(.*):')
        if not client or redis.call('PUBLISH', ARGV[8] .. client, w) == 0 then
          redis.call('ZREM', W, w)
          redis.call('ZREM', WX, w)
        end
      end
    end
  end
end
if ARGV[3] == '1' then
  local ttl = tonumber(ARGV[4])
  local joined = false
  for i = 1, n do
    if full[i] and (queued[i] or not joined) then
      joined = true
      redis.call('ZADD', KEYS[3*i-1], 'NX', now, id)
      redis.call('ZADD', KEYS[3*i], now + ttl, id)
      redis.call('PEXPIRE', KEYS[3*i-1], ttl + 60000)
      redis.call('PEXPIRE', KEYS[3*i], ttl + 60000)
    end
  end
end
return {0, mask, clients, ep, warm_left, 0, 0, now_us, unpack(counts)}
)lua";

// KEYS: triples as above. ARGV: id, channel prefix, then one limit per key. Drops `id`'s
// lease and its places in the queues; where a queue is not empty, publishes to the clients
// owning the longest waiters, one message per free slot, each naming its waiter (a client
// that is gone — PUBLISH reaches nobody — loses its waiter's place). Returns how many woke.
constexpr char kReleaseLua[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local woke = 0
for i = 1, #KEYS / 3 do
  local L, W, WX = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  redis.call('ZREM', L, id)
  if redis.call('ZREM', W, id) == 1 then redis.call('ZREM', WX, id) end
  if redis.call('EXISTS', W) == 1 then
    local gone = redis.call('ZRANGEBYSCORE', WX, '-inf', now)
    if #gone > 0 then
      redis.call('ZREM', W, unpack(gone))
      redis.call('ZREM', WX, unpack(gone))
    end
    redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
    local free = tonumber(ARGV[2 + i]) - redis.call('ZCARD', L)
    if free > 0 then
      for _, w in ipairs(redis.call('ZRANGE', W, 0, free - 1)) do
        local client = string.match(w, '^(.*):')
        if client and redis.call('PUBLISH', ARGV[2] .. client, w) > 0 then
          woke = woke + 1
        else
          redis.call('ZREM', W, w)
          redis.call('ZREM', WX, w)
        end
      end
    end
  end
end
return woke
)lua";

// KEYS: the workers set, the fleet epoch key, then lease keys. ARGV: client id, lease_ms,
// complete (1: sent while not degraded, so every lease the client holds is in Redis after
// this call), warmup_ms, then per lease key the ids this client holds there,
// comma-separated. Heartbeats the client (score: the Redis time, negated while not
// complete), renews every lease — adding back any Redis lost (a restart, a flush) — drops
// clients not heard from for lease_ms, creates the epoch key if it is missing (as acquire
// does), and returns {distinct live workers, leases added back, live clients, oldest
// complete heartbeat (0 when some client is not complete), now, epoch, warm_left_ms, then
// the live leases on each lease key (the first 1000): the fleet's counts operators see}.
// A lease key may come with no ids (a key this client only waits on): counted, not renewed.
constexpr char kRefreshLua[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
local exp = now + lease_ms
local stale = now - lease_ms
local ep = redis.call('GET', KEYS[2])
if not ep then
  ep = now .. ':' .. ARGV[1]
  redis.call('SET', KEYS[2], ep)
end
local warm_left = tonumber(string.match(ep, '^(%d+)') or 0) + tonumber(ARGV[4]) - now
if warm_left < 0 then warm_left = 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. -stale, '(' .. stale)
redis.call('ZADD', KEYS[1], ARGV[3] == '1' and now or -now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease_ms + 60000)
local added = 0
for i = 3, #KEYS do
  for id in string.gmatch(ARGV[i + 2], '[^,]+') do
    added = added + redis.call('ZADD', KEYS[i], exp, id)
  end
  redis.call('PEXPIRE', KEYS[i], lease_ms + 60000)
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local seen, workers, oldest = {}, 0, now
for i = 1, #members, 2 do
  local w = string.match(members[i], '^([^.]*)')
  if not seen[w] then
    seen[w] = true
    workers = workers + 1
  end
  local hb = tonumber(members[i + 1])
  if hb < 0 then hb = 0 end
  if hb < oldest then oldest = hb end
end
local out = {workers, added, #members / 2, oldest, now, ep, warm_left}
for i = 3, math.min(#KEYS, 1002) do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return out
)lua";

// Several acquires and releases in one call (DESIGN §7, "Batching and hand-off"): each
// runs the acquire or release script above, unchanged, as a function of its own KEYS and
// ARGV, in the order given — what the same commands sent one by one would do, in one round
// trip and one command. ARGV: n, then per op its script (1 acquire, 2 release), key count,
// arg count and hand-off key count R, then every op's args in order; KEYS: per op its keys,
// then its R hand-off keys (an acquire's: one set K:r per limit key K, in the order of its
// triples). Returns one reply per op; an op that fails is an error element (pcall), the
// others run. After an acquire the call does the hand-off bookkeeping (DESIGN §7 rule 10)
// and appends two elements to its reply: granted, the mask of keys whose queue is empty
// (the caller, ARGV[6], joins K:r: it may hand its leases on K to its next session until
// told otherwise); queued (wait = 1, not granted), every key with waiters has its K:r
// emptied and each client in it told, on its wake-up channel, "!NOW_US KEY". Then the
// Redis time in µs.
constexpr char kBatchHead[] = "local op_acquire = function(KEYS, ARGV)\n";
constexpr char kBatchMid[] = "\nend\nlocal op_release = function(KEYS, ARGV)\n";
constexpr char kBatchTail[] = R"lua(
end
-- A lease's domain count moves with its reused connection (DESIGN §13 rule 3). KEYS: the
-- old key's triple, the new key's triple. ARGV: id, lease_ms, channel prefix, old limit,
-- new limit, has old (1/0), has new (1/0). The new key is taken only if it has room as an
-- acquire that does not wait would find it (live leases plus every waiter below the
-- limit); then the old one is released as the release script does (its waiters woken).
-- Returns {moved, count on the new key}; not moved: nothing changed.
local op_move = function(KEYS, ARGV)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local id, lease_ms = ARGV[1], tonumber(ARGV[2])
  local c = 0
  if ARGV[7] == '1' then
    local L, W, WX = KEYS[4], KEYS[5], KEYS[6]
    redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
    local ahead = 0
    if redis.call('EXISTS', W) == 1 then
      local gone = redis.call('ZRANGEBYSCORE', WX, '-inf', now)
      if #gone > 0 then
        redis.call('ZREM', W, unpack(gone))
        redis.call('ZREM', WX, unpack(gone))
      end
      ahead = redis.call('ZCARD', W)
    end
    c = redis.call('ZCARD', L)
    if not redis.call('ZSCORE', L, id) then
      if c + ahead >= tonumber(ARGV[5]) then return {0, c} end
      c = c + 1
    end
    redis.call('ZADD', L, now + lease_ms, id)
    redis.call('PEXPIRE', L, lease_ms + 60000)
  end
  if ARGV[6] == '1' then op_release({KEYS[1], KEYS[2], KEYS[3]}, {id, ARGV[3], ARGV[4]}) end
  return {1, c}
end
-- A parked connection's lease (DESIGN §13 rule 7). KEYS: the K:r set of each of its keys.
-- ARGV: client id, lease_ms. The client joins each K:r: a waiter that queues on K tells it
-- ("!NOW_US K", as it takes back a hand-off right) and it closes a parked connection there.
local op_park = function(KEYS, ARGV)
  for i = 1, #KEYS do
    redis.call('SADD', KEYS[i], ARGV[1])
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) + 60000)
  end
  return 1
end
local ops = {op_acquire, op_release, op_move, op_park}
local n = tonumber(ARGV[1])
local ki, ai, out = 1, 2 + 4 * n, {}
for o = 1, n do
  local kind = tonumber(ARGV[4 * o - 2])
  local nk, na, nr = tonumber(ARGV[4 * o - 1]), tonumber(ARGV[4 * o]), tonumber(ARGV[4 * o + 1])
  local k, a = {unpack(KEYS, ki, ki + nk - 1)}, {unpack(ARGV, ai, ai + na - 1)}
  local ok, r = pcall(ops[kind], k, a)
  if ok and kind == 1 and type(r) == 'table' then
    local t = redis.call('TIME')
    local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local rights = 0
    for i = 1, nr do
      local W, R = k[3 * i - 1], KEYS[ki + nk + i - 1]
      if r[1] == 1 then
        if redis.call('EXISTS', W) == 0 then
          redis.call('SADD', R, a[6])
          redis.call('PEXPIRE', R, tonumber(a[2]) + 60000)
          rights = rights + 2 ^ (i - 1)
        end
      elseif a[3] == '1' and redis.call('EXISTS', W) == 1 then
        for _, c in ipairs(redis.call('SMEMBERS', R)) do
          redis.call('PUBLISH', a[8] .. c, '!' .. string.format('%d', now_us) .. ' ' .. k[3 * i - 2])
        end
        redis.call('DEL', R)
      end
    end
    r[#r + 1] = rights
    r[#r + 1] = now_us
  end
  ki, ai = ki + nk + nr, ai + na
  if ok then
    out[o] = r
  elseif type(r) == 'table' and r.err then
    out[o] = r
  else
    out[o] = {err = tostring(r)}
  end
end
return out
)lua";

// KEYS: one lease key. Live leases on it, by the Redis clock.
constexpr char kCountLua[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
)lua";

std::string RandomHex() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::vector<std::string> Triples(const std::vector<ClusterKey>& keys) {
  std::vector<std::string> out;
  for (const ClusterKey& k : keys) {
    out.push_back(k.key);
    out.push_back(k.key + ":w");
    out.push_back(k.key + ":wx");
  }
  return out;
}

bool HasKey(const std::vector<ClusterKey>& keys, const std::string& key) {
  for (const ClusterKey& k : keys) {
    if (k.key == key) return true;
  }
  return false;
}

absl::Status ReplyStatus(const absl::StatusOr<RedisReply>& r) {
  if (!r.ok()) return r.status();
  if (r->is_error()) return absl::UnavailableError(StrCat("Redis: ", r->str));
  return absl::OkStatus();
}

}  // namespace

std::string_view ClusterFailureModeName(ClusterFailureMode m) {
  switch (m) {
    case ClusterFailureMode::kShare:
      return "share";
    case ClusterFailureMode::kClosed:
      return "closed";
    case ClusterFailureMode::kOpen:
      return "open";
  }
  return "?";
}

absl::StatusOr<std::optional<ClusterOptions>> ClusterOptionsFromConfig(const Config& config) {
  if (config.cluster_limits.empty()) return std::nullopt;
  auto url = ParseRedisUrl(config.cluster_limits);
  if (!url.ok()) return url.status();
  ClusterOptions o;
  o.redis = *url;
  o.name = config.cluster_name;
  o.lease_seconds = static_cast<int>(config.cluster_lease_seconds);
  o.startup_share = config.cluster_startup_share;
  if (config.cluster_failure_mode == "closed") {
    o.failure_mode = ClusterFailureMode::kClosed;
  } else if (config.cluster_failure_mode == "open") {
    o.failure_mode = ClusterFailureMode::kOpen;
  } else if (config.cluster_failure_mode == "share") {
    o.failure_mode = ClusterFailureMode::kShare;
  } else {
    return absl::InvalidArgumentError(StrCat("cluster_failure_mode \"", config.cluster_failure_mode,
                                             "\" unknown (expected share, closed or open)"));
  }
  return std::optional<ClusterOptions>(std::move(o));
}

// ---------------------------------------------------------------------------------------
// ClusterLimits

ClusterLimits::ClusterLimits(ClusterOptions options)
    : options_(std::move(options)),
      tag_(StrCat("{", options_.name, "}")),
      worker_id_(RandomHex()) {}

std::string ClusterLimits::NewClientId() {
  return StrCat(worker_id_, ".", next_client_.fetch_add(1, std::memory_order_relaxed));
}

std::string ClusterLimits::HostKey(const Endpoint& e) const {
  return StrCat(tag_, ":h:", e.ToString());
}

std::string ClusterLimits::DomainKey(std::string_view domain) const {
  return StrCat(tag_, ":d:", ToLower(domain));
}

// Binding names are [A-Za-z0-9_.-] (no ':'), so BINDING:REST cannot be read two ways.
std::string ClusterLimits::ProviderKey(std::string_view pattern) const {
  return StrCat(tag_, ":p:", ToLower(pattern));
}

// Scopes are ThrottleRef::scope ("global", "example.com", "host 192.0.2.1", "binding b1 to
// x.test"): never empty, lower-case names, words separated by single spaces.
std::string ClusterLimits::ThrottleKey(std::string_view scope, bool messages) const {
  return StrCat(tag_, messages ? ":t:m:" : ":t:c:", scope);
}

std::string ClusterLimits::BindingHostKey(std::string_view binding, const Endpoint& e) const {
  return StrCat(tag_, ":bh:", binding, ":", e.ToString());
}

std::string ClusterLimits::BindingDomainKey(std::string_view binding,
                                            std::string_view domain) const {
  return StrCat(tag_, ":bd:", binding, ":", ToLower(domain));
}

void ClusterLimits::ReportFailure(const absl::Status& why) {
  ClusterMode was = mode();
  do {
    if (was == ClusterMode::kDegraded) return;
  } while (!mode_.compare_exchange_weak(was, ClusterMode::kDegraded, std::memory_order_acq_rel));
  if (was == ClusterMode::kRejoining) {
    // The same outage: the switch's snapshot and share stay as they were.
    fprintf(stderr, "mxsched: cluster limits: Redis %s lost again while rejoining (%s)\n",
            options_.redis.ToString().c_str(), std::string(why.message()).c_str());
    return;
  }
  int64_t workers;
  {
    MutexLock lock(&mu_);
    degraded_since_ = SteadyNowNanos();
    workers = live_workers();
    // 0: never seen (the worst is assumed); else at least this process's own clients.
    const int64_t seen = live_clients_.load(std::memory_order_relaxed);
    share_clients_ = seen == 0 ? 0 : std::max(seen, my_clients_.load(std::memory_order_relaxed));
    for (auto& [key, h] : held_) h.at_switch = h.here;
  }
  stats_.mode_switches.fetch_add(1, std::memory_order_relaxed);
  fprintf(stderr,
          "mxsched: cluster limits: Redis %s unreachable (%s); cluster_failure_mode = %s until "
          "it answers (%lld live workers last seen)\n",
          options_.redis.ToString().c_str(), std::string(why.message()).c_str(),
          std::string(ClusterFailureModeName(options_.failure_mode)).c_str(),
          static_cast<long long>(workers));
}

void ClusterLimits::BeginRejoin(int64_t redis_now_ms) {
  ClusterMode expected = ClusterMode::kDegraded;
  if (!mode_.compare_exchange_strong(expected, ClusterMode::kRejoining,
                                     std::memory_order_acq_rel)) {
    return;
  }
  {
    MutexLock lock(&mu_);
    rejoin_since_ms_ = redis_now_ms;
    rejoin_deadline_ = SteadyNowNanos() + int64_t{options_.lease_seconds} * 1'000'000'000;
  }
  recovery_epoch_.fetch_add(1, std::memory_order_acq_rel);
  fprintf(stderr,
          "mxsched: cluster limits: Redis %s answers again; open connections re-registered, "
          "shares kept until every worker has (at most %d s)\n",
          options_.redis.ToString().c_str(), options_.lease_seconds);
}

bool ClusterLimits::NoteEpoch(const std::string& epoch, int64_t warm_left_ms) {
  MutexLock lock(&mu_);
  reached_ = true;
  if (epoch == epoch_) {
    if (warm_left_ms == 0) knows_fleet_ = true;
    return false;
  }
  const bool lost = !epoch_.empty();
  if (lost) stats_.store_resets.fetch_add(1, std::memory_order_relaxed);
  epoch_ = epoch;
  // A newcomer (nothing known before) vouches once the warm-up is over; a survivor once its
  // rejoin has finished (MaybeFinishRejoin).
  knows_fleet_ = !lost && warm_left_ms == 0;
  return lost;
}

std::string ClusterLimits::Vouch() const {
  MutexLock lock(&mu_);
  return knows_fleet_ && mode() == ClusterMode::kNormal ? epoch_ : std::string();
}

void ClusterLimits::StoreLost(int64_t redis_now_ms) {
  ClusterMode was = mode();
  if (was == ClusterMode::kDegraded) return;  // the probe's reply starts the rejoin
  {
    MutexLock lock(&mu_);
    if (was == ClusterMode::kNormal) {
      // As at a switch to the failure mode: the share and this process's holdings now.
      degraded_since_ = SteadyNowNanos();
      const int64_t seen = live_clients_.load(std::memory_order_relaxed);
      share_clients_ = std::max(seen, my_clients_.load(std::memory_order_relaxed));
      for (auto& [key, h] : held_) h.at_switch = h.here;
    }
    rejoin_since_ms_ = redis_now_ms;
    rejoin_deadline_ = SteadyNowNanos() + int64_t{options_.lease_seconds} * 1'000'000'000;
  }
  mode_.store(ClusterMode::kRejoining, std::memory_order_release);
  if (was == ClusterMode::kNormal) stats_.mode_switches.fetch_add(1, std::memory_order_relaxed);
  recovery_epoch_.fetch_add(1, std::memory_order_acq_rel);
  fprintf(stderr,
          "mxsched: cluster limits: Redis %s lost its keys (restart or flush); open connections "
          "re-registered, shares kept until every worker has (at most %d s)\n",
          options_.redis.ToString().c_str(), options_.lease_seconds);
}

void ClusterLimits::MaybeFinishRejoin(int64_t clients, int64_t oldest_heartbeat_ms,
                                      int64_t redis_now_ms) {
  if (!rejoining()) return;
  {
    MutexLock lock(&mu_);
    // A worker this process never saw (it joined after our last look, or never reached
    // Redis before the outage) holds connections Redis learns of only from its probe: wait
    // one warm-up, in which every live worker probes (every 500 ms) and re-registers.
    const bool fleet_back = redis_now_ms - rejoin_since_ms_ >= options_.warmup_ms &&
                            clients >= share_clients_ && oldest_heartbeat_ms >= rejoin_since_ms_;
    if (!fleet_back && SteadyNowNanos() < rejoin_deadline_) return;
    knows_fleet_ = true;  // Redis has every survivor's leases again
  }
  ClusterMode expected = ClusterMode::kRejoining;
  if (!mode_.compare_exchange_strong(expected, ClusterMode::kNormal, std::memory_order_acq_rel)) {
    return;
  }
  stats_.mode_switches.fetch_add(1, std::memory_order_relaxed);
  fprintf(stderr, "mxsched: cluster limits: Redis %s: every worker is back; limits shared again\n",
          options_.redis.ToString().c_str());
}

FleetStatus ClusterLimits::Status() const {
  FleetStatus f;
  switch (mode()) {
    case ClusterMode::kNormal:
      f.mode = "normal";
      break;
    case ClusterMode::kRejoining:
      f.mode = "rejoining";
      break;
    case ClusterMode::kDegraded:
      f.mode = std::string(ClusterFailureModeName(options_.failure_mode));
      break;
  }
  auto get = [](const std::atomic<int64_t>& a) { return a.load(std::memory_order_relaxed); };
  f.live_workers = live_workers();
  f.commands = get(stats_.commands);
  f.errors = get(stats_.redis_errors);
  f.mode_switches = get(stats_.mode_switches);
  f.store_resets = get(stats_.store_resets);
  f.leases = get(stats_.leases);
  f.local_leases = get(stats_.local_leases);
  f.waits = get(stats_.waits);
  f.wakeups = get(stats_.wakeups);
  f.discoveries = get(stats_.discoveries);
  f.throttle_waits = get(stats_.throttle_waits);
  f.throttled = get(stats_.throttled);
  for (size_t i = 0; i < f.latency_buckets.size(); ++i) {
    f.latency_buckets[i] = stats_.latency[i].load(std::memory_order_relaxed);
  }
  f.latency_sum_nanos = get(stats_.latency_sum_nanos);
  return f;
}

namespace {
constexpr int64_t kFleetCountMaxAgeNanos = 5'000'000'000;
}  // namespace

int64_t ClusterLimits::FleetCount(const std::string& key) const {
  MutexLock lock(&counts_mu_);
  auto it = fleet_counts_.find(key);
  if (it == fleet_counts_.end() ||
      SteadyNowNanos() - it->second.second > kFleetCountMaxAgeNanos) {
    return -1;
  }
  return it->second.first;
}

void ClusterLimits::NoteFleetCounts(const std::vector<std::string>& keys,
                                    const std::vector<int64_t>& counts) {
  const int64_t now = SteadyNowNanos();
  MutexLock lock(&counts_mu_);
  for (size_t i = 0; i < keys.size() && i < counts.size(); ++i) {
    fleet_counts_[keys[i]] = {counts[i], now};
  }
  absl::erase_if(fleet_counts_, [now](const auto& kv) {
    return now - kv.second.second > kFleetCountMaxAgeNanos;
  });
}

void ClusterLimits::NoteLatency(int64_t nanos) {
  size_t b = 0;
  while (b < kFleetLatencyBoundsNanos.size() && nanos > kFleetLatencyBoundsNanos[b]) ++b;
  stats_.latency[b].fetch_add(1, std::memory_order_relaxed);
  stats_.latency_sum_nanos.fetch_add(nanos, std::memory_order_relaxed);
}

bool ClusterLimits::TryTakeLocal(const std::vector<ClusterKey>& keys,
                                 const std::vector<ClusterThrottle>& throttles,
                                 int64_t throttle_wait_nanos, int64_t* start_in_nanos,
                                 int32_t* throttled) {
  if (start_in_nanos != nullptr) *start_in_nanos = 0;
  if (throttled != nullptr) *throttled = -1;
  // Rejoining after `closed`, the same share holds: the others' open connections may not
  // be in Redis yet.
  const bool share = options_.failure_mode == ClusterFailureMode::kShare ||
                     (options_.failure_mode == ClusterFailureMode::kClosed && rejoining());
  MutexLock lock(&mu_);
  // This process's share: its clients' part of the clients last seen (one client per loop,
  // a process with more loops has more of the fleet's work). None ever seen (Redis away
  // since we started): assume the worst, the floor of 1.
  const int64_t mine = std::max<int64_t>(1, my_clients_.load(std::memory_order_relaxed));
  const int64_t all = share_clients_ > 0 ? share_clients_ : INT32_MAX;
  const bool fresh = SteadyNowNanos() - degraded_since_ < int64_t{options_.lease_seconds} * 1'000'000'000;
  for (const ClusterKey& k : keys) {
    // find, not []: a refused key must not leave an entry behind (nothing would erase it).
    auto it = held_.find(k.key);
    const KeyHolding h = it == held_.end() ? KeyHolding{} : it->second;
    int64_t allowed = k.limit;
    if (share && !reached_) {
      // Never reached Redis: nothing known to share by, nothing held to keep to. The fixed
      // startup share, at once (configurable: 0 waits for Redis).
      allowed = std::min<int64_t>(k.limit, options_.startup_share);
    } else if (share) {
      allowed = std::max<int64_t>(1, k.limit * std::min(mine, all) / all);
      // Right after the switch the others may still hold what only Redis knew: grow on no
      // key beyond what was held here then, so the fleet's total can only fall.
      if (fresh) allowed = std::min(allowed, h.at_switch);
    }
    if (h.here >= allowed) return false;
  }
  if (share && !throttles.empty()) {
    // DESIGN §12 rule 10: this process's share of each rate — the spacing times the keys'
    // divisor (all / mine); never reached Redis: startup_share starts per window.
    if (!reached_ && options_.startup_share <= 0) return false;
    const int64_t now = SteadyNowNanos();
    int64_t at = now;
    int32_t blocking = -1;
    for (size_t j = 0; j < throttles.size(); ++j) {
      auto it = local_next_.find(throttles[j].key);
      if (it != local_next_.end() && it->second > at) {
        at = it->second;
        blocking = static_cast<int32_t>(j);
      }
    }
    if (at - now > throttle_wait_nanos) {
      if (throttled != nullptr) *throttled = blocking;
      return false;
    }
    if (local_next_.size() > 4096) absl::erase_if(local_next_, [now](const auto& kv) { return kv.second <= now; });
    for (const ClusterThrottle& t : throttles) {
      const double w = reached_ ? ShareSpacing(t, all) : static_cast<double>(t.count) / options_.startup_share;
      local_next_[t.key] = at + static_cast<int64_t>(static_cast<double>(t.interval_us) * 1000.0 * std::max(1.0, w));
    }
    if (start_in_nanos != nullptr) *start_in_nanos = at - now;
  }
  for (const ClusterKey& k : keys) ++held_[k.key].here;
  return true;
}

double ClusterLimits::ShareSpacing(const ClusterThrottle& t, int64_t all) const {
  // N/W starts per window: the spacing times W = all / mine, at most N (one start per
  // window: the floor, as a key's share is at least 1). Below 8.8e13 ns (S <= 86,400).
  const int64_t mine = std::max<int64_t>(1, my_clients_.load(std::memory_order_relaxed));
  if (all <= 0 || all == INT32_MAX) return t.count;
  return std::clamp(static_cast<double>(all) / static_cast<double>(std::min(mine, all)), 1.0,
                    static_cast<double>(std::max(1, t.count)));
}

void ClusterLimits::NoteFleetStart(const std::vector<ClusterThrottle>& throttles,
                                   int64_t start_nanos) {
  if (throttles.empty()) return;
  const int64_t all = live_clients_.load(std::memory_order_relaxed);
  MutexLock lock(&mu_);
  for (const ClusterThrottle& t : throttles) {
    const int64_t next =
        start_nanos + static_cast<int64_t>(static_cast<double>(t.interval_us) * 1000.0 * ShareSpacing(t, all));
    int64_t& v = local_next_[t.key];
    v = std::max(v, next);
  }
  if (local_next_.size() > 4096) {
    const int64_t now = SteadyNowNanos();
    absl::erase_if(local_next_, [now](const auto& kv) { return kv.second <= now; });
  }
}

void ClusterLimits::AddHeld(const std::vector<ClusterKey>& keys) {
  MutexLock lock(&mu_);
  for (const ClusterKey& k : keys) ++held_[k.key].here;
}

void ClusterLimits::RemoveHeld(const std::vector<ClusterKey>& keys) {
  MutexLock lock(&mu_);
  for (const ClusterKey& k : keys) {
    auto it = held_.find(k.key);
    if (it == held_.end()) continue;
    if (it->second.here > 0) --it->second.here;
    if (it->second.here == 0 && mode() == ClusterMode::kNormal) held_.erase(it);  // bounded
  }
}

int64_t ClusterLimits::Held(const std::string& key) const {
  MutexLock lock(&mu_);
  auto it = held_.find(key);
  return it == held_.end() ? 0 : it->second.here;
}

// ---------------------------------------------------------------------------------------
// ClusterClient

struct ClusterClient::Script {
  const char* body;
  size_t index;
};
namespace {
const std::string& BatchLua() {
  static const std::string* body =
      new std::string(StrCat(kBatchHead, kAcquireLua, kBatchMid, kReleaseLua, kBatchTail));
  return *body;
}
struct ScriptBody {
  const char* body;
};
const ScriptBody kScripts[] = {
    {kAcquireLua}, {kReleaseLua}, {kRefreshLua}, {kCountLua}, {BatchLua().c_str()}};
enum ScriptIndex : size_t { kAcquire = 0, kRelease = 1, kRefresh = 2, kCount = 3, kBatch = 4 };
// An op of the batch script only (no script of its own): FleetClient::Move.
constexpr size_t kMoveOp = 100;
constexpr size_t kParkOp = 101;  // FleetClient::Parked
// Ops in one batch call at most (its reply is one array element per op).
constexpr size_t kMaxBatchOps = 64;
}  // namespace

ClusterClient::ClusterClient(Loop* loop, std::shared_ptr<ClusterLimits> limits, bool worker)
    : loop_(loop),
      limits_(std::move(limits)),
      client_id_(limits_->NewClientId()),
      cmd_(loop, RedisOptions{limits_->options().redis, limits_->options().timeout_ms}),
      sub_(loop, RedisOptions{limits_->options().redis, limits_->options().timeout_ms}) {
  shas_.resize(std::size(kScripts));
  for (size_t i = 0; i < std::size(kScripts); ++i) {
    limits_->stats().commands.fetch_add(1, std::memory_order_relaxed);
    cmd_.Command({"SCRIPT", "LOAD", kScripts[i].body}, [this, i](absl::StatusOr<RedisReply> r) {
      if (r.ok() && r->type == RedisReply::Type::kString) shas_[i] = r->str;
    });
  }
  worker_ = worker;
  if (!worker_) return;
  limits_->AddClient(+1);
  sub_.Subscribe(limits_->ChannelPrefix() + client_id_,
                 [this](std::string_view, std::string_view payload) {
                   if (!payload.empty() && payload[0] == '!') return OnRevoke(payload);
                   Wake(std::string(payload), /*by_publish=*/true);
                 });
  seen_epoch_ = limits_->recovery_epoch();
  Refresh();  // heartbeat now: the live-worker count share mode needs
  ArmTick();
}

ClusterClient::~ClusterClient() {
  destroying_ = true;
  if (worker_) limits_->AddClient(-1);
  if (worker_ && !limits_->degraded()) {
    // Leave the workers set now: a rejoin elsewhere need not wait for this client.
    limits_->stats().commands.fetch_add(1, std::memory_order_relaxed);
    cmd_.Command({"ZREM", limits_->WorkersKey(), client_id_}, [](absl::StatusOr<RedisReply>) {});
  }
  ReleaseIdle(/*all=*/true);
  Flush();
  // Releases already sent: let them reach Redis, so the fleet sees the slots free now
  // rather than at lease expiry.
  const int rounds = limits_->options().timeout_ms / 10 + 1;
  for (int i = 0; i < rounds && cmd_.pending() > 0; ++i) loop_->RunOnce(10);
  if (tick_armed_) {
    io_uring_sqe* sqe = loop_->Sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&tick_done_), 0);
    Loop::SetCompletion(sqe, nullptr);
  }
  for (int i = 0; i < 200 && (tick_armed_ || flush_armed_); ++i) loop_->RunOnce(10);
}

std::string ClusterClient::NewId() { return StrCat(client_id_, ":", ++next_id_); }

void ClusterClient::Batched(size_t script, std::vector<std::string> keys,
                            std::vector<std::string> args, RedisConnection::ReplyFn fn,
                            std::vector<std::string> handoff_keys) {
  batch_.push_back(BatchOp{script, std::move(keys), std::move(args), std::move(fn),
                           std::move(handoff_keys)});
  if (batch_.size() >= kMaxBatchOps || destroying_) return Flush();
  if (flush_armed_) return;
  // Sent when the loop comes round (the NOP completes at its next wait), with whatever
  // else this iteration asks: the same moment hiredis would have written it.
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_nop(sqe);
  Loop::SetCompletion(sqe, &flush_done_);
  flush_armed_ = true;
}

void ClusterClient::OnFlush(int, uint32_t) {
  flush_armed_ = false;
  Flush();
}

void ClusterClient::Flush() {
  if (batch_.empty()) return;
  std::vector<BatchOp> ops;
  ops.swap(batch_);
  if (ops.size() == 1 && ops[0].script == kRelease) {
    BatchOp& op = ops[0];
    return Eval(Script{kScripts[op.script].body, op.script}, std::move(op.keys),
                std::move(op.args), std::move(op.fn));
  }
  if (ops.size() > 1) {
    limits_->stats().batched.fetch_add(static_cast<int64_t>(ops.size()), std::memory_order_relaxed);
  }
  std::vector<std::string> keys, args = {StrCat(ops.size())};
  std::vector<RedisConnection::ReplyFn> fns;
  fns.reserve(ops.size());
  for (const BatchOp& op : ops) {
    args.push_back(op.script == kAcquire   ? "1"
                   : op.script == kRelease ? "2"
                   : op.script == kMoveOp  ? "3"
                                           : "4");
    args.push_back(StrCat(op.keys.size()));
    args.push_back(StrCat(op.args.size()));
    args.push_back(StrCat(op.handoff_keys.size()));
  }
  for (BatchOp& op : ops) {
    for (std::string& k : op.keys) keys.push_back(std::move(k));
    for (std::string& k : op.handoff_keys) keys.push_back(std::move(k));
    for (std::string& a : op.args) args.push_back(std::move(a));
    fns.push_back(std::move(op.fn));
  }
  Eval(Script{kScripts[kBatch].body, kBatch}, std::move(keys), std::move(args),
       [fns = std::move(fns)](absl::StatusOr<RedisReply> r) mutable {
         const bool each = r.ok() && r->type == RedisReply::Type::kArray &&
                           r->elements.size() == fns.size();
         for (size_t i = 0; i < fns.size(); ++i) {
           if (each) {
             fns[i](std::move(r->elements[i]));
           } else if (!r.ok() || r->is_error()) {
             fns[i](r);  // the whole call failed: every op with it
           } else {
             fns[i](absl::InternalError("batch: unexpected reply"));
           }
         }
       });
}

void ClusterClient::Eval(const Script& s, std::vector<std::string> keys,
                         std::vector<std::string> args, RedisConnection::ReplyFn fn) {
  // Anything batched goes first: commands reach Redis in the order they were asked for.
  if (s.index != kBatch && s.index != kAcquire && s.index != kRelease) Flush();
  std::vector<std::string> argv;
  argv.reserve(3 + keys.size() + args.size());
  const std::string& sha = shas_[s.index];
  argv.push_back(sha.empty() ? "EVAL" : "EVALSHA");
  argv.push_back(sha.empty() ? std::string(s.body) : sha);
  argv.push_back(StrCat(keys.size()));
  for (auto& k : keys) argv.push_back(std::move(k));
  for (auto& a : args) argv.push_back(std::move(a));
  limits_->stats().commands.fetch_add(1, std::memory_order_relaxed);
  const int64_t sent = SteadyNowNanos();
  fn = [this, sent, fn = std::move(fn)](absl::StatusOr<RedisReply> r) {
    if (r.ok()) limits_->NoteLatency(SteadyNowNanos() - sent);
    fn(std::move(r));
  };
  if (sha.empty()) return cmd_.Command(std::move(argv), std::move(fn));
  std::vector<std::string> again = argv;  // for a NOSCRIPT retry
  cmd_.Command(std::move(argv), [this, s, again = std::move(again),
                                 fn = std::move(fn)](absl::StatusOr<RedisReply> r) mutable {
    if (r.ok() && r->is_error() && r->str.rfind("NOSCRIPT", 0) == 0) {
      // Redis restarted (or SCRIPT FLUSH): run the body, which caches it again.
      limits_->stats().noscript.fetch_add(1, std::memory_order_relaxed);
      limits_->stats().commands.fetch_add(1, std::memory_order_relaxed);
      again[0] = "EVAL";
      again[1] = s.body;
      return cmd_.Command(std::move(again), std::move(fn));
    }
    fn(std::move(r));
  });
}

void ClusterClient::OnFailure(const absl::Status& s) {
  parked_on_.clear();  // a registration may not have reached Redis
  limits_->stats().redis_errors.fetch_add(1, std::memory_order_relaxed);
  limits_->ReportFailure(s);
}

namespace {
FleetClient::Result Throttled(int32_t throttle, int64_t wait_nanos) {
  FleetClient::Result res{FleetClient::Verdict::kThrottled, ClusterLease()};
  res.throttle = throttle;
  res.start_in_nanos = wait_nanos;
  return res;
}
}  // namespace

void ClusterClient::Acquire(const std::string& id, std::vector<ClusterKey> keys,
                            std::vector<ClusterThrottle> throttles, int64_t throttle_wait_nanos,
                            ClusterWaiter* waiter, Done done) {
  if (!idle_.empty() && throttles.empty()) {
    // A lease this client's last session on the same keys let go (a start that takes a
    // throttle asks Redis for its instant: §12 rule 10), while nobody in the fleet
    // waits for them: it passes on without a Redis call (DESIGN §7 rule 10).
    auto it = idle_.find(Signature(keys));
    auto w = waiting_.find(id);
    if (it != idle_.end() && (w == waiting_.end() || w->second.queued.empty()) &&
        MayHandOff(keys)) {
      const uint64_t h = it->second.back().handle;  // the most recent: its keys are warm
      it->second.pop_back();
      if (it->second.empty()) idle_.erase(it);
      if (w != waiting_.end()) {
        EndWait(w->second);
        waiting_.erase(w);
      }
      limits_->stats().leases.fetch_add(1, std::memory_order_relaxed);
      limits_->stats().handoffs.fetch_add(1, std::memory_order_relaxed);
      return done(Result{Verdict::kGranted, MakeLease(h)});
    }
  }
  if (waiter != nullptr) waiting_.try_emplace(id);  // a publish may beat the reply
  RateAsk rate{std::move(throttles), std::max<int64_t>(0, throttle_wait_nanos), 0};
  if (keys.empty() && !rate.throttles.empty()) {
    limits_->stats().throttle_asks.fetch_add(1, std::memory_order_relaxed);
  }
  if (limits_->degraded()) {
    return DecideLocally(id, std::move(keys), std::move(rate), waiter, std::move(done));
  }
  bool reserved = false;
  if (limits_->rejoining() && limits_->options().failure_mode != ClusterFailureMode::kOpen) {
    // Redis may not know the others' connections yet: the share holds as well (header) —
    // and Redis may not know the others' last starts: so does the rate's share (§12 rule 10).
    int32_t throttled = -1;
    if (!limits_->TryTakeLocal(keys, rate.throttles, rate.wait_nanos, &rate.local_start_in,
                               &throttled)) {
      if (throttled >= 0) {
        limits_->stats().throttled.fetch_add(1, std::memory_order_relaxed);
        return done(Throttled(throttled, rate.wait_nanos + 1));
      }
      return LocalFull(id, std::move(keys), waiter, std::move(done));
    }
    reserved = true;
  }
  Decide(id, std::move(keys), std::move(rate), waiter, reserved, std::move(done));
}

void ClusterClient::Decide(const std::string& id, std::vector<ClusterKey> keys, RateAsk rate,
                           ClusterWaiter* waiter, bool reserved, Done done) {
  const ClusterOptions& o = limits_->options();
  // Within this process's rejoin share (`reserved`) or vouching for the store, a grant need
  // not wait out a warm-up (DESIGN §7 rule 4b).
  std::vector<std::string> args = {id,
                                   StrCat(int64_t{o.lease_seconds} * 1000),
                                   waiter != nullptr ? "1" : "0",
                                   StrCat(o.waiter_ttl_ms),
                                   StrCat(o.warmup_ms),
                                   client_id_,
                                   reserved ? kAnyEpoch : limits_->Vouch(),
                                   limits_->ChannelPrefix()};
  for (const ClusterKey& k : keys) args.push_back(StrCat(k.limit));
  std::vector<std::string> redis_keys = Triples(keys);
  // Fleet throttles (DESIGN §12 rule 10; kAcquireLua's >>> block): keys, spacings, the
  // wait in µs, their number last.
  for (const ClusterThrottle& t : rate.throttles) redis_keys.push_back(t.key);
  for (const ClusterThrottle& t : rate.throttles) args.push_back(StrCat(t.interval_us));
  args.push_back(StrCat(rate.local_start_in / 1000));  // not before (the rejoin's share)
  args.push_back(StrCat(rate.wait_nanos / 1000));
  args.push_back(StrCat(rate.throttles.size()));
  redis_keys.push_back(limits_->EpochKey());
  redis_keys.push_back(limits_->WorkersKey());
  std::vector<std::string> handoff_keys;
  for (const ClusterKey& k : keys) handoff_keys.push_back(k.key + ":r");
  // A right granted by this call holds only if no revocation can have been missed since it
  // was sent: the wake-up channel subscribed now, and no failure of it after (MayHandOff).
  const int64_t sub_failures = worker_ && sub_.subscribed() ? sub_.failures() : -1;
  Batched(kAcquire, std::move(redis_keys), std::move(args),
       [this, id, keys, rate = std::move(rate), waiter, reserved, sub_failures,
        done = std::move(done)](absl::StatusOr<RedisReply> r) mutable {
         if (absl::Status s = ReplyStatus(r); !s.ok() || r->type != RedisReply::Type::kArray ||
                                              r->elements.size() < 8 + keys.size()) {
           if (reserved) limits_->RemoveHeld(keys);
           OnFailure(s.ok() ? absl::InternalError("acquire: unexpected reply") : s);
           return DecideLocally(id, std::move(keys), std::move(rate), waiter, std::move(done));
         }
         // The rate part: the wait until the reserved instant (on this process's clock, so an
         // answer read late does not start late), or the refusal's.
         const int64_t redis_now_us = r->elements[7].integer;
         const int64_t steady_now = SteadyNowNanos();
         NoteClock(steady_now, redis_now_us);
         const int64_t rate_wait =
             r->elements[5].integer == 0
                 ? rate.local_start_in
                 : std::max(rate.local_start_in,
                            ToSteady(redis_now_us + r->elements[5].integer) - steady_now);
         const int64_t blocking = r->elements[6].integer;
         const int64_t mask = r->elements[1].integer;
         {
           // The hand-off bookkeeping the batch script appended (kBatchTail).
           const size_t n = r->elements.size();
           const int64_t rights = r->elements[n - 2].integer;
           const int64_t now_us = r->elements[n - 1].integer;
           const int64_t noted = SteadyNowNanos();
           for (size_t i = 0; i < keys.size() && i < 32; ++i) {
             if (r->elements[0].integer == 1 && ((rights >> i) & 1) && sub_failures >= 0) {
               rights_[keys[i].key] = Right{now_us, noted, sub_failures};
             } else if (r->elements[0].integer == 1 || ((mask >> i) & 1)) {
               rights_.erase(keys[i].key);
             }
           }
         }
         limits_->NoteClients(r->elements[2].integer);
         const int64_t warm_left = r->elements[4].integer;
         if (limits_->NoteEpoch(r->elements[3].str, warm_left)) limits_->StoreLost(EpochBorn(r->elements[3].str));
         auto it = waiting_.find(id);
         if (r->elements[0].integer == 1) {
           if (it != waiting_.end()) {
             // Queued elsewhere earlier (another host of the domain): give those places up.
             std::vector<ClusterKey> other;
             for (ClusterKey& k : it->second.queued) {
               if (!HasKey(keys, k.key)) other.push_back(std::move(k));
             }
             EndWait(it->second);
             waiting_.erase(it);
             if (!other.empty()) SendRelease(id, other);
           }
           const uint64_t h = next_handle_++;
           if (!reserved) limits_->AddHeld(keys);
           limits_->stats().leases.fetch_add(1, std::memory_order_relaxed);
           if (rate_wait > 0) limits_->stats().throttle_waits.fetch_add(1, std::memory_order_relaxed);
           limits_->NoteFleetStart(rate.throttles, SteadyNowNanos() + rate_wait);
           leases_[h] = LeaseRec{id, std::move(keys)};
           Result res{Verdict::kGranted, MakeLease(h)};
           res.start_in_nanos = rate_wait;
           return done(std::move(res));
         }
         if (reserved) limits_->RemoveHeld(keys);
         if (mask == 0 && blocking > 0) {  // the keys had room, a throttle's instant is too far
           limits_->stats().throttled.fetch_add(1, std::memory_order_relaxed);
           return done(Throttled(static_cast<int32_t>(blocking - 1), rate_wait));
          }
         if (!idle_.empty()) {
           // Full where this client keeps idle leases: they go back now (and wake whoever
           // waits there, this ask too if it queued).
           std::vector<ClusterKey> full;
           for (size_t i = 0; i < keys.size() && i < 32; ++i) {
             if ((mask >> i) & 1) full.push_back(keys[i]);
           }
           ReleaseIdle(false, &full);
         }
         Result res{Verdict::kFull, ClusterLease()};
         res.full_mask = static_cast<uint32_t>(mask);
         const bool warming = warm_left > 0 && !reserved;
         if (warming) {
           limits_->stats().warmup_refusals.fetch_add(1, std::memory_order_relaxed);
           res.unavailable = StrCat("Redis store new (first start, restart or flush), ",
                                    warm_left, " ms of warm-up left");
         }
         if (it != waiting_.end()) {
           // Places left by the script: where this ask's key had room (see kAcquireLua).
           std::erase_if(it->second.queued, [&](const ClusterKey& q) {
             for (size_t i = 0; i < keys.size(); ++i) {
               if (keys[i].key == q.key) return ((mask >> i) & 1) == 0;
             }
             return false;
           });
         }
         if (waiter != nullptr && it != waiting_.end()) {
           WaitRec& w = it->second;
           for (size_t i = 0; i < keys.size(); ++i) {
             if (((mask >> i) & 1) && !HasKey(w.queued, keys[i].key)) w.queued.push_back(keys[i]);
           }
           const int64_t now = SteadyNowNanos();
           if (w.since == 0) {
             w.since = now;
             limits_->stats().waits.fetch_add(1, std::memory_order_relaxed);
           }
           w.local = false;
           w.waiter = waiter;
           w.recheck_at = now + int64_t{limits_->options().recheck_ms} * kMs;
           // Look again as soon as the warm-up is over.
           if (warming) w.recheck_at = std::min(w.recheck_at, now + (warm_left + 5) * kMs);
           if (std::exchange(w.missed, false)) {
             // Freed while this ask was out (Redis ran the ask, then the release; the
             // publish was read first): wake now rather than at the re-check.
             done(std::move(res));
             auto again = waiting_.find(id);
             if (again != waiting_.end() && again->second.waiter == waiter) Wake(id, true);
             return;
           }
         }
         done(std::move(res));
       },
       std::move(handoff_keys));
}

// The Redis clock (`TIME`, µs of the wall clock) on this process's steady clock: an answer
// read at steady `recv` says Redis's clock read `redis_us` at most recv - redis_us ago
// (offset plus that answer's delay). The least of these over the last one to two seconds
// is the offset plus the least delay seen: an instant mapped with it is never early, and
// late only by that least delay — not by how late this answer was read. Buckets of 1 s
// keep a wall-clock step from lasting past 2 s.
void ClusterClient::NoteClock(int64_t recv, int64_t redis_us) {
  const int64_t sample = recv - redis_us * 1000;
  if (recv - clock_bucket_start_ >= 1'000'000'000) {
    clock_prev_ = clock_cur_;
    clock_cur_ = INT64_MAX;
    clock_bucket_start_ = recv;
  }
  clock_cur_ = std::min(clock_cur_, sample);
}

int64_t ClusterClient::ToSteady(int64_t redis_us) const {
  return redis_us * 1000 + std::min(clock_cur_, clock_prev_);
}

void ClusterClient::DecideLocally(const std::string& id, std::vector<ClusterKey> keys,
                                  RateAsk rate, ClusterWaiter* waiter, Done done) {
  if (limits_->options().failure_mode == ClusterFailureMode::kClosed) {
    if (waiter != nullptr) Forget(id);
    return done(Result{Verdict::kClosed, ClusterLease()});
  }
  // Share mode: this process's share of each rate too (open: the selector's per-process
  // throttles alone; DESIGN §12 rule 10).
  int64_t start_in = 0;
  int32_t throttled = -1;
  if (limits_->TryTakeLocal(keys, rate.throttles, rate.wait_nanos, &start_in, &throttled)) {
    auto it = waiting_.find(id);
    if (it != waiting_.end()) {
      EndWait(it->second);
      if (it->second.queued.empty()) waiting_.erase(it);
    }
    const uint64_t h = next_handle_++;
    limits_->stats().leases.fetch_add(1, std::memory_order_relaxed);
    limits_->stats().local_leases.fetch_add(1, std::memory_order_relaxed);
    if (start_in > 0) limits_->stats().throttle_waits.fetch_add(1, std::memory_order_relaxed);
    leases_[h] = LeaseRec{id, std::move(keys)};
    Result res{Verdict::kGranted, MakeLease(h)};
    res.start_in_nanos = start_in;
    return done(std::move(res));
  }
  if (throttled >= 0) {
    limits_->stats().throttled.fetch_add(1, std::memory_order_relaxed);
    return done(Throttled(throttled, rate.wait_nanos + 1));
  }
  LocalFull(id, std::move(keys), waiter, std::move(done));
}

void ClusterClient::LocalFull(const std::string& id, std::vector<ClusterKey> keys,
                              ClusterWaiter* waiter, Done done) {
  if (waiter != nullptr) {
    WaitRec& w = waiting_[id];
    const int64_t now = SteadyNowNanos();
    if (w.since == 0) {
      w.since = now;
      limits_->stats().waits.fetch_add(1, std::memory_order_relaxed);
    }
    w.local = true;
    w.waiter = waiter;
    w.recheck_at = now + int64_t{limits_->options().recheck_ms} * kMs;
    w.queued = keys;  // for the local wake-up on release (no Redis queue in this mode)
  }
  Result res{Verdict::kFull, ClusterLease()};
  res.full_mask = (1u << keys.size()) - 1;  // not known which: treat all as full
  res.unavailable = StrCat(limits_->degraded() ? "Redis unreachable" : "Redis back, fleet rejoining",
                           ", cluster_failure_mode = ",
                           ClusterFailureModeName(limits_->options().failure_mode),
                           ": this worker's share is taken");
  done(std::move(res));
}

void ClusterClient::EndWait(WaitRec& w) {
  // A session's wait counts once, from its first "full" to its slot (or giving up).
  if (w.since != 0) {
    limits_->stats().wait_nanos.fetch_add(SteadyNowNanos() - w.since, std::memory_order_relaxed);
    w.since = 0;
  }
}

void ClusterClient::Wake(const std::string& id, bool by_publish) {
  auto it = waiting_.find(id);
  if (it == waiting_.end()) return;
  WaitRec& w = it->second;
  if (w.waiter == nullptr) {  // not waiting right now, or its re-ask is still out
    if (by_publish) w.missed = true;
    return;
  }
  ClusterWaiter* waiter = std::exchange(w.waiter, nullptr);
  if (by_publish) limits_->stats().wakeups.fetch_add(1, std::memory_order_relaxed);
  waiter->ClusterWake();
}

void ClusterClient::Unwait(const std::string& id) {
  auto it = waiting_.find(id);
  if (it == waiting_.end()) return;
  it->second.waiter = nullptr;
}

void ClusterClient::Forget(const std::string& id) {
  auto it = waiting_.find(id);
  if (it == waiting_.end()) return;
  EndWait(it->second);
  std::vector<ClusterKey> queued = std::move(it->second.queued);
  const bool local = it->second.local;
  waiting_.erase(it);
  if (!queued.empty() && !local) SendRelease(id, queued);
}

bool ClusterClient::MayHandOff(const std::vector<ClusterKey>& keys) const {
  // A lease of throttles alone holds nothing in Redis: nothing to pass on.
  if (keys.empty()) return false;
  if (limits_->mode() != ClusterMode::kNormal || !worker_ || !sub_.subscribed()) return false;
  const int64_t now = SteadyNowNanos();
  for (const ClusterKey& k : keys) {
    auto r = rights_.find(k.key);
    if (r == rights_.end() || r->second.sub_failures != sub_.failures() ||
        now - r->second.noted > kRightNanos) {
      return false;
    }
    auto v = revoked_.find(k.key);
    if (v != revoked_.end() && v->second.first >= r->second.granted_us) return false;
  }
  return true;
}

void ClusterClient::OnRevoke(std::string_view payload) {
  // "!NOW_US KEY"
  const size_t sp = payload.find(' ');
  if (sp == std::string_view::npos || sp < 2) return;
  int64_t at = 0;
  for (char c : payload.substr(1, sp - 1)) {
    if (c < '0' || c > '9') return;
    at = at * 10 + (c - '0');
  }
  const std::string key(payload.substr(sp + 1));
  const int64_t now = SteadyNowNanos();
  auto [v, fresh] = revoked_.try_emplace(key, at, now);
  if (!fresh && at > v->second.first) v->second = {at, now};
  rights_.erase(key);
  parked_on_.erase(key);  // the take-back emptied its K:r set
  const std::vector<ClusterKey> on = {ClusterKey{key, 0}};
  ReleaseIdle(false, &on);
  // A parked connection here may hold what that waiter needs (DESIGN §13 rule 7).
  if (take_back_) take_back_(key);
}

void ClusterClient::ReleaseIdle(bool all, const std::vector<ClusterKey>* sharing) {
  if (idle_.empty()) {
    if (revoked_.size() > 1024) revoked_.clear();  // bounded; entries matter for 1 s
    return;
  }
  const int64_t now = SteadyNowNanos();
  std::vector<uint64_t> go;
  for (auto it = idle_.begin(); it != idle_.end();) {
    auto& list = it->second;
    auto rec = leases_.find(list.front().handle);
    bool drop_all = all || rec == leases_.end() || !MayHandOff(rec->second.keys);
    if (!drop_all && sharing != nullptr) {
      for (const ClusterKey& k : *sharing) drop_all = drop_all || HasKey(rec->second.keys, k.key);
    }
    std::erase_if(list, [&](const Idle& i) {
      const bool drop = drop_all || (sharing == nullptr && now - i.since >= kIdleNanos);
      if (drop) go.push_back(i.handle);
      return drop;
    });
    if (list.empty()) {
      idle_.erase(it++);
    } else {
      ++it;
    }
  }
  for (uint64_t h : go) DropLease(h);
}

void ClusterClient::DropLease(uint64_t handle) {
  auto it = leases_.find(handle);
  if (it == leases_.end()) return;
  LeaseRec rec = std::move(it->second);
  leases_.erase(it);
  limits_->RemoveHeld(rec.keys);
  SendRelease(rec.id, rec.keys);
}

void ClusterClient::ReleaseLease(uint64_t handle) {
  auto it = leases_.find(handle);
  if (it == leases_.end()) return;
  if (worker_ && !destroying_ && MayHandOff(it->second.keys)) {
    // Kept for this client's next session on the same keys (DESIGN §7 rule 10): still held
    // in Redis (and refreshed), released after kIdleNanos unused or when a waiter appears.
    idle_[Signature(it->second.keys)].push_back(Idle{handle, SteadyNowNanos()});
    return;
  }
  LeaseRec rec = std::move(it->second);
  leases_.erase(it);
  limits_->RemoveHeld(rec.keys);
  if (rec.keys.empty()) return;  // throttles only: nothing held in Redis
  SendRelease(rec.id, rec.keys);
  if (limits_->mode() != ClusterMode::kNormal) {
    // Waiters held back by the local share get no publish: wake the longest on these keys.
    std::string best;
    int64_t best_since = INT64_MAX;
    for (auto& [wid, w] : waiting_) {
      if (w.waiter == nullptr || !w.local || w.since >= best_since) continue;
      for (const ClusterKey& k : rec.keys) {
        if (HasKey(w.queued, k.key)) {
          best = wid;
          best_since = w.since;
          break;
        }
      }
    }
    if (!best.empty()) Wake(best, false);
  }
}

void ClusterClient::MoveLease(uint64_t handle, const std::string& from, ClusterKey to,
                              MoveDone done) {
  auto it = leases_.find(handle);
  if (it == leases_.end()) return done(to.key.empty());
  std::vector<ClusterKey>& keys = it->second.keys;
  auto old = std::find_if(keys.begin(), keys.end(),
                          [&](const ClusterKey& k) { return k.key == from; });
  const bool has_old = old != keys.end() && !from.empty();
  const bool has_new = !to.key.empty() && !HasKey(keys, to.key);
  if (!has_old && !has_new) return done(true);
  const ClusterKey was = has_old ? *old : ClusterKey{from, 0};
  // Applies the move to this client's record: the refresh renews (and after a Redis
  // restart re-registers, rule 4) the new key, not the old one.
  auto apply = [this, handle, was, to, has_old, has_new]() {
    auto it = leases_.find(handle);
    if (it == leases_.end()) return;
    std::vector<ClusterKey>& keys = it->second.keys;
    if (has_old) {
      std::erase_if(keys, [&](const ClusterKey& k) { return k.key == was.key; });
      limits_->RemoveHeld({was});
    }
    if (has_new) keys.push_back(to);
  };
  if (limits_->mode() != ClusterMode::kNormal) {
    // Degraded or rejoining: the new key as the failure mode decides an acquire (within
    // this process's share, none, or the local limits only).
    if (has_new && !limits_->TryTakeLocal({to})) return done(false);
    if (limits_->degraded()) {
      apply();
      if (has_old) SendRelease(it->second.id, {was});  // owed until Redis answers
      return done(true);
    }
  } else if (has_new) {
    limits_->AddHeld({to});
  }
  const ClusterOptions& o = limits_->options();
  std::vector<ClusterKey> both = {has_old ? was : to, has_new ? to : was};
  std::vector<std::string> args = {it->second.id, StrCat(int64_t{o.lease_seconds} * 1000),
                                   limits_->ChannelPrefix(), StrCat(was.limit),
                                   StrCat(to.limit), has_old ? "1" : "0", has_new ? "1" : "0"};
  Batched(kMoveOp, Triples(both), std::move(args),
          [this, to, has_new, apply = std::move(apply), done = std::move(done)](
              absl::StatusOr<RedisReply> r) mutable {
            absl::Status s = ReplyStatus(r);
            const bool moved = s.ok() && r->type == RedisReply::Type::kArray &&
                               !r->elements.empty() && r->elements[0].integer == 1;
            if (!s.ok()) OnFailure(s);
            if (moved) {
              apply();
            } else if (has_new) {
              limits_->RemoveHeld({to});
            }
            done(moved);
          });
}

void ClusterClient::ParkedLease(uint64_t handle) {
  auto it = leases_.find(handle);
  if (it == leases_.end() || it->second.keys.empty() || !worker_ || limits_->degraded()) return;
  // One registration per key while it lasts: a park costs no Redis command when this
  // client is known to be in the key's set already (the common case under reuse).
  const int64_t now = SteadyNowNanos();
  const uint64_t epoch = limits_->recovery_epoch();
  const int64_t lease_ns = int64_t{limits_->options().lease_seconds} * 1'000'000'000;
  if (parked_on_.size() > 4096) {  // bounded: expired and stale entries go first
    absl::erase_if(parked_on_, [&](const auto& e) {
      return e.second.until <= now || e.second.epoch != epoch;
    });
  }
  std::vector<std::string> keys;
  for (const ClusterKey& k : it->second.keys) {
    auto [p, fresh] = parked_on_.try_emplace(k.key, ParkedOn{0, 0});
    if (!fresh && p->second.until > now && p->second.epoch == epoch) continue;
    p->second = {now + lease_ns / 2, epoch};
    keys.push_back(k.key + ":r");
  }
  if (keys.empty()) return;
  Batched(kParkOp, std::move(keys),
          {client_id_, StrCat(int64_t{limits_->options().lease_seconds} * 1000)},
          [this](absl::StatusOr<RedisReply> r) {
            if (absl::Status s = ReplyStatus(r); !s.ok()) OnFailure(s);
          });
}

bool ClusterClient::LeaseHolds(uint64_t handle, std::string_view key) const {
  auto it = leases_.find(handle);
  if (it == leases_.end()) return false;
  for (const ClusterKey& k : it->second.keys) {
    if (k.key == key) return true;
  }
  return false;
}

void ClusterClient::SendRelease(const std::string& id, const std::vector<ClusterKey>& keys) {
  if (limits_->degraded()) {
    // Owed until Redis answers again (it may still hold the lease, for lease_seconds).
    if (owed_.size() < kMaxOwed) owed_.push_back(LeaseRec{id, keys});
    return;
  }
  std::vector<std::string> args = {id, limits_->ChannelPrefix()};
  for (const ClusterKey& k : keys) args.push_back(StrCat(k.limit));
  Batched(kRelease, Triples(keys), std::move(args),
       [this, id, keys](absl::StatusOr<RedisReply> r) {
         if (absl::Status s = ReplyStatus(r); !s.ok()) {
           OnFailure(s);
           if (owed_.size() < kMaxOwed) owed_.push_back(LeaseRec{id, keys});
         }
       });
}

void ClusterClient::Refresh() {
  if (refresh_in_flight_) return;
  const ClusterOptions& o = limits_->options();
  // Sent while degraded, a refresh may miss a lease granted locally before its reply: its
  // heartbeat says "not complete", and the rejoin waits for the next one.
  const bool complete = !limits_->degraded();
  std::vector<std::string> keys = {limits_->WorkersKey(), limits_->EpochKey()};
  std::vector<std::string> args = {client_id_, StrCat(int64_t{o.lease_seconds} * 1000),
                                   complete ? "1" : "0", StrCat(o.warmup_ms)};
  absl::flat_hash_map<std::string, size_t> index;
  for (const auto& [h, rec] : leases_) {
    for (const ClusterKey& k : rec.keys) {
      auto [it, fresh] = index.try_emplace(k.key, keys.size());
      if (fresh) {
        keys.push_back(k.key);
        args.emplace_back();
      }
      std::string& ids = args[it->second + 2];  // keys[i] <-> args[i + 2]
      if (!ids.empty()) ids += ',';
      ids += rec.id;
    }
  }
  // Keys this client only waits on: counted for the operator's view, nothing renewed.
  for (const auto& [id, w] : waiting_) {
    if (w.local) continue;
    for (const ClusterKey& k : w.queued) {
      if (index.try_emplace(k.key, keys.size()).second) {
        keys.push_back(k.key);
        args.emplace_back();
      }
    }
  }
  std::vector<std::string> counted(keys.begin() + 2,
                                   keys.begin() + std::min<size_t>(keys.size(), 1002));
  refresh_in_flight_ = true;
  const int64_t now = SteadyNowNanos();
  // The heartbeat: at least once a second (heartbeat_ms), so a Redis that lost its keys is
  // found within that even by a client that sends nothing else (DESIGN §7 rule 4b).
  next_refresh_ = now + std::min<int64_t>(int64_t{o.lease_seconds} * 1000 / 3, o.heartbeat_ms) * kMs;
  next_probe_ = now + int64_t{kProbeMs} * kMs;
  Eval(Script{kScripts[kRefresh].body, kRefresh}, std::move(keys), std::move(args),
       [this, complete, counted = std::move(counted)](absl::StatusOr<RedisReply> r) {
         refresh_in_flight_ = false;
         if (absl::Status s = ReplyStatus(r); !s.ok() || r->elements.size() < 7) {
           if (s.ok()) s = absl::InternalError("refresh: unexpected reply");
           return OnFailure(s);
         }
         std::vector<int64_t> counts;
         for (size_t i = 7; i < r->elements.size(); ++i) counts.push_back(r->elements[i].integer);
         limits_->NoteFleetCounts(counted, counts);
         const int64_t clients = r->elements[2].integer;
         limits_->SetLive(r->elements[0].integer, clients);
         limits_->stats().refreshes.fetch_add(1, std::memory_order_relaxed);
         limits_->stats().reregistered.fetch_add(r->elements[1].integer, std::memory_order_relaxed);
         const std::string& epoch = r->elements[5].str;
         const bool lost = limits_->NoteEpoch(epoch, r->elements[6].integer);
         if (limits_->degraded()) {
           limits_->BeginRejoin(r->elements[4].integer);
           seen_epoch_ = limits_->recovery_epoch();
           next_probe_ = 0;  // the complete refresh goes out at the next tick
         } else if (lost) {
           // Redis lost its keys and this client saw no error: this reply re-registered
           // its leases; the other clients of the process follow (recovery_epoch).
           limits_->StoreLost(EpochBorn(epoch));
           seen_epoch_ = limits_->recovery_epoch();
           next_probe_ = 0;
         } else if (complete && limits_->rejoining()) {
           limits_->MaybeFinishRejoin(clients, r->elements[3].integer, r->elements[4].integer);
         }
         // Releases that could not be sent while Redis was away.
         std::vector<LeaseRec> owed;
         owed.swap(owed_);
         for (const LeaseRec& rec : owed) SendRelease(rec.id, rec.keys);
       });
}

void ClusterClient::CountKey(const std::string& key,
                             std::function<void(absl::StatusOr<int64_t>)> done) {
  Eval(Script{kScripts[kCount].body, kCount}, {key}, {},
       [done = std::move(done)](absl::StatusOr<RedisReply> r) {
         if (absl::Status s = ReplyStatus(r); !s.ok()) return done(s);
         done(r->integer);
       });
}

void ClusterClient::ArmTick() {
  if (tick_armed_ || destroying_) return;
  tick_ts_ = {0, kTickMs * kMs};
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  Loop::SetCompletion(sqe, &tick_done_);
  tick_armed_ = true;
}

void ClusterClient::OnTick(int, uint32_t) {
  tick_armed_ = false;
  if (destroying_) return;
  const int64_t now = SteadyNowNanos();
  if (!worker_) return;  // no tick for an observer
  sub_.Tick();
  if (cmd_.discoveries() != discoveries_seen_) {
    limits_->stats().discoveries.fetch_add(cmd_.discoveries() - discoveries_seen_,
                                           std::memory_order_relaxed);
    discoveries_seen_ = cmd_.discoveries();
  }
  if (limits_->degraded()) {
    if (now >= next_probe_) Refresh();  // the probe that brings us back
  } else if (limits_->recovery_epoch() != seen_epoch_) {
    // Another client of this process saw Redis back: re-register our leases now too.
    seen_epoch_ = limits_->recovery_epoch();
    Refresh();
  } else if (limits_->rejoining() && now >= next_probe_) {
    Refresh();  // re-registered; look again whether the rest of the fleet is
  } else if (now >= next_refresh_) {
    Refresh();
  }
  ReleaseIdle(false);  // unused for kIdleNanos, or no longer to be handed off
  absl::erase_if(revoked_, [now](const auto& kv) { return now - kv.second.second > kRevokedKeepNanos; });
  std::vector<std::string> due;
  for (auto& [id, w] : waiting_) {
    if (w.waiter != nullptr && now >= w.recheck_at) due.push_back(id);
  }
  for (const std::string& id : due) Wake(id, false);
  ArmTick();
}

}  // namespace mxsched::io
