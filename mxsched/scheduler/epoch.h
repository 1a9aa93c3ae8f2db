// Epoch-based reclamation (EBR) for the selector's lock-free read path.
//
// Readers pin the current epoch for the duration of a read-side critical section
// (EpochGuard); writers unlink an object and Retire() it; the object is freed once every
// thread that could still hold it has left its critical section.
//
// The read side is a plain store: the store-load fence readers would need is moved to the
// writer side with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) — the "asymmetric fence"
// used by liburcu's memb flavour and folly. Where the kernel lacks it (or under TSan, which
// cannot see membarrier), readers fall back to a seq_cst exchange (a full barrier).
//
// Thread-safety: every function is safe for concurrent use by multiple threads. Guards
// nest. A thread's first guard registers it (lock-free; records are reused).
// Retire never waits for readers: it appends to the retire list under a short internal
// mutex, and every kReclaimBatch-th call also runs a reclamation pass on the calling thread —
// one heavy barrier (a membarrier syscall) and the deleters of what no reader can hold, run
// after the mutex is released. So Retire belongs on slow paths (route refresh, table growth),
// never on the Acquire fast path, and `deleter` must not take a lock the retiring thread
// holds. Reclaim() runs a pass on demand. (Epoch.RetireDoesNotWaitForAPinnedReader)
#ifndef MXSCHED_SCHEDULER_EPOCH_H_
#define MXSCHED_SCHEDULER_EPOCH_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/config.h"
#include "absl/base/optimization.h"

namespace mxsched::epoch {

struct alignas(128) ThreadRecord {
  std::atomic<uint64_t> epoch{0};  // 0: not in a critical section
  uint32_t depth = 0;
  std::atomic<bool> in_use{false};
  ThreadRecord* next = nullptr;
};

namespace internal {
extern std::atomic<uint64_t> global_epoch;
extern bool readers_need_fence;
ThreadRecord* RegisterThisThread();
inline thread_local ThreadRecord* tls_record = nullptr;
}  // namespace internal

class EpochGuard {
 public:
  EpochGuard() {
    ThreadRecord* r = internal::tls_record;
    if (ABSL_PREDICT_FALSE(r == nullptr)) r = internal::RegisterThisThread();
    rec_ = r;
    if (r->depth++ == 0) {
      const uint64_t e = internal::global_epoch.load(std::memory_order_acquire);
      if (internal::readers_need_fence) {
        r->epoch.exchange(e, std::memory_order_seq_cst);  // store + full barrier (xchg)
      } else {
        r->epoch.store(e, std::memory_order_relaxed);
        std::atomic_signal_fence(std::memory_order_seq_cst);  // compiler-only
      }
    }
  }
  ~EpochGuard() {
    if (--rec_->depth == 0) rec_->epoch.store(0, std::memory_order_release);
  }
  EpochGuard(const EpochGuard&) = delete;
  EpochGuard& operator=(const EpochGuard&) = delete;

 private:
  ThreadRecord* rec_;
};

inline constexpr size_t kReclaimBatch = 256;

// Frees `p` with `deleter(p)` once no reader can hold it.
// REQUIRES: p is already unreachable for new readers.
void Retire(void* p, void (*deleter)(void*));

template <typename T>
void RetireObject(T* p) {
  Retire(p, [](void* q) { delete static_cast<T*>(q); });
}

// Frees what can be freed now; returns how many objects are still waiting.
size_t Reclaim();

// True when readers run fence-free (membarrier available).
bool UsingMembarrier();

}  // namespace mxsched::epoch

#endif  // MXSCHED_SCHEDULER_EPOCH_H_
