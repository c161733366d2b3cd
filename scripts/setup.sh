#!/usr/bin/env bash
# Installs the Debian packages s2dm needs to build, test and run (idempotent).
# Runs as root, or through sudo when it is available. Options:
#   --tests    what only the tests use: Chromium, which renders the experiment report headless
#              (its test skips where it is absent)
#   --chroots  the host tools of scripts/test_torch2.sh (debootstrap, rsync)
#   --fuzz     clang with libFuzzer and the sanitizers' runtimes, for scripts/fuzz.sh
#   --cuda     LibTorch with CUDA (libtorch-cuda-dev, nvidia-cuda-toolkit, the headers of NCCL
#              and of the CUDA build of Gloo, Debian 13 or later, contrib) instead of the CPU
#              LibTorch
#   --torch-only  the compiler, CMake and the LibTorch alone, none of s2dm's other dependencies:
#              what a machine with pip's PyTorch has, where they come from scripts/gpu_bundle.sh
#              (scripts/test_torch2.sh --cuda builds so)
set -euo pipefail

torch=(libtorch-dev libgloo-dev)  # (Gloo's headers: c10d's Gloo process group, data-parallel training)
extra=()
torch_only=false
for arg in "$@"; do
  case "$arg" in
    --tests) extra+=(chromium) ;;
    --chroots) extra+=(debootstrap rsync) ;;
    --fuzz) extra+=(clang libclang-rt-dev llvm) ;;  # (llvm: the symbolizer of sanitizer reports)
    --cuda) torch=(libtorch-cuda-dev nvidia-cuda-toolkit libnccl-dev libgloo-cuda-dev) ;;
    --torch-only) torch_only=true ;;
    *) echo "setup: unknown option '$arg' (--tests, --chroots, --fuzz, --cuda, --torch-only)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config
  "${torch[@]}"           # LibTorch (and with CUDA, the toolkit its CMake package needs), c10d's headers
  libopenblas0-pthread    # fast BLAS/LAPACK behind LibTorch (the reference BLAS makes FID 10x slower)
  libyaml-cpp-dev libspdlog-dev libfmt-dev libcxxopts-dev nlohmann-json3-dev
  libgtest-dev libbenchmark-dev
  zlib1g-dev libstb-dev   # gzip/zip, PNG decoding, PNG and JPEG writing
  libjpeg-dev             # JPEG decoding (libjpeg-turbo, as PIL decodes)
  dataset-fashion-mnist   # the embedded default data set
)
packages+=("${extra[@]}")
if $torch_only; then  # (Gloo's headers too are s2dm's: a CUDA build needs only NCCL)
  packages=(build-essential cmake ninja-build)
  for p in "${torch[@]}"; do [[ $p == libgloo* ]] || packages+=("$p"); done
  packages+=("${extra[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
