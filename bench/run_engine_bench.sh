#!/usr/bin/env bash
# Engine benchmark: moeserve and llama.cpp on the same weights, in one run,
# one after the other (each needs most of the machine's memory at 20b size),
# then a table with the ratio.
#
#   bench/run_engine_bench.sh MODEL_DIR [--pp 512] [--tg 128] [--batches 1,2,4,8,16,32,64]
#                              [--sweep-steps 8] [--reps 2] [--threads 2]
#
# A full-size random gpt-oss-20b:
#   build/tools/moeserve gen-checkpoint --preset 20b --out models/gpt-oss-20b-random
#   bench/run_engine_bench.sh models/gpt-oss-20b-random
# The GGUF for llama.cpp (BF16 dense, MXFP4 experts: the same bytes) is written
# beside the model directory on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
model=${1:?usage: run_engine_bench.sh MODEL_DIR [flags]}
shift
gguf="${model%/}.gguf"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ ! -f "$gguf" ] || [ "$gguf" -ot "$model/config.json" ]; then
  "$root/build/tools/moeserve" to-gguf --model "$model" --out "$gguf" --mode native
fi
echo "== llama.cpp (node-llama-cpp) on $gguf"
node "$here/llama_bench.mjs" --gguf "$gguf" "$@" | tee "$out/llama.jsonl"
echo "== moeserve on $model"
"$root/build/bench/moeserve_bench" --model "$model" "$@" | tee "$out/moeserve.jsonl"
node "$here/compare_bench.mjs" "$out/moeserve.jsonl" "$out/llama.jsonl"
