#include "understudy/core/version.hpp"

#include <string>

#include <catch2/catch.hpp>

TEST_CASE("version() reports the project version CMake was configured with", "[runtime]") {
  CHECK(understudy::version() == UNDERSTUDY_TEST_PROJECT_VERSION);
}

TEST_CASE("the linked library and the headers carry the same version", "[runtime]") {
  CHECK(understudy::version() == understudy::version_string);
  const std::string joined = std::to_string(understudy::version_major) + "." +
                             std::to_string(understudy::version_minor) + "." +
                             std::to_string(understudy::version_patch);
  CHECK(joined == understudy::version_string);
}
