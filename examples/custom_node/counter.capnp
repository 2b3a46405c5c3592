# The persisted state of examples/custom_node's counter actor.
@0xca2b509f58ebec50;

$import "/capnp/c++.capnp".namespace("custom_node::schema");

# The counter after the increment numbered `lastSeq`: `count` increments in
# all, each applied once however often its request was sent again.
struct CounterState {
  count @0 :UInt64;
  lastSeq @1 :UInt64;
}
