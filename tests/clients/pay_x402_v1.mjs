#!/usr/bin/env node
// Pay for a URL with the official legacy x402 client, protocol v1
// (x402-fetch 1.2.0: 402 JSON body in, X-PAYMENT header out).
//
// Usage:
//   VENDBOX_WALLET_KEY=0x... node pay_x402_v1.mjs URL [--method POST] [--json '{...}']
//                                                     [--max-value ATOMIC]
//
// The wallet is a viem wallet client on Base Sepolia (chain id 84532), so
// x402-fetch only considers accepts[] entries with network "base-sepolia" and
// signs the EIP-712 authorization for chain id 84532 (run anvil with
// --chain-id 84532). The client accepts any asset address; it only prefers the
// real Base Sepolia USDC when several entries match. x402-fetch refuses to pay
// more than maxValue atomic units (its default is 100000 = 0.10 USDC); here
// the default is 10000000 (10 USDC), settable with --max-value.
//
// Prints exactly one JSON line on stdout:
//   {"status": int, "body": <json or text>, "payment_response": <decoded
//    X-PAYMENT-RESPONSE / PAYMENT-RESPONSE header or null>,
//    "payment_payload": <decoded X-PAYMENT header sent, or null>,
//    "payment_required": <decoded PAYMENT-REQUIRED header of the final response, or null>}
// and exits 0 on a 2xx status, 1 otherwise. When the client library itself
// fails (for example the amount is over maxValue) "status" is 0 and an
// "error" string is added.

import { wrapFetchWithPayment } from "x402-fetch";
import { createWalletClient, custom } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { baseSepolia } from "viem/chains";
import { parseArgs, decodeB64Json, walletKey, payAndReport } from "./common.mjs";

const args = parseArgs(process.argv.slice(2));
const key = walletKey();

// Signing typed data with a local account needs no RPC; refuse any call so
// nothing ever reaches a public Base Sepolia node.
const noRpc = custom({
  request: async ({ method }) => {
    throw new Error(`no RPC available to the test client (${method})`);
  },
});
const wallet = createWalletClient({ account: privateKeyToAccount(key), chain: baseSepolia, transport: noRpc });

let paymentPayload = null;
const recordingFetch = async (input, init) => {
  const headers = new Headers(init?.headers);
  const header = headers.get("X-PAYMENT") || headers.get("PAYMENT-SIGNATURE");
  if (header) paymentPayload = decodeB64Json(header);
  return fetch(input, { ...init, signal: AbortSignal.timeout(args.timeoutMs) });
};

const maxValue = BigInt(args.maxValue ?? "10000000");
const fetchWithPayment = wrapFetchWithPayment(recordingFetch, wallet, maxValue);

await payAndReport(fetchWithPayment, args, () => paymentPayload);
