// The two routers the API tests run against: one in front of a demo-model
// worker (random weights, real tokenizer: replies are noise, but the same
// request over two APIs gives the same tokens), and one in front of the fake
// worker replaying a scripted harmony reply — reasoning, then a call to
// get_weather — whose ordinary tokens come from tiktoken's o200k_base and
// whose specials are the spec's ids.
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { start, startProc } from "./procs.mjs";

const here = dirname(fileURLToPath(import.meta.url));
export const nodeModules = join(here, "../node/node_modules");

export const kReasoning = "Need the weather.";

// The scripted reply's token ids, with `args` (JSON text) as the call's arguments.
export async function toolCallScript(args) {
  const tiktoken = (await import(join(nodeModules, "tiktoken/tiktoken.cjs"))).default;
  const enc = tiktoken.get_encoding("o200k_base");
  const T = s => Array.from(enc.encode(s));
  const [CHANNEL, MESSAGE, END, START, CONSTRAIN, CALL] = [200005, 200008, 200007, 200006, 200003, 200012];
  return [CHANNEL, ...T("analysis"), MESSAGE, ...T(kReasoning), END, START, ...T("assistant"),
    CHANNEL, ...T("commentary to=functions.get_weather "), CONSTRAIN, ...T("json"), MESSAGE, ...T(args), CALL];
}

// Starts both routers (extra flags for each); resolves with their startProc results.
export async function startRouters(args, { demoFlags = [], scriptedFlags = [], callArgs }) {
  const worker = await start(args.worker, ["--model", args.model, "--port", "0", "--kv-cache-memory", "64MiB",
    "--max-num-seqs", "16", "--max-model-len", "2048", "--kv-cache-dtype", "f32"]);
  const demo = await startProc(args.router, ["--worker", worker, "--model", args.model, "--port", "0",
    "--no-enable-prefix-caching", ...demoFlags]);
  const fake = await start(args["fake-worker"], ["--port", "0", "--script", (await toolCallScript(callArgs)).join(",")]);
  const scripted = await startProc(args.router, ["--worker", fake, "--model", args.model, "--port", "0",
    "--no-enable-prefix-caching", ...scriptedFlags]);
  return { demo, scripted };
}
