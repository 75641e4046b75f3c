// Structured output end to end, with the official `openai` client and ajv as
// the independent validator, against a router in front of the demo model
// (random weights: its choices are random, a good stress for the grammar):
//   - response_format json_schema over several schemas and seeds, streamed and
//     not: every reply that finishes parses and validates; reasoning stays free;
//   - json_object: a JSON object;
//   - tool_choice "required" and a named function: a call to a declared
//     function whose arguments validate against its parameters;
//   - unsupported or invalid schemas are 400s that say what is wrong.
// A logit bias on <|end|> keeps the random model's reasoning short (the
// grammar decides where <|end|> may come; the bias only makes it likely there).
//   node structured_e2e.mjs --worker BIN --router BIN --model DIR
import { check, finish, parseArgs, start, startProc } from "./procs.mjs";
import { nodeModules as nm } from "./scripted.mjs";
import { join } from "node:path";
import assert from "node:assert/strict";

const { default: OpenAI } = await import(join(nm, "openai/index.mjs"));
const { default: Ajv } = await import(join(nm, "ajv/dist/2020.js"));
const { default: addFormats } = await import(join(nm, "ajv-formats/dist/index.js"));
const args = parseArgs(process.argv.slice(2));
const model = args.model.replace(/\/+$/, "").split("/").pop();

const worker = await start(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "64MiB",
  "--max-num-seqs", "16", "--max-model-len", "4096", "--kv-cache-dtype", "f32"]);
const router = await startProc(args.router, ["--worker", worker, "--model", args.model, "--port", "0"]);
const client = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "unused", maxRetries: 0 });
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);

const END = 200007;
const base = { model, max_tokens: 1200, temperature: 1, logit_bias: { [END]: 30 }, reasoning_effort: "low",
  messages: [{ role: "user", content: "Fill in the form." }] };

const schemas = {
  person: { type: "object", properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer", minimum: 0, maximum: 130 },
    email: { type: "string", format: "email" }, tags: { type: "array", items: { enum: ["a", "b", "c"] }, maxItems: 3 } },
    required: ["name", "age"], additionalProperties: false },
  order: { type: "object", properties: { id: { type: "string", pattern: "^[A-Z]{2}-[0-9]{3}$" },
    items: { type: "array", minItems: 1, maxItems: 2, items: { type: "object", properties: { sku: { type: "string", format: "uuid" },
      qty: { type: "integer", exclusiveMinimum: 0, maximum: 9 }, price: { type: "number", minimum: 0, maximum: 100 } },
      required: ["sku", "qty"], additionalProperties: false } }, paid: { type: "boolean" }, note: { anyOf: [{ type: "string", maxLength: 5 }, { type: "null" }] } },
    required: ["id", "items", "paid", "note"], additionalProperties: false },
  tree: { $defs: { node: { type: "object", properties: { v: { type: "integer", minimum: -5, maximum: 5 },
    kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 } }, required: ["v", "kids"], additionalProperties: false } },
    $ref: "#/$defs/node" },
  pet: { $defs: { cat: { type: "object", properties: { kind: { const: "cat" }, lives: { type: "integer", minimum: 1, maximum: 9 } },
    required: ["kind", "lives"], additionalProperties: false }, dog: { type: "object", properties: { kind: { const: "dog" },
    good: { type: "boolean" } }, required: ["kind", "good"], additionalProperties: false } },
    oneOf: [{ $ref: "#/$defs/cat" }, { $ref: "#/$defs/dog" }, { type: "null" }] },
  when: { type: "object", properties: { day: { type: "string", format: "date" }, at: { type: "string", format: "time" },
    kind: { const: "meeting" }, level: { enum: [1, 2, 3, null] } }, required: ["day", "at", "kind", "level"], additionalProperties: false },
};

let finished = 0, total = 0;
function validate(name, schema, text) {
  total++;
  const value = JSON.parse(text);
  const ok = ajv.validate(schema, value);
  assert.ok(ok, `${name}: ${text}\n${ajv.errorsText()}`);
  finished++;
}

await check("json_schema: every finished reply parses and validates (ajv), plain and streamed, many seeds", async () => {
  const runs = [];
  for (const [name, schema] of Object.entries(schemas)) {
    for (let seed = 1; seed <= 6; ++seed) {
      const req = { ...base, seed, response_format: { type: "json_schema", json_schema: { name, schema, strict: true } } };
      runs.push((async () => {
        if (seed % 2 === 0) {
          let content = "", reason = null;
          for await (const c of await client.chat.completions.create({ ...req, stream: true })) {
            content += c.choices[0]?.delta?.content ?? "";
            reason = c.choices[0]?.finish_reason ?? reason;
          }
          if (reason === "stop") validate(name, schema, content);
          return reason;
        }
        const r = await client.chat.completions.create(req);
        const ch = r.choices[0];
        assert.equal(ch.message.tool_calls ?? undefined, undefined);
        if (ch.finish_reason === "stop") validate(name, schema, ch.message.content);
        return ch.finish_reason;
      })());
    }
  }
  const reasons = await Promise.all(runs);
  assert.ok(finished >= reasons.length / 2, `only ${finished} of ${reasons.length} replies finished: ${reasons}`);
});

await check("first-seen schemas compile off the I/O threads: /health answers while three compile", async () => {
  // Fresh property names, so nothing is cached; each compile takes hundreds
  // of milliseconds, /health a few.
  const tag = `${process.pid}_${Date.now()}`;
  const fresh = k => ({ type: "object", properties: Object.fromEntries(Object.entries(schemas.person.properties)
    .map(([p, v]) => [`${p}_${k}_${tag}`, v])), additionalProperties: false });
  const order = [];
  const post = k => fetch(`http://${router.addr}/v1/chat/completions`, { method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...base, max_tokens: 4, stream: true,
      response_format: { type: "json_schema", json_schema: { name: `f${k}`, schema: fresh(k) } } }) })
    .then(r => { order.push("schema"); return r.body.cancel(); });
  const streams = [1, 2, 3].map(post);
  await new Promise(r => setTimeout(r, 30));
  const health = fetch(`http://${router.addr}/health`).then(async r => { order.push("health"); return r.text(); });
  await Promise.all([...streams, health]);
  assert.equal(order[0], "health", order.join(", "));
});

await check("the official client's parse helper gets a parsed object", async () => {
  const r = await client.chat.completions.parse({ ...base, seed: 11,
    response_format: { type: "json_schema", json_schema: { name: "person", schema: schemas.person, strict: true } } });
  const m = r.choices[0].message;
  if (r.choices[0].finish_reason === "stop") assert.ok(ajv.validate(schemas.person, m.parsed), JSON.stringify(m.parsed));
});

await check("json_object: a JSON object", async () => {
  let done = 0;
  const replies = await Promise.all([1, 2, 3].map(seed =>
    client.chat.completions.create({ ...base, seed, max_tokens: 600, response_format: { type: "json_object" } })));
  for (const r of replies) {
    if (r.choices[0].finish_reason !== "stop") continue;
    const v = JSON.parse(r.choices[0].message.content);
    assert.equal(typeof v, "object");
    assert.ok(v !== null && !Array.isArray(v));
    done++;
  }
  assert.ok(done >= 1);
});

const tools = [
  { type: "function", function: { name: "get_weather", description: "Weather", parameters: { type: "object",
    properties: { city: { type: "string", maxLength: 10 }, unit: { enum: ["c", "f"] } }, required: ["city", "unit"], additionalProperties: false } } },
  { type: "function", function: { name: "add", parameters: { type: "object", properties: { a: { type: "integer" }, b: { type: "integer" } },
    required: ["a", "b"], additionalProperties: false } } },
];
const params = Object.fromEntries(tools.map(t => [t.function.name, t.function.parameters]));

await check("tool_choice required: always a call to a declared function with valid arguments", async () => {
  let calls = 0;
  for (let seed = 1; seed <= 8; ++seed) {
    const r = await client.chat.completions.create({ ...base, seed, tools, tool_choice: "required" });
    const ch = r.choices[0];
    if (ch.finish_reason === "length") continue;
    assert.equal(ch.finish_reason, "tool_calls");
    assert.equal(ch.message.tool_calls.length, 1);
    const call = ch.message.tool_calls[0].function;
    assert.ok(call.name in params, call.name);
    assert.ok(ajv.validate(params[call.name], JSON.parse(call.arguments)), `${call.name}(${call.arguments}) ${ajv.errorsText()}`);
    calls++;
  }
  assert.ok(calls >= 4, `${calls} calls`);
});

await check("a named function, streamed: the call names it and its arguments validate", async () => {
  let calls = 0;
  for (let seed = 1; seed <= 4; ++seed) {
    let name = "", argsText = "", reason = null;
    for await (const c of await client.chat.completions.create({ ...base, seed, tools, stream: true,
      tool_choice: { type: "function", function: { name: "add" } } })) {
      for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
        name += tc.function?.name ?? "";
        argsText += tc.function?.arguments ?? "";
      }
      reason = c.choices[0]?.finish_reason ?? reason;
    }
    if (reason === "length") continue;
    assert.equal(reason, "tool_calls");
    assert.equal(name, "add");
    assert.ok(ajv.validate(params.add, JSON.parse(argsText)), argsText);
    calls++;
  }
  assert.ok(calls >= 2);
});

await check("long bounded strings: minLength 40 / maxLength 10,000 is honoured; past the state limit is a 400", async () => {
  // 10,000 copies of a JSON string character: copies far from the bound share
  // their token tables, so this compiles in about a second, not minutes.
  const schema = { type: "object", properties: { s: { type: "string", minLength: 40, maxLength: 10000 } },
    required: ["s"], additionalProperties: false };
  // A bias on `"` (token 1) ends the string soon after its 40 characters.
  const replies = await Promise.all([1, 2, 3].map(seed => client.chat.completions.create({ ...base, seed,
    logit_bias: { ...base.logit_bias, 1: 10 }, max_tokens: 400,
    response_format: { type: "json_schema", json_schema: { name: "long", schema, strict: true } } })));
  let done = 0;
  for (const r of replies) {
    if (r.choices[0].finish_reason !== "stop") continue;
    validate("long", schema, r.choices[0].message.content);
    done++;
  }
  assert.ok(done >= 1, `no reply finished: ${replies.map(r => r.choices[0].finish_reason)}`);
  await assert.rejects(client.chat.completions.create({ ...base, response_format: { type: "json_schema",
    json_schema: { name: "huge", schema: { type: "string", maxLength: 50000 } } } }), e => {
    assert.equal(e.status, 400, e.message);
    assert.match(e.message, /too large/);
    return true;
  });
});

await check("schemas that cannot be honoured are 400s that say why", async () => {
  for (const [schema, pattern] of [[{ type: "object", minProperties: 1 }, /minProperties/],
    [{ type: "string", pattern: "(?=x)" }, /pattern/], [{ $ref: "#/$defs/nope" }, /\$ref/], [{ type: "numbr" }, /numbr/],
    [{ oneOf: [{ type: "number" }, { type: "integer" }] }, /oneOf/]]) {
    await assert.rejects(client.chat.completions.create({ ...base,
      response_format: { type: "json_schema", json_schema: { name: "x", schema } } }), e => {
      assert.equal(e.status, 400, e.message);
      assert.match(e.message, pattern);
      return true;
    });
  }
  await assert.rejects(client.chat.completions.create({ ...base, tools: [{ type: "function", function: { name: "f",
    parameters: { type: "object", properties: { a: { not: {} } } } } }], tool_choice: "required" }), e => e.status === 400 && /tools/.test(e.message));
  await assert.rejects(client.chat.completions.create({ ...base, response_format: { type: "json_schema", json_schema: { name: "bad name!", schema: {} } } }),
    e => e.status === 400);
});

console.log(`${finished}/${total} constrained replies finished and validated`);
finish();
