// Deployment files (docker/, deploy/) checked against the code, since no
// container engine runs in CI:
//  - every metric a Grafana panel queries is documented in docs/metrics.md and
//    is exported by a live router or worker (real processes, a request to the
//    model and one to a LoRA adapter);
//  - the YAML files parse, and compose services, ports, Prometheus targets,
//    the router's --worker lists and the Kubernetes replica count agree;
//  - the Dockerfile builds targets that exist and its flags are real flags.
//   node deploy_check.mjs --worker BIN --router BIN --model DIR --root DIR --moeserve BIN
import { check, finish, killAll, parseArgs, start } from "./procs.mjs";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import assert from "node:assert/strict";

const args = parseArgs(process.argv.slice(2));
const root = args.root;
const read = p => readFileSync(join(root, p), "utf8");
// YAML -> JSON through Python's yaml module (python3-yaml, installed by setup).
function yaml(path) {
  const out = execFileSync("python3", ["-c",
    "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))", join(root, path)]);
  return JSON.parse(out);
}

const dashboard = JSON.parse(read("deploy/grafana/dashboards/moeserve.json"));
const exprs = dashboard.panels.flatMap(p => (p.targets ?? []).map(t => t.expr));
const metricsUsed = [...new Set(exprs.flatMap(e => e.match(/moeserve_[a-z0-9_]+/g) ?? []))]
  .map(m => m.replace(/_(bucket|sum|count)$/, ""));
const documented = read("docs/metrics.md");

await check("every dashboard metric is documented", async () => {
  assert.ok(metricsUsed.length >= 15, `${metricsUsed.length} metrics used`);
  for (const m of metricsUsed) assert.ok(documented.includes("`" + m + "`"), `${m} is not in docs/metrics.md`);
});

await check("every dashboard metric is exported by a live router or worker", async () => {
  const metricsPort = 20000 + Math.floor(Math.random() * 20000);
  const worker = await start(args.worker, ["--model", args.model, "--port", "0", "--metrics-port", String(metricsPort),
    "--kv-cache-memory", "32MiB"]);
  // A LoRA adapter, so that its per-adapter series exist.
  const lora = mkdtempSync(join(tmpdir(), "moeserve-deploy-lora-"));
  process.on("exit", () => rmSync(lora, { recursive: true, force: true }));
  execFileSync(args.moeserve, ["gen-lora", "--model", args.model, "--out", lora]);
  const router = await start(args.router, ["--worker", worker, "--model", args.model, "--port", "0",
    "--lora-modules", `tuned=${lora}`]);
  for (const model of [undefined, "tuned"]) {
    const r = await fetch(`http://${router}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt: "Hello", max_tokens: 3 }) });
    assert.equal(r.status, 200);
  }
  const live = (await (await fetch(`http://${router}/metrics`)).text()) +
    (await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
  for (const m of metricsUsed) assert.match(live, new RegExp(`^${m}(_bucket|_count)?[{ ]`, "m"), `${m} is not exported`);
  // And every documented name is exported (the documentation is not ahead of the code).
  for (const [, m] of documented.matchAll(/^\| `(moeserve_[a-z0-9_]+)`/gm)) {
    assert.match(live, new RegExp(`^${m}(_bucket|_count)?[{ ]`, "m"), `documented ${m} is not exported`);
  }
  killAll();
});

await check("compose, Prometheus and Grafana provisioning agree", async () => {
  const [compose] = yaml("docker/docker-compose.yml");
  const [prom] = yaml("deploy/prometheus/prometheus.yml");
  yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
  const [prov] = yaml("deploy/grafana/provisioning/dashboards/moeserve.yml");
  const services = compose.services;
  for (const s of ["router", "worker-0", "worker-1", "prometheus", "grafana"]) assert.ok(services[s], `service ${s}`);
  const dockerfile = read("docker/Dockerfile");
  const workerEntry = dockerfile.match(/FROM runtime AS worker[\s\S]*?ENTRYPOINT (\[.*\])/)[1];
  const routerEntry = dockerfile.match(/FROM runtime AS router[\s\S]*?ENTRYPOINT (\[.*\])/)[1];
  const flag = (entry, f) => JSON.parse(entry)[JSON.parse(entry).indexOf(f) + 1];
  const workerPort = flag(workerEntry, "--port"), workerMetrics = flag(workerEntry, "--metrics-port");
  const routerPort = flag(routerEntry, "--port");
  const targets = prom.scrape_configs.flatMap(c => c.static_configs.flatMap(s => s.targets));
  assert.ok(targets.includes(`router:${routerPort}`), "Prometheus scrapes the router's port");
  for (const w of ["worker-0", "worker-1"]) assert.ok(targets.includes(`${w}:${workerMetrics}`), `Prometheus scrapes ${w}`);
  const routerCmd = services.router.command.join(" ");
  const workers = routerCmd.match(/--worker \$\{MOESERVE_WORKERS:-([^}]+)\}/)[1].split(",");
  for (const w of workers) {
    const [host, port] = w.split(":");
    assert.ok(services[host], `router default --worker ${w} is a service`);
    assert.equal(port, workerPort, "the worker port");
  }
  assert.ok(services.router.ports.some(p => p.startsWith(`${routerPort}:`)), "router port published");
  assert.equal(prov.providers[0].options.path, "/var/lib/grafana/dashboards");
  assert.ok(services.grafana.volumes.some(v => v.startsWith("../deploy/grafana/dashboards:/var/lib/grafana/dashboards")));
});

await check("Kubernetes manifests: the router lists every worker replica", async () => {
  const docs = yaml("deploy/k8s/moeserve.yaml");
  const sts = docs.find(d => d.kind === "StatefulSet");
  const router = docs.find(d => d.kind === "Deployment");
  const rargs = router.spec.template.spec.containers[0].args;
  const list = rargs[rargs.indexOf("--worker") + 1].split(",");
  assert.equal(list.length, sts.spec.replicas);
  list.forEach((w, i) => assert.equal(w, `${sts.metadata.name}-${i}.${sts.spec.serviceName}:9000`));
  const svc = docs.find(d => d.kind === "Service" && d.metadata.name === sts.spec.serviceName);
  assert.equal(svc.spec.clusterIP, "None");
});

await check("alert rules: Prometheus, compose and the Kubernetes manifests load deploy/prometheus/alerts.yml", async () => {
  const [prom] = yaml("deploy/prometheus/prometheus.yml");
  assert.deepEqual(prom.rule_files, ["alerts.yml"]);
  const [compose] = yaml("docker/docker-compose.yml");
  assert.ok(compose.services.prometheus.volumes.includes("../deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"),
            "compose mounts the rules beside prometheus.yml");
  const [rules] = yaml("deploy/prometheus/alerts.yml");
  const cm = yaml("deploy/k8s/moeserve.yaml").find(d => d.kind === "ConfigMap" && d.metadata.name === "moeserve-prometheus-rules");
  assert.ok(cm, "the Kubernetes manifests carry the rules");
  const embedded = JSON.parse(execFileSync("python3", ["-c",
    "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"], { input: cm.data["alerts.yml"] }));
  assert.deepEqual(embedded, rules, "the ConfigMap's rules are deploy/prometheus/alerts.yml's");
});

await check("dashboard: what Grafana provisioning expects", async () => {
  const [ds] = yaml("deploy/grafana/provisioning/datasources/prometheus.yml").map(d => d.datasources[0]);
  assert.equal(typeof dashboard.uid, "string");
  assert.ok(Number.isInteger(dashboard.schemaVersion) && dashboard.schemaVersion >= 36, "schemaVersion");
  // A data source variable (any Prometheus works), defaulting to the provisioned one.
  const v = dashboard.templating.list.find(t => t.name === "datasource");
  assert.ok(v && v.type === "datasource" && v.query === "prometheus", "a Prometheus data source variable");
  assert.equal(v.current.value, ds.uid, "it defaults to the provisioned data source");
  const ids = dashboard.panels.map(p => p.id);
  assert.equal(new Set(ids).size, ids.length, "unique panel ids");
  for (const p of dashboard.panels) {
    assert.ok(p.title, `panel ${p.id} has a title`);
    if (p.type === "row") continue;
    assert.ok(p.description, `panel "${p.title}" has a description`);
    assert.ok(p.targets?.length, `panel "${p.title}" has queries`);
    for (const t of [p, ...p.targets]) assert.equal(t.datasource?.uid, "${datasource}", `panel "${p.title}": the data source variable`);
    for (const t of p.targets) assert.ok(t.refId && t.expr, `panel "${p.title}": refId and expr`);
  }
});

await check("Dockerfile: targets exist, flags are real, the tokenizer checksum is the setup's", async () => {
  const dockerfile = read("docker/Dockerfile");
  const cmake = ["tools/CMakeLists.txt", "router/CMakeLists.txt", "worker/CMakeLists.txt"].map(read).join("\n");
  for (const t of dockerfile.match(/cmake --build \S+ -j\S+ --target ([\w\- ]+)/)[1].trim().split(/\s+/)) {
    assert.match(cmake, new RegExp(`add_(executable|custom_target)\\(${t}\\b`), `target ${t}`);
  }
  const help = {
    worker: execFileSync(args.worker, ["--help"]).toString(),
    router: execFileSync(args.router, ["--help"]).toString(),
  };
  const flagsOf = s => [...s.matchAll(/"(--[a-z-]+)"/g)].map(m => m[1]);
  const [compose] = yaml("docker/docker-compose.yml");
  const workerFlags = [...flagsOf(dockerfile.match(/FROM runtime AS worker[\s\S]*?(?=FROM|$)/)[0]),
    ...compose.services["worker-0"].command.filter(a => a.startsWith("--"))];
  const routerFlags = [...flagsOf(dockerfile.match(/FROM runtime AS router[\s\S]*$/)[0]),
    ...compose.services.router.command.filter(a => a.startsWith("--"))];
  for (const f of workerFlags) assert.ok(help.worker.includes(f), `moeserve-worker has ${f}`);
  for (const f of routerFlags) assert.ok(help.router.includes(f), `moeserve-router has ${f}`);
  assert.match(read("scripts/setup.sh"), /^TOKENIZER_SHA256=[0-9a-f]{64}$/m);
  assert.match(read("CMakeLists.txt"), /MOESERVE_TOKENIZER_JSON[\s\S]*?CACHE FILEPATH/, "-DMOESERVE_TOKENIZER_JSON works");
});

finish();
