#include "understudy/actors/numerics/splitmix64.hpp"

#include <array>
#include <vector>

#include <catch2/catch.hpp>

using namespace understudy;
using namespace understudy::actors;

TEST_CASE("splitmix64 produces the reference sequence", "[actors][splitmix64]") {
  // Published reference outputs of SplitMix64 (Vigna's splitmix64.c).
  splitmix64 zero{0};
  CHECK(zero.next() == 0xe220a8397b1dcdafULL);
  CHECK(zero.next() == 0x6e789e6aa1b965f4ULL);
  splitmix64 gen{1234567};
  const std::array<uint64_t, 5> expected{6457827717110365317ULL, 3203168211198807973ULL,
                                         9817491932198370423ULL, 4593380528125082431ULL,
                                         16408922859458223821ULL};
  for (auto x : expected)
    CHECK(gen.next() == x);
}

TEST_CASE("splitmix64 gives any element of a sequence directly and resumes from its state",
          "[actors][splitmix64]") {
  splitmix64 gen{99};
  std::vector<uint64_t> seq;
  for (int i = 0; i < 10; ++i)
    seq.push_back(gen.next());
  for (uint64_t i = 0; i < seq.size(); ++i)
    CHECK(splitmix64::at(99, i) == seq[i]);
  splitmix64 first{99};
  for (int i = 0; i < 4; ++i)
    first.next();
  splitmix64 resumed{first.state()};
  for (size_t i = 4; i < seq.size(); ++i)
    CHECK(resumed.next() == seq[i]);
}

TEST_CASE("splitmix64 draws uniform floats from 0 up to 1 and unbiased integers below n",
          "[actors][splitmix64]") {
  splitmix64 gen{7};
  double sum = 0;
  constexpr int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    auto u = gen.uniform01();
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    sum += u;
  }
  CHECK(sum / draws == Approx(0.5).margin(0.01));
  CHECK(splitmix64::to_unit_float(~uint64_t{0}) < 1.0f);
  CHECK(splitmix64::to_unit_float(0) == 0.0f);

  std::array<int, 7> counts{};
  for (int i = 0; i < 7000; ++i) {
    auto x = gen.below(7);
    REQUIRE(x < 7);
    ++counts[x];
  }
  for (auto c : counts)
    CHECK(c > 800);
  CHECK(gen.below(1) == 0);
}
