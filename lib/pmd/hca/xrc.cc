// XRC domains, the XRC SRQ table and the XRC responder's SRQ lookup (xrc.h).
//
// A domain opened by a file is keyed by the file's device and inode (fstat of the fd the
// caller holds, so nobody joins the domain of a file it could not open); every open of it is
// one reference, and the last close frees it, or fails with EBUSY while SRQs or QPs are in
// it. A private domain (fd -1) has one reference.
#include <cerrno>
#include <fcntl.h>
#include <mutex>
#include <new>
#include <sys/stat.h>

#include "pmd/hca/device.h"
#include "pmd/hca/engine.h"
#include "pmd/hca/xrc.h"

namespace dverbs::pmd::hca {

namespace {

Device& hca(mid::Device* d) {
  return *static_cast<Device*>(d);
}
Xrcd* to_xrcd(mid::Xrcd* x) {
  return static_cast<Xrcd*>(x);
}

Xrcd* find_by_file(Device& dev, const struct stat& st) {
  for (Xrcd* x : dev.xrcds())
    if (x->by_file && x->st_dev == uint64_t(st.st_dev) && x->st_ino == uint64_t(st.st_ino))
      return x;
  return nullptr;
}

}  // namespace

int open_xrcd(mid::Device* d, int fd, int oflags, mid::Xrcd** out) {
  Device& dev = hca(d);
  if (dev.retired()) return ENODEV;
  struct stat st {};
  if (fd != -1 && fstat(fd, &st) != 0) return EBADF;
  std::lock_guard<mid::Mutex> g(dev.ctl());
  if (fd != -1) {
    if (Xrcd* x = find_by_file(dev, st)) {
      if (oflags & O_EXCL) return EINVAL;  // ibv_open_xrcd(3): exists already
      x->opens++;
      *out = x;
      return 0;
    }
    if (!(oflags & O_CREAT)) return EINVAL;  // none to open, and not asked to create one
  }
  Xrcd* x = new (std::nothrow) Xrcd();
  if (!x) return ENOMEM;
  x->by_file = fd != -1;
  x->st_dev = uint64_t(st.st_dev);
  x->st_ino = uint64_t(st.st_ino);
  x->opens = 1;
  dev.xrcds().push_back(x);
  *out = x;
  return 0;
}

int close_xrcd(mid::Xrcd* m) {
  Xrcd* x = to_xrcd(m);
  Device& dev = hca(x->device);
  std::lock_guard<mid::Mutex> g(dev.ctl());
  // The last reference frees the domain: never while an SRQ or a QP is in it.
  if (x->opens == 1 && x->usecnt.load(std::memory_order_acquire) != 0) return EBUSY;
  if (--x->opens) return 0;
  auto& all = dev.xrcds();
  for (size_t i = 0; i < all.size(); i++)
    if (all[i] == x) {
      all[i] = all.back();
      all.pop_back();
      break;
    }
  delete x;
  return 0;
}

int open_xrc_qp(mid::Xrcd* m, uint32_t qpn, mid::Qp** out) {
  Device& dev = hca(m->device);
  std::lock_guard<mid::Mutex> g(dev.ctl());
  Qp* qp = dev.qp_lookup(qpn);
  if (!qp) return ENOENT;
  if (qp->qp_type != QpType::xrc_recv || qp->xrcd != m) return EINVAL;
  qp->xrc_opens++;  // destroy_qp drops one handle while any is left
  *out = qp;
  return 0;
}

int Device::install_xrc_srq(Srq* srq) {
  for (uint32_t n = 0; n < kMaxXrcSrq; n++) {
    const uint32_t idx = (xrc_srq_next_ + n) & (kMaxXrcSrq - 1);
    if (idx == 0 || xrc_srqs_[idx].load(std::memory_order_relaxed)) continue;
    xrc_srq_next_ = idx + 1;
    const uint32_t gen = uint32_t(++xrc_srq_gen_[idx]) & 0x3ff;
    srq->srq_num = (gen << 14 | idx) & wire::kQpnMask;
    srq->xrc = true;
    xrc_srqs_[idx].store(srq, std::memory_order_release);
    return 0;
  }
  return ENOMEM;
}

void Device::remove_xrc_srq(Srq* srq) {
  xrc_srqs_[srq->srq_num & (kMaxXrcSrq - 1)].store(nullptr, std::memory_order_release);
  quiesce();  // no engine still holds the SRQ from a lookup
}

Srq* xrc_request_srq(Device& dev, Qp& qp, uint32_t srqn, bool first_of_message) noexcept {
  Srq* s = dev.xrc_srq_lookup(srqn);
  // Another domain's SRQ is never delivered into (a forged or stale XRCETH).
  if (!s || s->xrcd != qp.xrcd || (!first_of_message && srqn != qp.resp.xrc_srqn)) {
    dev.counters().rx_xrc_bad_srq.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  if (first_of_message) qp.resp.xrc_srqn = srqn;
  return s;
}

void xrc_flush_recv(Qp& qp) noexcept {
  Responder& rs = qp.resp;
  Srq* s = rs.recv ? qp.hca->xrc_srq_lookup(rs.xrc_srqn) : nullptr;
  if (s) {
    Wc wc{};
    wc.wr_id = rs.recv->wr_id;
    wc.status = WcStatus::wr_flush_err;
    wc.opcode = WcOpcode::recv;
    wc.qp_num = qp.qp_num;
    cq_push(*to_cq(s->cq), wc, false);
  }
  rs.recv = nullptr;
  rs.xrc_srq = nullptr;
  rs.in_send = rs.in_write = false;
}

}  // namespace dverbs::pmd::hca
