#include "understudy/actors/numerics/model.hpp"

#include <stdexcept>
#include <string>
#include <vector>

namespace understudy::actors {

void validate_batch(const model& m, const batch_view& batch, const char* who) {
  auto fail = [who](const std::string& what) {
    throw std::invalid_argument(std::string{who} + ": " + what);
  };
  if (batch.input_dim != m.input_dim())
    fail("batch input_dim " + std::to_string(batch.input_dim) + " does not match the model's " +
         std::to_string(m.input_dim()) + " inputs (" + m.describe() + ")");
  if (batch.size == 0)
    return;
  if (batch.inputs == nullptr)
    fail("batch of " + std::to_string(batch.size) + " samples has no inputs");
  if (batch.labels == nullptr)
    fail("batch of " + std::to_string(batch.size) + " samples has no labels");
  const auto classes = m.class_count();
  for (size_t b = 0; b < batch.size; ++b)
    if (batch.labels[b] >= classes)
      fail("label " + std::to_string(batch.labels[b]) + " of sample " + std::to_string(b) +
           " is out of range for " + std::to_string(classes) + " classes");
}

double accuracy(const model& m, const float* params, const batch_view& batch) {
  validate_batch(m, batch, "accuracy");
  if (batch.size == 0)
    return 0.0;
  std::vector<uint32_t> predicted(batch.size);
  m.predict(params, batch.inputs, batch.size, predicted.data());
  size_t correct = 0;
  for (size_t b = 0; b < batch.size; ++b)
    if (predicted[b] == batch.labels[b])
      ++correct;
  return static_cast<double>(correct) / static_cast<double>(batch.size);
}

} // namespace understudy::actors
