#include "mxsched/io/loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "mxsched/base/strings.h"

namespace mxsched::io {

absl::StatusOr<std::unique_ptr<Loop>> Loop::Create(unsigned entries) {
  entries = std::max(entries, 4u);  // room for a linked pair plus the wake-up read
  std::unique_ptr<Loop> loop(new Loop);
  const unsigned attempts[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int rc = -EINVAL;
  for (unsigned f : attempts) {
    io_uring_params p{};
    p.flags = f;
    rc = io_uring_queue_init_params(entries, &loop->ring_, &p);
    if (rc == 0) {
      loop->flags_ = f;
      break;
    }
  }
  if (rc != 0) {
    return absl::UnavailableError(StrCat("io_uring_queue_init: ", std::strerror(-rc)));
  }
  if (io_uring_probe* probe = io_uring_get_probe_ring(&loop->ring_)) {
    loop->has_socket_op_ = io_uring_opcode_supported(probe, IORING_OP_SOCKET);
    io_uring_free_probe(probe);
  }
  loop->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (loop->wake_fd_ < 0) return absl::InternalError(StrCat("eventfd: ", std::strerror(errno)));
  loop->ArmWake();
  return loop;
}

Loop::~Loop() {
  io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Loop::ArmWake() {
  // A read on the eventfd completes when another thread writes to it.
  io_uring_sqe* sqe = Sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
  SetCompletion(sqe, &wake_completion_);
}

void Loop::Wake() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

io_uring_sqe* Loop::Sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Loop::Reserve(unsigned n) {
  while (io_uring_sq_space_left(&ring_) < n) io_uring_submit(&ring_);
}

int Loop::Dispatch() {
  int n = 0;
  io_uring_cqe* cqe;
  unsigned head;
  // Completions may submit (and so may reap-free SQ space); copy out before calling.
  while (true) {
    unsigned count = 0;
    Completion* batch_c[64];
    int batch_res[64];
    uint32_t batch_flags[64];
    io_uring_for_each_cqe(&ring_, head, cqe) {
      batch_c[count] = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
      batch_res[count] = cqe->res;
      batch_flags[count] = cqe->flags;
      if (++count == 64) break;
    }
    if (count == 0) break;
    io_uring_cq_advance(&ring_, count);
    for (unsigned i = 0; i < count; ++i) {
      if (batch_c[i] != nullptr) batch_c[i]->fn(batch_c[i], batch_res[i], batch_flags[i]);
    }
    n += count;
  }
  return n;
}

int Loop::RunOnce(int timeout_ms) {
  io_uring_cqe* cqe = nullptr;
  int rc;
  if (timeout_ms < 0) {
    rc = io_uring_submit_and_wait(&ring_, 1);
  } else {
    __kernel_timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1'000'000LL};
    rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  (void)rc;  // -ETIME or -EINTR just mean "nothing yet"
  return Dispatch();
}

absl::StatusOr<std::unique_ptr<Notifier>> Notifier::Create(Loop* loop,
                                                           std::function<void()> on_notify) {
  std::unique_ptr<Notifier> n(new Notifier(loop, std::move(on_notify)));
  n->fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (n->fd_ < 0) return absl::InternalError(StrCat("eventfd: ", std::strerror(errno)));
  n->Arm();
  return n;
}

Notifier::~Notifier() {
  closing_ = true;
  if (armed_) {
    io_uring_sqe* sqe = loop_->Sqe();
    io_uring_prep_cancel(sqe, &done_, 0);
    Loop::SetCompletion(sqe, nullptr);
    for (int i = 0; i < 1000 && armed_; ++i) loop_->RunOnce(10);
  }
  if (fd_ >= 0) close(fd_);
}

void Notifier::Notify() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof(one));
}

void Notifier::Arm() {
  io_uring_sqe* sqe = loop_->Sqe();
  io_uring_prep_read(sqe, fd_, &buf_, sizeof(buf_), 0);
  Loop::SetCompletion(sqe, &done_);
  armed_ = true;
}

void Notifier::OnRead(int res, uint32_t) {
  armed_ = false;
  if (res == -ECANCELED || closing_) return;
  Arm();  // before the callback: a Notify() during it must not be lost
  on_notify_();
}

}  // namespace mxsched::io
