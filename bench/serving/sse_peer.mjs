// The peer of the router-overhead benchmark: a bare Node.js HTTP server that
// streams OpenAI /v1/completions chunks of the same shape as moeserve's, one
// token per event-loop turn for every open stream, with no model, scheduler or
// tokenizer behind it: what a plain streaming server does on this machine.
//   node sse_peer.mjs [--port 0]     prints "listening on HOST:PORT"
import http from "node:http";

const portArg = process.argv.indexOf("--port");
const words = [" the", " of", " and", ".", " a"];
let nextId = 1;
const server = http.createServer((req, res) => {
  if (req.url.endsWith("/models")) {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify({ object: "list", data: [{ id: "peer", object: "model", created: 0, owned_by: "peer" }] }));
  }
  let body = "";
  req.on("data", d => (body += d));
  req.on("end", () => {
    const j = JSON.parse(body);
    const n = j.max_tokens ?? 16;
    const id = `cmpl-${nextId++}`, created = Math.floor(Date.now() / 1000), model = j.model ?? "peer";
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "close" });
    const chunk = (text, finish) => `data: ${JSON.stringify({ id, object: "text_completion", created, model,
      choices: [{ index: 0, text, logprobs: null, finish_reason: finish }] })}\n\n`;
    let k = 0;
    const step = () => {
      if (res.destroyed) return;
      if (k < n) {
        res.write(chunk(words[k % 5], null));
        k++;
        return setImmediate(step);
      }
      res.write(chunk("", "length"));
      res.write(`data: ${JSON.stringify({ id, object: "text_completion", created, model, choices: [],
        usage: { prompt_tokens: 0, completion_tokens: n, total_tokens: n } })}\n\n`);
      res.end("data: [DONE]\n\n");
    };
    step();
  });
});
server.listen(portArg > 0 ? Number(process.argv[portArg + 1]) : 0, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
