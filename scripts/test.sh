#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, then ctest, then the
# sanitizer suites and the fuzz targets (see below). GPU tests
# (label gpu) skip themselves without a GPU; slow ones run only with
# MOESERVE_SLOW_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's wall time goes to the log (CI's budget is watched per stage).
stage() {
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "test.sh: $name took $((SECONDS - start)) s (total $SECONDS s)"
}
stage setup scripts/setup.sh
stage build scripts/build.sh
exclude="slow"
if [ "${MOESERVE_SLOW_TESTS:-0}" = 1 ]; then exclude="^$"; fi
stage tests bash -c "cd build && ctest --output-on-failure -j${JOBS:-2} -LE '$exclude'"
# Then the suite again under sanitizers, each in its own clang build
# (scripts/sanitize.sh): ASan + UBSan (unit, reference, e2e), the fuzz targets
# in that same build for MOESERVE_FUZZ_SECONDS each (default 45,
# scripts/fuzz.sh), and TSan (the concurrency tests, label tsan).
# MOESERVE_SKIP_SANITIZERS=1 skips both suites, MOESERVE_SKIP_FUZZ=1 the fuzz targets.
if [ "${MOESERVE_SKIP_SANITIZERS:-0}" != 1 ]; then stage asan scripts/sanitize.sh asan; fi
if [ "${MOESERVE_SKIP_FUZZ:-0}" != 1 ]; then stage fuzz scripts/fuzz.sh; fi
if [ "${MOESERVE_SKIP_SANITIZERS:-0}" != 1 ]; then stage tsan scripts/sanitize.sh tsan; fi
