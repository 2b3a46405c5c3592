// The LMDB state store: records, chunked tensors, retention, corruption
// handling, map growth and the one-writer rule.

#include "understudy/state/state_store.hpp"

#include <fstream>

#include "support/state_fixture.hpp"
#include "understudy/core/errors.hpp"

using namespace understudy;
using test::commit_all;
using test::make_checkpoint;
using test::open_store;
using test::read_w;
using test::temp_state_dir;
using test::test_store_config;

namespace {

std::vector<uint64_t> steps_of(const state_store& st, const std::string& path) {
  auto vs = st.versions(path);
  REQUIRE(vs);
  std::vector<uint64_t> steps;
  for (auto& v : *vs)
    steps.push_back(v.step);
  return steps;
}

} // namespace

TEST_CASE("a record round-trips its header, payload and tensors of every element type",
          "[state][store]") {
  temp_state_dir dir;
  auto st = open_store(test_store_config(dir.path));
  checkpoint cp;
  cp.path = "/job/shards/shard-0";
  cp.step = 42;
  cp.schema_id = capnp::typeId<schema::TensorState>();
  cp.schema_version = 3;
  cp.incarnation = 7;
  {
    capnp::MallocMessageBuilder msg;
    auto root = msg.initRoot<schema::TensorState>();
    root.setStep(42);
    root.setNote("adam");
    auto scalars = root.initScalars(2);
    scalars[0].setName("lr");
    scalars[0].setValue(0.01);
    scalars[1].setName("beta1");
    scalars[1].setValue(0.9);
    auto words = capnp::messageToFlatArray(msg);
    cp.payload.assign(reinterpret_cast<const uint64_t*>(words.begin()),
                      reinterpret_cast<const uint64_t*>(words.end()));
  }
  std::vector<double> f64{1.5, -2.25, 3e100};
  std::vector<int64_t> i64{-1, 0, 1LL << 62};
  std::vector<uint8_t> u8(3 * 1024 * 1024 + 5); // several chunks, ragged end
  for (size_t i = 0; i < u8.size(); ++i)
    u8[i] = static_cast<uint8_t>(i * 31 + 7);
  cp.tensors.push_back(tensor_data::copy_of("f64", element_type::f64, f64));
  cp.tensors.push_back(tensor_data::copy_of("i64", element_type::i64, i64));
  cp.tensors.push_back(tensor_data::copy_of("u8", element_type::u8, u8));
  cp.tensors.push_back(tensor_data::copy_of("empty", element_type::f32, std::vector<float>{}));
  cp.tensors[0].shape = {3, 1};
  // One small tensor of every element type, so each enum value round-trips.
  constexpr int first_extra = 4;
  size_t extra_bytes = 0;
  for (int et = 0; et <= static_cast<int>(element_type::bf16); ++et) {
    auto type = static_cast<element_type>(et);
    std::vector<uint8_t> bytes(element_size(type) * 3, static_cast<uint8_t>(et));
    cp.tensors.push_back(tensor_data::copy_of("t-" + to_string(type), type, bytes));
    cp.tensors.back().shape = {3};
    extra_bytes += bytes.size();
  }
  commit_all(*st, {cp});

  auto err = st->read(cp.path, 42, [&](const record_view& rec) -> caf::error {
    auto& info = rec.info();
    CHECK(info.path == cp.path);
    CHECK(info.step == 42);
    CHECK(info.schema_id == cp.schema_id);
    CHECK(info.schema_version == 3);
    CHECK(info.incarnation == 7);
    CHECK(info.problem.empty());
    CHECK(info.payload_size == cp.payload.size() * 8);
    REQUIRE(info.tensors.size() == first_extra + 10);
    for (int et = 0; et <= static_cast<int>(element_type::bf16); ++et) {
      auto& t = info.tensors[first_extra + et];
      CHECK(t.type == static_cast<element_type>(et));
      CHECK(t.name == "t-" + to_string(t.type));
      CHECK(t.size == 3 * element_size(t.type));
      std::vector<uint8_t> back(t.size);
      CHECK_FALSE(rec.copy_tensor(first_extra + et, back.data(), back.size()));
      CHECK(back == std::vector<uint8_t>(t.size, static_cast<uint8_t>(et)));
    }
    CHECK(info.tensors[0].shape == std::vector<uint64_t>{3, 1});
    CHECK(info.tensors[0].type == element_type::f64);
    CHECK(info.tensors[2].chunks == 4);
    CHECK(info.tensor_size == 3 * 8 + 3 * 8 + u8.size() + extra_bytes);
    capnp::FlatArrayMessageReader msg{kj::arrayPtr(
        reinterpret_cast<const capnp::word*>(rec.payload_words()), rec.payload_word_count())};
    auto root = msg.getRoot<schema::TensorState>();
    CHECK(root.getStep() == 42);
    CHECK(std::string{root.getNote().cStr()} == "adam");
    REQUIRE(root.getScalars().size() == 2);
    CHECK(std::string{root.getScalars()[1].getName().cStr()} == "beta1");
    CHECK(root.getScalars()[1].getValue() == 0.9);
    std::vector<double> f64_out(3);
    std::vector<int64_t> i64_out(3);
    std::vector<uint8_t> u8_out(u8.size());
    CHECK_FALSE(rec.copy_tensor(0, f64_out.data(), 24));
    CHECK_FALSE(rec.copy_tensor(1, i64_out.data(), 24));
    CHECK_FALSE(rec.copy_tensor(2, u8_out.data(), u8_out.size()));
    CHECK_FALSE(rec.copy_tensor(3, nullptr, 0));
    CHECK(f64_out == f64);
    CHECK(i64_out == i64);
    CHECK(u8_out == u8);
    // A target of the wrong size is refused rather than overrun.
    CHECK(is(rec.copy_tensor(0, f64_out.data(), 16), state_errc::schema_mismatch));
    CHECK_FALSE(rec.verify_tensors());
    return {};
  });
  CHECK_FALSE(err);
}

TEST_CASE("a tensor larger than 64 MiB is stored in chunks and read back zero-copy",
          "[state][store]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  cfg.chunk_size = size_t{8} << 20;
  cfg.initial_map_size = size_t{256} << 20;
  auto st = open_store(cfg);
  constexpr size_t n = (size_t{72} << 20) / sizeof(float); // 72 MiB
  commit_all(*st, {make_checkpoint("/big", 1, n, 0.5f)});
  auto err = st->read("/big", 1, [&](const record_view& rec) -> caf::error {
    REQUIRE(rec.info().tensors.size() == 1);
    CHECK(rec.info().tensors[0].size == n * sizeof(float));
    CHECK(rec.info().tensors[0].chunks == 9);
    auto chunks = rec.tensor_chunks(0);
    REQUIRE(chunks);
    REQUIRE(chunks->size() == 9);
    size_t i = 0;
    size_t mismatches = 0;
    for (auto& c : *chunks) {
      // Zero-copy: the chunks point into the map and are float-aligned there.
      CHECK(reinterpret_cast<uintptr_t>(c.data) % alignof(float) == 0);
      auto* f = reinterpret_cast<const float*>(c.data);
      for (size_t k = 0; k < c.size / sizeof(float); ++k, ++i)
        if (f[k] != test::w_value(0.5f, i))
          ++mismatches;
    }
    CHECK(i == n);
    CHECK(mismatches == 0);
    return {};
  });
  CHECK_FALSE(err);
}

TEST_CASE("a read-only open shares the store this process has open, and opens its own otherwise",
          "[state][store]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  auto writer = open_store(cfg);
  commit_all(*writer, {make_checkpoint("/a", 1, 4)});
  auto ro_cfg = cfg;
  ro_cfg.read_only = true;
  ro_cfg.directory = dir.path + "/."; // the same directory, spelled otherwise
  auto shared = open_store(ro_cfg);
  CHECK(shared.get() == writer.get());
  shared.reset();
  writer.reset();
  auto own = open_store(ro_cfg);
  CHECK(own->config().read_only);
  CHECK_FALSE(own->verify("/a", 1));
  checkpoint cp = make_checkpoint("/a", 2, 4);
  std::vector<caf::error> results;
  CHECK(is(own->commit({&cp}, results), state_errc::read_only));
}

TEST_CASE("retention keeps the newest N versions and every K-th", "[state][store]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  cfg.retention.keep_last = 2;
  cfg.retention.keep_every = 10;
  auto st = open_store(cfg);
  for (uint64_t s = 1; s <= 25; ++s)
    commit_all(*st, {make_checkpoint("/a", s, 4), make_checkpoint("/b", s * 2, 4)});
  CHECK(steps_of(*st, "/a") == std::vector<uint64_t>{10, 20, 24, 25});
  CHECK(steps_of(*st, "/b") == std::vector<uint64_t>{10, 20, 30, 40, 48, 50});
  CHECK(st->stats().versions_deleted == 21 + 19);
  // Deleted versions take their chunks with them.
  CHECK(is(st->read("/a", 23, [](const record_view&) { return caf::error{}; }),
           state_errc::not_found));
  auto paths = st->paths();
  REQUIRE(paths);
  CHECK(*paths == std::vector<std::string>{"/a", "/b"});
}

TEST_CASE("writing an older step supersedes the newer versions of that path", "[state][store]") {
  temp_state_dir dir;
  auto st = open_store(test_store_config(dir.path));
  for (uint64_t s : {10, 20, 30})
    commit_all(*st, {make_checkpoint("/a", s, 8, static_cast<float>(s))});
  // The job rolled back to step 20 and goes on from there: 30 is from an
  // abandoned timeline and must not be restored after the next crash.
  commit_all(*st, {make_checkpoint("/a", 21, 8, 21.0f)});
  CHECK(steps_of(*st, "/a") == std::vector<uint64_t>{10, 20, 21});
  // Rewriting a step replaces it.
  commit_all(*st, {make_checkpoint("/a", 21, 4, 99.0f)});
  auto w = read_w(*st, "/a", 21);
  REQUIRE(w);
  CHECK(*w == std::vector<float>{99, 100, 101, 102});
}

TEST_CASE("a flipped byte in the newest version's tensor makes restore fall back to the previous",
          "[state][store][corruption]") {
  temp_state_dir dir;
  {
    auto st = open_store(test_store_config(dir.path));
    for (uint64_t s = 1; s <= 3; ++s)
      commit_all(*st, {make_checkpoint("/job/w", s, 600000, static_cast<float>(s))});
  }
  test::flip_byte_in_chunk(dir.path, "/job/w", 3, 0, 1, 12345);
  auto st = open_store(test_store_config(dir.path));
  auto err = st->verify("/job/w", 3);
  CHECK(is(err, state_errc::corrupt_record));
  CHECK(describe(err).find("/job/w@3 tensor w chunk 1") != std::string::npos);
  CHECK_FALSE(st->verify("/job/w", 2));
  std::vector<float> loaded;
  auto report = st->restore_newest("/job/w", [&](const record_view& rec) -> caf::error {
    std::vector<float> tmp(rec.info().tensors[0].size / sizeof(float));
    if (auto err = rec.copy_tensor(0, tmp.data(), tmp.size() * sizeof(float)))
      return err;
    loaded = std::move(tmp);
    return {};
  });
  REQUIRE(report);
  REQUIRE(report->step);
  CHECK(*report->step == 2);
  REQUIRE(report->skipped.size() == 1);
  CHECK(report->skipped[0].first == 3);
  CHECK(is(report->skipped[0].second, state_errc::corrupt_record));
  REQUIRE(loaded.size() == 600000);
  CHECK(loaded[0] == 2.0f);
  CHECK(loaded.back() == test::w_value(2.0f, 599999));
}

TEST_CASE("a flipped byte in a record's header or payload is detected",
          "[state][store][corruption]") {
  temp_state_dir dir;
  std::vector<uint64_t> payload;
  {
    auto st = open_store(test_store_config(dir.path));
    commit_all(*st, {make_checkpoint("/r", 1, 4), make_checkpoint("/r", 2, 4)});
  }
  // Every byte of the record's value is covered: try a spread of offsets.
  for (size_t offset : {size_t{0}, size_t{9}, size_t{40}, size_t{77}, size_t{130}}) {
    test::flip_byte_in_record(dir.path, "/r", 2, offset);
    auto st = open_store(test_store_config(dir.path));
    auto err = st->read("/r", 2, [](const record_view&) { return caf::error{}; });
    INFO("offset " << offset << ": " << describe(err));
    CHECK(is(err, state_errc::corrupt_record));
    CHECK_FALSE(st->read("/r", 1, [](const record_view&) { return caf::error{}; }));
    st.reset();
    test::flip_byte_in_record(dir.path, "/r", 2, offset); // flip back
  }
  auto st = open_store(test_store_config(dir.path));
  CHECK_FALSE(st->verify("/r", 2));
}

TEST_CASE("a missing chunk is reported as truncated, and no version at all is a fresh start",
          "[state][store][corruption]") {
  temp_state_dir dir;
  {
    auto st = open_store(test_store_config(dir.path));
    commit_all(*st, {make_checkpoint("/t", 5, 300000)});
  }
  test::delete_chunk(dir.path, "/t", 5, 0, 1);
  auto st = open_store(test_store_config(dir.path));
  CHECK(is(st->verify("/t", 5), state_errc::truncated_chunk));
  auto report =
      st->restore_newest("/t", [](const record_view& rec) { return rec.verify_tensors(); });
  REQUIRE(report);
  CHECK_FALSE(report->step);
  REQUIRE(report->skipped.size() == 1);
  CHECK(is(report->skipped[0].second, state_errc::truncated_chunk));
  auto none = st->restore_newest("/never-written", [](const record_view&) { return caf::error{}; });
  REQUIRE(none);
  CHECK_FALSE(none->step);
  CHECK(none->skipped.empty());
}

TEST_CASE("MDB_MAP_FULL is survived by growing the map", "[state][store]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  cfg.initial_map_size = size_t{1} << 20;
  cfg.retention.keep_last = 8;
  auto st = open_store(cfg);
  auto initial = st->map_size();
  for (uint64_t s = 1; s <= 8; ++s)
    commit_all(*st, {make_checkpoint("/grow", s, (size_t{2} << 20) / 4, static_cast<float>(s))});
  CHECK(st->stats().map_growths >= 4);
  CHECK(st->map_size() >= 16 * initial);
  for (uint64_t s = 1; s <= 8; ++s) {
    auto w = read_w(*st, "/grow", s);
    REQUIRE(w);
    CHECK((*w)[0] == static_cast<float>(s));
  }
}

TEST_CASE("a full map at max_map_size fails the commit and keeps what was committed",
          "[state][store]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  cfg.initial_map_size = size_t{1} << 20;
  cfg.max_map_size = size_t{4} << 20;
  auto st = open_store(cfg);
  commit_all(*st, {make_checkpoint("/m", 1, 1000, 1.0f)});
  auto big = make_checkpoint("/m", 2, (size_t{8} << 20) / 4);
  std::vector<caf::error> results;
  auto err = st->commit({&big}, results);
  CHECK(is(err, state_errc::map_size_limit));
  CHECK(describe(err).find("max_map_size") != std::string::npos);
  CHECK(steps_of(*st, "/m") == std::vector<uint64_t>{1});
  auto w = read_w(*st, "/m", 1);
  REQUIRE(w);
  CHECK((*w)[999] == 1000.0f);
}

TEST_CASE("one writer per state directory, and read-only opens cannot write", "[state][store]") {
  temp_state_dir dir;
  auto st = open_store(test_store_config(dir.path));
  commit_all(*st, {make_checkpoint("/x", 1, 4)});
  auto second = state_store::open(test_store_config(dir.path));
  REQUIRE_FALSE(second);
  CHECK(is(second.error(), state_errc::locked));
  CHECK(describe(second.error()).find(dir.path) != std::string::npos);
  st.reset();
  // (A read-only open next to a live writer is for other processes, as
  // `understudy inspect`: LMDB forbids two environments on one file per process.)
  auto ro_cfg = test_store_config(dir.path);
  ro_cfg.read_only = true;
  auto ro = state_store::open(ro_cfg);
  REQUIRE(ro);
  auto w = read_w(**ro, "/x", 1);
  REQUIRE(w);
  CHECK(w->size() == 4);
  std::vector<caf::error> results;
  auto cp = make_checkpoint("/x", 2, 4);
  CHECK(is((*ro)->commit({&cp}, results), state_errc::read_only));
  ro->reset();
  // Once the writer is gone the directory can be opened for writing again.
  auto again = state_store::open(test_store_config(dir.path));
  CHECK(again);
}

TEST_CASE("bad configuration, paths and payloads are refused with a clear error",
          "[state][store][errors]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  cfg.chunk_size = 1000;
  auto bad = state_store::open(cfg);
  REQUIRE_FALSE(bad);
  CHECK(is(bad.error(), state_errc::invalid_config));
  CHECK(describe(bad.error()).find("chunk_size") != std::string::npos);
  cfg = test_store_config(dir.path);
  cfg.retention.keep_last = 0;
  CHECK(is(state_store::open(cfg).error(), state_errc::invalid_config));

  cfg = test_store_config(dir.path);
  cfg.max_payload = 512;
  auto st = open_store(cfg);
  auto good = make_checkpoint("/ok", 1, 4);
  auto nul = make_checkpoint(std::string{"/bad\0path", 9}, 1, 4);
  auto empty = make_checkpoint("", 1, 4);
  auto fat = make_checkpoint("/fat", 1, 4);
  fat.payload.resize(100);
  std::vector<caf::error> results;
  REQUIRE_FALSE(st->commit({&good, &nul, &empty, &fat}, results));
  REQUIRE(results.size() == 4);
  CHECK_FALSE(results[0]);
  CHECK(is(results[1], state_errc::invalid_path));
  CHECK(is(results[2], state_errc::invalid_path));
  CHECK(is(results[3], state_errc::payload_too_large));
  auto paths = st->paths();
  REQUIRE(paths);
  CHECK(*paths == std::vector<std::string>{"/ok"});
}

TEST_CASE("a directory whose data.mdb is not LMDB is reported, not overwritten",
          "[state][store][errors]") {
  temp_state_dir dir;
  {
    std::ofstream out{dir.path + "/data.mdb", std::ios::binary};
    out << std::string(8192, 'x');
  }
  auto st = state_store::open(test_store_config(dir.path));
  REQUIRE_FALSE(st);
  CHECK(is(st.error(), state_errc::corrupt_record));
  CHECK(describe(st.error()).find("data.mdb") != std::string::npos);
  std::ifstream in{dir.path + "/data.mdb", std::ios::binary};
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(content == std::string(8192, 'x'));
}

TEST_CASE(
    "a replica from an older epoch of its sender is refused naming both epochs, also after "
    "a restart",
    "[state][store][replication]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  auto v5 = make_checkpoint("/job/shard-0", 5, 100, 1.0f);
  auto v6 = make_checkpoint("/job/shard-0", 6, 100, 2.0f);
  std::vector<caf::error> results;
  {
    auto st = open_store(cfg);
    CHECK(*st->replica_epoch("n2") == 0);
    REQUIRE_FALSE(st->commit({&v5}, results, {true}, {{"n2", 7}}));
    REQUIRE_FALSE(results[0]);
    CHECK(*st->replica_epoch("n2") == 7);
    REQUIRE_FALSE(st->commit({&v6}, results, {true}, {{"n2", 6}}));
    REQUIRE(results[0]);
    CHECK(is(results[0], state_errc::stale_epoch));
    CHECK_THAT(describe(results[0]), Catch::Contains("/job/shard-0@6") &&
                                         Catch::Contains("node n2") &&
                                         Catch::Contains("epoch 6, lower than epoch 7"));
    // Nothing was written and the recorded epoch stays.
    auto versions = st->versions("/job/shard-0");
    REQUIRE(versions);
    REQUIRE(versions->size() == 1);
    CHECK(versions->at(0).step == 5);
    CHECK(*st->replica_epoch("n2") == 7);
    // Each sender has its own epoch; a local put has none.
    REQUIRE_FALSE(st->commit({&v6}, results, {true}, {{"n3", 1}}));
    CHECK_FALSE(results[0]);
    CHECK(*st->replica_epoch("n3") == 1);
  }
  auto st = open_store(cfg);
  CHECK(*st->replica_epoch("n2") == 7);
  auto v7 = make_checkpoint("/job/shard-0", 7, 100, 3.0f);
  REQUIRE_FALSE(st->commit({&v7}, results, {true}, {{"n2", 6}}));
  CHECK(is(results[0], state_errc::stale_epoch));
  CHECK(st->versions("/job/shard-0")->size() == 2);
  // The same epoch and a higher one are taken; the higher one is recorded.
  REQUIRE_FALSE(st->commit({&v7}, results, {true}, {{"n2", 9}}));
  CHECK_FALSE(results[0]);
  CHECK(*st->replica_epoch("n2") == 9);
}

TEST_CASE("newest_intact skips a version with a flipped chunk byte that the header check misses",
          "[state][store][corruption]") {
  temp_state_dir dir;
  auto cfg = test_store_config(dir.path);
  {
    auto st = open_store(cfg);
    commit_all(*st, {make_checkpoint("/job/w", 2, 1000), make_checkpoint("/job/w", 3, 1000)});
    CHECK(*st->newest_intact("/job/w") == 3);
    CHECK(*st->newest_intact("/job/w", 2) == 2);
    CHECK(*st->newest_intact("/job/none") == 0);
  }
  test::flip_byte_in_chunk(dir.path, "/job/w", 3, 0, 0, 17);
  auto st = open_store(cfg);
  // The header still reads; the chunk does not verify.
  auto versions = st->versions("/job/w");
  REQUIRE(versions);
  CHECK(versions->back().step == 3);
  CHECK(versions->back().problem.empty());
  CHECK(*st->newest_intact("/job/w") == 2);
}
