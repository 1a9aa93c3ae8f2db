// The cluster component (mxsched::cluster): fleet-wide limits through Redis for the
// Connector (docs/DESIGN.md §7), built from the same Config — the only part of mxsched that
// needs hiredis.
//
//   auto fleet = mxsched::cluster::FleetFromConfig(*config);   // once per process
//   if (!fleet.ok()) return fail(fleet.status());              // names cluster_limits
//   std::unique_ptr<mxsched::io::FleetClient> client;           // one per Loop
//   if (*fleet) client = mxsched::cluster::NewFleetClient(loop, *fleet);
//   options.cluster = client.get();                             // ConnectorOptions
//
// Thread-safety: a Fleet is shared by every loop of the process; each FleetClient is used
// on its own loop's thread. Both outlive the connectors and leases that use them.
#ifndef MXSCHED_CLUSTER_CLUSTER_H_
#define MXSCHED_CLUSTER_CLUSTER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "mxsched/io/fleet_client.h"
#include "mxsched/io/loop.h"
#include "mxsched/scheduler/config.h"

namespace mxsched::io {
class ClusterLimits;  // internal: the process's side of the fleet (mode, shares, leases)
}  // namespace mxsched::io

namespace mxsched::cluster {

// The process's fleet state for the configuration's cluster_limits, cluster_name and the
// other cluster_* options: null (and OK) when cluster_limits is "" (limits per process); an
// error naming the option for a bad value.
absl::StatusOr<std::shared_ptr<io::ClusterLimits>> FleetFromConfig(const Config& config);

// What the admin endpoint shows of `fleet` (admin::AdminOptions::fleet); null for null.
const io::FleetView* View(const std::shared_ptr<io::ClusterLimits>& fleet);

// A client on `loop` for one Connector (ConnectorOptions::cluster).
std::unique_ptr<io::FleetClient> NewFleetClient(io::Loop* loop,
                                                std::shared_ptr<io::ClusterLimits> fleet);

}  // namespace mxsched::cluster

#endif  // MXSCHED_CLUSTER_CLUSTER_H_
