// Catch2's runner, plus helper modes in which the test binary runs as a child
// process of a test (so that tests need no extra binaries).
#define CATCH_CONFIG_RUNNER
#include <cstring>

#include <catch2/catch.hpp>

namespace test {
/// Commits checkpoints until killed; see state_kill_test.cpp.
int checkpoint_crasher_main(const char* dir);
} // namespace test

int main(int argc, char* argv[]) {
  if (argc == 3 && std::strcmp(argv[1], "--checkpoint-crasher") == 0)
    return test::checkpoint_crasher_main(argv[2]);
  return Catch::Session().run(argc, argv);
}
