// Addresses: rdma_getaddrinfo / rdma_freeaddrinfo (getaddrinfo(3) underneath, as
// rdma-core's addrinfo.c without its IB ACM service and AF_IB), and the small helpers the
// other files share.
#include <netdb.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "verbs/rdmacm/internal.h"

namespace dverbs::rdmacm {

socklen_t addr_len(const sockaddr* a) noexcept {
  if (!a) return 0;
  switch (a->sa_family) {
    case AF_INET:
      return sizeof(sockaddr_in);
    case AF_INET6:
      return sizeof(sockaddr_in6);
    default:
      return 0;  // AF_IB is not supported (no InfiniBand link layer)
  }
}

uint16_t addr_port_be(const sockaddr* a) noexcept {
  switch (a->sa_family) {
    case AF_INET:
      return reinterpret_cast<const sockaddr_in*>(a)->sin_port;
    case AF_INET6:
      return reinterpret_cast<const sockaddr_in6*>(a)->sin6_port;
    default:
      return 0;
  }
}

uint32_t random_psn() noexcept {
  uint32_t v;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != ssize_t(sizeof v)) {
    static std::atomic<uint32_t> n{0};
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    v = uint32_t(ts.tv_nsec) * 2654435761u ^ n.fetch_add(0x9e3779b9u);
  }
  return v & 0xffffff;
}

namespace {

// ucma_convert_to_ai: the rdma_addrinfo hints as getaddrinfo(3) hints.
void to_ai(addrinfo* ai, const rdma_addrinfo* h) {
  std::memset(ai, 0, sizeof *ai);
  if (h->ai_flags & RAI_PASSIVE) ai->ai_flags = AI_PASSIVE;
  if (h->ai_flags & RAI_NUMERICHOST) ai->ai_flags |= AI_NUMERICHOST;
  ai->ai_family = h->ai_family;
  switch (h->ai_qp_type) {
    case IBV_QPT_RC:
    case IBV_QPT_UC:
    case IBV_QPT_XRC_SEND:
    case IBV_QPT_XRC_RECV:
      ai->ai_socktype = SOCK_STREAM;
      break;
    case IBV_QPT_UD:
      ai->ai_socktype = SOCK_DGRAM;
      break;
    default:
      break;
  }
  switch (h->ai_port_space) {
    case RDMA_PS_TCP:
      ai->ai_protocol = IPPROTO_TCP;
      break;
    case RDMA_PS_IPOIB:
    case RDMA_PS_UDP:
      ai->ai_protocol = IPPROTO_UDP;
      break;
    case RDMA_PS_IB:
      if (ai->ai_socktype == SOCK_STREAM) ai->ai_protocol = IPPROTO_TCP;
      if (ai->ai_socktype == SOCK_DGRAM) ai->ai_protocol = IPPROTO_UDP;
      break;
    default:
      break;
  }
}

int copy_addr(sockaddr** dst, socklen_t* dst_len, const sockaddr* src, socklen_t len) {
  *dst = static_cast<sockaddr*>(std::malloc(len));
  if (!*dst) return ENOMEM;
  std::memcpy(*dst, src, len);
  *dst_len = len;
  return 0;
}

// ucma_convert_to_rai: the first getaddrinfo(3) answer as an rdma_addrinfo.
int to_rai(rdma_addrinfo* r, const rdma_addrinfo* h, const addrinfo* ai) {
  if (h->ai_qp_type)
    r->ai_qp_type = h->ai_qp_type;
  else if (ai->ai_socktype == SOCK_STREAM)
    r->ai_qp_type = IBV_QPT_RC;
  else if (ai->ai_socktype == SOCK_DGRAM)
    r->ai_qp_type = IBV_QPT_UD;
  if (h->ai_port_space)
    r->ai_port_space = h->ai_port_space;
  else if (ai->ai_protocol == IPPROTO_UDP)
    r->ai_port_space = RDMA_PS_UDP;
  else
    r->ai_port_space = RDMA_PS_TCP;
  r->ai_family = ai->ai_family;
  if (ai->ai_flags & AI_PASSIVE) {
    r->ai_flags = RAI_PASSIVE;
    if (ai->ai_canonname && !(r->ai_src_canonname = strdup(ai->ai_canonname))) return ENOMEM;
    return copy_addr(&r->ai_src_addr, &r->ai_src_len, ai->ai_addr, ai->ai_addrlen);
  }
  if (ai->ai_canonname && !(r->ai_dst_canonname = strdup(ai->ai_canonname))) return ENOMEM;
  return copy_addr(&r->ai_dst_addr, &r->ai_dst_len, ai->ai_addr, ai->ai_addrlen);
}

}  // namespace

}  // namespace dverbs::rdmacm

using namespace dverbs::rdmacm;

extern "C" {

// 0; -1 with errno (EINVAL: no node, service nor hints, or res NULL; ENOMEM); or, as
// rdma-core, getaddrinfo(3)'s nonzero EAI_* code when name resolution fails. AF_IB
// (RAI_FAMILY with ai_family AF_IB) is EAI_FAMILY: there is no InfiniBand link layer.
int rdma_getaddrinfo(const char* node, const char* service, const rdma_addrinfo* hints,
                     rdma_addrinfo** res) {
  if ((!node && !service && !hints) || !res) return fail(EINVAL);
  static const rdma_addrinfo kNoHints{};
  if (hints && hints->ai_family == AF_IB) return EAI_FAMILY;
  auto* r = static_cast<rdma_addrinfo*>(std::calloc(1, sizeof(rdma_addrinfo)));
  if (!r) return fail(ENOMEM);
  const rdma_addrinfo* h = hints ? hints : &kNoHints;
  int rc = 0;
  if (node || service) {
    addrinfo aih, *ai = nullptr;
    to_ai(&aih, h);
    const int g = getaddrinfo(node, service, hints ? &aih : nullptr, &ai);
    if (g) {
      rdma_freeaddrinfo(r);
      return g;
    }
    rc = to_rai(r, h, ai);
    freeaddrinfo(ai);
  } else {
    r->ai_flags = h->ai_flags;
    r->ai_family = h->ai_family;
    r->ai_qp_type = h->ai_qp_type;
    r->ai_port_space = h->ai_port_space;
    if (h->ai_dst_len && h->ai_dst_addr)
      rc = copy_addr(&r->ai_dst_addr, &r->ai_dst_len, h->ai_dst_addr, h->ai_dst_len);
  }
  if (!rc && !r->ai_src_len && h->ai_src_len && h->ai_src_addr)
    rc = copy_addr(&r->ai_src_addr, &r->ai_src_len, h->ai_src_addr, h->ai_src_len);
  if (rc) {
    rdma_freeaddrinfo(r);
    return fail(rc);
  }
  *res = r;
  return 0;
}

void rdma_freeaddrinfo(rdma_addrinfo* res) {
  while (res) {
    rdma_addrinfo* r = res;
    res = res->ai_next;
    std::free(r->ai_connect);
    std::free(r->ai_route);
    std::free(r->ai_src_canonname);
    std::free(r->ai_dst_canonname);
    std::free(r->ai_src_addr);
    std::free(r->ai_dst_addr);
    std::free(r);
  }
}

}  // extern "C"
