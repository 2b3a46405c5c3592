// embedding: the smallest program that embeds understudy. It runs one supervised actor,
// talks to it, crashes it, waits for its supervisor to restart it and shuts down.

#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "understudy/state/runtime.hpp"

using namespace std::chrono_literals;
using crash_atom = caf::atom_constant<caf::atom("crash")>;

/// The supervised actor: answers an int with its double; `crash_atom` makes it exit
/// with an error, which its supervisor treats as a crash.
caf::behavior doubler(caf::event_based_actor* self) {
  return {[](int x) { return 2 * x; }, [self](crash_atom) { self->quit(caf::sec::runtime_error); }};
}

/// Asks `child` for the double of `x` from outside the actor system; -1 if no answer.
int ask(caf::actor_system& sys, const caf::actor& child, int x) {
  caf::scoped_actor self{sys};
  int result = -1;
  self->request(child, 1s, x).receive([&](int y) { result = y; }, [](caf::error&) {});
  return result;
}

int main() {
  // The runtime owns the actor system. Events go to stderr (runtime_config::log_events)
  // and to this in-memory log, which the program can query and wait on.
  auto log = std::make_shared<understudy::event_log>();
  understudy::runtime_config cfg;
  cfg.events = log;
  understudy::runtime rt{cfg};

  // A one_for_one supervisor with one permanent child; by default restarts are
  // immediate and more than 3 within 5 s make the supervisor give up.
  understudy::supervisor_spec spec;
  spec.name = "service";
  spec.children = {understudy::worker("doubler", doubler)};
  auto tree = rt.start(spec); // Returns once every child serves.
  if (!tree)
    return std::fprintf(stderr, "embedding: %s\n", rt.render(tree.error()).c_str()), 1;
  auto counts = tree->count_children();
  auto kids = tree->which_children();
  if (!counts || counts->active != 1 || !kids)
    return std::fprintf(stderr, "embedding: doubler is not running\n"), 1;
  for (auto& k : *kids)
    std::printf("%s is %s (incarnation %d)\n", k.id.c_str(),
                understudy::to_string(k.status).c_str(), static_cast<int>(k.incarnation));

  // Peers find a child by name, never by a stored handle: after a restart the same
  // name resolves to the new incarnation.
  auto child = tree->resolve("doubler");
  if (!child || ask(rt.system(), *child, 21) != 42)
    return std::fprintf(stderr, "embedding: doubler did not answer\n"), 1;
  std::printf("doubler answers 21 -> 42; now crashing it\n");
  caf::anon_send(*child, crash_atom::value);
  bool restarted = log->wait_for(
      [](const std::vector<understudy::supervision_event>& evs) {
        for (auto& ev : evs)
          if (ev.kind == understudy::event_kind::child_restarted)
            return true;
        return false;
      },
      5s);
  auto again = tree->resolve("doubler");
  if (!restarted || !again || *again == *child || ask(rt.system(), *again, 4) != 8)
    return std::fprintf(stderr, "embedding: doubler was not restarted\n"), 1;
  std::printf("doubler crashed, was restarted and answers again\n");

  // Graceful stop: children in reverse start order, each within its shutdown timeout.
  if (auto err = rt.stop(*tree))
    return std::fprintf(stderr, "embedding: %s\n", rt.render(err).c_str()), 1;
  return 0;
}
