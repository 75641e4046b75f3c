// Generations stop where the model's config says: a copy of the demo model
// whose generation_config.json names two ordinary tokens as eos ids (as a
// checkpoint with another vocabulary would) stops chat and completions at
// them — through the worker's Describe to the router, nothing hard-coded.
//   node model_stops.mjs --worker BIN --router BIN --model DIR
import { check, finish, parseArgs, start } from "./procs.mjs";
import { join, dirname, basename } from "node:path";
import { fileURLToPath } from "node:url";
import { mkdtempSync, readdirSync, symlinkSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const args = parseArgs(process.argv.slice(2));
const model = basename(args.model.replace(/\/+$/, ""));

async function serve(dir) {
  const worker = await start(args.worker, ["--model", dir, "--port", "0", "--kv-cache-memory", "64MiB",
                                           "--max-num-seqs", "8", "--max-model-len", "512", "--threads", "1"]);
  const router = await start(args.router, ["--worker", worker, "--model", dir, "--port", "0",
                                           "--served-model-name", model]);
  return new OpenAI({ baseURL: `http://${router}/v1`, apiKey: "x", maxRetries: 0 });
}

const completion = { model, prompt: "The capital of France is", max_tokens: 8, temperature: 0, return_token_ids: true };
const chat = { model, messages: [{ role: "user", content: "Hello!" }], max_tokens: 8, temperature: 0,
               return_token_ids: true };

// The first token at index >= 1 that did not come before it: stopping there leaves ids[0..i).
function stopAt(ids) {
  for (let i = 1; i < ids.length; ++i) if (!ids.slice(0, i).includes(ids[i])) return i;
  throw new Error(`no usable stop token in ${ids}`);
}

const original = await serve(args.model);
const c0 = (await original.completions.create(completion)).choices[0];
const h0 = (await original.chat.completions.create(chat)).choices[0];
assert.equal(c0.finish_reason, "length", "the demo model runs to max_tokens on this prompt");
const ci = stopAt(c0.token_ids), hi = stopAt(h0.token_ids);
const stops = [c0.token_ids[ci], h0.token_ids[hi]];

// The same weights, other eos ids.
const dir = mkdtempSync(join(tmpdir(), "moeserve-stops-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
for (const f of readdirSync(args.model)) if (f !== "generation_config.json") symlinkSync(join(args.model, f), join(dir, f));
writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: stops }));
const custom = await serve(dir);

await check("completions stop at the model's eos id", async () => {
  const c = (await custom.completions.create(completion)).choices[0];
  assert.equal(c.finish_reason, "stop");
  assert.deepEqual(c.token_ids.slice(0, ci), c0.token_ids.slice(0, ci));
  assert.ok(c.token_ids.length <= ci + 1, `stopped at ${ci}: ${c.token_ids}`);
  assert.ok(c0.text.startsWith(c.text), "the text is the original's up to the stop");
});
await check("chat stops at the model's eos id", async () => {
  const h = (await custom.chat.completions.create(chat)).choices[0];
  assert.equal(h.finish_reason, "stop");
  assert.deepEqual(h.token_ids.slice(0, hi), h0.token_ids.slice(0, hi));
  assert.ok(h.token_ids.length <= hi + 1, `stopped at ${hi}: ${h.token_ids}`);
});
await check("the original model is unaffected", async () => {
  const c = (await original.completions.create(completion)).choices[0];
  assert.deepEqual(c.token_ids, c0.token_ids);
});
finish();
