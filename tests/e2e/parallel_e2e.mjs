// Tensor- and expert-parallel worker groups as real processes over Gloo on
// loopback, through the router's HTTP API and the official openai client,
// against one worker holding the whole model:
//  - TP=2, TP=4 and EP=2 groups: the same greedy text, and logprobs of the
//    top alternatives within 1e-4 (f32 KV), on a generated checkpoint with
//    gpt-oss's 8 KV heads, 16 experts scaled to reach the SwiGLU clamps and a
//    sliding window of 8 that every prompt crosses;
//  - `moeserve serve --tensor-parallel-size 2 --data-parallel-size 2` (the
//    launcher): chunked prefill and preemption inside a group give the same
//    text; a rank killed mid-stream fails its group, the streams finish on the
//    other group token for token, and the launcher restarts the group whole;
//  - each rank's resident memory is below the whole model's worker's.
//   node parallel_e2e.mjs --worker BIN --router BIN --moeserve BIN --model DEMO_DIR
import { check, finish, parseArgs, startProc } from "./procs.mjs";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(pathToFileURL(join(here, "../node/node_modules/openai/index.mjs")).href);
const args = parseArgs(process.argv.slice(2));
const sleep = ms => new Promise(r => setTimeout(r, ms));

// The checkpoint: the "mid" preset at the full o200k vocabulary with the real tokenizer.
const tmp = mkdtempSync(join(tmpdir(), "moeserve-parallel-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));
const model = join(tmp, "mid");
const gen = spawnSync(args.moeserve, ["gen-checkpoint", "--preset", "mid", "--vocab", "201088", "--seed", "5",
  "--expert-scale", "4", "--out", model, "--tokenizer", join(args.model, "tokenizer.json")], { stdio: "inherit" });
assert.equal(gen.status, 0, "gen-checkpoint");

const common = ["--model", model, "--kv-cache-dtype", "f32", "--threads", "1", "--max-model-len", "1024"];
async function group(extra, tp) {
  const ranks = [];
  for (let r = 0; r < tp; r++) {
    ranks.push(await startProc(args.worker, [...common, "--kv-cache-memory", "64MiB", ...(tp > 1 ?
      ["--tensor-parallel-size", String(tp), "--rank", String(r)] : []), ...extra]));
  }
  const router = await startProc(args.router, ["--worker", ranks.map(w => w.addr).join(","), "--model", model,
    "--port", "0", "--tensor-parallel-size", String(tp)]);
  return { ranks, router, client: new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "x", maxRetries: 0 }) };
}
function stop(g) {
  g.router.proc.kill("SIGKILL");
  for (const r of g.ranks) r.proc.kill("SIGKILL");
}
function rssKiB(pid) {
  return Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]);
}

const prompts = ["The quick brown fox jumps over the lazy dog and keeps running far away",
  "Tensor parallel ranks split the heads;", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
  "Once upon a time in a land of mixture-of-experts models, there lived"];
const MAX = 24;
async function complete(client, prompt) {
  const r = await client.completions.create({ model: "mid", prompt, max_tokens: MAX, temperature: 0, logprobs: 5 });
  return { text: r.choices[0].text, top: r.choices[0].logprobs.top_logprobs };
}
function sameRun(got, want, what) {
  assert.equal(got.text, want.text, `${what}: the same greedy text`);
  let d = 0;
  for (let i = 0; i < want.top.length; i++) {
    for (const [tok, lp] of Object.entries(want.top[i])) {
      assert.ok(tok in got.top[i], `${what}: position ${i} has "${tok}" among its top alternatives`);
      d = Math.max(d, Math.abs(got.top[i][tok] - lp));
    }
  }
  assert.ok(d < 1e-4, `${what}: max |dlogprob| ${d}`);
  return d;
}

const single = await group([], 1);
const expected = [];
for (const p of prompts) expected.push(await complete(single.client, p));
const singleRss = rssKiB(single.ranks[0].proc.pid);
stop(single);

for (const [name, extra, tp] of [["TP=2", [], 2], ["TP=4", [], 4], ["EP=2", ["--enable-expert-parallel"], 2]]) {
  await check(`${name} group: the same text and logprobs as one process`, async () => {
    const g = await group(extra, tp);
    try {
      let d = 0;
      const got = await Promise.all(prompts.map(p => complete(g.client, p)));  // batched together
      got.forEach((r, i) => { d = Math.max(d, sameRun(r, expected[i], `${name} prompt ${i}`)); });
      const rss = g.ranks.map(r => rssKiB(r.proc.pid));
      console.log(`# ${name}: max |dlogprob| ${d.toExponential(2)}; RSS per rank ${rss.join(", ")} KiB ` +
        `(one process: ${singleRss} KiB)`);
      for (const r of rss) assert.ok(r < singleRss, `a rank's RSS ${r} KiB is below the whole model's ${singleRss} KiB`);
    } finally {
      stop(g);
    }
  });
}

// The launcher: two groups of two ranks, small KV pools (preemption) and small steps (chunked prefill).
const port = 20000 + Math.floor(Math.random() * 20000), metricsPort = port + 1;
const serve = spawn(args.moeserve, ["serve", "--model", model, "--port", String(port), "--tensor-parallel-size", "2",
  "--data-parallel-size", "2", "--kv-cache-memory", "640KiB", "--max-num-seqs", "8", "--kv-cache-dtype", "f32", "--threads", "1",
  "--max-model-len", "1024", "--max-num-batched-tokens", "16", "--metrics-port", String(metricsPort),
  // The same prompts are sent three times at once: with prefix caching they would share their blocks and the
  // small pools would never preempt (prefix_cache_e2e covers caching; here the flag's forwarding is checked too).
  "--no-enable-prefix-caching"],
  { stdio: ["ignore", "inherit", "inherit"], detached: true });
process.on("exit", () => { try { process.kill(-serve.pid, "SIGKILL"); } catch {} });
const base = `http://127.0.0.1:${port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "x", maxRetries: 0 });
async function waitFor(what, pred, ms = 60000) {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(200)) {
    try { if (await pred()) return; } catch {}
  }
  assert.fail(`timed out waiting for ${what}`);
}
async function metrics() { return (await fetch(`${base}/metrics`)).text(); }
function series(text, name) {
  const m = text.match(new RegExp(`^${name.replace(/[{}"]/g, c => "\\" + c)} (\\S+)`, "m"));
  return m ? Number(m[1]) : NaN;
}
// The pid of the launcher's worker i (its metrics port is metricsPort + i).
function workerPid(i) {
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      const k = cmd.indexOf("--metrics-port");
      if (k >= 0 && cmd[k + 1] === String(metricsPort + i) && cmd[0].endsWith("moeserve-worker")) return Number(d);
    } catch {}
  }
  return 0;
}

await check("moeserve serve --tensor-parallel-size 2 --data-parallel-size 2: chunked prefill and preemption, same text", async () => {
  await waitFor("the router", async () => (await fetch(`${base}/ready`)).status === 200);
  const preemptions = text => series(text, 'moeserve_preemptions_total{dp_rank="0"}') +
    series(text, 'moeserve_preemptions_total{dp_rank="1"}');
  const before = preemptions(await metrics());
  // Many concurrent requests over small KV pools: some are preempted and recomputed.
  const runs = await Promise.all([...prompts, ...prompts, ...prompts].map(p => complete(client, p)));
  runs.forEach((r, i) => sameRun(r, expected[i % prompts.length], `request ${i}`));
  const m = await metrics();
  assert.equal(series(m, 'moeserve_worker_group_up{dp_rank="0"}'), 1);
  assert.equal(series(m, 'moeserve_worker_group_up{dp_rank="1"}'), 1);
  console.log(`# preemptions: ${preemptions(m) - before}`);
  assert.ok(preemptions(m) > before, "the small pools preempted");
  const rank = await (await fetch(`http://127.0.0.1:${metricsPort + 1}/metrics`)).text();
  assert.match(rank, /moeserve_worker_info\{[^}]*rank="1"[^}]*\} 1/);
  assert.ok(Number(rank.match(/^moeserve_worker_collective_seconds_total (\S+)/m)[1]) > 0, "rank 1 all-reduced");
});

await check("a rank killed mid-stream: the group fails, its streams finish on the other group, the group restarts", async () => {
  const victim = workerPid(1);  // rank 1 of group 0
  assert.ok(victim > 0, "found rank 1 of group 0");
  let killed = false;
  const progress = new Array(prompts.length).fill(0);
  const results = await Promise.all(prompts.map(async (prompt, i) => {
    const s = await client.completions.create({ model: "mid", prompt, max_tokens: MAX, temperature: 0, stream: true });
    let text = "";
    for await (const c of s) {
      text += c.choices[0]?.text ?? "";
      progress[i]++;
      if (!killed && progress.every(p => p >= 2)) {
        killed = true;
        process.kill(victim, "SIGKILL");
      }
    }
    return text;
  }));
  assert.ok(killed, "killed while every stream ran");
  results.forEach((t, i) => assert.equal(t, expected[i].text, `stream ${i}`));
  const m = await metrics();
  assert.ok(series(m, 'moeserve_worker_group_failures_total{dp_rank="0"}') >= 1, "group 0 failed");
  assert.equal(series(m, 'moeserve_requests_total{finish_reason="error"}') || 0, 0, "no request failed");
  await waitFor("group 0 back", async () => series(await metrics(), 'moeserve_worker_group_up{dp_rank="0"}') === 1);
  assert.notEqual(workerPid(1), victim, "a new rank 1");
  assert.notEqual(workerPid(1), 0, "rank 1 runs again");
  for (let i = 0; i < prompts.length; i++) sameRun(await complete(client, prompts[i]), expected[i], `after restart ${i}`);
});

finish();
