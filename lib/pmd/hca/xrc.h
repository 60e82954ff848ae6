// XRC in the soft HCA (the XRC annex): domains, the XRC SRQ table and the pieces of the
// transport that differ from RC. An XRC_SEND QP is an RC requester whose requests carry an
// XRCETH naming a remote XRC SRQ; an XRC_RECV QP is an RC responder without queues of its
// own: each request lands in the XRC SRQ its XRCETH names, which must belong to the QP's
// domain, and completes on that SRQ's CQ.
#pragma once

#include <cstdint>

#include "midlayer/driver.h"
#include "pmd/hca/objects.h"

namespace dverbs::pmd::hca {

class Engine;

// DeviceOps (driver.h). Context: process context, may sleep.
int open_xrcd(mid::Device* d, int fd, int oflags, mid::Xrcd** out);
int close_xrcd(mid::Xrcd* x);
int open_xrc_qp(mid::Xrcd* x, uint32_t qpn, mid::Qp** out);

// The XRC SRQ an XRC request names, if it exists and belongs to `qp`'s domain; nullptr
// otherwise (the responder NAKs the request as invalid and counts it in rx_xrc_bad_srq).
// A later packet of a message must name the SRQ its first packet named. Context: the
// owner engine, never sleeps.
Srq* xrc_request_srq(Device& dev, Qp& qp, uint32_t srqn, bool first_of_message) noexcept;

// Flushes the receive an XRC_RECV QP was filling (to its SRQ's CQ) when the QP enters ERR.
// Context: the owner engine, never sleeps.
void xrc_flush_recv(Qp& qp) noexcept;

}  // namespace dverbs::pmd::hca
