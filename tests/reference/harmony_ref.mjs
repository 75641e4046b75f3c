// Loads openai/harmony (npm openai-harmony: its Rust code compiled to WASM) in
// Node without network access: the WASM file is read from disk, and the
// o200k_base.tiktoken vocabulary it downloads is regenerated from npm
// tiktoken's bundled ranks (byte-identical to OpenAI's file; its sha256 is
// checked by harmony itself).
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const nm = join(here, "../node/node_modules");

// OpenAI's o200k_base.tiktoken, regenerated from tiktoken's bundled ranks.
export function tiktokenFile() {
  const o200k = JSON.parse(readFileSync(join(nm, "tiktoken/encoders/o200k_base.json"), "utf8"));
  const lines = [];
  for (const seg of o200k.bpe_ranks.split("\n")) {
    if (!seg) continue;
    const parts = seg.split(" ");
    let rank = Number(parts[1]);
    for (const b64 of parts.slice(2)) lines.push(`${b64} ${rank++}`);
  }
  return lines.join("\n") + "\n";
}

export async function loadHarmony() {
  const vocab = tiktokenFile();
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url) => {
    const u = String(url?.url ?? url);
    if (u.startsWith("file:")) {
      return new Response(readFileSync(fileURLToPath(u)), { headers: { "content-type": "application/wasm" } });
    }
    if (u.endsWith("o200k_base.tiktoken")) {
      const r = new Response(vocab);
      Object.defineProperty(r, "url", { value: u });  // the WASM HTTP client parses the response URL
      return r;
    }
    throw new Error(`no network in tests: ${u}`);
  };
  try {
    const h = await import(join(nm, "openai-harmony/dist/openai_harmony.js"));
    const enc = await h.load_harmony_encoding("HarmonyGptOss", "http://127.0.0.1/vocab");
    return { h, enc };
  } finally {
    globalThis.fetch = realFetch;
  }
}
