#pragma once

#include <any>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/timespan.hpp>

#include "understudy/core/errors.hpp"
#include "understudy/supervision/restart_policy.hpp"

namespace understudy {

// A component that owns a section of the node config file (the training
// component's [job], the serving component's [serve]) registers it with a
// `config_section` in `node_config_options`; the parser knows no section but
// [cluster], [[node]] and [tree]. The parser calls a section's functions on
// the thread that parses, in this order: `parse` once the nodes are read,
// `place` when the placements of the tree reach the section's child, `check`
// after everything else passed. They report problems through the
// `config_table` or `config_context` they get, which turn them into
// `config_errc` errors reading `FILE:LINE: problem`; the first problem wins.

struct node_spec;
struct placement_spec;
enum class placement_policy : uint8_t;

/// One key the parser accepts, as docs/config.md lists it.
struct config_key {
  /// The table: "" (top level), "cluster", "cluster.security", "node",
  /// "tree", "tree.child", "job", "job.<role>", "intensity", "backoff", ...
  std::string section;
  std::string name;
  /// What the value is, e.g. "string", "integer", "duration", "placement".
  std::string type;
};

/// The parse of one node config file as its sections see it.
///
/// Owned by the parser; valid during the call of a section's function only.
class config_context {
public:
  virtual ~config_context() = default;

  /// The file name used in messages.
  virtual const std::string& origin() const = 0;

  /// The file's nodes, in file order.
  virtual const std::vector<node_spec>& nodes() const = 0;

  /// Records `ORIGIN:LINE: problem` as a `code` error unless a problem was recorded before.
  virtual void fail(config_errc code, int line, const std::string& problem) = 0;

  /// Whether a problem was recorded.
  virtual bool failed() const = 0;

  /// Adds a note (`ORIGIN[:LINE]: text`, line 0 for none) to the config.
  virtual void note(int line, const std::string& text) = 0;

  /// Resolves placement `p` of `instances` instances (one per actor) whose
  /// supervisor runs on `parent_node`: fills `p.start` and `p.failover` and
  /// takes the GPUs they need from their nodes. `what` names them in
  /// messages (e.g. "[job.worker]"), at `line`.
  virtual void place(placement_spec& p, const std::string& parent_node, size_t instances,
                     size_t spread_base, const std::string& what, int line) = 0;
};

/// Reads one TOML table of a node config file: checks its keys against the
/// section's keys (an unknown key fails, with a suggestion) and converts
/// values, failing with the message every section shares ("'port' in
/// [[node]] must be an integer, not a string") at the value's line.
///
/// Made by the parser for a section's `parse` and by `sub_table`; valid while
/// that call runs. A failed read returns none and records the problem in the
/// context.
class config_table {
public:
  struct impl;
  explicit config_table(std::unique_ptr<impl> ptr);
  config_table(config_table&&) noexcept;
  config_table& operator=(config_table&&) noexcept;
  ~config_table();

  config_context& context() const;

  /// Whether a problem was recorded (here or elsewhere in the file).
  bool failed() const { return context().failed(); }

  /// Records a problem (see config_context::fail).
  void fail(config_errc code, int line, const std::string& problem) const {
    context().fail(code, line, problem);
  }

  /// The line of the table's header.
  int line() const;

  /// How messages name the table, e.g. "[job]".
  const std::string& display() const;

  /// Names the table in messages about missing keys, e.g. "[[node]] 'n2'".
  void name_it(const std::string& name);

  bool has(const std::string& key) const;

  /// Whether `key` is set to a table.
  bool is_table(const std::string& key) const;

  /// Whether `key` is set to an integer (for a key that takes either a count
  /// or a duration, e.g. [snapshots] rpo).
  bool is_integer(const std::string& key) const;
  bool is_string(const std::string& key) const;

  /// The line of `key`'s value, or of the table if it is not set.
  int line_of(const std::string& key) const;

  /// Keys set in this table with their lines, in file order.
  std::vector<std::pair<std::string, int>> keys_in_order() const;

  std::optional<std::string> str(const std::string& key, bool required = false,
                                 bool allow_empty = false);
  std::optional<int64_t> integer(const std::string& key, int64_t lo, int64_t hi,
                                 bool required = false);
  /// A float or an integer; finite.
  std::optional<double> real(const std::string& key);
  std::optional<bool> boolean(const std::string& key);
  /// A duration string (see parse_duration); with `positive`, longer than zero.
  std::optional<caf::timespan> duration(const std::string& key, bool positive);
  std::optional<std::vector<int64_t>> int_list(const std::string& key, int64_t lo, int64_t hi,
                                               bool required = false);

  /// The table at `key`, named `display` in messages, its keys checked
  /// against those of `section` (see config_key::section); none if absent.
  std::optional<config_table> sub_table(const std::string& key, std::string display,
                                        const std::string& section);

  /// `strategy`: a restart_strategy by name.
  std::optional<restart_strategy> strategy(const std::string& key);

  /// The `intensity` table (keys of section "intensity"), or `def`.
  restart_intensity intensity(restart_intensity def);

  /// The `backoff` table (keys of section "backoff"), or the defaults.
  backoff_policy backoff();

  /// The `placement`, `process` and `gpus` keys of what `what` names (e.g.
  /// "[job.worker]"); `def` without a `placement`. Node names are checked.
  placement_spec placement(const std::string& what, placement_policy def);

  /// Fails with "'KEY' in TABLE is 'VALUE'; expected one of ALLOWED".
  void bad_name(const std::string& key, const std::string& value,
                const std::vector<std::string>& allowed);

private:
  std::unique_ptr<impl> impl_;
};

/// A section of the node config file that a component owns, e.g. the training
/// component's `[job]` (see actors/job_config.hpp).
struct config_section {
  /// Its table at the top level of the file, e.g. "job".
  std::string name;
  /// The keys it accepts, for unknown-key suggestions and docs/config.md: its
  /// own table's under `name`, its sub-tables' under names of its choice
  /// (e.g. "job.<role>").
  std::vector<config_key> keys;
  /// Reads the section's table into the value the component keeps
  /// (node_config::section). Problems go through the table, or come back as
  /// an error.
  std::function<caf::expected<std::any>(config_table& table)> parse;
  /// The `[[tree.child]]` type that starts what the section declares (e.g.
  /// "training_job"); "" if the tree does not start it. The tree then holds
  /// exactly one such child; without a [tree], the root gets it as child
  /// `name`.
  std::string child_type;
  /// The default `restart` of that child. Its `shutdown` defaults to
  /// "infinity": it runs a supervisor of its own.
  restart_type child_restart = restart_type::transient;
  /// Places what the section's child starts, through context.place, once
  /// the child runs on `node`. May be empty.
  std::function<void(std::any& value, config_context& context, const std::string& node)> place;
  /// Checks the value after everything else passed. May be empty.
  std::function<void(std::any& value, config_context& context)> check;
};

} // namespace understudy
