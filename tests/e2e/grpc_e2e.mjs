// The public gRPC API (moeserve.v1) end to end, with the official gRPC client
// (@grpc/grpc-js) and the official openai client side by side against one
// router: the same request must give the same answer and the same errors on
// both. Tokenize is checked against tiktoken (o200k_base shares the ordinary
// tokens of o200k_harmony).
//   node grpc_e2e.mjs --worker BIN --router BIN --model DIR --proto DIR
import { check, finish, parseArgs, start, startProc } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const nodeModules = join(here, "../node/node_modules");
const require = createRequire(join(nodeModules, "x.js"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { default: OpenAI } = await import(pathToFileURL(join(nodeModules, "openai/index.mjs")).href);
const tiktoken = require("tiktoken");
const args = parseArgs(process.argv.slice(2));


const KEY = "sk-grpc-test";
const workerAddr = await start(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "64MiB",
  "--max-model-len", "2048", "--kv-cache-dtype", "f32"]);
const router = await startProc(args.router, ["--worker", workerAddr, "--model", args.model, "--port", "0",
  "--grpc-port", "0", "--api-key", KEY]);
assert.ok(router.grpc, "the router printed its gRPC address");
const model = args.model.replace(/\/+$/, "").split("/").pop();
const openai = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: KEY, maxRetries: 0 });

const def = protoLoader.loadSync(join(args.proto, "moeserve/v1/moeserve.proto"),
  { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
const pkg = grpc.loadPackageDefinition(def).moeserve.v1;
const stub = new pkg.Moeserve(router.grpc, grpc.credentials.createInsecure());
const auth = new grpc.Metadata();
auth.set("authorization", `Bearer ${KEY}`);

function unary(method, req, md = auth) {
  return new Promise((resolve, reject) => stub[method](req, md, (err, res) => (err ? reject(err) : resolve(res))));
}
function streamAll(req, md = auth) {
  return new Promise((resolve, reject) => {
    const out = [];
    const call = stub.Generate(req, md);
    call.on("data", r => out.push(r));
    call.on("error", reject);
    call.on("end", () => resolve(out));
  });
}
async function expectCode(code, p) {
  try {
    await p;
  } catch (e) {
    assert.equal(e.code, code, `${e.code} ${e.details}`);
    assert.ok(e.details.length > 0);
    return e;
  }
  assert.fail(`expected gRPC code ${code}`);
}

await check("ListModels and Health", async () => {
  const m = await unary("ListModels", {});
  assert.equal(m.models.length, 1);
  assert.equal(m.models[0].id, model);
  assert.ok(m.models[0].max_model_len > 0);
  const h = await unary("Health", {});
  assert.deepEqual([h.ready, h.groups_up, h.groups_total], [true, 1, 1]);
});

await check("Tokenize equals tiktoken; Detokenize inverts it", async () => {
  const enc = tiktoken.get_encoding("o200k_base");
  for (const text of ["hello world", "Grüße, 世界! 🙂  tabs\tand\nnewlines", "def f(x):\n    return x**2  # ok", ""]) {
    const r = await unary("Tokenize", { text });
    assert.deepEqual(r.ids, Array.from(enc.encode_ordinary(text)), text);
    assert.equal((await unary("Detokenize", { ids: r.ids })).text, text);
  }
  const sp = await unary("Tokenize", { text: "<|start|>user", allow_special: true });
  assert.equal(sp.ids[0], 200006);
  const plain = await unary("Tokenize", { text: "<|start|>user" });
  assert.ok(plain.ids.length > 2, "specials are plain text unless allowed");
  enc.free();
});

const chat = { messages: [{ role: "user", content: "What is 2 + 2?" }], reasoning_effort: "low" };
await check("GenerateUnary (chat) equals the HTTP chat completion", async () => {
  const g = await unary("GenerateUnary", { chat, max_tokens: 16, temperature: 0 });
  const h = await openai.chat.completions.create({ model, messages: chat.messages, reasoning_effort: "low",
    max_tokens: 16, temperature: 0 });
  const m = h.choices[0].message;
  assert.equal(g.choices.length, 1);
  assert.equal(g.choices[0].text, m.content ?? "");
  assert.equal(g.choices[0].reasoning, m.reasoning_content ?? "");
  assert.equal(g.choices[0].finish_reason, { stop: "FINISH_REASON_STOP", length: "FINISH_REASON_LENGTH",
    tool_calls: "FINISH_REASON_TOOL_CALLS" }[h.choices[0].finish_reason]);
  assert.equal(g.usage.completion_tokens, h.usage.completion_tokens);
  assert.equal(g.usage.prompt_tokens, h.usage.prompt_tokens);
  assert.equal(g.choices[0].token_ids.length, g.usage.completion_tokens);
  assert.equal(g.prompt_token_ids.length, g.usage.prompt_tokens);
});

await check("Generate (stream) equals GenerateUnary: text, reasoning, token ids, usage", async () => {
  const req = { chat, max_tokens: 16, temperature: 0 };
  const u = await unary("GenerateUnary", req);
  const parts = await streamAll(req);
  let text = "", reasoning = "", ids = [], finish = null, usage = null;
  for (const p of parts) {
    for (const c of p.choices) {
      text += c.text;
      reasoning += c.reasoning;
      ids = ids.concat(c.token_ids);
      if (c.finish_reason !== "FINISH_REASON_UNSPECIFIED") finish = c.finish_reason;
    }
    if (p.usage) usage = p.usage;
  }
  assert.equal(text, u.choices[0].text);
  assert.equal(reasoning, u.choices[0].reasoning);
  assert.deepEqual(ids, u.choices[0].token_ids);
  assert.equal(finish, u.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, u.usage.completion_tokens);
});

await check("completions from text and token ids equal HTTP; n and seeds as HTTP", async () => {
  const g = await unary("GenerateUnary", { text: "Once upon a time", max_tokens: 8, temperature: 0 });
  const h = await openai.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
  assert.equal(g.choices[0].text, h.choices[0].text);
  const ids = (await unary("Tokenize", { text: "Once upon a time" })).ids;
  const g2 = await unary("GenerateUnary", { token_ids: { ids }, max_tokens: 8, temperature: 0 });
  assert.equal(g2.choices[0].text, h.choices[0].text);
  const gn = await unary("GenerateUnary", { text: "Once", max_tokens: 8, temperature: 1, seed: 3, n: 2 });
  const hn = await openai.completions.create({ model, prompt: "Once", max_tokens: 8, temperature: 1, seed: 3, n: 2 });
  assert.deepEqual(gn.choices.map(c => c.text), hn.choices.map(c => c.text));
});

await check("logprobs carry token ids; the greedy token is the top one", async () => {
  const g = await unary("GenerateUnary", { text: "Hello", max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = g.choices[0].logprobs;
  assert.equal(lp.length, 5);
  lp.forEach((e, i) => {
    assert.equal(e.token, g.choices[0].token_ids[i]);
    assert.equal(e.top.length, 3);
    assert.equal(e.top[0].token, e.token);
    assert.ok(e.logprob <= 0 && Math.abs(e.top[0].logprob - e.logprob) < 1e-5);
  });
});

await check("errors map to gRPC codes with the HTTP API's messages", async () => {
  await expectCode(grpc.status.UNAUTHENTICATED, unary("ListModels", {}, new grpc.Metadata()));
  await expectCode(grpc.status.UNAUTHENTICATED, streamAll({ text: "x" }, new grpc.Metadata()));
  await expectCode(grpc.status.NOT_FOUND, unary("GenerateUnary", { model: "nope", text: "x" }));
  const e = await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { text: "x", temperature: 5 }));
  assert.match(e.details, /temperature/);
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", {}));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { text: "x", n: 17 }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { text: "x", max_tokens: 100000 }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { token_ids: { ids: [1, 999999] } }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { text: "" }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary",
    { chat: { messages: [{ role: "user", content: "x" }], tools: [{ name: "f", parameters_json: "{oops" }] } }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { chat: { messages: [{ role: "wizard", content: "x" }] } }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { chat: { messages: [] } }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("Detokenize", { ids: [-1] }));
  await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary", { text: "x", stop: [""] }));
  // A tool schema nested 100,000 deep (1 MB): refused like an HTTP body over
  // the nesting limit, not rendered (the renderer and the grammar compiler
  // recurse on it), and the router keeps serving.
  const deep = '{"type":"object","properties":{"a":'.repeat(100000) + '{"type":"string"}' + "}}".repeat(100000);
  const d = await expectCode(grpc.status.INVALID_ARGUMENT, unary("GenerateUnary",
    { chat: { messages: [{ role: "user", content: "x" }], tools: [{ name: "f", parameters_json: deep }] } }));
  assert.match(d.details, /nests deeper than 64 levels/);
  const ok = await unary("GenerateUnary", { text: "x", max_tokens: 2, temperature: 0 });
  assert.ok(ok.choices.length === 1);
  // The HTTP API answers the same request the same way.
  await assert.rejects(openai.completions.create({ model, prompt: "x", temperature: 5 }), e2 => e2.status === 400);
});

await check("a cancelled stream frees its request; the router keeps serving", async () => {
  const call = stub.Generate({ text: "long", max_tokens: 1500, temperature: 0 }, auth);
  await new Promise(resolve => {
    let n = 0;
    call.on("data", () => { if (++n === 3) { call.cancel(); resolve(); } });
    call.on("error", () => resolve());
  });
  let running = -1;
  for (let i = 0; i < 50 && running !== 0; i++) {
    await new Promise(r => setTimeout(r, 100));
    const m = await (await fetch(`http://${router.addr}/metrics`)).text();
    running = Number(m.match(/^moeserve_requests_running\{dp_rank="0"\} (\S+)/m)[1]);
  }
  assert.equal(running, 0, "the cancelled request left the batch");
  const g = await unary("GenerateUnary", { text: "still there?", max_tokens: 3, temperature: 0 });
  assert.equal(g.choices[0].token_ids.length, 3);
});

stub.close();
finish();
