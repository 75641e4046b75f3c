// A matrix of malformed and hostile requests against a real router + worker:
// each gets the right 4xx with its API's error body (OpenAI's; Ollama's on /api/),
// including /v1/responses and the Ollama routes, and the server keeps
// serving (checked after the matrix, and during a slow client). Then the
// connection limits of docs/limits.md over raw sockets: header size, malformed
// HTTP, header and body timeouts (408), idle keep-alive connections, and the
// connection limit (503).
//   node bad_input.mjs --worker BIN --router BIN --model DIR
import { parseArgs, start } from "./procs.mjs";
import net from "node:net";
import assert from "node:assert/strict";

const args = parseArgs(process.argv.slice(2));

const worker = await start(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "64MiB",
  "--max-model-len", "2048"]);
const kMaxConnections = 24;
const router = await start(args.router, ["--worker", worker, "--model", args.model, "--port", "0", "--api-key", "k",
  "--max-connections", String(kMaxConnections), "--http-idle-timeout", "3", "--http-header-timeout", "2",
  "--http-body-timeout", "2"]);
const base = `http://${router}`;
const model = args.model.replace(/\/+$/, "").split("/").pop();
const H = { "content-type": "application/json", authorization: "Bearer k" };
const chat = (body) => ({ path: "/v1/chat/completions", body: JSON.stringify({ model, ...body }) });
const user = [{ role: "user", content: "hi" }];
const comp = (body) => ({ path: "/v1/completions", body: JSON.stringify({ model, ...body }) });
const resp = (body) => ({ path: "/v1/responses", body: JSON.stringify({ model, ...body }) });
// Ollama's routes answer in Ollama's shape: {"error": "..."}.
const ochat = (body) => ({ path: "/api/chat", ollama: true, body: JSON.stringify({ model, stream: false, ...body }) });
const ogen = (body) => ({ path: "/api/generate", ollama: true, body: JSON.stringify({ model, stream: false, ...body }) });

const cases = [
  ["broken JSON", 400, { path: "/v1/chat/completions", body: "{" }],
  ["JSON array body", 400, { path: "/v1/chat/completions", body: "[]" }],
  ["empty body", 400, { path: "/v1/chat/completions", body: "" }],
  ["messages missing", 400, chat({})],
  ["messages not an array", 400, chat({ messages: "hi" })],
  ["messages empty", 400, chat({ messages: [] })],
  ["message without role", 400, chat({ messages: [{ content: "x" }] })],
  ["unknown role", 400, chat({ messages: [{ role: "wizard", content: "x" }] })],
  ["content is a number", 400, chat({ messages: [{ role: "user", content: 5 }] })],
  ["image content part", 400, chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] })],
  ["temperature string", 400, chat({ messages: user, temperature: "hot" })],
  ["temperature negative", 400, chat({ messages: user, temperature: -1 })],
  ["temperature too high", 400, chat({ messages: user, temperature: 3 })],
  ["top_p zero", 400, chat({ messages: user, top_p: 0 })],
  ["top_p above one", 400, chat({ messages: user, top_p: 1.5 })],
  ["max_tokens zero", 400, chat({ messages: user, max_tokens: 0 })],
  ["max_tokens negative", 400, chat({ messages: user, max_tokens: -5 })],
  ["max_tokens huge", 400, chat({ messages: user, max_tokens: 1e12 })],
  ["max_tokens beyond the context", 400, chat({ messages: user, max_tokens: 100000 })],
  ["max_tokens string", 400, chat({ messages: user, max_tokens: "10" })],
  ["n = 17 (above the limit of 16)", 400, chat({ messages: user, n: 17 })],
  ["n = 0", 400, chat({ messages: user, n: 0 })],
  ["tool_choice a number", 400, chat({ messages: user, tool_choice: 5 })],
  ["tool_choice unknown string", 400, chat({ messages: user, tool_choice: "sometimes" })],
  ["tool_choice names a missing function", 400, chat({ messages: user, tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "g" } } })],
  ["tool_choice required without tools", 400, chat({ messages: user, tool_choice: "required" })],
  // Found by fuzz_chat_render: a field of the wrong JSON type used to end the router (an uncaught type_error).
  ["a tool whose type is an object", 400, chat({ messages: user, tools: [{ type: { a: 1 }, function: { name: "f" } }] })],
  ["tool_choice whose type is an object", 400, chat({ messages: user, tool_choice: { type: { a: 1 } } })],
  ["a tool whose function name is an object", 400, chat({ messages: user, tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: { x: 1 } } } })],
  ["a content part whose type is a number", 400, chat({ messages: [{ role: "user", content: [{ type: 5, text: "x" }] }] })],
  ["n = 1.5", 400, chat({ messages: user, n: 1.5 })],
  ["stop_token_ids outside the vocabulary", 400, chat({ messages: user, stop_token_ids: [1 << 30] })],
  ["stop_token_ids not an array", 400, chat({ messages: user, stop_token_ids: 5 })],
  ["stream_options not an object", 400, chat({ messages: user, stream: true, stream_options: 3 })],
  ["return_token_ids not a boolean", 400, chat({ messages: user, return_token_ids: "yes" })],
  ["stream not boolean", 400, chat({ messages: user, stream: "yes" })],
  ["top_logprobs too many", 400, chat({ messages: user, top_logprobs: 50 })],
  ["seed not integer", 400, chat({ messages: user, seed: "abc" })],
  ["presence_penalty out of range", 400, chat({ messages: user, presence_penalty: 5 })],
  ["frequency_penalty out of range", 400, chat({ messages: user, frequency_penalty: -3 })],
  ["model not a string", 400, chat({ messages: user, model: 123 })],
  ["unknown model", 404, chat({ messages: user, model: "gpt-5" })],
  ["tools not an array", 400, chat({ messages: user, tools: { a: 1 } })],
  ["tool without a name", 400, chat({ messages: user, tools: [{ type: "function", function: {} }] })],
  ["tool parameters not an object", 400, chat({ messages: user, tools: [{ type: "function", function: { name: "f", parameters: 3 } }] })],
  ["reasoning_effort unknown", 400, chat({ messages: user, reasoning_effort: "ultra" })],
  ["reasoning_effort number", 400, chat({ messages: user, reasoning_effort: 5 })],
  ["stop not strings", 400, chat({ messages: user, stop: [5] })],
  ["stop empty string", 400, chat({ messages: user, stop: "" })],
  ["stop too many", 400, chat({ messages: user, stop: Array.from({ length: 17 }, (_, i) => `s${i}`) })],
  ["stop_token_ids not integers", 400, chat({ messages: user, stop_token_ids: ["a"] })],
  ["tool result for an unknown call", 400, chat({ messages: [...user, { role: "tool", tool_call_id: "nope", content: "x" }] })],
  ["tool_calls not an array", 400, chat({ messages: [...user, { role: "assistant", tool_calls: 7 }] })],
  ["completions: prompt missing", 400, comp({})],
  ["completions: prompt a number", 400, comp({ prompt: 5 })],
  ["completions: id outside the vocabulary", 400, comp({ prompt: [1, 999999] })],
  ["completions: negative id", 400, comp({ prompt: [-1] })],
  ["completions: float ids", 400, comp({ prompt: [1.5] })],
  ["completions: empty prompt", 400, comp({ prompt: "" })],
  ["completions: a prompt longer than --max-model-len", 400, comp({ prompt: Array(3000).fill(1) })],
  ["chat: a prompt longer than --max-model-len", 400, chat({ messages: [{ role: "user", content: "word ".repeat(3000) }] })],
  ["deeply nested JSON", 400, { path: "/v1/chat/completions", body: "[".repeat(100000) + "]".repeat(100000) }],
  ["JSON nested 65 deep inside a request", 400, chat({ messages: user, metadata: JSON.parse("[".repeat(64) + "]".repeat(64)) })],
  ["2049 messages (limit 2048)", 400, chat({ messages: Array.from({ length: 2049 }, () => ({ role: "user", content: "x" })) })],
  ["129 tools (limit 128)", 400, chat({ messages: user, tools: Array.from({ length: 129 }, (_, i) => ({ type: "function", function: { name: `f${i}` } })) })],
  ["logprobs 21 on completions", 400, comp({ prompt: "hi", logprobs: 21 })],
  ["GET on a POST route", 405, { path: "/v1/chat/completions", method: "GET" }],
  ["unknown route", 404, { path: "/v2/everything", body: "{}" }],
  ["oversize body", 413, { path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "user", content: "x".repeat(9 << 20) }] }) }],
  ["response_format json_schema: an unsupported keyword", 400, chat({ messages: user, response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object", minProperties: 1 } } } })],
  ["response_format json_schema: no schema", 400, chat({ messages: user, response_format: { type: "json_schema", json_schema: { name: "x" } } })],
  ["response_format json_schema: a bad name", 400, chat({ messages: user, response_format: { type: "json_schema", json_schema: { name: "a b", schema: {} } } })],
  ["response_format json_schema: a bad pattern", 400, chat({ messages: user, response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "string", pattern: "(a" } } } })],
  ["response_format json_schema: a $ref to nothing", 400, chat({ messages: user, response_format: { type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/$defs/a" } } } })],
  ["tools: strict not a boolean", 400, chat({ messages: user, tools: [{ type: "function", function: { name: "f", strict: "yes" } }] })],
  ["tools: parameters not supported under tool_choice required", 400, chat({ messages: user, tool_choice: "required", tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { not: {} } } } } }] })],
  ["response_format unknown type", 400, chat({ messages: user, response_format: { type: "yaml" } })],
  ["an unknown field", 400, chat({ messages: user, frobnicate: 1 })],
  ["a field vLLM has, at a value moeserve does not do", 400, chat({ messages: user, ignore_eos: true })],
  ["legacy functions", 400, chat({ messages: user, functions: [{ name: "f" }] })],
  ["audio output", 400, chat({ messages: user, modalities: ["text", "audio"] })],
  ["stream_options without stream", 400, chat({ messages: user, stream_options: { include_usage: true } })],
  ["logit_bias not an object", 400, chat({ messages: user, logit_bias: [1, 2] })],
  ["logit_bias key not a token id", 400, chat({ messages: user, logit_bias: { abc: 1 } })],
  ["logit_bias id outside the vocabulary", 400, chat({ messages: user, logit_bias: { 999999: 1 } })],
  ["logit_bias value above 100", 400, chat({ messages: user, logit_bias: { 5: 101 } })],
  ["logit_bias value a string", 400, chat({ messages: user, logit_bias: { 5: "x" } })],
  ["echo on chat", 400, chat({ messages: user, echo: true })],
  ["completions: echo not a boolean", 400, comp({ prompt: "hi", echo: "yes" })],
  ["completions: suffix", 400, comp({ prompt: "def f(", suffix: "x" })],
  ["completions: best_of above n", 400, comp({ prompt: "hi", best_of: 3 })],
  ["repetition_penalty out of range", 400, chat({ messages: user, repetition_penalty: 50 })],
  ["responses: broken JSON", 400, { path: "/v1/responses", body: "{" }],
  ["responses: input missing", 400, resp({})],
  ["responses: input a number", 400, resp({ input: 5 })],
  ["responses: unknown item type", 400, resp({ input: [{ type: "computer_call" }] })],
  ["responses: function_call without call_id", 400, resp({ input: [{ type: "function_call", name: "f", arguments: "{}" }] })],
  ["responses: output for an unknown call", 400, resp({ input: [{ type: "function_call_output", call_id: "x", output: "y" }] })],
  ["responses: unknown parameter", 400, resp({ input: "x", frobnicate: true })],
  ["responses: a hosted tool", 400, resp({ input: "x", tools: [{ type: "web_search" }] })],
  ["responses: tool parameters not an object", 400, resp({ input: "x", tools: [{ type: "function", name: "f", parameters: 3 }] })],
  ["responses: text.format json_schema, unsupported keyword", 400, resp({ input: "x", text: { format: { type: "json_schema", name: "s", schema: { if: {} } } } })],
  ["responses: unknown previous_response_id", 400, resp({ input: "x", previous_response_id: "resp_nope" })],
  ["responses: max_output_tokens 0", 400, resp({ input: "x", max_output_tokens: 0 })],
  ["responses: temperature 3", 400, resp({ input: "x", temperature: 3 })],
  ["responses: 17 metadata pairs", 400, resp({ input: "x", metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) })],
  ["responses: metadata value a number", 400, resp({ input: "x", metadata: { a: 1 } })],
  ["responses: reasoning effort unknown", 400, resp({ input: "x", reasoning: { effort: "max" } })],
  ["responses: an image part", 400, resp({ input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] })],
  ["responses: background", 400, resp({ input: "x", background: true })],
  ["responses: truncation auto", 400, resp({ input: "x", truncation: "auto" })],
  ["responses: include unknown", 400, resp({ input: "x", include: ["file_search_call.results"] })],
  ["responses: tool_choice unknown", 400, resp({ input: "x", tool_choice: "sometimes" })],
  ["responses: unknown model", 404, resp({ input: "x", model: "gpt-5" })],
  ["responses: GET an unknown id", 404, { path: "/v1/responses/resp_nope", method: "GET" }],
  ["responses: DELETE an unknown id", 404, { path: "/v1/responses/resp_nope", method: "DELETE" }],
  ["responses: PUT", 405, { path: "/v1/responses/resp_nope", method: "PUT", body: "{}" }],
  ["ollama: broken JSON", 400, { path: "/api/chat", ollama: true, body: "{" }],
  ["ollama: model missing", 400, { path: "/api/chat", ollama: true, body: JSON.stringify({ messages: user }) }],
  ["ollama: unknown model", 404, ochat({ model: "llama3", messages: user })],
  ["ollama: messages not an array", 400, ochat({ messages: "hi" })],
  ["ollama: role a number", 400, ochat({ messages: [{ role: 5, content: "x" }] })],
  ["ollama: unknown role", 400, ochat({ messages: [{ role: "wizard", content: "x" }] })],
  ["ollama: images", 400, ochat({ messages: [{ role: "user", content: "x", images: ["aGk="] }] })],
  ["ollama: options not an object", 400, ochat({ messages: user, options: 3 })],
  ["ollama: an unsupported sampler", 400, ochat({ messages: user, options: { mirostat: 2 } })],
  ["ollama: num_predict 0", 400, ochat({ messages: user, options: { num_predict: 0 } })],
  ["ollama: temperature a string", 400, ochat({ messages: user, options: { temperature: "hot" } })],
  ["ollama: stop not strings", 400, ochat({ messages: user, options: { stop: [1] } })],
  ["ollama: think unknown", 400, ochat({ messages: user, think: "max" })],
  ["ollama: format xml", 400, ochat({ messages: user, format: "xml" })],
  ["ollama: format schema with an unsupported keyword", 400, ochat({ messages: user, format: { type: "object", minProperties: 2 } })],
  ["ollama: stream not a boolean", 400, ochat({ messages: user, stream: "yes" })],
  ["ollama: keep_alive an object", 400, ochat({ messages: user, keep_alive: {} })],
  ["ollama: tool calls not an array", 400, ochat({ messages: [...user, { role: "assistant", content: "", tool_calls: 3 }] })],
  ["ollama: 129 tools", 400, ochat({ messages: user, tools: Array.from({ length: 129 }, (_, i) => ({ type: "function", function: { name: `f${i}` } })) })],
  ["ollama: generate with a suffix", 400, ogen({ prompt: "def f(", suffix: "x" })],
  ["ollama: generate with images", 400, ogen({ prompt: "x", images: ["aGk="] })],
  ["ollama: generate prompt a number", 400, ogen({ prompt: 5 })],
  ["ollama: generate with a template", 400, ogen({ prompt: "x", template: "{{ .Prompt }}" })],
  ["ollama: embeddings", 400, { path: "/api/embed", ollama: true, body: JSON.stringify({ model, input: "x" }) }],
  ["ollama: pull", 501, { path: "/api/pull", ollama: true, body: JSON.stringify({ model: "llama3" }) }],
  ["ollama: delete", 501, { path: "/api/delete", ollama: true, method: "DELETE", body: JSON.stringify({ model }) }],
  ["ollama: show an unknown model", 404, { path: "/api/show", ollama: true, body: JSON.stringify({ model: "llama3" }) }],
  ["ollama: GET /api/chat", 405, { path: "/api/chat", ollama: true, method: "GET" }],
  ["ollama: POST /api/tags", 405, { path: "/api/tags", ollama: true, body: "{}" }],
  ["ollama: oversize body", 413, { path: "/api/chat", ollama: true, body: JSON.stringify({ model, messages: [{ role: "user", content: "x".repeat(9 << 20) }] }) }],
  ["ollama: unknown route", 404, { path: "/api/everything", ollama: true, body: "{}" }],
  ["ollama: a prompt longer than --max-model-len", 400, ogen({ prompt: "word ".repeat(3000) })],
  ["wrong API key", 401, { path: "/v1/models", method: "GET", headers: { authorization: "Bearer nope" } }],
  ["missing API key", 401, { path: "/v1/models", method: "GET", headers: { authorization: "" } }],
];

let failures = 0, passed = 0;
for (const [name, want, c] of cases) {
  try {
    const res = await fetch(base + c.path, { method: c.method ?? "POST", headers: { ...H, ...(c.headers ?? {}) },
      body: c.method === "GET" ? undefined : c.body });
    const text = await res.text();
    assert.equal(res.status, want, `${name}: got ${res.status} ${text.slice(0, 200)}`);
    const j = JSON.parse(text);
    if (c.ollama) {
      assert.equal(typeof j.error, "string", `${name}: no Ollama error body`);
      assert.ok(j.error.length > 0, `${name}: empty error`);
    } else {
      assert.equal(typeof j.error?.message, "string", `${name}: no OpenAI error body`);
      assert.ok("type" in j.error && "param" in j.error && "code" in j.error, `${name}: error fields`);
    }
    passed++;
  } catch (e) {
    failures++;
    console.log(`FAIL - ${name}: ${e.message}`);
  }
}

// Invalid UTF-8 inside a JSON string: 400.
async function raw(bytes) {
  return new Promise((resolve) => {
    const [host, port] = router.split(":");
    const s = net.connect(Number(port), host, () => s.write(bytes));
    let out = "";
    s.on("data", d => (out += d));
    s.on("close", () => resolve(out));
    s.on("error", () => resolve(out));
    setTimeout(() => s.destroy(), 5000);
  });
}
{
  const body = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"a'), Buffer.from([0xff, 0xfe]), Buffer.from('"}]}')]);
  const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  const out = await raw(Buffer.concat([Buffer.from(head), body]));
  if (/^HTTP\/1\.1 400/.test(out)) passed++;
  else { failures++; console.log(`FAIL - invalid UTF-8: ${out.slice(0, 100)}`); }
}
const [host, port] = router.split(":");
// Collects what the server sends on a raw socket until it closes (or `ms` pass).
function rawConn(bytes, ms = 8000) {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const s = net.connect(Number(port), host, () => { if (bytes) s.write(bytes); });
    let out = "";
    s.on("data", d => (out += d));
    s.on("close", () => resolve({ out, ms: Date.now() - t0 }));
    s.on("error", () => {});
    setTimeout(() => s.destroy(), ms);
  });
}
function check(name, ok, detail) {
  if (ok) passed++;
  else { failures++; console.log(`FAIL - ${name}: ${detail}`); }
}
function errorBody(out) {
  try { return JSON.parse(out.slice(out.indexOf("\r\n\r\n") + 4)).error; } catch { return undefined; }
}
// A slow client that never finishes its request does not block others, and gets 408 when its body times out.
{
  const slow = rawConn("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
  const res = await fetch(base + "/v1/chat/completions", { method: "POST", headers: H,
    body: JSON.stringify({ model, messages: user, max_tokens: 4 }) });
  check("request during a slow client", res.status === 200, res.status);
  const { out, ms } = await slow;
  check("body timeout", /^HTTP\/1\.1 408/.test(out) && /body not received within 2000 ms/.test(errorBody(out)?.message) &&
    ms >= 1500, `${ms} ms: ${out.slice(0, 300)}`);
}
{
  const { out, ms } = await rawConn("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
  check("header timeout", /^HTTP\/1\.1 408/.test(out) && errorBody(out)?.code === "request_timeout" && ms >= 1500 &&
    ms < 7000, `${ms} ms: ${out.slice(0, 300)}`);
}
{
  const { out, ms } = await rawConn("");
  check("idle connection closed without a response", out === "" && ms >= 2500 && ms < 7000, `${ms} ms: ${out.slice(0, 100)}`);
}
{
  const { out } = await rawConn(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(40000)}\r\n\r\n`);
  check("header over 32 KiB", /^HTTP\/1\.1 431/.test(out) && /header too large/.test(errorBody(out)?.message), out.slice(0, 300));
}
{
  const { out } = await rawConn("GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n");
  check("malformed header", /^HTTP\/1\.1 400/.test(out) && /malformed HTTP request/.test(errorBody(out)?.message), out.slice(0, 300));
}
{
  const { out } = await rawConn("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  check("bad chunk size", /^HTTP\/1\.1 400/.test(out), out.slice(0, 300));
}
// The connection limit: with kMaxConnections open, one more gets 503 for its request; once they close, 200 again.
{
  const held = [];
  for (let i = 0; i < kMaxConnections; i++) {
    held.push(await new Promise((resolve) => { const s = net.connect(Number(port), host, () => resolve(s)); s.on("error", () => {}); }));
  }
  await new Promise(r => setTimeout(r, 300));
  const { out } = await rawConn("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n");
  check("connection limit", /^HTTP\/1\.1 503/.test(out) && /retry-after: 1/i.test(out) &&
    errorBody(out)?.code === "too_many_connections", out.slice(0, 300));
  for (const s of held) s.destroy();
  await new Promise(r => setTimeout(r, 300));
  const res = await fetch(base + "/v1/models", { headers: H });
  check("after the held connections close", res.status === 200, res.status);
}
// Still serving after everything above.
{
  const h = await fetch(base + "/health");
  const ok = await fetch(base + "/v1/chat/completions", { method: "POST", headers: H,
    body: JSON.stringify({ model, messages: user, max_tokens: 4 }) });
  const j = await ok.json();
  if (h.status === 200 && ok.status === 200 && j.choices?.length === 1) passed++;
  else { failures++; console.log(`FAIL - server after the matrix: ${h.status} ${ok.status}`); }
}
console.log(`${passed} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
