# Persisted-state records of understudy's state store (runtime/src/state/state_store.cpp).
# One Record per (actor path, step) in the `records` database; the bytes of each
# tensor live in the `chunks` database, one LMDB value per chunk, described here.
@0x92bb016395401c47;

$import "/capnp/c++.capnp".namespace("understudy::schema");

enum ElementType {
  bytes @0;
  f32 @1;
  f64 @2;
  i32 @3;
  i64 @4;
  u8 @5;
  u32 @6;
  u64 @7;
  f16 @8;
  bf16 @9;
}

# One tensor of a record: its description and one checksum per chunk.
struct TensorInfo {
  name @0 :Text;
  elementType @1 :ElementType;
  shape @2 :List(UInt64);
  # Length in bytes of the tensor's data.
  byteLength @3 :UInt64;
  # Every chunk but the last holds exactly chunkSize bytes.
  chunkSize @4 :UInt64;
  # XXH3-64 of each chunk's bytes, in order.
  chunkChecksums @5 :List(UInt64);
}

struct RecordHeader {
  # Cap'n Proto type id of the state's root struct, and the state type's version.
  schemaId @0 :UInt64;
  schemaVersion @1 :UInt32;
  # The actor's path in the supervision tree, e.g. "/job/shards/shard-0".
  actorPath @2 :Text;
  # The version: the training step this state belongs to.
  step @3 :UInt64;
  # Length in bytes of `Record.payload`.
  payloadLength @4 :UInt64;
  # XXH3-64 over the payload, then the header fields (path, step, schema id and
  # version, payload length) and every tensor's description and chunk checksums;
  # see record_checksum() in runtime/src/state/record_codec.cpp.
  checksum @5 :UInt64;
  # Wall-clock time of the checkpoint, nanoseconds since the Unix epoch.
  createdUnixNanos @6 :Int64;
  # Incarnation of the actor that wrote it (1 for the first start).
  incarnation @7 :UInt64;
  tensors @8 :List(TensorInfo);
}

struct Record {
  header @0 :RecordHeader;
  # The state's own Cap'n Proto message, as a flat array (segment table + segments).
  payload @1 :Data;
}

# A generic state for actors whose state is a step counter, a few scalars and
# named tensors (the tensors' bytes are in the record's chunks).
struct TensorState {
  step @0 :UInt64;
  scalars @1 :List(Scalar);
  struct Scalar {
    name @0 :Text;
    value @1 :Float64;
  }
  # A free-form note, e.g. the optimizer's name.
  note @2 :Text;
}
