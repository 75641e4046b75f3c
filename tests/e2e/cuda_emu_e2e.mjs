// The worker serving from the CUDA backend under the CPU emulation of the
// CUDA execution model (moeserve-worker-cuda-emu --device cuda), next to a CPU
// worker on the same demo model, each behind its own router; the official
// `openai` client drives both. Greedy completions, streamed chat and a batch
// of concurrent requests come back the same from both (a differing token must
// be a near-tie of the CPU's logprobs), and Describe reports the emulated GPU.
// Then the CUDA backend's tensor- and expert-parallel path: groups of two
// emulated-GPU ranks (joined by Gloo: emulated device memory is host memory;
// on GPUs the same calls go to NCCL) give the CPU's greedy text and logprobs,
// also with the experts of the first layers in host memory (--n-cpu-moe).
// A LoRA adapter loaded at run time on both gives the same greedy text.
//   node cuda_emu_e2e.mjs --worker BIN --cuda-emu-worker BIN --router BIN --model DIR --moeserve BIN
import { check, finish, parseArgs, start } from "./procs.mjs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";

const here = dirname(fileURLToPath(import.meta.url));
const { default: OpenAI } = await import(join(here, "../node/node_modules/openai/index.mjs"));
const args = parseArgs(process.argv.slice(2));
const model = args.model.replace(/\/+$/, "").split("/").pop();

const common = ["--model", args.model, "--port", "0", "--max-num-seqs", "8", "--max-model-len", "512",
                "--kv-cache-dtype", "f32"];
const cpuWorker = await start(args.worker, [...common, "--device", "cpu", "--kv-cache-memory", "64MiB", "--threads", "1"]);
const gpuWorker = await start(args["cuda-emu-worker"], [...common, "--device", "cuda", "--gpu-memory-utilization", "0.25"]);
const routerFlags = ["--model", args.model, "--port", "0", "--max-num-batched-tokens", "256"];
const cpuRouter = await start(args.router, ["--worker", cpuWorker, ...routerFlags]);
const gpuRouter = await start(args.router, ["--worker", gpuWorker, ...routerFlags]);
const cpu = new OpenAI({ baseURL: `http://${cpuRouter}/v1`, apiKey: "x", maxRetries: 0, timeout: 600_000 });
const gpu = new OpenAI({ baseURL: `http://${gpuRouter}/v1`, apiKey: "x", maxRetries: 0, timeout: 600_000 });

// Greedy tokens with the CPU's top-2 logprobs at each step.
async function complete(client, prompt, maxTokens, name = model) {
  const r = await client.completions.create({ model: name, prompt, max_tokens: maxTokens, temperature: 0, logprobs: 2,
                                               return_token_ids: true });
  const c = r.choices[0];
  return { ids: c.token_ids, top: c.logprobs.top_logprobs, text: c.text, finish: c.finish_reason };
}

// The same greedy tokens, or a divergence where the CPU's top two are a near-tie.
function assertSameGreedy(want, got, what, tie = 1e-3) {
  for (let i = 0; i < Math.min(want.ids.length, got.ids.length); ++i) {
    if (want.ids[i] === got.ids[i]) continue;
    const lps = Object.values(want.top[i]).sort((a, b) => b - a);
    assert.ok(lps.length >= 2 && lps[0] - lps[1] < tie,
              `${what}: token ${i} differs (${want.ids[i]} vs ${got.ids[i]}) and is not a near-tie: ${JSON.stringify(want.top[i])}`);
    return;  // past a tie the continuations may differ
  }
  assert.equal(got.ids.length, want.ids.length, `${what}: length`);
}

await check("greedy completions: CUDA (emulated) equals the CPU", async () => {
  for (const prompt of ["The capital of France is", "1, 2, 3, 4,"]) {
    const [want, got] = await Promise.all([complete(cpu, prompt, 6), complete(gpu, prompt, 6)]);
    assertSameGreedy(want, got, prompt);
    assert.ok(Object.values(got.top[0])[0] <= 0, "logprobs come back");
  }
});

await check("streamed chat: CUDA (emulated) equals the CPU", async () => {
  const run = async client => {
    const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hi!" }],
      max_tokens: 5, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = "", usage = null, finish = null;
    for await (const c of s) {
      if (c.usage) usage = c.usage;
      const ch = c.choices[0];
      if (!ch) continue;
      text += (ch.delta.reasoning_content ?? "") + (ch.delta.content ?? "");
      finish = ch.finish_reason ?? finish;
    }
    return { text, usage, finish };
  };
  const [want, got] = await Promise.all([run(cpu), run(gpu)]);
  assert.equal(got.usage.prompt_tokens, want.usage.prompt_tokens);
  assert.ok(got.finish, "a finish reason");
  assert.equal(got.usage.completion_tokens, want.usage.completion_tokens);
  assert.equal(got.text, want.text);
});

await check("a batch of concurrent requests (ragged prefill + decode in one step)", async () => {
  const prompts = ["a", "Hello there, how are", "The quick brown fox jumps over", "x y z"];
  const want = await Promise.all(prompts.map(p => complete(cpu, p, 3)));
  const got = await Promise.all(prompts.map(p => complete(gpu, p, 3)));
  prompts.forEach((p, i) => assertSameGreedy(want[i], got[i], p));
});

// fp8 K/V on both backends (the same E4M3 encoding): the same greedy tokens; a K/V value whose f32 inputs
// differ in the last bit may take the neighbouring fp8 code (6 %), so a near-tie is looser than with f32.
await check("a LoRA adapter loaded at run time: CUDA (emulated) equals the CPU", async () => {
  const dir = mkdtempSync(join(tmpdir(), "moeserve-emu-lora-"));
  try {
    execFileSync(args.moeserve, ["gen-lora", "--model", args.model, "--out", dir, "--layout", "fused", "--router",
                                 "--rank", "8", "--seed", "5"]);
    for (const router of [cpuRouter, gpuRouter]) {
      const r = await fetch(`http://${router}/v1/load_lora_adapter`, { method: "POST",
        body: JSON.stringify({ lora_name: "tuned", lora_path: dir }) });
      assert.equal(r.status, 200, await r.text());
    }
    const prompt = "The capital of France is";
    const [base, want, got] = await Promise.all([complete(cpu, prompt, 6), complete(cpu, prompt, 6, "tuned"),
                                                 complete(gpu, prompt, 6, "tuned")]);
    assertSameGreedy(want, got, "tuned");
    assert.notDeepEqual(want.top[0], base.top[0], "the adapter changes nothing");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

await check("--kv-cache-dtype fp8: CUDA (emulated) equals the CPU", async () => {
  const fp8 = [...common.slice(0, -1), "fp8"];
  const cpuFp8 = await start(args.worker, [...fp8, "--device", "cpu", "--kv-cache-memory", "64MiB", "--threads", "1"]);
  const gpuFp8 = await start(args["cuda-emu-worker"], [...fp8, "--device", "cuda", "--gpu-memory-utilization", "0.25"]);
  const a = new OpenAI({ baseURL: `http://${await start(args.router, ["--worker", cpuFp8, ...routerFlags])}/v1`,
                         apiKey: "x", maxRetries: 0, timeout: 600_000 });
  const b = new OpenAI({ baseURL: `http://${await start(args.router, ["--worker", gpuFp8, ...routerFlags])}/v1`,
                         apiKey: "x", maxRetries: 0, timeout: 600_000 });
  for (const p of ["The capital of France is", "Once upon a time"]) {
    assertSameGreedy(await complete(a, p, 8), await complete(b, p, 8), `fp8 ${p}`, 0.05);
  }
});

// The last: what lets gpt-oss-120b run on two 24 GB cards, TP=2 with the experts of two layers on the host.
for (const [name, extra] of [["TP=2", []], ["EP=2", ["--enable-expert-parallel"]],
                             ["TP=2 with --n-cpu-moe 2", ["--n-cpu-moe", "2", "--expert-cache-memory", "0"]]]) {
  await check(`a ${name} group of CUDA (emulated) ranks equals the CPU`, async () => {
    const ranks = [];
    for (let r = 0; r < 2; r++) {
      ranks.push(await start(args["cuda-emu-worker"], [...common, "--device", "cuda", "--gpu-memory-utilization", "0.25",
        "--tensor-parallel-size", "2", "--rank", String(r), ...extra]));
    }
    const group = new OpenAI({ baseURL: `http://${await start(args.router, ["--worker", ranks.join(","),
      "--tensor-parallel-size", "2", ...routerFlags])}/v1`, apiKey: "x", maxRetries: 0, timeout: 600_000 });
    const prompts = ["The capital of France is", "Hello there, how are"];
    const want = await Promise.all(prompts.map(p => complete(cpu, p, 5)));
    const got = await Promise.all(prompts.map(p => complete(group, p, 5)));
    prompts.forEach((p, i) => {
      assertSameGreedy(want[i], got[i], `${name} ${p}`);
      if (want[i].ids.join() !== got[i].ids.join()) return;
      for (let t = 0; t < want[i].top.length; t++) {
        for (const [tok, lp] of Object.entries(want[i].top[t])) {
          assert.ok(Math.abs(got[i].top[t][tok] - lp) < 1e-3, `${name} ${p}: logprob of "${tok}" at ${t}`);
        }
      }
    });
  });
}

finish();
