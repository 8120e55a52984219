#!/usr/bin/env python3
"""SecretVM's agent example (../shared/seeds/secretvm.md), run against vendbox.

The functions ``stable_stringify``, ``build_headers``, ``build_create_vm_headers``,
``create_vm`` and ``topup_x402`` are the seed's, unchanged. The one change is the
payment step: ``get_x402_payment_signature`` makes the payment with the official
x402 Python client (x402 2.x, ``exact`` EVM scheme) from the 402's challenge, in
place of the seed's stub that read ``X402_PAYMENT_SIGNATURE`` from the
environment. ``X402_VERSION=1`` pays x402 v1 from the 402's JSON body and sends
``x-payment`` (the seed: "payment-signature (or x-payment)"); the default pays
v2 from the ``PAYMENT-REQUIRED`` header.

Usage (environment as the seed's: AGENT_PRIVATE_KEY, AGENT_BASE_URL,
AGENT_VM_NAME, AGENT_VM_TYPE_ID, AMOUNT_USDC; AGENT_COMPOSE_FILE replaces the
seed's inline compose when set):

    secretvm_agent.py flow            the seed's flow: create, 402 Insufficient
                                      balance, top up, create again
    secretvm_agent.py topup AMOUNT    the seed's topup_x402
    secretvm_agent.py get PATH        a signed GET (balance, VM status)
    secretvm_agent.py headers METHOD PATH BODY [TIMESTAMP_MS]
                                      the x-agent headers for a request
    secretvm_agent.py create-tampered signs one compose file, uploads another

Each prints one JSON line on stdout.
"""

import base64
import hashlib
import json
import os
import sys
import time

import requests
from eth_account import Account
from eth_account.messages import encode_defunct


def stable_stringify(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def build_headers(private_key, method, path, body):
    timestamp = str(int(time.time() * 1000))
    payload = f"{method}{path}{body}{timestamp}"
    request_hash = hashlib.sha256(payload.encode()).hexdigest()
    message = encode_defunct(hexstr=request_hash)
    signature = Account.sign_message(message, private_key).signature.hex()
    if not signature.startswith("0x"):
        signature = f"0x{signature}"
    address = Account.from_key(private_key).address
    return {
        "x-agent-address": address,
        "x-agent-signature": signature,
        "x-agent-timestamp": timestamp,
    }


def build_create_vm_headers(private_key, fields, file_bytes, file_name, mime):
    meta = {
        "fieldname": "dockercompose",
        "originalname": file_name,
        "mimetype": mime,
        "size": len(file_bytes),
        "sha256": hashlib.sha256(file_bytes).hexdigest(),
    }
    body = stable_stringify({"fields": fields, "file": meta})
    return build_headers(private_key, "POST", "/api/vm/create", body)


def create_vm(private_key, base_url, fields, file_bytes, mime):
    headers = build_create_vm_headers(private_key, fields, file_bytes, "docker-compose.yml", mime)
    return requests.post(
        f"{base_url}/api/vm/create",
        data=fields,
        files={"dockercompose": ("docker-compose.yml", file_bytes, mime)},
        headers=headers,
    )


# The payment step, with the official x402 client (the seed's stub read an environment variable).
PAYMENT_HEADER = "payment-signature"


def get_x402_payment_signature(challenge_json, response=None):
    from x402 import x402ClientSync
    from x402.http import x402HTTPClientSync
    from x402.mechanisms.evm.exact import register_exact_evm_client

    global PAYMENT_HEADER
    client = x402ClientSync()
    register_exact_evm_client(client, Account.from_key(PRIVATE_KEY))
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})
    http = x402HTTPClientSync(client)
    if os.environ.get("X402_VERSION") == "1":
        required = http.get_payment_required_response(lambda _name: None, challenge_json)
    else:
        required = http.get_payment_required_response(response.headers.get, None)
    payload = client.create_payment_payload(required)
    encoded = http.encode_payment_signature_header(payload)
    (name, value), = encoded.items()
    PAYMENT_HEADER = name.lower()
    return value


def topup_x402(private_key, base_url, amount_usdc):
    payload = {"amount_usdc": str(amount_usdc)}
    body = stable_stringify(payload)
    headers = build_headers(private_key, "POST", "/api/agent/add-funds", body)
    headers["Content-Type"] = "application/json"

    res = requests.post(f"{base_url}/api/agent/add-funds", data=body, headers=headers)
    if res.status_code == 402:
        payment_sig = get_x402_payment_signature(res.json(), res)
        headers[PAYMENT_HEADER] = payment_sig
        res = requests.post(f"{base_url}/api/agent/add-funds", data=body, headers=headers)
    return res


def answer(res):
    try:
        body = res.json()
    except ValueError:
        body = res.text
    return {"status": res.status_code, "body": body}


def emit(value):
    sys.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")


PRIVATE_KEY = os.environ["AGENT_PRIVATE_KEY"].strip()
if not PRIVATE_KEY.startswith("0x"):
    PRIVATE_KEY = "0x" + PRIVATE_KEY


def flow():
    # The seed's example, line for line, its prints gathered into one JSON line.
    private_key = PRIVATE_KEY
    base_url = os.environ.get("AGENT_BASE_URL", "https://secretai.scrtlabs.com").rstrip("/")
    fields = {"name": os.environ["AGENT_VM_NAME"], "vmTypeId": os.environ["AGENT_VM_TYPE_ID"]}
    amount_usdc = os.environ.get("AMOUNT_USDC", "1")

    mime = os.environ.get("AGENT_DOCKER_COMPOSE_MIMETYPE", "application/x-yaml")
    compose = """services:
  app:
    image: nginx:alpine
"""
    if os.environ.get("AGENT_COMPOSE_FILE"):
        compose = open(os.environ["AGENT_COMPOSE_FILE"]).read()
    file_bytes = compose.encode()

    out = {}
    res = create_vm(private_key, base_url, fields, file_bytes, mime)
    out["first_create"] = answer(res)
    if res.status_code == 402 and "Insufficient balance" in res.text:
        topup = topup_x402(private_key, base_url, amount_usdc)
        out["topup"] = answer(topup)
        out["payment_header"] = PAYMENT_HEADER
        topup.raise_for_status()
        res = create_vm(private_key, base_url, fields, file_bytes, mime)
    out["create"] = answer(res)
    emit(out)


def main():
    base_url = os.environ.get("AGENT_BASE_URL", "http://127.0.0.1:8402").rstrip("/")
    command = sys.argv[1]
    if command == "flow":
        flow()
    elif command == "topup":
        res = topup_x402(PRIVATE_KEY, base_url, sys.argv[2])
        out = answer(res)
        out["payment_header"] = PAYMENT_HEADER
        emit(out)
    elif command == "get":
        path = sys.argv[2]
        res = requests.get(f"{base_url}{path}", headers=build_headers(PRIVATE_KEY, "GET", path, ""))
        emit(answer(res))
    elif command == "headers":
        method, path, body = sys.argv[2], sys.argv[3], sys.argv[4]
        headers = build_headers(PRIVATE_KEY, method, path, body)
        if len(sys.argv) > 5:
            # Re-signed with the given timestamp (a stale or future one).
            timestamp = sys.argv[5]
            payload = f"{method}{path}{body}{timestamp}"
            digest = hashlib.sha256(payload.encode()).hexdigest()
            signature = Account.sign_message(encode_defunct(hexstr=digest), PRIVATE_KEY).signature.hex()
            headers["x-agent-signature"] = signature if signature.startswith("0x") else f"0x{signature}"
            headers["x-agent-timestamp"] = timestamp
        emit(headers)
    elif command == "create-tampered":
        fields = {"name": "tampered", "vmTypeId": os.environ["AGENT_VM_TYPE_ID"]}
        signed = b"services:\n  app:\n    image: nginx:alpine\n"
        sent = b"services:\n  app:\n    image: nginx:alpine\n    command: [\"sh\"]\n"
        headers = build_create_vm_headers(PRIVATE_KEY, fields, signed, "docker-compose.yml", "application/x-yaml")
        res = requests.post(
            f"{base_url}/api/vm/create",
            data=fields,
            files={"dockercompose": ("docker-compose.yml", sent, "application/x-yaml")},
            headers=headers,
        )
        emit(answer(res))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
