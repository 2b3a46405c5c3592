#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "understudy/actors/numerics/batch_view.hpp"

namespace understudy::actors {

/// A classifier whose parameters are one flat float vector, so that parameter
/// shards can own contiguous slices of it and workers can compute gradients for
/// the whole vector. Implement this interface to add a model.
///
/// A model object holds only its shape, never parameters or scratch memory:
/// every member function is const and safe to call from several threads (or
/// actors) at once. All computations are deterministic: the same inputs give
/// bit-identical outputs from the same build (fixed loop and summation order,
/// no threads, no randomness except the seeded initialisation).
///
/// Preconditions (violations throw `std::invalid_argument`, they are bugs of the
/// caller): parameter and gradient arrays hold `parameter_count()` floats; a
/// batch has `input_dim() == batch.input_dim`, at least one sample, non-null
/// arrays and labels below `class_count()`.
class model {
public:
  virtual ~model() = default;

  /// Returns the length of the flat parameter vector.
  virtual size_t parameter_count() const = 0;

  /// Returns the number of input features per sample.
  virtual size_t input_dim() const = 0;

  /// Returns the number of classes (labels lie in [0, class_count())).
  virtual size_t class_count() const = 0;

  /// Returns a short human-readable description, e.g. "mlp 64-128-10".
  virtual std::string describe() const = 0;

  /// Writes the initial values of parameters [first, first + count) for `seed`
  /// to `out[0 .. count)`. Each value depends only on (seed, its index), so a
  /// shard initialises its own slice and gets exactly the values that a full
  /// initialisation would place there. Throws `std::invalid_argument` if the
  /// range exceeds `parameter_count()`.
  virtual void init_parameter_range(float* out, size_t first, size_t count,
                                    uint64_t seed) const = 0;

  /// Computes the mean loss over `batch` and writes its gradient (the gradient
  /// of the mean) with respect to every parameter to `grad`, which is
  /// overwritten. Returns the mean loss.
  virtual float loss_and_gradient(const float* params, const batch_view& batch,
                                  float* grad) const = 0;

  /// Returns the mean loss over `batch` without computing a gradient.
  virtual float loss(const float* params, const batch_view& batch) const = 0;

  /// Writes the predicted class of each of the `n` samples in `inputs` (row-major,
  /// `input_dim()` floats each) to `labels`. Ties go to the lowest class index.
  /// `n` may be zero.
  virtual void predict(const float* params, const float* inputs, size_t n,
                       uint32_t* labels) const = 0;

  /// Writes the initial values of all parameters for `seed` to `params`.
  void init_parameters(float* params, uint64_t seed) const {
    init_parameter_range(params, 0, parameter_count(), seed);
  }
};

/// Checks that `batch` fits `m`: `batch.input_dim == m.input_dim()`, non-null
/// arrays unless the batch is empty, every label below `m.class_count()`. Throws
/// `std::invalid_argument` naming the first violation, prefixed with `who`. An
/// empty batch passes; callers that need samples check that themselves. For
/// model implementations and callers that want to check data once up front.
void validate_batch(const model& m, const batch_view& batch, const char* who);

/// Returns the fraction of samples in `batch` whose predicted class equals their
/// label, in [0, 1]; 0 for an empty batch. Throws like `validate_batch`.
double accuracy(const model& m, const float* params, const batch_view& batch);

} // namespace understudy::actors
