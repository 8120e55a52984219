// Shared helpers for the x402 client scripts (argument parsing, output).

export function parseArgs(argv) {
  const out = { url: undefined, method: "GET", json: undefined, timeoutMs: 60_000, maxValue: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--method") out.method = next().toUpperCase();
    else if (a === "--json") out.json = next();
    else if (a === "--timeout") out.timeoutMs = Math.round(Number(next()) * 1000);
    else if (a === "--max-value") out.maxValue = next();
    else if (a === "-h" || a === "--help") usage();
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (out.url === undefined) out.url = a;
    else usage(`unexpected argument ${a}`);
  }
  if (out.url === undefined) usage("URL is required");
  return out;
}

function usage(message) {
  if (message) process.stderr.write(`error: ${message}\n`);
  process.stderr.write(
    "usage: VENDBOX_WALLET_KEY=0x... node SCRIPT URL [--method M] [--json BODY] [--timeout SECONDS]" +
      " [--max-value ATOMIC (v1 only)]\n",
  );
  process.exit(2);
}

export function decodeB64Json(value) {
  if (!value) return null;
  try {
    return JSON.parse(Buffer.from(value, "base64").toString("utf8"));
  } catch {
    return { undecodable: value };
  }
}

export function parseBody(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function emit(result) {
  process.stdout.write(JSON.stringify(result) + "\n");
}

export function errorString(e) {
  if (!(e instanceof Error)) return String(e);
  let s = `${e.name}: ${e.message}`;
  for (let c = e.cause, depth = 0; c && depth < 3; c = c.cause, depth++) {
    s += ` (cause: ${c instanceof Error ? `${c.name}: ${c.message}` : String(c)})`;
  }
  return s;
}
