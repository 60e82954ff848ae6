// XRC in daemon mode, the client half: domains (the fd of the domain's file goes to the
// daemon with the command, so the daemon keys the domain by a file this client could open)
// and XRC_RECV QP handles, which have no rings. XRC SRQs and XRC_SEND QPs are the ordinary
// create_srq/create_qp (ops.cc) with the domain's handle.
#include <cerrno>
#include <new>

#include "pmd/remote/remote.h"

namespace dverbs::pmd::remote {

using daemon::Cmd;
using daemon::Request;
using daemon::Response;

int open_xrcd(mid::Device* d, int fd, int oflags, mid::Xrcd** out) {
  Device& dev = rdev(d);
  auto* x = new (std::nothrow) Xrcd();
  if (!x) return ENOMEM;
  Request req = make(Cmd::open_xrcd);
  req.open_xrcd.oflags = oflags;
  req.open_xrcd.has_fd = fd != -1;
  Response resp;
  if (int rc = dev.command(req, &resp, fd != -1 ? &fd : nullptr, fd != -1 ? 1 : 0)) {
    delete x;
    return rc;
  }
  x->handle = resp.handle;
  *out = x;
  return 0;
}

int close_xrcd(mid::Xrcd* m) {
  Xrcd* x = to_xrcd(m);
  if (int rc = destroy_cmd(rdev(m->device), Cmd::close_xrcd, x->handle)) return rc;
  delete x;
  return 0;
}

int xrc_recv_qp(mid::Xrcd* m, const uint32_t* qpn, mid::Qp** out) {
  Device& dev = rdev(m->device);
  auto* qp = new (std::nothrow) Qp();
  if (!qp) return ENOMEM;
  Request req = make(qpn ? Cmd::open_xrc_qp : Cmd::create_qp);
  if (qpn) {
    req.open_xrc_qp.xrcd = to_xrcd(m)->handle;
    req.open_xrc_qp.qp_num = *qpn;
  } else {
    req.create_qp.qp_type = QpType::xrc_recv;
    req.create_qp.xrcd = to_xrcd(m)->handle;
  }
  Response resp;
  if (int rc = dev.command(req, &resp)) {
    delete qp;
    return rc;
  }
  qp->handle = resp.handle;
  qp->qp_num = resp.qp.qp_num;
  qp->qp_type = QpType::xrc_recv;
  *out = qp;
  return 0;
}

int open_xrc_qp(mid::Xrcd* x, uint32_t qpn, mid::Qp** out) {
  return xrc_recv_qp(x, &qpn, out);
}

}  // namespace dverbs::pmd::remote
