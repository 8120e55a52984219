#!/usr/bin/env python3
"""A local x402 facilitator service around the official Python facilitator.

Usage:
    python3 tests/clients/facilitator.py --rpc-url URL --key HEX \
        [--require-auth "Bearer xyz"] [--networks eip155:31337,...] \
        [--port 0] [--simulate-in-settle] [--quiet]

The verification and settlement logic is x402 2.25.0's own (``pip install -r
tests/clients/requirements.txt``): an ``x402FacilitatorSync`` with the ``exact``
EVM scheme registered by ``register_exact_evm_facilitator`` over a
``FacilitatorWeb3Signer`` (web3.py), i.e. v2 for the ``--networks`` given
(default: ``eip155:<chain id the RPC reports>``) and v1 for every legacy
network name the package knows (``base-sepolia`` is chain id 84532, so run the
node with ``--chain-id 84532`` for v1). This file only adds the HTTP layer, so
that vendbox's remote-facilitator client can be tested against an independent
implementation.

It binds 127.0.0.1 on a free port (``--port 0``, the default) and, once ready,
prints exactly one line to stdout::

    facilitator listening on http://127.0.0.1:PORT

then serves until SIGTERM or SIGINT (exit 0). Request logs go to stderr.

Endpoints (JSON in, JSON out):

* ``POST /verify``, ``POST /settle`` with
  ``{"x402Version": 1|2, "paymentPayload": {...}, "paymentRequirements": {...}}``.
  HTTP 200 with the facilitator's VerifyResponse / SettleResponse, camelCase,
  fields that are unset left out (``isValid``, ``invalidReason``,
  ``invalidMessage``, ``payer`` / ``success``, ``errorReason``,
  ``errorMessage``, ``payer``, ``transaction``, ``network``). A body that does
  not parse into the package's payload/requirements models gets HTTP 400, an
  exception raised by the facilitator (e.g. no scheme registered for the
  network, RPC down) HTTP 500; both as ``{"error": "..."}``.
* ``GET /supported``: the facilitator's SupportedResponse
  (``kinds``, ``extensions``, ``signers``).
* ``GET /stats`` (never needs auth):
  ``{"verify": n, "settle": n, "unauthorized": n}``; verify/settle count the
  authorized calls that reached the endpoint, whatever their outcome.

With ``--require-auth VALUE`` every request other than ``GET /stats`` whose
``Authorization`` header is not exactly VALUE gets HTTP 401
``{"error":"unauthorized"}`` and is counted.

Only the standard library and x402[evm] (web3, eth-account) are used.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20  # 1 MiB is far more than any x402 request needs


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="x402 facilitator (official Python package) over HTTP")
    p.add_argument("--rpc-url", required=True, help="EVM JSON-RPC endpoint the facilitator uses")
    p.add_argument("--key", required=True, help="facilitator private key (hex, 0x optional); pays the gas")
    p.add_argument("--require-auth", metavar="VALUE", default=None,
                   help="require this exact Authorization header value on every request but GET /stats")
    p.add_argument("--networks", default=None,
                   help="comma-separated v2 CAIP-2 networks (default: eip155:<chain id of --rpc-url>)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    p.add_argument("--simulate-in-settle", action="store_true",
                   help="re-run the transfer simulation in settle (package option, off by default)")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    return p.parse_args(argv)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"verify": 0, "settle": 0, "unauthorized": 0}

    def bump(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class BadRequest(Exception):
    pass


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def make_handler(facilitator: Any, stats: Stats, auth: str | None, quiet: bool):
    from pydantic import ValidationError
    from x402.schemas import parse_payment_payload
    from x402.schemas.helpers import parse_payment_requirements

    def parse_request(body: Any) -> tuple[Any, Any]:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        raw_payload = body.get("paymentPayload")
        raw_requirements = body.get("paymentRequirements")
        if not isinstance(raw_payload, dict) or not isinstance(raw_requirements, dict):
            raise BadRequest("paymentPayload and paymentRequirements must be JSON objects")
        if "x402Version" not in raw_payload and "x402Version" in body:
            raw_payload = {**raw_payload, "x402Version": body["x402Version"]}
        try:
            payload = parse_payment_payload(raw_payload)
            requirements = parse_payment_requirements(payload.x402_version, raw_requirements)
        except (ValidationError, ValueError) as e:
            raise BadRequest(f"{type(e).__name__}: {e}") from e
        return payload, requirements

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "vendbox-x402-facilitator"

        def version_string(self) -> str:
            return self.server_version

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            if not quiet:
                super().log_message(format, *args)

        # ------------------------------------------------------------ I/O

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks, total = [], 0
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    total += size
                    if total > MAX_BODY:
                        raise BadRequest("body too large")
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise BadRequest("body too large")
            return self.rfile.read(length) if length > 0 else b""

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if auth is None or self.headers.get("Authorization") == auth:
                return True
            stats.bump("unauthorized")
            self._send(401, {"error": "unauthorized"})
            return False

        # -------------------------------------------------------- routing

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            try:
                raw = self._read_body()
            except (BadRequest, ValueError) as e:
                self.close_connection = True
                self._send(400, {"error": str(e)})
                return
            if method == "GET" and path == "/stats":
                self._send(200, stats.snapshot())
                return
            if not self._authorized():
                return
            if method == "GET" and path == "/supported":
                self._send(200, _dump(facilitator.get_supported()))
            elif method == "POST" and path in ("/verify", "/settle"):
                self._payment(path[1:], raw)
            elif path in ("/verify", "/settle", "/supported", "/stats"):
                self._send(405, {"error": "method not allowed"})
            else:
                self._send(404, {"error": "not found"})

        def _payment(self, kind: str, raw: bytes) -> None:
            stats.bump(kind)
            try:
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    raise BadRequest(f"invalid JSON: {e}") from e
                payload, requirements = parse_request(body)
            except BadRequest as e:
                self._send(400, {"error": str(e)})
                return
            try:
                if kind == "verify":
                    result = facilitator.verify(payload, requirements)
                else:
                    result = facilitator.settle(payload, requirements)
            except Exception as e:  # noqa: BLE001 - report, keep serving
                print(f"facilitator: {kind} raised {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self._send(500, {"error": f"{type(e).__name__}: {e}"})
                return
            self._send(200, _dump(result))

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._route("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


class Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a client that opens dozens of connections at once
    # (a resource server under load) sees some of them reset.
    request_queue_size = 128


def main(argv: list[str]) -> int:
    args = _parse_args(argv)

    from x402 import x402FacilitatorSync
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator

    try:
        signer = FacilitatorWeb3Signer(private_key=args.key, rpc_url=args.rpc_url)
        chain_id = signer.get_chain_id()
    except Exception as e:  # noqa: BLE001
        print(f"facilitator: cannot use --key/--rpc-url: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    networks = [n.strip() for n in (args.networks or f"eip155:{chain_id}").split(",") if n.strip()]
    if not networks:
        print("facilitator: --networks is empty", file=sys.stderr)
        return 2

    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(
        facilitator, signer, networks=networks, simulate_in_settle=args.simulate_in_settle
    )

    stats = Stats()
    handler = make_handler(facilitator, stats, args.require_auth, args.quiet)
    server = Server(("127.0.0.1", args.port), handler)
    server.daemon_threads = True

    def stop(_signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this
        # (the main) thread, so it has to be called from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(
        f"facilitator: signer {signer.address}, chain id {chain_id}, v2 networks {','.join(networks)}",
        file=sys.stderr,
        flush=True,
    )
    print(f"facilitator listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
