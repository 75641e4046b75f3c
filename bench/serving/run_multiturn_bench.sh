#!/usr/bin/env bash
# Multi-turn chat benchmark (prefix caching): conversations with a long shared
# system prompt and growing history, from serve_bench.mjs --workload multiturn,
# against moeserve with prefix caching (the default), moeserve with
# --no-enable-prefix-caching, and llama.cpp (node-llama-cpp behind
# llama_server.mjs, each conversation's context kept as llama-server's
# cache_prompt does), one after the other on the same weights; then TTFT per
# turn and throughput side by side.
#
#   bench/serving/run_multiturn_bench.sh MODEL_DIR [--conversations 16] [--turns 6] [--system-len 2000]
#                                        [--turn-len 64] [--output-len 32] [--threads N] [--kv-cache-memory 2GiB]
# The GGUF for llama.cpp is written beside the model directory on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
model=${1:?usage: run_multiturn_bench.sh MODEL_DIR [flags]}
shift
conv=16 turns=6 sys=2000 turn=64 outl=32 threads=$(nproc) kv=2GiB
while [ $# -gt 0 ]; do
  case "$1" in
    --conversations) conv=$2; shift 2 ;;
    --turns) turns=$2; shift 2 ;;
    --system-len) sys=$2; shift 2 ;;
    --turn-len) turn=$2; shift 2 ;;
    --output-len) outl=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --kv-cache-memory) kv=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
gguf_of "$model" "$root"
out=$(mktemp -d)
trap 'stop_all; rm -rf "$out"' EXIT
# Words of the load are about one token each; room for the whole conversation.
ctx=$(( (sys + turns * (turn + outl + 16) + 256 + 255) / 256 * 256 ))
load=(--workload multiturn --conversations "$conv" --turns "$turns" --system-len "$sys" --turn-len "$turn"
      --output-len "$outl" --max-concurrency "$conv" --seed 7)
for mode in cache nocache; do
  flag=--enable-prefix-caching
  [ "$mode" = nocache ] && flag=--no-enable-prefix-caching
  serve worker "$out/worker.log" "$root/build/worker/moeserve-worker" --model "$model" --port 0 --threads "$threads" \
    --kv-cache-memory "$kv" --max-num-seqs "$conv" --max-model-len "$ctx"
  serve router "$out/router.log" "$root/build/router/moeserve-router" --worker "$worker" --model "$model" --port 0 \
    --max-num-seqs "$conv" "$flag"
  echo "== moeserve $flag (router + CPU worker, $threads threads) on $model"
  node "$here/serve_bench.mjs" --base-url "http://$router/v1" "${load[@]}" --json "$out/moeserve-$mode.json"
  stop_all
done
serve llama "$out/llama.log" node "$here/llama_server.mjs" --gguf "$gguf" --parallel "$conv" --ctx-per-seq "$ctx" \
  --threads "$threads"
echo "== llama.cpp (node-llama-cpp, $conv sequences, prompt cache, $threads threads) on $gguf"
node "$here/serve_bench.mjs" --base-url "http://$llama/v1" "${load[@]}" --json "$out/llama.json"
stop_all
node -e '
const fs = require("fs");
const [c, n, l] = process.argv.slice(1).map(f => JSON.parse(fs.readFileSync(f)));
const cols = [["moeserve", c], ["no caching", n], ["llama.cpp", l]];
const fmt = x => (Number.isFinite(x) ? x.toFixed(1) : "n/a").padStart(12);
console.log("== summary".padEnd(34) + cols.map(([k]) => k.padStart(12)).join("") + "   moeserve/llama.cpp");
const row = (k, f) => console.log(k.padEnd(34) + cols.map(([, r]) => fmt(f(r))).join("") + (f(c) / f(l)).toFixed(2).padStart(10) + "x");
row("output tok/s", r => r.output_token_throughput);
row("total tok/s", r => r.total_token_throughput);
row("duration s", r => r.duration_s);
row("cached prompt tokens %", r => 100 * r.cached_prompt_tokens / r.total_input_tokens);
for (let t = 0; t < c.ttft_by_turn_ms.length; ++t) row(`TTFT median ms, turn ${t + 1}`, r => r.ttft_by_turn_ms[t]?.median);
row("TTFT p99 ms, all turns", r => r.ttft_ms.p99);
row("slowest later turn / turn 1", r => r.later_turn_ttft_over_first);
' "$out/moeserve-cache.json" "$out/moeserve-nocache.json" "$out/llama.json"
