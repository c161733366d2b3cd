#!/usr/bin/env bash
# The main job on the embedded default: set-up, build, train the small UNet of
# configs/train/fmnist.yaml on Fashion-MNIST (L_simple + L_skip) for a time budget, sample with
# the sampler, grid and clipping that measured best at 10 steps (the sample section of that config), measure
# the samples' Fréchet distance in the features of a small Fashion-MNIST classifier (trained once,
# then reused), and print one line naming the result and what produced it. About 13 minutes on a
# 2-core CPU once built.
#
# TRAIN_MINUTES (default 10) budgets the training by wall-clock time rather than steps: a fast
# machine trains more steps in it, a slow one fewer (the learning rate is constant after warm-up,
# so the run simply ends earlier). Run it again and a finished budget trains no further; raise
# TRAIN_MINUTES to continue the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DS2DM_BUILD_TESTS=OFF -DS2DM_BUILD_BENCH=OFF
s2dm=${S2DM_BUILD_DIR:-build}/s2dm
run_dir=${RUN_DIR:-runs/fmnist}
minutes=${TRAIN_MINUTES:-10}
start=$SECONDS

"$s2dm" info
if [ -f "$run_dir/checkpoints/latest.ckpt" ]; then
  "$s2dm" train --resume --run-dir "$run_dir" --set train.max_minutes="$minutes" "$@"
else
  "$s2dm" train --config configs/train/fmnist.yaml --run-dir "$run_dir" --set train.max_minutes="$minutes" "$@"
fi
checkpoint=$run_dir/checkpoints/latest.ckpt

# DPM-Solver++(2M), 10 log-SNR steps, x̂₀ clipped: why, in the sample section of configs/train/fmnist.yaml.
out=$run_dir/samples/dpmpp2m-10
"$s2dm" sample --checkpoint "$checkpoint" --sampler dpmpp-2m --steps 10 --timesteps logsnr \
  --set sample.clip_denoised=true --num 512 --seed 1 --no-png --out "$out"

# Inception FID does not suit 32x32 grey clothing: measure FD in a classifier's features instead.
classifier=${CLASSIFIER:-runs/classifier/fmnist_cnn.safetensors}
if [ ! -f "$classifier" ]; then
  mkdir -p "$(dirname "$classifier")"
  "$s2dm" train-classifier --data configs/train/fmnist.yaml --out "$classifier" --epochs 2
fi
"$s2dm" fid "$out/samples.npz" configs/train/fmnist.yaml --features "classifier:$classifier" --num 10000 | tee "$out/fd.txt"

fd=$(awk '/^FD/ {print $2}' "$out/fd.txt")
trained=$("$s2dm" info --checkpoint "$checkpoint" | sed -n 's/^checkpoint: *[^(]*(\(.*\))$/\1/p')
echo
echo "quickstart: FD[fmnist-cnn] $fd for 512 samples of DPM-Solver++(2M), 10 log-SNR steps, x̂₀ clipped;"
echo "            model at $trained; $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s after the build"
echo "            samples: $out/samples.npz, grid of the first 64: $out/grid.png"
