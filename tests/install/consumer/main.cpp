// A service outside the understudy tree: it finds the installed package,
// embeds the runtime, starts a supervision tree, sees a crash repaired and
// shuts down. Exits non-zero if any of that does not work.

#include <chrono>
#include <iostream>
#include <memory>

#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <understudy/runtime/runtime.hpp>
#include <understudy/runtime/version.hpp>

namespace {

caf::behavior echo(caf::event_based_actor*) {
  return {
      [](int x) { return x; },
      [](const std::string&) -> int { throw std::runtime_error("asked to crash"); },
  };
}

} // namespace

int main() {
  auto log = std::make_shared<understudy::event_log>();
  understudy::runtime_config cfg;
  cfg.events = log;
  understudy::runtime rt{cfg};
  understudy::supervisor_spec spec;
  spec.name = "consumer";
  spec.children = {understudy::worker("echo", echo)};
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
  if (!restarted || !kids || kids->size() != 1 || (*kids)[0].incarnation != 2) {
    std::cerr << "the crashed child was not restarted\n";
    return 3;
  }
  if (auto err = rt.stop(*tree)) {
    std::cerr << "stop failed: " << rt.render(err) << '\n';
    return 4;
  }
  std::cout << "understudy " << understudy::version() << ": tree started, child restarted, "
            << "stopped cleanly\n";
  return 0;
}
