#!/usr/bin/env bash
# The main job on the embedded default: set-up, build, train the small UNet of
# configs/train/fmnist.yaml on Fashion-MNIST (L_simple + L_skip), sample with DDIM, measure the
# samples' Fréchet distance in the features of a small Fashion-MNIST classifier (trained once,
# then reused), and print where everything is. About 15-18 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DS2DM_BUILD_TESTS=OFF -DS2DM_BUILD_BENCH=OFF
s2dm=${S2DM_BUILD_DIR:-build}/s2dm
run_dir=${RUN_DIR:-runs/fmnist}

"$s2dm" info
if [ -f "$run_dir/checkpoints/latest.ckpt" ]; then
  "$s2dm" train --resume --run-dir "$run_dir" "$@"
else
  "$s2dm" train --config configs/train/fmnist.yaml --run-dir "$run_dir" "$@"
fi
# DDIM, 50 quadratic steps, x̂₀ clipped (the sample section of configs/train/fmnist.yaml).
"$s2dm" sample --checkpoint "$run_dir/checkpoints/latest.ckpt" --sampler ddim --steps 50 --num 512 --seed 1 \
  --no-png --out "$run_dir/samples/ddim50"

# Inception FID does not suit 32x32 grey clothing: measure FD in a classifier's features instead.
classifier=${CLASSIFIER:-runs/classifier/fmnist_cnn.safetensors}
if [ ! -f "$classifier" ]; then
  mkdir -p "$(dirname "$classifier")"
  "$s2dm" train-classifier --data configs/train/fmnist.yaml --out "$classifier" --epochs 2
fi
"$s2dm" fid "$run_dir/samples/ddim50/samples.npz" configs/train/fmnist.yaml --features "classifier:$classifier" \
  --num 10000 | tee "$run_dir/samples/ddim50/fd.txt"
echo
echo "quickstart done: 512 samples in $run_dir/samples/ddim50/samples.npz, grid: $run_dir/samples/ddim50/grid.png"
