#include "mxsched/cluster/redis_async.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "mxsched/base/clock.h"
#include "mxsched/base/strings.h"

namespace mxsched::io {
namespace {

RedisReply Copy(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      break;
    default:
      out.type = RedisReply::Type::kNil;
      break;
  }
  out.integer = r->integer;
  if (r->str != nullptr) out.str.assign(r->str, r->len);
  for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Copy(r->element[i]));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Bounded replies (hiredis 0.14's reader has no limits of its own): object functions that
// refuse what no reply of ours needs, and a reply nobody asked for. Refusing (NULL) fails
// the parse; hiredis then drops the connection and fails every pending command — the
// reason is recorded first so the callers read it instead of hiredis's "Out of memory".

struct RedisConnection::Reader {
  static const redisReplyObjectFunctions* base;  // hiredis's own (the same for every reader)
  static RedisConnection* Conn(const redisReadTask* t) {
    return static_cast<RedisConnection*>(t->privdata);
  }
  // Null when `t` may be created; else the connection, with the reason recorded.
  static bool Refuse(const redisReadTask* t, const char* what) {
    RedisConnection* c = Conn(t);
    if (c->protocol_error_) return true;
    c->protocol_error_ = true;
    c->drop_reason_ = absl::UnavailableError(StrCat(c->options_.address.ToString(), ": ", what));
    return true;
  }
  static bool Check(const redisReadTask* t) {
    RedisConnection* c = Conn(t);
    if (c == nullptr) return true;
    if (c->protocol_error_) return false;
    int depth = 0;
    for (const redisReadTask* p = t->parent; p != nullptr; p = p->parent) ++depth;
    if (depth > kRedisMaxDepth) {
      return !Refuse(t, StrCat("reply nested deeper than ", kRedisMaxDepth).c_str());
    }
    // A reply that starts while no command awaits one, outside pub/sub: hiredis 0.14 would
    // abort (async.c's assert); drop the connection instead.
    if (t->parent == nullptr && c->channel_.empty() && c->pending_.empty()) {
      return !Refuse(t, "unrequested reply (is this Redis?)");
    }
    return true;
  }
  static void* String(const redisReadTask* t, char* s, size_t len) {
    if (!Check(t)) return nullptr;
    if (len > kRedisMaxBulk) {
      Refuse(t, StrCat("reply string of ", len, " bytes (limit ", kRedisMaxBulk, ")").c_str());
      return nullptr;
    }
    return base->createString(t, s, len);
  }
  static void* Array(const redisReadTask* t, int n) {
    if (!Check(t)) return nullptr;
    if (n < 0 || n > kRedisMaxElements) {
      Refuse(t, StrCat("reply array of ", n, " elements (limit ", kRedisMaxElements, ")").c_str());
      return nullptr;
    }
    return base->createArray(t, n);
  }
  static void* Integer(const redisReadTask* t, long long v) {
    return Check(t) ? base->createInteger(t, v) : nullptr;
  }
  static void* Nil(const redisReadTask* t) { return Check(t) ? base->createNil(t) : nullptr; }
  static void Free(void* o) { base->freeObject(o); }
  static redisReplyObjectFunctions functions;
};
const redisReplyObjectFunctions* RedisConnection::Reader::base = nullptr;
redisReplyObjectFunctions RedisConnection::Reader::functions = {
    &Reader::String, &Reader::Array, &Reader::Integer, &Reader::Nil, &Reader::Free};

// ---------------------------------------------------------------------------------------
// The io_uring event-loop adapter hiredis calls through ac->ev. It outlives the context
// when a poll is still in the ring at cleanup: it deletes itself when that poll comes back.

struct RedisConnection::Adapter {
  Adapter(Loop* l, redisAsyncContext* a, std::shared_ptr<int> o)
      : loop(l), ac(a), fd(a->c.fd), ops(std::move(o)) {}
  Loop* loop;
  redisAsyncContext* ac;
  int fd;
  std::shared_ptr<int> ops;
  bool want_read = false, want_write = false;
  bool armed = false, removing = false, dead = false, in_handler = false;
  short armed_events = 0;

  static Adapter* Of(void* p) { return static_cast<Adapter*>(p); }
  static void AddRead(void* p) { Of(p)->want_read = true, Of(p)->Update(); }
  static void DelRead(void* p) { Of(p)->want_read = false, Of(p)->Update(); }
  static void AddWrite(void* p) { Of(p)->want_write = true, Of(p)->Update(); }
  static void DelWrite(void* p) { Of(p)->want_write = false, Of(p)->Update(); }
  static void Cleanup(void* p) {
    Adapter* a = Of(p);
    a->dead = true;
    a->ac = nullptr;
    if (a->in_handler) return;  // OnPoll finishes the job
    if (a->armed) {
      a->Update();  // takes the poll out; its completion deletes the adapter
    } else {
      delete a;
    }
  }

  short Wanted() const {
    if (dead) return 0;
    return static_cast<short>((want_read ? POLLIN : 0) | (want_write ? POLLOUT : 0));
  }

  void Update() {
    if (in_handler) return;  // OnPoll re-arms after hiredis's handlers return
    const short want = Wanted();
    if (armed) {
      if (want != armed_events && !removing) {
        removing = true;
        io_uring_sqe* sqe = loop->Sqe();
        io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(&done));
        Loop::SetCompletion(sqe, nullptr);
      }
      return;
    }
    if (want == 0) return;
    io_uring_sqe* sqe = loop->Sqe();
    io_uring_prep_poll_add(sqe, fd, want);
    Loop::SetCompletion(sqe, &done);
    armed = true;
    armed_events = want;
    ++*ops;
  }

  void OnPoll(int res, uint32_t) {
    armed = false;
    removing = false;
    --*ops;
    if (dead) {
      delete this;
      return;
    }
    if (res > 0) {
      in_handler = true;
      if ((res & (POLLIN | POLLERR | POLLHUP)) && want_read) redisAsyncHandleRead(ac);
      if (!dead && (res & (POLLOUT | POLLERR | POLLHUP)) && want_write) {
        redisAsyncHandleWrite(ac);
      }
      in_handler = false;
      if (dead) {
        delete this;
        return;
      }
      // Bytes read but not yet a whole reply (a huge bulk string arriving): bounded.
      const redisReader* r = ac->c.reader;
      if (r != nullptr && r->len - r->pos > kRedisMaxBuffered) {
        auto* conn = static_cast<RedisConnection*>(ac->data);
        conn->Drop(absl::UnavailableError(
            StrCat(conn->options_.address.ToString(), ": reply over ", kRedisMaxBuffered,
                   " bytes buffered")));
        return;  // the free's cleanup hook has deleted this adapter
      }
    }
    Update();
  }
  MemberCompletion<Adapter, &Adapter::OnPoll> done{this};
};

struct RedisConnection::Pending {
  RedisConnection* conn;
  ReplyFn fn;
  int64_t deadline;
};

// ---------------------------------------------------------------------------------------

RedisConnection::RedisConnection(Loop* loop, RedisOptions options)
    : loop_(loop), options_(std::move(options)) {}

RedisConnection::~RedisConnection() {
  destroying_ = true;
  sentinels_.clear();  // their pending callbacks are dropped with them
  for (Pending* p : pending_) p->fn = nullptr;  // the owner is going away: no callbacks
  held_.clear();
  on_message_ = nullptr;
  if (ac_ != nullptr) {
    redisAsyncContext* ac = std::exchange(ac_, nullptr);
    redisAsyncFree(ac);  // runs OnReply(NULL) for each pending command
  }
  if (timer_armed_) {
    io_uring_sqe* sqe = loop_->Sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&timer_done_), 0);
    Loop::SetCompletion(sqe, nullptr);
  }
  for (int i = 0; i < 200 && *ops_in_ring_ > 0; ++i) loop_->RunOnce(10);
}

std::string RedisConnection::server() const {
  if (!options_.address.sentinel()) {
    return StrCat(options_.address.host, ":", options_.address.port);
  }
  return master_known_ ? StrCat(master_host_, ":", master_port_) : std::string();
}

std::string RedisConnection::Where() const {
  if (!options_.address.sentinel() || !master_known_) return options_.address.ToString();
  return StrCat(options_.address.ToString(), " (master ", master_host_, ":", master_port_, ")");
}

// Asks sentinel `next_sentinel_` where the master is; on no answer the next one, `tried`
// counting those asked. Commands wait in held_ meanwhile (each sentinel's own deadline
// bounds the wait: timeout_ms split among them).
void RedisConnection::Discover(size_t tried) {
  const RedisAddress& a = options_.address;
  if (destroying_) return;
  if (tried == a.sentinels.size()) {
    discovering_ = false;
    ++failures_;
    retry_after_ = SteadyNowNanos() + int64_t{options_.reconnect_ms} * 1'000'000;
    if (drop_reason_.ok()) drop_reason_ = absl::UnavailableError("no sentinel answered");
    drop_reason_ = absl::UnavailableError(
        StrCat(a.ToString(), ": no sentinel knows master ", a.master_name, " (",
               drop_reason_.message(), ")"));
    FailHeld();
    return;
  }
  discovering_ = true;
  const size_t i = next_sentinel_ % a.sentinels.size();
  if (sentinels_.size() != a.sentinels.size()) sentinels_.resize(a.sentinels.size());
  if (sentinels_[i] == nullptr) {
    RedisOptions so;
    so.address.host = a.sentinels[i].host;
    so.address.port = a.sentinels[i].port;
    so.timeout_ms = std::max<int>(100, options_.timeout_ms / static_cast<int>(a.sentinels.size()));
    so.reconnect_ms = 0;  // the parent's backoff paces the asking
    sentinels_[i] = std::make_unique<RedisConnection>(loop_, so);
  }
  sentinels_[i]->Command(
      {"SENTINEL", "get-master-addr-by-name", a.master_name},
      [this, tried, i](absl::StatusOr<RedisReply> r) {
        uint64_t port = 0;
        if (r.ok() && r->type == RedisReply::Type::kArray && r->elements.size() == 2 &&
            r->elements[0].type == RedisReply::Type::kString &&
            ParseUint(r->elements[1].str, &port) && port > 0 && port <= 65535 &&
            !r->elements[0].str.empty() && r->elements[0].str.size() < 256) {
          master_host_ = r->elements[0].str;
          master_port_ = static_cast<uint16_t>(port);
          master_known_ = true;
          discovering_ = false;
          ++discoveries_;
          if (!EnsureContext()) return FailHeld();
          if (!channel_.empty()) SendSubscribe();
          if (ready_) Released();
          return;
        }
        const RedisAddress::HostPort& s = options_.address.sentinels[i];
        drop_reason_ = absl::UnavailableError(StrCat(
            "sentinel ", s.host, ":", s.port, ": ",
            !r.ok()                                   ? std::string(r.status().message())
            : r->is_error()                           ? r->str
            : r->type == RedisReply::Type::kNil ? StrCat("master ", options_.address.master_name, " unknown")
                                                      : std::string("unexpected reply")));
        ++next_sentinel_;
        Discover(tried + 1);
      });
}

bool RedisConnection::EnsureContext() {
  if (ac_ != nullptr) return true;
  if (destroying_ || discovering_ || SteadyNowNanos() < retry_after_) return false;
  const bool sentinel = options_.address.sentinel();
  if (sentinel && !master_known_) {
    Discover(0);  // may finish at once (a sentinel in backoff fails fast)
    return ac_ != nullptr;
  }
  const std::string& host = sentinel ? master_host_ : options_.address.host;
  const uint16_t port = sentinel ? master_port_ : options_.address.port;
  redisAsyncContext* ac = redisAsyncConnect(host.c_str(), port);
  if (ac == nullptr || ac->err) {
    master_known_ = false;
    drop_reason_ = absl::UnavailableError(
        StrCat(Where(), ": ", ac ? ac->errstr : "out of memory"));
    if (ac != nullptr) redisAsyncFree(ac);
    ++failures_;
    retry_after_ = SteadyNowNanos() + int64_t{options_.reconnect_ms} * 1'000'000;
    return false;
  }
  // Attach the event hooks before the callbacks: setting the connect callback asks for
  // write readiness through them.
  auto* adapter = new Adapter(loop_, ac, ops_in_ring_);
  ac->ev.data = adapter;
  ac->ev.addRead = &Adapter::AddRead;
  ac->ev.delRead = &Adapter::DelRead;
  ac->ev.addWrite = &Adapter::AddWrite;
  ac->ev.delWrite = &Adapter::DelWrite;
  ac->ev.cleanup = &Adapter::Cleanup;
  ac->data = this;
  if (ac->c.reader != nullptr) {
    if (Reader::base == nullptr) Reader::base = ac->c.reader->fn;
    ac->c.reader->fn = &Reader::functions;
    ac->c.reader->privdata = this;
  }
  protocol_error_ = false;
  ac_ = ac;
  redisAsyncSetConnectCallback(ac, &RedisConnection::OnConnect);
  redisAsyncSetDisconnectCallback(ac, &RedisConnection::OnDisconnect);
  ready_ = true;
  if (sentinel && channel_.empty()) {
    // The address a sentinel gave must be the master now (a failover may be under way):
    // nothing else goes before ROLE says so. (Not on a subscriber: hiredis 0.14 takes any
    // array in subscribe mode for a message; a replica relays PUBLISH anyway.)
    Command({"ROLE"}, [this](absl::StatusOr<RedisReply> r) {
      if (!r.ok()) return;  // dropped: the held commands were failed with it
      if (r->type != RedisReply::Type::kArray || r->elements.empty() ||
          r->elements[0].str != "master") {
        const std::string role = r->type == RedisReply::Type::kArray && !r->elements.empty()
                                     ? EchoForError(r->elements[0].str)
                                     : (r->is_error() ? EchoForError(r->str) : "?");
        master_known_ = false;
        return Drop(absl::UnavailableError(StrCat(Where(), ": ROLE is ", role, ", not master")));
      }
      if (options_.address.db == 0) return Released();
      ready_ = true;
      SendSelect();
      ready_ = false;
    });
    ready_ = false;
  } else if (options_.address.db != 0) {
    // First on the connection, and nothing else is sent until it succeeds: a failed
    // SELECT fails the commands held behind it (they never run in DB 0).
    SendSelect();
    ready_ = false;
  }
  return true;
}

void RedisConnection::SendSelect() {
  Command({"SELECT", StrCat(options_.address.db)}, [this](absl::StatusOr<RedisReply> r) {
    if (!r.ok()) return;  // dropped: the held commands were failed with it
    if (r->is_error() || r->type != RedisReply::Type::kStatus) {
      return Drop(absl::UnavailableError(
          StrCat(Where(), ": SELECT ", options_.address.db, ": ",
                 r->is_error() ? r->str : "unexpected reply")));
    }
    Released();
  });
}

void RedisConnection::Released() {
  ready_ = true;
  std::deque<Held> held;
  held.swap(held_);
  for (Held& h : held) Command(std::move(h.argv), std::move(h.fn));
}

void RedisConnection::Command(std::vector<std::string> argv, ReplyFn fn) {
  if (!EnsureContext() && !discovering_) {
    fn(drop_reason_.ok() ? absl::UnavailableError("Redis connection down") : drop_reason_);
    return;
  }
  if (discovering_ || !ready_) {  // behind discovery, ROLE or SELECT (their deadlines bound it)
    held_.push_back(Held{std::move(argv), std::move(fn)});
    return;
  }
  std::vector<const char*> args;
  std::vector<size_t> lens;
  args.reserve(argv.size());
  lens.reserve(argv.size());
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* p = new Pending{this, std::move(fn), SteadyNowNanos() + int64_t{options_.timeout_ms} * 1'000'000};
  if (redisAsyncCommandArgv(ac_, &RedisConnection::OnReply, p, static_cast<int>(args.size()),
                            args.data(), lens.data()) != REDIS_OK) {
    ReplyFn f = std::move(p->fn);
    delete p;
    f(absl::UnavailableError(StrCat(Where(), ": connection closing")));
    return;
  }
  pending_.push_back(p);
  ArmTimer();
}

void RedisConnection::Subscribe(std::string channel, MessageFn on_message) {
  channel_ = std::move(channel);
  on_message_ = std::move(on_message);
  SendSubscribe();
}

bool RedisConnection::Tick() {
  if (!channel_.empty() && ac_ == nullptr) SendSubscribe();
  return subscribed_;
}

void RedisConnection::SendSubscribe() {
  if (!EnsureContext()) return;
  subscribed_ = false;
  const char* args[2] = {"SUBSCRIBE", channel_.data()};
  size_t lens[2] = {9, channel_.size()};
  if (redisAsyncCommandArgv(ac_, &RedisConnection::OnMessage, this, 2, args, lens) == REDIS_OK) {
    subscribe_deadline_ = SteadyNowNanos() + int64_t{options_.timeout_ms} * 1'000'000;
    ArmTimer();
  }
}

void RedisConnection::Drop(absl::Status why) {
  drop_reason_ = std::move(why);
  master_known_ = false;  // redis-sentinel://: ask again before reconnecting
  ++failures_;
  retry_after_ = SteadyNowNanos() + int64_t{options_.reconnect_ms} * 1'000'000;
  connected_ = subscribed_ = false;
  subscribe_deadline_ = 0;
  if (ac_ != nullptr) {
    // Inside a hiredis callback the free is deferred until the callback returns; either way
    // every pending command's callback runs with a NULL reply and reads drop_reason_.
    redisAsyncFree(std::exchange(ac_, nullptr));
  }
  FailHeld();
}

void RedisConnection::FailHeld() {
  std::deque<Held> held;
  held.swap(held_);
  for (Held& h : held) {
    if (h.fn) h.fn(drop_reason_.ok() ? absl::UnavailableError("Redis connection down") : drop_reason_);
  }
}

void RedisConnection::OnReply(redisAsyncContext* ac, void* reply, void* privdata) {
  auto* p = static_cast<Pending*>(privdata);
  RedisConnection* c = p->conn;
  auto it = std::find(c->pending_.begin(), c->pending_.end(), p);
  if (it != c->pending_.end()) c->pending_.erase(it);
  ReplyFn fn = std::move(p->fn);
  delete p;
  if (!fn) return;
  if (reply != nullptr) {
    auto* rr = static_cast<redisReply*>(reply);
    if (rr->type == REDIS_REPLY_ERROR && c->options_.address.sentinel() && rr->str != nullptr &&
        std::string_view(rr->str, rr->len).substr(0, 8) == "READONLY" && ac == c->ac_) {
      // The master was demoted under us (a failover): ask the sentinels again.
      c->Drop(absl::UnavailableError(StrCat(c->Where(), ": no longer the master (READONLY)")));
    }
    return fn(Copy(rr));
  }
  if (c->protocol_error_ || (ac != c->ac_ && !c->drop_reason_.ok())) return fn(c->drop_reason_);
  if (ac == c->ac_ || c->drop_reason_.ok()) {
    return fn(absl::UnavailableError(
        StrCat(c->Where(), ": connection lost",
               ac->errstr != nullptr && ac->err ? StrCat(" (", ac->errstr, ")") : "")));
  }
  fn(c->drop_reason_);
}

void RedisConnection::OnMessage(redisAsyncContext*, void* reply, void* privdata) {
  auto* c = static_cast<RedisConnection*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 3) return;
  std::string_view kind(r->element[0]->str ? r->element[0]->str : "", r->element[0]->len);
  if (kind == "subscribe") {
    c->subscribed_ = true;
    c->subscribe_deadline_ = 0;
  } else if (kind == "message" && c->on_message_ && r->element[2]->str != nullptr) {
    c->on_message_(std::string_view(r->element[1]->str, r->element[1]->len),
                   std::string_view(r->element[2]->str, r->element[2]->len));
  }
}

void RedisConnection::OnConnect(const redisAsyncContext* ac, int status) {
  auto* c = static_cast<RedisConnection*>(ac->data);
  if (ac != c->ac_) return;
  if (status == REDIS_OK) {
    c->connected_ = true;
    return;
  }
  // hiredis frees the context itself after this callback.
  c->ac_ = nullptr;
  c->connected_ = c->subscribed_ = false;
  c->subscribe_deadline_ = 0;
  ++c->failures_;
  c->retry_after_ = SteadyNowNanos() + int64_t{c->options_.reconnect_ms} * 1'000'000;
  c->drop_reason_ = absl::UnavailableError(
      StrCat(c->Where(), ": connect: ", ac->errstr ? ac->errstr : "failed"));
  c->master_known_ = false;
  c->FailHeld();
}

void RedisConnection::OnDisconnect(const redisAsyncContext* ac, int) {
  auto* c = static_cast<RedisConnection*>(ac->data);
  if (ac != c->ac_) return;  // we dropped it ourselves
  c->ac_ = nullptr;
  c->connected_ = c->subscribed_ = false;
  c->subscribe_deadline_ = 0;
  ++c->failures_;
  c->retry_after_ = SteadyNowNanos() + int64_t{c->options_.reconnect_ms} * 1'000'000;
  if (!c->protocol_error_) {
    c->drop_reason_ = absl::UnavailableError(StrCat(c->Where(), ": connection lost"));
  }
  c->master_known_ = false;
  c->FailHeld();
}

void RedisConnection::ArmTimer() {
  if (timer_armed_ || destroying_) return;
  int64_t next = INT64_MAX;
  if (!pending_.empty()) next = pending_.front()->deadline;
  if (subscribe_deadline_ != 0) next = std::min(next, subscribe_deadline_);
  if (next == INT64_MAX) return;
  const int64_t wait = std::max<int64_t>(next - SteadyNowNanos(), 1'000'000);
  timer_ts_ = {wait / 1'000'000'000, wait % 1'000'000'000};
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_timeout(sqe, &timer_ts_, 0, 0);
  Loop::SetCompletion(sqe, &timer_done_);
  timer_armed_ = true;
  ++*ops_in_ring_;
}

void RedisConnection::OnTimer(int, uint32_t) {
  timer_armed_ = false;
  --*ops_in_ring_;
  if (destroying_) return;
  const int64_t now = SteadyNowNanos();
  const bool late = (!pending_.empty() && pending_.front()->deadline <= now) ||
                    (subscribe_deadline_ != 0 && subscribe_deadline_ <= now);
  if (late) {
    Drop(absl::DeadlineExceededError(
        StrCat(Where(), ": no reply within ", options_.timeout_ms, " ms")));
  }
  ArmTimer();
}

}  // namespace mxsched::io
