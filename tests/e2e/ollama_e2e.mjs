// The Ollama API end to end with the clients Ollama users have: the official
// `ollama` JavaScript client and LangChain's ChatOllama, against real
// processes on loopback.
//   - a router in front of the demo model (random weights, real tokenizer):
//     /api/chat and /api/generate against the OpenAI API of the same router
//     (greedy: the same tokens), streaming against not, options, errors;
//   - a router in front of the fake worker replaying a scripted harmony reply
//     (reasoning, then a call to get_weather) whose token ids come from
//     tiktoken: thinking and tool calls as Ollama's clients read them.
//   node ollama_e2e.mjs --worker BIN --router BIN --model DIR --fake-worker BIN
import { check, finish, parseArgs } from "./procs.mjs";
import { kReasoning, nodeModules as nm, startRouters } from "./scripted.mjs";
import { join } from "node:path";
import assert from "node:assert/strict";

const { Ollama } = await import(join(nm, "ollama/dist/index.mjs"));
const { default: OpenAI } = await import(join(nm, "openai/index.mjs"));
const { ChatOllama } = await import(join(nm, "@langchain/ollama/dist/index.js"));
const { tool } = await import(join(nm, "@langchain/core/dist/tools/index.js"));
const args = parseArgs(process.argv.slice(2));

const model = args.model.replace(/\/+$/, "").split("/").pop();
const { demo: router, scripted } = await startRouters(args, { demoFlags: ["--ollama-port", "0"],
  callArgs: '{"city": "Paris", "days": 2}' });
const ollama = new Ollama({ host: `http://${router.addr}` });
const openai = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "unused", maxRetries: 0 });
const scriptedOllama = new Ollama({ host: `http://${scripted.addr}` });
const weatherTool = { type: "function", function: { name: "get_weather", description: "Current weather",
  parameters: { type: "object", properties: { city: { type: "string" }, days: { type: "integer" } },
    required: ["city"] } } };

async function raw(path, init = {}, addr = router.addr) {
  const r = await fetch(`http://${addr}${path}`, init);
  return { status: r.status, type: r.headers.get("content-type"), text: await r.text() };
}
async function expectOllamaError(status, promise, pattern) {
  await assert.rejects(promise, e => {
    assert.equal(e.status_code, status, `status ${e.status_code}: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

await check("version, tags, ps, show", async () => {
  assert.match((await ollama.version()).version, /^\d+\.\d+\.\d+$/);
  const tags = await ollama.list();
  assert.deepEqual(tags.models.map(m => m.name), [`${model}:latest`]);
  assert.equal(tags.models[0].details.family, "gpt-oss");
  const ps = await ollama.ps();
  assert.equal(ps.models.length, 1);
  assert.equal(ps.models[0].context_length, 2048);
  const show = await ollama.show({ model });
  assert.deepEqual(show.capabilities, ["completion", "tools", "thinking"]);
  assert.equal(show.model_info["gpt-oss.context_length"], 2048);
  await expectOllamaError(404, ollama.show({ model: "llama3" }), /not found/);
});

await check("chat equals the OpenAI chat of the same request (greedy), counts and durations", async () => {
  const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Why is the sky blue?" }];
  const o = await ollama.chat({ model, messages, stream: false, think: "low",
    options: { temperature: 0, num_predict: 24 } });
  const c = await openai.chat.completions.create({ model, messages, temperature: 0, max_tokens: 24,
    reasoning_effort: "low" });
  const m = c.choices[0].message;
  assert.equal(o.message.role, "assistant");
  assert.equal(o.message.content, m.content ?? "");
  assert.equal(o.message.thinking ?? "", m.reasoning_content ?? "");
  assert.equal(o.done, true);
  assert.equal(o.done_reason, c.choices[0].finish_reason === "length" ? "length" : "stop");
  assert.equal(o.eval_count, c.usage.completion_tokens);
  assert.equal(o.prompt_eval_count, c.usage.prompt_tokens);
  for (const k of ["total_duration", "prompt_eval_duration", "eval_duration"]) {
    assert.ok(Number.isInteger(o[k]) && o[k] > 0, `${k}: ${o[k]}`);
  }
  assert.ok(o.total_duration >= o.prompt_eval_duration);
  assert.ok(!Number.isNaN(Date.parse(o.created_at)));
});

await check("chat streamed (NDJSON) equals chat not streamed", async () => {
  const req = { model, messages: [{ role: "user", content: "Count to five." }], options: { temperature: 0, num_predict: 20 } };
  const whole = await ollama.chat({ ...req, stream: false });
  let content = "", thinking = "", last = null, parts = 0;
  for await (const part of await ollama.chat({ ...req, stream: true })) {
    content += part.message.content;
    thinking += part.message.thinking ?? "";
    parts++;
    last = part;
  }
  assert.ok(parts >= 2);
  assert.equal(content, whole.message.content);
  assert.equal(thinking, whole.message.thinking ?? "");
  assert.equal(last.done, true);
  assert.equal(last.eval_count, whole.eval_count);
  const r = await raw("/api/chat", { method: "POST", body: JSON.stringify({ ...req, stream: true }) });
  assert.equal(r.type, "application/x-ndjson");
  const lines = r.text.trim().split("\n").map(l => JSON.parse(l));
  assert.ok(lines.slice(0, -1).every(l => l.done === false) && lines.at(-1).done === true);
});

await check("think: false hides the reasoning; options num_predict, stop, seed", async () => {
  const messages = [{ role: "user", content: "Hello" }];
  const hidden = await ollama.chat({ model, messages, stream: false, think: false, options: { num_predict: 12 } });
  assert.equal(hidden.message.thinking, undefined);
  const a = await ollama.chat({ model, messages, stream: false, options: { num_predict: 5, seed: 7, temperature: 1 } });
  const b = await ollama.chat({ model, messages, stream: false, options: { num_predict: 5, seed: 7, temperature: 1 } });
  assert.equal(a.eval_count, 5);
  assert.equal(a.done_reason, "length");
  assert.equal((a.message.thinking ?? "") + a.message.content, (b.message.thinking ?? "") + b.message.content);
  // LangChain's defaults send runner options: accepted.
  const tuned = await ollama.chat({ model, messages, stream: false,
    options: { num_predict: 3, num_ctx: 4096, num_gpu: 1, num_thread: 4, repeat_penalty: 1.1, top_k: 40, top_p: 0.9, min_p: 0.05 } });
  assert.equal(tuned.eval_count, 3);
});

await check("generate: prompt and system, raw, load, streaming", async () => {
  const g = await ollama.generate({ model, prompt: "Why is the sky blue?", system: "Be brief.", stream: false,
    think: "low", options: { temperature: 0, num_predict: 24 } });
  const o = await ollama.chat({ model, messages: [{ role: "system", content: "Be brief." },
    { role: "user", content: "Why is the sky blue?" }], stream: false, think: "low", options: { temperature: 0, num_predict: 24 } });
  assert.equal(g.response, o.message.content);
  assert.equal(g.thinking ?? "", o.message.thinking ?? "");
  assert.equal(g.prompt_eval_count, o.prompt_eval_count);
  const r = await ollama.generate({ model, prompt: "<|start|>user<|message|>Hi<|end|><|start|>assistant", raw: true,
    stream: false, options: { temperature: 0, num_predict: 6 } });
  assert.equal(r.eval_count, 6);
  const c = await openai.completions.create({ model, prompt: "<|start|>user<|message|>Hi<|end|><|start|>assistant",
    temperature: 0, max_tokens: 6 });
  assert.equal(r.response, c.choices[0].text);
  assert.equal(r.prompt_eval_count, c.usage.prompt_tokens);
  const load = await ollama.generate({ model, prompt: "", stream: false });
  assert.equal(load.done_reason, "load");
  let text = "";
  for await (const p of await ollama.generate({ model, prompt: "Hi", stream: true, options: { temperature: 0, num_predict: 10 } })) {
    text += p.response;
  }
  const whole = await ollama.generate({ model, prompt: "Hi", stream: false, options: { temperature: 0, num_predict: 10 } });
  assert.equal(text, whole.response);
});

await check("thinking and tool calls as the ollama client reads them (scripted reply)", async () => {
  const messages = [{ role: "user", content: "Weather in Paris?" }];
  const r = await scriptedOllama.chat({ model, messages, tools: [weatherTool], stream: false });
  assert.equal(r.message.thinking, kReasoning);
  assert.equal(r.message.content, "");
  assert.equal(r.message.tool_calls.length, 1);
  assert.equal(r.message.tool_calls[0].function.name, "get_weather");
  assert.deepEqual(r.message.tool_calls[0].function.arguments, { city: "Paris", days: 2 });
  let thinking = "", calls = [];
  for await (const p of await scriptedOllama.chat({ model, messages, tools: [weatherTool], stream: true })) {
    thinking += p.message.thinking ?? "";
    calls = calls.concat(p.message.tool_calls ?? []);
  }
  assert.equal(thinking, kReasoning);
  assert.deepEqual(calls.map(c => [c.function.name, c.function.arguments]), [["get_weather", { city: "Paris", days: 2 }]]);
  // The round trip: the call and its result go back; the prompt grows by them.
  const back = await scriptedOllama.chat({ model, stream: false, tools: [weatherTool], messages: [...messages,
    { role: "assistant", content: "", thinking: r.message.thinking, tool_calls: r.message.tool_calls },
    { role: "tool", content: "sunny, 21 C", tool_name: "get_weather" }] });
  assert.ok(back.prompt_eval_count > r.prompt_eval_count + 10);
});

await check("LangChain ChatOllama: invoke, stream, tools bound, reasoning", async () => {
  const llm = new ChatOllama({ baseUrl: `http://${router.addr}`, model, temperature: 0, numPredict: 16 });
  const m = await llm.invoke("Tell me a joke.");
  assert.equal(typeof m.content, "string");
  assert.ok(m.usage_metadata.output_tokens === 16 || m.response_metadata.done_reason === "stop");
  let streamed = "";
  for await (const chunk of await llm.stream("Tell me a joke.")) streamed += chunk.content;
  assert.equal(streamed, m.content);
  const getWeather = tool(async ({ city }) => `sunny in ${city}`, { name: "get_weather", description: "Current weather",
    schema: { type: "object", properties: { city: { type: "string" }, days: { type: "integer" } }, required: ["city"] } });
  const agent = new ChatOllama({ baseUrl: `http://${scripted.addr}`, model, think: true }).bindTools([getWeather]);
  const call = await agent.invoke("Weather in Paris?");
  assert.deepEqual(call.tool_calls.map(t => [t.name, t.args]), [["get_weather", { city: "Paris", days: 2 }]]);
  assert.equal(call.additional_kwargs.reasoning_content, kReasoning);
});

await check("errors in Ollama's shape: unknown model, bad options, images, suffix, format, management routes", async () => {
  await expectOllamaError(404, ollama.chat({ model: "llama3", messages: [{ role: "user", content: "x" }], stream: false }),
    /not found/);
  await expectOllamaError(400, ollama.chat({ model, messages: [{ role: "user", content: "x" }], stream: false,
    options: { mirostat: 2 } }), /mirostat/);
  await expectOllamaError(400, ollama.chat({ model, messages: [{ role: "user", content: "x", images: ["aGk="] }],
    stream: false }), /images/);
  await expectOllamaError(400, ollama.generate({ model, prompt: "def f(", suffix: "return x", stream: false }), /suffix/);
  await expectOllamaError(400, ollama.chat({ model, messages: [{ role: "user", content: "x" }], stream: false,
    think: "maximum" }), /think/);
  await expectOllamaError(400, ollama.chat({ model, messages: [{ role: "user", content: "x" }], stream: false,
    format: { type: "object", patternProperties: {} } }), /patternProperties/);
  await expectOllamaError(400, ollama.embed({ model, input: "x" }), /embeddings/);
  for (const [path, body] of [["/api/pull", { model: "llama3" }], ["/api/create", { model: "x" }],
    ["/api/delete", { model }], ["/api/copy", { source: model, destination: "y" }], ["/api/push", { model }]]) {
    const r = await raw(path, { method: path === "/api/delete" ? "DELETE" : "POST", body: JSON.stringify(body) });
    assert.equal(r.status, 501, path);
    assert.match(JSON.parse(r.text).error, /--model/);
  }
  for (const [path, body] of [["/api/chat", "{"], ["/api/chat", "[]"], ["/api/chat", JSON.stringify({ model, messages: "hi" })],
    ["/api/chat", JSON.stringify({ model, messages: [{ role: 5 }] })], ["/api/generate", JSON.stringify({ model, prompt: 5 })],
    ["/api/chat", JSON.stringify({ messages: [] })], ["/api/generate", JSON.stringify({ model, prompt: "x", options: { num_predict: 0 } })],
    ["/api/chat", JSON.stringify({ model, messages: [{ role: "user", content: "x" }], options: { temperature: "hot" } })]]) {
    const r = await raw(path, { method: "POST", body });
    assert.equal(r.status, 400, body);
    assert.equal(typeof JSON.parse(r.text).error, "string", r.text);
  }
});

await check("--ollama-port: Ollama's root answer, and the same API", async () => {
  const r = await raw("/", {}, router.ollama);
  assert.equal(r.text, "Ollama is running");
  const onPort = new Ollama({ host: `http://${router.ollama}` });
  const a = await onPort.chat({ model: `${model}:latest`, messages: [{ role: "user", content: "Hi" }], stream: false,
    options: { temperature: 0, num_predict: 8 } });
  const b = await ollama.chat({ model, messages: [{ role: "user", content: "Hi" }], stream: false,
    options: { temperature: 0, num_predict: 8 } });
  assert.equal(a.message.content, b.message.content);
  assert.equal(a.model, `${model}:latest`);
});

finish();
