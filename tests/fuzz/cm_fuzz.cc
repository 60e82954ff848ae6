// cm_fuzz — arbitrary bytes into the CM MAD codec (lib/cm/mad.cc), as a peer on QP1 could
// send them. No device: the codec is pure.
//
// For every input parse() must return without reading past the input (libFuzzer hands it a
// buffer of exactly the input's size; ASan watches), and when it accepts the MAD:
//   - build() of the result equals the input masked by defined_bits(): every bit of a field
//     survives, every reserved bit comes out zero;
//   - parse() of that rebuilt MAD gives the same Mad again;
//   - for REQ and SIDR_REQ, an Annex A11 IP header that parses rebuilds to the same bytes
//     (version byte, IP version nibble, port, addresses; for IPv4 the last 4 bytes of each).
#include <cstdint>
#include <cstring>

#include "checks.h"
#include "cm/mad.h"

namespace cm = dverbs::cm;

namespace {

void check_ip_hdr(const uint8_t* pd, size_t len) {
  cm::IpHdr h{};
  if (!cm::parse_ip_hdr(pd, len, &h)) return;
  FUZZ_CHECK(h.ip_version == 4 || h.ip_version == 6, "IP version %u", h.ip_version);
  uint8_t b[cm::kIpHdrSize];
  cm::build_ip_hdr(h, b);
  const size_t skip = h.ip_version == 4 ? 12 : 0;
  FUZZ_CHECK(b[0] == 0 && b[1] == (pd[1] & 0xf0) && b[2] == pd[2] && b[3] == pd[3],
             "IP header prefix");
  FUZZ_CHECK(std::memcmp(b + 4 + skip, pd + 4 + skip, 16 - skip) == 0, "source address");
  FUZZ_CHECK(std::memcmp(b + 20 + skip, pd + 20 + skip, 16 - skip) == 0, "destination");
  cm::IpHdr again{};
  FUZZ_CHECK(cm::parse_ip_hdr(b, sizeof b, &again) && again == h, "IP header round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::Mad m{};
  const cm::ParseError e = cm::parse(data, size, &m);
  FUZZ_CHECK(cm::name(e)[0] != '?', "unnamed ParseError %d", int(e));
  if (e != cm::ParseError::ok) {
    FUZZ_CHECK(std::holds_alternative<std::monostate>(m.msg), "%s left a message", cm::name(e));
    FUZZ_CHECK(e != cm::ParseError::too_short || size < cm::kMadSize, "too_short at %zu", size);
    return 0;
  }
  FUZZ_CHECK(size >= cm::kMadSize, "ok from %zu bytes", size);
  FUZZ_CHECK(!std::holds_alternative<std::monostate>(m.msg), "ok without a message");

  uint8_t rebuilt[cm::kMadSize], mask[cm::kMadSize];
  FUZZ_CHECK(cm::build(m, rebuilt), "build refused a parsed MAD");
  cm::defined_bits(m.hdr.attr_id, mask);
  for (size_t i = 0; i < cm::kMadSize; ++i)
    FUZZ_CHECK(rebuilt[i] == (data[i] & mask[i]), "%s byte %zu: in %02x mask %02x rebuilt %02x",
               cm::name(m.hdr.attr_id), i, data[i], mask[i], rebuilt[i]);

  cm::Mad again{};
  FUZZ_CHECK(cm::parse(rebuilt, sizeof rebuilt, &again) == cm::ParseError::ok,
             "rebuilt %s does not parse", cm::name(m.hdr.attr_id));
  FUZZ_CHECK(
      again.msg == m.msg && again.hdr.tid == m.hdr.tid && again.hdr.attr_mod == m.hdr.attr_mod,
      "rebuilt %s parses differently", cm::name(m.hdr.attr_id));

  if (const auto* r = std::get_if<cm::Req>(&m.msg))
    check_ip_hdr(r->private_data, sizeof r->private_data);
  if (const auto* r = std::get_if<cm::SidrReq>(&m.msg))
    check_ip_hdr(r->private_data, sizeof r->private_data);
  return 0;
}
