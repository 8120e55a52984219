#!/usr/bin/env node
// Pay for a URL with the official x402 TypeScript client, protocol v2
// (@x402/fetch 2.27.0 + @x402/evm ExactEvmScheme).
//
// Usage:
//   VENDBOX_WALLET_KEY=0x... node pay_x402_v2.mjs URL [--method POST] [--json '{...}']
//
// The exact EVM scheme is registered for "eip155:*" (v2 only); spend controls
// allow any asset and lift the per-payment USD cap, so a local test token on
// eip155:31337 is paid.
//
// Prints exactly one JSON line on stdout:
//   {"status": int, "body": <json or text>, "payment_response": <decoded
//    PAYMENT-RESPONSE / X-PAYMENT-RESPONSE header or null>,
//    "payment_payload": <decoded PAYMENT-SIGNATURE / X-PAYMENT header sent, or null>,
//    "payment_required": <decoded PAYMENT-REQUIRED header of the final response, or null>}
// and exits 0 on a 2xx status, 1 otherwise. When the client library itself
// fails (for example no acceptable payment option) "status" is 0 and an
// "error" string is added.

import { wrapFetchWithPaymentFromConfig } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";
import { parseArgs, decodeB64Json, walletKey, payAndReport } from "./common.mjs";

const args = parseArgs(process.argv.slice(2));
const key = walletKey();

let paymentPayload = null;
// Records the payment header of every request the wrapper sends.
const recordingFetch = async (input, init) => {
  const request = new Request(input, init);
  const header = request.headers.get("PAYMENT-SIGNATURE") || request.headers.get("X-PAYMENT");
  if (header) paymentPayload = decodeB64Json(header);
  return fetch(request, { signal: AbortSignal.timeout(args.timeoutMs) });
};

const fetchWithPayment = wrapFetchWithPaymentFromConfig(recordingFetch, {
  schemes: [{ network: "eip155:*", client: new ExactEvmScheme(privateKeyToAccount(key)) }],
  // Default spend controls only allow known USDC deployments, capped at $1.
  spendControls: { allowedAssets: true, maxAmountPerPayment: false },
});

await payAndReport(fetchWithPayment, args, () => paymentPayload);
