# Shared by the serving benchmark scripts (sourced).
# serve VAR LOG CMD...: starts CMD in the background (its pid goes to `pids`,
# for cleanup) and sets VAR to the address it prints as "listening on ADDR".
pids=()
serve() {
  local var=$1 log=$2; shift 2
  "$@" > "$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1200); do
    if grep -q "^listening on" "$log"; then printf -v "$var" '%s' "$(sed -n 's/^listening on //p' "$log")"; return; fi
    kill -0 "${pids[-1]}" 2>/dev/null || break  # it died
    sleep 0.1
  done
  echo "did not start: $*" >&2; cat "$log" >&2; exit 1
}
# Stops everything serve() started.
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pids=()
}
# gguf_of MODEL_DIR ROOT: sets `gguf` to the model's GGUF beside its directory,
# writing it (moeserve to-gguf, native) when missing or older than config.json.
gguf_of() {
  gguf="${1%/}.gguf"
  if [ ! -f "$gguf" ] || [ "$gguf" -ot "$1/config.json" ]; then
    "$2/build/tools/moeserve" to-gguf --model "$1" --out "$gguf" --mode native
  fi
}
