#!/usr/bin/env bash
# Crash safety of training, at length: scripts/crash_test.sh [N] kills a test-size training run
# with SIGKILL at random moments N times over (default 20 trials, two kills each), resumes it as a
# user would, and checks that every trial ends bit-identical to an uninterrupted run. The test
# suite runs the same test with 5 trials (Cli.KilledAtRandomMomentsAndResumedEndsBitIdentical).
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-20}
case "$trials" in '' | *[!0-9]*) echo "crash_test: N must be a whole number, not '$trials'" >&2; exit 2 ;; esac
build=${S2DM_BUILD_DIR:-build}
bash scripts/build.sh -DS2DM_BUILD_TESTS=ON  # (incremental: never a stale test binary)
S2DM_CRASH_TRIALS=$trials "$build/s2dm_tests" --gtest_filter=Cli.KilledAtRandomMomentsAndResumedEndsBitIdentical
