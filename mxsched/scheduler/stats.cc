#include "mxsched/scheduler/stats.h"

namespace mxsched {

namespace {
// A small dense number per thread picks its stripe. Constant-initialized: no TLS guard.
thread_local uint32_t tls_stripe = UINT32_MAX;
std::atomic<uint32_t> next_stripe{0};
}  // namespace

SelectorStats::SelectorStats() : stripes_(new Stripe[kStripes]) {}
SelectorStats::~SelectorStats() = default;

SelectorStats::Stripe& SelectorStats::Mine() {
  uint32_t s = tls_stripe;
  if (s == UINT32_MAX) {
    s = next_stripe.fetch_add(1, kRelaxed) % kStripes;
    tls_stripe = s;
  }
  return stripes_[s];
}

void SelectorStats::CountSession(size_t result, int64_t waited_nanos) {
  Stripe& st = Mine();
  st.sessions[result].fetch_add(1, kRelaxed);
  if (waited_nanos < 0) return;
  size_t i = 0;
  while (i < kWaitBoundsNanos.size() && waited_nanos > kWaitBoundsNanos[i]) ++i;
  st.wait_buckets[i].fetch_add(1, kRelaxed);
  st.wait_sum_nanos.fetch_add(waited_nanos, kRelaxed);
}

static_assert(static_cast<size_t>(ReuseEvent::kStopped) + 1 == kReuseEvents);

std::string_view ReuseEventName(ReuseEvent e) {
  switch (e) {
    case ReuseEvent::kParked: return "parked";
    case ReuseEvent::kReused: return "reused";
    case ReuseEvent::kStale: return "stale";
    case ReuseEvent::kIdleTimeout: return "idle_timeout";
    case ReuseEvent::kServerClosed: return "server_closed";
    case ReuseEvent::kEvicted: return "evicted";
    case ReuseEvent::kMaxDeliveries: return "max_deliveries";
    case ReuseEvent::kStopped: return "stopped";
  }
  return "?";
}

SelectorStats::Totals SelectorStats::Collect() const {
  Totals t;
  for (size_t s = 0; s < kStripes; ++s) {
    const Stripe& st = stripes_[s];
    for (size_t i = 0; i < kDeferReasons; ++i) t.deferrals[i] += st.deferrals[i].load(kRelaxed);
    for (size_t i = 0; i < kSessionResults; ++i) t.sessions[i] += st.sessions[i].load(kRelaxed);
    for (size_t i = 0; i < t.wait_buckets.size(); ++i) {
      t.wait_buckets[i] += st.wait_buckets[i].load(kRelaxed);
    }
    t.wait_sum_nanos += st.wait_sum_nanos.load(kRelaxed);
    t.domains_created += st.domains_created.load(kRelaxed);
    t.domains_evicted += st.domains_evicted.load(kRelaxed);
    for (size_t i = 0; i < kReuseEvents; ++i) t.reuse[i] += st.reuse[i].load(kRelaxed);
  }
  return t;
}

}  // namespace mxsched
