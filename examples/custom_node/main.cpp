// custom_node: a program of its own that runs as a node of an understudy
// cluster (understudy/node/), with a child type it registers itself: a
// "counter", a persistent actor whose state has its own Cap'n Proto schema
// (counter.capnp) and is checkpointed with every increment. The leader sends
// the counter `--ticks` increments, one every `--pace-ms`, and prints each
// answer; killing the counter's node moves the counter to another node with
// its checkpoints, and the count goes on from where it was.
//
//   custom_node launch cluster.toml [--kill NODE@TICK] [--freeze NODE@TICK:DURATION]
//   custom_node node cluster.toml --name N
//
// Each increment carries its number: a counter that already applied it (its
// answer was lost with its node) answers again without counting it twice, so
// the run ends with count == ticks.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include "counter.capnp.h"
#include "understudy/cluster/cluster.hpp"
#include "understudy/node/launcher.hpp"
#include "understudy/node/node.hpp"
#include "understudy/state/persistent.hpp"
#include "understudy/state/runtime.hpp"

namespace custom_node {

/// (add_atom, seq) -> (count, node): applies increment `seq` once.
using add_atom = caf::atom_constant<caf::atom("cnt_add")>;

struct counter_state {
  uint64_t count = 0;
  uint64_t last_seq = 0;
};

} // namespace custom_node

namespace understudy {

template <>
struct state_codec<custom_node::counter_state> {
  using schema = custom_node::schema::CounterState;
  static constexpr uint32_t version = 1;
  static void save(const custom_node::counter_state& st, state_encoder& enc) {
    auto root = enc.init_root<schema>();
    root.setCount(st.count);
    root.setLastSeq(st.last_seq);
  }
  static caf::error load(state_decoder& dec, custom_node::counter_state& st) {
    auto root = dec.root<schema>();
    st.count = root.getCount();
    st.last_seq = root.getLastSeq();
    return {};
  }
};

} // namespace understudy

namespace custom_node {

using namespace understudy;

/// The counter's behavior: an increment is answered once it is durable (on
/// this node and on its buddy), so an answer promises that it survives.
caf::behavior counter(caf::event_based_actor* self, std::shared_ptr<persistent<counter_state>> st,
                      std::string node) {
  return {
      [self, st, node](add_atom, uint64_t seq) -> caf::result<uint64_t, std::string> {
        auto& v = st->value();
        if (seq <= v.last_seq)
          return {v.count, node};
        v.count += 1;
        v.last_seq = seq;
        auto rp = self->make_response_promise<uint64_t, std::string>();
        st->checkpoint(seq, [rp, st, node](caf::expected<uint64_t> done) mutable {
          if (done)
            rp.deliver(st->value().count, node);
          else
            rp.deliver(std::move(done.error()));
        });
        return rp;
      },
  };
}

/// How the leader drives the counter.
struct drive_options {
  uint64_t ticks = 100;
  std::chrono::milliseconds pace{20};
};

/// The leader's part: sends the increments on a thread of its own and ends
/// the node when the last one is answered.
class counter_part : public node_part {
public:
  explicit counter_part(drive_options opts) : opts_(opts) {}

  ~counter_part() override { stop(); }

  std::string takeover_reason() const override { return "the leader's node is lost"; }

  void after_tree(leader_context& ctx, const supervisor_ref& tree) override {
    // The runtime and the output outlive the leader's parts.
    driver_ = std::thread{
        [this, &sys = ctx.rt.system(), &out = ctx.out, tree] { drive(sys, tree, out); }};
  }

  bool has_end() const override { return true; }

  std::optional<work_end> await_end(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> guard{mtx_};
    if (!cv_.wait_for(guard, timeout, [this] { return end_.has_value(); }))
      return std::nullopt;
    return end_;
  }

  void stop() override {
    stopping_ = true;
    if (driver_.joinable())
      driver_.join();
  }

private:
  void drive(caf::actor_system& sys, const supervisor_ref& tree, node_output& out) {
    caf::scoped_actor self{sys};
    caf::actor target;
    std::string last_node;
    uint64_t count = 0;
    for (uint64_t seq = 1; seq <= opts_.ticks && !stopping_;) {
      if (!target) {
        // Waits while the counter restarts (e.g. on another node).
        auto resolved = tree.resolve("counter", std::chrono::seconds(10));
        if (!resolved) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        target = *resolved;
      }
      bool answered = false;
      std::string node;
      self->request(target, std::chrono::seconds(2), add_atom::value, seq)
          .receive(
              [&](uint64_t n, std::string& where) {
                answered = true;
                count = n;
                node = std::move(where);
              },
              [&](caf::error&) { target = nullptr; });
      if (!answered) {
        // Its node is lost: give the supervisor a moment to notice.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (node != last_node || seq % 10 == 0 || seq == opts_.ticks)
        out.say("progress: step " + std::to_string(seq) + "/" + std::to_string(opts_.ticks) +
                " count " + std::to_string(count) + " on " + node);
      last_node = node;
      ++seq;
      std::this_thread::sleep_for(opts_.pace);
    }
    std::lock_guard<std::mutex> guard{mtx_};
    if (stopping_)
      return;
    end_ = work_end{{},
                    "ticks=" + std::to_string(opts_.ticks) + " count=" + std::to_string(count) +
                        " on " + last_node,
                    {}};
    cv_.notify_all();
  }

  drive_options opts_;
  std::thread driver_;
  std::atomic<bool> stopping_{false};
  std::mutex mtx_;
  std::condition_variable cv_;
  std::optional<work_end> end_;
};

/// The counter as a node component: its child type, its factory on every
/// node, its driver on the leader.
class counter_component : public node_component {
public:
  explicit counter_component(drive_options opts) : opts_(opts) {}

  void prepare_loading(node_config_options& opts) const override {
    opts.child_types.push_back("counter");
  }

  caf::expected<std::unique_ptr<node_part>> attach(cluster_node& node, const node_config&,
                                                   node_metrics*) const override {
    // The supervisor on the leader starts the counter here through this.
    node.add_factory(
        "counter", [&node](child_context& ctx, const caf::message&) -> caf::expected<caf::actor> {
          auto init = [name = node.self().name](caf::event_based_actor* self,
                                                std::shared_ptr<persistent<counter_state>> st) {
            return counter(self, std::move(st), name);
          };
          return persistent_child<counter_state>(ctx.id, node.state_store(), init).start(ctx);
        });
    return std::unique_ptr<node_part>{std::make_unique<counter_part>(opts_)};
  }

private:
  drive_options opts_;
};

} // namespace custom_node

int main(int argc, char** argv) {
  using namespace understudy;
  CLI::App app{"custom_node: a cluster node with a persistent counter actor of its own",
               "custom_node"};
  app.require_subcommand(1);
  uint64_t ticks = 100;
  uint64_t pace_ms = 20;
  app.add_option("--ticks", ticks, "increments the leader sends")->capture_default_str();
  app.add_option("--pace-ms", pace_ms, "milliseconds between increments")->capture_default_str();
  node_options node;
  node.label = "custom_node node";
  auto* node_cmd = app.add_subcommand("node", "run one node of the cluster");
  node_cmd->add_option("FILE", node.file, "the cluster's node config file (TOML)")->required();
  node_cmd->add_option("--name", node.name, "which [[node]] of FILE this is")->required();
  node_cmd->add_option("--coordination", node.coordination_endpoints, "etcd's client URLs")
      ->delimiter(',');
  launch_options launch;
  launch.label = "custom_node launch";
  auto* launch_cmd = app.add_subcommand("launch", "start every node of the cluster here");
  launch_cmd->add_option("FILE", launch.file, "the cluster's node config file (TOML)")->required();
  launch_cmd->add_option("--kill", launch.kills, "NODE@TICK: SIGKILL the node at that tick");
  launch_cmd->add_option("--freeze", launch.freezes,
                         "NODE@TICK:DURATION: SIGSTOP the node, SIGCONT after DURATION");
  CLI11_PARSE(app, argc, argv);
  custom_node::drive_options drive{ticks, std::chrono::milliseconds(pace_ms)};
  node_components components{std::make_shared<custom_node::counter_component>(drive)};
  node_output out{std::cout, std::cerr};
  if (*node_cmd) {
    node.components = components;
    return to_int(run_node(node, out));
  }
  launch.components = components;
  launch.node_command = [exe = this_program(argv[0]), &launch, ticks,
                         pace_ms](const std::string& name) {
    return std::vector<std::string>{exe,
                                    "--ticks",
                                    std::to_string(ticks),
                                    "--pace-ms",
                                    std::to_string(pace_ms),
                                    "node",
                                    launch.file,
                                    "--name",
                                    name};
  };
  return run_launch(launch, out);
}
