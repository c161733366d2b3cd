#!/usr/bin/env bash
# s2dm against PyTorch eager, the same CIFAR10 UNet, batch 16, on the CPU, in one run:
# training images/s and sampling images/s per network evaluation, with their ratio, the TFLOP/s
# reached and the model FLOP/s utilisation (UNet::forward_flops per image forward; a training
# step counts as 3 forwards).
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
s = {b["name"].split("/")[0]: b for b in json.load(open(sys.argv[1]))["benchmarks"]}
t = json.load(open(sys.argv[2]))
rows = [("training step", "BM_TrainStep", "train_images_per_sec"), ("network evaluation", "BM_SampleEval", "eval_images_per_sec")]
print(f"CIFAR10 UNet ({t['params']:,} params), CPU, {t['threads']} threads, PyTorch {t['torch']}")
print(f"{'':20s} {'s2dm img/s':>11s} {'torch img/s':>12s} {'ratio':>6s} {'s2dm TFLOP/s':>13s} {'MFU':>6s}")
for name, ours, theirs in rows:
    b = s[ours]
    print(f"{name:20s} {b['items_per_second']:11.2f} {t[theirs]:12.2f} {b['items_per_second'] / t[theirs]:6.2f}"
          f" {b['TFLOP/s']:13.3f} {b.get('MFU', float('nan')):6.1%}")
PY
