#!/usr/bin/env bash
# Whole-model logits of moeserve against llama.cpp (npm node-llama-cpp) on the
# same generated weights: every position of a >= 64-token prompt and a greedy
# continuation, max |dlogit| <= 1e-4; also with LoRA adapters (llama.cpp --lora).
#   usage: llama_reference_test.sh MOESERVE_BINARY
set -euo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
compare() { node "$here/llama_compare.mjs" --moeserve "$bin" "$@"; }
gen() { "$bin" gen-checkpoint --preset tiny --seed 11 "$@"; }

# 1. All-F32 model; expert scale 4 drives SwiGLU pre-activations past +-7;
#    sliding window 8 << 80 tokens. YaRN with ggml's rounding switched on.
gen --out "$work/f32" --experts f32 --dense f32 --expert-scale 4
"$bin" to-gguf --model "$work/f32" --out "$work/f32.gguf" --mode f32
compare --gguf "$work/f32.gguf" --model "$work/f32" --rope-ggml --prompt-len 64 --gen 16

# 2. MXFP4 experts, decoded inside our matmul; llama.cpp gets the exact
#    dequantized values as F32 (its MXFP4 path rounds activations to 8 bits).
gen --out "$work/mx" --experts mxfp4 --dense f32 --expert-scale 4
"$bin" to-gguf --model "$work/mx" --out "$work/mx.gguf" --mode f32
compare --gguf "$work/mx.gguf" --model "$work/mx" --rope-ggml --prompt-len 64 --gen 16

# 3. A long context: 240 tokens, 30x the window.
compare --gguf "$work/mx.gguf" --model "$work/mx" --rope-ggml --prompt-len 200 --gen 40 --seed 5

# 4. YaRN off: our default (unrounded) path needs no switch.
gen --out "$work/noyarn" --experts mxfp4 --dense f32 --expert-scale 4 --yarn-factor 1
"$bin" to-gguf --model "$work/noyarn" --out "$work/noyarn.gguf" --mode f32
compare --gguf "$work/noyarn.gguf" --model "$work/noyarn" --prompt-len 64 --gen 16

# 5. LoRA adapters (PEFT files from gen-lora) served by moeserve against llama.cpp
#    --lora with the GGUF LoRA our converter writes: fused experts with the router
#    and rsLoRA scaling; per-expert experts with attention (another alpha).
"$bin" gen-lora --model "$work/mx" --out "$work/lora-fused" --layout fused --router --rslora --rank 8 --seed 3
"$bin" to-gguf --model "$work/mx" --lora "$work/lora-fused" --out "$work/lora-fused.gguf"
compare --gguf "$work/mx.gguf" --model "$work/mx" --rope-ggml --prompt-len 64 --gen 16 \
  --lora "$work/lora-fused" --lora-gguf "$work/lora-fused.gguf"
"$bin" gen-lora --model "$work/mx" --out "$work/lora-pe" --layout per-expert --rank 4 --alpha 12 --seed 4 --dtype f32
"$bin" to-gguf --model "$work/mx" --lora "$work/lora-pe" --out "$work/lora-pe.gguf"
compare --gguf "$work/mx.gguf" --model "$work/mx" --rope-ggml --prompt-len 64 --gen 16 \
  --lora "$work/lora-pe" --lora-gguf "$work/lora-pe.gguf"
if compare --gguf "$work/mx.gguf" --model "$work/mx" --rope-ggml --prompt-len 64 --gen 4 \
     --lora-gguf "$work/lora-fused.gguf" >/dev/null; then
  echo "FAIL: llama.cpp with the adapter unexpectedly matched moeserve without it"
  exit 1
fi
echo "PASS: negative control (the adapter changes llama.cpp's logits)"

# 6. The comparison can fail: the OpenAI (unrounded) YaRN differs from ggml's.
if compare --gguf "$work/f32.gguf" --model "$work/f32" --prompt-len 64 --gen 4 >/dev/null; then
  echo "FAIL: unrounded YaRN unexpectedly matched llama.cpp's rounded YaRN"
  exit 1
fi
echo "PASS: negative control (unrounded YaRN differs from llama.cpp's, as expected)"
