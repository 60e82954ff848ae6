// DCQCN (lib/pmd/hca/dcqcn.h) on a simulated clock: the rate cut a CNP causes, alpha's
// growth and decay, the stages of recovery (fast recovery, additive, hyper increase) driven
// by the timer and the byte counter, pacing, the floor and the ceiling, the CNP pacer and
// the congestion point's marking curve.
#include "pmd/hca/dcqcn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace dverbs::pmd::hca {
namespace {

DcqcnParams params() {
  DcqcnParams p;
  p.enabled = true;
  p.line_rate_mbps = 10'000;
  p.min_rate_mbps = 10;
  return p;
}

TEST(Dcqcn, StartsAtLineRateUnpaced) {
  DcqcnParams p = params();
  DcqcnRate r;
  r.reset(p, 0);
  EXPECT_DOUBLE_EQ(r.rate_mbps(), 10'000);
  r.on_sent(p, 1 << 20, 0);
  EXPECT_TRUE(r.may_send(0)) << "at line rate nothing is paced";
}

TEST(Dcqcn, CnpCutsTheRateByHalfAlphaAndAlphaGrows) {
  DcqcnParams p = params();
  DcqcnRate r;
  r.reset(p, 0);
  r.on_cnp(p, 1000);  // alpha starts at 1: Rc halves, alpha = (1-g) + g = 1
  EXPECT_DOUBLE_EQ(r.rate_mbps(), 5'000);
  EXPECT_DOUBLE_EQ(r.target_mbps(), 10'000);
  EXPECT_DOUBLE_EQ(r.alpha(), 1.0);
  r.on_cnp(p, 2000);
  EXPECT_DOUBLE_EQ(r.rate_mbps(), 2'500);
  EXPECT_DOUBLE_EQ(r.target_mbps(), 5'000);
  EXPECT_EQ(r.cnps(), 2u);
}

TEST(Dcqcn, AlphaDecaysEveryPeriodWithoutCnp) {
  DcqcnParams p = params();
  DcqcnRate r;
  r.reset(p, 0);
  r.on_cnp(p, 0);
  r.on_time(p, 3 * p.alpha_period_ns);  // three periods without a CNP
  EXPECT_NEAR(r.alpha(), std::pow(1 - p.g, 3), 1e-12);
  // The next cut is smaller: Rc * (1 - alpha/2).
  const double before = r.rate_mbps(), a = r.alpha();
  r.on_cnp(p, 3 * p.alpha_period_ns + 1);
  EXPECT_NEAR(r.rate_mbps(), before * (1 - a / 2), 1e-9);
}

TEST(Dcqcn, TimerStagesRecoverFastThenAdditively) {
  DcqcnParams p = params();
  p.increase_bytes = uint64_t(1) << 40;  // the timer alone drives the stages
  DcqcnRate r;
  r.reset(p, 0);
  r.on_cnp(p, 0);  // Rc 5000, Rt 10000
  double rc = 5'000, rt = 10'000;
  uint64_t t = 0;
  for (uint32_t stage = 1; stage <= p.fast_recovery + 3; stage++) {
    t += p.increase_period_ns;
    r.on_time(p, t);
    if (stage >= p.fast_recovery) rt = std::min(rt + p.rai_mbps, p.line_rate_mbps);
    rc = (rt + rc) / 2;
    EXPECT_NEAR(r.rate_mbps(), rc, 1e-9) << "stage " << stage;
    EXPECT_NEAR(r.target_mbps(), rt, 1e-9) << "stage " << stage;
  }
}

TEST(Dcqcn, ByteCounterAndTimerTogetherReachHyperIncrease) {
  DcqcnParams p = params();
  p.line_rate_mbps = 100'000;  // room to climb
  p.increase_bytes = 1000;
  DcqcnRate r;
  r.reset(p, 0);
  r.on_cnp(p, 0);
  r.on_cnp(p, 1);  // deep cut: Rc 25000, Rt 50000
  uint64_t t = 1;
  // F + 2 timer stages and F + 2 byte stages: the last ones are hyper increases.
  for (uint32_t i = 0; i < p.fast_recovery + 2; i++) {
    t += p.increase_period_ns;
    r.on_time(p, t);
    r.on_sent(p, 1000, t);
  }
  // Before the last byte stage t = F+2 and b = F+1: min = F+1 > F, a hyper step of one
  // R_HAI; the last byte stage (both F+2) adds two.
  EXPECT_GT(r.target_mbps(), 50'000 + 3 * p.rhai_mbps - 1e-9);
  EXPECT_LE(r.rate_mbps(), p.line_rate_mbps);
}

TEST(Dcqcn, PacesToTheCurrentRate) {
  DcqcnParams p = params();
  DcqcnRate r;
  r.reset(p, 0);
  r.on_cnp(p, 0);  // 5000 Mbit/s: 1000 bytes take 1600 ns
  r.on_sent(p, 1000, 10'000);
  EXPECT_FALSE(r.may_send(10'000));
  EXPECT_FALSE(r.may_send(11'599));
  EXPECT_TRUE(r.may_send(11'600));
  r.on_sent(p, 1000, 11'600);  // back to back: the next departure is 1600 ns later
  EXPECT_FALSE(r.may_send(13'199));
  EXPECT_TRUE(r.may_send(13'200));
}

TEST(Dcqcn, NeverBelowTheFloorNorAboveTheLine) {
  DcqcnParams p = params();
  DcqcnRate r;
  r.reset(p, 0);
  for (int i = 0; i < 100; i++) r.on_cnp(p, uint64_t(i));
  EXPECT_DOUBLE_EQ(r.rate_mbps(), p.min_rate_mbps);
  for (uint64_t t = 100; t < 100 + 100'000 * p.increase_period_ns; t += 64 * p.increase_period_ns)
    r.on_time(p, t);
  EXPECT_DOUBLE_EQ(r.rate_mbps(), p.line_rate_mbps) << "recovers fully, and no further";
}

TEST(Dcqcn, CnpPacerSendsAtMostOnePerInterval) {
  DcqcnParams p = params();
  CnpPacer c;
  EXPECT_TRUE(c.should_send(p, 1'000'000));
  EXPECT_FALSE(c.should_send(p, 1'000'000 + p.cnp_interval_ns - 1));
  EXPECT_TRUE(c.should_send(p, 1'000'000 + p.cnp_interval_ns));
  EXPECT_FALSE(c.should_send(p, 1'000'000 + p.cnp_interval_ns + 1));
}

TEST(Dcqcn, MarkingFollowsTheRedCurve) {
  DcqcnParams p = params();
  p.kmin = 10;
  p.kmax = 20;
  p.pmax = 0.5;
  EXPECT_FALSE(dcqcn_mark(p, 9, 0)) << "below kmin: never";
  EXPECT_TRUE(dcqcn_mark(p, 20, 0xffffffffu)) << "at kmax: always";
  // Halfway: probability pmax / 2 = 0.25 of the random range.
  int marked = 0;
  const int n = 1 << 16;
  for (int i = 0; i < n; i++) marked += dcqcn_mark(p, 15, uint32_t(uint64_t(i) << 16));
  EXPECT_EQ(marked, n / 4);
}

TEST(Dcqcn, ParsesItsEnvironmentSpec) {
  DcqcnParams p;
  std::string why;
  ASSERT_TRUE(net::parse_dcqcn("off", &p, &why));
  EXPECT_FALSE(p.enabled);
  ASSERT_TRUE(net::parse_dcqcn("on,g=0.5,kmin=4,kmax=8,line_mbps=1000,cnp_us=20", &p, &why)) << why;
  EXPECT_TRUE(p.enabled);
  EXPECT_DOUBLE_EQ(p.g, 0.5);
  EXPECT_EQ(p.kmin, 4u);
  EXPECT_EQ(p.cnp_interval_ns, 20'000u);
  EXPECT_FALSE(net::parse_dcqcn("yes", &p, &why));
  EXPECT_FALSE(net::parse_dcqcn("on,g=2", &p, &why));
  EXPECT_FALSE(net::parse_dcqcn("on,kmin=9,kmax=8", &p, &why));
  EXPECT_FALSE(net::parse_dcqcn("on,bogus=1", &p, &why));
  EXPECT_FALSE(net::parse_dcqcn("on,g", &p, &why));
  EXPECT_NE(why, "");
}

}  // namespace
}  // namespace dverbs::pmd::hca
