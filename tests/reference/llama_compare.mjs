// Compares moeserve's logits with llama.cpp's (node-llama-cpp) on the same
// weights, at every position of a prompt and of a greedy continuation.
//
//   node llama_compare.mjs --gguf F --model DIR --moeserve BIN [--prompt-len 64]
//        [--gen 16] [--tol 1e-4] [--seed 1] [--rope-ggml] [--threads 2]
//        [--lora DIR --lora-gguf F]   (a PEFT adapter: moeserve serves DIR, llama.cpp --lora F)
//
// llama.cpp runs with an F32 KV cache and flash attention off (its tightest
// setting); moeserve with an F32 KV cache. Exits 1 when max |dlogit| > tol or
// when moeserve's argmax differs from llama.cpp's greedy token.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(join(here, "../node/node_modules/node-llama-cpp/dist/index.js"));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "1"]);
    return acc;
  }, []));
const promptLen = Number(args["prompt-len"] ?? 64);
const gen = Number(args.gen ?? 16);
const tol = Number(args.tol ?? 1e-4);
const threads = Number(args.threads ?? 2);
let seed = Number(args.seed ?? 1);

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.gguf, gpuLayers: 0 });
const vocab = JSON.parse(readFileSync(join(args.model, "config.json"), "utf8")).vocab_size;
const context = await model.createContext({
  contextSize: promptLen + gen + 16, batchSize: promptLen + gen + 16, threads, flashAttention: false,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
  ...(args["lora-gguf"] ? { lora: { adapters: [{ filePath: args["lora-gguf"], scale: 1 }] } } : {}),
});
const seq = context.getSequence();

// Random prompt ids from the byte and filler range (never the specials at the end).
const tokens = [];
for (let i = 0; i < promptLen; i++) {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  tokens.push(seed % (vocab - 16));
}
const want = { generateNext: { token: true, logits: true, options: { temperature: 0 } } };
const rows = [];
const res = await seq.controlledEvaluate(tokens.map(t => [t, want]));
for (const r of res) rows.push(r.next.logits);
for (let g = 0; g < gen; g++) {
  const last = rows[rows.length - 1];
  let best = 0, bestV = -Infinity;
  for (const [t, v] of last) if (v > bestV || (v === bestV && t < best)) { best = t; bestV = v; }
  tokens.push(best);
  const r = await seq.controlledEvaluate([[best, want]]);
  rows.push(r[0].next.logits);
}
await context.dispose();
await model.dispose();

const dir = mkdtempSync(join(tmpdir(), "moeserve-llama-"));
const out = join(dir, "logits.bin");
const cmd = [args.moeserve, ["logits", "--model", args.model, "--tokens", tokens.join(","), "--prefill", String(promptLen),
  "--out", out, "--kv-f32", ...(args["rope-ggml"] ? ["--rope-ggml"] : []), ...(args.lora ? ["--lora", args.lora] : [])]];
const run = spawnSync(cmd[0], cmd[1], { stdio: ["ignore", "inherit", "inherit"] });
if (run.status !== 0) { console.error("moeserve logits failed"); process.exit(1); }
const ours = new Float32Array(readFileSync(out).buffer.slice(0));
rmSync(dir, { recursive: true, force: true });
if (ours.length !== rows.length * vocab) { console.error(`size mismatch: ${ours.length} vs ${rows.length}x${vocab}`); process.exit(1); }

let maxDiff = 0, maxAt = -1, range = 0, argmaxMismatch = 0;
for (let p = 0; p < rows.length; p++) {
  let ourBest = 0;
  for (let t = 0; t < vocab; t++) {
    const a = ours[p * vocab + t], b = rows[p].get(t);
    if (!Number.isFinite(a) || b === undefined) { console.error(`bad logit at pos ${p} token ${t}`); process.exit(1); }
    const d = Math.abs(a - b);
    if (d > maxDiff) { maxDiff = d; maxAt = p; }
    range = Math.max(range, Math.abs(b));
    if (a > ours[p * vocab + ourBest]) ourBest = t;
  }
  if (p >= promptLen - 1 && p < rows.length - 1 && ourBest !== tokens[p + 1]) argmaxMismatch++;
}
const ok = maxDiff <= tol && argmaxMismatch === 0;
console.log(`${ok ? "PASS" : "FAIL"}: ${rows.length} positions x ${vocab} logits, max |dlogit| = ${maxDiff.toExponential(2)} ` +
  `(at position ${maxAt}, logits up to ${range.toFixed(2)}), tolerance ${tol}, greedy mismatches ${argmaxMismatch}`);
process.exit(ok ? 0 : 1);
