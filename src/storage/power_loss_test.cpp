// Power loss at every write boundary of a scripted run (LevelDB's fault_injection_test idea):
// the run is repeated with the simulated machine stopping after 0, 1, 2, ... mutating file
// operations; then the disk loses what was not synced, the log is reopened, and everything that
// was acknowledged must be there, whole and in order, and nothing half-written may appear.
#include <gtest/gtest.h>

#include <set>

#include "storage/cursor.h"
#include "storage/fault_env.h"
#include "storage/log.h"
#include "storage/test_util.h"

namespace tidepool::storage {
namespace {

using Mode = FaultInjectionEnv::PowerLossMode;

// The scripted run: appends of different shapes, enough to roll segments several times.
std::vector<std::vector<std::string>> Script() {
  std::vector<std::vector<std::string>> appends;
  for (int i = 0; i < 14; ++i) {
    std::vector<std::string> records;
    for (int r = 0; r <= i % 3; ++r) {
      records.push_back("append" + std::to_string(i) + "-record" + std::to_string(r) +
                        std::string(static_cast<size_t>(30 * (i % 4)), 'p'));
    }
    appends.push_back(records);
  }
  return appends;
}

LogOptions ScriptOptions() {
  LogOptions o;
  o.segment_max_bytes = 400;  // rolls every few appends
  o.index_interval_bytes = 64;
  return o;
}

// Runs the script; returns how many appends were acknowledged (they are sequential, so the
// acknowledged ones are a prefix).
size_t RunScript(Env* env, const std::string& dir, Flusher* flusher) {
  auto log = Log::Open(env, dir, ScriptOptions(), flusher);
  if (!log.ok()) return 0;
  size_t acked = 0;
  for (const auto& records : Script()) {
    if (!(*log)->Append(records).ok()) break;
    ++acked;
  }
  return acked;
}

class PowerLossTest : public ::testing::TestWithParam<Mode> {};

TEST_P(PowerLossTest, RecoveryAfterPowerLossAtEveryWriteBoundary) {
  const auto script = Script();
  uint64_t total_ops = 0;
  {
    testing::TempDir dir;
    FaultInjectionEnv env(DefaultEnv());
    Flusher flusher;
    ASSERT_EQ(RunScript(&env, dir.sub("log"), &flusher), script.size());
    total_ops = env.mutating_ops();
  }
  ASSERT_GT(total_ops, 40u);

  for (uint64_t crash_at = 0; crash_at <= total_ops; ++crash_at) {
    SCOPED_TRACE("crash after " + std::to_string(crash_at) + " of " + std::to_string(total_ops) +
                 " operations");
    testing::TempDir dir;
    FaultInjectionEnv env(DefaultEnv());
    Flusher flusher;
    env.CrashAfterOps(static_cast<int64_t>(crash_at));
    const size_t acked = RunScript(&env, dir.sub("log"), &flusher);
    ASSERT_TRUE(env.PowerLoss(GetParam(), crash_at).ok());

    auto log = Log::Open(&env, dir.sub("log"), ScriptOptions(), &flusher);
    if (crash_at == 0) {
      // Not even the directory was created: a fresh, empty log.
      ASSERT_TRUE(log.ok()) << log.status().ToString();
    }
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    EXPECT_TRUE((*log)->recovery_report().corruption.empty());

    std::vector<std::string> expected_all;
    std::vector<size_t> prefix_sizes{0};  // records in the first n appends
    for (const auto& records : script) {
      expected_all.insert(expected_all.end(), records.begin(), records.end());
      prefix_sizes.push_back(expected_all.size());
    }
    auto got = (*log)->Read(Seq(0), 10000, 1 << 24);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    // What survived is exactly the first m appends, m >= acked: whole appends, in order.
    const size_t n = got->size();
    const auto m = std::find(prefix_sizes.begin(), prefix_sizes.end(), n);
    ASSERT_NE(m, prefix_sizes.end()) << n << " records is not a whole number of appends";
    EXPECT_GE(static_cast<size_t>(m - prefix_sizes.begin()), acked);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ((*got)[i].seq, Seq(i));
      ASSERT_EQ((*got)[i].data, expected_all[i]);
    }
    // And the log takes writes again, continuing the sequence.
    auto more = (*log)->Append({"after recovery"});
    ASSERT_TRUE(more.ok()) << more.status().ToString();
    EXPECT_EQ(more->first, Seq(n));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, PowerLossTest,
                         ::testing::Values(Mode::kDropUnsynced, Mode::kKeepRandomPrefix,
                                           Mode::kGarbleUnsynced),
                         [](const auto& info) {
                           switch (info.param) {
                             case Mode::kDropUnsynced:
                               return std::string("DropUnsynced");
                             case Mode::kKeepRandomPrefix:
                               return std::string("KeepRandomPrefix");
                             case Mode::kGarbleUnsynced:
                               return std::string("GarbleUnsynced");
                           }
                           return std::string("unknown");
                         });

// The same for a cursor: acks and deliveries through several compactions.
class CursorPowerLossTest : public ::testing::TestWithParam<Mode> {};

size_t RunCursorScript(Env* env, const std::string& dir, Flusher* flusher) {
  CursorOptions o;
  o.compact_bytes = 200;  // compacts every few commits
  auto cursor = Cursor::Open(env, dir, o, flusher);
  if (!cursor.ok()) return 0;
  size_t acked = 0;
  for (uint64_t i = 0; i < 30; ++i) {
    CursorBatch b;
    b.SetDelivery(Seq(i + 1), {static_cast<uint32_t>(i + 1), static_cast<int64_t>(1000 + i)});
    b.Ack(Seq(i));  // out of order pairs: odd first, then even
    if (!(*cursor)->Commit(std::move(b)).ok()) break;
    ++acked;
  }
  return acked;
}

TEST_P(CursorPowerLossTest, AcknowledgedAcksSurvivePowerLossAtEveryWriteBoundary) {
  uint64_t total_ops = 0;
  {
    testing::TempDir dir;
    FaultInjectionEnv env(DefaultEnv());
    Flusher flusher;
    ASSERT_EQ(RunCursorScript(&env, dir.sub("c"), &flusher), 30u);
    total_ops = env.mutating_ops();
  }
  for (uint64_t crash_at = 0; crash_at <= total_ops; ++crash_at) {
    SCOPED_TRACE("crash after " + std::to_string(crash_at) + " operations");
    testing::TempDir dir;
    FaultInjectionEnv env(DefaultEnv());
    Flusher flusher;
    env.CrashAfterOps(static_cast<int64_t>(crash_at));
    const size_t acked = RunCursorScript(&env, dir.sub("c"), &flusher);
    ASSERT_TRUE(env.PowerLoss(GetParam(), crash_at).ok());
    auto cursor = Cursor::Open(&env, dir.sub("c"), {}, &flusher);
    ASSERT_TRUE(cursor.ok()) << cursor.status().ToString();
    CursorState s = (*cursor)->state();
    // Every acknowledged commit's ack is there; nothing beyond what was submitted.
    EXPECT_GE(s.floor(), Seq(acked));
    EXPECT_LE(s.floor(), Seq(30));
    EXPECT_TRUE(s.acked_ranges().empty());
    // The delivery state of the first unacked sequence is the one its commit set.
    if (acked > 0 && s.floor() == Seq(acked)) {
      auto d = s.delivery(Seq(acked));
      ASSERT_TRUE(d.has_value());
      EXPECT_EQ(d->attempts, acked);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, CursorPowerLossTest,
                         ::testing::Values(Mode::kDropUnsynced, Mode::kKeepRandomPrefix,
                                           Mode::kGarbleUnsynced));

}  // namespace
}  // namespace tidepool::storage
