// The peer of the serving benchmark: llama.cpp (node-llama-cpp) behind a
// minimal OpenAI-compatible /v1/completions endpoint (streaming), with
// --parallel sequences in one context so concurrent requests are batched by
// llama.cpp itself. Greedy when temperature is 0; stops at the model's
// end-of-generation tokens or max_tokens. Like llama-server's cache_prompt
// (its default), a request goes to the free sequence whose context shares the
// longest prefix with its prompt and only the rest is evaluated
// (--cache-prompt 0 clears the sequence every time); the reused tokens are
// reported as usage.prompt_tokens_details.cached_tokens.
//   node llama_server.mjs --gguf FILE [--parallel 8] [--ctx-per-seq 1024] [--threads N] [--port 0] [--cache-prompt 1]
// Prints "listening on HOST:PORT".
import http from "node:http";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import os from "node:os";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(join(here, "../../tests/node/node_modules/node-llama-cpp/dist/index.js"));
// Text <-> ids with tiktoken's o200k_base (the ordinary tokens of o200k_harmony), so both servers see the
// same prompt ids whatever tokenizer metadata the GGUF carries.
const tiktoken = createRequire(join(here, "../../tests/node/node_modules/x.js"))("tiktoken");
const enc = tiktoken.get_encoding("o200k_base");
const args = {};
for (let i = 2; i < process.argv.length; i++) if (process.argv[i].startsWith("--")) args[process.argv[i].slice(2)] = process.argv[i + 1];
const parallel = Number(args.parallel ?? 8), ctxPerSeq = Number(args["ctx-per-seq"] ?? 1024);
const threads = Number(args.threads ?? os.availableParallelism());

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.gguf, gpuLayers: 0 });
const ctx = await model.createContext({ contextSize: parallel * ctxPerSeq, sequences: parallel, threads,
                                        batchSize: Math.min(2048, parallel * ctxPerSeq) });
const free = Array.from({ length: parallel }, () => ctx.getSequence());
const waiters = [];
const cachePrompt = (args["cache-prompt"] ?? "1") !== "0";
const commonPrefix = (a, b) => {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) ++n;
  return n;
};
// The free sequence sharing the longest prefix with the prompt (llama-server's slot similarity).
const acquire = prompt => {
  if (!free.length) return new Promise(r => waiters.push(r));
  let best = free.length - 1;
  if (cachePrompt) {
    let bestLen = -1;
    free.forEach((seq, i) => {
      const n = commonPrefix(seq.contextTokens, prompt);
      if (n > bestLen) (best = i), (bestLen = n);
    });
  }
  return Promise.resolve(free.splice(best, 1)[0]);
};
const release = seq => (waiters.length ? waiters.shift()(seq) : free.push(seq));
const name = "llama.cpp";
let nextId = 1;

const server = http.createServer((req, res) => {
  if (req.url.endsWith("/models")) {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify({ object: "list", data: [{ id: name, object: "model", created: 0, owned_by: "llama.cpp" }] }));
  }
  let body = "";
  req.on("data", d => (body += d));
  req.on("end", async () => {
    const j = JSON.parse(body);
    const maxTokens = j.max_tokens ?? 16;
    const id = `cmpl-${nextId++}`, created = Math.floor(Date.now() / 1000);
    const prompt = Array.isArray(j.prompt) ? j.prompt : Array.from(enc.encode_ordinary(String(j.prompt)));
    const utf8 = new TextDecoder("utf-8");
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "close" });
    const chunk = (text, finish) => `data: ${JSON.stringify({ id, object: "text_completion", created, model: name,
      choices: [{ index: 0, text, logprobs: null, finish_reason: finish }] })}\n\n`;
    const seq = await acquire(prompt);
    let n = 0, finish = "length", closed = false, keep = 0;
    res.on("close", () => (closed = true));
    try {
      // Keep the shared prefix (at least one prompt token is evaluated, to sample from).
      keep = cachePrompt ? Math.min(commonPrefix(seq.contextTokens, prompt), prompt.length - 1) : 0;
      if (keep === 0) await seq.clearHistory();
      else if (keep < seq.nextTokenIndex) await seq.eraseContextTokenRanges([{ start: keep, end: seq.nextTokenIndex }]);
      for await (const t of seq.evaluate(prompt.slice(keep), { temperature: j.temperature ?? 0 })) {
        if (model.isEogToken(t)) { finish = "stop"; break; }
        n++;
        res.write(chunk(t < 200000 ? utf8.decode(enc.decode(new Uint32Array([t])), { stream: true }) : "", null));
        if (n >= maxTokens || closed) break;
      }
    } finally {
      release(seq);
    }
    res.write(chunk("", finish));
    res.write(`data: ${JSON.stringify({ id, object: "text_completion", created, model: name, choices: [],
      usage: { prompt_tokens: prompt.length, completion_tokens: n, total_tokens: prompt.length + n,
               prompt_tokens_details: { cached_tokens: keep } } })}\n\n`);
    res.end("data: [DONE]\n\n");
  });
});
server.listen(Number(args.port ?? 0), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${server.address().port}`));
