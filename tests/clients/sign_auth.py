#!/usr/bin/env python3
"""Sign one request to vendbox with a wallet, as the README shows (eth_account).

Usage:
    VENDBOX_WALLET_KEY=0x... python3 sign_auth.py METHOD PATH_WITH_QUERY [BODY]
        [--timestamp MS] [--nonce NONCE] [--address 0x...]

The signed text is six lines joined by "\\n": "vendbox-auth-v1", the method, the
path with its query, the timestamp (Unix ms), the nonce, and the SHA-256 of the
body in lowercase hex; it is signed with EIP-191 personal_sign. --address sends
another address than the signer's (to test refusals).

Prints exactly one JSON line on stdout: the X-Auth-* headers to send.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time

from eth_account import Account
from eth_account.messages import encode_defunct


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("path")
    parser.add_argument("body", nargs="?", default="")
    parser.add_argument("--timestamp", type=int)
    parser.add_argument("--nonce")
    parser.add_argument("--address")
    args = parser.parse_args()
    account = Account.from_key(os.environ["VENDBOX_WALLET_KEY"])
    timestamp = str(args.timestamp if args.timestamp is not None else int(time.time() * 1000))
    nonce = args.nonce or secrets.token_hex(16)
    body_hash = hashlib.sha256(args.body.encode()).hexdigest()
    message = "\n".join(["vendbox-auth-v1", args.method.upper(), args.path, timestamp, nonce, body_hash])
    signed = Account.sign_message(encode_defunct(text=message), account.key)
    headers = {
        "X-Auth-Address": args.address or account.address,
        "X-Auth-Chain": "base",
        "X-Auth-Signature": "0x" + signed.signature.hex().removeprefix("0x"),
        "X-Auth-Timestamp": timestamp,
        "X-Auth-Nonce": nonce,
        "X-Auth-Sig-Encoding": "hex",
    }
    sys.stdout.write(json.dumps(headers) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
