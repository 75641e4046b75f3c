#!/usr/bin/env bash
# The main job: installs what is missing, builds, and generates text with the
# demo model (random weights, real gpt-oss tokenizer). Flags go to
# `moeserve generate` (see `build/tools/moeserve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
if [ $# -eq 0 ]; then set -- --prompt "The capital of France is" --max-tokens 32 --seed 1; fi
exec build/tools/moeserve generate "$@"
