#!/usr/bin/env bash
# Set-up, build, and every test (unit and integration), through CTest. Arguments go to CMake
# (e.g. -DCMAKE_COMPILE_WARNING_AS_ERROR=ON, as CI builds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
bash scripts/build.sh -DS2DM_BUILD_TESTS=ON -DS2DM_BUILD_BENCH=ON "$@"
cd "${S2DM_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)"
