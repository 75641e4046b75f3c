// A real Prometheus (Debian's `prometheus`) scrapes a real moeserve cluster —
// a router and two data-parallel workers on loopback — with the shipped
// deploy/prometheus/prometheus.yml (same jobs, labels, scrape settings and
// alert rules; only the targets point at this test's ports). Traffic: chat
// streams, a tool call, completions, bad requests, a client that drops its
// stream, and worker 1 killed and restarted. Then:
//   - the worker-down alerts fire while worker 1 is dead and resolve after it rejoins;
//   - every target is up;
//   - every query of every panel of the shipped Grafana dashboard, with Grafana's
//     variables expanded, evaluates without error to at least one series of
//     finite, plausible values;
//   - the router's and the workers' metrics endpoints keep HTTP/1.1 connections
//     open, so clients that pool connections never have a scrape fail.
// Exits 77 (ctest: skipped) only when no prometheus binary is installed.
//   node prometheus_e2e.mjs --worker BIN --router BIN --model DIR --root DIR [--prometheus BIN]
import { check, finish, parseArgs, start, startProc } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { execFileSync, spawn } from "node:child_process";
import { tmpdir } from "node:os";
import net from "node:net";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const args = parseArgs(process.argv.slice(2));
const promBin = args.prometheus ?? "prometheus";
try {
  execFileSync(promBin, ["--version"], { stdio: "ignore" });
} catch {
  console.log(`skipped: no prometheus binary (${promBin}); scripts/setup.sh installs Debian's prometheus`);
  process.exit(77);
}
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const sleep = ms => new Promise(r => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// The cluster: two workers with metrics, one router checking them every 200 ms.
const metricsPorts = [await freePort(), await freePort()];
const workerFlags = i => ["--model", args.model, "--metrics-port", String(metricsPorts[i]), "--kv-cache-memory", "64MiB",
                          "--max-num-seqs", "16", "--max-model-len", "1024", "--threads", "1"];
const workers = [];
for (let i = 0; i < 2; ++i) workers.push(await startProc(args.worker, [...workerFlags(i), "--port", "0"]));
const routerAddr = await start(args.router, ["--worker", workers.map(w => w.addr).join(","), "--model", args.model,
  "--port", "0", "--health-check-interval-ms", "200", "--max-num-queued-requests", "64"]);
const model = args.model.replace(/\/+$/, "").split("/").pop();
const client = new OpenAI({ baseURL: `http://${routerAddr}/v1`, apiKey: "x", maxRetries: 0 });

// Prometheus with the shipped configuration, targets rewritten to this cluster by
// deploy/prometheus/local_config.py (what deploy/README.md tells operators to run).
const dir = mkdtempSync(join(tmpdir(), "moeserve-prom-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
execFileSync("python3", [join(args.root, "deploy/prometheus/local_config.py"), "--out", dir, "--router", routerAddr,
  ...metricsPorts.flatMap(p => ["--worker", `127.0.0.1:${p}`])]);
const promPort = await freePort();
const prom = spawn(promBin, [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`,
  `--web.listen-address=127.0.0.1:${promPort}`, "--log.level=warn"], { stdio: ["ignore", "ignore", "inherit"] });
process.on("exit", () => prom.kill("SIGKILL"));
const promUrl = `http://127.0.0.1:${promPort}`;
for (let i = 0; ; ++i) {
  try {
    if ((await fetch(`${promUrl}/-/ready`)).ok) break;
  } catch {}
  if (i > 100) throw new Error("prometheus did not become ready");
  await sleep(100);
}

async function query(expr) {
  const r = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const j = await r.json();
  assert.equal(j.status, "success", `${expr}: ${j.error}`);
  return j.data.result;
}
async function firing(alertname) {
  const j = await (await fetch(`${promUrl}/api/v1/alerts`)).json();
  return j.data.alerts.filter(a => a.labels.alertname === alertname && a.state === "firing");
}
async function until(what, fn, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}

// Traffic of every kind, in the background until stopped.
let traffic = true;
let slowest = 0;  // seconds: the longest request the clients saw
const timed = async p => {
  const t0 = Date.now();
  try {
    return await p;
  } finally {
    slowest = Math.max(slowest, (Date.now() - t0) / 1000);
  }
};
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather of a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
async function drive() {
  let i = 0;
  while (traffic) {
    const jobs = [
      (async () => {
        const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: `Hi ${i}` }],
          max_tokens: 8, stream: true });
        for await (const _ of s) {}
      })(),
      client.chat.completions.create({ model, messages: [{ role: "user", content: "Weather in Paris?" }], tools,
        tool_choice: { type: "function", function: { name: "get_weather" } }, max_tokens: 8 }),
      client.completions.create({ model, prompt: `Count: ${i}`, max_tokens: 6 }),
      fetch(`http://${routerAddr}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" },
        body: "{not json" }),
      (async () => {  // a client that drops its stream after the first chunk
        const ac = new AbortController();
        const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Long story" }],
          max_tokens: 200, stream: true }, { signal: ac.signal });
        for await (const _ of s) { ac.abort(); break; }
      })().catch(() => {}),
    ];
    await Promise.allSettled(jobs.map(timed));
    ++i;
  }
}
const driving = drive();

await check("every target is up", async () => {
  const up = await until("three targets up", async () => {
    const r = await query("up");
    return r.length === 3 && r.every(s => s.value[1] === "1") ? r : null;
  }, 30000);
  assert.deepEqual(up.map(s => s.metric.job).sort(), ["moeserve-router", "moeserve-worker", "moeserve-worker"]);
});

await check("worker down: the alerts fire while worker 1 is dead and resolve after it rejoins", async () => {
  const port = workers[1].addr.split(":").pop();
  workers[1].proc.kill("SIGKILL");
  const down = await until("MoeserveWorkerGroupDown firing", () => firing("MoeserveWorkerGroupDown").then(a => a.length ? a : null), 90000);
  assert.equal(down[0].labels.dp_rank, "1");
  assert.equal(down[0].labels.severity, "critical");
  await until("MoeserveWorkerMetricsDown firing", () => firing("MoeserveWorkerMetricsDown").then(a => a.length ? a : null), 60000);
  workers[1] = await startProc(args.worker, [...workerFlags(1), "--port", port]);
  await until("the alerts resolved", async () =>
    (await firing("MoeserveWorkerGroupDown")).length === 0 && (await firing("MoeserveWorkerMetricsDown")).length === 0,
    60000);
  const upAgain = await query('moeserve_worker_group_up{dp_rank="1"}');
  assert.equal(upAgain[0].value[1], "1");
});

// HTTP/1.1 persistence (RFC 9112 9.3): a response without "Connection: close"
// leaves the connection open for the next request. Clients that pool
// connections (undici's fetch, Python sessions) send their next scrape on it;
// a server that closes anyway fails that scrape.
function getOnOneConnection(addr, n, gapMs) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host);
    let buf = Buffer.alloc(0), done = 0, closed = false;
    const send = () => sock.write(`GET /metrics HTTP/1.1\r\nHost: ${addr}\r\n\r\n`);
    sock.on("connect", send);
    sock.on("error", reject);
    sock.on("close", () => {
      closed = true;
      if (done < n) reject(new Error(`the server closed the connection after ${done} of ${n} responses`));
    });
    sock.on("data", d => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        const length = Number(/^content-length:\s*(\d+)/im.exec(head)?.[1] ?? NaN);
        if (!/^HTTP\/1\.1 200/.test(head) || !Number.isFinite(length)) return reject(new Error(`response: ${head}`));
        if (buf.length < end + 4 + length) return;
        buf = buf.subarray(end + 4 + length);
        if (/^connection:\s*close/im.test(head)) return reject(new Error("the server asks to close (Connection: close)"));
        if (++done === n) {
          sock.end();
          return resolve(done);
        }
        setTimeout(() => closed || send(), gapMs);
      }
    });
  });
}

await check("the metrics endpoints keep connections they do not close; pooled fetches never fail", async () => {
  for (const addr of [routerAddr, ...metricsPorts.map(p => `127.0.0.1:${p}`)]) {
    assert.equal(await getOnOneConnection(addr, 3, 100), 3, addr);
    let failures = 0;
    for (let i = 0; i < 200; ++i) {
      try {
        await (await fetch(`http://${addr}/metrics`)).text();
      } catch {
        failures++;
      }
    }
    assert.equal(failures, 0, `${addr}: back-to-back fetches failed`);
  }
});

// Grafana's variables as it would expand them for a 10-minute view of 5-second scrapes.
const expand = e => e.replaceAll("$__rate_interval", "1m").replaceAll("$__range", "10m").replaceAll("$__interval", "15s");
const dashboard = JSON.parse(readFileSync(join(args.root, "deploy/grafana/dashboards/moeserve.json"), "utf8"));
const panels = dashboard.panels.filter(p => p.targets?.length);

await check("every dashboard query evaluates to finite, plausible series", async () => {
  await sleep(12000);  // more scrapes of the steady traffic after the restart
  const seen = {};
  for (const p of panels) {
    for (const t of p.targets) {
      const expr = expand(t.expr);
      const series = await query(expr);
      assert.ok(series.length > 0, `panel "${p.title}": ${expr} returned no series`);
      // A quantile of a series that saw nothing in the window is NaN (e.g. a worker that got no step in the
      // last minute); every query must still give at least one finite value, and none may be negative.
      const finite = series.filter(s => Number.isFinite(Number(s.value[1])));
      assert.ok(finite.length > 0, `panel "${p.title}": ${expr} has no finite value: ${JSON.stringify(series)}`);
      for (const s of finite) assert.ok(Number(s.value[1]) >= 0, `panel "${p.title}": ${expr} < 0 for ${JSON.stringify(s.metric)}`);
      if (!/histogram_quantile/.test(expr)) assert.equal(finite.length, series.length, `${expr}: NaN outside a quantile`);
      seen[t.expr] = finite;
    }
  }
  const value = e => Math.max(...seen[e].map(s => Number(s.value[1])));
  const byExpr = re => Object.keys(seen).filter(e => re.test(e));
  // Counters moved; latencies are inside what a demo model on a CPU takes.
  for (const e of byExpr(/moeserve_(generation|prompt)_tokens_total/)) assert.ok(value(e) > 0, `${e} > 0`);
  assert.ok(byExpr(/moeserve_requests_total/).every(e => value(e) > 0), "requests finish");
  const reasons = seen[byExpr(/moeserve_requests_total/)[0]].map(s => s.metric.finish_reason);
  assert.ok(reasons.includes("abort"), `the dropped streams are counted as aborts: ${reasons}`);
  const codes = seen[byExpr(/moeserve_http_responses_total/)[0]].map(s => s.metric.code).sort();
  assert.ok(codes.includes("200") && codes.includes("400"), `responses by code: ${codes}`);
  // Latency quantiles lie inside what the clients saw: below the first histogram bucket bound that
  // holds the slowest request (quantiles interpolate inside buckets).
  const bounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
  const ceiling = bounds.find(b => b >= slowest) ?? Infinity;
  for (const e of byExpr(/histogram_quantile\(.*_seconds_bucket/)) {
    assert.ok(value(e) > 0 && value(e) <= ceiling, `${e} = ${value(e)}, slowest request ${slowest} s`);
  }
  for (const e of byExpr(/histogram_quantile\(.*_tokens_bucket/)) assert.ok(value(e) >= 1, `${e} = ${value(e)}`);
  const failures = byExpr(/failures_total/)[0];
  assert.ok(seen[failures].some(s => s.metric.dp_rank === "1" && Number(s.value[1]) >= 1), "group 1's failure counted");
  // The MoE picture: every (layer, expert) of the demo shape, and an imbalance of at least 1 per layer.
  const { num_hidden_layers: layers, num_local_experts: experts } =
    JSON.parse(readFileSync(join(args.model, "config.json"), "utf8"));
  const heat = seen[byExpr(/sum by \(layer, expert\)/)[0]];
  assert.equal(heat.length, layers * experts, "one heatmap cell per layer and expert");
  const imbalance = seen[byExpr(/max by \(layer\)/)[0]];
  assert.equal(imbalance.length, layers);
  assert.ok(imbalance.every(s => Number(s.value[1]) >= 1), "max / mean >= 1");
});

traffic = false;
await driving;
finish();
