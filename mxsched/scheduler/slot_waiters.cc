#include "mxsched/scheduler/slot_waiters.h"

#include "mxsched/scheduler/domain_table.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched {

SlotWaiters::~SlotWaiters() {
  MutexLock lock(&mu_);
  while (!tickets_.empty()) Remove(tickets_.begin()->second.get());
}

void SlotWaiters::Link(Queue* q, Node* n, bool front) {
  n->queue = q;
  if (front) {
    n->prev = nullptr;
    n->next = q->head;
    if (q->head)
      q->head->prev = n;
    else
      q->tail = n;
    q->head = n;
  } else {
    n->next = nullptr;
    n->prev = q->tail;
    if (q->tail)
      q->tail->next = n;
    else
      q->head = n;
    q->tail = n;
  }
}

void SlotWaiters::Unlink(Node* n) {
  Queue* q = n->queue;
  if (n->prev)
    n->prev->next = n->next;
  else
    q->head = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    q->tail = n->prev;
  n->prev = n->next = nullptr;
  n->queue = nullptr;
}

SlotWaiters::Ticket* SlotWaiters::Add(SlotWaiter* waiter, DomainEntry* domain, Kind kind,
                                      const std::vector<HostState*>& hosts, bool front,
                                      int64_t now_nanos) {
  auto owned = std::make_unique<Ticket>();
  Ticket* t = owned.get();
  t->waiter = waiter;
  t->domain = domain;
  t->kind = kind;
  t->seq = next_seq_++;
  t->since_nanos = now_nanos;
  if (kind == Kind::kHosts) {
    t->hosts = hosts;
    t->nodes.resize(hosts.size());
    for (size_t i = 0; i < hosts.size(); ++i) {
      std::unique_ptr<Queue>& q = host_queues_[hosts[i]];
      if (q == nullptr) q = std::make_unique<Queue>();
      t->nodes[i].ticket = t;
      Link(q.get(), &t->nodes[i], front);
      // seq_cst RMW: pairs with the release path's seq_cst read of the counter (a release
      // either sees this waiter or this waiter's re-check sees the freed slot).
      hosts[i]->AddWaiting(1);
    }
  } else {
    t->nodes.resize(1);
    t->nodes[0].ticket = t;
    Queue* q = &server_;
    if (kind == Kind::kDomain) {
      std::unique_ptr<Queue>& dq = domain_queues_[domain];
      if (dq == nullptr) dq = std::make_unique<Queue>();
      q = dq.get();
      domain->waiting.fetch_add(1, std::memory_order_seq_cst);
    } else {
      server_count_.fetch_add(1, std::memory_order_seq_cst);
    }
    Link(q, &t->nodes[0], front);
  }
  domain->tickets.fetch_add(1, std::memory_order_seq_cst);  // blocks eviction
  auto [it, inserted] = tickets_.try_emplace(waiter, std::move(owned));
  if (!inserted) {  // REQUIRES says it cannot be queued twice; keep the books right anyway
    Remove(it->second.get());
    it = tickets_.try_emplace(waiter, std::move(owned)).first;
  }
  count_.fetch_add(1, std::memory_order_seq_cst);
  return t;
}

SlotWaiter* SlotWaiters::Remove(Ticket* t) {
  SlotWaiter* w = t->waiter;
  for (size_t i = 0; i < t->nodes.size(); ++i) {
    Queue* q = t->nodes[i].queue;
    Unlink(&t->nodes[i]);
    if (t->kind == Kind::kHosts) {
      t->hosts[i]->AddWaiting(-1);
    } else if (t->kind == Kind::kDomain) {
      t->domain->waiting.fetch_sub(1, std::memory_order_seq_cst);
      if (q->head == nullptr) domain_queues_.erase(t->domain);  // domains come and go
    } else {
      server_count_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
  t->domain->tickets.fetch_sub(1, std::memory_order_seq_cst);
  count_.fetch_sub(1, std::memory_order_seq_cst);
  tickets_.erase(w);  // frees t
  return w;
}

SlotWaiters::Ticket* SlotWaiters::Find(SlotWaiter* waiter) const {
  auto it = tickets_.find(waiter);
  return it == tickets_.end() ? nullptr : it->second.get();
}

SlotWaiters::Node* SlotWaiters::HostHead(const HostState* host) const {
  auto it = host_queues_.find(host);
  return it == host_queues_.end() ? nullptr : it->second->head;
}

SlotWaiters::Node* SlotWaiters::DomainHead(const DomainEntry* domain) const {
  auto it = domain_queues_.find(domain);
  return it == domain_queues_.end() ? nullptr : it->second->head;
}

std::vector<SlotWaiters::Ticket*> SlotWaiters::All() const {
  std::vector<Ticket*> out;
  out.reserve(tickets_.size());
  for (const auto& [w, t] : tickets_) out.push_back(t.get());
  return out;
}

size_t SlotWaiters::size() const {
  MutexLock lock(&mu_);
  return tickets_.size();
}

}  // namespace mxsched
