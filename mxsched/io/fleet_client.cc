#include "mxsched/io/fleet_client.h"

#include <utility>

namespace mxsched::io {

ClusterLease& ClusterLease::operator=(ClusterLease&& o) noexcept {
  if (this != &o) {
    Release();
    client_ = std::exchange(o.client_, nullptr);
    handle_ = std::exchange(o.handle_, 0);
  }
  return *this;
}

void ClusterLease::Release() {
  if (client_ == nullptr) return;
  std::exchange(client_, nullptr)->ReleaseLease(handle_);
}

}  // namespace mxsched::io
