#!/usr/bin/env bash
# Downloads the CIFAR10 binary distribution into data/cifar10/ and verifies its checksum.
# Needs internet (CI and the build machine have none; tests use synthetic files).
set -euo pipefail
cd "$(dirname "$0")/.."
url=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
md5=c32a1d4ab5d03f1284b67883e8d87530
mkdir -p data/cifar10
archive=data/cifar10/cifar-10-binary.tar.gz
[ -f "$archive" ] || curl -fL --retry 3 -o "$archive.part" "$url" && { [ -f "$archive" ] || mv "$archive.part" "$archive"; }
echo "$md5  $archive" | md5sum -c -
tar -xzf "$archive" -C data/cifar10
echo "CIFAR10 ready in data/cifar10/cifar-10-batches-bin"
