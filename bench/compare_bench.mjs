// Prints moeserve vs llama.cpp side by side from the two JSON-lines files.
import { readFileSync } from "node:fs";
const load = f => readFileSync(f, "utf8").split("\n").filter(l => l.startsWith("{")).map(l => JSON.parse(l));
const [ours, peer] = process.argv.slice(2).map(load);
const best = (rows, key) => {
  const m = new Map();
  for (const r of rows) {
    const k = key(r);
    if (k && r.tokens_per_s !== undefined) m.set(k, Math.max(m.get(k) ?? 0, r.tokens_per_s));
  }
  return m;
};
const key = r => r.what === "decode_batch" ? `decode batch ${r.batch}` : (r.what.startsWith("pp") || r.what.startsWith("tg") ? r.what : null);
const a = best(ours, key), b = best(peer, key);
console.log("| test | moeserve tok/s | llama.cpp tok/s | ratio |\n|---|---|---|---|");
for (const [k, v] of a) {
  const p = b.get(k);
  console.log(`| ${k} | ${v.toFixed(2)} | ${p ? p.toFixed(2) : "-"} | ${p ? (v / p).toFixed(2) + "x" : "-"} |`);
}
const weights = ours.find(r => r.what === "load")?.weight_file_bytes;
const mo = ours.find(r => r.what === "memory"), mp = peer.find(r => r.what === "memory");
if (weights && mo && mp) {
  console.log(`| peak RSS / weight files | ${(mo.peak_rss_bytes / weights).toFixed(2)}x | ${(mp.peak_rss_bytes / weights).toFixed(2)}x | |`);
}
