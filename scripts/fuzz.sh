#!/usr/bin/env bash
# Builds the fuzz targets (tests/fuzz/) with clang, libFuzzer, ASan and UBSan
# in build-asan/ (the ASan + UBSan build of scripts/sanitize.sh asan), writes
# their seed corpora, and runs each for MOESERVE_FUZZ_SECONDS (default 45)
# under ctest (label fuzz), JOBS (default 2) targets at a time, each on one core. A crash, leak, sanitizer report or timeout fails
# the run; libFuzzer leaves the input as build-asan/tests/fuzz/crash-* (or
# leak-*, timeout-*): add it to tests/fuzz/regressions/<target>/ with the fix.
#   scripts/fuzz.sh                     all targets, MOESERVE_FUZZ_SECONDS each
#   scripts/fuzz.sh -R fuzz_tokenizer   ctest's filters pass through
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${MOESERVE_FUZZ_SECONDS:-45}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/setup.sh installs it)" >&2; exit 1; }
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DMOESERVE_SANITIZE=address -DMOESERVE_FUZZ_SECONDS="$seconds" >/dev/null
targets=$(sed -n 's/^moeserve_fuzz(\([a-z_]*\).*/\1/p' tests/fuzz/CMakeLists.txt)
# shellcheck disable=SC2086
cmake --build build-asan -j"${JOBS:-2}" --target fuzz_seeds $targets
echo "fuzz: build took $SECONDS s"
rm -rf build-asan/fuzz_seeds
build-asan/tests/fuzz/fuzz_seeds build-asan/fuzz_seeds
cd build-asan
ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"${JOBS:-2}" -L fuzz "$@"
