#!/usr/bin/env bash
# The main job on the embedded default: set-up, build, train the small UNet of
# configs/train/fmnist.yaml on Fashion-MNIST (L_simple + L_skip), sample with DDIM, and print
# where the samples are. About 15 minutes on 2 CPU cores.
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
"$s2dm" sample --checkpoint "$run_dir/checkpoints/latest.ckpt" --sampler ddim --steps 50 --num 64 --seed 1 \
  --out "$run_dir/samples/ddim50"
echo
echo "quickstart done: samples in $run_dir/samples/ddim50/ (grid: $run_dir/samples/ddim50/grid.png)"
