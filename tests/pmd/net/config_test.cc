// DVERBS_* parsing: every variable's good values, and every bad one rejected with one line
// naming the variable and the value.
#include "pmd/net/config.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

namespace dverbs::pmd::net {
namespace {

constexpr const char* kVars[] = {"DVERBS_PORT", "DVERBS_IP",    "DVERBS_MAC",  "DVERBS_LCORES",
                                 "DVERBS_EAL",  "DVERBS_FAULT", "DVERBS_PCAP", "DVERBS_LOG"};

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) unsetenv(v);
  }
  void TearDown() override { SetUp(); }

  // Expects `var=value` to be rejected with one line naming both.
  void expect_bad(const char* var, const char* value) {
    SCOPED_TRACE(std::string(var) + "=" + value);
    SetUp();
    setenv(var, value, 1);
    Config cfg;
    Config before = cfg;
    std::string err;
    EXPECT_FALSE(config_from_env(&cfg, &err));
    EXPECT_EQ(err.find(std::string(var) + ": '" + value + "'"), 0u) << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
    EXPECT_EQ(cfg.ip, before.ip);  // untouched on error
    EXPECT_EQ(cfg.lcores, before.lcores);
    unsetenv(var);
  }
};

TEST_F(ConfigTest, DefaultsWhenUnset) {
  Config cfg;
  std::string err;
  ASSERT_TRUE(config_from_env(&cfg, &err)) << err;
  EXPECT_EQ(cfg.port, "");
  EXPECT_EQ(cfg.ip, 0x0a000001u);
  EXPECT_EQ(cfg.prefix_len, 24);
  EXPECT_FALSE(cfg.mac_set);
  EXPECT_EQ(cfg.lcores, kLcoresAuto);
  EXPECT_EQ(cfg.eal_args, "");
  EXPECT_FALSE(cfg.fault.enabled());
  EXPECT_EQ(cfg.pcap, "");
  EXPECT_EQ(cfg.log_level, 5);  // warning
}

TEST_F(ConfigTest, EmptyVariableMeansDefault) {
  setenv("DVERBS_IP", "", 1);
  setenv("DVERBS_LCORES", "", 1);
  Config cfg;
  std::string err;
  ASSERT_TRUE(config_from_env(&cfg, &err)) << err;
  EXPECT_EQ(cfg.ip, 0x0a000001u);
  EXPECT_EQ(cfg.lcores, kLcoresAuto);
}

TEST_F(ConfigTest, GoodValues) {
  setenv("DVERBS_PORT", "net_memif0,role=server,socket=/tmp/a.sock", 1);
  setenv("DVERBS_IP", "192.168.7.42/16", 1);
  setenv("DVERBS_MAC", "02:aB:cd:EF:01:23", 1);
  setenv("DVERBS_LCORES", "0", 1);
  setenv("DVERBS_EAL", "--vdev net_null0  -m 128", 1);
  setenv("DVERBS_FAULT", "loss=0.01,dup=0.5,reorder=1,corrupt=0,seed=0x2a", 1);
  setenv("DVERBS_PCAP", "/tmp/x.pcapng", 1);
  setenv("DVERBS_LOG", "Debug", 1);
  Config cfg;
  std::string err;
  ASSERT_TRUE(config_from_env(&cfg, &err)) << err;
  EXPECT_EQ(cfg.port, "net_memif0,role=server,socket=/tmp/a.sock");
  EXPECT_EQ(cfg.ip, 0xc0a8072au);
  EXPECT_EQ(cfg.prefix_len, 16);
  EXPECT_TRUE(cfg.mac_set);
  const uint8_t mac[6] = {0x02, 0xab, 0xcd, 0xef, 0x01, 0x23};
  EXPECT_EQ(std::memcmp(cfg.mac, mac, 6), 0);
  EXPECT_EQ(cfg.lcores, 0);
  EXPECT_EQ(cfg.eal_args, "--vdev net_null0  -m 128");
  EXPECT_DOUBLE_EQ(cfg.fault.loss, 0.01);
  EXPECT_DOUBLE_EQ(cfg.fault.dup, 0.5);
  EXPECT_DOUBLE_EQ(cfg.fault.reorder, 1.0);
  EXPECT_DOUBLE_EQ(cfg.fault.corrupt, 0.0);
  EXPECT_EQ(cfg.fault.seed, 42u);
  EXPECT_TRUE(cfg.fault.enabled());
  EXPECT_EQ(cfg.pcap, "/tmp/x.pcapng");
  EXPECT_EQ(cfg.log_level, 8);
}

TEST_F(ConfigTest, IpWithoutPrefixIsSlash24) {
  uint32_t ip = 0;
  uint8_t prefix = 0;
  ASSERT_TRUE(parse_ip_prefix("10.1.2.3", &ip, &prefix));
  EXPECT_EQ(ip, 0x0a010203u);
  EXPECT_EQ(prefix, 24);
  ASSERT_TRUE(parse_ip_prefix("255.0.0.1/32", &ip, &prefix));
  EXPECT_EQ(prefix, 32);
}

TEST_F(ConfigTest, LcoresBounds) {
  EXPECT_EQ(parse_lcores("0"), 0);
  EXPECT_EQ(parse_lcores("64"), kMaxLcores);
  EXPECT_EQ(parse_lcores("65"), -1);
  EXPECT_EQ(parse_lcores("-1"), -1);
  EXPECT_EQ(parse_lcores("1x"), -1);
  EXPECT_EQ(parse_lcores("auto"), kLcoresAuto);
  EXPECT_EQ(parse_lcores("AUTO"), kLcoresAuto);
  EXPECT_EQ(parse_lcores("autox"), -1);
}

TEST_F(ConfigTest, LogLevelNamesAndNumbers) {
  const char* names[] = {"emergency", "alert",  "critical", "error",
                         "warning",   "notice", "info",     "debug"};
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(parse_log_level(names[i]), i + 1) << names[i];
    EXPECT_EQ(parse_log_level(std::to_string(i + 1)), i + 1);
  }
  EXPECT_EQ(parse_log_level("WARN"), 5);
  EXPECT_EQ(parse_log_level("err"), 4);
  EXPECT_EQ(parse_log_level("0"), -1);
  EXPECT_EQ(parse_log_level("9"), -1);
}

TEST_F(ConfigTest, FaultSpecDetails) {
  FaultSpec f;
  std::string why;
  ASSERT_TRUE(parse_fault("", &f, &why));
  EXPECT_FALSE(f.enabled());
  ASSERT_TRUE(parse_fault("off", &f, &why));
  EXPECT_FALSE(f.enabled());
  ASSERT_TRUE(parse_fault("seed=7,loss=0.25,", &f, &why)) << why;
  EXPECT_DOUBLE_EQ(f.loss, 0.25);
  EXPECT_EQ(f.seed, 7u);
  EXPECT_FALSE(parse_fault("los=0.1", &f, &why));
  EXPECT_NE(why.find("unknown key 'los'"), std::string::npos) << why;
  EXPECT_FALSE(parse_fault("loss=1.5", &f, &why));
  EXPECT_NE(why.find("loss=1.5"), std::string::npos) << why;
  EXPECT_EQ(f.loss, 0.25);  // untouched on error
}

TEST_F(ConfigTest, EveryBadValueNamesItsVariable) {
  expect_bad("DVERBS_IP", "10.0.0.300/24");
  expect_bad("DVERBS_IP", "10.0.0/24");
  expect_bad("DVERBS_IP", "10.0.0.1/33");
  expect_bad("DVERBS_IP", "10.0.0.1/0");
  expect_bad("DVERBS_IP", "10.0.0.1/");
  expect_bad("DVERBS_IP", "a.b.c.d");
  expect_bad("DVERBS_IP", "0.0.0.0");
  expect_bad("DVERBS_IP", "224.0.0.1");
  expect_bad("DVERBS_MAC", "aa:bb:cc:dd:ee");
  expect_bad("DVERBS_MAC", "aa:bb:cc:dd:ee:fg");
  expect_bad("DVERBS_MAC", "aabbccddeeff");
  expect_bad("DVERBS_MAC", "01:00:5e:00:00:01");  // multicast
  expect_bad("DVERBS_MAC", "00:00:00:00:00:00");
  expect_bad("DVERBS_LCORES", "65");
  expect_bad("DVERBS_LCORES", "-1");
  expect_bad("DVERBS_LCORES", "two");
  expect_bad("DVERBS_FAULT", "loss=2");
  expect_bad("DVERBS_FAULT", "loss=-0.1");
  expect_bad("DVERBS_FAULT", "loss=nan");
  expect_bad("DVERBS_FAULT", "loss");
  expect_bad("DVERBS_FAULT", "drop=0.1");
  expect_bad("DVERBS_FAULT", "seed=-1");
  expect_bad("DVERBS_FAULT", "seed=99999999999999999999999");
  expect_bad("DVERBS_LOG", "loud");
  expect_bad("DVERBS_LOG", "0");
  expect_bad("DVERBS_LOG", "9");
}

TEST_F(ConfigTest, ErrorLineIsReadable) {
  setenv("DVERBS_FAULT", "loss=0.1,typo=1", 1);
  Config cfg;
  std::string err;
  ASSERT_FALSE(config_from_env(&cfg, &err));
  EXPECT_EQ(err,
            "DVERBS_FAULT: 'loss=0.1,typo=1' is invalid: unknown key 'typo' (expected loss, "
            "dup, reorder, corrupt, seed)");
}

}  // namespace
}  // namespace dverbs::pmd::net
