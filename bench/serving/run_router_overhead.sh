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
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT
# Starts a server in the background and prints its "listening on" address.
# serve VAR LOG CMD...: starts CMD in the background (its pid stays in this
# shell, for cleanup) and sets VAR to the address it prints.
serve() {
  local var=$1 log=$2; shift 2
  "$@" > "$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q "^listening on" "$log"; then printf -v "$var" '%s' "$(sed -n 's/^listening on //p' "$log")"; return; fi
    kill -0 "${pids[-1]}" 2>/dev/null || break  # it died
    sleep 0.1
  done
  echo "did not start: $*" >&2; cat "$log" >&2; exit 1
}
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
