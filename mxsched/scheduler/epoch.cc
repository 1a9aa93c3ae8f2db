#include "mxsched/scheduler/epoch.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "absl/base/thread_annotations.h"
#include "mxsched/base/mutex.h"
#include "mxsched/base/sanitizers.h"

namespace mxsched::epoch {
namespace internal {

std::atomic<uint64_t> global_epoch{1};

namespace {

bool SetUpMembarrier() {
#ifdef MXSCHED_TSAN
  return false;
#else
  long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0);
  if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
  return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0;
#endif
}

const bool membarrier_ok = SetUpMembarrier();

}  // namespace

bool readers_need_fence = !membarrier_ok;

namespace {

struct Retired {
  void* p;
  void (*deleter)(void*);
  uint64_t epoch;
};

struct Domain {
  Mutex mu;
  std::atomic<ThreadRecord*> records{nullptr};  // push-only list; records are reused
  std::vector<Retired> retired ABSL_GUARDED_BY(mu);
  size_t since_reclaim ABSL_GUARDED_BY(mu) = 0;
};

Domain& TheDomain() {
  static Domain* d = new Domain;  // never destroyed: threads may outlive static teardown
  return *d;
}

struct ThreadExit {
  ~ThreadExit() {
    if (tls_record != nullptr) {
      tls_record->epoch.store(0, std::memory_order_release);
      tls_record->in_use.store(false, std::memory_order_release);
      tls_record = nullptr;
    }
  }
};
thread_local ThreadExit thread_exit;

void HeavyBarrier() {
  if (membarrier_ok) {
    syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0);
  } else {
    // A seq_cst read-modify-write is a full barrier (and, unlike a standalone fence, one
    // ThreadSanitizer understands).
    static std::atomic<uint64_t> barrier{0};
    barrier.fetch_add(1, std::memory_order_seq_cst);
  }
}

// Moves what no reader can hold from d.retired to `free_now`; the caller runs the deleters
// after releasing d.mu. Returns how many objects still wait.
size_t CollectLocked(Domain& d, std::vector<Retired>& free_now)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(d.mu) {
  d.since_reclaim = 0;
  if (d.retired.empty()) return 0;
  HeavyBarrier();  // makes every reader's epoch store visible before we read it
  uint64_t oldest = UINT64_MAX;
  for (ThreadRecord* r = d.records.load(std::memory_order_acquire); r; r = r->next) {
    uint64_t e = r->epoch.load(std::memory_order_acquire);
    if (e != 0 && e < oldest) oldest = e;
  }
  std::vector<Retired> keep;
  for (const Retired& x : d.retired) (x.epoch < oldest ? free_now : keep).push_back(x);
  d.retired.swap(keep);
  return d.retired.size();
}

void RunDeleters(const std::vector<Retired>& free_now) {
  for (const Retired& x : free_now) x.deleter(x.p);
}

}  // namespace

ThreadRecord* RegisterThisThread() {
  (void)thread_exit;  // odr-use so the destructor runs at thread exit
  Domain& d = TheDomain();
  for (ThreadRecord* r = d.records.load(std::memory_order_acquire); r; r = r->next) {
    bool expected = false;
    if (!r->in_use.load(std::memory_order_relaxed) &&
        r->in_use.compare_exchange_strong(expected, true)) {
      tls_record = r;
      return r;
    }
  }
  auto* r = new ThreadRecord;
  r->in_use.store(true, std::memory_order_relaxed);
  ThreadRecord* head = d.records.load(std::memory_order_relaxed);
  do {
    r->next = head;
  } while (!d.records.compare_exchange_weak(head, r, std::memory_order_release,
                                            std::memory_order_relaxed));
  tls_record = r;
  return r;
}

}  // namespace internal

void Retire(void* p, void (*deleter)(void*)) {
  internal::Domain& d = internal::TheDomain();
  std::vector<internal::Retired> free_now;
  {
    MutexLock lock(&d.mu);
    // Readers that pinned an epoch <= e may hold p; readers pinning after the increment
    // synchronize with it and can no longer reach p.
    uint64_t e = internal::global_epoch.fetch_add(1, std::memory_order_acq_rel);
    d.retired.push_back({p, deleter, e});
    if (++d.since_reclaim >= kReclaimBatch) internal::CollectLocked(d, free_now);
  }
  internal::RunDeleters(free_now);
}

size_t Reclaim() {
  internal::Domain& d = internal::TheDomain();
  std::vector<internal::Retired> free_now;
  size_t waiting;
  {
    MutexLock lock(&d.mu);
    waiting = internal::CollectLocked(d, free_now);
  }
  internal::RunDeleters(free_now);
  return waiting;
}

bool UsingMembarrier() { return internal::membarrier_ok; }

}  // namespace mxsched::epoch
