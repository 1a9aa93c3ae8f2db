// Small helpers shared by the tests: configs from text, deterministic time and randomness.
#ifndef MXSCHED_TESTS_TESTUTIL_H_
#define MXSCHED_TESTS_TESTUTIL_H_

#include <memory>
#include <string>
#include <string_view>

#include "gtest/gtest.h"
#include "mxsched/base/clock.h"
#include "mxsched/scheduler/config.h"
#include "mxsched/scheduler/selector.h"

namespace mxsched::testing {

// Parses `text` or fails the test with the parser's message.
inline std::shared_ptr<const Config> ConfigFrom(std::string_view text) {
  absl::StatusOr<Config> c = ParseConfig(text, "test.conf");
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return std::make_shared<Config>();
  return std::make_shared<const Config>(*std::move(c));
}

// A selector with a manual clock and a seeded random source, the way every rule is tested.
struct SelectorFixture {
  explicit SelectorFixture(std::string_view config_text, uint64_t seed = 42)
      : random(seed), selector(ConfigFrom(config_text), {.clock = &clock, .random = &random}) {}

  // Acquires or fails the test, returning the lease.
  Lease MustAcquire(std::string_view domain) {
    AcquireResult r = selector.Acquire(domain);
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.deferral().ToString());
    return r.ok() ? r.TakeLease() : Lease();
  }
  // The address text of the host the next acquisition picks (released at once).
  std::string Pick(std::string_view domain) {
    Lease l = MustAcquire(domain);
    return l.valid() ? l.endpoint().address.ToString() : "";
  }

  ManualClock clock;
  SplitMixRandom random;
  Selector selector;
};

}  // namespace mxsched::testing

#endif  // MXSCHED_TESTS_TESTUTIL_H_
