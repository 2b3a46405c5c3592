#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <typeindex>
#include <utility>
#include <vector>

namespace understudy {

/// Keeps the tensor buffers of dead incarnations so that a restarted actor
/// restores into memory that is already mapped instead of page-faulting a
/// fresh buffer (for a 100 MiB state that is most of the restart time).
/// Only the allocation is reused: restore overwrites every element with
/// verified data from the store before the actor sees it.
///
/// Thread-safe; one per node (runtime::open_state makes it part of the
/// persistence). A codec opts in with `static void recycle(State&&,
/// tensor_recycler&)`, called when a persistent actor's state is destroyed.
class tensor_recycler {
public:
  /// Holds at most `max_bytes` (oldest buffers dropped first).
  explicit tensor_recycler(size_t max_bytes = size_t{1} << 30) : max_bytes_(max_bytes) {}

  /// Keeps `v`'s allocation for a later take<T>. Small buffers are not kept.
  template <class T>
  void give(std::vector<T>&& v) {
    auto bytes = v.capacity() * sizeof(T);
    if (bytes < min_bytes || bytes > max_bytes_)
      return;
    auto holder = std::make_shared<std::vector<T>>(std::move(v));
    std::lock_guard<std::mutex> guard{mtx_};
    bins_.push_back(entry{std::type_index(typeid(T)), bytes, std::move(holder)});
    held_ += bytes;
    ++given_;
    while (held_ > max_bytes_) {
      held_ -= bins_.front().bytes;
      bins_.pop_front();
    }
  }

  /// A kept buffer of `T` with room for `count` elements (at most twice
  /// that), holding stale elements; or an empty vector when none fits.
  template <class T>
  std::vector<T> take(size_t count) {
    auto want = count * sizeof(T);
    std::shared_ptr<void> found;
    {
      std::lock_guard<std::mutex> guard{mtx_};
      for (auto i = bins_.begin(); i != bins_.end(); ++i) {
        if (i->type == std::type_index(typeid(T)) && i->bytes >= want && i->bytes <= 2 * want) {
          found = std::move(i->buffer);
          held_ -= i->bytes;
          ++taken_;
          bins_.erase(i);
          break;
        }
      }
    }
    if (!found)
      return {};
    return std::move(*std::static_pointer_cast<std::vector<T>>(found));
  }

  /// Bytes currently kept.
  size_t held() const {
    std::lock_guard<std::mutex> guard{mtx_};
    return held_;
  }

  /// Buffers kept so far, and handed out again.
  std::pair<size_t, size_t> counts() const {
    std::lock_guard<std::mutex> guard{mtx_};
    return {given_, taken_};
  }

  /// Buffers smaller than this are cheaper to allocate than to keep.
  static constexpr size_t min_bytes = size_t{1} << 20;

private:
  struct entry {
    std::type_index type;
    size_t bytes;
    std::shared_ptr<void> buffer;
  };
  mutable std::mutex mtx_;
  std::deque<entry> bins_;
  size_t held_ = 0;
  size_t given_ = 0;
  size_t taken_ = 0;
  size_t max_bytes_;
};

} // namespace understudy
