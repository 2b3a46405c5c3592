#pragma once

#include <cstdint>
#include <limits>

namespace understudy::actors {

/// A small, fast, seedable pseudo-random generator (Steele, Lea and Flood's
/// SplitMix64) whose output is fully specified here, so that it is bit-identical
/// on every platform and standard library (unlike `std::*_distribution`).
///
/// The `i`-th output (0-based) for a seed depends only on `(seed, i)` and is
/// available in O(1) through `at`, so a caller can regenerate any element of a
/// long sequence (e.g. one shard's slice of the parameters) without the rest.
/// A value type: not thread-safe, copy it to fork the sequence. Satisfies
/// UniformRandomBitGenerator, but prefer `uniform01` and `below` to the
/// standard distributions, whose algorithms differ between libraries.
class splitmix64 {
public:
  using result_type = uint64_t;

  /// The increment added to the state for each output (the golden-ratio constant).
  static constexpr uint64_t gamma = 0x9e3779b97f4a7c15ULL;

  /// Starts the sequence for `seed`.
  constexpr explicit splitmix64(uint64_t seed) noexcept : state_(seed) {}

  /// Returns the next 64 random bits.
  constexpr uint64_t next() noexcept {
    state_ += gamma;
    return mix(state_);
  }

  /// Same as `next`, for UniformRandomBitGenerator.
  constexpr uint64_t operator()() noexcept { return next(); }

  /// Returns a float uniformly distributed in [0, 1): the top 24 bits of `next`,
  /// scaled by 2^-24 (exact, every value a multiple of 2^-24).
  constexpr float uniform01() noexcept { return to_unit_float(next()); }

  /// Returns an integer uniformly distributed in [0, n) by rejection sampling
  /// (no modulo bias). Precondition: n > 0.
  constexpr uint64_t below(uint64_t n) noexcept {
    // The smallest x that starts a full block of n values: 2^64 mod n.
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      auto x = next();
      if (x >= threshold)
        return x % n;
    }
  }

  /// The current state, for persisting the generator; `splitmix64{state()}`
  /// continues the sequence exactly.
  constexpr uint64_t state() const noexcept { return state_; }

  /// Returns the `index`-th output (0-based) of the sequence for `seed`, i.e. what
  /// `next` returns after `index` earlier calls on `splitmix64{seed}`.
  static constexpr uint64_t at(uint64_t seed, uint64_t index) noexcept {
    return mix(seed + (index + 1) * gamma);
  }

  /// Maps 64 random bits to [0, 1) as `uniform01` does.
  static constexpr float to_unit_float(uint64_t bits) noexcept {
    return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
  }

  /// The SplitMix64 output function (a bijective finaliser of 64-bit values).
  static constexpr uint64_t mix(uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  static constexpr uint64_t min() noexcept { return 0; }
  static constexpr uint64_t max() noexcept { return std::numeric_limits<uint64_t>::max(); }

private:
  uint64_t state_;
};

} // namespace understudy::actors
