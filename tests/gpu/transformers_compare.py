#!/usr/bin/env python3
"""moeserve's logits against Hugging Face transformers' GptOssForCausalLM.

On a generated checkpoint (random weights, the real layout): transformers
loads it with the MXFP4 experts dequantized to float32 and computes the
logits at every position of a token sequence; moeserve computes the same with
`moeserve logits` (prefill, then one token per step) on the CPU or CUDA
backend. Per-position normalized MSE and greedy tokens must agree.

  python3 transformers_compare.py --moeserve BIN --model DIR [--device cpu|cuda] [--tokens 96]

Exits 77 (ctest: skipped) where torch or a transformers with GptOss is not
installed (PyPI is not reachable on the CPU machines; GPU machines have it).
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from transformers import GptOssForCausalLM
    from transformers import Mxfp4Config
except Exception as e:  # noqa: BLE001 - any import problem means "not available here"
    print(f"skipped: {e}")
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moeserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--prefill", type=int, default=64)
    a = ap.parse_args()

    rng = np.random.default_rng(1)
    model = GptOssForCausalLM.from_pretrained(
        a.model, torch_dtype=torch.float32, quantization_config=Mxfp4Config(dequantize=True),
        attn_implementation="eager")
    vocab = model.config.vocab_size
    ids = rng.integers(0, min(vocab, 199998), size=a.tokens).tolist()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float().numpy()

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.f32")
        subprocess.run([a.moeserve, "logits", "--model", a.model, "--tokens", ",".join(map(str, ids)),
                        "--prefill", str(a.prefill), "--out", out, "--kv-f32", "--device", a.device], check=True)
        got = np.fromfile(out, dtype=np.float32).reshape(len(ids), vocab)

    nmse = ((got - want) ** 2).sum(axis=1) / (want ** 2).sum(axis=1)
    same = int((got.argmax(axis=1) == want.argmax(axis=1)).sum())
    print(f"positions {len(ids)}: worst NMSE {nmse.max():.3e}, mean {nmse.mean():.3e}; greedy equal {same}/{len(ids)}")
    ok = nmse.max() < 1e-6 and same >= len(ids) - 1
    print("ok" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
