#!/usr/bin/env python3
"""Pay for a URL with the official x402 Python client (protocol v2).

Usage:
    VENDBOX_WALLET_KEY=0x... python3 pay_x402.py URL [--method POST] [--json '{...}'] [--header 'Name: value']

The client is x402 2.25.0 (``pip install -r requirements.txt``): an
``x402Client`` with the ``exact`` EVM scheme registered for ``eip155:*``
(plus the v1 legacy networks, as ``register_exact_evm_client`` does), wrapped
around httpx. Spend controls allow any asset (``allowed_assets: True``) and
lift the per-payment USD cap, so a local test token on ``eip155:31337`` is paid.

Prints exactly one JSON line on stdout:

    {"status": int, "body": <json or text>, "payment_response": <decoded
     PAYMENT-RESPONSE / X-PAYMENT-RESPONSE header or null>,
     "payment_payload": <decoded PAYMENT-SIGNATURE / X-PAYMENT header the
     client sent, or null>,
     "payment_required": <decoded PAYMENT-REQUIRED header of the final
     response, or null; on a failed payment its "error" holds the reason>}

and exits 0 on a 2xx status, 1 otherwise. When the client library itself
fails (for example no acceptable payment option) ``status`` is 0 and an
``error`` string is added.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Any


def _decode_b64_json(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(base64.b64decode(value).decode("utf-8"))
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


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _run(args: argparse.Namespace) -> int:
    key = os.environ.get("VENDBOX_WALLET_KEY")
    if not key:
        _emit({"status": 0, "body": None, "payment_response": None,
               "payment_payload": None, "payment_required": None, "error": "VENDBOX_WALLET_KEY is not set"})
        return 1

    import httpx
    from eth_account import Account
    from x402 import x402Client
    from x402.http.clients import x402_httpx_transport
    from x402.mechanisms.evm.exact import register_exact_evm_client

    client = x402Client()
    register_exact_evm_client(client, Account.from_key(key))
    # Default spend controls only allow known USDC deployments, capped at $1.
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})

    sent: dict[str, Any] = {"payment_payload": None}

    class RecordingTransport(httpx.AsyncHTTPTransport):
        """Sees every request the x402 transport sends, the paid retry included."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            header = request.headers.get("PAYMENT-SIGNATURE") or request.headers.get("X-PAYMENT")
            if header:
                sent["payment_payload"] = _decode_b64_json(header)
            return await super().handle_async_request(request)

    kwargs: dict[str, Any] = {}
    if args.json is not None:
        kwargs["json"] = json.loads(args.json)
    if args.header:
        kwargs["headers"] = {k.strip(): v.strip() for k, v in (h.split(":", 1) for h in args.header)}

    try:
        transport = x402_httpx_transport(client, RecordingTransport())
        async with httpx.AsyncClient(transport=transport, timeout=args.timeout) as http:
            response = await http.request(args.method, args.url, **kwargs)
            raw = await response.aread()
    except Exception as e:  # noqa: BLE001 - report any client failure as one JSON line
        _emit({"status": 0, "body": None, "payment_response": None,
               "payment_payload": sent["payment_payload"], "payment_required": None,
               "error": f"{type(e).__name__}: {e}"})
        return 1

    payment_response = _decode_b64_json(
        response.headers.get("PAYMENT-RESPONSE") or response.headers.get("X-PAYMENT-RESPONSE")
    )
    _emit({
        "status": response.status_code,
        "body": _parse_body(raw),
        "payment_response": payment_response,
        "payment_payload": sent["payment_payload"], "payment_required": None,
        "payment_required": _decode_b64_json(response.headers.get("PAYMENT-REQUIRED")),
    })
    return 0 if 200 <= response.status_code < 300 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json", default=None, help="JSON request body (sets Content-Type)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent with every request")
    args = parser.parse_args()
    args.method = args.method.upper()
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
