#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: builds the CUDA targets, runs
# every GPU check and prints a summary table last.
#
#   tests/gpu/device_check.sh                  build (-j16) and check
#   tests/gpu/device_check.sh --prebuilt DIR   check with binaries from DIR (made by --bundle)
#   tests/gpu/device_check.sh --bundle DIR     build here (no GPU needed) and put the CUDA binaries and the
#                                              shared libraries they need in DIR, for a GPU machine that
#                                              cannot build (no compiler dependencies, no network)
#
# The checks, in order (each with its own time limit; about 6 minutes on an H100/H200):
#   units      test_cuda_ops: every CUDA op against the CPU op; test_nccl: NCCL collectives of a world-size-1
#              group and a join that times out (one GPU cannot host two NCCL ranks); test_cuda_hybrid:
#              --n-cpu-moe host experts against the all-GPU run, the expert cache empty/full/thrashing
#   model      test_cuda_model: tiny checkpoints, CUDA logits against the CPU backend
#   model_20b  the same at the full gpt-oss-20b shape (a 13.8 GB random checkpoint)
#   bench      moeserve_gpu_bench on that checkpoint: pp512, tg128, decode batch sweep, copy bandwidth and the
#              roofline percentage
#   hybrid_20b the same on a 12 GiB device budget: --n-cpu-moe auto's split, tg128 and the expert cache's hits
#   hf         tests/gpu/transformers_compare.py on the CUDA backend, where torch and transformers exist
# Logs go to $OUT when it is set (else build/device_check/): one per check (at most 8 files), and summary.txt.
# Exit status: 0 when every check passed or was skipped, 1 when one failed, 2 at once without a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

mode=build
dir=""
case "${1:-}" in
  --prebuilt) mode=prebuilt; dir=${2:?--prebuilt DIR}; dir=$(cd "$dir" && pwd) ;;
  --bundle) mode=bundle; dir=${2:?--bundle DIR} ;;
  "") ;;
  *) echo "usage: tests/gpu/device_check.sh [--prebuilt DIR | --bundle DIR]" >&2; exit 2 ;;
esac

targets=(test_cuda_ops test_nccl test_cuda_hybrid test_cuda_model moeserve_gpu_bench moeserve)
build() {
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  command -v nvcc >/dev/null || { echo "device_check: nvcc not found (CUDA 13 toolkit at /usr/local/cuda)" >&2; return 1; }
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="86;90" >/dev/null &&
    cmake --build build -j"${JOBS:-16}" --target "${targets[@]}"
}

if [ "$mode" = bundle ]; then
  build || exit 1
  mkdir -p "$dir/lib"
  cp build/tests/test_cuda_ops build/tests/test_nccl build/tests/test_cuda_hybrid build/tests/test_cuda_model \
    build/bench/moeserve_gpu_bench build/tools/moeserve "$dir/"
  # Shared libraries beside the C and C++ runtimes (Abseil, PCRE2, Gloo, NCCL): a GPU image may not have them.
  ldd "$dir"/test_cuda_ops "$dir"/test_nccl "$dir"/test_cuda_hybrid "$dir"/test_cuda_model "$dir"/moeserve_gpu_bench \
    "$dir"/moeserve |
    awk '/=> \// {print $3}' | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
    sort -u | xargs -r -I{} cp -L {} "$dir/lib/"
  echo "device_check: bundle in $dir ($(du -sh "$dir" | cut -f1)); on the GPU machine: tests/gpu/device_check.sh --prebuilt $dir"
  exit 0
fi

# No GPU: say so and stop at once.
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "device_check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing was run" >&2
  exit 2
fi

logs=${OUT:-$root/build/device_check}
mkdir -p "$logs"
work=${MOESERVE_DEVICE_WORK:-/tmp/moeserve_device_check}
mkdir -p "$work"
summary=()
failed=0
note() { summary+=("$(printf '%-10s %-8s %7s  %s' "$1" "$2" "$3" "$4")"); }

# run NAME LIMIT_S CMD... : runs with a time limit, logs to $logs/NAME.log, records PASS/FAIL/SKIP.
run() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    last=PASS
  elif [ $rc -eq 77 ]; then
    last=SKIP
  else
    last=FAIL
    failed=1
    [ $rc -eq 124 ] && echo "(timed out after ${limit}s)" >>"$logs/$name.log"
    echo "---- $name failed (exit $rc); its log ends:"
    tail -n 25 "$logs/$name.log"
  fi
  last_time="${dt}s"
}

# One line of figures from a moeserve_gpu_bench log (JSON lines): "all" or "hybrid".
summarize() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import json, sys
d = {}
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    w = j.get("what", "")
    if w == "device":
        d.update(bw=j.get("copy_bandwidth_gb_s"), n=j.get("n_cpu_moe"), slots=j.get("expert_cache_slots"))
    elif w.startswith("pp"):
        d["pp"] = max(d.get("pp", 0), j["tokens_per_s"])
    elif w.startswith("tg") and j["tokens_per_s"] >= d.get("tg", 0):
        d["tg"], d["roof"] = j["tokens_per_s"], j.get("roofline_pct")
    elif w == "decode_batch":
        d["b%d" % j["batch"]] = j["tokens_per_s"]
    elif w == "expert_cache":
        d["hit"] = 100.0 * j["hits"] / max(1, j["hits"] + j["misses"])
if sys.argv[2] == "hybrid":
    print("12 GiB: --n-cpu-moe %s, %s cached experts, tg128 %.1f tok/s, cache hit rate %.0f%%" % (
        d.get("n"), d.get("slots"), d.get("tg", 0), d.get("hit", 0)))
else:
    print("pp512 %.0f tok/s, tg128 %.1f tok/s (%s%% of roofline), batch 64: %s tok/s, copy %s GB/s" % (
        d.get("pp", 0), d.get("tg", 0), d.get("roof"), d.get("b64"), d.get("bw")))
PY
}

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
device="$(date -u +%Y-%m-%dT%H:%MZ), $gpu, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "device_check: $device"

if [ "$mode" = prebuilt ]; then
  bin_ops=$dir/test_cuda_ops bin_model=$dir/test_cuda_model bin_bench=$dir/moeserve_gpu_bench bin_cli=$dir/moeserve
  bin_nccl=$dir/test_nccl bin_hybrid=$dir/test_cuda_hybrid
  # libnccl.so.2 (opened at run time) comes from the machine's CUDA install.
  export LD_LIBRARY_PATH="$dir/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note build SKIP - "prebuilt binaries from $dir"
else
  run build 420 build
  note build "$last" "$last_time" "CUDA targets, sm_86 + sm_90, -j${JOBS:-16}"
  if [ "$last" != PASS ]; then
    printf '\n%s\n' "${summary[@]}" | tee "$logs/summary.txt"
    exit 1
  fi
  bin_ops=build/tests/test_cuda_ops bin_model=build/tests/test_cuda_model bin_bench=build/bench/moeserve_gpu_bench
  bin_cli=build/tools/moeserve bin_nccl=build/tests/test_nccl bin_hybrid=build/tests/test_cuda_hybrid
fi

run units 240 bash -c '"$1" && "$2" && "$3"' units "$bin_ops" "$bin_nccl" "$bin_hybrid"
note units "$last" "$last_time" "ops, NCCL world of 1, --n-cpu-moe hybrid: $(grep -c '^\[       OK' "$logs/units.log") passed"
grep -E '^cache ' "$logs/units.log" | sed 's/^/  /'
run model 180 "$bin_model" --gtest_filter='-*Gpt20bShape*'
note model "$last" "$last_time" "tiny checkpoints, CUDA vs CPU logits"

# The 20b-shape checkpoint, shared by the whole-model check and the benchmark.
ckpt=$work/gpt-oss-20b-random
if [ ! -f "$ckpt/config.json" ]; then
  "$bin_cli" gen-checkpoint --preset 20b --seed 1 --out "$ckpt" >/dev/null 2>&1 ||
    { note gen FAIL - "20b-shape random checkpoint"; failed=1; }
fi
export MOESERVE_20B_DIR=$ckpt
run model_20b 300 env MOESERVE_SLOW_TESTS=1 "$bin_model" --gtest_filter='*Gpt20bShape*'
note model_20b "$last" "$last_time" "gpt-oss-20b shape, CUDA vs CPU logits"

run bench 300 "$bin_bench" --model "$ckpt" --pp 512 --tg 128 --batches 1,2,4,8,16,32,64,128,256 --reps 2
figures=$(summarize "$logs/bench.log" all)
note bench "$last" "$last_time" "${figures:-see bench.log}"

# The 12 GB card: the same checkpoint on a 12 GiB budget, experts that do not fit on the CPU.
run hybrid_20b 300 "$bin_bench" --model "$ckpt" --pp 128 --tg 128 --batches 1,8 --reps 2 --device-memory 12 \
  --n-cpu-moe auto
hybrid=$(summarize "$logs/hybrid_20b.log" hybrid)
note hybrid_20b "$last" "$last_time" "${hybrid:-see hybrid_20b.log}"

# transformers' GptOssForCausalLM against the CUDA backend (exit 77: torch or transformers missing).
demo=$work/demo
if [ ! -f "$demo/config.json" ]; then "$bin_cli" gen-checkpoint --preset demo --seed 1 --out "$demo" >/dev/null 2>&1; fi
run hf 240 env PYTHONUNBUFFERED=1 python3 tests/gpu/transformers_compare.py --moeserve "$bin_cli" --model "$demo" \
  --device cuda
note hf "$last" "$last_time" "transformers GptOssForCausalLM vs CUDA logits"

{
  echo
  echo "device_check summary: $device"
  printf '%-10s %-8s %7s  %s\n' check result time what
  printf '%s\n' "${summary[@]}"
} | tee "$logs/summary.txt"
exit $failed
