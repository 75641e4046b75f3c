// End to end with the official npm `openai` client against real processes on
// loopback: moeserve-worker (the demo model: random weights, real tokenizer)
// and moeserve-router.
//   node openai_e2e.mjs --worker BIN --router BIN --model DIR
import { check, finish, parseArgs, start } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import net from "node:net";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const args = parseArgs(process.argv.slice(2));


const metricsPort = 20000 + Math.floor(Math.random() * 20000);
const workerAddr = await start(args.worker, ["--model", args.model, "--port", "0", "--metrics-port", String(metricsPort), "--kv-cache-memory", "64MiB",
  "--max-num-seqs", "32", "--max-model-len", "2048", "--kv-cache-dtype", "f32"]);
const routerAddr = await start(args.router, ["--worker", workerAddr, "--model", args.model, "--port", "0",
  "--api-key", "sk-moeserve-test", "--max-num-batched-tokens", "256"]);
const model = args.model.replace(/\/+$/, "").split("/").pop();
const client = new OpenAI({ baseURL: `http://${routerAddr}/v1`, apiKey: "sk-moeserve-test", maxRetries: 0 });

async function chatText(messages, extra = {}) {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, ...extra });
  const m = r.choices[0].message;
  return { r, text: (m.reasoning_content ?? "") + "|" + (m.content ?? "") + "|" + JSON.stringify(m.tool_calls ?? []) };
}
async function streamText(messages, extra = {}) {
  const s = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stream: true,
    stream_options: { include_usage: true }, ...extra });
  let reasoning = "", content = "", finish = null, usage = null;
  const calls = [];
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    reasoning += ch.delta.reasoning_content ?? "";
    content += ch.delta.content ?? "";
    for (const t of ch.delta.tool_calls ?? []) {
      calls[t.index] ??= { id: t.id, type: "function", function: { name: t.function?.name ?? "", arguments: "" } };
      calls[t.index].function.arguments += t.function?.arguments ?? "";
    }
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text: reasoning + "|" + content + "|" + JSON.stringify(calls.length ? calls : []), finish, usage };
}

await check("models.list", async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map(m => m.id), [model]);
});
await check("chat, each reasoning effort, usage and finish reason", async () => {
  for (const effort of ["low", "medium", "high"]) {
    const { r } = await chatText([{ role: "user", content: "Hello!" }], { reasoning_effort: effort });
    assert.equal(r.object, "chat.completion");
    assert.ok(["stop", "length", "tool_calls"].includes(r.choices[0].finish_reason));
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
    assert.ok(r.usage.prompt_tokens > 20);
  }
});
await check("streamed chat equals the non-streamed greedy answer", async () => {
  const msgs = [{ role: "system", content: "Be brief." }, { role: "user", content: "Name a colour." }];
  const a = await chatText(msgs);
  const b = await streamText(msgs);
  assert.equal(b.text, a.text);
  assert.equal(b.finish, a.r.choices[0].finish_reason);
  assert.equal(b.usage.completion_tokens, a.r.usage.completion_tokens);
});
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather of a city.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
await check("tool-call round trip is accepted and rendered", async () => {
  const first = await chatText([{ role: "user", content: "Weather in Oslo?" }], { tools });
  assert.ok(first.r.choices[0].message);
  const second = await chatText([
    { role: "user", content: "Weather in Oslo?" },
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function",
      function: { name: "get_weather", arguments: "{\"city\":\"Oslo\"}" } }] },
    { role: "tool", tool_call_id: "call_1", content: "{\"temp\": 3}" }], { tools });
  assert.ok(second.r.usage.prompt_tokens > first.r.usage.prompt_tokens);
});
await check("tool_choice: a named function makes the reply its call; none hides the tools; auto as default", async () => {
  const messages = [{ role: "user", content: "Weather in Oslo?" }];
  // The random model reasons until it samples <|end|>: a bias makes that likely where the grammar allows it.
  // Its strings are random too: a bias on `"` (id 1) ends them early, and the first seed whose call ends
  // within max_tokens is used.
  let short, named;
  for (let seed = 1; seed <= 8; ++seed) {
    short = { logit_bias: { 200007: 30, 1: 10 }, max_tokens: 600, temperature: 1, seed };
    named = await client.chat.completions.create({ model, messages, tools, ...short,
      tool_choice: { type: "function", function: { name: "get_weather" } } });
    if (named.choices[0].finish_reason !== "length") break;
    assert.equal(named.choices[0].message.tool_calls[0].function.name, "get_weather");
  }
  const calls = named.choices[0].message.tool_calls ?? [];
  assert.equal(named.choices[0].finish_reason, "tool_calls");
  assert.equal(calls.length, 1);
  assert.equal(calls[0].function.name, "get_weather");
  assert.equal(typeof JSON.parse(calls[0].function.arguments).city, "string");
  // Streamed: the same call, its first tool-call delta naming the function.
  const s = await client.chat.completions.create({ model, messages, tools, ...short, stream: true,
    tool_choice: { type: "function", function: { name: "get_weather" } } });
  let first = null, streamedArgs = "";
  for await (const c of s) {
    first ??= c.choices[0]?.delta?.tool_calls?.[0]?.function?.name ?? null;
    streamedArgs += c.choices[0]?.delta?.tool_calls?.[0]?.function?.arguments ?? "";
  }
  assert.equal(first, "get_weather");
  assert.equal(streamedArgs, calls[0].function.arguments);
  const none = await client.chat.completions.create({ model, messages, tools, max_tokens: 4, temperature: 0, tool_choice: "none" });
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
  const auto = await client.chat.completions.create({ model, messages, tools, max_tokens: 4, temperature: 0, tool_choice: "auto" });
  const dflt = await client.chat.completions.create({ model, messages, tools, max_tokens: 4, temperature: 0 });
  assert.equal(none.usage.prompt_tokens, plain.usage.prompt_tokens, "none: the prompt has no tools");
  assert.equal(auto.usage.prompt_tokens, dflt.usage.prompt_tokens);
  assert.ok(auto.usage.prompt_tokens > plain.usage.prompt_tokens);
  const req = await client.chat.completions.create({ model, messages, tools, tool_choice: "required", ...short });
  assert.equal(req.usage.prompt_tokens, auto.usage.prompt_tokens, "required constrains the reply, not the prompt");
  assert.equal(req.choices[0].message.tool_calls[0].function.name, "get_weather");
  await assert.rejects(client.chat.completions.create({ model, messages, tools, tool_choice: { type: "function", function: { name: "nope" } } }),
    e => e.status === 400 && e.param === "tool_choice");
  await assert.rejects(client.chat.completions.create({ model, messages, tool_choice: "required" }), e => e.status === 400);
});
await check("completions with text and with token ids", async () => {
  const a = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 6, temperature: 0 });
  assert.equal(a.object, "text_completion");
  assert.equal(typeof a.choices[0].text, "string");
  const b = await client.completions.create({ model, prompt: [12194, 9598, 261, 1058], max_tokens: 6, temperature: 0 });
  assert.equal(b.usage.prompt_tokens, 4);
  const s = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 6, temperature: 0, stream: true });
  let text = "";
  for await (const c of s) text += c.choices[0]?.text ?? "";
  assert.equal(text, a.choices[0].text);
});
await check("stop strings cut the output and never leak (stream and not)", async () => {
  const prompt = "Once upon a time";
  const full = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
  const text = full.choices[0].text;
  const stop = [...text].slice(6, 9).join("");  // a piece from the middle of the greedy output
  assert.ok(stop.length > 0);
  const want = text.slice(0, text.indexOf(stop));
  const cut = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stop: [stop, "\u0000never"] });
  assert.equal(cut.choices[0].text, want);
  assert.equal(cut.choices[0].finish_reason, "stop");
  const s = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stop, stream: true });
  let streamed = "", finish = null;
  for await (const c of s) { streamed += c.choices[0]?.text ?? ""; finish = c.choices[0]?.finish_reason ?? finish; }
  assert.equal(streamed, want);
  assert.equal(finish, "stop");
});
await check("32 concurrent greedy streams equal each alone", async () => {
  const prompts = Array.from({ length: 32 }, (_, i) => [{ role: "user", content: `Question number ${i}: ${"why ".repeat(i)}` }]);
  const alone = [];
  for (const p of prompts) alone.push((await chatText(p)).text);
  const together = await Promise.all(prompts.map(p => streamText(p)));
  together.forEach((t, i) => assert.equal(t.text, alone[i], `request ${i}`));
});
await check("n > 1: greedy choices agree; seeded choice i is seed + i; stream equals non-stream", async () => {
  const messages = [{ role: "user", content: "Pick a number" }];
  const one = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0 });
  const three = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, n: 3 });
  assert.equal(three.choices.length, 3);
  three.choices.forEach((c, i) => {
    assert.equal(c.index, i);
    assert.deepEqual(c.message, one.choices[0].message);
  });
  assert.equal(three.usage.completion_tokens, 3 * one.usage.completion_tokens);
  assert.equal(three.usage.prompt_tokens, one.usage.prompt_tokens);
  const req = { model, prompt: "Once upon a time", max_tokens: 12, temperature: 1.0 };
  const pair = await client.completions.create({ ...req, n: 2, seed: 7 });
  const s7 = await client.completions.create({ ...req, seed: 7 });
  const s8 = await client.completions.create({ ...req, seed: 8 });
  assert.equal(pair.choices[0].text, s7.choices[0].text);
  assert.equal(pair.choices[1].text, s8.choices[0].text);
  assert.notEqual(s7.choices[0].text, s8.choices[0].text, "different seeds sample differently");
  const st = await client.completions.create({ ...req, n: 2, seed: 7, stream: true });
  const texts = ["", ""], finishes = [null, null];
  for await (const c of st) {
    for (const ch of c.choices) {
      texts[ch.index] += ch.text;
      if (ch.finish_reason) finishes[ch.index] = ch.finish_reason;
    }
  }
  assert.deepEqual(texts, pair.choices.map(c => c.text));
  assert.deepEqual(finishes, pair.choices.map(c => c.finish_reason));
});
async function expectStatus(status, fn) {
  try {
    await fn();
  } catch (e) {
    assert.equal(e.status, status, String(e));
    assert.ok(e.error?.message ?? e.message);
    return;
  }
  assert.fail(`expected HTTP ${status}`);
}
await check("errors: 401, 404, 400", async () => {
  const bad = new OpenAI({ baseURL: `http://${routerAddr}/v1`, apiKey: "wrong", maxRetries: 0 });
  await expectStatus(401, () => bad.models.list());
  await expectStatus(404, () => client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }));
  await expectStatus(400, () => client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], temperature: 5 }));
  await expectStatus(400, () => client.chat.completions.create({ model, messages: [] }));
  await expectStatus(400, () => client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], max_tokens: 100000 }));
  await expectStatus(400, () => client.completions.create({ model, prompt: [1, 999999], max_tokens: 3 }));
});
await check("429 when the queue is full", async () => {
  // Its own worker: a worker serves one router at a time.
  const w2 = await start(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "16MiB"]);
  const r2 = await start(args.router, ["--worker", w2, "--model", args.model, "--port", "0",
    "--max-num-queued-requests", "0"]);
  const c2 = new OpenAI({ baseURL: `http://${r2}/v1`, apiKey: "x", maxRetries: 0 });
  await expectStatus(429, () => c2.chat.completions.create({ model, messages: [{ role: "user", content: "x" }] }));
  const raw = await fetch(`http://${r2}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "x" }) });
  assert.equal(raw.status, 429);
  assert.equal(raw.headers.get("retry-after"), "1");
  assert.equal((await raw.json()).error.type, "rate_limit_error");
});
await check("a client dropping mid-stream does not disturb others", async () => {
  const ctrl = new AbortController();
  const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: "long" }], max_tokens: 400,
    stream: true }, { signal: ctrl.signal });
  let n = 0;
  try {
    for await (const _ of s) if (++n === 3) ctrl.abort();
  } catch (e) { /* aborted */ }
  // Its request leaves the batch and its KV blocks return within a step or so.
  let running = -1, kv = -1;
  for (let i = 0; i < 50 && (running !== 0 || kv !== 0); i++) {
    await new Promise(res => setTimeout(res, 50));
    const m = await (await fetch(`http://${routerAddr}/metrics`)).text();
    running = Number(m.match(/^moeserve_requests_running\{dp_rank="0"\} (\S+)/m)[1]);
    kv = Number(m.match(/^moeserve_kv_cache_usage_ratio\{cache_group="full",dp_rank="0"\} (\S+)/m)[1]);
  }
  assert.deepEqual([running, kv], [0, 0], "the dropped request freed its KV blocks");
  const { r } = await chatText([{ role: "user", content: "still there?" }]);
  assert.ok(r.choices[0].message);
});

await check("a non-streaming client that hangs up has its request aborted at once", async () => {
  const before = await (await fetch(`http://${routerAddr}/metrics`)).text();
  const aborts = m => Number(m.match(/^moeserve_requests_total\{finish_reason="abort"\} (\S+)/m)?.[1] ?? 0);
  const [host, port] = routerAddr.split(":");
  const body = JSON.stringify({ model, prompt: "Once upon a time", max_tokens: 1900, temperature: 0 });
  const sock = net.connect(Number(port), host);
  await new Promise(r => sock.on("connect", r));
  sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-moeserve-test\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await new Promise(r => setTimeout(r, 300));
  const t0 = Date.now();
  sock.destroy();
  let m = "";
  for (let i = 0; i < 40; i++) {
    await new Promise(r => setTimeout(r, 50));
    m = await (await fetch(`http://${routerAddr}/metrics`)).text();
    if (aborts(m) > aborts(before)) break;
  }
  assert.equal(aborts(m), aborts(before) + 1, "the request ended as aborted");
  assert.ok(Date.now() - t0 < 1500, `aborted after ${Date.now() - t0} ms, long before 1,900 tokens`);
  assert.match(m, /^moeserve_requests_running\{dp_rank="0"\} 0$/m);
});

await check("logprobs: chat (stream and not) and completions", async () => {
  const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 12,
    temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs?.content ?? [];
  for (const e of lp) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 3);
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-5, "greedy picks the top token");
    assert.equal(e.token, e.top_logprobs[0].token);
  }
  // Logprobs cover the tokens that produced content as they streamed (the random demo model rarely emits a clean
  // harmony header, so its content is often header text released at the end and has no per-token logprobs).
  assert.ok(lp.length <= r.usage.completion_tokens);
  const c = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 6, temperature: 0, logprobs: 2 });
  const l = c.choices[0].logprobs;
  assert.equal(l.tokens.length, l.token_logprobs.length);
  assert.equal(l.tokens.join(""), c.choices[0].text);
  assert.ok(l.top_logprobs.every(t => Object.keys(t).length >= 1 && Object.keys(t).length <= 2));
  const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 12,
    temperature: 0, logprobs: true, stream: true });
  const streamed = [];
  for await (const ch of s) for (const e of ch.choices[0]?.logprobs?.content ?? []) streamed.push(e.token);
  assert.deepEqual(streamed, lp.map(e => e.token));
});
await check("/metrics exposes the documented series", async () => {
  const text = await (await fetch(`http://${routerAddr}/metrics`)).text();
  for (const name of ["moeserve_requests_total{finish_reason=\"length\"}", "moeserve_requests_total{finish_reason=\"stop\"}",
    "moeserve_prompt_tokens_total", "moeserve_generation_tokens_total", "moeserve_requests_running",
    "moeserve_requests_waiting", "moeserve_kv_cache_usage_ratio{cache_group=\"full\",dp_rank=\"0\"}", "moeserve_preemptions_total",
    "moeserve_time_to_first_token_seconds_bucket", "moeserve_inter_token_latency_seconds_count",
    "moeserve_e2e_request_latency_seconds_sum", "moeserve_request_queue_time_seconds_count",
    "moeserve_step_latency_seconds_count", "moeserve_step_batched_tokens_bucket",
    "moeserve_worker_group_up{dp_rank=\"0\"} 1", "moeserve_worker_group_failures_total{dp_rank=\"0\"} 0"]) {
    assert.ok(text.includes(name), `missing ${name}`);
  }
  const gen = Number(text.match(/^moeserve_generation_tokens_total (\S+)/m)[1]);
  assert.ok(gen > 100, `generation tokens ${gen}`);
  // The worker's own metrics, with expert selections per layer and expert.
  const w = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  for (const name of ["moeserve_worker_step_seconds_count", "moeserve_worker_batch_tokens_bucket",
    "moeserve_worker_sequences", "moeserve_worker_kv_cache_usage_ratio{group=\"full\"}"]) {
    assert.ok(w.includes(name), `missing ${name}`);
  }
  const picks = [...w.matchAll(/^moeserve_worker_expert_selections_total\{expert="(\d+)",layer="0"\} (\S+)/gm)];
  assert.equal(picks.length, 8, "one series per expert of layer 0");
  const total = picks.reduce((a, m) => a + Number(m[2]), 0);
  assert.ok(total > 0 && total % 4 === 0, `layer-0 selections ${total} (4 experts per token)`);
});

await check("logit_bias forces and bans tokens (ids from tiktoken)", async () => {
  const tiktoken = (await import(join(here, "../node/node_modules/tiktoken/tiktoken.cjs"))).default;
  const enc = tiktoken.get_encoding("o200k_base");
  const [the] = enc.encode(" the");
  const forced = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 5, temperature: 0,
    logit_bias: { [the]: 100 }, return_token_ids: true });
  assert.deepEqual(forced.choices[0].token_ids, [the, the, the, the, the]);
  assert.equal(forced.choices[0].text, new TextDecoder().decode(enc.decode(new Uint32Array(Array(5).fill(the)))));
  const plain = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 1, temperature: 0,
    return_token_ids: true });
  const first = plain.choices[0].token_ids[0];
  const banned = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 1, temperature: 0,
    logit_bias: { [first]: -100 }, return_token_ids: true });
  assert.notEqual(banned.choices[0].token_ids[0], first);
  const chat = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 4,
    temperature: 0, logit_bias: { [the]: 100 }, return_token_ids: true });
  assert.deepEqual(chat.choices[0].token_ids, [the, the, the, the]);
});
await check("completions echo: the prompt text first, streamed or not", async () => {
  const prompt = "Once upon a time";
  const r = await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0, echo: true });
  const plain = await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0 });
  assert.equal(r.choices[0].text, prompt + plain.choices[0].text);
  let text = "";
  for await (const c of await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0, echo: true,
    stream: true })) {
    text += c.choices[0]?.text ?? "";
  }
  assert.equal(text, r.choices[0].text);
});
await check("completions echo with logprobs: the prompt's tokens with their logprobs, equal to decoding them", async () => {
  const tiktoken = (await import(join(here, "../node/node_modules/tiktoken/tiktoken.cjs"))).default;
  const enc = tiktoken.get_encoding("o200k_base");
  // Over 128 tokens, so the prompt is computed in several chunks.
  const prompt = Array.from({ length: 30 }, (_, i) => `Line ${i}: once upon a time, a fox.`).join("\n");
  const ids = Array.from(enc.encode(prompt));
  assert.ok(ids.length > 200, `${ids.length} prompt tokens`);
  const req = { model, prompt, max_tokens: 3, temperature: 0, echo: true, logprobs: 3 };
  const r = await client.completions.create(req);
  const lp = r.choices[0].logprobs;
  const n = ids.length + 3;
  assert.equal(lp.tokens.length, n);
  assert.equal(r.choices[0].text.slice(0, prompt.length), prompt);
  for (let i = 0; i < ids.length; i++) {
    assert.equal(lp.tokens[i], new TextDecoder().decode(enc.decode(new Uint32Array([ids[i]]))), `token ${i}`);
  }
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  let offset = 0;
  for (let i = 0; i < n; i++) {
    assert.equal(lp.text_offset[i], offset, `text_offset ${i}`);
    offset += lp.tokens[i].length;
    if (i === 0) continue;
    assert.ok(lp.token_logprobs[i] <= 0, `logprob ${i}`);
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(top.length >= 1 && top.length <= 3, `top ${i}`);
    assert.ok(Math.max(...top) >= lp.token_logprobs[i] - 1e-6, `top ${i} holds the best`);
  }
  // Each prompt token's logprob equals the logprob of that token sampled after
  // the tokens before it (forced by logit_bias, which logprobs do not see): the
  // batched prompt rows against the one-row decode path.
  for (const i of [1, 2, 127, 128, 129, ids.length - 1]) {
    const one = await client.completions.create({ model, prompt: ids.slice(0, i), max_tokens: 1, temperature: 0,
      logprobs: 0, logit_bias: { [ids[i]]: 100 } });
    const want = one.choices[0].logprobs.token_logprobs[0];
    assert.ok(Math.abs(want - lp.token_logprobs[i]) < 2e-3, `position ${i}: echo ${lp.token_logprobs[i]}, decode ${want}`);
  }
  // Again (the prefix cache holds the prompt now, and must not be used) and streamed.
  const again = await client.completions.create(req);
  assert.deepEqual(again.choices[0].logprobs.token_logprobs, lp.token_logprobs);
  const chunks = [];
  for await (const c of await client.completions.create({ ...req, stream: true })) chunks.push(c);
  const first = chunks.find(c => c.choices[0]?.text);
  assert.equal(first.choices[0].text, prompt);
  assert.deepEqual(first.choices[0].logprobs.token_logprobs, lp.token_logprobs.slice(0, ids.length));
  assert.equal(chunks.map(c => c.choices[0]?.text ?? "").join(""), r.choices[0].text);
});
await check("vLLM's extras at their defaults are accepted, and repetition_penalty", async () => {
  const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 4,
    skip_special_tokens: true, include_stop_str_in_output: false, ignore_eos: false, min_tokens: 0, user: "u1",
    metadata: { a: "b" }, store: false, parallel_tool_calls: true });
  assert.equal(r.object, "chat.completion");
  const rep = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 5, repetition_penalty: 1.3 });
  assert.equal(rep.usage.completion_tokens, 5);
});

finish();
