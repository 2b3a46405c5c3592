#pragma once

#include <cstddef>
#include <cstdint>

namespace understudy::actors {

/// A non-owning view of a batch of labelled samples, as models consume it.
///
/// `inputs` holds `size` rows of `input_dim` floats, row-major (sample `b`,
/// feature `i` at `inputs[b * input_dim + i]`); `labels` holds `size` class
/// indices. The caller owns both arrays and keeps them alive and unchanged for
/// the duration of the call that receives the view.
struct batch_view {
  const float* inputs = nullptr;
  const uint32_t* labels = nullptr;
  size_t size = 0;
  size_t input_dim = 0;
};

} // namespace understudy::actors
