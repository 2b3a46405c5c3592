// Portable snapshots (understudy/state/snapshot.hpp) of a store's records:
// written, listed, verified, read back, pruned; damaged files are found.

#include "understudy/state/snapshot.hpp"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support/state_test_util.hpp"
#include "support/temp_dir.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/state_writer.hpp"

using namespace understudy;
namespace fs = std::filesystem;

namespace {

/// A checkpoint of `path` at `step` with tensor "w" of `n` floats of `fill`
/// and tensor "frozen" of 1000 floats that never change.
std::shared_ptr<checkpoint> record(const std::string& path, uint64_t step, float fill,
                                   size_t n = 256) {
  auto cp = std::make_shared<checkpoint>();
  cp->path = path;
  cp->step = step;
  cp->schema_id = 0xabcdef;
  cp->schema_version = 2;
  cp->incarnation = 1;
  cp->payload = test::tensor_state_payload(step);
  cp->tensors.push_back(tensor_data::copy_of("w", element_type::f32, std::vector<float>(n, fill)));
  cp->tensors.push_back(
      tensor_data::copy_of("frozen", element_type::f32, std::vector<float>(1000, 0.5f)));
  return cp;
}

struct fixture {
  test::temp_dir dir{"snapshot"};
  std::shared_ptr<state_store> store;
  std::string snaps;

  fixture() {
    state_store_config sc;
    sc.directory = dir.path + "/store";
    sc.retention.keep_last = 10;
    auto s = state_store::open(sc);
    REQUIRE(s);
    store = *s;
    snaps = dir.path + "/snaps";
  }

  void put(uint64_t step, float fill) {
    auto a = record("/job/a", step, fill);
    auto b = record("/job/b", step, -1.0f);
    std::vector<caf::error> results;
    REQUIRE_FALSE(store->commit({a.get(), b.get()}, results));
  }

  snapshot_info snap(uint64_t step) {
    auto info = write_snapshot(*store, snaps, "/job", "f00d", step, {"/job/a", "/job/b"});
    INFO((info ? std::string{} : describe(info.error())));
    REQUIRE(info);
    return *info;
  }

  /// The object files of snapshot `name`'s tensor "w" of record `path`.
  std::string w_object(const std::string& name, const std::string& path) {
    std::ifstream in{snaps + "/manifests/" + name + ".json"};
    auto top = nlohmann::json::parse(in);
    for (auto& r : top["manifest"]["records"])
      if (r["path"] == path)
        for (auto& t : r["tensors"])
          if (t["name"] == "w") {
            auto id = t["chunks"][0]["object"].get<std::string>();
            return snaps + "/objects/" + id.substr(0, 2) + "/" + id;
          }
    FAIL("no tensor w of " << path);
    return {};
  }
};

void flip_first_byte(const std::string& file) {
  std::fstream f{file, std::ios::in | std::ios::out | std::ios::binary};
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(0);
  f.write(&c, 1);
}

} // namespace

TEST_CASE("a snapshot reads back bit for bit, and a later one stores only the chunks that changed",
          "[state][snapshot]") {
  fixture f;
  f.put(10, 1.0f);
  f.put(20, 2.0f);
  auto first = f.snap(10);
  CHECK(first.name == "step-10");
  CHECK(first.records == 2);
  CHECK(first.new_bytes == first.bytes);
  // Step 20 changes only /job/a's "w" (and both payloads): "frozen" and
  // /job/b's "w" are shared with step 10.
  auto second = f.snap(20);
  CHECK(second.bytes == first.bytes);
  CHECK(second.new_bytes < second.bytes / 2);
  CHECK(second.new_bytes >= 256 * 4);
  auto all = list_snapshots(f.snaps);
  REQUIRE(all);
  REQUIRE(all->size() == 2);
  CHECK((*all)[1].new_bytes == second.new_bytes);
  // Writing the same snapshot again changes nothing.
  CHECK(f.snap(20).bytes == second.bytes);
  auto back = read_snapshot(f.snaps, "step-10");
  REQUIRE(back);
  REQUIRE(back->records.size() == 2);
  const auto& a = *back->records[0];
  CHECK(a.path == "/job/a");
  CHECK(a.step == 10);
  CHECK(a.schema_id == 0xabcdef);
  CHECK(a.schema_version == 2);
  CHECK(a.payload == test::tensor_state_payload(10));
  REQUIRE(a.tensors.size() == 2);
  CHECK(a.tensors[0].name == "w");
  CHECK(a.tensors[0].shape == std::vector<uint64_t>{256});
  std::vector<float> w(256);
  std::memcpy(w.data(), a.tensors[0].data, a.tensors[0].size);
  CHECK(w == std::vector<float>(256, 1.0f));
  // The newest by default.
  auto newest = read_snapshot(f.snaps);
  REQUIRE(newest);
  CHECK(newest->info.step == 20);
  auto problems = verify_snapshots(f.snaps);
  REQUIRE(problems);
  CHECK(problems->empty());
}

TEST_CASE("a damaged snapshot file is named by verify and refused by read", "[state][snapshot]") {
  fixture f;
  f.put(10, 1.0f);
  f.put(20, 2.0f);
  f.snap(10);
  f.snap(20);
  SECTION("a flipped byte in a chunk") {
    auto file = f.w_object("step-20", "/job/a");
    flip_first_byte(file);
    auto problems = verify_snapshots(f.snaps);
    REQUIRE(problems);
    REQUIRE(problems->size() == 1);
    CHECK_THAT(problems->front(), Catch::Contains("step-20: chunk 0 of tensor 'w' of /job/a@20") &&
                                      Catch::Contains(file) &&
                                      Catch::Contains("does not match its checksum"));
    auto back = read_snapshot(f.snaps, "step-20");
    REQUIRE_FALSE(back);
    CHECK(is(back.error(), state_errc::corrupt_record));
    // The other snapshot does not use that chunk and still reads.
    CHECK(read_snapshot(f.snaps, "step-10"));
  }
  SECTION("a truncated chunk") {
    auto file = f.w_object("step-20", "/job/a");
    fs::resize_file(file, 100);
    auto back = read_snapshot(f.snaps, "step-20");
    REQUIRE_FALSE(back);
    CHECK_THAT(describe(back.error()), Catch::Contains("holds 100 bytes, not 1024"));
  }
  SECTION("a missing chunk") {
    fs::remove(f.w_object("step-20", "/job/a"));
    auto problems = verify_snapshots(f.snaps, "step-20");
    REQUIRE(problems);
    REQUIRE(problems->size() == 1);
    CHECK_THAT(problems->front(), Catch::Contains("is missing"));
  }
  SECTION("an edited manifest") {
    auto file = f.snaps + "/manifests/step-10.json";
    std::ifstream in{file};
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    auto at = text.find("\"step\": 10");
    REQUIRE(at != std::string::npos);
    text.replace(at, 10, "\"step\": 11");
    std::ofstream{file} << text;
    auto all = list_snapshots(f.snaps);
    REQUIRE_FALSE(all);
    CHECK_THAT(describe(all.error()), Catch::Contains("does not match its checksum"));
  }
}

TEST_CASE(
    "snapshots of another job do not join a directory, and prune keeps the last and every "
    "k-th",
    "[state][snapshot]") {
  fixture f;
  for (uint64_t s = 10; s <= 50; s += 10) {
    f.put(s, static_cast<float>(s));
    f.snap(s);
  }
  auto other = write_snapshot(*f.store, f.snaps, "/job", "beef", 50, {"/job/a"});
  REQUIRE_FALSE(other);
  CHECK_THAT(describe(other.error()), Catch::Contains("holds snapshots of another job"));
  auto pruned = prune_snapshots(f.snaps, 2, 20);
  REQUIRE(pruned);
  CHECK(pruned->removed == std::vector<std::string>{"step-10", "step-30"});
  // Each one's payload and /job/a's "w" went (/job/b's payload is the same
  // bytes as /job/a's); "frozen" and /job/b's "w", shared, stay.
  CHECK(pruned->objects_removed == 2 * 2);
  auto left = list_snapshots(f.snaps);
  REQUIRE(left);
  REQUIRE(left->size() == 3);
  CHECK((*left)[0].step == 20);
  CHECK((*left)[1].step == 40);
  CHECK((*left)[2].step == 50);
  auto problems = verify_snapshots(f.snaps);
  REQUIRE(problems);
  CHECK(problems->empty());
  CHECK_FALSE(prune_snapshots(f.snaps, 0));
}
