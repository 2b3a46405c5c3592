# A schema of the consumer's own, compiled by the installed
# understudy_add_schema helper.
@0xd4b7c1f0a3e29b11;

$import "/capnp/c++.capnp".namespace("consumer::schema");

struct Marker {
  value @0 :UInt64;
}
