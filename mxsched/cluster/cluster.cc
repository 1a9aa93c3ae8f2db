#include "mxsched/cluster/cluster.h"

#include "mxsched/cluster/cluster_limits.h"

namespace mxsched::cluster {

absl::StatusOr<std::shared_ptr<io::ClusterLimits>> FleetFromConfig(const Config& config) {
  absl::StatusOr<std::optional<io::ClusterOptions>> options = io::ClusterOptionsFromConfig(config);
  if (!options.ok()) return options.status();
  if (!options->has_value()) return std::shared_ptr<io::ClusterLimits>();
  return std::make_shared<io::ClusterLimits>(**options);
}

const io::FleetView* View(const std::shared_ptr<io::ClusterLimits>& fleet) {
  return fleet.get();
}

std::unique_ptr<io::FleetClient> NewFleetClient(io::Loop* loop,
                                                std::shared_ptr<io::ClusterLimits> fleet) {
  return std::make_unique<io::ClusterClient>(loop, std::move(fleet));
}

}  // namespace mxsched::cluster
