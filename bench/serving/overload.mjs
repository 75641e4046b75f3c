// Overload: a burst of 10x what the server admits, against the router in
// front of (a) moeserve-fake-worker with a fixed step time and (b) the demo
// model on a CPU worker. The peer is the same server at 1x load (exactly what
// it admits, nothing refused): the admitted requests' p99 latency in the burst
// is reported as a ratio to it.
// Checked (exit 1 otherwise): every request of the burst gets 200 or 429, every
// 429 carries Retry-After and an OpenAI error body, no process dies, and once
// idle the KV cache is empty and descriptors are back to the baseline. RSS of
// router and worker: baseline (after a 1x warm-up), peak, and after.
//   node bench/serving/overload.mjs --router BIN --worker BIN --fake-worker BIN --model DIR
//     [--factor 10] [--max-num-seqs 16] [--max-num-queued-requests 32] [--max-tokens 32] [--step-ms 10]
import { parseArgs, startProc, killAll } from "../../tests/e2e/procs.mjs";
import { rssMiB, fds, waitIdle, percentile } from "./procstat.mjs";

const args = parseArgs(process.argv.slice(2));
const factor = Number(args.factor ?? 10), seqs = Number(args["max-num-seqs"] ?? 16);
const queued = Number(args["max-num-queued-requests"] ?? 32), maxTokens = Number(args["max-tokens"] ?? 32);
const capacity = seqs + queued;
let problems = 0;
const problem = (m) => { problems++; console.log(`PROBLEM: ${m}`); };

async function request(base, i) {
  const t0 = performance.now();
  const res = await fetch(base + "/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: `Request ${i}: tell me a story.` }], max_tokens: maxTokens,
      temperature: 0 }) });
  const text = await res.text();
  const ms = performance.now() - t0;
  if (res.status === 429) {
    let body;
    try { body = JSON.parse(text); } catch { body = null; }
    if (!res.headers.get("retry-after") || typeof body?.error?.message !== "string") problem(`429 without Retry-After or error body: ${text.slice(0, 200)}`);
  } else if (res.status !== 200) {
    problem(`status ${res.status}: ${text.slice(0, 200)}`);
  }
  return { status: res.status, ms };
}

async function wave(base, n) {
  const out = await Promise.all(Array.from({ length: n }, (_, i) => request(base, i).catch(e => ({ status: -1, ms: 0, e }))));
  for (const r of out) if (r.status === -1) problem(`connection error: ${r.e?.cause?.code ?? r.e}`);
  return out;
}

async function scenario(name, workerBin, workerFlags) {
  const worker = await startProc(workerBin, workerFlags);
  const router = await startProc(args.router, ["--worker", worker.addr, "--model", args.model, "--port", "0",
    "--max-num-seqs", String(seqs), "--max-num-queued-requests", String(queued), "--http-idle-timeout", "2"]);
  const base = `http://${router.addr}`;
  const pids = { router: router.proc.pid, worker: worker.proc.pid };
  // Warm-up and the 1x reference: exactly what the server admits.
  await wave(base, capacity);
  await waitIdle(base);
  const ref = await wave(base, capacity);
  await waitIdle(base);
  await new Promise(r => setTimeout(r, 4000));
  const before = { rr: rssMiB(pids.router), wr: rssMiB(pids.worker), rf: fds(pids.router), wf: fds(pids.worker) };
  let peak = { r: before.rr, w: before.wr };
  const sampler = setInterval(() => {
    peak = { r: Math.max(peak.r, rssMiB(pids.router)), w: Math.max(peak.w, rssMiB(pids.worker)) };
  }, 50);
  const t0 = performance.now();
  const burst = await wave(base, factor * capacity);
  const burstMs = performance.now() - t0;
  clearInterval(sampler);
  const idle = await waitIdle(base);
  // The client keeps its connections (one per request of the burst) alive; the router's 2 s idle timeout closes them.
  await new Promise(r => setTimeout(r, 4000));
  const after = { rr: rssMiB(pids.router), wr: rssMiB(pids.worker), rf: fds(pids.router), wf: fds(pids.worker) };
  for (const [k, p] of Object.entries({ router: router.proc, worker: worker.proc })) {
    if (p.exitCode !== null || p.signalCode !== null) problem(`${name}: the ${k} died`);
  }
  if (idle.kv !== 0 || idle.running !== 0 || idle.waiting !== 0) problem(`${name}: not idle after the burst: ${JSON.stringify(idle)}`);
  if (after.rf > before.rf + 2 || after.wf > before.wf + 2) problem(`${name}: descriptors ${before.rf}/${before.wf} -> ${after.rf}/${after.wf}`);
  const ok = burst.filter(r => r.status === 200), refused = burst.filter(r => r.status === 429);
  const refMs = ref.map(r => r.ms), okMs = ok.map(r => r.ms);
  const row = {
    scenario: name, capacity, burst: burst.length, admitted: ok.length, refused_429: refused.length,
    other: burst.length - ok.length - refused.length, burst_s: +(burstMs / 1000).toFixed(2),
    ref_p50_ms: +percentile(refMs, 50).toFixed(0), ref_p99_ms: +percentile(refMs, 99).toFixed(0),
    admitted_p50_ms: +percentile(okMs, 50).toFixed(0), admitted_p99_ms: +percentile(okMs, 99).toFixed(0),
    p99_ratio: +(percentile(okMs, 99) / percentile(refMs, 99)).toFixed(2),
    refused_p99_ms: +percentile(refused.map(r => r.ms), 99).toFixed(0),
    router_rss_mib: `${before.rr.toFixed(1)} / ${peak.r.toFixed(1)} / ${after.rr.toFixed(1)}`,
    worker_rss_mib: `${before.wr.toFixed(1)} / ${peak.w.toFixed(1)} / ${after.wr.toFixed(1)}`,
    fds_router: `${before.rf} -> ${after.rf}`, fds_worker: `${before.wf} -> ${after.wf}`,
  };
  router.proc.kill("SIGTERM");
  worker.proc.kill("SIGTERM");
  return row;
}

const rows = [];
const stepMs = String(args["step-ms"] ?? 10);
rows.push(await scenario(`fake worker, ${stepMs} ms steps`, args["fake-worker"], ["--port", "0", "--step-ms", stepMs]));
rows.push(await scenario("demo model, CPU worker", args.worker, ["--model", args.model, "--port", "0",
  "--kv-cache-memory", "256MiB", "--max-model-len", "4096"]));
console.table(rows);
console.log("RSS columns: baseline (after the 1x warm-up) / peak during the burst / 4 s after it went idle");
console.log(JSON.stringify(rows));
killAll();
process.exit(problems ? 1 : 0);
