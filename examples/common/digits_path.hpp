#pragma once
// Where the examples find the digits data set: examples/data/ from the
// repository root, or the copy the build names (UNDERSTUDY_DIGITS_DEFAULT, set
// by each example's CMake target) from anywhere else.

#include <filesystem>
#include <string>

namespace understudy::examples {

inline std::string default_digits_path() {
  const std::string local = "examples/data/digits.csv.gz";
  if (std::filesystem::exists(local))
    return local;
  return UNDERSTUDY_DIGITS_DEFAULT;
}

} // namespace understudy::examples
