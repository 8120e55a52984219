#!/usr/bin/env python3
"""The official x402 Python stack selling ``GET /catalog``: the payments benchmark's reference.

Usage:
    python3 tests/clients/reference_server.py --rpc-url URL --key HEX \
        --network eip155:31337 --asset 0xTOKEN --pay-to 0xPAYEE \
        [--price 10000] [--name USDC] [--version 2] [--port 0]

Everything that handles the payment is x402 2.25.0's own (``pip install -r
tests/clients/requirements.txt``), wired as the package's README shows for
FastAPI: a FastAPI app with the package's FastAPI payment middleware
(``x402.http.middleware.fastapi.payment_middleware``) around an async
``x402ResourceServer`` with ``ExactEvmServerScheme`` registered for
``--network``, which verifies and settles through an ``HTTPFacilitatorClient``
against the official facilitator (``x402FacilitatorSync`` with the ``exact``
EVM scheme over web3.py, served over HTTP by ``facilitator.py`` beside this
file, in a process of its own that pays the gas with ``--key``). uvicorn
serves the app, one worker, no access log.

``GET /catalog`` costs ``--price`` atomic units (default 10000: 0.01 USDC) of
the EIP-3009 token at ``--asset`` (EIP-712 domain ``--name`` / ``--version``),
paid to ``--pay-to``. The middleware answers 402 with the v2
``PAYMENT-REQUIRED`` header, verifies a ``PAYMENT-SIGNATURE``, runs the route,
settles on chain and only then answers 200 with ``PAYMENT-RESPONSE``.

It binds 127.0.0.1 (``--port 0``, the default: a free port) and, once ready,
prints exactly one line to stdout::

    reference server listening on http://127.0.0.1:PORT

then serves until SIGTERM or SIGINT, stops its facilitator (by pid) and exits
0. The facilitator is also asked by the kernel to stop should this process
die without cleaning up (``PR_SET_PDEATHSIG``). Errors go to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

FACILITATOR = Path(__file__).with_name("facilitator.py")
PR_SET_PDEATHSIG = 1


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET /catalog behind the official x402 FastAPI stack")
    p.add_argument("--rpc-url", required=True, help="EVM JSON-RPC endpoint the facilitator settles on")
    p.add_argument("--key", required=True, help="the facilitator's private key (hex); pays the gas")
    p.add_argument("--network", required=True, help="CAIP-2 network of the chain, e.g. eip155:31337")
    p.add_argument("--asset", required=True, help="the EIP-3009 token's address")
    p.add_argument("--pay-to", required=True, help="the address that is paid")
    p.add_argument("--price", type=int, default=10_000, help="atomic units per request (default 10000)")
    p.add_argument("--name", default="USDC", help="the token's EIP-712 name (default USDC)")
    p.add_argument("--version", default="2", help="the token's EIP-712 version (default 2)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    return p.parse_args(argv)


def _die_with_parent() -> None:
    """Runs in the facilitator's process before exec: SIGTERM it when its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _start_facilitator(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """Starts facilitator.py and returns it with its URL, once it listens."""
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and file
        [sys.executable, str(FACILITATOR), "--rpc-url", args.rpc_url, "--key", args.key,
         "--networks", args.network, "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads exist yet
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    prefix = "facilitator listening on "
    if not line.startswith(prefix):
        _stop(child)
        raise SystemExit(f"reference server: the facilitator did not start (it said {line!r})")
    child.stdout.close()  # it prints nothing more to stdout
    return child, line[len(prefix):]


def _stop(child: subprocess.Popen[str]) -> None:
    """SIGTERM to `child` by pid, then SIGKILL if it has not exited within ten seconds."""
    if child.poll() is not None:
        return
    os.kill(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def _app(args: argparse.Namespace, facilitator_url: str) -> Any:
    from fastapi import FastAPI
    from x402 import x402ResourceServer
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient
    from x402.http.middleware.fastapi import payment_middleware
    from x402.mechanisms.evm.exact import ExactEvmServerScheme

    server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url)))
    server.register(args.network, ExactEvmServerScheme())
    routes = {
        "GET /catalog": {
            "accepts": {
                "scheme": "exact",
                "payTo": args.pay_to,
                "price": {
                    "amount": str(args.price),
                    "asset": args.asset,
                    "extra": {"name": args.name, "version": args.version},
                },
                "network": args.network,
            },
            "description": "The catalog of offers",
            "mimeType": "application/json",
        }
    }
    # Built once, here: it asks the facilitator what it supports now, so that a mismatch fails
    # at start rather than on the first paid request.
    x402_middleware = payment_middleware(routes, server)

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def x402(request: Any, call_next: Any) -> Any:
        return await x402_middleware(request, call_next)

    @app.get("/catalog")
    async def catalog() -> dict[str, Any]:
        return {"offers": [{"id": "vpsagent-catalog", "price": str(args.price)}]}

    return app


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    import uvicorn

    facilitator, facilitator_url = _start_facilitator(args)
    try:
        app = _app(args, facilitator_url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        port = sock.getsockname()[1]

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if not self.should_exit:
                    print(f"reference server listening on http://127.0.0.1:{port}", flush=True)

        # uvicorn catches SIGTERM and SIGINT while it serves, shuts down gracefully, puts back
        # the handlers it found and raises the signal again: these turn that into exit 0, after
        # the facilitator is stopped below.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        Server(config).run(sockets=[sock])
    finally:
        _stop(facilitator)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
