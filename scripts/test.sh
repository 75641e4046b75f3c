#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, then ctest. GPU tests
# (label gpu) skip themselves without a GPU; slow ones run only with
# MOESERVE_SLOW_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exclude="slow"
if [ "${MOESERVE_SLOW_TESTS:-0}" = 1 ]; then exclude="^$"; fi
cd build
ctest --output-on-failure -j"${JOBS:-2}" -LE "$exclude"
