// The store's test suite, run against each engine (store_test.cpp). An engine's test binary
// instantiates StoreTest with a StoreBackend factory: sqlite_store_test.cpp (unit) and
// postgres_store_test.cpp (integration: it runs a real PostgreSQL server).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "store/store.h"

namespace tidepool::store::testing {

// One fresh, empty database per backend object.
class StoreBackend {
 public:
  virtual ~StoreBackend() = default;
  // A new Store on this backend's database (its own connection or pool each time).
  virtual Result<std::unique_ptr<Store>> Open() = 0;
  // Runs one SQL statement on the database directly, not through a Store. The rows, each
  // column as text ("" for NULL).
  virtual Result<std::vector<std::vector<std::string>>> Query(const std::string& sql) = 0;
};

inline StoredMessage UserMessage(const std::string& conversation_id, const std::string& id,
                                 const std::string& text, int64_t created_micros = 0) {
  StoredMessage message;
  message.id = id;
  message.conversation_id = conversation_id;
  message.role = Role::kUser;
  message.text = text;
  message.created_micros = created_micros;
  return message;
}

inline StoredMessage Reply(const std::string& conversation_id, const std::string& request_id,
                           const std::string& text, Role role = Role::kAssistant) {
  StoredMessage reply;
  reply.conversation_id = conversation_id;
  reply.request_id = request_id;
  reply.role = role;
  reply.text = text;
  return reply;
}

struct BackendParam {
  std::string name;  // the engine, as in Store::engine()
  std::function<std::unique_ptr<StoreBackend>()> make;
};

inline void PrintTo(const BackendParam& param, std::ostream* out) {
  *out << param.name;
}

inline std::string BackendName(const ::testing::TestParamInfo<BackendParam>& info) {
  return info.param.name;
}

class StoreTest : public ::testing::TestWithParam<BackendParam> {
 protected:
  void SetUp() override {
    backend_ = GetParam().make();
    ASSERT_NE(backend_, nullptr);
    auto opened = backend_->Open();
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    store_ = std::move(opened).value();
  }

  std::unique_ptr<StoreBackend> backend_;
  std::unique_ptr<Store> store_;
};

}  // namespace tidepool::store::testing
