// `understudy inspect`: runs the built program against stores written here and
// checks its listing, its verdicts and its exit codes.

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/cli_test_util.hpp"
#include "support/state_test_util.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/state/state_store.hpp"

namespace {

using namespace understudy;
using namespace cli_test;

state_store_config store_config(const std::string& dir) {
  state_store_config cfg;
  cfg.directory = dir;
  cfg.mode = durability::none;
  cfg.initial_map_size = size_t{16} << 20;
  cfg.chunk_size = 4096;
  return cfg;
}

std::shared_ptr<state_store> open_store(const std::string& dir) {
  auto st = state_store::open(store_config(dir));
  if (!st)
    FAIL("cannot open store in " << dir << ": " << describe(st.error()));
  return *st;
}

/// A checkpoint with a TensorState payload and, when `floats` > 0, one f32
/// tensor "w" of that many values (3000 floats: three 4 KiB chunks).
checkpoint make_checkpoint(const std::string& path, uint64_t step, size_t floats) {
  checkpoint cp;
  cp.path = path;
  cp.step = step;
  cp.schema_id = capnp::typeId<schema::TensorState>();
  cp.schema_version = 2;
  cp.incarnation = 1;
  cp.payload = test::tensor_state_payload(step);
  if (floats > 0) {
    std::vector<float> w(floats);
    std::iota(w.begin(), w.end(), static_cast<float>(step));
    cp.tensors.push_back(tensor_data::copy_of("w", element_type::f32, w));
  }
  return cp;
}

void commit_all(state_store& st, const std::vector<checkpoint>& cps) {
  std::vector<const checkpoint*> batch;
  for (auto& cp : cps)
    batch.push_back(&cp);
  std::vector<caf::error> results;
  auto err = st.commit(batch, results);
  REQUIRE_FALSE(err);
  for (auto& r : results)
    REQUIRE_FALSE(r);
}

/// Writes three versions of a shard (with tensors) and one of a loader (no
/// tensors) into `dir` and closes the store.
void write_sample_store(const std::string& dir) {
  auto st = open_store(dir);
  for (uint64_t step = 1; step <= 3; ++step)
    commit_all(*st, {make_checkpoint("/job/shard-0", step, 3000),
                     make_checkpoint("/job/loader", step == 3 ? 3 : 0, 0)});
}

size_t count_lines(const std::string& text, const std::string& needle) {
  size_t n = 0;
  std::istringstream in{text};
  for (std::string line; std::getline(in, line);)
    if (line.find(needle) != std::string::npos)
      ++n;
  return n;
}

/// The whitespace-separated cells of the table row of `path`@`step`, or none.
std::vector<std::string> find_row(const std::string& text, const std::string& path,
                                  const std::string& step) {
  std::istringstream in{text};
  for (std::string line; std::getline(in, line);) {
    std::istringstream cells{line};
    std::vector<std::string> row;
    for (std::string cell; cells >> cell;)
      row.push_back(cell);
    if (row.size() >= 2 && row[0] == path && row[1] == step)
      return row;
  }
  return {};
}

} // namespace

TEST_CASE("inspect lists every version and exits 0 when all verify", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  CHECK(run.out.find("PATH") != std::string::npos);
  CHECK(run.out.find("STATUS") != std::string::npos);
  // The shard has steps 1-3; the loader wrote step 0 twice (a rewrite replaces
  // the version) and step 3.
  CHECK(count_lines(run.out, "/job/shard-0") == 3);
  CHECK(count_lines(run.out, "/job/loader") == 2);
  for (auto step : {"1", "2", "3"}) {
    auto row = find_row(run.out, "/job/shard-0", step);
    REQUIRE(row.size() == 9);
    CHECK(row[2] == "2");            // schema version
    CHECK(row[3] + row[4] == "96B"); // payload
    CHECK(row[5] == "11.7");         // tensors: 3000 f32 values
    CHECK(row[8] == "ok");
  }
  for (auto step : {"0", "3"}) {
    auto row = find_row(run.out, "/job/loader", step);
    REQUIRE(row.size() == 9);
    CHECK(row[5] + row[6] == "0B"); // no tensors
    CHECK(row[8] == "ok");
  }
  CHECK(count_lines(run.out, "  ok") == 5);
  CHECK(run.out.find("2 paths, 5 versions") != std::string::npos);
  CHECK(run.out.find(", 0 corrupt") != std::string::npos);
}

TEST_CASE("inspect --json prints one object per version and a summary", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  auto run = run_cli({"inspect", dir.path, "--json"}, scratch.path);
  CHECK(run.status == 0);
  CHECK(count_lines(run.out, "{\"type\":\"version\",") == 5);
  CHECK(count_lines(run.out, "{\"type\":\"summary\",") == 1);
  CHECK(count_lines(run.out, "\"path\":\"/job/shard-0\",\"step\":2,") == 1);
  CHECK(count_lines(run.out, "\"tensor_bytes\":12000,") == 3);
  CHECK(count_lines(run.out, "\"schema_version\":2,") == 5);
  CHECK(count_lines(run.out, "\"status\":\"ok\"}") == 5);
  CHECK(run.out.find("\"paths\":2,\"versions\":5,") != std::string::npos);
  CHECK(run.out.find("\"corrupt\":0,") != std::string::npos);
  // Every line is one object.
  std::istringstream in{run.out};
  for (std::string line; std::getline(in, line);) {
    CHECK(line.front() == '{');
    CHECK(line.back() == '}');
  }
}

TEST_CASE("inspect --path lists only the paths with that prefix", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  auto run = run_cli({"inspect", "--path", "/job/load", dir.path}, scratch.path);
  CHECK(run.status == 0);
  CHECK(count_lines(run.out, "/job/loader") == 2);
  CHECK(count_lines(run.out, "/job/shard-0") == 0);
  CHECK(run.out.find("1 path, 2 versions") != std::string::npos);
}

TEST_CASE("inspect names a corrupt chunk and exits 1", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  test::flip_byte_in_chunk(dir.path, "/job/shard-0", 2, 0, 1, 100);
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 1);
  CHECK(run.err ==
        "corrupt: /job/shard-0@2: corrupt_record: tensor w chunk 1: checksum mismatch\n");
  CHECK(count_lines(run.out, "corrupt: corrupt_record: tensor w chunk 1") == 1);
  CHECK(count_lines(run.out, "  ok") == 4);
  CHECK(run.out.find("2 paths, 5 versions") != std::string::npos);
  CHECK(run.out.find(", 1 corrupt") != std::string::npos);

  auto json = run_cli({"inspect", dir.path, "--json"}, scratch.path);
  CHECK(json.status == 1);
  CHECK(count_lines(json.out, "\"step\":2,") == 1);
  CHECK(json.out.find("\"status\":\"corrupt\",\"error\":\"corrupt_record: tensor w chunk 1: "
                      "checksum mismatch\"}") != std::string::npos);
  CHECK(json.out.find("\"corrupt\":1,") != std::string::npos);
}

TEST_CASE("inspect names a record with a corrupt payload and exits 1", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  // The payload is the last part of the record.
  auto size = test::record_size(dir.path, "/job/loader", 3);
  test::flip_byte_in_record(dir.path, "/job/loader", 3, size - 12);
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 1);
  CHECK(run.err == "corrupt: /job/loader@3: corrupt_record: checksum mismatch\n");
  // Its header failed its checksum: sizes and age are unknown.
  auto row = find_row(run.out, "/job/loader", "3");
  REQUIRE(row.size() > 7);
  CHECK(row[2] + row[3] + row[4] + row[5] == "----");
  CHECK(row[6] == "corrupt:");
  CHECK(find_row(run.out, "/job/loader", "0").back() == "ok");
  CHECK(run.out.find(", 1 corrupt") != std::string::npos);
}

TEST_CASE("inspect reports every corrupt record, not just the first", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  test::flip_byte_in_chunk(dir.path, "/job/shard-0", 1, 0, 0, 0);
  test::flip_byte_in_chunk(dir.path, "/job/shard-0", 3, 0, 2, 192);
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 1);
  CHECK(run.err.find("corrupt: /job/shard-0@1: corrupt_record: tensor w chunk 0") !=
        std::string::npos);
  CHECK(run.err.find("corrupt: /job/shard-0@3: corrupt_record: tensor w chunk 2") !=
        std::string::npos);
  CHECK(count_lines(run.err, "corrupt:") == 2);
  CHECK(run.out.find(", 2 corrupt") != std::string::npos);
}

TEST_CASE("inspect reads a store while a writer holds it open", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  auto st = open_store(dir.path);
  commit_all(*st, {make_checkpoint("/job/shard-1", 7, 3000)});
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 0);
  CHECK(count_lines(run.out, "/job/shard-1") == 1);
  commit_all(*st, {make_checkpoint("/job/shard-1", 8, 3000)});
  run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 0);
  CHECK(count_lines(run.out, "/job/shard-1") == 2);
  CHECK(run.out.find("1 path, 2 versions") != std::string::npos);
}

TEST_CASE("inspect of an empty store lists nothing and exits 0", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  open_store(dir.path).reset();
  auto run = run_cli({"inspect", dir.path}, scratch.path);
  CHECK(run.status == 0);
  CHECK(run.out == "0 paths, 0 versions, 0 B, 0 corrupt\n");
  CHECK(run.err.empty());
}

TEST_CASE("inspect exits 2 naming a directory it cannot open", "[cli]") {
  scratch_dir scratch;
  SECTION("the directory does not exist") {
    auto missing = scratch.path + "/no-such-state";
    auto run = run_cli({"inspect", missing}, scratch.path);
    CHECK(run.status == 2);
    CHECK(run.out.empty());
    CHECK(run.err.find("'" + missing + "'") != std::string::npos);
  }
  SECTION("the directory holds no store") {
    auto empty = scratch.path + "/empty";
    std::filesystem::create_directory(empty);
    auto run = run_cli({"inspect", empty}, scratch.path);
    CHECK(run.status == 2);
    CHECK(run.err.find("'" + empty + "'") != std::string::npos);
    CHECK(run.err.find("data.mdb") != std::string::npos);
    // A read-only inspection creates nothing.
    CHECK_FALSE(std::filesystem::exists(empty + "/data.mdb"));
  }
}

TEST_CASE("the understudy command exits 2 on usage errors and 0 for help", "[cli]") {
  scratch_dir scratch;
  CHECK(run_cli({}, scratch.path).status == 2);
  CHECK(run_cli({"inspect"}, scratch.path).status == 2);
  CHECK(run_cli({"inspect", scratch.path, "--no-such-flag"}, scratch.path).status == 2);
  CHECK(run_cli({"frobnicate"}, scratch.path).status == 2);
  auto help = run_cli({"inspect", "--help"}, scratch.path);
  CHECK(help.status == 0);
  CHECK(help.out.find("--json") != std::string::npos);
  CHECK(run_cli({"--version"}, scratch.path).status == 0);
}

TEST_CASE("inspect exits 2 on a truncated data.mdb instead of faulting", "[cli]") {
  scratch_dir dir;
  scratch_dir scratch;
  write_sample_store(dir.path);
  auto data = dir.path + "/data.mdb";
  SECTION("cut after the meta pages") {
    // The meta pages survive, the pages they point to do not: LMDB would read
    // them through its map and die of SIGBUS.
    std::filesystem::resize_file(data, 3 * 4096);
    auto run = run_cli({"inspect", dir.path}, scratch.path);
    CHECK(run.status == 2);
    CHECK(run.out.empty());
    CHECK(run.err.find("'" + dir.path + "'") != std::string::npos);
    CHECK(run.err.find("data.mdb is truncated: it has 12288 bytes") != std::string::npos);
  }
  SECTION("cut inside the meta pages") {
    std::filesystem::resize_file(data, 100);
    auto run = run_cli({"inspect", dir.path}, scratch.path);
    CHECK(run.status == 2);
    CHECK(run.err.find("data.mdb") != std::string::npos);
  }
}
