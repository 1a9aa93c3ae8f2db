#include "bench/mutex_selector.h"

#include <map>

#include "mxsched/base/strings.h"

namespace mxsched::bench {

MutexSelector::Host* MutexSelector::GetHost(const Endpoint& ep) {
  std::lock_guard lock(hosts_mu_);
  auto& h = hosts_[ep];
  if (!h) {
    h = std::make_unique<Host>();
    h->endpoint = ep;
    h->limit = config_->HostLimit("", ep.address);
  }
  return h.get();
}

MutexSelector::Domain* MutexSelector::GetDomain(std::string_view name) {
  std::string key = ToLower(name);
  {
    std::shared_lock lock(map_mu_);
    auto it = domains_.find(key);
    if (it != domains_.end()) return it->second.get();
  }
  auto d = std::make_unique<Domain>();
  const DomainSettings& ds = config_->ForDomain(key);
  d->limit = ds.max_outbound_connections;
  std::map<uint32_t, std::vector<Host*>> tiers;
  for (const RouteItem& item : ds.routes) {
    if (item.address) {
      tiers[item.tier].push_back(GetHost({*item.address, item.PortOr(ds.remote_smtp_port)}));
    }
  }
  for (auto& [k, hosts] : tiers) d->tiers.push_back(std::move(hosts));
  std::unique_lock lock(map_mu_);
  auto [it, inserted] = domains_.try_emplace(key, std::move(d));
  return it->second.get();
}

MutexSelector::Lease MutexSelector::Acquire(std::string_view name) {
  Domain* d = GetDomain(name);
  std::lock_guard dlock(d->mu);
  if (d->active >= d->limit) return {};
  {
    std::lock_guard slock(server_mu_);
    if (server_active_ >= config_->server_max_outbound_connections) return {};
    ++server_active_;
  }
  for (auto& tier : d->tiers) {
    const uint32_t n = static_cast<uint32_t>(tier.size());
    for (uint32_t i = 0; i < n; ++i) {
      Host* h = tier[(d->cursor + i) % n];
      std::lock_guard hlock(h->mu);
      if (h->active < h->limit) {
        ++h->active;
        ++d->active;
        d->cursor += i + 1;
        return {h, d};
      }
    }
  }
  std::lock_guard slock(server_mu_);
  --server_active_;
  return {};
}

void MutexSelector::Release(const Lease& lease) {
  {
    std::lock_guard hlock(lease.host->mu);
    --lease.host->active;
  }
  {
    std::lock_guard dlock(lease.domain->mu);
    --lease.domain->active;
  }
  std::lock_guard slock(server_mu_);
  --server_active_;
}

}  // namespace mxsched::bench
