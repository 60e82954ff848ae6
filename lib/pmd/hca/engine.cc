#include "pmd/hca/engine.h"

#include <rte_cycles.h>
#include <rte_prefetch.h>

#include <cstring>
#include <thread>

#include "pmd/hca/device.h"
#include "pmd/net/neigh.h"

namespace dverbs::pmd::hca {

Engine::Engine(Device* dev, uint16_t queue) : dev_(dev), queue_(queue) {}

Engine::~Engine() { drop_frames(); }

void Engine::drop_frames() noexcept {
  rte_mbuf* m;
  while (handoff_.pop(&m)) rte_pktmbuf_free(m);
  for (uint16_t i = 0; i < ntx_; i++) rte_pktmbuf_free(txq_[i]);
  ntx_ = 0;
  if (n_mbuf_cache_) rte_mempool_put_bulk(pool_, (void**)mbuf_cache_, n_mbuf_cache_);
  n_mbuf_cache_ = 0;
}

void Engine::retire() {
  while (run_lock_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  // Every QP is in ERR (Device::fail_all): poll until 64 rounds in a row find no work, so
  // the remaining WRs are flushed in order; bounded in case a peer keeps sending.
  for (int idle = 0, round = 0; idle < 64 && round < (1 << 20); round++)
    idle = poll() ? 0 : idle + 1;
  drop_frames();
}

void Engine::linger_begin() {
  while (run_lock_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  linger_asked_ = -1;
}

bool Engine::linger_step() noexcept {
  poll();
  if (linger_asked_ < 0) {
    if (ntx_ != 0) return false;  // our frames first: the requests must follow them
    net::Port& port = dev_->port();
    linger_seen_ = arp_replies_;
    linger_asked_ =
        port.unread_tx_lost_on_close() ? dev_->neigh().probe_neighbours(port, queue_) : 0;
  }
  // Counted, not matched per neighbour: enough on memif, a point-to-point link.
  return arp_replies_ - linger_seen_ >= uint64_t(linger_asked_);
}

void Engine::linger_end() noexcept { run_lock_.store(false, std::memory_order_release); }

bool Engine::init() {
  pool_ = dev_->port().pool();
  tsc_hz_ = rte_get_tsc_hz();
  ns_per_tsc_ = 1e9 / double(tsc_hz_);
  now_ = rte_get_tsc_cycles();
  cc_on_ = dev_->config().cc.enabled;
  rng_ ^= uint64_t(queue_ + 1) * 0xbf58476d1ce4e5b9ull;
  return kicks_.init(kMaxQp) && handoff_.init(4096);
}

void Engine::kick(Qp* qp) noexcept {
  if (qp->kicked.exchange(1, std::memory_order_seq_cst) == 0) {
    // Capacity equals the QP table size and a QP sits in the ring at most once.
    kicks_.push(qp);
  }
}

rte_mbuf* Engine::alloc_frame(uint32_t len) noexcept {
  if (n_mbuf_cache_ == 0 && !refill_cache()) [[unlikely]] {
    dev_->counters().tx_no_mbuf.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  rte_mbuf* m = mbuf_cache_[--n_mbuf_cache_];
  rte_pktmbuf_reset(m);
  m->data_len = uint16_t(len);
  m->pkt_len = len;
  return m;
}

bool Engine::refill_cache() noexcept {
  // Half the cache at a time, so that receiving refills it before the next refill.
  if (rte_pktmbuf_alloc_bulk(pool_, mbuf_cache_, kMbufCache / 2) == 0) {
    n_mbuf_cache_ = kMbufCache / 2;
    return true;
  }
  rte_mbuf* m = rte_pktmbuf_alloc(pool_);  // the pool may still hold a few
  if (!m) return false;
  mbuf_cache_[0] = m;
  n_mbuf_cache_ = 1;
  return true;
}

void Engine::recycle(rte_mbuf* m) noexcept {
  // A plain mbuf of the port's pool that nobody else references — the one a frame we
  // built and received comes back as — goes to the cache as it is (rte_pktmbuf_prefree_seg
  // would change nothing in it).
  if (m->nb_segs == 1 && m->pool == pool_ && m->next == nullptr && RTE_MBUF_DIRECT(m) &&
      rte_mbuf_refcnt_read(m) == 1 && n_mbuf_cache_ < kMbufCache) [[likely]] {
    mbuf_cache_[n_mbuf_cache_++] = m;
    return;
  }
  recycle_slow(m);
}

void Engine::recycle_slow(rte_mbuf* m) noexcept {
  // Chains, other pools' mbufs (a PMD's own, the fault injector's clones) go back where
  // they came from; prefree detaches and resets the rest as rte_pktmbuf_free would.
  if (m->nb_segs != 1 || m->pool != pool_) {
    rte_pktmbuf_free(m);
    return;
  }
  m = rte_pktmbuf_prefree_seg(m);
  if (!m) return;  // still referenced
  if (n_mbuf_cache_ == kMbufCache) {
    rte_mempool_put_bulk(pool_, (void**)(mbuf_cache_ + kMbufCache / 2), kMbufCache / 2);
    n_mbuf_cache_ = kMbufCache / 2;
  }
  mbuf_cache_[n_mbuf_cache_++] = m;
}

void Engine::tx(rte_mbuf* m) noexcept {
  if (ntx_ == kTxBatch) tx_flush();
  if (ntx_ == kTxBatch) [[unlikely]] {
    // The port is still full: this frame is lost like any other, and recovered by the
    // transport (only ACKs and responses get here: requesters stop at tx_budget() 0).
    dev_->counters().tx_backlog_drop.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return;
  }
  txq_[ntx_++] = m;
}

void Engine::tx_flush() noexcept {
  if (ntx_ == 0) {
    tx_stalled_ = false;
    return;
  }
  // Frames the port refuses stay queued here (backpressure) instead of being dropped.
  // Bytes are summed before the burst: a sent mbuf belongs to the PMD.
  uint64_t bytes = 0;
  for (uint16_t i = 0; i < ntx_; i++) bytes += txq_[i]->pkt_len;
  uint16_t sent = dev_->port().tx_burst(queue_, txq_, ntx_, true);
  for (uint16_t i = sent; i < ntx_; i++) bytes -= txq_[i]->pkt_len;
  dev_->counters().tx_packets.fetch_add(sent, std::memory_order_relaxed);
  dev_->counters().tx_bytes.fetch_add(bytes, std::memory_order_relaxed);
  for (uint16_t i = sent; i < ntx_; i++) txq_[i - sent] = txq_[i];
  ntx_ = uint16_t(ntx_ - sent);
  tx_stalled_ = ntx_ != 0;
}

void Engine::drop_not_for_us(rte_mbuf* m) noexcept {
  dev_->counters().rx_not_for_us.fetch_add(1, std::memory_order_relaxed);
  rte_pktmbuf_free(m);
}

void Engine::rx_one(rte_mbuf* m, bool verified) noexcept {
  Device& dev = *dev_;
  const uint8_t* frame = rte_pktmbuf_mtod(m, const uint8_t*);
  const uint32_t len = rte_pktmbuf_data_len(m);
  // Frames handed over by another engine passed these checks there.
  if (!verified && (len < 6 || !dev.port().accepts(frame))) [[unlikely]] {
    drop_not_for_us(m);
    return;
  }
  wire::Packet& pkt = rx_pkt_;
  wire::ParseError err = wire::parse_frame(frame, len, &pkt, !verified);
  if (err != wire::ParseError::ok) [[unlikely]] {
    bool arp_reply = false;
    if (err == wire::ParseError::not_ipv4 &&
        dev.neigh().handle_rx(dev.port(), queue_, m, &arp_reply)) {
      arp_replies_ += arp_reply;
      return;  // ARP consumed the frame
    }
    // Not RoCE (RoCE frames never get here): a flow rule may steer it to a raw packet QP.
    if ((err == wire::ParseError::not_ipv4 || err == wire::ParseError::not_udp ||
         err == wire::ParseError::not_roce) &&
        !dev.flows().empty() && rx_raw(m, verified))
      return;
    if (err == wire::ParseError::bad_icrc)
      dev.counters().rx_bad_icrc.fetch_add(1, std::memory_order_relaxed);
    else if (err == wire::ParseError::not_ipv4 || err == wire::ParseError::not_udp ||
             err == wire::ParseError::not_roce)
      dev.counters().rx_non_roce.fetch_add(1, std::memory_order_relaxed);
    else
      dev.counters().rx_bad_frame.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return;
  }
  // A group MAC carries multicast; our address, unicast to us. Anything else is not ours.
  const bool group_ip = (pkt.dst_ip >> 28) == 0xe;
  if (pkt.dst_ip != dev.port().ip() || (frame[0] & 1)) [[unlikely]] {
    if (group_ip && (frame[0] & 1))
      rx_multicast(m, pkt, verified);
    else
      drop_not_for_us(m);
    return;
  }
  Qp* qp = dev.qp_lookup(pkt.dest_qp);
  if (!qp) [[unlikely]] {
    // Packets for a QP that does not exist are silently dropped (IBA 9.6.1.1).
    dev.counters().rx_no_qp.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return;
  }
  if (qp->engine != this) {
    // Only the owner touches a QP: hand the frame over (never wait; a full ring is a loss
    // the transport recovers from).
    if (!qp->engine->handoff_.push(m)) {
      dev.counters().rx_handoff_full.fetch_add(1, std::memory_order_relaxed);
      rte_pktmbuf_free(m);
    }
    return;
  }
  DVERBS_QP_COUNT(*qp, rx_packets, 1);
  DVERBS_QP_COUNT(*qp, rx_bytes, m->pkt_len);
  if (qp != rx_qp_) {
    rx_release();
    qp->lock.lock();
    rx_qp_ = qp;
  }
  // Congestion control (cc.cc): a CNP is consumed there; a request may be marked and
  // answered with one. Off (the default), only a stray CNP takes this branch.
  if ((cc_on_ || pkt.opcode == wire::op::kCnp) && cc_rx(*this, *qp, pkt)) [[unlikely]] {
    recycle(m);
    return;
  }
  if (pkt.info->flags & wire::opf::kRequest)
    resp_rx(*this, *qp, pkt);
  else
    comp_rx(*this, *qp, pkt);
  recycle(m);
}

void Engine::rx_release() noexcept {
  Qp* qp = rx_qp_;
  if (!qp) return;
  rx_qp_ = nullptr;
  const bool owe = qp->resp.ack_pending;
  const bool wants_service = req_needs_service(*qp);
  qp->lock.unlock();
  if (owe) owe_ack(qp);
  if (wants_service) kick(qp);
}

void Engine::owe_ack(Qp* qp) noexcept {
  // Coalesce: one ACK per QP per burst (IBA allows acknowledging several packets at once).
  uint32_t i = 0;
  while (i < n_ack_ && ack_list_[i] != qp) i++;
  if (i < n_ack_) return;
  if (n_ack_ == kBurst) {
    qp->lock.lock();
    resp_send_ack(*this, *qp);
    qp->lock.unlock();
  } else {
    ack_list_[n_ack_++] = qp;
  }
}

// A UD SEND to an IPv4 multicast group (destination QPN 0xFFFFFF, IBA 10.5): a copy for
// each attached QP. QPs of this engine get it here; each other engine with attached QPs
// gets one copy of the frame through its hand-off ring, and delivers to its own (the
// frame arrives there `verified`, which stops it from being copied again).
void Engine::rx_multicast(rte_mbuf* m, const wire::Packet& pkt, bool verified) noexcept {
  Device& dev = *dev_;
  rx_release();  // the QPs below are locked one by one
  Device::McGroup* g = dev.mcast_find(pkt.dst_ip);
  if (!g || pkt.dest_qp != wire::kMulticastQpn || !pkt.deth) {
    dev.counters().rx_no_qp.fetch_add(1, std::memory_order_relaxed);
    rte_pktmbuf_free(m);
    return;
  }
  Engine* others[Device::kMaxMcQps];
  uint32_t n_others = 0;
  for (auto& slot : g->qps) {
    Qp* qp = slot.load(std::memory_order_acquire);
    if (!qp) continue;
    if (qp->engine == this) {
      DVERBS_QP_COUNT(*qp, rx_packets, 1);
      DVERBS_QP_COUNT(*qp, rx_bytes, m->pkt_len);
      qp->lock.lock();
      resp_rx(*this, *qp, pkt);
      qp->lock.unlock();
      continue;
    }
    if (verified) continue;
    uint32_t i = 0;
    while (i < n_others && others[i] != qp->engine) i++;
    if (i == n_others) others[n_others++] = qp->engine;
  }
  for (uint32_t i = 0; i < n_others; i++) {
    rte_mbuf* c = rte_pktmbuf_copy(m, dev.port().pool(), 0, UINT32_MAX);
    if (!c || !others[i]->handoff_.push(c)) {
      dev.counters().rx_handoff_full.fetch_add(1, std::memory_order_relaxed);
      if (c) rte_pktmbuf_free(c);
    }
  }
  rte_pktmbuf_free(m);
}

int Engine::rx_step() noexcept {
  // Up to four bursts: on a loopback port our own TX fills our RX ring, so RX must keep
  // up with what the requesters produce.
  rte_mbuf* pkts[kBurst];
  int total = 0;
  for (int round = 0; round < 4; round++) {
    uint16_t n = dev_->port().rx_burst(queue_, pkts, kBurst);
    // The ring held at least what the earlier bursts of this drain and this one returned.
    rx_backlog_ = uint32_t(round) * kBurst + n;
    if (n) receive(pkts, n);
    total += n;
    if (n < kBurst) break;
  }
  return total;
}

void Engine::receive(rte_mbuf** pkts, uint16_t n) noexcept {
  for (uint16_t i = 0; i < n; i++) {
    if (i + 1 < n) rte_prefetch0(rte_pktmbuf_mtod(pkts[i + 1], void*));
    rx_one(pkts[i], false);
  }
  rx_release();
  flush_acks();
}

int Engine::handoff_step() noexcept {
  rx_backlog_ = 0;  // frames handed over were counted where they were received
  rte_mbuf* m;
  int n = 0;
  while (n < kBurst && handoff_.pop(&m)) {
    rx_one(m, true);
    n++;
  }
  rx_release();
  if (n) flush_acks();
  return n;
}

void Engine::flush_acks() noexcept {
  for (uint32_t i = 0; i < n_ack_; i++) {
    Qp* qp = ack_list_[i];
    qp->lock.lock();
    resp_send_ack(*this, *qp);
    qp->lock.unlock();
  }
  n_ack_ = 0;
}

int Engine::active_step() noexcept {
  int work = 0;
  // Newly kicked QPs join the active list.
  Qp* qp;
  while (kicks_.pop(&qp)) {
    if (!qp->active) {
      qp->active = true;
      qp->next_active = active_head_;
      active_head_ = qp;
    }
  }
  Qp** link = &active_head_;
  while ((qp = *link) != nullptr) {
    if (qp->unhooking.load(std::memory_order_acquire)) [[unlikely]] {
      *link = qp->next_active;
      qp->active = false;
      qp->detached.store(true, std::memory_order_release);
      continue;
    }
    qp->lock.lock();
    work += req_step(*this, *qp, kQpBudget);
    bool keep = req_needs_service(*qp);
    qp->lock.unlock();
    if (!keep) {
      // Leave the list, then re-check: a poster that published after our check but saw
      // kicked == 1 did not push the QP, so we must not lose its work.
      qp->kicked.store(0, std::memory_order_seq_cst);
      if (qp->unhooking.load(std::memory_order_seq_cst)) [[unlikely]] {
        // destroy_qp marked the QP after the check at the top and kicked it while kicked
        // was still 1, so nothing was pushed (Dekker with Device::remove_qp): let go here,
        // unless a kick since then did push it; that ring entry then lets go instead.
        const bool pushed = qp->kicked.exchange(1, std::memory_order_seq_cst) != 0;
        qp->active = false;
        *link = qp->next_active;
        qp->next_active = nullptr;
        if (!pushed) qp->detached.store(true, std::memory_order_release);
        continue;
      }
      qp->lock.lock();
      keep = req_needs_service(*qp);
      qp->lock.unlock();
      if (keep && qp->kicked.exchange(1, std::memory_order_acq_rel) == 0) {
        link = &qp->next_active;
        continue;
      }
      if (!keep) {
        qp->active = false;
        *link = qp->next_active;
        qp->next_active = nullptr;
        continue;
      }
      // Someone else kicked it and pushed it onto the ring; drop our list entry, the ring
      // entry brings it back.
      qp->active = false;
      *link = qp->next_active;
      qp->next_active = nullptr;
      continue;
    }
    link = &qp->next_active;
  }
  // Round robin: the first QP goes last, so no QP always waits behind the others when the
  // port pushes back.
  if (active_head_ && active_head_->next_active) {
    Qp* first = active_head_;
    active_head_ = first->next_active;
    Qp* tail = active_head_;
    while (tail->next_active) tail = tail->next_active;
    tail->next_active = first;
    first->next_active = nullptr;
  }
  return work;
}

int Engine::poll() noexcept {
  epoch_.fetch_add(1, std::memory_order_acq_rel);  // odd: inside
  now_ = rte_get_tsc_cycles();
  int work = rx_step();
  work += handoff_step();
  work += active_step();
  work += dev_->neigh().poll(dev_->port(), queue_, now_);
  tx_flush();
  epoch_.fetch_add(1, std::memory_order_release);  // even: quiescent
  return work;
}

int Engine::try_poll() noexcept {
  if (run_lock_.load(std::memory_order_relaxed) ||
      run_lock_.exchange(true, std::memory_order_acquire))
    return 0;
  int work = poll();
  run_lock_.store(false, std::memory_order_release);
  return work;
}

namespace {

// The destination MAC of a frame of `qp` to `addr`, from the neighbour table. A connected
// QP keeps the answer in its path until the path changes (modify_qp clears it); a UD
// address handle is looked up per packet (it may be shared by QPs of several engines, so
// the answer is never written into it). Never blocks: an unknown address is resolved in
// the background and lookup() answers false meanwhile.
bool resolve_dest(Engine& e, Qp& qp, const wire::FrameAddr& addr, uint8_t mac[6]) noexcept {
  if (qp.qp_type != QpType::ud && qp.addr_resolved) {
    std::memcpy(mac, qp.addr.dst_mac, 6);
    return true;
  }
  if (!e.device().neigh().lookup(addr.dst_ip, mac)) return false;
  if (qp.qp_type != QpType::ud) {
    std::memcpy(qp.addr.dst_mac, mac, 6);
    wire::make_template(qp.addr, &qp.tmpl);
    qp.addr_resolved = true;
  }
  return true;
}

}  // namespace

rte_mbuf* build_packet(Engine& e, Qp& qp, const wire::FrameAddr& addr,
                       const wire::BthFields& rc_bth, uint32_t payload_len,
                       uint8_t** ext) noexcept {
  // XRC is RC on the wire but for the transport prefix and, on requests, the XRCETH right
  // after the BTH: callers build RC packets, and the extension headers they write follow.
  wire::BthFields bth = rc_bth;
  const bool xrc = qp.qp_type == QpType::xrc_send || qp.qp_type == QpType::xrc_recv;
  if (xrc) bth.opcode = uint8_t(wire::op::kXrc | wire::op::operation(bth.opcode));
  // A connected QP's own path: resolved once, then every frame starts from its template.
  const bool own_path = &addr == &qp.addr && qp.qp_type != QpType::ud;
  wire::FrameAddr to;
  if (!own_path || !qp.addr_resolved) {
    to = addr;
    if (!resolve_dest(e, qp, addr, to.dst_mac)) return nullptr;
  }
  uint32_t len = wire::headers_len(bth.opcode) + payload_len + bth.pad + wire::kIcrcLen;
  rte_mbuf* m = e.alloc_frame(len);
  if (!m) return nullptr;
  uint8_t* frame = rte_pktmbuf_mtod(m, uint8_t*);
  *ext = own_path ? wire::write_headers(frame, qp.tmpl, bth, payload_len)
                  : wire::write_headers(frame, to, bth, payload_len);
  if (xrc && (wire::opcode_info(bth.opcode).flags & wire::opf::kXrceth)) {
    wire::write_xrceth(*ext, qp.req.xrc_srqn);
    *ext += wire::kXrcethLen;
  }
  return m;
}

void send_packet(Engine& e, rte_mbuf* m, uint8_t* payload_end, uint32_t pad) noexcept {
  for (uint32_t i = 0; i < pad; i++) payload_end[i] = 0;
  wire::finish_icrc(rte_pktmbuf_mtod(m, uint8_t*), rte_pktmbuf_data_len(m));
  e.tx(m);
}

void send_packet_icrc(Engine& e, rte_mbuf* m, uint8_t* payload_end, uint32_t pad,
                      uint32_t crc) noexcept {
  for (uint32_t i = 0; i < pad; i++) payload_end[i] = 0;
  if (pad) crc = wire::icrc_update(crc, payload_end, pad);
  wire::icrc_frame_end(payload_end + pad, crc);
  e.tx(m);
}

}  // namespace dverbs::pmd::hca
