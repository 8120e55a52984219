#!/usr/bin/env python3
"""Pay for a URL with the official MPP Python client (pympp, the ``evm`` charge).

Usage:
    VENDBOX_WALLET_KEY=0x... python3 pay_mpp.py URL --asset 0xTOKEN --chain-id N
        [--method POST] [--json '{...}'] [--header 'Name: value'] [--max-amount 5]

The client is ``pympp[evm]==0.16.0`` (``pip install -r requirements.txt``): an
``Mpp`` with one ``evm.charge`` method for the token at ``--asset`` (EIP-712
domain "USDC" / "2", 6 decimals) on chain ``--chain-id``. It pays a
``WWW-Authenticate: Payment`` challenge with an EIP-3009 authorization and
retries with ``Authorization: Payment``.

Prints exactly one JSON line on stdout:

    {"status": int, "body": <json or text>, "receipt": <decoded Payment-Receipt
     or null>, "cache_control": <Cache-Control of the final response or null>,
     "credential": <decoded credential the client sent, or null>}

and exits 0 on a 2xx status, 1 otherwise. When the client library itself
fails ``status`` is 0 and an ``error`` string is added.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Any


def _b64url_json(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except Exception:  # noqa: BLE001 - report the raw value instead
        return {"undecodable": value}


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _pay(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from eth_account import Account
    from mpp.client import Mpp
    from mpp.methods.evm import client as evm

    method = evm.charge(
        currency=args.asset,
        account=Account.from_key(os.environ["VENDBOX_WALLET_KEY"]),
        chain_id=args.chain_id,
        decimals=6,
        authorization={"name": "USDC", "version": "2"},
        max_amount=args.max_amount,
    )
    sent: dict[str, Any] = {}

    class Recording(httpx.AsyncBaseTransport):
        """The transport under the client's, noting the credential it sends."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            value = request.headers.get("authorization", "")
            if value.lower().startswith("payment "):
                sent["credential"] = _b64url_json(value.split(" ", 1)[1].strip())
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    kwargs: dict[str, Any] = {"method": args.method, "headers": headers, "timeout": args.timeout}
    if args.json is not None:
        kwargs["content"] = args.json.encode()
        headers.setdefault("Content-Type", "application/json")
    async with Mpp(methods=[method]) as mpp:
        transport = mpp.payment_transport
        transport._inner = Recording(transport._inner)  # noqa: SLF001 - a test's window
        response = await mpp.fetch(args.url, **kwargs)
        raw = await response.aread()
    return {
        "status": response.status_code,
        "body": _parse_body(raw),
        "receipt": _b64url_json(response.headers.get("payment-receipt")),
        "cache_control": response.headers.get("cache-control"),
        "credential": sent.get("credential"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--asset", required=True)
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json", default=None)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--max-amount", default="5")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        result = asyncio.run(_pay(args))
    except Exception as error:  # noqa: BLE001 - reported as one JSON line
        result = {"status": 0, "error": f"{type(error).__name__}: {error}"}
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    return 0 if 200 <= result["status"] < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
