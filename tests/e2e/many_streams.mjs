// Thousands of concurrent SSE streams through moeserve-router, with more
// streams than the router may open file descriptors (ulimit -n 256): the
// gateway keeps accepting as descriptors free up, and every stream gets
// exactly its own tokens. The worker is moeserve-fake-worker, which answers
// each step at once with a token fixed by the position: " the", " of",
// " and", ".", " a" for positions 0, 1, 2, 3, 4 (mod 5). Prompts of different
// lengths shift that cycle, so a token delivered to the wrong stream shows.
//   node many_streams.mjs --fake-worker BIN --router BIN --model DIR [--streams 2000]
import { parseArgs, start, killAll } from "./procs.mjs";
import http from "node:http";
import assert from "node:assert/strict";

const args = parseArgs(process.argv.slice(2));
const streams = Number(args.streams ?? 2000), maxTokens = 50;
const worker = await start(args["fake-worker"], []);
const router = await start("bash", ["-c", `ulimit -n 256 && exec "$0" "$@"`, args.router, "--worker", worker,
  "--model", args.model, "--port", "0", "--max-num-seqs", String(streams), "--max-num-batched-tokens", "100000",
  "--max-num-queued-requests", String(streams)]);
const cycle = [" the", " of", " and", ".", " a"];
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function one(i) {
  const promptLen = 1 + (i % 7);
  const body = JSON.stringify({ prompt: Array(promptLen).fill(13), max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true } });
  return new Promise((resolve, reject) => {
    const req = http.request(`http://${router}/v1/completions`, { method: "POST", agent,
      headers: { "content-type": "application/json" } }, res => {
      let buf = "", text = "", usage = null, finish = null, done = false;
      res.setEncoding("utf8");
      res.on("data", d => {
        buf += d;
        let k;
        while ((k = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, k);
          buf = buf.slice(k + 2);
          if (ev === "data: [DONE]") { done = true; continue; }
          const j = JSON.parse(ev.slice(6));
          if (j.usage) usage = j.usage;
          if (j.choices[0]) {
            text += j.choices[0].text;
            finish = j.choices[0].finish_reason ?? finish;
          }
        }
      });
      res.on("end", () => resolve({ status: res.statusCode, text, usage, finish, done, promptLen }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

const t0 = Date.now();
const results = await Promise.all(Array.from({ length: streams }, (_, i) => one(i)));
let bad = 0;
for (const r of results) {
  const want = Array.from({ length: maxTokens }, (_, k) => cycle[(r.promptLen + k) % 5]).join("");
  try {
    assert.equal(r.status, 200);
    assert.ok(r.done, "ends with [DONE]");
    assert.equal(r.finish, "length");
    assert.equal(r.usage.completion_tokens, maxTokens);
    assert.equal(r.text, want);
  } catch (e) {
    if (bad++ < 3) console.log(`FAIL - ${e.message}`);
  }
}
const m = await (await fetch(`http://${router}/metrics`)).text();
const running = Number(m.match(/^moeserve_requests_running\{dp_rank="0"\} (\S+)/m)[1]);
console.log(`${streams} streams in ${Date.now() - t0} ms; ${bad} wrong; running after: ${running}`);
killAll();
process.exit(bad === 0 && running === 0 ? 0 : 1);
