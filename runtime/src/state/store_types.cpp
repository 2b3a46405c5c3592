// The state store's value types: type names, element sizes, checkpoint sizes.

#include <cstdint>
#include <string>

#include "understudy/state/state_store.hpp"

namespace understudy {

std::string to_string(durability x) {
  switch (x) {
    case durability::sync_each_commit:
      return "sync_each_commit";
    case durability::periodic:
      return "periodic";
    case durability::none:
      return "none";
  }
  return "unknown";
}

size_t element_size(element_type x) {
  switch (x) {
    case element_type::bytes:
    case element_type::u8:
      return 1;
    case element_type::f16:
    case element_type::bf16:
      return 2;
    case element_type::f32:
    case element_type::i32:
    case element_type::u32:
      return 4;
    case element_type::f64:
    case element_type::i64:
    case element_type::u64:
      return 8;
  }
  return 1;
}

std::string to_string(element_type x) {
  switch (x) {
    case element_type::bytes:
      return "bytes";
    case element_type::f32:
      return "f32";
    case element_type::f64:
      return "f64";
    case element_type::i32:
      return "i32";
    case element_type::i64:
      return "i64";
    case element_type::u8:
      return "u8";
    case element_type::u32:
      return "u32";
    case element_type::u64:
      return "u64";
    case element_type::f16:
      return "f16";
    case element_type::bf16:
      return "bf16";
  }
  return "unknown";
}

size_t checkpoint::byte_size() const {
  size_t n = payload.size() * sizeof(uint64_t);
  for (auto& t : tensors)
    n += t.size;
  return n;
}

} // namespace understudy
