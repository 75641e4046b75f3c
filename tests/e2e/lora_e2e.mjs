// LoRA adapters end to end with the official npm `openai` client: a router
// and worker serving the demo model with three generated PEFT adapters
// (attention only, per-expert, fused experts with the router), chosen by
// `model`; a second router and worker on the checkpoint `moeserve merge-lora`
// wrote for the fused adapter, as the reference. Adapters loaded and unloaded
// at run time while other streams run, bad adapters refused with the API's
// error shape, prefix-cache namespaces, the Ollama API and metrics.
//   node lora_e2e.mjs --worker BIN --router BIN --model DIR --moeserve BIN --proto DIR
import { check, finish, parseArgs, start, startProc } from "./procs.mjs";
import { createRequire } from "node:module";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const require = createRequire(join(here, "../node/node_modules/x.js"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const args = parseArgs(process.argv.slice(2));
const tmp = mkdtempSync(join(tmpdir(), "moeserve-lora-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

const gen = (name, ...flags) => {
  execFileSync(args.moeserve, ["gen-lora", "--model", args.model, "--out", join(tmp, name), ...flags]);
  return join(tmp, name);
};
const attn = gen("attn", "--layout", "attention", "--seed", "1");
const expert = gen("expert", "--layout", "per-expert", "--seed", "2", "--rank", "4");
const fused = gen("fused", "--layout", "fused", "--seed", "3", "--rank", "16", "--router", "--rslora");
const late = gen("late", "--layout", "fused", "--seed", "4");
execFileSync(args.moeserve, ["merge-lora", "--model", args.model, "--lora", fused, "--out", join(tmp, "merged")]);
// An adapter of another model's shape (the tiny preset).
execFileSync(args.moeserve, ["gen-checkpoint", "--preset", "tiny", "--out", join(tmp, "tiny"),
  "--lora-out", join(tmp, "tiny-lora")]);

const key = "sk-lora-test";
const metricsPort = 20000 + Math.floor(Math.random() * 20000);
const common = ["--port", "0", "--kv-cache-memory", "64MiB", "--max-num-seqs", "16", "--max-model-len", "2048",
  "--kv-cache-dtype", "f32", "--threads", "1"];
const workerAddr = await start(args.worker, ["--model", args.model, ...common, "--metrics-port", String(metricsPort)]);
const routerProc = await startProc(args.router, ["--worker", workerAddr, "--model", args.model, "--port", "0",
  "--api-key", key, "--max-num-batched-tokens", "256", "--lora-modules", `attn=${attn}`, `expert=${expert}`,
  "--lora-modules", `{"name": "fused", "path": "${fused}"}`, "--max-loras", "4", "--grpc-port", "0"]);
const routerAddr = routerProc.addr;
const mergedWorker = await start(args.worker, ["--model", join(tmp, "merged"), ...common]);
const mergedRouter = await start(args.router, ["--worker", mergedWorker, "--model", join(tmp, "merged"), "--port", "0",
  "--max-num-batched-tokens", "256", "--served-model-name", "merged"]);
const model = args.model.replace(/\/+$/, "").split("/").pop();
const client = new OpenAI({ baseURL: `http://${routerAddr}/v1`, apiKey: key, maxRetries: 0 });
const reference = new OpenAI({ baseURL: `http://${mergedRouter}/v1`, apiKey: "x", maxRetries: 0 });

const prompt = "The three laws of thermodynamics say that";
async function complete(m, extra = {}, c = client) {
  const r = await c.completions.create({ model: m, prompt, max_tokens: 12, temperature: 0, logprobs: 3, ...extra });
  return { r, tokens: r.choices[0].logprobs.tokens, lps: r.choices[0].logprobs.token_logprobs, text: r.choices[0].text };
}
async function streamed(m, max_tokens) {
  const s = await client.completions.create({ model: m, prompt, max_tokens, temperature: 0, stream: true });
  let text = "";
  for await (const c of s) text += c.choices[0]?.text ?? "";
  return text;
}
async function post(path, body, auth = key) {
  const res = await fetch(`http://${routerAddr}${path}`, { method: "POST", body: JSON.stringify(body),
    headers: { "content-type": "application/json", ...(auth ? { authorization: `Bearer ${auth}` } : {}) } });
  return { status: res.status, text: await res.text() };
}
async function workerMetric(name) {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\S+)`, "m"));
  assert.ok(m, `worker metric ${name} missing`);
  return Number(m[1]);
}
async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 100));
  }
}

const solo = {};
await check("/v1/models lists the adapters with the base model as parent", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push([m.id, m.parent ?? null, m.root]);
  assert.deepEqual(ids.map(x => x[0]), [model, "attn", "expert", "fused"]);
  for (const [id, parent, root] of ids.slice(1)) {
    assert.equal(parent, model, id);
    assert.equal(root, { attn, expert, fused }[id]);
  }
});

await check("each adapter is chosen by model and changes the output", async () => {
  for (const m of [model, "attn", "expert", "fused"]) solo[m] = await complete(m);
  for (const m of ["attn", "expert", "fused"]) {
    assert.equal(solo[m].r.model, m, "the response names the adapter");
    const d = Math.abs(solo[m].lps[0] - solo[model].lps[0]);
    assert.ok(d > 1e-3 || solo[m].text !== solo[model].text, `${m} serves the base model's output`);
  }
});

await check("the fused adapter equals the merged checkpoint (tokens, logprobs to 2e-3)", async () => {
  const want = await complete("merged", {}, reference);
  assert.deepEqual(solo.fused.tokens, want.tokens);
  for (let i = 0; i < want.lps.length; ++i) {
    assert.ok(Math.abs(solo.fused.lps[i] - want.lps[i]) < 2e-3, `token ${i}: ${solo.fused.lps[i]} vs ${want.lps[i]}`);
  }
});

await check("concurrent requests of the base model and three adapters equal each alone", async () => {
  const ms = [model, "attn", "expert", "fused", model, "attn", "expert", "fused"];
  const got = await Promise.all(ms.map(m => complete(m)));
  got.forEach((g, i) => assert.deepEqual(g.tokens, solo[ms[i]].tokens, `${ms[i]} in a mixed batch`));
});

await check("an unknown model is a 404 in OpenAI's shape", async () => {
  await assert.rejects(client.completions.create({ model: "nope", prompt, max_tokens: 2 }),
    e => e.status === 404 && e.code === "model_not_found" && /nope/.test(e.message));
});

await check("bad adapters and bad load requests are refused with clear errors", async () => {
  let r = await post("/v1/load_lora_adapter", { lora_name: "x", lora_path: join(tmp, "missing") });
  assert.equal(r.status, 404, r.text);
  assert.match(JSON.parse(r.text).error.message, /missing/);
  r = await post("/v1/load_lora_adapter", { lora_name: "x", lora_path: join(tmp, "tiny-lora") });
  assert.equal(r.status, 400, r.text);
  assert.match(JSON.parse(r.text).error.message, /another base model/);
  r = await post("/v1/load_lora_adapter", { lora_name: "attn", lora_path: late });
  assert.equal(r.status, 400, r.text);
  assert.match(JSON.parse(r.text).error.message, /already been loaded/);
  r = await post("/v1/load_lora_adapter", { lora_name: model, lora_path: late });
  assert.equal(r.status, 400, r.text);
  r = await post("/v1/load_lora_adapter", { lora_name: "x" });
  assert.equal(r.status, 400, r.text);
  assert.match(JSON.parse(r.text).error.message, /lora_path/);
  r = await post("/v1/load_lora_adapter", { lora_name: "x", lora_path: late }, null);
  assert.equal(r.status, 401, r.text);
  r = await post("/v1/unload_lora_adapter", { lora_name: "never" });
  assert.equal(r.status, 404, r.text);
});

await check("loading at run time while other streams run; they are unharmed", async () => {
  const alone = { [model]: await streamed(model, 48), attn: await streamed("attn", 48) };
  const running = [streamed(model, 48), streamed("attn", 48), streamed(model, 48)];
  const r = await post("/v1/load_lora_adapter", { lora_name: "late", lora_path: late });
  assert.equal(r.status, 200, r.text);
  assert.match(r.text, /late/);
  const [a, b, c] = await Promise.all(running);
  assert.equal(a, alone[model]);
  assert.equal(b, alone.attn);
  assert.equal(c, alone[model]);
  // --max-loras 4: attn, expert, fused and late fill it.
  const full = await post("/v1/load_lora_adapter", { lora_name: "fifth", lora_path: late });
  assert.equal(full.status, 400, full.text);
  assert.match(JSON.parse(full.text).error.message, /max-loras/);
  const l = await complete("late");
  assert.notDeepEqual(l.lps, solo.fused.lps);
  assert.ok(Math.abs(l.lps[0] - solo[model].lps[0]) > 1e-3 || l.text !== solo[model].text);
});

await check("unloading frees the worker's memory; a stream of the adapter finishes first", async () => {
  const before = await workerMetric("moeserve_worker_lora_adapter_bytes");
  assert.equal(await workerMetric("moeserve_worker_lora_adapters"), 4);
  const alone = await streamed("expert", 64);
  const running = streamed("expert", 64);
  await new Promise(r => setTimeout(r, 50));
  let r = await post("/v1/unload_lora_adapter", { lora_name: "expert" });
  assert.equal(r.status, 200, r.text);
  await assert.rejects(client.completions.create({ model: "expert", prompt, max_tokens: 2 }), e => e.status === 404);
  assert.equal(await running, alone, "the running stream was disturbed");
  r = await post("/v1/unload_lora_adapter", { lora_name: "late" });
  assert.equal(r.status, 200, r.text);
  await until("the workers to drop two adapters", async () => (await workerMetric("moeserve_worker_lora_adapters")) === 2);
  assert.ok(await workerMetric("moeserve_worker_lora_adapter_bytes") < before);
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, [model, "attn", "fused"]);
  // The freed slot takes a new adapter, which serves as before.
  r = await post("/v1/load_lora_adapter", { lora_name: "expert2", lora_path: expert });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual((await complete("expert2")).tokens, solo.expert.tokens);
});

await check("prefix-cache blocks are never shared between the base model and an adapter", async () => {
  const sys = "Rules: " + Array.from({ length: 60 }, (_, i) => `rule ${i} is ${i * 7}.`).join(" ");
  const ask = m => client.chat.completions.create({ model: m, max_tokens: 4, temperature: 0,
    messages: [{ role: "system", content: sys }, { role: "user", content: "rule 3?" }] });
  await ask(model);
  const again = await ask(model);
  assert.ok(again.usage.prompt_tokens_details.cached_tokens > 0, "the base model reuses its prefix");
  const first = await ask("attn");
  assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0, "an adapter reused the base model's blocks");
  const second = await ask("attn");
  assert.ok(second.usage.prompt_tokens_details.cached_tokens > 0, "the adapter reuses its own prefix");
  assert.equal(second.choices[0].message.content, first.choices[0].message.content);
});

await check("the Ollama API and chat completions choose adapters too", async () => {
  const tags = await (await fetch(`http://${routerAddr}/api/tags`, { headers: { authorization: `Bearer ${key}` } })).json();
  assert.ok(tags.models.some(m => m.name === "attn:latest" && m.details.parent_model === `${model}:latest`));
  const body = { model: "attn:latest", prompt, stream: false, raw: true, options: { temperature: 0, num_predict: 12 } };
  const res = await fetch(`http://${routerAddr}/api/generate`, { method: "POST", body: JSON.stringify(body),
    headers: { authorization: `Bearer ${key}` } });
  const j = await res.json();
  assert.equal(res.status, 200, JSON.stringify(j));
  assert.equal(j.response, solo.attn.text);
  assert.equal(j.model, "attn:latest");
});

await check("the Responses API and gRPC choose adapters too", async () => {
  const r = await client.responses.create({ model: "fused", input: "What is 2 + 2?", max_output_tokens: 12,
    temperature: 0 });
  assert.equal(r.model, "fused");
  const c = await client.chat.completions.create({ model: "fused", max_tokens: 12, temperature: 0,
    messages: [{ role: "user", content: "What is 2 + 2?" }] });
  assert.equal(r.output_text, c.choices[0].message.content ?? "");
  const base = await client.chat.completions.create({ model, max_tokens: 12, temperature: 0,
    messages: [{ role: "user", content: "What is 2 + 2?" }] });
  const def = protoLoader.loadSync(join(args.proto, "moeserve/v1/moeserve.proto"),
    { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
  const stub = new (grpc.loadPackageDefinition(def).moeserve.v1.Moeserve)(routerProc.grpc,
    grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${key}`);
  const unary = (method, req) => new Promise((res, rej) => stub[method](req, md, (e, v) => (e ? rej(e) : res(v))));
  const models = await unary("ListModels", {});
  // The same list as /v1/models (which the unload check above leaves as base, attn, expert2, fused).
  const listed = [];
  for await (const m of client.models.list()) listed.push([m.id, m.parent ?? ""]);
  assert.ok(listed.length >= 3, JSON.stringify(listed));
  assert.deepEqual(models.models.map(m => [m.id, m.parent]), listed);
  const chat = { messages: [{ role: "user", content: "What is 2 + 2?" }] };
  const g = await unary("GenerateUnary", { model: "fused", chat, max_tokens: 12, temperature: 0 });
  assert.equal(g.choices[0].text, c.choices[0].message.content ?? "");
  assert.deepEqual(g.choices[0].token_ids.length, c.usage.completion_tokens);
  const gb = await unary("GenerateUnary", { chat, max_tokens: 12, temperature: 0 });
  assert.equal(gb.choices[0].text + gb.choices[0].reasoning, (base.choices[0].message.content ?? "") +
    (base.choices[0].message.reasoning_content ?? ""));
  assert.notEqual(g.choices[0].text + g.choices[0].reasoning, gb.choices[0].text + gb.choices[0].reasoning,
    "gRPC served the base model for the adapter");
  await assert.rejects(unary("GenerateUnary", { model: "nope", chat, max_tokens: 2 }), e => e.code === 5);
});

await check("per-adapter metrics", async () => {
  const text = await (await fetch(`http://${routerAddr}/metrics`)).text();
  const n = name => Number(text.match(new RegExp(`^${name} (\\S+)`, "m"))?.[1] ?? NaN);
  assert.ok(n('moeserve_lora_requests_total\\{adapter="attn",finish_reason="length"\\}') >= 4, text);
  assert.ok(n('moeserve_lora_generation_tokens_total\\{adapter="fused"\\}') >= 24);
  assert.match(text, /moeserve_lora_adapters\{adapter="fused",bytes="\d+",rank="16"\} 1/);
  assert.doesNotMatch(text, /moeserve_lora_adapters\{adapter="expert",/);
});

finish();
