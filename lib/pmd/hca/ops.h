// Internals shared by the two files of the soft HCA's device-ops table: ops.cc (the verbs)
// and qp_state.cc (modify_qp: the QP state machine).
#pragma once

#include <cstdint>
#include <optional>

#include "dverbs/types.h"
#include "midlayer/driver.h"
#include "midlayer/might_sleep.h"
#include "pmd/hca/objects.h"
#include "pmd/wire/roce.h"

namespace dverbs::pmd::hca {

class Device;

// Largest IB path MTU whose RoCEv2 packet fits an Ethernet MTU of `eth_mtu` bytes.
// Context: any, never sleeps.
Mtu active_mtu(uint32_t eth_mtu);
// The IPv4 address of an IPv4-mapped GID; false for any other GID. Context: any, never
// sleeps.
bool ipv4_from_gid(const Gid& g, uint32_t* ip);
// The path of a connected QP or an AH (MACs come from the neighbour table at send time);
// false when the destination GID is not IPv4-mapped. Context: any, never sleeps.
bool make_frame_addr(Device& dev, const AhAttr& ah, uint32_t src_qpn, uint32_t dst_qpn,
                     wire::FrameAddr* out);

// The modify_qp verb (qp_state.cc): checks the transition and its attributes (IBA 10.3.1),
// then applies them under Qp::lock. Context: process context, may sleep (the device's
// control mutex).
int modify_qp(mid::Qp* q, const QpAttr* a, uint32_t mask);

// Raw packet QPs and flow steering (raw.cc). raw_qp_init: the checks and setup of a new
// raw packet QP: EPERM without CAP_NET_RAW, EOPNOTSUPP with an SRQ. create_flow and
// destroy_flow are the device ops. Context: process context.
int raw_qp_init(Device& dev, const mid::QpInitAttr& init, Qp& qp);
uint32_t raw_max_frame(Device& dev);  // the largest frame: the port's MTU plus L2 headers
int create_flow(mid::Qp* q, const FlowRule* rule, uint32_t* id);
int destroy_flow(mid::Qp* q, uint32_t id);

// Holds Qp::lock, the spinlock the owner engine takes for every step of the QP. The
// control path holds it only for plain stores: nothing under it may sleep or make a
// system call (the engine, maybe an lcore, spins meanwhile). A checking build marks the
// held span as a non-sleeping scope, so a blocking call inside (a Mutex, query_port's
// link-state read) is reported.
class QpLock {
 public:
  explicit QpLock(Qp& qp) noexcept : qp_(&qp) {
    scope_.emplace("Qp::lock");
    qp.lock.lock();
  }
  ~QpLock() { unlock(); }
  void unlock() noexcept {
    if (!qp_) return;
    qp_->lock.unlock();
    qp_ = nullptr;
    scope_.reset();
  }
  QpLock(const QpLock&) = delete;
  QpLock& operator=(const QpLock&) = delete;

 private:
  Qp* qp_;
  std::optional<mid::NonSleepingScope> scope_;
};

// The rereg_mr verb (rereg.cc): a region's PD, translation and access changed in place,
// keys kept. Context: process context, may sleep.
int rereg_mr(mid::Mr* m, uint32_t flags, mid::Pd* pd, void* host, uint64_t iova, uint64_t length,
             uint32_t access);

// Completion queues (cq.cc). create_cq and resize_cq: process context, may sleep;
// poll_cq: any thread, never sleeps.
int create_cq(mid::Device* d, uint32_t cqe, mid::Cq** out);
int resize_cq(mid::Cq* c, uint32_t cqe, uint32_t held);
int poll_cq(mid::Cq* c, int n, Wc* wc);
int poll_cq_ts(mid::Cq* c, int n, Wc* wc, uint64_t* ts);

}  // namespace dverbs::pmd::hca
