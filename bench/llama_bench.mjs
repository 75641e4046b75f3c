// llama.cpp (npm node-llama-cpp) as the speed peer: the same measurements as
// moeserve_bench on a GGUF of the same weights, printed as the same JSON lines.
//
//   node bench/llama_bench.mjs --gguf F [--pp 512] [--tg 128] [--batches 1,8,64]
//        [--sweep-steps 8] [--reps 2] [--threads 2] [--lora F (a GGUF LoRA, applied to every sequence)]
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(join(here, "../tests/node/node_modules/node-llama-cpp/dist/index.js"));
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const pp = Number(args.pp ?? 512), tg = Number(args.tg ?? 128), reps = Number(args.reps ?? 2);
const threads = Number(args.threads ?? 2), steps = Number(args["sweep-steps"] ?? 8);
const batches = (args.batches ?? "1,2,4,8,16,32,64").split(",").map(Number).filter(b => b > 0);
const out = o => console.log(JSON.stringify(o));
const lora = args.lora ? { lora: { adapters: [{ filePath: args.lora, scale: 1 }] } } : {};
const now = () => performance.now() / 1000;

const t0 = now();
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.gguf, gpuLayers: 0 });
out({ what: "load", seconds: +(now() - t0).toFixed(2), threads, llama_cpp: "node-llama-cpp (llama.cpp v0.5.0)" });
const prompt = Array.from({ length: pp }, (_, i) => (i * 7919 + 13) % 100000);

{
  const ctx = await model.createContext({ contextSize: Math.max(pp, tg) + 64, batchSize: Math.min(pp, 512), threads,
                                          sequences: 1, ...lora });
  const seq = ctx.getSequence();
  await seq.evaluateWithoutGeneratingNewTokens([1]);  // warm-up
  await seq.clearHistory();
  for (let r = 0; r < reps; r++) {
    const a = now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    out({ what: `pp${pp}`, rep: r, tokens_per_s: +(pp / (now() - a)).toFixed(2) });
    await seq.clearHistory();
  }
  for (let r = 0; r < reps; r++) {
    let n = 0;
    const a = now();
    for await (const t of seq.evaluate([1], { temperature: 0 })) {
      if (++n >= tg) break;
    }
    out({ what: `tg${tg}`, rep: r, tokens_per_s: +(tg / (now() - a)).toFixed(2) });
    await seq.clearHistory();
  }
  await ctx.dispose();
}
for (const b of batches) {
  const ctx = await model.createContext({ contextSize: b * (steps + 16), batchSize: Math.max(b, 32), threads, sequences: b,
                                          ...lora });
  const seqs = Array.from({ length: b }, () => ctx.getSequence());
  let best = 0;
  for (let r = 0; r < reps; r++) {
    const a = now();
    for (let s = 0; s < steps; s++) {
      await Promise.all(seqs.map((q, i) => q.controlledEvaluate([[1 + i, { generateNext: { token: true } }]])));
    }
    best = Math.max(best, b * steps / (now() - a));
    for (const q of seqs) await q.clearHistory();
  }
  out({ what: "decode_batch", batch: b, tokens_per_s: +best.toFixed(2) });
  await ctx.dispose();
}
out({ what: "memory", peak_rss_bytes: process.resourceUsage().maxRSS * 1024 });
await model.dispose();
