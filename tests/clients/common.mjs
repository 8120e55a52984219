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

const EMPTY = { status: 0, body: null, payment_response: null, payment_payload: null, payment_required: null };

// The payer's key from VENDBOX_WALLET_KEY, or the error line and exit 1.
export function walletKey() {
  const key = process.env.VENDBOX_WALLET_KEY;
  if (!key) {
    emit({ ...EMPTY, error: "VENDBOX_WALLET_KEY is not set" });
    process.exit(1);
  }
  return key;
}

// Sends the request of `args` through `fetchWithPayment`, prints the one JSON result line and
// exits (0 on a 2xx). `paymentPayload()` gives the payment header the wrapper sent, decoded.
export async function payAndReport(fetchWithPayment, args, paymentPayload) {
  let response;
  let text;
  try {
    // x402-fetch spreads init.headers into a new object: keep it a plain object.
    const init = { method: args.method, headers: {} };
    if (args.json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(JSON.parse(args.json));
    }
    response = await fetchWithPayment(args.url, init);
    text = await response.text();
  } catch (e) {
    emit({ ...EMPTY, payment_payload: paymentPayload(), error: errorString(e) });
    process.exit(1);
  }
  emit({
    status: response.status,
    body: parseBody(text),
    payment_response: decodeB64Json(
      response.headers.get("PAYMENT-RESPONSE") || response.headers.get("X-PAYMENT-RESPONSE"),
    ),
    payment_payload: paymentPayload(),
    payment_required: decodeB64Json(response.headers.get("PAYMENT-REQUIRED")),
  });
  process.exit(response.status >= 200 && response.status < 300 ? 0 : 1);
}
