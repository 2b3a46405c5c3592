// Dependencies point down only: every `#include "understudy/<unit>/..."` in the
// runtime's mechanisms, the training component and the gpu component must name a
// unit that the including file's unit may depend on (DESIGN.md, "Layout").

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> runtime_units{"core", "supervision", "state",   "process", "config",
                                             "http", "metrics",     "cluster", "node"};

/// What each unit may include besides itself.
std::map<std::string, std::set<std::string>> allowed_units() {
  std::set<std::string> runtime_all(runtime_units.begin(), runtime_units.end());
  std::map<std::string, std::set<std::string>> m{
      {"core", {}},
      {"supervision", {"core"}},
      {"state", {"core", "supervision"}},
      {"process", {"core", "supervision"}},
      {"config", {"core", "supervision"}},
      {"http", {"core"}},
      {"metrics", {"core", "supervision", "state", "http"}},
      {"cluster", {"core", "supervision", "state", "process", "config", "http", "metrics"}},
      {"node", {"core", "supervision", "state", "process", "config", "http", "metrics", "cluster"}},
      {"actors/numerics", {"core"}},
  };
  m["actors"] = runtime_all;
  m["actors"].insert("actors/numerics");
  m["gpu"] = runtime_all;
  m["gpu"].insert("actors/numerics");
  // Serving serves the models the training component defines and commits.
  m["serving"] = runtime_all;
  m["serving"].insert("actors");
  m["serving"].insert("actors/numerics");
  return m;
}

/// The unit a file belongs to, from its path relative to the source root; "" for
/// files the rule does not cover.
std::string unit_of(const fs::path& rel) {
  std::vector<std::string> parts;
  for (const auto& p : rel)
    parts.push_back(p.string());
  if (parts.size() >= 4 && parts[0] == "runtime" && parts[1] == "include")
    return parts[3];
  if (parts.size() >= 3 && parts[0] == "runtime" && parts[1] == "src")
    return parts[2];
  if (parts[0] == "actors") {
    for (const auto& p : parts)
      if (p == "numerics")
        return "actors/numerics";
    return "actors";
  }
  if (parts[0] == "gpu")
    return "gpu";
  if (parts[0] == "serving")
    return "serving";
  return "";
}

/// The unit an include names: "understudy/state/x.hpp" -> "state"; generated
/// schemas belong to the component that owns the schema.
std::string unit_of_include(const std::string& inc) {
  static const std::regex re{R"(understudy/([a-z_]+)/(.*))"};
  std::smatch m;
  if (!std::regex_match(inc, m, re))
    return "";
  auto first = m[1].str();
  auto rest = m[2].str();
  if (first == "schema")
    return rest.rfind("state.", 0) == 0 ? "state" : "actors";
  if (first == "actors" && rest.rfind("numerics/", 0) == 0)
    return "actors/numerics";
  return first;
}

struct violation {
  std::string where;
  std::string what;
};

std::vector<violation> scan(const fs::path& root) {
  static const std::regex include_re{R"(^\s*#\s*include\s*[<"](understudy/[^>"]+)[>"])"};
  const auto allowed = allowed_units();
  std::vector<violation> out;
  for (const char* top : {"runtime", "actors", "gpu", "serving"}) {
    if (!fs::is_directory(root / top))
      continue;
    for (const auto& entry : fs::recursive_directory_iterator(root / top)) {
      const auto ext = entry.path().extension().string();
      if (!entry.is_regular_file() || (ext != ".hpp" && ext != ".cpp" && ext != ".cu"))
        continue;
      const auto rel = fs::relative(entry.path(), root);
      const auto unit = unit_of(rel);
      auto rule = allowed.find(unit);
      if (rule == allowed.end())
        continue;
      std::ifstream in{entry.path()};
      std::string line;
      for (int n = 1; std::getline(in, line); ++n) {
        std::smatch m;
        if (!std::regex_search(line, m, include_re))
          continue;
        const auto target = unit_of_include(m[1].str());
        if (target.empty() || target == unit || rule->second.count(target) != 0)
          continue;
        out.push_back({rel.string() + ":" + std::to_string(n), unit + " -> " + m[1].str()});
      }
    }
  }
  return out;
}

} // namespace

TEST_CASE("every include in the runtime, actors, gpu and serving points down the dependency order",
          "[layout]") {
  const fs::path root{UNDERSTUDY_SOURCE_DIR};
  REQUIRE(fs::is_directory(root / "runtime" / "include" / "understudy" / "core"));
  for (const auto& unit : runtime_units) {
    INFO("mechanism " << unit);
    CHECK(fs::is_directory(root / "runtime" / "include" / "understudy" / unit));
    CHECK(fs::is_directory(root / "runtime" / "src" / unit));
  }
  auto found = scan(root);
  for (const auto& v : found)
    UNSCOPED_INFO(v.where << ": " << v.what);
  CHECK(found.empty());
}

TEST_CASE("the include rule knows which unit a path and an include belong to", "[layout]") {
  CHECK(unit_of("runtime/include/understudy/state/state_store.hpp") == "state");
  CHECK(unit_of("runtime/src/cluster/membership.cpp") == "cluster");
  CHECK(unit_of("actors/src/numerics/mlp.cpp") == "actors/numerics");
  CHECK(unit_of("actors/src/trainer.cpp") == "actors");
  CHECK(unit_of("gpu/src/gpu_actor.cpp") == "gpu");
  CHECK(unit_of("serving/src/router.cpp") == "serving");
  CHECK(unit_of_include("understudy/cluster/cluster.hpp") == "cluster");
  CHECK(unit_of_include("understudy/schema/training.capnp.h") == "actors");
  CHECK(unit_of_include("understudy/schema/state.capnp.h") == "state");
  CHECK(unit_of_include("understudy/actors/numerics/mlp.hpp") == "actors/numerics");
  // An upward include is what the scan reports: config may not see the cluster.
  const auto allowed = allowed_units();
  CHECK(allowed.at("config").count("cluster") == 0);
  CHECK(allowed.at("state").count("node") == 0);
  CHECK(allowed.at("actors/numerics").count("state") == 0);
  // The HTTP server sits below the metrics: it sees the core only.
  CHECK(allowed.at("http") == std::set<std::string>{"core"});
  CHECK(allowed.at("metrics").count("http") == 1);
  CHECK(allowed.at("node").count("http") == 1);
  // Nothing below serving sees it; serving sees the training component.
  CHECK(allowed.at("actors").count("serving") == 0);
  CHECK(allowed.at("serving").count("actors") == 1);
}

TEST_CASE("the include scan reports an upward include with its file and line", "[layout]") {
  const auto root =
      fs::temp_directory_path() / ("understudy-include-rule-" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto write = [&](const fs::path& rel, const std::string& text) {
    fs::create_directories((root / rel).parent_path());
    std::ofstream{root / rel} << text;
  };
  write("runtime/include/understudy/config/ok.hpp", "#include \"understudy/core/errors.hpp\"\n");
  write("runtime/src/config/bad.cpp",
        "#include \"understudy/config/ok.hpp\"\n#include \"understudy/cluster/cluster.hpp\"\n");
  write("actors/src/numerics/bad.cpp", "#include <understudy/state/state_store.hpp>\n");
  write("gpu/src/fine.cpp", "#include \"understudy/actors/numerics/mlp.hpp\"\n");
  write("actors/src/bad.cpp", "#include \"understudy/serving/service.hpp\"\n");
  auto found = scan(root);
  fs::remove_all(root);
  REQUIRE(found.size() == 3);
  std::set<std::string> where{found[0].where, found[1].where, found[2].where};
  CHECK(where.count("actors/src/bad.cpp:1") == 1);
  CHECK(where.count("runtime/src/config/bad.cpp:2") == 1);
  CHECK(where.count("actors/src/numerics/bad.cpp:1") == 1);
}

TEST_CASE("no test name holds a semicolon, which CTest would split into names that run nothing",
          "[layout]") {
  // catch_discover_tests registers each name as a CMake list item: a ';' splits it into
  // fragments that match no test, and each fragment then "passes" without running anything.
  auto list = fs::temp_directory_path() / ("understudy-test-names-" + std::to_string(::getpid()));
  auto cmd = "/proc/" + std::to_string(::getpid()) + "/exe --list-test-names-only > " +
             list.string() + " 2>/dev/null";
  // Catch2 exits with the number of names listed (at most 255): not a failure.
  auto status = std::system(cmd.c_str());
  REQUIRE(status != -1);
  std::ifstream in{list};
  size_t names = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty())
      continue;
    ++names;
    INFO(line);
    CHECK(line.find(';') == std::string::npos);
  }
  fs::remove(list);
  CHECK(names > 100);
}
