#!/usr/bin/env node
// Sign one request to vendbox with a wallet, as the README shows (viem).
//
// Usage:
//   VENDBOX_WALLET_KEY=0x... node sign_auth.mjs METHOD PATH_WITH_QUERY [BODY]
//
// The signed text is six lines joined by "\n": "vendbox-auth-v1", the method,
// the path with its query, the timestamp (Unix ms), the nonce, and the SHA-256
// of the body in lowercase hex; viem's signMessage is EIP-191 personal_sign.
// Prints exactly one JSON line on stdout: the X-Auth-* headers to send.

import { createHash, randomBytes } from "node:crypto";
import { privateKeyToAccount } from "viem/accounts";

const [method, path, body = ""] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.VENDBOX_WALLET_KEY);
const timestamp = String(Date.now());
const nonce = randomBytes(16).toString("hex");
const bodyHash = createHash("sha256").update(body).digest("hex");
const message = ["vendbox-auth-v1", method.toUpperCase(), path, timestamp, nonce, bodyHash].join("\n");
const signature = await account.signMessage({ message });
console.log(JSON.stringify({
  "X-Auth-Address": account.address,
  "X-Auth-Chain": "base",
  "X-Auth-Signature": signature,
  "X-Auth-Timestamp": timestamp,
  "X-Auth-Nonce": nonce,
  "X-Auth-Sig-Encoding": "hex",
}));
