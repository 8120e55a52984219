// Pay for a URL with the official MPP JavaScript client (mppx 0.11.0, the `evm` charge).
//
// Usage:
//   VENDBOX_WALLET_KEY=0x... node pay_mpp.mjs URL --asset 0xTOKEN --chain-id N
//       [--method POST] [--json '{...}'] [--header 'Name: value']
//
// mppx (installed in tests/clients/mpp, a tree of its own) pays a `WWW-Authenticate: Payment`
// challenge with an EIP-3009 authorization (EIP-712 domain "USDC" / "2") and retries with
// `Authorization: Payment`. Prints one JSON line: {"status", "body", "receipt" (decoded
// Payment-Receipt or null), "cache_control", "payment_response" (an x402 receipt, which must be
// null: the client paid with MPP), "credential" (decoded credential sent, or null)}; exits 0 on a
// 2xx status, 1 otherwise; on a client failure status is 0 and "error" says why.
import { createRequire } from "node:module";

const require = createRequire(new URL("./mpp/package.json", import.meta.url));
const { Mppx } = await import(require.resolve("mppx/client"));
const { charge } = await import(require.resolve("mppx/evm/client"));
const { privateKeyToAccount } = await import(require.resolve("viem/accounts"));

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

function b64urlJson(value) {
  if (!value) return null;
  try {
    return JSON.parse(Buffer.from(value, "base64url").toString("utf8"));
  } catch {
    return { undecodable: value };
  }
}

const url = process.argv[2];
const headers = {};
process.argv.forEach((arg, i) => {
  if (arg === "--header") {
    const [name, ...rest] = process.argv[i + 1].split(":");
    headers[name.trim()] = rest.join(":").trim();
  }
});
const init = { method: option("method", "GET"), headers };
const body = option("json", undefined);
if (body !== undefined) {
  init.body = body;
  headers["Content-Type"] = "application/json";
}

let sent = null;
const recording = async (input, options) => {
  const auth = new Headers(options?.headers ?? (input instanceof Request ? input.headers : {})).get("authorization");
  if (auth && auth.toLowerCase().startsWith("payment ")) sent = b64urlJson(auth.slice(8).trim());
  return fetch(input, options);
};

let result;
try {
  const mppx = Mppx.create({
    polyfill: false,
    fetch: recording,
    methods: [
      charge({
        account: privateKeyToAccount(process.env.VENDBOX_WALLET_KEY),
        authorization: { name: "USDC", version: "2" },
        networks: [Number(option("chain-id"))],
        decimals: 6,
      }),
    ],
  });
  const response = await mppx.fetch(url, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  result = {
    status: response.status,
    body: parsed,
    receipt: b64urlJson(response.headers.get("payment-receipt")),
    cache_control: response.headers.get("cache-control"),
    payment_response: response.headers.get("payment-response"),
    credential: sent,
  };
} catch (error) {
  result = { status: 0, error: String(error?.stack ?? error) };
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.status >= 200 && result.status < 300 ? 0 : 1);
