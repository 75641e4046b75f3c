#!/usr/bin/env bash
# The main job: installs what is missing, builds, and starts the cluster on
# this machine — one CPU worker and the router with the OpenAI-compatible API
# on http://127.0.0.1:8000/v1 — serving the demo model (random weights, real
# gpt-oss tokenizer) unless --model names a gpt-oss checkpoint directory.
# Flags go to `moeserve serve` (see `build/tools/moeserve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/tools/moeserve serve "$@"
