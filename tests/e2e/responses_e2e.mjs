// /v1/responses end to end with the official `openai` client (its Responses
// API) and LangChain's ChatOpenAI, against real processes on loopback:
//   - a router in front of the demo model: responses against the chat
//     completions of the same conversation (greedy: the same tokens), the
//     streamed event sequence against the whole response, store, GET, DELETE;
//   - a router in front of the fake worker replaying a scripted harmony reply
//     (reasoning, then a call to get_weather; token ids from tiktoken):
//     reasoning items, function calls and the round trip through
//     previous_response_id, which must keep the call and its output.
//   node responses_e2e.mjs --worker BIN --router BIN --model DIR --fake-worker BIN
import { check, finish, parseArgs } from "./procs.mjs";
import { kReasoning, nodeModules as nm, startRouters } from "./scripted.mjs";
import { join } from "node:path";
import assert from "node:assert/strict";

const { default: OpenAI } = await import(join(nm, "openai/index.mjs"));
const { ChatOpenAI } = await import(join(nm, "@langchain/openai/dist/index.js"));
const { tool } = await import(join(nm, "@langchain/core/dist/tools/index.js"));
const args = parseArgs(process.argv.slice(2));

const model = args.model.replace(/\/+$/, "").split("/").pop();
const { demo: router, scripted } = await startRouters(args, { demoFlags: ["--api-key", "sk-test"],
  scriptedFlags: ["--responses-store-size", "64"], callArgs: '{"city": "Paris"}' });
const client = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "sk-test", maxRetries: 0 });
const sclient = new OpenAI({ baseURL: `http://${scripted.addr}/v1`, apiKey: "unused", maxRetries: 0 });
const weather = { type: "function", name: "get_weather", description: "Current weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] }, strict: true };

const outputText = r => r.output.filter(i => i.type === "message").flatMap(i => i.content).map(p => p.text).join("");
const reasoningText = r => r.output.filter(i => i.type === "reasoning").flatMap(i => i.content ?? []).map(p => p.text).join("");
async function expectStatus(status, promise, pattern) {
  await assert.rejects(promise, e => {
    assert.equal(e.status, status, `${e.status}: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

await check("a response equals the chat completion of the same conversation (greedy)", async () => {
  const r = await client.responses.create({ model, input: "Why is the sky blue?", instructions: "Be brief.",
    temperature: 0, max_output_tokens: 24, reasoning: { effort: "low" }, metadata: { run: "e2e" } });
  const c = await client.chat.completions.create({ model, temperature: 0, max_tokens: 24, reasoning_effort: "low",
    messages: [{ role: "developer", content: "Be brief." }, { role: "user", content: "Why is the sky blue?" }] });
  const m = c.choices[0].message;
  assert.equal(r.object, "response");
  assert.match(r.id, /^resp_/);
  assert.equal(r.output_text, m.content ?? "");
  assert.equal(outputText(r), m.content ?? "");
  assert.equal(reasoningText(r), m.reasoning_content ?? "");
  assert.equal(r.usage.input_tokens, c.usage.prompt_tokens);
  assert.equal(r.usage.output_tokens, c.usage.completion_tokens);
  assert.equal(r.usage.total_tokens, c.usage.total_tokens);
  assert.ok(r.usage.output_tokens_details.reasoning_tokens <= r.usage.output_tokens);
  assert.equal(r.status, c.choices[0].finish_reason === "length" ? "incomplete" : "completed");
  if (r.status === "incomplete") assert.equal(r.incomplete_details.reason, "max_output_tokens");
  assert.equal(r.instructions, "Be brief.");
  assert.deepEqual(r.metadata, { run: "e2e" });
  assert.equal(r.reasoning.effort, "low");
  assert.equal(r.max_output_tokens, 24);
});

await check("streaming: the documented event sequence, numbered, adding up to the response", async () => {
  const req = { model, input: [{ role: "user", content: [{ type: "input_text", text: "Count to five." }] }],
    temperature: 0, max_output_tokens: 20 };
  const whole = await client.responses.create(req);
  const events = [];
  for await (const e of await client.responses.create({ ...req, stream: true })) events.push(e);
  assert.deepEqual(events.map(e => e.sequence_number), events.map((_, i) => i));
  assert.equal(events[0].type, "response.created");
  assert.equal(events[1].type, "response.in_progress");
  assert.equal(events[0].response.status, "in_progress");
  const last = events.at(-1);
  assert.ok(["response.completed", "response.incomplete"].includes(last.type), last.type);
  let text = "", reasoning = "";
  const open = new Map();
  for (const e of events) {
    if (e.type === "response.output_text.delta") text += e.delta;
    if (e.type === "response.reasoning_text.delta") reasoning += e.delta;
    if (e.type === "response.output_item.added") open.set(e.output_index, e.item);
    if (e.type === "response.output_item.done") {
      assert.ok(open.has(e.output_index));
      assert.equal(e.item.id, open.get(e.output_index).id);
      open.delete(e.output_index);
    }
  }
  assert.equal(open.size, 0);
  assert.equal(text, whole.output_text);
  assert.equal(reasoning, reasoningText(whole));
  assert.equal(outputText(last.response), whole.output_text);
  assert.equal(last.response.usage.output_tokens, whole.usage.output_tokens);
});

await check("store: GET and DELETE by id; store: false keeps nothing", async () => {
  const r = await client.responses.create({ model, input: "Hi", max_output_tokens: 8 });
  const got = await client.responses.retrieve(r.id);
  assert.deepEqual(got, r);
  const del = await client.responses.delete(r.id);
  assert.equal(del?.deleted ?? true, true);
  await expectStatus(404, client.responses.retrieve(r.id), /not found/);
  const unstored = await client.responses.create({ model, input: "Hi", max_output_tokens: 8, store: false });
  assert.equal(unstored.store, false);
  await expectStatus(404, client.responses.retrieve(unstored.id));
  await expectStatus(400, client.responses.create({ model, input: "more", previous_response_id: unstored.id }),
    /not found/);
});

await check("previous_response_id continues the conversation: the same prompt as the history sent whole", async () => {
  const first = await client.responses.create({ model, input: "My name is Ada.", temperature: 0, max_output_tokens: 10 });
  const next = await client.responses.create({ model, input: "What is my name?", previous_response_id: first.id,
    temperature: 0, max_output_tokens: 10 });
  const whole = await client.responses.create({ model, temperature: 0, max_output_tokens: 10, input: [
    { role: "user", content: "My name is Ada." },
    ...first.output,
    { role: "user", content: "What is my name?" }] });
  assert.equal(next.previous_response_id, first.id);
  assert.equal(next.usage.input_tokens, whole.usage.input_tokens);
  assert.equal(next.output_text, whole.output_text);
});

await check("function calling round trip (scripted reply): reasoning item, function_call, its output kept", async () => {
  const r = await sclient.responses.create({ model, input: "Weather in Paris?", tools: [weather] });
  assert.deepEqual(r.output.map(i => i.type), ["reasoning", "function_call"]);
  assert.equal(reasoningText(r), kReasoning);
  const call = r.output[1];
  assert.equal(call.name, "get_weather");
  assert.deepEqual(JSON.parse(call.arguments), { city: "Paris" });
  assert.match(call.call_id, /^call_/);
  assert.equal(r.status, "completed");
  const next = await sclient.responses.create({ model, tools: [weather], previous_response_id: r.id,
    input: [{ type: "function_call_output", call_id: call.call_id, output: "sunny, 21 C" }] });
  // The same conversation sent whole, the call included, renders the same prompt; without the call it does not.
  const whole = await sclient.responses.create({ model, tools: [weather], store: false, input: [
    { role: "user", content: "Weather in Paris?" }, ...r.output,
    { type: "function_call_output", call_id: call.call_id, output: "sunny, 21 C" }] });
  assert.equal(next.usage.input_tokens, whole.usage.input_tokens);
  const without = await sclient.responses.create({ model, tools: [weather], store: false, input: [
    { role: "user", content: "Weather in Paris?" },
    { type: "function_call_output", call_id: call.call_id, output: "sunny, 21 C" }] }).catch(e => e);
  assert.ok(without.status === 400 || without.usage.input_tokens < next.usage.input_tokens);
  // Streamed: the call's events.
  const events = [];
  for await (const e of await sclient.responses.create({ model, input: "Weather in Paris?", tools: [weather], stream: true })) {
    events.push(e);
  }
  const args = events.filter(e => e.type === "response.function_call_arguments.delta").map(e => e.delta).join("");
  assert.deepEqual(JSON.parse(args), { city: "Paris" });
  const done = events.find(e => e.type === "response.function_call_arguments.done");
  assert.equal(done.arguments, args);
  const added = events.filter(e => e.type === "response.output_item.added").map(e => e.item.type);
  assert.deepEqual(added, ["reasoning", "function_call"]);
  assert.equal(events.at(-1).type, "response.completed");
  // tool_choice naming the function: the reply starts as that call.
  const named = await sclient.responses.create({ model, input: "x", tools: [weather],
    tool_choice: { type: "function", name: "get_weather" } });
  assert.equal(named.output.find(i => i.type === "function_call")?.name, "get_weather");
});

await check("text.format json_schema: echoed, and a completed reply is the schema's JSON", async () => {
  const format = { type: "json_schema", name: "n", schema: { type: "object", properties: { n: { type: "integer" } },
    required: ["n"], additionalProperties: false }, strict: true };
  const r = await client.responses.create({ model, input: "A number?", text: { format }, max_output_tokens: 64,
    reasoning: { effort: "low" } });
  assert.deepEqual(r.text.format, format);
  if (r.status === "completed") assert.equal(typeof JSON.parse(r.output_text).n, "number");
});

await check("bad requests: 400 with OpenAI's error shape", async () => {
  await expectStatus(400, client.responses.create({ model, input: "x", text: { format: { type: "json_schema",
    name: "s", schema: { type: "object", minProperties: 1 } } } }), /minProperties/);
  await expectStatus(400, client.responses.create({ model, input: "x", text: { format: { type: "json_schema",
    name: "bad name", schema: { type: "object" } } } }), /name/);
  await expectStatus(400, client.responses.create({ model, input: "x", frobnicate: 1 }), /Unknown parameter/);
  await expectStatus(400, client.responses.create({ model, input: [{ type: "computer_call" }] }), /not supported/);
  await expectStatus(400, client.responses.create({ model, input: "x", tools: [{ type: "web_search" }] }),
    /only function tools/);
  await expectStatus(400, client.responses.create({ model, input: "x", reasoning: { effort: "extreme" } }));
  await expectStatus(400, client.responses.create({ model, input: "x", previous_response_id: "resp_nope" }),
    /not found/);
  await expectStatus(400, client.responses.create({ model, input: [{ role: "user", content: [{ type: "input_image",
    image_url: "data:," }] }] }), /text only/);
  await expectStatus(400, client.responses.create({ model, input: "x", background: true }));
  await expectStatus(404, client.responses.create({ model: "gpt-5", input: "x" }));
  const r = await fetch(`http://${router.addr}/v1/responses`, { method: "POST", body: "{",
    headers: { authorization: "Bearer sk-test" } });
  assert.equal(r.status, 400);
  assert.equal(typeof (await r.json()).error.message, "string");
  const unauth = await fetch(`http://${router.addr}/v1/responses`, { method: "POST", body: "{}" });
  assert.equal(unauth.status, 401);
});

await check("LangChain ChatOpenAI: tools bound and streaming (chat completions and the Responses API)", async () => {
  const getWeather = tool(async ({ city }) => `sunny in ${city}`, { name: "get_weather", description: "Current weather",
    schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } });
  for (const useResponsesApi of [false, true]) {
    const llm = new ChatOpenAI({ model, apiKey: "unused", configuration: { baseURL: `http://${scripted.addr}/v1` },
      useResponsesApi, maxRetries: 0 }).bindTools([getWeather]);
    const m = await llm.invoke("Weather in Paris?");
    assert.deepEqual(m.tool_calls.map(t => [t.name, t.args]), [["get_weather", { city: "Paris" }]], `responses ${useResponsesApi}`);
    let acc;
    for await (const chunk of await llm.stream("Weather in Paris?")) acc = acc ? acc.concat(chunk) : chunk;
    assert.deepEqual(acc.tool_calls.map(t => [t.name, t.args]), [["get_weather", { city: "Paris" }]], `stream ${useResponsesApi}`);
  }
  const plain = new ChatOpenAI({ model, apiKey: "sk-test", configuration: { baseURL: `http://${router.addr}/v1` },
    temperature: 0, maxTokens: 12, maxRetries: 0 });
  const a = await plain.invoke("Hello");
  let streamed = "";
  for await (const chunk of await plain.stream("Hello")) streamed += chunk.content;
  assert.equal(streamed, a.content);
});

finish();
