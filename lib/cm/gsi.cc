// Each port's General Services QP (QP1, IBA 13.5.1) and the CM thread.
//
// The CM is a midlayer client: add() opens a port's GSI QP, remove() ends the port's
// connections (DEVICE_REMOVAL) and closes it. The GSI QP is an ordinary UD QP of the HCA
// numbered 1 (mid::QpInitAttr::gsi) with the GSI Q_Key; MADs travel as UD SENDs to QP1 of
// the peer, as on every RoCE HCA.
//
// The CM thread polls every GSI CQ, hands each MAD to the protocol (cm.cc) and runs the
// timers. It sleeps on a condition variable between rounds: a GSI completion handler wakes
// it at once when the device moves its transport by itself (lcores or the inline helper:
// mid::Device::self_progress), so it then sleeps until its next timer (10 ms at most); a
// 1 ms round drives the port itself when the device does not (dverbsd's inline ports,
// where polling the CQ is what makes the transport progress).
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "cm/internal.h"

namespace dverbs::cm {

namespace {

constexpr uint64_t kSendTag = 1ull << 63;

void client_add(mid::Device* dev, mid::Client* client) {
  Port* p = nullptr;
  // A device without a GSI QP (dverbsd's clients: the daemon would own QP1) has no CM
  // here; the calls that need a port then say EOPNOTSUPP rather than ENODEV.
  if (int rc = port_open(dev, &p)) {
    if (rc == EOPNOTSUPP) {
      std::lock_guard<std::mutex> g(cm().mu);
      cm().no_gsi = true;
    }
    return;
  }
  std::lock_guard<std::mutex> g(cm().mu);
  cm().ports.push_back(p);
  mid::set_client_data(dev, client, p);
}

void client_remove(mid::Device*, mid::Client*, void* data) {
  auto* p = static_cast<Port*>(data);
  if (!p) return;
  {
    std::lock_guard<std::mutex> g(cm().mu);
    port_removed(p);
    auto& v = cm().ports;
    for (size_t i = 0; i < v.size(); i++)
      if (v[i] == p) v.erase(v.begin() + long(i));
  }
  port_close(p);
}

void on_gsi_completion(mid::Cq*, void*) { cm().wake.notify_one(); }

bool post_recv_slot(Port* p, uint32_t slot) {
  Sge sge{reinterpret_cast<uint64_t>(p->buf + slot * kRecvSlotSize), kRecvSlotSize,
          p->mr->lkey};
  RecvWr wr{};
  wr.wr_id = slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  RecvWr* bad = nullptr;
  return mid::post_recv(p->qp, &wr, &bad) == 0;
}

// Drains the GSI CQ: send completions free their slot, receives go to the protocol.
// Returns how many completions it saw. Context: Cm::mu held.
int poll_port(Port* p) {
  Wc wc[16];
  int total = 0;
  for (;;) {
    int n = mid::poll_cq(p->cq, 16, wc);
    if (n <= 0) break;
    total += n;
    for (int i = 0; i < n; i++) {
      if (wc[i].wr_id & kSendTag) {
        p->free_send.push_back(uint16_t(wc[i].wr_id));
        continue;
      }
      const uint32_t slot = uint32_t(wc[i].wr_id);
      const uint8_t* b = p->buf + slot * kRecvSlotSize;
      if (wc[i].status == WcStatus::success && wc[i].byte_len >= 40) {
        // The GRH area holds the IPv4 header in its last 20 bytes (RoCEv2 over IPv4).
        const uint32_t src = uint32_t(b[32]) << 24 | uint32_t(b[33]) << 16 |
                             uint32_t(b[34]) << 8 | b[35];
        handle_mad(p, src, b + 40, wc[i].byte_len - 40);
      }
      if (wc[i].status != WcStatus::wr_flush_err) post_recv_slot(p, slot);
    }
  }
  return total;
}

void thread_main() {
  Cm& c = cm();
  std::unique_lock<std::mutex> g(c.mu);
  while (!c.stop) {
    bool must_poll = false;  // a port whose transport moves only when polled
    for (Port* p : c.ports) {
      poll_port(p);
      mid::req_notify_cq(p->cq, false);  // the next completion wakes this thread
      must_poll |= !p->dev->self_progress;
    }
    const Clock::time_point now = Clock::now();
    const Clock::time_point next = run_timers(now);
    // With self-progressing devices a MAD's completion event wakes the thread, so it
    // sleeps until its next timer; 10 ms at most, so that a timer an API call started
    // meanwhile is late by no more than that (CM timeouts are tens of ms and longer).
    auto wait = std::chrono::milliseconds(must_poll ? 1 : 10);
    if (next < now + wait)
      wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - now) +
             std::chrono::milliseconds(1);
    c.wake.wait_for(g, wait);
  }
}

// Process exit: leave the ports quietly (the drop-in's own exit clean-up, registered
// before, runs after this one).
void at_exit() {
  Cm& c = cm();
  {
    std::lock_guard<std::mutex> g(c.mu);
    if (!c.started) return;
    c.stop = true;
  }
  c.wake.notify_all();
  if (c.thread.joinable()) c.thread.join();
  mid::unregister_client(&c.client);
}

}  // namespace

Cm& cm() {
  static Cm* c = new Cm();  // never freed: the exit handler stops its thread
  return *c;
}

void start_thread_locked() {
  Cm& c = cm();
  if (c.started) return;
  c.started = true;
  c.client.name = "cm";
  c.client.add = client_add;
  c.client.remove = client_remove;
  c.next_comm = uint32_t(std::rand()) << 8;
  // add() takes the lock: register without it.
  c.mu.unlock();
  mid::probe_drivers();
  mid::register_client(&c.client);
  c.mu.lock();
  c.thread = std::thread(thread_main);
  std::atexit(at_exit);
}

int port_open(mid::Device* dev, Port** out) {
  auto* p = new (std::nothrow) Port();
  if (!p) return ENOMEM;
  p->dev = dev;
  std::snprintf(p->name, sizeof p->name, "%s", dev->name);
  Gid gid{};
  PortAttr pa{};
  DeviceAttr da{};
  int rc = mid::query_gid(dev, 1, 0, &gid);
  if (!rc) rc = mid::query_port(dev, 1, &pa);
  if (!rc) rc = mid::query_device(dev, &da);
  if (rc) {
    delete p;
    return rc;
  }
  std::memcpy(p->gid, gid.raw, 16);
  p->ip = uint32_t(gid.raw[12]) << 24 | uint32_t(gid.raw[13]) << 16 | uint32_t(gid.raw[14]) << 8 |
          gid.raw[15];
  p->guid = da.node_guid;
  p->mtu = uint8_t(pa.active_mtu);
  p->buf = static_cast<uint8_t*>(std::calloc(1, kGsiBufSize));
  if (!p->buf) {
    delete p;
    return ENOMEM;
  }
  mid::QpInitAttr init{};
  init.qp_type = QpType::ud;
  init.gsi = true;
  init.cap.max_send_wr = kSendSlots;
  init.cap.max_recv_wr = kRecvSlots;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  // The QP first: a device without a GSI QP (EOPNOTSUPP) costs no registration.
  rc = mid::alloc_pd(dev, &p->pd);
  if (!rc)
    rc = mid::create_cq(dev, kSendSlots + kRecvSlots, on_gsi_completion, nullptr, p, &p->cq);
  if (!rc) {
    init.send_cq = init.recv_cq = p->cq;
    rc = mid::create_qp(p->pd, &init, &p->qp);
  }
  if (!rc) rc = mid::reg_mr(p->pd, p->buf, kGsiBufSize, access::local_write, &p->mr);
  if (!rc) {
    using namespace qp_attr_mask;
    QpAttr a{};
    a.qp_state = QpState::init;
    a.qkey = kGsiQkey;
    rc = mid::modify_qp(p->qp, &a, state | pkey_index | port | qkey);
    a.qp_state = QpState::rtr;
    if (!rc) rc = mid::modify_qp(p->qp, &a, state);
    a.qp_state = QpState::rts;
    a.sq_psn = 0;
    if (!rc) rc = mid::modify_qp(p->qp, &a, state | sq_psn);
  }
  for (uint32_t i = 0; !rc && i < kRecvSlots; i++)
    if (!post_recv_slot(p, i)) rc = ENOMEM;
  if (!rc) mid::req_notify_cq(p->cq, false);
  for (uint32_t i = 0; i < kSendSlots; i++) p->free_send.push_back(uint16_t(i));
  if (rc) {
    port_close(p);
    return rc;
  }
  *out = p;
  return 0;
}

void port_close(Port* p) {
  for (auto& [ip, ah] : p->ahs) mid::destroy_ah(ah);
  if (p->qp) mid::destroy_qp(p->qp);
  if (p->cq) mid::destroy_cq(p->cq);
  if (p->mr) mid::dereg_mr(p->mr);
  if (p->pd) mid::dealloc_pd(p->pd);
  std::free(p->buf);
  delete p;
}

bool send_mad(Port* p, uint32_t ip, const uint8_t mad[kMadSize]) {
  if (p->free_send.empty()) poll_port(p);
  auto it = p->ahs.find(ip);
  if (it == p->ahs.end()) {
    AhAttr a{};
    std::memset(a.dgid.raw, 0, 16);
    a.dgid.raw[10] = a.dgid.raw[11] = 0xff;
    a.dgid.raw[12] = uint8_t(ip >> 24);
    a.dgid.raw[13] = uint8_t(ip >> 16);
    a.dgid.raw[14] = uint8_t(ip >> 8);
    a.dgid.raw[15] = uint8_t(ip);
    a.is_global = true;
    mid::Ah* ah = nullptr;
    if (mid::create_ah(p->pd, &a, &ah) != 0) {
      p->send_failed++;
      return false;
    }
    it = p->ahs.emplace(ip, ah).first;
  }
  if (p->free_send.empty()) {
    p->send_failed++;
    return false;
  }
  const uint16_t slot = p->free_send.back();
  p->free_send.pop_back();
  uint8_t* b = p->buf + kRecvSlots * kRecvSlotSize + slot * kMadSize;
  std::memcpy(b, mad, kMadSize);
  Sge sge{reinterpret_cast<uint64_t>(b), kMadSize, p->mr->lkey};
  SendWr wr{};
  wr.wr_id = kSendTag | slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = WrOpcode::send;
  wr.send_flags = send_flags::signaled;
  wr.wr.ud.ah = it->second;
  wr.wr.ud.remote_qpn = 1;
  wr.wr.ud.remote_qkey = kGsiQkey;
  SendWr* bad = nullptr;
  if (mid::post_send(p->qp, &wr, &bad) != 0) {
    p->free_send.push_back(slot);
    p->send_failed++;
    return false;
  }
  return true;
}

}  // namespace dverbs::cm
