#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, then ctest, then the
# fuzz targets for a bounded time (scripts/fuzz.sh). GPU tests
# (label gpu) skip themselves without a GPU; slow ones run only with
# MOESERVE_SLOW_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exclude="slow"
if [ "${MOESERVE_SLOW_TESTS:-0}" = 1 ]; then exclude="^$"; fi
(cd build && ctest --output-on-failure -j"${JOBS:-2}" -LE "$exclude")
# The fuzz targets (label fuzz, their own clang + ASan/UBSan build in
# build-fuzz/), MOESERVE_FUZZ_SECONDS each (default 45); MOESERVE_SKIP_FUZZ=1 skips them.
if [ "${MOESERVE_SKIP_FUZZ:-0}" != 1 ]; then scripts/fuzz.sh; fi
