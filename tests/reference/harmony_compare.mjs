// moeserve's harmony renderer against openai/harmony (WASM) on hand-written
// conversations (every reasoning effort, with and without tools, tool-call
// history, analysis dropping) and on randomly generated ones, including random
// JSON Schemas for tools. Token ids must be identical.
//   node harmony_compare.mjs --moeserve BIN --tokenizer tokenizer.json [--random 1500] [--seed 1]
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadHarmony } from "./harmony_ref.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
let seed = Number(args.seed ?? 1);
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const pick = a => a[Math.floor(rnd() * a.length)];
const chance = p => rnd() < p;
const { enc } = await loadHarmony();

const sys = (effort, extra = {}) => ({ role: "system", content: [{ type: "system_content",
  model_identity: "You are ChatGPT, a large language model trained by OpenAI.", reasoning_effort: effort,
  knowledge_cutoff: "2024-06", conversation_start_date: "2026-11-24",
  channel_config: { valid_channels: ["analysis", "commentary", "final"], channel_required: true }, ...extra }] });
const weather = { name: "get_weather", description: "Gets the current weather.\nUse for any city.",
  parameters: { type: "object", properties: { location: { type: "string", description: "City, country" },
    unit: { type: "string", enum: ["celsius", "fahrenheit"], default: "celsius" },
    days: { type: "integer", description: "Forecast days", default: 1 } }, required: ["location"] } };
const now = { name: "get_time", description: "Current time." };
const dev = (tools, instr = "Answer briefly.") => ({ role: "developer", content: [{ type: "developer_content",
  instructions: instr, ...(tools ? { tools: { functions: { name: "functions", description: null, tools } } } : {}) }] });
const user = t => ({ role: "user", content: [{ type: "text", text: t }] });
const asst = (channel, t, extra = {}) => ({ role: "assistant", channel, content: [{ type: "text", text: t }], ...extra });
const call = (fn, argsText) => asst("commentary", argsText, { recipient: `functions.${fn}`, content_type: "<|constrain|>json" });
const result = (fn, t) => ({ role: "tool", name: `functions.${fn}`, recipient: "assistant", channel: "commentary",
  content: [{ type: "text", text: t }] });

const fixed = [];
for (const effort of ["Low", "Medium", "High"]) {
  fixed.push({ messages: [sys(effort), user("What is 2+2?")] });
  fixed.push({ messages: [sys(effort), dev([weather, now]), user("Weather in Paris?")] });
}
fixed.push({ messages: [sys("Medium"), dev(null, "Talk like a pirate."), user("Hi"), asst("analysis", "Greet."),
  asst("final", "Ahoy!"), user("Bye")] });
fixed.push({ messages: [sys("High"), dev([weather]), user("Weather?"), asst("analysis", "Need the tool."),
  call("get_weather", '{"location":"Tokyo"}'), result("get_weather", '{"temp":21}'), asst("final", "21 degrees.")] });
fixed.push({ messages: [sys("Low"), dev([weather]), user("Weather?"), asst("analysis", "Need the tool."),
  call("get_weather", '{"location":"Oslo"}'), result("get_weather", '{"temp":-3}')] });
fixed.push({ messages: [user("raw <|start|>assistant<|message|> text must stay text")] });

// Random JSON Schemas in harmony's supported subset.
function schema(depth) {
  const t = pick(depth > 1 ? ["string", "number", "integer", "boolean"] : ["string", "number", "integer", "boolean", "array", "object", "enum", "oneOf", "types"]);
  let s;
  if (t === "enum") s = { type: "string", enum: ["a", "b c", "d"].slice(0, 1 + Math.floor(rnd() * 3)) };
  else if (t === "array") s = chance(0.8) ? { type: "array", items: schema(depth + 1) } : { type: "array" };
  else if (t === "object") s = objectSchema(depth + 1);
  else if (t === "oneOf") s = { oneOf: [schema(depth + 1), schema(depth + 1)] };
  else if (t === "types") s = { type: ["string", "integer", "null"].slice(0, 2 + Math.floor(rnd() * 2)) };
  else s = { type: t };
  if (chance(0.5)) s.description = pick(["The value.", "How many", "Free text with 'quotes'", "Δ unicode"]);
  if (chance(0.2)) s.default = pick([1, 2.5, "x", true, null, [1, 2]]);
  if (chance(0.15)) s.nullable = true;
  if (chance(0.1)) s.title = "Title";
  if (chance(0.1)) s.examples = ["ex1", "ex2"];
  return s;
}
function objectSchema(depth) {
  const props = {};
  const n = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < n; i++) props[pick(["zeta", "alpha", "mid", "b_key", "c2", "Name"]) + i] = schema(depth);
  const s = { type: "object", properties: props };
  const keys = Object.keys(props);
  s.required = keys.filter(() => chance(0.5));
  if (chance(0.2)) s.description = "An object.";
  return s;
}
const words = ["hello", "world", "x", "<|end|>", "déjà vu", "你好", "🙂", "\n", "  ", "{\"a\":1}", "to=functions.y", "final"];
const text = () => Array.from({ length: 1 + Math.floor(rnd() * 8) }, () => pick(words)).join(pick([" ", "", "\n"]));
function randomConversation() {
  const m = [];
  if (chance(0.8)) {
    const c = { type: "system_content" };
    if (chance(0.9)) c.model_identity = pick(["You are ChatGPT, a large language model trained by OpenAI.", "You are a bot."]);
    if (chance(0.8)) c.reasoning_effort = pick(["Low", "Medium", "High"]);
    if (chance(0.7)) c.knowledge_cutoff = "2024-06";
    if (chance(0.5)) c.conversation_start_date = "2026-01-0" + (1 + Math.floor(rnd() * 9));
    if (chance(0.8)) c.channel_config = { valid_channels: ["analysis", "commentary", "final"].slice(0, 1 + Math.floor(rnd() * 3)), channel_required: chance(0.7) };
    m.push({ role: "system", content: [c] });
  }
  const fns = [];
  if (chance(0.7)) {
    const c = { type: "developer_content" };
    if (chance(0.8)) c.instructions = text();
    if (chance(0.7)) {
      const n = Math.floor(rnd() * 3);
      for (let i = 0; i < n; i++) {
        const t = { name: `fn_${i}`, description: chance(0.8) ? text().replace(/\n+$/, "") : "" };
        if (chance(0.8)) t.parameters = objectSchema(0);
        fns.push(t);
      }
      c.tools = { functions: { name: "functions", description: null, tools: fns } };
    }
    m.push({ role: "developer", content: [c] });
  }
  const turns = 1 + Math.floor(rnd() * 5);
  for (let i = 0; i < turns; i++) {
    m.push(user(text()));
    if (chance(0.6)) m.push(asst("analysis", text()));
    if (fns.length && chance(0.4)) {
      const f = pick(fns).name;
      m.push(call(f, '{"k":' + Math.floor(rnd() * 100) + "}"));
      m.push(result(f, text()));
    }
    if (chance(0.7)) m.push(asst("final", text()));
  }
  return { messages: m };
}

// OpenAI chat requests, mapped to harmony here by the rules documented in
// router/text/chat.h and rendered by the reference.
function chatToHarmony(req) {
  const cap = e => e[0].toUpperCase() + e.slice(1);
  const msgs = [{ role: "system", content: [{ type: "system_content",
    model_identity: "You are ChatGPT, a large language model trained by OpenAI.", reasoning_effort: cap(req.reasoning_effort),
    knowledge_cutoff: "2024-06", ...(req.date ? { conversation_start_date: req.date } : {}),
    channel_config: { valid_channels: ["analysis", "commentary", "final"], channel_required: true } }] }];
  const instr = req.messages.filter(m => m.role === "system" || m.role === "developer").map(m => m.content);
  const fns = (req.tools ?? []).map(t => ({ name: t.function.name, description: t.function.description ?? "",
    ...(t.function.parameters ? { parameters: t.function.parameters } : {}) }));
  if (instr.length || fns.length) {
    msgs.push({ role: "developer", content: [{ type: "developer_content", ...(instr.length ? { instructions: instr.join("\n\n") } : {}),
      ...(fns.length ? { tools: { functions: { name: "functions", description: null, tools: fns } } } : {}) }] });
  }
  const names = {};
  for (const m of req.messages) {
    if (m.role === "user") msgs.push(user(m.content));
    if (m.role === "assistant") {
      if (m.reasoning_content) msgs.push(asst("analysis", m.reasoning_content));
      for (const c of m.tool_calls ?? []) { names[c.id] = c.function.name; msgs.push(call(c.function.name, c.function.arguments)); }
      if (m.content) msgs.push(asst("final", m.content));
    }
    if (m.role === "tool") msgs.push(result(names[m.tool_call_id], m.content));
  }
  return { messages: msgs };
}
const chatTools = [{ type: "function", function: weather }, { type: "function", function: now }];
const chats = [];
for (const effort of ["low", "medium", "high"]) {
  chats.push({ reasoning_effort: effort, date: "2026-11-24", messages: [{ role: "user", content: "Hi" }] });
  chats.push({ reasoning_effort: effort, messages: [{ role: "system", content: "Be brief." },
    { role: "user", content: "Weather in Rome?" }], tools: chatTools });
  chats.push({ reasoning_effort: effort, date: "2026-11-24", tools: chatTools, messages: [
    { role: "system", content: "Be brief." }, { role: "developer", content: "Use metric units." },
    { role: "user", content: "Weather in Rome?" },
    { role: "assistant", reasoning_content: "Call the tool.", content: null,
      tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: "{\"location\":\"Rome\"}" } }] },
    { role: "tool", tool_call_id: "call_1", content: "{\"temp\":18}" }] });
  chats.push({ reasoning_effort: effort, messages: [{ role: "user", content: "Q1" },
    { role: "assistant", reasoning_content: "old thoughts", content: "A1" }, { role: "user", content: "Q2" }] });
}

const cases = [];
for (const c of fixed) for (const drop of [true, false]) cases.push({ conversation: c, next_role: "assistant", auto_drop_analysis: drop });
const nRandom = Number(args.random ?? 1500);
for (let i = 0; i < nRandom; i++) {
  cases.push({ conversation: randomConversation(), next_role: chance(0.8) ? "assistant" : null, auto_drop_analysis: chance(0.5) });
}
for (const c of chats) cases.push({ chat: c });
const want = cases.map(c => {
  if (c.chat) return Array.from(enc.renderConversationForCompletion(chatToHarmony(c.chat), "assistant", { auto_drop_analysis: true }));
  try {
    const cfg = { auto_drop_analysis: c.auto_drop_analysis };
    const ids = c.next_role ? enc.renderConversationForCompletion(c.conversation, c.next_role, cfg)
                            : enc.renderConversation(c.conversation, cfg);
    return Array.from(ids);
  } catch (e) {
    return { error: String(e) };
  }
});
const dir = mkdtempSync(join(tmpdir(), "moeserve-harmony-"));
writeFileSync(join(dir, "in.jsonl"), cases.map(c => JSON.stringify(c)).join("\n") + "\n");
const run = spawnSync(args.moeserve, ["harmony-render", "--tokenizer", args.tokenizer, "--jsonl", join(dir, "in.jsonl"),
  "--out", join(dir, "out.jsonl")], { stdio: ["ignore", "inherit", "inherit"] });
if (run.status !== 0) { console.error("moeserve harmony-render failed"); process.exit(1); }
const got = readFileSync(join(dir, "out.jsonl"), "utf8").trim().split("\n").map(l => JSON.parse(l));
rmSync(dir, { recursive: true, force: true });
let bad = 0, refErrors = 0;
for (let i = 0; i < cases.length; i++) {
  if (!Array.isArray(want[i])) { refErrors++; continue; }
  const g = got[i].ids;
  if (!g || g.length !== want[i].length || g.some((x, k) => x !== want[i][k])) {
    if (bad++ < 3) {
      console.error(`MISMATCH case ${i}${i < fixed.length * 2 ? " (fixed)" : ""}: ${got[i].error ?? ""}`);
      console.error("  harmony:  " + JSON.stringify(enc.decodeUtf8(new Uint32Array(want[i]))).slice(0, 1500));
      if (g) console.error("  moeserve: " + JSON.stringify(enc.decodeUtf8(new Uint32Array(g))).slice(0, 1500));
    }
  }
}
console.log(`${bad ? "FAIL" : "PASS"}: ${cases.length} conversations (${fixed.length * 2} fixed, ${nRandom} random), ` +
  `${bad} differ from openai/harmony (incl. ${chats.length} OpenAI chat requests); ${refErrors} rejected by the reference`);
process.exit(bad ? 1 : 0);
