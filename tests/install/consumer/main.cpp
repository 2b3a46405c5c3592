// A service outside the understudy tree: it finds the installed package,
// embeds the runtime, starts a supervision tree with a persistent child (its
// state type uses the installed Cap'n Proto schema), sees a crash repaired
// with the checkpointed state restored, and shuts down. Exits non-zero if any
// of that does not work. It builds a model of the actors component and, built
// with the gpu component (CONSUMER_WITH_GPU), lists devices.

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>

#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <understudy/actors/numerics/mlp.hpp>
#if defined(CONSUMER_WITH_GPU)
#include <understudy/gpu/device.hpp>
#endif
#include <understudy/core/version.hpp>
#include <understudy/schema/state.capnp.h>
#include <understudy/state/persistent.hpp>
#include <understudy/state/runtime.hpp>

struct counter {
  uint64_t value = 0;
};

template <>
struct understudy::state_codec<counter> {
  using schema = understudy::schema::TensorState;
  static constexpr uint32_t version = 1;
  static void save(const counter& c, understudy::state_encoder& enc) {
    enc.init_root<schema>().setStep(c.value);
  }
  static caf::error load(understudy::state_decoder& dec, counter& c) {
    c.value = dec.root<schema>().getStep();
    return {};
  }
};

namespace {

using save_atom = caf::atom_constant<caf::atom("save")>;

caf::behavior persistent_counter(caf::event_based_actor* self,
                                 std::shared_ptr<understudy::persistent<counter>> st) {
  return {
      [self, st](save_atom, uint64_t v) -> caf::result<uint64_t> {
        st->value().value = v;
        auto rp = self->make_response_promise<uint64_t>();
        st->checkpoint(v, [rp](caf::expected<uint64_t> res) mutable {
          if (res)
            rp.deliver(*res);
          else
            rp.deliver(res.error());
        });
        return rp;
      },
      [st](caf::get_atom) { return st->value().value; },
      [](const std::string&) -> uint64_t { throw std::runtime_error("asked to crash"); },
  };
}

caf::behavior echo(caf::event_based_actor*) {
  return {
      [](int x) { return x; },
      [](const std::string&) -> int { throw std::runtime_error("asked to crash"); },
  };
}

} // namespace

int main() {
#if defined(CONSUMER_WITH_GPU)
  // The gpu component links (with its CUDA backend where it was built with one);
  // no device is needed: the list is just empty then.
  std::cout << "devices: " << understudy::gpu::discover_devices().size() << '\n';
#endif
  // The actors component links: a 4-8-3 MLP has 4*8+8 + 8*3+3 parameters.
  understudy::actors::mlp net{{4, 8, 3}};
  if (net.parameter_count() != 67) {
    std::cerr << "unexpected parameter count " << net.parameter_count() << '\n';
    return 9;
  }
  auto log = std::make_shared<understudy::event_log>();
  understudy::runtime_config cfg;
  cfg.events = log;
  understudy::runtime rt{cfg};
  auto dir = std::filesystem::temp_directory_path() / "understudy-consumer-state";
  std::filesystem::remove_all(dir);
  understudy::state_store_config state_cfg;
  state_cfg.directory = dir.string();
  auto state = rt.open_state(state_cfg);
  if (!state) {
    std::cerr << "open_state failed: " << rt.render(state.error()) << '\n';
    return 5;
  }
  understudy::supervisor_spec spec;
  spec.name = "consumer";
  spec.children = {understudy::worker("echo", echo),
                   understudy::persistent_child<counter>("counter", *state, persistent_counter)};
  auto tree = rt.start(spec);
  if (!tree) {
    std::cerr << "start failed: " << rt.render(tree.error()) << '\n';
    return 1;
  }
  auto first = tree->resolve("echo");
  if (!first)
    return 2;
  caf::anon_send(*first, std::string{"crash"});
  bool restarted = log->wait_for(
      [](const std::vector<understudy::supervision_event>& evs) {
        for (auto& ev : evs)
          if (ev.kind == understudy::event_kind::child_restarted)
            return true;
        return false;
      },
      std::chrono::seconds(10));
  auto kids = tree->which_children();
  if (!restarted || !kids || kids->size() != 2 || (*kids)[0].incarnation != 2) {
    std::cerr << "the crashed child was not restarted\n";
    return 3;
  }
  // The persistent child checkpoints 42, crashes, and comes back with 42.
  caf::scoped_actor self{rt.system()};
  auto ask = [&](auto... xs) {
    uint64_t answer = 0;
    auto h = tree->resolve("counter");
    if (h)
      self->request(*h, std::chrono::seconds(10), xs...)
          .receive([&](uint64_t x) { answer = x; }, [](caf::error&) {});
    return answer;
  };
  if (ask(save_atom::value, uint64_t{42}) != 42)
    return 6;
  auto old = tree->resolve("counter");
  if (!old)
    return 7;
  caf::anon_send(*old, std::string{"crash"});
  bool back = log->wait_for(
      [](const std::vector<understudy::supervision_event>& evs) {
        for (auto& ev : evs)
          if (ev.kind == understudy::event_kind::state_restored && ev.child == "counter")
            return true;
        return false;
      },
      std::chrono::seconds(10));
  if (!back || ask(caf::get_atom::value) != 42) {
    std::cerr << "the restarted persistent child did not get its state back\n";
    return 8;
  }
  if (auto err = rt.stop(*tree)) {
    std::cerr << "stop failed: " << rt.render(err) << '\n';
    return 4;
  }
  std::filesystem::remove_all(dir);
  std::cout << "understudy " << understudy::version() << ": tree started, child restarted, "
            << "state restored, stopped cleanly\n";
  return 0;
}
