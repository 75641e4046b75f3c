// A load generator for any OpenAI-compatible endpoint, reporting what vLLM's
// `bench serve` reports: request throughput, output and total token
// throughput, TTFT, TPOT, ITL and end-to-end latency (mean, median, p99).
//
//   node serve_bench.mjs --base-url http://127.0.0.1:8000/v1 [--model NAME]
//        [--endpoint completions|chat] [--num-prompts 200] [--max-concurrency 64]
//        [--request-rate inf] [--input-len 128] [--output-len 128] [--seed 0] [--json FILE]
//
// --workload multiturn runs --conversations conversations of --turns turns
// each, all at once (up to --max-concurrency): every prompt is a shared system
// prompt of --system-len words, then the conversation so far (earlier user
// turns of --turn-len words and the server's replies), then a new user turn,
// as a chat client resends it; it reports TTFT per turn, so prefix caching
// (or its absence) shows in how later turns compare with the first.
//
// Requests stream (SSE) with temperature 0 and max_tokens = --output-len.
// Output tokens are the server's usage.completion_tokens when it reports them
// (stream_options.include_usage), else the number of content chunks. With a
// finite --request-rate, arrivals are a Poisson process; --max-concurrency
// caps requests in flight either way.
import http from "node:http";
import { writeFileSync } from "node:fs";

function parseArgs(argv) {
  const a = {};
  for (let i = 0; i < argv.length; i++) if (argv[i].startsWith("--")) a[argv[i].slice(2)] = argv[i + 1];
  return a;
}
const args = parseArgs(process.argv.slice(2));
if (!args["base-url"]) {
  console.error("usage: node serve_bench.mjs --base-url URL [--model NAME] [--endpoint completions|chat] " +
    "[--num-prompts N] [--max-concurrency N] [--request-rate R|inf] [--input-len N] [--output-len N] [--json FILE]\n" +
    "       [--workload multiturn --conversations N --turns N --system-len N --turn-len N]");
  process.exit(2);
}
const base = new URL(args["base-url"].replace(/\/+$/, "") + "/");
const endpoint = args.endpoint ?? "completions";
const numPrompts = Number(args["num-prompts"] ?? 200);
const maxConcurrency = Number(args["max-concurrency"] ?? 64);
const rate = args["request-rate"] === undefined || args["request-rate"] === "inf" ? Infinity : Number(args["request-rate"]);
const inputLen = Number(args["input-len"] ?? 128);
const outputLen = Number(args["output-len"] ?? 128);
let seed = Number(args.seed ?? 0) >>> 0;
const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
const agent = new http.Agent({ keepAlive: true, maxSockets: maxConcurrency + 8 });
const headers = { "content-type": "application/json", authorization: `Bearer ${args["api-key"] ?? "none"}` };

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, base), { method, agent, headers }, res => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", d => (data += d));
      res.on("end", () => resolve({ status: res.statusCode, data }));
    });
    req.on("error", reject);
    req.end(body ? JSON.stringify(body) : undefined);
  });
}

const model = args.model ?? JSON.parse((await request("GET", "models")).data).data[0].id;

// Prompts of about --input-len tokens: random common words (one token each in o200k and most vocabularies).
const words = ("the of and to in is was for on that with as by at from his her it an be this are or which had not " +
  "but have were one all they their there been has more when will would who so no if out up what about into than " +
  "them can only other time new some could these two may first then do any like my now over such our man me even " +
  "most made after also did many before must through back years where much your way well down should because each " +
  "just those people how too little state good very make world still own see men work long get here between both " +
  "life being under never day same another know while last might us great old year off come since against go came " +
  "right used take three").split(" ");
const randomText = n => Array.from({ length: n }, () => words[Math.floor(rand() * words.length)]).join(" ");
const workload = args.workload ?? "random";
const prompts = workload === "random" ? Array.from({ length: numPrompts }, () => randomText(inputLen)) : [];

// One streamed request: timestamps of each content chunk, and the server's token count.
function stream(prompt) {
  const body = endpoint === "chat"
    ? { model, messages: [{ role: "user", content: prompt }], max_tokens: outputLen, temperature: 0, stream: true,
        stream_options: { include_usage: true } }
    : { model, prompt, max_tokens: outputLen, temperature: 0, stream: true, stream_options: { include_usage: true } };
  const path = endpoint === "chat" ? "chat/completions" : "completions";
  return new Promise(resolve => {
    const t0 = performance.now();
    const times = [];
    let usage = null, buf = "", error = null, text = "";
    const req = http.request(new URL(path, base), { method: "POST", agent, headers }, res => {
      if (res.statusCode !== 200) error = `HTTP ${res.statusCode}`;
      res.setEncoding("utf8");
      res.on("data", d => {
        buf += d;
        let k;
        while ((k = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, k);
          buf = buf.slice(k + 2);
          if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
          const j = JSON.parse(ev.slice(6));
          if (j.error) error = j.error.message;
          if (j.usage) usage = j.usage;
          const c = j.choices?.[0];
          if (!c) continue;
          const piece = c.text ?? c.delta?.content ?? c.delta?.reasoning_content ?? "";
          if (piece.length > 0) times.push(performance.now());
          text += c.text ?? c.delta?.content ?? "";
        }
      });
      res.on("end", () => resolve({ t0, times, usage, error, text, t1: performance.now() }));
    });
    req.on("error", e => resolve({ t0, times, usage, error: String(e), text, t1: performance.now() }));
    req.end(JSON.stringify(body));
  });
}

const results = [];
const tStart = performance.now();
if (workload === "multiturn") {
  // Conversations in parallel, each one turn after another.
  const conversations = Number(args.conversations ?? 16), turns = Number(args.turns ?? 6);
  const system = "System: " + randomText(Number(args["system-len"] ?? 2000)) + "\n";
  const turnLen = Number(args["turn-len"] ?? 64);
  const users = Array.from({ length: conversations }, () => Array.from({ length: turns }, () => randomText(turnLen)));
  let nextConv = 0;
  const runConversation = async () => {
    while (nextConv < conversations) {
      const c = nextConv++;
      let history = system;
      for (let t = 0; t < turns; ++t) {
        const prompt = history + "User: " + users[c][t] + "\nAssistant:";
        const r = await stream(prompt);
        r.turn = t;
        results.push(r);
        history = prompt + r.text + "\n";
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(maxConcurrency, conversations) }, runConversation));
} else {
let inFlight = 0, next = 0;
await new Promise(done => {
  let arrival = tStart;
  const launch = () => {
    while (next < numPrompts && inFlight < maxConcurrency && performance.now() >= arrival) {
      const i = next++;
      inFlight++;
      if (rate !== Infinity) arrival += (-Math.log(1 - rand()) / rate) * 1000;
      stream(prompts[i]).then(r => {
        results.push(r);
        inFlight--;
        if (results.length === numPrompts) done();
        else launch();
      });
    }
    if (next < numPrompts && inFlight < maxConcurrency) setTimeout(launch, Math.max(0, arrival - performance.now()));
  };
  launch();
});
}
const duration = (performance.now() - tStart) / 1000;
agent.destroy();

const ok = results.filter(r => !r.error && r.times.length > 0);
const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const mean = xs => xs.reduce((a, b) => a + b, 0) / (xs.length || 1);
const ttft = ok.map(r => r.times[0] - r.t0);
const outTokens = ok.map(r => r.usage?.completion_tokens ?? r.times.length);
const inTokens = ok.map(r => r.usage?.prompt_tokens ?? inputLen);
const tpot = ok.filter((r, i) => outTokens[i] > 1).map(r => {
  const n = r.usage?.completion_tokens ?? r.times.length;
  return (r.t1 - r.times[0]) / (n - 1);
});
const itl = ok.flatMap(r => r.times.slice(1).map((t, k) => t - r.times[k]));
const e2e = ok.map(r => r.t1 - r.t0);
const sum = xs => xs.reduce((a, b) => a + b, 0);
const stats = xs => ({ mean: mean(xs), median: pct(xs, 50), p99: pct(xs, 99) });
const report = {
  endpoint: base.href + (endpoint === "chat" ? "chat/completions" : "completions"),
  model, num_prompts: numPrompts, max_concurrency: maxConcurrency, request_rate: String(rate),
  input_len: inputLen, output_len: outputLen,
  successful_requests: ok.length, failed_requests: results.length - ok.length,
  first_error: results.find(r => r.error)?.error ?? null,
  duration_s: duration,
  total_input_tokens: sum(inTokens), total_output_tokens: sum(outTokens),
  request_throughput: ok.length / duration,
  output_token_throughput: sum(outTokens) / duration,
  total_token_throughput: (sum(inTokens) + sum(outTokens)) / duration,
  streamed_chunks_per_s: sum(ok.map(r => r.times.length)) / duration,
  ttft_ms: stats(ttft), tpot_ms: stats(tpot), itl_ms: stats(itl), e2el_ms: stats(e2e),
};
if (workload === "multiturn") {
  report.workload = "multiturn";
  report.cached_prompt_tokens = sum(ok.map(r => r.usage?.prompt_tokens_details?.cached_tokens ?? 0));
  report.ttft_by_turn_ms = [];
  for (let t = 0; ok.some(r => r.turn === t); ++t) {
    const xs = ok.filter(r => r.turn === t);
    report.ttft_by_turn_ms.push({ turn: t + 1, prompt_tokens_mean: mean(xs.map(r => r.usage?.prompt_tokens ?? 0)),
      ...stats(xs.map(r => r.times[0] - r.t0)) });
  }
  const first = report.ttft_by_turn_ms[0]?.median, later = report.ttft_by_turn_ms.slice(1).map(x => x.median);
  report.later_turn_ttft_over_first = Math.max(...later) / first;
}
const f = x => (Number.isFinite(x) ? x.toFixed(2) : "n/a");
console.log(`============ Serving Benchmark Result ============
Endpoint:                                 ${report.endpoint}
Successful requests:                      ${report.successful_requests}
Failed requests:                          ${report.failed_requests}
Benchmark duration (s):                   ${f(duration)}
Total input tokens:                       ${report.total_input_tokens}
Total generated tokens:                   ${report.total_output_tokens}
Request throughput (req/s):               ${f(report.request_throughput)}
Output token throughput (tok/s):          ${f(report.output_token_throughput)}
Total token throughput (tok/s):           ${f(report.total_token_throughput)}
---------------Time to First Token----------------
Mean TTFT (ms):                           ${f(report.ttft_ms.mean)}
Median TTFT (ms):                         ${f(report.ttft_ms.median)}
P99 TTFT (ms):                            ${f(report.ttft_ms.p99)}
-----Time per Output Token (excl. 1st token)------
Mean TPOT (ms):                           ${f(report.tpot_ms.mean)}
Median TPOT (ms):                         ${f(report.tpot_ms.median)}
P99 TPOT (ms):                            ${f(report.tpot_ms.p99)}
---------------Inter-token Latency----------------
Mean ITL (ms):                            ${f(report.itl_ms.mean)}
Median ITL (ms):                          ${f(report.itl_ms.median)}
P99 ITL (ms):                             ${f(report.itl_ms.p99)}
==================================================`);
if (report.ttft_by_turn_ms) {
  console.log(`Cached prompt tokens:                     ${report.cached_prompt_tokens} of ${report.total_input_tokens}`);
  for (const x of report.ttft_by_turn_ms) {
    console.log(`Turn ${String(x.turn).padEnd(3)} prompt ${f(x.prompt_tokens_mean).padStart(8)} tok   TTFT median ${f(x.median).padStart(9)} ms   p99 ${f(x.p99).padStart(9)} ms`);
  }
  console.log(`Slowest later turn / first turn (median TTFT): ${f(report.later_turn_ttft_over_first)}`);
}
if (report.first_error) console.log(`first error: ${report.first_error}`);
if (args.json) writeFileSync(args.json, JSON.stringify(report, null, 2));
