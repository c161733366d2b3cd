#!/usr/bin/env bash
# Data-parallel training against one process, in one run: images/s of the CIFAR10 UNet's training
# step (L_skip) at the same global batch, and the time a rank spends averaging gradients per step.
#   DEVICE=cpu (default): 1 process x all threads against NPROC Gloo ranks x threads/NPROC each.
#   DEVICE=cuda: 1 process without a process group against 1 rank of an NCCL group (the group's
#   overhead), and against NPROC ranks with one GPU each when NPROC > 1.
# Synthetic CIFAR10-format data (the step's cost does not depend on the pixels).
# Usage: bench/data_parallel.sh [build-dir]   (DEVICE=cpu BATCH=16 STEPS=6 NPROC=2 THREADS=$(nproc))
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
device=${DEVICE:-cpu}
batch=${BATCH:-16}
steps=${STEPS:-6}
nproc=${NPROC:-2}
threads=${THREADS:-$(nproc)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/cifar"
python3 - "$work/cifar" <<'PY'
import os, sys
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    with open(os.path.join(sys.argv[1], name + ".bin"), "wb") as f:
        for i in range(256):
            f.write(bytes([i % 10]) + os.urandom(3072))
PY

# `train NAME [ENV...] -- [ARGS...]`: the recipe for $steps steps; prints the last log line
# (the interval after the first steps' warm-up).
train() {
  local name=$1 envs=()
  shift
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$build/s2dm" train --config configs/train/cifar10_s2dm.yaml --run-dir "$work/$name" \
    --device "$device" --set data.path="$work/cifar" --set train.batch_size="$batch" --set train.steps="$steps" \
    --set train.log_every=$((steps / 2)) --set train.ckpt_every=1000000 --set train.sample_num=0 "$@" \
    > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log" >&2; exit 1; }
  echo "$name $(tail -1 "$work/$name/metrics.jsonl")"
}

results=()
if [ "$device" = cpu ]; then
  results+=("$(train "1 process x $threads threads" -- --set threads="$threads")")
  results+=("$(train "$nproc ranks x $((threads / nproc > 0 ? threads / nproc : 1)) threads (gloo)" -- \
    --set threads=$((threads / nproc > 0 ? threads / nproc : 1)) --nproc "$nproc")")
else
  results+=("$(train "1 process, no group" -- )")
  results+=("$(train "1 rank of an nccl group" RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 -- )")
  [ "$nproc" -gt 1 ] && results+=("$(train "$nproc ranks (nccl, 1 GPU each)" -- --nproc "$nproc")")
fi
printf '%s\n' "${results[@]}" > "$work/results.txt"
python3 - "$work/results.txt" "$batch" "$device" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    cut = line.index(" {")
    rows.append((line[:cut], json.loads(line[cut + 1:])))
batch = int(sys.argv[2])
print(f"CIFAR10 UNet training step (L_skip), {sys.argv[3]}, global batch {batch}, last logged interval")
print(f"{'':34s} {'img/s':>8s} {'ratio':>6s} {'s/step':>8s} {'all-reduce s/step':>18s}")
base = rows[0][1]["images_per_sec"]
for name, m in rows:
    step = batch / m["images_per_sec"]
    comm = m.get("allreduce_seconds")
    comm_text = f"{comm:10.4f} ({comm / step:5.1%})" if comm is not None else f"{'-':>18s}"
    print(f"{name:34s} {m['images_per_sec']:8.2f} {m['images_per_sec'] / base:6.3f} {step:8.3f} {comm_text}")
PY
