#!/usr/bin/env bash
# Serving benchmark with a model: the moeserve cluster (router + CPU worker)
# and llama.cpp (node-llama-cpp behind llama_server.mjs) on the same weights,
# one after the other, under the same load from serve_bench.mjs; then the ratio.
#
#   bench/serving/run_serving_bench.sh MODEL_DIR [--num-prompts 32] [--max-concurrency 8]
#                                      [--input-len 128] [--output-len 64] [--threads N]
#                                      [--kv-cache-memory 2GiB]
# The GGUF for llama.cpp is written beside the model directory on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
model=${1:?usage: run_serving_bench.sh MODEL_DIR [flags]}
shift
num=32 conc=8 in=128 outl=64 threads=$(nproc) kv=2GiB
while [ $# -gt 0 ]; do
  case "$1" in
    --num-prompts) num=$2; shift 2 ;;
    --max-concurrency) conc=$2; shift 2 ;;
    --input-len) in=$2; shift 2 ;;
    --output-len) outl=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --kv-cache-memory) kv=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
gguf_of "$model" "$root"
out=$(mktemp -d)
trap 'stop_all; rm -rf "$out"' EXIT
load=(--num-prompts "$num" --max-concurrency "$conc" --input-len "$in" --output-len "$outl")
serve worker "$out/worker.log" "$root/build/worker/moeserve-worker" --model "$model" --port 0 --threads "$threads" \
  --kv-cache-memory "$kv" --max-num-seqs "$conc"
serve router "$out/router.log" "$root/build/router/moeserve-router" --worker "$worker" --model "$model" --port 0 \
  --max-num-seqs "$conc"
echo "== moeserve (router + CPU worker, $threads threads) on $model"
node "$here/serve_bench.mjs" --base-url "http://$router/v1" "${load[@]}" --json "$out/moeserve.json"
stop_all
serve llama "$out/llama.log" node "$here/llama_server.mjs" --gguf "$gguf" --parallel "$conc" \
  --ctx-per-seq $((in * 2 + outl + 64)) --threads "$threads"
echo "== llama.cpp (node-llama-cpp, $conc sequences, $threads threads) on $gguf"
node "$here/serve_bench.mjs" --base-url "http://$llama/v1" "${load[@]}" --json "$out/llama.json"
stop_all
node -e '
const fs = require("fs");
const m = JSON.parse(fs.readFileSync(process.argv[1])), l = JSON.parse(fs.readFileSync(process.argv[2]));
const row = (k, f) => console.log(`${k.padEnd(28)} ${f(m).toFixed(2).padStart(10)} ${f(l).toFixed(2).padStart(10)} ${(f(m) / f(l)).toFixed(2).padStart(7)}x`);
console.log("== summary".padEnd(29) + "moeserve".padStart(10) + "llama.cpp".padStart(11) + "   ratio");
row("output tok/s", r => r.output_token_throughput);
row("request/s", r => r.request_throughput);
row("TTFT median ms", r => r.ttft_ms.median);
row("TTFT p99 ms", r => r.ttft_ms.p99);
row("TPOT median ms", r => r.tpot_ms.median);
row("TPOT p99 ms", r => r.tpot_ms.p99);
row("ITL median ms", r => r.itl_ms.median);
row("ITL p99 ms", r => r.itl_ms.p99);
' "$out/moeserve.json" "$out/llama.json"
