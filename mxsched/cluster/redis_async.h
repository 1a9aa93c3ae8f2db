// RedisConnection: one hiredis async connection driven from an io_uring Loop, with command
// deadlines and reconnection. The Redis client behind cluster-wide limits (cluster_limits.h).
//
// hiredis (Debian libhiredis-dev 0.14) parses replies and buffers commands; this file is its
// event-loop adapter — the counterpart of hiredis's adapters/libuv.h for io_uring: the
// addRead/delRead/addWrite/delWrite hooks become one-shot IORING_OP_POLL_ADD readiness polls
// on the socket (idempotent: a hook only changes the wanted mask; the poll is re-armed or
// removed accordingly), and `cleanup` takes any poll out of the ring. hiredis 0.14 has no
// async timeouts (they came in 1.0), so each command carries its own deadline: when the
// oldest unanswered command passes it — a Redis that accepts and never answers, a SYN lost
// in a black hole — the context is freed, every pending command fails with
// DEADLINE_EXCEEDED, and the next command reconnects (no sooner than reconnect_ms after a
// failure, failing fast with UNAVAILABLE meanwhile, so a dead Redis costs no connect storm).
//
// With a redis-sentinel:// address (DESIGN §7, Sentinel) the master is found before each
// (re)connection: `SENTINEL get-master-addr-by-name` to each sentinel in turn (one plain
// RedisConnection per sentinel, kept), then `ROLE` on the address it names, which must
// answer "master" before anything else is sent (commands are held meanwhile, as behind a
// SELECT). A lost connection, a refused ROLE or a READONLY error reply (a master demoted
// under us) forgets the master: the next command asks the sentinels again.
//
// Replies are copied into RedisReply (hiredis frees its own after the callback returns).
//
// Thread-safety: REQUIRES external synchronization — a RedisConnection belongs to its
// Loop's thread, and callbacks run there (a callback may run before Command returns, when
// the connection is down). Callbacks must not destroy the connection.
#ifndef MXSCHED_IO_REDIS_ASYNC_H_
#define MXSCHED_IO_REDIS_ASYNC_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/base/redis_url.h"
#include "mxsched/io/loop.h"

struct redisAsyncContext;

namespace mxsched::io {

using mxsched::RedisAddress;

struct RedisReply {
  enum class Type : uint8_t { kString, kArray, kInteger, kNil, kStatus, kError };
  Type type = Type::kNil;
  int64_t integer = 0;
  std::string str;  // kString, kStatus, kError
  std::vector<RedisReply> elements;
  bool is_error() const { return type == Type::kError; }
};

// What a reply may be (RedisConnection refuses more and drops the connection with an
// error naming it): hiredis 0.14's reader has no limits of its own.
inline constexpr int kRedisMaxElements = 4096;            // per array
inline constexpr int kRedisMaxDepth = 3;                  // arrays within arrays
inline constexpr size_t kRedisMaxBulk = 512 * 1024;       // per string
inline constexpr size_t kRedisMaxBuffered = 1024 * 1024;  // read, not yet a whole reply

struct RedisOptions {
  RedisAddress address;
  int timeout_ms = 1000;   // per command, counted from when it was issued
  int reconnect_ms = 250;  // after a failure, fail fast this long before dialling again
};

class RedisConnection {
 public:
  using ReplyFn = std::function<void(absl::StatusOr<RedisReply>)>;
  using MessageFn = std::function<void(std::string_view channel, std::string_view payload)>;

  RedisConnection(Loop* loop, RedisOptions options);
  // Fails pending commands (UNAVAILABLE), then runs the loop (bounded) until its polls and
  // timer have left the ring.
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Sends `argv`; `fn` gets the reply (a Redis error reply is a reply, type kError), or a
  // status: DEADLINE_EXCEEDED, UNAVAILABLE (connection refused, lost, in reconnect backoff).
  void Command(std::vector<std::string> argv, ReplyFn fn);

  // Makes this a subscriber connection: SUBSCRIBE `channel`, and again after every
  // reconnect (attempted on each call to Tick()). Messages go to `on_message`. A connection
  // that subscribes runs no other commands.
  void Subscribe(std::string channel, MessageFn on_message);
  // For subscribers: reconnects and re-subscribes if the connection is down and the backoff
  // has passed. Returns true when subscribed.
  bool Tick();

  bool connected() const { return connected_; }
  bool subscribed() const { return subscribed_; }
  size_t pending() const { return pending_.size(); }
  // Incremented on each connection failure or command timeout.
  int64_t failures() const { return failures_; }
  const RedisOptions& options() const { return options_; }
  // Where commands go: the server, or (redis-sentinel://) the master last discovered, as
  // "HOST:PORT" ("" while none is known).
  std::string server() const;
  // redis-sentinel://: masters discovered (counts a failover seen by this connection).
  int64_t discoveries() const { return discoveries_; }

  struct Pending;
  struct Adapter;
  struct Reader;

 private:
  struct Held {  // a command waiting for the connection's SELECT
    std::vector<std::string> argv;
    ReplyFn fn;
  };
  void FailHeld();
  bool EnsureContext();
  void Discover(size_t tried);
  void SendSelect();
  void Released();  // the gate passed: send what was held
  std::string Where() const;  // for errors: the URL, and the master if discovered
  void Drop(absl::Status why);
  void ArmTimer();
  void OnTimer(int res, uint32_t flags);
  void SendSubscribe();
  static void OnReply(redisAsyncContext* ac, void* reply, void* privdata);
  static void OnMessage(redisAsyncContext* ac, void* reply, void* privdata);
  static void OnConnect(const redisAsyncContext* ac, int status);
  static void OnDisconnect(const redisAsyncContext* ac, int status);

  Loop* loop_;
  RedisOptions options_;
  redisAsyncContext* ac_ = nullptr;
  bool connected_ = false;
  bool subscribed_ = false;
  int64_t retry_after_ = 0;  // monotonic nanos
  int64_t failures_ = 0;
  int64_t subscribe_deadline_ = 0;  // while a SUBSCRIBE is unconfirmed
  std::deque<Pending*> pending_;    // in send order: replies come back in this order
  std::deque<Held> held_;           // until the SELECT succeeds (ready_)
  bool ready_ = true;               // false while a SELECT is unanswered
  bool protocol_error_ = false;     // the reader refused a reply (drop_reason_ says why)
  absl::Status drop_reason_;
  std::string channel_;
  MessageFn on_message_;
  // redis-sentinel://
  bool master_known_ = false;
  bool discovering_ = false;
  size_t next_sentinel_ = 0;
  int64_t discoveries_ = 0;
  std::string master_host_;
  uint16_t master_port_ = 0;
  std::vector<std::unique_ptr<RedisConnection>> sentinels_;
  std::shared_ptr<int> ops_in_ring_ = std::make_shared<int>(0);
  bool timer_armed_ = false;
  bool destroying_ = false;
  __kernel_timespec timer_ts_{};
  MemberCompletion<RedisConnection, &RedisConnection::OnTimer> timer_done_{this};
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_REDIS_ASYNC_H_
