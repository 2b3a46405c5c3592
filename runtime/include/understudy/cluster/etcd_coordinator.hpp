#pragma once

// The coordinator of a real cluster: etcd (v3, through its JSON gateway).
//
// Promises. Every decision is one etcd transaction, so two nodes never both
// succeed where the interface says one may (coordination.hpp): a node's
// session is an etcd lease of `session_ttl` (rounded up to whole seconds);
// its epoch is the revision of the transaction that joined it. Keys, under
// PREFIX/CLUSTER/:
//   members/NODE  the node's current incarnation, attached to its lease; its
//                 epoch is the key's mod_revision (the value holds the name);
//   fenced/NODE   the highest epoch of NODE declared dead (decimal, persistent);
//   leader        the leader's name, attached to its lease; the term is the
//                 key's create_revision;
//   led           "1" once any node led (persistent).
// Endpoints are tried in order; the next one only when a request could not be
// sent (no connection), so that a transaction is never applied twice.
//
// Threads. One worker thread runs the calls in the order they were made and
// calls their callbacks; a second one (started by the first `watch`) follows
// etcd's watch stream and calls the watchers. One lock orders both: a callback
// or a view is delivered right after the request it answers, before the other
// thread's next request, so they arrive in the order etcd answered. Each call
// ends within a deadline of half the session's time to live. The destructor
// cuts the running requests short and joins both threads; calls still queued
// then end with `unavailable`.
//
// Errors (coordination_errc): no answer, no quorum, a deadline passed:
// unavailable; the lease expired or this node's member key is gone or newer:
// session_lost; an answer that cannot be read: bad_answer; bad settings (at
// create): invalid_config.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "understudy/cluster/coordination.hpp"
#include "understudy/config/node_config.hpp"

namespace understudy {

/// The coordinator over etcd (see the top of this file).
class etcd_coordinator final : public coordinator {
public:
  /// Checks `spec` (endpoints, TLS files, time to live, prefix) and makes the
  /// coordinator of node `node` in cluster `cluster`; it contacts etcd only
  /// when called. invalid_config naming the problem otherwise.
  static caf::expected<std::shared_ptr<etcd_coordinator>> create(const coordination_spec& spec,
                                                                 std::string cluster,
                                                                 std::string node);

  ~etcd_coordinator() override;

  etcd_coordinator(const etcd_coordinator&) = delete;
  etcd_coordinator& operator=(const etcd_coordinator&) = delete;

  /// `name` must be the node this coordinator was made for (invalid_config otherwise).
  void join(const std::string& name, callback<uint64_t> done) override;
  void keep_alive(callback<caf::unit_t> done) override;
  void declare_dead(const std::string& name, uint64_t epoch, callback<bool> done) override;
  void campaign(callback<uint64_t> done) override;
  void leave(callback<caf::unit_t> done) override;
  void watch(std::function<void(const coordination_view&)> f) override;
  std::chrono::milliseconds session_ttl() const override;

  /// Forgets that any node of the cluster led (its `led` key), so that the
  /// next leader is chosen as on a cold start (the first candidate only). For
  /// a launcher that starts every node itself, before it starts them; blocks
  /// for one etcd request. `unavailable` if etcd cannot be reached.
  caf::error begin_cold_start();

  /// The key prefix of this cluster, "PREFIX/CLUSTER/".
  const std::string& key_root() const;

  /// HTTP requests this coordinator has sent to etcd so far: each attempt of
  /// a call (a retry on another endpoint counts again) and each watch stream
  /// it opened.
  uint64_t requests_sent() const;

  struct impl;

private:
  explicit etcd_coordinator(std::unique_ptr<impl> p);

  std::unique_ptr<impl> impl_;
};

} // namespace understudy
