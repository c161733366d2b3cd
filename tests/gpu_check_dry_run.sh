#!/usr/bin/env bash
# scripts/gpu_check.sh's own logic, on the CPU (CTest runs this): its dry run against the built
# binaries with a stand-in for the reference's Python that passes, fails, and hangs on purpose.
# Checked: every step's outcome and log, figures written as they come and compared at the end, a
# hanging step stopped at its limit with everything it started, the script going on after each
# failure, its exit status, and a short budget cutting the run with the table still written.
# Usage: tests/gpu_check_dry_run.sh BUILD_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "$1")
[ -d /usr/share/datasets/fashion-mnist ] || { echo "dataset-fashion-mnist is not installed: skipped"; exit 77; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
check() {  # check WHAT COMMAND...: a test assertion
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failed=1; fi
}
outcome() { awk -F'\t' -v s="$2" '$1 == s { print $2 }' "$1/steps.tsv"; }

# The stand-in Python: the preflight's check passes; the UNet rows train at "10 images/s" but
# CelebA's prints no figure; eval at batch 1 fails, eval at batch 2 hangs (and notes its pid);
# Inception passes; compile fails.
cat > "$scratch/python" <<EOF
#!/usr/bin/env bash
[ "\$1" = - ] && { echo "torch stand-in"; exit 0; }
case " \$* " in
  *" --compile "*) echo "no compiler here" >&2; exit 3 ;;
  *" --inception "*) echo '{"inception_images_per_sec": 5.0}' ;;
  *" --config celeba64 --mode train "*) echo '{}' ;;
  *" --mode train "*) echo '{"train_images_per_sec": 10.0, "params": 1}' ;;
  *" --mode eval "*" --batch 1 "* | *" --batch 1 "*" --mode eval "*) echo "eval broke" >&2; exit 3 ;;
  *" --mode eval "*) echo \$\$ > "$scratch/hung.pid"; sleep 300 & wait ;;
esac
EOF
chmod +x "$scratch/python"

start=$SECONDS
bash scripts/gpu_check.sh --cpu --prebuilt "$build" --python "$scratch/python" --out "$scratch/out" --budget 300 \
  > "$scratch/run.txt" 2>&1
code=$?
echo "dry run: exit $code in $((SECONDS - start)) s"
out=$scratch/out
check "a run with failed steps exits 1" [ $code -eq 1 ]
for s in preflight s2dm_train_cifar10_b2_fp32 torch_train_cifar10_b2_fp32 s2dm_train_celeba64_b2_fp32 \
  s2dm_eval_cifar10_b1_bf16 s2dm_eval_cifar10_b2_bf16 s2dm_inception torch_inception fmnist gpu_tests; do
  check "$s passed" [ "$(outcome "$out" $s)" = passed ]
  check "$s left its log" [ -f "$out/logs/$s.log" ]
done
check "a failing reference is recorded with its code" [ "$(outcome "$out" torch_eval_cifar10_b1_bf16)" = "failed with exit 3" ]
check "a failing compile row is recorded" [ "$(outcome "$out" torch_compile_train)" = "failed with exit 3" ]
check "a hanging step is stopped at its limit" [ "$(outcome "$out" torch_eval_cifar10_b2_bf16)" = "timed out after 10 s" ]
check "a hanging step takes no more than its limit and the grace period" \
  [ "$(awk -F'\t' '$1 == "torch_eval_cifar10_b2_bf16" { print $3 }' "$out/steps.tsv")" -le 17 ]
check "what a hanging step started is stopped with it" bash -c "! kill -0 \$(cat '$scratch/hung.pid') 2> /dev/null"
check "a step that printed no figure says so" grep -Fq '| train celeba64 b2 fp32 | PyTorch eager | no figure in its output | - |' "$out/figures.md"
check "the failure's log holds its message" grep -q "eval broke" "$out/logs/torch_eval_cifar10_b1_bf16.log"
check "each step after a failure ran" [ "$(wc -l < "$out/steps.tsv")" -eq 19 ]
check "a feature's gain is measured" [ "$(outcome "$out" s2dm_train_cifar10_b2_fp32_no-fused-adam)" = passed ]
check "s2dm's benchmark wrote its JSON" grep -q '"items_per_second"' "$out/json/s2dm_train_cifar10_b2_fp32.json"
check "a figure of s2dm's" grep -Eq '^\| train cifar10 b2 fp32 \| s2dm \| [0-9]+\.[0-9] \| - \|$' "$out/figures.md"
check "a figure of the reference's" grep -Fq '| train cifar10 b2 fp32 | PyTorch eager | 10.0 | - |' "$out/figures.md"
check "figures are printed as they come" grep -Fq '| inception features b2 | PyTorch eager (torchvision) | 5.0 | - |' "$scratch/run.txt"
ours=$(awk -F'\t' '$1 == "train cifar10 b2 fp32" && $2 == "s2dm" { print $3 }' "$out/figures.tsv")
ratio=$(awk -v x="$ours" 'BEGIN { printf "%.2f", x / 10 }')
check "the table compares s2dm with the reference ($ours / 10.0 = $ratio)" \
  grep -Fq "| train cifar10 b2 fp32 | PyTorch eager | $ours | 10.0 | $ratio |" "$out/figures.md"
check "the Fashion-MNIST run measured an FD" grep -Eq '^\| fmnist: FD.* \| s2dm \| [0-9.]+ \| - \|$' "$out/figures.md"
check "the Fashion-MNIST run left its samples" [ -s "$out/fmnist/grid.png" ]
counts=$(grep -o 'passed [0-9]*, skipped [0-9]*, failed [0-9]*' "$out/figures.md")
check "the GPU tests ran, none failed (on the CPU all skip but fused Adam on LibTorch 2.x): $counts" \
  awk -v c="$counts" 'BEGIN { split(c, w, /[ ,]+/); exit !(w[2] + w[4] == 4 && w[6] == 0) }'
check "the table shows a feature's gain" grep -Eq '^\| train cifar10 b2 fp32 \| s2dm, fused-adam off \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|' "$out/figures.md"
check "the steps' table closes the figures" grep -Fq '| torch_compile_eval | failed with exit 3 |' "$out/figures.md"

# A budget too short for the run: cut, not overrun, and the table is still written.
start=$SECONDS
bash scripts/gpu_check.sh --cpu --prebuilt "$build" --python "$scratch/python" --out "$scratch/short" --budget 30 \
  > "$scratch/short.txt" 2>&1
code=$? took=$((SECONDS - start))
echo "budget 30 s: exit $code in $took s"
check "a 30 s budget ends within it and its grace periods" [ $took -le 40 ]
check "steps past the budget are skipped, not run" grep -q 'skipped: no time left' "$scratch/short/steps.tsv"
check "the cut run still closes with its steps' table" grep -q 'step(s) did not pass' "$scratch/short/figures.md"

check "a dry run without a build is a usage error" bash -c "bash scripts/gpu_check.sh --cpu --out '$scratch/x' > /dev/null 2>&1; [ \$? -eq 2 ]"
check "an unknown option is a usage error" bash -c "bash scripts/gpu_check.sh --bogus > /dev/null 2>&1; [ \$? -eq 2 ]"
[ $failed -eq 0 ] || { echo "--- the dry run's output:"; cat "$scratch/run.txt"; }
exit $failed
