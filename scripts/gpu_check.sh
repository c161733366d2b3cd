#!/usr/bin/env bash
# On a CUDA machine without internet (no apt, PyTorch with CUDA installed): unpack the bundled .debs from
# scripts/gpu_bundle.sh into a private prefix, build s2dm against the pip-installed PyTorch's
# LibTorch with CUDA, run the tests, then the benchmarks against PyTorch eager, and a short real
# training run on Fashion-MNIST. Prints a table of figures last and writes everything to
# RESULTS_DIR (first argument, default gpu_results/).
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(realpath -m "${1:-gpu_results}")
mkdir -p "$results"
python=${PYTHON:-python3}
prefix=$PWD/gpu_bundle/prefix
jobs=$(nproc)

step() { echo; echo "=== $* ==="; }

step "unpack dependencies into $prefix"
mkdir -p "$prefix"
for deb in gpu_bundle/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
multiarch=$prefix/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$multiarch:${LD_LIBRARY_PATH:-}"
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' \
  | tee "$results/device.txt"

step "configure and build"
# NCCL's header (for c10d's NCCL group) comes with pip's nvidia-nccl package, beside PyTorch.
nccl_include=$("$python" -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "include"))' 2>/dev/null || true)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr;$multiarch/cmake" \
  -DCMAKE_INCLUDE_PATH="$prefix/usr/include;$nccl_include" -DCMAKE_LIBRARY_PATH="$multiarch" \
  -DCMAKE_CUDA_ARCHITECTURES=native 2>&1 | tee "$results/configure.txt" | tail -5
cmake --build build-gpu -j "$jobs" 2>&1 | tee "$results/build.txt" | tail -5
[ -x build-gpu/s2dm ] || { echo "build failed: see $results/build.txt"; exit 1; }
build-gpu/s2dm info | tee "$results/info.txt"

step "tests"
(cd build-gpu && ctest --output-on-failure -j 4 2>&1) | tee "$results/tests.txt" | tail -15

step "benchmarks (s2dm vs PyTorch eager, same machine, same run)"
bench() {  # name config batch precision [VAR=VALUE ...: s2dm_bench feature switches]
  local name=$1 cfg=$2 batch=$3 precision=$4 flag="" filter=BM_TrainStep
  shift 4
  [ "$precision" = bf16 ] && flag=--bf16
  [[ "$name" == *eval* ]] && filter=BM_SampleEval
  env S2DM_BENCH_DEVICE=cuda S2DM_BENCH_CONFIG=$cfg S2DM_BENCH_BATCH=$batch S2DM_BENCH_PRECISION=$precision "$@" \
    build-gpu/s2dm_bench --benchmark_filter=$filter --benchmark_format=json \
    --benchmark_min_time=3 > "$results/s2dm_$name.json" 2>/dev/null
  [ $# -gt 0 ] && return  # feature switches: compared with s2dm's own default run
  local ref=cifar10
  [[ "$cfg" == *celeba* ]] && ref=celeba64
  "$python" bench/reference_unet.py --device cuda --batch "$batch" --config "$ref" $flag --min-time 3 \
    > "$results/torch_$name.json"
}
for precision in bf16 fp32; do
  bench "cifar10_b128_$precision" configs/train/cifar10_ddpm.yaml 128 $precision
  bench "celeba64_b128_$precision" configs/train/celeba64_ddpm.yaml 128 $precision
  # Each speed feature off in turn (its gain = default / this).
  bench "cifar10_b128_${precision}_no-channels-last" configs/train/cifar10_ddpm.yaml 128 $precision S2DM_BENCH_CHANNELS_LAST=0
  bench "cifar10_b128_${precision}_no-fused-adam" configs/train/cifar10_ddpm.yaml 128 $precision S2DM_BENCH_FUSED_ADAM=0
  bench "cifar10_b128_${precision}_no-tf32" configs/train/cifar10_ddpm.yaml 128 $precision S2DM_BENCH_TF32=0
done
for batch in 1 64 1024; do
  bench "cifar10_eval_b$batch" configs/train/cifar10_ddpm.yaml $batch bf16
  bench "cifar10_eval_b${batch}_no-cuda-graphs" configs/train/cifar10_ddpm.yaml $batch bf16 S2DM_BENCH_CUDA_GRAPHS=0
done

step "data parallel: one rank of an NCCL group against no group (CIFAR10 UNet, batch 128)"
DEVICE=cuda BATCH=128 STEPS=40 NPROC=$(nvidia-smi -L 2>/dev/null | wc -l) bash bench/data_parallel.sh build-gpu 2>&1 |
  tee "$results/data_parallel.txt"

step "a short real training run on Fashion-MNIST"
build-gpu/s2dm train --config configs/train/fmnist.yaml --set data.path=gpu_bundle/fashion-mnist \
  --set train.steps=3000 --run-dir "$results/fmnist_run" --overwrite 2>&1 | tail -5 | tee "$results/fmnist_train.txt"
build-gpu/s2dm sample --checkpoint "$results/fmnist_run/checkpoints/latest.ckpt" --steps 50 --timesteps quad \
  --num 64 --out "$results/fmnist_run/samples/ddim50" 2>&1 | tail -3

step "figures"
"$python" - "$results" <<'PY' | tee "$results/figures.txt"
import glob, json, os, sys
r = sys.argv[1]
def s2dm(name):
    try:
        return {b["name"].split("/")[0]: b for b in json.load(open(f"{r}/s2dm_{name}.json"))["benchmarks"]}
    except Exception:
        return {}
def ref(name):
    try:
        return json.load(open(f"{r}/torch_{name}.json"))
    except Exception:
        return {}
print(f"{'benchmark':40s} {'s2dm img/s':>11s} {'torch img/s':>12s} {'ratio':>6s} {'MFU':>6s} {'torch peak GiB':>15s}")
for name in sorted(os.path.basename(p)[5:-5] for p in glob.glob(f"{r}/s2dm_*.json")):
    s = s2dm(name)
    base = name.split("_no-")[0]
    t = ref(base)
    key, tkey = ("BM_SampleEval", "eval_images_per_sec") if "eval" in name else ("BM_TrainStep", "train_images_per_sec")
    ours = s.get(key, {}).get("items_per_second", float("nan"))
    mfu = s.get(key, {}).get("MFU", float("nan"))
    if "_no-" in name:  # a feature switched off: the ratio is the default run over this one
        default = s2dm(base).get(key, {}).get("items_per_second", float("nan"))
        print(f"{name:40s} {ours:11.1f} {'(gain)':>12s} {default / ours if ours else float('nan'):6.2f} {mfu:6.1%}")
        continue
    theirs = t.get(tkey, float("nan"))
    print(f"{name:40s} {ours:11.1f} {theirs:12.1f} {ours / theirs if theirs else float('nan'):6.2f} {mfu:6.1%} {t.get('peak_gib', 0):15.2f}")
PY
cat "$results/data_parallel.txt" 2>/dev/null
tail -3 "$results/tests.txt"
