#!/usr/bin/env bash
# Fuzzes every reader of outside bytes with libFuzzer (AddressSanitizer, UndefinedBehaviorSanitizer):
#   scripts/fuzz.sh [SECONDS [TARGET...]]
# runs each target (default: all; fuzz/fuzz_targets.h lists them) for SECONDS (default 600) from a
# seed corpus of valid files. The corpus grows in build-fuzz/corpus/TARGET and is reused by the next
# run. An input that crashes, throws anything but a user error, or makes one allocation above
# 128 MiB is saved as build-fuzz/findings/TARGET-*; the script then fails. Make each finding a
# regression test by copying it to tests/fixtures/fuzz/TARGET/ (the suite replays that folder).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
case "$seconds" in '' | *[!0-9]* | 0) echo "fuzz: SECONDS must be a whole number above 0, not '$seconds'" >&2; exit 2 ;; esac
bash scripts/setup.sh --fuzz
build=${S2DM_FUZZ_BUILD_DIR:-build-fuzz}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# -O1 -g: the sanitizers' usual setting (fast enough to fuzz, exact reports).
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER=clang++ -DS2DM_BUILD_FUZZ=ON \
  -DS2DM_BUILD_TESTS=OFF -DS2DM_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null
cmake --build "$build" -j "$(nproc)" --target s2dm_fuzz
fuzzer=$build/s2dm_fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # The binary names its targets when run without one.
  read -r -a targets <<<"$("$fuzzer" 2>&1 | sed -n 's/.*one of: //p')"
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: $fuzzer names no targets (does it start?)" >&2; exit 1; }
mkdir -p "$build/findings"
# LibTorch's own start-up leaks by design and is not instrumented: leaks are not findings here.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1
export OMP_NUM_THREADS=1
failed=()
for target in "${targets[@]}"; do
  corpus=$build/corpus/$target
  seeds=$build/seeds/$target
  rm -rf "$seeds"
  S2DM_FUZZ_TARGET=$target S2DM_FUZZ_SEEDS=$seeds "$fuzzer" >/dev/null 2>&1 ||
    { echo "fuzz: cannot write the seeds of '$target'" >&2; exit 2; }
  mkdir -p "$corpus"
  [ -d "tests/fixtures/fuzz/$target" ] && cp -n tests/fixtures/fuzz/"$target"/* "$corpus"/ 2>/dev/null || true
  log=$build/findings/$target.log
  echo "fuzz: $target for $seconds s"
  if S2DM_FUZZ_TARGET=$target "$fuzzer" "$corpus" "$seeds" -max_total_time="$seconds" -timeout=20 \
      -malloc_limit_mb=128 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$build/findings/$target-" >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -2 | sed "s/^/fuzz: $target: /" || true
  else
    echo "fuzz: $target FOUND A DEFECT (log: $log):" >&2
    grep -E 'ERROR|SUMMARY|runtime error|not a user error|Test unit written' "$log" | head -8 >&2 || true
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: defects found by: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no defect found in ${#targets[@]} targets"
