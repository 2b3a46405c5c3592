#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace understudy {

/// An immutable value in a message, shared without a copy between actors of one
/// process and serialized by value when the message crosses to another node or
/// process (CAF serializes only then). `T` must be default-constructible and
/// inspectable (have a CAF `inspect` overload or be a standard container of
/// such). A default-constructed shared_value is empty and travels as empty.
///
/// Register `shared_value<T>` with `add_message_type` where it crosses processes.
template <class T>
class shared_value {
public:
  using value_type = T;

  shared_value() = default;

  /// Shares `ptr` (may be null).
  shared_value(std::shared_ptr<const T> ptr) : ptr_(std::move(ptr)) {
    // nop
  }

  /// Shares a mutable pointer as immutable (the sender must not change it).
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, const T*>>>
  shared_value(std::shared_ptr<U> ptr) : ptr_(std::move(ptr)) {
    // nop
  }

  const T& operator*() const noexcept { return *ptr_; }
  const T* operator->() const noexcept { return ptr_.get(); }
  const T* get() const noexcept { return ptr_.get(); }
  explicit operator bool() const noexcept { return static_cast<bool>(ptr_); }

  /// The shared pointer itself.
  const std::shared_ptr<const T>& ptr() const noexcept { return ptr_; }

  /// For deserialization: a fresh value to fill (replaces the shared one).
  T& reset_for_load() {
    auto fresh = std::make_shared<T>();
    T& ref = *fresh;
    ptr_ = std::move(fresh);
    return ref;
  }

  void reset() noexcept { ptr_.reset(); }

  friend bool operator==(const shared_value& x, const shared_value& y) noexcept {
    return x.ptr_ == y.ptr_;
  }
  friend bool operator!=(const shared_value& x, const shared_value& y) noexcept {
    return x.ptr_ != y.ptr_;
  }

private:
  std::shared_ptr<const T> ptr_;
};

/// Serializes whether a value is present, then the value.
template <class Inspector, class T>
std::enable_if_t<Inspector::reads_state, typename Inspector::result_type> inspect(
    Inspector& f, shared_value<T>& x) {
  bool present = static_cast<bool>(x);
  if (!present)
    return f(present);
  // Saving only reads: the shared value is never changed.
  return f(present, const_cast<T&>(*x));
}

/// Loads into a fresh value.
template <class Inspector, class T>
std::enable_if_t<Inspector::writes_state, typename Inspector::result_type> inspect(
    Inspector& f, shared_value<T>& x) {
  // Deserializers return an error (CAF 0.17): the flag, then the value.
  bool present = false;
  if (auto err = f(present))
    return err;
  if (!present) {
    x.reset();
    return {};
  }
  return f(x.reset_for_load());
}

} // namespace understudy
