#pragma once
// Helpers for state store tests: checkpoints with a TensorState payload, a
// test state type with its codec, and a store in a fresh directory.

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/state_test_util.hpp"
#include "understudy/schema/state.capnp.h"
#include "understudy/state/persistent.hpp"
#include "understudy/state/state_store.hpp"

namespace test {

/// A state of a persistent test actor: a counter and a weight vector.
struct counter_state {
  uint64_t counter = 0;
  std::vector<float> weights;
};

/// A temporary state directory, removed at the end of the test.
struct temp_state_dir {
  std::string path = make_temp_dir();
  ~temp_state_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// Store settings for tests: fast (no sync) unless a test needs durability.
inline understudy::state_store_config test_store_config(const std::string& dir) {
  understudy::state_store_config cfg;
  cfg.directory = dir;
  cfg.mode = understudy::durability::none;
  cfg.initial_map_size = size_t{16} << 20;
  cfg.chunk_size = size_t{1} << 20;
  return cfg;
}

/// Opens a store or fails the test.
inline std::shared_ptr<understudy::state_store> open_store(
    const understudy::state_store_config& cfg) {
  auto st = understudy::state_store::open(cfg);
  if (!st)
    FAIL("cannot open store: " << understudy::describe(st.error()));
  return *st;
}

/// Value `i` of the test tensor "w" (exact in float for any size).
inline float w_value(float seed, size_t i) {
  return seed + static_cast<float>(i & 0xffff);
}

/// A checkpoint of `path` at `step` with a TensorState payload and one f32
/// tensor "w" of `n` values w_value(seed, i).
inline understudy::checkpoint make_checkpoint(const std::string& path, uint64_t step, size_t n,
                                              float seed = 0.0f) {
  understudy::checkpoint cp;
  cp.path = path;
  cp.step = step;
  cp.schema_id = capnp::typeId<understudy::schema::TensorState>();
  cp.schema_version = 1;
  cp.payload = tensor_state_payload(step);
  std::vector<float> w(n);
  for (size_t i = 0; i < n; ++i)
    w[i] = w_value(seed, i);
  cp.tensors.push_back(understudy::tensor_data::copy_of("w", understudy::element_type::f32, w));
  return cp;
}

/// Commits `cps` in one transaction and requires every put to succeed.
inline void commit_all(understudy::state_store& st,
                       const std::vector<understudy::checkpoint>& cps) {
  std::vector<const understudy::checkpoint*> batch;
  for (auto& cp : cps)
    batch.push_back(&cp);
  std::vector<caf::error> results;
  auto err = st.commit(batch, results);
  if (err)
    FAIL("commit failed: " << understudy::describe(err));
  for (auto& r : results)
    if (r)
      FAIL("put rejected: " << understudy::describe(r));
}

/// Reads tensor "w" of `path`@`step`.
inline caf::expected<std::vector<float>> read_w(const understudy::state_store& st,
                                                const std::string& path, uint64_t step) {
  std::vector<float> out;
  auto err = st.read(path, step, [&](const understudy::record_view& rec) -> caf::error {
    auto idx = rec.find_tensor("w");
    if (!idx)
      return understudy::make_error(understudy::state_errc::not_found, "no tensor w");
    out.resize(rec.info().tensors[*idx].size / sizeof(float));
    return rec.copy_tensor(*idx, out.data(), out.size() * sizeof(float));
  });
  if (err)
    return err;
  return out;
}

/// Deletes chunk `chunk` of tensor `tensor` of `path`@`step` with plain LMDB,
/// as a torn or damaged store might lack it (no store may be open meanwhile).
inline void delete_chunk(const std::string& dir, const std::string& path, uint64_t step,
                         uint32_t tensor, uint32_t chunk) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  mdb_env_set_maxdbs(env, 4);
  mdb_env_set_mapsize(env, size_t{1} << 30);
  REQUIRE(mdb_env_open(env, dir.c_str(), MDB_NOTLS, 0644) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi dbi = 0;
  REQUIRE(mdb_dbi_open(txn, "chunks", 0, &dbi) == 0);
  auto key = understudy::detail::chunk_key(path, step, tensor, chunk);
  MDB_val k{key.size(), key.data()};
  CHECK(mdb_del(txn, dbi, &k, nullptr) == 0);
  REQUIRE(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
}

} // namespace test

template <>
struct understudy::state_codec<test::counter_state> {
  using schema = understudy::schema::TensorState;
  static constexpr uint32_t version = 1;

  static void save(const test::counter_state& st, understudy::state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setStep(st.counter);
    root.setNote("counter");
    enc.add_tensor(understudy::tensor_data::copy_of("weights", element_type::f32, st.weights));
  }

  static caf::error load(understudy::state_decoder& dec, test::counter_state& st) {
    auto root = dec.root<schema>();
    st.counter = root.getStep();
    return dec.read_tensor("weights", st.weights);
  }

  static void recycle(test::counter_state&& st, understudy::tensor_recycler& bin) {
    bin.give(std::move(st.weights));
  }
};
