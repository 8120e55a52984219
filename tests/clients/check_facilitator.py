#!/usr/bin/env python3
"""End-to-end check of tests/clients/facilitator.py on local anvil chains.

Usage:
    python3 tests/clients/check_facilitator.py

Takes no arguments. Starts its own anvil nodes (the binary from
tests/clients/node_modules, ``npm ci --prefix tests/clients``) and its own
facilitator.py processes, and stops each of them by pid when done:

1. anvil on its default chain id (31337): deploys contracts/VendboxUSDC.json
   ("USDC", "2"), mints to a fresh payer, signs v2 payments with the official
   x402 Python client (``x402Client`` + ``register_exact_evm_client``) and
   drives /verify and /settle of a facilitator started with --require-auth:
   auth, a paid transfer (balances and the on-chain nonce), a replayed settle,
   an empty wallet, a bad signature, a missing EIP-712 domain, concurrent
   settles, malformed bodies, /stats, and a clean SIGTERM exit.
2. anvil with ``--chain-id 84532``: the same for a v1 payment on
   ``base-sepolia`` (and a v2 one on ``eip155:84532``), no auth.

Prints one line per check and a summary; exits 1 if any check failed.
Needs: pip install -r tests/clients/requirements.txt
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ANVIL = HERE / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
FACILITATOR = HERE / "facilitator.py"
ARTIFACT = ROOT / "contracts" / "VendboxUSDC.json"

PRICE = 10_000  # 0.01 USDC
ONE_USDC = 1_000_000
DOMAIN = {"name": "USDC", "version": "2"}

results: list[tuple[bool, str]] = []
timings: list[float] = []


def check(cond: bool, what: str, detail: Any = None) -> bool:
    results.append((bool(cond), what))
    print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond and detail is not None:
        print(f"     got: {detail}", flush=True)
    return bool(cond)


# --------------------------------------------------------------- processes


def _read_line_matching(proc: subprocess.Popen, pattern: str, timeout: float, what: str) -> re.Match:
    """Read proc.stdout until a line matches; fail after timeout."""
    found: dict[str, Any] = {}
    seen: list[str] = []

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line.rstrip())
            m = re.search(pattern, line)
            if m:
                found["m"] = m
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if "m" not in found:
        raise RuntimeError(f"{what} did not print {pattern!r} within {timeout}s; output: {seen[-10:]}")
    # keep draining so the child never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return found["m"]


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, argv: list[str], what: str, stderr: Any = None) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr if stderr is not None else subprocess.STDOUT, text=True
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def start_anvil(chain_id: int | None = None) -> tuple[Proc, str]:
    argv = [str(ANVIL), "--port", "0", "--host", "127.0.0.1"]
    if chain_id is not None:
        argv += ["--chain-id", str(chain_id)]
    p = Proc(argv, "anvil")
    m = _read_line_matching(p.proc, r"Listening on (127\.0\.0\.1:\d+)", 30, "anvil")
    return p, f"http://{m.group(1)}"


def start_facilitator(rpc: str, key: str, *extra: str) -> tuple[Proc, str, float]:
    t0 = time.monotonic()
    p = Proc([sys.executable, str(FACILITATOR), "--rpc-url", rpc, "--key", key, *extra],
             "facilitator", stderr=subprocess.DEVNULL)
    m = _read_line_matching(p.proc, r"^facilitator listening on (http://127\.0\.0\.1:\d+)$", 60, "facilitator.py")
    return p, m.group(1), time.monotonic() - t0


# -------------------------------------------------------------------- http


def http(method: str, url: str, body: Any = None, auth: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


# ------------------------------------------------------------------- chain


class Chain:
    def __init__(self, rpc: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
        self.chain_id = self.w3.eth.chain_id
        self.deployer = self.w3.eth.accounts[0]
        art = json.loads(ARTIFACT.read_text())
        receipt = self._send(self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(
            DOMAIN["name"], DOMAIN["version"]))
        self.token = self.w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])

    def _send(self, fn: Any) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(fn.transact({"from": self.deployer}), timeout=60)
        if receipt["status"] != 1:
            raise RuntimeError("setup transaction reverted")
        return receipt

    def mint(self, to: str, amount: int) -> None:
        self._send(self.token.functions.mint(to, amount))

    def fund_eth(self, who: str) -> None:
        self.w3.provider.make_request("anvil_setBalance", [who, hex(10**20)])

    def bal(self, who: str) -> int:
        return self.token.functions.balanceOf(who).call()

    def used(self, who: str, nonce_hex: str) -> bool:
        return self.token.functions.authorizationState(who, bytes.fromhex(nonce_hex[2:])).call()


# ------------------------------------------------------- payload builders


def official_client(payer_key: str) -> Any:
    from x402 import x402ClientSync
    from x402.mechanisms.evm.exact import register_exact_evm_client

    client = x402ClientSync()
    register_exact_evm_client(client, Account.from_key(payer_key))
    # default spend controls only pay known USDC deployments
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})
    return client


def v2_requirements(chain: Chain, pay_to: str, amount: int = PRICE, network: str | None = None) -> dict:
    return {
        "scheme": "exact",
        "network": network or f"eip155:{chain.chain_id}",
        "asset": chain.token.address,
        "amount": str(amount),
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "extra": dict(DOMAIN),
    }


def v2_body(client: Any, requirements: dict) -> dict:
    from x402.schemas import PaymentRequired

    required = PaymentRequired.model_validate({
        "x402Version": 2,
        "resource": {"url": "http://127.0.0.1/paid", "description": "check", "mimeType": "application/json"},
        "accepts": [requirements],
    })
    payload = client.create_payment_payload(required).model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements}


def v1_body(client: Any, chain: Chain, pay_to: str, amount: int = PRICE) -> dict:
    from x402.schemas import PaymentRequiredV1

    requirements = {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": str(amount),
        "resource": "http://127.0.0.1/paid",
        "description": "check",
        "mimeType": "application/json",
        "payTo": pay_to,
        "maxTimeoutSeconds": 300,
        "asset": chain.token.address,
        "extra": dict(DOMAIN),
    }
    required = PaymentRequiredV1.model_validate({"x402Version": 1, "accepts": [requirements]})
    payload = client.create_payment_payload(required).model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"x402Version": 1, "paymentPayload": payload, "paymentRequirements": requirements}


def nonce_of(body: dict) -> str:
    return body["paymentPayload"]["payload"]["authorization"]["nonce"]


def pay(url: str, body: dict, auth: str | None) -> tuple[tuple[int, Any], tuple[int, Any], float]:
    t0 = time.monotonic()
    v = http("POST", f"{url}/verify", body, auth)
    s = http("POST", f"{url}/settle", body, auth)
    return v, s, time.monotonic() - t0


def is_tx_hash(x: Any) -> bool:
    return isinstance(x, str) and re.fullmatch(r"0x[0-9a-fA-F]{64}", x) is not None


# ------------------------------------------------------------------ phases


def phase_v2(facilitator_key: str) -> None:
    print("== v2 on anvil (default chain id), facilitator with --require-auth", flush=True)
    anvil, rpc = start_anvil()
    fac = None
    try:
        chain = Chain(rpc)
        fac_addr = Account.from_key(facilitator_key).address
        chain.fund_eth(fac_addr)
        payer = Account.create()
        payee = Account.create().address
        chain.mint(payer.address, 100 * ONE_USDC)
        network = f"eip155:{chain.chain_id}"
        token = "Bearer " + secrets.token_hex(8)
        fac, url, startup = start_facilitator(rpc, facilitator_key, "--require-auth", token)
        print(f"     anvil {rpc} chain {chain.chain_id}, token {chain.token.address}, facilitator {url} "
              f"(ready in {startup:.2f}s)", flush=True)
        client = official_client(payer.key.hex())

        # --- auth
        st, body = http("GET", f"{url}/supported")
        check(st == 401 and body == {"error": "unauthorized"}, "GET /supported without Authorization -> 401", (st, body))
        st, body = http("GET", f"{url}/supported", auth=token + "x")
        check(st == 401 and body == {"error": "unauthorized"}, "GET /supported with a wrong Authorization -> 401", (st, body))
        st, body = http("GET", f"{url}/supported", auth=token.lower())
        check(st == 401, "Authorization is compared exactly (case matters) -> 401", (st, body))
        st, sup = http("GET", f"{url}/supported", auth=token)
        kinds = sup.get("kinds", []) if isinstance(sup, dict) else []
        check(st == 200 and {"x402Version": 2, "scheme": "exact", "network": network} in kinds,
              f"GET /supported lists v2 exact {network}", (st, sup))
        check({"x402Version": 1, "scheme": "exact", "network": "base-sepolia"} in kinds,
              "GET /supported lists v1 exact base-sepolia", kinds)
        check(isinstance(sup, dict) and sup.get("signers") == {"eip155:*": [fac_addr]} and sup.get("extensions") == [],
              "GET /supported: signers {eip155:*: [facilitator]}, extensions []", sup)

        pay1 = v2_body(client, v2_requirements(chain, payee))
        st, body = http("POST", f"{url}/verify", pay1)
        check(st == 401 and body == {"error": "unauthorized"}, "POST /verify without Authorization -> 401", (st, body))
        st, body = http("POST", f"{url}/settle", pay1, auth="Bearer nope")
        check(st == 401, "POST /settle with a wrong Authorization -> 401", (st, body))
        check(chain.bal(payee) == 0 and not chain.used(payer.address, nonce_of(pay1)),
              "unauthorized settle moved nothing")
        st, stats = http("GET", f"{url}/stats")
        check(st == 200 and stats == {"verify": 0, "settle": 0, "unauthorized": 5},
              "GET /stats needs no auth; counts 5 unauthorized, 0 verify/settle", (st, stats))

        # --- a paid transfer
        before_payer = chain.bal(payer.address)
        (vst, v), (sst, s), dt = pay(url, pay1, token)
        timings.append(dt)
        check(vst == 200 and v == {"isValid": True, "payer": payer.address}, "v2 /verify -> 200 {isValid: true, payer}", (vst, v))
        check(sst == 200 and isinstance(s, dict) and s.get("success") is True and is_tx_hash(s.get("transaction"))
              and s.get("network") == network and s.get("payer") == payer.address
              and set(s) == {"success", "transaction", "network", "payer"},
              "v2 /settle -> 200 {success: true, transaction, network, payer}", (sst, s))
        print(f"     settle answer: {json.dumps(s)}", flush=True)
        receipt = chain.w3.eth.get_transaction_receipt(s["transaction"]) if is_tx_hash(s.get("transaction")) else None
        check(receipt is not None and receipt["status"] == 1 and receipt["from"] == fac_addr,
              "settlement tx mined, status 1, sent by the facilitator key", receipt and (receipt["status"], receipt["from"]))
        check(chain.bal(payee) == PRICE and chain.bal(payer.address) == before_payer - PRICE,
              f"payee received {PRICE}, payer paid {PRICE}", (chain.bal(payee), chain.bal(payer.address)))
        check(chain.used(payer.address, nonce_of(pay1)), "authorizationState(payer, nonce) is now used")

        # --- replay
        st, r = http("POST", f"{url}/settle", pay1, token)
        check(st == 200 and isinstance(r, dict) and r.get("success") is False and bool(r.get("errorReason")),
              "replayed /settle -> 200 {success: false, errorReason}", (st, r))
        print(f"     replayed settle answer: {json.dumps(r)}", flush=True)
        check(chain.bal(payee) == PRICE, "replay moved nothing", chain.bal(payee))
        if is_tx_hash(r.get("transaction")):  # settle does not re-simulate by default: it broadcasts
            check(chain.w3.eth.get_transaction_receipt(r["transaction"])["status"] == 0,
                  "the replay's transaction hash is a reverted transaction")
        st, r = http("POST", f"{url}/verify", pay1, token)
        check(st == 200 and r.get("isValid") is False and r.get("invalidReason") == "invalid_exact_evm_nonce_already_used",
              "replayed /verify -> isValid false, invalid_exact_evm_nonce_already_used", (st, r))
        print(f"     replayed verify answer: {json.dumps(r)}", flush=True)

        # --- empty wallet
        broke = Account.create()
        empty = v2_body(official_client(broke.key.hex()), v2_requirements(chain, payee))
        (vst, v), (sst, s), _ = pay(url, empty, token)
        check(vst == 200 and v.get("isValid") is False and v.get("invalidReason") == "invalid_exact_evm_insufficient_balance",
              "empty wallet /verify -> isValid false, invalid_exact_evm_insufficient_balance", (vst, v))
        check(sst == 200 and s.get("success") is False and bool(s.get("errorReason")),
              "empty wallet /settle -> success false with a reason", (sst, s))
        print(f"     empty wallet: verify {json.dumps(v)}", flush=True)
        print(f"                   settle {json.dumps(s)}", flush=True)

        # --- signature / requirement mismatches
        forged = json.loads(json.dumps(v2_body(client, v2_requirements(chain, payee))))
        forged["paymentPayload"]["payload"]["authorization"]["value"] = str(PRICE * 2)
        forged["paymentRequirements"]["amount"] = str(PRICE * 2)
        forged["paymentPayload"]["accepted"]["amount"] = str(PRICE * 2)
        st, r = http("POST", f"{url}/verify", forged, token)
        check(st == 200 and r.get("invalidReason") == "invalid_exact_evm_payload_signature",
              "tampered authorization -> invalid_exact_evm_payload_signature", (st, r))
        good = v2_body(client, v2_requirements(chain, payee))
        no_domain = {**good, "paymentRequirements": {**good["paymentRequirements"], "extra": {}}}
        st, r = http("POST", f"{url}/verify", no_domain, token)
        check(st == 200 and r.get("invalidReason") == "missing_eip712_domain",
              "paymentRequirements.extra without name/version -> missing_eip712_domain", (st, r))
        other_payee = {**good, "paymentRequirements": {**good["paymentRequirements"], "payTo": Account.create().address}}
        st, r = http("POST", f"{url}/verify", other_payee, token)
        check(st == 200 and r.get("invalidReason") == "invalid_exact_evm_payload_recipient_mismatch",
              "payTo differing from the authorization -> invalid_exact_evm_payload_recipient_mismatch", (st, r))
        numeric = {**good, "paymentRequirements": {**good["paymentRequirements"], "amount": PRICE}}
        st, r = http("POST", f"{url}/verify", numeric, token)
        check(st == 400 and "error" in r, "amount as a JSON number (not a string) -> 400 {error}", (st, r))
        st, r = http("POST", f"{url}/verify", raw=b"{not json", auth=token)
        check(st == 400 and "error" in r, "malformed JSON -> 400 {error}", (st, r))
        # The package registers the pattern eip155:* for any list of eip155 networks and does
        # not compare the CAIP-2 chain id with the RPC's: a payment signed for chain 1 is routed
        # and then fails the on-chain simulation (the token's domain has this chain's id).
        wrong_chain = v2_body(client, v2_requirements(chain, payee, network="eip155:1"))
        st, r = http("POST", f"{url}/verify", wrong_chain, token)
        check(st == 200 and r.get("isValid") is False and r.get("invalidReason") == "invalid_exact_evm_payload_signature",
              "v2 payment signed for eip155:1 -> invalid_exact_evm_payload_signature (simulation)", (st, r))
        other_ns = json.loads(json.dumps(good))
        other_ns["paymentPayload"]["accepted"]["network"] = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
        other_ns["paymentRequirements"]["network"] = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
        st, r = http("POST", f"{url}/verify", other_ns, token)
        check(st == 500 and "SchemeNotFoundError" in str(r.get("error")),
              "a network with no registered scheme (solana:...) -> 500 {error: SchemeNotFoundError...}", (st, r))

        # --- more round trips (timing) and concurrent settles
        for _ in range(4):
            (vst, v), (sst, s), dt = pay(url, v2_body(client, v2_requirements(chain, payee)), token)
            timings.append(dt)
            check(v.get("isValid") is True and s.get("success") is True, "another v2 verify+settle round trip", (v, s))
        bodies = [v2_body(client, v2_requirements(chain, payee)) for _ in range(3)]
        with ThreadPoolExecutor(3) as ex:
            outs = list(ex.map(lambda b: http("POST", f"{url}/settle", b, token), bodies))
        check(all(st == 200 and r.get("success") is True for st, r in outs), "3 concurrent settles all succeed", outs)
        check(chain.bal(payee) == PRICE * 8, "payee holds 8 payments", chain.bal(payee))

        # --- the official HTTP facilitator client reads these answers
        from x402.http import FacilitatorConfig
        from x402.http.facilitator_client import HTTPFacilitatorClientSync
        from x402.http.facilitator_client_base import AuthHeaders
        from x402.schemas import parse_payment_payload
        from x402.schemas.helpers import parse_payment_requirements

        class Auth:
            def get_auth_headers(self) -> AuthHeaders:
                h = {"Authorization": token}
                return AuthHeaders(verify=h, settle=h, supported=h, bazaar=h)

        with HTTPFacilitatorClientSync(FacilitatorConfig(url=url, auth_provider=Auth())) as official:
            sup = official.get_supported()
            check(any(k.network == network and k.x402_version == 2 for k in sup.kinds),
                  "official HTTPFacilitatorClientSync parses /supported", sup)
            b = v2_body(client, v2_requirements(chain, payee))
            pp = parse_payment_payload(b["paymentPayload"])
            pr = parse_payment_requirements(2, b["paymentRequirements"])
            vr, sr = official.verify(pp, pr), official.settle(pp, pr)
            check(vr.is_valid and sr.success and sr.network == network and is_tx_hash(sr.transaction),
                  "official HTTPFacilitatorClientSync verifies and settles through it", (vr, sr))
        check(chain.bal(payee) == PRICE * 9, "payee holds 9 payments", chain.bal(payee))

        st, stats = http("GET", f"{url}/stats")
        # verify: 1 + 1 (replay) + 1 (empty) + 6 (mismatch/bad) + 4 + 1 ; settle: 1 + 1 + 1 + 4 + 3 + 1
        check(stats == {"verify": 15, "settle": 11, "unauthorized": 5},
              "GET /stats counts every authorized call (15 verify, 11 settle, 5 unauthorized)", stats)

        rc = fac.stop(signal.SIGTERM)
        check(rc == 0, "facilitator exits 0 on SIGTERM", rc)
    finally:
        if fac:
            fac.stop()
        anvil.stop()


def phase_v1(facilitator_key: str) -> None:
    print("== v1 (base-sepolia) on anvil --chain-id 84532, no auth", flush=True)
    anvil, rpc = start_anvil(84532)
    fac = None
    try:
        chain = Chain(rpc)
        fac_addr = Account.from_key(facilitator_key).address
        chain.fund_eth(fac_addr)
        payer = Account.create()
        payee = Account.create().address
        chain.mint(payer.address, 10 * ONE_USDC)
        fac, url, _ = start_facilitator(rpc, facilitator_key)
        client = official_client(payer.key.hex())

        st, sup = http("GET", f"{url}/supported")
        kinds = sup.get("kinds", []) if isinstance(sup, dict) else []
        check(st == 200 and {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"} in kinds
              and {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"} in kinds,
              "without --require-auth /supported is open; lists eip155:84532 and base-sepolia", (st, kinds[:3]))

        body = v1_body(client, chain, payee)
        check(body["paymentPayload"].get("network") == "base-sepolia" and "accepted" not in body["paymentPayload"],
              "official client built a v1 payload (scheme/network at top level)", body["paymentPayload"])
        (vst, v), (sst, s), dt = pay(url, body, None)
        timings.append(dt)
        check(vst == 200 and v == {"isValid": True, "payer": payer.address}, "v1 /verify -> isValid true", (vst, v))
        check(sst == 200 and s.get("success") is True and is_tx_hash(s.get("transaction"))
              and s.get("network") == "base-sepolia" and s.get("payer") == payer.address,
              "v1 /settle -> success, network base-sepolia", (sst, s))
        print(f"     v1 settle answer: {json.dumps(s)}", flush=True)
        check(chain.bal(payee) == PRICE, "v1: payee received the payment", chain.bal(payee))
        st, r = http("POST", f"{url}/settle", body)
        check(st == 200 and r.get("success") is False and bool(r.get("errorReason")),
              "v1 replayed /settle -> success false with a reason", (st, r))
        print(f"     v1 replayed settle answer: {json.dumps(r)}", flush=True)
        check(chain.bal(payee) == PRICE, "v1 replay moved nothing", chain.bal(payee))

        b2 = v2_body(client, v2_requirements(chain, payee))
        (vst, v), (sst, s), _ = pay(url, b2, None)
        check(v.get("isValid") is True and s.get("success") is True and s.get("network") == "eip155:84532",
              "v2 on eip155:84532 against the same facilitator", (v, s))
        check(chain.bal(payee) == 2 * PRICE, "payee holds both payments", chain.bal(payee))
        st, stats = http("GET", f"{url}/stats")
        check(stats == {"verify": 2, "settle": 3, "unauthorized": 0}, "stats: 2 verify, 3 settle, 0 unauthorized", stats)

        rc = fac.stop(signal.SIGINT)
        check(rc == 0, "facilitator exits 0 on SIGINT", rc)

        # --simulate-in-settle: a doomed settle is caught before anything is broadcast.
        fac, url, _ = start_facilitator(rpc, facilitator_key, "--simulate-in-settle")
        tx_count = chain.w3.eth.get_transaction_count(fac_addr)
        st, r = http("POST", f"{url}/settle", b2)
        check(st == 200 and r.get("success") is False and r.get("errorReason") == "invalid_exact_evm_nonce_already_used"
              and r.get("transaction") == "", "--simulate-in-settle: replayed settle -> invalid_exact_evm_nonce_already_used, "
              "transaction \"\"", (st, r))
        print(f"     replayed settle answer with --simulate-in-settle: {json.dumps(r)}", flush=True)
        check(chain.w3.eth.get_transaction_count(fac_addr) == tx_count, "--simulate-in-settle: nothing broadcast")
        unknown_v1 = json.loads(json.dumps(body))
        unknown_v1["paymentPayload"]["network"] = unknown_v1["paymentRequirements"]["network"] = "ethereum"
        st, r = http("POST", f"{url}/verify", unknown_v1)
        check(st == 500 and "SchemeNotFoundError" in str(r.get("error")),
              "v1 network name the package does not list (ethereum) -> 500 SchemeNotFoundError", (st, r))
        check(fac.stop() == 0, "second facilitator exits 0 on SIGTERM")
    finally:
        if fac:
            fac.stop()
        anvil.stop()


def main() -> int:
    if len(sys.argv) > 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python3 tests/clients/check_facilitator.py  (no arguments)", file=sys.stderr)
        return 2
    if not ANVIL.exists():
        print(f"FAIL anvil not found at {ANVIL} (npm ci --prefix tests/clients)")
        return 1
    facilitator_key = "0x" + secrets.token_hex(32)  # fresh relayer, funded with anvil_setBalance
    t0 = time.monotonic()
    for phase in (phase_v2, phase_v1):
        try:
            phase(facilitator_key)
        except Exception as e:  # noqa: BLE001
            check(False, f"{phase.__name__} aborted: {type(e).__name__}: {e}")
    passed = sum(1 for ok, _ in results if ok)
    failed = [what for ok, what in results if not ok]
    if timings:
        print(f"verify+settle round trip: median {statistics.median(timings) * 1000:.0f} ms, "
              f"min {min(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms over {len(timings)}")
    print(f"{passed} passed, {len(failed)} failed ({time.monotonic() - t0:.1f}s)")
    for what in failed:
        print(f"  failed: {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
