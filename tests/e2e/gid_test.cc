// What UCX and libfabric read from a RoCE device through <infiniband/verbs.h>, checked
// through the drop-in in both modes (verbs_modes.sh): the GID entry verbs
// (ibv_query_gid_ex, ibv_query_gid_table) as rdma-core 44 over uverbs defines them, the
// device's uverbs names, a flow label wider than its 20 bits (UCX passes ~0), and the
// RoCEv2/IPv4 flag of a UD receive completion (wc.sl, where UCX 1.13 reads it).
//
// Run: verbs_modes.sh DVERBS_RUN embedded|daemon gid_test   (meson does).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <net/if.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kQkey = 0x1ee7a330;  // UCX's

struct Ctx {
  ibv_context* ctx = nullptr;
  ibv_device* dev = nullptr;
  ibv_device** list = nullptr;
  Ctx() {
    int n = 0;
    list = ibv_get_device_list(&n);
    for (int i = 0; list && i < n; ++i)
      if (std::strcmp(ibv_get_device_name(list[i]), "dverbs0") == 0) dev = list[i];
    if (dev) ctx = ibv_open_device(dev);
  }
  ~Ctx() {
    if (ctx) ibv_close_device(ctx);
    if (list) ibv_free_device_list(list);
  }
};

// The interface a DVERBS_PORT of net_af_xdp/net_af_packet names (iface=NAME), else 0. In
// daemon mode DVERBS_PORT is the daemon's; verbs_modes.sh runs it on the loopback.
uint32_t host_ifindex() {
  const char* port = std::getenv("DVERBS_PORT");
  const char* at = port ? std::strstr(port, "iface=") : nullptr;
  if (!at) return 0;
  const std::string name(at + 6, std::strcspn(at + 6, ","));
  return if_nametoindex(name.c_str());
}

bool zero_gid(const ibv_gid& g) {
  static const uint8_t kZero[16] = {};
  return std::memcmp(g.raw, kZero, 16) == 0;
}

TEST(Device, UverbsNamesAsTheKernelGivesThem) {
  Ctx c;
  ASSERT_TRUE(c.ctx);
  EXPECT_STREQ(c.dev->dev_name, "uverbs0");  // UCX: "/dev/infiniband/" + dev_name
  EXPECT_STREQ(c.dev->dev_path, "/sys/class/infiniband_verbs/uverbs0");
  EXPECT_STREQ(c.dev->ibdev_path, "/sys/class/infiniband/dverbs0");
  EXPECT_EQ(c.dev->transport_type, IBV_TRANSPORT_IB);
  EXPECT_EQ(c.dev->node_type, IBV_NODE_CA);
}

TEST(GidEx, EntryZeroIsTheRoceV2GidOfThePort) {
  Ctx c;
  ASSERT_TRUE(c.ctx);
  ibv_gid gid;
  ASSERT_EQ(ibv_query_gid(c.ctx, 1, 0, &gid), 0);
  ibv_gid_entry e;
  std::memset(&e, 0xa5, sizeof e);
  ASSERT_EQ(ibv_query_gid_ex(c.ctx, 1, 0, &e, 0), 0);
  EXPECT_EQ(std::memcmp(e.gid.raw, gid.raw, 16), 0);
  EXPECT_EQ(e.gid_index, 0u);
  EXPECT_EQ(e.port_num, 1u);
  EXPECT_EQ(e.gid_type, uint32_t(IBV_GID_TYPE_ROCE_V2));
  EXPECT_EQ(e.ndev_ifindex, host_ifindex()) << "the port's host interface, or 0";
}

TEST(GidEx, BadPortIndexOrFlagsAndEmptySlots) {
  Ctx c;
  ASSERT_TRUE(c.ctx);
  ibv_port_attr pa;
  ASSERT_EQ(ibv_query_port(c.ctx, 1, &pa), 0);
  ibv_gid_entry e;
  EXPECT_EQ(ibv_query_gid_ex(c.ctx, 0, 0, &e, 0), EINVAL);
  EXPECT_EQ(ibv_query_gid_ex(c.ctx, 2, 0, &e, 0), EINVAL);
  EXPECT_EQ(ibv_query_gid_ex(c.ctx, 1, uint32_t(pa.gid_tbl_len), &e, 0), EINVAL);
  EXPECT_EQ(ibv_query_gid_ex(c.ctx, 1, 0, &e, 1), EOPNOTSUPP);
  EXPECT_EQ(_ibv_query_gid_ex(c.ctx, 1, 0, &e, 0, sizeof e - 1), EINVAL);
  // An empty slot reads as the zero GID through ibv_query_gid and is ENODATA here.
  for (int i = 1; i < pa.gid_tbl_len; ++i) {
    ibv_gid g;
    ASSERT_EQ(ibv_query_gid(c.ctx, 1, i, &g), 0);
    if (zero_gid(g)) {
      EXPECT_EQ(ibv_query_gid_ex(c.ctx, 1, uint32_t(i), &e, 0), ENODATA) << i;
    }
  }
}

TEST(GidTable, ListsEveryValidEntryOnce) {
  Ctx c;
  ASSERT_TRUE(c.ctx);
  ibv_port_attr pa;
  ASSERT_EQ(ibv_query_port(c.ctx, 1, &pa), 0);
  size_t valid = 0;
  for (int i = 0; i < pa.gid_tbl_len; ++i) {
    ibv_gid g;
    ASSERT_EQ(ibv_query_gid(c.ctx, 1, i, &g), 0);
    valid += !zero_gid(g);
  }
  ASSERT_GE(valid, 1u);
  std::vector<ibv_gid_entry> t(valid + 2);
  ASSERT_EQ(ibv_query_gid_table(c.ctx, t.data(), t.size(), 0), ssize_t(valid));
  for (size_t k = 0; k < valid; ++k) {
    ibv_gid_entry e;
    ASSERT_EQ(ibv_query_gid_ex(c.ctx, t[k].port_num, t[k].gid_index, &e, 0), 0);
    EXPECT_EQ(std::memcmp(&e, &t[k], sizeof e), 0) << k;
  }
  // Exactly the valid entries fit; one fewer is EINVAL (the kernel's answer).
  EXPECT_EQ(ibv_query_gid_table(c.ctx, t.data(), valid, 0), ssize_t(valid));
  EXPECT_EQ(ibv_query_gid_table(c.ctx, t.data(), valid - 1, 0), -EINVAL);
  EXPECT_EQ(ibv_query_gid_table(c.ctx, t.data(), t.size(), 1), -EOPNOTSUPP);
  // A larger entry_size (a newer header's struct) strides by it.
  struct Wide {
    ibv_gid_entry e;
    uint64_t more;
  };
  std::vector<Wide> w(valid);
  ASSERT_EQ(_ibv_query_gid_table(c.ctx, &w[0].e, w.size(), 0, sizeof(Wide)), ssize_t(valid));
  EXPECT_EQ(std::memcmp(&w[valid - 1].e, &t[valid - 1], sizeof(ibv_gid_entry)), 0);
}

// Two UD QPs of one process, for the flow-label and completion checks.
struct UdPair {
  Ctx c;
  ibv_pd* pd = nullptr;
  ibv_cq* cq = nullptr;
  ibv_qp* qp[2] = {};
  ibv_mr* mr = nullptr;
  std::vector<uint8_t> buf = std::vector<uint8_t>(8192);
  ibv_gid gid{};

  bool up() {
    if (!c.ctx || ibv_query_gid(c.ctx, 1, 0, &gid)) return false;
    pd = ibv_alloc_pd(c.ctx);
    cq = pd ? ibv_create_cq(c.ctx, 16, nullptr, nullptr, 0) : nullptr;
    mr = cq ? ibv_reg_mr(pd, buf.data(), buf.size(), IBV_ACCESS_LOCAL_WRITE) : nullptr;
    if (!mr) return false;
    for (ibv_qp*& q : qp) {
      ibv_qp_init_attr ia{};
      ia.send_cq = ia.recv_cq = cq;
      ia.qp_type = IBV_QPT_UD;
      ia.cap.max_send_wr = ia.cap.max_recv_wr = 4;
      ia.cap.max_send_sge = ia.cap.max_recv_sge = 1;
      if (!(q = ibv_create_qp(pd, &ia))) return false;
      ibv_qp_attr a{};
      a.qp_state = IBV_QPS_INIT;
      a.port_num = 1;
      a.qkey = kQkey;
      if (ibv_modify_qp(q, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY))
        return false;
      a.qp_state = IBV_QPS_RTR;
      if (ibv_modify_qp(q, &a, IBV_QP_STATE)) return false;
      a.qp_state = IBV_QPS_RTS;
      a.sq_psn = 0;
      if (ibv_modify_qp(q, &a, IBV_QP_STATE | IBV_QP_SQ_PSN)) return false;
    }
    return true;
  }
  ibv_ah_attr ah_attr(uint32_t flow_label) const {
    ibv_ah_attr a{};
    a.is_global = 1;
    a.port_num = 1;
    a.dlid = 0xc000;  // UCX's RoCE "dlid": the UDP source port base
    a.grh.dgid = gid;
    a.grh.hop_limit = 64;
    a.grh.flow_label = flow_label;
    return a;
  }
  ~UdPair() {
    for (ibv_qp* q : qp)
      if (q) ibv_destroy_qp(q);
    if (mr) ibv_dereg_mr(mr);
    if (cq) ibv_destroy_cq(cq);
    if (pd) ibv_dealloc_pd(pd);
  }
};

bool poll_one(ibv_cq* cq, ibv_wc* wc) {
  for (int i = 0; i < 2000000; ++i) {
    const int n = ibv_poll_cq(cq, 1, wc);
    if (n) return n == 1;
  }
  return false;
}

TEST(FlowLabel, WiderThanTwentyBitsKeepsTheLowTwenty) {
  UdPair u;
  ASSERT_TRUE(u.up());
  ibv_ah_attr a = u.ah_attr(0xffffffff);  // UCX: ~(path factor * path index), path 0
  ibv_ah* ah = ibv_create_ah(u.pd, &a);
  ASSERT_NE(ah, nullptr) << std::strerror(errno);
  EXPECT_EQ(ibv_destroy_ah(ah), 0);

  ibv_qp_init_attr ia{};
  ia.send_cq = ia.recv_cq = u.cq;
  ia.qp_type = IBV_QPT_RC;
  ia.cap.max_send_wr = ia.cap.max_recv_wr = 1;
  ia.cap.max_send_sge = ia.cap.max_recv_sge = 1;
  ibv_qp* rc = ibv_create_qp(u.pd, &ia);
  ASSERT_NE(rc, nullptr);
  ibv_qp_attr qa{};
  qa.qp_state = IBV_QPS_INIT;
  qa.port_num = 1;
  qa.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  ASSERT_EQ(
      ibv_modify_qp(rc, &qa, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
      0);
  qa.qp_state = IBV_QPS_RTR;
  qa.path_mtu = IBV_MTU_1024;
  qa.dest_qp_num = rc->qp_num;
  qa.rq_psn = 0;
  qa.max_dest_rd_atomic = 4;
  qa.min_rnr_timer = 12;
  qa.ah_attr = u.ah_attr(0xfffffffe);
  ASSERT_EQ(ibv_modify_qp(rc, &qa,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                              IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER),
            0);
  ibv_qp_attr got{};
  ibv_qp_init_attr gi{};
  ASSERT_EQ(ibv_query_qp(rc, &got, IBV_QP_AV, &gi), 0);
  EXPECT_EQ(got.ah_attr.grh.flow_label, 0xffffeu);
  EXPECT_EQ(ibv_destroy_qp(rc), 0);
}

TEST(UdCompletion, SlSaysRoceV2OverIpv4AndTheGrhAreaHoldsTheIpv4Header) {
  UdPair u;
  ASSERT_TRUE(u.up());
  ibv_ah_attr a = u.ah_attr(0);
  ibv_ah* ah = ibv_create_ah(u.pd, &a);
  ASSERT_NE(ah, nullptr);
  ibv_sge rs{reinterpret_cast<uintptr_t>(u.buf.data()), 40 + 64, u.mr->lkey};
  ibv_recv_wr rw{};
  rw.wr_id = 7;
  rw.sg_list = &rs;
  rw.num_sge = 1;
  ibv_recv_wr* bad_r = nullptr;
  ASSERT_EQ(ibv_post_recv(u.qp[1], &rw, &bad_r), 0);
  std::memcpy(u.buf.data() + 4096, "ucx on dverbs", 14);
  ibv_sge ss{reinterpret_cast<uintptr_t>(u.buf.data() + 4096), 14, u.mr->lkey};
  ibv_send_wr sw{};
  sw.wr_id = 8;
  sw.sg_list = &ss;
  sw.num_sge = 1;
  sw.opcode = IBV_WR_SEND;
  sw.send_flags = IBV_SEND_SIGNALED;
  sw.wr.ud.ah = ah;
  sw.wr.ud.remote_qpn = u.qp[1]->qp_num;
  sw.wr.ud.remote_qkey = kQkey;
  ibv_send_wr* bad_s = nullptr;
  ASSERT_EQ(ibv_post_send(u.qp[0], &sw, &bad_s), 0);
  bool got_recv = false;
  for (int k = 0; k < 2; ++k) {
    ibv_wc wc{};
    ASSERT_TRUE(poll_one(u.cq, &wc));
    ASSERT_EQ(wc.status, IBV_WC_SUCCESS) << ibv_wc_status_str(wc.status);
    if (wc.wr_id != 7) continue;
    got_recv = true;
    EXPECT_EQ(wc.byte_len, 40u + 14u);
    EXPECT_TRUE(wc.wc_flags & IBV_WC_GRH);
    EXPECT_EQ(wc.sl & 0x8, 0x8) << "UDP (RoCEv2)";
    EXPECT_EQ(wc.sl & 0x7, 0x2) << "IPv4";
    EXPECT_EQ(u.buf[20], 0x45) << "the IPv4 header in the second half of the GRH area";
    EXPECT_EQ(std::memcmp(u.buf.data() + 20 + 16, u.gid.raw + 12, 4), 0) << "its destination";
    EXPECT_EQ(std::memcmp(u.buf.data() + 40, "ucx on dverbs", 14), 0);
  }
  EXPECT_TRUE(got_recv);
  EXPECT_EQ(ibv_destroy_ah(ah), 0);
}

}  // namespace
