#!/usr/bin/env bash
# Configures and builds moeserve into build/ (Release). JOBS=N sets parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"${JOBS:-2}"
