#!/usr/bin/env bash
# On the Debian build machine: gathers into gpu_bundle/ (git-ignored) what scripts/gpu_check.sh
# needs on a CUDA machine that has a compiler, CMake, the CUDA toolkit and pip's PyTorch but no
# internet and no apt: the .deb files of every other dependency of s2dm (headers, CMake packages,
# link names and runtime libraries), the Fashion-MNIST files, and manifest.txt naming each file,
# by which gpu_check.sh checks the bundle before it does any work. A rerun downloads only what is
# missing. The bundle stays far under 64 MiB (what one `device` call carries).
# scripts/test_torch2.sh --cuda builds s2dm from this bundle in a chroot that has nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(
  libyaml-cpp-dev libyaml-cpp0.7
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9  # (Debian's spdlog uses the external fmt)
  libcxxopts-dev nlohmann-json3-dev
  libgtest-dev libbenchmark-dev libbenchmark1debian
  libstb-dev libstb0
  libjpeg-dev libjpeg62-turbo-dev libjpeg62-turbo
  zlib1g-dev zlib1g
)
# (No Gloo: the CUDA build's process group is NCCL's, whose header pip's nvidia-nccl package has.)
bundle=gpu_bundle
mkdir -p "$bundle/debs" "$bundle/fashion-mnist"
missing=()
for p in "${packages[@]}"; do
  compgen -G "$bundle/debs/${p}_*.deb" > /dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  (cd "$bundle/debs" && apt-get download "${missing[@]}")
fi
cp -u /usr/share/datasets/fashion-mnist/*-ubyte.gz "$bundle/fashion-mnist/"
{
  echo "# made by scripts/gpu_bundle.sh on $(date -u +%F) from Debian $(cat /etc/debian_version)"
  for p in "${packages[@]}"; do
    echo "deb $p $(cd "$bundle/debs" && ls ${p}_*.deb | head -1)"
  done
  (cd "$bundle" && ls fashion-mnist/*.gz | sed 's/^/data /')
} > "$bundle/manifest.txt.new"
mv "$bundle/manifest.txt.new" "$bundle/manifest.txt"
echo "gpu_bundle: $(du -sh "$bundle" | cut -f1) in $bundle/ ($(grep -c '^deb ' "$bundle/manifest.txt") packages)"
