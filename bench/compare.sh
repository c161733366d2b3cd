#!/usr/bin/env bash
# s2dm against PyTorch eager, the same CIFAR10 UNet, batch 16, on the CPU, in one run:
# training images/s and sampling images/s per network evaluation, with their ratio and the
# GFLOP/s reached (6.05 GMACs per image forward; a training step counts as 3 forwards).
# Usage: bench/compare.sh [build-dir] [python]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
python=${2:-/usr/bin/python3}
threads=${THREADS:-$(nproc)}
batch=${BATCH:-16}
out=$(mktemp -d)

S2DM_BENCH_BATCH=$batch "$build/s2dm_bench" --benchmark_format=json --benchmark_out="$out/s2dm.json" \
  --benchmark_out_format=json > /dev/null
"$python" bench/reference_unet.py --batch "$batch" --threads "$threads" > "$out/torch.json"

"$python" - "$out/s2dm.json" "$out/torch.json" <<'PY'
import json, sys
s = {b["name"].split("/")[0]: b["items_per_second"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
t = json.load(open(sys.argv[2]))
gmac = 6.05
rows = [("training step", s["BM_TrainStep"], t["train_images_per_sec"], 3),
        ("network evaluation", s["BM_SampleEval"], t["eval_images_per_sec"], 1)]
print(f"CIFAR10 UNet ({t['params']:,} params), CPU, {t['threads']} threads, PyTorch {t['torch']}")
print(f"{'':20s} {'s2dm img/s':>11s} {'torch img/s':>12s} {'ratio':>6s} {'s2dm GFLOP/s':>13s}")
for name, ours, theirs, passes in rows:
    print(f"{name:20s} {ours:11.2f} {theirs:12.2f} {ours / theirs:6.2f} {ours * gmac * 2 * passes:13.1f}")
PY
