#!/usr/bin/env bash
# The one command a lent GPU machine runs (README, "On a GPU machine"). It measures first and
# tests second, inside a time budget, and goes on whatever fails:
#   preflight (tools, the bundle, PyTorch and the GPU, CUDA's headers)  →  build s2dm and
#   s2dm_bench from the bundle of scripts/gpu_bundle.sh against pip's LibTorch  →  benchmarks,
#   each beside PyTorch running the same UNet with the same speed switches  →  a short
#   Fashion-MNIST training run with samples and their FD  →  the GPU tests (CUDA graphs, fused
#   Adam, a CUDA resume, one NCCL rank)  →  torch.compile reference rows  →  s2dm with each speed
#   feature off in turn (its gain)  →  the table again.
# Every step runs under its own timeout, cut to the time left; each figure is appended to
# OUT/figures.md (and printed) as soon as it exists; a failed step leaves its log in OUT/logs and
# the script goes on. Exit status: 0 when every step passed, 1 otherwise.
#
# Usage: scripts/gpu_check.sh [options] [-- extra CMake arguments]
#   --out DIR           results (default: $OUT, the folder the device tool brings back, else gpu_results)
#   --budget SECONDS    time for the whole run (default 540, 7200 with --build-only); a step's limit is cut to what is left
#                       less 15 s for the table, and a step with under 10 s left is skipped
#   --cpu               a dry run on the CPU at tiny sizes: this script's logic, tested by the suite
#   --prebuilt DIR      s2dm, s2dm_bench and s2dm_tests already built in DIR: no bundle, no build
#   --build-only        preflight and build, nothing else (scripts/test_torch2.sh --cuda)
#   --tests-only        preflight, build and the GPU tests (a second call on a warm machine, whose
#                       build folder is kept, when the first run's budget left the tests no time)
#   --bundle DIR        the bundle (default gpu_bundle)
#   --build-dir DIR     where to build (default build-gpu)
#   --torch-prefix DIR  LibTorch's CMake prefix (default: asked of the Python's torch)
#   --python PYTHON     Python with PyTorch, for the reference rows (default python3)
#   --jobs N            build jobs (default: every core)
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-gpu_results} budget="" cpu=false prebuilt="" build_only=false bundle=gpu_bundle build=build-gpu
tests_only=false torch_prefix="" python=python3 jobs=$(nproc) cmake_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --budget) budget=$2; shift ;;
    --cpu) cpu=true ;;
    --prebuilt) prebuilt=$2; build=$2; shift ;;
    --build-only) build_only=true ;;
    --tests-only) tests_only=true ;;
    --bundle) bundle=$2; shift ;;
    --build-dir) build=$2; shift ;;
    --torch-prefix) torch_prefix=$2; shift ;;
    --python) python=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --) shift; cmake_extra=("$@"); break ;;
    *) echo "gpu_check: unknown option '$1' (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
# (A build alone, on a CI machine's few cores, gets two hours.)
[ -n "$budget" ] || { $build_only && budget=7200 || budget=540; }
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget '$budget' is not a number of seconds" >&2; exit 2; }
if $cpu && [ -z "$prebuilt" ]; then echo "gpu_check: --cpu needs --prebuilt DIR (a CPU build)" >&2; exit 2; fi
mkdir -p "$out/logs" "$out/json" || exit 2
out=$(realpath "$out") build=$(realpath -m "$build") bundle=$(realpath -m "$bundle")
rm -f "$out"/logs/* "$out"/json/* "$out/include_dirs.txt"
: > "$out/steps.tsv"
: > "$out/figures.tsv"
: > "$out/figures.md"
deadline=$((SECONDS + budget))
reserve=15
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # (the Fashion-MNIST run's checkpoints: not results)
trap 'rm -rf "$work"' EXIT

# What this run measures. The dry run keeps every kind of step at the smallest size.
if $cpu; then
  device=cpu threads=1 precisions=(fp32) train_batch=2 eval_batches=(1 2) inception_batch=2 min_time=0.1
  declare -A bench_config=([cifar10]=tests/configs/tiny.yaml [celeba64]=tests/configs/tiny.yaml)
  fmnist_config=tests/configs/tiny.yaml fmnist_data=/usr/share/datasets/fashion-mnist
  fmnist_train=(--steps 4) fmnist_num=16 classifier=(--epochs 1 --limit 256)
  limit_bench=60 limit_reference=10 limit_fmnist=180 limit_tests=120 limit_compile=10
else
  device=cuda threads=0 precisions=(bf16 fp32) train_batch=128 eval_batches=(1 64 1024) inception_batch=200 min_time=2
  declare -A bench_config=([cifar10]=configs/train/cifar10_ddpm.yaml [celeba64]=configs/train/celeba64_ddpm.yaml)
  fmnist_config=configs/train/fmnist.yaml fmnist_data=$bundle/fashion-mnist
  fmnist_train=(--set train.max_minutes=1.5) fmnist_num=512 classifier=(--epochs 2)
  limit_bench=45 limit_reference=60 limit_fmnist=200 limit_tests=240 limit_compile=150
fi
gpu_tests='CudaGraphs.*:Optim.FusedAdam*:DataParallel.CudaTraining*:DataParallel.OneNccl*'
prefix=$build/prefix  # (the unpacked bundle: beside the build, never inside the carried bundle)
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export TORCH_CUDA_ARCH_LIST=9.0  # (the H200; LibTorch's CMake would otherwise probe the GPU)
failures=0

say() { echo "$*" | tee -a "$out/figures.md"; }

# run_limited LIMIT COMMAND...: COMMAND (a function of this script too) in a process group of its
# own, stopped with everything it started after LIMIT seconds (status 124, as timeout's).
# A signal to this script stops the running step's group too.
running=""
trap '[ -z "$running" ] || kill -KILL -- -"$running" 2> /dev/null; exit 130' INT
trap '[ -z "$running" ] || kill -KILL -- -"$running" 2> /dev/null; exit 143' TERM
run_limited() {
  local limit=$1 end code=0
  shift
  end=$((SECONDS + limit))
  set -m  # (job control: the background job gets its own process group)
  ("$@") &
  running=$!
  set +m
  while kill -0 "$running" 2> /dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if kill -0 "$running" 2> /dev/null; then
    kill -TERM -- -"$running" 2> /dev/null
    end=$((SECONDS + 5))
    while kill -0 "$running" 2> /dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
    kill -KILL -- -"$running" 2> /dev/null
    wait "$running" 2> /dev/null
    code=124
  else
    wait "$running" || code=$?
  fi
  running=""
  return $code
}

# step NAME LIMIT COMMAND...: runs COMMAND under a timeout cut to the time left, its output in
# logs/NAME.log; records the outcome in steps.tsv; returns COMMAND's status.
step() {
  local name=$1 limit=$2 left=$((deadline - SECONDS - reserve)) start=$SECONDS code=0 outcome
  shift 2
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped: no time left\t0\t0\n' "$name" >> "$out/steps.tsv"
    echo "--- $name: skipped, no time left"
    failures=$((failures + 1))
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "--- $name (limit $limit s)"
  run_limited "$limit" "$@" > "$out/logs/$name.log" 2>&1 || code=$?
  case $code in
    0) outcome=passed ;;
    124) outcome="timed out after $limit s" ;;
    *) outcome="failed with exit $code" ;;
  esac
  printf '%s\t%s\t%d\t%d\n' "$name" "$outcome" $((SECONDS - start)) "$limit" >> "$out/steps.tsv"
  if [ $code -ne 0 ]; then
    failures=$((failures + 1))
    echo "    $outcome; the end of logs/$name.log:"
    tail -5 "$out/logs/$name.log" | sed 's/^/    /'
  fi
  return $code
}

# skip NAME WHY: a step that cannot run.
skip() {
  printf '%s\tskipped: %s\t0\t0\n' "$1" "$2" >> "$out/steps.tsv"
  echo "--- $1: skipped, $2"
  failures=$((failures + 1))
}

# figure WHAT WHO IMAGES_PER_S [PEAK_GIB]: one measured figure, kept and shown at once (a step that
# passed without one, e.g. a benchmark skipped with an error, counts as failed).
figure() {
  local rate peak=-
  if [ -z "$3" ]; then
    say "| $1 | $2 | no figure in its output | - |"
    failures=$((failures + 1))
    return 1
  fi
  rate=$(printf '%.1f' "$3" 2> /dev/null) || rate=$3
  [ -n "${4:-}" ] && { peak=$(printf '%.2f' "$4" 2> /dev/null) || peak=$4; }
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$rate" "${peak#-}" >> "$out/figures.tsv"
  say "| $1 | $2 | $rate | $peak |"
}

# The first value of "KEY": in a JSON file (Google Benchmark's, one key per line, or the
# reference's single line).
json_number() {
  grep -o "\"$2\": *[-0-9.eE+naif]*" "$1" 2>/dev/null | head -1 | sed 's/.*: *//'
}

have_binaries() { [ -x "$build/s2dm" ] && [ -x "$build/s2dm_bench" ]; }

# --- preflight -------------------------------------------------------------------------------
# Facts and checks in preflight.txt; what the build needs found here (torch_prefix, include dirs).
preflight() {
  local ok=0 tool header dir found
  for tool in cmake c++ $($cpu || echo nvcc) $([ -n "$prebuilt" ] || echo dpkg-deb); do
    command -v "$tool" > /dev/null && echo "tool $tool: $(command -v "$tool")" || { echo "MISSING tool: $tool"; ok=1; }
  done
  echo "cmake: $(cmake --version | head -1)"
  if [ -z "$prebuilt" ] && ! $cpu; then
    if [ ! -f "$bundle/manifest.txt" ]; then
      echo "MISSING bundle: $bundle/manifest.txt (run scripts/gpu_bundle.sh and carry gpu_bundle)"
      ok=1
    else
      while read -r file; do
        [ -s "$bundle/$file" ] || { echo "MISSING in the bundle: $file"; ok=1; }
      done < <(awk '$1 == "deb" {print "debs/" $3} $1 == "data" {print $2}' "$bundle/manifest.txt")
      echo "bundle: $(grep -c '^deb ' "$bundle/manifest.txt") packages, $(grep -c '^data ' "$bundle/manifest.txt") data files"
    fi
  fi
  if ! $cpu; then
    # CUDA's headers that LibTorch's ATen/cuda headers include, in the toolkit or pip's nvidia packages.
    local nvcc_dir toolkit_dirs=() pip_dirs=()
    nvcc_dir=$(dirname "$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent)")")
    toolkit_dirs=("$nvcc_dir/../include" "$nvcc_dir/../targets/x86_64-linux/include" /usr/local/cuda/include /usr/include)
    mapfile -t pip_dirs < <("$python" -c 'import glob, os, nvidia; [print(d) for p in nvidia.__path__ for d in sorted(glob.glob(os.path.join(p, "*", "include")))]' 2>/dev/null)
    for header in cuda_runtime_api.h cublas_v2.h cusparse.h cusolverDn.h nccl.h; do
      found=""
      for dir in "${toolkit_dirs[@]}" "${pip_dirs[@]}"; do
        [ -f "$dir/$header" ] && { found=$(realpath "$dir"); break; }
      done
      if [ -n "$found" ]; then
        echo "header $header: $found"
        echo "$found" >> "$out/include_dirs.txt"
      else
        echo "MISSING header: $header (looked in the CUDA toolkit beside nvcc, /usr/local/cuda and pip's nvidia packages)"
        ok=1
      fi
    done
  fi
  if ! $build_only; then  # (the reference rows need it even where --torch-prefix is given)
    "$python" -u - "$device" <<'PY' || ok=1
import sys, torch
print("torch_prefix", torch.utils.cmake_prefix_path)
print("torch", torch.__version__, "cuda", torch.version.cuda)
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "torch sees no GPU"
    print("gpu", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
  fi
  return $ok
}

# --- build -----------------------------------------------------------------------------------
# Unpacks the bundle into a fresh private prefix (absolute symbolic links, such as Debian's
# libz.so, pointed into it), configures against LibTorch and builds s2dm and s2dm_bench.
# (Steps run where errexit is off: each failure returns by hand.)
build_s2dm() {
  rm -rf "$prefix" && mkdir -p "$prefix" || return
  for deb in "$bundle"/debs/*.deb; do dpkg-deb -x "$deb" "$prefix" || return; done
  find "$prefix" -type l | while read -r link; do
    target=$(readlink "$link")
    if [[ $target == /* ]]; then ln -sfn "$prefix$target" "$link" || exit; fi
  done || return
  local generator=(-G "Unix Makefiles") include_path
  command -v ninja > /dev/null && generator=(-G Ninja)
  include_path=$(sort -u "$out/include_dirs.txt" 2>/dev/null | paste -sd ';')
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DS2DM_REQUIRE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DS2DM_GLOO=OFF \
    -DS2DM_BUILD_TESTS=ON -DS2DM_BUILD_BENCH=ON \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DCMAKE_INCLUDE_PATH="$include_path" \
    -DCMAKE_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu" "${cmake_extra[@]}" || return
  local targets=(s2dm s2dm_bench)
  $build_only && targets+=(s2dm_tests)  # (a GPU run builds the tests later, in their own step)
  cmake --build "$build" -j "$jobs" --target "${targets[@]}" || return
  "$build/s2dm" info
}

# --- benchmarks ------------------------------------------------------------------------------
# s2dm_bench NAME MODEL BATCH PRECISION BENCHMARK [VAR=VALUE...]: one of s2dm's benchmarks (with
# bench_unet.cpp's switches VAR), its JSON in json/.
s2dm_bench() {
  env "${@:6}" S2DM_BENCH_DEVICE=$device S2DM_BENCH_CONFIG="${bench_config[$2]}" S2DM_BENCH_BATCH="$3" \
    S2DM_BENCH_PRECISION="$4" S2DM_BENCH_MIN_TIME=$min_time \
    "$build/s2dm_bench" --benchmark_filter="^$5" --benchmark_out="$out/json/$1.json" --benchmark_out_format=json
}

# reference NAME ARGS...: bench/reference_unet.py, its JSON line in json/.
reference() {
  local name=$1
  shift
  "$python" bench/reference_unet.py --device $device --threads $threads --min-time $min_time "$@" > "$out/json/$name.json"
}

# pair WHAT MODEL BATCH PRECISION MODE: s2dm and PyTorch on the same work, each a step.
pair() {
  local what=$1 model=$2 batch=$3 precision=$4 mode=$5 benchmark=BM_TrainStep key=train bf16=()
  [ "$mode" = eval ] && benchmark=BM_SampleEval key=eval
  [ "$precision" = bf16 ] && bf16=(--bf16)
  local name=${what// /_}
  if have_binaries; then
    step "s2dm_$name" $limit_bench s2dm_bench "s2dm_$name" "$model" "$batch" "$precision" $benchmark &&
      figure "$what" s2dm "$(json_number "$out/json/s2dm_$name.json" items_per_second)" \
        "$(json_number "$out/json/s2dm_$name.json" peak_GiB)"
  else
    skip "s2dm_$name" "no s2dm build"
  fi
  step "torch_$name" $limit_reference reference "torch_$name" --batch "$batch" --config "$model" "${bf16[@]}" --mode $mode &&
    figure "$what" "PyTorch eager" "$(json_number "$out/json/torch_$name.json" ${key}_images_per_sec)" \
      "$(json_number "$out/json/torch_$name.json" ${key}_peak_gib)"
}

# --- the Fashion-MNIST run -------------------------------------------------------------------
fmnist_run() {
  local run=$work/fmnist_run s2dm=$build/s2dm
  mkdir -p "$out/fmnist" || return
  "$s2dm" train --config $fmnist_config --set data.path="$fmnist_data" --device $device --set threads=$threads --run-dir "$run" "${fmnist_train[@]}" || return
  "$s2dm" sample --checkpoint "$run/checkpoints/latest.ckpt" --sampler dpmpp-2m --steps 10 --timesteps logsnr \
    --set sample.clip_denoised=true --num $fmnist_num --seed 1 --no-png --device $device --set threads=$threads --out "$run/samples" || return
  "$s2dm" train-classifier --data "$run/config.yaml" --out "$work/fmnist_cnn.safetensors" --device $device --threads $threads "${classifier[@]}" || return
  "$s2dm" fid "$run/samples/samples.npz" "$run/config.yaml" --features "classifier:$work/fmnist_cnn.safetensors" \
    --num $fmnist_num --device $device --threads $threads > "$out/fmnist/fd.txt" || return
  cat "$out/fmnist/fd.txt"
  cp "$run/samples/grid.png" "$run/metrics.jsonl" "$out/fmnist/"
}

# --- the GPU tests ---------------------------------------------------------------------------
# One process per test, so that a crash (seen on the H200: SIGSEGV after a failed check) hides
# none of the others; each test's outcome is a line "gpu_test NAME: exit CODE".
gpu_tests() {
  [ -n "$prebuilt" ] || cmake --build "$build" -j "$jobs" --target s2dm_tests || return
  local name code failed=0
  for name in $("$build/s2dm_tests" --gtest_filter="$gpu_tests" --gtest_list_tests |
                awk '/^[^ ]/ { suite = $1 } /^  / { print suite $1 }'); do
    code=0
    "$build/s2dm_tests" --gtest_filter="$name" || code=$?
    echo "gpu_test $name: exit $code"
    [ $code -eq 0 ] || failed=1
  done
  return $failed
}

# gpu_tests_step LIMIT: the step, and its counts as a figure (a test that skipped exits 0 and says so).
gpu_tests_step() {
  step gpu_tests "$1" gpu_tests
  grep -q '^gpu_test ' "$out/logs/gpu_tests.log" 2> /dev/null &&
    say "| GPU tests ($gpu_tests): passed, skipped, failed | s2dm | $(awk '
      /^\[  SKIPPED \] [0-9]+ test/ { s += $4 } /^gpu_test .*: exit 0$/ { ok++ } /^gpu_test .*: exit [1-9]/ { f++ }
      END { printf "passed %d, skipped %d, failed %d", ok - s, s, f }' "$out/logs/gpu_tests.log") | - |"
}

# --- the run ---------------------------------------------------------------------------------
say "# gpu_check $(date -u '+%F %T') UTC: $($cpu && echo "dry run on the CPU" || echo "GPU run"), budget $budget s"
$cpu && say "(A dry run: s2dm runs the tiny test config, the references the real UNets; the figures compare nothing.)"
say ""
step preflight 60 preflight
tee "$out/preflight.txt" < "$out/logs/preflight.log" | grep -E '^(torch|gpu|cmake|MISSING)' | sed 's/^/    /'
[ -n "$torch_prefix" ] || torch_prefix=$(sed -n 's/^torch_prefix //p' "$out/preflight.txt")

if [ -n "$prebuilt" ]; then
  have_binaries || skip build "no s2dm and s2dm_bench in $prebuilt"
elif [ -z "$torch_prefix" ]; then
  skip build "no LibTorch (the preflight found no torch in $python; --torch-prefix names one)"
else
  step build $($build_only && echo $budget || echo 420) build_s2dm
fi
if $tests_only; then
  if have_binaries; then gpu_tests_step $budget; else skip gpu_tests "no s2dm build"; fi
fi
if $build_only || $tests_only; then
  cat "$out/steps.tsv"
  [ $failures -eq 0 ]
  exit
fi
have_binaries && say "$(run_limited 30 "$build/s2dm" info --device $device 2>&1 | sed 's/^/    /')"

say ""
say "| measured | by | images/s | peak GiB |"
say "|---|---|---|---|"
for precision in "${precisions[@]}"; do
  for model in cifar10 celeba64; do
    pair "train $model b$train_batch $precision" $model $train_batch $precision train
  done
done
for batch in "${eval_batches[@]}"; do
  pair "eval cifar10 b$batch bf16" cifar10 "$batch" bf16 eval
done
if have_binaries; then
  step s2dm_inception $limit_bench s2dm_bench s2dm_inception cifar10 $inception_batch fp32 BM_InceptionFeatures &&
    figure "inception features b$inception_batch" s2dm "$(json_number "$out/json/s2dm_inception.json" items_per_second)"
else
  skip s2dm_inception "no s2dm build"
fi
step torch_inception $limit_reference reference torch_inception --inception --batch $inception_batch &&
  figure "inception features b$inception_batch" "PyTorch eager (torchvision)" \
    "$(json_number "$out/json/torch_inception.json" inception_images_per_sec)"

if have_binaries; then
  step fmnist $limit_fmnist fmnist_run &&
    say "| fmnist: FD[fmnist-cnn] of $fmnist_num DPM-Solver++(2M) 10-step samples | s2dm | $(awk '/^FD/ {print $2}' "$out/fmnist/fd.txt") | - |"
  gpu_tests_step $limit_tests
else
  skip fmnist "no s2dm build"
  skip gpu_tests "no s2dm build"
fi

# torch.compile rows last: compiling takes minutes, and the eager rows are the comparison.
step torch_compile_train $limit_compile reference torch_compile_train --compile --mode train \
  --batch $train_batch --config cifar10 --bf16 &&
  figure "train cifar10 b$train_batch bf16" "PyTorch torch.compile" \
    "$(json_number "$out/json/torch_compile_train.json" train_images_per_sec)" \
    "$(json_number "$out/json/torch_compile_train.json" train_peak_gib)"
step torch_compile_eval $limit_compile reference torch_compile_eval --compile --mode eval \
  --batch "${eval_batches[1]}" --config cifar10 --bf16 &&
  figure "eval cifar10 b${eval_batches[1]} bf16" "PyTorch torch.compile" \
    "$(json_number "$out/json/torch_compile_eval.json" eval_images_per_sec)" \
    "$(json_number "$out/json/torch_compile_eval.json" eval_peak_gib)"

# Each speed feature switched off in turn: its gain is the default's speed over this one's.
gain() {  # gain WHAT MODEL BATCH PRECISION BENCHMARK FEATURE VAR
  local name="s2dm_${1// /_}_no-$6"
  have_binaries || { skip "$name" "no s2dm build"; return; }
  step "$name" $limit_bench s2dm_bench "$name" "$2" "$3" "$4" "$5" "$7=0" &&
    figure "$1" "s2dm, $6 off" "$(json_number "$out/json/$name.json" items_per_second)" \
      "$(json_number "$out/json/$name.json" peak_GiB)"
}
train_row="train cifar10 b$train_batch ${precisions[0]}"
gain "$train_row" cifar10 $train_batch "${precisions[0]}" BM_TrainStep channels-last S2DM_BENCH_CHANNELS_LAST
gain "$train_row" cifar10 $train_batch "${precisions[0]}" BM_TrainStep fused-adam S2DM_BENCH_FUSED_ADAM
# (TF32 is an fp32 feature: under bf16 autocast it would gain nothing by construction.)
gain "train cifar10 b$train_batch fp32" cifar10 $train_batch fp32 BM_TrainStep tf32 S2DM_BENCH_TF32
gain "eval cifar10 b${eval_batches[1]} bf16" cifar10 "${eval_batches[1]}" bf16 BM_SampleEval cuda-graphs S2DM_BENCH_CUDA_GRAPHS

# The table again: each measurement with s2dm's speed over each reference's.
say ""
say "## s2dm against the references (ratio = s2dm images/s / the row's images/s; for \"s2dm, … off\" rows: that feature's gain)"
say ""
say "| measured | reference | s2dm images/s | reference images/s | ratio | s2dm / reference peak GiB |"
say "|---|---|---|---|---|---|"
awk -F'\t' '$2 == "s2dm" { ours[$1] = $3; our_peak[$1] = $4; next }
             { what[NR] = $1; who[NR] = $2; theirs[NR] = $3; peak[NR] = $4 }
  END { for (i in what) { w = what[i]; r = (w in ours && theirs[i] + 0 > 0) ? sprintf("%.2f", ours[w] / theirs[i]) : "-"
          printf "| %s | %s | %s | %s | %s | %s / %s |\n", w, who[i], (w in ours ? ours[w] : "-"), theirs[i], r,
                 (our_peak[w] == "" ? "-" : our_peak[w]), (peak[i] == "" ? "-" : peak[i]) } }' \
  "$out/figures.tsv" | sort | tee -a "$out/figures.md"
say ""
say "## steps (outcome, seconds taken, limit)"
say ""
awk -F'\t' '{ printf "| %s | %s | %s s | %s s |\n", $1, $2, $3, $4 }' "$out/steps.tsv" | tee -a "$out/figures.md"
say ""
say "$failures step(s) did not pass; logs in $out/logs"
[ $failures -eq 0 ]
