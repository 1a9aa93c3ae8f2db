// Farm: an io_uring SMTP sink listening on many loopback addresses, with injectable faults
// and per-address counters — the peer for tests, `mxsched load` and the demo.
//
// Each accepted connection gets a greeting ("220 <hostname> ESMTP"), then a minimal SMTP
// dialogue: EHLO/HELO, MAIL, RCPT, DATA ... ".", RSET, NOOP answered 250 (354 for DATA),
// QUIT answered 221 and closed, anything else 502. Faults, per address:
//   refuse      nothing listens: connects are refused
//   blackhole   connections are accepted and never answered (the client's banner timeout)
//   tempfail    "421 4.3.2 farm fault: try later" then close
//   slow:MS     the greeting comes after MS milliseconds
//   reset       the connection is accepted, then reset (RST) before any greeting
//   cap:N       serves N sessions at once; every connection beyond that is answered
//               "421 4.7.0 too many connections from your IP" and closed — a receiver that
//               limits concurrency per sending IP (Yahoo, Microsoft, GMX...)
// Faults can change while the farm runs (SetFault), so tests can make a host flap.
// Source faults (FarmOptions::source_faults, SetSourceFault) apply the same faults to every
// connection FROM one client address, on every listener: a receiver that blocks one
// sending IP (issue 21: egress bindings). The farm also counts connections per source
// address (SourceStats): what a receiver that limits per sending IP sees.
//
// Resources: a client that sends nothing for FarmOptions::idle_timeout_ms (30 s by default)
// while the farm waits for its next command is closed and counted in `idle_closed` (except
// under blackhole, whose connections wait for the client to give up: that is the fault).
// When accept fails for lack of fds or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the farm
// does not retry at once — it would spin at 100% CPU, the failure is immediate — but backs
// off (10 ms, doubling to 250 ms) and probes for a free fd before it accepts again; each
// such failure counts in `accept_backoffs`. It recovers by itself once fds are freed.
//
// Thread-safety: Start() runs the farm on its own thread. Stats(), StatsJson(), SetFault()
// and Stop() are safe from any thread.
#ifndef MXSCHED_TESTBED_FARM_H_
#define MXSCHED_TESTBED_FARM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "mxsched/base/endpoint.h"
#include "mxsched/base/mutex.h"

namespace mxsched::testbed {

struct Fault {
  enum class Kind : uint8_t { kNone, kRefuse, kBlackhole, kTempfail, kSlow, kReset, kCap };
  Kind kind = Kind::kNone;
  int slow_ms = 0;  // kSlow: greeting delay; kCap: sessions served at once
  std::string ToString() const;
};

// "127.0.1.1-127.0.1.64:2525", "127.0.0.9:2525" or "[::1]:2525". IPv4 ranges at most 65,536
// addresses; loopback only (127.0.0.0/8, ::1) — the farm is a test peer, not a server.
absl::StatusOr<std::vector<Endpoint>> ParseListenSpec(std::string_view spec);
// "ADDR=refuse|blackhole|tempfail|reset|slow:MS|cap:N" (ADDR without brackets for IPv6).
absl::StatusOr<std::pair<IpAddress, Fault>> ParseFaultSpec(std::string_view spec);

// A TCP port free on 127.0.0.1 right now (bound with port 0, then released), for farms and
// tests that need one port across many loopback addresses.
uint16_t FreeLoopbackPort();

struct FarmOptions {
  std::vector<Endpoint> listen;
  std::vector<std::pair<IpAddress, Fault>> faults;  // applies to every port of the address
  std::string hostname = "farm.mxsched.test";
  // A connection that sends nothing for this long while the farm waits for its next command
  // is closed (counted in idle_closed), so clients that never speak cannot hold the farm's
  // fds forever. 0: never. Blackhole connections are exempt (see the top of this file).
  int idle_timeout_ms = 30'000;
  // Faults by client (source) address; they win over the listener's fault.
  std::vector<std::pair<IpAddress, Fault>> source_faults;
  // Accept-rate windows: for each, the most connections accepted within any window of that
  // many milliseconds, per address and over all of them — what a receiver that limits the
  // connection rate counts (outbound_throttle_connections, docs/DESIGN.md §12). Each
  // window keeps only the accept times inside it: memory follows the rate, not the run.
  std::vector<int> rate_windows_ms = {1000};
  // > 0: every Nth RSET the farm gets (over all addresses) is answered "421 4.3.2" and the
  // connection closed — a server that dropped a reused connection's session, found by the
  // client's RSET (docs/DESIGN.md §13: stale). Counted in rsets_refused. 0: never.
  int rset_fail_every = 0;
};

// The most accepts seen within any window of `window_ms` (half-open: N+1 accepts less than
// window_ms apart first to last count N+1).
struct FarmRatePeak {
  int window_ms = 0;
  int64_t peak = 0;
};

// Connections from one client (source) address, over every listener.
struct FarmSourceStats {
  IpAddress address;
  uint64_t total = 0;  // connections accepted from it
  int64_t current = 0;
  int64_t peak = 0;  // highest open at once from it, server-side
};

struct FarmAddressStats {
  Endpoint endpoint;
  Fault fault;
  uint64_t total = 0;            // connections accepted
  uint64_t quits = 0;            // sessions that ended with QUIT
  uint64_t messages = 0;         // DATA transactions completed
  int64_t current = 0;           // open now
  int64_t peak = 0;              // highest concurrent, server-side (every accepted connection)
  uint64_t rejected = 0;         // cap:N — connections answered 421 "too many connections"
  int64_t served_peak = 0;       // highest number of sessions served (greeted 220) at once
  uint64_t idle_closed = 0;      // closed by the farm after idle_timeout_ms without a byte
  uint64_t accept_backoffs = 0;  // accepts failed for lack of fds/memory, each backed off
  std::vector<FarmRatePeak> rate_peaks;  // one per FarmOptions::rate_windows_ms
  uint64_t rsets_refused = 0;  // RSETs answered 421 (FarmOptions::rset_fail_every)
};

class Farm {
 public:
  static absl::StatusOr<std::unique_ptr<Farm>> Start(FarmOptions options);
  ~Farm();
  Farm(const Farm&) = delete;
  Farm& operator=(const Farm&) = delete;

  // Stops accepting, closes every connection and joins the thread. Idempotent.
  void Stop();
  void SetFault(const IpAddress& address, Fault fault);
  // The fault for connections from `source` (Kind::kNone clears it). Takes effect for
  // connections accepted after the call returns.
  void SetSourceFault(const IpAddress& source, Fault fault);
  std::vector<FarmAddressStats> Stats() const;
  // Per client address, ordered by address.
  std::vector<FarmSourceStats> SourceStats() const;
  std::string StatsJson() const;
  // Highest number of connections open at once over ALL addresses (server-side): what a
  // limit shared by many hosts — a provider limit, docs/DESIGN.md §6 — must keep below.
  int64_t PeakAllAddresses() const;
  // The accept-rate peaks over all addresses, one per FarmOptions::rate_windows_ms.
  std::vector<FarmRatePeak> RatePeaksAllAddresses() const;
  // The same for MAIL commands (message transactions, every address): what a receiver that
  // limits the message rate counts (outbound_throttle_messages); "mail_rate_peaks" in JSON.
  std::vector<FarmRatePeak> MailRatePeaksAllAddresses() const;
  // The accept times (CLOCK_MONOTONIC nanoseconds, SteadyNowNanos) of the last 65,536
  // connections over all addresses, oldest first: tests check the spacing of throttled
  // starts as the receiver saw them.
  std::vector<int64_t> RecentAcceptTimes() const;
  // The same for MAIL commands (message transactions) over all addresses: what a receiver
  // that limits the message rate counts (outbound_throttle_messages).
  std::vector<int64_t> RecentMailTimes() const;
  // Zeroes peaks (to the current count) and totals, e.g. between scenarios.
  void ResetCounters();

  struct Impl;

 private:
  explicit Farm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mxsched::testbed

#endif  // MXSCHED_TESTBED_FARM_H_
