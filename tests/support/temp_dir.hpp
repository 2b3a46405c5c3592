#pragma once
// A scratch directory under /tmp that removes itself, for tests that write files.

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace test {

/// A fresh, empty directory named /tmp/understudy-PREFIX-XXXXXX; removed with
/// everything in it when the object goes.
struct temp_dir {
  std::string path;
  explicit temp_dir(const std::string& prefix = "test") {
    std::string tmpl = "/tmp/understudy-" + prefix + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed for " + tmpl);
    path = tmpl;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

} // namespace test
