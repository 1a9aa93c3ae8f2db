// Loop: one io_uring event loop, owned by one thread.
//
// Every submission carries a typed `user_data`: a pointer to a Completion, whose function is
// called with the CQE's result. Decoding happens in one place (Loop::Dispatch). A null
// user_data marks a fire-and-forget submission whose result nobody needs — a cancel or a
// timeout removal, whose target's own completion reports the outcome — and Dispatch drops
// its completion (IoUring.NullUserDataCompletionIsDropped).
//
// The ring is set up with IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN where the kernel has
// them (6.1+), else COOP_TASKRUN, else no flags — Create() tries them in that order and
// flags() says which took.
//
// Thread-safety: REQUIRES external synchronization — a Loop and everything submitted to it
// belong to the thread that runs it. Wake() is the one exception: callable from any thread.
#ifndef MXSCHED_IO_LOOP_H_
#define MXSCHED_IO_LOOP_H_

#include <liburing.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"

namespace mxsched::io {

struct Completion {
  // `res` is the CQE result (>= 0 or -errno); `flags` the CQE flags (IORING_CQE_F_MORE...).
  void (*fn)(Completion* self, int res, uint32_t flags) = nullptr;
};

// Builds a Completion that calls obj->*Method(res, flags).
template <typename T, void (T::*Method)(int, uint32_t)>
struct MemberCompletion : Completion {
  explicit MemberCompletion(T* o) : obj(o) {
    fn = [](Completion* c, int res, uint32_t flags) {
      auto* self = static_cast<MemberCompletion*>(c);
      (self->obj->*Method)(res, flags);
    };
  }
  T* obj;
};

class Loop {
 public:
  static absl::StatusOr<std::unique_ptr<Loop>> Create(unsigned entries = 4096);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // A free SQE, submitting pending ones first if the submission queue is full. Never null.
  io_uring_sqe* Sqe();
  // Makes room for `n` consecutive SQEs. Call before a linked chain (op + link timeout):
  // a chain split by a submit in the middle loses its link, and the op its timeout.
  void Reserve(unsigned n);
  // `c` null: nothing is called when the operation completes (see the top of this file).
  static void SetCompletion(io_uring_sqe* sqe, Completion* c) { io_uring_sqe_set_data(sqe, c); }

  // Submits what is queued, waits up to `timeout_ms` (-1: until one completion) for at
  // least one completion, and dispatches every ready completion. Returns how many.
  int RunOnce(int timeout_ms);

  // Makes a RunOnce blocked in another thread return (eventfd + poll).
  void Wake();

  bool has_socket_op() const { return has_socket_op_; }
  unsigned flags() const { return flags_; }
  io_uring* ring() { return &ring_; }

 private:
  Loop() = default;
  void ArmWake();
  void OnWake(int, uint32_t) { ArmWake(); }
  int Dispatch();

  io_uring ring_{};
  unsigned flags_ = 0;
  bool has_socket_op_ = false;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  MemberCompletion<Loop, &Loop::OnWake> wake_completion_{this};
};

// Notifier: an eventfd whose read stays armed on a Loop, so that Notify() from any thread
// makes `on_notify` run on the loop's thread (notifications that arrive together coalesce
// into one call). The cross-thread wake-up behind slot waits and DNS answers.
//
// Thread-safety: Notify() from any thread — but not concurrently with destruction: the
// owner must make sure no other thread is inside Notify() when it destroys the Notifier
// (callers do so with their own lock). Everything else on the loop's thread.
class Notifier {
 public:
  static absl::StatusOr<std::unique_ptr<Notifier>> Create(Loop* loop,
                                                          std::function<void()> on_notify);
  // Takes the read out of the ring (runs the loop until its cancellation completes).
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  void Notify();

 private:
  Notifier(Loop* loop, std::function<void()> fn) : loop_(loop), on_notify_(std::move(fn)) {}
  void Arm();
  void OnRead(int res, uint32_t flags);

  Loop* loop_;
  std::function<void()> on_notify_;
  int fd_ = -1;
  uint64_t buf_ = 0;
  bool armed_ = false;
  bool closing_ = false;
  MemberCompletion<Notifier, &Notifier::OnRead> done_{this};
};

}  // namespace mxsched::io

#endif  // MXSCHED_IO_LOOP_H_
