#!/usr/bin/env bash
# The test suite under sanitizers, with clang, each in its own build dir:
#   scripts/sanitize.sh asan   build-asan/: ASan + UBSan; runs the unit, reference
#                              and e2e tests (not gpu, slow, nor emu: the CUDA
#                              emulator switches stacks with Boost.Context,
#                              whose Debian build lacks ASan's fiber hooks).
#                              The numeric kernels (engine/cpu/kernels*.cc)
#                              are built without ASan and UBSan there; what
#                              sizes and indexes their buffers is instrumented.
#                              The same build holds the fuzz targets
#                              (scripts/fuzz.sh).
#   scripts/sanitize.sh tsan   build-tsan/: TSan; builds what the concurrency
#                              tests need and runs those labelled `tsan` (group
#                              runner, scheduler, worker gRPC, gateway, many
#                              streams, failover, gRPC API). The engine's
#                              numeric kernels are built without TSan there.
# Every report of every process (tests, routers, workers the e2e tests start)
# goes to <build>/sanitizer-logs/; any report fails the run and is printed.
# Suppressions (third-party code only, each with its reason):
# tests/sanitizers/*.supp. Extra arguments go to ctest (e.g. -R openai_e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: scripts/sanitize.sh asan|tsan [ctest args]}
shift
command -v clang++ >/dev/null || { echo "sanitize: clang++ not found (scripts/setup.sh installs it)" >&2; exit 1; }
root=$(pwd)
case "$kind" in
  asan) dir=build-asan; san=address ;;
  tsan) dir=build-tsan; san=thread ;;
  *) echo "sanitize: asan or tsan, not $kind" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DMOESERVE_SANITIZE="$san" -DMOESERVE_FUZZ_SECONDS="${MOESERVE_FUZZ_SECONDS:-45}" >/dev/null
logs="$root/$dir/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
supp="$root/tests/sanitizers"
if [ "$kind" = asan ]; then
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
  cmake --build "$dir" -j"${JOBS:-2}"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:log_path=$logs/asan"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  labels="unit|reference|e2e"
  exclude="emu|gpu|slow|fuzz"
else
  # The concurrency tests and the binaries they start.
  cmake --build "$dir" -j"${JOBS:-2}" --target test_group_runner test_scheduler test_worker_grpc \
    moeserve-router moeserve-worker moeserve-fake-worker demo_model
  export TSAN_OPTIONS="suppressions=$supp/tsan.supp:halt_on_error=1:second_deadlock_stack=1:log_path=$logs/tsan"
  labels="tsan"
  exclude="gpu|slow"
fi
echo "sanitize ($kind): build took $SECONDS s"
status=0
(cd "$dir" && ctest --output-on-failure -j"${JOBS:-2}" -L "$labels" -LE "$exclude" "$@") || status=$?
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitize ($kind): reports in $dir/sanitizer-logs:" >&2
  for f in "$logs"/*; do echo "== $f" >&2; head -c 20000 "$f" >&2; done
  status=1
fi
exit $status
