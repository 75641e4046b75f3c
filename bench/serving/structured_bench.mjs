// Structured output under load: what constraining half the requests to a JSON
// schema costs in serving throughput, for moeserve (router + CPU worker,
// response_format json_schema over chat completions) and for llama.cpp
// (node-llama-cpp in this process, its JSON-schema grammar, the same number of
// sequences in one context), on the same weights and schemas, one after the
// other. Each runs the load twice — every request free, then every other one
// constrained — and reports output tokens/s of both and their ratio.
//
// The demo model has random weights: its text is noise, which makes the
// constrained replies take random paths through the grammars. Requests sample
// at temperature 1 with a per-request seed and stop at --max-tokens or the
// end of the reply; moeserve's requests carry a logit bias on <|end|> so the
// free reasoning ends early (llama.cpp's raw completions have no reasoning).
//   node bench/serving/structured_bench.mjs --model DIR --gguf FILE --worker BIN --router BIN
//        [--requests 32] [--concurrency 8] [--max-tokens 256] [--threads N]
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import os from "node:os";
import { createRequire } from "node:module";
import { start, startProc, killAll } from "../../tests/e2e/procs.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const nm = join(here, "../../tests/node/node_modules");
const args = {};
for (let i = 2; i < process.argv.length; i++) if (process.argv[i].startsWith("--")) args[process.argv[i].slice(2)] = process.argv[i + 1];
const requests = Number(args.requests ?? 32), concurrency = Number(args.concurrency ?? 8);
const maxTokens = Number(args["max-tokens"] ?? 256), threads = Number(args.threads ?? os.availableParallelism());

// Schemas both engines take (node-llama-cpp's GBNF JSON schema subset).
const schemas = [
  { type: "object", properties: { name: { type: "string" }, age: { type: "integer" },
    tags: { type: "array", items: { enum: ["a", "b", "c"] } } }, required: ["name", "age", "tags"] },
  { type: "object", properties: { items: { type: "array", items: { type: "object",
    properties: { sku: { type: "string" }, qty: { type: "integer" } }, required: ["sku", "qty"] } },
    paid: { type: "boolean" } }, required: ["items", "paid"] },
  { type: "object", properties: { ok: { type: "boolean" }, level: { enum: [1, 2, 3] }, note: { type: "string" } },
    required: ["ok", "level", "note"] },
];
const prompt = "Describe a customer order as JSON.";

async function pool(n, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, n) }, async () => {
    while (next < n) await fn(next++);
  });
  await Promise.all(workers);
}

async function moeserve() {
  const { default: OpenAI } = await import(join(nm, "openai/index.mjs"));
  const worker = await start(args.worker, ["--model", args.model, "--port", "0", "--threads", String(threads),
    "--kv-cache-memory", "2GiB", "--max-num-seqs", String(concurrency)]);
  const router = await startProc(args.router, ["--worker", worker, "--model", args.model, "--port", "0",
    "--max-num-seqs", String(concurrency)]);
  const client = new OpenAI({ baseURL: `http://${router.addr}/v1`, apiKey: "x", maxRetries: 0 });
  const model = args.model.replace(/\/+$/, "").split("/").pop();
  const run = async constrained => {
    let tokens = 0, valid = 0, finished = 0;
    const t0 = performance.now();
    await pool(requests, async i => {
      const req = { model, messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, temperature: 1, seed: i + 1,
        logit_bias: { 200007: 30 }, reasoning_effort: "low" };
      const c = constrained && i % 2 === 1;
      if (c) req.response_format = { type: "json_schema", json_schema: { name: "s", schema: schemas[i % schemas.length] } };
      const r = await client.chat.completions.create(req);
      tokens += r.usage.completion_tokens;
      if (c && r.choices[0].finish_reason === "stop") {
        finished++;
        try { JSON.parse(r.choices[0].message.content); valid++; } catch {}
      }
    });
    return { seconds: (performance.now() - t0) / 1000, tokens, finished, valid };
  };
  await run(false);  // warm-up: compiles nothing, touches the weights
  await run(true);   // warm-up: compiles the grammars (cached afterwards, as in a server that has seen the schemas)
  const free = await run(false), half = await run(true);
  killAll();
  return { free, half };
}

async function llamaCpp() {
  const { getLlama, LlamaLogLevel, LlamaGrammarEvaluationState } = await import(join(nm, "node-llama-cpp/dist/index.js"));
  const tiktoken = createRequire(join(nm, "x.js"))("tiktoken");
  const enc = tiktoken.get_encoding("o200k_base");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: args.gguf, gpuLayers: 0 });
  const ctx = await model.createContext({ contextSize: concurrency * (maxTokens + 64), sequences: concurrency, threads });
  const free = Array.from({ length: concurrency }, () => ctx.getSequence());
  const grammars = await Promise.all(schemas.map(s => llama.createGrammarForJsonSchema(s)));
  const ids = Array.from(enc.encode_ordinary(prompt));
  const run = async constrained => {
    let tokens = 0, valid = 0, finished = 0;
    const t0 = performance.now();
    await pool(requests, async i => {
      const seq = free.pop();
      try {
        await seq.clearHistory();
        const c = constrained && i % 2 === 1;
        const grammarEvaluationState = c ? new LlamaGrammarEvaluationState({ model, grammar: grammars[i % schemas.length] }) : undefined;
        const out = [];
        let stopped = false;
        for await (const t of seq.evaluate(ids, { temperature: 1, seed: i + 1, grammarEvaluationState })) {
          if (model.isEogToken(t)) { stopped = true; break; }
          out.push(t);
          if (out.length >= maxTokens) break;
        }
        tokens += out.length;
        if (c && stopped) {
          finished++;
          try { JSON.parse(new TextDecoder().decode(enc.decode(new Uint32Array(out.filter(t => t < 200000))))); valid++; } catch {}
        }
      } finally {
        free.push(seq);
      }
    });
    return { seconds: (performance.now() - t0) / 1000, tokens, finished, valid };
  };
  await run(false);
  const r = { free: await run(false), half: await run(true) };
  await ctx.dispose();
  return r;
}

const fmt = x => `${(x.tokens / x.seconds).toFixed(1)} tok/s (${x.tokens} tokens in ${x.seconds.toFixed(1)} s; ` +
  `${x.finished} constrained replies finished, ${x.valid} parsed)`;
const m = await moeserve();
console.log(`moeserve   all free:         ${fmt(m.free)}`);
console.log(`moeserve   half constrained: ${fmt(m.half)}`);
const l = await llamaCpp();
console.log(`llama.cpp  all free:         ${fmt(l.free)}`);
console.log(`llama.cpp  half constrained: ${fmt(l.half)}`);
const tps = x => x.tokens / x.seconds;
console.log(JSON.stringify({ requests, concurrency, max_tokens: maxTokens, threads,
  moeserve: { free_tok_s: tps(m.free), half_tok_s: tps(m.half), kept: tps(m.half) / tps(m.free) },
  llama_cpp: { free_tok_s: tps(l.free), half_tok_s: tps(l.half), kept: tps(l.half) / tps(l.free) },
  half_constrained_moeserve_over_llama_cpp: tps(m.half) / tps(l.half) }));
process.exit(0);
