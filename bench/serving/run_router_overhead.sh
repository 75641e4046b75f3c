#!/usr/bin/env bash
# Router overhead, no model: moeserve-router in front of moeserve-fake-worker
# (which answers every step at once), against a bare Node.js streaming server
# (sse_peer.mjs) as the peer, in one run.
#
#   bench/serving/run_router_overhead.sh [--seqs 256] [--output-len 1000] [--seconds 5]
#
# Prints: scheduler and loop microseconds per step at --seqs running sequences
# (with the bare gRPC round trip of the same step as the loop's peer), then the
# serve_bench report of both HTTP servers with --seqs concurrent streams, and
# the ratio of streamed tokens per second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
seqs=256 output_len=1000 seconds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --seqs) seqs=$2; shift 2 ;;
    --output-len) output_len=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
out=$(mktemp -d)
trap 'stop_all; rm -rf "$out"' EXIT
# Starts a server in the background and prints its "listening on" address.
model=${MOESERVE_BENCH_MODEL:-$root/build/models/demo}  # only its tokenizer is used
serve fake "$out/fake.log" "$root/build/bench/moeserve-fake-worker"
echo "== scheduling: moeserve-router-bench (fake worker $fake)"
"$root/build/bench/moeserve-router-bench" --worker "$fake" --seqs "$seqs" --seconds "$seconds" | tee "$out/router.json"
serve router "$out/router.log" "$root/build/router/moeserve-router" --worker "$fake" --model "$model" --port 0 \
  --max-num-seqs "$seqs" --max-num-batched-tokens 65536
serve peer "$out/peer.log" node "$here/sse_peer.mjs"
echo "== HTTP: moeserve-router on $router"
node "$here/serve_bench.mjs" --base-url "http://$router/v1" --num-prompts "$seqs" --max-concurrency "$seqs" \
  --input-len 64 --output-len "$output_len" --json "$out/moeserve.json"
echo "== HTTP peer: Node.js http (sse_peer.mjs) on $peer"
node "$here/serve_bench.mjs" --base-url "http://$peer/v1" --num-prompts "$seqs" --max-concurrency "$seqs" \
  --input-len 64 --output-len "$output_len" --json "$out/peer.json"
node -e '
const fs = require("fs");
const m = JSON.parse(fs.readFileSync(process.argv[1])), p = JSON.parse(fs.readFileSync(process.argv[2]));
const r = JSON.parse(fs.readFileSync(process.argv[3]));
console.log("== summary");
console.log(`scheduler: ${r.scheduler_us_per_step.toFixed(1)} us/step at ${r.seqs} sequences (goal <= 100)`);
console.log(`router loop: ${r.loop_us_per_step.toFixed(1)} us/step; bare gRPC round trip ${r.peer_grpc_round_trip_us.toFixed(1)} us (${r.loop_over_peer.toFixed(2)}x)`);
console.log(`streamed tokens/s: moeserve ${m.output_token_throughput.toFixed(0)} vs Node.js ${p.output_token_throughput.toFixed(0)} = ${(m.output_token_throughput / p.output_token_throughput).toFixed(2)}x (goal >= 50000)`);
' "$out/moeserve.json" "$out/peer.json" "$out/router.json"
