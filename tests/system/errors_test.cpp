// Every error category of every component, walked value by value: each renders
// by name through `describe` and through the actor system of a config that ran
// the components' registration functions, also after crossing to another
// process (serialized as the middleman does, read by a system that registered
// nothing), and each category is registered by exactly one function.

#include "understudy/cluster/errors.hpp"

#include <regex>
#include <set>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <catch2/catch.hpp>

#include "understudy/actors/numerics/dataset.hpp"
#include "understudy/actors/training.hpp"
#include "understudy/cluster/coordination.hpp"
#include "understudy/cluster/security.hpp"
#include "understudy/core/errors.hpp"
#include "understudy/gpu/collective.hpp"
#include "understudy/gpu/errors.hpp"
#include "understudy/process/process_host.hpp"

using namespace understudy;
using namespace understudy::actors;

namespace {

/// Calls `f.template operator()<E>()` for every error enum of every component.
template <class F>
void for_each_error_enum(F&& f) {
  f(error_traits<supervision_errc>{});
  f(error_traits<state_errc>{});
  f(error_traits<config_errc>{});
  f(error_traits<process_errc>{});
  f(error_traits<security_errc>{});
  f(error_traits<cluster_errc>{});
  f(error_traits<coordination_errc>{});
  f(error_traits<data_errc>{});
  f(error_traits<gpu::gpu_errc>{});
  f(error_traits<gpu::collective_errc>{});
}

/// One registration function of a component and its name.
struct registration {
  const char* name;
  void (*apply)(caf::actor_system_config&);
};

const std::vector<registration>& registrations() {
  static const std::vector<registration> all{
      {"register_error_categories", &register_error_categories},
      {"register_process_types", &register_process_types},
      {"register_cluster_error_categories", &register_cluster_error_categories},
      {"register_training_types", &register_training_types},
      {"gpu::register_gpu_types", &gpu::register_gpu_types},
      {"gpu::register_collective_types", &gpu::register_collective_types},
  };
  return all;
}

void quiet(caf::actor_system_config& cfg) {
  cfg.set("scheduler.policy", caf::atom("testing"));
  cfg.set("logger.console-verbosity", caf::atom("quiet"));
  cfg.set("logger.file-verbosity", caf::atom("quiet"));
}

/// The categories `cfg` can render.
std::set<caf::atom_value> categories_of(const caf::actor_system_config& cfg) {
  std::set<caf::atom_value> result;
  for (const auto& kvp : cfg.error_renderers)
    result.insert(kvp.first);
  return result;
}

/// `err` after a trip through CAF's binary serialization, as between processes.
caf::error across(caf::actor_system& from, caf::actor_system& to, const caf::error& err) {
  std::vector<char> buf;
  caf::binary_serializer sink{from, buf};
  auto copy = err;
  auto written = sink(copy);
  REQUIRE(!written);
  caf::binary_deserializer source{to, buf};
  caf::error result;
  auto read = source(result);
  REQUIRE(!read);
  return result;
}

const std::regex numbered{"error [0-9]+"};

} // namespace

TEST_CASE("every value of every error category renders by name, here and in another process",
          "[errors]") {
  caf::actor_system_config cfg;
  quiet(cfg);
  for (const auto& r : registrations())
    r.apply(cfg);
  caf::actor_system sys{cfg};
  caf::actor_system_config bare_cfg;
  quiet(bare_cfg);
  caf::actor_system bare{bare_cfg};
  std::set<caf::atom_value> categories;
  size_t values = 0;
  for_each_error_enum([&](auto traits) {
    using traits_type = decltype(traits);
    INFO("category " << to_string(traits_type::category));
    CHECK(categories.insert(traits_type::category).second);
    std::set<std::string_view> names;
    for (const auto& v : traits_type::values) {
      ++values;
      std::string name{v.name};
      INFO("value " << name);
      CHECK(names.insert(v.name).second);
      CHECK(to_string(v.code) == name);
      CHECK_FALSE(v.description.empty());
      if (static_cast<uint8_t>(v.code) == 0) {
        // `none`: the empty error, as CAF's own code 0.
        CHECK_FALSE(make_error(v.code, "the details"));
        CHECK(describe(make_error(v.code)) == "normal");
        continue;
      }
      for (const auto& err : {make_error(v.code), make_error(v.code, "the details")}) {
        auto expected = err.context().size() == 2 ? name + ": the details" : name;
        CHECK(is(err, v.code));
        CHECK(describe(err) == expected);
        CHECK(sys.render(err) == expected);
        auto received = across(sys, bare, err);
        CHECK(is(received, v.code));
        CHECK(describe(received) == expected);
        CHECK_FALSE(std::regex_search(describe(err), numbered));
        CHECK_FALSE(std::regex_search(sys.render(err), numbered));
        CHECK_FALSE(std::regex_search(describe(received), numbered));
      }
    }
  });
  CHECK(categories.size() == 10);
  CHECK(values == 99);
}

TEST_CASE("each component registers its own error categories, none registered twice", "[errors]") {
  caf::actor_system_config fresh;
  auto builtin = categories_of(fresh);
  std::set<caf::atom_value> seen;
  for (const auto& r : registrations()) {
    INFO(r.name);
    caf::actor_system_config cfg;
    r.apply(cfg);
    for (auto cat : categories_of(cfg)) {
      if (builtin.count(cat) == 0) {
        INFO("category " << to_string(cat));
        CHECK(seen.insert(cat).second);
      }
    }
  }
  std::set<caf::atom_value> declared;
  for_each_error_enum([&](auto traits) { declared.insert(decltype(traits)::category); });
  CHECK(seen == declared);
}
