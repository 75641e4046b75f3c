// Worker failures with two data-parallel groups, through the HTTP API and the
// official openai client:
//  - a worker killed mid-stream: its streams move to the other group and end
//    exactly as they would have (greedy, token for token); nothing leaks;
//  - the worker comes back on its address and rejoins; requests reach it again;
//  - with every worker dead, streams end with an error event, /ready says 503,
//    new requests get 503; a returning worker makes the router ready again.
//   node failover.mjs --worker BIN --router BIN --model DIR
import { check, finish, parseArgs, startProc } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(pathToFileURL(join(here, "../node/node_modules/openai/index.mjs")).href);
const args = parseArgs(process.argv.slice(2));

const sleep = ms => new Promise(r => setTimeout(r, ms));

const base = 20000 + Math.floor(Math.random() * 20000);
const ports = [base, base + 1], metricsPorts = [base + 2, base + 3];
function startWorker(i) {
  return startProc(args.worker, ["--model", args.model, "--port", String(ports[i]), "--metrics-port",
    String(metricsPorts[i]), "--kv-cache-memory", "64MiB", "--max-model-len", "2048", "--kv-cache-dtype", "f32",
    "--threads", "1"]);
}
const workers = [await startWorker(0), await startWorker(1)];
const router = await startProc(args.router, ["--worker", workers.map(w => w.addr).join(","), "--model", args.model,
  "--port", "0", "--health-check-interval-ms", "200"]);
const model = args.model.replace(/\/+$/, "").split("/").pop();
const client = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "x", maxRetries: 0 });

async function metrics() {
  return (await fetch(`http://${router.addr}/metrics`)).text();
}
function series(text, name) {
  const m = text.match(new RegExp(`^${name.replace(/[{}"]/g, c => "\\" + c)} (\\S+)`, "m"));
  return m ? Number(m[1]) : NaN;
}
async function waitFor(what, pred, ms = 15000) {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(100)) if (await pred()) return;
  assert.fail(`timed out waiting for ${what}`);
}
async function workerSteps(i) {
  const t = await (await fetch(`http://127.0.0.1:${metricsPorts[i]}/metrics`)).text();
  return Number(t.match(/^moeserve_worker_step_seconds_count (\S+)/m)[1]);
}
function kill(i) {
  workers[i].proc.kill("SIGKILL");
}

const N = 8, MAX = 120;
const prompts = Array.from({ length: N }, (_, i) => `Story ${i}: ${"once ".repeat(i + 1)}`);
async function alone(prompt) {
  const r = await client.completions.create({ model, prompt, max_tokens: MAX, temperature: 0 });
  return r.choices[0].text;
}
// Streams every prompt; `onProgress(i, chunks)` sees each stream's progress.
function streamAll(onProgress = () => {}) {
  return Promise.all(prompts.map(async (prompt, i) => {
    const s = await client.completions.create({ model, prompt, max_tokens: MAX, temperature: 0, stream: true });
    let text = "", finish = null, n = 0;
    for await (const c of s) {
      text += c.choices[0]?.text ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
      onProgress(i, ++n);
    }
    return { text, finish };
  }));
}

const expected = [];
for (const p of prompts) expected.push(await alone(p));

await check("a worker killed mid-stream: its streams finish on the other group, token for token", async () => {
  const before = [await workerSteps(0), await workerSteps(1)];
  const progress = new Array(N).fill(0);
  let killed = false;
  const results = await streamAll((i, n) => {
    progress[i] = n;
    if (!killed && progress.every(p => p >= 3)) {
      killed = true;
      kill(0);
    }
  });
  assert.ok(killed, "the worker was killed while all streams were running");
  results.forEach((r, i) => {
    assert.equal(r.finish, "length", `stream ${i}`);
    assert.equal(r.text, expected[i], `stream ${i} equals its run alone`);
  });
  assert.ok((await workerSteps(1)) > before[1], "group 1 served");
  const m = await metrics();
  assert.equal(series(m, 'moeserve_worker_group_up{dp_rank="0"}'), 0);
  assert.equal(series(m, 'moeserve_worker_group_up{dp_rank="1"}'), 1);
  assert.equal(series(m, 'moeserve_worker_group_failures_total{dp_rank="0"}'), 1);
  assert.equal(series(m, 'moeserve_requests_total{finish_reason="length"}') >= 2 * N, true);
  assert.equal(series(m, 'moeserve_requests_total{finish_reason="error"}') || 0, 0, "no request failed");
});

await check("no KV block or request leaks on the surviving group", async () => {
  await waitFor("an idle group 1", async () => {
    const m = await metrics();
    return series(m, 'moeserve_requests_running{dp_rank="1"}') === 0 &&
      series(m, 'moeserve_kv_cache_usage_ratio{cache_group="full",dp_rank="1"}') === 0 &&
      series(m, 'moeserve_kv_cache_usage_ratio{cache_group="sliding",dp_rank="1"}') === 0;
  });
  assert.equal((await fetch(`http://${router.addr}/ready`)).status, 200);
});

await check("the worker returns on its address and rejoins; requests reach it again", async () => {
  workers[0] = await startWorker(0);
  await waitFor("group 0 up", async () => series(await metrics(), 'moeserve_worker_group_up{dp_rank="0"}') === 1);
  const results = await streamAll();
  results.forEach((r, i) => assert.equal(r.text, expected[i], `stream ${i}`));
  assert.ok((await workerSteps(0)) > 0, "the restarted worker ran steps");
});

await check("every worker dead: error events, 503 and /ready 503; a returning worker restores service", async () => {
  const s = await client.completions.create({ model, prompt: prompts[0], max_tokens: 1500, temperature: 0, stream: true });
  let n = 0, error = null;
  try {
    for await (const _ of s) {
      if (++n === 3) { kill(0); kill(1); }
    }
  } catch (e) {
    error = e;
  }
  assert.ok(error, "the stream ended with an error event");
  assert.match(String(error.message), /worker|group/);
  await waitFor("/ready 503", async () => (await fetch(`http://${router.addr}/ready`)).status === 503);
  await assert.rejects(client.completions.create({ model, prompt: "x", max_tokens: 2 }), e => e.status === 503);
  workers[1] = await startWorker(1);
  await waitFor("/ready 200", async () => (await fetch(`http://${router.addr}/ready`)).status === 200);
  assert.equal(await alone(prompts[1]), expected[1]);
  const m = await metrics();
  assert.ok(series(m, 'moeserve_requests_total{finish_reason="error"}') >= 1);
});

finish();
