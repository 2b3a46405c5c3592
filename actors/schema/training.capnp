# Persisted state of the training actors (actors/src/training.cpp). Parameter and
# optimizer tensors travel as tensors of the record, not in these structs.
@0xd0a4c3e2b9f61a57;

$import "/capnp/c++.capnp".namespace("understudy::schema");

# A parameter shard after applying step `step`: tensors "params", "m" and "v".
struct ShardState {
  step @0 :UInt64;
  first @1 :UInt64;          # index of the shard's first parameter in the flat vector
  count @2 :UInt64;          # number of parameters it owns
  optimizerSteps @3 :UInt64; # updates applied by its optimizer
  fingerprint @4 :UInt64;    # the job configuration this state belongs to
}

# A data loader's cursor after serving every batch of step `step`: the next
# sample is position `position` of epoch `epoch`'s order of the training set
# (`shareSize` samples), i.e. number step x batch of the job's global stream.
struct LoaderState {
  step @0 :UInt64;
  epoch @1 :UInt64;
  position @2 :UInt64;
  shareSize @3 :UInt64;
  fingerprint @4 :UInt64;
}

# The trainer: the last step committed by every participant.
struct TrainerState {
  step @0 :UInt64;
  fingerprint @1 :UInt64;
  accuracy @2 :Float64;      # held-out accuracy at `evalStep` (NaN before the first)
  evalStep @3 :UInt64;
  # The counts the job ran with when it recorded this step: a resume with
  # other counts of shards or loaders reshards the committed step first.
  workers @4 :UInt64;
  shards @5 :UInt64;
  loaders @6 :UInt64;
}
