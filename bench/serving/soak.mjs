// Soak: a mixed load for --minutes against the router and the demo model on a
// CPU worker — streaming and plain chat, tools, completions with n = 2,
// streams cancelled by the client, clients that drop the connection
// mid-stream, and bad requests — while RSS, descriptors and the router's
// gauges are sampled. Checked (exit 1 otherwise): zero server errors (5xx,
// failed connections, malformed streams, a process that dies), RSS of router
// and worker within ±5 % of their value after the warm-up (the first 10 %),
// and once the load stops: KV cache empty, descriptors back to the baseline.
//   node bench/serving/soak.mjs --router BIN --worker BIN --model DIR [--minutes 30] [--concurrency 12]
//     [--json FILE]
import net from "node:net";
import fs from "node:fs";
import { parseArgs, startProc, killAll } from "../../tests/e2e/procs.mjs";
import { rssMiB, rssParts, fds, routerGauges, waitIdle } from "./procstat.mjs";

const args = parseArgs(process.argv.slice(2));
const minutes = Number(args.minutes ?? 30), concurrency = Number(args.concurrency ?? 12);
const worker = await startProc(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "256MiB",
  "--max-model-len", "4096"]);
const router = await startProc(args.router, ["--worker", worker.addr, "--model", args.model, "--port", "0",
  "--http-idle-timeout", "2"]);
const base = `http://${router.addr}`;
const [host, port] = router.addr.split(":");
const pids = { router: router.proc.pid, worker: worker.proc.pid };
const H = { "content-type": "application/json" };
const counts = {}, errors = [];
const count = (k) => (counts[k] = (counts[k] ?? 0) + 1);
const fail = (k, m) => { count(`error:${k}`); if (errors.length < 50) errors.push(`${k}: ${m}`); };
let seq = 0;
const rnd = (n) => Math.floor(Math.random() * n);
const userMsg = () => [{ role: "user", content: `Soak ${seq++}: ${"tell me about the sea ".repeat(1 + rnd(20))}` }];
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];

async function post(path, body, signal) {
  return fetch(base + path, { method: "POST", headers: H, body: JSON.stringify(body), signal });
}

// Reads an SSE stream to its end; it must end in "data: [DONE]" with JSON chunks before it.
async function readStream(res, k) {
  const text = await res.text();
  const events = text.split("\n\n").filter(Boolean);
  if (events.at(-1) !== "data: [DONE]") return fail(k, `stream did not end in [DONE]: ${text.slice(-200)}`);
  for (const e of events.slice(0, -1)) {
    const j = JSON.parse(e.slice(6));
    if (j.error) return fail(k, `error in stream: ${JSON.stringify(j.error)}`);
  }
  count(k);
}

const ops = [
  [30, "stream", async () => {
    const res = await post("/v1/chat/completions", { messages: userMsg(), stream: true, max_tokens: 8 + rnd(64),
      stream_options: { include_usage: true } });
    if (res.status !== 200) return fail("stream", `status ${res.status}`);
    await readStream(res, "stream");
  }],
  [15, "chat", async () => {
    const res = await post("/v1/chat/completions", { messages: userMsg(), max_tokens: 8 + rnd(48), temperature: 0.8 });
    const j = await res.json();
    if (res.status !== 200 || !j.choices?.[0]?.message) return fail("chat", `status ${res.status} ${JSON.stringify(j).slice(0, 200)}`);
    count("chat");
  }],
  [15, "tools", async () => {
    const res = await post("/v1/chat/completions", { messages: userMsg(), tools, stream: rnd(2) === 0, max_tokens: 48,
      tool_choice: ["auto", "required"][rnd(2)] });
    if (res.status !== 200) return fail("tools", `status ${res.status}`);
    if (res.headers.get("content-type")?.startsWith("text/event-stream")) return readStream(res, "tools");
    await res.json();
    count("tools");
  }],
  [10, "completions_n2", async () => {
    const res = await post("/v1/completions", { prompt: `Once upon a time ${seq++}`, max_tokens: 16 + rnd(32), n: 2,
      logprobs: 2 });
    const j = await res.json();
    if (res.status !== 200 || j.choices?.length !== 2) return fail("completions_n2", `status ${res.status}`);
    count("completions_n2");
  }],
  [15, "cancel", async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 20 + rnd(300));
    try {
      const res = await post("/v1/chat/completions", { messages: userMsg(), stream: true, max_tokens: 256 }, ac.signal);
      await res.text();
      count("cancel:finished_first");
    } catch (e) {
      if (e.name !== "AbortError") return fail("cancel", String(e?.cause?.code ?? e));
      count("cancel");
    }
  }],
  [10, "drop", () => new Promise((resolve) => {
    const body = JSON.stringify({ messages: userMsg(), stream: true, max_tokens: 256 });
    const s = net.connect(Number(port), host, () => s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));
    let got = 0;
    s.on("data", (d) => {
      got += d.length;
      if (got > 300) { s.destroy(); count("drop"); resolve(); }
    });
    s.on("error", (e) => { fail("drop", String(e.code)); resolve(); });
    s.on("close", () => { if (got <= 300) count("drop:ended_first"); resolve(); });
  })],
  [5, "bad", async () => {
    const res = await post("/v1/chat/completions", { messages: [{ role: "wizard", content: 1 }] });
    const j = await res.json();
    if (res.status !== 400 || !j.error) return fail("bad", `status ${res.status}`);
    count("bad");
  }],
];
const total = ops.reduce((a, o) => a + o[0], 0);
function pick() {
  let r = rnd(total);
  for (const o of ops) { if ((r -= o[0]) < 0) return o; }
  return ops[0];
}

await new Promise(r => setTimeout(r, 1000));
const baseline = { rf: fds(pids.router), wf: fds(pids.worker) };
const t0 = Date.now(), end = t0 + minutes * 60000, warm = t0 + minutes * 6000;
const samples = [];
let warmRss = null;
const sampler = setInterval(async () => {
  const g = await routerGauges(base).catch(() => null);
  const s = { t_s: Math.round((Date.now() - t0) / 1000), router_rss: rssMiB(pids.router), worker_rss: rssMiB(pids.worker),
    router_anon: rssParts(pids.router).anon, worker_anon: rssParts(pids.worker).anon, worker_file: rssParts(pids.worker).file,
    router_fds: fds(pids.router), worker_fds: fds(pids.worker), running: g?.running, waiting: g?.waiting, kv: g?.kv };
  samples.push(s);
  if (!warmRss && Date.now() >= warm) {
    warmRss = { router: s.router_rss, worker: s.worker_rss, router_anon: s.router_anon, worker_anon: s.worker_anon };
  }
  if (samples.length % 6 === 0) console.log(JSON.stringify(s), JSON.stringify(counts));
}, 10000);
await Promise.all(Array.from({ length: concurrency }, async () => {
  while (Date.now() < end) {
    const [, name, fn] = pick();
    await fn().catch((e) => fail(name, String(e?.cause?.code ?? e)));
  }
}));
clearInterval(sampler);
const idle = await waitIdle(base, 60000);
await new Promise(r => setTimeout(r, 4000));  // the router's 2 s idle timeout closes the clients' kept-alive connections
const final = { router_rss: rssMiB(pids.router), worker_rss: rssMiB(pids.worker), router_anon: rssParts(pids.router).anon,
  worker_anon: rssParts(pids.worker).anon, worker_file: rssParts(pids.worker).file, router_fds: fds(pids.router),
  worker_fds: fds(pids.worker), ...(await routerGauges(base)) };
let problems = 0;
const problem = (m) => { problems++; console.log(`PROBLEM: ${m}`); };
for (const [k, p] of Object.entries({ router: router.proc, worker: worker.proc })) {
  if (p.exitCode !== null || p.signalCode !== null) problem(`the ${k} died`);
}
const fiveXX = Object.entries(final.codes).filter(([c]) => c >= 500).reduce((a, [, n]) => a + n, 0);
if (fiveXX) problem(`${fiveXX} responses with 5xx: ${JSON.stringify(final.codes)}`);
const errs = Object.entries(counts).filter(([k]) => k.startsWith("error:"));
if (errs.length) problem(`client-side errors: ${JSON.stringify(Object.fromEntries(errs))}\n  ${errors.join("\n  ")}`);
if (idle.kv !== 0 || idle.running !== 0 || idle.waiting !== 0) problem(`not idle after the load: ${JSON.stringify(idle)}`);
if (final.router_fds > baseline.rf + 2 || final.worker_fds > baseline.wf + 2) {
  problem(`descriptors ${baseline.rf}/${baseline.wf} -> ${final.router_fds}/${final.worker_fds}`);
}
const postWarm = samples.filter(s => s.t_s * 1000 >= warm - t0);
const drift = (k, w) => {
  const xs = postWarm.map(s => s[k]).concat([final[k]]);
  return { min: Math.min(...xs), max: Math.max(...xs), end: final[k], lo_pct: 100 * (Math.min(...xs) / w - 1),
    hi_pct: 100 * (Math.max(...xs) / w - 1) };
};
const summary = {
  minutes, concurrency, requests: counts, server_5xx: fiveXX, http_codes: final.codes,
  rss_after_warmup_mib: warmRss, router_rss: drift("router_rss", warmRss.router), worker_rss: drift("worker_rss", warmRss.worker),
  router_anon: drift("router_anon", warmRss.router_anon), worker_anon: drift("worker_anon", warmRss.worker_anon),
  worker_file_end_mib: final.worker_file,
  fds_baseline: baseline, fds_end: { router: final.router_fds, worker: final.worker_fds }, kv_end: final.kv,
};
for (const k of ["router_rss", "worker_rss"]) {
  if (summary[k].lo_pct < -5 || summary[k].hi_pct > 5) problem(`${k} outside ±5 % of its post-warm-up value: ${JSON.stringify(summary[k])}`);
}
console.log(JSON.stringify(summary, null, 1));
if (args.json) fs.writeFileSync(args.json, JSON.stringify({ summary, samples }, null, 1));
killAll();
process.exit(problems ? 1 : 0);
