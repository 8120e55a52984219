// Drives vendbox with the stock `e2b` JavaScript SDK (pinned in e2b/package.json), unchanged:
// only the environment points it here (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY = a vendbox
// API key). The same steps as e2b_sdk.py, with the SDK's streaming directory watch.
//
// Usage: node e2b_sdk.mjs VENDBOX_URL
// Prints one JSON object of what each step saw, for crates/vendbox/tests/e2b.rs to check.

import { createRequire } from "node:module";

const require = createRequire(new URL("./e2b/", import.meta.url));
const { Sandbox, CommandExitError } = require("e2b");

const vendbox = process.argv[2].replace(/\/$/, "");
const seen = {};
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const text = (data) => new TextDecoder().decode(data);

let started = Date.now();
const sbx = await Sandbox.create("base", { timeoutMs: 300_000, metadata: { job: "e2b-test" }, envs: { GREETING: "hello" } });
seen.create_seconds = (Date.now() - started) / 1000;
seen.sandbox_id = sbx.sandboxId;
seen.listed = (await Sandbox.list().nextItems()).map((s) => s.sandboxId);
seen.metadata = (await sbx.getInfo()).metadata;

const out = [], err = [];
const result = await sbx.commands.run("echo $GREETING; echo oops >&2; exit 0", {
  onStdout: (d) => out.push(d), onStderr: (d) => err.push(d),
});
seen.run = { stdout: result.stdout, stderr: result.stderr, exit_code: result.exitCode,
  callback_stdout: out.join(""), callback_stderr: err.join("") };
try {
  await sbx.commands.run("exit 3");
  seen.exit_3 = null;
} catch (e) {
  seen.exit_3 = e instanceof CommandExitError ? e.exitCode : String(e);
}

let handle = await sbx.commands.run("sleep 1; echo done", { background: true });
seen.background = (await handle.wait()).stdout;

handle = await sbx.commands.run("cat", { background: true, stdin: true });
await sbx.commands.sendStdin(handle.pid, "to stdin\n");
await sbx.commands.closeStdin(handle.pid);
seen.stdin = (await handle.wait()).stdout;

handle = await sbx.commands.run("sleep 120", { background: true });
seen.listed_pids = (await sbx.commands.list()).map((p) => p.pid);
seen.kill_pid_listed = seen.listed_pids.includes(handle.pid);
seen.killed = await sbx.commands.kill(handle.pid);
try {
  await handle.wait();
  seen.killed_exit = "no error";
} catch (e) {
  seen.killed_exit = e instanceof CommandExitError ? e.exitCode : String(e);
}

started = Date.now();
const long = await sbx.commands.run("sleep 30; echo slept", { timeoutMs: 90_000 });
seen.long = { stdout: long.stdout, seconds: (Date.now() - started) / 1000 };

seen.write = (await sbx.files.write("/tmp/e2b/a.txt", "hello file")).path;
seen.read = await sbx.files.read("/tmp/e2b/a.txt");
seen.made_dir = await sbx.files.makeDir("/tmp/e2b/sub");
seen.made_dir_again = await sbx.files.makeDir("/tmp/e2b/sub");
seen.list = (await sbx.files.list("/tmp/e2b")).map((e) => e.name).sort();
seen.renamed = (await sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/b.txt")).path;
seen.exists_after_rename = [await sbx.files.exists("/tmp/e2b/a.txt"), await sbx.files.exists("/tmp/e2b/b.txt")];
await sbx.files.remove("/tmp/e2b/b.txt");
seen.exists_after_remove = await sbx.files.exists("/tmp/e2b/b.txt");

await sbx.files.makeDir("/tmp/watched");
const events = [];
const watcher = await sbx.files.watchDir("/tmp/watched", (e) => { events.push([e.name, e.type]); });
await sbx.files.write("/tmp/watched/new.txt", "x");
for (let i = 0; i < 50 && events.length === 0; i++) await sleep(200);
await watcher.stop();
seen.watch = events;

const pty = [];
const terminal = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { pty.push(text(d)); } });
await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode("stty size; echo pty-$((6*7))\n"));
await sleep(1500); // the shell answers at its size before the resize
await sbx.pty.resize(terminal.pid, { cols: 100, rows: 30 });
await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode("stty size; exit\n"));
try { await terminal.wait(); } catch (e) { if (!(e instanceof CommandExitError)) throw e; }
seen.pty = pty.join("");

await sbx.commands.run("mkdir -p /tmp/site && echo served-from-box > /tmp/site/index.html");
await sbx.commands.run("cd /tmp/site && python3 -m http.server 8000", { background: true });
const host = sbx.getHost(8000);
seen.host = host;
seen.served = null;
const http = await import("node:http");
const get = () => new Promise((done, fail) => {
  const url = new URL(vendbox);
  const request = http.get({ host: url.hostname, port: url.port, path: "/index.html",
    headers: { Host: host, "e2b-traffic-access-token": sbx.trafficAccessToken ?? "" } }, (response) => {
    let body = "";
    response.on("data", (c) => { body += c; });
    response.on("end", () => (response.statusCode === 200 ? done(body) : fail(new Error(`${response.statusCode} ${body}`))));
  });
  request.on("error", fail);
});
for (let i = 0; i < 60 && seen.served === null; i++) {
  try { seen.served = await get(); } catch (e) { seen.host_error = String(e); await sleep(300); }
}

await sbx.setTimeout(120_000);
seen.end_after_set_timeout = (await sbx.getInfo()).endAt;
seen.running_before_kill = await sbx.isRunning();
await sbx.kill();
seen.listed_after_kill = (await Sandbox.list().nextItems()).map((s) => s.sandboxId);

console.log(JSON.stringify(seen));
