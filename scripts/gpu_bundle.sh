#!/usr/bin/env bash
# On the Debian build machine: downloads the .deb files of s2dm's non-Torch dependencies (and
# the Fashion-MNIST files) into gpu_bundle/, for scripts/gpu_check.sh on a CUDA machine that has
# no internet and no apt. The bundle stays well under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
debs=(
  libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcxxopts-dev
  nlohmann-json3-dev libgtest-dev libbenchmark-dev libbenchmark1debian libstb-dev libstb0 libjpeg-dev libjpeg62-turbo-dev libjpeg62-turbo
  libgloo-dev  # headers of c10d's Gloo process group (the library itself is inside LibTorch)
)
mkdir -p gpu_bundle/debs gpu_bundle/fashion-mnist
(cd gpu_bundle/debs && apt-get download "${debs[@]}")
cp /usr/share/datasets/fashion-mnist/*.gz gpu_bundle/fashion-mnist/
du -sh gpu_bundle
