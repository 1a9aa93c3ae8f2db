// Mutex and MutexLock: std::mutex with Abseil's thread-safety annotations.
//
// Why not absl::Mutex: Debian 12's Abseil is built with deadlock detection on, which makes
// every nested lock walk a global graph (it dominated building a million domain entries),
// and its futex-based internals are invisible to ThreadSanitizer when the library itself
// is not instrumented — std::mutex goes through pthreads, which TSan intercepts. The
// annotations keep clang's -Wthread-safety checking on every guarded member.
//
// Thread-safety: a mutex.
#ifndef MXSCHED_BASE_MUTEX_H_
#define MXSCHED_BASE_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace mxsched {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

}  // namespace mxsched

#endif  // MXSCHED_BASE_MUTEX_H_
