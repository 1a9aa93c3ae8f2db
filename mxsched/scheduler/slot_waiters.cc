#include "mxsched/scheduler/slot_waiters.h"

#include <algorithm>

#include "mxsched/scheduler/bindings.h"
#include "mxsched/scheduler/domain_table.h"
#include "mxsched/scheduler/host_registry.h"

namespace mxsched {

SlotWaiters::~SlotWaiters() {
  // Queued waiters may be gone already (REQUIRES only keeps them until woken or cancelled,
  // and the selector is going away): drop the books without touching them.
  MutexLock lock(&mu_);
  for (Ticket* t : All()) {
    if (t->kind != Kind::kHosts) continue;
    for (uint32_t i = 0; i < t->num_nodes; ++i) t->host(i)->AddWaiting(-1);
  }
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
  if (q->head == n) {
    // The head's `prev` is not kept; nor is the new head's (nothing reads a head's prev), so
    // serving the head touches only its own ticket.
    q->head = n->next;
    if (n->next == nullptr) q->tail = nullptr;
  } else {
    n->prev->next = n->next;
    if (n->next)
      n->next->prev = n->prev;
    else
      q->tail = n->prev;
  }
  n->prev = n->next = nullptr;
  n->queue = nullptr;
}

SlotWaiters::HostQueue* SlotWaiters::HostQueueOf(HostState* host) {
  const size_t i = host->index();
  const size_t chunk = i >> kChunkBits;
  if (chunk >= host_queues_.size()) host_queues_.resize(chunk + 1);
  std::unique_ptr<HostQueue[]>& c = host_queues_[chunk];
  if (c == nullptr) c = std::make_unique<HostQueue[]>(kChunk);
  HostQueue* q = &c[i & (kChunk - 1)];
  q->host = host;
  return q;
}

void SlotWaiters::ListInGroup(HostQueue* q) {
  const LimitGroup* g = q->host->group();
  if (g == nullptr) return;
  HostQueue*& head = group_hosts_[g];
  q->group = g;
  q->group_prev = nullptr;
  q->group_next = head;
  if (head != nullptr) head->group_prev = q;
  head = q;
}

void SlotWaiters::UnlistFromGroup(HostQueue* q) {
  if (q->group == nullptr) return;
  if (q->group_prev != nullptr) {
    q->group_prev->group_next = q->group_next;
  } else {
    auto it = group_hosts_.find(q->group);
    if (q->group_next != nullptr)
      it->second = q->group_next;
    else
      group_hosts_.erase(it);
  }
  if (q->group_next != nullptr) q->group_next->group_prev = q->group_prev;
  q->group = nullptr;
  q->group_prev = q->group_next = nullptr;
}

SlotWaiters::Ticket* SlotWaiters::NewTicket() {
  if (Ticket* t = free_tickets_) {
    free_tickets_ = t->first.ticket;
    return t;
  }
  if (ticket_chunk_used_ == kChunk) {
    ticket_chunks_.push_back(std::make_unique<Ticket[]>(kChunk));
    ticket_chunk_used_ = 0;
  }
  Ticket* t = &ticket_chunks_.back()[ticket_chunk_used_++];
  t->owner = this;
  return t;
}

static_assert(sizeof(SlotWaiters::Ticket) == 128);

SlotWaiters::Ticket* SlotWaiters::Add(SlotWaiter* waiter, DomainEntry* domain, Kind kind,
                                      std::span<HostState* const> hosts, bool front) {
  if (Ticket* old = Find(waiter)) {  // REQUIRES says it cannot be queued twice; keep the books
    Remove(old);
  }
  Ticket* t = NewTicket();
  t->waiter = waiter;
  t->domain = domain;
  t->kind = kind;
  t->seq = front ? front_seq_-- : next_seq_++;
  const uint32_t n = kind == Kind::kHosts ? static_cast<uint32_t>(hosts.size()) : 1;
  t->on_heap = n > kInlineNodes;
  if (t->on_heap && t->heap_capacity < n) {
    t->heap_capacity = std::max<uint32_t>(n, 8);
    t->heap_nodes = std::make_unique<Node[]>(t->heap_capacity);
  }
  t->num_nodes = n;
  if (kind == Kind::kHosts) {
    for (uint32_t i = 0; i < n; ++i) {
      HostQueue* q = HostQueueOf(hosts[i]);
      Node* node = &t->node(i);
      node->ticket = t;
      Link(q, node, front);
      if (q->group != hosts[i]->group()) {  // newly non-empty, or the host changed groups
        UnlistFromGroup(q);
        ListInGroup(q);
      }
      // seq_cst RMW: pairs with the release path's seq_cst read of the counter (a release
      // either sees this waiter or this waiter's re-check sees the freed slot).
      hosts[i]->AddWaiting(1);
    }
  } else {
    Node* node = &t->node(0);
    node->ticket = t;
    Queue* q = &server_;
    if (kind == Kind::kDomain) {
      std::unique_ptr<Queue>& dq = domain_queues_[domain];
      if (dq == nullptr) dq = std::make_unique<Queue>();
      q = dq.get();
      domain->waiting.fetch_add(1, std::memory_order_seq_cst);
    } else {
      server_count_.fetch_add(1, std::memory_order_seq_cst);
    }
    Link(q, node, front);
  }
  domain->tickets.fetch_add(1, std::memory_order_seq_cst);  // blocks eviction
  waiter->slot_ticket_ = t;  // an opaque pointer in the public SlotWaiter
  ++live_;
  count_.fetch_add(1, std::memory_order_seq_cst);
  return t;
}

SlotWaiter* SlotWaiters::Remove(Ticket* t) {
  SlotWaiter* w = t->waiter;
  for (uint32_t i = 0; i < t->num_nodes; ++i) {
    Node* node = &t->node(i);
    Queue* q = node->queue;
    Unlink(node);
    if (t->kind == Kind::kHosts) {
      HostQueue* hq = static_cast<HostQueue*>(q);
      if (hq->head == nullptr) UnlistFromGroup(hq);
      hq->host->AddWaiting(-1);
    } else if (t->kind == Kind::kDomain) {
      t->domain->waiting.fetch_sub(1, std::memory_order_seq_cst);
      if (q->head == nullptr) domain_queues_.erase(t->domain);  // domains come and go
    } else {
      server_count_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
  t->domain->tickets.fetch_sub(1, std::memory_order_seq_cst);
  if (t->egress != nullptr) {  // taken by SelectorImpl::Enqueue (a reload may free it now)
    t->egress->Unref();
    t->egress = nullptr;
  }
  count_.fetch_sub(1, std::memory_order_seq_cst);
  --live_;
  if (w->slot_ticket_ == t) w->slot_ticket_ = nullptr;
  // Back on the free list, touching only the first line.
  t->waiter = nullptr;
  t->num_nodes = 0;
  t->first.ticket = free_tickets_;
  free_tickets_ = t;
  return w;
}

SlotWaiters::Ticket* SlotWaiters::Find(SlotWaiter* waiter) const {
  Ticket* t = static_cast<Ticket*>(waiter->slot_ticket_);
  return t != nullptr && t->waiter == waiter && t->owner == this ? t : nullptr;
}

SlotWaiters::Node* SlotWaiters::HostHead(const HostState* host) const {
  const size_t i = host->index();
  const size_t chunk = i >> kChunkBits;
  if (chunk >= host_queues_.size() || host_queues_[chunk] == nullptr) return nullptr;
  return host_queues_[chunk][i & (kChunk - 1)].head;
}

SlotWaiters::Node* SlotWaiters::DomainHead(const DomainEntry* domain) const {
  auto it = domain_queues_.find(domain);
  return it == domain_queues_.end() ? nullptr : it->second->head;
}

SlotWaiters::HostQueue* SlotWaiters::GroupHosts(const LimitGroup* group) const {
  auto it = group_hosts_.find(group);
  return it == group_hosts_.end() ? nullptr : it->second;
}

std::vector<SlotWaiters::Ticket*> SlotWaiters::All() const {
  std::vector<Ticket*> out;
  out.reserve(live_);
  for (size_t c = 0; c < ticket_chunks_.size(); ++c) {
    const size_t used = c + 1 == ticket_chunks_.size() ? ticket_chunk_used_ : kChunk;
    for (size_t i = 0; i < used; ++i) {
      Ticket* t = &ticket_chunks_[c][i];
      if (t->waiter != nullptr) out.push_back(t);
    }
  }
  return out;
}

size_t SlotWaiters::size() const {
  MutexLock lock(&mu_);
  return live_;
}

}  // namespace mxsched
