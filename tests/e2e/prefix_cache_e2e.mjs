// Prefix caching end to end, with the official npm `openai` client: a router
// with caching (the default) and a small KV pool, and an independent router
// and worker with --no-enable-prefix-caching as the reference. Multi-turn
// conversations with long system prompts must give the same greedy tokens on
// both (streamed and not, n > 1), the caching server must report the reused
// prompt tokens as usage.prompt_tokens_details.cached_tokens and in its
// metrics, cached blocks must be reclaimed under memory pressure, and KV
// usage must return to zero.
//   node prefix_cache_e2e.mjs --worker BIN --router BIN --model DIR
import { check, finish, parseArgs, start } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const args = parseArgs(process.argv.slice(2));

const workerFlags = ["--model", args.model, "--port", "0", "--max-model-len", "4096", "--kv-cache-dtype", "f32"];
const cachedWorker = await start(args.worker, [...workerFlags, "--kv-cache-memory", "6MiB", "--max-num-seqs", "4"]);
const plainWorker = await start(args.worker, [...workerFlags, "--kv-cache-memory", "64MiB"]);
const cachedAddr = await start(args.router, ["--worker", cachedWorker, "--model", args.model, "--port", "0",
  "--max-num-batched-tokens", "512", "--max-num-seqs", "4", "--enable-prefix-caching"]);
const plainAddr = await start(args.router, ["--worker", plainWorker, "--model", args.model, "--port", "0",
  "--max-num-batched-tokens", "512", "--no-enable-prefix-caching"]);
const model = args.model.replace(/\/+$/, "").split("/").pop();
const cached = new OpenAI({ baseURL: `http://${cachedAddr}/v1`, apiKey: "x", maxRetries: 0 });
const plain = new OpenAI({ baseURL: `http://${plainAddr}/v1`, apiKey: "x", maxRetries: 0 });

// A system prompt of ~1,000 tokens, different per conversation.
function system(k) {
  const words = ["alpha", "river", "compute", "orange", "kernel", "Paris", "seven", "quantum", "lattice", "violet"];
  let s = `You are assistant number ${k}. Rules follow.\n`;
  for (let i = 0; i < 180; ++i) s += `Rule ${i}: ${words[(i * 7 + k) % 10]} ${words[(i * 3 + 2 * k) % 10]} ${i * k}.\n`;
  return s;
}
async function chat(client, messages, extra = {}) {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, ...extra });
  return { r, texts: r.choices.map(c => (c.message.reasoning_content ?? "") + "|" + (c.message.content ?? "")) };
}
async function stream(client, messages) {
  const s = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, stream: true,
    stream_options: { include_usage: true } });
  let text = "", usage = null;
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    const d = c.choices[0]?.delta;
    if (d) text += (d.reasoning_content ?? "") + "\u0000" + (d.content ?? "");
  }
  return { text, usage };
}
function turns(k) {
  const t1 = [{ role: "system", content: system(k) }, { role: "user", content: `Question ${k}: what is rule ${k}?` }];
  return { t1, t2: (reply) => [...t1, { role: "assistant", content: reply || "ok" },
    { role: "user", content: "And the rule after it?" }] };
}
async function metric(addr, name) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  const m = text.match(new RegExp(`^${name.replace(/[{}"]/g, "\\$&")} (\\S+)`, "m"));
  assert.ok(m, `missing ${name}`);
  return Number(m[1]);
}

let firstTurn2Cached = 0;
await check("a second turn reuses the first turn's prefix: same greedy tokens, cached_tokens reported", async () => {
  const { t1, t2 } = turns(1);
  const a1 = await chat(cached, t1), b1 = await chat(plain, t1);
  assert.deepEqual(a1.texts, b1.texts);
  assert.equal(a1.r.usage.prompt_tokens_details.cached_tokens, 0, "nothing was cached before");
  assert.ok(a1.r.usage.prompt_tokens > 900, `system prompt of ${a1.r.usage.prompt_tokens} tokens`);
  const reply = a1.r.choices[0].message.content;
  const a2 = await chat(cached, t2(reply)), b2 = await chat(plain, t2(reply));
  assert.deepEqual(a2.texts, b2.texts);
  firstTurn2Cached = a2.r.usage.prompt_tokens_details.cached_tokens;
  // Everything up to the first turn's last full block of 16 tokens before the user message may hit.
  assert.ok(firstTurn2Cached >= a1.r.usage.prompt_tokens - 48, `cached ${firstTurn2Cached} of ${a2.r.usage.prompt_tokens}`);
  assert.equal(firstTurn2Cached % 16, 0, "whole blocks");
  assert.equal(b2.r.usage.prompt_tokens_details.cached_tokens, 0, "the reference does not cache");
  assert.equal(a2.r.usage.prompt_tokens, b2.r.usage.prompt_tokens);
});

await check("streamed: same tokens, cached_tokens in the usage chunk", async () => {
  const { t2 } = turns(1);
  const a = await stream(cached, t2("ok")), b = await stream(plain, t2("ok"));
  assert.equal(a.text, b.text);
  assert.ok(a.usage.prompt_tokens_details.cached_tokens > 900, JSON.stringify(a.usage));
});

await check("n = 3 shares the prompt's blocks: every greedy choice equals the reference", async () => {
  const { t1 } = turns(2);
  const msgs = [...t1.slice(0, 1), { role: "user", content: "Something new for n = 3." }];
  const a = await chat(cached, msgs, { n: 3 }), b = await chat(plain, msgs);
  assert.deepEqual(a.texts, [b.texts[0], b.texts[0], b.texts[0]]);
});

await check("under memory pressure cached blocks are reclaimed and every answer stays right", async () => {
  // 10 conversations of ~1,000 tokens each, one after another, through a 6 MiB pool.
  for (let k = 3; k < 13; ++k) {
    const { t1, t2 } = turns(k);
    const a1 = await chat(cached, t1), b1 = await chat(plain, t1);
    assert.deepEqual(a1.texts, b1.texts, `conversation ${k}, turn 1`);
    const a2 = await chat(cached, t2("ok")), b2 = await chat(plain, t2("ok"));
    assert.deepEqual(a2.texts, b2.texts, `conversation ${k}, turn 2`);
    assert.ok(a2.r.usage.prompt_tokens_details.cached_tokens > 900, `conversation ${k}: turn 2 hit`);
  }
  // Conversation 1 was evicted to make room: asked again it is recomputed, and still right.
  const { t2 } = turns(1);
  const a = await chat(cached, t2("ok")), b = await chat(plain, t2("ok"));
  assert.deepEqual(a.texts, b.texts);
  assert.ok(a.r.usage.prompt_tokens_details.cached_tokens < firstTurn2Cached,
    `conversation 1 still cached (${a.r.usage.prompt_tokens_details.cached_tokens}): the pool was never under pressure`);
});

await check("metrics count queries and hits; KV usage returns to zero", async () => {
  const q = await metric(cachedAddr, "moeserve_prefix_cache_queries_total");
  const h = await metric(cachedAddr, "moeserve_prefix_cache_hits_total");
  assert.ok(h > 0 && h < q, `hits ${h} of ${q}`);
  assert.equal(await metric(plainAddr, "moeserve_prefix_cache_queries_total"), 0);
  for (const addr of [cachedAddr, plainAddr]) {
    for (const g of ["full", "sliding"]) {
      assert.equal(await metric(addr, `moeserve_kv_cache_usage_ratio{cache_group="${g}",dp_rank="0"}`), 0, `${addr} ${g}`);
    }
  }
});

finish();
