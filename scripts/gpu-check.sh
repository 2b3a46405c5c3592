#!/usr/bin/env bash
# Prepares the GPU checks of the gpu component for a lent GPU machine (the
# device tool's `run`): builds understudy in Release here, bundles the test
# binary, gpu_mlp, digits_mlp and bench_gpu with the libraries they need
# (../shared/tools/gpu-bundle.sh) into build-gpu-bundle/ (ignored by git), adds
# a runner, and prints the exact `run` call. It calls no device itself.
#
#   scripts/gpu-check.sh
#
# Environment: BUILD_DIR (default build/gpu-release), JOBS (default 2),
# GPU_BUNDLE (default ../shared/tools/gpu-bundle.sh next to the checkout).
# On the GPU machine the runner runs, from the repository root:
#   1. the [gpu] tests (CUDA backend, GPU actors, illegal address in a child
#      process, NCCL and local collectives on CUDA);
#   2. gpu_mlp on cuda without and with faults (a real illegal-address kernel,
#      a rank crash, a trainer crash) and compares the digests, also with
#      --collective nccl (one rank per device: one rank on a single device);
#   3. bench_gpu.
# Its logs come back under $OUT: gpu_tests.log, gpu_mlp.log, bench_gpu.log, summary.txt.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build/gpu-release}
jobs=${JOBS:-2}
tool=${GPU_BUNDLE:-$root/../shared/tools/gpu-bundle.sh}
bundle=$root/build-gpu-bundle

[ -f "$tool" ] || { echo "gpu-check: no bundling tool at $tool (set GPU_BUNDLE)" >&2; exit 2; }

echo "== configure and build (Release) in $build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNDERSTUDY_ENABLE_CUDA=ON \
  -DUNDERSTUDY_ENABLE_TESTS=ON -DUNDERSTUDY_ENABLE_EXAMPLES=ON -DUNDERSTUDY_ENABLE_BENCH=ON
if ! grep -q "UNDERSTUDY_GPU_HAS_CUDA 1" "$build/gpu/include/understudy/gpu/config.hpp"; then
  echo "gpu-check: this build has no CUDA backend (no CUDA toolkit found): nothing to check on a GPU" >&2
  exit 1
fi
nice -n 10 cmake --build "$build" -j "$jobs" --target understudy_tests gpu_mlp digits_mlp bench_gpu

echo "== bundle into $bundle"
rm -rf "$bundle"
bash "$tool" "$bundle" "$build/tests/understudy_tests" "$build/examples/gpu_mlp/gpu_mlp" \
  "$build/examples/digits_mlp/digits_mlp" "$build/bench/bench_gpu"
# The bundle travels with the working tree (64 MiB in all): no symbols.
if command -v strip > /dev/null; then
  strip --strip-unneeded "$bundle"/bin/* "$bundle"/lib/* 2> /dev/null || true
fi

cat > "$bundle/run-gpu-checks.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: bash build-gpu-bundle/run-gpu-checks.sh
# STEPS (default 300) sets gpu_mlp's steps. Logs go to $OUT (or /tmp/gpu-check).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null
source "$here/env.sh"
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
status=0

note "== device"
nvidia-smi -L 2>&1 | tee -a "$summary" || true
missing=$(for p in "$here"/bin/*; do ldd "$p" | grep 'not found'; done | sort -u)
[ -z "$missing" ] || note "missing libraries: $missing"

note "== [gpu] tests"
if understudy_tests '[gpu]' --durations yes > "$out/gpu_tests.log" 2>&1; then
  note "gpu tests: passed ($(grep -c 'skipped: no CUDA device' "$out/gpu_tests.log") skipped)"
else
  note "gpu tests: FAILED (see gpu_tests.log)"
  status=1
fi
tail -3 "$out/gpu_tests.log" | tee -a "$summary"

steps=${STEPS:-300}
devices=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
faults="gpu:0@$((steps / 3)),worker:0@$((steps / 2)),trainer@$((2 * steps / 3))"
digest() { sed -n 's/.*params_digest=\([0-9a-f]*\).*/\1/p' "$1" | tail -1; }
pair() { # name, extra gpu_mlp options
  local name=$1
  shift
  local clean=/tmp/gpu-check-$name-clean.log faulty=/tmp/gpu-check-$name-faulty.log
  rm -rf "/tmp/gpu-check-$name-clean" "/tmp/gpu-check-$name-faulty"
  gpu_mlp "$@" --steps "$steps" --state-dir "/tmp/gpu-check-$name-clean" > "$clean" 2>&1
  local rc1=$?
  gpu_mlp "$@" --steps "$steps" --fault "$faults" --state-dir "/tmp/gpu-check-$name-faulty" \
    > "$faulty" 2>&1
  local rc2=$?
  { echo "=== $name: gpu_mlp $* (fault-free)"; cat "$clean"; echo "=== $name: with --fault $faults"; cat "$faulty"; } >> "$out/gpu_mlp.log"
  local a b
  a=$(digest "$clean")
  b=$(digest "$faulty")
  if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ -n "$a" ] && [ "$a" = "$b" ]; then
    note "gpu_mlp $name: digests match ($a); $(grep '^final:' "$faulty")"
  else
    note "gpu_mlp $name: FAILED (exit $rc1/$rc2, digests '$a' and '$b')"
    status=1
  fi
}
note "== gpu_mlp, fault-free vs faults $faults ($steps steps)"
: > "$out/gpu_mlp.log"
pair digits --backend cuda --data examples/data/digits.csv.gz
pair synthetic --backend cuda --data synthetic:60000 --batch 256
pair digits-2-actors-per-device --backend cuda --workers $((devices > 0 ? 2 * devices : 2)) \
  --data examples/data/digits.csv.gz
# One rank per device: on a single device a communicator of one rank, which
# still joins and runs every all-reduce in place through NCCL.
pair digits-nccl --backend cuda --collective nccl --data examples/data/digits.csv.gz

note "== bench_gpu"
if bench_gpu > "$out/bench_gpu.log" 2>&1; then
  grep -v '^{' "$out/bench_gpu.log" | tee -a "$summary"
else
  note "bench_gpu: FAILED (see bench_gpu.log)"
  status=1
fi
note "== status $status"
exit $status
RUNNER
chmod +x "$bundle/run-gpu-checks.sh"

size=$(du -sm "$bundle" | cut -f1)
tree=$(cd "$root" && git ls-files -co --exclude-standard -z | du -smc --files0-from=- 2> /dev/null | tail -1 | cut -f1)
echo "bundle: ${size} MiB; working tree that travels: ${tree} MiB (64 MiB in all)"
if [ $((size + tree)) -gt 64 ]; then
  echo "gpu-check: too large to travel; strip more or carry less" >&2
  exit 1
fi
cat <<EOF

Run on the GPU machine with the device tool (one call, about 5 minutes):
  run(kind="nvidia-h100-x1", timeout_s=600, carry=["build-gpu-bundle"],
      command="bash build-gpu-bundle/run-gpu-checks.sh")
Its files come back from \$OUT: summary.txt, gpu_tests.log, gpu_mlp.log, bench_gpu.log.
EOF
