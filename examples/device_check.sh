#!/usr/bin/env bash
# Everything GPU-related in one call (under 6 minutes on one NVIDIA GPU and 16 cores, offline):
#   1. the GPU tests (tests/runtime/test_gpu.py, marker gpu: every transport this machine supports, and replicas, against
#      the single-process reference on the device, pinned buffers for stages sharing a GPU, nccl with a GPU
#      per stage where there are two or more, CUDA-event op times) and the equivalence test on the device
#      (tests/runtime/test_device.py: two stages sharing the GPU, D = 1 and 3);
#   2. one hop's cost for stages sharing the GPU (examples/gpu_transfer.py): the pinned path the data plane
#      uses, the pageable one it replaced, a device-to-device copy, and the block step they feed;
#   3. the per-step overhead: a tiny model (16-wide blocks, batch 8) on 2 and 4 stages sharing the GPU;
#   4. the bench with 2 stages sharing the GPU (gpus_per_stage 0.5);
#   with FULL=1 also 5. the bench with 4 stages sharing it and 6. the bench with N = 1, 2, 4, 8 CPU stages.
# JSON and Markdown land in OUT (default device-check/), at most two folders down.
#
# Usage, from the project root:  examples/device_check.sh [OUT]
#   DEVICE=cpu  stands the CPU in for the GPU (what CI runs, with QUICK=1: tiny sizes, no per-op-call
#               baseline; the GPU tests skip, saying why)
#   WHEELS=DIR  wheels to install where Ray is missing (default .whl). Build them here with
#               ../shared/tools/device-wheels.sh .whl, then add the package's own needs:
#               pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#                 --platform manylinux2014_x86_64 msgpack tqdm prometheus-client
set -uo pipefail  # not -e: a failed step is reported and the next one still runs
out=${1:-device-check}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
if ! "$py" -c "import ray, msgpack" 2>/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${WHEELS:-.whl}"/*.whl || exit 1
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$py" - <<'PY' | tee "$out/machine.txt"
import os, platform, torch, ray
print("python", platform.python_version(), "torch", torch.__version__, "ray", ray.__version__, "cpus", os.cpu_count())
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

share2=0.5 share4=0.25
if [ "$device" = cpu ]; then share2=1 share4=1; fi
if [ -n "${QUICK:-}" ]; then
  cpu=(--width 16 --batch 8 --stages 1,2 --depths 1,3 --steps 20 --warmup 3 --repeats 1 --microbatches 2 --no-tiny)
  gpu=(--width 16 --batch 8 --depths 3 --steps 20 --warmup 3 --repeats 1 --no-baselines --no-tiny --no-calls)
  tiny=(--width 16 --batch 8 --stages 2 --depths 3 --steps 20 --warmup 3 --repeats 1 --no-baselines --no-tiny --no-calls)
else
  tiny=(--width 16 --batch 8 --stages 2,4 --depths 1,3 --steps 300 --warmup 30 --repeats 1 --no-baselines --no-tiny)
  cpu=(--width 1024 --batch 256 --stages 1,2,4,8 --depths 1,3 --steps 30 --warmup 5 --repeats 1 --microbatches 8 --no-tiny)
  gpu=(--width 4096 --batch 1024 --depths 1,3 --steps 100 --warmup 10 --repeats 1 --no-baselines --no-tiny)
fi

# Each step runs under its own time budget (seconds; steps 1-4 sum to under 6 minutes with the set-up), says
# how long it took, and the script goes on past one that fails or is cut: a lent machine's minutes are
# few, and the bench saves every N as soon as it is measured, so a cut sweep still leaves its JSON.
# BUDGET_EQ, BUDGET_HOP, BUDGET_TINY, BUDGET_SHARE, BUDGET_CPU override them.
if [ -n "${QUICK:-}" ]; then b_eq=600 b_hop=600 b_tiny=600 b_share=600 b_cpu=600
else b_eq=120 b_hop=40 b_tiny=50 b_share=70 b_cpu=160; fi
b_eq=${BUDGET_EQ:-$b_eq} b_hop=${BUDGET_HOP:-$b_hop} b_tiny=${BUDGET_TINY:-$b_tiny} b_share=${BUDGET_SHARE:-$b_share}
b_cpu=${BUDGET_CPU:-$b_cpu}
failed=()
step() {  # step NAME BUDGET COMMAND...
  local name=$1 budget=$2 t0=$SECONDS rc=0
  shift 2
  echo "== $name (budget $budget s)"
  timeout --kill-after=15 "$budget" "$@" || rc=$?
  if [ "$rc" = 0 ]; then echo "== $name: done in $((SECONDS - t0)) s"
  else echo "== $name: FAILED (exit $rc$( [ "$rc" = 124 ] && echo ", cut at its budget")) after $((SECONDS - t0)) s"
       failed+=("$name"); fi
}

step "1. GPU tests and equivalence on $device" "$b_eq" \
  env DFA_ASYNC_TEST_DEVICE="$device" DFA_ASYNC_TEST_GPUS_PER_STAGE="$share2" bash -c '"$0" -m pytest -q -rs -p no:cacheprovider \
  tests/runtime/test_gpu.py tests/runtime/test_device.py 2>&1 | tee "$1"; exit "${PIPESTATUS[0]}"' "$py" "$out/equivalence.txt"
step "2. one hop for stages sharing the $device" "$b_hop" "$py" examples/gpu_transfer.py --out "$out/transfer"
step "3. overhead, tiny model, 2 and 4 stages sharing the $device" "$b_tiny" \
  "$py" -m dfa_async.cli bench "${tiny[@]}" --device "$device" --gpus-per-stage "$share4" --out "$out/tiny"
step "4. bench, 2 stages sharing the $device" "$b_share" \
  "$py" -m dfa_async.cli bench "${gpu[@]}" --stages 2 --device "$device" --gpus-per-stage "$share2" --out "$out/share2"
if [ -n "${FULL:-}" ]; then
  step "5. bench, 4 stages sharing the $device" "$b_share" \
    "$py" -m dfa_async.cli bench "${gpu[@]}" --stages 4 --device "$device" --gpus-per-stage "$share4" --out "$out/share4"
  step "6. bench, CPU stages" "$b_cpu" "$py" -m dfa_async.cli bench "${cpu[@]}" --no-calls --out "$out/cpu"
else
  echo "== 5, 6. benches with 4 stages sharing the $device and with CPU stages: skipped (FULL=1 runs them)"
fi
echo "== total $SECONDS s"
if [ ${#failed[@]} -gt 0 ]; then echo "device check FAILED: ${failed[*]}; results so far in $out"; exit 1; fi
echo "device check passed; results in $out"
